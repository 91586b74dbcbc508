//! The content-addressed blob store of OCI images: `<dir>/sha256/<hex>`. A blob is written to
//! a temporary file, hashed as it is written, and renamed into place only when its digest is
//! the one it was fetched for, so a blob that is present is trusted; a crash mid-write leaves
//! only a temporary file, which [`BlobStore::open`] sweeps.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::PathBuf;

use super::reference::{Digest, Hasher};

/// Prefix of the temporary files of writes in progress.
const TEMP_PREFIX: &str = ".tmp-";

/// Why a blob was not stored.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    /// The content is not what its digest says: nothing was kept.
    #[error("digest mismatch: expected {expected}, got {actual}")]
    DigestMismatch {
        /// The digest the blob was fetched for.
        expected: Digest,
        /// The digest of what arrived.
        actual: Digest,
    },
    /// The blob is larger than allowed: nothing was kept.
    #[error("blob {digest} is larger than {limit} bytes")]
    TooLarge {
        /// The blob.
        digest: Digest,
        /// The limit.
        limit: u64,
    },
    /// Reading the content or writing the store failed.
    #[error("{op}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// Cause.
        #[source]
        source: io::Error,
    },
}

fn io_error(op: &'static str) -> impl FnOnce(io::Error) -> BlobError {
    move |source| BlobError::Io { op, source }
}

/// The blob store under one directory.
#[derive(Debug, Clone)]
pub struct BlobStore {
    dir: PathBuf,
}

impl BlobStore {
    /// Opens (creating) the store under `dir`.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self, BlobError> {
        let dir = dir.into().join("sha256");
        fs::create_dir_all(&dir).map_err(io_error("create blob store"))?;
        Ok(Self { dir })
    }

    /// Removes the temporary files of writes a crash interrupted. Only for a store nobody
    /// else writes to now (another worker sharing the directory may be writing).
    pub fn remove_temporaries(&self) -> Result<(), BlobError> {
        for entry in fs::read_dir(&self.dir).map_err(io_error("list blob store"))? {
            let entry = entry.map_err(io_error("list blob store"))?;
            if entry.file_name().to_string_lossy().starts_with(TEMP_PREFIX) {
                let _ = fs::remove_file(entry.path());
            }
        }
        Ok(())
    }

    /// The digests of every stored blob.
    pub fn digests(&self) -> Result<Vec<Digest>, BlobError> {
        let mut all = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(io_error("list blob store"))? {
            let entry = entry.map_err(io_error("list blob store"))?;
            if let Some(digest) = entry
                .file_name()
                .to_str()
                .and_then(|hex| Digest::parse(&format!("sha256:{hex}")).ok())
            {
                all.push(digest);
            }
        }
        Ok(all)
    }

    /// Where the blob `digest` lives once stored.
    pub fn path(&self, digest: &Digest) -> PathBuf {
        self.dir.join(digest.hex())
    }

    /// The stored blob `digest`, if present (and so verified).
    pub fn get(&self, digest: &Digest) -> Option<PathBuf> {
        let path = self.path(digest);
        path.is_file().then_some(path)
    }

    /// Stores what `content` yields as blob `digest`, at most `limit` bytes, verifying the
    /// digest; returns its path. A blob already present is not written again.
    pub fn put(
        &self,
        digest: &Digest,
        content: &mut dyn Read,
        limit: u64,
    ) -> Result<PathBuf, BlobError> {
        if let Some(path) = self.get(digest) {
            return Ok(path);
        }
        let mut writer = self.writer(digest, limit)?;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = content.read(&mut buf).map_err(io_error("read blob"))?;
            if n == 0 {
                break;
            }
            if let Err(source) = writer.write(&buf[..n]) {
                return Err(if writer.written > writer.limit {
                    BlobError::TooLarge {
                        digest: digest.clone(),
                        limit,
                    }
                } else {
                    io_error("write blob")(source)
                });
            }
        }
        writer.commit()
    }

    /// A writer of the blob `digest` (at most `limit` bytes) that keeps it only if
    /// [`BlobWriter::commit`] finds the digest right; dropped uncommitted, it leaves nothing.
    pub fn writer(&self, digest: &Digest, limit: u64) -> Result<BlobWriter, BlobError> {
        let temp = self.dir.join(format!(
            "{TEMP_PREFIX}{}-{:016x}",
            digest.hex(),
            rand::random::<u64>()
        ));
        let file = File::options()
            .write(true)
            .create_new(true)
            .open(&temp)
            .map_err(io_error("create blob"))?;
        Ok(BlobWriter {
            file: Some(file),
            temp,
            target: self.path(digest),
            digest: digest.clone(),
            hasher: Some(Hasher::new()),
            written: 0,
            limit,
        })
    }

    /// Removes the blob `digest` (garbage collection); a missing blob is fine.
    pub fn remove(&self, digest: &Digest) -> Result<(), BlobError> {
        match fs::remove_file(self.path(digest)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_error("remove blob")(e)),
            _ => Ok(()),
        }
    }
}

