//! Decoding of the worker routes' query values and request bodies into the core's typed
//! arguments, with the contract's messages: the core never sees a query string.

use std::time::Duration;

use traforato_core::api::{Encoding, EncodingError, ExecSignalRequest, WriteFileJson};
use traforato_core::backend::{ExecSignal, WriteMode};
use traforato_core::duration::{parse_duration, DurationError};
use traforato_core::id::{ExecId, LocalVmId};
use traforato_core::path::{PathError, SandboxPath};
use traforato_core::worker::{
    ListOptions, Placement, RemoveOptions, DEFAULT_FRAMES_WAIT, DEFAULT_LIST_LIMIT, MAX_FRAMES_WAIT,
};

use crate::http::Query;

/// A request the shell could not decode: always `400` with this message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// Segment 2 of a sandbox route is not a sandbox id.
    #[error("malformed sandbox_id")]
    MalformedSandboxId,
    /// `placement_retry` is not a non-negative integer.
    #[error("invalid placement_retry")]
    InvalidPlacementRetry,
    /// `local_vm_id` is not a canonical UUIDv4.
    #[error("invalid local_vm_id")]
    InvalidLocalVmId,
    /// A path that is missing, relative or not text.
    #[error(transparent)]
    Path(#[from] PathError),
    /// An unknown `encoding`, or content that is not in it.
    #[error(transparent)]
    Encoding(#[from] EncodingError),
    /// `recursive` is not a boolean.
    #[error("recursive must be true or false")]
    InvalidRecursive,
    /// `force` is not a boolean.
    #[error("force must be true or false")]
    InvalidForce,
    /// `limit` is not a positive integer.
    #[error("limit must be a positive integer")]
    InvalidLimit,
    /// `cursor` is not a non-negative integer.
    #[error("cursor must be a non-negative integer")]
    InvalidCursor,
    /// A port that is not an integer in 1..=65535.
    #[error("invalid port")]
    InvalidPort,
    /// A port URL's `protocol` is none of the four.
    #[error("protocol must be one of: http, https, ws, wss")]
    InvalidProtocol,
    /// A signal other than the four an exec takes.
    #[error("signal must be one of: TERM, KILL, INT, HUP")]
    InvalidSignal,
}

/// A boolean query value as the prototype read it (Go's `strconv.ParseBool`):
/// `1 t T TRUE true True 0 f F FALSE false False`, trimmed; empty or absent is `false`.
pub fn query_bool(raw: Option<&str>) -> Option<bool> {
    match raw.map(str::trim).unwrap_or("") {
        "" => Some(false),
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// A trimmed integer query value at least `min`; blank is `None`.
fn query_int(raw: Option<&str>, min: i64) -> Result<Option<u64>, ()> {
    let raw = raw.unwrap_or("").trim();
    if raw.is_empty() {
        return Ok(None);
    }
    match raw.parse::<i64>() {
        Ok(n) if n >= min => Ok(Some(n as u64)),
        _ => Err(()),
    }
}

/// `placement_retry` (trimmed, a non-negative integer, default 0) and `local_vm_id`
/// (trimmed; when not blank, a canonical UUIDv4) of a create.
pub fn placement(query: &Query) -> Result<Placement, RequestError> {
    let retry = query_int(query.get("placement_retry"), 0)
        .map_err(|()| RequestError::InvalidPlacementRetry)?
        .unwrap_or(0);
    let claim = match query.get("local_vm_id").map(str::trim) {
        None | Some("") => None,
        Some(raw) => Some(LocalVmId::parse(raw).map_err(|_| RequestError::InvalidLocalVmId)?),
    };
    Ok(Placement { claim, retry })
}

/// `ttl_seconds` of a lease renewal, as the contract reads it: not trimmed, and anything but
/// a positive integer counts as 0 (which the core refuses).
pub fn lease_ttl(query: &Query) -> Duration {
    let seconds = query
        .get("ttl_seconds")
        .and_then(|raw| raw.parse::<i64>().ok())
        .unwrap_or(0);
    Duration::from_secs(seconds.max(0) as u64)
}

/// A sandbox path: the query's `path`, or a body's.
pub fn path(raw: Option<&str>) -> Result<SandboxPath, RequestError> {
    Ok(SandboxPath::parse(raw.unwrap_or(""))?)
}

/// The `encoding` of a read: `utf8` (default, `utf-8` accepted) or `base64`.
pub fn read_encoding(query: &Query) -> Result<Encoding, RequestError> {
    Ok(Encoding::parse(query.get("encoding").unwrap_or(""))?.unwrap_or_default())
}

/// `recursive`, `limit` (default 1000) and `cursor` (default 0) of a listing, in the
/// contract's order.
pub fn list_options(query: &Query) -> Result<ListOptions, RequestError> {
    let recursive = query_bool(query.get("recursive")).ok_or(RequestError::InvalidRecursive)?;
    let limit = query_int(query.get("limit"), 1).map_err(|()| RequestError::InvalidLimit)?;
    let cursor = query_int(query.get("cursor"), 0).map_err(|()| RequestError::InvalidCursor)?;
    let saturate = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
    Ok(ListOptions {
        recursive,
        limit: limit.map_or(DEFAULT_LIST_LIMIT, saturate),
        cursor: cursor.map_or(0, saturate),
    })
}

/// `recursive` and `force` of a removal.
pub fn remove_options(query: &Query) -> Result<RemoveOptions, RequestError> {
    Ok(RemoveOptions {
        recursive: query_bool(query.get("recursive")).ok_or(RequestError::InvalidRecursive)?,
        force: query_bool(query.get("force")).ok_or(RequestError::InvalidForce)?,
    })
}

/// The `limit` of an exec listing: trimmed, a positive integer (any size: it is clamped);
/// blank is the default.
pub fn exec_list_limit(query: &Query) -> Result<Option<usize>, RequestError> {
    match query.get("limit").map(str::trim).filter(|l| !l.is_empty()) {
        None => Ok(None),
        Some(raw) => match raw.parse::<u64>() {
            Ok(n) if n > 0 => Ok(Some(usize::try_from(n).unwrap_or(usize::MAX))),
            _ => Err(RequestError::InvalidLimit),
        },
    }
}

/// The `cursor` of a frames call: an integer, not trimmed; anything else or a negative
/// value is 0.
pub fn frames_cursor(raw: Option<&str>) -> u64 {
    raw.and_then(|raw| raw.parse::<i64>().ok())
        .filter(|c| *c > 0)
        .map(|c| c as u64)
        .unwrap_or(0)
}

/// The `wait` of a frames call; `None` when absent or empty (no long-poll). Boolean-like
/// values (`1`, `true`...) mean [`DEFAULT_FRAMES_WAIT`] and `0`/`false` no wait; an integer
/// is milliseconds; a Go duration (`30s`, `500ms`, `1m30s`) is itself (negative: no wait);
/// anything else is the default. At most [`MAX_FRAMES_WAIT`].
pub fn frames_wait(raw: Option<&str>) -> Option<Duration> {
    let raw = raw.filter(|w| !w.is_empty())?.trim();
    let wait = match query_bool(Some(raw)) {
        Some(true) => DEFAULT_FRAMES_WAIT,
        Some(false) => Duration::ZERO,
        None => match raw.parse::<u64>() {
            Ok(ms) => Duration::from_millis(ms),
            Err(_) => match parse_duration(raw) {
                Ok(wait) => wait,
                Err(DurationError::Negative(_)) => Duration::ZERO,
                Err(_) => DEFAULT_FRAMES_WAIT,
            },
        },
    };
    Some(wait.min(MAX_FRAMES_WAIT))
}

/// A port: a trimmed integer in 1..=65535.
pub fn port(raw: &str) -> Result<u16, RequestError> {
    match raw.trim().parse::<u16>() {
        Ok(port) if port > 0 => Ok(port),
        _ => Err(RequestError::InvalidPort),
    }
}

/// The `protocol` of a port URL: trimmed, any case, `https` when blank.
pub fn protocol(query: &Query) -> Result<&'static str, RequestError> {
    match query
        .get("protocol")
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
        .as_str()
    {
        "" | "https" => Ok("https"),
        "http" => Ok("http"),
        "ws" => Ok("ws"),
        "wss" => Ok("wss"),
        _ => Err(RequestError::InvalidProtocol),
    }
}

/// The signal of a signal request.
pub fn signal(request: &ExecSignalRequest) -> Result<ExecSignal, RequestError> {
    ExecSignal::parse(&request.signal).ok_or(RequestError::InvalidSignal)
}

/// An exec id segment; `None` when it cannot name an exec.
pub fn exec_id(raw: &str) -> Option<ExecId> {
    ExecId::parse(raw).ok()
}

/// The bytes and write mode of the JSON form of a write (encoding `base64` by default).
pub fn write_json(form: &WriteFileJson) -> Result<(Vec<u8>, WriteMode), RequestError> {
    let content = Encoding::parse(&form.encoding)?
        .unwrap_or(Encoding::Base64)
        .decode(&form.content)?;
    let mode = if form.append {
        WriteMode::Append
    } else {
        WriteMode::Replace
    };
    Ok((content, mode))
}

/// Input for an exec's stdin in the JSON form (encoding `utf8` by default).
pub fn exec_input(data: &str, encoding: &str) -> Result<bytes::Bytes, RequestError> {
    let input = Encoding::parse(encoding)?
        .unwrap_or(Encoding::Utf8)
        .decode(data)?;
    Ok(input.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(raw: &str) -> Query {
        Query::parse(Some(raw))
    }

    #[test]
    fn booleans() {
        assert_eq!(query_bool(None), Some(false));
        assert_eq!(query_bool(Some(" True ")), Some(true));
        assert_eq!(query_bool(Some("0")), Some(false));
        assert_eq!(query_bool(Some("yes")), None);
    }

    #[test]
    fn placements() {
        assert_eq!(placement(&query("")).unwrap(), Placement::default());
        assert_eq!(
            placement(&query("placement_retry=%202%20")).unwrap().retry,
            2
        );
        for bad in ["placement_retry=-1", "placement_retry=x"] {
            assert_eq!(
                placement(&query(bad)),
                Err(RequestError::InvalidPlacementRetry)
            );
        }
        assert!(placement(&query("local_vm_id=%20%20"))
            .unwrap()
            .claim
            .is_none());
        let id = "550e8400-e29b-41d4-a716-446655440000";
        let claim = placement(&query(&format!("local_vm_id={id}")))
            .unwrap()
            .claim;
        assert_eq!(claim.unwrap().to_string(), id);
        assert_eq!(
            placement(&query("local_vm_id=550E8400-E29B-41D4-A716-446655440000")),
            Err(RequestError::InvalidLocalVmId)
        );
    }

    #[test]
    fn lease_ttls() {
        assert_eq!(lease_ttl(&query("ttl_seconds=60")), Duration::from_secs(60));
        // Not trimmed, as in the contract: these count as 0, which the core refuses.
        for zero in ["", "ttl_seconds=abc", "ttl_seconds=-5", "ttl_seconds=%2060"] {
            assert_eq!(lease_ttl(&query(zero)), Duration::ZERO, "{zero}");
        }
    }

    #[test]
    fn paths_and_encodings() {
        assert_eq!(path(Some("/a/../b/")).unwrap().to_string(), "/b");
        assert_eq!(path(None), Err(RequestError::Path(PathError::Required)));
        assert_eq!(
            path(Some("relative")),
            Err(RequestError::Path(PathError::NotAbsolute))
        );
        assert_eq!(read_encoding(&query("")).unwrap(), Encoding::Utf8);
        assert_eq!(
            read_encoding(&query("encoding=%20UTF-8%20")).unwrap(),
            Encoding::Utf8
        );
        assert_eq!(
            read_encoding(&query("encoding=base64")).unwrap(),
            Encoding::Base64
        );
        assert_eq!(
            read_encoding(&query("encoding=hex"))
                .unwrap_err()
                .to_string(),
            "encoding must be utf8 or base64"
        );
    }

    #[test]
    fn listings() {
        assert_eq!(list_options(&query("")).unwrap(), ListOptions::default());
        let page = list_options(&query("recursive=1&limit=%205%20&cursor=3")).unwrap();
        assert_eq!((page.recursive, page.limit, page.cursor), (true, 5, 3));
        assert_eq!(
            list_options(&query("cursor=9223372036854775807"))
                .unwrap()
                .cursor,
            usize::try_from(i64::MAX).unwrap_or(usize::MAX)
        );
        let refused = [
            ("recursive=maybe", RequestError::InvalidRecursive),
            ("limit=0", RequestError::InvalidLimit),
            ("limit=abc", RequestError::InvalidLimit),
            ("limit=99999999999999999999", RequestError::InvalidLimit),
            ("cursor=-1", RequestError::InvalidCursor),
            ("recursive=maybe&limit=0", RequestError::InvalidRecursive),
        ];
        for (raw, err) in refused {
            assert_eq!(list_options(&query(raw)), Err(err), "{raw}");
        }
        assert_eq!(
            remove_options(&query("recursive=true&force=1")).unwrap(),
            RemoveOptions {
                recursive: true,
                force: true
            }
        );
        assert_eq!(
            remove_options(&query("recursive=yes")),
            Err(RequestError::InvalidRecursive)
        );
        assert_eq!(
            remove_options(&query("force=yes")),
            Err(RequestError::InvalidForce)
        );
        assert_eq!(exec_list_limit(&query("")).unwrap(), None);
        assert_eq!(exec_list_limit(&query("limit=%202")).unwrap(), Some(2));
        assert!(exec_list_limit(&query("limit=18446744073709551615")).is_ok());
        for bad in ["limit=0", "limit=-1", "limit=x"] {
            assert_eq!(
                exec_list_limit(&query(bad)),
                Err(RequestError::InvalidLimit)
            );
        }
    }

    #[test]
    fn frames() {
        assert_eq!(frames_cursor(None), 0);
        assert_eq!(frames_cursor(Some("3")), 3);
        assert_eq!(frames_cursor(Some(" 3")), 0);
        assert_eq!(frames_cursor(Some("-2")), 0);
        assert_eq!(frames_cursor(Some("abc")), 0);
        let wait = |raw| frames_wait(Some(raw));
        assert_eq!(frames_wait(None), None);
        assert_eq!(wait(""), None);
        assert_eq!(wait("30s"), Some(Duration::from_secs(30)));
        assert_eq!(wait("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(wait("1m30s"), Some(MAX_FRAMES_WAIT));
        assert_eq!(wait("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(wait("250"), Some(Duration::from_millis(250)));
        assert_eq!(wait("true"), Some(DEFAULT_FRAMES_WAIT));
        assert_eq!(wait("1"), Some(DEFAULT_FRAMES_WAIT));
        assert_eq!(wait("0"), Some(Duration::ZERO));
        assert_eq!(wait("-3s"), Some(Duration::ZERO));
        assert_eq!(wait("soon"), Some(DEFAULT_FRAMES_WAIT));
        assert_eq!(wait("5x"), Some(DEFAULT_FRAMES_WAIT));
        assert_eq!(wait("10m"), Some(MAX_FRAMES_WAIT));
    }

    #[test]
    fn ports_protocols_and_signals() {
        assert_eq!(port(" 3000 ").unwrap(), 3000);
        assert_eq!(port("65535").unwrap(), 65535);
        for bad in ["0", "65536", "-1", "", "http"] {
            assert_eq!(port(bad), Err(RequestError::InvalidPort), "{bad}");
        }
        assert_eq!(protocol(&query("")).unwrap(), "https");
        assert_eq!(protocol(&query("protocol=%20WS%20")).unwrap(), "ws");
        assert_eq!(
            protocol(&query("protocol=ftp")),
            Err(RequestError::InvalidProtocol)
        );
        let request = |s: &str| ExecSignalRequest { signal: s.into() };
        assert_eq!(signal(&request("term")).unwrap(), ExecSignal::Term);
        assert_eq!(signal(&request("STOP")), Err(RequestError::InvalidSignal));
        assert!(exec_id("exec_1").is_none());
    }

    #[test]
    fn bodies() {
        let form = |content: &str, encoding: &str, append| WriteFileJson {
            content: content.into(),
            encoding: encoding.into(),
            append,
        };
        assert_eq!(
            write_json(&form("SGk=", "", false)).unwrap(),
            (b"Hi".to_vec(), WriteMode::Replace)
        );
        assert_eq!(
            write_json(&form("SG\r\nk=", " BASE64 ", true)).unwrap(),
            (b"Hi".to_vec(), WriteMode::Append)
        );
        assert_eq!(
            write_json(&form("Hé", "utf-8", false)).unwrap().0,
            "Hé".as_bytes()
        );
        assert_eq!(
            write_json(&form("!!", "base64", false))
                .unwrap_err()
                .to_string(),
            "invalid base64 content"
        );
        assert_eq!(
            write_json(&form("x", "latin1", false))
                .unwrap_err()
                .to_string(),
            "encoding must be utf8 or base64"
        );
        assert_eq!(exec_input("hi", "").unwrap(), "hi");
        assert_eq!(exec_input("aGk=", "base64").unwrap(), "hi");
        assert!(exec_input("!", "base64").is_err());
    }
}
