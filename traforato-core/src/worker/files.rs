//! The files API over the sandbox's real filesystem (through the [`crate::backend::Vm`] file
//! methods): write, read, open, stat, list, mkdir, remove, with the contract's validation
//! order and messages.

use std::collections::BTreeMap;

use tokio::io::AsyncReadExt;

use super::{ListOptions, RemoveOptions, Worker, WorkerError};
use crate::api::{
    Encoding, ListEntry, ListResponse, MkdirResponse, ReadFileResponse, StatResponse,
    WriteFileResponse,
};
use crate::auth::Principal;
use crate::backend::{BackendError, BoxedReader, FileKind, FileReader, FilesError, WriteMode};
use crate::id::SandboxId;
use crate::path::SandboxPath;

/// Largest file a JSON read returns (raw downloads have no cap).
pub const MAX_JSON_READ_BYTES: u64 = 10 * 1024 * 1024;
/// Entries per list page when the request names no limit.
pub const DEFAULT_LIST_LIMIT: usize = 1000;

/// Errors every file operation maps the same way.
fn common(error: FilesError) -> WorkerError {
    match error {
        FilesError::Gone => WorkerError::SandboxNotFound,
        FilesError::PermissionDenied => WorkerError::PermissionDenied,
        FilesError::TooLarge => WorkerError::FileTooLarge,
        FilesError::TooManyEntries => WorkerError::ListingTooLarge,
        FilesError::IsDirectory => WorkerError::PathIsDirectory,
        FilesError::NotDirectory => WorkerError::PathIsFile,
        FilesError::NotEmpty => WorkerError::DirectoryNotEmpty,
        FilesError::ParentNotFound => WorkerError::ParentNotFound,
        FilesError::NotFound => WorkerError::PathNotFound,
        FilesError::Io { op, source } => WorkerError::Backend(BackendError::io(op, source)),
    }
}

fn read_error(error: FilesError) -> WorkerError {
    match error {
        FilesError::NotFound | FilesError::IsDirectory | FilesError::NotDirectory => {
            WorkerError::FileNotFound
        }
        other => common(other),
    }
}

impl Worker {
    pub(super) async fn files_write(
        &self,
        principal: &Principal,
        id: &SandboxId,
        path: &SandboxPath,
        content: BoxedReader,
        mode: WriteMode,
    ) -> Result<WriteFileResponse, WorkerError> {
        let sandbox = self.sandbox(principal, id)?;
        if path.is_root() {
            return Err(WorkerError::PathIsDirectory);
        }
        let written = sandbox
            .vm
            .write_file(path, content, mode)
            .await
            .map_err(common)?;
        Ok(WriteFileResponse {
            sandbox_id: sandbox.id.to_string(),
            path: path.to_string(),
            bytes_written: written,
            bytes: written,
        })
    }

    pub(super) async fn files_read(
        &self,
        principal: &Principal,
        id: &SandboxId,
        path: &SandboxPath,
        encoding: Encoding,
    ) -> Result<ReadFileResponse, WorkerError> {
        let sandbox = self.sandbox(principal, id)?;
        let reader = sandbox.vm.read_file(path).await.map_err(read_error)?;
        if reader.size > MAX_JSON_READ_BYTES {
            return Err(WorkerError::FileTooLarge);
        }
        let mut bytes = Vec::with_capacity(reader.size as usize);
        // The file may grow after it was opened: read one byte past the cap to notice.
        reader
            .body
            .take(MAX_JSON_READ_BYTES + 1)
            .read_to_end(&mut bytes)
            .await
            .map_err(|e| WorkerError::Backend(BackendError::io("read file", e)))?;
        if bytes.len() as u64 > MAX_JSON_READ_BYTES {
            return Err(WorkerError::FileTooLarge);
        }
        Ok(ReadFileResponse {
            sandbox_id: sandbox.id.to_string(),
            path: path.to_string(),
            kind: "file".to_string(),
            encoding: encoding.as_str().to_string(),
            content: encoding.encode(&bytes),
            bytes: bytes.len() as u64,
        })
    }

    pub(super) async fn files_open(
        &self,
        principal: &Principal,
        id: &SandboxId,
        path: &SandboxPath,
    ) -> Result<FileReader, WorkerError> {
        let sandbox = self.sandbox(principal, id)?;
        sandbox.vm.read_file(path).await.map_err(read_error)
    }

