//! Sandbox creation: validation, capacity reserved under the lock, warm claims (hinted or
//! not), cold provisioning outside the lock, and bounces back to the broker.
//!
//! Invariant: whatever path a create takes, a failure leaves the reservation released, no VM
//! behind, and any hinted VM back in the pool and announced ready again.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::task::JoinHandle;

use super::defaults::DEFAULT_MEMORY_HIGH_WATERMARK_PERCENT;
use super::exec::{OutputBudget, MAX_OUTPUT_BYTES_PER_SANDBOX};
use super::sandbox::{destroy_vm, expiry};
use super::state::{SandboxEntry, StartType, State, Usage};
use super::{CreateOutcome, Placement, Worker, WorkerError};
use crate::api::{CreateSandboxRequest, CreateSandboxResponse, VmEventKind};
use crate::auth::Principal;
use crate::backend::{BackendError, ProvisionSpec, Vm, VmBackend};
use crate::id::{LocalVmId, SandboxId};
use crate::network::{Egress, Policy};
use crate::telemetry::{SandboxReadyLabels, WorkerCpuLabels};
use crate::tuple::SandboxTuple;

/// Memory per cpu when the configuration gives none.
const FALLBACK_MIB_PER_CPU: u64 = 512;

/// A validated create.
struct CreateSpec {
    tuple: SandboxTuple,
    ttl: Duration,
    memory_mib: u64,
    /// What the sandbox is charged against the worker's capacity.
    charge: Usage,
    owner: String,
    started: tokio::time::Instant,
    /// Its egress: given at once to a cold sandbox, at claim time to a warm one.
    network: Policy,
}

impl CreateSpec {
    fn usage(&self) -> Usage {
        self.charge
    }
}

/// A committed sandbox, described for the response.
struct Committed {
    id: SandboxId,
    expires_at: DateTime<Utc>,
}

/// The error of a create that races shutdown.
pub(super) fn shutting_down() -> WorkerError {
    WorkerError::ProvisionFailed(BackendError::Unavailable(
        "worker is shutting down".to_string(),
    ))
}

/// Capacity held for a create still provisioning; released on drop unless committed.
struct Reservation<'a> {
    worker: &'a Worker,
    usage: Usage,
    armed: bool,
}

impl Reservation<'_> {
    /// Releases the capacity. Must not be called with the state lock held.
    fn release(&mut self) {
        if std::mem::take(&mut self.armed) {
            self.worker.lock().reserved.sub(self.usage);
            self.worker.update_capacity_gauges();
        }
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        self.release();
    }
}

type ProvisionResult = Result<Arc<dyn Vm>, BackendError>;

/// A provision running in its own task. If the create is dropped (the client hung up) before
/// the result was taken, the VM is destroyed once it exists.
struct ProvisionTask {
    handle: Option<JoinHandle<ProvisionResult>>,
}

impl ProvisionTask {
    fn spawn(backend: Arc<dyn VmBackend>, spec: ProvisionSpec, network: Policy) -> Self {
        Self {
            handle: Some(tokio::spawn(async move {
                backend.provision_with_network(spec, &network).await
            })),
        }
    }

    async fn wait(&mut self) -> ProvisionResult {
        let Some(handle) = self.handle.as_mut() else {
            return Err(BackendError::task("provision", "already awaited"));
        };
        let result = handle.await;
        self.handle = None;
        match result {
            Ok(result) => result,
            Err(error) => Err(BackendError::task("provision", error)),
        }
    }
}

impl Drop for ProvisionTask {
    fn drop(&mut self) {
        let Some(handle) = self.handle.take() else {
            return;
        };
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                if let Ok(Ok(vm)) = handle.await {
                    tracing::info!(local_vm_id = %vm.vm_id(), "destroying vm of an abandoned create");
                    destroy_vm(vm, "abandoned create").await;
                }
            });
        }
    }
}

