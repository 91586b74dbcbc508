//! Metrics: the catalogue as typed handles (one field of [`Metrics`] per metric, each with a
//! small label-set struct), the label policy, the per-metric series bound and the Prometheus
//! text rendering of `/metrics`. Also W3C trace-context parsing and formatting.
//!
//! A misspelled metric or label does not compile:
//!
//! ```
//! use traforato_core::telemetry::{Metrics, WorkerCpuLabels};
//!
//! let metrics = Metrics::new(false);
//! let labels = WorkerCpuLabels { worker_id: "worker_a", cpu: "2" };
//! metrics.worker.warm_hit.inc(&labels);
//! assert_eq!(metrics.worker.warm_hit.value(&labels), Some(1.0));
//! ```
//!
//! ```compile_fail
//! # use traforato_core::telemetry::{Metrics, WorkerCpuLabels};
//! # let metrics = Metrics::new(false);
//! metrics.worker.warm_hits.inc(&WorkerCpuLabels { worker_id: "worker_a", cpu: "2" });
//! ```
//!
//! ```compile_fail
//! # use traforato_core::telemetry::{Metrics, WorkerCpuLabels};
//! # let metrics = Metrics::new(false);
//! metrics.worker.warm_hit.inc(&WorkerCpuLabels { sandbox_id: "sbx", cpu: "2" });
//! ```

// A registry of our own rather than the `prometheus-client` crate: that crate writes
// OpenMetrics (a `.` after each help text, `_total` appended to counter names, `# EOF`) and
// keeps label sets in hash maps, so `/metrics` would no longer be the stable, sorted
// Prometheus 0.0.4 text that dashboards and the tests read.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Most distinct label sets kept per metric; further ones are dropped and counted.
pub const MAX_SERIES_PER_METRIC: usize = 256;

/// Label values longer than this are truncated (values such as `cpu` come from clients).
pub const MAX_LABEL_VALUE_LEN: usize = 64;

/// Histogram bucket bounds, in seconds (or plain units for non-duration observations).
pub const BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];

/// The label policy: the only label keys a metric may carry. Per-request values (sandbox,
/// exec or request ids) have no key here, so they cannot become labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LabelKey {
    /// `worker_id`
    WorkerId,
    /// `virtualization`
    Virtualization,
    /// `cpu`
    Cpu,
    /// `start_type`
    StartType,
    /// `result`
    Result,
    /// `status_code`
    StatusCode,
    /// `reason`
    Reason,
    /// `image_family`
    ImageFamily,
    /// `direction` (`sent`, `received`)
    Direction,
}

impl LabelKey {
    /// Every allowed key.
    pub const ALL: [LabelKey; 9] = [
        LabelKey::WorkerId,
        LabelKey::Virtualization,
        LabelKey::Cpu,
        LabelKey::StartType,
        LabelKey::Result,
        LabelKey::StatusCode,
        LabelKey::Reason,
        LabelKey::ImageFamily,
        LabelKey::Direction,
    ];

    /// The key as rendered.
    pub fn as_str(self) -> &'static str {
        match self {
            LabelKey::WorkerId => "worker_id",
            LabelKey::Virtualization => "virtualization",
            LabelKey::Cpu => "cpu",
            LabelKey::StartType => "start_type",
            LabelKey::Result => "result",
            LabelKey::StatusCode => "status_code",
            LabelKey::Reason => "reason",
            LabelKey::ImageFamily => "image_family",
            LabelKey::Direction => "direction",
        }
    }
}

/// The labels of one metric: a struct whose fields are the label values.
pub trait LabelSet {
    /// Each label as a key and its value.
    fn labels(&self) -> Vec<(LabelKey, String)>;
}

/// No labels.
impl LabelSet for () {
    fn labels(&self) -> Vec<(LabelKey, String)> {
        Vec::new()
    }
}

/// Labels of per-worker capacity gauges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkerLabels<'a> {
    /// The worker.
    pub worker_id: &'a str,
}

impl LabelSet for WorkerLabels<'_> {
    fn labels(&self) -> Vec<(LabelKey, String)> {
        vec![(LabelKey::WorkerId, self.worker_id.to_string())]
    }
}

/// Labels of per-worker, per-cpu metrics (warm pool, execs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkerCpuLabels<'a> {
    /// The worker.
    pub worker_id: &'a str,
    /// The sandbox's cpu count.
    pub cpu: &'a str,
}

impl LabelSet for WorkerCpuLabels<'_> {
    fn labels(&self) -> Vec<(LabelKey, String)> {
        vec![
            (LabelKey::WorkerId, self.worker_id.to_string()),
            (LabelKey::Cpu, self.cpu.to_string()),
        ]
    }
}

/// Labels of [`WorkerMetrics::ready_duration`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SandboxReadyLabels<'a> {
    /// The worker.
    pub worker_id: &'a str,
    /// `warm` or `cold`.
    pub start_type: &'a str,
    /// The sandbox's cpu count.
    pub cpu: &'a str,
}

impl LabelSet for SandboxReadyLabels<'_> {
    fn labels(&self) -> Vec<(LabelKey, String)> {
        vec![
            (LabelKey::WorkerId, self.worker_id.to_string()),
            (LabelKey::StartType, self.start_type.to_string()),
            (LabelKey::Cpu, self.cpu.to_string()),
        ]
    }
}

/// Labels of [`WorkerMetrics::warmup_failures`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WarmupFailureLabels<'a> {
    /// The worker.
    pub worker_id: &'a str,
    /// The warm tuple's cpu count.
    pub cpu: &'a str,
    /// What failed (`provision`, `warmup`).
    pub reason: &'a str,
}

impl LabelSet for WarmupFailureLabels<'_> {
    fn labels(&self) -> Vec<(LabelKey, String)> {
        vec![
            (LabelKey::WorkerId, self.worker_id.to_string()),
            (LabelKey::Cpu, self.cpu.to_string()),
            (LabelKey::Reason, self.reason.to_string()),
        ]
    }
}

/// Labels of [`WorkerMetrics::auth_failures`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuthFailureLabels<'a> {
    /// The worker.
    pub worker_id: &'a str,
    /// The status answered.
    pub status_code: u16,
    /// Which check failed (`jwt`).
    pub reason: &'a str,
}

impl LabelSet for AuthFailureLabels<'_> {
    fn labels(&self) -> Vec<(LabelKey, String)> {
        vec![
            (LabelKey::WorkerId, self.worker_id.to_string()),
            (LabelKey::StatusCode, self.status_code.to_string()),
            (LabelKey::Reason, self.reason.to_string()),
        ]
    }
}

/// Labels of [`WorkerMetrics::image_pulls`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImagePullLabels<'a> {
    /// The worker.
    pub worker_id: &'a str,
    /// How it ended: `ok`, `not_found`, `unreachable`, `refused` or `error`.
    pub result: &'a str,
}

impl LabelSet for ImagePullLabels<'_> {
    fn labels(&self) -> Vec<(LabelKey, String)> {
        vec![
            (LabelKey::WorkerId, self.worker_id.to_string()),
            (LabelKey::Result, self.result.to_string()),
        ]
    }
}

