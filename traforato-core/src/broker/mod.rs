//! The broker (control plane): worker registry with leases, the ready-VM index, the pending
//! VM-start queue, placement of creates, and sandbox-scoped redirects.
//!
//! Workers are the source of truth; everything here is soft state that workers re-announce.
//! All state sits behind one `std::sync::Mutex`, never held across an `.await`.
//!
//! Code map: `registry` (worker records, leases, registration validation), `ready` (ready
//! hints, oldest first), `placement` (retry parsing, cold candidates), `redirect` (redirect
//! URLs), `availability` (the `/metrics/sandboxes` text). Decisions that differ from the
//! prototype:
//! - `placement_retry_max: 0` means no retries.
//! - Every create asks the [`Scheduler`], warm or cold and where, with the load each worker
//!   last reported (at registration, a heartbeat, or in a VM event that carries it) plus the
//!   creates sent to it since, and its ready hints of the tuple. A cold create queues one VM
//!   start on the worker the scheduler picks to grow the tuple's warm pool. When the
//!   scheduler picks nobody (no worker has room), the broker answers 503 itself.
//! - A worker's ready hints are handed out oldest first; a repeated `ready` keeps the hint's
//!   age.
//! - The pending VM-start queue is bounded per worker (oldest dropped first) and cleared when
//!   the worker deregisters, loses its lease or moves to another base URL.
//! - Static workers stay static when they register and become unavailable (not forgotten)
//!   when they deregister.

mod availability;
mod builder;
mod placement;
#[cfg(test)]
mod properties;
mod ready;
mod redirect;
mod registry;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use url::Url;

pub use self::builder::BrokerBuilder;

use self::availability::Availability;
use self::ready::{ReadyIndex, Verdict};
use self::registry::{Capacity, Registry, WorkerRecord};
use crate::api::{
    timestamp, CreateSandboxRequest, RegistrationRequest, RegistrationResponse, VmEventRequest,
    VmStartResponse,
};
use crate::clock::Clock;
use crate::id::{ComponentId, LocalVmId, SandboxId};
use crate::scheduler::{Choice, Scheduler, WorkerLoad};
use crate::telemetry::{Metrics, NoCapacityLabels, PlacementLabels};
use crate::tuple::SandboxTuple;

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
    /// For this long after the broker starts, a sandbox of a worker it does not know (yet)
    /// answers `503` with `Retry-After` rather than `404`: after a restart the workers
    /// register again (at once when they probe, else at their next heartbeat), and until
    /// then their sandboxes are not gone.
    pub restart_grace: Duration,
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
            restart_grace: DEFAULT_RESTART_GRACE,
        }
    }
}

/// The default [`BrokerConfig::restart_grace`]: a heartbeat (30 s) with its largest jitter,
/// and room to spare.
pub const DEFAULT_RESTART_GRACE: Duration = Duration::from_secs(40);

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
    /// 503 with `Retry-After`: a worker the broker does not know, within its
    /// [`BrokerConfig::restart_grace`]: it has not registered again since the broker started.
    #[error("worker not registered yet: the broker restarted, retry shortly")]
    WorkerNotYetRegistered,
    /// 400.
    #[error("invalid placement_retry")]
    InvalidPlacementRetry,
    /// 503.
    #[error("placement retry exhausted")]
    PlacementRetryExhausted,
    /// 503: no active worker (with the SKU), or none with room the scheduler would use.
    #[error("no placement capacity")]
    NoPlacementCapacity,
    /// 503: active workers exist, but none serves the create's virtualization.
    #[error("no worker serves virtualization {0}")]
    VirtualizationUnavailable(String),
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
    config: BrokerConfig,
    clock: Arc<dyn Clock>,
    scheduler: Arc<dyn Scheduler>,
    metrics: Arc<Metrics>,
    instance_id: String,
    /// When this broker was built, by its clock (the restart grace runs from here).
    started_at: DateTime<Utc>,
    state: Mutex<State>,
}

/// Everything mutable, behind the one lock.
#[derive(Debug, Default)]
struct State {
    registry: Registry,
    ready: ReadyIndex,
}

/// What a placement decided under the lock; the redirect is built after it is released.
struct Decision {
    worker_id: ComponentId,
    base_url: Url,
    local_vm_id: Option<LocalVmId>,
}