impl Worker {
    pub(super) async fn create_one(
        &self,
        principal: &Principal,
        request: CreateSandboxRequest,
        placement: Placement,
    ) -> Result<CreateOutcome, WorkerError> {
        let started = tokio::time::Instant::now();
        let tuple = self.create_tuple(&request)?;
        let network = self.create_policy(request.network.as_ref())?;
        let Placement { claim: hint, retry } = placement;
        let backend = self
            .backends
            .get(&tuple.virtualization)
            .cloned()
            .ok_or_else(|| WorkerError::UnsupportedVirtualization(tuple.virtualization.clone()))?;
        // A mode the backend lacks costs no sandbox.
        if !backend.supports_egress(network.egress()) {
            return Err(WorkerError::Unsupported(match network.egress() {
                Egress::None => "network egress none",
                Egress::All => "network egress all",
                Egress::Allow => "network egress allow",
            }));
        }
        let ttl = if request.ttl_seconds > 0 {
            Duration::from_secs(request.ttl_seconds as u64).min(self.config.max_ttl)
        } else {
            self.config.default_ttl
        };
        let memory_mib = self.memory_for(tuple.cpu);
        let spec = CreateSpec {
            charge: self.charge(&tuple, memory_mib),
            memory_mib,
            tuple,
            ttl,
            owner: principal.client_id.clone(),
            started,
            network: network.clone(),
        };
        let outcome = match hint {
            Some(vm_id) => self.create_hinted(spec, vm_id, retry).await,
            None => self.create_unhinted(spec, backend).await,
        }?;
        let attached = matches!(&outcome, CreateOutcome::Created(c) if c.start_type == StartType::Cold.as_str());
        if let (CreateOutcome::Created(created), Egress::All | Egress::Allow, false) =
            (&outcome, network.egress(), attached)
        {
            // Network is attached at claim time, so a warm sandbox serves any mode (a cold
            // one was provisioned with it); a sandbox that cannot get its network is no
            // sandbox.
            let id =
                SandboxId::parse(&created.sandbox_id).map_err(|_| WorkerError::SandboxNotFound)?;
            if let Err(error) = self.attach_network(principal, &id, network).await {
                tracing::warn!(
                    worker_id = %self.config.worker_id,
                    sandbox_id = %id,
                    %error,
                    "sandbox network could not be set; sandbox removed"
                );
                let _ = self.delete(principal, &id).await;
                return Err(error);
            }
        }
        Ok(outcome)
    }

    /// `cpu × (total_memory / total_cores)`, with 512 MiB per cpu when that is 0.
    pub(super) fn memory_for(&self, cpu: u32) -> u64 {
        let per_cpu = match self.config.total_cores {
            0 => 0,
            cores => self.config.total_memory_mib / u64::from(cores),
        };
        let per_cpu = if per_cpu == 0 {
            FALLBACK_MIB_PER_CPU
        } else {
            per_cpu
        };
        u64::from(cpu).saturating_mul(per_cpu)
    }

    /// Cores sandboxes may be charged in all (see [`super::CapacityConfig`]).
    pub(super) fn capacity_cores(&self) -> u64 {
        u64::from(self.config.total_cores)
            .saturating_mul(u64::from(self.config.capacity.cpu_overcommit.max(1)))
    }

    /// Memory sandboxes may be charged in all.
    pub(super) fn capacity_memory_mib(&self) -> u64 {
        self.config
            .total_memory_mib
            .saturating_mul(u64::from(self.config.capacity.memory_overcommit.max(1)))
    }

    /// What one sandbox of `tuple` with `memory_mib` is charged: its cpu and memory where the
    /// backend overcommits, the same times the overcommit factors where it reserves.
    pub(super) fn charge(&self, tuple: &SandboxTuple, memory_mib: u64) -> Usage {
        let overcommits = self
            .backends
            .get(&tuple.virtualization)
            .is_some_and(|b| b.overcommits());
        let (cpu_factor, memory_factor) = if overcommits {
            (1, 1)
        } else {
            (
                u64::from(self.config.capacity.cpu_overcommit.max(1)),
                u64::from(self.config.capacity.memory_overcommit.max(1)),
            )
        };
        Usage {
            count: 1,
            cores: u64::from(tuple.cpu).saturating_mul(cpu_factor),
            memory_mib: memory_mib.saturating_mul(memory_factor),
        }
    }

