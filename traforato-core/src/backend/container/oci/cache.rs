//! The OCI image cache of the `container` backend: an [`ImageSource`] that pulls an image the
//! first time it is asked for, records it under `<dir>/refs/`, unpacks each layer once per uid
//! mapping into `<dir>/layers/<hex>-u<uid_base>`, and answers the layer directories as overlay
//! lower layers (topmost first), shared read-only by every sandbox of every image that has
//! them. It is also the operator's [`ImageCatalog`]: list, pull again, remove.
//!
//! Concurrent creates of one image pull it once and unpack each layer once (single flight).
//! A layer is unpacked into a temporary directory and renamed into place when complete, so a
//! crash mid-unpack leaves only a temporary directory, which opening the cache removes; the
//! blob store keeps only verified blobs. A recorded image is used without asking its registry
//! again (as `docker run` does): `pull` refreshes a tag.
//!
//! Every sandbox holds its image until its root is unmounted; collection (by the size limit,
//! or an operator's remove) runs while no create does and never removes what is held, and
//! only while no other worker shares the directory (a `flock`).

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Instant;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tokio::sync::{Notify, OnceCell};

use super::blobs::{BlobError, BlobStore};
use super::gc::{self, Goal, Held, Paths, SweepError, Swept};
use super::layer::{self, Mapping};
use super::pull::{PullError, PulledImage, Puller, RegistrySettings, RunConfig};
use super::records::{self, DirLock, Record, Sizes};
use super::reference::{Digest, Reference};
use crate::api::{ImageInfo, ImageList, RemovedImage};
use crate::backend::container::image::{ImageHold, ImageLayout, ImageSource, RunDefaults};
use crate::backend::{BackendError, ImageCatalog};

/// Prefix of layer directories being unpacked.
pub(crate) const TEMP_PREFIX: &str = ".tmp-";

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

    /// Forgets the outcome kept for `key` (the next caller computes it again).
    fn forget(&self, key: &K) {
        self.cells
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
    }

    /// Forgets every outcome kept.
    fn clear(&self) {
        self.cells.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }
}

/// Pulled images and unpacked layers under one directory.
pub struct OciImages {
    inner: Arc<Inner>,
}

struct Inner {
    dir: PathBuf,
    settings: RegistrySettings,
    mapping: Mapping,
    max_disk: Option<u64>,
    /// Opened on first use, so that a worker that never pulls touches no disk (a failure is
    /// tried again by the next create).
    opened: OnceCell<Opened>,
    pulls: SingleFlight<Reference, Loaded, PullError>,
    unpacks: SingleFlight<Digest, PathBuf, BackendError>,
    usage: Mutex<Usage>,
    /// Wakes whoever waits for [`Usage`] to change.
    changed: Notify,
    sizes: Mutex<Sizes>,
    /// The directory is shared with another worker, so nothing is collected (said once).
    shared_warned: AtomicBool,
}

struct Opened {
    puller: Puller,
    paths: Paths,
    lock: DirLock,
}

/// An image as a create gets it: from a record, or pulled (when).
#[derive(Debug, Clone)]
struct Loaded {
    image: PulledImage,
    record: PathBuf,
    pulled_at: Option<Instant>,
}

/// What live sandboxes use, and the gate between creates and collection: creates (and
/// pulls) run while nothing is collected; a collection runs while no create does, so that
/// what it finds unused stays unused until it is done.
#[derive(Debug, Default)]
struct Usage {
    active: usize,
    collecting: bool,
    images: HashMap<String, usize>,
    layers: HashMap<Digest, usize>,
    /// The last collection could not get under the limit: collect again when an image is
    /// released.
    over_limit: bool,
}

impl std::fmt::Debug for OciImages {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OciImages")
            .field("dir", &self.inner.dir)
            .field("mapping", &self.inner.mapping)
            .field("max_disk", &self.inner.max_disk)
            .finish_non_exhaustive()
    }
}

