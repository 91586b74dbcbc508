//! The [`Client`]: configuration, URL building, and the request loop that follows the broker's
//! 307/308 redirects itself (re-sending method, body and a fresh `Authorization` header on
//! every hop, with a bound on the number of hops).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION, CONTENT_TYPE, LOCATION};
use reqwest::{Method, Response, StatusCode};
use serde::de::DeserializeOwned;
use traforato_core::api::{CreateSandboxRequest, CreateSandboxResponse};
use url::Url;

use crate::auth::{Auth, TokenProvider};
use crate::error::ClientError;
use crate::sandbox::{CreateSandbox, Sandbox};

/// Default bound on redirect hops: broker → worker, plus a few placement-retry bounces.
pub const DEFAULT_MAX_REDIRECTS: usize = 8;
/// Default timeout of one request (one hop), excluding long-polls and waiting run-code.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
/// Default connect timeout.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Default time one frames long-poll may wait on the server.
pub const DEFAULT_LONG_POLL: Duration = Duration::from_secs(25);

/// A handle on a traforato deployment, reached through its broker URL.
///
/// Cheap to clone (an `Arc` inside); clones share the connection pool. The client remembers
/// no worker address: every sandbox-scoped call goes to the broker, which redirects it to the
/// worker that owns the sandbox, so nothing goes stale when workers come and go.
///
/// ```no_run
/// # async fn demo() -> Result<(), traforato_client::ClientError> {
/// use traforato_client::{Client, CreateSandbox};
///
/// let client = Client::builder("http://localhost:8080")
///     .token("eyJhbGciOi...")
///     .build()?;
/// let sandbox = client.create_sandbox(CreateSandbox::new("ubuntu:24.04")).await?;
/// println!("created {}", sandbox.id());
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Client {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    http: reqwest::Client,
    base: Url,
    auth: Auth,
    max_redirects: usize,
    timeout: Duration,
    long_poll: Duration,
}

/// Configures a [`Client`].
#[derive(Debug)]
#[must_use]
pub struct ClientBuilder {
    base_url: String,
    auth: Auth,
    max_redirects: usize,
    timeout: Duration,
    connect_timeout: Duration,
    long_poll: Duration,
    user_agent: String,
}

impl ClientBuilder {
    /// A static bearer token sent on every request. An empty token means no token.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        let token = token.into();
        self.auth = if token.trim().is_empty() {
            Auth::None
        } else {
            Auth::Static(token.trim().to_string())
        };
        self
    }

    /// A provider asked for a fresh token before every request and every redirect hop
    /// (needed in prod mode, where each token id is accepted once per service).
    pub fn token_provider(mut self, provider: impl TokenProvider) -> Self {
        self.auth = Auth::Provider(Arc::new(provider));
        self
    }

    /// The most redirects one call follows (default 8); one more gives
    /// [`ClientError::TooManyRedirects`].
    pub fn max_redirects(mut self, max: usize) -> Self {
        self.max_redirects = max;
        self
    }

    /// The timeout of one request hop (default 60 s). Long-polls and waiting run-code calls
    /// get their server-side wait added on top.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The connect timeout (default 10 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long one frames long-poll waits on the server (default 25 s).
    pub fn long_poll(mut self, wait: Duration) -> Self {
        self.long_poll = wait.max(Duration::from_secs(1));
        self
    }

    /// The `User-Agent` header.
    pub fn user_agent(mut self, agent: impl Into<String>) -> Self {
        self.user_agent = agent.into();
        self
    }

    /// Validates the base URL and builds the client.
    pub fn build(self) -> Result<Client, ClientError> {
        let base = parse_base_url(&self.base_url)?;
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(self.connect_timeout)
            .user_agent(self.user_agent)
            .build()
            .map_err(ClientError::Build)?;
        Ok(Client {
            inner: Arc::new(Inner {
                http,
                base,
                auth: self.auth,
                max_redirects: self.max_redirects,
                timeout: self.timeout,
                long_poll: self.long_poll,
            }),
        })
    }
}

