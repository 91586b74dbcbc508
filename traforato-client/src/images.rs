//! A worker's images, for operators: list, pull and remove. These calls go to the client's
//! base URL, which must then be a worker's (images live on each worker; the broker does not
//! route them). In prod mode the caller's client id must be one of the worker's
//! `images.operators`.

use std::time::Duration;

use reqwest::Method;

use crate::client::{Client, Req};
use crate::error::ClientError;
use traforato_core::api::{ImageInfo, ImageList, PullImage, RemovedImage};

/// How much longer than the usual timeout a pull may take (the worker's own pull deadline
/// ends it first, with a clear error).
const PULL_EXTRA_TIMEOUT: Duration = Duration::from_secs(30 * 60);

impl Client {
    /// The images the worker holds (`GET /images`), most recently used first.
    pub async fn images(&self) -> Result<ImageList, ClientError> {
        self.send_json(Req::new(Method::GET, self.endpoint(&["images"], &[])))
            .await
    }

    /// Pulls `image` on the worker (`POST /images`), again if it is held (a tag may have
    /// moved), and returns what the worker holds now.
    pub async fn pull_image(&self, image: &str) -> Result<ImageInfo, ClientError> {
        let body = PullImage {
            image: image.to_string(),
        };
        let req = Req::new(Method::POST, self.endpoint(&["images"], &[]))
            .json(&body)
            .extra_timeout(PULL_EXTRA_TIMEOUT);
        self.send_json(req).await
    }

    /// Removes `image` from the worker (`DELETE /images?ref=`); a 409 [`ClientError::Api`]
    /// while a sandbox uses it.
    pub async fn remove_image(&self, image: &str) -> Result<RemovedImage, ClientError> {
        let req = Req::new(
            Method::DELETE,
            self.endpoint(&["images"], &[("ref", image)]),
        );
        self.send_json(req).await
    }
}
