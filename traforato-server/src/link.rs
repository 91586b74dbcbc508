//! [`HttpBrokerLink`]: the worker's line to a broker over HTTP (registration, VM events,
//! VM-start requests), with a 3 s timeout per call and, when a secret is configured, a fresh
//! internal token on every call.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use reqwest::StatusCode;
use serde::de::DeserializeOwned;
use traforato_core::api::{
    HealthResponse, RegistrationRequest, RegistrationResponse, VmEventRequest, VmStartResponse,
};
use traforato_core::auth::InternalTokenSigner;
use traforato_core::id::ComponentId;
use traforato_core::worker::{BrokerLink, LinkError};

/// Budget of every call to the broker.
pub const LINK_TIMEOUT: Duration = Duration::from_secs(3);

/// Budget of a probe of the broker's `/healthz` (a GET that answers at once when it answers).
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// Most bytes of an unexpected answer kept in [`LinkError::Status`].
pub const ERROR_BODY_MAX: usize = 4096;

/// A [`BrokerLink`] over HTTP to `<control_url>/internal/workers/<id>/...`.
///
/// With a signer ([`HttpBrokerLink::with_signer`]) every call carries
/// `Authorization: Bearer <token>`, a token minted for that call alone (`sub` = the worker id,
/// `aud` = `traforato-internal`, 45 s): the broker's replay cache accepts each token once.
/// Without one (or with a signer for an empty secret) no `Authorization` is sent.
#[derive(Debug, Clone)]
pub struct HttpBrokerLink {
    client: reqwest::Client,
    control_url: String,
    signer: Option<Arc<InternalTokenSigner>>,
}

impl HttpBrokerLink {
    /// A link to the broker at `control_url` (e.g. `http://broker:8080`).
    pub fn new(control_url: &str) -> Self {
        let client = reqwest::Client::builder()
            .timeout(LINK_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap_or_else(|_| reqwest::Client::new());
        Self {
            client,
            control_url: control_url.trim().trim_end_matches('/').to_string(),
            signer: None,
        }
    }

    /// Signs every call with a fresh internal token from `signer`.
    pub fn with_signer(mut self, signer: InternalTokenSigner) -> Self {
        self.signer = Some(Arc::new(signer));
        self
    }

    /// The broker URL.
    pub fn control_url(&self) -> &str {
        &self.control_url
    }

    /// A request to `leaf` of this worker's internal routes, signed when a signer is set.
    fn request(
        &self,
        method: reqwest::Method,
        worker_id: &ComponentId,
        leaf: &str,
    ) -> reqwest::RequestBuilder {
        let url = format!(
            "{}/internal/workers/{}/{leaf}",
            self.control_url,
            worker_id.as_str()
        );
        let builder = self.client.request(method, url);
        match self
            .signer
            .as_ref()
            .and_then(|signer| signer.authorization_header(worker_id.as_str()))
        {
            Some(header) => match reqwest::header::HeaderValue::from_str(&header) {
                Ok(mut value) => {
                    // Kept out of any Debug output of the request.
                    value.set_sensitive(true);
                    builder.header(reqwest::header::AUTHORIZATION, value)
                }
                // A JWT is always a valid header value; if not, the broker answers 401.
                Err(_) => builder,
            },
            None => builder,
        }
    }

    /// Sends a signed request with an optional JSON body.
    async fn send<B: serde::Serialize + ?Sized>(
        &self,
        method: reqwest::Method,
        worker_id: &ComponentId,
        leaf: &str,
        body: Option<&B>,
    ) -> Result<reqwest::Response, LinkError> {
        let mut builder = self.request(method, worker_id, leaf);
        if let Some(body) = body {
            builder = builder.json(body);
        }
        builder.send().await.map_err(unreachable)
    }
}

fn unreachable(err: reqwest::Error) -> LinkError {
    let mut text = err.to_string();
    let mut source = std::error::Error::source(&err);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    LinkError::Unreachable(text)
}

/// Largest broker response body the worker reads.
const RESPONSE_BODY_MAX: usize = 1 << 20;

/// Reads at most `cap` bytes of the body; the flag is true when the body was longer.
async fn read_capped(
    mut resp: reqwest::Response,
    cap: usize,
) -> Result<(Vec<u8>, bool), reqwest::Error> {
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await? {
        let room = cap - body.len();
        if chunk.len() > room {
            body.extend_from_slice(&chunk[..room]);
            return Ok((body, true));
        }
        body.extend_from_slice(&chunk);
    }
    Ok((body, false))
}

async fn unexpected(resp: reqwest::Response) -> LinkError {
    let status = resp.status().as_u16();
    let (kept, _) = read_capped(resp, ERROR_BODY_MAX).await.unwrap_or_default();
    LinkError::Status {
        status,
        body: String::from_utf8_lossy(&kept).into_owned(),
    }
}

async fn decode<T: DeserializeOwned>(resp: reqwest::Response) -> Result<T, LinkError> {
    let (bytes, truncated) = read_capped(resp, RESPONSE_BODY_MAX)
        .await
        .map_err(unreachable)?;
    if truncated {
        return Err(LinkError::InvalidResponse(format!(
            "response body exceeds {RESPONSE_BODY_MAX} bytes"
        )));
    }
    serde_json::from_slice(&bytes).map_err(|err| LinkError::InvalidResponse(err.to_string()))
}

#[async_trait]
impl BrokerLink for HttpBrokerLink {
    async fn register(
        &self,
        worker_id: &ComponentId,
        request: &RegistrationRequest,
    ) -> Result<RegistrationResponse, LinkError> {
        let resp = self
            .send(
                reqwest::Method::PUT,
                worker_id,
                "registration",
                Some(request),
            )
            .await?;
        decode(expect(resp, StatusCode::OK).await?).await
    }

