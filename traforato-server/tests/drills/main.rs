//! Reliability drills: a real fleet (one broker, several workers each in a network namespace
//! of its own, the container backend, prod mode) under load from the Rust client, with
//! faults injected: steady load (and, with `TRAFORATO_DRILL_SOAK_SECONDS`, the soak), a worker
//! killed, the broker restarted, a worker cut off, a full state dir, a memory-tight cgroup,
//! a TTL storm. Each drill checks its invariants, counts leaks (zero) and prints its figures.
//!
//! CI runs the short version (`cargo test`, as root); `scripts/drills` runs the long one.
//! Scale with `TRAFORATO_DRILL_CLIENTS`, `TRAFORATO_DRILL_SECONDS`, `TRAFORATO_DRILL_WORKERS`,
//! `TRAFORATO_DRILL_STORM`; `TRAFORATO_DRILL_REPORT` names a file the reports are appended
//! to as JSON lines. The drills run one at a time (they share the machine's two cores).

mod faults;
mod fleet;
mod load;
mod pressure;
mod steady;
mod storm;

use std::time::{Duration, Instant};

use fleet::{Fleet, FleetSpec};
use load::Stats;
use traforato_client::{Client, Sandbox};

/// One drill at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The size of a run, from the environment (defaults: the short version CI runs).
#[derive(Debug, Clone)]
pub struct Scale {
    /// Load clients.
    pub clients: usize,
    /// Seconds of each load phase.
    pub seconds: Duration,
    /// Workers of the fleets that have several.
    pub workers: usize,
    /// Sandboxes of the TTL storm.
    pub storm: usize,
    /// The soak's length, when one is asked for.
    pub soak: Option<Duration>,
}

fn env_number(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) if !v.is_empty() => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a whole number")),
        _ => default,
    }
}

/// The scale of this run.
pub fn scale() -> Scale {
    let soak = env_number("TRAFORATO_DRILL_SOAK_SECONDS", 0);
    Scale {
        clients: env_number("TRAFORATO_DRILL_CLIENTS", 2) as usize,
        seconds: Duration::from_secs(env_number("TRAFORATO_DRILL_SECONDS", 8)),
        workers: (env_number("TRAFORATO_DRILL_WORKERS", 3) as usize).max(2),
        storm: env_number("TRAFORATO_DRILL_STORM", 100) as usize,
        soak: (soak > 0).then(|| Duration::from_secs(soak)),
    }
}

/// Takes the drills' lock; `None` (after saying why) where drills cannot run.
async fn begin(drill: &str) -> Option<tokio::sync::MutexGuard<'static, ()>> {
    if let Some(why) = fleet::unsupported() {
        eprintln!("skipping drill {drill}: {why}");
        return None;
    }
    Some(SERIAL.lock().await)
}

/// The load clients of a run.
fn clients(fleet: &Fleet, scale: &Scale) -> Vec<Client> {
    (0..scale.clients)
        .map(|c| fleet.client(&format!("drill_client_{c}")))
        .collect()
}

/// The worker id inside a sandbox id (`sbx-<broker>-<worker>-<uuid>`).
fn worker_of(sandbox: &Sandbox) -> String {
    traforato_core::id::SandboxId::parse(sandbox.id())
        .expect("a sandbox id")
        .worker_id()
        .to_string()
}

/// Creates `n` long-lived sandboxes as `client` (the ones a drill holds across its fault).
async fn hold(client: &Client, n: usize) -> Vec<Sandbox> {
    let stats = std::sync::Mutex::new(Stats::default());
    let mut held = Vec::new();
    for _ in 0..n {
        let sandbox = load::create(client, &stats, Duration::from_secs(900))
            .await
            .unwrap_or_else(|| panic!("a held sandbox: {:?}", stats.lock().unwrap()));
        held.push(sandbox);
    }
    held
}

/// Uses every sandbox in `held`; fails the drill when one does not work.
async fn check_held(held: &[Sandbox], what: &str) {
    let stats = std::sync::Mutex::new(Stats::default());
    for (n, sandbox) in held.iter().enumerate() {
        assert!(
            load::use_sandbox(sandbox, &stats, n).await,
            "{what}: held sandbox {} on {}: {:?}",
            sandbox.id(),
            worker_of(sandbox),
            stats.lock().unwrap().error_lines()
        );
    }
}

/// Every ready hint the broker holds answers: at rest, once events in flight have arrived,
/// the broker's ready sandboxes are exactly the workers' (the sandbox directories of their
/// state dirs less their live sandboxes: a stale hint would make the broker's count larger,
/// an unannounced sandbox the workers'). Returns how many there are.
async fn check_hints(fleet: &Fleet) -> usize {
    let deadline = Instant::now() + fleet::WAIT;
    loop {
        let hints = fleet.ready_hints().await;
        let mut live = Vec::new();
        for n in 0..fleet.workers.len() {
            live.push(
                fleet
                    .worker_metric(n, "traforato_worker_sandboxes_live")
                    .await
                    .unwrap_or(f64::NAN),
            );
        }
        let dirs: Vec<usize> = fleet
            .workers
            .iter()
            .map(|w| w.sandbox_dirs().len())
            .collect();
        // Live sandboxes may remain: a create whose answer a fault cut off (its client saw
        // an error) made one all the same, which lives until its TTL.
        let ready: f64 = dirs
            .iter()
            .zip(&live)
            .map(|(d, l)| (*d as f64 - l).max(0.0))
            .sum();
        // Read again: no event arrived in between.
        if ready == hints as f64 && fleet.ready_hints().await == hints {
            return hints;
        }
        assert!(
            Instant::now() < deadline,
            "the broker's hints ({hints}) never matched the workers' ready sandboxes \
             (directories {dirs:?}, live {live:?})\n{}\n{}",
            fleet.availability().await,
            fleet.log_tails()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Time since `start` in ms, rounded.
fn ms_since(start: Instant) -> u64 {
    u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// A fleet of `scale.workers` workers with one warm `host` sandbox each.
async fn standard_fleet(scale: &Scale) -> Fleet {
    Fleet::start(FleetSpec {
        workers: scale.workers,
        ..FleetSpec::default()
    })
    .await
}
