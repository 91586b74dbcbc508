//! What each binary runs with, validated and typed: [`BrokerSettings`], [`WorkerSettings`]
//! (command line, then the worker YAML over it) and [`DevSettings`], and the library
//! configurations made from them.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::time::Duration;

use tracing_subscriber::filter::LevelFilter;
use traforato_core::auth::{AuthConfig, AuthMode};
use traforato_core::broker::BrokerConfig;
use traforato_core::id::ComponentId;
use traforato_core::network::Egress;
use traforato_core::tuple::SandboxTuple;
use traforato_core::worker::{CapacityConfig, NetworkConfig, PrePullTarget, WorkerConfig};

use super::address::{advertise_url, bind_address, check_exposure, listen_or_default};
use super::args::{BrokerArgs, DevArgs, WorkerArgs, WorkerFlags};
use super::layer::{
    CapacityLayer, ContainerLayer, ImagesLayer, Layer, LogLayer, PrePullLayer, WorkerLayer,
};
use super::values::{AutoCount, AutoMib, ByteSize, LogLevel, MemoryShare};
use super::{
    ConfigError, DEFAULT_BROKER_PORT, DEFAULT_CPU_OVERCOMMIT, DEFAULT_MAX_WARM_PER_TUPLE,
    DEFAULT_MEMORY_HIGH_WATERMARK_PERCENT, DEFAULT_MEMORY_OVERCOMMIT, DEFAULT_REGISTRATION_PROBE,
    DEFAULT_ROTATE_SIZE_MIB, DEFAULT_VIRTUALIZATION, DEFAULT_WARMUP_TIMEOUT, DEFAULT_WORKER_PORT,
    HEARTBEAT_HINT, REAP_INTERVAL,
};
use crate::logging::LogSettings;

/// Everything `traforato-broker` needs, validated.
#[derive(Debug, Clone)]
pub struct BrokerSettings {
    /// Address to bind.
    pub bind: String,
    /// The library configuration.
    pub config: BrokerConfig,
    /// Client and internal token settings (`Debug` redacts the secrets).
    pub auth: AuthConfig,
}

impl BrokerSettings {
    /// Validates the command line.
    pub fn from_args(args: &BrokerArgs) -> Result<Self, ConfigError> {
        args.auth.check_secret_files_read()?;
        let auth = args.auth.auth_config();
        let mode = auth.mode();
        let listen = listen_or_default(&args.listen, DEFAULT_BROKER_PORT, mode);
        check_exposure(&listen, mode, args.auth.insecure_dev_mode_on_network)?;
        Ok(Self {
            bind: bind_address(&listen)?,
            config: BrokerConfig {
                restart_grace: args.restart_grace,
                ..broker_config(
                    args.broker_id.clone(),
                    args.placement_retry_max,
                    args.worker_lease_ttl,
                    args.worker_lease_sweep_interval,
                    &args.default_virtualization,
                    mode,
                )
            },
            auth,
        })
    }
}

fn broker_config(
    broker_id: ComponentId,
    placement_retry_max: u32,
    lease_ttl: Duration,
    sweep_interval: Duration,
    default_virtualization: &str,
    mode: AuthMode,
) -> BrokerConfig {
    BrokerConfig {
        broker_id,
        placement_retry_max,
        worker_lease_ttl: lease_ttl,
        lease_sweep_interval: sweep_interval,
        heartbeat_interval: HEARTBEAT_HINT,
        default_virtualization: non_empty_or(default_virtualization, DEFAULT_VIRTUALIZATION),
        prod_mode: mode.is_prod(),
        ..BrokerConfig::default()
    }
}

fn non_empty_or(value: &str, default: &str) -> String {
    let value = value.trim();
    if value.is_empty() {
        default.to_string()
    } else {
        value.to_string()
    }
}

