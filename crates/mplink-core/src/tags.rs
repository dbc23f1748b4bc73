//! Usage allocation tags: the host labels a usage report with up to five key/value tags
//! (project, environment, team), and closing an hour turns a record's usage into one
//! `UsageAllocation` per tag set, which AWS shows the buyer in Cost Explorer by tag.
//!
//! AWS's rules for a metering `Tag` (API reference, `marketplace-metering` `Tag`): a key of 1 to
//! 100 characters and a value of 1 to 256, each matching `^[a-zA-Z0-9+ -=._:\/@]+$`. Read as a
//! regular expression that class holds the range from space to `=` (`!"#$%&'()*+,-./0-9:;<=`),
//! so those are allowed too; [`allowed`] follows the expression, not the prose. At most five
//! tags per allocation and 2,500 allocations per record.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use thiserror::Error;

/// Most tags on one report (and one allocation).
pub const MAX_TAGS: usize = 5;
/// Longest tag key, characters.
pub const MAX_KEY_CHARS: usize = 100;
/// Longest tag value, characters.
pub const MAX_VALUE_CHARS: usize = 256;
/// Most allocations on one usage record.
pub const MAX_ALLOCATIONS: usize = 2_500;
/// AWS's expression for keys and values, as a JSON Schema `pattern`.
pub const PATTERN: &str = "^[a-zA-Z0-9+ -=._:/@]+$";

/// A report's tags, ordered by key: the same set always compares and serializes alike.
pub type Tags = BTreeMap<String, String>;

/// Why a report's tags are refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TagError {
    /// More than [`MAX_TAGS`].
    #[error("{0} tags; at most 5")]
    TooMany(usize),
    /// A key or value of the wrong length.
    #[error("tag {what} {text:?} is {len} characters; 1 to {max} are allowed")]
    Length {
        /// `key` or `value`.
        what: &'static str,
        /// The key (of the value's tag), at most 100 characters.
        text: String,
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A character AWS refuses.
    #[error("tag {what} of {key:?} holds U+{code:04X}; AWS allows letters, digits, space to '=', '.', '_', ':', '/' and '@'")]
    Character {
        /// `key` or `value`.
        what: &'static str,
        /// The tag's key (shown only when it is itself allowed).
        key: String,
        /// The refused code point.
        code: u32,
    },
}

impl TagError {
    /// A stable reason code.
    pub fn reason(&self) -> &'static str {
        match self {
            TagError::TooMany(_) => "too_many_tags",
            TagError::Length { .. } => "tag_length",
            TagError::Character { .. } => "tag_character",
        }
    }
}

/// Whether AWS's expression allows `c` in a tag key or value.
pub fn allowed(c: char) -> bool {
    c.is_ascii_alphanumeric()
        || (' '..='=').contains(&c)
        || matches!(c, '.' | '_' | ':' | '/' | '@')
}

/// Checks a report's tags against AWS's rules.
pub fn check(tags: &Tags) -> Result<(), TagError> {
    if tags.len() > MAX_TAGS {
        return Err(TagError::TooMany(tags.len()));
    }
    for (key, value) in tags {
        let key_ok = key.chars().all(allowed);
        let shown = if key_ok {
            key.chars().take(MAX_KEY_CHARS).collect()
        } else {
            String::new()
        };
        for (what, text, max) in [
            ("key", key, MAX_KEY_CHARS),
            ("value", value, MAX_VALUE_CHARS),
        ] {
            let len = text.chars().count();
            if len == 0 || len > max {
                return Err(TagError::Length {
                    what,
                    text: shown.clone(),
                    len,
                    max,
                });
            }
            if let Some(c) = text.chars().find(|c| !allowed(*c)) {
                return Err(TagError::Character {
                    what,
                    key: shown.clone(),
                    code: c as u32,
                });
            }
        }
    }
    Ok(())
}

/// The canonical text of a tag set as stored: empty for none, else its JSON object (keys in
/// order), so equal sets group together in SQL.
pub fn canonical(tags: &Tags) -> String {
    if tags.is_empty() {
        String::new()
    } else {
        serde_json::to_string(tags).unwrap_or_default()
    }
}

/// Reads [`canonical`]'s text back (anything else is no tags).
pub fn parse(text: &str) -> Tags {
    if text.is_empty() {
        Tags::new()
    } else {
        serde_json::from_str(text).unwrap_or_default()
    }
}

