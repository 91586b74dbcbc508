//! Worker tests over the fake backend, a manual clock and a recording broker link.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, TimeZone, Utc};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{oneshot, watch};

use super::*;
use crate::api::{
    FrameKind, RegistrationRequest, RegistrationResponse, VmEventRequest, VmStartResponse,
    WriteFileJson,
};
use crate::backend::fake::{FakeBackend, FakeExec, FAKE_SYNTAX_ERROR};
use crate::backend::{BackendError, ProvisionSpec};
use crate::clock::ManualClock;
use crate::id::LocalVmId;

// ---------------------------------------------------------------------------------------------
// Harness

/// A broker link that records every call and answers from scripted state.
#[derive(Default)]
struct RecordingLink {
    registrations: Mutex<Vec<(tokio::time::Instant, RegistrationRequest)>>,
    events: Mutex<Vec<VmEventRequest>>,
    starts: Mutex<VecDeque<VmStartResponse>>,
    vm_start_calls: AtomicUsize,
    deregistrations: AtomicUsize,
    instance_id: Mutex<String>,
    fail_register: AtomicBool,
    lease_ttl_seconds: Mutex<u64>,
}

impl RecordingLink {
    fn new() -> Arc<Self> {
        let link = Self::default();
        *link.instance_id.lock().unwrap() = "instance_one".into();
        *link.lease_ttl_seconds.lock().unwrap() = 120;
        Arc::new(link)
    }

    fn registration_count(&self) -> usize {
        self.registrations.lock().unwrap().len()
    }

    fn events(&self) -> Vec<VmEventRequest> {
        self.events.lock().unwrap().clone()
    }

    fn events_of(&self, kind: &str) -> Vec<VmEventRequest> {
        self.events()
            .into_iter()
            .filter(|e| e.event == kind)
            .collect()
    }
}

#[async_trait]
impl BrokerLink for RecordingLink {
    async fn register(
        &self,
        worker_id: &ComponentId,
        request: &RegistrationRequest,
    ) -> Result<RegistrationResponse, LinkError> {
        self.registrations
            .lock()
            .unwrap()
            .push((tokio::time::Instant::now(), request.clone()));
        if self.fail_register.load(Ordering::SeqCst) {
            return Err(LinkError::Status {
                status: 503,
                body: "unavailable".into(),
            });
        }
        Ok(RegistrationResponse {
            worker_id: worker_id.to_string(),
            lease_ttl_seconds: *self.lease_ttl_seconds.lock().unwrap(),
            heartbeat_interval_seconds: 30,
            expires_at: t0(),
            broker_instance_id: self.instance_id.lock().unwrap().clone(),
        })
    }

    async fn deregister(&self, _worker_id: &ComponentId) -> Result<(), LinkError> {
        self.deregistrations.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    async fn vm_event(
        &self,
        _worker_id: &ComponentId,
        event: &VmEventRequest,
    ) -> Result<(), LinkError> {
        self.events.lock().unwrap().push(event.clone());
        Ok(())
    }

    async fn vm_start(
        &self,
        _worker_id: &ComponentId,
    ) -> Result<Option<VmStartResponse>, LinkError> {
        self.vm_start_calls.fetch_add(1, Ordering::SeqCst);
        Ok(self.starts.lock().unwrap().pop_front())
    }
}

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 2, 25, 12, 0, 0).unwrap()
}

fn config() -> WorkerConfig {
    WorkerConfig {
        worker_id: ComponentId::parse("worker_a").unwrap(),
        hostname: "worker-a.local".into(),
        advertise_url: "http://worker-a.local:9090".into(),
        broker_public_url: Some("http://broker.example.com".into()),
        hardware_sku: "gpu-a100".into(),
        total_memory_mib: 16384,
        max_live_sandboxes: 6,
        registration_heartbeat: Duration::from_millis(20),
        ..WorkerConfig::for_tests()
    }
}

struct Harness {
    worker: Arc<Worker>,
    fake: FakeBackend,
    vetu: FakeBackend,
    tart: FakeBackend,
    clock: Arc<ManualClock>,
    link: Arc<RecordingLink>,
}

impl Harness {
    fn new() -> Self {
        Self::with(|_| {})
    }

    fn with(adjust: impl FnOnce(&mut WorkerConfig)) -> Self {
        let mut config = config();
        adjust(&mut config);
        let clock = Arc::new(ManualClock::new(t0()));
        let fake = FakeBackend::new().with_clock(clock.clone());
        let vetu = FakeBackend::with_virtualization("vetu").with_clock(clock.clone());
        let tart = FakeBackend::with_virtualization("tart").with_clock(clock.clone());
        let link = RecordingLink::new();
        let worker = Worker::new(
            config,
            vec![
                Arc::new(fake.clone()),
                Arc::new(vetu.clone()),
                Arc::new(tart.clone()),
            ],
            clock.clone(),
            Arc::new(Metrics::new(false)),
            Some(link.clone() as Arc<dyn BrokerLink>),
        );
        Self {
            worker,
            fake,
            vetu,
            tart,
            clock,
            link,
        }
    }

    fn live_vms(&self) -> usize {
        self.fake.live_count() + self.vetu.live_count() + self.tart.live_count()
    }

    async fn create(&self, p: &Principal, request: CreateSandboxRequest) -> CreateSandboxResponse {
        match self
            .worker
            .create_sandbox(p, request, CreateQuery::default())
            .await
        {
            Ok(CreateOutcome::Created(r)) => r,
            other => panic!("create: {other:?}"),
        }
    }

    async fn sandbox(&self) -> String {
        self.create(&dev(), req("img", 1)).await.sandbox_id
    }

    /// Provisions one warm VM of the tuple through the filler path; returns its id.
    async fn warm(&self, virtualization: &str, image: &str, cpu: u32) -> LocalVmId {
        let before: Vec<_> = self.worker.lock().ready.snapshot();
        self.worker.assign_vm_start(VmStartResponse {
            virtualization: virtualization.into(),
            image: image.into(),
            cpu,
        });
        let job = self.worker.next_warm_job().expect("a warm job");
        let (_tx, mut rx) = watch::channel(false);
        self.worker.fill_one(job, &mut rx).await;
        let after = self.worker.lock().ready.snapshot();
        after
            .into_iter()
            .map(|(id, _)| id)
            .find(|id| !before.iter().any(|(b, _)| b == id))
            .expect("a new ready vm")
    }

    /// VM events queued but not sent (no `run`).
    fn queued_events(&self) -> Vec<VmEventRequest> {
        let mut rx = self.worker.events_rx.lock().unwrap();
        let rx = rx.as_mut().expect("events queue");
        let mut out = Vec::new();
        while let Ok(e) = rx.try_recv() {
            out.push(e);
        }
        out
    }

    fn start(&self) -> (tokio::task::JoinHandle<()>, oneshot::Sender<()>) {
        let (tx, rx) = oneshot::channel::<()>();
        let run = tokio::spawn(self.worker.clone().run(async move {
            let _ = rx.await;
        }));
        (run, tx)
    }
}

fn dev() -> Principal {
    Principal::dev()
}

fn client(id: &str) -> Principal {
    Principal {
        client_id: id.into(),
    }
}

fn req(image: &str, cpu: i64) -> CreateSandboxRequest {
    CreateSandboxRequest {
        image: image.into(),
        cpu,
        ..Default::default()
    }
}

fn reader(bytes: &[u8]) -> BoxedReader {
    Box::new(std::io::Cursor::new(bytes.to_vec()))
}

fn vm_of(sandbox_id: &str) -> LocalVmId {
    SandboxId::parse(sandbox_id).unwrap().local_vm_id()
}

/// Waits (in tokio time) until `cond` holds.
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..2000 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for {what}");
}

/// Reads frames until the exec has exited; returns all frames.
async fn all_frames(h: &Harness, p: &Principal, sid: &str, eid: &str) -> Vec<crate::api::Frame> {
    let mut frames = Vec::new();
    let mut cursor = 0u64;
    loop {
        let page = h
            .worker
            .exec_frames(p, sid, eid, Some(&cursor.to_string()), Some("60s"))
            .await
            .unwrap();
        frames.extend(page.frames);
        cursor = page.next_cursor;
        if !page.has_more {
            return frames;
        }
    }
}

