//! Integration tests of the `container` backend on the real host: isolation, limits, exec,
//! run-code, files, connect and cleanup. They need root (CI runs them as root) and skip with a
//! message otherwise.
#![cfg(all(target_os = "linux", feature = "container"))]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use traforato_core::backend::container::{ContainerBackend, ContainerConfig};
use traforato_core::backend::{
    run_collected, BackendError, CodeOutcome, CodeSpec, ExecExit, ExecSpec, FileKind, FilesError,
    OutputChunk, OutputStream, Program, ProvisionSpec, Runtime, Vm, VmBackend, WriteMode,
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
        // Hermetic: unknown images are not pulled from the internet (tests/oci.rs pulls from
        // a registry on loopback).
        ContainerConfig::for_tests(
            &format!("test-{tag}"),
            env!("CARGO_BIN_EXE_traforato-sandbox-init"),
        )
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

    /// A sandbox provisioned and settled as the warm pool does it (its Python zygote warm).
    async fn provision(&self, memory_mib: u64) -> Arc<dyn Vm> {
        let vm = self
            .provision_spec("host", memory_mib, true)
            .await
            .expect("provision");
        vm.settle().await;
        vm
    }

    /// A sandbox provisioned as for a waiting create (a spare init if one is ready; its
    /// Python zygote started after its first Python run).
    async fn provision_cold(&self, memory_mib: u64) -> Arc<dyn Vm> {
        self.provision_spec("host", memory_mib, false)
            .await
            .expect("provision")
    }

    /// A cold create of `image`.
    async fn provision_image(
        &self,
        image: &str,
        memory_mib: u64,
    ) -> Result<Arc<dyn Vm>, BackendError> {
        self.provision_spec(image, memory_mib, false).await
    }

    async fn provision_spec(
        &self,
        image: &str,
        memory_mib: u64,
        warm: bool,
    ) -> Result<Arc<dyn Vm>, BackendError> {
        self.backend()
            .provision(ProvisionSpec {
                vm_id: LocalVmId::new_random(),
                tuple: SandboxTuple::normalize("container", image, 1, "container"),
                memory_mib,
                warm,
            })
            .await
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        if let Some(backend) = self.backend.take() {
            // Also after a failed assertion: reclaim every sandbox of this harness. Drop runs
            // inside the test's runtime, so the async cleanup gets its own thread.
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                let _ = rt.block_on(backend.cleanup_leftovers());
                // Removes the spare inits too, then the cgroup parents.
                rt.block_on(backend.shutdown());
            })
            .join()
            .unwrap();
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
    ExecSpec::shell(line)
}

