//! The worker (data plane): owns the sandboxes of one host. Creates them cold or from the warm
//! pool, runs execs and code, serves files, connects to ports, enforces TTLs, and keeps the
//! broker informed through a [`BrokerLink`].
//!
//! State sits behind short `std::sync::Mutex` sections, never held across an `.await`; slow
//! work (provisioning, destroying, exec) happens outside them.

mod builder;
mod create;
pub mod defaults;
mod exec;
mod files;
mod handle;
mod images;
mod lifecycle;
mod link;
mod network;
mod pool;
mod ports;
mod registration;
mod sandbox;
mod sessions;
mod state;
// Needs the fake backend, which exists only with the `test-util` feature.
#[cfg(all(test, feature = "test-util"))]
mod tests;

pub use builder::{BuildError, WorkerBuilder};
pub use exec::{
    FrameStream, OutputFrame, DEFAULT_EXEC_LIST_LIMIT, DEFAULT_FRAMES_WAIT, MAX_FRAMES_WAIT,
};
pub use files::{DEFAULT_LIST_LIMIT, MAX_JSON_READ_BYTES};
pub use handle::{Execution, Files, Sandbox};
pub use link::{BrokerLink, InProcessBrokerLink, LinkError};
pub use pool::BACKEND_FULL_PAUSE;
pub use sessions::{SessionOpened, MAX_SESSION_NAME, SESSION_IDLE_TIMEOUT};

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, Notify};

use crate::api::{
    CreateSandboxRequest, CreateSandboxResponse, Encoding, EncodingError, ExecList, ExecRecord,
    ExecRequest, FramesResponse, LeaseResponse, ListResponse, MkdirResponse, ReadFileResponse,
    RunCodeRequest, RunCodeResponse, SandboxResponse, StatResponse, SyntaxErrorBody,
    VmEventRequest, WriteFileResponse,
};
use crate::auth::{AuthMode, Principal, TicketBook, TicketError};
use crate::backend::{
    BackendError, BoxedReader, BoxedStream, ExecControl, ExecSignal, FileReader, TerminalSize,
    VmBackend, WriteMode,
};
use crate::clock::Clock;
use crate::id::{ComponentId, ExecId, LocalVmId, SandboxId};
use crate::network::{Egress, PolicyError};
use crate::path::{PathError, SandboxPath};
use crate::telemetry::{Metrics, WorkerLabels};
use crate::tuple::SandboxTuple;

/// A warm-pool floor from the worker YAML's `pre-pull` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrePullTarget {
    /// The tuple to keep warm.
    pub tuple: SandboxTuple,
    /// How many to keep ready at least.
    pub target_count: u32,
    /// Shell script run in each warm sandbox before it counts as ready (empty: none).
    pub warmup_script: String,
    /// Budget for the warm-up script.
    pub warmup_timeout: Duration,
}

/// Worker settings. All values are final (defaults already applied by the caller).
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// The broker this worker serves; sandbox ids name it.
    pub broker_id: ComponentId,
    /// This worker.
    pub worker_id: ComponentId,
    /// Host name, sent at registration.
    pub hostname: String,
    /// Where clients reach this worker, sent at registration.
    pub advertise_url: String,
    /// Where clients reach the broker; the target of placement retries (`None`: retries give
    /// 503 `unable to retry placement`).
    pub broker_public_url: Option<String>,
    /// SKU, sent at registration.
    pub hardware_sku: String,
    /// Cores offered.
    pub total_cores: u32,
    /// Memory offered.
    pub total_memory_mib: u64,
    /// Most live sandboxes at once.
    pub max_live_sandboxes: u32,
    /// TTL of sandboxes created without `ttl_seconds`.
    pub default_ttl: Duration,
    /// Longest TTL a create or lease may ask for.
    pub max_ttl: Duration,
    /// Virtualization of creates that name none.
    pub default_virtualization: String,
    /// Heartbeat period (renewal of the registration lease).
    pub registration_heartbeat: Duration,
    /// Heartbeat jitter, percent in [0, 95].
    pub registration_jitter_percent: u8,
    /// How often the broker is asked for its instance id between heartbeats
    /// ([`BrokerLink::broker_instance`]): a restarted broker is registered with again within
    /// this, not a heartbeat. Zero: heartbeats alone.
    pub registration_probe: Duration,
    /// How often the TTL reaper looks for expired sandboxes.
    pub reap_interval: Duration,
    /// Warm-pool floors.
    pub pre_pull: Vec<PrePullTarget>,
    /// Dev or prod: prod enforces sandbox ownership.
    pub auth_mode: AuthMode,
    /// How sandboxes are counted against the cores and memory (overcommit, watermark, warm
    /// ceiling).
    pub capacity: CapacityConfig,
    /// Client ids that may manage the worker's images in prod mode (in dev mode every
    /// caller may).
    pub operators: Vec<String>,
    /// Network egress: the default of creates and what clients may ask for.
    pub network: NetworkConfig,
}

