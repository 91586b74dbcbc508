//! The sandbox port proxy, `ANY /sandboxes/{id}/proxy/{port}[/rest]`: HTTP/1.1 over the byte
//! stream [`Worker::connect_port`] opens, with forwarding headers, without the client's
//! `Authorization`, and with WebSocket (and other `Upgrade`) tunnelling.

use std::net::IpAddr;
use std::time::Duration;

use http_body_util::BodyExt;
use hyper::client::conn::http1;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Request, Response, StatusCode, Version};
use hyper_util::rt::TokioIo;
use traforato_core::auth::Principal;
use traforato_core::id::SandboxId;
use traforato_core::worker::{Worker, WorkerError};

use crate::decode;

use crate::http::{error_response, first_header_element, header_str, status_only, HttpResponse};
use crate::linger::RequestBody;
use crate::server::{ConnInfo, Shutdown};
use crate::worker::worker_error;

/// How long the upstream may take to send its response headers.
pub const RESPONSE_HEADER_TIMEOUT: Duration = Duration::from_secs(30);

/// `X-Traforato-Sandbox-Id`, added to every proxied request.
pub const X_SANDBOX_ID: HeaderName = HeaderName::from_static("x-traforato-sandbox-id");

/// Headers that describe one hop and are never forwarded as-is.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Forwards a request to `port` in sandbox `id` and streams the answer back.
pub(crate) async fn forward(
    worker: &Worker,
    principal: &Principal,
    sandbox_id: &SandboxId,
    port: &str,
    mut req: Request<RequestBody>,
    conn: &ConnInfo,
) -> HttpResponse {
    // The sandbox and its owner are reported before a bad port (the contract's order); a
    // good port's connect checks them itself.
    let port = match decode::port(port) {
        Ok(port) => port,
        Err(err) => {
            if let Err(err) = worker.check_sandbox(principal, sandbox_id) {
                return worker_error(&err);
            }
            return error_response(StatusCode::BAD_REQUEST, &err.to_string());
        }
    };
    let stream = match worker.connect_port(principal, sandbox_id, port).await {
        Ok(stream) => stream,
        Err(err) => return worker_error(&err),
    };
    let upgrade = requested_upgrade(req.headers());
    let client_upgrade = upgrade.is_some().then(|| hyper::upgrade::on(&mut req));
    let target = upstream_target(req.uri().path(), req.uri().query());
    let headers = upstream_headers(
        req.headers(),
        &sandbox_id.to_string(),
        port,
        conn.peer.ip(),
        upgrade.as_ref(),
    );
    let (parts, body) = req.into_parts();
    let mut upstream_req = Request::new(body);
    *upstream_req.method_mut() = parts.method;
    *upstream_req.version_mut() = Version::HTTP_11;
    *upstream_req.headers_mut() = headers;
    *upstream_req.uri_mut() = match target.parse() {
        Ok(uri) => uri,
        Err(_) => return error_response(StatusCode::BAD_REQUEST, "invalid proxy path"),
    };

    let (mut sender, connection) = match http1::handshake(TokioIo::new(stream)).await {
        Ok(pair) => pair,
        Err(err) => {
            tracing::debug!(error = %err, "upstream handshake failed");
            return worker_error(&WorkerError::UpstreamUnreachable);
        }
    };
    let conn_shutdown = conn.shutdown.clone();
    let connection_task = tokio::spawn(async move {
        tokio::select! {
            result = connection.with_upgrades() => {
                if let Err(err) = result {
                    tracing::debug!(error = %err, "upstream connection ended with an error");
                }
            }
            _ = conn_shutdown.wait() => {}
        }
    });
    let mut resp = match tokio::time::timeout(
        RESPONSE_HEADER_TIMEOUT,
        sender.send_request(upstream_req),
    )
    .await
    {
        Ok(Ok(resp)) => resp,
        Ok(Err(err)) => {
            tracing::debug!(error = %err, "upstream request failed");
            connection_task.abort();
            return worker_error(&WorkerError::UpstreamUnreachable);
        }
        Err(_) => {
            connection_task.abort();
            return worker_error(&WorkerError::UpstreamTimeout);
        }
    };

    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        let Some(client_upgrade) = client_upgrade else {
            connection_task.abort();
            tracing::debug!("upstream switched protocols without being asked");
            return worker_error(&WorkerError::UpstreamUnreachable);
        };
        let upstream_upgrade = hyper::upgrade::on(&mut resp);
        tokio::spawn(tunnel(
            client_upgrade,
            upstream_upgrade,
            conn.shutdown.clone(),
        ));
        let mut switching = status_only(StatusCode::SWITCHING_PROTOCOLS);
        *switching.headers_mut() = resp.headers().clone();
        return switching;
    }

    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    Response::from_parts(parts, body.map_err(Into::into).boxed_unsync())
}

