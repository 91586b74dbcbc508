//! The warm Python zygote of a sandbox, worker side.
//!
//! When a sandbox is provisioned the worker starts, through the agent, one
//! `python3 -I -S -c <python_run.py + python_zygote.py>` inside it, whose stdin is a
//! `SOCK_SEQPACKET` socket shared with the worker. It pre-warms `compile`, says `R`, and then
//! forks one child per run request: the child takes the request's stdin/stdout/stderr/status
//! pipes (passed with `SCM_RIGHTS`), its cwd and environment, starts its own session and runs
//! the same bootstrap as a one-shot run. The zygote reports the child's pid (`S`), a failure
//! before the fork (`F`) and its exit code (`E`). Runs are killed through the agent
//! (`KillGroup`), so a zygote killed by user code cannot keep a timeout from working.
//!
//! Fork per run means no state is shared between runs. A sandbox whose zygote cannot start
//! (no `python3`) or died falls back to one-shot interpreters.

use std::collections::HashMap;
use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustix::io::Errno;
use rustix::net::{
    recvmsg, sendmsg, socketpair, AddressFamily, RecvAncillaryBuffer, RecvFlags,
    SendAncillaryBuffer, SendAncillaryMessage, SendFlags, SocketFlags, SocketType,
};
use tokio::io::unix::AsyncFd;
use tokio::sync::{mpsc, oneshot, watch};

use super::agent::{self, AgentConn, ExecEvent};
use super::protocol::Request;

/// The zygote program: the shared run bootstrap plus the serve loop.
pub(crate) const ZYGOTE_SCRIPT: &str = concat!(
    include_str!("python_run.py"),
    include_str!("python_zygote.py")
);

/// Largest run request the zygote reads (id, cwd and environment); larger ones run one-shot.
pub(crate) const MAX_REQUEST: usize = 256 * 1024;

/// How long a run waits for a zygote that is still starting before it runs one-shot.
pub(crate) const READY_WAIT: Duration = Duration::from_secs(5);

/// Where the zygote is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ZygoteState {
    /// Started, not warm yet.
    Starting,
    /// Serving runs.
    Ready,
    /// Could not start, or exited.
    Dead,
}

/// What happens to one run, as the zygote reports it after the fork.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RunEvent {
    /// The run's child ended with this code (128 + signal when killed).
    Exited(i32),
}

/// Why a run could not start through the zygote.
#[derive(Debug)]
pub(crate) enum StartError {
    /// The zygote is not usable (dead, too large a request, ...): run one-shot instead.
    Unavailable,
    /// The run itself cannot start (e.g. its working directory is missing).
    Failed(String),
}

/// A reply the zygote sends for one run.
enum Reply {
    Started(i32),
    Failed(String),
    Exited(i32),
}

type Waiters = Arc<Mutex<HashMap<u64, mpsc::UnboundedSender<Reply>>>>;

/// A sandbox's zygote, as the worker sees it.
pub(crate) struct Zygote {
    sock: Arc<AsyncFd<OwnedFd>>,
    state: watch::Receiver<ZygoteState>,
    waiters: Waiters,
    next_id: AtomicU64,
    /// Dropping it stops the driver task.
    _stop: oneshot::Sender<()>,
}

impl Zygote {
    /// Asks the agent to start the zygote and returns at once; it becomes ready in the
    /// background (about as long as one interpreter start).
    pub(crate) async fn start(
        agent: &Arc<AgentConn>,
        env: Vec<(String, String)>,
    ) -> io::Result<Self> {
        let (ours, theirs) = socketpair(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
            None,
        )?;
        // The zygote's end is its stdin and must block.
        rustix::fs::fcntl_setfl(&theirs, rustix::fs::OFlags::RDWR)?;
        let null = OwnedFd::from(std::fs::File::options().write(true).open("/dev/null")?);
        let sock = Arc::new(agent::register(ours)?);
        let (id, events) = agent.register();
        let request = Request::Exec {
            id,
            argv: ["python3", "-I", "-S", "-c", ZYGOTE_SCRIPT]
                .map(str::to_string)
                .to_vec(),
            env,
            cwd: "/".to_string(),
        };
        let sent = agent
            .send(&request, &[theirs.as_fd(), null.as_fd(), null.as_fd()])
            .await;
        drop((theirs, null));
        if let Err(e) = sent {
            agent.unregister(id);
            return Err(e);
        }
        let (state_tx, state) = watch::channel(ZygoteState::Starting);
        let waiters: Waiters = Arc::default();
        let (stop_tx, stop_rx) = oneshot::channel();
        tokio::spawn(drive(
            Arc::clone(&sock),
            events,
            Arc::clone(&waiters),
            state_tx,
            stop_rx,
        ));
        Ok(Self {
            sock,
            state,
            waiters,
            next_id: AtomicU64::new(1),
            _stop: stop_tx,
        })
    }

