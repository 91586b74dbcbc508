//! The backend conformance suite: one set of checks every [`VmBackend`] must pass, so that a
//! new backend needs only its primitives and a test that runs [`Suite::run`].
//!
//! The checks: exec streams stdout and stderr apart and reports exit codes; a timeout kills
//! the command (124); stdin reaches it; run-code prints and reports syntax errors; the files
//! API keeps its contract (parents created, kinds, sizes, listing, the error of each misuse);
//! files and exec see the same filesystem; paths and symlinks stay inside the sandbox;
//! symlinks are followed as a read follows them and odd names survive a listing; a port
//! nobody listens on refuses; destroy is idempotent and leaves nothing. A backend declares
//! what it cannot do in [`Capabilities`] (the `fake` test double runs no real shell, say), and
//! how to see what a destroyed sandbox left on its host ([`Capabilities::leftovers`]: mounts
//! and cgroups for containers, `vetu list` for VMs).
//!
//! ```no_run
//! # async fn demo(backend: std::sync::Arc<dyn traforato_core::backend::VmBackend>) {
//! use traforato_core::backend::conformance::{Capabilities, Suite};
//!
//! let passed = Suite::new(backend, "my-image", Capabilities::real())
//!     .run()
//!     .await
//!     .unwrap_or_else(|failure| panic!("{failure}"));
//! println!("{} checks passed", passed.len());
//! # }
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use super::{
    run_collected, BackendError, CodeOutcome, CodeSpec, Collected, ExecExit, ExecSpec, FileKind,
    FilesError, OutputChunk, OutputStream, Program, ProvisionSpec, Runtime, Vm, VmBackend,
    WriteMode,
};
use crate::id::LocalVmId;
use crate::path::SandboxPath;
use crate::tuple::SandboxTuple;

/// Lists what a destroyed sandbox left on its host (empty: nothing).
pub type LeftoverCheck = Arc<dyn Fn(&LocalVmId) -> Vec<String> + Send + Sync>;

/// What a backend can do; checks that need more are skipped (and named as skipped).
#[derive(Clone)]
pub struct Capabilities {
    /// Commands run in a POSIX shell: pipes, redirections, `$VAR`, `cd`.
    pub shell: bool,
    /// `python3` runs code for real (`print(6 * 7)` prints 42).
    pub interpreters: bool,
    /// The files API and exec see the same filesystem.
    pub shared_files: bool,
    /// What a destroyed sandbox left on the host; `None`: not checked.
    pub leftovers: Option<LeftoverCheck>,
}

impl Capabilities {
    /// A backend of real sandboxes: every check applies (add [`Capabilities::leftovers`]).
    pub fn real() -> Self {
        Self {
            shell: true,
            interpreters: true,
            shared_files: true,
            leftovers: None,
        }
    }

    /// With a check of what destroyed sandboxes leave behind.
    pub fn with_leftovers(
        mut self,
        check: impl Fn(&LocalVmId) -> Vec<String> + Send + Sync + 'static,
    ) -> Self {
        self.leftovers = Some(Arc::new(check));
        self
    }
}

/// A failed check.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("conformance check {check} failed: {message}")]
pub struct Failure {
    /// The check.
    pub check: &'static str,
    /// What was wrong.
    pub message: String,
}

