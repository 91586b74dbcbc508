//! Dispatch: builds the client from the global flags and runs one command, returning the
//! process exit code. One module per command group.

mod exec;
mod files;
mod port;
mod sandbox;

use clap::CommandFactory;
use traforato_client::Client;

use crate::cli::{Cli, Command};
use crate::output::{CliError, Output, EXIT_FAILURE, EXIT_TOOL_FAILURE};

/// Shared by every command.
pub struct Ctx {
    pub client: Client,
    pub out: Output,
    /// Whether a spinner may be drawn.
    pub spin: bool,
}

/// Runs the parsed command line; returns the exit code.
pub async fn run(cli: Cli) -> u8 {
    let out = Output { json: cli.json };
    if let Command::Completions { shell } = cli.command {
        let mut cmd = Cli::command();
        clap_complete::generate(shell, &mut cmd, "traforato-cli", &mut std::io::stdout());
        return 0;
    }
    // exec and run exit with the remote command's code, so their own failures use 125.
    let failure = match cli.command {
        Command::Exec(_) | Command::Run(_) => EXIT_TOOL_FAILURE,
        _ => EXIT_FAILURE,
    };
    let mut builder = Client::builder(cli.url.clone())
        .user_agent(concat!("traforato-cli/", env!("CARGO_PKG_VERSION")));
    if let Some(token) = &cli.token {
        builder = builder.token(token.clone());
    }
    let client = match builder.build() {
        Ok(c) => c,
        Err(e) => {
            out.error(&CliError::Client(e));
            return failure;
        }
    };
    let ctx = Ctx {
        client,
        out,
        spin: crate::spinner::enabled(cli.json),
    };
    let result = match cli.command {
        Command::Sandbox(cmd) => sandbox::run(&ctx, cmd).await,
        Command::Exec(args) => exec::exec(&ctx, args).await,
        Command::Run(args) => exec::run_code(&ctx, args).await,
        Command::Files(cmd) => files::run(&ctx, cmd).await,
        Command::PortUrl(args) => port::run(&ctx, args).await,
        Command::Completions { .. } => Ok(0),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            out.error(&e);
            failure
        }
    }
}
