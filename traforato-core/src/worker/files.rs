//! The files API over the sandbox's real filesystem (through the [`crate::backend::Vm`] file
//! methods): write, read, open, stat, list, mkdir, remove, with the contract's validation
//! order and messages.

use std::collections::BTreeMap;

use base64::Engine as _;
use tokio::io::AsyncReadExt;

use super::{ListQuery, Worker, WorkerError};
use crate::api::{
    parse_query_bool, ListEntry, ListResponse, MkdirRequest, MkdirResponse, ReadFileResponse,
    StatResponse, WriteFileJson, WriteFileResponse,
};
use crate::auth::Principal;
use crate::backend::{BackendError, BoxedReader, FileKind, FileReader, FilesError, WriteMode};
use crate::path::SandboxPath;

/// Largest file a JSON read returns (raw downloads have no cap).
pub(super) const MAX_JSON_READ_BYTES: u64 = 10 * 1024 * 1024;
/// Entries per list page when the query names no limit.
pub(super) const DEFAULT_LIST_LIMIT: usize = 1000;

/// Decodes the JSON form of a write (`PUT .../files` with a JSON content type) into the
/// bytes to write and the append flag. The encoding is trimmed and lowercased and defaults
/// to `base64` (standard alphabet with padding; CR and LF are ignored); `utf8` and `utf-8`
/// take the content as is.
pub fn decode_write_json(body: &WriteFileJson) -> Result<(Vec<u8>, bool), WorkerError> {
    let content = decode_encoded(&body.content, &body.encoding, "base64")?;
    Ok((content, body.append))
}

/// Decodes `data` in `encoding` (trimmed, any case; empty means `default`): `utf8` and
/// `utf-8` take it as is, `base64` decodes it (standard alphabet with padding; CR and LF are
/// ignored). The one decoder of the API's `encoding` fields.
pub(super) fn decode_encoded(
    data: &str,
    encoding: &str,
    default: &str,
) -> Result<Vec<u8>, WorkerError> {
    let encoding = encoding.trim().to_ascii_lowercase();
    let encoding = if encoding.is_empty() {
        default
    } else {
        &encoding
    };
    match encoding {
        "base64" => {
            let cleaned: Vec<u8> = data
                .bytes()
                .filter(|b| *b != b'\r' && *b != b'\n')
                .collect();
            base64::engine::general_purpose::STANDARD
                .decode(cleaned)
                .map_err(|_| WorkerError::InvalidBase64)
        }
        "utf8" | "utf-8" => Ok(data.as_bytes().to_vec()),
        _ => Err(WorkerError::InvalidEncoding),
    }
}

fn parse_path(raw: Option<&str>) -> Result<SandboxPath, WorkerError> {
    SandboxPath::parse(raw.unwrap_or("")).map_err(WorkerError::InvalidPath)
}

/// The read encoding: `utf8` (default, `utf-8` accepted) or `base64`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Encoding {
    Utf8,
    Base64,
}

fn parse_encoding(raw: Option<&str>) -> Result<Encoding, WorkerError> {
    match raw.unwrap_or("").trim().to_ascii_lowercase().as_str() {
        "" | "utf8" | "utf-8" => Ok(Encoding::Utf8),
        "base64" => Ok(Encoding::Base64),
        _ => Err(WorkerError::InvalidEncoding),
    }
}

fn parse_limit(raw: Option<&str>) -> Result<usize, WorkerError> {
    let raw = raw.unwrap_or("").trim();
    if raw.is_empty() {
        return Ok(DEFAULT_LIST_LIMIT);
    }
    match raw.parse::<i64>() {
        Ok(n) if n > 0 => Ok(usize::try_from(n).unwrap_or(usize::MAX)),
        _ => Err(WorkerError::InvalidLimit),
    }
}

