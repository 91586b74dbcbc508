//! Unpacks one OCI image layer (a tar, plain, gzip or zstd) into its own directory, ready to be
//! an overlay lower layer shared read-only by every sandbox of every image that has it.
//!
//! Safety against a hostile tarball: an entry whose path has a `..` component is refused (the
//! layer fails); a leading `/` is dropped; every path is resolved with `openat2` and
//! `RESOLVE_IN_ROOT` below the layer directory, so a symlink the layer made (`link -> /etc`,
//! `up -> ../../..`) resolves inside the layer, never on the host; a hard link's target is
//! resolved the same way and must not contain `..`. Device nodes are not created (a sandbox
//! has a minimal `/dev` of its own); setuid and setgid bits are dropped; extended attributes
//! (file capabilities among them) are not applied.
//!
//! Whiteouts become overlayfs whiteouts: `.wh.NAME` a `0:0` character device `NAME`, and
//! `.wh..wh..opq` the `trusted.overlay.opaque=y` attribute on its directory. Ownership is
//! shifted into the sandboxes' user-namespace range (`uid_base + uid`; ids past the range
//! become the overflow id 65534), so the image's root owns its files inside the sandbox.

use std::borrow::Cow;
use std::fs::File;
use std::io::{self, BufReader, Read, Seek};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

use rustix::fs::{
    chownat, fchmod, fchown, fsetxattr, futimens, linkat, makedev, mkdirat, mknodat, openat,
    openat2, statat, symlinkat, unlinkat, AtFlags, FileType, Gid, Mode, OFlags, ResolveFlags,
    Timespec, Timestamps, Uid, XattrFlags,
};
use rustix::io::Errno;

use crate::backend::container::files::remove_tree;

/// The id of files whose owner is outside the mapped range.
const OVERFLOW_ID: u32 = 65_534;

/// The mode bits kept from a tar header (setuid and setgid dropped, sticky kept).
const MODE_BITS: u32 = 0o1777;

/// The uid range a layer's ownership is shifted into (the sandboxes' user namespace).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Mapping {
    /// The host uid (and gid) of the sandbox's root.
    pub uid_base: u32,
    /// How many ids are mapped.
    pub count: u32,
}

impl Mapping {
    fn host(&self, id: u64) -> u32 {
        let id = u32::try_from(id)
            .ok()
            .filter(|id| *id < self.count)
            .unwrap_or(OVERFLOW_ID.min(self.count.saturating_sub(1)));
        self.uid_base.saturating_add(id)
    }
}

/// What an unpack made.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Unpacked {
    /// Entries written (files, directories, links, fifos).
    pub entries: u64,
    /// Whiteouts and opaque markers.
    pub whiteouts: u64,
    /// Entries not created: device nodes and types a layer should not carry.
    pub skipped: u64,
}

/// Why a layer could not be unpacked. Whatever was unpacked stays in the (temporary)
/// directory for the caller to remove.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    /// An entry's path (or a hard link's target) climbs out with `..`.
    #[error("layer entry {path:?} leaves the layer")]
    Escape {
        /// The entry's path as the tarball has it.
        path: String,
    },
    /// An entry could not be created.
    #[error("layer entry {path:?}: {source}")]
    Entry {
        /// The entry's path.
        path: String,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// The blob could not be read or decompressed, or is not a tar.
    #[error("layer {op}: {source}")]
    Archive {
        /// What was being done.
        op: &'static str,
        /// Cause.
        #[source]
        source: io::Error,
    },
}

fn archive(op: &'static str) -> impl FnOnce(io::Error) -> UnpackError {
    move |source| UnpackError::Archive { op, source }
}

/// The compression of a blob, by its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// A plain tar.
    None,
    /// gzip (`1f 8b`).
    Gzip,
    /// zstd (`28 b5 2f fd`).
    Zstd,
}

impl Compression {
    /// Sniffs the magic bytes at the start of a blob.
    pub fn detect(head: &[u8]) -> Self {
        if head.starts_with(&[0x1f, 0x8b]) {
            Self::Gzip
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Self::Zstd
        } else {
            Self::None
        }
    }
}

/// The most a layer may expand to, and hold: a decompression bomb fails the layer instead of
/// filling the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// Bytes of the uncompressed tar.
    pub max_bytes: u64,
    /// Entries.
    pub max_entries: u64,
}

impl Budget {
    /// The budget of a blob of `blob_bytes`: 32 times its size, between 256 MiB and 32 GiB,
    /// and a million entries.
    pub fn for_blob(blob_bytes: u64) -> Self {
        Self {
            max_bytes: blob_bytes.saturating_mul(32).clamp(256 << 20, 32 << 30),
            max_entries: 1_000_000,
        }
    }
}

