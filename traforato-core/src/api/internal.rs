//! Worker ↔ broker bodies: registration, VM events, VM-start requests.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// `PUT /internal/workers/{worker_id}/registration`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RegistrationRequest {
    /// Host name.
    pub hostname: String,
    /// Where clients reach the worker (http or https, no query).
    pub base_url: String,
    /// Hardware SKU for placement filtering.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub hardware_sku: String,
    /// Cores the worker offers.
    #[serde(skip_serializing_if = "is_zero")]
    pub total_cores: i64,
    /// Memory the worker offers.
    #[serde(skip_serializing_if = "is_zero")]
    pub total_memory_mib: i64,
    /// Most sandboxes the worker runs at once.
    #[serde(skip_serializing_if = "is_zero")]
    pub max_live_sandboxes: i64,
    /// Sandboxes live now (additive; load for placement).
    #[serde(skip_serializing_if = "is_zero")]
    pub live_sandboxes: i64,
    /// Cores allocated to live sandboxes now (additive).
    #[serde(skip_serializing_if = "is_zero")]
    pub allocated_cores: i64,
    /// Memory allocated to live sandboxes now (additive).
    #[serde(skip_serializing_if = "is_zero")]
    pub allocated_memory_mib: i64,
    /// Whether the worker takes new sandboxes now (additive; absent means it does). A worker
    /// above its memory high watermark or shutting down says `false`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accepting_sandboxes: Option<bool>,
    /// The virtualizations the worker serves (additive). Absent or empty: any (a prototype
    /// worker), so the broker may place every create there.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub virtualizations: Vec<String>,
}

fn is_zero(v: &i64) -> bool {
    *v == 0
}

/// `200` from registration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistrationResponse {
    /// The worker id.
    pub worker_id: String,
    /// How long the lease lasts without a renewal.
    pub lease_ttl_seconds: u64,
    /// How often the worker should renew.
    pub heartbeat_interval_seconds: u64,
    /// When the lease ends.
    #[serde(with = "super::timestamp")]
    pub expires_at: DateTime<Utc>,
    /// Identifies this broker process (additive). When it changes, the broker has restarted
    /// and the worker re-announces its ready sandboxes.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub broker_instance_id: String,
}

/// What happened to a worker's VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VmEventKind {
    /// Provisioned and idle: the broker may hint it.
    Ready,
    /// Claimed by a create: no longer available.
    Claimed,
    /// Destroyed without being claimed.
    Retired,
}

/// `POST /internal/workers/{worker_id}/vm-events`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmEventRequest {
    /// The event (`ready`, `claimed`, `retired`). Kept as text so that an unknown value is a
    /// validation error (400 `invalid vm event`), not a decode error.
    pub event: String,
    /// The VM.
    #[serde(default)]
    pub local_vm_id: String,
    /// Tuple: virtualization.
    #[serde(default)]
    pub virtualization: String,
    /// Tuple: image.
    #[serde(default)]
    pub image: String,
    /// Tuple: cpu.
    #[serde(default)]
    pub cpu: i64,
    /// When it happened; absent means now.
    #[serde(
        default,
        with = "super::timestamp::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub timestamp: Option<DateTime<Utc>>,
    /// The worker's load when the event happened (additive; a prototype event has none and
    /// leaves the broker's view as it was).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<WorkerCapacity>,
}

/// A worker's load at one moment, carried by VM events so that the broker learns of a full
/// (or no longer full) worker without waiting for its next heartbeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerCapacity {
    /// Sandboxes live now.
    #[serde(default)]
    pub live_sandboxes: i64,
    /// Cores allocated to live sandboxes and creates in flight.
    #[serde(default)]
    pub allocated_cores: i64,
    /// Memory allocated to live sandboxes and creates in flight.
    #[serde(default)]
    pub allocated_memory_mib: i64,
    /// Whether the worker takes new sandboxes now (absent means it does).
    #[serde(default = "accepting_by_default")]
    pub accepting_sandboxes: bool,
}

fn accepting_by_default() -> bool {
    true
}

/// `200` from `POST /internal/workers/{worker_id}/vm-start`: boot one VM of this tuple.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmStartResponse {
    /// Tuple: virtualization.
    pub virtualization: String,
    /// Tuple: image.
    pub image: String,
    /// Tuple: cpu.
    pub cpu: u32,
}
