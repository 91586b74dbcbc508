//! Behaviour tests of the broker facade: registration, leases, VM events, placement,
//! redirects and the availability text, on a manual clock.

use std::sync::{Arc, Barrier};
use std::time::Duration;

use chrono::TimeZone;

use super::*;
use crate::api::WorkerCapacity;
use crate::clock::ManualClock;
use crate::scheduler::{Choice, LeastLoaded, WorkerLoad};
use crate::tuple::TART_DEFAULT_IMAGE;

const VM_A: &str = "550e8400-e29b-41d4-a716-446655440000";
const VM_B: &str = "6ba7b810-9dad-41d1-80b4-00c04fd430c8";
const VM_C: &str = "16fd2706-8baf-433b-82eb-8c7fada847da";

fn start() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 2, 25, 12, 0, 0).unwrap()
}

fn config() -> BrokerConfig {
    BrokerConfig {
        default_virtualization: "vetu".into(),
        // Unknown workers are unknown at once (the grace has a test of its own).
        restart_grace: Duration::ZERO,
        ..BrokerConfig::default()
    }
}

struct Fixture {
    broker: Arc<Broker>,
    clock: Arc<ManualClock>,
}

fn fixture_with(config: BrokerConfig) -> Fixture {
    fixture_with_scheduler(config, Arc::new(LeastLoaded))
}

fn fixture_with_scheduler(config: BrokerConfig, scheduler: Arc<dyn Scheduler>) -> Fixture {
    let clock = Arc::new(ManualClock::new(start()));
    let metrics = Arc::new(Metrics::new(config.prod_mode));
    let broker = Arc::new(Broker::new(config, clock.clone(), scheduler, metrics));
    Fixture { broker, clock }
}

fn dev() -> Fixture {
    fixture_with(config())
}

fn prod() -> Fixture {
    fixture_with(BrokerConfig {
        prod_mode: true,
        ..config()
    })
}

fn add_static(broker: &Broker, id: &str, host: &str, sku: &str) {
    broker.register_static_worker(StaticWorker {
        worker_id: id.into(),
        hostname: host.into(),
        base_url: format!("http://{host}:8081"),
        hardware_sku: sku.into(),
        ..StaticWorker::default()
    });
}

fn event(kind: &str, vm: &str, virtualization: &str, image: &str, cpu: i64) -> VmEventRequest {
    VmEventRequest {
        event: kind.into(),
        local_vm_id: vm.into(),
        virtualization: virtualization.into(),
        image: image.into(),
        cpu,
        timestamp: None,
        capacity: None,
    }
}

fn ready(broker: &Broker, worker: &str, vm: &str, virtualization: &str, image: &str, cpu: i64) {
    broker
        .apply_vm_event(worker, event("ready", vm, virtualization, image, cpu))
        .unwrap();
}

fn create(virtualization: &str, image: &str, cpu: i64, sku: &str) -> CreateSandboxRequest {
    CreateSandboxRequest {
        image: image.into(),
        cpu,
        virtualization: virtualization.into(),
        hardware_sku: sku.into(),
        ttl_seconds: 0,
        network: None,
    }
}

fn registration(base_url: &str) -> RegistrationRequest {
    RegistrationRequest {
        hostname: "worker-a".into(),
        base_url: base_url.into(),
        ..RegistrationRequest::default()
    }
}

fn sandbox_id(broker: &str, worker: &str) -> String {
    format!("sbx-{broker}-{worker}-{VM_A}")
}

fn hint_count(broker: &Broker) -> usize {
    broker.lock().ready.len()
}

fn no_capacity(broker: &Broker, reason: &str) -> Option<f64> {
    broker
        .metrics()
        .broker
        .no_capacity
        .value(&NoCapacityLabels {
            status_code: 503,
            reason,
        })
}

fn line_value<'a>(text: &'a str, key: &str) -> &'a str {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("{key} missing in {text}"))
}

fn rows(text: &str) -> Vec<&str> {
    let (_, table) = text
        .split_once("\n\n")
        .expect("blank line before the table");
    table.lines().skip(1).collect()
}

// §11 item 31.
#[test]
fn availability_shape() {
    let f = dev();
    add_static(&f.broker, "worker_a", "worker-a.local", "");
    let text = f.broker.availability_text();
    let mut lines = text.lines();
    assert_eq!(
        lines.next(),
        Some("# traforato broker sandbox availability")
    );
    assert_eq!(line_value(&text, "generated_at"), "2026-02-25T12:00:00Z");
    assert_eq!(line_value(&text, "broker_id"), "broker_local");
    for key in [
        "workers_registered_total",
        "workers_active_total",
        "workers_unavailable_total",
        "workers_static_total",
        "workers_dynamic_total",
        "available_sandboxes_total",
        "available_sandbox_kinds_total",
    ] {
        line_value(&text, key);
    }
    assert!(
        text.contains("available_sandbox_kinds_total=0\n\nvirtualization\timage\tcpu\tavailable\n")
    );
    assert!(text.ends_with("virtualization\timage\tcpu\tavailable\n"));
    // Whole seconds even when the clock is not on a second boundary.
    f.clock.advance(Duration::from_millis(1500));
    let text = f.broker.availability_text();
    assert_eq!(line_value(&text, "generated_at"), "2026-02-25T12:00:01Z");
}

// §11 item 32.
#[test]
fn availability_rows_sorted() {
    let f = dev();
    add_static(&f.broker, "worker_a", "worker-a.local", "");
    ready(&f.broker, "worker_a", VM_A, "vetu", "ubuntu:24.04", 2);
    ready(&f.broker, "worker_a", VM_B, "tart", "", 1);
    ready(&f.broker, "worker_a", VM_C, "vetu", "alpine:3.20", 1);
    let text = f.broker.availability_text();
    assert_eq!(
        rows(&text),
        [
            "tart\tghcr.io/cirruslabs/macos-tahoe-base:latest\t1\t1",
            "vetu\talpine:3.20\t1\t1",
            "vetu\tubuntu:24.04\t2\t1",
        ]
    );
}

// §11 item 33.
#[test]
fn availability_aggregates_across_workers() {
    let f = dev();
    add_static(&f.broker, "worker_a", "worker-a.local", "");
    add_static(&f.broker, "worker_b", "worker-b.local", "");
    ready(&f.broker, "worker_a", VM_A, "vetu", "ubuntu:24.04", 1);
    ready(&f.broker, "worker_a", VM_B, "vetu", "ubuntu:24.04", 1);
    ready(&f.broker, "worker_b", VM_A, "vetu", "ubuntu:24.04", 1);
    ready(&f.broker, "worker_b", VM_C, "vetu", "ubuntu:24.04", 2);
    let text = f.broker.availability_text();
    assert_eq!(line_value(&text, "available_sandboxes_total"), "4");
    assert_eq!(line_value(&text, "available_sandbox_kinds_total"), "2");
    assert_eq!(
        rows(&text),
        ["vetu\tubuntu:24.04\t1\t3", "vetu\tubuntu:24.04\t2\t1"]
    );
}

