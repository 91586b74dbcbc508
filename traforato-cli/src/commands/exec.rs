//! `exec` and `run`: start a command or code, stream its output as it comes, and exit with
//! its exit code.

use std::io::{Read, Write};
use std::time::Duration;

use futures::StreamExt;
use traforato_client::{
    frame_exit_code, ClientError, Command, Execution, FrameKind, RunCode, Runtime,
};

use super::Ctx;
use crate::cli::{ExecArgs, RunArgs, RuntimeArg};
use crate::output::{exit_code, CliError};
use crate::spinner::Spinner;

/// Builds the command: one word is a shell script, several are an argument vector.
pub fn build_command(args: &ExecArgs) -> Command {
    let mut cmd = match args.command.as_slice() {
        [script] => Command::shell(script.clone()),
        [program, rest @ ..] => Command::new(program.clone()).args(rest.iter().cloned()),
        [] => Command::shell(""),
    };
    if let Some(cwd) = &args.cwd {
        cmd = cmd.cwd(cwd.clone());
    }
    for (k, v) in &args.env {
        cmd = cmd.env(k.clone(), v.clone());
    }
    if let Some(ms) = args.timeout {
        cmd = cmd.timeout(Duration::from_millis(ms));
    }
    cmd
}

/// `exec`.
pub async fn exec(ctx: &Ctx, args: ExecArgs) -> Result<u8, CliError> {
    let command = build_command(&args);
    let sandbox = ctx.client.sandbox(args.id);
    let spinner = Spinner::start(ctx.spin, "running");
    let execution = sandbox.exec_stream(command).await?;
    let result = follow(ctx, &execution, spinner).await?;
    if ctx.out.json {
        ctx.out.json(&serde_json::json!({
            "sandbox_id": sandbox.id(),
            "exec_id": execution.id(),
            "stdout": result.stdout,
            "stderr": result.stderr,
            "exit_code": result.exit_code,
        }));
    }
    Ok(exit_code(result.exit_code))
}

/// `run`.
pub async fn run_code(ctx: &Ctx, args: RunArgs) -> Result<u8, CliError> {
    let source = match (&args.code, &args.file) {
        (Some(code), _) => code.clone(),
        (None, Some(path)) => read_source(path)?,
        (None, None) => String::new(),
    };
    let runtime = match args.runtime {
        RuntimeArg::Python => Runtime::Python,
        RuntimeArg::Node => Runtime::Node,
    };
    let mut code = RunCode::new(runtime, source);
    if let Some(cwd) = &args.cwd {
        code = code.cwd(cwd.clone());
    }
    for (k, v) in &args.env {
        code = code.env(k.clone(), v.clone());
    }
    if let Some(ms) = args.timeout {
        code = code.timeout(Duration::from_millis(ms));
    }
    let sandbox = ctx.client.sandbox(args.id);
    if ctx.out.json {
        // Waiting mode tells a syntax error apart.
        let out = sandbox.run_code_with(code).await?;
        ctx.out.json(&serde_json::json!({
            "sandbox_id": sandbox.id(),
            "exec_id": out.exec_id,
            "runtime": out.runtime,
            "stdout": out.stdout,
            "stderr": out.stderr,
            "exit_code": out.exit_code,
            "duration_ms": out.duration_ms,
            "syntax_error": out.syntax_error,
        }));
        return Ok(exit_code(out.exit_code));
    }
    let spinner = Spinner::start(ctx.spin, "running");
    let execution = sandbox.run_code_background(code).await?;
    let result = follow(ctx, &execution, spinner).await?;
    Ok(exit_code(result.exit_code))
}

fn read_source(path: &str) -> Result<String, CliError> {
    if path == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .map_err(|e| CliError::io("-", e))?;
        Ok(s)
    } else {
        std::fs::read_to_string(path).map_err(|e| CliError::io(path, e))
    }
}

/// What an exec produced (collected only in `--json` mode).
struct Followed {
    stdout: String,
    stderr: String,
    exit_code: i32,
}

/// Streams frames to stdout/stderr (or collects them with `--json`) until the exit frame.
async fn follow(
    ctx: &Ctx,
    execution: &Execution,
    mut spinner: Spinner,
) -> Result<Followed, CliError> {
    let mut result = Followed {
        stdout: String::new(),
        stderr: String::new(),
        exit_code: 0,
    };
    let mut exit = None;
    let mut frames = execution.frames();
    while let Some(frame) = frames.next().await {
        let frame = frame?;
        spinner.stop();
        match frame.kind {
            FrameKind::Stdout if ctx.out.json => result.stdout.push_str(&frame.data),
            FrameKind::Stderr if ctx.out.json => result.stderr.push_str(&frame.data),
            FrameKind::Stdout => {
                let mut out = std::io::stdout().lock();
                out.write_all(frame.data.as_bytes())
                    .and_then(|()| out.flush())
                    .map_err(|e| CliError::io("-", e))?;
            }
            FrameKind::Stderr => {
                let mut err = std::io::stderr().lock();
                let _ = err.write_all(frame.data.as_bytes());
                let _ = err.flush();
            }
            FrameKind::Exit => exit = frame_exit_code(&frame),
        }
    }
    spinner.stop();
    result.exit_code = match exit {
        Some(code) => code,
        None => {
            execution
                .record()
                .await?
                .exit_code
                .ok_or_else(|| ClientError::MissingExitCode {
                    exec_id: execution.id().to_string(),
                })?
        }
    };
    Ok(result)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::{Cli, Command as Cmd};

    fn exec_args(argv: &[&str]) -> ExecArgs {
        let mut full = vec!["traforato-cli", "exec", "sbx-1"];
        full.extend_from_slice(argv);
        match Cli::try_parse_from(full).unwrap().command {
            Cmd::Exec(a) => a,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn one_word_is_a_shell_script_several_are_argv() {
        let c = build_command(&exec_args(&["--", "echo hi | wc -c"]));
        assert_eq!(c.as_request().command, "echo hi | wc -c");
        assert!(c.as_request().args.is_none());
        let c = build_command(&exec_args(&["--env", "A=1", "--", "ls", "-la"]));
        assert_eq!(
            c.as_request().args.as_deref(),
            Some(&["ls".to_string(), "-la".to_string()][..])
        );
        assert_eq!(c.as_request().env["A"], "1");
    }
}
