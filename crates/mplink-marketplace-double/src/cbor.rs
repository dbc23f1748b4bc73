//! Smithy RPC v2 CBOR bodies as JSON values, so one implementation of an operation serves both
//! protocols. `aws-sdk-marketplaceentitlement` 1.126 speaks RPC v2 CBOR, not AWS JSON 1.1.
//! Timestamps travel as CBOR tag 1 (epoch seconds) and become plain epoch-second numbers here,
//! which is what AWS JSON 1.1 sends.

use minicbor::data::{IanaTag, Tag, Type};
use minicbor::{Decoder, Encoder};
use serde_json::{Map, Number, Value};

/// Deepest nesting accepted in a request body.
const MAX_DEPTH: usize = 32;

/// Why a body is not the CBOR the operation takes.
#[derive(Debug, thiserror::Error)]
#[error("CBOR body at byte {position}: {reason}")]
pub struct CborError {
    position: usize,
    reason: String,
}

fn error(position: usize, reason: impl std::fmt::Display) -> CborError {
    CborError {
        position,
        reason: reason.to_string(),
    }
}

/// Decodes one CBOR item into a JSON value (an empty body is an empty object, as Smithy says).
pub fn decode(bytes: &[u8]) -> Result<Value, CborError> {
    if bytes.is_empty() {
        return Ok(Value::Object(Map::new()));
    }
    let mut d = Decoder::new(bytes);
    let value = item(&mut d, 0)?;
    if d.position() != bytes.len() {
        return Err(error(d.position(), "trailing bytes after the body"));
    }
    Ok(value)
}

fn text(d: &mut Decoder<'_>) -> Result<String, CborError> {
    let at = d.position();
    match d.datatype().map_err(|e| error(at, e))? {
        Type::String => d.str().map(str::to_string).map_err(|e| error(at, e)),
        Type::StringIndef => {
            let mut out = String::new();
            let chunks: Result<Vec<&str>, _> = d.str_iter().map_err(|e| error(at, e))?.collect();
            for chunk in chunks.map_err(|e| error(at, e))? {
                out.push_str(chunk);
            }
            Ok(out)
        }
        other => Err(error(
            d.position(),
            format!("expected a text string, found {other}"),
        )),
    }
}