async fn run_spec(vm: &Arc<dyn Vm>, spec: ExecSpec) -> Result<Ran, BackendError> {
    let ran = run_collected(vm.as_ref(), spec).await?;
    Ok(Ran {
        exit: ran.exit,
        stdout: String::from_utf8_lossy(&ran.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&ran.stderr).into_owned(),
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

#[test]
fn state_dir_writable_by_others_is_refused() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipping: needs root (runs in CI as root)");
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let config = Harness::config("perm");
    std::fs::create_dir_all(&config.state_dir).unwrap();
    std::fs::set_permissions(&config.state_dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let state_dir = config.state_dir.clone();
    let cgroup_parent = config.cgroup_parent.clone();
    let result = ContainerBackend::new(config);
    let _ = std::fs::remove_dir_all(&state_dir);
    match result {
        Err(BackendError::Unavailable(why)) => {
            assert!(why.contains("not writable by group or others"), "{why}")
        }
        Err(e) => panic!("unexpected error: {e}"),
        Ok(_) => panic!("a world-writable state dir was accepted"),
    }
    // The refusal came before the cgroup parent was made.
    let leftovers: Vec<_> = std::fs::read_dir("/sys/fs/cgroup")
        .unwrap()
        .flatten()
        .map(|h| h.path().join(&cgroup_parent))
        .filter(|p| p.exists())
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
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
    assert!(matches!(vm.stat(&path("/")).await, Err(FilesError::Gone)));
    assert_no_leftovers(&h, &id);
}

#[tokio::test]
async fn argv_programs_and_errors() {
    let Some(h) = Harness::new("argv") else {
        return;
    };
    let vm = h.provision(256).await;
    let mut spec = shell("");
    spec.program = Program::Argv(vec![
        "printf".into(),
        "%s-%s".into(),
        "a b".into(),
        "c".into(),
    ]);
    spec.cwd = Some("/tmp".into());
    let ran = run_spec(&vm, spec).await.unwrap();
    assert_eq!(ran.stdout, "a b-c");
    let mut spec = shell("");
    spec.program = Program::Argv(vec!["no-such-program".into()]);
    match run_spec(&vm, spec).await {
        Err(BackendError::ExecFailed(m)) => assert!(m.contains("not found"), "{m}"),
        other => panic!("expected ExecFailed, got {:?}", other.map(|r| r.exit)),
    }
    let mut spec = shell("pwd");
    spec.cwd = Some("/nowhere".into());
    assert!(matches!(
        run_spec(&vm, spec).await,
        Err(BackendError::ExecFailed(_))
    ));
    // stdin is delivered, then closed; env reaches the command.
    let mut spec = shell("tr a-z A-Z; echo \"$GREETING\"");
    spec.stdin = Some(Bytes::from_static(b"hello\n"));
    spec.env.insert("GREETING".into(), "hi there".into());
    let ran = run_spec(&vm, spec).await.unwrap();
    assert_eq!(ran.stdout, "HELLO\nhi there\n");
    // Two commands at once.
    let slow = run_spec(&vm, shell("sleep 0.2; echo slow"));
    let fast = run_spec(&vm, shell("echo fast"));
    let (slow, fast) = tokio::join!(slow, fast);
    assert_eq!(slow.unwrap().stdout, "slow\n");
    assert_eq!(fast.unwrap().stdout, "fast\n");
    vm.destroy().await.unwrap();
}

#[tokio::test]
async fn sandbox_is_isolated_from_the_host() {
    let Some(h) = Harness::new("iso") else {
        return;
    };
    let marker = format!("traforato-marker-{}", uuid::Uuid::new_v4().simple());
    let host_marker = std::env::temp_dir().join(&marker);
    std::fs::write(&host_marker, "host").unwrap();
    let vm = h.provision(256).await;

    // Only the sandbox's own processes are visible, and the agent is pid 1 (then the Python
    // zygote, sh, ls and grep).
    let ran = sh(&vm, "ls /proc | grep -E '^[0-9]+$'").await;
    let pids: Vec<u32> = ran.stdout.lines().map(|l| l.parse().unwrap()).collect();
    assert!(pids.contains(&1), "{pids:?}");
    assert!(pids.len() <= 5, "unexpected processes: {pids:?}");

    // The host's /tmp is not there; the host name is the sandbox's.
    let ran = sh(&vm, &format!("test -e /tmp/{marker}")).await;
    assert_ne!(ran.exit.exit_code, 0);
    assert_eq!(
        sh(&vm, "cat /proc/sys/kernel/hostname").await.stdout,
        "sandbox\n"
    );
    assert_eq!(sh(&vm, "id -u; id -g").await.stdout, "0\n0\n");

    // Only loopback.
    let ran = sh(&vm, "tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' '").await;
    assert_eq!(ran.stdout, "lo\n");

    // The worker's environment does not leak (cargo sets CARGO_* for this test process).
    let ran = sh(&vm, "env | cut -d= -f1 | sort").await;
    assert!(!ran.stdout.contains("CARGO"), "{}", ran.stdout);
    assert!(ran.stdout.lines().any(|l| l == "PATH"));

    // The image is read-only, for commands and for the files API.
    assert_ne!(sh(&vm, "touch /usr/traforato-x").await.exit.exit_code, 0);
    assert!(matches!(
        write(&vm, "/usr/traforato-x", "x").await,
        Err(FilesError::PermissionDenied)
    ));
    assert!(matches!(
        vm.remove(&path("/usr/bin"), true).await,
        Err(FilesError::PermissionDenied)
    ));
    assert!(std::path::Path::new("/usr/bin/env").exists());

    // Limits cannot be raised: no mount, no new user namespace, no /sys, no kernel knobs.
    for cmd in [
        "mount -t tmpfs none /mnt",
        "unshare -U true",
        "unshare -m true",
        "ls /sys/fs/cgroup",
        "echo 1 > /proc/sys/vm/drop_caches",
        "echo 0 > /proc/sys/kernel/randomize_va_space",
    ] {
        let ran = sh(&vm, cmd).await;
        assert_ne!(ran.exit.exit_code, 0, "{cmd} succeeded");
    }
    let status = sh(
        &vm,
        "grep -E '^(NoNewPrivs|Seccomp|CapEff|CapBnd):' /proc/self/status",
    )
    .await;
    assert!(
        status.stdout.contains("NoNewPrivs:\t1"),
        "{}",
        status.stdout
    );
    assert!(status.stdout.contains("Seccomp:\t2"), "{}", status.stdout);
    // CAP_SYS_ADMIN (bit 21) and CAP_NET_RAW (bit 13) are gone from the effective and
    // bounding sets.
    for line in status.stdout.lines().filter(|l| l.starts_with("Cap")) {
        let hex = line.split('\t').nth(1).unwrap();
        let caps = u64::from_str_radix(hex, 16).unwrap();
        assert_eq!(caps & (1 << 21), 0, "{line}");
        assert_eq!(caps & (1 << 13), 0, "{line}");
    }
    let raw = sh(
        &vm,
        "python3 -I -c 'import socket; socket.socket(socket.AF_PACKET, socket.SOCK_RAW)'",
    )
    .await;
    assert_ne!(raw.exit.exit_code, 0, "a raw socket was opened");
    vm.destroy().await.unwrap();
    std::fs::remove_file(&host_marker).unwrap();
}

/// What a sandbox's seccomp filter answers to calls it never needs, probed with Python's
/// ctypes: `name=errno` (0 when the call succeeded).
const SECCOMP_PROBE: &str = r#"
import ctypes, socket
libc = ctypes.CDLL(None, use_errno=True)
def sock(name, *args):
    try:
        socket.socket(*args).close()
        print(name + "=0")
    except OSError as e:
        print(name + "=" + str(e.errno))
def call(name, nr, *args):
    ctypes.set_errno(0)
    r = libc.syscall(nr, *args)
    print(name + "=" + ("0" if r >= 0 else str(ctypes.get_errno())))
sock("vsock", 40, socket.SOCK_STREAM)
sock("packet", 17, socket.SOCK_RAW)
sock("netlink_audit", 16, socket.SOCK_RAW, 9)
sock("netlink_route", 16, socket.SOCK_RAW, 0)
sock("inet", 2, socket.SOCK_STREAM)
sock("unix", 1, socket.SOCK_STREAM)
call("personality_no_aslr", 135, 0x0040000)
call("personality_query", 135, 0xffffffff)
call("personality_linux", 135, 0)
call("x32_getpid", 39 | 0x40000000)
call("memfd_secret", 447, 0)
call("quotactl_fd", 443, 0, 0, 0, 0)
call("open_tree_attr", 467, -100, 0, 0, 0, 0)
call("getpid", 39)
"#;

/// Hardening I: the filter is an allowlist. vsock and packet sockets, netlink other than
/// route, personas other than the default, the x32 ABI and calls a sandbox never needs are
/// refused; what programs do need still works.
#[cfg(target_arch = "x86_64")]
#[tokio::test]
async fn seccomp_allowlist_refuses_what_sandboxes_never_need() {
    let Some(h) = Harness::new("seccomp") else {
        return;
    };
    let vm = h.provision(256).await;
    let ran = run_spec(
        &vm,
        ExecSpec {
            program: Program::Argv(vec![
                "python3".into(),
                "-I".into(),
                "-c".into(),
                SECCOMP_PROBE.into(),
            ]),
            ..shell("")
        },
    )
    .await
    .unwrap();
    assert_eq!(ran.exit.exit_code, 0, "{}", ran.stderr);
    let answers: BTreeMap<&str, i32> = ran
        .stdout
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k, v.parse().unwrap()))
        .collect();
    let expected = BTreeMap::from([
        ("vsock", libc::EAFNOSUPPORT),
        ("packet", libc::EAFNOSUPPORT),
        ("netlink_audit", libc::EPROTONOSUPPORT),
        ("netlink_route", 0),
        ("inet", 0),
        ("unix", 0),
        ("personality_no_aslr", libc::EPERM),
        ("personality_query", 0),
        ("personality_linux", 0),
        ("x32_getpid", libc::EPERM),
        ("memfd_secret", libc::EPERM),
        ("quotactl_fd", libc::EPERM),
        ("open_tree_attr", libc::EPERM),
        ("getpid", 0),
    ]);
    assert_eq!(answers, expected, "{}", ran.stdout);
    // Ordinary tools keep working under the allowlist.
    for cmd in [
        "ls -la / >/dev/null",
        "df / >/dev/null",
        "ps ax >/dev/null",
        "nproc >/dev/null",
        "mkdir -p /tmp/a/b && mv /tmp/a /tmp/c && rm -r /tmp/c",
        "python3 -I -c 'import subprocess, threading, multiprocessing; subprocess.run([\"true\"], check=True)'",
        "node -e 'require(\"child_process\").execFileSync(\"true\"); require(\"fs\").readdirSync(\"/\")'",
    ] {
        let ran = sh(&vm, cmd).await;
        assert_eq!(ran.exit.exit_code, 0, "{cmd}: {}", ran.stderr);
    }
    vm.destroy().await.unwrap();
}

/// Bytes the sandbox's memory cgroup is charged for.
fn memory_charged(h: &Harness, vm_id: &LocalVmId) -> u64 {
    let dirs = h.backend().cgroup_dirs(vm_id);
    let file = if h.backend().uses_cgroup_v2() {
        dirs[0].join("memory.current")
    } else {
        dirs.iter()
            .find(|d| d.components().any(|c| c.as_os_str() == "memory"))
            .expect("a memory cgroup")
            .join("memory.usage_in_bytes")
    };
    std::fs::read_to_string(&file)
        .unwrap_or_else(|e| panic!("{}: {e}", file.display()))
        .trim()
        .parse()
        .unwrap()
}

async fn write_bytes(vm: &Arc<dyn Vm>, p: &str, len: usize) -> Result<u64, FilesError> {
    let reader: traforato_core::backend::BoxedReader =
        Box::new(std::io::Cursor::new(vec![7u8; len]));
    vm.write_file(&path(p), reader, WriteMode::Replace).await
}

/// Hardening I: what the files API writes lives in the sandbox's memory (its writable layer
/// is a tmpfs) and is charged to the sandbox, not to the worker; a write that does not fit
/// fails cleanly and leaves the sandbox working.
#[tokio::test]
async fn files_api_writes_are_charged_to_the_sandbox() {
    let Some(h) = Harness::new("charge") else {
        return;
    };
    let vm = h.provision(96).await;
    let id = vm.vm_id();
    let before = memory_charged(&h, &id);
    for i in 0..3 {
        let written = write_bytes(&vm, &format!("/workspace/f{i}"), 8 << 20).await;
        assert_eq!(written.unwrap(), 8 << 20);
    }
    let after = memory_charged(&h, &id);
    assert!(
        after >= before + (20 << 20),
        "24 MiB written, the sandbox was charged {} KiB more",
        after.saturating_sub(before) >> 10
    );
    assert_eq!(sh(&vm, "wc -c < /workspace/f2").await.stdout, "8388608\n");
    // More than the limit: refused, and the sandbox lives on.
    let err = write_bytes(&vm, "/workspace/big", 128 << 20)
        .await
        .unwrap_err();
    assert!(matches!(err, FilesError::TooLarge), "{err:?}");
    assert_eq!(
        sh(&vm, "rm -f /workspace/big; echo ok").await.stdout,
        "ok\n"
    );
    assert_eq!(read(&vm, "/workspace/f0").await.unwrap().len(), 8 << 20);
    vm.destroy().await.unwrap();
}

/// Hardening I: the sandbox's root is mounted in the host's mount namespace; no host user
/// but root (and the sandbox itself) can read or plant files in it.
#[tokio::test]
async fn other_host_users_cannot_reach_a_sandbox_root() {
    use std::os::unix::process::CommandExt;
    let Some(h) = Harness::new("hostusers") else {
        return;
    };
    let vm = h.provision(128).await;
    write(&vm, "/workspace/secret.txt", "s3cret").await.unwrap();
    let root = h.state_dir.join(vm.vm_id().to_string()).join("rootfs");
    assert!(root.join("workspace/secret.txt").exists());
    let script = format!(
        "cat {0}/workspace/secret.txt; ls {0}/workspace; touch {0}/workspace/planted; echo done",
        root.display()
    );
    // `nobody`, as the review did.
    let out = std::process::Command::new("/bin/sh")
        .arg("-c")
        .arg(&script)
        .uid(65534)
        .gid(65534)
        .env_clear()
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!stdout.contains("s3cret"), "nobody read the file: {stdout}");
    assert!(
        !stdout.contains("secret.txt"),
        "nobody listed the dir: {stdout}"
    );
    assert!(stdout.contains("done"), "{stdout}");
    assert!(
        !root.join("workspace/planted").exists(),
        "nobody planted a file"
    );
    // The sandbox itself still works with its files.
    assert_eq!(sh(&vm, "cat /workspace/secret.txt").await.stdout, "s3cret");
    vm.destroy().await.unwrap();
}

