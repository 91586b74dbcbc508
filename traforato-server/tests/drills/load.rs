//! Load for the drills: clients that loop create → exec → run code → write/read a file →
//! delete through the broker, timing each operation and classifying each error; the
//! statistics and the report each drill prints (and appends, as JSON, to the file named by
//! `TRAFORATO_DRILL_REPORT`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use traforato_client::{Client, ClientError, CreateSandbox, Runtime, Sandbox};

/// The operations of a cycle, in order.
pub const OPS: [&str; 6] = ["create", "exec", "run_code", "write", "read", "delete"];

/// How a failed operation failed.
pub fn class(err: &ClientError) -> String {
    match err {
        ClientError::Api {
            status, message, ..
        } => {
            // Messages may name ids; the class keeps their words only.
            let words: Vec<&str> = message
                .split_whitespace()
                .filter(|w| !w.starts_with("sbx-") && !w.starts_with("exec_"))
                .collect();
            format!("http {status}: {}", words.join(" "))
        }
        ClientError::Timeout { .. } => "timeout".to_string(),
        ClientError::Connect { .. } => "connect refused or unreachable".to_string(),
        ClientError::Transport { .. } => "transport (reset)".to_string(),
        other => format!("other: {other}"),
    }
}

/// Latencies and outcomes of operations, shared by the clients of a run.
#[derive(Debug, Default)]
pub struct Stats {
    latencies: BTreeMap<&'static str, Vec<Duration>>,
    errors: BTreeMap<(&'static str, String), usize>,
    /// Sandbox ids ever returned by a create, to check that none is handed out twice.
    ids: BTreeSet<String>,
    duplicates: Vec<String>,
    /// Cycles completed.
    pub cycles: usize,
    /// Creates that claimed a warm sandbox.
    pub warm: usize,
}

impl Stats {
    /// Records a successful `op` that took `took`.
    pub fn ok(&mut self, op: &'static str, took: Duration) {
        self.latencies.entry(op).or_default().push(took);
    }

    /// Records a failed `op`.
    pub fn error(&mut self, op: &'static str, class: String) {
        *self.errors.entry((op, class)).or_default() += 1;
    }

    /// Records a created sandbox id; a repeat is kept as a defect.
    pub fn created(&mut self, id: &str, warm: bool) {
        if !self.ids.insert(id.to_string()) {
            self.duplicates.push(id.to_string());
        }
        if warm {
            self.warm += 1;
        }
    }

    /// Sandbox ids handed out more than once (must be empty).
    pub fn duplicates(&self) -> &[String] {
        &self.duplicates
    }

    /// Successful operations.
    pub fn successes(&self) -> usize {
        self.latencies.values().map(Vec::len).sum()
    }

    /// Failed operations.
    pub fn failures(&self) -> usize {
        self.errors.values().sum()
    }

    /// Failures of `op`.
    pub fn failures_of(&self, op: &str) -> usize {
        self.errors
            .iter()
            .filter(|((o, _), _)| *o == op)
            .map(|(_, n)| n)
            .sum()
    }

    /// The errors as `op: class × n` lines.
    pub fn error_lines(&self) -> Vec<String> {
        self.errors
            .iter()
            .map(|((op, class), n)| format!("{op}: {class} × {n}"))
            .collect()
    }

    /// The statistics as JSON: per operation count, p50, p99 and max in ms; errors.
    pub fn to_json(&self, elapsed: Duration) -> Value {
        let mut ops = serde_json::Map::new();
        for op in OPS {
            let mut all = self.latencies.get(op).cloned().unwrap_or_default();
            all.sort();
            ops.insert(
                op.to_string(),
                json!({
                    "ok": all.len(),
                    "failed": self.failures_of(op),
                    "p50_ms": percentile_ms(&all, 50.0),
                    "p99_ms": percentile_ms(&all, 99.0),
                    "max_ms": all.last().map_or(0.0, |d| ms(*d)),
                }),
            );
        }
        let secs = elapsed.as_secs_f64().max(1e-9);
        json!({
            "seconds": round2(secs),
            "cycles": self.cycles,
            "cycles_per_second": round2(self.cycles as f64 / secs),
            "operations_per_second": round2(self.successes() as f64 / secs),
            "warm_creates": self.warm,
            "operations": ops,
            "errors": self.error_lines(),
        })
    }

