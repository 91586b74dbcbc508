//! Network egress of container sandboxes (`egress: all` and `allow`): a veth pair per sandbox (`eth0`
//! inside, `tf<id>` on the host) with addresses from a private range, one `/30` each; NAT to
//! the host's routes; one nftables table owned by this backend (`inet traforato_<tag>`) that
//! forwards only sandboxes whose egress is on and never to the blocked ranges (private,
//! loopback, link-local with the metadata address, the host's own addresses, other
//! sandboxes), and keeps sandboxes away from the host's own services but their DNS forwarder;
//! and a DNS forwarder per sandbox on its host-side address, so that the sandbox resolves
//! through the host's resolver. Under an allow-list a sandbox's traffic goes through a chain of
//! its own (`a_<interface>`): the ranges it lists (even blocked ones: listed explicitly), then,
//! never in the blocked ranges, the addresses its forwarder resolved for allowed names, for
//! their TTL (sets `d_<interface>`, and `p_<interface>` with ports). Its TCP connections to
//! ports 80 and 443 of those addresses are redirected (chain `i_<interface>`) to an inspecting
//! proxy of its own on its host-side address, which lets through only those whose TLS server
//! name or HTTP `Host` the list allows (QUIC to them is dropped: clients fall back to TCP).
//!
//! The veth pairs are made through netlink (`netlink.rs`); the program `nft` (nftables) writes
//! the rules, and `ip` deletes pairs and lists the host's addresses; a host without them
//! refuses egress with what to install. `net.ipv4.ip_forward` is turned on when needed
//! and turned back off at shutdown only if this backend turned it on. On a host running
//! Docker (whose `FORWARD` policy is `DROP`), two `iptables` rules in its `DOCKER-USER` chain
//! let the sandboxes' traffic through; they go at shutdown.

use std::collections::BTreeSet;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::{AsRawFd, OwnedFd};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::UdpSocket;
use tokio::process::Command;
use tokio::sync::OnceCell;
use tokio::task::JoinHandle;

use super::dns::{self, AllowAddresses};
use super::{inspect, netlink};
use crate::backend::BackendError;
use crate::network::{AllowRule, Bandwidth, Cidr, Egress, Policy};

/// The default range sandboxes get their addresses from: one `/30` each.
pub const DEFAULT_RANGE: &str = "10.213.0.0/16";

/// Ranges a sandbox never reaches with `egress: all` (besides the host's own addresses and
/// [`ALWAYS_BLOCKED`]).
pub const DEFAULT_BLOCKED: [&str; 10] = [
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.0.0.0/24",
    "192.168.0.0/16",
    "198.18.0.0/15",
    "224.0.0.0/3",
];

/// Blocked whatever the configuration says: link-local, where cloud metadata services
/// answer (`169.254.169.254`).
pub const ALWAYS_BLOCKED: &str = "169.254.0.0/16";

/// Docker's `iptables` chain for other programs' rules: on a host running Docker, whose
/// `FORWARD` policy is `DROP`, sandbox traffic passes only if accepted there.
const DOCKER_CHAIN: &str = "DOCKER-USER";

/// How long one `ip` or `nft` call may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);

/// The network settings of a backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkSettings {
    /// Where sandbox addresses come from (IPv4, at most a `/29`... a `/8`).
    pub range: String,
    /// Ranges never reachable (IPv4 CIDRs). Default [`DEFAULT_BLOCKED`]; [`ALWAYS_BLOCKED`]
    /// is added to any list.
    pub blocked: Vec<String>,
    /// The resolver the sandboxes' DNS forwarder asks; `None`: the first `nameserver` of
    /// the host's `/etc/resolv.conf`.
    pub dns_upstream: Option<SocketAddr>,
    /// The interface sandbox traffic leaves by; `None`: the interface of the host's default
    /// route (any interface when there is none).
    pub uplink: Option<String>,
    /// Each sandbox's rate each way (a token bucket on both ends of its veth pair); `None`:
    /// unlimited.
    pub bandwidth: Option<Bandwidth>,
}

impl Default for NetworkSettings {
    fn default() -> Self {
        Self {
            range: DEFAULT_RANGE.to_string(),
            blocked: DEFAULT_BLOCKED.iter().map(|s| s.to_string()).collect(),
            dns_upstream: None,
            uplink: None,
            bandwidth: None,
        }
    }
}

/// The egress plumbing of one backend.
pub(crate) struct Networking {
    table: String,
    range: (Ipv4Addr, u8),
    blocked: Vec<Cidr>,
    /// Where inspected connections never go: the blocked ranges, loopback, `0.0.0.0/8` and
    /// the sandboxes' own range.
    never: Vec<Cidr>,
    /// The budget of inspected connections of all the sandboxes.
    relays: Arc<tokio::sync::Semaphore>,
    dns_upstream: Option<SocketAddr>,
    uplink: Option<String>,
    /// The uplink the table was made with (the default route's when none is configured):
    /// inspected connections leave by it too.
    uplink_in_use: std::sync::OnceLock<Option<String>>,
    bandwidth: Option<Bandwidth>,
    slots: Mutex<Slots>,
    ready: OnceCell<()>,
    /// This backend turned `ip_forward` on.
    forwarding_ours: AtomicBool,
    /// This backend's sandboxes are let past Docker's `FORWARD` policy.
    docker_passed: AtomicBool,
    /// Its table exists (it may have failed to become ready after).
    table_made: AtomicBool,
}

