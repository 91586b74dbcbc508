//! The command lines of the three binaries (clap): flags, their `TRAFORATO_*` variables and
//! defaults. The worker's settings are declared once ([`worker_flags!`]) and appear under
//! their own names in `traforato-worker` ([`WorkerFlags`]) and `traforato-dev`
//! ([`DevWorkerFlags`]); the names are contract and never change (a test snapshots them).

use std::ffi::OsString;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use traforato_core::auth::{AuthConfig, AuthMode};
use traforato_core::duration::parse_duration;
use traforato_core::id::ComponentId;

use super::layer::WorkerLayer;
use super::values::{AutoCount, AutoMib, GoDuration};
use super::{ConfigError, DEFAULT_VIRTUALIZATION};

/// What `--version` prints after the binary's name: the release and the git commit it was
/// built from (`unknown` when built outside a checkout without `TRAFORATO_GIT_COMMIT`), as
/// the build script (`build.rs`) records it.
pub const VERSION: &str = env!("TRAFORATO_VERSION");

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

/// The command line of one of the three binaries: clap's parser plus the auth settings whose
/// secret files [`parse_or_exit`] reads.
pub trait ServiceArgs: Parser {
    /// The binary's auth settings.
    fn auth_mut(&mut self) -> &mut AuthArgs;
}

/// Parses the process's command line into `T` and reads the secret files it names
/// ([`AuthArgs::read_secret_files`]). `--help` and `--version` print and exit 0; any other
/// error prints `<service>: <error>` to stderr and exits 1.
pub fn parse_or_exit<T: ServiceArgs>(service: &str) -> T {
    match T::try_parse_from(go_style_args(std::env::args_os())) {
        Ok(mut args) => match args.auth_mut().read_secret_files() {
            Ok(()) => args,
            Err(err) => {
                eprintln!("{service}: {}", crate::http::error_chain(&err));
                std::process::exit(1);
            }
        },
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
    /// File holding the JWT secret (a Docker secret, a file only root reads): read once at
    /// start, surrounding whitespace trimmed. An empty or unreadable file is an error, and so
    /// is giving --jwt-secret as well.
    #[arg(long, env = "TRAFORATO_JWT_SECRET_FILE", default_value = "")]
    pub jwt_secret_file: String,
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
    /// File holding the internal secret, read like --jwt-secret-file.
    #[arg(long, env = "TRAFORATO_INTERNAL_SECRET_FILE", default_value = "")]
    pub internal_secret_file: String,
    /// Set once the files above were read into the secrets.
    #[arg(skip)]
    pub secret_files_read: bool,
}

impl AuthArgs {
    /// Reads `--jwt-secret-file` and `--internal-secret-file` into their secrets. A file
    /// that is empty after trimming is refused: it would silently mean development mode (no
    /// authentication) or a derived internal key.
    pub fn read_secret_files(&mut self) -> Result<(), ConfigError> {
        read_secret_file(
            "--jwt-secret-file",
            "--jwt-secret / TRAFORATO_JWT_SECRET",
            &self.jwt_secret_file,
            &mut self.jwt_secret,
        )?;
        read_secret_file(
            "--internal-secret-file",
            "--internal-secret / TRAFORATO_INTERNAL_SECRET",
            &self.internal_secret_file,
            &mut self.internal_secret,
        )?;
        self.secret_files_read = true;
        Ok(())
    }

    /// Refuses settings whose secret files were named but never read (parsed without
    /// [`parse_or_exit`] and without [`AuthArgs::read_secret_files`]): they would run without
    /// the secret, in development mode.
    pub(crate) fn check_secret_files_read(&self) -> Result<(), ConfigError> {
        let named = !self.jwt_secret_file.is_empty() || !self.internal_secret_file.is_empty();
        if named && !self.secret_files_read {
            return Err(ConfigError::InvalidValue {
                key: "--jwt-secret-file",
                reason: "the secret files were not read (AuthArgs::read_secret_files)".to_string(),
            });
        }
        Ok(())
    }

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

/// Fills `secret` from the file at `path` (when one is named); `flag` names it in errors,
/// `value` the other ways the secret is given.
fn read_secret_file(
    flag: &'static str,
    value: &str,
    path: &str,
    secret: &mut String,
) -> Result<(), ConfigError> {
    if path.is_empty() {
        return Ok(());
    }
    if !secret.trim().is_empty() {
        return Err(ConfigError::InvalidValue {
            key: flag,
            reason: format!("the secret is also given by {value}; give one of them"),
        });
    }
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::ReadSecretFile {
        flag,
        path: path.into(),
        source,
    })?;
    if text.trim().is_empty() {
        return Err(ConfigError::InvalidValue {
            key: flag,
            reason: format!("{path} is empty"),
        });
    }
    *secret = text.trim().to_string();
    Ok(())
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
    version = VERSION,
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
    /// For this long after start, requests for sandboxes of workers not registered (yet)
    /// answer 503 with Retry-After, not 404: after a restart the workers register again
    /// (Go duration; 0s: 404 at once).
    #[arg(long, env = "TRAFORATO_BROKER_RESTART_GRACE", default_value = "40s", value_parser = parse_duration)]
    pub restart_grace: Duration,
    #[command(flatten)]
    pub auth: AuthArgs,
    #[command(subcommand)]
    pub command: Option<ServiceCommand>,
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
    /// How often the broker is asked, between heartbeats, whether it restarted (a cheap GET
    /// /healthz); a restarted broker is registered with again within this (Go duration; 0s:
    /// heartbeats alone).
    registration_probe: GoDuration = "1s",
        worker("registration-probe", "TRAFORATO_WORKER_REGISTRATION_PROBE"),
        dev("registration-probe", "TRAFORATO_DEV_WORKER_REGISTRATION_PROBE");
    /// Virtualization of creates that name none (also always enabled as a backend).
    default_virtualization: String = "container",
        worker("default-virtualization", "TRAFORATO_WORKER_DEFAULT_VIRTUALIZATION"),
        dev("default-virtualization", "TRAFORATO_DEV_DEFAULT_VIRTUALIZATION");
}

/// `traforato-worker` command line.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "traforato-worker",
    version = VERSION,
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
    #[command(subcommand)]
    pub command: Option<ServiceCommand>,
}

