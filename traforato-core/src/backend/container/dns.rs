//! The DNS forwarder of a sandbox with egress: relays its queries to the upstream resolver
//! and, under an allow-list, answers names the list does not allow with NXDOMAIN itself and
//! lets the addresses of allowed answers through the firewall (for their TTL) before the
//! sandbox sees them; SVCB/HTTPS records (which carry Encrypted Client Hello configurations)
//! are answered with none. Just enough of the DNS wire format for that: the question, and the A
//! records of an answer.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::net::UdpSocket;

use crate::network::{Egress, Policy};

/// Most queries of one sandbox in flight at once; more are dropped (a resolver's clients
/// retry).
const MAX_QUERIES_IN_FLIGHT: usize = 32;

/// The record types that carry Encrypted Client Hello configurations.
const QTYPE_SVCB: u16 = 64;
const QTYPE_HTTPS: u16 = 65;

/// Shortest and longest time an answer's addresses stay allowed.
const MIN_ALLOW: Duration = Duration::from_secs(60);
const MAX_ALLOW: Duration = Duration::from_secs(24 * 3600);

/// The question of a query: its name (lowercase, no final dot) and type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Question {
    pub name: String,
    pub qtype: u16,
}

/// Reads a name at `at`; returns it and the offset after it in place (pointers followed for
/// the text, at most 32 of them).
fn read_name(msg: &[u8], mut at: usize) -> Option<(String, usize)> {
    let mut labels: Vec<String> = Vec::new();
    let mut end = None;
    let mut jumps = 0;
    loop {
        let len = *msg.get(at)? as usize;
        match len {
            0 => {
                return Some((labels.join("."), end.unwrap_or(at + 1)));
            }
            l if l & 0xc0 == 0xc0 => {
                let pointer = ((l & 0x3f) << 8) | *msg.get(at + 1)? as usize;
                end.get_or_insert(at + 2);
                jumps += 1;
                if jumps > 32 {
                    return None;
                }
                at = pointer;
            }
            l if l < 64 => {
                let label = msg.get(at + 1..at + 1 + l)?;
                labels.push(String::from_utf8_lossy(label).to_ascii_lowercase());
                at += 1 + l;
            }
            _ => return None,
        }
    }
}

/// The first question of a message.
pub(crate) fn question(msg: &[u8]) -> Option<Question> {
    if msg.len() < 12 || u16::from_be_bytes([msg[4], msg[5]]) == 0 {
        return None;
    }
    let (name, at) = read_name(msg, 12)?;
    let qtype = u16::from_be_bytes([*msg.get(at)?, *msg.get(at + 1)?]);
    Some(Question { name, qtype })
}

/// The A records of an answer (address and TTL), whatever name they are for (a CNAME chain's
/// addresses belong to the name asked).
pub(crate) fn a_records(msg: &[u8]) -> Vec<(Ipv4Addr, u32)> {
    let mut out = Vec::new();
    let Some(header) = msg.get(..12) else {
        return out;
    };
    let questions = u16::from_be_bytes([header[4], header[5]]);
    let answers = u16::from_be_bytes([header[6], header[7]]);
    let mut at = 12;
    for _ in 0..questions {
        let Some((_, next)) = read_name(msg, at) else {
            return out;
        };
        at = next + 4;
    }
    for _ in 0..answers {
        let Some((_, next)) = read_name(msg, at) else {
            return out;
        };
        let Some(fixed) = msg.get(next..next + 10) else {
            return out;
        };
        let rtype = u16::from_be_bytes([fixed[0], fixed[1]]);
        let class = u16::from_be_bytes([fixed[2], fixed[3]]);
        let ttl = u32::from_be_bytes([fixed[4], fixed[5], fixed[6], fixed[7]]);
        let len = u16::from_be_bytes([fixed[8], fixed[9]]) as usize;
        let Some(data) = msg.get(next + 10..next + 10 + len) else {
            return out;
        };
        if rtype == 1 && class == 1 && len == 4 {
            out.push((Ipv4Addr::new(data[0], data[1], data[2], data[3]), ttl));
        }
        at = next + 10 + len;
    }
    out
}

/// The NXDOMAIN answer to `query` (its id, question and recursion flag kept).
pub(crate) fn nxdomain(query: &[u8]) -> Option<Vec<u8>> {
    empty_answer(query, 3)
}

/// An answer to `query` without records, with response code `rcode` (0: the name exists
/// but has none of that type; 3: NXDOMAIN).
fn empty_answer(query: &[u8], rcode: u8) -> Option<Vec<u8>> {
    let (_, end) = read_name(query, 12)?;
    let question = query.get(12..end + 4)?;
    let mut answer = Vec::with_capacity(12 + question.len());
    answer.extend_from_slice(&query[..2]);
    // QR, the query's opcode and RD; RA; the response code.
    answer.push(0x80 | (query[2] & 0x79));
    answer.push(0x80 | rcode);
    answer.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]);
    answer.extend_from_slice(question);
    Some(answer)
}

/// What the forwarder needs of the firewall: letting addresses of an allowed name through.
pub(crate) trait AllowAddresses: Send + Sync + 'static {
    /// Lets the sandbox reach `addrs` for `ttl`, on each of `ports` (`None`: any port), in
    /// one change of the firewall.
    fn allow(
        &self,
        addrs: Vec<Ipv4Addr>,
        ports: Vec<Option<u16>>,
        ttl: Duration,
    ) -> impl std::future::Future<Output = ()> + Send;
}

