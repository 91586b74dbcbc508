//! Worker tests: the warm-pool filler: pre-pull floors, warm-up scripts, demand.

use super::*;
use crate::backend::fake::FakeExec;

#[tokio::test]
async fn pre_pull_floor_fills_with_warmup() {
    let tuple = SandboxTuple {
        virtualization: "fake".into(),
        image: "alpine:3.20".into(),
        cpu: 1,
    };
    let h = Harness::with(|c| {
        c.pre_pull = vec![PrePullTarget {
            tuple: tuple.clone(),
            target_count: 2,
            warmup_script: "echo warming".into(),
            warmup_timeout: Duration::from_secs(5),
        }]
    });
    h.fake
        .set_script("echo warming", FakeExec::new().stdout("warming\n"));
    let (_tx, mut stop) = watch::channel(false);
    while let Some(job) = h.worker.next_warm_job() {
        h.worker.fill_one(job, &mut stop).await;
    }
    assert_eq!(h.worker.ready_counts().get(&tuple), Some(&2));
    assert_eq!(h.fake.live_count(), 2);
    let events = h.queued_events();
    assert_eq!(events.len(), 2);
    assert!(events.iter().all(|e| e.event == "ready"
        && e.image == "alpine:3.20"
        && LocalVmId::parse(&e.local_vm_id).is_ok()));
    let m = &h.worker.metrics().worker;
    let labels = WorkerCpuLabels {
        worker_id: "worker_a",
        cpu: "1",
    };
    assert_eq!(m.warm_target.value(&labels), Some(2.0));
    assert_eq!(m.warm_ready.value(&labels), Some(2.0));
    assert_eq!(m.warm_deficit.value(&labels), Some(0.0));
}

#[tokio::test]
async fn failing_warmup_destroys_the_vm_and_backs_off() {
    let tuple = SandboxTuple {
        virtualization: "fake".into(),
        image: "alpine:3.20".into(),
        cpu: 1,
    };
    let h = Harness::with(|c| {
        c.pre_pull = vec![PrePullTarget {
            tuple: tuple.clone(),
            target_count: 1,
            warmup_script: "echo nope >&2; exit 3".into(),
            warmup_timeout: Duration::from_secs(5),
        }]
    });
    h.fake.set_script(
        "echo nope >&2; exit 3",
        FakeExec::new().stderr("nope\n").exit_code(3),
    );
    let (_tx, mut stop) = watch::channel(false);
    let job = h.worker.next_warm_job().unwrap();
    h.worker.fill_one(job, &mut stop).await;
    assert!(h.worker.next_warm_job().is_none(), "backing off");
    assert!(h.worker.ready_counts().is_empty());
    assert_eq!(h.fake.live_count(), 0);
    assert_eq!(h.fake.counters().destroys, 1);
    assert!(h.queued_events().is_empty());
    assert_eq!(
        h.worker
            .metrics()
            .worker
            .warmup_failures
            .value(&WarmupFailureLabels {
                worker_id: "worker_a",
                cpu: "1",
                reason: "warmup"
            }),
        Some(1.0)
    );
    // A provision failure counts too.
    let h = Harness::with(|c| {
        c.pre_pull = vec![PrePullTarget {
            tuple: tuple.clone(),
            target_count: 1,
            warmup_script: String::new(),
            warmup_timeout: Duration::from_secs(5),
        }]
    });
    h.fake.fail_next_provisions(1);
    let job = h.worker.next_warm_job().unwrap();
    h.worker.fill_one(job, &mut stop).await;
    assert_eq!(
        h.worker
            .metrics()
            .worker
            .warmup_failures
            .value(&WarmupFailureLabels {
                worker_id: "worker_a",
                cpu: "1",
                reason: "provision"
            }),
        Some(1.0)
    );
    assert_eq!(h.fake.live_count(), 0);
}

#[tokio::test(start_paused = true)]
async fn filler_follows_demand_within_capacity() {
    let h = Harness::with(|c| c.max_live_sandboxes = 3);
    let (run, stop) = h.start();
    h.sandbox().await;
    eventually("pool filled to capacity", || {
        h.worker.ready_counts().values().sum::<usize>() == 2
    })
    .await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(h.fake.live_count(), 3, "never beyond max_live_sandboxes");
    // The next create is warm.
    assert_eq!(h.create(&dev(), req("img", 1)).await.start_type, "warm");
    stop.send(()).unwrap();
    run.await.unwrap();
    assert_eq!(h.live_vms(), 0);
}

/// Issue "cold start": while the pool lacks more than one sandbox the filler provisions
/// `warm_fill_parallelism` of them at once, never more.
#[tokio::test]
async fn the_filler_provisions_in_parallel_while_the_pool_is_short() {
    let tuple = SandboxTuple {
        virtualization: "fake".into(),
        image: "alpine:3.20".into(),
        cpu: 1,
    };
    for parallel in [1u32, 2, 3] {
        let fake = FakeBackend::new().with_provision_delay(Duration::from_millis(30));
        let worker = worker_with(fake, |c| {
            c.capacity.warm_fill_parallelism = parallel;
            c.pre_pull = vec![PrePullTarget {
                tuple: tuple.clone(),
                target_count: 5,
                warmup_script: String::new(),
                warmup_timeout: Duration::from_secs(5),
            }];
        });
        let (stop_tx, stop) = watch::channel(false);
        let filler = tokio::spawn(Arc::clone(&worker).run_filler(stop));
        let mut most = 0;
        for _ in 0..2000 {
            let warming: usize = worker.lock().warming.values().sum();
            most = most.max(warming);
            if worker.ready_counts().get(&tuple) == Some(&5) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        assert_eq!(
            worker.ready_counts().get(&tuple),
            Some(&5),
            "the pool filled"
        );
        assert_eq!(most, parallel as usize, "warmed at once");
        stop_tx.send(true).unwrap();
        filler.await.unwrap();
    }
}
