//! Bearer tokens of the host application: several may be configured (rotation), each compared
//! in constant time.

use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use thiserror::Error;

/// Shortest token accepted in the configuration: 128 bits of a random hex or base64 string.
pub const MIN_TOKEN_CHARS: usize = 24;

/// A token the configuration refuses.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum TokenError {
    /// No token at all: the API would refuse every request.
    #[error(
        "at least one API token is needed (MPLINK_API_TOKENS, --api-token-file or --api-token)"
    )]
    None,
    /// Too short to resist guessing.
    #[error("API token {index} is {len} characters; at least {MIN_TOKEN_CHARS} are needed")]
    TooShort {
        /// Its position (from 1).
        index: usize,
        /// Its length.
        len: usize,
    },
    /// Characters that cannot travel in an Authorization header.
    #[error("API token {index} holds whitespace or control characters")]
    BadCharacters {
        /// Its position (from 1).
        index: usize,
    },
}

/// The configured tokens, kept as SHA-256 digests: comparing digests of equal length in
/// constant time reveals neither a token's content nor its length.
#[derive(Clone)]
pub struct ApiTokens {
    digests: Vec<[u8; 32]>,
}

impl std::fmt::Debug for ApiTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ApiTokens({} configured)", self.digests.len())
    }
}

fn digest(text: &str) -> [u8; 32] {
    Sha256::digest(text.as_bytes()).into()
}

impl ApiTokens {
    /// Checks and keeps `tokens`.
    pub fn new(tokens: &[SecretString]) -> Result<ApiTokens, TokenError> {
        if tokens.is_empty() {
            return Err(TokenError::None);
        }
        for (i, token) in tokens.iter().enumerate() {
            let text = token.expose_secret();
            if text.chars().count() < MIN_TOKEN_CHARS {
                return Err(TokenError::TooShort {
                    index: i + 1,
                    len: text.chars().count(),
                });
            }
            if text.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(TokenError::BadCharacters { index: i + 1 });
            }
        }
        Ok(ApiTokens {
            digests: tokens.iter().map(|t| digest(t.expose_secret())).collect(),
        })
    }

    /// True when `presented` is one of the tokens. Every configured token is compared, so the
    /// time taken does not tell which one matched.
    pub fn accepts(&self, presented: &str) -> bool {
        let wanted = digest(presented);
        let mut matched = subtle::Choice::from(0);
        for d in &self.digests {
            matched |= d.ct_eq(&wanted);
        }
        matched.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(s: &str) -> SecretString {
        SecretString::from(s.to_string())
    }

    #[test]
    fn any_configured_token_is_accepted_and_nothing_else() {
        let a = "a".repeat(32);
        let b = "b".repeat(40);
        let tokens = ApiTokens::new(&[secret(&a), secret(&b)]).unwrap();
        assert!(tokens.accepts(&a));
        assert!(tokens.accepts(&b));
        assert!(!tokens.accepts(&a[..31]));
        assert!(!tokens.accepts(&format!("{a}x")));
        assert!(!tokens.accepts(""));
        assert!(!format!("{tokens:?}").contains(&a));
    }

    #[test]
    fn weak_configurations_are_refused() {
        assert_eq!(ApiTokens::new(&[]).unwrap_err(), TokenError::None);
        assert_eq!(
            ApiTokens::new(&[secret(&"x".repeat(30)), secret("short")]).unwrap_err(),
            TokenError::TooShort { index: 2, len: 5 }
        );
        assert_eq!(
            ApiTokens::new(&[secret(&format!("{} x", "y".repeat(30)))]).unwrap_err(),
            TokenError::BadCharacters { index: 1 }
        );
    }
}
