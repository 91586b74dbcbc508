//! The harness of the end-to-end tests: [`traforato_server::testing`]'s broker, worker and
//! stack with constructors that fail the test instead of returning errors, request helpers,
//! and the fixtures several modules share.

mod process;
mod tokens;
mod upstream;

pub use process::*;
pub use tokens::*;
pub use upstream::*;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::net::TcpListener;
use traforato_core::auth::AuthConfig;
use traforato_core::backend::fake::FakeBackend;
use traforato_core::backend::VmBackend;
use traforato_core::broker::BrokerConfig;
use traforato_core::clock::{Clock, SystemClock};
use traforato_core::tuple::SandboxTuple;
use traforato_core::worker::{PrePullTarget, WorkerConfig};
pub use traforato_server::testing::{LocalStack, TestBroker, TestWorker};

/// How long a test waits for something that should happen soon.
pub const WAIT: Duration = Duration::from_secs(20);
/// A well-formed local VM id.
pub const VALID_UUID: &str = "550e8400-e29b-41d4-a716-446655440000";

/// A broker and a worker registered with it over HTTP.
pub type Stack = LocalStack;

/// What the tests add to [`LocalStack`]: fake-backend constructors that fail the test on
/// error, and requests through the broker.
pub trait StackExt: Sized {
    /// A dev stack (no tokens) over the fake backend.
    async fn dev() -> Self {
        Self::dev_with(|_| {}).await
    }

    /// [`StackExt::dev`] with the worker configuration changed by `tweak`.
    async fn dev_with(tweak: impl FnOnce(&mut WorkerConfig)) -> Self;

    /// [`StackExt::dev`] over `fake`. The fake runs nothing: a test that looks at what an exec
    /// or a run-code prints scripts it on a clone it keeps (clones share their scripts), execs
    /// with [`FakeBackend::set_script`] at any time, run-code with [`FakeBackend::script_code`]
    /// before the stack starts.
    async fn dev_on(fake: FakeBackend) -> Self;

    /// A prod stack (secret [`SECRET`]): the worker registers with internal tokens over HTTP.
    async fn prod() -> Self {
        Self::prod_with(|_| {}).await
    }

    /// [`StackExt::prod`] with the worker configuration changed by `tweak`.
    async fn prod_with(tweak: impl FnOnce(&mut WorkerConfig)) -> Self;

    /// [`StackExt::prod`] over `fake` (scripted as for [`StackExt::dev_on`]).
    async fn prod_on(fake: FakeBackend) -> Self;

    /// Creates a sandbox through the broker, following its redirect; returns the 201 body.
    async fn create(&self, body: Value) -> Value;

    /// Creates a fake sandbox through the broker; returns its id.
    async fn create_id(&self) -> String;

    /// Creates a sandbox as `client_id` through the broker, a fresh token on each hop (the
    /// way the client's token provider does it); returns its id.
    async fn create_as(&self, client_id: &str) -> String;

    /// A sandbox URL at the broker (requests to it are redirected to the worker).
    fn sandbox(&self, id: &str, rest: &str) -> String;
}

impl StackExt for LocalStack {
    async fn dev_with(tweak: impl FnOnce(&mut WorkerConfig)) -> Self {
        LocalStack::start_with(broker_config(), &AuthConfig::default(), fake(), tweak)
            .await
            .expect("a dev stack")
    }

    async fn dev_on(fake: FakeBackend) -> Self {
        LocalStack::start_with(
            broker_config(),
            &AuthConfig::default(),
            vec![Arc::new(fake)],
            |_| {},
        )
        .await
        .expect("a dev stack")
    }

    async fn prod_with(tweak: impl FnOnce(&mut WorkerConfig)) -> Self {
        LocalStack::start_with(broker_config(), &prod_auth(), fake(), tweak)
            .await
            .expect("a prod stack")
    }

    async fn prod_on(fake: FakeBackend) -> Self {
        LocalStack::start_with(broker_config(), &prod_auth(), vec![Arc::new(fake)], |_| {})
            .await
            .expect("a prod stack")
    }

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

    fn sandbox(&self, id: &str, rest: &str) -> String {
        self.broker.at(&format!("/sandboxes/{id}{rest}"))
    }
}

/// What the tests add to [`TestBroker`]: constructors that fail the test on error, and
/// requests.
pub trait BrokerExt: Sized {
    /// A dev broker of `config`.
    async fn dev(config: BrokerConfig) -> Self {
        Self::dev_with_clock(config, Arc::new(SystemClock)).await
    }

    /// A dev broker of `config` reading time from `clock`.
    async fn dev_with_clock(config: BrokerConfig, clock: Arc<dyn Clock>) -> Self;

    /// A prod broker (secret [`SECRET`], default issuer and audience).
    async fn prod() -> Self;

    /// A dev broker on `addr` (a restart), retrying while the port is still held.
    async fn restart_on(addr: SocketAddr, config: BrokerConfig) -> Self;

    /// The availability text, over HTTP.
    async fn availability(&self) -> String;