/// The worker's network egress settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkConfig {
    /// The egress of a create that names none. Default `none`.
    pub default_egress: Egress,
    /// The modes clients may ask for (the default is always allowed). Default: all three.
    pub allowed_modes: Vec<Egress>,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        Self {
            default_egress: Egress::None,
            allowed_modes: Egress::ALL.to_vec(),
        }
    }
}

/// How sandboxes are counted against a worker's cores and memory.
///
/// Backends that [overcommit](crate::backend::VmBackend::overcommits) (the `container`
/// backend: a cpu count is a quota, a memory size a limit) are charged their `cpu` and memory
/// limit against `total_cores × cpu_overcommit` and `total_memory_mib × memory_overcommit`;
/// the others (VMs) reserve what they ask for, so they are charged the same amounts times the
/// factors. With both factors at 1 (the default) every sandbox reserves what it asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CapacityConfig {
    /// Cpu quota handed out per physical core, at least 1.
    pub cpu_overcommit: u32,
    /// Memory limits handed out per MiB of `total_memory_mib`, at least 1.
    pub memory_overcommit: u32,
    /// Cold creates are refused while the memory the backends' sandboxes actually use
    /// exceeds this (idle warm sandboxes are retired first, oldest first).
    pub memory_high_watermark_mib: Option<u64>,
    /// Most idle warm sandboxes of one tuple, whatever the demand (floors excepted). A burst
    /// of creates that finds no ready sandbox of its tuple raises it, for that tuple, to the
    /// burst's size (at most 4 times this), decaying with the demand's half-life (see
    /// [`crate::warm::BurstTracker`]).
    pub max_warm_per_tuple: Option<u32>,
    /// Most warm sandboxes provisioned at once while the pool is short of more than one, at
    /// least 1.
    pub warm_fill_parallelism: u32,
}

impl Default for CapacityConfig {
    /// Reservation semantics: no overcommit, no watermark, no ceiling.
    fn default() -> Self {
        Self {
            cpu_overcommit: 1,
            memory_overcommit: 1,
            memory_high_watermark_mib: None,
            max_warm_per_tuple: None,
            warm_fill_parallelism: 1,
        }
    }
}

impl WorkerConfig {
    /// Where clients reach the broker, without a trailing `/`; `None` when unset or blank.
    pub fn broker_public_url(&self) -> Option<&str> {
        self.broker_public_url
            .as_deref()
            .map(|url| url.trim().trim_end_matches('/'))
            .filter(|url| !url.is_empty())
    }
}

