//! The burst row: a tight loop of creates (kept alive) against a worker whose warm pool is
//! full, twice, the pool refilling in between. The first burst outruns the pool (its
//! ceiling, `max-warm-per-tuple`, is 8); a burst that finds the pool empty raises that
//! ceiling to its size, so the pool the second burst meets is as large as the first was.

use std::time::{Duration, Instant};

use traforato_benches::stats::{ms, Summary};
use traforato_client::{Client, CreateSandbox};
use traforato_core::backend::VmBackend;

use crate::capacity::deployed;
use crate::shells::{cores, wait_for, BrokerShell, WorkerShell, WorkerSpec, VIRTUALIZATION};
use crate::{client_error, io_error, tuple, BenchError, Row, Verdict, IMAGE};

/// The ceiling of idle warm sandboxes per tuple before any burst (the deployed default).
const CEILING: u32 = 8;

/// How long the pool must not grow to count as refilled.
const STEADY: Duration = Duration::from_millis(1500);

/// One burst's creates: how long each took, how many were warm, when the last one returned.
struct Burst {
    creates: Vec<Duration>,
    warm: usize,
    ended: Instant,
}

/// `size` creates back to back through the broker, kept alive; then all deleted.
async fn burst(client: &Client, size: usize) -> Result<Burst, BenchError> {
    let mut live = Vec::new();
    let mut creates = Vec::new();
    let mut warm = 0;
    for _ in 0..size {
        let started = Instant::now();
        let sandbox = client
            .create_sandbox(CreateSandbox {
                virtualization: VIRTUALIZATION.to_string(),
                cpu: 1,
                ttl: Some(Duration::from_secs(600)),
                ..CreateSandbox::new(IMAGE)
            })
            .await
            .map_err(client_error("create in a burst"))?;
        creates.push(started.elapsed());
        if sandbox
            .created_info()
            .is_some_and(|c| c.start_type == "warm")
        {
            warm += 1;
        }
        live.push(sandbox);
    }
    let ended = Instant::now();
    for sandbox in live {
        sandbox
            .delete()
            .await
            .map_err(client_error("delete a burst's sandbox"))?;
    }
    Ok(Burst {
        creates,
        warm,
        ended,
    })
}

/// Waits until the worker's pool has stopped growing; returns its size and when it last grew,
/// counted from `since`.
async fn refilled(worker: &WorkerShell, since: Instant) -> Result<(usize, Duration), BenchError> {
    let started = Instant::now();
    let tuple = tuple();
    let (mut size, mut steady, mut grew_at) = (worker.ready(&tuple), Instant::now(), started);
    while steady.elapsed() < STEADY {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let now = worker.ready(&tuple);
        if now != size {
            size = now;
            steady = Instant::now();
            grew_at = steady;
        }
        if started.elapsed() > Duration::from_secs(120) {
            return Err(BenchError::Check(
                "the warm pool did not settle in 2 minutes".to_string(),
            ));
        }
    }
    Ok((size, grew_at.saturating_duration_since(since)))
}

/// Measures the row with bursts of `size` creates.
pub async fn burst_row(
    size: usize,
    broker: &BrokerShell,
    backend: &std::sync::Arc<dyn VmBackend>,
    client: &Client,
) -> Result<Row, BenchError> {
    let max_live = cores() * 32;
    let worker = WorkerShell::start(
        broker,
        backend.clone(),
        WorkerSpec {
            id: "burst",
            pre_pull: Vec::new(),
            max_live,
            capacity: Some(deployed(CEILING)),
        },
    )
    .await
    .map_err(io_error("start the burst worker"))?;
    let result = async {
        // One create makes the tuple known (demand); the pool fills to its ceiling.
        burst(client, 1).await?;
        wait_for(Duration::from_secs(60), || {
            worker.ready(&tuple()) >= CEILING as usize
        })
        .await
        .map_err(io_error("wait for the warm pool"))?;
        let (before, _) = refilled(&worker, Instant::now()).await?;
        let first = burst(client, size).await?;
        let (after, refill) = refilled(&worker, first.ended).await?;
        let second = burst(client, size).await?;
        Ok::<_, BenchError>((before, first, after, refill, second))
    }
    .await;
    worker
        .stop()
        .await
        .map_err(io_error("stop the burst worker"))?;
    let (before, first, after, refill, second) = result?;
    let (a, b) = (
        Summary::of(&first.creates).expect("a burst has creates"),
        Summary::of(&second.creates).expect("a burst has creates"),
    );
    say!(
        "  1st burst: {}/{size} warm (pool of {before}), create p50 {} ms, p90 {} ms",
        first.warm,
        ms(a.median),
        ms(a.p90)
    );
    say!(
        "  pool after it: {after} ready, its last sandbox {:.2} s after the burst's last create",
        refill.as_secs_f64()
    );
    say!(
        "  2nd burst: {}/{size} warm, create p50 {} ms, p90 {} ms",
        second.warm,
        ms(b.median),
        ms(b.p90)
    );
    Ok(Row {
        measure: format!("burst of {size} creates: warm, 1st -> 2nd"),
        system: format!("{}/{size} -> {}/{size} warm", first.warm, second.warm),
        floor: format!("pool {before} -> {after}"),
        ratio: "-".to_string(),
        target: "2nd burst warmer",
        verdict: if second.warm > first.warm || second.warm == size {
            Verdict::Met
        } else {
            Verdict::NotMet
        },
        figures: vec![
            ("warm_first", first.warm as f64),
            ("warm_second", second.warm as f64),
            ("pool_before", before as f64),
            ("pool_after", after as f64),
            ("refill_s", refill.as_secs_f64()),
            ("p50_ms", a.median.as_secs_f64() * 1000.0),
            ("second_p50_ms", b.median.as_secs_f64() * 1000.0),
        ],
        series: vec![
            crate::plotted("burst: 1st", &first.creates),
            crate::plotted("burst: 2nd", &second.creates),
        ],
    })
}