impl OciImages {
    /// A cache under `dir` (`blobs/`, `layers/`, `refs/`) for sandboxes whose ids are shifted
    /// by `mapping`, pulling with `settings`, keeping at most `max_disk` bytes of images that
    /// no sandbox uses (`None`: no limit).
    pub fn new(
        dir: impl Into<PathBuf>,
        settings: RegistrySettings,
        mapping: Mapping,
        max_disk: Option<u64>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                dir: dir.into(),
                settings,
                mapping,
                max_disk,
                opened: OnceCell::new(),
                pulls: SingleFlight::new(),
                unpacks: SingleFlight::new(),
                usage: Mutex::default(),
                changed: Notify::new(),
                sizes: Mutex::default(),
                shared_warned: AtomicBool::new(false),
            }),
        }
    }

    /// Pulls `image` again from its registry (a tag may have moved), unpacks its layers and
    /// says what is held now. The pull runs in a task of its own: a caller that goes away
    /// does not cut it short.
    pub async fn pull(&self, image: &str) -> Result<ImageInfo, BackendError> {
        let reference = parse(image)?;
        let inner = Arc::clone(&self.inner);
        let loaded = tokio::spawn(async move {
            let active = inner.enter().await;
            let loaded = inner.image(&reference, true).await?;
            for digest in &loaded.image.layers {
                inner.layer_dir(digest, &active).await?;
            }
            drop(active);
            inner.collect_soon();
            Ok::<_, BackendError>(loaded)
        })
        .await
        .unwrap_or_else(|e| Err(BackendError::task("pull image", e)))?;
        let reference = loaded.image.reference.to_string();
        let list = self.list().await?;
        list.images
            .into_iter()
            .find(|i| i.reference == reference)
            .ok_or_else(|| {
                BackendError::InvalidRequest(format!(
                    "{reference} was pulled, then collected at once: it is larger than \
                     images.max-disk allows beside the images in use"
                ))
            })
    }

    /// Every image held, most recently used first, and the bytes the directory holds.
    pub async fn list(&self) -> Result<ImageList, BackendError> {
        let inner = Arc::clone(&self.inner);
        inner.opened().await?;
        let in_use = inner.usage().images.clone();
        blocking("list images", move || {
            let opened = inner.opened.get().expect("opened above");
            inner.list(opened, &in_use)
        })
        .await
    }

    /// Removes `image` unless a sandbox uses it, and what no other image needs of it.
    pub async fn remove(&self, image: &str) -> Result<RemovedImage, BackendError> {
        let reference = parse(image)?.to_string();
        let swept = self.inner.sweep(Goal::Remove(reference.clone())).await?;
        Ok(RemovedImage {
            reference,
            freed_bytes: swept.freed,
        })
    }
}

/// Parses a reference given to the operator routes (a fault of the request).
fn parse(image: &str) -> Result<Reference, BackendError> {
    Reference::parse(image.trim()).map_err(|e| BackendError::InvalidRequest(e.to_string()))
}

/// Runs blocking work of the cache on the blocking pool.
async fn blocking<T: Send + 'static>(
    task: &'static str,
    work: impl FnOnce() -> Result<T, BackendError> + Send + 'static,
) -> Result<T, BackendError> {
    tokio::task::spawn_blocking(work)
        .await
        .unwrap_or_else(|e| Err(BackendError::task(task, e)))
}