/// Hardening I: `/proc` tells nothing of the host's kernel command line, configuration,
/// keys or hardware, and the mount table does not name the host's state directory or the
/// sandbox's id; `df` and the mount table still work.
#[tokio::test]
async fn host_information_in_proc_is_masked() {
    let Some(h) = Harness::new("proc") else {
        return;
    };
    let vm = h.provision(128).await;
    assert!(!std::fs::read_to_string("/proc/cmdline").unwrap().is_empty());
    for path in [
        "/proc/cmdline",
        "/proc/kcore",
        "/proc/keys",
        "/proc/timer_list",
        "/proc/sched_debug",
        "/proc/config.gz",
        "/proc/interrupts",
    ] {
        let ran = sh(&vm, &format!("cat {path} 2>/dev/null | wc -c")).await;
        assert_eq!(ran.stdout, "0\n", "{path} is readable in the sandbox");
    }
    for dir in ["/proc/acpi", "/proc/scsi", "/proc/asound"] {
        let ran = sh(&vm, &format!("ls -A {dir} 2>/dev/null | wc -l")).await;
        assert_eq!(ran.stdout, "0\n", "{dir} lists host entries");
    }
    for write in [
        "echo h > /proc/sysrq-trigger",
        "echo 1 > /proc/sys/kernel/ns_last_pid",
    ] {
        assert_ne!(sh(&vm, write).await.exit.exit_code, 0, "{write} succeeded");
    }
    let mountinfo = sh(&vm, "cat /proc/self/mountinfo").await.stdout;
    assert!(mountinfo.contains(" / / "), "{mountinfo}");
    let state = h.state_dir.to_string_lossy().into_owned();
    let id = vm.vm_id().to_string();
    assert!(!mountinfo.contains(&state), "{mountinfo}");
    assert!(!mountinfo.contains(&id), "{mountinfo}");
    assert_eq!(sh(&vm, "df / >/dev/null && echo ok").await.stdout, "ok\n");
    vm.destroy().await.unwrap();
}

fn parents_of(h: &Harness, vm: &Arc<dyn Vm>) -> Vec<PathBuf> {
    h.backend()
        .cgroup_dirs(&vm.vm_id())
        .iter()
        .map(|d| d.parent().unwrap().to_path_buf())
        .collect()
}

/// Hardening I: at shutdown a backend removes the cgroup parent it created, once empty, and
/// never one it found (another worker may share it).
#[tokio::test]
async fn shutdown_removes_the_cgroup_parent_it_created_only() {
    let config = Harness::config("cgshare");
    let mut other = config.clone();
    other.state_dir = config.state_dir.with_extension("b");
    let Some(first) = Harness::with_config(config) else {
        return;
    };
    // The second backend finds the parent the first one made.
    let Some(second) = Harness::with_config(other) else {
        return;
    };
    let vm = second.provision(64).await;
    let parents = parents_of(&second, &vm);
    assert!(parents.iter().all(|p| p.is_dir()));
    // In use by the second backend's sandbox: the first one leaves it.
    first.backend().shutdown().await;
    assert!(parents.iter().all(|p| p.is_dir()), "removed while in use");
    vm.destroy().await.unwrap();
    // Empty now, but the second backend did not create it.
    second.backend().shutdown().await;
    assert!(
        parents.iter().all(|p| p.is_dir()),
        "removed by a backend that found it"
    );
    // The creator removes it.
    first.backend().shutdown().await;
    for p in &parents {
        assert!(!p.exists(), "{} is left", p.display());
    }
}

