//! Broker routes: health, metrics, availability, redirects to the owning worker, registration,
//! placement, ready hints and the VM-start queue, leases, shutdown.

use std::sync::Arc;
use std::time::Duration;

use chrono::TimeZone;
use serde_json::json;
use traforato_core::broker::BrokerConfig;
use traforato_core::clock::ManualClock;

use crate::harness::*;

#[tokio::test]
async fn health_metrics_and_request_ids() {
    let stack = Stack::dev().await;
    for url in [stack.broker.at("/healthz"), stack.worker.at("/healthz")] {
        let resp = follow()
            .get(&url)
            .header("x-request-id", "  my-request  ")
            .expect_status(200)
            .await;
        assert_eq!(resp.headers()["content-type"], "application/json");
        assert_eq!(resp.headers()["x-request-id"], "my-request");
        let body = body_json(resp).await;
        if url == stack.broker.at("/healthz") {
            // The broker says which instance it is: workers notice its restarts by it.
            assert_eq!(body["status"], "ok");
            assert_eq!(
                body["instance_id"].as_str(),
                Some(stack.broker.broker.instance_id())
            );
        } else {
            assert_eq!(body, json!({"status": "ok"}));
        }
    }
    // A fresh ULID on every response without one: errors, redirects, 204s.
    let not_found = follow().get(stack.broker.at("/nope")).send().await.unwrap();
    let redirect = no_follow()
        .get(stack.sandbox(&sandbox_id_on("worker_local"), ""))
        .send()
        .await
        .unwrap();
    let no_content = follow()
        .delete(stack.broker.at("/internal/workers/nobody/registration"))
        .send()
        .await
        .unwrap();
    assert_eq!(redirect.status(), 307);
    assert_eq!(no_content.status(), 204);
    for resp in [&not_found, &redirect, &no_content] {
        let id = resp.headers()["x-request-id"].to_str().unwrap();
        assert_eq!(id.len(), 26);
        assert!(ulid::Ulid::from_string(id).is_ok());
    }
    expect_error(not_found, 404, "route not found").await;

    for url in [stack.broker.at("/metrics"), stack.worker.at("/metrics")] {
        let resp = follow().get(&url).expect_status(200).await;
        assert_eq!(resp.headers()["content-type"], "text/plain; version=0.0.4");
        let text = resp.text().await.unwrap();
        assert!(
            text.contains("# TYPE traforato_service_auth_mode gauge"),
            "{text}"
        );
        assert!(text.contains("traforato_service_auth_mode 0"), "{text}");
    }
    stack.stop().await.unwrap();
}

#[tokio::test]
async fn availability_text_shape() {
    let now = chrono::Utc.with_ymd_and_hms(2026, 2, 25, 12, 0, 0).unwrap();
    let broker = TestBroker::dev_with_clock(broker_config(), Arc::new(ManualClock::new(now))).await;
    let resp = follow()
        .get(broker.at("/metrics/sandboxes"))
        .expect_status(200)
        .await;
    assert_eq!(resp.headers()["content-type"], "text/plain; charset=utf-8");
    let text = resp.text().await.unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "# traforato broker sandbox availability");
    assert!(
        text.contains("\ngenerated_at=2026-02-25T12:00:00Z\n"),
        "{text}"
    );
    assert!(text.contains("\nbroker_id=broker_local\n"), "{text}");
    for key in [
        "workers_registered_total",
        "workers_active_total",
        "workers_unavailable_total",
        "workers_static_total",
        "workers_dynamic_total",
        "available_sandboxes_total",
        "available_sandbox_kinds_total",
    ] {
        assert!(text.contains(&format!("\n{key}=")), "{key} in {text}");
    }
    assert!(
        text.contains("\n\nvirtualization\timage\tcpu\tavailable\n"),
        "{text}"
    );
    // Only GET is served.
    follow()
        .head(broker.at("/metrics/sandboxes"))
        .expect_status(404)
        .await;
    broker.stop().await.unwrap();
}