/// Labels of [`WorkerMetrics::sandbox_network_bytes`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetworkBytesLabels<'a> {
    /// The worker.
    pub worker_id: &'a str,
    /// `sent` or `received` (by the sandboxes).
    pub direction: &'a str,
}

impl LabelSet for NetworkBytesLabels<'_> {
    fn labels(&self) -> Vec<(LabelKey, String)> {
        vec![
            (LabelKey::WorkerId, self.worker_id.to_string()),
            (LabelKey::Direction, self.direction.to_string()),
        ]
    }
}

/// Labels of [`BrokerMetrics::placement_duration`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlacementLabels<'a> {
    /// The worker chosen.
    pub worker_id: &'a str,
    /// `ok_ready` (warm hint) or `ok_cold`.
    pub result: &'a str,
}

impl LabelSet for PlacementLabels<'_> {
    fn labels(&self) -> Vec<(LabelKey, String)> {
        vec![
            (LabelKey::WorkerId, self.worker_id.to_string()),
            (LabelKey::Result, self.result.to_string()),
        ]
    }
}

/// Labels of [`BrokerMetrics::no_capacity`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NoCapacityLabels<'a> {
    /// The status answered.
    pub status_code: u16,
    /// Why nothing could be placed.
    pub reason: &'a str,
}

impl LabelSet for NoCapacityLabels<'_> {
    fn labels(&self) -> Vec<(LabelKey, String)> {
        vec![
            (LabelKey::StatusCode, self.status_code.to_string()),
            (LabelKey::Reason, self.reason.to_string()),
        ]
    }
}

/// Counter, gauge or histogram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MetricKind {
    Counter,
    Gauge,
    Histogram,
}

