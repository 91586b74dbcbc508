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

#[cfg(test)]
mod properties {
    //! Property tests: the index after random announcements, removals and pops equals a plain
    //! list of hints in arrival order.

    use std::collections::BTreeSet;

    use proptest::prelude::*;

    use super::*;

    const WORKERS: usize = 4;

    fn worker(i: usize) -> ComponentId {
        ComponentId::parse(&format!("worker_{i}")).expect("valid id")
    }

    fn vm(i: u8) -> LocalVmId {
        LocalVmId::from_entropy([i; 16])
    }

    fn tuple(i: u32) -> SandboxTuple {
        SandboxTuple {
            virtualization: "vetu".into(),
            image: "img".into(),
            cpu: i + 1,
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        Ready(usize, u8, u32),
        Gone(usize, u8),
        RemoveWorker(usize),
        /// A pop of a tuple, with each worker's verdict.
        Pop(u32, [Verdict; WORKERS]),
    }

    fn verdict() -> impl Strategy<Value = Verdict> {
        prop_oneof![
            2 => Just(Verdict::Take),
            1 => Just(Verdict::Skip),
            1 => Just(Verdict::Drop),
        ]
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            5 => (0..WORKERS, 0..6u8, 0..3u32).prop_map(|(w, v, t)| Op::Ready(w, v, t)),
            2 => (0..WORKERS, 0..6u8).prop_map(|(w, v)| Op::Gone(w, v)),
            1 => (0..WORKERS).prop_map(Op::RemoveWorker),
            4 => (0..3u32, [verdict(), verdict(), verdict(), verdict()])
                .prop_map(|(t, verdicts)| Op::Pop(t, verdicts)),
        ]
    }

    /// One hint of the model: worker index, VM, tuple index; the list is in arrival order.
    type Entry = (usize, u8, u32);

    fn index_of(id: &ComponentId) -> usize {
        (0..WORKERS)
            .find(|i| worker(*i) == *id)
            .expect("a known worker")
    }

    /// The three maps agree and keep no empty entry.
    fn assert_consistent(idx: &ReadyIndex) {
        let queued: usize = idx.by_tuple.values().map(BTreeMap::len).sum();
        let owned: usize = idx.by_worker.values().map(HashSet::len).sum();
        assert_eq!(queued, idx.hints.len());
        assert_eq!(owned, idx.hints.len());
        assert!(idx.by_tuple.values().all(|q| !q.is_empty()));
        assert!(idx.by_worker.values().all(|v| !v.is_empty()));
        for (tuple, queue) in &idx.by_tuple {
            for (seq, key) in queue {
                let hint = &idx.hints[key];
                assert_eq!((&hint.tuple, hint.seq), (tuple, *seq));
                assert!(idx.by_worker[&key.0].contains(&key.1));
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        /// The index equals a list of hints in arrival order: a re-announced hint keeps its
        /// age, a pop hands out the oldest hint its worker takes (dropping the stale ones
        /// before it), never a hint twice nor one of a removed worker, and the three maps
        /// agree and keep no empty entry.
        #[test]
        fn ready_index_matches_a_list_in_arrival_order(ops in prop::collection::vec(op(), 1..80)) {
            let mut idx = ReadyIndex::default();
            let mut model: Vec<Entry> = Vec::new();
            // Hints handed out, and workers removed, since they were last announced.
            let mut handed_out: BTreeSet<(usize, u8)> = BTreeSet::new();
            let mut removed: BTreeSet<usize> = BTreeSet::new();
            for op in ops {
                match op {
                    Op::Ready(w, v, t) => {
                        idx.upsert(worker(w), vm(v), tuple(t));
                        match model.iter().position(|e| (e.0, e.1) == (w, v)) {
                            // Same tuple: it keeps its age.
                            Some(i) if model[i].2 == t => {}
                            Some(i) => {
                                model.remove(i);
                                model.push((w, v, t));
                            }
                            None => model.push((w, v, t)),
                        }
                        handed_out.remove(&(w, v));
                        removed.remove(&w);
                    }
                    Op::Gone(w, v) => {
                        let had = model.iter().any(|e| (e.0, e.1) == (w, v));
                        prop_assert_eq!(idx.remove(&worker(w), &vm(v)), had);
                        model.retain(|e| (e.0, e.1) != (w, v));
                    }
                    Op::RemoveWorker(w) => {
                        let had = model.iter().filter(|e| e.0 == w).count();
                        prop_assert_eq!(idx.remove_worker(&worker(w)), had);
                        model.retain(|e| e.0 != w);
                        removed.insert(w);
                    }
                    Op::Pop(t, verdicts) => {
                        let got = idx.pop_oldest(&tuple(t), |id| verdicts[index_of(id)]);
                        // The model: the oldest hint of the tuple whose worker takes; hints of
                        // dropping workers before it go.
                        let mut expected = None;
                        let mut dropped = Vec::new();
                        for e in model.iter().filter(|e| e.2 == t) {
                            match verdicts[e.0] {
                                Verdict::Take => {
                                    expected = Some((e.0, e.1));
                                    break;
                                }
                                Verdict::Skip => {}
                                Verdict::Drop => dropped.push((e.0, e.1)),
                            }
                        }
                        let got = got.map(|(id, v)| (index_of(&id), v));
                        prop_assert_eq!(got, expected.map(|(w, v)| (w, vm(v))));
                        model.retain(|e| {
                            !dropped.contains(&(e.0, e.1)) && Some((e.0, e.1)) != expected
                        });
                        if let Some((w, v)) = expected {
                            prop_assert_eq!(verdicts[w], Verdict::Take);
                            prop_assert!(handed_out.insert((w, v)), "a hint handed out twice");
                            prop_assert!(!removed.contains(&w), "a hint of a removed worker");
                        }
                    }
                }
                assert_consistent(&idx);
                prop_assert_eq!(idx.len(), model.len());
                let mut hints: Vec<(usize, u32)> =
                    idx.iter().map(|(id, t)| (index_of(id), t.cpu - 1)).collect();
                let mut expected: Vec<(usize, u32)> = model.iter().map(|e| (e.0, e.2)).collect();
                hints.sort_unstable();
                expected.sort_unstable();
                prop_assert_eq!(hints, expected);
                // Per worker and tuple: the count, and oldest hints in arrival order.
                for t in 0..3 {
                    let counts = idx.per_worker(&tuple(t));
                    let mut by_age: Vec<(u64, usize)> = Vec::new();
                    for (id, (count, oldest)) in &counts {
                        let w = index_of(id);
                        let in_model = model.iter().filter(|e| e.0 == w && e.2 == t).count() as u64;
                        prop_assert_eq!(*count, in_model);
                        by_age.push((*oldest, w));
                    }
                    by_age.sort_unstable();
                    let mut first_seen: Vec<usize> = Vec::new();
                    for e in model.iter().filter(|e| e.2 == t) {
                        if !first_seen.contains(&e.0) {
                            first_seen.push(e.0);
                        }
                    }
                    let by_age: Vec<usize> = by_age.into_iter().map(|(_, w)| w).collect();
                    prop_assert_eq!(by_age, first_seen);
                }
            }
        }
    }
}
