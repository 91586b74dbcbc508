//! Worker tests: the registration loop: registration, heartbeats, VM starts, events, broker restarts.

use super::*;
use crate::api::WorkerCapacity;

#[tokio::test(start_paused = true)]
async fn registration_body_and_deregistration() {
    let h = Harness::with(|c| c.total_memory_mib = 16384);
    let (run, stop) = h.start();
    eventually("registered", || h.link.registration_count() >= 2).await;
    let (_, body) = h.link.registrations.lock().unwrap()[0].clone();
    assert_eq!(body.hostname, "worker-a.local");
    assert_eq!(body.base_url, "http://worker-a.local:9090");
    assert_eq!(body.hardware_sku, "gpu-a100");
    assert_eq!(
        (
            body.total_cores,
            body.total_memory_mib,
            body.max_live_sandboxes
        ),
        (8, 16384, 6)
    );
    assert_eq!(body.live_sandboxes, 0);
    let sid = h.sandbox().await;
    let n = h.link.registration_count();
    eventually("heartbeat with load", || {
        h.link.registration_count() > n + 1
    })
    .await;
    let (_, body) = h.link.registrations.lock().unwrap().last().unwrap().clone();
    assert_eq!(
        (
            body.live_sandboxes,
            body.allocated_cores,
            body.allocated_memory_mib
        ),
        (1, 1, 2048)
    );
    assert_eq!(h.link.deregistrations.load(Ordering::SeqCst), 0);
    stop.send(()).unwrap();
    run.await.unwrap();
    assert_eq!(h.link.deregistrations.load(Ordering::SeqCst), 1);
    assert_eq!(h.live_vms(), 0, "shutdown destroys everything");
    assert!(h.worker.get_sandbox(&dev(), &sid).is_err());
}

