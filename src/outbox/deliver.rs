//! Delivers outbox rows to webhooks.
