//! Field access for one message and the wording of what is wrong with a field: the paths, types
//! and echoed values every error names.

use super::Object;
use crate::time::parse_rfc3339;
use serde_json::Value;

use crate::event::{normalize_identifier, DecodeError};

/// Errors end up in logs and the event log, so values copied from the body are capped.
pub(super) const ECHO_LIMIT: usize = 100;

/// Field access for one message; `prefix` names the enclosing field in error paths.
pub(super) struct FieldReader<'a> {
    pub(super) message_id: &'a str,
    prefix: &'static str,
}

impl<'a> FieldReader<'a> {
    pub(super) fn new(message_id: &'a str, prefix: &'static str) -> Self {
        FieldReader { message_id, prefix }
    }

    pub(super) fn field(&self, path: &[&str]) -> String {
        format!("{}{}", self.prefix, path.join("."))
    }

    pub(super) fn missing(&self, path: &[&str]) -> DecodeError {
        DecodeError::MissingField {
            message_id: self.message_id.to_owned(),
            field: self.field(path),
        }
    }

    pub(super) fn wrong_type(&self, path: &[&str], expected: &'static str) -> DecodeError {
        DecodeError::WrongType {
            message_id: self.message_id.to_owned(),
            field: self.field(path),
            expected,
        }
    }

    pub(super) fn invalid(&self, path: &[&str], value: &str) -> DecodeError {
        DecodeError::InvalidValue {
            message_id: self.message_id.to_owned(),
            field: self.field(path),
            value: truncate(value),
        }
    }

    pub(super) fn parse_object(
        &self,
        text: &str,
        field: &'static str,
    ) -> Result<Object, DecodeError> {
        let not_json = |detail: String| DecodeError::NotJson {
            message_id: self.message_id.to_owned(),
            field,
            detail,
        };
        match serde_json::from_str::<Value>(text) {
            Ok(Value::Object(object)) => Ok(object),
            Ok(other) => Err(not_json(format!("found {}", json_kind(&other)))),
            Err(e) => Err(not_json(e.to_string())),
        }
    }

