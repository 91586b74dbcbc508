//! End-to-end tests of the `traforato-cli` binary against a real broker and worker
//! (traforato-server shells, fake backend) on `127.0.0.1:0`: every command, exit codes, and
//! `--json` output parsed back.
//!
//! The fake backend runs nothing: a test that looks at what an exec or run-code printed
//! scripts that answer on the `FakeBackend` it starts its stack with (see
//! [`Stack::scripted`]); unscripted commands and code exit 0 with no output.

use std::process::{Output, Stdio};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::io::AsyncWriteExt;
use traforato_core::auth::{AuthConfig, ClientAuthenticator};
use traforato_core::backend::fake::{FakeBackend, FakeCode, FakeExec};
use traforato_core::clock::SystemClock;
use traforato_server::testing::{LocalStack, TestWorker};

/// A broker and a worker (fake backend) registered with it over HTTP.
struct Stack {
    url: String,
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

    /// A prod stack with secret [`SECRET`] over `fake`.
    async fn start_prod(fake: FakeBackend) -> Self {
        Self::start_with(&AuthConfig::with_secret(SECRET), fake).await
    }

    async fn start_with(auth: &AuthConfig, fake: FakeBackend) -> Self {
        let inner = LocalStack::start(auth, "fake", vec![Arc::new(fake)])
            .await
            .unwrap();
        Stack {
            url: inner.broker.url.clone(),
            inner,
        }
    }

    async fn stop(self) {
        self.inner.stop().await.unwrap();
    }

    /// Runs the CLI with `--url` pointing at this stack.
    async fn cli(&self, args: &[&str]) -> Run {
        let mut full = vec!["--url", self.url.as_str()];
        full.extend_from_slice(args);
        cli(&full, None, &[]).await
    }

    /// Runs the CLI with standard input.
    async fn cli_stdin(&self, args: &[&str], stdin: &[u8]) -> Run {
        let mut full = vec!["--url", self.url.as_str()];
        full.extend_from_slice(args);
        cli(&full, Some(stdin), &[]).await
    }

    /// Creates a fake sandbox with the CLI and returns its id.
    async fn create(&self) -> String {
        let run = self
            .cli(&[
                "sandbox",
                "create",
                "--image",
                "ubuntu:24.04",
                "--virtualization",
                "fake",
            ])
            .await;
        run.success();
        run.stdout.trim().to_string()
    }
}

/// One finished CLI run.
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn success(&self) -> &Self {
        assert_eq!(
            self.code, 0,
            "stdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        self
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not json ({e}): {:?}", self.stdout))
    }

    fn stderr_json(&self) -> Value {
        serde_json::from_str(self.stderr.trim())
            .unwrap_or_else(|e| panic!("stderr is not json ({e}): {:?}", self.stderr))
    }
}

