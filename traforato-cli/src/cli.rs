//! The command line: every command, flag and help text (clap derive), with an example in each
//! command's `--help`.

use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

const ROOT_EXAMPLES: &str = "\
Examples:
  traforato-cli sandbox create --image ubuntu:24.04
  traforato-cli exec sbx-broker_local-worker_local-... -- uname -a
  traforato-cli run sbx-... --runtime python --code 'print(6 * 7)'
  traforato-cli files put sbx-... ./app.py /workspace/app.py
  traforato-cli --json sandbox get sbx-...

Environment:
  TRAFORATO_URL         broker URL (default http://localhost:8080)
  TRAFORATO_TOKEN       a bearer token for prod-mode deployments (see below)
  TRAFORATO_CLIENT_ID   with TRAFORATO_JWT_SECRET: mint a fresh token for every request
  TRAFORATO_JWT_SECRET  the deployment's JWT secret (operators only; never printed)
  TRAFORATO_JWT_ISSUER, TRAFORATO_JWT_AUDIENCE
                        claims of minted tokens (default traforato, traforato-api)

Prod mode: a broker or worker started with a JWT secret accepts each token once (it keeps a
replay cache of token ids), and the broker's create redirect means one create is two
requests, one per service. So a static --token is good for exactly ONE command that creates
a sandbox, after which it is spent; for anything more, either pass a new --token each time
(`traforato-cli token mint`), or, as an operator holding the secret, set
TRAFORATO_JWT_SECRET and --client-id: every request then carries a freshly minted token.
  export TRAFORATO_JWT_SECRET=...   # the deployment's secret
  traforato-cli --client-id alice sandbox create --image ubuntu:24.04
  traforato-cli --client-id alice exec sbx-... -- uname -a";

/// Command-line client for traforato sandboxes.
#[derive(Debug, Parser)]
#[command(name = "traforato-cli", version = env!("TRAFORATO_VERSION"), about, after_help = ROOT_EXAMPLES)]
pub struct Cli {
    /// Broker URL.
    #[arg(
        long,
        global = true,
        env = "TRAFORATO_URL",
        default_value = "http://localhost:8080"
    )]
    pub url: String,

    /// Bearer token (prod mode); each token is good for one request per service.
    #[arg(long, global = true, env = "TRAFORATO_TOKEN", hide_env_values = true)]
    pub token: Option<String>,

    /// Act as this client, minting a fresh token per request (needs TRAFORATO_JWT_SECRET);
    /// also the client of `token mint`.
    #[arg(long, global = true, env = "TRAFORATO_CLIENT_ID", value_name = "ID")]
    pub client_id: Option<String>,

    /// Machine-readable JSON output on stdout (errors as JSON on stderr); not for `shell` and
    /// `exec -i`, whose output is the command's own bytes.
    #[arg(long, global = true)]
    pub json: bool,

    #[command(subcommand)]
    pub command: Command,
}

/// Top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create, inspect, renew or delete sandboxes.
    #[command(
        subcommand,
        after_help = "Example:\n  traforato-cli sandbox create --image ubuntu:24.04 --cpu 2"
    )]
    Sandbox(SandboxCommand),

    /// Run a command in a sandbox, streaming its output; exits with the command's exit code.
    #[command(after_help = "\
Examples:
  traforato-cli exec sbx-... -- ls -la /workspace
  traforato-cli exec sbx-... --cwd /workspace --env DEBUG=1 -- 'make test | tail -n 20'
  echo hello | traforato-cli exec -i sbx-... -- tr a-z A-Z

A single CMD word is run by /bin/sh -c (so quoted pipelines work); several words are run as
an argument vector without a shell.

Exit status: the command's exit code (124 when --timeout killed it), or 125 when
traforato-cli itself failed (connection, API error).")]
    Exec(ExecArgs),

    /// Open an interactive terminal in a sandbox; exits with the shell's exit code.
    #[command(after_help = "\
