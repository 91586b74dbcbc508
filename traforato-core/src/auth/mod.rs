//! Who is calling: the principal a request acts for, the auth mode, and the token machinery.
//!
//! - [`ClientAuthenticator`] checks client (public) HS256 JWTs, with a per-service replay cache.
//! - [`InternalTokenSigner`] and [`InternalVerifier`] sign and check the worker -> broker calls
//!   (`aud=traforato-internal`).
//! - [`mint_client_token`] mints a client token, for operators and tests.
//! - [`TicketBook`] issues and redeems single-use access tickets for one WebSocket exec
//!   (browsers cannot send `Authorization`).
//!
//! # Secret handling
//!
//! One rule everywhere: a configured secret is **trimmed** of surrounding whitespace. The
//! trimmed client secret is the HMAC key of client tokens (the contract). An empty trimmed
//! secret means dev mode (no client auth). (The Go prototype trimmed only for the mode and the
//! internal key; a secret read from a file with a trailing newline then gave two different
//! keys.) Secrets never appear in `Debug` output or error messages.
//!
//! Internal (worker -> broker) tokens are signed with a **different key**, so that whoever can
//! mint client tokens cannot sign an internal one with that key and register a fake worker:
//! HKDF-SHA256 of the internal secret when one is configured, else of the client secret, with
//! the fixed label [`INTERNAL_KEY_LABEL`]. Internal auth is on when either secret is set.
//!
//! Every token's lifetime (`exp - iat`) is capped ([`AuthConfig::max_token_lifetime`], 1 h by
//! default): the replay caches hold each accepted `jti` until its `exp`, so a long-lived token
//! would let a client grow them without bound.
//!
//! Nothing here logs: callers decide what to log, and must never log a token.

mod claims;
mod internal;
mod jwt;
mod replay;
mod tickets;

use std::fmt;
use std::time::Duration;

pub use claims::TokenDefect;
pub use internal::{InternalAuthError, InternalTokenSigner, InternalVerifier};
pub use jwt::{mint_client_token, AuthError, ClientAuthenticator};
pub use replay::ReplayCache;
pub use tickets::{
    Ticket, TicketBook, TicketError, MAX_OUTSTANDING_TICKETS, MAX_TICKETS_PER_CLIENT,
    TICKET_LIFETIME,
};

/// The issuer configured by default (`--jwt-issuer`).
pub const DEFAULT_ISSUER: &str = "traforato";
/// The client audience configured by default (`--jwt-audience`).
pub const DEFAULT_AUDIENCE: &str = "traforato-api";
/// The fixed audience of internal (worker -> broker) tokens.
pub const INTERNAL_AUDIENCE: &str = "traforato-internal";
/// The HKDF label (`info`) that derives the internal token key from a secret.
pub const INTERNAL_KEY_LABEL: &[u8] = b"traforato internal token key v1";
/// The longest token lifetime (`exp - iat`) accepted by default.
pub const DEFAULT_MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(3600);

/// The client a request acts for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Principal {
    /// The `client_id` claim, or `dev-mode` when authentication is off.
    pub client_id: String,
}

impl Principal {
    /// The principal of every request in dev (no-auth) mode.
    pub fn dev() -> Self {
        Self {
            client_id: "dev-mode".to_string(),
        }
    }
}

/// Whether client authentication (and so ownership) is enforced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMode {
    /// No authentication; anyone who knows a sandbox id may use it.
    Dev,
    /// HS256 JWTs; a sandbox belongs to the client that created it.
    Prod,
}

impl AuthMode {
    /// True in prod.
    pub fn is_prod(self) -> bool {
        matches!(self, AuthMode::Prod)
    }

    /// `dev` or `prod`.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMode::Dev => "dev",
            AuthMode::Prod => "prod",
        }
    }
}

/// Auth settings shared by a broker and a worker: the secrets, issuer, audience and the
/// longest token lifetime.
///
/// `Debug` never prints a secret, and there is deliberately no `PartialEq` (no secret is
/// ever compared with `==`).
#[derive(Clone)]
pub struct AuthConfig {
    /// The shared HMAC secret of client tokens, as configured. It is trimmed before use (see
    /// the module docs); empty after trimming means dev mode.
    pub secret: String,
    /// The secret internal token keys are derived from; empty (after trimming) derives them
    /// from `secret`. Set it (the same on the broker and every worker) to keep whoever holds
    /// the client secret from deriving the internal key too.
    pub internal_secret: String,
    /// The expected `iss` of client tokens, and the `iss` of internal tokens. Empty: client
    /// tokens need some issuer, internal tokens carry none.
    pub issuer: String,
    /// The expected client `aud`. Empty: client tokens need some audience.
    pub audience: String,
    /// The longest lifetime (`exp - iat`) a client or internal token may have. Longer ones
    /// are refused, so no `jti` stays in a replay cache longer than this.
    pub max_token_lifetime: Duration,
}

impl AuthConfig {
    /// A config with the given secret and the default issuer, audience and lifetime.
    pub fn with_secret(secret: impl Into<String>) -> Self {
        Self {
            secret: secret.into(),
            ..Self::default()
        }
    }

    /// The key of internal tokens: HKDF-SHA256 (no salt, [`INTERNAL_KEY_LABEL`]) of the
    /// trimmed internal secret, or of the trimmed client secret when there is none. Empty
    /// when both are empty (internal auth disabled). Never equal to the client key.
    pub fn internal_key(&self) -> Vec<u8> {
        let internal = self.internal_secret.trim();
        let root = if internal.is_empty() {
            self.key()
        } else {
            internal.as_bytes()
        };
        if root.is_empty() {
            return Vec::new();
        }
        derive_key(root, INTERNAL_KEY_LABEL)
    }

