//! [`Worker::builder`]: a worker for embedding, with every setting at a sensible default
//! (capacity from the host, dev mode, no broker) and the backends it is given.

use std::sync::Arc;
use std::time::Duration;

use super::defaults::{
    host_cores, DEFAULT_HEARTBEAT, DEFAULT_JITTER_PERCENT, DEFAULT_MAX_TTL, DEFAULT_MIB_PER_CORE,
    DEFAULT_REGISTRATION_PROBE, DEFAULT_TTL, REAP_INTERVAL,
};
use super::{BrokerLink, CapacityConfig, InProcessBrokerLink, PrePullTarget, Worker, WorkerConfig};
use crate::auth::AuthMode;
use crate::backend::{BackendError, VmBackend};
use crate::broker::Broker;
use crate::clock::{Clock, SystemClock};
use crate::id::ComponentId;
use crate::telemetry::Metrics;
use crate::tuple::SandboxTuple;

/// Why a worker could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// No backend was added.
    #[error("the worker has no backend: add one (container, or your own)")]
    NoBackend,
    /// Two backends serve the same virtualization.
    #[error("two backends serve virtualization {0:?}")]
    DuplicateVirtualization(String),
    /// The default virtualization has no backend.
    #[error("default virtualization {0:?} has no backend")]
    UnknownDefaultVirtualization(String),
    /// A warm-pool floor names a virtualization without a backend.
    #[error("warm pool of {0}: no backend serves its virtualization")]
    UnknownWarmVirtualization(SandboxTuple),
    /// An id that is not a component id (`[A-Za-z0-9_]`, 1-64 characters).
    #[error("invalid {field}: {value:?}")]
    InvalidId {
        /// `worker_id` or `broker_id`.
        field: &'static str,
        /// What was given.
        value: String,
    },
    /// A backend cannot run on this host; the reason names what is missing.
    #[error("the {virtualization} backend cannot run here: {source}")]
    BackendUnavailable {
        /// The backend's virtualization.
        virtualization: &'static str,
        /// What the backend reported.
        #[source]
        source: BackendError,
    },
}

/// A change of the configuration given to [`WorkerBuilder::configure`].
type Adjustment = Box<dyn FnOnce(&mut WorkerConfig) + Send>;

/// A backend added to the builder: built, or to build at [`WorkerBuilder::build`].
enum PendingBackend {
    Ready(Arc<dyn VmBackend>),
    #[cfg(all(feature = "container", target_os = "linux"))]
    Container(Box<crate::backend::container::ContainerConfig>),
}

/// Builds a [`Worker`]. Start with [`Worker::builder`]; every setting not given has a default:
///
/// | setting | default |
/// |---|---|
/// | ids | worker `worker_local` of broker `broker_local` (the broker's own id with [`WorkerBuilder::broker`]) |
/// | cores | the host's logical CPUs |
/// | memory | 1024 MiB per core |
/// | live sandboxes | cores × cpu overcommit (32 with containers, else 1) |
/// | capacity | [`CapacityConfig::for_containers`] when a backend overcommits, else [`CapacityConfig::for_vms`] |
/// | TTL | 30 min by default, at most 24 h |
/// | virtualization of creates that name none | the first backend's |
/// | auth | dev mode (no ownership checks) |
/// | broker | none: sandboxes are created on the worker directly |
/// | clock, metrics | the system clock, a fresh registry |
#[must_use]
pub struct WorkerBuilder {
    config: WorkerConfig,
    worker_id: String,
    broker_id: Option<String>,
    backends: Vec<PendingBackend>,
    cores: Option<u32>,
    memory_mib: Option<u64>,
    max_sandboxes: Option<u32>,
    capacity: Option<CapacityConfig>,
    default_virtualization: Option<String>,
    clock: Option<Arc<dyn Clock>>,
    metrics: Option<Arc<Metrics>>,
    link: Option<Arc<dyn BrokerLink>>,
    adjustments: Vec<Adjustment>,
}

impl Worker {
    /// A builder of a worker for embedding: add a backend, then [`WorkerBuilder::build`].
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// use traforato_core::api::{CreateSandbox, Runtime};
    /// use traforato_core::backend::container::ContainerConfig;
    /// use traforato_core::worker::Worker;
    ///
    /// let worker = Worker::builder()
    ///     .container(ContainerConfig::default())
    ///     .build()?;
    /// let sandbox = worker.create(CreateSandbox::new("host")).await?;
    /// let out = sandbox.run_code(Runtime::Python, "print(6 * 7)").await?;
    /// assert_eq!(out.stdout, "42\n");
    /// sandbox.delete().await?;
    /// # Ok(()) }
    /// ```
    pub fn builder() -> WorkerBuilder {
        WorkerBuilder::new()
    }
}

