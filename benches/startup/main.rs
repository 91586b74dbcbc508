//! `startup`: measures PRODUCT.md's speed targets on this machine, in one run, against floors
//! measured in the same run, and prints a table of medians, p90s and ratios.
//!
//! ```text
//! cargo run --release -p traforato-benches --bin startup -- [--iterations N]
//! ```
//!
//! It starts the real HTTP shells in this process (broker and workers on `127.0.0.1:0`, the
//! `container` backend with the `host` image) and drives them with `traforato-client`:
//! - **warm**: create through the broker (claiming a ready sandbox) + first Python `print`,
//!   against a pre-warmed Python zygote answering over a unix socket (target: within 3×);
//! - **cold**: the same with no pool (a fresh worker per sample, once the backend's spare
//!   inits are up, as on a worker that has been running), against starting the same
//!   interpreter bare (target: within 1.5×);
//! - **redirects/s**: `GET /sandboxes/<id>` → `307` with a load generator on loopback,
//!   against nginx answering `307` (target: at least half);
//! - **memory**: per idle warm sandbox, interpreter excluded (target: under 1 MiB);
//! - **capacity**: create → run → delete throughput and p99 with 1, 4, 16 and 64 clients
//!   under the deployed capacity model (target: no capacity error), warm-claim latency with
//!   10, 100 and 1000 live sandboxes (target: flat), the worker's RSS and descriptors per live
//!   sandbox;
//! - **bursts**: 32 creates back to back (kept alive) against a full warm pool, twice, the pool
//!   refilling in between (target: the second burst warmer, its pool grown by the first).
//!
//! Samples of the system and of its floor alternate, so that a noisy neighbour hits both.
//! The `container` backend needs root: without it the benchmark says so and exits 0. One run
//! at a time: sandboxes live in `/run/traforato-startup` and the cgroup `traforato_startup`;
//! a run that is interrupted leaves its sandboxes there and the next run removes them. The
//! shells log as deployed (JSON at info, here to a file in a scratch dir); `--no-logs` turns
//! that off. `--only 2,8` runs those phases alone. `--smoke` runs every phase at a tiny size
//! (seconds; no target judged): CI runs it (`benches/tests/smoke.rs`) so that it cannot rot.
//! `--json` prints one JSON object on stdout (the report goes to stderr): `cpus`, `cgroups`,
//! `smoke`, and `rows`, each with `measure`, `target`, `verdict` (`met`, `not_met`,
//! `not_measured`, `smoke`) and its numbers under stable names: `p50_ms`, `p90_ms`, `p99_ms`
//! and `floor_*` for latencies, `per_second`, `floor_per_second`, `ratio`, `refused`, `mib`,
//! `with_zygote_mib`, `host_wide_mib`, `rss_kib`, `fds`, `live`, and for the burst row
//! `warm_first`, `warm_second`, `pool_before`, `pool_after`, `refill_s`, `second_p50_ms`.
//! `--plot FILE.svg` draws every latency series' distribution.

/// `--json`: the human report goes to stderr, stdout gets the one JSON object.
static JSON: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Prints a line of the human report (to stderr under `--json`).
macro_rules! say {
    ($($arg:tt)*) => {
        if crate::JSON.load(std::sync::atomic::Ordering::Relaxed) {
            eprintln!($($arg)*)
        } else {
            println!($($arg)*)
        }
    };
}

mod burst;
mod capacity;
mod floors;
mod images;
mod memory;
mod network;
mod paired;
mod peer;
mod plot;
mod redirects;
mod shells;

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use traforato_benches::stats::{ms, Summary};
use traforato_client::{Client, ClientError, CreateSandbox, Runtime};
use traforato_core::backend::container::{self, ContainerBackend, ContainerConfig};
use traforato_core::backend::VmBackend;
use traforato_core::broker::StaticWorker;
use traforato_core::id::{ComponentId, LocalVmId, SandboxId};
use traforato_core::tuple::SandboxTuple;
use traforato_core::worker::PrePullTarget;
use traforato_server::logging::{self, LogSettings};

use crate::floors::Zygote;
use crate::shells::{spares_up, wait_for, BrokerShell, WorkerShell, WorkerSpec, VIRTUALIZATION};

const USAGE: &str = "usage: startup [--iterations N] [--memory-sandboxes N] \
                     [--redirect-seconds S] [--connections N] [--no-logs] [--only PHASE,...] \
                     [--smoke] [--json] [--plot FILE.svg]";

/// The number of phases.
const PHASES: usize = 10;

/// The image of every sandbox: the host's system directories, read-only.
const IMAGE: &str = "host";

/// The container backend's state dir. One run at a time: each worker removes every sandbox
/// it finds there when it starts.
const STATE_DIR: &str = "/run/traforato-startup";