async fn cli(args: &[&str], stdin: Option<&[u8]>, env: &[(&str, &str)]) -> Run {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_traforato-cli"));
    cmd.args(args)
        .env_remove("TRAFORATO_URL")
        .env_remove("TRAFORATO_TOKEN")
        .env_remove("TRAFORATO_CLIENT_ID")
        .env_remove("TRAFORATO_JWT_SECRET")
        .env_remove("TRAFORATO_JWT_ISSUER")
        .env_remove("TRAFORATO_JWT_AUDIENCE")
        .envs(env.iter().copied())
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().unwrap();
        pipe.write_all(input).await.unwrap();
        drop(pipe);
    }
    let Output {
        status,
        stdout,
        stderr,
    } = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("the cli did not finish")
        .unwrap();
    Run {
        code: status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sandbox_commands() {
    let stack = Stack::start().await;

    let id = stack.create().await;
    assert!(id.starts_with("sbx-broker_local-worker_local-"), "{id}");

    // TRAFORATO_URL works like --url.
    let run = cli(
        &[
            "--json",
            "sandbox",
            "create",
            "--image",
            "ubuntu:24.04",
            "--virtualization",
            "fake",
            "--cpu",
            "2",
            "--ttl",
            "600",
        ],
        None,
        &[("TRAFORATO_URL", stack.url.as_str())],
    )
    .await;
    run.success();
    let created = run.json();
    assert_eq!(created["cpu"], 2);
    assert_eq!(created["virtualization"], "fake");
    assert!(created["expires_at"].is_string());
    let json_id = created["sandbox_id"].as_str().unwrap().to_string();

    let run = stack.cli(&["sandbox", "get", &json_id, "--json"]).await;
    run.success();
    let info = run.json();
    assert_eq!(info["sandbox_id"], json_id.as_str());
    assert_eq!(info["image"], "ubuntu:24.04");
    assert_eq!(info["cpu"], 2);

    let run = stack.cli(&["sandbox", "get", &id]).await;
    run.success();
    assert!(
        run.stdout.contains("image           ubuntu:24.04"),
        "{}",
        run.stdout
    );

    let run = stack
        .cli(&["--json", "sandbox", "lease", &id, "--ttl", "3600"])
        .await;
    run.success();
    assert_eq!(run.json()["sandbox_id"], id.as_str());
    let run = stack.cli(&["sandbox", "lease", &id, "--ttl", "60"]).await;
    run.success();
    assert!(run.stdout.contains(" expires at "), "{}", run.stdout);
    let run = stack.cli(&["sandbox", "lease", &id, "--ttl", "0"]).await;
    assert_eq!(run.code, 2, "clap refuses a zero ttl");

    let run = stack.cli(&["--json", "sandbox", "delete", &json_id]).await;
    run.success();
    assert_eq!(run.json()["deleted"], true);
    let run = stack.cli(&["sandbox", "delete", &id]).await;
    run.success();
    assert!(run.stdout.is_empty());

    let run = stack.cli(&["sandbox", "get", &id]).await;
    assert_eq!(run.code, 1);
    assert_eq!(run.stderr.trim(), "error: sandbox not found (http 404)");
    let run = stack.cli(&["--json", "sandbox", "get", &id]).await;
    assert_eq!(run.code, 1);
    let err = run.stderr_json();
    assert_eq!(err["error"], "sandbox not found");
    assert_eq!(err["status"], 404);
    assert_eq!(err["kind"], "api");

    let run = stack
        .cli(&["sandbox", "create", "--virtualization", "fake"])
        .await;
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("image is required"), "{}", run.stderr);
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_streams_and_exits_with_the_command_code() {
    let fake = FakeBackend::new()
        .with_shell_stand_ins()
        .script(
            "echo hi; exit 3",
            FakeExec::new().stdout("hi\n").exit_code(3),
        )
        .script(
            "no-such-command",
            FakeExec::new()
                .stderr("sh: 1: no-such-command: not found\n")
                .exit_code(127),
        )
        .script("sleep 30", FakeExec::new().sleep(Duration::from_secs(30)))
        .script(
            "echo one; sleep 0.2; echo two; exit 4",
            FakeExec::new()
                .stdout("one\n")
                .sleep(Duration::from_millis(200))
                .stdout("two\n")
                .exit_code(4),
        );
    let stack = Stack::scripted(fake).await;
    let id = stack.create().await;

    let run = stack.cli(&["exec", &id, "--", "echo hi; exit 3"]).await;
    assert_eq!(run.code, 3);
    assert_eq!(run.stdout, "hi\n");

    let run = stack.cli(&["exec", &id, "--", "echo", "a  b", "c"]).await;
    run.success();
    assert_eq!(run.stdout, "a  b c\n");

    let run = stack
        .cli(&[
            "exec",
            &id,
            "--cwd",
            "/workspace",
            "--env",
            "GREETING=hi",
            "--",
            "pwd; printenv GREETING",
        ])
        .await;
    run.success();
    assert_eq!(run.stdout, "/workspace\nhi\n");

    let run = stack.cli(&["exec", &id, "--", "no-such-command"]).await;
    assert_eq!(run.code, 127);
    assert!(run.stderr.contains("no-such-command"), "{}", run.stderr);

    let run = stack
        .cli(&["exec", &id, "--timeout", "200", "--", "sleep 30"])
        .await;
    assert_eq!(run.code, 124);

    let run = stack
        .cli(&[
            "--json",
            "exec",
            &id,
            "--",
            "echo one; sleep 0.2; echo two; exit 4",
        ])
        .await;
    assert_eq!(run.code, 4);
    let out = run.json();
    assert_eq!(out["stdout"], "one\ntwo\n");
    assert_eq!(out["exit_code"], 4);
    assert_eq!(out["sandbox_id"], id.as_str());
    assert!(out["exec_id"].as_str().unwrap().starts_with("exec_"));

    // traforato-cli's own failures are 125, apart from any command's code.
    let run = stack
        .cli(&[
            "exec",
            "sbx-broker_local-worker_local-550e8400-e29b-41d4-a716-446655440000",
            "--",
            "true",
        ])
        .await;
    assert_eq!(run.code, 125);
    assert!(run.stderr.contains("sandbox not found"), "{}", run.stderr);
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_executes_code_from_every_source() {
    let prints = |stdout: &str| FakeCode::Runs(FakeExec::new().stdout(stdout.to_string()));
    // Scripts match the code exactly, so the file's and stdin's trailing newline must arrive.
    let fake = FakeBackend::new()
        .script_code("print('hello')", prints("hello\n"))
        .script_code("console.log('from-file')\n", prints("from-file\n"))
        .script_code("print('from-stdin')\n", prints("from-stdin\n"))
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
        .script_code("print(42)", prints("42\n"));
    let stack = Stack::scripted(fake).await;
    let id = stack.create().await;

    let run = stack
        .cli(&[
            "run",
            &id,
            "--runtime",
            "python",
            "--code",
            "print('hello')",
        ])
        .await;
    run.success();
    assert_eq!(run.stdout, "hello\n");

    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("script.js");
    std::fs::write(&script, "console.log('from-file')\n").unwrap();
    let run = stack
        .cli(&["run", &id, "--runtime", "node", script.to_str().unwrap()])
        .await;
    run.success();
    assert_eq!(run.stdout, "from-file\n");

    let run = stack
        .cli_stdin(
            &["run", &id, "--runtime", "python", "-"],
            b"print('from-stdin')\n",
        )
        .await;
    run.success();
    assert_eq!(run.stdout, "from-stdin\n");

    let run = stack
        .cli(&[
            "run",
            &id,
            "--runtime",
            "node",
            "--code",
            "throw new Error('boom')",
        ])
        .await;
    assert_eq!(run.code, 1);
    assert!(!run.stderr.is_empty());

    let run = stack
        .cli(&["run", &id, "--runtime", "python", "--code", "print('oops'"])
        .await;
    assert_ne!(run.code, 0);
    assert_ne!(run.code, 125);

    let run = stack
        .cli(&[
            "--json",
            "run",
            &id,
            "--runtime",
            "python",
            "--code",
            "print('oops'",
        ])
        .await;
    assert_ne!(run.code, 0);
    let out = run.json();
    assert_eq!(out["syntax_error"], true);
    assert_eq!(out["runtime"], "python");

    let run = stack
        .cli(&[
            "--json",
            "run",
            &id,
            "--runtime",
            "python",
            "--code",
            "print(42)",
        ])
        .await;
    run.success();
    assert_eq!(run.json()["stdout"], "42\n");
    assert_eq!(run.json()["syntax_error"], false);

    let run = stack
        .cli(&["run", &id, "--runtime", "python", "/no/such/file.py"])
        .await;
    assert_eq!(run.code, 125);
    assert!(run.stderr.contains("/no/such/file.py"), "{}", run.stderr);
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_commands() {
    let stack = Stack::start().await;
    let id = stack.create().await;
    let dir = tempfile::tempdir().unwrap();

    let local = dir.path().join("in.bin");
    let content: Vec<u8> = (0..=255u8).cycle().take(3000).collect();
    std::fs::write(&local, &content).unwrap();
    let run = stack
        .cli(&[
            "--json",
            "files",
            "put",
            &id,
            local.to_str().unwrap(),
            "/workspace/data/in.bin",
        ])
        .await;
    run.success();
    assert_eq!(run.json()["bytes_written"], 3000);

    let run = stack
        .cli_stdin(
            &["files", "put", &id, "-", "/workspace/hello.txt"],
            b"hello\n",
        )
        .await;
    run.success();
    assert!(run.stdout.is_empty());

    let run = stack
        .cli(&["files", "get", &id, "/workspace/hello.txt"])
        .await;
    run.success();
    assert_eq!(run.stdout, "hello\n");

    let out = dir.path().join("out.bin");
    let run = stack
        .cli(&[
            "--json",
            "files",
            "get",
            &id,
            "/workspace/data/in.bin",
            out.to_str().unwrap(),
        ])
        .await;
    run.success();
    assert_eq!(run.json()["bytes"], 3000);
    assert_eq!(std::fs::read(&out).unwrap(), content);

    let run = stack
        .cli(&[
            "files",
            "get",
            &id,
            "/workspace/missing",
            out.to_str().unwrap(),
        ])
        .await;
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("http 404"), "{}", run.stderr);
    assert_eq!(std::fs::read(&out).unwrap(), content, "kept the old file");

    let run = stack
        .cli(&["files", "mkdir", &id, "/workspace/a/b", "-p"])
        .await;
    run.success();
    let run = stack
        .cli(&["--json", "files", "mkdir", &id, "/workspace/a/b", "-p"])
        .await;
    run.success();
    assert_eq!(run.json()["created"], false);
    let run = stack.cli(&["files", "mkdir", &id, "/workspace/x/y"]).await;
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.contains("parent directory not found"),
        "{}",
        run.stderr
    );

    let run = stack.cli(&["files", "ls", &id, "/workspace"]).await;
    run.success();
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(
        lines,
        [
            "dir           -  a/",
            "dir           -  data/",
            "file          6  hello.txt"
        ]
    );
    let run = stack
        .cli(&["--json", "files", "ls", &id, "/workspace", "-r"])
        .await;
    run.success();
    let entries = run.json();
    let paths: Vec<&str> = entries
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["path"].as_str().unwrap())
        .collect();
    assert_eq!(
        paths,
        [
            "/workspace/a",
            "/workspace/a/b",
            "/workspace/data",
            "/workspace/data/in.bin",
            "/workspace/hello.txt"
        ]
    );

    let run = stack
        .cli(&["files", "stat", &id, "/workspace/hello.txt"])
        .await;
    run.success();
    assert!(run.stdout.contains("type      file"), "{}", run.stdout);
    assert!(run.stdout.contains("size      6"), "{}", run.stdout);
    let run = stack
        .cli(&["--json", "files", "stat", &id, "/workspace/a"])
        .await;
    run.success();
    assert_eq!(run.json()["type"], "directory");
    let run = stack.cli(&["files", "stat", &id, "/workspace/nope"]).await;
    assert_eq!(run.code, 1);
    assert_eq!(
        run.stderr.trim(),
        "error: /workspace/nope: no such file or directory"
    );
    let run = stack
        .cli(&["--json", "files", "stat", &id, "/workspace/nope"])
        .await;
    assert_eq!(run.code, 1);
    assert_eq!(run.json()["exists"], false);

    let run = stack.cli(&["files", "rm", &id, "/workspace/a"]).await;
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.contains("directory is not empty"),
        "{}",
        run.stderr
    );
    let run = stack.cli(&["files", "rm", &id, "/workspace/a", "-r"]).await;
    run.success();
    let run = stack.cli(&["files", "rm", &id, "/workspace/a"]).await;
    assert_eq!(run.code, 1);
    let run = stack
        .cli(&["--json", "files", "rm", &id, "/workspace/a", "-f"])
        .await;
    run.success();
    assert_eq!(run.json()["removed"], true);
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn port_url_and_connection_errors() {
    let stack = Stack::start().await;
    let id = stack.create().await;

    let run = stack
        .cli(&["port-url", &id, "8000", "--protocol", "http"])
        .await;
    run.success();
    let url = run.stdout.trim();
    assert!(url.starts_with("http://"), "{url}");
    assert!(
        url.ends_with(&format!("/sandboxes/{id}/proxy/8000")),
        "{url}"
    );
    let run = stack.cli(&["--json", "port-url", &id, "3000"]).await;
    run.success();
    let body = run.json();
    assert_eq!(body["protocol"], "https");
    assert_eq!(body["port"], 3000);
    stack.stop().await;

    // Nothing listens any more.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let run = cli(&["--url", &url, "sandbox", "get", &id], None, &[]).await;
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("cannot connect"), "{}", run.stderr);
    let run = cli(
        &["--url", &url, "--json", "exec", &id, "--", "true"],
        None,
        &[],
    )
    .await;
    assert_eq!(run.code, 125);
    assert_eq!(run.stderr_json()["kind"], "connect");
}

