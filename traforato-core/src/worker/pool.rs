//! The warm pool: targets from demand, bursts and pre-pull floors, the filler that provisions
//! ready VMs (several at once while the pool is short; running the tuple's warm-up script),
//! VM starts assigned by the broker, retirement of idle VMs when a cold boot needs their slot,
//! the warm gauges, and the ordered queue of VM events to the broker.
//!
//! Slots: live sandboxes, creates in flight, ready VMs and VMs being warmed together never
//! exceed `max_live_sandboxes` because of the filler; a cold create may retire a ready VM to
//! stay within it.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::exec::pump;
use super::lifecycle::stopped;
use super::sandbox::destroy_vm;
use super::state::State;
use super::Worker;
use crate::api::{VmEventKind, VmEventRequest, VmStartResponse, WorkerCapacity};
use crate::backend::{BackendError, ExecSpec, OutputStream, Program, ProvisionSpec, Vm};
use crate::id::LocalVmId;
use crate::telemetry::{WarmupFailureLabels, WorkerCpuLabels};
use crate::tuple::SandboxTuple;
use crate::warm::{effective_targets, MAX_BURST_FACTOR};

/// VM events waiting to be sent; beyond this, events are dropped (and logged).
pub(super) const EVENT_QUEUE_CAPACITY: usize = 1024;
/// VM starts waiting to be provisioned; beyond this the oldest is dropped.
pub(super) const PENDING_STARTS_MAX: usize = 64;
/// How often the filler looks at the pool when nothing wakes it.
pub(super) const FILL_INTERVAL: Duration = Duration::from_secs(1);
/// How long a worker whose backend had no room for a sandbox (a full disk) takes no new ones.
pub const BACKEND_FULL_PAUSE: Duration = Duration::from_secs(10);

/// First pause before a tuple whose warm provisioning failed is tried again; it doubles.
pub(super) const WARM_BACKOFF_START: Duration = Duration::from_secs(1);
/// Longest such pause.
pub(super) const WARM_BACKOFF_MAX: Duration = Duration::from_secs(300);
/// Budget of one VM event call.
pub(super) const EVENT_TIMEOUT: Duration = Duration::from_secs(3);
/// Warm-up script output kept for the failure log.
const WARMUP_LOG_BYTES: usize = 2048;

fn event_name(kind: VmEventKind) -> &'static str {
    match kind {
        VmEventKind::Ready => "ready",
        VmEventKind::Claimed => "claimed",
        VmEventKind::Retired => "retired",
    }
}

/// A warm VM to provision.
pub(super) struct WarmJob {
    pub tuple: SandboxTuple,
    /// Asked for by the broker (a VM start), rather than by the targets.
    pub assigned: bool,
}

impl Worker {
    /// True while the worker takes no new sandbox at all: shutting down, draining, above its
    /// memory watermark, or shortly after a backend had no room.
    fn refuses_new(&self, state: &State) -> bool {
        state.shutting_down
            || state.draining
            || self.over_watermark.load(Ordering::Relaxed)
            || self.backend_full()
    }

    /// True for [`BACKEND_FULL_PAUSE`] after a backend had no room for a sandbox.
    fn backend_full(&self) -> bool {
        let until = *self
            .backend_full_until
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        until.is_some_and(|until| self.clock.now() < until)
    }

    /// A backend had no room (a full disk): new sandboxes pause for [`BACKEND_FULL_PAUSE`],
    /// and the broker hears it at once.
    pub(super) fn note_backend_full(&self, reason: &str) {
        let until = self.clock.now() + BACKEND_FULL_PAUSE;
        *self
            .backend_full_until
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(until);
        tracing::warn!(
            worker_id = %self.config.worker_id,
            reason,
            pause = ?BACKEND_FULL_PAUSE,
            "no room for new sandboxes: paused"
        );
        self.heartbeat_wake.notify_one();
    }

    /// Once the pause after a backend had no room is over: the broker hears that this worker
    /// takes sandboxes again, and the warm pool refills (the next create tries again).
    pub(super) fn end_backend_full_pause(&self) {
        let mut until = self
            .backend_full_until
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if until.is_some_and(|u| self.clock.now() >= u) {
            *until = None;
            drop(until);
            tracing::info!(
                worker_id = %self.config.worker_id,
                "pause over: accepting sandboxes again"
            );
            self.heartbeat_wake.notify_one();
            self.pool_wake.notify_one();
        }
    }

