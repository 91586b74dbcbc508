//! The files API on a sandbox's real filesystem, from the host: every path is resolved with
//! `openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)` against an fd of the sandbox root, so
//! `..`, absolute or relative symlinks and concurrent renames cannot leave the root. Every
//! operation runs with the sandbox root user's filesystem credentials: files it creates belong
//! to the sandbox, and read-only or foreign paths are refused as they would be inside.
//!
//! All functions block; callers run them on the blocking pool.

use std::ffi::{CStr, CString};
use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use chrono::{DateTime, Utc};
use rustix::fs::{
    fstat, mkdirat, openat, openat2, statat, unlinkat, AtFlags, Dir, FileType, Mode, OFlags,
    ResolveFlags, Stat,
};
use rustix::io::Errno;

use super::fscreds::SandboxFsCreds;
use crate::backend::{FileEntry, FileKind, FileStat, FilesError, WriteMode};
use crate::path::SandboxPath;

/// How deep a recursive listing or removal descends.
const MAX_DEPTH: usize = 256;

/// Most entries one listing walks; a larger tree answers [`FilesError::TooManyEntries`].
pub(crate) const MAX_LIST_ENTRIES: usize = 100_000;

/// The resolution every lookup uses.
fn resolve_flags() -> ResolveFlags {
    ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS
}

/// What an errno means for the files API. `not_dir` decides what `ENOTDIR` (a file among the
/// ancestors) becomes: `NotFound` for reads, `NotDirectory` where the caller creates.
fn map(e: Errno, op: &str, not_dir: fn() -> FilesError) -> FilesError {
    match e {
        Errno::NOENT | Errno::LOOP => FilesError::NotFound,
        Errno::NOTDIR => not_dir(),
        Errno::ISDIR => FilesError::IsDirectory,
        Errno::NOTEMPTY | Errno::EXIST => FilesError::NotEmpty,
        Errno::ROFS | Errno::ACCESS | Errno::PERM | Errno::BUSY | Errno::XDEV | Errno::NXIO => {
            FilesError::PermissionDenied
        }
        Errno::FBIG | Errno::NOSPC | Errno::DQUOT => FilesError::TooLarge,
        other => FilesError::Io {
            op: op.to_string(),
            source: other.into(),
        },
    }
}

fn not_found() -> FilesError {
    FilesError::NotFound
}

fn not_directory() -> FilesError {
    FilesError::NotDirectory
}

/// The path relative to the sandbox root, as `openat2` wants it.
fn relative(path: &SandboxPath) -> &str {
    if path.is_root() {
        "."
    } else {
        path.relative()
    }
}

fn mtime(st: &Stat) -> DateTime<Utc> {
    DateTime::from_timestamp(st.st_mtime, st.st_mtime_nsec as u32).unwrap_or_default()
}

fn is_dir(st: &Stat) -> bool {
    FileType::from_raw_mode(st.st_mode) == FileType::Directory
}

/// An open sandbox root and the uid/gid that owns the sandbox.
#[derive(Debug)]
pub(crate) struct SandboxRoot {
    fd: OwnedFd,
    uid: u32,
}

impl SandboxRoot {
    /// Wraps an `O_PATH` fd of the root directory.
    pub(crate) fn new(fd: OwnedFd, uid: u32) -> Self {
        Self { fd, uid }
    }

    fn creds(&self) -> Result<SandboxFsCreds, FilesError> {
        SandboxFsCreds::enter(self.uid, self.uid).map_err(|e| FilesError::Io {
            op: "switch credentials".to_string(),
            source: e,
        })
    }

    /// `openat2` below the root; retried when a concurrent rename makes the kernel ask.
    fn open(&self, rel: &str, flags: OFlags, mode: Mode) -> Result<OwnedFd, Errno> {
        let mut tries = 0;
        loop {
            match openat2(
                &self.fd,
                rel,
                flags | OFlags::CLOEXEC,
                mode,
                resolve_flags(),
            ) {
                Err(Errno::AGAIN) if tries < 16 => tries += 1,
                other => return other,
            }
        }
    }