impl Inner {
    fn usage(&self) -> std::sync::MutexGuard<'_, Usage> {
        self.usage.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits until `ready` says yes, with the usage locked.
    async fn wait_for(&self, mut ready: impl FnMut(&mut Usage) -> bool) {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if ready(&mut self.usage()) {
                return;
            }
            notified.await;
        }
    }

    /// Marks a create (or pull) in progress, once no collection runs.
    async fn enter(self: &Arc<Self>) -> Active {
        self.wait_for(|usage| {
            let free = !usage.collecting;
            if free {
                usage.active += 1;
            }
            free
        })
        .await;
        Active {
            _entered: Arc::new(Entered(Arc::clone(self))),
        }
    }

    /// Marks a collection in progress, once no create and no other collection runs.
    async fn exclusive(self: &Arc<Self>) -> Exclusive {
        self.wait_for(|usage| {
            let free = !usage.collecting && usage.active == 0;
            if free {
                usage.collecting = true;
            }
            free
        })
        .await;
        Exclusive(Arc::clone(self))
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

    /// The image `reference`: its record if one is stored (and `force` is off), else pulled
    /// (once, however many ask at the same time) and recorded.
    async fn image(&self, reference: &Reference, force: bool) -> Result<Loaded, BackendError> {
        // Held images too: the allow-list says where sandboxes' images may come from.
        if !self.settings.allows(&reference.registry) {
            let refused = PullError::NotAllowed {
                registry: reference.registry.clone(),
            };
            return Err(pull_error(reference, &refused));
        }
        let opened = self.opened().await?;
        if force {
            self.pulls.forget(reference);
        }
        let result = self
            .pulls
            .run(reference, || async {
                let refs = opened.paths.refs.clone();
                if !force {
                    let paths = opened.paths.clone();
                    let mapping = self.mapping;
                    let shown = reference.to_string();
                    let stored =
                        tokio::task::spawn_blocking(move || usable_record(&paths, &shown, mapping))
                            .await
                            .ok()
                            .flatten();
                    if let Some(stored) = stored {
                        return Ok(stored);
                    }
                }
                let image = pull_logged(&opened.puller, reference).await?;
                let record = Record::of(&image);
                let path = tokio::task::spawn_blocking(move || records::write(&refs, &record))
                    .await
                    .map_err(|e| BlobError::Io {
                        op: "record image",
                        source: std::io::Error::other(e),
                    })?
                    .map_err(|source| BlobError::Io {
                        op: "record image",
                        source,
                    })?;
                Ok(Loaded {
                    image,
                    record: path,
                    pulled_at: Some(Instant::now()),
                })
            })
            .await;
        result.map_err(|error| pull_error(reference, &error))
    }

    /// The unpacked directory of layer `digest` (unpacked on first use, once). The unpack
    /// keeps `active` until it is done, even if its caller goes away: a collection must not
    /// run while it writes.
    async fn layer_dir(&self, digest: &Digest, active: &Active) -> Result<PathBuf, BackendError> {
        let opened = self.opened().await?;
        let result = self
            .unpacks
            .run(digest, || async {
                let blob = opened.puller.blobs().path(digest);
                let target = opened.paths.layers.join(layer_name(digest, self.mapping));
                // 64 bits of the digest: finding another layer with the same name is out
                // of reach, and a link is never repointed anyway.
                let link = opened.paths.links.join(format!(
                    "{}{:x}",
                    &digest.hex()[..16],
                    self.mapping.uid_base
                ));
                let mapping = self.mapping;
                let digest = digest.clone();
                let active = active.clone();
                blocking("unpack layer", move || {
                    let _active = active;
                    let dir = unpack_once(&blob, &target, &digest, mapping)?;
                    short_link(&dir, &link)
                })
                .await
            })
            .await;
        result.map_err(|error| BackendError::ImageUnavailable {
            image: digest.to_string(),
            reason: error.to_string(),
        })
    }

    /// Records that a sandbox uses `loaded` until the returned hold is dropped.
    fn hold(self: &Arc<Self>, loaded: &Loaded) -> InUse {
        let mut usage = self.usage();
        *usage
            .images
            .entry(loaded.image.reference.to_string())
            .or_default() += 1;
        for digest in &loaded.image.layers {
            *usage.layers.entry(digest.clone()).or_default() += 1;
        }
        InUse {
            inner: Arc::downgrade(self),
            image: loaded.image.reference.to_string(),
            layers: loaded.image.layers.clone(),
            record: loaded.record.clone(),
        }
    }

    /// Starts a collection in the background when the directory has a limit.
    fn collect_soon(self: &Arc<Self>) {
        if self.max_disk.is_none() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let inner = Arc::clone(self);
        runtime.spawn(async move {
            if let Err(error) = inner.sweep_now(Goal::Limit(inner.max_disk)).await {
                tracing::warn!(%error, "image collection failed");
            }
        });
    }

    /// [`Inner::sweep_now`] in a task of its own: a caller that goes away does not cut it
    /// short (the removal would go on without the caches forgetting what it removed).
    async fn sweep(self: &Arc<Self>, goal: Goal) -> Result<Swept, BackendError> {
        let inner = Arc::clone(self);
        tokio::spawn(async move { inner.sweep_now(goal).await })
            .await
            .unwrap_or_else(|e| Err(BackendError::task("collect images", e)))
    }

    /// Sweeps the directory towards `goal` with creates held off and every other worker
    /// sharing the directory locked out; forgets what it removed (everything, when the sweep
    /// failed part-way), and deletes the layers it moved aside once creates run again.
    async fn sweep_now(self: &Arc<Self>, goal: Goal) -> Result<Swept, BackendError> {
        self.opened().await?;
        let exclusive = self.exclusive().await;
        let held = {
            let usage = self.usage();
            Held {
                images: usage.images.keys().cloned().collect(),
                layers: usage.layers.keys().cloned().collect(),
            }
        };
        let inner = Arc::clone(self);
        let limit = matches!(goal, Goal::Limit(_));
        let swept = blocking("collect images", move || {
            let opened = inner.opened.get().expect("opened above");
            let mut sizes = inner.sizes.lock().unwrap_or_else(|e| e.into_inner());
            let outcome = opened
                .lock
                .exclusively(|| {
                    let _ = opened.paths.blobs.remove_temporaries();
                    remove_temporaries(&[&opened.paths.layers, &opened.paths.links]);
                    gc::sweep(&opened.paths, &held, &goal, &mut sizes)
                })
                .map_err(|e| BackendError::io("lock the image directory", e))?;
            match outcome {
                Some(swept) => swept.map_err(|error| sweep_error(&goal, error)),
                None => Err(BackendError::Unavailable(format!(
                    "another worker uses the image directory {}; images are collected \
                     and removed only by a worker that has it alone",
                    inner.dir.display()
                ))),
            }
        })
        .await;
        let swept = match swept {
            Ok(swept) => swept,
            Err(BackendError::Unavailable(reason)) if limit => {
                if !self.shared_warned.swap(true, Ordering::Relaxed) {
                    tracing::warn!(%reason, "images.max-disk is not enforced");
                }
                return Ok(Swept::default());
            }
            // Nothing removed: the caches are right.
            Err(
                error @ (BackendError::ImageNotFound { .. }
                | BackendError::ImageInUse { .. }
                | BackendError::Unavailable(_)),
            ) => return Err(error),
            // Part of it may have been removed: nothing cached is trusted any more.
            Err(error) => {
                self.pulls.clear();
                self.unpacks.clear();
                return Err(error);
            }
        };
        for image in &swept.images {
            if let Ok(reference) = Reference::parse(image) {
                self.pulls.forget(&reference);
            }
        }
        for digest in &swept.layers {
            self.unpacks.forget(digest);
        }
        self.usage().over_limit = swept.over_limit;
        drop(exclusive);
        if !swept.images.is_empty() || swept.freed > 0 {
            tracing::info!(
                images = swept.images.len(),
                freed_bytes = swept.freed,
                disk_bytes = swept.total,
                over_limit = swept.over_limit,
                "image directory collected"
            );
        }
        let trash = swept.trash.clone();
        let _ = blocking("delete collected layers", move || {
            for dir in trash {
                let _ = std::fs::remove_dir_all(&dir);
            }
            Ok(())
        })
        .await;
        Ok(swept)
    }

    /// The operator's list (blocking).
    fn list(
        &self,
        opened: &Opened,
        in_use: &HashMap<String, usize>,
    ) -> Result<ImageList, BackendError> {
        let stored = records::read_all(&opened.paths.refs)
            .map_err(|e| BackendError::io("list images", e))?;
        let mut sizes = self.sizes.lock().unwrap_or_else(|e| e.into_inner());
        let now = Utc::now();
        let mut images: Vec<ImageInfo> = stored
            .into_iter()
            .map(|s| {
                let digests = s.record.layer_digests().unwrap_or_default();
                let size_bytes = digests
                    .iter()
                    .map(|d| {
                        sizes.of(&opened.paths.blobs.path(d))
                            + sizes.of(&opened.paths.layers.join(layer_name(d, self.mapping)))
                    })
                    .sum();
                let users = in_use.get(&s.record.reference).copied().unwrap_or(0);
                ImageInfo {
                    digest: s.record.manifest.clone(),
                    size_bytes,
                    layers: digests.len(),
                    pulled_at: DateTime::from_timestamp(s.record.pulled_at as i64, 0)
                        .unwrap_or_default(),
                    last_used: if users > 0 {
                        now
                    } else {
                        DateTime::<Utc>::from(s.last_used)
                    },
                    in_use: users,
                    reference: s.record.reference,
                }
            })
            .collect();
        images.sort_by_key(|image| std::cmp::Reverse(image.last_used));
        let disk_bytes = gc::disk_bytes(&opened.paths, &mut sizes)
            .map_err(|e| BackendError::io("list images", e))?;
        Ok(ImageList {
            images,
            disk_bytes,
            max_disk_bytes: self.max_disk,
        })
    }
}