#[tokio::test]
async fn sandbox_scoped_requests_redirect_to_the_owner() {
    let broker = TestBroker::dev(broker_config()).await;
    broker
        .register_remote("worker_a", "http://worker-a.local:8081", "")
        .await;
    let id = sandbox_id_on("worker_a");
    let resp = no_follow()
        .get(broker.at(&format!("/sandboxes/{id}")))
        .header(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )
        .header("tracestate", "vendor=opaque")
        .expect_status(307)
        .await;
    assert_eq!(
        resp.headers()["location"],
        format!("http://worker-a.local:8081/sandboxes/{id}").as_str()
    );
    let traceparent = resp.headers()["traceparent"].to_str().unwrap();
    assert!(traceparent.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
    assert!(!traceparent.contains("00f067aa0ba902b7"));
    assert_eq!(resp.headers()["tracestate"], "vendor=opaque");

    // Method and query are kept; the query verbatim.
    let resp = no_follow()
        .delete(broker.at(&format!("/sandboxes/{id}/files?path=%2Fa&recursive=true")))
        .expect_status(307)
        .await;
    assert_eq!(
        resp.headers()["location"],
        format!("http://worker-a.local:8081/sandboxes/{id}/files?path=%2Fa&recursive=true")
            .as_str()
    );

    no_follow()
        .get(broker.at("/sandboxes/not-an-id"))
        .expect_error(400, "malformed sandbox_id")
        .await;
    // A worker this broker never heard of, just after its start: perhaps the broker
    // restarted and the worker has not registered again yet. 503 and a retry, not 404.
    let resp = no_follow()
        .get(broker.at(&format!("/sandboxes/{}", sandbox_id_on("worker_zz"))))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["retry-after"], "1");
    expect_error(
        resp,
        503,
        "worker not registered yet: the broker restarted, retry shortly",
    )
    .await;
    // Past the grace (none configured here), an unknown worker is unknown.
    let settled = TestBroker::dev(BrokerConfig {
        restart_grace: std::time::Duration::ZERO,
        ..broker_config()
    })
    .await;
    no_follow()
        .get(settled.at(&format!("/sandboxes/{}", sandbox_id_on("worker_zz"))))
        .expect_error(404, "worker id unknown")
        .await;
    no_follow()
        .get(broker.at(&format!(
            "/sandboxes/sbx-other_broker-worker_a-{VALID_UUID}"
        )))
        .expect_error(404, "broker id mismatch")
        .await;
    broker.stop().await.unwrap();
}

#[tokio::test]
async fn registration_and_placement_by_sku() {
    let broker = TestBroker::dev(broker_config()).await;
    let registered = broker
        .register_remote("worker_a", "http://worker-a.local:8081", "cpu-standard")
        .await;
    assert_eq!(registered["worker_id"], "worker_a");
    assert_eq!(registered["lease_ttl_seconds"], 120);
    assert_eq!(registered["heartbeat_interval_seconds"], 30);
    assert!(registered["expires_at"].is_string());
    broker
        .register_remote("worker_b", "http://worker-b.local:8081", "gpu-a100")
        .await;

    let resp = no_follow()
        .post(broker.at("/sandboxes"))
        .json(&json!({"image": "ubuntu:24.04", "cpu": 1, "hardware_sku": "gpu-a100"}))
        .expect_status(307)
        .await;
    assert_eq!(
        resp.headers()["location"],
        "http://worker-b.local:8081/sandboxes"
    );
    assert!(resp.headers().contains_key("traceparent"));

    no_follow()
        .post(broker.at("/sandboxes"))
        .json(&json!({"image": "ubuntu:24.04", "hardware_sku": "tpu-v9"}))
        .expect_error(503, "no placement capacity")
        .await;

    let resp = follow()
        .put(broker.at("/internal/workers/worker_c/registration"))
        .json(&json!({"hostname": "c", "base_url": "tcp://worker-a.local:8081"}))
        .send()
        .await
        .unwrap();
    expect_error(resp, 400, "base_url must use http or https").await;
    let resp = follow()
        .put(broker.at("/internal/workers/worker-c/registration"))
        .json(&json!({"hostname": "c", "base_url": "http://c:1"}))
        .send()
        .await
        .unwrap();
    expect_error(resp, 400, "invalid worker id").await;
    broker.stop().await.unwrap();
}

#[tokio::test]
async fn ready_hints_and_vm_start_queue() {
    let broker = TestBroker::dev(broker_config()).await;
    broker
        .register_remote("worker_a", "http://worker-a.local:8081", "cpu-standard")
        .await;
    follow()
        .post(broker.at("/internal/workers/worker_a/vm-events"))
        .json(&json!({
            "event": "ready",
            "local_vm_id": VALID_UUID,
            "virtualization": "vetu",
            "image": "ubuntu:24.04",
            "cpu": 2,
        }))
        .expect_status(204)
        .await;

    let resp = no_follow()
        .post(broker.at("/sandboxes"))
        .json(&json!({"virtualization": "vetu", "image": "ubuntu:24.04", "cpu": 2}))
        .expect_status(307)
        .await;
    let location = url::Url::parse(resp.headers()["location"].to_str().unwrap()).unwrap();
    assert_eq!(location.host_str(), Some("worker-a.local"));
    assert_eq!(location.port(), Some(8081));
    assert_eq!(location.path(), "/sandboxes");
    assert_eq!(
        location.query(),
        Some(format!("local_vm_id={VALID_UUID}").as_str())
    );

    // The hint is used up: the next create is cold and queues one VM start.
    let resp = no_follow()
        .post(broker.at("/sandboxes"))
        .json(&json!({
            "virtualization": "vetu", "image": "ubuntu:24.04", "cpu": 2,
            "hardware_sku": "cpu-standard"
        }))
        .expect_status(307)
        .await;
    assert_eq!(
        resp.headers()["location"],
        "http://worker-a.local:8081/sandboxes"
    );
    let resp = follow()
        .post(broker.at("/internal/workers/worker_a/vm-start"))
        .expect_status(200)
        .await;
    assert_eq!(
        body_json(resp).await,
        json!({"virtualization": "vetu", "image": "ubuntu:24.04", "cpu": 2})
    );
    follow()
        .post(broker.at("/internal/workers/worker_a/vm-start"))
        .expect_status(204)
        .await;

    // Bad events.
    let resp = follow()
        .post(broker.at("/internal/workers/worker_a/vm-events"))
        .json(&json!({"event": "exploded", "local_vm_id": VALID_UUID, "image": "x"}))
        .send()
        .await
        .unwrap();
    expect_error(resp, 400, "invalid vm event").await;
    let resp = follow()
        .post(broker.at("/internal/workers/worker_a/vm-events"))
        .body("not json")
        .send()
        .await
        .unwrap();
    expect_error(resp, 400, "invalid request body").await;
    broker.stop().await.unwrap();
}

