//! Ports: byte streams into a sandbox's port (for the server's proxy).

use std::time::Duration;

use super::{Worker, WorkerError};
use crate::auth::Principal;
use crate::backend::{BackendError, BoxedStream};
use crate::id::SandboxId;

/// Longest wait for a connection to a sandbox port, whatever the backend does.
pub(super) const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

impl Worker {
    pub(super) async fn port_connect(
        &self,
        principal: &Principal,
        id: &SandboxId,
        port: u16,
    ) -> Result<BoxedStream, WorkerError> {
        let sandbox = self.sandbox(principal, id)?;
        let connected = tokio::time::timeout(CONNECT_TIMEOUT, sandbox.vm.connect(port)).await;
        match connected {
            Ok(Ok(stream)) => Ok(stream),
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
}
