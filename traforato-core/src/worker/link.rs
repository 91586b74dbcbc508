//! The worker's line to its broker: registration, VM events and VM-start requests, over HTTP
//! (implemented in the server crate) or in-process (embedding, tests).

use std::sync::Arc;

use async_trait::async_trait;

use crate::api::{RegistrationRequest, RegistrationResponse, VmEventRequest, VmStartResponse};
use crate::broker::{Broker, BrokerError};
use crate::id::ComponentId;

/// Why a call to the broker failed.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The broker could not be reached (connect error, timeout).
    #[error("broker unreachable: {0}")]
    Unreachable(String),
    /// The broker answered with an unexpected status.
    #[error("broker answered {status}: {body}")]
    Status {
        /// HTTP status.
        status: u16,
        /// Up to 4 KiB of the body.
        body: String,
    },
    /// The broker's answer did not decode.
    #[error("invalid broker response: {0}")]
    InvalidResponse(String),
    /// The broker refused in-process (embedded broker).
    #[error(transparent)]
    Broker(#[from] BrokerError),
}

/// Calls from a worker to its broker. Implementations authenticate as the worker.
#[async_trait]
pub trait BrokerLink: Send + Sync + 'static {
    /// Registers or renews the worker's lease.
    async fn register(
        &self,
        worker_id: &ComponentId,
        request: &RegistrationRequest,
    ) -> Result<RegistrationResponse, LinkError>;

    /// Best-effort deregistration.
    async fn deregister(&self, worker_id: &ComponentId) -> Result<(), LinkError>;

    /// Reports a VM event.
    async fn vm_event(
        &self,
        worker_id: &ComponentId,
        event: &VmEventRequest,
    ) -> Result<(), LinkError>;

    /// Pops one pending VM start for this worker.
    async fn vm_start(&self, worker_id: &ComponentId)
        -> Result<Option<VmStartResponse>, LinkError>;

    /// The broker's instance id, asked cheaply between heartbeats so that a restarted broker
    /// (a new id, or none reachable) is registered with again within a probe, not a
    /// heartbeat. `Ok(None)`: this link cannot tell (the default), and the worker relies on
    /// its heartbeats alone.
    async fn broker_instance(&self) -> Result<Option<String>, LinkError> {
        Ok(None)
    }
}

/// A link to a broker in the same process.
#[derive(Clone)]
pub struct InProcessBrokerLink {
    broker: Arc<Broker>,
}

impl InProcessBrokerLink {
    /// Links to `broker`.
    pub fn new(broker: Arc<Broker>) -> Self {
        Self { broker }
    }
}

#[async_trait]
impl BrokerLink for InProcessBrokerLink {
    async fn register(
        &self,
        worker_id: &ComponentId,
        request: &RegistrationRequest,
    ) -> Result<RegistrationResponse, LinkError> {
        Ok(self
            .broker
            .register_worker(worker_id.as_str(), request.clone())?)
    }

    async fn deregister(&self, worker_id: &ComponentId) -> Result<(), LinkError> {
        self.broker.deregister_worker(worker_id.as_str());
        Ok(())
    }

    async fn vm_event(
        &self,
        worker_id: &ComponentId,
        event: &VmEventRequest,
    ) -> Result<(), LinkError> {
        Ok(self
            .broker
            .apply_vm_event(worker_id.as_str(), event.clone())?)
    }

    async fn vm_start(
        &self,
        worker_id: &ComponentId,
    ) -> Result<Option<VmStartResponse>, LinkError> {
        Ok(self.broker.next_vm_start(worker_id.as_str())?)
    }

    // No `broker_instance`: a broker in the same process does not restart on its own, so
    // there is nothing to probe for.
}
