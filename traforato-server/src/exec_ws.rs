//! `GET /sandboxes/{id}/exec/ws`: an exec over a WebSocket, speaking Orchard's exec protocol
//! (options in the query string, one JSON frame per text message).
//!
//! The exec is started before the upgrade, so a bad query or a refused start is a plain JSON
//! error. After the `101` a session task relays the exec's frames to the socket (one at a time,
//! as fast as the socket takes them), the client's `stdin` and `resize` frames to the exec,
//! and pings the client every [`PING_INTERVAL`]. The exec's end is an `exit` frame and a
//! normal closure; the client going away first kills the exec. Reconnectable sessions
//! (`session=`) are not supported yet (`501`).

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
    parse_query_bool, ExecRequest, ExecResizeRequest, ExecSignalRequest, FrameKind, TerminalFrame,
    WsFrame,
};
use traforato_core::auth::Principal;
use traforato_core::worker::{FrameStream, Worker, WorkerError};

use crate::http::{error_response, header_str, status_only, HttpResponse, Query};
use crate::linger::RequestBody;
use crate::server::{ConnInfo, Shutdown};
use crate::worker::worker_error;

/// How often the server pings the client.
pub const PING_INTERVAL: Duration = Duration::from_secs(30);

/// The largest message (and frame) a client may send.
pub const MAX_MESSAGE: usize = 1024 * 1024;

/// How long the server waits for the client's reply to its close frame.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// The exec timeout of a session without `timeout_ms`: the longest the worker allows (a day),
/// since closing the socket ends the command anyway.
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
    /// `session=`: reconnectable sessions.
    #[error("reconnectable sessions are not supported yet")]
    SessionsUnsupported,
}

impl ExecWsQueryError {
    /// The status code of the error: `501` for sessions, `400` otherwise.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::SessionsUnsupported => StatusCode::NOT_IMPLEMENTED,
            _ => StatusCode::BAD_REQUEST,
        }
    }
}