/// One allocation of a record's quantity: the tags (none for untagged usage) and its part.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allocation {
    /// The tag set.
    pub tags: Tags,
    /// Its part of the record's quantity.
    pub quantity: i64,
}

/// A record's allocations from its usage grouped by tag set, or `None` when no usage was tagged
/// (the record is sent without `UsageAllocations`, as before tags existed). Untagged usage is an
/// allocation without tags; allocations of zero are dropped (AWS would show empty lines); past
/// [`MAX_ALLOCATIONS`] tag sets, the smallest are folded into the untagged allocation so the
/// quantities still add up to the record's. Ordered, so a resend carries the same list.
pub fn allocations(groups: &[(Tags, i64)]) -> Option<Vec<Allocation>> {
    if groups.iter().all(|(tags, _)| tags.is_empty()) {
        return None;
    }
    let mut by_set: BTreeMap<Tags, i64> = BTreeMap::new();
    for (tags, quantity) in groups {
        *by_set.entry(tags.clone()).or_default() += quantity;
    }
    let untagged = by_set.remove(&Tags::new()).unwrap_or(0);
    let mut tagged: Vec<(Tags, i64)> = by_set.into_iter().filter(|(_, q)| *q > 0).collect();
    // Largest first, ties by tag set, so the fold is deterministic.
    tagged.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let room = if untagged > 0 || tagged.len() > MAX_ALLOCATIONS {
        MAX_ALLOCATIONS - 1
    } else {
        MAX_ALLOCATIONS
    };
    let folded: i64 = tagged.iter().skip(room).map(|(_, q)| q).sum();
    tagged.truncate(room);
    let mut out: Vec<Allocation> = tagged
        .into_iter()
        .map(|(tags, quantity)| Allocation { tags, quantity })
        .collect();
    out.sort_by(|a, b| a.tags.cmp(&b.tags));
    if untagged + folded > 0 {
        out.push(Allocation {
            tags: Tags::new(),
            quantity: untagged + folded,
        });
    }
    (!out.is_empty()).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tags(pairs: &[(&str, &str)]) -> Tags {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn tags_follow_aws_rules() {
        assert_eq!(
            check(&tags(&[("project", "db-7"), ("env", "prod eu/1")])),
            Ok(())
        );
        assert_eq!(check(&tags(&[("k", "a#b")])), Ok(()), "'#' is inside ' -='");
        let six: Vec<(String, String)> = (0..6).map(|i| (format!("k{i}"), "v".into())).collect();
        assert_eq!(check(&six.into_iter().collect()), Err(TagError::TooMany(6)));
        assert!(matches!(
            check(&tags(&[("k", "")])),
            Err(TagError::Length { what: "value", .. })
        ));
        assert!(matches!(
            check(&tags(&[(&"k".repeat(101), "v")])),
            Err(TagError::Length {
                what: "key",
                len: 101,
                ..
            })
        ));
        for bad in ["a|b", "a\u{202E}", "é", "a\nb", "a>b"] {
            assert!(
                matches!(check(&tags(&[("k", bad)])), Err(TagError::Character { .. })),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn allocations_add_up_and_are_stable() {
        let a = tags(&[("project", "a")]);
        let b = tags(&[("project", "b")]);
        assert_eq!(allocations(&[(Tags::new(), 5)]), None);
        let got = allocations(&[
            (b.clone(), 3),
            (Tags::new(), 2),
            (a.clone(), 4),
            (b.clone(), 1),
        ])
        .expect("tagged");
        assert_eq!(
            got,
            vec![
                Allocation {
                    tags: a.clone(),
                    quantity: 4
                },
                Allocation {
                    tags: b.clone(),
                    quantity: 4
                },
                Allocation {
                    tags: Tags::new(),
                    quantity: 2
                },
            ]
        );
        let groups: Vec<(Tags, i64)> = (0..3000)
            .map(|i| (tags(&[("n", &i.to_string())]), 1 + (i % 7)))
            .collect();
        let total: i64 = groups.iter().map(|(_, q)| q).sum();
        let got = allocations(&groups).expect("tagged");
        assert_eq!(got.len(), MAX_ALLOCATIONS);
        assert_eq!(got.iter().map(|a| a.quantity).sum::<i64>(), total);
        assert_eq!(
            allocations(&groups),
            Some(got),
            "the same usage, the same list"
        );
    }
}
