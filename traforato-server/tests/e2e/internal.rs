//! Internal routes between worker and broker: worker tokens, registration over HTTP, and the
//! tokens on every worker callback.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use traforato_core::id::ComponentId;
use traforato_core::worker::BrokerLink;
use traforato_server::link::HttpBrokerLink;

use crate::harness::*;

#[tokio::test]
async fn prod_internal_routes_need_worker_tokens() {
    let broker = TestBroker::prod().await;
    let at = |leaf: &str| broker.at(&format!("/internal/workers/worker_a/{leaf}"));
    let registration = json!({
        "hostname": "worker-a.local",
        "base_url": "http://worker-a.local:8081",
    });

    // §11.53: a valid token does not make an unknown worker known.
    follow()
        .post(at("vm-events"))
        .header("authorization", internal_bearer("worker_a"))
        .json(&ready_event(VALID_UUID))
        .expect_error(401, "worker must self-register")
        .await;
    follow()
        .post(at("vm-start"))
        .header("authorization", internal_bearer("worker_a"))
        .expect_error(401, "worker must self-register")
        .await;

    // No token: a route-specific 401 that does not say why.
    follow()
        .put(at("registration"))
        .json(&registration)
        .expect_error(401, "unauthorized registration")
        .await;
    follow()
        .delete(at("registration"))
        .expect_error(401, "unauthorized deregistration")
        .await;
    follow()
        .post(at("vm-events"))
        .json(&ready_event(VALID_UUID))
        .expect_error(401, "unauthorized internal callback")
        .await;
    follow()
        .post(at("vm-start"))
        .expect_error(401, "unauthorized vm start request")
        .await;
    // The token is checked before the worker id.
    follow()
        .put(broker.at("/internal/workers/worker-a/registration"))
        .json(&registration)
        .expect_error(401, "unauthorized registration")
        .await;

    follow()
        .put(at("registration"))
        .header("authorization", internal_bearer("worker_a"))
        .json(&registration)
        .expect_status(200)
        .await;

    // §11.45 and §11.47 and the other defects: each one 401 on vm-events.
    let now = now_secs();
    let mut wrong_audience = internal_claims("worker_a");
    wrong_audience["aud"] = json!("traforato-api");
    let mut expired = internal_claims("worker_a");
    expired["exp"] = json!(now - 1);
    let mut future = internal_claims("worker_a");
    future["iat"] = json!(now + 60);
    let mut wrong_issuer = internal_claims("worker_a");
    wrong_issuer["iss"] = json!("someone-else");
    let mut ten_years = internal_claims("worker_a");
    ten_years["exp"] = json!(now + 10 * 365 * 86_400);
    let refused = [
        internal_bearer("worker_b"),
        format!("Bearer {}", signed_internal(&internal_claims("worker_b"))),
        format!("Bearer {}", signed_internal(&wrong_audience)),
        format!("Bearer {}", signed_internal(&expired)),
        format!("Bearer {}", signed_internal(&future)),
        format!("Bearer {}", signed_internal(&wrong_issuer)),
        // Hardening II: a lifetime past the maximum, and the client key (whoever mints
        // client tokens must not be able to speak for a worker).
        format!("Bearer {}", signed_internal(&ten_years)),
        format!("Bearer {}", signed(SECRET, &internal_claims("worker_a"))),
        format!(
            "Bearer {}",
            signed("other-secret", &internal_claims("worker_a"))
        ),
        format!(
            "Bearer {}",
            with_algorithm("none", &internal_claims("worker_a"))
        ),
        bearer("client-a"),
        internal_bearer("worker_a").replace("Bearer ", "Basic "),
    ];
    for authorization in refused {
        follow()
            .post(at("vm-events"))
            .header("authorization", &authorization)
            .json(&ready_event(VALID_UUID))
            .expect_error(401, "unauthorized internal callback")
            .await;
    }
    assert!(!broker.availability().await.contains("ubuntu:24.04"));

    // A valid token (aud as a list, §11's shape) is accepted once, on any internal route.
    let valid = format!("Bearer {}", signed_internal(&internal_claims("worker_a")));
    follow()
        .post(at("vm-events"))
        .header("authorization", &valid)
        .json(&ready_event(VALID_UUID))
        .expect_status(204)
        .await;
    assert!(broker
        .availability()
        .await
        .contains("\nvetu\tubuntu:24.04\t2\t1\n"));
    follow()
        .post(at("vm-start"))
        .header("authorization", &valid)
        .expect_error(401, "unauthorized vm start request")
        .await;
    follow()
        .post(at("vm-start"))
        .header("authorization", internal_bearer("worker_a"))
        .expect_status(204)
        .await;

    // Deregistered, the worker must register again before posting events.
    follow()
        .delete(at("registration"))
        .header("authorization", internal_bearer("worker_a"))
        .expect_status(204)
        .await;
    follow()
        .post(at("vm-events"))
        .header("authorization", internal_bearer("worker_a"))
        .json(&ready_event(VALID_UUID))
        .expect_error(401, "worker must self-register")
        .await;
    broker.stop().await.unwrap();
}

