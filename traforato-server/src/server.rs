//! The accept loop shared by the shells (HTTP/1.1 over hyper-util with a read-header timeout
//! and graceful shutdown), and the shutdown plumbing: a cloneable [`Shutdown`] future and the
//! process's SIGINT/SIGTERM signal.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::Request;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use traforato_core::auth::AuthMode;
use traforato_core::worker::Worker;

use crate::http::{error_chain, HttpResponse};
use crate::linger::{self, Drained, Leftover, RequestBody, DRAIN_MAX, DRAIN_TIMEOUT};
use crate::ServeError;

/// How long a client may take to send a request's headers.
pub const READ_HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// How long in-flight requests may run after shutdown was requested.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Pause after a failed `accept` (e.g. out of file descriptors) before trying again.
const ACCEPT_RETRY_DELAY: Duration = Duration::from_millis(100);

/// A cloneable view of a shutdown request; [`Shutdown::wait`] completes once it is triggered.
#[derive(Debug, Clone)]
pub struct Shutdown {
    rx: watch::Receiver<bool>,
}

/// Triggers every [`Shutdown`] made from the same channel. Dropping it triggers them too.
#[derive(Debug)]
pub struct ShutdownTrigger {
    tx: watch::Sender<bool>,
}

/// A new trigger and its first [`Shutdown`] view.
pub fn shutdown_channel() -> (ShutdownTrigger, Shutdown) {
    let (tx, rx) = watch::channel(false);
    (ShutdownTrigger { tx }, Shutdown { rx })
}

impl ShutdownTrigger {
    /// Requests shutdown.
    pub fn trigger(&self) {
        let _ = self.tx.send(true);
    }

    /// Another view of this trigger.
    pub fn subscribe(&self) -> Shutdown {
        Shutdown {
            rx: self.tx.subscribe(),
        }
    }
}

impl Shutdown {
    /// Completes once shutdown has been requested (or the trigger is gone).
    pub async fn wait(mut self) {
        let _ = self.rx.wait_for(|requested| *requested).await;
    }

    /// True once shutdown has been requested.
    pub fn is_triggered(&self) -> bool {
        *self.rx.borrow()
    }
}

/// Completes on SIGINT or SIGTERM (Ctrl-C on other platforms).
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(err) => {
                tracing::warn!(error = %err, "cannot listen for SIGTERM; only SIGINT stops the process");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// A shutdown channel that SIGINT or SIGTERM also triggers (for binaries; needs a runtime).
pub fn shutdown_on_signal() -> (Arc<ShutdownTrigger>, Shutdown) {
    let (trigger, shutdown) = shutdown_channel();
    let trigger = Arc::new(trigger);
    let on_signal = trigger.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        on_signal.trigger();
    });
    (trigger, shutdown)
}

/// Drains `worker` ([`Worker::drain`]) when the process gets SIGUSR1: `kill -USR1`,
/// `docker kill -s USR1`, `systemctl kill -s USR1 traforato-worker`. It then takes no new
/// sandbox and serves its live ones until they end; stop it once they have.
pub fn drain_on_signal(worker: Arc<Worker>) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        // Installed here, not in the task: from this call on SIGUSR1 no longer kills.
        match signal(SignalKind::user_defined1()) {
            Ok(mut usr1) => {
                tokio::spawn(async move {
                    while usr1.recv().await.is_some() {
                        let live = worker.drain().await;
                        tracing::info!(live_sandboxes = live, "SIGUSR1: worker draining");
                    }
                });
            }
            Err(err) => {
                tracing::warn!(error = %err, "cannot listen for SIGUSR1: no draining by signal");
            }
        }
    }
    #[cfg(not(unix))]
    let _ = worker;
}

/// Logs how far a service's listen address is exposed when it runs without authentication
/// (development mode): loopback only, or, with `--insecure-dev-mode-on-network`, a loud
/// warning. Prod mode logs nothing here.
pub fn log_listen_exposure(service: &str, listen: &str, mode: AuthMode, allow_network: bool) {
    if mode.is_prod() {
        return;
    }
    if crate::config::check_exposure(listen, mode, false).is_ok() {
        tracing::info!(
            service,
            listen,
            "development mode listens on loopback only; set TRAFORATO_JWT_SECRET (prod mode) to serve other hosts"
        );
    } else if allow_network {
        tracing::warn!(
            service,
            listen,
            "INSECURE: development mode (no authentication) listening beyond loopback (--insecure-dev-mode-on-network): anyone who can reach this port can run code in sandboxes"
        );
    }
}

/// Descriptors a worker process needs beside its sandboxes (listeners, connections, logs).
const BASE_OPEN_FILES: u64 = 256;

/// Descriptors one live sandbox holds in the worker (control socket, root, network
/// namespace, pipes of its running commands), with room to spare.
const OPEN_FILES_PER_SANDBOX: u64 = 8;

