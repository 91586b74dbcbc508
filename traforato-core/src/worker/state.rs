//! The worker's mutable state (live sandboxes, capacity reservations, the ready pool, demand)
//! and the lookups and gauges built on it. Every section under the lock is short and never
//! spans an `.await`.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, MutexGuard};

use chrono::{DateTime, Utc};

use super::exec::{Exec, OutputBudget};
use super::{Worker, WorkerError};
use crate::auth::Principal;
use crate::backend::Vm;
use crate::id::{ExecId, LocalVmId, SandboxId};
use crate::network::Policy;
use crate::telemetry::WorkerLabels;
use crate::tuple::SandboxTuple;
use crate::warm::{BurstTracker, DemandTracker, ReadyPool};

/// Resources held by live sandboxes and by creates still provisioning.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct Usage {
    /// Sandboxes.
    pub count: u32,
    /// Cores.
    pub cores: u64,
    /// Memory.
    pub memory_mib: u64,
}

impl Usage {
    pub fn add(&mut self, other: Usage) {
        self.count = self.count.saturating_add(other.count);
        self.cores = self.cores.saturating_add(other.cores);
        self.memory_mib = self.memory_mib.saturating_add(other.memory_mib);
    }

    pub fn sub(&mut self, other: Usage) {
        self.count = self.count.saturating_sub(other.count);
        self.cores = self.cores.saturating_sub(other.cores);
        self.memory_mib = self.memory_mib.saturating_sub(other.memory_mib);
    }
}

/// How a sandbox came to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum StartType {
    /// Claimed from the ready pool.
    Warm,
    /// Booted for the create.
    Cold,
}

impl StartType {
    pub fn as_str(self) -> &'static str {
        match self {
            StartType::Warm => "warm",
            StartType::Cold => "cold",
        }
    }
}

/// A live sandbox.
pub(super) struct SandboxEntry {
    pub id: SandboxId,
    pub vm: Arc<dyn Vm>,
    pub tuple: SandboxTuple,
    pub memory_mib: u64,
    /// What it is charged against the worker's capacity (see `Worker::charge`).
    pub charge: Usage,
    pub owner: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub first_exec_seen: bool,
    /// Execs, oldest first (exec ids are ULIDs, so they sort by creation time).
    pub execs: BTreeMap<ExecId, Arc<Exec>>,
    /// Reconnectable exec sessions by name.
    pub sessions: BTreeMap<String, super::sessions::Session>,
    /// The bytes of output all its execs, running or exited, may keep.
    pub output: Arc<OutputBudget>,
    /// The network egress its VM has.
    pub network: Policy,
    /// Held across a change of policy: the VM's and the record's change together.
    pub network_change: Arc<tokio::sync::Mutex<()>>,
}

impl SandboxEntry {
    pub fn usage(&self) -> Usage {
        self.charge
    }
}

/// What a request needs of a sandbox, copied out of the lock.
#[derive(Clone)]
pub(super) struct SandboxHandle {
    pub id: SandboxId,
    pub vm: Arc<dyn Vm>,
}

/// Everything mutable about a worker.
pub(super) struct State {
    /// Live sandboxes by VM id.
    pub sandboxes: HashMap<LocalVmId, SandboxEntry>,
    /// Live sandboxes plus creates still provisioning.
    pub reserved: Usage,
    /// Provisioned, idle VMs waiting to be claimed.
    pub ready: ReadyPool<Arc<dyn Vm>>,
    /// Warm VMs being provisioned, per tuple.
    pub warming: BTreeMap<SandboxTuple, usize>,
    /// Create history.
    pub demand: DemandTracker,
    /// Creates that found no ready sandbox, per tuple (raise its warm ceiling).
    pub bursts: BurstTracker,
    /// VM starts the broker asked for, not yet provisioned.
    pub pending_starts: VecDeque<SandboxTuple>,
    /// Tuples whose warm provisioning failed recently: not retried before the instant.
    pub warm_backoff: HashMap<SandboxTuple, (tokio::time::Instant, std::time::Duration)>,
    /// Every cpu value a warm gauge was set for (so that it can be reset to 0).
    pub gauge_cpus: BTreeSet<u32>,
    /// Set once shutdown began: nothing new is committed.
    pub shutting_down: bool,
    /// Set by [`Worker::drain`](super::Worker::drain): no new sandbox, no warm pool; the
    /// live sandboxes run on.
    pub draining: bool,
}

