//! Netlink from the worker itself, with no program spawned, for what sits on a create's path.
//! rtnetlink: a sandbox's veth pair is created with its peer (`eth0`) already in the
//! sandbox's network namespace, the host side addressed and up, then a short-lived thread
//! joins the namespace to address `eth0`, bring it up and route through the host side.
//! nfnetlink: elements added to sets of an nftables table in one batch (all or none). Just
//! the few messages this needs, each acknowledged.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::Arc;

use rustix::net::netlink::SocketAddrNetlink;
use rustix::net::{AddressFamily, RecvFlags, SendFlags, SocketFlags, SocketType};
use rustix::thread::{move_into_link_name_space, LinkNameSpaceType};

use crate::backend::BackendError;

const RTM_NEWLINK: u16 = 16;
const RTM_NEWADDR: u16 = 20;
const RTM_NEWROUTE: u16 = 24;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
const IFLA_IFNAME: u16 = 3;
const IFLA_LINKINFO: u16 = 18;
const IFLA_NET_NS_FD: u16 = 28;
const IFLA_INFO_KIND: u16 = 1;
const IFLA_INFO_DATA: u16 = 2;
const VETH_INFO_PEER: u16 = 1;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const RTA_GATEWAY: u16 = 5;
const IFF_UP: u32 = 0x1;
const AF_INET: u8 = 2;
const RT_TABLE_MAIN: u8 = 254;
const RTPROT_BOOT: u8 = 3;
const RTN_UNICAST: u8 = 1;
const NLA_F_NESTED: u16 = 0x8000;
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 16;
const NFNL_MSG_BATCH_END: u16 = 17;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFPROTO_INET: u8 = 1;
const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_DATA_VALUE: u16 = 1;
/// The length of an interface name in a set key (`IFNAMSIZ`).
const IFNAMSIZ: usize = 16;

/// The prefix of every sandbox's `/30`.
const PREFIX: u8 = 30;

/// One netlink message being built: header, fixed part, attributes (nested ones patched in
/// place).
struct Message {
    bytes: Vec<u8>,
}

impl Message {
    fn new(kind: u16, flags: u16) -> Self {
        Self::numbered(kind, NLM_F_ACK | flags, 1)
    }

    /// A message with sequence number `seq`; `flags` besides `NLM_F_REQUEST`.
    fn numbered(kind: u16, flags: u16, seq: u32) -> Self {
        let mut bytes = Vec::with_capacity(256);
        bytes.extend_from_slice(&0u32.to_ne_bytes()); // length, set by `finish`
        bytes.extend_from_slice(&kind.to_ne_bytes());
        bytes.extend_from_slice(&(NLM_F_REQUEST | flags).to_ne_bytes());
        bytes.extend_from_slice(&seq.to_ne_bytes());
        bytes.extend_from_slice(&0u32.to_ne_bytes()); // port: the kernel's
        Self { bytes }
    }

    /// An nfnetlink message's `nfgenmsg`: family, version 0, resource id (big-endian).
    fn nfgen(&mut self, family: u8, resource: u16) -> &mut Self {
        self.bytes.extend_from_slice(&[family, 0]);
        self.bytes.extend_from_slice(&resource.to_be_bytes());
        self
    }

    /// An `ifinfomsg` (also the head of a veth peer).
    fn link_info(&mut self, index: u32, flags: u32, change: u32) -> &mut Self {
        self.bytes.extend_from_slice(&[0, 0]); // family, padding
        self.bytes.extend_from_slice(&0u16.to_ne_bytes()); // type
        self.bytes.extend_from_slice(&index.to_ne_bytes());
        self.bytes.extend_from_slice(&flags.to_ne_bytes());
        self.bytes.extend_from_slice(&change.to_ne_bytes());
        self
    }

    fn attr(&mut self, kind: u16, payload: &[u8]) -> &mut Self {
        let len = 4 + payload.len();
        self.bytes.extend_from_slice(&(len as u16).to_ne_bytes());
        self.bytes.extend_from_slice(&kind.to_ne_bytes());
        self.bytes.extend_from_slice(payload);
        self.pad();
        self
    }

