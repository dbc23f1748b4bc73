//! The double refuses what AWS refuses before an operation runs: no `Authorization` header, a
//! malformed SigV4 one, a credential scoped to another service than `aws-marketplace`, a missing
//! or stale `X-Amz-Date`, and — for the access keys it knows the secret of — a signature that
//! does not match the request.

use super::wire::AwsError;
use axum::http::{HeaderMap, Method, Uri};
use chrono::{DateTime, NaiveDateTime, Utc};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use std::time::Duration;
use subtle::ConstantTimeEq;

/// The SigV4 signing name of both Marketplace services.
pub const SIGNING_NAME: &str = "aws-marketplace";
const ALGORITHM: &str = "AWS4-HMAC-SHA256";

/// What the signature check needs from the double's configuration.
pub struct Policy<'a> {
    /// Access key id → secret, verified completely.
    pub credentials: &'a [(String, String)],
    /// Refuse access key ids not in `credentials`.
    pub require_known: bool,
    /// How far `X-Amz-Date` may be from now.
    pub skew: Duration,
}

struct Authorization<'a> {
    access_key: &'a str,
    date: &'a str,
    region: &'a str,
    service: &'a str,
    signed_headers: Vec<&'a str>,
    signature: &'a str,
}

fn missing_token() -> AwsError {
    AwsError::new(
        "MissingAuthenticationTokenException",
        403,
        "Missing Authentication Token",
    )
}

fn incomplete(message: impl Into<String>) -> AwsError {
    AwsError::new("IncompleteSignatureException", 400, message)
}

fn invalid(message: impl Into<String>) -> AwsError {
    AwsError::new("InvalidSignatureException", 403, message)
}

fn parse(header: &str) -> Result<Authorization<'_>, AwsError> {
    let rest = header
        .strip_prefix(ALGORITHM)
        .and_then(|r| r.strip_prefix(' '))
        .ok_or_else(|| {
            incomplete(format!(
                "Unsupported authorization algorithm, expected {ALGORITHM}"
            ))
        })?;
    let (mut credential, mut signed, mut signature) = (None, None, None);
    for part in rest.split(',') {
        let part = part.trim();
        if let Some(v) = part.strip_prefix("Credential=") {
            credential = Some(v);
        } else if let Some(v) = part.strip_prefix("SignedHeaders=") {
            signed = Some(v);
        } else if let Some(v) = part.strip_prefix("Signature=") {
            signature = Some(v);
        }
    }
    let (Some(credential), Some(signed), Some(signature)) = (credential, signed, signature) else {
        return Err(incomplete(
            "Authorization header requires 'Credential', 'SignedHeaders' and 'Signature' parameters",
        ));
    };
    let scope: Vec<&str> = credential.split('/').collect();
    let [access_key, date, region, service, terminator] = scope[..] else {
        return Err(incomplete(format!(
            "Credential should have five parts: access key/date/region/service/aws4_request, got {} parts",
            scope.len()
        )));
    };
    if terminator != "aws4_request" || access_key.is_empty() || region.is_empty() {
        return Err(incomplete("Credential scope must end with aws4_request"));
    }
    if signature.len() != 64 || !signature.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(incomplete("Signature must be 64 hexadecimal characters"));
    }
    let signed_headers: Vec<&str> = signed.split(';').collect();
    if signed_headers.iter().any(|h| h.is_empty()) {
        return Err(incomplete("SignedHeaders is malformed"));
    }
    Ok(Authorization {
        access_key,
        date,
        region,
        service,
        signed_headers,
        signature,
    })
}

/// Checks the request's SigV4 signature; returns the access key id it was signed with.
pub fn check(
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
    policy: &Policy<'_>,
    now: DateTime<Utc>,
) -> Result<String, AwsError> {
    let header = headers
        .get("authorization")
        .ok_or_else(missing_token)?
        .to_str()
        .map_err(|_| incomplete("Authorization header is not ASCII"))?;
    let auth = parse(header)?;
    let amz_date = headers
        .get("x-amz-date")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| {
            incomplete("Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header.")
        })?;
    let signed_at = NaiveDateTime::parse_from_str(amz_date, "%Y%m%dT%H%M%SZ")
        .map_err(|_| {
            incomplete(format!(
                "X-Amz-Date {amz_date:?} is not in the form YYYYMMDDTHHMMSSZ"
            ))
        })?
        .and_utc();
    if auth.service != SIGNING_NAME {
        return Err(invalid(format!(
            "Credential should be scoped to correct service: '{SIGNING_NAME}'."
        )));
    }
    if !amz_date.starts_with(auth.date) || auth.date.len() != 8 {
        return Err(invalid(format!(
            "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from HTTP: '{}' != '{}'",
            auth.date,
            &amz_date[..8.min(amz_date.len())]
        )));
    }
    let skew = chrono::Duration::from_std(policy.skew).unwrap_or(chrono::Duration::minutes(15));
    if (now - signed_at).abs() > skew {
        return Err(invalid(format!(
            "Signature expired: {amz_date} is now earlier than {} or later than {}",
            (now - skew).format("%Y%m%dT%H%M%SZ"),
            (now + skew).format("%Y%m%dT%H%M%SZ")
        )));
    }
    for required in ["host", "x-amz-date"] {
        if !auth.signed_headers.contains(&required) {
            return Err(invalid(format!("'{required}' must be a signed header")));
        }
    }
    let secret = policy
        .credentials
        .iter()
        .find(|(id, _)| id == auth.access_key)
        .map(|(_, secret)| secret.as_str());
    match secret {
        Some(secret) => {
            let expected = signature(method, uri, headers, body, &auth, amz_date, secret)?;
            if !bool::from(expected.as_bytes().ct_eq(auth.signature.as_bytes())) {
                return Err(invalid(
                    "The request signature we calculated does not match the signature you provided.",
                ));
            }
        }
        None if policy.require_known => {
            return Err(AwsError::new(
                "UnrecognizedClientException",
                403,
                "The security token included in the request is invalid.",
            ));
        }
        None => {}
    }
    Ok(auth.access_key.to_string())
}