impl std::fmt::Debug for Networking {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Networking")
            .field("table", &self.table)
            .finish_non_exhaustive()
    }
}

/// The `/30`s in use, handed out round-robin so that a freed one is reused last.
#[derive(Debug, Default)]
struct Slots {
    used: BTreeSet<u32>,
    next: u32,
}

/// A sandbox's side of the plumbing. Dropped, it deletes the veth pair and its set elements
/// and only then frees its `/30`: a new sandbox never shares an address with an interface
/// that still exists.
pub(crate) struct Attachment {
    networking: Arc<Networking>,
    slot: u32,
    rules: Rules,
    /// What the DNS forwarder and the inspecting proxy enforce.
    policy: Arc<RwLock<Policy>>,
    dns: JoinHandle<()>,
    proxy: JoinHandle<()>,
    /// Counts the changes of policy (the proxy's relays check their names again).
    changes: tokio::sync::watch::Sender<u64>,
    /// `policy` is what the kernel holds (false after a change and its undoing both failed).
    certain: bool,
}

/// What a sandbox's rules are written with.
#[derive(Debug, Clone)]
struct Rules {
    table: String,
    /// The host side of its veth pair.
    host_if: String,
    /// The host side's address.
    gateway: Ipv4Addr,
    /// The port of its inspecting proxy on `gateway`.
    proxy_port: u16,
}

/// A sandbox's allow-list sets, which its DNS forwarder fills.
struct SandboxFirewall {
    rules: Rules,
}

impl AllowAddresses for SandboxFirewall {
    async fn allow(&self, addrs: Vec<Ipv4Addr>, ports: Vec<Option<u16>>, ttl: Duration) {
        let t = &self.rules.table;
        let mut script = String::new();
        for port in ports {
            let (set, elements): (String, Vec<String>) = match port {
                Some(port) => (
                    format!("p_{}", self.rules.host_if),
                    addrs.iter().map(|a| format!("{a} . {port}")).collect(),
                ),
                None => (
                    format!("d_{}", self.rules.host_if),
                    addrs.iter().map(|a| a.to_string()).collect(),
                ),
            };
            for element in elements {
                // Add, delete, add: the element is there afterwards with this timeout,
                // whatever it had.
                script.push_str(&format!(
                    "add element inet {t} {set} {{ {element} }}\n\
                     delete element inet {t} {set} {{ {element} }}\n\
                     add element inet {t} {set} {{ {element} timeout {}s }}\n",
                    ttl.as_secs()
                ));
            }
        }
        if let Err(error) = run("nft", &["-f", "-"], Some(&script)).await {
            tracing::warn!(%error, interface = %self.rules.host_if, "resolved addresses not allowed");
        }
    }
}

