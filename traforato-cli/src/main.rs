//! traforato-cli: the command-line client. Parses the command line, runs one command on a
//! small runtime and exits with its code.

mod cli;
mod commands;
mod output;
mod spinner;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(output::EXIT_FAILURE);
        }
    };
    ExitCode::from(runtime.block_on(commands::run(cli)))
}
