//! The compose stack of `deploy/compose.yaml` (a broker and two workers in containers, prod
//! mode), driven from the host through `traforato-client` as a user would: a sandbox on each
//! worker (exec, Python and Node, files, the proxy), one worker drained then stopped (creates
//! go on, on the other), the broker restarted (live sandboxes answer through it again),
//! deletes.
//!
//! `deploy/test` builds the images, starts the stack, runs this test against it and checks
//! that `down` leaves nothing behind. Run alone, without the stack, it says so and skips:
//! `TRAFORATO_DEPLOY_BROKER_URL` (the broker's published URL), `TRAFORATO_DEPLOY_SECRET_FILE`
//! (the stack's JWT secret), `TRAFORATO_DEPLOY_PROJECT` and `TRAFORATO_DEPLOY_COMPOSE_FILE`
//! (for `docker-compose -p … -f …`) describe the stack.

use std::collections::btree_map::Entry;
use std::collections::BTreeMap;
use std::future::Future;
use std::time::{Duration, Instant};

use futures::TryStreamExt;
use traforato_client::{
    BoxError, Client, ClientError, CreateSandbox, ProxyRequest, Runtime, Sandbox,
};
use traforato_core::auth::mint_client_token;
use traforato_core::clock::{Clock, SystemClock};

/// The stack under test, from the environment `deploy/test` sets.
struct Stack {
    broker_url: String,
    secret: String,
    project: String,
    compose_file: String,
}

impl Stack {
    fn from_env() -> Option<Self> {
        let var = |name| std::env::var(name).ok().filter(|v: &String| !v.is_empty());
        let secret_file = var("TRAFORATO_DEPLOY_SECRET_FILE")?;
        let secret = std::fs::read_to_string(&secret_file)
            .unwrap_or_else(|e| panic!("read {secret_file}: {e}"))
            .trim()
            .to_string();
        Some(Self {
            broker_url: var("TRAFORATO_DEPLOY_BROKER_URL")?,
            secret,
            project: var("TRAFORATO_DEPLOY_PROJECT")?,
            compose_file: var("TRAFORATO_DEPLOY_COMPOSE_FILE")?,
        })
    }

    /// A client of `client_id` that mints a fresh token for every request and hop.
    fn client(&self, client_id: &'static str) -> Client {
        let secret = self.secret.clone();
        Client::builder(&self.broker_url)
            .timeout(Duration::from_secs(30))
            .token_provider(move || -> Result<String, BoxError> {
                Ok(mint_client_token(
                    &secret,
                    client_id,
                    "traforato",
                    "traforato-api",
                    Duration::from_secs(60),
                    SystemClock.now(),
                ))
            })
            .build()
            .expect("client")
    }

    /// `docker-compose -p <project> -f <file> ARGS`, which must succeed.
    fn compose(&self, args: &[&str]) {
        let status = std::process::Command::new("docker-compose")
            .args(["-p", &self.project, "-f", &self.compose_file])
            .args(args)
            .status()
            .expect("run docker-compose");
        assert!(status.success(), "docker-compose {args:?}: {status}");
    }
}

/// The worker id inside a sandbox id (`sbx-<broker>-<worker>-<uuid>`).
fn worker_of(sandbox: &Sandbox) -> String {
    traforato_core::id::SandboxId::parse(sandbox.id())
        .expect("a sandbox id")
        .worker_id()
        .to_string()
}

