//! HTTP helpers shared by the shells: JSON, text and error responses, size-capped body
//! reading, lenient JSON decoding, query and path parsing, request ids and W3C trace context.

use std::error::Error as StdError;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full, LengthLimitError, Limited};
use hyper::body::Frame;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Response, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::{AsyncRead, ReadBuf};
use traforato_core::api::ErrorBody;
use traforato_core::backend::BoxedReader;
use traforato_core::telemetry::TraceContext;

/// Any error a body may carry.
pub type BoxError = Box<dyn StdError + Send + Sync>;

/// The body type of every response the shells produce.
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

/// A response of the shells.
pub type HttpResponse = Response<Body>;

/// Cap of create bodies (broker and worker).
pub const CREATE_BODY_MAX: usize = 1 << 20;
/// Cap of registration and vm-event bodies.
pub const INTERNAL_BODY_MAX: usize = 1 << 20;
/// Cap of file uploads (`PUT /sandboxes/{id}/files`).
pub const FILE_BODY_MAX: usize = 10 << 20;
/// Cap of mkdir bodies.
pub const MKDIR_BODY_MAX: usize = 1 << 20;
/// Cap of run-code bodies: 1 MiB of code plus 1 KiB for the rest of the JSON.
pub const RUN_CODE_BODY_MAX: usize = (1 << 20) + 1024;
/// Cap of exec bodies.
pub const EXEC_BODY_MAX: usize = 1 << 20;

/// `X-Request-Id`.
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// `traceparent` (W3C trace context).
pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
/// `tracestate` (W3C trace context).
pub const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// Content type of JSON responses (no charset, as the contract has it).
pub const JSON: &str = "application/json";
/// Content type of the Prometheus text exposition format.
pub const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4";
/// Content type of plain text responses.
pub const PLAIN_TEXT: &str = "text/plain; charset=utf-8";

/// An empty body.
pub fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

/// A body holding `bytes`.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// A response with `status` and no body.
pub fn status_only(status: StatusCode) -> HttpResponse {
    let mut resp = Response::new(empty());
    *resp.status_mut() = status;
    resp
}

