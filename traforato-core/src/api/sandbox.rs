//! Sandbox lifecycle bodies: create, get, lease, port URL.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// `POST /sandboxes` (broker and worker). Unknown fields are ignored; `null` means defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct CreateSandboxRequest {
    /// Image reference; the worker requires one except for `tart`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub image: String,
    /// CPUs; ≤ 0 means 1.
    #[serde(skip_serializing_if = "is_zero")]
    pub cpu: i64,
    /// Backend; empty means the deployment's default virtualization.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub virtualization: String,
    /// Only workers with exactly this SKU are eligible (broker).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub hardware_sku: String,
    /// Lifetime; ≤ 0 means the worker's default TTL.
    #[serde(skip_serializing_if = "is_zero")]
    pub ttl_seconds: i64,
    /// Network egress (additive); absent means the worker's default (`none` unless
    /// configured).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network: Option<super::NetworkPolicy>,
}

fn is_zero(v: &i64) -> bool {
    *v == 0
}

/// `201` from the worker's create.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateSandboxResponse {
    /// The new sandbox's id.
    pub sandbox_id: String,
    /// When the sandbox will be destroyed unless its lease is renewed.
    #[serde(with = "super::timestamp")]
    pub expires_at: DateTime<Utc>,
    /// CPUs.
    pub cpu: u32,
    /// Memory limit.
    pub memory_mib: u64,
    /// Backend.
    pub virtualization: String,
    /// `warm` when a ready sandbox was claimed, `cold` when one was booted (additive).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub start_type: String,
}

/// `GET /sandboxes/{id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxResponse {
    /// Id.
    pub sandbox_id: String,
    /// Image.
    pub image: String,
    /// CPUs.
    pub cpu: u32,
    /// Memory limit.
    pub memory_mib: u64,
    /// Backend.
    pub virtualization: String,
    /// Creation time.
    #[serde(with = "super::timestamp")]
    pub created_at: DateTime<Utc>,
    /// Expiry time.
    #[serde(with = "super::timestamp")]
    pub expires_at: DateTime<Utc>,
    /// The network egress in force (additive; normalised).
    #[serde(default)]
    pub network: super::NetworkPolicy,
    /// What its network carried, once it had egress (additive).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_bytes: Option<super::NetworkBytes>,
}

/// `PATCH /sandboxes/{id}/lease?ttl_seconds=N`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseResponse {
    /// Id.
    pub sandbox_id: String,
    /// The new expiry time.
    #[serde(with = "super::timestamp")]
    pub expires_at: DateTime<Utc>,
}

/// `GET /sandboxes/{id}/ports/{port}/url`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortUrlResponse {
    /// Id.
    pub sandbox_id: String,
    /// Port inside the sandbox.
    pub port: u16,
    /// `http`, `https`, `ws` or `wss`.
    pub protocol: String,
    /// `<protocol>://<host>/sandboxes/<id>/proxy/<port>`.
    pub url: String,
}

/// What to create. Every field is optional: empty or zero means the deployment's default.
///
/// ```
/// use std::time::Duration;
/// use traforato_core::api::CreateSandbox;
///
/// let spec = CreateSandbox {
///     cpu: 2,
///     ttl: Some(Duration::from_secs(600)),
///     ..CreateSandbox::new("ubuntu:24.04")
/// };
/// assert_eq!(spec.image, "ubuntu:24.04");
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CreateSandbox {
    /// Image reference, e.g. `ubuntu:24.04`. Required except for `tart`.
    pub image: String,
    /// CPUs; 0 means 1.
    pub cpu: u32,
    /// Backend (`vetu`, `tart`, `container`, `fake`, ...); empty means the default.
    pub virtualization: String,
    /// Only place on workers with exactly this hardware SKU.
    pub hardware_sku: String,
    /// Lifetime before the sandbox is reclaimed unless its lease is renewed; `None` means the
    /// worker's default. Rounded up to whole seconds.
    pub ttl: Option<Duration>,
    /// Network egress; `None` means the worker's default (`none` unless configured).
    pub network: Option<super::NetworkPolicy>,
}

impl CreateSandbox {
    /// A sandbox of `image` with every other setting at its default.
    pub fn new(image: impl Into<String>) -> Self {
        CreateSandbox {
            image: image.into(),
            ..Default::default()
        }
    }

    /// The request body.
    pub fn into_request(self) -> CreateSandboxRequest {
        CreateSandboxRequest {
            image: self.image.trim().to_string(),
            cpu: i64::from(self.cpu),
            virtualization: self.virtualization.trim().to_string(),
            hardware_sku: self.hardware_sku.trim().to_string(),
            ttl_seconds: self.ttl.map(ceil_seconds).unwrap_or(0),
            network: self.network,
        }
    }
}

/// Whole seconds of `d`, rounded up (a `ttl_seconds`).
pub fn ceil_seconds(d: Duration) -> i64 {
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    i64::try_from(secs).unwrap_or(i64::MAX)
}