/// The entries of a list, trimmed, empty ones dropped.
fn trimmed(list: Vec<String>) -> Vec<String> {
    list.into_iter()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

fn non_empty(value: Option<String>) -> Option<String> {
    value
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

/// The YAML `container` section: settings of the `container` backend. `None` or an empty
/// value keeps the backend's default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContainerSettings {
    /// `state-dir`: where sandbox roots and images live (default `/run/traforato`).
    pub state_dir: Option<PathBuf>,
    /// `cgroup-parent`: the cgroup under which sandboxes are made (default `traforato`).
    pub cgroup_parent: Option<String>,
    /// `images`: local directory images, name → directory used as the read-only lower layer.
    pub images: BTreeMap<String, PathBuf>,
    /// `pids-limit`: most processes per sandbox (default 512).
    pub pids_limit: Option<u64>,
    /// `scratch-size-mib`: size of each sandbox's writable layer (default 1024).
    pub scratch_size_mib: Option<u64>,
    /// `python-zygote`: keep a pre-warmed Python in each sandbox (default true).
    pub python_zygote: Option<bool>,
    /// `lazy-zygote`: warm sandboxes too start their zygote at their first Python run.
    pub lazy_zygote: Option<bool>,
    /// `spare-inits`: sandbox inits started ahead for cold creates (default 2; cgroup v1).
    pub spare_inits: Option<usize>,
    /// The `images:` section: OCI images.
    pub oci: OciSettings,
    /// The `network:` section's plumbing keys.
    pub network: EgressPlumbing,
}

/// How sandboxes get egress (the YAML `network` section's `range`, `blocked-cidrs` and
/// `dns-upstream`); `None` keeps the backend's default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EgressPlumbing {
    /// `range`: where sandbox addresses come from.
    pub range: Option<String>,
    /// `blocked-cidrs`: ranges sandboxes never reach (replaces the default list).
    pub blocked_cidrs: Option<Vec<String>>,
    /// `dns-upstream`: the resolver the sandboxes' DNS forwarder asks.
    pub dns_upstream: Option<std::net::SocketAddr>,
    /// `uplink`: the interface sandbox traffic leaves by.
    pub uplink: Option<String>,
    /// `bandwidth`: each sandbox's rate each way.
    pub bandwidth: Option<traforato_core::network::Bandwidth>,
}

/// The YAML `images` section: where OCI images are kept and how registries are reached.
/// `Debug` shows no password.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct OciSettings {
    /// `dir` (default `/var/lib/traforato/images`); `Some(None)` for `none`: no OCI images.
    pub dir: Option<Option<PathBuf>>,
    /// `insecure-registries`: `host[:port]` reached over plain HTTP.
    pub insecure_registries: Vec<String>,
    /// `mirrors`: registry -> mirror URLs (`http://127.0.0.1:5000`), tried in order.
    pub mirrors: BTreeMap<String, Vec<String>>,
    /// `pull-timeout`: longest wait for a registry to answer (default 30 s).
    pub pull_timeout: Option<Duration>,
    /// `credentials`: registry -> login.
    pub credentials: BTreeMap<String, Login>,
    /// `docker-config`: a Docker `config.json` to take logins from (none by default).
    pub docker_config: Option<PathBuf>,
    /// `max-disk`: most bytes the directory keeps (none by default: no limit).
    pub max_disk: Option<u64>,
    /// `operators`: client ids allowed on the `/images` routes in prod mode (none by default;
    /// in dev mode everyone is).
    pub operators: Vec<String>,
    /// `allowed-registries`: the registries images may come from (empty, the default: any
    /// but link-local addresses).
    pub allowed_registries: Vec<String>,
}

/// A registry login: a password given inline or read from a file when the worker starts.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Login {
    /// The user.
    pub username: String,
    /// The password or token.
    pub password: Option<String>,
    /// A file holding it.
    pub password_file: Option<PathBuf>,
}

impl std::fmt::Debug for OciSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let users: BTreeMap<&String, &String> = self
            .credentials
            .iter()
            .map(|(registry, login)| (registry, &login.username))
            .collect();
        f.debug_struct("OciSettings")
            .field("dir", &self.dir)
            .field("insecure_registries", &self.insecure_registries)
            .field("mirrors", &self.mirrors)
            .field("pull_timeout", &self.pull_timeout)
            .field("logins", &users)
            .field("docker_config", &self.docker_config)
            .field("max_disk", &self.max_disk)
            .field("operators", &self.operators)
            .field("allowed_registries", &self.allowed_registries)
            .finish()
    }
}

