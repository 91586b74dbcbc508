//! The worker shell: the route table of the contract (§4.3) mapped onto [`Worker`] methods,
//! plus `/healthz`, `/metrics`, the raw file download extension
//! `GET /sandboxes/{id}/files/raw?path=` and the operator's image routes (`GET /images`,
//! `POST /images`, `DELETE /images?ref=`).
//!
//! Authentication: every request but `GET /healthz` and `GET /metrics` is authenticated
//! **before** routing (so in prod an unknown route without a token is 401, not 404), and the
//! resulting [`Principal`] is handed to every [`Worker`] method, which enforces ownership.

use std::future::Future;
use std::io;
use std::sync::Arc;

use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use tokio::net::TcpListener;
use tracing::Instrument;
use traforato_core::api::{
    CreateSandboxRequest, ExecAccepted, ExecRequest, ExecResizeRequest, ExecSignalRequest,
    ExecStdinJson, HealthResponse, MkdirRequest, NetworkPolicy, PortUrlResponse, PullImage,
    RunCodeRequest, WriteFileJson,
};
use traforato_core::auth::{
    AuthConfig, AuthError, AuthMode, ClientAuthenticator, Principal, TicketError,
};
use traforato_core::backend::{BoxedReader, TerminalSize, WriteMode};
use traforato_core::clock::SystemClock;
use traforato_core::id::{ExecId, SandboxId};
use traforato_core::telemetry::AuthFailureLabels;
use traforato_core::worker::{CreateOutcome, RunCodeOutcome, Worker, WorkerError};

use crate::decode::{self, RequestError};
use crate::events::{frame_events, resume_cursor, wants_event_stream};
use crate::http::{
    decode_json, error_for, error_response, first_header_element, header_str, json_response,
    percent_decode, read_body, redirect, segments, status_only, text_response, BodyError,
    HttpResponse, Query, ReaderBody, RequestContext, CREATE_BODY_MAX, EXEC_BODY_MAX, FILE_BODY_MAX,
    MKDIR_BODY_MAX, PROMETHEUS_TEXT, RUN_CODE_BODY_MAX,
};
use crate::linger::RequestBody;
use crate::server::{serve, ConnInfo};

/// Serves the worker on `listener` in development mode (no authentication) until
/// `shutdown` completes. A worker configured for prod is refused: use
/// [`serve_worker_with_auth`]. Start [`Worker::run`] once this listener is bound, so the
/// worker registers only when it can be reached.
pub async fn serve_worker(
    listener: TcpListener,
    worker: Arc<Worker>,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let clients = ClientAuthenticator::new(&AuthConfig::default(), Arc::new(SystemClock));
    serve_worker_with_auth(listener, worker, clients, shutdown).await
}

/// Serves the worker on `listener`, authenticating clients with `clients` (built with the
/// worker's clock; it owns the worker's replay cache), until `shutdown` completes. The worker's `auth_mode` must agree with the mode of `clients` (an
/// `InvalidInput` error otherwise), so ownership is never enforced against anonymous
/// principals nor skipped in prod.
pub async fn serve_worker_with_auth(
    listener: TcpListener,
    worker: Arc<Worker>,
    clients: ClientAuthenticator,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    if worker.config().auth_mode != clients.mode() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "worker auth_mode is {} but its authenticator is in {} mode",
                worker.config().auth_mode.as_str(),
                clients.mode().as_str()
            ),
        ));
    }
    let clients = Arc::new(clients);
    serve(
        listener,
        move |req, conn| handle(worker.clone(), clients.clone(), req, conn),
        shutdown,
    )
    .await
}

/// Logs the loud startup warning of a worker in development (no-auth) mode.
pub fn log_auth_warnings(mode: AuthMode) {
    if mode == AuthMode::Dev {
        tracing::warn!(
            auth_mode = "dev",
            "auth disabled: running worker in development no-auth mode"
        );
    }
}

