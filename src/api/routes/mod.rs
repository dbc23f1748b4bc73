//! The API's handlers, one module per resource, and the checks of what paths carry.

pub mod billing;
pub mod events;
pub mod history;
pub mod openapi;
pub mod org_usage;
pub mod register;
pub mod registrations;
pub mod usage;

use super::error::ApiError;

/// Refuses an organization id the one rule ([`crate::org`]) refuses, naming `field`.
pub fn check_org_id(field: &str, org_id: &str) -> Result<(), ApiError> {
    crate::org::check(org_id).map_err(|e| ApiError::field(field, e.to_string()))
}

/// [`check_registration_id`] as a JSON Schema pattern.
pub const REGISTRATION_ID_PATTERN: &str = "^reg_[0-9a-f]{32}$";

/// True for what [`register::new_registration_id`] makes: `reg_` and 32 lowercase hex digits.
pub fn check_registration_id(id: &str) -> bool {
    id.strip_prefix("reg_").is_some_and(|hex| {
        hex.len() == 32
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// How logs name a registration: its first 8 hex digits. The whole id is a capability (with
/// it, a host user can claim the registration), so it is never logged in full.
pub fn short_registration_id(id: &str) -> String {
    let shown: String = id.chars().take(12).collect();
    format!("{shown}…")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn organization_ids_are_checked() {
        assert!(check_org_id("org_id", "org-1").is_ok());
        assert!(check_org_id("org_id", &"x".repeat(128)).is_ok());
        for bad in ["", " org", "org\n", "a\u{7}b", "Acme Corp", "org\u{202E}"] {
            assert!(check_org_id("org_id", bad).is_err(), "{bad:?}");
        }
        assert!(check_org_id("org_id", &"x".repeat(129)).is_err());
    }

    #[test]
    fn registration_ids_are_checked() {
        assert!(check_registration_id(
            "reg_0123456789abcdef0123456789abcdef"
        ));
        for bad in [
            "reg_0123456789ABCDEF0123456789abcdef",
            "reg_0123",
            "0123456789abcdef0123456789abcdef",
            "reg_0123456789abcdef0123456789abcdeg",
        ] {
            assert!(!check_registration_id(bad), "{bad}");
        }
    }
}
