//! Placement policy: whether a create claims a ready sandbox (and whose) or boots one (and
//! where), and which worker boots the next warm sandbox of a tuple.
//!
//! A [`Scheduler`] is pure: no I/O, no clock, and deterministic for its inputs. The broker
//! hands it the active workers that match the request's hardware SKU, with the capacity they
//! last reported (at a heartbeat or in a VM event) plus what the broker placed on them since,
//! and the ready sandboxes and queued VM starts of the request's tuple on each.

use std::cmp::Ordering;

use crate::id::ComponentId;
use crate::tuple::SandboxTuple;

/// A candidate worker as the broker sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerLoad {
    /// The worker.
    pub worker_id: ComponentId,
    /// Position in registration order (lower registered earlier).
    pub order: u64,
    /// Cores offered (0 = not reported).
    pub total_cores: u64,
    /// Memory offered (0 = not reported).
    pub total_memory_mib: u64,
    /// Most sandboxes at once (0 = not reported).
    pub max_live_sandboxes: u64,
    /// Sandboxes live at the last report.
    pub live_sandboxes: u64,
    /// Cores allocated at the last report.
    pub allocated_cores: u64,
    /// Memory allocated at the last report.
    pub allocated_memory_mib: u64,
    /// Creates (cold or warm) sent to this worker since its last report.
    pub placed_since_heartbeat: u64,
    /// False when the worker's last report said it takes no new sandboxes.
    pub accepting: bool,
    /// Ready sandboxes of the request's tuple on this worker (warm hints).
    pub ready: u64,
    /// Arrival position of this worker's oldest ready sandbox of the tuple (lower arrived
    /// earlier; comparable across workers); `None` without one.
    pub oldest_ready: Option<u64>,
    /// VM starts of the tuple queued for this worker and not yet taken.
    pub starting: u64,
}

impl WorkerLoad {
    /// A worker as it registers: `worker_id` at registration position `order`, nothing
    /// reported, accepting, with no ready sandbox; fill in the rest with struct-update syntax.
    pub fn new(worker_id: ComponentId, order: u64) -> Self {
        Self {
            worker_id,
            order,
            total_cores: 0,
            total_memory_mib: 0,
            max_live_sandboxes: 0,
            live_sandboxes: 0,
            allocated_cores: 0,
            allocated_memory_mib: 0,
            placed_since_heartbeat: 0,
            accepting: true,
            ready: 0,
            oldest_ready: None,
            starting: 0,
        }
    }

    /// Live plus recently placed sandboxes.
    pub fn expected_live(&self) -> u64 {
        self.live_sandboxes
            .saturating_add(self.placed_since_heartbeat)
    }

    /// Cores allocated plus those of recent placements (counted at `cpu` each).
    fn expected_cores(&self, cpu: u32) -> u64 {
        self.allocated_cores
            .saturating_add(self.placed_since_heartbeat.saturating_mul(u64::from(cpu)))
    }

    /// Load in parts per million of the tightest reported resource (sandbox slots or cores);
    /// workers that report nothing count as empty.
    pub fn load_ppm(&self, cpu: u32) -> u64 {
        // In u128: a worker may report counts up to `i64::MAX`, which times a million
        // overflows u64.
        let ppm = |used: u64, offered: u64| {
            (u128::from(used) * 1_000_000)
                .checked_div(u128::from(offered))
                .map_or(0, |ppm| u64::try_from(ppm).unwrap_or(u64::MAX))
        };
        let slots = ppm(self.expected_live(), self.max_live_sandboxes);
        let cpu_load = ppm(self.expected_cores(cpu), self.total_cores);
        slots.max(cpu_load)
    }

    /// How many more sandboxes of `cpu` the worker has room for by what it last reported
    /// (sandbox slots and cores); `u64::MAX` when it reported no limits, 0 when it is not
    /// accepting.
    ///
    /// Only the report counts here, not the placements since: most of those sandboxes are
    /// short-lived and already gone, and counting them would refuse creates (503) that the
    /// worker has room for until its next report. The worker reports at once when it refuses a
    /// create for lack of room and when it frees a slot while full; placements since the
    /// report still weigh in [`WorkerLoad::load_ppm`], for ranking.
    pub fn free_slots(&self, cpu: u32) -> u64 {
        if !self.accepting {
            return 0;
        }
        let mut free = u64::MAX;
        if self.max_live_sandboxes > 0 {
            free = free.min(self.max_live_sandboxes.saturating_sub(self.live_sandboxes));
        }
        if self.total_cores > 0 {
            let left = self.total_cores.saturating_sub(self.allocated_cores);
            free = free.min(left / u64::from(cpu.max(1)));
        }
        free
    }

