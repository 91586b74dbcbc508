//! A sandbox's filesystem: read and write text or bytes, append, stat, list (a paging
//! [`Stream`]), mkdir, remove, and raw streamed downloads.

use std::collections::VecDeque;
use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use base64::Engine;
use bytes::Bytes;
use futures::stream::{BoxStream, Stream, StreamExt};
use reqwest::Method;
use traforato_core::api::{
    ListEntry, ListResponse, MkdirRequest, MkdirResponse, ReadFileResponse, StatResponse,
    WriteFileJson, WriteFileResponse,
};

use crate::client::Req;
use crate::error::ClientError;
use crate::sandbox::Sandbox;

/// Options of [`Files::list_with`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ListOptions {
    /// Everything below the directory, not just its children.
    pub recursive: bool,
    /// Entries fetched per request; `None` means the server's default (1000).
    pub page_size: Option<u32>,
}

/// Options of [`Files::remove_with`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RemoveOptions {
    /// Remove a non-empty directory and everything in it.
    pub recursive: bool,
    /// Succeed when nothing is there.
    pub force: bool,
}

/// The filesystem of one sandbox; get it from [`Sandbox::files`].
///
/// Paths are absolute paths inside the sandbox (`/workspace/a.txt`).
///
/// ```no_run
/// # async fn demo(sandbox: traforato_client::Sandbox) -> Result<(), traforato_client::ClientError> {
/// use futures::TryStreamExt;
///
/// let files = sandbox.files();
/// files.mkdir_all("/workspace/src").await?;
/// files.write_text("/workspace/src/main.py", "print('hi')\n").await?;
/// files.append("/workspace/src/main.py", b"print('bye')\n").await?;
/// let text = files.read_text("/workspace/src/main.py").await?;
/// let entries: Vec<_> = files.list("/workspace").try_collect().await?;
/// for e in entries {
///     println!("{} {}", e.kind, e.path);
/// }
/// # let _ = text;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Files {
    sandbox: Sandbox,
}

impl Files {
    pub(crate) fn new(sandbox: Sandbox) -> Self {
        Files { sandbox }
    }

    fn url(&self, leaf: Option<&str>, query: &[(&str, &str)]) -> url::Url {
        match leaf {
            Some(l) => self.sandbox.url(&["files", l], query),
            None => self.sandbox.url(&["files"], query),
        }
    }

    /// Writes `content` to `path`, replacing the file; missing parent directories are
    /// created.
    pub async fn write(
        &self,
        path: &str,
        content: impl Into<Bytes>,
    ) -> Result<WriteFileResponse, ClientError> {
        let req = Req::new(Method::PUT, self.url(None, &[("path", path)]))
            .bytes(content.into(), "application/octet-stream");
        self.sandbox.client().send_json(req).await
    }

    /// Writes text to `path`, replacing the file.
    pub async fn write_text(
        &self,
        path: &str,
        text: impl Into<String>,
    ) -> Result<WriteFileResponse, ClientError> {
        self.write(path, Bytes::from(text.into())).await
    }

    /// Appends `content` to `path`, creating the file if needed.
    pub async fn append(
        &self,
        path: &str,
        content: impl AsRef<[u8]>,
    ) -> Result<WriteFileResponse, ClientError> {
        let body = WriteFileJson {
            content: base64::engine::general_purpose::STANDARD.encode(content.as_ref()),
            encoding: "base64".into(),
            append: true,
        };
        let req = Req::new(Method::PUT, self.url(None, &[("path", path)])).json(&body);
        self.sandbox.client().send_json(req).await
    }

    /// Reads a whole file as bytes.
    pub async fn read(&self, path: &str) -> Result<Vec<u8>, ClientError> {
        let req = Req::new(
            Method::GET,
            self.url(None, &[("path", path), ("encoding", "base64")]),
        );
        let resp: ReadFileResponse = self.sandbox.client().send_json(req.clone()).await?;
        base64::engine::general_purpose::STANDARD
            .decode(resp.content.as_bytes())
            .map_err(|e| ClientError::Decode {
                url: req.url.to_string(),
                message: format!("invalid base64 content: {e}"),
            })
    }

