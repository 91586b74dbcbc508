//! TCP connections into a sandbox's network namespace: a short-lived thread joins the
//! namespace (network namespaces are per thread), connects to `127.0.0.1:port` there and hands
//! the socket to tokio. No port is published on the host.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use rustix::thread::{move_into_link_name_space, LinkNameSpaceType};
use tokio::sync::oneshot;

use crate::backend::BackendError;

/// How long a connect may take before [`BackendError::ConnectTimeout`].
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Connects to `127.0.0.1:port` inside the namespace `netns` (an fd of `/proc/<pid>/ns/net`).
pub(crate) async fn connect(
    netns: Arc<OwnedFd>,
    port: u16,
) -> Result<tokio::net::TcpStream, BackendError> {
    let (tx, rx) = oneshot::channel();
    std::thread::Builder::new()
        .name("traforato-netns-connect".to_string())
        .spawn(move || {
            let _ = tx.send(connect_blocking(&netns, port));
        })
        .map_err(|e| BackendError::io("spawn connect thread", e))?;
    let stream = rx
        .await
        .map_err(|_| BackendError::task("connect", "ended without a result"))?
        .map_err(|e| match e.kind() {
            io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => {
                BackendError::ConnectTimeout { port }
            }
            _ => BackendError::ConnectFailed { port, source: e },
        })?;
    tokio::net::TcpStream::from_std(stream)
        .map_err(|e| BackendError::ConnectFailed { port, source: e })
}

/// Runs on a dedicated thread that ends right after, so its namespace never leaks into other
/// work.
fn connect_blocking(netns: &OwnedFd, port: u16) -> io::Result<TcpStream> {
    move_into_link_name_space(netns.as_fd(), Some(LinkNameSpaceType::Network))?;
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let stream = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)?;
    stream.set_nonblocking(true)?;
    stream.set_nodelay(true)?;
    Ok(stream)
}
