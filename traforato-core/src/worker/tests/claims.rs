//! Worker tests: creates that claim a ready VM, and hinted creates that bounce back to the broker.

use super::*;

#[tokio::test]
async fn hinted_create_claims_the_ready_vm() {
    let h = Harness::new();
    let vm = h.warm("vetu", "ubuntu:24.04", 1).await;
    assert_eq!(h.queued_events().len(), 1);
    let hint = vm.to_string();
    let outcome = h
        .worker
        .create_sandbox(
            &dev(),
            CreateSandboxRequest {
                virtualization: "vetu".into(),
                image: " ubuntu:24.04 ".into(),
                cpu: 0,
                ..Default::default()
            },
            Placement {
                claim: Some(vm),
                retry: 1,
            },
        )
        .await
        .unwrap();
    let CreateOutcome::Created(created) = outcome else {
        panic!("{outcome:?}")
    };
    assert_eq!(vm_of(&sid(&created.sandbox_id)), vm);
    assert_eq!(created.start_type, "warm");
    assert!(h.worker.ready_counts().is_empty());
    assert_eq!(h.vetu.counters().provisions, 1);
    let events = h.queued_events();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].event, "claimed");
    assert_eq!(events[0].local_vm_id, hint);
    assert_eq!(
        h.worker.metrics().worker.warm_hit.value(&WorkerCpuLabels {
            worker_id: "worker_a",
            cpu: "1"
        }),
        Some(1.0)
    );
}

#[tokio::test]
async fn unhinted_create_claims_the_oldest_ready_vm() {
    let h = Harness::new();
    let first = h.warm("fake", "img", 1).await;
    let second = h.warm("fake", "img", 1).await;
    h.queued_events();
    let created = h.create(&dev(), req("img", 1)).await;
    assert_eq!(created.start_type, "warm");
    assert_eq!(vm_of(&sid(&created.sandbox_id)), first);
    assert_eq!(h.worker.ready_counts().values().sum::<usize>(), 1);
    assert_eq!(h.worker.lock().ready.snapshot()[0].0, second);
    let events = h.queued_events();
    assert_eq!(
        (events[0].event.as_str(), events[0].local_vm_id.clone()),
        ("claimed", first.to_string())
    );
    assert_eq!(h.fake.counters().provisions, 2);
}

#[tokio::test]
async fn unknown_hint_bounces_with_next_retry() {
    let unknown = LocalVmId::parse("550e8400-e29b-41d4-a716-446655440000").unwrap();
    let h = Harness::new();
    let outcome = h
        .worker
        .create_sandbox(
            &dev(),
            req("ubuntu:24.04", 1),
            Placement {
                claim: Some(unknown),
                retry: 1,
            },
        )
        .await
        .unwrap();
    match outcome {
        CreateOutcome::RetryPlacement { retry } => assert_eq!(retry, 2),
        other => panic!("{other:?}"),
    }
    assert!(h.queued_events().is_empty());
    assert_eq!(h.live_vms(), 0);

    let h = Harness::with(|c| c.broker_public_url = None);
    let err = h
        .worker
        .create_sandbox(
            &dev(),
            req("img", 1),
            Placement {
                claim: Some(unknown),
                retry: 0,
            },
        )
        .await
        .unwrap_err();
    assert!(matches!(err, WorkerError::UnableToRetryPlacement));
}

/// A hint the broker gave while an unhinted create here took that VM: another ready VM of the
/// tuple serves the create (warm, no bounce), and the broker hears that one was claimed.
#[tokio::test]
async fn a_stale_hint_claims_another_ready_vm_of_the_tuple() {
    let h = Harness::new();
    let first = h.warm("fake", "img", 1).await;
    let second = h.warm("fake", "img", 1).await;
    h.queued_events();
    // An unhinted create takes the oldest: the broker's hint of it is stale until the event.
    let unhinted = h.create(&dev(), req("img", 1)).await;
    assert!(unhinted.sandbox_id.ends_with(&first.to_string()));
    h.queued_events();
    let outcome = h
        .worker
        .create_sandbox(
            &dev(),
            req("img", 1),
            Placement {
                claim: Some(first),
                retry: 0,
            },
        )
        .await
        .unwrap();
    let CreateOutcome::Created(created) = outcome else {
        panic!("{outcome:?}");
    };
    assert_eq!(created.start_type, "warm");
    assert!(created.sandbox_id.ends_with(&second.to_string()));
    let events = h.queued_events();
    assert_eq!(events.len(), 1);
    assert_eq!(
        (events[0].event.as_str(), events[0].local_vm_id.clone()),
        ("claimed", second.to_string())
    );
    // With the pool empty, a stale hint bounces as before.
    let outcome = h
        .worker
        .create_sandbox(
            &dev(),
            req("img", 1),
            Placement {
                claim: Some(second),
                retry: 0,
            },
        )
        .await
        .unwrap();
    assert!(matches!(
        outcome,
        CreateOutcome::RetryPlacement { retry: 1 }
    ));
}