    /// True when the worker takes no new sandbox, or has no slot, core or MiB left.
    fn is_full(&self, state: &State) -> bool {
        self.refuses_new(state)
            || state.reserved.count >= self.config.max_live_sandboxes
            || state.reserved.cores >= self.capacity_cores()
            || state.reserved.memory_mib >= self.capacity_memory_mib()
    }

    /// The load reported to the broker (in VM events and heartbeats), from `state`. Records
    /// whether it says the worker is full, so that freeing capacity later renews the
    /// registration at once.
    pub(super) fn capacity_report(&self, state: &State) -> WorkerCapacity {
        let accepting = !self.refuses_new(state);
        self.reported_full
            .store(self.is_full(state), Ordering::Relaxed);
        let as_i64 = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        WorkerCapacity {
            live_sandboxes: as_i64(state.sandboxes.len() as u64),
            allocated_cores: as_i64(state.reserved.cores),
            allocated_memory_mib: as_i64(state.reserved.memory_mib),
            accepting_sandboxes: accepting,
        }
    }

    /// After sandboxes left (their capacity is freed now or soon): if the worker is full, or
    /// the broker last heard it was, renew the registration at once rather than at the next
    /// heartbeat, so that the broker does not turn creates away meanwhile. Call it without
    /// the state lock.
    pub(super) fn capacity_freed(&self) {
        let full = self.is_full(&self.lock());
        if full || self.reported_full.load(Ordering::Relaxed) {
            self.heartbeat_wake.notify_one();
        }
    }

    /// Queues a VM event for the broker, with the load in `state`. Cheap and synchronous:
    /// called under the state lock so that events leave in the order the pool changed.
    pub(super) fn send_vm_event(
        &self,
        state: &State,
        kind: VmEventKind,
        vm_id: LocalVmId,
        tuple: &SandboxTuple,
    ) {
        let Some(events) = &self.events else {
            return;
        };
        let event = VmEventRequest {
            event: event_name(kind).to_string(),
            local_vm_id: vm_id.to_string(),
            virtualization: tuple.virtualization.clone(),
            image: tuple.image.clone(),
            cpu: i64::from(tuple.cpu),
            timestamp: Some(self.clock.now()),
            capacity: Some(self.capacity_report(state)),
        };
        if events.try_send(event).is_err() {
            tracing::warn!(
                worker_id = %self.config.worker_id,
                event = event_name(kind),
                local_vm_id = %vm_id,
                "vm event dropped: queue full"
            );
        }
    }

    /// Sends queued VM events, in order, until stopped.
    pub(super) async fn run_events(
        self: Arc<Self>,
        mut queue: mpsc::Receiver<VmEventRequest>,
        mut stop: watch::Receiver<bool>,
    ) {
        let Some(broker) = self.broker.clone() else {
            return;
        };
        loop {
            let event = tokio::select! {
                _ = stopped(&mut stop) => break,
                event = queue.recv() => match event {
                    Some(event) => event,
                    None => break,
                },
            };
            let sent = tokio::time::timeout(
                EVENT_TIMEOUT,
                broker.vm_event(&self.config.worker_id, &event),
            )
            .await;
            let error = match sent {
                Ok(Ok(())) => continue,
                Ok(Err(error)) => error.to_string(),
                Err(_) => "timed out".to_string(),
            };
            tracing::warn!(
                worker_id = %self.config.worker_id,
                event = %event.event,
                local_vm_id = %event.local_vm_id,
                error = %error,
                "worker vm event callback failed"
            );
        }
    }

    /// Queues a `ready` event for every ready VM (after a first registration or a broker
    /// restart); returns how many.
    pub(super) fn announce_ready(&self) -> usize {
        let state = self.lock();
        let ready = state.ready.snapshot();
        for (vm_id, tuple) in &ready {
            self.send_vm_event(&state, VmEventKind::Ready, *vm_id, tuple);
        }
        ready.len()
    }

