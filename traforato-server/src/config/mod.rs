//! Configuration of the three binaries, in layers: defaults < `TRAFORATO_*` variables <
//! flags (clap, [`args`]) < the worker YAML ([`layer`]), each value typed once
//! ([`values`]: Go durations, sizes, "0 means automatic" counts, log levels), and the
//! validated settings each binary runs with ([`settings`]). Listen addresses and the URLs
//! derived from them live in [`address`].
//!
//! Adding a worker YAML key is one field in [`layer::WorkerLayer`] (or one of its sections)
//! and its use in [`settings::WorkerSettings::resolve`]; a flag shared by the worker and dev
//! binaries is one entry of the `worker_flags!` table in [`args`].

pub mod address;
pub mod args;
pub mod layer;
pub mod settings;
pub mod values;

use std::io;
use std::path::PathBuf;
use std::time::Duration;

pub use address::{
    advertise_url, bind_address, check_exposure, listen_or_default, local_url, split_host_port,
};
pub use args::{
    go_style_args, parse_or_exit, AuthArgs, BrokerArgs, DevArgs, DevWorkerFlags, HealthcheckArgs,
    ServiceArgs, ServiceCommand, WorkerArgs, WorkerFlags, VERSION,
};
pub use settings::{
    parse_worker_yaml, read_worker_file, BrokerSettings, ContainerSettings, DevSettings, Login,
    OciSettings, PrePullSettings, WorkerSettings,
};
pub use traforato_core::duration::{parse_duration, DurationError};
pub use values::{parse_log_level, parse_size, ByteSize, MemoryShare, ValueError};

/// The deployment's default virtualization when none is configured.
pub const DEFAULT_VIRTUALIZATION: &str = "container";

/// The port a worker advertises when its listen address names none.
pub const DEFAULT_WORKER_PORT: u16 = 8081;

/// The broker's default port.
pub const DEFAULT_BROKER_PORT: u16 = 8080;

/// Default budget of a pre-pull warm-up script.
pub const DEFAULT_WARMUP_TIMEOUT: Duration = Duration::from_secs(120);

/// Default log rotation size, in MiB.
pub const DEFAULT_ROTATE_SIZE_MIB: u64 = 100;

pub use traforato_core::worker::defaults::{
    DEFAULT_CPU_OVERCOMMIT, DEFAULT_MAX_WARM_PER_TUPLE, DEFAULT_MEMORY_HIGH_WATERMARK_PERCENT,
    DEFAULT_MEMORY_OVERCOMMIT, DEFAULT_REGISTRATION_PROBE, REAP_INTERVAL,
};

/// The broker's heartbeat hint to workers (fixed, as in the prototype).
pub const HEARTBEAT_HINT: Duration = Duration::from_secs(30);

/// Why the configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The worker YAML file could not be read.
    #[error("read config file {path}")]
    ReadFile {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// A secret file (`--jwt-secret-file`, `--internal-secret-file`) could not be read.
    #[error("read {flag} {path}")]
    ReadSecretFile {
        /// The flag that named it.
        flag: &'static str,
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// The worker YAML file did not decode (unknown key, wrong type, bad duration, size or
    /// level).
    #[error("invalid worker config at {key}")]
    Yaml {
        /// Where: the dotted path of the key (`log.rotate-size`), `.` for the document.
        key: String,
        /// Cause.
        #[source]
        source: serde_norway::Error,
    },
    /// The worker YAML file held more than one document.
    #[error("multiple YAML documents are not supported")]
    MultipleDocuments,
    /// A value that does not mean anything at `key`.
    #[error("invalid {key}: {reason}")]
    InvalidValue {
        /// The dotted key.
        key: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// `log.rotate-size` is zero.
    #[error("invalid log.rotate-size: {0}")]
    InvalidRotateSize(String),
    /// No broker or worker id was given at all (only for layers built by hand).
    #[error("{0} is required")]
    MissingId(&'static str),
    /// A listen address is empty.
    #[error("listen address is required")]
    EmptyListen,
    /// Development mode (no JWT secret, so no authentication) was asked to listen on an
    /// address other than loopback without `--insecure-dev-mode-on-network`.
    #[error(
        "refusing to listen on {listen} in development mode: without a JWT secret there is no \
         authentication, so anyone who can reach the port could run code in sandboxes; listen \
         on a loopback address (127.0.0.1, ::1, localhost), set TRAFORATO_JWT_SECRET for prod \
         mode, or pass --insecure-dev-mode-on-network"
    )]
    DevModeOnNetwork {
        /// The listen address as configured.
        listen: String,
    },
}

#[cfg(test)]
mod tests;