#[tokio::test]
async fn help_and_completions() {
    for args in [
        &["--help"][..],
        &["sandbox", "create", "--help"],
        &["exec", "--help"],
        &["run", "--help"],
        &["files", "put", "--help"],
        &["files", "rm", "--help"],
        &["port-url", "--help"],
    ] {
        let run = cli(args, None, &[]).await;
        run.success();
        assert!(run.stdout.contains("Example"), "{args:?}: {}", run.stdout);
    }
    let run = cli(&["completions", "bash"], None, &[]).await;
    run.success();
    assert!(run.stdout.contains("traforato-cli"));
    assert!(run.stdout.contains("complete"));
    let run = cli(&["exec"], None, &[]).await;
    assert_eq!(run.code, 2, "usage errors exit 2");
    // `--json` promises records; these two pass the command's bytes through.
    for args in [
        &["--json", "shell", "sbx-x"][..],
        &["--json", "exec", "-i", "sbx-x", "--", "cat"],
    ] {
        let run = cli(args, None, &[]).await;
        assert_eq!(run.code, 2, "{args:?}");
        assert!(
            run.stderr.contains("--json does not apply"),
            "{}",
            run.stderr
        );
    }
}

/// The prod secret of the tests; distinctive, so a leak into any output is unmistakable.
const SECRET: &str = "cli-secret-5e1d";