    /// Queues a VM start the broker assigned.
    pub(super) fn assign_vm_start(&self, start: VmStartResponse) {
        let tuple = SandboxTuple::normalize(
            &start.virtualization,
            &start.image,
            i64::from(start.cpu),
            &self.config.default_virtualization,
        );
        if tuple.image.is_empty() {
            tracing::warn!(
                worker_id = %self.config.worker_id,
                virtualization = %tuple.virtualization,
                "vm start assignment ignored: image is empty"
            );
            return;
        }
        {
            let mut state = self.lock();
            if state.pending_starts.len() >= PENDING_STARTS_MAX {
                state.pending_starts.pop_front();
            }
            state.pending_starts.push_back(tuple.clone());
        }
        tracing::info!(
            worker_id = %self.config.worker_id,
            tuple = %tuple,
            "vm start assigned"
        );
        self.pool_wake.notify_one();
    }

    /// Warm targets per tuple: demand within `max_live_sandboxes`, each at most the ceiling
    /// (raised by the tuple's recent bursts), raised to the floors.
    pub(super) fn warm_targets(&self, state: &mut State) -> BTreeMap<SandboxTuple, u32> {
        let capacity = self.config.max_live_sandboxes;
        let now = self.clock.now();
        let mut demand = state.demand.targets(capacity, now);
        state.bursts.prune(now);
        if let Some(ceiling) = self.config.capacity.max_warm_per_tuple {
            let most = ceiling.saturating_mul(MAX_BURST_FACTOR);
            for (tuple, target) in demand.iter_mut() {
                let raised = ceiling.max(state.bursts.ceiling(tuple, now).min(most));
                *target = (*target).min(raised);
            }
        }
        effective_targets(&demand, &self.floors, capacity)
    }

    /// Sets the warm gauges (target, ready, deficit per cpu).
    pub(super) fn update_warm_gauges(&self) {
        let (targets, ready, cpus) = {
            let mut state = self.lock();
            let mut targets: BTreeMap<u32, u64> = BTreeMap::new();
            for (tuple, n) in self.warm_targets(&mut state) {
                *targets.entry(tuple.cpu).or_default() += u64::from(n);
            }
            let mut ready: BTreeMap<u32, u64> = BTreeMap::new();
            for (_, tuple) in state.ready.snapshot() {
                *ready.entry(tuple.cpu).or_default() += 1;
            }
            state.gauge_cpus.extend(targets.keys().copied());
            state.gauge_cpus.extend(ready.keys().copied());
            (targets, ready, state.gauge_cpus.clone())
        };
        let metrics = &self.metrics.worker;
        for cpu in cpus {
            let label = cpu.to_string();
            let labels = WorkerCpuLabels {
                worker_id: self.config.worker_id.as_str(),
                cpu: &label,
            };
            let target = targets.get(&cpu).copied().unwrap_or(0);
            let have = ready.get(&cpu).copied().unwrap_or(0);
            metrics.warm_target.set(&labels, target as f64);
            metrics.warm_ready.set(&labels, have as f64);
            metrics
                .warm_deficit
                .set(&labels, target.saturating_sub(have) as f64);
        }
    }

    /// Takes a ready VM to retire so that a cold boot has a slot: the oldest VM of the tuple
    /// with the largest surplus over its target. Queues its `retired` event.
    pub(super) fn take_retiree(
        &self,
        state: &mut State,
    ) -> Option<(LocalVmId, SandboxTuple, Arc<dyn Vm>)> {
        let targets = self.warm_targets(state);
        let mut counts: BTreeMap<SandboxTuple, usize> = BTreeMap::new();
        for (_, tuple) in state.ready.snapshot() {
            *counts.entry(tuple).or_default() += 1;
        }
        let tuple = counts
            .into_iter()
            .max_by_key(|(tuple, n)| {
                let target = targets.get(tuple).copied().unwrap_or(0) as i64;
                (*n as i64 - target, *n)
            })
            .map(|(tuple, _)| tuple)?;
        let (vm_id, vm) = state.ready.claim_oldest(&tuple)?;
        self.send_vm_event(state, VmEventKind::Retired, vm_id, &tuple);
        Some((vm_id, tuple, vm))
    }

    /// True when a VM of the tuple could ever be claimed here: a backend serves it and one
    /// sandbox of it fits in the worker's cores and memory.
    fn can_warm(&self, tuple: &SandboxTuple) -> bool {
        let charge = self.charge(tuple, self.memory_for(tuple.cpu));
        self.backends.contains_key(&tuple.virtualization)
            && charge.cores <= self.capacity_cores()
            && charge.memory_mib <= self.capacity_memory_mib()
    }