    /// Dev when the secret is empty after trimming, prod otherwise.
    pub fn mode(&self) -> AuthMode {
        if self.key().is_empty() {
            AuthMode::Dev
        } else {
            AuthMode::Prod
        }
    }

    /// The HMAC key: the trimmed secret.
    pub(crate) fn key(&self) -> &[u8] {
        self.secret.trim().as_bytes()
    }

    /// The configured issuer, trimmed like every configuration value.
    pub(crate) fn issuer(&self) -> &str {
        self.issuer.trim()
    }

    /// The configured client audience, trimmed.
    pub(crate) fn audience(&self) -> &str {
        self.audience.trim()
    }
}

/// HKDF-SHA256 (RFC 5869) of `secret` with no salt and `label` as `info`: 32 bytes.
fn derive_key(secret: &[u8], label: &[u8]) -> Vec<u8> {
    use ring::hkdf::{Salt, HKDF_SHA256};
    let info = [label];
    let mut key = vec![0u8; 32];
    // 32 bytes is well within HKDF-SHA256's 255 * 32 limit, so neither step can fail.
    Salt::new(HKDF_SHA256, &[])
        .extract(secret)
        .expand(&info, HKDF_SHA256)
        .and_then(|okm| okm.fill(&mut key))
        .expect("32 bytes of HKDF-SHA256 output");
    key
}

impl Default for AuthConfig {
    /// Dev mode with the default issuer, audience and lifetime.
    fn default() -> Self {
        Self {
            secret: String::new(),
            internal_secret: String::new(),
            issuer: DEFAULT_ISSUER.to_string(),
            audience: DEFAULT_AUDIENCE.to_string(),
            max_token_lifetime: DEFAULT_MAX_TOKEN_LIFETIME,
        }
    }
}

impl fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fn shown(secret: &str) -> &'static str {
            if secret.trim().is_empty() {
                "<empty>"
            } else {
                "<redacted>"
            }
        }
        f.debug_struct("AuthConfig")
            .field("secret", &shown(&self.secret))
            .field("internal_secret", &shown(&self.internal_secret))
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("max_token_lifetime", &self.max_token_lifetime)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_secret_is_dev_and_any_other_is_prod() {
        assert_eq!(AuthConfig::with_secret("").mode(), AuthMode::Dev);
        assert_eq!(AuthConfig::with_secret(" \n\t").mode(), AuthMode::Dev);
        assert_eq!(AuthConfig::with_secret("s3cr3t").mode(), AuthMode::Prod);
        assert_eq!(AuthConfig::default().mode(), AuthMode::Dev);
    }

    #[test]
    fn secret_is_trimmed_into_the_key() {
        let config = AuthConfig::with_secret("  s3cr3t\n");
        assert_eq!(config.key(), b"s3cr3t");
    }

    #[test]
    fn debug_of_config_does_not_contain_the_secret() {
        let config = AuthConfig {
            secret: "hunter2-very-secret".to_string(),
            internal_secret: "swordfish-internal".to_string(),
            issuer: "iss-x".to_string(),
            audience: "aud-y".to_string(),
            ..AuthConfig::default()
        };
        let shown = format!("{config:?} {config:#?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(!shown.contains("swordfish"), "{shown}");
        assert!(shown.contains("<redacted>"));
        assert!(shown.contains("iss-x") && shown.contains("aud-y"));
        assert!(format!("{:?}", AuthConfig::default()).contains("<empty>"));
    }

    #[test]
    fn internal_key_is_derived_and_never_the_client_key() {
        let config = AuthConfig::with_secret(" s3cr3t\n");
        let internal = config.internal_key();
        assert_eq!(internal.len(), 32);
        assert_ne!(internal, config.key());
        // Deterministic, and the client secret is trimmed first.
        assert_eq!(internal, AuthConfig::with_secret("s3cr3t").internal_key());
        // RFC 5869 shape: HKDF-SHA256, no salt, our label; pinned so that brokers and
        // workers of different builds agree.
        assert_eq!(
            internal,
            derive_key(b"s3cr3t", b"traforato internal token key v1")
        );
        // A separate internal secret replaces the client secret as the root.
        let separate = AuthConfig {
            internal_secret: "other".to_string(),
            ..AuthConfig::with_secret("s3cr3t")
        };
        assert_ne!(separate.internal_key(), internal);
        assert_eq!(
            separate.internal_key(),
            derive_key(b"other", INTERNAL_KEY_LABEL)
        );
        // Nothing configured: no key, internal auth off.
        assert!(AuthConfig::default().internal_key().is_empty());
        let internal_only = AuthConfig {
            internal_secret: "other".to_string(),
            ..AuthConfig::default()
        };
        assert_eq!(internal_only.mode(), AuthMode::Dev);
        assert!(!internal_only.internal_key().is_empty());
    }

    #[test]
    fn hkdf_matches_rfc_5869_test_case_3() {
        // RFC 5869 A.3: SHA-256, IKM = 22 x 0x0b, no salt, no info; the first 32 bytes of OKM.
        let okm = derive_key(&[0x0b; 22], b"");
        let expected = "8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d";
        let hex: String = okm.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, expected);
    }
}
