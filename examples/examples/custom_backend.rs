//! Plugs a sandbox backend of your own into a worker: an auditing wrapper around any backend.
//!
//! A backend implements two traits: [`VmBackend`] boots sandboxes, and each boot yields a
//! [`Vm`] through which the worker runs commands, touches files, connects to ports and
//! finally destroys it. `AuditBackend` below implements both by delegating to another
//! backend (here the in-memory [`FakeBackend`], a test double), and on the way it
//! - records every operation with its sandbox, duration and result in an audit log, and
//! - enforces a small policy of its own: nothing may be written under `/etc`.
//!
//! The same shape serves metering, tracing or fault injection around a real backend.
//!
//! Run it with `cargo run -p traforato-examples --example custom_backend`.

use std::error::Error;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::sync::mpsc;
use traforato_core::api::{CreateSandbox, Runtime};
use traforato_core::backend::fake::{FakeBackend, FakeCode, FakeExec};
use traforato_core::backend::{
    BackendError, BoxedReader, BoxedStream, CodeOutcome, CodeSpec, ExecExit, ExecSpec, FileEntry,
    FileReader, FileStat, FilesError, OutputChunk, ProvisionSpec, Vm, VmBackend, WriteMode,
};
use traforato_core::id::LocalVmId;
use traforato_core::path::SandboxPath;
use traforato_core::worker::{Worker, WorkerError};

type BoxError = Box<dyn Error + Send + Sync>;

/// One audited operation.
#[derive(Debug, Clone)]
struct AuditEntry {
    /// The sandbox's VM, or `None` for backend-wide operations.
    vm: Option<LocalVmId>,
    /// What was done, e.g. `exec sh -c 'echo hi'`.
    operation: String,
    /// How long it took.
    took: Duration,
    /// `ok`, or the error.
    result: String,
}

impl fmt::Display for AuditEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let vm = self
            .vm
            .map(|id| id.to_string()[..8].to_string())
            .unwrap_or_else(|| "-".to_string());
        write!(
            f,
            "{vm:<8}  {:<40} {:>9.3?}  {}",
            self.operation, self.took, self.result
        )
    }
}

/// The shared audit log.
#[derive(Debug, Clone, Default)]
struct AuditLog(Arc<Mutex<Vec<AuditEntry>>>);

impl AuditLog {
    fn record<T, E: fmt::Display>(
        &self,
        vm: Option<LocalVmId>,
        operation: String,
        started: Instant,
        result: &Result<T, E>,
    ) {
        let result = match result {
            Ok(_) => "ok".to_string(),
            Err(error) => format!("error: {error}"),
        };
        let entry = AuditEntry {
            vm,
            operation,
            took: started.elapsed(),
            result,
        };
        self.0.lock().expect("audit log lock").push(entry);
    }

    fn entries(&self) -> Vec<AuditEntry> {
        self.0.lock().expect("audit log lock").clone()
    }
}

/// Wraps a backend: every operation is audited, and writes under `/etc` are refused.
struct AuditBackend {
    inner: Arc<dyn VmBackend>,
    log: AuditLog,
}

#[async_trait]
impl VmBackend for AuditBackend {
    fn virtualization(&self) -> &str {
        // Serve the tuple of the wrapped backend, so creates for `fake` land here.
        self.inner.virtualization()
    }

    async fn provision(&self, spec: ProvisionSpec) -> Result<Arc<dyn Vm>, BackendError> {
        let started = Instant::now();
        let what = format!("provision {}", spec.tuple);
        let vm_id = spec.vm_id;
        let result = self.inner.provision(spec).await;
        self.log.record(Some(vm_id), what, started, &result);
        let inner = result?;
        Ok(Arc::new(AuditVm {
            inner,
            log: self.log.clone(),
        }))
    }

    async fn cleanup_leftovers(&self) -> Result<usize, BackendError> {
        let started = Instant::now();
        let result = self.inner.cleanup_leftovers().await;
        self.log
            .record(None, "cleanup leftovers".to_string(), started, &result);
        result
    }
}

/// A sandbox of [`AuditBackend`].
struct AuditVm {
    inner: Arc<dyn Vm>,
    log: AuditLog,
}

impl AuditVm {
    fn record<T, E: fmt::Display>(&self, what: String, started: Instant, result: &Result<T, E>) {
        self.log
            .record(Some(self.inner.vm_id()), what, started, result);
    }
}

/// The policy: the image's `/etc` is off limits for writes.
fn writable(path: &SandboxPath) -> bool {
    !path.starts_with(&SandboxPath::parse("/etc").expect("valid path"))
}

#[async_trait]
impl Vm for AuditVm {
    fn vm_id(&self) -> LocalVmId {
        self.inner.vm_id()
    }

    async fn exec(
        &self,
        spec: ExecSpec,
        output: mpsc::Sender<OutputChunk>,
    ) -> Result<ExecExit, BackendError> {
        let started = Instant::now();
        let what = format!("exec {:?}", spec.program);
        let result = self.inner.exec(spec, output).await;
        self.record(what, started, &result);
        result
    }

