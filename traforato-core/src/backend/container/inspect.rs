//! The inspecting proxy of a sandbox under an allow-list: its TCP connections to ports 80 and
//! 443 of addresses it resolved through an allowed name are redirected here (nftables), and go
//! on to where they were headed only if the TLS server name (SNI) or the HTTP `Host` of their
//! first bytes is a name the list allows on that port. An allowed name's shared (CDN) address
//! thus does not carry traffic for other names. What it does not see: the `Host` inside TLS,
//! and the later requests of a kept-alive plain-HTTP connection.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::OwnedFd;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustix::net::{sockopt, AddressFamily, SocketFlags, SocketType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::network::{Cidr, Policy};

/// The ports whose connections are inspected.
pub(crate) const INSPECTED_PORTS: [u16; 2] = [80, 443];

/// Most bytes read before the name must be known (a TLS ClientHello fits many times over).
const MAX_HEAD: usize = 32 * 1024;

/// How long a connection may take to say where it goes.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// How long reaching the destination may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Most connections of one sandbox relayed at once; more are refused.
const MAX_CONNECTIONS: usize = 256;

/// Most connections relayed at once for all the sandboxes of a worker (each holds two
/// descriptors); more are refused.
pub(crate) const MAX_RELAYS: usize = 1024;

/// Where relayed connections may go, and how.
#[derive(Debug)]
pub(crate) struct Reach {
    /// Never: the blocked ranges, loopback, `0.0.0.0/8`, the sandboxes' own range.
    pub never: Vec<Cidr>,
    /// The interface they leave by (as forwarded traffic does), when there is one.
    pub uplink: Option<String>,
    /// The worker's budget of relays ([`MAX_RELAYS`]).
    pub relays: Arc<tokio::sync::Semaphore>,
}

/// What the first bytes of a connection say about the name it is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Head {
    /// Not enough bytes yet.
    More,
    /// The server name (lowercase, no final dot).
    Name(String),
    /// No name: not TLS or HTTP, or TLS without SNI, or HTTP without `Host`.
    Nameless,
}

/// The name a connection's first bytes are for: TLS (they start with a handshake record) by
/// its SNI, anything else as an HTTP request by its `Host`.
pub(crate) fn server_name(head: &[u8]) -> Head {
    match head.first() {
        None => Head::More,
        Some(0x16) => tls_server_name(head),
        Some(_) => http_host(head),
    }
}

/// A big-endian number of `N` bytes at `at`.
fn be(bytes: &[u8], at: usize, n: usize) -> Option<usize> {
    let field = bytes.get(at..at + n)?;
    Some(
        field
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b)),
    )
}

/// The SNI of a ClientHello, which may span several handshake records.
fn tls_server_name(head: &[u8]) -> Head {
    let mut handshake = Vec::new();
    let mut at = 0;
    loop {
        let Some(header) = head.get(at..at + 5) else {
            return Head::More;
        };
        if header[0] != 0x16 {
            return Head::Nameless;
        }
        let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
        let Some(fragment) = head.get(at + 5..at + 5 + len) else {
            return Head::More;
        };
        handshake.extend_from_slice(fragment);
        at += 5 + len;
        if handshake.len() < 4 {
            continue;
        }
        if handshake[0] != 1 {
            return Head::Nameless;
        }
        let Some(body_len) = be(&handshake, 1, 3) else {
            return Head::More;
        };
        if let Some(body) = handshake.get(4..4 + body_len) {
            return client_hello_name(body).map_or(Head::Nameless, Head::Name);
        }
    }
}

/// The `host_name` of a ClientHello body's `server_name` extension.
fn client_hello_name(body: &[u8]) -> Option<String> {
    // Version and random, then the session id, cipher suites and compression methods.
    let mut at = 2 + 32;
    at += 1 + be(body, at, 1)?;
    at += 2 + be(body, at, 2)?;
    at += 1 + be(body, at, 1)?;
    let extensions_end = at + 2 + be(body, at, 2)?;
    at += 2;
    let mut server_name = None;
    while at + 4 <= extensions_end {
        let kind = be(body, at, 2)?;
        let len = be(body, at + 2, 2)?;
        let data = body.get(at + 4..at + 4 + len)?;
        match kind {
            0 if server_name.is_none() => {
                let mut entry = 2;
                while entry + 3 <= data.len() {
                    let name_len = be(data, entry + 1, 2)?;
                    let name = data.get(entry + 3..entry + 3 + name_len)?;
                    if data[entry] == 0 {
                        server_name = Some(hostname(name)?);
                        break;
                    }
                    entry += 3 + name_len;
                }
            }
            // A second server name.
            0 => return None,
            _ => {}
        }
        at += 4 + len;
    }
    server_name
}

