//! Metrics: the catalogue, the label policy and a bounded in-memory registry rendered as
//! Prometheus text. Also W3C trace-context parsing and formatting.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;

/// Label keys allowed on any metric.
pub const ALLOWED_LABELS: &[&str] = &[
    "worker_id",
    "virtualization",
    "cpu",
    "start_type",
    "result",
    "status_code",
    "reason",
    "image_family",
];

/// Most distinct label sets kept per metric; further ones are dropped and counted.
pub const MAX_SERIES_PER_METRIC: usize = 256;

/// Label values longer than this are truncated (values such as `cpu` come from clients).
pub const MAX_LABEL_VALUE_LEN: usize = 64;

/// Histogram bucket bounds, in seconds (or plain units for non-duration observations).
pub const BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];

/// The metric catalogue: name, kind and help text.
pub const CATALOGUE: &[(&str, MetricKind, &str)] = &[
    (
        "service.auth.mode",
        MetricKind::Gauge,
        "1 in prod (JWT) mode, 0 in dev mode",
    ),
    (
        "worker.cpu.total_cores",
        MetricKind::Gauge,
        "cores the worker offers",
    ),
    (
        "worker.memory.total_mib",
        MetricKind::Gauge,
        "memory the worker offers",
    ),
    (
        "worker.cpu.allocated_cores",
        MetricKind::Gauge,
        "cores allocated to live sandboxes",
    ),
    (
        "worker.memory.allocated_mib",
        MetricKind::Gauge,
        "memory allocated to live sandboxes",
    ),
    ("worker.sandboxes.live", MetricKind::Gauge, "live sandboxes"),
    (
        "worker.sandboxes.warm.target",
        MetricKind::Gauge,
        "warm pool target per cpu",
    ),
    (
        "worker.sandboxes.warm.ready",
        MetricKind::Gauge,
        "ready warm sandboxes per cpu",
    ),
    (
        "worker.sandboxes.warm.deficit",
        MetricKind::Gauge,
        "max(target - ready, 0) per cpu",
    ),
    (
        "worker.sandbox.ready.duration_seconds",
        MetricKind::Histogram,
        "create to ready",
    ),
    (
        "worker.sandbox.first_exec.tti_seconds",
        MetricKind::Histogram,
        "create to first exec",
    ),
    (
        "worker.exec.start.duration_seconds",
        MetricKind::Histogram,
        "exec request to start",
    ),
    (
        "worker.exec.duration_seconds",
        MetricKind::Histogram,
        "exec wall time",
    ),
    (
        "broker.placement.duration_seconds",
        MetricKind::Histogram,
        "placement decision time",
    ),
    (
        "broker.placement.retry",
        MetricKind::Histogram,
        "placement_retry of create requests",
    ),
    (
        "broker.no_capacity.total",
        MetricKind::Counter,
        "creates refused with 503",
    ),
    (
        "worker.warmup.failures.total",
        MetricKind::Counter,
        "warm sandbox provisioning failures",
    ),
    (
        "worker.ssh.reconnects.total",
        MetricKind::Counter,
        "SSH reconnections",
    ),
    (
        "worker.warm.hit.total",
        MetricKind::Counter,
        "creates served from the warm pool",
    ),
    (
        "worker.warm.miss.total",
        MetricKind::Counter,
        "creates that booted a sandbox",
    ),
    (
        "worker.auth.failures.total",
        MetricKind::Counter,
        "requests refused by authentication",
    ),
    (
        "worker.network.ip_resolve.failures.total",
        MetricKind::Counter,
        "sandbox address resolution failures",
    ),
];

/// Counter, gauge or histogram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    /// Monotonic total.
    Counter,
    /// Last value.
    Gauge,
    /// Distribution of observations.
    Histogram,
}

/// Why a sample was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetricsError {
    /// The label key is denied or not on the allow-list.
    #[error("high-cardinality label rejected: {0}")]
    HighCardinalityLabel(String),
    /// The metric is not in the catalogue.
    #[error("unknown metric: {0}")]
    UnknownMetric(String),
    /// The metric already has [`MAX_SERIES_PER_METRIC`] label sets.
    #[error("too many series for metric {0}")]
    TooManySeries(String),
}

type Labels = Vec<(String, String)>;

#[derive(Debug, Clone)]
enum Series {
    Counter(f64),
    Gauge(f64),
    Histogram {
        counts: Vec<u64>,
        sum: f64,
        count: u64,
    },
}

#[derive(Debug, Default)]
struct State {
    series: BTreeMap<&'static str, BTreeMap<Labels, Series>>,
    dropped: u64,
}