Examples:
  traforato-cli shell sbx-...
  traforato-cli shell sbx-... --cwd /workspace -- bash -l

Without a command the sandbox's /bin/sh runs. The local terminal is put in raw mode (and
restored on exit), its size is sent at the start and on every resize.

Exit status: the command's exit code, or 125 when traforato-cli itself failed.")]
    Shell(ShellArgs),

    /// Run Python or Node code in a sandbox; exits with the interpreter's exit code.
    #[command(after_help = "\
Examples:
  traforato-cli run sbx-... --runtime python --code 'print(6 * 7)'
  traforato-cli run sbx-... --runtime node ./script.js
  echo 'print(1)' | traforato-cli run sbx-... --runtime python -

Exit status: the interpreter's exit code (1 for a syntax error, 124 on timeout), or 125 when
traforato-cli itself failed.")]
    Run(RunArgs),

    /// Read and write files in a sandbox.
    #[command(
        subcommand,
        after_help = "Example:\n  traforato-cli files ls sbx-... /workspace -r"
    )]
    Files(FilesCommand),

    /// Print the URL that reaches a port inside a sandbox.
    #[command(after_help = "Example:\n  traforato-cli port-url sbx-... 8000 --protocol http")]
    PortUrl(PortUrlArgs),

    /// List, pull and remove the images a worker holds (operators).
    #[command(subcommand, after_help = IMAGES_HELP)]
    Images(ImagesCommand),

    /// Mint client tokens for a prod-mode deployment (reads TRAFORATO_JWT_SECRET).
    #[command(
        subcommand,
        after_help = "Example:\n  TOKEN=$(traforato-cli token mint --client-id alice --ttl 10m)"
    )]
    Token(TokenCommand),

    /// Print a shell completion script.
    #[command(after_help = "\
Examples:
  traforato-cli completions bash > /etc/bash_completion.d/traforato-cli
  traforato-cli completions zsh > \"${fpath[1]}/_traforato-cli\"")]
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

const IMAGES_HELP: &str = "\
Examples:
  traforato-cli images ls --worker http://worker-a:8081
  traforato-cli images pull python:3.12-slim --worker http://worker-a:8081
  traforato-cli images rm python:3.12-slim --worker http://worker-a:8081

Images live on each worker, so these commands talk to a worker (--worker, else --url), not to
the broker. In prod mode the client id (--client-id with TRAFORATO_JWT_SECRET, or the token's)
must be listed in the worker's images.operators. A held image is used without asking its
registry again; `pull` fetches a moved tag. `rm` refuses (409) while a sandbox, warm ones
included, uses the image.";

/// `images ...`.
#[derive(Debug, Subcommand)]
pub enum ImagesCommand {
    /// List the images a worker holds: reference, size, last use, sandboxes using it.
    #[command(after_help = "Example:\n  traforato-cli images ls --worker http://worker-a:8081")]
    Ls(WorkerArg),
    /// Pull an image on a worker (again, if held), waiting until it is ready.
    #[command(
        after_help = "Example:\n  traforato-cli images pull alpine:3.20 --worker http://worker-a:8081"
    )]
    Pull {
        /// The image reference (alpine:3.20, ghcr.io/org/img:tag, repo@sha256:...).
        image: String,
        #[command(flatten)]
        worker: WorkerArg,
    },
    /// Remove an image from a worker (refused while a sandbox uses it).
    #[command(
        after_help = "Example:\n  traforato-cli images rm alpine:3.20 --worker http://worker-a:8081"
    )]
    Rm {
        /// The image reference.
        image: String,
        #[command(flatten)]
        worker: WorkerArg,
    },
}

/// The worker an `images` command talks to.
#[derive(Debug, Args)]
pub struct WorkerArg {
    /// The worker's URL (default: --url).
    #[arg(long, env = "TRAFORATO_WORKER_URL", value_name = "URL")]
    pub worker: Option<String>,
}

