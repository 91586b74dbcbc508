//! The sandbox backend trait: how a worker provisions, drives and destroys sandboxes.
//!
//! A [`VmBackend`] boots sandboxes for a tuple; each boot yields a [`Vm`], the handle through
//! which the worker runs commands and code, touches files, connects to ports and finally
//! destroys it. Backends: `fake` (test double, `test-util` feature), `container` (Linux
//! namespaces, `container` feature). Everything here is HTTP-free.
//!
//! A new backend implements [`VmBackend::provision`] and the primitives of [`Vm`]: `vm_id`,
//! `exec` (with stdin, stdout and stderr), `connect` and `destroy`. Run-code
//! ([`bootstrap`]) and the files API ([`exec_files`]) have default implementations over
//! `exec`, which a backend with a faster path overrides. [`conformance`] (`test-util`) is the
//! suite every backend must pass.

use std::collections::BTreeMap;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;

use crate::api::{ImageInfo, ImageList, NetworkBytes, RemovedImage};
use crate::id::{ExecId, LocalVmId};
use crate::network::{Egress, Policy};
use crate::path::SandboxPath;
use crate::tuple::SandboxTuple;

pub mod bootstrap;
#[cfg(feature = "test-util")]
pub mod conformance;
#[cfg(all(feature = "container", target_os = "linux"))]
pub mod container;
pub mod exec_files;
#[cfg(feature = "test-util")]
pub mod fake;

/// A bidirectional byte stream to a port inside a sandbox.
pub trait ByteStream: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> ByteStream for T {}

/// A boxed [`ByteStream`].
pub type BoxedStream = Box<dyn ByteStream>;

/// A boxed reader of file content.
pub type BoxedReader = Box<dyn AsyncRead + Send + Unpin + 'static>;

/// What to boot.
#[derive(Debug, Clone)]
pub struct ProvisionSpec {
    /// The id the VM will carry; part of the sandbox id.
    pub vm_id: LocalVmId,
    /// Virtualization, image and cpu count.
    pub tuple: SandboxTuple,
    /// Memory limit.
    pub memory_mib: u64,
    /// For the warm pool: no client waits for it, so a backend keeps its fast paths (the
    /// `container` backend's spare inits) for cold creates.
    pub warm: bool,
}

/// Destroys a sandbox that could not get the network it was made for (a create's failure:
/// a failed destroy is only logged).
pub(crate) async fn destroy_without_network(vm: &dyn Vm) {
    if let Err(undone) = vm.destroy().await {
        tracing::warn!(error = %undone, "sandbox without its network not destroyed");
    }
}

