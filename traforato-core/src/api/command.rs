//! What to run in a sandbox and what came out: [`Command`] and [`RunCode`] build the requests,
//! [`ExecOutput`] and [`RunCodeOutput`] hold the results. Shared by the client and the
//! embedded worker's [`Sandbox`](crate::worker::Sandbox) handle.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use super::{ExecRequest, Frame, FrameKind, RunCodeRequest, RunCodeResponse, SyntaxErrorBody};

/// A command to run in a sandbox.
///
/// A plain string converts into a shell command (`/bin/sh -c`); [`Command::new`] runs a
/// program with an argument vector and no shell.
///
/// ```
/// use std::time::Duration;
/// use traforato_core::api::Command;
///
/// let shell: Command = "ls -la | wc -l".into();
/// let argv = Command::new("python3")
///     .arg("-c")
///     .arg("import sys; print(sys.argv)")
///     .cwd("/workspace")
///     .env("DEBUG", "1")
///     .timeout(Duration::from_secs(30));
/// # let _ = (shell, argv);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[must_use]
pub struct Command {
    req: ExecRequest,
}

impl Command {
    /// Runs `program` directly (no shell); add arguments with [`Command::arg`].
    pub fn new(program: impl Into<String>) -> Self {
        Command {
            req: ExecRequest {
                args: Some(vec![program.into()]),
                ..Default::default()
            },
        }
    }

    /// Runs `script` through `/bin/sh -c`.
    pub fn shell(script: impl Into<String>) -> Self {
        Command {
            req: ExecRequest {
                command: script.into(),
                ..Default::default()
            },
        }
    }

    /// Appends an argument. On a shell command this switches to an argument vector of
    /// `sh -c <script> <args...>`.
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        match &mut self.req.args {
            Some(args) => args.push(arg.into()),
            None => {
                let script = std::mem::take(&mut self.req.command);
                self.req.args = Some(vec!["/bin/sh".into(), "-c".into(), script, arg.into()]);
            }
        }
        self
    }

    /// Appends arguments.
    pub fn args<I, S>(self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        args.into_iter().fold(self, |c, a| c.arg(a))
    }

    /// The working directory inside the sandbox.
    pub fn cwd(mut self, dir: impl Into<String>) -> Self {
        self.req.cwd = dir.into();
        self
    }

    /// Sets an environment variable.
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.req.env.insert(key.into(), value.into());
        self
    }

    /// Kills the command after this long; it then exits with code 124.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.req.timeout_ms = duration_ms(timeout);
        self
    }

    /// Writes `data` to the command's stdin first; stdin is then closed unless
    /// [`Command::interactive`].
    pub fn stdin(mut self, data: impl AsRef<[u8]>) -> Self {
        use base64::Engine as _;
        self.req.stdin = Some(base64::engine::general_purpose::STANDARD.encode(data));
        self.req.stdin_encoding = "base64".to_string();
        self
    }

    /// Keeps stdin open for more input until it is closed (the client's
    /// `Execution::send_stdin` and `close_stdin`).
    pub fn interactive(mut self) -> Self {
        self.req.interactive = true;
        self
    }

    /// The request body this command sends.
    pub fn as_request(&self) -> &ExecRequest {
        &self.req
    }
}

impl From<&str> for Command {
    fn from(script: &str) -> Self {
        Command::shell(script)
    }
}

impl From<String> for Command {
    fn from(script: String) -> Self {
        Command::shell(script)
    }
}

impl From<ExecRequest> for Command {
    fn from(req: ExecRequest) -> Self {
        Command { req }
    }
}

fn duration_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX).max(1)
}

/// A code interpreter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Runtime {
    /// `python`.
    Python,
    /// `node`.
    Node,
}

impl Runtime {
    /// The program that runs it: `python3` or `node`.
    pub fn program(self) -> &'static str {
        match self {
            Runtime::Python => "python3",
            Runtime::Node => "node",
        }
    }

    /// The name the API uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Runtime::Python => "python",
            Runtime::Node => "node",
        }
    }
}

impl fmt::Display for Runtime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A runtime name other than `python` or `node`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("runtime must be one of: node, python")]
pub struct ParseRuntimeError;

impl Runtime {
    /// Parses `python` / `node` (trimmed, case-insensitive).
    pub fn parse(raw: &str) -> Option<Self> {
        match raw.trim().to_ascii_lowercase().as_str() {
            "python" => Some(Runtime::Python),
            "node" => Some(Runtime::Node),
            _ => None,
        }
    }
}