#[tokio::test(start_paused = true)]
async fn heartbeat_stays_within_half_the_lease() {
    let h = Harness::with(|c| c.registration_heartbeat = Duration::from_secs(300));
    *h.link.lease_ttl_seconds.lock().unwrap() = 10;
    let (run, stop) = h.start();
    eventually("three registrations", || h.link.registration_count() >= 3).await;
    let times: Vec<_> = h
        .link
        .registrations
        .lock()
        .unwrap()
        .iter()
        .map(|(t, _)| *t)
        .collect();
    assert_eq!(times[1] - times[0], Duration::from_secs(5));
    stop.send(()).unwrap();
    run.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn registration_failure_backs_off_then_reannounces() {
    let h = Harness::new();
    h.link.fail_register.store(true, Ordering::SeqCst);
    let (run, stop) = h.start();
    eventually("four attempts", || h.link.registration_count() >= 4).await;
    let times: Vec<_> = h
        .link
        .registrations
        .lock()
        .unwrap()
        .iter()
        .map(|(t, _)| *t)
        .collect();
    assert_eq!(times[1] - times[0], Duration::from_secs(1));
    assert_eq!(times[2] - times[1], Duration::from_secs(2));
    assert_eq!(times[3] - times[2], Duration::from_secs(4));
    assert_eq!(h.link.vm_start_calls.load(Ordering::SeqCst), 0);
    h.link.fail_register.store(false, Ordering::SeqCst);
    eventually("registered", || {
        h.link.vm_start_calls.load(Ordering::SeqCst) > 0
    })
    .await;
    stop.send(()).unwrap();
    run.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn vm_starts_are_drained_promptly_and_announced_ready() {
    let h = Harness::with(|c| c.registration_heartbeat = Duration::from_secs(30));
    {
        let mut starts = h.link.starts.lock().unwrap();
        for image in ["ubuntu:24.04", "alpine:3.20", "ubuntu:24.04"] {
            starts.push_back(VmStartResponse {
                virtualization: "vetu".into(),
                image: image.into(),
                cpu: 2,
            });
        }
    }
    let (run, stop) = h.start();
    eventually("three ready events", || {
        h.link.events_of("ready").len() == 3
    })
    .await;
    assert!(h.link.starts.lock().unwrap().is_empty());
    assert_eq!(
        h.link.registration_count(),
        1,
        "one heartbeat drained them all"
    );
    let ready = h.link.events_of("ready");
    assert!(ready.iter().all(|e| e.virtualization == "vetu"
        && e.cpu == 2
        && LocalVmId::parse(&e.local_vm_id).is_ok()));
    assert_eq!(h.worker.ready_counts().values().sum::<usize>(), 3);
    assert_eq!(h.vetu.live_count(), 3);
    stop.send(()).unwrap();
    run.await.unwrap();
    assert_eq!(h.live_vms(), 0);
}

#[tokio::test(start_paused = true)]
async fn broker_restart_triggers_reannouncement() {
    let h = Harness::new();
    h.link.starts.lock().unwrap().push_back(VmStartResponse {
        virtualization: "fake".into(),
        image: "img".into(),
        cpu: 1,
    });
    let (run, stop) = h.start();
    eventually("ready", || h.link.events_of("ready").len() == 1).await;
    let n = h.link.registration_count();
    eventually("more heartbeats", || h.link.registration_count() >= n + 5).await;
    assert_eq!(
        h.link.events_of("ready").len(),
        1,
        "same broker: no re-announce"
    );

    *h.link.instance_id.lock().unwrap() = "instance_two".into();
    eventually("re-announced", || h.link.events_of("ready").len() == 2).await;
    let ready = h.link.events_of("ready");
    assert_eq!(ready[0].local_vm_id, ready[1].local_vm_id);
    let n = h.link.registration_count();
    eventually("more heartbeats", || h.link.registration_count() >= n + 5).await;
    assert_eq!(h.link.events_of("ready").len(), 2);
    stop.send(()).unwrap();
    run.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn claimed_event_reaches_the_broker_and_reaper_runs() {
    let h = Harness::with(|c| c.max_live_sandboxes = 1);
    h.link.starts.lock().unwrap().push_back(VmStartResponse {
        virtualization: "fake".into(),
        image: "img".into(),
        cpu: 1,
    });
    let (run, stop) = h.start();
    eventually("ready", || h.link.events_of("ready").len() == 1).await;
    let hint = h.link.events_of("ready")[0].local_vm_id.clone();
    let mut r = req("img", 1);
    r.ttl_seconds = 30;
    let outcome = h
        .worker
        .create_sandbox(
            &dev(),
            r,
            Placement {
                claim: Some(LocalVmId::parse(&hint).unwrap()),
                retry: 0,
            },
        )
        .await
        .unwrap();
    assert!(matches!(outcome, CreateOutcome::Created(_)));
    eventually("claimed", || h.link.events_of("claimed").len() == 1).await;
    assert_eq!(h.link.events_of("claimed")[0].local_vm_id, hint);

    h.clock.advance(Duration::from_secs(31));
    eventually("reaped", || h.worker.live_sandboxes() == 0).await;
    let claimed = LocalVmId::parse(&hint).unwrap();
    assert!(!h.fake.live_vm_ids().contains(&claimed));
    stop.send(()).unwrap();
    run.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn run_cleans_leftovers_first() {
    let clock = Arc::new(ManualClock::new(t0()));
    let fake = FakeBackend::new().with_leftovers(2);
    let worker = Worker::new(
        config(),
        vec![Arc::new(fake.clone())],
        clock,
        Arc::new(Metrics::new(false)),
        None,
    );
    let (tx, rx) = oneshot::channel::<()>();
    let run = tokio::spawn(worker.clone().run(async move {
        let _ = rx.await;
    }));
    eventually("cleanup", || fake.counters().cleanups == 1).await;
    assert_eq!(fake.counters().shutdowns, 0);
    tx.send(()).unwrap();
    run.await.unwrap();
    // Once stopped, after its sandboxes are gone, each backend is told to release its own.
    assert_eq!(fake.counters().shutdowns, 1);
}

#[tokio::test(start_paused = true)]
async fn events_carry_the_load() {
    let h = Harness::with(|c| c.max_live_sandboxes = 2);
    h.link.starts.lock().unwrap().push_back(VmStartResponse {
        virtualization: "fake".into(),
        image: "img".into(),
        cpu: 1,
    });
    let (run, stop) = h.start();
    eventually("ready", || h.link.events_of("ready").len() == 1).await;
    let ready = h.link.events_of("ready")[0].clone();
    let idle = WorkerCapacity {
        live_sandboxes: 0,
        allocated_cores: 0,
        allocated_memory_mib: 0,
        accepting_sandboxes: true,
    };
    assert_eq!(ready.capacity, Some(idle));
    let query = Placement {
        claim: Some(LocalVmId::parse(&ready.local_vm_id).unwrap()),
        retry: 0,
    };
    let outcome = h.worker.create_sandbox(&dev(), req("img", 1), query).await;
    assert!(matches!(outcome, Ok(CreateOutcome::Created(_))));
    eventually("claimed", || h.link.events_of("claimed").len() == 1).await;
    // The claim counts itself: one sandbox of 1 cpu and 2 GiB (16 GiB over 8 cores).
    let loaded = WorkerCapacity {
        live_sandboxes: 1,
        allocated_cores: 1,
        allocated_memory_mib: 2048,
        accepting_sandboxes: true,
    };
    assert_eq!(h.link.events_of("claimed")[0].capacity, Some(loaded));
    assert_eq!(
        h.link.registrations.lock().unwrap()[0]
            .1
            .accepting_sandboxes,
        Some(true)
    );
    stop.send(()).unwrap();
    run.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_full_worker_renews_its_registration_at_once() {
    // Heartbeats are 5 minutes apart: every registration after the first below is early.
    let h = Harness::with(|c| {
        c.max_live_sandboxes = 1;
        c.registration_heartbeat = Duration::from_secs(300);
    });
    *h.link.lease_ttl_seconds.lock().unwrap() = 3600;
    let (run, stop) = h.start();
    eventually("registered", || h.link.registration_count() == 1).await;
    let sid = h.sandbox().await;
    // A create the worker has no room for: the broker's view was wrong; correct it.
    let refused = h
        .worker
        .create_sandbox(&dev(), req("img", 1), Placement::default())
        .await;
    assert!(matches!(refused, Err(WorkerError::NoCapacity(_))));
    eventually("a renewal after the refusal", || {
        h.link.registration_count() == 2
    })
    .await;
    let live = |n: usize| h.link.registrations.lock().unwrap()[n].1.live_sandboxes;
    assert_eq!(live(1), 1);
    // The full worker frees its slot: the broker hears it now, not in 5 minutes.
    h.worker.delete_sandbox(&dev(), &sid).await.unwrap();
    eventually("a renewal saying the slot is free", || {
        let regs = h.link.registrations.lock().unwrap();
        regs.len() > 2 && regs.last().unwrap().1.live_sandboxes == 0
    })
    .await;
    stop.send(()).unwrap();
    run.await.unwrap();
}

#[test]
fn registration_lists_the_virtualizations_served() {
    let h = Harness::new();
    let mut served = h.worker.registration_request().virtualizations;
    served.sort();
    assert_eq!(served, vec!["fake", "tart", "vetu"]);
}

#[tokio::test(start_paused = true)]
async fn a_restarted_broker_is_found_by_the_probe_not_the_next_heartbeat() {
    let h = Harness::with(|c| {
        c.registration_heartbeat = Duration::from_secs(60);
        c.registration_probe = Duration::from_secs(1);
    });
    let (run, stop) = h.start();
    eventually("registered", || h.link.registration_count() == 1).await;
    // The same broker: probes, no registration until the heartbeat.
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(h.link.registration_count(), 1);
    assert!(h.link.probes.load(Ordering::SeqCst) >= 9);

    // The broker goes away (probes fail: nothing to do yet) and comes back as a new instance:
    // registered with again within a probe or two, 50 s before the heartbeat would have.
    h.link.fail_probe.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(h.link.registration_count(), 1);
    *h.link.instance_id.lock().unwrap() = "instance_two".into();
    h.link.fail_probe.store(false, Ordering::SeqCst);
    let back = tokio::time::Instant::now();
    eventually("registered again", || h.link.registration_count() == 2).await;
    assert!(
        back.elapsed() <= Duration::from_secs(2),
        "{:?}",
        back.elapsed()
    );
    stop.send(()).unwrap();
    run.await.unwrap();
}

/// A partition: registrations and probes time out for a minute (the backoff grows to 30 s);
/// once the broker answers again the worker registers within a probe, not a backoff.
#[tokio::test(start_paused = true)]
async fn an_unreachable_broker_is_registered_with_as_soon_as_it_answers() {
    let h = Harness::with(|c| {
        c.registration_heartbeat = Duration::from_secs(1);
        c.registration_probe = Duration::from_millis(250);
    });
    let (run, stop) = h.start();
    eventually("registered", || h.link.registration_count() == 1).await;
    h.link.unreachable.store(true, Ordering::SeqCst);
    h.link.fail_probe.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(60)).await;
    // Attempts follow the backoff (1, 2, 4, 8, 16, 30 s), not the probe.
    let attempts = h.link.registration_count() - 1;
    assert!((5..=8).contains(&attempts), "{attempts} attempts");
    h.link.unreachable.store(false, Ordering::SeqCst);
    h.link.fail_probe.store(false, Ordering::SeqCst);
    let back = tokio::time::Instant::now();
    eventually("registered again", || {
        h.link.registration_count() == attempts + 2
    })
    .await;
    assert!(
        back.elapsed() <= Duration::from_millis(500),
        "{:?}",
        back.elapsed()
    );
    stop.send(()).unwrap();
    run.await.unwrap();
}

/// Above a memory ceiling the broker is told "not accepting"; when the memory comes back
/// without a delete (the limit raised), it hears otherwise within a reap interval, not at
/// the next heartbeat.
#[tokio::test(start_paused = true)]
async fn memory_coming_back_is_told_to_the_broker_at_once() {
    let h = Harness::with(|c| {
        c.registration_heartbeat = Duration::from_secs(60);
        c.reap_interval = Duration::from_secs(1);
    });
    let _ = h.fake.clone().with_memory_per_vm(100 << 20);
    h.sandbox().await;
    h.fake.set_memory_ceiling(Some(10 << 20));
    let (run, stop) = h.start();
    eventually("registered", || h.link.registration_count() == 1).await;
    let accepting = |n: usize| {
        h.link.registrations.lock().unwrap()[n]
            .1
            .accepting_sandboxes
    };
    assert_eq!(accepting(0), Some(false));
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        h.link.registration_count(),
        1,
        "nothing changed: no renewal"
    );
    h.fake.set_memory_ceiling(None);
    let back = tokio::time::Instant::now();
    eventually("a renewal saying it accepts", || {
        h.link.registration_count() == 2
    })
    .await;
    assert_eq!(accepting(1), Some(true));
    assert!(
        back.elapsed() <= Duration::from_secs(1),
        "{:?}",
        back.elapsed()
    );
    stop.send(()).unwrap();
    run.await.unwrap();
}

/// A broker that answers probes but whose registrations time out (overloaded) keeps the
/// backoff: the probe shortcut is for a broker that was out of reach and came back.
#[tokio::test(start_paused = true)]
async fn registrations_timing_out_against_an_answering_broker_keep_the_backoff() {
    let h = Harness::with(|c| c.registration_probe = Duration::from_millis(250));
    h.link.unreachable.store(true, Ordering::SeqCst);
    let (run, stop) = h.start();
    tokio::time::sleep(Duration::from_secs(20)).await;
    let attempts = h.link.registration_count();
    assert!((4..=6).contains(&attempts), "{attempts} attempts");
    stop.send(()).unwrap();
    run.await.unwrap();
}

/// A refusal (not a partition) keeps its backoff even though the broker answers probes.
#[tokio::test(start_paused = true)]
async fn a_refused_registration_keeps_its_backoff() {
    let h = Harness::with(|c| c.registration_probe = Duration::from_millis(250));
    h.link.fail_register.store(true, Ordering::SeqCst);
    let (run, stop) = h.start();
    tokio::time::sleep(Duration::from_secs(20)).await;
    // 0, 1, 3, 7, 15 s: five attempts, not one per probe.
    let attempts = h.link.registration_count();
    assert!((4..=6).contains(&attempts), "{attempts} attempts");
    stop.send(()).unwrap();
    run.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn no_probes_when_turned_off() {
    let h = Harness::with(|c| c.registration_probe = Duration::ZERO);
    let (run, stop) = h.start();
    eventually("registered", || h.link.registration_count() == 1).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(h.link.probes.load(Ordering::SeqCst), 0);
    stop.send(()).unwrap();
    run.await.unwrap();
}
