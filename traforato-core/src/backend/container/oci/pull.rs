//! Pulls OCI images from registries with `oci-client`: the manifest (an index resolved to the
//! host's platform), the config and the layers, each blob verified against its digest into
//! the [`BlobStore`]. Registry mirrors are tried in order before the registry itself (as
//! Docker's `registry-mirrors` and containerd's `hosts.toml` do); loopback registries and those
//! listed as insecure are reached over plain HTTP; anonymous token auth, or the credentials
//! configured for a registry.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::manifest::{OciDescriptor, OciImageManifest};
use oci_client::secrets::RegistryAuth;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWrite;

use super::blobs::{BlobError, BlobStore, BlobWriter};
use super::reference::{Digest, Reference};

/// Where images come from and how to reach them. `Debug` shows no password.
#[derive(Clone)]
pub struct RegistrySettings {
    /// Registries (`host[:port]`) reached over plain HTTP besides loopback ones.
    pub insecure: Vec<String>,
    /// Mirrors by registry (`docker.io` → [`http://127.0.0.1:5000`]), tried in order before
    /// the registry itself. A mirror given with `http://` is reached over plain HTTP.
    pub mirrors: BTreeMap<String, Vec<String>>,
    /// User and password (or token) by registry (or mirror) `host[:port]`; see
    /// [`docker_credentials`] for Docker's `config.json`.
    pub credentials: BTreeMap<String, (String, String)>,
    /// Longest wait for a registry to answer (connect and each read).
    pub timeout: Duration,
    /// Largest blob accepted.
    pub max_blob_bytes: u64,
    /// Longest a whole pull may take (a registry that trickles bytes is cut off).
    pub pull_deadline: Duration,
    /// The registries (`host[:port]`) images may come from; empty: any, but for link-local
    /// addresses (cloud metadata services), which must be listed to be used. Mirrors are the
    /// operator's own and always reached.
    pub allowed: Vec<String>,
}

impl RegistrySettings {
    /// Whether images may come from `registry` (`host[:port]`).
    pub fn allows(&self, registry: &str) -> bool {
        if self.allowed.is_empty() {
            return !is_link_local(registry);
        }
        self.allowed
            .iter()
            .any(|allowed| allowed.eq_ignore_ascii_case(registry))
    }
}

/// Largest image config accepted (registries cap manifests at 4 MiB).
const MAX_CONFIG_BYTES: u64 = 8 << 20;

impl std::fmt::Debug for RegistrySettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let logins: BTreeMap<&String, &String> = self
            .credentials
            .iter()
            .map(|(registry, (user, _))| (registry, user))
            .collect();
        f.debug_struct("RegistrySettings")
            .field("insecure", &self.insecure)
            .field("mirrors", &self.mirrors)
            .field("logins", &logins)
            .field("timeout", &self.timeout)
            .field("max_blob_bytes", &self.max_blob_bytes)
            .field("pull_deadline", &self.pull_deadline)
            .field("allowed", &self.allowed)
            .finish()
    }
}

impl Default for RegistrySettings {
    fn default() -> Self {
        Self {
            insecure: Vec::new(),
            mirrors: BTreeMap::new(),
            credentials: BTreeMap::new(),
            timeout: Duration::from_secs(30),
            max_blob_bytes: 8 << 30,
            pull_deadline: Duration::from_secs(30 * 60),
            allowed: Vec::new(),
        }
    }
}

/// What an image's config says about running it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunConfig {
    /// `KEY=value` pairs.
    #[serde(rename = "Env", default)]
    pub env: Option<Vec<String>>,
    /// The working directory of commands.
    #[serde(rename = "WorkingDir", default)]
    pub working_dir: Option<String>,
    /// `user[:group]`, names or ids.
    #[serde(rename = "User", default)]
    pub user: Option<String>,
}

#[derive(Debug, Deserialize)]
struct ImageConfigBlob {
    #[serde(default)]
    config: Option<RunConfig>,
}

/// A pulled image: its manifest digest, its layers (bottom first, all in the blob store) and
/// its run configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PulledImage {
    /// The reference pulled.
    pub reference: Reference,
    /// The digest of the (platform) manifest.
    pub manifest: Digest,
    /// Layer blobs, bottom first.
    pub layers: Vec<Digest>,
    /// `Env`, `WorkingDir`, `User`.
    pub config: RunConfig,
}