#[tokio::test]
async fn placement_retry_limits() {
    let broker = TestBroker::dev(BrokerConfig {
        placement_retry_max: 1,
        ..broker_config()
    })
    .await;
    broker
        .register_remote("worker_a", "http://worker-a.local:8081", "")
        .await;
    let create = |query: &'static str| {
        no_follow()
            .post(broker.at(&format!("/sandboxes{query}")))
            .json(&json!({"image": "ubuntu:24.04"}))
            .send()
    };
    expect_error(
        create("?placement_retry=2").await.unwrap(),
        503,
        "placement retry exhausted",
    )
    .await;
    expect_error(
        create("?placement_retry=abc").await.unwrap(),
        400,
        "invalid placement_retry",
    )
    .await;
    let resp = create("?placement_retry=1").await.unwrap();
    assert_eq!(resp.status(), 307);
    assert_eq!(
        resp.headers()["location"],
        "http://worker-a.local:8081/sandboxes?placement_retry=1"
    );
    broker.stop().await.unwrap();
}

#[tokio::test]
async fn internal_routes_refuse_other_methods_and_query_does_not_route() {
    let broker = TestBroker::dev(broker_config()).await;
    broker
        .register_remote("worker_a", "http://worker-a.local:8081", "")
        .await;
    for (method, leaf) in [
        (reqwest::Method::GET, "registration"),
        (reqwest::Method::POST, "registration"),
        (reqwest::Method::GET, "vm-events"),
        (reqwest::Method::DELETE, "vm-start"),
    ] {
        let resp = follow()
            .request(
                method,
                broker.at(&format!("/internal/workers/worker_a/{leaf}")),
            )
            .send()
            .await
            .unwrap();
        assert!(!resp.headers().contains_key("allow"));
        expect_error(resp, 405, "method not allowed").await;
    }
    // No `?sandbox_id=` shortcut: a create stays a create.
    let sandbox = sandbox_id_on("worker_a");
    let resp = no_follow()
        .post(broker.at(&format!("/sandboxes?sandbox_id={sandbox}")))
        .json(&json!({"image": "ubuntu:24.04"}))
        .expect_status(307)
        .await;
    assert_eq!(
        resp.headers()["location"],
        "http://worker-a.local:8081/sandboxes"
    );
    let resp = no_follow()
        .get(broker.at(&format!("/elsewhere?sandbox_id={sandbox}")))
        .send()
        .await
        .unwrap();
    expect_error(resp, 404, "route not found").await;
    broker.stop().await.unwrap();
}

#[tokio::test]
async fn lapsed_worker_lease_gives_503() {
    let start = chrono::Utc.with_ymd_and_hms(2026, 2, 25, 12, 0, 0).unwrap();
    let clock = Arc::new(ManualClock::new(start));
    let broker = TestBroker::dev_with_clock(
        BrokerConfig {
            worker_lease_ttl: Duration::from_secs(2),
            ..broker_config()
        },
        clock.clone(),
    )
    .await;
    broker
        .register_remote("worker_a", "http://worker-a.local:8081", "")
        .await;
    let id = sandbox_id_on("worker_a");
    no_follow()
        .get(broker.at(&format!("/sandboxes/{id}")))
        .expect_status(307)
        .await;
    clock.advance(Duration::from_secs(3));
    let resp = no_follow()
        .get(broker.at(&format!("/sandboxes/{id}")))
        .send()
        .await
        .unwrap();
    expect_error(resp, 503, "worker temporarily unavailable").await;
    assert_eq!(broker.broker.sweep_expired_leases(), 1);
    let text = broker.availability().await;
    assert!(text.contains("\nworkers_registered_total=1\n"), "{text}");
    assert!(text.contains("\nworkers_active_total=0\n"), "{text}");
    broker.stop().await.unwrap();
}

#[tokio::test]
async fn shutdown_stops_serving() {
    let broker = TestBroker::dev(broker_config()).await;
    let url = broker.at("/healthz");
    assert_eq!(follow().get(&url).send().await.unwrap().status(), 200);
    broker.stop().await.unwrap();
    assert!(reqwest::Client::new().get(&url).send().await.is_err());
}
