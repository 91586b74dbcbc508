//! Network egress policies: what a sandbox may reach beyond its loopback. The wire form
//! ([`crate::api::NetworkPolicy`]) parses into a [`Policy`]: a mode ([`Egress`]) and, for
//! `allow`, [`AllowRule`]s (domain names, `*.` wildcards, addresses and CIDR ranges, each with
//! an optional port), checked and normalised so that a bad rule is refused with what is wrong
//! with it before any sandbox exists.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use crate::api::NetworkPolicy;

/// Most rules one allow-list may hold.
pub const MAX_ALLOW_RULES: usize = 256;

/// How much a sandbox may reach.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Egress {
    /// Loopback only (the default).
    #[default]
    None,
    /// Anything but the blocked ranges.
    All,
    /// Only what the allow-list names.
    Allow,
}

impl Egress {
    /// Every mode.
    pub const ALL: [Egress; 3] = [Egress::None, Egress::All, Egress::Allow];

    /// `none`, `all` or `allow`.
    pub fn as_str(self) -> &'static str {
        match self {
            Egress::None => "none",
            Egress::All => "all",
            Egress::Allow => "allow",
        }
    }
}

impl fmt::Display for Egress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Egress {
    type Err = PolicyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "none" => Ok(Egress::None),
            "all" => Ok(Egress::All),
            "allow" => Ok(Egress::Allow),
            _ => Err(PolicyError::UnknownEgress(s.trim().to_string())),
        }
    }
}

/// Why a policy was refused (a fault of the request; the messages say what to fix).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// `egress` is not a mode.
    #[error("network.egress must be none, all or allow, not {0:?}")]
    UnknownEgress(String),
    /// `egress` is missing where it is required (a change of policy).
    #[error("network.egress is required (none, all or allow)")]
    MissingEgress,
    /// An allow-list with a mode that does not use one.
    #[error("network.allow is only used with egress allow")]
    AllowWithoutAllowMode,
    /// More rules than [`MAX_ALLOW_RULES`].
    #[error("network.allow has {0} rules; at most 256")]
    TooManyRules(usize),
    /// A rule that is not a name, address or range.
    #[error("network.allow rule {rule:?}: {reason}")]
    InvalidRule {
        /// The rule as given.
        rule: String,
        /// What is wrong with it.
        reason: &'static str,
    },
}

/// A rate each way of a sandbox's network: bits per second, written `20mbit`, `500kbit`,
/// `1gbit` (decimal units, any case), at least 64 kbit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Bandwidth(u64);

/// Why a bandwidth was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{raw:?} is not a bandwidth: {reason} (e.g. 20mbit, 500kbit, 1gbit)")]
pub struct BandwidthError {
    raw: String,
    reason: &'static str,
}

impl Bandwidth {
    /// The slowest rate: 64 kbit/s.
    pub const MIN: Bandwidth = Bandwidth(64_000);

    /// Bits per second.
    pub fn bits_per_second(self) -> u64 {
        self.0
    }
}

impl FromStr for Bandwidth {
    type Err = BandwidthError;

    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        let refuse = |reason| BandwidthError {
            raw: raw.to_string(),
            reason,
        };
        let lower = raw.trim().to_ascii_lowercase();
        let (number, scale) = [
            ("gbit", 1_000_000_000u64),
            ("mbit", 1_000_000),
            ("kbit", 1_000),
        ]
        .into_iter()
        .find_map(|(unit, scale)| lower.strip_suffix(unit).map(|n| (n, scale)))
        .ok_or_else(|| refuse("no unit (kbit, mbit or gbit)"))?;
        let number: u64 = number
            .trim()
            .parse()
            .map_err(|_| refuse("not a whole number of its unit"))?;
        let bits = number
            .checked_mul(scale)
            .filter(|b| *b <= 100_000_000_000)
            .ok_or_else(|| refuse("more than 100gbit"))?;
        if bits < Self::MIN.0 {
            return Err(refuse("less than 64kbit"));
        }
        Ok(Bandwidth(bits))
    }
}

impl fmt::Display for Bandwidth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}bit", self.0)
    }
}

/// An address range: `addr/prefix`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// The range `addr/prefix`; `None` when `prefix` is longer than the address.
    pub fn new(addr: IpAddr, prefix: u8) -> Option<Self> {
        let bits = if addr.is_ipv4() { 32 } else { 128 };
        (prefix <= bits).then(|| Self {
            addr: mask(addr, prefix),
            prefix,
        })
    }

    /// The first address.
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// Whether `ip` is in the range (IPv4-mapped IPv6 addresses count as their IPv4 one).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        ip.is_ipv4() == self.addr.is_ipv4() && mask(ip, self.prefix) == self.addr
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl FromStr for Cidr {
    type Err = &'static str;

    /// `10.0.0.0/8`, `fd00::/8`, or a single address (`/32`, `/128`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, prefix) = match s.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (s, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| "not an IP address")?;
        let bits = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p.parse::<u8>().map_err(|_| "not a prefix length")?,
            None => bits,
        };
        Cidr::new(addr, prefix).ok_or("prefix longer than the address")
    }
}