    fn open_dir_path(&self, rel: &str) -> Result<OwnedFd, Errno> {
        self.open(rel, OFlags::PATH | OFlags::DIRECTORY, Mode::empty())
    }

    /// Opens a regular file for reading; returns it with its size.
    pub(crate) fn open_read(&self, path: &SandboxPath) -> Result<(File, u64), FilesError> {
        let _creds = self.creds()?;
        let fd = self
            .open(
                relative(path),
                OFlags::RDONLY | OFlags::NOCTTY | OFlags::NONBLOCK,
                Mode::empty(),
            )
            .map_err(|e| map(e, "open file", not_found))?;
        let st = fstat(&fd).map_err(|e| map(e, "stat file", not_found))?;
        match FileType::from_raw_mode(st.st_mode) {
            FileType::Directory => return Err(FilesError::IsDirectory),
            FileType::RegularFile => {}
            _ => return Err(FilesError::PermissionDenied),
        }
        rustix::fs::fcntl_setfl(&fd, OFlags::RDONLY).map_err(|e| map(e, "open file", not_found))?;
        Ok((File::from(fd), st.st_size.max(0) as u64))
    }

    /// Opens (creating it and its ancestors) a regular file for writing.
    pub(crate) fn open_write(
        &self,
        path: &SandboxPath,
        mode: WriteMode,
    ) -> Result<File, FilesError> {
        if path.is_root() {
            return Err(FilesError::IsDirectory);
        }
        let _creds = self.creds()?;
        self.mkdir_all(&path.parent())?;
        let extra = match mode {
            WriteMode::Replace => OFlags::TRUNC,
            WriteMode::Append => OFlags::APPEND,
        };
        let fd = self
            .open(
                relative(path),
                OFlags::WRONLY | OFlags::CREATE | OFlags::NOCTTY | OFlags::NONBLOCK | extra,
                Mode::from_raw_mode(0o644),
            )
            .map_err(|e| map(e, "open file", not_directory))?;
        let st = fstat(&fd).map_err(|e| map(e, "stat file", not_directory))?;
        if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
            return Err(FilesError::PermissionDenied);
        }
        let keep = OFlags::WRONLY
            | if mode == WriteMode::Append {
                OFlags::APPEND
            } else {
                OFlags::empty()
            };
        rustix::fs::fcntl_setfl(&fd, keep).map_err(|e| map(e, "open file", not_directory))?;
        Ok(File::from(fd))
    }

    /// Creates `dir` and its missing ancestors. Returns whether `dir` itself was created.
    /// Needs the sandbox credentials already entered.
    fn mkdir_all(&self, dir: &SandboxPath) -> Result<bool, FilesError> {
        let comps: Vec<&str> = dir.components().collect();
        let mut created = false;
        for i in 1..=comps.len() {
            let prefix = comps[..i].join("/");
            match self.open_dir_path(&prefix) {
                Ok(_) => {
                    created = false;
                    continue;
                }
                Err(Errno::NOENT) => {}
                Err(e) => return Err(map(e, "open directory", not_directory)),
            }
            let parent_rel = if i == 1 {
                ".".to_string()
            } else {
                comps[..i - 1].join("/")
            };
            let parent = self
                .open_dir_path(&parent_rel)
                .map_err(|e| map(e, "open directory", not_directory))?;
            match mkdirat(&parent, comps[i - 1], Mode::from_raw_mode(0o755)) {
                Ok(()) => created = true,
                Err(Errno::EXIST) => {
                    // Lost a race, or a dangling symlink / file sits there.
                    match self.open_dir_path(&prefix) {
                        Ok(_) => created = false,
                        Err(Errno::NOENT) | Err(Errno::NOTDIR) => {
                            return Err(FilesError::NotDirectory)
                        }
                        Err(e) => return Err(map(e, "open directory", not_directory)),
                    }
                }
                Err(e) => return Err(map(e, "create directory", not_directory)),
            }
        }
        Ok(created)
    }

    /// Creates a directory; see [`crate::backend::Vm::mkdir`].
    pub(crate) fn mkdir(&self, path: &SandboxPath, recursive: bool) -> Result<bool, FilesError> {
        if path.is_root() {
            return Ok(false);
        }
        let _creds = self.creds()?;
        if recursive {
            return self.mkdir_all(path);
        }
        let parent = self
            .open_dir_path(relative(&path.parent()))
            .map_err(|e| match e {
                Errno::NOENT => FilesError::ParentNotFound,
                other => map(other, "open directory", not_directory),
            })?;
        match mkdirat(&parent, path.file_name(), Mode::from_raw_mode(0o755)) {
            Ok(()) => Ok(true),
            Err(Errno::EXIST) => match self.open_dir_path(relative(path)) {
                Ok(_) => Ok(false),
                Err(Errno::NOENT) | Err(Errno::NOTDIR) => Err(FilesError::NotDirectory),
                Err(e) => Err(map(e, "open directory", not_directory)),
            },
            Err(e) => Err(map(e, "create directory", not_directory)),
        }
    }

    /// Metadata; a symlink reports its target, or itself (a file) when dangling.
    pub(crate) fn stat(&self, path: &SandboxPath) -> Result<Option<FileStat>, FilesError> {
        let _creds = self.creds()?;
        let rel = relative(path);
        let link = match self.open(rel, OFlags::PATH | OFlags::NOFOLLOW, Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::NOENT) | Err(Errno::NOTDIR) | Err(Errno::LOOP) => return Ok(None),
            Err(e) => return Err(map(e, "stat", not_found)),
        };
        let mut st = fstat(&link).map_err(|e| map(e, "stat", not_found))?;
        if FileType::from_raw_mode(st.st_mode) == FileType::Symlink {
            if let Ok(target) = self.open(rel, OFlags::PATH, Mode::empty()) {
                st = fstat(&target).map_err(|e| map(e, "stat", not_found))?;
            }
        }
        Ok(Some(to_stat(&st)))
    }

    /// Directory entries; see [`crate::backend::Vm::list_dir`].
    pub(crate) fn list_dir(
        &self,
        path: &SandboxPath,
        recursive: bool,
    ) -> Result<Vec<FileEntry>, FilesError> {
        let _creds = self.creds()?;
        let dir = self
            .open(
                relative(path),
                OFlags::RDONLY | OFlags::DIRECTORY,
                Mode::empty(),
            )
            .map_err(|e| map(e, "open directory", not_directory))?;
        let mut out = Vec::new();
        self.walk(&dir, path, recursive, 0, &mut out)?;
        Ok(out)
    }

    /// Records one entry, refusing to grow a listing past [`MAX_LIST_ENTRIES`] (a recursive
    /// walk of a large tree must not tie up the worker).
    fn push_entry(out: &mut Vec<FileEntry>, entry: FileEntry) -> Result<(), FilesError> {
        if out.len() >= MAX_LIST_ENTRIES {
            return Err(FilesError::TooManyEntries);
        }
        out.push(entry);
        Ok(())
    }

    fn walk(
        &self,
        dir: &OwnedFd,
        base: &SandboxPath,
        recursive: bool,
        depth: usize,
        out: &mut Vec<FileEntry>,
    ) -> Result<(), FilesError> {
        let entries = Dir::read_from(dir).map_err(|e| map(e, "read directory", not_directory))?;
        for entry in entries {
            let entry = entry.map_err(|e| map(e, "read directory", not_directory))?;
            let raw = entry.file_name().to_bytes();
            if raw == b"." || raw == b".." {
                continue;
            }
            let name = String::from_utf8_lossy(raw).into_owned();
            let st = match statat(dir, entry.file_name(), AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) => st,
                // Removed while we list.
                Err(Errno::NOENT) => continue,
                Err(e) => return Err(map(e, "stat entry", not_found)),
            };
            let child = base.join(&name);
            if is_dir(&st) {
                Self::push_entry(
                    out,
                    FileEntry {
                        path: child.clone(),
                        kind: FileKind::Directory,
                        size: 0,
                    },
                )?;
                if recursive && depth < MAX_DEPTH {
                    let sub = openat(
                        dir,
                        entry.file_name(),
                        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                        Mode::empty(),
                    );
                    match sub {
                        Ok(sub) => self.walk(&sub, &child, recursive, depth + 1, out)?,
                        // Replaced or unreadable meanwhile: list it, skip its content.
                        Err(_) => continue,
                    }
                }
                continue;
            }
            let mut shown = st;
            if FileType::from_raw_mode(st.st_mode) == FileType::Symlink {
                if let Ok(target) = self.open(relative(&child), OFlags::PATH, Mode::empty()) {
                    if let Ok(target_st) = fstat(&target) {
                        shown = target_st;
                    }
                }
            }
            let stat = to_stat(&shown);
            Self::push_entry(
                out,
                FileEntry {
                    path: child,
                    kind: stat.kind,
                    size: stat.size,
                },
            )?;
        }
        Ok(())
    }

    /// Removes a path; see [`crate::backend::Vm::remove`]. A symlink is removed itself.
    pub(crate) fn remove(&self, path: &SandboxPath, recursive: bool) -> Result<(), FilesError> {
        if path.is_root() {
            return Err(FilesError::PermissionDenied);
        }
        let _creds = self.creds()?;
        let parent = self
            .open_dir_path(relative(&path.parent()))
            .map_err(|e| map(e, "open directory", not_found))?;
        let name = path.file_name();
        let st = statat(&parent, name, AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| map(e, "stat", not_found))?;
        if !is_dir(&st) {
            return unlinkat(&parent, name, AtFlags::empty())
                .map_err(|e| map(e, "remove", not_found));
        }
        if recursive {
            let name = CString::new(name).map_err(|_| FilesError::NotFound)?;
            remove_tree(parent.as_fd(), &name, 0)
        } else {
            unlinkat(&parent, name, AtFlags::REMOVEDIR).map_err(|e| map(e, "remove", not_found))
        }
    }
}

