//! Garbage collection of the OCI cache: removes an image on request, and unused images (least
//! recently used first) while the directory holds more than its size limit; then every blob,
//! unpacked layer and short link that no remaining image needs. Nothing a live sandbox uses
//! is removed: the caller passes what is held, and runs this only with every other worker
//! sharing the directory locked out.

use std::collections::{BTreeSet, HashSet};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::blobs::BlobStore;
use super::records::{self, Sizes, Stored};
use super::reference::Digest;

/// The cache's directories.
#[derive(Debug, Clone)]
pub(crate) struct Paths {
    pub blobs: BlobStore,
    pub refs: PathBuf,
    pub layers: PathBuf,
    pub links: PathBuf,
}

/// What a sweep must keep.
#[derive(Debug, Default)]
pub(crate) struct Held {
    /// References live sandboxes use.
    pub images: HashSet<String>,
    /// Layers live sandboxes use.
    pub layers: HashSet<Digest>,
}

/// What a sweep asks for besides removing what nothing needs.
#[derive(Debug, Clone)]
pub(crate) enum Goal {
    /// Remove the image with this normalised reference.
    Remove(String),
    /// Remove unused images, least recently used first, until the directory holds at most
    /// this many bytes (`None`: only what nothing needs).
    Limit(Option<u64>),
}

/// Why a sweep did not do what was asked.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SweepError {
    /// The image to remove is not held.
    #[error("image not found")]
    NotFound,
    /// The image to remove is used by live sandboxes.
    #[error("image in use")]
    InUse,
    /// The directory could not be read or written.
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// What a sweep did.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Swept {
    /// References removed.
    pub images: Vec<String>,
    /// Layers whose blob or unpacked directories were removed.
    pub layers: Vec<Digest>,
    /// Bytes freed.
    pub freed: u64,
    /// Bytes held afterwards.
    pub total: u64,
    /// Still above the limit: everything left over is in use.
    pub over_limit: bool,
    /// Layer directories moved aside (`.tmp-` names) for the caller to delete once creates
    /// may run again (a big layer takes a while to delete).
    pub trash: Vec<PathBuf>,
}

/// Sweeps the cache at `paths` towards `goal`, keeping `held`.
pub(crate) fn sweep(
    paths: &Paths,
    held: &Held,
    goal: &Goal,
    sizes: &mut Sizes,
) -> Result<Swept, SweepError> {
    let mut swept = Swept::default();
    let mut images = records::read_all(&paths.refs)?;
    if let Goal::Remove(reference) = goal {
        let index = images
            .iter()
            .position(|s| &s.record.reference == reference)
            .ok_or(SweepError::NotFound)?;
        if held.images.contains(reference) {
            return Err(SweepError::InUse);
        }
        remove_record(&images.swap_remove(index), &mut swept)?;
    }
    let mut inventory = Inventory::read(paths)?;
    swept.freed += inventory.remove_unneeded(paths, &images, held, sizes)?;
    let mut total = inventory.size(paths, sizes);
    if let Goal::Limit(Some(limit)) = *goal {
        // Least recently used last, so that pop() takes it.
        images.sort_by_key(|image| std::cmp::Reverse(image.last_used));
        while total > limit {
            let Some(victim) = pop_unused(&mut images, held) else {
                swept.over_limit = true;
                break;
            };
            remove_record(&victim, &mut swept)?;
            let freed = inventory.remove_unneeded(paths, &images, held, sizes)?;
            swept.freed += freed;
            total = total.saturating_sub(freed);
        }
    }
    swept.layers = inventory.removed;
    swept.trash = inventory.trash;
    swept.total = total;
    remove_dangling_links(&paths.links);
    Ok(swept)
}

/// The bytes the cache at `paths` holds: every blob and unpacked layer directory.
pub(crate) fn disk_bytes(paths: &Paths, sizes: &mut Sizes) -> io::Result<u64> {
    Ok(Inventory::read(paths)?.size(paths, sizes))
}

/// Takes the least recently used image nobody uses out of `images` (sorted, oldest last).
fn pop_unused(images: &mut Vec<Stored>, held: &Held) -> Option<Stored> {
    let index = images
        .iter()
        .rposition(|s| !held.images.contains(&s.record.reference))?;
    Some(images.remove(index))
}