/// Decodes every zstd frame of a stream in turn (a layer may be several frames, as
/// zstd:chunked layers are), skipping skippable frames.
struct ZstdFrames<R> {
    source: R,
    decoder: ruzstd::decoding::FrameDecoder,
    in_frame: bool,
}

impl<R: io::BufRead> Read for ZstdFrames<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        use ruzstd::decoding::errors::{FrameDecoderError, ReadFrameHeaderError};
        use ruzstd::decoding::BlockDecodingStrategy;
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            if !self.in_frame {
                if self.source.fill_buf()?.is_empty() {
                    return Ok(0);
                }
                match self.decoder.init(&mut self.source) {
                    Ok(()) => self.in_frame = true,
                    Err(FrameDecoderError::ReadFrameHeaderError(
                        ReadFrameHeaderError::SkipFrame { length, .. },
                    )) => {
                        let skipped = io::copy(
                            &mut (&mut self.source).take(u64::from(length)),
                            &mut io::sink(),
                        )?;
                        if skipped != u64::from(length) {
                            return Err(io::Error::other("truncated skippable zstd frame"));
                        }
                        continue;
                    }
                    Err(e) => return Err(io::Error::other(e.to_string())),
                }
            }
            while self.decoder.can_collect() < buf.len() && !self.decoder.is_finished() {
                let needed = buf.len() - self.decoder.can_collect();
                self.decoder
                    .decode_blocks(&mut self.source, BlockDecodingStrategy::UptoBytes(needed))
                    .map_err(|e| io::Error::other(e.to_string()))?;
            }
            let n = self.decoder.read(buf)?;
            if n > 0 {
                return Ok(n);
            }
            if self.decoder.is_finished() {
                self.in_frame = false;
            }
        }
    }
}

/// The largest long name, long link or PAX header a layer may carry (the tar reader holds
/// them in memory).
const MAX_METADATA: u64 = 1 << 20;

/// Watches the tar framing as the bytes pass: a long-name, long-link or PAX entry larger than
/// [`MAX_METADATA`] fails the read before the tar reader would buffer it.
struct MetadataGuard<R> {
    inner: R,
    /// Bytes until the next header block.
    until_header: u64,
    /// The header block being assembled.
    header: Vec<u8>,
}

impl<R: Read> Read for MetadataGuard<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let mut data = &buf[..n];
        while !data.is_empty() {
            if self.until_header > 0 {
                let skip = (self.until_header.min(data.len() as u64)) as usize;
                self.until_header -= skip as u64;
                data = &data[skip..];
                continue;
            }
            let take = (512 - self.header.len()).min(data.len());
            self.header.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.header.len() < 512 {
                continue;
            }
            let block: [u8; 512] = self.header[..].try_into().expect("512 bytes");
            self.header.clear();
            let header = tar::Header::from_byte_slice(&block);
            let size = header.entry_size().unwrap_or(0);
            let metadata = matches!(
                header.entry_type(),
                tar::EntryType::GNULongName
                    | tar::EntryType::GNULongLink
                    | tar::EntryType::XHeader
                    | tar::EntryType::XGlobalHeader
            );
            if metadata && size > MAX_METADATA {
                return Err(io::Error::other(format!(
                    "a layer entry's name or attributes take {size} bytes (at most {MAX_METADATA})"
                )));
            }
            // Zero blocks (the end) have size 0: the next block is looked at again. A size
            // near 2^64 (base-256 encoding allows it) would overflow the rounding: refused.
            self.until_header = size
                .div_ceil(512)
                .checked_mul(512)
                .ok_or_else(|| io::Error::other(format!("a layer entry claims {size} bytes")))?;
        }
        Ok(n)
    }
}

/// A reader that fails once more than `left` bytes went through it.
struct Bounded<R> {
    inner: R,
    left: u64,
    limit: u64,
}

impl<R: Read> Read for Bounded<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.left = self.left.checked_sub(n as u64).ok_or_else(|| {
            io::Error::other(format!("the layer expands past {} bytes", self.limit))
        })?;
        Ok(n)
    }
}