/// The host an HTTP request's head is for: its `Host` without the port, which must agree with
/// the host of an absolute-form target. Anything a server might read otherwise is refused:
/// bare LF line ends, folded or padded header names, more than one `Host`, a proxy's
/// `CONNECT`.
fn http_host(head: &[u8]) -> Head {
    // A request starts with a method, capitals and a space: anything else is not HTTP.
    let method = head.iter().take_while(|b| b.is_ascii_uppercase()).count();
    match head.get(method) {
        None if method <= 16 => return Head::More,
        Some(b' ') if (1..=16).contains(&method) => {}
        _ => return Head::Nameless,
    }
    let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") else {
        return if head.len() < MAX_HEAD {
            Head::More
        } else {
            Head::Nameless
        };
    };
    let Ok(text) = std::str::from_utf8(&head[..end]) else {
        return Head::Nameless;
    };
    if text
        .split("\r\n")
        .any(|line| line.contains('\n') || line.contains('\r'))
    {
        return Head::Nameless;
    }
    let mut lines = text.split("\r\n");
    let request = lines.next().unwrap_or_default();
    let mut hosts = Vec::new();
    for line in lines {
        let Some((key, value)) = line.split_once(':') else {
            return Head::Nameless;
        };
        if key.is_empty() || key.trim() != key || line.starts_with([' ', '\t']) {
            return Head::Nameless;
        }
        if key.eq_ignore_ascii_case("host") {
            hosts.push(value.trim());
        }
    }
    let [host] = hosts[..] else {
        return Head::Nameless;
    };
    let Some(name) = host_of(host) else {
        return Head::Nameless;
    };
    // Exactly `method SP target SP version`: a server skipping extra spaces would read
    // another target than a split on one space.
    let words: Vec<&str> = request.split(' ').collect();
    let [method, target, version] = words[..] else {
        return Head::Nameless;
    };
    if target.is_empty() || !version.starts_with("HTTP/") || method == "CONNECT" {
        return Head::Nameless;
    }
    let lower = target.to_ascii_lowercase();
    if let Some(rest) = lower
        .strip_prefix("http://")
        .or_else(|| lower.strip_prefix("https://"))
    {
        let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
        if host_of(authority).as_deref() != Some(name.as_str()) {
            return Head::Nameless;
        }
    }
    Head::Name(name)
}

/// The host name of an authority (`host[:port]`), lowercase; `None` for anything else
/// (user info, an IPv6 literal, a bad name).
fn host_of(authority: &str) -> Option<String> {
    let name = match authority.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => authority,
    };
    hostname(name.as_bytes())
}

/// `raw` as a host name (letters, digits, `-`, `_`, `.`), lowercase, without a final dot.
fn hostname(raw: &[u8]) -> Option<String> {
    let name = std::str::from_utf8(raw).ok()?.trim_end_matches('.');
    let valid = (1..=253).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    valid.then(|| name.to_ascii_lowercase())
}

/// A listener on `addr` port 0 that may be bound before the address exists on any interface
/// (the rules that lead to it are written before the sandbox's interface is made).
pub(crate) fn listen(addr: Ipv4Addr) -> io::Result<(TcpListener, u16)> {
    let socket: OwnedFd = rustix::net::socket_with(
        AddressFamily::INET,
        SocketType::STREAM,
        SocketFlags::NONBLOCK | SocketFlags::CLOEXEC,
        None,
    )?;
    sockopt::set_ip_freebind(&socket, true)?;
    rustix::net::bind(&socket, &SocketAddrV4::new(addr, 0))?;
    rustix::net::listen(&socket, 128)?;
    let port = match rustix::net::getsockname(&socket)?.try_into() {
        Ok(SocketAddr::V4(local)) => local.port(),
        _ => return Err(io::Error::other("the listener has no IPv4 address")),
    };
    let listener = TcpListener::from_std(std::net::TcpListener::from(socket))?;
    Ok((listener, port))
}

/// Relays the connections of `sandbox` that arrive at `listener` whose name `policy` allows
/// on their port, to their original destination as `reach` permits; others are reset.
/// Connections from elsewhere are reset too. A relay ends when a change of the policy
/// (`changes`) no longer allows its name. The relays end with this task.
pub(crate) async fn serve(
    listener: TcpListener,
    sandbox: Ipv4Addr,
    policy: Arc<RwLock<Policy>>,
    changes: tokio::sync::watch::Receiver<u64>,
    reach: Arc<Reach>,
) {
    let mut relays = tokio::task::JoinSet::new();
    loop {
        let (stream, from) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of descriptors, most likely: a pause, not a busy loop.
                tracing::warn!(%error, "inspecting proxy cannot accept");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        while relays.try_join_next().is_some() {}
        let permit = Arc::clone(&reach.relays).try_acquire_owned();
        let Ok(permit) = permit else {
            reset(stream);
            continue;
        };
        if from.ip() != IpAddr::V4(sandbox) || relays.len() >= MAX_CONNECTIONS {
            reset(stream);
            continue;
        }
        let (policy, changes, reach) = (Arc::clone(&policy), changes.clone(), Arc::clone(&reach));
        relays.spawn(async move {
            relay(stream, policy, changes, reach).await;
            drop(permit);
        });
    }
}