/// What a failed sweep means for the caller.
fn sweep_error(goal: &Goal, error: SweepError) -> BackendError {
    let image = match goal {
        Goal::Remove(reference) => reference.clone(),
        Goal::Limit(_) => "(image cache)".to_string(),
    };
    match error {
        SweepError::NotFound => BackendError::ImageNotFound { image },
        SweepError::InUse => BackendError::ImageInUse { image },
        SweepError::Io(e) => BackendError::io("collect images", e),
    }
}

/// The directory name of layer `digest` unpacked for `mapping`.
fn layer_name(digest: &Digest, mapping: Mapping) -> String {
    format!("{}-u{}", digest.hex(), mapping.uid_base)
}

/// The stored record of `reference`, when every layer it lists is still at hand (as a blob,
/// or unpacked for `mapping`).
fn usable_record(paths: &Paths, reference: &str, mapping: Mapping) -> Option<Loaded> {
    let stored = records::read(&records::path_of(&paths.refs, reference))?;
    let image = stored.record.image()?;
    let present = image.layers.iter().all(|digest| {
        paths.blobs.get(digest).is_some() || paths.layers.join(layer_name(digest, mapping)).is_dir()
    });
    present.then_some(Loaded {
        image,
        record: stored.path,
        pulled_at: None,
    })
}

