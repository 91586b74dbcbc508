//! Configuration layers: the worker's settings as optional values, decoded strictly from the
//! worker YAML (unknown keys are errors, named) or made from the command line, and merged
//! field by field, the upper layer winning where it has a value.
//!
//! A section that another part of the product needs (`images:`, `network:`, ...) is one more
//! field of [`WorkerLayer`] whose type is declared with [`layer!`]: decoding and merging come
//! with it, nothing else changes.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer};
use traforato_core::id::ComponentId;

use super::values::{AutoCount, AutoMib, ByteSize, EgressValue, GoDuration, LogLevel, MemoryShare};

/// Merging of two layers of the same settings.
pub trait Layer {
    /// `self` over `lower`: each value of `self` that is set wins, the rest comes from
    /// `lower`.
    fn over(self, lower: Self) -> Self;
}

impl<T> Layer for Option<T> {
    fn over(self, lower: Self) -> Self {
        self.or(lower)
    }
}

/// Declares a layer: a struct whose fields are optional values or other layers, decoded from
/// YAML with kebab-case keys (unknown keys refused) and merged field by field.
macro_rules! layer {
    (
        $(#[$meta:meta])*
        pub struct $name:ident {
            $( $(#[$field_meta:meta])* pub $field:ident: $ty:ty, )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Default, PartialEq, serde::Deserialize)]
        #[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
        pub struct $name {
            $( $(#[$field_meta])* pub $field: $ty, )*
        }

        impl $crate::config::layer::Layer for $name {
            fn over(self, lower: Self) -> Self {
                Self {
                    $( $field: $crate::config::layer::Layer::over(self.$field, lower.$field), )*
                }
            }
        }
    };
}

/// A section given as `key:` with nothing (`null`) is the same as leaving it out.
pub(crate) fn section<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Option::<T>::deserialize(d).map(Option::unwrap_or_default)
}

/// A size that may be given as an empty string, meaning "not set".
fn optional_size<'de, D: Deserializer<'de>>(d: D) -> Result<Option<ByteSize>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Number(u64),
        Text(String),
    }
    match Option::<Raw>::deserialize(d)? {
        None => Ok(None),
        Some(Raw::Number(n)) => Ok(Some(ByteSize(n))),
        Some(Raw::Text(text)) if text.trim().is_empty() => Ok(None),
        Some(Raw::Text(text)) => super::values::parse_size(&text)
            .map(Some)
            .map_err(serde::de::Error::custom),
    }
}

layer! {
    /// The worker's settings, as one layer (the YAML file, or the command line).
    pub struct WorkerLayer {
        /// Listen address (command line only).
        #[serde(skip)]
        pub listen: Option<String>,
        /// `broker-id`.
        pub broker_id: Option<ComponentId>,
        /// `broker-control-url` (empty: standalone).
        pub broker_control_url: Option<String>,
        /// `worker-id`.
        pub worker_id: Option<ComponentId>,
        /// `hostname`.
        pub hostname: Option<String>,
        /// `hardware-sku` (YAML only).
        pub hardware_sku: Option<String>,
        /// `virtualization`: of the pre-pull targets, and enabled beside the default (YAML only).
        pub virtualization: Option<String>,
        /// `default-virtualization`.
        pub default_virtualization: Option<String>,
        /// `advertise-url` (empty: derived from the listen address and host name).
        pub advertise_url: Option<String>,
        /// `total-cores` (0: the CPUs).
        pub total_cores: Option<AutoCount>,
        /// `total-memory-mib` (0: 1024 per core).
        pub total_memory_mib: Option<AutoMib>,
        /// `max-live-sandboxes` (0: the cores × cpu-overcommit with containers, else the cores; 2 on macOS).
        pub max_live_sandboxes: Option<AutoCount>,
        /// `default-ttl`.
        pub default_ttl: Option<GoDuration>,
        /// `max-ttl`.
        pub max_ttl: Option<GoDuration>,
        /// `registration-heartbeat`.
        pub registration_heartbeat: Option<GoDuration>,
        /// `registration-jitter-percent` (clamped to [0, 95]).
        pub registration_jitter_percent: Option<i64>,
        /// `registration-probe`.
        pub registration_probe: Option<GoDuration>,
        /// `log:`.
        #[serde(deserialize_with = "section")]
        pub log: LogLayer,
        /// `pre-pull:`.
        #[serde(deserialize_with = "section")]
        pub pre_pull: PrePullLayer,
        /// `container:`.
        #[serde(deserialize_with = "section")]
        pub container: ContainerLayer,
        /// `capacity:`.
        #[serde(deserialize_with = "section")]
        pub capacity: CapacityLayer,
        /// `images:`.
        #[serde(deserialize_with = "section")]
        pub images: ImagesLayer,
        /// `network:`.
        #[serde(deserialize_with = "section")]
        pub network: NetworkLayer,
    }
}

layer! {
    /// The `network` section: sandboxes' network egress.
    pub struct NetworkLayer {
        /// `default-egress`: the egress of creates that name none.
        pub default_egress: Option<EgressValue>,
        /// `allowed-modes`: the modes clients may ask for.
        pub allowed_modes: Option<Vec<EgressValue>>,
        /// `range`: the IPv4 range sandbox addresses come from.
        pub range: Option<String>,
        /// `blocked-cidrs`: ranges sandboxes never reach.
        pub blocked_cidrs: Option<Vec<String>>,
        /// `dns-upstream`: the resolver the sandboxes' DNS forwarder asks (`ip[:port]`).
        pub dns_upstream: Option<String>,
        /// `uplink`: the interface sandbox traffic leaves by.
        pub uplink: Option<String>,
        /// `bandwidth`: each sandbox's rate each way (`20mbit`).
        pub bandwidth: Option<String>,
    }
}

layer! {
    /// The `images` section: OCI images of the `container` backend.
    pub struct ImagesLayer {
        /// `dir`: where images are pulled and unpacked (`none`: OCI references are refused).
        pub dir: Option<String>,
        /// `insecure-registries`: registries reached over plain HTTP (loopback always is).
        pub insecure_registries: Option<Vec<String>>,
        /// `mirrors`: registry -> mirror URLs, tried in order before the registry.
        pub mirrors: Option<BTreeMap<String, Vec<String>>>,
        /// `pull-timeout`: longest wait for a registry to answer.
        pub pull_timeout: Option<GoDuration>,
        /// `credentials`: registry (or mirror) `host[:port]` -> login.
        pub credentials: Option<BTreeMap<String, LoginLayer>>,
        /// `docker-config`: a Docker `config.json` whose `auths` are used.
        pub docker_config: Option<String>,
        /// `max-disk`: most bytes the directory keeps; unused images go past it.
        #[serde(deserialize_with = "optional_size")]
        pub max_disk: Option<ByteSize>,
        /// `operators`: client ids that may list, pull and remove images in prod mode.
        pub operators: Option<Vec<String>>,
        /// `allowed-registries`: the registries images may come from (empty: any).
        pub allowed_registries: Option<Vec<String>>,
    }
}

/// A registry login of the `images.credentials` section.
#[derive(Debug, Clone, Default, PartialEq, serde::Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct LoginLayer {
    /// `username`.
    pub username: String,
    /// `password` (or a token).
    pub password: Option<String>,
    /// `password-file`: a file whose content (trimmed) is the password.
    pub password_file: Option<String>,
}

layer! {
    /// The `capacity` section: how sandboxes count against the worker's cores and memory.
    pub struct CapacityLayer {
        /// `cpu-overcommit`: cpu quota handed out per core to containers.
        pub cpu_overcommit: Option<u32>,
        /// `memory-overcommit`: memory limits handed out per MiB to containers.
        pub memory_overcommit: Option<u32>,
        /// `memory-high-watermark`: refuse new sandboxes above this actual use.
        pub memory_high_watermark: Option<MemoryShare>,
        /// `max-warm-per-tuple`: most idle warm sandboxes of one tuple.
        pub max_warm_per_tuple: Option<u32>,
        /// `warm-fill-parallelism`: most warm sandboxes provisioned at once.
        pub warm_fill_parallelism: Option<u32>,
    }
}

layer! {
    /// The `log` section.
    pub struct LogLayer {
        /// `level`.
        pub level: Option<LogLevel>,
        /// `file` (empty: stdout).
        pub file: Option<String>,
        /// `rotate-size` (default 100 MB).
        #[serde(deserialize_with = "optional_size")]
        pub rotate_size: Option<ByteSize>,
        /// `max-rotations`.
        pub max_rotations: Option<u32>,
    }
}

layer! {
    /// The `pre-pull` section: warm-pool floors.
    pub struct PrePullLayer {
        /// `images`.
        pub images: Option<Vec<String>>,
        /// `warmup-script`.
        pub warmup_script: Option<String>,
        /// `warmup-timeout-seconds` (0: the default).
        pub warmup_timeout_seconds: Option<u64>,
    }
}

layer! {
    /// The `container` section: settings of the `container` backend.
    pub struct ContainerLayer {
        /// `state-dir`.
        pub state_dir: Option<String>,
        /// `cgroup-parent`.
        pub cgroup_parent: Option<String>,
        /// `images`: name -> directory of a read-only lower layer.
        pub images: Option<BTreeMap<String, String>>,
        /// `pids-limit`.
        pub pids_limit: Option<u64>,
        /// `scratch-size-mib`.
        pub scratch_size_mib: Option<u64>,
        /// `python-zygote`.
        pub python_zygote: Option<bool>,
        /// `lazy-zygote`.
        pub lazy_zygote: Option<bool>,
        /// `spare-inits`.
        pub spare_inits: Option<usize>,
    }
}