/// The outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// It passed.
    Passed(&'static str),
    /// It does not apply to the backend's [`Capabilities`].
    Skipped(&'static str),
}

/// The suite, for one backend and image.
pub struct Suite {
    backend: Arc<dyn VmBackend>,
    tuple: SandboxTuple,
    capabilities: Capabilities,
}

type Check = Result<(), String>;

/// `Err(message)` unless `cond`.
fn ensure(cond: bool, message: impl FnOnce() -> String) -> Check {
    if cond {
        Ok(())
    } else {
        Err(message())
    }
}

/// The text of what a command printed on stdout.
fn stdout(ran: &Collected) -> String {
    String::from_utf8_lossy(&ran.stdout).into_owned()
}

fn shell(line: &str) -> ExecSpec {
    ExecSpec::shell(line)
}

async fn run(vm: &dyn Vm, spec: ExecSpec) -> Result<Collected, String> {
    run_collected(vm, spec)
        .await
        .map_err(|e| format!("exec failed: {e}"))
}

async fn code(vm: &dyn Vm, source: &str) -> Result<(CodeOutcome, String), String> {
    let spec = CodeSpec {
        runtime: Runtime::Python,
        code: source.to_string(),
        cwd: None,
        env: BTreeMap::new(),
        timeout: Duration::from_secs(30),
    };
    let (tx, mut rx) = mpsc::channel::<OutputChunk>(64);
    let collect = async {
        let mut stdout = Vec::new();
        while let Some(chunk) = rx.recv().await {
            if chunk.stream == OutputStream::Stdout {
                stdout.extend_from_slice(&chunk.data);
            }
        }
        stdout
    };
    let (outcome, stdout) = tokio::join!(vm.run_code(spec, tx), collect);
    let outcome = outcome.map_err(|e| format!("run_code failed: {e}"))?;
    Ok((outcome, String::from_utf8_lossy(&stdout).into_owned()))
}

fn path(raw: &str) -> SandboxPath {
    SandboxPath::parse(raw).expect("a valid path")
}

async fn write(vm: &dyn Vm, at: &str, content: &[u8], mode: WriteMode) -> Result<u64, FilesError> {
    let reader = Box::new(std::io::Cursor::new(content.to_vec()));
    vm.write_file(&path(at), reader, mode).await
}

async fn read(vm: &dyn Vm, at: &str) -> Result<Vec<u8>, String> {
    let mut file = vm
        .read_file(&path(at))
        .await
        .map_err(|e| format!("read {at}: {e}"))?;
    let mut content = Vec::new();
    file.body
        .read_to_end(&mut content)
        .await
        .map_err(|e| format!("read {at}: {e}"))?;
    Ok(content)
}

impl Suite {
    /// The suite for sandboxes of `image` (1 cpu, 256 MiB) of `backend`.
    pub fn new(backend: Arc<dyn VmBackend>, image: &str, capabilities: Capabilities) -> Self {
        let virtualization = backend.virtualization().to_string();
        Self {
            tuple: SandboxTuple::normalize(&virtualization, image, 1, &virtualization),
            backend,
            capabilities,
        }
    }

    async fn provision(&self) -> Result<Arc<dyn Vm>, Failure> {
        let spec = ProvisionSpec {
            vm_id: LocalVmId::new_random(),
            tuple: self.tuple.clone(),
            memory_mib: 256,
            warm: false,
        };
        let vm = self.backend.provision(spec).await.map_err(|e| Failure {
            check: "provision",
            message: e.to_string(),
        })?;
        vm.settle().await;
        Ok(vm)
    }

    /// Runs every check on one sandbox (and destroy on a second); the first failure stops it.
    /// Returns what passed and what was skipped.
    pub async fn run(&self) -> Result<Vec<Outcome>, Failure> {
        let vm = self.provision().await?;
        let result = self.checks(vm.as_ref()).await;
        let destroyed = vm.destroy().await;
        let mut outcomes = result?;
        destroyed.map_err(|e| Failure {
            check: "destroy",
            message: e.to_string(),
        })?;
        let vm = self.provision().await?;
        outcomes.push(
            self.wrap("destroy_leaves_nothing", true, self.destroy(vm))
                .await?,
        );
        Ok(outcomes)
    }

    async fn wrap(
        &self,
        check: &'static str,
        applies: bool,
        body: impl std::future::Future<Output = Check>,
    ) -> Result<Outcome, Failure> {
        if !applies {
            return Ok(Outcome::Skipped(check));
        }
        body.await
            .map(|()| Outcome::Passed(check))
            .map_err(|message| Failure { check, message })
    }

    async fn checks(&self, vm: &dyn Vm) -> Result<Vec<Outcome>, Failure> {
        let caps = &self.capabilities;
        let real = caps.shell && caps.shared_files;
        Ok(vec![
            self.wrap("exec_output_and_exit_codes", true, exec_basics(vm))
                .await?,
            self.wrap("exec_streams_apart", caps.shell, exec_streams(vm))
                .await?,
            self.wrap("exec_argv_env_cwd", caps.shell, exec_argv_env_cwd(vm))
                .await?,
            self.wrap("exec_stdin", true, exec_stdin(vm)).await?,
            self.wrap("exec_timeout", true, exec_timeout(vm)).await?,
            self.wrap("run_code", true, run_code(vm, caps.interpreters))
                .await?,
            self.wrap("files_contract", true, files_contract(vm))
                .await?,
            self.wrap("files_shared_with_exec", real, files_shared(vm))
                .await?,
            self.wrap("paths_stay_inside", real, paths_stay_inside(vm))
                .await?,
            self.wrap("links_and_odd_names", real, links_and_odd_names(vm))
                .await?,
            self.wrap("closed_port_refuses", true, closed_port(vm))
                .await?,
        ])
    }

    async fn destroy(&self, vm: Arc<dyn Vm>) -> Check {
        let id = vm.vm_id();
        vm.destroy().await.map_err(|e| format!("destroy: {e}"))?;
        vm.destroy()
            .await
            .map_err(|e| format!("a second destroy failed: {e}"))?;
        let after = run(vm.as_ref(), shell("echo still here")).await;
        ensure(
            !matches!(&after, Ok(ran) if ran.exit.exit_code == 0),
            || "a destroyed sandbox still runs commands".to_string(),
        )?;
        if let Some(leftovers) = &self.capabilities.leftovers {
            let left = leftovers(&id);
            ensure(left.is_empty(), || format!("left behind: {left:?}"))?;
        }
        Ok(())
    }
}

async fn exec_basics(vm: &dyn Vm) -> Check {
    let ran = run(vm, shell("echo conformance")).await?;
    ensure(
        stdout(&ran) == "conformance\n" && ran.exit.exit_code == 0 && !ran.exit.timed_out,
        || format!("echo printed {:?}, exit {:?}", stdout(&ran), ran.exit),
    )?;
    let ran = run(vm, shell("exit 3")).await?;
    ensure(ran.exit.exit_code == 3, || {
        format!("`exit 3` exited {}", ran.exit.exit_code)
    })
}

async fn exec_streams(vm: &dyn Vm) -> Check {
    let ran = run(vm, shell("echo out; echo err >&2; exit 7")).await?;
    ensure(
        ran.stdout == b"out\n" && ran.stderr == b"err\n" && ran.exit.exit_code == 7,
        || {
            format!(
                "stdout {:?}, stderr {:?}, exit {}",
                stdout(&ran),
                String::from_utf8_lossy(&ran.stderr),
                ran.exit.exit_code
            )
        },
    )
}

async fn exec_argv_env_cwd(vm: &dyn Vm) -> Check {
    let mut spec = shell("");
    spec.program = Program::Argv(vec![
        "sh".into(),
        "-c".into(),
        "printf '%s|%s|%s' \"$1\" \"$CONFORMANCE\" \"$(pwd)\"".into(),
        "sh".into(),
        "a b; $(true)".into(),
    ]);
    spec.env.insert("CONFORMANCE".into(), "yes".into());
    spec.cwd = Some("/tmp".into());
    let ran = run(vm, spec).await?;
    ensure(stdout(&ran) == "a b; $(true)|yes|/tmp", || {
        format!("argv/env/cwd printed {:?}", stdout(&ran))
    })
}

async fn exec_stdin(vm: &dyn Vm) -> Check {
    let mut spec = shell("cat");
    spec.stdin = Some(Bytes::from_static(b"from stdin\n"));
    let ran = run(vm, spec).await?;
    ensure(stdout(&ran) == "from stdin\n", || {
        format!("cat of stdin printed {:?}", stdout(&ran))
    })
}

async fn exec_timeout(vm: &dyn Vm) -> Check {
    let mut spec = shell("sleep 30");
    spec.timeout = Duration::from_millis(300);
    let started = Instant::now();
    let ran = run(vm, spec).await?;
    let took = started.elapsed();
    ensure(
        ran.exit.exit_code == 124 && ran.exit.timed_out && took < Duration::from_secs(10),
        || format!("a timed-out sleep ended {:?} after {took:?}", ran.exit),
    )
}

async fn run_code(vm: &dyn Vm, interpreters: bool) -> Check {
    let (outcome, stdout) = code(vm, "print(\"conformance\")").await?;
    ensure(
        matches!(
            outcome,
            CodeOutcome::Finished(ExecExit { exit_code: 0, .. })
        ) && stdout == "conformance\n",
        || format!("print ran as {outcome:?}, printed {stdout:?}"),
    )?;
    let (outcome, stdout) = code(vm, "print(\"never\"").await?;
    ensure(
        matches!(&outcome, CodeOutcome::SyntaxError { message, .. } if !message.is_empty())
            && stdout.is_empty(),
        || format!("a syntax error ran as {outcome:?}, printed {stdout:?}"),
    )?;
    if interpreters {
        let (outcome, stdout) = code(vm, "import sys\nprint(6 * 7)\nsys.exit(5)").await?;
        ensure(
            matches!(
                outcome,
                CodeOutcome::Finished(ExecExit { exit_code: 5, .. })
            ) && stdout == "42\n",
            || format!("python ran as {outcome:?}, printed {stdout:?}"),
        )?;
    }
    Ok(())
}

/// A misuse of the files API, its result, and whether that is the error it must be.
type Misuse = (
    &'static str,
    Result<(), FilesError>,
    fn(&FilesError) -> bool,
);

async fn files_contract(vm: &dyn Vm) -> Check {
    let n = write(
        vm,
        "/workspace/conf/deep/a.txt",
        b"hello",
        WriteMode::Replace,
    )
    .await
    .map_err(|e| format!("write with missing parents: {e}"))?;
    ensure(n == 5, || format!("wrote {n} bytes of 5"))?;
    write(
        vm,
        "/workspace/conf/deep/a.txt",
        b" world",
        WriteMode::Append,
    )
    .await
    .map_err(|e| format!("append: {e}"))?;
    let content = read(vm, "/workspace/conf/deep/a.txt").await?;
    ensure(content == b"hello world", || {
        format!("read back {:?}", String::from_utf8_lossy(&content))
    })?;
    let stat = vm
        .stat(&path("/workspace/conf/deep/a.txt"))
        .await
        .map_err(|e| format!("stat: {e}"))?;
    ensure(
        matches!(&stat, Some(s) if s.kind == FileKind::File && s.size == 11),
        || format!("stat of an 11-byte file: {stat:?}"),
    )?;
    let stat = vm
        .stat(&path("/workspace/conf/deep"))
        .await
        .map_err(|e| format!("stat: {e}"))?;
    ensure(
        matches!(&stat, Some(s) if s.kind == FileKind::Directory),
        || format!("stat of a directory: {stat:?}"),
    )?;
    let missing = vm
        .stat(&path("/workspace/conf/none"))
        .await
        .map_err(|e| format!("stat: {e}"))?;
    ensure(missing.is_none(), || {
        format!("stat of nothing: {missing:?}")
    })?;

    let made = vm
        .mkdir(&path("/workspace/conf/dir"), false)
        .await
        .map_err(|e| format!("mkdir: {e}"))?;
    let again = vm
        .mkdir(&path("/workspace/conf/dir"), false)
        .await
        .map_err(|e| format!("mkdir again: {e}"))?;
    ensure(made && !again, || {
        format!("mkdir said created {made}, then {again}")
    })?;
    let children = vm
        .list_dir(&path("/workspace/conf"), false)
        .await
        .map_err(|e| format!("list: {e}"))?;
    let mut names: Vec<String> = children.iter().map(|e| e.path.to_string()).collect();
    names.sort();
    ensure(
        names == ["/workspace/conf/deep", "/workspace/conf/dir"],
        || format!("children of /workspace/conf: {names:?}"),
    )?;
    let all = vm
        .list_dir(&path("/workspace/conf"), true)
        .await
        .map_err(|e| format!("recursive list: {e}"))?;
    ensure(
        all.iter().any(|e| {
            e.path.to_string() == "/workspace/conf/deep/a.txt"
                && e.kind == FileKind::File
                && e.size == 11
        }),
        || format!("the recursive listing misses a.txt: {all:?}"),
    )?;

    let misuse: Vec<Misuse> = vec![
        (
            "read of a missing file",
            vm.read_file(&path("/workspace/conf/none")).await.map(drop),
            |e| matches!(e, FilesError::NotFound),
        ),
        (
            "read of a directory",
            vm.read_file(&path("/workspace/conf/dir")).await.map(drop),
            |e| matches!(e, FilesError::IsDirectory),
        ),
        (
            "write below a file",
            write(vm, "/workspace/conf/deep/a.txt/x", b"x", WriteMode::Replace)
                .await
                .map(drop),
            |e| matches!(e, FilesError::NotDirectory),
        ),
        (
            "write over a directory",
            write(vm, "/workspace/conf/dir", b"x", WriteMode::Replace)
                .await
                .map(drop),
            |e| matches!(e, FilesError::IsDirectory),
        ),
        (
            "mkdir without its parent",
            vm.mkdir(&path("/workspace/conf/no/child"), false)
                .await
                .map(drop),
            |e| matches!(e, FilesError::ParentNotFound),
        ),
        (
            "list of a file",
            vm.list_dir(&path("/workspace/conf/deep/a.txt"), false)
                .await
                .map(drop),
            |e| matches!(e, FilesError::NotDirectory),
        ),
        (
            "list of nothing",
            vm.list_dir(&path("/workspace/conf/none"), false)
                .await
                .map(drop),
            |e| matches!(e, FilesError::NotFound),
        ),
        (
            "remove of a non-empty directory",
            vm.remove(&path("/workspace/conf/deep"), false).await,
            |e| matches!(e, FilesError::NotEmpty),
        ),
        (
            "remove of nothing",
            vm.remove(&path("/workspace/conf/none"), false).await,
            |e| matches!(e, FilesError::NotFound),
        ),
    ];
    for (what, result, expected) in misuse {
        match result {
            Err(e) if expected(&e) => {}
            other => return Err(format!("{what}: {other:?}")),
        }
    }
    vm.remove(&path("/workspace/conf"), true)
        .await
        .map_err(|e| format!("recursive remove: {e}"))?;
    let gone = vm
        .stat(&path("/workspace/conf"))
        .await
        .map_err(|e| format!("stat: {e}"))?;
    ensure(gone.is_none(), || {
        "a removed tree is still there".to_string()
    })
}

async fn files_shared(vm: &dyn Vm) -> Check {
    write(
        vm,
        "/workspace/shared.txt",
        b"from files",
        WriteMode::Replace,
    )
    .await
    .map_err(|e| format!("write: {e}"))?;
    let ran = run(
        vm,
        shell("cat /workspace/shared.txt; echo from exec > /tmp/e.txt"),
    )
    .await?;
    ensure(stdout(&ran) == "from files", || {
        format!("exec read {:?}", stdout(&ran))
    })?;
    let content = read(vm, "/tmp/e.txt").await?;
    ensure(content == b"from exec\n", || {
        format!("files read {:?}", String::from_utf8_lossy(&content))
    })
}

async fn paths_stay_inside(vm: &dyn Vm) -> Check {
    let marker = format!("traforato-conformance-{}", LocalVmId::new_random());
    let ran = run(
        vm,
        shell("ln -sfn ../../../../.. /workspace/up && ln -sfn / /workspace/root"),
    )
    .await?;
    ensure(ran.exit.exit_code == 0, || {
        format!("ln failed: {}", String::from_utf8_lossy(&ran.stderr))
    })?;
    for via in ["/workspace/up", "/workspace/root", "/workspace/../../.."] {
        let at = format!("{via}/tmp/{marker}");
        write(vm, &at, b"inside", WriteMode::Replace)
            .await
            .map_err(|e| format!("write through {via}: {e}"))?;
    }
    let host = std::path::Path::new("/tmp").join(&marker);
    ensure(!host.exists(), || {
        format!(
            "a write through a symlink reached the host: {}",
            host.display()
        )
    })?;
    let ran = run(vm, shell(&format!("cat /tmp/{marker}"))).await?;
    ensure(stdout(&ran) == "inside", || {
        format!("the file is not inside the sandbox: {:?}", stdout(&ran))
    })
}

async fn links_and_odd_names(vm: &dyn Vm) -> Check {
    let ran = run(
        vm,
        shell(
            "mkdir -p /workspace/odd/real && printf 12345 > '/workspace/odd/real/a b ' && \
             ln -s real /workspace/odd/link && ln -s 'real/a b ' /workspace/odd/filelink",
        ),
    )
    .await?;
    ensure(ran.exit.exit_code == 0, || {
        format!("setup failed: {}", String::from_utf8_lossy(&ran.stderr))
    })?;
    let through = vm
        .list_dir(&path("/workspace/odd/link"), false)
        .await
        .map_err(|e| format!("list through a symlink: {e}"))?;
    let names: Vec<String> = through.iter().map(|e| e.path.to_string()).collect();
    ensure(names == ["/workspace/odd/link/a b "], || {
        format!("a symlinked directory lists {names:?}")
    })?;
    let stat = vm
        .stat(&path("/workspace/odd/filelink"))
        .await
        .map_err(|e| format!("stat of a link: {e}"))?;
    ensure(
        matches!(&stat, Some(s) if s.kind == FileKind::File && s.size == 5),
        || format!("a link to a 5-byte file stats as {stat:?}"),
    )?;
    let content = read(vm, "/workspace/odd/filelink").await?;
    ensure(content == b"12345", || {
        format!(
            "read through a link gave {:?}",
            String::from_utf8_lossy(&content)
        )
    })
}

async fn closed_port(vm: &dyn Vm) -> Check {
    // A port in the dynamic range nothing in a fresh sandbox listens on.
    match tokio::time::timeout(Duration::from_secs(15), vm.connect(59_999)).await {
        Err(_) => Err("connect to a closed port hung".to_string()),
        Ok(Ok(mut stream)) => {
            // Some backends accept first and fail on use; the stream must not carry data.
            let _ = stream.write_all(b"ping").await;
            let mut buf = [0u8; 4];
            match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => Err("a closed port answered".to_string()),
                _ => Ok(()),
            }
        }
        Ok(Err(BackendError::ConnectFailed { .. } | BackendError::ConnectTimeout { .. })) => Ok(()),
        Ok(Err(other)) => Err(format!("connect failed with an unexpected error: {other}")),
    }
}
