//! `GET /sandboxes/{id}/exec/ws`: an exec over a WebSocket, speaking Orchard's exec protocol
//! (options in the query string, one JSON frame per text message), and
//! `GET /sandboxes/{id}/exec/ws/url`: where a browser opens one.
//!
//! The exec is started (or its session found) before the upgrade, so a bad query or a refused
//! start is a plain JSON error. After the `101` a session task relays the exec's frames to the
//! socket (one at a time, as fast as the socket takes them), the client's `stdin` and `resize`
//! frames to the exec, and pings the client every [`PING_INTERVAL`]. The exec's end is an
//! `exit` frame and a normal closure; the client going away first kills the exec.
//!
//! With `session=NAME` the exec is reconnectable: it outlives its socket, output frames carry a
//! `watermark`, and the client may ask for `history` after a watermark (replayed, then
//! `no_more_history`), `ack` what it has, `detach` (leave it running) or `close` it (kill it).
//! A client that reattaches gets the output from then on, and asks for `history` for what it
//! missed.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use futures::{SinkExt, StreamExt};
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::WebSocketStream;
use traforato_core::api::{
    ExecRequest, ExecWsUrlResponse, FrameKind, TerminalFrame, WsFrame, EXEC_ID_HEADER,
};
use traforato_core::auth::Principal;
use traforato_core::backend::{ExecSignal, TerminalSize};
use traforato_core::id::{ExecId, SandboxId};
use traforato_core::worker::{FrameStream, OutputFrame, Worker, WorkerError};

use crate::decode::query_bool;
use crate::http::{
    error_response, header_has_token, header_str, json_response, status_only, HttpResponse, Query,
};
use crate::linger::RequestBody;
use crate::server::{ConnInfo, Shutdown};
use crate::worker::worker_error;

/// How often the server pings the client.
pub const PING_INTERVAL: Duration = Duration::from_secs(30);

/// The largest message (and frame) a client may send.
pub const MAX_MESSAGE: usize = 1024 * 1024;

/// How long the server waits for the client's reply to its close frame.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// The exec timeout of a connection without `timeout_ms`: the longest the worker allows (a
/// day), since closing the socket ends a plain exec anyway and a session left alone ends after
/// [`traforato_core::worker::SESSION_IDLE_TIMEOUT`].
const SESSION_TIMEOUT_MS: i64 = 24 * 60 * 60 * 1000;

/// Why the query of an `exec/ws` request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExecWsQueryError {
    /// No (or an empty) `command`.
    #[error("command query parameter is required")]
    CommandRequired,
    /// A boolean parameter is not `true`/`false` (`1`/`0`, `t`/`f`).
    #[error("invalid {0} value")]
    InvalidBool(&'static str),
    /// `interactive` and `stdin` disagree.
    #[error("interactive and stdin conflict")]
    InteractiveConflict,
    /// Only one of `rows` and `cols`.
    #[error("rows and cols must be given together")]
    TerminalSizeIncomplete,
    /// `rows` or `cols` is not a number in 1..=65535.
    #[error("invalid {0} value")]
    InvalidSize(&'static str),
    /// `timeout_ms` is not a number.
    #[error("invalid timeout_ms value")]
    InvalidTimeout,
    /// `env[]` without a name.
    #[error("invalid env parameter")]
    InvalidEnv,
}

/// What an `exec/ws` query asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WsOpen {
    /// An exec that ends with its connection.
    Plain(ExecRequest),
    /// The reconnectable session `name`: started from `request`, or attached to (by name
    /// alone when `request` is `None`).
    Session {
        /// The session's name.
        name: String,
        /// The exec to start if the session does not exist.
        request: Option<ExecRequest>,
    },
}

impl WsOpen {
    /// The session's name, if it is one.
    pub fn session(&self) -> Option<&str> {
        match self {
            Self::Plain(_) => None,
            Self::Session { name, .. } => Some(name),
        }
    }

    /// The exec to start, if the query names one.
    pub fn request(&self) -> Option<&ExecRequest> {
        match self {
            Self::Plain(request) => Some(request),
            Self::Session { request, .. } => request.as_ref(),
        }
    }
}