async fn exec(h: &Harness, sid: &str, command: &str) -> ExecRecord {
    let accepted = h
        .worker
        .start_exec(
            &dev(),
            sid,
            ExecRequest {
                command: command.into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    all_frames(h, &dev(), sid, &accepted.exec_id).await;
    h.worker.get_exec(&dev(), sid, &accepted.exec_id).unwrap()
}

// ---------------------------------------------------------------------------------------------
// Create, get, delete, lease, TTL

#[tokio::test]
async fn create_then_get() {
    let h = Harness::new();
    let created = h.create(&dev(), req("ubuntu:24.04", 2)).await;
    let json = serde_json::to_value(&created).unwrap();
    assert!(json.get("worker_hash").is_none());
    assert_eq!(json["start_type"], "cold");
    assert_eq!(created.cpu, 2);
    assert_eq!(created.memory_mib, 2 * 2048);
    assert_eq!(created.virtualization, "fake");
    assert_eq!(created.expires_at, t0() + chrono::Duration::minutes(30));
    let id = SandboxId::parse(&created.sandbox_id).unwrap();
    assert_eq!(id.broker_id().as_str(), "broker_local");
    assert_eq!(id.worker_id().as_str(), "worker_a");

    let got = h.worker.get_sandbox(&dev(), &created.sandbox_id).unwrap();
    assert_eq!(got.image, "ubuntu:24.04");
    assert_eq!(got.created_at, t0());
    assert_eq!(h.worker.live_sandboxes(), 1);
    assert_eq!(h.fake.live_count(), 1);
    assert_eq!(h.worker.allocated(), (2, 4096));
    let m = h.worker.metrics();
    assert_eq!(
        m.value(
            "worker.warm.miss.total",
            &[("worker_id", "worker_a"), ("cpu", "2")]
        ),
        Some(1.0)
    );
    assert_eq!(
        m.value("worker.sandboxes.live", &[("worker_id", "worker_a")]),
        Some(1.0)
    );
    assert_eq!(
        m.histogram(
            "worker.sandbox.ready.duration_seconds",
            &[
                ("worker_id", "worker_a"),
                ("start_type", "cold"),
                ("cpu", "2")
            ]
        )
        .map(|(n, _)| n),
        Some(1)
    );
}

#[tokio::test]
async fn tart_gets_default_image_and_vetu_requires_one() {
    let h = Harness::new();
    let created = h
        .create(
            &dev(),
            CreateSandboxRequest {
                virtualization: "tart".into(),
                cpu: 1,
                ..Default::default()
            },
        )
        .await;
    assert_eq!(created.virtualization, "tart");
    let got = h.worker.get_sandbox(&dev(), &created.sandbox_id).unwrap();
    assert_eq!(got.image, crate::tuple::TART_DEFAULT_IMAGE);
    assert_eq!(h.tart.live_count(), 1);

    let err = h
        .worker
        .create_sandbox(
            &dev(),
            CreateSandboxRequest {
                virtualization: "vetu".into(),
                cpu: 1,
                ..Default::default()
            },
            CreateQuery::default(),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, WorkerError::ImageRequired));
    assert_eq!(err.to_string(), "image is required");

    let err = h
        .worker
        .create_sandbox(
            &dev(),
            CreateSandboxRequest {
                virtualization: "container".into(),
                image: "img".into(),
                ..Default::default()
            },
            CreateQuery::default(),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, WorkerError::UnsupportedVirtualization(v) if v == "container"));
    assert_eq!(h.live_vms(), 1);
}

#[tokio::test]
async fn create_query_validation() {
    let h = Harness::new();
    let bad_retry = CreateQuery {
        placement_retry: Some("x"),
        ..Default::default()
    };
    assert!(matches!(
        h.worker
            .create_sandbox(&dev(), req("img", 1), bad_retry)
            .await,
        Err(WorkerError::InvalidPlacementRetry)
    ));
    let bad_hint = CreateQuery {
        local_vm_id: Some("not-a-uuid"),
        ..Default::default()
    };
    assert!(matches!(
        h.worker
            .create_sandbox(&dev(), req("img", 1), bad_hint)
            .await,
        Err(WorkerError::InvalidLocalVmId)
    ));
    assert_eq!(h.live_vms(), 0);
}

#[tokio::test]
async fn ttl_defaults_and_cap() {
    let h = Harness::with(|c| c.max_ttl = Duration::from_secs(3600));
    let mut r = req("img", 1);
    r.ttl_seconds = 90;
    assert_eq!(
        h.create(&dev(), r.clone()).await.expires_at,
        t0() + chrono::Duration::seconds(90)
    );
    r.ttl_seconds = 100_000_000;
    assert_eq!(
        h.create(&dev(), r.clone()).await.expires_at,
        t0() + chrono::Duration::hours(1)
    );
    r.ttl_seconds = -5;
    assert_eq!(
        h.create(&dev(), r).await.expires_at,
        t0() + chrono::Duration::minutes(30)
    );
}

#[tokio::test]
async fn capacity_limits_have_exact_messages() {
    let h = Harness::with(|c| c.max_live_sandboxes = 1);
    h.sandbox().await;
    let err = h
        .worker
        .create_sandbox(&dev(), req("img", 1), CreateQuery::default())
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "no capacity: max sandbox count reached");

    let h = Harness::with(|c| c.total_cores = 2);
    let err = h
        .worker
        .create_sandbox(&dev(), req("img", 3), CreateQuery::default())
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "no capacity: cpu limit reached");

    // 2 MiB over 4 cores: the per-cpu share falls back to 512 MiB, more than there is.
    let h = Harness::with(|c| {
        c.total_cores = 4;
        c.total_memory_mib = 2;
    });
    let err = h
        .worker
        .create_sandbox(&dev(), req("img", 1), CreateQuery::default())
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "no capacity: memory limit reached");
    assert_eq!(h.live_vms(), 0);
}

#[tokio::test]
async fn failed_provision_leaks_nothing() {
    let h = Harness::new();
    h.fake.fail_next_provisions(1);
    let err = h
        .worker
        .create_sandbox(&dev(), req("img", 2), CreateQuery::default())
        .await
        .unwrap_err();
    assert!(matches!(err, WorkerError::ProvisionFailed(_)));
    assert_eq!(h.worker.live_sandboxes(), 0);
    assert_eq!(h.worker.allocated(), (0, 0));
    assert_eq!(h.fake.live_count(), 0);
    assert_eq!(
        h.worker
            .metrics()
            .value("worker.cpu.allocated_cores", &[("worker_id", "worker_a")]),
        Some(0.0)
    );
    // The capacity is really free again.
    let h2 = Harness::with(|c| c.max_live_sandboxes = 1);
    h2.fake.fail_next_provisions(1);
    assert!(h2
        .worker
        .create_sandbox(&dev(), req("img", 1), CreateQuery::default())
        .await
        .is_err());
    h2.sandbox().await;
}

#[tokio::test(start_paused = true)]
async fn abandoned_create_releases_capacity_and_destroys_its_vm() {
    let h = Harness::new();
    h.fake.set_provision_delay(Duration::from_secs(10));
    let principal = dev();
    let create = h
        .worker
        .create_sandbox(&principal, req("img", 2), CreateQuery::default());
    assert!(tokio::time::timeout(Duration::from_secs(1), create)
        .await
        .is_err());
    assert_eq!(h.worker.allocated(), (0, 0));
    eventually("orphan vm destroyed", || {
        let c = h.fake.counters();
        c.provisions == 1 && c.destroys == 1
    })
    .await;
    assert_eq!(h.fake.live_count(), 0);
    assert_eq!(h.worker.live_sandboxes(), 0);
}

#[tokio::test]
async fn delete_destroys_and_releases() {
    let h = Harness::new();
    let sid = h.create(&dev(), req("img", 2)).await.sandbox_id;
    assert_eq!(h.fake.live_count(), 1);
    h.worker.delete_sandbox(&dev(), &sid).await.unwrap();
    assert_eq!(h.fake.live_count(), 0);
    assert_eq!(h.worker.live_sandboxes(), 0);
    assert_eq!(h.worker.allocated(), (0, 0));
    assert!(matches!(
        h.worker.get_sandbox(&dev(), &sid),
        Err(WorkerError::SandboxNotFound)
    ));
    assert!(matches!(
        h.worker.delete_sandbox(&dev(), &sid).await,
        Err(WorkerError::SandboxNotFound)
    ));
    let m = h.worker.metrics();
    assert_eq!(
        m.value(
            "worker.sandboxes.warm.target",
            &[("worker_id", "worker_a"), ("cpu", "2")]
        ),
        Some(6.0)
    );
    assert_eq!(
        m.value(
            "worker.sandboxes.warm.deficit",
            &[("worker_id", "worker_a"), ("cpu", "2")]
        ),
        Some(6.0)
    );
}

