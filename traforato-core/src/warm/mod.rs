//! Warm pools: demand decay, per-tuple targets, and the pool of ready sandboxes.
//!
//! Demand is the create history of the last 60 minutes, each event weighing
//! `0.5^(age_minutes/20)`; capacity is split between tuples in proportion to their weight
//! (largest remainder), the hottest tuple always getting at least one. Pre-pull targets from
//! the worker YAML are floors. History is pruned as it ages out of the window.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use crate::id::LocalVmId;
use crate::tuple::SandboxTuple;

/// Create history, pruned to the window, bounded in size.
#[derive(Debug, Default)]
pub struct DemandTracker {
    // Implementation fills this in.
}

impl DemandTracker {
    /// An empty history.
    pub fn new() -> Self {
        todo!()
    }

    /// Records one create of `tuple` at `at`.
    pub fn record(&mut self, tuple: SandboxTuple, at: DateTime<Utc>) {
        todo!()
    }

    /// Events kept (after pruning at the last call).
    pub fn len(&self) -> usize {
        todo!()
    }

    /// True when no events are kept.
    pub fn is_empty(&self) -> bool {
        todo!()
    }

    /// Prunes events older than the window and computes the targets for `capacity`.
    pub fn targets(&mut self, capacity: u32, now: DateTime<Utc>) -> BTreeMap<SandboxTuple, u32> {
        todo!()
    }
}

/// The target computation of the prototype (§5.3), pure.
pub fn compute_targets(
    capacity: u32,
    events: &[(SandboxTuple, DateTime<Utc>)],
    now: DateTime<Utc>,
) -> BTreeMap<SandboxTuple, u32> {
    todo!()
}

/// Combines demand targets with pre-pull floors: each tuple gets the larger of the two, and
/// the total is trimmed to `capacity` by lowering demand-only tuples first (largest first).
pub fn effective_targets(
    demand: &BTreeMap<SandboxTuple, u32>,
    floors: &BTreeMap<SandboxTuple, u32>,
    capacity: u32,
) -> BTreeMap<SandboxTuple, u32> {
    todo!()
}

/// Ready sandboxes per tuple, oldest first. `T` is the worker's handle type.
#[derive(Debug)]
pub struct ReadyPool<T> {
    // Implementation fills this in.
    _t: std::marker::PhantomData<T>,
}

impl<T> Default for ReadyPool<T> {
    fn default() -> Self {
        todo!()
    }
}

impl<T> ReadyPool<T> {
    /// Adds a ready sandbox at the back of its tuple's queue.
    pub fn push(&mut self, tuple: SandboxTuple, id: LocalVmId, item: T) {
        todo!()
    }

    /// Takes the sandbox with this id if it is ready and of this tuple.
    pub fn claim(&mut self, id: &LocalVmId, tuple: &SandboxTuple) -> Option<T> {
        todo!()
    }

    /// Takes the oldest ready sandbox of the tuple.
    pub fn claim_oldest(&mut self, tuple: &SandboxTuple) -> Option<(LocalVmId, T)> {
        todo!()
    }

    /// Takes a sandbox by id whatever its tuple (retirement).
    pub fn remove(&mut self, id: &LocalVmId) -> Option<(SandboxTuple, T)> {
        todo!()
    }

    /// Ready count of a tuple.
    pub fn count(&self, tuple: &SandboxTuple) -> usize {
        todo!()
    }

    /// Ready count over all tuples.
    pub fn total(&self) -> usize {
        todo!()
    }

    /// Every ready sandbox's id and tuple, oldest first within a tuple.
    pub fn snapshot(&self) -> Vec<(LocalVmId, SandboxTuple)> {
        todo!()
    }

    /// Takes everything (shutdown).
    pub fn drain(&mut self) -> Vec<(LocalVmId, SandboxTuple, T)> {
        todo!()
    }
}