fn parse_base_url(raw: &str) -> Result<Url, ClientError> {
    let invalid = |message: &str| ClientError::InvalidUrl {
        url: raw.to_string(),
        message: message.to_string(),
    };
    let url = Url::parse(raw.trim()).map_err(|e| invalid(&e.to_string()))?;
    if url.scheme() != "http" && url.scheme() != "https" {
        return Err(invalid("scheme must be http or https"));
    }
    if url.cannot_be_a_base() || url.host_str().is_none() {
        return Err(invalid("url must include a host"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(invalid("url must not include a query or fragment"));
    }
    Ok(url)
}

/// Which redirects one request follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Follow {
    /// Every 307/308.
    All,
    /// Only a 307/308 whose target path ends with the request's path: the broker's
    /// sandbox-scoped redirect. Anything else is the proxied application's own redirect and is
    /// handed back to the caller.
    SamePath,
    /// None: the first answer, redirect or not, is the caller's.
    None,
}

/// One logical request; re-sent as is on every redirect hop.
#[derive(Debug, Clone)]
pub(crate) struct Req {
    pub(crate) method: Method,
    pub(crate) url: Url,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Option<(Bytes, HeaderValue)>,
    pub(crate) extra_timeout: Duration,
    /// No bound on the whole exchange (a streamed download); the caller bounds idle time.
    pub(crate) streaming: bool,
    pub(crate) follow: Follow,
}

impl Req {
    pub(crate) fn new(method: Method, url: Url) -> Self {
        Req {
            method,
            url,
            headers: HeaderMap::new(),
            body: None,
            extra_timeout: Duration::ZERO,
            streaming: false,
            follow: Follow::All,
        }
    }

    pub(crate) fn json<T: serde::Serialize>(mut self, body: &T) -> Self {
        // Serialising our own plain-data wire types cannot fail.
        let bytes = serde_json::to_vec(body).unwrap_or_default();
        self.body = Some((
            Bytes::from(bytes),
            HeaderValue::from_static("application/json"),
        ));
        self
    }

    pub(crate) fn bytes(mut self, body: Bytes, content_type: &'static str) -> Self {
        self.body = Some((body, HeaderValue::from_static(content_type)));
        self
    }

    pub(crate) fn extra_timeout(mut self, extra: Duration) -> Self {
        self.extra_timeout = extra;
        self
    }

    pub(crate) fn streaming(mut self) -> Self {
        self.streaming = true;
        self
    }
}

impl Client {
    /// A client for the broker at `base_url` (e.g. `http://localhost:8080`) with the default
    /// settings and no token.
    pub fn new(base_url: &str) -> Result<Self, ClientError> {
        Self::builder(base_url).build()
    }

    /// Starts configuring a client for the broker at `base_url`.
    pub fn builder(base_url: impl Into<String>) -> ClientBuilder {
        ClientBuilder {
            base_url: base_url.into(),
            auth: Auth::None,
            max_redirects: DEFAULT_MAX_REDIRECTS,
            timeout: DEFAULT_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            long_poll: DEFAULT_LONG_POLL,
            user_agent: concat!("traforato-client/", env!("CARGO_PKG_VERSION")).to_string(),
        }
    }

    /// The broker URL.
    pub fn base_url(&self) -> &Url {
        &self.inner.base
    }

    /// Checks that the broker answers `GET /healthz`.
    pub async fn health(&self) -> Result<(), ClientError> {
        let req = Req::new(Method::GET, self.endpoint(&["healthz"], &[]));
        let _: traforato_core::api::HealthResponse = self.send_json(req).await?;
        Ok(())
    }

    /// Creates a sandbox: the broker places it on a worker (following the broker's redirect
    /// and any placement retries) and the worker boots or claims a VM.
    pub async fn create_sandbox(&self, spec: CreateSandbox) -> Result<Sandbox, ClientError> {
        let body: CreateSandboxRequest = spec.into_request();
        let req = Req::new(Method::POST, self.endpoint(&["sandboxes"], &[])).json(&body);
        let created: CreateSandboxResponse = self.send_json(req).await?;
        Ok(Sandbox::created(self.clone(), created))
    }

    /// A handle on an existing sandbox. No request is made; the first call on the handle
    /// fails with a 404 [`ClientError::Api`] if the sandbox does not exist.
    pub fn sandbox(&self, id: impl Into<String>) -> Sandbox {
        Sandbox::attach(self.clone(), id.into())
    }

    /// A fresh `Authorization` value, when the client has credentials.
    pub(crate) async fn authorization(&self) -> Result<Option<HeaderValue>, ClientError> {
        let Some(token) = self.inner.auth.bearer().await? else {
            return Ok(None);
        };
        HeaderValue::from_str(&format!("Bearer {token}"))
            .map(Some)
            .map_err(|_| {
                ClientError::Token("token contains characters not allowed in a header".into())
            })
    }

    pub(crate) fn long_poll(&self) -> Duration {
        self.inner.long_poll
    }

    /// The per-request timeout, also the longest pause allowed inside a streamed body.
    pub(crate) fn timeout(&self) -> Duration {
        self.inner.timeout
    }

    /// `base` + path segments (each percent-encoded) + query.
    pub(crate) fn endpoint(&self, segments: &[&str], query: &[(&str, &str)]) -> Url {
        let mut url = self.inner.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty();
            path.extend(segments);
        }
        set_query(&mut url, query);
        url
    }

    /// Sends a request, following redirects, and returns the final response whatever its
    /// status.
    pub(crate) async fn send(&self, req: Req) -> Result<Response, ClientError> {
        let inner = &self.inner;
        let original_path = req.url.path().to_string();
        let mut url = req.url.clone();
        let mut hops = 0usize;
        loop {
            let mut headers = req.headers.clone();
            if let Some(value) = self.authorization().await? {
                headers.insert(AUTHORIZATION, value);
            }
            let mut rb = inner.http.request(req.method.clone(), url.clone());
            if !req.streaming {
                rb = rb.timeout(inner.timeout + req.extra_timeout);
            }
            if let Some((body, content_type)) = &req.body {
                headers.insert(CONTENT_TYPE, content_type.clone());
                rb = rb.body(body.clone());
            }
            let sent = rb.headers(headers).send();
            let sent = if req.streaming {
                // Only the response head is bounded here; the caller bounds pauses in the body.
                tokio::time::timeout(inner.timeout, sent)
                    .await
                    .map_err(|_| ClientError::Timeout {
                        url: url.to_string(),
                    })?
            } else {
                sent.await
            };
            let resp = sent.map_err(|e| ClientError::from_reqwest(url.as_str(), e))?;
            let status = resp.status();
            if status != StatusCode::TEMPORARY_REDIRECT && status != StatusCode::PERMANENT_REDIRECT
            {
                return Ok(resp);
            }
            if req.follow == Follow::None {
                return Ok(resp);
            }
            let next = redirect_target(&url, &resp)?;
            if req.follow == Follow::SamePath && !next.path().ends_with(&original_path) {
                return Ok(resp);
            }
            if hops == inner.max_redirects {
                return Err(ClientError::TooManyRedirects {
                    max: inner.max_redirects,
                });
            }
            hops += 1;
            url = next;
        }
    }

    /// Sends a request and turns a non-2xx answer into [`ClientError::Api`].
    pub(crate) async fn send_ok(&self, req: Req) -> Result<Response, ClientError> {
        let resp = self.send(req).await?;
        if resp.status().is_success() {
            Ok(resp)
        } else {
            Err(error_from_response(resp).await)
        }
    }

    /// Sends a request and decodes a 2xx JSON body.
    pub(crate) async fn send_json<T: DeserializeOwned>(&self, req: Req) -> Result<T, ClientError> {
        let resp = self.send_ok(req).await?;
        decode_json(resp).await
    }

    /// Sends a request that answers 2xx with no interesting body.
    pub(crate) async fn send_empty(&self, req: Req) -> Result<(), ClientError> {
        self.send_ok(req).await.map(drop)
    }
}

