//! Running one command in a sandbox, worker side: pipes for stdio, the exec request to the
//! init, output streamed as it is read, the timeout that kills the process group, and the
//! running execs the worker may still act on (stdin, signals).

use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rustix::pipe::{pipe_with, PipeFlags};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio::sync::{mpsc, Mutex};
use tokio::time::Instant;

use super::agent::{AgentConn, ExecEvent};
use super::protocol::{ExecUser, Request};
use super::pty::{self, Terminal};
use crate::backend::{
    BackendError, BoxedReader, ExecControl, ExecExit, FilesError, OutputChunk, OutputStream,
    TIMEOUT_EXIT_CODE,
};
use crate::id::ExecId;

/// After the command exits, how long output is still forwarded while background processes
/// keep its stdout/stderr open. Later output is read and dropped, so those processes never
/// block or get SIGPIPE.
pub(crate) const DRAIN_GRACE: Duration = Duration::from_millis(100);

/// How long an exec waits for its process group to die after the timeout kill.
const KILL_WAIT: Duration = Duration::from_secs(10);

/// Chunk size for reading output.
const READ_CHUNK: usize = 64 * 1024;

/// A fully resolved command.
pub(crate) struct Command {
    /// Program and arguments.
    pub argv: Vec<String>,
    /// The complete environment.
    pub env: Vec<(String, String)>,
    /// Working directory inside the sandbox.
    pub cwd: String,
    /// Bytes for stdin first.
    pub stdin: Option<Bytes>,
    /// Kill the process group after this long.
    pub timeout: Duration,
    /// The worker's id of the exec, by which [`control`] reaches it while it runs.
    pub exec_id: Option<ExecId>,
    /// Keep stdin open after `stdin` (else EOF follows it).
    pub interactive: bool,
    /// Run on this terminal (its slave as stdin, stdout and stderr) instead of pipes.
    pub terminal: Option<Terminal>,
    /// Run as this user (the image's), not the sandbox's root.
    pub user: Option<ExecUser>,
}

/// The write end of a running exec's stdin; `None` once closed.
type Stdin = Arc<Mutex<Option<pipe::Sender>>>;

/// A running exec the worker may act on.
struct RunningExec {
    /// The exec's id in the agent's protocol.
    agent_id: u64,
    stdin: Stdin,
    /// The terminal's master, when it runs on one.
    terminal: Option<Arc<OwnedFd>>,
}

/// The running execs of one sandbox, by the worker's exec id.
#[derive(Default)]
pub(crate) struct RunningExecs(std::sync::Mutex<HashMap<ExecId, Arc<RunningExec>>>);

impl RunningExecs {
    fn get(&self, id: &ExecId) -> Option<Arc<RunningExec>> {
        self.0.lock().expect("running execs lock").get(id).cloned()
    }

    fn insert(&self, id: ExecId, exec: RunningExec) {
        self.0
            .lock()
            .expect("running execs lock")
            .insert(id, Arc::new(exec));
    }

    fn remove(&self, id: &ExecId) {
        self.0.lock().expect("running execs lock").remove(id);
    }
}

/// Forgets a running exec when [`run`] returns or is dropped.
struct Unlist<'a> {
    running: &'a RunningExecs,
    id: Option<ExecId>,
}

impl Drop for Unlist<'_> {
    fn drop(&mut self) {
        if let Some(id) = self.id {
            self.running.remove(&id);
        }
    }
}

/// Acts on the running exec `id`: writes to or closes its stdin, or signals its process group.
pub(crate) async fn control(
    agent: &Arc<AgentConn>,
    running: &RunningExecs,
    id: &ExecId,
    control: ExecControl,
) -> Result<(), BackendError> {
    let exec = running.get(id).ok_or(BackendError::ExecNotRunning)?;
    match control {
        ExecControl::Stdin(data) => {
            let mut stdin = exec.stdin.lock().await;
            let writer = stdin.as_mut().ok_or(BackendError::StdinClosed)?;
            // Fails once nothing in the sandbox holds the read end any more.
            if writer.write_all(&data).await.is_err() {
                *stdin = None;
                return Err(BackendError::StdinClosed);
            }
            Ok(())
        }
        ExecControl::CloseStdin => {
            let mut stdin = exec.stdin.lock().await;
            let mut writer = stdin.take().ok_or(BackendError::StdinClosed)?;
            // A terminal stays open for output: end its input the way a keyboard does.
            if exec.terminal.is_some() {
                let _ = writer.write_all(b"\x04").await;
            }
            Ok(())
        }
        ExecControl::Signal(signal) => {
            let request = Request::Signal {
                id: exec.agent_id,
                signal: signal.number(),
            };
            agent.send(&request, &[]).await.map_err(|e| {
                if agent.is_alive() {
                    BackendError::io("send signal request", e)
                } else {
                    BackendError::Gone
                }
            })
        }
        ExecControl::Resize(size) => match &exec.terminal {
            Some(master) => {
                pty::resize(master, size).map_err(|e| BackendError::io("resize terminal", e))
            }
            None => Err(BackendError::InvalidRequest(
                "exec has no terminal".to_string(),
            )),
        },
    }
}