/// A blob being written: hashed as it is written, renamed into place by
/// [`BlobWriter::commit`] when its digest is right.
#[derive(Debug)]
pub struct BlobWriter {
    file: Option<File>,
    temp: PathBuf,
    target: PathBuf,
    digest: Digest,
    hasher: Option<Hasher>,
    written: u64,
    limit: u64,
}

impl BlobWriter {
    /// Appends `buf`; an error once past the limit.
    pub fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.written += buf.len() as u64;
        if self.written > self.limit {
            return Err(io::Error::other(format!(
                "blob {} is larger than {} bytes",
                self.digest, self.limit
            )));
        }
        let file = self
            .file
            .as_mut()
            .ok_or_else(|| io::Error::other("blob closed"))?;
        file.write_all(buf)?;
        if let Some(hasher) = self.hasher.as_mut() {
            hasher.update(buf);
        }
        Ok(buf.len())
    }

    /// Keeps the blob if its digest is right (else removes it); returns its path.
    pub fn commit(mut self) -> Result<PathBuf, BlobError> {
        if self.written > self.limit {
            return Err(BlobError::TooLarge {
                digest: self.digest.clone(),
                limit: self.limit,
            });
        }
        let actual = self.hasher.take().map(Hasher::finish);
        if actual.as_ref() != Some(&self.digest) {
            return Err(BlobError::DigestMismatch {
                expected: self.digest.clone(),
                actual: actual.unwrap_or_else(|| Digest::of(b"")),
            });
        }
        let file = self
            .file
            .take()
            .ok_or_else(|| io_error("commit blob")(io::Error::other("closed")))?;
        file.sync_all().map_err(io_error("sync blob"))?;
        fs::rename(&self.temp, &self.target).map_err(io_error("store blob"))?;
        Ok(self.target.clone())
    }

    /// Drops what was written.
    pub fn abort(self) {}
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        // Uncommitted, or the commit failed: nothing is kept (after a commit the temporary
        // file is already the blob, under its own name).
        let _ = fs::remove_file(&self.temp);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blobs_are_verified_before_they_are_kept() {
        let root = tempfile::tempdir().unwrap();
        let store = BlobStore::open(root.path()).unwrap();
        let digest = Digest::of(b"layer bytes");
        assert!(store.get(&digest).is_none());
        let path = store
            .put(&digest, &mut &b"layer bytes"[..], 1 << 20)
            .unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"layer bytes");
        assert_eq!(store.get(&digest), Some(path.clone()));
        // Present: not fetched again (an empty reader would not match).
        assert_eq!(store.put(&digest, &mut &b""[..], 1 << 20).unwrap(), path);

        let other = Digest::of(b"expected");
        let err = store
            .put(&other, &mut &b"tampered"[..], 1 << 20)
            .unwrap_err();
        assert!(
            matches!(err, BlobError::DigestMismatch { ref actual, .. } if *actual == Digest::of(b"tampered"))
        );
        assert!(store.get(&other).is_none());
        let err = store.put(&other, &mut &b"expected"[..], 4).unwrap_err();
        assert!(matches!(err, BlobError::TooLarge { limit: 4, .. }));
        // Nothing but the verified blob is left.
        let names: Vec<_> = fs::read_dir(root.path().join("sha256"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from(digest.hex())]);
        store.remove(&digest).unwrap();
        store.remove(&digest).unwrap();
        assert!(store.get(&digest).is_none());
    }

    #[test]
    fn a_crash_mid_write_leaves_nothing_trusted() {
        let root = tempfile::tempdir().unwrap();
        let digest = Digest::of(b"x");
        let dir = root.path().join("sha256");
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join(format!("{TEMP_PREFIX}{}-1", digest.hex())), b"x").unwrap();
        let store = BlobStore::open(root.path()).unwrap();
        assert!(store.get(&digest).is_none());
        assert!(store.digests().unwrap().is_empty());
        store.remove_temporaries().unwrap();
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 0);
    }
}
