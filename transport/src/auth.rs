//! Role tokens compared in constant time, and the daemon's authentication policy.

use crate::error::TransportError;
use crate::messages::Role;
use sha2::{Digest, Sha256};
use std::net::IpAddr;
use subtle::ConstantTimeEq;

/// Accepted tokens per role, stored as SHA-256 digests so that comparisons take the same time
/// whatever the tokens' lengths and contents.
#[derive(Clone, Default)]
pub struct TokenSet {
    capture: Vec<[u8; 32]>,
    feed: Vec<[u8; 32]>,
}

impl std::fmt::Debug for TokenSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSet")
            .field("capture", &self.capture.len())
            .field("feed", &self.feed.len())
            .finish()
    }
}

fn digest(t: &str) -> [u8; 32] {
    Sha256::digest(t.as_bytes()).into()
}

impl TokenSet {
    /// Builds the set from the configured token lists (empty strings are ignored).
    pub fn new<S: AsRef<str>>(capture: &[S], feed: &[S]) -> Self {
        let conv = |v: &[S]| {
            v.iter()
                .map(AsRef::as_ref)
                .filter(|t| !t.is_empty())
                .map(digest)
                .collect()
        };
        TokenSet {
            capture: conv(capture),
            feed: conv(feed),
        }
    }

    /// Builds the set from the configuration's `[auth]` section.
    pub fn from_config(auth: &referee_config::AuthSettings) -> Self {
        Self::new(&auth.capture_tokens, &auth.feed_tokens)
    }

    fn list(&self, role: Role) -> &[[u8; 32]] {
        match role {
            Role::Capture => &self.capture,
            Role::Feed => &self.feed,
        }
    }

    /// True when `role` has at least one token configured.
    pub fn has_tokens(&self, role: Role) -> bool {
        !self.list(role).is_empty()
    }

    /// True when no role has a token.
    pub fn is_empty(&self) -> bool {
        self.capture.is_empty() && self.feed.is_empty()
    }

    /// True when `token` is one of `role`'s tokens. Constant time in the token and the set's
    /// contents (every configured token is compared).
    pub fn check(&self, role: Role, token: &str) -> bool {
        let d = digest(token);
        let mut ok = subtle::Choice::from(0);
        for t in self.list(role) {
            ok |= t.ct_eq(&d);
        }
        ok.into()
    }
}

/// How the daemon authenticates a `Hello`.
#[derive(Debug, Clone)]
pub struct AuthPolicy {
    tokens: TokenSet,
    loopback: bool,
}

/// Decides the policy for a daemon bound to `bind`: roles with tokens must present one; roles
/// without tokens are accepted only on a loopback bind. A non-loopback bind with no tokens at all
/// is refused, since anyone on the network could stream or watch.
pub fn auth_policy(bind: IpAddr, tokens: &TokenSet) -> Result<AuthPolicy, TransportError> {
    let loopback = bind.is_loopback();
    if !loopback && tokens.is_empty() {
        return Err(TransportError::Config(format!(
            "refusing to listen on {bind} without tokens: anyone on the network could connect; \
             set auth.capture_tokens / auth.feed_tokens (REFEREE_CAPTURE_TOKENS, REFEREE_FEED_TOKENS) \
             or bind a loopback address"
        )));
    }
    for role in [Role::Capture, Role::Feed] {
        if !loopback && !tokens.has_tokens(role) {
            tracing::warn!(?role, %bind, "no tokens for this role: its connections will be refused");
        }
    }
    Ok(AuthPolicy {
        tokens: tokens.clone(),
        loopback,
    })
}

impl AuthPolicy {
    /// Checks a `Hello`'s role and token.
    pub fn authorize(&self, role: Role, token: &str) -> Result<(), TransportError> {
        if self.tokens.has_tokens(role) {
            if self.tokens.check(role, token) {
                Ok(())
            } else {
                Err(TransportError::Unauthorized(format!(
                    "wrong or missing {role:?} token"
                )))
            }
        } else if self.loopback {
            Ok(())
        } else {
            Err(TransportError::Unauthorized(format!(
                "no {role:?} tokens are configured on this daemon, so {role:?} connections are refused"
            )))
        }
    }

    /// True when connections are accepted without tokens (loopback development mode).
    pub fn is_open(&self, role: Role) -> bool {
        !self.tokens.has_tokens(role) && self.loopback
    }
}

/// A session's resume secret: 128 random bits from the system's secure generator, as 32 hex
/// digits. The daemon hands it to the agent that opened the session; only that agent can then
/// resume it.
pub fn new_session_secret() -> Result<String, TransportError> {
    let mut bytes = [0u8; 16];
    crate::tls::provider()
        .secure_random
        .fill(&mut bytes)
        .map_err(|_| TransportError::Config("the system's random generator failed".into()))?;
    Ok(hex::encode(bytes))
}

/// A value kept to recognise a secret (a token or a resume secret) later without keeping it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct SecretDigest([u8; 32]);

impl SecretDigest {
    /// The digest of `secret`.
    pub fn of(secret: &str) -> Self {
        SecretDigest(digest(secret))
    }

    /// True when `secret` is the one this digest was made from (constant time).
    pub fn matches(&self, secret: &str) -> bool {
        self.0.ct_eq(&digest(secret)).into()
    }
}

impl std::fmt::Debug for SecretDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretDigest(<redacted>)")
    }
}

#[cfg(test)]
mod secret_tests {
    use super::*;

    #[test]
    fn secrets_are_128_bit_hex_and_differ() {
        let a = new_session_secret().unwrap();
        let b = new_session_secret().unwrap();
        assert_eq!(a.len(), 32);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
        let d = SecretDigest::of(&a);
        assert!(d.matches(&a));
        assert!(!d.matches(&b));
        assert!(!d.matches(""));
    }
}