fn parse_list_cursor(raw: Option<&str>) -> Result<usize, WorkerError> {
    let raw = raw.unwrap_or("").trim();
    if raw.is_empty() {
        return Ok(0);
    }
    match raw.parse::<i64>() {
        Ok(n) if n >= 0 => Ok(usize::try_from(n).unwrap_or(usize::MAX)),
        _ => Err(WorkerError::InvalidCursor),
    }
}

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
        raw_id: &str,
        path: Option<&str>,
        content: BoxedReader,
        append: bool,
    ) -> Result<WriteFileResponse, WorkerError> {
        let id = self.parse_id(raw_id)?;
        let path = parse_path(path)?;
        let sandbox = self.sandbox(principal, &id)?;
        if path.is_root() {
            return Err(WorkerError::PathIsDirectory);
        }
        let mode = if append {
            WriteMode::Append
        } else {
            WriteMode::Replace
        };
        let written = sandbox
            .vm
            .write_file(&path, content, mode)
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
        raw_id: &str,
        path: Option<&str>,
        encoding: Option<&str>,
    ) -> Result<ReadFileResponse, WorkerError> {
        let id = self.parse_id(raw_id)?;
        let path = parse_path(path)?;
        let encoding = parse_encoding(encoding)?;
        let sandbox = self.sandbox(principal, &id)?;
        let reader = sandbox.vm.read_file(&path).await.map_err(read_error)?;
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
        let (encoding, content) = match encoding {
            Encoding::Utf8 => ("utf8", String::from_utf8_lossy(&bytes).into_owned()),
            Encoding::Base64 => (
                "base64",
                base64::engine::general_purpose::STANDARD.encode(&bytes),
            ),
        };
        Ok(ReadFileResponse {
            sandbox_id: sandbox.id.to_string(),
            path: path.to_string(),
            kind: "file".to_string(),
            encoding: encoding.to_string(),
            content,
            bytes: bytes.len() as u64,
        })
    }

    pub(super) async fn files_open(
        &self,
        principal: &Principal,
        raw_id: &str,
        path: Option<&str>,
    ) -> Result<FileReader, WorkerError> {
        let id = self.parse_id(raw_id)?;
        let path = parse_path(path)?;
        let sandbox = self.sandbox(principal, &id)?;
        sandbox.vm.read_file(&path).await.map_err(read_error)
    }

    pub(super) async fn files_stat(
        &self,
        principal: &Principal,
        raw_id: &str,
        path: Option<&str>,
    ) -> Result<StatResponse, WorkerError> {
        let id = self.parse_id(raw_id)?;
        let path = parse_path(path)?;
        let sandbox = self.sandbox(principal, &id)?;
        let stat = match sandbox.vm.stat(&path).await {
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
        raw_id: &str,
        query: ListQuery<'_>,
    ) -> Result<ListResponse, WorkerError> {
        let id = self.parse_id(raw_id)?;
        let path = parse_path(query.path)?;
        let recursive = parse_query_bool(query.recursive).ok_or(WorkerError::InvalidRecursive)?;
        let limit = parse_limit(query.limit)?;
        let cursor = parse_list_cursor(query.cursor)?;
        let sandbox = self.sandbox(principal, &id)?;
        let listed = match sandbox.vm.list_dir(&path, recursive).await {
            Ok(entries) => entries,
            Err(FilesError::NotFound | FilesError::NotDirectory | FilesError::IsDirectory) => {
                return Err(WorkerError::DirectoryNotFound)
            }
            Err(other) => return Err(common(other)),
        };
        // Deduplicated by path and sorted in byte order (a BTreeMap of paths does both).
        let entries: BTreeMap<String, ListEntry> = listed
            .into_iter()
            .filter(|e| e.path != path && e.path.starts_with(&path))
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
        raw_id: &str,
        request: MkdirRequest,
    ) -> Result<MkdirResponse, WorkerError> {
        let id = self.parse_id(raw_id)?;
        let path = parse_path(Some(&request.path))?;
        // Looked up even for `/`: existence and ownership always apply.
        let sandbox = self.sandbox(principal, &id)?;
        let created = if path.is_root() {
            false
        } else {
            sandbox
                .vm
                .mkdir(&path, request.recursive)
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
        raw_id: &str,
        path: Option<&str>,
        recursive: Option<&str>,
        force: Option<&str>,
    ) -> Result<(), WorkerError> {
        let id = self.parse_id(raw_id)?;
        let path = parse_path(path)?;
        if path.is_root() {
            return Err(WorkerError::CannotRemoveRoot);
        }
        let recursive = parse_query_bool(recursive).ok_or(WorkerError::InvalidRecursive)?;
        let force = parse_query_bool(force).ok_or(WorkerError::InvalidForce)?;
        let sandbox = self.sandbox(principal, &id)?;
        match sandbox.vm.remove(&path, recursive).await {
            Ok(()) => Ok(()),
            Err(FilesError::NotFound | FilesError::NotDirectory) if force => Ok(()),
            Err(FilesError::NotFound | FilesError::NotDirectory) => Err(WorkerError::PathNotFound),
            Err(other) => Err(common(other)),
        }
    }
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn write_json_decoding() {
        let body = |content: &str, encoding: &str| WriteFileJson {
            content: content.into(),
            encoding: encoding.into(),
            append: false,
        };
        assert_eq!(decode_write_json(&body("SGk=", "")).unwrap().0, b"Hi");
        assert_eq!(
            decode_write_json(&body("SG\r\nk=", " BASE64 ")).unwrap().0,
            b"Hi"
        );
        assert_eq!(
            decode_write_json(&body("Hé", "utf-8")).unwrap().0,
            "Hé".as_bytes()
        );
        assert!(matches!(
            decode_write_json(&body("!!", "base64")),
            Err(WorkerError::InvalidBase64)
        ));
        assert!(matches!(
            decode_write_json(&body("x", "latin1")),
            Err(WorkerError::InvalidEncoding)
        ));
    }

    #[test]
    fn query_parsing() {
        assert_eq!(parse_encoding(None).unwrap(), Encoding::Utf8);
        assert_eq!(parse_encoding(Some(" UTF-8 ")).unwrap(), Encoding::Utf8);
        assert_eq!(parse_encoding(Some("base64")).unwrap(), Encoding::Base64);
        assert!(parse_encoding(Some("hex")).is_err());
        assert_eq!(parse_limit(None).unwrap(), DEFAULT_LIST_LIMIT);
        assert_eq!(parse_limit(Some(" 5 ")).unwrap(), 5);
        assert!(matches!(
            parse_limit(Some("0")),
            Err(WorkerError::InvalidLimit)
        ));
        assert!(matches!(
            parse_limit(Some("99999999999999999999")),
            Err(WorkerError::InvalidLimit)
        ));
        assert_eq!(parse_list_cursor(Some("0")).unwrap(), 0);
        assert_eq!(
            parse_list_cursor(Some("9223372036854775807")).unwrap(),
            usize::try_from(i64::MAX).unwrap_or(usize::MAX)
        );
        assert!(matches!(
            parse_list_cursor(Some("-1")),
            Err(WorkerError::InvalidCursor)
        ));
    }
}
