//! The sandbox init: a fresh, single-threaded process the worker starts for each sandbox.
//! It enters new namespaces, forks the sandbox's pid 1 (the agent), which builds the root,
//! locks itself down and then runs the worker's exec requests.
//!
//! Two processes per sandbox:
//! - the *outer* init stays in the host pid namespace as the worker's child; it only waits for
//!   the agent and exits with its status (the worker kills it to destroy the sandbox, and the
//!   agent follows through its parent-death signal);
//! - the *agent* is pid 1 of the sandbox: it mounts `/proc` and `/dev`, pivots into the root,
//!   drops capabilities, installs seccomp, then forks each command into its own session and
//!   reaps every process that ends up reparented to it.
//!
//! This file holds the raw syscalls that have no safe wrapper (fork, execve, signalfd, the
//! interface ioctl, capability prctls); each `unsafe` block says why it is sound.
#![allow(unsafe_code)]

use std::collections::HashMap;
use std::ffi::{CStr, CString, OsStr};
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::Path;

use rustix::event::{poll, PollFd, PollFlags};
use rustix::fs::{mkdirat, symlinkat, Mode, CWD};
use rustix::io::Errno;
use rustix::mount::{
    mount, mount_bind, mount_bind_recursive, mount_change, unmount, MountFlags,
    MountPropagationFlags, UnmountFlags,
};
use rustix::net::{socket, AddressFamily, SocketType};
use rustix::process::{
    kill_process_group, pivot_root, set_parent_process_death_signal, wait, waitpid, Pid, Signal,
    WaitOptions,
};
use rustix::thread::{
    set_capabilities, set_thread_groups, set_thread_res_gid, set_thread_res_uid, CapabilitySet,
    CapabilitySets, Gid, Uid, UnshareFlags,
};

use super::config::INIT_ARG;
use super::protocol::{self, Event, ExecUser, Request, Setup, MAX_MESSAGE};
use super::seccomp;
use crate::backend::ExecSignal;

/// `PATH` when the environment has none.
pub(crate) const DEFAULT_PATH: &str =
    "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Capabilities sandbox root keeps (inside its user namespace only): file ownership and
/// permission overrides on its own files, setuid/setgid to its own uids, kill, low ports in
/// its own network namespace, chroot. Everything else (mount, net admin, raw sockets, ptrace,
/// sys admin, ...) leaves the bounding set for good. Raw sockets are dropped: the network is
/// loopback only, and `AF_PACKET` has a history of kernel bugs.
const KEPT_CAPABILITIES: CapabilitySet = CapabilitySet::CHOWN
    .union(CapabilitySet::DAC_OVERRIDE)
    .union(CapabilitySet::FOWNER)
    .union(CapabilitySet::FSETID)
    .union(CapabilitySet::KILL)
    .union(CapabilitySet::SETGID)
    .union(CapabilitySet::SETUID)
    .union(CapabilitySet::SETPCAP)
    .union(CapabilitySet::NET_BIND_SERVICE)
    .union(CapabilitySet::SYS_CHROOT)
    .union(CapabilitySet::SETFCAP)
    .union(CapabilitySet::AUDIT_WRITE);

/// Devices bound from the host into the sandbox's `/dev`.
const DEVICES: [&str; 6] = ["null", "zero", "full", "random", "urandom", "tty"];

/// Where the exec child failed, reported through the error pipe.
/// How the message of a program that does not exist starts (the worker recognises a missing
/// interpreter by it).
pub(crate) const PROGRAM_NOT_FOUND: &str = "program not found: ";

const STAGE_CWD: u8 = 1;
const STAGE_EXEC: u8 = 2;
const STAGE_SETUP: u8 = 3;
const STAGE_USER: u8 = 4;

/// Runs the sandbox init when this process was started as one (first argument
/// [`INIT_ARG`]); returns otherwise. Server binaries call this first thing in `main`, before
/// any thread or runtime exists, so that `init_program = /proc/self/exe` works.
pub fn init_main_if_requested() {
    if std::env::args_os().nth(1).as_deref() == Some(OsStr::new(INIT_ARG)) {
        init_main();
    }
}

/// The sandbox init's `main`: never returns. Must run in a fresh single-threaded process
/// started by the `container` backend (stdin is its control socket).
pub fn init_main() -> ! {
    if std::env::args_os().nth(1).as_deref() != Some(OsStr::new(INIT_ARG)) {
        eprintln!("traforato-sandbox-init: started by the container backend only ({INIT_ARG})");
        std::process::exit(2);
    }
    let code = match outer_init() {
        Ok(code) => code,
        Err(message) => {
            eprintln!("traforato-sandbox-init: {message}");
            1
        }
    };
    std::process::exit(code)
}