/// Parses an `exec/ws` query: `command` (required unless `session` names one to reattach
/// to), `interactive`/`stdin`, `tty` (implies interactive), `rows`+`cols`, repeatable
/// `env[KEY]=VALUE`, `workdir`, `session`, and `timeout_ms` (additive; default a day).
/// `access_token` is not an option of the exec (see [`binding`]).
pub fn parse_query(query: &Query) -> Result<WsOpen, ExecWsQueryError> {
    // An empty `session` is no session, as in Orchard.
    let session = query
        .get("session")
        .filter(|s| !s.is_empty())
        .map(str::to_string);
    let command = query.get("command").unwrap_or("").to_string();
    if command.trim().is_empty() {
        return match session {
            Some(name) => Ok(WsOpen::Session {
                name,
                request: None,
            }),
            None => Err(ExecWsQueryError::CommandRequired),
        };
    }
    let interactive = bool_param(query, "interactive")?;
    let stdin = bool_param(query, "stdin")?;
    if let (Some(a), Some(b)) = (interactive, stdin) {
        if a != b {
            return Err(ExecWsQueryError::InteractiveConflict);
        }
    }
    let tty = bool_param(query, "tty")?.unwrap_or(false);
    let (rows, cols) = match (size_param(query, "rows")?, size_param(query, "cols")?) {
        (Some(rows), Some(cols)) => (Some(rows), Some(cols)),
        (None, None) => (None, None),
        _ => return Err(ExecWsQueryError::TerminalSizeIncomplete),
    };
    let timeout_ms = match query.get("timeout_ms") {
        Some(raw) => raw
            .trim()
            .parse::<i64>()
            .map_err(|_| ExecWsQueryError::InvalidTimeout)?,
        None => SESSION_TIMEOUT_MS,
    };
    let mut env = BTreeMap::new();
    for (key, value) in query.pairs() {
        if let Some(name) = key.strip_prefix("env[").and_then(|k| k.strip_suffix(']')) {
            if name.is_empty() {
                return Err(ExecWsQueryError::InvalidEnv);
            }
            env.insert(name.to_string(), value.to_string());
        }
    }
    let request = ExecRequest {
        command,
        cwd: query.get("workdir").unwrap_or("").to_string(),
        env,
        timeout_ms,
        interactive: tty || interactive.or(stdin).unwrap_or(false),
        tty,
        rows,
        cols,
        ..ExecRequest::default()
    };
    Ok(match session {
        Some(name) => WsOpen::Session {
            name,
            request: Some(request),
        },
        None => WsOpen::Plain(request),
    })
}

/// The query parameter that carries an access ticket.
pub const ACCESS_TOKEN: &str = "access_token";

/// The options of an `exec/ws` query in a canonical form (every pair but `access_token`,
/// sorted, form-encoded): what an access ticket is bound to.
pub fn binding(query: &Query) -> String {
    let mut pairs: Vec<(&str, &str)> = query.pairs().filter(|(k, _)| *k != ACCESS_TOKEN).collect();
    pairs.sort();
    let mut out = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        out.append_pair(k, v);
    }
    out.finish()
}

/// The access ticket of an `exec/ws` request, if it carries a non-empty one.
pub fn access_token(query: &Query) -> Option<&str> {
    query
        .get(ACCESS_TOKEN)
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// A boolean query parameter as Go's `strconv.ParseBool` reads it; a bare key
/// (`?tty`) is true.
fn bool_param(query: &Query, name: &'static str) -> Result<Option<bool>, ExecWsQueryError> {
    let Some(raw) = query.get(name) else {
        return Ok(None);
    };
    // A bare `?tty` means true; otherwise the parser every boolean query option uses.
    if raw.trim().is_empty() {
        return Ok(Some(true));
    }
    query_bool(Some(raw))
        .map(Some)
        .ok_or(ExecWsQueryError::InvalidBool(name))
}

fn size_param(query: &Query, name: &'static str) -> Result<Option<u16>, ExecWsQueryError> {
    query
        .get(name)
        .map(|raw| match raw.trim().parse::<u16>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(ExecWsQueryError::InvalidSize(name)),
        })
        .transpose()
}

/// The text message of a frame.
pub fn to_message(frame: &WsFrame) -> Message {
    // Serialising this plain struct cannot fail.
    Message::text(serde_json::to_string(frame).unwrap_or_default())
}

/// What a client message asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientFrame {
    /// Input for the command; empty is EOF.
    Stdin(bytes::Bytes),
    /// A new terminal size.
    Resize(TerminalSize),
    /// Sessions: replay the output after this watermark.
    History(u64),
    /// Sessions: the client has the output up to this watermark.
    Ack(u64),
    /// Sessions: leave the exec running and end the connection.
    Detach,
    /// Sessions: end the exec and the session.
    Close,
}