    /// The value at `path`; `None` when it or any parent is absent or null.
    pub(super) fn lookup<'v>(
        &self,
        root: &'v Object,
        path: &[&str],
    ) -> Result<Option<&'v Value>, DecodeError> {
        let mut object = root;
        for (depth, key) in path.iter().enumerate() {
            match object.get(*key) {
                None | Some(Value::Null) => return Ok(None),
                Some(value) if depth + 1 == path.len() => return Ok(Some(value)),
                Some(Value::Object(inner)) => object = inner,
                Some(_) => return Err(self.wrong_type(&path[..=depth], "object")),
            }
        }
        Ok(None)
    }

    /// An optional string; an empty string says no more than an absent one. Control characters
    /// are refused: no identifier or time contains one, and PostgreSQL refuses `\u0000` in
    /// text, which would fail every event in the same transaction.
    pub(super) fn opt_str<'v>(
        &self,
        root: &'v Object,
        path: &[&str],
    ) -> Result<Option<&'v str>, DecodeError> {
        match self.lookup(root, path)? {
            None => Ok(None),
            Some(Value::String(s)) if s.is_empty() => Ok(None),
            // Surrounding whitespace (a tab, a newline) is trimmed from identifiers instead.
            Some(Value::String(s)) if s.trim().chars().any(char::is_control) => {
                Err(DecodeError::ControlCharacter {
                    message_id: self.message_id.to_owned(),
                    field: self.field(path),
                })
            }
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(self.wrong_type(path, "string")),
        }
    }

    /// A string that is itself a document (the SNS `Message`): newlines and tabs are its
    /// whitespace, but no other control character may hide in it.
    pub(super) fn req_document<'v>(
        &self,
        root: &'v Object,
        path: &[&str],
    ) -> Result<&'v str, DecodeError> {
        match self.lookup(root, path)? {
            Some(Value::String(s))
                if s.chars()
                    .any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t')) =>
            {
                Err(DecodeError::ControlCharacter {
                    message_id: self.message_id.to_owned(),
                    field: self.field(path),
                })
            }
            Some(Value::String(s)) if !s.is_empty() => Ok(s),
            Some(Value::String(_)) | None => Err(self.missing(path)),
            Some(_) => Err(self.wrong_type(path, "string")),
        }
    }

    pub(super) fn req_str<'v>(
        &self,
        root: &'v Object,
        path: &[&str],
    ) -> Result<&'v str, DecodeError> {
        self.opt_str(root, path)?.ok_or_else(|| self.missing(path))
    }

    /// An optional identifier, normalised by [`normalize_identifier`].
    pub(super) fn opt_id(
        &self,
        root: &Object,
        path: &[&str],
    ) -> Result<Option<String>, DecodeError> {
        Ok(self
            .opt_str(root, path)?
            .and_then(normalize_identifier)
            .map(str::to_owned))
    }

    pub(super) fn req_id(&self, root: &Object, path: &[&str]) -> Result<String, DecodeError> {
        self.opt_id(root, path)?.ok_or_else(|| self.missing(path))
    }

    /// The first of several places AWS puts the same identifier.
    pub(super) fn first_id(
        &self,
        root: &Object,
        paths: &[&[&str]],
    ) -> Result<Option<String>, DecodeError> {
        for path in paths {
            if let Some(id) = self.opt_id(root, path)? {
                return Ok(Some(id));
            }
        }
        Ok(None)
    }

    /// A required top-level identifier under its current key or, failing that, its old one.
    pub(super) fn req_id_either(
        &self,
        root: &Object,
        key: &str,
        old_key: &str,
    ) -> Result<String, DecodeError> {
        match self.opt_id(root, &[key])? {
            Some(s) => Ok(s),
            None => self
                .opt_id(root, &[old_key])?
                .ok_or_else(|| self.missing(&[key])),
        }
    }

    /// An optional flag: a JSON boolean, or the strings "true"/"false" SNS messages use.
    pub(super) fn opt_bool(
        &self,
        root: &Object,
        path: &[&str],
    ) -> Result<Option<bool>, DecodeError> {
        match self.lookup(root, path)? {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(Value::String(s)) => match s.trim() {
                "" => Ok(None),
                t if t.eq_ignore_ascii_case("true") => Ok(Some(true)),
                t if t.eq_ignore_ascii_case("false") => Ok(Some(false)),
                _ => Err(self.invalid(path, s)),
            },
            Some(_) => Err(self.wrong_type(path, "boolean")),
        }
    }

    /// An optional count: a JSON integer from 0 to `max`. AWS writes a number, so a string is
    /// the wrong type rather than a spelling to accept.
    pub(super) fn opt_count(
        &self,
        root: &Object,
        path: &[&str],
        max: u64,
    ) -> Result<Option<u32>, DecodeError> {
        match self.lookup(root, path)? {
            None => Ok(None),
            Some(Value::Number(n)) => n
                .as_u64()
                .filter(|&count| count <= max)
                .and_then(|count| u32::try_from(count).ok())
                .map(Some)
                .ok_or_else(|| self.invalid(path, &n.to_string())),
            Some(_) => Err(self.wrong_type(path, "a non-negative integer")),
        }
    }

    pub(super) fn opt_time_ms(
        &self,
        root: &Object,
        path: &[&str],
    ) -> Result<Option<i64>, DecodeError> {
        match self.opt_str(root, path)? {
            None => Ok(None),
            Some(text) => parse_rfc3339(text)
                .map(Some)
                .ok_or_else(|| self.invalid(path, text)),
        }
    }

    pub(super) fn req_time_ms(&self, root: &Object, path: &[&str]) -> Result<i64, DecodeError> {
        let text = self.req_str(root, path)?;
        parse_rfc3339(text).ok_or_else(|| self.invalid(path, text))
    }
}

pub(super) fn truncate(text: &str) -> String {
    text.chars().take(ECHO_LIMIT).collect()
}

pub(super) fn echo(value: &Value) -> String {
    match value {
        Value::String(s) => truncate(s),
        other => truncate(&other.to_string()),
    }
}

pub(super) fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}
