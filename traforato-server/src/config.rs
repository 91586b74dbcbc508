//! Configuration of the three binaries: flags and `TRAFORATO_*` variables (clap), Go-style
//! durations and listen addresses, the strictly decoded worker YAML file, and the values
//! derived from them (advertise URL, dev URLs, pre-pull targets, log settings).
//!
//! Precedence: YAML file > flag > environment variable > default.

use std::collections::BTreeMap;
use std::collections::HashSet;
use std::ffi::OsString;
use std::io;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser};
use serde::{Deserialize, Deserializer};
use tracing_subscriber::filter::LevelFilter;
use traforato_core::auth::{AuthConfig, AuthMode};
use traforato_core::broker::BrokerConfig;
use traforato_core::id::{ComponentId, IdError};
use traforato_core::tuple::SandboxTuple;
use traforato_core::worker::{PrePullTarget, WorkerConfig};

use crate::logging::LogSettings;

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

/// How often the worker's TTL reaper runs.
pub const REAP_INTERVAL: Duration = Duration::from_secs(1);

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
    /// The worker YAML file did not decode (unknown key, wrong type, bad duration).
    #[error("invalid worker config")]
    Yaml(#[source] serde_yaml::Error),
    /// The worker YAML file held more than one document.
    #[error("multiple YAML documents are not supported")]
    MultipleDocuments,
    /// `log.level` is not a known level.
    #[error("invalid log.level: {0}")]
    InvalidLogLevel(String),
    /// `log.rotate-size` did not parse.
    #[error("invalid log.rotate-size: {0}")]
    InvalidRotateSize(String),
    /// `log.max-rotations` was negative.
    #[error("log.max-rotations must be >= 0")]
    NegativeMaxRotations,
    /// A broker or worker id is invalid.
    #[error("invalid {field}")]
    InvalidId {
        /// Which setting.
        field: &'static str,
        /// Why.
        #[source]
        source: IdError,
    },
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

// ---------------------------------------------------------------------------------------------
// Durations

/// Why a Go-style duration did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// Not a duration at all.
    #[error("invalid duration {0:?}")]
    Invalid(String),
    /// A number without a unit, e.g. `30` (write `30s`).
    #[error("missing unit in duration {0:?}")]
    MissingUnit(String),
    /// A unit other than `ns`, `us`, `µs`, `ms`, `s`, `m`, `h`.
    #[error("unknown unit {unit:?} in duration {input:?}")]
    UnknownUnit {
        /// The unit.
        unit: String,
        /// The whole input.
        input: String,
    },
    /// A negative duration.
    #[error("negative duration {0:?}")]
    Negative(String),
    /// Too large.
    #[error("duration {0:?} is out of range")]
    Overflow(String),
}

/// Parses a Go duration string: a sequence of decimal numbers, each with an optional fraction
/// and a unit (`ns`, `us`/`µs`, `ms`, `s`, `m`, `h`), e.g. `30s`, `1h2m`, `1.5h`, `300ms`.
/// `0` is accepted; any other bare number is rejected; negative durations are rejected.
pub fn parse_duration(raw: &str) -> Result<Duration, DurationError> {
    let input = raw.trim();
    let invalid = || DurationError::Invalid(raw.to_string());
    let (negative, mut rest) = match input.as_bytes().first() {
        Some(b'-') => (true, &input[1..]),
        Some(b'+') => (false, &input[1..]),
        _ => (false, input),
    };
    if rest == "0" {
        return Ok(Duration::ZERO);
    }
    if rest.is_empty() {
        return Err(invalid());
    }
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let int_len = rest.bytes().take_while(u8::is_ascii_digit).count();
        let int_part = &rest[..int_len];
        rest = &rest[int_len..];
        let mut frac_part = "";
        if let Some(after_dot) = rest.strip_prefix('.') {
            let frac_len = after_dot.bytes().take_while(u8::is_ascii_digit).count();
            frac_part = &after_dot[..frac_len];
            rest = &after_dot[frac_len..];
        }
        if int_part.is_empty() && frac_part.is_empty() {
            return Err(invalid());
        }
        let unit_len = rest
            .find(|c: char| c == '.' || c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let per_unit: u128 = match unit {
            "" => return Err(DurationError::MissingUnit(raw.to_string())),
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60 * 1_000_000_000,
            "h" => 3_600 * 1_000_000_000,
            other => {
                return Err(DurationError::UnknownUnit {
                    unit: other.to_string(),
                    input: raw.to_string(),
                })
            }
        };
        let overflow = || DurationError::Overflow(raw.to_string());
        let whole: u128 = if int_part.is_empty() {
            0
        } else if int_part.len() > 30 {
            return Err(overflow());
        } else {
            int_part.parse().map_err(|_| invalid())?
        };
        // Digits past 18 cannot change the result by a whole nanosecond of any unit ≤ 1 h.
        let frac_digits = &frac_part[..frac_part.len().min(18)];
        let frac_nanos: u128 = if frac_digits.is_empty() {
            0
        } else {
            let value: u128 = frac_digits.parse().map_err(|_| invalid())?;
            value * per_unit / 10u128.pow(frac_digits.len() as u32)
        };
        total = whole
            .checked_mul(per_unit)
            .and_then(|n| n.checked_add(frac_nanos))
            .and_then(|n| n.checked_add(total))
            .ok_or_else(overflow)?;
    }
    if negative && total != 0 {
        return Err(DurationError::Negative(raw.to_string()));
    }
    let nanos = u64::try_from(total).map_err(|_| DurationError::Overflow(raw.to_string()))?;
    Ok(Duration::from_nanos(nanos))
}

fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let text: Option<String> = Option::deserialize(d)?;
    text.map(|t| parse_duration(&t).map_err(serde::de::Error::custom))
        .transpose()
}

// ---------------------------------------------------------------------------------------------
// Addresses and URLs

/// The address to bind for a Go-style listen address: `:8080` means every interface
/// (`0.0.0.0:8080`); anything else is used as written (host names are resolved at bind).
pub fn bind_address(listen: &str) -> Result<String, ConfigError> {
    let listen = listen.trim();
    if listen.is_empty() {
        return Err(ConfigError::EmptyListen);
    }
    Ok(if listen.starts_with(':') {
        format!("0.0.0.0{listen}")
    } else {
        listen.to_string()
    })
}

/// The listen address to use: `listen` as configured, or when that is empty the default of
/// the mode: `127.0.0.1:<port>` in development mode (no authentication, so loopback only),
/// `:<port>` (every interface) in prod.
pub fn listen_or_default(listen: &str, default_port: u16, mode: AuthMode) -> String {
    let listen = listen.trim();
    match (listen.is_empty(), mode) {
        (false, _) => listen.to_string(),
        (true, AuthMode::Dev) => format!("127.0.0.1:{default_port}"),
        (true, AuthMode::Prod) => format!(":{default_port}"),
    }
}

/// Refuses a development-mode (`mode` = dev) listen address that is not loopback unless
/// `allow_network` (`--insecure-dev-mode-on-network`). A host name counts as loopback only if
/// every address it resolves to is; `:port`, `0.0.0.0` and `::` are every interface. Prod mode
/// may listen anywhere.
pub fn check_exposure(
    listen: &str,
    mode: AuthMode,
    allow_network: bool,
) -> Result<(), ConfigError> {
    if mode.is_prod() || allow_network {
        return Ok(());
    }
    let refused = || ConfigError::DevModeOnNetwork {
        listen: listen.trim().to_string(),
    };
    let addr = bind_address(listen)?;
    let Some((host, port)) = split_host_port(&addr) else {
        return Err(refused());
    };
    if host.eq_ignore_ascii_case("localhost") {
        return Ok(());
    }
    let loopback = match host.parse::<std::net::IpAddr>() {
        Ok(ip) => ip.to_canonical().is_loopback(),
        Err(_) => {
            use std::net::ToSocketAddrs;
            let resolved: Vec<_> = (host.as_str(), port.parse::<u16>().unwrap_or(0))
                .to_socket_addrs()
                .map(Iterator::collect)
                .unwrap_or_default();
            !resolved.is_empty() && resolved.iter().all(|a| a.ip().to_canonical().is_loopback())
        }
    };
    if loopback {
        Ok(())
    } else {
        Err(refused())
    }
}

/// Splits `host:port` like Go's `net.SplitHostPort`: `[v6]:port`, `:port` (empty host),
/// `host:port`. A missing port or a bare IPv6 address is an error (`None`).
pub fn split_host_port(addr: &str) -> Option<(String, String)> {
    if let Some(rest) = addr.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        let port = after.strip_prefix(':')?;
        if port.contains(':') {
            return None;
        }
        return Some((host.to_string(), port.to_string()));
    }
    let (host, port) = addr.rsplit_once(':')?;
    if host.contains(':') || host.contains('[') || host.contains(']') {
        return None;
    }
    Some((host.to_string(), port.to_string()))
}

fn is_wildcard_host(host: &str) -> bool {
    matches!(host, "" | "0.0.0.0" | "::")
}

fn url_host(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    }
}

