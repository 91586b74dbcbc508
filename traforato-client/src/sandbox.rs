//! The [`Sandbox`] handle: lifecycle (info, lease, delete), port URLs and raw proxied
//! requests. Exec, run-code and files live in their own modules and hang off this handle.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use bytes::Bytes;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use reqwest::{Method, StatusCode};
pub use traforato_core::api::CreateSandbox;
use traforato_core::api::{
    ceil_seconds, CreateSandboxResponse, LeaseResponse, NetworkPolicy, NetworkResponse,
    PortUrlResponse, SandboxResponse,
};

use crate::client::{Client, Follow, Req};
use crate::error::ClientError;
use crate::files::Files;

/// The scheme of a port URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Protocol {
    /// `http://`.
    Http,
    /// `https://` (the server's default).
    #[default]
    Https,
    /// `ws://`.
    Ws,
    /// `wss://`.
    Wss,
}

impl Protocol {
    /// The protocol as the API spells it.
    pub fn as_str(&self) -> &'static str {
        match self {
            Protocol::Http => "http",
            Protocol::Https => "https",
            Protocol::Ws => "ws",
            Protocol::Wss => "wss",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A protocol name other than `http`, `https`, `ws` or `wss`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("protocol must be one of: http, https, ws, wss")]
pub struct ParseProtocolError;

impl FromStr for Protocol {
    type Err = ParseProtocolError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "http" => Ok(Protocol::Http),
            "https" => Ok(Protocol::Https),
            "ws" => Ok(Protocol::Ws),
            "wss" => Ok(Protocol::Wss),
            _ => Err(ParseProtocolError),
        }
    }
}

/// A request to a port inside the sandbox, sent through the worker's proxy
/// (`/sandboxes/{id}/proxy/{port}/...`).
///
/// The body is buffered so that it can be re-sent on the broker's redirect.
#[derive(Debug, Clone)]
#[must_use]
pub struct ProxyRequest {
    method: Method,
    port: u16,
    path: String,
    headers: HeaderMap,
    body: Bytes,
}

impl ProxyRequest {
    /// `method` to `port`, at `path` (which may carry a query, e.g. `/hello?x=1`).
    pub fn new(method: Method, port: u16, path: impl Into<String>) -> Self {
        ProxyRequest {
            method,
            port,
            path: path.into(),
            headers: HeaderMap::new(),
            body: Bytes::new(),
        }
    }

    /// A `GET`.
    pub fn get(port: u16, path: impl Into<String>) -> Self {
        Self::new(Method::GET, port, path)
    }

    /// A `POST` with a body.
    pub fn post(port: u16, path: impl Into<String>, body: impl Into<Bytes>) -> Self {
        Self::new(Method::POST, port, path).body(body)
    }

    /// Adds a header. Invalid names or values are ignored. An `Authorization` header is
    /// replaced by the client's own token (the worker never forwards it to the sandbox).
    pub fn header(mut self, name: &str, value: &str) -> Self {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            self.headers.append(n, v);
        }
        self
    }

    /// The request body.
    pub fn body(mut self, body: impl Into<Bytes>) -> Self {
        self.body = body.into();
        self
    }
}

/// What the sandbox's server (or, for 502/503/504, the worker's proxy) answered.
///
/// Any status is returned as is, including the application's own redirects; only the broker's
/// redirect to the worker is followed.
#[derive(Debug, Clone)]
pub struct ProxyResponse {
    /// Status.
    pub status: StatusCode,
    /// Response headers.
    pub headers: HeaderMap,
    /// The whole body.
    pub body: Bytes,
}

impl ProxyResponse {
    /// The body as text (lossy UTF-8).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A sandbox: run commands and code in it, use its files, reach its ports, renew or end it.
///
/// Get one from [`Client::create_sandbox`] or, for an existing id, [`Client::sandbox`]. Cheap
/// to clone. Dropping the handle does not delete the sandbox; call [`Sandbox::delete`] or let
/// its lease run out.
///
/// ```no_run
/// # async fn demo() -> Result<(), traforato_client::ClientError> {
/// use std::time::Duration;
/// use traforato_client::{Client, CreateSandbox, Protocol};
///
/// let client = Client::new("http://localhost:8080")?;
/// let sandbox = client.create_sandbox(CreateSandbox::new("ubuntu:24.04")).await?;
///
/// let out = sandbox.exec("uname -a").await?;
/// println!("{} (exit {})", out.stdout, out.exit_code);
///
/// sandbox.set_lease(Duration::from_secs(3600)).await?;
/// let url = sandbox.port_url(8000, Protocol::Https).await?;
/// println!("serve on {}", url.url);
/// sandbox.delete().await?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Sandbox {
    client: Client,
    id: String,
    created: Option<CreateSandboxResponse>,
}