/// Pulls `reference` within the pull deadline, logging the outcome.
async fn pull_logged(puller: &Puller, reference: &Reference) -> Result<PulledImage, PullError> {
    tracing::info!(image = %reference, "pulling image");
    let started = Instant::now();
    let deadline = puller.deadline();
    let pulled = match tokio::time::timeout(deadline, puller.pull(reference)).await {
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
}

/// A create or pull in progress (clones share it; the last one ends it).
#[derive(Clone)]
struct Active {
    _entered: Arc<Entered>,
}

struct Entered(Arc<Inner>);

impl Drop for Entered {
    fn drop(&mut self) {
        self.0.usage().active -= 1;
        self.0.changed.notify_waiters();
    }
}

/// A collection in progress.
struct Exclusive(Arc<Inner>);

impl Drop for Exclusive {
    fn drop(&mut self) {
        self.0.usage().collecting = false;
        self.0.changed.notify_waiters();
    }
}

/// An image a live sandbox uses: its layers are not collected until this is dropped (after
/// the sandbox's root is unmounted), when the image's record is marked as used now.
struct InUse {
    inner: Weak<Inner>,
    image: String,
    layers: Vec<Digest>,
    record: PathBuf,
}

impl Drop for InUse {
    fn drop(&mut self) {
        let Some(inner) = self.inner.upgrade() else {
            return;
        };
        let (released, over_limit) = {
            let mut usage = inner.usage();
            let released = release(&mut usage.images, &self.image);
            for digest in &self.layers {
                release(&mut usage.layers, digest);
            }
            (released, usage.over_limit)
        };
        if released {
            records::touch(&self.record);
            if over_limit {
                inner.collect_soon();
            }
        }
    }
}

/// Counts one user of `key` less; true when it was the last.
fn release<K: Eq + Hash>(counts: &mut HashMap<K, usize>, key: &K) -> bool {
    match counts.get_mut(key) {
        Some(count) if *count > 1 => {
            *count -= 1;
            false
        }
        Some(_) => {
            counts.remove(key);
            true
        }
        None => false,
    }
}

/// Creates the cache's directories and takes the directory's shared lock; removes what a
/// crash left half-made when no other worker uses the directory.
fn open(dir: &Path, settings: RegistrySettings) -> Result<Opened, String> {
    // Private images' blobs are nobody else's to read: 0700 (the overlay is mounted by root).
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?;
    let lock = DirLock::shared(dir).map_err(|e| format!("lock {}: {e}", dir.display()))?;
    let blobs = BlobStore::open(dir.join("blobs")).map_err(|e| e.to_string())?;
    let paths = Paths {
        blobs,
        refs: dir.join("refs"),
        layers: dir.join("layers"),
        links: dir.join("l"),
    };
    for sub in [&paths.refs, &paths.layers, &paths.links] {
        std::fs::create_dir_all(sub).map_err(|e| format!("{}: {e}", sub.display()))?;
    }
    let cleaned = lock.exclusively(|| {
        let _ = paths.blobs.remove_temporaries();
        remove_temporaries(&[&paths.layers, &paths.links, &paths.refs]);
    });
    if let Err(e) = cleaned {
        return Err(format!("lock {}: {e}", dir.display()));
    }
    Ok(Opened {
        puller: Puller::new(paths.blobs.clone(), settings),
        paths,
        lock,
    })
}

/// Removes the temporary entries (half-made layers, links, records) below `dirs`.
fn remove_temporaries(dirs: &[&Path]) {
    for dir in dirs {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().starts_with(TEMP_PREFIX) {
                let path = entry.path();
                let _ = std::fs::remove_dir_all(&path).or_else(|_| std::fs::remove_file(&path));
            }
        }
    }
}

