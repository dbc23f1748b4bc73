//! The SNS side of verification: the envelope fields a signature covers, the string SNS signs,
//! and the rule a signing-certificate URL must pass before anything is fetched from it.

use super::VerifyError;
use serde::Deserialize;

/// The fields of an SNS notification that its signature covers, as sent.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct SnsEnvelope {
    /// `Type`.
    #[serde(rename = "Type")]
    pub kind: String,
    /// `MessageId`.
    #[serde(rename = "MessageId")]
    pub message_id: String,
    /// `TopicArn`.
    #[serde(rename = "TopicArn")]
    pub topic_arn: String,
    /// `Subject`, when present.
    #[serde(rename = "Subject", default)]
    pub subject: Option<String>,
    /// `Message`.
    #[serde(rename = "Message")]
    pub message: String,
    /// `Timestamp`.
    #[serde(rename = "Timestamp")]
    pub timestamp: String,
    /// `SignatureVersion`.
    #[serde(rename = "SignatureVersion", default)]
    pub signature_version: Option<String>,
    /// `Signature` (base64).
    #[serde(rename = "Signature", default)]
    pub signature: Option<String>,
    /// `SigningCertURL`.
    #[serde(rename = "SigningCertURL", default)]
    pub signing_cert_url: Option<String>,
}

/// The string SNS signs for a notification: `name\nvalue\n` for Message, MessageId, Subject
/// (only if present), Timestamp, TopicArn and Type, in that order.
pub fn string_to_sign(env: &SnsEnvelope) -> String {
    let mut out = String::with_capacity(env.message.len() + 256);
    let mut field = |name: &str, value: &str| {
        out.push_str(name);
        out.push('\n');
        out.push_str(value);
        out.push('\n');
    };
    field("Message", &env.message);
    field("MessageId", &env.message_id);
    if let Some(subject) = &env.subject {
        field("Subject", subject);
    }
    field("Timestamp", &env.timestamp);
    field("TopicArn", &env.topic_arn);
    field("Type", &env.kind);
    out
}

/// Checks a certificate URL against AWS's rule (https, `sns.<region>.amazonaws.com[.cn]`,
/// a `.pem` path) or an explicitly configured prefix. Nothing is fetched here.
pub fn check_cert_url(url: &str, extra_prefixes: &[String]) -> Result<url::Url, VerifyError> {
    let refused = |why| VerifyError::CertUrlRefused {
        url: url.chars().take(200).collect(),
        why,
    };
    let parsed = url::Url::parse(url).map_err(|_| refused("not a URL"))?;
    // Compare parsed parts, not text, so `http://127.0.0.1:4566@evil.com/` cannot pass for a prefix.
    let trusted = extra_prefixes
        .iter()
        .filter_map(|p| url::Url::parse(p).ok())
        .any(|p| {
            p.scheme() == parsed.scheme()
                && p.host_str() == parsed.host_str()
                && p.port_or_known_default() == parsed.port_or_known_default()
                && parsed.username().is_empty()
                && parsed.password().is_none()
                && parsed.path().starts_with(p.path())
        });
    if trusted {
        return Ok(parsed);
    }
    if parsed.scheme() != "https" {
        return Err(refused("not https"));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(refused("carries credentials"));
    }
    if parsed.port().is_some_and(|p| p != 443) {
        return Err(refused("non-standard port"));
    }
    let host = parsed.host_str().unwrap_or_default();
    if !is_sns_host(host) {
        return Err(refused("host is not sns.<region>.amazonaws.com"));
    }
    if !parsed.path().ends_with(".pem") {
        return Err(refused("path does not end in .pem"));
    }
    Ok(parsed)
}

fn is_sns_host(host: &str) -> bool {
    let region = host.strip_prefix("sns.").and_then(|rest| {
        rest.strip_suffix(".amazonaws.com")
            .or_else(|| rest.strip_suffix(".amazonaws.com.cn"))
    });
    match region {
        Some(r) => {
            !r.is_empty()
                && r.split('-').count() >= 3
                && r.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_aws_certificate_urls_pass_without_configuration() {
        let ok = [
            "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-abc.pem",
            "https://sns.cn-north-1.amazonaws.com.cn/x.pem",
        ];
        for url in ok {
            assert!(check_cert_url(url, &[]).is_ok(), "{url}");
        }
        let refused = [
            ("http://sns.us-east-1.amazonaws.com/x.pem", "not https"),
            (
                "https://sns.us-east-1.amazonaws.com.evil.com/x.pem",
                "host is not sns.<region>.amazonaws.com",
            ),
            (
                "https://evil.com/sns.us-east-1.amazonaws.com/x.pem",
                "host is not sns.<region>.amazonaws.com",
            ),
            (
                "https://sns.us-east-1.amazonaws.com/x.txt",
                "path does not end in .pem",
            ),
            (
                "https://sns.us-east-1.amazonaws.com:8443/x.pem",
                "non-standard port",
            ),
            (
                "https://user:pw@sns.us-east-1.amazonaws.com/x.pem",
                "carries credentials",
            ),
            (
                "https://s3.us-east-1.amazonaws.com/x.pem",
                "host is not sns.<region>.amazonaws.com",
            ),
            ("file:///etc/passwd", "not https"),
            ("not a url", "not a URL"),
        ];
        for (url, why) in refused {
            match check_cert_url(url, &[]) {
                Err(VerifyError::CertUrlRefused { why: w, .. }) => assert_eq!(w, why, "{url}"),
                other => panic!("{url}: {other:?}"),
            }
        }
        let local = vec!["http://127.0.0.1:4566/_aws/sns/".to_string()];
        assert!(check_cert_url(
            "http://127.0.0.1:4566/_aws/sns/SimpleNotificationService-x.pem",
            &local
        )
        .is_ok());
        assert!(check_cert_url("http://127.0.0.1:4566@evil.com/_aws/sns/x.pem", &local).is_err());
    }

    #[test]
    fn string_to_sign_follows_the_aws_order_and_skips_an_absent_subject() {
        let env = SnsEnvelope {
            kind: "Notification".into(),
            message_id: "m".into(),
            topic_arn: "t".into(),
            subject: None,
            message: "{\"a\":1}".into(),
            timestamp: "2026-01-01T00:00:00.000Z".into(),
            signature_version: Some("1".into()),
            signature: None,
            signing_cert_url: None,
        };
        assert_eq!(
            string_to_sign(&env),
            "Message\n{\"a\":1}\nMessageId\nm\nTimestamp\n2026-01-01T00:00:00.000Z\nTopicArn\nt\nType\nNotification\n"
        );
        let with_subject = SnsEnvelope {
            subject: Some("s".into()),
            ..env
        };
        assert!(string_to_sign(&with_subject).contains("MessageId\nm\nSubject\ns\nTimestamp\n"));
    }
}
