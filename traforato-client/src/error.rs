//! The one error type of the client: API errors with the server's status and message, kept
//! apart from timeouts, connection failures, redirect trouble and undecodable answers.

use std::error::Error as StdError;

/// A boxed error from a caller-supplied token provider.
pub type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// Everything that can go wrong talking to traforato.
///
/// Match on the variant to tell "the server said no" ([`ClientError::Api`]) from "the server
/// could not be reached" ([`ClientError::Connect`], [`ClientError::Timeout`]).
///
/// A run-code syntax error (HTTP 422) is **not** an error: it is a normal
/// [`RunCodeOutput`](crate::RunCodeOutput) with `syntax_error: true` and a non-zero exit code,
/// because, like a failing command, it is an outcome of running the code.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The server answered with an error status. `message` is the `error` field of the
    /// server's `{"error": "..."}` body, or the body text when it was not JSON.
    #[error("{message} (http {status})")]
    Api {
        /// The HTTP status code, e.g. 404.
        status: u16,
        /// The server's message, e.g. `sandbox not found`.
        message: String,
        /// The `X-Request-Id` of the failed response, for correlating with server logs.
        request_id: Option<String>,
    },
    /// The request (or reading its response) took longer than the configured timeout.
    #[error("request to {url} timed out")]
    Timeout {
        /// The URL of the hop that timed out.
        url: String,
    },
    /// No connection could be made to the broker or worker.
    #[error("cannot connect to {url}")]
    Connect {
        /// The URL of the hop that failed.
        url: String,
        /// The transport error.
        #[source]
        source: reqwest::Error,
    },
    /// Any other transport failure (connection reset, invalid response framing, ...).
    #[error("request to {url} failed")]
    Transport {
        /// The URL of the hop that failed.
        url: String,
        /// The transport error.
        #[source]
        source: reqwest::Error,
    },
    /// A successful response whose body could not be decoded.
    #[error("cannot decode the response from {url}: {message}")]
    Decode {
        /// The URL of the hop whose body was bad.
        url: String,
        /// What was wrong.
        message: String,
    },
    /// The redirect chain (broker to worker, placement retries) was longer than allowed.
    #[error("too many redirects (more than {max})")]
    TooManyRedirects {
        /// The configured bound.
        max: usize,
    },
    /// A redirect without a usable `Location` header.
    #[error("invalid redirect from {url}: {message}")]
    InvalidRedirect {
        /// The URL that answered with the redirect.
        url: String,
        /// What was wrong with it.
        message: String,
    },
    /// The base URL given to the client is not usable.
    #[error("invalid base url {url:?}: {message}")]
    InvalidUrl {
        /// The URL as given.
        url: String,
        /// What was wrong with it.
        message: String,
    },
    /// The token provider failed to produce a token.
    #[error("token provider failed")]
    Token(#[source] BoxError),
    /// An exec's frames ended without an exit frame and the exec record has no exit code.
    #[error("exec {exec_id} ended without an exit code")]
    MissingExitCode {
        /// The exec.
        exec_id: String,
    },
    /// The WebSocket of an interactive exec failed (handshake, transport or protocol).
    #[error("websocket to {url} failed")]
    WebSocket {
        /// The WebSocket URL.
        url: String,
        /// The WebSocket error.
        #[source]
        source: Box<tokio_tungstenite::tungstenite::Error>,
    },
    /// The server ended an interactive exec with an `error` frame, or the socket closed
    /// before an `exit` frame.
    #[error("interactive exec failed: {0}")]
    Interactive(String),
    /// Building the HTTP client failed.
    #[error("cannot build the http client")]
    Build(#[source] reqwest::Error),
}

impl ClientError {
    /// The HTTP status for [`ClientError::Api`], `None` otherwise.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// True for an API error with status 404 (sandbox, exec, file or route not found).
    pub fn is_not_found(&self) -> bool {
        self.status() == Some(404)
    }

    /// True for [`ClientError::Timeout`].
    pub fn is_timeout(&self) -> bool {
        matches!(self, ClientError::Timeout { .. })
    }

    /// True for [`ClientError::Connect`].
    pub fn is_connect(&self) -> bool {
        matches!(self, ClientError::Connect { .. })
    }

    /// Classifies a transport error of a request to `url`.
    pub(crate) fn from_reqwest(url: &str, err: reqwest::Error) -> Self {
        // A connect timeout is reported as a connect error: the server was not reached.
        if err.is_connect() {
            ClientError::Connect {
                url: url.to_string(),
                source: err,
            }
        } else if err.is_timeout() {
            ClientError::Timeout {
                url: url.to_string(),
            }
        } else if err.is_decode() {
            ClientError::Decode {
                url: url.to_string(),
                message: err.to_string(),
            }
        } else {
            ClientError::Transport {
                url: url.to_string(),
                source: err,
            }
        }
    }

    /// Builds an [`ClientError::Api`] from an error response's status and body.
    pub(crate) fn from_error_body(status: u16, body: &[u8], request_id: Option<String>) -> Self {
        let message = match serde_json::from_slice::<traforato_core::api::ErrorBody>(body) {
            Ok(b) => b.error,
            Err(_) => {
                let text = String::from_utf8_lossy(body);
                let text = text.trim();
                if text.is_empty() {
                    reqwest::StatusCode::from_u16(status)
                        .ok()
                        .and_then(|s| s.canonical_reason())
                        .unwrap_or("unknown error")
                        .to_lowercase()
                } else {
                    truncate(text, 512)
                }
            }
        };
        ClientError::Api {
            status,
            message,
            request_id,
        }
    }
}

fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &text[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_error_body() {
        let e = ClientError::from_error_body(
            404,
            br#"{"error":"sandbox not found"}"#,
            Some("01H".into()),
        );
        match e {
            ClientError::Api {
                status,
                ref message,
                ref request_id,
            } => {
                assert_eq!(status, 404);
                assert_eq!(message, "sandbox not found");
                assert_eq!(request_id.as_deref(), Some("01H"));
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(e.is_not_found());
        assert_eq!(e.to_string(), "sandbox not found (http 404)");
    }

    #[test]
    fn non_json_body_becomes_the_message() {
        let e = ClientError::from_error_body(502, b"  bad gateway from proxy\n", None);
        assert!(
            matches!(e, ClientError::Api { status: 502, ref message, .. } if message == "bad gateway from proxy")
        );
    }

    #[test]
    fn empty_body_uses_the_reason_phrase() {
        let e = ClientError::from_error_body(503, b"", None);
        assert!(
            matches!(e, ClientError::Api { ref message, .. } if message == "service unavailable")
        );
    }

    #[test]
    fn long_bodies_are_truncated_on_a_char_boundary() {
        let body = "é".repeat(400);
        let e = ClientError::from_error_body(500, body.as_bytes(), None);
        let ClientError::Api { message, .. } = e else {
            panic!("not an api error")
        };
        assert!(message.ends_with("..."));
        assert!(message.len() <= 515);
    }
}