impl Default for WorkerBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl WorkerBuilder {
    /// Every setting at its default, no backend.
    pub fn new() -> Self {
        let id = |raw: &str| ComponentId::parse(raw).expect("a valid default id");
        Self {
            config: WorkerConfig {
                broker_id: id("broker_local"),
                worker_id: id("worker_local"),
                hostname: "localhost".to_string(),
                advertise_url: "http://localhost".to_string(),
                broker_public_url: None,
                hardware_sku: String::new(),
                total_cores: 1,
                total_memory_mib: DEFAULT_MIB_PER_CORE,
                max_live_sandboxes: 1,
                default_ttl: DEFAULT_TTL,
                max_ttl: DEFAULT_MAX_TTL,
                default_virtualization: String::new(),
                registration_heartbeat: DEFAULT_HEARTBEAT,
                registration_jitter_percent: DEFAULT_JITTER_PERCENT,
                registration_probe: DEFAULT_REGISTRATION_PROBE,
                reap_interval: REAP_INTERVAL,
                pre_pull: Vec::new(),
                auth_mode: AuthMode::Dev,
                capacity: CapacityConfig::default(),
                operators: Vec::new(),
                network: super::NetworkConfig::default(),
            },
            worker_id: "worker_local".to_string(),
            broker_id: None,
            backends: Vec::new(),
            cores: None,
            memory_mib: None,
            max_sandboxes: None,
            capacity: None,
            default_virtualization: None,
            clock: None,
            metrics: None,
            link: None,
            adjustments: Vec::new(),
        }
    }

    /// Adds a backend (one per virtualization).
    pub fn backend(mut self, backend: impl VmBackend + 'static) -> Self {
        self.backends.push(PendingBackend::Ready(
            Arc::new(backend) as Arc<dyn VmBackend>
        ));
        self
    }

    /// Adds a backend that is already shared.
    pub fn backend_arc(mut self, backend: Arc<dyn VmBackend>) -> Self {
        self.backends.push(PendingBackend::Ready(backend));
        self
    }

    /// Adds the Linux `container` backend with `config`. It is created by
    /// [`WorkerBuilder::build`], which fails with [`BuildError::BackendUnavailable`] naming
    /// what the host lacks (root, overlayfs, user namespaces...). With the default
    /// `init_program` (`/proc/self/exe`), the program's `main` must call
    /// [`init_main_if_requested`](crate::backend::container::init_main_if_requested) first.
    #[cfg(all(feature = "container", target_os = "linux"))]
    pub fn container(mut self, config: crate::backend::container::ContainerConfig) -> Self {
        self.backends
            .push(PendingBackend::Container(Box::new(config)));
        self
    }

    /// This worker's id (`[A-Za-z0-9_]`, named in its sandboxes' ids).
    pub fn worker_id(mut self, id: impl Into<String>) -> Self {
        self.worker_id = id.into();
        self
    }

    /// Registers with `broker` in this process (no HTTP): it places creates on this worker
    /// and learns of its warm sandboxes. The broker's id is used for the sandbox ids.
    pub fn broker(mut self, broker: &Arc<Broker>) -> Self {
        self.broker_id = Some(broker.config().broker_id.to_string());
        self.link = Some(Arc::new(InProcessBrokerLink::new(broker.clone())));
        self
    }

    /// Talks to a broker through `link` (e.g. over HTTP), as worker of broker `broker_id`.
    pub fn broker_link(mut self, broker_id: impl Into<String>, link: Arc<dyn BrokerLink>) -> Self {
        self.broker_id = Some(broker_id.into());
        self.link = Some(link);
        self
    }

    /// Where clients reach this worker over HTTP (sent at registration; default
    /// `http://localhost`).
    pub fn advertise_url(mut self, url: impl Into<String>) -> Self {
        self.config.advertise_url = url.into();
        self
    }

    /// Cores and memory offered to sandboxes.
    pub fn capacity(mut self, cores: u32, memory_mib: u64) -> Self {
        self.cores = Some(cores.max(1));
        self.memory_mib = Some(memory_mib.max(1));
        self
    }

    /// Most live sandboxes at once.
    pub fn max_sandboxes(mut self, count: u32) -> Self {
        self.max_sandboxes = Some(count.max(1));
        self
    }

