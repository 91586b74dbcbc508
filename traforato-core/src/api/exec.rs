//! Exec and run-code bodies, exec records and output frames.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// `POST /sandboxes/{id}/exec`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ExecRequest {
    /// A shell command, run through `/bin/sh -c`. Empty with no `args` means `true`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub command: String,
    /// An argument vector run without a shell (additive); takes precedence over `command`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub args: Option<Vec<String>>,
    /// Working directory inside the sandbox.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub cwd: String,
    /// Extra environment variables.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Kill the process group after this long (exit code 124); ≤ 0 means the default.
    #[serde(skip_serializing_if = "is_zero")]
    pub timeout_ms: i64,
    /// Input written to the command's stdin first (additive), in `stdin_encoding`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stdin: Option<String>,
    /// `utf8` (default, `utf-8` too) or `base64` (additive).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub stdin_encoding: String,
    /// Keep stdin open after `stdin` for `POST …/exec/{exec_id}/stdin` until an empty body
    /// (EOF) (additive). Without it stdin is closed after `stdin`.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub interactive: bool,
    /// Run on a pseudo-terminal (additive; implies `interactive`): one output stream
    /// (`stdout` frames), `TERM=xterm-256color` unless `env` sets it.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub tty: bool,
    /// Terminal lines with `tty` (default 24).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rows: Option<u16>,
    /// Terminal columns with `tty` (default 80).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cols: Option<u16>,
}

/// The JSON form of `POST /sandboxes/{id}/exec/{exec_id}/stdin` (with a JSON content type);
/// other bodies are the raw bytes. Empty `data` closes stdin (EOF).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ExecStdinJson {
    /// The input, in `encoding`.
    pub data: String,
    /// `utf8` (default, `utf-8` too) or `base64`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub encoding: String,
}

/// `POST /sandboxes/{id}/exec/{exec_id}/signal`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ExecSignalRequest {
    /// `TERM`, `KILL`, `INT` or `HUP` (a `SIG` prefix and any case are accepted).
    pub signal: String,
}

/// `POST /sandboxes/{id}/exec/{exec_id}/resize`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ExecResizeRequest {
    /// Terminal lines (> 0).
    pub rows: u16,
    /// Terminal columns (> 0).
    pub cols: u16,
}

/// `GET /sandboxes/{id}/exec`: the sandbox's execs, running first, then newest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecList {
    /// The records.
    pub execs: Vec<ExecRecord>,
}

fn is_zero(v: &i64) -> bool {
    *v == 0
}

/// `202` from exec: the exec has started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecAccepted {
    /// Id of the exec.
    pub exec_id: String,
    /// Sandbox (additive).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sandbox_id: String,
    /// `running` (additive).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub status: String,
    /// Relative URL of the exec record (additive).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub poll_url: String,
    /// Relative URL of the frames (additive).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub frames_url: String,
}

/// `GET /sandboxes/{id}/exec/{exec_id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecRecord {
    /// Id.
    pub exec_id: String,
    /// Sandbox.
    pub sandbox_id: String,
    /// `python` or `node` for run-code.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub runtime: String,
    /// `running` or `exited`.
    pub status: String,
    /// Present once exited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// The command, for plain exec.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub command: String,
    /// Collected stdout (lossy UTF-8).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub stdout: String,
    /// Collected stderr (lossy UTF-8).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub stderr: String,
    /// stdout followed by stderr.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub output: String,
    /// Wall time; 0 while running.
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub duration_ms: u64,
    /// Start time.
    #[serde(with = "super::timestamp")]
    pub started_at: DateTime<Utc>,
    /// End time, once exited.
    #[serde(
        default,
        with = "super::timestamp::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub completed_at: Option<DateTime<Utc>>,
    /// True when the exec was killed by its timeout (additive).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub timed_out: bool,
    /// True when the exec runs on a pseudo-terminal (additive).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub tty: bool,
}

fn is_zero_u64(v: &u64) -> bool {
    *v == 0
}

/// One piece of exec output, or the final exit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Frame {
    /// `stdout`, `stderr` or `exit`.
    #[serde(rename = "type")]
    pub kind: FrameKind,
    /// Text (lossy UTF-8), or the decimal exit code for `exit`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub data: String,
    /// When the output was read.
    #[serde(with = "super::timestamp")]
    pub ts: DateTime<Utc>,
}