/// Unpacks the layer blob at `blob` into `dest`, an existing empty directory, within
/// `budget`.
pub fn unpack(
    blob: &Path,
    dest: &Path,
    mapping: Mapping,
    budget: Budget,
) -> Result<Unpacked, UnpackError> {
    let mut file = File::open(blob).map_err(archive("open blob"))?;
    let mut head = [0u8; 4];
    let read = file.read(&mut head).map_err(archive("read blob"))?;
    file.rewind().map_err(archive("read blob"))?;
    let file = BufReader::new(file);
    let reader: Box<dyn Read> = match Compression::detect(&head[..read]) {
        Compression::None => Box::new(file),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(file)),
        Compression::Zstd => Box::new(ZstdFrames {
            source: file,
            decoder: ruzstd::decoding::FrameDecoder::new(),
            in_frame: false,
        }),
    };
    let root = openat(
        rustix::fs::CWD,
        dest,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| archive("open layer directory")(e.into()))?;
    chown(root.as_fd(), mapping.host(0), mapping.host(0))
        .map_err(|e| archive("own layer directory")(e.into()))?;
    let mut unpacker = Unpacker {
        root,
        mapping,
        done: Unpacked::default(),
    };
    let reader = MetadataGuard {
        inner: Bounded {
            inner: reader,
            left: budget.max_bytes,
            limit: budget.max_bytes,
        },
        until_header: 0,
        header: Vec::with_capacity(512),
    };
    let mut tar = tar::Archive::new(reader);
    for (count, entry) in tar.entries().map_err(archive("read tar"))?.enumerate() {
        if count as u64 >= budget.max_entries {
            return Err(archive("read tar")(io::Error::other(format!(
                "the layer has more than {} entries",
                budget.max_entries
            ))));
        }
        let entry = entry.map_err(archive("read tar"))?;
        unpacker.entry(entry)?;
    }
    Ok(unpacker.done)
}

fn chown(fd: BorrowedFd<'_>, uid: u32, gid: u32) -> rustix::io::Result<()> {
    fchown(fd, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)))
}

/// The components of an entry path: a leading `/` and `.` components dropped; `None` when a
/// component is `..`.
fn components(raw: &[u8]) -> Option<Vec<String>> {
    let text = String::from_utf8_lossy(raw);
    let mut out = Vec::new();
    for part in text.split('/') {
        match part {
            "" | "." => {}
            ".." => return None,
            part => out.push(part.to_string()),
        }
    }
    Some(out)
}

struct Unpacker {
    root: OwnedFd,
    mapping: Mapping,
    done: Unpacked,
}