    async fn deregister(&self, worker_id: &ComponentId) -> Result<(), LinkError> {
        let resp = self
            .send(
                reqwest::Method::DELETE,
                worker_id,
                "registration",
                None::<&()>,
            )
            .await?;
        expect(resp, StatusCode::NO_CONTENT).await.map(drop)
    }

    async fn vm_event(
        &self,
        worker_id: &ComponentId,
        event: &VmEventRequest,
    ) -> Result<(), LinkError> {
        let resp = self
            .send(reqwest::Method::POST, worker_id, "vm-events", Some(event))
            .await?;
        expect(resp, StatusCode::NO_CONTENT).await.map(drop)
    }

    async fn vm_start(
        &self,
        worker_id: &ComponentId,
    ) -> Result<Option<VmStartResponse>, LinkError> {
        let resp = self
            .send(reqwest::Method::POST, worker_id, "vm-start", None::<&()>)
            .await?;
        match resp.status() {
            StatusCode::NO_CONTENT => Ok(None),
            StatusCode::OK => decode(resp).await.map(Some),
            _ => Err(unexpected(resp).await),
        }
    }

    /// `GET /healthz` of the broker (unauthenticated, cheap): its `instance_id`, within
    /// [`PROBE_TIMEOUT`] (a probe stuck on a partition must not delay the next one).
    async fn broker_instance(&self) -> Result<Option<String>, LinkError> {
        let resp = self
            .client
            .get(format!("{}/healthz", self.control_url))
            .timeout(PROBE_TIMEOUT)
            .send()
            .await
            .map_err(unreachable)?;
        let health: HealthResponse = decode(expect(resp, StatusCode::OK).await?).await?;
        Ok(health.instance_id)
    }
}

/// The response when its status is `want`, else the status error.
async fn expect(resp: reqwest::Response, want: StatusCode) -> Result<reqwest::Response, LinkError> {
    if resp.status() == want {
        Ok(resp)
    } else {
        Err(unexpected(resp).await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;
    use std::sync::{Arc, Mutex};
    use traforato_core::auth::{AuthConfig, InternalAuthError, InternalVerifier};

    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;
    use tokio::net::TcpListener;

    /// What the stub broker saw: method, path, body, `Authorization`.
    type Seen = Arc<Mutex<Vec<(String, String, String, Option<String>)>>>;

    /// A broker stand-in answering every request with `status` and `body`.
    async fn stub(status: u16, body: String) -> (HttpBrokerLink, Seen) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        let seen: Seen = Arc::default();
        let record = seen.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let record = record.clone();
                let body = body.clone();
                let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let record = record.clone();
                    let body = body.clone();
                    async move {
                        let method = req.method().to_string();
                        let path = req.uri().path().to_string();
                        let authorization = req
                            .headers()
                            .get("authorization")
                            .map(|v| v.to_str().unwrap().to_string());
                        let sent = req.into_body().collect().await.unwrap().to_bytes();
                        record.lock().unwrap().push((
                            method,
                            path,
                            String::from_utf8_lossy(&sent).into_owned(),
                            authorization,
                        ));
                        let mut resp = hyper::Response::new(Full::new(Bytes::from(body)));
                        *resp.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
                        Ok::<_, Infallible>(resp)
                    }
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service),
                );
            }
        });
        (HttpBrokerLink::new(&url), seen)
    }

    fn worker() -> ComponentId {
        ComponentId::parse("worker_a").unwrap()
    }

    #[tokio::test]
    async fn registers_with_a_put() {
        let answer = r#"{"worker_id":"worker_a","lease_ttl_seconds":120,"heartbeat_interval_seconds":30,"expires_at":"2026-02-25T12:02:00Z"}"#;
        let (link, seen) = stub(200, answer.to_string()).await;
        assert!(!link.control_url().ends_with('/'));
        let request = RegistrationRequest {
            hostname: "worker-a.local".into(),
            base_url: "http://worker-a.local:9090".into(),
            hardware_sku: "gpu-a100".into(),
            total_cores: 8,
            ..Default::default()
        };
        let resp = link.register(&worker(), &request).await.unwrap();
        assert_eq!(resp.lease_ttl_seconds, 120);
        let seen = seen.lock().unwrap();
        assert_eq!(seen[0].0, "PUT");
        assert_eq!(seen[0].1, "/internal/workers/worker_a/registration");
        let sent: serde_json::Value = serde_json::from_str(&seen[0].2).unwrap();
        assert_eq!(sent["base_url"], "http://worker-a.local:9090");
        assert_eq!(sent["hardware_sku"], "gpu-a100");
        assert_eq!(sent["total_cores"], 8);
    }

    #[tokio::test]
    async fn registration_needs_200_and_keeps_4_kib_of_the_answer() {
        let (link, _) = stub(503, "x".repeat(5000)).await;
        match link
            .register(&worker(), &RegistrationRequest::default())
            .await
        {
            Err(LinkError::Status { status, body }) => {
                assert_eq!(status, 503);
                assert_eq!(body.len(), ERROR_BODY_MAX);
            }
            other => panic!("unexpected {other:?}"),
        }
        let (link, _) = stub(200, "not json".into()).await;
        assert!(matches!(
            link.register(&worker(), &RegistrationRequest::default())
                .await,
            Err(LinkError::InvalidResponse(_))
        ));
        // A huge answer is refused after the cap, not read whole.
        let (link, _) = stub(200, " ".repeat(RESPONSE_BODY_MAX + 10)).await;
        match link
            .register(&worker(), &RegistrationRequest::default())
            .await
        {
            Err(LinkError::InvalidResponse(why)) => assert!(why.contains("exceeds"), "{why}"),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[tokio::test]
    async fn deregisters_and_reports_events() {
        let (link, seen) = stub(204, String::new()).await;
        link.deregister(&worker()).await.unwrap();
        let event = VmEventRequest {
            event: "ready".into(),
            local_vm_id: "550e8400-e29b-41d4-a716-446655440000".into(),
            virtualization: "fake".into(),
            image: "img".into(),
            cpu: 1,
            timestamp: None,
            capacity: None,
        };
        link.vm_event(&worker(), &event).await.unwrap();
        {
            let seen = seen.lock().unwrap();
            assert_eq!(
                (seen[0].0.as_str(), seen[0].1.as_str()),
                ("DELETE", "/internal/workers/worker_a/registration")
            );
            assert_eq!(
                (seen[1].0.as_str(), seen[1].1.as_str()),
                ("POST", "/internal/workers/worker_a/vm-events")
            );
            assert!(seen[1].2.contains("\"event\":\"ready\""));
        }
        let (link, _) = stub(200, "{}".into()).await;
        assert!(matches!(
            link.deregister(&worker()).await,
            Err(LinkError::Status { status: 200, .. })
        ));
        assert!(matches!(
            link.vm_event(&worker(), &event).await,
            Err(LinkError::Status { status: 200, .. })
        ));
    }

    #[tokio::test]
    async fn vm_start_answers() {
        let (link, seen) = stub(204, String::new()).await;
        assert_eq!(link.vm_start(&worker()).await.unwrap(), None);
        assert_eq!(
            seen.lock().unwrap()[0].1,
            "/internal/workers/worker_a/vm-start"
        );
        let (link, _) = stub(
            200,
            r#"{"virtualization":"vetu","image":"ubuntu:24.04","cpu":2}"#.into(),
        )
        .await;
        assert_eq!(
            link.vm_start(&worker()).await.unwrap(),
            Some(VmStartResponse {
                virtualization: "vetu".into(),
                image: "ubuntu:24.04".into(),
                cpu: 2,
            })
        );
        let (link, _) = stub(404, r#"{"error":"worker id unknown"}"#.into()).await;
        match link.vm_start(&worker()).await {
            Err(LinkError::Status { status, body }) => {
                assert_eq!(status, 404);
                assert!(body.contains("worker id unknown"));
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[tokio::test]
    async fn unreachable_broker() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let link = HttpBrokerLink::new(&format!("http://127.0.0.1:{port}"));
        assert!(matches!(
            link.deregister(&worker()).await,
            Err(LinkError::Unreachable(_))
        ));
    }

    #[tokio::test]
    async fn unsigned_link_sends_no_authorization() {
        let (link, seen) = stub(204, String::new()).await;
        link.deregister(&worker()).await.unwrap();
        assert_eq!(seen.lock().unwrap()[0].3, None);
        // A signer for an empty secret (dev mode) signs nothing either.
        let (link, seen) = stub(204, String::new()).await;
        let clock = Arc::new(traforato_core::clock::SystemClock);
        let link = link.with_signer(InternalTokenSigner::new(&AuthConfig::default(), clock));
        link.deregister(&worker()).await.unwrap();
        assert_eq!(seen.lock().unwrap()[0].3, None);
    }

    #[tokio::test]
    async fn every_call_carries_a_fresh_internal_token() {
        let clock = Arc::new(traforato_core::clock::SystemClock);
        let config = AuthConfig::with_secret("secret");
        let (link, seen) = stub(204, String::new()).await;
        let link = link.with_signer(InternalTokenSigner::new(&config, clock.clone()));
        let event = VmEventRequest {
            event: "claimed".into(),
            local_vm_id: "550e8400-e29b-41d4-a716-446655440000".into(),
            virtualization: "fake".into(),
            image: "img".into(),
            cpu: 1,
            timestamp: None,
            capacity: None,
        };
        link.vm_event(&worker(), &event).await.unwrap();
        link.vm_start(&worker()).await.unwrap();
        link.deregister(&worker()).await.unwrap();
        // A registration answer must decode, so it goes to its own stub.
        let answer = r#"{"worker_id":"worker_a","lease_ttl_seconds":120,"heartbeat_interval_seconds":30,"expires_at":"2026-02-25T12:02:00Z"}"#;
        let (register_link, register_seen) = stub(200, answer.into()).await;
        let register_link =
            register_link.with_signer(InternalTokenSigner::new(&config, clock.clone()));
        register_link
            .register(&worker(), &RegistrationRequest::default())
            .await
            .unwrap();

        let mut headers: Vec<String> = seen
            .lock()
            .unwrap()
            .iter()
            .map(|s| s.3.clone().expect("an Authorization header"))
            .collect();
        headers.push(register_seen.lock().unwrap()[0].3.clone().unwrap());
        assert_eq!(headers.len(), 4);
        // One verifier (one replay cache) accepts each exactly once: every call had its own.
        let verifier = InternalVerifier::new(&config, clock);
        for header in &headers {
            assert!(header.starts_with("Bearer "), "{header}");
            verifier.verify(Some(header), "worker_a").unwrap();
        }
        assert!(verifier.verify(Some(&headers[0]), "worker_a").is_err());
        // Tokens are for this worker only.
        let other = InternalVerifier::new(&config, Arc::new(traforato_core::clock::SystemClock));
        assert_eq!(
            other.verify(Some(&headers[1]), "worker_b"),
            Err(InternalAuthError::SubjectMismatch)
        );
    }

    #[test]
    fn debug_shows_no_key() {
        let clock = Arc::new(traforato_core::clock::SystemClock);
        let link = HttpBrokerLink::new("http://b:1").with_signer(InternalTokenSigner::new(
            &AuthConfig::with_secret("hunter2-secret"),
            clock,
        ));
        let shown = format!("{link:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
    }
}
