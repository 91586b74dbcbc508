//! Warm pools: demand decay, per-tuple targets, and the pool of ready sandboxes.
//!
//! Demand is the create history of the last 60 minutes, each event weighing
//! `0.5^(age_minutes/20)`; capacity is split between tuples in proportion to their weight
//! (largest remainder), the hottest tuple always getting at least one. Pre-pull targets from
//! the worker YAML are floors. History is pruned as it ages out of the window.
//!
//! Every tie (hottest tuple, equal remainders, which tuple to trim) is broken by tuple order,
//! the smaller tuple winning, so targets are a pure function of their inputs.

use std::collections::{BTreeMap, HashMap, VecDeque};

use chrono::{DateTime, Utc};

use crate::id::LocalVmId;
use crate::tuple::SandboxTuple;

/// How far back demand counts.
pub const DEMAND_WINDOW: chrono::Duration = chrono::Duration::minutes(60);

/// The age, in minutes, at which an event weighs half.
pub const DEMAND_HALF_LIFE_MINUTES: f64 = 20.0;

/// The most events a [`DemandTracker`] keeps by default; beyond it the oldest are dropped.
pub const MAX_DEMAND_EVENTS: usize = 100_000;

/// Create history, pruned to the window, bounded in size.
///
/// Events of one tuple less than a second apart share a bucket (the first event's time), so
/// computing targets costs at most one weight per tuple-second of the window however many
/// creates there were.
#[derive(Debug)]
pub struct DemandTracker {
    /// Per tuple, buckets `(time of the first event, event count)` in ascending time.
    events: BTreeMap<SandboxTuple, VecDeque<(DateTime<Utc>, u32)>>,
    len: usize,
    max_events: usize,
}

/// Events closer than this to the previous bucket's time join that bucket.
const BUCKET: chrono::Duration = chrono::Duration::seconds(1);

impl Default for DemandTracker {
    fn default() -> Self {
        Self::with_max_events(MAX_DEMAND_EVENTS)
    }
}

impl DemandTracker {
    /// An empty history.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty history that keeps at most `max_events` events (at least 1).
    pub fn with_max_events(max_events: usize) -> Self {
        Self {
            events: BTreeMap::new(),
            len: 0,
            max_events: max_events.max(1),
        }
    }

    /// Records one create of `tuple` at `at`.
    pub fn record(&mut self, tuple: SandboxTuple, at: DateTime<Utc>) {
        let buckets = self.events.entry(tuple).or_default();
        match buckets.back_mut() {
            Some((first, count)) if *first <= at && at - *first < BUCKET => *count += 1,
            Some((last, _)) if *last > at => {
                // Out of order (rare): slot it in as its own bucket.
                let slot = buckets.partition_point(|(t, _)| *t <= at);
                buckets.insert(slot, (at, 1));
            }
            _ => buckets.push_back((at, 1)),
        }
        self.len += 1;
        self.prune(at);
        while self.len > self.max_events {
            self.drop_oldest();
        }
    }

    /// Events kept (after pruning at the last call).
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when no events are kept.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Prunes events older than the window and computes the targets for `capacity`.
    pub fn targets(&mut self, capacity: u32, now: DateTime<Utc>) -> BTreeMap<SandboxTuple, u32> {
        self.prune(now);
        let weights = self
            .events
            .iter()
            .map(|(tuple, times)| {
                let weight = times
                    .iter()
                    .map(|(at, count)| event_weight(*at, now) * f64::from(*count))
                    .sum();
                (tuple.clone(), weight)
            })
            .collect();
        allocate(capacity, weights)
    }

    /// Drops events before `now - window` (an event exactly at the cutoff stays).
    fn prune(&mut self, now: DateTime<Utc>) {
        let cutoff = now - DEMAND_WINDOW;
        let mut dropped = 0;
        self.events.retain(|_, times| {
            while times.front().is_some_and(|(at, _)| *at < cutoff) {
                if let Some((_, count)) = times.pop_front() {
                    dropped += count as usize;
                }
            }
            !times.is_empty()
        });
        self.len -= dropped;
    }

    fn drop_oldest(&mut self) {
        let oldest = self
            .events
            .iter()
            .filter_map(|(tuple, times)| times.front().map(|(at, _)| (*at, tuple)))
            .min_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.cmp(b.1)))
            .map(|(_, tuple)| tuple.clone());
        let Some(tuple) = oldest else { return };
        if let Some(times) = self.events.get_mut(&tuple) {
            if let Some((_, count)) = times.front_mut() {
                *count -= 1;
                if *count == 0 {
                    times.pop_front();
                }
            }
            self.len -= 1;
            if times.is_empty() {
                self.events.remove(&tuple);
            }
        }
    }
}

/// The weight of an event at `at` seen from `now`: 0 outside the window, 1 for a future
/// event, `0.5^(age_minutes/20)` otherwise.
fn event_weight(at: DateTime<Utc>, now: DateTime<Utc>) -> f64 {
    if at < now - DEMAND_WINDOW {
        return 0.0;
    }
    let age_minutes = ((now - at).num_milliseconds() as f64 / 60_000.0).max(0.0);
    0.5_f64.powf(age_minutes / DEMAND_HALF_LIFE_MINUTES)
}

