//! Output: JSON documents or human text on stdout, errors on stderr (as JSON with `--json`),
//! and the exit codes.

use std::error::Error as _;
use std::io::Write;

use serde::Serialize;
use traforato_client::ClientError;

/// Exit code of a traforato-cli failure in most commands.
pub const EXIT_FAILURE: u8 = 1;
/// Exit code of a traforato-cli failure in `exec` and `run`, whose own exit code is the
/// command's (the convention of `docker run`).
pub const EXIT_TOOL_FAILURE: u8 = 125;

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The API call failed.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// A local file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The local path (`-` for stdin/stdout).
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A path in the sandbox does not exist.
    #[error("{0}: no such file or directory")]
    NotFound(String),
    /// Credentials are missing or contradictory (e.g. `--client-id` without a secret).
    #[error("{0}")]
    Auth(String),
    /// Options that do not go together.
    #[error("{0}")]
    Usage(&'static str),
}

impl CliError {
    pub fn io(path: &str, source: std::io::Error) -> Self {
        CliError::Io {
            path: path.to_string(),
            source,
        }
    }

    /// One line for humans: the error, plus its root cause for transport errors.
    pub fn human(&self) -> String {
        let mut msg = self.to_string();
        if let CliError::Client(e) = self {
            let mut root: Option<&dyn std::error::Error> = e.source();
            while let Some(next) = root.and_then(|r| r.source()) {
                root = Some(next);
            }
            if let Some(root) = root {
                msg.push_str(": ");
                msg.push_str(&root.to_string());
            }
            if e.is_connect() {
                msg.push_str(" (is the broker running? set --url or TRAFORATO_URL)");
            }
        }
        msg
    }

    fn kind(&self) -> &'static str {
        match self {
            CliError::Client(ClientError::Api { .. }) => "api",
            CliError::Client(ClientError::Connect { .. }) => "connect",
            CliError::Client(ClientError::Timeout { .. }) => "timeout",
            CliError::Client(ClientError::TooManyRedirects { .. }) => "too_many_redirects",
            CliError::Client(_) => "client",
            CliError::Io { .. } => "io",
            CliError::NotFound(_) => "not_found",
            CliError::Auth(_) => "auth",
            CliError::Usage(_) => "usage",
        }
    }
}

/// Where results go.
#[derive(Debug, Clone, Copy)]
pub struct Output {
    /// `--json`.
    pub json: bool,
}

impl Output {
    /// Prints a JSON document (pretty) on stdout.
    pub fn json<T: Serialize>(&self, value: &T) {
        let text = serde_json::to_string_pretty(value).unwrap_or_else(|_| "null".into());
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{text}");
    }

    /// Prints a line of human text on stdout.
    pub fn line(&self, text: impl std::fmt::Display) {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{text}");
    }

    /// Reports an error on stderr.
    pub fn error(&self, err: &CliError) {
        let mut stderr = std::io::stderr().lock();
        if self.json {
            let mut v = serde_json::json!({
                "error": match err {
                    CliError::Client(ClientError::Api { message, .. }) => message.clone(),
                    other => other.human(),
                },
                "kind": err.kind(),
            });
            if let CliError::Client(ClientError::Api {
                status, request_id, ..
            }) = err
            {
                v["status"] = (*status).into();
                if let Some(id) = request_id {
                    v["request_id"] = id.clone().into();
                }
            }
            let _ = writeln!(stderr, "{v}");
        } else {
            let _ = writeln!(stderr, "error: {}", err.human());
        }
    }
}

/// Maps a remote exit code to a process exit code (0..=255; anything else is 255).
pub fn exit_code(code: i32) -> u8 {
    u8::try_from(code).unwrap_or(255)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_fit_a_byte() {
        assert_eq!(exit_code(0), 0);
        assert_eq!(exit_code(124), 124);
        assert_eq!(exit_code(-1), 255);
        assert_eq!(exit_code(300), 255);
    }

    #[test]
    fn api_errors_read_like_the_server() {
        let e = CliError::Client(ClientError::Api {
            status: 404,
            message: "sandbox not found".into(),
            request_id: None,
        });
        assert_eq!(e.human(), "sandbox not found (http 404)");
        assert_eq!(e.kind(), "api");
        assert_eq!(
            CliError::NotFound("/x".into()).human(),
            "/x: no such file or directory"
        );
    }
}
