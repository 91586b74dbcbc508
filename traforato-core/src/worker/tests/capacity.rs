//! The capacity model: overcommitting backends (containers) against reserving ones (VMs),
//! the memory high watermark, and the warm pool's ceiling.

use super::*;

/// A 2-core, 2 GiB worker as a container host would be configured by default: 32× cpu and
/// memory overcommit, as many sandboxes as overcommitted cores.
fn overcommitted(
    adjust: impl FnOnce(&mut WorkerConfig),
) -> (Arc<Worker>, FakeBackend, FakeBackend) {
    let mut config = WorkerConfig {
        total_cores: 2,
        total_memory_mib: 2048,
        max_live_sandboxes: 64,
        capacity: CapacityConfig {
            cpu_overcommit: 32,
            memory_overcommit: 32,
            memory_high_watermark_mib: None,
            max_warm_per_tuple: Some(8),
            warm_fill_parallelism: 1,
        },
        ..config()
    };
    adjust(&mut config);
    let clock = Arc::new(ManualClock::new(t0()));
    let containers = FakeBackend::new()
        .with_clock(clock.clone())
        .with_overcommit();
    let vms = FakeBackend::with_virtualization("vetu").with_clock(clock.clone());
    let worker = Worker::new(
        config,
        vec![Arc::new(containers.clone()), Arc::new(vms.clone())],
        clock,
        Arc::new(Metrics::new(false)),
        None,
    );
    (worker, containers, vms)
}

async fn try_create(
    worker: &Worker,
    virtualization: &str,
    cpu: i64,
) -> Result<SandboxId, WorkerError> {
    let request = CreateSandboxRequest {
        image: "img".into(),
        cpu,
        virtualization: virtualization.into(),
        ..Default::default()
    };
    match worker
        .create_sandbox(&dev(), request, Placement::default())
        .await?
    {
        CreateOutcome::Created(created) => Ok(sid(&created.sandbox_id)),
        other => panic!("create: {other:?}"),
    }
}

#[tokio::test]
async fn containers_overcommit_cpu_and_memory() {
    let (worker, containers, _) = overcommitted(|_| {});
    // The review: a 2-core box held two `cpu: 1` sandboxes. Now 50 and more.
    for i in 0..50 {
        try_create(&worker, "fake", 1)
            .await
            .unwrap_or_else(|e| panic!("create {i}: {e}"));
    }
    // `cpu: 2` next to them.
    try_create(&worker, "fake", 2).await.unwrap();
    assert_eq!(containers.live_count(), 51);
    // Registration reports the overcommitted capacity and what is charged.
    let registration = worker.registration_request();
    assert_eq!(registration.total_cores, 64);
    assert_eq!(registration.total_memory_mib, 65536);
    assert_eq!(registration.allocated_cores, 52);
    assert_eq!(registration.live_sandboxes, 51);
    // The overcommitted cores stay the bound: 64 units, 63 sandboxes here.
    for _ in 0..12 {
        try_create(&worker, "fake", 1).await.unwrap();
    }
    let err = try_create(&worker, "fake", 1).await.unwrap_err();
    assert_eq!(err.to_string(), "no capacity: cpu limit reached");
}

#[tokio::test]
async fn vms_reserve_what_they_ask_for() {
    let (worker, _, vms) = overcommitted(|_| {});
    // A 2-cpu VM takes both physical cores: 64 of the 64 overcommitted units.
    try_create(&worker, "vetu", 2).await.unwrap();
    let err = try_create(&worker, "vetu", 1).await.unwrap_err();
    assert_eq!(err.to_string(), "no capacity: cpu limit reached");
    let err = try_create(&worker, "fake", 1).await.unwrap_err();
    assert_eq!(err.to_string(), "no capacity: cpu limit reached");
    assert_eq!(vms.live_count(), 1);
    // Without overcommit every backend reserves: the model of the prototype.
    let (worker, _, _) = overcommitted(|c| c.capacity = CapacityConfig::default());
    try_create(&worker, "fake", 1).await.unwrap();
    try_create(&worker, "fake", 1).await.unwrap();
    let err = try_create(&worker, "fake", 1).await.unwrap_err();
    assert_eq!(err.to_string(), "no capacity: cpu limit reached");
}

