//! Listen addresses and the URLs derived from them: Go-style `:port` addresses, the
//! advertise URL and dev URLs (§6.3, §6.5), the mode's default listen address, and the rule
//! that development mode (no authentication) stays on loopback.

use traforato_core::auth::AuthMode;

use super::{ConfigError, DEFAULT_WORKER_PORT};

/// The address to bind for a Go-style listen address: `:8080` means every interface
/// (`0.0.0.0:8080`); anything else is used as written (host names are resolved at bind).
pub fn bind_address(listen: &str) -> Result<String, ConfigError> {
    let listen = listen.trim();
    if listen.is_empty() {
        return Err(ConfigError::EmptyListen);
    }
    Ok(if listen.starts_with(':') {
        format!("0.0.0.0{listen}")
    } else {
        listen.to_string()
    })
}

/// The listen address to use: `listen` as configured, or when that is empty the default of
/// the mode: `127.0.0.1:<port>` in development mode (no authentication, so loopback only),
/// `:<port>` (every interface) in prod.
pub fn listen_or_default(listen: &str, default_port: u16, mode: AuthMode) -> String {
    let listen = listen.trim();
    match (listen.is_empty(), mode) {
        (false, _) => listen.to_string(),
        (true, AuthMode::Dev) => format!("127.0.0.1:{default_port}"),
        (true, AuthMode::Prod) => format!(":{default_port}"),
    }
}

/// Refuses a development-mode (`mode` = dev) listen address that is not loopback unless
/// `allow_network` (`--insecure-dev-mode-on-network`). A host name counts as loopback only if
/// every address it resolves to is; `:port`, `0.0.0.0` and `::` are every interface. Prod mode
/// may listen anywhere.
pub fn check_exposure(
    listen: &str,
    mode: AuthMode,
    allow_network: bool,
) -> Result<(), ConfigError> {
    if mode.is_prod() || allow_network {
        return Ok(());
    }
    let refused = || ConfigError::DevModeOnNetwork {
        listen: listen.trim().to_string(),
    };
    let addr = bind_address(listen)?;
    let Some((host, port)) = split_host_port(&addr) else {
        return Err(refused());
    };
    if host.eq_ignore_ascii_case("localhost") {
        return Ok(());
    }
    let loopback = match host.parse::<std::net::IpAddr>() {
        Ok(ip) => ip.to_canonical().is_loopback(),
        Err(_) => {
            use std::net::ToSocketAddrs;
            let resolved: Vec<_> = (host.as_str(), port.parse::<u16>().unwrap_or(0))
                .to_socket_addrs()
                .map(Iterator::collect)
                .unwrap_or_default();
            !resolved.is_empty() && resolved.iter().all(|a| a.ip().to_canonical().is_loopback())
        }
    };
    if loopback {
        Ok(())
    } else {
        Err(refused())
    }
}

/// Splits `host:port` like Go's `net.SplitHostPort`: `[v6]:port`, `:port` (empty host),
/// `host:port`. A missing port or a bare IPv6 address is an error (`None`).
pub fn split_host_port(addr: &str) -> Option<(String, String)> {
    if let Some(rest) = addr.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        let port = after.strip_prefix(':')?;
        if port.contains(':') {
            return None;
        }
        return Some((host.to_string(), port.to_string()));
    }
    let (host, port) = addr.rsplit_once(':')?;
    if host.contains(':') || host.contains('[') || host.contains(']') {
        return None;
    }
    Some((host.to_string(), port.to_string()))
}

fn is_wildcard_host(host: &str) -> bool {
    matches!(host, "" | "0.0.0.0" | "::")
}

fn url_host(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    }
}

/// The port to advertise: the configured one, or the bound one when the configuration asked
/// for an ephemeral port (`0`).
fn effective_port(configured: &str, bound_port: Option<u16>) -> String {
    match (configured.parse::<u16>(), bound_port) {
        (Ok(0), Some(bound)) => bound.to_string(),
        _ => configured.to_string(),
    }
}

/// The worker's advertise URL (§6.3): the listen address's host and port, a wildcard host
/// replaced by `hostname` (or `localhost` when that is empty), port 8081 when the address has
/// none. `bound_port` replaces a configured port 0.
pub fn advertise_url(listen: &str, hostname: &str, bound_port: Option<u16>) -> String {
    let (host, port) = match split_host_port(listen.trim()) {
        Some((host, port)) if !port.is_empty() => (host, port),
        Some((host, _)) => (host, DEFAULT_WORKER_PORT.to_string()),
        None => (String::new(), DEFAULT_WORKER_PORT.to_string()),
    };
    let host = if is_wildcard_host(&host) {
        let hostname = hostname.trim();
        if hostname.is_empty() {
            "localhost".to_string()
        } else {
            hostname.to_string()
        }
    } else {
        host
    };
    format!(
        "http://{}:{}",
        url_host(&host),
        effective_port(&port, bound_port)
    )
}

/// A dev-mode URL derived from a listen address (§6.5): wildcard hosts become `localhost`;
/// an address that does not split gives `http://localhost:<fallback_port>`.
pub fn local_url(listen: &str, fallback_port: u16, bound_port: Option<u16>) -> String {
    match split_host_port(listen.trim()) {
        Some((host, port)) if !port.is_empty() => {
            let host = if is_wildcard_host(&host) {
                "localhost".to_string()
            } else {
                host
            };
            format!(
                "http://{}:{}",
                url_host(&host),
                effective_port(&port, bound_port)
            )
        }
        _ => format!("http://localhost:{fallback_port}"),
    }
}
