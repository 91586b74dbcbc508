//! The ready-VM index: hints of idle VMs that workers announced, kept in arrival order per
//! tuple so that the oldest ready VM is handed out first.

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::id::{ComponentId, LocalVmId};
use crate::tuple::SandboxTuple;

/// A hint's identity: the worker and its VM.
pub(super) type HintKey = (ComponentId, LocalVmId);

#[derive(Debug, Clone)]
struct Hint {
    tuple: SandboxTuple,
    /// Arrival order; lower is older.
    seq: u64,
}

/// What to do with a candidate hint during a pop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verdict {
    /// Hand it out (and remove it).
    Take,
    /// Leave it for another request (e.g. SKU mismatch).
    Skip,
    /// Remove it and keep looking (its worker is gone or inactive).
    Drop,
}

/// Ready hints, indexed by key, by tuple (in arrival order) and by worker.
#[derive(Debug, Default)]
pub(super) struct ReadyIndex {
    hints: HashMap<HintKey, Hint>,
    by_tuple: HashMap<SandboxTuple, BTreeMap<u64, HintKey>>,
    by_worker: HashMap<ComponentId, HashSet<LocalVmId>>,
    next_seq: u64,
}

impl ReadyIndex {
    /// Adds or updates a hint. Re-announcing a VM with the same tuple keeps its original age
    /// (it has been ready since then); a changed tuple counts as a new arrival.
    pub fn upsert(&mut self, worker: ComponentId, vm: LocalVmId, tuple: SandboxTuple) {
        let key = (worker, vm);
        if let Some(existing) = self.hints.get(&key) {
            if existing.tuple == tuple {
                return;
            }
            self.remove(&key.0, &key.1);
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.by_tuple
            .entry(tuple.clone())
            .or_default()
            .insert(seq, key.clone());
        self.by_worker
            .entry(key.0.clone())
            .or_default()
            .insert(key.1);
        self.hints.insert(key, Hint { tuple, seq });
    }

    /// Removes one hint; false if it was absent.
    pub fn remove(&mut self, worker: &ComponentId, vm: &LocalVmId) -> bool {
        let key = (worker.clone(), *vm);
        let Some(hint) = self.hints.remove(&key) else {
            return false;
        };
        if let Some(queue) = self.by_tuple.get_mut(&hint.tuple) {
            queue.remove(&hint.seq);
            if queue.is_empty() {
                self.by_tuple.remove(&hint.tuple);
            }
        }
        if let Some(vms) = self.by_worker.get_mut(worker) {
            vms.remove(vm);
            if vms.is_empty() {
                self.by_worker.remove(worker);
            }
        }
        true
    }

    /// Removes every hint of a worker; returns how many.
    pub fn remove_worker(&mut self, worker: &ComponentId) -> usize {
        let Some(vms) = self.by_worker.remove(worker) else {
            return 0;
        };
        for vm in &vms {
            if let Some(hint) = self.hints.remove(&(worker.clone(), *vm)) {
                if let Some(queue) = self.by_tuple.get_mut(&hint.tuple) {
                    queue.remove(&hint.seq);
                    if queue.is_empty() {
                        self.by_tuple.remove(&hint.tuple);
                    }
                }
            }
        }
        vms.len()
    }

    /// Takes the oldest hint of `tuple` that `verdict` accepts. Hints judged [`Verdict::Drop`]
    /// on the way are removed; skipped ones stay.
    pub fn pop_oldest(
        &mut self,
        tuple: &SandboxTuple,
        mut verdict: impl FnMut(&ComponentId) -> Verdict,
    ) -> Option<HintKey> {
        let queue = self.by_tuple.get(tuple)?;
        let mut dropped = Vec::new();
        let mut taken = None;
        for key in queue.values() {
            match verdict(&key.0) {
                Verdict::Take => {
                    taken = Some(key.clone());
                    break;
                }
                Verdict::Skip => {}
                Verdict::Drop => dropped.push(key.clone()),
            }
        }
        for (worker, vm) in &dropped {
            self.remove(worker, vm);
        }
        if let Some((worker, vm)) = &taken {
            self.remove(worker, vm);
        }
        taken
    }

    /// For each worker with hints of `tuple`: how many, and the arrival position of its
    /// oldest.
    pub fn per_worker(&self, tuple: &SandboxTuple) -> HashMap<&ComponentId, (u64, u64)> {
        let mut counts: HashMap<&ComponentId, (u64, u64)> = HashMap::new();
        // Oldest first, so the first position seen for a worker is its oldest.
        for (seq, (worker, _)) in self.by_tuple.get(tuple).into_iter().flatten() {
            counts.entry(worker).or_insert((0, *seq)).0 += 1;
        }
        counts
    }

    /// Every hint as (worker, tuple), in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&ComponentId, &SandboxTuple)> {
        self.hints
            .iter()
            .map(|((worker, _), hint)| (worker, &hint.tuple))
    }