/// Where output goes; `None` once the exec has returned.
pub(crate) type Sink = Arc<Mutex<Option<mpsc::Sender<OutputChunk>>>>;

/// Kills the exec's process group if the exec future is dropped before the command ended.
struct KillOnDrop {
    agent: Arc<AgentConn>,
    id: u64,
    armed: bool,
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if self.armed {
            self.agent.kill_now(self.id);
            self.agent.unregister(self.id);
        }
    }
}

pub(crate) fn io_error(op: &str) -> impl FnOnce(std::io::Error) -> BackendError + '_ {
    move |e| BackendError::io(op, e)
}

pub(crate) fn cloexec_pipe() -> Result<(OwnedFd, OwnedFd), BackendError> {
    pipe_with(PipeFlags::CLOEXEC).map_err(|e| BackendError::io("create pipe", e.into()))
}

/// Runs `command` through the sandbox's init and streams its output to `output`.
pub(crate) async fn run(
    agent: &Arc<AgentConn>,
    running: &RunningExecs,
    mut command: Command,
    output: mpsc::Sender<OutputChunk>,
) -> Result<ExecExit, BackendError> {
    if command.argv.is_empty() {
        return Err(BackendError::ExecFailed("empty command".to_string()));
    }
    if !agent.is_alive() {
        return Err(BackendError::Gone);
    }
    // The command's stdin, stdout and stderr (theirs), and our ends: pipes, or a terminal
    // whose master we read and write (its stderr pipe is closed at once: all comes on stdout).
    let terminal = command.terminal.take();
    let tty = terminal.is_some();
    let (theirs, stdin_w, out_r, err_r, master) = match terminal {
        Some(Terminal { master, slave }) => {
            let clone = |fd: &OwnedFd| fd.try_clone().map_err(io_error("share terminal"));
            let (err_r, _) = cloexec_pipe()?;
            let theirs = [clone(&slave)?, clone(&slave)?, slave];
            (
                theirs,
                clone(&master)?,
                clone(&master)?,
                err_r,
                Some(Arc::new(master)),
            )
        }
        None => {
            let (stdin_r, stdin_w) = cloexec_pipe()?;
            let (out_r, out_w) = cloexec_pipe()?;
            let (err_r, err_w) = cloexec_pipe()?;
            ([stdin_r, out_w, err_w], stdin_w, out_r, err_r, None)
        }
    };
    let (id, mut events) = agent.register();
    let request = Request::Exec {
        id,
        argv: command.argv,
        env: command.env,
        cwd: command.cwd,
        out_of_reach: false,
        tty,
        user: command.user,
    };
    let sent = agent
        .send(&request, &theirs.each_ref().map(AsFd::as_fd))
        .await;
    drop(theirs);
    if let Err(e) = sent {
        agent.unregister(id);
        return Err(if agent.is_alive() {
            BackendError::io("send exec request", e)
        } else {
            BackendError::Gone
        });
    }
    let mut guard = KillOnDrop {
        agent: Arc::clone(agent),
        id,
        armed: true,
    };
    match events.recv().await {
        Some(ExecEvent::Started) => {}
        Some(ExecEvent::Failed(message)) => {
            guard.armed = false;
            return Err(BackendError::ExecFailed(message));
        }
        Some(ExecEvent::Exited(_)) | None => {
            guard.armed = false;
            return Err(BackendError::Gone);
        }
    }

    let sink: Sink = Arc::new(Mutex::new(Some(output)));
    let (out, input) = if tty {
        // A terminal master is no pipe but polls like one (it is non-blocking already).
        (
            pipe::Receiver::from_owned_fd_unchecked(out_r).map_err(io_error("open terminal"))?,
            pipe::Sender::from_owned_fd_unchecked(stdin_w).map_err(io_error("open terminal"))?,
        )
    } else {
        (
            pipe::Receiver::from_owned_fd(out_r).map_err(io_error("open stdout pipe"))?,
            pipe::Sender::from_owned_fd(stdin_w).map_err(io_error("open stdin pipe"))?,
        )
    };
    let err = pipe::Receiver::from_owned_fd(err_r).map_err(io_error("open stderr pipe"))?;
    let stdin: Stdin = Arc::new(Mutex::new(Some(input)));
    // Locked before anyone can see it: the first bytes on stdin are the request's.
    let first = Arc::clone(&stdin)
        .try_lock_owned()
        .expect("a new stdin is unlocked");
    let _unlist = Unlist {
        running,
        id: command.exec_id,
    };
    if let Some(exec_id) = command.exec_id {
        running.insert(
            exec_id,
            RunningExec {
                agent_id: id,
                stdin: Arc::clone(&stdin),
                terminal: master.clone(),
            },
        );
    }
    drop(stdin);
    let mut out_task = tokio::spawn(pump(out, OutputStream::Stdout, Arc::clone(&sink)));
    let mut err_task = tokio::spawn(pump(err, OutputStream::Stderr, Arc::clone(&sink)));
    let stdin_task = tokio::spawn(feed_first(first, command.stdin, command.interactive));

    let deadline = Instant::now() + command.timeout;
    let exit = match tokio::time::timeout_at(deadline, wait_exit(&mut events)).await {
        Ok(Some(code)) => Some(ExecExit {
            exit_code: code,
            timed_out: false,
        }),
        Ok(None) => None,
        Err(_elapsed) => {
            // The agent processes requests in order: the kill lands before any later exec.
            let _ = agent.send(&Request::Kill { id }, &[]).await;
            // SIGKILL normally lands at once; a process stuck in the kernel (D state) must
            // not pin the exec forever: after KILL_WAIT the timeout is reported anyway.
            let timed_out = ExecExit {
                exit_code: TIMEOUT_EXIT_CODE,
                timed_out: true,
            };
            match tokio::time::timeout(KILL_WAIT, wait_exit(&mut events)).await {
                Ok(Some(_)) => Some(timed_out),
                Ok(None) => None,
                Err(_) => {
                    tracing::warn!(
                        exec = id,
                        "exec did not exit after its kill; reporting the timeout"
                    );
                    Some(timed_out)
                }
            }
        }
    };
    guard.armed = false;
    stdin_task.abort();
    let Some(exit) = exit else {
        return Err(BackendError::Gone);
    };
    let drained = tokio::time::timeout(DRAIN_GRACE, async {
        let _ = (&mut out_task).await;
        let _ = (&mut err_task).await;
    })
    .await;
    if drained.is_err() {
        // Background processes hold the pipes: stop forwarding, keep draining detached.
        *sink.lock().await = None;
    }
    Ok(exit)
}