/// Why a backend operation failed.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The request names an image this backend does not have: a fault of the request, which
    /// the worker answers with `404 image not found: <image>`.
    #[error("image not found: {image}")]
    ImageNotFound {
        /// The image reference, as the request gave it (trimmed).
        image: String,
    },
    /// The request asks for something this backend cannot do (a fault of the request, not of
    /// the host); the worker answers 400 with this cause, so it must be safe to show.
    #[error("{0}")]
    InvalidRequest(String),
    /// An image the backend knows cannot be used (a configured directory is missing): a
    /// fault of the host, answered with a generic 5xx.
    #[error("image {image:?} is not available: {reason}")]
    ImageUnavailable {
        /// The image reference.
        image: String,
        /// Why.
        reason: String,
    },
    /// The backend cannot run on this host (missing privileges, kernel features, tools).
    #[error("backend unavailable: {0}")]
    Unavailable(String),
    /// The sandbox no longer exists (destroyed, crashed).
    #[error("sandbox is gone")]
    Gone,
    /// Nothing listens on the port, or the connection failed.
    #[error("connection to port {port} failed")]
    ConnectFailed {
        /// Port inside the sandbox.
        port: u16,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// Connecting to the port timed out.
    #[error("connection to port {port} timed out")]
    ConnectTimeout {
        /// Port inside the sandbox.
        port: u16,
    },
    /// The command could not be started (e.g. program not found).
    #[error("exec failed: {0}")]
    ExecFailed(String),
    /// An I/O operation of the backend itself failed.
    #[error("{op} failed")]
    Io {
        /// What was being done.
        op: String,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// The exec named in [`Vm::control_exec`] is not running (it exited, or never ran here).
    #[error("exec is not running")]
    ExecNotRunning,
    /// Input for an exec whose stdin was closed (by an EOF, or because the exec was not
    /// interactive).
    #[error("exec stdin is closed")]
    StdinClosed,
    /// The sandbox's image has no interpreter for this run-code runtime: a fault of the
    /// request (an image without Python asked to run Python).
    #[error("{runtime} is not available in this sandbox's image (no {program} on its PATH)")]
    RuntimeMissing {
        /// The runtime asked for.
        runtime: Runtime,
        /// The interpreter that is missing.
        program: &'static str,
    },
    /// The backend cannot do this at all (e.g. control a running exec).
    #[error("not supported by this backend: {0}")]
    Unsupported(&'static str),
    /// The image is used by live sandboxes (warm ones included), so it cannot be removed.
    #[error("image {image} is in use by a sandbox")]
    ImageInUse {
        /// The image reference.
        image: String,
    },
    /// The registry of the sandbox's image (and its mirrors) could not be reached in time;
    /// the worker answers 502 naming the registry (the reason goes to its log).
    #[error("registry {registry} is unreachable: {reason}")]
    RegistryUnreachable {
        /// The registry host.
        registry: String,
        /// The last transport error.
        reason: String,
    },
    /// The backend has no room for another sandbox (a host's VM limit, say); the create may
    /// succeed on another worker.
    #[error("no capacity: {0}")]
    Capacity(String),
    /// The sandbox did not come up: its init or boot failed or timed out.
    #[error("sandbox setup failed: {0}")]
    Setup(String),
    /// The line to a running sandbox broke mid-operation (its agent, an SSH connection, an
    /// interpreter it runs code through).
    #[error("transport to the sandbox failed: {0}")]
    Transport(String),
    /// A destroyed sandbox could not be removed completely (what is left is named).
    #[error("sandbox teardown failed: {0}")]
    Teardown(String),
    /// What a previous run left behind could not all be removed.
    #[error("cleanup of leftover sandboxes failed: {0}")]
    Cleanup(String),
    /// A task of the backend or the worker ended abnormally (it panicked, or was cancelled).
    #[error("{task} task failed: {reason}")]
    Task {
        /// Which task.
        task: &'static str,
        /// How it ended.
        reason: String,
    },
}

impl BackendError {
    /// True when the request caused this error (unknown image, impossible request), so the
    /// caller may show it; every other variant is a fault of the host or the sandbox.
    pub fn is_request_fault(&self) -> bool {
        matches!(
            self,
            Self::ImageNotFound { .. } | Self::InvalidRequest(_) | Self::RuntimeMissing { .. }
        )
    }

    /// A task that ended abnormally.
    pub fn task(task: &'static str, reason: impl std::fmt::Display) -> Self {
        Self::Task {
            task,
            reason: reason.to_string(),
        }
    }

    /// Wraps an I/O error with what was being done.
    pub fn io(op: impl Into<String>, source: io::Error) -> Self {
        Self::Io {
            op: op.into(),
            source,
        }
    }

    /// [`BackendError::io`] of an operation that writes to the worker's own disk (its state
    /// dir): a full disk or quota there is a lack of room, [`BackendError::Capacity`] with a
    /// fixed reason (the details are logged here), not a fault.
    pub fn host_disk(op: &str, source: io::Error) -> Self {
        if matches!(
            source.kind(),
            io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
        ) {
            tracing::warn!(op, error = %source, "no space left on the worker's disk");
            return Self::Capacity(DISK_FULL.to_string());
        }
        Self::io(op, source)
    }
}

/// The reason of [`BackendError::Capacity`] for a full disk under the worker's state dir.
pub const DISK_FULL: &str = "the worker's disk is full";

/// Why a file operation failed. The worker maps each to the contract's status and message.
#[derive(Debug, thiserror::Error)]
pub enum FilesError {
    /// Nothing exists at the path (or a parent is missing for a read/list/remove).
    #[error("not found")]
    NotFound,
    /// The path is a directory where a file was needed.
    #[error("path points to a directory")]
    IsDirectory,
    /// The path, or one of its ancestors, is a file where a directory was needed.
    #[error("path points to a file")]
    NotDirectory,
    /// The directory is not empty and the removal was not recursive.
    #[error("directory is not empty")]
    NotEmpty,
    /// The parent directory does not exist (non-recursive mkdir).
    #[error("parent directory not found")]
    ParentNotFound,
    /// The sandbox denies the operation (read-only image path, permissions).
    #[error("permission denied")]
    PermissionDenied,
    /// The content is larger than allowed.
    #[error("file too large")]
    TooLarge,
    /// A listing would return more entries than a backend walks in one request.
    #[error("too many entries")]
    TooManyEntries,
    /// The sandbox no longer exists.
    #[error("sandbox is gone")]
    Gone,
    /// Another I/O failure.
    #[error("{op} failed")]
    Io {
        /// What was being done.
        op: String,
        /// Cause.
        #[source]
        source: io::Error,
    },
}

/// The kind of a filesystem entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// A regular file (or anything that is not a directory: devices, sockets, dangling links).
    File,
    /// A directory.
    Directory,
}

impl FileKind {
    /// `file` or `directory`, as the contract writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            FileKind::File => "file",
            FileKind::Directory => "directory",
        }
    }
}

