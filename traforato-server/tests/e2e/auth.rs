//! Prod mode for clients: tokens checked on broker creates and on every worker route,
//! sandbox ownership; dev mode needs no tokens, and dev shells refuse prod cores.

use std::sync::Arc;

use serde_json::{json, Value};
use tokio::net::TcpListener;
use traforato_core::auth::AuthMode;
use traforato_core::broker::{Broker, BrokerConfig};
use traforato_core::clock::SystemClock;
use traforato_core::scheduler::LeastLoaded;
use traforato_core::telemetry::{AuthFailureLabels, Metrics};
use traforato_core::worker::{Worker, WorkerConfig};
use traforato_server::{serve_broker, serve_broker_with_auth, serve_worker, BrokerAuth};

use crate::harness::*;

#[tokio::test]
async fn prod_broker_checks_client_tokens_on_create_only() {
    let broker = TestBroker::prod().await;
    // §11.30 and friends: no token needed for health, metrics and availability.
    for path in ["/healthz", "/metrics", "/metrics/sandboxes"] {
        let resp = follow().get(broker.at(path)).send().await.unwrap();
        assert_eq!(resp.status(), 200, "{path}");
    }
    let metrics = metrics_text(broker.at("/metrics")).await;
    assert!(
        metrics.contains("\ntraforato_service_auth_mode 1\n"),
        "{metrics}"
    );
    broker
        .register_remote("worker_a", "http://worker-a.local:8081", "")
        .await;

    // §11.36: sandbox-scoped requests are redirected without any token.
    let id = sandbox_id_on("worker_a");
    let resp = no_follow()
        .get(broker.at(&format!("/sandboxes/{id}")))
        .expect_status(307)
        .await;
    assert_eq!(
        resp.headers()["location"],
        format!("http://worker-a.local:8081/sandboxes/{id}").as_str()
    );

    // §11.37: create needs a token.
    let create = |authorization: Option<String>| {
        let mut req = no_follow()
            .post(broker.at("/sandboxes"))
            .json(&json!({"image": "ubuntu:24.04"}));
        if let Some(value) = authorization {
            req = req.header("authorization", value);
        }
        req.send()
    };
    expect_error(
        create(None).await.unwrap(),
        401,
        "unauthorized: missing bearer token",
    )
    .await;
    let resp = create(Some(bearer("client-a"))).await.unwrap();
    assert_eq!(resp.status(), 307);
    assert_eq!(
        resp.headers()["location"],
        "http://worker-a.local:8081/sandboxes"
    );
    // A `?sandbox_id=` query does not turn a create into a redirect without auth (§10.26).
    no_follow()
        .post(broker.at(&format!("/sandboxes?sandbox_id={id}")))
        .json(&json!({"image": "ubuntu:24.04"}))
        .expect_error(401, "unauthorized: missing bearer token")
        .await;

    let now = now_secs();
    let refused: Vec<(String, &str)> = vec![
        (
            "Basic Y2xpZW50OnNlY3JldA==".into(),
            "unauthorized: missing bearer token",
        ),
        ("Bearer ".into(), "unauthorized: missing bearer token"),
        ("bearer x.y.z".into(), "unauthorized: missing bearer token"),
        (
            "Bearer not-a-jwt".into(),
            "unauthorized: token is malformed",
        ),
        (
            format!(
                "Bearer {}",
                with_algorithm("none", &client_claims("client-a"))
            ),
            "unauthorized: token signing algorithm is not allowed",
        ),
        (
            format!(
                "Bearer {}",
                with_algorithm("RS256", &client_claims("client-a"))
            ),
            "unauthorized: token signing algorithm is not allowed",
        ),
        (
            format!(
                "Bearer {}",
                signed("other-secret", &client_claims("client-a"))
            ),
            "unauthorized: token signature is invalid",
        ),
        (
            format!(
                "Bearer {}",
                signed(
                    SECRET,
                    &client_claims_with("exp", json!(now + 10 * 365 * 86_400))
                )
            ),
            "unauthorized: token lifetime (exp - iat) exceeds the maximum of 3600s",
        ),
        (
            format!(
                "Bearer {}",
                signed(SECRET, &client_claims_with("exp", json!(now - 10)))
            ),
            "unauthorized: expired token",
        ),
        (
            format!(
                "Bearer {}",
                signed(SECRET, &client_claims_with("iat", json!(now + 60)))
            ),
            "unauthorized: invalid issued-at",
        ),
        (
            format!(
                "Bearer {}",
                signed(SECRET, &client_claims_with("client_id", Value::Null))
            ),
            "unauthorized: missing client_id claim",
        ),
        (
            format!(
                "Bearer {}",
                signed(SECRET, &client_claims_with("iss", Value::Null))
            ),
            "unauthorized: missing iss claim",
        ),
        (
            format!(
                "Bearer {}",
                signed(SECRET, &client_claims_with("aud", Value::Null))
            ),
            "unauthorized: missing aud claim",
        ),
        (
            format!(
                "Bearer {}",
                signed(SECRET, &client_claims_with("exp", Value::Null))
            ),
            "unauthorized: missing exp claim",
        ),
        (
            format!(
                "Bearer {}",
                signed(SECRET, &client_claims_with("iat", Value::Null))
            ),
            "unauthorized: missing iat claim",
        ),
        (
            format!(
                "Bearer {}",
                signed(SECRET, &client_claims_with("jti", Value::Null))
            ),
            "unauthorized: missing jti claim",
        ),
        (
            format!(
                "Bearer {}",
                signed(SECRET, &client_claims_with("iss", json!("someone-else")))
            ),
            "unauthorized: invalid issuer",
        ),
        (
            format!(
                "Bearer {}",
                signed(
                    SECRET,
                    &client_claims_with("aud", json!("traforato-internal"))
                )
            ),
            "unauthorized: invalid audience",
        ),
        // An internal token is no client token: it is not even signed with the client key.
        (
            internal_bearer("worker_a"),
            "unauthorized: token signature is invalid",
        ),
    ];
    for (authorization, message) in refused {
        expect_error(create(Some(authorization)).await.unwrap(), 401, message).await;
    }

    // `aud` may be a list; one entry must match.
    let listed = client_claims_with("aud", json!(["other", "traforato-api"]));
    let resp = create(Some(format!("Bearer {}", signed(SECRET, &listed))))
        .await
        .unwrap();
    assert_eq!(resp.status(), 307);

    // Replay at the same service.
    let claims = client_claims("client-a");
    let jti = claims["jti"].as_str().unwrap().to_string();
    let once = format!("Bearer {}", signed(SECRET, &claims));
    assert_eq!(create(Some(once.clone())).await.unwrap().status(), 307);
    expect_error(
        create(Some(once)).await.unwrap(),
        401,
        &format!("jwt replay detected: {jti}"),
    )
    .await;
    broker.stop().await.unwrap();
}

