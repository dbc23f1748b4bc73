//! The identity a portable redrive carries across a move: a dead letter sent back to the source
//! queue is a new SQS message, so `mplink dlq redrive --portable` attaches the original message
//! id and `SentTimestamp` as message attributes. Anyone who can send to the queue can set
//! message attributes too, so they are believed only with an HMAC over them and the body, made
//! with a key the operator configures (`MPLINK_REDRIVE_KEY`) and no sender knows.

use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;
use thiserror::Error;

/// The message id the message first had (a raw delivery keeps its identity across the move).
pub const ORIGINAL_MESSAGE_ID_ATTRIBUTE: &str = "mplink-original-message-id";
/// The original `SentTimestamp`, epoch ms (a raw delivery keeps its event time).
pub const ORIGINAL_SENT_TIMESTAMP_ATTRIBUTE: &str = "mplink-original-sent-timestamp";
/// Hex HMAC-SHA256 over the two attributes above and the body.
pub const SIGNATURE_ATTRIBUTE: &str = "mplink-redrive-signature";

/// Every attribute of a redrive claim: ReceiveMessage must ask for each by name.
pub const ATTRIBUTES: [&str; 3] = [
    ORIGINAL_MESSAGE_ID_ATTRIBUTE,
    ORIGINAL_SENT_TIMESTAMP_ATTRIBUTE,
    SIGNATURE_ATTRIBUTE,
];

/// Keys shorter than this are refused: the HMAC is only as strong as its key.
const MIN_KEY_BYTES: usize = 16;

/// The operator's redrive key.
#[derive(Clone)]
pub struct RedriveKey(SecretString);

impl std::fmt::Debug for RedriveKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RedriveKey(***)")
    }
}

impl RedriveKey {
    /// A key from configuration; at least 16 bytes.
    pub fn new(secret: impl Into<String>) -> Result<RedriveKey, RedriveError> {
        let secret: String = secret.into();
        if secret.len() < MIN_KEY_BYTES {
            return Err(RedriveError::WeakKey {
                min_bytes: MIN_KEY_BYTES,
            });
        }
        Ok(RedriveKey(SecretString::from(secret)))
    }

    fn mac(&self, claim: &Claim, body: &str) -> Hmac<Sha256> {
        // Length-prefixed fields: no two different claims produce the same input.
        let mut mac = Hmac::<Sha256>::new_from_slice(self.0.expose_secret().as_bytes())
            .expect("HMAC takes a key of any length");
        for part in [
            claim.message_id.as_bytes(),
            claim.sent_timestamp_ms.to_string().as_bytes(),
            body.as_bytes(),
        ] {
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part);
        }
        mac
    }

    /// The signature attribute's value for `claim` on a message with this body.
    pub fn sign(&self, claim: &Claim, body: &str) -> String {
        hex::encode(self.mac(claim, body).finalize().into_bytes())
    }

    /// Checks `signature` (hex) in constant time.
    pub fn verify(&self, claim: &Claim, body: &str, signature: &str) -> Result<(), RedriveError> {
        let bytes = hex::decode(signature).map_err(|_| RedriveError::BadSignature)?;
        self.mac(claim, body)
            .verify_slice(&bytes)
            .map_err(|_| RedriveError::BadSignature)
    }
}

/// What a redriven message says about its origin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// The original message id.
    pub message_id: String,
    /// The original `SentTimestamp`, epoch ms.
    pub sent_timestamp_ms: i64,
}

/// Why a message's redrive attributes are not believed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RedriveError {
    /// The configured key is too short.
    #[error("the redrive key must be at least {min_bytes} bytes")]
    WeakKey {
        /// The minimum.
        min_bytes: usize,
    },
    /// Some but not all of the attributes, or one that does not parse.
    #[error("redrive attributes are incomplete or malformed ({0})")]
    Malformed(&'static str),
    /// Redrive attributes arrived but no key is configured to check them.
    #[error("message carries redrive attributes but no redrive key is configured")]
    NoKey,
    /// The signature does not match.
    #[error("redrive attributes are not signed with the configured key")]
    BadSignature,
}

