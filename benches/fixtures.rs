//! Fixtures of the micro benches: brokers with static workers and ready hints, and a worker
//! over the fake backend with a pre-filled warm pool.

use std::sync::Arc;
use std::time::Duration;

use traforato_core::api::{CreateSandboxRequest, VmEventRequest};
use traforato_core::backend::fake::FakeBackend;
use traforato_core::backend::VmBackend;
use traforato_core::broker::{Broker, BrokerConfig, StaticWorker};
use traforato_core::clock::SystemClock;
use traforato_core::id::{ComponentId, LocalVmId};
use traforato_core::scheduler::LeastLoaded;
use traforato_core::telemetry::Metrics;
use traforato_core::tuple::SandboxTuple;
use traforato_core::worker::{PrePullTarget, Worker, WorkerConfig};

/// The virtualization of every fixture.
pub const VIRTUALIZATION: &str = "fake";

/// The image of the benchmarked tuple.
pub const IMAGE: &str = "bench";

/// The benchmarked tuple, `fake/bench/1`.
pub fn tuple() -> SandboxTuple {
    SandboxTuple::normalize(VIRTUALIZATION, IMAGE, 1, VIRTUALIZATION)
}

/// A create of [`tuple`].
pub fn create_request() -> CreateSandboxRequest {
    CreateSandboxRequest {
        image: IMAGE.to_string(),
        cpu: 1,
        virtualization: VIRTUALIZATION.to_string(),
        ..CreateSandboxRequest::default()
    }
}

/// The id of the `n`th static worker.
pub fn worker_id(n: usize) -> String {
    format!("worker_{n}")
}

/// A broker (default policy, dev mode) with `workers` static workers of 64 cores each.
pub fn broker(workers: usize) -> Broker {
    let broker = Broker::new(
        BrokerConfig {
            default_virtualization: VIRTUALIZATION.to_string(),
            ..BrokerConfig::default()
        },
        Arc::new(SystemClock),
        Arc::new(LeastLoaded),
        Arc::new(Metrics::new(false)),
    );
    for n in 0..workers {
        broker.register_static_worker(StaticWorker {
            worker_id: worker_id(n),
            hostname: format!("host{n}"),
            base_url: format!("http://10.0.0.{}:8081", n + 1),
            hardware_sku: "general".to_string(),
            total_cores: 64,
            total_memory_mib: 65536,
            max_live_sandboxes: 64,
        });
    }
    broker
}

/// Announces one ready VM of `tuple` on worker `worker`; returns its id.
pub fn add_ready_hint(broker: &Broker, worker: usize, tuple: &SandboxTuple) -> LocalVmId {
    let vm = LocalVmId::new_random();
    broker
        .apply_vm_event(
            &worker_id(worker),
            VmEventRequest {
                event: "ready".to_string(),
                local_vm_id: vm.to_string(),
                virtualization: tuple.virtualization.clone(),
                image: tuple.image.clone(),
                cpu: i64::from(tuple.cpu),
                timestamp: None,
                capacity: None,
            },
        )
        .expect("a static worker may announce ready VMs");
    vm
}

/// A standalone worker (no broker) over `backend` that keeps `warm` sandboxes of [`tuple`]
/// ready and has room for `max_live` sandboxes in all.
pub fn worker(backend: FakeBackend, warm: u32, max_live: u32) -> Arc<Worker> {
    let config = WorkerConfig {
        worker_id: ComponentId::parse("worker_bench").expect("valid id"),
        total_cores: max_live,
        total_memory_mib: u64::from(max_live) * 256,
        max_live_sandboxes: max_live,
        default_ttl: Duration::from_secs(3600),
        max_ttl: Duration::from_secs(3600),
        default_virtualization: VIRTUALIZATION.to_string(),
        registration_heartbeat: Duration::from_secs(30),
        reap_interval: Duration::from_secs(60),
        pre_pull: vec![PrePullTarget {
            tuple: tuple(),
            target_count: warm,
            warmup_script: String::new(),
            warmup_timeout: Duration::from_secs(10),
        }],
        ..WorkerConfig::for_tests()
    };
    Worker::new(
        config,
        vec![Arc::new(backend) as Arc<dyn VmBackend>],
        Arc::new(SystemClock),
        Arc::new(Metrics::new(false)),
        None,
    )
}

/// Ready sandboxes of [`tuple`] on `worker`.
pub fn ready(worker: &Worker) -> usize {
    worker.ready_counts().get(&tuple()).copied().unwrap_or(0)
}