/// The short name `link` of the layer directory `dir`. A link that points
/// elsewhere is never replaced: it would swap another image's layer for every later create.
fn short_link(dir: &Path, link: &Path) -> Result<PathBuf, BackendError> {
    match std::fs::read_link(link) {
        Ok(to) if to == dir => return Ok(link.to_path_buf()),
        Ok(to) => {
            return Err(BackendError::ImageUnavailable {
                image: dir.display().to_string(),
                reason: format!(
                    "its short name {} already names {}",
                    link.display(),
                    to.display()
                ),
            })
        }
        Err(_) => {}
    }
    // Creating a symlink fails when the name exists: two unpacks racing for one name both
    // end up with the first one's link.
    match std::os::unix::fs::symlink(dir, link) {
        Ok(()) => Ok(link.to_path_buf()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            if std::fs::read_link(link).is_ok_and(|to| to == dir) {
                Ok(link.to_path_buf())
            } else {
                Err(BackendError::ImageUnavailable {
                    image: dir.display().to_string(),
                    reason: format!("its short name {} is taken", link.display()),
                })
            }
        }
        Err(e) => Err(BackendError::io("link layer", e)),
    }
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
        PullError::Unauthorized { .. }
        | PullError::NoPlatform { .. }
        | PullError::NotAllowed { .. } => BackendError::InvalidRequest(error.to_string()),
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

/// The image config's `Env` (`KEY=value`; entries without `=` ignored), `WorkingDir` and
/// `User`.
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
    // `root`, `0` and `0:0` are what a sandbox runs as anyway.
    let user = config
        .user
        .as_deref()
        .map(str::trim)
        .filter(|user| !user.is_empty() && !matches!(*user, "root" | "0" | "0:0"))
        .map(str::to_string);
    RunDefaults {
        env,
        working_dir,
        user,
    }
}

#[async_trait]
impl ImageSource for OciImages {
    async fn layout(&self, image: &str) -> Result<Option<ImageLayout>, BackendError> {
        let started = Instant::now();
        let reference =
            Reference::parse(image).map_err(|e| BackendError::InvalidRequest(e.to_string()))?;
        let (loaded, lower_dirs, hold) = {
            let active = self.inner.enter().await;
            let loaded = self.inner.image(&reference, false).await?;
            let mut lower_dirs = Vec::with_capacity(loaded.image.layers.len());
            for digest in loaded.image.layers.iter().rev() {
                lower_dirs.push(self.inner.layer_dir(digest, &active).await?);
            }
            // Held before creates are let go, so that no collection finds it unused.
            let hold = self.inner.hold(&loaded);
            (loaded, lower_dirs, hold)
        };
        if lower_dirs.is_empty() {
            return Err(BackendError::ImageUnavailable {
                image: reference.to_string(),
                reason: "the image has no layers".to_string(),
            });
        }
        // This create waited for a pull (its own, or one it joined).
        let pulled = loaded.pulled_at.is_some_and(|at| at >= started);
        if pulled {
            self.inner.collect_soon();
        }
        Ok(Some(ImageLayout {
            lower_dirs,
            read_only_binds: Vec::new(),
            defaults: run_defaults(&loaded.image.config),
            hold: ImageHold::new(hold),
            pulled,
        }))
    }

    fn catalog(&self) -> Option<&dyn ImageCatalog> {
        Some(self)
    }
}

#[async_trait]
impl ImageCatalog for OciImages {
    async fn list(&self) -> Result<ImageList, BackendError> {
        OciImages::list(self).await
    }

    async fn pull(&self, image: &str) -> Result<ImageInfo, BackendError> {
        OciImages::pull(self, image).await
    }

    async fn remove(&self, image: &str) -> Result<RemovedImage, BackendError> {
        OciImages::remove(self, image).await
    }
}