/// The port to advertise: the configured one, or the bound one when the configuration asked
/// for an ephemeral port (`0`).
fn effective_port(configured: &str, bound_port: Option<u16>) -> String {
    match (configured.parse::<u16>(), bound_port) {
        (Ok(0), Some(bound)) => bound.to_string(),
        _ => configured.to_string(),
    }
}

/// The worker's advertise URL (§6.3): the listen address's host and port, a wildcard host
/// replaced by `hostname` (or `localhost` when that is empty), port 8081 when the address has
/// none. `bound_port` replaces a configured port 0.
pub fn advertise_url(listen: &str, hostname: &str, bound_port: Option<u16>) -> String {
    let (host, port) = match split_host_port(listen.trim()) {
        Some((host, port)) if !port.is_empty() => (host, port),
        Some((host, _)) => (host, DEFAULT_WORKER_PORT.to_string()),
        None => (String::new(), DEFAULT_WORKER_PORT.to_string()),
    };
    let host = if is_wildcard_host(&host) {
        let hostname = hostname.trim();
        if hostname.is_empty() {
            "localhost".to_string()
        } else {
            hostname.to_string()
        }
    } else {
        host
    };
    format!(
        "http://{}:{}",
        url_host(&host),
        effective_port(&port, bound_port)
    )
}

/// A dev-mode URL derived from a listen address (§6.5): wildcard hosts become `localhost`;
/// an address that does not split gives `http://localhost:<fallback_port>`.
pub fn local_url(listen: &str, fallback_port: u16, bound_port: Option<u16>) -> String {
    match split_host_port(listen.trim()) {
        Some((host, port)) if !port.is_empty() => {
            let host = if is_wildcard_host(&host) {
                "localhost".to_string()
            } else {
                host
            };
            format!(
                "http://{}:{}",
                url_host(&host),
                effective_port(&port, bound_port)
            )
        }
        _ => format!("http://localhost:{fallback_port}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Command lines

/// Rewrites Go-style single-dash long flags (`-listen :8080`) into clap's `--listen :8080`,
/// so command lines written for the prototype keep working. Short flags (`-h`), negative
/// numbers and everything after `--` are left alone.
pub fn go_style_args<I: IntoIterator<Item = OsString>>(args: I) -> Vec<OsString> {
    let mut out = Vec::new();
    let mut passthrough = false;
    for (i, arg) in args.into_iter().enumerate() {
        if i == 0 || passthrough {
            out.push(arg);
            continue;
        }
        match arg.to_str() {
            Some("--") => {
                passthrough = true;
                out.push(arg);
            }
            Some(s)
                if s.len() > 2 && s.starts_with('-') && s.as_bytes()[1].is_ascii_alphabetic() =>
            {
                out.push(OsString::from(format!("-{s}")));
            }
            _ => out.push(arg),
        }
    }
    out
}

/// Parses the process's command line into `T`. `--help` and `--version` print and exit 0;
/// any other error prints `<service>: <error>` to stderr and exits 1.
pub fn parse_or_exit<T: Parser>(service: &str) -> T {
    match T::try_parse_from(go_style_args(std::env::args_os())) {
        Ok(args) => args,
        Err(err) => match err.kind() {
            clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => {
                err.exit()
            }
            _ => {
                let text = err.to_string();
                let first = text.lines().next().unwrap_or_default();
                let message = first.strip_prefix("error: ").unwrap_or(first);
                eprintln!("{service}: {message}");
                std::process::exit(1);
            }
        },
    }
}

/// Authentication settings shared by all binaries. `Debug` never shows the secret.
#[derive(Clone, Args)]
pub struct AuthArgs {
    /// Shared HS256 secret of client JWTs and of the worker -> broker internal tokens (prefer
    /// the environment variable: flags show up in process listings). Surrounding whitespace
    /// is trimmed. Empty runs in development no-auth mode: no client tokens, no sandbox
    /// ownership, no internal tokens.
    #[arg(
        long,
        env = "TRAFORATO_JWT_SECRET",
        default_value = "",
        hide_env_values = true,
        hide_default_value = true
    )]
    pub jwt_secret: String,
    /// Required `iss` claim of client JWTs, and the `iss` of internal worker tokens; empty
    /// means any issuer (prod mode).
    #[arg(long, env = "TRAFORATO_JWT_ISSUER", default_value = "traforato")]
    pub jwt_issuer: String,
    /// Let development mode (no JWT secret: no authentication at all) listen on addresses
    /// other than loopback. Anyone who can reach the port can then run code in sandboxes.
    #[arg(long, env = "TRAFORATO_INSECURE_DEV_MODE_ON_NETWORK")]
    pub insecure_dev_mode_on_network: bool,
    /// Required `aud` claim (one entry of it) of client JWTs; empty means any audience
    /// (prod mode). Internal worker tokens always use `traforato-internal`.
    #[arg(long, env = "TRAFORATO_JWT_AUDIENCE", default_value = "traforato-api")]
    pub jwt_audience: String,
    /// Longest lifetime (exp - iat) of a client or internal token (Go duration); longer
    /// tokens are refused with 401.
    #[arg(long, env = "TRAFORATO_JWT_MAX_LIFETIME", default_value = "1h", value_parser = parse_duration)]
    pub jwt_max_lifetime: Duration,
    /// Secret of the worker -> broker internal tokens, the same on the broker and every
    /// worker; empty derives their key from the JWT secret. Set it so that whoever holds the
    /// JWT secret (to mint client tokens) cannot speak for a worker.
    #[arg(
        long,
        env = "TRAFORATO_INTERNAL_SECRET",
        default_value = "",
        hide_env_values = true,
        hide_default_value = true
    )]
    pub internal_secret: String,
}

impl AuthArgs {
    /// The library's auth settings (secrets, issuer, audience, token lifetime).
    pub fn auth_config(&self) -> AuthConfig {
        AuthConfig {
            secret: self.jwt_secret.clone(),
            internal_secret: self.internal_secret.clone(),
            issuer: self.jwt_issuer.clone(),
            audience: self.jwt_audience.clone(),
            max_token_lifetime: self.jwt_max_lifetime,
        }
    }

    /// Dev when the secret is empty after trimming, prod otherwise.
    pub fn mode(&self) -> AuthMode {
        self.auth_config().mode()
    }
}

impl std::fmt::Debug for AuthArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The same redaction as the library's config.
        f.debug_struct("AuthArgs")
            .field("auth", &self.auth_config())
            .finish()
    }
}

/// `traforato-broker` command line.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "traforato-broker",
    version,
    about = "traforato broker: places sandbox creates on workers and redirects sandbox requests to the worker that owns them"
)]
pub struct BrokerArgs {
    /// Address to listen on; `:8080` means every interface. Default: 127.0.0.1:8080 without
    /// a JWT secret (development mode listens on loopback only), :8080 with one.
    #[arg(
        long,
        env = "TRAFORATO_BROKER_LISTEN_ADDR",
        default_value = "",
        hide_default_value = true
    )]
    pub listen: String,
    /// This broker's id ([A-Za-z0-9_]+); sandbox ids name it.
    #[arg(long, env = "TRAFORATO_BROKER_ID", default_value = "broker_local")]
    pub broker_id: String,
    /// Most times a create may bounce back from a worker; 0 means no retries.
    #[arg(
        long,
        env = "TRAFORATO_BROKER_PLACEMENT_RETRY_MAX",
        default_value_t = 2
    )]
    pub placement_retry_max: u32,
    /// How long a worker registration lasts without renewal (Go duration, e.g. 120s).
    #[arg(long, env = "TRAFORATO_BROKER_WORKER_LEASE_TTL", default_value = "120s", value_parser = parse_duration)]
    pub worker_lease_ttl: Duration,
    /// How often lapsed worker leases are swept (Go duration).
    #[arg(long, env = "TRAFORATO_BROKER_WORKER_LEASE_SWEEP_INTERVAL", default_value = "10s", value_parser = parse_duration)]
    pub worker_lease_sweep_interval: Duration,
    /// Virtualization of creates that name none.
    #[arg(long, env = "TRAFORATO_BROKER_DEFAULT_VIRTUALIZATION", default_value = DEFAULT_VIRTUALIZATION)]
    pub default_virtualization: String,
    #[command(flatten)]
    pub auth: AuthArgs,
}

/// Everything `traforato-broker` needs, validated.
#[derive(Debug, Clone)]
pub struct BrokerSettings {
    /// Address to bind.
    pub bind: String,
    /// The library configuration.
    pub config: BrokerConfig,
    /// Client and internal token settings (`Debug` redacts the secret).
    pub auth: AuthConfig,
}

impl BrokerSettings {
    /// Validates the command line.
    pub fn from_args(args: &BrokerArgs) -> Result<Self, ConfigError> {
        let auth = args.auth.auth_config();
        let mode = auth.mode();
        let listen = listen_or_default(&args.listen, DEFAULT_BROKER_PORT, mode);
        check_exposure(&listen, mode, args.auth.insecure_dev_mode_on_network)?;
        Ok(Self {
            bind: bind_address(&listen)?,
            config: broker_config(
                &args.broker_id,
                args.placement_retry_max,
                args.worker_lease_ttl,
                args.worker_lease_sweep_interval,
                &args.default_virtualization,
                mode,
            )?,
            auth,
        })
    }
}

