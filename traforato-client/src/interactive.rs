//! Interactive execs over the worker's WebSocket (`GET /sandboxes/{id}/exec/ws`, Orchard's
//! exec protocol): input to the command, terminal resizes, signals, reconnectable sessions,
//! its output as a stream, and the URL a browser opens (`GET …/exec/ws/url`).

use std::collections::BTreeMap;
use std::pin::Pin;
use std::task::{Context, Poll};

use base64::Engine as _;
use bytes::Bytes;
use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, Stream, StreamExt};
use reqwest::header::AUTHORIZATION;
use reqwest::{Method, StatusCode};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use url::Url;

use traforato_core::api::{ExecWsUrlResponse, ExitFrame, WsFrame, EXEC_ID_HEADER};

use crate::client::{error_from_response, redirect_target, Follow, Req};
use crate::error::ClientError;
use crate::exec::Execution;
use crate::sandbox::Sandbox;
use crate::Signal;

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// What to run interactively: a shell command line, optionally on a terminal.
///
/// ```
/// use traforato_client::InteractiveCommand;
///
/// let cmd = InteractiveCommand::new("/bin/sh").tty(24, 80).env("TERM", "xterm");
/// assert_eq!(cmd.command, "/bin/sh");
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[must_use]
pub struct InteractiveCommand {
    /// The command line, run by the sandbox's shell.
    pub command: String,
    /// Run on a pseudo-terminal of this size (rows, cols); `None` means pipes.
    pub tty: Option<(u16, u16)>,
    /// Extra environment variables.
    pub env: BTreeMap<String, String>,
    /// Working directory; empty means the sandbox's default.
    pub cwd: String,
    /// The name of a reconnectable session: the command outlives the connection, and
    /// [`Sandbox::attach_session`] finds it again.
    pub session: Option<String>,
}

impl InteractiveCommand {
    /// `command` on pipes, in the default directory, with no extra environment.
    pub fn new(command: impl Into<String>) -> Self {
        InteractiveCommand {
            command: command.into(),
            ..Default::default()
        }
    }

    /// Runs on a pseudo-terminal of `rows` x `cols` (all output comes as stdout).
    pub fn tty(mut self, rows: u16, cols: u16) -> Self {
        self.tty = Some((rows, cols));
        self
    }

    /// Sets an environment variable.
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.insert(key.into(), value.into());
        self
    }

    /// Sets the working directory.
    pub fn cwd(mut self, dir: impl Into<String>) -> Self {
        self.cwd = dir.into();
        self
    }

    /// Runs as the reconnectable session `name` (1-64 characters of `A-Z a-z 0-9 . _ : -`):
    /// the command keeps running when the connection drops or detaches, and opening the same
    /// name again attaches to it.
    pub fn session(mut self, name: impl Into<String>) -> Self {
        self.session = Some(name.into());
        self
    }

    fn query(&self) -> Vec<(String, String)> {
        let mut query = self.session_query();
        query.extend([
            ("command".to_string(), self.command.clone()),
            ("interactive".to_string(), "true".to_string()),
        ]);
        if let Some((rows, cols)) = self.tty {
            query.push(("tty".to_string(), "true".to_string()));
            query.push(("rows".to_string(), rows.to_string()));
            query.push(("cols".to_string(), cols.to_string()));
        }
        for (k, v) in &self.env {
            query.push((format!("env[{k}]"), v.clone()));
        }
        if !self.cwd.trim().is_empty() {
            query.push(("workdir".to_string(), self.cwd.clone()));
        }
        query
    }

    fn session_query(&self) -> Vec<(String, String)> {
        self.session
            .iter()
            .map(|name| ("session".to_string(), name.clone()))
            .collect()
    }
}

/// One piece of output of an interactive exec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutputEvent {
    /// Bytes on stdout (everything, on a terminal).
    Stdout(Bytes),
    /// Bytes on stderr.
    Stderr(Bytes),
    /// The command ended with this code (`128 + n` when killed by signal `n`); the last event.
    Exit(i32),
    /// Sessions: the history asked for with [`ExecInput::history`] was all sent; this is the
    /// watermark it ended at.
    HistoryEnd(u64),
}

/// The text message of a frame.
fn message(frame: &WsFrame) -> Message {
    // Serialising this plain struct cannot fail.
    Message::text(serde_json::to_string(frame).unwrap_or_default())
}

/// A running interactive exec: [`InteractiveExec::send_stdin`], [`InteractiveExec::resize`]
/// and a [`Stream`] of [`OutputEvent`]s. [`InteractiveExec::split`] gives the two halves to
/// separate tasks. Dropping it closes the socket, which kills the command, unless it runs as
/// a session ([`InteractiveCommand::session`]): then the command keeps running.
#[derive(Debug)]
pub struct InteractiveExec {
    input: ExecInput,
    output: ExecOutputStream,
}