#[tokio::test]
async fn prod_worker_and_broker_work_together_over_http() {
    // Registration, ready events and the claimed event all cross HTTP with internal tokens.
    let stack = Stack::prod_with(|c| c.pre_pull = vec![warm_target()]).await;
    wait_until("the warm sandbox to be announced", || {
        let broker = &stack.broker;
        async move { broker.availability().await.contains(WARM_ROW) }
    })
    .await;
    let body = json!({"virtualization": "fake", "image": "warm-img", "cpu": 1});
    let resp = no_follow()
        .post(stack.broker.at("/sandboxes"))
        .header("authorization", bearer("client-a"))
        .json(&body)
        .expect_status(307)
        .await;
    let location = resp.headers()["location"].to_str().unwrap().to_string();
    assert!(location.contains("local_vm_id="), "{location}");
    let resp = no_follow()
        .post(&location)
        .header("authorization", bearer("client-a"))
        .json(&body)
        .expect_status(201)
        .await;
    assert_eq!(body_json(resp).await["start_type"], "warm");

    // A link without a signer is turned away by the prod broker.
    let unsigned = HttpBrokerLink::new(&stack.broker.url);
    let err = unsigned
        .register(
            &ComponentId::parse("worker_local").unwrap(),
            &traforato_core::api::RegistrationRequest {
                hostname: "localhost".into(),
                base_url: stack.worker.url.clone(),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, traforato_core::worker::LinkError::Status { status: 401, body } if body.contains("unauthorized registration")),
        "{err:?}"
    );
    stack.stop().await.unwrap();
}

/// What a stub broker saw: method, path, JSON body (or null) and `Authorization`.
#[derive(Debug, Clone)]
struct SeenCall {
    method: String,
    path: String,
    body: Value,
    authorization: Option<String>,
}

/// A broker stand-in that accepts every internal call and records it.
async fn start_stub_broker() -> (String, Arc<std::sync::Mutex<Vec<SeenCall>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen: Arc<std::sync::Mutex<Vec<SeenCall>>> = Arc::default();
    let record = seen.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let record = record.clone();
            let service = service_fn(move |req: Request<Incoming>| {
                let record = record.clone();
                async move {
                    let method = req.method().to_string();
                    let path = req.uri().path().to_string();
                    let authorization = req
                        .headers()
                        .get("authorization")
                        .map(|v| v.to_str().unwrap().to_string());
                    let bytes = req.into_body().collect().await.unwrap().to_bytes();
                    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                    record.lock().unwrap().push(SeenCall {
                        method: method.clone(),
                        path: path.clone(),
                        body,
                        authorization,
                    });
                    let resp = if method == "PUT" {
                        let answer = json!({
                            "worker_id": "worker_local",
                            "lease_ttl_seconds": 120,
                            "heartbeat_interval_seconds": 30,
                            "expires_at": "2030-01-01T00:00:00Z",
                        });
                        Response::builder()
                            .header("content-type", "application/json")
                            .body(Full::new(Bytes::from(answer.to_string())))
                            .unwrap()
                    } else {
                        Response::builder()
                            .status(StatusCode::NO_CONTENT)
                            .body(Full::new(Bytes::new()))
                            .unwrap()
                    };
                    Ok::<_, Infallible>(resp)
                }
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service),
            );
        }
    });
    (url, seen)
}