impl From<ImagesLayer> for OciSettings {
    fn from(layer: ImagesLayer) -> Self {
        Self {
            dir: non_empty(layer.dir).map(|dir| (dir != "none").then(|| PathBuf::from(dir))),
            insecure_registries: trimmed(layer.insecure_registries.unwrap_or_default()),
            mirrors: layer
                .mirrors
                .unwrap_or_default()
                .into_iter()
                .map(|(registry, urls)| (registry.trim().to_string(), trimmed(urls)))
                .collect(),
            pull_timeout: layer.pull_timeout.map(|d| d.0),
            credentials: layer
                .credentials
                .unwrap_or_default()
                .into_iter()
                .map(|(registry, login)| {
                    let login = Login {
                        username: login.username.trim().to_string(),
                        password: login.password,
                        password_file: non_empty(login.password_file).map(PathBuf::from),
                    };
                    (registry.trim().to_string(), login)
                })
                .collect(),
            docker_config: non_empty(layer.docker_config).map(PathBuf::from),
            max_disk: layer.max_disk.map(|size| size.0),
            operators: trimmed(layer.operators.unwrap_or_default()),
            allowed_registries: trimmed(layer.allowed_registries.unwrap_or_default()),
        }
    }
}

impl From<ContainerLayer> for ContainerSettings {
    fn from(layer: ContainerLayer) -> Self {
        Self {
            state_dir: non_empty(layer.state_dir).map(PathBuf::from),
            cgroup_parent: non_empty(layer.cgroup_parent),
            images: layer
                .images
                .unwrap_or_default()
                .into_iter()
                .map(|(name, dir)| (name.trim().to_string(), PathBuf::from(dir.trim())))
                .collect(),
            pids_limit: layer.pids_limit,
            scratch_size_mib: layer.scratch_size_mib,
            python_zygote: layer.python_zygote,
            lazy_zygote: layer.lazy_zygote,
            spare_inits: layer.spare_inits,
            oci: OciSettings::default(),
            network: EgressPlumbing::default(),
        }
    }
}

/// The YAML `pre-pull` section: warm-pool floors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrePullSettings {
    /// Images kept warm (one ready sandbox each), trimmed, without empties or duplicates.
    pub images: Vec<String>,
    /// Script run in each warm sandbox before it counts as ready.
    pub warmup_script: String,
    /// Budget of the script.
    pub warmup_timeout: Duration,
}

impl From<PrePullLayer> for PrePullSettings {
    fn from(layer: PrePullLayer) -> Self {
        let mut seen = HashSet::new();
        Self {
            images: layer
                .images
                .unwrap_or_default()
                .iter()
                .map(|image| image.trim())
                .filter(|image| !image.is_empty() && seen.insert(image.to_string()))
                .map(String::from)
                .collect(),
            warmup_script: layer.warmup_script.unwrap_or_default(),
            warmup_timeout: layer
                .warmup_timeout_seconds
                .filter(|s| *s > 0)
                .map(Duration::from_secs)
                .unwrap_or(DEFAULT_WARMUP_TIMEOUT),
        }
    }
}

/// The YAML `capacity` section (see README: the capacity model).
#[derive(Debug, Clone, PartialEq)]
pub struct CapacitySettings {
    /// Cpu quota per core handed out to container sandboxes.
    pub cpu_overcommit: u32,
    /// Memory limits per MiB handed out to container sandboxes.
    pub memory_overcommit: u32,
    /// Refuse new sandboxes while their actual memory use is above this.
    pub memory_high_watermark: MemoryShare,
    /// Most idle warm sandboxes of one tuple.
    pub max_warm_per_tuple: u32,
    /// Most warm sandboxes provisioned at once; `None`: one per core (at most 4) on a worker
    /// that serves containers, else 1.
    pub warm_fill_parallelism: Option<u32>,
}

