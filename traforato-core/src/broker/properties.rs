//! Property tests of placement over random fleets: workers registered, static, gone,
//! unavailable or past their lease, of random SKUs, virtualizations and loads, with ready VMs
//! announced before and after; every create lands on a worker that fits it, whenever one does.

use std::collections::BTreeMap;

use chrono::TimeZone;
use proptest::prelude::*;

use super::*;
use crate::clock::ManualClock;
use crate::scheduler::LeastLoaded;

const VIRTUALIZATIONS: [&str; 3] = ["vetu", "tart", "fake"];
const SKUS: [&str; 3] = ["", "cpu", "gpu"];

/// What becomes of a worker after it registered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    Active,
    /// Added in-process: any virtualization, nothing live, accepting.
    Static,
    Deregistered,
    Unavailable,
    /// Registered before the clock passed its lease.
    Lapsed,
}

#[derive(Debug, Clone)]
struct Spec {
    sku: usize,
    /// The virtualizations it names (bits of [`VIRTUALIZATIONS`]); none: it serves any.
    serves: u8,
    max_live: u64,
    live: u64,
    total_cores: u64,
    allocated_cores: u64,
    accepting: bool,
    fate: Fate,
}

impl Spec {
    fn is_active(&self) -> bool {
        matches!(self.fate, Fate::Active | Fate::Static)
    }

    fn serves(&self, virtualization: usize) -> bool {
        self.fate == Fate::Static || self.serves == 0 || self.serves & (1 << virtualization) != 0
    }

    /// Room for one more sandbox of `cpu` by what it reported.
    fn has_room(&self, cpu: u64) -> bool {
        if self.fate == Fate::Static {
            // Nothing live or allocated until it reports.
            return self.total_cores == 0 || self.total_cores >= cpu;
        }
        self.accepting
            && (self.max_live == 0 || self.live < self.max_live)
            && (self.total_cores == 0
                || self.total_cores.saturating_sub(self.allocated_cores) >= cpu)
    }

    fn fits(&self, virtualization: usize, cpu: u64, sku: usize) -> bool {
        self.is_active()
            && self.serves(virtualization)
            && (sku == 0 || self.sku == sku)
            && self.has_room(cpu)
    }
}

/// A reported limit: mostly small, sometimes 0 (not reported), now and then the largest a
/// worker can send.
fn offered() -> impl Strategy<Value = u64> {
    prop_oneof![2 => Just(0u64), 6 => 1u64..8, 1 => Just(i64::MAX as u64)]
}

/// A reported use: mostly below the limits, now and then the largest a worker can send.
fn used() -> impl Strategy<Value = u64> {
    prop_oneof![4 => 0u64..3, 2 => 0u64..8, 1 => Just(i64::MAX as u64)]
}

fn spec() -> impl Strategy<Value = Spec> {
    let fate = prop_oneof![
        6 => Just(Fate::Active),
        2 => Just(Fate::Static),
        1 => Just(Fate::Deregistered),
        1 => Just(Fate::Unavailable),
        1 => Just(Fate::Lapsed),
    ];
    (
        (0..SKUS.len(), 0u8..8, fate),
        (offered(), used(), offered(), used()),
        prop_oneof![6 => Just(true), 1 => Just(false)],
    )
        .prop_map(
            |((sku, serves, fate), (max_live, live, total_cores, allocated_cores), accepting)| {
                Spec {
                    sku,
                    serves,
                    max_live,
                    live,
                    total_cores,
                    allocated_cores,
                    accepting,
                    fate,
                }
            },
        )
}

/// A ready VM: worker index, VM index, virtualization, image, cpu.
type Ready = (usize, u8, usize, usize, u32);
/// A create: virtualization, image, cpu, SKU.
type Create = (usize, usize, u32, usize);

fn ready() -> impl Strategy<Value = Ready> {
    (0..6usize, 0..6u8, 0..3usize, 0..2usize, 1..3u32)
}

fn create() -> impl Strategy<Value = Create> {
    (0..3usize, 0..2usize, 1..3u32, 0..SKUS.len())
}

fn worker_name(i: usize) -> String {
    format!("worker_{i}")
}

fn vm(i: u8) -> LocalVmId {
    LocalVmId::from_entropy([i; 16])
}

fn tuple(virtualization: usize, image: usize, cpu: u32) -> SandboxTuple {
    SandboxTuple {
        virtualization: VIRTUALIZATIONS[virtualization].into(),
        image: format!("img{image}"),
        cpu,
    }
}

fn index_of(id: &ComponentId) -> usize {
    id.as_str()
        .strip_prefix("worker_")
        .and_then(|n| n.parse().ok())
        .expect("a worker of the fleet")
}

fn registration(i: usize, spec: &Spec) -> RegistrationRequest {
    let signed = |v: u64| i64::try_from(v).expect("fits");
    RegistrationRequest {
        hostname: format!("worker-{i}"),
        base_url: format!("http://worker-{i}.local:8081"),
        hardware_sku: SKUS[spec.sku].into(),
        total_cores: signed(spec.total_cores),
        max_live_sandboxes: signed(spec.max_live),
        live_sandboxes: signed(spec.live),
        allocated_cores: signed(spec.allocated_cores),
        accepting_sandboxes: Some(spec.accepting),
        virtualizations: (0..VIRTUALIZATIONS.len())
            .filter(|v| spec.serves & (1 << v) != 0)
            .map(|v| VIRTUALIZATIONS[v].to_string())
            .collect(),
        ..RegistrationRequest::default()
    }
}