/// A warm sandbox that died idle (its init killed) is never handed out: it is retired (the
/// broker hears it), destroyed, and the next ready one, or a cold boot, serves the create,
/// hinted or not.
#[tokio::test]
async fn a_dead_warm_sandbox_is_retired_not_handed_out() {
    let h = Harness::new();
    let dead = h.warm("fake", "img", 1).await;
    let alive = h.warm("fake", "img", 1).await;
    h.queued_events();
    assert!(h.fake.crash(&dead));
    let created = h.create(&dev(), req("img", 1)).await;
    assert_eq!(created.start_type, "warm");
    assert!(created.sandbox_id.ends_with(&alive.to_string()));
    let events: Vec<(String, String)> = h
        .queued_events()
        .into_iter()
        .map(|e| (e.event, e.local_vm_id))
        .collect();
    assert_eq!(
        events,
        vec![
            ("retired".to_string(), dead.to_string()),
            ("claimed".to_string(), alive.to_string()),
        ]
    );
    eventually("the dead one destroyed", || h.fake.live_count() == 1).await;

    // Hinted at a dead one, with none alive: a bounce, and no "ready" for the dead one.
    let dead = h.warm("fake", "img", 1).await;
    h.queued_events();
    assert!(h.fake.crash(&dead));
    let outcome = h
        .worker
        .create_sandbox(
            &dev(),
            req("img", 1),
            Placement {
                claim: Some(dead),
                retry: 0,
            },
        )
        .await
        .unwrap();
    assert!(matches!(
        outcome,
        CreateOutcome::RetryPlacement { retry: 1 }
    ));
    let events: Vec<String> = h.queued_events().into_iter().map(|e| e.event).collect();
    assert_eq!(events, vec!["retired".to_string()]);
    assert_eq!(h.worker.ready_counts().values().sum::<usize>(), 0);
}

#[tokio::test]
async fn hinted_tuple_mismatch_bounces_and_reannounces() {
    let h = Harness::with(|c| c.broker_public_url = Some("http://broker.example.com/".into()));
    let vm = h.warm("fake", "img-a", 1).await;
    h.queued_events();
    let hint = vm.to_string();
    let outcome = h
        .worker
        .create_sandbox(
            &dev(),
            req("img-b", 1),
            Placement {
                claim: Some(vm),
                retry: 0,
            },
        )
        .await
        .unwrap();
    match outcome {
        CreateOutcome::RetryPlacement { retry } => assert_eq!(retry, 1),
        other => panic!("{other:?}"),
    }
    // The shell joins the broker URL and the retry: the trailing `/` is dropped.
    assert_eq!(
        h.worker.config().broker_public_url(),
        Some("http://broker.example.com")
    );
    let events = h.queued_events();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].event, "ready");
    assert_eq!(events[0].local_vm_id, hint);
    assert_eq!(events[0].image, "img-a");
    assert_eq!(h.worker.ready_counts().values().sum::<usize>(), 1);
    assert_eq!(h.worker.live_sandboxes(), 0);
    assert_eq!(h.fake.live_count(), 1);
}

#[tokio::test]
async fn hinted_create_without_capacity_bounces_and_keeps_the_vm() {
    let h = Harness::with(|c| c.total_cores = 2);
    let vm = h.warm("fake", "img", 2).await;
    h.create(&dev(), req("other", 2)).await;
    h.queued_events();
    let hint = vm.to_string();
    let outcome = h
        .worker
        .create_sandbox(
            &dev(),
            req("img", 2),
            Placement {
                claim: Some(vm),
                retry: 2,
            },
        )
        .await
        .unwrap();
    match outcome {
        CreateOutcome::RetryPlacement { retry } => assert_eq!(retry, 3),
        other => panic!("{other:?}"),
    }
    let events = h.queued_events();
    assert_eq!(
        events
            .iter()
            .map(|e| (e.event.as_str(), e.local_vm_id.as_str()))
            .collect::<Vec<_>>(),
        vec![("ready", hint.as_str())]
    );
    assert_eq!(h.worker.ready_counts().values().sum::<usize>(), 1);
    assert_eq!(h.worker.live_sandboxes(), 1);
    assert_eq!(h.worker.allocated().0, 2);
}

#[tokio::test]
async fn cold_create_retires_a_ready_vm_of_another_tuple_when_full() {
    let h = Harness::with(|c| c.max_live_sandboxes = 2);
    let a1 = h.warm("fake", "a", 1).await;
    h.warm("fake", "a", 1).await;
    assert!(h.worker.next_warm_job().is_none(), "pool is full");
    h.queued_events();
    let created = h.create(&dev(), req("b", 1)).await;
    assert_eq!(created.start_type, "cold");
    let events = h.queued_events();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].event, "retired");
    assert_eq!(events[0].local_vm_id, a1.to_string());
    assert_eq!(h.fake.live_count(), 2);
    assert_eq!(h.worker.ready_counts().values().sum::<usize>(), 1);
}