/// Sets close-on-exec on every descriptor from 3 up.
fn mark_inherited_fds_cloexec() {
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only changes descriptor flags.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3 as libc::c_uint,
            libc::c_uint::MAX,
            libc::CLOSE_RANGE_CLOEXEC as libc::c_uint,
        )
    };
    if rc == 0 {
        return;
    }
    // Kernels before 5.11: walk the descriptor table.
    let Ok(entries) = std::fs::read_dir("/proc/self/fd") else {
        return;
    };
    let fds: Vec<i32> = entries
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse().ok()))
        .filter(|fd| *fd >= 3)
        .collect();
    for fd in fds {
        // SAFETY: F_SETFD on a descriptor number only changes its flags (or fails with
        // EBADF for the directory fd already closed above).
        unsafe {
            libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
        }
    }
}

/// Sends `SetupFailed` (best effort) and returns the error for the exit path.
fn fail(control: BorrowedFd<'_>, message: String) -> String {
    let _ = protocol::send(
        control,
        &Event::SetupFailed {
            message: message.clone(),
        },
        &[],
        false,
    );
    message
}

fn step<T>(what: &str, result: io::Result<T>) -> Result<T, String> {
    result.map_err(|e| format!("{what}: {e}"))
}

fn errno<T>(what: &str, result: Result<T, Errno>) -> Result<T, String> {
    result.map_err(|e| format!("{what}: {}", io::Error::from(e)))
}

/// The outer init: namespaces, uid maps, fork of the agent, wait.
fn outer_init() -> Result<i32, String> {
    // Descriptors the worker leaked without close-on-exec (a parent's jobserver pipe, ...)
    // must never reach sandboxed commands.
    mark_inherited_fds_cloexec();
    // The control socket arrives as stdin; keep a close-on-exec copy, put /dev/null on fd 0.
    let control = step(
        "dup control socket",
        io::stdin().as_fd().try_clone_to_owned(),
    )?;
    let null = step("open /dev/null", File::open("/dev/null"))?;
    errno("dup2 stdin", rustix::stdio::dup2_stdin(&null))?;
    drop(null);

    let mut buf = vec![0u8; MAX_MESSAGE];
    let setup = match protocol::recv::<Request>(control.as_fd(), &mut buf, false, false) {
        Ok(Some((Request::Setup(setup), _))) => setup,
        Ok(_) => return Err("expected a setup request".to_string()),
        Err(e) => return Err(format!("read setup request: {e}")),
    };

    if !setup.proc_overmounts.is_empty() {
        uncover_proc(&setup.proc_overmounts).map_err(|m| fail(control.as_fd(), m))?;
    }
    // Enter the root while still privileged on the host: the state dir is not searchable
    // from inside the user namespace. unshare(NEWNS) carries the cwd over to the new copy.
    errno(
        "enter rootfs",
        rustix::process::chdir(setup.rootfs.as_str()),
    )
    .map_err(|m| fail(control.as_fd(), m))?;
    let flags = UnshareFlags::NEWUSER
        | UnshareFlags::NEWNS
        | UnshareFlags::NEWUTS
        | UnshareFlags::NEWIPC
        | UnshareFlags::NEWNET
        | UnshareFlags::NEWCGROUP
        | UnshareFlags::NEWPID;
    // SAFETY: no FILES/FS/VM sharing changes are requested, and this process is
    // single-threaded, so no other thread can observe a changed resource.
    errno("unshare namespaces", unsafe {
        rustix::thread::unshare_unsafe(flags)
    })
    .map_err(|m| fail(control.as_fd(), m))?;

    step(
        "report user namespace",
        protocol::send(control.as_fd(), &Event::UsernsCreated, &[], false),
    )?;
    match protocol::recv::<Request>(control.as_fd(), &mut buf, false, false) {
        Ok(Some((Request::MapsWritten, _))) => {}
        Ok(_) => return Err("expected maps_written".to_string()),
        Err(e) => return Err(format!("read maps_written: {e}")),
    }
    drop(buf);

    // SAFETY: this process has a single thread (a fresh exec that started none), so the child
    // may run any code, allocation included.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(fail(
            control.as_fd(),
            format!("fork agent: {}", io::Error::last_os_error()),
        ));
    }
    if pid == 0 {
        let code = agent_main(control, &setup);
        std::process::exit(code);
    }
    drop(control);
    let agent = Pid::from_raw(pid).ok_or("fork returned an invalid pid")?;
    loop {
        match waitpid(Some(agent), WaitOptions::empty()) {
            Ok(Some((_, status))) => {
                if let Some(code) = status.exit_status() {
                    return Ok(code);
                }
                if let Some(sig) = status.terminating_signal() {
                    return Ok(128 + sig);
                }
            }
            Ok(None) | Err(Errno::INTR) => {}
            Err(e) => return Err(format!("wait for agent: {}", io::Error::from(e))),
        }
    }
}