/// Metadata of an existing path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileStat {
    /// File or directory.
    pub kind: FileKind,
    /// Size in bytes; 0 for directories.
    pub size: u64,
    /// Last modification.
    pub modified_at: DateTime<Utc>,
}

/// An entry of a directory listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileEntry {
    /// Absolute path inside the sandbox.
    pub path: SandboxPath,
    /// File or directory.
    pub kind: FileKind,
    /// Size in bytes; 0 for directories.
    pub size: u64,
}

/// An open file to read.
pub struct FileReader {
    /// Size at open time.
    pub size: u64,
    /// The content.
    pub body: BoxedReader,
}

/// Whether a write replaces or extends the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteMode {
    /// Truncate, then write.
    Replace,
    /// Write at the end.
    Append,
}

/// What to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Program {
    /// A shell command line, run as `/bin/sh -c <line>`.
    Shell(String),
    /// An argument vector, run without a shell; `argv[0]` is looked up in `PATH`.
    Argv(Vec<String>),
}

/// A command to run in a sandbox.
#[derive(Debug, Clone)]
pub struct ExecSpec {
    /// The program.
    pub program: Program,
    /// Working directory; `None` means the sandbox's default (e.g. `/workspace`).
    pub cwd: Option<String>,
    /// Extra environment, on top of the sandbox's base environment.
    pub env: BTreeMap<String, String>,
    /// Bytes written to stdin first. `None` means none.
    pub stdin: Option<Bytes>,
    /// After this long the whole process group is killed and the exit code is 124.
    pub timeout: Duration,
    /// The worker's id of this exec: while it runs, [`Vm::control_exec`] reaches it by this
    /// id. `None` for execs nobody controls (warm-up scripts).
    pub exec_id: Option<ExecId>,
    /// Keep stdin open after `stdin` was written, for [`ExecControl::Stdin`] until
    /// [`ExecControl::CloseStdin`]; `false` closes it after `stdin`.
    pub interactive: bool,
    /// Run the command on a pseudo-terminal of this size (its stdin, stdout and stderr, as
    /// session leader with it as controlling terminal); all output then comes as
    /// [`OutputStream::Stdout`]. Implies `interactive`.
    pub tty: Option<TerminalSize>,
}

impl ExecSpec {
    /// `line` through `/bin/sh -c`, with a 30 s timeout and nothing else set.
    pub fn shell(line: impl Into<String>) -> Self {
        Self::program(Program::Shell(line.into()))
    }

    /// `program` with a 30 s timeout and nothing else set.
    pub fn program(program: Program) -> Self {
        Self {
            program,
            cwd: None,
            env: BTreeMap::new(),
            stdin: None,
            timeout: Duration::from_secs(30),
            exec_id: None,
            interactive: false,
            tty: None,
        }
    }
}

/// What a command printed and how it ended ([`run_collected`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Collected {
    /// How it ended.
    pub exit: ExecExit,
    /// Everything on stdout.
    pub stdout: Vec<u8>,
    /// Everything on stderr.
    pub stderr: Vec<u8>,
}

