//! What the OCI cache remembers on disk: one record per pulled reference under `<dir>/refs/`
//! (its manifest digest, layers and run configuration; the file's modification time is when a
//! sandbox last used it), the sizes of what is stored, and the directory lock that keeps one
//! worker from collecting what another worker sharing the directory uses.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use rustix::fs::{flock, FlockOperation};
use serde::{Deserialize, Serialize};

use super::pull::{PulledImage, RunConfig};
use super::reference::{Digest, Reference};

/// One pulled image, as `refs/<sha256 of the reference>.json` holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Record {
    /// The normalised reference.
    pub reference: String,
    /// The (platform) manifest's digest.
    pub manifest: String,
    /// Layer digests, bottom first.
    pub layers: Vec<String>,
    /// `Env`, `WorkingDir`, `User`.
    pub config: RunConfig,
    /// When it was pulled, in seconds since the epoch.
    pub pulled_at: u64,
}

impl Record {
    pub(crate) fn of(image: &PulledImage) -> Self {
        Self {
            reference: image.reference.to_string(),
            manifest: image.manifest.to_string(),
            layers: image.layers.iter().map(Digest::to_string).collect(),
            config: image.config.clone(),
            pulled_at: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
        }
    }

    /// The image this record describes; `None` when it does not parse (a damaged record is
    /// treated as absent).
    pub(crate) fn image(&self) -> Option<PulledImage> {
        Some(PulledImage {
            reference: Reference::parse(&self.reference).ok()?,
            manifest: Digest::parse(&self.manifest).ok()?,
            layers: self.layer_digests()?,
            config: self.config.clone(),
        })
    }

    pub(crate) fn layer_digests(&self) -> Option<Vec<Digest>> {
        self.layers.iter().map(|l| Digest::parse(l).ok()).collect()
    }
}

/// A record read from disk, with when it was last used.
#[derive(Debug, Clone)]
pub(crate) struct Stored {
    pub path: PathBuf,
    pub record: Record,
    pub last_used: SystemTime,
}

/// The record file of `reference` below `refs`.
pub(crate) fn path_of(refs: &Path, reference: &str) -> PathBuf {
    refs.join(format!("{}.json", Digest::of(reference.as_bytes()).hex()))
}

/// The record at `path`, if there is a readable one.
pub(crate) fn read(path: &Path) -> Option<Stored> {
    let bytes = fs::read(path).ok()?;
    let record: Record = serde_json::from_slice(&bytes).ok()?;
    let last_used = fs::metadata(path)
        .and_then(|m| m.modified())
        .unwrap_or(UNIX_EPOCH);
    Some(Stored {
        path: path.to_path_buf(),
        record,
        last_used,
    })
}

/// Every readable record below `refs`.
pub(crate) fn read_all(refs: &Path) -> io::Result<Vec<Stored>> {
    let mut all = Vec::new();
    for entry in fs::read_dir(refs)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "json") {
            all.extend(read(&path));
        }
    }
    Ok(all)
}

/// Writes `record` below `refs` (atomically: a crash leaves the old record or the new one).
pub(crate) fn write(refs: &Path, record: &Record) -> io::Result<PathBuf> {
    let path = path_of(refs, &record.reference);
    let temp = refs.join(format!(
        "{}{:016x}",
        super::cache::TEMP_PREFIX,
        rand::random::<u64>()
    ));
    let bytes = serde_json::to_vec_pretty(record).map_err(io::Error::other)?;
    let written = fs::write(&temp, bytes)
        .and_then(|()| File::open(&temp)?.sync_all())
        .and_then(|()| fs::rename(&temp, &path));
    if written.is_err() {
        let _ = fs::remove_file(&temp);
    }
    written.map(|()| path)
}

/// Marks the record at `path` as used now.
pub(crate) fn touch(path: &Path) {
    if let Ok(file) = File::options().write(true).open(path) {
        let _ = file.set_modified(SystemTime::now());
    }
}

/// Apparent sizes of stored blobs and layer directories, remembered per path: both are
/// immutable once stored, so a size is measured once per process.
#[derive(Debug, Default)]
pub(crate) struct Sizes {
    known: HashMap<PathBuf, u64>,
}

impl Sizes {
    /// The size of the file or directory tree at `path` (0 when it is gone).
    pub(crate) fn of(&mut self, path: &Path) -> u64 {
        if let Some(size) = self.known.get(path) {
            return *size;
        }
        let size = tree_size(path);
        if size > 0 {
            self.known.insert(path.to_path_buf(), size);
        }
        size
    }