#[tokio::test]
async fn prod_worker_authenticates_every_route_before_routing() {
    let stack = Stack::prod().await;
    let w = &stack.worker;
    let failures = || {
        w.worker
            .metrics()
            .worker
            .auth_failures
            .value(&AuthFailureLabels {
                worker_id: "worker_local",
                status_code: 401,
                reason: "jwt",
            })
    };
    // §11.57: health and metrics need no token.
    let resp = follow().get(w.at("/healthz")).expect_status(200).await;
    assert_eq!(body_json(resp).await["status"], "ok");
    let metrics = metrics_text(w.at("/metrics")).await;
    assert!(
        metrics.contains("\ntraforato_service_auth_mode 1\n"),
        "{metrics}"
    );
    assert_eq!(failures(), None);

    // Authentication before routing: unknown routes and malformed ids are 401 without a token.
    for (method, path) in [
        (reqwest::Method::GET, "/nothing"),
        (reqwest::Method::POST, "/healthz"),
        (reqwest::Method::POST, "/sandboxes"),
        (reqwest::Method::GET, "/sandboxes/not-an-id"),
    ] {
        follow()
            .request(method, w.at(path))
            .expect_error(401, "unauthorized: missing bearer token")
            .await;
    }
    assert_eq!(failures(), Some(4.0));
    follow()
        .get(w.at("/nothing"))
        .header("authorization", bearer("client-a"))
        .expect_error(404, "route not found")
        .await;
    follow()
        .get(w.at("/sandboxes/not-an-id"))
        .header("authorization", bearer("client-a"))
        .expect_error(400, "malformed sandbox_id")
        .await;
    follow()
        .post(w.at("/sandboxes"))
        .header(
            "authorization",
            format!(
                "Bearer {}",
                signed(SECRET, &client_claims_with("exp", json!(now_secs() - 1)))
            ),
        )
        .json(&sandbox_body())
        .expect_error(401, "unauthorized: expired token")
        .await;
    assert_eq!(failures(), Some(5.0));

    // One token, one request per service: it passes the broker and then the worker once (the
    // caches are separate, as in the prototype), and is refused on its next use.
    let claims = client_claims("client-a");
    let jti = claims["jti"].as_str().unwrap().to_string();
    let shared = format!("Bearer {}", signed(SECRET, &claims));
    let resp = no_follow()
        .post(stack.broker.at("/sandboxes"))
        .header("authorization", &shared)
        .json(&sandbox_body())
        .expect_status(307)
        .await;
    let location = resp.headers()["location"].to_str().unwrap().to_string();
    let resp = no_follow()
        .post(&location)
        .header("authorization", &shared)
        .json(&sandbox_body())
        .expect_status(201)
        .await;
    let id = body_json(resp).await["sandbox_id"]
        .as_str()
        .unwrap()
        .to_string();
    follow()
        .get(w.at(&format!("/sandboxes/{id}")))
        .header("authorization", &shared)
        .expect_error(401, &format!("jwt replay detected: {jti}"))
        .await;
    assert_eq!(failures(), Some(6.0));
    // A fresh token works.
    follow()
        .get(w.at(&format!("/sandboxes/{id}")))
        .header("authorization", bearer("client-a"))
        .expect_status(200)
        .await;
    stack.stop().await.unwrap();
}

