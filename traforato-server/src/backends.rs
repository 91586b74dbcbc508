//! Builds the worker's sandbox backends from the enabled virtualization names: each name is
//! parsed into a [`BackendKind`] (the backends this binary was built with), which builds it.

use std::sync::Arc;

use traforato_core::backend::VmBackend;

use crate::config::ContainerSettings;
use crate::ServeError;

/// The virtualization served by the Linux container backend.
pub const CONTAINER_VIRTUALIZATION: &str = "container";

/// The virtualization of the in-memory test double.
pub const FAKE_VIRTUALIZATION: &str = "fake";

/// A backend a worker can serve, by type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    /// Linux namespaces (`container`; cargo feature `container`, on by default).
    Container,
    /// The in-memory test double (`fake`; cargo feature `fake`, for tests and demos).
    Fake,
}

impl BackendKind {
    /// The backend of a virtualization name (trimmed). Names of backends this binary was
    /// built without are [`ServeError::BackendNotBuilt`].
    pub fn parse(name: &str) -> Result<Self, ServeError> {
        let (kind, feature) = match name.trim() {
            CONTAINER_VIRTUALIZATION => (Self::Container, "container"),
            FAKE_VIRTUALIZATION => (Self::Fake, "fake"),
            other => return Err(ServeError::UnknownVirtualization(other.to_string())),
        };
        if kind.is_built() {
            Ok(kind)
        } else {
            Err(ServeError::BackendNotBuilt {
                name: name.trim().to_string(),
                feature,
            })
        }
    }

    /// The virtualization name it serves.
    pub fn name(self) -> &'static str {
        match self {
            Self::Container => CONTAINER_VIRTUALIZATION,
            Self::Fake => FAKE_VIRTUALIZATION,
        }
    }

    /// Whether this binary was built with it.
    pub fn is_built(self) -> bool {
        match self {
            Self::Container => cfg!(feature = "container"),
            Self::Fake => cfg!(feature = "fake"),
        }
    }

    /// Builds the backend; `container` takes the YAML `container` settings.
    pub fn build(self, container: &ContainerSettings) -> Result<Arc<dyn VmBackend>, ServeError> {
        match self {
            Self::Container => container_backend(container),
            Self::Fake => fake_backend(),
        }
    }
}

/// One backend per distinct name in `virtualizations`, in order.
pub fn build_backends(
    virtualizations: &[String],
    container: &ContainerSettings,
) -> Result<Vec<Arc<dyn VmBackend>>, ServeError> {
    let mut kinds: Vec<BackendKind> = Vec::new();
    for name in virtualizations.iter().map(|v| v.trim()) {
        if name.is_empty() {
            continue;
        }
        let kind = BackendKind::parse(name)?;
        if !kinds.contains(&kind) {
            kinds.push(kind);
        }
    }
    kinds
        .into_iter()
        .map(|kind| kind.build(container))
        .collect()
}

/// The in-memory test double; enabling it logs a loud warning, because nothing a user runs in
/// it is real.
#[cfg(feature = "fake")]
fn fake_backend() -> Result<Arc<dyn VmBackend>, ServeError> {
    tracing::warn!(
        virtualization = FAKE_VIRTUALIZATION,
        "the fake backend is enabled: it is an in-memory TEST DOUBLE; exec, run-code and \
         files are scripted and nothing runs in a real sandbox"
    );
    Ok(Arc::new(traforato_core::backend::fake::FakeBackend::new()))
}

#[cfg(not(feature = "fake"))]
fn fake_backend() -> Result<Arc<dyn VmBackend>, ServeError> {
    Err(ServeError::BackendNotBuilt {
        name: FAKE_VIRTUALIZATION.to_string(),
        feature: "fake",
    })
}

/// The Linux container backend: the backend's defaults (state under `/run/traforato`, the
/// `host` image, the worker binary itself as sandbox init: the binary's `main` must call
/// `init_main_if_requested` first) with the YAML `container` settings on top.
/// [`ServeError::BackendUnavailable`] says what the host lacks.
#[cfg(all(feature = "container", target_os = "linux"))]
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
    if let Some(lazy) = settings.lazy_zygote {
        config.lazy_zygote = lazy;
    }
    if let Some(spares) = settings.spare_inits {
        config.spare_inits = spares;
    }
    let oci = &settings.oci;
    if let Some(dir) = &oci.dir {
        config.oci_dir = dir.clone();
    }
    config.registries.credentials =
        registry_logins(oci).map_err(|reason| ServeError::BackendUnavailable {
            virtualization: CONTAINER_VIRTUALIZATION.to_string(),
            reason,
        })?;
    config.registries.insecure = oci.insecure_registries.clone();
    config.registries.mirrors = oci.mirrors.clone();
    if let Some(timeout) = oci.pull_timeout {
        config.registries.timeout = timeout;
    }
    config.oci_max_disk = oci.max_disk;
    if let Some(range) = &settings.network.range {
        config.network.range = range.clone();
    }
    if let Some(blocked) = &settings.network.blocked_cidrs {
        config.network.blocked = blocked.clone();
    }
    config.network.dns_upstream = settings.network.dns_upstream;
    config.network.uplink = settings.network.uplink.clone();
    config.network.bandwidth = settings.network.bandwidth;
    config.registries.allowed = oci.allowed_registries.clone();
    match ContainerBackend::new(config) {
        Ok(backend) => Ok(Arc::new(backend)),
        Err(err) => Err(ServeError::BackendUnavailable {
            virtualization: CONTAINER_VIRTUALIZATION.to_string(),
            reason: crate::http::error_chain(&err),
        }),
    }
}