#[tokio::test]
async fn above_the_memory_watermark_warm_sandboxes_go_first_then_creates_are_refused() {
    // Each sandbox uses 100 MiB; the watermark is 350 MiB.
    let clock = Arc::new(ManualClock::new(t0()));
    let containers = FakeBackend::new()
        .with_clock(clock.clone())
        .with_overcommit()
        .with_memory_per_vm(100 << 20);
    let worker = Worker::new(
        WorkerConfig {
            total_cores: 2,
            total_memory_mib: 2048,
            max_live_sandboxes: 64,
            capacity: CapacityConfig {
                cpu_overcommit: 32,
                memory_overcommit: 32,
                memory_high_watermark_mib: Some(350),
                max_warm_per_tuple: None,
                warm_fill_parallelism: 1,
            },
            ..config()
        },
        vec![Arc::new(containers.clone())],
        clock,
        Arc::new(Metrics::new(false)),
        None,
    );
    // Two warm sandboxes of another tuple, then live sandboxes up to the watermark.
    for _ in 0..2 {
        worker.assign_vm_start(VmStartResponse {
            virtualization: "fake".into(),
            image: "other".into(),
            cpu: 1,
        });
        let job = worker.next_warm_job().expect("a warm job");
        let (_tx, mut rx) = watch::channel(false);
        worker.fill_one(job, &mut rx).await;
    }
    assert_eq!(worker.lock().ready.total(), 2);
    try_create(&worker, "fake", 1).await.unwrap();
    try_create(&worker, "fake", 1).await.unwrap();
    // 400 MiB in use: the next cold create retires a warm sandbox first (300 MiB), boots.
    try_create(&worker, "fake", 1).await.unwrap();
    assert_eq!(worker.lock().ready.total(), 1);
    // 400 MiB again: the last warm one goes, then 400 MiB with nothing left to retire.
    try_create(&worker, "fake", 1).await.unwrap();
    assert_eq!(worker.lock().ready.total(), 0);
    let err = try_create(&worker, "fake", 1).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "no capacity: memory high watermark reached"
    );
    assert!(matches!(err, WorkerError::NoCapacity(_)));
    assert_eq!(containers.live_count(), 4);
    // Above the watermark, nothing is warmed either.
    assert!(worker.above_memory_watermark());
}

/// A memory limit on the sandboxes' cgroup (the backend's ceiling) counts as well: above 90 %
/// of it creates are refused, even far below the host's watermark; lifted, they go on.
#[tokio::test]
async fn a_memory_ceiling_of_the_backend_refuses_creates_above_ninety_percent() {
    let clock = Arc::new(ManualClock::new(t0()));
    let containers = FakeBackend::new()
        .with_clock(clock.clone())
        .with_overcommit()
        .with_memory_per_vm(100 << 20);
    containers.set_memory_ceiling(Some(400 << 20));
    let worker = Worker::new(
        WorkerConfig {
            total_cores: 2,
            total_memory_mib: 2048,
            max_live_sandboxes: 64,
            capacity: CapacityConfig {
                cpu_overcommit: 32,
                memory_overcommit: 32,
                memory_high_watermark_mib: Some(1 << 20),
                max_warm_per_tuple: None,
                warm_fill_parallelism: 1,
            },
            ..config()
        },
        vec![Arc::new(containers.clone())],
        clock,
        Arc::new(Metrics::new(false)),
        None,
    );
    // 0, 100, 200, 300 MiB in use: at most 360 MiB (90 % of 400), so four creates.
    for _ in 0..4 {
        try_create(&worker, "fake", 1).await.unwrap();
    }
    // 400 MiB > 360 MiB.
    let err = try_create(&worker, "fake", 1).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "no capacity: memory high watermark reached"
    );
    assert_eq!(containers.live_count(), 4);
    containers.set_memory_ceiling(None);
    try_create(&worker, "fake", 1).await.unwrap();
    // Without a configured watermark the ceiling still holds.
    containers.set_memory_ceiling(Some(400 << 20));
    let unbounded = Worker::new(
        WorkerConfig {
            capacity: CapacityConfig {
                memory_high_watermark_mib: None,
                ..worker.config().capacity.clone()
            },
            ..worker.config().clone()
        },
        vec![Arc::new(containers.clone())],
        Arc::new(ManualClock::new(t0())),
        Arc::new(Metrics::new(false)),
        None,
    );
    assert!(unbounded.above_memory_watermark());
}