impl State {
    pub fn new() -> Self {
        Self {
            sandboxes: HashMap::new(),
            reserved: Usage::default(),
            ready: ReadyPool::default(),
            warming: BTreeMap::new(),
            demand: DemandTracker::new(),
            bursts: BurstTracker::new(),
            pending_starts: VecDeque::new(),
            warm_backoff: HashMap::new(),
            gauge_cpus: BTreeSet::new(),
            shutting_down: false,
            draining: false,
        }
    }

    /// Warm VMs being provisioned, all tuples.
    pub fn warming_total(&self) -> usize {
        self.warming.values().sum()
    }

    /// Slots in use: live sandboxes, creates in flight, ready and warming VMs.
    pub fn slots_in_use(&self) -> usize {
        self.reserved.count as usize + self.ready.total() + self.warming_total()
    }

    pub fn start_warming(&mut self, tuple: &SandboxTuple) {
        *self.warming.entry(tuple.clone()).or_default() += 1;
    }

    pub fn stop_warming(&mut self, tuple: &SandboxTuple) {
        if let Some(n) = self.warming.get_mut(tuple) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.warming.remove(tuple);
            }
        }
    }

    /// Removes a sandbox from the live set. What it holds stays reserved until its
    /// teardown has finished (see `Worker::teardown`), so a new create is not admitted while
    /// the old sandbox still holds its memory.
    pub fn remove_sandbox(&mut self, vm_id: &LocalVmId) -> Option<SandboxEntry> {
        self.sandboxes.remove(vm_id)
    }
}

impl Worker {
    pub(super) fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves the state consistent enough to keep serving
        // (every section is a handful of map operations), so poisoning is ignored.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Parses a sandbox id strictly (400 when malformed).
    /// True when the id names this broker and worker.
    pub(super) fn is_own(&self, id: &SandboxId) -> bool {
        id.broker_id() == &self.config.broker_id && id.worker_id() == &self.config.worker_id
    }

    /// Runs `f` on the live sandbox `id` after the ownership check. Ids of other brokers or
    /// workers, unknown ids and expired sandboxes (not yet reaped) are not found.
    pub(super) fn with_sandbox<R>(
        &self,
        principal: &Principal,
        id: &SandboxId,
        f: impl FnOnce(&mut SandboxEntry) -> R,
    ) -> Result<R, WorkerError> {
        if !self.is_own(id) {
            return Err(WorkerError::SandboxNotFound);
        }
        let now = self.clock.now();
        let mut state = self.lock();
        let entry = state
            .sandboxes
            .get_mut(&id.local_vm_id())
            .filter(|e| e.expires_at > now)
            .ok_or(WorkerError::SandboxNotFound)?;
        if self.config.auth_mode.is_prod() && entry.owner != principal.client_id {
            return Err(WorkerError::OwnershipMismatch);
        }
        Ok(f(entry))
    }

    /// The VM of a sandbox the principal may use.
    pub(super) fn sandbox(
        &self,
        principal: &Principal,
        id: &SandboxId,
    ) -> Result<SandboxHandle, WorkerError> {
        self.with_sandbox(principal, id, |e| SandboxHandle {
            id: e.id.clone(),
            vm: e.vm.clone(),
        })
    }

    /// Sets the capacity gauges from the current state.
    pub(super) fn update_capacity_gauges(&self) {
        let (usage, live) = {
            let state = self.lock();
            (state.reserved, state.sandboxes.len())
        };
        let labels = WorkerLabels {
            worker_id: self.config.worker_id.as_str(),
        };
        let metrics = &self.metrics.worker;
        metrics.cpu_allocated_cores.set(&labels, usage.cores as f64);
        metrics
            .memory_allocated_mib
            .set(&labels, usage.memory_mib as f64);
        metrics.sandboxes_live.set(&labels, live as f64);
    }
}