impl ClientFrame {
    /// Whether only a reconnectable session takes it.
    fn needs_session(&self) -> bool {
        matches!(
            self,
            Self::History(_) | Self::Ack(_) | Self::Detach | Self::Close
        )
    }

    fn kind(&self) -> &'static str {
        match self {
            Self::Stdin(_) => "stdin",
            Self::Resize(_) => "resize",
            Self::History(_) => "history",
            Self::Ack(_) => "ack",
            Self::Detach => "detach",
            Self::Close => "close",
        }
    }
}

/// Why a client message was refused; each ends the session with an `error` frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientFrameError {
    /// Not a JSON frame.
    #[error("invalid frame")]
    NotJson,
    /// A type the protocol does not have (or one only the server sends).
    #[error("unknown frame type: {0}")]
    UnknownType(String),
    /// `data` is not base64.
    #[error("invalid base64 data")]
    InvalidData,
    /// `resize` without a positive `terminal` size.
    #[error("resize needs terminal rows and cols > 0")]
    InvalidResize,
    /// Over [`MAX_MESSAGE`].
    #[error("frame exceeds max size")]
    TooLarge,
}

/// Decodes a client text message.
pub fn decode_client_frame(text: &str) -> Result<ClientFrame, ClientFrameError> {
    let frame: WsFrame =
        crate::http::decode_json(text.as_bytes()).map_err(|_| ClientFrameError::NotJson)?;
    match frame.kind.as_str() {
        "stdin" => base64::engine::general_purpose::STANDARD
            .decode(frame.data.as_bytes())
            .map(|data| ClientFrame::Stdin(data.into()))
            .map_err(|_| ClientFrameError::InvalidData),
        "resize" => match frame.terminal {
            Some(TerminalFrame { rows, cols }) if rows > 0 && cols > 0 => {
                Ok(ClientFrame::Resize(TerminalSize { rows, cols }))
            }
            _ => Err(ClientFrameError::InvalidResize),
        },
        "history" => Ok(ClientFrame::History(frame.watermark)),
        "ack" => Ok(ClientFrame::Ack(frame.watermark)),
        "detach" => Ok(ClientFrame::Detach),
        "close" => Ok(ClientFrame::Close),
        other => Err(ClientFrameError::UnknownType(other.to_string())),
    }
}

/// Answers `GET /sandboxes/{id}/exec/ws`: checks the sandbox, the query and the upgrade
/// headers, starts the exec (or finds its session), and hands the upgraded connection to a
/// session task.
pub(crate) async fn open(
    worker: &Arc<Worker>,
    principal: &Principal,
    id: &SandboxId,
    mut req: Request<RequestBody>,
    query: &Query,
    conn: &ConnInfo,
) -> HttpResponse {
    // The sandbox and its owner are checked first, like every sandbox route.
    if let Err(err) = worker.check_sandbox(principal, id) {
        return worker_error(&err);
    }
    let open = match parse_query(query) {
        Ok(open) => open,
        Err(err) => return error_response(StatusCode::BAD_REQUEST, &err.to_string()),
    };
    let Some(accept) = accept_key(req.headers()) else {
        return error_response(StatusCode::BAD_REQUEST, "websocket upgrade required");
    };
    let (exec_id, session, start) = match open {
        WsOpen::Plain(request) => match worker.start_exec(principal, id, request).await {
            Ok(exec_id) => (exec_id, None, 0),
            Err(err) => return worker_error(&err),
        },
        WsOpen::Session { name, request } => {
            let opened = match worker.open_exec_session(principal, id, &name, request) {
                Ok(opened) => opened,
                Err(err) => return worker_error(&err),
            };
            // A reattached client gets the output from now on, and asks for the rest.
            let start = if opened.created {
                0
            } else {
                match worker.exec_frame_count(principal, id, &opened.exec_id) {
                    Ok(count) => count,
                    Err(err) => return worker_error(&err),
                }
            };
            (opened.exec_id, Some(name), start)
        }
    };
    let exec = ExecHandle {
        worker: worker.clone(),
        principal: principal.clone(),
        sandbox_id: id.clone(),
        exec_id,
        session,
    };
    let frames = match worker.exec_frames_from(principal, id, &exec.exec_id, start) {
        Ok(frames) => frames,
        Err(err) => {
            exec.abandon().await;
            return worker_error(&err);
        }
    };
    let upgrade = hyper::upgrade::on(&mut req);
    let shutdown = conn.shutdown.clone();
    let exec_id = HeaderValue::from_str(&exec.exec_id.to_string()).ok();
    tokio::spawn(async move {
        match upgrade.await {
            Ok(upgraded) => {
                let config = WebSocketConfig::default()
                    .max_message_size(Some(MAX_MESSAGE))
                    .max_frame_size(Some(MAX_MESSAGE));
                let ws = WebSocketStream::from_raw_socket(
                    TokioIo::new(upgraded),
                    Role::Server,
                    Some(config),
                )
                .await;
                relay(ws, frames, exec, shutdown).await;
            }
            Err(err) => {
                tracing::debug!(error = %err, "exec websocket upgrade failed");
                exec.abandon().await;
            }
        }
    });
    let mut resp = status_only(StatusCode::SWITCHING_PROTOCOLS);
    let headers = resp.headers_mut();
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(accept) = HeaderValue::from_str(&accept) {
        headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    }
    // An extension: the exec's id, for its other routes (signals, the listing).
    if let Some(exec_id) = exec_id {
        headers.insert(EXEC_ID_HEADER, exec_id);
    }
    resp
}