/// A full disk under the backend is a lack of room, said as such (503 `no capacity: the
/// worker's disk is full`), not a generic provisioning failure; the worker then tells the
/// broker it takes no new sandboxes for a pause, after which it does again.
#[tokio::test]
async fn a_full_disk_is_no_capacity_and_pauses_new_sandboxes() {
    let full = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let flag = full.clone();
    let fake = FakeBackend::new().with_provision_failure(move |_| {
        flag.load(std::sync::atomic::Ordering::SeqCst).then(|| {
            crate::backend::BackendError::host_disk(
                "prepare sandbox",
                std::io::Error::from_raw_os_error(28),
            )
        })
    });
    let clock = Arc::new(ManualClock::new(t0()));
    let worker = Worker::new(
        config(),
        vec![Arc::new(fake)],
        clock.clone(),
        Arc::new(Metrics::new(false)),
        None,
    );
    assert_eq!(
        worker.registration_request().accepting_sandboxes,
        Some(true)
    );
    let err = try_create(&worker, "fake", 1).await.unwrap_err();
    assert!(matches!(err, WorkerError::BackendNoCapacity(_)), "{err:?}");
    assert_eq!(err.to_string(), "no capacity: the worker's disk is full");
    assert_eq!(
        worker.registration_request().accepting_sandboxes,
        Some(false)
    );
    // Other errors of the host's I/O stay what they are.
    let other = crate::backend::BackendError::host_disk(
        "prepare sandbox",
        std::io::Error::from_raw_os_error(13),
    );
    assert!(matches!(other, crate::backend::BackendError::Io { .. }));

    full.store(false, std::sync::atomic::Ordering::SeqCst);
    clock.advance(BACKEND_FULL_PAUSE - Duration::from_secs(1));
    worker.end_backend_full_pause();
    assert_eq!(
        worker.registration_request().accepting_sandboxes,
        Some(false)
    );
    clock.advance(Duration::from_secs(1));
    worker.end_backend_full_pause();
    assert_eq!(
        worker.registration_request().accepting_sandboxes,
        Some(true)
    );
    try_create(&worker, "fake", 1).await.unwrap();
}

#[tokio::test]
async fn warm_targets_stop_at_the_ceiling() {
    let (worker, _, _) = overcommitted(|c| c.capacity.max_warm_per_tuple = Some(3));
    // Plenty of demand for one tuple.
    for _ in 0..40 {
        let id = try_create(&worker, "fake", 1).await.unwrap();
        worker.delete_sandbox(&dev(), &id).await.unwrap();
    }
    let target = || {
        let mut state = worker.lock();
        let targets = worker.warm_targets(&mut state);
        targets.values().copied().max().unwrap_or(0)
    };
    // Every create found the pool empty (nothing fills it here): a burst of 40 raises the
    // ceiling to 40, but at most to 4 times the configured one (it decays with the demand's
    // half-life; see warm::BurstTracker).
    assert_eq!(target(), 12);
    worker.lock().bursts = crate::warm::BurstTracker::new();
    for _ in 0..10 {
        let id = try_create(&worker, "fake", 1).await.unwrap();
        worker.delete_sandbox(&dev(), &id).await.unwrap();
    }
    assert_eq!(target(), 10, "a burst of 10");
    worker.lock().bursts = crate::warm::BurstTracker::new();
    assert_eq!(target(), 3, "without bursts, the ceiling");
}
