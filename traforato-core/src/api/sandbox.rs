//! Sandbox lifecycle bodies: create, get, lease, port URL.

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
