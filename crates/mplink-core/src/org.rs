//! The one rule for the ids a host chooses: organization ids, applied by every entry point that
//! takes one (the API's link, billing and usage routes, `mplink link`, `mplink usage record`,
//! `mplink status --org`), so an id that can be linked can always be metered; and, with their
//! own lengths, the host's user ids, usage idempotency keys and dimension names.
//!
//! An id is 1 to [`MAX_CHARS`] characters, none of them whitespace, a control character
//! (Unicode Cc) or a format character (Cf: bidi overrides, zero-width spaces, soft hyphens),
//! which would make the same id print differently or invisibly in logs, tables and pages.

use thiserror::Error;
use unicode_properties::{GeneralCategory, UnicodeGeneralCategory};

/// Longest organization id, in characters (Unicode scalar values, as JSON Schema counts).
pub const MAX_CHARS: usize = 128;

/// Why an organization id is refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum OrgIdError {
    /// Nothing at all.
    #[error("is empty")]
    Empty,
    /// Over the limit: (length, limit), in characters.
    #[error("is {0} characters long; at most {1}")]
    TooLong(usize, usize),
    /// A character the rule refuses, named by its code point and position (not echoed, since
    /// it may be invisible or reorder the line it is printed on).
    #[error("holds {kind} U+{code:04X} at character {position}; ids may not hold whitespace, control or format characters")]
    Refused {
        /// `whitespace`, `a control character` or `a format character`.
        kind: &'static str,
        /// The code point.
        code: u32,
        /// Its position, from 1.
        position: usize,
    },
}

impl OrgIdError {
    /// A stable reason code.
    pub fn reason(&self) -> &'static str {
        match self {
            OrgIdError::Empty => "empty",
            OrgIdError::TooLong(..) => "too_long",
            OrgIdError::Refused { .. } => "refused_character",
        }
    }
}

/// What the rule says of one character: `None` when it may appear in an id.
pub fn refused_kind(c: char) -> Option<&'static str> {
    if c.is_control() {
        Some("a control character")
    } else if c.is_whitespace() {
        Some("whitespace")
    } else if c.general_category() == GeneralCategory::Format {
        Some("a format character")
    } else {
        None
    }
}

/// Checks an organization id against the rule.
pub fn check(id: &str) -> Result<(), OrgIdError> {
    check_id(id, MAX_CHARS)
}

/// Checks any host-chosen id against the rule, at most `max_chars` long.
pub fn check_id(id: &str, max_chars: usize) -> Result<(), OrgIdError> {
    if id.is_empty() {
        return Err(OrgIdError::Empty);
    }
    let mut count = 0;
    for (i, c) in id.chars().enumerate() {
        if let Some(kind) = refused_kind(c) {
            return Err(OrgIdError::Refused {
                kind,
                code: c as u32,
                position: i + 1,
            });
        }
        count += 1;
    }
    if count > max_chars {
        return Err(OrgIdError::TooLong(count, max_chars));
    }
    Ok(())
}

/// The rule as a JSON Schema `pattern` (with `minLength` 1 and `maxLength` the id's limit): one
/// negated class of every refused character, written with `\uXXXX` and `\UXXXXXXXX` escapes,
/// which Python's `re` (Schemathesis) and Rust's `regex` read alike. Built from
/// [`refused_kind`], so the schema cannot drift from the check.
pub fn pattern() -> String {
    let mut class = String::new();
    let mut start: Option<u32> = None;
    let mut previous = 0u32;
    let flush = |class: &mut String, from: u32, to: u32| {
        class.push_str(&escape(from));
        if to > from {
            class.push('-');
            class.push_str(&escape(to));
        }
    };
    for c in (0..=0x10FFFFu32).filter_map(char::from_u32) {
        let code = c as u32;
        if refused_kind(c).is_some() {
            match start {
                Some(_) if code == previous + 1 => {}
                Some(from) => {
                    flush(&mut class, from, previous);
                    start = Some(code);
                }
                None => start = Some(code),
            }
            previous = code;
        }
    }
    if let Some(from) = start {
        flush(&mut class, from, previous);
    }
    format!("^[^{class}]+$")
}

fn escape(code: u32) -> String {
    if code <= 0xFFFF {
        format!("\\u{code:04X}")
    } else {
        format!("\\U{code:08X}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rule() {
        for good in [
            "org-1",
            "acme_corp",
            "Acme.Corp",
            "組織-7",
            &"x".repeat(128),
        ] {
            assert_eq!(check(good), Ok(()), "{good:?}");
        }
        assert_eq!(check(""), Err(OrgIdError::Empty));
        assert_eq!(check(&"é".repeat(129)), Err(OrgIdError::TooLong(129, 128)));
        assert_eq!(check_id(&"é".repeat(255), 255), Ok(()));
        for (bad, code) in [
            ("Acme Corp", 0x20),
            (" org", 0x20),
            ("org\n", 0x0A),
            ("a\u{7}b", 0x07),
            ("org\u{202E}1", 0x202E),
            ("org\u{200B}1", 0x200B),
            ("org\u{FEFF}", 0xFEFF),
            ("org\u{00A0}1", 0xA0),
            ("org\u{E0041}", 0xE0041),
        ] {
            match check(bad) {
                Err(OrgIdError::Refused { code: got, .. }) => assert_eq!(got, code, "{bad:?}"),
                other => panic!("{bad:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn the_message_names_the_character_without_printing_it() {
        let e = check("org\u{202E}1").unwrap_err().to_string();
        assert!(e.contains("U+202E") && e.contains("character 4"), "{e}");
        assert!(!e.contains('\u{202E}'));
    }
}
