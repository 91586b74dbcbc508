//! Commands and code in a sandbox: [`Command`] and [`RunCode`] describe what to run,
//! [`Execution`] follows a running exec (frames as a long-polled [`FrameStream`], `wait()` for
//! the result).

use std::collections::VecDeque;
use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::stream::{BoxStream, Stream, StreamExt};
use reqwest::Method;
pub use traforato_core::api::{
    frame_exit_code, Command, ExecOutput, ParseRuntimeError, RunCode, RunCodeOutput, Runtime,
};
use traforato_core::api::{
    ExecAccepted, ExecRecord, ExecSignal as Signal, ExecSignalRequest, Frame, FrameKind,
    FramesResponse, RunCodeAccepted, RunCodeResponse, SyntaxErrorBody,
};

use crate::client::{decode_json, error_from_response, Req};
use crate::error::ClientError;
use crate::sandbox::Sandbox;

/// A running (or finished) exec in a sandbox.
///
/// ```no_run
/// # async fn demo(sandbox: traforato_client::Sandbox) -> Result<(), traforato_client::ClientError> {
/// use futures::StreamExt;
/// use traforato_client::{frame_exit_code, FrameKind};
///
/// let exec = sandbox.exec_stream("for i in 1 2 3; do echo $i; sleep 1; done").await?;
/// let mut frames = exec.frames();
/// while let Some(frame) = frames.next().await {
///     let frame = frame?;
///     match frame.kind {
///         FrameKind::Stdout => print!("{}", frame.data),
///         FrameKind::Stderr => eprint!("{}", frame.data),
///         FrameKind::Exit => println!("exit {:?}", frame_exit_code(&frame)),
///     }
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Execution {
    sandbox: Sandbox,
    exec_id: String,
}

impl Execution {
    /// The exec id.
    pub fn id(&self) -> &str {
        &self.exec_id
    }

    /// The sandbox it runs in.
    pub fn sandbox(&self) -> &Sandbox {
        &self.sandbox
    }

    /// The exec's record: status, exit code once exited, collected output, timings.
    pub async fn record(&self) -> Result<ExecRecord, ClientError> {
        let req = Req::new(Method::GET, self.sandbox.url(&["exec", &self.exec_id], &[]));
        self.sandbox.client().send_json(req).await
    }

    /// Sends `signal` to the exec's process group (`409` once it exited; run-code execs
    /// take no signals).
    pub async fn signal(&self, signal: Signal) -> Result<(), ClientError> {
        let body = ExecSignalRequest {
            signal: signal.as_str().to_string(),
        };
        let req = Req::new(
            Method::POST,
            self.sandbox.url(&["exec", &self.exec_id, "signal"], &[]),
        )
        .json(&body);
        self.sandbox.client().send_empty(req).await
    }

    /// Appends `data` to the stdin of an exec started with `interactive` (an empty slice
    /// sends nothing: it would be EOF).
    pub async fn send_stdin(&self, data: impl Into<Bytes>) -> Result<(), ClientError> {
        let data = data.into();
        if data.is_empty() {
            return Ok(());
        }
        self.post_stdin(data).await
    }

    /// Closes the exec's stdin (EOF).
    pub async fn close_stdin(&self) -> Result<(), ClientError> {
        self.post_stdin(Bytes::new()).await
    }

    async fn post_stdin(&self, data: Bytes) -> Result<(), ClientError> {
        let req = Req::new(
            Method::POST,
            self.sandbox.url(&["exec", &self.exec_id, "stdin"], &[]),
        )
        .bytes(data, "application/octet-stream");
        self.sandbox.client().send_empty(req).await
    }

    /// All frames from the first, in order, as they come: stdout and stderr chunks, then
    /// one `exit` frame, after which the stream ends. Uses the server's long-poll, so it waits
    /// without busy-polling. Each call starts again from the first frame.
    pub fn frames(&self) -> FrameStream {
        FrameStream::new(self.clone(), 0)
    }

