//! Worker tests over the fake backend, a manual clock and a recording broker link: the shared
//! harness and request helpers here, the tests in one module per area.
//!
//! The fake backend runs nothing: an exec exits 0 with no output and run-code finishes with
//! exit 0 and no output unless scripted. Each test scripts what it relies on where it uses it
//! (`h.fake.set_script(command, FakeExec)`, `h.fake.set_script_code(code, FakeCode)`, or an exec
//! handler); the harness shares no scripts.

mod capacity;
mod claims;
mod exec;
mod files;
mod filler;
mod images;
mod interactive;
mod lifecycle;
mod network;
mod ports;
mod properties;
mod provision;
mod registration;
mod run_code;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, TimeZone, Utc};
use tokio::sync::{oneshot, watch};

use super::*;
use crate::api::{RegistrationRequest, RegistrationResponse, VmEventRequest, VmStartResponse};
use crate::backend::fake::FakeBackend;
use crate::clock::ManualClock;
use crate::id::LocalVmId;
use crate::telemetry::{SandboxReadyLabels, WarmupFailureLabels, WorkerCpuLabels};

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
    /// Registrations fail as unreachable (a partition).
    unreachable: AtomicBool,
    /// Probes of the broker's instance fail (a broker down).
    fail_probe: AtomicBool,
    probes: AtomicUsize,
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
        if self.unreachable.load(Ordering::SeqCst) {
            return Err(LinkError::Unreachable("timed out".into()));
        }
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

    async fn broker_instance(&self) -> Result<Option<String>, LinkError> {
        self.probes.fetch_add(1, Ordering::SeqCst);
        if self.fail_probe.load(Ordering::SeqCst) {
            return Err(LinkError::Unreachable("connection refused".into()));
        }
        Ok(Some(self.instance_id.lock().unwrap().clone()))
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

/// A worker of [`config`] (as `adjust` changes it) over `fake` and a `vetu` fake, without a
/// broker.
fn worker_with(fake: FakeBackend, adjust: impl FnOnce(&mut WorkerConfig)) -> Arc<Worker> {
    let mut config = config();
    adjust(&mut config);
    Worker::new(
        config,
        vec![
            Arc::new(fake),
            Arc::new(FakeBackend::with_virtualization("vetu")),
        ],
        Arc::new(ManualClock::new(t0())),
        Arc::new(Metrics::new(false)),
        None,
    )
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
            .create_sandbox(p, request, Placement::default())
            .await
        {
            Ok(CreateOutcome::Created(r)) => r,
            other => panic!("create: {other:?}"),
        }
    }

    async fn sandbox(&self) -> SandboxId {
        sid(&self.create(&dev(), req("img", 1)).await.sandbox_id)
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

fn vm_of(sandbox_id: &SandboxId) -> LocalVmId {
    sandbox_id.local_vm_id()
}

/// A sandbox id from its text.
fn sid(raw: &str) -> SandboxId {
    SandboxId::parse(raw).expect("a sandbox id")
}

/// A path from its text.
fn path(raw: &str) -> SandboxPath {
    SandboxPath::parse(raw).expect("a sandbox path")
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
async fn all_frames(
    h: &Harness,
    p: &Principal,
    sid: &SandboxId,
    eid: &ExecId,
) -> Vec<crate::api::Frame> {
    let mut frames = Vec::new();
    let mut cursor = 0u64;
    loop {
        let page = h
            .worker
            .exec_frames(p, sid, eid, cursor, Some(Duration::from_secs(60)))
            .await
            .unwrap();
        frames.extend(page.frames);
        cursor = page.next_cursor;
        if !page.has_more {
            return frames;
        }
    }
}

/// Runs `source` in `runtime` as dev.
async fn code(
    h: &Harness,
    sid: &SandboxId,
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

async fn exec(h: &Harness, sid: &SandboxId, command: &str) -> ExecRecord {
    let exec_id = h
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
    all_frames(h, &dev(), sid, &exec_id).await;
    h.worker.get_exec(&dev(), sid, &exec_id).unwrap()
}