    async fn run_code(
        &self,
        spec: CodeSpec,
        output: mpsc::Sender<OutputChunk>,
    ) -> Result<CodeOutcome, BackendError> {
        let started = Instant::now();
        let what = format!("run {} ({} bytes)", spec.runtime.as_str(), spec.code.len());
        let result = self.inner.run_code(spec, output).await;
        self.record(what, started, &result);
        result
    }

    async fn read_file(&self, path: &SandboxPath) -> Result<FileReader, FilesError> {
        let started = Instant::now();
        let result = self.inner.read_file(path).await;
        self.record(format!("read {}", path.as_str()), started, &result);
        result
    }

    async fn write_file(
        &self,
        path: &SandboxPath,
        content: BoxedReader,
        mode: WriteMode,
    ) -> Result<u64, FilesError> {
        let started = Instant::now();
        let result = if writable(path) {
            self.inner.write_file(path, content, mode).await
        } else {
            Err(FilesError::PermissionDenied)
        };
        self.record(format!("write {}", path.as_str()), started, &result);
        result
    }

    async fn stat(&self, path: &SandboxPath) -> Result<Option<FileStat>, FilesError> {
        let started = Instant::now();
        let result = self.inner.stat(path).await;
        self.record(format!("stat {}", path.as_str()), started, &result);
        result
    }

    async fn list_dir(
        &self,
        path: &SandboxPath,
        recursive: bool,
    ) -> Result<Vec<FileEntry>, FilesError> {
        let started = Instant::now();
        let result = self.inner.list_dir(path, recursive).await;
        self.record(format!("list {}", path.as_str()), started, &result);
        result
    }

    async fn mkdir(&self, path: &SandboxPath, recursive: bool) -> Result<bool, FilesError> {
        let started = Instant::now();
        let result = if writable(path) {
            self.inner.mkdir(path, recursive).await
        } else {
            Err(FilesError::PermissionDenied)
        };
        self.record(format!("mkdir {}", path.as_str()), started, &result);
        result
    }

    async fn remove(&self, path: &SandboxPath, recursive: bool) -> Result<(), FilesError> {
        let started = Instant::now();
        let result = if writable(path) {
            self.inner.remove(path, recursive).await
        } else {
            Err(FilesError::PermissionDenied)
        };
        self.record(format!("remove {}", path.as_str()), started, &result);
        result
    }

    async fn connect(&self, port: u16) -> Result<BoxedStream, BackendError> {
        let started = Instant::now();
        let result = self.inner.connect(port).await;
        self.record(format!("connect {port}"), started, &result);
        result
    }

    async fn destroy(&self) -> Result<(), BackendError> {
        let started = Instant::now();
        let result = self.inner.destroy().await;
        self.record("destroy".to_string(), started, &result);
        result
    }
}

#[tokio::main]
pub async fn main() -> Result<(), BoxError> {
    let log = AuditLog::default();
    // The fake runs no interpreter: it answers the code below as Python would.
    let fake = FakeBackend::new().script_code(
        "print(6 * 7)",
        FakeCode::Runs(FakeExec::new().stdout("42\n")),
    );
    let backend = AuditBackend {
        inner: Arc::new(fake.clone()),
        log: log.clone(),
    };
    // A standalone worker (no broker), driven through sandbox handles.
    let worker = Worker::builder()
        .backend(backend)
        .worker_id("worker_audit")
        .capacity(2, 2048)
        .build()?;

    let sandbox = worker.create(CreateSandbox::new("demo")).await?;
    println!("created {} through the audit backend", sandbox.id());

    let out = sandbox.run_code(Runtime::Python, "print(6 * 7)").await?;
    println!(
        "run-code printed {:?}, exit code {}",
        out.stdout, out.exit_code
    );

    sandbox
        .files()
        .write("/workspace/note.txt", "audited\n")
        .await?;
    println!("wrote /workspace/note.txt");

    // The policy of the wrapper: the worker maps the refusal to its 403.
    match sandbox
        .files()
        .write("/etc/passwd", "root::0:0::/:/bin/sh\n")
        .await
    {
        Err(WorkerError::PermissionDenied) => {
            println!("writing /etc/passwd was refused: permission denied (403)")
        }
        other => return Err(format!("the policy did not apply: {other:?}").into()),
    }

    sandbox.delete().await?;
    println!("deleted {}\n\naudit log:", sandbox.id());
    let entries = log.entries();
    for entry in &entries {
        println!("  {entry}");
    }

    let operations: Vec<&str> = entries
        .iter()
        .map(|e| e.operation.split(' ').next().unwrap_or(""))
        .collect();
    for expected in ["provision", "run", "write", "destroy"] {
        if !operations.contains(&expected) {
            return Err(format!("the audit log has no {expected}").into());
        }
    }
    if fake.live_count() != 0 {
        return Err("a sandbox was left behind".into());
    }
    Ok(())
}
