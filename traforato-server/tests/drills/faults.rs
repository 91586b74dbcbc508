//! Faults under load: a worker killed (`SIGKILL`), the broker killed and started again, a
//! worker cut off from the network for longer than its lease. Each drill holds sandboxes
//! across the fault, measures the recovery, and requires a clean load phase afterwards.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::json;
use traforato_client::Sandbox;

use crate::fleet::{self, CLIENT_TIMEOUT, LEASE};
use crate::load::{class, Load, Stats};
use crate::{
    begin, check_held, check_hints, clients, hold, ms_since, scale, standard_fleet, worker_of,
};

/// Asks each of `held` for an exec, expecting an error; the errors by class and the slowest
/// answer in ms.
async fn expect_errors(held: &[&Sandbox]) -> (BTreeMap<String, usize>, u64) {
    let mut errors = BTreeMap::new();
    let mut slowest = 0;
    for sandbox in held {
        let start = Instant::now();
        let err = sandbox
            .exec("true")
            .await
            .expect_err("a sandbox of an unreachable worker cannot answer");
        slowest = slowest.max(ms_since(start));
        *errors.entry(class(&err)).or_default() += 1;
    }
    (errors, slowest)
}

/// The start of each fault drill: a standard fleet, and two sandboxes per worker held by
/// `drill_owner` across the fault.
async fn fleet_holding_sandboxes(scale: &crate::Scale) -> (fleet::Fleet, Vec<Sandbox>) {
    let fleet = standard_fleet(scale).await;
    let held = hold(&fleet.client("drill_owner"), 2 * fleet.workers.len()).await;
    (fleet, held)
}

/// The held sandboxes on the first worker (the one the fault hits), and the others.
fn on_first_worker<'a>(
    fleet: &fleet::Fleet,
    held: &'a [Sandbox],
) -> (Vec<&'a Sandbox>, Vec<&'a Sandbox>) {
    let first = &fleet.workers[0].id;
    let (hit, spared): (Vec<&Sandbox>, Vec<&Sandbox>) =
        held.iter().partition(|s| worker_of(s) == *first);
    assert!(!hit.is_empty(), "placement spreads the held sandboxes");
    (hit, spared)
}