/// Label pairs sorted by key: the identity of a series, and its rendering order.
type SeriesKey = Vec<(&'static str, String)>;

#[derive(Debug, Clone)]
enum Series {
    Value(f64),
    Histogram {
        counts: Vec<u64>,
        sum: f64,
        count: u64,
    },
}

/// The series of one metric, bounded by [`MAX_SERIES_PER_METRIC`].
#[derive(Debug)]
struct Family {
    name: &'static str,
    help: &'static str,
    kind: MetricKind,
    series: Mutex<BTreeMap<SeriesKey, Series>>,
    dropped: AtomicU64,
}

fn series_key(labels: &impl LabelSet) -> SeriesKey {
    let mut key: SeriesKey = labels
        .labels()
        .into_iter()
        .map(|(k, mut v)| {
            if v.len() > MAX_LABEL_VALUE_LEN {
                let mut cut = MAX_LABEL_VALUE_LEN;
                while !v.is_char_boundary(cut) {
                    cut -= 1;
                }
                v.truncate(cut);
            }
            (k.as_str(), v)
        })
        .collect();
    key.sort();
    key
}

impl Family {
    fn new(name: &'static str, kind: MetricKind, help: &'static str) -> Self {
        Self {
            name,
            help,
            kind,
            series: Mutex::new(BTreeMap::new()),
            dropped: AtomicU64::new(0),
        }
    }

    /// Applies a sample to its series; a new series beyond the bound is dropped and counted.
    fn record(&self, labels: &impl LabelSet, apply: impl FnOnce(&mut Series)) {
        let key = series_key(labels);
        let mut series = self.series.lock().unwrap_or_else(|e| e.into_inner());
        if !series.contains_key(&key) && series.len() >= MAX_SERIES_PER_METRIC {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let kind = self.kind;
        let entry = series.entry(key).or_insert_with(|| match kind {
            MetricKind::Counter | MetricKind::Gauge => Series::Value(0.0),
            MetricKind::Histogram => Series::Histogram {
                counts: vec![0; BUCKETS.len()],
                sum: 0.0,
                count: 0,
            },
        });
        apply(entry);
    }

    fn find(&self, labels: &impl LabelSet) -> Option<Series> {
        let key = series_key(labels);
        let series = self.series.lock().unwrap_or_else(|e| e.into_inner());
        series.get(&key).cloned()
    }

    fn value(&self, labels: &impl LabelSet) -> Option<f64> {
        match self.find(labels)? {
            Series::Value(v) => Some(v),
            Series::Histogram { .. } => None,
        }
    }

    fn render(&self, out: &mut String) {
        let series = self.series.lock().unwrap_or_else(|e| e.into_inner());
        if series.is_empty() {
            return;
        }
        let prom = format!("traforato_{}", self.name.replace('.', "_"));
        let ty = match self.kind {
            MetricKind::Counter => "counter",
            MetricKind::Gauge => "gauge",
            MetricKind::Histogram => "histogram",
        };
        let _ = writeln!(out, "# HELP {prom} {}", self.help);
        let _ = writeln!(out, "# TYPE {prom} {ty}");
        for (labels, s) in series.iter() {
            match s {
                Series::Value(v) => {
                    let _ = writeln!(out, "{prom}{} {}", fmt_labels(labels, None), fmt_num(*v));
                }
                Series::Histogram { counts, sum, count } => {
                    for (bound, n) in BUCKETS.iter().zip(counts) {
                        let le = fmt_num(*bound);
                        let _ = writeln!(out, "{prom}_bucket{} {n}", fmt_labels(labels, Some(&le)));
                    }
                    let _ = writeln!(
                        out,
                        "{prom}_bucket{} {count}",
                        fmt_labels(labels, Some("+Inf"))
                    );
                    let _ = writeln!(
                        out,
                        "{prom}_sum{} {}",
                        fmt_labels(labels, None),
                        fmt_num(*sum)
                    );
                    let _ = writeln!(out, "{prom}_count{} {count}", fmt_labels(labels, None));
                }
            }
        }
    }
}

/// A monotonic total, one series per label set `L`.
#[derive(Debug)]
pub struct Counter<L> {
    family: Family,
    // Covariant in `L`, so a handle declared with `'static` labels takes borrowed ones.
    labels: PhantomData<fn() -> L>,
}

impl<L: LabelSet> Counter<L> {
    fn new(name: &'static str, help: &'static str) -> Self {
        Self {
            family: Family::new(name, MetricKind::Counter, help),
            labels: PhantomData,
        }
    }

    /// Adds 1.
    pub fn inc(&self, labels: &L) {
        self.add(labels, 1.0);
    }

    /// Adds `amount` (a counter only grows: a negative amount is ignored).
    pub fn add(&self, labels: &L, amount: f64) {
        if amount < 0.0 {
            return;
        }
        self.family.record(labels, |s| {
            if let Series::Value(v) = s {
                *v += amount;
            }
        });
    }

    /// The total of a series, if it exists.
    pub fn value(&self, labels: &L) -> Option<f64> {
        self.family.value(labels)
    }
}

/// A last value, one series per label set `L`.
#[derive(Debug)]
pub struct Gauge<L> {
    family: Family,
    labels: PhantomData<fn() -> L>,
}

impl<L: LabelSet> Gauge<L> {
    fn new(name: &'static str, help: &'static str) -> Self {
        Self {
            family: Family::new(name, MetricKind::Gauge, help),
            labels: PhantomData,
        }
    }

    /// Sets the value.
    pub fn set(&self, labels: &L, value: f64) {
        self.family.record(labels, |s| {
            if let Series::Value(v) = s {
                *v = value;
            }
        });
    }

    /// The value of a series, if it exists.
    pub fn value(&self, labels: &L) -> Option<f64> {
        self.family.value(labels)
    }
}

/// A distribution over [`BUCKETS`], one series per label set `L`.
#[derive(Debug)]
pub struct Histogram<L> {
    family: Family,
    labels: PhantomData<fn() -> L>,
}

impl<L: LabelSet> Histogram<L> {
    fn new(name: &'static str, help: &'static str) -> Self {
        Self {
            family: Family::new(name, MetricKind::Histogram, help),
            labels: PhantomData,
        }
    }

    /// Records an observation.
    pub fn observe(&self, labels: &L, value: f64) {
        self.family.record(labels, |s| {
            if let Series::Histogram { counts, sum, count } = s {
                for (bound, n) in BUCKETS.iter().zip(counts.iter_mut()) {
                    if value <= *bound {
                        *n += 1;
                    }
                }
                *sum += value;
                *count += 1;
            }
        });
    }

    /// The number of observations and their sum in a series, if it exists.
    pub fn count_and_sum(&self, labels: &L) -> Option<(u64, f64)> {
        match self.family.find(labels)? {
            Series::Histogram { count, sum, .. } => Some((count, sum)),
            Series::Value(_) => None,
        }
    }

    /// Observations summed over all label sets.
    pub fn total_count(&self) -> u64 {
        let series = self.family.series.lock().unwrap_or_else(|e| e.into_inner());
        series
            .values()
            .map(|s| match s {
                Series::Histogram { count, .. } => *count,
                Series::Value(_) => 0,
            })
            .sum()
    }
}

/// Metrics of the whole process.
#[derive(Debug)]
pub struct ServiceMetrics {
    /// `service.auth.mode`: 1 in prod (JWT) mode, 0 in dev mode.
    pub auth_mode: Gauge<()>,
}

/// Metrics of a worker.
#[derive(Debug)]
pub struct WorkerMetrics {
    /// `worker.cpu.total_cores`: cores the worker offers.
    pub cpu_total_cores: Gauge<WorkerLabels<'static>>,
    /// `worker.memory.total_mib`: memory the worker offers.
    pub memory_total_mib: Gauge<WorkerLabels<'static>>,
    /// `worker.cpu.allocated_cores`: cores allocated to live sandboxes.
    pub cpu_allocated_cores: Gauge<WorkerLabels<'static>>,
    /// `worker.memory.allocated_mib`: memory allocated to live sandboxes.
    pub memory_allocated_mib: Gauge<WorkerLabels<'static>>,
    /// `worker.sandboxes.live`: live sandboxes.
    pub sandboxes_live: Gauge<WorkerLabels<'static>>,
    /// `worker.sandboxes.warm.target`: warm pool target per cpu.
    pub warm_target: Gauge<WorkerCpuLabels<'static>>,
    /// `worker.sandboxes.warm.ready`: ready warm sandboxes per cpu.
    pub warm_ready: Gauge<WorkerCpuLabels<'static>>,
    /// `worker.sandboxes.warm.deficit`: max(target - ready, 0) per cpu.
    pub warm_deficit: Gauge<WorkerCpuLabels<'static>>,
    /// `worker.sandbox.ready.duration_seconds`: create to ready.
    pub ready_duration: Histogram<SandboxReadyLabels<'static>>,
    /// `worker.sandbox.first_exec.tti_seconds`: create to first exec.
    pub first_exec_tti: Histogram<WorkerCpuLabels<'static>>,
    /// `worker.exec.start.duration_seconds`: exec request to start.
    pub exec_start_duration: Histogram<WorkerCpuLabels<'static>>,
    /// `worker.exec.duration_seconds`: exec wall time.
    pub exec_duration: Histogram<WorkerCpuLabels<'static>>,
    /// `worker.warmup.failures.total`: warm sandbox provisioning failures.
    pub warmup_failures: Counter<WarmupFailureLabels<'static>>,
    /// `worker.warm.hit.total`: creates served from the warm pool.
    pub warm_hit: Counter<WorkerCpuLabels<'static>>,
    /// `worker.warm.miss.total`: creates that booted a sandbox.
    pub warm_miss: Counter<WorkerCpuLabels<'static>>,
    /// `worker.auth.failures.total`: requests refused by authentication.
    pub auth_failures: Counter<AuthFailureLabels<'static>>,
    /// `worker.image.pulls.total`: image pulls from a registry (for a create or an
    /// operator), by result.
    pub image_pulls: Counter<ImagePullLabels<'static>>,
    /// `worker.sandbox.network.bytes.total`: what sandboxes' networks carried, counted when
    /// each sandbox ends, by direction.
    pub sandbox_network_bytes: Counter<NetworkBytesLabels<'static>>,
}

/// Metrics of a broker.
#[derive(Debug)]
pub struct BrokerMetrics {
    /// `broker.placement.duration_seconds`: placement decision time.
    pub placement_duration: Histogram<PlacementLabels<'static>>,
    /// `broker.placement.retry`: `placement_retry` of create requests.
    pub placement_retry: Histogram<()>,
    /// `broker.no_capacity.total`: creates refused with 503.
    pub no_capacity: Counter<NoCapacityLabels<'static>>,
}

/// The metric catalogue of one service process: a typed handle per metric. Thread-safe;
/// memory is bounded (allow-listed label keys, [`MAX_SERIES_PER_METRIC`] per metric).
#[derive(Debug)]
pub struct Metrics {
    /// Process-wide metrics.
    pub service: ServiceMetrics,
    /// Worker metrics (unused in a broker-only process).
    pub worker: WorkerMetrics,
    /// Broker metrics (unused in a worker-only process).
    pub broker: BrokerMetrics,
}

impl Metrics {
    /// An empty registry with `service.auth.mode` set.
    pub fn new(prod_auth: bool) -> Self {
        let metrics = Self {
            service: ServiceMetrics {
                auth_mode: Gauge::new("service.auth.mode", "1 in prod (JWT) mode, 0 in dev mode"),
            },
            worker: WorkerMetrics {
                cpu_total_cores: Gauge::new("worker.cpu.total_cores", "cores the worker offers"),
                memory_total_mib: Gauge::new("worker.memory.total_mib", "memory the worker offers"),
                cpu_allocated_cores: Gauge::new(
                    "worker.cpu.allocated_cores",
                    "cores allocated to live sandboxes",
                ),
                memory_allocated_mib: Gauge::new(
                    "worker.memory.allocated_mib",
                    "memory allocated to live sandboxes",
                ),
                sandboxes_live: Gauge::new("worker.sandboxes.live", "live sandboxes"),
                warm_target: Gauge::new("worker.sandboxes.warm.target", "warm pool target per cpu"),
                warm_ready: Gauge::new(
                    "worker.sandboxes.warm.ready",
                    "ready warm sandboxes per cpu",
                ),
                warm_deficit: Gauge::new(
                    "worker.sandboxes.warm.deficit",
                    "max(target - ready, 0) per cpu",
                ),
                ready_duration: Histogram::new(
                    "worker.sandbox.ready.duration_seconds",
                    "create to ready",
                ),
                first_exec_tti: Histogram::new(
                    "worker.sandbox.first_exec.tti_seconds",
                    "create to first exec",
                ),
                exec_start_duration: Histogram::new(
                    "worker.exec.start.duration_seconds",
                    "exec request to start",
                ),
                exec_duration: Histogram::new("worker.exec.duration_seconds", "exec wall time"),
                warmup_failures: Counter::new(
                    "worker.warmup.failures.total",
                    "warm sandbox provisioning failures",
                ),
                warm_hit: Counter::new(
                    "worker.warm.hit.total",
                    "creates served from the warm pool",
                ),
                warm_miss: Counter::new("worker.warm.miss.total", "creates that booted a sandbox"),
                auth_failures: Counter::new(
                    "worker.auth.failures.total",
                    "requests refused by authentication",
                ),
                image_pulls: Counter::new(
                    "worker.image.pulls.total",
                    "image pulls from a registry, by result",
                ),
                sandbox_network_bytes: Counter::new(
                    "worker.sandbox.network.bytes.total",
                    "bytes sandboxes' networks carried, counted when each ends",
                ),
            },
            broker: BrokerMetrics {
                placement_duration: Histogram::new(
                    "broker.placement.duration_seconds",
                    "placement decision time",
                ),
                placement_retry: Histogram::new(
                    "broker.placement.retry",
                    "placement_retry of create requests",
                ),
                no_capacity: Counter::new("broker.no_capacity.total", "creates refused with 503"),
            },
        };
        metrics
            .service
            .auth_mode
            .set(&(), if prod_auth { 1.0 } else { 0.0 });
        metrics
    }

    /// Every metric, in the order `/metrics` lists them.
    fn families(&self) -> [&Family; 22] {
        // Destructured without `..`: a metric added to a struct but not here does not compile.
        let Self {
            service: ServiceMetrics { auth_mode },
            worker:
                WorkerMetrics {
                    cpu_total_cores,
                    memory_total_mib,
                    cpu_allocated_cores,
                    memory_allocated_mib,
                    sandboxes_live,
                    warm_target,
                    warm_ready,
                    warm_deficit,
                    ready_duration,
                    first_exec_tti,
                    exec_start_duration,
                    exec_duration,
                    warmup_failures,
                    warm_hit,
                    warm_miss,
                    auth_failures,
                    image_pulls,
                    sandbox_network_bytes,
                },
            broker:
                BrokerMetrics {
                    placement_duration,
                    placement_retry,
                    no_capacity,
                },
        } = self;
        [
            &auth_mode.family,
            &cpu_total_cores.family,
            &memory_total_mib.family,
            &cpu_allocated_cores.family,
            &memory_allocated_mib.family,
            &sandboxes_live.family,
            &warm_target.family,
            &warm_ready.family,
            &warm_deficit.family,
            &ready_duration.family,
            &first_exec_tti.family,
            &exec_start_duration.family,
            &exec_duration.family,
            &placement_duration.family,
            &placement_retry.family,
            &no_capacity.family,
            &warmup_failures.family,
            &warm_hit.family,
            &warm_miss.family,
            &auth_failures.family,
            &image_pulls.family,
            &sandbox_network_bytes.family,
        ]
    }

    /// Samples refused by the series bound, over all metrics.
    pub fn dropped_samples(&self) -> u64 {
        self.families()
            .iter()
            .map(|f| f.dropped.load(Ordering::Relaxed))
            .sum()
    }

    /// Renders every series in the Prometheus text exposition format (version 0.0.4).
    /// Names have `.` replaced by `_` and are prefixed with `traforato_`; a metric without
    /// series is left out.
    pub fn render_prometheus(&self) -> String {
        let mut out = String::new();
        for family in self.families() {
            family.render(&mut out);
        }
        let _ = writeln!(
            out,
            "# HELP traforato_metrics_dropped_samples_total samples refused by the series bound"
        );
        let _ = writeln!(
            out,
            "# TYPE traforato_metrics_dropped_samples_total counter"
        );
        let _ = writeln!(
            out,
            "traforato_metrics_dropped_samples_total {}",
            self.dropped_samples()
        );
        out
    }
}

fn fmt_num(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn fmt_labels(labels: &SeriesKey, le: Option<&str>) -> String {
    if labels.is_empty() && le.is_none() {
        return String::new();
    }
    let mut parts: Vec<String> = labels
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
        .collect();
    if let Some(le) = le {
        parts.push(format!("le=\"{le}\""));
    }
    format!("{{{}}}", parts.join(","))
}

/// A W3C trace context (`traceparent`, version 00).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    /// 32 lowercase hex characters, not all zero.
    pub trace_id: String,
    /// 16 lowercase hex characters, not all zero: this service's span.
    pub span_id: String,
    /// Trace flags (bit 0: sampled).
    pub flags: u8,
    /// `tracestate`, passed through unchanged.
    pub tracestate: Option<String>,
}

fn is_hex_id(s: &str, len: usize) -> bool {
    s.len() == len
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        && s.bytes().any(|b| b != b'0')
}

impl TraceContext {
    /// Continues the incoming trace with a new span, or starts a new trace when the header is
    /// absent or invalid. `random` supplies 24 bytes of entropy.
    pub fn continue_or_start(
        traceparent: Option<&str>,
        tracestate: Option<&str>,
        random: [u8; 24],
    ) -> Self {
        let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
        let mut span_id = hex(&random[16..24]);
        if span_id.bytes().all(|b| b == b'0') {
            span_id = "0000000000000001".to_string();
        }
        if let Some((trace_id, flags)) = traceparent.and_then(parse_traceparent) {
            return Self {
                trace_id,
                span_id,
                flags,
                tracestate: tracestate
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(String::from),
            };
        }
        let mut trace_id = hex(&random[..16]);
        if trace_id.bytes().all(|b| b == b'0') {
            trace_id = "00000000000000000000000000000001".to_string();
        }
        Self {
            trace_id,
            span_id,
            flags: 0,
            tracestate: None,
        }
    }

    /// The `traceparent` header value for this span.
    pub fn traceparent(&self) -> String {
        format!("00-{}-{}-{:02x}", self.trace_id, self.span_id, self.flags)
    }
}

fn parse_traceparent(raw: &str) -> Option<(String, u8)> {
    let parts: Vec<&str> = raw.trim().split('-').collect();
    if parts.len() < 4 {
        return None;
    }
    let (version, trace_id, parent, flags) = (parts[0], parts[1], parts[2], parts[3]);
    if version.len() != 2 || version == "ff" || !version.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    if version == "00" && parts.len() != 4 {
        return None;
    }
    if !is_hex_id(trace_id, 32) || !is_hex_id(parent, 16) || flags.len() != 2 {
        return None;
    }
    let flags = u8::from_str_radix(flags, 16).ok()?;
    Some((trace_id.to_string(), flags))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_mode_gauge() {
        assert_eq!(Metrics::new(true).service.auth_mode.value(&()), Some(1.0));
        assert_eq!(Metrics::new(false).service.auth_mode.value(&()), Some(0.0));
    }

    #[test]
    fn label_policy() {
        let keys: Vec<&str> = LabelKey::ALL.iter().map(|k| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                "worker_id",
                "virtualization",
                "cpu",
                "start_type",
                "result",
                "status_code",
                "reason",
                "image_family",
                "direction"
            ]
        );
        let m = Metrics::new(false);
        let labels = AuthFailureLabels {
            worker_id: "w",
            status_code: 401,
            reason: "jwt",
        };
        m.worker.auth_failures.inc(&labels);
        assert_eq!(m.worker.auth_failures.value(&labels), Some(1.0));
        let long = "é".repeat(MAX_LABEL_VALUE_LEN);
        let labels = WorkerCpuLabels {
            worker_id: "w",
            cpu: &long,
        };
        m.worker.warm_miss.inc(&labels);
        let truncated = "é".repeat(MAX_LABEL_VALUE_LEN / 2);
        assert!(m
            .render_prometheus()
            .contains(&format!("cpu=\"{truncated}\",worker_id=\"w\"}} 1\n")));
    }

    #[test]
    fn series_are_bounded() {
        let m = Metrics::new(false);
        for i in 0..MAX_SERIES_PER_METRIC + 10 {
            let cpu = i.to_string();
            let labels = WorkerCpuLabels {
                worker_id: "w",
                cpu: &cpu,
            };
            m.worker.warm_miss.inc(&labels);
            let kept = m.worker.warm_miss.value(&labels);
            assert_eq!(kept.is_some(), i < MAX_SERIES_PER_METRIC);
        }
        // Known series still count once the bound is reached.
        let first = WorkerCpuLabels {
            worker_id: "w",
            cpu: "0",
        };
        m.worker.warm_miss.inc(&first);
        assert_eq!(m.worker.warm_miss.value(&first), Some(2.0));
        assert_eq!(m.dropped_samples(), 10);
        assert!(m
            .render_prometheus()
            .contains("traforato_metrics_dropped_samples_total 10"));
    }

    #[test]
    fn renders_prometheus() {
        let m = Metrics::new(true);
        m.broker.placement_retry.observe(&(), 1.0);
        let text = m.render_prometheus();
        assert!(text
            .contains("# TYPE traforato_service_auth_mode gauge\ntraforato_service_auth_mode 1\n"));
        assert!(text.contains("traforato_broker_placement_retry_bucket{le=\"1\"} 1"));
        assert!(text.contains("traforato_broker_placement_retry_bucket{le=\"0.5\"} 0"));
        assert!(text.contains("traforato_broker_placement_retry_count 1"));
        assert!(
            !text.contains("traforato_worker_"),
            "metrics without series are left out"
        );
    }

    /// Drives every metric of the catalogue with known values: label sets in several orders,
    /// a value to escape, one too long, and observations across the histogram buckets.
    fn drive_catalogue(m: &Metrics) {
        let w = WorkerLabels {
            worker_id: "worker_a",
        };
        let wm = &m.worker;
        wm.cpu_total_cores.set(&w, 8.0);
        wm.memory_total_mib.set(&w, 16384.0);
        wm.cpu_allocated_cores.set(&w, 3.0);
        wm.memory_allocated_mib.set(&w, 1536.5);
        wm.sandboxes_live.set(&w, 2.0);
        for (cpu, target, ready) in [("2", 4.0, 1.0), ("1", 2.0, 2.0)] {
            let l = WorkerCpuLabels {
                worker_id: "worker_a",
                cpu,
            };
            wm.warm_target.set(&l, target);
            wm.warm_ready.set(&l, ready);
            wm.warm_deficit.set(&l, target - ready);
        }
        for (start_type, secs) in [("warm", 0.003), ("cold", 0.25), ("cold", 42.0)] {
            let l = SandboxReadyLabels {
                worker_id: "worker_a",
                start_type,
                cpu: "1",
            };
            wm.ready_duration.observe(&l, secs);
        }
        let wc = WorkerCpuLabels {
            worker_id: "worker_a",
            cpu: "1",
        };
        wm.first_exec_tti.observe(&wc, 0.0004);
        wm.exec_start_duration.observe(&wc, 0.001);
        wm.exec_start_duration.observe(&wc, 0.0011);
        wm.exec_duration.observe(&wc, 100.0);
        for (worker_id, result, secs) in
            [("worker_b", "ok_cold", 0.02), ("worker_a", "ok_ready", 1.5)]
        {
            let l = PlacementLabels { worker_id, result };
            m.broker.placement_duration.observe(&l, secs);
        }
        m.broker.placement_retry.observe(&(), 0.0);
        m.broker.placement_retry.observe(&(), 2.0);
        for reason in ["no_worker", "placement_retry_exhausted", "no_worker"] {
            m.broker.no_capacity.inc(&NoCapacityLabels {
                status_code: 503,
                reason,
            });
        }
        wm.warmup_failures.inc(&WarmupFailureLabels {
            worker_id: "worker_a",
            cpu: "1",
            reason: "say \"hi\"\\\n",
        });
        let long = "c".repeat(MAX_LABEL_VALUE_LEN + 5);
        wm.warm_hit.inc(&WorkerCpuLabels {
            worker_id: "worker_a",
            cpu: &long,
        });
        for _ in 0..3 {
            wm.warm_miss.inc(&wc);
        }
        wm.auth_failures.inc(&AuthFailureLabels {
            worker_id: "worker_a",
            status_code: 401,
            reason: "jwt",
        });
    }

    #[test]
    fn render_snapshot_of_the_whole_catalogue() {
        let m = Metrics::new(true);
        drive_catalogue(&m);
        let text = m.render_prometheus();
        assert_eq!(text, RENDER_SNAPSHOT);
    }

    /// Captured from the name-keyed registry before metrics became typed; since then only the
    /// blocks of two metrics that were never emitted (SSH reconnects, IP resolve failures) went.
    const RENDER_SNAPSHOT: &str = r#"# HELP traforato_service_auth_mode 1 in prod (JWT) mode, 0 in dev mode
# TYPE traforato_service_auth_mode gauge
traforato_service_auth_mode 1
# HELP traforato_worker_cpu_total_cores cores the worker offers
# TYPE traforato_worker_cpu_total_cores gauge
traforato_worker_cpu_total_cores{worker_id="worker_a"} 8
# HELP traforato_worker_memory_total_mib memory the worker offers
# TYPE traforato_worker_memory_total_mib gauge
traforato_worker_memory_total_mib{worker_id="worker_a"} 16384
# HELP traforato_worker_cpu_allocated_cores cores allocated to live sandboxes
# TYPE traforato_worker_cpu_allocated_cores gauge
traforato_worker_cpu_allocated_cores{worker_id="worker_a"} 3
# HELP traforato_worker_memory_allocated_mib memory allocated to live sandboxes
# TYPE traforato_worker_memory_allocated_mib gauge
traforato_worker_memory_allocated_mib{worker_id="worker_a"} 1536.5
# HELP traforato_worker_sandboxes_live live sandboxes
# TYPE traforato_worker_sandboxes_live gauge
traforato_worker_sandboxes_live{worker_id="worker_a"} 2
# HELP traforato_worker_sandboxes_warm_target warm pool target per cpu
# TYPE traforato_worker_sandboxes_warm_target gauge
traforato_worker_sandboxes_warm_target{cpu="1",worker_id="worker_a"} 2
traforato_worker_sandboxes_warm_target{cpu="2",worker_id="worker_a"} 4
# HELP traforato_worker_sandboxes_warm_ready ready warm sandboxes per cpu
# TYPE traforato_worker_sandboxes_warm_ready gauge
traforato_worker_sandboxes_warm_ready{cpu="1",worker_id="worker_a"} 2
traforato_worker_sandboxes_warm_ready{cpu="2",worker_id="worker_a"} 1
# HELP traforato_worker_sandboxes_warm_deficit max(target - ready, 0) per cpu
# TYPE traforato_worker_sandboxes_warm_deficit gauge
traforato_worker_sandboxes_warm_deficit{cpu="1",worker_id="worker_a"} 0
traforato_worker_sandboxes_warm_deficit{cpu="2",worker_id="worker_a"} 3
# HELP traforato_worker_sandbox_ready_duration_seconds create to ready
# TYPE traforato_worker_sandbox_ready_duration_seconds histogram
traforato_worker_sandbox_ready_duration_seconds_bucket{cpu="1",start_type="cold",worker_id="worker_a",le="0.0005"} 0
traforato_worker_sandbox_ready_duration_seconds_bucket{cpu="1",start_type="cold",worker_id="worker_a",le="0.001"} 0
traforato_worker_sandbox_ready_duration_seconds_bucket{cpu="1",start_type="cold",worker_id="worker_a",le="0.0025"} 0
traforato_worker_sandbox_ready_duration_seconds_bucket{cpu="1",start_type="cold",worker_id="worker_a",le="0.005"} 0
traforato_worker_sandbox_ready_duration_seconds_bucket{cpu="1",start_type="cold",worker_id="worker_a",le="0.01"} 0
traforato_worker_sandbox_ready_duration_seconds_bucket{cpu="1",start_type="cold",worker_id="worker_a",le="0.025"} 0
traforato_worker_sandbox_ready_duration_seconds_bucket{cpu="1",start_type="cold",worker_id="worker_a",le="0.05"} 0
traforato_worker_sandbox_ready_duration_seconds_bucket{cpu="1",start_type="cold",worker_id="worker_a",le="0.1"} 0
traforato_worker_sandbox_ready_duration_seconds_bucket{cpu="1",start_type="cold",worker_id="worker_a",le="0.25"} 1
traforato_worker_sandbox_ready_duration_seconds_bucket{cpu="1",start_type="cold",worker_id="worker_a",le="0.5"} 1
traforato_worker_sandbox_ready_duration_seconds_bucket{cpu="1",start_type="cold",worker_id="worker_a",le="1"} 1
traforato_worker_sandbox_ready_duration_seconds_bucket{cpu="1",start_type="cold",worker_id="worker_a",le="2.5"} 1
traforato_worker_sandbox_ready_duration_seconds_bucket{cpu="1",start_type="cold",worker_id="worker_a",le="5"} 1
traforato_worker_sandbox_ready_duration_seconds_bucket{cpu="1",start_type="cold",worker_id="worker_a",le="10"} 1
traforato_worker_sandbox_ready_duration_seconds_bucket{cpu="1",start_type="cold",worker_id="worker_a",le="30"} 1
traforato_worker_sandbox_ready_duration_seconds_bucket{cpu="1",start_type="cold",worker_id="worker_a",le="60"} 2
traforato_worker_sandbox_ready_duration_seconds_bucket{cpu="1",start_type="cold",worker_id="worker_a",le="+Inf"} 2
traforato_worker_sandbox_ready_duration_seconds_sum{cpu="1",start_type="cold",worker_id="worker_a"} 42.25
traforato_worker_sandbox_ready_duration_seconds_count{cpu="1",start_type="cold",worker_id="worker_a"} 2
traforato_worker_sandbox_ready_duration_seconds_bucket{cpu="1",start_type="warm",worker_id="worker_a",le="0.0005"} 0
traforato_worker_sandbox_ready_duration_seconds_bucket{cpu="1",start_type="warm",worker_id="worker_a",le="0.001"} 0
traforato_worker_sandbox_ready_duration_seconds_bucket{cpu="1",start_type="warm",worker_id="worker_a",le="0.0025"} 0
traforato_worker_sandbox_ready_duration_seconds_bucket{cpu="1",start_type="warm",worker_id="worker_a",le="0.005"} 1
traforato_worker_sandbox_ready_duration_seconds_bucket{cpu="1",start_type="warm",worker_id="worker_a",le="0.01"} 1
traforato_worker_sandbox_ready_duration_seconds_bucket{cpu="1",start_type="warm",worker_id="worker_a",le="0.025"} 1
traforato_worker_sandbox_ready_duration_seconds_bucket{cpu="1",start_type="warm",worker_id="worker_a",le="0.05"} 1
traforato_worker_sandbox_ready_duration_seconds_bucket{cpu="1",start_type="warm",worker_id="worker_a",le="0.1"} 1
traforato_worker_sandbox_ready_duration_seconds_bucket{cpu="1",start_type="warm",worker_id="worker_a",le="0.25"} 1
traforato_worker_sandbox_ready_duration_seconds_bucket{cpu="1",start_type="warm",worker_id="worker_a",le="0.5"} 1
traforato_worker_sandbox_ready_duration_seconds_bucket{cpu="1",start_type="warm",worker_id="worker_a",le="1"} 1
traforato_worker_sandbox_ready_duration_seconds_bucket{cpu="1",start_type="warm",worker_id="worker_a",le="2.5"} 1
traforato_worker_sandbox_ready_duration_seconds_bucket{cpu="1",start_type="warm",worker_id="worker_a",le="5"} 1
traforato_worker_sandbox_ready_duration_seconds_bucket{cpu="1",start_type="warm",worker_id="worker_a",le="10"} 1
traforato_worker_sandbox_ready_duration_seconds_bucket{cpu="1",start_type="warm",worker_id="worker_a",le="30"} 1
traforato_worker_sandbox_ready_duration_seconds_bucket{cpu="1",start_type="warm",worker_id="worker_a",le="60"} 1
traforato_worker_sandbox_ready_duration_seconds_bucket{cpu="1",start_type="warm",worker_id="worker_a",le="+Inf"} 1
traforato_worker_sandbox_ready_duration_seconds_sum{cpu="1",start_type="warm",worker_id="worker_a"} 0.003
traforato_worker_sandbox_ready_duration_seconds_count{cpu="1",start_type="warm",worker_id="worker_a"} 1
# HELP traforato_worker_sandbox_first_exec_tti_seconds create to first exec
# TYPE traforato_worker_sandbox_first_exec_tti_seconds histogram
traforato_worker_sandbox_first_exec_tti_seconds_bucket{cpu="1",worker_id="worker_a",le="0.0005"} 1
traforato_worker_sandbox_first_exec_tti_seconds_bucket{cpu="1",worker_id="worker_a",le="0.001"} 1
traforato_worker_sandbox_first_exec_tti_seconds_bucket{cpu="1",worker_id="worker_a",le="0.0025"} 1
traforato_worker_sandbox_first_exec_tti_seconds_bucket{cpu="1",worker_id="worker_a",le="0.005"} 1
traforato_worker_sandbox_first_exec_tti_seconds_bucket{cpu="1",worker_id="worker_a",le="0.01"} 1
traforato_worker_sandbox_first_exec_tti_seconds_bucket{cpu="1",worker_id="worker_a",le="0.025"} 1
traforato_worker_sandbox_first_exec_tti_seconds_bucket{cpu="1",worker_id="worker_a",le="0.05"} 1
traforato_worker_sandbox_first_exec_tti_seconds_bucket{cpu="1",worker_id="worker_a",le="0.1"} 1
traforato_worker_sandbox_first_exec_tti_seconds_bucket{cpu="1",worker_id="worker_a",le="0.25"} 1
traforato_worker_sandbox_first_exec_tti_seconds_bucket{cpu="1",worker_id="worker_a",le="0.5"} 1
traforato_worker_sandbox_first_exec_tti_seconds_bucket{cpu="1",worker_id="worker_a",le="1"} 1
traforato_worker_sandbox_first_exec_tti_seconds_bucket{cpu="1",worker_id="worker_a",le="2.5"} 1
traforato_worker_sandbox_first_exec_tti_seconds_bucket{cpu="1",worker_id="worker_a",le="5"} 1
traforato_worker_sandbox_first_exec_tti_seconds_bucket{cpu="1",worker_id="worker_a",le="10"} 1
traforato_worker_sandbox_first_exec_tti_seconds_bucket{cpu="1",worker_id="worker_a",le="30"} 1
traforato_worker_sandbox_first_exec_tti_seconds_bucket{cpu="1",worker_id="worker_a",le="60"} 1
traforato_worker_sandbox_first_exec_tti_seconds_bucket{cpu="1",worker_id="worker_a",le="+Inf"} 1
traforato_worker_sandbox_first_exec_tti_seconds_sum{cpu="1",worker_id="worker_a"} 0.0004
traforato_worker_sandbox_first_exec_tti_seconds_count{cpu="1",worker_id="worker_a"} 1
# HELP traforato_worker_exec_start_duration_seconds exec request to start
# TYPE traforato_worker_exec_start_duration_seconds histogram
traforato_worker_exec_start_duration_seconds_bucket{cpu="1",worker_id="worker_a",le="0.0005"} 0
traforato_worker_exec_start_duration_seconds_bucket{cpu="1",worker_id="worker_a",le="0.001"} 1
traforato_worker_exec_start_duration_seconds_bucket{cpu="1",worker_id="worker_a",le="0.0025"} 2
traforato_worker_exec_start_duration_seconds_bucket{cpu="1",worker_id="worker_a",le="0.005"} 2
traforato_worker_exec_start_duration_seconds_bucket{cpu="1",worker_id="worker_a",le="0.01"} 2
traforato_worker_exec_start_duration_seconds_bucket{cpu="1",worker_id="worker_a",le="0.025"} 2
traforato_worker_exec_start_duration_seconds_bucket{cpu="1",worker_id="worker_a",le="0.05"} 2
traforato_worker_exec_start_duration_seconds_bucket{cpu="1",worker_id="worker_a",le="0.1"} 2
traforato_worker_exec_start_duration_seconds_bucket{cpu="1",worker_id="worker_a",le="0.25"} 2
traforato_worker_exec_start_duration_seconds_bucket{cpu="1",worker_id="worker_a",le="0.5"} 2
traforato_worker_exec_start_duration_seconds_bucket{cpu="1",worker_id="worker_a",le="1"} 2
traforato_worker_exec_start_duration_seconds_bucket{cpu="1",worker_id="worker_a",le="2.5"} 2
traforato_worker_exec_start_duration_seconds_bucket{cpu="1",worker_id="worker_a",le="5"} 2
traforato_worker_exec_start_duration_seconds_bucket{cpu="1",worker_id="worker_a",le="10"} 2
traforato_worker_exec_start_duration_seconds_bucket{cpu="1",worker_id="worker_a",le="30"} 2
traforato_worker_exec_start_duration_seconds_bucket{cpu="1",worker_id="worker_a",le="60"} 2
traforato_worker_exec_start_duration_seconds_bucket{cpu="1",worker_id="worker_a",le="+Inf"} 2
traforato_worker_exec_start_duration_seconds_sum{cpu="1",worker_id="worker_a"} 0.0021000000000000003
traforato_worker_exec_start_duration_seconds_count{cpu="1",worker_id="worker_a"} 2
# HELP traforato_worker_exec_duration_seconds exec wall time
# TYPE traforato_worker_exec_duration_seconds histogram
traforato_worker_exec_duration_seconds_bucket{cpu="1",worker_id="worker_a",le="0.0005"} 0
traforato_worker_exec_duration_seconds_bucket{cpu="1",worker_id="worker_a",le="0.001"} 0
traforato_worker_exec_duration_seconds_bucket{cpu="1",worker_id="worker_a",le="0.0025"} 0
traforato_worker_exec_duration_seconds_bucket{cpu="1",worker_id="worker_a",le="0.005"} 0
traforato_worker_exec_duration_seconds_bucket{cpu="1",worker_id="worker_a",le="0.01"} 0
traforato_worker_exec_duration_seconds_bucket{cpu="1",worker_id="worker_a",le="0.025"} 0
traforato_worker_exec_duration_seconds_bucket{cpu="1",worker_id="worker_a",le="0.05"} 0
traforato_worker_exec_duration_seconds_bucket{cpu="1",worker_id="worker_a",le="0.1"} 0
traforato_worker_exec_duration_seconds_bucket{cpu="1",worker_id="worker_a",le="0.25"} 0
traforato_worker_exec_duration_seconds_bucket{cpu="1",worker_id="worker_a",le="0.5"} 0
traforato_worker_exec_duration_seconds_bucket{cpu="1",worker_id="worker_a",le="1"} 0
traforato_worker_exec_duration_seconds_bucket{cpu="1",worker_id="worker_a",le="2.5"} 0
traforato_worker_exec_duration_seconds_bucket{cpu="1",worker_id="worker_a",le="5"} 0
traforato_worker_exec_duration_seconds_bucket{cpu="1",worker_id="worker_a",le="10"} 0
traforato_worker_exec_duration_seconds_bucket{cpu="1",worker_id="worker_a",le="30"} 0
traforato_worker_exec_duration_seconds_bucket{cpu="1",worker_id="worker_a",le="60"} 0
traforato_worker_exec_duration_seconds_bucket{cpu="1",worker_id="worker_a",le="+Inf"} 1
traforato_worker_exec_duration_seconds_sum{cpu="1",worker_id="worker_a"} 100
traforato_worker_exec_duration_seconds_count{cpu="1",worker_id="worker_a"} 1
# HELP traforato_broker_placement_duration_seconds placement decision time
# TYPE traforato_broker_placement_duration_seconds histogram
traforato_broker_placement_duration_seconds_bucket{result="ok_cold",worker_id="worker_b",le="0.0005"} 0
traforato_broker_placement_duration_seconds_bucket{result="ok_cold",worker_id="worker_b",le="0.001"} 0
traforato_broker_placement_duration_seconds_bucket{result="ok_cold",worker_id="worker_b",le="0.0025"} 0
traforato_broker_placement_duration_seconds_bucket{result="ok_cold",worker_id="worker_b",le="0.005"} 0
traforato_broker_placement_duration_seconds_bucket{result="ok_cold",worker_id="worker_b",le="0.01"} 0
traforato_broker_placement_duration_seconds_bucket{result="ok_cold",worker_id="worker_b",le="0.025"} 1
traforato_broker_placement_duration_seconds_bucket{result="ok_cold",worker_id="worker_b",le="0.05"} 1
traforato_broker_placement_duration_seconds_bucket{result="ok_cold",worker_id="worker_b",le="0.1"} 1
traforato_broker_placement_duration_seconds_bucket{result="ok_cold",worker_id="worker_b",le="0.25"} 1
traforato_broker_placement_duration_seconds_bucket{result="ok_cold",worker_id="worker_b",le="0.5"} 1
traforato_broker_placement_duration_seconds_bucket{result="ok_cold",worker_id="worker_b",le="1"} 1
traforato_broker_placement_duration_seconds_bucket{result="ok_cold",worker_id="worker_b",le="2.5"} 1
traforato_broker_placement_duration_seconds_bucket{result="ok_cold",worker_id="worker_b",le="5"} 1
traforato_broker_placement_duration_seconds_bucket{result="ok_cold",worker_id="worker_b",le="10"} 1
traforato_broker_placement_duration_seconds_bucket{result="ok_cold",worker_id="worker_b",le="30"} 1
traforato_broker_placement_duration_seconds_bucket{result="ok_cold",worker_id="worker_b",le="60"} 1
traforato_broker_placement_duration_seconds_bucket{result="ok_cold",worker_id="worker_b",le="+Inf"} 1
traforato_broker_placement_duration_seconds_sum{result="ok_cold",worker_id="worker_b"} 0.02
traforato_broker_placement_duration_seconds_count{result="ok_cold",worker_id="worker_b"} 1
traforato_broker_placement_duration_seconds_bucket{result="ok_ready",worker_id="worker_a",le="0.0005"} 0
traforato_broker_placement_duration_seconds_bucket{result="ok_ready",worker_id="worker_a",le="0.001"} 0
traforato_broker_placement_duration_seconds_bucket{result="ok_ready",worker_id="worker_a",le="0.0025"} 0
traforato_broker_placement_duration_seconds_bucket{result="ok_ready",worker_id="worker_a",le="0.005"} 0
traforato_broker_placement_duration_seconds_bucket{result="ok_ready",worker_id="worker_a",le="0.01"} 0
traforato_broker_placement_duration_seconds_bucket{result="ok_ready",worker_id="worker_a",le="0.025"} 0
traforato_broker_placement_duration_seconds_bucket{result="ok_ready",worker_id="worker_a",le="0.05"} 0
traforato_broker_placement_duration_seconds_bucket{result="ok_ready",worker_id="worker_a",le="0.1"} 0
traforato_broker_placement_duration_seconds_bucket{result="ok_ready",worker_id="worker_a",le="0.25"} 0
traforato_broker_placement_duration_seconds_bucket{result="ok_ready",worker_id="worker_a",le="0.5"} 0
traforato_broker_placement_duration_seconds_bucket{result="ok_ready",worker_id="worker_a",le="1"} 0
traforato_broker_placement_duration_seconds_bucket{result="ok_ready",worker_id="worker_a",le="2.5"} 1
traforato_broker_placement_duration_seconds_bucket{result="ok_ready",worker_id="worker_a",le="5"} 1
traforato_broker_placement_duration_seconds_bucket{result="ok_ready",worker_id="worker_a",le="10"} 1
traforato_broker_placement_duration_seconds_bucket{result="ok_ready",worker_id="worker_a",le="30"} 1
traforato_broker_placement_duration_seconds_bucket{result="ok_ready",worker_id="worker_a",le="60"} 1
traforato_broker_placement_duration_seconds_bucket{result="ok_ready",worker_id="worker_a",le="+Inf"} 1
traforato_broker_placement_duration_seconds_sum{result="ok_ready",worker_id="worker_a"} 1.5
traforato_broker_placement_duration_seconds_count{result="ok_ready",worker_id="worker_a"} 1
# HELP traforato_broker_placement_retry placement_retry of create requests
# TYPE traforato_broker_placement_retry histogram
traforato_broker_placement_retry_bucket{le="0.0005"} 1
traforato_broker_placement_retry_bucket{le="0.001"} 1
traforato_broker_placement_retry_bucket{le="0.0025"} 1
traforato_broker_placement_retry_bucket{le="0.005"} 1
traforato_broker_placement_retry_bucket{le="0.01"} 1
traforato_broker_placement_retry_bucket{le="0.025"} 1
traforato_broker_placement_retry_bucket{le="0.05"} 1
traforato_broker_placement_retry_bucket{le="0.1"} 1
traforato_broker_placement_retry_bucket{le="0.25"} 1
traforato_broker_placement_retry_bucket{le="0.5"} 1
traforato_broker_placement_retry_bucket{le="1"} 1
traforato_broker_placement_retry_bucket{le="2.5"} 2
traforato_broker_placement_retry_bucket{le="5"} 2
traforato_broker_placement_retry_bucket{le="10"} 2
traforato_broker_placement_retry_bucket{le="30"} 2
traforato_broker_placement_retry_bucket{le="60"} 2
traforato_broker_placement_retry_bucket{le="+Inf"} 2
traforato_broker_placement_retry_sum 2
traforato_broker_placement_retry_count 2
# HELP traforato_broker_no_capacity_total creates refused with 503
# TYPE traforato_broker_no_capacity_total counter
traforato_broker_no_capacity_total{reason="no_worker",status_code="503"} 2
traforato_broker_no_capacity_total{reason="placement_retry_exhausted",status_code="503"} 1
# HELP traforato_worker_warmup_failures_total warm sandbox provisioning failures
# TYPE traforato_worker_warmup_failures_total counter
traforato_worker_warmup_failures_total{cpu="1",reason="say \"hi\"\\\n",worker_id="worker_a"} 1
# HELP traforato_worker_warm_hit_total creates served from the warm pool
# TYPE traforato_worker_warm_hit_total counter
traforato_worker_warm_hit_total{cpu="cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc",worker_id="worker_a"} 1
# HELP traforato_worker_warm_miss_total creates that booted a sandbox
# TYPE traforato_worker_warm_miss_total counter
traforato_worker_warm_miss_total{cpu="1",worker_id="worker_a"} 3
# HELP traforato_worker_auth_failures_total requests refused by authentication
# TYPE traforato_worker_auth_failures_total counter
traforato_worker_auth_failures_total{reason="jwt",status_code="401",worker_id="worker_a"} 1
# HELP traforato_metrics_dropped_samples_total samples refused by the series bound
# TYPE traforato_metrics_dropped_samples_total counter
traforato_metrics_dropped_samples_total 0
"#;

    #[test]
    fn trace_context() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let c = TraceContext::continue_or_start(Some(tp), Some("k=v"), [7; 24]);
        assert_eq!(c.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(c.span_id, "0707070707070707");
        assert_eq!(
            c.traceparent(),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0707070707070707-01"
        );
        assert_eq!(c.tracestate.as_deref(), Some("k=v"));
        let fresh = TraceContext::continue_or_start(Some("garbage"), None, [1; 24]);
        assert_eq!(fresh.trace_id, "01".repeat(16));
        assert_eq!(fresh.flags, 0);
    }
}
