//! End-to-end: a real broker and worker (traforato-server shells, fake backend) on
//! `127.0.0.1:0`, driven only through `traforato-client`: every client method, redirects and
//! placement retries, streaming frames, and errors.
//!
//! The fake backend runs nothing: a test that looks at what an exec or run-code printed
//! scripts that answer on the `FakeBackend` it starts its stack with (see
//! [`Stack::scripted`]); unscripted commands and code exit 0 with no output.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use traforato_client::{
    BoxError, Client, ClientError, Command, CreateSandbox, FrameKind, ListOptions, Protocol,
    ProxyRequest, RemoveOptions, RunCode, Runtime,
};
use traforato_core::auth::{mint_client_token, AuthConfig};
use traforato_core::backend::fake::{FakeBackend, FakeCode, FakeExec};
use traforato_core::broker::Broker;
use traforato_core::clock::{Clock, SystemClock};
use traforato_core::id::LocalVmId;
use traforato_server::testing::LocalStack;

/// A broker and a worker (fake backend) registered with it over HTTP.
struct Stack {
    broker_url: String,
    broker: Arc<Broker>,
    inner: LocalStack,
}

impl Stack {
    /// A development-mode stack (no tokens) over a fake backend with no scripts.
    async fn start() -> Self {
        Self::scripted(FakeBackend::new()).await
    }

    /// A development-mode stack over `fake`, with the scripts the test gave it.
    async fn scripted(fake: FakeBackend) -> Self {
        Self::start_with(&AuthConfig::default(), fake).await
    }

    /// A prod stack with secret [`SECRET`] over `fake`: client tokens, ownership, internal
    /// tokens.
    async fn start_prod(fake: FakeBackend) -> Self {
        Self::start_with(&AuthConfig::with_secret(SECRET), fake).await
    }

    async fn start_with(auth: &AuthConfig, fake: FakeBackend) -> Self {
        let inner = LocalStack::start(auth, "fake", vec![Arc::new(fake)])
            .await
            .unwrap();
        Stack {
            broker_url: inner.broker.url.clone(),
            broker: inner.broker.broker.clone(),
            inner,
        }
    }

    fn client(&self) -> Client {
        Client::new(&self.broker_url).unwrap()
    }

    async fn stop(self) {
        self.inner.stop().await.unwrap();
    }
}

fn fake_sandbox() -> CreateSandbox {
    CreateSandbox {
        virtualization: "fake".into(),
        cpu: 1,
        ..CreateSandbox::new("ubuntu:24.04")
    }
}

fn api_error(err: &ClientError) -> (u16, &str) {
    match err {
        ClientError::Api {
            status, message, ..
        } => (*status, message.as_str()),
        other => panic!("not an api error: {other:?}"),
    }
}

#[tokio::test]
async fn sandbox_lifecycle() {
    let stack = Stack::start().await;
    let client = stack.client();
    client.health().await.unwrap();

    let sandbox = client
        .create_sandbox(CreateSandbox {
            ttl: Some(Duration::from_secs(600)),
            ..fake_sandbox()
        })
        .await
        .unwrap();
    assert!(
        sandbox.id().starts_with("sbx-broker_local-worker_local-"),
        "{}",
        sandbox.id()
    );
    let created = sandbox.created_info().unwrap();
    assert_eq!(created.cpu, 1);
    assert_eq!(created.virtualization, "fake");

    let info = sandbox.info().await.unwrap();
    assert_eq!(info.sandbox_id, sandbox.id());
    assert_eq!(info.image, "ubuntu:24.04");
    assert_eq!(info.expires_at, created.expires_at);

    let lease = sandbox.set_lease(Duration::from_secs(3600)).await.unwrap();
    assert!(lease.expires_at > created.expires_at);

    // A handle from the id alone reaches the same sandbox.
    let again = client.sandbox(sandbox.id());
    assert_eq!(again.info().await.unwrap().expires_at, lease.expires_at);

    sandbox.delete().await.unwrap();
    let err = again.info().await.unwrap_err();
    assert_eq!(api_error(&err), (404, "sandbox not found"));
    assert!(err.is_not_found());
    stack.stop().await;
}

