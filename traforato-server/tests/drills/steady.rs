//! Steady load, and the soak: clients loop create → exec → run code → write/read → delete
//! while each worker's resident memory, open fds and threads are sampled; no operation may
//! fail, and once the load stops each worker's fds and threads are back where they were.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::fleet::{usage, Fleet, FleetSpec, Usage};
use crate::load::Load;
use crate::{begin, check_hints, clients, scale};

/// Least-squares slope of `(x, y)` points; 0 with fewer than two.
fn slope(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    if points.len() < 2 {
        return 0.0;
    }
    let mx = points.iter().map(|p| p.0).sum::<f64>() / n;
    let my = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    if sxx == 0.0 {
        0.0
    } else {
        sxy / sxx
    }
}

/// Per worker: samples over time (seconds since start, usage).
type Samples = Vec<Vec<(f64, Usage)>>;

/// Slopes per hour of the second half of the samples (after the warm-up), per worker:
/// (RSS MiB/h, fds/h, threads/h).
fn slopes(samples: &Samples) -> Vec<(f64, f64, f64)> {
    samples
        .iter()
        .map(|worker| {
            let half = &worker[worker.len() / 2..];
            let per_hour = |f: &dyn Fn(&Usage) -> f64| {
                let points: Vec<(f64, f64)> = half.iter().map(|(t, u)| (*t, f(u))).collect();
                slope(&points) * 3600.0
            };
            (
                per_hour(&|u| u.rss_kib as f64 / 1024.0),
                per_hour(&|u| u.fds as f64),
                per_hour(&|u| u.threads as f64),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steady_load_holds_without_errors_or_growth() {
    let Some(_serial) = begin("steady load").await else {
        return;
    };
    let scale = scale();
    // No warm floor: the workers start with no sandbox, and end with none once drained.
    let fleet = Fleet::start(FleetSpec {
        workers: scale.workers,
        warm: 0,
        ..FleetSpec::default()
    })
    .await;
    let pids: Vec<i32> = fleet.workers.iter().map(|w| w.pid().unwrap()).collect();
    let idle_before: Vec<Usage> = pids.iter().map(|p| usage(*p).unwrap()).collect();
    let dirs_before: Vec<usize> = fleet
        .workers
        .iter()
        .map(|w| w.sandbox_dirs().len())
        .collect();

    let length = scale.soak.unwrap_or(scale.seconds);
    let every = if scale.soak.is_some() {
        Duration::from_secs(10)
    } else {
        Duration::from_millis(500)
    };
    let load = Load::start(clients(&fleet, &scale));
    let start = Instant::now();
    let mut samples: Samples = vec![Vec::new(); pids.len()];
    let mut last_line = Instant::now();
    while start.elapsed() < length {
        tokio::time::sleep(every).await;
        let t = start.elapsed().as_secs_f64();
        for (n, pid) in pids.iter().enumerate() {
            samples[n].push((t, usage(*pid).expect("the worker runs")));
        }
        if scale.soak.is_some() && last_line.elapsed() >= Duration::from_secs(60) {
            last_line = Instant::now();
            eprintln!(
                "soak: {:.0}/{:.0} s, {} operations, {} failed",
                t,
                length.as_secs_f64(),
                load.successes(),
                load.failures()
            );
        }
    }
    let (stats, elapsed) = load.stop().await;

    // Every warm hint answers; then each worker is drained (its warm pool goes) and, with no
    // sandbox left, must hold no more fds and threads than when it started with none.
    let hints = check_hints(&fleet).await;
    for n in 0..fleet.workers.len() {
        fleet.drain_worker(n);
    }
    for (n, before) in dirs_before.iter().enumerate() {
        fleet
            .wait_for("a drained worker without sandboxes", || async {
                fleet
                    .worker_metric(n, "traforato_worker_sandboxes_live")
                    .await
                    == Some(0.0)
                    && fleet.workers[n].sandbox_dirs().len() <= *before
            })
            .await;
    }
    // Connections of the load close, blocking threads wind down (tokio keeps them 10 s).
    let settle = Instant::now();
    let idle_after: Vec<Usage> = loop {
        let now: Vec<Usage> = pids.iter().map(|p| usage(*p).unwrap()).collect();
        let back = now
            .iter()
            .zip(&idle_before)
            .all(|(a, b)| a.fds <= b.fds && a.threads <= b.threads);
        if back || settle.elapsed() > Duration::from_secs(15) {
            break now;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let leaks = fleet.finish();

    let slopes = slopes(&samples);
    let mut human = stats.table(elapsed);
    for (n, ((before, after), (rss, fds, threads))) in
        idle_before.iter().zip(&idle_after).zip(&slopes).enumerate()
    {
        human.push_str(&format!(
            "worker {n}: idle before rss {:.1} MiB, fds {}, threads {}; idle after rss {:.1} MiB, \
             fds {}, threads {}; slopes under load (2nd half): rss {rss:+.1} MiB/h, fds \
             {fds:+.1}/h, threads {threads:+.1}/h\n",
            before.rss_kib as f64 / 1024.0,
            before.fds,
            before.threads,
            after.rss_kib as f64 / 1024.0,
            after.fds,
            after.threads,
        ));
    }
    human.push_str(&format!(
        "{hints} warm hints checked; leaks: {}\n",
        leaks.summary()
    ));
    crate::load::report(
        if scale.soak.is_some() {
            "soak"
        } else {
            "steady load"
        },
        &human,
        json!({
            "clients": scale.clients,
            "workers": pids.len(),
            "load": stats.to_json(elapsed),
            "idle_before": idle_before.iter().map(|u| json!({"rss_kib": u.rss_kib, "fds": u.fds, "threads": u.threads})).collect::<Vec<_>>(),
            "idle_after": idle_after.iter().map(|u| json!({"rss_kib": u.rss_kib, "fds": u.fds, "threads": u.threads})).collect::<Vec<_>>(),
            "slopes_per_hour": slopes.iter().map(|(r, f, t)| json!({"rss_mib": r, "fds": f, "threads": t})).collect::<Vec<_>>(),
            "hints_checked": hints,
            "leaks": leaks.summary(),
        }),
    );
    leaks.assert_none();
    assert_eq!(stats.failures(), 0, "{human}");
    assert!(stats.duplicates().is_empty(), "{:?}", stats.duplicates());
    assert!(stats.cycles > 0, "{human}");
    for (n, (after, before)) in idle_after.iter().zip(&idle_before).enumerate() {
        assert!(
            after.fds <= before.fds && after.threads <= before.threads,
            "worker {n} holds more fds or threads idle after the load: {human}"
        );
    }
}