/// Relays each query from `sandbox` to `upstream` and the answer back, each on a socket of
/// its own, at most [`MAX_QUERIES_IN_FLIGHT`] at once; queries from elsewhere are ignored.
/// Under an allow-list ([`Egress::Allow`] in `policy`), names it does not allow get NXDOMAIN
/// and the addresses of allowed answers go through `firewall` before the answer does. The
/// relays end with this task.
pub(crate) async fn forward<F: AllowAddresses>(
    socket: Arc<UdpSocket>,
    sandbox: IpAddr,
    upstream: SocketAddr,
    policy: Arc<RwLock<Policy>>,
    firewall: Arc<F>,
) {
    let mut relays = tokio::task::JoinSet::new();
    let mut buf = vec![0u8; 4096];
    loop {
        let Ok((n, from)) = socket.recv_from(&mut buf).await else {
            return;
        };
        while relays.try_join_next().is_some() {}
        if from.ip() != sandbox || relays.len() >= MAX_QUERIES_IN_FLIGHT {
            continue;
        }
        let query = buf[..n].to_vec();
        let current = policy.read().unwrap_or_else(|e| e.into_inner()).clone();
        // Ports of the rules that allow the name: `None` in the list means any port.
        let ports: Option<Vec<Option<u16>>> = match current.egress() {
            Egress::Allow => {
                let Some(q) = question(&query) else {
                    continue;
                };
                let ports: Vec<Option<u16>> = current
                    .rules()
                    .iter()
                    .filter(|rule| rule.names(&q.name))
                    .map(|rule| rule.port())
                    .collect();
                if ports.is_empty() {
                    if let Some(refusal) = nxdomain(&query) {
                        let _ = socket.send_to(&refusal, from).await;
                    }
                    continue;
                }
                // No SVCB/HTTPS records: they carry Encrypted Client Hello configurations,
                // and a connection's name must stay readable for the inspecting proxy.
                if matches!(q.qtype, QTYPE_SVCB | QTYPE_HTTPS) {
                    if let Some(nothing) = empty_answer(&query, 0) {
                        let _ = socket.send_to(&nothing, from).await;
                    }
                    continue;
                }
                Some(ports)
            }
            _ => None,
        };
        let socket = Arc::clone(&socket);
        let firewall = Arc::clone(&firewall);
        relays.spawn(async move {
            let bind = if upstream.is_ipv4() {
                "0.0.0.0:0"
            } else {
                "[::]:0"
            };
            let Ok(relay) = UdpSocket::bind(bind).await else {
                return;
            };
            if relay.send_to(&query, upstream).await.is_err() {
                return;
            }
            let mut answer = vec![0u8; 65_535];
            let received =
                tokio::time::timeout(Duration::from_secs(5), relay.recv_from(&mut answer)).await;
            let Ok(Ok((n, source))) = received else {
                return;
            };
            if source != upstream {
                return;
            }
            let answer = &answer[..n];
            if let Some(ports) = ports {
                let records = a_records(answer);
                if !records.is_empty() {
                    let ttl = records.iter().map(|(_, ttl)| *ttl).min().unwrap_or(0);
                    let ttl = Duration::from_secs(u64::from(ttl)).clamp(MIN_ALLOW, MAX_ALLOW);
                    let addrs: Vec<Ipv4Addr> = records.into_iter().map(|(a, _)| a).collect();
                    firewall.allow(addrs, ports, ttl).await;
                }
            }
            let _ = socket.send_to(answer, from).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A query for `name` (type A, id 0x1234, recursion desired).
    fn query(name: &str) -> Vec<u8> {
        let mut q = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        for label in name.split('.') {
            q.push(label.len() as u8);
            q.extend_from_slice(label.as_bytes());
        }
        q.extend_from_slice(&[0, 0, 1, 0, 1]);
        q
    }

    #[test]
    fn questions_and_refusals() {
        let q = query("PyPI.org");
        assert_eq!(
            question(&q),
            Some(Question {
                name: "pypi.org".into(),
                qtype: 1
            })
        );
        let refused = nxdomain(&q).unwrap();
        assert_eq!(&refused[..2], &[0x12, 0x34], "same id");
        assert_eq!(refused[2] & 0x80, 0x80, "a response");
        assert_eq!(refused[3] & 0x0f, 3, "NXDOMAIN");
        assert_eq!(&refused[12..], &q[12..], "the question echoed");
        let nothing = empty_answer(&q, 0).unwrap();
        assert_eq!(nothing[3] & 0x0f, 0, "NOERROR, no records");
        assert_eq!(&nothing[6..8], &[0, 0]);
        assert_eq!(question(&[0u8; 5]), None);
        assert_eq!(question(&q[..14]), None);
    }

    #[test]
    fn a_records_through_a_cname_with_compression() {
        let mut msg = query("www.example.com");
        msg[2] = 0x81;
        msg[3] = 0x80;
        msg[7] = 2; // two answers
                    // www.example.com CNAME cdn.example.com (pointer to "example.com" at 16)
        msg.extend_from_slice(&[0xc0, 12, 0, 5, 0, 1, 0, 0, 0, 60, 0, 6]);
        msg.extend_from_slice(&[3, b'c', b'd', b'n', 0xc0, 16]);
        // cdn.example.com A 93.184.216.34, TTL 300 (pointer to the CNAME's target)
        let cname_target = msg.len() - 6;
        msg.extend_from_slice(&[0xc0, cname_target as u8, 0, 1, 0, 1, 0, 0, 1, 44, 0, 4]);
        msg.extend_from_slice(&[93, 184, 216, 34]);
        assert_eq!(
            a_records(&msg),
            vec![(Ipv4Addr::new(93, 184, 216, 34), 300)]
        );
        // A loop of pointers ends.
        let mut looped = query("a.b");
        looped[5] = 1;
        looped[12] = 0xc0;
        looped[13] = 12;
        assert_eq!(question(&looped), None);
        assert!(a_records(&msg[..msg.len() - 2]).is_empty(), "cut short");
    }
}
