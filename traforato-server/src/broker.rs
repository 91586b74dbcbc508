//! The broker shell: the route table of the contract (§3.2) mapped onto [`Broker`] methods,
//! plus `/healthz`, `/metrics` and `/metrics/sandboxes`. Creates and sandbox-scoped requests
//! are answered with `307` redirects that carry this span's `traceparent`/`tracestate`.
//!
//! Authentication ([`BrokerAuth`]): in prod, a client JWT on `POST /sandboxes` only (the
//! broker never sees sandbox traffic, it only redirects it); an internal token on every
//! `/internal/workers/{id}/...` call whenever a secret is configured.

use std::future::Future;
use std::io;
use std::sync::Arc;

use hyper::{Method, Request, StatusCode};
use tokio::net::TcpListener;
use tracing::Instrument;
use traforato_core::api::{
    CreateSandboxRequest, HealthResponse, RegistrationRequest, VmEventRequest,
};
use traforato_core::auth::{AuthConfig, AuthMode, ClientAuthenticator, InternalVerifier};
use traforato_core::broker::{Broker, BrokerError};
use traforato_core::clock::{Clock, SystemClock};
use traforato_core::id::ComponentId;

use crate::http::{
    decode_json, error_for, error_response, header_str, json_response, percent_decode, read_body,
    redirect, segments, status_only, text_response, BodyError, HttpResponse, Query, RequestContext,
    CREATE_BODY_MAX, INTERNAL_BODY_MAX, PLAIN_TEXT, PROMETHEUS_TEXT,
};
use crate::linger::RequestBody;
use crate::server::{serve, ConnInfo};

/// The broker's authentication: the client token check of creates and the internal token
/// check of worker calls, each with its own replay cache (one for all internal routes).
pub struct BrokerAuth {
    clients: ClientAuthenticator,
    internal: InternalVerifier,
}

impl BrokerAuth {
    /// Authentication for `config` (prod when its secret is not empty), with time from
    /// `clock`: use the broker's clock.
    pub fn new(config: &AuthConfig, clock: Arc<dyn Clock>) -> Self {
        Self {
            clients: ClientAuthenticator::new(config, clock.clone()),
            internal: InternalVerifier::new(config, clock),
        }
    }

    /// No authentication at all (development mode).
    pub fn dev() -> Self {
        Self::new(&AuthConfig::default(), Arc::new(SystemClock))
    }

    /// Dev or prod (client tokens).
    pub fn mode(&self) -> AuthMode {
        self.clients.mode()
    }

    /// Whether internal worker calls must carry a token.
    pub fn internal_enabled(&self) -> bool {
        self.internal.is_enabled()
    }
}

impl std::fmt::Debug for BrokerAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerAuth")
            .field("mode", &self.mode())
            .field("internal_enabled", &self.internal_enabled())
            .finish_non_exhaustive()
    }
}

/// Serves the broker on `listener` in development mode (no authentication) until `shutdown`
/// completes. A broker configured for prod (`prod_mode`) is refused: use
/// [`serve_broker_with_auth`].
pub async fn serve_broker(
    listener: TcpListener,
    broker: Arc<Broker>,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    serve_broker_with_auth(listener, broker, BrokerAuth::dev(), shutdown).await
}

/// Serves the broker on `listener` with `auth` until `shutdown` completes. The broker's
/// `prod_mode` must agree with the mode of `auth` (an `InvalidInput` error otherwise), so a
/// prod broker is never served without client authentication.
pub async fn serve_broker_with_auth(
    listener: TcpListener,
    broker: Arc<Broker>,
    auth: BrokerAuth,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    if broker.config().prod_mode != auth.mode().is_prod() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "broker prod_mode is {} but its authentication is in {} mode",
                broker.config().prod_mode,
                auth.mode().as_str()
            ),
        ));
    }
    let auth = Arc::new(auth);
    serve(
        listener,
        move |req, conn| handle(broker.clone(), auth.clone(), req, conn),
        shutdown,
    )
    .await
}