/// Removes the directory `name` below `parent` and everything in it, never following links.
pub(crate) fn remove_tree(
    parent: BorrowedFd<'_>,
    name: &CStr,
    depth: usize,
) -> Result<(), FilesError> {
    if depth > MAX_DEPTH {
        return Err(FilesError::Io {
            op: "remove".to_string(),
            source: std::io::Error::other("directory tree too deep"),
        });
    }
    let dir = openat(
        parent,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| map(e, "open directory", not_found))?;
    let mut names: Vec<CString> = Vec::new();
    for entry in Dir::read_from(&dir).map_err(|e| map(e, "read directory", not_found))? {
        let entry = entry.map_err(|e| map(e, "read directory", not_found))?;
        let raw = entry.file_name().to_bytes();
        if raw != b"." && raw != b".." {
            names.push(entry.file_name().to_owned());
        }
    }
    for child in names {
        let st = match statat(&dir, child.as_c_str(), AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(Errno::NOENT) => continue,
            Err(e) => return Err(map(e, "stat", not_found)),
        };
        if is_dir(&st) {
            remove_tree(dir.as_fd(), &child, depth + 1)?;
        } else {
            match unlinkat(&dir, child.as_c_str(), AtFlags::empty()) {
                Ok(()) | Err(Errno::NOENT) => {}
                Err(e) => return Err(map(e, "remove", not_found)),
            }
        }
    }
    match unlinkat(parent, name, AtFlags::REMOVEDIR) {
        Ok(()) | Err(Errno::NOENT) => Ok(()),
        Err(e) => Err(map(e, "remove", not_found)),
    }
}

fn to_stat(st: &Stat) -> FileStat {
    if is_dir(st) {
        FileStat {
            kind: FileKind::Directory,
            size: 0,
            modified_at: mtime(st),
        }
    } else {
        FileStat {
            kind: FileKind::File,
            size: st.st_size.max(0) as u64,
            modified_at: mtime(st),
        }
    }
}
