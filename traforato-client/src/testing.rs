//! A tiny scripted HTTP/1.1 server on 127.0.0.1 for the client's unit tests: it records every
//! request and answers each with what a handler closure returns, one request per connection.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// One request as the server saw it.
#[derive(Debug, Clone)]
pub(crate) struct Recorded {
    pub(crate) method: String,
    /// Path and query, as sent.
    pub(crate) target: String,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: Vec<u8>,
}

impl Recorded {
    /// The first header with this (case-insensitive) name.
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// A query parameter, undecoded.
    pub(crate) fn query(&self, key: &str) -> Option<&str> {
        let (_, q) = self.target.split_once('?')?;
        q.split('&').find_map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (k == key).then_some(v)
        })
    }

    /// The path without the query.
    pub(crate) fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }
}

/// What to answer.
#[derive(Debug, Clone)]
pub(crate) struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    hang: bool,
    /// Announce this many more body bytes than sent, then stall.
    stall: usize,
}

impl Reply {
    pub(crate) fn status(status: u16) -> Self {
        Reply {
            status,
            headers: Vec::new(),
            body: Vec::new(),
            hang: false,
            stall: 0,
        }
    }

    pub(crate) fn json(status: u16, body: &str) -> Self {
        Self::bytes(status, "application/json", body.as_bytes())
    }

    pub(crate) fn bytes(status: u16, content_type: &str, body: &[u8]) -> Self {
        Reply {
            status,
            headers: vec![("Content-Type".into(), content_type.into())],
            body: body.to_vec(),
            hang: false,
            stall: 0,
        }
    }

    pub(crate) fn redirect(status: u16, location: &str) -> Self {
        Self::status(status).header("Location", location)
    }

    pub(crate) fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Never answer (to provoke client timeouts).
    pub(crate) fn hang(mut self) -> Self {
        self.hang = true;
        self
    }

    /// Send the head and the body, promise `missing` more bytes, and stall.
    pub(crate) fn stall_after_body(mut self, missing: usize) -> Self {
        self.stall = missing;
        self
    }
}

type Handler = dyn Fn(&Recorded, &str) -> Reply + Send + Sync;

/// The server; stops when dropped.
pub(crate) struct TestServer {
    addr: SocketAddr,
    log: Arc<Mutex<Vec<Recorded>>>,
    task: JoinHandle<()>,
}

impl TestServer {
    /// Starts a server answering with `handler(request)`.
    pub(crate) async fn start(
        handler: impl Fn(&Recorded) -> Reply + Send + Sync + 'static,
    ) -> Self {
        Self::start_with_self_url(move |req, _| handler(req)).await
    }

    /// Starts a server whose handler also gets the server's own base URL.
    pub(crate) async fn start_with_self_url(
        handler: impl Fn(&Recorded, &str) -> Reply + Send + Sync + 'static,
    ) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let log: Arc<Mutex<Vec<Recorded>>> = Arc::default();
        let handler: Arc<Handler> = Arc::new(handler);
        let self_url = format!("http://{addr}");
        let task = tokio::spawn({
            let log = log.clone();
            async move {
                while let Ok((stream, _)) = listener.accept().await {
                    let log = log.clone();
                    let handler = handler.clone();
                    let self_url = self_url.clone();
                    tokio::spawn(async move {
                        serve_one(stream, &log, &*handler, &self_url).await;
                    });
                }
            }
        });
        TestServer { addr, log, task }
    }

    /// `http://127.0.0.1:<port>`.
    pub(crate) fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every request so far, in arrival order.
    pub(crate) fn requests(&self) -> Vec<Recorded> {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A URL filled in after the server it names has started (for servers that point at each
/// other).
#[derive(Clone, Default)]
pub(crate) struct LateUrl(Arc<OnceLock<String>>);

impl LateUrl {
    pub(crate) fn set(&self, url: String) {
        let _ = self.0.set(url);
    }
    pub(crate) fn get(&self) -> String {
        self.0.get().cloned().unwrap_or_default()
    }
}

async fn serve_one(
    mut stream: TcpStream,
    log: &Mutex<Vec<Recorded>>,
    handler: &Handler,
    self_url: &str,
) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = find(&buf, b"\r\n\r\n") {
            break i;
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let mut lines = head.split("\r\n");
    let mut request_line = lines.next().unwrap_or("").split(' ');
    let method = request_line.next().unwrap_or("").to_string();
    let target = request_line.next().unwrap_or("").to_string();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let len: usize = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = buf[head_end + 4..].to_vec();
    while body.len() < len {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => body.extend_from_slice(&chunk[..n]),
        }
    }
    body.truncate(len);
    let req = Recorded {
        method,
        target,
        headers,
        body,
    };
    log.lock().unwrap().push(req.clone());
    let reply = handler(&req, self_url);
    if reply.hang {
        std::future::pending::<()>().await;
    }
    let mut out = format!("HTTP/1.1 {} X\r\n", reply.status);
    for (k, v) in &reply.headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n",
        reply.body.len() + reply.stall
    ));
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(&reply.body);
    let _ = stream.write_all(&bytes).await;
    if reply.stall > 0 {
        let _ = stream.flush().await;
        std::future::pending::<()>().await;
    }
    let _ = stream.shutdown().await;
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}