impl Sandbox {
    pub(crate) fn created(client: Client, created: CreateSandboxResponse) -> Self {
        Sandbox {
            client,
            id: created.sandbox_id.clone(),
            created: Some(created),
        }
    }

    pub(crate) fn attach(client: Client, id: String) -> Self {
        Sandbox {
            client,
            id,
            created: None,
        }
    }

    /// The sandbox id, `sbx-<broker>-<worker>-<uuid>`.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The create response (expiry, cpu, memory, warm or cold start) when this handle came
    /// from [`Client::create_sandbox`].
    pub fn created_info(&self) -> Option<&CreateSandboxResponse> {
        self.created.as_ref()
    }

    /// The client this handle uses.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The sandbox's current record (`GET /sandboxes/{id}`).
    pub async fn info(&self) -> Result<SandboxResponse, ClientError> {
        let req = Req::new(Method::GET, self.url(&[], &[]));
        self.client.send_json(req).await
    }

    /// Sets the lease: the sandbox now expires `ttl` from now (rounded up to whole seconds;
    /// must be at least one second).
    pub async fn set_lease(&self, ttl: Duration) -> Result<LeaseResponse, ClientError> {
        let secs = ceil_seconds(ttl).to_string();
        let req = Req::new(
            Method::PATCH,
            self.url(&["lease"], &[("ttl_seconds", &secs)]),
        );
        self.client.send_json(req).await
    }

    /// Replaces the sandbox's network egress (`PATCH /sandboxes/{id}/network`); answers the
    /// policy now in force.
    pub async fn set_network(
        &self,
        policy: &NetworkPolicy,
    ) -> Result<NetworkResponse, ClientError> {
        let req = Req::new(Method::PATCH, self.url(&["network"], &[])).json(policy);
        self.client.send_json(req).await
    }

    /// Deletes the sandbox and everything in it.
    pub async fn delete(&self) -> Result<(), ClientError> {
        let req = Req::new(Method::DELETE, self.url(&[], &[]));
        self.client.send_empty(req).await
    }

    /// The public URL of `port` inside the sandbox, as the worker reports it.
    pub async fn port_url(
        &self,
        port: u16,
        protocol: Protocol,
    ) -> Result<PortUrlResponse, ClientError> {
        let port = port.to_string();
        let req = Req::new(
            Method::GET,
            self.url(&["ports", &port, "url"], &[("protocol", protocol.as_str())]),
        );
        self.client.send_json(req).await
    }

