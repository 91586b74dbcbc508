//! End-to-end tests: real broker and worker shells on `127.0.0.1:0` with the fake backend,
//! the worker linked to the broker over HTTP, driven with reqwest the way `curl -L` would.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::TimeZone;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use traforato_core::auth::{
    mint_client_token, AuthConfig, AuthMode, ClientAuthenticator, InternalTokenSigner,
};
use traforato_core::backend::container::{ContainerBackend, ContainerConfig};
use traforato_core::backend::fake::FakeBackend;
use traforato_core::backend::VmBackend;
use traforato_core::broker::{Broker, BrokerConfig};
use traforato_core::clock::{Clock, ManualClock, SystemClock};
use traforato_core::id::{ComponentId, LocalVmId};
use traforato_core::scheduler::LeastLoaded;
use traforato_core::telemetry::{AuthFailureLabels, Metrics};
use traforato_core::tuple::SandboxTuple;
use traforato_core::worker::{BrokerLink, PrePullTarget, Worker, WorkerConfig};
use traforato_server::link::HttpBrokerLink;
use traforato_server::server::{shutdown_channel, ShutdownTrigger};
use traforato_server::{
    serve_broker, serve_broker_with_auth, serve_worker, serve_worker_with_auth, BrokerAuth,
};

const WAIT: Duration = Duration::from_secs(20);
const VALID_UUID: &str = "550e8400-e29b-41d4-a716-446655440000";

// ---------------------------------------------------------------------------------------------
// Harness

/// Polls `check` until it is true, failing the test after [`WAIT`].
async fn wait_until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn follow() -> reqwest::Client {
    reqwest::Client::new()
}

fn no_follow() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

async fn body_json(resp: reqwest::Response) -> Value {
    let text = resp.text().await.unwrap();
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not json ({e}): {text:?}"))
}

async fn expect_error(resp: reqwest::Response, status: u16, message: &str) {
    assert_eq!(resp.status().as_u16(), status, "status for {message:?}");
    assert_eq!(
        resp.headers()["content-type"],
        "application/json",
        "content type for {message:?}"
    );
    assert_eq!(body_json(resp).await, json!({ "error": message }));
}

fn broker_config() -> BrokerConfig {
    BrokerConfig {
        default_virtualization: "fake".to_string(),
        ..BrokerConfig::default()
    }
}

struct RunningBroker {
    addr: SocketAddr,
    url: String,
    broker: Arc<Broker>,
    trigger: ShutdownTrigger,
    task: JoinHandle<std::io::Result<()>>,
}

impl RunningBroker {
    async fn start(config: BrokerConfig) -> Self {
        Self::start_with_clock(config, Arc::new(SystemClock)).await
    }

    async fn start_with_clock(config: BrokerConfig, clock: Arc<dyn Clock>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::serve(listener, config, clock, &AuthConfig::default())
    }

    /// A prod broker (secret [`SECRET`], default issuer and audience).
    async fn start_prod() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let config = BrokerConfig {
            prod_mode: true,
            ..broker_config()
        };
        Self::serve(listener, config, Arc::new(SystemClock), &prod_auth())
    }

    /// Starts on a given address (a restart), retrying while the port is still held.
    async fn start_on(addr: SocketAddr, config: BrokerConfig) -> Self {
        let mut listener = None;
        wait_until("the broker port to be free", || {
            let bound = std::net::TcpListener::bind(addr).ok();
            let ok = bound.is_some();
            if let Some(l) = bound {
                l.set_nonblocking(true).unwrap();
                listener = Some(TcpListener::from_std(l).unwrap());
            }
            async move { ok }
        })
        .await;
        Self::serve(
            listener.unwrap(),
            config,
            Arc::new(SystemClock),
            &AuthConfig::default(),
        )
    }

    fn serve(
        listener: TcpListener,
        config: BrokerConfig,
        clock: Arc<dyn Clock>,
        auth: &AuthConfig,
    ) -> Self {
        let addr = listener.local_addr().unwrap();
        let broker = Arc::new(Broker::new(
            config,
            clock.clone(),
            Arc::new(LeastLoaded),
            Arc::new(Metrics::new(auth.mode().is_prod())),
        ));
        let (trigger, shutdown) = shutdown_channel();
        let task = tokio::spawn(serve_broker_with_auth(
            listener,
            broker.clone(),
            BrokerAuth::new(auth, clock),
            shutdown.wait(),
        ));
        Self {
            addr,
            url: format!("http://{addr}"),
            broker,
            trigger,
            task,
        }
    }

    async fn stop(self) {
        self.trigger.trigger();
        self.task.await.unwrap().unwrap();
    }

    fn at(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }

    async fn availability(&self) -> String {
        follow()
            .get(self.at("/metrics/sandboxes"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Registers a worker that does not exist (placement tests look only at redirects). The
    /// call carries an internal token for [`SECRET`] (a dev broker ignores it).
    async fn register_remote(&self, worker_id: &str, base_url: &str, sku: &str) -> Value {
        let resp = follow()
            .put(self.at(&format!("/internal/workers/{worker_id}/registration")))
            .header("authorization", internal_bearer(worker_id))
            .json(&json!({
                "hostname": format!("{worker_id}.local"),
                "base_url": base_url,
                "hardware_sku": sku,
                "total_cores": 16,
                "total_memory_mib": 32768,
                "max_live_sandboxes": 8,
            }))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        body_json(resp).await
    }
}

fn worker_config(advertise_url: String, broker_url: Option<String>) -> WorkerConfig {
    WorkerConfig {
        broker_id: ComponentId::parse("broker_local").unwrap(),
        worker_id: ComponentId::parse("worker_local").unwrap(),
        hostname: "localhost".to_string(),
        advertise_url,
        broker_public_url: broker_url,
        hardware_sku: String::new(),
        total_cores: 8,
        total_memory_mib: 8192,
        max_live_sandboxes: 8,
        default_ttl: Duration::from_secs(30 * 60),
        max_ttl: Duration::from_secs(24 * 3600),
        default_virtualization: "fake".to_string(),
        registration_heartbeat: Duration::from_millis(200),
        registration_jitter_percent: 0,
        reap_interval: Duration::from_secs(1),
        pre_pull: Vec::new(),
        auth_mode: AuthMode::Dev,
    }
}

struct RunningWorker {
    url: String,
    worker: Arc<Worker>,
    trigger: ShutdownTrigger,
    serve_task: JoinHandle<std::io::Result<()>>,
    run_task: JoinHandle<()>,
}

impl RunningWorker {
    /// Binds first, then builds the worker (its advertise URL needs the port), then serves
    /// and starts its background work.
    async fn start(
        broker_url: Option<&str>,
        tweak: impl FnOnce(&mut WorkerConfig),
        backends: Vec<Arc<dyn VmBackend>>,
    ) -> Self {
        Self::start_with_auth(broker_url, tweak, backends, &AuthConfig::default()).await
    }

    /// As [`RunningWorker::start`], with `auth` for client tokens and for the internal tokens
    /// its link signs its broker calls with.
    async fn start_with_auth(
        broker_url: Option<&str>,
        tweak: impl FnOnce(&mut WorkerConfig),
        backends: Vec<Arc<dyn VmBackend>>,
        auth: &AuthConfig,
    ) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let mut config = worker_config(url.clone(), broker_url.map(String::from));
        config.auth_mode = auth.mode();
        tweak(&mut config);
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let link: Option<Arc<dyn BrokerLink>> = broker_url.map(|u| {
            let signer = InternalTokenSigner::new(auth, clock.clone());
            Arc::new(HttpBrokerLink::new(u).with_signer(signer)) as Arc<dyn BrokerLink>
        });
        let worker = Worker::new(
            config,
            backends,
            clock.clone(),
            Arc::new(Metrics::new(auth.mode().is_prod())),
            link,
        );
        let (trigger, shutdown) = shutdown_channel();
        let serve_task = tokio::spawn(serve_worker_with_auth(
            listener,
            worker.clone(),
            ClientAuthenticator::new(auth, clock),
            shutdown.clone().wait(),
        ));
        let run_task = tokio::spawn(worker.clone().run(shutdown.wait()));
        Self {
            url,
            worker,
            trigger,
            serve_task,
            run_task,
        }
    }

    async fn stop(self) {
        self.trigger.trigger();
        self.serve_task.await.unwrap().unwrap();
        self.run_task.await.unwrap();
    }

    fn at(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }
}

fn fake() -> Vec<Arc<dyn VmBackend>> {
    vec![Arc::new(FakeBackend::new())]
}

/// A broker and a worker registered with it over HTTP.
struct Stack {
    broker: RunningBroker,
    worker: RunningWorker,
}

impl Stack {
    async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    async fn start_with(tweak: impl FnOnce(&mut WorkerConfig)) -> Self {
        let broker = RunningBroker::start(broker_config()).await;
        let worker = RunningWorker::start(Some(&broker.url), tweak, fake()).await;
        Self::registered(broker, worker).await
    }

    /// A prod broker and a prod worker (secret [`SECRET`]): the worker registers with
    /// internal tokens over HTTP.
    async fn start_prod_with(tweak: impl FnOnce(&mut WorkerConfig)) -> Self {
        let broker = RunningBroker::start_prod().await;
        let worker =
            RunningWorker::start_with_auth(Some(&broker.url), tweak, fake(), &prod_auth()).await;
        Self::registered(broker, worker).await
    }

    async fn registered(broker: RunningBroker, worker: RunningWorker) -> Self {
        let b = broker.broker.clone();
        wait_until("the worker to register", || {
            let active = b.is_worker_active("worker_local");
            async move { active }
        })
        .await;
        Self { broker, worker }
    }

    async fn stop(self) {
        self.worker.stop().await;
        self.broker.stop().await;
    }

    /// Creates a sandbox through the broker, following its redirect; returns the 201 body.
    async fn create(&self, body: Value) -> Value {
        let resp = follow()
            .post(self.broker.at("/sandboxes"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 201, "create {body}");
        body_json(resp).await
    }

    async fn create_id(&self) -> String {
        let created = self
            .create(json!({"virtualization": "fake", "image": "ubuntu:24.04", "cpu": 1}))
            .await;
        created["sandbox_id"].as_str().unwrap().to_string()
    }

    /// A sandbox URL at the broker (requests to it are redirected to the worker).
    fn sandbox(&self, id: &str, rest: &str) -> String {
        self.broker.at(&format!("/sandboxes/{id}{rest}"))
    }
}

fn sandbox_id_on(worker: &str) -> String {
    format!("sbx-broker_local-{worker}-{VALID_UUID}")
}

// ---------------------------------------------------------------------------------------------
// Upstream test servers for the proxy

/// Serves `127.0.0.1:0`: answers every request with a JSON echo of what it received, and
/// switches protocols (echoing raw bytes) when asked to upgrade.
async fn start_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service_fn(upstream_handler))
                    .with_upgrades()
                    .await;
            });
        }
    });
    addr
}