/// A metrics registry for one service process. Thread-safe; memory is bounded.
#[derive(Debug, Default)]
pub struct Metrics {
    state: Mutex<State>,
}

fn catalogue_entry(name: &str) -> Option<(&'static str, MetricKind)> {
    CATALOGUE
        .iter()
        .find(|(n, _, _)| *n == name)
        .map(|(n, k, _)| (*n, *k))
}

/// Checks a label key against the policy.
pub fn check_label(key: &str) -> Result<(), MetricsError> {
    if ALLOWED_LABELS.contains(&key) {
        Ok(())
    } else {
        Err(MetricsError::HighCardinalityLabel(key.to_string()))
    }
}

impl Metrics {
    /// An empty registry with `service.auth.mode` set.
    pub fn new(prod_auth: bool) -> Self {
        let m = Self::default();
        m.set_gauge("service.auth.mode", &[], if prod_auth { 1.0 } else { 0.0 })
            .expect("service.auth.mode is in the catalogue");
        m
    }

    fn record(
        &self,
        name: &str,
        labels: &[(&str, &str)],
        expect: MetricKind,
        apply: impl FnOnce(&mut Series),
    ) -> Result<(), MetricsError> {
        let (name, kind) =
            catalogue_entry(name).ok_or_else(|| MetricsError::UnknownMetric(name.to_string()))?;
        debug_assert_eq!(kind, expect, "metric {name} used as {expect:?}");
        let mut key: Labels = Vec::with_capacity(labels.len());
        for (k, v) in labels {
            check_label(k)?;
            let mut v = v.to_string();
            if v.len() > MAX_LABEL_VALUE_LEN {
                let mut cut = MAX_LABEL_VALUE_LEN;
                while !v.is_char_boundary(cut) {
                    cut -= 1;
                }
                v.truncate(cut);
            }
            key.push((k.to_string(), v));
        }
        key.sort();
        let mut state = self.state.lock().expect("metrics lock");
        let per_metric = state.series.entry(name).or_default();
        if !per_metric.contains_key(&key) && per_metric.len() >= MAX_SERIES_PER_METRIC {
            state.dropped += 1;
            return Err(MetricsError::TooManySeries(name.to_string()));
        }
        let series = per_metric.entry(key).or_insert_with(|| match kind {
            MetricKind::Counter => Series::Counter(0.0),
            MetricKind::Gauge => Series::Gauge(0.0),
            MetricKind::Histogram => Series::Histogram {
                counts: vec![0; BUCKETS.len()],
                sum: 0.0,
                count: 0,
            },
        });
        apply(series);
        Ok(())
    }

    /// Adds 1 to a counter. A refused sample is dropped (and returned as an error).
    pub fn inc(&self, name: &str, labels: &[(&str, &str)]) -> Result<(), MetricsError> {
        self.record(name, labels, MetricKind::Counter, |s| {
            if let Series::Counter(v) = s {
                *v += 1.0;
            }
        })
    }

    /// Sets a gauge.
    pub fn set_gauge(
        &self,
        name: &str,
        labels: &[(&str, &str)],
        value: f64,
    ) -> Result<(), MetricsError> {
        self.record(name, labels, MetricKind::Gauge, |s| {
            if let Series::Gauge(v) = s {
                *v = value;
            }
        })
    }

    /// Records an observation in a histogram.
    pub fn observe(
        &self,
        name: &str,
        labels: &[(&str, &str)],
        value: f64,
    ) -> Result<(), MetricsError> {
        self.record(name, labels, MetricKind::Histogram, |s| {
            if let Series::Histogram { counts, sum, count } = s {
                for (i, b) in BUCKETS.iter().enumerate() {
                    if value <= *b {
                        counts[i] += 1;
                    }
                }
                *sum += value;
                *count += 1;
            }
        })
    }

    fn find(&self, name: &str, labels: &[(&str, &str)]) -> Option<Series> {
        let mut key: Labels = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        key.sort();
        let state = self.state.lock().expect("metrics lock");
        state.series.get(name)?.get(&key).cloned()
    }