/// Copies bytes both ways between the client's and the upstream's upgraded connections until
/// either side closes or the server shuts down.
async fn tunnel(
    client: hyper::upgrade::OnUpgrade,
    upstream: hyper::upgrade::OnUpgrade,
    shutdown: Shutdown,
) {
    let (client, upstream) = match tokio::try_join!(client, upstream) {
        Ok(pair) => pair,
        Err(err) => {
            tracing::debug!(error = %err, "upgrade failed");
            return;
        }
    };
    let mut client = TokioIo::new(client);
    let mut upstream = TokioIo::new(upstream);
    tokio::select! {
        result = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {
            if let Err(err) = result {
                tracing::debug!(error = %err, "upgraded connection ended with an error");
            }
        }
        _ = shutdown.wait() => {}
    }
}

/// The upstream request target: `/` plus whatever follows `/sandboxes/{id}/proxy/{port}`
/// (a trailing slash kept, repeated trailing slashes collapsed), plus the query unchanged.
pub fn upstream_target(raw_path: &str, query: Option<&str>) -> String {
    let trimmed = raw_path.trim_start_matches('/');
    let rest = trimmed.splitn(5, '/').nth(4).unwrap_or("");
    let inner = rest.trim_end_matches('/');
    let mut path = String::with_capacity(rest.len() + 2);
    path.push('/');
    if !inner.is_empty() {
        path.push_str(inner);
        if rest.ends_with('/') {
            path.push('/');
        }
    }
    match query {
        Some(q) => format!("{path}?{q}"),
        None => path,
    }
}

/// The `Upgrade` value when the request asks for a protocol switch (`Connection: upgrade`).
fn requested_upgrade(headers: &HeaderMap) -> Option<HeaderValue> {
    if crate::http::header_has_token(headers, "connection", "upgrade") {
        headers.get(header::UPGRADE).cloned()
    } else {
        None
    }
}

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|token| HeaderName::from_bytes(token.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(*name);
    }
}

