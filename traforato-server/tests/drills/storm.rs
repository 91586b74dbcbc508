//! The TTL storm: many sandboxes whose leases run out within the same second are all reaped,
//! none before its time, and nothing of them is left.

use std::time::{Duration, Instant};

use chrono::Utc;
use futures::StreamExt;
use serde_json::json;
use traforato_client::Sandbox;

use crate::fleet::{self, Fleet, FleetSpec};
use crate::load::{percentile_ms, Stats};
use crate::{begin, ms_since, scale};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ttl_storm_reaps_every_sandbox_and_none_early() {
    let Some(_serial) = begin("TTL storm").await else {
        return;
    };
    let scale = scale();
    let workers = scale.workers;
    let per_worker = scale.storm.div_ceil(workers) + 8;
    let fleet = Fleet::start(FleetSpec {
        workers,
        warm: 0,
        extra_yaml: format!(
            "max-live-sandboxes: {per_worker}\ncapacity:\n  cpu-overcommit: {per_worker}\n  \
             memory-overcommit: {per_worker}\n"
        ),
        ..FleetSpec::default()
    })
    .await;
    let client = fleet.client("drill_storm");
    // Made with a long lease, in parallel...
    let made_at = Instant::now();
    let stats = std::sync::Mutex::new(Stats::default());
    let sandboxes: Vec<Sandbox> = futures::stream::iter(0..scale.storm)
        .map(|_| crate::load::create(&client, &stats, Duration::from_secs(600)))
        .buffer_unordered(8)
        .filter_map(|s| async move { s })
        .collect()
        .await;
    let made_ms = ms_since(made_at);
    let stats = stats.into_inner().unwrap();
    assert_eq!(
        sandboxes.len(),
        scale.storm,
        "the storm's creates: {:?}",
        stats.error_lines()
    );
    // ...then every lease set to run out at about the same moment.
    let ttl = Duration::from_secs(4 + (scale.storm / 250) as u64);
    let expiries: Vec<chrono::DateTime<Utc>> = futures::stream::iter(&sandboxes)
        .map(|s| async move { s.set_lease(ttl).await.expect("set a lease").expires_at })
        .buffered(16)
        .collect()
        .await;
    let first = *expiries.iter().min().unwrap();
    let last = *expiries.iter().max().unwrap();

    // Rounds over every sandbox until all are gone: a 404 before its expiry is early.
    let mut gone_after: Vec<Option<i64>> = vec![None; sandboxes.len()];
    let mut early = Vec::new();
    let mut rounds = 0;
    let deadline = Instant::now() + ttl + fleet::WAIT;
    while gone_after.iter().any(Option::is_none) {
        assert!(
            Instant::now() < deadline,
            "the storm was not reaped: {} left",
            gone_after.iter().filter(|g| g.is_none()).count()
        );
        rounds += 1;
        let pending: Vec<usize> = (0..sandboxes.len())
            .filter(|i| gone_after[*i].is_none())
            .collect();
        let answers: Vec<(usize, Option<u16>, chrono::DateTime<Utc>)> =
            futures::stream::iter(pending)
                .map(|i| {
                    let sandbox = &sandboxes[i];
                    async move {
                        let status = match sandbox.info().await {
                            Ok(_) => Some(200),
                            Err(err) => err.status(),
                        };
                        // The answer's time: a 404 received before the expiry was early.
                        (i, status, Utc::now())
                    }
                })
                .buffer_unordered(16)
                .collect()
                .await;
        for (i, status, answered) in answers {
            match status {
                Some(200) => {}
                Some(404) => {
                    let late = (answered - expiries[i]).num_milliseconds();
                    if late < 0 {
                        early.push((sandboxes[i].id().to_string(), late));
                    }
                    gone_after[i] = Some(late);
                }
                other => panic!("a storm sandbox answered {other:?}"),
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Their directories and cgroups go too (named by the sandboxes' local ids; what the
    // workers keep besides is their warm pools and spare inits).
    let local_ids: std::collections::BTreeSet<String> = sandboxes
        .iter()
        .map(|s| s.id()[s.id().len() - 36..].to_string())
        .collect();
    // Teardowns take CPU (unmounts, cgroup removal): allow 50 ms each on top.
    let teardowns = fleet::WAIT + Duration::from_millis(50) * scale.storm as u32;
    fleet
        .wait_within(
            "every storm sandbox's directory and cgroup to go",
            teardowns,
            || async {
                fleet.workers.iter().all(|w| {
                    w.sandbox_dirs().is_disjoint(&local_ids) && w.cgroups().is_disjoint(&local_ids)
                })
            },
        )
        .await;
    let cleaned_ms = (Utc::now() - last).num_milliseconds();
    let mut lateness: Vec<Duration> = gone_after
        .iter()
        .map(|g| Duration::from_millis(g.unwrap().max(0) as u64))
        .collect();
    lateness.sort();
    let leaks = fleet.finish();
    let spread_ms = (last - first).num_milliseconds();

    let human = format!(
        "{} sandboxes on {workers} workers made in {made_ms} ms ({} failed creates); leases of \
         {} s ending within {spread_ms} ms of each other; all reaped ({rounds} polling rounds): \
         seen gone p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms after their expiry (reaper every \
         1 s); every directory and cgroup gone {cleaned_ms} ms after the last expiry; early: {}; \
         leaks: {}\n",
        sandboxes.len(),
        stats.failures(),
        ttl.as_secs(),
        percentile_ms(&lateness, 50.0),
        percentile_ms(&lateness, 99.0),
        percentile_ms(&lateness, 100.0),
        early.len(),
        leaks.summary()
    );
    crate::load::report(
        "TTL storm",
        &human,
        json!({
            "sandboxes": sandboxes.len(),
            "workers": workers,
            "made_ms": made_ms,
            "ttl_s": ttl.as_secs(),
            "expiry_spread_ms": spread_ms,
            "gone_p50_ms": percentile_ms(&lateness, 50.0),
            "gone_p99_ms": percentile_ms(&lateness, 99.0),
            "gone_max_ms": percentile_ms(&lateness, 100.0),
            "cleaned_after_last_expiry_ms": cleaned_ms,
            "early": early.len(),
            "leaks": leaks.summary(),
        }),
    );
    leaks.assert_none();
    assert!(early.is_empty(), "reaped early: {early:?}");
}
