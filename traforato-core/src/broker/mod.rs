//! The broker (control plane): worker registry with leases, the ready-VM index, the pending
//! VM-start queue, placement of creates, and sandbox-scoped redirects.
//!
//! Workers are the source of truth; everything here is soft state that workers re-announce.
//! All state sits behind one `std::sync::Mutex`, never held across an `.await`.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use crate::api::{
    CreateSandboxRequest, RegistrationRequest, RegistrationResponse, VmEventRequest,
    VmStartResponse,
};
use crate::clock::Clock;
use crate::id::{ComponentId, LocalVmId};
use crate::scheduler::Scheduler;
use crate::telemetry::Metrics;

/// Broker settings.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    /// This broker's id; sandbox ids naming another broker are refused.
    pub broker_id: ComponentId,
    /// Most times a create may bounce between broker and workers; 0 means no retries.
    pub placement_retry_max: u32,
    /// How long a registration lasts without renewal.
    pub worker_lease_ttl: Duration,
    /// How often expired leases are swept.
    pub lease_sweep_interval: Duration,
    /// The heartbeat interval suggested to workers.
    pub heartbeat_interval: Duration,
    /// Virtualization of creates that name none.
    pub default_virtualization: String,
    /// Most pending VM-start requests queued per worker; older ones are dropped first.
    pub pending_start_queue_max: usize,
    /// Prod mode: unknown or inactive workers get 401 `worker must self-register` on internal
    /// routes (dev: 404 `worker id unknown` for unknown workers).
    pub prod_mode: bool,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        Self {
            broker_id: ComponentId::parse("broker_local").expect("valid id"),
            placement_retry_max: 2,
            worker_lease_ttl: Duration::from_secs(120),
            lease_sweep_interval: Duration::from_secs(10),
            heartbeat_interval: Duration::from_secs(30),
            default_virtualization: "container".to_string(),
            pending_start_queue_max: 64,
            prod_mode: false,
        }
    }
}

/// Why the broker refused a request. Each variant has one status code (see the server).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BrokerError {
    /// 400.
    #[error("malformed sandbox_id")]
    MalformedSandboxId,
    /// 404: the id names another broker.
    #[error("broker id mismatch")]
    BrokerIdMismatch,
    /// 404 (and on internal routes in dev mode).
    #[error("worker id unknown")]
    WorkerUnknown,
    /// 503: known worker, but unavailable or its lease lapsed.
    #[error("worker temporarily unavailable")]
    WorkerUnavailable,
    /// 400.
    #[error("invalid placement_retry")]
    InvalidPlacementRetry,
    /// 503.
    #[error("placement retry exhausted")]
    PlacementRetryExhausted,
    /// 503: no active worker (with the SKU).
    #[error("no placement capacity")]
    NoPlacementCapacity,
    /// 500.
    #[error("failed to build redirect URL")]
    RedirectUrl,
    /// 400.
    #[error("invalid worker id")]
    InvalidWorkerId,
    /// 400 with the exact validation message (e.g. `hostname is required`).
    #[error("{0}")]
    InvalidRegistration(&'static str),
    /// 401 (prod): unknown or inactive worker on an internal route.
    #[error("worker must self-register")]
    WorkerMustSelfRegister,
    /// 400.
    #[error("invalid vm event")]
    InvalidVmEvent,
}

/// Where a create goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// Redirect target: `<base_url>/sandboxes[?local_vm_id=..][&placement_retry=n]`.
    pub location: String,
    /// The chosen worker.
    pub worker_id: ComponentId,
    /// The hinted ready VM (warm path), if any.
    pub local_vm_id: Option<LocalVmId>,
    /// The retry count carried on.
    pub placement_retry: u32,
}

/// Where a sandbox-scoped request goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxRedirect {
    /// Redirect target: the worker's base URL joined with the request path, plus the query.
    pub location: String,
    /// The owning worker.
    pub worker_id: ComponentId,
}