    /// How sandboxes are counted against the cores and memory.
    pub fn overcommit(mut self, capacity: CapacityConfig) -> Self {
        self.capacity = Some(capacity);
        self
    }

    /// The TTL of sandboxes created without one, and the longest a create or lease may ask.
    pub fn ttl(mut self, default: Duration, max: Duration) -> Self {
        self.config.default_ttl = default;
        self.config.max_ttl = max.max(default);
        self
    }

    /// The virtualization of creates that name none (default: the first backend's).
    pub fn default_virtualization(mut self, name: impl Into<String>) -> Self {
        self.default_virtualization = Some(name.into());
        self
    }

    /// Keeps at least `count` sandboxes of `image` (and `cpu` cores, on `virtualization`)
    /// provisioned and ready, so that a create of them is a claim.
    pub fn warm(mut self, virtualization: &str, image: &str, cpu: u32, count: u32) -> Self {
        self.config.pre_pull.push(PrePullTarget {
            tuple: SandboxTuple::normalize(virtualization, image, i64::from(cpu), virtualization),
            target_count: count,
            warmup_script: String::new(),
            warmup_timeout: Duration::from_secs(120),
        });
        self
    }

    /// Dev mode (any caller owns every sandbox) or prod (each sandbox belongs to the
    /// principal that created it).
    pub fn auth_mode(mut self, mode: AuthMode) -> Self {
        self.config.auth_mode = mode;
        self
    }

    /// The clock TTLs are measured with.
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = Some(clock);
        self
    }

    /// The metrics registry (shared with whatever exports it).
    pub fn metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Changes anything else of the configuration ([`WorkerConfig`]), after the defaults are
    /// applied.
    pub fn configure(mut self, adjust: impl FnOnce(&mut WorkerConfig) + Send + 'static) -> Self {
        self.adjustments.push(Box::new(adjust));
        self
    }

    /// Builds the worker. Call [`Worker::run`] on it to register with the broker, keep the
    /// warm pool and reap expired sandboxes; creates work without it.
    pub fn build(self) -> Result<Arc<Worker>, BuildError> {
        let mut config = self.config;
        config.worker_id = parse_id("worker_id", &self.worker_id)?;
        if let Some(broker_id) = &self.broker_id {
            config.broker_id = parse_id("broker_id", broker_id)?;
        }
        let backends = self
            .backends
            .into_iter()
            .map(build_backend)
            .collect::<Result<Vec<_>, _>>()?;
        let first = backends.first().ok_or(BuildError::NoBackend)?;
        config.default_virtualization = self
            .default_virtualization
            .unwrap_or_else(|| first.virtualization().to_string());
        let served = |name: &str| backends.iter().any(|b| b.virtualization() == name);
        for (i, backend) in backends.iter().enumerate() {
            let name = backend.virtualization();
            if backends[..i].iter().any(|b| b.virtualization() == name) {
                return Err(BuildError::DuplicateVirtualization(name.to_string()));
            }
        }
        if !served(&config.default_virtualization) {
            return Err(BuildError::UnknownDefaultVirtualization(
                config.default_virtualization,
            ));
        }
        if let Some(target) = config
            .pre_pull
            .iter()
            .find(|t| !served(&t.tuple.virtualization))
        {
            return Err(BuildError::UnknownWarmVirtualization(target.tuple.clone()));
        }
        let overcommits = backends.iter().any(|b| b.overcommits());
        config.capacity = self.capacity.unwrap_or_else(|| {
            if overcommits {
                CapacityConfig::for_containers()
            } else {
                CapacityConfig::for_vms()
            }
        });
        config.total_cores = self.cores.unwrap_or_else(host_cores);
        config.total_memory_mib = self
            .memory_mib
            .unwrap_or(u64::from(config.total_cores) * DEFAULT_MIB_PER_CORE);
        config.max_live_sandboxes = self.max_sandboxes.unwrap_or_else(|| {
            config
                .total_cores
                .saturating_mul(config.capacity.cpu_overcommit)
        });
        for adjust in self.adjustments {
            adjust(&mut config);
        }
        Ok(Worker::new(
            config,
            backends,
            self.clock.unwrap_or_else(|| Arc::new(SystemClock)),
            self.metrics
                .unwrap_or_else(|| Arc::new(Metrics::new(false))),
            self.link,
        ))
    }
}

fn parse_id(field: &'static str, raw: &str) -> Result<ComponentId, BuildError> {
    ComponentId::parse(raw).map_err(|_| BuildError::InvalidId {
        field,
        value: raw.to_string(),
    })
}