/// The status code of each worker error.
pub fn status_for(err: &WorkerError) -> StatusCode {
    match err {
        WorkerError::SandboxNotFound => StatusCode::NOT_FOUND,
        WorkerError::OwnershipMismatch => StatusCode::FORBIDDEN,
        WorkerError::ImageRequired => StatusCode::BAD_REQUEST,
        WorkerError::UnsupportedVirtualization(_) => StatusCode::BAD_REQUEST,
        WorkerError::NoCapacity(_) | WorkerError::BackendNoCapacity(_) => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        WorkerError::UnableToRetryPlacement => StatusCode::SERVICE_UNAVAILABLE,
        WorkerError::ImageNotFound(_) => StatusCode::NOT_FOUND,
        WorkerError::NotAnOperator => StatusCode::FORBIDDEN,
        WorkerError::InvalidNetwork(_) => StatusCode::BAD_REQUEST,
        WorkerError::EgressNotAllowed { .. } => StatusCode::FORBIDDEN,
        WorkerError::ImageInUse(_) => StatusCode::CONFLICT,
        WorkerError::InvalidImage(_) => StatusCode::BAD_REQUEST,
        WorkerError::ImagesUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        WorkerError::ImagePullFailed(_) => StatusCode::BAD_GATEWAY,
        WorkerError::InvalidCreate(_) => StatusCode::BAD_REQUEST,
        WorkerError::ProvisionFailed(_) => StatusCode::SERVICE_UNAVAILABLE,
        WorkerError::RegistryUnreachable(_) => StatusCode::BAD_GATEWAY,
        WorkerError::InvalidTtl => StatusCode::BAD_REQUEST,
        WorkerError::ExecNotFound => StatusCode::NOT_FOUND,
        WorkerError::InvalidExec(_) => StatusCode::BAD_REQUEST,
        WorkerError::TooManyExecs(_) => StatusCode::TOO_MANY_REQUESTS,
        WorkerError::InvalidSession => StatusCode::BAD_REQUEST,
        WorkerError::SessionNotFound(_) => StatusCode::NOT_FOUND,
        WorkerError::SessionConflict(_) => StatusCode::CONFLICT,
        WorkerError::Ticket(TicketError::TooMany) => StatusCode::TOO_MANY_REQUESTS,
        WorkerError::Ticket(_) => StatusCode::INTERNAL_SERVER_ERROR,
        WorkerError::ExecExited => StatusCode::CONFLICT,
        WorkerError::StdinClosed => StatusCode::CONFLICT,
        WorkerError::NotATerminal => StatusCode::CONFLICT,
        WorkerError::ExecNotControllable => StatusCode::CONFLICT,
        WorkerError::Unsupported(_) => StatusCode::NOT_IMPLEMENTED,
        WorkerError::InvalidRuntime => StatusCode::BAD_REQUEST,
        WorkerError::CodeRequired => StatusCode::BAD_REQUEST,
        WorkerError::CodeTooLarge => StatusCode::BAD_REQUEST,
        WorkerError::InvalidPath(_) => StatusCode::BAD_REQUEST,
        WorkerError::FileNotFound => StatusCode::NOT_FOUND,
        WorkerError::DirectoryNotFound => StatusCode::NOT_FOUND,
        WorkerError::PathNotFound => StatusCode::NOT_FOUND,
        WorkerError::ParentNotFound => StatusCode::NOT_FOUND,
        WorkerError::PathIsDirectory => StatusCode::BAD_REQUEST,
        WorkerError::PathIsFile => StatusCode::BAD_REQUEST,
        WorkerError::DirectoryNotEmpty => StatusCode::CONFLICT,
        WorkerError::CannotRemoveRoot => StatusCode::BAD_REQUEST,
        WorkerError::InvalidLimit => StatusCode::BAD_REQUEST,
        WorkerError::FileTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        WorkerError::ListingTooLarge => StatusCode::BAD_REQUEST,
        WorkerError::PermissionDenied => StatusCode::FORBIDDEN,
        WorkerError::Encoding(_) => StatusCode::BAD_REQUEST,
        WorkerError::RunRefused(_) => StatusCode::BAD_REQUEST,
        WorkerError::UpstreamUnreachable => StatusCode::BAD_GATEWAY,
        WorkerError::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
        WorkerError::Backend(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// The error response of a worker error: its status and its (generic) message; 5xx causes
/// are logged.
pub fn worker_error(err: &WorkerError) -> HttpResponse {
    error_for(status_for(err), err)
}

/// An operation on one sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SandboxOp<'a> {
    /// `GET /sandboxes/{id}`.
    Get,
    /// `DELETE /sandboxes/{id}`.
    Delete,
    /// `PATCH /sandboxes/{id}/lease`.
    RenewLease,
    /// `PATCH /sandboxes/{id}/network`.
    SetNetwork,
    /// `PUT /sandboxes/{id}/files`.
    WriteFile,
    /// `GET /sandboxes/{id}/files`.
    ReadFile,
    /// `DELETE /sandboxes/{id}/files`.
    RemoveFile,
    /// `GET /sandboxes/{id}/files/raw` (extension: streamed download).
    ReadFileRaw,
    /// `GET /sandboxes/{id}/files/stat`.
    Stat,
    /// `GET /sandboxes/{id}/files/list`.
    List,
    /// `POST /sandboxes/{id}/files/mkdir`.
    Mkdir,
    /// `POST /sandboxes/{id}/exec`.
    Exec,
    /// `GET /sandboxes/{id}/exec`: the sandbox's execs.
    ListExecs,
    /// `POST /sandboxes/{id}/exec/code`.
    RunCode,
    /// `GET /sandboxes/{id}/exec/ws`: the exec WebSocket ([`crate::exec_ws`]).
    ExecWebSocket,
    /// `GET /sandboxes/{id}/exec/ws/url`: where a browser opens an exec WebSocket.
    ExecWebSocketUrl,
    /// `GET /sandboxes/{id}/exec/{exec_id}`.
    GetExec(&'a str),
    /// `GET /sandboxes/{id}/exec/{exec_id}/frames` (JSON, or Server-Sent Events with
    /// `Accept: text/event-stream`).
    Frames(&'a str),
    /// `POST /sandboxes/{id}/exec/{exec_id}/stdin`.
    ExecStdin(&'a str),
    /// `POST /sandboxes/{id}/exec/{exec_id}/signal`.
    SignalExec(&'a str),
    /// `POST /sandboxes/{id}/exec/{exec_id}/resize`.
    ResizeExec(&'a str),
    /// `ANY /sandboxes/{id}/proxy/{port}[/rest]`.
    Proxy(&'a str),
    /// `GET /sandboxes/{id}/ports/{port}/url`.
    PortUrl(&'a str),
}

/// What a request asks of the worker: the route table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkerRoute<'a> {
    /// `GET /healthz`.
    Health,
    /// `GET /metrics`.
    Metrics,
    /// `POST /sandboxes` (or `/sandboxes/`).
    Create,
    /// `GET /images`: the images held (operators).
    Images,
    /// `POST /images`: pull an image (operators).
    PullImage,
    /// `DELETE /images?ref=`: remove an image (operators).
    RemoveImage,
    /// Segment 2 is not a sandbox id: 400.
    MalformedSandboxId(&'a str),
    /// An operation on a sandbox (segment 2, parsed).
    Sandbox(SandboxId, SandboxOp<'a>),
    /// Anything else: 404.
    NotFound,
}

impl<'a> WorkerRoute<'a> {
    /// Routes a request by method and percent-decoded path.
    pub fn parse(method: &Method, path: &'a str) -> Self {
        if method == Method::GET {
            match path {
                "/healthz" => return Self::Health,
                "/metrics" => return Self::Metrics,
                _ => {}
            }
        }
        let segs = segments(path);
        if segs.as_slice() == ["sandboxes"] && method == Method::POST {
            return Self::Create;
        }
        if segs.as_slice() == ["images"] {
            return match *method {
                Method::GET => Self::Images,
                Method::POST => Self::PullImage,
                Method::DELETE => Self::RemoveImage,
                _ => Self::NotFound,
            };
        }
        if segs.len() < 2 || segs[0] != "sandboxes" {
            return Self::NotFound;
        }
        let Ok(id) = SandboxId::parse(segs[1]) else {
            return Self::MalformedSandboxId(segs[1]);
        };
        let op = match (method, &segs[2..]) {
            (&Method::GET, []) => SandboxOp::Get,
            (&Method::DELETE, []) => SandboxOp::Delete,
            (&Method::PATCH, ["lease"]) => SandboxOp::RenewLease,
            (&Method::PATCH, ["network"]) => SandboxOp::SetNetwork,
            (&Method::PUT, ["files"]) => SandboxOp::WriteFile,
            (&Method::GET, ["files"]) => SandboxOp::ReadFile,
            (&Method::DELETE, ["files"]) => SandboxOp::RemoveFile,
            (&Method::GET, ["files", "raw"]) => SandboxOp::ReadFileRaw,
            (&Method::GET, ["files", "stat"]) => SandboxOp::Stat,
            (&Method::GET, ["files", "list"]) => SandboxOp::List,
            (&Method::POST, ["files", "mkdir"]) => SandboxOp::Mkdir,
            (&Method::POST, ["exec"]) => SandboxOp::Exec,
            (&Method::GET, ["exec"]) => SandboxOp::ListExecs,
            (&Method::POST, ["exec", "code"]) => SandboxOp::RunCode,
            (&Method::GET, ["exec", "ws"]) => SandboxOp::ExecWebSocket,
            (&Method::GET, ["exec", "ws", "url"]) => SandboxOp::ExecWebSocketUrl,
            (&Method::GET, ["exec", exec_id]) => SandboxOp::GetExec(exec_id),
            (&Method::GET, ["exec", exec_id, "frames"]) => SandboxOp::Frames(exec_id),
            (&Method::POST, ["exec", exec_id, "stdin"]) => SandboxOp::ExecStdin(exec_id),
            (&Method::POST, ["exec", exec_id, "signal"]) => SandboxOp::SignalExec(exec_id),
            (&Method::POST, ["exec", exec_id, "resize"]) => SandboxOp::ResizeExec(exec_id),
            (_, ["proxy", port, ..]) => SandboxOp::Proxy(port),
            (&Method::GET, ["ports", port, "url"]) => SandboxOp::PortUrl(port),
            _ => return Self::NotFound,
        };
        Self::Sandbox(id, op)
    }
}

async fn handle(
    worker: Arc<Worker>,
    clients: Arc<ClientAuthenticator>,
    req: Request<RequestBody>,
    conn: ConnInfo,
) -> HttpResponse {
    let ctx = RequestContext::from_headers(req.headers());
    let span = tracing::info_span!(
        "worker.request",
        request_id = %ctx.request_id,
        trace_id = %ctx.trace.trace_id,
        span_id = %ctx.trace.span_id,
        auth_mode = worker.config().auth_mode.as_str(),
        worker_id = %worker.config().worker_id,
    );
    let mut resp = dispatch(&worker, &clients, req, &conn)
        .instrument(span)
        .await;
    ctx.stamp(&mut resp);
    resp
}

/// The principal of a request: [`Principal::dev`] in dev mode, else the `client_id` of a
/// valid, unused client token. A failure is counted and logged (method, path and the
/// reason, never the token); the caller answers 401 with the reason.
fn authenticate(
    worker: &Worker,
    clients: &ClientAuthenticator,
    req: &Request<RequestBody>,
) -> Result<Principal, AuthError> {
    clients
        .authenticate(header_str(req.headers(), "authorization"))
        .inspect_err(|err| count_auth_failure(worker, req, "jwt", err))
}

/// Counts a refused credential of `kind` (`jwt`, `access_token`) and logs it (method, path
/// and the reason, never the credential).
fn count_auth_failure(
    worker: &Worker,
    req: &Request<RequestBody>,
    kind: &str,
    err: &dyn std::fmt::Display,
) {
    worker
        .metrics()
        .worker
        .auth_failures
        .inc(&AuthFailureLabels {
            worker_id: worker.config().worker_id.as_str(),
            status_code: 401,
            reason: kind,
        });
    tracing::warn!(
        method = %req.method(),
        path = req.uri().path(),
        auth_error = %err,
        "authentication failed"
    );
}

/// Whether a request is served without authentication: the health check and the metrics.
fn is_public(method: &Method, path: &str) -> bool {
    method == Method::GET && (path == "/healthz" || path == "/metrics")
}

async fn dispatch(
    worker: &Arc<Worker>,
    clients: &ClientAuthenticator,
    req: Request<RequestBody>,
    conn: &ConnInfo,
) -> HttpResponse {
    let path = percent_decode(req.uri().path());
    let route = WorkerRoute::parse(req.method(), &path);
    let query = Query::parse(req.uri().query());
    // Authentication comes before acting on the route: in prod an unknown route without a
    // token is 401. An exec WebSocket may carry an access ticket instead of a token.
    let ticket = match &route {
        // Only a real upgrade spends a ticket (not a link preview's plain GET).
        WorkerRoute::Sandbox(id, SandboxOp::ExecWebSocket)
            if crate::exec_ws::is_upgrade(req.headers()) =>
        {
            crate::exec_ws::access_token(&query).map(|token| (id, token))
        }
        _ => None,
    };
    let principal = if is_public(req.method(), &path) {
        Principal::dev()
    } else if let Some((id, token)) = ticket {
        match worker.redeem_exec_ticket(token, id, &crate::exec_ws::binding(&query)) {
            Ok(principal) => principal,
            Err(err) => {
                count_auth_failure(worker, &req, "access_token", &err);
                return error_response(StatusCode::UNAUTHORIZED, &err.to_string());
            }
        }
    } else {
        match authenticate(worker, clients, &req) {
            Ok(principal) => principal,
            Err(err) => return error_response(StatusCode::UNAUTHORIZED, &err.to_string()),
        }
    };
    match route {
        WorkerRoute::Health => json_response(
            StatusCode::OK,
            &HealthResponse {
                status: "ok".to_string(),
                instance_id: None,
            },
        ),
        WorkerRoute::Metrics => text_response(
            StatusCode::OK,
            PROMETHEUS_TEXT,
            worker.metrics().render_prometheus(),
        ),
        WorkerRoute::NotFound => error_response(StatusCode::NOT_FOUND, "route not found"),
        WorkerRoute::MalformedSandboxId(id) => {
            tracing::warn!(sandbox_id = id, "malformed sandbox id");
            Refusal::from(RequestError::MalformedSandboxId).response()
        }
        WorkerRoute::Create => create(worker, &principal, req, &query)
            .await
            .unwrap_or_else(|refusal| refusal.response()),
        WorkerRoute::Images | WorkerRoute::PullImage | WorkerRoute::RemoveImage => {
            images(worker, &principal, route, req, &query)
                .await
                .unwrap_or_else(|refusal| refusal.response())
        }
        WorkerRoute::Sandbox(id, op) => sandbox_op(worker, &principal, &id, op, req, &query, conn)
            .await
            .unwrap_or_else(|refusal| refusal.response()),
    }
}

/// Why the shell refused a request: the core's reason, or a request it could not decode.
#[derive(Debug)]
pub enum Refusal {
    /// The core refused.
    Worker(WorkerError),
    /// The request did not decode (400).
    Request(RequestError),
    /// A response already made (a body that could not be read).
    Response(Box<HttpResponse>),
}

impl From<WorkerError> for Refusal {
    fn from(err: WorkerError) -> Self {
        Self::Worker(err)
    }
}

impl From<RequestError> for Refusal {
    fn from(err: RequestError) -> Self {
        Self::Request(err)
    }
}

impl Refusal {
    /// The error response.
    pub fn response(self) -> HttpResponse {
        match self {
            Self::Worker(err) => worker_error(&err),
            Self::Request(err) => error_response(StatusCode::BAD_REQUEST, &err.to_string()),
            Self::Response(resp) => *resp,
        }
    }
}

/// The exec a route segment names. One that cannot name an exec is not found, once the
/// sandbox passed its checks (the contract's order: 404 or 403 for the sandbox first).
fn exec_of(
    worker: &Worker,
    principal: &Principal,
    id: &SandboxId,
    raw: &str,
) -> Result<ExecId, WorkerError> {
    match decode::exec_id(raw) {
        Some(exec_id) => Ok(exec_id),
        None => {
            worker.check_sandbox(principal, id)?;
            Err(WorkerError::ExecNotFound)
        }
    }
}

/// Serves an operation on sandbox `id`: decodes it, calls one core method, encodes.
async fn sandbox_op(
    worker: &Arc<Worker>,
    p: &Principal,
    id: &SandboxId,
    op: SandboxOp<'_>,
    req: Request<RequestBody>,
    query: &Query,
    conn: &ConnInfo,
) -> Result<HttpResponse, Refusal> {
    let ok = StatusCode::OK;
    Ok(match op {
        SandboxOp::Get => json_response(ok, &worker.get_sandbox(p, id)?),
        SandboxOp::Delete => {
            worker.delete_sandbox(p, id).await?;
            status_only(StatusCode::NO_CONTENT)
        }
        SandboxOp::RenewLease => {
            json_response(ok, &worker.renew_lease(p, id, decode::lease_ttl(query))?)
        }
        SandboxOp::SetNetwork => {
            worker.check_sandbox(p, id)?;
            let policy: NetworkPolicy = body_json(req, CREATE_BODY_MAX, true).await?;
            json_response(ok, &worker.set_network(p, id, &policy).await?)
        }
        SandboxOp::WriteFile => write_file(worker, p, id, req, query).await?,
        SandboxOp::ReadFile => {
            let path = decode::path(query.get("path"))?;
            let encoding = decode::read_encoding(query)?;
            json_response(ok, &worker.read_file(p, id, &path, encoding).await?)
        }
        SandboxOp::RemoveFile => {
            let path = decode::path(query.get("path"))?;
            // The contract refuses `/` before it reads the flags.
            if path.is_root() {
                return Err(WorkerError::CannotRemoveRoot.into());
            }
            let options = decode::remove_options(query)?;
            worker.remove_file(p, id, &path, options).await?;
            status_only(StatusCode::NO_CONTENT)
        }
        SandboxOp::ReadFileRaw => {
            let path = decode::path(query.get("path"))?;
            let file = worker.open_file(p, id, &path).await?;
            raw_download(file.size, file.body)
        }
        SandboxOp::Stat => {
            let path = decode::path(query.get("path"))?;
            json_response(ok, &worker.stat_file(p, id, &path).await?)
        }
        SandboxOp::List => {
            let path = decode::path(query.get("path"))?;
            let options = decode::list_options(query)?;
            json_response(ok, &worker.list_files(p, id, &path, options).await?)
        }
        SandboxOp::Mkdir => {
            let request: MkdirRequest = body_json(req, MKDIR_BODY_MAX, false).await?;
            let path = decode::path(Some(&request.path))?;
            json_response(ok, &worker.mkdir(p, id, &path, request.recursive).await?)
        }
        SandboxOp::Exec => {
            let request: ExecRequest = body_json(req, EXEC_BODY_MAX, true).await?;
            let exec_id = worker.start_exec(p, id, request).await?;
            json_response(StatusCode::ACCEPTED, &exec_accepted(id, &exec_id))
        }
        SandboxOp::RunCode => run_code(worker, p, id, req).await?,
        // The sandbox and its owner are checked first, like every sandbox route.
        SandboxOp::ExecWebSocket => crate::exec_ws::open(worker, p, id, req, query, conn).await,
        SandboxOp::ExecWebSocketUrl => crate::exec_ws::url(worker, p, id, query),
        SandboxOp::ListExecs => {
            let limit = decode::exec_list_limit(query)?;
            json_response(ok, &worker.list_execs(p, id, limit)?)
        }
        SandboxOp::GetExec(raw) => {
            let exec_id = exec_of(worker, p, id, raw)?;
            json_response(ok, &worker.get_exec(p, id, &exec_id)?)
        }
        SandboxOp::Frames(raw) if wants_event_stream(req.headers()) => {
            let exec_id = exec_of(worker, p, id, raw)?;
            let cursor = resume_cursor(query.get("cursor"), req.headers());
            let cursor = decode::frames_cursor(cursor);
            frame_events(worker.exec_frame_stream(p, id, &exec_id, cursor)?)
        }
        SandboxOp::Frames(raw) => {
            let exec_id = exec_of(worker, p, id, raw)?;
            let cursor = decode::frames_cursor(query.get("cursor"));
            let wait = decode::frames_wait(query.get("wait"));
            let frames = worker.exec_frames(p, id, &exec_id, cursor, wait).await?;
            json_response(ok, &frames)
        }
        // The body is decoded first, as it always was for these three.
        SandboxOp::ExecStdin(raw) => {
            let (parts, body) = req.into_parts();
            let bytes = read_body(body, EXEC_BODY_MAX)
                .await
                .map_err(|err| bad_request(&err.to_string()))?;
            let data = decode_stdin(&parts.headers, bytes)?;
            let exec_id = exec_of(worker, p, id, raw)?;
            worker.write_exec_stdin(p, id, &exec_id, data).await?;
            status_only(StatusCode::NO_CONTENT)
        }
        SandboxOp::SignalExec(raw) => {
            let request: ExecSignalRequest = body_json(req, EXEC_BODY_MAX, true).await?;
            let signal = decode::signal(&request)?;
            let exec_id = exec_of(worker, p, id, raw)?;
            worker.signal_exec(p, id, &exec_id, signal).await?;
            status_only(StatusCode::NO_CONTENT)
        }
        SandboxOp::ResizeExec(raw) => {
            let request: ExecResizeRequest = body_json(req, EXEC_BODY_MAX, true).await?;
            // As before the typed API: the size is checked before anything is looked up.
            if request.rows == 0 || request.cols == 0 {
                return Err(WorkerError::InvalidExec("rows and cols must be > 0").into());
            }
            let exec_id = exec_of(worker, p, id, raw)?;
            let size = TerminalSize {
                rows: request.rows,
                cols: request.cols,
            };
            worker.resize_exec(p, id, &exec_id, size).await?;
            status_only(StatusCode::NO_CONTENT)
        }
        SandboxOp::Proxy(port) => crate::proxy::forward(worker, p, id, port, req, conn).await,
        SandboxOp::PortUrl(port) => {
            // The sandbox and its owner first, then the port and the protocol.
            worker.check_sandbox(p, id)?;
            let port = decode::port(port)?;
            let protocol = decode::protocol(query)?;
            let host = request_host(req.headers(), req.uri());
            json_response(ok, &port_url(id, port, protocol, &host))
        }
    })
}

/// `400` with `message`.
fn bad_request(message: &str) -> Refusal {
    Refusal::Response(Box::new(error_response(StatusCode::BAD_REQUEST, message)))
}

/// The relative URL of an exec's record.
fn exec_url(sandbox_id: &SandboxId, exec_id: &ExecId) -> String {
    format!("/sandboxes/{sandbox_id}/exec/{exec_id}")
}

/// The `202` body of a started exec.
fn exec_accepted(sandbox_id: &SandboxId, exec_id: &ExecId) -> ExecAccepted {
    let poll_url = exec_url(sandbox_id, exec_id);
    ExecAccepted {
        exec_id: exec_id.to_string(),
        sandbox_id: sandbox_id.to_string(),
        status: "running".to_string(),
        frames_url: format!("{poll_url}/frames"),
        poll_url,
    }
}

/// `GET /sandboxes/{id}/ports/{port}/url`: the proxy URL of a port as the client reaches it
/// (`host` is `localhost` when blank).
fn port_url(id: &SandboxId, port: u16, protocol: &str, host: &str) -> PortUrlResponse {
    let host = match host.trim() {
        "" => "localhost",
        host => host,
    };
    PortUrlResponse {
        sandbox_id: id.to_string(),
        port,
        url: format!("{protocol}://{host}/sandboxes/{id}/proxy/{port}"),
        protocol: protocol.to_string(),
    }
}

/// The host clients used: the first `X-Forwarded-Host` element, else `Host`, else the URI's
/// authority, else `localhost`.
pub fn request_host(headers: &HeaderMap, uri: &hyper::Uri) -> String {
    first_header_element(headers, "x-forwarded-host")
        .or_else(|| {
            header_str(headers, "host")
                .map(str::trim)
                .filter(|h| !h.is_empty())
                .map(String::from)
        })
        .or_else(|| uri.authority().map(|a| a.to_string()))
        .unwrap_or_else(|| "localhost".to_string())
}

/// Reads and decodes a JSON body. Over the cap: `body exceeds max size` when
/// `distinct_too_large`, else (as the contract has it for older routes) `invalid request
/// body`; any decode error is `invalid request body`.
async fn body_json<T: serde::de::DeserializeOwned>(
    req: Request<RequestBody>,
    max: usize,
    distinct_too_large: bool,
) -> Result<T, Refusal> {
    let invalid = || bad_request("invalid request body");
    let bytes = match read_body(req.into_body(), max).await {
        Ok(bytes) => bytes,
        Err(err @ BodyError::TooLarge) if distinct_too_large => {
            return Err(bad_request(&err.to_string()))
        }
        Err(BodyError::TooLarge) => return Err(invalid()),
        Err(err @ BodyError::Read(_)) => return Err(bad_request(&err.to_string())),
    };
    decode_json(&bytes).map_err(|_| invalid())
}

async fn create(
    worker: &Worker,
    principal: &Principal,
    req: Request<RequestBody>,
    query: &Query,
) -> Result<HttpResponse, Refusal> {
    let request: CreateSandboxRequest = body_json(req, CREATE_BODY_MAX, true).await?;
    let placement = match decode::placement(query) {
        Ok(placement) => placement,
        Err(err) => {
            // The contract checks the image before the query.
            worker.create_tuple(&request)?;
            return Err(err.into());
        }
    };
    let outcome = worker
        .create_sandbox(principal, request, placement)
        .instrument(tracing::info_span!("worker.sandbox.create"))
        .await?;
    Ok(match outcome {
        CreateOutcome::Created(created) => json_response(StatusCode::CREATED, &created),
        CreateOutcome::RetryPlacement { retry } => {
            // The core answers this only when the worker knows the broker's URL.
            let broker = worker.config().broker_public_url().unwrap_or_default();
            let location = format!("{broker}/sandboxes?placement_retry={retry}");
            tracing::info!(location = %location, "hinted vm not claimable, sending create back to the broker");
            redirect(&location)
        }
    })
}

/// The operator's image routes: `GET /images`, `POST /images` (`{"image": ...}`: pull, or
/// pull again) and `DELETE /images?ref=`; each takes `?virtualization=` (default: the
/// worker's).
async fn images(
    worker: &Worker,
    principal: &Principal,
    route: WorkerRoute<'_>,
    req: Request<RequestBody>,
    query: &Query,
) -> Result<HttpResponse, Refusal> {
    let virtualization = query.get("virtualization");
    Ok(match route {
        WorkerRoute::PullImage => {
            let request: PullImage = body_json(req, CREATE_BODY_MAX, true).await?;
            let pulled = worker
                .pull_image(principal, virtualization, &request.image)
                .instrument(tracing::info_span!("worker.image.pull"))
                .await?;
            json_response(StatusCode::OK, &pulled)
        }
        WorkerRoute::RemoveImage => {
            let image = query.get("ref").unwrap_or_default();
            let removed = worker
                .remove_image(principal, virtualization, image)
                .await?;
            json_response(StatusCode::OK, &removed)
        }
        _ => json_response(
            StatusCode::OK,
            &worker.images(principal, virtualization).await?,
        ),
    })
}

/// The content and write mode of a file upload: with a JSON `Content-Type`, the
/// `{content, encoding, append}` form (encoding `base64` by default, or `utf8`/`utf-8`);
/// otherwise the raw body, replacing the file.
pub fn decode_upload(headers: &HeaderMap, body: &[u8]) -> Result<(Vec<u8>, WriteMode), Refusal> {
    if !has_json_body(headers) {
        return Ok((body.to_vec(), WriteMode::Replace));
    }
    let form: WriteFileJson = decode_json(body).map_err(|_| bad_request("invalid request body"))?;
    Ok(decode::write_json(&form)?)
}

async fn write_file(
    worker: &Worker,
    principal: &Principal,
    id: &SandboxId,
    req: Request<RequestBody>,
    query: &Query,
) -> Result<HttpResponse, Refusal> {
    // The path is checked before the body is read, as in the contract.
    let path = decode::path(query.get("path"))?;
    let (parts, body) = req.into_parts();
    let bytes = read_body(body, FILE_BODY_MAX)
        .await
        .map_err(|err| bad_request(&err.to_string()))?;
    let (content, mode) = decode_upload(&parts.headers, &bytes)?;
    let reader: BoxedReader = Box::new(std::io::Cursor::new(content));
    let written = worker
        .write_file(principal, id, &path, reader, mode)
        .await?;
    Ok(json_response(StatusCode::OK, &written))
}

/// Whether the body is declared JSON (`Content-Type` mentions `application/json`).
fn has_json_body(headers: &HeaderMap) -> bool {
    header_str(headers, "content-type")
        .is_some_and(|ct| ct.to_ascii_lowercase().contains("application/json"))
}

/// The input of `POST …/exec/{exec_id}/stdin`: with a JSON `Content-Type`, the
/// `{data, encoding}` form (encoding `utf8` by default, or `base64`); otherwise the raw body.
/// Empty input means EOF.
pub fn decode_stdin(headers: &HeaderMap, body: bytes::Bytes) -> Result<bytes::Bytes, Refusal> {
    if !has_json_body(headers) {
        return Ok(body);
    }
    let form: ExecStdinJson =
        decode_json(&body).map_err(|_| bad_request("invalid request body"))?;
    Ok(decode::exec_input(&form.data, &form.encoding)?)
}

fn raw_download(size: u64, body: BoxedReader) -> HttpResponse {
    let mut resp = Response::new(ReaderBody::new(body).boxed());
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    resp.headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(size));
    resp
}

async fn run_code(
    worker: &Worker,
    principal: &Principal,
    id: &SandboxId,
    req: Request<RequestBody>,
) -> Result<HttpResponse, Refusal> {
    // Ownership is checked before the body is read, as in the contract.
    worker.check_sandbox(principal, id)?;
    let request: RunCodeRequest = body_json(req, RUN_CODE_BODY_MAX, false).await?;
    Ok(match worker.run_code(principal, id, request).await? {
        RunCodeOutcome::Finished(done) => json_response(StatusCode::OK, &done),
        // The same body as an exec's 202 (`RunCodeAccepted`'s fields, all set).
        RunCodeOutcome::Accepted(exec_id) => {
            json_response(StatusCode::ACCEPTED, &exec_accepted(id, &exec_id))
        }
        RunCodeOutcome::SyntaxError(body) => json_response(StatusCode::UNPROCESSABLE_ENTITY, &body),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use traforato_core::api::EncodingError;
    use traforato_core::backend::BackendError;
    use traforato_core::path::PathError;

    const ID: &str = "sbx-broker_local-worker_local-550e8400-e29b-41d4-a716-446655440000";

    fn route<'a>(method: Method, path: &'a str) -> WorkerRoute<'a> {
        WorkerRoute::parse(&method, path)
    }

    fn op(method: Method, rest: &str) -> Option<SandboxOp<'static>> {
        let path: &'static str = Box::leak(format!("/sandboxes/{ID}{rest}").into_boxed_str());
        match WorkerRoute::parse(&method, path) {
            WorkerRoute::Sandbox(id, op) => {
                assert_eq!(id.to_string(), ID);
                Some(op)
            }
            WorkerRoute::NotFound => None,
            other => panic!("unexpected route {other:?}"),
        }
    }

    #[test]
    fn top_level_routes() {
        assert_eq!(route(Method::GET, "/healthz"), WorkerRoute::Health);
        assert_eq!(route(Method::GET, "/metrics"), WorkerRoute::Metrics);
        assert_eq!(route(Method::POST, "/sandboxes"), WorkerRoute::Create);
        assert_eq!(route(Method::POST, "/sandboxes/"), WorkerRoute::Create);
        assert_eq!(route(Method::GET, "/sandboxes"), WorkerRoute::NotFound);
        assert_eq!(route(Method::GET, "/images"), WorkerRoute::Images);
        assert_eq!(route(Method::POST, "/images/"), WorkerRoute::PullImage);
        assert_eq!(route(Method::DELETE, "/images"), WorkerRoute::RemoveImage);
        assert_eq!(route(Method::PUT, "/images"), WorkerRoute::NotFound);
        assert_eq!(route(Method::GET, "/images/x"), WorkerRoute::NotFound);
        assert_eq!(route(Method::GET, "/"), WorkerRoute::NotFound);
        assert_eq!(route(Method::GET, "/other/x"), WorkerRoute::NotFound);
        assert_eq!(
            route(Method::GET, "/sandboxes/not-an-id/anything"),
            WorkerRoute::MalformedSandboxId("not-an-id")
        );
    }

    #[test]
    fn sandbox_route_table() {
        assert_eq!(op(Method::GET, ""), Some(SandboxOp::Get));
        assert_eq!(op(Method::DELETE, ""), Some(SandboxOp::Delete));
        assert_eq!(op(Method::POST, ""), None);
        assert_eq!(op(Method::PATCH, "/lease"), Some(SandboxOp::RenewLease));
        assert_eq!(op(Method::PATCH, "/network"), Some(SandboxOp::SetNetwork));
        assert_eq!(op(Method::PUT, "/files"), Some(SandboxOp::WriteFile));
        assert_eq!(op(Method::GET, "/files"), Some(SandboxOp::ReadFile));
        assert_eq!(op(Method::DELETE, "/files"), Some(SandboxOp::RemoveFile));
        assert_eq!(op(Method::GET, "/files/raw"), Some(SandboxOp::ReadFileRaw));
        assert_eq!(op(Method::GET, "/files/stat"), Some(SandboxOp::Stat));
        assert_eq!(op(Method::GET, "/files/list"), Some(SandboxOp::List));
        assert_eq!(op(Method::POST, "/files/mkdir"), Some(SandboxOp::Mkdir));
        assert_eq!(op(Method::GET, "/files/mkdir"), None);
        assert_eq!(op(Method::POST, "/exec"), Some(SandboxOp::Exec));
        assert_eq!(op(Method::GET, "/exec"), Some(SandboxOp::ListExecs));
        assert_eq!(
            op(Method::POST, "/exec/exec_1/stdin"),
            Some(SandboxOp::ExecStdin("exec_1"))
        );
        assert_eq!(
            op(Method::POST, "/exec/exec_1/signal"),
            Some(SandboxOp::SignalExec("exec_1"))
        );
        assert_eq!(
            op(Method::POST, "/exec/exec_1/resize"),
            Some(SandboxOp::ResizeExec("exec_1"))
        );
        assert_eq!(op(Method::GET, "/exec/exec_1/stdin"), None);
        assert_eq!(op(Method::POST, "/exec/code"), Some(SandboxOp::RunCode));
        assert_eq!(op(Method::GET, "/exec/ws"), Some(SandboxOp::ExecWebSocket));
        assert_eq!(op(Method::POST, "/exec/ws"), None);
        assert_eq!(
            op(Method::GET, "/exec/code"),
            Some(SandboxOp::GetExec("code"))
        );
        assert_eq!(
            op(Method::GET, "/exec/exec_1/frames"),
            Some(SandboxOp::Frames("exec_1"))
        );
        assert_eq!(
            op(Method::POST, "/proxy/3000"),
            Some(SandboxOp::Proxy("3000"))
        );
        assert_eq!(
            op(Method::DELETE, "/proxy/3000/a/b/"),
            Some(SandboxOp::Proxy("3000"))
        );
        assert_eq!(op(Method::GET, "/proxy"), None);
        assert_eq!(
            op(Method::GET, "/ports/3000/url"),
            Some(SandboxOp::PortUrl("3000"))
        );
        assert_eq!(op(Method::GET, "/unknown"), None);
    }

    #[test]
    fn uploads() {
        let mut h = HeaderMap::new();
        assert_eq!(
            decode_upload(&h, b"raw bytes").unwrap(),
            (b"raw bytes".to_vec(), WriteMode::Replace)
        );
        h.insert(
            "content-type",
            HeaderValue::from_static("Application/JSON; charset=utf-8"),
        );
        assert_eq!(
            decode_upload(&h, br#"{"content":"Hello","encoding":"utf8"}"#).unwrap(),
            (b"Hello".to_vec(), WriteMode::Replace)
        );
        assert_eq!(
            decode_upload(&h, br#"{"content":"IQ==","append":true}"#).unwrap(),
            (b"!".to_vec(), WriteMode::Append)
        );
        assert!(matches!(
            decode_upload(&h, b"{"),
            Err(Refusal::Response(resp)) if resp.status() == StatusCode::BAD_REQUEST
        ));
        assert!(matches!(
            decode_upload(&h, br#"{"content":"!!!","encoding":"base64"}"#),
            Err(Refusal::Request(RequestError::Encoding(
                EncodingError::InvalidBase64
            )))
        ));
        assert!(matches!(
            decode_upload(&h, br#"{"content":"x","encoding":"latin1"}"#),
            Err(Refusal::Request(RequestError::Encoding(
                EncodingError::Unknown
            )))
        ));
    }

    #[test]
    fn urls_of_ports_and_execs() {
        let id = SandboxId::parse(ID).unwrap();
        let url = port_url(&id, 3000, "https", "broker.example.com");
        assert_eq!(
            url.url,
            format!("https://broker.example.com/sandboxes/{ID}/proxy/3000")
        );
        assert_eq!((url.port, url.protocol.as_str()), (3000, "https"));
        assert_eq!(
            port_url(&id, 80, "http", " ").url,
            format!("http://localhost/sandboxes/{ID}/proxy/80")
        );
        let exec_id = ExecId::new();
        let accepted = exec_accepted(&id, &exec_id);
        assert_eq!(accepted.poll_url, format!("/sandboxes/{ID}/exec/{exec_id}"));
        assert_eq!(
            accepted.frames_url,
            format!("/sandboxes/{ID}/exec/{exec_id}/frames")
        );
        assert_eq!(accepted.status, "running");
    }

    #[test]
    fn hosts() {
        let uri: hyper::Uri = "/x".parse().unwrap();
        let mut h = HeaderMap::new();
        assert_eq!(request_host(&h, &uri), "localhost");
        h.insert("host", HeaderValue::from_static("worker:8081"));
        assert_eq!(request_host(&h, &uri), "worker:8081");
        h.insert(
            "x-forwarded-host",
            HeaderValue::from_static("broker.example.com, proxy"),
        );
        assert_eq!(request_host(&h, &uri), "broker.example.com");
    }

    #[test]
    fn error_statuses() {
        let cases: Vec<(WorkerError, u16)> = vec![
            (WorkerError::SandboxNotFound, 404),
            (WorkerError::OwnershipMismatch, 403),
            (WorkerError::ImageRequired, 400),
            (
                WorkerError::NoCapacity("no capacity: cpu limit reached"),
                503,
            ),
            (WorkerError::UnableToRetryPlacement, 503),
            (WorkerError::ImageNotFound("ubuntu:24.04".into()), 404),
            (WorkerError::InvalidCreate("cpu 64 exceeds 8".into()), 400),
            (
                WorkerError::ProvisionFailed(BackendError::Setup("boom".into())),
                503,
            ),
            (WorkerError::RegistryUnreachable("ghcr.io".into()), 502),
            (WorkerError::InvalidTtl, 400),
            (WorkerError::ExecNotFound, 404),
            (WorkerError::TooManyExecs(32), 429),
            (WorkerError::ExecExited, 409),
            (WorkerError::StdinClosed, 409),
            (WorkerError::NotATerminal, 409),
            (WorkerError::Encoding(EncodingError::InvalidBase64), 400),
            (WorkerError::Unsupported("x"), 501),
            (WorkerError::InvalidPath(PathError::NotAbsolute), 400),
            (WorkerError::FileNotFound, 404),
            (WorkerError::DirectoryNotEmpty, 409),
            (WorkerError::FileTooLarge, 413),
            (WorkerError::ListingTooLarge, 400),
            (WorkerError::PermissionDenied, 403),
            (WorkerError::UpstreamUnreachable, 502),
            (WorkerError::UpstreamTimeout, 504),
            (WorkerError::Backend(BackendError::Gone), 500),
        ];
        for (err, status) in cases {
            assert_eq!(status_for(&err).as_u16(), status, "{err}");
        }
    }

    #[tokio::test]
    async fn server_errors_have_generic_bodies() {
        use http_body_util::BodyExt;
        let err = WorkerError::Backend(BackendError::Transport("secret detail".into()));
        let resp = worker_error(&err);
        assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"{\"error\":\"backend failure\"}\n");
        let resp = worker_error(&WorkerError::ImageNotFound("ubuntu:24.04".into()));
        assert_eq!(resp.status(), StatusCode::NOT_FOUND);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(
            &body[..],
            b"{\"error\":\"image not found: ubuntu:24.04\"}\n"
        );
        let resp = worker_error(&WorkerError::InvalidPath(PathError::Required));
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(
            &body[..],
            b"{\"error\":\"path query parameter is required\"}\n"
        );
    }
}