/// Reads an error response into [`ClientError::Api`].
pub(crate) async fn error_from_response(resp: Response) -> ClientError {
    let status = resp.status().as_u16();
    let url = resp.url().to_string();
    let request_id = resp
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    match resp.bytes().await {
        Ok(body) => ClientError::from_error_body(status, &body, request_id),
        Err(e) => ClientError::from_reqwest(&url, e),
    }
}

/// Reads a JSON body.
pub(crate) async fn decode_json<T: DeserializeOwned>(resp: Response) -> Result<T, ClientError> {
    let url = resp.url().to_string();
    let body = resp
        .bytes()
        .await
        .map_err(|e| ClientError::from_reqwest(&url, e))?;
    serde_json::from_slice(&body).map_err(|e| ClientError::Decode {
        url,
        message: e.to_string(),
    })
}

pub(crate) fn redirect_target(from: &Url, resp: &Response) -> Result<Url, ClientError> {
    let invalid = |message: &str| ClientError::InvalidRedirect {
        url: from.to_string(),
        message: message.to_string(),
    };
    let location = resp
        .headers()
        .get(LOCATION)
        .ok_or_else(|| invalid("missing location header"))?
        .to_str()
        .map_err(|_| invalid("location header is not text"))?;
    // Relative locations resolve against the URL that answered.
    let next = from
        .join(location.trim())
        .map_err(|e| invalid(&format!("bad location {location:?}: {e}")))?;
    if next.scheme() != "http" && next.scheme() != "https" {
        return Err(invalid("location must be http or https"));
    }
    Ok(next)
}