// §11 item 34.
#[test]
fn availability_counts_only_active_workers() {
    let f = fixture_with(BrokerConfig {
        worker_lease_ttl: Duration::from_secs(60),
        ..config()
    });
    let b = &f.broker;
    add_static(b, "static_active", "sa.local", "");
    add_static(b, "static_down", "sd.local", "");
    b.set_worker_available("static_down", false);
    b.register_worker("dyn_expired", registration("http://de.local:8081"))
        .unwrap();
    ready(b, "dyn_expired", VM_A, "vetu", "ubuntu:24.04", 1);
    f.clock.advance(Duration::from_secs(61));
    b.register_worker("dyn_active", registration("http://da.local:8081"))
        .unwrap();
    ready(b, "static_active", VM_A, "tart", "", 1);
    ready(b, "dyn_active", VM_B, "vetu", "ubuntu:24.04", 1);
    // Dev mode accepts events from inactive known workers; they must not be counted.
    ready(b, "static_down", VM_C, "vetu", "ubuntu:24.04", 1);
    // A hint whose worker is gone.
    b.lock().ready.upsert(
        ComponentId::parse("ghost").unwrap(),
        LocalVmId::parse(VM_A).unwrap(),
        SandboxTuple::normalize("vetu", "ubuntu:24.04", 1, "vetu"),
    );
    let text = b.availability_text();
    for (key, value) in [
        ("workers_registered_total", "4"),
        ("workers_active_total", "2"),
        ("workers_unavailable_total", "2"),
        ("workers_static_total", "2"),
        ("workers_dynamic_total", "2"),
        ("available_sandboxes_total", "2"),
        ("available_sandbox_kinds_total", "2"),
    ] {
        assert_eq!(line_value(&text, key), value, "{key}");
    }
    assert_eq!(
        rows(&text),
        [
            format!("tart\t{TART_DEFAULT_IMAGE}\t1\t1").as_str(),
            "vetu\tubuntu:24.04\t1\t1"
        ]
    );
}

// §11 item 35.
#[test]
fn availability_does_not_consume_hints() {
    let f = dev();
    add_static(&f.broker, "worker_a", "worker-a.local", "");
    ready(&f.broker, "worker_a", VM_A, "vetu", "ubuntu:24.04", 2);
    let text = f.broker.availability_text();
    assert_eq!(line_value(&text, "available_sandboxes_total"), "1");
    let p = f
        .broker
        .place_create(&create("vetu", "ubuntu:24.04", 2, ""), None)
        .unwrap();
    assert_eq!(p.local_vm_id.unwrap().to_string(), VM_A);
}

// §11 items 36 and 37 (auth is the server's; the broker logic is mode-independent here).
#[test]
fn prod_routes_and_places() {
    let f = prod();
    add_static(&f.broker, "worker_a", "worker-a.local", "");
    let id = sandbox_id("broker_local", "worker_a");
    let r = f
        .broker
        .route_sandbox(&id, &format!("/sandboxes/{id}"), None)
        .unwrap();
    assert_eq!(
        r.location,
        format!("http://worker-a.local:8081/sandboxes/{id}")
    );
    assert_eq!(r.worker_id.as_str(), "worker_a");
    let p = f
        .broker
        .place_create(&create("", "ubuntu:24.04", 1, ""), None)
        .unwrap();
    assert_eq!(p.location, "http://worker-a.local:8081/sandboxes");
}

// §11 item 38.
#[test]
fn sku_selects_worker() {
    let f = dev();
    add_static(&f.broker, "worker_a", "worker-a.local", "cpu-standard");
    add_static(&f.broker, "worker_b", "worker-b.local", "gpu-a100");
    let p = f
        .broker
        .place_create(&create("vetu", "ubuntu:24.04", 1, " gpu-a100 "), None)
        .unwrap();
    assert_eq!(p.location, "http://worker-b.local:8081/sandboxes");
    assert_eq!(p.worker_id.as_str(), "worker_b");
}

// §11 item 39, and the `no_worker` reason.
#[test]
fn no_capacity_reasons() {
    let f = dev();
    let r = f
        .broker
        .place_create(&create("vetu", "ubuntu:24.04", 1, ""), None);
    assert_eq!(r, Err(BrokerError::NoPlacementCapacity));
    assert_eq!(no_capacity(&f.broker, "no_worker"), Some(1.0));
    add_static(&f.broker, "worker_a", "worker-a.local", "cpu-standard");
    let r = f
        .broker
        .place_create(&create("vetu", "ubuntu:24.04", 1, "gpu-h100"), None);
    assert_eq!(r, Err(BrokerError::NoPlacementCapacity));
    assert_eq!(
        no_capacity(&f.broker, "no_matching_hardware_sku"),
        Some(1.0)
    );
    f.broker.set_worker_available("worker_a", false);
    let r = f
        .broker
        .place_create(&create("vetu", "ubuntu:24.04", 1, "gpu-h100"), None);
    assert_eq!(r, Err(BrokerError::NoPlacementCapacity));
    assert_eq!(no_capacity(&f.broker, "no_worker"), Some(2.0));
}

// §11 item 40.
#[test]
fn route_errors() {
    let f = dev();
    add_static(&f.broker, "worker_a", "worker-a.local", "");
    let route = |id: &str| {
        f.broker
            .route_sandbox(id, &format!("/sandboxes/{id}"), None)
    };
    assert_eq!(route("not-an-id"), Err(BrokerError::MalformedSandboxId));
    assert_eq!(
        route(&format!("sbx-broker_local- worker_a-{VM_A}")),
        Err(BrokerError::MalformedSandboxId)
    );
    assert_eq!(
        route(&sandbox_id("broker_local", "worker_zz")),
        Err(BrokerError::WorkerUnknown)
    );
    assert_eq!(
        route(&sandbox_id("other_broker", "worker_a")),
        Err(BrokerError::BrokerIdMismatch)
    );
    f.broker.set_worker_available("worker_a", false);
    assert_eq!(
        route(&sandbox_id("broker_local", "worker_a")),
        Err(BrokerError::WorkerUnavailable)
    );
}

#[test]
fn route_joins_path_and_query() {
    let f = dev();
    f.broker
        .register_worker("worker_a", registration("https://gw.example.com/pool/a/"))
        .unwrap();
    let id = sandbox_id("broker_local", "worker_a");
    let r = f
        .broker
        .route_sandbox(
            &id,
            &format!("/sandboxes/{id}//proxy/3000/./app/"),
            Some("x=2&y=a%20b"),
        )
        .unwrap();
    assert_eq!(
        r.location,
        format!("https://gw.example.com/pool/a/sandboxes/{id}/proxy/3000/app/?x=2&y=a%20b")
    );
    let r = f
        .broker
        .route_sandbox(&id, &format!("/sandboxes/{id}/files/../exec"), Some(""))
        .unwrap();
    assert_eq!(
        r.location,
        format!("https://gw.example.com/pool/a/sandboxes/{id}/exec")
    );
}