/// Waits until `broker` counts `worker_id` as active, at most `limit`: whether it did.
pub async fn wait_for_worker(broker: &Broker, worker_id: &str, limit: std::time::Duration) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if broker.is_worker_active(worker_id) {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

/// Logs the startup warnings of a broker's auth settings: the loud development-mode warning,
/// and that internal worker calls are not authenticated. Secrets are never logged.
pub fn log_auth_warnings(auth: &BrokerAuth) {
    if auth.mode() == AuthMode::Dev {
        tracing::warn!(
            auth_mode = "dev",
            "auth disabled: running broker in development no-auth mode"
        );
    }
    if !auth.internal_enabled() {
        tracing::warn!(
            endpoint = "/internal/workers/{worker_id}/vm-events",
            "internal worker callback auth disabled"
        );
    }
}

/// The status code of each broker error.
pub fn status_for(err: &BrokerError) -> StatusCode {
    match err {
        BrokerError::MalformedSandboxId => StatusCode::BAD_REQUEST,
        BrokerError::BrokerIdMismatch => StatusCode::NOT_FOUND,
        BrokerError::WorkerUnknown => StatusCode::NOT_FOUND,
        BrokerError::WorkerUnavailable => StatusCode::SERVICE_UNAVAILABLE,
        BrokerError::WorkerNotYetRegistered => StatusCode::SERVICE_UNAVAILABLE,
        BrokerError::InvalidPlacementRetry => StatusCode::BAD_REQUEST,
        BrokerError::PlacementRetryExhausted => StatusCode::SERVICE_UNAVAILABLE,
        BrokerError::NoPlacementCapacity => StatusCode::SERVICE_UNAVAILABLE,
        BrokerError::VirtualizationUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        BrokerError::RedirectUrl => StatusCode::INTERNAL_SERVER_ERROR,
        BrokerError::InvalidWorkerId => StatusCode::BAD_REQUEST,
        BrokerError::InvalidRegistration(_) => StatusCode::BAD_REQUEST,
        BrokerError::WorkerMustSelfRegister => StatusCode::UNAUTHORIZED,
        BrokerError::InvalidVmEvent => StatusCode::BAD_REQUEST,
    }
}

fn broker_error(err: &BrokerError) -> HttpResponse {
    let mut response = error_for(status_for(err), err);
    if matches!(err, BrokerError::WorkerNotYetRegistered) {
        // Workers register again within a second when they probe.
        response.headers_mut().insert(
            http::header::RETRY_AFTER,
            http::HeaderValue::from_static("1"),
        );
    }
    response
}

/// The leaf of an internal worker route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InternalLeaf {
    /// `registration`.
    Registration,
    /// `vm-events`.
    VmEvents,
    /// `vm-start`.
    VmStart,
}

/// What a request asks of the broker: the route table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BrokerRoute {
    /// `GET /healthz`.
    Health,
    /// `GET /metrics`: Prometheus text.
    Metrics,
    /// `GET /metrics/sandboxes`: the availability text.
    Availability,
    /// `PUT /internal/workers/{id}/registration`.
    Register(String),
    /// `DELETE /internal/workers/{id}/registration`.
    Deregister(String),
    /// `POST /internal/workers/{id}/vm-events`.
    VmEvent(String),
    /// `POST /internal/workers/{id}/vm-start`.
    VmStart(String),
    /// An internal route with the wrong method: 405.
    MethodNotAllowed,
    /// `ANY /sandboxes/{id}/...`: redirect to the owning worker.
    SandboxScoped(String),
    /// `POST /sandboxes`.
    Create,
    /// Anything else: 404.
    NotFound,
}