/// A worker added in-process (tests, embedding) rather than by registration. It never
/// expires.
#[derive(Debug, Clone, Default)]
pub struct StaticWorker {
    /// Id.
    pub worker_id: String,
    /// Host name.
    pub hostname: String,
    /// Base URL.
    pub base_url: String,
    /// SKU.
    pub hardware_sku: String,
    /// Cores offered.
    pub total_cores: u64,
    /// Memory offered.
    pub total_memory_mib: u64,
    /// Most sandboxes.
    pub max_live_sandboxes: u64,
}

/// The broker. Cheap to share behind an `Arc`.
pub struct Broker {
    // Implementation fills this in.
}

impl Broker {
    /// Builds a broker.
    pub fn new(
        config: BrokerConfig,
        clock: Arc<dyn Clock>,
        scheduler: Arc<dyn Scheduler>,
        metrics: Arc<Metrics>,
    ) -> Self {
        todo!()
    }

    /// Settings.
    pub fn config(&self) -> &BrokerConfig {
        todo!()
    }

    /// The metrics registry.
    pub fn metrics(&self) -> &Arc<Metrics> {
        todo!()
    }

    /// A ULID chosen at construction; workers detect broker restarts by it.
    pub fn instance_id(&self) -> &str {
        todo!()
    }

    /// Places a create (`POST /sandboxes`): warm hint first (oldest ready VM of the tuple on
    /// an active, SKU-matching worker), else a cold placement through the scheduler, which
    /// also queues one VM start for that worker. `placement_retry` is the raw query value.
    pub fn place_create(
        &self,
        request: &CreateSandboxRequest,
        placement_retry: Option<&str>,
    ) -> Result<Placement, BrokerError> {
        todo!()
    }

    /// Routes a sandbox-scoped request: `sandbox_id` is path segment 2, `path` the decoded
    /// request path, `raw_query` the query string as received (appended verbatim).
    pub fn route_sandbox(
        &self,
        sandbox_id: &str,
        path: &str,
        raw_query: Option<&str>,
    ) -> Result<SandboxRedirect, BrokerError> {
        todo!()
    }

    /// Registers or renews a worker (`PUT /internal/workers/{id}/registration`).
    pub fn register_worker(
        &self,
        worker_id: &str,
        request: RegistrationRequest,
    ) -> Result<RegistrationResponse, BrokerError> {
        todo!()
    }

    /// Removes a dynamic worker, its hints and its queue. Unknown ids are ignored.
    pub fn deregister_worker(&self, worker_id: &str) {
        todo!()
    }

    /// Applies a VM event (`ready` adds a hint, `claimed`/`retired` remove it).
    pub fn apply_vm_event(
        &self,
        worker_id: &str,
        event: VmEventRequest,
    ) -> Result<(), BrokerError> {
        todo!()
    }

    /// Pops the worker's oldest pending VM start, if any.
    pub fn next_vm_start(&self, worker_id: &str) -> Result<Option<VmStartResponse>, BrokerError> {
        todo!()
    }

    /// The `GET /metrics/sandboxes` text.
    pub fn availability_text(&self) -> String {
        todo!()
    }

    /// Marks every dynamic worker whose lease has lapsed unavailable, drops its hints and
    /// queue; returns how many.
    pub fn sweep_expired_leases(&self) -> usize {
        todo!()
    }

    /// Sweeps every `lease_sweep_interval` until `shutdown` completes.
    pub async fn run_lease_sweeper(self: Arc<Self>, shutdown: impl Future<Output = ()> + Send) {
        todo!()
    }

    /// Adds or replaces a static worker.
    pub fn register_static_worker(&self, worker: StaticWorker) {
        todo!()
    }

    /// Marks a worker available or not; unavailable drops its hints and queue.
    pub fn set_worker_available(&self, worker_id: &str, available: bool) {
        todo!()
    }

    /// True when the worker is known and active now.
    pub fn is_worker_active(&self, worker_id: &str) -> bool {
        todo!()
    }
}
