//! [`Sandbox`]: a handle on one sandbox of an embedded worker, with what an embedder does to
//! it (exec, run code, files, ports, lease, delete) and no ids, principals or queries to pass
//! around.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use tokio::io::AsyncReadExt;

use super::{
    CreateOutcome, FrameStream, ListOptions, Placement, RemoveOptions, RunCodeOutcome, Worker,
    WorkerError,
};
use crate::api::{
    frame_exit_code, Command, CreateSandbox, CreateSandboxResponse, ExecOutput, ExecRecord,
    FrameKind, ListEntry, RunCode, RunCodeOutput, Runtime, SandboxResponse, StatResponse,
};
use crate::auth::Principal;
use crate::backend::{BackendError, BoxedStream, ExecSignal, WriteMode};
use crate::id::{ExecId, SandboxId};
use crate::path::SandboxPath;

/// One sandbox of a [`Worker`], acting as one principal.
///
/// ```no_run
/// # async fn demo(worker: std::sync::Arc<traforato_core::worker::Worker>)
/// # -> Result<(), traforato_core::worker::WorkerError> {
/// use traforato_core::api::{CreateSandbox, Runtime};
///
/// let sandbox = worker.create(CreateSandbox::new("host")).await?;
/// sandbox.files().write("/workspace/in.txt", "6 7").await?;
/// let out = sandbox.exec("cat /workspace/in.txt").await?;
/// assert_eq!(out.stdout, "6 7");
/// let out = sandbox
///     .run_code(Runtime::Python, "a, b = open('/workspace/in.txt').read().split(); print(int(a) * int(b))")
///     .await?;
/// assert_eq!(out.stdout, "42\n");
/// sandbox.delete().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Sandbox {
    worker: Arc<Worker>,
    principal: Principal,
    id: SandboxId,
    created: Option<Arc<CreateSandboxResponse>>,
}

impl std::fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sandbox")
            .field("id", &self.id)
            .field("principal", &self.principal.client_id)
            .finish()
    }
}

impl Worker {
    /// Creates a sandbox on this worker (in dev mode: prod workers need
    /// [`Worker::create_as`]) and returns its handle. A worker keeping sandboxes of that kind
    /// warm hands out a ready one.
    pub async fn create(self: &Arc<Self>, spec: CreateSandbox) -> Result<Sandbox, WorkerError> {
        self.create_as(Principal::dev(), spec).await
    }

    /// Creates a sandbox owned by `principal` and returns its handle.
    pub async fn create_as(
        self: &Arc<Self>,
        principal: Principal,
        spec: CreateSandbox,
    ) -> Result<Sandbox, WorkerError> {
        let outcome = self
            .create_sandbox(&principal, spec.into_request(), Placement::default())
            .await?;
        let created = match outcome {
            CreateOutcome::Created(created) => created,
            // Only a create that names a warm sandbox goes back to the broker.
            CreateOutcome::RetryPlacement { .. } => {
                return Err(WorkerError::UnableToRetryPlacement)
            }
        };
        // Never fails: the worker formats its own ids.
        let id = SandboxId::parse(&created.sandbox_id).map_err(|_| WorkerError::SandboxNotFound)?;
        Ok(Sandbox {
            worker: self.clone(),
            principal,
            id,
            created: Some(Arc::new(created)),
        })
    }

    /// The handle of an existing sandbox that `principal` may use.
    pub fn attach(
        self: &Arc<Self>,
        principal: Principal,
        id: SandboxId,
    ) -> Result<Sandbox, WorkerError> {
        self.check_sandbox(&principal, &id)?;
        Ok(Sandbox {
            worker: self.clone(),
            principal,
            id,
            created: None,
        })
    }
}

/// A path given as text.
fn sandbox_path(path: &str) -> Result<SandboxPath, WorkerError> {
    SandboxPath::parse(path).map_err(WorkerError::InvalidPath)
}

impl Sandbox {
    /// Its id.
    pub fn id(&self) -> &SandboxId {
        &self.id
    }

    /// What the create answered (`None` for a handle from [`Worker::attach`]).
    pub fn created_info(&self) -> Option<&CreateSandboxResponse> {
        self.created.as_deref()
    }

    /// Its image, cores, memory and times.
    pub fn info(&self) -> Result<SandboxResponse, WorkerError> {
        self.worker.get_sandbox(&self.principal, &self.id)
    }

    /// Runs a command to completion: a string runs through `/bin/sh -c`, a [`Command`] as it
    /// says (its stdin is closed after what it gives, even when interactive). A non-zero exit
    /// is an output, not an error. What the sandbox keeps of an exec's output is bounded
    /// (the latest 8 MiB): for more, read [`Execution::frames`] as they come.
    pub async fn exec(&self, command: impl Into<Command>) -> Result<ExecOutput, WorkerError> {
        let command = command.into();
        let interactive = command.as_request().interactive;
        let execution = self.spawn(command).await?;
        if interactive {
            match execution.close_stdin().await {
                Ok(()) | Err(WorkerError::ExecExited | WorkerError::StdinClosed) => {}
                Err(error) => return Err(error),
            }
        }
        execution.wait().await
    }

