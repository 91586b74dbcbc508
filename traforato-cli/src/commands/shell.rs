//! `shell` and `exec -i`: a command over the worker's WebSocket with local stdin piped to it,
//! on a terminal (raw mode, resized on `SIGWINCH`) for `shell`.

use std::io::{Read, Write};
use std::os::fd::AsFd;

use futures::StreamExt;
use rustix::termios::{self, OptionalActions, Termios};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;
use traforato_client::{ExecInput, ExecOutputStream, InteractiveCommand, OutputEvent};

use super::Ctx;
use crate::cli::{ExecArgs, ShellArgs};
use crate::output::{exit_code, CliError};

/// The command of `shell` without one.
const DEFAULT_SHELL: &str = "/bin/sh";

/// `exec -i`.
pub async fn exec_interactive(ctx: &Ctx, args: ExecArgs) -> Result<u8, CliError> {
    let command = InteractiveCommand::new(command_line(&args.command));
    run(ctx, args.id, command, args.cwd, args.env, false).await
}

/// `shell`.
pub async fn shell(ctx: &Ctx, args: ShellArgs) -> Result<u8, CliError> {
    let line = if args.command.is_empty() {
        DEFAULT_SHELL.to_string()
    } else {
        command_line(&args.command)
    };
    let (rows, cols) = terminal_size().unwrap_or((24, 80));
    let mut command = InteractiveCommand::new(line).tty(rows, cols);
    if let Ok(term) = std::env::var("TERM") {
        command = command.env("TERM", term);
    }
    run(ctx, args.id, command, args.cwd, args.env, true).await
}

/// Runs `command` in sandbox `id` with `cwd` and `env` added; `terminal`: the local terminal
/// in raw mode and its size followed.
async fn run(
    ctx: &Ctx,
    id: String,
    mut command: InteractiveCommand,
    cwd: Option<String>,
    env: Vec<(String, String)>,
    terminal: bool,
) -> Result<u8, CliError> {
    if let Some(cwd) = cwd {
        command = command.cwd(cwd);
    }
    for (k, v) in env {
        command = command.env(k, v);
    }
    let exec = ctx.client.sandbox(id).exec_interactive(command).await?;
    let (input, output) = exec.split();
    // Restored when dropped: on return, on error and while unwinding from a panic.
    let _raw = if terminal { RawMode::enable() } else { None };
    relay(input, output, terminal).await.map(exit_code)
}

/// One word is a shell script; several are quoted into one command line.
fn command_line(words: &[String]) -> String {
    match words {
        [script] => script.clone(),
        _ => words
            .iter()
            .map(|w| shell_quote(w))
            .collect::<Vec<_>>()
            .join(" "),
    }
}

fn shell_quote(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,+@%".contains(&b));
    if plain {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// Copies local stdin to the command and its output to stdout/stderr until it exits;
/// `resize` forwards the local terminal's size on `SIGWINCH`.
async fn relay(
    mut input: ExecInput,
    mut output: ExecOutputStream,
    resize: bool,
) -> Result<i32, CliError> {
    let mut stdin = stdin_chunks();
    let mut stdin_open = true;
    let mut winch = if resize {
        Some(signal(SignalKind::window_change()).map_err(|e| CliError::io("SIGWINCH", e))?)
    } else {
        None
    };
    loop {
        tokio::select! {
            event = output.next() => match event {
                Some(Ok(OutputEvent::Stdout(data))) => write_all(&mut std::io::stdout(), &data)?,
                Some(Ok(OutputEvent::Stderr(data))) => write_all(&mut std::io::stderr(), &data)?,
                Some(Ok(OutputEvent::Exit(code))) => return Ok(code),
                // Only sessions send it, after a history this command never asks for.
                Some(Ok(OutputEvent::HistoryEnd(_))) => {}
                Some(Err(e)) => return Err(e.into()),
                None => {
                    return Err(CliError::Client(traforato_client::ClientError::Interactive(
                        "the connection closed without an exit code".to_string(),
                    )))
                }
            },
            chunk = stdin.recv(), if stdin_open => match chunk {
                Some(data) => input.send_stdin(&data).await?,
                None => {
                    stdin_open = false;
                    input.close_stdin().await?;
                }
            },
            Some(()) = async {
                match winch.as_mut() {
                    Some(w) => w.recv().await,
                    None => std::future::pending().await,
                }
            } => {
                if let Some((rows, cols)) = terminal_size() {
                    input.resize(rows, cols).await?;
                }
            }
        }
    }
}

fn write_all(out: &mut impl Write, data: &[u8]) -> Result<(), CliError> {
    out.write_all(data)
        .and_then(|()| out.flush())
        .map_err(|e| CliError::io("-", e))
}

/// Local stdin in chunks, read on a thread of its own: a blocking read cannot be cancelled,
/// and on the runtime's blocking pool it would hold up the exit. The channel closes at EOF.
fn stdin_chunks() -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel(16);
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin();
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match stdin.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx.blocking_send(buf[..n].to_vec()).is_err() {
                        break;
                    }
                }
            }
        }
    });
    rx
}

/// The local terminal's (rows, cols), when stdout or stdin is a terminal.
fn terminal_size() -> Option<(u16, u16)> {
    let size = termios::tcgetwinsize(std::io::stdout().as_fd())
        .or_else(|_| termios::tcgetwinsize(std::io::stdin().as_fd()))
        .ok()?;
    (size.ws_row > 0 && size.ws_col > 0).then_some((size.ws_row, size.ws_col))
}

/// The local terminal in raw mode; the saved settings come back on drop.
struct RawMode {
    saved: Termios,
}

impl RawMode {
    /// Raw mode on stdin, when stdin is a terminal.
    fn enable() -> Option<Self> {
        let stdin = std::io::stdin();
        if !termios::isatty(stdin.as_fd()) {
            return None;
        }
        let saved = termios::tcgetattr(stdin.as_fd()).ok()?;
        let mut raw = saved.clone();
        raw.make_raw();
        termios::tcsetattr(stdin.as_fd(), OptionalActions::Now, &raw).ok()?;
        Some(RawMode { saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = termios::tcsetattr(std::io::stdin().as_fd(), OptionalActions::Now, &self.saved);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_lines_quote_words() {
        assert_eq!(command_line(&["echo hi | wc".into()]), "echo hi | wc");
        assert_eq!(
            command_line(&["printf".into(), "%s\n".into(), "it's".into()]),
            r"printf '%s
' 'it'\''s'"
        );
        assert_eq!(
            command_line(&["tr".into(), "a-z".into(), "A-Z".into()]),
            "tr a-z A-Z"
        );
    }
}