/// Retries `attempt` every 500 ms until it succeeds or `within` passes; the last error panics.
async fn eventually<T, F, Fut>(what: &str, within: Duration, mut attempt: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + within;
    loop {
        match attempt().await {
            Ok(value) => return value,
            Err(error) if Instant::now() >= deadline => {
                panic!("{what}: not within {within:?}: {error}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

/// Everything a user does with a sandbox, on the worker that holds it.
async fn use_sandbox(sandbox: &Sandbox) {
    let worker = worker_of(sandbox);
    let exec = sandbox
        .exec("echo hello from $(hostname); id -u")
        .await
        .expect("exec");
    assert!(exec.success(), "{worker}: {exec:?}");
    assert!(exec.stdout.starts_with("hello from "), "{exec:?}");

    let python = sandbox
        .run_code(
            Runtime::Python,
            "import sys; print(6 * 7, sys.version_info[0])",
        )
        .await
        .expect("python");
    assert_eq!(python.stdout, "42 3\n", "{worker}: {python:?}");
    let node = sandbox
        .run_code(
            Runtime::Node,
            "console.log([1, 2, 3].map(x => x * 2).join(','))",
        )
        .await
        .expect("node");
    assert_eq!(node.stdout, "2,4,6\n", "{worker}: {node:?}");

    let files = sandbox.files();
    files.mkdir_all("/workspace/www").await.expect("mkdir");
    files
        .write_text(
            "/workspace/www/index.html",
            &format!("served by {worker}\n"),
        )
        .await
        .expect("write");
    assert_eq!(
        files
            .read_text("/workspace/www/index.html")
            .await
            .expect("read"),
        format!("served by {worker}\n")
    );
    let listed: Vec<_> = files
        .list("/workspace/www")
        .try_collect()
        .await
        .expect("list");
    assert_eq!(listed.len(), 1, "{listed:?}");

    // A server in the sandbox, reached through the broker, the worker's proxy and the
    // sandbox's network namespace.
    let started = sandbox
        .exec("cd /workspace/www && (python3 -m http.server 8000 >/dev/null 2>&1 &)")
        .await
        .expect("start a server");
    assert!(started.success(), "{started:?}");
    let page = eventually(
        "the sandbox's server answers",
        Duration::from_secs(20),
        || async {
            let response = sandbox
                .proxy_request(ProxyRequest::get(8000, "/index.html"))
                .await
                .map_err(|e| e.to_string())?;
            if response.status.is_success() {
                Ok(response.text())
            } else {
                Err(format!("{}: {}", response.status, response.text()))
            }
        },
    )
    .await;
    assert_eq!(page, format!("served by {worker}\n"));
}

#[tokio::test]
async fn the_compose_stack_serves_survives_a_worker_and_a_broker_restart() {
    let Some(stack) = Stack::from_env() else {
        eprintln!(
            "skipping: needs the compose stack that deploy/test starts (TRAFORATO_DEPLOY_* unset)"
        );
        return;
    };
    let client = stack.client("deploy-test");
    client.health().await.expect("broker health");

    // 1. A sandbox on each worker: the broker spreads creates over the two.
    let mut by_worker: BTreeMap<String, Sandbox> = BTreeMap::new();
    let mut extra = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while by_worker.len() < 2 {
        assert!(
            Instant::now() < deadline,
            "creates landed on {:?} only",
            by_worker.keys().collect::<Vec<_>>()
        );
        let sandbox = client
            .create_sandbox(CreateSandbox::new("host"))
            .await
            .expect("create");
        match by_worker.entry(worker_of(&sandbox)) {
            Entry::Occupied(_) => {
                extra.push(sandbox);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Entry::Vacant(slot) => {
                slot.insert(sandbox);
            }
        }
    }
    assert_eq!(
        by_worker.keys().map(String::as_str).collect::<Vec<_>>(),
        ["worker_a", "worker_b"]
    );
    for sandbox in by_worker.values() {
        use_sandbox(sandbox).await;
    }
    // Another client of the stack does not reach them.
    let other = stack.client("someone-else");
    let refused = other
        .sandbox(by_worker["worker_a"].id())
        .info()
        .await
        .expect_err("another client's sandbox");
    assert!(
        matches!(refused, ClientError::Api { status: 403, .. }),
        "{refused:?}"
    );

    // 2. worker-b is drained (SIGUSR1), as before an upgrade: creates go to worker-a, its
    // live sandbox still answers.
    stack.compose(&["kill", "-s", "SIGUSR1", "worker-b"]);
    eventually(
        "creates avoid the draining worker",
        Duration::from_secs(20),
        || async {
            let sandbox = client
                .create_sandbox(CreateSandbox::new("host"))
                .await
                .map_err(|e| e.to_string())?;
            let worker = worker_of(&sandbox);
            sandbox.delete().await.map_err(|e| e.to_string())?;
            if worker == "worker_a" {
                Ok(())
            } else {
                Err(format!("placed on {worker}"))
            }
        },
    )
    .await;
    let out = by_worker["worker_b"]
        .exec("cat /workspace/www/index.html")
        .await
        .expect("the draining worker's sandbox");
    assert_eq!(out.stdout, "served by worker_b\n");

    // 3. worker-b stops (SIGTERM: it destroys its sandboxes and deregisters): creates go on,
    // on worker-a, and worker-b's sandbox answers with an error at once, not a hang.
    stack.compose(&["stop", "worker-b"]);
    for _ in 0..3 {
        let sandbox = client
            .create_sandbox(CreateSandbox::new("host"))
            .await
            .expect("create with one worker stopped");
        assert_eq!(worker_of(&sandbox), "worker_a");
        let out = sandbox.exec("echo ok").await.expect("exec");
        assert_eq!(out.stdout, "ok\n");
        sandbox.delete().await.expect("delete");
    }
    let started = Instant::now();
    let gone = by_worker["worker_b"]
        .exec("echo still here")
        .await
        .expect_err("the stopped worker's sandbox");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "took {:?}: {gone:?}",
        started.elapsed()
    );

    // 4. The broker restarts: worker-a's live sandbox answers through it again once worker-a
    // has re-registered (its next heartbeat), and creates work again.
    stack.compose(&["restart", "broker"]);
    let live = &by_worker["worker_a"];
    let out = eventually(
        "worker-a's sandbox through the restarted broker",
        Duration::from_secs(60),
        || async {
            live.exec("cat /workspace/www/index.html")
                .await
                .map_err(|e| e.to_string())
        },
    )
    .await;
    assert_eq!(out.stdout, "served by worker_a\n");
    let after = client
        .create_sandbox(CreateSandbox::new("host"))
        .await
        .expect("create after the broker restart");
    after.delete().await.expect("delete");

    // 5. Deletes: the sandbox is gone for good.
    let id = live.id().to_string();
    live.delete().await.expect("delete");
    for sandbox in extra {
        if worker_of(&sandbox) == "worker_a" {
            sandbox.delete().await.expect("delete");
        }
    }
    let missing = client.sandbox(id).info().await.expect_err("deleted");
    assert!(
        matches!(missing, ClientError::Api { status: 404, .. }),
        "{missing:?}"
    );
}