/// Answers `GET /sandboxes/{id}/exec/ws/url` (same query as `exec/ws`): the worker's own
/// WebSocket URL of that exec, for a caller that can neither follow a redirect nor set
/// `Authorization` (a browser). In prod mode the URL carries a single-use `access_token`,
/// bound to this sandbox and these options, good for [`traforato_core::auth::TICKET_LIFETIME`].
pub(crate) fn url(
    worker: &Worker,
    principal: &Principal,
    id: &SandboxId,
    query: &Query,
) -> HttpResponse {
    if let Err(err) = worker.check_sandbox(principal, id) {
        return worker_error(&err);
    }
    if let Err(err) = parse_query(query) {
        return error_response(StatusCode::BAD_REQUEST, &err.to_string());
    }
    let options = binding(query);
    let ticket = match worker.issue_exec_ticket(principal, id, &options) {
        Ok(ticket) => ticket,
        Err(err) => return worker_error(&err),
    };
    let base = websocket_base(&worker.config().advertise_url);
    let mut url = format!("{base}/sandboxes/{id}/exec/ws");
    let mut query = url::form_urlencoded::Serializer::new(options);
    if let Some(ticket) = &ticket {
        query.append_pair(ACCESS_TOKEN, &ticket.token);
    }
    let query = query.finish();
    if !query.is_empty() {
        url.push('?');
        url.push_str(&query);
    }
    json_response(
        StatusCode::OK,
        &ExecWsUrlResponse {
            sandbox_id: id.to_string(),
            url,
            expires_at: ticket.map(|t| t.expires_at),
        },
    )
}

/// The `ws://` or `wss://` form of a worker's `http(s)://` base URL, without a trailing `/`.
pub fn websocket_base(advertise_url: &str) -> String {
    let base = advertise_url.trim().trim_end_matches('/');
    if let Some(rest) = base.strip_prefix("https://") {
        format!("wss://{rest}")
    } else if let Some(rest) = base.strip_prefix("http://") {
        format!("ws://{rest}")
    } else {
        format!("ws://{base}")
    }
}

/// The `Sec-WebSocket-Accept` of a valid WebSocket upgrade request (`Connection: upgrade`,
/// `Upgrade: websocket`, version 13, a key); `None` for anything else.
pub fn accept_key(headers: &HeaderMap) -> Option<String> {
    if !is_upgrade(headers) {
        return None;
    }
    if header_str(headers, "sec-websocket-version").map(str::trim) != Some("13") {
        return None;
    }
    let key = header_str(headers, "sec-websocket-key")?.trim();
    (!key.is_empty()).then(|| derive_accept_key(key.as_bytes()))
}

/// Whether a request asks to become a WebSocket (`Connection: upgrade`, `Upgrade:
/// websocket`); [`accept_key`] checks the rest.
pub fn is_upgrade(headers: &HeaderMap) -> bool {
    header_has_token(headers, "connection", "upgrade")
        && header_has_token(headers, "upgrade", "websocket")
}

/// The exec a connection drives.
struct ExecHandle {
    worker: Arc<Worker>,
    principal: Principal,
    sandbox_id: SandboxId,
    exec_id: ExecId,
    /// The session's name, when it is reconnectable.
    session: Option<String>,
}

impl ExecHandle {
    /// Kills the exec's process group; an exec that already exited is left alone.
    async fn kill(&self) {
        let result = self
            .worker
            .signal_exec(
                &self.principal,
                &self.sandbox_id,
                &self.exec_id,
                ExecSignal::Kill,
            )
            .await;
        if let Err(err) = result {
            tracing::debug!(exec_id = %self.exec_id, error = %err, "exec websocket kill");
        }
    }

