//! Worker tests: create, get, delete, lease and TTL; ids and ownership.

use super::*;
use crate::backend::fake::FakeExec;

#[tokio::test]
async fn create_then_get() {
    let h = Harness::new();
    let created = h.create(&dev(), req("ubuntu:24.04", 2)).await;
    let json = serde_json::to_value(&created).unwrap();
    assert!(json.get("worker_hash").is_none());
    assert_eq!(json["start_type"], "cold");
    assert_eq!(created.cpu, 2);
    assert_eq!(created.memory_mib, 2 * 2048);
    assert_eq!(created.virtualization, "fake");
    assert_eq!(created.expires_at, t0() + chrono::Duration::minutes(30));
    let id = SandboxId::parse(&created.sandbox_id).unwrap();
    assert_eq!(id.broker_id().as_str(), "broker_local");
    assert_eq!(id.worker_id().as_str(), "worker_a");

    let got = h.worker.get_sandbox(&dev(), &id).unwrap();
    assert_eq!(got.image, "ubuntu:24.04");
    assert_eq!(got.created_at, t0());
    assert_eq!(h.worker.live_sandboxes(), 1);
    assert_eq!(h.fake.live_count(), 1);
    assert_eq!(h.worker.allocated(), (2, 4096));
    let m = h.worker.metrics();
    let (worker_id, cpu) = ("worker_a", "2");
    assert_eq!(
        m.worker
            .warm_miss
            .value(&WorkerCpuLabels { worker_id, cpu }),
        Some(1.0)
    );
    assert_eq!(
        m.worker.sandboxes_live.value(&WorkerLabels { worker_id }),
        Some(1.0)
    );
    assert_eq!(
        m.worker
            .ready_duration
            .count_and_sum(&SandboxReadyLabels {
                worker_id,
                start_type: "cold",
                cpu
            })
            .map(|(n, _)| n),
        Some(1)
    );
}

#[tokio::test]
async fn tart_gets_default_image_and_vetu_requires_one() {
    let h = Harness::new();
    let created = h
        .create(
            &dev(),
            CreateSandboxRequest {
                virtualization: "tart".into(),
                cpu: 1,
                ..Default::default()
            },
        )
        .await;
    assert_eq!(created.virtualization, "tart");
    let got = h
        .worker
        .get_sandbox(&dev(), &sid(&created.sandbox_id))
        .unwrap();
    assert_eq!(got.image, crate::tuple::TART_DEFAULT_IMAGE);
    assert_eq!(h.tart.live_count(), 1);

    let err = h
        .worker
        .create_sandbox(
            &dev(),
            CreateSandboxRequest {
                virtualization: "vetu".into(),
                cpu: 1,
                ..Default::default()
            },
            Placement::default(),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, WorkerError::ImageRequired));
    assert_eq!(err.to_string(), "image is required");

    let err = h
        .worker
        .create_sandbox(
            &dev(),
            CreateSandboxRequest {
                virtualization: "container".into(),
                image: "img".into(),
                ..Default::default()
            },
            Placement::default(),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, WorkerError::UnsupportedVirtualization(v) if v == "container"));
    assert_eq!(h.live_vms(), 1);
}

#[tokio::test]
async fn ttl_defaults_and_cap() {
    let h = Harness::with(|c| c.max_ttl = Duration::from_secs(3600));
    let mut r = req("img", 1);
    r.ttl_seconds = 90;
    assert_eq!(
        h.create(&dev(), r.clone()).await.expires_at,
        t0() + chrono::Duration::seconds(90)
    );
    r.ttl_seconds = 100_000_000;
    assert_eq!(
        h.create(&dev(), r.clone()).await.expires_at,
        t0() + chrono::Duration::hours(1)
    );
    r.ttl_seconds = -5;
    assert_eq!(
        h.create(&dev(), r).await.expires_at,
        t0() + chrono::Duration::minutes(30)
    );
}