#[tokio::test(start_paused = true)]
async fn delete_stops_running_execs() {
    let h = Harness::new();
    let sid = h.sandbox().await;
    let accepted = h
        .worker
        .start_exec(
            &dev(),
            &sid,
            ExecRequest {
                command: "sleep 1000".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    h.worker.delete_sandbox(&dev(), &sid).await.unwrap();
    assert_eq!(h.fake.live_count(), 0);
    assert!(matches!(
        h.worker.get_exec(&dev(), &sid, &accepted.exec_id),
        Err(WorkerError::SandboxNotFound)
    ));
}

#[tokio::test]
async fn ttl_expiry_destroys() {
    let h = Harness::new();
    let mut r = req("img", 1);
    r.ttl_seconds = 60;
    let short = h.create(&dev(), r).await.sandbox_id;
    let long = h.sandbox().await;
    assert_eq!(h.worker.reap_expired().await, 0);
    h.clock.advance(Duration::from_secs(61));
    // Expired sandboxes are gone for clients at once, even before the reaper runs.
    assert!(matches!(
        h.worker.get_sandbox(&dev(), &short),
        Err(WorkerError::SandboxNotFound)
    ));
    assert_eq!(h.worker.reap_expired().await, 1);
    assert_eq!(
        h.fake.live_vm_ids().into_iter().collect::<Vec<_>>(),
        vec![vm_of(&long)]
    );
    assert_eq!(h.worker.live_sandboxes(), 1);
    assert_eq!(h.worker.allocated(), (1, 2048));
    h.clock.advance(Duration::from_secs(3600));
    assert_eq!(h.worker.reap_expired().await, 1);
    assert_eq!(h.fake.live_count(), 0);
}

#[tokio::test]
async fn lease_extends_and_validates() {
    let h = Harness::with(|c| c.max_ttl = Duration::from_secs(7200));
    let mut r = req("img", 1);
    r.ttl_seconds = 60;
    let sid = h.create(&dev(), r).await.sandbox_id;
    for bad in [None, Some(""), Some("0"), Some("-1"), Some(" 5"), Some("x")] {
        assert!(matches!(
            h.worker.renew_lease(&dev(), &sid, bad),
            Err(WorkerError::InvalidTtl)
        ));
    }
    // The ttl is checked before the lookup.
    let unknown = SandboxId::new(
        ComponentId::parse("broker_local").unwrap(),
        ComponentId::parse("worker_a").unwrap(),
        LocalVmId::new_random(),
    )
    .to_string();
    assert!(matches!(
        h.worker.renew_lease(&dev(), &unknown, Some("0")),
        Err(WorkerError::InvalidTtl)
    ));
    assert!(matches!(
        h.worker.renew_lease(&dev(), &unknown, Some("10")),
        Err(WorkerError::SandboxNotFound)
    ));

    h.clock.advance(Duration::from_secs(30));
    let lease = h.worker.renew_lease(&dev(), &sid, Some("600")).unwrap();
    assert_eq!(lease.expires_at, t0() + chrono::Duration::seconds(630));
    h.clock.advance(Duration::from_secs(120));
    assert_eq!(h.worker.reap_expired().await, 0);
    assert_eq!(
        h.worker.get_sandbox(&dev(), &sid).unwrap().expires_at,
        lease.expires_at
    );
    let capped = h.worker.renew_lease(&dev(), &sid, Some("999999")).unwrap();
    assert_eq!(
        capped.expires_at,
        t0() + chrono::Duration::seconds(150) + chrono::Duration::hours(2)
    );
}

#[tokio::test]
async fn ids_are_strict_and_foreign_ids_not_found() {
    let h = Harness::new();
    let sid = h.sandbox().await;
    let vm = vm_of(&sid);
    assert!(matches!(
        h.worker.get_sandbox(&dev(), "not-an-id"),
        Err(WorkerError::MalformedSandboxId)
    ));
    assert!(matches!(
        h.worker.get_sandbox(&dev(), &format!(" {sid}")),
        Err(WorkerError::MalformedSandboxId)
    ));
    let other_broker = SandboxId::new(
        ComponentId::parse("broker_b").unwrap(),
        ComponentId::parse("worker_a").unwrap(),
        vm,
    )
    .to_string();
    let other_worker = SandboxId::new(
        ComponentId::parse("broker_local").unwrap(),
        ComponentId::parse("worker_b").unwrap(),
        vm,
    )
    .to_string();
    for foreign in [&other_broker, &other_worker] {
        assert!(matches!(
            h.worker.get_sandbox(&dev(), foreign),
            Err(WorkerError::SandboxNotFound)
        ));
        assert!(matches!(
            h.worker.delete_sandbox(&dev(), foreign).await,
            Err(WorkerError::SandboxNotFound)
        ));
        assert!(matches!(
            h.worker.stat_file(&dev(), foreign, Some("/")).await,
            Err(WorkerError::SandboxNotFound)
        ));
    }
    assert_eq!(h.worker.live_sandboxes(), 1);
}

#[tokio::test]
async fn prod_ownership_is_enforced_everywhere() {
    let h = Harness::with(|c| c.auth_mode = AuthMode::Prod);
    let a = client("client-a");
    let b = client("client-b");
    let sid = h.create(&a, req("ubuntu:24.04", 1)).await.sandbox_id;
    assert!(h.worker.get_sandbox(&a, &sid).is_ok());
    let accepted = h
        .worker
        .start_exec(&a, &sid, ExecRequest::default())
        .await
        .unwrap();
    let eid = accepted.exec_id.as_str();

    let denied = |r: Result<(), WorkerError>, what: &str| {
        assert!(
            matches!(r, Err(WorkerError::OwnershipMismatch)),
            "{what}: {r:?}"
        );
    };
    let w = &h.worker;
    denied(w.get_sandbox(&b, &sid).map(drop), "get");
    denied(w.renew_lease(&b, &sid, Some("60")).map(drop), "lease");
    denied(
        w.start_exec(&b, &sid, ExecRequest::default())
            .await
            .map(drop),
        "exec",
    );
    let code = RunCodeRequest {
        code: "print('x')".into(),
        runtime: "python".into(),
        ..Default::default()
    };
    denied(w.run_code(&b, &sid, code).await.map(drop), "run code");
    denied(w.get_exec(&b, &sid, eid).map(drop), "get exec");
    denied(
        w.exec_frames(&b, &sid, eid, None, None).await.map(drop),
        "frames",
    );
    denied(
        w.write_file(&b, &sid, Some("/workspace/x"), reader(b"x"), false)
            .await
            .map(drop),
        "write",
    );
    denied(
        w.read_file(&b, &sid, Some("/workspace/x"), None)
            .await
            .map(drop),
        "read",
    );
    denied(w.open_file(&b, &sid, Some("/x")).await.map(drop), "open");
    denied(w.stat_file(&b, &sid, Some("/")).await.map(drop), "stat");
    denied(
        w.list_files(
            &b,
            &sid,
            ListQuery {
                path: Some("/"),
                ..Default::default()
            },
        )
        .await
        .map(drop),
        "list",
    );
    denied(
        w.mkdir(
            &b,
            &sid,
            MkdirRequest {
                path: "/".into(),
                recursive: false,
            },
        )
        .await
        .map(drop),
        "mkdir /",
    );
    denied(
        w.remove_file(&b, &sid, Some("/workspace"), None, None)
            .await,
        "remove",
    );
    denied(
        w.port_url(&b, &sid, "3000", None, "h").map(drop),
        "port url",
    );
    denied(w.connect_port(&b, &sid, "3000").await.map(drop), "proxy");
    denied(w.delete_sandbox(&b, &sid).await, "delete");
    assert_eq!(h.worker.live_sandboxes(), 1);

    // Dev mode skips the check.
    let d = Harness::new();
    let sid = d.create(&a, req("img", 1)).await.sandbox_id;
    assert!(d.worker.get_sandbox(&b, &sid).is_ok());
}

#[tokio::test]
async fn mkdir_root_checks_the_sandbox() {
    let h = Harness::new();
    let unknown = SandboxId::new(
        ComponentId::parse("broker_local").unwrap(),
        ComponentId::parse("worker_a").unwrap(),
        LocalVmId::new_random(),
    )
    .to_string();
    let root = || MkdirRequest {
        path: "/".into(),
        recursive: false,
    };
    assert!(matches!(
        h.worker.mkdir(&dev(), &unknown, root()).await,
        Err(WorkerError::SandboxNotFound)
    ));
    let sid = h.sandbox().await;
    let r = h.worker.mkdir(&dev(), &sid, root()).await.unwrap();
    assert_eq!((r.path.as_str(), r.created), ("/", false));
}

// ---------------------------------------------------------------------------------------------
// Warm claims and bounces

#[tokio::test]
async fn hinted_create_claims_the_ready_vm() {
    let h = Harness::new();
    let vm = h.warm("vetu", "ubuntu:24.04", 1).await;
    assert_eq!(h.queued_events().len(), 1);
    let hint = vm.to_string();
    let outcome = h
        .worker
        .create_sandbox(
            &dev(),
            CreateSandboxRequest {
                virtualization: "vetu".into(),
                image: " ubuntu:24.04 ".into(),
                cpu: 0,
                ..Default::default()
            },
            CreateQuery {
                local_vm_id: Some(&hint),
                placement_retry: Some("1"),
            },
        )
        .await
        .unwrap();
    let CreateOutcome::Created(created) = outcome else {
        panic!("{outcome:?}")
    };
    assert_eq!(vm_of(&created.sandbox_id), vm);
    assert_eq!(created.start_type, "warm");
    assert!(h.worker.ready_counts().is_empty());
    assert_eq!(h.vetu.counters().provisions, 1);
    let events = h.queued_events();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].event, "claimed");
    assert_eq!(events[0].local_vm_id, hint);
    assert_eq!(
        h.worker.metrics().value(
            "worker.warm.hit.total",
            &[("worker_id", "worker_a"), ("cpu", "1")]
        ),
        Some(1.0)
    );
}

#[tokio::test]
async fn unhinted_create_claims_the_oldest_ready_vm() {
    let h = Harness::new();
    let first = h.warm("fake", "img", 1).await;
    let second = h.warm("fake", "img", 1).await;
    h.queued_events();
    let created = h.create(&dev(), req("img", 1)).await;
    assert_eq!(created.start_type, "warm");
    assert_eq!(vm_of(&created.sandbox_id), first);
    assert_eq!(h.worker.ready_counts().values().sum::<usize>(), 1);
    assert_eq!(h.worker.lock().ready.snapshot()[0].0, second);
    let events = h.queued_events();
    assert_eq!(
        (events[0].event.as_str(), events[0].local_vm_id.clone()),
        ("claimed", first.to_string())
    );
    assert_eq!(h.fake.counters().provisions, 2);
}