/// A JSON response: one document followed by a newline.
pub fn json_response<T: Serialize>(status: StatusCode, value: &T) -> HttpResponse {
    match serde_json::to_vec(value) {
        Ok(mut bytes) => {
            bytes.push(b'\n');
            with_content_type(status, JSON, full(bytes))
        }
        Err(err) => {
            tracing::error!(error = %err, "failed to encode response");
            error_response(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
        }
    }
}

/// An error response `{"error": msg}`.
pub fn error_response(status: StatusCode, message: &str) -> HttpResponse {
    json_response(
        status,
        &ErrorBody {
            error: message.to_string(),
        },
    )
}

/// An error response for a library error already mapped to `status`. The body is the error's
/// own (top-level) message; for 5xx the full cause chain is logged.
pub fn error_for(status: StatusCode, err: &(dyn StdError + 'static)) -> HttpResponse {
    if status.is_server_error() {
        tracing::warn!(status = status.as_u16(), error = %error_chain(err), "request failed");
    }
    error_response(status, &err.to_string())
}

/// A text response with the given content type.
pub fn text_response(status: StatusCode, content_type: &'static str, text: String) -> HttpResponse {
    with_content_type(status, content_type, full(text))
}

/// A `307 Temporary Redirect` to `location`.
pub fn redirect(location: &str) -> HttpResponse {
    match HeaderValue::from_str(location) {
        Ok(value) => {
            let mut resp = status_only(StatusCode::TEMPORARY_REDIRECT);
            resp.headers_mut().insert(header::LOCATION, value);
            resp
        }
        Err(_) => {
            tracing::warn!(location, "redirect target is not a valid header value");
            error_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                "failed to build redirect URL",
            )
        }
    }
}

/// A response with `status`, a `Content-Type` and `body`.
pub(crate) fn with_content_type(
    status: StatusCode,
    content_type: &'static str,
    body: Body,
) -> HttpResponse {
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

/// `err` and its sources, joined with `: `.
pub fn error_chain(err: &(dyn StdError + 'static)) -> String {
    let mut out = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        let text = e.to_string();
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cur = e.source();
    }
    out
}

/// Why a request body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// The body is larger than the route allows.
    #[error("body exceeds max size")]
    TooLarge,
    /// The connection failed while reading.
    #[error("failed to read body")]
    Read(#[source] BoxError),
}

/// Reads a whole body, refusing more than `max` bytes.
pub async fn read_body<B>(body: B, max: usize) -> Result<Bytes, BodyError>
where
    B: hyper::body::Body,
    B::Error: Into<BoxError>,
{
    match Limited::new(body, max).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(err) if err.downcast_ref::<LengthLimitError>().is_some() => Err(BodyError::TooLarge),
        Err(err) => Err(BodyError::Read(err)),
    }
}

/// Why a JSON body did not decode.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The body was empty (or only whitespace).
    #[error("empty body")]
    Empty,
    /// The body was not JSON of the expected shape.
    #[error("invalid json")]
    Json(#[source] serde_json::Error),
    /// The body's top-level value is an array, string, number or boolean, not an object.
    #[error("json body must be an object")]
    NotAnObject,
}

/// Decodes a JSON body leniently, as the prototype did: only the first JSON value is read
/// (trailing bytes are ignored), unknown fields are ignored, a literal `null` means all
/// defaults, and an empty body is an error. Type mismatches are errors, and so is any
/// top-level value other than an object or `null` (an array, string, number or boolean).
pub fn decode_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, DecodeError> {
    let mut stream = serde_json::Deserializer::from_slice(bytes).into_iter::<serde_json::Value>();
    let value = match stream.next() {
        None => return Err(DecodeError::Empty),
        Some(Err(err)) if err.is_eof() && bytes.iter().all(u8::is_ascii_whitespace) => {
            return Err(DecodeError::Empty)
        }
        Some(Err(err)) => return Err(DecodeError::Json(err)),
        Some(Ok(serde_json::Value::Null)) => serde_json::Value::Object(Default::default()),
        // A derived `Deserialize` of a struct also accepts an array of its fields in order
        // (`["host",2]`); the contract's records are objects only.
        Some(Ok(value @ serde_json::Value::Object(_))) => value,
        Some(Ok(_)) => return Err(DecodeError::NotAnObject),
    };
    serde_json::from_value(value).map_err(DecodeError::Json)
}

/// Query parameters, in order, percent-decoded (`+` is a space).
#[derive(Debug, Clone, Default)]
pub struct Query {
    pairs: Vec<(String, String)>,
}

impl Query {
    /// Parses a raw query string (without `?`).
    pub fn parse(raw: Option<&str>) -> Self {
        let pairs = raw
            .map(|q| {
                url::form_urlencoded::parse(q.as_bytes())
                    .map(|(k, v)| (k.into_owned(), v.into_owned()))
                    .collect()
            })
            .unwrap_or_default();
        Self { pairs }
    }

    /// The first value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Every `(key, value)` pair, in order (repeated keys included).
    pub fn pairs(&self) -> impl Iterator<Item = (&str, &str)> {
        self.pairs.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }
}

/// Whether a comma-separated header (every `name` line) lists `token`, case-insensitively.
pub fn header_has_token(headers: &HeaderMap, name: &str, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Percent-decodes a URL path. Invalid escapes are kept as written; invalid UTF-8 is
/// replaced.
pub fn percent_decode(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hi = (bytes[i + 1] as char).to_digit(16);
            let lo = (bytes[i + 2] as char).to_digit(16);
            if let (Some(hi), Some(lo)) = (hi, lo) {
                out.push((hi * 16 + lo) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The segments of a (decoded) path: leading and trailing `/` stripped, then split on `/`;
/// inner empty segments are kept. `/` has no segments.
pub fn segments(path: &str) -> Vec<&str> {
    let trimmed = path.trim_matches('/');
    if trimmed.is_empty() {
        Vec::new()
    } else {
        trimmed.split('/').collect()
    }
}

/// The first comma-separated element of a header, trimmed, if non-empty.
pub fn first_header_element(headers: &HeaderMap, name: &str) -> Option<String> {
    let value = headers.get(name)?.to_str().ok()?;
    let first = value.split(',').next()?.trim();
    (!first.is_empty()).then(|| first.to_string())
}

/// The value of a header as text, if present and visible ASCII.
pub fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Per-request identity: the request id and this service's span of the trace.
#[derive(Debug, Clone)]
pub struct RequestContext {
    /// The trimmed incoming `X-Request-Id`, or a fresh ULID.
    pub request_id: String,
    /// The incoming trace continued with a new span, or a new trace.
    pub trace: TraceContext,
}

impl RequestContext {
    /// Builds the context of a request from its headers.
    pub fn from_headers(headers: &HeaderMap) -> Self {
        Self {
            request_id: request_id(headers),
            trace: TraceContext::continue_or_start(
                header_str(headers, "traceparent"),
                header_str(headers, "tracestate"),
                rand::random::<[u8; 24]>(),
            ),
        }
    }

    /// Sets `X-Request-Id` on a response.
    pub fn stamp(&self, resp: &mut HttpResponse) {
        if let Ok(value) = HeaderValue::from_str(&self.request_id) {
            resp.headers_mut().insert(X_REQUEST_ID, value);
        }
    }

    /// Adds `traceparent` (and `tracestate` when set) of this span to a response.
    pub fn add_trace_headers(&self, resp: &mut HttpResponse) {
        if let Ok(value) = HeaderValue::from_str(&self.trace.traceparent()) {
            resp.headers_mut().insert(TRACEPARENT, value);
        }
        if let Some(state) = &self.trace.tracestate {
            if let Ok(value) = HeaderValue::from_str(state) {
                resp.headers_mut().insert(TRACESTATE, value);
            }
        }
    }
}

/// The request id of a request: the trimmed `X-Request-Id` when non-empty (and a valid header
/// value), else a fresh ULID.
pub fn request_id(headers: &HeaderMap) -> String {
    header_str(headers, "x-request-id")
        .map(str::trim)
        .filter(|id| !id.is_empty())
        .map(String::from)
        .unwrap_or_else(|| ulid::Ulid::new().to_string())
}

/// A response body streamed from an async reader (raw file downloads).
pub struct ReaderBody {
    reader: BoxedReader,
    buf: BytesMut,
    done: bool,
}

const READ_CHUNK: usize = 64 * 1024;

impl ReaderBody {
    /// Streams `reader` until end of file.
    pub fn new(reader: BoxedReader) -> Self {
        Self {
            reader,
            buf: BytesMut::new(),
            done: false,
        }
    }

    /// Boxes it as a response body.
    pub fn boxed(self) -> Body {
        BodyExt::boxed_unsync(self)
    }
}

impl hyper::body::Body for ReaderBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.done {
            return Poll::Ready(None);
        }
        let this = &mut *self;
        this.buf.resize(READ_CHUNK, 0);
        let mut read_buf = ReadBuf::new(&mut this.buf);
        match Pin::new(&mut this.reader).poll_read(cx, &mut read_buf) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Err(err)) => {
                this.done = true;
                Poll::Ready(Some(Err(Box::new(err))))
            }
            Poll::Ready(Ok(())) => {
                let n = read_buf.filled().len();
                if n == 0 {
                    this.done = true;
                    return Poll::Ready(None);
                }
                let chunk = this.buf.split_to(n).freeze();
                Poll::Ready(Some(Ok(Frame::data(chunk))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Default, Deserialize, PartialEq)]
    #[serde(default)]
    struct Sample {
        cpu: i64,
        image: String,
    }

    #[test]
    fn decode_is_lenient() {
        let s: Sample = decode_json(br#"{"cpu":2,"image":"x","other":true}"#).unwrap();
        assert_eq!(
            s,
            Sample {
                cpu: 2,
                image: "x".into()
            }
        );
        let s: Sample = decode_json(b"null").unwrap();
        assert_eq!(s, Sample::default());
        let s: Sample = decode_json(br#"{"cpu":3} trailing garbage"#).unwrap();
        assert_eq!(s.cpu, 3);
    }

    #[test]
    fn decode_rejects_empty_and_mismatches() {
        assert!(matches!(
            decode_json::<Sample>(b""),
            Err(DecodeError::Empty)
        ));
        assert!(matches!(
            decode_json::<Sample>(b"  \n"),
            Err(DecodeError::Empty)
        ));
        assert!(decode_json::<Sample>(br#"{"cpu":"2"}"#).is_err());
        assert!(decode_json::<Sample>(br#"{"cpu":1.5}"#).is_err());
        assert!(decode_json::<Sample>(br#"{"cpu":"#).is_err());
    }

    #[test]
    fn decode_rejects_top_level_values_that_are_not_objects() {
        // Derived struct decoding alone would take `[2,"x"]` as `{"cpu":2,"image":"x"}`.
        for body in [&br#"[2,"x"]"#[..], b"[]", b"\"host\"", b"2", b"true"] {
            assert!(
                matches!(decode_json::<Sample>(body), Err(DecodeError::NotAnObject)),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[tokio::test]
    async fn body_cap() {
        let ok = read_body(Full::new(Bytes::from_static(b"12345")), 5)
            .await
            .unwrap();
        assert_eq!(&ok[..], b"12345");
        let err = read_body(Full::new(Bytes::from_static(b"123456")), 5)
            .await
            .unwrap_err();
        assert!(matches!(err, BodyError::TooLarge));
        assert_eq!(err.to_string(), "body exceeds max size");
    }

    #[test]
    fn request_id_echo_or_ulid() {
        let mut h = HeaderMap::new();
        h.insert("x-request-id", HeaderValue::from_static("  abc  "));
        assert_eq!(request_id(&h), "abc");
        h.insert("x-request-id", HeaderValue::from_static("   "));
        let fresh = request_id(&h);
        assert_eq!(fresh.len(), 26);
        assert!(ulid::Ulid::from_string(&fresh).is_ok());
        assert_eq!(request_id(&HeaderMap::new()).len(), 26);
    }

    #[test]
    fn trace_context_continues_incoming() {
        let mut h = HeaderMap::new();
        h.insert(
            "traceparent",
            HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        );
        h.insert("tracestate", HeaderValue::from_static("k=v"));
        let ctx = RequestContext::from_headers(&h);
        assert_eq!(ctx.trace.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_ne!(ctx.trace.span_id, "00f067aa0ba902b7");
        let mut resp = status_only(StatusCode::TEMPORARY_REDIRECT);
        ctx.add_trace_headers(&mut resp);
        ctx.stamp(&mut resp);
        let tp = resp.headers()["traceparent"].to_str().unwrap();
        assert!(tp.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
        assert!(tp.ends_with("-01"));
        assert_eq!(resp.headers()["tracestate"], "k=v");
        assert_eq!(resp.headers()["x-request-id"].len(), 26);
    }

    #[test]
    fn paths_and_queries() {
        assert_eq!(percent_decode("/a%20b/%2Fc%zz%4"), "/a b//c%zz%4");
        assert_eq!(segments("/"), Vec::<&str>::new());
        assert_eq!(segments(""), Vec::<&str>::new());
        assert_eq!(segments("/sandboxes/"), vec!["sandboxes"]);
        assert_eq!(segments("/a//b/"), vec!["a", "", "b"]);
        let q = Query::parse(Some("path=%2Fworkspace%2Fa+b&x=1&x=2"));
        assert_eq!(q.get("path"), Some("/workspace/a b"));
        assert_eq!(q.get("x"), Some("1"));
        assert_eq!(q.get("y"), None);
        assert_eq!(Query::parse(None).get("x"), None);
    }

    #[test]
    fn header_elements() {
        let mut h = HeaderMap::new();
        h.insert(
            "x-forwarded-host",
            HeaderValue::from_static(" a.example , b"),
        );
        assert_eq!(
            first_header_element(&h, "x-forwarded-host").as_deref(),
            Some("a.example")
        );
        h.insert("x-forwarded-host", HeaderValue::from_static(" , b"));
        assert_eq!(first_header_element(&h, "x-forwarded-host"), None);
    }

    #[test]
    fn json_and_error_responses() {
        let resp = error_response(StatusCode::NOT_FOUND, "route not found");
        assert_eq!(resp.status(), StatusCode::NOT_FOUND);
        assert_eq!(resp.headers()["content-type"], "application/json");
        let resp = redirect("http://w/sandboxes");
        assert_eq!(resp.status(), StatusCode::TEMPORARY_REDIRECT);
        assert_eq!(resp.headers()["location"], "http://w/sandboxes");
        assert_eq!(
            redirect("bad\nvalue").status(),
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }

    #[tokio::test]
    async fn json_body_has_newline() {
        let resp = error_response(StatusCode::BAD_REQUEST, "x");
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&bytes[..], b"{\"error\":\"x\"}\n");
    }

    #[tokio::test]
    async fn reader_body_streams() {
        let reader: BoxedReader = Box::new(std::io::Cursor::new(vec![7u8; 200_000]));
        let bytes = ReaderBody::new(reader)
            .boxed()
            .collect()
            .await
            .unwrap()
            .to_bytes();
        assert_eq!(bytes.len(), 200_000);
    }
}