fn mask(ip: IpAddr, prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let bits = u32::from(v4);
            let kept = if prefix == 0 {
                0
            } else {
                bits & (u32::MAX << (32 - u32::from(prefix.min(32))))
            };
            IpAddr::V4(kept.into())
        }
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            let kept = if prefix == 0 {
                0
            } else {
                bits & (u128::MAX << (128 - u32::from(prefix.min(128))))
            };
            IpAddr::V6(kept.into())
        }
    }
}

/// One entry of an allow-list.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum AllowRule {
    /// A domain name (lowercase, without a final dot); `wildcard`: its subdomains, not the
    /// name itself (`*.example.com`).
    Domain {
        /// The name.
        name: String,
        /// `*.` was given.
        wildcard: bool,
        /// Only this port.
        port: Option<u16>,
    },
    /// Addresses.
    Network {
        /// The range.
        cidr: Cidr,
        /// Only this port.
        port: Option<u16>,
    },
}

impl AllowRule {
    /// Whether the rule lets a sandbox reach `name` (a domain, any case) on `port`.
    pub fn matches_name(&self, name: &str, port: u16) -> bool {
        self.names(name) && self.port().is_none_or(|p| p == port)
    }

    /// Whether the rule is a domain rule for `name` (any case), whatever its port.
    pub fn names(&self, name: &str) -> bool {
        let AllowRule::Domain {
            name: rule,
            wildcard,
            ..
        } = self
        else {
            return false;
        };
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        if *wildcard {
            name.len() > rule.len() + 1
                && name.ends_with(rule.as_str())
                && name.as_bytes()[name.len() - rule.len() - 1] == b'.'
        } else {
            name == *rule
        }
    }

    /// The only port the rule allows, if it names one.
    pub fn port(&self) -> Option<u16> {
        match self {
            AllowRule::Domain { port, .. } | AllowRule::Network { port, .. } => *port,
        }
    }

    /// Whether the rule lets a sandbox reach `ip` on `port` by address.
    pub fn matches_addr(&self, ip: IpAddr, port: u16) -> bool {
        match self {
            AllowRule::Network { cidr, port: p } => {
                cidr.contains(ip) && p.is_none_or(|p| p == port)
            }
            AllowRule::Domain { .. } => false,
        }
    }
}

impl fmt::Display for AllowRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let port = |f: &mut fmt::Formatter<'_>, port: &Option<u16>| match port {
            Some(p) => write!(f, ":{p}"),
            None => Ok(()),
        };
        match self {
            AllowRule::Domain {
                name,
                wildcard,
                port: p,
            } => {
                if *wildcard {
                    f.write_str("*.")?;
                }
                f.write_str(name)?;
                port(f, p)
            }
            AllowRule::Network { cidr, port: p } => {
                let single = cidr.prefix() == if cidr.addr().is_ipv4() { 32 } else { 128 };
                match (single, cidr.addr(), p) {
                    (true, IpAddr::V6(v6), Some(_)) => write!(f, "[{v6}]")?,
                    (true, addr, _) => write!(f, "{addr}")?,
                    (false, _, _) => write!(f, "{cidr}")?,
                }
                port(f, p)
            }
        }
    }
}

impl FromStr for AllowRule {
    type Err = PolicyError;

    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        let rule = raw.trim();
        let invalid = |reason| PolicyError::InvalidRule {
            rule: rule.to_string(),
            reason,
        };
        if rule.is_empty() {
            return Err(invalid("empty"));
        }
        // `[v6]:port`, `v4:port`, `name:port`; a bare IPv6 address has colons of its own.
        let (host, port) = if let Some(rest) = rule.strip_prefix('[') {
            let (v6, after) = rest.split_once(']').ok_or(invalid("unclosed ["))?;
            let port = after
                .strip_prefix(':')
                .ok_or(invalid("expected :port after ]"))?;
            (v6, Some(port))
        } else if rule.matches(':').count() == 1 {
            let (host, port) = rule.split_once(':').expect("one colon");
            (host, Some(port))
        } else {
            (rule, None)
        };
        let port = match port {
            Some(p) => Some(
                p.parse::<u16>()
                    .ok()
                    .filter(|p| *p > 0)
                    .ok_or(invalid("the port must be 1 to 65535"))?,
            ),
            None => None,
        };
        let looks_numeric = host.contains('/')
            || host.parse::<IpAddr>().is_ok()
            || host.bytes().all(|b| b.is_ascii_digit() || b == b'.');
        if looks_numeric {
            if host.contains('/') && port.is_some() {
                return Err(invalid("a range takes no port"));
            }
            let cidr = host.parse::<Cidr>().map_err(invalid)?;
            return Ok(AllowRule::Network { cidr, port });
        }
        let (wildcard, name) = match host.strip_prefix("*.") {
            Some(name) => (true, name),
            None => (false, host),
        };
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        valid_domain(&name).map_err(invalid)?;
        Ok(AllowRule::Domain {
            name,
            wildcard,
            port,
        })
    }
}