    /// The next warm VM to provision, marked as warming; `None` when the pool is complete,
    /// full, or shutting down. Assigned VM starts come first, then the largest deficit.
    pub(super) fn next_warm_job(&self) -> Option<WarmJob> {
        let mut state = self.lock();
        if state.shutting_down || state.draining {
            return None;
        }
        let slots = self.config.max_live_sandboxes as usize;
        while let Some(tuple) = state.pending_starts.pop_front() {
            if !self.can_warm(&tuple) {
                tracing::warn!(
                    worker_id = %self.config.worker_id,
                    tuple = %tuple,
                    "vm start assignment dropped: tuple cannot run on this worker"
                );
                continue;
            }
            if state.slots_in_use() >= slots {
                tracing::info!(
                    worker_id = %self.config.worker_id,
                    tuple = %tuple,
                    "vm start assignment dropped: no capacity"
                );
                continue;
            }
            state.start_warming(&tuple);
            return Some(WarmJob {
                tuple,
                assigned: true,
            });
        }
        if state.slots_in_use() >= slots {
            return None;
        }
        let now = Instant::now();
        let targets = self.warm_targets(&mut state);
        let mut best: Option<(usize, SandboxTuple)> = None;
        for (tuple, target) in targets {
            let have = state.ready.count(&tuple) + state.warming.get(&tuple).copied().unwrap_or(0);
            let deficit = (target as usize).saturating_sub(have);
            if deficit == 0
                || !self.can_warm(&tuple)
                || state
                    .warm_backoff
                    .get(&tuple)
                    .is_some_and(|(until, _)| *until > now)
            {
                continue;
            }
            if best.as_ref().is_none_or(|(d, _)| deficit > *d) {
                best = Some((deficit, tuple));
            }
        }
        let (_, tuple) = best?;
        state.start_warming(&tuple);
        Some(WarmJob {
            tuple,
            assigned: false,
        })
    }

    /// Provisions one warm VM, warms it up, and puts it in the pool (announcing it ready).
    pub(super) async fn fill_one(&self, job: WarmJob, stop: &mut watch::Receiver<bool>) {
        let WarmJob { tuple, assigned } = job;
        let Some(backend) = self.backends.get(&tuple.virtualization).cloned() else {
            self.lock().stop_warming(&tuple);
            return;
        };
        let vm_id = LocalVmId::new_random();
        let spec = ProvisionSpec {
            vm_id,
            tuple: tuple.clone(),
            memory_mib: self.memory_for(tuple.cpu),
            warm: true,
        };
        // In its own task: shutdown waits for a provision rather than cutting it half-way.
        let provisioned = match tokio::spawn(async move { backend.provision(spec).await }).await {
            Ok(result) => result,
            Err(error) => Err(BackendError::task("provision", error)),
        };
        self.note_provision(&provisioned);
        let vm = match provisioned {
            Ok(vm) => vm,
            Err(error) => {
                if let BackendError::Capacity(reason) = &error {
                    self.note_backend_full(reason);
                }
                self.warm_failed(&tuple, "provision", &error.to_string());
                return;
            }
        };
        // Offered only once fully warm: a claim must not wait for (or compete with) an
        // interpreter that is still starting.
        let settled = tokio::select! {
            () = vm.settle() => true,
            () = stopped(stop) => false,
        };
        if !settled {
            destroy_vm(vm, "shutdown").await;
            self.lock().stop_warming(&tuple);
            return;
        }
        if let Some((script, timeout)) = self.warmups.get(&tuple) {
            let warmed = tokio::select! {
                result = warm_up(vm.as_ref(), script, *timeout) => Some(result),
                _ = stopped(stop) => None,
            };
            match warmed {
                Some(Ok(())) => {}
                Some(Err(reason)) => {
                    destroy_vm(vm, "warm-up failed").await;
                    self.warm_failed(&tuple, "warmup", &reason);
                    return;
                }
                None => {
                    destroy_vm(vm, "shutdown").await;
                    self.lock().stop_warming(&tuple);
                    return;
                }
            }
        }
        let rejected = {
            let mut state = self.lock();
            state.stop_warming(&tuple);
            if state.shutting_down {
                Some((vm, "shutdown"))
            } else if state.draining {
                Some((vm, "draining"))
            } else {
                state.ready.push(tuple.clone(), vm_id, vm);
                state.warm_backoff.remove(&tuple);
                self.send_vm_event(&state, VmEventKind::Ready, vm_id, &tuple);
                None
            }
        };
        if let Some((vm, reason)) = rejected {
            destroy_vm(vm, reason).await;
            return;
        }
        tracing::info!(
            worker_id = %self.config.worker_id,
            local_vm_id = %vm_id,
            tuple = %tuple,
            assigned,
            "warm vm ready"
        );
        self.update_warm_gauges();
    }