/// The registry logins: the `auths` of the Docker `config.json` named by
/// `images.docker-config` (only when named: an operator's own login must not serve every
/// tenant by default), then the YAML's `images.credentials` over them (password files read
/// now).
#[cfg(all(feature = "container", target_os = "linux"))]
fn registry_logins(
    oci: &crate::config::OciSettings,
) -> Result<std::collections::BTreeMap<String, (String, String)>, String> {
    use traforato_core::backend::container::oci::docker_credentials;
    let mut logins = match oci.docker_config.clone() {
        Some(file) => {
            let json = std::fs::read(&file)
                .map_err(|e| format!("docker config {}: {e}", file.display()))?;
            docker_credentials(&json)
                .map_err(|e| format!("docker config {}: {e}", file.display()))?
        }
        None => Default::default(),
    };
    for (registry, login) in &oci.credentials {
        let password = match (&login.password, &login.password_file) {
            (_, Some(file)) => std::fs::read_to_string(file)
                .map(|p| p.trim().to_string())
                .map_err(|e| format!("password-file of {registry} ({}): {e}", file.display()))?,
            (Some(password), None) => password.clone(),
            (None, None) => {
                return Err(format!(
                    "images.credentials.{registry}: a password or a password-file is needed"
                ))
            }
        };
        logins.insert(registry.clone(), (login.username.clone(), password));
    }
    Ok(logins)
}

#[cfg(all(feature = "container", not(target_os = "linux")))]
fn container_backend(_settings: &ContainerSettings) -> Result<Arc<dyn VmBackend>, ServeError> {
    Err(ServeError::BackendUnavailable {
        virtualization: CONTAINER_VIRTUALIZATION.to_string(),
        reason: "the container backend runs on Linux only".to_string(),
    })
}

#[cfg(not(feature = "container"))]
fn container_backend(_settings: &ContainerSettings) -> Result<Arc<dyn VmBackend>, ServeError> {
    Err(ServeError::BackendNotBuilt {
        name: CONTAINER_VIRTUALIZATION.to_string(),
        feature: "container",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_into_kinds() {
        assert_eq!(
            BackendKind::parse(" container ").unwrap().name(),
            "container"
        );
        let err = BackendKind::parse("qemu").err().unwrap();
        assert!(matches!(err, ServeError::UnknownVirtualization(ref v) if v == "qemu"));
        assert_eq!(err.to_string(), "unknown virtualization \"qemu\"");
        let fake = BackendKind::parse("fake");
        if cfg!(feature = "fake") {
            assert_eq!(fake.unwrap(), BackendKind::Fake);
        } else {
            assert_eq!(
                fake.err().unwrap().to_string(),
                "virtualization \"fake\" is not built into this binary (build it with \
                 `--features fake`)"
            );
        }
    }

    #[cfg(feature = "fake")]
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

    #[cfg(all(feature = "container", target_os = "linux"))]
    #[test]
    fn registry_logins_come_from_docker_config_then_the_yaml() {
        use crate::config::{Login, OciSettings};
        let dir = tempfile::tempdir().unwrap();
        let docker = dir.path().join("config.json");
        // "hub:old" and "lan:docker"
        std::fs::write(
            &docker,
            r#"{"auths": {"https://index.docker.io/v1/": {"auth": "aHViOm9sZA=="},
                          "registry.lan": {"auth": "bGFuOmRvY2tlcg=="}}}"#,
        )
        .unwrap();
        let password = dir.path().join("pw");
        std::fs::write(&password, "from-file\n").unwrap();
        let oci = OciSettings {
            docker_config: Some(docker),
            credentials: [(
                "registry.lan".to_string(),
                Login {
                    username: "ci".into(),
                    password: None,
                    password_file: Some(password),
                },
            )]
            .into(),
            ..OciSettings::default()
        };
        let logins = registry_logins(&oci).unwrap();
        assert_eq!(logins["docker.io"], ("hub".into(), "old".into()));
        assert_eq!(logins["registry.lan"], ("ci".into(), "from-file".into()));
        let missing = OciSettings {
            docker_config: Some(dir.path().join("nope.json")),
            ..OciSettings::default()
        };
        assert!(registry_logins(&missing).unwrap_err().contains("nope.json"));
        let no_password = OciSettings {
            credentials: [("x.io".to_string(), Login::default())].into(),
            docker_config: Some(dir.path().join("config.json")),
            ..OciSettings::default()
        };
        assert!(registry_logins(&no_password)
            .unwrap_err()
            .contains("a password or a password-file is needed"));
    }
}