async fn upstream_handler(mut req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(String::from)
    };
    if header("upgrade").is_some() {
        let upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(upgraded) = upgrade.await {
                let mut io = TokioIo::new(upgraded);
                let mut buf = [0u8; 1024];
                while let Ok(n) = io.read(&mut buf).await {
                    if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            }
        });
        let resp = Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-accept", "test-accept")
            .body(Full::new(Bytes::new()))
            .unwrap();
        return Ok(resp);
    }
    let echo = json!({
        "method": req.method().as_str(),
        "path": req.uri().path(),
        "query": req.uri().query(),
        "host": header("host"),
        "authorization": header("authorization"),
        "sandbox_id": header("x-traforato-sandbox-id"),
        "forwarded_for": header("x-forwarded-for"),
        "forwarded_proto": header("x-forwarded-proto"),
        "custom": header("x-custom"),
    });
    let sandbox_id = header("x-traforato-sandbox-id").unwrap_or_default();
    let body = req.into_body().collect().await.unwrap().to_bytes();
    let mut echo = echo;
    echo["body"] = Value::String(String::from_utf8_lossy(&body).into_owned());
    let resp = Response::builder()
        .header("content-type", "application/json")
        .header("x-traforato-sandbox-id", sandbox_id)
        .body(Full::new(Bytes::from(echo.to_string())))
        .unwrap();
    Ok(resp)
}

// ---------------------------------------------------------------------------------------------
// Broker routes

#[tokio::test]
async fn health_metrics_and_request_ids() {
    let stack = Stack::start().await;
    for url in [stack.broker.at("/healthz"), stack.worker.at("/healthz")] {
        let resp = follow()
            .get(&url)
            .header("x-request-id", "  my-request  ")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["content-type"], "application/json");
        assert_eq!(resp.headers()["x-request-id"], "my-request");
        assert_eq!(body_json(resp).await, json!({"status": "ok"}));
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
        let resp = follow().get(&url).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["content-type"], "text/plain; version=0.0.4");
        let text = resp.text().await.unwrap();
        assert!(
            text.contains("# TYPE traforato_service_auth_mode gauge"),
            "{text}"
        );
        assert!(text.contains("traforato_service_auth_mode 0"), "{text}");
    }
    stack.stop().await;
}

#[tokio::test]
async fn availability_text_shape() {
    let now = chrono::Utc.with_ymd_and_hms(2026, 2, 25, 12, 0, 0).unwrap();
    let broker =
        RunningBroker::start_with_clock(broker_config(), Arc::new(ManualClock::new(now))).await;
    let resp = follow()
        .get(broker.at("/metrics/sandboxes"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
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
    let head = follow()
        .head(broker.at("/metrics/sandboxes"))
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), 404);
    broker.stop().await;
}

#[tokio::test]
async fn sandbox_scoped_requests_redirect_to_the_owner() {
    let broker = RunningBroker::start(broker_config()).await;
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
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 307);
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
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 307);
    assert_eq!(
        resp.headers()["location"],
        format!("http://worker-a.local:8081/sandboxes/{id}/files?path=%2Fa&recursive=true")
            .as_str()
    );

    expect_error(
        no_follow()
            .get(broker.at("/sandboxes/not-an-id"))
            .send()
            .await
            .unwrap(),
        400,
        "malformed sandbox_id",
    )
    .await;
    expect_error(
        no_follow()
            .get(broker.at(&format!("/sandboxes/{}", sandbox_id_on("worker_zz"))))
            .send()
            .await
            .unwrap(),
        404,
        "worker id unknown",
    )
    .await;
    expect_error(
        no_follow()
            .get(broker.at(&format!(
                "/sandboxes/sbx-other_broker-worker_a-{VALID_UUID}"
            )))
            .send()
            .await
            .unwrap(),
        404,
        "broker id mismatch",
    )
    .await;
    broker.stop().await;
}

#[tokio::test]
async fn registration_and_placement_by_sku() {
    let broker = RunningBroker::start(broker_config()).await;
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
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 307);
    assert_eq!(
        resp.headers()["location"],
        "http://worker-b.local:8081/sandboxes"
    );
    assert!(resp.headers().contains_key("traceparent"));

    expect_error(
        no_follow()
            .post(broker.at("/sandboxes"))
            .json(&json!({"image": "ubuntu:24.04", "hardware_sku": "tpu-v9"}))
            .send()
            .await
            .unwrap(),
        503,
        "no placement capacity",
    )
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
    broker.stop().await;
}