/// Waits for the exit code; `None` if the sandbox died first.
async fn wait_exit(events: &mut mpsc::UnboundedReceiver<ExecEvent>) -> Option<i32> {
    while let Some(event) = events.recv().await {
        if let ExecEvent::Exited(code) = event {
            return Some(code);
        }
    }
    None
}

/// Reads a pipe to its end, forwarding chunks while the exec still listens.
pub(crate) async fn pump(mut reader: pipe::Receiver, stream: OutputStream, sink: Sink) {
    let mut buf = vec![0u8; READ_CHUNK];
    loop {
        let n = match reader.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let guard = sink.lock().await;
        if let Some(tx) = guard.as_ref() {
            let chunk = OutputChunk {
                stream,
                data: Bytes::copy_from_slice(&buf[..n]),
            };
            // A gone receiver only means nobody reads the output; keep draining.
            let _ = tx.send(chunk).await;
        }
    }
}

/// Writes stdin (if any) and closes it.
pub(crate) async fn feed(mut writer: pipe::Sender, data: Option<Bytes>) {
    if let Some(data) = data {
        let _ = writer.write_all(&data).await;
    }
}

/// Writes the first stdin bytes (if any), then closes stdin unless `keep_open`.
async fn feed_first(
    mut stdin: tokio::sync::OwnedMutexGuard<Option<pipe::Sender>>,
    data: Option<Bytes>,
    keep_open: bool,
) {
    if let (Some(data), Some(writer)) = (data, stdin.as_mut()) {
        if writer.write_all(&data).await.is_err() {
            *stdin = None;
        }
    }
    if !keep_open {
        *stdin = None;
    }
}