/// Why a pull failed.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    /// The registry has no such repository, tag or digest.
    #[error("image not found: {reference}")]
    NotFound {
        /// The normalised reference.
        reference: String,
    },
    /// The image is an index without a variant for this host.
    #[error("image {reference} has no variant for {platform}")]
    NoPlatform {
        /// The normalised reference.
        reference: String,
        /// `os/architecture` of this host.
        platform: String,
    },
    /// The registry refused the credentials (or wants some).
    #[error("registry {registry} refused access to {reference}")]
    Unauthorized {
        /// The registry.
        registry: String,
        /// The reference.
        reference: String,
    },
    /// No mirror and not the registry could be reached in time.
    #[error("registry {registry} is unreachable: {reason}")]
    Unreachable {
        /// The registry.
        registry: String,
        /// The last transport error.
        reason: String,
    },
    /// The worker does not take images from this registry (`images.allowed-registries`).
    #[error("images from {registry} are not allowed on this worker")]
    NotAllowed {
        /// The registry.
        registry: String,
    },
    /// A blob was not what its digest says, or too large.
    #[error("{0}")]
    Blob(#[from] BlobError),
    /// The registry answered something else that is wrong.
    #[error("registry {registry}: {reason}")]
    Registry {
        /// The registry.
        registry: String,
        /// What it answered.
        reason: String,
    },
}

/// How a failed request is to be taken.
enum Failure {
    /// Try the next source (a mirror down or without the image).
    Transport(String),
    /// Not there.
    NotFound,
    /// Access refused.
    Unauthorized,
    /// Anything else.
    Other(String),
}

fn classify(error: &OciDistributionError) -> Failure {
    match error {
        // A blob's answer is checked with `error_for_status`: its status says what it was.
        OciDistributionError::RequestError(e) => match e.status().map(|s| s.as_u16()) {
            Some(404) => Failure::NotFound,
            Some(401 | 403) => Failure::Unauthorized,
            Some(code) if code < 500 => Failure::Other(e.to_string()),
            _ => Failure::Transport(e.to_string()),
        },
        OciDistributionError::ImageManifestNotFoundError(_) => Failure::NotFound,
        OciDistributionError::ServerError { code: 404, .. } => Failure::NotFound,
        OciDistributionError::UnauthorizedError { .. }
        | OciDistributionError::AuthenticationFailure(_)
        | OciDistributionError::ServerError {
            code: 401 | 403, ..
        } => Failure::Unauthorized,
        OciDistributionError::RegistryError { envelope, .. } => {
            let codes: Vec<&OciErrorCode> = envelope.errors.iter().map(|e| &e.code).collect();
            if codes.iter().any(|c| {
                matches!(
                    c,
                    OciErrorCode::ManifestUnknown
                        | OciErrorCode::NameUnknown
                        | OciErrorCode::BlobUnknown
                )
            }) {
                Failure::NotFound
            } else if codes
                .iter()
                .any(|c| matches!(c, OciErrorCode::Unauthorized | OciErrorCode::Denied))
            {
                Failure::Unauthorized
            } else {
                Failure::Other(error.to_string())
            }
        }
        OciDistributionError::ServerError { code, .. } if *code >= 500 => {
            Failure::Transport(error.to_string())
        }
        other => Failure::Other(other.to_string()),
    }
}

/// The host of a mirror URL or registry (`http://127.0.0.1:5000/` → `127.0.0.1:5000`) and
/// whether it is reached over plain HTTP.
fn host_of(source: &str) -> (String, bool) {
    let (rest, http) = match source.strip_prefix("http://") {
        Some(rest) => (rest, true),
        None => (source.strip_prefix("https://").unwrap_or(source), false),
    };
    (rest.trim_end_matches('/').to_string(), http)
}