/// What a frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FrameKind {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
    /// The exit code; always the last frame.
    Exit,
}

impl FrameKind {
    /// The wire name (as serde writes it).
    pub fn as_str(self) -> &'static str {
        match self {
            FrameKind::Stdout => "stdout",
            FrameKind::Stderr => "stderr",
            FrameKind::Exit => "exit",
        }
    }
}

/// `GET /sandboxes/{id}/exec/{exec_id}/frames?cursor=N&wait=...`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FramesResponse {
    /// Frames from the cursor on; `[]`, never null.
    pub frames: Vec<Frame>,
    /// The cursor for the next call: the total number of frames so far.
    pub next_cursor: u64,
    /// True until the exit frame has been returned.
    pub has_more: bool,
    /// True when the call long-polled (a non-empty `wait` was given).
    pub wait_applied: bool,
}

/// `POST /sandboxes/{id}/exec/code`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RunCodeRequest {
    /// Source code.
    pub code: String,
    /// `python` or `node`.
    pub runtime: String,
    /// ≤ 0 means 30000.
    #[serde(skip_serializing_if = "is_zero")]
    pub timeout_ms: i64,
    /// Working directory inside the sandbox.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub cwd: String,
    /// Extra environment variables.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Wait for the result (default true); `false` answers 202 at once.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wait: Option<bool>,
}

/// `200` from run-code with `wait: true`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunCodeResponse {
    /// Id.
    pub exec_id: String,
    /// Sandbox.
    pub sandbox_id: String,
    /// `python` or `node`.
    pub runtime: String,
    /// `exited`.
    pub status: String,
    /// stdout (lossy UTF-8).
    pub stdout: String,
    /// stderr (lossy UTF-8).
    pub stderr: String,
    /// stdout followed by stderr.
    pub output: String,
    /// Exit code; 124 on timeout.
    pub exit_code: i32,
    /// Wall time.
    pub duration_ms: u64,
    /// Start time.
    #[serde(with = "super::timestamp")]
    pub started_at: DateTime<Utc>,
    /// End time.
    #[serde(with = "super::timestamp")]
    pub completed_at: DateTime<Utc>,
}

/// `202` from run-code with `wait: false`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunCodeAccepted {
    /// Id.
    pub exec_id: String,
    /// Sandbox.
    pub sandbox_id: String,
    /// `running`.
    pub status: String,
    /// `/sandboxes/<sid>/exec/<eid>`.
    pub poll_url: String,
    /// `/sandboxes/<sid>/exec/<eid>/frames`.
    pub frames_url: String,
}

/// `422` from run-code: the code does not compile. `error` is `syntax_error`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyntaxErrorBody {
    /// Always `syntax_error`.
    pub error: String,
    /// Id.
    pub exec_id: String,
    /// Runtime.
    pub runtime: String,
    /// Empty.
    pub stdout: String,
    /// The interpreter's message.
    pub stderr: String,
    /// The interpreter's exit code for the check (non-zero).
    pub exit_code: i32,
    /// `exited` (additive).
    #[serde(default)]
    pub status: String,
    /// How long the check took (additive).
    #[serde(default)]
    pub duration_ms: u64,
}

/// A terminal size in an exec WebSocket frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TerminalFrame {
    /// Lines.
    pub rows: u16,
    /// Columns.
    pub cols: u16,
}

/// The exit of the command in an `exit` frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitFrame {
    /// Exit code (`128 + n` when killed by signal `n`, `124` on timeout).
    pub code: i32,
}

/// One message of the exec WebSocket protocol (`GET …/exec/ws`, Orchard's), both ways: `stdin`/`resize` from the client,
/// `stdout`/`stderr`/`exit`/`error` from the server. Empty fields are omitted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WsFrame {
    /// What the frame is.
    #[serde(rename = "type")]
    pub kind: String,
    /// Bytes, base64 (standard alphabet, padded).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub data: String,
    /// The terminal size of `resize`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub terminal: Option<TerminalFrame>,
    /// The exit of `exit`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit: Option<ExitFrame>,
    /// The message of `error`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub error: String,
    /// Reconnectable sessions: the position of an output frame in the exec's output (1 for
    /// the first), the position `history` replays after and `ack` confirms, and the position
    /// `no_more_history` ends at.
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub watermark: u64,
}

