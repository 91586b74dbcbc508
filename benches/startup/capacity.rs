//! Capacity rows of the start-up benchmark: create throughput and p99 at several concurrencies
//! (create → run code → delete, with the deployed capacity model), claim latency as the number
//! of live sandboxes grows, and the worker's memory and descriptors per live sandbox.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use traforato_benches::stats::{ms, Summary};
use traforato_client::{Client, CreateSandbox, Runtime};
use traforato_core::backend::container::{ContainerBackend, ContainerConfig};
use traforato_core::backend::VmBackend;
use traforato_core::worker::{CapacityConfig, PrePullTarget};

use traforato_server::config::{
    settings::host_memory_mib, MemoryShare, DEFAULT_CPU_OVERCOMMIT,
    DEFAULT_MEMORY_HIGH_WATERMARK_PERCENT, DEFAULT_MEMORY_OVERCOMMIT,
};

use crate::shells::{cores, wait_for, BrokerShell, WorkerShell, WorkerSpec, VIRTUALIZATION};
use crate::{client_error, io_error, memory, tuple, BenchError, Row, Verdict, IMAGE};

/// How big the capacity rows are.
#[derive(Debug, Clone)]
pub struct Scale {
    /// Concurrencies of the throughput rows.
    pub concurrency: Vec<usize>,
    /// How long each throughput row runs.
    pub window: Duration,
    /// Live sandboxes the claim-latency rows are taken at (ascending).
    pub live: Vec<usize>,
    /// Claims timed at each live count.
    pub claims: usize,
}

impl Scale {
    /// A full run's.
    pub fn full() -> Self {
        Self {
            concurrency: vec![1, 4, 16, 64],
            window: Duration::from_secs(5),
            live: vec![10, 100, 1000],
            claims: 30,
        }
    }

    /// The smoke mode's: every row taken, in seconds.
    pub fn smoke() -> Self {
        Self {
            concurrency: vec![1, 2],
            window: Duration::from_secs(1),
            live: vec![2, 4],
            claims: 3,
        }
    }
}

/// The deployed defaults of the capacity model (see README), with `max_warm` idle warm
/// sandboxes per tuple.
pub fn deployed(max_warm: u32) -> CapacityConfig {
    CapacityConfig {
        cpu_overcommit: DEFAULT_CPU_OVERCOMMIT,
        memory_overcommit: DEFAULT_MEMORY_OVERCOMMIT,
        memory_high_watermark_mib: host_memory_mib()
            .map(|host| MemoryShare::Percent(DEFAULT_MEMORY_HIGH_WATERMARK_PERCENT).mib(host)),
        max_warm_per_tuple: Some(max_warm),
        warm_fill_parallelism: traforato_core::worker::defaults::default_warm_fill_parallelism(),
    }
}

/// One create → `print(1)` → delete through the broker; `Ok(false)` when the create was
/// refused for capacity (503).
async fn cycle(client: &Client) -> Result<bool, BenchError> {
    let spec = CreateSandbox {
        virtualization: VIRTUALIZATION.to_string(),
        cpu: 1,
        ..CreateSandbox::new(IMAGE)
    };
    let sandbox = match client.create_sandbox(spec).await {
        Ok(sandbox) => sandbox,
        Err(traforato_client::ClientError::Api { status: 503, .. }) => return Ok(false),
        Err(e) => return Err(client_error("create a sandbox")(e)),
    };
    let printed = sandbox.run_code(Runtime::Python, "print(1)").await;
    let deleted = sandbox.delete().await;
    printed.map_err(client_error("run print(1)"))?;
    deleted.map_err(client_error("delete the sandbox"))?;
    Ok(true)
}

