//! Whether to trust a decoded message: SNS signature verification, the certificate URL rule,
//! and the allow-lists of topics, product codes and EventBridge sources. This is the only
//! module that fetches certificates.

use crate::event::{Delivery, Event, InboundMessage, EVENTBRIDGE_SOURCE};
use base64::Engine;
use rsa::RsaPublicKey;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use thiserror::Error;

mod certificates;
mod sns;

pub use certificates::{public_key_from_pem, Validity};
use certificates::{CachedKey, VerifyingKey, CERT_FETCH_TIMEOUT};
pub use sns::{check_cert_url, string_to_sign, SnsEnvelope};

/// How far in the future an event's own time may lie by default (producer clock drift).
pub const DEFAULT_MAX_CLOCK_SKEW: Duration = Duration::from_secs(300);

/// The AWS account that owns the AWS Marketplace SNS topics.
pub const AWS_MARKETPLACE_ACCOUNT: &str = "287250355862";
/// The region of the AWS Marketplace SNS topics.
pub const AWS_MARKETPLACE_REGION: &str = "us-east-1";

/// What to trust.
#[derive(Debug, Clone)]
pub struct VerifyConfig {
    /// Check SNS signatures (on by default; tests that hand-craft envelopes turn it off).
    pub verify_signatures: bool,
    /// Certificate URL prefixes trusted besides `https://sns.<region>.amazonaws.com(.cn)/….pem`
    /// (LocalStack serves its certificate from `http://127.0.0.1:4566/_aws/sns/`).
    pub extra_cert_url_prefixes: Vec<String>,
    /// SNS topic ARNs accepted besides AWS's own marketplace topics of the message's product.
    pub allowed_topic_arns: Vec<String>,
    /// Product codes accepted; empty accepts any.
    pub allowed_product_codes: Vec<String>,
    /// EventBridge sources accepted.
    pub allowed_sources: Vec<String>,
    /// Accept bare marketplace JSON (SNS raw message delivery), which carries no signature.
    pub accept_raw_delivery: bool,
    /// How far after the moment of decision (or SQS's send time, if later) an event's own time
    /// may lie; anything later is refused, so a forged or mis-clocked event cannot decide a
    /// subscription's state ahead of every real one.
    pub max_clock_skew: Duration,
    /// The key that signs a portable redrive's original-identity attributes; without it, such
    /// attributes are never believed.
    pub redrive_key: Option<crate::redrive::RedriveKey>,
}

impl Default for VerifyConfig {
    fn default() -> Self {
        VerifyConfig {
            verify_signatures: true,
            extra_cert_url_prefixes: Vec::new(),
            allowed_topic_arns: Vec::new(),
            allowed_product_codes: Vec::new(),
            allowed_sources: vec![EVENTBRIDGE_SOURCE.to_string()],
            accept_raw_delivery: false,
            max_clock_skew: DEFAULT_MAX_CLOCK_SKEW,
            redrive_key: None,
        }
    }
}

