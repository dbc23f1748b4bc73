//! `mplink events` and `mplink outbox …`.