    /// Reads a whole file as text (invalid UTF-8 becomes U+FFFD).
    pub async fn read_text(&self, path: &str) -> Result<String, ClientError> {
        let req = Req::new(
            Method::GET,
            self.url(None, &[("path", path), ("encoding", "utf8")]),
        );
        let resp: ReadFileResponse = self.sandbox.client().send_json(req).await?;
        Ok(resp.content)
    }

    /// Streams a file's raw bytes (`GET /files/raw`), for files too big to hold in memory.
    pub async fn download(&self, path: &str) -> Result<ByteStream, ClientError> {
        let req = Req::new(Method::GET, self.url(Some("raw"), &[("path", path)])).streaming();
        let resp = self.sandbox.client().send_ok(req).await?;
        let url = resp.url().to_string();
        let idle = self.sandbox.client().timeout();
        // No bound on the whole transfer, but a stall longer than the request timeout fails.
        let body = resp.bytes_stream().boxed();
        let inner = futures::stream::unfold(Some(body), move |body| {
            let url = url.clone();
            async move {
                let mut body = body?;
                match tokio::time::timeout(idle, body.next()).await {
                    Ok(Some(Ok(chunk))) => Some((Ok(chunk), Some(body))),
                    Ok(Some(Err(e))) => Some((Err(ClientError::from_reqwest(&url, e)), None)),
                    Ok(None) => None,
                    Err(_) => Some((Err(ClientError::Timeout { url }), None)),
                }
            }
        })
        .boxed();
        Ok(ByteStream { inner })
    }

    /// What is at `path`: `exists` is false when nothing is.
    pub async fn stat(&self, path: &str) -> Result<StatResponse, ClientError> {
        let req = Req::new(Method::GET, self.url(Some("stat"), &[("path", path)]));
        self.sandbox.client().send_json(req).await
    }

    /// True when a file or directory exists at `path`.
    pub async fn exists(&self, path: &str) -> Result<bool, ClientError> {
        Ok(self.stat(path).await?.exists)
    }

    /// The children of a directory, sorted by path, fetched page by page as the stream is
    /// read.
    pub fn list(&self, path: &str) -> EntryStream {
        self.list_with(path, ListOptions::default())
    }

    /// Lists a directory with options (recursive, page size).
    pub fn list_with(&self, path: &str, options: ListOptions) -> EntryStream {
        let state = ListState {
            files: self.clone(),
            path: path.to_string(),
            options,
            cursor: None,
            buffer: VecDeque::new(),
            done: false,
        };
        let inner = futures::stream::try_unfold(state, |mut st| async move {
            loop {
                if let Some(entry) = st.buffer.pop_front() {
                    return Ok(Some((entry, st)));
                }
                if st.done {
                    return Ok(None);
                }
                let page = st.fetch().await?;
                st.buffer.extend(page.entries);
                match page.next_cursor {
                    Some(next) if Some(&next) != st.cursor.as_ref() => st.cursor = Some(next),
                    // The last page, or a cursor that did not move (never loop forever).
                    _ => st.done = true,
                }
            }
        })
        .boxed();
        EntryStream { inner }
    }

    /// Creates a directory whose parent exists. Returns false when it already existed.
    pub async fn mkdir(&self, path: &str) -> Result<bool, ClientError> {
        self.mkdir_inner(path, false).await
    }

    /// Creates a directory and any missing parents. Returns false when it already existed.
    pub async fn mkdir_all(&self, path: &str) -> Result<bool, ClientError> {
        self.mkdir_inner(path, true).await
    }

