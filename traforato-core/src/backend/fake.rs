//! `FakeBackend`: an in-memory, instant test double of [`VmBackend`] for control-plane tests,
//! examples and benchmarks. It runs no process, no interpreter and no shell.
//!
//! What is real and what is not:
//! - **Files** live in an in-memory tree per VM ([`FakeFs`]) with the semantics documented on
//!   the [`Vm`] trait; exec cannot see real files and real files cannot see it.
//! - **Exec** is scripted: a handler ([`FakeBackend::with_exec_handler`]), else the run
//!   scripted for that exact command ([`FakeBackend::script`]), else it exits 0 with no
//!   output. Nothing interprets the command.
//! - **Run-code** is scripted too ([`FakeBackend::script_code`]): the output or the syntax
//!   error given for that exact code, else exit 0 with no output.
//! - **Connect** is a real TCP connection to `127.0.0.1:<port>` on the host (or to a host or
//!   address configured per backend or per VM), so proxy tests can stand a listener in for a
//!   sandbox's server.
//! - **Control of a running exec** ([`Vm::control_exec`]) is recorded, not acted on
//!   ([`FakeVm::exec_controls`]): input reaches no command and signals stop nothing. Only
//!   what the worker can observe is honest: controls of an exec that is not running are
//!   refused, and so is input after stdin was closed (by `CloseStdin`, or not `interactive`).
//! - **Accounting**: provisions, failures, destroys and the set of live VM ids are counted so
//!   tests can assert that nothing leaks.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io::Cursor;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use tokio::io::AsyncReadExt;
use tokio::sync::{mpsc, watch};

use super::{
    BackendError, BoxedReader, BoxedStream, CodeOutcome, CodeSpec, ExecControl, ExecExit, ExecSpec,
    FileEntry, FileKind, FileReader, FileStat, FilesError, ImageCatalog, OutputChunk, OutputStream,
    Program, ProvisionSpec, Vm, VmBackend, WriteMode, TIMEOUT_EXIT_CODE,
};
use crate::api::{ImageInfo, ImageList, NetworkBytes, RemovedImage};
use crate::clock::{Clock, SystemClock};
use crate::id::{ExecId, LocalVmId};
use crate::network::{Egress, Policy};
use crate::path::SandboxPath;

/// The virtualization name of [`FakeBackend::new`].
pub const FAKE_VIRTUALIZATION: &str = "fake";

/// The working directory of commands that name none (when it exists; `/` otherwise).
pub const DEFAULT_CWD: &str = "/workspace";

/// A scripted answer to an exec: `None` falls through to the command scripts. It runs under
/// the VM's lock, so it must be quick and must not block.
pub type ExecHandler = Arc<dyn Fn(&ExecSpec, &mut FakeFs) -> Option<FakeExec> + Send + Sync>;

/// Decides whether a provision fails, and with what error.
pub type ProvisionFailure = Arc<dyn Fn(&ProvisionSpec) -> Option<BackendError> + Send + Sync>;

// ---------------------------------------------------------------------------------------------
// Backend

/// The fake backend: a test double that boots in-memory [`FakeVm`]s instantly.
///
/// It is cheap to clone and clones share everything (knobs, counters, VMs): hand one clone to
/// the worker and keep another to script failures and assert on counters.
#[derive(Clone)]
pub struct FakeBackend {
    shared: Arc<Shared>,
}

struct Shared {
    virtualization: String,
    state: Mutex<BackendState>,
    /// The image catalog, when [`FakeBackend::with_images`] turned it on.
    images: Option<FakeImages>,
}

struct BackendState {
    fail_next: u32,
    fail_when: Option<ProvisionFailure>,
    provision_delay: Duration,
    exec_handler: Option<ExecHandler>,
    /// Runs by exact command line.
    scripts: BTreeMap<String, FakeExec>,
    /// Answers by exact code.
    code_scripts: BTreeMap<String, FakeCode>,
    clock: Arc<dyn Clock>,
    connect_host: IpAddr,
    leftovers: usize,
    overcommits: bool,
    memory_per_vm: Option<u64>,
    memory_ceiling: Option<u64>,
    /// `set_network` refuses modes other than `none`, as a backend without egress does.
    network_refused: bool,
    /// The egress modes `supports_egress` admits; `None`: every mode.
    egress_modes: Option<Vec<Egress>>,
    counters: FakeCounters,
    vms: BTreeMap<LocalVmId, Weak<FakeVm>>,
}

/// What a [`FakeBackend`] has done so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FakeCounters {
    /// Calls to `provision`, successful or not (cancelled ones included).
    pub provision_attempts: u64,
    /// Provisions that returned a VM.
    pub provisions: u64,
    /// Provisions that returned an error.
    pub failed_provisions: u64,
    /// VMs destroyed (a repeated destroy of the same VM counts once).
    pub destroys: u64,
    /// Calls to `cleanup_leftovers`.
    pub cleanups: u64,
    /// Calls to `shutdown`.
    pub shutdowns: u64,
}

impl Default for FakeBackend {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for FakeBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FakeBackend")
            .field("virtualization", &self.shared.virtualization)
            .field("counters", &self.counters())
            .finish_non_exhaustive()
    }
}

impl FakeBackend {
    /// A fake serving the virtualization `fake`.
    pub fn new() -> Self {
        Self::with_virtualization(FAKE_VIRTUALIZATION)
    }

    /// A fake pretending to serve `virtualization` (e.g. `vetu`, `tart`), for tests of tuple
    /// routing.
    pub fn with_virtualization(virtualization: impl Into<String>) -> Self {
        Self {
            shared: Arc::new(Shared {
                virtualization: virtualization.into(),
                state: Mutex::new(BackendState {
                    fail_next: 0,
                    fail_when: None,
                    provision_delay: Duration::ZERO,
                    exec_handler: None,
                    scripts: BTreeMap::new(),
                    code_scripts: BTreeMap::new(),
                    clock: Arc::new(SystemClock),
                    connect_host: IpAddr::V4(Ipv4Addr::LOCALHOST),
                    leftovers: 0,
                    overcommits: false,
                    memory_per_vm: None,
                    memory_ceiling: None,
                    network_refused: false,
                    egress_modes: None,
                    counters: FakeCounters::default(),
                    vms: BTreeMap::new(),
                }),
                images: None,
            }),
        }
    }

    /// Gives the fake an image catalog (see [`VmBackend::images`]): a pull records the
    /// reference as given (trimmed; `missing` or an empty one is not found), a remove forgets
    /// it, and an image is in use while a live VM of the fake was provisioned from it. Call
    /// it right after [`FakeBackend::new`].
    pub fn with_images(mut self) -> Self {
        let shared = Arc::get_mut(&mut self.shared).expect("with_images before any clone");
        shared.images = Some(FakeImages::default());
        self
    }

    /// Answers two commands as a shell would, from nothing but what reached the backend (so
    /// a client's quoting and its cwd and env are what a test sees): an argv `echo` prints its
    /// arguments as they arrived (not re-split), and `pwd; printenv GREETING` prints the
    /// exec's cwd (default [`DEFAULT_CWD`]) and its `GREETING` (exit 1 without one). Replaces
    /// any exec handler; scripts still answer other commands.
    pub fn with_shell_stand_ins(self) -> Self {
        self.with_exec_handler(|spec, _fs| match &spec.program {
            Program::Argv(argv) if argv.first().is_some_and(|p| p == "echo") => {
                Some(FakeExec::new().stdout(format!("{}\n", argv[1..].join(" "))))
            }
            Program::Shell(line) if line == "pwd; printenv GREETING" => {
                let cwd = spec.cwd.as_deref().unwrap_or(DEFAULT_CWD);
                let run = FakeExec::new().stdout(format!("{cwd}\n"));
                Some(match spec.env.get("GREETING") {
                    Some(greeting) => run.stdout(format!("{greeting}\n")),
                    None => run.exit_code(1),
                })
            }
            _ => None,
        })
    }