/// The cgroup (below each hierarchy's root) that holds the sandboxes' cgroups.
const CGROUP_PARENT: &str = "traforato_startup";

/// Samples taken and thrown away before each latency series.
const WARMUP: usize = 3;

/// The cold floor of PRODUCT.md / startup-limits.md: the host interpreter started bare,
/// isolated and without `site`.
const COLD_FLOOR_FLAGS: &[&str] = &["-I", "-S"];

/// Why the benchmark could not finish.
#[derive(Debug, thiserror::Error)]
enum BenchError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}: {source}")]
    Client {
        what: &'static str,
        #[source]
        source: ClientError,
    },
    #[error("{0}")]
    Check(String),
}

fn io_error(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> BenchError {
    let what = what.into();
    move |source| BenchError::Io { what, source }
}

fn client_error(what: &'static str) -> impl FnOnce(ClientError) -> BenchError {
    move |source| BenchError::Client { what, source }
}

#[derive(Debug, Clone)]
struct Args {
    iterations: usize,
    memory_sandboxes: u32,
    redirect_window: Duration,
    connections: usize,
    /// Write the shells' JSON logs (to a file in the scratch dir), as a deployment does.
    logs: bool,
    /// The phases to run (1 to [`PHASES`]); empty: all.
    only: Vec<usize>,
    /// How big the capacity rows are.
    scale: capacity::Scale,
    /// Where `--plot` draws the latency distributions.
    plot: Option<PathBuf>,
    /// Every phase at a tiny size, to show that each still runs: its figures are not
    /// measurements and no target is judged.
    smoke: bool,
}

impl Args {
    fn runs(&self, phase: usize) -> bool {
        self.only.is_empty() || self.only.contains(&phase)
    }
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        iterations: 30,
        memory_sandboxes: 16,
        redirect_window: Duration::from_secs(5),
        connections: 32,
        logs: true,
        only: Vec::new(),
        scale: capacity::Scale::full(),
        plot: None,
        smoke: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = |name: &str| -> Result<u64, String> {
            let raw = it.next().ok_or(format!("{name} needs a value"))?;
            match raw.parse::<u64>() {
                Ok(n) if n > 0 => Ok(n),
                _ => Err(format!("{name} must be a positive integer, got {raw:?}")),
            }
        };
        match flag.as_str() {
            "--iterations" | "-n" => args.iterations = value("--iterations")? as usize,
            "--memory-sandboxes" => {
                args.memory_sandboxes = u32::try_from(value("--memory-sandboxes")?)
                    .map_err(|_| "--memory-sandboxes is too large".to_string())?
            }
            "--redirect-seconds" => {
                args.redirect_window = Duration::from_secs(value("--redirect-seconds")?)
            }
            "--connections" => args.connections = value("--connections")? as usize,
            "--no-logs" => args.logs = false,
            "--json" => JSON.store(true, std::sync::atomic::Ordering::Relaxed),
            "--plot" => {
                let file = it.next().ok_or("--plot needs a file (FILE.svg)")?;
                args.plot = Some(PathBuf::from(file));
            }
            "--smoke" => {
                args.smoke = true;
                args.iterations = 3;
                args.memory_sandboxes = 2;
                args.redirect_window = Duration::from_secs(1);
                args.connections = 4;
                args.scale = capacity::Scale::smoke();
            }
            "--only" => {
                let list = it.next().ok_or("--only needs phase numbers")?;
                for phase in list.split(',') {
                    match phase.trim().parse::<usize>() {
                        Ok(n) if (1..=PHASES).contains(&n) => args.only.push(n),
                        _ => {
                            return Err(format!("--only: {phase:?} is not a phase (1 to {PHASES})"))
                        }
                    }
                }
            }
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(args)
}

fn main() -> ExitCode {
    // The container backend re-executes this binary as each sandbox's init.
    container::init_main_if_requested();
    let args = match parse_args() {
        Ok(args) => args,
        // An empty message is a request for help.
        Err(message) if message.is_empty() => {
            say!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(message) => {
            eprintln!("startup: {message}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    if !rustix::process::geteuid().is_root() {
        say!(
            "startup: skipped: the container backend needs root (namespaces, cgroups, mounts); \
             run it as root to measure"
        );
        return ExitCode::SUCCESS;
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("startup: cannot start the tokio runtime: {error}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("startup: {error}");
            ExitCode::from(1)
        }
    }
}

/// On a terminal, shows which sample of `total` a series is at (`\r`-overwritten on
/// stderr, cleared after the last); nothing elsewhere.
fn progress(series: &str, sample: usize, total: usize) {
    use std::io::{IsTerminal, Write};
    let mut stderr = std::io::stderr();
    if !stderr.is_terminal() {
        return;
    }
    let _ = if sample + 1 < total {
        write!(stderr, "\r  {series}: sample {}/{total} ", sample + 1)
    } else {
        write!(stderr, "\r{:60}\r", "")
    };
    let _ = stderr.flush();
}

/// A private scratch directory, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Result<Self, BenchError> {
        let dir = std::env::temp_dir().join(format!("traforato-startup-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(io_error("create the scratch dir"))?;
        Ok(Self(dir))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        remove_unless_mounted(&self.0);
    }
}

/// Removes `dir` recursively, unless something is mounted below it: a sandbox that was not
/// torn down leaves its root there, with host directories bound in, and nothing must be
/// deleted through those.
fn remove_unless_mounted(dir: &Path) {
    let prefix = format!("{}/", dir.display());
    let mounted = std::fs::read_to_string("/proc/self/mountinfo")
        .map(|info| {
            info.lines()
                .filter_map(|l| l.split(' ').nth(4))
                .any(|mount_point| mount_point.starts_with(&prefix))
        })
        .unwrap_or(true);
    if mounted {
        eprintln!(
            "startup: mounts remain below {}; leaving it in place",
            dir.display()
        );
        return;
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// Whether a measure meets its target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Met,
    NotMet,
    NotMeasured,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Verdict::Met => "MET",
            Verdict::NotMet => "NOT MET",
            Verdict::NotMeasured => "NOT MEASURED",
        })
    }
}

/// One line of the final table.
struct Row {
    measure: String,
    system: String,
    floor: String,
    ratio: String,
    target: &'static str,
    verdict: Verdict,
    /// Its numbers under stable names, for `--json` (`p50_ms`, `floor_p50_ms`,
    /// `per_second`, `ratio`...).
    figures: Vec<(&'static str, f64)>,
    /// Its latency series (label, samples in ms), for `--plot`.
    series: Vec<(String, Vec<f64>)>,
}

/// A latency series for `--plot`: `label` and its samples in milliseconds.
fn plotted(label: impl Into<String>, samples: &[Duration]) -> (String, Vec<f64>) {
    let ms = samples.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
    (label.into(), ms)
}

/// The percentiles of `summary` in milliseconds, named with `prefix` (`""` or `"floor_"`).
fn latency_figures(prefix: &'static str, summary: &Summary) -> Vec<(&'static str, f64)> {
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let names: [&'static str; 3] = match prefix {
        "" => ["p50_ms", "p90_ms", "p99_ms"],
        _ => ["floor_p50_ms", "floor_p90_ms", "floor_p99_ms"],
    };
    vec![
        (names[0], ms(summary.median)),
        (names[1], ms(summary.p90)),
        (names[2], ms(summary.p99)),
    ]
}

/// The one JSON object of `--json`: the machine, whether it was a smoke run, every row.
fn json_report(rows: &[Row], smoke: bool, cgroups: &str) -> serde_json::Value {
    let rows: Vec<serde_json::Value> = rows
        .iter()
        .map(|row| {
            let mut object = serde_json::Map::new();
            object.insert("measure".into(), row.measure.clone().into());
            object.insert("target".into(), row.target.into());
            let verdict = match (smoke, row.verdict) {
                (true, _) => "smoke",
                (false, Verdict::Met) => "met",
                (false, Verdict::NotMet) => "not_met",
                (false, Verdict::NotMeasured) => "not_measured",
            };
            object.insert("verdict".into(), verdict.into());
            for (name, value) in &row.figures {
                object.insert((*name).into(), (*value).into());
            }
            serde_json::Value::Object(object)
        })
        .collect();
    serde_json::json!({
        "cpus": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "cgroups": cgroups,
        "smoke": smoke,
        "rows": rows,
    })
}

fn tuple() -> SandboxTuple {
    SandboxTuple::normalize(VIRTUALIZATION, IMAGE, 1, VIRTUALIZATION)
}

async fn run(args: Args) -> Result<(), BenchError> {
    let scratch = Scratch::new()?;
    if args.logs {
        let settings = LogSettings {
            file: Some(scratch.path().join("traforato.log")),
            rotate_size_mib: 64,
            max_rotations: 1,
            ..LogSettings::default()
        };
        logging::init("startup", &settings)
            .map_err(|e| BenchError::Check(format!("cannot set up logging: {e}")))?;
    }
    // Fixed names: a run that was interrupted leaves sandboxes there, and the next run's
    // workers remove them when they start (the backend's leftover cleanup).
    let config = ContainerConfig {
        state_dir: PathBuf::from(STATE_DIR),
        cgroup_parent: CGROUP_PARENT.to_string(),
        ..ContainerConfig::default()
    };
    let cgroup_parent = config.cgroup_parent.clone();
    let container = Arc::new(
        ContainerBackend::new(config)
            .map_err(|e| BenchError::Check(format!("the container backend cannot run: {e}")))?,
    );
    let broker = BrokerShell::start()
        .await
        .map_err(io_error("start the broker"))?;
    let client = Client::builder(broker.url.as_str())
        .build()
        .map_err(client_error("build the client"))?;

    let cgroups = if container.uses_cgroup_v2() {
        "v2"
    } else {
        "v1"
    };
    say!(
        "traforato start-up benchmark: {} samples per latency series (after {WARMUP} thrown \
         away), {} CPUs, container backend ({cgroups} cgroups), image {IMAGE:?}",
        args.iterations,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
    );
    if args.runs(4) && redirects::nginx_binary().is_none() {
        // The redirect yardstick is part of the run: installed when missing, where apt can.
        say!("nginx is not installed: apt-get install nginx-light");
        let apt = |args: &[&str]| {
            std::process::Command::new("apt-get")
                .args(args)
                .env("DEBIAN_FRONTEND", "noninteractive")
                .stdout(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        };
        let _ = apt(&["update", "-qq"]) && apt(&["install", "-y", "-qq", "nginx-light"]);
    }
    say!(
        "shells' JSON logs at info level: {}",
        if args.logs {
            "on, to a file (as deployed)"
        } else {
            "off (--no-logs)"
        }
    );
    say!("load average at start: {}", load_average());

    let backend: Arc<dyn VmBackend> = container.clone();
    let rows = phases(
        &args,
        &container,
        &broker,
        &backend,
        &client,
        scratch.path(),
        &cgroup_parent,
    )
    .await;
    let stopped = broker.stop().await.map_err(io_error("stop the broker"));
    // Every worker destroyed its sandboxes when it stopped; wait until their directories are
    // gone (a destroy may still be finishing), then remove this run's cgroup parents.
    let state_dir = PathBuf::from(STATE_DIR);
    let _ = wait_for(Duration::from_secs(10), || sandbox_dirs(&state_dir) == 0).await;
    if let Err(error) = container.remove_cgroup_parents() {
        eprintln!("startup: could not remove the cgroup parents {cgroup_parent}: {error}");
    }
    let left = sandbox_dirs(&state_dir);
    if left > 0 {
        eprintln!(
            "startup: {left} sandboxes were left in {} (the next run removes them)",
            state_dir.display()
        );
    } else {
        remove_unless_mounted(&state_dir);
    }
    let rows = rows?;
    stopped?;

    say!("\nload average at end: {}", load_average());
    if args.smoke {
        say!("\nsmoke run: every phase ran; its figures are not measurements");
    }
    if let Some(path) = &args.plot {
        let series: Vec<(String, Vec<f64>)> =
            rows.iter().flat_map(|row| row.series.clone()).collect();
        match plot::write(path, &series) {
            Ok(()) => say!("latency distributions drawn to {}", path.display()),
            Err(error) => eprintln!("startup: {error}"),
        }
    }
    if JSON.load(std::sync::atomic::Ordering::Relaxed) {
        println!("{}", json_report(&rows, args.smoke, cgroups));
    }
    say!("\nsummary (medians, p90 in parentheses)");
    let line = |cells: [&str; 6]| {
        say!(
            "| {:<44} | {:<22} | {:<32} | {:<6} | {:<17} | {:<12} |",
            cells[0],
            cells[1],
            cells[2],
            cells[3],
            cells[4],
            cells[5]
        )
    };
    line([
        "measure",
        "traforato",
        "floor / yardstick",
        "ratio",
        "target",
        "verdict",
    ]);
    say!(
        "|{:-<46}|{:-<24}|{:-<34}|{:-<8}|{:-<19}|{:-<14}|",
        "",
        "",
        "",
        "",
        "",
        ""
    );
    for row in &rows {
        let verdict = if args.smoke {
            "smoke".to_string()
        } else {
            row.verdict.to_string()
        };
        line([
            &row.measure,
            &row.system,
            &row.floor,
            &row.ratio,
            row.target,
            &verdict,
        ]);
    }
    say!(
        "\nfloors: zygote = a pre-warmed /usr/bin/python3 -I -S forking per request over a unix \
         socket (startup-limits 7a), sampled with idle gaps like the system (7a: 0.83 ms back to \
         back, ~1.2 ms after a gap); bare python = /usr/bin/python3 -I -S -c 'print(1)' spawned \
         and waited for; nginx = nginx-light, 2 workers, `return 307`, driven by the same load \
         generator. Memory = the sandboxes' cgroup charge plus the worker's RSS growth, less \
         interpreters' private memory, per sandbox; host-wide growth (noisy) for comparison."
    );
    Ok(())
}

/// The measures, in order.
async fn phases(
    args: &Args,
    container: &Arc<ContainerBackend>,
    broker: &BrokerShell,
    backend: &Arc<dyn VmBackend>,
    client: &Client,
    scratch: &Path,
    cgroup_parent: &str,
) -> Result<Vec<Row>, BenchError> {
    let mut rows = Vec::new();
    let announce = |phase: usize, what: &str| {
        let runs = args.runs(phase);
        if runs {
            say!("\n[{phase}/{PHASES}] {what}");
        }
        runs
    };
    if announce(
        1,
        "warm: create through the broker + first print, vs a pre-warmed zygote",
    ) {
        let warm = warm_series(args, broker, backend, client, scratch).await?;
        rows.push(warm.row(
            "warm create + first print (HTTP via broker)",
            "zygote",
            3.0,
            "<= 3x floor",
        ));
    }
    if announce(
        2,
        "cold: create through the broker with no pool + first print, vs bare python",
    ) {
        let cold = cold_series(args, container, broker, backend, client).await?;
        rows.push(cold.row(
            "cold create + first print (HTTP via broker)",
            "bare python",
            1.5,
            "<= 1.5x floor",
        ));
    }
    if announce(3, "memory of idle warm sandboxes") {
        rows.push(memory_row(args, broker, backend, cgroup_parent).await?);
    }
    if announce(4, "broker redirects per second vs nginx answering 307") {
        rows.push(redirect_row(args, broker, scratch)?);
    }
    if announce(
        5,
        "create -> run -> delete throughput under the capacity model",
    ) {
        rows.extend(capacity::throughput_rows(&args.scale, broker, backend, client).await?);
    }
    if announce(
        6,
        "warm-claim latency as live sandboxes grow; worker cost per sandbox",
    ) {
        rows.extend(capacity::claim_rows(&args.scale, broker, client).await?);
    }
    if announce(
        7,
        "cold create from a cached OCI image vs from host (backend, no zygote)",
    ) {
        rows.push(images::cached_image_row(args, scratch).await?);
    }
    if announce(
        8,
        "cold create with egress all vs none (backend, no zygote)",
    ) {
        rows.push(network::egress_row(args, scratch).await?);
    }
    if announce(9, "peer: docker run + first print vs bare python") {
        rows.push(peer::docker_row(args, scratch).await?);
    }
    if announce(
        10,
        "bursts: a tight create loop against a full warm pool, twice",
    ) {
        let size = if args.smoke { 4 } else { 32 };
        rows.push(burst::burst_row(size, broker, backend, client).await?);
    }
    Ok(rows)
}

/// How many sandbox directories (named by VM id) the backend's state dir holds.
fn sandbox_dirs(state_dir: &Path) -> usize {
    std::fs::read_dir(state_dir)
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| {
                    e.file_name()
                        .to_str()
                        .is_some_and(|name| LocalVmId::parse(name).is_ok())
                })
                .count()
        })
        .unwrap_or(0)
}

/// `/proc/loadavg`'s first three fields, to show how busy the machine was.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".to_string())
}

/// A latency series of the system and of its floor, sampled alternately.
#[derive(Default)]
struct Series {
    create: Vec<Duration>,
    print: Vec<Duration>,
    total: Vec<Duration>,
    floor: Vec<Duration>,
    /// Creates whose start type was not the one the series is about.
    wrong_start: Vec<String>,
}

impl Series {
    fn print_breakdown(&self, floor_label: &str) {
        let show = paired::print_summary;
        show("create (POST broker -> 307 -> worker)", &self.create);
        show("first print (run-code via broker)", &self.print);
        show("create + first print", &self.total);
        show(floor_label, &self.floor);
        if !self.wrong_start.is_empty() {
            say!(
                "  note: {} creates had an unexpected start type: {:?}",
                self.wrong_start.len(),
                self.wrong_start
            );
        }
    }

    fn row(
        &self,
        measure: &'static str,
        floor_label: &'static str,
        max_ratio: f64,
        target: &'static str,
    ) -> Row {
        let (Some(total), Some(floor)) = (Summary::of(&self.total), Summary::of(&self.floor))
        else {
            return Row {
                measure: measure.to_string(),
                system: "-".to_string(),
                floor: floor_label.to_string(),
                ratio: "-".to_string(),
                target,
                verdict: Verdict::NotMeasured,
                figures: Vec::new(),
                series: Vec::new(),
            };
        };
        let ratio = total.median.as_secs_f64() / floor.median.as_secs_f64();
        let verdict = if ratio <= max_ratio && self.wrong_start.is_empty() {
            Verdict::Met
        } else {
            Verdict::NotMet
        };
        Row {
            measure: measure.to_string(),
            system: format!("{} ms ({})", ms(total.median), ms(total.p90)),
            floor: format!("{} ms ({}) {floor_label}", ms(floor.median), ms(floor.p90)),
            ratio: format!("{ratio:.2}x"),
            target,
            verdict,
            figures: [
                latency_figures("", &total),
                latency_figures("floor_", &floor),
                vec![("ratio", ratio)],
            ]
            .concat(),
            series: vec![
                plotted(measure, &self.total),
                plotted(floor_label, &self.floor),
            ],
        }
    }
}

/// One timed create + `print(1)` through the broker; the sandbox is deleted afterwards
/// (untimed). Returns (create, print, start type).
async fn create_and_print(client: &Client) -> Result<(Duration, Duration, String), BenchError> {
    let spec = CreateSandbox {
        virtualization: VIRTUALIZATION.to_string(),
        cpu: 1,
        ..CreateSandbox::new(IMAGE)
    };
    let started = Instant::now();
    let sandbox = client
        .create_sandbox(spec)
        .await
        .map_err(client_error("create a sandbox"))?;
    let created = Instant::now();
    let printed = sandbox.run_code(Runtime::Python, "print(1)").await;
    let done = Instant::now();
    let start_type = sandbox
        .created_info()
        .map(|c| c.start_type.clone())
        .unwrap_or_default();
    let deleted = sandbox.delete().await;
    let out = printed.map_err(client_error("run print(1)"))?;
    if out.stdout != "1\n" || !out.success() {
        return Err(BenchError::Check(format!(
            "print(1) gave stdout {:?}, stderr {:?}, exit code {}",
            out.stdout, out.stderr, out.exit_code
        )));
    }
    deleted.map_err(client_error("delete the sandbox"))?;
    Ok((created - started, done - created, start_type))
}

/// Runs a blocking floor sample off the runtime's threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, BenchError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| BenchError::Check(format!("floor sample panicked: {e}")))
}