/// Runs `spec` on `vm` to its end and collects its output in memory (for commands whose
/// output is small: scripts, checks).
pub async fn run_collected<V: Vm + ?Sized>(
    vm: &V,
    spec: ExecSpec,
) -> Result<Collected, BackendError> {
    let (tx, mut rx) = mpsc::channel::<OutputChunk>(64);
    let collect = async {
        let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
        while let Some(chunk) = rx.recv().await {
            match chunk.stream {
                OutputStream::Stdout => stdout.extend_from_slice(&chunk.data),
                OutputStream::Stderr => stderr.extend_from_slice(&chunk.data),
            }
        }
        (stdout, stderr)
    };
    let (exit, (stdout, stderr)) = tokio::join!(vm.exec(spec, tx), collect);
    Ok(Collected {
        exit: exit?,
        stdout,
        stderr,
    })
}

/// The size of a pseudo-terminal, in characters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TerminalSize {
    /// Lines.
    pub rows: u16,
    /// Columns.
    pub cols: u16,
}

impl Default for TerminalSize {
    /// 24 × 80, the classic terminal.
    fn default() -> Self {
        Self { rows: 24, cols: 80 }
    }
}

pub use crate::api::ExecSignal;

/// What the worker asks of a running exec (see [`Vm::control_exec`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecControl {
    /// Bytes for its stdin (never empty).
    Stdin(Bytes),
    /// Close its stdin: the command reads EOF. On a terminal, which stays open for output,
    /// this is the keyboard's end of input (`^D`): an EOF for a program reading lines at the
    /// start of a line (canonical mode), plain input for one in raw mode.
    CloseStdin,
    /// Signal its process group.
    Signal(ExecSignal),
    /// Resize its terminal.
    Resize(TerminalSize),
}

/// Which output stream a chunk came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputStream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// A piece of output, sent as soon as it is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputChunk {
    /// stdout or stderr.
    pub stream: OutputStream,
    /// The bytes.
    pub data: Bytes,
}

/// How a command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExecExit {
    /// Exit code; 128+signal when killed by a signal; 124 on timeout.
    pub exit_code: i32,
    /// True when the timeout killed it.
    pub timed_out: bool,
}

/// The exit code reported for a command killed by its timeout.
pub const TIMEOUT_EXIT_CODE: i32 = 124;

pub use crate::api::Runtime;

/// Code to run.
#[derive(Debug, Clone)]
pub struct CodeSpec {
    /// Interpreter.
    pub runtime: Runtime,
    /// Source.
    pub code: String,
    /// Working directory.
    pub cwd: Option<String>,
    /// Extra environment.
    pub env: BTreeMap<String, String>,
    /// Kill after this long (exit code 124).
    pub timeout: Duration,
}

/// How run-code ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CodeOutcome {
    /// The code did not compile; it was not run. `message` is the interpreter's own text.
    SyntaxError {
        /// The interpreter's message.
        message: String,
        /// The checker's exit code.
        exit_code: i32,
    },
    /// The code ran.
    Finished(ExecExit),
}