    /// Waits for the exec to finish and collects its output.
    pub async fn wait(&self) -> Result<ExecOutput, ClientError> {
        let mut out = ExecOutput {
            exec_id: self.exec_id.clone(),
            stdout: String::new(),
            stderr: String::new(),
            exit_code: 0,
        };
        let mut exit = None;
        let mut frames = self.frames();
        while let Some(frame) = frames.next().await {
            let frame = frame?;
            match frame.kind {
                FrameKind::Stdout => out.stdout.push_str(&frame.data),
                FrameKind::Stderr => out.stderr.push_str(&frame.data),
                FrameKind::Exit => exit = frame_exit_code(&frame),
            }
        }
        out.exit_code = match exit {
            Some(code) => code,
            // A server that ends the frames without an exit frame: ask the record.
            None => self
                .record()
                .await?
                .exit_code
                .ok_or_else(|| ClientError::MissingExitCode {
                    exec_id: self.exec_id.clone(),
                })?,
        };
        Ok(out)
    }

    async fn fetch(&self, cursor: u64) -> Result<FramesResponse, ClientError> {
        let wait = format!("{}s", self.sandbox.client().long_poll().as_secs());
        let cursor = cursor.to_string();
        let req = Req::new(
            Method::GET,
            self.sandbox.url(
                &["exec", &self.exec_id, "frames"],
                &[("cursor", &cursor), ("wait", &wait)],
            ),
        )
        .extra_timeout(self.sandbox.client().long_poll());
        self.sandbox.client().send_json(req).await
    }
}

/// The frames of an exec as a [`Stream`]; see [`Execution::frames`].
pub struct FrameStream {
    inner: BoxStream<'static, Result<Frame, ClientError>>,
}

impl fmt::Debug for FrameStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FrameStream")
    }
}

struct FrameState {
    exec: Execution,
    cursor: u64,
    buffer: VecDeque<Frame>,
    done: bool,
    idle: u32,
}

impl FrameStream {
    fn new(exec: Execution, cursor: u64) -> Self {
        let state = FrameState {
            exec,
            cursor,
            buffer: VecDeque::new(),
            done: false,
            idle: 0,
        };
        let inner = futures::stream::try_unfold(state, |mut st| async move {
            loop {
                if let Some(frame) = st.buffer.pop_front() {
                    if frame.kind == FrameKind::Exit {
                        st.done = true;
                        st.buffer.clear();
                    }
                    return Ok(Some((frame, st)));
                }
                if st.done {
                    return Ok(None);
                }
                let page = st.exec.fetch(st.cursor).await?;
                let got_frames = !page.frames.is_empty();
                st.cursor = page.next_cursor.max(st.cursor);
                st.buffer.extend(page.frames);
                if !page.has_more {
                    st.done = true;
                } else if !got_frames && !page.wait_applied {
                    // A server that ignored `wait`: back off instead of spinning.
                    st.idle = (st.idle + 1).min(5);
                    tokio::time::sleep(Duration::from_millis(50 << st.idle)).await;
                } else {
                    st.idle = 0;
                }
            }
        })
        .boxed();
        FrameStream { inner }
    }
}

impl Stream for FrameStream {
    type Item = Result<Frame, ClientError>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.as_mut().poll_next(cx)
    }
}

impl Sandbox {
    /// Runs a command and waits for it: its output and exit code. A non-zero exit code is
    /// not an error.
    ///
    /// ```no_run
    /// # async fn demo(sandbox: traforato_client::Sandbox) -> Result<(), traforato_client::ClientError> {
    /// use traforato_client::Command;
    ///
    /// let out = sandbox.exec("echo hello").await?;
    /// assert_eq!(out.stdout, "hello\n");
    /// let out = sandbox.exec(Command::new("ls").arg("-la").cwd("/workspace")).await?;
    /// println!("{}", out.stdout);
    /// # Ok(()) }
    /// ```
    pub async fn exec(&self, command: impl Into<Command>) -> Result<ExecOutput, ClientError> {
        self.exec_stream(command).await?.wait().await
    }

    /// Starts a command and returns at once with a handle to follow it.
    pub async fn exec_stream(&self, command: impl Into<Command>) -> Result<Execution, ClientError> {
        let command = command.into();
        let req = Req::new(Method::POST, self.url(&["exec"], &[])).json(command.as_request());
        let accepted: ExecAccepted = self.client().send_json(req).await?;
        Ok(self.execution(accepted.exec_id))
    }

    /// A handle on an existing exec of this sandbox, e.g. one started by another process.
    pub fn execution(&self, exec_id: impl Into<String>) -> Execution {
        Execution {
            sandbox: self.clone(),
            exec_id: exec_id.into(),
        }
    }