/// Reads the elements of an array or map: `Some(n)` of them, or until a break (`None`).
fn elements(
    d: &mut Decoder<'_>,
    len: Option<u64>,
    mut each: impl FnMut(&mut Decoder<'_>) -> Result<(), CborError>,
) -> Result<(), CborError> {
    match len {
        Some(n) => (0..n).try_for_each(|_| each(d)),
        None => loop {
            let at = d.position();
            if d.datatype().map_err(|e| error(at, e))? == Type::Break {
                d.set_position(d.position() + 1);
                return Ok(());
            }
            each(d)?;
        },
    }
}

fn float(at: usize, f: f64) -> Result<Value, CborError> {
    Number::from_f64(f)
        .map(Value::Number)
        .ok_or_else(|| error(at, "a number that is not finite"))
}

fn item(d: &mut Decoder<'_>, depth: usize) -> Result<Value, CborError> {
    if depth > MAX_DEPTH {
        return Err(error(
            d.position(),
            format!("nested deeper than {MAX_DEPTH}"),
        ));
    }
    let at = d.position();
    let ty = d.datatype().map_err(|e| error(at, e))?;
    Ok(match ty {
        Type::Bool => Value::Bool(d.bool().map_err(|e| error(at, e))?),
        Type::Null | Type::Undefined => {
            d.skip().map_err(|e| error(at, e))?;
            Value::Null
        }
        Type::U8 | Type::U16 | Type::U32 | Type::U64 => {
            Value::from(d.u64().map_err(|e| error(at, e))?)
        }
        Type::I8 | Type::I16 | Type::I32 | Type::I64 => {
            Value::from(d.i64().map_err(|e| error(at, e))?)
        }
        Type::F16 => float(at, f64::from(d.f16().map_err(|e| error(at, e))?))?,
        Type::F32 => float(at, f64::from(d.f32().map_err(|e| error(at, e))?))?,
        Type::F64 => float(at, d.f64().map_err(|e| error(at, e))?)?,
        Type::String | Type::StringIndef => Value::String(text(d)?),
        Type::Array | Type::ArrayIndef => {
            let len = d.array().map_err(|e| error(at, e))?;
            let mut out = Vec::new();
            elements(d, len, |d| {
                out.push(item(d, depth + 1)?);
                Ok(())
            })?;
            Value::Array(out)
        }
        Type::Map | Type::MapIndef => {
            let len = d.map().map_err(|e| error(at, e))?;
            let mut out = Map::new();
            elements(d, len, |d| {
                let key = text(d)?;
                let value = item(d, depth + 1)?;
                out.insert(key, value);
                Ok(())
            })?;
            Value::Object(out)
        }
        Type::Tag => {
            let tag = d.tag().map_err(|e| error(at, e))?;
            if tag != Tag::from(IanaTag::Timestamp) {
                return Err(error(d.position(), format!("unsupported tag {tag:?}")));
            }
            let seconds = item(d, depth + 1)?;
            if !seconds.is_number() {
                return Err(error(d.position(), "a timestamp tag must hold a number"));
            }
            seconds
        }
        other => {
            return Err(error(
                d.position(),
                format!("unsupported CBOR type {other}"),
            ))
        }
    })
}

/// Encodes a JSON value as CBOR; members named in `timestamps` become tag-1 epoch seconds.
pub fn encode(value: &Value, timestamps: &[&str]) -> Vec<u8> {
    let mut e = Encoder::new(Vec::new());
    write(&mut e, value, timestamps, false);
    e.into_writer()
}

fn write(e: &mut Encoder<Vec<u8>>, value: &Value, timestamps: &[&str], as_timestamp: bool) {
    // Writing into a Vec cannot fail.
    let _ = match value {
        Value::Null => e.null().map(|_| ()),
        Value::Bool(b) => e.bool(*b).map(|_| ()),
        Value::Number(n) => {
            if as_timestamp {
                let _ = e.tag(IanaTag::Timestamp);
            }
            match (n.as_i64(), n.as_u64(), n.as_f64()) {
                (Some(i), _, _) => e.i64(i).map(|_| ()),
                (None, Some(u), _) => e.u64(u).map(|_| ()),
                (None, None, f) => e.f64(f.unwrap_or(0.0)).map(|_| ()),
            }
        }
        Value::String(s) => e.str(s).map(|_| ()),
        Value::Array(items) => {
            let r = e.array(items.len() as u64).map(|_| ());
            for i in items {
                write(e, i, timestamps, false);
            }
            r
        }
        Value::Object(map) => {
            let r = e.map(map.len() as u64).map(|_| ());
            for (k, v) in map {
                let _ = e.str(k);
                write(e, v, timestamps, timestamps.contains(&k.as_str()));
            }
            r
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn values_round_trip_and_timestamps_are_tagged() {
        let v =
            json!({"A": [1, -2, 2.5, true, null, "x"], "ExpirationDate": 1_800_000_000, "M": {}});
        let bytes = encode(&v, &["ExpirationDate"]);
        assert_eq!(decode(&bytes).unwrap(), v);
        // Tag 1 (0xc1) precedes the timestamp's number.
        let ts = encode(&json!({"ExpirationDate": 5}), &["ExpirationDate"]);
        assert!(ts.windows(2).any(|w| w == [0xc1, 0x05]), "{ts:x?}");
    }

    #[test]
    fn indefinite_lengths_and_bad_input() {
        // {_ "a": [_ 1, 2] } with indefinite map and array.
        let bytes = [0xbf, 0x61, b'a', 0x9f, 0x01, 0x02, 0xff, 0xff];
        assert_eq!(decode(&bytes).unwrap(), json!({"a": [1, 2]}));
        assert!(decode(&[0xbf, 0x61]).is_err(), "truncated");
        assert!(decode(&[0x01, 0x02]).is_err(), "trailing bytes");
        let deep: Vec<u8> = std::iter::repeat_n(0x81, 100).chain([0x01]).collect();
        assert!(decode(&deep).is_err(), "too deep");
        assert_eq!(decode(&[]).unwrap(), json!({}));
    }
}
