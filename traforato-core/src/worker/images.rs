//! The images a worker's backends keep on disk, for operators (any caller in dev mode, the
//! client ids of [`WorkerConfig::operators`](super::WorkerConfig::operators) in prod): list,
//! pull (again) and remove;
//! and the count of image pulls, whether a create, the warm pool or an operator caused them.

use std::sync::Arc;

use super::{Worker, WorkerError};
use crate::api::{ImageInfo, ImageList, RemovedImage};
use crate::auth::{AuthMode, Principal};
use crate::backend::{BackendError, ImageCatalog, Vm};
use crate::telemetry::ImagePullLabels;

impl Worker {
    /// The catalog of the backend serving `virtualization` (the default one when `None`),
    /// for an operator.
    fn catalog(
        &self,
        principal: &Principal,
        virtualization: Option<&str>,
    ) -> Result<&dyn ImageCatalog, WorkerError> {
        let operator = self.config.auth_mode == AuthMode::Dev
            || self.config.operators.contains(&principal.client_id);
        if !operator {
            return Err(WorkerError::NotAnOperator);
        }
        let name = virtualization
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_ascii_lowercase)
            .unwrap_or_else(|| self.config.default_virtualization.clone());
        let backend = self
            .backends
            .get(&name)
            .ok_or(WorkerError::UnsupportedVirtualization(name))?;
        backend
            .images()
            .ok_or(WorkerError::Unsupported("this backend keeps no images"))
    }

    /// Every image the backend keeps, most recently used first, and the bytes they take.
    pub async fn images(
        &self,
        principal: &Principal,
        virtualization: Option<&str>,
    ) -> Result<ImageList, WorkerError> {
        self.catalog(principal, virtualization)?
            .list()
            .await
            .map_err(image_error)
    }

    /// Pulls `image` from its registry (again, if held: a tag may have moved) and makes it
    /// ready for sandboxes.
    pub async fn pull_image(
        &self,
        principal: &Principal,
        virtualization: Option<&str>,
        image: &str,
    ) -> Result<ImageInfo, WorkerError> {
        let catalog = self.catalog(principal, virtualization)?;
        if image.trim().is_empty() {
            return Err(WorkerError::ImageRequired);
        }
        tracing::info!(worker_id = %self.config.worker_id, image = image.trim(), "image pull requested");
        let pulled = catalog.pull(image).await;
        self.count_pull(match &pulled {
            Ok(_) => "ok",
            Err(error) => pull_failure(error),
        });
        pulled.map_err(image_error)
    }

    /// Removes `image` and what no other image needs of it; refused while a sandbox (warm
    /// ones included) uses it.
    pub async fn remove_image(
        &self,
        principal: &Principal,
        virtualization: Option<&str>,
        image: &str,
    ) -> Result<RemovedImage, WorkerError> {
        let catalog = self.catalog(principal, virtualization)?;
        if image.trim().is_empty() {
            return Err(WorkerError::ImageRequired);
        }
        catalog.remove(image).await.map_err(image_error)
    }

    /// Counts the pull a provision waited for, or the pull failure that stopped it; true when
    /// the sandbox's image was pulled for it.
    pub(crate) fn note_provision(&self, provisioned: &Result<Arc<dyn Vm>, BackendError>) -> bool {
        match provisioned {
            Ok(vm) if vm.image_pulled() => {
                self.count_pull("ok");
                true
            }
            Ok(_) => false,
            Err(error) => {
                if let BackendError::ImageNotFound { .. }
                | BackendError::RegistryUnreachable { .. }
                | BackendError::ImageUnavailable { .. } = error
                {
                    self.count_pull(pull_failure(error));
                }
                false
            }
        }
    }

    fn count_pull(&self, result: &str) {
        self.metrics.worker.image_pulls.inc(&ImagePullLabels {
            worker_id: self.config.worker_id.as_str(),
            result,
        });
    }
}

/// The `result` label of a failed pull.
fn pull_failure(error: &BackendError) -> &'static str {
    match error {
        BackendError::ImageNotFound { .. } => "not_found",
        BackendError::RegistryUnreachable { .. } => "unreachable",
        BackendError::InvalidRequest(_) => "refused",
        _ => "error",
    }
}

/// What an image operation's failure means for the caller.
fn image_error(error: BackendError) -> WorkerError {
    match error {
        BackendError::ImageNotFound { image } => WorkerError::ImageNotFound(image),
        BackendError::ImageInUse { image } => WorkerError::ImageInUse(image),
        BackendError::InvalidRequest(reason) => WorkerError::InvalidImage(reason),
        BackendError::RegistryUnreachable { registry, .. } => {
            WorkerError::RegistryUnreachable(registry)
        }
        BackendError::Unavailable(reason) => WorkerError::ImagesUnavailable(reason),
        // Operators see why (a registry that lost a blob, a tampered layer, a full disk).
        BackendError::ImageUnavailable { image, reason } => {
            WorkerError::ImagePullFailed(format!("image {image} is not available: {reason}"))
        }
        other => WorkerError::Backend(other),
    }
}