// §11 items 41 and 54 (a hint is handed out once).
#[test]
fn ready_hint_is_used_once() {
    let f = dev();
    add_static(&f.broker, "worker_a", "worker-a.local", "");
    ready(&f.broker, "worker_a", VM_A, "vetu", "ubuntu:24.04", 2);
    let p = f
        .broker
        .place_create(&create("vetu", "ubuntu:24.04", 2, ""), None)
        .unwrap();
    let url = Url::parse(&p.location).unwrap();
    assert_eq!(url.host_str(), Some("worker-a.local"));
    assert_eq!(url.port(), Some(8081));
    assert_eq!(url.path(), "/sandboxes");
    assert_eq!(url.query(), Some(format!("local_vm_id={VM_A}").as_str()));
    assert_eq!(p.worker_id.as_str(), "worker_a");
    assert_eq!(p.local_vm_id.unwrap().to_string(), VM_A);
    let again = f
        .broker
        .place_create(&create("vetu", "ubuntu:24.04", 2, ""), None)
        .unwrap();
    assert_eq!(again.local_vm_id, None);
    assert_eq!(again.location, "http://worker-a.local:8081/sandboxes");
    let durations = &f.broker.metrics().broker.placement_duration;
    for result in ["ok_ready", "ok_cold"] {
        let labels = PlacementLabels {
            worker_id: "worker_a",
            result,
        };
        assert_eq!(
            durations.count_and_sum(&labels).map(|(count, _)| count),
            Some(1),
            "{result}"
        );
    }
}

// §11 item 42.
#[test]
fn tart_default_image_matches_hint() {
    let f = dev();
    add_static(&f.broker, "worker_a", "worker-a.local", "");
    ready(&f.broker, "worker_a", VM_A, "tart", TART_DEFAULT_IMAGE, 1);
    let p = f
        .broker
        .place_create(&create("tart", "", 1, ""), None)
        .unwrap();
    assert_eq!(p.local_vm_id.unwrap().to_string(), VM_A);
}

#[test]
fn default_virtualization_comes_from_config() {
    let f = fixture_with(BrokerConfig {
        default_virtualization: "container".into(),
        ..config()
    });
    add_static(&f.broker, "worker_a", "worker-a.local", "");
    ready(&f.broker, "worker_a", VM_A, "", "host", 0);
    let p = f
        .broker
        .place_create(&create("", "host", 0, ""), None)
        .unwrap();
    assert_eq!(p.local_vm_id.unwrap().to_string(), VM_A);
    f.broker
        .place_create(&create(" ", "host", 1, ""), None)
        .unwrap();
    let start = f.broker.next_vm_start("worker_a").unwrap().unwrap();
    assert_eq!(start.virtualization, "container");
}

// §11 item 43, and the retry query forms.
#[test]
fn placement_retry_limits() {
    let f = fixture_with(BrokerConfig {
        placement_retry_max: 1,
        ..config()
    });
    add_static(&f.broker, "worker_a", "worker-a.local", "");
    let req = create("vetu", "ubuntu:24.04", 1, "");
    assert_eq!(
        f.broker.place_create(&req, Some("2")),
        Err(BrokerError::PlacementRetryExhausted)
    );
    assert_eq!(
        no_capacity(&f.broker, "placement_retry_exhausted"),
        Some(1.0)
    );
    let p = f.broker.place_create(&req, Some(" 1 ")).unwrap();
    assert_eq!(p.placement_retry, 1);
    assert_eq!(
        p.location,
        "http://worker-a.local:8081/sandboxes?placement_retry=1"
    );
    ready(&f.broker, "worker_a", VM_A, "vetu", "ubuntu:24.04", 1);
    let p = f.broker.place_create(&req, Some("1")).unwrap();
    assert_eq!(
        p.location,
        format!("http://worker-a.local:8081/sandboxes?local_vm_id={VM_A}&placement_retry=1")
    );
    for bad in ["-1", "one", "1.0"] {
        assert_eq!(
            f.broker.place_create(&req, Some(bad)),
            Err(BrokerError::InvalidPlacementRetry)
        );
    }
}

#[test]
fn placement_retry_max_zero_means_no_retries() {
    let f = fixture_with(BrokerConfig {
        placement_retry_max: 0,
        ..config()
    });
    add_static(&f.broker, "worker_a", "worker-a.local", "");
    let req = create("vetu", "ubuntu:24.04", 1, "");
    assert!(f.broker.place_create(&req, None).is_ok());
    assert!(f.broker.place_create(&req, Some("0")).is_ok());
    assert_eq!(
        f.broker.place_create(&req, Some("1")),
        Err(BrokerError::PlacementRetryExhausted)
    );
}

// §11 item 44.
#[test]
fn cold_create_queues_one_vm_start() {
    let f = dev();
    add_static(&f.broker, "worker_a", "worker-a.local", "cpu-standard");
    let p = f
        .broker
        .place_create(&create("vetu", "ubuntu:24.04", 2, "cpu-standard"), None)
        .unwrap();
    assert_eq!(p.location, "http://worker-a.local:8081/sandboxes");
    assert_eq!(
        f.broker.next_vm_start("worker_a").unwrap(),
        Some(VmStartResponse {
            virtualization: "vetu".into(),
            image: "ubuntu:24.04".into(),
            cpu: 2,
        })
    );
    assert_eq!(f.broker.next_vm_start("worker_a").unwrap(), None);
}

#[test]
fn cold_create_without_image_queues_nothing() {
    let f = dev();
    add_static(&f.broker, "worker_a", "worker-a.local", "");
    let p = f
        .broker
        .place_create(&create("vetu", " ", 1, ""), None)
        .unwrap();
    assert_eq!(p.location, "http://worker-a.local:8081/sandboxes");
    assert_eq!(f.broker.next_vm_start("worker_a").unwrap(), None);
}

#[test]
fn pending_queue_is_bounded() {
    let f = fixture_with(BrokerConfig {
        pending_start_queue_max: 2,
        ..config()
    });
    add_static(&f.broker, "worker_a", "worker-a.local", "");
    for cpu in 1..=4 {
        f.broker
            .place_create(&create("vetu", "ubuntu:24.04", cpu, ""), None)
            .unwrap();
    }
    let cpus: Vec<u32> = std::iter::from_fn(|| f.broker.next_vm_start("worker_a").unwrap())
        .map(|s| s.cpu)
        .collect();
    assert_eq!(cpus, [3, 4], "the oldest requests were dropped");
}