/// `token ...`.
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Print a client token (HS256) signed with the secret in TRAFORATO_JWT_SECRET.
    #[command(after_help = MINT_HELP)]
    Mint(MintArgs),
}

const MINT_HELP: &str = "\
Examples:
  export TRAFORATO_JWT_SECRET=...   # the deployment's secret, as given to the services
  traforato-cli token mint --client-id alice
  traforato-cli token mint --client-id alice --ttl 30s
  curl --location-trusted -X POST http://localhost:8080/sandboxes \\
    -H \"Authorization: Bearer $(traforato-cli token mint --client-id alice)\" \\
    -d '{\"image\":\"ubuntu:24.04\"}'

The token carries client_id (the owner of the sandboxes it creates), iss, aud, iat, exp and a
unique jti. Each service accepts a jti once, so mint a new token for every request; a create
through the broker may use one token for both hops (broker, then worker), which is why curl
needs --location-trusted (it drops Authorization on a redirect to another host or port).
The secret is read from the environment only, and never printed.";

/// `token mint` flags. The client is the global `--client-id` (or TRAFORATO_CLIENT_ID).
#[derive(Debug, Args)]
pub struct MintArgs {
    /// Lifetime: seconds, or a number with a unit s, m, h or d (30s, 5m, 2h). Services refuse
    /// tokens that live longer than their --jwt-max-lifetime (1h by default).
    #[arg(long, default_value = "5m", value_parser = parse_ttl)]
    pub ttl: Duration,
    /// The `iss` claim; must match the services' --jwt-issuer.
    #[arg(long, env = "TRAFORATO_JWT_ISSUER", default_value = "traforato")]
    pub issuer: String,
    /// The `aud` claim; must match the services' --jwt-audience.
    #[arg(long, env = "TRAFORATO_JWT_AUDIENCE", default_value = "traforato-api")]
    pub audience: String,
}

/// Parses a token lifetime: `300`, `300s`, `5m`, `2h`, `1d`; more than zero.
pub fn parse_ttl(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("expected a duration like 300, 30s, 5m or 2h, got {s:?}"))?;
    let scale = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        other => return Err(format!("unknown unit {other:?} (use s, m, h or d)")),
    };
    match number.checked_mul(scale) {
        Some(0) => Err("the ttl must be more than zero".to_string()),
        Some(seconds) => Ok(Duration::from_secs(seconds)),
        None => Err(format!("ttl {s:?} is too long")),
    }
}

/// `sandbox ...`.
#[derive(Debug, Subcommand)]
pub enum SandboxCommand {
    /// Create a sandbox and print its id (the whole record with --json).
    #[command(after_help = "\
Examples:
  traforato-cli sandbox create --image ubuntu:24.04
  SBX=$(traforato-cli sandbox create --image ubuntu:24.04 --cpu 2 --ttl 600)
  traforato-cli sandbox create --image python:3.12-slim --allow pypi.org --allow files.pythonhosted.org")]
    Create(CreateArgs),

    /// Show a sandbox.
    #[command(
        after_help = "Example:\n  traforato-cli sandbox get sbx-broker_local-worker_local-..."
    )]
    Get {
        /// Sandbox id.
        id: String,
    },

    /// Delete a sandbox and everything in it.
    #[command(after_help = "Example:\n  traforato-cli sandbox delete sbx-...")]
    Delete {
        /// Sandbox id.
        id: String,
    },

    /// Change a sandbox's network egress while it runs.
    #[command(after_help = "\
Examples:
  traforato-cli sandbox network sbx-... --egress all
  traforato-cli sandbox network sbx-... --allow pypi.org --allow files.pythonhosted.org
  traforato-cli sandbox network sbx-... --egress none")]
    Network {
        /// Sandbox id.
        id: String,
        #[command(flatten)]
        network: NetworkArgs,
    },

    /// Renew a sandbox's lease: it now expires TTL seconds from now.
    #[command(after_help = "Example:\n  traforato-cli sandbox lease sbx-... --ttl 3600")]
    Lease {
        /// Sandbox id.
        id: String,
        /// Seconds from now.
        #[arg(long, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..))]
        ttl: u64,
    },
}