async fn warm_series(
    args: &Args,
    broker: &BrokerShell,
    backend: &Arc<dyn VmBackend>,
    client: &Client,
    scratch: &Path,
) -> Result<Series, BenchError> {
    // The pool fills every slot, so no sandbox is being warmed while a sample runs.
    const POOL: u32 = 2;
    let tuple = tuple();
    let worker = WorkerShell::start(
        broker,
        backend.clone(),
        WorkerSpec {
            id: "warm",
            pre_pull: vec![PrePullTarget {
                tuple: tuple.clone(),
                target_count: POOL,
                warmup_script: String::new(),
                warmup_timeout: Duration::from_secs(30),
            }],
            max_live: POOL,
            capacity: None,
        },
    )
    .await
    .map_err(io_error("start the warm worker"))?;

    let result = async {
        let dir = scratch.to_path_buf();
        let mut zygote = blocking(move || Zygote::start(&dir))
            .await?
            .map_err(io_error("start the python zygote"))?;
        let mut series = Series::default();
        for i in 0..WARMUP + args.iterations {
            progress("warm", i, WARMUP + args.iterations);
            wait_for(Duration::from_secs(60), || {
                worker.ready(&tuple) == POOL as usize && broker.hints(&tuple) == POOL as usize
            })
            .await
            .map_err(io_error("wait for the warm pool to refill"))?;
            let (back, floor) = blocking(move || {
                let sample = zygote.sample();
                (zygote, sample)
            })
            .await?;
            zygote = back;
            let floor = floor.map_err(io_error("zygote round trip"))?;
            let (create, print, start_type) = create_and_print(client).await?;
            if i >= WARMUP {
                series.create.push(create);
                series.print.push(print);
                series.total.push(create + print);
                series.floor.push(floor);
                if start_type != "warm" {
                    series.wrong_start.push(start_type);
                }
            }
        }
        Ok::<_, BenchError>(series)
    }
    .await;
    worker
        .stop()
        .await
        .map_err(io_error("stop the warm worker"))?;
    let series = result?;
    series.print_breakdown("floor: zygote round trip");
    Ok(series)
}