/// A validated VM event.
enum VmAction {
    Ready(LocalVmId, SandboxTuple),
    Remove(LocalVmId),
}

impl Broker {
    /// Builds a broker.
    pub fn new(
        config: BrokerConfig,
        clock: Arc<dyn Clock>,
        scheduler: Arc<dyn Scheduler>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            config,
            started_at: clock.now(),
            clock,
            scheduler,
            metrics,
            instance_id: ulid::Ulid::new().to_string(),
            state: Mutex::new(State::default()),
        }
    }

    /// Settings.
    pub fn config(&self) -> &BrokerConfig {
        &self.config
    }

    /// The metrics registry.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// A ULID chosen at construction; workers detect broker restarts by it.
    pub fn instance_id(&self) -> &str {
        &self.instance_id
    }

    /// True within [`BrokerConfig::restart_grace`] of this broker's start.
    fn in_restart_grace(&self, now: DateTime<Utc>) -> bool {
        chrono::Duration::from_std(self.config.restart_grace)
            .is_ok_and(|grace| now < self.started_at + grace)
    }

    // The state is soft and every section leaves it consistent, so a panic elsewhere while
    // holding the lock is no reason to stop serving.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn count_no_capacity(&self, reason: &str) {
        self.metrics.broker.no_capacity.inc(&NoCapacityLabels {
            status_code: 503,
            reason,
        });
    }

    /// Places a create (`POST /sandboxes`) where the scheduler says: a ready VM of the tuple
    /// on an active, SKU-matching worker (its oldest), or a cold boot, which also queues one
    /// VM start where the scheduler wants the warm pool to grow. `placement_retry` is the raw
    /// query value.
    pub fn place_create(
        &self,
        request: &CreateSandboxRequest,
        placement_retry: Option<&str>,
    ) -> Result<Placement, BrokerError> {
        let started = Instant::now();
        let retry = placement::parse_placement_retry(placement_retry)?;
        self.metrics
            .broker
            .placement_retry
            .observe(&(), f64::from(retry));
        if retry > self.config.placement_retry_max {
            self.count_no_capacity("placement_retry_exhausted");
            return Err(BrokerError::PlacementRetryExhausted);
        }
        let sku = request.hardware_sku.trim();
        let tuple = SandboxTuple::normalize(
            &request.virtualization,
            &request.image,
            request.cpu,
            &self.config.default_virtualization,
        );
        let now = self.clock.now();
        let decision = {
            let mut guard = self.lock();
            let State { registry, ready } = &mut *guard;
            self.decide(registry, ready, &tuple, sku, now)
        };
        let decision = decision.inspect_err(|reason| self.count_no_capacity(reason));
        let Decision {
            worker_id,
            base_url,
            local_vm_id,
        } = decision.map_err(|reason| match reason {
            "no_worker_for_virtualization" => {
                BrokerError::VirtualizationUnavailable(tuple.virtualization.clone())
            }
            _ => BrokerError::NoPlacementCapacity,
        })?;
        let location = redirect::create_location(&base_url, local_vm_id, retry)?;
        let result = if local_vm_id.is_some() {
            "ok_ready"
        } else {
            "ok_cold"
        };
        self.metrics.broker.placement_duration.observe(
            &PlacementLabels {
                worker_id: worker_id.as_str(),
                result,
            },
            started.elapsed().as_secs_f64(),
        );
        let hardware_sku = (!sku.is_empty()).then_some(sku);
        match local_vm_id {
            Some(vm) => tracing::info!(
                worker_id = %worker_id,
                local_vm_id = %vm,
                placement_retry = retry,
                hardware_sku,
                "redirecting create request to worker using ready vm"
            ),
            None => tracing::info!(
                worker_id = %worker_id,
                placement_retry = retry,
                hardware_sku,
                tuple = %tuple,
                "redirecting create request to worker"
            ),
        }
        Ok(Placement {
            location,
            worker_id,
            local_vm_id,
            placement_retry: retry,
        })
    }

    /// The placement, under the lock: the scheduler chooses among the active (SKU-matching)
    /// workers between a ready sandbox and a cold boot; the create is charged to the chosen
    /// worker, and a cold boot also queues one VM start of the tuple on the worker the
    /// scheduler picks for it. The error is the `reason` label of `broker.no_capacity.total`.
    fn decide(
        &self,
        registry: &mut Registry,
        ready: &mut ReadyIndex,
        tuple: &SandboxTuple,
        sku: &str,
        now: DateTime<Utc>,
    ) -> Result<Decision, &'static str> {
        let mut candidates = placement::candidates(registry, ready, tuple, sku, now)
            .map_err(|none| none.reason())?;
        let chosen = self.scheduler.place(tuple, &candidates);
        let Some(index) = chosen.as_ref().and_then(|choice| {
            candidates
                .iter()
                .position(|c| &c.worker_id == choice.worker_id())
        }) else {
            if candidates.iter().all(|c| !c.has_room(tuple.cpu)) {
                tracing::info!(
                    candidates = candidates.len(),
                    tuple = %tuple,
                    "no worker has room for the create"
                );
                return Err("no_room");
            }
            tracing::warn!(
                candidates = candidates.len(),
                tuple = %tuple,
                "scheduler chose no candidate worker"
            );
            return Err("scheduler_declined");
        };
        let worker_id = candidates[index].worker_id.clone();
        let warm = match chosen {
            Some(Choice::Warm(_)) => {
                let vm = ready.pop_oldest(tuple, |worker| {
                    if !registry.is_active(worker, now) {
                        Verdict::Drop
                    } else if worker == &worker_id {
                        Verdict::Take
                    } else {
                        Verdict::Skip
                    }
                });
                if vm.is_none() {
                    tracing::warn!(
                        worker_id = %worker_id,
                        tuple = %tuple,
                        "scheduler chose a ready vm the worker does not have, placing cold"
                    );
                }
                vm.map(|(_, vm)| vm)
            }
            _ => None,
        };
        let worker = registry.get_mut(&worker_id).ok_or("scheduler_declined")?;
        worker.placed_since_heartbeat += 1;
        let decision = Decision {
            base_url: worker.base_url.clone(),
            worker_id,
            local_vm_id: warm,
        };
        if warm.is_none() && !tuple.image.is_empty() {
            candidates[index].placed_since_heartbeat += 1;
            self.queue_warm_start(registry, tuple, &candidates);
        }
        Ok(decision)
    }

    /// Queues one VM start of `tuple` on the candidate the scheduler picks to grow the
    /// tuple's warm pool (none when it picks nobody).
    fn queue_warm_start(
        &self,
        registry: &mut Registry,
        tuple: &SandboxTuple,
        candidates: &[WorkerLoad],
    ) {
        let chosen = self.scheduler.warm_start(tuple, candidates);
        let Some(worker) = chosen
            .filter(|id| candidates.iter().any(|c| &c.worker_id == id))
            .and_then(|id| registry.get_mut(&id))
        else {
            tracing::debug!(tuple = %tuple, "no worker chosen to grow the warm pool");
            return;
        };
        let dropped = worker.enqueue_start(tuple.clone(), self.config.pending_start_queue_max);
        if dropped > 0 {
            tracing::debug!(
                worker_id = %worker.id,
                dropped,
                "pending vm start queue full, dropped oldest requests"
            );
        }
    }

    /// Routes a sandbox-scoped request: `sandbox_id` is path segment 2, `path` the decoded
    /// request path, `raw_query` the query string as received (appended verbatim).
    pub fn route_sandbox(
        &self,
        sandbox_id: &str,
        path: &str,
        raw_query: Option<&str>,
    ) -> Result<SandboxRedirect, BrokerError> {
        let id = SandboxId::parse(sandbox_id).map_err(|_| BrokerError::MalformedSandboxId)?;
        if id.broker_id() != &self.config.broker_id {
            return Err(BrokerError::BrokerIdMismatch);
        }
        let now = self.clock.now();
        let base_url = {
            let guard = self.lock();
            let Some(worker) = guard.registry.get(id.worker_id()) else {
                return Err(if self.in_restart_grace(now) {
                    BrokerError::WorkerNotYetRegistered
                } else {
                    BrokerError::WorkerUnknown
                });
            };
            if !worker.is_active(now) {
                return Err(BrokerError::WorkerUnavailable);
            }
            worker.base_url.clone()
        };
        let location = redirect::sandbox_location(&base_url, path, raw_query)?;
        // Every request about a sandbox passes here: at debug level, so that the redirect hot
        // path is not bound by log formatting (creates and worker events stay at info).
        tracing::debug!(
            worker_id = %id.worker_id(),
            sandbox_id = %id,
            "redirecting sandbox-scoped request to worker"
        );
        Ok(SandboxRedirect {
            location,
            worker_id: id.worker_id().clone(),
        })
    }

    /// Registers or renews a worker (`PUT /internal/workers/{id}/registration`).
    ///
    /// A new worker is dynamic: it expires unless renewed. A worker added in-process with
    /// [`Broker::register_static_worker`] stays static (and never expires) when it registers;
    /// its record takes the reported URL, SKU and capacity. A changed base URL drops the
    /// worker's ready hints and pending VM starts, which were meant for the old address.
    pub fn register_worker(
        &self,
        worker_id: &str,
        request: RegistrationRequest,
    ) -> Result<RegistrationResponse, BrokerError> {
        let id = ComponentId::parse(worker_id).map_err(|_| BrokerError::InvalidWorkerId)?;
        let valid = registry::validate_registration(&request)?;
        let now = self.clock.now();
        let ttl = self.config.worker_lease_ttl;
        let expires_at = chrono::Duration::from_std(ttl)
            .ok()
            .and_then(|ttl| now.checked_add_signed(ttl))
            .unwrap_or(DateTime::<Utc>::MAX_UTC);
        let (dropped_hints, is_static) = {
            let mut guard = self.lock();
            let State { registry, ready } = &mut *guard;
            match registry.get_mut(&id) {
                Some(worker) => {
                    let mut dropped = 0;
                    if worker.base_url != valid.base_url {
                        dropped = ready.remove_worker(&id);
                        worker.pending.clear();
                    }
                    worker.hostname = valid.hostname.clone();
                    worker.base_url = valid.base_url.clone();
                    worker.hardware_sku = valid.hardware_sku.clone();
                    worker.capacity = valid.capacity;
                    worker.virtualizations = valid.virtualizations.clone();
                    worker.placed_since_heartbeat = 0;
                    worker.available = true;
                    worker.last_seen_at = now;
                    worker.lease_expires_at = Some(expires_at);
                    (dropped, worker.is_static)
                }
                None => {
                    let order = registry.next_order();
                    registry.insert(WorkerRecord {
                        id: id.clone(),
                        hostname: valid.hostname.clone(),
                        base_url: valid.base_url.clone(),
                        hardware_sku: valid.hardware_sku.clone(),
                        capacity: valid.capacity,
                        virtualizations: valid.virtualizations.clone(),
                        placed_since_heartbeat: 0,
                        available: true,
                        is_static: false,
                        last_seen_at: now,
                        lease_expires_at: Some(expires_at),
                        order,
                        pending: VecDeque::new(),
                    });
                    (0, false)
                }
            }
        };
        tracing::info!(
            worker_id = %id,
            hostname = %valid.hostname,
            base_url = %valid.base_url,
            hardware_sku = %valid.hardware_sku,
            lease_expires_at = %timestamp::format(&expires_at),
            is_static,
            dropped_hints,
            "worker registered"
        );
        Ok(RegistrationResponse {
            worker_id: id.to_string(),
            lease_ttl_seconds: ttl.as_secs(),
            heartbeat_interval_seconds: self.config.heartbeat_interval.as_secs(),
            expires_at,
            broker_instance_id: self.instance_id.clone(),
        })
    }

    /// Removes a dynamic worker, its hints and its queue. Unknown ids are ignored.
    ///
    /// A static worker stays known (its configuration is in-process) but is marked
    /// unavailable, with its hints and queue dropped, until it registers again: a worker
    /// that says it is leaving should not receive redirects.
    pub fn deregister_worker(&self, worker_id: &str) {
        let Ok(id) = ComponentId::parse(worker_id) else {
            return;
        };
        let mut guard = self.lock();
        let State { registry, ready } = &mut *guard;
        let Some(worker) = registry.get_mut(&id) else {
            return;
        };
        let is_static = worker.is_static;
        if is_static {
            worker.available = false;
            worker.pending.clear();
            worker.placed_since_heartbeat = 0;
        } else {
            registry.remove(&id);
        }
        let dropped_hints = ready.remove_worker(&id);
        drop(guard);
        tracing::info!(worker_id = %id, is_static, dropped_hints, "worker deregistered");
    }

    /// Checks that an internal caller may use the worker routes: prod refuses unknown and
    /// inactive workers with `worker must self-register`; dev refuses only unknown ones.
    fn check_internal_caller(
        &self,
        registry: &Registry,
        worker_id: &str,
        now: DateTime<Utc>,
    ) -> Result<ComponentId, BrokerError> {
        match registry.find(worker_id) {
            None if self.config.prod_mode => Err(BrokerError::WorkerMustSelfRegister),
            None => Err(BrokerError::WorkerUnknown),
            Some(w) if self.config.prod_mode && !w.is_active(now) => {
                Err(BrokerError::WorkerMustSelfRegister)
            }
            Some(w) => Ok(w.id.clone()),
        }
    }

    fn parse_vm_event(&self, event: &VmEventRequest) -> Result<VmAction, BrokerError> {
        let vm =
            LocalVmId::parse(event.local_vm_id.trim()).map_err(|_| BrokerError::InvalidVmEvent)?;
        let tuple = SandboxTuple::normalize(
            &event.virtualization,
            &event.image,
            event.cpu,
            &self.config.default_virtualization,
        );
        if tuple.image.is_empty() {
            return Err(BrokerError::InvalidVmEvent);
        }
        match event.event.trim() {
            "ready" => Ok(VmAction::Ready(vm, tuple)),
            "claimed" | "retired" => Ok(VmAction::Remove(vm)),
            _ => Err(BrokerError::InvalidVmEvent),
        }
    }

    /// Applies a VM event (`ready` adds a hint, `claimed`/`retired` remove it) and the load
    /// it carries, if any.
    ///
    /// A repeated `ready` for the same VM and tuple keeps the hint's original age, so a
    /// re-announcement does not push an old ready VM behind newer ones. A reported load
    /// replaces the worker's last one, like a heartbeat does: what the broker placed on the
    /// worker since counts from then on.
    pub fn apply_vm_event(
        &self,
        worker_id: &str,
        event: VmEventRequest,
    ) -> Result<(), BrokerError> {
        let action = self.parse_vm_event(&event);
        let now = self.clock.now();
        let (id, vm) = {
            let mut guard = self.lock();
            let State { registry, ready } = &mut *guard;
            let id = self.check_internal_caller(registry, worker_id, now)?;
            let action = action?;
            if let (Some(report), Some(worker)) = (&event.capacity, registry.get_mut(&id)) {
                worker
                    .capacity
                    .update_load(report)
                    .ok_or(BrokerError::InvalidVmEvent)?;
                worker.placed_since_heartbeat = 0;
            }
            match action {
                VmAction::Ready(vm, tuple) => {
                    ready.upsert(id.clone(), vm, tuple);
                    (id, vm)
                }
                VmAction::Remove(vm) => {
                    ready.remove(&id, &vm);
                    (id, vm)
                }
            }
        };
        tracing::info!(
            worker_id = %id,
            event = %event.event.trim(),
            local_vm_id = %vm,
            "applied worker vm event"
        );
        Ok(())
    }

    /// Pops the worker's oldest pending VM start, if any.
    pub fn next_vm_start(&self, worker_id: &str) -> Result<Option<VmStartResponse>, BrokerError> {
        let now = self.clock.now();
        let (id, next) = {
            let mut guard = self.lock();
            let id = self.check_internal_caller(&guard.registry, worker_id, now)?;
            let next = guard
                .registry
                .get_mut(&id)
                .and_then(|w| w.pending.pop_front());
            (id, next)
        };
        let Some(tuple) = next else {
            return Ok(None);
        };
        tracing::info!(
            worker_id = %id,
            virtualization = %tuple.virtualization,
            image = %tuple.image,
            cpu = tuple.cpu,
            "assigned vm start request to worker"
        );
        Ok(Some(VmStartResponse {
            virtualization: tuple.virtualization,
            image: tuple.image,
            cpu: tuple.cpu,
        }))
    }

    /// The `GET /metrics/sandboxes` text.
    pub fn availability_text(&self) -> String {
        let now = self.clock.now();
        let availability = {
            let guard = self.lock();
            Availability::collect(&guard.registry, &guard.ready, now)
        };
        availability.render(self.config.broker_id.as_str(), now)
    }

    /// Marks every dynamic worker whose lease has lapsed unavailable, drops its hints and
    /// queue; returns how many.
    pub fn sweep_expired_leases(&self) -> usize {
        let now = self.clock.now();
        let expired = {
            let mut guard = self.lock();
            let State { registry, ready } = &mut *guard;
            let mut expired = Vec::new();
            for worker in registry.iter_mut().filter(|w| w.lease_lapsed(now)) {
                worker.available = false;
                worker.pending.clear();
                worker.placed_since_heartbeat = 0;
                expired.push(worker.id.clone());
            }
            for id in &expired {
                ready.remove_worker(id);
            }
            expired.len()
        };
        if expired > 0 {
            tracing::info!(count = expired, "expired worker leases");
        }
        expired
    }

    /// Sweeps every `lease_sweep_interval` until `shutdown` completes.
    pub async fn run_lease_sweeper(self: Arc<Self>, shutdown: impl Future<Output = ()> + Send) {
        // A zero interval would make tokio panic; treat it as "as often as sensible".
        let period = self
            .config
            .lease_sweep_interval
            .max(Duration::from_millis(1));
        let mut ticks = tokio::time::interval(period);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                _ = ticks.tick() => {
                    self.sweep_expired_leases();
                }
            }
        }
    }

    /// Adds or replaces a static worker.
    pub fn register_static_worker(&self, worker: StaticWorker) {
        let raw_id = worker.worker_id.trim();
        if raw_id.is_empty() {
            tracing::warn!("RegisterWorker called with empty worker_id, ignoring");
            return;
        }
        let id = match ComponentId::parse(raw_id) {
            Ok(id) => id,
            Err(error) => {
                tracing::warn!(%error, "static worker has an invalid worker_id, ignoring");
                return;
            }
        };
        let base_url = match registry::parse_base_url(&worker.base_url) {
            Ok(url) => url,
            Err(error) => {
                tracing::warn!(worker_id = %id, %error, "static worker has an invalid base_url, ignoring");
                return;
            }
        };
        let capacity = Capacity {
            total_cores: worker.total_cores,
            total_memory_mib: worker.total_memory_mib,
            max_live_sandboxes: worker.max_live_sandboxes,
            ..Capacity::default()
        };
        let now = self.clock.now();
        let mut guard = self.lock();
        let State { registry, ready } = &mut *guard;
        let (order, pending) = match registry.remove(&id) {
            Some(old) if old.base_url == base_url => (old.order, old.pending),
            Some(old) => {
                ready.remove_worker(&id);
                (old.order, VecDeque::new())
            }
            None => (registry.next_order(), VecDeque::new()),
        };
        registry.insert(WorkerRecord {
            id,
            hostname: worker.hostname.trim().to_string(),
            base_url,
            hardware_sku: worker.hardware_sku.trim().to_string(),
            virtualizations: Vec::new(),
            capacity,
            placed_since_heartbeat: 0,
            available: true,
            is_static: true,
            last_seen_at: now,
            lease_expires_at: None,
            order,
            pending,
        });
    }

    /// Marks a worker available or not; unavailable drops its hints and queue.
    pub fn set_worker_available(&self, worker_id: &str, available: bool) {
        let Ok(id) = ComponentId::parse(worker_id) else {
            return;
        };
        let mut guard = self.lock();
        let State { registry, ready } = &mut *guard;
        let Some(worker) = registry.get_mut(&id) else {
            return;
        };
        worker.available = available;
        if !available {
            worker.pending.clear();
            worker.placed_since_heartbeat = 0;
            ready.remove_worker(&id);
        }
    }

    /// True when the worker is known and active now.
    pub fn is_worker_active(&self, worker_id: &str) -> bool {
        let now = self.clock.now();
        let guard = self.lock();
        guard
            .registry
            .find(worker_id)
            .is_some_and(|w| w.is_active(now))
    }
}
