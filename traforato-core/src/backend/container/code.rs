//! Run-code, worker side: one interpreter per run, started either by the agent (one-shot
//! `python3 -I -S -c <bootstrap>` / `node -e <bootstrap>`) or forked by the sandbox's warm
//! Python zygote (`zygote.rs`).
//!
//! The bootstrap (`backend/bootstrap/`, shared with other backends) reads the code from stdin
//! and compiles it before anything of it runs. Here its fd 3 is a status pipe: on a syntax
//! error it writes `S` there and the interpreter's own message to stderr; on success it closes
//! fd 3 and runs the code. The worker forwards no output until the status is known, so a syntax error's
//! message never leaks into the output stream and user code never sees fd 3.
//!
//! Python runs with `-I -S`: the standard library is importable at once; `site` (Debian's
//! dist-packages and their `.pth` files) is loaded the first time an import is not found
//! (the zygote loads it once it has been idle briefly, so warm runs have it already).
//! `sys.path[0]` is `''` (the cwd) and `PYTHONPATH` is honoured as `python3 -` does; other
//! `PYTHON*` variables are not, though they stay in the environment. `exit()`/`quit()` exist.
//! At the end, non-daemon threads are joined, `atexit` handlers run and output is flushed,
//! then the process exits without tearing every module down.
//!
//! Every wait on the zygote is bounded: for the fork by the run's deadline plus
//! [`KILL_GRACE`], for the exit after a timeout's kill by [`KILL_GRACE`]. A zygote that misses
//! one (stopped, say) is killed; the run ends as timed out, later runs are one-shot.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::AsyncReadExt;
use tokio::net::unix::pipe;
use tokio::sync::{mpsc, Mutex};
use tokio::time::Instant;

use super::agent::{AgentConn, ExecEvent};
use super::exec::{cloexec_pipe, feed, io_error, pump, Sink, DRAIN_GRACE};
use super::init::PROGRAM_NOT_FOUND;
use super::protocol::{ExecUser, Request};
use super::zygote::{RunEvent, StartError, Zygote, ZygoteState};
use crate::backend::{
    BackendError, CodeOutcome, ExecExit, OutputChunk, Runtime, TIMEOUT_EXIT_CODE,
};

/// One-shot Python: the bootstrap with its status on fd 3, then the call that runs it.
const PYTHON_ONE_SHOT: &str = concat!(
    include_str!("../bootstrap/python_run.py"),
    include_str!("../bootstrap/python_status_fd3.py"),
    "_run()\n"
);

/// One-shot Node.js bootstrap, its status on fd 3.
const NODE_ONE_SHOT: &str = concat!(
    include_str!("../bootstrap/node_run.js"),
    include_str!("../bootstrap/node_status_fd3.js")
);

/// What a syntax-error run may print before the worker stops collecting it.
const SYNTAX_MESSAGE_LIMIT: u64 = 64 * 1024;

/// How long the zygote has, past a run's deadline, to report the fork, and after the run's
/// kill to report its exit.
pub(crate) const KILL_GRACE: Duration = Duration::from_secs(2);

/// The outcome of a run killed at its deadline.
const TIMED_OUT: CodeOutcome = CodeOutcome::Finished(ExecExit {
    exit_code: TIMEOUT_EXIT_CODE,
    timed_out: true,
});

/// The argv of a one-shot run.
pub(crate) fn one_shot_argv(runtime: Runtime) -> Vec<String> {
    let argv: &[&str] = match runtime {
        Runtime::Python => &["python3", "-I", "-S", "-c", PYTHON_ONE_SHOT],
        Runtime::Node => &["node", "-e", NODE_ONE_SHOT],
    };
    argv.iter().map(|a| a.to_string()).collect()
}

/// A run to start.
pub(crate) struct CodeRun {
    /// Interpreter.
    pub runtime: Runtime,
    /// Source, fed on stdin.
    pub code: Bytes,
    /// Working directory.
    pub cwd: String,
    /// The complete environment.
    pub env: Vec<(String, String)>,
    /// Kill after this long (exit code 124).
    pub timeout: Duration,
    /// Run as this user (the image's), not the sandbox's root.
    pub user: Option<ExecUser>,
}

/// How the run's process group is killed.
#[derive(Clone, Copy)]
enum Target {
    /// An exec of the agent.
    Exec(u64),
    /// A process group forked by the zygote.
    Group(i32),
}