/// The target computation of the prototype (§5.3), pure.
pub fn compute_targets(
    capacity: u32,
    events: &[(SandboxTuple, DateTime<Utc>)],
    now: DateTime<Utc>,
) -> BTreeMap<SandboxTuple, u32> {
    let cutoff = now - DEMAND_WINDOW;
    let mut weights: BTreeMap<SandboxTuple, f64> = BTreeMap::new();
    for (tuple, at) in events {
        if *at >= cutoff {
            *weights.entry(tuple.clone()).or_default() += event_weight(*at, now);
        }
    }
    allocate(capacity, weights)
}

/// Splits `capacity` between tuples in proportion to their weights (§5.3 steps 3-8).
fn allocate(capacity: u32, weights: BTreeMap<SandboxTuple, f64>) -> BTreeMap<SandboxTuple, u32> {
    let total: f64 = weights.values().sum();
    if capacity == 0 || weights.is_empty() || total <= 0.0 {
        return BTreeMap::new();
    }
    let entries: Vec<(SandboxTuple, f64)> = weights.into_iter().collect();

    // The hottest: the largest weight, the smallest tuple on a tie (entries are sorted).
    let mut hottest = 0;
    for (i, (_, weight)) in entries.iter().enumerate() {
        if *weight > entries[hottest].1 {
            hottest = i;
        }
    }

    let mut targets = Vec::with_capacity(entries.len());
    let mut remainders = Vec::with_capacity(entries.len());
    for (i, (_, weight)) in entries.iter().enumerate() {
        let raw = weight / total * f64::from(capacity);
        let base = raw.floor();
        targets.push(base as u32);
        remainders.push((raw - base, i));
    }
    // Largest remainder first; equal remainders go to the smaller tuple.
    remainders.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    let assigned: u64 = targets.iter().map(|t| u64::from(*t)).sum();
    let left = u64::from(capacity).saturating_sub(assigned);
    for (_, i) in remainders
        .iter()
        .take(usize::try_from(left).unwrap_or(usize::MAX))
    {
        targets[*i] += 1;
    }

    if targets[hottest] == 0 {
        targets[hottest] = 1;
    }
    let mut sum: u64 = targets.iter().map(|t| u64::from(*t)).sum();
    while sum > u64::from(capacity) {
        // The highest positive count other than the hottest; the larger tuple on a tie.
        let victim = (0..targets.len())
            .filter(|i| *i != hottest && targets[*i] > 0)
            .max_by(|a, b| targets[*a].cmp(&targets[*b]).then(a.cmp(b)));
        let Some(victim) = victim else { break };
        targets[victim] -= 1;
        sum -= 1;
    }

    entries
        .into_iter()
        .map(|(tuple, _)| tuple)
        .zip(targets)
        .collect()
}

/// Creates closer than this to the previous create of their tuple belong to the same burst.
pub const BURST_GAP: chrono::Duration = chrono::Duration::seconds(1);

/// A burst raises a tuple's warm ceiling to at most this many times the configured one, so
/// that one long burst does not leave the worker holding a huge idle pool for an hour.
pub const MAX_BURST_FACTOR: u32 = 4;

/// Bursts of creates per tuple, for the warm ceiling. A burst is a run of creates of a tuple
/// each less than [`BURST_GAP`] after the one before; when one of them finds no ready sandbox
/// (the pool did not keep up), the tuple's level becomes at least the burst's size so far.
/// The level decays like demand: it halves every [`DEMAND_HALF_LIFE_MINUTES`] and is forgotten
/// past [`DEMAND_WINDOW`]. The worker raises the tuple's warm ceiling to it (at most
/// [`MAX_BURST_FACTOR`] times the configured ceiling), so that the pool the next burst meets
/// is as large as the last one was.
#[derive(Debug, Default, Clone)]
pub struct BurstTracker {
    tuples: BTreeMap<SandboxTuple, Burst>,
}

/// One tuple's current burst and level.
#[derive(Debug, Clone, Copy)]
struct Burst {
    /// Creates in the current run.
    run: u32,
    /// The last create.
    last: DateTime<Utc>,
    /// The level when it was last raised, and when.
    level: f64,
    level_at: DateTime<Utc>,
}

impl BurstTracker {
    /// An empty tracker.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records a create of `tuple` at `at`; `missed`: it found no ready sandbox.
    pub fn record(&mut self, tuple: &SandboxTuple, at: DateTime<Utc>, missed: bool) {
        let burst = self.tuples.entry(tuple.clone()).or_insert(Burst {
            run: 0,
            last: at,
            level: 0.0,
            level_at: at,
        });
        burst.run = if at - burst.last < BURST_GAP {
            burst.run.saturating_add(1)
        } else {
            1
        };
        burst.last = at;
        if missed {
            let now_level = burst.level * event_weight(burst.level_at, at);
            burst.level = now_level.max(f64::from(burst.run));
            burst.level_at = at;
        }
    }

