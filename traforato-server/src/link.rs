//! [`HttpBrokerLink`]: the worker's line to a broker over HTTP (registration, VM events,
//! VM-start requests), with a 3 s timeout per call.

use std::time::Duration;

use async_trait::async_trait;
use reqwest::StatusCode;
use serde::de::DeserializeOwned;
use traforato_core::api::{
    RegistrationRequest, RegistrationResponse, VmEventRequest, VmStartResponse,
};
use traforato_core::id::ComponentId;
use traforato_core::worker::{BrokerLink, LinkError};

/// Budget of every call to the broker.
pub const LINK_TIMEOUT: Duration = Duration::from_secs(3);

/// Most bytes of an unexpected answer kept in [`LinkError::Status`].
pub const ERROR_BODY_MAX: usize = 4096;

/// A [`BrokerLink`] over HTTP to `<control_url>/internal/workers/<id>/...`.
///
/// It sends no `Authorization` header: internal worker tokens come with prod auth, which is
/// not implemented yet (the binaries refuse to start with a JWT secret).
#[derive(Debug, Clone)]
pub struct HttpBrokerLink {
    client: reqwest::Client,
    control_url: String,
}

impl HttpBrokerLink {
    /// A link to the broker at `control_url` (e.g. `http://broker:8080`).
    pub fn new(control_url: &str) -> Self {
        let client = reqwest::Client::builder()
            .timeout(LINK_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap_or_else(|_| reqwest::Client::new());
        Self {
            client,
            control_url: control_url.trim().trim_end_matches('/').to_string(),
        }
    }

    /// The broker URL.
    pub fn control_url(&self) -> &str {
        &self.control_url
    }

    fn url(&self, worker_id: &ComponentId, leaf: &str) -> String {
        format!(
            "{}/internal/workers/{}/{leaf}",
            self.control_url,
            worker_id.as_str()
        )
    }
}

fn unreachable(err: reqwest::Error) -> LinkError {
    let mut text = err.to_string();
    let mut source = std::error::Error::source(&err);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    LinkError::Unreachable(text)
}

async fn unexpected(resp: reqwest::Response) -> LinkError {
    let status = resp.status().as_u16();
    let bytes = resp.bytes().await.unwrap_or_default();
    let kept = &bytes[..bytes.len().min(ERROR_BODY_MAX)];
    LinkError::Status {
        status,
        body: String::from_utf8_lossy(kept).into_owned(),
    }
}

async fn decode<T: DeserializeOwned>(resp: reqwest::Response) -> Result<T, LinkError> {
    let bytes = resp.bytes().await.map_err(unreachable)?;
    serde_json::from_slice(&bytes).map_err(|err| LinkError::InvalidResponse(err.to_string()))
}

#[async_trait]
impl BrokerLink for HttpBrokerLink {
    async fn register(
        &self,
        worker_id: &ComponentId,
        request: &RegistrationRequest,
    ) -> Result<RegistrationResponse, LinkError> {
        let resp = self
            .client
            .put(self.url(worker_id, "registration"))
            .json(request)
            .send()
            .await
            .map_err(unreachable)?;
        if resp.status() != StatusCode::OK {
            return Err(unexpected(resp).await);
        }
        decode(resp).await
    }

    async fn deregister(&self, worker_id: &ComponentId) -> Result<(), LinkError> {
        let resp = self
            .client
            .delete(self.url(worker_id, "registration"))
            .send()
            .await
            .map_err(unreachable)?;
        if resp.status() != StatusCode::NO_CONTENT {
            return Err(unexpected(resp).await);
        }
        Ok(())
    }

    async fn vm_event(
        &self,
        worker_id: &ComponentId,
        event: &VmEventRequest,
    ) -> Result<(), LinkError> {
        let resp = self
            .client
            .post(self.url(worker_id, "vm-events"))
            .json(event)
            .send()
            .await
            .map_err(unreachable)?;
        if resp.status() != StatusCode::NO_CONTENT {
            return Err(unexpected(resp).await);
        }
        Ok(())
    }

    async fn vm_start(
        &self,
        worker_id: &ComponentId,
    ) -> Result<Option<VmStartResponse>, LinkError> {
        let resp = self
            .client
            .post(self.url(worker_id, "vm-start"))
            .send()
            .await
            .map_err(unreachable)?;
        match resp.status() {
            StatusCode::NO_CONTENT => Ok(None),
            StatusCode::OK => decode(resp).await.map(Some),
            _ => Err(unexpected(resp).await),
        }
    }
}