    /// A NUL-terminated string attribute.
    fn name(&mut self, kind: u16, name: &str) -> &mut Self {
        let mut payload = name.as_bytes().to_vec();
        payload.push(0);
        self.attr(kind, &payload)
    }

    /// Opens a nested attribute; `close` with what this returns.
    fn open(&mut self, kind: u16) -> usize {
        let at = self.bytes.len();
        self.attr(kind, &[]);
        at
    }

    /// Opens a nested attribute flagged as such (nfnetlink wants the flag).
    fn open_nested(&mut self, kind: u16) -> usize {
        self.open(kind | NLA_F_NESTED)
    }

    fn close(&mut self, at: usize) -> &mut Self {
        let len = (self.bytes.len() - at) as u16;
        self.bytes[at..at + 2].copy_from_slice(&len.to_ne_bytes());
        self
    }

    fn pad(&mut self) {
        while !self.bytes.len().is_multiple_of(4) {
            self.bytes.push(0);
        }
    }

    fn finish(&mut self) -> &[u8] {
        let len = self.bytes.len() as u32;
        self.bytes[..4].copy_from_slice(&len.to_ne_bytes());
        &self.bytes
    }
}

/// A netlink socket (route, or netfilter) of the calling thread's network namespace.
struct Netlink {
    socket: OwnedFd,
}

impl Netlink {
    fn open() -> io::Result<Self> {
        Self::open_protocol(None)
    }

    fn open_protocol(protocol: Option<rustix::net::Protocol>) -> io::Result<Self> {
        let socket = rustix::net::socket_with(
            AddressFamily::NETLINK,
            SocketType::RAW,
            SocketFlags::CLOEXEC,
            protocol,
        )?;
        // An answer that never comes is an error, not a hang.
        rustix::net::sockopt::set_socket_timeout(
            &socket,
            rustix::net::sockopt::Timeout::Recv,
            Some(std::time::Duration::from_secs(10)),
        )?;
        Ok(Self { socket })
    }

    /// Sends `message` and waits for its acknowledgement; a refusal is its errno.
    fn request(&self, message: &mut Message) -> io::Result<()> {
        self.send(message.finish(), 1)
    }

    /// Sends `bytes` (one or more messages) and waits for `acks` acknowledgements; the first
    /// refusal is its errno.
    fn send(&self, bytes: &[u8], mut acks: usize) -> io::Result<()> {
        rustix::net::sendto(
            &self.socket,
            bytes,
            SendFlags::empty(),
            &SocketAddrNetlink::new(0, 0),
        )?;
        let mut buf = [0u8; 8192];
        while acks > 0 {
            let (received, _) = rustix::net::recv(&self.socket, &mut buf, RecvFlags::empty())?;
            let reply = &buf[..received.min(buf.len())];
            let mut at = 0;
            while at + 16 <= reply.len() {
                let len = u32::from_ne_bytes(reply[at..at + 4].try_into().expect("4 bytes"));
                let kind = u16::from_ne_bytes(reply[at + 4..at + 6].try_into().expect("2 bytes"));
                if kind == NLMSG_ERROR {
                    let code = reply
                        .get(at + 16..at + 20)
                        .map(|b| i32::from_ne_bytes(b.try_into().expect("4 bytes")))
                        .ok_or_else(|| io::Error::other("short netlink error message"))?;
                    if code != 0 {
                        return Err(io::Error::from_raw_os_error(-code));
                    }
                    acks = acks.saturating_sub(1);
                }
                if len < 16 {
                    break;
                }
                at += (len as usize).next_multiple_of(4);
            }
        }
        Ok(())
    }

    fn index(&self, name: &str) -> io::Result<u32> {
        Ok(rustix::net::netdevice::name_to_index(&self.socket, name)?)
    }

