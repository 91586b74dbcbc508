//! A sandbox's network egress on the wire: the create's `network` field, the `network` of
//! `GET /sandboxes/{id}`, and the body and answer of `PATCH /sandboxes/{id}/network`.

use serde::{Deserialize, Serialize};

/// `{"egress": "none"}` (no network but loopback), `{"egress": "all"}`, or
/// `{"egress": "allow", "allow": ["pypi.org", "*.githubusercontent.com", "10.1.2.0/24",
/// "api.example.com:443"]}`. An empty `egress` in a create means the worker's default.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct NetworkPolicy {
    /// `none`, `all` or `allow`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub egress: String,
    /// With `allow`: domain names (`*.` for every subdomain), addresses or CIDR ranges, each
    /// with an optional `:port`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<String>,
}

impl NetworkPolicy {
    /// A policy of `egress` with no allow-list.
    pub fn egress(egress: &str) -> Self {
        Self {
            egress: egress.to_string(),
            allow: Vec::new(),
        }
    }

    /// `egress: allow` with `rules`.
    pub fn allow<S: Into<String>>(rules: impl IntoIterator<Item = S>) -> Self {
        Self {
            egress: "allow".to_string(),
            allow: rules.into_iter().map(Into::into).collect(),
        }
    }
}

/// `200` from `PATCH /sandboxes/{id}/network`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkResponse {
    /// The sandbox.
    pub sandbox_id: String,
    /// The policy in force now (normalised).
    pub network: NetworkPolicy,
}

/// What a sandbox's network carried since it got one (`GET /sandboxes/{id}`): bytes it sent
/// and received, DNS included.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkBytes {
    /// Bytes the sandbox sent.
    pub sent: u64,
    /// Bytes the sandbox received.
    pub received: u64,
}