    /// False when the worker is not accepting, or reported limits that one more sandbox of
    /// `cpu` would exceed.
    pub fn has_room(&self, cpu: u32) -> bool {
        self.free_slots(cpu) > 0
    }

    /// Ready plus starting sandboxes of the tuple: its share of the tuple's warm pool.
    pub fn warm(&self) -> u64 {
        self.ready.saturating_add(self.starting)
    }

    /// A ready sandbox of this worker when it has one, else a cold boot on it.
    pub fn choice(&self) -> Choice {
        if self.ready > 0 {
            Choice::Warm(self.worker_id.clone())
        } else {
            Choice::Cold(self.worker_id.clone())
        }
    }
}

/// Where a create goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Choice {
    /// Claim the worker's oldest ready sandbox of the tuple (no boot).
    Warm(ComponentId),
    /// Boot a sandbox on the worker.
    Cold(ComponentId),
}

impl Choice {
    /// The chosen worker.
    pub fn worker_id(&self) -> &ComponentId {
        match self {
            Choice::Warm(id) | Choice::Cold(id) => id,
        }
    }
}

/// Decides where creates go and where the warm pool grows.
pub trait Scheduler: Send + Sync + 'static {
    /// Chooses, for a create of `tuple`, a ready sandbox on a candidate with `ready > 0`
    /// ([`Choice::Warm`]) or a cold boot on a candidate ([`Choice::Cold`]); `None` when no
    /// worker should take it (the broker answers `503 no placement capacity`).
    /// `candidates` are all active and SKU-matching, in registration order. Must be
    /// deterministic for its inputs.
    fn place(&self, tuple: &SandboxTuple, candidates: &[WorkerLoad]) -> Option<Choice>;

    /// Chooses the worker that boots the next warm sandbox of `tuple` (the VM start a cold
    /// placement queues), or `None` for no start. `candidates` already count the placement
    /// just made. The default spreads the tuple's warm pool over the workers in proportion
    /// to their free capacity ([`spread_warm_pool`]).
    fn warm_start(&self, tuple: &SandboxTuple, candidates: &[WorkerLoad]) -> Option<ComponentId> {
        spread_warm_pool(tuple, candidates)
    }
}

/// The worker with room whose share of the tuple's warm pool, one more sandbox included, is
/// the smallest relative to its free slots: `(warm + 1) / free` (the D'Hondt rule), so that
/// successive starts split the pool in proportion to free capacity. Ties go to the earliest
/// registered.
pub fn spread_warm_pool(tuple: &SandboxTuple, candidates: &[WorkerLoad]) -> Option<ComponentId> {
    let cpu = tuple.cpu;
    let share = |a: &WorkerLoad, b: &WorkerLoad| -> Ordering {
        let lhs = u128::from(a.warm() + 1) * u128::from(b.free_slots(cpu));
        let rhs = u128::from(b.warm() + 1) * u128::from(a.free_slots(cpu));
        lhs.cmp(&rhs).then(a.order.cmp(&b.order))
    };
    candidates
        .iter()
        .filter(|w| w.has_room(cpu))
        .min_by(|a, b| share(a, b))
        .map(|w| w.worker_id.clone())
}

/// The default policy: weighs load against warmth. Among workers with room, a cold boot on a
/// worker scores its load; a ready sandbox scores its worker's load less
/// [`LeastLoaded::WARM_ADVANTAGE_PPM`]; the lowest score wins (a warm claim on ties, then
/// the oldest ready sandbox, then the earliest registered). So a warm claim wins unless its
/// worker is busier than the idlest one by more than the advantage, and a create that no
/// worker has room for is declined.
#[derive(Debug, Default, Clone, Copy)]
pub struct LeastLoaded;

impl LeastLoaded {
    /// What a ready sandbox is worth, in parts per million of load: 25 points.
    pub const WARM_ADVANTAGE_PPM: u64 = 250_000;
}