#[tokio::test]
async fn unknown_hint_bounces_with_next_retry() {
    let h = Harness::new();
    let outcome = h
        .worker
        .create_sandbox(
            &dev(),
            req("ubuntu:24.04", 1),
            CreateQuery {
                local_vm_id: Some("550e8400-e29b-41d4-a716-446655440000"),
                placement_retry: Some("1"),
            },
        )
        .await
        .unwrap();
    match outcome {
        CreateOutcome::RetryPlacement { location } => assert_eq!(
            location,
            "http://broker.example.com/sandboxes?placement_retry=2"
        ),
        other => panic!("{other:?}"),
    }
    assert!(h.queued_events().is_empty());
    assert_eq!(h.live_vms(), 0);

    let h = Harness::with(|c| c.broker_public_url = None);
    let err = h
        .worker
        .create_sandbox(
            &dev(),
            req("img", 1),
            CreateQuery {
                local_vm_id: Some("550e8400-e29b-41d4-a716-446655440000"),
                placement_retry: None,
            },
        )
        .await
        .unwrap_err();
    assert!(matches!(err, WorkerError::UnableToRetryPlacement));
}

#[tokio::test]
async fn hinted_tuple_mismatch_bounces_and_reannounces() {
    let h = Harness::with(|c| c.broker_public_url = Some("http://broker.example.com/".into()));
    let vm = h.warm("fake", "img-a", 1).await;
    h.queued_events();
    let hint = vm.to_string();
    let outcome = h
        .worker
        .create_sandbox(
            &dev(),
            req("img-b", 1),
            CreateQuery {
                local_vm_id: Some(&hint),
                placement_retry: None,
            },
        )
        .await
        .unwrap();
    match outcome {
        CreateOutcome::RetryPlacement { location } => assert_eq!(
            location,
            "http://broker.example.com/sandboxes?placement_retry=1"
        ),
        other => panic!("{other:?}"),
    }
    let events = h.queued_events();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].event, "ready");
    assert_eq!(events[0].local_vm_id, hint);
    assert_eq!(events[0].image, "img-a");
    assert_eq!(h.worker.ready_counts().values().sum::<usize>(), 1);
    assert_eq!(h.worker.live_sandboxes(), 0);
    assert_eq!(h.fake.live_count(), 1);
}

#[tokio::test]
async fn hinted_create_without_capacity_bounces_and_keeps_the_vm() {
    let h = Harness::with(|c| c.total_cores = 2);
    let vm = h.warm("fake", "img", 2).await;
    h.create(&dev(), req("other", 2)).await;
    h.queued_events();
    let hint = vm.to_string();
    let outcome = h
        .worker
        .create_sandbox(
            &dev(),
            req("img", 2),
            CreateQuery {
                local_vm_id: Some(&hint),
                placement_retry: Some("2"),
            },
        )
        .await
        .unwrap();
    match outcome {
        CreateOutcome::RetryPlacement { location } => assert_eq!(
            location,
            "http://broker.example.com/sandboxes?placement_retry=3"
        ),
        other => panic!("{other:?}"),
    }
    let events = h.queued_events();
    assert_eq!(
        events
            .iter()
            .map(|e| (e.event.as_str(), e.local_vm_id.as_str()))
            .collect::<Vec<_>>(),
        vec![("ready", hint.as_str())]
    );
    assert_eq!(h.worker.ready_counts().values().sum::<usize>(), 1);
    assert_eq!(h.worker.live_sandboxes(), 1);
    assert_eq!(h.worker.allocated().0, 2);
}

#[tokio::test]
async fn cold_create_retires_a_ready_vm_of_another_tuple_when_full() {
    let h = Harness::with(|c| c.max_live_sandboxes = 2);
    let a1 = h.warm("fake", "a", 1).await;
    h.warm("fake", "a", 1).await;
    assert!(h.worker.next_warm_job().is_none(), "pool is full");
    h.queued_events();
    let created = h.create(&dev(), req("b", 1)).await;
    assert_eq!(created.start_type, "cold");
    let events = h.queued_events();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].event, "retired");
    assert_eq!(events[0].local_vm_id, a1.to_string());
    assert_eq!(h.fake.live_count(), 2);
    assert_eq!(h.worker.ready_counts().values().sum::<usize>(), 1);
}

// ---------------------------------------------------------------------------------------------
// Warm pool filler

#[tokio::test]
async fn pre_pull_floor_fills_with_warmup() {
    let tuple = SandboxTuple {
        virtualization: "fake".into(),
        image: "alpine:3.20".into(),
        cpu: 1,
    };
    let h = Harness::with(|c| {
        c.pre_pull = vec![PrePullTarget {
            tuple: tuple.clone(),
            target_count: 2,
            warmup_script: "echo warming".into(),
            warmup_timeout: Duration::from_secs(5),
        }]
    });
    let (_tx, mut stop) = watch::channel(false);
    while let Some(job) = h.worker.next_warm_job() {
        h.worker.fill_one(job, &mut stop).await;
    }
    assert_eq!(h.worker.ready_counts().get(&tuple), Some(&2));
    assert_eq!(h.fake.live_count(), 2);
    let events = h.queued_events();
    assert_eq!(events.len(), 2);
    assert!(events.iter().all(|e| e.event == "ready"
        && e.image == "alpine:3.20"
        && LocalVmId::parse(&e.local_vm_id).is_ok()));
    let m = h.worker.metrics();
    let labels = [("worker_id", "worker_a"), ("cpu", "1")];
    assert_eq!(m.value("worker.sandboxes.warm.target", &labels), Some(2.0));
    assert_eq!(m.value("worker.sandboxes.warm.ready", &labels), Some(2.0));
    assert_eq!(m.value("worker.sandboxes.warm.deficit", &labels), Some(0.0));
}

#[tokio::test]
async fn failing_warmup_destroys_the_vm_and_backs_off() {
    let tuple = SandboxTuple {
        virtualization: "fake".into(),
        image: "alpine:3.20".into(),
        cpu: 1,
    };
    let h = Harness::with(|c| {
        c.pre_pull = vec![PrePullTarget {
            tuple: tuple.clone(),
            target_count: 1,
            warmup_script: "echo nope >&2; exit 3".into(),
            warmup_timeout: Duration::from_secs(5),
        }]
    });
    h.fake.set_exec_handler(Arc::new(|_, _| {
        Some(FakeExec::new().stderr("nope\n").exit_code(3))
    }));
    let (_tx, mut stop) = watch::channel(false);
    let job = h.worker.next_warm_job().unwrap();
    h.worker.fill_one(job, &mut stop).await;
    assert!(h.worker.next_warm_job().is_none(), "backing off");
    assert!(h.worker.ready_counts().is_empty());
    assert_eq!(h.fake.live_count(), 0);
    assert_eq!(h.fake.counters().destroys, 1);
    assert!(h.queued_events().is_empty());
    assert_eq!(
        h.worker.metrics().value(
            "worker.warmup.failures.total",
            &[
                ("worker_id", "worker_a"),
                ("cpu", "1"),
                ("reason", "warmup")
            ]
        ),
        Some(1.0)
    );
    // A provision failure counts too.
    let h = Harness::with(|c| {
        c.pre_pull = vec![PrePullTarget {
            tuple: tuple.clone(),
            target_count: 1,
            warmup_script: String::new(),
            warmup_timeout: Duration::from_secs(5),
        }]
    });
    h.fake.fail_next_provisions(1);
    let job = h.worker.next_warm_job().unwrap();
    h.worker.fill_one(job, &mut stop).await;
    assert_eq!(
        h.worker.metrics().value(
            "worker.warmup.failures.total",
            &[
                ("worker_id", "worker_a"),
                ("cpu", "1"),
                ("reason", "provision")
            ]
        ),
        Some(1.0)
    );
    assert_eq!(h.fake.live_count(), 0);
}

#[tokio::test(start_paused = true)]
async fn filler_follows_demand_within_capacity() {
    let h = Harness::with(|c| c.max_live_sandboxes = 3);
    let (run, stop) = h.start();
    h.sandbox().await;
    eventually("pool filled to capacity", || {
        h.worker.ready_counts().values().sum::<usize>() == 2
    })
    .await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(h.fake.live_count(), 3, "never beyond max_live_sandboxes");
    // The next create is warm.
    assert_eq!(h.create(&dev(), req("img", 1)).await.start_type, "warm");
    stop.send(()).unwrap();
    run.await.unwrap();
    assert_eq!(h.live_vms(), 0);
}

// ---------------------------------------------------------------------------------------------
// Registration loop