impl Networking {
    /// The plumbing for a backend whose cgroup parent is `tag` (the table's name).
    pub(crate) fn new(settings: &NetworkSettings, tag: &str) -> Result<Self, String> {
        let range: Cidr = settings
            .range
            .parse()
            .map_err(|e| format!("network range {:?}: {e}", settings.range))?;
        let IpAddr::V4(base) = range.addr() else {
            return Err(format!("network range {:?} must be IPv4", settings.range));
        };
        if !(8..=29).contains(&range.prefix()) {
            return Err(format!(
                "network range {:?} must be a /8 to a /29",
                settings.range
            ));
        }
        let mut blocked = Vec::new();
        for raw in settings
            .blocked
            .iter()
            .map(String::as_str)
            .chain([ALWAYS_BLOCKED])
        {
            let cidr: Cidr = raw
                .parse()
                .map_err(|e| format!("blocked range {raw:?}: {e}"))?;
            if !cidr.addr().is_ipv4() {
                return Err(format!("blocked range {raw:?} must be IPv4"));
            }
            blocked.push(cidr);
        }
        if let Some(uplink) = &settings.uplink {
            if !valid_ifname(uplink) {
                return Err(format!("uplink {uplink:?} is not an interface name"));
            }
        }
        let table: String = tag
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        let mut never = blocked.clone();
        never.push(range);
        // Whatever the list says: the proxy connects from the host, where these are its own.
        never.extend(["0.0.0.0/8", "127.0.0.0/8"].map(|c| c.parse::<Cidr>().expect("a range")));
        Ok(Self {
            table: format!("traforato_{table}"),
            range: (base, range.prefix()),
            blocked,
            never,
            relays: Arc::new(tokio::sync::Semaphore::new(inspect::MAX_RELAYS)),
            dns_upstream: settings.dns_upstream,
            uplink: settings.uplink.clone(),
            uplink_in_use: std::sync::OnceLock::new(),
            bandwidth: settings.bandwidth,
            slots: Mutex::new(Slots::default()),
            ready: OnceCell::new(),
            forwarding_ours: AtomicBool::new(false),
            docker_passed: AtomicBool::new(false),
            table_made: AtomicBool::new(false),
        })
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, Slots> {
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The host-side and sandbox-side addresses of slot `slot`.
    fn addresses(&self, slot: u32) -> (Ipv4Addr, Ipv4Addr) {
        let base = u32::from(self.range.0) + slot * 4;
        (Ipv4Addr::from(base + 1), Ipv4Addr::from(base + 2))
    }

    /// Sets up the table and forwarding, once.
    async fn ready(&self) -> Result<(), BackendError> {
        self.ready
            .get_or_try_init(|| async {
                let host = host_addresses().await?;
                let uplink = match &self.uplink {
                    Some(uplink) => Some(uplink.clone()),
                    None => default_route_interface().await?,
                };
                // Another worker with the same range would hand out the same addresses.
                let range =
                    Cidr::new(IpAddr::V4(self.range.0), self.range.1).expect("checked when made");
                if let Some(taken) = host.iter().find(|a| range.contains(IpAddr::V4(**a))) {
                    return Err(BackendError::Unavailable(format!(
                        "network.range {range} is in use on this host ({taken} is one of its \
                         addresses: another worker's sandboxes, or an interface); give each \
                         worker its own range"
                    )));
                }
                let script = self.table_script(&host, uplink.as_deref());
                run("nft", &["-f", "-"], Some(&script)).await?;
                // From here on, shutdown has a table to remove (whatever fails next).
                self.table_made.store(true, Ordering::SeqCst);
                let forwarding = tokio::fs::read_to_string("/proc/sys/net/ipv4/ip_forward")
                    .await
                    .map_err(|e| BackendError::io("read net.ipv4.ip_forward", e))?;
                if forwarding.trim() == "0" {
                    tokio::fs::write("/proc/sys/net/ipv4/ip_forward", "1")
                        .await
                        .map_err(|e| BackendError::io("turn on net.ipv4.ip_forward", e))?;
                    self.forwarding_ours.store(true, Ordering::SeqCst);
                    tracing::info!("net.ipv4.ip_forward turned on for sandbox egress");
                }
                self.pass_docker().await?;
                let _ = self.uplink_in_use.set(uplink);
                Ok(())
            })
            .await
            .map(|_| ())
    }

    /// The `iptables` rules of [`DOCKER_CHAIN`] that let this backend's sandbox traffic past
    /// Docker's `FORWARD` policy: what leaves its sandboxes, and what answers them (this
    /// backend's own table, which comes first, has already dropped what it does not allow).
    /// Tagged with the table's name, so that each backend removes its own.
    fn docker_rules(&self) -> [Vec<String>; 2] {
        let range = format!("{}/{}", self.range.0, self.range.1);
        let tag = ["-m", "comment", "--comment", &self.table, "-j", "ACCEPT"];
        let rule = |head: &[&str]| -> Vec<String> {
            head.iter().chain(&tag).map(|s| s.to_string()).collect()
        };
        [
            rule(&["-i", "tf+", "-s", &range]),
            rule(&[
                "-o",
                "tf+",
                "-d",
                &range,
                "-m",
                "conntrack",
                "--ctstate",
                "RELATED,ESTABLISHED",
            ]),
        ]
    }

    /// On a host running Docker (its [`DOCKER_CHAIN`] exists), lets sandbox traffic past its
    /// `FORWARD` policy. Quiet without Docker; an error when Docker runs (its `docker0` is
    /// there) but the rules cannot be put in place: its policy would drop every packet.
    async fn pass_docker(&self) -> Result<(), BackendError> {
        if self.docker_passed.load(Ordering::SeqCst) {
            return Ok(());
        }
        if let Err(error) = run("iptables", &["-w", "-n", "-L", DOCKER_CHAIN], None).await {
            // No Docker chain: a problem only where forwarded traffic is dropped by default
            // (Docker's doing, with its chain missing or unreadable).
            let dropping = run("iptables", &["-w", "-S", "FORWARD"], None)
                .await
                .is_ok_and(|rules| rules.contains("-P FORWARD DROP"));
            return if dropping {
                Err(BackendError::Unavailable(format!(
                    "the FORWARD policy drops sandbox traffic (Docker's?) and {DOCKER_CHAIN}, \
                     where it could be accepted, cannot be used: {error}"
                )))
            } else {
                Ok(())
            };
        }
        for rule in self.docker_rules() {
            let rule: Vec<&str> = rule.iter().map(String::as_str).collect();
            let command = |op: &'static str| [&["-w", op, DOCKER_CHAIN][..], &rule].concat();
            if run("iptables", &command("-C"), None).await.is_ok() {
                continue;
            }
            run("iptables", &command("-I"), None)
                .await
                .map_err(|error| {
                    BackendError::Unavailable(format!(
                        "sandbox egress not let past Docker's FORWARD policy: {error}"
                    ))
                })?;
        }
        self.docker_passed.store(true, Ordering::SeqCst);
        tracing::info!("sandbox egress let past Docker's FORWARD policy (iptables {DOCKER_CHAIN})");
        Ok(())
    }

    /// Removes what [`Self::pass_docker`] added, by this or a crashed run.
    async fn unpass_docker(&self) {
        for rule in self.docker_rules() {
            let rule: Vec<&str> = rule.iter().map(String::as_str).collect();
            let delete = [&["-w", "-D", DOCKER_CHAIN][..], &rule].concat();
            while run("iptables", &delete, None).await.is_ok() {}
        }
        self.docker_passed.store(false, Ordering::SeqCst);
    }

    /// The table: rebuilt whole (an old one of a crashed run is replaced).
    fn table_script(&self, host: &[Ipv4Addr], uplink: Option<&str>) -> String {
        let t = &self.table;
        let range = format!("{}/{}", self.range.0, self.range.1);
        let mut blocked: Vec<String> = self.blocked.iter().map(|c| c.to_string()).collect();
        blocked.extend(host.iter().map(|a| format!("{a}/32")));
        // Sandbox traffic leaves by the uplink only (NAT there).
        let (leave, nat) = match uplink {
            Some(uplink) => (
                format!("iifname @ours oifname != \"{uplink}\" drop\n"),
                format!("oifname \"{uplink}\""),
            ),
            None => (String::new(), "oifname != @ours".to_string()),
        };
        format!(
            "table inet {t}\n\
             delete table inet {t}\n\
             table inet {t} {{\n\
               set ours {{ type ifname; }}\n\
               set egress {{ type ifname; }}\n\
               set dns {{ type ifname . ipv4_addr; }}\n\
               map allowing {{ type ifname : verdict; }}\n\
               map inspecting {{ type ifname : verdict; }}\n\
               set proxy {{ type ifname . ipv4_addr . inet_service; }}\n\
               set blocked {{ type ipv4_addr; flags interval; auto-merge; elements = {{ {blocked} }} }}\n\
               chain forward {{\n\
                 type filter hook forward priority filter - 10; policy accept;\n\
                 oifname @ours ct state established,related accept\n\
                 oifname @ours drop\n\
                 {leave}\
                 iifname @egress meta nfproto ipv4 ip daddr != @blocked accept\n\
                 meta nfproto ipv4 iifname vmap @allowing\n\
                 iifname @ours drop\n\
               }}\n\
               chain input {{\n\
                 type filter hook input priority filter - 10; policy accept;\n\
                 iifname @ours meta nfproto ipv4 iifname . ip daddr @dns udp dport 53 accept\n\
                 iifname @ours meta nfproto ipv4 iifname . ip daddr . tcp dport @proxy accept\n\
                 iifname @ours drop\n\
                 ip daddr {range} drop\n\
               }}\n\
               chain prerouting {{\n\
                 type nat hook prerouting priority dstnat; policy accept;\n\
                 meta nfproto ipv4 iifname vmap @inspecting\n\
               }}\n\
               chain postrouting {{\n\
                 type nat hook postrouting priority srcnat; policy accept;\n\
                 ip saddr {range} {nat} masquerade\n\
               }}\n\
             }}\n",
            blocked = blocked.join(", ")
        )
    }

    /// Plumbs the sandbox whose network namespace is `netns` and whose id starts with `short_id` (12 characters: its host
    /// interface is `tf<short_id>`), with the egress of `policy` from its first packet on.
    /// Returns the attachment and the sandbox's `resolv.conf`.
    pub(crate) async fn attach(
        self: &Arc<Self>,
        netns: Arc<OwnedFd>,
        short_id: &str,
        policy: &Policy,
    ) -> Result<(Attachment, String), BackendError> {
        self.ready().await?;
        // Docker started after the first sandbox had egress.
        if !self.docker_passed.load(Ordering::SeqCst)
            && std::path::Path::new("/sys/class/net/docker0").exists()
        {
            self.pass_docker().await?;
        }
        let slot = {
            let mut slots = self.slots();
            let capacity = 1u32 << (30 - u32::from(self.range.1).min(30));
            let start = slots.next % capacity;
            let slot = (0..capacity)
                .map(|i| (start + i) % capacity)
                .find(|s| !slots.used.contains(s))
                .ok_or_else(|| BackendError::Capacity("no sandbox network address left".into()))?;
            slots.used.insert(slot);
            slots.next = slot + 1;
            slot
        };
        let (gateway, sandbox) = self.addresses(slot);
        let policy = Arc::new(RwLock::new(policy.clone()));
        // The proxy's address is on the interface once it exists.
        let proxy = inspect::listen(gateway);
        // From here on, dropping the attachment undoes everything (the veth pair included).
        let mut attachment = Attachment {
            networking: Arc::clone(self),
            slot,
            rules: Rules {
                table: self.table.clone(),
                host_if: format!("tf{short_id}"),
                gateway,
                proxy_port: proxy.as_ref().map_or(0, |(_, port)| *port),
            },
            policy: Arc::clone(&policy),
            dns: tokio::spawn(async {}),
            proxy: tokio::spawn(async {}),
            changes: tokio::sync::watch::Sender::new(0),
            certain: true,
        };
        let (listener, _) = proxy.map_err(|e| {
            BackendError::io(format!("listen for inspected connections on {gateway}"), e)
        })?;
        let reach = inspect::Reach {
            never: self.never.clone(),
            uplink: self.uplink_in_use.get().cloned().flatten(),
            relays: Arc::clone(&self.relays),
        };
        attachment.proxy = tokio::spawn(inspect::serve(
            listener,
            sandbox,
            Arc::clone(&policy),
            attachment.changes.subscribe(),
            Arc::new(reach),
        ));
        // The rules first, in one call: the interface is ours, with its policy, before it
        // exists, so no packet of it ever passes unfiltered.
        let rules = &attachment.rules;
        let current = policy.read().unwrap_or_else(|e| e.into_inner()).clone();
        if current.egress() == Egress::All {
            // The common case, through netlink: no program spawned on the create's path.
            let key = || netlink::SetKey::default().ifname(&rules.host_if);
            let elements = [
                ("ours", key()),
                ("egress", key()),
                ("dns", key().ipv4(gateway)),
            ];
            let table = rules.table.clone();
            // Blocking calls (the kernel may wait for another writer of the tables).
            tokio::task::spawn_blocking(move || netlink::add_set_elements(&table, &elements))
                .await
                .map_err(|e| BackendError::task("nftables elements", e))?
                .map_err(|e| {
                    BackendError::io(
                        format!("add {} to the table {}", rules.host_if, rules.table),
                        e,
                    )
                })?;
        } else {
            let script = format!(
                "add element inet {t} ours {{ \"{i}\" }}\n{policy}",
                t = rules.table,
                i = rules.host_if,
                policy = rules.first_policy_script(&current),
            );
            run("nft", &["-f", "-"], Some(&script)).await?;
        }
        netlink::plumb(Arc::clone(&netns), &rules.host_if, gateway, sandbox).await?;
        if let Some(rate) = self.bandwidth {
            shape(&netns, &rules.host_if, rate).await?;
        }
        let firewall = Arc::new(SandboxFirewall {
            rules: rules.clone(),
        });
        attachment.dns = self
            .dns_forwarder(gateway, sandbox, policy, firewall)
            .await?;
        Ok((attachment, format!("nameserver {gateway}\n")))
    }

    /// A forwarder of DNS over UDP on `gateway`:53 to the upstream resolver, for the sandbox
    /// at `sandbox` only, enforcing `policy`.
    async fn dns_forwarder(
        &self,
        gateway: Ipv4Addr,
        sandbox: Ipv4Addr,
        policy: Arc<RwLock<Policy>>,
        firewall: Arc<SandboxFirewall>,
    ) -> Result<JoinHandle<()>, BackendError> {
        let upstream = match self.dns_upstream {
            Some(upstream) => upstream,
            None => host_resolver().await?,
        };
        let socket = UdpSocket::bind((gateway, 53))
            .await
            .map_err(|e| BackendError::io(format!("listen for DNS on {gateway}:53"), e))?;
        Ok(tokio::spawn(dns::forward(
            Arc::new(socket),
            IpAddr::V4(sandbox),
            upstream,
            policy,
            firewall,
        )))
    }

    /// Removes the table a crashed run of this backend left (its sandboxes are gone, so its
    /// rules match nothing, but nothing of ours should stay); quiet when there is none or no
    /// `nft`.
    pub(crate) async fn remove_stale_table(&self) {
        if self.table_made.load(Ordering::SeqCst) {
            return;
        }
        let _ = run("nft", &["delete", "table", "inet", &self.table], None).await;
        // A crashed run may have let its sandboxes past Docker (tagged rules: only ours go).
        self.unpass_docker().await;
    }

    /// Undoes what the backend changed on the host: its table, its rules in Docker's chain,
    /// and `ip_forward` if it turned it on.
    pub(crate) async fn shutdown(&self) {
        if !self.table_made.swap(false, Ordering::SeqCst) {
            return;
        }
        if let Err(error) = run("nft", &["delete", "table", "inet", &self.table], None).await {
            tracing::warn!(%error, table = %self.table, "nftables table not removed");
        }
        self.unpass_docker().await;
        if self.forwarding_ours.swap(false, Ordering::SeqCst) {
            // Another worker of this host may still need it.
            let others = run("nft", &["list", "tables"], None)
                .await
                .is_ok_and(|tables| tables.contains("inet traforato_"));
            if others {
                tracing::info!("net.ipv4.ip_forward left on: another worker's sandboxes use it");
            } else if let Err(error) = tokio::fs::write("/proc/sys/net/ipv4/ip_forward", "0").await
            {
                tracing::warn!(%error, "net.ipv4.ip_forward not turned back off");
            }
        }
    }
}

impl Attachment {
    /// The host side of the sandbox's veth pair.
    pub(crate) fn host_if(&self) -> &str {
        &self.rules.host_if
    }

    /// Gives the sandbox the egress of `policy`: each call states everything (memberships,
    /// its allow chain, its resolved sets, emptied), so it is right whatever happened before.
    pub(crate) async fn set_policy(&mut self, policy: &Policy) -> Result<(), BackendError> {
        // The same policy again changes nothing: its resolved addresses and the connections
        // through them stay (a rewrite would empty them), unless what is in force is unsure.
        let current = self
            .policy
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if self.certain && current == *policy {
            return Ok(());
        }
        let script = self.rules.policy_script(policy);
        let result = run("nft", &["-f", "-"], Some(&script)).await.map(|_| ());
        let in_force = if result.is_ok() {
            self.certain = true;
            policy.clone()
        } else {
            // Half-done is off; if even that fails, what the kernel holds is unknown and the
            // next change rewrites everything.
            let off = self.rules.policy_script(&Policy::none());
            self.certain = run("nft", &["-f", "-"], Some(&off)).await.is_ok();
            Policy::none()
        };
        *self.policy.write().unwrap_or_else(|e| e.into_inner()) = in_force;
        self.changes.send_modify(|n| *n += 1);
        result
    }
}

impl Rules {
    /// The nft script that gives the sandbox the egress of `policy`.
    /// States everything, whatever was there before (its deletes and flushes make the
    /// kernel wait a grace period: about 15 ms here).
    fn policy_script(&self, policy: &Policy) -> String {
        self.script(policy, true)
    }

    /// For a sandbox that has no rules yet: only additions (a few hundred microseconds of
    /// the kernel's).
    fn first_policy_script(&self, policy: &Policy) -> String {
        self.script(policy, false)
    }

    fn script(&self, policy: &Policy, reset: bool) -> String {
        let Rules {
            table: t,
            host_if,
            gateway,
            proxy_port,
        } = self;
        let chain = format!("a_{host_if}");
        let inspect = format!("i_{host_if}");
        let names = format!("d_{host_if}");
        let ports = format!("p_{host_if}");
        let egress = format!("{{ \"{host_if}\" }}");
        let dns = format!("{{ \"{host_if}\" . {gateway} }}");
        let proxy = format!("{{ \"{host_if}\" . {gateway} . {proxy_port} }}");
        let mut script = format!(
            "add chain inet {t} {chain}\n\
             add chain inet {t} {inspect}\n\
             add set inet {t} {names} {{ type ipv4_addr; flags timeout; }}\n\
             add set inet {t} {ports} {{ type ipv4_addr . inet_service; flags timeout; }}\n"
        );
        if reset {
            // Everything made (so that the deletes succeed), then emptied.
            script.push_str(&format!(
                "flush chain inet {t} {chain}\n\
                 flush chain inet {t} {inspect}\n\
                 flush set inet {t} {names}\n\
                 flush set inet {t} {ports}\n\
                 add element inet {t} egress {egress}\n\
                 add element inet {t} dns {dns}\n\
                 add element inet {t} allowing {{ \"{host_if}\" : jump {chain} }}\n\
                 add element inet {t} inspecting {{ \"{host_if}\" : jump {inspect} }}\n\
                 add element inet {t} proxy {proxy}\n\
                 delete element inet {t} egress {egress}\n\
                 delete element inet {t} dns {dns}\n\
                 delete element inet {t} proxy {proxy}\n\
                 delete element inet {t} allowing {{ \"{host_if}\" }}\n\
                 delete element inet {t} inspecting {{ \"{host_if}\" }}\n"
            ));
        }
        match policy.egress() {
            Egress::None => {}
            Egress::All => script.push_str(&format!(
                "add element inet {t} egress {egress}\n\
                 add element inet {t} dns {dns}\n"
            )),
            Egress::Allow => {
                // The proxy's port on the gateway is open to the sandbox under an allow-list
                // only.
                script.push_str(&format!(
                    "add element inet {t} dns {dns}\n\
                     add element inet {t} proxy {proxy}\n"
                ));
                // Listed ranges are reached as they are, and are not inspected.
                for rule in policy.rules() {
                    if let AllowRule::Network { cidr, port } = rule {
                        let (tcp, udp) = match port {
                            None => (String::new(), None),
                            Some(port) => (
                                format!(" tcp dport {port}"),
                                Some(format!(" udp dport {port}")),
                            ),
                        };
                        script.push_str(&format!(
                            "add rule inet {t} {chain} ip daddr {cidr}{tcp} accept\n\
                             add rule inet {t} {inspect} ip daddr {cidr}{tcp} return\n"
                        ));
                        if let Some(udp) = udp {
                            script.push_str(&format!(
                                "add rule inet {t} {chain} ip daddr {cidr}{udp} accept\n"
                            ));
                        }
                    }
                }
                let inspected = inspect::INSPECTED_PORTS.map(|p| p.to_string()).join(", ");
                script.push_str(&format!(
                    "add rule inet {t} {chain} ip daddr @blocked return\n\
                     add rule inet {t} {chain} udp dport 443 return\n\
                     add rule inet {t} {chain} ip daddr @{names} accept\n\
                     add rule inet {t} {chain} ip daddr . tcp dport @{ports} accept\n\
                     add rule inet {t} {chain} ip daddr . udp dport @{ports} accept\n\
                     add element inet {t} allowing {{ \"{host_if}\" : jump {chain} }}\n\
                     add rule inet {t} {inspect} ip daddr @blocked return\n\
                     add rule inet {t} {inspect} fib daddr type != unicast return\n\
                     add rule inet {t} {inspect} tcp dport {{ {inspected} }} ip daddr @{names} redirect to :{proxy_port}\n\
                     add rule inet {t} {inspect} tcp dport {{ {inspected} }} ip daddr . tcp dport @{ports} redirect to :{proxy_port}\n\
                     add element inet {t} inspecting {{ \"{host_if}\" : jump {inspect} }}\n"
                ));
            }
        }
        script
    }

    /// The nft script that removes everything of the sandbox (its memberships, chains and
    /// sets).
    fn detach_script(&self) -> String {
        let Rules {
            table: t, host_if, ..
        } = self;
        let mut script = self.policy_script(&Policy::none());
        script.push_str(&format!(
            "delete chain inet {t} a_{host_if}\n\
             delete chain inet {t} i_{host_if}\n\
             delete set inet {t} d_{host_if}\n\
             delete set inet {t} p_{host_if}\n\
             add element inet {t} ours {{ \"{host_if}\" }}\n\
             delete element inet {t} ours {{ \"{host_if}\" }}\n"
        ));
        script
    }
}

impl Drop for Attachment {
    fn drop(&mut self) {
        self.dns.abort();
        self.proxy.abort();
        let networking = Arc::clone(&self.networking);
        let (slot, rules) = (self.slot, self.rules.clone());
        let undo = async move {
            // Deleting one end deletes the pair (it may be gone with its namespace already).
            let _ = run("ip", &["link", "delete", &rules.host_if], None).await;
            let script = rules.detach_script();
            let _ = run("nft", &["-f", "-"], Some(&script)).await;
            networking.slots().used.remove(&slot);
        };
        // Without a runtime the slot stays taken: nothing may reuse an address whose
        // interface might still exist.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(undo);
        }
    }
}

/// Caps both directions of a sandbox's traffic at `rate`: a token bucket (`tbf`) as the root
/// queue of the host side (what the sandbox receives) and of `eth0` (what it sends; sandbox
/// root has no `CAP_NET_ADMIN` to remove it). Bursts of 20 ms of traffic, at least 16 KiB.
async fn shape(netns: &OwnedFd, host_if: &str, rate: Bandwidth) -> Result<(), BackendError> {
    let bits = rate.bits_per_second();
    let burst = (bits / 8 / 50).max(16 * 1024);
    let qdisc = |dev: &str| {
        format!("qdisc add dev {dev} root tbf rate {bits}bit burst {burst} latency 50ms\n")
    };
    run("tc", &["-batch", "-"], Some(&qdisc(host_if))).await?;
    // The namespace through the worker's own descriptor: no pid to reuse.
    let inside = format!(
        "--net=/proc/{}/fd/{}",
        std::process::id(),
        netns.as_raw_fd()
    );
    run(
        "nsenter",
        &[&inside, "tc", "-batch", "-"],
        Some(&qdisc("eth0")),
    )
    .await
    .map(|_| ())
}

/// The first `nameserver` of the host's `/etc/resolv.conf`, on port 53.
async fn host_resolver() -> Result<SocketAddr, BackendError> {
    let text = tokio::fs::read_to_string("/etc/resolv.conf")
        .await
        .map_err(|e| BackendError::io("read /etc/resolv.conf", e))?;
    text.lines()
        .filter_map(|line| line.trim().strip_prefix("nameserver"))
        .filter_map(|addr| addr.trim().parse::<IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53))
        .next()
        .ok_or_else(|| {
            BackendError::Unavailable(
                "no nameserver in /etc/resolv.conf for the sandboxes' DNS (set network.dns-upstream)"
                    .to_string(),
            )
        })
}