    /// Makes `set_network` refuse every mode but `none` with [`BackendError::Unsupported`], as
    /// a backend that gives sandboxes no network does.
    pub fn with_network_refused(self) -> Self {
        self.state().network_refused = true;
        self
    }

    /// Says (through `supports_egress`) that its sandboxes can have only `modes`.
    pub fn with_egress_modes(self, modes: &[Egress]) -> Self {
        self.state().egress_modes = Some(modes.to_vec());
        self
    }

    /// How many live VMs were provisioned from `image`.
    fn vms_of(&self, image: &str) -> usize {
        self.state()
            .vms
            .values()
            .filter_map(Weak::upgrade)
            .filter(|vm| vm.spec.tuple.image == image)
            .count()
    }

    fn state(&self) -> MutexGuard<'_, BackendState> {
        self.shared.state.lock().expect("fake backend lock")
    }

    /// Uses `clock` for file modification times of VMs provisioned from now on.
    pub fn with_clock(self, clock: Arc<dyn Clock>) -> Self {
        self.state().clock = clock;
        self
    }

    /// Sleeps this long (with `tokio::time::sleep`) in every provision. Default zero.
    pub fn with_provision_delay(self, delay: Duration) -> Self {
        self.set_provision_delay(delay);
        self
    }

    /// Changes the provision delay; see [`FakeBackend::with_provision_delay`].
    pub fn set_provision_delay(&self, delay: Duration) {
        self.state().provision_delay = delay;
    }

    /// Makes the next `n` provisions fail with [`BackendError::Unavailable`].
    pub fn fail_next_provisions(&self, n: u32) {
        self.state().fail_next = n;
    }

    /// Makes every provision for which `decide` returns an error fail with it (checked after
    /// [`FakeBackend::fail_next_provisions`]).
    pub fn with_provision_failure<F>(self, decide: F) -> Self
    where
        F: Fn(&ProvisionSpec) -> Option<BackendError> + Send + Sync + 'static,
    {
        self.state().fail_when = Some(Arc::new(decide));
        self
    }

    /// Answers execs with `handler` first; when it returns `None` the command's script (or the
    /// default: exit 0, no output) runs. Applies to every VM, including those already
    /// provisioned.
    pub fn with_exec_handler<F>(self, handler: F) -> Self
    where
        F: Fn(&ExecSpec, &mut FakeFs) -> Option<FakeExec> + Send + Sync + 'static,
    {
        self.set_exec_handler(Arc::new(handler));
        self
    }

    /// Replaces the exec handler; see [`FakeBackend::with_exec_handler`].
    pub fn set_exec_handler(&self, handler: ExecHandler) {
        self.state().exec_handler = Some(handler);
    }

    /// Answers every exec of exactly `command` with `run`: a shell line as given, an argv
    /// joined by single spaces. Applies to every VM, including those already provisioned.
    pub fn script(self, command: impl Into<String>, run: FakeExec) -> Self {
        self.set_script(command, run);
        self
    }

    /// Adds or replaces a script; see [`FakeBackend::script`].
    pub fn set_script(&self, command: impl Into<String>, run: FakeExec) {
        self.state().scripts.insert(command.into(), run);
    }

    /// Answers run-code of exactly `code` (in either runtime) with `answer`.
    pub fn script_code(self, code: impl Into<String>, answer: FakeCode) -> Self {
        self.set_script_code(code, answer);
        self
    }

    /// Adds or replaces a run-code script; see [`FakeBackend::script_code`].
    pub fn set_script_code(&self, code: impl Into<String>, answer: FakeCode) {
        self.state().code_scripts.insert(code.into(), answer);
    }

    /// The scripted run of `spec`: its handler's, else its command's, else exit 0.
    fn scripted(&self, spec: &ExecSpec, fs: &mut FakeFs) -> FakeExec {
        let (handler, script) = {
            let state = self.state();
            let command = match &spec.program {
                Program::Shell(line) => line.clone(),
                Program::Argv(argv) => argv.join(" "),
            };
            (
                state.exec_handler.clone(),
                state.scripts.get(&command).cloned(),
            )
        };
        handler
            .and_then(|h| h(spec, fs))
            .or(script)
            .unwrap_or_default()
    }

    /// The scripted answer to `code`, else a run that exits 0.
    fn scripted_code(&self, code: &str) -> FakeCode {
        self.state()
            .code_scripts
            .get(code)
            .cloned()
            .unwrap_or(FakeCode::Runs(FakeExec::new()))
    }

    /// Makes `connect(port)` of VMs provisioned from now on reach `host:port` instead of
    /// `127.0.0.1:port`.
    pub fn with_connect_host(self, host: IpAddr) -> Self {
        self.state().connect_host = host;
        self
    }

    /// Pretends to overcommit like the container backend (see
    /// [`VmBackend::overcommits`]).
    pub fn with_overcommit(self) -> Self {
        self.state().overcommits = true;
        self
    }

    /// Reports `bytes` of memory in use per live VM (see [`VmBackend::memory_in_use`]).
    pub fn with_memory_per_vm(self, bytes: u64) -> Self {
        self.state().memory_per_vm = Some(bytes);
        self
    }

    /// Reports a memory ceiling of `bytes` (see [`VmBackend::memory_ceiling`]); `None`
    /// lifts it.
    pub fn set_memory_ceiling(&self, bytes: Option<u64>) {
        self.state().memory_ceiling = bytes;
    }

    /// Makes the VM `id` die by itself (its init killed): [`Vm::is_alive`] turns false and
    /// its execs fail with [`BackendError::Gone`]. False when there is no such live VM.
    pub fn crash(&self, id: &LocalVmId) -> bool {
        let vm = self.state().vms.get(id).and_then(Weak::upgrade);
        vm.is_some_and(|vm| {
            vm.crashed.store(true, std::sync::atomic::Ordering::SeqCst);
            true
        })
    }

    /// Pretends a crashed previous run left `n` sandboxes behind: the next
    /// `cleanup_leftovers` reports `n` and resets it.
    pub fn with_leftovers(self, n: usize) -> Self {
        self.state().leftovers = n;
        self
    }

    /// Counters so far.
    pub fn counters(&self) -> FakeCounters {
        self.state().counters
    }

    /// Ids of VMs provisioned and not yet destroyed (including VMs whose handle was dropped
    /// without a destroy, which is a leak).
    pub fn live_vm_ids(&self) -> BTreeSet<LocalVmId> {
        self.state().vms.keys().copied().collect()
    }

    /// How many VMs are provisioned and not destroyed.
    pub fn live_count(&self) -> usize {
        self.state().vms.len()
    }

    /// The live VM with this id, if its handle is still held somewhere.
    pub fn vm(&self, id: &LocalVmId) -> Option<Arc<FakeVm>> {
        self.state().vms.get(id).and_then(Weak::upgrade)
    }

    fn forget(&self, id: &LocalVmId) -> bool {
        let mut state = self.state();
        let removed = state.vms.remove(id).is_some();
        if removed {
            state.counters.destroys += 1;
        }
        removed
    }
}

#[async_trait]
impl VmBackend for FakeBackend {
    fn virtualization(&self) -> &str {
        &self.shared.virtualization
    }

    fn images(&self) -> Option<&dyn ImageCatalog> {
        self.shared
            .images
            .as_ref()
            .map(|_| self as &dyn ImageCatalog)
    }

    fn supports_egress(&self, mode: Egress) -> bool {
        self.state()
            .egress_modes
            .as_ref()
            .is_none_or(|modes| modes.contains(&mode))
    }

    fn overcommits(&self) -> bool {
        self.state().overcommits
    }

    fn memory_in_use(&self) -> Option<u64> {
        let state = self.state();
        let per_vm = state.memory_per_vm?;
        Some(per_vm.saturating_mul(state.vms.len() as u64))
    }