/// Why a message is not trusted.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum VerifyError {
    /// Raw delivery arrived but configuration does not say raw delivery is in use.
    #[error("raw (unenveloped) delivery is not accepted; enable it only if the SNS subscription uses raw message delivery")]
    RawDeliveryNotAccepted,
    /// The topic is not one of ours.
    #[error("topic {topic} is not an accepted marketplace topic")]
    ForeignTopic {
        /// The TopicArn.
        topic: String,
    },
    /// The product code is not one of ours.
    #[error("product code {product} is not accepted")]
    ForeignProduct {
        /// The product code.
        product: String,
    },
    /// The EventBridge source is not accepted.
    #[error("EventBridge source {event_source:?} is not accepted")]
    ForeignSource {
        /// The source, or empty when absent.
        event_source: String,
    },
    /// The envelope could not be read for verification.
    #[error("SNS envelope field {field} is missing or not a string")]
    EnvelopeField {
        /// The field.
        field: &'static str,
    },
    /// A SignatureVersion other than 1 or 2.
    #[error("unsupported SignatureVersion {version:?}")]
    UnsupportedSignatureVersion {
        /// As sent.
        version: String,
    },
    /// The certificate URL is not one AWS would use; no request was made.
    #[error("signing certificate URL {url:?} refused: {why}")]
    CertUrlRefused {
        /// The URL (truncated).
        url: String,
        /// Which rule it broke.
        why: &'static str,
    },
    /// The certificate server answered with a status that retrying will not change (a 4xx,
    /// a redirect).
    #[error("fetching the signing certificate {url} failed for good: HTTP {status}")]
    CertUnavailable {
        /// The URL.
        url: String,
        /// The HTTP status.
        status: u16,
    },
    /// The certificate could not be fetched (network, 5xx): it may work later.
    #[error("fetching the signing certificate {url} failed: {detail}")]
    CertFetch {
        /// The URL.
        url: String,
        /// Why.
        detail: String,
    },
    /// The certificate is not a usable RSA certificate.
    #[error("signing certificate {url} is unusable: {detail}")]
    BadCertificate {
        /// The URL.
        url: String,
        /// Why.
        detail: String,
    },
    /// The signature is not valid base64.
    #[error("Signature is not base64")]
    SignatureEncoding,
    /// The signature does not match the signed fields.
    #[error("signature does not match the message")]
    SignatureMismatch,
    /// The event's own time lies further in the future than the allowed clock skew.
    #[error("event time {event_time_ms} ms is {ahead_ms} ms ahead of the latest plausible time (more than the allowed skew)")]
    EventFromFuture {
        /// The event's own time, epoch ms.
        event_time_ms: i64,
        /// How far past `max(now, SentTimestamp)` it lies.
        ahead_ms: i64,
    },
}

impl VerifyError {
    /// A short stable code for metrics and the event log.
    pub fn reason(&self) -> &'static str {
        match self {
            VerifyError::RawDeliveryNotAccepted => "raw_delivery_not_accepted",
            VerifyError::ForeignTopic { .. } => "foreign_topic",
            VerifyError::ForeignProduct { .. } => "foreign_product",
            VerifyError::ForeignSource { .. } => "foreign_source",
            VerifyError::EnvelopeField { .. } => "envelope_field",
            VerifyError::UnsupportedSignatureVersion { .. } => "unsupported_signature_version",
            VerifyError::CertUrlRefused { .. } => "cert_url_refused",
            VerifyError::CertUnavailable { .. } => "cert_unavailable",
            VerifyError::CertFetch { .. } => "cert_fetch_failed",
            VerifyError::BadCertificate { .. } => "bad_certificate",
            VerifyError::SignatureEncoding => "signature_encoding",
            VerifyError::SignatureMismatch => "signature_mismatch",
            VerifyError::EventFromFuture { .. } => "event_from_future",
        }
    }

    /// True when trying again later could succeed (the certificate host was unreachable or
    /// answered 5xx). The worker retries such a message only within its current visibility
    /// period, so its receive count still advances towards the dead-letter queue.
    pub fn is_transient(&self) -> bool {
        matches!(self, VerifyError::CertFetch { .. })
    }
}

/// The product of an AWS Marketplace topic owned by AWS (`arn:aws:sns:us-east-1:287250355862:
/// aws-mp-…-<product>`); `None` for any other topic, however it is named.
pub fn aws_marketplace_topic_product(topic: &str) -> Option<&str> {
    let expected = format!("arn:aws:sns:{AWS_MARKETPLACE_REGION}:{AWS_MARKETPLACE_ACCOUNT}:");
    let name = topic.strip_prefix(expected.as_str())?;
    if name.contains(':') {
        return None;
    }
    marketplace_topic_product(topic)
}

/// The product code a topic's name carries when it is named like a marketplace topic (the
/// product code is the name's suffix), in whatever account.
pub fn marketplace_topic_product(topic: &str) -> Option<&str> {
    let name = topic.rsplit(':').next()?;
    name.strip_prefix(crate::topics::SUBSCRIPTION_TOPIC_PREFIX)
        .or_else(|| name.strip_prefix(crate::topics::ENTITLEMENT_TOPIC_PREFIX))
}