    /// The tuple's level at `now` (fractional).
    pub fn level(&self, tuple: &SandboxTuple, now: DateTime<Utc>) -> f64 {
        self.tuples
            .get(tuple)
            .map_or(0.0, |b| b.level * event_weight(b.level_at, now))
    }

    /// The warm ceiling the tuple's bursts ask for at `now` (the level, rounded).
    pub fn ceiling(&self, tuple: &SandboxTuple, now: DateTime<Utc>) -> u32 {
        self.level(tuple, now).round().min(f64::from(u32::MAX)) as u32
    }

    /// Forgets tuples whose level has decayed below one half and whose run has ended.
    pub fn prune(&mut self, now: DateTime<Utc>) {
        self.tuples.retain(|_, b| {
            b.level * event_weight(b.level_at, now) >= 0.5 || now - b.last < BURST_GAP
        });
    }
}

/// Combines demand targets with pre-pull floors: each tuple gets the larger of the two, and
/// the total is trimmed to `capacity` by lowering demand-only tuples first (largest first).
///
/// Precisely: the part of a target above its floor (all of it for a tuple without a floor) is
/// lowered first, one at a time from the tuple with the largest such part (the larger tuple
/// on a tie). Only if the floors alone exceed `capacity` are floors lowered, largest first,
/// the same way. Every tuple of either map appears in the result, possibly with 0.
pub fn effective_targets(
    demand: &BTreeMap<SandboxTuple, u32>,
    floors: &BTreeMap<SandboxTuple, u32>,
    capacity: u32,
) -> BTreeMap<SandboxTuple, u32> {
    let mut rows: Vec<(SandboxTuple, u32, u32)> = Vec::new(); // (tuple, target, floor)
    let mut tuples: Vec<&SandboxTuple> = demand.keys().chain(floors.keys()).collect();
    tuples.sort();
    tuples.dedup();
    for tuple in tuples {
        let want = demand.get(tuple).copied().unwrap_or(0);
        let floor = floors.get(tuple).copied().unwrap_or(0);
        rows.push((tuple.clone(), want.max(floor), floor));
    }
    let mut sum: u64 = rows.iter().map(|r| u64::from(r.1)).sum();
    let capacity = u64::from(capacity);
    // Demand above floors first, then the floors themselves.
    for above_floor in [true, false] {
        while sum > capacity {
            let lowerable = |r: &(SandboxTuple, u32, u32)| {
                if above_floor {
                    r.1.saturating_sub(r.2)
                } else {
                    r.1
                }
            };
            let victim = (0..rows.len())
                .filter(|i| lowerable(&rows[*i]) > 0)
                .max_by(|a, b| {
                    lowerable(&rows[*a])
                        .cmp(&lowerable(&rows[*b]))
                        .then(a.cmp(b))
                });
            let Some(victim) = victim else { break };
            rows[victim].1 -= 1;
            sum -= 1;
        }
    }
    rows.into_iter()
        .map(|(tuple, target, _)| (tuple, target))
        .collect()
}

/// Ready sandboxes per tuple, oldest first. `T` is the worker's handle type.
#[derive(Debug)]
pub struct ReadyPool<T> {
    queues: BTreeMap<SandboxTuple, VecDeque<(LocalVmId, T)>>,
    index: HashMap<LocalVmId, SandboxTuple>,
}

impl<T> Default for ReadyPool<T> {
    fn default() -> Self {
        Self {
            queues: BTreeMap::new(),
            index: HashMap::new(),
        }
    }
}

impl<T> ReadyPool<T> {
    /// Adds a ready sandbox at the back of its tuple's queue. An id already in the pool is
    /// taken out first (its old handle is dropped).
    pub fn push(&mut self, tuple: SandboxTuple, id: LocalVmId, item: T) {
        self.remove(&id);
        self.index.insert(id, tuple.clone());
        self.queues.entry(tuple).or_default().push_back((id, item));
    }

    /// Takes the sandbox with this id if it is ready and of this tuple.
    pub fn claim(&mut self, id: &LocalVmId, tuple: &SandboxTuple) -> Option<T> {
        if self.index.get(id) != Some(tuple) {
            return None;
        }
        self.remove(id).map(|(_, item)| item)
    }

    /// Takes the oldest ready sandbox of the tuple.
    pub fn claim_oldest(&mut self, tuple: &SandboxTuple) -> Option<(LocalVmId, T)> {
        let queue = self.queues.get_mut(tuple)?;
        let (id, item) = queue.pop_front()?;
        if queue.is_empty() {
            self.queues.remove(tuple);
        }
        self.index.remove(&id);
        Some((id, item))
    }

    /// Takes a sandbox by id whatever its tuple (retirement).
    pub fn remove(&mut self, id: &LocalVmId) -> Option<(SandboxTuple, T)> {
        let tuple = self.index.remove(id)?;
        let queue = self.queues.get_mut(&tuple)?;
        let position = queue.iter().position(|(queued, _)| queued == id)?;
        let (_, item) = queue.remove(position)?;
        if queue.is_empty() {
            self.queues.remove(&tuple);
        }
        Some((tuple, item))
    }