/// Create → run → delete loops at each of the scale's concurrencies for its window: throughput, p99,
/// and how many creates were refused for capacity (the target: none).
pub async fn throughput_rows(
    scale: &Scale,
    broker: &BrokerShell,
    backend: &Arc<dyn VmBackend>,
    client: &Client,
) -> Result<Vec<Row>, BenchError> {
    let worker = WorkerShell::start(
        broker,
        backend.clone(),
        WorkerSpec {
            id: "throughput",
            pre_pull: Vec::new(),
            max_live: cores() * 32,
            capacity: Some(deployed(8)),
        },
    )
    .await
    .map_err(io_error("start the throughput worker"))?;
    let result = async {
        let mut rows = Vec::new();
        for &concurrency in &scale.concurrency {
            let deadline = Instant::now() + scale.window;
            let tasks: Vec<_> = (0..concurrency)
                .map(|_| {
                    let client = client.clone();
                    tokio::spawn(async move {
                        let mut samples = Vec::new();
                        let mut refused = 0usize;
                        while Instant::now() < deadline {
                            let started = Instant::now();
                            if cycle(&client).await? {
                                samples.push(started.elapsed());
                            } else {
                                refused += 1;
                            }
                        }
                        Ok::<_, BenchError>((samples, refused))
                    })
                })
                .collect();
            let mut samples = Vec::new();
            let mut refused = 0;
            for task in tasks {
                let (s, r) = task
                    .await
                    .map_err(|e| BenchError::Check(format!("load task panicked: {e}")))??;
                samples.extend(s);
                refused += r;
            }
            let per_second = samples.len() as f64 / scale.window.as_secs_f64();
            let summary = Summary::of(&samples);
            say!(
                "  concurrency {concurrency:>2}: {per_second:>7.1} cycles/s, p50 {} ms, p99 {} ms, \
                 {refused} refused for capacity",
                summary.map_or("-".into(), |s| ms(s.median)),
                summary.map_or("-".into(), |s| ms(s.p99)),
            );
            rows.push(Row {
                measure: format!(
                    "create->run->delete, {concurrency} client{}",
                    if concurrency == 1 { "" } else { "s" }
                ),
                system: format!(
                    "{per_second:.0}/s (p99 {} ms)",
                    summary.map_or("-".into(), |s| ms(s.p99))
                ),
                floor: format!("{refused} refused"),
                ratio: "-".to_string(),
                target: "no capacity error",
                figures: [
                    summary.map_or(Vec::new(), |s| crate::latency_figures("", &s)),
                    vec![("per_second", per_second), ("refused", refused as f64)],
                ]
                .concat(),
                series: vec![crate::plotted(
                    format!("create->run->delete, {concurrency} clients"),
                    &samples,
                )],
                verdict: if summary.is_none() {
                    Verdict::NotMeasured
                } else if refused == 0 {
                    Verdict::Met
                } else {
                    Verdict::NotMet
                },
            });
        }
        Ok::<_, BenchError>(rows)
    }
    .await;
    worker
        .stop()
        .await
        .map_err(io_error("stop the throughput worker"))?;
    result
}

/// A process's open descriptors.
fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