/// The input half of an [`InteractiveExec`].
#[derive(Debug)]
pub struct ExecInput {
    sink: SplitSink<Socket, Message>,
    url: String,
    /// The exec, for signals (the worker names it in the handshake).
    exec: Option<Execution>,
}

/// The output half of an [`InteractiveExec`]: a [`Stream`] of [`OutputEvent`]s that ends
/// after [`OutputEvent::Exit`]; an `error` frame or a socket closed without an exit is an
/// error item.
#[derive(Debug)]
pub struct ExecOutputStream {
    stream: SplitStream<Socket>,
    url: String,
    done: bool,
    /// The watermark of the last output received (sessions).
    watermark: u64,
}

impl Sandbox {
    /// Starts `command` over a WebSocket to the worker that owns the sandbox (or, with
    /// [`InteractiveCommand::session`], attaches to that session when it exists and runs the
    /// same command).
    ///
    /// The broker is asked where the sandbox lives (its `307` is read, not followed); the
    /// socket then goes to the worker with a fresh `Authorization` header. `https` URLs need
    /// the `rustls` feature.
    pub async fn exec_interactive(
        &self,
        command: InteractiveCommand,
    ) -> Result<InteractiveExec, ClientError> {
        self.open_socket(&command.query()).await
    }

    /// Attaches to the reconnectable session `name`, whatever it runs. Output comes from now
    /// on; ask for what came before with [`ExecInput::history`]. A session that does not
    /// exist is a `404`.
    pub async fn attach_session(&self, name: &str) -> Result<InteractiveExec, ClientError> {
        self.open_socket(&[("session".to_string(), name.to_string())])
            .await
    }

    /// Where a browser opens `command` over a WebSocket: the worker's own `ws(s)://` URL and,
    /// in prod mode, a single-use access token in it that expires after a minute. Hand the
    /// URL to the browser; keep the credentials that minted it on the server.
    pub async fn exec_ws_url(
        &self,
        command: &InteractiveCommand,
    ) -> Result<ExecWsUrlResponse, ClientError> {
        let query = command.query();
        let url = self.url(&["exec", "ws", "url"], &pairs(&query));
        self.client().send_json(Req::new(Method::GET, url)).await
    }

    async fn open_socket(
        &self,
        query: &[(String, String)],
    ) -> Result<InteractiveExec, ClientError> {
        let client = self.client();
        let url = self.url(&["exec", "ws"], &pairs(query));
        let mut req = Req::new(Method::GET, url.clone());
        req.follow = Follow::None;
        let resp = client.send(req).await?;
        let status = resp.status();
        let target = if status == StatusCode::TEMPORARY_REDIRECT
            || status == StatusCode::PERMANENT_REDIRECT
        {
            redirect_target(&url, &resp)?
        } else if status == StatusCode::BAD_REQUEST {
            // Not redirected: the base URL is the worker itself (a plain GET is refused for
            // want of an upgrade); the handshake below reports any other refusal.
            url
        } else {
            return Err(error_from_response(resp).await);
        };
        let ws_url = websocket_url(&target)?;
        let mut request = ws_url
            .as_str()
            .into_client_request()
            .map_err(|e| ws_error(&ws_url, e))?;
        if let Some(value) = client.authorization().await? {
            request.headers_mut().insert(AUTHORIZATION, value);
        }
        let (socket, response) =
            match tokio::time::timeout(client.timeout(), tokio_tungstenite::connect_async(request))
                .await
            {
                Err(_) => {
                    return Err(ClientError::Timeout {
                        url: ws_url.to_string(),
                    })
                }
                Ok(Ok(opened)) => opened,
                Ok(Err(tungstenite::Error::Http(resp))) => {
                    let body = resp.body().as_deref().unwrap_or_default();
                    return Err(ClientError::from_error_body(
                        resp.status().as_u16(),
                        body,
                        None,
                    ));
                }
                Ok(Err(e)) => return Err(ws_error(&ws_url, e)),
            };
        let exec = response
            .headers()
            .get(EXEC_ID_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(|id| self.execution(id));
        let (sink, stream) = socket.split();
        Ok(InteractiveExec {
            input: ExecInput {
                sink,
                url: ws_url.to_string(),
                exec,
            },
            output: ExecOutputStream {
                stream,
                url: ws_url.to_string(),
                done: false,
                watermark: 0,
            },
        })
    }
}

fn pairs(query: &[(String, String)]) -> Vec<(&str, &str)> {
    query
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect()
}

fn websocket_url(http: &Url) -> Result<Url, ClientError> {
    let scheme = match http.scheme() {
        "http" => "ws",
        "https" if cfg!(feature = "rustls") => "wss",
        "https" => {
            return Err(ClientError::InvalidUrl {
                url: http.to_string(),
                message: "wss needs traforato-client's rustls feature".to_string(),
            })
        }
        other => {
            return Err(ClientError::InvalidUrl {
                url: http.to_string(),
                message: format!("unsupported scheme {other}"),
            })
        }
    };
    let mut url = http.clone();
    // Swapping http(s) for ws(s) keeps a special scheme, which `set_scheme` allows.
    url.set_scheme(scheme)
        .map_err(|()| ClientError::InvalidUrl {
            url: http.to_string(),
            message: "cannot make a websocket url".to_string(),
        })?;
    Ok(url)
}

fn ws_error(url: &Url, source: tungstenite::Error) -> ClientError {
    ClientError::WebSocket {
        url: url.to_string(),
        source: Box::new(source),
    }
}

impl InteractiveExec {
    /// Sends bytes to the command's stdin (an empty slice sends nothing).
    pub async fn send_stdin(&mut self, data: &[u8]) -> Result<(), ClientError> {
        self.input.send_stdin(data).await
    }