impl BrokerRoute {
    /// Routes a request by method and percent-decoded path. There is no `?sandbox_id=`
    /// shortcut: only the path decides.
    pub fn parse(method: &Method, path: &str) -> Self {
        if method == Method::GET {
            match path {
                "/healthz" => return Self::Health,
                "/metrics" => return Self::Metrics,
                "/metrics/sandboxes" => return Self::Availability,
                _ => {}
            }
        }
        let segs = segments(path);
        if let ["internal", "workers", id, leaf] = segs.as_slice() {
            let id = id.trim();
            let leaf = match *leaf {
                "registration" => Some(InternalLeaf::Registration),
                "vm-events" => Some(InternalLeaf::VmEvents),
                "vm-start" => Some(InternalLeaf::VmStart),
                _ => None,
            };
            if let (false, Some(leaf)) = (id.is_empty(), leaf) {
                let id = id.to_string();
                return match (leaf, method) {
                    (InternalLeaf::Registration, &Method::PUT) => Self::Register(id),
                    (InternalLeaf::Registration, &Method::DELETE) => Self::Deregister(id),
                    (InternalLeaf::VmEvents, &Method::POST) => Self::VmEvent(id),
                    (InternalLeaf::VmStart, &Method::POST) => Self::VmStart(id),
                    _ => Self::MethodNotAllowed,
                };
            }
        }
        if segs.len() >= 2 && segs[0] == "sandboxes" {
            return Self::SandboxScoped(segs[1].to_string());
        }
        if method == Method::POST && path == "/sandboxes" {
            return Self::Create;
        }
        Self::NotFound
    }
}

async fn handle(
    broker: Arc<Broker>,
    auth: Arc<BrokerAuth>,
    req: Request<RequestBody>,
    _conn: ConnInfo,
) -> HttpResponse {
    let ctx = RequestContext::from_headers(req.headers());
    let auth_mode = auth.mode().as_str();
    let span = tracing::info_span!(
        "broker.request",
        request_id = %ctx.request_id,
        trace_id = %ctx.trace.trace_id,
        span_id = %ctx.trace.span_id,
        auth_mode,
    );
    let mut resp = dispatch(&broker, &auth, req, &ctx).instrument(span).await;
    ctx.stamp(&mut resp);
    resp
}

/// The worker id of an internal route, and its 401 message (which names the route, never
/// the cause).
fn internal_call(route: &BrokerRoute) -> Option<(&str, &'static str)> {
    match route {
        BrokerRoute::Register(id) => Some((id, "unauthorized registration")),
        BrokerRoute::Deregister(id) => Some((id, "unauthorized deregistration")),
        BrokerRoute::VmEvent(id) => Some((id, "unauthorized internal callback")),
        BrokerRoute::VmStart(id) => Some((id, "unauthorized vm start request")),
        _ => None,
    }
}