/// The exec an `exec/ws` query asks for: `command` (required), `interactive`/`stdin`, `tty`
/// (implies interactive), `rows`+`cols`, repeatable `env[KEY]=VALUE`, `workdir`, and
/// `timeout_ms` (additive; default a day).
pub fn parse_query(query: &Query) -> Result<ExecRequest, ExecWsQueryError> {
    if query.get("session").is_some() {
        return Err(ExecWsQueryError::SessionsUnsupported);
    }
    let command = query.get("command").unwrap_or("").to_string();
    if command.trim().is_empty() {
        return Err(ExecWsQueryError::CommandRequired);
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
    Ok(ExecRequest {
        command,
        cwd: query.get("workdir").unwrap_or("").to_string(),
        env,
        timeout_ms,
        interactive: tty || interactive.or(stdin).unwrap_or(false),
        tty,
        rows,
        cols,
        ..ExecRequest::default()
    })
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
    parse_query_bool(Some(raw))
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
    Resize(ExecResizeRequest),
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
    let frame: WsFrame = serde_json::from_str(text).map_err(|_| ClientFrameError::NotJson)?;
    match frame.kind.as_str() {
        "stdin" => base64::engine::general_purpose::STANDARD
            .decode(frame.data.as_bytes())
            .map(|data| ClientFrame::Stdin(data.into()))
            .map_err(|_| ClientFrameError::InvalidData),
        "resize" => match frame.terminal {
            Some(TerminalFrame { rows, cols }) if rows > 0 && cols > 0 => {
                Ok(ClientFrame::Resize(ExecResizeRequest { rows, cols }))
            }
            _ => Err(ClientFrameError::InvalidResize),
        },
        other => Err(ClientFrameError::UnknownType(other.to_string())),
    }
}

/// Answers `GET /sandboxes/{id}/exec/ws`: checks the sandbox, the query and the upgrade
/// headers, starts the exec, and hands the upgraded connection to a session task.
pub(crate) async fn open(
    worker: &Arc<Worker>,
    principal: &Principal,
    id: &str,
    mut req: Request<RequestBody>,
    query: &Query,
    conn: &ConnInfo,
) -> HttpResponse {
    // The sandbox and its owner are checked first, like every sandbox route.
    if let Err(err) = worker.get_sandbox(principal, id) {
        return worker_error(&err);
    }
    let request = match parse_query(query) {
        Ok(request) => request,
        Err(err) => return error_response(err.status(), &err.to_string()),
    };
    let Some(accept) = accept_key(req.headers()) else {
        return error_response(StatusCode::BAD_REQUEST, "websocket upgrade required");
    };
    let accepted = match worker.start_exec(principal, id, request).await {
        Ok(accepted) => accepted,
        Err(err) => return worker_error(&err),
    };
    let exec = ExecHandle {
        worker: worker.clone(),
        principal: principal.clone(),
        sandbox_id: id.to_string(),
        exec_id: accepted.exec_id,
    };
    let frames = match worker.exec_frame_stream(principal, id, &exec.exec_id, None) {
        Ok(frames) => frames,
        Err(err) => {
            exec.kill().await;
            return worker_error(&err);
        }
    };
    let upgrade = hyper::upgrade::on(&mut req);
    let shutdown = conn.shutdown.clone();
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
                session(ws, frames, exec, shutdown).await;
            }
            Err(err) => {
                tracing::debug!(error = %err, "exec websocket upgrade failed");
                exec.kill().await;
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
    resp
}

/// The `Sec-WebSocket-Accept` of a valid WebSocket upgrade request (`Connection: upgrade`,
/// `Upgrade: websocket`, version 13, a key); `None` for anything else.
pub fn accept_key(headers: &HeaderMap) -> Option<String> {
    let has_token = |name: &str, token: &str| {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    };
    if !has_token("connection", "upgrade") || !has_token("upgrade", "websocket") {
        return None;
    }
    if header_str(headers, "sec-websocket-version").map(str::trim) != Some("13") {
        return None;
    }
    let key = header_str(headers, "sec-websocket-key")?.trim();
    (!key.is_empty()).then(|| derive_accept_key(key.as_bytes()))
}

/// The exec a session drives.
struct ExecHandle {
    worker: Arc<Worker>,
    principal: Principal,
    sandbox_id: String,
    exec_id: String,
}

impl ExecHandle {
    /// Kills the exec's process group; an exec that already exited is left alone.
    async fn kill(&self) {
        let signal = ExecSignalRequest {
            signal: "KILL".to_string(),
        };
        let result = self
            .worker
            .signal_exec(&self.principal, &self.sandbox_id, &self.exec_id, signal)
            .await;
        if let Err(err) = result {
            tracing::debug!(exec_id = %self.exec_id, error = %err, "exec websocket kill");
        }
    }

    /// Hands a client frame to the exec; the error is the message of an `error` frame.
    async fn apply(&self, frame: ClientFrame) -> Result<(), WorkerError> {
        let (p, id, exec_id) = (&self.principal, &self.sandbox_id, &self.exec_id);
        match frame {
            ClientFrame::Stdin(data) => self.worker.write_exec_stdin(p, id, exec_id, data).await,
            ClientFrame::Resize(size) => self.worker.resize_exec(p, id, exec_id, size).await,
        }
    }
}

/// How a session ended.
enum Ending {
    /// The command exited (its `exit` frame was sent): normal closure.
    Exited,
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

/// Relays one exec over an upgraded socket until either ends.
async fn session(ws: Ws, mut frames: FrameStream, exec: ExecHandle, shutdown: Shutdown) {
    let (mut sink, mut source) = ws.split();
    let mut ping =
        tokio::time::interval_at(tokio::time::Instant::now() + PING_INTERVAL, PING_INTERVAL);
    let stop = shutdown.wait();
    tokio::pin!(stop);
    let ending = loop {
        tokio::select! {
            // Both branches are cancel-safe: `FrameStream::next` keeps its place, and a
            // message is only taken off the socket when its branch wins.
            next = frames.next() => {
                let Some((frame, _cursor)) = next else {
                    break Ending::Abandoned;
                };
                let exited = frame.kind == FrameKind::Exit;
                // One frame at a time: the next is read only once the socket took this one.
                if sink.send(to_message(&WsFrame::from_exec(&frame))).await.is_err() {
                    break Ending::ClientGone;
                }
                if exited {
                    break Ending::Exited;
                }
            }
            message = source.next() => match message {
                Some(Ok(Message::Text(text))) => match decode_client_frame(&text) {
                    Ok(frame) => {
                        if let Err(err) = exec.apply(frame).await {
                            let error = to_message(&WsFrame::error(err.to_string()));
                            if sink.send(error).await.is_err() {
                                break Ending::ClientGone;
                            }
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
        Ending::Exited => vec![close(CloseCode::Normal, "")],
        Ending::ProtocolError(err, code) => {
            exec.kill().await;
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
            exec.kill().await;
            return;
        }
        Ending::Shutdown => {
            exec.kill().await;
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

#[cfg(test)]
mod tests {
    use super::*;
    use traforato_core::api::Frame;

    fn q(raw: &str) -> Query {
        Query::parse(Some(raw))
    }

    #[test]
    fn queries() {
        let req = parse_query(&q("command=echo+hi")).unwrap();
        assert_eq!(req.command, "echo hi");
        assert!(!req.interactive && !req.tty);
        assert_eq!(req.timeout_ms, SESSION_TIMEOUT_MS);
        assert_eq!((req.rows, req.cols), (None, None));

        let req = parse_query(&q(
            "command=sh&tty=true&rows=30&cols=100&env%5BA%5D=1&env[B]=x%3Dy&workdir=/tmp&timeout_ms=5000",
        ))
        .unwrap();
        assert!(req.tty && req.interactive);
        assert_eq!((req.rows, req.cols), (Some(30), Some(100)));
        assert_eq!(req.env.get("A").map(String::as_str), Some("1"));
        assert_eq!(req.env.get("B").map(String::as_str), Some("x=y"));
        assert_eq!(req.cwd, "/tmp");
        assert_eq!(req.timeout_ms, 5000);

        assert!(parse_query(&q("command=cat&stdin=1")).unwrap().interactive);
        assert!(
            parse_query(&q("command=cat&interactive=TRUE&stdin=t"))
                .unwrap()
                .interactive
        );
        assert!(
            parse_query(&q("command=cat&interactive"))
                .unwrap()
                .interactive
        );
        assert!(
            !parse_query(&q("command=cat&interactive=false"))
                .unwrap()
                .interactive
        );
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
            (
                "command=x&session=abc",
                ExecWsQueryError::SessionsUnsupported,
            ),
        ];
        for (raw, want) in cases {
            assert_eq!(parse_query(&q(raw)), Err(want), "{raw}");
        }
        assert_eq!(ExecWsQueryError::SessionsUnsupported.status(), 501);
        assert_eq!(ExecWsQueryError::InteractiveConflict.status(), 400);
        assert_eq!(
            ExecWsQueryError::SessionsUnsupported.to_string(),
            "reconnectable sessions are not supported yet"
        );
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
        let out = WsFrame::from_exec(&frame(FrameKind::Stdout, "hi\n"));
        assert_eq!(text(to_message(&out)), r#"{"type":"stdout","data":"aGkK"}"#);
        let err = WsFrame::from_exec(&frame(FrameKind::Stderr, "x"));
        assert_eq!(text(to_message(&err)), r#"{"type":"stderr","data":"eA=="}"#);
        let exit = WsFrame::from_exec(&frame(FrameKind::Exit, "137"));
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
            Ok(ClientFrame::Resize(ExecResizeRequest {
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