    /// Number of hints.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.hints.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> ComponentId {
        ComponentId::parse(s).unwrap()
    }

    fn vm(n: u8) -> LocalVmId {
        LocalVmId::from_entropy([n; 16])
    }

    fn tuple(cpu: u32) -> SandboxTuple {
        SandboxTuple {
            virtualization: "vetu".into(),
            image: "ubuntu:24.04".into(),
            cpu,
        }
    }

    #[test]
    fn pop_takes_then_finds_nothing() {
        let mut idx = ReadyIndex::default();
        let v = LocalVmId::parse("550e8400-e29b-41d4-a716-446655440000").unwrap();
        idx.upsert(id("worker_a"), v, tuple(2));
        let got = idx.pop_oldest(&tuple(2), |_| Verdict::Take).unwrap();
        assert_eq!(got, (id("worker_a"), v));
        assert!(idx.pop_oldest(&tuple(2), |_| Verdict::Take).is_none());
        assert_eq!(idx.len(), 0);
    }

    #[test]
    fn oldest_first_with_skip_and_drop() {
        let mut idx = ReadyIndex::default();
        idx.upsert(id("gone"), vm(1), tuple(1));
        idx.upsert(id("cpu"), vm(2), tuple(1));
        idx.upsert(id("gpu"), vm(3), tuple(1));
        idx.upsert(id("gpu"), vm(4), tuple(1));
        let verdict = |w: &ComponentId| match w.as_str() {
            "gone" => Verdict::Drop,
            "cpu" => Verdict::Skip,
            _ => Verdict::Take,
        };
        assert_eq!(idx.pop_oldest(&tuple(1), verdict).unwrap().1, vm(3));
        assert_eq!(idx.len(), 2, "dropped the stale hint, kept the skipped one");
        assert_eq!(idx.pop_oldest(&tuple(1), verdict).unwrap().1, vm(4));
        assert!(idx.pop_oldest(&tuple(1), verdict).is_none());
        assert_eq!(
            idx.pop_oldest(&tuple(1), |_| Verdict::Take).unwrap().1,
            vm(2)
        );
    }

    #[test]
    fn re_ready_keeps_age_unless_tuple_changes() {
        let mut idx = ReadyIndex::default();
        idx.upsert(id("w"), vm(1), tuple(1));
        idx.upsert(id("w"), vm(2), tuple(1));
        idx.upsert(id("w"), vm(1), tuple(1));
        assert_eq!(
            idx.pop_oldest(&tuple(1), |_| Verdict::Take).unwrap().1,
            vm(1)
        );
        idx.upsert(id("w"), vm(3), tuple(1));
        // vm 2 moves to another tuple and back: now it is the newest.
        idx.upsert(id("w"), vm(2), tuple(2));
        assert_eq!(idx.len(), 2);
        assert!(idx.pop_oldest(&tuple(2), |_| Verdict::Skip).is_none());
        idx.upsert(id("w"), vm(2), tuple(1));
        assert_eq!(
            idx.pop_oldest(&tuple(1), |_| Verdict::Take).unwrap().1,
            vm(3)
        );
        assert_eq!(
            idx.pop_oldest(&tuple(1), |_| Verdict::Take).unwrap().1,
            vm(2)
        );
        assert!(idx.by_tuple.is_empty() && idx.by_worker.is_empty());
    }

    #[test]
    fn per_worker_counts_and_oldest() {
        let mut idx = ReadyIndex::default();
        idx.upsert(id("b"), vm(1), tuple(1));
        idx.upsert(id("a"), vm(2), tuple(1));
        idx.upsert(id("b"), vm(3), tuple(1));
        idx.upsert(id("a"), vm(4), tuple(2));
        let counts = idx.per_worker(&tuple(1));
        assert_eq!(counts.len(), 2);
        assert_eq!(counts[&id("b")], (2, 0));
        assert_eq!(counts[&id("a")], (1, 1));
        assert!(idx.per_worker(&tuple(3)).is_empty());
    }

    #[test]
    fn remove_and_remove_worker() {
        let mut idx = ReadyIndex::default();
        idx.upsert(id("a"), vm(1), tuple(1));
        idx.upsert(id("a"), vm(2), tuple(2));
        idx.upsert(id("b"), vm(3), tuple(1));
        assert!(idx.remove(&id("b"), &vm(3)));
        assert!(!idx.remove(&id("b"), &vm(3)));
        assert_eq!(idx.remove_worker(&id("a")), 2);
        assert_eq!(idx.remove_worker(&id("a")), 0);
        assert_eq!(idx.len(), 0);
        assert!(idx.by_tuple.is_empty() && idx.by_worker.is_empty());
    }
}