#[test]
fn pending_queue_cleared_on_deregistration_and_rebase() {
    let f = dev();
    let req = create("vetu", "ubuntu:24.04", 1, "");
    f.broker
        .register_worker("worker_a", registration("http://worker-a.local:8081"))
        .unwrap();
    f.broker.place_create(&req, None).unwrap();
    f.broker
        .register_worker("worker_a", registration("http://worker-a.local:8081"))
        .unwrap();
    assert!(
        f.broker.next_vm_start("worker_a").unwrap().is_some(),
        "same base URL keeps the queue"
    );
    f.broker.place_create(&req, None).unwrap();
    f.broker
        .register_worker("worker_a", registration("http://worker-a.local:9090"))
        .unwrap();
    assert_eq!(f.broker.next_vm_start("worker_a").unwrap(), None);
    f.broker.place_create(&req, None).unwrap();
    f.broker.deregister_worker("worker_a");
    f.broker
        .register_worker("worker_a", registration("http://worker-a.local:9090"))
        .unwrap();
    assert_eq!(f.broker.next_vm_start("worker_a").unwrap(), None);
}

// §11 items 45 and 46 (auth is the server's): known workers may post events.
#[test]
fn vm_events_from_known_workers_apply() {
    let f = dev();
    add_static(&f.broker, "worker_a", "worker-a.local", "");
    assert_eq!(
        f.broker
            .apply_vm_event("worker_a", event("ready", VM_A, "vetu", "ubuntu:24.04", 2)),
        Ok(())
    );
    let f = prod();
    f.broker
        .register_worker("worker_a", registration("http://worker-a.local:8081"))
        .unwrap();
    assert_eq!(
        f.broker
            .apply_vm_event("worker_a", event("ready", VM_A, "vetu", "ubuntu:24.04", 2)),
        Ok(())
    );
    assert_eq!(hint_count(&f.broker), 1);
}

// §11 item 48.
#[test]
fn placement_retry_is_observed() {
    let f = dev();
    add_static(&f.broker, "worker_a", "worker-a.local", "");
    let p = f
        .broker
        .place_create(&create("vetu", "ubuntu:24.04", 1, ""), Some("1"))
        .unwrap();
    assert_eq!(p.placement_retry, 1);
    assert_eq!(
        f.broker.metrics().broker.placement_retry.count_and_sum(&()),
        Some((1, 1.0))
    );
}

// §11 item 49, and the registration response.
#[test]
fn registered_worker_receives_placements() {
    let f = dev();
    let resp = f
        .broker
        .register_worker(
            "worker_a",
            RegistrationRequest {
                hostname: "worker-a".into(),
                base_url: "http://worker-a.local:8081".into(),
                hardware_sku: "gpu-a100".into(),
                total_cores: 16,
                total_memory_mib: 32768,
                max_live_sandboxes: 8,
                ..RegistrationRequest::default()
            },
        )
        .unwrap();
    assert_eq!(resp.worker_id, "worker_a");
    assert_eq!(resp.lease_ttl_seconds, 120);
    assert_eq!(resp.heartbeat_interval_seconds, 30);
    assert_eq!(resp.expires_at, start() + chrono::Duration::seconds(120));
    assert_eq!(resp.broker_instance_id, f.broker.instance_id());
    assert!(ulid::Ulid::from_string(&resp.broker_instance_id).is_ok());
    let p = f
        .broker
        .place_create(&create("vetu", "ubuntu:24.04", 1, "gpu-a100"), None)
        .unwrap();
    assert_eq!(p.location, "http://worker-a.local:8081/sandboxes");
    assert!(f.broker.is_worker_active("worker_a"));
}

// §11 item 50, and the other registration refusals.
#[test]
fn registration_is_validated() {
    let f = dev();
    assert_eq!(
        f.broker
            .register_worker("worker_a", registration("tcp://worker-a.local:8081")),
        Err(BrokerError::InvalidRegistration(
            "base_url must use http or https"
        ))
    );
    assert_eq!(
        f.broker
            .register_worker("worker-a", registration("http://worker-a.local:8081")),
        Err(BrokerError::InvalidWorkerId)
    );
    assert_eq!(
        f.broker
            .register_worker("worker_a", registration("http://worker-a.local:8081?x=1"))
            .unwrap_err()
            .to_string(),
        "base_url must not include query or fragment"
    );
    assert!(!f.broker.is_worker_active("worker_a"));
}

// §11 item 51.
#[test]
fn rebase_drops_hints() {
    let f = dev();
    let b = &f.broker;
    b.register_worker("worker_a", registration("http://worker-a.local:8081"))
        .unwrap();
    b.register_worker("worker_b", registration("http://worker-b.local:8081"))
        .unwrap();
    ready(b, "worker_a", VM_A, "vetu", "ubuntu:24.04", 1);
    ready(b, "worker_a", VM_B, "vetu", "ubuntu:24.04", 2);
    ready(b, "worker_b", VM_C, "vetu", "ubuntu:24.04", 1);
    b.register_worker("worker_a", registration("http://worker-a.local:8081"))
        .unwrap();
    assert_eq!(hint_count(b), 3, "same base URL keeps the hints");
    b.register_worker("worker_a", registration("http://worker-a2.local:8081"))
        .unwrap();
    assert_eq!(hint_count(b), 1);
    let p = b
        .place_create(&create("vetu", "ubuntu:24.04", 1, ""), None)
        .unwrap();
    assert_eq!(p.worker_id.as_str(), "worker_b");
}

// §11 item 52.
#[test]
fn lease_sweep_marks_workers_unavailable() {
    let f = fixture_with(BrokerConfig {
        worker_lease_ttl: Duration::from_secs(2),
        ..config()
    });
    let b = &f.broker;
    add_static(b, "worker_s", "worker-s.local", "");
    let resp = b
        .register_worker("worker_a", registration("http://worker-a.local:8081"))
        .unwrap();
    assert_eq!(resp.lease_ttl_seconds, 2);
    ready(b, "worker_a", VM_A, "vetu", "ubuntu:24.04", 1);
    f.clock.advance(Duration::from_secs(3));
    let id = sandbox_id("broker_local", "worker_a");
    // The lease is evaluated lazily, before any sweep.
    assert_eq!(
        b.route_sandbox(&id, &format!("/sandboxes/{id}"), None),
        Err(BrokerError::WorkerUnavailable)
    );
    assert_eq!(b.sweep_expired_leases(), 1);
    assert_eq!(b.sweep_expired_leases(), 0);
    assert_eq!(hint_count(b), 0);
    assert_eq!(
        b.route_sandbox(&id, &format!("/sandboxes/{id}"), None),
        Err(BrokerError::WorkerUnavailable)
    );
    assert!(
        b.is_worker_active("worker_s"),
        "static workers never expire"
    );
    // A new registration revives the worker.
    b.register_worker("worker_a", registration("http://worker-a.local:8081"))
        .unwrap();
    assert!(b
        .route_sandbox(&id, &format!("/sandboxes/{id}"), None)
        .is_ok());
}

