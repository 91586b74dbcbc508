//! Run-code for every backend: the Python and Node.js bootstraps (`bootstrap/`) and the
//! default [`Vm::run_code`], which runs them through [`Vm::exec`] with nothing but stdio.
//!
//! The bootstrap reads the code from stdin and compiles it before any of it runs; it then
//! reports through `_status`, which a status file appended to it defines. Over stdio the
//! status is the first byte of stdout: ACK (`0x06`) when the code runs, NAK (`0x15`) for a
//! syntax error (the interpreter's message is then on stderr). Until that byte arrives,
//! stderr (interpreter start-up noise) is held back; after it, output flows as it comes.
//! The container backend uses the same bootstraps with the status on a pipe of its own (fd 3).

use bytes::Bytes;
use tokio::sync::mpsc;

use super::{
    BackendError, CodeOutcome, CodeSpec, ExecExit, ExecSpec, OutputChunk, OutputStream, Program,
    Runtime, Vm,
};

/// The Python bootstrap, its status on stdout, and the call that runs it.
pub const PYTHON_STDIO: &str = concat!(
    include_str!("bootstrap/python_run.py"),
    include_str!("bootstrap/python_status_stdout.py"),
    "_run()\n"
);

/// The Node.js bootstrap, its status on stdout.
pub const NODE_STDIO: &str = concat!(
    include_str!("bootstrap/node_run.js"),
    include_str!("bootstrap/node_status_stdout.js")
);

/// The status byte of code that runs.
const ACK: u8 = 0x06;
/// The status byte of a syntax error.
const NAK: u8 = 0x15;
/// The most of a syntax error's message kept.
const MESSAGE_LIMIT: usize = 64 * 1024;
/// The most output held before the status byte is known.
const PENDING_LIMIT: usize = 1 << 20;
/// Output chunks buffered between the exec and the relay.
const RELAY_CHANNEL: usize = 64;

/// The argv that runs code of `runtime` with its status on stdout.
pub fn stdio_argv(runtime: Runtime) -> Vec<String> {
    let argv: &[&str] = match runtime {
        Runtime::Python => &["python3", "-I", "-S", "-c", PYTHON_STDIO],
        Runtime::Node => &["node", "-e", NODE_STDIO],
    };
    argv.iter().map(|a| a.to_string()).collect()
}

/// What the status byte said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    Pending,
    Runs,
    SyntaxError,
}

/// Runs `spec` through `vm.exec`: the default of [`Vm::run_code`] for backends that can run
/// a command with stdin, stdout and stderr. An interpreter that is missing or dies before
/// the status byte ends the run with its exit code and whatever it printed.
pub async fn run_code_over_exec<V: Vm + ?Sized>(
    vm: &V,
    spec: CodeSpec,
    output: mpsc::Sender<OutputChunk>,
) -> Result<CodeOutcome, BackendError> {
    let runtime = spec.runtime;
    let exec = ExecSpec {
        program: Program::Argv(stdio_argv(spec.runtime)),
        cwd: spec.cwd,
        env: spec.env,
        stdin: Some(Bytes::from(spec.code.into_bytes())),
        timeout: spec.timeout,
        exec_id: None,
        interactive: false,
        tty: None,
    };
    let (tx, rx) = mpsc::channel(RELAY_CHANNEL);
    let (exit, (status, held)) = tokio::join!(vm.exec(exec, tx), relay(rx, output));
    let exit = exit?;
    // The shell's "command not found" before the bootstrap said anything.
    if status == Status::Pending && exit.exit_code == 127 {
        return Err(BackendError::RuntimeMissing {
            runtime,
            program: runtime.program(),
        });
    }
    match status {
        Status::SyntaxError => Ok(CodeOutcome::SyntaxError {
            message: String::from_utf8_lossy(&held).into_owned(),
            exit_code: exit.exit_code,
        }),
        Status::Runs | Status::Pending => Ok(CodeOutcome::Finished(ExecExit {
            exit_code: exit.exit_code,
            timed_out: exit.timed_out,
        })),
    }
}