#[tokio::test]
async fn exec_waits_streams_and_reports_exit_codes() {
    let fake = FakeBackend::new()
        .with_shell_stand_ins()
        .script(
            "echo hello; exit 3",
            FakeExec::new().stdout("hello\n").exit_code(3),
        )
        .script(
            "no-such-command",
            FakeExec::new()
                .stderr("sh: 1: no-such-command: not found\n")
                .exit_code(127),
        )
        .script(
            "echo one; sleep 0.3; echo two; sleep 0.2; echo three",
            FakeExec::new()
                .stdout("one\n")
                .sleep(Duration::from_millis(300))
                .stdout("two\n")
                .sleep(Duration::from_millis(200))
                .stdout("three\n"),
        )
        .script("sleep 30", FakeExec::new().sleep(Duration::from_secs(30)));
    let stack = Stack::scripted(fake).await;
    let sandbox = stack.client().create_sandbox(fake_sandbox()).await.unwrap();

    let out = sandbox.exec("echo hello; exit 3").await.unwrap();
    assert_eq!(out.stdout, "hello\n");
    assert_eq!(out.exit_code, 3);
    assert!(!out.success());

    let out = sandbox
        .exec(Command::new("echo").arg("a  b").arg("c"))
        .await
        .unwrap();
    assert_eq!(out.stdout, "a  b c\n");
    assert!(out.success());

    let out = sandbox
        .exec(
            Command::shell("pwd; printenv GREETING")
                .cwd("/workspace")
                .env("GREETING", "hi"),
        )
        .await
        .unwrap();
    assert_eq!(out.stdout, "/workspace\nhi\n");

    let out = sandbox.exec("no-such-command").await.unwrap();
    assert_eq!(out.exit_code, 127);
    assert!(out.stderr.contains("no-such-command"), "{}", out.stderr);

    // Frames arrive in order, across long-polls, ending with exactly one exit frame.
    let exec = sandbox
        .exec_stream("echo one; sleep 0.3; echo two; sleep 0.2; echo three")
        .await
        .unwrap();
    let frames: Vec<_> = exec.frames().try_collect().await.unwrap();
    let last = frames.last().unwrap();
    assert_eq!(last.kind, FrameKind::Exit);
    assert_eq!(traforato_client::frame_exit_code(last), Some(0));
    assert_eq!(
        frames.iter().filter(|f| f.kind == FrameKind::Exit).count(),
        1
    );
    let stdout: String = frames
        .iter()
        .filter(|f| f.kind == FrameKind::Stdout)
        .map(|f| f.data.as_str())
        .collect();
    assert_eq!(stdout, "one\ntwo\nthree\n");
    assert!(frames.windows(2).all(|w| w[0].ts <= w[1].ts));
    // frames() restarts from the beginning; wait() sees the same result.
    let out = exec.wait().await.unwrap();
    assert_eq!(out.stdout, "one\ntwo\nthree\n");
    let record = exec.record().await.unwrap();
    assert_eq!(record.status, "exited");
    assert_eq!(record.exit_code, Some(0));

    // A command's timeout kills it with 124.
    let out = sandbox
        .exec(Command::shell("sleep 30").timeout(Duration::from_millis(200)))
        .await
        .unwrap();
    assert_eq!(out.exit_code, 124);
    stack.stop().await;
}