impl From<CapacityLayer> for CapacitySettings {
    fn from(layer: CapacityLayer) -> Self {
        Self {
            cpu_overcommit: layer
                .cpu_overcommit
                .filter(|n| *n > 0)
                .unwrap_or(DEFAULT_CPU_OVERCOMMIT),
            memory_overcommit: layer
                .memory_overcommit
                .filter(|n| *n > 0)
                .unwrap_or(DEFAULT_MEMORY_OVERCOMMIT),
            memory_high_watermark: layer
                .memory_high_watermark
                .unwrap_or(MemoryShare::Percent(DEFAULT_MEMORY_HIGH_WATERMARK_PERCENT)),
            max_warm_per_tuple: layer
                .max_warm_per_tuple
                .unwrap_or(DEFAULT_MAX_WARM_PER_TUPLE),
            // At least one at a time.
            warm_fill_parallelism: layer.warm_fill_parallelism.map(|n| n.max(1)),
        }
    }
}

pub use traforato_core::worker::defaults::host_memory_mib;
use traforato_core::worker::defaults::{
    default_warm_fill_parallelism, host_cores, DEFAULT_MIB_PER_CORE,
};

fn log_settings(layer: LogLayer) -> Result<LogSettings, ConfigError> {
    let file = non_empty(layer.file).map(PathBuf::from);
    let rotate_size_mib = match layer.rotate_size {
        None => DEFAULT_ROTATE_SIZE_MIB,
        Some(ByteSize(0)) => return Err(ConfigError::InvalidRotateSize("0".to_string())),
        Some(size) => size.mib_ceil().max(1),
    };
    Ok(LogSettings {
        level: layer
            .level
            .map_or(LevelFilter::INFO, |LogLevel(level)| level),
        file,
        rotate_size_mib,
        max_rotations: layer.max_rotations.unwrap_or(0),
    })
}

/// The worker's settings: the command line (flags over variables over defaults) with the
/// worker YAML over it, typed and validated; runtime defaults (cores, memory, the advertise
/// URL) are applied by [`WorkerSettings::worker_config`].
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    /// Listen address (the mode's default when none was given).
    pub listen: String,
    /// The broker this worker serves.
    pub broker_id: ComponentId,
    /// Broker control URL, trimmed, without a trailing `/` (`None`: standalone).
    pub broker_control_url: Option<String>,
    /// This worker's id.
    pub worker_id: ComponentId,
    /// Host name sent at registration.
    pub hostname: String,
    /// Hardware SKU (YAML only).
    pub hardware_sku: String,
    /// YAML `virtualization`: of the pre-pull targets, and enabled beside the default.
    pub virtualization: Option<String>,
    /// The deployment's default virtualization (never empty).
    pub default_virtualization: String,
    /// Explicit advertise URL (`None`: derived).
    pub advertise_url: Option<String>,
    /// Cores offered (automatic: the CPUs).
    pub total_cores: AutoCount,
    /// Memory offered in MiB (automatic: 1024 per core).
    pub total_memory_mib: AutoMib,
    /// Most live sandboxes (automatic: the cores × cpu-overcommit with containers, else the cores).
    pub max_live_sandboxes: AutoCount,
    /// TTL of creates without `ttl_seconds`.
    pub default_ttl: Duration,
    /// Longest TTL.
    pub max_ttl: Duration,
    /// Heartbeat period.
    pub registration_heartbeat: Duration,
    /// Heartbeat jitter in percent, in [0, 95].
    pub registration_jitter_percent: u8,
    /// How often the broker's instance is probed between heartbeats (0: never).
    pub registration_probe: Duration,
    /// The `log` section.
    pub log: LogSettings,
    /// The `pre-pull` section.
    pub pre_pull: PrePullSettings,
    /// The `container` section.
    pub container: ContainerSettings,
    /// The `capacity` section.
    pub capacity: CapacitySettings,
    /// The `network:` section.
    pub network: NetworkConfig,
    /// Dev or prod, from the JWT secret (not a YAML key).
    pub auth_mode: AuthMode,
    /// `--insecure-dev-mode-on-network`: a dev-mode worker may listen beyond loopback.
    pub insecure_dev_mode_on_network: bool,
}