/// Issue "interactive": a command can run on a real terminal of the sandbox (its controlling
/// terminal, of the asked size), resized and fed while it runs.
#[tokio::test]
async fn commands_run_on_a_terminal() {
    use traforato_core::backend::{ExecControl, TerminalSize};
    use traforato_core::id::ExecId;
    let Some(h) = Harness::new("tty") else {
        return;
    };
    let vm = h.provision(256).await;
    let ran = run_spec(
        &vm,
        ExecSpec {
            tty: Some(TerminalSize {
                rows: 30,
                cols: 100,
            }),
            ..shell(
                "tty; stty size; test -t 0 && test -t 1 && echo on-a-terminal; ps -o stat= -p $$",
            )
        },
    )
    .await
    .unwrap();
    assert_eq!(ran.exit.exit_code, 0, "{} {}", ran.stdout, ran.stderr);
    assert!(ran.stdout.contains("/dev/pts/"), "{}", ran.stdout);
    assert!(ran.stdout.contains("30 100"), "{}", ran.stdout);
    assert!(ran.stdout.contains("on-a-terminal"), "{}", ran.stdout);
    // Session leader with a controlling terminal: `s` and `+` in ps's state.
    assert!(ran.stdout.contains("s+"), "{}", ran.stdout);

    // Resized and fed while it runs.
    let id = ExecId::new();
    let spec = ExecSpec {
        exec_id: Some(id),
        interactive: true,
        tty: Some(TerminalSize::default()),
        ..shell("read line; stty size; echo got:$line")
    };
    let running = {
        let vm = vm.clone();
        tokio::spawn(async move { run_spec(&vm, spec).await })
    };
    let mut tries = 0;
    loop {
        match vm
            .control_exec(
                &id,
                ExecControl::Resize(TerminalSize {
                    rows: 40,
                    cols: 120,
                }),
            )
            .await
        {
            Ok(()) => break,
            Err(BackendError::ExecNotRunning) if tries < 2000 => {
                tries += 1;
                tokio::task::yield_now().await;
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            Err(e) => panic!("resize: {e}"),
        }
    }
    vm.control_exec(&id, ExecControl::Stdin(Bytes::from_static(b"hello\n")))
        .await
        .unwrap();
    let ran = running.await.unwrap().unwrap();
    assert_eq!(ran.exit.exit_code, 0, "{}", ran.stdout);
    assert!(ran.stdout.contains("40 120"), "{}", ran.stdout);
    assert!(ran.stdout.contains("got:hello"), "{}", ran.stdout);
    vm.destroy().await.unwrap();
}

#[tokio::test]
async fn memory_hog_is_killed_by_the_limit() {
    let Some(h) = Harness::new("mem") else {
        return;
    };
    let vm = h.provision(64).await;
    let ran = sh(
        &vm,
        "python3 -c \"x = b'a' * (512 << 20); print('survived')\"",
    )
    .await;
    assert_eq!(
        ran.exit.exit_code, 137,
        "stdout {:?} stderr {:?}",
        ran.stdout, ran.stderr
    );
    assert!(!ran.stdout.contains("survived"));
    // The sandbox is still usable.
    assert_eq!(sh(&vm, "echo ok").await.stdout, "ok\n");
    vm.destroy().await.unwrap();
}

#[tokio::test]
async fn fork_bomb_stops_at_the_pids_limit() {
    let Some(h) = Harness::new("pids") else {
        return;
    };
    let vm = h.provision(256).await;
    let id = vm.vm_id();
    let mut spec = shell("bomb() { bomb | bomb & }; bomb; wait");
    spec.timeout = Duration::from_secs(2);
    // The shell may give up when it cannot fork, or run into the timeout; either way the
    // exec returns and the bomb's processes stay within the limit.
    run_spec(&vm, spec).await.unwrap();
    let pids_dir = h
        .backend()
        .cgroup_dirs(&id)
        .into_iter()
        .find(|d| d.join("pids.max").exists())
        .expect("pids cgroup");
    let read_num = |file: &str| -> u64 {
        std::fs::read_to_string(pids_dir.join(file))
            .unwrap()
            .split_whitespace()
            .last()
            .unwrap()
            .parse()
            .unwrap()
    };
    assert_eq!(read_num("pids.max"), 64);
    assert!(read_num("pids.current") <= 64);
    // pids.events counts forks refused at the limit.
    assert!(read_num("pids.events") > 0);
    // Destroy ends whatever the bomb left running.
    vm.destroy().await.unwrap();
    assert_no_leftovers(&h, &id);
}

/// Retries a command while the sandbox is still at its task limit.
async fn sh_retrying(vm: &Arc<dyn Vm>, line: &str) -> Ran {
    for _ in 0..200 {
        match run_spec(vm, shell(line)).await {
            Ok(ran) if ran.exit.exit_code == 0 => return ran,
            Ok(_) | Err(BackendError::ExecFailed(_)) => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            Err(e) => panic!("exec failed: {e}"),
        }
    }
    panic!("{line} never succeeded");
}

#[tokio::test]
async fn timeout_of_a_fork_bomb_frees_the_sandbox() {
    let Some(h) = Harness::new("pids2") else {
        return;
    };
    let vm = h.provision(256).await;
    // A bomb whose leader keeps running: the timeout kills the whole group, after which
    // the sandbox has room again.
    let mut spec = shell("bomb() { bomb | bomb & }; (bomb) & exec sleep 100");
    spec.timeout = Duration::from_secs(1);
    let ran = run_spec(&vm, spec).await.unwrap();
    assert!(ran.exit.timed_out);
    assert_eq!(sh_retrying(&vm, "echo ok").await.stdout, "ok\n");
    vm.destroy().await.unwrap();
}

#[tokio::test]
async fn timeout_kills_the_whole_process_group() {
    let Some(h) = Harness::new("timeout") else {
        return;
    };
    let vm = h.provision(256).await;
    let mut spec = shell("sleep 100 & echo $!; sleep 100");
    spec.timeout = Duration::from_millis(500);
    let ran = run_spec(&vm, spec).await.unwrap();
    assert_eq!(
        ran.exit,
        ExecExit {
            exit_code: 124,
            timed_out: true
        }
    );
    let grandchild: u32 = ran.stdout.trim().parse().unwrap();
    let check = sh(&vm, &format!("test -d /proc/{grandchild}")).await;
    assert_ne!(check.exit.exit_code, 0, "grandchild {grandchild} survived");
    vm.destroy().await.unwrap();
}

#[tokio::test]
async fn output_streams_before_the_command_ends() {
    let Some(h) = Harness::new("stream") else {
        return;
    };
    let vm = h.provision(256).await;
    let (tx, mut rx) = mpsc::channel::<OutputChunk>(16);
    let runner = Arc::clone(&vm);
    let task = tokio::spawn(async move {
        runner
            .exec(
                shell("echo a; while [ ! -e /tmp/go ]; do sleep 0.01; done; echo b"),
                tx,
            )
            .await
    });
    let first = tokio::time::timeout(Duration::from_secs(20), rx.recv())
        .await
        .expect("first chunk")
        .expect("a chunk");
    assert_eq!(first.stream, OutputStream::Stdout);
    assert_eq!(&first.data[..], b"a\n");
    // The command cannot finish before /tmp/go exists.
    assert!(!task.is_finished());
    write(&vm, "/tmp/go", "").await.unwrap();
    let exit = task.await.unwrap().unwrap();
    assert_eq!(exit.exit_code, 0);
    let mut rest = Vec::new();
    while let Some(chunk) = rx.recv().await {
        rest.extend_from_slice(&chunk.data);
    }
    assert_eq!(rest, b"b\n");
    vm.destroy().await.unwrap();
}

#[tokio::test]
async fn files_and_exec_see_the_same_filesystem() {
    let Some(h) = Harness::new("files") else {
        return;
    };
    let vm = h.provision(256).await;
    // exec → files API
    sh(
        &vm,
        "mkdir -p /workspace/x && printf 'from exec' > /workspace/x/y.txt",
    )
    .await;
    assert_eq!(read(&vm, "/workspace/x/y.txt").await.unwrap(), "from exec");
    let st = vm.stat(&path("/workspace/x/y.txt")).await.unwrap().unwrap();
    assert_eq!((st.kind, st.size), (FileKind::File, 9));
    let dir = vm.stat(&path("/workspace/x")).await.unwrap().unwrap();
    assert_eq!((dir.kind, dir.size), (FileKind::Directory, 0));
    assert!(vm.stat(&path("/workspace/none")).await.unwrap().is_none());

    // files API → exec, with ancestors created and owned by the sandbox's root.
    write(&vm, "/workspace/new/deep/f.txt", "api")
        .await
        .unwrap();
    let ran = sh(&vm, "cat /workspace/new/deep/f.txt; echo ' more' >> /workspace/new/deep/f.txt; stat -c %u /workspace/new/deep/f.txt /workspace/new").await;
    assert_eq!(ran.stdout, "api0\n0\n", "{}", ran.stderr);
    assert_eq!(
        read(&vm, "/workspace/new/deep/f.txt").await.unwrap(),
        "api more\n"
    );
    let reader: traforato_core::backend::BoxedReader =
        Box::new(std::io::Cursor::new(b"+".to_vec()));
    vm.write_file(
        &path("/workspace/new/deep/f.txt"),
        reader,
        WriteMode::Append,
    )
    .await
    .unwrap();
    assert_eq!(
        sh(&vm, "cat /workspace/new/deep/f.txt").await.stdout,
        "api more\n+"
    );

    // Listing.
    let entries = vm.list_dir(&path("/workspace"), false).await.unwrap();
    let mut names: Vec<(String, FileKind)> = entries
        .iter()
        .map(|e| (e.path.as_str().to_string(), e.kind))
        .collect();
    names.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        names,
        vec![
            ("/workspace/new".to_string(), FileKind::Directory),
            ("/workspace/x".to_string(), FileKind::Directory)
        ]
    );
    let all = vm.list_dir(&path("/workspace"), true).await.unwrap();
    assert!(all
        .iter()
        .any(|e| e.path.as_str() == "/workspace/new/deep/f.txt" && e.size == 10));
    assert_eq!(all.len(), 5);

    // Error semantics.
    assert!(matches!(
        write(&vm, "/workspace/x", "no").await,
        Err(FilesError::IsDirectory)
    ));
    assert!(matches!(
        write(&vm, "/workspace/x/y.txt/child", "no").await,
        Err(FilesError::NotDirectory)
    ));
    assert!(matches!(
        read(&vm, "/workspace/x").await,
        Err(FilesError::IsDirectory)
    ));
    assert!(matches!(
        read(&vm, "/workspace/none").await,
        Err(FilesError::NotFound)
    ));
    assert!(matches!(
        vm.list_dir(&path("/workspace/none"), false).await,
        Err(FilesError::NotFound)
    ));
    assert!(matches!(
        vm.list_dir(&path("/workspace/x/y.txt"), false).await,
        Err(FilesError::NotDirectory)
    ));
    assert!(matches!(
        vm.mkdir(&path("/workspace/a/b"), false).await,
        Err(FilesError::ParentNotFound)
    ));
    assert!(matches!(
        vm.mkdir(&path("/workspace/x/y.txt"), false).await,
        Err(FilesError::NotDirectory)
    ));
    assert!(vm.mkdir(&path("/workspace/a/b"), true).await.unwrap());
    assert!(!vm.mkdir(&path("/workspace/a/b"), true).await.unwrap());
    assert!(!vm.mkdir(&path("/workspace/a"), false).await.unwrap());
    assert_eq!(
        sh(&vm, "test -d /workspace/a/b && echo yes").await.stdout,
        "yes\n"
    );
    assert!(matches!(
        vm.remove(&path("/workspace/new"), false).await,
        Err(FilesError::NotEmpty)
    ));
    vm.remove(&path("/workspace/new"), true).await.unwrap();
    vm.remove(&path("/workspace/x/y.txt"), false).await.unwrap();
    assert!(matches!(
        vm.remove(&path("/workspace/none"), false).await,
        Err(FilesError::NotFound)
    ));
    assert_eq!(
        sh(
            &vm,
            "ls -A /workspace/x; test -e /workspace/new || echo gone"
        )
        .await
        .stdout,
        "gone\n"
    );
    vm.destroy().await.unwrap();
}

#[tokio::test]
async fn symlinks_and_dotdot_stay_inside_the_sandbox() {
    let Some(h) = Harness::new("escape") else {
        return;
    };
    let marker = format!("traforato-escape-{}", uuid::Uuid::new_v4().simple());
    let host_tmp = std::env::temp_dir();
    std::fs::write(host_tmp.join(&marker), "HOST").unwrap();
    let vm = h.provision(256).await;
    let tmp = host_tmp.display();
    let ran = sh(
        &vm,
        &format!(
            "ln -s / /workspace/rootlink && ln -s ../../../../../../../..{tmp} /workspace/rel && \
             ln -s {tmp} /workspace/abs && ln -s /proc/1/root /workspace/magic && \
             mkdir -p {tmp} && echo sandbox > {tmp}/{marker}"
        ),
    )
    .await;
    assert_eq!(ran.exit.exit_code, 0, "{}", ran.stderr);
    // Every route lands on the sandbox's file, never the host's.
    assert_eq!(
        read(&vm, &format!("/workspace/rel/{marker}"))
            .await
            .unwrap(),
        "sandbox\n"
    );
    assert_eq!(
        read(&vm, &format!("/workspace/abs/{marker}"))
            .await
            .unwrap(),
        "sandbox\n"
    );
    assert_eq!(
        read(&vm, &format!("/workspace/rootlink{tmp}/{marker}"))
            .await
            .unwrap(),
        "sandbox\n"
    );
    // `..` above the root is clamped by the path itself.
    let passwd = read(&vm, "/../../../etc/passwd").await.unwrap();
    assert!(passwd.starts_with("root:x:0:0:"));
    assert!(passwd.lines().count() <= 2, "host passwd leaked: {passwd}");
    // Magic links and the sandbox's /proc are not followed from the host.
    assert!(read(&vm, "/workspace/magic/etc/hostname").await.is_err());
    // Writes through links land inside too.
    let escaped = format!("{marker}-w");
    write(&vm, &format!("/workspace/rel/{escaped}"), "w")
        .await
        .unwrap();
    assert!(!host_tmp.join(&escaped).exists());
    assert_eq!(sh(&vm, &format!("cat {tmp}/{escaped}")).await.stdout, "w");
    // Removing a link removes the link, not its target.
    vm.remove(&path("/workspace/rootlink"), true).await.unwrap();
    assert!(vm.stat(&path("/workspace")).await.unwrap().is_some());
    assert_eq!(
        std::fs::read_to_string(host_tmp.join(&marker)).unwrap(),
        "HOST"
    );
    vm.destroy().await.unwrap();
    std::fs::remove_file(host_tmp.join(&marker)).unwrap();
}