/// Forwards the exec's output to `output` once the status byte said the code runs; returns
/// the status and, for a syntax error, the message. Before the status byte, stdout that is
/// not the bootstrap's (a login banner of a backend's shell) is dropped and stderr is held.
async fn relay(
    mut rx: mpsc::Receiver<OutputChunk>,
    output: mpsc::Sender<OutputChunk>,
) -> (Status, Vec<u8>) {
    let mut status = Status::Pending;
    let mut held_err: Vec<u8> = Vec::new();
    let mut held_out: Vec<u8> = Vec::new();
    let mut message: Vec<u8> = Vec::new();
    let mut receiver_gone = false;
    while let Some(chunk) = rx.recv().await {
        if chunk.data.is_empty() {
            continue;
        }
        let mut forward = Vec::new();
        match (status, chunk.stream) {
            (Status::Pending, OutputStream::Stdout) => {
                let data = chunk.data;
                match data.iter().position(|b| *b == ACK || *b == NAK) {
                    None => push_capped(&mut held_out, &data, PENDING_LIMIT),
                    Some(at) => {
                        held_out.clear();
                        if data[at] == ACK {
                            status = Status::Runs;
                            if !held_err.is_empty() {
                                forward.push(OutputChunk {
                                    stream: OutputStream::Stderr,
                                    data: Bytes::from(std::mem::take(&mut held_err)),
                                });
                            }
                            let rest = data.slice(at + 1..);
                            if !rest.is_empty() {
                                forward.push(OutputChunk {
                                    stream: OutputStream::Stdout,
                                    data: rest,
                                });
                            }
                        } else {
                            status = Status::SyntaxError;
                            message = std::mem::take(&mut held_err);
                            message.truncate(MESSAGE_LIMIT);
                        }
                    }
                }
            }
            (Status::Pending, OutputStream::Stderr) => {
                push_capped(&mut held_err, &chunk.data, PENDING_LIMIT)
            }
            (Status::SyntaxError, OutputStream::Stderr) => {
                push_capped(&mut message, &chunk.data, MESSAGE_LIMIT)
            }
            (Status::SyntaxError, OutputStream::Stdout) => {}
            (Status::Runs, _) => forward.push(chunk),
        }
        for chunk in forward {
            if !receiver_gone {
                receiver_gone = output.send(chunk).await.is_err();
            }
        }
    }
    if status == Status::Pending && !receiver_gone {
        // It never started the code (no interpreter, say): what it printed is the output.
        for (stream, data) in [
            (OutputStream::Stdout, held_out),
            (OutputStream::Stderr, std::mem::take(&mut held_err)),
        ] {
            if !data.is_empty() {
                let data = Bytes::from(data);
                let _ = output.send(OutputChunk { stream, data }).await;
            }
        }
    }
    (status, message)
}

/// Appends what fits of `data` below `limit` bytes.
fn push_capped(buffer: &mut Vec<u8>, data: &[u8], limit: usize) {
    let room = limit.saturating_sub(buffer.len());
    buffer.extend_from_slice(&data[..data.len().min(room)]);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(stream: OutputStream, data: &'static [u8]) -> OutputChunk {
        OutputChunk {
            stream,
            data: Bytes::from_static(data),
        }
    }

    async fn relayed(chunks: Vec<OutputChunk>) -> (Status, Vec<u8>, Vec<OutputChunk>) {
        let (tx, rx) = mpsc::channel(16);
        let (out_tx, mut out_rx) = mpsc::channel(16);
        for c in chunks {
            tx.send(c).await.unwrap();
        }
        drop(tx);
        let (status, held) = relay(rx, out_tx).await;
        let mut out = Vec::new();
        while let Ok(c) = out_rx.try_recv() {
            out.push(c);
        }
        (status, held, out)
    }

    #[tokio::test]
    async fn output_flows_after_the_ack_with_earlier_stderr_first() {
        let (status, _, out) = relayed(vec![
            chunk(OutputStream::Stderr, b"warning\n"),
            chunk(OutputStream::Stdout, b"\x06hello\n"),
            chunk(OutputStream::Stdout, b"more\n"),
        ])
        .await;
        assert_eq!(status, Status::Runs);
        assert_eq!(
            out,
            vec![
                chunk(OutputStream::Stderr, b"warning\n"),
                chunk(OutputStream::Stdout, b"hello\n"),
                chunk(OutputStream::Stdout, b"more\n"),
            ]
        );
    }

    #[tokio::test]
    async fn a_syntax_error_keeps_its_message_out_of_the_output() {
        let (status, held, out) = relayed(vec![
            chunk(OutputStream::Stdout, b"\x15"),
            chunk(OutputStream::Stderr, b"SyntaxError: invalid syntax\n"),
        ])
        .await;
        assert_eq!(status, Status::SyntaxError);
        assert_eq!(held, b"SyntaxError: invalid syntax\n");
        assert!(out.is_empty());
    }

    #[tokio::test]
    async fn a_banner_before_the_status_and_empty_chunks_are_not_output() {
        let (status, _, out) = relayed(vec![
            chunk(OutputStream::Stdout, b""),
            chunk(OutputStream::Stdout, b"Welcome to the VM\n"),
            chunk(OutputStream::Stdout, b"motd\x06hi\n"),
        ])
        .await;
        assert_eq!(status, Status::Runs);
        assert_eq!(out, vec![chunk(OutputStream::Stdout, b"hi\n")]);
        let (status, held, out) = relayed(vec![
            chunk(OutputStream::Stdout, b"banner\n"),
            chunk(OutputStream::Stderr, b"SyntaxError\n"),
            chunk(OutputStream::Stdout, b"\x15"),
        ])
        .await;
        assert_eq!(
            (status, held.as_slice()),
            (Status::SyntaxError, &b"SyntaxError\n"[..])
        );
        assert!(out.is_empty());
    }

    #[tokio::test]
    async fn an_interpreter_that_never_starts_the_code_shows_its_stderr() {
        let (status, _, out) = relayed(vec![chunk(
            OutputStream::Stderr,
            b"sh: python3: not found\n",
        )])
        .await;
        assert_eq!(status, Status::Pending);
        assert_eq!(
            out,
            vec![chunk(OutputStream::Stderr, b"sh: python3: not found\n")]
        );
    }

    #[test]
    fn bootstraps_define_their_status() {
        assert!(PYTHON_STDIO.contains("def _status(ok):"));
        assert!(PYTHON_STDIO.ends_with("_run()\n"));
        assert!(NODE_STDIO.contains("function _status(ok)"));
        assert_eq!(stdio_argv(Runtime::Node)[..2], ["node", "-e"]);
    }
}