    /// The connection ends without the exec: a plain exec is killed, a session's lives on
    /// (and its idle time starts when this was its last connection).
    async fn abandon(&self) {
        match &self.session {
            None => self.kill().await,
            Some(name) => self.leave(name),
        }
    }

    fn leave(&self, name: &str) {
        let result = self
            .worker
            .leave_exec_session(&self.principal, &self.sandbox_id, name);
        if let Err(err) = result {
            tracing::debug!(session = name, error = %err, "exec session leave");
        }
    }

    /// Hands a client frame to the exec; the error is the message of an `error` frame.
    async fn apply(&self, frame: &ClientFrame) -> Result<(), WorkerError> {
        let (p, id, exec_id) = (&self.principal, &self.sandbox_id, &self.exec_id);
        match frame {
            ClientFrame::Stdin(data) => {
                self.worker
                    .write_exec_stdin(p, id, exec_id, data.clone())
                    .await
            }
            ClientFrame::Resize(size) => self.worker.resize_exec(p, id, exec_id, *size).await,
            ClientFrame::Ack(watermark) => self.worker.ack_exec_frames(p, id, exec_id, *watermark),
            ClientFrame::Close => {
                let name = self.session.as_deref().unwrap_or_default();
                self.worker.close_exec_session(p, id, name).await
            }
            // `on_frame` serves these itself.
            ClientFrame::History(_) | ClientFrame::Detach => Ok(()),
        }
    }

    /// The protocol frame of an exec frame: its exact bytes, and its watermark in a session.
    fn frame(&self, output: &OutputFrame) -> Message {
        let mut out = WsFrame::from_exec(&output.frame, output.bytes());
        if self.session.is_some() {
            out.watermark = output.watermark;
        }
        to_message(&out)
    }
}

/// How a connection ended.
enum Ending {
    /// The command exited (its `exit` frame was sent), or a session was detached or closed:
    /// normal closure.
    Done,
    /// The client broke the protocol: an `error` frame and a close with `code`.
    ProtocolError(ClientFrameError, CloseCode),
    /// The exec ended without an exit (its sandbox went away).
    Abandoned,
    /// The client closed or vanished.
    ClientGone,
    /// The server is shutting down.
    Shutdown,
}

type Ws = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;
type Sink = futures::stream::SplitSink<Ws, Message>;

/// How long a connection to a session whose exec already ended stays open for `history`.
const FINISHED_SESSION_IDLE: Duration = Duration::from_secs(10);