/// The credentials of a Docker `config.json` (`auths`: `auth` as base64 `user:password`, or
/// `username` and `password`), by registry host; Docker Hub's keys
/// (`https://index.docker.io/v1/`) become `docker.io`. Credential helpers (`credsStore`,
/// `credHelpers`) are not run.
pub fn docker_credentials(json: &[u8]) -> Result<BTreeMap<String, (String, String)>, String> {
    use base64::Engine as _;
    #[derive(Deserialize)]
    struct File {
        #[serde(default)]
        auths: BTreeMap<String, Entry>,
    }
    #[derive(Deserialize)]
    struct Entry {
        #[serde(default)]
        auth: Option<String>,
        #[serde(default)]
        username: Option<String>,
        #[serde(default)]
        password: Option<String>,
    }
    let file: File = serde_json::from_slice(json).map_err(|e| format!("invalid JSON: {e}"))?;
    let mut out = BTreeMap::new();
    for (key, entry) in file.auths {
        let host = key
            .trim()
            .trim_start_matches("https://")
            .trim_start_matches("http://")
            .split('/')
            .next()
            .unwrap_or_default()
            .to_string();
        let host = match host.as_str() {
            "index.docker.io" | "registry-1.docker.io" => "docker.io".to_string(),
            _ => host,
        };
        let login = match (entry.auth, entry.username, entry.password) {
            (Some(auth), _, _) if !auth.is_empty() => {
                let decoded = base64::engine::general_purpose::STANDARD
                    .decode(auth.trim())
                    .map_err(|_| format!("auths.{key}.auth is not base64"))?;
                let text = String::from_utf8(decoded)
                    .map_err(|_| format!("auths.{key}.auth is not text"))?;
                let (user, password) = text
                    .split_once(':')
                    .ok_or_else(|| format!("auths.{key}.auth is not user:password"))?;
                (user.to_string(), password.to_string())
            }
            (_, Some(user), Some(password)) => (user, password),
            _ => continue,
        };
        if !host.is_empty() {
            out.insert(host, login);
        }
    }
    Ok(out)
}

/// The host name of `host[:port]` (an IPv6 address without its brackets).
fn name_of(host: &str) -> &str {
    let name = match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    };
    name.trim_start_matches('[').trim_end_matches(']')
}

/// Whether `host` (`host[:port]`) is loopback.
fn is_loopback(host: &str) -> bool {
    let name = name_of(host);
    name == "localhost"
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Whether `host` (`host[:port]`) is a link-local address (`169.254.0.0/16`, `fe80::/10`,
/// IPv4-mapped ones too), where cloud metadata services answer; read as a URL's host is
/// (`2852039166` is `169.254.169.254`).
fn is_link_local(host: &str) -> bool {
    match url::Url::parse(&format!("http://{host}/"))
        .ok()
        .and_then(|u| u.host().map(|h| h.to_owned()))
    {
        Some(url::Host::Ipv4(ip)) => link_local(ip.into()),
        Some(url::Host::Ipv6(ip)) => link_local(ip.into()),
        _ => false,
    }
}

/// Whether `ip` is link-local (IPv4-mapped IPv6 addresses as their IPv4 address).
fn link_local(ip: std::net::IpAddr) -> bool {
    match ip {
        std::net::IpAddr::V4(ip) => ip.is_link_local(),
        std::net::IpAddr::V6(ip) => match ip.to_ipv4_mapped() {
            Some(v4) => v4.is_link_local(),
            None => (ip.segments()[0] & 0xffc0) == 0xfe80,
        },
    }
}

/// Whether the registry's name resolves to a link-local address (checked before a pull when
/// no allow-list is set; a name that does not resolve is left to fail the pull).
async fn resolves_link_local(registry: &str) -> bool {
    let Ok(url) = url::Url::parse(&format!("https://{registry}/")) else {
        return false;
    };
    let Some(url::Host::Domain(name)) = url.host() else {
        return false;
    };
    let target = format!("{name}:{}", url.port_or_known_default().unwrap_or(443));
    match tokio::net::lookup_host(target).await {
        Ok(addrs) => addrs.map(|a| a.ip()).any(link_local),
        Err(_) => false,
    }
}

/// Pulls images into a [`BlobStore`].
pub struct Puller {
    client: oci_client::Client,
    /// For loopback registries, always over plain HTTP.
    loopback: oci_client::Client,
    blobs: BlobStore,
    settings: RegistrySettings,
}

impl std::fmt::Debug for Puller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Puller")
            .field("settings", &self.settings.insecure)
            .finish_non_exhaustive()
    }
}

impl Puller {
    /// A puller over `blobs` with `settings`.
    pub fn new(blobs: BlobStore, settings: RegistrySettings) -> Self {
        let mut plain: Vec<String> = settings.insecure.clone();
        for mirrors in settings.mirrors.values() {
            for mirror in mirrors {
                let (host, http) = host_of(mirror);
                if http {
                    plain.push(host);
                }
            }
        }
        let client = |protocol| {
            oci_client::Client::new(ClientConfig {
                protocol,
                connect_timeout: Some(settings.timeout),
                read_timeout: Some(settings.timeout),
                ..ClientConfig::default()
            })
        };
        Self {
            client: client(ClientProtocol::HttpsExcept(plain)),
            loopback: client(ClientProtocol::Http),
            blobs,
            settings,
        }
    }