    fn check_capacity(&self, state: &State, usage: Usage) -> Result<(), WorkerError> {
        if state.draining {
            return Err(WorkerError::NoCapacity("no capacity: worker draining"));
        }
        if state.reserved.count >= self.config.max_live_sandboxes {
            return Err(WorkerError::NoCapacity(
                "no capacity: max sandbox count reached",
            ));
        }
        if state.reserved.cores.saturating_add(usage.cores) > self.capacity_cores() {
            return Err(WorkerError::NoCapacity("no capacity: cpu limit reached"));
        }
        if state.reserved.memory_mib.saturating_add(usage.memory_mib) > self.capacity_memory_mib() {
            return Err(WorkerError::NoCapacity("no capacity: memory limit reached"));
        }
        Ok(())
    }

    /// True while the memory the sandboxes actually use is above the high watermark, or above
    /// [`DEFAULT_MEMORY_HIGH_WATERMARK_PERCENT`] of a backend's memory ceiling (a limit on
    /// the cgroup its sandboxes live under). Asks the backends (which may read files): never
    /// call it under the state lock.
    pub(super) fn above_memory_watermark(&self) -> bool {
        let mut used_total: u64 = 0;
        let mut above = false;
        for backend in self.backends.values() {
            let Some(used) = backend.memory_in_use() else {
                continue;
            };
            used_total = used_total.saturating_add(used);
            if let Some(ceiling) = backend.memory_ceiling() {
                let high = (ceiling as f64 * DEFAULT_MEMORY_HIGH_WATERMARK_PERCENT / 100.0) as u64;
                above |= used > high;
            }
        }
        if let Some(limit_mib) = self.config.capacity.memory_high_watermark_mib {
            above |= used_total > limit_mib.saturating_mul(1 << 20);
        }
        self.over_watermark.store(above, Ordering::Relaxed);
        above
    }

    /// Retires idle warm sandboxes, oldest first, while the memory in use is above the
    /// watermark; an error when it stays above with none left to retire.
    async fn make_room_below_watermark(&self) -> Result<(), WorkerError> {
        while self.above_memory_watermark() {
            let retiree = {
                let mut state = self.lock();
                self.take_retiree(&mut state)
            };
            let Some((vm_id, tuple, vm)) = retiree else {
                return Err(WorkerError::NoCapacity(
                    "no capacity: memory high watermark reached",
                ));
            };
            tracing::info!(
                worker_id = %self.config.worker_id,
                local_vm_id = %vm_id,
                tuple = %tuple,
                "retiring ready vm: memory above the high watermark"
            );
            destroy_vm(vm, "retired").await;
            self.update_warm_gauges();
        }
        Ok(())
    }

    /// Records the sandbox (its capacity is already reserved) and the demand.
    /// Records the sandbox of `vm`, whose network is `network` (none for a claimed VM:
    /// `create_one` gives it one).
    fn commit(
        &self,
        state: &mut State,
        spec: &CreateSpec,
        vm_id: LocalVmId,
        vm: Arc<dyn Vm>,
        network: Policy,
    ) -> Committed {
        let now = self.clock.now();
        let id = SandboxId::new(
            self.config.broker_id.clone(),
            self.config.worker_id.clone(),
            vm_id,
        );
        let expires_at = expiry(now, spec.ttl);
        state.sandboxes.insert(
            vm_id,
            SandboxEntry {
                id: id.clone(),
                vm,
                tuple: spec.tuple.clone(),
                memory_mib: spec.memory_mib,
                charge: spec.charge,
                owner: spec.owner.clone(),
                created_at: now,
                expires_at,
                first_exec_seen: false,
                execs: Default::default(),
                sessions: Default::default(),
                output: Arc::new(OutputBudget::new(MAX_OUTPUT_BYTES_PER_SANDBOX)),
                network,
                network_change: Arc::default(),
            },
        );
        state.demand.record(spec.tuple.clone(), now);
        Committed { id, expires_at }
    }

