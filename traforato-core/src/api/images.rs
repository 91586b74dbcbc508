//! The operator's view of a worker's images: `GET /images`, `POST /images` (pull) and
//! `DELETE /images?ref=` (remove).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// One image a worker holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageInfo {
    /// The normalised reference (`docker.io/library/alpine:3.20`).
    pub reference: String,
    /// The digest of its (platform) manifest.
    pub digest: String,
    /// Bytes on disk: its layers, compressed and unpacked (layers shared with other images
    /// count in each).
    pub size_bytes: u64,
    /// Number of layers.
    pub layers: usize,
    /// When it was pulled.
    #[serde(with = "super::timestamp")]
    pub pulled_at: DateTime<Utc>,
    /// When a sandbox last used it (now, while one does).
    #[serde(with = "super::timestamp")]
    pub last_used: DateTime<Utc>,
    /// Live sandboxes (warm ones included) that use it.
    pub in_use: usize,
}

/// `GET /images`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageList {
    /// Every image held, most recently used first.
    pub images: Vec<ImageInfo>,
    /// Bytes the image directory holds (each shared layer once).
    pub disk_bytes: u64,
    /// The configured limit (`images.max-disk`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_disk_bytes: Option<u64>,
}

/// `POST /images`: pull (or refresh) an image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PullImage {
    /// The reference to pull.
    pub image: String,
}

/// `DELETE /images?ref=`: what was removed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemovedImage {
    /// The normalised reference.
    pub reference: String,
    /// Bytes freed (layers other images still use stay).
    pub freed_bytes: u64,
}