/// `GET /sandboxes/{id}/exec/ws/url`: where a browser opens an exec WebSocket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecWsUrlResponse {
    /// The sandbox.
    pub sandbox_id: String,
    /// The worker's own `ws://` or `wss://` URL of the exec, with the exec's options and, in
    /// prod mode, a single-use `access_token`.
    pub url: String,
    /// When the access token expires (prod mode only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
}

/// The header of the worker's `101` (exec WebSocket) that names the socket's exec.
pub const EXEC_ID_HEADER: &str = "x-traforato-exec-id";

impl WsFrame {
    /// A frame of `kind` with nothing else.
    fn of(kind: &str) -> Self {
        Self {
            kind: kind.to_string(),
            ..Self::default()
        }
    }

    /// The protocol frame of an exec frame whose exact bytes are `bytes` (for an exit frame
    /// they are not used).
    pub fn from_exec(frame: &Frame, bytes: &[u8]) -> Self {
        match frame.kind {
            FrameKind::Stdout | FrameKind::Stderr => Self {
                data: base64::Engine::encode(&base64::engine::general_purpose::STANDARD, bytes),
                ..Self::of(frame.kind.as_str())
            },
            FrameKind::Exit => Self {
                kind: frame.kind.as_str().to_string(),
                exit: Some(ExitFrame {
                    code: frame.data.trim().parse().unwrap_or(-1),
                }),
                ..Self::default()
            },
        }
    }

    /// An `error` frame.
    pub fn error(message: impl Into<String>) -> Self {
        Self {
            error: message.into(),
            ..Self::of("error")
        }
    }

    /// A `stdin` frame; empty `data` is EOF.
    pub fn stdin(data: &[u8]) -> Self {
        Self {
            data: base64::Engine::encode(&base64::engine::general_purpose::STANDARD, data),
            ..Self::of("stdin")
        }
    }

    /// A `resize` frame.
    pub fn resize(rows: u16, cols: u16) -> Self {
        Self {
            terminal: Some(TerminalFrame { rows, cols }),
            ..Self::of("resize")
        }
    }

    /// A session frame that carries a watermark: `history`, `ack`, `no_more_history`.
    pub fn at_watermark(kind: &str, watermark: u64) -> Self {
        Self {
            watermark,
            ..Self::of(kind)
        }
    }

    /// A session frame with nothing else: `detach`, `close`.
    pub fn session(kind: &str) -> Self {
        Self::of(kind)
    }
}

/// A signal for a running exec's process group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExecSignal {
    /// SIGTERM: ask to stop.
    Term,
    /// SIGKILL: stop now.
    Kill,
    /// SIGINT: what Ctrl-C sends.
    Int,
    /// SIGHUP: the terminal went away.
    Hup,
}

impl ExecSignal {
    /// Parses `TERM`, `KILL`, `INT`, `HUP`, with or without `SIG`, in any case.
    pub fn parse(raw: &str) -> Option<Self> {
        let upper = raw.trim().to_ascii_uppercase();
        match upper.strip_prefix("SIG").unwrap_or(&upper) {
            "TERM" => Some(Self::Term),
            "KILL" => Some(Self::Kill),
            "INT" => Some(Self::Int),
            "HUP" => Some(Self::Hup),
            _ => None,
        }
    }

    /// The name the API uses (`TERM`, `KILL`, `INT`, `HUP`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Term => "TERM",
            Self::Kill => "KILL",
            Self::Int => "INT",
            Self::Hup => "HUP",
        }
    }

    /// The signal's number on Linux.
    pub fn number(self) -> i32 {
        match self {
            Self::Hup => 1,
            Self::Int => 2,
            Self::Kill => 9,
            Self::Term => 15,
        }
    }

    /// The signal's number if it is one of these (for a backend's wire protocol).
    pub fn from_number(number: i32) -> Option<Self> {
        [Self::Hup, Self::Int, Self::Kill, Self::Term]
            .into_iter()
            .find(|s| s.number() == number)
    }
}