    /// Metrics, gauges, log and response of a committed create (`pulled`: it waited for its
    /// image's pull).
    fn created(
        &self,
        spec: &CreateSpec,
        done: Committed,
        start: StartType,
        pulled: bool,
    ) -> CreateOutcome {
        let worker_id = self.config.worker_id.as_str();
        let cpu = spec.tuple.cpu.to_string();
        let metrics = &self.metrics.worker;
        let counter = match start {
            StartType::Warm => &metrics.warm_hit,
            StartType::Cold => &metrics.warm_miss,
        };
        counter.inc(&WorkerCpuLabels {
            worker_id,
            cpu: &cpu,
        });
        metrics.ready_duration.observe(
            &SandboxReadyLabels {
                worker_id,
                start_type: start.as_str(),
                cpu: &cpu,
            },
            spec.started.elapsed().as_secs_f64(),
        );
        self.update_capacity_gauges();
        self.update_warm_gauges();
        self.pool_wake.notify_one();
        tracing::info!(
            worker_id = %self.config.worker_id,
            sandbox_id = %done.id,
            virtualization = %spec.tuple.virtualization,
            image = %spec.tuple.image,
            cpu = spec.tuple.cpu,
            start_type = start.as_str(),
            image_pulled = pulled,
            "sandbox created"
        );
        CreateOutcome::Created(CreateSandboxResponse {
            sandbox_id: done.id.to_string(),
            expires_at: done.expires_at,
            cpu: spec.tuple.cpu,
            memory_mib: spec.memory_mib,
            virtualization: spec.tuple.virtualization.clone(),
            start_type: start.as_str().to_string(),
        })
    }

    /// A create the broker hinted at one ready VM: claim exactly that VM, or send the client
    /// back to the broker.
    async fn create_hinted(
        &self,
        spec: CreateSpec,
        vm_id: LocalVmId,
        retry: u64,
    ) -> Result<CreateOutcome, WorkerError> {
        // Ready VMs found dead on the way, destroyed once the lock is released.
        let mut dead = Vec::new();
        let outcome: Result<Committed, &'static str> = 'claim: {
            let mut state = self.lock();
            if state.shutting_down {
                return Err(shutting_down());
            }
            let mut pooled = state
                .ready
                .snapshot()
                .into_iter()
                .find(|(id, _)| *id == vm_id)
                .map(|(_, tuple)| tuple);
            let reason = match self.check_capacity(&state, spec.usage()) {
                Err(WorkerError::NoCapacity(reason)) => reason,
                Err(other) => return Err(other),
                Ok(()) => {
                    // The hinted VM, or, when it was taken here since the broker heard of it
                    // (an unhinted create claimed it), another ready VM of the tuple: that
                    // spares a round trip to the broker, which in a burst may find only such
                    // stale hints and give up.
                    let mut hinted = state.ready.claim(&vm_id, &spec.tuple);
                    if let Some(vm) = hinted.take_if(|vm| !vm.is_alive()) {
                        self.retire_dead(&state, vm_id, &spec.tuple);
                        dead.push(vm);
                        pooled = None;
                    }
                    let claimed = match hinted {
                        Some(vm) => Some((vm_id, vm)),
                        None if pooled.is_none() => {
                            self.claim_live_oldest(&mut state, &spec.tuple, &mut dead)
                        }
                        None => None,
                    };
                    match claimed {
                        Some((claimed_id, vm)) => {
                            // Part of the tuple's current burst, if there is one.
                            let now = self.clock.now();
                            state.bursts.record(&spec.tuple, now, false);
                            state.reserved.add(spec.usage());
                            let done =
                                self.commit(&mut state, &spec, claimed_id, vm, Policy::none());
                            self.send_vm_event(
                                &state,
                                VmEventKind::Claimed,
                                claimed_id,
                                &spec.tuple,
                            );
                            break 'claim Ok(done);
                        }
                        None if pooled.is_some() => "hinted vm has another tuple",
                        None => "hinted vm is not ready",
                    }
                }
            };
            // The broker dropped its hint when it redirected; the VM is still ours and idle.
            if let Some(tuple) = &pooled {
                self.send_vm_event(&state, VmEventKind::Ready, vm_id, tuple);
            }
            Err(reason)
        };
        destroy_dead(dead).await;
        let bounce_reason = match outcome {
            Ok(done) => return Ok(self.created(&spec, done, StartType::Warm, false)),
            Err(reason) => reason,
        };
        tracing::info!(
            worker_id = %self.config.worker_id,
            local_vm_id = %vm_id,
            placement_retry = retry,
            reason = bounce_reason,
            "hinted create bounced back to broker"
        );
        self.retry_placement(retry)
    }