/// A domain name: dot-separated labels of `a-z 0-9 -` (and `_`, which service names use),
/// 1 to 63 characters each, not starting or ending with `-`; 253 characters at most.
fn valid_domain(name: &str) -> Result<(), &'static str> {
    if name.is_empty() || name.len() > 253 {
        return Err("not a domain name");
    }
    if name.contains('*') {
        return Err("a wildcard is only allowed as a leading *.");
    }
    for label in name.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
        if !ok {
            return Err("not a domain name");
        }
    }
    Ok(())
}

/// A sandbox's egress, checked and normalised.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    egress: Egress,
    allow: Vec<AllowRule>,
}

impl Policy {
    /// Loopback only.
    pub fn none() -> Self {
        Self::default()
    }

    /// Everything but the blocked ranges.
    pub fn all() -> Self {
        Self {
            egress: Egress::All,
            allow: Vec::new(),
        }
    }

    /// Parses the wire form; an empty `egress` is `default` (`None`: required).
    pub fn parse(wire: &NetworkPolicy, default: Option<Egress>) -> Result<Self, PolicyError> {
        let egress = if wire.egress.trim().is_empty() {
            default.ok_or(PolicyError::MissingEgress)?
        } else {
            wire.egress.parse()?
        };
        if egress != Egress::Allow {
            if !wire.allow.is_empty() {
                return Err(PolicyError::AllowWithoutAllowMode);
            }
            return Ok(Self {
                egress,
                allow: Vec::new(),
            });
        }
        if wire.allow.len() > MAX_ALLOW_RULES {
            return Err(PolicyError::TooManyRules(wire.allow.len()));
        }
        let mut allow = Vec::with_capacity(wire.allow.len());
        for raw in &wire.allow {
            let rule: AllowRule = raw.parse()?;
            if !allow.contains(&rule) {
                allow.push(rule);
            }
        }
        Ok(Self { egress, allow })
    }

    /// The mode.
    pub fn egress(&self) -> Egress {
        self.egress
    }

    /// The allow-list (empty unless the mode is `allow`).
    pub fn rules(&self) -> &[AllowRule] {
        &self.allow
    }

    /// The wire form, normalised.
    pub fn to_wire(&self) -> NetworkPolicy {
        NetworkPolicy {
            egress: self.egress.as_str().to_string(),
            allow: self.allow.iter().map(ToString::to_string).collect(),
        }
    }