/// Claim latency (a warm create through the broker) with the scale's live counts sandboxes live, and the
/// worker's memory and descriptors per live sandbox. Uses a backend of its own without the
/// Python zygote, so that 1000 sandboxes fit in memory.
pub async fn claim_rows(
    scale: &Scale,
    broker: &BrokerShell,
    client: &Client,
) -> Result<Vec<Row>, BenchError> {
    const POOL: u32 = 2;
    let config = ContainerConfig {
        state_dir: PathBuf::from("/run/traforato-startup-claims"),
        cgroup_parent: "traforato_startup_claims".to_string(),
        python_zygote: false,
        ..ContainerConfig::default()
    };
    let container = Arc::new(
        ContainerBackend::new(config)
            .map_err(|e| BenchError::Check(format!("the container backend cannot run: {e}")))?,
    );
    let backend: Arc<dyn VmBackend> = container.clone();
    let most = scale.live.last().copied().unwrap_or(0);
    let max_live = (most as u32 + POOL + 16).max(cores() * 32);
    let worker = WorkerShell::start(
        broker,
        backend,
        WorkerSpec {
            id: "claims",
            pre_pull: vec![PrePullTarget {
                tuple: tuple(),
                target_count: POOL,
                warmup_script: String::new(),
                warmup_timeout: Duration::from_secs(30),
            }],
            max_live,
            // Room for the live `cpu: 2` sandboxes and the pool.
            capacity: Some(CapacityConfig {
                cpu_overcommit: (2 * max_live).div_ceil(cores()),
                memory_overcommit: (2 * max_live).div_ceil(cores()),
                ..deployed(POOL)
            }),
        },
    )
    .await
    .map_err(io_error("start the claims worker"))?;
    let result = async {
        let tuple = tuple();
        let mut live = Vec::new();
        let mut medians = Vec::new();
        let mut rows = Vec::new();
        let mut baseline: Option<(u64, usize)> = None;
        for &target in &scale.live {
            // Live sandboxes of another tuple (cpu 2), so that claims of `tuple` stay warm.
            while live.len() < target {
                let spec = CreateSandbox {
                    virtualization: VIRTUALIZATION.to_string(),
                    cpu: 2,
                    ttl: Some(Duration::from_secs(3600)),
                    ..CreateSandbox::new(IMAGE)
                };
                let sandbox = client
                    .create_sandbox(spec)
                    .await
                    .map_err(client_error("create a live sandbox"))?;
                live.push(sandbox);
            }
            let mut samples = Vec::new();
            for _ in 0..scale.claims {
                wait_for(Duration::from_secs(60), || {
                    worker.ready(&tuple) == POOL as usize && broker.hints(&tuple) == POOL as usize
                })
                .await
                .map_err(io_error("wait for the warm pool to refill"))?;
                let started = Instant::now();
                let claimed = client
                    .create_sandbox(CreateSandbox {
                        virtualization: VIRTUALIZATION.to_string(),
                        cpu: 1,
                        ..CreateSandbox::new(IMAGE)
                    })
                    .await
                    .map_err(client_error("claim a warm sandbox"))?;
                samples.push(started.elapsed());
                claimed
                    .delete()
                    .await
                    .map_err(client_error("delete a claimed sandbox"))?;
            }
            let rss = memory::self_rss().map_err(io_error("read /proc/self/status"))?;
            let fds = open_fds();
            if baseline.is_none() {
                baseline = Some((rss, fds));
            }
            let summary = Summary::of(&samples).expect("samples were taken");
            say!(
                "  {target:>4} live: claim p50 {} ms, p90 {} ms; process RSS {} MiB, {fds} fds",
                ms(summary.median),
                ms(summary.p90),
                rss >> 20
            );
            medians.push(summary.median);
            let ratio = summary.median.as_secs_f64() / medians[0].as_secs_f64();
            rows.push(Row {
                measure: format!("warm claim via broker, {target} live"),
                system: format!("{} ms ({})", ms(summary.median), ms(summary.p90)),
                floor: format!("{} ms at {} live", ms(medians[0]), scale.live[0]),
                ratio: format!("{ratio:.2}x"),
                target: "flat (<= 2x)",
                figures: [
                    crate::latency_figures("", &summary),
                    vec![
                        ("floor_p50_ms", medians[0].as_secs_f64() * 1000.0),
                        ("ratio", ratio),
                        ("live", target as f64),
                    ],
                ]
                .concat(),
                series: vec![crate::plotted(
                    format!("warm claim, {target} live"),
                    &samples,
                )],
                verdict: if ratio <= 2.0 {
                    Verdict::Met
                } else {
                    Verdict::NotMet
                },
            });
        }
        if let Some((rss0, fds0)) = baseline {
            let rss = memory::self_rss().map_err(io_error("read /proc/self/status"))?;
            let added = (most - scale.live[0]) as f64;
            let rss_per = rss.saturating_sub(rss0) as f64 / added / 1024.0;
            let fds_per = open_fds().saturating_sub(fds0) as f64 / added;
            say!(
                "  worker process per live sandbox: {rss_per:.0} KiB RSS, {fds_per:.1} descriptors"
            );
            rows.push(Row {
                measure: "worker RSS, fds per live sandbox".to_string(),
                system: format!("{rss_per:.0} KiB, {fds_per:.1} fds"),
                floor: "-".to_string(),
                ratio: "-".to_string(),
                target: "reported",
                verdict: Verdict::Met,
                figures: vec![("rss_kib", rss_per), ("fds", fds_per)],
                series: Vec::new(),
            });
        }
        for sandbox in live {
            let _ = sandbox.delete().await;
        }
        Ok::<_, BenchError>(rows)
    }
    .await;
    worker
        .stop()
        .await
        .map_err(io_error("stop the claims worker"))?;
    if let Err(error) = container.remove_cgroup_parents() {
        eprintln!("startup: could not remove the claims cgroup parent: {error}");
    }
    let _ = std::fs::remove_dir_all("/run/traforato-startup-claims");
    result
}