    /// A human table of [`Stats::to_json`].
    pub fn table(&self, elapsed: Duration) -> String {
        let secs = elapsed.as_secs_f64().max(1e-9);
        let mut out = format!(
            "{} cycles in {:.1} s: {:.1} cycles/s, {:.1} operations/s ({} creates warm)\n",
            self.cycles,
            secs,
            self.cycles as f64 / secs,
            self.successes() as f64 / secs,
            self.warm
        );
        out.push_str("operation   ok      failed  p50 ms   p99 ms   max ms\n");
        for op in OPS {
            let mut all = self.latencies.get(op).cloned().unwrap_or_default();
            all.sort();
            out.push_str(&format!(
                "{op:<11} {:<7} {:<7} {:<8.1} {:<8.1} {:.1}\n",
                all.len(),
                self.failures_of(op),
                percentile_ms(&all, 50.0),
                percentile_ms(&all, 99.0),
                all.last().map_or(0.0, |d| ms(*d)),
            ));
        }
        for line in self.error_lines() {
            out.push_str(&format!("  error {line}\n"));
        }
        out
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

/// The `p`th percentile (nearest rank) of sorted latencies, in ms.
pub fn percentile_ms(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    round2(ms(sorted[rank.clamp(1, sorted.len()) - 1]))
}

/// Times `fut`, recording it as `op` in `stats`; the value, or `None` after recording the
/// error.
async fn timed<T>(
    stats: &Mutex<Stats>,
    op: &'static str,
    fut: impl std::future::Future<Output = Result<T, ClientError>>,
) -> Option<T> {
    let start = Instant::now();
    match fut.await {
        Ok(value) => {
            stats.lock().unwrap().ok(op, start.elapsed());
            Some(value)
        }
        Err(err) => {
            stats.lock().unwrap().error(op, class(&err));
            None
        }
    }
}

/// A create of the drills' sandboxes: the `host` image, one cpu, `ttl`.
pub fn spec(ttl: Duration) -> CreateSandbox {
    CreateSandbox {
        image: "host".to_string(),
        cpu: 1,
        ttl: Some(ttl),
        ..CreateSandbox::default()
    }
}

/// Creates a sandbox, recording the create; the sandbox, or `None`.
pub async fn create(client: &Client, stats: &Mutex<Stats>, ttl: Duration) -> Option<Sandbox> {
    let sandbox = timed(stats, "create", client.create_sandbox(spec(ttl))).await?;
    let warm = sandbox
        .created_info()
        .is_some_and(|c| c.start_type == "warm");
    stats.lock().unwrap().created(sandbox.id(), warm);
    Some(sandbox)
}

/// Uses a sandbox: exec, Python, a file written and read back; records each; whether all
/// went right (a wrong answer is recorded as an error of its operation).
pub async fn use_sandbox(sandbox: &Sandbox, stats: &Mutex<Stats>, n: usize) -> bool {
    let Some(out) = timed(stats, "exec", sandbox.exec(format!("echo drill {n}"))).await else {
        return false;
    };
    if out.stdout != format!("drill {n}\n") || out.exit_code != 0 {
        stats
            .lock()
            .unwrap()
            .error("exec", format!("wrong output: {out:?}"));
        return false;
    }
    let Some(out) = timed(
        stats,
        "run_code",
        sandbox.run_code(Runtime::Python, format!("print({n} * 7)")),
    )
    .await
    else {
        return false;
    };
    if out.stdout != format!("{}\n", n * 7) {
        stats
            .lock()
            .unwrap()
            .error("run_code", format!("wrong output: {out:?}"));
        return false;
    }
    let content: Vec<u8> = (0..4096).map(|i| (i * 31 + n) as u8).collect();
    let files = sandbox.files();
    if timed(
        stats,
        "write",
        files.write("/tmp/drill.bin", content.clone()),
    )
    .await
    .is_none()
    {
        return false;
    }
    let Some(back) = timed(stats, "read", files.read("/tmp/drill.bin")).await else {
        return false;
    };
    if back != content {
        stats
            .lock()
            .unwrap()
            .error("read", "wrong content".to_string());
        return false;
    }
    true
}

/// One cycle: create, use, delete. A failed step ends the cycle (the sandbox is deleted if
/// it was made, quietly).
pub async fn cycle(client: &Client, stats: &Mutex<Stats>, n: usize) {
    let Some(sandbox) = create(client, stats, Duration::from_secs(300)).await else {
        return;
    };
    if !use_sandbox(&sandbox, stats, n).await {
        let _ = sandbox.delete().await;
        return;
    }
    if timed(stats, "delete", sandbox.delete()).await.is_some() {
        stats.lock().unwrap().cycles += 1;
    }
}

/// Clients looping [`cycle`] until `stop` is set; join them with [`Load::stop`].
pub struct Load {
    /// The statistics of every client.
    pub stats: Arc<Mutex<Stats>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    started: Instant,
}

impl Load {
    /// Starts one task per client.
    pub fn start(clients: Vec<Client>) -> Self {
        let stats = Arc::new(Mutex::new(Stats::default()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let tasks = clients
            .into_iter()
            .enumerate()
            .map(|(c, client)| {
                let stats = stats.clone();
                let stop = stop.clone();
                tokio::spawn(async move {
                    let mut n = c * 1_000_000;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        cycle(&client, &stats, n).await;
                        n += 1;
                    }
                })
            })
            .collect();
        Self {
            stats,
            stop,
            tasks,
            started: Instant::now(),
        }
    }

    /// A snapshot of the failures so far.
    pub fn failures(&self) -> usize {
        self.stats.lock().unwrap().failures()
    }

    /// Successful operations so far.
    pub fn successes(&self) -> usize {
        self.stats.lock().unwrap().successes()
    }

    /// Stops the clients after their current cycle; the statistics and the time it ran.
    pub async fn stop(self) -> (Stats, Duration) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for task in self.tasks {
            task.await.expect("a load client panicked");
        }
        let elapsed = self.started.elapsed();
        let stats = Arc::try_unwrap(self.stats)
            .expect("the clients are done")
            .into_inner()
            .unwrap();
        (stats, elapsed)
    }
}

/// Prints a drill's report and appends it (one JSON line) to `TRAFORATO_DRILL_REPORT`.
pub fn report(drill: &str, human: &str, data: Value) {
    eprintln!("=== drill {drill}\n{human}");
    if let Ok(path) = std::env::var("TRAFORATO_DRILL_REPORT") {
        if path.is_empty() {
            return;
        }
        use std::io::Write as _;
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .unwrap_or_else(|e| panic!("open {path}: {e}"));
        let line = json!({"drill": drill, "report": human, "data": data});
        writeln!(file, "{line}").unwrap();
    }
}