/// `traforato-dev` command line: a broker and a worker in one process.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "traforato-dev",
    version = VERSION,
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
    #[command(subcommand)]
    pub command: Option<ServiceCommand>,
}

/// What a binary does instead of serving.
#[derive(Debug, Clone, Subcommand)]
pub enum ServiceCommand {
    /// Asks the service that this configuration describes (the same flags, variables and
    /// YAML) for `GET /healthz` on its listen port and exits 0 when it answers 200, 1
    /// otherwise: a container HEALTHCHECK or a probe that needs no curl.
    Healthcheck(HealthcheckArgs),
}

/// `healthcheck`'s options.
#[derive(Debug, Clone, Args)]
pub struct HealthcheckArgs {
    /// Base URL to ask instead of the one the listen address gives (`traforato-dev`: the
    /// broker's; its worker is asked at its own listen address).
    #[arg(long)]
    pub url: Option<String>,
    /// Longest wait for the answer (Go duration).
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    pub timeout: Duration,
}

impl ServiceArgs for BrokerArgs {
    fn auth_mut(&mut self) -> &mut AuthArgs {
        &mut self.auth
    }
}

impl ServiceArgs for WorkerArgs {
    fn auth_mut(&mut self) -> &mut AuthArgs {
        &mut self.auth
    }
}

impl ServiceArgs for DevArgs {
    fn auth_mut(&mut self) -> &mut AuthArgs {
        &mut self.auth
    }
}