    /// The current state.
    pub(crate) fn state(&self) -> ZygoteState {
        *self.state.borrow()
    }

    /// Waits (bounded) while the zygote is starting; true once it is ready.
    pub(crate) async fn wait_ready(&self, limit: Duration) -> bool {
        let mut state = self.state.clone();
        let ready = async move {
            state
                .wait_for(|s| *s != ZygoteState::Starting)
                .await
                .map(|s| *s == ZygoteState::Ready)
                .unwrap_or(false)
        };
        tokio::time::timeout(limit.min(READY_WAIT), ready)
            .await
            .unwrap_or(false)
    }

    /// Sends a run request with its four fds (stdin, stdout, stderr, status) and waits for
    /// the fork. Returns the child's pid (also its process group) and the channel its exit
    /// arrives on; the channel closes without an event if the zygote dies first.
    pub(crate) async fn start_run(
        &self,
        cwd: &str,
        env: &[(String, String)],
        fds: [BorrowedFd<'_>; 4],
    ) -> Result<(i32, mpsc::UnboundedReceiver<RunEvent>), StartError> {
        if self.state() != ZygoteState::Ready {
            return Err(StartError::Unavailable);
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut message = format!("{id}\0{cwd}").into_bytes();
        for (k, v) in env {
            if k.is_empty() || k.contains('=') || k.contains('\0') || v.contains('\0') {
                // Let the agent's path report the bad variable.
                return Err(StartError::Unavailable);
            }
            message.push(0);
            message.extend_from_slice(k.as_bytes());
            message.push(b'=');
            message.extend_from_slice(v.as_bytes());
        }
        if cwd.contains('\0') || message.len() > MAX_REQUEST {
            return Err(StartError::Unavailable);
        }
        let (tx, mut replies) = mpsc::unbounded_channel();
        {
            let mut waiters = self.waiters.lock().expect("waiters lock");
            if self.state() != ZygoteState::Ready {
                return Err(StartError::Unavailable);
            }
            waiters.insert(id, tx);
        }
        if send(&self.sock, &message, &fds).await.is_err() {
            self.waiters.lock().expect("waiters lock").remove(&id);
            return Err(StartError::Unavailable);
        }
        let pid = match replies.recv().await {
            Some(Reply::Started(pid)) => pid,
            Some(Reply::Failed(message)) => return Err(StartError::Failed(message)),
            // Died before forking (or forked a child that reads an empty program, since the
            // caller feeds stdin only after this returns): safe to run one-shot instead.
            Some(Reply::Exited(_)) | None => return Err(StartError::Unavailable),
        };
        let (events_tx, events) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some(reply) = replies.recv().await {
                if let Reply::Exited(code) = reply {
                    let _ = events_tx.send(RunEvent::Exited(code));
                    return;
                }
            }
        });
        Ok((pid, events))
    }
}

/// Sends one request with its fds on the non-blocking socket, waiting for room.
async fn send(sock: &AsyncFd<OwnedFd>, message: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    loop {
        let mut guard = sock.writable().await?;
        let sent = guard.try_io(|inner| {
            let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(4))];
            let mut control = SendAncillaryBuffer::new(&mut space);
            if !control.push(SendAncillaryMessage::ScmRights(fds)) {
                return Err(io::Error::new(io::ErrorKind::InvalidInput, "too many fds"));
            }
            loop {
                match sendmsg(
                    inner.get_ref().as_fd(),
                    &[IoSlice::new(message)],
                    &mut control,
                    SendFlags::NOSIGNAL | SendFlags::DONTWAIT,
                ) {
                    Ok(_) => return Ok(()),
                    Err(Errno::INTR) => continue,
                    Err(e) => return Err(e.into()),
                }
            }
        });
        match sent {
            Ok(result) => return result,
            Err(_would_block) => continue,
        }
    }
}