/// Relays one exec over an upgraded socket until either ends.
async fn relay(ws: Ws, frames: FrameStream, exec: ExecHandle, shutdown: Shutdown) {
    let (mut sink, mut source) = ws.split();
    let mut ping =
        tokio::time::interval_at(tokio::time::Instant::now() + PING_INTERVAL, PING_INTERVAL);
    let stop = shutdown.wait();
    tokio::pin!(stop);
    // The live stream, until it ends; `live` is the watermark of the last frame it gave.
    let mut live = frames.position();
    let mut frames = Some(frames);
    // Armed once the live stream ended without an exit for this connection (a session
    // reattached after its exec ended): the connection stays open that long for `history`.
    let idle = tokio::time::sleep(FINISHED_SESSION_IDLE);
    tokio::pin!(idle);
    let ending = loop {
        tokio::select! {
            // Cancel-safe: `FrameStream::next` keeps its place, and a message is only taken
            // off the socket when its branch wins.
            next = next_frame(&mut frames) => {
                let Some(output) = next else {
                    frames = None;
                    if exec.session.is_some() {
                        idle.as_mut().reset(tokio::time::Instant::now() + FINISHED_SESSION_IDLE);
                        continue;
                    }
                    break Ending::Abandoned;
                };
                live = output.watermark;
                let exited = output.frame.kind == FrameKind::Exit;
                // One frame at a time: the next is read only once the socket took this one.
                if sink.send(exec.frame(&output)).await.is_err() {
                    break Ending::ClientGone;
                }
                if exited {
                    break Ending::Done;
                }
            }
            message = source.next() => match message {
                Some(Ok(Message::Text(text))) => match decode_client_frame(&text) {
                    Ok(frame) => {
                        if let Some(ending) = on_frame(&mut sink, &exec, frame, live, frames.is_none()).await {
                            break ending;
                        }
                    }
                    Err(err) => break Ending::ProtocolError(err, CloseCode::Policy),
                },
                // Binary messages are ignored; pings are answered by tungstenite.
                Some(Ok(Message::Binary(_) | Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                Some(Err(tungstenite::Error::Capacity(_))) => {
                    break Ending::ProtocolError(ClientFrameError::TooLarge, CloseCode::Size);
                }
                Some(Ok(Message::Close(_)) | Err(_)) | None => break Ending::ClientGone,
            },
            _ = ping.tick() => {
                if sink.send(Message::Ping(Default::default())).await.is_err() {
                    break Ending::ClientGone;
                }
            }
            _ = &mut idle, if frames.is_none() => break Ending::Done,
            _ = &mut stop => break Ending::Shutdown,
        }
    };
    let close = |code: CloseCode, reason: &str| {
        Message::Close(Some(CloseFrame {
            code,
            reason: reason.into(),
        }))
    };
    let goodbye = match ending {
        Ending::Done => {
            if let Some(name) = &exec.session {
                exec.leave(name);
            }
            vec![close(CloseCode::Normal, "")]
        }
        Ending::ProtocolError(err, code) => {
            exec.abandon().await;
            vec![
                to_message(&WsFrame::error(err.to_string())),
                close(code, ""),
            ]
        }
        Ending::Abandoned => vec![
            to_message(&WsFrame::error("exec ended without an exit")),
            close(CloseCode::Away, ""),
        ],
        Ending::ClientGone => {
            exec.abandon().await;
            return;
        }
        Ending::Shutdown => {
            exec.abandon().await;
            vec![close(CloseCode::Away, "server shutting down")]
        }
    };
    for message in goodbye {
        if sink.send(message).await.is_err() {
            return;
        }
    }
    // Wait (briefly) for the client's close reply, so the close handshake completes.
    let _ = tokio::time::timeout(CLOSE_GRACE, async {
        while let Some(Ok(_)) = source.next().await {}
    })
    .await;
}

/// Serves one client frame; `Some` ends the connection. `live` is the watermark the live
/// stream reached, `finished` whether it ended.
async fn on_frame(
    sink: &mut Sink,
    exec: &ExecHandle,
    frame: ClientFrame,
    live: u64,
    finished: bool,
) -> Option<Ending> {
    if frame.needs_session() && exec.session.is_none() {
        let err = ClientFrameError::UnknownType(frame.kind().to_string());
        return Some(Ending::ProtocolError(err, CloseCode::Policy));
    }
    let result = match frame {
        ClientFrame::History(after) => match replay(sink, exec, after, live).await {
            // The history of an ended exec is all this connection is still for.
            Ok(()) if finished => return Some(Ending::Done),
            Ok(()) => Ok(()),
            Err(Replay::ClientGone) => return Some(Ending::ClientGone),
            Err(Replay::Worker(err)) => Err(err),
        },
        ClientFrame::Detach => return Some(Ending::Done),
        // An ack never goes past what this connection was sent.
        ClientFrame::Ack(watermark) => exec.apply(&ClientFrame::Ack(watermark.min(live))).await,
        ClientFrame::Close => {
            return Some(match send_error(sink, exec.apply(&frame).await).await {
                Ok(()) => Ending::Done,
                Err(()) => Ending::ClientGone,
            })
        }
        frame => exec.apply(&frame).await,
    };
    send_error(sink, result)
        .await
        .err()
        .map(|()| Ending::ClientGone)
}

/// Sends the `error` frame of a failed client frame; `Err` when the socket is gone.
async fn send_error(sink: &mut Sink, result: Result<(), WorkerError>) -> Result<(), ()> {
    match result {
        Ok(()) => Ok(()),
        Err(err) => sink
            .send(to_message(&WsFrame::error(err.to_string())))
            .await
            .map_err(drop),
    }
}

/// The next frame of the live stream; never, once it ended.
async fn next_frame(frames: &mut Option<FrameStream>) -> Option<OutputFrame> {
    match frames {
        Some(frames) => frames.next_output().await,
        None => std::future::pending().await,
    }
}

/// Why a replay stopped.
enum Replay {
    ClientGone,
    Worker(WorkerError),
}

/// Sends a session's frames after watermark `after` up to `live` (what the live stream
/// already sent), then `no_more_history` at `live`.
async fn replay(sink: &mut Sink, exec: &ExecHandle, after: u64, live: u64) -> Result<(), Replay> {
    let mut from = after;
    while from < live {
        let page = exec
            .worker
            .exec_history(&exec.principal, &exec.sandbox_id, &exec.exec_id, from, live)
            .map_err(Replay::Worker)?;
        let Some(last) = page.last().map(|f| f.watermark) else {
            break;
        };
        for output in page {
            if sink.send(exec.frame(&output)).await.is_err() {
                return Err(Replay::ClientGone);
            }
        }
        from = last;
    }
    sink.send(to_message(&WsFrame::at_watermark("no_more_history", live)))
        .await
        .map_err(|_| Replay::ClientGone)
}

#[cfg(test)]
mod tests {
    use super::*;
    use traforato_core::api::Frame;

    fn q(raw: &str) -> Query {
        Query::parse(Some(raw))
    }

    fn parse(raw: &str) -> Result<ExecRequest, ExecWsQueryError> {
        parse_query(&q(raw)).map(|open| open.request().cloned().expect("a request"))
    }

    #[test]
    fn queries() {
        let req = parse("command=echo+hi").unwrap();
        assert_eq!(req.command, "echo hi");
        assert!(!req.interactive && !req.tty);
        assert_eq!(req.timeout_ms, SESSION_TIMEOUT_MS);
        assert_eq!((req.rows, req.cols), (None, None));

        let req = parse(
            "command=sh&tty=true&rows=30&cols=100&env%5BA%5D=1&env[B]=x%3Dy&workdir=/tmp&timeout_ms=5000",
        )
        .unwrap();
        assert!(req.tty && req.interactive);
        assert_eq!((req.rows, req.cols), (Some(30), Some(100)));
        assert_eq!(req.env.get("A").map(String::as_str), Some("1"));
        assert_eq!(req.env.get("B").map(String::as_str), Some("x=y"));
        assert_eq!(req.cwd, "/tmp");
        assert_eq!(req.timeout_ms, 5000);

        assert!(parse("command=cat&stdin=1").unwrap().interactive);
        assert!(
            parse("command=cat&interactive=TRUE&stdin=t")
                .unwrap()
                .interactive
        );
        assert!(parse("command=cat&interactive").unwrap().interactive);
        assert!(!parse("command=cat&interactive=false").unwrap().interactive);
    }

    #[test]
    fn bad_queries() {
        let cases = [
            ("", ExecWsQueryError::CommandRequired),
            ("command=+", ExecWsQueryError::CommandRequired),
            (
                "command=x&interactive=yes",
                ExecWsQueryError::InvalidBool("interactive"),
            ),
            (
                "command=x&interactive=true&stdin=false",
                ExecWsQueryError::InteractiveConflict,
            ),
            (
                "command=x&rows=30",
                ExecWsQueryError::TerminalSizeIncomplete,
            ),
            (
                "command=x&cols=30",
                ExecWsQueryError::TerminalSizeIncomplete,
            ),
            (
                "command=x&rows=0&cols=30",
                ExecWsQueryError::InvalidSize("rows"),
            ),
            (
                "command=x&rows=3&cols=70000",
                ExecWsQueryError::InvalidSize("cols"),
            ),
            ("command=x&env[]=1", ExecWsQueryError::InvalidEnv),
            (
                "command=x&timeout_ms=soon",
                ExecWsQueryError::InvalidTimeout,
            ),
        ];
        for (raw, want) in cases {
            assert_eq!(parse(raw), Err(want), "{raw}");
        }
    }

    #[test]
    fn session_queries() {
        let open = parse_query(&q("session=build")).unwrap();
        assert_eq!(open.session(), Some("build"));
        assert_eq!(open.request(), None, "reattach without a command");
        assert_eq!(
            parse_query(&q("session=&command=ls")).unwrap().session(),
            None
        );
        let open = parse_query(&q("session=build&command=make&tty=1")).unwrap();
        assert_eq!(open.session(), Some("build"));
        assert!(open.request().unwrap().tty);
        assert_eq!(parse_query(&q("command=ls")).unwrap().session(), None);
    }

    #[test]
    fn bindings_and_tokens() {
        // Canonical: order and encoding do not matter, the access token is not part of it.
        let a = binding(&q("tty=1&command=echo+hi&access_token=abc"));
        let b = binding(&q("command=echo%20hi&tty=1"));
        assert_eq!(a, b);
        assert_eq!(a, "command=echo+hi&tty=1");
        assert_ne!(a, binding(&q("command=echo+ho&tty=1")));
        assert_eq!(
            access_token(&q("command=x&access_token=+abc+")),
            Some("abc")
        );
        assert_eq!(access_token(&q("command=x&access_token=")), None);
        assert_eq!(access_token(&q("command=x")), None);
        assert_eq!(
            websocket_base("http://10.0.0.1:8081/"),
            "ws://10.0.0.1:8081"
        );
        assert_eq!(
            websocket_base("https://w.example.com"),
            "wss://w.example.com"
        );
        assert_eq!(websocket_base("w:1"), "ws://w:1");
    }

    fn frame(kind: FrameKind, data: &str) -> Frame {
        Frame {
            kind,
            data: data.to_string(),
            ts: chrono::Utc::now(),
        }
    }

    fn text(message: Message) -> String {
        message.into_text().unwrap().to_string()
    }

    #[test]
    fn server_frames() {
        let out = WsFrame::from_exec(&frame(FrameKind::Stdout, "hi\n"), b"hi\n");
        assert_eq!(text(to_message(&out)), r#"{"type":"stdout","data":"aGkK"}"#);
        let err = WsFrame::from_exec(&frame(FrameKind::Stderr, "x"), b"x");
        assert_eq!(text(to_message(&err)), r#"{"type":"stderr","data":"eA=="}"#);
        let exit = WsFrame::from_exec(&frame(FrameKind::Exit, "137"), b"");
        assert_eq!(
            text(to_message(&exit)),
            r#"{"type":"exit","exit":{"code":137}}"#
        );
        assert_eq!(
            text(to_message(&WsFrame::error("boom"))),
            r#"{"type":"error","error":"boom"}"#
        );
    }

    #[test]
    fn client_frames() {
        assert_eq!(
            decode_client_frame(r#"{"type":"stdin","data":"aGkK"}"#),
            Ok(ClientFrame::Stdin(bytes::Bytes::from_static(b"hi\n")))
        );
        assert_eq!(
            decode_client_frame(r#"{"type":"stdin"}"#),
            Ok(ClientFrame::Stdin(bytes::Bytes::new()))
        );
        assert_eq!(
            decode_client_frame(r#"{"type":"resize","terminal":{"rows":40,"cols":120}}"#),
            Ok(ClientFrame::Resize(TerminalSize {
                rows: 40,
                cols: 120
            }))
        );
        assert_eq!(
            decode_client_frame(r#"{"type":"resize"}"#),
            Err(ClientFrameError::InvalidResize)
        );
        assert_eq!(
            decode_client_frame(r#"{"type":"stdin","data":"!!"}"#),
            Err(ClientFrameError::InvalidData)
        );
        assert_eq!(
            decode_client_frame(r#"{"type":"history","watermark":7}"#),
            Ok(ClientFrame::History(7))
        );
        assert_eq!(
            decode_client_frame(r#"{"type":"history"}"#),
            Ok(ClientFrame::History(0))
        );
        assert_eq!(
            decode_client_frame(r#"{"type":"ack","watermark":3}"#),
            Ok(ClientFrame::Ack(3))
        );
        assert_eq!(
            decode_client_frame(r#"{"type":"detach"}"#),
            Ok(ClientFrame::Detach)
        );
        assert!(decode_client_frame(r#"{"type":"close"}"#)
            .unwrap()
            .needs_session());
        assert!(!decode_client_frame(r#"{"type":"stdin"}"#)
            .unwrap()
            .needs_session());
        assert_eq!(
            decode_client_frame(r#"{"type":"stdout","data":""}"#),
            Err(ClientFrameError::UnknownType("stdout".to_string()))
        );
        assert_eq!(
            decode_client_frame("not json"),
            Err(ClientFrameError::NotJson)
        );
        assert_eq!(
            ClientFrameError::UnknownType("x".into()).to_string(),
            "unknown frame type: x"
        );
    }

    #[test]
    fn accept_keys() {
        let mut h = HeaderMap::new();
        assert_eq!(accept_key(&h), None);
        h.insert(
            "connection",
            HeaderValue::from_static("keep-alive, Upgrade"),
        );
        h.insert("upgrade", HeaderValue::from_static("websocket"));
        h.insert("sec-websocket-version", HeaderValue::from_static("13"));
        assert_eq!(accept_key(&h), None, "no key");
        // The example of RFC 6455 §1.3.
        h.insert(
            "sec-websocket-key",
            HeaderValue::from_static("dGhlIHNhbXBsZSBub25jZQ=="),
        );
        assert_eq!(
            accept_key(&h).as_deref(),
            Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
        );
        h.insert("sec-websocket-version", HeaderValue::from_static("8"));
        assert_eq!(accept_key(&h), None, "old version");
    }
}