    /// The client for `registry`: plain HTTP for loopback registries (and their mirrors).
    fn client_for(&self, registry: &str) -> &oci_client::Client {
        if is_loopback(registry) {
            &self.loopback
        } else {
            &self.client
        }
    }

    /// The blob store.
    pub fn blobs(&self) -> &BlobStore {
        &self.blobs
    }

    /// How long a whole pull may take.
    pub fn deadline(&self) -> Duration {
        self.settings.pull_deadline
    }

    fn auth(&self, registry: &str) -> RegistryAuth {
        match self.settings.credentials.get(registry) {
            Some((user, password)) => RegistryAuth::Basic(user.clone(), password.clone()),
            None => RegistryAuth::Anonymous,
        }
    }

    /// Where to ask for `reference`: its mirrors in order (with the mirror's host), then its
    /// registry.
    fn sources(&self, reference: &Reference) -> Vec<(oci_client::Reference, Option<String>)> {
        let base = match (&reference.tag, &reference.digest) {
            (_, Some(digest)) => oci_client::Reference::with_digest(
                reference.registry.clone(),
                reference.repository.clone(),
                digest.to_string(),
            ),
            (Some(tag), None) => oci_client::Reference::with_tag(
                reference.registry.clone(),
                reference.repository.clone(),
                tag.clone(),
            ),
            (None, None) => oci_client::Reference::with_tag(
                reference.registry.clone(),
                reference.repository.clone(),
                super::reference::DEFAULT_TAG.to_string(),
            ),
        };
        let mut sources = Vec::new();
        for mirror in self
            .settings
            .mirrors
            .get(&reference.registry)
            .into_iter()
            .flatten()
        {
            let host = host_of(mirror).0;
            let mut via = base.clone();
            via.set_mirror_registry(host.clone());
            sources.push((via, Some(host)));
        }
        sources.push((base, None));
        sources
    }

    /// Pulls `reference`: manifest, config and every layer not yet in the store.
    pub async fn pull(&self, reference: &Reference) -> Result<PulledImage, PullError> {
        let registry = reference.registry.clone();
        if !self.settings.allows(&registry)
            || (self.settings.allowed.is_empty() && resolves_link_local(&registry).await)
        {
            return Err(PullError::NotAllowed { registry });
        }
        let shown = reference.to_string();
        let mut last_transport = None;
        let mut found = None;
        for (source, mirror) in self.sources(reference) {
            // A mirror is asked with its own credentials, if any.
            let host = mirror.clone().unwrap_or_else(|| registry.clone());
            let auth = self.auth(&host);
            match self
                .client_for(&host)
                .pull_image_manifest(&source, &auth)
                .await
            {
                Ok((manifest, digest)) => {
                    found = Some((source, host, manifest, digest));
                    break;
                }
                Err(error) => match classify(&error) {
                    Failure::Transport(reason) => last_transport = Some(reason),
                    // oci-client says so only in its message.
                    _ if matches!(&error, OciDistributionError::ImageManifestNotFoundError(m)
                        if m.contains("platform")) =>
                    {
                        return Err(PullError::NoPlatform {
                            reference: shown,
                            platform: format!(
                                "{}/{}",
                                std::env::consts::OS,
                                std::env::consts::ARCH
                            ),
                        });
                    }
                    // A mirror that lacks the image (a pull-through cache), refuses or fails
                    // is passed over: the next source is asked, as Docker and containerd do.
                    failure if mirror.is_some() => {
                        let why = match failure {
                            Failure::Transport(reason) | Failure::Other(reason) => reason,
                            Failure::NotFound => "not found".to_string(),
                            Failure::Unauthorized => "access refused".to_string(),
                        };
                        tracing::debug!(mirror = %host, image = %shown, %why, "mirror passed over");
                    }
                    Failure::NotFound => {
                        return Err(PullError::NotFound { reference: shown });
                    }
                    // Anonymous, Docker Hub and GHCR answer 401 for a repository that does not
                    // exist: it is not found (or needs a login), not a refused login.
                    Failure::Unauthorized if matches!(auth, RegistryAuth::Anonymous) => {
                        return Err(PullError::NotFound { reference: shown });
                    }
                    Failure::Unauthorized => {
                        return Err(PullError::Unauthorized {
                            registry,
                            reference: shown,
                        })
                    }
                    Failure::Other(reason) => return Err(PullError::Registry { registry, reason }),
                },
            }
        }
        let Some((source, host, manifest, digest)) = found else {
            return Err(PullError::Unreachable {
                registry,
                reason: last_transport.unwrap_or_else(|| "no source answered".to_string()),
            });
        };
        let manifest_digest = Digest::parse(&digest).map_err(|e| PullError::Registry {
            registry: registry.clone(),
            reason: e.to_string(),
        })?;
        let config = self.fetch_config(&source, &host, &manifest).await?;
        let mut layers = Vec::new();
        let total: u64 = manifest
            .layers
            .iter()
            .map(|l| u64::try_from(l.size).unwrap_or(0))
            .sum();
        let mut done = 0u64;
        for (index, layer) in manifest.layers.iter().enumerate() {
            let limit = self.settings.max_blob_bytes;
            let size = u64::try_from(layer.size).unwrap_or(0);
            let started = std::time::Instant::now();
            let (digest, fetched) = self.fetch_blob(&source, &host, layer, limit).await?;
            layers.push(digest);
            done += size;
            // Progress of long pulls, one line per layer.
            tracing::info!(
                image = %shown,
                layer = index + 1,
                of = manifest.layers.len(),
                bytes = size,
                cached = !fetched,
                took_ms = started.elapsed().as_millis() as u64,
                done_bytes = done,
                total_bytes = total,
                "image layer fetched"
            );
        }
        Ok(PulledImage {
            reference: reference.clone(),
            manifest: manifest_digest,
            layers,
            config,
        })
    }