impl Scheduler for LeastLoaded {
    fn place(&self, tuple: &SandboxTuple, candidates: &[WorkerLoad]) -> Option<Choice> {
        let cpu = tuple.cpu;
        // (score, cold after warm, oldest ready sandbox first, registration order).
        type Key = (i64, u8, u64, u64);
        let mut best: Option<(Key, &WorkerLoad, bool)> = None;
        let mut consider = |key: Key, worker, warm| {
            if best.as_ref().is_none_or(|(k, _, _)| key < *k) {
                best = Some((key, worker, warm));
            }
        };
        for w in candidates.iter().filter(|w| w.has_room(cpu)) {
            let load = i64::try_from(w.load_ppm(cpu)).unwrap_or(i64::MAX);
            consider((load, 1, u64::MAX, w.order), w, false);
            if w.ready > 0 {
                let advantage = i64::try_from(Self::WARM_ADVANTAGE_PPM).unwrap_or(i64::MAX);
                let oldest = w.oldest_ready.unwrap_or(u64::MAX);
                consider((load - advantage, 0, oldest, w.order), w, true);
            }
        }
        best.map(|(_, w, warm)| match warm {
            true => Choice::Warm(w.worker_id.clone()),
            false => Choice::Cold(w.worker_id.clone()),
        })
    }
}

/// The prototype's policy, whatever the load: the oldest ready sandbox of the tuple on any
/// candidate, else a cold boot on the earliest registered candidate, whose warm pool also
/// grows.
#[derive(Debug, Default, Clone, Copy)]
pub struct FirstRegistered;

impl Scheduler for FirstRegistered {
    fn place(&self, _tuple: &SandboxTuple, candidates: &[WorkerLoad]) -> Option<Choice> {
        let warm = candidates
            .iter()
            .filter_map(|w| w.oldest_ready.filter(|_| w.ready > 0).map(|seq| (seq, w)))
            .min_by_key(|(seq, _)| *seq)
            .map(|(_, w)| Choice::Warm(w.worker_id.clone()));
        warm.or_else(|| {
            candidates
                .iter()
                .min_by_key(|w| w.order)
                .map(|w| Choice::Cold(w.worker_id.clone()))
        })
    }