    /// Gives interface `index` the address `addr/PREFIX`.
    fn add_address(&self, index: u32, addr: Ipv4Addr) -> io::Result<()> {
        let mut message = Message::new(RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL);
        message.bytes.extend_from_slice(&[AF_INET, PREFIX, 0, 0]);
        message.bytes.extend_from_slice(&index.to_ne_bytes());
        message
            .attr(IFA_LOCAL, &addr.octets())
            .attr(IFA_ADDRESS, &addr.octets());
        self.request(&mut message)
    }

    fn set_up(&self, index: u32) -> io::Result<()> {
        let mut message = Message::new(RTM_NEWLINK, 0);
        message.link_info(index, IFF_UP, IFF_UP);
        self.request(&mut message)
    }
}

/// One key of an nftables set: its fields, each padded to four bytes, as the kernel
/// concatenates them (`ifname . ipv4_addr`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct SetKey(Vec<u8>);

impl SetKey {
    /// An interface name field (16 bytes, zero-padded).
    pub(crate) fn ifname(mut self, name: &str) -> Self {
        let mut field = [0u8; IFNAMSIZ];
        let bytes = name.as_bytes();
        field[..bytes.len().min(IFNAMSIZ - 1)]
            .copy_from_slice(&bytes[..bytes.len().min(IFNAMSIZ - 1)]);
        self.0.extend_from_slice(&field);
        self
    }

    /// An IPv4 address field.
    pub(crate) fn ipv4(mut self, addr: Ipv4Addr) -> Self {
        self.0.extend_from_slice(&addr.octets());
        self
    }
}

