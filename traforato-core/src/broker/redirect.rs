//! Redirect targets: a worker's base URL (which may carry a path prefix) joined with a
//! sandbox-scoped request path, or with `/sandboxes` and the placement query of a create.

use url::Url;

use super::BrokerError;
use crate::id::LocalVmId;

/// Characters kept as they are in a path segment (RFC 3986 `pchar` minus `%`); everything
/// else is percent-encoded, so a decoded path round-trips through the worker's decoding.
fn is_pchar(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'-' | b'.'
                | b'_'
                | b'~'
                | b'!'
                | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b';'
                | b'='
                | b':'
                | b'@'
        )
}

fn encode_segment(segment: &str, out: &mut String) {
    for &b in segment.as_bytes() {
        if is_pchar(b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
}

/// Cleans a decoded absolute path and percent-encodes it: `//` and `.` collapse, `..`
/// resolves (never above the root), and a trailing slash is kept.
pub(super) fn clean_path(decoded: &str) -> String {
    let mut segments: Vec<&str> = Vec::new();
    for segment in decoded.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    let mut out = String::with_capacity(decoded.len() + 8);
    for segment in &segments {
        out.push('/');
        encode_segment(segment, &mut out);
    }
    if segments.is_empty() || decoded.ends_with('/') {
        out.push('/');
    }
    out
}

/// `base` with its path prefix followed by the already-encoded absolute `path`, without
/// query or fragment.
fn with_path(base: &Url, path: &str) -> Result<Url, BrokerError> {
    if base.cannot_be_a_base() {
        return Err(BrokerError::RedirectUrl);
    }
    let mut url = base.clone();
    url.set_query(None);
    url.set_fragment(None);
    let prefix = base.path().trim_end_matches('/');
    url.set_path(&format!("{prefix}{path}"));
    Ok(url)
}

/// The target of a sandbox-scoped request: the worker's base URL, then the cleaned request
/// path (kept below the base URL's own path prefix), then `?raw_query` verbatim if non-empty.
pub(super) fn sandbox_location(
    base: &Url,
    decoded_path: &str,
    raw_query: Option<&str>,
) -> Result<String, BrokerError> {
    let mut location = with_path(base, &clean_path(decoded_path))?.to_string();
    if let Some(query) = raw_query.filter(|q| !q.is_empty()) {
        location.push('?');
        location.push_str(query);
    }
    Ok(location)
}

/// The target of a placed create: `<base>/sandboxes`, with `local_vm_id` (warm) and
/// `placement_retry` (only when > 0) as a form-encoded query with sorted keys.
pub(super) fn create_location(
    base: &Url,
    local_vm_id: Option<LocalVmId>,
    placement_retry: u32,
) -> Result<String, BrokerError> {
    let mut url = with_path(base, "/sandboxes")?;
    // Keys in sorted order: `local_vm_id` < `placement_retry`.
    let mut pairs: Vec<(&str, String)> = Vec::with_capacity(2);
    if let Some(vm) = local_vm_id {
        pairs.push(("local_vm_id", vm.to_string()));
    }
    if placement_retry > 0 {
        pairs.push(("placement_retry", placement_retry.to_string()));
    }
    if !pairs.is_empty() {
        url.query_pairs_mut().extend_pairs(pairs);
    }
    Ok(url.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SBX: &str = "sbx-broker_local-worker_a-550e8400-e29b-41d4-a716-446655440000";

    fn url(s: &str) -> Url {
        Url::parse(s).unwrap()
    }

    #[test]
    fn cleans_paths() {
        assert_eq!(clean_path("/sandboxes/x"), "/sandboxes/x");
        assert_eq!(clean_path("//sandboxes//x/./y/../z"), "/sandboxes/x/z");
        assert_eq!(
            clean_path("/sandboxes/x/proxy/3000/app/"),
            "/sandboxes/x/proxy/3000/app/"
        );
        assert_eq!(clean_path("/../../etc"), "/etc");
        assert_eq!(clean_path("/"), "/");
        assert_eq!(clean_path(""), "/");
        assert_eq!(clean_path("/a b/c%d/e?f#g"), "/a%20b/c%25d/e%3Ff%23g");
        assert_eq!(clean_path("/caf\u{e9}"), "/caf%C3%A9");
    }

    #[test]
    fn sandbox_locations() {
        let base = url("http://worker-a.local:8081");
        let path = format!("/sandboxes/{SBX}");
        assert_eq!(
            sandbox_location(&base, &path, None).unwrap(),
            format!("http://worker-a.local:8081/sandboxes/{SBX}")
        );
        assert_eq!(
            sandbox_location(&base, &format!("{path}/files"), Some("path=/a%20b&x=1")).unwrap(),
            format!("http://worker-a.local:8081/sandboxes/{SBX}/files?path=/a%20b&x=1")
        );
        assert_eq!(
            sandbox_location(&base, &path, Some("")).unwrap(),
            format!("http://worker-a.local:8081/sandboxes/{SBX}")
        );
        let prefixed = url("https://gw.example.com/w/a/");
        assert_eq!(
            sandbox_location(&prefixed, &format!("{path}/proxy/80/app/"), None).unwrap(),
            format!("https://gw.example.com/w/a/sandboxes/{SBX}/proxy/80/app/")
        );
        assert_eq!(
            sandbox_location(&prefixed, "/sandboxes/../../../x", None).unwrap(),
            "https://gw.example.com/w/a/x"
        );
    }

    #[test]
    fn create_locations() {
        let vm = LocalVmId::parse("550e8400-e29b-41d4-a716-446655440000").unwrap();
        let base = url("http://worker-a.local:8081");
        assert_eq!(
            create_location(&base, None, 0).unwrap(),
            "http://worker-a.local:8081/sandboxes"
        );
        assert_eq!(
            create_location(&base, None, 2).unwrap(),
            "http://worker-a.local:8081/sandboxes?placement_retry=2"
        );
        assert_eq!(
            create_location(&base, Some(vm), 0).unwrap(),
            "http://worker-a.local:8081/sandboxes?local_vm_id=550e8400-e29b-41d4-a716-446655440000"
        );
        assert_eq!(
            create_location(&base, Some(vm), 1).unwrap(),
            "http://worker-a.local:8081/sandboxes?local_vm_id=550e8400-e29b-41d4-a716-446655440000&placement_retry=1"
        );
        let prefixed = url("http://u:p@gw.local/prefix");
        assert_eq!(
            create_location(&prefixed, None, 0).unwrap(),
            "http://u:p@gw.local/prefix/sandboxes"
        );
    }
}
