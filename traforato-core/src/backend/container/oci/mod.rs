//! OCI images for the `container` backend: references, registry pulls into a verified
//! content-addressed blob store, the safe unpacking of layers into directories that serve as
//! shared overlay lower layers, and the cache ([`OciImages`]) that plugs all of it into the
//! backend as an [`ImageSource`](super::image::ImageSource).

pub mod blobs;
pub mod cache;
mod gc;
pub mod layer;
pub mod pull;
mod records;
pub mod reference;
#[cfg(feature = "test-util")]
pub mod testing;

pub use blobs::{BlobError, BlobStore, BlobWriter};
pub use cache::OciImages;
pub use layer::{unpack, Budget, Compression, Mapping, UnpackError, Unpacked};
pub use pull::{docker_credentials, PullError, PulledImage, Puller, RegistrySettings, RunConfig};
pub use reference::{Digest, Hasher, Reference, ReferenceError};