/// Reads and decodes the worker YAML at `path` (an empty layer when `path` is empty).
pub fn read_worker_file(path: &str) -> Result<WorkerLayer, ConfigError> {
    let path = path.trim();
    if path.is_empty() {
        return Ok(WorkerLayer::default());
    }
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::ReadFile {
        path: PathBuf::from(path),
        source,
    })?;
    parse_worker_yaml(&text)
}

/// Decodes a worker YAML document. Unknown keys (also nested) are errors that name the key;
/// an empty document is an empty layer; a key present overrides even with a zero value.
pub fn parse_worker_yaml(text: &str) -> Result<WorkerLayer, ConfigError> {
    let mut documents = serde_norway::Deserializer::from_str(text);
    let Some(first) = documents.next() else {
        return Ok(WorkerLayer::default());
    };
    let layer: Option<WorkerLayer> =
        serde_path_to_error::deserialize(first).map_err(|err| ConfigError::Yaml {
            key: err.path().to_string(),
            source: err.into_inner(),
        })?;
    if documents.next().is_some() {
        return Err(ConfigError::MultipleDocuments);
    }
    Ok(layer.unwrap_or_default())
}

impl WorkerSettings {
    /// Loads a `traforato-worker` configuration: command line, then the YAML file over it.
    pub fn load_worker(args: &WorkerArgs) -> Result<Self, ConfigError> {
        args.auth.check_secret_files_read()?;
        let mut flags = args.worker.layer();
        flags.broker_control_url = Some(args.broker_control_url.clone());
        let file = read_worker_file(&args.file)?;
        Self::resolve(
            file.over(flags),
            args.auth.mode(),
            args.auth.insecure_dev_mode_on_network,
        )
    }

    /// The settings of the layers merged (YAML over command line), validated.
    pub fn resolve(
        layer: WorkerLayer,
        auth_mode: AuthMode,
        insecure_dev_mode_on_network: bool,
    ) -> Result<Self, ConfigError> {
        // The command-line layer sets every flag-backed value; the fallbacks below only
        // matter for a layer built by hand.
        let defaults = WorkerLayer {
            broker_id: ComponentId::parse("broker_local").ok(),
            worker_id: ComponentId::parse("worker_local").ok(),
            ..WorkerLayer::default()
        };
        let layer = layer.over(defaults);
        let listen = listen_or_default(
            layer.listen.as_deref().unwrap_or_default(),
            DEFAULT_WORKER_PORT,
            auth_mode,
        );
        bind_address(&listen)?;
        check_exposure(&listen, auth_mode, insecure_dev_mode_on_network)?;
        let settings = Self {
            listen,
            broker_id: layer.broker_id.ok_or(ConfigError::MissingId("broker-id"))?,
            broker_control_url: non_empty(layer.broker_control_url)
                .map(|url| url.trim_end_matches('/').to_string())
                .filter(|url| !url.is_empty()),
            worker_id: layer.worker_id.ok_or(ConfigError::MissingId("worker-id"))?,
            hostname: layer.hostname.unwrap_or_default().trim().to_string(),
            hardware_sku: layer.hardware_sku.unwrap_or_default().trim().to_string(),
            virtualization: non_empty(layer.virtualization),
            default_virtualization: non_empty_or(
                layer.default_virtualization.as_deref().unwrap_or_default(),
                DEFAULT_VIRTUALIZATION,
            ),
            advertise_url: non_empty(layer.advertise_url)
                .map(|url| url.trim_end_matches('/').to_string()),
            total_cores: layer.total_cores.unwrap_or_default(),
            total_memory_mib: layer.total_memory_mib.unwrap_or_default(),
            max_live_sandboxes: layer.max_live_sandboxes.unwrap_or_default(),
            default_ttl: layer.default_ttl.map_or(Duration::from_secs(1800), |d| d.0),
            max_ttl: layer.max_ttl.map_or(Duration::from_secs(86_400), |d| d.0),
            registration_heartbeat: layer
                .registration_heartbeat
                .map_or(Duration::from_secs(30), |d| d.0),
            registration_jitter_percent: layer
                .registration_jitter_percent
                .unwrap_or(20)
                .clamp(0, 95) as u8,
            registration_probe: layer
                .registration_probe
                .map_or(DEFAULT_REGISTRATION_PROBE, |d| d.0),
            log: log_settings(layer.log)?,
            pre_pull: layer.pre_pull.into(),
            container: ContainerSettings {
                oci: layer.images.into(),
                network: EgressPlumbing {
                    range: non_empty(layer.network.range.clone()),
                    blocked_cidrs: layer.network.blocked_cidrs.clone().map(trimmed),
                    dns_upstream: non_empty(layer.network.dns_upstream.clone())
                        .map(|raw| parse_resolver(&raw))
                        .transpose()?,
                    uplink: non_empty(layer.network.uplink.clone()),
                    bandwidth: non_empty(layer.network.bandwidth.clone())
                        .map(|raw| {
                            raw.parse()
                                .map_err(|e: traforato_core::network::BandwidthError| {
                                    ConfigError::InvalidValue {
                                        key: "network.bandwidth",
                                        reason: e.to_string(),
                                    }
                                })
                        })
                        .transpose()?,
                },
                ..layer.container.into()
            },
            capacity: layer.capacity.into(),
            network: NetworkConfig {
                default_egress: layer
                    .network
                    .default_egress
                    .map_or(Egress::None, |mode| mode.0),
                allowed_modes: layer.network.allowed_modes.map_or_else(
                    || Egress::ALL.to_vec(),
                    |modes| modes.into_iter().map(|mode| mode.0).collect(),
                ),
            },
            auth_mode,
            insecure_dev_mode_on_network,
        };
        Ok(settings)
    }

