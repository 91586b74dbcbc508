//! Cold placement policy: which worker boots a sandbox when no ready one is hinted.
//!
//! A [`Scheduler`] is pure: no I/O, no clock, and deterministic for its inputs. The broker
//! hands it the active workers that match the request's hardware SKU, with the capacity they
//! last reported plus what the broker placed on them since.

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
    /// Sandboxes live at the last heartbeat.
    pub live_sandboxes: u64,
    /// Cores allocated at the last heartbeat.
    pub allocated_cores: u64,
    /// Memory allocated at the last heartbeat.
    pub allocated_memory_mib: u64,
    /// Cold placements sent to this worker since its last heartbeat.
    pub placed_since_heartbeat: u64,
}

impl WorkerLoad {
    /// Live plus recently placed sandboxes.
    pub fn expected_live(&self) -> u64 {
        self.live_sandboxes + self.placed_since_heartbeat
    }

    /// Load in parts per million of the tightest reported resource (sandbox slots or cores);
    /// workers that report nothing count as empty.
    pub fn load_ppm(&self, cpu: u32) -> u64 {
        let cores = self.allocated_cores + self.placed_since_heartbeat * u64::from(cpu);
        let slots = (self.expected_live() * 1_000_000)
            .checked_div(self.max_live_sandboxes)
            .unwrap_or(0);
        let cpu_load = (cores * 1_000_000)
            .checked_div(self.total_cores)
            .unwrap_or(0);
        slots.max(cpu_load)
    }

    /// False when the worker reported limits that one more sandbox of `cpu` would exceed.
    pub fn has_room(&self, cpu: u32) -> bool {
        if self.max_live_sandboxes > 0 && self.expected_live() >= self.max_live_sandboxes {
            return false;
        }
        if self.total_cores > 0 {
            let cores = self.allocated_cores + self.placed_since_heartbeat * u64::from(cpu);
            if cores + u64::from(cpu) > self.total_cores {
                return false;
            }
        }
        true
    }
}

/// Picks the worker for a cold create.
pub trait Scheduler: Send + Sync + 'static {
    /// Chooses one of `candidates` (all active and SKU-matching) for `tuple`, or `None` when
    /// none should take it. Must be deterministic for its inputs.
    fn choose(&self, tuple: &SandboxTuple, candidates: &[WorkerLoad]) -> Option<ComponentId>;
}

/// The default policy: the least loaded worker with room; ties go to the earliest registered.
/// When every worker is full it still picks the least loaded one, so that the worker answers
/// with its precise capacity error rather than the broker guessing from stale reports.
#[derive(Debug, Default, Clone, Copy)]
pub struct LeastLoaded;

impl Scheduler for LeastLoaded {
    fn choose(&self, tuple: &SandboxTuple, candidates: &[WorkerLoad]) -> Option<ComponentId> {
        let key = |w: &&WorkerLoad| (!w.has_room(tuple.cpu), w.load_ppm(tuple.cpu), w.order);
        candidates
            .iter()
            .min_by_key(key)
            .map(|w| w.worker_id.clone())
    }
}

/// The prototype's policy: the earliest registered candidate, whatever its load.
#[derive(Debug, Default, Clone, Copy)]
pub struct FirstRegistered;

impl Scheduler for FirstRegistered {
    fn choose(&self, _tuple: &SandboxTuple, candidates: &[WorkerLoad]) -> Option<ComponentId> {
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
            worker_id: ComponentId::parse(id).unwrap(),
            order,
            total_cores: 8,
            total_memory_mib: 8192,
            max_live_sandboxes: max,
            live_sandboxes: live,
            allocated_cores: live,
            allocated_memory_mib: live * 1024,
            placed_since_heartbeat: 0,
        }
    }

    fn tuple() -> SandboxTuple {
        SandboxTuple {
            virtualization: "fake".into(),
            image: "img".into(),
            cpu: 1,
        }
    }

    #[test]
    fn least_loaded_wins() {
        let c = [w("a", 0, 4, 3), w("b", 1, 4, 1)];
        assert_eq!(LeastLoaded.choose(&tuple(), &c).unwrap().as_str(), "b");
    }

    #[test]
    fn ties_go_to_earliest() {
        let c = [w("b", 1, 4, 1), w("a", 0, 4, 1)];
        assert_eq!(LeastLoaded.choose(&tuple(), &c).unwrap().as_str(), "a");
    }

    #[test]
    fn recent_placements_count() {
        let mut a = w("a", 0, 4, 0);
        a.placed_since_heartbeat = 3;
        let c = [a, w("b", 1, 4, 1)];
        assert_eq!(LeastLoaded.choose(&tuple(), &c).unwrap().as_str(), "b");
    }

    #[test]
    fn full_workers_go_last_but_still_chosen() {
        let mut b = w("b", 1, 100, 90);
        b.total_cores = 128;
        let c = [w("a", 0, 2, 2), b];
        assert_eq!(LeastLoaded.choose(&tuple(), &c).unwrap().as_str(), "b");
        let c = [w("a", 0, 2, 2)];
        assert_eq!(LeastLoaded.choose(&tuple(), &c).unwrap().as_str(), "a");
        assert!(LeastLoaded.choose(&tuple(), &[]).is_none());
    }

    #[test]
    fn first_registered() {
        let c = [w("b", 1, 4, 0), w("a", 0, 4, 4)];
        assert_eq!(FirstRegistered.choose(&tuple(), &c).unwrap().as_str(), "a");
    }
}
