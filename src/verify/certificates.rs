//! Signing certificates: fetched from a URL only after the URL rule passed, kept for an hour
//! (AWS rotates them), a failed fetch remembered for a few seconds so a burst naming one
//! unreachable URL makes one request, and every key checked against its certificate's validity
//! on each use.

use super::{Certificates, Verifier, VerifyError};
use rsa::pkcs8::DecodePublicKey;
use rsa::traits::PublicKeyParts;
use rsa::RsaPublicKey;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Largest certificate accepted from a signing-certificate URL.
const MAX_CERT_BYTES: usize = 16 * 1024;
/// How long a certificate fetch may take.
pub(super) const CERT_FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a fetched certificate is used before it is fetched again (AWS rotates them).
const CERT_CACHE_TTL: Duration = Duration::from_secs(3600);
/// How long a failed fetch is remembered, so a burst of messages naming one unreachable URL
/// makes one request, not one each.
const CERT_FAILURE_TTL: Duration = Duration::from_secs(15);

/// A certificate's key with what decides whether it may still be used.
#[derive(Clone)]
pub(super) struct CachedKey {
    pub(super) key: Arc<VerifyingKey>,
    pub(super) validity: Validity,
    pub(super) fetched: Instant,
}

/// A certificate's RSA key as ring verifies with it. The `rsa` crate parses certificates here,
/// but its pure-Rust arithmetic made RSA verification a fifth of the worker's CPU (the profile in
/// docs/performance.md); ring's costs a small fraction of that.
#[derive(Debug)]
pub(super) struct VerifyingKey {
    /// Big-endian, no leading zeros (what ring expects).
    pub(super) modulus: Vec<u8>,
    pub(super) exponent: Vec<u8>,
}

impl From<&RsaPublicKey> for VerifyingKey {
    fn from(key: &RsaPublicKey) -> VerifyingKey {
        VerifyingKey {
            modulus: key.n().to_bytes_be(),
            exponent: key.e().to_bytes_be(),
        }
    }
}

/// A certificate's validity period, epoch seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    /// notBefore.
    pub not_before: i64,
    /// notAfter.
    pub not_after: i64,
}

impl Validity {
    /// Valid at every moment (keys handed to [`Verifier::with_keys`]).
    pub(super) const ALWAYS: Validity = Validity {
        not_before: i64::MIN,
        not_after: i64::MAX,
    };

    /// Why the certificate may not be used at `now_s`, if it may not.
    pub fn check(&self, now_s: i64) -> Result<(), &'static str> {
        if now_s < self.not_before {
            Err("certificate is not yet valid")
        } else if now_s > self.not_after {
            Err("certificate has expired")
        } else {
            Ok(())
        }
    }
}

impl Verifier {
    /// The certificate's key: cached while fresh and valid, else fetched (one fetch at a time;
    /// a failure is remembered for [`CERT_FAILURE_TTL`]).
    pub(super) async fn public_key(
        &self,
        url: &url::Url,
    ) -> Result<Arc<VerifyingKey>, VerifyError> {
        if let Some(known) = self.cached(url)? {
            return Ok(known);
        }
        let client = match &self.source {
            Certificates::Http(client) => client,
            Certificates::Fixed => {
                return Err(VerifyError::CertFetch {
                    url: url.to_string(),
                    detail: "no such test key".into(),
                })
            }
        };
        let _one_at_a_time = self.fetching.lock().await;
        // Whoever held the lock before may have fetched it (or failed to) meanwhile.
        if let Some(known) = self.cached(url)? {
            return Ok(known);
        }
        self.fetches.fetch_add(1, Ordering::Relaxed);
        match fetch_certificate(client, url).await {
            Ok(cached) => {
                let key = cached.key.clone();
                if let Ok(mut cache) = self.cache.lock() {
                    cache.insert(url.to_string(), cached);
                }
                Ok(key)
            }
            Err(e) => {
                if let Ok(mut failures) = self.failures.lock() {
                    failures.insert(url.to_string(), (Instant::now(), e.clone()));
                }
                Err(e)
            }
        }
    }

    /// A cached key still fresh and valid now, a remembered recent failure, or neither.
    fn cached(&self, url: &url::Url) -> Result<Option<Arc<VerifyingKey>>, VerifyError> {
        let now = Instant::now();
        if let Some((at, e)) = self
            .failures
            .lock()
            .ok()
            .and_then(|f| f.get(url.as_str()).cloned())
        {
            if now.duration_since(at) < CERT_FAILURE_TTL {
                return Err(e);
            }
        }
        let Some(cached) = self
            .cache
            .lock()
            .ok()
            .and_then(|c| c.get(url.as_str()).cloned())
        else {
            return Ok(None);
        };
        let fixed = matches!(self.source, Certificates::Fixed);
        if !fixed && now.duration_since(cached.fetched) >= CERT_CACHE_TTL {
            return Ok(None);
        }
        cached
            .validity
            .check(chrono::Utc::now().timestamp())
            .map_err(|why| VerifyError::BadCertificate {
                url: url.to_string(),
                detail: why.into(),
            })?;
        Ok(Some(cached.key))
    }
}

async fn fetch_certificate(
    client: &reqwest::Client,
    url: &url::Url,
) -> Result<CachedKey, VerifyError> {
    let fetch_err = |detail: String| VerifyError::CertFetch {
        url: url.to_string(),
        detail,
    };
    let response = client
        .get(url.clone())
        .send()
        .await
        .map_err(|e| fetch_err(e.to_string()))?;
    let status = response.status();
    if status.is_server_error() || status == reqwest::StatusCode::TOO_MANY_REQUESTS {
        return Err(fetch_err(format!("HTTP {status}")));
    }
    if !status.is_success() {
        return Err(VerifyError::CertUnavailable {
            url: url.to_string(),
            status: status.as_u16(),
        });
    }
    let body = response
        .bytes()
        .await
        .map_err(|e| fetch_err(e.to_string()))?;
    let bad = |detail: String| VerifyError::BadCertificate {
        url: url.to_string(),
        detail,
    };
    if body.len() > MAX_CERT_BYTES {
        return Err(bad("larger than 16 KiB".into()));
    }
    let (key, validity) = public_key_from_pem(&body).map_err(bad)?;
    validity
        .check(chrono::Utc::now().timestamp())
        .map_err(|why| bad(why.into()))?;
    Ok(CachedKey {
        key: Arc::new(VerifyingKey::from(&key)),
        validity,
        fetched: Instant::now(),
    })
}

/// The RSA public key of a PEM certificate, with its validity period (checked on every use).
pub fn public_key_from_pem(pem: &[u8]) -> Result<(RsaPublicKey, Validity), String> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem).map_err(|e| format!("not PEM: {e}"))?;
    let cert = pem
        .parse_x509()
        .map_err(|e| format!("not an X.509 certificate: {e}"))?;
    let validity = Validity {
        not_before: cert.validity().not_before.timestamp(),
        not_after: cert.validity().not_after.timestamp(),
    };
    let key = RsaPublicKey::from_public_key_der(cert.public_key().raw)
        .map_err(|e| format!("not an RSA key: {e}"))?;
    Ok((key, validity))
}