#[test]
fn lease_at_exact_expiry_is_active() {
    let f = fixture_with(BrokerConfig {
        worker_lease_ttl: Duration::from_secs(2),
        ..config()
    });
    f.broker
        .register_worker("worker_a", registration("http://worker-a.local:8081"))
        .unwrap();
    f.clock.advance(Duration::from_secs(2));
    assert!(f.broker.is_worker_active("worker_a"));
    assert_eq!(f.broker.sweep_expired_leases(), 0);
    f.clock.advance(Duration::from_millis(1));
    assert!(!f.broker.is_worker_active("worker_a"));
    assert_eq!(f.broker.sweep_expired_leases(), 1);
}

#[test]
fn lapsed_lease_drops_hints_and_queue() {
    let f = fixture_with(BrokerConfig {
        worker_lease_ttl: Duration::from_secs(10),
        ..config()
    });
    let b = &f.broker;
    b.register_worker("worker_a", registration("http://worker-a.local:8081"))
        .unwrap();
    add_static(b, "worker_s", "worker-s.local", "");
    // Take worker_s out so that the cold create below queues a VM start on worker_a.
    b.set_worker_available("worker_s", false);
    b.place_create(&create("vetu", "ubuntu:24.04", 1, ""), None)
        .unwrap();
    b.set_worker_available("worker_s", true);
    ready(b, "worker_a", VM_A, "vetu", "ubuntu:24.04", 2);
    f.clock.advance(Duration::from_secs(11));
    // Before the sweep, the warm path already skips (and drops) the lapsed worker's hint.
    let p = b
        .place_create(&create("vetu", "ubuntu:24.04", 2, ""), None)
        .unwrap();
    assert_eq!(p.worker_id.as_str(), "worker_s");
    assert_eq!(p.local_vm_id, None);
    assert_eq!(b.sweep_expired_leases(), 1);
    b.register_worker("worker_a", registration("http://worker-a.local:8081"))
        .unwrap();
    assert_eq!(b.next_vm_start("worker_a").unwrap(), None, "queue dropped");
}

// §11 item 53, and the other internal-caller rules.
#[test]
fn internal_callers_must_be_known() {
    let ev = || event("ready", VM_A, "vetu", "ubuntu:24.04", 1);
    let f = prod();
    assert_eq!(
        f.broker.apply_vm_event("worker_a", ev()),
        Err(BrokerError::WorkerMustSelfRegister)
    );
    assert_eq!(
        f.broker.next_vm_start("worker_a"),
        Err(BrokerError::WorkerMustSelfRegister)
    );
    add_static(&f.broker, "worker_a", "worker-a.local", "");
    f.broker.set_worker_available("worker_a", false);
    assert_eq!(
        f.broker.apply_vm_event("worker_a", ev()),
        Err(BrokerError::WorkerMustSelfRegister)
    );
    assert_eq!(
        f.broker.next_vm_start("worker_a"),
        Err(BrokerError::WorkerMustSelfRegister)
    );

    let f = dev();
    assert_eq!(
        f.broker.apply_vm_event("worker_a", ev()),
        Err(BrokerError::WorkerUnknown)
    );
    assert_eq!(
        f.broker.next_vm_start("worker-a"),
        Err(BrokerError::WorkerUnknown)
    );
    add_static(&f.broker, "worker_a", "worker-a.local", "");
    f.broker.set_worker_available("worker_a", false);
    assert_eq!(f.broker.apply_vm_event("worker_a", ev()), Ok(()));
    assert_eq!(f.broker.next_vm_start("worker_a"), Ok(None));
}

#[test]
fn vm_events_are_validated() {
    let f = dev();
    add_static(&f.broker, "worker_a", "worker-a.local", "");
    for bad in [
        event("ready", "not-a-uuid", "vetu", "ubuntu:24.04", 1),
        event("ready", &VM_A.to_uppercase(), "vetu", "ubuntu:24.04", 1),
        event("ready", VM_A, "vetu", " ", 1),
        event("claimed", VM_A, "vetu", "", 1),
        event("booted", VM_A, "vetu", "ubuntu:24.04", 1),
        event("", VM_A, "vetu", "ubuntu:24.04", 1),
    ] {
        assert_eq!(
            f.broker.apply_vm_event("worker_a", bad.clone()),
            Err(BrokerError::InvalidVmEvent),
            "{bad:?}"
        );
    }
    assert_eq!(hint_count(&f.broker), 0);
    ready(&f.broker, "worker_a", VM_A, "vetu", "ubuntu:24.04", 1);
    ready(&f.broker, "worker_a", VM_B, "vetu", "ubuntu:24.04", 1);
    f.broker
        .apply_vm_event(
            "worker_a",
            event("claimed", VM_A, "vetu", "ubuntu:24.04", 1),
        )
        .unwrap();
    f.broker
        .apply_vm_event(
            "worker_a",
            event("retired", VM_B, "vetu", "ubuntu:24.04", 1),
        )
        .unwrap();
    f.broker
        .apply_vm_event(
            "worker_a",
            event("retired", VM_B, "vetu", "ubuntu:24.04", 1),
        )
        .unwrap();
    assert_eq!(hint_count(&f.broker), 0);
    // A ready event replaces the VM's previous tuple.
    ready(&f.broker, "worker_a", VM_C, "vetu", "ubuntu:24.04", 1);
    ready(&f.broker, "worker_a", VM_C, "vetu", "ubuntu:24.04", 4);
    assert_eq!(hint_count(&f.broker), 1);
    let p = f
        .broker
        .place_create(&create("vetu", "ubuntu:24.04", 4, ""), None)
        .unwrap();
    assert_eq!(p.local_vm_id.unwrap().to_string(), VM_C);
}