fn build_backend(pending: PendingBackend) -> Result<Arc<dyn VmBackend>, BuildError> {
    match pending {
        PendingBackend::Ready(backend) => Ok(backend),
        #[cfg(all(feature = "container", target_os = "linux"))]
        PendingBackend::Container(config) => {
            crate::backend::container::ContainerBackend::new(*config)
                .map(|backend| Arc::new(backend) as Arc<dyn VmBackend>)
                .map_err(|source| BuildError::BackendUnavailable {
                    virtualization: "container",
                    source,
                })
        }
    }
}

#[cfg(all(test, feature = "test-util"))]
mod tests {
    use super::*;
    use crate::backend::fake::FakeBackend;

    #[test]
    fn defaults_come_from_the_host_and_the_backends() {
        let worker = Worker::builder()
            .backend(FakeBackend::new())
            .build()
            .unwrap();
        let config = worker.config();
        assert_eq!(config.worker_id.as_str(), "worker_local");
        assert_eq!(config.broker_id.as_str(), "broker_local");
        assert_eq!(config.default_virtualization, "fake");
        assert_eq!(config.total_cores, host_cores());
        assert_eq!(
            config.total_memory_mib,
            u64::from(host_cores()) * DEFAULT_MIB_PER_CORE
        );
        // The fake backend reserves what it is given, like a VM.
        assert_eq!(config.capacity, CapacityConfig::for_vms());
        assert_eq!(config.max_live_sandboxes, host_cores());
        assert_eq!(config.auth_mode, AuthMode::Dev);
    }

    #[test]
    fn settings_and_adjustments_apply() {
        let worker = Worker::builder()
            .backend(FakeBackend::new())
            .backend(FakeBackend::with_virtualization("vetu"))
            .worker_id("edge_1")
            .capacity(4, 2048)
            .max_sandboxes(3)
            .default_virtualization("vetu")
            .warm("vetu", "img", 1, 2)
            .ttl(Duration::from_secs(60), Duration::from_secs(30))
            .configure(|c| c.hardware_sku = "gpu".into())
            .build()
            .unwrap();
        let config = worker.config();
        assert_eq!(config.worker_id.as_str(), "edge_1");
        assert_eq!((config.total_cores, config.total_memory_mib), (4, 2048));
        assert_eq!(config.max_live_sandboxes, 3);
        assert_eq!(config.default_virtualization, "vetu");
        assert_eq!(config.pre_pull[0].tuple.to_string(), "vetu/img/1");
        assert_eq!(
            config.max_ttl,
            Duration::from_secs(60),
            "never below the default"
        );
        assert_eq!(config.hardware_sku, "gpu");
    }

    #[test]
    fn mistakes_are_named() {
        assert!(matches!(
            Worker::builder().build(),
            Err(BuildError::NoBackend)
        ));
        let err = Worker::builder()
            .backend(FakeBackend::new())
            .backend(FakeBackend::new())
            .build()
            .err()
            .unwrap();
        assert_eq!(
            err.to_string(),
            "two backends serve virtualization \"fake\""
        );
        let err = Worker::builder()
            .backend(FakeBackend::new())
            .default_virtualization("vetu")
            .build()
            .err()
            .unwrap();
        assert!(matches!(err, BuildError::UnknownDefaultVirtualization(ref v) if v == "vetu"));
        let err = Worker::builder()
            .backend(FakeBackend::new())
            .warm("container", "host", 1, 1)
            .build()
            .err()
            .unwrap();
        assert!(matches!(err, BuildError::UnknownWarmVirtualization(_)));
        let err = Worker::builder()
            .backend(FakeBackend::new())
            .worker_id("no spaces")
            .build()
            .err()
            .unwrap();
        assert_eq!(err.to_string(), "invalid worker_id: \"no spaces\"");
    }

    #[cfg(all(feature = "container", target_os = "linux"))]
    #[test]
    fn an_unusable_container_backend_says_what_is_missing() {
        let config = crate::backend::container::ContainerConfig {
            init_program: "/nonexistent/traforato-init".into(),
            ..Default::default()
        };
        let err = Worker::builder().container(config).build().err().unwrap();
        assert!(matches!(
            err,
            BuildError::BackendUnavailable {
                virtualization: "container",
                ..
            }
        ));
        // Not root: says so; root: the init program is named.
        let message = err.to_string();
        assert!(
            message.contains("needs root") || message.contains("/nonexistent/traforato-init"),
            "{message}"
        );
    }
}
