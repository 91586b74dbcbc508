//! Integration tests of the `container` backend on the real host: isolation, limits, exec,
//! run-code, files, connect and cleanup. They need root (CI runs them as root) and skip with a
//! message otherwise.
#![cfg(all(target_os = "linux", feature = "runtime"))]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use traforato_core::backend::container::{ContainerBackend, ContainerConfig};
use traforato_core::backend::{
    BackendError, CodeOutcome, CodeSpec, ExecExit, ExecSpec, FileKind, FilesError, OutputChunk,
    OutputStream, Program, ProvisionSpec, Runtime, Vm, VmBackend, WriteMode,
};
use traforato_core::id::LocalVmId;
use traforato_core::path::SandboxPath;
use traforato_core::tuple::SandboxTuple;

/// A backend with its own state dir and cgroup parent, removed on drop.
struct Harness {
    backend: Option<ContainerBackend>,
    state_dir: PathBuf,
}

impl Harness {
    fn config(tag: &str) -> ContainerConfig {
        let id = uuid::Uuid::new_v4().simple().to_string();
        ContainerConfig {
            state_dir: std::env::temp_dir().join(format!("traforato-test-{tag}-{}", &id[..8])),
            cgroup_parent: format!("traforato-test-{}", &id[..12]),
            init_program: PathBuf::from(env!("CARGO_BIN_EXE_traforato-sandbox-init")),
            pids_limit: 64,
            ..ContainerConfig::default()
        }
    }

    /// `None` (after saying why) when the host cannot run the backend.
    fn new(tag: &str) -> Option<Self> {
        Self::with_config(Self::config(tag))
    }

    fn with_config(config: ContainerConfig) -> Option<Self> {
        if !rustix::process::geteuid().is_root() {
            eprintln!("skipping: needs root (runs in CI as root)");
            return None;
        }
        let state_dir = config.state_dir.clone();
        match ContainerBackend::new(config) {
            Ok(backend) => Some(Self {
                backend: Some(backend),
                state_dir,
            }),
            Err(BackendError::Unavailable(why)) => {
                eprintln!("skipping: container backend unavailable here: {why}");
                let _ = std::fs::remove_dir_all(&state_dir);
                None
            }
            Err(e) => panic!("backend failed to start: {e}"),
        }
    }

    fn backend(&self) -> &ContainerBackend {
        self.backend.as_ref().expect("backend")
    }

    async fn provision(&self, memory_mib: u64) -> Arc<dyn Vm> {
        self.provision_image("host", memory_mib)
            .await
            .expect("provision")
    }

    async fn provision_image(
        &self,
        image: &str,
        memory_mib: u64,
    ) -> Result<Arc<dyn Vm>, BackendError> {
        self.backend()
            .provision(ProvisionSpec {
                vm_id: LocalVmId::new_random(),
                tuple: SandboxTuple::normalize("container", image, 1, "container"),
                memory_mib,
            })
            .await
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        if let Some(backend) = self.backend.take() {
            let _ = backend.remove_cgroup_parents();
        }
        let _ = std::fs::remove_dir_all(&self.state_dir);
    }
}

/// Output of a finished command.
struct Ran {
    exit: ExecExit,
    stdout: String,
    stderr: String,
}

fn shell(line: &str) -> ExecSpec {
    ExecSpec {
        program: Program::Shell(line.to_string()),
        cwd: None,
        env: BTreeMap::new(),
        stdin: None,
        timeout: Duration::from_secs(30),
    }
}

async fn run_spec(vm: &Arc<dyn Vm>, spec: ExecSpec) -> Result<Ran, BackendError> {
    let (tx, mut rx) = mpsc::channel::<OutputChunk>(64);
    let collect = tokio::spawn(async move {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        while let Some(chunk) = rx.recv().await {
            match chunk.stream {
                OutputStream::Stdout => out.extend_from_slice(&chunk.data),
                OutputStream::Stderr => err.extend_from_slice(&chunk.data),
            }
        }
        (out, err)
    });
    let exit = vm.exec(spec, tx).await;
    let (out, err) = collect.await.unwrap();
    exit.map(|exit| Ran {
        exit,
        stdout: String::from_utf8_lossy(&out).into_owned(),
        stderr: String::from_utf8_lossy(&err).into_owned(),
    })
}

async fn sh(vm: &Arc<dyn Vm>, line: &str) -> Ran {
    run_spec(vm, shell(line)).await.expect("exec")
}

fn path(p: &str) -> SandboxPath {
    SandboxPath::parse(p).unwrap()
}

async fn write(vm: &Arc<dyn Vm>, p: &str, content: &str) -> Result<u64, FilesError> {
    let reader: traforato_core::backend::BoxedReader =
        Box::new(std::io::Cursor::new(content.as_bytes().to_vec()));
    vm.write_file(&path(p), reader, WriteMode::Replace).await
}

async fn read(vm: &Arc<dyn Vm>, p: &str) -> Result<String, FilesError> {
    let mut file = vm.read_file(&path(p)).await?;
    let mut s = String::new();
    file.body.read_to_string(&mut s).await.unwrap();
    Ok(s)
}

/// Mount points strictly below `dir` in this process's mount namespace.
fn mounts_below(dir: &Path) -> Vec<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let prefix = format!("{}/", dir.display());
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| m.starts_with(&prefix))
        .map(str::to_string)
        .collect()
}

/// Host pids whose cgroup path names `vm_id`.
fn processes_of(vm_id: &LocalVmId) -> Vec<i32> {
    let needle = vm_id.to_string();
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if let Ok(cg) = std::fs::read_to_string(format!("/proc/{pid}/cgroup")) {
            if cg.contains(&needle) {
                pids.push(pid);
            }
        }
    }
    pids
}

/// Asserts that nothing of `vm_id` is left on the host.
fn assert_no_leftovers(h: &Harness, vm_id: &LocalVmId) {
    let dir = h.state_dir.join(vm_id.to_string());
    assert!(!dir.exists(), "state dir {} still exists", dir.display());
    assert!(
        mounts_below(&h.state_dir).is_empty(),
        "mounts left: {:?}",
        mounts_below(&h.state_dir)
    );
    for cg in h.backend().cgroup_dirs(vm_id) {
        assert!(!cg.exists(), "cgroup {} still exists", cg.display());
    }
    assert!(processes_of(vm_id).is_empty(), "processes left");
}

#[tokio::test]
async fn provision_exec_files_destroy_leaves_nothing() {
    let Some(h) = Harness::new("basic") else {
        return;
    };
    let vm = h.provision(256).await;
    let id = vm.vm_id();
    let ran = sh(&vm, "echo hello; echo oops >&2; pwd; id -u; exit 3").await;
    assert_eq!(ran.exit.exit_code, 3);
    assert!(!ran.exit.timed_out);
    assert_eq!(ran.stdout, "hello\n/workspace\n0\n");
    assert_eq!(ran.stderr, "oops\n");

    assert_eq!(write(&vm, "/workspace/a.txt", "Hello").await.unwrap(), 5);
    assert_eq!(sh(&vm, "cat /workspace/a.txt").await.stdout, "Hello");
    vm.destroy().await.unwrap();
    vm.destroy().await.unwrap();
    assert!(matches!(
        run_spec(&vm, shell("true")).await,
        Err(BackendError::Gone)
    ));
    assert!(matches!(
        vm.stat(&path("/")).await,
        Err(FilesError::Gone)
    ));
    assert_no_leftovers(&h, &id);
}