    fn memory_ceiling(&self) -> Option<u64> {
        self.state().memory_ceiling
    }

    async fn provision(&self, spec: ProvisionSpec) -> Result<Arc<dyn Vm>, BackendError> {
        let (failure, delay) = {
            let mut state = self.state();
            state.counters.provision_attempts += 1;
            let failure = if state.fail_next > 0 {
                state.fail_next -= 1;
                Some(BackendError::Unavailable(
                    "fake: injected provision failure".into(),
                ))
            } else {
                state.fail_when.clone().and_then(|decide| decide(&spec))
            };
            (failure, state.provision_delay)
        };
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let mut state = self.state();
        if let Some(err) = failure {
            state.counters.failed_provisions += 1;
            return Err(err);
        }
        if state.vms.contains_key(&spec.vm_id) {
            state.counters.failed_provisions += 1;
            return Err(BackendError::Setup(format!(
                "fake: vm {} already exists",
                spec.vm_id
            )));
        }
        let (destroyed, _) = watch::channel(false);
        let vm = Arc::new(FakeVm {
            id: spec.vm_id,
            spec,
            backend: self.clone(),
            fs: Mutex::new(Some(FakeFs::new(state.clock.clone()))),
            connect: Mutex::new(ConnectTarget {
                host: state.connect_host,
                ports: BTreeMap::new(),
            }),
            destroyed,
            running: Mutex::default(),
            controls: Mutex::default(),
            crashed: Default::default(),
            network: Mutex::default(),
            network_bytes: Mutex::default(),
        });
        state.vms.insert(vm.id, Arc::downgrade(&vm));
        state.counters.provisions += 1;
        Ok(vm)
    }

    async fn cleanup_leftovers(&self) -> Result<usize, BackendError> {
        let mut state = self.state();
        state.counters.cleanups += 1;
        Ok(std::mem::take(&mut state.leftovers))
    }

    async fn shutdown(&self) {
        self.state().counters.shutdowns += 1;
    }
}

// ---------------------------------------------------------------------------------------------
// VM

/// One fake sandbox: an in-memory filesystem, a fake shell and a real TCP connect.
pub struct FakeVm {
    id: LocalVmId,
    spec: ProvisionSpec,
    backend: FakeBackend,
    /// `None` once destroyed.
    fs: Mutex<Option<FakeFs>>,
    connect: Mutex<ConnectTarget>,
    destroyed: watch::Sender<bool>,
    /// Running controllable execs and whether their stdin is open.
    running: Mutex<BTreeMap<ExecId, bool>>,
    /// Every control accepted, in order.
    controls: Mutex<Vec<(ExecId, ExecControl)>>,
    /// Died by itself ([`FakeBackend::crash`]).
    crashed: std::sync::atomic::AtomicBool,
    /// The network policy last set (every mode is accepted and only recorded).
    network: Mutex<Policy>,
    /// What `network_bytes` answers (set by tests).
    network_bytes: Mutex<Option<NetworkBytes>>,
}

/// Forgets a running exec when its play ends, however it ends.
struct RunningGuard<'a> {
    running: &'a Mutex<BTreeMap<ExecId, bool>>,
    id: Option<ExecId>,
}

impl Drop for RunningGuard<'_> {
    fn drop(&mut self) {
        if let Some(id) = self.id {
            self.running.lock().expect("fake vm lock").remove(&id);
        }
    }
}

struct ConnectTarget {
    host: IpAddr,
    ports: BTreeMap<u16, SocketAddr>,
}

impl fmt::Debug for FakeVm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FakeVm")
            .field("id", &self.id)
            .field("tuple", &self.spec.tuple)
            .field("destroyed", &self.is_destroyed())
            .finish_non_exhaustive()
    }
}

impl FakeVm {
    /// What the VM was provisioned with.
    pub fn spec(&self) -> &ProvisionSpec {
        &self.spec
    }

    /// True once destroyed.
    pub fn is_destroyed(&self) -> bool {
        *self.destroyed.borrow()
    }

    /// The network policy last set on it (`none` until one is).
    pub fn network(&self) -> Policy {
        self.network.lock().expect("fake vm lock").clone()
    }

    /// Makes `network_bytes` answer `bytes`.
    pub fn set_network_bytes(&self, bytes: NetworkBytes) {
        *self.network_bytes.lock().expect("fake vm lock") = Some(bytes);
    }

    /// Runs `f` on the VM's filesystem (e.g. to seed or inspect files in a test); `None` once
    /// destroyed.
    pub fn with_fs<R>(&self, f: impl FnOnce(&mut FakeFs) -> R) -> Option<R> {
        self.fs.lock().expect("fake vm lock").as_mut().map(f)
    }

    /// Every control of a running exec the VM accepted, in order.
    pub fn exec_controls(&self) -> Vec<(ExecId, ExecControl)> {
        self.controls.lock().expect("fake vm lock").clone()
    }

    /// Makes `connect(port)` reach `host:port` on the host.
    pub fn set_connect_host(&self, host: IpAddr) {
        self.connect.lock().expect("fake vm lock").host = host;
    }

    /// Makes `connect(port)` reach `target` instead, whatever the host.
    pub fn map_port(&self, port: u16, target: SocketAddr) {
        self.connect
            .lock()
            .expect("fake vm lock")
            .ports
            .insert(port, target);
    }

    fn fs_op<R>(
        &self,
        f: impl FnOnce(&mut FakeFs) -> Result<R, FilesError>,
    ) -> Result<R, FilesError> {
        match self.fs.lock().expect("fake vm lock").as_mut() {
            Some(fs) => f(fs),
            None => Err(FilesError::Gone),
        }
    }

    /// Checks the working directory and lets `plan` build the run under the lock.
    fn plan<R>(
        &self,
        cwd: Option<&str>,
        plan: impl FnOnce(&mut FakeFs) -> R,
    ) -> Result<R, BackendError> {
        if self.crashed.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(BackendError::Gone);
        }
        let mut guard = self.fs.lock().expect("fake vm lock");
        let fs = guard.as_mut().ok_or(BackendError::Gone)?;
        if let Some(raw) = cwd {
            let path = SandboxPath::parse(raw)
                .map_err(|e| BackendError::ExecFailed(format!("working directory {raw:?}: {e}")))?;
            if !fs.is_dir(&path) {
                return Err(BackendError::ExecFailed(format!(
                    "working directory {path} does not exist"
                )));
            }
        }
        Ok(plan(fs))
    }

    /// Plays a plan: sends its output, sleeps its sleeps, honours the timeout and a destroy.
    async fn play(
        &self,
        run: FakeExec,
        stdin: Option<Bytes>,
        timeout: Duration,
        output: mpsc::Sender<OutputChunk>,
    ) -> Result<ExecExit, BackendError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut destroyed = self.destroyed.subscribe();
        for step in run.steps {
            if *destroyed.borrow() {
                return Err(BackendError::Gone);
            }
            match step {
                Step::Output(stream, data) => {
                    // A receiver that went away only loses the output, as with a real pipe
                    // nobody reads.
                    let _ = output.send(OutputChunk { stream, data }).await;
                }
                Step::Stdin => {
                    if let Some(data) = stdin.clone().filter(|d| !d.is_empty()) {
                        let stream = OutputStream::Stdout;
                        let _ = output.send(OutputChunk { stream, data }).await;
                    }
                }
                Step::Sleep(d) => {
                    let wake = tokio::time::Instant::now()
                        .checked_add(d)
                        .map_or(deadline, |w| w.min(deadline));
                    tokio::select! {
                        _ = tokio::time::sleep_until(wake) => {}
                        _ = destroyed.wait_for(|d| *d) => return Err(BackendError::Gone),
                    }
                    if wake == deadline && tokio::time::Instant::now() >= deadline {
                        return Ok(ExecExit {
                            exit_code: TIMEOUT_EXIT_CODE,
                            timed_out: true,
                        });
                    }
                }
            }
        }
        if *destroyed.borrow() {
            return Err(BackendError::Gone);
        }
        Ok(ExecExit {
            exit_code: run.exit_code,
            timed_out: false,
        })
    }
}

