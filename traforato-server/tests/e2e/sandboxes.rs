//! Sandbox lifecycle through the broker (create, get, lease, delete) and the worker's routing
//! errors.

use std::sync::Arc;

use serde_json::json;
use traforato_core::backend::fake::FakeBackend;
use traforato_core::backend::VmBackend;

use crate::harness::*;

#[tokio::test]
async fn sandbox_lifecycle_through_the_broker() {
    let stack = Stack::dev().await;
    let created = stack
        .create(json!({"image": "ubuntu:24.04", "cpu": 2, "virtualization": "fake"}))
        .await;
    assert!(created.get("worker_hash").is_none());
    assert_eq!(created["cpu"], 2);
    assert_eq!(created["virtualization"], "fake");
    let id = created["sandbox_id"].as_str().unwrap().to_string();
    assert!(id.starts_with("sbx-broker_local-worker_local-"));

    let resp = follow()
        .get(stack.sandbox(&id, ""))
        .expect_status(200)
        .await;
    let got = body_json(resp).await;
    assert_eq!(got["sandbox_id"], id.as_str());
    assert_eq!(got["image"], "ubuntu:24.04");
    assert!(got["created_at"].is_string() && got["expires_at"].is_string());

    let resp = follow()
        .patch(stack.sandbox(&id, "/lease?ttl_seconds=600"))
        .expect_status(200)
        .await;
    assert_eq!(body_json(resp).await["sandbox_id"], id.as_str());
    follow()
        .patch(stack.sandbox(&id, "/lease?ttl_seconds=0"))
        .expect_error(400, "ttl_seconds must be > 0")
        .await;

    follow()
        .post(stack.broker.at("/sandboxes"))
        .json(&json!({"virtualization": "fake", "cpu": 1}))
        .expect_error(400, "image is required")
        .await;

    let resp = follow()
        .delete(stack.sandbox(&id, ""))
        .expect_status(204)
        .await;
    assert!(resp.headers().contains_key("x-request-id"));
    follow()
        .get(stack.sandbox(&id, ""))
        .expect_error(404, "sandbox not found")
        .await;
    stack.stop().await.unwrap();
}

#[tokio::test]
async fn worker_routing_errors() {
    let stack = Stack::dev().await;
    let w = &stack.worker;
    follow()
        .get(w.at("/sandboxes/not-an-id/files"))
        .expect_error(400, "malformed sandbox_id")
        .await;
    follow()
        .get(w.at("/nothing"))
        .expect_error(404, "route not found")
        .await;
    let id = stack.create_id().await;
    follow()
        .post(w.at(&format!("/sandboxes/{id}")))
        .expect_error(404, "route not found")
        .await;
    // The exec WebSocket: query errors and a plain GET are JSON errors before any upgrade.
    for (query, status, message) in [
        ("", 400, "command query parameter is required"),
        (
            "?command=true&rows=3",
            400,
            "rows and cols must be given together",
        ),
        (
            "?command=true&stdin=1&interactive=0",
            400,
            "interactive and stdin conflict",
        ),
        (
            "?command=true&session=s1",
            400,
            "websocket upgrade required",
        ),
        ("?command=true", 400, "websocket upgrade required"),
    ] {
        expect_error(
            follow()
                .get(w.at(&format!("/sandboxes/{id}/exec/ws{query}")))
                .send()
                .await
                .unwrap(),
            status,
            message,
        )
        .await;
    }
    // Ids naming another broker or worker are not this worker's.
    let foreign = id.replace("worker_local", "worker_other");
    follow()
        .get(w.at(&format!("/sandboxes/{foreign}")))
        .expect_error(404, "sandbox not found")
        .await;
    let foreign = id.replace("broker_local", "broker_other");
    follow()
        .get(w.at(&format!("/sandboxes/{foreign}")))
        .expect_error(404, "sandbox not found")
        .await;
    stack.stop().await.unwrap();
}

#[tokio::test]
async fn tart_gets_its_default_image() {
    let broker = TestBroker::dev(broker_config()).await;
    let backends: Vec<Arc<dyn VmBackend>> = vec![
        Arc::new(FakeBackend::new()),
        Arc::new(FakeBackend::with_virtualization("tart")),
    ];
    let worker = dev_worker(Some(&broker.url), backends, |_| {}).await;
    let resp = follow()
        .post(worker.at("/sandboxes"))
        .json(&json!({"virtualization": "tart", "cpu": 1}))
        .expect_status(201)
        .await;
    let created = body_json(resp).await;
    assert_eq!(created["virtualization"], "tart");
    let id = created["sandbox_id"].as_str().unwrap();
    let got = body_json(
        follow()
            .get(worker.at(&format!("/sandboxes/{id}")))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(got["image"], "ghcr.io/cirruslabs/macos-tahoe-base:latest");
    worker.stop().await.unwrap();
    broker.stop().await.unwrap();
}

/// Network egress over HTTP: the create field through the broker, `GET` showing the policy in
/// force, `PATCH /network` changing it, and the refusals' statuses and messages.
#[tokio::test]
async fn network_policies_over_http() {
    let stack = Stack::dev().await;
    let created = stack
        .create(json!({
            "image": "ubuntu:24.04",
            "virtualization": "fake",
            "network": {"egress": "allow", "allow": ["PyPI.org", "10.0.0.1"]}
        }))
        .await;
    let id = created["sandbox_id"].as_str().unwrap().to_string();
    let got = body_json(
        follow()
            .get(stack.sandbox(&id, ""))
            .expect_status(200)
            .await,
    )
    .await;
    assert_eq!(
        got["network"],
        json!({"egress": "allow", "allow": ["pypi.org", "10.0.0.1"]})
    );

    let changed = body_json(
        follow()
            .patch(stack.sandbox(&id, "/network"))
            .json(&json!({"egress": "all"}))
            .expect_status(200)
            .await,
    )
    .await;
    assert_eq!(
        changed,
        json!({"sandbox_id": id, "network": {"egress": "all"}})
    );
    follow()
        .patch(stack.sandbox(&id, "/network"))
        .json(&json!({"allow": ["pypi.org"]}))
        .expect_error(400, "network.egress is required (none, all or allow)")
        .await;
    follow()
        .patch(stack.sandbox(&id, "/network"))
        .json(&json!({"egress": "allow", "allow": ["bad name"]}))
        .expect_error(400, "network.allow rule \"bad name\": not a domain name")
        .await;
    follow()
        .post(stack.broker.at("/sandboxes"))
        .json(&json!({"image": "x", "virtualization": "fake", "network": {"egress": "open"}}))
        .expect_error(
            400,
            "network.egress must be none, all or allow, not \"open\"",
        )
        .await;
    stack.stop().await.unwrap();
}
