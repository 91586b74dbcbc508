//! An upstream server for the proxy tests, standing in for a server inside a sandbox.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Serves `127.0.0.1:0`: answers every request with a JSON echo of what it received, and
/// switches protocols (echoing raw bytes) when asked to upgrade.
pub async fn start_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service_fn(upstream_handler))
                    .with_upgrades()
                    .await;
            });
        }
    });
    addr
}

async fn upstream_handler(mut req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(String::from)
    };
    if header("upgrade").is_some() {
        let upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(upgraded) = upgrade.await {
                let mut io = TokioIo::new(upgraded);
                let mut buf = [0u8; 1024];
                while let Ok(n) = io.read(&mut buf).await {
                    if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            }
        });
        let resp = Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-accept", "test-accept")
            .body(Full::new(Bytes::new()))
            .unwrap();
        return Ok(resp);
    }
    let echo = json!({
        "method": req.method().as_str(),
        "path": req.uri().path(),
        "query": req.uri().query(),
        "host": header("host"),
        "authorization": header("authorization"),
        "sandbox_id": header("x-traforato-sandbox-id"),
        "forwarded_for": header("x-forwarded-for"),
        "forwarded_proto": header("x-forwarded-proto"),
        "custom": header("x-custom"),
    });
    let sandbox_id = header("x-traforato-sandbox-id").unwrap_or_default();
    let body = req.into_body().collect().await.unwrap().to_bytes();
    let mut echo = echo;
    echo["body"] = Value::String(String::from_utf8_lossy(&body).into_owned());
    let resp = Response::builder()
        .header("content-type", "application/json")
        .header("x-traforato-sandbox-id", sandbox_id)
        .body(Full::new(Bytes::from(echo.to_string())))
        .unwrap();
    Ok(resp)
}