/// Runs the CLI in operator mode: the secret in the environment and `--client-id`.
async fn operator(url: &str, client_id: &str, args: &[&str]) -> Run {
    let mut full = vec!["--url", url, "--client-id", client_id];
    full.extend_from_slice(args);
    cli(&full, None, &[("TRAFORATO_JWT_SECRET", SECRET)]).await
}

/// Runs `traforato-cli token mint` with the secret in the environment.
async fn mint(client_id: &str) -> String {
    let run = cli(
        &["token", "mint", "--client-id", client_id],
        None,
        &[("TRAFORATO_JWT_SECRET", SECRET)],
    )
    .await;
    run.success();
    run.stdout.trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_mint() {
    let run = cli(
        &["token", "mint", "--client-id", "alice", "--ttl", "10m"],
        None,
        &[("TRAFORATO_JWT_SECRET", SECRET)],
    )
    .await;
    run.success();
    let token = run.stdout.trim();
    assert_eq!(run.stdout, format!("{token}\n"));
    assert_eq!(token.split('.').count(), 3, "{token}");
    // The token a prod service accepts (once), for that client.
    let services =
        ClientAuthenticator::new(&AuthConfig::with_secret(SECRET), Arc::new(SystemClock));
    let principal = services
        .authenticate(Some(&format!("Bearer {token}")))
        .unwrap();
    assert_eq!(principal.client_id, "alice");
    assert!(services
        .authenticate(Some(&format!("Bearer {token}")))
        .is_err());
    // A fresh token each time.
    assert_ne!(mint("alice").await, mint("alice").await);

    // Claims: issuer, audience and lifetime as asked, also from the environment.
    let run = cli(
        &[
            "--json",
            "token",
            "mint",
            "--ttl",
            "90",
            "--audience",
            "aud-y",
        ],
        None,
        &[
            ("TRAFORATO_JWT_SECRET", SECRET),
            ("TRAFORATO_CLIENT_ID", "bob"),
            ("TRAFORATO_JWT_ISSUER", "iss-x"),
        ],
    )
    .await;
    run.success();
    let minted = run.json();
    assert_eq!(minted["client_id"], "bob");
    assert!(minted["expires_at"].is_string());
    let token = minted["token"].as_str().unwrap();
    let payload = token.split('.').nth(1).unwrap();
    let claims: Value = serde_json::from_slice(
        &base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, payload)
            .unwrap(),
    )
    .unwrap();
    assert_eq!(claims["client_id"], "bob");
    assert_eq!(claims["iss"], "iss-x");
    assert_eq!(claims["aud"], "aud-y");
    assert_eq!(
        claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
        90
    );
    assert!(claims["jti"].as_str().is_some_and(|j| !j.is_empty()));

    // Refusals: no secret (or a blank one), no client id, a bad ttl. Never the secret.
    for env in [&[][..], &[("TRAFORATO_JWT_SECRET", "  ")][..]] {
        let run = cli(&["token", "mint", "--client-id", "alice"], None, env).await;
        assert_eq!(run.code, 1);
        assert!(run.stdout.is_empty(), "{}", run.stdout);
        assert!(
            run.stderr.contains("TRAFORATO_JWT_SECRET"),
            "{}",
            run.stderr
        );
    }
    let run = cli(
        &["token", "mint"],
        None,
        &[("TRAFORATO_JWT_SECRET", SECRET)],
    )
    .await;
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("--client-id"), "{}", run.stderr);
    assert!(!run.stderr.contains(SECRET));
    let run = cli(
        &["token", "mint", "--client-id", "a", "--ttl", "0"],
        None,
        &[("TRAFORATO_JWT_SECRET", SECRET)],
    )
    .await;
    assert_eq!(run.code, 2, "{}", run.stderr);

    // The help explains minting and shows an example; the secret stays hidden.
    let run = cli(
        &["token", "mint", "--help"],
        None,
        &[("TRAFORATO_JWT_SECRET", SECRET)],
    )
    .await;
    run.success();
    assert!(run
        .stdout
        .contains("traforato-cli token mint --client-id alice"));
    assert!(run.stdout.contains("--location-trusted"));
    assert!(!run.stdout.contains(SECRET));
    let run = cli(&["--help"], None, &[("TRAFORATO_JWT_SECRET", SECRET)]).await;
    run.success();
    assert!(run.stdout.contains("TRAFORATO_CLIENT_ID"), "{}", run.stdout);
    assert!(!run.stdout.contains(SECRET));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prod_mode_commands() {
    let fake = FakeBackend::new().script("echo hello", FakeExec::new().stdout("hello\n"));
    let stack = Stack::start_prod(fake).await;
    let url = stack.url.as_str();
    // Operator mode: a fresh token per request, so any number of commands work.
    let run = operator(
        url,
        "alice",
        &[
            "sandbox",
            "create",
            "--image",
            "ubuntu:24.04",
            "--virtualization",
            "fake",
        ],
    )
    .await;
    run.success();
    let id = run.stdout.trim().to_string();
    let id = id.as_str();
    operator(url, "alice", &["sandbox", "get", id])
        .await
        .success();
    let run = operator(url, "alice", &["exec", id, "--", "echo hello"]).await;
    run.success();
    assert_eq!(run.stdout, "hello\n");
    operator(
        url,
        "alice",
        &["files", "mkdir", id, "/workspace/src", "-p"],
    )
    .await
    .success();
    operator(url, "alice", &["files", "stat", id, "/workspace/src"])
        .await
        .success();

    // Another client is refused on alice's sandbox.
    let run = operator(url, "bob", &["--json", "sandbox", "get", id]).await;
    assert_eq!(run.code, 1);
    let err = run.stderr_json();
    assert_eq!(err["error"], "sandbox ownership mismatch");
    assert_eq!(err["status"], 403);
    let run = operator(url, "bob", &["exec", id, "--", "true"]).await;
    assert_eq!(run.code, 125);
    assert!(
        run.stderr.contains("sandbox ownership mismatch"),
        "{}",
        run.stderr
    );

    // No credentials: 401.
    let run = stack.cli(&["sandbox", "get", id]).await;
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.contains("unauthorized: missing bearer token"),
        "{}",
        run.stderr
    );

    // A static token is good for one create (broker, then worker) and then spent.
    let token = mint("carol").await;
    let run = stack
        .cli(&[
            "--token",
            &token,
            "sandbox",
            "create",
            "--image",
            "ubuntu:24.04",
            "--virtualization",
            "fake",
        ])
        .await;
    run.success();
    let carols = run.stdout.trim().to_string();
    let run = stack
        .cli(&["--token", &token, "sandbox", "get", &carols])
        .await;
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("jwt replay detected"), "{}", run.stderr);
    // A fresh one works.
    let fresh = mint("carol").await;
    stack
        .cli(&["--token", &fresh, "sandbox", "get", &carols])
        .await
        .success();

    // Contradictory or incomplete credentials are refused before any request.
    let run = stack
        .cli(&["--client-id", "alice", "sandbox", "get", id])
        .await;
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.contains("TRAFORATO_JWT_SECRET"),
        "{}",
        run.stderr
    );
    let run = cli(
        &[
            "--url",
            url,
            "--token",
            "t",
            "--client-id",
            "alice",
            "sandbox",
            "get",
            id,
        ],
        None,
        &[("TRAFORATO_JWT_SECRET", SECRET)],
    )
    .await;
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("exclusive"), "{}", run.stderr);
    assert!(!run.stderr.contains(SECRET));

    operator(url, "alice", &["sandbox", "delete", id])
        .await
        .success();
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_commands_talk_to_a_worker_for_its_operators() {
    let auth = AuthConfig::with_secret(SECRET);
    let worker = TestWorker::start(
        None,
        &auth,
        vec![Arc::new(FakeBackend::new().with_images())],
        |config| config.operators = vec!["ops".to_string()],
    )
    .await
    .unwrap();
    // --url names nothing that answers: the images commands use --worker.
    let images = |client_id: &'static str, args: &[&str]| {
        let mut full: Vec<String> = std::iter::once("images")
            .chain(args.iter().copied())
            .map(String::from)
            .collect();
        full.extend(["--worker".to_string(), worker.url.clone()]);
        async move {
            let args: Vec<&str> = full.iter().map(String::as_str).collect();
            operator("http://127.0.0.1:9", client_id, &args).await
        }
    };

    let run = images("ops", &["pull", "python:3.12-slim"]).await;
    run.success();
    assert!(
        run.stdout.starts_with("python:3.12-slim sha256:"),
        "{}",
        run.stdout
    );
    let run = images("ops", &["ls"]).await;
    run.success();
    assert!(run.stdout.starts_with("REFERENCE"), "{}", run.stdout);
    assert!(run.stdout.contains("python:3.12-slim"), "{}", run.stdout);
    assert!(
        run.stdout.contains("1 image(s), 1.0 MiB on disk"),
        "{}",
        run.stdout
    );
    let run = images("ops", &["--json", "ls"]).await;
    run.success();
    assert_eq!(run.json()["images"][0]["reference"], "python:3.12-slim");
    assert_eq!(run.json()["images"][0]["in_use"], 0);

    // Not an operator: refused, whatever the command.
    let run = images("alice", &["--json", "ls"]).await;
    assert_eq!(run.code, 1);
    assert_eq!(run.stderr_json()["status"], 403);
    assert_eq!(
        run.stderr_json()["error"],
        "managing images is for this worker's operators (images.operators)"
    );
    let run = images("ops", &["pull", "missing"]).await;
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.contains("image not found: missing"),
        "{}",
        run.stderr
    );

    let run = images("ops", &["rm", "python:3.12-slim"]).await;
    run.success();
    assert_eq!(run.stdout, "removed python:3.12-slim (1.0 MiB freed)\n");
    let run = images("ops", &["rm", "python:3.12-slim"]).await;
    assert_eq!(run.code, 1);
    worker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sandbox_network_flags() {
    let stack = Stack::start().await;
    let run = stack
        .cli(&[
            "sandbox",
            "create",
            "--image",
            "ubuntu:24.04",
            "--virtualization",
            "fake",
            "--egress",
            "all",
        ])
        .await;
    run.success();
    let id = run.stdout.trim().to_string();
    let run = stack.cli(&["sandbox", "get", &id]).await;
    run.success();
    assert!(
        run.stdout.contains("network         all\n"),
        "{}",
        run.stdout
    );
    let run = stack
        .cli(&[
            "sandbox",
            "network",
            &id,
            "--allow",
            "PyPI.org",
            "--allow",
            "10.0.0.0/8",
        ])
        .await;
    run.success();
    assert_eq!(
        run.stdout,
        format!("{id} network allow pypi.org, 10.0.0.0/8\n")
    );
    let run = stack.cli(&["--json", "sandbox", "get", &id]).await;
    assert_eq!(run.json()["network"]["egress"], "allow");
    let run = stack.cli(&["sandbox", "network", &id]).await;
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr.contains("give --egress, or --allow rules"),
        "{}",
        run.stderr
    );
    let run = stack
        .cli(&[
            "sandbox", "network", &id, "--egress", "none", "--allow", "x.org",
        ])
        .await;
    assert_eq!(run.code, 1);
    assert!(
        run.stderr
            .contains("network.allow is only used with egress allow"),
        "{}",
        run.stderr
    );
    stack.stop().await;
}