/// Where certificates come from.
enum Certificates {
    /// Fetched over HTTP(S) and cached.
    Http(reqwest::Client),
    /// Fixed public keys by URL (tests with generated key pairs).
    Fixed,
}

/// Decides whether a decoded message is trusted.
pub struct Verifier {
    config: VerifyConfig,
    source: Certificates,
    cache: Mutex<HashMap<String, CachedKey>>,
    failures: Mutex<HashMap<String, (Instant, VerifyError)>>,
    /// One fetch at a time: the messages behind it then find the certificate (or the failure)
    /// in a cache instead of fetching it again.
    fetching: tokio::sync::Mutex<()>,
    fetches: AtomicU64,
}

impl Verifier {
    /// A verifier that fetches certificates over the network when needed. Fails when the HTTP
    /// client cannot be built: a default client would follow redirects and never time out.
    pub fn new(config: VerifyConfig) -> Result<Verifier, VerifierSetupError> {
        let client = reqwest::Client::builder()
            .timeout(CERT_FETCH_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| VerifierSetupError(e.to_string()))?;
        Ok(Verifier::with_source(
            config,
            Certificates::Http(client),
            HashMap::new(),
        ))
    }

    /// A verifier that knows these public keys by certificate URL and fetches nothing.
    pub fn with_keys(config: VerifyConfig, keys: HashMap<String, RsaPublicKey>) -> Verifier {
        let now = Instant::now();
        let cache = keys
            .into_iter()
            .map(|(url, key)| {
                let cached = CachedKey {
                    key: Arc::new(VerifyingKey::from(&key)),
                    validity: Validity::ALWAYS,
                    fetched: now,
                };
                (url, cached)
            })
            .collect();
        Verifier::with_source(config, Certificates::Fixed, cache)
    }

    fn with_source(
        config: VerifyConfig,
        source: Certificates,
        cache: HashMap<String, CachedKey>,
    ) -> Verifier {
        Verifier {
            config,
            source,
            cache: Mutex::new(cache),
            failures: Mutex::new(HashMap::new()),
            fetching: tokio::sync::Mutex::new(()),
            fetches: AtomicU64::new(0),
        }
    }

    /// The key a portable redrive's attributes must be signed with, if configured.
    pub fn redrive_key(&self) -> Option<&crate::redrive::RedriveKey> {
        self.config.redrive_key.as_ref()
    }

    /// How many certificate requests were made (tests assert refused URLs make none).
    pub fn fetches(&self) -> u64 {
        self.fetches.load(Ordering::Relaxed)
    }

    /// True when EventBridge events from `source` are accepted.
    pub fn accepts_source(&self, source: Option<&str>) -> bool {
        self.config
            .allowed_sources
            .iter()
            .any(|allowed| Some(allowed.as_str()) == source)
    }

    /// Accepts or refuses `event`, decoded from `msg`.
    pub async fn verify(&self, msg: &InboundMessage, event: &Event) -> Result<(), VerifyError> {
        self.check_time(msg, event, crate::time::now_ms())?;
        match event.delivery {
            Delivery::Raw if !self.config.accept_raw_delivery => {
                return Err(VerifyError::RawDeliveryNotAccepted)
            }
            Delivery::Raw => {}
            // Built by `mplink reconcile` from AWS's answers: no queue message can decode to it.
            Delivery::Reconciled => {}
            Delivery::EventBridge => {
                if !self.accepts_source(event.source.as_deref()) {
                    let event_source = event.source.clone().unwrap_or_default();
                    return Err(VerifyError::ForeignSource { event_source });
                }
            }
            Delivery::SnsEnvelope => {
                let topic = event.topic_arn.clone().unwrap_or_default();
                self.check_topic(&topic, event.ids.product_code.as_deref())?;
                if self.config.verify_signatures {
                    let env: SnsEnvelope = serde_json::from_str(&msg.body).map_err(|_| {
                        VerifyError::EnvelopeField {
                            field: "Signature fields",
                        }
                    })?;
                    self.check_signature(&env).await?;
                }
            }
        }
        if let Some(product) = &event.ids.product_code {
            if !self.config.allowed_product_codes.is_empty()
                && !self.config.allowed_product_codes.contains(product)
            {
                return Err(VerifyError::ForeignProduct {
                    product: product.clone(),
                });
            }
        }
        Ok(())
    }