    /// Forgets what was removed.
    pub(crate) fn forget(&mut self, path: &Path) {
        self.known.remove(path);
    }
}

/// The bytes of every regular file below `path` (symlinks not followed), plus 4 KiB per
/// directory.
fn tree_size(path: &Path) -> u64 {
    let Ok(meta) = fs::symlink_metadata(path) else {
        return 0;
    };
    if !meta.is_dir() {
        return meta.len();
    }
    let mut total = 4096;
    let mut stack = vec![path.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                total += 4096;
                stack.push(entry.path());
            } else if meta.is_file() {
                total += meta.len();
            }
        }
    }
    total
}

/// A shared `flock` on `<dir>/lock` held by every worker using the directory; collection
/// needs it exclusively, so that nothing another worker uses is removed. Converting a shared
/// `flock` to an exclusive one drops the shared lock first, even when the conversion fails, so
/// a would-be collector first takes `<dir>/gc.lock` exclusively: while it converts, every
/// other worker still holds its shared lock (none of them is converting).
#[derive(Debug)]
pub(crate) struct DirLock {
    file: File,
    gc: PathBuf,
}

impl DirLock {
    /// Takes the shared lock (waiting while another worker collects).
    pub(crate) fn shared(dir: &Path) -> io::Result<Self> {
        let file = lock_file(&dir.join("lock"))?;
        flock(&file, FlockOperation::LockShared)?;
        Ok(Self {
            file,
            gc: dir.join("gc.lock"),
        })
    }

    /// Runs `work` with the lock held exclusively, if no other worker holds it; `None` when
    /// one does. The shared lock is held again afterwards either way.
    pub(crate) fn exclusively<T>(&self, work: impl FnOnce() -> T) -> io::Result<Option<T>> {
        // Collectors take turns (released when `gc` closes).
        let gc = lock_file(&self.gc)?;
        flock(&gc, FlockOperation::LockExclusive)?;
        let result = match flock(&self.file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => Some(work()),
            Err(rustix::io::Errno::WOULDBLOCK) => None,
            Err(e) => {
                flock(&self.file, FlockOperation::LockShared)?;
                return Err(e.into());
            }
        };
        flock(&self.file, FlockOperation::LockShared)?;
        Ok(result)
    }
}

fn lock_file(path: &Path) -> io::Result<File> {
    File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(reference: &str) -> Record {
        Record {
            reference: reference.to_string(),
            manifest: Digest::of(b"m").to_string(),
            layers: vec![Digest::of(b"a").to_string()],
            config: RunConfig {
                env: Some(vec!["PATH=/bin".into()]),
                working_dir: None,
                user: Some("app".into()),
            },
            pulled_at: 1,
        }
    }

    #[test]
    fn records_round_trip_and_damaged_ones_are_absent() {
        let dir = tempfile::tempdir().unwrap();
        let one = record("docker.io/library/alpine:3.20");
        let path = write(dir.path(), &one).unwrap();
        assert_eq!(path, path_of(dir.path(), &one.reference));
        let stored = read(&path).unwrap();
        assert_eq!(stored.record, one);
        assert_eq!(stored.record.image().unwrap().layers.len(), 1);
        fs::write(path_of(dir.path(), "x"), b"{not json").unwrap();
        let all = read_all(dir.path()).unwrap();
        assert_eq!(all.len(), 1, "the damaged record is skipped");
        let mut broken = one.clone();
        broken.layers = vec!["sha256:short".into()];
        assert!(broken.image().is_none());
    }

    #[test]
    fn a_second_lock_holder_keeps_collection_out() {
        let dir = tempfile::tempdir().unwrap();
        let first = DirLock::shared(dir.path()).unwrap();
        assert_eq!(first.exclusively(|| 1).unwrap(), Some(1), "alone");
        let second = DirLock::shared(dir.path()).unwrap();
        assert_eq!(first.exclusively(|| 1).unwrap(), None, "shared");
        assert_eq!(second.exclusively(|| 2).unwrap(), None, "shared");
        drop(second);
        assert_eq!(first.exclusively(|| 3).unwrap(), Some(3), "alone again");
    }

    #[test]
    fn sizes_count_files_and_directories() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("d")).unwrap();
        fs::write(dir.path().join("d/f"), vec![0u8; 1000]).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", dir.path().join("link")).unwrap();
        let mut sizes = Sizes::default();
        assert_eq!(sizes.of(dir.path()), 4096 * 2 + 1000);
        assert_eq!(sizes.of(&dir.path().join("gone")), 0);
    }
}