/// Announces ready VMs; the model keeps what the broker accepted, by (worker, VM).
fn announce(broker: &Broker, readies: &[Ready], model: &mut BTreeMap<(usize, u8), SandboxTuple>) {
    for &(w, v, virtualization, image, cpu) in readies {
        let event = VmEventRequest {
            event: "ready".into(),
            local_vm_id: vm(v).to_string(),
            virtualization: VIRTUALIZATIONS[virtualization].into(),
            image: format!("img{image}"),
            cpu: i64::from(cpu),
            timestamp: None,
            capacity: None,
        };
        if broker.apply_vm_event(&worker_name(w), event).is_ok() {
            model.insert((w, v), tuple(virtualization, image, cpu));
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn creates_land_on_a_fitting_worker_whenever_one_fits(
        specs in prop::collection::vec(spec(), 1..6),
        sweep in any::<bool>(),
        early in prop::collection::vec(ready(), 0..12),
        late in prop::collection::vec(ready(), 0..6),
        creates in prop::collection::vec(create(), 1..16),
    ) {
        let start = Utc.with_ymd_and_hms(2026, 2, 25, 12, 0, 0).unwrap();
        let clock = Arc::new(ManualClock::new(start));
        let config = BrokerConfig {
            default_virtualization: "vetu".into(),
            restart_grace: Duration::ZERO,
            ..BrokerConfig::default()
        };
        let ttl = config.worker_lease_ttl;
        let metrics = Arc::new(Metrics::new(false));
        let broker = Broker::new(config, clock.clone(), Arc::new(LeastLoaded), metrics);

        // Leases that lapse first, then everyone else.
        for (i, spec) in specs.iter().enumerate().filter(|(_, s)| s.fate == Fate::Lapsed) {
            broker.register_worker(&worker_name(i), registration(i, spec)).expect("registered");
        }
        clock.advance(ttl + Duration::from_secs(1));
        for (i, spec) in specs.iter().enumerate() {
            match spec.fate {
                Fate::Lapsed => {}
                Fate::Static => broker.register_static_worker(StaticWorker {
                    worker_id: worker_name(i),
                    hostname: format!("worker-{i}"),
                    base_url: format!("http://worker-{i}.local:8081"),
                    hardware_sku: SKUS[spec.sku].into(),
                    total_cores: spec.total_cores,
                    total_memory_mib: 0,
                    max_live_sandboxes: spec.max_live,
                }),
                _ => {
                    let request = registration(i, spec);
                    broker.register_worker(&worker_name(i), request).expect("registered");
                }
            }
        }

        let mut hints: BTreeMap<(usize, u8), SandboxTuple> = BTreeMap::new();
        announce(&broker, &early, &mut hints);
        for (i, spec) in specs.iter().enumerate() {
            match spec.fate {
                Fate::Deregistered => broker.deregister_worker(&worker_name(i)),
                Fate::Unavailable => broker.set_worker_available(&worker_name(i), false),
                _ => continue,
            }
            hints.retain(|(w, _), _| *w != i);
        }
        if sweep {
            broker.sweep_expired_leases();
            hints.retain(|(w, _), _| specs.get(*w).is_none_or(|s| s.fate != Fate::Lapsed));
        }
        // Announcements still come from inactive workers the broker knows (dev mode).
        announce(&broker, &late, &mut hints);
        for (i, spec) in specs.iter().enumerate() {
            let active = broker.is_worker_active(&worker_name(i));
            prop_assert_eq!(active, spec.is_active(), "worker {}", i);
        }

        for (virtualization, image, cpu, sku) in creates {
            let request = CreateSandboxRequest {
                image: format!("img{image}"),
                cpu: i64::from(cpu),
                virtualization: VIRTUALIZATIONS[virtualization].into(),
                hardware_sku: SKUS[sku].into(),
                ttl_seconds: 0,
                network: None,
            };
            let placed = broker.place_create(&request, None);
            let fitting: Vec<usize> = (0..specs.len())
                .filter(|i| specs[*i].fits(virtualization, u64::from(cpu), sku))
                .collect();
            match placed {
                Ok(placement) => {
                    let w = index_of(&placement.worker_id);
                    prop_assert!(fitting.contains(&w), "placed on worker {} which does not fit", w);
                    if let Some(v) = placement.local_vm_id {
                        let v = (0..6u8).find(|i| vm(*i) == v).expect("an announced vm");
                        let hinted = hints.remove(&(w, v));
                        let wanted = tuple(virtualization, image, cpu);
                        prop_assert_eq!(hinted, Some(wanted), "vm {} of worker {}", v, w);
                    }
                }
                Err(error) => {
                    prop_assert!(fitting.is_empty(), "{} while workers {:?} fit", error, fitting);
                    let any_active = specs.iter().any(Spec::is_active);
                    let any_serving =
                        specs.iter().any(|s| s.is_active() && s.serves(virtualization));
                    let name = VIRTUALIZATIONS[virtualization];
                    let expected = if any_active && !any_serving {
                        BrokerError::VirtualizationUnavailable(name.into())
                    } else {
                        BrokerError::NoPlacementCapacity
                    };
                    prop_assert_eq!(error, expected);
                }
            }
        }
    }
}