/// Takes the covers off `/proc` (`overmounts`, deepest first) in a private mount namespace of
/// the init's own, made while it still has the worker's privileges; the sandbox's namespace
/// is then copied from this one, and can mount a proc of its own. The worker's view is
/// untouched, and the sandbox masks its new proc itself ([`mask_proc`]).
fn uncover_proc(overmounts: &[String]) -> Result<(), String> {
    // SAFETY: single-threaded (see `outer_init`); no sharing changes but the mount namespace.
    errno("unshare mount namespace", unsafe {
        rustix::thread::unshare_unsafe(UnshareFlags::NEWNS)
    })?;
    make_mounts_private()?;
    for target in overmounts {
        match unmount(target.as_str(), UnmountFlags::DETACH) {
            // Gone already, or under a cover taken off before.
            Ok(()) | Err(Errno::INVAL) | Err(Errno::NOENT) => {}
            Err(e) => return Err(format!("uncover {target}: {}", io::Error::from(e))),
        }
    }
    Ok(())
}

/// Makes every mount of this process's mount namespace private, so that nothing done here
/// reaches the namespace it was copied from.
fn make_mounts_private() -> Result<(), String> {
    errno(
        "make mounts private",
        mount_change(
            "/",
            MountPropagationFlags::PRIVATE | MountPropagationFlags::REC,
        ),
    )
}

/// The agent (sandbox pid 1). Returns its exit code; exiting ends the whole sandbox.
fn agent_main(control: OwnedFd, setup: &Setup) -> i32 {
    let sigfd = match build_sandbox(setup) {
        Ok(fd) => fd,
        Err(message) => {
            fail(control.as_fd(), message);
            return 1;
        }
    };
    if protocol::send(control.as_fd(), &Event::Ready, &[], false).is_err() {
        return 1;
    }
    serve(control, sigfd)
}

/// Everything between fork and serving: identity, mounts, root, lock-down. Returns the
/// signalfd that reports SIGCHLD.
fn build_sandbox(setup: &Setup) -> Result<OwnedFd, String> {
    // Die with the outer init (the worker destroys a sandbox by killing it).
    errno(
        "set parent death signal",
        set_parent_process_death_signal(Some(Signal::KILL)),
    )?;
    // Become root of the user namespace (host uid_base): files we create are the sandbox's.
    errno("setgroups", set_thread_groups(&[]))?;
    errno(
        "setresgid",
        set_thread_res_gid(Gid::ROOT, Gid::ROOT, Gid::ROOT),
    )?;
    errno(
        "setresuid",
        set_thread_res_uid(Uid::ROOT, Uid::ROOT, Uid::ROOT),
    )?;

    make_mounts_private()?;
    // The overlay came from the host's mount namespace, so it is locked here and cannot be
    // the new root; a recursive bind of it onto itself is a mount of our own. The state dirs
    // on the way are searchable for the sandbox: the state dir is 0711, the sandbox's own
    // dir 0710 with the sandbox's gid (no other host user gets in).
    errno(
        "bind root",
        mount_bind_recursive(setup.rootfs.as_str(), setup.rootfs.as_str()),
    )?;
    errno("enter root", rustix::process::chdir(setup.rootfs.as_str()))?;
    // The cwd is the root; everything below is mounted relative to it.
    errno(
        "mount /proc",
        mount(
            "proc",
            "proc",
            "proc",
            MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC,
            None,
        ),
    )?;
    build_dev()?;
    // ICMP echo sockets for the sandbox's own ids (`ping` without raw sockets or their
    // capability), in its own network namespace; before `/proc/sys` is made read-only. A
    // kernel that refuses leaves the sandbox without ping, not without a sandbox.
    let _ = std::fs::write(
        "proc/sys/net/ipv4/ping_group_range",
        format!("0 {}", super::config::UID_COUNT - 1),
    );
    mask_proc()?;
    errno(
        "set hostname",
        rustix::system::sethostname(setup.hostname.as_bytes()),
    )?;
    step("bring up loopback", loopback_up())?;

    errno("pivot_root", pivot_root(".", "."))?;
    errno("detach old root", unmount(".", UnmountFlags::DETACH))?;
    errno("chdir /", rustix::process::chdir("/"))?;
    rustix::process::umask(Mode::from_raw_mode(0o022));

    drop_capabilities()?;
    errno(
        "set not dumpable",
        rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable),
    )?;
    seccomp::install()?;
    sigchld_fd()
}