/// `sandbox create` flags.
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Image, e.g. ubuntu:24.04 (required except for tart).
    #[arg(long)]
    pub image: Option<String>,
    /// CPUs.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub cpu: Option<u32>,
    /// Backend, e.g. vetu, tart, container, fake (default: the deployment's).
    #[arg(long)]
    pub virtualization: Option<String>,
    /// Lifetime in seconds (default: the worker's).
    #[arg(long, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..))]
    pub ttl: Option<u64>,
    /// Only place on workers with this hardware SKU.
    #[arg(long)]
    pub hardware_sku: Option<String>,
    #[command(flatten)]
    pub network: NetworkArgs,
}

/// Network egress flags.
#[derive(Debug, Args)]
pub struct NetworkArgs {
    /// Network egress: none (loopback only), all, or allow (only what --allow names). A
    /// create without it gets the worker's default (none unless configured).
    #[arg(long, value_parser = ["none", "all", "allow"])]
    pub egress: Option<String>,
    /// With --egress allow: a domain (*.example.com for its subdomains), address or CIDR
    /// range, with an optional :port (repeatable).
    #[arg(long = "allow", value_name = "RULE")]
    pub allow: Vec<String>,
}

impl NetworkArgs {
    /// The create's network field: `None` when no flag was given (`--allow` alone means
    /// `--egress allow`).
    pub fn policy(&self) -> Option<traforato_client::api::NetworkPolicy> {
        let egress = match (&self.egress, self.allow.is_empty()) {
            (Some(egress), _) => egress.clone(),
            (None, false) => "allow".to_string(),
            (None, true) => return None,
        };
        Some(traforato_client::api::NetworkPolicy {
            egress,
            allow: self.allow.clone(),
        })
    }
}

/// `exec` arguments.
#[derive(Debug, Args)]
pub struct ExecArgs {
    /// Sandbox id.
    pub id: String,
    /// Working directory inside the sandbox.
    #[arg(long)]
    pub cwd: Option<String>,
    /// Environment variable (repeatable).
    #[arg(long = "env", value_name = "KEY=VALUE", value_parser = parse_key_val)]
    pub env: Vec<(String, String)>,
    /// Kill the command after this many milliseconds (exit code 124).
    #[arg(long, value_name = "MS", value_parser = clap::value_parser!(u64).range(1..))]
    pub timeout: Option<u64>,
    /// Pipe local stdin to the command (over a WebSocket, no terminal).
    #[arg(short, long, conflicts_with = "timeout")]
    pub interactive: bool,
    /// The command and its arguments (after `--`).
    #[arg(
        required = true,
        num_args = 1..,
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "CMD"
    )]
    pub command: Vec<String>,
}

/// `shell` arguments.
#[derive(Debug, Args)]
pub struct ShellArgs {
    /// Sandbox id.
    pub id: String,
    /// Working directory inside the sandbox.
    #[arg(long)]
    pub cwd: Option<String>,
    /// Environment variable (repeatable).
    #[arg(long = "env", value_name = "KEY=VALUE", value_parser = parse_key_val)]
    pub env: Vec<(String, String)>,
    /// The command and its arguments (after `--`); default `/bin/sh`.
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "CMD"
    )]
    pub command: Vec<String>,
}

/// An interpreter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RuntimeArg {
    /// Python 3.
    Python,
    /// Node.js.
    Node,
}

