//! Ports: byte streams into a sandbox's port (for the server's proxy) and port URLs.

use std::time::Duration;

use super::{Worker, WorkerError};
use crate::api::PortUrlResponse;
use crate::auth::Principal;
use crate::backend::{BackendError, BoxedStream};
use crate::id::SandboxId;

/// Longest wait for a connection to a sandbox port, whatever the backend does.
pub(super) const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A port: a trimmed integer in 1..=65535.
fn parse_port(raw: &str) -> Result<u16, WorkerError> {
    match raw.trim().parse::<u16>() {
        Ok(port) if port > 0 => Ok(port),
        _ => Err(WorkerError::InvalidPort),
    }
}

fn parse_protocol(raw: Option<&str>) -> Result<String, WorkerError> {
    let protocol = raw.unwrap_or("").trim().to_ascii_lowercase();
    match protocol.as_str() {
        "" => Ok("https".to_string()),
        "http" | "https" | "ws" | "wss" => Ok(protocol),
        _ => Err(WorkerError::InvalidProtocol),
    }
}

impl Worker {
    pub(super) async fn port_connect(
        &self,
        principal: &Principal,
        raw_id: &str,
        raw_port: &str,
    ) -> Result<(SandboxId, BoxedStream), WorkerError> {
        let id = self.parse_id(raw_id)?;
        let sandbox = self.sandbox(principal, &id)?;
        let port = parse_port(raw_port)?;
        let connected = tokio::time::timeout(CONNECT_TIMEOUT, sandbox.vm.connect(port)).await;
        match connected {
            Ok(Ok(stream)) => Ok((sandbox.id, stream)),
            Err(_) | Ok(Err(BackendError::ConnectTimeout { .. })) => {
                Err(WorkerError::UpstreamTimeout)
            }
            Ok(Err(BackendError::Gone)) => Err(WorkerError::SandboxNotFound),
            Ok(Err(error)) => {
                tracing::debug!(
                    sandbox_id = %sandbox.id,
                    port,
                    error = %error,
                    "sandbox port connection failed"
                );
                Err(WorkerError::UpstreamUnreachable)
            }
        }
    }

    pub(super) fn port_url_for(
        &self,
        principal: &Principal,
        raw_id: &str,
        raw_port: &str,
        protocol: Option<&str>,
        host: &str,
    ) -> Result<PortUrlResponse, WorkerError> {
        let id = self.parse_id(raw_id)?;
        let sandbox = self.sandbox(principal, &id)?;
        let port = parse_port(raw_port)?;
        let protocol = parse_protocol(protocol)?;
        let host = match host.trim() {
            "" => "localhost",
            host => host,
        };
        Ok(PortUrlResponse {
            sandbox_id: sandbox.id.to_string(),
            port,
            url: format!("{protocol}://{host}/sandboxes/{}/proxy/{port}", sandbox.id),
            protocol,
        })
    }
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn ports_and_protocols() {
        assert_eq!(parse_port(" 3000 ").unwrap(), 3000);
        assert_eq!(parse_port("65535").unwrap(), 65535);
        for bad in ["0", "65536", "-1", "", "http"] {
            assert!(
                matches!(parse_port(bad), Err(WorkerError::InvalidPort)),
                "{bad}"
            );
        }
        assert_eq!(parse_protocol(None).unwrap(), "https");
        assert_eq!(parse_protocol(Some(" WS ")).unwrap(), "ws");
        assert!(matches!(
            parse_protocol(Some("ftp")),
            Err(WorkerError::InvalidProtocol)
        ));
    }
}
