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
//! (no `python3`), died or stopped answering falls back to one-shot interpreters.
//!
//! # Nothing else in the sandbox can reach it
//!
//! The zygote holds the socket every later run's request (code, cwd, environment) and reply
//! go through, so it must not be reachable from sandbox code, which runs as the same uid:
//! - The agent starts it with real uid 1 and effective uid 0 (`out_of_reach`): at its
//!   execve the kernel sees the two differ and makes it non-dumpable, and `ptrace`,
//!   `pidfd_getfd`, `process_vm_readv` and `/proc/<pid>/{mem,fd,environ}` on it need
//!   `CAP_SYS_PTRACE` in the sandbox's user namespace (the real uids differ, and it is not
//!   dumpable), which sandbox root does not have. So it is out of reach from its first
//!   instruction, and execs and runs need not wait for it: a run that comes before it is
//!   warm goes one-shot. It also sets `PR_SET_DUMPABLE` 0 itself before it says `R`. Its run
//!   children switch back to uid 0 and stay non-dumpable: their memory is a copy of the
//!   zygote's (remnants of earlier requests included).
//! - The worker's end has `SO_PASSCRED`: every message carries its sender's pid, vouched
//!   for by the kernel. Only the zygote holds its end of the socket (nothing can take it from
//!   it), and the sender of `R` is pinned; a later message from any other process is taken as
//!   a takeover: the zygote is killed and no longer used. A zygote not warm within
//!   [`READY_WAIT`] is killed by its driver, in warm and cold sandboxes alike; the warm pool
//!   waits for `R` ([`Zygote::settle`]) so that a warm sandbox's first run is warm.
//! - Every wait for a reply is bounded (`code.rs`): a stopped zygote is killed and the
//!   sandbox's runs go one-shot.

use std::collections::HashMap;
use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustix::io::Errno;
use rustix::net::{
    recvmsg, sendmsg, socketpair, sockopt, AddressFamily, RecvAncillaryBuffer,
    RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer, SendAncillaryMessage, SendFlags,
    SocketFlags, SocketType,
};
use rustix::process::Pid;
use tokio::io::unix::AsyncFd;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use super::agent::{self, AgentConn, ExecEvent};
use super::protocol::Request;

/// The zygote program: the shared run bootstrap plus the serve loop.
pub(crate) const ZYGOTE_SCRIPT: &str = concat!(
    include_str!("../bootstrap/python_run.py"),
    include_str!("../bootstrap/python_status_fd3.py"),
    include_str!("python_zygote.py")
);

/// Largest run request the zygote reads (id, cwd and environment); larger ones run one-shot.
pub(crate) const MAX_REQUEST: usize = 256 * 1024;