    /// The virtualizations to enable: the default one and the YAML `virtualization`.
    pub fn virtualizations(&self) -> Vec<String> {
        let mut out = vec![self.default_virtualization.clone()];
        if let Some(extra) = &self.virtualization {
            if !out.contains(extra) {
                out.push(extra.clone());
            }
        }
        out
    }

    /// The pre-pull targets (§5.4): each image with the YAML virtualization (default: the
    /// deployment's), cpu 1, target 1 and the warm-up script and timeout.
    pub fn pre_pull_targets(&self) -> Vec<PrePullTarget> {
        let virtualization = self
            .virtualization
            .as_deref()
            .unwrap_or(&self.default_virtualization);
        self.pre_pull
            .images
            .iter()
            .map(|image| PrePullTarget {
                tuple: SandboxTuple::normalize(
                    virtualization,
                    image,
                    1,
                    &self.default_virtualization,
                ),
                target_count: 1,
                warmup_script: self.pre_pull.warmup_script.clone(),
                warmup_timeout: self.pre_pull.warmup_timeout,
            })
            .collect()
    }

    /// The library configuration. `bound_port` is the port actually bound (it replaces a
    /// configured port 0 in the derived advertise URL).
    pub fn worker_config(&self, bound_port: Option<u16>) -> WorkerConfig {
        let total_cores = self.total_cores.or_else(host_cores);
        let total_memory_mib = self
            .total_memory_mib
            .or_else(|| u64::from(total_cores) * DEFAULT_MIB_PER_CORE);
        // Containers overcommit cpu and memory (a quota and a limit, not a reservation);
        // a worker that serves them holds as many sandboxes as its overcommitted cores.
        let serves_containers = self.virtualizations().iter().any(|v| v == "container");
        let (cpu_overcommit, memory_overcommit) = if serves_containers {
            (
                self.capacity.cpu_overcommit,
                self.capacity.memory_overcommit,
            )
        } else {
            (1, 1)
        };
        let max_live_sandboxes = self.max_live_sandboxes.or_else(|| {
            if cfg!(target_os = "macos") {
                2
            } else {
                total_cores.saturating_mul(cpu_overcommit)
            }
        });
        let capacity = CapacityConfig {
            cpu_overcommit,
            memory_overcommit,
            memory_high_watermark_mib: serves_containers
                .then(host_memory_mib)
                .flatten()
                .map(|host| self.capacity.memory_high_watermark.mib(host)),
            max_warm_per_tuple: Some(self.capacity.max_warm_per_tuple),
            warm_fill_parallelism: self.capacity.warm_fill_parallelism.unwrap_or_else(|| {
                if serves_containers {
                    default_warm_fill_parallelism()
                } else {
                    1
                }
            }),
        };
        let advertise_url = self
            .advertise_url
            .clone()
            .unwrap_or_else(|| advertise_url(&self.listen, &self.hostname, bound_port));
        WorkerConfig {
            broker_id: self.broker_id.clone(),
            worker_id: self.worker_id.clone(),
            hostname: self.hostname.clone(),
            advertise_url,
            broker_public_url: self.broker_control_url.clone(),
            hardware_sku: self.hardware_sku.clone(),
            total_cores,
            total_memory_mib,
            max_live_sandboxes,
            default_ttl: self.default_ttl,
            max_ttl: self.max_ttl,
            default_virtualization: self.default_virtualization.clone(),
            registration_heartbeat: self.registration_heartbeat,
            registration_jitter_percent: self.registration_jitter_percent,
            registration_probe: self.registration_probe,
            reap_interval: REAP_INTERVAL,
            pre_pull: self.pre_pull_targets(),
            auth_mode: self.auth_mode,
            capacity,
            operators: self.container.oci.operators.clone(),
            network: self.network.clone(),
        }
    }
}

