//! Plugs a placement policy of your own into a broker: a bin-packing [`Scheduler`].
//!
//! The broker asks its scheduler where each create goes: a ready sandbox on some worker
//! (warm) or a boot on some worker (cold); and, after a cold one, which worker grows the
//! tuple's warm pool. The default, `LeastLoaded`, spreads sandboxes over workers, weighing
//! load against warmth. `Pack` below does the opposite: it fills the most loaded worker that
//! still has room (taking a ready sandbox there when it has one), so that idle workers stay
//! idle (and could be scaled down). Both decline when every worker is full, which the broker
//! turns into `503 no placement capacity`. `Pack` keeps the default for the warm pool.
//!
//! Two static workers are registered in-process; the example places the same creates with
//! both policies and prints where each one went. No worker runs: a placement is only the
//! broker's decision (over HTTP, a `307` to the chosen worker).
//!
//! Run it with `cargo run -p traforato-examples --example custom_scheduler`.

use std::error::Error;
use std::sync::Arc;

use traforato_core::api::CreateSandboxRequest;
use traforato_core::broker::{Broker, BrokerConfig, BrokerError, StaticWorker};
use traforato_core::clock::SystemClock;
use traforato_core::scheduler::{Choice, LeastLoaded, Scheduler, WorkerLoad};
use traforato_core::telemetry::Metrics;
use traforato_core::tuple::SandboxTuple;

type BoxError = Box<dyn Error + Send + Sync>;

/// Bin-packing: the most loaded worker with room for one more sandbox of the tuple's cpu,
/// warm when it has a ready sandbox; ties go to the earliest registered. `None` when no
/// worker has room.
///
/// Stricter than the default: it counts the creates placed since a worker's last report as
/// live (`expected_live`), where `has_room` goes by the report alone (most of those creates
/// are short-lived and gone by the time a burst is over).
///
/// Like every scheduler it is pure (no I/O, no clock) and deterministic for its inputs.
#[derive(Debug, Default, Clone, Copy)]
struct Pack;

impl Scheduler for Pack {
    fn place(&self, tuple: &SandboxTuple, candidates: &[WorkerLoad]) -> Option<Choice> {
        candidates
            .iter()
            .filter(|w| w.has_room(tuple.cpu) && w.expected_live() < w.max_live_sandboxes)
            // Highest load first, then lowest registration order.
            .max_by_key(|w| (w.load_ppm(tuple.cpu), std::cmp::Reverse(w.order)))
            .map(WorkerLoad::choice)
    }
}

/// A broker over two static workers: `big` (4 cores, 4 sandboxes) and `small` (2 and 2).
fn broker_with(scheduler: Arc<dyn Scheduler>) -> Broker {
    let broker = Broker::new(
        BrokerConfig {
            default_virtualization: "fake".to_string(),
            ..BrokerConfig::default()
        },
        Arc::new(SystemClock),
        scheduler,
        Arc::new(Metrics::new(false)),
    );
    for (id, cores) in [("big", 4), ("small", 2)] {
        broker.register_static_worker(StaticWorker {
            worker_id: id.to_string(),
            hostname: format!("{id}.example"),
            base_url: format!("http://{id}.example:8081"),
            hardware_sku: "general".to_string(),
            total_cores: cores,
            total_memory_mib: cores * 1024,
            max_live_sandboxes: cores,
        });
    }
    broker
}

/// Places `count` one-cpu creates and returns where each went (`-` for a refusal).
fn place(broker: &Broker, count: usize) -> Result<Vec<String>, BoxError> {
    let request = CreateSandboxRequest {
        image: "demo".to_string(),
        cpu: 1,
        ..CreateSandboxRequest::default()
    };
    let mut chosen = Vec::new();
    for _ in 0..count {
        match broker.place_create(&request, None) {
            Ok(placement) => chosen.push(placement.worker_id.to_string()),
            Err(BrokerError::NoPlacementCapacity) => chosen.push("-".to_string()),
            Err(other) => return Err(other.into()),
        }
    }
    Ok(chosen)
}

pub fn main() -> Result<(), BoxError> {
    const CREATES: usize = 7;
    let spread = place(&broker_with(Arc::new(LeastLoaded)), CREATES)?;
    let packed = place(&broker_with(Arc::new(Pack)), CREATES)?;

    println!("{CREATES} cold creates of 1 cpu on workers big (4 slots) and small (2 slots):");
    println!("{:<8} {:<12} {:<12}", "create", "LeastLoaded", "Pack");
    for (n, (a, b)) in spread.iter().zip(&packed).enumerate() {
        println!("{:<8} {:<12} {:<12}", n + 1, a, b);
    }
    println!("(- = refused with 503 no placement capacity)");

    // Pack fills `big` first, then `small`, then refuses. LeastLoaded keeps both equally
    // loaded; without a report from the workers saying they are full it keeps placing (a
    // worker that is really full refuses, and reports it at once).
    let expected_pack = ["big", "big", "big", "big", "small", "small", "-"];
    if packed != expected_pack {
        return Err(format!("Pack placed {packed:?}, expected {expected_pack:?}").into());
    }
    let expected_spread = ["big", "small", "big", "big", "small", "big", "big"];
    if spread != expected_spread {
        return Err(format!("LeastLoaded placed {spread:?}, expected {expected_spread:?}").into());
    }
    Ok(())
}
