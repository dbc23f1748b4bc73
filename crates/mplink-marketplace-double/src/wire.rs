//! AWS JSON 1.1 as the Marketplace services speak it: `POST /` with `X-Amz-Target`, answers as
//! `application/x-amz-json-1.1`, errors as `{"__type": …, "message": …}` with the shape name in
//! `x-amzn-errortype` too (what the SDK's error parser reads first).

use super::model::Failure;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

/// The content type of every AWS JSON 1.1 request and answer.
pub const CONTENT_TYPE: &str = "application/x-amz-json-1.1";

/// An error answer in AWS's shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwsError {
    /// The error shape name, e.g. `InvalidTokenException`.
    pub code: String,
    /// The HTTP status AWS sends with it.
    pub status: u16,
    /// The human-readable message.
    pub message: String,
}

impl AwsError {
    /// An error with this shape name, status and message.
    pub fn new(code: &str, status: u16, message: impl Into<String>) -> AwsError {
        AwsError {
            code: code.to_string(),
            status,
            message: message.into(),
        }
    }

    /// A 400 `ValidationException`, what AWS answers when input breaks the model's constraints.
    pub fn validation(message: impl Into<String>) -> AwsError {
        AwsError::new("ValidationException", 400, message)
    }

    /// A 400 `SerializationException`: the body was not the JSON object the operation takes.
    pub fn serialization(message: impl Into<String>) -> AwsError {
        AwsError::new("SerializationException", 400, message)
    }

    /// The error an injected [`Failure`] stands for.
    pub fn from_failure(failure: &Failure) -> AwsError {
        let (code, status, message) = failure.shape();
        AwsError {
            code,
            status,
            message,
        }
    }

    /// The JSON body AWS sends.
    pub fn body(&self) -> Value {
        json!({ "__type": self.code, "message": self.message })
    }
}

/// A 200 answer with `body`.
pub fn ok_response(body: &Value, request_id: &str) -> Response {
    with_headers(StatusCode::OK, body.to_string(), request_id, None)
}

/// An error answer.
pub fn error_response(error: &AwsError, request_id: &str) -> Response {
    let status = StatusCode::from_u16(error.status).unwrap_or(StatusCode::BAD_REQUEST);
    with_headers(
        status,
        error.body().to_string(),
        request_id,
        Some(&error.code),
    )
}

fn with_headers(
    status: StatusCode,
    body: String,
    request_id: &str,
    error_type: Option<&str>,
) -> Response {
    let mut response = (status, body).into_response();
    let headers = response.headers_mut();
    headers.insert(
        axum::http::header::CONTENT_TYPE,
        HeaderValue::from_static(CONTENT_TYPE),
    );
    if let Ok(v) = HeaderValue::from_str(request_id) {
        headers.insert("x-amzn-requestid", v);
    }
    if let Some(Ok(v)) = error_type.map(HeaderValue::from_str) {
        headers.insert("x-amzn-errortype", v);
    }
    response
}

/// A fresh id in the form AWS uses for request and metering record ids.
pub fn new_id() -> String {
    let bytes: [u8; 16] = rand::random();
    let h = hex::encode(bytes);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// Reads an optional string member; a member of another type is a `SerializationException`.
pub fn opt_str<'a>(input: &'a Value, name: &str) -> Result<Option<&'a str>, AwsError> {
    match input.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(AwsError::serialization(format!(
            "{name}: expected a string"
        ))),
    }
}

/// Reads a required, non-empty string member.
pub fn req_str<'a>(input: &'a Value, name: &str) -> Result<&'a str, AwsError> {
    match opt_str(input, name)? {
        Some(s) if !s.is_empty() => Ok(s),
        _ => Err(AwsError::validation(format!(
            "1 validation error detected: Value null at '{name}' failed to satisfy constraint: Member must not be null"
        ))),
    }
}

/// Reads an optional integer member.
pub fn opt_int(input: &Value, name: &str) -> Result<Option<i64>, AwsError> {
    match input.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_i64()
            .map(Some)
            .ok_or_else(|| AwsError::serialization(format!("{name}: expected an integer"))),
    }
}

/// Reads a timestamp member: AWS JSON 1.1 sends epoch seconds, possibly fractional.
pub fn req_timestamp(input: &Value, name: &str) -> Result<chrono::DateTime<chrono::Utc>, AwsError> {
    let secs = input
        .get(name)
        .and_then(Value::as_f64)
        .ok_or_else(|| AwsError::validation(format!("{name}: expected epoch seconds")))?;
    let whole = secs.floor();
    let nanos = ((secs - whole) * 1e9).round().clamp(0.0, 999_999_999.0) as u32;
    chrono::DateTime::from_timestamp(whole as i64, nanos)
        .ok_or_else(|| AwsError::validation(format!("{name}: {secs} is not a valid time")))
}

/// Epoch seconds, as AWS JSON 1.1 sends timestamps.
pub fn epoch_seconds(t: chrono::DateTime<chrono::Utc>) -> Value {
    if t.timestamp_subsec_millis() == 0 {
        json!(t.timestamp())
    } else {
        json!(t.timestamp_millis() as f64 / 1000.0)
    }
}

/// A page token names the offset and the query it belongs to (this fingerprint of it), so it
/// cannot page another query.
pub fn fingerprint(query: &Value) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(&Sha256::digest(query.to_string().as_bytes())[..8])
}

/// The token of the page starting at `offset` of the query `fp` names.
pub fn encode_token(offset: usize, fp: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{offset}.{fp}"))
}

/// The offset `token` names, if it is a token of the query `fp` names (each service answers a
/// foreign token with its own error).
pub fn decode_token(token: &str, fp: &str) -> Option<usize> {
    use base64::Engine;
    let text = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())?;
    let (offset, token_fp) = text.split_once('.')?;
    if token_fp != fp {
        return None;
    }
    offset.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_read_whole_and_fractional_seconds() {
        let v = json!({"T": 1_764_000_000.5, "U": 1_764_000_000});
        assert_eq!(
            req_timestamp(&v, "T").unwrap().timestamp_millis(),
            1_764_000_000_500
        );
        assert_eq!(req_timestamp(&v, "U").unwrap().timestamp(), 1_764_000_000);
        assert!(req_timestamp(&v, "V").is_err());
        assert_eq!(
            epoch_seconds(req_timestamp(&v, "T").unwrap()),
            json!(1_764_000_000.5)
        );
    }

    #[test]
    fn ids_look_like_uuids() {
        let id = new_id();
        assert_eq!(id.len(), 36);
        assert_ne!(id, new_id());
    }
}