async fn dispatch(
    broker: &Broker,
    auth: &BrokerAuth,
    req: Request<RequestBody>,
    ctx: &RequestContext,
) -> HttpResponse {
    let path = percent_decode(req.uri().path());
    let route = BrokerRoute::parse(req.method(), &path);
    // Every internal call carries a token for the worker of its path (unless disabled).
    if let Some((worker_id, denial)) = internal_call(&route) {
        let authorization = header_str(req.headers(), "authorization");
        if let Err(err) = auth.internal.verify(authorization, worker_id) {
            // The cause is logged (it never quotes the token); the answer hides it.
            tracing::warn!(
                worker_id,
                path = %path,
                auth_error = %err,
                answer = denial,
                "internal worker call refused"
            );
            return error_response(StatusCode::UNAUTHORIZED, denial);
        }
    }
    match route {
        BrokerRoute::Health => json_response(
            StatusCode::OK,
            &HealthResponse {
                status: "ok".to_string(),
                instance_id: Some(broker.instance_id().to_string()),
            },
        ),
        BrokerRoute::Metrics => text_response(
            StatusCode::OK,
            PROMETHEUS_TEXT,
            broker.metrics().render_prometheus(),
        ),
        BrokerRoute::Availability => {
            text_response(StatusCode::OK, PLAIN_TEXT, broker.availability_text())
        }
        BrokerRoute::Register(id) => register(broker, &id, req).await,
        BrokerRoute::Deregister(id) => {
            broker.deregister_worker(&id);
            status_only(StatusCode::NO_CONTENT)
        }
        BrokerRoute::VmEvent(id) => vm_event(broker, &id, req).await,
        BrokerRoute::VmStart(id) => match broker.next_vm_start(&id) {
            Ok(None) => status_only(StatusCode::NO_CONTENT),
            Ok(Some(start)) => json_response(StatusCode::OK, &start),
            Err(err) => broker_error(&err),
        },
        BrokerRoute::MethodNotAllowed => {
            error_response(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
        }
        BrokerRoute::SandboxScoped(sandbox_id) => {
            match broker.route_sandbox(&sandbox_id, &path, req.uri().query()) {
                Ok(target) => traced_redirect(&target.location, ctx),
                Err(err) => broker_error(&err),
            }
        }
        BrokerRoute::Create => create(broker, auth, req, ctx).await,
        BrokerRoute::NotFound => error_response(StatusCode::NOT_FOUND, "route not found"),
    }
}

fn traced_redirect(location: &str, ctx: &RequestContext) -> HttpResponse {
    let mut resp = redirect(location);
    if resp.status() == StatusCode::TEMPORARY_REDIRECT {
        ctx.add_trace_headers(&mut resp);
    }
    resp
}

/// Reads and decodes a JSON body; every failure is 400 `invalid request body`, as the
/// internal routes of the contract have it.
async fn internal_body<T: serde::de::DeserializeOwned>(
    req: Request<RequestBody>,
) -> Result<T, HttpResponse> {
    let invalid = || error_response(StatusCode::BAD_REQUEST, "invalid request body");
    let bytes = read_body(req.into_body(), INTERNAL_BODY_MAX)
        .await
        .map_err(|_| invalid())?;
    decode_json(&bytes).map_err(|_| invalid())
}

async fn register(broker: &Broker, worker_id: &str, req: Request<RequestBody>) -> HttpResponse {
    if ComponentId::parse(worker_id).is_err() {
        return broker_error(&BrokerError::InvalidWorkerId);
    }
    let request: RegistrationRequest = match internal_body(req).await {
        Ok(request) => request,
        Err(resp) => return resp,
    };
    match broker.register_worker(worker_id, request) {
        Ok(resp) => json_response(StatusCode::OK, &resp),
        Err(err) => broker_error(&err),
    }
}

async fn vm_event(broker: &Broker, worker_id: &str, req: Request<RequestBody>) -> HttpResponse {
    let event: VmEventRequest = match internal_body(req).await {
        Ok(event) => event,
        Err(resp) => return resp,
    };
    match broker.apply_vm_event(worker_id, event) {
        Ok(()) => status_only(StatusCode::NO_CONTENT),
        Err(err) => broker_error(&err),
    }
}

async fn create(
    broker: &Broker,
    auth: &BrokerAuth,
    req: Request<RequestBody>,
    ctx: &RequestContext,
) -> HttpResponse {
    // The broker checks client tokens here only; in dev mode this always succeeds.
    if let Err(err) = auth
        .clients
        .authenticate(header_str(req.headers(), "authorization"))
    {
        tracing::warn!(
            method = %req.method(),
            path = req.uri().path(),
            auth_error = %err,
            "authentication failed"
        );
        return error_response(StatusCode::UNAUTHORIZED, &err.to_string());
    }
    let query = Query::parse(req.uri().query());
    let bytes = match read_body(req.into_body(), CREATE_BODY_MAX).await {
        Ok(bytes) => bytes,
        Err(err @ BodyError::TooLarge) | Err(err @ BodyError::Read(_)) => {
            return error_response(StatusCode::BAD_REQUEST, &err.to_string())
        }
    };
    let request: CreateSandboxRequest = match decode_json(&bytes) {
        Ok(request) => request,
        Err(_) => return error_response(StatusCode::BAD_REQUEST, "invalid request body"),
    };
    let placement = tracing::info_span!("broker.placement")
        .in_scope(|| broker.place_create(&request, query.get("placement_retry")));
    match placement {
        Ok(placement) => traced_redirect(&placement.location, ctx),
        Err(err) => broker_error(&err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(method: Method, path: &str) -> BrokerRoute {
        BrokerRoute::parse(&method, path)
    }

    #[test]
    fn fixed_routes() {
        assert_eq!(route(Method::GET, "/healthz"), BrokerRoute::Health);
        assert_eq!(route(Method::GET, "/metrics"), BrokerRoute::Metrics);
        assert_eq!(
            route(Method::GET, "/metrics/sandboxes"),
            BrokerRoute::Availability
        );
        assert_eq!(
            route(Method::HEAD, "/metrics/sandboxes"),
            BrokerRoute::NotFound
        );
        assert_eq!(route(Method::POST, "/healthz"), BrokerRoute::NotFound);
        assert_eq!(route(Method::GET, "/healthz/"), BrokerRoute::NotFound);
        assert_eq!(route(Method::GET, "/sandboxes"), BrokerRoute::NotFound);
    }

    #[test]
    fn internal_routes_and_405() {
        let p = "/internal/workers/worker_a/registration";
        assert_eq!(
            route(Method::PUT, p),
            BrokerRoute::Register("worker_a".into())
        );
        assert_eq!(
            route(Method::DELETE, p),
            BrokerRoute::Deregister("worker_a".into())
        );
        assert_eq!(route(Method::GET, p), BrokerRoute::MethodNotAllowed);
        assert_eq!(
            route(Method::POST, "/internal/workers/worker_a/vm-events"),
            BrokerRoute::VmEvent("worker_a".into())
        );
        assert_eq!(
            route(Method::PUT, "/internal/workers/worker_a/vm-events"),
            BrokerRoute::MethodNotAllowed
        );
        assert_eq!(
            route(Method::POST, "/internal/workers/worker_a/vm-start"),
            BrokerRoute::VmStart("worker_a".into())
        );
        assert_eq!(
            route(Method::GET, "/internal/workers/worker_a/vm-start"),
            BrokerRoute::MethodNotAllowed
        );
        // Other leaves, blank ids and other segment counts are not internal routes.
        assert_eq!(
            route(Method::POST, "/internal/workers/worker_a/other"),
            BrokerRoute::NotFound
        );
        assert_eq!(
            route(Method::POST, "/internal/workers/ /vm-start"),
            BrokerRoute::NotFound
        );
        assert_eq!(
            route(Method::POST, "/internal/workers/worker_a/vm-start/x"),
            BrokerRoute::NotFound
        );
    }

    #[test]
    fn sandbox_scoped_and_create() {
        assert_eq!(
            route(Method::DELETE, "/sandboxes/sbx-x/files"),
            BrokerRoute::SandboxScoped("sbx-x".into())
        );
        assert_eq!(
            route(Method::GET, "/sandboxes/not-an-id"),
            BrokerRoute::SandboxScoped("not-an-id".into())
        );
        assert_eq!(route(Method::POST, "/sandboxes"), BrokerRoute::Create);
        // A trailing slash does not match create.
        assert_eq!(route(Method::POST, "/sandboxes/"), BrokerRoute::NotFound);
        assert_eq!(route(Method::PUT, "/sandboxes"), BrokerRoute::NotFound);
    }

    #[test]
    fn error_statuses() {
        assert_eq!(
            status_for(&BrokerError::MalformedSandboxId),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            status_for(&BrokerError::BrokerIdMismatch),
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            status_for(&BrokerError::WorkerUnknown),
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            status_for(&BrokerError::WorkerUnavailable),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            status_for(&BrokerError::PlacementRetryExhausted),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            status_for(&BrokerError::NoPlacementCapacity),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            status_for(&BrokerError::VirtualizationUnavailable("tart".into())),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            status_for(&BrokerError::RedirectUrl),
            StatusCode::INTERNAL_SERVER_ERROR
        );
        assert_eq!(
            status_for(&BrokerError::InvalidRegistration("hostname is required")),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            status_for(&BrokerError::WorkerMustSelfRegister),
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            status_for(&BrokerError::InvalidVmEvent),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            status_for(&BrokerError::InvalidPlacementRetry),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            status_for(&BrokerError::InvalidWorkerId),
            StatusCode::BAD_REQUEST
        );
    }
}