#[tokio::test]
async fn prod_sandboxes_belong_to_their_creator_on_every_route() {
    let stack = Stack::prod().await;
    let id = stack.create_as("client-a").await;
    let upstream = start_upstream().await.port();
    let w = &stack.worker;
    let send = |client: &str, method: reqwest::Method, rest: &str, body: Option<Value>| {
        let mut req = follow()
            .request(method, w.at(&format!("/sandboxes/{id}{rest}")))
            .header("authorization", bearer(client));
        if let Some(body) = body {
            req = req.json(&body);
        }
        req.send()
    };
    use reqwest::Method as M;

    // The owner sets the stage: a file and an exec.
    let resp = send(
        "client-a",
        M::PUT,
        "/files?path=/workspace/a.txt",
        Some(json!({"content": "Hello", "encoding": "utf8"})),
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), 200);
    let resp = send(
        "client-a",
        M::POST,
        "/exec",
        Some(json!({"command": "echo hi"})),
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), 202);
    let exec_id = body_json(resp).await["exec_id"]
        .as_str()
        .unwrap()
        .to_string();

    // (method, route, body, the owner's status). The owner's own requests come after the
    // stranger's, so a 403 cannot be a side effect of anything the stranger did.
    let routes: Vec<(M, String, Option<Value>, u16)> = vec![
        (M::GET, String::new(), None, 200),
        (M::PATCH, "/lease?ttl_seconds=600".into(), None, 200),
        (
            M::PUT,
            "/files?path=/workspace/b.txt".into(),
            Some(json!({"content": "x", "encoding": "utf8"})),
            200,
        ),
        (M::GET, "/files?path=/workspace/a.txt".into(), None, 200),
        (M::GET, "/files/raw?path=/workspace/a.txt".into(), None, 200),
        (
            M::GET,
            "/files/stat?path=/workspace/a.txt".into(),
            None,
            200,
        ),
        (M::GET, "/files/list?path=/workspace".into(), None, 200),
        (
            M::POST,
            "/files/mkdir".into(),
            Some(json!({"path": "/"})),
            200,
        ),
        (
            M::POST,
            "/files/mkdir".into(),
            Some(json!({"path": "/workspace/src", "recursive": true})),
            200,
        ),
        (
            M::POST,
            "/exec".into(),
            Some(json!({"command": "echo hi"})),
            202,
        ),
        (
            M::POST,
            "/exec/code".into(),
            Some(json!({"runtime": "python", "code": "print(1)"})),
            200,
        ),
        // The owner passes the ownership check; without an upgrade it is a 400.
        (M::GET, "/exec/ws?command=true".into(), None, 400),
        (M::GET, format!("/exec/{exec_id}"), None, 200),
        (M::GET, format!("/exec/{exec_id}/frames"), None, 200),
        (M::GET, format!("/proxy/{upstream}/x"), None, 200),
        (M::POST, format!("/proxy/{upstream}"), None, 200),
        (M::GET, format!("/ports/{upstream}/url"), None, 200),
        (M::DELETE, "/files?path=/workspace/b.txt".into(), None, 204),
        (M::DELETE, String::new(), None, 204),
    ];
    for (method, rest, body, _) in &routes {
        expect_error(
            send("client-b", method.clone(), rest, body.clone())
                .await
                .unwrap(),
            403,
            "sandbox ownership mismatch",
        )
        .await;
    }
    for (method, rest, body, status) in routes {
        let resp = send("client-a", method.clone(), &rest, body).await.unwrap();
        assert_eq!(resp.status().as_u16(), status, "{method} {rest}");
    }
    // Deleted: missing for everyone.
    expect_error(
        send("client-b", M::GET, "", None).await.unwrap(),
        404,
        "sandbox not found",
    )
    .await;
    stack.stop().await.unwrap();
}