    /// Whether the allow-list lets a sandbox resolve and reach `name` on `port` (`all`: any
    /// name; `none`: none).
    pub fn allows_name(&self, name: &str, port: u16) -> bool {
        match self.egress {
            Egress::None => false,
            Egress::All => true,
            Egress::Allow => self.allow.iter().any(|r| r.matches_name(name, port)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bandwidths() {
        for (raw, bits) in [
            ("20mbit", 20_000_000),
            (" 500KBit", 500_000),
            ("1gbit", 1_000_000_000),
            ("64kbit", 64_000),
        ] {
            assert_eq!(
                raw.parse::<Bandwidth>().unwrap().bits_per_second(),
                bits,
                "{raw}"
            );
        }
        for (raw, says) in [
            ("20", "no unit"),
            ("20mb", "no unit"),
            ("1.5mbit", "whole number"),
            ("-1mbit", "whole number"),
            ("10kbit", "less than 64kbit"),
            ("200gbit", "more than 100gbit"),
        ] {
            let err = raw.parse::<Bandwidth>().unwrap_err().to_string();
            assert!(err.contains(says), "{raw}: {err}");
        }
        assert_eq!(
            "2mbit".parse::<Bandwidth>().unwrap().to_string(),
            "2000000bit"
        );
    }

    fn rule(raw: &str) -> AllowRule {
        raw.parse().unwrap_or_else(|e| panic!("{raw}: {e}"))
    }

    fn refused(raw: &str) -> String {
        raw.parse::<AllowRule>().unwrap_err().to_string()
    }

    #[test]
    fn rules_parse_and_print_normalised() {
        for (raw, shown) in [
            ("PyPI.org", "pypi.org"),
            ("pypi.org.", "pypi.org"),
            ("*.githubusercontent.com", "*.githubusercontent.com"),
            ("api.example.com:443", "api.example.com:443"),
            ("10.1.2.7/24", "10.1.2.0/24"),
            ("10.1.2.3", "10.1.2.3"),
            ("10.1.2.3:5432", "10.1.2.3:5432"),
            ("fd00::/8", "fd00::/8"),
            ("2001:db8::1", "2001:db8::1"),
            ("[2001:db8::1]:443", "[2001:db8::1]:443"),
            ("_sip._tcp.example.com", "_sip._tcp.example.com"),
        ] {
            assert_eq!(rule(raw).to_string(), shown, "{raw}");
        }
        for (raw, says) in [
            ("", "empty"),
            ("exa mple.com", "not a domain name"),
            ("-bad.com", "not a domain name"),
            ("a.*.com", "leading *."),
            ("example.com:0", "1 to 65535"),
            ("example.com:99999", "1 to 65535"),
            ("10.0.0.0/33", "prefix longer"),
            ("10.0.0.0/8:80", "a range takes no port"),
            ("300.1.1.1", "not an IP address"),
            ("[::1", "unclosed ["),
            ("[::1]", "expected :port"),
        ] {
            assert!(refused(raw).contains(says), "{raw}: {}", refused(raw));
        }
    }

    #[test]
    fn rules_match_names_and_addresses() {
        let exact = rule("pypi.org");
        assert!(exact.matches_name("PYPI.org.", 443));
        assert!(!exact.matches_name("files.pypi.org", 443));
        let wild = rule("*.example.com");
        assert!(wild.matches_name("a.example.com", 80));
        assert!(wild.matches_name("a.b.example.com", 80));
        assert!(
            !wild.matches_name("example.com", 80),
            "the name itself is not a subdomain"
        );
        assert!(!wild.matches_name("badexample.com", 80));
        let port = rule("api.example.com:443");
        assert!(port.matches_name("api.example.com", 443));
        assert!(!port.matches_name("api.example.com", 80));
        let range = rule("10.1.2.0/24");
        assert!(range.matches_addr("10.1.2.200".parse().unwrap(), 1));
        assert!(range.matches_addr("::ffff:10.1.2.9".parse().unwrap(), 1));
        assert!(!range.matches_addr("10.1.3.1".parse().unwrap(), 1));
        assert!(!range.matches_name("10.1.2.1", 1));
        let everything = rule("0.0.0.0/0");
        assert!(everything.matches_addr("8.8.8.8".parse().unwrap(), 53));
        assert!(!everything.matches_addr("::1".parse().unwrap(), 53));
    }

    #[test]
    fn policies_parse_from_the_wire() {
        let none = Policy::parse(&NetworkPolicy::default(), Some(Egress::None)).unwrap();
        assert_eq!(none, Policy::none());
        assert_eq!(none.to_wire(), NetworkPolicy::egress("none"));
        assert_eq!(
            Policy::parse(&NetworkPolicy::default(), None),
            Err(PolicyError::MissingEgress)
        );
        let all = Policy::parse(&NetworkPolicy::egress(" ALL "), None).unwrap();
        assert_eq!(all.egress(), Egress::All);
        assert!(all.allows_name("anything.example", 1));
        let allow = Policy::parse(
            &NetworkPolicy::allow(["PyPI.org", "pypi.org", "10.0.0.0/8"]),
            None,
        )
        .unwrap();
        assert_eq!(allow.rules().len(), 2, "duplicates folded");
        assert_eq!(
            allow.to_wire(),
            NetworkPolicy::allow(["pypi.org", "10.0.0.0/8"])
        );
        assert!(allow.allows_name("pypi.org", 443));
        assert!(!allow.allows_name("example.com", 443));
        assert!(!Policy::none().allows_name("pypi.org", 443));
        assert_eq!(
            Policy::parse(&NetworkPolicy::egress("some"), None),
            Err(PolicyError::UnknownEgress("some".into()))
        );
        let mixed = NetworkPolicy {
            egress: "all".into(),
            allow: vec!["pypi.org".into()],
        };
        assert_eq!(
            Policy::parse(&mixed, None),
            Err(PolicyError::AllowWithoutAllowMode)
        );
        let many = NetworkPolicy::allow((0..300).map(|i| format!("h{i}.example")));
        assert_eq!(
            Policy::parse(&many, None),
            Err(PolicyError::TooManyRules(300))
        );
        let empty = Policy::parse(&NetworkPolicy::allow(Vec::<String>::new()), None).unwrap();
        assert_eq!(
            empty.egress(),
            Egress::Allow,
            "an empty allow-list reaches nothing"
        );
    }
}