fn hex_sha256(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

fn hmac(key: &[u8], data: &str) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(data.as_bytes());
    mac.finalize().into_bytes().to_vec()
}

fn signature(
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
    auth: &Authorization<'_>,
    amz_date: &str,
    secret: &str,
) -> Result<String, AwsError> {
    let mut canonical_headers = String::new();
    for name in &auth.signed_headers {
        let values: Vec<String> = headers
            .get_all(*name)
            .iter()
            .map(|v| {
                String::from_utf8_lossy(v.as_bytes())
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .collect();
        if values.is_empty() {
            return Err(invalid(format!(
                "signed header '{name}' is not in the request"
            )));
        }
        canonical_headers.push_str(&format!("{name}:{}\n", values.join(",")));
    }
    let payload_hash = headers
        .get("x-amz-content-sha256")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .unwrap_or_else(|| hex_sha256(body));
    let mut query: Vec<&str> = uri
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|q| !q.is_empty())
        .collect();
    query.sort_unstable();
    let canonical_request = format!(
        "{method}\n{}\n{}\n{canonical_headers}\n{}\n{payload_hash}",
        if uri.path().is_empty() {
            "/"
        } else {
            uri.path()
        },
        query.join("&"),
        auth.signed_headers.join(";"),
    );
    let scope = format!(
        "{}/{}/{}/aws4_request",
        auth.date, auth.region, auth.service
    );
    let string_to_sign = format!(
        "{ALGORITHM}\n{amz_date}\n{scope}\n{}",
        hex_sha256(canonical_request.as_bytes())
    );
    let mut key = hmac(format!("AWS4{secret}").as_bytes(), auth.date);
    for part in [auth.region, auth.service, "aws4_request"] {
        key = hmac(&key, part);
    }
    Ok(hex::encode(hmac(&key, &string_to_sign)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> (Vec<(String, String)>, Duration) {
        (
            vec![("test".to_string(), "test".to_string())],
            Duration::from_secs(900),
        )
    }

    #[test]
    fn a_missing_header_is_a_missing_token() {
        let (creds, skew) = policy();
        let p = Policy {
            credentials: &creds,
            require_known: false,
            skew,
        };
        let err = check(
            &Method::POST,
            &Uri::from_static("/"),
            &HeaderMap::new(),
            b"",
            &p,
            Utc::now(),
        )
        .unwrap_err();
        assert_eq!(err.code, "MissingAuthenticationTokenException");
        assert_eq!(err.status, 403);
    }

    #[test]
    fn malformed_and_misscoped_headers_are_refused() {
        let (creds, skew) = policy();
        let p = Policy {
            credentials: &creds,
            require_known: false,
            skew,
        };
        let now = Utc::now();
        let date = now.format("%Y%m%dT%H%M%SZ").to_string();
        let day = &date[..8];
        let sig = "0".repeat(64);
        let cases = [
            ("Bearer abc".to_string(), Some(date.clone()), "IncompleteSignatureException"),
            (format!("{ALGORITHM} Credential=test/{day}/us-east-1/aws-marketplace/aws4_request, Signature={sig}"), Some(date.clone()), "IncompleteSignatureException"),
            (format!("{ALGORITHM} Credential=other/{day}/us-east-1/aws-marketplace/aws4_request, SignedHeaders=host;x-amz-date, Signature={sig}"), None, "IncompleteSignatureException"),
            (format!("{ALGORITHM} Credential=other/{day}/us-east-1/execute-api/aws4_request, SignedHeaders=host;x-amz-date, Signature={sig}"), Some(date.clone()), "InvalidSignatureException"),
            (format!("{ALGORITHM} Credential=test/{day}/us-east-1/aws-marketplace/aws4_request, SignedHeaders=host;x-amz-date, Signature={sig}"), Some(date.clone()), "InvalidSignatureException"),
        ];
        for (authorization, amz_date, code) in cases {
            let mut headers = HeaderMap::new();
            headers.insert("authorization", authorization.parse().unwrap());
            headers.insert("host", "localhost".parse().unwrap());
            if let Some(d) = amz_date {
                headers.insert("x-amz-date", d.parse().unwrap());
            }
            let err = check(
                &Method::POST,
                &Uri::from_static("/"),
                &headers,
                b"{}",
                &p,
                now,
            )
            .unwrap_err();
            assert_eq!(err.code, code, "{authorization}");
        }
        // The same well-formed header from an unknown key passes the form check only.
        let mut headers = HeaderMap::new();
        headers.insert("authorization", format!("{ALGORITHM} Credential=other/{day}/us-east-1/aws-marketplace/aws4_request, SignedHeaders=host;x-amz-date, Signature={sig}").parse().unwrap());
        headers.insert("host", "localhost".parse().unwrap());
        headers.insert("x-amz-date", date.parse().unwrap());
        assert_eq!(
            check(
                &Method::POST,
                &Uri::from_static("/"),
                &headers,
                b"{}",
                &p,
                now
            )
            .unwrap(),
            "other"
        );
        let strict = Policy {
            require_known: true,
            ..p
        };
        assert_eq!(
            check(
                &Method::POST,
                &Uri::from_static("/"),
                &headers,
                b"{}",
                &strict,
                now
            )
            .unwrap_err()
            .code,
            "UnrecognizedClientException"
        );
    }
}
