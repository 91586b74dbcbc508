//! Redirects per second: a small HTTP/1.1 load generator over loopback (keep-alive
//! connections, each sending `GET` after `GET` and checking for a `307` with a `Location`),
//! and an nginx that answers every request with a `307`, as the yardstick.

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1;
use hyper::header::{HOST, LOCATION};
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use rustix::process::{kill_process, Pid, Signal};
use tokio::net::TcpStream;

/// Where nginx lives on Debian.
const NGINX_PATHS: &[&str] = &["/usr/sbin/nginx", "/usr/bin/nginx"];

/// The outcome of one load run.
#[derive(Debug, Clone, Copy)]
pub struct LoadResult {
    /// `307` answers with a `Location` per second, in the measured window.
    pub per_second: f64,
    /// Answers counted.
    pub redirects: u64,
    /// Answers that were not a `307` with a `Location`, or failed requests.
    pub errors: u64,
}

/// Drives `connections` keep-alive connections to `addr` for `warmup + window`, each sending
/// `GET path`; counts the `307`s completed during `window`. Runs on its own runtime (two
/// threads) in its own OS thread, so that it is the same generator whatever it measures.
pub fn measure(
    addr: SocketAddr,
    path: &str,
    connections: usize,
    warmup: Duration,
    window: Duration,
) -> io::Result<LoadResult> {
    let path = path.to_string();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        runtime.block_on(run(addr, path, connections, warmup, window))
    })
    .join()
    .map_err(|_| io::Error::other("load generator panicked"))?
}

async fn run(
    addr: SocketAddr,
    path: String,
    connections: usize,
    warmup: Duration,
    window: Duration,
) -> io::Result<LoadResult> {
    let redirects = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let start = Instant::now() + warmup;
    let end = start + window;
    let mut tasks = Vec::with_capacity(connections);
    for _ in 0..connections {
        let (path, redirects, errors) = (path.clone(), redirects.clone(), errors.clone());
        tasks.push(tokio::spawn(async move {
            connection_loop(addr, &path, start, end, &redirects, &errors).await
        }));
    }
    for task in tasks {
        task.await.map_err(io::Error::other)??;
    }
    let redirects = redirects.load(Ordering::Relaxed);
    Ok(LoadResult {
        per_second: redirects as f64 / window.as_secs_f64(),
        redirects,
        errors: errors.load(Ordering::Relaxed),
    })
}

/// One client connection, reconnected when the server closes it, until `end`.
async fn connection_loop(
    addr: SocketAddr,
    path: &str,
    start: Instant,
    end: Instant,
    redirects: &AtomicU64,
    errors: &AtomicU64,
) -> io::Result<()> {
    let host = addr.to_string();
    let mut failures_in_a_row = 0u32;
    while Instant::now() < end {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let (mut sender, conn) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(io::Error::other)?;
        let driver = tokio::spawn(conn);
        loop {
            let now = Instant::now();
            if now >= end {
                break;
            }
            let request = Request::get(path)
                .header(HOST, host.as_str())
                .body(Empty::<Bytes>::new())
                .map_err(io::Error::other)?;
            let ok = match sender.send_request(request).await {
                Ok(response) => {
                    let good = response.status() == StatusCode::TEMPORARY_REDIRECT
                        && response.headers().contains_key(LOCATION);
                    // Drain the body so the connection can carry the next request.
                    good && response.into_body().collect().await.is_ok()
                }
                // The server closed the connection (e.g. nginx's keepalive_requests).
                Err(_) => break,
            };
            let done = Instant::now();
            if done >= start && done < end {
                if ok {
                    redirects.fetch_add(1, Ordering::Relaxed);
                } else {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
            }
            if ok {
                failures_in_a_row = 0;
            } else {
                failures_in_a_row += 1;
                if failures_in_a_row > 100 {
                    driver.abort();
                    return Err(io::Error::other(format!(
                        "{addr}{path} does not answer 307 with a Location"
                    )));
                }
            }
        }
        driver.abort();
    }
    Ok(())
}

/// nginx's binary, if installed.
pub fn nginx_binary() -> Option<PathBuf> {
    NGINX_PATHS.iter().map(PathBuf::from).find(|p| p.is_file())
}

/// An nginx answering every request with `307` to `<target><request_uri>`, stopped on drop.
pub struct Nginx {
    child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
}

impl Nginx {
    /// Starts `binary` with a private configuration in `dir` (two worker processes, no
    /// access log, unlimited keep-alive requests), listening on a free loopback port.
    pub fn start(binary: &Path, dir: &Path, target: &str) -> io::Result<Self> {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let d = dir.display();
        let config = format!(
            "daemon off;\n\
             master_process on;\n\
             worker_processes 2;\n\
             pid {d}/nginx.pid;\n\
             error_log {d}/error.log warn;\n\
             events {{ worker_connections 1024; }}\n\
             http {{\n\
             access_log off;\n\
             keepalive_requests 100000000;\n\
             keepalive_timeout 60s;\n\
             client_body_temp_path {d}/body;\n\
             proxy_temp_path {d}/proxy;\n\
             fastcgi_temp_path {d}/fastcgi;\n\
             uwsgi_temp_path {d}/uwsgi;\n\
             scgi_temp_path {d}/scgi;\n\
             server {{ listen {addr}; location / {{ return 307 {target}$request_uri; }} }}\n\
             }}\n"
        );
        let conf = dir.join("nginx.conf");
        std::fs::write(&conf, config)?;
        let mut child = Command::new(binary)
            .arg("-p")
            .arg(dir)
            .arg("-e")
            .arg(dir.join("error.log"))
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if std::net::TcpStream::connect(addr).is_ok() {
                return Ok(Self { child, addr });
            }
            if let Some(status) = child.try_wait()? {
                let log = std::fs::read_to_string(dir.join("error.log")).unwrap_or_default();
                return Err(io::Error::other(format!(
                    "nginx exited ({status}): {}",
                    log.trim()
                )));
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(io::Error::other("nginx did not start listening"));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGKILL to the master alone would orphan its workers; SIGTERM makes it stop them
        // and exit. Then reap it (SIGKILL if it lingers).
        let pid = i32::try_from(self.child.id()).ok().and_then(Pid::from_raw);
        if let Some(pid) = pid {
            let _ = kill_process(pid, Signal::TERM);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