    async fn fetch_config(
        &self,
        source: &oci_client::Reference,
        registry: &str,
        manifest: &OciImageManifest,
    ) -> Result<RunConfig, PullError> {
        let (digest, _) = self
            .fetch_blob(source, registry, &manifest.config, MAX_CONFIG_BYTES)
            .await?;
        let path = self.blobs.path(&digest);
        let bytes = tokio::task::spawn_blocking(move || std::fs::read(path))
            .await
            .map_err(|e| BlobError::Io {
                op: "read image config",
                source: std::io::Error::other(e),
            })?
            .map_err(|source| BlobError::Io {
                op: "read image config",
                source,
            })?;
        let parsed: ImageConfigBlob =
            serde_json::from_slice(&bytes).map_err(|e| PullError::Registry {
                registry: registry.to_string(),
                reason: format!("image config {digest}: {e}"),
            })?;
        Ok(parsed.config.unwrap_or_default())
    }

    /// Fetches the blob `descriptor` from `registry` (the host asked) into the store (unless
    /// there), verified, at most its declared size and `limit`; says whether it was fetched.
    async fn fetch_blob(
        &self,
        source: &oci_client::Reference,
        registry: &str,
        descriptor: &OciDescriptor,
        limit: u64,
    ) -> Result<(Digest, bool), PullError> {
        let digest = Digest::parse(&descriptor.digest).map_err(|e| PullError::Registry {
            registry: registry.to_string(),
            reason: e.to_string(),
        })?;
        if self.blobs.get(&digest).is_some() {
            return Ok((digest, false));
        }
        let declared = u64::try_from(descriptor.size).unwrap_or(u64::MAX);
        if declared > limit {
            return Err(BlobError::TooLarge { digest, limit }.into());
        }
        // A registry cannot stream more than the manifest declared.
        let limit = declared;
        let mut writer = self.blobs.writer(&digest, limit)?;
        // Blobs come from the registry only: a manifest's `urls` (foreign layers) would make
        // the worker fetch whatever address a hostile image names.
        let descriptor = OciDescriptor {
            urls: None,
            ..descriptor.clone()
        };
        let pulled = self
            .client_for(registry)
            .pull_blob(source, &descriptor, BlobSink(&mut writer))
            .await;
        match pulled {
            Ok(()) => tokio::task::spawn_blocking(move || writer.commit())
                .await
                .map_err(|e| BlobError::Io {
                    op: "commit blob",
                    source: std::io::Error::other(e),
                })?
                .map_err(PullError::from)
                .map(|_| (digest, true)),
            Err(error) => {
                writer.abort();
                Err(match classify(&error) {
                    Failure::Transport(reason) => PullError::Unreachable {
                        registry: registry.to_string(),
                        reason,
                    },
                    // The manifest was found: a blob it names that is missing is the
                    // registry's fault, not an unknown image.
                    Failure::NotFound => PullError::Registry {
                        registry: registry.to_string(),
                        reason: format!(
                            "{} names blob {digest}, which the registry does not have",
                            source.repository()
                        ),
                    },
                    Failure::Unauthorized => PullError::Unauthorized {
                        registry: registry.to_string(),
                        reference: digest.to_string(),
                    },
                    Failure::Other(reason) => PullError::Registry {
                        registry: registry.to_string(),
                        reason,
                    },
                })
            }
        }
    }
}