#[tokio::test]
async fn run_code_waiting_and_in_the_background() {
    let prints = |stdout: &str| FakeCode::Runs(FakeExec::new().stdout(stdout.to_string()));
    let fake = FakeBackend::new()
        .script_code("print('hello-python')", prints("hello-python\n"))
        .script_code("console.log('hello-node')", prints("hello-node\n"))
        .script_code(
            "throw new Error('boom')",
            FakeCode::Runs(
                FakeExec::new()
                    .stderr("Uncaught Error: boom\n")
                    .exit_code(1),
            ),
        )
        .script_code(
            "print('oops'",
            FakeCode::SyntaxError("SyntaxError: '(' was never closed".into()),
        )
        .script_code("print(1)", prints("1\n"))
        .script_code(
            "print('a')\nimport time\ntime.sleep(0.2)\nprint('b')",
            FakeCode::Runs(
                FakeExec::new()
                    .stdout("a\n")
                    .sleep(Duration::from_millis(200))
                    .stdout("b\n"),
            ),
        );
    let stack = Stack::scripted(fake).await;
    let sandbox = stack.client().create_sandbox(fake_sandbox()).await.unwrap();

    let out = sandbox
        .run_code(Runtime::Python, "print('hello-python')")
        .await
        .unwrap();
    assert!(out.success(), "{out:?}");
    assert_eq!(out.stdout, "hello-python\n");
    assert_eq!(out.runtime, "python");

    let out = sandbox
        .run_code(Runtime::Node, "console.log('hello-node')")
        .await
        .unwrap();
    assert_eq!(out.stdout, "hello-node\n");

    let out = sandbox
        .run_code(Runtime::Node, "throw new Error('boom')")
        .await
        .unwrap();
    assert_ne!(out.exit_code, 0);
    assert!(!out.syntax_error);

    let out = sandbox
        .run_code(Runtime::Python, "print('oops'")
        .await
        .unwrap();
    assert!(out.syntax_error, "{out:?}");
    assert_ne!(out.exit_code, 0);
    assert!(!out.success());

    let out = sandbox
        .run_code_with(RunCode::new(Runtime::Python, "print(1)").timeout(Duration::from_secs(5)))
        .await
        .unwrap();
    assert_eq!(out.stdout, "1\n");

    let exec = sandbox
        .run_code_background(RunCode::new(
            Runtime::Python,
            "print('a')\nimport time\ntime.sleep(0.2)\nprint('b')",
        ))
        .await
        .unwrap();
    let out = exec.wait().await.unwrap();
    assert_eq!(out.stdout, "a\nb\n");
    assert_eq!(out.exit_code, 0);
    stack.stop().await;
}

#[tokio::test]
async fn files_round_trip() {
    let stack = Stack::start().await;
    let sandbox = stack.client().create_sandbox(fake_sandbox()).await.unwrap();
    let files = sandbox.files();

    let w = files.write_text("/workspace/a.txt", "Hello").await.unwrap();
    assert_eq!(w.bytes_written, 5);
    assert_eq!(w.path, "/workspace/a.txt");
    files.append("/workspace/a.txt", b"!").await.unwrap();
    assert_eq!(files.read_text("/workspace/a.txt").await.unwrap(), "Hello!");

    let binary: Vec<u8> = (0..=255u8).collect();
    files
        .write("/workspace/bin/data", binary.clone())
        .await
        .unwrap();
    assert_eq!(files.read("/workspace/bin/data").await.unwrap(), binary);
    let downloaded: Vec<bytes::Bytes> = files
        .download("/workspace/bin/data")
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(downloaded.concat(), binary);

    let stat = files.stat("/workspace/a.txt").await.unwrap();
    assert!(stat.exists);
    assert_eq!(stat.kind.as_deref(), Some("file"));
    assert_eq!(stat.size, Some(6));
    assert!(!files.exists("/workspace/missing").await.unwrap());

    assert!(files.mkdir("/workspace/src").await.unwrap());
    assert!(!files.mkdir("/workspace/src").await.unwrap());
    let err = files.mkdir("/workspace/x/y").await.unwrap_err();
    assert_eq!(api_error(&err).0, 404);
    assert!(files.mkdir_all("/workspace/x/y").await.unwrap());
    for i in 0..5 {
        files
            .write_text(&format!("/workspace/src/f{i}.txt"), "x")
            .await
            .unwrap();
    }

    let top: Vec<_> = files.list("/workspace").try_collect().await.unwrap();
    let paths: Vec<&str> = top.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "/workspace/a.txt",
            "/workspace/bin",
            "/workspace/src",
            "/workspace/x"
        ]
    );
    assert_eq!(top[0].kind, "file");
    assert_eq!(top[1].kind, "directory");

    // Paging: one entry per request, all of them in order.
    let paged: Vec<_> = files
        .list_with(
            "/workspace",
            ListOptions {
                recursive: true,
                page_size: Some(1),
            },
        )
        .try_collect()
        .await
        .unwrap();
    assert_eq!(paged.len(), 4 + 1 + 5 + 1);
    assert!(paged.windows(2).all(|w| w[0].path < w[1].path));
    // A stream can stop early without fetching the rest.
    let first_two: Vec<_> = files
        .list_with(
            "/workspace",
            ListOptions {
                recursive: true,
                page_size: Some(1),
            },
        )
        .take(2)
        .collect()
        .await;
    assert_eq!(first_two.len(), 2);

    let err = files.remove("/workspace/src").await.unwrap_err();
    assert_eq!(api_error(&err), (409, "directory is not empty"));
    files
        .remove_with(
            "/workspace/src",
            RemoveOptions {
                recursive: true,
                force: false,
            },
        )
        .await
        .unwrap();
    assert!(!files.exists("/workspace/src/f0.txt").await.unwrap());
    files.remove("/workspace/a.txt").await.unwrap();
    let err = files.remove("/workspace/a.txt").await.unwrap_err();
    assert_eq!(api_error(&err), (404, "path not found"));
    files.remove_all("/workspace/a.txt").await.unwrap();

    let err = files.read_text("/workspace/nope").await.unwrap_err();
    assert_eq!(api_error(&err), (404, "file not found"));
    let err = files.read_text("relative").await.unwrap_err();
    assert_eq!(api_error(&err), (400, "path must be an absolute path"));
    stack.stop().await;
}

