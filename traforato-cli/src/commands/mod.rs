//! Dispatch: builds the client from the global flags and runs one command, returning the
//! process exit code. One module per command group.

mod exec;
mod files;
mod images;
mod port;
mod sandbox;
mod shell;
mod token;

use clap::CommandFactory;
use traforato_client::Client;

use crate::cli::{Cli, Command, TokenCommand};
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
    // Minting needs no broker.
    if let Command::Token(TokenCommand::Mint(args)) = cli.command {
        return match token::mint(&out, cli.client_id.as_deref(), args) {
            Ok(code) => code,
            Err(e) => {
                out.error(&e);
                EXIT_FAILURE
            }
        };
    }
    // exec and run exit with the remote command's code, so their own failures use 125.
    let failure = match cli.command {
        Command::Exec(_) | Command::Run(_) | Command::Shell(_) => EXIT_TOOL_FAILURE,
        _ => EXIT_FAILURE,
    };
    // Their output is the remote terminal's bytes, not a record.
    let raw_output = matches!(&cli.command, Command::Shell(_))
        || matches!(&cli.command, Command::Exec(args) if args.interactive);
    if cli.json && raw_output {
        out.error(&CliError::Usage(
            "--json does not apply to shell and exec -i: their output is the command's own bytes",
        ));
        // Like clap's own usage errors.
        return 2;
    }
    // Images live on workers: their commands may name one instead of the broker.
    let url = match &cli.command {
        Command::Images(cmd) => images::worker_url(cmd).unwrap_or(&cli.url).to_string(),
        _ => cli.url.clone(),
    };
    let builder =
        Client::builder(url).user_agent(concat!("traforato-cli/", env!("CARGO_PKG_VERSION")));
    let built = token::with_credentials(builder, cli.token.as_deref(), cli.client_id.as_deref())
        .and_then(|builder| builder.build().map_err(CliError::Client));
    let client = match built {
        Ok(c) => c,
        Err(e) => {
            out.error(&e);
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
        Command::Exec(args) if args.interactive => shell::exec_interactive(&ctx, args).await,
        Command::Exec(args) => exec::exec(&ctx, args).await,
        Command::Shell(args) => shell::shell(&ctx, args).await,
        Command::Run(args) => exec::run_code(&ctx, args).await,
        Command::Files(cmd) => files::run(&ctx, cmd).await,
        Command::PortUrl(args) => port::run(&ctx, args).await,
        Command::Images(cmd) => images::run(&ctx, cmd).await,
        Command::Completions { .. } | Command::Token(_) => Ok(0),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            out.error(&e);
            failure
        }
    }
}
