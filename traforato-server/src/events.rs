//! Server-Sent Events: an exec's frames streamed as `text/event-stream` (`GET
//! …/exec/{exec_id}/frames` with `Accept: text/event-stream`).
//!
//! Each frame is one event: `id` is the cursor after it (what `cursor=` or `Last-Event-ID`
//! resumes from), `event` its type (`stdout`, `stderr`, `exit`), `data` the frame's JSON as
//! the frames route returns it. The stream ends after the `exit` event. While no frame comes,
//! a comment line every [`KEEP_ALIVE`] keeps proxies from closing the connection.

use std::time::Duration;

use bytes::Bytes;
use futures::stream;
use http_body_util::{BodyExt, StreamBody};
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::StatusCode;
use traforato_core::worker::FrameStream;

use crate::http::{header_str, HttpResponse};

/// The media type of an event stream.
pub const EVENT_STREAM: &str = "text/event-stream";

/// Longest silence on an event stream before a keep-alive comment.
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// True when the request asks for an event stream.
pub fn wants_event_stream(headers: &HeaderMap) -> bool {
    header_str(headers, "accept").is_some_and(|accept| {
        accept
            .split(',')
            .any(|part| part.trim().to_ascii_lowercase().starts_with(EVENT_STREAM))
    })
}

/// The cursor a stream resumes from: the `cursor` query value, else `Last-Event-ID`.
pub fn resume_cursor<'a>(query: Option<&'a str>, headers: &'a HeaderMap) -> Option<&'a str> {
    query.or_else(|| header_str(headers, "last-event-id").map(str::trim))
}

/// The `200` event-stream response of `frames`.
pub fn frame_events(frames: FrameStream) -> HttpResponse {
    let events = stream::unfold(frames, |mut frames| async move {
        let event = match tokio::time::timeout(KEEP_ALIVE, frames.next()).await {
            Ok(Some((frame, cursor))) => encode(&frame, cursor),
            Ok(None) => return None,
            Err(_silence) => Bytes::from_static(b": keep-alive\n\n"),
        };
        Some((
            Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(event)),
            frames,
        ))
    });
    let body = StreamBody::new(events)
        .map_err(|e| match e {})
        .boxed_unsync();
    let mut resp = crate::http::with_content_type(StatusCode::OK, EVENT_STREAM, body);
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}

/// One event; JSON has no raw newline, so `data` is one line.
fn encode(frame: &traforato_core::api::Frame, cursor: u64) -> Bytes {
    let kind = frame.kind.as_str();
    let data = serde_json::to_string(frame).unwrap_or_default();
    Bytes::from(format!("id: {cursor}\nevent: {kind}\ndata: {data}\n\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_header_selects_event_streams() {
        let mut h = HeaderMap::new();
        assert!(!wants_event_stream(&h));
        h.insert("accept", HeaderValue::from_static("application/json"));
        assert!(!wants_event_stream(&h));
        h.insert(
            "accept",
            HeaderValue::from_static("application/json, Text/Event-Stream;q=0.9"),
        );
        assert!(wants_event_stream(&h));
    }

    #[test]
    fn the_query_cursor_wins_over_last_event_id() {
        let mut h = HeaderMap::new();
        assert_eq!(resume_cursor(None, &h), None);
        h.insert("last-event-id", HeaderValue::from_static(" 4 "));
        assert_eq!(resume_cursor(None, &h), Some("4"));
        assert_eq!(resume_cursor(Some("2"), &h), Some("2"));
    }

    #[test]
    fn events_carry_cursor_type_and_json() {
        let frame = traforato_core::api::Frame {
            kind: traforato_core::api::FrameKind::Stdout,
            data: "a\nb".into(),
            ts: chrono::DateTime::from_timestamp(0, 0).unwrap(),
        };
        let event = String::from_utf8(encode(&frame, 3).to_vec()).unwrap();
        assert!(event
            .starts_with("id: 3\nevent: stdout\ndata: {\"type\":\"stdout\",\"data\":\"a\\nb\""));
        assert!(event.ends_with("}\n\n"));
        assert_eq!(event.matches('\n').count(), 4);
    }
}