/// `/proc` entries that tell about the host or its hardware, hidden as Docker and runc hide
/// them, plus the kernel's command line and configuration: files get `/dev/null` bound over
/// them, directories an empty read-only tmpfs.
const MASKED_PROC: &[&str] = &[
    "proc/acpi",
    "proc/asound",
    "proc/interrupts",
    "proc/kcore",
    "proc/keys",
    "proc/kmsg",
    "proc/latency_stats",
    "proc/timer_list",
    "proc/timer_stats",
    "proc/sched_debug",
    "proc/scsi",
    "proc/cmdline",
    "proc/config.gz",
];

/// `/proc` entries that stay readable but become read-only.
const READ_ONLY_PROC: &[&str] = &[
    "proc/bus",
    "proc/fs",
    "proc/irq",
    "proc/sys",
    "proc/sysrq-trigger",
];

/// Masks [`MASKED_PROC`] and makes [`READ_ONLY_PROC`] read-only, where they exist.
fn mask_proc() -> Result<(), String> {
    let locked = MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC;
    for path in MASKED_PROC {
        let Ok(meta) = std::fs::symlink_metadata(path) else {
            continue;
        };
        if meta.is_dir() {
            errno(
                &format!("mask /{path}"),
                mount(
                    "tmpfs",
                    *path,
                    "tmpfs",
                    locked | MountFlags::RDONLY,
                    Some(c"size=0,mode=555"),
                ),
            )?;
        } else {
            errno(&format!("mask /{path}"), mount_bind("/dev/null", *path))?;
        }
    }
    for path in READ_ONLY_PROC {
        if std::fs::symlink_metadata(path).is_err() {
            continue;
        }
        errno(&format!("bind /{path}"), mount_bind(*path, *path))?;
        errno(
            &format!("make /{path} read-only"),
            rustix::mount::mount_remount(*path, MountFlags::BIND | MountFlags::RDONLY | locked, ""),
        )?;
    }
    Ok(())
}

/// A small tmpfs `/dev` with host devices bound in, a private devpts and `/dev/shm`.
fn build_dev() -> Result<(), String> {
    errno(
        "mount /dev",
        mount(
            "tmpfs",
            "dev",
            "tmpfs",
            MountFlags::NOSUID | MountFlags::NOEXEC,
            Some(c"mode=755,size=512k"),
        ),
    )?;
    for name in DEVICES {
        let target = format!("dev/{name}");
        step(&format!("create {target}"), File::create(&target))?;
        errno(
            &format!("bind /dev/{name}"),
            mount_bind(Path::new("/dev").join(name), target.as_str()),
        )?;
    }
    for (link, target) in [
        ("dev/fd", "/proc/self/fd"),
        ("dev/stdin", "/proc/self/fd/0"),
        ("dev/stdout", "/proc/self/fd/1"),
        ("dev/stderr", "/proc/self/fd/2"),
        ("dev/ptmx", "pts/ptmx"),
    ] {
        errno(&format!("symlink {link}"), symlinkat(target, CWD, link))?;
    }
    for dir in ["dev/pts", "dev/shm"] {
        errno(
            &format!("mkdir {dir}"),
            mkdirat(CWD, dir, Mode::from_raw_mode(0o755)),
        )?;
    }
    errno(
        "mount /dev/pts",
        mount(
            "devpts",
            "dev/pts",
            "devpts",
            MountFlags::NOSUID | MountFlags::NOEXEC,
            Some(c"newinstance,ptmxmode=0666,mode=0620"),
        ),
    )?;
    errno(
        "mount /dev/shm",
        mount(
            "tmpfs",
            "dev/shm",
            "tmpfs",
            MountFlags::NOSUID | MountFlags::NODEV,
            Some(c"mode=1777"),
        ),
    )?;
    Ok(())
}

