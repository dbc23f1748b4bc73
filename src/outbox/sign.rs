//! Standard Webhooks signatures: `webhook-signature` is a space-separated list of
//! `v1,<base64 HMAC-SHA256 of "{webhook-id}.{webhook-timestamp}.{body}">`, one per active secret
//! (several during a rotation: a receiver accepts the request when any one verifies). Secrets are
//! `whsec_<base64 key>`.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretSlice};
use sha2::Sha256;
use thiserror::Error;

/// The prefix of a Standard Webhooks secret.
pub const SECRET_PREFIX: &str = "whsec_";

/// Keys shorter than this are refused: the HMAC is only as strong as its key.
const MIN_KEY_BYTES: usize = 16;

/// Why a configured secret is refused. The secret itself is never part of the message.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum SecretError {
    /// It does not start with `whsec_`.
    #[error("webhook secret #{index} does not start with whsec_")]
    Prefix {
        /// Its position in the configuration (1-based).
        index: usize,
    },
    /// What follows `whsec_` is not base64.
    #[error("webhook secret #{index} is not base64 after whsec_")]
    Base64 {
        /// Its position in the configuration (1-based).
        index: usize,
    },
    /// The key is too short.
    #[error("webhook secret #{index} is shorter than {MIN_KEY_BYTES} bytes")]
    Short {
        /// Its position in the configuration (1-based).
        index: usize,
    },
}

/// One signing key, from `whsec_…`; printed as `***`.
#[derive(Clone)]
pub struct WebhookSecret(SecretSlice<u8>);

impl std::fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WebhookSecret(***)")
    }
}

impl WebhookSecret {
    /// Parses `whsec_<base64>`; `index` (1-based) names it in errors.
    pub fn parse(text: &str, index: usize) -> Result<WebhookSecret, SecretError> {
        let encoded = text
            .trim()
            .strip_prefix(SECRET_PREFIX)
            .ok_or(SecretError::Prefix { index })?;
        let key = STANDARD
            .decode(encoded)
            .map_err(|_| SecretError::Base64 { index })?;
        if key.len() < MIN_KEY_BYTES {
            return Err(SecretError::Short { index });
        }
        Ok(WebhookSecret(SecretSlice::from(key)))
    }

    /// `v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`.
    pub fn sign(&self, id: &str, timestamp: i64, body: &str) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(self.0.expose_secret())
            .expect("HMAC takes a key of any length");
        mac.update(format!("{id}.{timestamp}.").as_bytes());
        mac.update(body.as_bytes());
        format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
    }
}

/// The `webhook-signature` header: one signature per secret, space-separated.
pub fn signature_header(secrets: &[WebhookSecret], id: &str, timestamp: i64, body: &str) -> String {
    secrets
        .iter()
        .map(|s| s.sign(id, timestamp, body))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_standard_webhooks_example_signs_as_documented() {
        // The example of the Standard Webhooks specification (its reference libraries' tests).
        let secret = WebhookSecret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", 1).unwrap();
        let sig = secret.sign(
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            r#"{"test": 2432232314}"#,
        );
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn bad_secrets_are_refused_without_showing_them() {
        assert_eq!(
            WebhookSecret::parse("hunter2hunter2hunter2", 1).unwrap_err(),
            SecretError::Prefix { index: 1 }
        );
        assert_eq!(
            WebhookSecret::parse("whsec_!!!", 2).unwrap_err(),
            SecretError::Base64 { index: 2 }
        );
        assert_eq!(
            WebhookSecret::parse("whsec_c2hvcnQ=", 3).unwrap_err(),
            SecretError::Short { index: 3 }
        );
        let s = WebhookSecret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", 1).unwrap();
        assert_eq!(format!("{s:?}"), "WebhookSecret(***)");
    }

    #[test]
    fn rotation_signs_with_every_secret() {
        let a = WebhookSecret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", 1).unwrap();
        let b = WebhookSecret::parse(&format!("whsec_{}", STANDARD.encode([7u8; 32])), 2).unwrap();
        let header = signature_header(&[a.clone(), b.clone()], "id", 1, "{}");
        assert_eq!(
            header,
            format!("{} {}", a.sign("id", 1, "{}"), b.sign("id", 1, "{}"))
        );
        assert_ne!(a.sign("id", 1, "{}"), b.sign("id", 1, "{}"));
    }
}
