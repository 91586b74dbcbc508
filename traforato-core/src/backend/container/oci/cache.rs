//! The OCI image cache of the `container` backend: an [`ImageSource`] that pulls an image the
//! first time it is asked for, unpacks each layer once per uid mapping into
//! `<dir>/layers/<hex>-u<uid_base>`, and answers the layer directories as overlay lower layers
//! (topmost first), shared read-only by every sandbox of every image that has them.
//!
//! Concurrent creates of one image pull it once and unpack each layer once (single flight).
//! A layer is unpacked into a temporary directory and renamed into place when complete, so a
//! crash mid-unpack leaves only a temporary directory, which opening the cache removes; the
//! blob store keeps only verified blobs. A pulled tag is resolved once per process.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use tokio::sync::OnceCell;

use super::blobs::BlobStore;
use super::layer::{self, Mapping};
use super::pull::{PullError, PulledImage, Puller, RegistrySettings, RunConfig};
use super::reference::{Digest, Reference};
use crate::backend::container::image::{ImageLayout, ImageSource, RunDefaults};
use crate::backend::BackendError;

/// Prefix of layer directories being unpacked.
const TEMP_PREFIX: &str = ".tmp-";

/// One computation per key at a time, shared by every caller that waits for it: a success
/// is kept, a failure forgotten (the next caller tries again).
struct SingleFlight<K, V, E> {
    cells: Mutex<HashMap<K, Flight<V, E>>>,
}

/// One shared computation and, once done, its outcome.
type Flight<V, E> = Arc<OnceCell<Result<V, Arc<E>>>>;

impl<K: Eq + Hash + Clone, V: Clone, E> SingleFlight<K, V, E> {
    fn new() -> Self {
        Self {
            cells: Mutex::new(HashMap::new()),
        }
    }

    async fn run<F: Future<Output = Result<V, E>>>(
        &self,
        key: &K,
        compute: impl FnOnce() -> F,
    ) -> Result<V, Arc<E>> {
        let cell = {
            let mut cells = self.cells.lock().unwrap_or_else(|e| e.into_inner());
            cells.entry(key.clone()).or_default().clone()
        };
        let result = cell
            .get_or_init(|| async { compute().await.map_err(Arc::new) })
            .await
            .clone();
        if result.is_err() {
            let mut cells = self.cells.lock().unwrap_or_else(|e| e.into_inner());
            if cells.get(key).is_some_and(|c| Arc::ptr_eq(c, &cell)) {
                cells.remove(key);
            }
        }
        result
    }
}

/// Pulled images and unpacked layers under one directory.
pub struct OciImages {
    dir: PathBuf,
    settings: RegistrySettings,
    mapping: Mapping,
    /// Opened on first use, so that a worker that never pulls touches no disk (a failure is
    /// tried again by the next create).
    opened: OnceCell<Opened>,
    pulls: SingleFlight<Reference, PulledImage, PullError>,
    unpacks: SingleFlight<Digest, PathBuf, BackendError>,
}

struct Opened {
    puller: Puller,
    layers: PathBuf,
    /// Short names of the layer directories (`l/<id>` symlinks), since the overlay's mount
    /// options hold every lower directory in one page: long paths would cap an image at ~36
    /// layers (as Docker's overlay2 does).
    links: PathBuf,
}

impl std::fmt::Debug for OciImages {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OciImages")
            .field("dir", &self.dir)
            .field("mapping", &self.mapping)
            .finish_non_exhaustive()
    }
}

impl OciImages {
    /// A cache under `dir` (`blobs/`, `layers/`) for sandboxes whose ids are shifted by
    /// `mapping`, pulling with `settings`.
    pub fn new(dir: impl Into<PathBuf>, settings: RegistrySettings, mapping: Mapping) -> Self {
        Self {
            dir: dir.into(),
            settings,
            mapping,
            opened: OnceCell::new(),
            pulls: SingleFlight::new(),
            unpacks: SingleFlight::new(),
        }
    }