/// Sets `IFF_UP` on `lo` of the (new) network namespace.
fn loopback_up() -> io::Result<()> {
    let sock = socket(AddressFamily::INET, SocketType::DGRAM, None)?;
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS reads the name and writes the flags member of `req`, a live,
    // correctly sized ifreq.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: after SIOCGIFFLAGS the flags member is the initialised union field.
    unsafe {
        req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
    }
    // SAFETY: as above; SIOCSIFFLAGS only reads `req`.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &mut req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Shrinks the bounding set to [`KEPT_CAPABILITIES`], clears ambient and inheritable caps,
/// and limits the effective and permitted sets accordingly.
fn drop_capabilities() -> Result<(), String> {
    let last: u32 = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40);
    for cap in 0..=last.min(63) {
        if KEPT_CAPABILITIES.bits() & (1u64 << cap) != 0 {
            continue;
        }
        // SAFETY: PR_CAPBSET_DROP takes a capability number and no pointers.
        let rc = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) };
        if rc < 0 {
            let err = io::Error::last_os_error();
            // Numbers the kernel does not know are fine.
            if err.raw_os_error() != Some(libc::EINVAL) {
                return Err(format!("drop capability {cap}: {err}"));
            }
        }
    }
    // SAFETY: PR_CAP_AMBIENT_CLEAR_ALL takes no pointers.
    let rc = unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0,
            0,
            0,
        )
    };
    if rc < 0 {
        return Err(format!(
            "clear ambient capabilities: {}",
            io::Error::last_os_error()
        ));
    }
    errno(
        "set capabilities",
        set_capabilities(
            None,
            CapabilitySets {
                effective: KEPT_CAPABILITIES,
                permitted: KEPT_CAPABILITIES,
                inheritable: CapabilitySet::empty(),
            },
        ),
    )
}

/// Blocks SIGCHLD and returns a non-blocking signalfd for it.
fn sigchld_fd() -> Result<OwnedFd, String> {
    // SAFETY: sigset_t is plain data initialised by sigemptyset/sigaddset before use; the
    // pointers passed to sigprocmask and signalfd point at that live local.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGCHLD);
        if libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) < 0 {
            return Err(format!("block SIGCHLD: {}", io::Error::last_os_error()));
        }
        let fd = libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK);
        if fd < 0 {
            return Err(format!("signalfd: {}", io::Error::last_os_error()));
        }
        // SAFETY: signalfd returned a new descriptor that nothing else owns.
        Ok(OwnedFd::from_raw_fd(fd))
    }
}

/// The agent's request loop. Returns when the worker goes away.
fn serve(control: OwnedFd, sigfd: OwnedFd) -> i32 {
    let mut buf = vec![0u8; MAX_MESSAGE];
    let mut pid_to_id: HashMap<i32, u64> = HashMap::new();
    let mut id_to_pid: HashMap<u64, i32> = HashMap::new();
    loop {
        let (control_ready, child_ready) = {
            let mut fds = [
                PollFd::new(&control, PollFlags::IN),
                PollFd::new(&sigfd, PollFlags::IN),
            ];
            match poll(&mut fds, None) {
                Ok(_) => {}
                Err(Errno::INTR) => continue,
                Err(_) => return 1,
            }
            (!fds[0].revents().is_empty(), !fds[1].revents().is_empty())
        };
        if child_ready {
            drain_signalfd(&sigfd);
            reap(&control, &mut pid_to_id, &mut id_to_pid);
        }
        if !control_ready {
            continue;
        }
        match protocol::recv::<Request>(control.as_fd(), &mut buf, true, false) {
            Ok(Some((
                Request::Exec {
                    id,
                    argv,
                    env,
                    cwd,
                    out_of_reach,
                    tty,
                    user,
                },
                fds,
            ))) => {
                let options = ChildOptions {
                    out_of_reach,
                    tty,
                    user,
                };
                let event = match spawn(&argv, &env, &cwd, fds, options) {
                    Ok(pid) => {
                        pid_to_id.insert(pid, id);
                        id_to_pid.insert(id, pid);
                        Event::Started { id }
                    }
                    Err(message) => Event::ExecFailed { id, message },
                };
                if protocol::send(control.as_fd(), &event, &[], false).is_err() {
                    return 0;
                }
            }
            Ok(Some((Request::Copy { id }, fds))) => {
                let event = match spawn_copy(fds) {
                    Ok(pid) => {
                        pid_to_id.insert(pid, id);
                        id_to_pid.insert(id, pid);
                        Event::Started { id }
                    }
                    Err(message) => Event::ExecFailed { id, message },
                };
                if protocol::send(control.as_fd(), &event, &[], false).is_err() {
                    return 0;
                }
            }
            Ok(Some((Request::Kill { id }, _))) => {
                if let Some(pid) = id_to_pid.get(&id).and_then(|p| Pid::from_raw(*p)) {
                    let _ = kill_process_group(pid, Signal::KILL);
                }
            }
            Ok(Some((Request::Signal { id, signal }, _))) => {
                let signal = match ExecSignal::from_number(signal) {
                    Some(ExecSignal::Hup) => Signal::HUP,
                    Some(ExecSignal::Int) => Signal::INT,
                    Some(ExecSignal::Kill) => Signal::KILL,
                    Some(ExecSignal::Term) => Signal::TERM,
                    None => continue,
                };
                if let Some(pid) = id_to_pid.get(&id).and_then(|p| Pid::from_raw(*p)) {
                    let _ = kill_process_group(pid, signal);
                }
            }
            Ok(Some((Request::KillGroup { pgid }, _))) => {
                // Never 1 (that would signal every process) nor 0 (our own group).
                if pgid > 1 {
                    if let Some(pid) = Pid::from_raw(pgid) {
                        let _ = kill_process_group(pid, Signal::KILL);
                    }
                }
            }
            Ok(Some(_)) => {}
            // The worker is gone (or broke the protocol): ending pid 1 ends the sandbox.
            Ok(None) | Err(_) => return 0,
        }
    }
}