    /// Closes the command's stdin (EOF).
    pub async fn close_stdin(&mut self) -> Result<(), ClientError> {
        self.input.close_stdin().await
    }

    /// Resizes the command's terminal.
    pub async fn resize(&mut self, rows: u16, cols: u16) -> Result<(), ClientError> {
        self.input.resize(rows, cols).await
    }

    /// Sends `signal` to the command's process group.
    pub async fn signal(&self, signal: Signal) -> Result<(), ClientError> {
        self.input.signal(signal).await
    }

    /// The exec's id (also in the sandbox's exec listing), when the worker named it.
    pub fn exec_id(&self) -> Option<&str> {
        self.input.exec_id()
    }

    /// Sessions: leaves the command running and ends the connection.
    pub async fn detach(mut self) -> Result<(), ClientError> {
        self.input.detach().await
    }

    /// Sessions: asks for the output after `watermark` (see [`ExecInput::history`]).
    pub async fn history(&mut self, watermark: u64) -> Result<(), ClientError> {
        self.input.history(watermark).await
    }

    /// Sessions: the output up to `watermark` arrived (see [`ExecInput::ack`]).
    pub async fn ack(&mut self, watermark: u64) -> Result<(), ClientError> {
        self.input.ack(watermark).await
    }

    /// Sessions: ends the command and the session (see [`ExecInput::close_session`]).
    pub async fn close_session(&mut self) -> Result<(), ClientError> {
        self.input.close_session().await
    }

    /// Sessions: the watermark of the last output received (see
    /// [`ExecOutputStream::watermark`]).
    pub fn watermark(&self) -> u64 {
        self.output.watermark()
    }

    /// Splits into the input and output halves.
    pub fn split(self) -> (ExecInput, ExecOutputStream) {
        (self.input, self.output)
    }

    /// Drains the output and returns the exit code.
    pub async fn wait(self) -> Result<i32, ClientError> {
        self.output.wait().await
    }
}

impl Stream for InteractiveExec {
    type Item = Result<OutputEvent, ClientError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Pin::new(&mut self.output).poll_next(cx)
    }
}

impl ExecInput {
    /// Sends bytes to the command's stdin (an empty slice sends nothing: it would be EOF).
    pub async fn send_stdin(&mut self, data: &[u8]) -> Result<(), ClientError> {
        if data.is_empty() {
            return Ok(());
        }
        self.send(WsFrame::stdin(data)).await
    }

    /// Closes the command's stdin (EOF).
    pub async fn close_stdin(&mut self) -> Result<(), ClientError> {
        self.send(WsFrame::stdin(&[])).await
    }

    /// Resizes the command's terminal.
    pub async fn resize(&mut self, rows: u16, cols: u16) -> Result<(), ClientError> {
        self.send(WsFrame::resize(rows, cols)).await
    }

    /// Sends `signal` to the command's process group (through the exec's signal route).
    pub async fn signal(&self, signal: Signal) -> Result<(), ClientError> {
        match &self.exec {
            Some(exec) => exec.signal(signal).await,
            None => Err(ClientError::Interactive(
                "the worker did not name the exec, so it cannot be signalled".to_string(),
            )),
        }
    }

    /// The exec's id, when the worker named it.
    pub fn exec_id(&self) -> Option<&str> {
        self.exec.as_ref().map(Execution::id)
    }

    /// Sessions: asks for the output after `watermark` (`0`: all that is kept), which comes
    /// before the live output and ends with [`OutputEvent::HistoryEnd`].
    pub async fn history(&mut self, watermark: u64) -> Result<(), ClientError> {
        self.send(WsFrame::at_watermark("history", watermark)).await
    }