fn broker_config(
    broker_id: &str,
    placement_retry_max: u32,
    lease_ttl: Duration,
    sweep_interval: Duration,
    default_virtualization: &str,
    mode: AuthMode,
) -> Result<BrokerConfig, ConfigError> {
    Ok(BrokerConfig {
        broker_id: ComponentId::parse(broker_id).map_err(|source| ConfigError::InvalidId {
            field: "broker-id",
            source,
        })?,
        placement_retry_max,
        worker_lease_ttl: lease_ttl,
        lease_sweep_interval: sweep_interval,
        heartbeat_interval: HEARTBEAT_HINT,
        default_virtualization: non_empty_or(default_virtualization, DEFAULT_VIRTUALIZATION),
        prod_mode: mode.is_prod(),
        ..BrokerConfig::default()
    })
}

fn non_empty_or(value: &str, default: &str) -> String {
    let value = value.trim();
    if value.is_empty() {
        default.to_string()
    } else {
        value.to_string()
    }
}

/// `traforato-worker` command line.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "traforato-worker",
    version,
    about = "traforato worker: runs sandboxes on this host and registers with a broker"
)]
pub struct WorkerArgs {
    /// Worker YAML file; its keys override flags and environment variables.
    #[arg(long, env = "TRAFORATO_WORKER_CONFIG", default_value = "")]
    pub file: String,
    /// Address to listen on; `:8081` means every interface. Default: 127.0.0.1:8081 without
    /// a JWT secret (development mode listens on loopback only), :8081 with one.
    #[arg(
        long,
        env = "TRAFORATO_WORKER_LISTEN_ADDR",
        default_value = "",
        hide_default_value = true
    )]
    pub listen: String,
    /// Id of the broker this worker serves.
    #[arg(
        long,
        env = "TRAFORATO_WORKER_BROKER_ID",
        default_value = "broker_local"
    )]
    pub broker_id: String,
    /// Broker URL for registration, VM events and placement retries; empty runs standalone.
    #[arg(long, env = "TRAFORATO_WORKER_BROKER_CONTROL_URL", default_value = "")]
    pub broker_control_url: String,
    /// This worker's id ([A-Za-z0-9_]+).
    #[arg(long, env = "TRAFORATO_WORKER_ID", default_value = "worker_local")]
    pub worker_id: String,
    /// Host name sent at registration; replaces a wildcard listen host in the advertise URL.
    #[arg(long, env = "TRAFORATO_WORKER_HOSTNAME", default_value = "localhost")]
    pub hostname: String,
    /// URL clients use to reach this worker; empty derives it from --listen and --hostname.
    #[arg(long, env = "TRAFORATO_WORKER_ADVERTISE_URL", default_value = "")]
    pub advertise_url: String,
    /// Cores offered; 0 means the number of logical CPUs.
    #[arg(long, env = "TRAFORATO_WORKER_TOTAL_CORES", default_value_t = 0)]
    pub total_cores: i64,
    /// Memory offered in MiB; 0 means 1024 per core.
    #[arg(long, env = "TRAFORATO_WORKER_TOTAL_MEMORY_MIB", default_value_t = 0)]
    pub total_memory_mib: i64,
    /// Most live sandboxes; 0 means the number of cores (2 on macOS).
    #[arg(long, env = "TRAFORATO_WORKER_MAX_LIVE_SANDBOXES", default_value_t = 0)]
    pub max_live_sandboxes: i64,
    /// TTL of sandboxes created without ttl_seconds (Go duration).
    #[arg(long, env = "TRAFORATO_WORKER_DEFAULT_TTL", default_value = "30m", value_parser = parse_duration)]
    pub default_ttl: Duration,
    /// Longest TTL a create or lease may ask for (Go duration).
    #[arg(long, env = "TRAFORATO_WORKER_MAX_TTL", default_value = "24h", value_parser = parse_duration)]
    pub max_ttl: Duration,
    /// Registration heartbeat period (Go duration).
    #[arg(long, env = "TRAFORATO_WORKER_REGISTRATION_HEARTBEAT", default_value = "30s", value_parser = parse_duration)]
    pub registration_heartbeat: Duration,
    /// Heartbeat jitter in percent, clamped to [0, 95].
    #[arg(
        long,
        env = "TRAFORATO_WORKER_REGISTRATION_JITTER_PERCENT",
        default_value_t = 20
    )]
    pub registration_jitter_percent: i64,
    /// Virtualization of creates that name none (also always enabled as a backend).
    #[arg(long, env = "TRAFORATO_WORKER_DEFAULT_VIRTUALIZATION", default_value = DEFAULT_VIRTUALIZATION)]
    pub default_virtualization: String,
    #[command(flatten)]
    pub auth: AuthArgs,
}

/// `traforato-dev` command line: a broker and a worker in one process.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "traforato-dev",
    version,
    about = "traforato dev: a broker and a worker in one process, for development"
)]
pub struct DevArgs {
    /// Worker YAML file; its keys override flags and environment variables (broker-id too).
    #[arg(long, env = "TRAFORATO_DEV_WORKER_CONFIG", default_value = "")]
    pub file: String,
    /// Broker listen address; `:8080` means every interface. Default: 127.0.0.1:8080 without
    /// a JWT secret (development mode listens on loopback only), :8080 with one.
    #[arg(
        long,
        env = "TRAFORATO_DEV_BROKER_LISTEN_ADDR",
        default_value = "",
        hide_default_value = true
    )]
    pub broker_listen: String,
    /// Id of the broker.
    #[arg(long, env = "TRAFORATO_DEV_BROKER_ID", default_value = "broker_local")]
    pub broker_id: String,
    /// Broker URL clients are sent back to on placement retries; empty derives it from
    /// --broker-listen.
    #[arg(long, env = "TRAFORATO_DEV_BROKER_CONTROL_URL", default_value = "")]
    pub broker_control_url: String,
    /// Worker listen address; `:8081` means every interface. Default: 127.0.0.1:8081 without
    /// a JWT secret (development mode listens on loopback only), :8081 with one.
    #[arg(
        long,
        env = "TRAFORATO_DEV_WORKER_LISTEN_ADDR",
        default_value = "",
        hide_default_value = true
    )]
    pub worker_listen: String,
    /// URL clients use to reach the worker; empty derives it from --worker-listen.
    #[arg(long, env = "TRAFORATO_DEV_WORKER_BASE_URL", default_value = "")]
    pub worker_base_url: String,
    /// Id of the worker.
    #[arg(long, env = "TRAFORATO_DEV_WORKER_ID", default_value = "worker_local")]
    pub worker_id: String,
    /// Host name the worker registers with.
    #[arg(
        long,
        env = "TRAFORATO_DEV_WORKER_HOSTNAME",
        default_value = "localhost"
    )]
    pub worker_hostname: String,
    /// Cores offered; 0 means the number of logical CPUs.
    #[arg(long, env = "TRAFORATO_DEV_WORKER_TOTAL_CORES", default_value_t = 0)]
    pub total_cores: i64,
    /// Memory offered in MiB; 0 means 1024 per core.
    #[arg(
        long,
        env = "TRAFORATO_DEV_WORKER_TOTAL_MEMORY_MIB",
        default_value_t = 0
    )]
    pub total_memory_mib: i64,
    /// Most live sandboxes; 0 means the number of cores (2 on macOS).
    #[arg(
        long,
        env = "TRAFORATO_DEV_WORKER_MAX_LIVE_SANDBOXES",
        default_value_t = 0
    )]
    pub max_live_sandboxes: i64,
    /// TTL of sandboxes created without ttl_seconds (Go duration).
    #[arg(long, env = "TRAFORATO_DEV_WORKER_DEFAULT_TTL", default_value = "30m", value_parser = parse_duration)]
    pub default_ttl: Duration,
    /// Longest TTL a create or lease may ask for (Go duration).
    #[arg(long, env = "TRAFORATO_DEV_WORKER_MAX_TTL", default_value = "24h", value_parser = parse_duration)]
    pub max_ttl: Duration,
    /// Registration heartbeat period (Go duration).
    #[arg(long, env = "TRAFORATO_DEV_WORKER_REGISTRATION_HEARTBEAT", default_value = "30s", value_parser = parse_duration)]
    pub registration_heartbeat: Duration,
    /// Heartbeat jitter in percent, clamped to [0, 95].
    #[arg(
        long,
        env = "TRAFORATO_DEV_WORKER_REGISTRATION_JITTER_PERCENT",
        default_value_t = 20
    )]
    pub registration_jitter_percent: i64,
    /// Virtualization of creates that name none (also always enabled as a backend).
    #[arg(long, env = "TRAFORATO_DEV_DEFAULT_VIRTUALIZATION", default_value = DEFAULT_VIRTUALIZATION)]
    pub default_virtualization: String,
    #[command(flatten)]
    pub auth: AuthArgs,
}