/// The `AsyncWrite` a blob is downloaded through, into the store's writer (which hashes it).
struct BlobSink<'a>(&'a mut BlobWriter);

impl AsyncWrite for BlobSink<'_> {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        // A local file write of one downloaded chunk: short enough to do in place.
        Poll::Ready(self.get_mut().0.write(buf))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allowed_registries() {
        let any = RegistrySettings::default();
        assert!(any.allows("docker.io") && any.allows("127.0.0.1:5000"));
        assert!(
            !any.allows("169.254.169.254"),
            "metadata services need listing"
        );
        assert!(!any.allows("[fe80::1]:5000"));
        assert!(!any.allows("2852039166"), "169.254.169.254 in decimal");
        assert!(!any.allows("[::ffff:169.254.169.254]"), "IPv4-mapped");
        let listed = RegistrySettings {
            allowed: vec!["registry.lan:5000".into(), "169.254.169.254".into()],
            ..RegistrySettings::default()
        };
        assert!(listed.allows("REGISTRY.lan:5000") && listed.allows("169.254.169.254"));
        assert!(!listed.allows("docker.io") && !listed.allows("registry.lan"));
    }

    #[tokio::test]
    async fn names_that_resolve_to_link_local_addresses_are_refused() {
        assert!(!resolves_link_local("localhost:5000").await);
        assert!(!resolves_link_local("unresolvable.invalid").await);
        assert!(
            !resolves_link_local("127.0.0.1:5000").await,
            "literals are checked apart"
        );
    }

    #[test]
    fn hosts_and_loopback() {
        assert_eq!(
            host_of("http://127.0.0.1:5000/"),
            ("127.0.0.1:5000".into(), true)
        );
        assert_eq!(
            host_of("https://mirror.example"),
            ("mirror.example".into(), false)
        );
        assert_eq!(
            host_of("mirror.example:443"),
            ("mirror.example:443".into(), false)
        );
        assert!(is_loopback("127.0.0.1:5000"));
        assert!(is_loopback("localhost"));
        assert!(is_loopback("[::1]:5000"));
        assert!(!is_loopback("ghcr.io"));
        assert!(!is_loopback("10.0.0.1:5000"));
    }

    #[test]
    fn docker_config_credentials() {
        let json = br#"{"auths": {
            "https://index.docker.io/v1/": {"auth": "dXNlcjpwYTpzcw=="},
            "registry.lan:5000": {"username": "ci", "password": "secret"},
            "ghcr.io": {},
            "http://127.0.0.1:5000/v2/": {"auth": "YTpi"}
        }, "credsStore": "desktop"}"#;
        let creds = docker_credentials(json).unwrap();
        assert_eq!(creds["docker.io"], ("user".into(), "pa:ss".into()));
        assert_eq!(creds["registry.lan:5000"], ("ci".into(), "secret".into()));
        assert_eq!(creds["127.0.0.1:5000"], ("a".into(), "b".into()));
        assert!(!creds.contains_key("ghcr.io"));
        assert!(docker_credentials(b"{").is_err());
        assert!(docker_credentials(br#"{"auths": {"x": {"auth": "!!"}}}"#).is_err());
        let debug = format!(
            "{:?}",
            RegistrySettings {
                credentials: creds,
                ..RegistrySettings::default()
            }
        );
        assert!(
            !debug.contains("secret") && !debug.contains("pa:ss"),
            "{debug}"
        );
    }

    #[test]
    fn mirrors_come_before_the_registry() {
        let dir = tempfile::tempdir().unwrap();
        let settings = RegistrySettings {
            mirrors: BTreeMap::from([(
                "docker.io".to_string(),
                vec![
                    "http://127.0.0.1:5000".to_string(),
                    "https://m2.example".to_string(),
                ],
            )]),
            ..RegistrySettings::default()
        };
        let puller = Puller::new(BlobStore::open(dir.path()).unwrap(), settings);
        let reference = Reference::parse("alpine:3.20").unwrap();
        let sources = puller.sources(&reference);
        let mirrors: Vec<Option<&str>> = sources.iter().map(|(_, m)| m.as_deref()).collect();
        assert_eq!(mirrors, [Some("127.0.0.1:5000"), Some("m2.example"), None]);
        assert!(sources
            .iter()
            .all(|(s, _)| s.repository() == "library/alpine"));
    }
}