/// A one-request-per-connection HTTP upstream standing in for a server inside the sandbox:
/// answers 201 with `<method> <target> <body>`, and `X-Seen-Auth` telling whether an
/// Authorization header reached it.
async fn start_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let head_end = loop {
                    if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        break i;
                    }
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                };
                let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
                let len: usize = head
                    .lines()
                    .filter_map(|l| l.split_once(':'))
                    .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
                    .and_then(|(_, v)| v.trim().parse().ok())
                    .unwrap_or(0);
                let mut body = buf[head_end + 4..].to_vec();
                while body.len() < len {
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => body.extend_from_slice(&chunk[..n]),
                    }
                }
                let seen_auth = head
                    .lines()
                    .any(|l| l.to_ascii_lowercase().starts_with("authorization:"));
                let mut parts = head.lines().next().unwrap_or("").split(' ');
                let reply = format!(
                    "{} {} {}",
                    parts.next().unwrap_or(""),
                    parts.next().unwrap_or(""),
                    String::from_utf8_lossy(&body)
                );
                let out = format!(
                    "HTTP/1.1 201 Created\r\nContent-Length: {}\r\nX-Seen-Auth: {seen_auth}\r\nConnection: close\r\n\r\n{reply}",
                    reply.len()
                );
                let _ = stream.write_all(out.as_bytes()).await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn ports_and_proxied_requests() {
    let stack = Stack::start().await;
    let client = Client::builder(&stack.broker_url)
        .token("client-token")
        .build()
        .unwrap();
    let sandbox = client.create_sandbox(fake_sandbox()).await.unwrap();

    let url = sandbox.port_url(8000, Protocol::Http).await.unwrap();
    assert_eq!(url.port, 8000);
    assert_eq!(url.protocol, "http");
    assert!(url.url.starts_with("http://"), "{}", url.url);
    assert!(
        url.url
            .ends_with(&format!("/sandboxes/{}/proxy/8000", sandbox.id())),
        "{}",
        url.url
    );
    let err = sandbox.port_url(0, Protocol::Https).await.unwrap_err();
    assert_eq!(api_error(&err), (400, "invalid port"));

    let upstream = start_upstream().await;
    let resp = sandbox
        .proxy_request(
            ProxyRequest::post(upstream.port(), "/hello/world?x=1", "ping")
                .header("Content-Type", "text/plain"),
        )
        .await
        .unwrap();
    assert_eq!(resp.status.as_u16(), 201);
    assert_eq!(resp.text(), "POST /hello/world?x=1 ping");
    // The worker keeps the client's token away from the sandbox.
    assert_eq!(resp.headers.get("x-seen-auth").unwrap(), "false");

    let resp = sandbox
        .proxy_request(ProxyRequest::get(upstream.port(), "/app/"))
        .await
        .unwrap();
    assert_eq!(resp.text(), "GET /app/ ");
    stack.stop().await;
}