impl WorkerConfig {
    /// A small dev-mode worker for tests, examples and benches (and the server's `testing`
    /// harness, which release builds compile too), meant to be changed with
    /// struct-update syntax: `worker_local` of `broker_local` at `http://127.0.0.1:8081`, no
    /// broker URL, 8 cores, 8 GiB and 8 sandboxes, TTL 30 min (at most 24 h), `fake`
    /// virtualization, a 200 ms heartbeat without jitter, a reaper every second, no pre-pull.
    pub fn for_tests() -> Self {
        Self {
            broker_id: ComponentId::parse("broker_local").expect("valid id"),
            worker_id: ComponentId::parse("worker_local").expect("valid id"),
            hostname: "localhost".to_string(),
            advertise_url: "http://127.0.0.1:8081".to_string(),
            broker_public_url: None,
            hardware_sku: String::new(),
            total_cores: 8,
            total_memory_mib: 8192,
            max_live_sandboxes: 8,
            default_ttl: Duration::from_secs(30 * 60),
            max_ttl: Duration::from_secs(24 * 3600),
            default_virtualization: "fake".to_string(),
            registration_heartbeat: Duration::from_millis(200),
            registration_jitter_percent: 0,
            registration_probe: Duration::ZERO,
            reap_interval: Duration::from_secs(1),
            pre_pull: Vec::new(),
            auth_mode: AuthMode::Dev,
            capacity: CapacityConfig::default(),
            operators: Vec::new(),
            network: NetworkConfig::default(),
        }
    }
}