async fn cold_series(
    args: &Args,
    container: &ContainerBackend,
    broker: &BrokerShell,
    backend: &Arc<dyn VmBackend>,
    client: &Client,
) -> Result<Series, BenchError> {
    let mut series = Series::default();
    for i in 0..WARMUP + args.iterations {
        progress("cold", i, WARMUP + args.iterations);
        // A fresh worker has no pool and no demand; with one slot it cannot start warming
        // another sandbox while the sample runs.
        let id = format!("cold{i}");
        let worker = WorkerShell::start(
            broker,
            backend.clone(),
            WorkerSpec {
                id: &id,
                pre_pull: Vec::new(),
                max_live: 1,
                capacity: None,
            },
        )
        .await
        .map_err(io_error("start a cold worker"))?;
        // As on a worker that has been up a while (the previous worker's stop removed them).
        container.start_spare_inits();
        spares_up(container)
            .await
            .map_err(io_error("wait for the spare inits"))?;
        let sample = async {
            let floor = blocking(|| floors::bare_python(COLD_FLOOR_FLAGS))
                .await?
                .map_err(io_error("bare python"))?;
            let (create, print, start_type) = create_and_print(client).await?;
            Ok::<_, BenchError>((floor, create, print, start_type))
        }
        .await;
        worker
            .stop()
            .await
            .map_err(io_error("stop a cold worker"))?;
        let (floor, create, print, start_type) = sample?;
        if i >= WARMUP {
            series.create.push(create);
            series.print.push(print);
            series.total.push(create + print);
            series.floor.push(floor);
            if start_type != "cold" {
                series.wrong_start.push(start_type);
            }
        }
    }
    series.print_breakdown("floor: bare python3 -I -S -c 'print(1)'");
    Ok(series)
}