impl RedriveError {
    /// A short stable code for metrics and the event log.
    pub fn reason(&self) -> &'static str {
        match self {
            RedriveError::WeakKey { .. } => "redrive_key_weak",
            RedriveError::Malformed(_) => "redrive_attributes_malformed",
            RedriveError::NoKey => "redrive_attributes_unverifiable",
            RedriveError::BadSignature => "redrive_attributes_forged",
        }
    }
}

/// Decides what identity a message has, given the redrive attributes it carries (each `None`
/// when absent). `Ok(None)`: no claim, the message is what SQS says it is.
pub fn believe(
    key: Option<&RedriveKey>,
    message_id: Option<&str>,
    sent_timestamp: Option<&str>,
    signature: Option<&str>,
    body: &str,
) -> Result<Option<Claim>, RedriveError> {
    let (message_id, sent_timestamp, signature) = match (message_id, sent_timestamp, signature) {
        (None, None, None) => return Ok(None),
        (Some(id), Some(sent), Some(sig)) => (id, sent, sig),
        (None, ..) => return Err(RedriveError::Malformed(ORIGINAL_MESSAGE_ID_ATTRIBUTE)),
        (_, None, _) => return Err(RedriveError::Malformed(ORIGINAL_SENT_TIMESTAMP_ATTRIBUTE)),
        (.., None) => return Err(RedriveError::Malformed(SIGNATURE_ATTRIBUTE)),
    };
    let claim = Claim {
        message_id: message_id.to_string(),
        sent_timestamp_ms: sent_timestamp
            .parse()
            .map_err(|_| RedriveError::Malformed(ORIGINAL_SENT_TIMESTAMP_ATTRIBUTE))?,
    };
    let key = key.ok_or(RedriveError::NoKey)?;
    key.verify(&claim, body, signature)?;
    Ok(Some(claim))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(k: &str) -> RedriveKey {
        RedriveKey::new(k).unwrap()
    }

    fn claim() -> Claim {
        Claim {
            message_id: "orig-1".into(),
            sent_timestamp_ms: 1_788_125_763_000,
        }
    }

    #[test]
    fn a_signed_claim_is_believed_and_every_alteration_is_not() {
        let k = key("0123456789abcdef-operator");
        let sig = k.sign(&claim(), "body");
        let ok = believe(
            Some(&k),
            Some("orig-1"),
            Some("1788125763000"),
            Some(&sig),
            "body",
        );
        assert_eq!(ok, Ok(Some(claim())));
        for (id, sent, body) in [
            ("orig-2", "1788125763000", "body"),
            ("orig-1", "1788125763001", "body"),
            ("orig-1", "1788125763000", "body2"),
        ] {
            assert_eq!(
                believe(Some(&k), Some(id), Some(sent), Some(&sig), body),
                Err(RedriveError::BadSignature),
                "{id} {sent} {body}"
            );
        }
        let other = key("another-key-of-16-bytes");
        assert_eq!(
            believe(
                Some(&other),
                Some("orig-1"),
                Some("1788125763000"),
                Some(&sig),
                "body"
            ),
            Err(RedriveError::BadSignature)
        );
        assert_eq!(
            believe(
                None,
                Some("orig-1"),
                Some("1788125763000"),
                Some(&sig),
                "body"
            ),
            Err(RedriveError::NoKey)
        );
    }

    #[test]
    fn partial_or_unparsable_attributes_are_malformed_and_none_is_no_claim() {
        let k = key("0123456789abcdef-operator");
        assert_eq!(believe(Some(&k), None, None, None, "b"), Ok(None));
        assert_eq!(believe(None, None, None, None, "b"), Ok(None));
        assert!(matches!(
            believe(Some(&k), Some("x"), None, None, "b"),
            Err(RedriveError::Malformed(_))
        ));
        assert!(matches!(
            believe(Some(&k), Some("x"), Some("soon"), Some("00"), "b"),
            Err(RedriveError::Malformed(ORIGINAL_SENT_TIMESTAMP_ATTRIBUTE))
        ));
        assert_eq!(
            believe(Some(&k), Some("x"), Some("1"), Some("zz"), "b"),
            Err(RedriveError::BadSignature)
        );
    }

    #[test]
    fn short_keys_are_refused_and_keys_never_print() {
        assert!(matches!(
            RedriveKey::new("short"),
            Err(RedriveError::WeakKey { .. })
        ));
        let k = key("0123456789abcdef-operator");
        assert!(!format!("{k:?}").contains("0123"));
    }
}