#[tokio::test]
async fn connects_to_a_server_inside_the_sandbox() {
    let Some(h) = Harness::new("net") else {
        return;
    };
    let vm = h.provision(256).await;
    let port = 20_000 + (uuid::Uuid::new_v4().as_u128() % 20_000) as u16;
    // Started in the background without redirecting its output: the exec must still return.
    let start = tokio::time::timeout(
        Duration::from_secs(20),
        run_spec(
            &vm,
            shell(&format!("python3 -m http.server {port} --bind 127.0.0.1 &")),
        ),
    )
    .await
    .expect("exec with a background server returns")
    .unwrap();
    assert_eq!(start.exit.exit_code, 0);
    let mut stream = None;
    for _ in 0..200 {
        match vm.connect(port).await {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(BackendError::ConnectFailed { .. }) => {
                tokio::time::sleep(Duration::from_millis(25)).await
            }
            Err(e) => panic!("connect: {e}"),
        }
    }
    let mut stream = stream.expect("server came up");
    stream
        .write_all(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.0 200"), "{response}");
    assert!(response.contains("workspace") || response.contains("Directory listing"));
    // The port is not on the host; closed ports inside fail fast.
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
    assert!(matches!(
        vm.connect(1).await,
        Err(BackendError::ConnectFailed { port: 1, .. })
    ));
    vm.destroy().await.unwrap();
}

async fn code(vm: &Arc<dyn Vm>, runtime: Runtime, src: &str) -> (CodeOutcome, String, String) {
    code_with(vm, runtime, src, None, BTreeMap::new()).await
}

async fn code_with(
    vm: &Arc<dyn Vm>,
    runtime: Runtime,
    src: &str,
    cwd: Option<&str>,
    env: BTreeMap<String, String>,
) -> (CodeOutcome, String, String) {
    let (tx, mut rx) = mpsc::channel::<OutputChunk>(64);
    let collect = tokio::spawn(async move {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        while let Some(c) = rx.recv().await {
            match c.stream {
                OutputStream::Stdout => out.extend_from_slice(&c.data),
                OutputStream::Stderr => err.extend_from_slice(&c.data),
            }
        }
        (out, err)
    });
    let outcome = vm
        .run_code(
            CodeSpec {
                runtime,
                code: src.to_string(),
                cwd: cwd.map(str::to_string),
                env,
                timeout: Duration::from_secs(30),
            },
            tx,
        )
        .await
        .unwrap();
    let (out, err) = collect.await.unwrap();
    (
        outcome,
        String::from_utf8_lossy(&out).into_owned(),
        String::from_utf8_lossy(&err).into_owned(),
    )
}

fn finished(code: i32) -> CodeOutcome {
    CodeOutcome::Finished(ExecExit {
        exit_code: code,
        timed_out: false,
    })
}

#[tokio::test]
async fn runs_python_and_node_code() {
    let Some(h) = Harness::new("code") else {
        return;
    };
    let vm = h.provision(512).await;

    let (outcome, out, _) = code(&vm, Runtime::Python, "print('hi')\nprint(6 * 7)").await;
    assert_eq!((outcome, out.as_str()), (finished(0), "hi\n42\n"));
    let (outcome, _, err) = code(&vm, Runtime::Python, "x = 1\n1/0").await;
    assert_eq!(outcome, finished(1));
    assert!(err.contains("ZeroDivisionError: division by zero"), "{err}");
    let (outcome, out, _) = code(&vm, Runtime::Python, "print('oops'").await;
    match outcome {
        CodeOutcome::SyntaxError { message, exit_code } => {
            assert!(
                message.contains("SyntaxError: '(' was never closed"),
                "{message}"
            );
            assert_ne!(exit_code, 0);
        }
        other => panic!("expected a syntax error, got {other:?}"),
    }
    assert!(out.is_empty(), "syntax errors run nothing: {out}");
    let mut env = BTreeMap::new();
    env.insert("WHO".to_string(), "you".to_string());
    let (outcome, out, _) = code_with(
        &vm,
        Runtime::Python,
        "import os\nprint(os.getcwd(), os.environ['WHO'])",
        Some("/tmp"),
        env,
    )
    .await;
    assert_eq!((outcome, out.as_str()), (finished(0), "/tmp you\n"));

    let (outcome, out, _) = code(&vm, Runtime::Node, "console.log(1 + 1)").await;
    assert_eq!((outcome, out.as_str()), (finished(0), "2\n"));
    let (outcome, _, err) = code(&vm, Runtime::Node, "throw new Error('boom')").await;
    assert_eq!(outcome, finished(1));
    assert!(err.contains("Error: boom"), "{err}");
    let (outcome, _, _) = code(&vm, Runtime::Node, "console.log((").await;
    match outcome {
        CodeOutcome::SyntaxError { message, .. } => {
            assert!(message.contains("SyntaxError"), "{message}");
            assert!(!message.contains("    at "), "{message}");
        }
        other => panic!("expected a syntax error, got {other:?}"),
    }
    vm.destroy().await.unwrap();
}

#[tokio::test]
async fn crashed_run_is_cleaned_up_by_the_next_backend() {
    let config = Harness::config("crash");
    let cgroup_parent = config.cgroup_parent.clone();
    let Some(first) = Harness::with_config(config.clone()) else {
        return;
    };
    let vm = first.provision(256).await;
    let id = vm.vm_id();
    sh(&vm, "sleep 1000 >/dev/null 2>&1 &").await;
    // Simulate a crash: SIGKILL every process of the sandbox, forget the handles.
    let procs = h_procs(&first, &id);
    assert!(procs.len() >= 2, "{procs:?}");
    for pid in procs {
        let _ = rustix::process::kill_process(
            rustix::process::Pid::from_raw(pid).unwrap(),
            rustix::process::Signal::KILL,
        );
    }
    drop(vm);
    let mut first = first;
    drop(first.backend.take());
    std::mem::forget(first);

    let second = Harness::with_config(config).expect("second backend");
    assert!(second.state_dir.join(id.to_string()).exists());
    assert_eq!(second.backend().cleanup_leftovers().await.unwrap(), 1);
    assert_no_leftovers(&second, &id);
    assert_eq!(second.backend().cleanup_leftovers().await.unwrap(), 0);
    // The second backend found the cgroup parent, so its shutdown keeps it (its spare inits
    // go); the crashed creator cannot remove it any more. Remove this test's (empty) parent
    // by hand.
    second.backend().shutdown().await;
    let parents: Vec<PathBuf> = std::fs::read_dir("/sys/fs/cgroup")
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .flat_map(|p| [p.join(&cgroup_parent), p])
        .filter(|p| p.ends_with(&cgroup_parent) && p.is_dir())
        .collect();
    for p in &parents {
        std::fs::remove_dir(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    }
}

/// Host pids in a sandbox's cgroup.
fn h_procs(h: &Harness, id: &LocalVmId) -> Vec<i32> {
    let dir = h.backend().cgroup_dirs(id).into_iter().next().unwrap();
    std::fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap()
        .lines()
        .map(|l| l.parse().unwrap())
        .collect()
}

#[tokio::test]
async fn dropped_sandbox_is_cleaned_up_too() {
    let config = Harness::config("dropped");
    let Some(h) = Harness::with_config(config) else {
        return;
    };
    let vm = h.provision(256).await;
    let id = vm.vm_id();
    drop(vm);
    assert_eq!(h.backend().cleanup_leftovers().await.unwrap(), 1);
    assert_no_leftovers(&h, &id);
}

#[tokio::test]
async fn failed_provisions_leave_nothing() {
    let Some(h) = Harness::new("fail") else {
        return;
    };
    match h.provision_image("ubuntu:24.04", 256).await {
        Err(BackendError::ImageNotFound { image }) => assert_eq!(image, "ubuntu:24.04"),
        other => panic!("expected ImageNotFound, got {:?}", other.map(|v| v.vm_id())),
    }
    let mut config = Harness::config("failinit");
    config.init_program = PathBuf::from("/bin/true");
    let Some(broken) = Harness::with_config(config) else {
        return;
    };
    let err = broken
        .provision_image("host", 256)
        .await
        .err()
        .expect("init fails");
    assert!(matches!(err, BackendError::Setup(_)), "{err:?}");
    for harness in [&h, &broken] {
        let left: Vec<_> = std::fs::read_dir(&harness.state_dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n != "images" && n != "cgroup-parents")
            .collect();
        assert!(left.is_empty(), "left in state dir: {left:?}");
        assert!(mounts_below(&harness.state_dir).is_empty());
        assert_eq!(harness.backend().cleanup_leftovers().await.unwrap(), 0);
    }
}

#[tokio::test]
async fn directory_images_are_lower_layers() {
    let image = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(image.path().join("etc")).unwrap();
    std::fs::write(image.path().join("etc/motd"), "welcome").unwrap();
    let mut config = Harness::config("dirimg");
    config
        .images
        .insert("mini".into(), image.path().to_path_buf());
    let Some(h) = Harness::with_config(config) else {
        return;
    };
    let vm = h
        .provision_image("mini", 128)
        .await
        .expect("provision mini");
    assert_eq!(read(&vm, "/etc/motd").await.unwrap(), "welcome");
    write(&vm, "/workspace/w.txt", "upper").await.unwrap();
    // Writes go to the sandbox's layer, never to the image directory.
    assert!(!image.path().join("workspace").exists());
    vm.destroy().await.unwrap();
    assert_eq!(
        std::fs::read_to_string(image.path().join("etc/motd")).unwrap(),
        "welcome"
    );
}

#[tokio::test]
async fn cancelled_provisions_leave_nothing() {
    let Some(mut h) = Harness::new("cancel") else {
        return;
    };
    let backend = Arc::new(h.backend.take().expect("backend"));
    // Stop the provision at different points: before, during and after host setup.
    for delay_us in [
        0u64, 200, 1_000, 2_000, 3_000, 4_000, 5_000, 7_000, 10_000, 50_000,
    ] {
        let b = Arc::clone(&backend);
        let task = tokio::spawn(async move {
            b.provision(ProvisionSpec {
                vm_id: LocalVmId::new_random(),
                tuple: SandboxTuple::normalize("container", "host", 1, "container"),
                memory_mib: 128,
                warm: false,
            })
            .await
        });
        tokio::time::sleep(Duration::from_micros(delay_us)).await;
        task.abort();
        let outcome = task.await;
        if let Ok(Ok(vm)) = outcome {
            vm.destroy().await.unwrap();
        }
    }
    // Rollbacks of dropped provisions finish in the background.
    let mut clean = false;
    for _ in 0..500 {
        let entries: Vec<String> = std::fs::read_dir(&h.state_dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n != "images" && n != "cgroup-parents")
            .collect();
        if entries.is_empty() && mounts_below(&h.state_dir).is_empty() {
            clean = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(clean, "cancelled provisions left state behind");
    assert_eq!(backend.cleanup_leftovers().await.unwrap(), 0);
    h.backend = Some(Arc::try_unwrap(backend).expect("sole owner"));
}

/// Python code that says whether it was forked by the zygote (its parent is not the agent).
const VIA_ZYGOTE: &str = "import os\nprint('zygote' if os.getppid() != 1 else 'one-shot')";

async fn code_timeout(vm: &Arc<dyn Vm>, src: &str, timeout: Duration) -> CodeOutcome {
    let (tx, mut rx) = mpsc::channel::<OutputChunk>(64);
    let drain = tokio::spawn(async move { while rx.recv().await.is_some() {} });
    let outcome = vm
        .run_code(
            CodeSpec {
                runtime: Runtime::Python,
                code: src.to_string(),
                cwd: None,
                env: BTreeMap::new(),
                timeout,
            },
            tx,
        )
        .await
        .unwrap();
    drain.await.unwrap();
    outcome
}

#[tokio::test]
async fn python_runs_through_the_warm_zygote() {
    let Some(h) = Harness::new("zygote") else {
        return;
    };
    let vm = h.provision(256).await;

    let (outcome, out, err) = code(&vm, Runtime::Python, VIA_ZYGOTE).await;
    assert_eq!((outcome, out.as_str()), (finished(0), "zygote\n"), "{err}");
    let (outcome, out, _) = code(&vm, Runtime::Python, "print(__name__, 6 * 7)").await;
    assert_eq!((outcome, out.as_str()), (finished(0), "__main__ 42\n"));

    // A runtime error's traceback looks like `python3 -`'s, without bootstrap frames.
    let (outcome, out, err) = code(&vm, Runtime::Python, "print('a')\nx = 1\n1/0").await;
    assert_eq!((outcome, out.as_str()), (finished(1), "a\n"));
    assert_eq!(
        err,
        "Traceback (most recent call last):\n  File \"<stdin>\", line 3, in <module>\n\
         ZeroDivisionError: division by zero\n"
    );
    let (outcome, _, err) = code(&vm, Runtime::Python, "raise SystemExit('bye')").await;
    assert_eq!((outcome, err.as_str()), (finished(1), "bye\n"));
    let (outcome, _, _) = code(&vm, Runtime::Python, "print(1)\nexit(3)").await;
    assert_eq!(outcome, finished(3));

    // Syntax errors carry the interpreter's own message and run nothing.
    let (outcome, out, err) = code(&vm, Runtime::Python, "print('x')\nprint((").await;
    match outcome {
        CodeOutcome::SyntaxError { message, exit_code } => {
            assert!(message.starts_with("File \"<stdin>\", line 2"), "{message}");
            assert!(
                message.contains("SyntaxError: '(' was never closed"),
                "{message}"
            );
            assert_eq!(exit_code, 1);
        }
        other => panic!("expected a syntax error, got {other:?}"),
    }
    assert_eq!((out.as_str(), err.as_str()), ("", ""));

    // cwd and env are the request's; cwd is on sys.path like for `python3 -`.
    write(&vm, "/tmp/helper_mod.py", "VALUE = 'from cwd'\n")
        .await
        .unwrap();
    let mut env = BTreeMap::new();
    env.insert("WHO".to_string(), "you".to_string());
    let (outcome, out, err) = code_with(
        &vm,
        Runtime::Python,
        "import os, helper_mod\nprint(os.getcwd(), os.environ['WHO'], helper_mod.VALUE)\n\
         print(os.environ.get('HOME'), 'PYTHONPATH' in os.environ)",
        Some("/tmp"),
        env,
    )
    .await;
    assert_eq!(
        (outcome, out.as_str()),
        (finished(0), "/tmp you from cwd\n/root False\n"),
        "{err}"
    );
    match vm
        .run_code(
            CodeSpec {
                runtime: Runtime::Python,
                code: "print(1)".to_string(),
                cwd: Some("/nonexistent".to_string()),
                env: BTreeMap::new(),
                timeout: Duration::from_secs(10),
            },
            mpsc::channel(4).0,
        )
        .await
    {
        Err(BackendError::ExecFailed(m)) => assert!(m.contains("/nonexistent"), "{m}"),
        other => panic!("expected a failed start, got {other:?}"),
    }

    // Runs share nothing: globals, imported modules and builtins stay in their child.
    let (outcome, _, _) = code(
        &vm,
        Runtime::Python,
        "import json, builtins\nleaked = 1\nbuiltins.leaked_too = 2",
    )
    .await;
    assert_eq!(outcome, finished(0));
    let (outcome, out, _) = code(
        &vm,
        Runtime::Python,
        "import sys, builtins\nprint('leaked' in globals(), 'json' in sys.modules, \
         hasattr(builtins, 'leaked_too'))",
    )
    .await;
    assert_eq!(
        (outcome, out.as_str()),
        (finished(0), "False False False\n")
    );

    // A timeout kills the run's whole process group; the zygote keeps serving.
    let outcome = code_timeout(
        &vm,
        "import subprocess, time\nsubprocess.Popen(['sleep', '300'])\ntime.sleep(300)",
        Duration::from_millis(700),
    )
    .await;
    assert_eq!(
        outcome,
        CodeOutcome::Finished(ExecExit {
            exit_code: 124,
            timed_out: true
        })
    );
    let left = sh_retrying(
        &vm,
        "for p in /proc/[0-9]*; do tr '\\0' ' ' < $p/cmdline; echo; done | grep -c '^sleep 300' \
         | grep -x 0",
    )
    .await;
    assert_eq!(
        left.exit.exit_code, 0,
        "the run's child survived its timeout"
    );
    let (outcome, out, _) = code(&vm, Runtime::Python, VIA_ZYGOTE).await;
    assert_eq!((outcome, out.as_str()), (finished(0), "zygote\n"));
    vm.destroy().await.unwrap();
}

/// Issue "cold start": a sandbox made for a waiting create starts its zygote only after its
/// first Python run, which goes one-shot without sharing the CPU with a starting interpreter;
/// an exec does not start it; later runs go through it. With `lazy_zygote` the warm pool's
/// sandboxes do the same.
#[tokio::test]
async fn cold_sandboxes_start_their_zygote_after_the_first_python_run() {
    let config = ContainerConfig {
        lazy_zygote: true,
        ..Harness::config("lazyzygote")
    };
    let Some(h) = Harness::with_config(config) else {
        return;
    };
    for vm in [h.provision_cold(256).await, h.provision(256).await] {
        // Nothing to settle: no zygote yet.
        vm.settle().await;
        assert_eq!(sh(&vm, "echo ok").await.stdout, "ok\n");
        let (outcome, out, err) = code(&vm, Runtime::Python, VIA_ZYGOTE).await;
        assert_eq!(
            (outcome, out.as_str()),
            (finished(0), "one-shot\n"),
            "{err}"
        );
        let mut via = String::new();
        for _ in 0..100 {
            vm.settle().await;
            via = code(&vm, Runtime::Python, VIA_ZYGOTE).await.1;
            if via == "zygote\n" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(via, "zygote\n", "the zygote started after the first run");
        vm.destroy().await.unwrap();
    }
}

#[tokio::test]
async fn python_falls_back_to_one_shot_without_a_zygote() {
    let Some(h) = Harness::new("fallback") else {
        return;
    };
    let vm = h.provision(256).await;
    let (_, out, _) = code(&vm, Runtime::Python, "import os\nprint(os.getppid())").await;
    let zygote_pid: u32 = out.trim().parse().expect("zygote pid");
    assert_ne!(zygote_pid, 1);
    let killed = sh(&vm, &format!("kill -9 {zygote_pid}")).await;
    assert_eq!(killed.exit.exit_code, 0, "{}", killed.stderr);
    for _ in 0..2 {
        let (outcome, out, err) = code(&vm, Runtime::Python, VIA_ZYGOTE).await;
        assert_eq!(
            (outcome, out.as_str()),
            (finished(0), "one-shot\n"),
            "{err}"
        );
    }
    // The one-shot path checks syntax and reports errors the same way.
    let (outcome, _, err) = code(&vm, Runtime::Python, "1/0").await;
    assert_eq!(outcome, finished(1));
    assert!(
        err.starts_with("Traceback (most recent call last):\n  File \"<stdin>\", line 1"),
        "{err}"
    );
    match code(&vm, Runtime::Python, "def f(:\n  pass").await.0 {
        CodeOutcome::SyntaxError { message, .. } => {
            assert!(message.contains("SyntaxError: invalid syntax"), "{message}")
        }
        other => panic!("expected a syntax error, got {other:?}"),
    }
    vm.destroy().await.unwrap();

    let config = ContainerConfig {
        python_zygote: false,
        ..Harness::config("nozygote")
    };
    let Some(h) = Harness::with_config(config) else {
        return;
    };
    let vm = h.provision(256).await;
    let (outcome, out, _) = code(&vm, Runtime::Python, VIA_ZYGOTE).await;
    assert_eq!((outcome, out.as_str()), (finished(0), "one-shot\n"));
    vm.destroy().await.unwrap();
}

/// Runs Python code with `timeout`; fails the test (instead of hanging it) if the run is
/// still open well after that.
async fn code_bounded(
    vm: &Arc<dyn Vm>,
    src: &str,
    timeout: Duration,
) -> (CodeOutcome, String, String) {
    let (tx, mut rx) = mpsc::channel::<OutputChunk>(64);
    let collect = tokio::spawn(async move {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        while let Some(c) = rx.recv().await {
            match c.stream {
                OutputStream::Stdout => out.extend_from_slice(&c.data),
                OutputStream::Stderr => err.extend_from_slice(&c.data),
            }
        }
        (out, err)
    });
    let spec = CodeSpec {
        runtime: Runtime::Python,
        code: src.to_string(),
        cwd: None,
        env: BTreeMap::new(),
        timeout,
    };
    let limit = timeout + Duration::from_secs(15);
    let outcome = tokio::time::timeout(limit, vm.run_code(spec, tx))
        .await
        .unwrap_or_else(|_| panic!("run-code still open {limit:?} after it started"))
        .unwrap();
    let (out, err) = collect.await.unwrap();
    (
        outcome,
        String::from_utf8_lossy(&out).into_owned(),
        String::from_utf8_lossy(&err).into_owned(),
    )
}

const TIMED_OUT: CodeOutcome = CodeOutcome::Finished(ExecExit {
    exit_code: 124,
    timed_out: true,
});

#[tokio::test]
async fn a_stopped_zygote_does_not_hang_runs() {
    let Some(h) = Harness::new("stopped") else {
        return;
    };
    let short = Duration::from_secs(2);

    // A run stops its own zygote: its exit is never reported, the run ends at its timeout
    // and the zygote is replaced by one-shot interpreters.
    let vm = h.provision(256).await;
    let (outcome, out, err) = code_bounded(&vm, VIA_ZYGOTE, short).await;
    assert_eq!((outcome, out.as_str()), (finished(0), "zygote\n"), "{err}");
    let (outcome, _, err) = code_bounded(
        &vm,
        "import os, signal\nos.kill(os.getppid(), signal.SIGSTOP)",
        short,
    )
    .await;
    assert_eq!(outcome, TIMED_OUT, "{err}");
    for _ in 0..2 {
        let (outcome, out, err) = code_bounded(&vm, VIA_ZYGOTE, short).await;
        assert_eq!(
            (outcome, out.as_str()),
            (finished(0), "one-shot\n"),
            "{err}"
        );
    }
    vm.destroy().await.unwrap();

    // Stopped between runs: the next run never gets its start reply.
    let vm = h.provision(256).await;
    let (_, out, _) = code_bounded(&vm, "import os\nprint(os.getppid())", short).await;
    let zygote_pid: u32 = out.trim().parse().expect("zygote pid");
    let stopped = sh(&vm, &format!("kill -STOP {zygote_pid}")).await;
    assert_eq!(stopped.exit.exit_code, 0, "{}", stopped.stderr);
    let (outcome, _, err) = code_bounded(&vm, VIA_ZYGOTE, short).await;
    assert_eq!(outcome, TIMED_OUT, "{err}");
    let (outcome, out, err) = code_bounded(&vm, VIA_ZYGOTE, short).await;
    assert_eq!(
        (outcome, out.as_str()),
        (finished(0), "one-shot\n"),
        "{err}"
    );
    vm.destroy().await.unwrap();
}

/// Tries to reach the zygote the way a takeover would: its socket with `pidfd_getfd`, its
/// memory with `process_vm_readv`, the process itself with `PTRACE_ATTACH`. Prints each
/// attempt's errno, or `ok` when it worked.
const PROBE_ZYGOTE: &str = r#"
import ctypes, os, time
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
libc.ptrace.restype = ctypes.c_long
pid = None
deadline = time.monotonic() + 5
while pid is None and time.monotonic() < deadline:
    for entry in os.listdir('/proc'):
        if entry.isdigit():
            try:
                with open('/proc/%s/cmdline' % entry, 'rb') as f:
                    cmdline = f.read()
            except OSError:
                continue
            if cmdline.startswith(b'python3\0-I\0-S\0-c\0') and b'_serve()' in cmdline:
                pid = int(entry)
print('zygote', pid is not None)

def report(name, result):
    print(name, 'ok' if result >= 0 else ctypes.get_errno(), flush=True)

pidfd = libc.syscall(434, pid, 0)  # pidfd_open
report('pidfd_open', pidfd)
report('pidfd_getfd', libc.syscall(438, pidfd, 0, 0))  # the zygote's fd 0

class Iovec(ctypes.Structure):
    _fields_ = [('base', ctypes.c_void_p), ('len', ctypes.c_size_t)]
buf = ctypes.create_string_buffer(16)
local = Iovec(ctypes.cast(buf, ctypes.c_void_p), 16)
addr = None
try:
    with open('/proc/%d/maps' % pid) as f:
        addr = int(f.readline().split('-')[0], 16)
except OSError:
    addr = 0x400000
remote = Iovec(addr, 16)
libc.process_vm_readv.restype = ctypes.c_ssize_t
report('process_vm_readv', libc.process_vm_readv(
    pid, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0))

attached = libc.ptrace(16, pid, None, None)  # PTRACE_ATTACH
report('ptrace_attach', attached)
if attached == 0:
    os.waitpid(pid, 0x40000000)  # __WALL
    libc.ptrace(17, pid, None, 0)  # PTRACE_DETACH, no signal
"#;

/// The zygote is out of reach from its first instruction: code that runs before it is warm
/// (an exec right after a provision, which does not wait for it) cannot take it either.
#[tokio::test]
async fn a_starting_zygote_is_out_of_reach_too() {
    let Some(h) = Harness::new("early") else {
        return;
    };
    // A warm-pool provision starts its zygote at once; no settle: it is still starting.
    let vm = h
        .provision_spec("host", 256, true)
        .await
        .expect("provision");
    let probe = run_spec(
        &vm,
        ExecSpec {
            program: Program::Argv(vec![
                "python3".to_string(),
                "-c".to_string(),
                PROBE_ZYGOTE.to_string(),
            ]),
            ..shell("")
        },
    )
    .await
    .expect("probe");
    let eperm = rustix::io::Errno::PERM.raw_os_error();
    assert_eq!(
        probe.stdout,
        format!(
            "zygote True\npidfd_open ok\npidfd_getfd {eperm}\nprocess_vm_readv {eperm}\n\
             ptrace_attach {eperm}\n"
        ),
        "sandbox code reached the zygote: {}",
        probe.stderr
    );
    // What keeps it out of reach before its own prctl: a real uid of its own.
    let uid = sh(
        &vm,
        "python3 -I -c \"import os\nfor p in os.listdir('/proc'):\n  \
         c = open('/proc/%s/cmdline' % p, 'rb').read() if p.isdigit() else b''\n  \
         if c.startswith(b'python3\\0-I\\0-S\\0-c\\0') and b'_serve()' in c:\n    \
         print([l.split()[1] for l in open('/proc/%s/status' % p) if l.startswith('Uid:')][0])\"",
    )
    .await;
    assert_eq!(uid.stdout, "1\n", "{}", uid.stderr);
    vm.settle().await;
    let (outcome, out, err) = code_bounded(&vm, VIA_ZYGOTE, Duration::from_secs(10)).await;
    assert_eq!((outcome, out.as_str()), (finished(0), "zygote\n"), "{err}");
    // A run is sandbox root again.
    let (_, out, _) = code(
        &vm,
        Runtime::Python,
        "import os\nprint(os.getuid(), os.geteuid())",
    )
    .await;
    assert_eq!(out, "0 0\n");
    vm.destroy().await.unwrap();
}

#[tokio::test]
async fn python_zygote_is_unreachable_from_sandbox_code() {
    let Some(h) = Harness::new("takeover") else {
        return;
    };
    let vm = h.provision(256).await;
    let (outcome, out, err) = code_bounded(&vm, VIA_ZYGOTE, Duration::from_secs(10)).await;
    assert_eq!((outcome, out.as_str()), (finished(0), "zygote\n"), "{err}");

    let probe = run_spec(
        &vm,
        ExecSpec {
            program: Program::Argv(vec![
                "python3".to_string(),
                "-c".to_string(),
                PROBE_ZYGOTE.to_string(),
            ]),
            ..shell("")
        },
    )
    .await
    .expect("probe");
    assert_eq!(probe.exit.exit_code, 0, "{}", probe.stderr);
    let eperm = rustix::io::Errno::PERM.raw_os_error();
    assert_eq!(
        probe.stdout,
        format!(
            "zygote True\npidfd_open ok\npidfd_getfd {eperm}\nprocess_vm_readv {eperm}\n\
             ptrace_attach {eperm}\n"
        ),
        "sandbox code reached the zygote"
    );

    // The zygote still serves, and the output is the run's own.
    let mut env = BTreeMap::new();
    env.insert("SECRET".to_string(), "s3cr3t".to_string());
    let (outcome, out, err) = code_with(
        &vm,
        Runtime::Python,
        "import os\nprint('zygote' if os.getppid() != 1 else 'one-shot', \
         os.environ['SECRET'], 6 * 7)",
        None,
        env,
    )
    .await;
    assert_eq!(
        (outcome, out.as_str()),
        (finished(0), "zygote s3cr3t 42\n"),
        "{err}"
    );
    vm.destroy().await.unwrap();
}

#[tokio::test]
async fn node_runs_in_one_interpreter_like_a_script() {
    let Some(h) = Harness::new("node") else {
        return;
    };
    let vm = h.provision(512).await;
    let (outcome, out, err) = code_with(
        &vm,
        Runtime::Node,
        "const path = require('path');\nconsole.log(path.join('a', 'b'), __filename, \
         process.cwd(), process.env.WHO);\nreturn;\nconsole.log('not reached');",
        Some("/tmp"),
        BTreeMap::from([("WHO".to_string(), "me".to_string())]),
    )
    .await;
    assert_eq!(
        (outcome, out.as_str()),
        (finished(0), "a/b [stdin] /tmp me\n"),
        "{err}"
    );
    let (outcome, out, err) = code(
        &vm,
        Runtime::Node,
        "console.log('before');\nthrow new Error('boom');",
    )
    .await;
    assert_eq!((outcome, out.as_str()), (finished(1), "before\n"));
    assert!(err.contains("Error: boom\n    at "), "{err}");
    assert!(err.contains("[stdin]:2"), "{err}");
    let (outcome, out, err) = code(&vm, Runtime::Node, "console.log('x');\nconsole.log((").await;
    match outcome {
        CodeOutcome::SyntaxError { message, exit_code } => {
            assert!(
                message.contains("SyntaxError: Unexpected end of input"),
                "{message}"
            );
            assert!(!message.contains("    at "), "{message}");
            assert_eq!(exit_code, 1);
        }
        other => panic!("expected a syntax error, got {other:?}"),
    }
    assert_eq!((out.as_str(), err.as_str()), ("", ""));
    vm.destroy().await.unwrap();
}

/// Spare cgroups under the sandbox's cgroup parent (the first hierarchy): every sibling of
/// `vm`'s cgroup, with the pids in it.
fn spare_cgroups(h: &Harness, vm: &LocalVmId) -> Vec<(PathBuf, Vec<i32>)> {
    let own = h.backend().cgroup_dirs(vm).into_iter().next().unwrap();
    let parent = own.parent().unwrap();
    std::fs::read_dir(parent)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir() && *p != own)
        .map(|p| {
            let pids = std::fs::read_to_string(p.join("cgroup.procs"))
                .unwrap_or_default()
                .lines()
                .filter_map(|l| l.parse().ok())
                .collect();
            (p, pids)
        })
        .collect()
}

async fn wait_for_spares(h: &Harness, n: usize) {
    for _ in 0..200 {
        if h.backend().spare_inits_ready() == n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!(
        "{} spare inits ready, not {n}",
        h.backend().spare_inits_ready()
    );
}

/// Issue "cold start": on cgroup v1 a cold create takes a spare init that waits in a cgroup of
/// its own (renamed to the sandbox's, its limits set); a dead spare is skipped; the pool
/// refills; leftovers cleanup leaves the spares; shutdown removes them.
#[tokio::test]
async fn cold_creates_take_spare_inits() {
    let Some(h) = Harness::new("spares") else {
        return;
    };
    if h.backend().uses_cgroup_v2() {
        // v2 refuses to rename a cgroup: no spares there.
        assert_eq!(h.backend().spare_inits_ready(), 0);
        eprintln!("skipping the rest: spare inits are for cgroup v1 hosts (this one has v2)");
        return;
    }
    wait_for_spares(&h, 2).await;
    assert_eq!(h.backend().cleanup_leftovers().await.unwrap(), 0);
    assert_eq!(h.backend().spare_inits_ready(), 2);

    let vm = h.provision_cold(256).await;
    let id = vm.vm_id();
    assert_eq!(sh(&vm, "echo ok").await.stdout, "ok\n");
    let dirs = h.backend().cgroup_dirs(&id);
    assert!(
        !dirs.is_empty() && dirs.iter().all(|d| d.is_dir()),
        "{dirs:?}"
    );
    let memory = dirs
        .iter()
        .find(|d| d.join("memory.limit_in_bytes").exists())
        .expect("memory hierarchy");
    assert_eq!(
        std::fs::read_to_string(memory.join("memory.limit_in_bytes"))
            .unwrap()
            .trim(),
        (256u64 << 20).to_string()
    );
    assert!(h_procs(&h, &id).len() >= 2, "the sandbox's init and agent");

    // Kill every spare: the next create skips the dead ones and starts its own init.
    wait_for_spares(&h, 2).await;
    let spares = spare_cgroups(&h, &id);
    assert_eq!(spares.len(), 2, "{spares:?}");
    for (_, pids) in &spares {
        assert_eq!(pids.len(), 1, "one waiting init per spare: {pids:?}");
        rustix::process::kill_process(
            rustix::process::Pid::from_raw(pids[0]).unwrap(),
            rustix::process::Signal::KILL,
        )
        .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let second = h.provision_cold(128).await;
    assert_eq!(sh(&second, "echo ok").await.stdout, "ok\n");
    for (dir, _) in &spares {
        for _ in 0..100 {
            if !dir.exists() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(!dir.exists(), "dead spare's cgroup {} left", dir.display());
    }
    wait_for_spares(&h, 2).await;

    let second_id = second.vm_id();
    vm.destroy().await.unwrap();
    second.destroy().await.unwrap();
    assert_no_leftovers(&h, &id);
    assert_no_leftovers(&h, &second_id);
    let parents: Vec<PathBuf> = dirs.iter().map(|d| d.parent().unwrap().into()).collect();
    h.backend().shutdown().await;
    assert_eq!(h.backend().spare_inits_ready(), 0);
    for p in &parents {
        assert!(!p.exists(), "{} is left (spares not removed)", p.display());
    }
}