/// `run` arguments.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["code", "file"])))]
pub struct RunArgs {
    /// Sandbox id.
    pub id: String,
    /// The interpreter.
    #[arg(long, value_enum)]
    pub runtime: RuntimeArg,
    /// The code, inline.
    #[arg(long, conflicts_with = "file")]
    pub code: Option<String>,
    /// A file with the code, or `-` for standard input.
    #[arg(value_name = "FILE")]
    pub file: Option<String>,
    /// Working directory inside the sandbox.
    #[arg(long)]
    pub cwd: Option<String>,
    /// Environment variable (repeatable).
    #[arg(long = "env", value_name = "KEY=VALUE", value_parser = parse_key_val)]
    pub env: Vec<(String, String)>,
    /// Kill the interpreter after this many milliseconds (default 30000; exit code 124).
    #[arg(long, value_name = "MS", value_parser = clap::value_parser!(u64).range(1..))]
    pub timeout: Option<u64>,
}

/// `files ...`.
#[derive(Debug, Subcommand)]
pub enum FilesCommand {
    /// Upload a local file (or `-` for standard input) to a path in the sandbox.
    #[command(after_help = "\
Examples:
  traforato-cli files put sbx-... ./app.py /workspace/app.py
  echo hello | traforato-cli files put sbx-... - /workspace/hello.txt")]
    Put {
        /// Sandbox id.
        id: String,
        /// Local file, or `-` for standard input.
        local: String,
        /// Absolute path in the sandbox.
        remote: String,
    },

    /// Download a file from the sandbox to LOCAL, or to standard output.
    #[command(after_help = "\
Examples:
  traforato-cli files get sbx-... /workspace/out.csv ./out.csv
  traforato-cli files get sbx-... /workspace/log.txt | tail")]
    Get {
        /// Sandbox id.
        id: String,
        /// Absolute path in the sandbox.
        remote: String,
        /// Local file; standard output when absent or `-`.
        local: Option<String>,
    },

    /// List a directory.
    #[command(after_help = "Example:\n  traforato-cli files ls sbx-... /workspace -r")]
    Ls {
        /// Sandbox id.
        id: String,
        /// Directory.
        #[arg(default_value = "/workspace")]
        path: String,
        /// Everything below the directory.
        #[arg(short, long)]
        recursive: bool,
    },

    /// Show a file's or directory's type, size and modification time; exits 1 if missing.
    #[command(after_help = "Example:\n  traforato-cli files stat sbx-... /workspace/app.py")]
    Stat {
        /// Sandbox id.
        id: String,
        /// Absolute path in the sandbox.
        path: String,
    },

    /// Create a directory.
    #[command(after_help = "Example:\n  traforato-cli files mkdir sbx-... /workspace/src/pkg -p")]
    Mkdir {
        /// Sandbox id.
        id: String,
        /// Absolute path in the sandbox.
        path: String,
        /// Create missing parents; no error if it exists.
        #[arg(short, long)]
        parents: bool,
    },

    /// Remove a file or directory.
    #[command(after_help = "Example:\n  traforato-cli files rm sbx-... /workspace/build -r -f")]
    Rm {
        /// Sandbox id.
        id: String,
        /// Absolute path in the sandbox.
        path: String,
        /// Remove directories and their contents.
        #[arg(short, long)]
        recursive: bool,
        /// No error when nothing is there.
        #[arg(short, long)]
        force: bool,
    },
}

/// A port URL scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProtocolArg {
    /// http://
    Http,
    /// https://
    Https,
    /// ws://
    Ws,
    /// wss://
    Wss,
}

/// `port-url` arguments.
#[derive(Debug, Args)]
pub struct PortUrlArgs {
    /// Sandbox id.
    pub id: String,
    /// Port inside the sandbox.
    #[arg(value_parser = clap::value_parser!(u16).range(1..))]
    pub port: u16,
    /// URL scheme.
    #[arg(long, value_enum, default_value = "https")]
    pub protocol: ProtocolArg,
}