    /// The value of a counter or gauge series, if it exists.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        match self.find(name, labels)? {
            Series::Counter(v) | Series::Gauge(v) => Some(v),
            Series::Histogram { .. } => None,
        }
    }

    /// The number of observations and their sum in a histogram series, if it exists.
    pub fn histogram(&self, name: &str, labels: &[(&str, &str)]) -> Option<(u64, f64)> {
        match self.find(name, labels)? {
            Series::Histogram { count, sum, .. } => Some((count, sum)),
            _ => None,
        }
    }

    /// Observations of a histogram summed over all its label sets.
    pub fn histogram_total_count(&self, name: &str) -> u64 {
        let state = self.state.lock().expect("metrics lock");
        state
            .series
            .get(name)
            .map(|m| {
                m.values()
                    .map(|s| match s {
                        Series::Histogram { count, .. } => *count,
                        _ => 0,
                    })
                    .sum()
            })
            .unwrap_or(0)
    }

    /// Renders every series in the Prometheus text exposition format (version 0.0.4).
    /// Names have `.` replaced by `_` and are prefixed with `traforato_`.
    pub fn render_prometheus(&self) -> String {
        let state = self.state.lock().expect("metrics lock");
        let mut out = String::new();
        for (name, kind, help) in CATALOGUE {
            let Some(series) = state.series.get(name) else {
                continue;
            };
            let prom = format!("traforato_{}", name.replace('.', "_"));
            let ty = match kind {
                MetricKind::Counter => "counter",
                MetricKind::Gauge => "gauge",
                MetricKind::Histogram => "histogram",
            };
            let _ = writeln!(out, "# HELP {prom} {help}");
            let _ = writeln!(out, "# TYPE {prom} {ty}");
            for (labels, s) in series {
                match s {
                    Series::Counter(v) | Series::Gauge(v) => {
                        let _ = writeln!(out, "{prom}{} {}", fmt_labels(labels, None), fmt_num(*v));
                    }
                    Series::Histogram { counts, sum, count } => {
                        for (i, b) in BUCKETS.iter().enumerate() {
                            let le = fmt_num(*b);
                            let _ = writeln!(
                                out,
                                "{prom}_bucket{} {}",
                                fmt_labels(labels, Some(&le)),
                                counts[i]
                            );
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
            state.dropped
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

fn fmt_labels(labels: &Labels, le: Option<&str>) -> String {
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
        assert_eq!(
            Metrics::new(true).value("service.auth.mode", &[]),
            Some(1.0)
        );
        assert_eq!(
            Metrics::new(false).value("service.auth.mode", &[]),
            Some(0.0)
        );
    }

    #[test]
    fn label_policy() {
        let m = Metrics::new(false);
        assert!(matches!(
            m.inc("worker.warm.hit.total", &[("sandbox_id", "x")]),
            Err(MetricsError::HighCardinalityLabel(_))
        ));
        assert!(matches!(
            m.inc("worker.warm.hit.total", &[("custom", "x")]),
            Err(MetricsError::HighCardinalityLabel(_))
        ));
        m.inc(
            "worker.auth.failures.total",
            &[("status_code", "401"), ("worker_id", "w")],
        )
        .unwrap();
        assert_eq!(
            m.value(
                "worker.auth.failures.total",
                &[("worker_id", "w"), ("status_code", "401")]
            ),
            Some(1.0)
        );
    }

    #[test]
    fn series_are_bounded() {
        let m = Metrics::new(false);
        for i in 0..MAX_SERIES_PER_METRIC + 10 {
            let cpu = i.to_string();
            let r = m.inc("worker.warm.miss.total", &[("cpu", &cpu)]);
            assert_eq!(r.is_ok(), i < MAX_SERIES_PER_METRIC);
        }
        assert!(m
            .render_prometheus()
            .contains("traforato_metrics_dropped_samples_total 10"));
    }

    #[test]
    fn renders_prometheus() {
        let m = Metrics::new(true);
        m.observe("broker.placement.retry", &[], 1.0).unwrap();
        let text = m.render_prometheus();
        assert!(text
            .contains("# TYPE traforato_service_auth_mode gauge\ntraforato_service_auth_mode 1\n"));
        assert!(text.contains("traforato_broker_placement_retry_bucket{le=\"1\"} 1"));
        assert!(text.contains("traforato_broker_placement_retry_bucket{le=\"0.5\"} 0"));
        assert!(text.contains("traforato_broker_placement_retry_count 1"));
    }

    /// Drives every metric of the catalogue with known values: label sets in several orders,
    /// a value to escape, one too long, and observations across the histogram buckets.
    fn drive_catalogue(m: &Metrics) {
        let w = [("worker_id", "worker_a")];
        m.set_gauge("worker.cpu.total_cores", &w, 8.0).unwrap();
        m.set_gauge("worker.memory.total_mib", &w, 16384.0).unwrap();
        m.set_gauge("worker.cpu.allocated_cores", &w, 3.0).unwrap();
        m.set_gauge("worker.memory.allocated_mib", &w, 1536.5)
            .unwrap();
        m.set_gauge("worker.sandboxes.live", &w, 2.0).unwrap();
        for (cpu, target, ready) in [("2", 4.0, 1.0), ("1", 2.0, 2.0)] {
            let l = [("worker_id", "worker_a"), ("cpu", cpu)];
            m.set_gauge("worker.sandboxes.warm.target", &l, target)
                .unwrap();
            m.set_gauge("worker.sandboxes.warm.ready", &l, ready)
                .unwrap();
            m.set_gauge("worker.sandboxes.warm.deficit", &l, target - ready)
                .unwrap();
        }
        for (start, secs) in [("warm", 0.003), ("cold", 0.25), ("cold", 42.0)] {
            let l = [
                ("worker_id", "worker_a"),
                ("start_type", start),
                ("cpu", "1"),
            ];
            m.observe("worker.sandbox.ready.duration_seconds", &l, secs)
                .unwrap();
        }
        let wc = [("cpu", "1"), ("worker_id", "worker_a")];
        m.observe("worker.sandbox.first_exec.tti_seconds", &wc, 0.0004)
            .unwrap();
        m.observe("worker.exec.start.duration_seconds", &wc, 0.001)
            .unwrap();
        m.observe("worker.exec.start.duration_seconds", &wc, 0.0011)
            .unwrap();
        m.observe("worker.exec.duration_seconds", &wc, 100.0)
            .unwrap();
        for (worker, result, secs) in [("worker_b", "ok_cold", 0.02), ("worker_a", "ok_ready", 1.5)]
        {
            let l = [("worker_id", worker), ("result", result)];
            m.observe("broker.placement.duration_seconds", &l, secs)
                .unwrap();
        }
        m.observe("broker.placement.retry", &[], 0.0).unwrap();
        m.observe("broker.placement.retry", &[], 2.0).unwrap();
        for reason in ["no_worker", "placement_retry_exhausted", "no_worker"] {
            m.inc(
                "broker.no_capacity.total",
                &[("status_code", "503"), ("reason", reason)],
            )
            .unwrap();
        }
        m.inc(
            "worker.warmup.failures.total",
            &[
                ("worker_id", "worker_a"),
                ("cpu", "1"),
                ("reason", "say \"hi\"\\\n"),
            ],
        )
        .unwrap();
        m.inc("worker.ssh.reconnects.total", &w).unwrap();
        let long = "c".repeat(MAX_LABEL_VALUE_LEN + 5);
        m.inc(
            "worker.warm.hit.total",
            &[("worker_id", "worker_a"), ("cpu", &long)],
        )
        .unwrap();
        for _ in 0..3 {
            m.inc(
                "worker.warm.miss.total",
                &[("worker_id", "worker_a"), ("cpu", "1")],
            )
            .unwrap();
        }
        m.inc(
            "worker.auth.failures.total",
            &[
                ("worker_id", "worker_a"),
                ("status_code", "401"),
                ("reason", "jwt"),
            ],
        )
        .unwrap();
        m.inc("worker.network.ip_resolve.failures.total", &w)
            .unwrap();
    }

    #[test]
    fn render_snapshot_of_the_whole_catalogue() {
        let m = Metrics::new(true);
        drive_catalogue(&m);
        let text = m.render_prometheus();
        assert_eq!(text, RENDER_SNAPSHOT);
    }

    /// Captured from the name-keyed registry before metrics became typed; must not change.
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
# HELP traforato_worker_ssh_reconnects_total SSH reconnections
# TYPE traforato_worker_ssh_reconnects_total counter
traforato_worker_ssh_reconnects_total{worker_id="worker_a"} 1
# HELP traforato_worker_warm_hit_total creates served from the warm pool
# TYPE traforato_worker_warm_hit_total counter
traforato_worker_warm_hit_total{cpu="cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc",worker_id="worker_a"} 1
# HELP traforato_worker_warm_miss_total creates that booted a sandbox
# TYPE traforato_worker_warm_miss_total counter
traforato_worker_warm_miss_total{cpu="1",worker_id="worker_a"} 3
# HELP traforato_worker_auth_failures_total requests refused by authentication
# TYPE traforato_worker_auth_failures_total counter
traforato_worker_auth_failures_total{reason="jwt",status_code="401",worker_id="worker_a"} 1
# HELP traforato_worker_network_ip_resolve_failures_total sandbox address resolution failures
# TYPE traforato_worker_network_ip_resolve_failures_total counter
traforato_worker_network_ip_resolve_failures_total{worker_id="worker_a"} 1
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