fn drain_signalfd(sigfd: &OwnedFd) {
    let mut info = [0u8; 128 * 8];
    while let Ok(n) = rustix::io::read(sigfd, &mut info) {
        if n == 0 {
            break;
        }
    }
}

/// Reaps every exited child; reports the ones that are exec leaders.
fn reap(control: &OwnedFd, pid_to_id: &mut HashMap<i32, u64>, id_to_pid: &mut HashMap<u64, i32>) {
    loop {
        // `wait` is waitpid(-1): commands run in their own process groups.
        match wait(WaitOptions::NOHANG) {
            Ok(Some((pid, status))) => {
                let code = status
                    .exit_status()
                    .or_else(|| status.terminating_signal().map(|s| 128 + s));
                let Some(code) = code else { continue };
                if let Some(id) = pid_to_id.remove(&pid.as_raw_nonzero().get()) {
                    id_to_pid.remove(&id);
                    let _ =
                        protocol::send(control.as_fd(), &Event::Exited { id, code }, &[], false);
                }
            }
            Ok(None) | Err(_) => return,
        }
    }
}

/// The files to try for `argv0`: itself when it has a `/`, else each `PATH` entry.
pub(crate) fn candidates(argv0: &str, path: &str) -> Vec<String> {
    if argv0.contains('/') {
        return vec![argv0.to_string()];
    }
    path.split(':')
        .map(|dir| {
            let dir = if dir.is_empty() { "." } else { dir };
            format!("{}/{argv0}", dir.trim_end_matches('/'))
        })
        .collect()
}

fn cstring(s: &str, what: &str) -> Result<CString, String> {
    CString::new(s).map_err(|_| format!("{what} contains a NUL byte"))
}