impl FromStr for Runtime {
    type Err = ParseRuntimeError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Runtime::parse(s).ok_or(ParseRuntimeError)
    }
}

/// Code to run, with options.
///
/// ```
/// use std::time::Duration;
/// use traforato_core::api::{RunCode, Runtime};
///
/// let code = RunCode::new(Runtime::Python, "import os; print(os.getcwd())")
///     .cwd("/workspace")
///     .timeout(Duration::from_secs(10));
/// # let _ = code;
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub struct RunCode {
    runtime: Runtime,
    code: String,
    cwd: String,
    env: BTreeMap<String, String>,
    timeout: Option<Duration>,
}

impl RunCode {
    /// `code` in `runtime`, with the server's defaults (30 s timeout).
    pub fn new(runtime: Runtime, code: impl Into<String>) -> Self {
        RunCode {
            runtime,
            code: code.into(),
            cwd: String::new(),
            env: BTreeMap::new(),
            timeout: None,
        }
    }

    /// The working directory.
    pub fn cwd(mut self, dir: impl Into<String>) -> Self {
        self.cwd = dir.into();
        self
    }

    /// Sets an environment variable.
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.insert(key.into(), value.into());
        self
    }

    /// Kills the interpreter after this long (exit code 124).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// The request body: waiting for the result, or answered at once with the exec's id.
    pub fn to_request(&self, wait: bool) -> RunCodeRequest {
        RunCodeRequest {
            code: self.code.clone(),
            runtime: self.runtime.as_str().to_string(),
            timeout_ms: self.timeout.map(duration_ms).unwrap_or(0),
            cwd: self.cwd.clone(),
            env: self.env.clone(),
            wait: Some(wait),
        }
    }

    /// How long the server may take to answer a waiting run: the code's timeout (30 s by
    /// default) plus a margin for interpreter start-up.
    pub fn server_wait(&self) -> Duration {
        self.timeout.unwrap_or(Duration::from_secs(30)) + Duration::from_secs(10)
    }
}

/// The result of a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutput {
    /// The exec id.
    pub exec_id: String,
    /// Everything written to stdout (lossy UTF-8).
    pub stdout: String,
    /// Everything written to stderr (lossy UTF-8).
    pub stderr: String,
    /// The exit code; 124 when the command's timeout killed it.
    pub exit_code: i32,
}

impl ExecOutput {
    /// True when the exit code is 0.
    pub fn success(&self) -> bool {
        self.exit_code == 0
    }
}

/// The result of running code (the client's and the embedded worker's `run_code`).
///
/// A syntax error is an outcome, not an error: `syntax_error` is true, `exit_code`
/// is the interpreter's (non-zero) and `stderr` holds its message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunCodeOutput {
    /// The exec id.
    pub exec_id: String,
    /// The runtime that ran the code.
    pub runtime: String,
    /// stdout (lossy UTF-8).
    pub stdout: String,
    /// stderr (lossy UTF-8).
    pub stderr: String,
    /// The exit code; 124 on timeout.
    pub exit_code: i32,
    /// Wall time.
    pub duration_ms: u64,
    /// The code did not compile (HTTP 422 `syntax_error`).
    pub syntax_error: bool,
}

impl RunCodeOutput {
    /// True when the code ran and exited 0.
    pub fn success(&self) -> bool {
        self.exit_code == 0 && !self.syntax_error
    }
}

impl From<RunCodeResponse> for RunCodeOutput {
    fn from(r: RunCodeResponse) -> Self {
        RunCodeOutput {
            exec_id: r.exec_id,
            runtime: r.runtime,
            stdout: r.stdout,
            stderr: r.stderr,
            exit_code: r.exit_code,
            duration_ms: r.duration_ms,
            syntax_error: false,
        }
    }
}

impl From<SyntaxErrorBody> for RunCodeOutput {
    fn from(r: SyntaxErrorBody) -> Self {
        RunCodeOutput {
            exec_id: r.exec_id,
            runtime: r.runtime,
            stdout: r.stdout,
            stderr: r.stderr,
            exit_code: r.exit_code,
            duration_ms: r.duration_ms,
            syntax_error: true,
        }
    }
}

/// The exit code an `exit` frame carries, `None` for output frames.
pub fn frame_exit_code(frame: &Frame) -> Option<i32> {
    match frame.kind {
        FrameKind::Exit => Some(frame.data.trim().parse().unwrap_or(-1)),
        _ => None,
    }
}