/// The headers sent upstream: the client's, without hop-by-hop headers, `Host` and
/// `Authorization` (the client's token never reaches the sandbox), plus `Host:
/// localhost:<port>`, `X-Traforato-Sandbox-Id`, `X-Forwarded-Proto/Host/Port/For`, and the
/// upgrade request when there is one.
pub fn upstream_headers(
    incoming: &HeaderMap,
    sandbox_id: &str,
    port: u16,
    client_ip: IpAddr,
    upgrade: Option<&HeaderValue>,
) -> HeaderMap {
    let mut headers = incoming.clone();
    strip_hop_by_hop(&mut headers);
    headers.remove(header::AUTHORIZATION);
    headers.remove(header::HOST);

    let proto =
        first_header_element(incoming, "x-forwarded-proto").unwrap_or_else(|| "http".into());
    let host = first_header_element(incoming, "x-forwarded-host").or_else(|| {
        header_str(incoming, "host")
            .map(str::trim)
            .filter(|h| !h.is_empty())
            .map(String::from)
    });
    let forwarded_port = first_header_element(incoming, "x-forwarded-port")
        .or_else(|| {
            host.as_deref()
                .and_then(crate::config::split_host_port)
                .map(|(_, port)| port)
                .filter(|p| !p.is_empty())
        })
        .unwrap_or_else(|| {
            if matches!(proto.as_str(), "https" | "wss") {
                "443".into()
            } else {
                "80".into()
            }
        });
    let prior_for: Vec<&str> = incoming
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    let forwarded_for = if prior_for.is_empty() {
        client_ip.to_string()
    } else {
        format!("{}, {client_ip}", prior_for.join(", "))
    };

    let mut set = |name: &'static str, value: &str| {
        if let Ok(value) = HeaderValue::from_str(value) {
            headers.insert(HeaderName::from_static(name), value);
        }
    };
    set("host", &format!("localhost:{port}"));
    set("x-traforato-sandbox-id", sandbox_id);
    set("x-forwarded-proto", &proto);
    if let Some(host) = &host {
        set("x-forwarded-host", host);
    }
    set("x-forwarded-port", &forwarded_port);
    set("x-forwarded-for", &forwarded_for);
    if let Some(upgrade) = upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, upgrade.clone());
    }
    headers
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    const ID: &str = "sbx-broker_local-worker_local-550e8400-e29b-41d4-a716-446655440000";

    #[test]
    fn targets() {
        let p = |rest: &str, q| upstream_target(&format!("/sandboxes/{ID}/proxy/3000{rest}"), q);
        assert_eq!(p("", None), "/");
        assert_eq!(p("/", None), "/");
        assert_eq!(p("/hello/world", Some("x=1")), "/hello/world?x=1");
        assert_eq!(p("/app/", Some("x=2")), "/app/?x=2");
        assert_eq!(p("/app//", None), "/app/");
        assert_eq!(p("/a%20b", None), "/a%20b");
    }

    #[test]
    fn headers_are_rewritten() {
        let mut h = HeaderMap::new();
        h.insert("authorization", HeaderValue::from_static("Bearer secret"));
        h.insert("host", HeaderValue::from_static("worker.local:8081"));
        h.insert("connection", HeaderValue::from_static("keep-alive, x-hop"));
        h.insert("x-hop", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-custom", HeaderValue::from_static("kept"));
        h.insert("x-forwarded-for", HeaderValue::from_static("10.0.0.1"));
        let out = upstream_headers(&h, ID, 3000, IpAddr::V4(Ipv4Addr::LOCALHOST), None);
        assert!(out.get("authorization").is_none());
        assert!(out.get("x-hop").is_none());
        assert!(out.get("keep-alive").is_none());
        assert!(out.get("connection").is_none());
        assert_eq!(out["host"], "localhost:3000");
        assert_eq!(out["x-custom"], "kept");
        assert_eq!(out["x-traforato-sandbox-id"], ID);
        assert_eq!(out["x-forwarded-proto"], "http");
        assert_eq!(out["x-forwarded-host"], "worker.local:8081");
        assert_eq!(out["x-forwarded-port"], "8081");
        assert_eq!(out["x-forwarded-for"], "10.0.0.1, 127.0.0.1");
    }

    #[test]
    fn forwarded_values_from_the_client_win() {
        let mut h = HeaderMap::new();
        h.insert("host", HeaderValue::from_static("worker.local:8081"));
        h.insert("x-forwarded-proto", HeaderValue::from_static("https, http"));
        h.insert(
            "x-forwarded-host",
            HeaderValue::from_static("broker.example.com"),
        );
        let out = upstream_headers(&h, ID, 80, IpAddr::V4(Ipv4Addr::LOCALHOST), None);
        assert_eq!(out["x-forwarded-proto"], "https");
        assert_eq!(out["x-forwarded-host"], "broker.example.com");
        assert_eq!(out["x-forwarded-port"], "443");
        h.insert("x-forwarded-port", HeaderValue::from_static("8443"));
        let out = upstream_headers(&h, ID, 80, IpAddr::V4(Ipv4Addr::LOCALHOST), None);
        assert_eq!(out["x-forwarded-port"], "8443");
    }

    #[test]
    fn upgrades_are_forwarded() {
        let mut h = HeaderMap::new();
        h.insert(
            "connection",
            HeaderValue::from_static("keep-alive, Upgrade"),
        );
        h.insert("upgrade", HeaderValue::from_static("websocket"));
        h.insert("sec-websocket-key", HeaderValue::from_static("abc"));
        let upgrade = requested_upgrade(&h);
        assert_eq!(upgrade.as_ref().unwrap(), "websocket");
        let out = upstream_headers(
            &h,
            ID,
            80,
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            upgrade.as_ref(),
        );
        assert_eq!(out["connection"], "upgrade");
        assert_eq!(out["upgrade"], "websocket");
        assert_eq!(out["sec-websocket-key"], "abc");
        h.insert("connection", HeaderValue::from_static("close"));
        assert!(requested_upgrade(&h).is_none());
    }
}