async fn memory_row(
    args: &Args,
    broker: &BrokerShell,
    backend: &Arc<dyn VmBackend>,
    cgroup_parent: &str,
) -> Result<Row, BenchError> {
    let n = args.memory_sandboxes;
    let tuple = tuple();
    let hierarchy =
        memory::MemoryHierarchy::detect().map_err(io_error("find the memory cgroup"))?;
    let settled = || memory::HostMemory::settled(5, Duration::from_millis(200));
    let host_before = blocking(settled)
        .await?
        .map_err(io_error("read /proc/meminfo"))?;
    let rss_before = memory::self_rss().map_err(io_error("read /proc/self/status"))?;
    let worker = WorkerShell::start(
        broker,
        backend.clone(),
        WorkerSpec {
            id: "memory",
            pre_pull: vec![PrePullTarget {
                tuple: tuple.clone(),
                target_count: n,
                warmup_script: String::new(),
                warmup_timeout: Duration::from_secs(30),
            }],
            max_live: n,
            capacity: None,
        },
    )
    .await
    .map_err(io_error("start the memory worker"))?;

    let measured = async {
        wait_for(Duration::from_secs(300), || {
            worker.ready(&tuple) == n as usize
        })
        .await
        .map_err(io_error("wait for the warm pool"))?;
        // Let the sandboxes settle into idleness.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let host_after = blocking(settled)
            .await?
            .map_err(io_error("read /proc/meminfo"))?;
        let rss_after = memory::self_rss().map_err(io_error("read /proc/self/status"))?;
        // A sandbox has a directory in the state dir; the backend's spare inits (cgroups of
        // their own, named alike) have none and are no sandbox.
        let cgroups: Vec<PathBuf> = hierarchy
            .children(cgroup_parent)
            .map_err(io_error("list the sandbox cgroups"))?
            .into_iter()
            .filter(|dir| {
                dir.file_name()
                    .is_some_and(|name| Path::new(STATE_DIR).join(name).is_dir())
            })
            .collect();
        let mut usage = CgroupUsage::default();
        for dir in &cgroups {
            let what = format!("read the memory usage of {}", dir.display());
            usage.charged += hierarchy.usage(dir).map_err(io_error(what.clone()))?;
            usage
                .parts
                .add(hierarchy.breakdown(dir).map_err(io_error(what))?);
            for p in memory::processes(dir).map_err(io_error("list sandbox processes"))? {
                usage.processes += 1;
                if p.is_interpreter() {
                    usage.interpreter += p.private_bytes;
                } else {
                    usage.other += p.private_bytes;
                }
            }
        }
        Ok::<_, BenchError>((
            cgroups.len(),
            usage,
            host_after.growth_since(&host_before),
            rss_after.saturating_sub(rss_before),
        ))
    }
    .await;
    worker
        .stop()
        .await
        .map_err(io_error("stop the memory worker"))?;
    let (count, usage, growth, rss_delta) = measured?;
    if count != n as usize {
        return Err(BenchError::Check(format!(
            "expected {n} sandbox cgroups below {cgroup_parent} ({}), found {count}",
            hierarchy.version()
        )));
    }
    let per = |bytes: f64| bytes / f64::from(n);
    say!(
        "  {n} idle warm sandboxes; {:.1} processes each; cgroup {}",
        usage.processes as f64 / f64::from(n),
        hierarchy.version()
    );
    let line = |name: &str, bytes: f64| {
        say!("    {name:<42} {:>7} MiB", memory::mib(per(bytes)));
    };
    say!("  per sandbox, attributed:");
    line("cgroup charge", usage.charged as f64);
    line("  of which anonymous (processes)", usage.parts.anon as f64);
    line(
        "  of which tmpfs/shmem (writable layer)",
        usage.parts.shmem as f64,
    );
    line("  of which other page cache", usage.parts.cache as f64);
    line("  of which kernel memory", usage.parts.kernel as f64);
    line("private memory of interpreters", usage.interpreter as f64);
    line(
        "private memory of the sandbox's processes",
        usage.other as f64,
    );
    line("worker RSS growth (this process)", rss_delta as f64);
    say!(
        "  cross-check, host-wide growth per sandbox (/proc/meminfo, medians of 5 reads; \
         includes every other process on the machine):"
    );
    for (name, bytes) in growth {
        line(name, bytes as f64);
    }
    // The verdict counts what the sandboxes' cgroups are charged (processes, writable layer,
    // kernel memory allocated inside) plus the worker's own growth, less interpreters.
    let excluded = per((usage.charged + rss_delta).saturating_sub(usage.interpreter) as f64);
    // And what a warm sandbox costs whole, its pre-warmed Python zygote included.
    let whole = per((usage.charged + rss_delta) as f64);
    const TARGET: f64 = 1024.0 * 1024.0;
    Ok(Row {
        measure: "memory per idle warm sandbox (excl. interp.)".to_string(),
        system: format!(
            "{} MiB ({} w/ zygote)",
            memory::mib(excluded),
            memory::mib(whole)
        ),
        floor: format!(
            "host-wide {} MiB (noisy)",
            memory::mib(per(growth[0].1 as f64))
        ),
        ratio: "-".to_string(),
        target: "< 1 MiB",
        verdict: if excluded < TARGET {
            Verdict::Met
        } else {
            Verdict::NotMet
        },
        series: Vec::new(),
        figures: vec![
            ("mib", excluded / (1024.0 * 1024.0)),
            ("with_zygote_mib", whole / (1024.0 * 1024.0)),
            ("host_wide_mib", per(growth[0].1 as f64) / (1024.0 * 1024.0)),
        ],
    })
}

