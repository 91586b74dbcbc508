//! Warm hints, placement retries and broker restarts.

use serde_json::json;
use traforato_core::id::LocalVmId;

use crate::harness::*;

#[tokio::test]
async fn hinted_create_claims_the_ready_sandbox() {
    let stack = Stack::dev_with(|c| c.pre_pull = vec![warm_target()]).await;
    wait_until("the warm sandbox to be announced", || {
        let broker = &stack.broker;
        async move { broker.availability().await.contains(WARM_ROW) }
    })
    .await;
    let body = json!({"virtualization": "fake", "image": "warm-img", "cpu": 1});
    let resp = no_follow()
        .post(stack.broker.at("/sandboxes"))
        .json(&body)
        .expect_status(307)
        .await;
    let location = resp.headers()["location"].to_str().unwrap().to_string();
    let hinted = url::Url::parse(&location)
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == "local_vm_id")
        .map(|(_, v)| v.into_owned())
        .expect("a local_vm_id hint");
    let resp = follow()
        .post(&location)
        .json(&body)
        .expect_status(201)
        .await;
    let created = body_json(resp).await;
    let id = created["sandbox_id"].as_str().unwrap();
    assert!(id.ends_with(&hinted), "{id} vs {hinted}");
    assert_eq!(created["start_type"], "warm");
    stack.stop().await.unwrap();
}

#[tokio::test]
async fn unknown_hint_bounces_back_to_the_broker() {
    let stack = Stack::dev().await;
    let unknown = LocalVmId::new_random();
    let resp = no_follow()
        .post(stack.worker.at(&format!(
            "/sandboxes?local_vm_id={unknown}&placement_retry=1"
        )))
        .json(&json!({"virtualization": "fake", "image": "ubuntu:24.04", "cpu": 1}))
        .expect_status(307)
        .await;
    assert_eq!(
        resp.headers()["location"],
        format!("{}/sandboxes?placement_retry=2", stack.broker.url).as_str()
    );
    no_follow()
        .post(stack.worker.at("/sandboxes?local_vm_id=nope"))
        .json(&json!({"image": "ubuntu:24.04"}))
        .expect_error(400, "invalid local_vm_id")
        .await;
    stack.stop().await.unwrap();
}

#[tokio::test]
async fn worker_reannounces_after_a_broker_restart() {
    let stack = Stack::dev_with(|c| c.pre_pull = vec![warm_target()]).await;
    wait_until("the warm sandbox to be announced", || {
        let broker = &stack.broker;
        async move { broker.availability().await.contains(WARM_ROW) }
    })
    .await;
    let Stack { broker, worker } = stack;
    let addr = broker.addr;
    broker.stop().await.unwrap();

    let restarted = TestBroker::restart_on(addr, broker_config()).await;
    wait_until("the worker to re-register and re-announce", || {
        let broker = &restarted;
        async move {
            let text = broker.availability().await;
            text.contains("\nworkers_active_total=1\n") && text.contains(WARM_ROW)
        }
    })
    .await;
    assert!(restarted.broker.is_worker_active("worker_local"));
    worker.stop().await.unwrap();
    restarted.stop().await.unwrap();
}