/// Receives one reply; `Ok(None)` when the zygote closed its end.
async fn recv(sock: &AsyncFd<OwnedFd>, buf: &mut [u8]) -> io::Result<Option<usize>> {
    loop {
        let mut guard = sock.readable().await?;
        let got = guard.try_io(|inner| {
            let mut control = RecvAncillaryBuffer::new(&mut []);
            loop {
                match recvmsg(
                    inner.get_ref().as_fd(),
                    &mut [IoSliceMut::new(buf)],
                    &mut control,
                    RecvFlags::DONTWAIT | RecvFlags::CMSG_CLOEXEC,
                ) {
                    Ok(r) => return Ok(r.bytes),
                    Err(Errno::INTR) => continue,
                    Err(e) => return Err(io::Error::from(e)),
                }
            }
        });
        match got {
            Ok(Ok(0)) => return Ok(None),
            Ok(Ok(n)) => return Ok(Some(n)),
            Ok(Err(e)) => return Err(e),
            Err(_would_block) => continue,
        }
    }
}

/// Parses `R`, `S id pid`, `F id message` or `E id code`.
fn parse(raw: &[u8]) -> Option<(u64, Reply)> {
    let text = std::str::from_utf8(raw).ok()?;
    let mut parts = text.splitn(3, ' ');
    let kind = parts.next()?;
    let id = parts.next()?.parse().ok()?;
    let rest = parts.next()?;
    let reply = match kind {
        "S" => Reply::Started(rest.parse().ok()?),
        "F" => Reply::Failed(rest.to_string()),
        "E" => Reply::Exited(rest.parse().ok()?),
        _ => return None,
    };
    Some((id, reply))
}

/// Follows the zygote: its start (or failure), then its replies, until it or the sandbox
/// ends or the [`Zygote`] is dropped.
async fn drive(
    sock: Arc<AsyncFd<OwnedFd>>,
    mut exec_events: mpsc::UnboundedReceiver<ExecEvent>,
    waiters: Waiters,
    state: watch::Sender<ZygoteState>,
    mut stop: oneshot::Receiver<()>,
) {
    let started = matches!(exec_events.recv().await, Some(ExecEvent::Started));
    if started {
        serve(&sock, &mut exec_events, &waiters, &state, &mut stop).await;
    } else {
        tracing::debug!("python zygote did not start; runs use one-shot interpreters");
    }
    // Under the lock start_run registers with, so no waiter is left behind.
    let mut map = waiters.lock().expect("waiters lock");
    state.send_replace(ZygoteState::Dead);
    map.clear();
}

/// Routes the zygote's replies until it, or the sandbox, ends or the driver is stopped.
async fn serve(
    sock: &AsyncFd<OwnedFd>,
    exec_events: &mut mpsc::UnboundedReceiver<ExecEvent>,
    waiters: &Waiters,
    state: &watch::Sender<ZygoteState>,
    stop: &mut oneshot::Receiver<()>,
) {
    let mut buf = vec![0u8; 4096];
    loop {
        let got = tokio::select! {
            _ = &mut *stop => break,
            event = exec_events.recv() => {
                tracing::debug!(?event, "python zygote exited");
                break;
            }
            got = recv(sock, &mut buf) => got,
        };
        let n = match got {
            Ok(Some(n)) => n,
            Ok(None) | Err(_) => break,
        };
        if &buf[..n] == b"R" {
            state.send_replace(ZygoteState::Ready);
            continue;
        }
        let Some((id, reply)) = parse(&buf[..n]) else {
            tracing::warn!("python zygote sent an unexpected reply; no longer used");
            break;
        };
        let mut map = waiters.lock().expect("waiters lock");
        let done = matches!(reply, Reply::Exited(_) | Reply::Failed(_));
        if let Some(tx) = map.get(&id) {
            let _ = tx.send(reply);
        }
        if done {
            map.remove(&id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_replies() {
        assert!(matches!(parse(b"S 3 41"), Some((3, Reply::Started(41)))));
        assert!(matches!(parse(b"E 3 137"), Some((3, Reply::Exited(137)))));
        match parse(b"F 9 working directory /x: No such file or directory (os error 2)") {
            Some((9, Reply::Failed(m))) => assert!(m.starts_with("working directory /x: ")),
            _ => panic!("failure reply not parsed"),
        }
        assert!(parse(b"R").is_none());
        assert!(parse(b"X 1 2").is_none());
        assert!(parse(b"S x 2").is_none());
    }

    #[test]
    fn script_defines_both_halves() {
        assert!(ZYGOTE_SCRIPT.contains("def _run():"));
        assert!(ZYGOTE_SCRIPT.trim_end().ends_with("_serve()"));
    }
}