    /// Refuses an event dated after `max(now, SentTimestamp) + max_clock_skew`.
    pub fn check_time(
        &self,
        msg: &InboundMessage,
        event: &Event,
        now_ms: i64,
    ) -> Result<(), VerifyError> {
        let latest = now_ms.max(msg.sent_timestamp_ms.unwrap_or(i64::MIN));
        let skew = i64::try_from(self.config.max_clock_skew.as_millis()).unwrap_or(i64::MAX);
        let ahead_ms = event.time_ms.saturating_sub(latest);
        if ahead_ms > skew {
            return Err(VerifyError::EventFromFuture {
                event_time_ms: event.time_ms,
                ahead_ms,
            });
        }
        Ok(())
    }

    /// AWS's own marketplace topic of the message's product, or a topic listed explicitly.
    fn check_topic(&self, topic: &str, product: Option<&str>) -> Result<(), VerifyError> {
        if self.config.allowed_topic_arns.iter().any(|t| t == topic) {
            return Ok(());
        }
        match (aws_marketplace_topic_product(topic), product) {
            (Some(topic_product), Some(p)) if topic_product == p => Ok(()),
            _ => Err(VerifyError::ForeignTopic {
                topic: topic.chars().take(200).collect(),
            }),
        }
    }

    /// Verifies an SNS envelope's signature against its signing certificate.
    pub async fn check_signature(&self, env: &SnsEnvelope) -> Result<(), VerifyError> {
        let version = env.signature_version.clone().unwrap_or_default();
        // The key sizes the `rsa` crate accepted before (AWS's certificates are 2048-bit).
        let algorithm: &ring::signature::RsaParameters = match version.as_str() {
            "1" => &ring::signature::RSA_PKCS1_1024_8192_SHA1_FOR_LEGACY_USE_ONLY,
            "2" => &ring::signature::RSA_PKCS1_1024_8192_SHA256_FOR_LEGACY_USE_ONLY,
            _ => {
                return Err(VerifyError::UnsupportedSignatureVersion {
                    version: version.chars().take(20).collect(),
                })
            }
        };
        let url = env
            .signing_cert_url
            .as_deref()
            .ok_or(VerifyError::EnvelopeField {
                field: "SigningCertURL",
            })?;
        let url = check_cert_url(url, &self.config.extra_cert_url_prefixes)?;
        let signature = env
            .signature
            .as_deref()
            .ok_or(VerifyError::EnvelopeField { field: "Signature" })?;
        let signature = base64::engine::general_purpose::STANDARD
            .decode(signature)
            .map_err(|_| VerifyError::SignatureEncoding)?;
        let key = self.public_key(&url).await?;
        let text = string_to_sign(env);
        ring::signature::RsaPublicKeyComponents {
            n: key.modulus.as_slice(),
            e: key.exponent.as_slice(),
        }
        .verify(algorithm, text.as_bytes(), &signature)
        .map_err(|_| VerifyError::SignatureMismatch)
    }
}

/// The HTTP client for certificates could not be built.
#[derive(Debug, Error)]
#[error("cannot build the certificate HTTP client: {0}")]
pub struct VerifierSetupError(String);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marketplace_topics_name_their_product() {
        assert_eq!(
            marketplace_topic_product(
                "arn:aws:sns:us-east-1:1:aws-mp-subscription-notification-abc"
            ),
            Some("abc")
        );
        assert_eq!(
            marketplace_topic_product(
                "arn:aws:sns:us-east-1:1:aws-mp-entitlement-notification-abc"
            ),
            Some("abc")
        );
        assert_eq!(
            marketplace_topic_product("arn:aws:sns:us-east-1:1:something-else"),
            None
        );
    }
}