#[tokio::test(start_paused = true)]
async fn registration_body_and_deregistration() {
    let h = Harness::with(|c| c.total_memory_mib = 16384);
    let (run, stop) = h.start();
    eventually("registered", || h.link.registration_count() >= 2).await;
    let (_, body) = h.link.registrations.lock().unwrap()[0].clone();
    assert_eq!(body.hostname, "worker-a.local");
    assert_eq!(body.base_url, "http://worker-a.local:9090");
    assert_eq!(body.hardware_sku, "gpu-a100");
    assert_eq!(
        (
            body.total_cores,
            body.total_memory_mib,
            body.max_live_sandboxes
        ),
        (8, 16384, 6)
    );
    assert_eq!(body.live_sandboxes, 0);
    let sid = h.sandbox().await;
    let n = h.link.registration_count();
    eventually("heartbeat with load", || {
        h.link.registration_count() > n + 1
    })
    .await;
    let (_, body) = h.link.registrations.lock().unwrap().last().unwrap().clone();
    assert_eq!(
        (
            body.live_sandboxes,
            body.allocated_cores,
            body.allocated_memory_mib
        ),
        (1, 1, 2048)
    );
    assert_eq!(h.link.deregistrations.load(Ordering::SeqCst), 0);
    stop.send(()).unwrap();
    run.await.unwrap();
    assert_eq!(h.link.deregistrations.load(Ordering::SeqCst), 1);
    assert_eq!(h.live_vms(), 0, "shutdown destroys everything");
    assert!(h.worker.get_sandbox(&dev(), &sid).is_err());
}

