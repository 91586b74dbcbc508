//! The worker registry: one record per worker with its base URL, SKU, reported capacity,
//! lease and pending VM-start queue, plus validation of registration requests.

use std::collections::{HashMap, VecDeque};

use chrono::{DateTime, Utc};
use url::Url;

use super::BrokerError;
use crate::api::{RegistrationRequest, WorkerCapacity};
use crate::id::ComponentId;
use crate::scheduler::WorkerLoad;
use crate::tuple::SandboxTuple;

/// Capacity and load as the worker last reported them (at registration, a heartbeat or in a
/// VM event).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Capacity {
    pub total_cores: u64,
    pub total_memory_mib: u64,
    pub max_live_sandboxes: u64,
    pub live_sandboxes: u64,
    pub allocated_cores: u64,
    pub allocated_memory_mib: u64,
    /// False when the worker said it takes no new sandboxes.
    pub accepting: bool,
}

impl Default for Capacity {
    /// Nothing reported: no limits known, accepting.
    fn default() -> Self {
        Self {
            total_cores: 0,
            total_memory_mib: 0,
            max_live_sandboxes: 0,
            live_sandboxes: 0,
            allocated_cores: 0,
            allocated_memory_mib: 0,
            accepting: true,
        }
    }
}

impl Capacity {
    /// Takes the load a VM event reported; `None` (and no change) when a value is negative.
    pub fn update_load(&mut self, report: &WorkerCapacity) -> Option<()> {
        let live = u64::try_from(report.live_sandboxes).ok()?;
        let cores = u64::try_from(report.allocated_cores).ok()?;
        let memory = u64::try_from(report.allocated_memory_mib).ok()?;
        self.live_sandboxes = live;
        self.allocated_cores = cores;
        self.allocated_memory_mib = memory;
        self.accepting = report.accepting_sandboxes;
        Some(())
    }
}

/// A registration request that passed validation.
#[derive(Debug, Clone)]
pub(super) struct ValidRegistration {
    pub hostname: String,
    pub base_url: Url,
    pub hardware_sku: String,
    pub capacity: Capacity,
    pub virtualizations: Vec<String>,
}

/// Checks a registration body; errors carry the exact contract messages.
pub(super) fn validate_registration(
    request: &RegistrationRequest,
) -> Result<ValidRegistration, BrokerError> {
    let hostname = request.hostname.trim();
    if hostname.is_empty() {
        return Err(BrokerError::InvalidRegistration("hostname is required"));
    }
    let base_url = parse_base_url(&request.base_url)?;
    let non_negative = |value: i64, message: &'static str| {
        u64::try_from(value).map_err(|_| BrokerError::InvalidRegistration(message))
    };
    let capacity = Capacity {
        total_cores: non_negative(request.total_cores, "total_cores must be >= 0")?,
        total_memory_mib: non_negative(request.total_memory_mib, "total_memory_mib must be >= 0")?,
        max_live_sandboxes: non_negative(
            request.max_live_sandboxes,
            "max_live_sandboxes must be >= 0",
        )?,
        live_sandboxes: non_negative(request.live_sandboxes, "live_sandboxes must be >= 0")?,
        allocated_cores: non_negative(request.allocated_cores, "allocated_cores must be >= 0")?,
        allocated_memory_mib: non_negative(
            request.allocated_memory_mib,
            "allocated_memory_mib must be >= 0",
        )?,
        accepting: request.accepting_sandboxes.unwrap_or(true),
    };
    Ok(ValidRegistration {
        hostname: hostname.to_string(),
        base_url,
        hardware_sku: request.hardware_sku.trim().to_string(),
        capacity,
        virtualizations: request
            .virtualizations
            .iter()
            .map(|v| v.trim().to_ascii_lowercase())
            .filter(|v| !v.is_empty())
            .collect(),
    })
}