impl Unpacker {
    fn entry<R: Read>(&mut self, mut entry: tar::Entry<'_, R>) -> Result<(), UnpackError> {
        let raw_path = entry.path_bytes().into_owned();
        let shown = String::from_utf8_lossy(&raw_path).into_owned();
        let fail = |source: io::Error| UnpackError::Entry {
            path: shown.clone(),
            source,
        };
        let Some(parts) = components(&raw_path) else {
            return Err(UnpackError::Escape { path: shown });
        };
        let Some((name, parents)) = parts.split_last() else {
            return Ok(()); // The layer's root itself.
        };
        let header = entry.header().clone();
        let kind = header.entry_type();
        let parent = self.directory(parents).map_err(fail)?;
        if let Some(hidden) = name.strip_prefix(".wh.") {
            if hidden == ".wh..opq" {
                self.done.whiteouts += 1;
                return fsetxattr(&parent, "trusted.overlay.opaque", b"y", XattrFlags::empty())
                    .map_err(|e| fail(e.into()));
            }
            // `.wh...` would whiteout `..`: the parent's parent, outside the layer.
            if hidden.is_empty() || hidden == "." || hidden == ".." {
                return Err(UnpackError::Escape { path: shown });
            }
            // Other `.wh..wh.` names are aufs bookkeeping (`.wh..wh.plnk`): not content.
            if hidden.starts_with(".wh.") {
                self.done.skipped += 1;
                return Ok(());
            }
            self.done.whiteouts += 1;
            self.clear(&parent, hidden, false).map_err(fail)?;
            return mknodat(
                &parent,
                hidden,
                FileType::CharacterDevice,
                Mode::empty(),
                makedev(0, 0),
            )
            .map_err(|e| fail(e.into()));
        }
        // Blank owner fields (some tar writers leave them empty) mean root.
        let uid = self.mapping.host(header.uid().unwrap_or(0));
        let gid = self.mapping.host(header.gid().unwrap_or(0));
        let mode = Mode::from_raw_mode(header.mode().map_err(fail)? & MODE_BITS);
        match kind {
            tar::EntryType::Directory => {
                self.clear(&parent, name, true).map_err(fail)?;
                match mkdirat(&parent, name.as_str(), Mode::from_raw_mode(0o700)) {
                    Ok(()) | Err(Errno::EXIST) => {}
                    Err(e) => return Err(fail(e.into())),
                }
                let dir = openat(
                    &parent,
                    name.as_str(),
                    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .map_err(|e| fail(e.into()))?;
                chown(dir.as_fd(), uid, gid).map_err(|e| fail(e.into()))?;
                fchmod(&dir, mode).map_err(|e| fail(e.into()))?;
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                self.clear(&parent, name, false).map_err(fail)?;
                let fd = openat(
                    &parent,
                    name.as_str(),
                    OFlags::WRONLY
                        | OFlags::CREATE
                        | OFlags::EXCL
                        | OFlags::NOFOLLOW
                        | OFlags::CLOEXEC,
                    Mode::from_raw_mode(0o600),
                )
                .map_err(|e| fail(e.into()))?;
                let mut file = File::from(fd);
                io::copy(&mut entry, &mut file).map_err(fail)?;
                chown(file.as_fd(), uid, gid).map_err(|e| fail(e.into()))?;
                fchmod(&file, mode).map_err(|e| fail(e.into()))?;
                let mtime = Timespec {
                    tv_sec: i64::try_from(header.mtime().unwrap_or(0)).unwrap_or(0),
                    tv_nsec: 0,
                };
                futimens(
                    &file,
                    &Timestamps {
                        last_access: mtime,
                        last_modification: mtime,
                    },
                )
                .map_err(|e| fail(e.into()))?;
            }
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .map(Cow::into_owned)
                    .ok_or_else(|| fail(io::Error::other("symlink without a target")))?;
                self.clear(&parent, name, false).map_err(fail)?;
                symlinkat(target.as_slice(), &parent, name.as_str()).map_err(|e| fail(e.into()))?;
                chownat(
                    &parent,
                    name.as_str(),
                    Some(Uid::from_raw(uid)),
                    Some(Gid::from_raw(gid)),
                    AtFlags::SYMLINK_NOFOLLOW,
                )
                .map_err(|e| fail(e.into()))?;
            }
            tar::EntryType::Link => {
                let target = entry
                    .link_name_bytes()
                    .map(Cow::into_owned)
                    .ok_or_else(|| fail(io::Error::other("hard link without a target")))?;
                let Some(target) = components(&target) else {
                    return Err(UnpackError::Escape {
                        path: String::from_utf8_lossy(&target).into_owned(),
                    });
                };
                let Some((target_name, target_parents)) = target.split_last() else {
                    return Err(fail(io::Error::other("hard link to the layer's root")));
                };
                let target_parent = self.existing(target_parents).map_err(|e| fail(e.into()))?;
                self.clear(&parent, name, false).map_err(fail)?;
                linkat(
                    &target_parent,
                    target_name.as_str(),
                    &parent,
                    name.as_str(),
                    AtFlags::empty(),
                )
                .map_err(|e| fail(e.into()))?;
            }
            tar::EntryType::Fifo => {
                self.clear(&parent, name, false).map_err(fail)?;
                mknodat(&parent, name.as_str(), FileType::Fifo, mode, 0)
                    .map_err(|e| fail(e.into()))?;
                chownat(
                    &parent,
                    name.as_str(),
                    Some(Uid::from_raw(uid)),
                    Some(Gid::from_raw(gid)),
                    AtFlags::SYMLINK_NOFOLLOW,
                )
                .map_err(|e| fail(e.into()))?;
            }
            // Devices (the sandbox's /dev is its own) and anything a layer should not carry.
            _ => {
                self.done.skipped += 1;
                return Ok(());
            }
        }
        self.done.entries += 1;
        Ok(())
    }

    fn resolve() -> ResolveFlags {
        ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS
    }

    /// The existing directory at `parts` below the root (symlinks resolved inside the root).
    fn existing(&self, parts: &[String]) -> rustix::io::Result<OwnedFd> {
        let path = if parts.is_empty() {
            ".".to_string()
        } else {
            parts.join("/")
        };
        openat2(
            &self.root,
            path.as_str(),
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
            Self::resolve(),
        )
    }