impl Target {
    fn request(self) -> Request {
        match self {
            Target::Exec(id) => Request::Kill { id },
            Target::Group(pgid) => Request::KillGroup { pgid },
        }
    }
}

/// Where the exit code comes from.
enum Exits<'z> {
    Agent(mpsc::UnboundedReceiver<ExecEvent>),
    Zygote(mpsc::UnboundedReceiver<RunEvent>, &'z Zygote),
}

impl Exits<'_> {
    /// The exit code; `None` if the sandbox (or the zygote) died first.
    async fn wait(&mut self) -> Option<i32> {
        match self {
            Exits::Agent(events) => {
                while let Some(event) = events.recv().await {
                    if let ExecEvent::Exited(code) = event {
                        return Some(code);
                    }
                }
                None
            }
            Exits::Zygote(events, _) => events.recv().await.map(|RunEvent::Exited(code)| code),
        }
    }
}

/// Kills the run if the future is dropped before it ended.
struct KillOnDrop {
    agent: Arc<AgentConn>,
    target: Target,
    armed: bool,
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if self.armed {
            match self.target {
                Target::Exec(id) => {
                    self.agent.kill_now(id);
                    self.agent.unregister(id);
                }
                Target::Group(pgid) => self.agent.kill_group_now(pgid),
            }
        }
    }
}

/// The run's pipes, worker ends.
struct Pipes {
    stdin: OwnedFd,
    stdout: OwnedFd,
    stderr: OwnedFd,
    status: OwnedFd,
}

/// The run's pipes: the ends the interpreter gets (stdin, stdout, stderr, status) and ours.
fn pipes() -> Result<([OwnedFd; 4], Pipes), BackendError> {
    let (stdin_r, stdin) = cloexec_pipe()?;
    let (stdout, out_w) = cloexec_pipe()?;
    let (stderr, err_w) = cloexec_pipe()?;
    let (status, status_w) = cloexec_pipe()?;
    let ours = Pipes {
        stdin,
        stdout,
        stderr,
        status,
    };
    Ok(([stdin_r, out_w, err_w, status_w], ours))
}

/// Runs code: through the zygote when one is given and usable, else one-shot.
pub(crate) async fn run(
    agent: &Arc<AgentConn>,
    zygote: Option<&Zygote>,
    run: CodeRun,
    output: mpsc::Sender<OutputChunk>,
) -> Result<CodeOutcome, BackendError> {
    if !agent.is_alive() {
        return Err(BackendError::Gone);
    }
    // The zygote is out of the sandbox's reach from its first instruction (started with a
    // real uid of its own): a run that comes before it is warm goes one-shot, not waiting.
    let zygote = zygote.filter(|z| z.state() == ZygoteState::Ready);
    let started = Instant::now();
    let deadline = started + run.timeout;
    let (mut theirs, mut pipes) = pipes()?;

    let mut launched = None;
    if let (Runtime::Python, Some(zygote)) = (run.runtime, zygote) {
        let until = deadline + KILL_GRACE;
        match zygote
            .start_run(
                &run.cwd,
                &run.env,
                theirs.each_ref().map(AsFd::as_fd),
                until,
            )
            .await
        {
            Ok((pid, events)) => {
                launched = Some((Target::Group(pid), Exits::Zygote(events, zygote)))
            }
            Err(StartError::Failed(message)) => return Err(BackendError::ExecFailed(message)),
            Err(StartError::Unresponsive) => return Ok(TIMED_OUT),
            Err(StartError::Unavailable) => {
                // A zygote that died with the request may have left a child holding these
                // pipes: the one-shot interpreter gets its own.
                (theirs, pipes) = self::pipes()?;
            }
        }
    }
    let (target, exits) = match launched {
        Some(launched) => launched,
        None => launch_one_shot(agent, &run, theirs.each_ref().map(AsFd::as_fd)).await?,
    };
    drop(theirs);
    let mut guard = KillOnDrop {
        agent: Arc::clone(agent),
        target,
        armed: true,
    };
    let result = supervise(agent, target, exits, pipes, run, deadline, output).await;
    guard.armed = false;
    result
}