/// Sets the query, percent-encoding with `%20` for spaces (never `+`), keeping `/` readable.
pub(crate) fn set_query(url: &mut Url, query: &[(&str, &str)]) {
    if query.is_empty() {
        url.set_query(None);
        return;
    }
    let mut qs = String::new();
    for (i, (k, v)) in query.iter().enumerate() {
        if i > 0 {
            qs.push('&');
        }
        encode_query_component(&mut qs, k);
        qs.push('=');
        encode_query_component(&mut qs, v);
    }
    url.set_query(Some(&qs));
}

fn encode_query_component(out: &mut String, s: &str) {
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'/' | b':') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::error::BoxError;
    use crate::testing::{LateUrl, Reply, TestServer};

    #[test]
    fn base_url_validation() {
        assert!(Client::new("http://localhost:8080").is_ok());
        assert!(Client::new("https://example.com/prefix/").is_ok());
        for bad in [
            "localhost:8080",
            "ftp://x",
            "http://x/?a=1",
            "not a url",
            "",
        ] {
            assert!(
                matches!(Client::new(bad), Err(ClientError::InvalidUrl { .. })),
                "{bad} accepted"
            );
        }
    }

    #[test]
    fn endpoints_encode_segments_and_queries() {
        let c = Client::new("http://h:1/api/").unwrap();
        let u = c.endpoint(
            &["sandboxes", "sbx-a b", "files"],
            &[("path", "/work space/a+b&c.txt")],
        );
        assert_eq!(
            u.as_str(),
            "http://h:1/api/sandboxes/sbx-a%20b/files?path=/work%20space/a%2Bb%26c.txt"
        );
        let c = Client::new("http://h:1").unwrap();
        assert_eq!(c.endpoint(&["healthz"], &[]).as_str(), "http://h:1/healthz");
    }

    #[tokio::test]
    async fn follows_307_to_another_port_keeping_method_body_and_auth() {
        let worker = TestServer::start(|_req| Reply::json(201, r#"{"ok":true}"#)).await;
        let target = format!("{}/sandboxes?local_vm_id=abc", worker.url());
        let broker = TestServer::start(move |_req| Reply::redirect(307, &target)).await;

        let n = Arc::new(AtomicUsize::new(0));
        let n2 = n.clone();
        let client = Client::builder(broker.url())
            .token_provider(move || -> Result<String, BoxError> {
                Ok(format!("tok{}", n2.fetch_add(1, Ordering::SeqCst)))
            })
            .build()
            .unwrap();
        let req = Req::new(Method::POST, client.endpoint(&["sandboxes"], &[]))
            .json(&serde_json::json!({"image": "ubuntu:24.04"}));
        let v: serde_json::Value = client.send_json(req).await.unwrap();
        assert_eq!(v["ok"], true);

        let b = broker.requests();
        let w = worker.requests();
        assert_eq!(b.len(), 1);
        assert_eq!(w.len(), 1);
        assert_eq!(b[0].method, "POST");
        assert_eq!(w[0].method, "POST");
        assert_eq!(w[0].target, "/sandboxes?local_vm_id=abc");
        assert_eq!(w[0].body, br#"{"image":"ubuntu:24.04"}"#);
        assert_eq!(w[0].header("content-type"), Some("application/json"));
        // A fresh token on each hop, kept across hosts.
        assert_eq!(b[0].header("authorization"), Some("Bearer tok0"));
        assert_eq!(w[0].header("authorization"), Some("Bearer tok1"));
        assert_eq!(n.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn relative_locations_and_308_are_followed() {
        let server = TestServer::start(|req| {
            if req.target == "/a" {
                Reply::redirect(308, "b?x=1")
            } else {
                Reply::json(200, r#"{"at":"b"}"#)
            }
        })
        .await;
        let client = Client::builder(server.url())
            .token("static")
            .build()
            .unwrap();
        let req = Req::new(Method::PUT, client.endpoint(&["a"], &[]))
            .bytes(Bytes::from_static(b"raw"), "application/octet-stream");
        let v: serde_json::Value = client.send_json(req).await.unwrap();
        assert_eq!(v["at"], "b");
        let reqs = server.requests();
        assert_eq!(reqs.len(), 2);
        assert_eq!(reqs[1].target, "/b?x=1");
        assert_eq!(reqs[1].method, "PUT");
        assert_eq!(reqs[1].body, b"raw");
        assert_eq!(reqs[1].header("authorization"), Some("Bearer static"));
    }

    /// A broker that hints a VM the worker cannot claim twice, then places cold; the worker
    /// bounces hinted creates back with `placement_retry=n+1`, like the real pair.
    async fn bouncing_pair(retry_max: u32) -> (TestServer, TestServer) {
        let broker_url = LateUrl::default();
        let worker = TestServer::start({
            let broker_url = broker_url.clone();
            move |req| {
                let n: u32 = req
                    .query("placement_retry")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                if req.query("local_vm_id").is_some() {
                    Reply::redirect(
                        307,
                        &format!("{}/sandboxes?placement_retry={}", broker_url.get(), n + 1),
                    )
                } else {
                    Reply::json(201, r#"{"ok":1}"#)
                }
            }
        })
        .await;
        let worker_url = worker.url();
        let broker = TestServer::start(move |req| {
            let n: u32 = req
                .query("placement_retry")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            if n > retry_max {
                Reply::json(503, r#"{"error":"placement retry exhausted"}"#)
            } else if n < 2 {
                Reply::redirect(
                    307,
                    &format!("{worker_url}/sandboxes?local_vm_id=v{n}&placement_retry={n}"),
                )
            } else {
                Reply::redirect(307, &format!("{worker_url}/sandboxes?placement_retry={n}"))
            }
        })
        .await;
        broker_url.set(broker.url());
        (broker, worker)
    }

    #[tokio::test]
    async fn placement_retry_bounces_are_followed_within_the_bound() {
        let (broker, worker) = bouncing_pair(2).await;
        let client = Client::builder(broker.url()).token("t").build().unwrap();
        let req = Req::new(Method::POST, client.endpoint(&["sandboxes"], &[]))
            .json(&serde_json::json!({"cpu": 1}));
        let v: serde_json::Value = client.send_json(req).await.unwrap();
        assert_eq!(v["ok"], 1);
        let b: Vec<String> = broker.requests().into_iter().map(|r| r.target).collect();
        assert_eq!(
            b,
            [
                "/sandboxes",
                "/sandboxes?placement_retry=1",
                "/sandboxes?placement_retry=2"
            ]
        );
        let w = worker.requests();
        let wt: Vec<&str> = w.iter().map(|r| r.target.as_str()).collect();
        assert_eq!(
            wt,
            [
                "/sandboxes?local_vm_id=v0&placement_retry=0",
                "/sandboxes?local_vm_id=v1&placement_retry=1",
                "/sandboxes?placement_retry=2"
            ]
        );
        for r in broker.requests().iter().chain(w.iter()) {
            assert_eq!(r.method, "POST");
            assert_eq!(r.body, br#"{"cpu":1}"#);
            assert_eq!(r.header("authorization"), Some("Bearer t"));
        }
    }

    #[tokio::test]
    async fn placement_retry_exhaustion_is_an_api_error() {
        let (broker, _worker) = bouncing_pair(1).await;
        let client = Client::new(&broker.url()).unwrap();
        let req = Req::new(Method::POST, client.endpoint(&["sandboxes"], &[]))
            .json(&serde_json::json!({}));
        let err = client.send_empty(req).await.unwrap_err();
        assert!(
            matches!(err, ClientError::Api { status: 503, ref message, .. } if message == "placement retry exhausted"),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn placement_bounces_count_against_the_hop_bound() {
        let (broker, _worker) = bouncing_pair(2).await;
        // The full chain needs five hops.
        let client = Client::builder(broker.url())
            .max_redirects(4)
            .build()
            .unwrap();
        let req = Req::new(Method::POST, client.endpoint(&["sandboxes"], &[]))
            .json(&serde_json::json!({}));
        let err = client.send_empty(req).await.unwrap_err();
        assert!(
            matches!(err, ClientError::TooManyRedirects { max: 4 }),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn redirect_loops_end_with_too_many_redirects() {
        let server = TestServer::start(|_req| Reply::redirect(307, "/again")).await;
        let client = Client::builder(server.url())
            .max_redirects(3)
            .build()
            .unwrap();
        let err = client
            .send_empty(Req::new(Method::GET, client.endpoint(&["x"], &[])))
            .await
            .unwrap_err();
        assert!(
            matches!(err, ClientError::TooManyRedirects { max: 3 }),
            "{err:?}"
        );
        // The first request plus exactly three followed hops.
        assert_eq!(server.requests().len(), 4);
    }

    #[tokio::test]
    async fn redirect_without_location_is_invalid() {
        let server = TestServer::start(|_req| Reply::status(307)).await;
        let client = Client::new(&server.url()).unwrap();
        let err = client
            .send_empty(Req::new(Method::GET, client.endpoint(&["x"], &[])))
            .await
            .unwrap_err();
        assert!(
            matches!(err, ClientError::InvalidRedirect { .. }),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn same_path_rule_hands_foreign_redirects_back() {
        let server = TestServer::start(|req| {
            if req.target.starts_with("/sandboxes/s/proxy/80/app") {
                Reply::redirect(307, "/login")
            } else {
                Reply::json(200, "{}")
            }
        })
        .await;
        let client = Client::new(&server.url()).unwrap();
        let mut req = Req::new(
            Method::GET,
            client.endpoint(&["sandboxes", "s", "proxy", "80", "app"], &[]),
        );
        req.follow = Follow::SamePath;
        let resp = client.send(req).await.unwrap();
        assert_eq!(resp.status().as_u16(), 307);
        assert_eq!(server.requests().len(), 1);
    }

    #[tokio::test]
    async fn api_errors_carry_status_message_and_request_id() {
        let server = TestServer::start(|_req| {
            Reply::json(403, r#"{"error":"sandbox ownership mismatch"}"#)
                .header("X-Request-Id", "01HREQ")
        })
        .await;
        let client = Client::new(&server.url()).unwrap();
        let err = client
            .send_empty(Req::new(Method::GET, client.endpoint(&["x"], &[])))
            .await
            .unwrap_err();
        match err {
            ClientError::Api {
                status,
                message,
                request_id,
            } => {
                assert_eq!(status, 403);
                assert_eq!(message, "sandbox ownership mismatch");
                assert_eq!(request_id.as_deref(), Some("01HREQ"));
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[tokio::test]
    async fn connect_errors_are_distinct() {
        // Bind then drop a listener: nothing listens on that port any more.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let client = Client::new(&format!("http://{addr}")).unwrap();
        let err = client.health().await.unwrap_err();
        assert!(err.is_connect(), "{err:?}");
    }

    #[tokio::test]
    async fn timeouts_are_distinct() {
        let server = TestServer::start(|_req| Reply::json(200, "{}").hang()).await;
        let client = Client::builder(server.url())
            .timeout(Duration::from_millis(200))
            .build()
            .unwrap();
        let err = client.health().await.unwrap_err();
        assert!(err.is_timeout(), "{err:?}");
    }

    #[tokio::test]
    async fn undecodable_success_bodies_are_decode_errors() {
        let server = TestServer::start(|_req| Reply::json(200, "not json")).await;
        let client = Client::new(&server.url()).unwrap();
        let err = client.health().await.unwrap_err();
        assert!(matches!(err, ClientError::Decode { .. }), "{err:?}");
    }
}