/// What the sandbox cgroups hold, summed.
#[derive(Debug, Default)]
struct CgroupUsage {
    charged: u64,
    parts: memory::ChargeBreakdown,
    interpreter: u64,
    other: u64,
    processes: usize,
}

fn redirect_row(args: &Args, broker: &BrokerShell, scratch: &Path) -> Result<Row, BenchError> {
    // A static worker that only has to exist: the broker answers without contacting it.
    const TARGET_URL: &str = "http://127.0.0.1:9";
    broker.broker.register_static_worker(StaticWorker {
        worker_id: "redirect_target".to_string(),
        hostname: "localhost".to_string(),
        base_url: TARGET_URL.to_string(),
        ..StaticWorker::default()
    });
    let id = SandboxId::new(
        broker.broker.config().broker_id.clone(),
        ComponentId::parse("redirect_target").map_err(|e| BenchError::Check(e.to_string()))?,
        LocalVmId::new_random(),
    );
    let path = format!("/sandboxes/{id}");
    let warmup = Duration::from_secs(1);
    let ours = redirects::measure(
        broker.addr,
        &path,
        args.connections,
        warmup,
        args.redirect_window,
    )
    .map_err(io_error("load the broker"));
    broker.broker.set_worker_available("redirect_target", false);
    let ours = ours?;
    say!(
        "  broker: {:.0} redirects/s ({} in {:?}, {} errors, {} connections)",
        ours.per_second,
        ours.redirects,
        args.redirect_window,
        ours.errors,
        args.connections
    );
    if ours.errors > 0 {
        return Err(BenchError::Check(format!(
            "the broker answered {} requests wrongly",
            ours.errors
        )));
    }
    let Some(binary) = redirects::nginx_binary() else {
        say!("  nginx is not installed (apt-get install nginx-light): no yardstick");
        return Ok(Row {
            measure: "broker redirects per second".to_string(),
            system: format!("{:.0}/s", ours.per_second),
            floor: "nginx not installed".to_string(),
            ratio: "-".to_string(),
            target: ">= 0.5x nginx",
            verdict: Verdict::NotMeasured,
            figures: vec![("per_second", ours.per_second)],
            series: Vec::new(),
        });
    };
    let dir = scratch.join("nginx");
    std::fs::create_dir_all(&dir).map_err(io_error("create the nginx dir"))?;
    let nginx =
        redirects::Nginx::start(&binary, &dir, TARGET_URL).map_err(io_error("start nginx"))?;
    let theirs = redirects::measure(
        nginx.addr,
        &path,
        args.connections,
        warmup,
        args.redirect_window,
    )
    .map_err(io_error("load nginx"));
    drop(nginx);
    let theirs = theirs?;
    say!(
        "  nginx:  {:.0} redirects/s ({} in {:?}, {} errors; 2 worker processes)",
        theirs.per_second,
        theirs.redirects,
        args.redirect_window,
        theirs.errors
    );
    let ratio = ours.per_second / theirs.per_second;
    Ok(Row {
        measure: "broker redirects per second".to_string(),
        system: format!("{:.0}/s", ours.per_second),
        floor: format!("{:.0}/s nginx", theirs.per_second),
        ratio: format!("{ratio:.2}x"),
        target: ">= 0.5x nginx",
        verdict: if ratio >= 0.5 {
            Verdict::Met
        } else {
            Verdict::NotMet
        },
        series: Vec::new(),
        figures: vec![
            ("per_second", ours.per_second),
            ("floor_per_second", theirs.per_second),
            ("ratio", ratio),
        ],
    })
}