/// Starts a one-shot interpreter through the agent.
async fn launch_one_shot(
    agent: &Arc<AgentConn>,
    run: &CodeRun,
    fds: [BorrowedFd<'_>; 4],
) -> Result<(Target, Exits<'static>), BackendError> {
    let (id, mut events) = agent.register();
    let request = Request::Exec {
        id,
        argv: one_shot_argv(run.runtime),
        env: run.env.clone(),
        cwd: run.cwd.clone(),
        out_of_reach: false,
        tty: false,
        user: run.user,
    };
    if let Err(e) = agent.send(&request, &fds).await {
        agent.unregister(id);
        return Err(if agent.is_alive() {
            BackendError::io("send exec request", e)
        } else {
            BackendError::Gone
        });
    }
    match events.recv().await {
        Some(ExecEvent::Started) => Ok((Target::Exec(id), Exits::Agent(events))),
        Some(ExecEvent::Failed(message)) if message.starts_with(PROGRAM_NOT_FOUND) => {
            Err(BackendError::RuntimeMissing {
                runtime: run.runtime,
                program: run.runtime.program(),
            })
        }
        Some(ExecEvent::Failed(message)) => Err(BackendError::ExecFailed(message)),
        Some(ExecEvent::Exited(_)) | None => Err(BackendError::Gone),
    }
}

/// Reads the status pipe: `Some(true)` for a syntax error, `Some(false)` once it closed
/// without a report.
async fn read_status(status: OwnedFd) -> std::io::Result<bool> {
    let mut reader = pipe::Receiver::from_owned_fd(status)?;
    let mut byte = [0u8; 1];
    Ok(reader.read(&mut byte).await? == 1 && byte[0] == b'S')
}

/// Reads a pipe to its end, keeping at most `limit` bytes.
async fn collect(fd: OwnedFd, limit: u64) -> Vec<u8> {
    let mut out = Vec::new();
    if let Ok(reader) = pipe::Receiver::from_owned_fd(fd) {
        let mut limited = reader.take(limit);
        let _ = limited.read_to_end(&mut out).await;
    }
    out
}

/// Feeds the code, waits for the compile verdict, then streams output until the exit (or
/// kills on timeout).
async fn supervise(
    agent: &Arc<AgentConn>,
    target: Target,
    mut exits: Exits<'_>,
    pipes: Pipes,
    run: CodeRun,
    deadline: Instant,
    output: mpsc::Sender<OutputChunk>,
) -> Result<CodeOutcome, BackendError> {
    let input = pipe::Sender::from_owned_fd(pipes.stdin).map_err(io_error("open stdin pipe"))?;
    let stdin_task = tokio::spawn(feed(input, Some(run.code)));
    let verdict = tokio::time::timeout_at(deadline, read_status(pipes.status)).await;
    let syntax_error = match verdict {
        Ok(Ok(syntax_error)) => syntax_error,
        Ok(Err(e)) => {
            stdin_task.abort();
            let _ = agent.send(&target.request(), &[]).await;
            return Err(BackendError::io("read run status", e));
        }
        Err(_elapsed) => {
            stdin_task.abort();
            return timed_out(agent, target, &mut exits).await;
        }
    };
    if syntax_error {
        stdin_task.abort();
        let stderr = tokio::spawn(collect(pipes.stderr, SYNTAX_MESSAGE_LIMIT));
        drop(pipes.stdout);
        let code = match tokio::time::timeout_at(deadline, exits.wait()).await {
            Ok(Some(code)) => code,
            Ok(None) => return Err(gone(agent)),
            Err(_elapsed) => return timed_out(agent, target, &mut exits).await,
        };
        let stderr = tokio::time::timeout(DRAIN_GRACE, stderr)
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default();
        return Ok(CodeOutcome::SyntaxError {
            message: syntax_message(run.runtime, &stderr),
            exit_code: code,
        });
    }

    let sink: Sink = Arc::new(Mutex::new(Some(output)));
    let out = pipe::Receiver::from_owned_fd(pipes.stdout).map_err(io_error("open stdout pipe"))?;
    let err = pipe::Receiver::from_owned_fd(pipes.stderr).map_err(io_error("open stderr pipe"))?;
    let mut out_task = tokio::spawn(pump(
        out,
        crate::backend::OutputStream::Stdout,
        Arc::clone(&sink),
    ));
    let mut err_task = tokio::spawn(pump(
        err,
        crate::backend::OutputStream::Stderr,
        Arc::clone(&sink),
    ));
    let exit = match tokio::time::timeout_at(deadline, exits.wait()).await {
        Ok(Some(code)) => ExecExit {
            exit_code: code,
            timed_out: false,
        },
        Ok(None) => {
            stdin_task.abort();
            // The zygote may have died with the run still going: stop it too.
            let _ = agent.send(&target.request(), &[]).await;
            return Err(gone(agent));
        }
        Err(_elapsed) => {
            stdin_task.abort();
            let outcome = timed_out(agent, target, &mut exits).await;
            drain(&sink, &mut out_task, &mut err_task).await;
            return outcome;
        }
    };
    stdin_task.abort();
    drain(&sink, &mut out_task, &mut err_task).await;
    Ok(CodeOutcome::Finished(exit))
}

/// Waits a little for the output to end; leaves the pumps draining detached after that.
async fn drain(
    sink: &Sink,
    out_task: &mut tokio::task::JoinHandle<()>,
    err_task: &mut tokio::task::JoinHandle<()>,
) {
    let drained = tokio::time::timeout(DRAIN_GRACE, async {
        let _ = out_task.await;
        let _ = err_task.await;
    })
    .await;
    if drained.is_err() {
        *sink.lock().await = None;
    }
}

/// Kills the run's process group and reports the timeout once it is gone (or, for a
/// zygote's run, once the zygote failed to report it within [`KILL_GRACE`]; the zygote is
/// then killed too).
async fn timed_out(
    agent: &Arc<AgentConn>,
    target: Target,
    exits: &mut Exits<'_>,
) -> Result<CodeOutcome, BackendError> {
    // The agent processes requests in order: the kill lands before any later exec.
    let _ = agent.send(&target.request(), &[]).await;
    let exited = match exits {
        Exits::Agent(_) => exits.wait().await,
        Exits::Zygote(_, zygote) => {
            let zygote: &Zygote = zygote;
            match tokio::time::timeout(KILL_GRACE, exits.wait()).await {
                Ok(exited) => exited,
                Err(_elapsed) => {
                    tracing::warn!("python zygote did not report a killed run; killed");
                    zygote.kill();
                    Some(TIMEOUT_EXIT_CODE)
                }
            }
        }
    };
    match exited {
        Some(_) => Ok(TIMED_OUT),
        None => Err(gone(agent)),
    }
}

/// The error for a run whose exit was never reported.
fn gone(agent: &AgentConn) -> BackendError {
    if agent.is_alive() {
        BackendError::Transport("the python zygote exited before the run ended".to_string())
    } else {
        BackendError::Gone
    }
}

/// The interpreter's syntax-error text, without node's internal stack frames and version
/// banner.
pub(crate) fn syntax_message(runtime: Runtime, stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let kept: Vec<&str> = match runtime {
        Runtime::Python => text.lines().collect(),
        Runtime::Node => text
            .lines()
            .filter(|l| !l.starts_with("    at ") && !l.starts_with("Node.js v"))
            .collect(),
    };
    kept.join("\n").trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_shot_commands() {
        let py = one_shot_argv(Runtime::Python);
        assert_eq!(&py[..4], ["python3", "-I", "-S", "-c"]);
        assert!(py[4].trim_end().ends_with("_run()"));
        let node = one_shot_argv(Runtime::Node);
        assert_eq!(&node[..2], ["node", "-e"]);
        assert!(node[2].contains("vm.compileFunction"));
        assert_eq!(node.len(), 3);
    }

    #[test]
    fn node_syntax_message_drops_internal_frames() {
        let raw = b"[stdin]:1\nconsole.log((\n\n\nSyntaxError: Unexpected end of input\n    at wrapSafe (node:internal/modules/cjs/loader:1464:18)\n    at checkSyntax (node:internal/main/check_syntax:78:3)\n\nNode.js v20.20.2\n";
        assert_eq!(
            syntax_message(Runtime::Node, raw),
            "[stdin]:1\nconsole.log((\n\n\nSyntaxError: Unexpected end of input"
        );
        assert_eq!(
            syntax_message(
                Runtime::Python,
                b"  File \"<stdin>\", line 1\nSyntaxError: x\n"
            ),
            "File \"<stdin>\", line 1\nSyntaxError: x"
        );
    }
}
