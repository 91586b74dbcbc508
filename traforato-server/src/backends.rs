//! Builds the worker's sandbox backends from the enabled virtualization names.

use std::sync::Arc;

use traforato_core::backend::fake::{FakeBackend, FAKE_VIRTUALIZATION};
use traforato_core::backend::VmBackend;

use crate::config::ContainerSettings;
use crate::ServeError;

/// The virtualization served by the Linux container backend.
pub const CONTAINER_VIRTUALIZATION: &str = "container";

/// One backend per distinct name in `virtualizations`, in order; `container` takes the
/// YAML `container` settings.
///
/// `fake` is the in-memory test double; enabling it logs a loud warning, because nothing a
/// user runs in it is real.
pub fn build_backends(
    virtualizations: &[String],
    container: &ContainerSettings,
) -> Result<Vec<Arc<dyn VmBackend>>, ServeError> {
    let mut names: Vec<&str> = Vec::new();
    for name in virtualizations.iter().map(|v| v.trim()) {
        if !name.is_empty() && !names.contains(&name) {
            names.push(name);
        }
    }
    names
        .into_iter()
        .map(|name| build_backend(name, container))
        .collect()
}

fn build_backend(
    name: &str,
    container: &ContainerSettings,
) -> Result<Arc<dyn VmBackend>, ServeError> {
    match name {
        FAKE_VIRTUALIZATION => {
            tracing::warn!(
                virtualization = name,
                "the fake backend is enabled: it is an in-memory TEST DOUBLE; exec, run-code and \
                 files are simulated and nothing runs in a real sandbox"
            );
            Ok(Arc::new(FakeBackend::new()))
        }
        CONTAINER_VIRTUALIZATION => container_backend(container),
        other => Err(ServeError::UnknownVirtualization(other.to_string())),
    }
}

/// The Linux container backend: the backend's defaults (state under `/run/traforato`, the
/// `host` image, the worker binary itself as sandbox init: the binary's `main` must call
/// `init_main_if_requested` first) with the YAML `container` settings on top.
/// [`ServeError::BackendUnavailable`] says what the host lacks.
#[cfg(target_os = "linux")]
fn container_backend(settings: &ContainerSettings) -> Result<Arc<dyn VmBackend>, ServeError> {
    use traforato_core::backend::container::{ContainerBackend, ContainerConfig};
    let mut config = ContainerConfig::default();
    if let Some(dir) = &settings.state_dir {
        config.state_dir = dir.clone();
    }
    if let Some(parent) = &settings.cgroup_parent {
        config.cgroup_parent = parent.clone();
    }
    config.images.extend(settings.images.clone());
    if let Some(limit) = settings.pids_limit {
        config.pids_limit = limit;
    }
    if let Some(size) = settings.scratch_size_mib {
        config.scratch_size_mib = size;
    }
    if let Some(zygote) = settings.python_zygote {
        config.python_zygote = zygote;
    }
    match ContainerBackend::new(config) {
        Ok(backend) => Ok(Arc::new(backend)),
        Err(err) => Err(ServeError::BackendUnavailable {
            virtualization: CONTAINER_VIRTUALIZATION.to_string(),
            reason: crate::http::error_chain(&err),
        }),
    }
}

#[cfg(not(target_os = "linux"))]
fn container_backend(_settings: &ContainerSettings) -> Result<Arc<dyn VmBackend>, ServeError> {
    Err(ServeError::BackendUnavailable {
        virtualization: CONTAINER_VIRTUALIZATION.to_string(),
        reason: "the container backend runs on Linux only".to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fake_is_built_once() {
        let backends = build_backends(
            &["fake".to_string(), " fake ".to_string(), String::new()],
            &ContainerSettings::default(),
        )
        .unwrap();
        assert_eq!(backends.len(), 1);
        assert_eq!(backends[0].virtualization(), "fake");
    }

    #[test]
    fn unknown_virtualization_is_an_error() {
        let err = build_backends(&["qemu".to_string()], &ContainerSettings::default())
            .err()
            .unwrap();
        assert!(matches!(err, ServeError::UnknownVirtualization(ref v) if v == "qemu"));
        assert_eq!(err.to_string(), "unknown virtualization \"qemu\"");
    }
}