#[tokio::test]
async fn capacity_limits_have_exact_messages() {
    let h = Harness::with(|c| c.max_live_sandboxes = 1);
    h.sandbox().await;
    let err = h
        .worker
        .create_sandbox(&dev(), req("img", 1), Placement::default())
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "no capacity: max sandbox count reached");

    let h = Harness::with(|c| c.total_cores = 2);
    let err = h
        .worker
        .create_sandbox(&dev(), req("img", 3), Placement::default())
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "no capacity: cpu limit reached");

    // 2 MiB over 4 cores: the per-cpu share falls back to 512 MiB, more than there is.
    let h = Harness::with(|c| {
        c.total_cores = 4;
        c.total_memory_mib = 2;
    });
    let err = h
        .worker
        .create_sandbox(&dev(), req("img", 1), Placement::default())
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "no capacity: memory limit reached");
    assert_eq!(h.live_vms(), 0);
}

#[tokio::test]
async fn failed_provision_leaks_nothing() {
    let h = Harness::new();
    h.fake.fail_next_provisions(1);
    let err = h
        .worker
        .create_sandbox(&dev(), req("img", 2), Placement::default())
        .await
        .unwrap_err();
    assert!(matches!(err, WorkerError::ProvisionFailed(_)));
    assert_eq!(h.worker.live_sandboxes(), 0);
    assert_eq!(h.worker.allocated(), (0, 0));
    assert_eq!(h.fake.live_count(), 0);
    assert_eq!(
        h.worker
            .metrics()
            .worker
            .cpu_allocated_cores
            .value(&WorkerLabels {
                worker_id: "worker_a"
            }),
        Some(0.0)
    );
    // The capacity is really free again.
    let h2 = Harness::with(|c| c.max_live_sandboxes = 1);
    h2.fake.fail_next_provisions(1);
    assert!(h2
        .worker
        .create_sandbox(&dev(), req("img", 1), Placement::default())
        .await
        .is_err());
    h2.sandbox().await;
}

#[tokio::test(start_paused = true)]
async fn abandoned_create_releases_capacity_and_destroys_its_vm() {
    let h = Harness::new();
    h.fake.set_provision_delay(Duration::from_secs(10));
    let principal = dev();
    let create = h
        .worker
        .create_sandbox(&principal, req("img", 2), Placement::default());
    assert!(tokio::time::timeout(Duration::from_secs(1), create)
        .await
        .is_err());
    assert_eq!(h.worker.allocated(), (0, 0));
    eventually("orphan vm destroyed", || {
        let c = h.fake.counters();
        c.provisions == 1 && c.destroys == 1
    })
    .await;
    assert_eq!(h.fake.live_count(), 0);
    assert_eq!(h.worker.live_sandboxes(), 0);
}

#[tokio::test]
async fn delete_destroys_and_releases() {
    let h = Harness::new();
    let sid = sid(&h.create(&dev(), req("img", 2)).await.sandbox_id);
    assert_eq!(h.fake.live_count(), 1);
    h.worker.delete_sandbox(&dev(), &sid).await.unwrap();
    assert_eq!(h.fake.live_count(), 0);
    assert_eq!(h.worker.live_sandboxes(), 0);
    assert_eq!(h.worker.allocated(), (0, 0));
    assert!(matches!(
        h.worker.get_sandbox(&dev(), &sid),
        Err(WorkerError::SandboxNotFound)
    ));
    assert!(matches!(
        h.worker.delete_sandbox(&dev(), &sid).await,
        Err(WorkerError::SandboxNotFound)
    ));
    let m = &h.worker.metrics().worker;
    let labels = WorkerCpuLabels {
        worker_id: "worker_a",
        cpu: "2",
    };
    assert_eq!(m.warm_target.value(&labels), Some(6.0));
    assert_eq!(m.warm_deficit.value(&labels), Some(6.0));
}

