//! A fleet of two workers behind one broker: creates spread over them, and a broker that
//! knows when every worker is full.

use std::collections::BTreeMap;

use serde_json::json;
use traforato_core::id::{ComponentId, SandboxId};
use traforato_core::worker::{PrePullTarget, WorkerConfig};

use crate::harness::*;

/// A worker of 32 cores and sandboxes named `id`.
fn roomy(config: &mut WorkerConfig, id: &str) {
    config.worker_id = ComponentId::parse(id).unwrap();
    config.total_cores = 32;
    config.total_memory_mib = 32 * 1024;
    config.max_live_sandboxes = 32;
}

#[tokio::test]
async fn sequential_creates_use_both_idle_workers() {
    let broker = TestBroker::dev(broker_config()).await;
    // worker_a keeps a warm pool of 16 sandboxes of the tuple; worker_b has none. Neither
    // runs anything.
    let a = dev_worker(Some(&broker.url), fake(), |c| {
        roomy(c, "worker_a");
        c.pre_pull = vec![PrePullTarget {
            target_count: 16,
            ..warm_target()
        }];
    })
    .await;
    let b = dev_worker(Some(&broker.url), fake(), |c| roomy(c, "worker_b")).await;
    wait_until("both workers and worker_a's warm pool", || {
        let broker = &broker;
        async move {
            let text = broker.availability().await;
            text.contains("\nworkers_active_total=2\n")
                && text.contains("\nfake\twarm-img\t1\t16\n")
        }
    })
    .await;

    let body = json!({"virtualization": "fake", "image": "warm-img", "cpu": 1});
    let mut per_worker: BTreeMap<String, usize> = BTreeMap::new();
    for _ in 0..16 {
        let resp = follow()
            .post(broker.at("/sandboxes"))
            .json(&body)
            .expect_status(201)
            .await;
        let created = body_json(resp).await;
        let id = SandboxId::parse(created["sandbox_id"].as_str().unwrap()).unwrap();
        *per_worker.entry(id.worker_id().to_string()).or_default() += 1;
    }
    // Ready sandboxes on worker_a do not pull every create there: once worker_a is much
    // busier than the idle worker_b, cold creates on worker_b win.
    assert_eq!(per_worker.len(), 2, "creates per worker: {per_worker:?}");
    a.stop().await.unwrap();
    b.stop().await.unwrap();
    broker.stop().await.unwrap();
}

#[tokio::test]
async fn the_broker_answers_503_when_every_worker_is_full() {
    let broker = TestBroker::dev(broker_config()).await;
    follow()
        .put(broker.at("/internal/workers/worker_full/registration"))
        .json(&json!({
            "hostname": "worker-full.local",
            "base_url": "http://worker-full.local:8081",
            "total_cores": 8,
            "total_memory_mib": 8192,
            "max_live_sandboxes": 8,
            "live_sandboxes": 8,
            "allocated_cores": 8,
            "allocated_memory_mib": 8192,
        }))
        .expect_status(200)
        .await;
    let create = || {
        no_follow()
            .post(broker.at("/sandboxes"))
            .json(&sandbox_body())
            .send()
    };
    // No redirect into a worker that would refuse: the broker refuses itself.
    expect_error(create().await.unwrap(), 503, "no placement capacity").await;
    // A VM event saying a sandbox went away opens the worker again.
    let mut event = ready_event(VALID_UUID);
    event["event"] = json!("retired");
    event["capacity"] = json!({
        "live_sandboxes": 7,
        "allocated_cores": 7,
        "allocated_memory_mib": 7168,
    });
    let resp = follow()
        .post(broker.at("/internal/workers/worker_full/vm-events"))
        .json(&event)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16() / 100, 2);
    let resp = create().await.unwrap();
    assert_eq!(resp.status(), 307);
    assert_eq!(
        resp.headers()["location"],
        "http://worker-full.local:8081/sandboxes"
    );
    broker.stop().await.unwrap();
}