/// `ip` or `ip:port` (port 53 by default) of `network.dns-upstream`.
fn parse_resolver(raw: &str) -> Result<std::net::SocketAddr, ConfigError> {
    let raw = raw.trim();
    raw.parse::<std::net::SocketAddr>()
        .or_else(|_| {
            raw.trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<std::net::IpAddr>()
                .map(|ip| std::net::SocketAddr::new(ip, 53))
        })
        .map_err(|_| ConfigError::InvalidValue {
            key: "network.dns-upstream",
            reason: format!("{raw:?} is not an address (ip or ip:port)"),
        })
}

/// Everything `traforato-dev` needs: the broker part and the worker settings.
#[derive(Debug, Clone)]
pub struct DevSettings {
    /// Broker listen address.
    pub broker_listen: String,
    /// The worker's settings (the YAML applied); its broker id is the broker's too.
    pub worker: WorkerSettings,
    /// Token settings of both services (`Debug` redacts the secrets).
    pub auth: AuthConfig,
}

impl DevSettings {
    /// Loads a `traforato-dev` configuration: command line, then the YAML file.
    pub fn load(args: &DevArgs) -> Result<Self, ConfigError> {
        args.auth.check_secret_files_read()?;
        let mode = args.auth.mode();
        let allow_network = args.auth.insecure_dev_mode_on_network;
        let mut flags = WorkerFlags::from(args.worker.clone()).layer();
        flags.broker_control_url = Some(args.broker_control_url.clone());
        let file = read_worker_file(&args.file)?;
        let worker = WorkerSettings::resolve(file.over(flags), mode, allow_network)?;
        let broker_listen = listen_or_default(&args.broker_listen, DEFAULT_BROKER_PORT, mode);
        bind_address(&broker_listen)?;
        check_exposure(&broker_listen, mode, allow_network)?;
        Ok(Self {
            broker_listen,
            worker,
            auth: args.auth.auth_config(),
        })
    }

    /// The broker's library configuration (retry max 2, default lease and sweep).
    pub fn broker_config(&self) -> BrokerConfig {
        let defaults = BrokerConfig::default();
        broker_config(
            self.worker.broker_id.clone(),
            2,
            defaults.worker_lease_ttl,
            defaults.lease_sweep_interval,
            &self.worker.default_virtualization,
            self.auth.mode(),
        )
    }
}