// ---------------------------------------------------------------------------------------------
// Worker YAML

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct WorkerFile {
    broker_id: Option<String>,
    broker_control_url: Option<String>,
    worker_id: Option<String>,
    hostname: Option<String>,
    hardware_sku: Option<String>,
    virtualization: Option<String>,
    default_virtualization: Option<String>,
    advertise_url: Option<String>,
    total_cores: Option<i64>,
    total_memory_mib: Option<i64>,
    max_live_sandboxes: Option<i64>,
    #[serde(default, deserialize_with = "de_duration")]
    default_ttl: Option<Duration>,
    #[serde(default, deserialize_with = "de_duration")]
    max_ttl: Option<Duration>,
    #[serde(default, deserialize_with = "de_duration")]
    registration_heartbeat: Option<Duration>,
    registration_jitter_percent: Option<i64>,
    log: Option<LogFile>,
    pre_pull: Option<PrePullFile>,
    container: Option<ContainerFile>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct ContainerFile {
    state_dir: Option<String>,
    cgroup_parent: Option<String>,
    images: Option<BTreeMap<String, String>>,
    pids_limit: Option<u64>,
    scratch_size_mib: Option<u64>,
    python_zygote: Option<bool>,
}

/// The worker YAML's `container` section: settings of the `container` backend. `None` or an
/// empty value keeps the backend's default.
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
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct LogFile {
    level: Option<String>,
    file: Option<String>,
    rotate_size: Option<String>,
    max_rotations: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct PrePullFile {
    images: Option<Vec<String>>,
    warmup_script: Option<String>,
    warmup_timeout_seconds: Option<i64>,
}

/// The worker's settings after flags, environment and YAML are merged, before runtime
/// defaults (cores, memory, advertise URL) are applied.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerValues {
    /// Listen address.
    pub listen: String,
    /// Broker id.
    pub broker_id: String,
    /// Broker control URL (empty: standalone).
    pub broker_control_url: String,
    /// Worker id.
    pub worker_id: String,
    /// Host name.
    pub hostname: String,
    /// Hardware SKU (YAML only).
    pub hardware_sku: String,
    /// YAML `virtualization`: the virtualization of pre-pull targets (empty: the default).
    pub virtualization: String,
    /// The deployment's default virtualization.
    pub default_virtualization: String,
    /// Explicit advertise URL (empty: derived).
    pub advertise_url: String,
    /// Cores (≤ 0: runtime default).
    pub total_cores: i64,
    /// Memory in MiB (≤ 0: derived).
    pub total_memory_mib: i64,
    /// Most live sandboxes (≤ 0: platform default).
    pub max_live_sandboxes: i64,
    /// Default sandbox TTL.
    pub default_ttl: Duration,
    /// Longest sandbox TTL.
    pub max_ttl: Duration,
    /// Heartbeat period.
    pub registration_heartbeat: Duration,
    /// Heartbeat jitter percent (clamped later).
    pub registration_jitter_percent: i64,
    /// `log.level`, raw.
    pub log_level: String,
    /// `log.file`.
    pub log_file: String,
    /// `log.rotate-size`, raw (parsed only when `log.file` is set).
    pub log_rotate_size: String,
    /// `log.max-rotations`.
    pub log_max_rotations: i64,
    /// `pre-pull.images`, raw.
    pub pre_pull_images: Vec<String>,
    /// `pre-pull.warmup-script`.
    pub pre_pull_warmup_script: String,
    /// `pre-pull.warmup-timeout-seconds`.
    pub pre_pull_warmup_timeout_seconds: i64,
    /// Dev or prod, from the JWT secret (not a YAML key).
    pub auth_mode: AuthMode,
    /// `--insecure-dev-mode-on-network`: a dev-mode worker may listen beyond loopback.
    pub insecure_dev_mode_on_network: bool,
    /// The YAML `container` section.
    pub container: ContainerSettings,
}

impl WorkerValues {
    /// The values of a `traforato-worker` command line (no YAML yet).
    pub fn from_worker_args(args: &WorkerArgs) -> Self {
        Self {
            listen: listen_or_default(&args.listen, DEFAULT_WORKER_PORT, args.auth.mode()),
            broker_id: args.broker_id.clone(),
            broker_control_url: args.broker_control_url.clone(),
            worker_id: args.worker_id.clone(),
            hostname: args.hostname.clone(),
            hardware_sku: String::new(),
            virtualization: String::new(),
            default_virtualization: args.default_virtualization.clone(),
            advertise_url: args.advertise_url.clone(),
            total_cores: args.total_cores,
            total_memory_mib: args.total_memory_mib,
            max_live_sandboxes: args.max_live_sandboxes,
            default_ttl: args.default_ttl,
            max_ttl: args.max_ttl,
            registration_heartbeat: args.registration_heartbeat,
            registration_jitter_percent: args.registration_jitter_percent,
            log_level: String::new(),
            log_file: String::new(),
            log_rotate_size: String::new(),
            log_max_rotations: 0,
            pre_pull_images: Vec::new(),
            pre_pull_warmup_script: String::new(),
            pre_pull_warmup_timeout_seconds: 0,
            auth_mode: args.auth.mode(),
            insecure_dev_mode_on_network: args.auth.insecure_dev_mode_on_network,
            container: ContainerSettings::default(),
        }
    }

    /// The worker values of a `traforato-dev` command line (no YAML yet).
    pub fn from_dev_args(args: &DevArgs) -> Self {
        Self {
            listen: listen_or_default(&args.worker_listen, DEFAULT_WORKER_PORT, args.auth.mode()),
            broker_id: args.broker_id.clone(),
            broker_control_url: args.broker_control_url.clone(),
            worker_id: args.worker_id.clone(),
            hostname: args.worker_hostname.clone(),
            hardware_sku: String::new(),
            virtualization: String::new(),
            default_virtualization: args.default_virtualization.clone(),
            advertise_url: args.worker_base_url.clone(),
            total_cores: args.total_cores,
            total_memory_mib: args.total_memory_mib,
            max_live_sandboxes: args.max_live_sandboxes,
            default_ttl: args.default_ttl,
            max_ttl: args.max_ttl,
            registration_heartbeat: args.registration_heartbeat,
            registration_jitter_percent: args.registration_jitter_percent,
            log_level: String::new(),
            log_file: String::new(),
            log_rotate_size: String::new(),
            log_max_rotations: 0,
            pre_pull_images: Vec::new(),
            pre_pull_warmup_script: String::new(),
            pre_pull_warmup_timeout_seconds: 0,
            auth_mode: args.auth.mode(),
            insecure_dev_mode_on_network: args.auth.insecure_dev_mode_on_network,
            container: ContainerSettings::default(),
        }
    }

    /// Loads a `traforato-worker` configuration: flags and environment, then the YAML file,
    /// then validation.
    pub fn load_worker(args: &WorkerArgs) -> Result<Self, ConfigError> {
        let mut values = Self::from_worker_args(args);
        values.apply_file(&args.file)?;
        values.validate()?;
        Ok(values)
    }

    /// Reads and applies the YAML file at `path` (nothing when `path` is empty).
    pub fn apply_file(&mut self, path: &str) -> Result<(), ConfigError> {
        let path = path.trim();
        if path.is_empty() {
            return Ok(());
        }
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::ReadFile {
            path: PathBuf::from(path),
            source,
        })?;
        self.apply_yaml(&text)
    }

    /// Applies a worker YAML document on top of these values. Unknown keys (also nested) are
    /// errors; an empty document changes nothing; a key present overrides even with a zero
    /// value.
    pub fn apply_yaml(&mut self, text: &str) -> Result<(), ConfigError> {
        let mut documents = serde_yaml::Deserializer::from_str(text);
        let Some(first) = documents.next() else {
            return Ok(());
        };
        let file: Option<WorkerFile> = Option::deserialize(first).map_err(ConfigError::Yaml)?;
        if documents.next().is_some() {
            return Err(ConfigError::MultipleDocuments);
        }
        let Some(file) = file else {
            return Ok(());
        };
        let set = |target: &mut String, value: Option<String>| {
            if let Some(value) = value {
                *target = value;
            }
        };
        set(&mut self.broker_id, file.broker_id);
        set(&mut self.broker_control_url, file.broker_control_url);
        set(&mut self.worker_id, file.worker_id);
        set(&mut self.hostname, file.hostname);
        set(&mut self.hardware_sku, file.hardware_sku);
        set(&mut self.virtualization, file.virtualization);
        set(
            &mut self.default_virtualization,
            file.default_virtualization,
        );
        set(&mut self.advertise_url, file.advertise_url);
        if let Some(v) = file.total_cores {
            self.total_cores = v;
        }
        if let Some(v) = file.total_memory_mib {
            self.total_memory_mib = v;
        }
        if let Some(v) = file.max_live_sandboxes {
            self.max_live_sandboxes = v;
        }
        if let Some(v) = file.default_ttl {
            self.default_ttl = v;
        }
        if let Some(v) = file.max_ttl {
            self.max_ttl = v;
        }
        if let Some(v) = file.registration_heartbeat {
            self.registration_heartbeat = v;
        }
        if let Some(v) = file.registration_jitter_percent {
            self.registration_jitter_percent = v;
        }
        if let Some(log) = file.log {
            set(&mut self.log_level, log.level);
            set(&mut self.log_file, log.file);
            set(&mut self.log_rotate_size, log.rotate_size);
            if let Some(v) = log.max_rotations {
                self.log_max_rotations = v;
            }
        }
        if let Some(container) = file.container {
            let settings = &mut self.container;
            if let Some(dir) = container.state_dir.filter(|d| !d.trim().is_empty()) {
                settings.state_dir = Some(PathBuf::from(dir.trim()));
            }
            if let Some(parent) = container.cgroup_parent.filter(|p| !p.trim().is_empty()) {
                settings.cgroup_parent = Some(parent.trim().to_string());
            }
            if let Some(images) = container.images {
                settings.images = images
                    .into_iter()
                    .map(|(name, dir)| (name.trim().to_string(), PathBuf::from(dir.trim())))
                    .collect();
            }
            settings.pids_limit = container.pids_limit.or(settings.pids_limit);
            settings.scratch_size_mib = container.scratch_size_mib.or(settings.scratch_size_mib);
            settings.python_zygote = container.python_zygote.or(settings.python_zygote);
        }
        if let Some(pre_pull) = file.pre_pull {
            if let Some(images) = pre_pull.images {
                self.pre_pull_images = images;
            }
            set(&mut self.pre_pull_warmup_script, pre_pull.warmup_script);
            if let Some(v) = pre_pull.warmup_timeout_seconds {
                self.pre_pull_warmup_timeout_seconds = v;
            }
        }
        Ok(())
    }

    /// Checks ids and log settings.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.broker_id()?;
        self.worker_id()?;
        self.log_settings()?;
        bind_address(&self.listen)?;
        check_exposure(
            &self.listen,
            self.auth_mode,
            self.insecure_dev_mode_on_network,
        )?;
        Ok(())
    }

    /// The validated broker id.
    pub fn broker_id(&self) -> Result<ComponentId, ConfigError> {
        ComponentId::parse(&self.broker_id).map_err(|source| ConfigError::InvalidId {
            field: "broker-id",
            source,
        })
    }

    /// The validated worker id.
    pub fn worker_id(&self) -> Result<ComponentId, ConfigError> {
        ComponentId::parse(&self.worker_id).map_err(|source| ConfigError::InvalidId {
            field: "worker-id",
            source,
        })
    }

    /// The deployment's default virtualization (never empty).
    pub fn default_virtualization(&self) -> String {
        non_empty_or(&self.default_virtualization, DEFAULT_VIRTUALIZATION)
    }

    /// The virtualizations to enable: the default one and the YAML `virtualization`.
    pub fn virtualizations(&self) -> Vec<String> {
        let mut out = vec![self.default_virtualization()];
        let extra = self.virtualization.trim();
        if !extra.is_empty() && !out.iter().any(|v| v == extra) {
            out.push(extra.to_string());
        }
        out
    }

    /// The broker control URL, if set (trimmed, without a trailing `/`).
    pub fn broker_control_url(&self) -> Option<String> {
        let url = self.broker_control_url.trim().trim_end_matches('/');
        (!url.is_empty()).then(|| url.to_string())
    }

    /// The `log` section as logging settings.
    pub fn log_settings(&self) -> Result<LogSettings, ConfigError> {
        if self.log_max_rotations < 0 {
            return Err(ConfigError::NegativeMaxRotations);
        }
        let file = self.log_file.trim();
        let (file, rotate_size_mib) = if file.is_empty() {
            (None, DEFAULT_ROTATE_SIZE_MIB)
        } else {
            (
                Some(PathBuf::from(file)),
                parse_rotate_size(&self.log_rotate_size)?,
            )
        };
        Ok(LogSettings {
            level: parse_log_level(&self.log_level)?,
            file,
            rotate_size_mib,
            max_rotations: u32::try_from(self.log_max_rotations).unwrap_or(u32::MAX),
        })
    }

    /// The pre-pull targets (§5.4): images trimmed, empties dropped, duplicates removed
    /// keeping the first; each with the YAML virtualization (default: the deployment's),
    /// cpu 1, target 1 and the warm-up script and timeout.
    pub fn pre_pull_targets(&self) -> Vec<PrePullTarget> {
        let default_virtualization = self.default_virtualization();
        let virtualization = non_empty_or(&self.virtualization, &default_virtualization);
        let timeout = u64::try_from(self.pre_pull_warmup_timeout_seconds)
            .ok()
            .filter(|s| *s > 0)
            .map(Duration::from_secs)
            .unwrap_or(DEFAULT_WARMUP_TIMEOUT);
        let mut seen = HashSet::new();
        self.pre_pull_images
            .iter()
            .map(|image| image.trim())
            .filter(|image| !image.is_empty() && seen.insert(image.to_string()))
            .map(|image| PrePullTarget {
                tuple: SandboxTuple::normalize(&virtualization, image, 1, &default_virtualization),
                target_count: 1,
                warmup_script: self.pre_pull_warmup_script.clone(),
                warmup_timeout: timeout,
            })
            .collect()
    }

    /// The library configuration. `bound_port` is the port actually bound (it replaces a
    /// configured port 0 in the derived advertise URL).
    pub fn worker_config(&self, bound_port: Option<u16>) -> Result<WorkerConfig, ConfigError> {
        let total_cores = match u32::try_from(self.total_cores) {
            Ok(n) if n > 0 => n,
            _ => std::thread::available_parallelism()
                .map(|n| u32::try_from(n.get()).unwrap_or(u32::MAX))
                .unwrap_or(1),
        };
        let total_memory_mib = match u64::try_from(self.total_memory_mib) {
            Ok(n) if n > 0 => n,
            _ => u64::from(total_cores) * 1024,
        };
        let max_live_sandboxes = match u32::try_from(self.max_live_sandboxes) {
            Ok(n) if n > 0 => n,
            _ if cfg!(target_os = "macos") => 2,
            _ => total_cores,
        };
        let advertise_url = match self.advertise_url.trim() {
            "" => advertise_url(&self.listen, &self.hostname, bound_port),
            url => url.trim_end_matches('/').to_string(),
        };
        Ok(WorkerConfig {
            broker_id: self.broker_id()?,
            worker_id: self.worker_id()?,
            hostname: self.hostname.trim().to_string(),
            advertise_url,
            broker_public_url: self.broker_control_url(),
            hardware_sku: self.hardware_sku.trim().to_string(),
            total_cores,
            total_memory_mib,
            max_live_sandboxes,
            default_ttl: self.default_ttl,
            max_ttl: self.max_ttl,
            default_virtualization: self.default_virtualization(),
            registration_heartbeat: self.registration_heartbeat,
            registration_jitter_percent: self.registration_jitter_percent.clamp(0, 95) as u8,
            reap_interval: REAP_INTERVAL,
            pre_pull: self.pre_pull_targets(),
            auth_mode: self.auth_mode,
        })
    }
}