    fn warm_failed(&self, tuple: &SandboxTuple, reason: &'static str, detail: &str) {
        let pause = {
            let mut state = self.lock();
            state.stop_warming(tuple);
            let pause = state
                .warm_backoff
                .get(tuple)
                .map(|(_, last)| (*last * 2).min(WARM_BACKOFF_MAX))
                .unwrap_or(WARM_BACKOFF_START);
            state
                .warm_backoff
                .insert(tuple.clone(), (Instant::now() + pause, pause));
            pause
        };
        let cpu = tuple.cpu.to_string();
        self.metrics
            .worker
            .warmup_failures
            .inc(&WarmupFailureLabels {
                worker_id: self.config.worker_id.as_str(),
                cpu: &cpu,
                reason,
            });
        tracing::warn!(
            worker_id = %self.config.worker_id,
            tuple = %tuple,
            reason,
            error = %detail,
            retry_in = ?pause,
            "warm vm provisioning failed"
        );
    }

    /// Runs the filler until stopped: up to `warm_fill_parallelism` VMs at once (more than
    /// one only while the pool lacks more than one: each job counts as warming), woken by
    /// pool changes, a finished VM or every [`FILL_INTERVAL`]. At the stop, the VMs being
    /// provisioned are finished (and destroyed).
    pub(super) async fn run_filler(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let parallel = self.config.capacity.warm_fill_parallelism.max(1) as usize;
        let mut filling = FuturesUnordered::new();
        loop {
            if *stop.borrow() {
                break;
            }
            // Above the memory watermark no sandbox is warmed: real creates come first.
            while filling.len() < parallel && !self.above_memory_watermark() {
                let Some(job) = self.next_warm_job() else {
                    break;
                };
                let (worker, mut stop) = (Arc::clone(&self), stop.clone());
                filling.push(async move { worker.fill_one(job, &mut stop).await });
            }
            tokio::select! {
                _ = stopped(&mut stop) => break,
                Some(()) = filling.next(), if !filling.is_empty() => {}
                _ = self.pool_wake.notified() => {}
                _ = tokio::time::sleep(FILL_INTERVAL) => {}
            }
        }
        while filling.next().await.is_some() {}
    }
}

/// Runs a warm-up script; `Err` says why it failed (with the end of its stderr).
async fn warm_up(vm: &dyn Vm, script: &str, timeout: Duration) -> Result<(), String> {
    let (tx, rx) = mpsc::channel(16);
    let spec = ExecSpec {
        program: Program::Shell(script.to_string()),
        cwd: None,
        env: BTreeMap::new(),
        stdin: None,
        timeout,
        exec_id: None,
        interactive: false,
        tty: None,
    };
    let mut stderr: Vec<u8> = Vec::new();
    let result = pump(vm.exec(spec, tx), rx, |chunk| {
        if chunk.stream == OutputStream::Stderr {
            stderr.extend_from_slice(&chunk.data);
            if stderr.len() > WARMUP_LOG_BYTES {
                stderr.drain(..stderr.len() - WARMUP_LOG_BYTES);
            }
        }
    })
    .await;
    let tail = String::from_utf8_lossy(&stderr);
    match result {
        Ok(exit) if exit.exit_code == 0 && !exit.timed_out => Ok(()),
        Ok(exit) if exit.timed_out => Err(format!("warm-up script timed out: {tail}")),
        Ok(exit) => Err(format!(
            "warm-up script exited with {}: {tail}",
            exit.exit_code
        )),
        Err(error) => Err(error.to_string()),
    }
}