    async fn mkdir_inner(&self, path: &str, recursive: bool) -> Result<bool, ClientError> {
        let body = MkdirRequest {
            path: path.to_string(),
            recursive,
        };
        let req = Req::new(Method::POST, self.url(Some("mkdir"), &[])).json(&body);
        let resp: MkdirResponse = self.sandbox.client().send_json(req).await?;
        Ok(resp.created)
    }

    /// Removes a file or an empty directory.
    pub async fn remove(&self, path: &str) -> Result<(), ClientError> {
        self.remove_with(path, RemoveOptions::default()).await
    }

    /// Removes a file or a directory and everything in it; nothing there is fine too.
    pub async fn remove_all(&self, path: &str) -> Result<(), ClientError> {
        self.remove_with(
            path,
            RemoveOptions {
                recursive: true,
                force: true,
            },
        )
        .await
    }

    /// Removes with options.
    pub async fn remove_with(&self, path: &str, options: RemoveOptions) -> Result<(), ClientError> {
        let req = Req::new(
            Method::DELETE,
            self.url(
                None,
                &[
                    ("path", path),
                    ("recursive", bool_str(options.recursive)),
                    ("force", bool_str(options.force)),
                ],
            ),
        );
        self.sandbox.client().send_empty(req).await
    }
}

fn bool_str(b: bool) -> &'static str {
    if b {
        "true"
    } else {
        "false"
    }
}

struct ListState {
    files: Files,
    path: String,
    options: ListOptions,
    cursor: Option<String>,
    buffer: VecDeque<ListEntry>,
    done: bool,
}

impl ListState {
    async fn fetch(&self) -> Result<ListResponse, ClientError> {
        let limit = self.options.page_size.map(|n| n.max(1).to_string());
        let mut query = vec![
            ("path", self.path.as_str()),
            ("recursive", bool_str(self.options.recursive)),
        ];
        if let Some(limit) = &limit {
            query.push(("limit", limit));
        }
        if let Some(cursor) = &self.cursor {
            query.push(("cursor", cursor));
        }
        let req = Req::new(Method::GET, self.files.url(Some("list"), &query));
        self.files.sandbox.client().send_json(req).await
    }
}

/// Directory entries as a [`Stream`]; see [`Files::list`].
pub struct EntryStream {
    inner: BoxStream<'static, Result<ListEntry, ClientError>>,
}

impl fmt::Debug for EntryStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("EntryStream")
    }
}

impl Stream for EntryStream {
    type Item = Result<ListEntry, ClientError>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.as_mut().poll_next(cx)
    }
}

/// A file's bytes as they arrive; see [`Files::download`].
pub struct ByteStream {
    inner: BoxStream<'static, Result<Bytes, ClientError>>,
}

impl fmt::Debug for ByteStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ByteStream")
    }
}

impl Stream for ByteStream {
    type Item = Result<Bytes, ClientError>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.as_mut().poll_next(cx)
    }
}

#[cfg(test)]
mod tests {
    use futures::TryStreamExt;

    use super::*;
    use crate::testing::{Reply, TestServer};
    use crate::Client;