#[tokio::test]
async fn redirects_keep_a_fresh_token_per_hop() {
    let stack = Stack::start().await;
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let client = Client::builder(&stack.broker_url)
        .token_provider(move || -> Result<String, BoxError> {
            Ok(format!("token-{}", counter.fetch_add(1, Ordering::SeqCst)))
        })
        .build()
        .unwrap();
    let sandbox = client.create_sandbox(fake_sandbox()).await.unwrap();
    // Broker, then worker: one token each.
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    sandbox.info().await.unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 4);

    // With no hop allowed, the broker's redirect is already one too many.
    let strict = Client::builder(&stack.broker_url)
        .max_redirects(0)
        .build()
        .unwrap();
    let err = strict.create_sandbox(fake_sandbox()).await.unwrap_err();
    assert!(
        matches!(err, ClientError::TooManyRedirects { max: 0 }),
        "{err:?}"
    );
    stack.stop().await;
}

#[tokio::test]
async fn placement_retry_is_followed_back_through_the_broker() {
    let stack = Stack::start().await;
    // Announce a ready VM the worker does not have: the broker hints it, the worker cannot
    // claim it and bounces the create back to the broker, which then places it cold.
    let unknown = LocalVmId::new_random();
    let resp = reqwest::Client::new()
        .post(format!(
            "{}/internal/workers/worker_local/vm-events",
            stack.broker_url
        ))
        .json(&serde_json::json!({
            "event": "ready",
            "local_vm_id": unknown.to_string(),
            "virtualization": "fake",
            "image": "ubuntu:24.04",
            "cpu": 1,
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    let before = stack.broker.metrics().broker.placement_retry.total_count();
    let sandbox = stack.client().create_sandbox(fake_sandbox()).await.unwrap();
    assert!(!sandbox.id().ends_with(&unknown.to_string()));
    sandbox.info().await.unwrap();
    // Two placements for one create: the first, and the retry.
    let after = stack.broker.metrics().broker.placement_retry.total_count();
    assert_eq!(after - before, 2);
    stack.stop().await;
}

#[tokio::test]
async fn errors_are_matchable() {
    let stack = Stack::start().await;
    let client = stack.client();
    let uuid = LocalVmId::new_random();

    let err = client
        .sandbox(format!("sbx-broker_local-worker_local-{uuid}"))
        .info()
        .await
        .unwrap_err();
    assert_eq!(api_error(&err), (404, "sandbox not found"));
    let err = client.sandbox("not-an-id").info().await.unwrap_err();
    assert_eq!(api_error(&err), (400, "malformed sandbox_id"));
    let err = client
        .sandbox(format!("sbx-broker_local-worker_gone-{uuid}"))
        .exec("true")
        .await
        .unwrap_err();
    // A worker this broker does not know, just after its start (it may have restarted and
    // the worker not registered again yet): 503, retry.
    assert_eq!(
        api_error(&err),
        (
            503,
            "worker not registered yet: the broker restarted, retry shortly"
        )
    );
    let err = client
        .create_sandbox(CreateSandbox {
            virtualization: "fake".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(api_error(&err), (400, "image is required"));
    if let ClientError::Api { request_id, .. } = &err {
        assert!(request_id.is_some());
    }

    let sandbox = client.create_sandbox(fake_sandbox()).await.unwrap();
    let err = sandbox.set_lease(Duration::ZERO).await.unwrap_err();
    assert_eq!(api_error(&err), (400, "ttl_seconds must be > 0"));
    let err = sandbox.execution("exec_nope").wait().await.unwrap_err();
    assert_eq!(api_error(&err), (404, "exec not found"));

    // Nothing listening: a connect error, not an API error.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = closed.local_addr().unwrap();
    drop(closed);
    let err = Client::new(&format!("http://{addr}"))
        .unwrap()
        .create_sandbox(fake_sandbox())
        .await
        .unwrap_err();
    assert!(err.is_connect(), "{err:?}");
    stack.stop().await;
}

/// The prod secret of the tests.
const SECRET: &str = "secret";

/// A fresh 5-minute token for `client_id`, as an operator's token service would mint it.
fn mint(client_id: &str) -> String {
    mint_client_token(
        SECRET,
        client_id,
        "traforato",
        "traforato-api",
        Duration::from_secs(300),
        SystemClock.now(),
    )
}

/// A client that mints a fresh token for every request and hop, counting them.
fn minting_client(url: &str, client_id: &'static str, minted: Arc<AtomicUsize>) -> Client {
    Client::builder(url)
        .token_provider(move || -> Result<String, BoxError> {
            minted.fetch_add(1, Ordering::SeqCst);
            Ok(mint(client_id))
        })
        .build()
        .unwrap()
}

#[tokio::test]
async fn prod_mode_with_a_fresh_token_per_request() {
    let fake = FakeBackend::new().script("echo hello", FakeExec::new().stdout("hello\n"));
    let stack = Stack::start_prod(fake).await;
    let minted = Arc::new(AtomicUsize::new(0));
    let alice = minting_client(&stack.broker_url, "alice", minted.clone());

    let sandbox = alice.create_sandbox(fake_sandbox()).await.unwrap();
    // One token for the broker, one for the worker.
    assert_eq!(minted.load(Ordering::SeqCst), 2);
    assert_eq!(sandbox.info().await.unwrap().sandbox_id, sandbox.id());
    let out = sandbox.exec("echo hello").await.unwrap();
    assert_eq!(out.stdout, "hello\n");
    sandbox
        .files()
        .write_text("/workspace/a.txt", "Hello")
        .await
        .unwrap();
    assert_eq!(
        sandbox.files().read_text("/workspace/a.txt").await.unwrap(),
        "Hello"
    );
    let url = sandbox.port_url(8000, Protocol::Http).await.unwrap();
    assert!(url.url.ends_with("/proxy/8000"), "{}", url.url);
    let upstream = start_upstream().await;
    let resp = sandbox
        .proxy_request(ProxyRequest::get(upstream.port(), "/app/"))
        .await
        .unwrap();
    assert_eq!(resp.text(), "GET /app/ ");
    // The sandbox never sees the client's token.
    assert_eq!(resp.headers.get("x-seen-auth").unwrap(), "false");

    // Another client is refused on alice's sandbox; so is a client without tokens.
    let bob = minting_client(&stack.broker_url, "bob", Arc::default());
    let theirs = bob.sandbox(sandbox.id());
    let err = theirs.info().await.unwrap_err();
    assert_eq!(api_error(&err), (403, "sandbox ownership mismatch"));
    let err = theirs.exec("true").await.unwrap_err();
    assert_eq!(api_error(&err), (403, "sandbox ownership mismatch"));
    let err = theirs.files().stat("/workspace").await.unwrap_err();
    assert_eq!(api_error(&err), (403, "sandbox ownership mismatch"));
    let err = theirs.delete().await.unwrap_err();
    assert_eq!(api_error(&err), (403, "sandbox ownership mismatch"));
    let anonymous = stack.client();
    let err = anonymous.create_sandbox(fake_sandbox()).await.unwrap_err();
    assert_eq!(api_error(&err), (401, "unauthorized: missing bearer token"));
    let err = anonymous.sandbox(sandbox.id()).info().await.unwrap_err();
    assert_eq!(api_error(&err), (401, "unauthorized: missing bearer token"));

    // A static token is good for one request per service: a create (broker, then worker)
    // succeeds, and the next request replays it at the worker.
    let once = Client::builder(&stack.broker_url)
        .token(mint("carol"))
        .build()
        .unwrap();
    let carols = once.create_sandbox(fake_sandbox()).await.unwrap();
    let err = carols.info().await.unwrap_err();
    let (status, message) = api_error(&err);
    assert_eq!(status, 401);
    assert!(message.starts_with("jwt replay detected: "), "{message}");

    sandbox.delete().await.unwrap();
    let err = sandbox.info().await.unwrap_err();
    assert_eq!(api_error(&err), (404, "sandbox not found"));
    stack.stop().await;
}