    fn warm_start(&self, _tuple: &SandboxTuple, candidates: &[WorkerLoad]) -> Option<ComponentId> {
        candidates
            .iter()
            .min_by_key(|w| w.order)
            .map(|w| w.worker_id.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(id: &str, order: u64, max: u64, live: u64) -> WorkerLoad {
        WorkerLoad {
            total_cores: 8,
            total_memory_mib: 8192,
            max_live_sandboxes: max,
            live_sandboxes: live,
            allocated_cores: live,
            allocated_memory_mib: live * 1024,
            ..WorkerLoad::new(ComponentId::parse(id).unwrap(), order)
        }
    }

    /// A worker with `cores` cores and as many sandbox slots, `live` of them in use.
    fn sized(id: &str, order: u64, cores: u64, live: u64) -> WorkerLoad {
        WorkerLoad {
            total_cores: cores,
            max_live_sandboxes: cores,
            ..w(id, order, cores, live)
        }
    }

    fn warm(mut load: WorkerLoad, ready: u64, oldest: u64) -> WorkerLoad {
        load.ready = ready;
        load.oldest_ready = Some(oldest);
        load
    }

    fn tuple() -> SandboxTuple {
        SandboxTuple {
            virtualization: "fake".into(),
            image: "img".into(),
            cpu: 1,
        }
    }

    fn cold(id: &str) -> Option<Choice> {
        Some(Choice::Cold(ComponentId::parse(id).unwrap()))
    }

    fn warm_on(id: &str) -> Option<Choice> {
        Some(Choice::Warm(ComponentId::parse(id).unwrap()))
    }

    /// Asks for `n` VM starts in a row, counting each one as starting on its worker; returns
    /// how many each candidate got.
    fn starts(scheduler: &dyn Scheduler, mut candidates: Vec<WorkerLoad>, n: usize) -> Vec<u64> {
        let before: Vec<u64> = candidates.iter().map(|c| c.starting).collect();
        for _ in 0..n {
            let Some(id) = scheduler.warm_start(&tuple(), &candidates) else {
                break;
            };
            let chosen = candidates.iter_mut().find(|c| c.worker_id == id).unwrap();
            chosen.starting += 1;
        }
        candidates
            .iter()
            .zip(before)
            .map(|(c, b)| c.starting - b)
            .collect()
    }

    /// Places `n` creates in a row, counting each as placed on its worker (and a warm one as
    /// a ready sandbox fewer); returns how many each candidate got.
    fn creates(scheduler: &dyn Scheduler, mut candidates: Vec<WorkerLoad>, n: usize) -> Vec<u64> {
        let mut got = vec![0; candidates.len()];
        for _ in 0..n {
            let Some(choice) = scheduler.place(&tuple(), &candidates) else {
                break;
            };
            let i = candidates
                .iter()
                .position(|c| &c.worker_id == choice.worker_id())
                .unwrap();
            candidates[i].placed_since_heartbeat += 1;
            if let Choice::Warm(_) = choice {
                candidates[i].ready -= 1;
            }
            got[i] += 1;
        }
        got
    }

    #[test]
    fn least_loaded_wins() {
        let c = [w("a", 0, 4, 3), w("b", 1, 4, 1)];
        assert_eq!(LeastLoaded.place(&tuple(), &c), cold("b"));
    }

    #[test]
    fn ties_go_to_earliest() {
        let c = [w("b", 1, 4, 1), w("a", 0, 4, 1)];
        assert_eq!(LeastLoaded.place(&tuple(), &c), cold("a"));
    }

    #[test]
    fn recent_placements_count() {
        let mut a = w("a", 0, 4, 0);
        a.placed_since_heartbeat = 3;
        let c = [a, w("b", 1, 4, 1)];
        assert_eq!(LeastLoaded.place(&tuple(), &c), cold("b"));
    }

    #[test]
    fn full_workers_are_excluded() {
        let mut b = w("b", 1, 100, 90);
        b.total_cores = 128;
        let c = [w("a", 0, 2, 2), b];
        assert_eq!(LeastLoaded.place(&tuple(), &c), cold("b"));
        // Full by slots, by cores, or not accepting: nobody takes the create.
        let mut by_cores = w("b", 1, 100, 8);
        by_cores.allocated_cores = 8;
        let mut refusing = w("c", 2, 4, 0);
        refusing.accepting = false;
        let c = [w("a", 0, 2, 2), by_cores, refusing];
        assert_eq!(LeastLoaded.place(&tuple(), &c), None);
        assert_eq!(spread_warm_pool(&tuple(), &c), None);
        // Not even to claim a ready sandbox.
        let c = [warm(w("a", 0, 2, 2), 3, 0)];
        assert_eq!(LeastLoaded.place(&tuple(), &c), None);
        assert_eq!(LeastLoaded.place(&tuple(), &[]), None);
        // A worker that reports nothing has room.
        let c = [WorkerLoad::new(ComponentId::parse("a").unwrap(), 0)];
        assert_eq!(LeastLoaded.place(&tuple(), &c), cold("a"));
    }

    #[test]
    fn warm_claim_wins_unless_its_worker_is_much_busier() {
        // a: 2 of 10 live (20 %) with a ready sandbox; b idle: the ready sandbox wins.
        let c = [warm(sized("a", 0, 10, 2), 1, 7), sized("b", 1, 10, 0)];
        assert_eq!(LeastLoaded.place(&tuple(), &c), warm_on("a"));
        // Exactly the advantage apart (25 %): still warm.
        let c = [warm(sized("a", 0, 8, 2), 1, 7), sized("b", 1, 8, 0)];
        assert_eq!(LeastLoaded.place(&tuple(), &c), warm_on("a"));
        // a at 50 %, b idle: a cold boot on b beats the claim on a.
        let c = [warm(w("a", 0, 10, 5), 4, 7), w("b", 1, 10, 0)];
        assert_eq!(LeastLoaded.place(&tuple(), &c), cold("b"));
        // Both warm: the less loaded one; equal loads: the older ready sandbox.
        let c = [warm(w("a", 0, 10, 3), 1, 1), warm(w("b", 1, 10, 1), 1, 9)];
        assert_eq!(LeastLoaded.place(&tuple(), &c), warm_on("b"));
        let c = [warm(w("a", 0, 10, 1), 1, 9), warm(w("b", 1, 10, 1), 1, 2)];
        assert_eq!(LeastLoaded.place(&tuple(), &c), warm_on("b"));
        // The same inputs, the same answer.
        for _ in 0..10 {
            assert_eq!(LeastLoaded.place(&tuple(), &c), warm_on("b"));
        }
    }

    #[test]
    fn creates_spread_over_two_idle_workers_despite_a_warm_pool() {
        // a holds 16 ready sandboxes, b none: a serves the first creates warm, then b's
        // idleness outweighs a's warmth.
        let c = vec![warm(sized("a", 0, 32, 0), 16, 0), sized("b", 1, 32, 0)];
        let got = creates(&LeastLoaded, c, 16);
        assert_eq!(got.iter().sum::<u64>(), 16);
        assert!(got[0] > 0 && got[1] > 0, "{got:?}");
        // Without a warm pool, two idle workers take turns.
        let c = vec![sized("a", 0, 8, 0), sized("b", 1, 8, 0)];
        assert_eq!(creates(&LeastLoaded, c, 16), [8, 8]);
        // Then they are full.
        let c = vec![sized("a", 0, 8, 8), sized("b", 1, 8, 8)];
        assert_eq!(creates(&LeastLoaded, c, 1), [0, 0]);
    }

    #[test]
    fn creates_spread_over_five_workers_by_load() {
        let c = vec![
            sized("a", 0, 10, 0),
            sized("b", 1, 10, 6),
            sized("c", 2, 20, 0),
            sized("d", 3, 10, 10),
            sized("e", 4, 40, 0),
        ];
        // 35 creates fill a, c and e to half their size, as loaded as b already is; the
        // full d gets none.
        let got = creates(&LeastLoaded, c, 35);
        assert_eq!(got, [5, 0, 10, 0, 20]);
    }

    #[test]
    fn warm_pool_spreads_over_two_workers_by_free_capacity() {
        let c = vec![sized("a", 0, 8, 0), sized("b", 1, 8, 0)];
        assert_eq!(starts(&LeastLoaded, c, 10), [5, 5]);
        // b has three times a's free slots: it grows three times the pool.
        let c = vec![sized("a", 0, 16, 8), sized("b", 1, 24, 0)];
        assert_eq!(starts(&LeastLoaded, c, 8), [2, 6]);
        // What a worker already holds counts.
        let c = vec![warm(sized("a", 0, 8, 0), 4, 0), sized("b", 1, 8, 0)];
        assert_eq!(starts(&LeastLoaded, c, 4), [0, 4]);
    }

    #[test]
    fn warm_pool_spreads_over_five_workers_by_free_capacity() {
        let c = vec![
            sized("a", 0, 10, 0),
            sized("b", 1, 20, 0),
            sized("c", 2, 40, 10),
            sized("d", 3, 40, 0),
            sized("e", 4, 10, 10),
        ];
        // Free slots 10, 20, 30, 40 and 0: 20 starts split 2, 4, 6, 8, 0.
        assert_eq!(starts(&LeastLoaded, c, 20), [2, 4, 6, 8, 0]);
    }

    /// Found by `properties::least_loaded_survives_huge_reports`: a reported count above
    /// `u64::MAX / 1_000_000` overflowed when scaled to parts per million (a panic in debug
    /// builds, a wrong load in release).
    #[test]
    fn huge_reports_saturate_the_load() {
        let huge = WorkerLoad {
            total_cores: 9_223_372_036_854_775_810,
            allocated_cores: 18_446_744_073_701,
            placed_since_heartbeat: 3,
            ..WorkerLoad::new(ComponentId::parse("a").unwrap(), 0)
        };
        assert_eq!(huge.load_ppm(3), 2);
        assert_eq!(LeastLoaded.place(&tuple(), &[huge]), cold("a"));
        let busy = WorkerLoad {
            live_sandboxes: i64::MAX as u64,
            placed_since_heartbeat: u64::MAX,
            max_live_sandboxes: 1,
            ..WorkerLoad::new(ComponentId::parse("b").unwrap(), 1)
        };
        assert_eq!(busy.expected_live(), u64::MAX);
        assert_eq!(busy.load_ppm(1), u64::MAX);
        let idle = sized("c", 2, 8, 0);
        assert_eq!(LeastLoaded.place(&tuple(), &[busy, idle]), cold("c"));
    }

    #[test]
    fn first_registered() {
        let c = [w("b", 1, 4, 0), w("a", 0, 4, 4)];
        assert_eq!(FirstRegistered.place(&tuple(), &c), cold("a"));
        assert_eq!(
            FirstRegistered.warm_start(&tuple(), &c).unwrap().as_str(),
            "a"
        );
        // The oldest ready sandbox anywhere, whatever the load.
        let c = [warm(w("a", 0, 4, 4), 1, 5), warm(w("b", 1, 4, 0), 1, 3)];
        assert_eq!(FirstRegistered.place(&tuple(), &c), warm_on("b"));
    }
}

#[cfg(test)]
mod properties {
    //! Property tests: the policies over random fleets of workers, loaded and not, warm and
    //! not, some reporting nothing.

    use proptest::prelude::*;

    use super::*;

    /// A reported number: mostly small, sometimes 0 (not reported), and with `huge` sometimes
    /// anything a worker could send.
    fn number(huge: bool) -> BoxedStrategy<u64> {
        if huge {
            prop_oneof![
                1 => Just(0u64),
                3 => 0u64..12,
                2 => any::<u64>(),
                1 => Just(i64::MAX as u64),
            ]
            .boxed()
        } else {
            prop_oneof![1 => Just(0u64), 3 => 0u64..12].boxed()
        }
    }

    /// One worker's numbers: what it reported (cores, slots, live, allocated cores, memory);
    /// creates placed since; not accepting; its ready sandboxes, the age of the oldest, its
    /// queued starts.
    type Numbers = ([u64; 5], u64, bool, (u64, u64, u64));

    fn load(
        i: usize,
        (reported, placed, refusing, (ready, oldest, starting)): Numbers,
    ) -> WorkerLoad {
        let [cores, max, live, allocated, memory] = reported;
        WorkerLoad {
            total_cores: cores,
            total_memory_mib: memory,
            max_live_sandboxes: max,
            live_sandboxes: live,
            allocated_cores: allocated,
            allocated_memory_mib: 0,
            placed_since_heartbeat: placed,
            accepting: !refusing,
            ready,
            oldest_ready: (ready > 0).then_some(oldest * 8 + i as u64),
            starting,
            ..WorkerLoad::new(
                ComponentId::parse(&format!("worker_{i}")).expect("valid id"),
                i as u64 * 3,
            )
        }
    }

    /// A fleet of up to 8 workers, each at its own registration position, in any order.
    fn fleet(huge: bool) -> impl Strategy<Value = Vec<WorkerLoad>> {
        let n = || number(huge);
        let worker = (
            [n(), n(), n(), n(), n()],
            // Counted by the broker, so never huge: creates placed, ready hints, queued starts.
            0u64..4,
            prop_oneof![1 => Just(true), 6 => Just(false)],
            (0u64..4, 0u64..100, 0u64..3),
        );
        prop::collection::vec(worker, 0..8)
            .prop_map(|workers| {
                let loads = workers.into_iter().enumerate().map(|(i, w)| load(i, w));
                loads.collect::<Vec<_>>()
            })
            .prop_shuffle()
    }

    fn cpu(huge: bool) -> BoxedStrategy<u32> {
        if huge {
            prop_oneof![3 => 1u32..4, 1 => any::<u32>().prop_map(|c| c.max(1))].boxed()
        } else {
            (1u32..4).boxed()
        }
    }

    fn tuple(cpu: u32) -> SandboxTuple {
        SandboxTuple {
            virtualization: "fake".into(),
            image: "img".into(),
            cpu,
        }
    }

    fn find<'a>(fleet: &'a [WorkerLoad], id: &ComponentId) -> &'a WorkerLoad {
        fleet
            .iter()
            .find(|w| &w.worker_id == id)
            .expect("a candidate")
    }

