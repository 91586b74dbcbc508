//! Files API bodies.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// JSON form of `PUT /sandboxes/{id}/files?path=P` (when the content type is JSON).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct WriteFileJson {
    /// The content, in `encoding`.
    pub content: String,
    /// `base64` (default), `utf8` or `utf-8`.
    pub encoding: String,
    /// Append instead of replacing.
    pub append: bool,
}

/// `200` from a write.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteFileResponse {
    /// Sandbox.
    pub sandbox_id: String,
    /// Normalised path.
    pub path: String,
    /// Bytes written by this request.
    pub bytes_written: u64,
    /// Same as `bytes_written`.
    pub bytes: u64,
}

/// `200` from `GET /sandboxes/{id}/files?path=P[&encoding=]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadFileResponse {
    /// Sandbox.
    pub sandbox_id: String,
    /// Normalised path.
    pub path: String,
    /// `file`.
    #[serde(rename = "type")]
    pub kind: String,
    /// `utf8` or `base64`.
    pub encoding: String,
    /// The content in that encoding.
    pub content: String,
    /// File size in bytes.
    pub bytes: u64,
}

/// `200` from `GET /sandboxes/{id}/files/stat?path=P`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatResponse {
    /// Sandbox.
    pub sandbox_id: String,
    /// Normalised path.
    pub path: String,
    /// Whether anything exists there.
    pub exists: bool,
    /// `file` or `directory`, when it exists.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Size in bytes (0 for directories), when it exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// Modification time, when it exists.
    #[serde(
        default,
        with = "super::timestamp::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub modified_at: Option<DateTime<Utc>>,
}

/// One entry of a directory listing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListEntry {
    /// Last path element.
    pub name: String,
    /// Absolute path.
    pub path: String,
    /// `file` or `directory`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Size, for files only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
}

/// `200` from `GET /sandboxes/{id}/files/list`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListResponse {
    /// Sandbox.
    pub sandbox_id: String,
    /// Normalised path.
    pub path: String,
    /// This page, sorted by path.
    pub entries: Vec<ListEntry>,
    /// Cursor of the next page as a decimal string, or null on the last page.
    pub next_cursor: Option<String>,
}

/// `POST /sandboxes/{id}/files/mkdir`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct MkdirRequest {
    /// Absolute path.
    pub path: String,
    /// Create missing parents.
    pub recursive: bool,
}

/// `200` from mkdir.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MkdirResponse {
    /// Sandbox.
    pub sandbox_id: String,
    /// Normalised path.
    pub path: String,
    /// False when the directory already existed.
    pub created: bool,
}