    /// Sessions: tells the worker the output up to `watermark` arrived, so it need not keep it
    /// for a later `history`.
    pub async fn ack(&mut self, watermark: u64) -> Result<(), ClientError> {
        self.send(WsFrame::at_watermark("ack", watermark)).await
    }

    /// Sessions: leaves the command running and ends the connection.
    pub async fn detach(&mut self) -> Result<(), ClientError> {
        self.send(WsFrame::session("detach")).await
    }

    /// Sessions: ends the command (killed if still running) and the session.
    pub async fn close_session(&mut self) -> Result<(), ClientError> {
        self.send(WsFrame::session("close")).await
    }

    async fn send(&mut self, frame: WsFrame) -> Result<(), ClientError> {
        self.sink
            .send(message(&frame))
            .await
            .map_err(|e| ClientError::WebSocket {
                url: self.url.clone(),
                source: Box::new(e),
            })
    }
}

impl ExecOutputStream {
    /// Sessions: the watermark of the last output received (`0` before any): what to ask
    /// [`ExecInput::history`] for after reattaching.
    pub fn watermark(&self) -> u64 {
        self.watermark
    }

    /// Drains the output and returns the exit code.
    pub async fn wait(mut self) -> Result<i32, ClientError> {
        while let Some(event) = self.next().await {
            if let OutputEvent::Exit(code) = event? {
                return Ok(code);
            }
        }
        Err(ClientError::Interactive(
            "the connection closed without an exit code".to_string(),
        ))
    }

    fn decode(&mut self, text: &str) -> Result<OutputEvent, ClientError> {
        let bad = |message: &str| ClientError::Decode {
            url: self.url.clone(),
            message: message.to_string(),
        };
        let frame: WsFrame = serde_json::from_str(text).map_err(|_| bad("invalid frame"))?;
        if frame.kind != "no_more_history" && frame.watermark > self.watermark {
            self.watermark = frame.watermark;
        }
        let data = || {
            base64::engine::general_purpose::STANDARD
                .decode(frame.data.as_bytes())
                .map(Bytes::from)
                .map_err(|_| bad("invalid base64 data"))
        };
        match frame.kind.as_str() {
            "stdout" => data().map(OutputEvent::Stdout),
            "stderr" => data().map(OutputEvent::Stderr),
            "exit" => frame
                .exit
                .map(|ExitFrame { code }| OutputEvent::Exit(code))
                .ok_or_else(|| bad("exit frame without a code")),
            "error" => Err(ClientError::Interactive(frame.error)),
            "no_more_history" => Ok(OutputEvent::HistoryEnd(frame.watermark)),
            other => Err(bad(&format!("unknown frame type {other}"))),
        }
    }
}

impl Stream for ExecOutputStream {
    type Item = Result<OutputEvent, ClientError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            if self.done {
                return Poll::Ready(None);
            }
            let message = match self.stream.poll_next_unpin(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(message) => message,
            };
            let item = match message {
                Some(Ok(Message::Text(text))) => self.decode(text.as_str()),
                Some(Ok(Message::Close(_))) | None => Err(ClientError::Interactive(
                    "the connection closed without an exit code".to_string(),
                )),
                // Pings are answered by the socket itself.
                Some(Ok(_)) => continue,
                Some(Err(e)) => Err(ClientError::WebSocket {
                    url: self.url.clone(),
                    source: Box::new(e),
                }),
            };
            if !matches!(
                item,
                Ok(OutputEvent::Stdout(_) | OutputEvent::Stderr(_) | OutputEvent::HistoryEnd(_))
            ) {
                self.done = true;
            }
            return Poll::Ready(Some(item));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn websocket_urls_follow_the_http_scheme() {
        let ws = websocket_url(&Url::parse("http://127.0.0.1:9/sandboxes/x/exec/ws?a=1").unwrap())
            .unwrap();
        assert_eq!(ws.as_str(), "ws://127.0.0.1:9/sandboxes/x/exec/ws?a=1");
        let wss = websocket_url(&Url::parse("https://w.example/exec/ws").unwrap());
        if cfg!(feature = "rustls") {
            assert_eq!(wss.unwrap().scheme(), "wss");
        } else {
            assert!(matches!(wss, Err(ClientError::InvalidUrl { .. })));
        }
    }

    #[test]
    fn queries_carry_every_option() {
        let cmd = InteractiveCommand::new("cat")
            .tty(24, 80)
            .env("A", "b")
            .cwd("/tmp");
        let query = cmd.query();
        for (k, v) in [
            ("command", "cat"),
            ("interactive", "true"),
            ("tty", "true"),
            ("rows", "24"),
            ("cols", "80"),
            ("env[A]", "b"),
            ("workdir", "/tmp"),
        ] {
            assert!(query.contains(&(k.to_string(), v.to_string())), "{k}");
        }
    }
}