    /// The directory at `parts`, created (owned by the mapped root, 0755) where missing.
    fn directory(&self, parts: &[String]) -> io::Result<OwnedFd> {
        match self.existing(parts) {
            Ok(fd) => return Ok(fd),
            Err(Errno::NOENT) => {}
            Err(e) => return Err(e.into()),
        }
        let root = self.mapping.host(0);
        let mut dir = self.existing(&[])?;
        for (i, part) in parts.iter().enumerate() {
            match self.existing(&parts[..=i]) {
                Ok(fd) => dir = fd,
                Err(Errno::NOENT) => {
                    match mkdirat(&dir, part.as_str(), Mode::from_raw_mode(0o755)) {
                        Ok(()) | Err(Errno::EXIST) => {}
                        Err(e) => return Err(e.into()),
                    }
                    dir = self.existing(&parts[..=i])?;
                    chown(dir.as_fd(), root, root)?;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(dir)
    }

    /// Removes what `name` is in `parent`, unless it is a directory and `keep_dir` (a later
    /// directory entry only updates its attributes).
    fn clear(&self, parent: &OwnedFd, name: &str, keep_dir: bool) -> io::Result<()> {
        if name.is_empty() || name == "." || name == ".." || name.contains('/') {
            return Err(io::Error::other(format!("refusing to clear {name:?}")));
        }
        let st = match statat(parent, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(Errno::NOENT) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
            if keep_dir {
                return Ok(());
            }
            let name = std::ffi::CString::new(name).map_err(io::Error::other)?;
            return remove_tree(parent.as_fd(), &name, 0).map_err(io::Error::other);
        }
        unlinkat(parent, name, AtFlags::empty()).map_err(Into::into)
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};

    use super::*;

    const MAPPING: Mapping = Mapping {
        uid_base: 200_000,
        count: 65_536,
    };

    /// False (after saying why) when not root: unpacking chowns, makes whiteout devices and
    /// sets trusted xattrs.
    fn as_root() -> bool {
        let root = rustix::process::geteuid().is_root();
        if !root {
            eprintln!("skipped: unpacking layers needs root (runs in CI as root)");
        }
        root
    }

    /// A tar entry written by hand, so that hostile paths survive (the builder refuses them).
    fn raw_entry(
        out: &mut Vec<u8>,
        path: &str,
        kind: tar::EntryType,
        link: &str,
        data: &[u8],
        mode: u32,
        uid: u64,
    ) {
        let mut header = tar::Header::new_gnu();
        {
            let name = &mut header.as_old_mut().name;
            name[..path.len()].copy_from_slice(path.as_bytes());
            let linkname = &mut header.as_old_mut().linkname;
            linkname[..link.len()].copy_from_slice(link.as_bytes());
        }
        header.set_entry_type(kind);
        header.set_size(data.len() as u64);
        header.set_mode(mode);
        header.set_uid(uid);
        header.set_gid(uid);
        header.set_mtime(1_700_000_000);
        header.set_cksum();
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(data);
        let pad = (512 - data.len() % 512) % 512;
        out.extend(std::iter::repeat_n(0u8, pad));
    }

    fn finish(mut tar: Vec<u8>) -> Vec<u8> {
        tar.extend(std::iter::repeat_n(0u8, 1024));
        tar
    }

    fn unpack_bytes(bytes: &[u8]) -> (tempfile::TempDir, Result<Unpacked, UnpackError>) {
        let dir = tempfile::tempdir().unwrap();
        let blob = dir.path().join("blob");
        std::fs::write(&blob, bytes).unwrap();
        let dest = dir.path().join("layer");
        std::fs::create_dir(&dest).unwrap();
        let result = unpack(&blob, &dest, MAPPING, Budget::for_blob(bytes.len() as u64));
        (dir, result)
    }

    fn sample() -> Vec<u8> {
        use tar::EntryType as T;
        let mut tar = Vec::new();
        raw_entry(&mut tar, "./etc/", T::Directory, "", b"", 0o755, 0);
        raw_entry(
            &mut tar,
            "etc/os-release",
            T::Regular,
            "",
            b"ID=test\n",
            0o644,
            0,
        );
        raw_entry(
            &mut tar,
            "usr/bin/su",
            T::Regular,
            "",
            b"#!/bin/sh\n",
            0o4755,
            0,
        );
        raw_entry(
            &mut tar,
            "home/user/notes",
            T::Regular,
            "",
            b"mine",
            0o600,
            1000,
        );
        raw_entry(&mut tar, "bin", T::Symlink, "usr/bin", b"", 0o777, 0);
        raw_entry(
            &mut tar,
            "etc/release",
            T::Link,
            "etc/os-release",
            b"",
            0o644,
            0,
        );
        raw_entry(&mut tar, "dev/sda", T::Block, "", b"", 0o600, 0);
        raw_entry(&mut tar, "tmp/fifo", T::Fifo, "", b"", 0o644, 0);
        raw_entry(&mut tar, "big/uid", T::Regular, "", b"x", 0o644, 4_000_000);
        finish(tar)
    }

    #[test]
    fn layers_unpack_with_shifted_owners_and_safe_modes() {
        if !as_root() {
            return;
        }
        for compression in [Compression::None, Compression::Gzip, Compression::Zstd] {
            let plain = sample();
            let bytes = match compression {
                Compression::None => plain,
                Compression::Gzip => {
                    let mut enc =
                        flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                    io::Write::write_all(&mut enc, &plain).unwrap();
                    enc.finish().unwrap()
                }
                Compression::Zstd => ruzstd::encoding::compress_to_vec(
                    &plain[..],
                    ruzstd::encoding::CompressionLevel::Fastest,
                ),
            };
            assert_eq!(Compression::detect(&bytes), compression);
            let (dir, result) = unpack_bytes(&bytes);
            let done = result.unwrap();
            assert_eq!(done.skipped, 1, "the block device is not created");
            let layer = dir.path().join("layer");
            assert_eq!(
                std::fs::read(layer.join("etc/os-release")).unwrap(),
                b"ID=test\n"
            );
            let meta = std::fs::metadata(layer.join("etc/os-release")).unwrap();
            assert_eq!((meta.uid(), meta.gid()), (200_000, 200_000));
            assert_eq!(meta.permissions().mode() & 0o7777, 0o644);
            assert_eq!(meta.mtime(), 1_700_000_000);
            assert_eq!(meta.nlink(), 2, "the hard link shares the file");
            let su = std::fs::metadata(layer.join("usr/bin/su")).unwrap();
            assert_eq!(su.permissions().mode() & 0o7777, 0o755, "setuid dropped");
            let notes = std::fs::metadata(layer.join("home/user/notes")).unwrap();
            assert_eq!(notes.uid(), 201_000);
            assert_eq!(
                std::fs::metadata(layer.join("big/uid")).unwrap().uid(),
                200_000 + 65_534
            );
            assert_eq!(
                std::fs::read_link(layer.join("bin")).unwrap(),
                Path::new("usr/bin")
            );
            assert!(!layer.join("dev/sda").exists());
            let parent = std::fs::metadata(layer.join("usr/bin")).unwrap();
            assert_eq!(
                (parent.uid(), parent.permissions().mode() & 0o777),
                (200_000, 0o755)
            );
            let fifo = std::fs::symlink_metadata(layer.join("tmp/fifo")).unwrap();
            assert!(fifo.file_type().is_fifo());
        }
    }

    #[test]
    fn whiteouts_become_overlay_whiteouts() {
        if !as_root() {
            return;
        }
        use tar::EntryType as T;
        let mut tar = Vec::new();
        raw_entry(&mut tar, "etc/.wh.motd", T::Regular, "", b"", 0o644, 0);
        raw_entry(
            &mut tar,
            "var/cache/.wh..wh..opq",
            T::Regular,
            "",
            b"",
            0o644,
            0,
        );
        let (dir, result) = unpack_bytes(&finish(tar));
        assert_eq!(result.unwrap().whiteouts, 2);
        let layer = dir.path().join("layer");
        let motd = std::fs::symlink_metadata(layer.join("etc/motd")).unwrap();
        assert!(motd.file_type().is_char_device());
        assert_eq!(motd.rdev(), 0);
        let mut value = [0u8; 4];
        let n = rustix::fs::getxattr(
            layer.join("var/cache"),
            "trusted.overlay.opaque",
            &mut value,
        )
        .unwrap();
        assert_eq!(&value[..n], b"y");
    }

    /// Found by fuzzing (`fuzz/fuzz_targets/oci_layer.rs`): an entry whose size, in base-256,
    /// is near 2^64 overflowed the framing guard's rounding (a panic in debug builds, a
    /// wrong frame in release ones). It is an error now.
    #[test]
    fn an_entry_size_near_two_to_the_64_is_refused() {
        let mut header = tar::Header::new_gnu();
        header.set_path("huge").unwrap();
        header.set_entry_type(tar::EntryType::Regular);
        header.set_mode(0o644);
        header.set_size(u64::MAX - 3);
        header.set_cksum();
        let mut tar = header.as_bytes().to_vec();
        tar.extend_from_slice(&[0u8; 512]);
        let (dir, result) = unpack_bytes(&finish(tar));
        assert!(result.is_err(), "{result:?}");
        assert!(!dir.path().join("layer/huge").exists());
    }

    #[test]
    fn hostile_layers_stay_inside() {
        if !as_root() {
            return;
        }
        use tar::EntryType as T;
        // `..` in a path: refused.
        let mut tar = Vec::new();
        raw_entry(&mut tar, "../escape", T::Regular, "", b"x", 0o644, 0);
        let (dir, result) = unpack_bytes(&finish(tar));
        assert!(
            matches!(result, Err(UnpackError::Escape { .. })),
            "{result:?}"
        );
        assert!(!dir.path().join("escape").exists());

        // Symlinks pointing out resolve inside the layer; absolute paths are relative to it.
        let marker = format!("traforato-layer-{}", std::process::id());
        let mut tar = Vec::new();
        raw_entry(&mut tar, "tmp/", T::Directory, "", b"", 0o1777, 0);
        raw_entry(&mut tar, "out", T::Symlink, "/tmp", b"", 0o777, 0);
        raw_entry(&mut tar, "up", T::Symlink, "../../../../..", b"", 0o777, 0);
        raw_entry(
            &mut tar,
            &format!("out/{marker}"),
            T::Regular,
            "",
            b"in",
            0o644,
            0,
        );
        raw_entry(
            &mut tar,
            &format!("up/tmp/{marker}-2"),
            T::Regular,
            "",
            b"in",
            0o644,
            0,
        );
        raw_entry(
            &mut tar,
            &format!("/tmp/{marker}-3"),
            T::Regular,
            "",
            b"in",
            0o644,
            0,
        );
        let (dir, result) = unpack_bytes(&finish(tar));
        result.unwrap();
        let layer = dir.path().join("layer");
        for name in [marker.clone(), format!("{marker}-2"), format!("{marker}-3")] {
            assert!(
                !Path::new("/tmp").join(&name).exists(),
                "{name} reached the host"
            );
            assert_eq!(std::fs::read(layer.join("tmp").join(&name)).unwrap(), b"in");
        }

        // A hard link to a host file: its target is looked up inside the layer (absent).
        let mut tar = Vec::new();
        raw_entry(&mut tar, "passwd", T::Link, "/etc/passwd", b"", 0o644, 0);
        let (_dir, result) = unpack_bytes(&finish(tar));
        assert!(
            matches!(result, Err(UnpackError::Entry { .. })),
            "{result:?}"
        );
        let mut tar = Vec::new();
        raw_entry(
            &mut tar,
            "passwd",
            T::Link,
            "../../../etc/passwd",
            b"",
            0o644,
            0,
        );
        let (_dir, result) = unpack_bytes(&finish(tar));
        assert!(
            matches!(result, Err(UnpackError::Escape { .. })),
            "{result:?}"
        );
        // Through a symlink: still inside.
        let mut tar = Vec::new();
        raw_entry(&mut tar, "etc", T::Symlink, "/etc", b"", 0o777, 0);
        raw_entry(&mut tar, "passwd", T::Link, "etc/passwd", b"", 0o644, 0);
        let (_dir, result) = unpack_bytes(&finish(tar));
        assert!(
            matches!(result, Err(UnpackError::Entry { .. })),
            "{result:?}"
        );

        // A whiteout of `..` or `.`: refused, and nothing beside the layer is touched.
        for hostile in [".wh...", "a/.wh..", "a/b/.wh..."] {
            let mut tar = Vec::new();
            raw_entry(&mut tar, "a/b/keep", T::Regular, "", b"k", 0o644, 0);
            raw_entry(&mut tar, hostile, T::Regular, "", b"", 0o644, 0);
            let (dir, result) = unpack_bytes(&finish(tar));
            assert!(
                matches!(result, Err(UnpackError::Escape { .. })),
                "{hostile}: {result:?}"
            );
            assert!(
                dir.path().join("blob").exists(),
                "{hostile} removed the layer's siblings"
            );
            assert!(dir.path().join("layer/a/b/keep").exists(), "{hostile}");
        }
        // aufs bookkeeping is not content.
        let mut tar = Vec::new();
        raw_entry(&mut tar, ".wh..wh.plnk/1.2", T::Regular, "", b"", 0o644, 0);
        raw_entry(&mut tar, ".wh..wh.aufs", T::Regular, "", b"", 0o644, 0);
        let (dir, result) = unpack_bytes(&finish(tar));
        assert_eq!(result.unwrap().whiteouts, 0);
        assert!(!dir.path().join("layer/.wh..wh.aufs").exists());

        // Not a tar at all.
        let (_dir, result) = unpack_bytes(b"\x1f\x8b garbage");
        assert!(
            matches!(result, Err(UnpackError::Archive { .. })),
            "{result:?}"
        );
    }

    #[test]
    fn later_entries_replace_earlier_ones() {
        if !as_root() {
            return;
        }
        use tar::EntryType as T;
        let mut tar = Vec::new();
        raw_entry(&mut tar, "a", T::Directory, "", b"", 0o755, 0);
        raw_entry(&mut tar, "a/x", T::Regular, "", b"old", 0o644, 0);
        raw_entry(&mut tar, "a", T::Regular, "", b"file now", 0o644, 0);
        raw_entry(&mut tar, "b", T::Regular, "", b"one", 0o644, 0);
        raw_entry(&mut tar, "b", T::Regular, "", b"two", 0o640, 0);
        let (dir, result) = unpack_bytes(&finish(tar));
        result.unwrap();
        let layer = dir.path().join("layer");
        assert_eq!(std::fs::read(layer.join("a")).unwrap(), b"file now");
        assert_eq!(std::fs::read(layer.join("b")).unwrap(), b"two");
    }

    #[test]
    fn zstd_layers_of_several_frames_and_skippable_frames_unpack_whole() {
        if !as_root() {
            return;
        }
        use tar::EntryType as T;
        let mut first = Vec::new();
        raw_entry(&mut first, "a", T::Regular, "", b"first", 0o644, 0);
        let mut second = Vec::new();
        raw_entry(&mut second, "b", T::Regular, "", b"second", 0o644, 0);
        let second = finish(second);
        let level = ruzstd::encoding::CompressionLevel::Fastest;
        let mut blob = ruzstd::encoding::compress_to_vec(&first[..], level);
        // A skippable frame (magic 0x184D2A50, 4-byte length) between the two.
        blob.extend_from_slice(&0x184D_2A50u32.to_le_bytes());
        blob.extend_from_slice(&3u32.to_le_bytes());
        blob.extend_from_slice(b"xyz");
        blob.extend(ruzstd::encoding::compress_to_vec(&second[..], level));
        let (dir, result) = unpack_bytes(&blob);
        assert_eq!(result.unwrap().entries, 2);
        let layer = dir.path().join("layer");
        assert_eq!(std::fs::read(layer.join("a")).unwrap(), b"first");
        assert_eq!(std::fs::read(layer.join("b")).unwrap(), b"second");
    }

    #[test]
    fn a_decompression_bomb_fails_within_its_budget() {
        use tar::EntryType as T;
        let mut tar = Vec::new();
        raw_entry(
            &mut tar,
            "zeros",
            T::Regular,
            "",
            &vec![0u8; 4 << 20],
            0o644,
            0,
        );
        let tar = finish(tar);
        let dir = tempfile::tempdir().unwrap();
        let blob = dir.path().join("blob");
        std::fs::write(&blob, &tar).unwrap();
        let dest = dir.path().join("layer");
        std::fs::create_dir(&dest).unwrap();
        let tight = Budget {
            max_bytes: 1 << 20,
            max_entries: 10,
        };
        let result = unpack(&blob, &dest, MAPPING, tight);
        assert!(
            matches!(
                &result,
                Err(UnpackError::Entry { .. } | UnpackError::Archive { .. })
            ),
            "{result:?}"
        );
        assert_eq!(Budget::for_blob(1).max_bytes, 256 << 20);
        assert_eq!(Budget::for_blob(1 << 30).max_bytes, 32 << 30);
    }

    #[test]
    fn long_names_pass_and_huge_metadata_is_refused() {
        if !as_root() {
            return;
        }
        // A 300-character path: a GNU long-name entry, as tar writers make it.
        let long = format!("deep/{}file", format!("{}/", "d".repeat(60)).repeat(5));
        let mut builder = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_size(2);
        header.set_mode(0o644);
        header.set_uid(0);
        header.set_gid(0);
        builder.append_data(&mut header, &long, &b"ok"[..]).unwrap();
        let (dir, result) = unpack_bytes(&builder.into_inner().unwrap());
        result.unwrap();
        assert_eq!(
            std::fs::read(dir.path().join("layer").join(&long)).unwrap(),
            b"ok"
        );

        // A long-name entry that claims 2 MiB: refused before it is read.
        let mut tar = Vec::new();
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::GNULongName);
        header.set_size(2 << 20);
        header.set_cksum();
        tar.extend_from_slice(header.as_bytes());
        tar.extend(std::iter::repeat_n(b'a', 2 << 20));
        let (_dir, result) = unpack_bytes(&finish(tar));
        assert!(
            matches!(&result, Err(UnpackError::Archive { source, .. }) if source.to_string().contains("at most")),
            "{result:?}"
        );
    }

    #[test]
    fn mappings_clamp_to_the_range() {
        assert_eq!(MAPPING.host(0), 200_000);
        assert_eq!(MAPPING.host(65_535), 265_535);
        assert_eq!(MAPPING.host(65_536), 265_534);
        let small = Mapping {
            uid_base: 10,
            count: 100,
        };
        assert_eq!(small.host(1_000), 109);
        assert_eq!(components(b"/./a//b/"), Some(vec!["a".into(), "b".into()]));
        assert_eq!(components(b"a/../b"), None);
    }
}