/// Closes `stream` with a reset, as a refused connection looks.
fn reset(stream: TcpStream) {
    let _ = stream.set_zero_linger();
    drop(stream);
}

/// One connection: its name read, checked, and the bytes relayed both ways while the policy
/// allows it.
async fn relay(
    mut inbound: TcpStream,
    policy: Arc<RwLock<Policy>>,
    mut changes: tokio::sync::watch::Receiver<u64>,
    reach: Arc<Reach>,
) {
    let Ok(destination) = sockopt::ip_original_dst(&inbound) else {
        reset(inbound);
        return;
    };
    let mut head = Vec::with_capacity(2048);
    let read_head = async {
        let mut buf = [0u8; 4096];
        loop {
            match server_name(&head) {
                Head::More if head.len() < MAX_HEAD => {}
                Head::More => return Head::Nameless,
                decided => return decided,
            }
            match inbound.read(&mut buf).await {
                Ok(0) | Err(_) => return Head::Nameless,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
    };
    // Every change from here on is seen: the checks below read the policy after it.
    changes.borrow_and_update();
    let name = match tokio::time::timeout(HEAD_TIMEOUT, read_head).await {
        Ok(Head::Name(name)) => name,
        _ => {
            tracing::debug!(%destination, "connection without a server name refused");
            reset(inbound);
            return;
        }
    };
    let reachable = !reach
        .never
        .iter()
        .any(|c| c.contains(IpAddr::V4(*destination.ip())));
    let allowed = || {
        policy
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .allows_name(&name, destination.port())
    };
    if !(allowed() && reachable) {
        tracing::debug!(%destination, %name, "connection for a name not allowed refused");
        reset(inbound);
        return;
    }
    let outbound = tokio::time::timeout(
        CONNECT_TIMEOUT,
        connect(destination, reach.uplink.as_deref()),
    )
    .await;
    let Ok(Ok(mut outbound)) = outbound else {
        reset(inbound);
        return;
    };
    let _ = outbound.set_nodelay(true);
    let _ = inbound.set_nodelay(true);
    if outbound.write_all(&head).await.is_err() {
        reset(inbound);
        return;
    }
    let copy = tokio::io::copy_bidirectional(&mut inbound, &mut outbound);
    tokio::pin!(copy);
    loop {
        tokio::select! {
            _ = &mut copy => return,
            changed = changes.changed() => {
                // The sandbox's network is gone, or its new policy does not allow the name.
                if changed.is_err() || !allowed() {
                    return;
                }
            }
        }
    }
}

/// Connects to `destination`, leaving by `uplink` when given.
async fn connect(destination: SocketAddrV4, uplink: Option<&str>) -> io::Result<TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    if let Some(uplink) = uplink {
        socket.bind_device(Some(uplink.as_bytes()))?;
    }
    socket.connect(SocketAddr::V4(destination)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ClientHello (in `records` records) whose SNI is `name`, with an extension before it.
    fn client_hello(name: &str, records: usize) -> Vec<u8> {
        let mut sni = vec![0u8];
        sni.extend_from_slice(&(name.len() as u16).to_be_bytes());
        sni.extend_from_slice(name.as_bytes());
        let mut list = (sni.len() as u16).to_be_bytes().to_vec();
        list.extend_from_slice(&sni);
        let mut extensions = vec![0x00, 0x0b, 0x00, 0x02, 0x01, 0x00]; // ec_point_formats
        extensions.extend_from_slice(&[0x00, 0x00]);
        extensions.extend_from_slice(&(list.len() as u16).to_be_bytes());
        extensions.extend_from_slice(&list);
        let mut body = vec![0x03, 0x03];
        body.extend_from_slice(&[7u8; 32]);
        body.extend_from_slice(&[4, 1, 2, 3, 4]); // session id
        body.extend_from_slice(&[0, 4, 0x13, 0x01, 0x13, 0x02]); // cipher suites
        body.extend_from_slice(&[1, 0]); // compression
        body.extend_from_slice(&(extensions.len() as u16).to_be_bytes());
        body.extend_from_slice(&extensions);
        let mut handshake = vec![1];
        handshake.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        handshake.extend_from_slice(&body);
        let mut out = Vec::new();
        for chunk in handshake.chunks(handshake.len().div_ceil(records)) {
            out.extend_from_slice(&[0x16, 0x03, 0x01]);
            out.extend_from_slice(&(chunk.len() as u16).to_be_bytes());
            out.extend_from_slice(chunk);
        }
        out
    }

    #[test]
    fn tls_names_whole_split_and_cut() {
        let hello = client_hello("PyPI.org", 1);
        assert_eq!(server_name(&hello), Head::Name("pypi.org".into()));
        let split = client_hello("files.pythonhosted.org", 3);
        assert_eq!(
            server_name(&split),
            Head::Name("files.pythonhosted.org".into())
        );
        for cut in [1, 5, 20, split.len() - 1] {
            assert_eq!(server_name(&split[..cut]), Head::More, "cut at {cut}");
        }
        // An alert record, a server hello, a name that is not one.
        assert_eq!(server_name(&[0x16, 3, 1, 0, 4, 2, 0, 0, 0]), Head::Nameless);
        let mut alert = hello.clone();
        alert[0] = 0x15;
        assert_eq!(server_name(&alert), Head::Nameless, "not a handshake");
        assert_eq!(
            server_name(&client_hello("a b", 1)),
            Head::Nameless,
            "not a host name"
        );
        // An Encrypted Client Hello extension (Chromium sends one, GREASE, to every site) is
        // judged by the outer name: sandboxes get no ECH configuration from their resolver.
        let mut ech = client_hello("inet.test", 1);
        let at = ech.windows(2).position(|w| w == [0x00, 0x0b]).unwrap();
        ech[at] = 0xfe;
        ech[at + 1] = 0x0d;
        assert_eq!(server_name(&ech), Head::Name("inet.test".into()));
    }

    #[test]
    fn http_hosts() {
        let get = |head: &str| server_name(head.as_bytes());
        assert_eq!(
            get("GET / HTTP/1.1\r\nUser-Agent: x\r\nHOST: Example.COM:8080\r\n\r\n"),
            Head::Name("example.com".into())
        );
        assert_eq!(
            get("GET / HTTP/1.1\r\nhost: inet.test\r\n\r\nbody"),
            Head::Name("inet.test".into())
        );
        assert_eq!(get("GET / HTTP/1.1\r\nHost: inet"), Head::More);
        assert_eq!(get("GE"), Head::More);
        assert_eq!(get("get / HTTP/1.1\r\n"), Head::Nameless, "not a method");
        assert_eq!(get("GET / HTTP/1.0\r\n\r\n"), Head::Nameless);
        assert_eq!(get("SSH-2.0-OpenSSH\r\n\r\n"), Head::Nameless);
        assert_eq!(
            get("GET / HTTP/1.1\r\nHost: [::1]:80\r\n\r\n"),
            Head::Nameless
        );
        // What a server could read differently from the proxy is refused.
        for (what, head) in [
            (
                "bare LF",
                "GET / HTTP/1.1\nHost: evil.test\n\r\nHost: inet.test\r\n\r\n",
            ),
            (
                "two hosts",
                "GET / HTTP/1.1\r\nHost: inet.test\r\nHost: evil.test\r\n\r\n",
            ),
            ("padded name", "GET / HTTP/1.1\r\nHost : inet.test\r\n\r\n"),
            (
                "folded",
                "GET / HTTP/1.1\r\nX: a\r\n Host: inet.test\r\n\r\n",
            ),
            (
                "absolute target elsewhere",
                "GET http://evil.test/ HTTP/1.1\r\nHost: inet.test\r\n\r\n",
            ),
            (
                "connect",
                "CONNECT evil.test:443 HTTP/1.1\r\nHost: inet.test\r\n\r\n",
            ),
            (
                "two spaces",
                "GET  http://evil.test/ HTTP/1.1\r\nHost: inet.test\r\n\r\n",
            ),
        ] {
            assert_eq!(get(head), Head::Nameless, "{what}");
        }
        assert_eq!(
            get("GET HTTP://Inet.test:80/x?y HTTP/1.1\r\nHost: inet.test\r\n\r\n"),
            Head::Name("inet.test".into()),
            "an absolute target that agrees"
        );
        let endless = format!("GET / HTTP/1.1\r\nX: {}", "a".repeat(MAX_HEAD));
        assert_eq!(get(&endless), Head::Nameless);
    }

    #[tokio::test]
    async fn a_listener_may_be_bound_before_its_address_exists() {
        // An address of the documentation range, on no interface of this host.
        let (_listener, port) = listen(Ipv4Addr::new(192, 0, 2, 77)).unwrap();
        assert_ne!(port, 0);
    }
}