    /// The checks of every fleet: a placement whenever a worker has room, on one with room, a
    /// warm claim only where a ready sandbox is, whatever the order of the candidates. With
    /// `ranking`, also who wins: the least loaded worker (the earliest on a tie) unless a warm
    /// claim within the advantage of it does.
    fn check_least_loaded(
        fleet: &[WorkerLoad],
        cpu: u32,
        ranking: bool,
    ) -> Result<(), TestCaseError> {
        let tuple = tuple(cpu);
        let choice = LeastLoaded.place(&tuple, fleet);
        let roomy: Vec<&WorkerLoad> = fleet.iter().filter(|w| w.has_room(cpu)).collect();
        prop_assert_eq!(choice.is_some(), !roomy.is_empty());
        let Some(choice) = choice else { return Ok(()) };
        let chosen = find(fleet, choice.worker_id());
        prop_assert!(chosen.accepting);
        if chosen.max_live_sandboxes > 0 {
            prop_assert!(chosen.live_sandboxes < chosen.max_live_sandboxes);
        }
        if chosen.total_cores > 0 {
            prop_assert!(
                u128::from(chosen.allocated_cores) + u128::from(cpu)
                    <= u128::from(chosen.total_cores)
            );
        }
        if let Choice::Warm(_) = choice {
            prop_assert!(chosen.ready > 0);
        }
        let mut reversed = fleet.to_vec();
        reversed.reverse();
        prop_assert_eq!(LeastLoaded.place(&tuple, &reversed), Some(choice.clone()));
        if !ranking {
            return Ok(());
        }
        let least = roomy
            .iter()
            .map(|w| w.load_ppm(cpu))
            .min()
            .expect("a worker");
        let advantage = LeastLoaded::WARM_ADVANTAGE_PPM;
        let warm_best = roomy
            .iter()
            .filter(|w| w.ready > 0)
            .map(|w| w.load_ppm(cpu))
            .min();
        match choice {
            Choice::Warm(_) => {
                let load = chosen.load_ppm(cpu);
                prop_assert_eq!(Some(load), warm_best);
                prop_assert!(load <= least + advantage);
            }
            Choice::Cold(_) => {
                prop_assert_eq!(chosen.load_ppm(cpu), least);
                if let Some(warm) = warm_best {
                    prop_assert!(
                        warm > least + advantage,
                        "a ready sandbox within the advantage was passed over"
                    );
                }
                let earliest = roomy
                    .iter()
                    .filter(|w| w.load_ppm(cpu) == least)
                    .map(|w| w.order)
                    .min();
                prop_assert_eq!(Some(chosen.order), earliest);
            }
        }
        Ok(())
    }