    /// Sends a raw HTTP request to a port inside the sandbox and returns whatever comes back;
    /// a non-2xx status is not an error here.
    ///
    /// ```no_run
    /// # async fn demo(sandbox: traforato_client::Sandbox) -> Result<(), traforato_client::ClientError> {
    /// use traforato_client::ProxyRequest;
    ///
    /// let resp = sandbox
    ///     .proxy_request(ProxyRequest::post(3000, "/echo?x=1", "ping").header("X-Test", "1"))
    ///     .await?;
    /// println!("{} {}", resp.status, resp.text());
    /// # Ok(()) }
    /// ```
    pub async fn proxy_request(&self, request: ProxyRequest) -> Result<ProxyResponse, ClientError> {
        let port = request.port.to_string();
        let mut url = self.url(&["proxy", &port], &[]);
        let (path, query) = match request.path.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (request.path.as_str(), None),
        };
        let path = path.trim_start_matches('/');
        if !path.is_empty() {
            let joined = format!("{}/{}", url.path(), path);
            url.set_path(&joined);
        }
        url.set_query(query);
        let mut req = Req::new(request.method, url);
        req.headers = request.headers;
        if !request.body.is_empty() {
            req.body = Some((
                request.body,
                req.headers
                    .get(reqwest::header::CONTENT_TYPE)
                    .cloned()
                    .unwrap_or_else(|| HeaderValue::from_static("application/octet-stream")),
            ));
        }
        req.follow = Follow::SamePath;
        let resp = self.client.send(req).await?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let url = resp.url().to_string();
        let body = resp
            .bytes()
            .await
            .map_err(|e| ClientError::from_reqwest(&url, e))?;
        Ok(ProxyResponse {
            status,
            headers,
            body,
        })
    }

    /// The sandbox's filesystem.
    pub fn files(&self) -> Files {
        Files::new(self.clone())
    }

    /// `/sandboxes/{id}/<rest...>?<query>`.
    pub(crate) fn url(&self, rest: &[&str], query: &[(&str, &str)]) -> url::Url {
        let mut segments = vec!["sandboxes", self.id.as_str()];
        segments.extend_from_slice(rest);
        self.client.endpoint(&segments, query)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{Reply, TestServer};

    #[test]
    fn create_spec_maps_to_the_wire() {
        let req = CreateSandbox {
            cpu: 2,
            virtualization: " fake ".into(),
            ttl: Some(Duration::from_millis(1500)),
            ..CreateSandbox::new("ubuntu:24.04")
        }
        .into_request();
        assert_eq!(req.image, "ubuntu:24.04");
        assert_eq!(req.cpu, 2);
        assert_eq!(req.virtualization, "fake");
        assert_eq!(req.ttl_seconds, 2);
        let json = serde_json::to_value(CreateSandbox::default().into_request()).unwrap();
        assert_eq!(json, serde_json::json!({}));
    }

    #[test]
    fn protocols_parse() {
        assert_eq!("WSS".parse::<Protocol>().unwrap(), Protocol::Wss);
        assert_eq!(Protocol::Http.to_string(), "http");
        assert!("ftp".parse::<Protocol>().is_err());
    }

    #[tokio::test]
    async fn proxy_request_builds_the_path_and_keeps_upstream_statuses() {
        let server = TestServer::start(|req| {
            Reply::bytes(
                418,
                "text/plain",
                format!("{} {}", req.method, req.target).as_bytes(),
            )
            .header("X-Up", "1")
        })
        .await;
        let sandbox = Client::new(&server.url()).unwrap().sandbox("sbx-b-w-id");
        let resp = sandbox
            .proxy_request(ProxyRequest::post(3000, "/hello/world/?x=1", "ping").header("X-A", "b"))
            .await
            .unwrap();
        assert_eq!(resp.status.as_u16(), 418);
        assert_eq!(resp.headers.get("x-up").unwrap(), "1");
        assert_eq!(
            resp.text(),
            "POST /sandboxes/sbx-b-w-id/proxy/3000/hello/world/?x=1"
        );
        let r = &server.requests()[0];
        assert_eq!(r.body, b"ping");
        assert_eq!(r.header("x-a"), Some("b"));
        let root = sandbox
            .proxy_request(ProxyRequest::get(80, ""))
            .await
            .unwrap();
        assert_eq!(root.text(), "GET /sandboxes/sbx-b-w-id/proxy/80");
    }

    #[tokio::test]
    async fn lease_and_delete_use_the_contract_routes() {
        let server = TestServer::start(|req| match req.method.as_str() {
            "PATCH" => Reply::json(
                200,
                r#"{"sandbox_id":"s","expires_at":"2026-02-25T12:00:00Z"}"#,
            ),
            "DELETE" => Reply::status(204),
            _ => Reply::json(404, r#"{"error":"sandbox not found"}"#),
        })
        .await;
        let sandbox = Client::new(&server.url()).unwrap().sandbox("s");
        let lease = sandbox.set_lease(Duration::from_secs(90)).await.unwrap();
        assert_eq!(lease.sandbox_id, "s");
        sandbox.delete().await.unwrap();
        let err = sandbox.info().await.unwrap_err();
        assert!(err.is_not_found());
        let targets: Vec<String> = server.requests().into_iter().map(|r| r.target).collect();
        assert_eq!(
            targets,
            [
                "/sandboxes/s/lease?ttl_seconds=90",
                "/sandboxes/s",
                "/sandboxes/s"
            ]
        );
    }
}