#[async_trait]
impl Vm for FakeVm {
    fn vm_id(&self) -> LocalVmId {
        self.id
    }

    fn is_alive(&self) -> bool {
        !self.crashed.load(std::sync::atomic::Ordering::SeqCst) && !*self.destroyed.borrow()
    }

    async fn exec(
        &self,
        spec: ExecSpec,
        output: mpsc::Sender<OutputChunk>,
    ) -> Result<ExecExit, BackendError> {
        let run = self.plan(spec.cwd.as_deref(), |fs| self.backend.scripted(&spec, fs))?;
        if let Some(id) = spec.exec_id {
            let open = spec.interactive || spec.tty.is_some();
            self.running.lock().expect("fake vm lock").insert(id, open);
        }
        let _running = RunningGuard {
            running: &self.running,
            id: spec.exec_id,
        };
        self.play(run, spec.stdin, spec.timeout, output).await
    }

    async fn control_exec(
        &self,
        exec_id: &ExecId,
        control: ExecControl,
    ) -> Result<(), BackendError> {
        let mut running = self.running.lock().expect("fake vm lock");
        let stdin_open = running
            .get_mut(exec_id)
            .ok_or(BackendError::ExecNotRunning)?;
        match control {
            ExecControl::Stdin(_) if !*stdin_open => return Err(BackendError::StdinClosed),
            ExecControl::CloseStdin if !*stdin_open => return Err(BackendError::StdinClosed),
            ExecControl::CloseStdin => *stdin_open = false,
            _ => {}
        }
        self.controls
            .lock()
            .expect("fake vm lock")
            .push((*exec_id, control));
        Ok(())
    }

    async fn run_code(
        &self,
        spec: CodeSpec,
        output: mpsc::Sender<OutputChunk>,
    ) -> Result<CodeOutcome, BackendError> {
        match self.plan(spec.cwd.as_deref(), |_| {
            self.backend.scripted_code(&spec.code)
        })? {
            FakeCode::SyntaxError(message) => Ok(CodeOutcome::SyntaxError {
                message,
                exit_code: 1,
            }),
            FakeCode::RuntimeMissing => Err(BackendError::RuntimeMissing {
                runtime: spec.runtime,
                program: spec.runtime.program(),
            }),
            FakeCode::Runs(run) => self
                .play(run, None, spec.timeout, output)
                .await
                .map(CodeOutcome::Finished),
        }
    }

    async fn read_file(&self, path: &SandboxPath) -> Result<FileReader, FilesError> {
        let data = self.fs_op(|fs| fs.read(path).map(<[u8]>::to_vec))?;
        Ok(FileReader {
            size: data.len() as u64,
            body: Box::new(Cursor::new(data)),
        })
    }

    async fn write_file(
        &self,
        path: &SandboxPath,
        mut content: BoxedReader,
        mode: WriteMode,
    ) -> Result<u64, FilesError> {
        self.fs_op(|_| Ok(()))?;
        let mut data = Vec::new();
        content
            .read_to_end(&mut data)
            .await
            .map_err(|source| FilesError::Io {
                op: "read content".into(),
                source,
            })?;
        self.fs_op(|fs| fs.write(path, &data, mode))
    }

    async fn stat(&self, path: &SandboxPath) -> Result<Option<FileStat>, FilesError> {
        self.fs_op(|fs| Ok(fs.stat(path)))
    }

    async fn list_dir(
        &self,
        path: &SandboxPath,
        recursive: bool,
    ) -> Result<Vec<FileEntry>, FilesError> {
        self.fs_op(|fs| fs.list(path, recursive))
    }

    async fn mkdir(&self, path: &SandboxPath, recursive: bool) -> Result<bool, FilesError> {
        self.fs_op(|fs| fs.mkdir(path, recursive))
    }

    async fn remove(&self, path: &SandboxPath, recursive: bool) -> Result<(), FilesError> {
        self.fs_op(|fs| fs.remove(path, recursive))
    }

    async fn connect(&self, port: u16) -> Result<BoxedStream, BackendError> {
        if self.is_destroyed() {
            return Err(BackendError::Gone);
        }
        let target = {
            let connect = self.connect.lock().expect("fake vm lock");
            connect
                .ports
                .get(&port)
                .copied()
                .unwrap_or(SocketAddr::new(connect.host, port))
        };
        let stream = tokio::net::TcpStream::connect(target)
            .await
            .map_err(|source| BackendError::ConnectFailed { port, source })?;
        Ok(Box::new(stream))
    }

    fn network_bytes(&self) -> Option<NetworkBytes> {
        *self.network_bytes.lock().expect("fake vm lock")
    }

    async fn set_network(&self, policy: &Policy) -> Result<(), BackendError> {
        if self.fs.lock().expect("fake vm lock").is_none() {
            return Err(BackendError::Gone);
        }
        if self.backend.state().network_refused && policy.egress() != Egress::None {
            return Err(BackendError::Unsupported("network egress"));
        }
        *self.network.lock().expect("fake vm lock") = policy.clone();
        Ok(())
    }

