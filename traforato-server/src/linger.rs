//! Lingering close: the request body type of the shells ([`RequestBody`]), which hands a body
//! that a handler left unread (or read only in part) back to the accept loop, so that it is
//! read and discarded before the response is sent.
//!
//! Why: a client that writes its whole body before reading (Python's `http.client` and
//! `requests`, many others) gets `broken pipe` or `connection reset` instead of the answer
//! when the server answers and closes with unread bytes in its receive buffer (the kernel
//! then sends a reset). The broker's `307` is the common case: it never needs the body of a
//! sandbox request. Draining is bounded by [`DRAIN_MAX`] bytes and [`DRAIN_TIMEOUT`]; past
//! either, the answer goes out and the connection closes as before.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::header::{self, HeaderMap};

/// The most of an unread request body that is read and discarded: the largest body a worker
/// accepts (a file upload).
pub const DRAIN_MAX: usize = crate::http::FILE_BODY_MAX;

/// The longest a server waits for an unread request body before it answers anyway.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(3);

/// Where a [`RequestBody`] dropped before its end leaves the rest of the stream.
#[derive(Debug, Clone, Default)]
pub struct Leftover {
    slot: Arc<Mutex<Option<Incoming>>>,
}

impl Leftover {
    /// A request body over `incoming` that returns here when dropped unfinished.
    pub fn wrap(&self, incoming: Incoming) -> RequestBody {
        RequestBody {
            inner: Some(incoming),
            leftover: self.slot.clone(),
        }
    }

    /// The unfinished body, if the handler dropped one.
    pub fn take(&self) -> Option<Incoming> {
        self.slot.lock().map(|mut slot| slot.take()).unwrap_or(None)
    }
}

/// The request body every shell handler gets: hyper's [`Incoming`], which, when dropped before
/// its end, goes back to the accept loop to be drained (see the module docs).
#[derive(Debug)]
pub struct RequestBody {
    inner: Option<Incoming>,
    leftover: Arc<Mutex<Option<Incoming>>>,
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.inner.as_mut() {
            Some(inner) => Pin::new(inner).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map(Body::size_hint)
            .unwrap_or_else(|| SizeHint::with_exact(0))
    }
}

impl Drop for RequestBody {
    fn drop(&mut self) {
        if let Some(inner) = self.inner.take() {
            if !inner.is_end_stream() {
                if let Ok(mut slot) = self.leftover.lock() {
                    *slot = Some(inner);
                }
            }
        }
    }
}

/// Whether a request with these headers should have its unread body drained: not when the
/// client waits for `100 Continue` (it has sent nothing, and polling the body would ask it to
/// send the body to a server that does not want it).
pub fn should_drain(headers: &HeaderMap) -> bool {
    !headers
        .get(header::EXPECT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("100-continue"))
}

/// How a drain ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drained {
    /// The body was read to its end.
    Complete,
    /// More than `max` bytes: the rest is left (the connection will close).
    TooLarge,
    /// The deadline passed first.
    TimedOut,
    /// The connection failed while reading.
    Failed,
}

/// Reads and discards `body` up to `max` bytes, for at most `timeout`.
pub async fn drain<B>(mut body: B, max: usize, timeout: Duration) -> Drained
where
    B: Body + Unpin,
{
    let read = async {
        let mut seen = 0usize;
        loop {
            match body.frame().await {
                None => return Drained::Complete,
                Some(Err(_)) => return Drained::Failed,
                Some(Ok(frame)) => {
                    if let Some(data) = frame.data_ref() {
                        seen = seen.saturating_add(bytes::Buf::remaining(data));
                        if seen > max {
                            return Drained::TooLarge;
                        }
                    }
                }
            }
        }
    };
    tokio::time::timeout(timeout, read)
        .await
        .unwrap_or(Drained::TimedOut)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{Full, StreamBody};

    #[tokio::test]
    async fn drains_bounded_bodies() {
        let body = Full::new(Bytes::from(vec![7u8; 1000]));
        assert_eq!(
            drain(body, 1000, Duration::from_secs(1)).await,
            Drained::Complete
        );
        let body = Full::new(Bytes::from(vec![7u8; 1001]));
        assert_eq!(
            drain(body, 1000, Duration::from_secs(1)).await,
            Drained::TooLarge
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_body_times_out() {
        let stalled = StreamBody::new(futures::stream::pending::<
            Result<Frame<Bytes>, std::convert::Infallible>,
        >());
        assert_eq!(
            drain(stalled, 10, Duration::from_secs(3)).await,
            Drained::TimedOut
        );
    }

    #[test]
    fn expect_continue_is_not_drained() {
        let mut headers = HeaderMap::new();
        assert!(should_drain(&headers));
        headers.insert(header::EXPECT, "100-Continue".parse().unwrap());
        assert!(!should_drain(&headers));
    }
}