/// Boots sandboxes of one virtualization.
///
/// Contract: a failed `provision` leaves nothing behind (no mount, cgroup, process, directory).
#[async_trait]
pub trait VmBackend: Send + Sync + 'static {
    /// The virtualization name this backend serves (`container`, `vetu`, `fake`).
    fn virtualization(&self) -> &str;

    /// True when a sandbox's cpu is a quota and its memory a limit that the host may hand out
    /// more of than it has (containers), false when they are reserved (VMs). See
    /// [`crate::worker::CapacityConfig`].
    fn overcommits(&self) -> bool {
        false
    }

    /// Memory the backend's sandboxes actually use now, in bytes, if it can tell. Checked
    /// against [`crate::worker::CapacityConfig::memory_high_watermark_mib`] before each new
    /// sandbox; keep it cheap.
    fn memory_in_use(&self) -> Option<u64> {
        None
    }

    /// The most memory this backend's sandboxes may use all together when something beside
    /// the host's memory bounds it (a memory limit on the cgroup they live under, set by
    /// systemd's `MemoryMax=` or a container runtime), in bytes; `None` when nothing does.
    /// The worker refuses new sandboxes above [`DEFAULT_MEMORY_HIGH_WATERMARK_PERCENT`] of it,
    /// as it does above its own watermark, so that the kernel's OOM killer never picks a
    /// live sandbox. Keep it cheap.
    ///
    /// [`DEFAULT_MEMORY_HIGH_WATERMARK_PERCENT`]: crate::worker::defaults::DEFAULT_MEMORY_HIGH_WATERMARK_PERCENT
    fn memory_ceiling(&self) -> Option<u64> {
        None
    }

    /// Boots a sandbox for `spec` and returns once it can run commands.
    async fn provision(&self, spec: ProvisionSpec) -> Result<Arc<dyn Vm>, BackendError>;

    /// Boots a sandbox for `spec` with the egress of `policy` from the start (a cold create
    /// that asks for a network). The default provisions, then gives the VM its network (and
    /// destroys it when that fails); a backend may do both at once.
    async fn provision_with_network(
        &self,
        spec: ProvisionSpec,
        policy: &Policy,
    ) -> Result<Arc<dyn Vm>, BackendError> {
        let vm = self.provision(spec).await?;
        if policy.egress() != Egress::None {
            if let Err(error) = vm.set_network(policy).await {
                destroy_without_network(vm.as_ref()).await;
                return Err(error);
            }
        }
        Ok(vm)
    }

    /// Whether its sandboxes can have the egress `mode` ([`Vm::set_network`]); asked before a
    /// sandbox is placed, so that a mode the backend lacks costs no sandbox. The default:
    /// `none` only.
    fn supports_egress(&self, mode: Egress) -> bool {
        mode == Egress::None
    }

    /// The images this backend keeps on disk, for operators; `None` when it keeps none.
    fn images(&self) -> Option<&dyn ImageCatalog> {
        None
    }

    /// Removes what a previous, crashed run of this backend left behind. Called once at
    /// worker start, before any provision. Returns how many sandboxes were cleaned up.
    async fn cleanup_leftovers(&self) -> Result<usize, BackendError> {
        Ok(0)
    }

    /// Releases what the backend holds for itself once the worker stops, after every
    /// sandbox of this backend was destroyed (the container backend removes the cgroup
    /// parent it created, when it is empty). Errors are the backend's to log. The default
    /// does nothing.
    async fn shutdown(&self) {}
}

/// Images a backend keeps on disk (the `container` backend's OCI cache): the operator's
/// view.
#[async_trait]
pub trait ImageCatalog: Send + Sync {
    /// Every image held, most recently used first, and the bytes held.
    async fn list(&self) -> Result<ImageList, BackendError>;

    /// Pulls `image` (again: a tag may have moved) and makes it ready for sandboxes.
    async fn pull(&self, image: &str) -> Result<ImageInfo, BackendError>;

    /// Removes `image` and what no other image needs of it; refused with
    /// [`BackendError::ImageInUse`] while a sandbox uses it.
    async fn remove(&self, image: &str) -> Result<RemovedImage, BackendError>;
}