    /// Runs code and waits for the result.
    ///
    /// ```no_run
    /// # async fn demo(sandbox: traforato_client::Sandbox) -> Result<(), traforato_client::ClientError> {
    /// use traforato_client::Runtime;
    ///
    /// let out = sandbox.run_code(Runtime::Python, "print(6 * 7)").await?;
    /// if out.syntax_error {
    ///     eprintln!("does not compile: {}", out.stderr);
    /// } else {
    ///     assert_eq!(out.stdout, "42\n");
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn run_code(
        &self,
        runtime: Runtime,
        code: impl Into<String>,
    ) -> Result<RunCodeOutput, ClientError> {
        self.run_code_with(RunCode::new(runtime, code)).await
    }

    /// Runs code with options and waits for the result.
    pub async fn run_code_with(&self, code: RunCode) -> Result<RunCodeOutput, ClientError> {
        let req = Req::new(Method::POST, self.url(&["exec", "code"], &[]))
            .json(&code.to_request(true))
            .extra_timeout(code.server_wait());
        let resp = self.client().send(req).await?;
        match resp.status().as_u16() {
            200..=299 => Ok(decode_json::<RunCodeResponse>(resp).await?.into()),
            422 => {
                let url = resp.url().to_string();
                let status = resp.status().as_u16();
                let body = resp
                    .bytes()
                    .await
                    .map_err(|e| ClientError::from_reqwest(&url, e))?;
                match serde_json::from_slice::<SyntaxErrorBody>(&body) {
                    Ok(b) if b.error == "syntax_error" => Ok(b.into()),
                    _ => Err(ClientError::from_error_body(status, &body, None)),
                }
            }
            _ => Err(error_from_response(resp).await),
        }
    }

