//! The server binaries as processes: their JSON log lines collected as they come, records
//! waited for, stopped with SIGTERM (checked clean) or SIGKILL (a crash).

use std::sync::Arc;

use serde_json::Value;
use tokio::task::JoinHandle;

use super::{wait_until, WAIT};

/// Sends SIGTERM to `child` and checks that it exits cleanly within [`WAIT`].
pub async fn terminate(child: &mut tokio::process::Child) {
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
}

/// A running binary whose stdout (JSON log lines) is collected as it comes.
pub struct Bin {
    child: tokio::process::Child,
    pub lines: Arc<std::sync::Mutex<Vec<String>>>,
    reader: JoinHandle<()>,
}

impl Bin {
    pub fn spawn(path: &str, args: &[&str], env: &[(&str, &str)]) -> Self {
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

    /// `traforato-dev` on loopback ports chosen by the system, `virtualization` by default,
    /// with `more` arguments and `env` as its whole environment.
    pub fn dev(virtualization: &str, more: &[&str], env: &[(&str, &str)]) -> Self {
        let mut args = vec![
            "--broker-listen",
            "127.0.0.1:0",
            "--worker-listen",
            "127.0.0.1:0",
            "--default-virtualization",
            virtualization,
        ];
        args.extend_from_slice(more);
        Self::spawn(env!("CARGO_BIN_EXE_traforato-dev"), &args, env)
    }

    /// The first log record with `msg` (waiting for it).
    pub async fn record(&self, msg: &str) -> Value {
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
    // Used by the binaries' own tests, which need the `fake` feature.
    #[cfg_attr(not(feature = "fake"), allow(dead_code))]
    pub async fn first_url(&self) -> String {
        let record = self.record("listening").await;
        format!("http://{}", record["addr"].as_str().unwrap())
    }

    /// Sends `signal` (a name `kill` knows: `USR1`, `HUP`...).
    // Used by the binaries' own tests, which need the `fake` feature.
    #[cfg_attr(not(feature = "fake"), allow(dead_code))]
    pub async fn signal(&self, signal: &str) {
        let pid = self.child.id().unwrap().to_string();
        let sent = tokio::process::Command::new("kill")
            .args([&format!("-{signal}"), &pid])
            .status()
            .await
            .unwrap();
        assert!(sent.success(), "kill -{signal} {pid}");
    }

    /// SIGKILL, as a crash: nothing of its shutdown runs.
    pub async fn kill(mut self) {
        self.child.kill().await.unwrap();
        self.reader.abort();
    }

    /// SIGTERM, wait for a clean exit, and return every log line.
    pub async fn stop(mut self) -> Vec<String> {
        terminate(&mut self.child).await;
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