// §11 item 55.
#[test]
fn concurrent_creates_never_share_a_hint() {
    let f = dev();
    add_static(&f.broker, "worker_a", "worker-a.local", "");
    for round in 0..50u8 {
        let vm = LocalVmId::from_entropy([round; 16]).to_string();
        ready(&f.broker, "worker_a", &vm, "vetu", "ubuntu:24.04", 1);
        let barrier = Barrier::new(2);
        let placements: Vec<Placement> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..2)
                .map(|_| {
                    s.spawn(|| {
                        barrier.wait();
                        f.broker
                            .place_create(&create("vetu", "ubuntu:24.04", 1, ""), None)
                            .unwrap()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let warm: Vec<_> = placements.iter().filter_map(|p| p.local_vm_id).collect();
        assert_eq!(
            warm.len(),
            1,
            "round {round}: exactly one create gets the hint"
        );
        assert_eq!(warm[0].to_string(), vm);
    }
}

#[test]
fn hints_are_used_oldest_first() {
    let f = dev();
    add_static(&f.broker, "worker_a", "worker-a.local", "");
    add_static(&f.broker, "worker_b", "worker-b.local", "");
    ready(&f.broker, "worker_b", VM_B, "vetu", "ubuntu:24.04", 1);
    ready(&f.broker, "worker_a", VM_A, "vetu", "ubuntu:24.04", 1);
    ready(&f.broker, "worker_a", VM_C, "vetu", "ubuntu:24.04", 1);
    // Re-announcing keeps the original age.
    ready(&f.broker, "worker_b", VM_B, "vetu", "ubuntu:24.04", 1);
    let order: Vec<(String, String)> = (0..3)
        .map(|_| {
            let p = f
                .broker
                .place_create(&create("vetu", "ubuntu:24.04", 1, ""), None)
                .unwrap();
            (p.worker_id.to_string(), p.local_vm_id.unwrap().to_string())
        })
        .collect();
    assert_eq!(
        order,
        [
            ("worker_b".to_string(), VM_B.to_string()),
            ("worker_a".to_string(), VM_A.to_string()),
            ("worker_a".to_string(), VM_C.to_string()),
        ]
    );
}

#[test]
fn sku_mismatch_skips_but_keeps_hint() {
    let f = dev();
    add_static(&f.broker, "worker_a", "worker-a.local", "cpu-standard");
    add_static(&f.broker, "worker_b", "worker-b.local", "gpu-a100");
    ready(&f.broker, "worker_a", VM_A, "vetu", "ubuntu:24.04", 1);
    ready(&f.broker, "worker_b", VM_B, "vetu", "ubuntu:24.04", 1);
    let p = f
        .broker
        .place_create(&create("vetu", "ubuntu:24.04", 1, "gpu-a100"), None)
        .unwrap();
    assert_eq!(p.local_vm_id.unwrap().to_string(), VM_B);
    let p = f
        .broker
        .place_create(&create("vetu", "ubuntu:24.04", 1, "gpu-a100"), None)
        .unwrap();
    assert_eq!(p.local_vm_id, None, "worker_a's hint is not for this SKU");
    assert_eq!(hint_count(&f.broker), 1);
    let p = f
        .broker
        .place_create(&create("vetu", "ubuntu:24.04", 1, ""), None)
        .unwrap();
    assert_eq!(p.local_vm_id.unwrap().to_string(), VM_A);
}

#[test]
fn cold_placement_goes_to_least_loaded() {
    let f = dev();
    let b = &f.broker;
    let reg = |base: &str, live: i64| RegistrationRequest {
        hostname: "h".into(),
        base_url: base.into(),
        total_cores: 8,
        total_memory_mib: 16384,
        max_live_sandboxes: 4,
        live_sandboxes: live,
        allocated_cores: live,
        allocated_memory_mib: live * 1024,
        ..RegistrationRequest::default()
    };
    b.register_worker("worker_a", reg("http://worker-a.local:8081", 3))
        .unwrap();
    b.register_worker("worker_b", reg("http://worker-b.local:8081", 1))
        .unwrap();
    let req = create("vetu", "ubuntu:24.04", 1, "");
    let place = || b.place_create(&req, None).unwrap().worker_id.to_string();
    // b: 1 live + 0 placed (25%) < a: 3 live (75%).
    assert_eq!(place(), "worker_b");
    // b: 1 + 1 placed (50%) still < a (75%).
    assert_eq!(place(), "worker_b");
    // b: 1 + 2 placed (75%) ties a; ties go to the earlier registration.
    assert_eq!(place(), "worker_a");
    // a is full now (3 + 1); b has room.
    assert_eq!(place(), "worker_b");
    // A heartbeat resets what the broker placed since: a reports 0 live.
    b.register_worker("worker_a", reg("http://worker-a.local:8081", 0))
        .unwrap();
    assert_eq!(place(), "worker_a");
}

#[test]
fn scheduler_may_decline() {
    struct Nobody;
    impl Scheduler for Nobody {
        fn place(&self, _: &SandboxTuple, _: &[WorkerLoad]) -> Option<Choice> {
            None
        }
    }
    let f = fixture_with_scheduler(config(), Arc::new(Nobody));
    add_static(&f.broker, "worker_a", "worker-a.local", "");
    assert_eq!(
        f.broker
            .place_create(&create("vetu", "ubuntu:24.04", 1, ""), None),
        Err(BrokerError::NoPlacementCapacity)
    );
    assert_eq!(no_capacity(&f.broker, "scheduler_declined"), Some(1.0));
    assert_eq!(f.broker.next_vm_start("worker_a").unwrap(), None);
}

#[test]
fn static_workers_stay_static() {
    let f = fixture_with(BrokerConfig {
        worker_lease_ttl: Duration::from_secs(5),
        ..config()
    });
    let b = &f.broker;
    add_static(b, "worker_a", "worker-a.local", "");
    b.register_worker("worker_a", registration("http://worker-a.local:8081"))
        .unwrap();
    f.clock.advance(Duration::from_secs(60));
    assert!(b.is_worker_active("worker_a"));
    assert_eq!(b.sweep_expired_leases(), 0);
    // Deregistering a static worker keeps it known but unavailable.
    ready(b, "worker_a", VM_A, "vetu", "ubuntu:24.04", 1);
    b.deregister_worker("worker_a");
    assert!(!b.is_worker_active("worker_a"));
    assert_eq!(hint_count(b), 0);
    let id = sandbox_id("broker_local", "worker_a");
    assert_eq!(
        b.route_sandbox(&id, &format!("/sandboxes/{id}"), None),
        Err(BrokerError::WorkerUnavailable)
    );
    b.register_worker("worker_a", registration("http://worker-a.local:8081"))
        .unwrap();
    assert!(b.is_worker_active("worker_a"));
    // Invalid static workers are ignored.
    add_static(b, " ", "x.local", "");
    add_static(b, "bad-id", "x.local", "");
    b.register_static_worker(StaticWorker {
        worker_id: "worker_x".into(),
        base_url: "ftp://x.local".into(),
        ..StaticWorker::default()
    });
    let text = b.availability_text();
    assert_eq!(line_value(&text, "workers_registered_total"), "1");
}

#[test]
fn deregistration_forgets_dynamic_workers() {
    let f = dev();
    let b = &f.broker;
    b.register_worker("worker_a", registration("http://worker-a.local:8081"))
        .unwrap();
    ready(b, "worker_a", VM_A, "vetu", "ubuntu:24.04", 1);
    b.deregister_worker("worker_a");
    b.deregister_worker("worker_a");
    b.deregister_worker("no-such-worker");
    assert_eq!(hint_count(b), 0);
    let id = sandbox_id("broker_local", "worker_a");
    assert_eq!(
        b.route_sandbox(&id, &format!("/sandboxes/{id}"), None),
        Err(BrokerError::WorkerUnknown)
    );
}

#[test]
fn broker_restart_needs_ready_events_again() {
    let first = dev();
    first
        .broker
        .register_worker("worker_a", registration("http://worker-a.local:8081"))
        .unwrap();
    ready(&first.broker, "worker_a", VM_A, "vetu", "ubuntu:24.04", 1);

    // A new broker process knows nothing; its instance id tells the worker so.
    let second = dev();
    assert_ne!(first.broker.instance_id(), second.broker.instance_id());
    let resp = second
        .broker
        .register_worker("worker_a", registration("http://worker-a.local:8081"))
        .unwrap();
    assert_eq!(resp.broker_instance_id, second.broker.instance_id());
    let req = create("vetu", "ubuntu:24.04", 1, "");
    let p = second.broker.place_create(&req, None).unwrap();
    assert_eq!(
        p.local_vm_id, None,
        "no hints before the worker re-announces"
    );
    assert_eq!(
        second
            .broker
            .next_vm_start("worker_a")
            .unwrap()
            .map(|s| s.cpu),
        Some(1)
    );
    ready(&second.broker, "worker_a", VM_A, "vetu", "ubuntu:24.04", 1);
    let p = second.broker.place_create(&req, None).unwrap();
    assert_eq!(p.local_vm_id.unwrap().to_string(), VM_A);
}

#[tokio::test(start_paused = true)]
async fn lease_sweeper_runs_until_shutdown() {
    let f = fixture_with(BrokerConfig {
        worker_lease_ttl: Duration::from_secs(2),
        lease_sweep_interval: Duration::from_secs(10),
        ..config()
    });
    f.broker
        .register_worker("worker_a", registration("http://worker-a.local:8081"))
        .unwrap();
    ready(&f.broker, "worker_a", VM_A, "vetu", "ubuntu:24.04", 1);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(f.broker.clone().run_lease_sweeper(async {
        let _ = stopped.await;
    }));
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        hint_count(&f.broker),
        1,
        "lease still valid at the first tick"
    );
    f.clock.advance(Duration::from_secs(3));
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(
        hint_count(&f.broker),
        0,
        "the next tick swept the lapsed lease"
    );
    stop.send(()).unwrap();
    task.await.unwrap();
}

/// A registration of a worker at `base_url` with `max` cores and sandbox slots, `live` used.
fn loaded(base_url: &str, max: i64, live: i64) -> RegistrationRequest {
    RegistrationRequest {
        hostname: "h".into(),
        base_url: base_url.into(),
        total_cores: max,
        total_memory_mib: max * 1024,
        max_live_sandboxes: max,
        live_sandboxes: live,
        allocated_cores: live,
        allocated_memory_mib: live * 1024,
        ..RegistrationRequest::default()
    }
}

/// A VM event of a `vetu/ubuntu:24.04/1` VM carrying the worker's load.
fn event_with_load(kind: &str, vm: &str, live: i64, accepting: bool) -> VmEventRequest {
    VmEventRequest {
        capacity: Some(WorkerCapacity {
            live_sandboxes: live,
            allocated_cores: live,
            allocated_memory_mib: live * 1024,
            accepting_sandboxes: accepting,
        }),
        ..event(kind, vm, "vetu", "ubuntu:24.04", 1)
    }
}

#[test]
fn full_workers_get_503_from_the_broker() {
    let f = dev();
    let b = &f.broker;
    b.register_worker("worker_a", loaded("http://worker-a.local:8081", 2, 2))
        .unwrap();
    b.register_worker("worker_b", loaded("http://worker-b.local:8081", 2, 1))
        .unwrap();
    ready(b, "worker_a", VM_A, "vetu", "ubuntu:24.04", 1);
    let req = create("vetu", "ubuntu:24.04", 1, "");
    // b has one slot left; a, full, does not get the create even for its ready VM.
    let p = b.place_create(&req, None).unwrap();
    assert_eq!((p.worker_id.as_str(), p.local_vm_id), ("worker_b", None));
    // Until b reports again, it still counts as having that slot (placements since its
    // report are short-lived, mostly gone already); b reports as soon as it is full.
    b.register_worker("worker_b", loaded("http://worker-b.local:8081", 2, 2))
        .unwrap();
    // Now both are full: the broker answers itself instead of redirecting into a bounce.
    assert_eq!(
        b.place_create(&req, None),
        Err(BrokerError::NoPlacementCapacity)
    );
    assert_eq!(
        b.place_create(&req, Some("1")),
        Err(BrokerError::NoPlacementCapacity)
    );
    assert_eq!(no_capacity(b, "no_room"), Some(2.0));
    assert_eq!(hint_count(b), 1, "the full worker keeps its ready vm");
    // placement_retry_max still applies first.
    assert_eq!(
        b.place_create(&req, Some("3")),
        Err(BrokerError::PlacementRetryExhausted)
    );
    // No VM start was queued on the full worker.
    assert_eq!(b.next_vm_start("worker_a").unwrap(), None);
    // A sandbox on a goes away and a's next event says so: a takes the create again.
    b.apply_vm_event("worker_a", event_with_load("retired", VM_C, 1, true))
        .unwrap();
    let p = b.place_create(&req, None).unwrap();
    assert_eq!(p.worker_id.as_str(), "worker_a");
    assert_eq!(p.local_vm_id.unwrap().to_string(), VM_A);
}

#[test]
fn vm_events_update_the_workers_load() {
    let f = dev();
    let b = &f.broker;
    b.register_worker("worker_a", loaded("http://worker-a.local:8081", 4, 0))
        .unwrap();
    b.register_worker("worker_b", loaded("http://worker-b.local:8081", 4, 0))
        .unwrap();
    let req = create("vetu", "ubuntu:24.04", 1, "");
    let place = || b.place_create(&req, None).unwrap().worker_id.to_string();
    // a's ready event says it is full now (without a heartbeat): the create goes to b.
    b.apply_vm_event("worker_a", event_with_load("ready", VM_A, 4, true))
        .unwrap();
    assert_eq!(place(), "worker_b");
    assert_eq!(hint_count(b), 1);
    // A claim on a says it has room again; it resets what the broker placed since.
    b.apply_vm_event("worker_a", event_with_load("claimed", VM_B, 0, true))
        .unwrap();
    assert_eq!(place(), "worker_a", "a ready vm on an idle worker");
    // A worker that stops accepting (memory watermark) is left out, whatever its load.
    b.apply_vm_event("worker_b", event_with_load("retired", VM_C, 0, false))
        .unwrap();
    assert_eq!(place(), "worker_a");
    // A prototype event (no load) changes nothing about the load.
    b.apply_vm_event(
        "worker_b",
        event("retired", VM_C, "vetu", "ubuntu:24.04", 1),
    )
    .unwrap();
    assert_eq!(place(), "worker_a");
    // A negative load is an invalid event and changes nothing.
    assert_eq!(
        b.apply_vm_event("worker_b", event_with_load("ready", VM_B, -1, true)),
        Err(BrokerError::InvalidVmEvent)
    );
    assert_eq!(hint_count(b), 0);
    // A heartbeat carries the accepting flag too.
    b.register_worker("worker_b", loaded("http://worker-b.local:8081", 4, 0))
        .unwrap();
    assert_eq!(place(), "worker_b");
}

#[test]
fn warm_claim_on_a_busy_worker_loses_to_an_idle_one() {
    let f = dev();
    let b = &f.broker;
    b.register_worker("worker_a", loaded("http://worker-a.local:8081", 4, 3))
        .unwrap();
    b.register_worker("worker_b", loaded("http://worker-b.local:8081", 4, 0))
        .unwrap();
    ready(b, "worker_a", VM_A, "vetu", "ubuntu:24.04", 1);
    let req = create("vetu", "ubuntu:24.04", 1, "");
    let p = b.place_create(&req, None).unwrap();
    assert_eq!((p.worker_id.as_str(), p.local_vm_id), ("worker_b", None));
    assert_eq!(hint_count(b), 1);
    // Once a is hardly busier than b, its ready vm wins.
    b.apply_vm_event("worker_a", event_with_load("claimed", VM_B, 1, true))
        .unwrap();
    let p = b.place_create(&req, None).unwrap();
    assert_eq!(p.worker_id.as_str(), "worker_a");
    assert_eq!(p.local_vm_id.unwrap().to_string(), VM_A);
}

#[test]
fn warm_starts_go_by_free_capacity() {
    let f = dev();
    let b = &f.broker;
    b.register_worker("worker_a", loaded("http://worker-a.local:8081", 4, 0))
        .unwrap();
    b.register_worker("worker_b", loaded("http://worker-b.local:8081", 12, 0))
        .unwrap();
    let req = create("vetu", "ubuntu:24.04", 1, "");
    // Four cold creates (no ready vm announced): they spread by load, while the warm pool
    // they grow goes three to one to b, which has three times a's free slots.
    let placed: Vec<String> = (0..4)
        .map(|_| b.place_create(&req, None).unwrap().worker_id.to_string())
        .collect();
    assert_eq!(placed, ["worker_a", "worker_b", "worker_b", "worker_b"]);
    let drain = |w: &str| {
        std::iter::from_fn(|| b.next_vm_start(w).unwrap())
            .take(10)
            .count()
    };
    assert_eq!((drain("worker_a"), drain("worker_b")), (1, 3));
}

/// Placement by capability: a worker that lists what it serves gets only those creates; one
/// that does not (a prototype worker) gets any; none serving the virtualization is a 503 that
/// names it.
#[test]
fn cold_creates_go_to_workers_that_serve_the_virtualization() {
    let f = dev();
    let register = |id: &str, host: &str, virtualizations: &[&str]| {
        f.broker
            .register_worker(
                id,
                RegistrationRequest {
                    hostname: host.into(),
                    base_url: format!("http://{host}:8081"),
                    total_cores: 16,
                    total_memory_mib: 32768,
                    max_live_sandboxes: 8,
                    virtualizations: virtualizations.iter().map(|v| v.to_string()).collect(),
                    ..RegistrationRequest::default()
                },
            )
            .unwrap();
    };
    register("worker_c", "containers.local", &["container", " FAKE "]);
    register("worker_v", "vms.local", &["vetu"]);
    for _ in 0..3 {
        let p = f
            .broker
            .place_create(&create("vetu", "ubuntu:24.04", 1, ""), None)
            .unwrap();
        assert!(
            p.location.starts_with("http://vms.local:8081/"),
            "{}",
            p.location
        );
        let p = f
            .broker
            .place_create(&create("container", "host", 1, ""), None)
            .unwrap();
        assert!(
            p.location.starts_with("http://containers.local:8081/"),
            "{}",
            p.location
        );
        let p = f
            .broker
            .place_create(&create("fake", "img", 1, ""), None)
            .unwrap();
        assert!(
            p.location.starts_with("http://containers.local:8081/"),
            "{}",
            p.location
        );
    }
    let err = f
        .broker
        .place_create(&create("tart", "macos", 1, ""), None)
        .unwrap_err();
    assert_eq!(err, BrokerError::VirtualizationUnavailable("tart".into()));
    assert_eq!(err.to_string(), "no worker serves virtualization tart");
    assert_eq!(
        no_capacity(&f.broker, "no_worker_for_virtualization"),
        Some(1.0)
    );
    // A worker that does not say what it serves serves anything.
    register("worker_p", "prototype.local", &[]);
    let p = f
        .broker
        .place_create(&create("tart", "macos", 1, ""), None)
        .unwrap();
    assert!(
        p.location.starts_with("http://prototype.local:8081/"),
        "{}",
        p.location
    );
}

/// After a restart the workers register again: until the grace ends, their sandboxes answer
/// "not registered yet" (503, retry), not "unknown" (404).
#[test]
fn unknown_workers_are_not_yet_registered_during_the_restart_grace() {
    let f = fixture_with(BrokerConfig {
        restart_grace: Duration::from_secs(40),
        ..config()
    });
    let id = sandbox_id("broker_local", "worker_a");
    let route = || {
        f.broker
            .route_sandbox(&id, &format!("/sandboxes/{id}"), None)
    };
    assert_eq!(route(), Err(BrokerError::WorkerNotYetRegistered));
    f.clock.advance(Duration::from_secs(39));
    assert_eq!(route(), Err(BrokerError::WorkerNotYetRegistered));
    add_static(&f.broker, "worker_a", "worker-a.local", "");
    assert!(route().is_ok());
    f.clock.advance(Duration::from_secs(2));
    let other = sandbox_id("broker_local", "worker_b");
    assert_eq!(
        f.broker
            .route_sandbox(&other, &format!("/sandboxes/{other}"), None),
        Err(BrokerError::WorkerUnknown)
    );
    // No grace configured: unknown at once.
    let f = fixture_with(BrokerConfig {
        restart_grace: Duration::ZERO,
        ..config()
    });
    assert_eq!(
        f.broker
            .route_sandbox(&id, &format!("/sandboxes/{id}"), None),
        Err(BrokerError::WorkerUnknown)
    );
}

/// Found by `properties::creates_land_on_a_fitting_worker_whenever_one_fits`: a worker that
/// reports `live_sandboxes: i64::MAX` (valid: it is not negative) and no slot limit made the
/// load computation overflow, panicking placement in debug builds.
#[test]
fn a_worker_reporting_huge_counts_still_gets_creates() {
    let f = dev();
    let request = RegistrationRequest {
        live_sandboxes: i64::MAX,
        allocated_cores: i64::MAX - 1,
        total_cores: i64::MAX,
        ..registration("http://worker-a.local:8081")
    };
    f.broker.register_worker("worker_a", request).unwrap();
    let placement = f
        .broker
        .place_create(&create("vetu", "img", 1, ""), None)
        .unwrap();
    assert_eq!(placement.worker_id.as_str(), "worker_a");
}