/// Forks and execs a command in its own session with `fds` as stdin/stdout/stderr (and fd 3
/// when a fourth is given). Returns
/// its pid once the exec succeeded, or why it could not start.
fn spawn(
    argv: &[String],
    env: &[(String, String)],
    cwd: &str,
    fds: Vec<OwnedFd>,
    options: ChildOptions,
) -> Result<i32, String> {
    if fds.len() != 3 && fds.len() != 4 {
        return Err("exec request without its 3 stdio descriptors".to_string());
    }
    let Some(argv0) = argv.first() else {
        return Err("empty command".to_string());
    };
    let path = env
        .iter()
        .rev()
        .find(|(k, _)| k == "PATH")
        .map_or(DEFAULT_PATH, |(_, v)| v.as_str());
    let files: Vec<CString> = candidates(argv0, path)
        .iter()
        .map(|c| cstring(c, "program path"))
        .collect::<Result<_, _>>()?;
    let args: Vec<CString> = argv
        .iter()
        .map(|a| cstring(a, "an argument"))
        .collect::<Result<_, _>>()?;
    let vars: Vec<CString> = env
        .iter()
        .map(|(k, v)| {
            if k.is_empty() || k.contains('=') {
                return Err(format!("invalid environment variable name {k:?}"));
            }
            cstring(&format!("{k}={v}"), "an environment variable")
        })
        .collect::<Result<_, _>>()?;
    let dir = cstring(cwd, "the working directory")?;
    let mut arg_ptrs: Vec<*const libc::c_char> = args.iter().map(|a| a.as_ptr()).collect();
    arg_ptrs.push(std::ptr::null());
    let mut env_ptrs: Vec<*const libc::c_char> = vars.iter().map(|v| v.as_ptr()).collect();
    env_ptrs.push(std::ptr::null());
    let (err_read, err_write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
        .map_err(|e| format!("pipe: {}", io::Error::from(e)))?;

    // SAFETY: the agent is single-threaded, so the child may run ordinary code; everything
    // it touches (fds, C strings, pointer arrays) was built before the fork and stays alive.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(format!("fork: {}", io::Error::last_os_error()));
    }
    if pid == 0 {
        exec_child(
            &fds, &dir, &files, &arg_ptrs, &env_ptrs, &err_write, options,
        );
    }
    drop(err_write);
    drop(fds);
    let mut report = [0u8; 5];
    let mut got = 0;
    let mut pipe = File::from(err_read);
    while got < report.len() {
        match pipe.read(&mut report[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    if got == 0 {
        return Ok(pid);
    }
    let code = i32::from_ne_bytes([report[0], report[1], report[2], report[3]]);
    let err = io::Error::from_raw_os_error(code);
    Err(match report[4] {
        STAGE_CWD => format!("working directory {cwd}: {err}"),
        STAGE_USER => format!(
            "cannot run {argv0} as the image's user {}: {err}",
            options
                .user
                .map(|u| format!("{}:{}", u.uid, u.gid))
                .unwrap_or_default()
        ),
        STAGE_EXEC if code == libc::ENOENT => format!("{PROGRAM_NOT_FOUND}{argv0}"),
        STAGE_EXEC if code == libc::EACCES => format!("permission denied: {argv0}"),
        STAGE_EXEC => format!("cannot execute {argv0}: {err}"),
        _ => format!("cannot set up {argv0}: {err}"),
    })
}

/// Forks a process that copies the first of `fds` (a pipe) into the second (a file) and exits
/// with 0, or with the errno of the read or write that failed. It runs in the sandbox's cgroup
/// (so the sandbox pays for the pages) and volunteers to be the first victim of the sandbox's
/// memory limit: a write that does not fit kills the copy, not the sandbox's other processes.
fn spawn_copy(fds: Vec<OwnedFd>) -> Result<i32, String> {
    let [source, target] = <[OwnedFd; 2]>::try_from(fds)
        .map_err(|_| "copy request without its 2 descriptors".to_string())?;
    // Allocated before the fork: the child only reads and writes.
    let mut buf = vec![0u8; 64 * 1024];
    // SAFETY: the agent is single-threaded, so the child may run ordinary code; it only uses
    // the two descriptors and the buffer made before the fork, and ends in `_exit`.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(format!("fork: {}", io::Error::last_os_error()));
    }
    if pid == 0 {
        // SAFETY: plain syscalls on live descriptors and a live buffer; `_exit` never returns.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
            libc::setsid();
            let _ = std::fs::write("/proc/self/oom_score_adj", "1000");
            let code = copy_all(&source, &target, &mut buf);
            libc::_exit(code)
        }
    }
    Ok(pid)
}

/// Copies `source` to its end into `target`: 0, or the errno that stopped it.
fn copy_all(source: &OwnedFd, target: &OwnedFd, buf: &mut [u8]) -> i32 {
    loop {
        let n = match rustix::io::read(source, &mut *buf) {
            Ok(0) => return 0,
            Ok(n) => n,
            Err(Errno::INTR) => continue,
            Err(e) => return e.raw_os_error(),
        };
        let mut done = 0;
        while done < n {
            match rustix::io::write(target, &buf[done..n]) {
                Ok(0) => return libc::EIO,
                Ok(w) => done += w,
                Err(Errno::INTR) => {}
                Err(e) => return e.raw_os_error(),
            }
        }
    }
}

/// How a command's process is set up beyond its stdio, cwd and program.
#[derive(Debug, Clone, Copy)]
struct ChildOptions {
    /// Real uid 1, effective uid 0: non-dumpable from the exec on (the Python zygote).
    out_of_reach: bool,
    /// Its stdin is a terminal to make its controlling terminal.
    tty: bool,
    /// Drop to this user (the image's) before the working directory and the program.
    user: Option<ExecUser>,
}

/// In the forked child: reset signals, new session, stdio, cwd, exec. Never returns.
fn exec_child(
    fds: &[OwnedFd],
    dir: &CStr,
    files: &[CString],
    argv: &[*const libc::c_char],
    envp: &[*const libc::c_char],
    err_write: &OwnedFd,
    options: ChildOptions,
) -> ! {
    let ChildOptions {
        out_of_reach,
        tty,
        user,
    } = options;
    // SAFETY: plain syscalls on live descriptors and on NUL-terminated strings and
    // null-terminated pointer arrays built before the fork; the child never returns into the
    // agent's code (every path ends in execve or _exit).
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
        // The Rust runtime ignores SIGPIPE; commands expect the default.
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        if libc::setsid() < 0 {
            child_fail(err_write, STAGE_SETUP);
        }
        for (target, fd) in fds.iter().enumerate() {
            let target = target as libc::c_int;
            // dup2 onto itself keeps close-on-exec; clear it instead.
            let rc = if fd.as_raw_fd() == target {
                libc::fcntl(target, libc::F_SETFD, 0)
            } else {
                libc::dup2(fd.as_raw_fd(), target)
            };
            if rc < 0 {
                child_fail(err_write, STAGE_SETUP);
            }
        }
        // A terminal on stdin becomes the new session's controlling terminal.
        if tty && libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
            child_fail(err_write, STAGE_SETUP);
        }
        // The image's user: its gid as its only group, then its uid (all three of each), which
        // leaves it no capabilities. Before the working directory, which it must be able to
        // reach itself.
        if let Some(ExecUser { uid, gid }) = user {
            let groups = [gid as libc::gid_t];
            // The worker's own helpers never run as a user: refuse rather than guess.
            if out_of_reach
                || libc::setgroups(1, groups.as_ptr()) < 0
                || libc::setresgid(gid, gid, gid) < 0
                || libc::setresuid(uid, uid, uid) < 0
            {
                child_fail(err_write, STAGE_USER);
            }
        }
        if libc::chdir(dir.as_ptr()) < 0 {
            child_fail(err_write, STAGE_CWD);
        }
        // Real uid 1, effective and saved 0: at execve the kernel sees them differ and leaves
        // the process non-dumpable, and ptrace-like access by uid 0 needs CAP_SYS_PTRACE.
        if out_of_reach && libc::setresuid(1, 0, 0) < 0 {
            child_fail(err_write, STAGE_SETUP);
        }
        let mut last = libc::ENOENT;
        let mut saw_eacces = false;
        for file in files {
            libc::execve(file.as_ptr(), argv.as_ptr(), envp.as_ptr());
            last = *libc::__errno_location();
            match last {
                libc::EACCES => saw_eacces = true,
                libc::ENOENT | libc::ENOTDIR => {}
                _ => break,
            }
        }
        if saw_eacces && (last == libc::ENOENT || last == libc::ENOTDIR) {
            last = libc::EACCES;
        }
        *libc::__errno_location() = last;
        child_fail(err_write, STAGE_EXEC)
    }
}