/// Whether `name` can be an interface name (1 to 15 of `A-Z a-z 0-9 . _ -`).
fn valid_ifname(name: &str) -> bool {
    (1..=15).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// The interface of the host's default IPv4 route (`ip route show default`), if it has one;
/// an error when `ip` cannot say.
async fn default_route_interface() -> Result<Option<String>, BackendError> {
    let text = run("ip", &["-4", "route", "show", "default"], None).await?;
    let mut words = text.split_whitespace();
    if words.find(|w| *w == "dev").is_none() {
        return Ok(None);
    }
    Ok(words.next().map(str::to_string).filter(|d| valid_ifname(d)))
}

/// The host's own IPv4 addresses (`ip -4 -o addr`), blocked for sandboxes; an error when
/// `ip` cannot say (a table without them would not keep sandboxes off the host).
async fn host_addresses() -> Result<Vec<Ipv4Addr>, BackendError> {
    let text = run("ip", &["-4", "-o", "addr", "show"], None).await?;
    Ok(text
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            words.find(|w| *w == "inet")?;
            words.next()?.split('/').next()?.parse().ok()
        })
        .collect())
}

/// Runs `program args`, feeding it `stdin`; returns its stdout. An error names the command,
/// its status and the end of its stderr.
async fn run(program: &str, args: &[&str], stdin: Option<&str>) -> Result<String, BackendError> {
    let shown = format!("{program} {}", args.join(" "));
    let mut command = Command::new(program);
    command
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = command.spawn().map_err(|e| {
        if e.kind() == io::ErrorKind::NotFound {
            BackendError::Unavailable(format!(
                "sandbox egress needs {program} (apt-get install iproute2 util-linux nftables)"
            ))
        } else {
            BackendError::io(format!("run {shown}"), e)
        }
    })?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input.as_bytes())
            .await
            .map_err(|e| BackendError::io(format!("feed {shown}"), e))?;
    }
    let output = tokio::time::timeout(COMMAND_TIMEOUT, child.wait_with_output())
        .await
        .map_err(|_| BackendError::Setup(format!("{shown} did not finish in {COMMAND_TIMEOUT:?}")))?
        .map_err(|e| BackendError::io(format!("run {shown}"), e))?;
    if output.status.success() {
        return Ok(String::from_utf8_lossy(&output.stdout).into_owned());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    let tail: String = stderr
        .trim()
        .chars()
        .rev()
        .take(400)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    Err(BackendError::Setup(format!(
        "{shown}: {}: {tail}",
        output.status
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_thirty_twos_of_the_range() {
        let net = Networking::new(&NetworkSettings::default(), "trafo/rato-1").unwrap();
        assert_eq!(net.table, "traforato_trafo_rato_1");
        assert_eq!(
            net.addresses(0),
            ("10.213.0.1".parse().unwrap(), "10.213.0.2".parse().unwrap())
        );
        assert_eq!(
            net.addresses(70),
            (
                "10.213.1.25".parse().unwrap(),
                "10.213.1.26".parse().unwrap()
            )
        );
        for (range, says) in [
            ("fd00::/64", "must be IPv4"),
            ("10.0.0.0/30", "a /8 to a /29"),
            ("nonsense", "not an IP address"),
        ] {
            let settings = NetworkSettings {
                range: range.into(),
                ..NetworkSettings::default()
            };
            let err = Networking::new(&settings, "t").unwrap_err();
            assert!(err.contains(says), "{range}: {err}");
        }
    }

    #[tokio::test]
    async fn the_table_blocks_the_defaults_and_the_host() {
        let net = Networking::new(&NetworkSettings::default(), "x").unwrap();
        let script = net.table_script(&["192.0.2.9".parse().unwrap()], None);
        assert!(script.contains("table inet traforato_x {"), "{script}");
        assert!(
            script.contains("192.0.2.9/32"),
            "the host's own addresses: {script}"
        );
        assert!(script.contains("169.254.0.0/16"));
        assert!(script.contains(" masquerade"), "{script}");
        let settings = NetworkSettings {
            uplink: Some("ti0".into()),
            ..NetworkSettings::default()
        };
        let net = Networking::new(&settings, "x").unwrap();
        let script = net.table_script(&[], Some("ti0"));
        assert!(
            script.contains("iifname @ours oifname != \"ti0\" drop"),
            "{script}"
        );
        assert!(script.contains("ip saddr 10.213.0.0/16 oifname \"ti0\" masquerade"));
        let bad = NetworkSettings {
            uplink: Some("eth0\" accept".into()),
            ..NetworkSettings::default()
        };
        assert!(Networking::new(&bad, "x")
            .unwrap_err()
            .contains("not an interface name"));
        // Link-local stays blocked when the operator's list leaves it out.
        let settings = NetworkSettings {
            blocked: vec!["10.0.0.0/8".into()],
            ..NetworkSettings::default()
        };
        let net = Networking::new(&settings, "x").unwrap();
        let script = net.table_script(&[], None);
        assert!(script.contains("169.254.0.0/16"), "{script}");
        assert!(!script.contains("192.168.0.0/16"), "{script}");
    }

    #[test]
    fn policy_scripts_state_everything() {
        let rules = Rules {
            table: "t".into(),
            host_if: "tfa".into(),
            gateway: "10.213.0.1".parse().unwrap(),
            proxy_port: 4321,
        };
        let none = rules.policy_script(&Policy::none());
        assert!(none.contains("delete element inet t dns { \"tfa\" . 10.213.0.1 }"));
        assert!(none.contains("delete element inet t inspecting { \"tfa\" }"));
        assert!(!none.contains("add rule"));
        let all = rules.policy_script(&Policy::all());
        assert!(
            all.ends_with(
                "add element inet t egress { \"tfa\" }\n\
                 add element inet t dns { \"tfa\" . 10.213.0.1 }\n"
            ),
            "{all}"
        );
        assert!(!all.contains("redirect"), "{all}");
        assert!(
            all.rfind("delete element inet t proxy") > all.rfind("add element inet t proxy"),
            "the proxy is reachable under an allow-list only: {all}"
        );
        // A first attachment only adds: no grace period of the kernel's to wait for.
        let first = rules.first_policy_script(&Policy::all());
        assert!(first.lines().all(|l| l.starts_with("add ")), "{first}");
        let wire = crate::api::NetworkPolicy::allow(["pypi.org", "10.1.0.0/16", "10.2.0.1:5432"]);
        let allow = rules.policy_script(&Policy::parse(&wire, None).unwrap());
        for line in [
            "add rule inet t a_tfa ip daddr 10.1.0.0/16 accept",
            "add rule inet t i_tfa ip daddr 10.1.0.0/16 return",
            "add rule inet t a_tfa ip daddr 10.2.0.1/32 tcp dport 5432 accept",
            "add rule inet t a_tfa ip daddr 10.2.0.1/32 udp dport 5432 accept",
            "add rule inet t a_tfa ip daddr @blocked return",
            "add rule inet t a_tfa ip daddr @d_tfa accept",
            "add rule inet t a_tfa udp dport 443 return",
            "add element inet t allowing { \"tfa\" : jump a_tfa }",
            "add rule inet t i_tfa tcp dport { 80, 443 } ip daddr @d_tfa redirect to :4321",
            "add element inet t inspecting { \"tfa\" : jump i_tfa }",
            "add element inet t proxy { \"tfa\" . 10.213.0.1 . 4321 }",
            "add rule inet t i_tfa fib daddr type != unicast return",
        ] {
            assert!(allow.contains(line), "{line}\n{allow}");
        }
        let detach = rules.detach_script();
        assert!(detach.contains("delete chain inet t a_tfa"));
        assert!(detach.contains("delete chain inet t i_tfa"));
        assert!(detach.contains("delete element inet t proxy { \"tfa\" . 10.213.0.1 . 4321 }"));
        assert!(detach.contains("delete element inet t ours { \"tfa\" }"));
    }
}
