//! The process-wide rustls crypto provider.
//!
//! rustls is compiled with two providers here (aws-lc-rs for the AWS SDK, ring for sqlx), so it
//! cannot pick a process default by itself, and code that asks for the default panics. sqlx's
//! `sslmode=verify-ca` builds its certificate verifier that way: without a default installed,
//! connecting with it aborts the process instead of connecting (tests/postgres_tls.rs).

/// Installs ring, the provider sqlx's handshakes use, as the process default, unless one is
/// installed already. Cheap and idempotent: [`crate::store::Store::connect`] calls it.
pub fn install_default_crypto_provider() {
    // Err only means some provider is already the default, which is all that is needed.
    let _ = rustls::crypto::ring::default_provider().install_default();
}
