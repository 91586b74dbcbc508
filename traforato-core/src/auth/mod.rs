//! Who is calling: the principal a request acts for, the auth mode, and the token machinery.
//!
//! - [`ClientAuthenticator`] checks client (public) HS256 JWTs, with a per-service replay cache.
//! - [`InternalTokenSigner`] and [`InternalVerifier`] sign and check the worker -> broker calls
//!   (`aud=traforato-internal`).
//! - [`mint_client_token`] mints a client token, for operators and tests.
//!
//! # Secret handling
//!
//! One rule everywhere: the configured secret is **trimmed** of surrounding whitespace, and the
//! trimmed bytes are the HMAC key of both client and internal tokens. An empty trimmed secret
//! means dev mode (no client auth) and disables internal auth. (The Go prototype trimmed only
//! for the mode and the internal key; a secret read from a file with a trailing newline then
//! gave two different keys.) Secrets never appear in `Debug` output or error messages.
//!
//! Nothing here logs: callers decide what to log, and must never log a token.

mod claims;
mod internal;
mod jwt;
mod replay;

use std::fmt;

pub use claims::TokenDefect;
pub use internal::{InternalAuthError, InternalTokenSigner, InternalVerifier};
pub use jwt::{mint_client_token, AuthError, ClientAuthenticator};
pub use replay::ReplayCache;

/// The issuer configured by default (`--jwt-issuer`).
pub const DEFAULT_ISSUER: &str = "traforato";
/// The client audience configured by default (`--jwt-audience`).
pub const DEFAULT_AUDIENCE: &str = "traforato-api";
/// The fixed audience of internal (worker -> broker) tokens.
pub const INTERNAL_AUDIENCE: &str = "traforato-internal";

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

/// Auth settings shared by a broker and a worker: the secret, issuer and audience.
///
/// `Debug` never prints the secret, and there is deliberately no `PartialEq` (no secret is
/// ever compared with `==`).
#[derive(Clone)]
pub struct AuthConfig {
    /// The shared HMAC secret, as configured. It is trimmed before use (see the module docs);
    /// empty after trimming means dev mode.
    pub secret: String,
    /// The expected `iss` of client tokens, and the `iss` of internal tokens. Empty: client
    /// tokens need some issuer, internal tokens carry none.
    pub issuer: String,
    /// The expected client `aud`. Empty: client tokens need some audience.
    pub audience: String,
}

impl AuthConfig {
    /// A config with the given secret and the default issuer and audience.
    pub fn with_secret(secret: impl Into<String>) -> Self {
        Self {
            secret: secret.into(),
            ..Self::default()
        }
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

impl Default for AuthConfig {
    /// Dev mode with the default issuer and audience.
    fn default() -> Self {
        Self {
            secret: String::new(),
            issuer: DEFAULT_ISSUER.to_string(),
            audience: DEFAULT_AUDIENCE.to_string(),
        }
    }
}

impl fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secret = if self.key().is_empty() {
            "<empty>"
        } else {
            "<redacted>"
        };
        f.debug_struct("AuthConfig")
            .field("secret", &secret)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
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
            issuer: "iss-x".to_string(),
            audience: "aud-y".to_string(),
        };
        let shown = format!("{config:?} {config:#?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("<redacted>"));
        assert!(shown.contains("iss-x") && shown.contains("aud-y"));
        assert!(format!("{:?}", AuthConfig::default()).contains("<empty>"));
    }
}