/// Everything `traforato-dev` needs: the broker part and the worker values.
#[derive(Debug, Clone)]
pub struct DevSettings {
    /// Broker listen address.
    pub broker_listen: String,
    /// The worker's values (the YAML applied); its broker id is the broker's too.
    pub worker: WorkerValues,
    /// Token settings of both services (`Debug` redacts the secret).
    pub auth: AuthConfig,
}

impl DevSettings {
    /// Loads a `traforato-dev` configuration: flags and environment, then the YAML file.
    pub fn load(args: &DevArgs) -> Result<Self, ConfigError> {
        let mut worker = WorkerValues::from_dev_args(args);
        worker.apply_file(&args.file)?;
        worker.validate()?;
        let mode = args.auth.mode();
        let broker_listen = listen_or_default(&args.broker_listen, DEFAULT_BROKER_PORT, mode);
        bind_address(&broker_listen)?;
        check_exposure(&broker_listen, mode, args.auth.insecure_dev_mode_on_network)?;
        Ok(Self {
            broker_listen,
            worker,
            auth: args.auth.auth_config(),
        })
    }

    /// The broker's library configuration (retry max 2, default lease and sweep).
    pub fn broker_config(&self) -> Result<BrokerConfig, ConfigError> {
        let defaults = BrokerConfig::default();
        broker_config(
            &self.worker.broker_id,
            2,
            defaults.worker_lease_ttl,
            defaults.lease_sweep_interval,
            &self.worker.default_virtualization,
            self.auth.mode(),
        )
    }
}

/// Maps `log.level` (§6.4): `trace`/`debug` → debug, empty/`info` → info, `warn`/`warning`
/// → warn, `error`/`fatal`/`panic` → error.
pub fn parse_log_level(raw: &str) -> Result<LevelFilter, ConfigError> {
    match raw.trim().to_ascii_lowercase().as_str() {
        "trace" | "debug" => Ok(LevelFilter::DEBUG),
        "" | "info" => Ok(LevelFilter::INFO),
        "warn" | "warning" => Ok(LevelFilter::WARN),
        "error" | "fatal" | "panic" => Ok(LevelFilter::ERROR),
        _ => Err(ConfigError::InvalidLogLevel(raw.to_string())),
    }
}