    #[tokio::test]
    async fn list_pages_through_cursors() {
        let server = TestServer::start(|req| {
            assert_eq!(req.query("limit"), Some("2"));
            assert_eq!(req.query("recursive"), Some("true"));
            let entry = |n: u32| serde_json::json!({"name": format!("f{n}"), "path": format!("/w/f{n}"), "type": "file", "size": n});
            let body = match req.query("cursor") {
                None => serde_json::json!({"sandbox_id":"s","path":"/w","entries":[entry(1), entry(2)],"next_cursor":"2"}),
                Some("2") => serde_json::json!({"sandbox_id":"s","path":"/w","entries":[entry(3)],"next_cursor":null}),
                Some(c) => panic!("cursor {c}"),
            };
            Reply::json(200, &body.to_string())
        })
        .await;
        let files = Client::new(&server.url()).unwrap().sandbox("s").files();
        let entries: Vec<ListEntry> = files
            .list_with(
                "/w",
                ListOptions {
                    recursive: true,
                    page_size: Some(2),
                },
            )
            .try_collect()
            .await
            .unwrap();
        let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["f1", "f2", "f3"]);
        assert_eq!(server.requests().len(), 2);
    }

    #[tokio::test]
    async fn list_errors_surface_in_the_stream() {
        let server =
            TestServer::start(|_| Reply::json(404, r#"{"error":"directory not found"}"#)).await;
        let files = Client::new(&server.url()).unwrap().sandbox("s").files();
        let err = files
            .list("/nope")
            .try_collect::<Vec<_>>()
            .await
            .unwrap_err();
        assert!(err.is_not_found());
    }

    #[tokio::test]
    async fn stalled_downloads_time_out_after_the_data_that_came() {
        let server = TestServer::start(|req| {
            if req.query("path") == Some("/slow-head") {
                Reply::status(200).hang()
            } else {
                Reply::bytes(200, "application/octet-stream", b"abc").stall_after_body(7)
            }
        })
        .await;
        let client = Client::builder(server.url())
            .timeout(std::time::Duration::from_millis(200))
            .build()
            .unwrap();
        let files = client.sandbox("s").files();
        let mut stream = files.download("/stalled").await.unwrap();
        let first = stream.next().await.unwrap().unwrap();
        assert_eq!(&first[..], b"abc");
        let err = stream.next().await.unwrap().unwrap_err();
        assert!(err.is_timeout(), "{err:?}");
        assert!(stream.next().await.is_none());
        let err = files.download("/slow-head").await.unwrap_err();
        assert!(err.is_timeout(), "{err:?}");
    }

    #[tokio::test]
    async fn reads_writes_and_appends_use_the_contract_encodings() {
        let server = TestServer::start(|req| match (req.method.as_str(), req.path()) {
            ("PUT", _) => Reply::json(
                200,
                r#"{"sandbox_id":"s","path":"/a","bytes_written":1,"bytes":1}"#,
            ),
            ("GET", "/sandboxes/s/files") if req.query("encoding") == Some("base64") => Reply::json(
                200,
                r#"{"sandbox_id":"s","path":"/a","type":"file","encoding":"base64","content":"AP8=","bytes":2}"#,
            ),
            ("GET", "/sandboxes/s/files") => Reply::json(
                200,
                r#"{"sandbox_id":"s","path":"/a","type":"file","encoding":"utf8","content":"hi","bytes":2}"#,
            ),
            ("GET", "/sandboxes/s/files/raw") => Reply::bytes(200, "application/octet-stream", b"\x00\xffraw"),
            _ => Reply::status(204),
        })
        .await;
        let files = Client::new(&server.url()).unwrap().sandbox("s").files();
        files.write("/a", vec![0u8, 255]).await.unwrap();
        files.append("/a", b"!").await.unwrap();
        assert_eq!(files.read("/a").await.unwrap(), vec![0u8, 255]);
        assert_eq!(files.read_text("/a").await.unwrap(), "hi");
        let raw: Vec<Bytes> = files
            .download("/a")
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap();
        assert_eq!(raw.concat(), b"\x00\xffraw");
        files.remove_all("/a").await.unwrap();

        let reqs = server.requests();
        assert_eq!(
            reqs[0].header("content-type"),
            Some("application/octet-stream")
        );
        assert_eq!(reqs[0].body, vec![0u8, 255]);
        let append: serde_json::Value = serde_json::from_slice(&reqs[1].body).unwrap();
        assert_eq!(
            append,
            serde_json::json!({"content":"IQ==","encoding":"base64","append":true})
        );
        assert_eq!(reqs[1].header("content-type"), Some("application/json"));
        assert_eq!(reqs[5].method, "DELETE");
        assert_eq!(
            reqs[5].target,
            "/sandboxes/s/files?path=/a&recursive=true&force=true"
        );
    }
}