/// A load phase of `length` after recovery; it must not fail once.
async fn clean_phase(fleet: &fleet::Fleet, length: Duration, what: &str) -> (Stats, Duration) {
    let load = Load::start(clients(fleet, &scale()));
    tokio::time::sleep(length).await;
    let (stats, elapsed) = load.stop().await;
    assert_eq!(
        stats.failures(),
        0,
        "{what}: the load after recovery failed: {}",
        stats.table(elapsed)
    );
    assert!(stats.duplicates().is_empty(), "{:?}", stats.duplicates());
    (stats, elapsed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_worker_is_dropped_and_removes_its_leftovers_when_it_returns() {
    let Some(_serial) = begin("worker killed").await else {
        return;
    };
    let scale = scale();
    let (mut fleet, held) = fleet_holding_sandboxes(&scale).await;
    let n = fleet.workers.len();
    let (dead, alive) = on_first_worker(&fleet, &held);

    let load = Load::start(clients(&fleet, &scale));
    tokio::time::sleep(scale.seconds / 2).await;
    let old_cgroups = fleet.workers[0].cgroups();
    let old_dirs = fleet.workers[0].sandbox_dirs();
    assert!(
        !old_cgroups.is_empty() && !old_dirs.is_empty(),
        "the victim's sandboxes"
    );
    let killed = Instant::now();
    fleet.kill_worker(0);
    let (dead_errors, slowest) = expect_errors(&dead).await;
    fleet.wait_registered(n - 1).await;
    let dropped_ms = ms_since(killed);
    let (during, during_elapsed) = load.stop().await;
    let (after, after_elapsed) = clean_phase(&fleet, scale.seconds / 2, "worker killed").await;
    let alive: Vec<Sandbox> = alive.into_iter().cloned().collect();
    check_held(&alive, "after the kill").await;

    let restarted = Instant::now();
    fleet.start_worker(0);
    {
        let worker = &fleet.workers[0];
        fleet
            .wait_for("the crashed run's leftovers to go", || async {
                worker.cgroups().is_disjoint(&old_cgroups)
                    && worker.sandbox_dirs().is_disjoint(&old_dirs)
            })
            .await;
    }
    let cleaned_ms = ms_since(restarted);
    fleet.wait_registered(n).await;
    let rejoined_ms = ms_since(restarted);
    // The crashed run's sandboxes are gone for good, and say so.
    for sandbox in &dead {
        let err = sandbox.info().await.expect_err("a crashed run's sandbox");
        assert_eq!(err.status(), Some(404), "{err}");
    }
    check_held(&alive, "after the restart").await;
    for sandbox in &alive {
        sandbox.delete().await.expect("delete a held sandbox");
    }
    let hints = check_hints(&fleet).await;
    let leaks = fleet.finish();

    let human = format!(
        "load before and during the fault:\n{}\
         the dead worker's {} sandboxes: errors {dead_errors:?}, slowest answer {slowest} ms\n\
         dropped by the broker {dropped_ms} ms after the kill (lease {} s)\n\
         load after the drop:\n{}\
         restarted: the crashed run's {} cgroups and {} sandbox directories gone {cleaned_ms} ms \
         after its start, registered after {rejoined_ms} ms; its sandboxes answer 404\n\
         {hints} warm hints checked; leaks: {}\n",
        during.table(during_elapsed),
        dead.len(),
        LEASE.as_secs(),
        after.table(after_elapsed),
        old_cgroups.len(),
        old_dirs.len(),
        leaks.summary(),
    );
    crate::load::report(
        "worker killed",
        &human,
        json!({
            "during": during.to_json(during_elapsed),
            "after": after.to_json(after_elapsed),
            "dead_sandboxes": dead.len(),
            "dead_errors": dead_errors,
            "dead_slowest_ms": slowest,
            "dropped_ms": dropped_ms,
            "leftovers_removed_ms": cleaned_ms,
            "rejoined_ms": rejoined_ms,
            "leaks": leaks.summary(),
        }),
    );
    leaks.assert_none();
    assert!(during.duplicates().is_empty(), "{:?}", during.duplicates());
    // No hang: the client's connect timeout (2 s) bounds the answer.
    assert!(slowest < 5_000, "{human}");
    assert!(dropped_ms < 3 * LEASE.as_millis() as u64, "{human}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_broker_loses_no_sandbox_under_load() {
    let Some(_serial) = begin("broker restarted").await else {
        return;
    };
    let scale = scale();
    let (mut fleet, held) = fleet_holding_sandboxes(&scale).await;
    let n = fleet.workers.len();

    let load = Load::start(clients(&fleet, &scale));
    tokio::time::sleep(scale.seconds / 2).await;
    let restart = Instant::now();
    fleet.restart_broker().await;
    let up_ms = ms_since(restart);
    fleet.wait_registered(n).await;
    let registered_ms = ms_since(restart);
    fleet
        .wait_for("the warm pools to be announced again", || async {
            fleet.ready_hints().await >= n
        })
        .await;
    let announced_ms = ms_since(restart);
    let mut served_ms = 0;
    while held[0].exec("true").await.is_err() {
        assert!(
            restart.elapsed() < fleet::WAIT,
            "a held sandbox through the new broker"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
        served_ms = ms_since(restart);
    }
    if served_ms == 0 {
        served_ms = ms_since(restart);
    }
    tokio::time::sleep(scale.seconds / 2).await;
    let (during, during_elapsed) = load.stop().await;
    let (after, after_elapsed) = clean_phase(&fleet, scale.seconds / 2, "broker restarted").await;
    // No sandbox lost.
    check_held(&held, "after the broker restart").await;
    for sandbox in &held {
        sandbox.delete().await.expect("delete a held sandbox");
    }
    let hints = check_hints(&fleet).await;
    let leaks = fleet.finish();

    let human = format!(
        "load before, during and after the restart:\n{}\
         broker answering {up_ms} ms after the kill; {n} workers registered after \
         {registered_ms} ms, warm pools announced after {announced_ms} ms, a held sandbox \
         served after {served_ms} ms; all {} held sandboxes work\n\
         load after recovery:\n{}\
         {hints} warm hints checked; leaks: {}\n",
        during.table(during_elapsed),
        held.len(),
        after.table(after_elapsed),
        leaks.summary(),
    );
    crate::load::report(
        "broker restarted",
        &human,
        json!({
            "during": during.to_json(during_elapsed),
            "after": after.to_json(after_elapsed),
            "broker_up_ms": up_ms,
            "registered_ms": registered_ms,
            "announced_ms": announced_ms,
            "served_ms": served_ms,
            "held": held.len(),
            "leaks": leaks.summary(),
        }),
    );
    leaks.assert_none();
    assert!(during.duplicates().is_empty(), "{:?}", during.duplicates());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_worker_rejoins_and_nothing_is_served_twice() {
    let Some(_serial) = begin("partition").await else {
        return;
    };
    let scale = scale();
    let (fleet, held) = fleet_holding_sandboxes(&scale).await;
    let n = fleet.workers.len();
    let (cut_off, _) = on_first_worker(&fleet, &held);

    let load = Load::start(clients(&fleet, &scale));
    tokio::time::sleep(scale.seconds / 2).await;
    let partitioned = Instant::now();
    fleet.partition(0);
    let ((cut_errors, slowest), dropped_ms) = tokio::join!(expect_errors(&cut_off), async {
        fleet.wait_registered(n - 1).await;
        ms_since(partitioned)
    });
    // Longer than the lease, counted from the drop; in the long mode long enough (half a
    // phase) for a worker's registration backoff to grow to 16 s.
    tokio::time::sleep((LEASE + Duration::from_secs(1)).max(scale.seconds / 2)).await;
    let partition_ms = ms_since(partitioned);
    let healed = Instant::now();
    fleet.heal(0);
    fleet.wait_registered(n).await;
    let rejoined_ms = ms_since(healed);
    let (during, during_elapsed) = load.stop().await;
    // Its sandboxes lived on and answer again.
    check_held(&held, "after the partition").await;
    // Each sandbox is served by exactly one worker: its owner.
    let http = reqwest::Client::new();
    for sandbox in &held {
        let mut serving = Vec::new();
        for worker in &fleet.workers {
            let resp = http
                .get(format!("{}/sandboxes/{}", worker.url(), sandbox.id()))
                .bearer_auth(fleet.token("drill_owner"))
                .send()
                .await
                .expect("ask a worker");
            if resp.status() == 200 {
                serving.push(worker.id.clone());
            }
        }
        assert_eq!(serving, vec![worker_of(sandbox)], "{}", sandbox.id());
    }
    let (after, after_elapsed) = clean_phase(&fleet, scale.seconds / 2, "partition").await;
    for sandbox in &held {
        sandbox.delete().await.expect("delete a held sandbox");
    }
    let hints = check_hints(&fleet).await;
    let leaks = fleet.finish();

    let human = format!(
        "load before, during and after the partition:\n{}\
         the cut-off worker's {} sandboxes: errors {cut_errors:?}, slowest answer {slowest} ms\n\
         dropped by the broker {dropped_ms} ms after the cut; cut for {partition_ms} ms; \
         registered again {rejoined_ms} ms after the link came back; all {} held sandboxes \
         work, each served by its own worker only\n\
         load after recovery:\n{}\
         {hints} warm hints checked; leaks: {}\n",
        during.table(during_elapsed),
        cut_off.len(),
        held.len(),
        after.table(after_elapsed),
        leaks.summary(),
    );
    crate::load::report(
        "partition",
        &human,
        json!({
            "during": during.to_json(during_elapsed),
            "after": after.to_json(after_elapsed),
            "cut_off_sandboxes": cut_off.len(),
            "cut_off_errors": cut_errors,
            "cut_off_slowest_ms": slowest,
            "dropped_ms": dropped_ms,
            "partition_ms": partition_ms,
            "rejoined_ms": rejoined_ms,
            "leaks": leaks.summary(),
        }),
    );
    leaks.assert_none();
    assert!(during.duplicates().is_empty(), "{:?}", during.duplicates());
    // Bounded by the client's timeout (a partition drops packets: only a timeout tells).
    assert!(
        slowest < CLIENT_TIMEOUT.as_millis() as u64 + 2_000,
        "{human}"
    );
    assert!(dropped_ms < 3 * LEASE.as_millis() as u64, "{human}");
    // Within a probe (250 ms, 1 s timeout) and a registration (an attempt in flight when the
    // link came back: at most its 3 s timeout), not a backoff grown during the cut.
    assert!(rejoined_ms < 5_000, "{human}");
}