#[tokio::test]
async fn worker_callbacks_carry_internal_tokens() {
    let (broker_url, seen) = start_stub_broker().await;
    let worker = TestWorker::start(Some(&broker_url), &prod_auth(), fake(), |c| {
        c.pre_pull = vec![warm_target()]
    })
    .await
    .unwrap();
    let ready_event = || {
        seen.lock()
            .unwrap()
            .iter()
            .find(|c| c.path.ends_with("/vm-events") && c.body["event"] == "ready")
            .cloned()
    };
    wait_until("a ready event", || {
        let found = ready_event().is_some();
        async move { found }
    })
    .await;
    let hinted = ready_event().unwrap().body["local_vm_id"]
        .as_str()
        .unwrap()
        .to_string();

    // §11.63: a hinted create claims the VM and tells the broker, with an internal token.
    let resp = follow()
        .post(worker.at(&format!("/sandboxes?local_vm_id={hinted}")))
        .header("authorization", bearer("client-a"))
        .json(&json!({"virtualization": "fake", "image": "warm-img", "cpu": 1}))
        .expect_status(201)
        .await;
    let created = body_json(resp).await;
    assert!(created["sandbox_id"].as_str().unwrap().ends_with(&hinted));
    let claimed = || {
        seen.lock()
            .unwrap()
            .iter()
            .find(|c| c.path.ends_with("/vm-events") && c.body["event"] == "claimed")
            .cloned()
    };
    wait_until("the claimed event", || {
        let found = claimed().is_some();
        async move { found }
    })
    .await;
    let claimed = claimed().unwrap();
    assert_eq!(claimed.method, "POST");
    assert_eq!(claimed.path, "/internal/workers/worker_local/vm-events");
    assert_eq!(claimed.body["local_vm_id"], hinted.as_str());
    let header = claimed.authorization.expect("a token on the callback");
    let token = header.strip_prefix("Bearer ").expect("a Bearer token");
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
    validation.set_audience(&["traforato-internal"]);
    validation.set_issuer(&["traforato"]);
    validation.set_required_spec_claims(&["exp", "aud", "iss", "sub"]);
    let decoded = jsonwebtoken::decode::<Value>(
        token,
        &jsonwebtoken::DecodingKey::from_secret(&prod_auth().internal_key()),
        &validation,
    )
    .unwrap();
    assert_eq!(decoded.claims["sub"], "worker_local");
    assert_eq!(decoded.claims["aud"], "traforato-internal");
    let iat = decoded.claims["iat"].as_i64().unwrap();
    assert_eq!(decoded.claims["exp"].as_i64().unwrap() - iat, 45);
    assert!(decoded.claims["jti"]
        .as_str()
        .is_some_and(|j| !j.is_empty()));

    // §11.68: deregistration on shutdown, signed too.
    worker.stop().await.unwrap();
    let calls = seen.lock().unwrap().clone();
    let deletes: Vec<&SeenCall> = calls.iter().filter(|c| c.method == "DELETE").collect();
    assert_eq!(deletes.len(), 1, "{calls:?}");
    assert_eq!(
        deletes[0].path,
        "/internal/workers/worker_local/registration"
    );
    // §11.65 and the rest: every call (registrations, vm-start, events, deregistration)
    // carries its own token.
    assert!(calls
        .iter()
        .any(|c| c.method == "PUT" && c.path == "/internal/workers/worker_local/registration"));
    assert!(calls.iter().any(|c| c.path.ends_with("/vm-start")));
    let tokens: Vec<&str> = calls
        .iter()
        .map(|c| {
            c.authorization
                .as_deref()
                .and_then(|h| h.strip_prefix("Bearer "))
                .unwrap_or_else(|| panic!("unsigned call {c:?}"))
        })
        .collect();
    let distinct: std::collections::HashSet<&str> = tokens.iter().copied().collect();
    assert_eq!(distinct.len(), tokens.len(), "a token was reused");
}