#[tokio::test]
async fn dev_mode_needs_no_tokens() {
    // §11.46: without a secret, internal calls need no token (static worker).
    let broker = TestBroker::dev(broker_config()).await;
    broker
        .broker
        .register_static_worker(traforato_core::broker::StaticWorker {
            worker_id: "worker_a".into(),
            hostname: "worker-a.local".into(),
            base_url: "http://worker-a.local:8081".into(),
            ..Default::default()
        });
    follow()
        .post(broker.at("/internal/workers/worker_a/vm-events"))
        .json(&ready_event(VALID_UUID))
        .expect_status(204)
        .await;
    let metrics = metrics_text(broker.at("/metrics")).await;
    assert!(
        metrics.contains("\ntraforato_service_auth_mode 0\n"),
        "{metrics}"
    );
    broker.stop().await.unwrap();

    // §11.56: broker create 307 and worker create 201 without a token; any header is ignored.
    let stack = Stack::dev().await;
    no_follow()
        .post(stack.broker.at("/sandboxes"))
        .json(&sandbox_body())
        .expect_status(307)
        .await;
    follow()
        .post(stack.worker.at("/sandboxes"))
        .header("authorization", "Bearer garbage")
        .json(&sandbox_body())
        .expect_status(201)
        .await;
    stack.stop().await.unwrap();
}

#[tokio::test]
async fn dev_shells_refuse_prod_configurations() {
    // serve_broker and serve_worker have no authenticator: a prod core is refused, never
    // served without authentication.
    let broker = Arc::new(Broker::new(
        BrokerConfig {
            prod_mode: true,
            ..broker_config()
        },
        Arc::new(SystemClock),
        Arc::new(LeastLoaded),
        Arc::new(Metrics::new(true)),
    ));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let err = serve_broker(listener, broker.clone(), std::future::pending())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
    // Nor may a dev broker be served with prod authentication.
    let dev_broker = Arc::new(Broker::new(
        broker_config(),
        Arc::new(SystemClock),
        Arc::new(LeastLoaded),
        Arc::new(Metrics::new(false)),
    ));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let auth = BrokerAuth::new(&prod_auth(), Arc::new(SystemClock));
    let err = serve_broker_with_auth(listener, dev_broker, auth, std::future::pending())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);

    let config = WorkerConfig {
        advertise_url: "http://127.0.0.1:1".into(),
        auth_mode: AuthMode::Prod,
        ..WorkerConfig::for_tests()
    };
    let worker = Worker::new(
        config,
        fake(),
        Arc::new(SystemClock),
        Arc::new(Metrics::new(true)),
        None,
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let err = serve_worker(listener, worker, std::future::pending())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
}