fn remove_record(stored: &Stored, swept: &mut Swept) -> io::Result<()> {
    match fs::remove_file(&stored.path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    tracing::info!(image = %stored.record.reference, "image removed");
    swept.images.push(stored.record.reference.clone());
    Ok(())
}

/// The blobs and unpacked layer directories on disk.
struct Inventory {
    blobs: BTreeSet<Digest>,
    /// Layer directories (any uid mapping) with their digest.
    layers: Vec<(Digest, PathBuf)>,
    removed: Vec<Digest>,
    /// Layer directories moved aside.
    trash: Vec<PathBuf>,
}

impl Inventory {
    fn read(paths: &Paths) -> io::Result<Self> {
        let blobs = paths
            .blobs
            .digests()
            .map_err(io::Error::other)?
            .into_iter()
            .collect();
        let mut layers = Vec::new();
        for entry in fs::read_dir(&paths.layers)? {
            let entry = entry?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.starts_with(super::cache::TEMP_PREFIX) {
                continue;
            }
            let Some((hex, _mapping)) = name.split_once("-u") else {
                continue;
            };
            if let Ok(digest) = Digest::parse(&format!("sha256:{hex}")) {
                layers.push((digest, entry.path()));
            }
        }
        Ok(Self {
            blobs,
            layers,
            removed: Vec::new(),
            trash: Vec::new(),
        })
    }

    fn size(&self, paths: &Paths, sizes: &mut Sizes) -> u64 {
        let blobs: u64 = self
            .blobs
            .iter()
            .map(|d| sizes.of(&paths.blobs.path(d)))
            .sum();
        let layers: u64 = self.layers.iter().map(|(_, dir)| sizes.of(dir)).sum();
        blobs + layers
    }

    /// Removes blobs and layer directories that no image in `images` lists and no sandbox
    /// holds; returns the bytes freed. (Config blobs are not kept: a record holds the config.)
    fn remove_unneeded(
        &mut self,
        paths: &Paths,
        images: &[Stored],
        held: &Held,
        sizes: &mut Sizes,
    ) -> io::Result<u64> {
        let needed: HashSet<Digest> = images
            .iter()
            .filter_map(|s| s.record.layer_digests())
            .flatten()
            .chain(held.layers.iter().cloned())
            .collect();
        let mut freed = 0;
        let unneeded: Vec<Digest> = self
            .blobs
            .iter()
            .filter(|d| !needed.contains(*d))
            .cloned()
            .collect();
        for digest in unneeded {
            let path = paths.blobs.path(&digest);
            freed += sizes.of(&path);
            paths.blobs.remove(&digest).map_err(io::Error::other)?;
            sizes.forget(&path);
            self.blobs.remove(&digest);
            self.removed.push(digest);
        }
        let mut kept = Vec::new();
        for (digest, dir) in std::mem::take(&mut self.layers) {
            if needed.contains(&digest) {
                kept.push((digest, dir));
                continue;
            }
            freed += sizes.of(&dir);
            self.trash.push(move_aside(&dir)?);
            sizes.forget(&dir);
            if !self.removed.contains(&digest) {
                self.removed.push(digest);
            }
        }
        self.layers = kept;
        Ok(freed)
    }
}

/// Renames a layer directory to a temporary name beside it, for deleting later: gone from
/// every create's view at once.
fn move_aside(dir: &Path) -> io::Result<PathBuf> {
    let trash = dir.with_file_name(format!(
        "{}gc-{:016x}",
        super::cache::TEMP_PREFIX,
        rand::random::<u64>()
    ));
    fs::rename(dir, &trash)?;
    Ok(trash)
}

/// Removes the short links whose layer directory is gone.
fn remove_dangling_links(links: &Path) {
    let Ok(entries) = fs::read_dir(links) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_symlink())
            && fs::metadata(&path).is_err()
        {
            let _ = fs::remove_file(&path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::pull::RunConfig;
    use super::super::records::Record;
    use super::*;

    struct Cache {
        _root: tempfile::TempDir,
        paths: Paths,
    }

    impl Cache {
        fn new() -> Self {
            let root = tempfile::tempdir().unwrap();
            let paths = Paths {
                blobs: BlobStore::open(root.path().join("blobs")).unwrap(),
                refs: root.path().join("refs"),
                layers: root.path().join("layers"),
                links: root.path().join("l"),
            };
            for dir in [&paths.refs, &paths.layers, &paths.links] {
                fs::create_dir_all(dir).unwrap();
            }
            Self { _root: root, paths }
        }

        /// A layer of `bytes` bytes (blob and unpacked directory, each that big).
        fn layer(&self, name: &str, bytes: usize) -> Digest {
            let digest = Digest::of(name.as_bytes());
            fs::write(self.paths.blobs.path(&digest), vec![0u8; bytes]).unwrap();
            let dir = self.paths.layers.join(format!("{}-u1", digest.hex()));
            fs::create_dir(&dir).unwrap();
            fs::write(dir.join("f"), vec![0u8; bytes]).unwrap();
            std::os::unix::fs::symlink(&dir, self.paths.links.join(&digest.hex()[..12])).unwrap();
            digest
        }

        /// An image of `layers`, last used `age` seconds ago.
        fn image(&self, reference: &str, layers: &[&Digest], age: u64) {
            let record = Record {
                reference: reference.to_string(),
                manifest: Digest::of(reference.as_bytes()).to_string(),
                layers: layers.iter().map(|d| d.to_string()).collect(),
                config: RunConfig::default(),
                pulled_at: 0,
            };
            let path = records::write(&self.paths.refs, &record).unwrap();
            let when = std::time::SystemTime::now() - std::time::Duration::from_secs(age);
            fs::File::options()
                .write(true)
                .open(path)
                .unwrap()
                .set_modified(when)
                .unwrap();
        }

        fn references(&self) -> Vec<String> {
            let mut all: Vec<String> = records::read_all(&self.paths.refs)
                .unwrap()
                .into_iter()
                .map(|s| s.record.reference)
                .collect();
            all.sort();
            all
        }

        fn has_layer(&self, digest: &Digest) -> bool {
            self.paths.blobs.get(digest).is_some()
                && self
                    .paths
                    .layers
                    .join(format!("{}-u1", digest.hex()))
                    .is_dir()
        }
    }

    /// Each layer costs its blob, its file and one directory.
    const LAYER: u64 = 2 * 1000 + 4096;

    #[test]
    fn the_limit_removes_the_least_recently_used_unused_images() {
        let cache = Cache::new();
        let base = cache.layer("base", 1000);
        let a = cache.layer("a", 1000);
        let b = cache.layer("b", 1000);
        let c = cache.layer("c", 1000);
        cache.image("old", &[&base, &a], 300);
        cache.image("older", &[&base, &b], 600);
        cache.image("new", &[&c], 10);
        let mut sizes = Sizes::default();
        let mut held = Held::default();
        held.images.insert("older".into());
        held.layers.extend([base.clone(), b.clone()]);

        // No limit: only what nothing needs goes (here, nothing).
        let swept = sweep(&cache.paths, &held, &Goal::Limit(None), &mut sizes).unwrap();
        assert_eq!(swept.total, 4 * LAYER);
        assert!(swept.images.is_empty() && swept.freed == 0);

        // Room for three layers: `older` is the oldest but in use, so `old` goes, and with
        // it only its own layer (the base is shared).
        let swept = sweep(
            &cache.paths,
            &held,
            &Goal::Limit(Some(3 * LAYER)),
            &mut sizes,
        )
        .unwrap();
        assert_eq!(swept.images, vec!["old".to_string()]);
        assert_eq!(swept.layers, vec![a.clone()]);
        assert_eq!(swept.freed, LAYER);
        assert_eq!(swept.total, 3 * LAYER);
        assert!(!swept.over_limit);
        assert_eq!(cache.references(), vec!["new", "older"]);
        assert!(!cache.has_layer(&a) && cache.has_layer(&base) && cache.has_layer(&b));
        assert_eq!(
            fs::read_dir(&cache.paths.links).unwrap().count(),
            3,
            "dangling link gone"
        );

        // Room for one layer: `new` goes; `older` stays in use, over the limit.
        let swept = sweep(&cache.paths, &held, &Goal::Limit(Some(LAYER)), &mut sizes).unwrap();
        assert_eq!(swept.images, vec!["new".to_string()]);
        assert!(swept.over_limit);
        assert_eq!(cache.references(), vec!["older"]);

        // Released, it goes too (its layers with it) when asked to.
        let swept = sweep(
            &cache.paths,
            &Held::default(),
            &Goal::Remove("older".into()),
            &mut sizes,
        )
        .unwrap();
        assert_eq!(swept.freed, 2 * LAYER);
        assert_eq!(swept.total, 0);
        assert!(cache.references().is_empty());
        assert_eq!(fs::read_dir(&cache.paths.links).unwrap().count(), 0);
    }

    #[test]
    fn removing_needs_a_known_unused_image_and_keeps_shared_layers() {
        let cache = Cache::new();
        let base = cache.layer("base", 10);
        let top = cache.layer("top", 10);
        cache.image("one", &[&base, &top], 0);
        cache.image("two", &[&base], 0);
        let mut sizes = Sizes::default();
        let mut held = Held::default();
        assert!(matches!(
            sweep(
                &cache.paths,
                &held,
                &Goal::Remove("three".into()),
                &mut sizes
            ),
            Err(SweepError::NotFound)
        ));
        held.images.insert("one".into());
        assert!(matches!(
            sweep(&cache.paths, &held, &Goal::Remove("one".into()), &mut sizes),
            Err(SweepError::InUse)
        ));
        held.images.clear();
        let swept = sweep(&cache.paths, &held, &Goal::Remove("one".into()), &mut sizes).unwrap();
        assert_eq!(swept.layers, vec![top.clone()]);
        assert!(cache.has_layer(&base) && !cache.has_layer(&top));
        // An orphan blob (a config, a crash between fetch and record) goes on any sweep.
        let orphan = Digest::of(b"config");
        fs::write(cache.paths.blobs.path(&orphan), b"{}").unwrap();
        let swept = sweep(&cache.paths, &held, &Goal::Limit(None), &mut sizes).unwrap();
        assert_eq!(swept.layers, vec![orphan]);
    }
}
