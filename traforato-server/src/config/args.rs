//! The command lines of the three binaries (clap): flags, their `TRAFORATO_*` variables and
//! defaults. The worker's settings are declared once ([`worker_flags!`]) and appear under
//! their own names in `traforato-worker` ([`WorkerFlags`]) and `traforato-dev`
//! ([`DevWorkerFlags`]); the names are contract and never change (a test snapshots them).

use std::ffi::OsString;
use std::time::Duration;

use clap::{Args, Parser};
use traforato_core::auth::{AuthConfig, AuthMode};
use traforato_core::duration::parse_duration;
use traforato_core::id::ComponentId;

use super::layer::WorkerLayer;
use super::values::{AutoCount, AutoMib, GoDuration};
use super::DEFAULT_VIRTUALIZATION;

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
    pub broker_id: ComponentId,
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

/// Declares the worker's command-line settings once and makes two clap structs of them, one
/// per binary, each with its own flag and variable names (contract: they differ on purpose),
/// and the layer the command line gives ([`WorkerFlags::layer`]).
macro_rules! worker_flags {
    (
        $(
            $(#[$meta:meta])*
            $field:ident: $ty:ty = $default:literal,
                worker($wflag:literal, $wenv:literal),
                dev($dflag:literal, $denv:literal);
        )*
    ) => {
        /// The worker settings of `traforato-worker`'s command line.
        #[derive(Debug, Clone, Args)]
        pub struct WorkerFlags {
            $(
                $(#[$meta])*
                #[arg(long = $wflag, env = $wenv, default_value = $default)]
                pub $field: $ty,
            )*
        }

        /// The same settings on `traforato-dev`'s command line, under its names.
        #[derive(Debug, Clone, Args)]
        pub struct DevWorkerFlags {
            $(
                $(#[$meta])*
                #[arg(long = $dflag, env = $denv, default_value = $default)]
                pub $field: $ty,
            )*
        }

        impl From<DevWorkerFlags> for WorkerFlags {
            fn from(dev: DevWorkerFlags) -> Self {
                Self { $( $field: dev.$field, )* }
            }
        }

        impl WorkerFlags {
            /// The layer of these settings: every one is set (clap applied the defaults).
            pub fn layer(&self) -> WorkerLayer {
                WorkerLayer {
                    $( $field: Some(self.$field.clone()), )*
                    ..WorkerLayer::default()
                }
            }
        }
    };
}

worker_flags! {
    /// Worker listen address; `:8081` means every interface. Default: 127.0.0.1:8081 without
    /// a JWT secret (development mode listens on loopback only), :8081 with one.
    #[arg(hide_default_value = true)]
    listen: String = "",
        worker("listen", "TRAFORATO_WORKER_LISTEN_ADDR"),
        dev("worker-listen", "TRAFORATO_DEV_WORKER_LISTEN_ADDR");
    /// Id of the broker this worker serves ([A-Za-z0-9_]+).
    broker_id: ComponentId = "broker_local",
        worker("broker-id", "TRAFORATO_WORKER_BROKER_ID"),
        dev("broker-id", "TRAFORATO_DEV_BROKER_ID");
    /// This worker's id ([A-Za-z0-9_]+).
    worker_id: ComponentId = "worker_local",
        worker("worker-id", "TRAFORATO_WORKER_ID"),
        dev("worker-id", "TRAFORATO_DEV_WORKER_ID");
    /// Host name sent at registration; replaces a wildcard listen host in the advertise URL.
    hostname: String = "localhost",
        worker("hostname", "TRAFORATO_WORKER_HOSTNAME"),
        dev("worker-hostname", "TRAFORATO_DEV_WORKER_HOSTNAME");
    /// URL clients use to reach the worker; empty derives it from the listen address and the
    /// host name.
    advertise_url: String = "",
        worker("advertise-url", "TRAFORATO_WORKER_ADVERTISE_URL"),
        dev("worker-base-url", "TRAFORATO_DEV_WORKER_BASE_URL");
    /// Cores offered; 0 means the number of logical CPUs.
    total_cores: AutoCount = "0",
        worker("total-cores", "TRAFORATO_WORKER_TOTAL_CORES"),
        dev("total-cores", "TRAFORATO_DEV_WORKER_TOTAL_CORES");
    /// Memory offered in MiB; 0 means 1024 per core.
    total_memory_mib: AutoMib = "0",
        worker("total-memory-mib", "TRAFORATO_WORKER_TOTAL_MEMORY_MIB"),
        dev("total-memory-mib", "TRAFORATO_DEV_WORKER_TOTAL_MEMORY_MIB");
    /// Most live sandboxes; 0 means the cores × cpu-overcommit with containers, else the cores (2 on macOS).
    max_live_sandboxes: AutoCount = "0",
        worker("max-live-sandboxes", "TRAFORATO_WORKER_MAX_LIVE_SANDBOXES"),
        dev("max-live-sandboxes", "TRAFORATO_DEV_WORKER_MAX_LIVE_SANDBOXES");
    /// TTL of sandboxes created without ttl_seconds (Go duration).
    default_ttl: GoDuration = "30m",
        worker("default-ttl", "TRAFORATO_WORKER_DEFAULT_TTL"),
        dev("default-ttl", "TRAFORATO_DEV_WORKER_DEFAULT_TTL");
    /// Longest TTL a create or lease may ask for (Go duration).
    max_ttl: GoDuration = "24h",
        worker("max-ttl", "TRAFORATO_WORKER_MAX_TTL"),
        dev("max-ttl", "TRAFORATO_DEV_WORKER_MAX_TTL");
    /// Registration heartbeat period (Go duration).
    registration_heartbeat: GoDuration = "30s",
        worker("registration-heartbeat", "TRAFORATO_WORKER_REGISTRATION_HEARTBEAT"),
        dev("registration-heartbeat", "TRAFORATO_DEV_WORKER_REGISTRATION_HEARTBEAT");
    /// Heartbeat jitter in percent, clamped to [0, 95].
    #[arg(allow_negative_numbers = true)]
    registration_jitter_percent: i64 = "20",
        worker("registration-jitter-percent", "TRAFORATO_WORKER_REGISTRATION_JITTER_PERCENT"),
        dev("registration-jitter-percent", "TRAFORATO_DEV_WORKER_REGISTRATION_JITTER_PERCENT");
    /// Virtualization of creates that name none (also always enabled as a backend).
    default_virtualization: String = "container",
        worker("default-virtualization", "TRAFORATO_WORKER_DEFAULT_VIRTUALIZATION"),
        dev("default-virtualization", "TRAFORATO_DEV_DEFAULT_VIRTUALIZATION");
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
    /// Broker URL for registration, VM events and placement retries; empty runs standalone.
    #[arg(long, env = "TRAFORATO_WORKER_BROKER_CONTROL_URL", default_value = "")]
    pub broker_control_url: String,
    #[command(flatten)]
    pub worker: WorkerFlags,
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
    /// Broker URL clients are sent back to on placement retries; empty derives it from
    /// --broker-listen.
    #[arg(long, env = "TRAFORATO_DEV_BROKER_CONTROL_URL", default_value = "")]
    pub broker_control_url: String,
    #[command(flatten)]
    pub worker: DevWorkerFlags,
    #[command(flatten)]
    pub auth: AuthArgs,
}