    /// Registers a worker that does not exist (placement tests look only at redirects). The
    /// call carries an internal token for [`SECRET`] (a dev broker ignores it).
    async fn register_remote(&self, worker_id: &str, base_url: &str, sku: &str) -> Value;
}

impl BrokerExt for TestBroker {
    async fn dev_with_clock(config: BrokerConfig, clock: Arc<dyn Clock>) -> Self {
        TestBroker::start(config, clock, &AuthConfig::default())
            .await
            .expect("a dev broker")
    }

    async fn prod() -> Self {
        let config = BrokerConfig {
            prod_mode: true,
            ..broker_config()
        };
        TestBroker::start(config, Arc::new(SystemClock), &prod_auth())
            .await
            .expect("a prod broker")
    }

    async fn restart_on(addr: SocketAddr, config: BrokerConfig) -> Self {
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
        TestBroker::serve(
            listener.unwrap(),
            config,
            Arc::new(SystemClock),
            &AuthConfig::default(),
        )
        .expect("a restarted broker")
    }

    async fn availability(&self) -> String {
        metrics_text(self.at("/metrics/sandboxes")).await
    }

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

/// A dev worker over `backends`, registering with `broker_url` when given, its configuration
/// changed by `tweak`; fails the test on error.
pub async fn dev_worker(
    broker_url: Option<&str>,
    backends: Vec<Arc<dyn VmBackend>>,
    tweak: impl FnOnce(&mut WorkerConfig),
) -> TestWorker {
    TestWorker::start(broker_url, &AuthConfig::default(), backends, tweak)
        .await
        .expect("a dev worker")
}

/// Polls `check` until it is true, failing the test after [`WAIT`].
pub async fn wait_until<F, Fut>(what: &str, mut check: F)
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

/// A client that follows redirects, as `curl -L` does.
pub fn follow() -> reqwest::Client {
    reqwest::Client::new()
}

/// The text of a `/metrics` page (`url` is the page itself).
pub async fn metrics_text(url: impl reqwest::IntoUrl) -> String {
    follow()
        .get(url)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// A client that shows redirects instead of following them.
pub fn no_follow() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// The body as JSON, failing the test with the text when it is not.
pub async fn body_json(resp: reqwest::Response) -> Value {
    let text = resp.text().await.unwrap();
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not json ({e}): {text:?}"))
}

/// Asserts an error answer: `status` and the JSON body `{"error": message}`.
pub async fn expect_error(resp: reqwest::Response, status: u16, message: &str) {
    assert_eq!(resp.status().as_u16(), status, "status for {message:?}");
    assert_eq!(
        resp.headers()["content-type"],
        "application/json",
        "content type for {message:?}"
    );
    assert_eq!(body_json(resp).await, json!({ "error": message }));
}

/// What the tests do with a request: send it and check the answer in one step.
pub trait RequestExt {
    /// Sends the request and asserts its status; the response, for more checks.
    async fn expect_status(self, status: u16) -> reqwest::Response;
    /// Sends the request and asserts an error answer (see [`expect_error`]).
    async fn expect_error(self, status: u16, message: &str);
}

impl RequestExt for reqwest::RequestBuilder {
    async fn expect_status(self, status: u16) -> reqwest::Response {
        let resp = self.send().await.unwrap();
        assert_eq!(resp.status(), status);
        resp
    }

    async fn expect_error(self, status: u16, message: &str) {
        expect_error(self.send().await.unwrap(), status, message).await;
    }
}

/// The broker configuration of these tests: defaults, `fake` virtualization.
pub fn broker_config() -> BrokerConfig {
    BrokerConfig {
        default_virtualization: "fake".to_string(),
        ..BrokerConfig::default()
    }
}

/// The backends of most tests: one fake, unscripted (every exec and run-code exits 0 with no
/// output), for tests that do not look at what runs print.
pub fn fake() -> Vec<Arc<dyn VmBackend>> {
    vec![Arc::new(FakeBackend::new())]
}

/// A well-formed id of a sandbox on `worker` of `broker_local`.
pub fn sandbox_id_on(worker: &str) -> String {
    format!("sbx-broker_local-{worker}-{VALID_UUID}")
}

/// A create body for a fake sandbox.
pub fn sandbox_body() -> Value {
    json!({"virtualization": "fake", "image": "ubuntu:24.04", "cpu": 1})
}

/// A `ready` VM event of a `vetu/ubuntu:24.04/2` VM.
pub fn ready_event(local_vm_id: &str) -> Value {
    json!({
        "event": "ready",
        "local_vm_id": local_vm_id,
        "virtualization": "vetu",
        "image": "ubuntu:24.04",
        "cpu": 2,
    })
}

/// A pre-pull floor of one `fake/warm-img/1` sandbox.
pub fn warm_target() -> PrePullTarget {
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

/// The availability row of one ready [`warm_target`] sandbox.
pub const WARM_ROW: &str = "\nfake\twarm-img\t1\t1\n";