/// Why the worker refused a request. Each variant has one status code (see the server).
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// 404: unknown sandbox, or an id that names another broker or worker.
    #[error("sandbox not found")]
    SandboxNotFound,
    /// 403.
    #[error("sandbox ownership mismatch")]
    OwnershipMismatch,
    /// 400.
    #[error("image is required")]
    ImageRequired,
    /// 400: no backend serves this virtualization here.
    #[error("unsupported virtualization: {0}")]
    UnsupportedVirtualization(String),
    /// 503 with the exact message, e.g. `no capacity: max sandbox count reached`.
    #[error("{0}")]
    NoCapacity(&'static str),
    /// 503: the backend has no room for the sandbox (`no capacity: <reason>`, e.g. the
    /// worker's disk is full).
    #[error("no capacity: {0}")]
    BackendNoCapacity(String),
    /// 503: a hinted claim failed and there is no broker URL to bounce to.
    #[error("unable to retry placement")]
    UnableToRetryPlacement,
    /// 404: the backend does not have the requested image (`image not found: <reference>`;
    /// the worker's other images are not listed).
    #[error("image not found: {0}")]
    ImageNotFound(String),
    /// 400: a network policy that does not parse (what is wrong).
    #[error("{0}")]
    InvalidNetwork(#[from] PolicyError),
    /// 403: the worker does not let clients ask for this egress (`network.allowed-modes`).
    #[error("network egress {mode} is not allowed on this worker (allowed: {allowed})")]
    EgressNotAllowed {
        /// The mode asked for.
        mode: Egress,
        /// The modes allowed, comma-separated.
        allowed: String,
    },
    /// 403: only the worker's operators (`images.operators`) may manage its images.
    #[error("managing images is for this worker's operators (images.operators)")]
    NotAnOperator,
    /// 409: the image is used by live sandboxes (warm ones included), so it stays.
    #[error("image {0} is in use by a sandbox")]
    ImageInUse(String),
    /// 400: an image operation named something that is not an image reference (the cause).
    #[error("{0}")]
    InvalidImage(String),
    /// 502: an operator's pull failed at the registry or on the worker's disk; the cause.
    #[error("{0}")]
    ImagePullFailed(String),
    /// 503: the image directory cannot be changed now (another worker shares it); the cause.
    #[error("{0}")]
    ImagesUnavailable(String),
    /// 400: the backend refused the create as impossible, with a cause safe to show.
    #[error("{0}")]
    InvalidCreate(String),
    /// 502: the image's registry could not be reached (the cause is logged).
    #[error("registry {0} is unreachable")]
    RegistryUnreachable(String),
    /// 503: the backend could not boot the sandbox (details logged).
    #[error("sandbox provisioning failed")]
    ProvisionFailed(#[source] BackendError),
    /// 400.
    #[error("ttl_seconds must be > 0")]
    InvalidTtl,
    /// 404.
    #[error("exec not found")]
    ExecNotFound,
    /// 400.
    #[error("invalid exec request: {0}")]
    InvalidExec(&'static str),
    /// 409: the exec has exited, so it takes no more input, signals or resizes.
    #[error("exec has exited")]
    ExecExited,
    /// 409: input for an exec whose stdin was closed (an EOF was sent, or it was started
    /// without `interactive`).
    #[error("exec stdin is closed")]
    StdinClosed,
    /// 409: a resize for an exec that runs without a terminal.
    #[error("exec has no terminal")]
    NotATerminal,
    /// 409: run-code execs take no input, signals or resizes.
    #[error("run-code execs take no input, signals or resizes")]
    ExecNotControllable,
    /// 501: the sandbox's backend cannot do it.
    #[error("not supported by this backend: {0}")]
    Unsupported(&'static str),
    /// 400: a session name that is not 1-64 characters of `A-Z a-z 0-9 . _ : -`.
    #[error("session must be 1-64 characters of A-Z a-z 0-9 . _ : -")]
    InvalidSession,
    /// 404: attaching (without a command) to a session that does not exist.
    #[error("exec session {0:?} does not exist")]
    SessionNotFound(String),
    /// 409: a session opened with another command or other options than it runs with.
    #[error("exec session {0:?} is already running with different options")]
    SessionConflict(String),
    /// An access ticket could not be issued: 429 for too many outstanding, else 500.
    #[error("{0}")]
    Ticket(TicketError),
    /// 429: the sandbox already runs as many execs as it may.
    #[error("too many running execs in this sandbox (at most {0}); wait for one to finish")]
    TooManyExecs(usize),
    /// 400.
    #[error("runtime must be one of: node, python")]
    InvalidRuntime,
    /// 400.
    #[error("code is required")]
    CodeRequired,
    /// 400.
    #[error("code exceeds max size")]
    CodeTooLarge,
    /// 400.
    #[error("{0}")]
    InvalidPath(PathError),
    /// 404.
    #[error("file not found")]
    FileNotFound,
    /// 404.
    #[error("directory not found")]
    DirectoryNotFound,
    /// 404.
    #[error("path not found")]
    PathNotFound,
    /// 404.
    #[error("parent directory not found")]
    ParentNotFound,
    /// 400.
    #[error("path points to a directory")]
    PathIsDirectory,
    /// 400.
    #[error("path points to a file")]
    PathIsFile,
    /// 409.
    #[error("directory is not empty")]
    DirectoryNotEmpty,
    /// 400.
    #[error("cannot remove root directory")]
    CannotRemoveRoot,
    /// 400.
    #[error("limit must be a positive integer")]
    InvalidLimit,
    /// 413: the file is larger than a JSON read may return.
    #[error("file too large")]
    FileTooLarge,
    /// 400: a listing would walk more entries than a request may.
    #[error("listing has too many entries: list a subdirectory, or without recursive")]
    ListingTooLarge,
    /// 403: the sandbox's filesystem refuses (read-only image path).
    #[error("permission denied")]
    PermissionDenied,
    /// 502.
    #[error("upstream not reachable")]
    UpstreamUnreachable,
    /// 504.
    #[error("upstream timeout")]
    UpstreamTimeout,
    /// 400: the sandbox cannot run this code as asked (its image has no such interpreter);
    /// the message names what is missing.
    #[error("{0}")]
    RunRefused(String),
    /// 400: content or input in an unknown encoding, or not decodable.
    #[error(transparent)]
    Encoding(#[from] EncodingError),
    /// 500: anything else the backend reported (details logged, body generic).
    #[error("backend failure")]
    Backend(#[source] BackendError),
}

/// The result of a create.
#[derive(Debug)]
pub enum CreateOutcome {
    /// 201.
    Created(CreateSandboxResponse),
    /// 307 back to the broker (the worker's `broker_public_url`): the hinted VM could not
    /// be claimed here.
    RetryPlacement {
        /// The retry count the broker gets (the create's plus one).
        retry: u64,
    },
}

/// The result of run-code.
#[derive(Debug)]
pub enum RunCodeOutcome {
    /// 200 (`wait: true`).
    Finished(RunCodeResponse),
    /// 202 (`wait: false`): the code runs as this exec.
    Accepted(ExecId),
    /// 422.
    SyntaxError(SyntaxErrorBody),
}

/// Where a create came from: the broker's warm hint and how often placement was retried.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Placement {
    /// The warm sandbox the broker chose for this create (`local_vm_id`); the create fails
    /// over to the broker when it cannot be claimed.
    pub claim: Option<LocalVmId>,
    /// How many times the broker placed this create already (`placement_retry`).
    pub retry: u64,
}

/// A page of a directory listing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListOptions {
    /// Every entry below the path, not only its children.
    pub recursive: bool,
    /// Most entries in the page (at least 1).
    pub limit: usize,
    /// Entries skipped (the previous page's `next_cursor`).
    pub cursor: usize,
}

impl Default for ListOptions {
    /// The children, first page of [`DEFAULT_LIST_LIMIT`] entries.
    fn default() -> Self {
        Self {
            recursive: false,
            limit: DEFAULT_LIST_LIMIT,
            cursor: 0,
        }
    }
}

/// How a removal treats directories and missing paths.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RemoveOptions {
    /// A directory goes with its contents (else only when empty).
    pub recursive: bool,
    /// A missing path is not an error.
    pub force: bool,
}

/// The worker. Build with [`Worker::new`], serve with [`Worker::run`] once listening.
pub struct Worker {
    config: WorkerConfig,
    /// Backends by virtualization name.
    backends: BTreeMap<String, Arc<dyn VmBackend>>,
    clock: Arc<dyn Clock>,
    metrics: Arc<Metrics>,
    broker: Option<Arc<dyn BrokerLink>>,
    /// Pre-pull floors by tuple.
    floors: BTreeMap<SandboxTuple, u32>,
    /// Warm-up script and budget by tuple (pre-pull entries with a script).
    warmups: BTreeMap<SandboxTuple, (String, Duration)>,
    state: Mutex<state::State>,
    /// Wakes the warm-pool filler (demand changed, capacity freed, VM start assigned).
    pool_wake: Notify,
    /// VM events to the broker, sent in order by one task (none without a broker).
    events: Option<mpsc::Sender<VmEventRequest>>,
    events_rx: Mutex<Option<mpsc::Receiver<VmEventRequest>>>,
    /// The memory in use was above the high watermark when last measured (measured outside
    /// the state lock; read by the reports sent under it).
    over_watermark: AtomicBool,
    /// A backend said it had no room (a full disk) until then: no new sandboxes meanwhile,
    /// and the broker is told so, rather than sending the creates a failing worker attracts
    /// (its failed creates keep it the least loaded).
    backend_full_until: Mutex<Option<chrono::DateTime<chrono::Utc>>>,
    /// The last load sent to the broker said the worker was full.
    reported_full: AtomicBool,
    /// Renews the registration at once: the broker's view of the load is wrong (a full
    /// worker freed capacity, or a create was refused for lack of it).
    heartbeat_wake: Notify,
    /// Access tickets for the exec WebSocket (browsers).
    tickets: TicketBook,
    /// Held while a session open decides whether its name exists and starts its exec.
    session_opens: Mutex<()>,
}

impl Worker {
    /// Builds a worker over `backends` (one per virtualization).
    pub fn new(
        config: WorkerConfig,
        backends: Vec<Arc<dyn VmBackend>>,
        clock: Arc<dyn Clock>,
        metrics: Arc<Metrics>,
        broker: Option<Arc<dyn BrokerLink>>,
    ) -> Arc<Self> {
        let backends = backends
            .into_iter()
            .map(|b| (b.virtualization().to_string(), b))
            .collect();
        let mut floors = BTreeMap::new();
        let mut warmups = BTreeMap::new();
        for target in &config.pre_pull {
            let floor: &mut u32 = floors.entry(target.tuple.clone()).or_default();
            *floor = (*floor).max(target.target_count);
            if !target.warmup_script.trim().is_empty() {
                warmups
                    .entry(target.tuple.clone())
                    .or_insert_with(|| (target.warmup_script.clone(), target.warmup_timeout));
            }
        }
        let (events, events_rx) = match broker {
            Some(_) => {
                let (tx, rx) = mpsc::channel(pool::EVENT_QUEUE_CAPACITY);
                (Some(tx), Some(rx))
            }
            None => (None, None),
        };
        let tickets = TicketBook::new(clock.clone());
        let worker = Arc::new(Self {
            config,
            backends,
            clock,
            metrics,
            broker,
            floors,
            warmups,
            state: Mutex::new(state::State::new()),
            pool_wake: Notify::new(),
            events,
            events_rx: Mutex::new(events_rx),
            over_watermark: AtomicBool::new(false),
            backend_full_until: Mutex::new(None),
            reported_full: AtomicBool::new(false),
            heartbeat_wake: Notify::new(),
            tickets,
            session_opens: Mutex::new(()),
        });
        let labels = WorkerLabels {
            worker_id: worker.config.worker_id.as_str(),
        };
        let metrics = &worker.metrics.worker;
        metrics
            .cpu_total_cores
            .set(&labels, worker.capacity_cores() as f64);
        metrics
            .memory_total_mib
            .set(&labels, worker.capacity_memory_mib() as f64);
        worker.update_capacity_gauges();
        worker.update_warm_gauges();
        worker
    }

    /// Settings.
    pub fn config(&self) -> &WorkerConfig {
        &self.config
    }

    /// The metrics registry.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Runs the background work until `shutdown` completes: leftover cleanup, the registration
    /// loop, the TTL reaper, the warm-pool filler. Call it once the HTTP listener is bound.
    /// On shutdown: deregisters, then destroys every sandbox and warm VM.
    pub async fn run(self: Arc<Self>, shutdown: impl Future<Output = ()> + Send) {
        self.run_until(shutdown).await
    }

    /// `POST /sandboxes`: claims a warm sandbox or boots one. `placement` carries the
    /// broker's warm hint and the retry count of this create.
    pub async fn create_sandbox(
        &self,
        principal: &Principal,
        request: CreateSandboxRequest,
        placement: Placement,
    ) -> Result<CreateOutcome, WorkerError> {
        let outcome = self.create_one(principal, request, placement).await;
        if let Err(WorkerError::NoCapacity(_) | WorkerError::BackendNoCapacity(_)) = &outcome {
            // The broker sent a create this worker cannot take: correct its view now.
            self.heartbeat_wake.notify_one();
        }
        outcome
    }

    /// The tuple a create asks for, with the worker's defaults applied; `ImageRequired` when
    /// no image results. [`Worker::create_sandbox`] checks the same first; a shell calls this
    /// to report errors in the contract's order.
    pub fn create_tuple(
        &self,
        request: &CreateSandboxRequest,
    ) -> Result<SandboxTuple, WorkerError> {
        let tuple = SandboxTuple::normalize(
            &request.virtualization,
            &request.image,
            request.cpu,
            &self.config.default_virtualization,
        );
        if tuple.image.is_empty() {
            return Err(WorkerError::ImageRequired);
        }
        Ok(tuple)
    }

    /// `GET /sandboxes/{id}`.
    pub fn get_sandbox(
        &self,
        principal: &Principal,
        id: &SandboxId,
    ) -> Result<SandboxResponse, WorkerError> {
        self.describe_sandbox(principal, id)
    }

    /// Whether `principal` may use sandbox `id` (`SandboxNotFound`, `OwnershipMismatch`), for
    /// a shell that must say so before it decodes the rest of a request.
    pub fn check_sandbox(&self, principal: &Principal, id: &SandboxId) -> Result<(), WorkerError> {
        self.with_sandbox(principal, id, |_| ())
    }

    /// `DELETE /sandboxes/{id}`: destroys it.
    pub async fn delete_sandbox(
        &self,
        principal: &Principal,
        id: &SandboxId,
    ) -> Result<(), WorkerError> {
        self.delete(principal, id).await
    }

    /// `PATCH /sandboxes/{id}/lease`: the sandbox now expires `ttl` from now (at most the
    /// worker's `max_ttl`). A zero `ttl` is `InvalidTtl`, checked before the sandbox.
    pub fn renew_lease(
        &self,
        principal: &Principal,
        id: &SandboxId,
        ttl: Duration,
    ) -> Result<LeaseResponse, WorkerError> {
        self.lease(principal, id, ttl)
    }

    /// `POST /sandboxes/{id}/exec`: starts the command and answers at once with its id.
    pub async fn start_exec(
        &self,
        principal: &Principal,
        id: &SandboxId,
        request: ExecRequest,
    ) -> Result<ExecId, WorkerError> {
        self.exec_command(principal, id, request)
    }

    /// `POST /sandboxes/{id}/exec/code`.
    pub async fn run_code(
        &self,
        principal: &Principal,
        id: &SandboxId,
        request: RunCodeRequest,
    ) -> Result<RunCodeOutcome, WorkerError> {
        self.exec_code(principal, id, request).await
    }

    /// `GET /sandboxes/{id}/exec/{exec_id}`.
    pub fn get_exec(
        &self,
        principal: &Principal,
        id: &SandboxId,
        exec_id: &ExecId,
    ) -> Result<ExecRecord, WorkerError> {
        self.exec_record(principal, id, exec_id)
    }

    /// `GET /sandboxes/{id}/exec/{exec_id}/frames`: the frames from `cursor` on. With a
    /// `wait` (at most [`MAX_FRAMES_WAIT`]), first waits until a frame past the cursor exists
    /// or the wait ends.
    pub async fn exec_frames(
        &self,
        principal: &Principal,
        id: &SandboxId,
        exec_id: &ExecId,
        cursor: u64,
        wait: Option<Duration>,
    ) -> Result<FramesResponse, WorkerError> {
        self.frames(principal, id, exec_id, cursor, wait).await
    }

    /// `GET /sandboxes/{id}/exec`: the sandbox's execs, running first, then newest first (at
    /// most `limit`, by default [`DEFAULT_EXEC_LIST_LIMIT`]; a zero limit is `InvalidLimit`).
    pub fn list_execs(
        &self,
        principal: &Principal,
        id: &SandboxId,
        limit: Option<usize>,
    ) -> Result<ExecList, WorkerError> {
        self.exec_list(principal, id, limit)
    }

    /// `GET /sandboxes/{id}/exec/{exec_id}/frames` as a stream (Server-Sent Events): every
    /// frame from `cursor` on as it is appended, until the exit frame.
    pub fn exec_frame_stream(
        &self,
        principal: &Principal,
        id: &SandboxId,
        exec_id: &ExecId,
        cursor: u64,
    ) -> Result<FrameStream, WorkerError> {
        self.frame_stream(principal, id, exec_id, cursor)
    }

    /// `POST /sandboxes/{id}/exec/{exec_id}/stdin`: hands `data` to the running exec's stdin;
    /// empty `data` closes it (EOF). `ExecExited` once the exec has exited, `StdinClosed` once
    /// its stdin was closed.
    pub async fn write_exec_stdin(
        &self,
        principal: &Principal,
        id: &SandboxId,
        exec_id: &ExecId,
        data: bytes::Bytes,
    ) -> Result<(), WorkerError> {
        let control = if data.is_empty() {
            ExecControl::CloseStdin
        } else {
            ExecControl::Stdin(data)
        };
        self.control(principal, id, exec_id, control).await
    }

    /// `POST /sandboxes/{id}/exec/{exec_id}/signal`: signals the exec's process group.
    pub async fn signal_exec(
        &self,
        principal: &Principal,
        id: &SandboxId,
        exec_id: &ExecId,
        signal: ExecSignal,
    ) -> Result<(), WorkerError> {
        self.control(principal, id, exec_id, ExecControl::Signal(signal))
            .await
    }

    /// `POST /sandboxes/{id}/exec/{exec_id}/resize`: sets the size of the exec's terminal
    /// (rows and cols > 0, else `InvalidExec`).
    pub async fn resize_exec(
        &self,
        principal: &Principal,
        id: &SandboxId,
        exec_id: &ExecId,
        size: TerminalSize,
    ) -> Result<(), WorkerError> {
        if size.rows == 0 || size.cols == 0 {
            return Err(WorkerError::InvalidExec("rows and cols must be > 0"));
        }
        self.control(principal, id, exec_id, ExecControl::Resize(size))
            .await
    }

    /// `PUT /sandboxes/{id}/files`: writes `content` to `path` (creating its parents),
    /// replacing the file or appending to it.
    pub async fn write_file(
        &self,
        principal: &Principal,
        id: &SandboxId,
        path: &SandboxPath,
        content: BoxedReader,
        mode: WriteMode,
    ) -> Result<WriteFileResponse, WorkerError> {
        self.files_write(principal, id, path, content, mode).await
    }

    /// `GET /sandboxes/{id}/files`: the whole file (at most 10 MiB) in `encoding`.
    pub async fn read_file(
        &self,
        principal: &Principal,
        id: &SandboxId,
        path: &SandboxPath,
        encoding: Encoding,
    ) -> Result<ReadFileResponse, WorkerError> {
        self.files_read(principal, id, path, encoding).await
    }

    /// Opens a file for a streamed read of any size (`GET /sandboxes/{id}/files/raw`).
    pub async fn open_file(
        &self,
        principal: &Principal,
        id: &SandboxId,
        path: &SandboxPath,
    ) -> Result<FileReader, WorkerError> {
        self.files_open(principal, id, path).await
    }

    /// `GET /sandboxes/{id}/files/stat`.
    pub async fn stat_file(
        &self,
        principal: &Principal,
        id: &SandboxId,
        path: &SandboxPath,
    ) -> Result<StatResponse, WorkerError> {
        self.files_stat(principal, id, path).await
    }

    /// `GET /sandboxes/{id}/files/list`: one page of the entries below `path`.
    pub async fn list_files(
        &self,
        principal: &Principal,
        id: &SandboxId,
        path: &SandboxPath,
        options: ListOptions,
    ) -> Result<ListResponse, WorkerError> {
        self.files_list(principal, id, path, options).await
    }

    /// `POST /sandboxes/{id}/files/mkdir`: `created` is false when the directory existed.
    pub async fn mkdir(
        &self,
        principal: &Principal,
        id: &SandboxId,
        path: &SandboxPath,
        recursive: bool,
    ) -> Result<MkdirResponse, WorkerError> {
        self.files_mkdir(principal, id, path, recursive).await
    }

    /// `DELETE /sandboxes/{id}/files`: removes a file, or a directory (its contents with
    /// `recursive`); with `force` a missing path is not an error. `/` is `CannotRemoveRoot`,
    /// checked before the sandbox.
    pub async fn remove_file(
        &self,
        principal: &Principal,
        id: &SandboxId,
        path: &SandboxPath,
        options: RemoveOptions,
    ) -> Result<(), WorkerError> {
        self.files_remove(principal, id, path, options).await
    }

    /// Opens a byte stream to `port` in the sandbox (the proxy route).
    pub async fn connect_port(
        &self,
        principal: &Principal,
        id: &SandboxId,
        port: u16,
    ) -> Result<BoxedStream, WorkerError> {
        self.port_connect(principal, id, port).await
    }

    /// Live sandbox count.
    pub fn live_sandboxes(&self) -> usize {
        self.lock().sandboxes.len()
    }

    /// Ready (warm) sandbox count per tuple.
    pub fn ready_counts(&self) -> BTreeMap<SandboxTuple, usize> {
        let mut counts = BTreeMap::new();
        for (_, tuple) in self.lock().ready.snapshot() {
            *counts.entry(tuple).or_default() += 1;
        }
        counts
    }

    /// Destroys every sandbox whose `expires_at` has passed (by the worker's clock) and
    /// returns how many. The TTL reaper calls it every `reap_interval`.
    pub async fn reap_expired(&self) -> usize {
        self.reap().await
    }

    /// Cores and memory held by live sandboxes and creates still provisioning.
    pub fn allocated(&self) -> (u64, u64) {
        let state = self.lock();
        (state.reserved.cores, state.reserved.memory_mib)
    }
}
