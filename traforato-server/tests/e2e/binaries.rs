//! The binaries: `traforato-dev`, `traforato-broker` and `traforato-worker` as processes, in dev
//! and prod mode, their configuration errors, and their logs (which hold no secrets).

use serde_json::{json, Value};

use crate::harness::*;

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

    // The worker registers with the broker right after both listen: until then a create is
    // 503 (no worker yet).
    let deadline = tokio::time::Instant::now() + WAIT;
    let resp = loop {
        let resp = follow()
            .post(format!("{broker_url}/sandboxes"))
            .json(&json!({"image": "ubuntu:24.04"}))
            .send()
            .await
            .unwrap();
        if resp.status() != 503 || tokio::time::Instant::now() > deadline {
            break resp;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert_eq!(resp.status(), 201);
    assert_eq!(body_json(resp).await["virtualization"], "fake");

    terminate(&mut child).await;

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
    follow()
        .get(format!("{url}/healthz"))
        .expect_status(200)
        .await;
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

/// `Bearer <fresh token>` for the binaries' secret [`BIN_SECRET`].
fn bin_bearer(client_id: &str) -> String {
    format!("Bearer {}", token_with(BIN_SECRET, client_id))
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
    no_follow()
        .post(format!("{broker_url}/sandboxes"))
        .json(&sandbox_body())
        .expect_status(401)
        .await;
    // A token good for one request per service: the create, then one replay attempt.
    let shared = bin_bearer("client-a");
    used.push(shared.clone());
    let resp = no_follow()
        .post(format!("{broker_url}/sandboxes"))
        .header("authorization", &shared)
        .json(&sandbox_body())
        .expect_status(307)
        .await;
    let location = resp.headers()["location"].to_str().unwrap().to_string();
    assert!(location.starts_with(&worker_url), "{location}");
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
        .get(format!("{worker_url}/sandboxes/{id}"))
        .header("authorization", &shared)
        .expect_status(401)
        .await;
    // A foreign client, a bad signature, and the owner.
    let foreign = bin_bearer("client-b");
    used.push(foreign.clone());
    follow()
        .get(format!("{worker_url}/sandboxes/{id}"))
        .header("authorization", &foreign)
        .expect_status(403)
        .await;
    let forged = format!("Bearer {}", token("client-a"));
    used.push(forged.clone());
    follow()
        .get(format!("{worker_url}/sandboxes/{id}"))
        .header("authorization", &forged)
        .expect_status(401)
        .await;
    let owner = bin_bearer("client-a");
    used.push(owner.clone());
    follow()
        .get(format!("{worker_url}/sandboxes/{id}"))
        .header("authorization", &owner)
        .expect_status(200)
        .await;

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
    let dev = Bin::dev("fake", &[], &[("TRAFORATO_JWT_SECRET", BIN_SECRET)]);
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
    no_follow()
        .post(format!("{broker_url}/sandboxes"))
        .json(&sandbox_body())
        .expect_status(401)
        .await;
    no_follow()
        .post(format!("{worker_url}/sandboxes"))
        .json(&sandbox_body())
        .expect_status(401)
        .await;
    let mut fresh = |client: &str| {
        let header = bin_bearer(client);
        used.push(header.clone());
        header
    };
    let resp = no_follow()
        .post(format!("{broker_url}/sandboxes"))
        .header("authorization", fresh("client-a"))
        .json(&sandbox_body())
        .expect_status(307)
        .await;
    let location = resp.headers()["location"].to_str().unwrap().to_string();
    let resp = no_follow()
        .post(&location)
        .header("authorization", fresh("client-a"))
        .json(&sandbox_body())
        .expect_status(201)
        .await;
    let id = body_json(resp).await["sandbox_id"]
        .as_str()
        .unwrap()
        .to_string();
    let sandbox = format!("{worker_url}/sandboxes/{id}");
    follow()
        .get(&sandbox)
        .header("authorization", fresh("client-b"))
        .expect_status(403)
        .await;
    follow().get(&sandbox).expect_status(401).await;
    follow()
        .get(&sandbox)
        .header("authorization", fresh("client-a"))
        .expect_status(200)
        .await;

    let lines = dev.stop().await;
    assert!(
        !lines.iter().any(|l| l.contains("auth disabled")),
        "{lines:?}"
    );
    assert_no_secrets(&lines, BIN_SECRET, &used);
}

/// The deployment's plumbing: `--version` names the commit, `healthcheck` answers for a
/// running worker of the same configuration (and fails without one), the secret comes from
/// a file, and SIGUSR1 drains the worker: no new sandboxes, the live one answers.
#[tokio::test]
async fn worker_version_healthcheck_secret_file_and_drain() {
    let worker_bin = env!("CARGO_BIN_EXE_traforato-worker");
    let out = std::process::Command::new(worker_bin)
        .arg("--version")
        .env_clear()
        .output()
        .unwrap();
    let version = String::from_utf8_lossy(&out.stdout);
    assert!(
        version.starts_with(&format!(
            "traforato-worker {} (commit ",
            env!("CARGO_PKG_VERSION")
        )),
        "{version}"
    );

    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port()
    };
    let listen = format!("127.0.0.1:{port}");
    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("jwt_secret");
    std::fs::write(&secret_file, format!("{}\n", SECRET)).unwrap();
    let secret_file = secret_file.to_str().unwrap().to_string();
    let env = [("TRAFORATO_JWT_SECRET_FILE", secret_file.as_str())];
    let healthcheck = |env: &[(&str, &str)]| {
        std::process::Command::new(worker_bin)
            .args(["--listen", &listen, "healthcheck", "--timeout", "2s"])
            .env_clear()
            .envs(env.iter().copied())
            .output()
            .unwrap()
    };
    let down = healthcheck(&env);
    assert_eq!(down.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&down.stderr).starts_with("worker: unhealthy: "),
        "{}",
        String::from_utf8_lossy(&down.stderr)
    );

    let worker = Bin::spawn(
        worker_bin,
        &[
            "--listen",
            &listen,
            "--default-virtualization",
            "fake",
            "--worker-id",
            "worker_a",
        ],
        &env,
    );
    let configured = worker.record("worker configured").await;
    assert_eq!(configured["auth_mode"], "prod");
    let url = format!("http://{listen}");
    wait_until("the worker is healthy", || async {
        healthcheck(&env).status.success()
    })
    .await;

    let create = || async {
        follow()
            .post(format!("{url}/sandboxes"))
            .bearer_auth(token("alice"))
            .json(&sandbox_body())
            .send()
            .await
            .unwrap()
    };
    let resp = create().await;
    assert_eq!(resp.status(), 201);
    let id = body_json(resp).await["sandbox_id"]
        .as_str()
        .unwrap()
        .to_string();

    worker.signal("USR1").await;
    worker.record("SIGUSR1: worker draining").await;
    expect_error(create().await, 503, "no capacity: worker draining").await;
    let resp = follow()
        .get(format!("{url}/sandboxes/{id}"))
        .bearer_auth(token("alice"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    // Draining is not unhealthy: the live sandboxes are still served.
    assert!(healthcheck(&env).status.success());

    worker.stop().await;
    assert_eq!(healthcheck(&env).status.code(), Some(1));
}

/// A broker restart, survived: the worker's probe sees the new instance and registers again
/// within a second or so, and meanwhile the restarted broker answers the worker's sandboxes
/// with `503` and `Retry-After` (its restart grace), never `404`.
#[tokio::test]
async fn a_restarted_broker_serves_live_sandboxes_again_within_seconds() {
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port()
    };
    let listen = format!("127.0.0.1:{port}");
    let broker_url = format!("http://{listen}");
    let start_broker = || {
        Bin::spawn(
            env!("CARGO_BIN_EXE_traforato-broker"),
            &["--listen", &listen, "--default-virtualization", "fake"],
            &[],
        )
    };
    let broker = start_broker();
    broker.record("listening").await;
    let worker = Bin::spawn(
        env!("CARGO_BIN_EXE_traforato-worker"),
        &[
            "--listen",
            "127.0.0.1:0",
            "--broker-control-url",
            &broker_url,
            "--default-virtualization",
            "fake",
            "--registration-probe",
            "200ms",
        ],
        &[],
    );
    worker.record("worker registered").await;
    let resp = follow()
        .post(format!("{broker_url}/sandboxes"))
        .json(&sandbox_body())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let id = body_json(resp).await["sandbox_id"]
        .as_str()
        .unwrap()
        .to_string();

    broker.stop().await;
    let broker = start_broker();
    broker.record("listening").await;
    let restarted = std::time::Instant::now();
    let mut statuses = Vec::new();
    loop {
        let resp = follow()
            .get(format!("{broker_url}/sandboxes/{id}"))
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        if status == 200 {
            break;
        }
        assert_eq!(status, 503, "{statuses:?}");
        assert_eq!(resp.headers()["retry-after"], "1");
        statuses.push(status);
        assert!(
            restarted.elapsed() < std::time::Duration::from_secs(10),
            "the worker did not register again: {statuses:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let again = worker.record("broker restarted: registering again").await;
    assert_eq!(again["level"], "INFO");
    worker.stop().await;
    broker.stop().await;
}