    /// Ready count of a tuple.
    pub fn count(&self, tuple: &SandboxTuple) -> usize {
        self.queues.get(tuple).map_or(0, VecDeque::len)
    }

    /// Ready count over all tuples.
    pub fn total(&self) -> usize {
        self.index.len()
    }

    /// Every ready sandbox's id and tuple, oldest first within a tuple.
    pub fn snapshot(&self) -> Vec<(LocalVmId, SandboxTuple)> {
        self.queues
            .iter()
            .flat_map(|(tuple, queue)| queue.iter().map(move |(id, _)| (*id, tuple.clone())))
            .collect()
    }

    /// Takes everything (shutdown).
    pub fn drain(&mut self) -> Vec<(LocalVmId, SandboxTuple, T)> {
        self.index.clear();
        std::mem::take(&mut self.queues)
            .into_iter()
            .flat_map(|(tuple, queue)| {
                queue
                    .into_iter()
                    .map(move |(id, item)| (id, tuple.clone(), item))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tuple(image: &str) -> SandboxTuple {
        SandboxTuple::normalize("fake", image, 1, "fake")
    }

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2025-06-01T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    fn ago(minutes: i64) -> DateTime<Utc> {
        now() - chrono::Duration::minutes(minutes)
    }

    fn map(entries: &[(&str, u32)]) -> BTreeMap<SandboxTuple, u32> {
        entries.iter().map(|(i, n)| (tuple(i), *n)).collect()
    }

    #[test]
    fn bursts_set_a_level_that_decays_like_demand() {
        let mut bursts = BurstTracker::new();
        let (hot, calm, old) = (tuple("hot"), tuple("calm"), tuple("old"));
        let ms = chrono::Duration::milliseconds;
        // 40 creates 10 ms apart, the pool keeping up with the first 8 only.
        for i in 0..40 {
            bursts.record(&hot, ago(40) + ms(10 * i), i >= 8);
        }
        // Creates that never miss raise nothing, however many.
        for i in 0..40 {
            bursts.record(&calm, ago(40) + ms(10 * i), false);
        }
        assert_eq!(bursts.ceiling(&calm, now()), 0);
        // The burst's size, two half-lives later: a quarter.
        assert_eq!(bursts.ceiling(&hot, now()), 10);
        assert!((bursts.level(&hot, now()) - 10.0).abs() < 0.01);
        // Creates far apart are bursts of one.
        bursts.record(&hot, now(), true);
        assert_eq!(
            bursts.ceiling(&hot, now()),
            10,
            "a lone miss keeps the decayed level"
        );
        for i in 1..20 {
            bursts.record(&hot, now() + ms(i), true);
        }
        assert_eq!(bursts.ceiling(&hot, now()), 20, "a new burst of 20");
        // Past the window: forgotten.
        bursts.record(&old, ago(70), true);
        assert_eq!(bursts.ceiling(&old, now()), 0);
        assert_eq!(bursts.ceiling(&tuple("never"), now()), 0);
        bursts.prune(now());
        assert_eq!(bursts.tuples.len(), 1, "only the hot tuple is kept");
        bursts.prune(now() + chrono::Duration::minutes(200));
        assert!(bursts.tuples.is_empty());
    }

    #[test]
    fn hot_tuple_wins_the_only_slot() {
        // §11 item 19.
        let events = [
            (tuple("hot"), ago(5)),
            (tuple("hot"), ago(10)),
            (tuple("cold"), ago(50)),
        ];
        let targets = compute_targets(1, &events, now());
        assert_eq!(targets, map(&[("hot", 1), ("cold", 0)]));
    }

    #[test]
    fn empty_inputs_give_nothing() {
        assert!(compute_targets(0, &[(tuple("a"), now())], now()).is_empty());
        assert!(compute_targets(3, &[], now()).is_empty());
        assert!(compute_targets(3, &[(tuple("a"), ago(61))], now()).is_empty());
    }

    #[test]
    fn cutoff_is_inclusive_and_future_weighs_one() {
        let events = [(tuple("edge"), ago(60)), (tuple("old"), ago(61))];
        assert_eq!(compute_targets(2, &events, now()), map(&[("edge", 2)]));
        assert_eq!(
            event_weight(now() + chrono::Duration::minutes(5), now()),
            1.0
        );
        assert!((event_weight(ago(20), now()) - 0.5).abs() < 1e-12);
        assert!((event_weight(ago(40), now()) - 0.25).abs() < 1e-12);
    }

    #[test]
    fn largest_remainder() {
        let mut events = Vec::new();
        for (image, n) in [("a", 3), ("b", 2), ("c", 1)] {
            for _ in 0..n {
                events.push((tuple(image), now()));
            }
        }
        // Raw shares 2, 1.33, 0.67: the one seat left goes to the largest remainder, c.
        assert_eq!(
            compute_targets(4, &events, now()),
            map(&[("a", 2), ("b", 1), ("c", 1)])
        );
        assert_eq!(
            compute_targets(12, &events, now()),
            map(&[("a", 6), ("b", 4), ("c", 2)])
        );
    }

    #[test]
    fn ties_break_by_tuple_order() {
        let events = [
            (tuple("c"), now()),
            (tuple("a"), now()),
            (tuple("b"), now()),
        ];
        assert_eq!(
            compute_targets(2, &events, now()),
            map(&[("a", 1), ("b", 1), ("c", 0)])
        );
        assert_eq!(
            compute_targets(1, &events, now()),
            map(&[("a", 1), ("b", 0), ("c", 0)])
        );
    }

    #[test]
    fn allocation_never_exceeds_capacity() {
        let mut events = Vec::new();
        for i in 0..7 {
            for k in 0..=i {
                events.push((tuple(&format!("t{i}")), ago(k * 7)));
            }
        }
        for capacity in 1..20 {
            let targets = compute_targets(capacity, &events, now());
            assert_eq!(targets.len(), 7);
            assert_eq!(targets.values().sum::<u32>(), capacity);
            assert!(targets[&tuple("t6")] >= 1, "hottest gets a seat");
        }
    }

    #[test]
    fn tracker_matches_pure_computation() {
        let mut tracker = DemandTracker::new();
        let events = [
            (tuple("hot"), ago(10)),
            (tuple("hot"), ago(5)),
            (tuple("cold"), ago(50)),
        ];
        for (t, at) in events.iter().cloned() {
            tracker.record(t, at);
        }
        assert_eq!(tracker.len(), 3);
        assert_eq!(
            tracker.targets(1, now()),
            compute_targets(1, &events, now())
        );
    }

    #[test]
    fn events_within_a_second_share_a_bucket_and_keep_their_weight() {
        let mut tracker = DemandTracker::new();
        let hot = tuple("hot");
        let cold = tuple("cold");
        for i in 0..1000 {
            tracker.record(hot.clone(), ago(5) + chrono::Duration::microseconds(i));
        }
        for _ in 0..3 {
            tracker.record(cold.clone(), ago(5));
        }
        assert_eq!(tracker.len(), 1003);
        assert_eq!(tracker.events[&hot].len(), 1);
        let targets = tracker.targets(10, now());
        assert_eq!(targets[&hot], 10);
        assert_eq!(targets[&cold], 0);
    }

    #[test]
    fn tracker_prunes_old_events() {
        let mut tracker = DemandTracker::new();
        tracker.record(tuple("a"), ago(90));
        assert_eq!(tracker.len(), 1);
        tracker.record(tuple("b"), ago(20));
        // Recording at -20 min drops what is older than -80 min.
        assert_eq!(tracker.len(), 1);
        tracker.record(tuple("a"), ago(59));
        assert_eq!(tracker.len(), 2);
        let targets = tracker.targets(2, now() + chrono::Duration::minutes(2));
        assert_eq!(tracker.len(), 1);
        assert_eq!(targets, map(&[("b", 2)]));
        assert!(tracker
            .targets(2, now() + chrono::Duration::hours(2))
            .is_empty());
        assert!(tracker.is_empty());
    }

    #[test]
    fn tracker_is_bounded_and_drops_the_oldest() {
        let mut tracker = DemandTracker::with_max_events(3);
        tracker.record(tuple("a"), ago(4));
        tracker.record(tuple("b"), ago(3));
        tracker.record(tuple("a"), ago(1));
        // Out of order: slotted in place, then the oldest (a at -4) goes.
        tracker.record(tuple("c"), ago(2));
        assert_eq!(tracker.len(), 3);
        let targets = tracker.targets(3, now());
        assert_eq!(targets, map(&[("a", 1), ("b", 1), ("c", 1)]));
        assert_eq!(DemandTracker::new().max_events, MAX_DEMAND_EVENTS);
        assert_eq!(DemandTracker::default().max_events, MAX_DEMAND_EVENTS);
    }

    #[test]
    fn floors_combine_with_demand() {
        let demand = map(&[("a", 3), ("b", 1)]);
        let floors = map(&[("c", 2)]);
        assert_eq!(
            effective_targets(&demand, &floors, 10),
            map(&[("a", 3), ("b", 1), ("c", 2)])
        );
        // Over capacity: demand above floors goes first, largest first.
        assert_eq!(
            effective_targets(&demand, &floors, 4),
            map(&[("a", 1), ("b", 1), ("c", 2)])
        );
        // A floor below the demand only protects its own part.
        let floors = map(&[("a", 2)]);
        assert_eq!(
            effective_targets(&map(&[("a", 4), ("b", 1)]), &floors, 4),
            map(&[("a", 3), ("b", 1)])
        );
        assert_eq!(
            effective_targets(&demand, &floors, 2),
            map(&[("a", 2), ("b", 0)])
        );
        // Equal parts above the floors: the larger tuple is lowered.
        assert_eq!(
            effective_targets(&demand, &floors, 3),
            map(&[("a", 3), ("b", 0)])
        );
        // Floors alone beyond capacity are lowered last, largest first.
        let floors = map(&[("a", 3), ("b", 2)]);
        assert_eq!(
            effective_targets(&BTreeMap::new(), &floors, 4),
            map(&[("a", 2), ("b", 2)])
        );
        assert_eq!(
            effective_targets(&demand, &floors, 0),
            map(&[("a", 0), ("b", 0)])
        );
    }

    #[test]
    fn pool_is_fifo_per_tuple() {
        let mut pool = ReadyPool::default();
        let ids: Vec<LocalVmId> = (0..4).map(|_| LocalVmId::new_random()).collect();
        pool.push(tuple("a"), ids[0], "a0");
        pool.push(tuple("b"), ids[1], "b0");
        pool.push(tuple("a"), ids[2], "a1");
        pool.push(tuple("a"), ids[3], "a2");
        assert_eq!((pool.count(&tuple("a")), pool.total()), (3, 4));
        assert_eq!(
            pool.snapshot(),
            vec![
                (ids[0], tuple("a")),
                (ids[2], tuple("a")),
                (ids[3], tuple("a")),
                (ids[1], tuple("b")),
            ]
        );
        assert_eq!(pool.claim_oldest(&tuple("a")), Some((ids[0], "a0")));
        assert_eq!(pool.claim_oldest(&tuple("a")), Some((ids[2], "a1")));
        assert_eq!(pool.claim_oldest(&tuple("zzz")), None);
        assert_eq!(pool.total(), 2);
    }

    #[test]
    fn pool_claim_checks_the_tuple() {
        let mut pool = ReadyPool::default();
        let (x, y) = (LocalVmId::new_random(), LocalVmId::new_random());
        pool.push(tuple("a"), x, 1);
        pool.push(tuple("a"), y, 2);
        assert_eq!(pool.claim(&x, &tuple("b")), None);
        assert_eq!(pool.claim(&LocalVmId::new_random(), &tuple("a")), None);
        assert_eq!(pool.claim(&y, &tuple("a")), Some(2));
        assert_eq!(pool.claim(&y, &tuple("a")), None);
        assert_eq!(pool.count(&tuple("a")), 1);
        assert_eq!(pool.remove(&x), Some((tuple("a"), 1)));
        assert_eq!(pool.remove(&x), None);
        assert_eq!(pool.total(), 0);
        assert!(pool.snapshot().is_empty());
    }

    #[test]
    fn pool_push_same_id_replaces_and_drain_empties() {
        let mut pool = ReadyPool::default();
        let (x, y) = (LocalVmId::new_random(), LocalVmId::new_random());
        pool.push(tuple("a"), x, 1);
        pool.push(tuple("b"), y, 2);
        pool.push(tuple("c"), x, 3);
        assert_eq!(pool.total(), 2);
        assert_eq!(pool.count(&tuple("a")), 0);
        let drained = pool.drain();
        assert_eq!(drained, vec![(y, tuple("b"), 2), (x, tuple("c"), 3)]);
        assert_eq!(pool.total(), 0);
        assert_eq!(pool.claim_oldest(&tuple("b")), None);
    }
}

#[cfg(test)]
mod properties {
    //! Property tests: targets, floors, demand history and bursts against their definitions,
    //! over random demand.

    use proptest::prelude::*;

    use super::*;

    fn tuple(i: usize) -> SandboxTuple {
        SandboxTuple::normalize("fake", &format!("img{i}"), 1, "fake")
    }

    fn now() -> DateTime<Utc> {
        DateTime::from_timestamp(1_750_000_000, 0).expect("time")
    }

    fn ms(n: i64) -> chrono::Duration {
        chrono::Duration::milliseconds(n)
    }

    /// Creates as (tuple index, age in milliseconds; negative: in the future), some exactly
    /// at the window's edge and some past it.
    fn aged_events() -> impl Strategy<Value = Vec<(usize, i64)>> {
        let age = prop_oneof![
            8 => -300_000i64..5_000_000,
            1 => Just(DEMAND_WINDOW.num_milliseconds()),
            1 => Just(0i64),
        ];
        prop::collection::vec((0..6usize, age), 0..40)
    }

    /// Per-tuple maps over a few tuples.
    fn tuple_counts() -> impl Strategy<Value = BTreeMap<SandboxTuple, u32>> {
        prop::collection::btree_map((0..6usize).prop_map(tuple), 0u32..20, 0..6)
    }

    fn assert_tracker_consistent(tracker: &DemandTracker) {
        let mut counted = 0;
        for buckets in tracker.events.values() {
            assert!(!buckets.is_empty(), "an empty tuple is kept");
            assert!(
                buckets
                    .iter()
                    .zip(buckets.iter().skip(1))
                    .all(|(a, b)| a.0 <= b.0),
                "buckets out of time order"
            );
            assert!(
                buckets.iter().all(|(_, count)| *count > 0),
                "an empty bucket"
            );
            counted += buckets.iter().map(|(_, n)| *n as usize).sum::<usize>();
        }
        assert_eq!(counted, tracker.len(), "len disagrees with the buckets");
        assert!(tracker.len() <= tracker.max_events);
    }

    proptest! {
        /// Weights: 1 for now and the future, halving every 20 minutes, 0 past the window,
        /// never rising with age.
        #[test]
        fn event_weight_decays_within_the_window(
            a in -600_000i64..8_000_000,
            b in -600_000i64..8_000_000,
        ) {
            let (young, old) = (a.min(b), a.max(b));
            let wy = event_weight(now() - ms(young), now());
            let wo = event_weight(now() - ms(old), now());
            prop_assert!(wo <= wy);
            for (age, weight) in [(young, wy), (old, wo)] {
                if age > DEMAND_WINDOW.num_milliseconds() {
                    prop_assert_eq!(weight, 0.0);
                } else if age <= 0 {
                    prop_assert_eq!(weight, 1.0);
                } else {
                    let expected = 0.5_f64.powf(age as f64 / 60_000.0 / DEMAND_HALF_LIFE_MINUTES);
                    prop_assert!((weight - expected).abs() < 1e-12);
                    prop_assert!((0.125..=1.0).contains(&weight));
                }
            }
        }

        /// Targets split the whole capacity between the tuples created within the window,
        /// each within one of its proportional share, a heavier tuple never below a lighter
        /// one, and the hottest getting a seat.
        #[test]
        fn targets_split_capacity_by_largest_remainder(
            capacity in 0u32..64,
            events in aged_events(),
        ) {
            let now = now();
            let events: Vec<(SandboxTuple, DateTime<Utc>)> =
                events.iter().map(|(i, age)| (tuple(*i), now - ms(*age))).collect();
            let targets = compute_targets(capacity, &events, now);

            let mut weights: BTreeMap<SandboxTuple, f64> = BTreeMap::new();
            for (tuple, at) in &events {
                if *at >= now - DEMAND_WINDOW {
                    *weights.entry(tuple.clone()).or_default() += event_weight(*at, now);
                }
            }
            if capacity == 0 || weights.is_empty() {
                prop_assert!(targets.is_empty());
                return Ok(());
            }
            prop_assert_eq!(
                targets.keys().collect::<Vec<_>>(),
                weights.keys().collect::<Vec<_>>()
            );
            let sum: u64 = targets.values().map(|t| u64::from(*t)).sum();
            prop_assert_eq!(sum, u64::from(capacity));
            let total: f64 = weights.values().sum();
            for (tuple, weight) in &weights {
                let share = weight / total * f64::from(capacity);
                let target = f64::from(targets[tuple]);
                prop_assert!(
                    target > share - 1.0 - 1e-9 && target < share + 1.0 + 1e-9,
                    "{} got {} for a share of {}", tuple, target, share
                );
            }
            for (a, wa) in &weights {
                for (b, wb) in &weights {
                    if *wa > *wb * (1.0 + 1e-9) {
                        prop_assert!(targets[a] >= targets[b], "{} got less than {}", a, b);
                    }
                }
            }
            // The hottest: the largest weight, the smaller tuple on a tie.
            let mut hottest: Option<(&SandboxTuple, f64)> = None;
            for (tuple, weight) in &weights {
                if hottest.is_none_or(|(_, best)| *weight > best) {
                    hottest = Some((tuple, *weight));
                }
            }
            let (hottest, _) = hottest.expect("a tuple");
            prop_assert!(targets[hottest] >= 1);
        }

        /// The tracker holds what a plain list of events would after the same records: the
        /// events within the window of the latest record, the newest `max_events` of them;
        /// its targets are those of the pure computation over that list. Records come out of
        /// order.
        #[test]
        fn tracker_keeps_the_newest_events_of_the_window(
            max_events in 1usize..30,
            capacity in 1u32..20,
            events in prop::collection::btree_map(0i64..5_400, 0..5usize, 0..60)
                .prop_map(|m| m.into_iter().map(|(second, t)| (t, second)).collect::<Vec<_>>())
                .prop_shuffle(),
        ) {
            // Whole seconds, all distinct: no two events share a bucket, so the tracker's
            // weights are exactly those of the list.
            let start = now() - chrono::Duration::seconds(5_400);
            let mut tracker = DemandTracker::with_max_events(max_events);
            let mut model: Vec<(DateTime<Utc>, usize)> = Vec::new();
            for (t, second) in events {
                let at = start + chrono::Duration::seconds(second);
                tracker.record(tuple(t), at);
                model.push((at, t));
                model.retain(|(time, _)| *time >= at - DEMAND_WINDOW);
                model.sort();
                while model.len() > max_events {
                    model.remove(0);
                }
                prop_assert_eq!(tracker.len(), model.len());
                assert_tracker_consistent(&tracker);
            }
            let expected: Vec<(SandboxTuple, DateTime<Utc>)> =
                model.iter().map(|(at, t)| (tuple(*t), *at)).collect();
            let targets = tracker.targets(capacity, now());
            prop_assert_eq!(&targets, &compute_targets(capacity, &expected, now()));
            let in_window = model.iter().filter(|(at, _)| *at >= now() - DEMAND_WINDOW).count();
            prop_assert_eq!(tracker.len(), in_window);
            assert_tracker_consistent(&tracker);
        }

        /// Creates of one tuple in the same second share buckets, yet every one counts.
        #[test]
        fn bucketed_events_all_count(
            max_events in 1usize..200,
            events in prop::collection::vec((0..3usize, 0i64..4_000), 0..120),
        ) {
            let mut tracker = DemandTracker::with_max_events(max_events);
            let mut at = now();
            for (recorded, (t, gap_ms)) in events.iter().enumerate() {
                at += ms(*gap_ms / 8);
                tracker.record(tuple(*t), at);
                prop_assert_eq!(tracker.len(), (recorded + 1).min(max_events));
                assert_tracker_consistent(&tracker);
            }
        }

        /// Floors combined with demand: the sum is what fits, floors are kept while they fit
        /// together, nothing exceeds the larger of its demand and floor, and what was cut
        /// above the floors was cut from the largest parts first.
        #[test]
        fn effective_targets_respect_floors_and_capacity(
            demand in tuple_counts(),
            floors in tuple_counts(),
            capacity in 0u32..80,
        ) {
            let targets = effective_targets(&demand, &floors, capacity);
            let keys: std::collections::BTreeSet<&SandboxTuple> =
                demand.keys().chain(floors.keys()).collect();
            prop_assert_eq!(targets.keys().collect::<std::collections::BTreeSet<_>>(), keys);
            let get = |m: &BTreeMap<SandboxTuple, u32>, t: &SandboxTuple| {
                m.get(t).copied().unwrap_or(0)
            };
            let wanted: u64 = targets
                .keys()
                .map(|t| u64::from(get(&demand, t).max(get(&floors, t))))
                .sum();
            let floor_sum: u64 = floors.values().map(|f| u64::from(*f)).sum();
            let sum: u64 = targets.values().map(|t| u64::from(*t)).sum();
            prop_assert_eq!(sum, wanted.min(u64::from(capacity)));
            for (tuple, target) in &targets {
                let (want, floor) = (get(&demand, tuple), get(&floors, tuple));
                prop_assert!(*target <= want.max(floor));
                if floor_sum <= u64::from(capacity) {
                    prop_assert!(*target >= floor, "{} below its floor", tuple);
                } else {
                    prop_assert!(*target <= floor, "{} above its floor, floors overflow", tuple);
                }
            }
            // A tuple cut above its floor kept at least as much above it as any other, less one.
            if floor_sum <= u64::from(capacity) {
                let above = |t: &SandboxTuple| targets[t] - get(&floors, t).min(targets[t]);
                for tuple in targets.keys() {
                    if targets[tuple] < get(&demand, tuple).max(get(&floors, tuple)) {
                        for other in targets.keys() {
                            prop_assert!(
                                above(other) <= above(tuple) + 1,
                                "{} cut before {}", tuple, other
                            );
                        }
                    }
                }
            }
        }

        /// Bursts: a missed create raises its tuple's ceiling to at least the burst so far;
        /// a level never exceeds the largest missed burst and only decays between misses;
        /// pruning is never observable; everything is forgotten past the window.
        #[test]
        fn bursts_rise_with_misses_and_only_decay_otherwise(
            records in prop::collection::vec(
                (0..3usize, prop_oneof![3 => 0i64..1_000, 1 => 0i64..600_000], any::<bool>()),
                1..80,
            ),
        ) {
            let mut tracker = BurstTracker::new();
            let mut pruned = BurstTracker::new();
            let mut runs = [0u32; 3];
            let mut last: [Option<DateTime<Utc>>; 3] = [None; 3];
            let mut largest_miss = [0u32; 3];
            let mut at = now();
            let mut before = at;
            for (t, gap, missed) in records {
                at += ms(gap);
                let levels: Vec<f64> = (0..3).map(|i| tracker.level(&tuple(i), before)).collect();
                tracker.record(&tuple(t), at, missed);
                pruned.record(&tuple(t), at, missed);
                pruned.prune(at);
                runs[t] = match last[t] {
                    Some(previous) if at - previous < BURST_GAP => runs[t] + 1,
                    _ => 1,
                };
                last[t] = Some(at);
                if missed {
                    largest_miss[t] = largest_miss[t].max(runs[t]);
                    prop_assert!(tracker.ceiling(&tuple(t), at) >= runs[t]);
                }
                for i in 0..3 {
                    let level = tracker.level(&tuple(i), at);
                    prop_assert!(level <= f64::from(largest_miss[i]) + 1e-9);
                    if !(missed && i == t) {
                        prop_assert!(level <= levels[i] + 1e-9, "{} rose without a miss", i);
                    }
                    prop_assert_eq!(tracker.ceiling(&tuple(i), at), pruned.ceiling(&tuple(i), at));
                }
                before = at;
            }
            let later = at + DEMAND_WINDOW + chrono::Duration::seconds(1);
            for i in 0..3 {
                prop_assert_eq!(tracker.level(&tuple(i), later), 0.0);
            }
            tracker.prune(later);
            prop_assert!(tracker.tuples.is_empty());
        }
    }
}