/// Writes errno and the stage to the error pipe and exits with 127.
fn child_fail(err_write: &OwnedFd, stage: u8) -> ! {
    let code = io::Error::last_os_error().raw_os_error().unwrap_or(0);
    let mut report = [0u8; 5];
    report[..4].copy_from_slice(&code.to_ne_bytes());
    report[4] = stage;
    let _ = rustix::io::write(err_write, &report);
    // SAFETY: _exit ends the process without running the parent's atexit handlers or
    // flushing its stdio buffers, which belong to the agent.
    unsafe { libc::_exit(127) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_lookup_candidates() {
        assert_eq!(candidates("/bin/sh", "/x"), vec!["/bin/sh"]);
        assert_eq!(candidates("./run", "/x"), vec!["./run"]);
        assert_eq!(
            candidates("python3", "/usr/local/bin:/usr/bin/::/bin"),
            vec![
                "/usr/local/bin/python3",
                "/usr/bin/python3",
                "./python3",
                "/bin/python3"
            ]
        );
    }

    #[test]
    fn kept_capabilities_exclude_admin_powers() {
        for cap in [
            CapabilitySet::SYS_ADMIN,
            CapabilitySet::NET_ADMIN,
            CapabilitySet::SYS_PTRACE,
            CapabilitySet::SYS_MODULE,
            CapabilitySet::MKNOD,
            CapabilitySet::DAC_READ_SEARCH,
        ] {
            assert!(!KEPT_CAPABILITIES.contains(cap), "{cap:?}");
        }
    }
}