    async fn opened(&self) -> Result<&Opened, BackendError> {
        self.opened
            .get_or_try_init(|| async {
                let dir = self.dir.clone();
                let settings = self.settings.clone();
                tokio::task::spawn_blocking(move || open(&dir, settings))
                    .await
                    .unwrap_or_else(|e| Err(format!("open image cache: {e}")))
            })
            .await
            .map_err(|reason| BackendError::ImageUnavailable {
                image: "(image cache)".to_string(),
                reason,
            })
    }

    /// The image `reference`, pulled on first use (once, however many ask at the same time).
    pub async fn image(&self, reference: &Reference) -> Result<PulledImage, BackendError> {
        let opened = self.opened().await?;
        let result = self
            .pulls
            .run(reference, || async {
                tracing::info!(image = %reference, "pulling image");
                let started = std::time::Instant::now();
                let deadline = opened.puller.deadline();
                let pulled =
                    match tokio::time::timeout(deadline, opened.puller.pull(reference)).await {
                        Ok(pulled) => pulled,
                        Err(_) => Err(PullError::Unreachable {
                            registry: reference.registry.clone(),
                            reason: format!("the pull did not finish within {deadline:?}"),
                        }),
                    };
                match &pulled {
                    Ok(image) => tracing::info!(
                        image = %reference,
                        manifest = %image.manifest,
                        layers = image.layers.len(),
                        took_ms = started.elapsed().as_millis() as u64,
                        "image pulled"
                    ),
                    Err(error) => tracing::warn!(image = %reference, %error, "image pull failed"),
                }
                pulled
            })
            .await;
        result.map_err(|error| pull_error(reference, &error))
    }

    /// The unpacked directory of layer `digest` (unpacked on first use, once).
    pub async fn layer_dir(&self, digest: &Digest) -> Result<PathBuf, BackendError> {
        let opened = self.opened().await?;
        let result = self
            .unpacks
            .run(digest, || async {
                let blob = opened.puller.blobs().path(digest);
                let target =
                    opened
                        .layers
                        .join(format!("{}-u{}", digest.hex(), self.mapping.uid_base));
                let link = opened.links.join(format!(
                    "{}{:x}",
                    &digest.hex()[..12],
                    self.mapping.uid_base
                ));
                let mapping = self.mapping;
                let digest = digest.clone();
                tokio::task::spawn_blocking(move || {
                    let dir = unpack_once(&blob, &target, &digest, mapping)?;
                    short_link(&dir, &link)
                })
                .await
                .unwrap_or_else(|e| Err(BackendError::task("unpack layer", e)))
            })
            .await;
        result.map_err(|error| BackendError::ImageUnavailable {
            image: digest.to_string(),
            reason: error.to_string(),
        })
    }
}

/// Creates the cache's directories and removes layer directories a crash left half-made.
fn open(dir: &Path, settings: RegistrySettings) -> Result<Opened, String> {
    // Private images' blobs are nobody else's to read: 0700 (the overlay is mounted by root).
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?;
    let blobs = BlobStore::open(dir.join("blobs")).map_err(|e| e.to_string())?;
    let layers = dir.join("layers");
    std::fs::create_dir_all(&layers).map_err(|e| format!("{}: {e}", layers.display()))?;
    let links = dir.join("l");
    std::fs::create_dir_all(&links).map_err(|e| format!("{}: {e}", links.display()))?;
    for dir in [&layers, &links] {
        let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().starts_with(TEMP_PREFIX) {
                let path = entry.path();
                let _ = std::fs::remove_dir_all(&path).or_else(|_| std::fs::remove_file(&path));
            }
        }
    }
    Ok(Opened {
        puller: Puller::new(blobs, settings),
        layers,
        links,
    })
}

/// The short name `link` of the layer directory `dir` (made, or replaced, atomically).
fn short_link(dir: &Path, link: &Path) -> Result<PathBuf, BackendError> {
    if std::fs::read_link(link).is_ok_and(|to| to == dir) {
        return Ok(link.to_path_buf());
    }
    let temp = link.with_file_name(format!(
        "{TEMP_PREFIX}{}-{:016x}",
        link.file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default(),
        rand::random::<u64>()
    ));
    std::os::unix::fs::symlink(dir, &temp)
        .and_then(|()| std::fs::rename(&temp, link))
        .map_err(|e| {
            let _ = std::fs::remove_file(&temp);
            BackendError::io("link layer", e)
        })?;
    Ok(link.to_path_buf())
}