/// Parses a worker base URL: http or https, with a host, without query or fragment. A path
/// prefix and userinfo are allowed.
pub(super) fn parse_base_url(raw: &str) -> Result<Url, BrokerError> {
    let raw = raw.trim();
    if raw.is_empty() {
        return Err(BrokerError::InvalidRegistration("base_url is required"));
    }
    let url = match Url::parse(raw) {
        Ok(url) => url,
        // No scheme at all (`worker-a.local`): the scheme is what is wrong.
        Err(url::ParseError::RelativeUrlWithoutBase) => {
            return Err(BrokerError::InvalidRegistration(
                "base_url must use http or https",
            ))
        }
        Err(url::ParseError::EmptyHost) => {
            return Err(BrokerError::InvalidRegistration(
                "base_url must include host",
            ))
        }
        Err(_) => {
            return Err(BrokerError::InvalidRegistration(
                "base_url must be a valid URL",
            ))
        }
    };
    if url.scheme() != "http" && url.scheme() != "https" {
        return Err(BrokerError::InvalidRegistration(
            "base_url must use http or https",
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(BrokerError::InvalidRegistration(
            "base_url must include host",
        ));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(BrokerError::InvalidRegistration(
            "base_url must not include query or fragment",
        ));
    }
    Ok(url)
}

/// One worker as the broker sees it.
#[derive(Debug, Clone)]
pub(super) struct WorkerRecord {
    pub id: ComponentId,
    pub hostname: String,
    pub base_url: Url,
    pub hardware_sku: String,
    pub capacity: Capacity,
    /// What it serves; empty: any virtualization (a prototype worker, a static worker).
    pub virtualizations: Vec<String>,
    /// Cold placements sent here since the last registration or heartbeat.
    pub placed_since_heartbeat: u64,
    pub available: bool,
    /// Added in-process: never expires, survives deregistration as unavailable.
    pub is_static: bool,
    pub last_seen_at: DateTime<Utc>,
    /// `None` for static workers added in-process.
    pub lease_expires_at: Option<DateTime<Utc>>,
    /// Registration order, for deterministic tie-breaking.
    pub order: u64,
    /// Tuples the worker should boot, oldest first.
    pub pending: VecDeque<SandboxTuple>,
}

impl WorkerRecord {
    /// True when it serves `virtualization` (a worker that did not say, serves any).
    pub fn serves(&self, virtualization: &str) -> bool {
        self.virtualizations.is_empty() || self.virtualizations.iter().any(|v| v == virtualization)
    }

    /// Available, and static or within its lease (expiry at the exact instant still counts).
    pub fn is_active(&self, now: DateTime<Utc>) -> bool {
        self.available
            && (self.is_static || self.lease_expires_at.is_some_and(|lease| now <= lease))
    }

    /// A lapsed lease on a dynamic worker still marked available.
    pub fn lease_lapsed(&self, now: DateTime<Utc>) -> bool {
        !self.is_static && self.available && self.lease_expires_at.is_some_and(|l| now > l)
    }

    /// The scheduler's view of this worker for a create of `tuple`, without its ready
    /// sandboxes (the ready index knows those).
    pub fn load(&self, tuple: &SandboxTuple) -> WorkerLoad {
        WorkerLoad {
            total_cores: self.capacity.total_cores,
            total_memory_mib: self.capacity.total_memory_mib,
            max_live_sandboxes: self.capacity.max_live_sandboxes,
            live_sandboxes: self.capacity.live_sandboxes,
            allocated_cores: self.capacity.allocated_cores,
            allocated_memory_mib: self.capacity.allocated_memory_mib,
            placed_since_heartbeat: self.placed_since_heartbeat,
            accepting: self.capacity.accepting,
            starting: self.pending.iter().filter(|t| *t == tuple).count() as u64,
            ..WorkerLoad::new(self.id.clone(), self.order)
        }
    }

    /// Queues a VM start, dropping the oldest entries beyond `max`. Returns how many were
    /// dropped.
    pub fn enqueue_start(&mut self, tuple: SandboxTuple, max: usize) -> usize {
        if max == 0 {
            return 1;
        }
        let mut dropped = 0;
        while self.pending.len() >= max {
            self.pending.pop_front();
            dropped += 1;
        }
        self.pending.push_back(tuple);
        dropped
    }
}

/// Every known worker by id.
#[derive(Debug, Default)]
pub(super) struct Registry {
    workers: HashMap<ComponentId, WorkerRecord>,
    next_order: u64,
}

impl Registry {
    pub fn get(&self, id: &ComponentId) -> Option<&WorkerRecord> {
        self.workers.get(id)
    }

    pub fn get_mut(&mut self, id: &ComponentId) -> Option<&mut WorkerRecord> {
        self.workers.get_mut(id)
    }

    /// Looks a worker up by its raw id; an invalid id is simply unknown.
    pub fn find(&self, raw: &str) -> Option<&WorkerRecord> {
        ComponentId::parse(raw)
            .ok()
            .and_then(|id| self.workers.get(&id))
    }

    /// True when the worker exists and is active at `now`.
    pub fn is_active(&self, id: &ComponentId, now: DateTime<Utc>) -> bool {
        self.workers.get(id).is_some_and(|w| w.is_active(now))
    }

    /// The next registration-order position.
    pub fn next_order(&mut self) -> u64 {
        let order = self.next_order;
        self.next_order += 1;
        order
    }

    pub fn insert(&mut self, record: WorkerRecord) {
        self.workers.insert(record.id.clone(), record);
    }

    pub fn remove(&mut self, id: &ComponentId) -> Option<WorkerRecord> {
        self.workers.remove(id)
    }

    pub fn iter(&self) -> impl Iterator<Item = &WorkerRecord> {
        self.workers.values()
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut WorkerRecord> {
        self.workers.values_mut()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(base_url: &str) -> RegistrationRequest {
        RegistrationRequest {
            hostname: "worker-a".into(),
            base_url: base_url.into(),
            ..Default::default()
        }
    }

    fn message(req: &RegistrationRequest) -> &'static str {
        match validate_registration(req) {
            Err(BrokerError::InvalidRegistration(m)) => m,
            other => panic!("expected a validation error, got {other:?}"),
        }
    }

    #[test]
    fn base_url_rules() {
        for (url, msg) in [
            ("", "base_url is required"),
            ("  ", "base_url is required"),
            (
                "tcp://worker-a.local:8081",
                "base_url must use http or https",
            ),
            ("host:8081", "base_url must use http or https"),
            ("worker-a.local", "base_url must use http or https"),
            ("http://", "base_url must include host"),
            ("http://[::1", "base_url must be a valid URL"),
            (
                "http://worker-a.local:99999",
                "base_url must be a valid URL",
            ),
            (
                "http://worker-a.local/?x=1",
                "base_url must not include query or fragment",
            ),
            (
                "http://worker-a.local/#top",
                "base_url must not include query or fragment",
            ),
        ] {
            assert_eq!(message(&request(url)), msg, "{url}");
        }
        for ok in [
            "http://worker-a.local:8081",
            "HTTPS://worker-a.local/prefix/",
            "http://user:pw@worker-a.local:8081/p",
        ] {
            assert!(validate_registration(&request(ok)).is_ok(), "{ok}");
        }
    }

    #[test]
    fn field_rules() {
        let mut r = request("http://worker-a.local:8081");
        r.hostname = " ".into();
        assert_eq!(message(&r), "hostname is required");
        let base = request("http://worker-a.local:8081");
        type Case = (fn(&mut RegistrationRequest), &'static str);
        let cases: [Case; 6] = [
            (|r| r.total_cores = -1, "total_cores must be >= 0"),
            (|r| r.total_memory_mib = -1, "total_memory_mib must be >= 0"),
            (
                |r| r.max_live_sandboxes = -1,
                "max_live_sandboxes must be >= 0",
            ),
            (|r| r.live_sandboxes = -1, "live_sandboxes must be >= 0"),
            (|r| r.allocated_cores = -1, "allocated_cores must be >= 0"),
            (
                |r| r.allocated_memory_mib = -1,
                "allocated_memory_mib must be >= 0",
            ),
        ];
        for (mutate, msg) in cases {
            let mut r = base.clone();
            mutate(&mut r);
            assert_eq!(message(&r), msg);
        }
        let mut r = base.clone();
        r.hardware_sku = " gpu-a100 ".into();
        r.total_cores = 16;
        r.live_sandboxes = 2;
        let v = validate_registration(&r).unwrap();
        assert_eq!(v.hardware_sku, "gpu-a100");
        assert_eq!(v.capacity.total_cores, 16);
        assert_eq!(v.capacity.live_sandboxes, 2);
        assert_eq!(v.hostname, "worker-a");
    }

    #[test]
    fn bounded_queue_drops_oldest() {
        let t = |cpu| SandboxTuple {
            virtualization: "vetu".into(),
            image: "img".into(),
            cpu,
        };
        let mut w = WorkerRecord {
            id: ComponentId::parse("worker_a").unwrap(),
            hostname: "a".into(),
            base_url: Url::parse("http://a").unwrap(),
            hardware_sku: String::new(),
            virtualizations: Vec::new(),
            capacity: Capacity::default(),
            placed_since_heartbeat: 0,
            available: true,
            is_static: true,
            last_seen_at: DateTime::UNIX_EPOCH,
            lease_expires_at: None,
            order: 0,
            pending: VecDeque::new(),
        };
        assert_eq!(w.enqueue_start(t(1), 2), 0);
        assert_eq!(w.enqueue_start(t(2), 2), 0);
        assert_eq!(w.enqueue_start(t(3), 2), 1);
        let cpus: Vec<u32> = w.pending.iter().map(|t| t.cpu).collect();
        assert_eq!(cpus, [2, 3]);
        assert_eq!(w.enqueue_start(t(4), 0), 1);
        assert_eq!(w.pending.len(), 2);
    }
}
