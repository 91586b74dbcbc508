//! OCI images for the `container` backend: references, the content-addressed blob store, and
//! the safe unpacking of layers into directories that serve as shared overlay lower layers.
//! (Pulling from registries and the image cache that plugs into
//! [`ImageSource`](super::image::ImageSource) build on these.)

pub mod blobs;
pub mod layer;
pub mod reference;

pub use blobs::{BlobError, BlobStore};
pub use layer::{unpack, Compression, Mapping, UnpackError, Unpacked};
pub use reference::{Digest, Hasher, Reference, ReferenceError};