/// Writes `content` into `file` (opened by the worker in the sandbox root) through a process
/// of the sandbox, so that the sandbox's memory cgroup pays for the pages: the bytes go
/// through a pipe to the init's copy process (see `Request::Copy`). At most `room` bytes are
/// written (the memory the sandbox has left, see `MemoryGauge::room`): a larger upload is
/// [`FilesError::TooLarge`], and the file is cut back to its length before the write, so the
/// memory is given back. Returns the bytes written.
pub(crate) async fn copy_in(
    agent: &Arc<AgentConn>,
    file: OwnedFd,
    mut content: BoxedReader,
    room: Option<u64>,
) -> Result<u64, FilesError> {
    let io = |op: &str| {
        let op = op.to_string();
        move |source: std::io::Error| FilesError::Io { op, source }
    };
    if !agent.is_alive() {
        return Err(FilesError::Gone);
    }
    // Kept to cut the file back if the write does not fit.
    let file = std::fs::File::from(file);
    let original_len = file.metadata().map(|m| m.len()).map_err(io("stat file"))?;
    let (read_end, write_end) =
        pipe_with(PipeFlags::CLOEXEC).map_err(|e| io("create pipe")(e.into()))?;
    let (id, mut events) = agent.register();
    let sent = agent
        .send(&Request::Copy { id }, &[read_end.as_fd(), file.as_fd()])
        .await;
    drop(read_end);
    if let Err(e) = sent {
        agent.unregister(id);
        return Err(io("send copy request")(e));
    }
    let mut guard = KillOnDrop {
        agent: Arc::clone(agent),
        id,
        armed: true,
    };
    match events.recv().await {
        Some(ExecEvent::Started) => {}
        Some(ExecEvent::Failed(message)) => {
            guard.armed = false;
            return Err(io("start copy")(std::io::Error::other(message)));
        }
        Some(ExecEvent::Exited(_)) | None => {
            guard.armed = false;
            return Err(FilesError::Gone);
        }
    }
    let mut writer = pipe::Sender::from_owned_fd(write_end).map_err(io("open pipe"))?;
    let mut written: u64 = 0;
    let mut buf = vec![0u8; READ_CHUNK];
    // Ends with None when the content was all handed over, else with why not.
    let stopped: Option<FilesError> = loop {
        let n = match content.read(&mut buf).await {
            Ok(0) => break None,
            Ok(n) => n,
            Err(e) => break Some(io("read upload")(e)),
        };
        if room.is_some_and(|room| written + n as u64 > room) {
            break Some(FilesError::TooLarge);
        }
        // A failed write of the pipe means the copy process stopped: its exit says why.
        if writer.write_all(&buf[..n]).await.is_err() {
            break None;
        }
        written += n as u64;
    };
    if stopped.is_some() {
        let _ = agent.send(&Request::Kill { id }, &[]).await;
    }
    drop(writer);
    let code = wait_exit(&mut events).await;
    guard.armed = false;
    let result = match (stopped, code) {
        (_, None) => Err(FilesError::Gone),
        (Some(err), _) => Err(err),
        (None, Some(0)) => Ok(written),
        // Out of space, or out of the sandbox's memory (the copy is the OOM victim).
        (None, Some(libc::ENOSPC | libc::EFBIG | libc::EDQUOT | libc::ENOMEM)) => {
            Err(FilesError::TooLarge)
        }
        (None, Some(code)) if code == 128 + libc::SIGKILL => Err(FilesError::TooLarge),
        (None, Some(code)) if code < 128 => {
            Err(io("write file")(std::io::Error::from_raw_os_error(code)))
        }
        (None, Some(code)) => Err(io("write file")(std::io::Error::other(format!(
            "copy ended by signal {}",
            code - 128
        )))),
    };
    if matches!(result, Err(FilesError::TooLarge)) {
        // Give the memory back: a replaced file ends empty, an appended one as it was.
        let _ = file.set_len(original_len);
    }
    result
}