    async fn destroy(&self) -> Result<(), BackendError> {
        self.fs.lock().expect("fake vm lock").take();
        self.destroyed.send_replace(true);
        self.backend.forget(&self.id);
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Images

/// The images a fake with [`FakeBackend::with_images`] holds.
#[derive(Default)]
struct FakeImages {
    held: Mutex<BTreeMap<String, ImageInfo>>,
}

impl FakeBackend {
    /// The image catalog, when [`FakeBackend::with_images`] turned it on.
    fn fake_images(&self) -> Result<&FakeImages, BackendError> {
        self.shared
            .images
            .as_ref()
            .ok_or(BackendError::Unsupported("images"))
    }
}

#[async_trait]
impl ImageCatalog for FakeBackend {
    async fn list(&self) -> Result<ImageList, BackendError> {
        let images = self.fake_images()?;
        let mut list: Vec<ImageInfo> = images
            .held
            .lock()
            .expect("fake images")
            .values()
            .cloned()
            .collect();
        for image in &mut list {
            image.in_use = self.vms_of(&image.reference);
        }
        let disk_bytes = list.iter().map(|i| i.size_bytes).sum();
        Ok(ImageList {
            images: list,
            disk_bytes,
            max_disk_bytes: None,
        })
    }

    async fn pull(&self, image: &str) -> Result<ImageInfo, BackendError> {
        let images = self.fake_images()?;
        let reference = image.trim().to_string();
        if reference.is_empty() || reference == "missing" {
            return Err(BackendError::ImageNotFound { image: reference });
        }
        let now = Utc::now();
        let info = ImageInfo {
            digest: format!("sha256:{:064x}", reference.len()),
            size_bytes: 1 << 20,
            layers: 1,
            pulled_at: now,
            last_used: now,
            in_use: self.vms_of(&reference),
            reference: reference.clone(),
        };
        images
            .held
            .lock()
            .expect("fake images")
            .insert(reference, info.clone());
        Ok(info)
    }

    async fn remove(&self, image: &str) -> Result<RemovedImage, BackendError> {
        let images = self.fake_images()?;
        let reference = image.trim().to_string();
        if self.vms_of(&reference) > 0 {
            return Err(BackendError::ImageInUse { image: reference });
        }
        let removed = images.held.lock().expect("fake images").remove(&reference);
        match removed {
            Some(info) => Ok(RemovedImage {
                reference,
                freed_bytes: info.size_bytes,
            }),
            None => Err(BackendError::ImageNotFound { image: reference }),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Scripted runs

/// A scripted answer to run-code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FakeCode {
    /// The code runs as this run.
    Runs(FakeExec),
    /// The code does not compile: this message, exit code 1.
    SyntaxError(String),
    /// The image has no interpreter for the runtime ([`BackendError::RuntimeMissing`]).
    RuntimeMissing,
}

/// The scripted run of one exec: output chunks and sleeps played in order, then an exit code.
/// Sleeps are cut by the exec's timeout (exit 124) and by a destroy (`Gone`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FakeExec {
    steps: Vec<Step>,
    exit_code: i32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    Output(OutputStream, Bytes),
    /// The exec's `stdin` bytes, to stdout (a `cat`).
    Stdin,
    Sleep(Duration),
}

impl FakeExec {
    /// A run with no output that exits 0.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a stdout chunk.
    pub fn stdout(mut self, data: impl Into<Bytes>) -> Self {
        self.push_output(OutputStream::Stdout, data.into());
        self
    }

    /// Appends a stderr chunk.
    pub fn stderr(mut self, data: impl Into<Bytes>) -> Self {
        self.push_output(OutputStream::Stderr, data.into());
        self
    }

    /// Appends the exec's initial `stdin` to stdout, as `cat` would.
    pub fn echo_stdin(mut self) -> Self {
        self.steps.push(Step::Stdin);
        self
    }

    /// Appends a pause (a `tokio::time::sleep`).
    pub fn sleep(mut self, duration: Duration) -> Self {
        self.steps.push(Step::Sleep(duration));
        self
    }

    /// Sets the exit code.
    pub fn exit_code(mut self, code: i32) -> Self {
        self.exit_code = code;
        self
    }

    /// The exit code the run ends with unless cut short.
    pub fn code(&self) -> i32 {
        self.exit_code
    }

    /// Everything written to `stream`, concatenated (what a test would expect to receive).
    pub fn collected(&self, stream: OutputStream) -> Vec<u8> {
        let mut out = Vec::new();
        for step in &self.steps {
            if let Step::Output(s, data) = step {
                if *s == stream {
                    out.extend_from_slice(data);
                }
            }
        }
        out
    }

    fn push_output(&mut self, stream: OutputStream, data: Bytes) {
        if !data.is_empty() {
            self.steps.push(Step::Output(stream, data));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The in-memory filesystem

/// The in-memory filesystem of one [`FakeVm`]: explicit directories and files keyed by
/// normalised path. It starts with `/` and `/workspace`; modification times come from the
/// clock it was made with.
pub struct FakeFs {
    clock: Arc<dyn Clock>,
    nodes: BTreeMap<SandboxPath, Node>,
}

#[derive(Debug, Clone)]
enum Node {
    Dir {
        modified_at: DateTime<Utc>,
    },
    File {
        data: Vec<u8>,
        modified_at: DateTime<Utc>,
    },
}

impl Node {
    fn kind(&self) -> FileKind {
        match self {
            Node::Dir { .. } => FileKind::Directory,
            Node::File { .. } => FileKind::File,
        }
    }

    fn size(&self) -> u64 {
        match self {
            Node::Dir { .. } => 0,
            Node::File { data, .. } => data.len() as u64,
        }
    }

    fn touch(&mut self, now: DateTime<Utc>) {
        match self {
            Node::Dir { modified_at } | Node::File { modified_at, .. } => *modified_at = now,
        }
    }
}

impl fmt::Debug for FakeFs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(
                self.nodes
                    .iter()
                    .map(|(p, n)| (p.as_str(), n.kind().as_str())),
            )
            .finish()
    }
}

impl FakeFs {
    /// A filesystem holding `/` and `/workspace`, timed by `clock`.
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        let now = clock.now();
        let mut nodes = BTreeMap::new();
        nodes.insert(SandboxPath::root(), Node::Dir { modified_at: now });
        nodes.insert(
            SandboxPath::parse(DEFAULT_CWD).expect("default cwd is valid"),
            Node::Dir { modified_at: now },
        );
        Self { clock, nodes }
    }

    /// True when `path` is a directory.
    pub fn is_dir(&self, path: &SandboxPath) -> bool {
        matches!(self.nodes.get(path), Some(Node::Dir { .. }))
    }

    /// True when `path` is a file.
    pub fn is_file(&self, path: &SandboxPath) -> bool {
        matches!(self.nodes.get(path), Some(Node::File { .. }))
    }

    /// Content of the file at `path`: `NotFound` when nothing is there, `IsDirectory` for a
    /// directory.
    pub fn read(&self, path: &SandboxPath) -> Result<&[u8], FilesError> {
        match self.nodes.get(path) {
            Some(Node::File { data, .. }) => Ok(data),
            Some(Node::Dir { .. }) => Err(FilesError::IsDirectory),
            None => Err(FilesError::NotFound),
        }
    }

    /// Writes (or appends to) the file at `path`, creating missing ancestors, and returns
    /// the length of `data`. The file, its parent and created ancestors get the current time.
    pub fn write(
        &mut self,
        path: &SandboxPath,
        data: &[u8],
        mode: WriteMode,
    ) -> Result<u64, FilesError> {
        if self.is_dir(path) {
            return Err(FilesError::IsDirectory);
        }
        let now = self.clock.now();
        self.create_ancestors(path, now)?;
        match self.nodes.get_mut(path) {
            Some(Node::File {
                data: existing,
                modified_at,
            }) => {
                if mode == WriteMode::Replace {
                    existing.clear();
                }
                existing.extend_from_slice(data);
                *modified_at = now;
            }
            _ => {
                self.nodes.insert(
                    path.clone(),
                    Node::File {
                        data: data.to_vec(),
                        modified_at: now,
                    },
                );
            }
        }
        self.touch(&path.parent(), now);
        Ok(data.len() as u64)
    }

    /// Metadata of `path`, or `None` when nothing is there.
    pub fn stat(&self, path: &SandboxPath) -> Option<FileStat> {
        self.nodes.get(path).map(|node| FileStat {
            kind: node.kind(),
            size: node.size(),
            modified_at: match node {
                Node::Dir { modified_at } | Node::File { modified_at, .. } => *modified_at,
            },
        })
    }

    /// Entries below the directory `path`, sorted by path: immediate children, or every
    /// descendant when `recursive`.
    pub fn list(&self, path: &SandboxPath, recursive: bool) -> Result<Vec<FileEntry>, FilesError> {
        match self.nodes.get(path) {
            None => return Err(FilesError::NotFound),
            Some(Node::File { .. }) => return Err(FilesError::NotDirectory),
            Some(Node::Dir { .. }) => {}
        }
        let depth = path.components().count();
        Ok(self
            .descendants(path)
            .filter(|(p, _)| recursive || p.components().count() == depth + 1)
            .map(|(p, node)| FileEntry {
                path: p.clone(),
                kind: node.kind(),
                size: node.size(),
            })
            .collect())
    }

    /// Creates the directory `path`; `Ok(false)` when it already exists. See [`Vm::mkdir`].
    pub fn mkdir(&mut self, path: &SandboxPath, recursive: bool) -> Result<bool, FilesError> {
        match self.nodes.get(path) {
            Some(Node::Dir { .. }) => return Ok(false),
            Some(Node::File { .. }) => return Err(FilesError::NotDirectory),
            None => {}
        }
        // Check every ancestor before creating anything, so a failure leaves no trace.
        for ancestor in ancestors(path) {
            match self.nodes.get(&ancestor) {
                Some(Node::Dir { .. }) => {}
                Some(Node::File { .. }) => return Err(FilesError::NotDirectory),
                None if !recursive => return Err(FilesError::ParentNotFound),
                None => {}
            }
        }
        let now = self.clock.now();
        self.create_ancestors(path, now)?;
        self.nodes
            .insert(path.clone(), Node::Dir { modified_at: now });
        self.touch(&path.parent(), now);
        Ok(true)
    }

    /// Removes `path` (and, when `recursive`, everything below it). See [`Vm::remove`]; the
    /// root cannot be removed (`PermissionDenied`).
    pub fn remove(&mut self, path: &SandboxPath, recursive: bool) -> Result<(), FilesError> {
        if path.is_root() {
            return Err(FilesError::PermissionDenied);
        }
        match self.nodes.get(path) {
            None => return Err(FilesError::NotFound),
            Some(Node::File { .. }) => {}
            Some(Node::Dir { .. }) => {
                let below: Vec<SandboxPath> =
                    self.descendants(path).map(|(p, _)| p.clone()).collect();
                if !below.is_empty() && !recursive {
                    return Err(FilesError::NotEmpty);
                }
                for p in below {
                    self.nodes.remove(&p);
                }
            }
        }
        self.nodes.remove(path);
        let now = self.clock.now();
        self.touch(&path.parent(), now);
        Ok(())
    }

    /// How many files and directories exist (`/` included).
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Never true: `/` always exists.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    fn descendants<'a>(
        &'a self,
        dir: &'a SandboxPath,
    ) -> impl Iterator<Item = (&'a SandboxPath, &'a Node)> + 'a {
        // Paths below `dir` all start with `dir/`, which sorts after `dir` itself; the range
        // may also hold siblings such as `dir-x`, hence the filter.
        self.nodes
            .range(dir.clone()..)
            .skip(1)
            .take_while(move |(p, _)| p.as_str().starts_with(dir.as_str()))
            .filter(move |(p, _)| p.starts_with(dir) && *p != dir)
    }

    fn create_ancestors(
        &mut self,
        path: &SandboxPath,
        now: DateTime<Utc>,
    ) -> Result<(), FilesError> {
        for ancestor in ancestors(path) {
            match self.nodes.get(&ancestor) {
                Some(Node::Dir { .. }) => {}
                Some(Node::File { .. }) => return Err(FilesError::NotDirectory),
                None => {
                    let parent = ancestor.parent();
                    self.nodes.insert(ancestor, Node::Dir { modified_at: now });
                    self.touch(&parent, now);
                }
            }
        }
        Ok(())
    }

    fn touch(&mut self, path: &SandboxPath, now: DateTime<Utc>) {
        if let Some(node) = self.nodes.get_mut(path) {
            node.touch(now);
        }
    }
}

/// The strict ancestors of `path`, from `/` down to its parent.
fn ancestors(path: &SandboxPath) -> Vec<SandboxPath> {
    let mut out = Vec::new();
    let mut current = path.clone();
    while !current.is_root() {
        current = current.parent();
        out.push(current.clone());
    }
    out.reverse();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Runtime;
    use crate::clock::ManualClock;
    use crate::tuple::SandboxTuple;
    use tokio::io::AsyncWriteExt;

    fn p(raw: &str) -> SandboxPath {
        SandboxPath::parse(raw).unwrap()
    }

    fn t0() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2025-01-01T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    fn spec() -> ProvisionSpec {
        ProvisionSpec {
            vm_id: LocalVmId::new_random(),
            tuple: SandboxTuple::normalize("fake", "img", 1, "fake"),
            memory_mib: 512,
            warm: false,
        }
    }

    fn shell(line: &str) -> ExecSpec {
        ExecSpec::shell(line)
    }

    fn code(runtime: Runtime, src: &str) -> CodeSpec {
        CodeSpec {
            runtime,
            code: src.into(),
            cwd: None,
            env: BTreeMap::new(),
            timeout: Duration::from_secs(30),
        }
    }

    fn reader(data: &'static [u8]) -> BoxedReader {
        Box::new(data)
    }

    async fn boot(backend: &FakeBackend) -> Arc<dyn Vm> {
        backend.provision(spec()).await.unwrap()
    }

    struct Ran {
        exit: ExecExit,
        stdout: String,
        stderr: String,
    }

    async fn run(vm: &Arc<dyn Vm>, spec: ExecSpec) -> Ran {
        let (tx, mut rx) = mpsc::channel(64);
        let exit = vm.exec(spec, tx).await.unwrap();
        collect(exit, &mut rx)
    }

    fn collect(exit: ExecExit, rx: &mut mpsc::Receiver<OutputChunk>) -> Ran {
        let (mut stdout, mut stderr) = (String::new(), String::new());
        while let Ok(chunk) = rx.try_recv() {
            let text = String::from_utf8(chunk.data.to_vec()).unwrap();
            match chunk.stream {
                OutputStream::Stdout => stdout.push_str(&text),
                OutputStream::Stderr => stderr.push_str(&text),
            }
        }
        Ran {
            exit,
            stdout,
            stderr,
        }
    }

    async fn read_all(vm: &Arc<dyn Vm>, path: &str) -> Vec<u8> {
        let mut file = vm.read_file(&p(path)).await.unwrap();
        let mut out = Vec::new();
        file.body.read_to_end(&mut out).await.unwrap();
        assert_eq!(file.size, out.len() as u64);
        out
    }

    #[tokio::test]
    async fn starts_with_root_and_workspace() {
        let vm = boot(&FakeBackend::new()).await;
        assert_eq!(
            vm.stat(&p("/")).await.unwrap().unwrap().kind,
            FileKind::Directory
        );
        assert_eq!(
            vm.stat(&p("/workspace")).await.unwrap().unwrap().kind,
            FileKind::Directory
        );
        assert!(vm.stat(&p("/tmp")).await.unwrap().is_none());
        assert_eq!(vm.list_dir(&p("/"), true).await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn write_creates_ancestors_and_appends() {
        let clock = Arc::new(ManualClock::new(t0()));
        let backend = FakeBackend::new().with_clock(clock.clone());
        let vm = boot(&backend).await;
        clock.advance(Duration::from_secs(5));
        let n = vm
            .write_file(&p("/a/b/c.txt"), reader(b"hello"), WriteMode::Replace)
            .await
            .unwrap();
        assert_eq!(n, 5);
        assert_eq!(
            vm.stat(&p("/a/b")).await.unwrap().unwrap().kind,
            FileKind::Directory
        );
        let n = vm
            .write_file(&p("/a/b/c.txt"), reader(b" world"), WriteMode::Append)
            .await
            .unwrap();
        assert_eq!(n, 6);
        assert_eq!(read_all(&vm, "/a/b/c.txt").await, b"hello world");
        let stat = vm.stat(&p("/a/b/c.txt")).await.unwrap().unwrap();
        assert_eq!(stat.size, 11);
        assert_eq!(stat.modified_at, t0() + chrono::Duration::seconds(5));
        vm.write_file(&p("/a/b/c.txt"), reader(b"x"), WriteMode::Replace)
            .await
            .unwrap();
        assert_eq!(read_all(&vm, "/a/b/c.txt").await, b"x");
    }

    #[tokio::test]
    async fn write_rejects_directories_and_file_ancestors() {
        let vm = boot(&FakeBackend::new()).await;
        assert!(matches!(
            vm.write_file(&p("/workspace"), reader(b"x"), WriteMode::Replace)
                .await,
            Err(FilesError::IsDirectory)
        ));
        assert!(matches!(
            vm.write_file(&p("/"), reader(b"x"), WriteMode::Replace)
                .await,
            Err(FilesError::IsDirectory)
        ));
        vm.write_file(&p("/f"), reader(b"x"), WriteMode::Replace)
            .await
            .unwrap();
        assert!(matches!(
            vm.write_file(&p("/f/g/h"), reader(b"x"), WriteMode::Replace)
                .await,
            Err(FilesError::NotDirectory)
        ));
        assert!(vm.stat(&p("/f/g")).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn write_touches_parent() {
        let clock = Arc::new(ManualClock::new(t0()));
        let vm = boot(&FakeBackend::new().with_clock(clock.clone())).await;
        clock.advance(Duration::from_secs(60));
        vm.write_file(&p("/workspace/x"), reader(b""), WriteMode::Replace)
            .await
            .unwrap();
        let ws = vm.stat(&p("/workspace")).await.unwrap().unwrap();
        assert_eq!(ws.modified_at, t0() + chrono::Duration::seconds(60));
        let root = vm.stat(&p("/")).await.unwrap().unwrap();
        assert_eq!(root.modified_at, t0());
    }

    #[tokio::test]
    async fn read_errors() {
        let vm = boot(&FakeBackend::new()).await;
        assert!(matches!(
            vm.read_file(&p("/nope")).await,
            Err(FilesError::NotFound)
        ));
        assert!(matches!(
            vm.read_file(&p("/workspace")).await,
            Err(FilesError::IsDirectory)
        ));
    }

    #[tokio::test]
    async fn list_immediate_and_recursive() {
        let vm = boot(&FakeBackend::new()).await;
        for f in ["/workspace/a.txt", "/workspace/d/b.txt", "/workspace-x/c"] {
            vm.write_file(&p(f), reader(b"12"), WriteMode::Replace)
                .await
                .unwrap();
        }
        let names = |entries: Vec<FileEntry>| {
            entries
                .into_iter()
                .map(|e| format!("{}:{}:{}", e.path, e.kind.as_str(), e.size))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            names(vm.list_dir(&p("/workspace"), false).await.unwrap()),
            ["/workspace/a.txt:file:2", "/workspace/d:directory:0"]
        );
        assert_eq!(
            names(vm.list_dir(&p("/workspace"), true).await.unwrap()),
            [
                "/workspace/a.txt:file:2",
                "/workspace/d:directory:0",
                "/workspace/d/b.txt:file:2"
            ]
        );
        assert!(matches!(
            vm.list_dir(&p("/missing"), false).await,
            Err(FilesError::NotFound)
        ));
        assert!(matches!(
            vm.list_dir(&p("/workspace/a.txt"), false).await,
            Err(FilesError::NotDirectory)
        ));
    }

    #[tokio::test]
    async fn mkdir_semantics() {
        let vm = boot(&FakeBackend::new()).await;
        assert!(!vm.mkdir(&p("/"), false).await.unwrap());
        assert!(!vm.mkdir(&p("/workspace"), false).await.unwrap());
        assert!(vm.mkdir(&p("/workspace/new"), false).await.unwrap());
        assert!(matches!(
            vm.mkdir(&p("/x/y/z"), false).await,
            Err(FilesError::ParentNotFound)
        ));
        assert!(vm.mkdir(&p("/x/y/z"), true).await.unwrap());
        assert_eq!(
            vm.stat(&p("/x/y")).await.unwrap().unwrap().kind,
            FileKind::Directory
        );
        vm.write_file(&p("/file"), reader(b"1"), WriteMode::Replace)
            .await
            .unwrap();
        assert!(matches!(
            vm.mkdir(&p("/file"), true).await,
            Err(FilesError::NotDirectory)
        ));
        assert!(matches!(
            vm.mkdir(&p("/file/sub"), false).await,
            Err(FilesError::NotDirectory)
        ));
        assert!(matches!(
            vm.mkdir(&p("/file/sub/deeper"), true).await,
            Err(FilesError::NotDirectory)
        ));
    }

    #[tokio::test]
    async fn remove_semantics() {
        let vm = boot(&FakeBackend::new()).await;
        vm.write_file(&p("/workspace/d/f"), reader(b"1"), WriteMode::Replace)
            .await
            .unwrap();
        assert!(matches!(
            vm.remove(&p("/nope"), false).await,
            Err(FilesError::NotFound)
        ));
        assert!(matches!(
            vm.remove(&p("/workspace/d"), false).await,
            Err(FilesError::NotEmpty)
        ));
        vm.remove(&p("/workspace/d/f"), false).await.unwrap();
        vm.remove(&p("/workspace/d"), false).await.unwrap();
        vm.write_file(&p("/workspace/e/f/g"), reader(b"1"), WriteMode::Replace)
            .await
            .unwrap();
        vm.remove(&p("/workspace"), true).await.unwrap();
        assert!(vm.stat(&p("/workspace/e/f/g")).await.unwrap().is_none());
        assert!(vm.stat(&p("/workspace")).await.unwrap().is_none());
        assert!(matches!(
            vm.remove(&p("/"), true).await,
            Err(FilesError::PermissionDenied)
        ));
    }

    #[tokio::test]
    async fn execs_play_their_scripts_and_nothing_else() {
        let backend = FakeBackend::new()
            .script(
                "make all",
                FakeExec::new()
                    .stdout("built\n")
                    .stderr("warn\n")
                    .exit_code(3),
            )
            .script("cat", FakeExec::new().echo_stdin());
        let vm = boot(&backend).await;
        let r = run(&vm, shell("make all")).await;
        assert_eq!(
            (r.stdout.as_str(), r.stderr.as_str()),
            ("built\n", "warn\n")
        );
        assert_eq!(r.exit.exit_code, 3);

        // An argv is its words joined by spaces.
        let mut spec = shell("");
        spec.program = Program::Argv(vec!["make".into(), "all".into()]);
        assert_eq!(run(&vm, spec).await.stdout, "built\n");

        let mut spec = shell("cat");
        spec.stdin = Some(Bytes::from_static(b"in\n"));
        assert_eq!(run(&vm, spec).await.stdout, "in\n");

        // Unscripted: nothing is interpreted, the exec exits 0 with no output.
        let r = run(&vm, shell("echo hello")).await;
        assert_eq!((r.stdout.as_str(), r.stderr.as_str()), ("", ""));
        assert_eq!(
            r.exit,
            ExecExit {
                exit_code: 0,
                timed_out: false
            }
        );

        // Scripts apply to VMs booted before them.
        backend.set_script("echo hello", FakeExec::new().stdout("hello\n"));
        assert_eq!(run(&vm, shell("echo hello")).await.stdout, "hello\n");

        let mut spec = shell("make all");
        spec.cwd = Some("/missing".into());
        let (tx, _rx) = mpsc::channel(4);
        assert!(matches!(
            vm.exec(spec, tx).await,
            Err(BackendError::ExecFailed(_))
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn sleeps_honour_the_timeout() {
        let backend = FakeBackend::new()
            .script(
                "slow",
                FakeExec::new()
                    .stdout("before\n")
                    .sleep(Duration::from_secs(10))
                    .stdout("after\n"),
            )
            .script(
                "quick",
                FakeExec::new()
                    .sleep(Duration::from_millis(500))
                    .stdout("done\n"),
            );
        let vm = boot(&backend).await;
        let mut spec = shell("slow");
        spec.timeout = Duration::from_secs(2);
        let start = tokio::time::Instant::now();
        let r = run(&vm, spec).await;
        assert_eq!(
            r.exit,
            ExecExit {
                exit_code: TIMEOUT_EXIT_CODE,
                timed_out: true
            }
        );
        assert_eq!(r.stdout, "before\n");
        assert_eq!(tokio::time::Instant::now() - start, Duration::from_secs(2));

        let r = run(&vm, shell("quick")).await;
        assert_eq!(r.stdout, "done\n");
        assert!(!r.exit.timed_out);
    }

    #[tokio::test]
    async fn an_exec_handler_comes_first_and_may_touch_files() {
        let backend = FakeBackend::new()
            .script("make", FakeExec::new().exit_code(9))
            .with_exec_handler(|spec, fs| match &spec.program {
                Program::Shell(line) if line == "make" => {
                    fs.write(&p("/workspace/out"), b"built", WriteMode::Replace)
                        .unwrap();
                    Some(FakeExec::new().stdout("ok\n").exit_code(5))
                }
                _ => None,
            });
        let vm = boot(&backend).await;
        let r = run(&vm, shell("make")).await;
        assert_eq!((r.stdout.as_str(), r.exit.exit_code), ("ok\n", 5));
        assert_eq!(read_all(&vm, "/workspace/out").await, b"built");
    }

    #[tokio::test(start_paused = true)]
    async fn run_code_plays_its_script() {
        let backend = FakeBackend::new()
            .script_code("print(42)", FakeCode::Runs(FakeExec::new().stdout("42\n")))
            .script_code(
                "print(",
                FakeCode::SyntaxError("SyntaxError: '(' was never closed".into()),
            )
            .script_code(
                "while True: pass",
                FakeCode::Runs(FakeExec::new().sleep(Duration::from_secs(60))),
            );
        let vm = boot(&backend).await;
        let (tx, mut rx) = mpsc::channel(64);
        let out = vm
            .run_code(code(Runtime::Python, "print(42)"), tx)
            .await
            .unwrap();
        let CodeOutcome::Finished(exit) = out else {
            panic!("expected a run: {out:?}")
        };
        let r = collect(exit, &mut rx);
        assert_eq!((r.stdout.as_str(), r.exit.exit_code), ("42\n", 0));

        let (tx, _rx) = mpsc::channel(64);
        let out = vm
            .run_code(code(Runtime::Node, "print("), tx)
            .await
            .unwrap();
        assert_eq!(
            out,
            CodeOutcome::SyntaxError {
                message: "SyntaxError: '(' was never closed".into(),
                exit_code: 1
            }
        );

        let mut spec = code(Runtime::Python, "while True: pass");
        spec.timeout = Duration::from_secs(1);
        let (tx, _rx) = mpsc::channel(64);
        assert_eq!(
            vm.run_code(spec, tx).await.unwrap(),
            CodeOutcome::Finished(ExecExit {
                exit_code: TIMEOUT_EXIT_CODE,
                timed_out: true
            })
        );

        // Unscripted code runs as nothing at all.
        let (tx, mut rx) = mpsc::channel(64);
        let out = vm
            .run_code(code(Runtime::Python, "print('hi')"), tx)
            .await
            .unwrap();
        assert_eq!(
            out,
            CodeOutcome::Finished(ExecExit {
                exit_code: 0,
                timed_out: false
            })
        );
        assert!(rx.try_recv().is_err());
    }

    #[tokio::test]
    async fn destroy_is_idempotent_and_everything_is_gone() {
        let backend = FakeBackend::new();
        let vm = boot(&backend).await;
        assert_eq!(backend.live_count(), 1);
        vm.destroy().await.unwrap();
        vm.destroy().await.unwrap();
        assert_eq!(backend.counters().destroys, 1);
        assert!(backend.live_vm_ids().is_empty());
        let (tx, _rx) = mpsc::channel(4);
        assert!(matches!(
            vm.exec(shell("true"), tx.clone()).await,
            Err(BackendError::Gone)
        ));
        assert!(matches!(
            vm.run_code(code(Runtime::Python, "print(1)"), tx).await,
            Err(BackendError::Gone)
        ));
        assert!(matches!(
            vm.read_file(&p("/x")).await,
            Err(FilesError::Gone)
        ));
        assert!(matches!(
            vm.write_file(&p("/x"), reader(b""), WriteMode::Replace)
                .await,
            Err(FilesError::Gone)
        ));
        assert!(matches!(vm.stat(&p("/")).await, Err(FilesError::Gone)));
        assert!(matches!(
            vm.list_dir(&p("/"), false).await,
            Err(FilesError::Gone)
        ));
        assert!(matches!(
            vm.mkdir(&p("/d"), false).await,
            Err(FilesError::Gone)
        ));
        assert!(matches!(
            vm.remove(&p("/d"), false).await,
            Err(FilesError::Gone)
        ));
        assert!(matches!(vm.connect(80).await, Err(BackendError::Gone)));
    }

    #[tokio::test(start_paused = true)]
    async fn destroy_during_exec_gives_gone() {
        let backend =
            FakeBackend::new().script("sleep 100", FakeExec::new().sleep(Duration::from_secs(100)));
        let vm = boot(&backend).await;
        let (tx, _rx) = mpsc::channel(4);
        let running = tokio::spawn({
            let vm = vm.clone();
            async move { vm.exec(shell("sleep 100"), tx).await }
        });
        tokio::task::yield_now().await;
        vm.destroy().await.unwrap();
        assert!(matches!(running.await.unwrap(), Err(BackendError::Gone)));
    }

    #[tokio::test]
    async fn counters_track_leaks_and_failures() {
        let backend = FakeBackend::with_virtualization("vetu");
        assert_eq!(backend.virtualization(), "vetu");
        backend.fail_next_provisions(2);
        assert!(matches!(
            backend.provision(spec()).await,
            Err(BackendError::Unavailable(_))
        ));
        assert!(backend.provision(spec()).await.is_err());
        let a = boot(&backend).await;
        let b = boot(&backend).await;
        let duplicate = ProvisionSpec {
            vm_id: a.vm_id(),
            ..spec()
        };
        assert!(matches!(
            backend.provision(duplicate).await,
            Err(BackendError::Setup(_))
        ));
        a.destroy().await.unwrap();
        drop(b);
        let counters = backend.counters();
        assert_eq!(counters.provision_attempts, 5);
        assert_eq!(counters.provisions, 2);
        assert_eq!(counters.failed_provisions, 3);
        assert_eq!(counters.destroys, 1);
        // `b` was dropped without a destroy: the fake still counts it as live (a leak).
        assert_eq!(backend.live_count(), 1);
        assert!(!backend.live_vm_ids().contains(&a.vm_id()));
    }

    #[tokio::test]
    async fn provision_failure_predicate_and_leftovers() {
        let backend = FakeBackend::new()
            .with_leftovers(3)
            .with_provision_failure(|spec| {
                (spec.tuple.image == "missing").then(|| BackendError::ImageUnavailable {
                    image: spec.tuple.image.clone(),
                    reason: "fake".into(),
                })
            });
        let mut bad = spec();
        bad.tuple.image = "missing".into();
        assert!(matches!(
            backend.provision(bad).await,
            Err(BackendError::ImageUnavailable { .. })
        ));
        let vm = boot(&backend).await;
        assert!(backend.vm(&vm.vm_id()).is_some());
        assert_eq!(backend.cleanup_leftovers().await.unwrap(), 3);
        assert_eq!(backend.cleanup_leftovers().await.unwrap(), 0);
        assert_eq!(backend.counters().cleanups, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn provision_delay_uses_tokio_time() {
        let backend = FakeBackend::new().with_provision_delay(Duration::from_secs(3));
        let start = tokio::time::Instant::now();
        boot(&backend).await;
        assert_eq!(tokio::time::Instant::now() - start, Duration::from_secs(3));
    }

    #[tokio::test]
    async fn connect_reaches_host_port() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            let (mut sock, _) = listener.accept().await.unwrap();
            sock.write_all(b"pong").await.unwrap();
        });
        let backend = FakeBackend::new();
        let vm = boot(&backend).await;
        let mut stream = vm.connect(port).await.unwrap();
        let mut got = Vec::new();
        stream.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"pong");
        server.await.unwrap();

        // A port mapped elsewhere: the mapped listener answers, whatever port was asked.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = listener.local_addr().unwrap();
        backend.vm(&vm.vm_id()).unwrap().map_port(8080, target);
        let accept = tokio::spawn(async move { listener.accept().await.map(|_| ()) });
        vm.connect(8080).await.unwrap();
        accept.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn connect_refused_is_connect_failed() {
        // Bind then drop to find a port nothing listens on.
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let vm = boot(&FakeBackend::new()).await;
        assert!(matches!(
            vm.connect(port).await,
            Err(BackendError::ConnectFailed { port: p, .. }) if p == port
        ));
    }
}
