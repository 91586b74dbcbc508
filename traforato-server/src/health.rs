//! The binaries' `healthcheck` subcommand: `GET <url>/healthz` with a deadline, for container
//! HEALTHCHECKs and probes on hosts without curl.

use std::process::ExitCode;
use std::time::Duration;

use crate::config::{ConfigError, HealthcheckArgs};

/// Why a service did not answer healthy.
#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    /// No answer: refused, unreachable, or past the deadline.
    #[error("{url}: no answer")]
    Unreachable {
        /// The URL asked.
        url: String,
        /// Cause.
        #[source]
        source: reqwest::Error,
    },
    /// An answer other than `200`.
    #[error("{url}: answered {status}")]
    Status {
        /// The URL asked.
        url: String,
        /// The status it answered.
        status: u16,
    },
    /// The runtime to ask on could not start.
    #[error("start the async runtime")]
    Runtime(#[source] std::io::Error),
}

/// `GET <base>/healthz`, within `timeout`; `Ok` on `200`.
pub async fn check(base: &str, timeout: Duration) -> Result<(), HealthError> {
    let url = format!("{}/healthz", base.trim_end_matches('/'));
    let unreachable = |source| HealthError::Unreachable {
        url: url.clone(),
        source,
    };
    let client = reqwest::Client::builder()
        .timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(unreachable)?;
    let response = client.get(&url).send().await.map_err(unreachable)?;
    match response.status().as_u16() {
        200 => Ok(()),
        status => Err(HealthError::Status { url, status }),
    }
}

/// The `healthcheck` subcommand of `service`: the base URLs its configuration gives
/// (`--url` replaces the first), each asked in turn; exit 0 when all answer healthy.
/// Otherwise prints `<service>: unhealthy: <why>` (or the configuration's error) to stderr
/// and exits 1.
pub fn run(
    service: &str,
    bases: Result<Vec<String>, ConfigError>,
    args: &HealthcheckArgs,
) -> ExitCode {
    match bases {
        Ok(mut bases) => {
            if let (Some(url), Some(first)) = (&args.url, bases.first_mut()) {
                first.clone_from(url);
            }
            exit_code(service, &bases, args.timeout)
        }
        Err(err) => {
            eprintln!("{service}: {}", crate::http::error_chain(&err));
            ExitCode::from(1)
        }
    }
}

/// Asks every base URL in turn and exits 0 when all answer healthy; otherwise prints
/// `<service>: unhealthy: <why>` to stderr and exits 1.
pub fn exit_code(service: &str, bases: &[String], timeout: Duration) -> ExitCode {
    let checked = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(HealthError::Runtime)
        .and_then(|runtime| {
            runtime.block_on(async {
                for base in bases {
                    check(base, timeout).await?;
                }
                Ok(())
            })
        });
    match checked {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("{service}: unhealthy: {}", crate::http::error_chain(&err));
            ExitCode::from(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A one-shot HTTP server on loopback that answers `status` to the first request.
    async fn answering(status: &'static str) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let (mut conn, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = conn.read(&mut buf).await;
            let answer =
                format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
            let _ = conn.write_all(answer.as_bytes()).await;
        });
        format!("http://{addr}")
    }

    #[tokio::test]
    async fn healthy_only_on_200() {
        check(&answering("200 OK").await, Duration::from_secs(3))
            .await
            .unwrap();
        let err = check(
            &answering("503 Service Unavailable").await,
            Duration::from_secs(3),
        )
        .await
        .unwrap_err();
        assert!(
            matches!(err, HealthError::Status { status: 503, .. }),
            "{err}"
        );
        assert!(err.to_string().ends_with("/healthz: answered 503"), "{err}");
    }

    #[tokio::test]
    async fn nothing_listening_is_unreachable() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let err = check(&format!("http://{addr}"), Duration::from_secs(3))
            .await
            .unwrap_err();
        assert!(matches!(err, HealthError::Unreachable { .. }), "{err}");
    }

    #[tokio::test]
    async fn a_silent_service_times_out() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        // Accepts (the kernel's backlog) but never answers.
        let started = std::time::Instant::now();
        let err = check(&format!("http://{addr}"), Duration::from_millis(300))
            .await
            .unwrap_err();
        assert!(matches!(err, HealthError::Unreachable { .. }), "{err}");
        assert!(started.elapsed() < Duration::from_secs(3));
        drop(listener);
    }
}