    pub(super) async fn files_stat(
        &self,
        principal: &Principal,
        id: &SandboxId,
        path: &SandboxPath,
    ) -> Result<StatResponse, WorkerError> {
        let sandbox = self.sandbox(principal, id)?;
        let stat = match sandbox.vm.stat(path).await {
            Ok(stat) => stat,
            // A file among the ancestors: nothing can exist there.
            Err(FilesError::NotFound | FilesError::NotDirectory) => None,
            Err(other) => return Err(common(other)),
        };
        let mut response = StatResponse {
            sandbox_id: sandbox.id.to_string(),
            path: path.to_string(),
            exists: stat.is_some(),
            kind: None,
            size: None,
            modified_at: None,
        };
        if let Some(stat) = stat {
            response.kind = Some(stat.kind.as_str().to_string());
            response.size = Some(match stat.kind {
                FileKind::File => stat.size,
                FileKind::Directory => 0,
            });
            response.modified_at = Some(stat.modified_at);
        }
        Ok(response)
    }

    pub(super) async fn files_list(
        &self,
        principal: &Principal,
        id: &SandboxId,
        path: &SandboxPath,
        options: ListOptions,
    ) -> Result<ListResponse, WorkerError> {
        let ListOptions {
            recursive,
            limit,
            cursor,
        } = options;
        if limit == 0 {
            return Err(WorkerError::InvalidLimit);
        }
        let sandbox = self.sandbox(principal, id)?;
        let listed = match sandbox.vm.list_dir(path, recursive).await {
            Ok(entries) => entries,
            Err(FilesError::NotFound | FilesError::NotDirectory | FilesError::IsDirectory) => {
                return Err(WorkerError::DirectoryNotFound)
            }
            Err(other) => return Err(common(other)),
        };
        // Deduplicated by path and sorted in byte order (a BTreeMap of paths does both).
        let entries: BTreeMap<String, ListEntry> = listed
            .into_iter()
            .filter(|e| e.path != *path && e.path.starts_with(path))
            .map(|e| {
                let entry = ListEntry {
                    name: e.path.file_name().to_string(),
                    path: e.path.to_string(),
                    kind: e.kind.as_str().to_string(),
                    size: (e.kind == FileKind::File).then_some(e.size),
                };
                (entry.path.clone(), entry)
            })
            .collect();
        let count = entries.len();
        let start = cursor.min(count);
        let end = start.saturating_add(limit).min(count);
        let page: Vec<ListEntry> = entries
            .into_values()
            .skip(start)
            .take(end - start)
            .collect();
        Ok(ListResponse {
            sandbox_id: sandbox.id.to_string(),
            path: path.to_string(),
            entries: page,
            next_cursor: (end < count).then(|| end.to_string()),
        })
    }

    pub(super) async fn files_mkdir(
        &self,
        principal: &Principal,
        id: &SandboxId,
        path: &SandboxPath,
        recursive: bool,
    ) -> Result<MkdirResponse, WorkerError> {
        // Looked up even for `/`: existence and ownership always apply.
        let sandbox = self.sandbox(principal, id)?;
        let created = if path.is_root() {
            false
        } else {
            sandbox
                .vm
                .mkdir(path, recursive)
                .await
                .map_err(|e| match e {
                    FilesError::NotFound => WorkerError::ParentNotFound,
                    other => common(other),
                })?
        };
        Ok(MkdirResponse {
            sandbox_id: sandbox.id.to_string(),
            path: path.to_string(),
            created,
        })
    }

    pub(super) async fn files_remove(
        &self,
        principal: &Principal,
        id: &SandboxId,
        path: &SandboxPath,
        options: RemoveOptions,
    ) -> Result<(), WorkerError> {
        if path.is_root() {
            return Err(WorkerError::CannotRemoveRoot);
        }
        let RemoveOptions { recursive, force } = options;
        let sandbox = self.sandbox(principal, id)?;
        match sandbox.vm.remove(path, recursive).await {
            Ok(()) => Ok(()),
            Err(FilesError::NotFound | FilesError::NotDirectory) if force => Ok(()),
            Err(FilesError::NotFound | FilesError::NotDirectory) => Err(WorkerError::PathNotFound),
            Err(other) => Err(common(other)),
        }
    }
}
