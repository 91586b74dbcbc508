//! Who is calling: the principal a request acts for, and the ownership rule.

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