    /// The oldest ready VM of `tuple` that is still alive; dead ones met on the way (an init
    /// the OOM killer took) are retired, never handed out, and put in `dead` to be destroyed
    /// once the lock is released.
    fn claim_live_oldest(
        &self,
        state: &mut State,
        tuple: &SandboxTuple,
        dead: &mut Vec<Arc<dyn Vm>>,
    ) -> Option<(LocalVmId, Arc<dyn Vm>)> {
        loop {
            let (id, vm) = state.ready.claim_oldest(tuple)?;
            if vm.is_alive() {
                return Some((id, vm));
            }
            self.retire_dead(state, id, tuple);
            dead.push(vm);
        }
    }

    /// A ready VM found dead (taken out of the pool by the caller): the broker hears it is
    /// retired, and the pool refills.
    fn retire_dead(&self, state: &State, id: LocalVmId, tuple: &SandboxTuple) {
        tracing::warn!(
            worker_id = %self.config.worker_id,
            local_vm_id = %id,
            tuple = %tuple,
            "ready vm died idle: retired"
        );
        self.send_vm_event(state, VmEventKind::Retired, id, tuple);
        self.pool_wake.notify_one();
    }

    /// `RetryPlacement` to the broker with the next retry count, when there is a broker to
    /// go back to.
    fn retry_placement(&self, retry: u64) -> Result<CreateOutcome, WorkerError> {
        if self.config.broker_public_url().is_none() {
            return Err(WorkerError::UnableToRetryPlacement);
        }
        Ok(CreateOutcome::RetryPlacement {
            retry: retry.saturating_add(1),
        })
    }