/// How long the zygote has to become warm before it is killed and the sandbox goes on
/// without (runs are then one-shot).
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
    /// The zygote did not answer in time; it has been killed. The run did not start.
    Unresponsive,
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
    state: Arc<watch::Sender<ZygoteState>>,
    waiters: Waiters,
    next_id: AtomicU64,
    agent: Arc<AgentConn>,
    /// The agent's exec id of the zygote, to kill it with.
    exec_id: u64,
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
        // Every message from the zygote's end then carries its sender's pid.
        sockopt::set_socket_passcred(&ours, true)?;
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
            out_of_reach: true,
            user: None,
            tty: false,
        };
        let sent = agent
            .send(&request, &[theirs.as_fd(), null.as_fd(), null.as_fd()])
            .await;
        drop((theirs, null));
        if let Err(e) = sent {
            agent.unregister(id);
            return Err(e);
        }
        let state = Arc::new(watch::Sender::new(ZygoteState::Starting));
        let waiters: Waiters = Arc::default();
        let (stop_tx, stop_rx) = oneshot::channel();
        tokio::spawn(drive(
            Arc::clone(&sock),
            events,
            Arc::clone(&waiters),
            Arc::clone(&state),
            stop_rx,
            (Arc::clone(agent), id),
            Instant::now() + READY_WAIT,
        ));
        Ok(Self {
            sock,
            state,
            waiters,
            next_id: AtomicU64::new(1),
            agent: Arc::clone(agent),
            exec_id: id,
            _stop: stop_tx,
        })
    }

    /// The current state.
    pub(crate) fn state(&self) -> ZygoteState {
        *self.state.borrow()
    }

    /// Kills the zygote (runs it forked go on) and stops using it: later runs are one-shot.
    pub(crate) fn kill(&self) {
        mark_dead(&self.waiters, &self.state);
        self.agent.kill_now(self.exec_id);
    }

    /// Waits while the zygote is starting (its driver kills it when it is not warm within
    /// [`READY_WAIT`]): once this returned, the zygote is unreachable from sandbox code or no
    /// longer used. True when it is ready.
    pub(crate) async fn settle(&self) -> bool {
        let mut state = self.state.subscribe();
        state
            .wait_for(|s| *s != ZygoteState::Starting)
            .await
            .map(|s| *s == ZygoteState::Ready)
            .unwrap_or(false)
    }

    /// Sends a run request with its four fds (stdin, stdout, stderr, status) and waits for
    /// the fork, until `until` at most (then the zygote is killed). Returns the child's pid
    /// (also its process group) and the channel its exit arrives on; the channel closes
    /// without an event if the zygote dies first.
    pub(crate) async fn start_run(
        &self,
        cwd: &str,
        env: &[(String, String)],
        fds: [BorrowedFd<'_>; 4],
        until: Instant,
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
        let pid = match tokio::time::timeout_at(until, replies.recv()).await {
            Ok(Some(Reply::Started(pid))) => pid,
            Ok(Some(Reply::Failed(message))) => return Err(StartError::Failed(message)),
            // Died before forking (or forked a child that reads an empty program, since the
            // caller feeds stdin only after this returns): safe to run one-shot instead.
            Ok(Some(Reply::Exited(_)) | None) => return Err(StartError::Unavailable),
            Err(_elapsed) => {
                tracing::warn!("python zygote did not answer a run request; killed");
                self.kill();
                return Err(StartError::Unresponsive);
            }
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

/// One message from the zygote's end.
struct Received {
    len: usize,
    /// Its sender, in the worker's pid namespace, as the kernel saw it.
    sender: Option<Pid>,
}

/// Receives one reply; `Ok(None)` when the zygote closed its end.
async fn recv(sock: &AsyncFd<OwnedFd>, buf: &mut [u8]) -> io::Result<Option<Received>> {
    loop {
        let mut guard = sock.readable().await?;
        let got = guard.try_io(|inner| {
            let mut space =
                [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmCredentials(1), ScmRights(4))];
            let mut control = RecvAncillaryBuffer::new(&mut space);
            let len = loop {
                match recvmsg(
                    inner.get_ref().as_fd(),
                    &mut [IoSliceMut::new(buf)],
                    &mut control,
                    RecvFlags::DONTWAIT | RecvFlags::CMSG_CLOEXEC,
                ) {
                    Ok(r) => break r.bytes,
                    Err(Errno::INTR) => continue,
                    Err(e) => return Err(io::Error::from(e)),
                }
            };
            let mut sender = None;
            // Fds nobody asked for are closed here.
            for message in control.drain() {
                if let RecvAncillaryMessage::ScmCredentials(creds) = message {
                    sender = Some(creds.pid);
                }
            }
            Ok(Received { len, sender })
        });
        match got {
            Ok(Ok(Received { len: 0, .. })) => return Ok(None),
            Ok(Ok(received)) => return Ok(Some(received)),
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
/// ends, the [`Zygote`] is dropped, or it is not warm by `ready_by`. A zygote no longer
/// followed is killed.
async fn drive(
    sock: Arc<AsyncFd<OwnedFd>>,
    mut exec_events: mpsc::UnboundedReceiver<ExecEvent>,
    waiters: Waiters,
    state: Arc<watch::Sender<ZygoteState>>,
    mut stop: oneshot::Receiver<()>,
    (agent, exec_id): (Arc<AgentConn>, u64),
    ready_by: Instant,
) {
    let started = matches!(
        tokio::time::timeout_at(ready_by, exec_events.recv()).await,
        Ok(Some(ExecEvent::Started))
    );
    if started {
        serve(
            &sock,
            &mut exec_events,
            &waiters,
            &state,
            &mut stop,
            ready_by,
        )
        .await;
        agent.kill_now(exec_id);
    } else {
        tracing::debug!("python zygote did not start; runs use one-shot interpreters");
    }
    mark_dead(&waiters, &state);
}

/// Marks the zygote dead and drops every waiter, under the lock `start_run` registers with,
/// so that no waiter is left behind.
fn mark_dead(waiters: &Waiters, state: &watch::Sender<ZygoteState>) {
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
    ready_by: Instant,
) {
    let mut buf = vec![0u8; 4096];
    // The zygote's pid as this process sees it, from its `R`: only it may send afterwards.
    let mut zygote: Option<Pid> = None;
    loop {
        let got = tokio::select! {
            _ = &mut *stop => break,
            _ = tokio::time::sleep_until(ready_by), if zygote.is_none() => {
                tracing::warn!("python zygote not warm in time; killed");
                break;
            }
            event = exec_events.recv() => {
                tracing::debug!(?event, "python zygote exited");
                break;
            }
            got = recv(sock, &mut buf) => got,
        };
        let (n, sender) = match got {
            Ok(Some(Received { len, sender })) => (len, sender),
            Ok(None) | Err(_) => break,
        };
        match zygote {
            None if &buf[..n] == b"R" && sender.is_some() => {
                zygote = sender;
                state.send_replace(ZygoteState::Ready);
                continue;
            }
            Some(pid) if sender == Some(pid) => {}
            _ => {
                tracing::warn!(
                    sender = sender.map(|pid| pid.as_raw_nonzero().get()),
                    "python zygote's socket used by another process; no longer used"
                );
                break;
            }
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

    /// A zygote that never says `R` is given up at its deadline, whoever waits for it.
    #[tokio::test]
    async fn a_zygote_not_warm_by_its_deadline_is_given_up() {
        let (ours, _theirs) = socketpair(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
            None,
        )
        .unwrap();
        let sock = agent::register(ours).unwrap();
        let (_exec_tx, mut exec_events) = mpsc::unbounded_channel();
        let waiters: Waiters = Arc::default();
        let state = watch::Sender::new(ZygoteState::Starting);
        let (_stop_tx, mut stop) = oneshot::channel();
        let ready_by = Instant::now() + Duration::from_millis(50);
        let served = tokio::time::timeout(
            Duration::from_secs(5),
            serve(
                &sock,
                &mut exec_events,
                &waiters,
                &state,
                &mut stop,
                ready_by,
            ),
        )
        .await;
        assert!(
            served.is_ok(),
            "still waiting for the zygote after its deadline"
        );
        assert_eq!(*state.borrow(), ZygoteState::Starting, "never ready");
    }

    /// Replies on the zygote's socket count only from the process that said `R`: one sent
    /// by another process holding the socket ends the zygote's use.
    #[tokio::test]
    async fn replies_from_another_process_are_refused() {
        let (ours, theirs) = socketpair(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
            None,
        )
        .unwrap();
        sockopt::set_socket_passcred(&ours, true).unwrap();
        let sock = agent::register(ours).unwrap();
        let (_exec_tx, mut exec_events) = mpsc::unbounded_channel();
        let waiters: Waiters = Arc::default();
        let (reply_tx, mut replies) = mpsc::unbounded_channel();
        waiters.lock().unwrap().insert(1, reply_tx);
        let state = watch::Sender::new(ZygoteState::Starting);
        let (_stop_tx, mut stop) = oneshot::channel();

        // This process plays the zygote: its `R` and its replies are taken.
        let say = |message: &[u8]| {
            rustix::net::send(&theirs, message, SendFlags::empty()).unwrap();
        };
        say(b"R");
        say(b"S 1 41");
        let ready_by = Instant::now() + READY_WAIT;
        let serving = serve(
            &sock,
            &mut exec_events,
            &waiters,
            &state,
            &mut stop,
            ready_by,
        );
        tokio::pin!(serving);
        tokio::select! {
            () = &mut serving => panic!("stopped serving"),
            reply = replies.recv() => assert!(matches!(reply, Some(Reply::Started(41)))),
        }
        assert_eq!(*state.borrow(), ZygoteState::Ready);

        // Another process with the socket forges the run's exit.
        let forger = std::process::Command::new("python3")
            .args([
                "-c",
                "import socket; socket.socket(fileno=0).send(b'E 1 0')",
            ])
            .stdin(std::process::Stdio::from(theirs.try_clone().unwrap()))
            .status();
        match forger {
            Ok(status) => assert!(status.success()),
            Err(e) => {
                eprintln!("skipping: no python3 to forge a reply with: {e}");
                return;
            }
        }
        tokio::time::timeout(Duration::from_secs(30), &mut serving)
            .await
            .expect("still serving after a forged reply");
        waiters.lock().unwrap().clear();
        assert!(replies.recv().await.is_none(), "forged reply delivered");
    }

    #[test]
    fn script_defines_both_halves() {
        assert!(ZYGOTE_SCRIPT.contains("def _run():"));
        assert!(ZYGOTE_SCRIPT.trim_end().ends_with("_serve()"));
    }
}