/// One live sandbox.
///
/// Contract for every method: an error leaves the sandbox usable (or reports
/// [`BackendError::Gone`]); paths never resolve outside the sandbox's root, whatever
/// `..` or symlinks they contain.
#[async_trait]
pub trait Vm: Send + Sync + 'static {
    /// The VM's id.
    fn vm_id(&self) -> LocalVmId;

    /// True when provisioning this sandbox waited for its image to be pulled from a registry
    /// (the worker says so in the create's log line and counts it). The default is false.
    fn image_pulled(&self) -> bool {
        false
    }

    /// False once the sandbox is known to be dead (its init or VM died: killed by the OOM
    /// killer, say). The worker never hands out a dead warm sandbox: it retires it and claims
    /// another. Cheap; the default is true.
    fn is_alive(&self) -> bool {
        true
    }

    /// Waits (bounded by the backend) until what provisioning left starting in the
    /// background, such as a pre-warmed interpreter, is ready, so that the sandbox is fully
    /// warm. The warm pool calls it before offering a sandbox. The default returns at once.
    async fn settle(&self) {}

    /// Runs a command. Output chunks are sent to `output` as they are produced; the call
    /// returns when the command has exited and all its output has been sent. On timeout the
    /// whole process group is killed and the exit code is [`TIMEOUT_EXIT_CODE`].
    async fn exec(
        &self,
        spec: ExecSpec,
        output: mpsc::Sender<OutputChunk>,
    ) -> Result<ExecExit, BackendError>;

    /// Acts on a running exec started with [`ExecSpec::exec_id`] `Some(exec_id)`. Returns
    /// once the input was handed to the command's stdin (it may wait while the pipe is full)
    /// or the signal or size was delivered. Errors: [`BackendError::ExecNotRunning`] when no
    /// such exec runs, [`BackendError::StdinClosed`] for input after its stdin was closed,
    /// [`BackendError::InvalidRequest`] for a resize of an exec without a terminal. The
    /// default answers [`BackendError::Unsupported`].
    async fn control_exec(
        &self,
        exec_id: &ExecId,
        control: ExecControl,
    ) -> Result<(), BackendError> {
        let _ = (exec_id, control);
        Err(BackendError::Unsupported("control of a running exec"))
    }

    /// Checks the code's syntax without running it; on success runs it like [`Vm::exec`].
    /// The default runs the shared bootstraps through [`Vm::exec`]
    /// ([`bootstrap::run_code_over_exec`]): `python3` or `node` must be on the sandbox's
    /// `PATH`.
    async fn run_code(
        &self,
        spec: CodeSpec,
        output: mpsc::Sender<OutputChunk>,
    ) -> Result<CodeOutcome, BackendError> {
        bootstrap::run_code_over_exec(self, spec, output).await
    }

    /// Opens a file for reading. Directories give [`FilesError::IsDirectory`]. This and the
    /// other file methods default to shell scripts run through [`Vm::exec`]
    /// ([`exec_files`]), which need a POSIX shell with GNU coreutils and findutils; a
    /// backend with a faster path overrides them.
    async fn read_file(&self, path: &SandboxPath) -> Result<FileReader, FilesError> {
        exec_files::read_file(self, path).await
    }

    /// Writes a file, creating missing ancestor directories. Returns the bytes written.
    /// A directory at `path` gives [`FilesError::IsDirectory`]; a file among the ancestors
    /// gives [`FilesError::NotDirectory`].
    async fn write_file(
        &self,
        path: &SandboxPath,
        content: BoxedReader,
        mode: WriteMode,
    ) -> Result<u64, FilesError> {
        exec_files::write_file(self, path, content, mode).await
    }

    /// Metadata of a path, or `None` when nothing is there.
    async fn stat(&self, path: &SandboxPath) -> Result<Option<FileStat>, FilesError> {
        exec_files::stat(self, path).await
    }

    /// Entries below a directory: immediate children, or every descendant when `recursive`.
    /// A missing path gives [`FilesError::NotFound`], a file [`FilesError::NotDirectory`].
    /// Order is unspecified.
    async fn list_dir(
        &self,
        path: &SandboxPath,
        recursive: bool,
    ) -> Result<Vec<FileEntry>, FilesError> {
        exec_files::list_dir(self, path, recursive).await
    }

    /// Creates a directory; returns false when it already existed. Not recursive: a missing
    /// parent gives [`FilesError::ParentNotFound`]. A file at the path or among the ancestors
    /// gives [`FilesError::NotDirectory`].
    async fn mkdir(&self, path: &SandboxPath, recursive: bool) -> Result<bool, FilesError> {
        exec_files::mkdir(self, path, recursive).await
    }

    /// Removes a file or directory. A missing path gives [`FilesError::NotFound`]; a
    /// non-empty directory without `recursive` gives [`FilesError::NotEmpty`].
    async fn remove(&self, path: &SandboxPath, recursive: bool) -> Result<(), FilesError> {
        exec_files::remove(self, path, recursive).await
    }

    /// Gives the sandbox the network egress of `policy` (replacing what it had): called when
    /// a sandbox is created or claimed with a mode other than `none`, and when its policy
    /// changes. The default serves `none` only: any other mode is
    /// [`BackendError::Unsupported`]; see [`VmBackend::supports_egress`].
    async fn set_network(&self, policy: &Policy) -> Result<(), BackendError> {
        match policy.egress() {
            Egress::None => Ok(()),
            _ => Err(BackendError::Unsupported("network egress")),
        }
    }

    /// What the sandbox's network carried since it got egress; `None` when it never had
    /// any (or the backend cannot tell). Cheap: called on every `GET` of the sandbox.
    fn network_bytes(&self) -> Option<NetworkBytes> {
        None
    }

    /// Opens a TCP connection to `port` inside the sandbox's network namespace.
    async fn connect(&self, port: u16) -> Result<BoxedStream, BackendError>;

    /// Destroys the sandbox: every process, mount, cgroup and directory it had. Idempotent.
    async fn destroy(&self) -> Result<(), BackendError>;
}