    /// Starts a command and returns at once; follow it with the [`Execution`].
    pub async fn spawn(&self, command: impl Into<Command>) -> Result<Execution, WorkerError> {
        let request = command.into().as_request().clone();
        let exec_id = self
            .worker
            .start_exec(&self.principal, &self.id, request)
            .await?;
        Ok(self.execution(exec_id))
    }

    /// A handle on one of its execs.
    pub fn execution(&self, exec_id: ExecId) -> Execution {
        Execution {
            sandbox: self.clone(),
            exec_id,
        }
    }

    /// Runs `code` in `runtime` and waits for it (30 s at most by default).
    pub async fn run_code(
        &self,
        runtime: Runtime,
        code: impl Into<String>,
    ) -> Result<RunCodeOutput, WorkerError> {
        self.run_code_with(RunCode::new(runtime, code)).await
    }

    /// Runs code with options and waits for it. Code that does not compile is an output with
    /// `syntax_error` set, not an error.
    pub async fn run_code_with(&self, code: RunCode) -> Result<RunCodeOutput, WorkerError> {
        let outcome = self
            .worker
            .run_code(&self.principal, &self.id, code.to_request(true))
            .await?;
        match outcome {
            RunCodeOutcome::Finished(done) => Ok(done.into()),
            RunCodeOutcome::SyntaxError(body) => Ok(body.into()),
            // A waiting run is answered when it ends; this one did not wait.
            RunCodeOutcome::Accepted(exec_id) => Err(WorkerError::Backend(BackendError::task(
                "run-code",
                format!("{exec_id} did not wait for its result"),
            ))),
        }
    }

    /// Its files.
    pub fn files(&self) -> Files<'_> {
        Files { sandbox: self }
    }

    /// A byte stream to `port` inside the sandbox (what the HTTP proxy forwards over).
    pub async fn connect_port(&self, port: u16) -> Result<BoxedStream, WorkerError> {
        self.worker
            .connect_port(&self.principal, &self.id, port)
            .await
    }

    /// Keeps it alive for `ttl` from now (at most the worker's longest TTL); returns the new
    /// expiry.
    pub fn renew(&self, ttl: Duration) -> Result<DateTime<Utc>, WorkerError> {
        self.worker
            .renew_lease(&self.principal, &self.id, ttl)
            .map(|lease| lease.expires_at)
    }

    /// Destroys it: its processes, mounts, cgroup and files go.
    pub async fn delete(&self) -> Result<(), WorkerError> {
        self.worker.delete_sandbox(&self.principal, &self.id).await
    }
}

/// A command running (or finished) in a [`Sandbox`].
#[derive(Debug, Clone)]
pub struct Execution {
    sandbox: Sandbox,
    exec_id: ExecId,
}

impl Execution {
    /// The exec's id.
    pub fn id(&self) -> &ExecId {
        &self.exec_id
    }

    /// Its record: status, exit code, times.
    pub fn record(&self) -> Result<ExecRecord, WorkerError> {
        let s = &self.sandbox;
        s.worker.get_exec(&s.principal, &s.id, &self.exec_id)
    }

    /// Its output frames from the start, as they come; ends after the exit frame.
    pub fn frames(&self) -> Result<FrameStream, WorkerError> {
        let s = &self.sandbox;
        s.worker
            .exec_frame_stream(&s.principal, &s.id, &self.exec_id, 0)
    }

    /// Writes to its stdin (started [`Command::interactive`]).
    pub async fn send_stdin(&self, data: impl Into<Bytes>) -> Result<(), WorkerError> {
        let data = data.into();
        if data.is_empty() {
            return Ok(());
        }
        let s = &self.sandbox;
        s.worker
            .write_exec_stdin(&s.principal, &s.id, &self.exec_id, data)
            .await
    }

    /// Closes its stdin (end of file).
    pub async fn close_stdin(&self) -> Result<(), WorkerError> {
        let s = &self.sandbox;
        s.worker
            .write_exec_stdin(&s.principal, &s.id, &self.exec_id, Bytes::new())
            .await
    }

    /// Signals its process group.
    pub async fn signal(&self, signal: ExecSignal) -> Result<(), WorkerError> {
        let s = &self.sandbox;
        s.worker
            .signal_exec(&s.principal, &s.id, &self.exec_id, signal)
            .await
    }