    /// A create without a hint: the oldest ready VM of the tuple, else a cold boot.
    async fn create_unhinted(
        &self,
        spec: CreateSpec,
        backend: Arc<dyn VmBackend>,
    ) -> Result<CreateOutcome, WorkerError> {
        // A cold boot needs memory: above the watermark, idle warm sandboxes go first.
        let warm_available = self.lock().ready.count(&spec.tuple) > 0;
        if !warm_available {
            self.make_room_below_watermark().await?;
        }
        let mut dead = Vec::new();
        let claimed = {
            let mut state = self.lock();
            if state.shutting_down {
                return Err(shutting_down());
            }
            self.check_capacity(&state, spec.usage())?;
            state.reserved.add(spec.usage());
            let claimed = self.claim_live_oldest(&mut state, &spec.tuple, &mut dead);
            // A create that finds the pool empty raises its ceiling (see warm_targets).
            let now = self.clock.now();
            state.bursts.record(&spec.tuple, now, claimed.is_none());
            if let Some((vm_id, vm)) = claimed {
                let done = self.commit(&mut state, &spec, vm_id, vm, Policy::none());
                self.send_vm_event(&state, VmEventKind::Claimed, vm_id, &spec.tuple);
                Ok(done)
            } else if state.slots_in_use() > self.config.max_live_sandboxes as usize {
                // Ready VMs of other tuples take the slots this boot needs: give one up.
                Err(self.take_retiree(&mut state))
            } else {
                Err(None)
            }
        };
        let found_dead = !dead.is_empty();
        destroy_dead(dead).await;
        let retiree = match claimed {
            Ok(done) => return Ok(self.created(&spec, done, StartType::Warm, false)),
            Err(retiree) => retiree,
        };
        let mut reservation = Reservation {
            worker: self,
            usage: spec.usage(),
            armed: true,
        };
        // The ready VMs counted above were dead (an OOM kill, likely): the watermark check
        // skipped for a claim is due for this boot.
        if found_dead && warm_available {
            if let Err(refused) = self.make_room_below_watermark().await {
                reservation.release();
                return Err(refused);
            }
        }
        if let Some((vm_id, tuple, vm)) = retiree {
            tracing::info!(
                worker_id = %self.config.worker_id,
                local_vm_id = %vm_id,
                tuple = %tuple,
                "retiring ready vm to make room"
            );
            destroy_vm(vm, "retired").await;
            self.update_warm_gauges();
        }

        let vm_id = LocalVmId::new_random();
        let mut task = ProvisionTask::spawn(
            backend,
            ProvisionSpec {
                vm_id,
                tuple: spec.tuple.clone(),
                memory_mib: spec.memory_mib,
                warm: false,
            },
            spec.network.clone(),
        );
        let provisioned = task.wait().await;
        let pulled = self.note_provision(&provisioned);
        let vm = match provisioned {
            Ok(vm) => vm,
            Err(error) if error.is_request_fault() => {
                reservation.release();
                tracing::info!(
                    worker_id = %self.config.worker_id,
                    virtualization = %spec.tuple.virtualization,
                    image = %spec.tuple.image,
                    error = %error,
                    "sandbox create refused by the backend"
                );
                return Err(match error {
                    BackendError::ImageNotFound { image } => WorkerError::ImageNotFound(image),
                    other => WorkerError::InvalidCreate(other.to_string()),
                });
            }
            Err(error) => {
                reservation.release();
                tracing::warn!(
                    worker_id = %self.config.worker_id,
                    virtualization = %spec.tuple.virtualization,
                    cpu = spec.tuple.cpu,
                    error = %error,
                    "sandbox provisioning failed"
                );
                return Err(match error {
                    BackendError::RegistryUnreachable { registry, .. } => {
                        WorkerError::RegistryUnreachable(registry)
                    }
                    BackendError::Capacity(reason) => {
                        self.note_backend_full(&reason);
                        WorkerError::BackendNoCapacity(reason)
                    }
                    // Its network, asked for with it, is what the backend lacks.
                    BackendError::Unsupported(what) if spec.network.egress() != Egress::None => {
                        WorkerError::Unsupported(what)
                    }
                    other => WorkerError::ProvisionFailed(other),
                });
            }
        };
        let committed = {
            let mut state = self.lock();
            if state.shutting_down {
                None
            } else {
                reservation.armed = false;
                Some(self.commit(&mut state, &spec, vm_id, vm.clone(), spec.network.clone()))
            }
        };
        match committed {
            Some(done) => Ok(self.created(&spec, done, StartType::Cold, pulled)),
            None => {
                reservation.release();
                destroy_vm(vm, "create during shutdown").await;
                Err(shutting_down())
            }
        }
    }
}

/// Destroys ready VMs found dead (their cgroups, mounts and directories go), awaited so that
/// a shutdown right after finds nothing left behind.
async fn destroy_dead(dead: Vec<Arc<dyn Vm>>) {
    for vm in dead {
        destroy_vm(vm, "dead ready").await;
    }
}