/// Parses `KEY=VALUE`.
pub fn parse_key_val(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("expected KEY=VALUE, got {s:?}")),
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn the_command_tree_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn every_command_has_an_example() {
        fn walk(cmd: &clap::Command, path: &str) {
            let name = format!("{path} {}", cmd.get_name());
            if cmd.get_name() != "help" {
                let help = cmd
                    .get_after_help()
                    .map(|h| h.to_string())
                    .unwrap_or_default();
                assert!(help.contains("traforato-cli "), "{name} has no example");
            }
            for sub in cmd.get_subcommands() {
                walk(sub, &name);
            }
        }
        walk(&Cli::command(), "");
    }

    #[test]
    fn exec_takes_everything_after_the_id() {
        let cli = Cli::try_parse_from([
            "traforato-cli",
            "exec",
            "sbx-1",
            "--cwd",
            "/w",
            "--env",
            "A=1=2",
            "--timeout",
            "500",
            "--",
            "ls",
            "-la",
            "--cwd",
        ])
        .unwrap();
        let Command::Exec(args) = cli.command else {
            panic!("not exec")
        };
        assert_eq!(args.id, "sbx-1");
        assert_eq!(args.cwd.as_deref(), Some("/w"));
        assert_eq!(args.env, [("A".to_string(), "1=2".to_string())]);
        assert_eq!(args.timeout, Some(500));
        assert_eq!(args.command, ["ls", "-la", "--cwd"]);
    }

    #[test]
    fn run_needs_exactly_one_source() {
        let ok = Cli::try_parse_from([
            "traforato-cli",
            "run",
            "sbx-1",
            "--runtime",
            "python",
            "--code",
            "print(1)",
        ]);
        assert!(ok.is_ok());
        let stdin =
            Cli::try_parse_from(["traforato-cli", "run", "sbx-1", "--runtime", "node", "-"]);
        assert!(stdin.is_ok());
        let none = Cli::try_parse_from(["traforato-cli", "run", "sbx-1", "--runtime", "node"]);
        assert!(none.is_err());
        let both = Cli::try_parse_from([
            "traforato-cli",
            "run",
            "sbx-1",
            "--runtime",
            "node",
            "--code",
            "1",
            "f.js",
        ]);
        assert!(both.is_err());
        let bad = Cli::try_parse_from([
            "traforato-cli",
            "run",
            "sbx-1",
            "--runtime",
            "ruby",
            "--code",
            "1",
        ]);
        assert!(bad.is_err());
    }

    #[test]
    fn global_flags_go_anywhere() {
        let cli = Cli::try_parse_from([
            "traforato-cli",
            "sandbox",
            "get",
            "sbx-1",
            "--json",
            "--url",
            "http://b:1",
            "--token",
            "t",
        ])
        .unwrap();
        assert!(cli.json);
        assert_eq!(cli.url, "http://b:1");
        assert_eq!(cli.token.as_deref(), Some("t"));
    }

    #[test]
    fn ttls() {
        assert_eq!(parse_ttl("300").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_ttl("45s").unwrap(), Duration::from_secs(45));
        assert_eq!(parse_ttl("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_ttl("2h").unwrap(), Duration::from_secs(7200));
        assert_eq!(parse_ttl("1d").unwrap(), Duration::from_secs(86_400));
        for bad in [
            "",
            "0",
            "0s",
            "5x",
            "m",
            "-5",
            "1.5h",
            "99999999999999999999d",
        ] {
            assert!(parse_ttl(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn token_mint_uses_the_global_client_id() {
        let cli = Cli::try_parse_from([
            "traforato-cli",
            "token",
            "mint",
            "--client-id",
            "alice",
            "--ttl",
            "10m",
        ])
        .unwrap();
        assert_eq!(cli.client_id.as_deref(), Some("alice"));
        let Command::Token(TokenCommand::Mint(args)) = cli.command else {
            panic!("not token mint")
        };
        assert_eq!(args.ttl, Duration::from_secs(600));
    }

    #[test]
    fn key_values() {
        assert_eq!(parse_key_val("A=").unwrap(), ("A".into(), "".into()));
        assert!(parse_key_val("=x").is_err());
        assert!(parse_key_val("noequals").is_err());
    }
}
