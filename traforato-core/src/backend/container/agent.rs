//! The worker's end of a sandbox init's control socket: async send/receive, and a reader task
//! that routes each exec's events to whoever waits for them.
#![allow(unsafe_code)]

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::unix::AsyncFd;
use tokio::sync::{mpsc, oneshot};

use super::protocol::{self, Event, Request, MAX_EVENT};

/// What happens to one exec, as the init reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ExecEvent {
    /// The command runs.
    Started,
    /// It could not start.
    Failed(String),
    /// It ended with this code (128 + signal when killed).
    Exited(i32),
}

/// Registers the worker's (non-blocking) end of a control socket with the reactor.
pub(crate) fn register(sock: OwnedFd) -> io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: an `OwnedFd` is an open descriptor that only its owner closes, and its
    // `as_raw_fd` always returns that same descriptor; the `AsyncFd` owns it until dropped.
    unsafe { AsyncFd::register(sock) }.map_err(io::Error::from)
}

/// Sends a message on the non-blocking socket, waiting for room.
pub(crate) async fn send(
    sock: &AsyncFd<OwnedFd>,
    message: &Request,
    fds: &[BorrowedFd<'_>],
) -> io::Result<()> {
    loop {
        let mut guard = sock.writable().await?;
        match guard.try_io(|inner| protocol::send(inner.get_ref().as_fd(), message, fds, true)) {
            Ok(result) => return result,
            Err(_would_block) => continue,
        }
    }
}

/// Receives one event; `Ok(None)` when the init closed its end.
pub(crate) async fn recv(sock: &AsyncFd<OwnedFd>) -> io::Result<Option<Event>> {
    let mut buf = vec![0u8; MAX_EVENT];
    loop {
        let mut guard = sock.readable().await?;
        let got = guard.try_io(|inner| {
            protocol::recv::<Event>(inner.get_ref().as_fd(), &mut buf, false, true)
        });
        match got {
            Ok(result) => return result.map(|m| m.map(|(event, _)| event)),
            Err(_would_block) => continue,
        }
    }
}

type Waiters = Arc<Mutex<HashMap<u64, mpsc::UnboundedSender<ExecEvent>>>>;

/// A connected, ready sandbox init.
pub(crate) struct AgentConn {
    sock: Arc<AsyncFd<OwnedFd>>,
    waiters: Waiters,
    alive: Arc<AtomicBool>,
    next_id: AtomicU64,
    /// Dropping it stops the reader task (and so closes the socket, which ends the sandbox).
    _stop: oneshot::Sender<()>,
}

impl AgentConn {
    /// Starts the reader task over a socket whose setup handshake is done.
    pub(crate) fn start(sock: AsyncFd<OwnedFd>) -> Self {
        let sock = Arc::new(sock);
        let waiters: Waiters = Arc::default();
        let alive = Arc::new(AtomicBool::new(true));
        let (stop_tx, stop_rx) = oneshot::channel();
        tokio::spawn(read_events(
            Arc::clone(&sock),
            Arc::clone(&waiters),
            Arc::clone(&alive),
            stop_rx,
        ));
        Self {
            sock,
            waiters,
            alive,
            next_id: AtomicU64::new(1),
            _stop: stop_tx,
        }
    }

    /// False once the init is gone.
    pub(crate) fn is_alive(&self) -> bool {
        self.alive.load(Ordering::Acquire)
    }

    /// Reserves an exec id and the channel its events arrive on. The channel closes without
    /// `Exited` if the sandbox dies.
    pub(crate) fn register(&self) -> (u64, mpsc::UnboundedReceiver<ExecEvent>) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::unbounded_channel();
        // Checked under the lock the reader clears the map with, so no waiter is left behind.
        let mut waiters = self.waiters.lock().expect("waiters lock");
        if self.is_alive() {
            waiters.insert(id, tx);
        }
        (id, rx)
    }

    /// Forgets an exec's channel.
    pub(crate) fn unregister(&self, id: u64) {
        self.waiters.lock().expect("waiters lock").remove(&id);
    }

    /// Sends a request.
    pub(crate) async fn send(&self, message: &Request, fds: &[BorrowedFd<'_>]) -> io::Result<()> {
        send(&self.sock, message, fds).await
    }

    /// Asks the init to SIGKILL a process group by id without waiting (for drop paths).
    pub(crate) fn kill_group_now(&self, pgid: i32) {
        let _ = protocol::send(
            self.sock.get_ref().as_fd(),
            &Request::KillGroup { pgid },
            &[],
            true,
        );
    }

    /// Asks the init to SIGKILL an exec's process group without waiting (for drop paths).
    pub(crate) fn kill_now(&self, id: u64) {
        let _ = protocol::send(
            self.sock.get_ref().as_fd(),
            &Request::Kill { id },
            &[],
            true,
        );
    }
}

async fn read_events(
    sock: Arc<AsyncFd<OwnedFd>>,
    waiters: Waiters,
    alive: Arc<AtomicBool>,
    mut stop: oneshot::Receiver<()>,
) {
    loop {
        let event = tokio::select! {
            _ = &mut stop => break,
            event = recv(&sock) => event,
        };
        let (id, exec_event) = match event {
            Ok(Some(Event::Started { id })) => (id, ExecEvent::Started),
            Ok(Some(Event::ExecFailed { id, message })) => (id, ExecEvent::Failed(message)),
            Ok(Some(Event::Exited { id, code })) => (id, ExecEvent::Exited(code)),
            Ok(Some(_)) => continue,
            Ok(None) | Err(_) => break,
        };
        let mut map = waiters.lock().expect("waiters lock");
        let done = matches!(exec_event, ExecEvent::Exited(_) | ExecEvent::Failed(_));
        if let Some(tx) = map.get(&id) {
            let _ = tx.send(exec_event);
        }
        if done {
            map.remove(&id);
        }
    }
    // Dropping the senders tells every waiter the sandbox is gone.
    let mut map = waiters.lock().expect("waiters lock");
    alive.store(false, Ordering::Release);
    map.clear();
}