#[tokio::test]
async fn ready_hints_and_vm_start_queue() {
    let broker = RunningBroker::start(broker_config()).await;
    broker
        .register_remote("worker_a", "http://worker-a.local:8081", "cpu-standard")
        .await;
    let resp = follow()
        .post(broker.at("/internal/workers/worker_a/vm-events"))
        .json(&json!({
            "event": "ready",
            "local_vm_id": VALID_UUID,
            "virtualization": "vetu",
            "image": "ubuntu:24.04",
            "cpu": 2,
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);

    let resp = no_follow()
        .post(broker.at("/sandboxes"))
        .json(&json!({"virtualization": "vetu", "image": "ubuntu:24.04", "cpu": 2}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 307);
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
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 307);
    assert_eq!(
        resp.headers()["location"],
        "http://worker-a.local:8081/sandboxes"
    );
    let resp = follow()
        .post(broker.at("/internal/workers/worker_a/vm-start"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        body_json(resp).await,
        json!({"virtualization": "vetu", "image": "ubuntu:24.04", "cpu": 2})
    );
    let resp = follow()
        .post(broker.at("/internal/workers/worker_a/vm-start"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);

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
    broker.stop().await;
}

#[tokio::test]
async fn placement_retry_limits() {
    let broker = RunningBroker::start(BrokerConfig {
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
    broker.stop().await;
}

#[tokio::test]
async fn internal_routes_refuse_other_methods_and_query_does_not_route() {
    let broker = RunningBroker::start(broker_config()).await;
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
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 307);
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
    broker.stop().await;
}

#[tokio::test]
async fn lapsed_worker_lease_gives_503() {
    let start = chrono::Utc.with_ymd_and_hms(2026, 2, 25, 12, 0, 0).unwrap();
    let clock = Arc::new(ManualClock::new(start));
    let broker = RunningBroker::start_with_clock(
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
    let resp = no_follow()
        .get(broker.at(&format!("/sandboxes/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 307);
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
    broker.stop().await;
}

#[tokio::test]
async fn body_caps_and_decoding() {
    let stack = Stack::start().await;
    let big = vec![b' '; (1 << 20) + 1];
    expect_error(
        follow()
            .post(stack.broker.at("/sandboxes"))
            .body(big.clone())
            .send()
            .await
            .unwrap(),
        400,
        "body exceeds max size",
    )
    .await;
    expect_error(
        follow()
            .put(stack.broker.at("/internal/workers/worker_x/registration"))
            .body(big.clone())
            .send()
            .await
            .unwrap(),
        400,
        "invalid request body",
    )
    .await;
    // Hardening II: a top-level array is no record, even one whose items fit the fields in
    // order (derived decoding alone took `["ubuntu:24.04",2]` as image and cpu).
    for body in [
        "",
        "[1,2]",
        "[\"ubuntu:24.04\",2]",
        "[\"ubuntu:24.04\",1,\"fake\"]",
        "\"ubuntu:24.04\"",
        "42",
        "true",
        "{\"cpu\":\"2\"}",
        "{\"cpu\":1.5}",
    ] {
        expect_error(
            follow()
                .post(stack.broker.at("/sandboxes"))
                .body(body)
                .send()
                .await
                .unwrap(),
            400,
            "invalid request body",
        )
        .await;
    }
    for registration in [
        json!(["worker_x.local", "http://worker-x.local:8081"]),
        json!([]),
        json!("worker_x"),
    ] {
        expect_error(
            follow()
                .put(stack.broker.at("/internal/workers/worker_x/registration"))
                .json(&registration)
                .send()
                .await
                .unwrap(),
            400,
            "invalid request body",
        )
        .await;
    }
    assert!(!stack.broker.broker.is_worker_active("worker_x"));
    // The worker's own create route too.
    expect_error(
        follow()
            .post(stack.worker.at("/sandboxes"))
            .body("[\"ubuntu:24.04\",1,\"fake\"]")
            .send()
            .await
            .unwrap(),
        400,
        "invalid request body",
    )
    .await;
    // `null` means defaults; unknown fields are ignored; trailing bytes are ignored.
    let resp = no_follow()
        .post(stack.broker.at("/sandboxes"))
        .body("null")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 307);
    let resp = follow()
        .post(stack.broker.at("/sandboxes"))
        .body(r#"{"image":"ubuntu:24.04","virtualization":"fake","colour":"red"} trailing"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);

    let id = stack.create_id().await;
    expect_error(
        follow()
            .put(stack.sandbox(&id, "/files?path=/workspace/big.bin"))
            .body(vec![0u8; (10 << 20) + 1])
            .send()
            .await
            .unwrap(),
        400,
        "body exceeds max size",
    )
    .await;
    let ok = follow()
        .put(stack.sandbox(&id, "/files?path=/workspace/ok.bin"))
        .body(vec![0u8; 10 << 20])
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    expect_error(
        follow()
            .post(stack.sandbox(&id, "/exec"))
            .body(big.clone())
            .send()
            .await
            .unwrap(),
        400,
        "body exceeds max size",
    )
    .await;
    expect_error(
        follow()
            .post(stack.sandbox(&id, "/exec/code"))
            .body(vec![b' '; (1 << 20) + 1025])
            .send()
            .await
            .unwrap(),
        400,
        "invalid request body",
    )
    .await;
    expect_error(
        follow()
            .post(stack.sandbox(&id, "/files/mkdir"))
            .body(big)
            .send()
            .await
            .unwrap(),
        400,
        "invalid request body",
    )
    .await;
    stack.stop().await;
}

/// Sends `head` (a request line and headers, without the blank line) with `Content-Length`
/// and a body of `len` bytes, all of it before reading anything, as Python's `http.client`
/// and `requests` do; then reads the answer up to the end of its headers. A server that
/// answers and closes without reading the body makes this fail with a reset or broken pipe.
async fn send_whole_body_then_read(addr: SocketAddr, head: &str, len: usize) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("{head}\r\nHost: {addr}\r\nContent-Length: {len}\r\n\r\n");
    let body = vec![b'x'; len];
    let sent = async {
        stream.write_all(request.as_bytes()).await?;
        stream.write_all(&body).await?;
        stream.flush().await?;
        let mut answer = Vec::new();
        let mut buf = [0u8; 4096];
        while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "closed before the answer",
                ));
            }
            answer.extend_from_slice(&buf[..n]);
        }
        Ok::<_, std::io::Error>(String::from_utf8_lossy(&answer).into_owned())
    };
    match tokio::time::timeout(WAIT, sent).await {
        Ok(Ok(answer)) => answer,
        Ok(Err(err)) => panic!("{head} with a {len}-byte body: {err}"),
        Err(_) => panic!("{head} with a {len}-byte body: no answer"),
    }
}

/// Hardening II: answers that do not need the body (the broker's redirects, refusals before
/// the body is read) still reach a client that sends the whole body first.
#[tokio::test]
async fn clients_that_send_the_whole_body_first_read_the_answer() {
    let stack = Stack::start().await;
    let id = stack.create_id().await;
    let broker = stack.broker.addr;
    let worker: SocketAddr = stack
        .worker
        .at("")
        .trim_start_matches("http://")
        .parse()
        .unwrap();
    for len in [512 << 10, 2 << 20, 10 << 20] {
        // A sandbox-scoped upload through the broker: 307 to the worker, body unread.
        let answer = send_whole_body_then_read(
            broker,
            &format!("PUT /sandboxes/{id}/files?path=/workspace/big.bin HTTP/1.1"),
            len,
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 307"), "{len}: {answer}");
        assert!(
            answer
                .to_ascii_lowercase()
                .contains("\r\nlocation: http://"),
            "{answer}"
        );
    }
    // A create over the 1 MiB cap: the broker stops reading at the cap and still answers.
    let answer = send_whole_body_then_read(broker, "POST /sandboxes HTTP/1.1", 2 << 20).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    // An unknown route and a worker that refuses before reading (unknown sandbox).
    let answer = send_whole_body_then_read(broker, "POST /nowhere HTTP/1.1", 2 << 20).await;
    assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");
    let other = sandbox_id_on("worker_local");
    let answer = send_whole_body_then_read(
        worker,
        &format!("PUT /sandboxes/{other}/files?path=/workspace/big.bin HTTP/1.1"),
        2 << 20,
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");
    stack.stop().await;
}

/// A client that asks for `100 Continue` gets the redirect without sending its body to the
/// broker (which would only throw it away).
#[tokio::test]
async fn expect_continue_gets_the_redirect_without_sending_the_body() {
    let stack = Stack::start().await;
    let id = stack.create_id().await;
    let mut stream = tokio::net::TcpStream::connect(stack.broker.addr)
        .await
        .unwrap();
    let head = format!(
        "PUT /sandboxes/{id}/files?path=/workspace/a HTTP/1.1\r\nHost: x\r\nContent-Length: 1048576\r\nExpect: 100-continue\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(WAIT, stream.read(&mut buf))
            .await
            .expect("an answer without the body")
            .unwrap();
        assert!(n > 0, "closed before the answer");
        answer.extend_from_slice(&buf[..n]);
    }
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 307"), "{answer}");
    stack.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Worker routes through the broker

#[tokio::test]
async fn sandbox_lifecycle_through_the_broker() {
    let stack = Stack::start().await;
    let created = stack
        .create(json!({"image": "ubuntu:24.04", "cpu": 2, "virtualization": "fake"}))
        .await;
    assert!(created.get("worker_hash").is_none());
    assert_eq!(created["cpu"], 2);
    assert_eq!(created["virtualization"], "fake");
    let id = created["sandbox_id"].as_str().unwrap().to_string();
    assert!(id.starts_with("sbx-broker_local-worker_local-"));

    let resp = follow().get(stack.sandbox(&id, "")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let got = body_json(resp).await;
    assert_eq!(got["sandbox_id"], id.as_str());
    assert_eq!(got["image"], "ubuntu:24.04");
    assert!(got["created_at"].is_string() && got["expires_at"].is_string());

    let resp = follow()
        .patch(stack.sandbox(&id, "/lease?ttl_seconds=600"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(body_json(resp).await["sandbox_id"], id.as_str());
    expect_error(
        follow()
            .patch(stack.sandbox(&id, "/lease?ttl_seconds=0"))
            .send()
            .await
            .unwrap(),
        400,
        "ttl_seconds must be > 0",
    )
    .await;

    expect_error(
        follow()
            .post(stack.broker.at("/sandboxes"))
            .json(&json!({"virtualization": "fake", "cpu": 1}))
            .send()
            .await
            .unwrap(),
        400,
        "image is required",
    )
    .await;

    let resp = follow()
        .delete(stack.sandbox(&id, ""))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    assert!(resp.headers().contains_key("x-request-id"));
    expect_error(
        follow().get(stack.sandbox(&id, "")).send().await.unwrap(),
        404,
        "sandbox not found",
    )
    .await;
    stack.stop().await;
}

#[tokio::test]
async fn worker_routing_errors() {
    let stack = Stack::start().await;
    let w = &stack.worker;
    expect_error(
        follow()
            .get(w.at("/sandboxes/not-an-id/files"))
            .send()
            .await
            .unwrap(),
        400,
        "malformed sandbox_id",
    )
    .await;
    expect_error(
        follow().get(w.at("/nothing")).send().await.unwrap(),
        404,
        "route not found",
    )
    .await;
    let id = stack.create_id().await;
    expect_error(
        follow()
            .post(w.at(&format!("/sandboxes/{id}")))
            .send()
            .await
            .unwrap(),
        404,
        "route not found",
    )
    .await;
    expect_error(
        follow()
            .get(w.at(&format!("/sandboxes/{id}/exec/ws")))
            .send()
            .await
            .unwrap(),
        501,
        "websocket exec is optional and not enabled",
    )
    .await;
    // Ids naming another broker or worker are not this worker's.
    let foreign = id.replace("worker_local", "worker_other");
    expect_error(
        follow()
            .get(w.at(&format!("/sandboxes/{foreign}")))
            .send()
            .await
            .unwrap(),
        404,
        "sandbox not found",
    )
    .await;
    let foreign = id.replace("broker_local", "broker_other");
    expect_error(
        follow()
            .get(w.at(&format!("/sandboxes/{foreign}")))
            .send()
            .await
            .unwrap(),
        404,
        "sandbox not found",
    )
    .await;
    stack.stop().await;
}

#[tokio::test]
async fn tart_gets_its_default_image() {
    let broker = RunningBroker::start(broker_config()).await;
    let backends: Vec<Arc<dyn VmBackend>> = vec![
        Arc::new(FakeBackend::new()),
        Arc::new(FakeBackend::with_virtualization("tart")),
    ];
    let worker = RunningWorker::start(Some(&broker.url), |_| {}, backends).await;
    let resp = follow()
        .post(worker.at("/sandboxes"))
        .json(&json!({"virtualization": "tart", "cpu": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
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
    worker.stop().await;
    broker.stop().await;
}

#[tokio::test]
async fn files_api() {
    let stack = Stack::start().await;
    let id = stack.create_id().await;
    let put_json = |path: &str, body: Value| {
        follow()
            .put(stack.sandbox(&id, &format!("/files?path={path}")))
            .json(&body)
            .send()
    };
    let get = |rest: String| follow().get(stack.sandbox(&id, &rest)).send();

    let resp = put_json(
        "/workspace/a.txt",
        json!({"content": "Hello", "encoding": "utf8"}),
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), 200);
    let written = body_json(resp).await;
    assert_eq!(written["bytes_written"], 5);
    assert_eq!(written["path"], "/workspace/a.txt");

    expect_error(
        put_json(
            "/workspace/a.txt/child.txt",
            json!({"content": "x", "encoding": "utf8"}),
        )
        .await
        .unwrap(),
        400,
        "path points to a file",
    )
    .await;

    let read = body_json(get("/files?path=/workspace/a.txt".into()).await.unwrap()).await;
    assert_eq!(read["content"], "Hello");
    assert_eq!(read["type"], "file");

    let resp = put_json(
        "/workspace/a.txt",
        json!({"content": "IQ==", "encoding": "base64", "append": true}),
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), 200);
    let read = body_json(
        get("/files?path=/workspace/a.txt&encoding=base64".into())
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(read["content"], "SGVsbG8h");
    assert_eq!(read["bytes"], 6);
    let read = body_json(
        get("/files?path=/workspace/a.txt&encoding=utf-8".into())
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(read["content"], "Hello!");

    // Raw download (extension) and raw upload.
    let resp = get("/files/raw?path=/workspace/a.txt".into())
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/octet-stream");
    assert_eq!(resp.bytes().await.unwrap().as_ref(), b"Hello!");
    let resp = follow()
        .put(stack.sandbox(&id, "/files?path=/workspace/raw.bin"))
        .body(vec![0u8, 1, 2, 255])
        .send()
        .await
        .unwrap();
    assert_eq!(body_json(resp).await["bytes_written"], 4);
    let resp = get("/files/raw?path=/workspace/raw.bin".into())
        .await
        .unwrap();
    assert_eq!(resp.bytes().await.unwrap().as_ref(), &[0u8, 1, 2, 255]);

    // Dev base64 write, then stat.
    let resp = put_json("/workspace/dev.txt", json!({"content": "RGV2"}))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let stat = body_json(
        get("/files/stat?path=/workspace/dev.txt".into())
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(stat["exists"], true);
    assert_eq!(stat["type"], "file");
    assert_eq!(stat["size"], 3);
    expect_error(
        put_json(
            "/workspace/x",
            json!({"content": "!!", "encoding": "base64"}),
        )
        .await
        .unwrap(),
        400,
        "invalid base64 content",
    )
    .await;
    expect_error(
        put_json(
            "/workspace/x",
            json!({"content": "x", "encoding": "latin1"}),
        )
        .await
        .unwrap(),
        400,
        "encoding must be utf8 or base64",
    )
    .await;
    expect_error(
        put_json("relative", json!({"content": "x"})).await.unwrap(),
        400,
        "path must be an absolute path",
    )
    .await;

    let stat = body_json(
        get("/files/stat?path=/workspace/missing".into())
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(stat["exists"], false);

    let resp = follow()
        .post(stack.sandbox(&id, "/files/mkdir"))
        .json(&json!({"path": "/workspace/src", "recursive": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(body_json(resp).await["created"], true);
    let resp = put_json(
        "/workspace/src/main.txt",
        json!({"content": "fn main", "encoding": "utf8"}),
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), 200);

    let list = body_json(get("/files/list?path=/workspace".into()).await.unwrap()).await;
    let entries = list["entries"].as_array().unwrap();
    assert!(entries.len() >= 2);
    assert!(entries
        .iter()
        .any(|e| e["path"] == "/workspace/a.txt" && e["type"] == "file"));
    assert!(entries
        .iter()
        .any(|e| e["path"] == "/workspace/src" && e["type"] == "directory"));
    assert!(list["next_cursor"].is_null());

    expect_error(
        follow()
            .delete(stack.sandbox(&id, "/files?path=/workspace/src&recursive=false"))
            .send()
            .await
            .unwrap(),
        409,
        "directory is not empty",
    )
    .await;
    let resp = follow()
        .delete(stack.sandbox(&id, "/files?path=/workspace/src&recursive=true"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    let stat = body_json(
        get("/files/stat?path=/workspace/src/main.txt".into())
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(stat["exists"], false);
    expect_error(
        follow()
            .delete(stack.sandbox(&id, "/files?path=/"))
            .send()
            .await
            .unwrap(),
        400,
        "cannot remove root directory",
    )
    .await;
    stack.stop().await;
}

#[tokio::test]
async fn exec_and_frames() {
    let stack = Stack::start().await;
    let id = stack.create_id().await;
    let mut exec_ids = Vec::new();
    for command in ["echo hi", "echo again"] {
        let resp = follow()
            .post(stack.sandbox(&id, "/exec"))
            .json(&json!({ "command": command }))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 202);
        let accepted = body_json(resp).await;
        let exec_id = accepted["exec_id"].as_str().unwrap().to_string();
        assert!(exec_id.starts_with("exec_"));
        exec_ids.push(exec_id);
    }
    assert_eq!(
        stack
            .worker
            .worker
            .metrics()
            .worker
            .first_exec_tti
            .total_count(),
        1
    );
    let metrics = follow()
        .get(stack.worker.at("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.lines().any(|l| l
            .starts_with("traforato_worker_sandbox_first_exec_tti_seconds_count")
            && l.ends_with(" 1")),
        "{metrics}"
    );

    // Long-poll the frames until the exit frame.
    let exec_id = &exec_ids[0];
    let mut cursor = 0;
    let mut stdout = String::new();
    let mut exit = None;
    for _ in 0..100 {
        let resp = follow()
            .get(stack.sandbox(
                &id,
                &format!("/exec/{exec_id}/frames?cursor={cursor}&wait=5s"),
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let page = body_json(resp).await;
        assert!(page["frames"].is_array());
        assert_eq!(page["wait_applied"], true);
        for frame in page["frames"].as_array().unwrap() {
            match frame["type"].as_str().unwrap() {
                "stdout" => stdout.push_str(frame["data"].as_str().unwrap()),
                "exit" => exit = Some(frame["data"].as_str().unwrap_or("").to_string()),
                _ => {}
            }
        }
        cursor = page["next_cursor"].as_u64().unwrap();
        if page["has_more"] == false {
            break;
        }
    }
    assert_eq!(stdout, "hi\n");
    assert_eq!(exit.as_deref(), Some("0"));

    let record = body_json(
        follow()
            .get(stack.sandbox(&id, &format!("/exec/{exec_id}")))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(record["status"], "exited");
    assert_eq!(record["exit_code"], 0);
    assert_eq!(record["sandbox_id"], id.as_str());
    expect_error(
        follow()
            .get(stack.sandbox(&id, "/exec/exec_01HZY3J5K6M7N8P9Q0R1S2T3V4"))
            .send()
            .await
            .unwrap(),
        404,
        "exec not found",
    )
    .await;
    expect_error(
        follow()
            .post(stack.sandbox(&id, "/exec"))
            .body("")
            .send()
            .await
            .unwrap(),
        400,
        "invalid request body",
    )
    .await;
    stack.stop().await;
}

#[tokio::test]
async fn run_code_statuses() {
    let stack = Stack::start().await;
    let id = stack.create_id().await;
    let run = |body: Value| {
        follow()
            .post(stack.sandbox(&id, "/exec/code"))
            .json(&body)
            .send()
    };

    let resp = run(json!({"runtime": "python", "code": "print('hello-python')"}))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let done = body_json(resp).await;
    assert_eq!(done["runtime"], "python");
    assert_eq!(done["status"], "exited");
    assert_eq!(done["stdout"], "hello-python\n");
    assert_eq!(done["exit_code"], 0);

    let done = body_json(
        run(json!({"runtime": "node", "code": "console.log('hello-node')", "wait": true}))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(done["runtime"], "node");
    assert_eq!(done["stdout"], "hello-node\n");
    assert_eq!(done["exit_code"], 0);

    let resp = run(json!({"runtime": "node", "code": "throw new Error('boom')"}))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_ne!(body_json(resp).await["exit_code"], 0);

    let resp = run(json!({"runtime": "python", "code": "print('oops'"}))
        .await
        .unwrap();
    assert_eq!(resp.status(), 422);
    let failed = body_json(resp).await;
    assert_eq!(failed["error"], "syntax_error");
    assert!(failed["exec_id"].as_str().unwrap().starts_with("exec_"));
    assert_ne!(failed["exit_code"], 0);

    let resp = run(json!({"runtime": "python", "code": "print('dev')"}))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.text().await.unwrap().contains("dev"));

    let resp = run(json!({"runtime": "python", "code": "print('later')", "wait": false}))
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let accepted = body_json(resp).await;
    assert_eq!(accepted["status"], "running");
    let exec_id = accepted["exec_id"].as_str().unwrap();
    let poll_url = accepted["poll_url"].as_str().unwrap();
    assert_eq!(poll_url, format!("/sandboxes/{id}/exec/{exec_id}"));
    assert_eq!(
        accepted["frames_url"].as_str().unwrap(),
        format!("/sandboxes/{id}/exec/{exec_id}/frames")
    );
    let poll = stack.broker.at(poll_url);
    wait_until("the async run-code to exit", || {
        let poll = poll.clone();
        async move {
            let record = body_json(follow().get(poll).send().await.unwrap()).await;
            record["status"] == "exited"
        }
    })
    .await;

    expect_error(
        run(json!({"runtime": "ruby", "code": "puts 1"}))
            .await
            .unwrap(),
        400,
        "runtime must be one of: node, python",
    )
    .await;
    expect_error(
        run(json!({"runtime": "python", "code": ""})).await.unwrap(),
        400,
        "code is required",
    )
    .await;
    stack.stop().await;
}

#[tokio::test]
async fn port_urls() {
    let stack = Stack::start().await;
    let id = stack.create_id().await;
    let resp = follow()
        .get(
            stack
                .worker
                .at(&format!("/sandboxes/{id}/ports/3000/url?protocol=https")),
        )
        .header("host", "broker.example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let url = body_json(resp).await;
    assert_eq!(
        url["url"],
        format!("https://broker.example.com/sandboxes/{id}/proxy/3000").as_str()
    );
    assert_eq!(url["port"], 3000);
    assert_eq!(url["protocol"], "https");

    let resp = follow()
        .get(stack.sandbox(&id, "/ports/3000/url?protocol=http"))
        .header("x-forwarded-host", "public.example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        body_json(resp).await["url"],
        format!("http://public.example.com/sandboxes/{id}/proxy/3000").as_str()
    );
    expect_error(
        follow()
            .get(stack.sandbox(&id, "/ports/3000/url?protocol=ftp"))
            .send()
            .await
            .unwrap(),
        400,
        "protocol must be one of: http, https, ws, wss",
    )
    .await;
    expect_error(
        follow()
            .get(stack.sandbox(&id, "/ports/0/url"))
            .send()
            .await
            .unwrap(),
        400,
        "invalid port",
    )
    .await;
    stack.stop().await;
}

#[tokio::test]
async fn proxy_forwards_http_without_the_client_token() {
    let stack = Stack::start().await;
    let id = stack.create_id().await;
    let upstream = start_upstream().await;
    let port = upstream.port();

    // Directly at the worker: reqwest itself drops Authorization on cross-port redirects.
    let resp = follow()
        .post(
            stack
                .worker
                .at(&format!("/sandboxes/{id}/proxy/{port}/hello/world?x=1")),
        )
        .header("authorization", "Bearer client-secret")
        .header("x-custom", "kept")
        .body("ping")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-traforato-sandbox-id"], id.as_str());
    let seen = body_json(resp).await;
    assert_eq!(seen["method"], "POST");
    assert_eq!(seen["path"], "/hello/world");
    assert_eq!(seen["query"], "x=1");
    assert_eq!(seen["body"], "ping");
    assert_eq!(seen["sandbox_id"], id.as_str());
    assert!(seen["authorization"].is_null(), "{seen}");
    assert_eq!(seen["custom"], "kept");
    assert_eq!(seen["host"], format!("localhost:{port}").as_str());
    assert_eq!(seen["forwarded_proto"], "http");
    assert_eq!(seen["forwarded_for"], "127.0.0.1");

    // Through the broker, trailing slash kept.
    let resp = follow()
        .get(stack.sandbox(&id, &format!("/proxy/{port}/app/?x=2")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let seen = body_json(resp).await;
    assert_eq!(seen["path"], "/app/");
    assert_eq!(seen["query"], "x=2");

    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    expect_error(
        follow()
            .get(stack.worker.at(&format!("/sandboxes/{id}/proxy/{closed}/")))
            .send()
            .await
            .unwrap(),
        502,
        "upstream not reachable",
    )
    .await;
    expect_error(
        follow()
            .get(stack.worker.at(&format!("/sandboxes/{id}/proxy/abc")))
            .send()
            .await
            .unwrap(),
        400,
        "invalid port",
    )
    .await;
    stack.stop().await;
}

#[tokio::test]
async fn proxy_tunnels_websocket_upgrades() {
    let stack = Stack::start().await;
    let id = stack.create_id().await;
    let upstream = start_upstream().await;

    let worker_addr = stack.worker.url.trim_start_matches("http://").to_string();
    let stream = tokio::net::TcpStream::connect(&worker_addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn.with_upgrades());
    let req = Request::builder()
        .uri(format!("/sandboxes/{id}/proxy/{}/ws", upstream.port()))
        .header("host", &worker_addr)
        .header("connection", "Upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    assert_eq!(resp.headers()["upgrade"], "websocket");
    assert_eq!(resp.headers()["sec-websocket-accept"], "test-accept");
    let upgraded = hyper::upgrade::on(resp).await.unwrap();
    let mut io = TokioIo::new(upgraded);
    io.write_all(b"hello through the tunnel").await.unwrap();
    let mut buf = vec![0u8; 24];
    io.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"hello through the tunnel");
    drop(io);
    stack.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Warm hints, retries, restarts

fn warm_target() -> PrePullTarget {
    PrePullTarget {
        tuple: SandboxTuple {
            virtualization: "fake".into(),
            image: "warm-img".into(),
            cpu: 1,
        },
        target_count: 1,
        warmup_script: String::new(),
        warmup_timeout: Duration::from_secs(120),
    }
}

const WARM_ROW: &str = "\nfake\twarm-img\t1\t1\n";

#[tokio::test]
async fn hinted_create_claims_the_ready_sandbox() {
    let stack = Stack::start_with(|c| c.pre_pull = vec![warm_target()]).await;
    wait_until("the warm sandbox to be announced", || {
        let broker = &stack.broker;
        async move { broker.availability().await.contains(WARM_ROW) }
    })
    .await;
    let body = json!({"virtualization": "fake", "image": "warm-img", "cpu": 1});
    let resp = no_follow()
        .post(stack.broker.at("/sandboxes"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 307);
    let location = resp.headers()["location"].to_str().unwrap().to_string();
    let hinted = url::Url::parse(&location)
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == "local_vm_id")
        .map(|(_, v)| v.into_owned())
        .expect("a local_vm_id hint");
    let resp = follow().post(&location).json(&body).send().await.unwrap();
    assert_eq!(resp.status(), 201);
    let created = body_json(resp).await;
    let id = created["sandbox_id"].as_str().unwrap();
    assert!(id.ends_with(&hinted), "{id} vs {hinted}");
    assert_eq!(created["start_type"], "warm");
    stack.stop().await;
}

#[tokio::test]
async fn unknown_hint_bounces_back_to_the_broker() {
    let stack = Stack::start().await;
    let unknown = LocalVmId::new_random();
    let resp = no_follow()
        .post(stack.worker.at(&format!(
            "/sandboxes?local_vm_id={unknown}&placement_retry=1"
        )))
        .json(&json!({"virtualization": "fake", "image": "ubuntu:24.04", "cpu": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 307);
    assert_eq!(
        resp.headers()["location"],
        format!("{}/sandboxes?placement_retry=2", stack.broker.url).as_str()
    );
    expect_error(
        no_follow()
            .post(stack.worker.at("/sandboxes?local_vm_id=nope"))
            .json(&json!({"image": "ubuntu:24.04"}))
            .send()
            .await
            .unwrap(),
        400,
        "invalid local_vm_id",
    )
    .await;
    stack.stop().await;
}

#[tokio::test]
async fn worker_reannounces_after_a_broker_restart() {
    let stack = Stack::start_with(|c| c.pre_pull = vec![warm_target()]).await;
    wait_until("the warm sandbox to be announced", || {
        let broker = &stack.broker;
        async move { broker.availability().await.contains(WARM_ROW) }
    })
    .await;
    let Stack { broker, worker } = stack;
    let addr = broker.addr;
    broker.stop().await;

    let restarted = RunningBroker::start_on(addr, broker_config()).await;
    wait_until("the worker to re-register and re-announce", || {
        let broker = &restarted;
        async move {
            let text = broker.availability().await;
            text.contains("\nworkers_active_total=1\n") && text.contains(WARM_ROW)
        }
    })
    .await;
    assert!(restarted.broker.is_worker_active("worker_local"));
    worker.stop().await;
    restarted.stop().await;
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

    let mut config = worker_config("http://127.0.0.1:1".into(), None);
    config.auth_mode = AuthMode::Prod;
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

#[tokio::test]
async fn shutdown_stops_serving() {
    let broker = RunningBroker::start(broker_config()).await;
    let url = broker.at("/healthz");
    assert_eq!(follow().get(&url).send().await.unwrap().status(), 200);
    broker.stop().await;
    assert!(reqwest::Client::new().get(&url).send().await.is_err());
}

// ---------------------------------------------------------------------------------------------
// The binaries

#[tokio::test]
async fn dev_binary_serves_and_stops_on_sigterm() {
    use tokio::io::AsyncBufReadExt;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_traforato-dev"))
        .args([
            "-broker-listen",
            "127.0.0.1:0",
            "--worker-listen=127.0.0.1:0",
            "--default-virtualization",
            "fake",
        ])
        .env_clear()
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdout = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let logs = tokio::spawn(async move {
        let mut all = Vec::new();
        while let Ok(Some(line)) = stdout.next_line().await {
            all.push(line);
        }
        all
    });
    let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let line = tokio::time::timeout(WAIT, lines.next_line())
        .await
        .expect("the startup line")
        .unwrap()
        .unwrap();
    // "traforato-dev: broker listening on <url> (send creates there), worker on <url>"
    let words: Vec<&str> = line.split_whitespace().collect();
    let broker_url = words[4].to_string();
    let worker_url = words[words.len() - 1].to_string();
    assert!(broker_url.starts_with("http://127.0.0.1:"), "{line}");
    assert!(!broker_url.ends_with(":0"), "{line}");
    assert!(!worker_url.ends_with(":0"), "{line}");

    let resp = follow()
        .post(format!("{broker_url}/sandboxes"))
        .json(&json!({"image": "ubuntu:24.04"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    assert_eq!(body_json(resp).await["virtualization"], "fake");

    let pid = child.id().unwrap().to_string();
    let killed = tokio::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .unwrap();
    assert!(killed.success());
    let status = tokio::time::timeout(WAIT, child.wait())
        .await
        .expect("exit after SIGTERM")
        .unwrap();
    assert!(status.success(), "{status:?}");

    // Development mode is announced loudly, for both services and for internal calls.
    let logs: Vec<Value> = logs
        .await
        .unwrap()
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    for msg in [
        "auth disabled: running broker in development no-auth mode",
        "auth disabled: running worker in development no-auth mode",
    ] {
        let record = logs
            .iter()
            .find(|r| r["msg"] == msg)
            .unwrap_or_else(|| panic!("{msg} in {logs:?}"));
        assert_eq!(record["level"], "WARN");
        assert_eq!(record["auth_mode"], "dev");
    }
    let record = logs
        .iter()
        .find(|r| r["msg"] == "internal worker callback auth disabled")
        .expect("the internal auth warning");
    assert_eq!(
        record["endpoint"],
        "/internal/workers/{worker_id}/vm-events"
    );
    let configured = logs
        .iter()
        .find(|r| r["msg"] == "dev environment configured")
        .unwrap();
    assert_eq!(configured["auth_mode"], "dev");
    // Hardening II: the startup log says that development mode stays on loopback.
    let loopback: Vec<&Value> = logs
        .iter()
        .filter(|r| {
            r["msg"]
                .as_str()
                .is_some_and(|m| m.starts_with("development mode listens on loopback only"))
        })
        .collect();
    assert_eq!(loopback.len(), 2, "{logs:?}");
}

/// Hardening II: without a secret (no authentication) no binary listens beyond loopback
/// unless told to with `--insecure-dev-mode-on-network`.
#[tokio::test]
async fn dev_mode_binaries_refuse_to_listen_on_the_network() {
    let cases: [(&str, &[&str]); 5] = [
        (
            env!("CARGO_BIN_EXE_traforato-dev"),
            &["--broker-listen", ":0"],
        ),
        (
            env!("CARGO_BIN_EXE_traforato-dev"),
            &["--worker-listen", "0.0.0.0:0"],
        ),
        (env!("CARGO_BIN_EXE_traforato-broker"), &["--listen", ":0"]),
        (
            env!("CARGO_BIN_EXE_traforato-broker"),
            &["-listen", "[::]:0"],
        ),
        (env!("CARGO_BIN_EXE_traforato-worker"), &["--listen", ":0"]),
    ];
    for (bin, args) in cases {
        let out = tokio::process::Command::new(bin)
            .args(args)
            .args(["--default-virtualization", "fake"])
            .env_clear()
            .output()
            .await
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{bin} {args:?}: {stderr}");
        assert!(
            stderr.contains("refusing to listen on")
                && stderr.contains("in development mode")
                && stderr.contains("--insecure-dev-mode-on-network"),
            "{bin} {args:?}: {stderr}"
        );
    }

    // With the explicit flag (here from its variable) it listens, and warns loudly.
    let broker = Bin::spawn(
        env!("CARGO_BIN_EXE_traforato-broker"),
        &["--listen", ":0", "--default-virtualization", "fake"],
        &[("TRAFORATO_INSECURE_DEV_MODE_ON_NETWORK", "true")],
    );
    let warning = broker
        .record("INSECURE: development mode (no authentication) listening beyond loopback (--insecure-dev-mode-on-network): anyone who can reach this port can run code in sandboxes")
        .await;
    assert_eq!(warning["level"], "WARN");
    assert_eq!(warning["listen"], "0.0.0.0:0");
    let url = broker.first_url().await.replace("0.0.0.0", "127.0.0.1");
    let resp = follow().get(format!("{url}/healthz")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    broker.stop().await;
}

#[tokio::test]
async fn binaries_report_configuration_errors() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("worker.yaml");
    std::fs::write(&file, "bogus-key: 1\n").unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_traforato-worker"))
        .args(["--file", file.to_str().unwrap()])
        .env_clear()
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with("worker: invalid worker config at bogus-key: "),
        "{stderr}"
    );
    assert!(stderr.contains("bogus-key"), "{stderr}");

    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_traforato-broker"))
        .arg("positional")
        .env_clear()
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).starts_with("broker: "));

    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_traforato-worker"))
        .arg("-h")
        .env_clear()
        .env("TRAFORATO_JWT_SECRET", "hunter2-in-env")
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--file",
        "--listen",
        "--broker-control-url",
        "--default-ttl",
        "--max-ttl",
        "--default-virtualization",
        "TRAFORATO_WORKER_REGISTRATION_JITTER_PERCENT",
        "--jwt-secret",
        "TRAFORATO_JWT_SECRET",
        "--jwt-issuer",
        "--jwt-audience",
        "--jwt-max-lifetime",
        "TRAFORATO_JWT_MAX_LIFETIME",
        "--internal-secret",
        "TRAFORATO_INTERNAL_SECRET",
        "--insecure-dev-mode-on-network",
        "TRAFORATO_INSECURE_DEV_MODE_ON_NETWORK",
        "127.0.0.1:8081 without a JWT secret",
    ] {
        assert!(help.contains(flag), "{flag} in {help}");
    }
    // The secret's value is never shown, even when the environment sets it.
    assert!(!help.contains("hunter2"), "{help}");
}

// ---------------------------------------------------------------------------------------------
// Prod mode: client tokens, ownership, internal worker tokens

/// The prod secret of §11's tests.
const SECRET: &str = "secret";

fn prod_auth() -> AuthConfig {
    AuthConfig::with_secret(SECRET)
}

fn now_secs() -> i64 {
    chrono::Utc::now().timestamp()
}

/// A fresh client token for `client_id`, valid for 10 minutes.
fn token(client_id: &str) -> String {
    mint_client_token(
        SECRET,
        client_id,
        "traforato",
        "traforato-api",
        Duration::from_secs(600),
        chrono::Utc::now(),
    )
}

/// `Bearer <fresh token>`.
fn bearer(client_id: &str) -> String {
    format!("Bearer {}", token(client_id))
}

/// An internal token header for calls by `worker_id`, as a worker with [`SECRET`] signs them.
fn internal_bearer(worker_id: &str) -> String {
    InternalTokenSigner::new(&prod_auth(), Arc::new(SystemClock))
        .authorization_header(worker_id)
        .unwrap()
}

/// An HS256 token with exactly `claims`, signed with `secret`.
fn signed(secret: &str, claims: &Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

/// An HS256 token with exactly `claims`, signed with the internal key of [`SECRET`] (as a
/// worker's tokens are).
fn signed_internal(claims: &Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(&prod_auth().internal_key()),
    )
    .unwrap()
}

/// A token with header `{"alg": alg}` and an arbitrary signature (`none`, RS256, ...).
fn with_algorithm(alg: &str, claims: &Value) -> String {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;
    let header = URL_SAFE_NO_PAD.encode(json!({"alg": alg, "typ": "JWT"}).to_string());
    let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
    let signature = if alg == "none" {
        String::new()
    } else {
        URL_SAFE_NO_PAD.encode([7u8; 256])
    };
    format!("{header}.{payload}.{signature}")
}

/// Client claims as §11's prod tests have them: exp = now + 10 min, iat = now - 1 min.
fn client_claims(client_id: &str) -> Value {
    let now = now_secs();
    json!({
        "client_id": client_id,
        "iss": "traforato",
        "aud": "traforato-api",
        "exp": now + 600,
        "iat": now - 60,
        "jti": ulid::Ulid::new().to_string(),
    })
}

/// [`client_claims`] with `key` set to `value` (`Value::Null` removes it).
fn client_claims_with(key: &str, value: Value) -> Value {
    let mut claims = client_claims("client-a");
    if value.is_null() {
        claims.as_object_mut().unwrap().remove(key);
    } else {
        claims[key] = value;
    }
    claims
}

/// Internal claims as §11 has them: aud list, iss, sub, exp = now + 45 s, iat = now.
fn internal_claims(sub: &str) -> Value {
    let now = now_secs();
    json!({
        "sub": sub,
        "iss": "traforato",
        "aud": ["traforato-internal"],
        "exp": now + 45,
        "iat": now,
        "jti": ulid::Ulid::new().to_string(),
    })
}

fn sandbox_body() -> Value {
    json!({"virtualization": "fake", "image": "ubuntu:24.04", "cpu": 1})
}

fn ready_event(local_vm_id: &str) -> Value {
    json!({
        "event": "ready",
        "local_vm_id": local_vm_id,
        "virtualization": "vetu",
        "image": "ubuntu:24.04",
        "cpu": 2,
    })
}

impl Stack {
    async fn start_prod() -> Self {
        Self::start_prod_with(|_| {}).await
    }

    /// Creates a sandbox as `client_id` through the broker, a fresh token on each hop (the
    /// way the client's token provider does it); returns its id.
    async fn create_as(&self, client_id: &str) -> String {
        let resp = no_follow()
            .post(self.broker.at("/sandboxes"))
            .header("authorization", bearer(client_id))
            .json(&sandbox_body())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 307);
        let location = resp.headers()["location"].to_str().unwrap().to_string();
        let resp = no_follow()
            .post(&location)
            .header("authorization", bearer(client_id))
            .json(&sandbox_body())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 201);
        body_json(resp).await["sandbox_id"]
            .as_str()
            .unwrap()
            .to_string()
    }
}

#[tokio::test]
async fn prod_broker_checks_client_tokens_on_create_only() {
    let broker = RunningBroker::start_prod().await;
    // §11.30 and friends: no token needed for health, metrics and availability.
    for path in ["/healthz", "/metrics", "/metrics/sandboxes"] {
        let resp = follow().get(broker.at(path)).send().await.unwrap();
        assert_eq!(resp.status(), 200, "{path}");
    }
    let metrics = follow()
        .get(broker.at("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
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
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 307);
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
    expect_error(
        no_follow()
            .post(broker.at(&format!("/sandboxes?sandbox_id={id}")))
            .json(&json!({"image": "ubuntu:24.04"}))
            .send()
            .await
            .unwrap(),
        401,
        "unauthorized: missing bearer token",
    )
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
    broker.stop().await;
}

#[tokio::test]
async fn prod_internal_routes_need_worker_tokens() {
    let broker = RunningBroker::start_prod().await;
    let at = |leaf: &str| broker.at(&format!("/internal/workers/worker_a/{leaf}"));
    let registration = json!({
        "hostname": "worker-a.local",
        "base_url": "http://worker-a.local:8081",
    });

    // §11.53: a valid token does not make an unknown worker known.
    expect_error(
        follow()
            .post(at("vm-events"))
            .header("authorization", internal_bearer("worker_a"))
            .json(&ready_event(VALID_UUID))
            .send()
            .await
            .unwrap(),
        401,
        "worker must self-register",
    )
    .await;
    expect_error(
        follow()
            .post(at("vm-start"))
            .header("authorization", internal_bearer("worker_a"))
            .send()
            .await
            .unwrap(),
        401,
        "worker must self-register",
    )
    .await;

    // No token: a route-specific 401 that does not say why.
    expect_error(
        follow()
            .put(at("registration"))
            .json(&registration)
            .send()
            .await
            .unwrap(),
        401,
        "unauthorized registration",
    )
    .await;
    expect_error(
        follow().delete(at("registration")).send().await.unwrap(),
        401,
        "unauthorized deregistration",
    )
    .await;
    expect_error(
        follow()
            .post(at("vm-events"))
            .json(&ready_event(VALID_UUID))
            .send()
            .await
            .unwrap(),
        401,
        "unauthorized internal callback",
    )
    .await;
    expect_error(
        follow().post(at("vm-start")).send().await.unwrap(),
        401,
        "unauthorized vm start request",
    )
    .await;
    // The token is checked before the worker id.
    expect_error(
        follow()
            .put(broker.at("/internal/workers/worker-a/registration"))
            .json(&registration)
            .send()
            .await
            .unwrap(),
        401,
        "unauthorized registration",
    )
    .await;

    let resp = follow()
        .put(at("registration"))
        .header("authorization", internal_bearer("worker_a"))
        .json(&registration)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);

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
        expect_error(
            follow()
                .post(at("vm-events"))
                .header("authorization", &authorization)
                .json(&ready_event(VALID_UUID))
                .send()
                .await
                .unwrap(),
            401,
            "unauthorized internal callback",
        )
        .await;
    }
    assert!(!broker.availability().await.contains("ubuntu:24.04"));

    // A valid token (aud as a list, §11's shape) is accepted once, on any internal route.
    let valid = format!("Bearer {}", signed_internal(&internal_claims("worker_a")));
    let resp = follow()
        .post(at("vm-events"))
        .header("authorization", &valid)
        .json(&ready_event(VALID_UUID))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    assert!(broker
        .availability()
        .await
        .contains("\nvetu\tubuntu:24.04\t2\t1\n"));
    expect_error(
        follow()
            .post(at("vm-start"))
            .header("authorization", &valid)
            .send()
            .await
            .unwrap(),
        401,
        "unauthorized vm start request",
    )
    .await;
    let resp = follow()
        .post(at("vm-start"))
        .header("authorization", internal_bearer("worker_a"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);

    // Deregistered, the worker must register again before posting events.
    let resp = follow()
        .delete(at("registration"))
        .header("authorization", internal_bearer("worker_a"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    expect_error(
        follow()
            .post(at("vm-events"))
            .header("authorization", internal_bearer("worker_a"))
            .json(&ready_event(VALID_UUID))
            .send()
            .await
            .unwrap(),
        401,
        "worker must self-register",
    )
    .await;
    broker.stop().await;
}

#[tokio::test]
async fn dev_mode_needs_no_tokens() {
    // §11.46: without a secret, internal calls need no token (static worker).
    let broker = RunningBroker::start(broker_config()).await;
    broker
        .broker
        .register_static_worker(traforato_core::broker::StaticWorker {
            worker_id: "worker_a".into(),
            hostname: "worker-a.local".into(),
            base_url: "http://worker-a.local:8081".into(),
            ..Default::default()
        });
    let resp = follow()
        .post(broker.at("/internal/workers/worker_a/vm-events"))
        .json(&ready_event(VALID_UUID))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    let metrics = follow()
        .get(broker.at("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("\ntraforato_service_auth_mode 0\n"),
        "{metrics}"
    );
    broker.stop().await;

    // §11.56: broker create 307 and worker create 201 without a token; any header is ignored.
    let stack = Stack::start().await;
    let resp = no_follow()
        .post(stack.broker.at("/sandboxes"))
        .json(&sandbox_body())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 307);
    let resp = follow()
        .post(stack.worker.at("/sandboxes"))
        .header("authorization", "Bearer garbage")
        .json(&sandbox_body())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    stack.stop().await;
}

#[tokio::test]
async fn prod_worker_authenticates_every_route_before_routing() {
    let stack = Stack::start_prod().await;
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
    let resp = follow().get(w.at("/healthz")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(body_json(resp).await["status"], "ok");
    let metrics = follow()
        .get(w.at("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
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
        expect_error(
            follow().request(method, w.at(path)).send().await.unwrap(),
            401,
            "unauthorized: missing bearer token",
        )
        .await;
    }
    assert_eq!(failures(), Some(4.0));
    expect_error(
        follow()
            .get(w.at("/nothing"))
            .header("authorization", bearer("client-a"))
            .send()
            .await
            .unwrap(),
        404,
        "route not found",
    )
    .await;
    expect_error(
        follow()
            .get(w.at("/sandboxes/not-an-id"))
            .header("authorization", bearer("client-a"))
            .send()
            .await
            .unwrap(),
        400,
        "malformed sandbox_id",
    )
    .await;
    expect_error(
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
            .send()
            .await
            .unwrap(),
        401,
        "unauthorized: expired token",
    )
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
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 307);
    let location = resp.headers()["location"].to_str().unwrap().to_string();
    let resp = no_follow()
        .post(&location)
        .header("authorization", &shared)
        .json(&sandbox_body())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let id = body_json(resp).await["sandbox_id"]
        .as_str()
        .unwrap()
        .to_string();
    expect_error(
        follow()
            .get(w.at(&format!("/sandboxes/{id}")))
            .header("authorization", &shared)
            .send()
            .await
            .unwrap(),
        401,
        &format!("jwt replay detected: {jti}"),
    )
    .await;
    assert_eq!(failures(), Some(6.0));
    // A fresh token works.
    let resp = follow()
        .get(w.at(&format!("/sandboxes/{id}")))
        .header("authorization", bearer("client-a"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    stack.stop().await;
}

#[tokio::test]
async fn prod_sandboxes_belong_to_their_creator_on_every_route() {
    let stack = Stack::start_prod().await;
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
        (M::GET, "/exec/ws".into(), None, 501),
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
    stack.stop().await;
}

#[tokio::test]
async fn prod_proxy_strips_the_client_token() {
    let stack = Stack::start_prod().await;
    let id = stack.create_as("client-a").await;
    let port = start_upstream().await.port();
    let resp = follow()
        .post(
            stack
                .worker
                .at(&format!("/sandboxes/{id}/proxy/{port}/hello?x=1")),
        )
        .header("authorization", bearer("client-a"))
        .header("proxy-authorization", "Basic c2VjcmV0")
        .body("ping")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let seen = body_json(resp).await;
    assert_eq!(seen["path"], "/hello");
    assert_eq!(seen["body"], "ping");
    assert_eq!(seen["sandbox_id"], id.as_str());
    assert!(seen["authorization"].is_null(), "{seen}");
    assert!(!seen.to_string().contains("Bearer"), "{seen}");
    stack.stop().await;
}

#[tokio::test]
async fn prod_worker_and_broker_work_together_over_http() {
    // Registration, ready events and the claimed event all cross HTTP with internal tokens.
    let stack = Stack::start_prod_with(|c| c.pre_pull = vec![warm_target()]).await;
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
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 307);
    let location = resp.headers()["location"].to_str().unwrap().to_string();
    assert!(location.contains("local_vm_id="), "{location}");
    let resp = no_follow()
        .post(&location)
        .header("authorization", bearer("client-a"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
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
    stack.stop().await;
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
    let worker = RunningWorker::start_with_auth(
        Some(&broker_url),
        |c| c.pre_pull = vec![warm_target()],
        fake(),
        &prod_auth(),
    )
    .await;
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
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
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
    worker.stop().await;
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

// ---------------------------------------------------------------------------------------------
// The binaries in prod mode, and their logs

/// A running binary whose stdout (JSON log lines) is collected as it comes.
struct Bin {
    child: tokio::process::Child,
    lines: Arc<std::sync::Mutex<Vec<String>>>,
    reader: JoinHandle<()>,
}

impl Bin {
    fn spawn(path: &str, args: &[&str], env: &[(&str, &str)]) -> Self {
        use tokio::io::AsyncBufReadExt;
        let mut child = tokio::process::Command::new(path)
            .args(args)
            .env_clear()
            .envs(env.iter().copied())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let lines: Arc<std::sync::Mutex<Vec<String>>> = Arc::default();
        let sink = lines.clone();
        let mut stdout = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let reader = tokio::spawn(async move {
            while let Ok(Some(line)) = stdout.next_line().await {
                sink.lock().unwrap().push(line);
            }
        });
        Self {
            child,
            lines,
            reader,
        }
    }

    /// The first log record with `msg` (waiting for it).
    async fn record(&self, msg: &str) -> Value {
        let find = || {
            self.lines
                .lock()
                .unwrap()
                .iter()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .find(|r| r["msg"] == msg)
        };
        wait_until(&format!("log record {msg:?}"), || {
            let found = find().is_some();
            async move { found }
        })
        .await;
        find().unwrap()
    }

    /// The URL of its first `listening` record.
    async fn first_url(&self) -> String {
        let record = self.record("listening").await;
        format!("http://{}", record["addr"].as_str().unwrap())
    }

    /// SIGTERM, wait for a clean exit, and return every log line.
    async fn stop(mut self) -> Vec<String> {
        let pid = self.child.id().unwrap().to_string();
        let killed = tokio::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .await
            .unwrap();
        assert!(killed.success());
        let status = tokio::time::timeout(WAIT, self.child.wait())
            .await
            .expect("exit after SIGTERM")
            .unwrap();
        assert!(status.success(), "{status:?}");
        self.reader.await.unwrap();
        let lines = self.lines.lock().unwrap().clone();
        for line in &lines {
            assert!(
                serde_json::from_str::<Value>(line).is_ok(),
                "not a JSON log line: {line}"
            );
        }
        lines
    }
}

/// Asserts no log line holds the secret, any of `tokens`, or anything shaped like a JWT.
fn assert_no_secrets(lines: &[String], secret: &str, tokens: &[String]) {
    for line in lines {
        assert!(!line.contains(secret), "the secret was logged: {line}");
        for token in tokens {
            let bare = token.trim_start_matches("Bearer ");
            assert!(!line.contains(bare), "a token was logged: {line}");
            // Not even the signature part on its own.
            let signature = bare.rsplit('.').next().unwrap();
            assert!(!line.contains(signature), "a token part was logged: {line}");
        }
        // Every JWT starts with a base64url JSON object, `eyJ`.
        assert!(
            !line.contains("eyJ"),
            "something like a JWT was logged: {line}"
        );
        assert!(
            !line.contains("Bearer"),
            "an authorization was logged: {line}"
        );
    }
}

/// A distinctive secret, so that a leak is unmistakable.
const BIN_SECRET: &str = "bin-secret-7f3a9c";

fn bin_bearer(client_id: &str) -> String {
    format!(
        "Bearer {}",
        mint_client_token(
            BIN_SECRET,
            client_id,
            "traforato",
            "traforato-api",
            Duration::from_secs(600),
            chrono::Utc::now(),
        )
    )
}

#[tokio::test]
async fn prod_broker_and_worker_binaries_cooperate_and_log_no_secrets() {
    let broker = Bin::spawn(
        env!("CARGO_BIN_EXE_traforato-broker"),
        &[
            "--listen",
            "127.0.0.1:0",
            "--default-virtualization",
            "fake",
        ],
        &[("TRAFORATO_JWT_SECRET", BIN_SECRET)],
    );
    let broker_url = broker.first_url().await;
    let worker = Bin::spawn(
        env!("CARGO_BIN_EXE_traforato-worker"),
        &[
            "--listen",
            "127.0.0.1:0",
            "--broker-control-url",
            &broker_url,
            "--default-virtualization",
            "fake",
            "--registration-heartbeat",
            "200ms",
        ],
        // The secret from a file-like value with a trailing newline is the same secret.
        &[("TRAFORATO_JWT_SECRET", &format!("{BIN_SECRET}\n"))],
    );
    let worker_url = worker.first_url().await;
    wait_until(
        "the worker to register over HTTP with internal tokens",
        || {
            let url = format!("{broker_url}/metrics/sandboxes");
            async move {
                let text = follow()
                    .get(&url)
                    .send()
                    .await
                    .unwrap()
                    .text()
                    .await
                    .unwrap();
                text.contains("\nworkers_active_total=1\n")
            }
        },
    )
    .await;

    let mut used = Vec::new();
    // Anonymous: refused at both services.
    let resp = no_follow()
        .post(format!("{broker_url}/sandboxes"))
        .json(&sandbox_body())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    // A token good for one request per service: the create, then one replay attempt.
    let shared = bin_bearer("client-a");
    used.push(shared.clone());
    let resp = no_follow()
        .post(format!("{broker_url}/sandboxes"))
        .header("authorization", &shared)
        .json(&sandbox_body())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 307);
    let location = resp.headers()["location"].to_str().unwrap().to_string();
    assert!(location.starts_with(&worker_url), "{location}");
    let resp = no_follow()
        .post(&location)
        .header("authorization", &shared)
        .json(&sandbox_body())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let id = body_json(resp).await["sandbox_id"]
        .as_str()
        .unwrap()
        .to_string();
    let resp = follow()
        .get(format!("{worker_url}/sandboxes/{id}"))
        .header("authorization", &shared)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    // A foreign client, a bad signature, and the owner.
    let foreign = bin_bearer("client-b");
    used.push(foreign.clone());
    let resp = follow()
        .get(format!("{worker_url}/sandboxes/{id}"))
        .header("authorization", &foreign)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    let forged = format!("Bearer {}", token("client-a"));
    used.push(forged.clone());
    let resp = follow()
        .get(format!("{worker_url}/sandboxes/{id}"))
        .header("authorization", &forged)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let owner = bin_bearer("client-a");
    used.push(owner.clone());
    let resp = follow()
        .get(format!("{worker_url}/sandboxes/{id}"))
        .header("authorization", &owner)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);

    let failed = worker.record("authentication failed").await;
    assert_eq!(failed["level"], "WARN");
    assert_eq!(failed["method"], "GET");
    assert_eq!(failed["path"], format!("/sandboxes/{id}").as_str());
    assert!(
        failed["auth_error"]
            .as_str()
            .unwrap()
            .starts_with("jwt replay detected: "),
        "{failed}"
    );
    let configured = worker.record("worker configured").await;
    assert_eq!(configured["auth_mode"], "prod");
    let configured = broker.record("broker configured").await;
    assert_eq!(configured["auth_mode"], "prod");

    let worker_lines = worker.stop().await;
    let broker_lines = broker.stop().await;
    let all: Vec<String> = worker_lines.into_iter().chain(broker_lines).collect();
    assert!(!all.iter().any(|l| l.contains("auth disabled")), "{all:?}");
    assert!(
        all.iter().any(|l| l.contains("\"auth_mode\":\"prod\"")),
        "{all:?}"
    );
    assert_no_secrets(&all, BIN_SECRET, &used);
}

#[tokio::test]
async fn prod_dev_binary_refuses_anonymous_and_foreign_requests() {
    let dev = Bin::spawn(
        env!("CARGO_BIN_EXE_traforato-dev"),
        &[
            "--broker-listen",
            "127.0.0.1:0",
            "--worker-listen",
            "127.0.0.1:0",
            "--default-virtualization",
            "fake",
        ],
        &[("TRAFORATO_JWT_SECRET", BIN_SECRET)],
    );
    let configured = dev.record("dev environment configured").await;
    assert_eq!(configured["auth_mode"], "prod");
    let broker_url = configured["broker_url"].as_str().unwrap().to_string();
    let worker_url = configured["worker_url"].as_str().unwrap().to_string();
    // Both servers listen once two `listening` records are out.
    wait_until("both servers to listen", || {
        let n = dev
            .lines
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains("\"msg\":\"listening\""))
            .count();
        async move { n == 2 }
    })
    .await;

    let mut used = Vec::new();
    let resp = no_follow()
        .post(format!("{broker_url}/sandboxes"))
        .json(&sandbox_body())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let resp = no_follow()
        .post(format!("{worker_url}/sandboxes"))
        .json(&sandbox_body())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let mut fresh = |client: &str| {
        let header = bin_bearer(client);
        used.push(header.clone());
        header
    };
    let resp = no_follow()
        .post(format!("{broker_url}/sandboxes"))
        .header("authorization", fresh("client-a"))
        .json(&sandbox_body())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 307);
    let location = resp.headers()["location"].to_str().unwrap().to_string();
    let resp = no_follow()
        .post(&location)
        .header("authorization", fresh("client-a"))
        .json(&sandbox_body())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let id = body_json(resp).await["sandbox_id"]
        .as_str()
        .unwrap()
        .to_string();
    let sandbox = format!("{worker_url}/sandboxes/{id}");
    let resp = follow()
        .get(&sandbox)
        .header("authorization", fresh("client-b"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    let resp = follow().get(&sandbox).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    let resp = follow()
        .get(&sandbox)
        .header("authorization", fresh("client-a"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);

    let lines = dev.stop().await;
    assert!(
        !lines.iter().any(|l| l.contains("auth disabled")),
        "{lines:?}"
    );
    assert_no_secrets(&lines, BIN_SECRET, &used);
}

// ---------------------------------------------------------------------------------------------
// The container backend end to end (needs root; runs in CI as root)

/// A container backend with its own state dir and cgroup parent; the worker binary is the
/// sandbox init (it calls `init_main_if_requested` first thing).
fn container_backend(tag: &str) -> Option<(Arc<ContainerBackend>, std::path::PathBuf)> {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipping: needs root (runs in CI as root)");
        return None;
    }
    let id = uuid::Uuid::new_v4().simple().to_string();
    let state_dir = std::env::temp_dir().join(format!("traforato-e2e-{tag}-{}", &id[..8]));
    let config = ContainerConfig {
        state_dir: state_dir.clone(),
        cgroup_parent: format!("traforato-e2e-{}", &id[..12]),
        init_program: std::path::PathBuf::from(env!("CARGO_BIN_EXE_traforato-worker")),
        ..ContainerConfig::default()
    };
    match ContainerBackend::new(config) {
        Ok(backend) => Some((Arc::new(backend), state_dir)),
        Err(e) => panic!("container backend unavailable as root: {e}"),
    }
}

#[tokio::test]
async fn container_sandboxes_through_the_broker() {
    let Some((backend, state_dir)) = container_backend("flow") else {
        return;
    };
    let broker = RunningBroker::start(BrokerConfig {
        default_virtualization: "container".to_string(),
        ..BrokerConfig::default()
    })
    .await;
    let backends: Vec<Arc<dyn VmBackend>> = vec![backend.clone()];
    let worker = RunningWorker::start(
        Some(&broker.url),
        |c| {
            c.default_virtualization = "container".to_string();
            c.max_live_sandboxes = 4;
            c.pre_pull = vec![PrePullTarget {
                tuple: SandboxTuple::normalize("container", "host", 1, "container"),
                target_count: 1,
                warmup_script: "python3 -I -c 'import json'".to_string(),
                warmup_timeout: Duration::from_secs(30),
            }];
        },
        backends,
    )
    .await;
    let stack = Stack::registered(broker, worker).await;

    // The pre-pull floor gives one ready sandbox; the create claims it.
    let b = stack.broker.broker.clone();
    wait_until("a warm container sandbox", || {
        let text = b.availability_text();
        async move { text.contains("container\thost\t1\t1") }
    })
    .await;
    let created = stack.create(json!({"image": "host"})).await;
    assert_eq!(created["virtualization"], "container");
    assert_eq!(created["start_type"], "warm");
    let id = created["sandbox_id"].as_str().unwrap().to_string();

    // Real Python, with the README's words.
    let resp = follow()
        .post(stack.sandbox(&id, "/exec/code"))
        .json(&json!({"runtime": "python", "code": "print('hello from traforato')"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let ran = body_json(resp).await;
    assert_eq!(ran["stdout"], "hello from traforato\n", "{ran}");
    assert_eq!(ran["exit_code"], 0);
    let resp = follow()
        .post(stack.sandbox(&id, "/exec/code"))
        .json(&json!({"runtime": "node", "code": "console.log(1+"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 422);
    assert_eq!(body_json(resp).await["error"], "syntax_error");

    // What exec writes, the files API reads.
    let resp = follow()
        .post(stack.sandbox(&id, "/exec"))
        .json(&json!({"command": "echo made-by-exec > /workspace/e.txt; hostname"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let exec_id = body_json(resp).await["exec_id"]
        .as_str()
        .unwrap()
        .to_string();
    let mut cursor = 0;
    let mut frames = Vec::new();
    loop {
        let page = body_json(
            follow()
                .get(stack.sandbox(
                    &id,
                    &format!("/exec/{exec_id}/frames?cursor={cursor}&wait=5s"),
                ))
                .send()
                .await
                .unwrap(),
        )
        .await;
        frames.extend(page["frames"].as_array().unwrap().iter().cloned());
        cursor = page["next_cursor"].as_u64().unwrap();
        if !page["has_more"].as_bool().unwrap() {
            break;
        }
    }
    assert_eq!(frames.last().unwrap()["type"], "exit");
    assert_eq!(frames.last().unwrap()["data"], "0");
    let read = body_json(
        follow()
            .get(stack.sandbox(&id, "/files?path=/workspace/e.txt"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(read["content"], "made-by-exec\n");

    // A server started in the sandbox answers through the proxy; no host port is opened.
    let resp = follow()
        .put(stack.sandbox(&id, "/files?path=/workspace/site/index.html"))
        .body("<p>inside</p>")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let resp = follow()
        .post(stack.sandbox(&id, "/exec"))
        .json(&json!({
            "command": "cd /workspace/site && python3 -m http.server 8000 >/dev/null 2>&1 &"
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let url = stack.sandbox(&id, "/proxy/8000/index.html");
    wait_until("the sandbox's http server", || {
        let url = url.clone();
        async move {
            match follow().get(&url).send().await {
                Ok(resp) if resp.status() == 200 => resp.text().await.unwrap() == "<p>inside</p>",
                _ => false,
            }
        }
    })
    .await;

    // Hardening II: an image the worker does not have is the client's mistake, said so
    // (404 with the reference), not a generic provisioning failure; the operator's own
    // image names are not listed.
    for image in ["ubuntu:24.04", "python:3.12-slim"] {
        expect_error(
            follow()
                .post(stack.broker.at("/sandboxes"))
                .json(&json!({"image": image}))
                .send()
                .await
                .unwrap(),
            404,
            &format!("image not found: {image}"),
        )
        .await;
    }

    // Delete destroys it: nothing of it stays in the state dir.
    let vm_id = traforato_core::id::SandboxId::parse(&id)
        .unwrap()
        .local_vm_id();
    let vm_dir = state_dir.join(vm_id.to_string());
    assert!(vm_dir.exists(), "{}", vm_dir.display());
    let resp = follow()
        .delete(stack.sandbox(&id, ""))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    assert!(!vm_dir.exists(), "{} is left", vm_dir.display());

    stack.stop().await;
    // Shutdown destroyed the warm sandboxes too.
    let left: Vec<_> = std::fs::read_dir(&state_dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name != "images")
        .collect();
    assert!(left.is_empty(), "left in the state dir: {left:?}");
    backend.remove_cgroup_parents().unwrap();
    std::fs::remove_dir_all(&state_dir).unwrap();
}