/// Unpacks the blob into `target` through a temporary directory, unless `target` exists.
fn unpack_once(
    blob: &Path,
    target: &Path,
    digest: &Digest,
    mapping: Mapping,
) -> Result<PathBuf, BackendError> {
    if target.is_dir() {
        return Ok(target.to_path_buf());
    }
    let parent = target.parent().unwrap_or(Path::new("."));
    let temp = parent.join(format!(
        "{TEMP_PREFIX}{}-{:016x}",
        digest.hex(),
        rand::random::<u64>()
    ));
    let result = std::fs::create_dir(&temp)
        .map_err(|e| BackendError::io("create layer directory", e))
        .and_then(|()| {
            let size = std::fs::metadata(blob).map(|m| m.len()).unwrap_or(0);
            let budget = layer::Budget::for_blob(size);
            layer::unpack(blob, &temp, mapping, budget).map_err(|e| BackendError::ImageUnavailable {
                image: digest.to_string(),
                reason: e.to_string(),
            })
        })
        .and_then(|done| {
            // On disk before it is trusted: a renamed layer is never re-checked.
            if let Ok(dir) = std::fs::File::open(&temp) {
                let _ = rustix::fs::syncfs(&dir);
            }
            tracing::debug!(layer = %digest, entries = done.entries, whiteouts = done.whiteouts, skipped = done.skipped, "layer unpacked");
            match std::fs::rename(&temp, target) {
                Ok(()) => Ok(()),
                // Another unpack of the same layer won: use it.
                Err(_) if target.is_dir() => {
                    let _ = std::fs::remove_dir_all(&temp);
                    Ok(())
                }
                Err(e) => Err(BackendError::io("store layer", e)),
            }
        });
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&temp);
    }
    result.map(|()| target.to_path_buf())
}

/// What a failed pull means for a create.
fn pull_error(reference: &Reference, error: &PullError) -> BackendError {
    match error {
        PullError::NotFound { .. } => BackendError::ImageNotFound {
            image: reference.to_string(),
        },
        PullError::Unauthorized { .. } | PullError::NoPlatform { .. } => {
            BackendError::InvalidRequest(error.to_string())
        }
        PullError::Unreachable { registry, reason } => BackendError::RegistryUnreachable {
            registry: registry.clone(),
            reason: reason.clone(),
        },
        PullError::Blob(_) | PullError::Registry { .. } => BackendError::ImageUnavailable {
            image: reference.to_string(),
            reason: error.to_string(),
        },
    }
}

/// The image config's `Env` (`KEY=value`; entries without `=` ignored) and `WorkingDir`.
fn run_defaults(config: &RunConfig) -> RunDefaults {
    let env = config
        .env
        .iter()
        .flatten()
        .filter_map(|pair| pair.split_once('='))
        .filter(|(key, _)| !key.is_empty() && !key.contains('\0'))
        .map(|(key, value)| (key.to_string(), value.to_string()))
        .collect();
    let working_dir = config
        .working_dir
        .as_deref()
        .map(str::trim)
        .filter(|dir| dir.starts_with('/'))
        .map(str::to_string);
    RunDefaults { env, working_dir }
}

#[async_trait]
impl ImageSource for OciImages {
    async fn layout(&self, image: &str) -> Result<Option<ImageLayout>, BackendError> {
        let reference =
            Reference::parse(image).map_err(|e| BackendError::InvalidRequest(e.to_string()))?;
        let pulled = self.image(&reference).await?;
        let mut lower_dirs = Vec::with_capacity(pulled.layers.len());
        for digest in pulled.layers.iter().rev() {
            lower_dirs.push(self.layer_dir(digest).await?);
        }
        if lower_dirs.is_empty() {
            return Err(BackendError::ImageUnavailable {
                image: reference.to_string(),
                reason: "the image has no layers".to_string(),
            });
        }
        Ok(Some(ImageLayout {
            lower_dirs,
            read_only_binds: Vec::new(),
            defaults: run_defaults(&pulled.config),
        }))
    }
}