    /// The warm pool grows on a worker with room whenever one has room, on the one whose
    /// share of the pool, one more included, is the smallest for its free slots (D'Hondt).
    fn check_warm_start(fleet: &[WorkerLoad], cpu: u32) -> Result<(), TestCaseError> {
        let chosen = spread_warm_pool(&tuple(cpu), fleet);
        prop_assert_eq!(chosen.is_some(), fleet.iter().any(|w| w.has_room(cpu)));
        if let Some(id) = chosen {
            let chosen = find(fleet, &id);
            prop_assert!(chosen.has_room(cpu));
            for w in fleet.iter().filter(|w| w.has_room(cpu)) {
                let theirs = u128::from(w.warm() + 1) * u128::from(chosen.free_slots(cpu));
                let ours = u128::from(chosen.warm() + 1) * u128::from(w.free_slots(cpu));
                prop_assert!(
                    ours <= theirs,
                    "{} holds a smaller share than {}",
                    w.worker_id,
                    chosen.worker_id
                );
            }
        }
        Ok(())
    }

    proptest! {
        /// `LeastLoaded` over ordinary fleets: where a create goes and why.
        #[test]
        fn least_loaded_places_on_room_by_load(fleet in fleet(false), cpu in cpu(false)) {
            check_least_loaded(&fleet, cpu, true)?;
        }

        /// Workers may report numbers up to the limits of the wire types, and clients ask for
        /// any cpu count.
        #[test]
        fn least_loaded_survives_huge_reports(fleet in fleet(true), cpu in cpu(true)) {
            check_least_loaded(&fleet, cpu, false)?;
            check_warm_start(&fleet, cpu)?;
        }

        /// The default warm start over ordinary fleets.
        #[test]
        fn warm_starts_go_to_workers_with_room(fleet in fleet(false), cpu in cpu(false)) {
            check_warm_start(&fleet, cpu)?;
        }

        /// `FirstRegistered` claims the oldest ready sandbox anywhere, else boots on the
        /// earliest registered worker, whatever the load.
        #[test]
        fn first_registered_takes_the_oldest_or_the_earliest(
            fleet in fleet(true),
            cpu in cpu(true),
        ) {
            let choice = FirstRegistered.place(&tuple(cpu), &fleet);
            let oldest = fleet.iter().filter(|w| w.ready > 0).min_by_key(|w| w.oldest_ready);
            let earliest = fleet.iter().min_by_key(|w| w.order);
            let expected = match (oldest, earliest) {
                (Some(w), _) => Some(Choice::Warm(w.worker_id.clone())),
                (None, Some(w)) => Some(Choice::Cold(w.worker_id.clone())),
                (None, None) => None,
            };
            prop_assert_eq!(choice, expected);
        }
    }
}