/// Adds `elements` (set name, key) to sets of the `inet` table `table`, in one batch: all of
/// them or, on a refusal, none.
pub(crate) fn add_set_elements(table: &str, elements: &[(&'static str, SetKey)]) -> io::Result<()> {
    let socket = Netlink::open_protocol(Some(rustix::net::netlink::NETFILTER))?;
    let mut batch = Vec::new();
    let mut begin = Message::numbered(NFNL_MSG_BATCH_BEGIN, 0, 1);
    begin.nfgen(0, NFNL_SUBSYS_NFTABLES);
    batch.extend_from_slice(begin.finish());
    for (i, (set, key)) in elements.iter().enumerate() {
        let mut m = Message::numbered(
            (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWSETELEM,
            NLM_F_CREATE | NLM_F_ACK,
            2 + i as u32,
        );
        m.nfgen(NFPROTO_INET, 0)
            .name(NFTA_SET_ELEM_LIST_TABLE, table)
            .name(NFTA_SET_ELEM_LIST_SET, set);
        let list = m.open_nested(NFTA_SET_ELEM_LIST_ELEMENTS);
        let element = m.open_nested(NFTA_LIST_ELEM);
        let field = m.open_nested(NFTA_SET_ELEM_KEY);
        m.attr(NFTA_DATA_VALUE, &key.0);
        m.close(field).close(element).close(list);
        batch.extend_from_slice(m.finish());
    }
    let mut end = Message::numbered(NFNL_MSG_BATCH_END, 0, 2 + elements.len() as u32);
    end.nfgen(0, NFNL_SUBSYS_NFTABLES);
    batch.extend_from_slice(end.finish());
    socket.send(&batch, elements.len())
}

/// Makes the veth pair of a sandbox: `host_if` with `gateway` on the worker's side, `eth0`
/// with `sandbox` in `netns` (its network namespace), its default route through `gateway`.
/// Blocks (a few system calls) on a thread of its own, which joins `netns` and ends.
pub(crate) async fn plumb(
    netns: Arc<OwnedFd>,
    host_if: &str,
    gateway: Ipv4Addr,
    sandbox: Ipv4Addr,
) -> Result<(), BackendError> {
    let host_if = host_if.to_string();
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("traforato-netlink".to_string())
        .spawn(move || {
            let _ = tx.send(plumb_blocking(&netns, &host_if, gateway, sandbox));
        })
        .map_err(|e| BackendError::io("spawn the network plumbing thread", e))?;
    rx.await
        .map_err(|_| BackendError::task("network plumbing", "ended without a result"))?
}

/// Runs on a dedicated thread that ends right after, so its namespace never leaks into other
/// work.
fn plumb_blocking(
    netns: &OwnedFd,
    host_if: &str,
    gateway: Ipv4Addr,
    sandbox: Ipv4Addr,
) -> Result<(), BackendError> {
    let step = |what: &str| {
        let what = what.to_string();
        move |e: io::Error| BackendError::io(what, e)
    };
    let host = Netlink::open().map_err(step("open a netlink socket"))?;
    let mut veth = Message::new(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL);
    veth.link_info(0, 0, 0).name(IFLA_IFNAME, host_if);
    let linkinfo = veth.open(IFLA_LINKINFO);
    veth.name(IFLA_INFO_KIND, "veth");
    let data = veth.open(IFLA_INFO_DATA);
    let peer = veth.open(VETH_INFO_PEER);
    veth.link_info(0, 0, 0)
        .name(IFLA_IFNAME, "eth0")
        .attr(IFLA_NET_NS_FD, &netns.as_raw_fd().to_ne_bytes());
    veth.close(peer).close(data).close(linkinfo);
    host.request(&mut veth)
        .map_err(step(&format!("create the veth pair {host_if}")))?;
    let index = host.index(host_if).map_err(step("find the host side"))?;
    host.add_address(index, gateway)
        .map_err(step(&format!("address {host_if}")))?;
    host.set_up(index)
        .map_err(step(&format!("bring {host_if} up")))?;
    move_into_link_name_space(netns.as_fd(), Some(LinkNameSpaceType::Network))
        .map_err(|e| step("join the sandbox's network namespace")(e.into()))?;
    let inside = Netlink::open().map_err(step("open a netlink socket in the sandbox"))?;
    let eth0 = inside.index("eth0").map_err(step("find eth0"))?;
    inside
        .add_address(eth0, sandbox)
        .map_err(step("address eth0"))?;
    inside.set_up(eth0).map_err(step("bring eth0 up"))?;
    let mut route = Message::new(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_EXCL);
    // Family, destination and source lengths, TOS, table, protocol, scope, type; flags.
    route
        .bytes
        .extend_from_slice(&[AF_INET, 0, 0, 0, RT_TABLE_MAIN, RTPROT_BOOT, 0, RTN_UNICAST]);
    route.bytes.extend_from_slice(&0u32.to_ne_bytes());
    route.attr(RTA_GATEWAY, &gateway.octets());
    inside
        .request(&mut route)
        .map_err(step("route through the host side"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_keys_are_fields_padded_to_four_bytes() {
        let key = SetKey::default()
            .ifname("tf0123456789ab")
            .ipv4(Ipv4Addr::new(10, 213, 0, 1));
        assert_eq!(key.0.len(), 16 + 4);
        assert_eq!(&key.0[..15], b"tf0123456789ab\0");
        assert_eq!(&key.0[16..], &[10, 213, 0, 1]);
    }

    #[test]
    fn nested_attributes_are_measured_and_padded() {
        let mut m = Message::new(RTM_NEWLINK, 0);
        m.link_info(0, 0, 0);
        let outer = m.open(IFLA_LINKINFO);
        m.name(IFLA_INFO_KIND, "veth");
        m.close(outer);
        let bytes = m.finish().to_vec();
        assert_eq!(bytes.len(), 16 + 16 + 4 + 12);
        assert_eq!(u32::from_ne_bytes(bytes[..4].try_into().unwrap()), 48);
        // The nest: 4 bytes of its own and the 12 of "veth\0" padded (8 + 4).
        assert_eq!(u16::from_ne_bytes(bytes[32..34].try_into().unwrap()), 16);
        assert_eq!(u16::from_ne_bytes(bytes[36..38].try_into().unwrap()), 9);
        assert_eq!(&bytes[40..45], b"veth\0");
    }
}