#[tokio::test(start_paused = true)]
async fn heartbeat_stays_within_half_the_lease() {
    let h = Harness::with(|c| c.registration_heartbeat = Duration::from_secs(300));
    *h.link.lease_ttl_seconds.lock().unwrap() = 10;
    let (run, stop) = h.start();
    eventually("three registrations", || h.link.registration_count() >= 3).await;
    let times: Vec<_> = h
        .link
        .registrations
        .lock()
        .unwrap()
        .iter()
        .map(|(t, _)| *t)
        .collect();
    assert_eq!(times[1] - times[0], Duration::from_secs(5));
    stop.send(()).unwrap();
    run.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn registration_failure_backs_off_then_reannounces() {
    let h = Harness::new();
    h.link.fail_register.store(true, Ordering::SeqCst);
    let (run, stop) = h.start();
    eventually("four attempts", || h.link.registration_count() >= 4).await;
    let times: Vec<_> = h
        .link
        .registrations
        .lock()
        .unwrap()
        .iter()
        .map(|(t, _)| *t)
        .collect();
    assert_eq!(times[1] - times[0], Duration::from_secs(1));
    assert_eq!(times[2] - times[1], Duration::from_secs(2));
    assert_eq!(times[3] - times[2], Duration::from_secs(4));
    assert_eq!(h.link.vm_start_calls.load(Ordering::SeqCst), 0);
    h.link.fail_register.store(false, Ordering::SeqCst);
    eventually("registered", || {
        h.link.vm_start_calls.load(Ordering::SeqCst) > 0
    })
    .await;
    stop.send(()).unwrap();
    run.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn vm_starts_are_drained_promptly_and_announced_ready() {
    let h = Harness::with(|c| c.registration_heartbeat = Duration::from_secs(30));
    {
        let mut starts = h.link.starts.lock().unwrap();
        for image in ["ubuntu:24.04", "alpine:3.20", "ubuntu:24.04"] {
            starts.push_back(VmStartResponse {
                virtualization: "vetu".into(),
                image: image.into(),
                cpu: 2,
            });
        }
    }
    let (run, stop) = h.start();
    eventually("three ready events", || {
        h.link.events_of("ready").len() == 3
    })
    .await;
    assert!(h.link.starts.lock().unwrap().is_empty());
    assert_eq!(
        h.link.registration_count(),
        1,
        "one heartbeat drained them all"
    );
    let ready = h.link.events_of("ready");
    assert!(ready.iter().all(|e| e.virtualization == "vetu"
        && e.cpu == 2
        && LocalVmId::parse(&e.local_vm_id).is_ok()));
    assert_eq!(h.worker.ready_counts().values().sum::<usize>(), 3);
    assert_eq!(h.vetu.live_count(), 3);
    stop.send(()).unwrap();
    run.await.unwrap();
    assert_eq!(h.live_vms(), 0);
}

#[tokio::test(start_paused = true)]
async fn broker_restart_triggers_reannouncement() {
    let h = Harness::new();
    h.link.starts.lock().unwrap().push_back(VmStartResponse {
        virtualization: "fake".into(),
        image: "img".into(),
        cpu: 1,
    });
    let (run, stop) = h.start();
    eventually("ready", || h.link.events_of("ready").len() == 1).await;
    let n = h.link.registration_count();
    eventually("more heartbeats", || h.link.registration_count() >= n + 5).await;
    assert_eq!(
        h.link.events_of("ready").len(),
        1,
        "same broker: no re-announce"
    );

    *h.link.instance_id.lock().unwrap() = "instance_two".into();
    eventually("re-announced", || h.link.events_of("ready").len() == 2).await;
    let ready = h.link.events_of("ready");
    assert_eq!(ready[0].local_vm_id, ready[1].local_vm_id);
    let n = h.link.registration_count();
    eventually("more heartbeats", || h.link.registration_count() >= n + 5).await;
    assert_eq!(h.link.events_of("ready").len(), 2);
    stop.send(()).unwrap();
    run.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn claimed_event_reaches_the_broker_and_reaper_runs() {
    let h = Harness::with(|c| c.max_live_sandboxes = 1);
    h.link.starts.lock().unwrap().push_back(VmStartResponse {
        virtualization: "fake".into(),
        image: "img".into(),
        cpu: 1,
    });
    let (run, stop) = h.start();
    eventually("ready", || h.link.events_of("ready").len() == 1).await;
    let hint = h.link.events_of("ready")[0].local_vm_id.clone();
    let mut r = req("img", 1);
    r.ttl_seconds = 30;
    let outcome = h
        .worker
        .create_sandbox(
            &dev(),
            r,
            CreateQuery {
                local_vm_id: Some(&hint),
                placement_retry: None,
            },
        )
        .await
        .unwrap();
    assert!(matches!(outcome, CreateOutcome::Created(_)));
    eventually("claimed", || h.link.events_of("claimed").len() == 1).await;
    assert_eq!(h.link.events_of("claimed")[0].local_vm_id, hint);

    h.clock.advance(Duration::from_secs(31));
    eventually("reaped", || h.worker.live_sandboxes() == 0).await;
    let claimed = LocalVmId::parse(&hint).unwrap();
    assert!(!h.fake.live_vm_ids().contains(&claimed));
    stop.send(()).unwrap();
    run.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn run_cleans_leftovers_first() {
    let clock = Arc::new(ManualClock::new(t0()));
    let fake = FakeBackend::new().with_leftovers(2);
    let worker = Worker::new(
        config(),
        vec![Arc::new(fake.clone())],
        clock,
        Arc::new(Metrics::new(false)),
        None,
    );
    let (tx, rx) = oneshot::channel::<()>();
    let run = tokio::spawn(worker.clone().run(async move {
        let _ = rx.await;
    }));
    eventually("cleanup", || fake.counters().cleanups == 1).await;
    tx.send(()).unwrap();
    run.await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// Exec and frames

#[tokio::test(start_paused = true)]
async fn exec_runs_and_records() {
    let h = Harness::new();
    let sid = h.sandbox().await;
    let accepted = h
        .worker
        .start_exec(
            &dev(),
            &sid,
            ExecRequest {
                command: "echo hi; echo oops >&2".into(),
                ..Default::default()
            },
        )
        .await;
    // The fake shell has no redirections: it fails with exit 2, which is still an exec.
    let accepted = accepted.unwrap();
    assert_eq!(accepted.status, "running");
    assert_eq!(
        accepted.poll_url,
        format!("/sandboxes/{sid}/exec/{}", accepted.exec_id)
    );
    assert_eq!(accepted.frames_url, format!("{}/frames", accepted.poll_url));
    all_frames(&h, &dev(), &sid, &accepted.exec_id).await;
    let record = h.worker.get_exec(&dev(), &sid, &accepted.exec_id).unwrap();
    assert_eq!(record.status, "exited");
    assert_eq!(record.exit_code, Some(2));

    let record = exec(&h, &sid, "echo hello").await;
    assert_eq!(record.stdout, "hello\n");
    assert_eq!(record.output, "hello\n");
    assert_eq!(record.exit_code, Some(0));
    assert_eq!(record.command, "echo hello");
    assert!(record.duration_ms >= 1);
    assert!(record.completed_at.is_some());

    let record = exec(&h, &sid, "").await;
    assert_eq!(record.command, "true");
    assert_eq!(record.exit_code, Some(0));

    let accepted = h
        .worker
        .start_exec(
            &dev(),
            &sid,
            ExecRequest {
                args: Some(vec!["echo".into(), "a  b".into()]),
                env: [("K".to_string(), "V".to_string())].into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    all_frames(&h, &dev(), &sid, &accepted.exec_id).await;
    let record = h.worker.get_exec(&dev(), &sid, &accepted.exec_id).unwrap();
    assert_eq!(record.stdout, "a  b\n");

    assert!(matches!(
        h.worker
            .start_exec(
                &dev(),
                &sid,
                ExecRequest {
                    args: Some(vec![String::new()]),
                    ..Default::default()
                }
            )
            .await,
        Err(WorkerError::InvalidExec(_))
    ));
    assert!(matches!(
        h.worker
            .start_exec(
                &dev(),
                &sid,
                ExecRequest {
                    env: [("A=B".to_string(), "v".to_string())].into(),
                    ..Default::default()
                }
            )
            .await,
        Err(WorkerError::InvalidExec(_))
    ));
    assert!(matches!(
        h.worker.get_exec(&dev(), &sid, "exec_nope"),
        Err(WorkerError::ExecNotFound)
    ));
    let other = h.sandbox().await;
    assert!(matches!(
        h.worker.get_exec(&dev(), &other, &accepted.exec_id),
        Err(WorkerError::ExecNotFound)
    ));
}

#[tokio::test(start_paused = true)]
async fn first_exec_tti_is_observed_once() {
    let h = Harness::new();
    let sid = h.sandbox().await;
    for _ in 0..2 {
        h.worker
            .start_exec(&dev(), &sid, ExecRequest::default())
            .await
            .unwrap();
    }
    let m = h.worker.metrics();
    assert_eq!(
        m.histogram_total_count("worker.sandbox.first_exec.tti_seconds"),
        1
    );
    assert_eq!(
        m.histogram_total_count("worker.exec.start.duration_seconds"),
        2
    );
    eventually("both done", || {
        m.histogram_total_count("worker.exec.duration_seconds") == 2
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn exec_timeout_and_backend_errors() {
    let h = Harness::new();
    let sid = h.sandbox().await;
    let accepted = h
        .worker
        .start_exec(
            &dev(),
            &sid,
            ExecRequest {
                command: "sleep 100".into(),
                timeout_ms: 1500,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    all_frames(&h, &dev(), &sid, &accepted.exec_id).await;
    let record = h.worker.get_exec(&dev(), &sid, &accepted.exec_id).unwrap();
    assert_eq!(record.exit_code, Some(crate::backend::TIMEOUT_EXIT_CODE));
    assert!(record.timed_out);

    let accepted = h
        .worker
        .start_exec(
            &dev(),
            &sid,
            ExecRequest {
                command: "pwd".into(),
                cwd: "/nope".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let frames = all_frames(&h, &dev(), &sid, &accepted.exec_id).await;
    assert_eq!(frames.len(), 2);
    assert_eq!(frames[0].kind, FrameKind::Stderr);
    assert!(frames[0].data.contains("working directory"));
    assert_eq!(frames[1].kind, FrameKind::Exit);
    assert_eq!(frames[1].data, "127");
}

#[tokio::test(start_paused = true)]
async fn frames_long_poll_returns_when_output_arrives() {
    let h = Harness::new();
    h.fake.set_exec_handler(Arc::new(|_, _| {
        Some(
            FakeExec::new()
                .sleep(Duration::from_secs(5))
                .stdout("late\n")
                .sleep(Duration::from_secs(100)),
        )
    }));
    let sid = h.sandbox().await;
    let accepted = h
        .worker
        .start_exec(&dev(), &sid, ExecRequest::default())
        .await
        .unwrap();
    let eid = accepted.exec_id;

    // Without wait: at once, empty, not null.
    let page = h
        .worker
        .exec_frames(&dev(), &sid, &eid, None, None)
        .await
        .unwrap();
    assert!(page.frames.is_empty());
    assert!(page.has_more && !page.wait_applied);
    assert_eq!(page.next_cursor, 0);
    let json = serde_json::to_value(&page).unwrap();
    assert_eq!(json["frames"], serde_json::json!([]));

    let started = tokio::time::Instant::now();
    let page = h
        .worker
        .exec_frames(&dev(), &sid, &eid, Some("0"), Some("30s"))
        .await
        .unwrap();
    let waited = started.elapsed();
    assert_eq!(
        waited,
        Duration::from_secs(5),
        "woken by the output, not the timeout"
    );
    assert_eq!(page.frames.len(), 1);
    assert_eq!(page.frames[0].data, "late\n");
    assert_eq!(page.next_cursor, 1);
    assert!(page.has_more && page.wait_applied);

    // Nothing new: the wait runs out (2 s), frames empty, still more to come.
    let started = tokio::time::Instant::now();
    let page = h
        .worker
        .exec_frames(&dev(), &sid, &eid, Some("1"), Some("2000"))
        .await
        .unwrap();
    assert_eq!(started.elapsed(), Duration::from_secs(2));
    assert!(page.frames.is_empty());
    assert!(page.has_more);
    assert_eq!(page.next_cursor, 1);
}

#[tokio::test(start_paused = true)]
async fn has_more_until_exit_frame_is_delivered() {
    let h = Harness::new();
    let sid = h.sandbox().await;
    let record = exec(&h, &sid, "echo one; echo two").await;
    let eid = record.exec_id;
    let page = h
        .worker
        .exec_frames(&dev(), &sid, &eid, None, None)
        .await
        .unwrap();
    assert_eq!(
        page.frames.iter().map(|f| f.kind).collect::<Vec<_>>(),
        vec![FrameKind::Stdout, FrameKind::Stdout, FrameKind::Exit]
    );
    assert_eq!(page.frames[2].data, "0");
    assert_eq!(page.next_cursor, 3);
    assert!(!page.has_more);
    for (cursor, expect) in [("1", 2), ("2", 1), ("3", 0), ("99", 0), ("-4", 3), ("x", 3)] {
        let page = h
            .worker
            .exec_frames(&dev(), &sid, &eid, Some(cursor), Some("1m"))
            .await
            .unwrap();
        assert_eq!(page.frames.len(), expect, "cursor {cursor}");
        assert_eq!(page.next_cursor, 3);
        assert!(!page.has_more);
        assert!(page.wait_applied);
    }
}

#[tokio::test(start_paused = true)]
async fn utf8_split_across_chunks_is_not_mangled() {
    let h = Harness::new();
    h.fake.set_exec_handler(Arc::new(|_, _| {
        Some(
            FakeExec::new()
                .stdout(&b"price: \xe2\x82"[..])
                .stderr(&b"\xf0\x9f"[..])
                .stdout(&b"\xac\n"[..])
                .stderr(&b"\x98\x80 \xff"[..]),
        )
    }));
    let sid = h.sandbox().await;
    let accepted = h
        .worker
        .start_exec(&dev(), &sid, ExecRequest::default())
        .await
        .unwrap();
    let frames = all_frames(&h, &dev(), &sid, &accepted.exec_id).await;
    let record = h.worker.get_exec(&dev(), &sid, &accepted.exec_id).unwrap();
    assert_eq!(record.stdout, "price: €\n");
    assert_eq!(record.stderr, "😀 \u{fffd}");
    let stdout: String = frames
        .iter()
        .filter(|f| f.kind == FrameKind::Stdout)
        .map(|f| f.data.as_str())
        .collect();
    assert_eq!(stdout, "price: €\n");
}

// ---------------------------------------------------------------------------------------------
// Run code

async fn code(
    h: &Harness,
    sid: &str,
    runtime: &str,
    source: &str,
    wait: Option<bool>,
) -> Result<RunCodeOutcome, WorkerError> {
    h.worker
        .run_code(
            &dev(),
            sid,
            RunCodeRequest {
                code: source.into(),
                runtime: runtime.into(),
                wait,
                ..Default::default()
            },
        )
        .await
}

#[tokio::test(start_paused = true)]
async fn run_code_waits_for_the_result() {
    let h = Harness::new();
    let sid = h.sandbox().await;
    let Ok(RunCodeOutcome::Finished(r)) =
        code(&h, &sid, "node", "console.log('hello-node')", None).await
    else {
        panic!("node run")
    };
    assert_eq!(
        (
            r.runtime.as_str(),
            r.status.as_str(),
            r.stdout.as_str(),
            r.exit_code
        ),
        ("node", "exited", "hello-node\n", 0)
    );
    assert_eq!(r.output, "hello-node\n");
    let Ok(RunCodeOutcome::Finished(r)) =
        code(&h, &sid, " Python ", "print('hello-python')", Some(true)).await
    else {
        panic!("python run")
    };
    assert_eq!(
        (r.runtime.as_str(), r.stdout.as_str(), r.exit_code),
        ("python", "hello-python\n", 0)
    );
    let Ok(RunCodeOutcome::Finished(r)) =
        code(&h, &sid, "node", "throw new Error('boom')", None).await
    else {
        panic!("node throw")
    };
    assert_ne!(r.exit_code, 0);
    assert!(!r.stderr.is_empty());
    // The exec record matches.
    let record = h.worker.get_exec(&dev(), &sid, &r.exec_id).unwrap();
    assert_eq!(record.runtime, "node");
    assert_eq!(record.exit_code, Some(r.exit_code));
}

#[tokio::test(start_paused = true)]
async fn run_code_syntax_error_is_reported() {
    let h = Harness::new();
    let sid = h.sandbox().await;
    let Ok(RunCodeOutcome::SyntaxError(body)) =
        code(&h, &sid, "python", "print('oops'", None).await
    else {
        panic!("syntax error expected")
    };
    assert_eq!(body.error, "syntax_error");
    assert_eq!(body.stderr, FAKE_SYNTAX_ERROR);
    assert_eq!(body.status, "exited");
    assert_ne!(body.exit_code, 0);
    let frames = all_frames(&h, &dev(), &sid, &body.exec_id).await;
    assert_eq!(
        frames.iter().map(|f| f.kind).collect::<Vec<_>>(),
        vec![FrameKind::Stderr, FrameKind::Exit]
    );

    // Asynchronously, a syntax error just ends the exec.
    let Ok(RunCodeOutcome::Accepted(a)) = code(&h, &sid, "python", "print(", Some(false)).await
    else {
        panic!("accepted expected")
    };
    let frames = all_frames(&h, &dev(), &sid, &a.exec_id).await;
    assert_eq!(frames.last().unwrap().data, "1");
}

#[tokio::test(start_paused = true)]
async fn run_code_in_background() {
    let h = Harness::new();
    let sid = h.sandbox().await;
    let Ok(RunCodeOutcome::Accepted(a)) = code(
        &h,
        &sid,
        "python",
        "import time\ntime.sleep(0.05)\nprint('later')",
        Some(false),
    )
    .await
    else {
        panic!("accepted expected")
    };
    assert_eq!(a.status, "running");
    assert!(!a.exec_id.is_empty() && !a.poll_url.is_empty() && !a.frames_url.is_empty());
    assert_eq!(
        h.worker.get_exec(&dev(), &sid, &a.exec_id).unwrap().status,
        "running"
    );
    eventually("exited", || {
        h.worker.get_exec(&dev(), &sid, &a.exec_id).unwrap().status == "exited"
    })
    .await;
    assert_eq!(
        h.worker.get_exec(&dev(), &sid, &a.exec_id).unwrap().stdout,
        "later\n"
    );
}

#[tokio::test]
async fn run_code_validation() {
    let h = Harness::new();
    let sid = h.sandbox().await;
    assert!(matches!(
        code(&h, &sid, "ruby", "puts 1", None).await,
        Err(WorkerError::InvalidRuntime)
    ));
    assert!(matches!(
        code(&h, &sid, "python", "", None).await,
        Err(WorkerError::CodeRequired)
    ));
    let big = "#".repeat(1_048_577);
    assert!(matches!(
        code(&h, &sid, "python", &big, None).await,
        Err(WorkerError::CodeTooLarge)
    ));
}

// ---------------------------------------------------------------------------------------------
// Files

#[tokio::test]
async fn files_write_read_stat_list_mkdir_remove() {
    let h = Harness::new();
    let sid = h.sandbox().await;
    let w = &h.worker;
    let p = dev();

    let (bytes, append) = decode_write_json(&WriteFileJson {
        content: "Hello".into(),
        encoding: "utf8".into(),
        append: false,
    })
    .unwrap();
    let written = w
        .write_file(&p, &sid, Some("/workspace/a.txt"), reader(&bytes), append)
        .await
        .unwrap();
    assert_eq!((written.bytes_written, written.bytes), (5, 5));
    assert_eq!(written.path, "/workspace/a.txt");

    assert!(matches!(
        w.write_file(
            &p,
            &sid,
            Some("/workspace/a.txt/child.txt"),
            reader(b"x"),
            false
        )
        .await,
        Err(WorkerError::PathIsFile)
    ));
    assert!(matches!(
        w.write_file(&p, &sid, Some("/workspace"), reader(b"x"), false)
            .await,
        Err(WorkerError::PathIsDirectory)
    ));
    assert!(matches!(
        w.write_file(&p, &sid, Some("/"), reader(b"x"), false).await,
        Err(WorkerError::PathIsDirectory)
    ));
    assert!(matches!(
        w.write_file(&p, &sid, Some("relative"), reader(b"x"), false)
            .await,
        Err(WorkerError::InvalidPath(
            crate::path::PathError::NotAbsolute
        ))
    ));

    let read = w
        .read_file(&p, &sid, Some("/workspace/a.txt"), None)
        .await
        .unwrap();
    assert_eq!(
        (
            read.content.as_str(),
            read.kind.as_str(),
            read.encoding.as_str(),
            read.bytes
        ),
        ("Hello", "file", "utf8", 5)
    );
    assert_eq!(
        w.read_file(&p, &sid, Some("/workspace/a.txt"), Some("utf-8"))
            .await
            .unwrap()
            .content,
        "Hello"
    );

    let (bytes, append) = decode_write_json(&WriteFileJson {
        content: "IQ==".into(),
        encoding: "base64".into(),
        append: true,
    })
    .unwrap();
    let written = w
        .write_file(&p, &sid, Some("/workspace/a.txt"), reader(&bytes), append)
        .await
        .unwrap();
    assert_eq!(written.bytes_written, 1);
    let read = w
        .read_file(&p, &sid, Some("/workspace/a.txt"), Some("base64"))
        .await
        .unwrap();
    assert_eq!((read.content.as_str(), read.bytes), ("SGVsbG8h", 6));
    assert!(matches!(
        w.read_file(&p, &sid, Some("/workspace/a.txt"), Some("hex"))
            .await,
        Err(WorkerError::InvalidEncoding)
    ));
    assert!(matches!(
        w.read_file(&p, &sid, Some("/workspace"), None).await,
        Err(WorkerError::FileNotFound)
    ));
    assert!(matches!(
        w.read_file(&p, &sid, Some("/missing"), None).await,
        Err(WorkerError::FileNotFound)
    ));
    let mut opened = w
        .open_file(&p, &sid, Some("/workspace/a.txt"))
        .await
        .unwrap();
    let mut raw = Vec::new();
    opened.body.read_to_end(&mut raw).await.unwrap();
    assert_eq!((raw.as_slice(), opened.size), (&b"Hello!"[..], 6));

    let stat = w.stat_file(&p, &sid, Some("/nope")).await.unwrap();
    assert!(!stat.exists && stat.kind.is_none());
    let stat = w
        .stat_file(&p, &sid, Some("/workspace/a.txt/x"))
        .await
        .unwrap();
    assert!(!stat.exists);
    let stat = w
        .stat_file(&p, &sid, Some("/workspace/a.txt"))
        .await
        .unwrap();
    assert_eq!(
        (
            stat.exists,
            stat.kind.as_deref(),
            stat.size,
            stat.modified_at
        ),
        (true, Some("file"), Some(6), Some(t0()))
    );
    let stat = w.stat_file(&p, &sid, Some("/workspace/")).await.unwrap();
    assert_eq!(
        (stat.kind.as_deref(), stat.size),
        (Some("directory"), Some(0))
    );

    let made = w
        .mkdir(
            &p,
            &sid,
            MkdirRequest {
                path: "/workspace/src".into(),
                recursive: true,
            },
        )
        .await
        .unwrap();
    assert!(made.created);
    let again = w
        .mkdir(
            &p,
            &sid,
            MkdirRequest {
                path: "/workspace/src".into(),
                recursive: false,
            },
        )
        .await
        .unwrap();
    assert!(!again.created);
    assert!(matches!(
        w.mkdir(
            &p,
            &sid,
            MkdirRequest {
                path: "/a/b/c".into(),
                recursive: false
            }
        )
        .await,
        Err(WorkerError::ParentNotFound)
    ));
    assert!(matches!(
        w.mkdir(
            &p,
            &sid,
            MkdirRequest {
                path: "/workspace/a.txt".into(),
                recursive: false
            }
        )
        .await,
        Err(WorkerError::PathIsFile)
    ));
    assert!(matches!(
        w.mkdir(&p, &sid, MkdirRequest::default()).await,
        Err(WorkerError::InvalidPath(crate::path::PathError::Required))
    ));
    w.write_file(
        &p,
        &sid,
        Some("/workspace/src/main.txt"),
        reader(b"m"),
        false,
    )
    .await
    .unwrap();

    let list = w
        .list_files(
            &p,
            &sid,
            ListQuery {
                path: Some("/workspace"),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let entries: Vec<_> = list
        .entries
        .iter()
        .map(|e| (e.path.as_str(), e.kind.as_str(), e.size, e.name.as_str()))
        .collect();
    assert_eq!(
        entries,
        vec![
            ("/workspace/a.txt", "file", Some(6), "a.txt"),
            ("/workspace/src", "directory", None, "src"),
        ]
    );
    assert_eq!(list.next_cursor, None);

    assert!(matches!(
        w.remove_file(&p, &sid, Some("/workspace/src"), Some("false"), None)
            .await,
        Err(WorkerError::DirectoryNotEmpty)
    ));
    w.remove_file(&p, &sid, Some("/workspace/src"), Some("true"), None)
        .await
        .unwrap();
    let stat = w
        .stat_file(&p, &sid, Some("/workspace/src/main.txt"))
        .await
        .unwrap();
    assert!(!stat.exists);
    assert!(matches!(
        w.remove_file(&p, &sid, Some("/gone"), None, None).await,
        Err(WorkerError::PathNotFound)
    ));
    w.remove_file(&p, &sid, Some("/gone"), None, Some("1"))
        .await
        .unwrap();
    assert!(matches!(
        w.remove_file(&p, &sid, Some("/.."), None, None).await,
        Err(WorkerError::CannotRemoveRoot)
    ));
    assert!(matches!(
        w.remove_file(&p, &sid, Some("/x"), Some("yes"), None).await,
        Err(WorkerError::InvalidRecursive)
    ));
    assert!(matches!(
        w.remove_file(&p, &sid, Some("/x"), None, Some("maybe"))
            .await,
        Err(WorkerError::InvalidForce)
    ));
}

#[tokio::test]
async fn list_paging_and_validation() {
    let h = Harness::new();
    let sid = h.sandbox().await;
    let w = &h.worker;
    let p = dev();
    for name in ["c", "a", "b", "d/e"] {
        w.write_file(
            &p,
            &sid,
            Some(&format!("/data/{name}")),
            reader(b"1"),
            false,
        )
        .await
        .unwrap();
    }
    let list = |path, recursive, limit, cursor| {
        w.list_files(
            &p,
            &sid,
            ListQuery {
                path,
                recursive,
                limit,
                cursor,
            },
        )
    };
    let page = list(Some("/data"), Some("true"), Some("2"), None)
        .await
        .unwrap();
    let paths: Vec<_> = page.entries.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(paths, vec!["/data/a", "/data/b"]);
    assert_eq!(page.next_cursor.as_deref(), Some("2"));
    let page = list(Some("/data"), Some("true"), Some("2"), Some("2"))
        .await
        .unwrap();
    let paths: Vec<_> = page.entries.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(paths, vec!["/data/c", "/data/d"]);
    assert_eq!(page.next_cursor.as_deref(), Some("4"));
    let page = list(Some("/data"), Some("true"), Some("2"), Some("4"))
        .await
        .unwrap();
    assert_eq!(page.entries.len(), 1);
    assert_eq!(page.next_cursor, None);
    // Overflow-safe: huge cursor and limit.
    let page = list(
        Some("/data"),
        None,
        Some("9223372036854775807"),
        Some("9223372036854775807"),
    )
    .await
    .unwrap();
    assert!(page.entries.is_empty());
    assert_eq!(page.next_cursor, None);
    let page = list(Some("/data"), None, Some("9223372036854775807"), Some("1"))
        .await
        .unwrap();
    assert_eq!(page.entries.len(), 3);
    assert_eq!(
        serde_json::to_value(&page).unwrap()["next_cursor"],
        serde_json::Value::Null
    );

    assert!(matches!(
        list(Some("/data"), Some("nah"), None, None).await,
        Err(WorkerError::InvalidRecursive)
    ));
    assert!(matches!(
        list(Some("/data"), None, Some("0"), None).await,
        Err(WorkerError::InvalidLimit)
    ));
    assert!(matches!(
        list(Some("/data"), None, None, Some("-1")).await,
        Err(WorkerError::InvalidCursor)
    ));
    assert!(matches!(
        list(Some("/data/a"), None, None, None).await,
        Err(WorkerError::DirectoryNotFound)
    ));
    assert!(matches!(
        list(Some("/missing"), None, None, None).await,
        Err(WorkerError::DirectoryNotFound)
    ));
    assert!(matches!(
        list(None, None, None, None).await,
        Err(WorkerError::InvalidPath(_))
    ));
}

#[tokio::test]
async fn dev_mode_files_and_code_without_tokens() {
    let h = Harness::new();
    let sid = h.sandbox().await;
    let Ok(RunCodeOutcome::Finished(r)) = code(&h, &sid, "python", "print('dev')", None).await
    else {
        panic!("run code")
    };
    assert!(r.stdout.contains("dev"));
    let (bytes, _) = decode_write_json(&WriteFileJson {
        content: "RGV2".into(),
        ..Default::default()
    })
    .unwrap();
    h.worker
        .write_file(
            &dev(),
            &sid,
            Some("/workspace/dev.txt"),
            reader(&bytes),
            false,
        )
        .await
        .unwrap();
    assert!(
        h.worker
            .stat_file(&dev(), &sid, Some("/workspace/dev.txt"))
            .await
            .unwrap()
            .exists
    );
    let url = h
        .worker
        .port_url(&dev(), &sid, "3000", Some("http"), "broker.example.com")
        .unwrap();
    assert_eq!(url.protocol, "http");
}

// ---------------------------------------------------------------------------------------------
// Ports

#[tokio::test]
async fn port_url_and_connect() {
    let h = Harness::new();
    let sid = h.sandbox().await;
    let url = h
        .worker
        .port_url(&dev(), &sid, "3000", Some("https"), "broker.example.com")
        .unwrap();
    assert_eq!(
        url.url,
        format!("https://broker.example.com/sandboxes/{sid}/proxy/3000")
    );
    assert_eq!((url.port, url.protocol.as_str()), (3000, "https"));
    let url = h.worker.port_url(&dev(), &sid, "80", None, "").unwrap();
    assert_eq!(
        url.url,
        format!("https://localhost/sandboxes/{sid}/proxy/80")
    );
    assert!(matches!(
        h.worker.port_url(&dev(), &sid, "0", None, "h"),
        Err(WorkerError::InvalidPort)
    ));
    assert!(matches!(
        h.worker.port_url(&dev(), &sid, "80", Some("gopher"), "h"),
        Err(WorkerError::InvalidProtocol)
    ));

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        let mut buf = [0u8; 4];
        socket.read_exact(&mut buf).await.unwrap();
        socket.write_all(b"pong").await.unwrap();
        buf
    });
    let (id, mut stream) = h
        .worker
        .connect_port(&dev(), &sid, &format!(" {port} "))
        .await
        .unwrap();
    assert_eq!(id.to_string(), sid);
    stream.write_all(b"ping").await.unwrap();
    let mut answer = [0u8; 4];
    stream.read_exact(&mut answer).await.unwrap();
    assert_eq!(&answer, b"pong");
    assert_eq!(&server.await.unwrap(), b"ping");

    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    assert!(matches!(
        h.worker
            .connect_port(&dev(), &sid, &closed.to_string())
            .await
            .map(|(id, _)| id),
        Err(WorkerError::UpstreamUnreachable)
    ));
    assert!(matches!(
        h.worker
            .connect_port(&dev(), &sid, "70000")
            .await
            .map(|(id, _)| id),
        Err(WorkerError::InvalidPort)
    ));
}

// ---------------------------------------------------------------------------------------------
// Provision failures of the backend are visible to the filler and to creates alike.

#[tokio::test]
async fn provision_failure_by_tuple() {
    let clock = Arc::new(ManualClock::new(t0()));
    let fake = FakeBackend::new().with_provision_failure(|spec: &ProvisionSpec| {
        (spec.tuple.image == "broken").then(|| BackendError::ImageUnavailable {
            image: "broken".into(),
            reason: "no such image".into(),
        })
    });
    let worker = Worker::new(
        config(),
        vec![Arc::new(fake.clone())],
        clock,
        Arc::new(Metrics::new(false)),
        None,
    );
    let err = worker
        .create_sandbox(&dev(), req("broken", 1), CreateQuery::default())
        .await
        .unwrap_err();
    assert!(matches!(
        err,
        WorkerError::ProvisionFailed(BackendError::ImageUnavailable { .. })
    ));
    assert_eq!(worker.allocated(), (0, 0));
    assert!(worker
        .create_sandbox(&dev(), req("fine", 1), CreateQuery::default())
        .await
        .is_ok());
    assert_eq!(fake.live_count(), 1);
}

#[tokio::test]
async fn request_faults_of_the_backend_are_client_errors() {
    let clock = Arc::new(ManualClock::new(t0()));
    let fake = FakeBackend::new().with_provision_failure(|spec: &ProvisionSpec| {
        match spec.tuple.image.as_str() {
            "ubuntu:24.04" => Some(BackendError::ImageNotFound {
                image: "ubuntu:24.04".into(),
            }),
            "huge" => Some(BackendError::InvalidRequest("cpu 64 exceeds 8".into())),
            _ => None,
        }
    });
    let worker = Worker::new(
        config(),
        vec![Arc::new(fake.clone())],
        clock,
        Arc::new(Metrics::new(false)),
        None,
    );
    let err = worker
        .create_sandbox(&dev(), req("ubuntu:24.04", 1), CreateQuery::default())
        .await
        .unwrap_err();
    match &err {
        WorkerError::ImageNotFound(image) => assert_eq!(image, "ubuntu:24.04"),
        other => panic!("expected ImageNotFound, got {other:?}"),
    }
    assert_eq!(err.to_string(), "image not found: ubuntu:24.04");
    let err = worker
        .create_sandbox(&dev(), req("huge", 1), CreateQuery::default())
        .await
        .unwrap_err();
    assert!(matches!(&err, WorkerError::InvalidCreate(cause) if cause == "cpu 64 exceeds 8"));
    // Nothing is held by the refused creates.
    assert_eq!(worker.allocated(), (0, 0));
    assert_eq!(fake.live_count(), 0);
}

#[tokio::test]
async fn tuples_that_cannot_fit_are_not_warmed() {
    let h = Harness::with(|c| c.total_cores = 2);
    h.worker.assign_vm_start(VmStartResponse {
        virtualization: "fake".into(),
        image: "img".into(),
        cpu: 4,
    });
    h.worker.assign_vm_start(VmStartResponse {
        virtualization: "container".into(),
        image: "img".into(),
        cpu: 1,
    });
    assert!(h.worker.next_warm_job().is_none());
    assert!(h.worker.lock().pending_starts.is_empty());
    assert_eq!(h.live_vms(), 0);
}