    /// Starts code in the background and returns a handle to stream its output and wait for
    /// it. A syntax error then shows as a non-zero exit with the message on stderr.
    pub async fn run_code_background(&self, code: RunCode) -> Result<Execution, ClientError> {
        let req =
            Req::new(Method::POST, self.url(&["exec", "code"], &[])).json(&code.to_request(false));
        let accepted: RunCodeAccepted = self.client().send_json(req).await?;
        Ok(self.execution(accepted.exec_id))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::testing::{Reply, TestServer};
    use crate::Client;

    #[test]
    fn commands_build_requests() {
        let c: Command = "echo hi".into();
        assert_eq!(c.as_request().command, "echo hi");
        assert_eq!(c.as_request().args, None);
        let c = Command::new("ls")
            .args(["-l", "/"])
            .env("A", "1")
            .timeout(Duration::from_millis(1500));
        assert_eq!(
            c.as_request().args.as_deref(),
            Some(&["ls".to_string(), "-l".into(), "/".into()][..])
        );
        assert_eq!(c.as_request().timeout_ms, 1500);
        assert_eq!(c.as_request().env["A"], "1");
        let c = Command::shell("echo $0 $1").arg("x");
        assert_eq!(
            c.as_request().args.as_deref(),
            Some(
                &[
                    "/bin/sh".to_string(),
                    "-c".into(),
                    "echo $0 $1".into(),
                    "x".into()
                ][..]
            )
        );
        assert!(c.as_request().command.is_empty());
    }

    #[test]
    fn runtimes_parse() {
        assert_eq!(" Python ".parse::<Runtime>().unwrap(), Runtime::Python);
        assert_eq!("node".parse::<Runtime>().unwrap(), Runtime::Node);
        assert!("ruby".parse::<Runtime>().is_err());
    }

    fn frame(kind: &str, data: &str) -> serde_json::Value {
        serde_json::json!({"type": kind, "data": data, "ts": "2026-02-25T12:00:00Z"})
    }

    /// A worker whose exec emits frames in three long-poll pages.
    async fn frames_server() -> TestServer {
        let pages = Arc::new(Mutex::new(0u32));
        TestServer::start(move |req| {
            if req.method == "POST" && req.path().ends_with("/exec") {
                return Reply::json(202, r#"{"exec_id":"exec_1","frames_url":"/x"}"#);
            }
            assert!(
                req.path().ends_with("/exec/exec_1/frames"),
                "{}",
                req.target
            );
            assert_eq!(req.query("wait"), Some("25s"));
            let cursor: u64 = req.query("cursor").unwrap().parse().unwrap();
            let mut n = pages.lock().unwrap();
            *n += 1;
            let body = match cursor {
                0 => serde_json::json!({"frames": [frame("stdout", "a"), frame("stderr", "b")],
                    "next_cursor": 2, "has_more": true, "wait_applied": true}),
                2 if *n < 4 => serde_json::json!({"frames": [],
                    "next_cursor": 2, "has_more": true, "wait_applied": true}),
                2 => serde_json::json!({"frames": [frame("stdout", "c"), frame("exit", "3")],
                    "next_cursor": 4, "has_more": false, "wait_applied": true}),
                _ => panic!("unexpected cursor {cursor}"),
            };
            Reply::json(200, &body.to_string())
        })
        .await
    }

    #[tokio::test]
    async fn frames_stream_in_order_across_long_polls() {
        let server = frames_server().await;
        let sandbox = Client::new(&server.url()).unwrap().sandbox("s");
        let exec = sandbox.exec_stream("x").await.unwrap();
        assert_eq!(exec.id(), "exec_1");
        let frames: Vec<Frame> = exec.frames().map(|f| f.unwrap()).collect().await;
        let kinds: Vec<(FrameKind, &str)> =
            frames.iter().map(|f| (f.kind, f.data.as_str())).collect();
        assert_eq!(
            kinds,
            [
                (FrameKind::Stdout, "a"),
                (FrameKind::Stderr, "b"),
                (FrameKind::Stdout, "c"),
                (FrameKind::Exit, "3")
            ]
        );
        let cursors: Vec<String> = server
            .requests()
            .iter()
            .filter_map(|r| r.query("cursor").map(str::to_string))
            .collect();
        assert_eq!(cursors, ["0", "2", "2", "2"]);
    }

    #[tokio::test]
    async fn exec_waits_and_collects_output() {
        let server = frames_server().await;
        let sandbox = Client::new(&server.url()).unwrap().sandbox("s");
        let out = sandbox.exec(Command::new("x").cwd("/w")).await.unwrap();
        assert_eq!(out.stdout, "ac");
        assert_eq!(out.stderr, "b");
        assert_eq!(out.exit_code, 3);
        assert!(!out.success());
        let post = &server.requests()[0];
        let body: serde_json::Value = serde_json::from_slice(&post.body).unwrap();
        assert_eq!(body, serde_json::json!({"args": ["x"], "cwd": "/w"}));
    }

    #[tokio::test]
    async fn run_code_syntax_errors_are_outcomes() {
        let server = TestServer::start(|req| {
            let body: serde_json::Value = serde_json::from_slice(&req.body).unwrap();
            assert_eq!(body["wait"], true);
            if body["code"] == "print(" {
                Reply::json(
                    422,
                    r#"{"error":"syntax_error","exec_id":"e","runtime":"python","stdout":"","stderr":"SyntaxError: invalid syntax","exit_code":1}"#,
                )
            } else if body["runtime"] == "ruby" {
                Reply::json(400, r#"{"error":"runtime must be one of: node, python"}"#)
            } else {
                Reply::json(
                    200,
                    r#"{"exec_id":"e","sandbox_id":"s","runtime":"python","status":"exited","stdout":"42\n","stderr":"","output":"42\n","exit_code":0,"duration_ms":5,"started_at":"2026-02-25T12:00:00Z","completed_at":"2026-02-25T12:00:00Z"}"#,
                )
            }
        })
        .await;
        let sandbox = Client::new(&server.url()).unwrap().sandbox("s");
        let ok = sandbox
            .run_code(Runtime::Python, "print(42)")
            .await
            .unwrap();
        assert!(ok.success());
        assert_eq!(ok.stdout, "42\n");
        let bad = sandbox.run_code(Runtime::Python, "print(").await.unwrap();
        assert!(bad.syntax_error);
        assert!(!bad.success());
        assert_eq!(bad.exit_code, 1);
        assert_eq!(bad.stderr, "SyntaxError: invalid syntax");
    }

    #[tokio::test]
    async fn wait_falls_back_to_the_record_without_an_exit_frame() {
        let server = TestServer::start(|req| {
            if req.path().ends_with("/frames") {
                Reply::json(
                    200,
                    r#"{"frames":[],"next_cursor":0,"has_more":false,"wait_applied":true}"#,
                )
            } else {
                Reply::json(
                    200,
                    r#"{"exec_id":"e","sandbox_id":"s","status":"exited","exit_code":7,"started_at":"2026-02-25T12:00:00Z"}"#,
                )
            }
        })
        .await;
        let sandbox = Client::new(&server.url()).unwrap().sandbox("s");
        let out = sandbox.execution("e").wait().await.unwrap();
        assert_eq!(out.exit_code, 7);
    }
}