#[tokio::test(start_paused = true)]
async fn delete_stops_running_execs() {
    let h = Harness::new();
    h.fake.set_script(
        "sleep 1000",
        FakeExec::new().sleep(Duration::from_secs(1000)),
    );
    let sid = h.sandbox().await;
    let exec_id = h
        .worker
        .start_exec(
            &dev(),
            &sid,
            ExecRequest {
                command: "sleep 1000".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        h.worker.get_exec(&dev(), &sid, &exec_id).unwrap().status,
        "running"
    );
    h.worker.delete_sandbox(&dev(), &sid).await.unwrap();
    assert_eq!(h.fake.live_count(), 0);
    assert!(matches!(
        h.worker.get_exec(&dev(), &sid, &exec_id),
        Err(WorkerError::SandboxNotFound)
    ));
}

#[tokio::test]
async fn ttl_expiry_destroys() {
    let h = Harness::new();
    let mut r = req("img", 1);
    r.ttl_seconds = 60;
    let short = sid(&h.create(&dev(), r).await.sandbox_id);
    let long = h.sandbox().await;
    assert_eq!(h.worker.reap_expired().await, 0);
    h.clock.advance(Duration::from_secs(61));
    // Expired sandboxes are gone for clients at once, even before the reaper runs.
    assert!(matches!(
        h.worker.get_sandbox(&dev(), &short),
        Err(WorkerError::SandboxNotFound)
    ));
    assert_eq!(h.worker.reap_expired().await, 1);
    assert_eq!(
        h.fake.live_vm_ids().into_iter().collect::<Vec<_>>(),
        vec![vm_of(&long)]
    );
    assert_eq!(h.worker.live_sandboxes(), 1);
    assert_eq!(h.worker.allocated(), (1, 2048));
    h.clock.advance(Duration::from_secs(3600));
    assert_eq!(h.worker.reap_expired().await, 1);
    assert_eq!(h.fake.live_count(), 0);
}

#[tokio::test]
async fn lease_extends_and_validates() {
    let h = Harness::with(|c| c.max_ttl = Duration::from_secs(7200));
    let mut r = req("img", 1);
    r.ttl_seconds = 60;
    let sid = sid(&h.create(&dev(), r).await.sandbox_id);
    assert!(matches!(
        h.worker.renew_lease(&dev(), &sid, Duration::ZERO),
        Err(WorkerError::InvalidTtl)
    ));
    // The ttl is checked before the lookup.
    let unknown = SandboxId::new(
        ComponentId::parse("broker_local").unwrap(),
        ComponentId::parse("worker_a").unwrap(),
        LocalVmId::new_random(),
    );
    assert!(matches!(
        h.worker.renew_lease(&dev(), &unknown, Duration::ZERO),
        Err(WorkerError::InvalidTtl)
    ));
    assert!(matches!(
        h.worker
            .renew_lease(&dev(), &unknown, Duration::from_secs(10)),
        Err(WorkerError::SandboxNotFound)
    ));

    h.clock.advance(Duration::from_secs(30));
    let lease = h
        .worker
        .renew_lease(&dev(), &sid, Duration::from_secs(600))
        .unwrap();
    assert_eq!(lease.expires_at, t0() + chrono::Duration::seconds(630));
    h.clock.advance(Duration::from_secs(120));
    assert_eq!(h.worker.reap_expired().await, 0);
    assert_eq!(
        h.worker.get_sandbox(&dev(), &sid).unwrap().expires_at,
        lease.expires_at
    );
    let capped = h
        .worker
        .renew_lease(&dev(), &sid, Duration::from_secs(999_999))
        .unwrap();
    assert_eq!(
        capped.expires_at,
        t0() + chrono::Duration::seconds(150) + chrono::Duration::hours(2)
    );
}

#[tokio::test]
async fn ids_are_strict_and_foreign_ids_not_found() {
    let h = Harness::new();
    let sid = h.sandbox().await;
    let vm = vm_of(&sid);
    let other_broker = SandboxId::new(
        ComponentId::parse("broker_b").unwrap(),
        ComponentId::parse("worker_a").unwrap(),
        vm,
    );
    let other_worker = SandboxId::new(
        ComponentId::parse("broker_local").unwrap(),
        ComponentId::parse("worker_b").unwrap(),
        vm,
    );
    for foreign in [&other_broker, &other_worker] {
        assert!(matches!(
            h.worker.get_sandbox(&dev(), foreign),
            Err(WorkerError::SandboxNotFound)
        ));
        assert!(matches!(
            h.worker.delete_sandbox(&dev(), foreign).await,
            Err(WorkerError::SandboxNotFound)
        ));
        assert!(matches!(
            h.worker
                .stat_file(&dev(), foreign, &SandboxPath::root())
                .await,
            Err(WorkerError::SandboxNotFound)
        ));
    }
    assert_eq!(h.worker.live_sandboxes(), 1);
}

#[tokio::test]
async fn prod_ownership_is_enforced_everywhere() {
    let h = Harness::with(|c| c.auth_mode = AuthMode::Prod);
    let a = client("client-a");
    let b = client("client-b");
    let sid = sid(&h.create(&a, req("ubuntu:24.04", 1)).await.sandbox_id);
    assert!(h.worker.get_sandbox(&a, &sid).is_ok());
    let eid = h
        .worker
        .start_exec(&a, &sid, ExecRequest::default())
        .await
        .unwrap();
    let eid = &eid;

    let denied = |r: Result<(), WorkerError>, what: &str| {
        assert!(
            matches!(r, Err(WorkerError::OwnershipMismatch)),
            "{what}: {r:?}"
        );
    };
    let w = &h.worker;
    denied(w.get_sandbox(&b, &sid).map(drop), "get");
    denied(
        w.renew_lease(&b, &sid, Duration::from_secs(60)).map(drop),
        "lease",
    );
    denied(
        w.start_exec(&b, &sid, ExecRequest::default())
            .await
            .map(drop),
        "exec",
    );
    let code = RunCodeRequest {
        code: "print('x')".into(),
        runtime: "python".into(),
        ..Default::default()
    };
    denied(w.run_code(&b, &sid, code).await.map(drop), "run code");
    denied(w.get_exec(&b, &sid, eid).map(drop), "get exec");
    denied(
        w.exec_frames(&b, &sid, eid, 0, None).await.map(drop),
        "frames",
    );
    denied(w.list_execs(&b, &sid, None).map(drop), "list execs");
    denied(
        w.exec_frame_stream(&b, &sid, eid, 0).map(drop),
        "frame stream",
    );
    denied(
        w.write_exec_stdin(&b, &sid, eid, bytes::Bytes::from_static(b"x"))
            .await,
        "stdin",
    );
    denied(
        w.signal_exec(&b, &sid, eid, ExecSignal::Term).await,
        "signal",
    );
    let size = TerminalSize { rows: 5, cols: 5 };
    denied(w.resize_exec(&b, &sid, eid, size).await, "resize");
    denied(
        w.write_file(
            &b,
            &sid,
            &path("/workspace/x"),
            reader(b"x"),
            WriteMode::Replace,
        )
        .await
        .map(drop),
        "write",
    );
    denied(
        w.read_file(&b, &sid, &path("/workspace/x"), Encoding::Utf8)
            .await
            .map(drop),
        "read",
    );
    denied(w.open_file(&b, &sid, &path("/x")).await.map(drop), "open");
    denied(
        w.stat_file(&b, &sid, &SandboxPath::root()).await.map(drop),
        "stat",
    );
    denied(
        w.list_files(&b, &sid, &SandboxPath::root(), ListOptions::default())
            .await
            .map(drop),
        "list",
    );
    denied(
        w.mkdir(&b, &sid, &SandboxPath::root(), false)
            .await
            .map(drop),
        "mkdir /",
    );
    denied(
        w.remove_file(&b, &sid, &path("/workspace"), RemoveOptions::default())
            .await,
        "remove",
    );
    denied(w.connect_port(&b, &sid, 3000).await.map(drop), "proxy");
    denied(w.delete_sandbox(&b, &sid).await, "delete");
    assert_eq!(h.worker.live_sandboxes(), 1);

    // Dev mode skips the check.
    let d = Harness::new();
    let sid = super::sid(&d.create(&a, req("img", 1)).await.sandbox_id);
    assert!(d.worker.get_sandbox(&b, &sid).is_ok());
}

#[tokio::test]
async fn mkdir_root_checks_the_sandbox() {
    let h = Harness::new();
    let unknown = SandboxId::new(
        ComponentId::parse("broker_local").unwrap(),
        ComponentId::parse("worker_a").unwrap(),
        LocalVmId::new_random(),
    );
    let root = SandboxPath::root();
    assert!(matches!(
        h.worker.mkdir(&dev(), &unknown, &root, false).await,
        Err(WorkerError::SandboxNotFound)
    ));
    let sid = h.sandbox().await;
    let r = h.worker.mkdir(&dev(), &sid, &root, false).await.unwrap();
    assert_eq!((r.path.as_str(), r.created), ("/", false));
}

#[tokio::test]
async fn draining_refuses_new_sandboxes_and_keeps_live_ones() {
    let h = Harness::new();
    let live = h.sandbox().await;
    let warm = h.warm("fake", "img", 1).await;
    assert_eq!(h.live_vms(), 2);
    assert!(h.worker.registration_request().accepting_sandboxes.unwrap());
    h.queued_events();

    assert_eq!(h.worker.drain().await, 1);
    assert!(h.worker.is_draining());
    // The idle warm sandbox is gone (and the broker told), the live one is not.
    assert_eq!(h.live_vms(), 1);
    let retired = h.queued_events();
    assert!(
        retired
            .iter()
            .any(|e| e.event == "retired" && e.local_vm_id == warm.to_string()),
        "{retired:?}"
    );
    assert_eq!(
        h.worker.get_sandbox(&dev(), &live).unwrap().sandbox_id,
        live.to_string()
    );
    // The broker hears that it takes nothing new, and creates, cold or claiming, are refused.
    assert_eq!(
        h.worker.registration_request().accepting_sandboxes,
        Some(false)
    );
    let refused = h
        .worker
        .create_sandbox(&dev(), req("img", 1), Placement::default())
        .await;
    assert!(
        matches!(
            refused,
            Err(WorkerError::NoCapacity("no capacity: worker draining"))
        ),
        "{refused:?}"
    );
    // A create the broker placed on the retired warm sandbox before it heard goes back to
    // the broker for another worker, and nothing is made here.
    let outcome = h
        .worker
        .create_sandbox(
            &dev(),
            req("img", 1),
            Placement {
                claim: Some(warm),
                retry: 1,
            },
        )
        .await
        .unwrap();
    assert!(
        matches!(outcome, CreateOutcome::RetryPlacement { retry: 2 }),
        "{outcome:?}"
    );
    assert_eq!(h.live_vms(), 1);
    // No warm pool while draining, whatever the demand or the broker asks.
    h.worker.assign_vm_start(VmStartResponse {
        virtualization: "fake".into(),
        image: "img".into(),
        cpu: 1,
    });
    assert!(h.worker.next_warm_job().is_none());
    // Draining again changes nothing; the live sandbox goes when deleted.
    assert_eq!(h.worker.drain().await, 1);
    h.worker.delete_sandbox(&dev(), &live).await.unwrap();
    assert_eq!(h.worker.drain().await, 0);
    assert_eq!(h.live_vms(), 0);
}

#[tokio::test]
async fn a_warm_sandbox_finished_after_the_drain_is_destroyed() {
    let h = Harness::new();
    h.worker.assign_vm_start(VmStartResponse {
        virtualization: "fake".into(),
        image: "img".into(),
        cpu: 1,
    });
    let job = h.worker.next_warm_job().expect("a warm job");
    assert_eq!(h.worker.drain().await, 0);
    let (_tx, mut stop) = watch::channel(false);
    h.worker.fill_one(job, &mut stop).await;
    assert!(h.worker.lock().ready.snapshot().is_empty());
    assert_eq!(h.live_vms(), 0);
    assert!(h.queued_events().iter().all(|e| e.event != "ready"));
}