/// Raises the process's open-file limit to what `sandboxes` live sandboxes need (raising the
/// hard limit too where the process may), and refuses to run when it cannot: running out of
/// descriptors mid-flight fails creates and connections in confusing ways. Returns the limit.
pub fn ensure_open_file_limit(sandboxes: u32) -> Result<u64, ServeError> {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let needed = BASE_OPEN_FILES + u64::from(sandboxes) * OPEN_FILES_PER_SANDBOX;
    let current = getrlimit(Resource::Nofile);
    let soft = current.current.unwrap_or(u64::MAX);
    if soft >= needed {
        return Ok(soft);
    }
    let hard = current.maximum.unwrap_or(u64::MAX);
    // The hard limit may only grow with CAP_SYS_RESOURCE (the container backend runs as root).
    let wanted = Rlimit {
        current: Some(needed),
        maximum: Some(hard.max(needed)),
    };
    if setrlimit(Resource::Nofile, wanted).is_ok() {
        return Ok(needed);
    }
    Err(ServeError::OpenFileLimit {
        limit: soft,
        needed,
        sandboxes,
    })
}

/// Binds a listener on `addr` (a resolved address, see `config::bind_address`).
pub async fn bind(addr: &str) -> Result<TcpListener, ServeError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind {
            addr: addr.to_string(),
            source,
        })
}

/// A binary's `main` after argument parsing: runs `run` on a multi-threaded runtime and maps
/// an error to `<service>: <error chain>` on stderr and exit code 1.
pub fn run_to_exit(service: &str, run: impl Future<Output = Result<(), ServeError>>) -> ExitCode {
    let result = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime.block_on(run),
        Err(err) => Err(ServeError::Runtime(err)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("{service}: {}", error_chain(&err));
            ExitCode::from(1)
        }
    }
}

/// What a handler knows about the connection a request came on.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// The client's address.
    pub peer: SocketAddr,
    /// The address the request was accepted on.
    pub local: SocketAddr,
    /// The server's shutdown, for work that outlives the request (proxied upgrades).
    pub shutdown: Shutdown,
}

/// Accepts connections on `listener` and serves each request with `handler` until `shutdown`
/// completes; then stops accepting, lets in-flight requests finish for [`SHUTDOWN_GRACE`] and
/// closes what is left.
pub(crate) async fn serve<F, Fut>(
    listener: TcpListener,
    handler: F,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()>
where
    F: Fn(Request<RequestBody>, ConnInfo) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = HttpResponse> + Send + 'static,
{
    let local = listener.local_addr()?;
    tracing::info!(addr = %local, "listening");
    let (trigger, conn_shutdown) = shutdown_channel();
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        while connections.try_join_next().is_some() {}
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    tracing::warn!(error = %err, "accept failed");
                    tokio::time::sleep(ACCEPT_RETRY_DELAY).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let info = ConnInfo {
            peer,
            local,
            shutdown: conn_shutdown.clone(),
        };
        let handler = handler.clone();
        connections.spawn(serve_connection(stream, info, handler));
    }
    tracing::info!(addr = %local, "shutdown requested");
    drop(listener);
    trigger.trigger();
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            open = connections.len(),
            "grace period over, closing remaining connections"
        );
        connections.shutdown().await;
    }
    Ok(())
}

async fn serve_connection<F, Fut>(stream: tokio::net::TcpStream, info: ConnInfo, handler: F)
where
    F: Fn(Request<RequestBody>, ConnInfo) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = HttpResponse> + Send + 'static,
{
    let shutdown = info.shutdown.clone();
    let peer = info.peer;
    let service = service_fn(move |req: Request<hyper::body::Incoming>| {
        let handler = handler.clone();
        let info = info.clone();
        async move {
            let drain = linger::should_drain(req.headers());
            let leftover = Leftover::default();
            let (parts, body) = req.into_parts();
            let resp = handler(Request::from_parts(parts, leftover.wrap(body)), info).await;
            // A body the handler left unread is read before the answer goes out (a
            // lingering close): a client that writes all of it first then reads the answer
            // instead of a reset. Not for a protocol switch: the connection is handed over.
            if let Some(rest) = leftover.take() {
                if drain && resp.status() != hyper::StatusCode::SWITCHING_PROTOCOLS {
                    let drained = linger::drain(rest, DRAIN_MAX, DRAIN_TIMEOUT).await;
                    if drained != Drained::Complete {
                        tracing::debug!(peer = %peer, ?drained, "unread request body not drained; the connection will close");
                    }
                }
            }
            Ok::<_, Infallible>(resp)
        }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(READ_HEADER_TIMEOUT)
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    tokio::pin!(conn);
    let stop = shutdown.wait();
    tokio::pin!(stop);
    let mut stopping = false;
    let result = loop {
        tokio::select! {
            result = conn.as_mut() => break result,
            _ = &mut stop, if !stopping => {
                stopping = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    };
    if let Err(err) = result {
        tracing::debug!(peer = %peer, error = %err, "connection ended with an error");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn shutdown_views_complete_once_triggered() {
        let (trigger, view) = shutdown_channel();
        let other = trigger.subscribe();
        assert!(!view.is_triggered());
        trigger.trigger();
        assert!(view.is_triggered());
        view.wait().await;
        other.wait().await;
    }

    #[tokio::test]
    async fn dropping_the_trigger_releases_waiters() {
        let (trigger, view) = shutdown_channel();
        drop(trigger);
        view.wait().await;
    }
}