    /// Waits until it exits and returns everything it wrote.
    pub async fn wait(&self) -> Result<ExecOutput, WorkerError> {
        let mut frames = self.frames()?;
        let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
        while let Some(output) = frames.next_output().await {
            match output.frame.kind {
                FrameKind::Stdout => stdout.extend_from_slice(output.bytes()),
                FrameKind::Stderr => stderr.extend_from_slice(output.bytes()),
                FrameKind::Exit => {
                    return Ok(ExecOutput {
                        exec_id: self.exec_id.to_string(),
                        stdout: String::from_utf8_lossy(&stdout).into_owned(),
                        stderr: String::from_utf8_lossy(&stderr).into_owned(),
                        exit_code: frame_exit_code(&output.frame).unwrap_or(-1),
                    })
                }
            }
        }
        // The frames ended without an exit: the sandbox went away under the exec.
        Err(WorkerError::SandboxNotFound)
    }
}

/// The files of a [`Sandbox`]. Paths are absolute (`/workspace/a.txt`); `..` cannot leave the
/// sandbox.
#[derive(Debug, Clone, Copy)]
pub struct Files<'a> {
    sandbox: &'a Sandbox,
}

impl Files<'_> {
    /// Writes `content` to `path` (creating its parent directories), replacing the file.
    /// Returns the bytes written.
    pub async fn write(&self, path: &str, content: impl Into<Vec<u8>>) -> Result<u64, WorkerError> {
        self.put(path, content.into(), WriteMode::Replace).await
    }

    /// Appends `content` to `path` (creating it).
    pub async fn append(
        &self,
        path: &str,
        content: impl Into<Vec<u8>>,
    ) -> Result<u64, WorkerError> {
        self.put(path, content.into(), WriteMode::Append).await
    }

    async fn put(&self, path: &str, content: Vec<u8>, mode: WriteMode) -> Result<u64, WorkerError> {
        let s = self.sandbox;
        let path = sandbox_path(path)?;
        let reader = Box::new(std::io::Cursor::new(content));
        let written = s
            .worker
            .write_file(&s.principal, &s.id, &path, reader, mode)
            .await?;
        Ok(written.bytes_written)
    }

    /// The whole content of the file at `path`, whatever its size.
    pub async fn read(&self, path: &str) -> Result<Vec<u8>, WorkerError> {
        let s = self.sandbox;
        let path = sandbox_path(path)?;
        let file = s.worker.open_file(&s.principal, &s.id, &path).await?;
        let mut content = Vec::with_capacity(usize::try_from(file.size).unwrap_or(0));
        let mut body = file.body;
        body.read_to_end(&mut content)
            .await
            .map_err(|e| WorkerError::Backend(BackendError::io("read file", e)))?;
        Ok(content)
    }

    /// The file at `path` as text (bytes that are not UTF-8 read as U+FFFD).
    pub async fn read_text(&self, path: &str) -> Result<String, WorkerError> {
        let content = self.read(path).await?;
        Ok(String::from_utf8_lossy(&content).into_owned())
    }

    /// Whether `path` exists, its kind, size and modification time.
    pub async fn stat(&self, path: &str) -> Result<StatResponse, WorkerError> {
        let s = self.sandbox;
        let path = sandbox_path(path)?;
        s.worker.stat_file(&s.principal, &s.id, &path).await
    }

    /// The entries directly in the directory `path`, sorted by path.
    pub async fn list(&self, path: &str) -> Result<Vec<ListEntry>, WorkerError> {
        self.list_all(path, false).await
    }

    /// Every entry below the directory `path`, sorted by path.
    pub async fn walk(&self, path: &str) -> Result<Vec<ListEntry>, WorkerError> {
        self.list_all(path, true).await
    }

    async fn list_all(&self, path: &str, recursive: bool) -> Result<Vec<ListEntry>, WorkerError> {
        let s = self.sandbox;
        let path = sandbox_path(path)?;
        // One walk (the backend bounds it), not one per page.
        let options = ListOptions {
            recursive,
            limit: usize::MAX,
            cursor: 0,
        };
        let page = s
            .worker
            .list_files(&s.principal, &s.id, &path, options)
            .await?;
        Ok(page.entries)
    }

    /// Creates the directory `path` and its missing parents; false when it existed.
    pub async fn mkdir(&self, path: &str) -> Result<bool, WorkerError> {
        let s = self.sandbox;
        let path = sandbox_path(path)?;
        let made = s.worker.mkdir(&s.principal, &s.id, &path, true).await?;
        Ok(made.created)
    }

    /// Removes the file or directory (with its contents) at `path`.
    pub async fn remove(&self, path: &str) -> Result<(), WorkerError> {
        let s = self.sandbox;
        let path = sandbox_path(path)?;
        let options = RemoveOptions {
            recursive: true,
            force: false,
        };
        s.worker
            .remove_file(&s.principal, &s.id, &path, options)
            .await
    }
}