/// Parses `log.rotate-size` (§6.4) into MiB: spaces removed, case-insensitive, digits with an
/// optional binary unit (`B K KB KIB M MB MIB G GB GIB T TB TIB`), rounded up, at least 1.
/// Empty means 100.
pub fn parse_rotate_size(raw: &str) -> Result<u64, ConfigError> {
    let text: String = raw
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect::<String>()
        .to_ascii_lowercase();
    if text.is_empty() {
        return Ok(DEFAULT_ROTATE_SIZE_MIB);
    }
    let invalid = || ConfigError::InvalidRotateSize(raw.to_string());
    let digits = text.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return Err(invalid());
    }
    let number: u64 = text[..digits].parse().map_err(|_| invalid())?;
    let multiplier: u64 = match &text[digits..] {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        _ => return Err(invalid()),
    };
    let bytes = number.checked_mul(multiplier).ok_or_else(invalid)?;
    if bytes == 0 {
        return Err(invalid());
    }
    Ok(bytes.div_ceil(1 << 20).max(1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Serialises the tests that parse command lines, since clap reads the environment.
    static ENV_LOCK: Mutex<()> = Mutex::new(());

    fn worker_args(extra: &[&str]) -> WorkerArgs {
        let mut argv = vec!["traforato-worker"];
        argv.extend_from_slice(extra);
        WorkerArgs::try_parse_from(argv).unwrap()
    }

    fn chain(err: &ConfigError) -> String {
        crate::http::error_chain(err)
    }

    #[test]
    fn go_durations() {
        let d = |s| parse_duration(s).unwrap();
        assert_eq!(d("30s"), Duration::from_secs(30));
        assert_eq!(d("1h2m"), Duration::from_secs(3720));
        assert_eq!(d("300ms"), Duration::from_millis(300));
        assert_eq!(d("1.5h"), Duration::from_secs(5400));
        assert_eq!(d(".5s"), Duration::from_millis(500));
        assert_eq!(d("2m3.25s"), Duration::from_millis(123_250));
        assert_eq!(d("10us"), Duration::from_micros(10));
        assert_eq!(d("10µs"), Duration::from_micros(10));
        assert_eq!(d("7ns"), Duration::from_nanos(7));
        assert_eq!(d("0"), Duration::ZERO);
        assert_eq!(d("-0s"), Duration::ZERO);
        assert_eq!(
            parse_duration("30"),
            Err(DurationError::MissingUnit("30".into()))
        );
        assert_eq!(
            parse_duration("1h30"),
            Err(DurationError::MissingUnit("1h30".into()))
        );
        assert!(matches!(
            parse_duration("5d"),
            Err(DurationError::UnknownUnit { .. })
        ));
        assert_eq!(
            parse_duration("-1s"),
            Err(DurationError::Negative("-1s".into()))
        );
        assert!(matches!(parse_duration(""), Err(DurationError::Invalid(_))));
        assert!(matches!(
            parse_duration("s"),
            Err(DurationError::Invalid(_))
        ));
        assert!(matches!(
            parse_duration("."),
            Err(DurationError::Invalid(_))
        ));
        assert!(matches!(
            parse_duration("99999999999999999999h"),
            Err(DurationError::Overflow(_))
        ));
    }

    #[test]
    fn listen_addresses() {
        assert_eq!(bind_address(":8080").unwrap(), "0.0.0.0:8080");
        assert_eq!(bind_address("127.0.0.1:9").unwrap(), "127.0.0.1:9");
        assert!(matches!(bind_address(" "), Err(ConfigError::EmptyListen)));
        let s = |a| split_host_port(a).map(|(h, p)| format!("{h}|{p}"));
        assert_eq!(s(":8081").as_deref(), Some("|8081"));
        assert_eq!(s("[::]:8081").as_deref(), Some("::|8081"));
        assert_eq!(s("host:1").as_deref(), Some("host|1"));
        assert_eq!(s("host:").as_deref(), Some("host|"));
        assert_eq!(s("host"), None);
        assert_eq!(s("::1"), None);
        assert_eq!(s("[::1]"), None);
    }

    #[test]
    fn advertise_urls() {
        assert_eq!(
            advertise_url(":9090", "worker-a.local", None),
            "http://worker-a.local:9090"
        );
        assert_eq!(
            advertise_url("0.0.0.0:9090", " ", None),
            "http://localhost:9090"
        );
        assert_eq!(advertise_url("[::]:9090", "h", None), "http://h:9090");
        assert_eq!(
            advertise_url("10.0.0.5:9090", "h", None),
            "http://10.0.0.5:9090"
        );
        assert_eq!(
            advertise_url("[fe80::1]:9090", "h", None),
            "http://[fe80::1]:9090"
        );
        assert_eq!(advertise_url("nonsense", "h", None), "http://h:8081");
        assert_eq!(advertise_url("host:", "h", None), "http://host:8081");
        assert_eq!(
            advertise_url("127.0.0.1:0", "h", Some(4321)),
            "http://127.0.0.1:4321"
        );
        assert_eq!(
            advertise_url("127.0.0.1:7", "h", Some(4321)),
            "http://127.0.0.1:7"
        );
    }

    #[test]
    fn dev_urls() {
        assert_eq!(local_url(":8080", 8080, None), "http://localhost:8080");
        assert_eq!(
            local_url("0.0.0.0:18080", 8080, None),
            "http://localhost:18080"
        );
        assert_eq!(local_url("127.0.0.1:9", 8080, None), "http://127.0.0.1:9");
        assert_eq!(local_url("garbage", 8081, None), "http://localhost:8081");
        assert_eq!(
            local_url("127.0.0.1:0", 8081, Some(5555)),
            "http://127.0.0.1:5555"
        );
    }

    #[test]
    fn single_dash_flags_become_long() {
        let out = go_style_args(
            [
                "bin",
                "-listen",
                ":1",
                "-h",
                "--x",
                "-5",
                "-worker-id=w",
                "--",
                "-keep",
            ]
            .map(OsString::from),
        );
        let out: Vec<_> = out.iter().map(|s| s.to_str().unwrap()).collect();
        assert_eq!(
            out,
            [
                "bin",
                "--listen",
                ":1",
                "-h",
                "--x",
                "-5",
                "--worker-id=w",
                "--",
                "-keep"
            ]
        );
    }

    const FULL_YAML: &str = r#"
broker-id: broker_yaml
broker-control-url: http://broker.internal:8080
virtualization: vetu
hostname: worker-a.local
hardware-sku: gpu-a100
max-live-sandboxes: 7
default-ttl: 45m
registration-heartbeat: 25s
registration-jitter-percent: 15
log:
  file: /var/log/traforato/worker.log
  rotate-size: 100 MB
  max-rotations: 10
"#;

    #[test]
    fn yaml_overrides_defaults() {
        let _guard = ENV_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let mut values = WorkerValues::from_worker_args(&worker_args(&[]));
        values.apply_yaml(FULL_YAML).unwrap();
        assert_eq!(values.broker_id, "broker_yaml");
        assert_eq!(values.broker_control_url, "http://broker.internal:8080");
        assert_eq!(values.virtualization, "vetu");
        assert_eq!(values.hostname, "worker-a.local");
        assert_eq!(values.hardware_sku, "gpu-a100");
        assert_eq!(values.max_live_sandboxes, 7);
        assert_eq!(values.default_ttl, Duration::from_secs(45 * 60));
        assert_eq!(values.registration_heartbeat, Duration::from_secs(25));
        assert_eq!(values.registration_jitter_percent, 15);
        assert_eq!(values.log_file, "/var/log/traforato/worker.log");
        assert_eq!(values.log_rotate_size, "100 MB");
        assert_eq!(values.log_max_rotations, 10);
        assert_eq!(values.worker_id, "worker_local");
        assert_eq!(values.max_ttl, Duration::from_secs(24 * 3600));
        let log = values.log_settings().unwrap();
        assert_eq!(log.rotate_size_mib, 100);
        assert_eq!(log.max_rotations, 10);
        assert_eq!(values.virtualizations(), vec!["container", "vetu"]);
    }

    #[test]
    fn yaml_unknown_keys_are_named() {
        let mut values = WorkerValues::from_worker_args(&worker_args(&[]));
        let err = values.apply_yaml("unknown-field: 1\n").unwrap_err();
        assert!(chain(&err).contains("unknown-field"), "{}", chain(&err));
        let err = values.apply_yaml("log:\n  colour: red\n").unwrap_err();
        assert!(chain(&err).contains("colour"), "{}", chain(&err));
        let err = values.apply_yaml("pre-pull:\n  imagez: [a]\n").unwrap_err();
        assert!(chain(&err).contains("imagez"), "{}", chain(&err));
    }

    #[test]
    fn yaml_container_section() {
        let mut values = WorkerValues::from_worker_args(&worker_args(&[]));
        values
            .apply_yaml(
                "container:\n  state-dir: /srv/traforato\n  cgroup-parent: sbx\n  images:\n    \
                 py: /srv/images/py\n  pids-limit: 64\n  scratch-size-mib: 256\n  \
                 python-zygote: false\n",
            )
            .unwrap();
        let c = &values.container;
        assert_eq!(c.state_dir, Some(PathBuf::from("/srv/traforato")));
        assert_eq!(c.cgroup_parent.as_deref(), Some("sbx"));
        assert_eq!(c.images.get("py"), Some(&PathBuf::from("/srv/images/py")));
        assert_eq!(c.pids_limit, Some(64));
        assert_eq!(c.scratch_size_mib, Some(256));
        assert_eq!(c.python_zygote, Some(false));
        let err = values
            .apply_yaml("container:\n  statedir: /x\n")
            .unwrap_err();
        assert!(chain(&err).contains("statedir"), "{}", chain(&err));
    }

    #[test]
    fn yaml_documents_and_types() {
        let defaults = WorkerValues::from_worker_args(&worker_args(&[]));
        let mut values = defaults.clone();
        values.apply_yaml("").unwrap();
        values.apply_yaml("# only a comment\n").unwrap();
        values.apply_yaml("---\n").unwrap();
        assert_eq!(values, defaults);
        let err = values
            .apply_yaml("worker-id: a\n---\nworker-id: b\n")
            .unwrap_err();
        assert!(matches!(err, ConfigError::MultipleDocuments));
        assert_eq!(err.to_string(), "multiple YAML documents are not supported");
        assert!(values.apply_yaml("default-ttl: 45\n").is_err());
        assert!(values.apply_yaml("default-ttl: 45x\n").is_err());
        assert!(values.apply_yaml("total-cores: \"2\"\n").is_err());
        values.apply_yaml("total-cores: 0\n").unwrap();
        assert_eq!(values.total_cores, 0);
    }

    #[test]
    fn pre_pull_targets_are_deduplicated() {
        let mut values = WorkerValues::from_worker_args(&worker_args(&[]));
        values
            .apply_yaml(
                "virtualization: vetu\npre-pull:\n  images: [\"ubuntu:24.04\", \" \", \"ubuntu:24.04\", \"alpine:3.20\"]\n  warmup-script: echo hi\n",
            )
            .unwrap();
        let targets = values.pre_pull_targets();
        assert_eq!(targets.len(), 2);
        assert_eq!(targets[0].tuple.image, "ubuntu:24.04");
        assert_eq!(targets[1].tuple.image, "alpine:3.20");
        for t in &targets {
            assert_eq!(t.tuple.virtualization, "vetu");
            assert_eq!(t.tuple.cpu, 1);
            assert_eq!(t.target_count, 1);
            assert_eq!(t.warmup_script, "echo hi");
            assert_eq!(t.warmup_timeout, DEFAULT_WARMUP_TIMEOUT);
        }
        values.virtualization.clear();
        values.pre_pull_warmup_timeout_seconds = 5;
        let targets = values.pre_pull_targets();
        assert_eq!(targets[0].tuple.virtualization, "container");
        assert_eq!(targets[0].warmup_timeout, Duration::from_secs(5));
    }

    #[test]
    fn rotate_sizes() {
        assert_eq!(parse_rotate_size("128 MB").unwrap(), 128);
        assert_eq!(parse_rotate_size("100 MB").unwrap(), 100);
        assert_eq!(parse_rotate_size("").unwrap(), 100);
        assert_eq!(parse_rotate_size("1gib").unwrap(), 1024);
        assert_eq!(parse_rotate_size("1 K").unwrap(), 1);
        assert_eq!(parse_rotate_size("1048577").unwrap(), 2);
        for bad in [
            "invalid",
            "0 MB",
            "MB",
            "12 parsecs",
            "99999999999999999999 TB",
        ] {
            assert!(
                matches!(
                    parse_rotate_size(bad),
                    Err(ConfigError::InvalidRotateSize(_))
                ),
                "{bad}"
            );
        }
        assert_eq!(
            parse_rotate_size("invalid").unwrap_err().to_string(),
            "invalid log.rotate-size: invalid"
        );
    }

    #[test]
    fn log_levels() {
        assert_eq!(parse_log_level("trace").unwrap(), LevelFilter::DEBUG);
        assert_eq!(parse_log_level("DEBUG").unwrap(), LevelFilter::DEBUG);
        assert_eq!(parse_log_level("").unwrap(), LevelFilter::INFO);
        assert_eq!(parse_log_level("info").unwrap(), LevelFilter::INFO);
        assert_eq!(parse_log_level("warning").unwrap(), LevelFilter::WARN);
        assert_eq!(parse_log_level("panic").unwrap(), LevelFilter::ERROR);
        assert_eq!(
            parse_log_level("loud").unwrap_err().to_string(),
            "invalid log.level: loud"
        );
    }

    #[test]
    fn log_section_validation() {
        let mut values = WorkerValues::from_worker_args(&worker_args(&[]));
        values.log_max_rotations = -1;
        assert!(matches!(
            values.log_settings(),
            Err(ConfigError::NegativeMaxRotations)
        ));
        values.log_max_rotations = 0;
        values.log_rotate_size = "nonsense".into();
        // The rotate size is parsed only when a log file is set.
        assert_eq!(values.log_settings().unwrap().file, None);
        values.log_file = "/tmp/x.log".into();
        assert!(values.log_settings().is_err());
    }

    #[test]
    fn precedence_yaml_flag_env_default() {
        let _guard = ENV_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        std::env::set_var("TRAFORATO_WORKER_HOSTNAME", "env-host");
        std::env::set_var("TRAFORATO_WORKER_ID", "env_worker");
        std::env::set_var("TRAFORATO_WORKER_BROKER_ID", "env_broker");
        let args = WorkerArgs::try_parse_from(go_style_args(
            [
                "traforato-worker",
                "--worker-id",
                "flag_worker",
                "-broker-id=flag_broker",
            ]
            .map(OsString::from),
        ));
        std::env::remove_var("TRAFORATO_WORKER_HOSTNAME");
        std::env::remove_var("TRAFORATO_WORKER_ID");
        std::env::remove_var("TRAFORATO_WORKER_BROKER_ID");
        let args = args.unwrap();
        // Default (nothing set): listen, chosen by the mode.
        assert_eq!(args.listen, "");
        assert_eq!(
            WorkerValues::from_worker_args(&args).listen,
            "127.0.0.1:8081"
        );
        // Env over default.
        assert_eq!(args.hostname, "env-host");
        // Flag over env.
        assert_eq!(args.worker_id, "flag_worker");
        assert_eq!(args.broker_id, "flag_broker");
        // YAML over flag.
        let mut values = WorkerValues::from_worker_args(&args);
        values.apply_yaml("worker-id: yaml_worker\n").unwrap();
        assert_eq!(values.worker_id, "yaml_worker");
        assert_eq!(values.broker_id, "flag_broker");
        assert_eq!(values.hostname, "env-host");
    }

    #[test]
    fn worker_config_applies_runtime_defaults() {
        let _guard = ENV_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let mut values = WorkerValues::from_worker_args(&worker_args(&[
            "--listen",
            "0.0.0.0:0",
            "--hostname",
            "worker-a.local",
            "--registration-jitter-percent",
            "120",
            "--broker-control-url",
            "http://broker:8080/",
        ]));
        let config = values.worker_config(Some(4242)).unwrap();
        assert!(config.total_cores >= 1);
        assert_eq!(
            config.total_memory_mib,
            u64::from(config.total_cores) * 1024
        );
        assert!(config.max_live_sandboxes >= 1);
        assert_eq!(config.registration_jitter_percent, 95);
        assert_eq!(config.advertise_url, "http://worker-a.local:4242");
        assert_eq!(
            config.broker_public_url.as_deref(),
            Some("http://broker:8080")
        );
        assert_eq!(config.default_virtualization, "container");
        assert_eq!(config.max_ttl, Duration::from_secs(24 * 3600));
        assert_eq!(config.auth_mode, AuthMode::Dev);
        values.total_cores = 3;
        values.advertise_url = "https://w.example/".into();
        let config = values.worker_config(None).unwrap();
        assert_eq!(config.total_cores, 3);
        assert_eq!(config.total_memory_mib, 3072);
        assert_eq!(config.advertise_url, "https://w.example");
        values.worker_id = "worker-a".into();
        let err = values.worker_config(None).unwrap_err();
        assert!(
            chain(&err).starts_with("invalid worker-id: id"),
            "{}",
            chain(&err)
        );
    }

    #[test]
    fn auth_settings_pick_the_mode_and_hide_the_secret() {
        let _guard = ENV_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        // No secret: dev everywhere, default issuer and audience.
        let values = WorkerValues::load_worker(&worker_args(&[])).unwrap();
        assert_eq!(values.auth_mode, AuthMode::Dev);
        assert_eq!(values.worker_config(None).unwrap().auth_mode, AuthMode::Dev);
        let args = BrokerArgs::try_parse_from(["traforato-broker", "--jwt-secret", " "]).unwrap();
        let settings = BrokerSettings::from_args(&args).unwrap();
        assert_eq!(settings.auth.mode(), AuthMode::Dev);
        assert!(!settings.config.prod_mode);
        assert_eq!(settings.auth.issuer, "traforato");
        assert_eq!(settings.auth.audience, "traforato-api");

        // A secret: prod, on the worker, the broker and both halves of dev.
        let args = worker_args(&["--jwt-secret", "hunter2-secret"]);
        let values = WorkerValues::load_worker(&args).unwrap();
        assert_eq!(values.auth_mode, AuthMode::Prod);
        assert_eq!(
            values.worker_config(None).unwrap().auth_mode,
            AuthMode::Prod
        );
        assert_eq!(args.auth.auth_config().mode(), AuthMode::Prod);
        let args = BrokerArgs::try_parse_from([
            "traforato-broker",
            "--jwt-secret=hunter2-secret",
            "--jwt-issuer",
            "iss-x",
            "--jwt-audience",
            "aud-y",
        ])
        .unwrap();
        let settings = BrokerSettings::from_args(&args).unwrap();
        assert!(settings.config.prod_mode);
        assert_eq!(settings.auth.issuer, "iss-x");
        assert_eq!(settings.auth.audience, "aud-y");
        let shown = format!("{args:?} {settings:?} {:#?}", args.auth);
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("<redacted>"), "{shown}");

        std::env::set_var("TRAFORATO_JWT_SECRET", "hunter2-secret");
        let args = DevArgs::try_parse_from(["traforato-dev"]);
        std::env::remove_var("TRAFORATO_JWT_SECRET");
        let settings = DevSettings::load(&args.unwrap()).unwrap();
        assert_eq!(settings.auth.mode(), AuthMode::Prod);
        assert!(settings.broker_config().unwrap().prod_mode);
        assert_eq!(
            settings.worker.worker_config(None).unwrap().auth_mode,
            AuthMode::Prod
        );
        let shown = format!("{settings:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
    }

    #[test]
    fn broker_settings_from_flags() {
        let _guard = ENV_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let args = BrokerArgs::try_parse_from([
            "traforato-broker",
            "--placement-retry-max",
            "0",
            "--worker-lease-ttl",
            "1m30s",
            "--default-virtualization",
            "fake",
        ])
        .unwrap();
        let settings = BrokerSettings::from_args(&args).unwrap();
        // Development mode (no secret) listens on loopback by default.
        assert_eq!(settings.bind, "127.0.0.1:8080");
        assert_eq!(settings.config.placement_retry_max, 0);
        assert_eq!(settings.config.worker_lease_ttl, Duration::from_secs(90));
        assert_eq!(
            settings.config.lease_sweep_interval,
            Duration::from_secs(10)
        );
        assert_eq!(settings.config.default_virtualization, "fake");
        assert_eq!(settings.config.broker_id.as_str(), "broker_local");
        assert!(
            BrokerArgs::try_parse_from(["traforato-broker", "--worker-lease-ttl", "120"]).is_err()
        );
        let args = BrokerArgs::try_parse_from(["traforato-broker", "--broker-id", "a-b"]).unwrap();
        assert!(matches!(
            BrokerSettings::from_args(&args),
            Err(ConfigError::InvalidId { .. })
        ));
    }

    #[test]
    fn dev_settings_use_yaml_broker_id() {
        let _guard = ENV_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("worker.yaml");
        std::fs::write(
            &file,
            "broker-id: broker_yaml\ndefault-virtualization: fake\n",
        )
        .unwrap();
        let args = DevArgs::try_parse_from([
            "traforato-dev",
            "--file",
            file.to_str().unwrap(),
            "--worker-base-url",
            "http://w:1",
        ])
        .unwrap();
        let settings = DevSettings::load(&args).unwrap();
        let broker = settings.broker_config().unwrap();
        assert_eq!(broker.broker_id.as_str(), "broker_yaml");
        assert_eq!(broker.default_virtualization, "fake");
        assert_eq!(broker.placement_retry_max, 2);
        let worker = settings.worker.worker_config(None).unwrap();
        assert_eq!(worker.broker_id.as_str(), "broker_yaml");
        assert_eq!(worker.advertise_url, "http://w:1");
        assert_eq!(settings.broker_listen, "127.0.0.1:8080");
        assert_eq!(settings.worker.listen, "127.0.0.1:8081");
        let missing =
            DevArgs::try_parse_from(["traforato-dev", "--file", "/nonexistent/x.yaml"]).unwrap();
        assert!(matches!(
            DevSettings::load(&missing),
            Err(ConfigError::ReadFile { .. })
        ));
    }

    #[test]
    fn listen_defaults_follow_the_mode() {
        assert_eq!(listen_or_default("", 8080, AuthMode::Dev), "127.0.0.1:8080");
        assert_eq!(
            listen_or_default("  ", 8081, AuthMode::Dev),
            "127.0.0.1:8081"
        );
        assert_eq!(listen_or_default("", 8080, AuthMode::Prod), ":8080");
        assert_eq!(listen_or_default(" :9000 ", 8080, AuthMode::Dev), ":9000");
    }

    #[test]
    fn dev_mode_listens_on_loopback_only_unless_told_otherwise() {
        let dev = AuthMode::Dev;
        for loopback in [
            "127.0.0.1:8080",
            "127.0.0.2:0",
            "[::1]:8080",
            "localhost:8080",
            "LOCALHOST:1",
            "[::ffff:127.0.0.1]:8080",
        ] {
            assert!(check_exposure(loopback, dev, false).is_ok(), "{loopback}");
        }
        for network in [
            ":8080",
            "0.0.0.0:8080",
            "[::]:8080",
            "198.18.0.1:8080",
            "[2001:db8::1]:8080",
        ] {
            let err = check_exposure(network, dev, false).unwrap_err();
            assert!(
                matches!(&err, ConfigError::DevModeOnNetwork { listen } if listen == network),
                "{network}: {err}"
            );
            assert!(err.to_string().contains("--insecure-dev-mode-on-network"));
            // The explicit flag allows it, and so does prod mode.
            assert!(check_exposure(network, dev, true).is_ok(), "{network}");
            assert!(
                check_exposure(network, AuthMode::Prod, false).is_ok(),
                "{network}"
            );
        }
        // A name that does not resolve cannot be shown to be loopback.
        assert!(check_exposure("no-such-host.invalid:8080", dev, false).is_err());
    }

    #[test]
    fn binaries_refuse_network_listens_in_dev_mode() {
        let _guard = ENV_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let args = BrokerArgs::try_parse_from(["traforato-broker", "--listen", ":8080"]).unwrap();
        assert!(matches!(
            BrokerSettings::from_args(&args),
            Err(ConfigError::DevModeOnNetwork { .. })
        ));
        let args = BrokerArgs::try_parse_from([
            "traforato-broker",
            "--listen",
            ":8080",
            "--insecure-dev-mode-on-network",
        ])
        .unwrap();
        assert_eq!(
            BrokerSettings::from_args(&args).unwrap().bind,
            "0.0.0.0:8080"
        );
        let args = BrokerArgs::try_parse_from(["traforato-broker", "--jwt-secret", "s"]).unwrap();
        assert_eq!(
            BrokerSettings::from_args(&args).unwrap().bind,
            "0.0.0.0:8080"
        );

        let args =
            WorkerArgs::try_parse_from(["traforato-worker", "--listen", "0.0.0.0:8081"]).unwrap();
        assert!(matches!(
            WorkerValues::load_worker(&args),
            Err(ConfigError::DevModeOnNetwork { .. })
        ));
        let args = WorkerArgs::try_parse_from(["traforato-worker", "--jwt-secret", "s"]).unwrap();
        assert_eq!(WorkerValues::load_worker(&args).unwrap().listen, ":8081");

        for flags in [
            &["traforato-dev", "--broker-listen", ":8080"][..],
            &["traforato-dev", "--worker-listen", ":8081"][..],
        ] {
            let args = DevArgs::try_parse_from(flags).unwrap();
            assert!(
                matches!(
                    DevSettings::load(&args),
                    Err(ConfigError::DevModeOnNetwork { .. })
                ),
                "{flags:?}"
            );
        }
        let args = DevArgs::try_parse_from([
            "traforato-dev",
            "--broker-listen",
            ":8080",
            "--worker-listen",
            ":8081",
            "--insecure-dev-mode-on-network",
        ])
        .unwrap();
        let settings = DevSettings::load(&args).unwrap();
        assert_eq!(settings.broker_listen, ":8080");
    }

    #[test]
    fn token_lifetime_and_internal_secret_flags() {
        let _guard = ENV_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let args = BrokerArgs::try_parse_from(["traforato-broker"]).unwrap();
        let auth = args.auth.auth_config();
        assert_eq!(auth.max_token_lifetime, Duration::from_secs(3600));
        assert!(auth.internal_secret.is_empty());
        let args = BrokerArgs::try_parse_from([
            "traforato-broker",
            "--jwt-max-lifetime",
            "10m",
            "--internal-secret",
            "int-secret",
        ])
        .unwrap();
        let auth = args.auth.auth_config();
        assert_eq!(auth.max_token_lifetime, Duration::from_secs(600));
        assert_eq!(auth.internal_secret, "int-secret");
        assert!(!format!("{:?}", args.auth).contains("int-secret"));
        assert!(
            BrokerArgs::try_parse_from(["traforato-broker", "--jwt-max-lifetime", "3600"]).is_err()
        );
    }
}
