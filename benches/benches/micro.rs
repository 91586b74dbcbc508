//! Criterion micro benches of the hot paths that need nothing external: broker placement
//! (warm: pop a ready hint; cold: ask the scheduler), the sandbox-scoped redirect decision,
//! a worker's warm claim through `Worker::create_sandbox` with the fake backend and a
//! pre-filled pool, warm-pool targets from a demand history, the availability text, and
//! sandbox id parsing.
//!
//! Run with `cargo bench -p traforato-benches` (add `-- <filter>` to pick some).

use std::time::{Duration, Instant};

use chrono::Utc;
use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion};
use tokio::runtime::Runtime;
use tokio::sync::oneshot;
use traforato_benches::fixtures;
use traforato_core::auth::Principal;
use traforato_core::backend::fake::FakeBackend;
use traforato_core::id::{ComponentId, LocalVmId, SandboxId};
use traforato_core::tuple::SandboxTuple;
use traforato_core::warm::DemandTracker;
use traforato_core::worker::{CreateOutcome, Placement, Worker};

fn broker_placement(c: &mut Criterion) {
    let mut group = c.benchmark_group("broker");
    let request = fixtures::create_request();
    let tuple = fixtures::tuple();

    // Warm: one ready hint is announced per placement (not timed) and popped by it.
    let broker = fixtures::broker(8);
    group.bench_function("place_create/warm_hint", |b| {
        b.iter_batched(
            || fixtures::add_ready_hint(&broker, 0, &tuple),
            |_hint| {
                let placement = broker.place_create(&request, None).expect("placed");
                assert!(placement.local_vm_id.is_some(), "expected a warm placement");
                placement
            },
            BatchSize::SmallInput,
        )
    });

    // Cold: no hints, the scheduler (least loaded) chooses among 8 workers.
    let broker = fixtures::broker(8);
    group.bench_function("place_create/cold_8_workers", |b| {
        b.iter(|| {
            let placement = broker.place_create(&request, None).expect("placed");
            assert!(placement.local_vm_id.is_none(), "expected a cold placement");
            placement
        })
    });

    // The redirect decision of a sandbox-scoped request (`GET /sandboxes/{id}` -> 307).
    let broker = fixtures::broker(8);
    let id = SandboxId::new(
        broker.config().broker_id.clone(),
        ComponentId::parse(&fixtures::worker_id(3)).expect("valid id"),
        LocalVmId::new_random(),
    )
    .to_string();
    let path = format!("/sandboxes/{id}");
    group.bench_function("route_sandbox", |b| {
        b.iter(|| {
            broker
                .route_sandbox(black_box(&id), black_box(&path), None)
                .expect("routed")
        })
    });

    // `GET /metrics/sandboxes` with 16 workers and 256 hints over 8 tuples.
    let broker = fixtures::broker(16);
    for n in 0..256usize {
        let tuple = SandboxTuple::normalize("fake", &format!("image{}", n % 8), 1, "fake");
        fixtures::add_ready_hint(&broker, n % 16, &tuple);
    }
    group.bench_function("availability_text/16_workers_256_hints", |b| {
        b.iter(|| broker.availability_text())
    });
    group.finish();
}

fn sandbox_id_parse(c: &mut Criterion) {
    let id = SandboxId::new(
        ComponentId::parse("broker_local").expect("valid id"),
        ComponentId::parse("worker_a").expect("valid id"),
        LocalVmId::new_random(),
    )
    .to_string();
    c.bench_function("id/sandbox_id_parse", |b| {
        b.iter(|| SandboxId::parse(black_box(&id)).expect("valid id"))
    });
}

/// Ready VMs kept by the worker under test; claims are timed in batches of at most this.
const POOL: u32 = 64;

/// Waits, polling, until the worker has at least `n` ready sandboxes.
async fn wait_for_pool(worker: &Worker, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while fixtures::ready(worker) < n {
        assert!(Instant::now() < deadline, "the warm pool did not refill");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Times `iters` warm claims. Each batch gets a fresh worker (so that its demand history
/// stays short; see the `warm/demand_targets` benches for long histories) whose pool was
/// filled beforehand (untimed); with no free slot, nothing is refilled while claims run.
async fn timed_claims(iters: u64) -> Duration {
    let principal = Principal::dev();
    let mut total = Duration::ZERO;
    let mut left = iters;
    let mut created = Vec::with_capacity(POOL as usize);
    while left > 0 {
        let batch = left.min(u64::from(POOL));
        let worker = fixtures::worker(FakeBackend::new(), POOL, POOL);
        let (stop, stopped) = oneshot::channel::<()>();
        let running = tokio::spawn(worker.clone().run(async {
            let _ = stopped.await;
        }));
        wait_for_pool(&worker, batch as usize).await;
        let started = Instant::now();
        for _ in 0..batch {
            let outcome = worker
                .create_sandbox(&principal, fixtures::create_request(), Placement::default())
                .await;
            created.push(outcome);
        }
        total += started.elapsed();
        for outcome in created.drain(..) {
            match outcome {
                Ok(CreateOutcome::Created(sandbox)) => {
                    assert_eq!(sandbox.start_type, "warm", "a claim booted a sandbox");
                }
                other => panic!("create failed: {other:?}"),
            }
        }
        let _ = stop.send(());
        running.await.expect("worker stopped");
        left -= batch;
    }
    total
}

fn worker_claim(c: &mut Criterion) {
    let runtime = Runtime::new().expect("tokio runtime");
    let mut group = c.benchmark_group("worker");
    group.sample_size(30);
    group.bench_function("create_sandbox/warm_claim", |b| {
        b.to_async(&runtime).iter_custom(timed_claims)
    });
    group.finish();
}

/// Warm targets from a demand history of `events` creates spread over the last hour and
/// four tuples: the worker computes them on every create and pool change.
fn demand_targets(c: &mut Criterion) {
    let mut group = c.benchmark_group("warm");
    let now = Utc::now();
    for events in [1_000u32, 10_000, 100_000] {
        let mut tracker = DemandTracker::new();
        let window_ms = 3_600_000 / i64::from(events);
        for n in 0..events {
            let tuple = SandboxTuple::normalize("fake", &format!("image{}", n % 4), 1, "fake");
            let age = chrono::Duration::milliseconds(i64::from(events - n) * window_ms);
            tracker.record(tuple, now - age);
        }
        group.bench_function(format!("demand_targets/{events}_events"), |b| {
            b.iter(|| tracker.targets(black_box(64), now))
        });
    }
    group.finish();
}

criterion_group!(
    benches,
    broker_placement,
    sandbox_id_parse,
    worker_claim,
    demand_targets
);
criterion_main!(benches);
