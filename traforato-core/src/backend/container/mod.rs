//! The `container` backend: isolated sandboxes on a plain Linux host, built by the worker
//! itself with syscalls (no daemon, no external runtime).
//!
//! # How a sandbox is made
//!
//! Host side (worker, as root):
//! 1. `<state_dir>/<vm_id>/scratch` gets a size-capped tmpfs holding the overlay's `upper` and
//!    `work` dirs; `<state_dir>/<vm_id>/rootfs` gets the overlay (lower = the image's dirs),
//!    then the image's read-only binds (the `host` image binds `/usr`). These mounts live in
//!    the host mount namespace so the files API can reach the sandbox's real filesystem.
//! 2. A cgroup per hierarchy at `<hierarchy>/<cgroup_parent>/<vm_id>` with cpu quota
//!    (cpus × period), memory (and memory+swap) limit and `pids.max` (cgroup v1 or v2).
//! 3. The init program is spawned (`<init_program> __traforato-sandbox-init`, empty
//!    environment, a `SOCK_SEQPACKET` control socket as stdin) and moved into the cgroups.
//!    On cgroup v1 a create a client waits for takes a spare init instead (`spare.rs`):
//!    spawned ahead and already in a cgroup of its own, which is renamed to `<vm_id>` and
//!    given the limits of step 2 (moving a process into a cgroup waits for an RCU grace
//!    period on an idle host, 6–10 ms; the spare paid it off the request path).
//!
//! Init side (a fresh single-threaded process, see `init.rs`; the worker never forks itself):
//! it enters the root directory, unshares user, mount, uts, ipc, net, cgroup and pid
//! namespaces, lets the worker write the uid/gid maps (sandbox 0..65535 → host
//! `uid_base`..), and forks the sandbox's pid 1 (the agent). The agent becomes root of the
//! user namespace, re-binds the root onto itself (mounts inherited from the host are locked in
//! a user namespace and cannot become the new root; this is why the state dir and its parents
//! must be searchable by others), mounts `/proc`, a tmpfs `/dev` with host devices bound in,
//! devpts and `/dev/shm`, sets the host name, brings up `lo`, `pivot_root`s into the root,
//! shrinks the capability bounding set to a container-like set, sets `no_new_privs`, becomes
//! non-dumpable and installs the seccomp filter (`seccomp.rs`). It then serves exec requests
//! (`protocol.rs`): each command is forked into its own session (so a timeout kills the whole
//! process group) with the stdio fds passed over the socket, its `argv[0]` looked up in the
//! request's `PATH`. As pid 1 it reaps every orphan. When the worker's end of the socket
//! closes, the agent exits and the kernel kills everything left in the pid namespace.
//!
//! # Entry points for binaries
//!
//! The init runs `<init_program> __traforato-sandbox-init`. Two ways to provide it:
//! - default `init_program = /proc/self/exe`: the server binary calls
//!   [`init_main_if_requested`] first thing in `main` (before any runtime or thread), so the
//!   worker needs no second file;
//! - the `traforato-sandbox-init` binary of this crate (it calls [`init_main`]), e.g. for
//!   tests (`env!("CARGO_BIN_EXE_traforato-sandbox-init")`).
//!
//! One backend per `state_dir` and `cgroup_parent`: `cleanup_leftovers` treats every sandbox
//! directory and cgroup it finds there as its own.
//!
//! # Isolation choices
//!
//! - **User namespace always.** Sandbox root is host uid `uid_base`, unprivileged on the host;
//!   its capabilities apply only to its own namespaces and files. The image's host-owned files
//!   appear as `nobody` and are read-only to it; `/usr` of the `host` image is additionally a
//!   read-only bind.
//! - **No `/sys`, no cgroupfs inside.** Limits cannot be changed from inside; `mount` is
//!   denied by both the missing capability and seccomp.
//! - **Network:** a private namespace with only `lo` up. [`crate::backend::Vm::connect`]
//!   reaches `127.0.0.1:port` inside by joining the namespace from a short-lived thread; no
//!   host port is published.
//! - **Files API:** `openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)` on an fd of the root,
//!   with the thread's fsuid/fsgid switched to the sandbox's root (`files.rs`). `/proc`,
//!   `/dev` and `/dev/shm` are mounted only inside the sandbox's mount namespace and are not
//!   visible through the files API; `/tmp` is part of the overlay and is.
//!
//! # Run-code and the Python zygote
//!
//! Each run is one interpreter that checks the syntax before running anything (`code.rs`).
//! With [`ContainerConfig::python_zygote`] (default), a sandbox gets a pre-warmed Python
//! zygote, as a child of the agent and so under the sandbox's namespaces, cgroup and seccomp
//! filter; Python runs are forked from it (`zygote.rs`). A warm-pool provision starts it at
//! once; a sandbox made for a waiting create starts it after its first Python run (which
//! would go one-shot anyway, and would otherwise share the CPU with the starting zygote);
//! [`ContainerConfig::lazy_zygote`] makes warm-pool sandboxes wait too. Provisioning does not
//! wait for it, and neither do execs and runs: a run that comes before the zygote is ready
//! starts its own interpreter (`zygote.rs`). Runs without it (no `python3`, zygote dead or
//! unresponsive) start a fresh interpreter. The warm pool waits for it
//! ([`Vm::settle`]) before offering the sandbox, so a claim never
//! competes with a starting interpreter.
//!
//! # Warm pool
//!
//! A provisioned sandbox is complete and idle (three small processes with the Python zygote,
//! three mounts); claiming it does no mount or namespace work.

mod agent;
mod cgroup;
mod code;
mod config;
mod dns;
mod exec;
mod files;
mod fscreds;
mod image;
mod init;
mod inspect;
mod mounts;
mod net;
mod netlink;
mod netns;
pub mod oci;
mod protocol;
#[cfg(feature = "fuzzing")]
pub(crate) use protocol::fuzz_packet;
mod pty;
mod seccomp;
mod spare;
mod user;
mod vm;
mod zygote;

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use rustix::fs::{chownat, openat, openat2, AtFlags, Gid, Mode, OFlags, ResolveFlags, Uid, CWD};
use rustix::net::{socketpair, AddressFamily, SocketFlags, SocketType};
use tokio::io::unix::AsyncFd;
use tokio::io::AsyncReadExt;
use tokio::process::Child;

pub use config::{ContainerConfig, DEFAULT_UID_BASE, INIT_ARG, UID_COUNT};
pub use image::{ImageHold, ImageLayout, ImageSource, ReadOnlyBind, RunDefaults, HOST_IMAGE};
pub use init::{init_main, init_main_if_requested};
pub use net::{NetworkSettings, DEFAULT_BLOCKED, DEFAULT_RANGE};
pub use vm::ContainerVm;

use self::agent::AgentConn;
use self::cgroup::{CgroupDriver, CgroupVersion, Limits, SandboxCgroup};
use self::files::SandboxRoot;
use self::image::ImageStore;
use self::protocol::{Event, Request, Setup, MAX_MESSAGE};
use self::vm::Teardown;
use self::vm::DEFAULT_CWD;
use crate::backend::{BackendError, ImageCatalog, ProvisionSpec, Vm, VmBackend};
use crate::id::LocalVmId;
use crate::network::{Egress, Policy};

/// The file of the state dir that lists the cgroup parents this backend created.
const CGROUP_LEDGER: &str = "cgroup-parents";

/// Directories prepared in every sandbox's writable layer: mount points and the usual
/// writable places, owned by the sandbox's root.
const UPPER_DIRS: [(&str, u32); 5] = [
    ("proc", 0o555),
    ("dev", 0o755),
    ("tmp", 0o1777),
    ("root", 0o700),
    ("workspace", 0o755),
];

/// How long destroy waits for a sandbox's tasks to disappear.
const KILL_TIMEOUT: Duration = Duration::from_secs(5);

/// How long destroy retries removing a cgroup that exiting tasks still pin.
const CGROUP_REMOVE_TIMEOUT: Duration = Duration::from_secs(2);

/// The `container` [`VmBackend`]. See the module docs for what a sandbox is made of.
pub struct ContainerBackend {
    config: ContainerConfig,
    cgroups: CgroupDriver,
    images: ImageStore,
    /// Egress plumbing, shared by the sandboxes.
    networking: Arc<net::Networking>,
    /// Inits started ahead for cold creates (cgroup v1).
    spares: Arc<spare::Spares>,
    /// What covers parts of `/proc` here ([`proc_overmounts`]), for the inits to take off.
    proc_overmounts: Vec<String>,
}

impl std::fmt::Debug for ContainerBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContainerBackend")
            .field("config", &self.config)
            .field("cgroups", &self.cgroups.version())
            .finish()
    }
}

fn unavailable(message: impl Into<String>) -> BackendError {
    BackendError::Unavailable(message.into())
}

/// Checks what the backend needs from the host; the error says what is missing and how to
/// get it.
fn check_prerequisites(config: &ContainerConfig) -> Result<(), BackendError> {
    if !rustix::process::geteuid().is_root() {
        return Err(unavailable(
            "the container backend needs root (run the worker as root, or pick another \
             virtualization)",
        ));
    }
    let filesystems = fs::read_to_string("/proc/filesystems").unwrap_or_default();
    let listed = filesystems
        .lines()
        .any(|l| l.trim_end().ends_with("\toverlay"));
    // Not loaded yet is fine when the module exists: the first mount loads it.
    let release = rustix::system::uname()
        .release()
        .to_string_lossy()
        .into_owned();
    let module = Path::new("/lib/modules")
        .join(release)
        .join("kernel/fs/overlayfs")
        .is_dir();
    if !listed && !module {
        return Err(unavailable(
            "overlayfs is not available (load it with `modprobe overlay`)",
        ));
    }
    match openat2(
        CWD,
        "/",
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::IN_ROOT,
    ) {
        Ok(_) => {}
        Err(rustix::io::Errno::NOSYS) => {
            return Err(unavailable(
                "the kernel lacks openat2 (needs Linux 5.6 or newer)",
            ))
        }
        Err(e) => {
            return Err(unavailable(format!(
                "openat2 does not work: {}",
                io::Error::from(e)
            )))
        }
    }
    if let Ok(max) = fs::read_to_string("/proc/sys/user/max_user_namespaces") {
        if max.trim() == "0" {
            return Err(unavailable(
                "user namespaces are disabled (set the sysctl user.max_user_namespaces above 0)",
            ));
        }
    }
    if config.init_program != Path::new("/proc/self/exe") && !config.init_program.is_file() {
        return Err(unavailable(format!(
            "init program {} does not exist (build traforato-sandbox-init, or use \
             /proc/self/exe with init_main_if_requested)",
            config.init_program.display()
        )));
    }
    seccomp::programs().map_err(unavailable)?;
    Ok(())
}

/// The sandbox's init enters its root through the state dir from inside its user namespace,
/// as an unprivileged uid: every existing ancestor must be searchable by others.
fn check_searchable(state_dir: &Path) -> Result<(), BackendError> {
    for dir in state_dir.ancestors() {
        let Ok(meta) = fs::metadata(dir) else {
            continue;
        };
        let mode = meta.permissions().mode();
        // Root does path work under the state dir: nobody else may be able to swap a
        // component for a symlink (a sticky directory such as /tmp is fine above it).
        if meta.uid() != 0 || (mode & 0o022 != 0 && mode & 0o1000 == 0) {
            return Err(unavailable(format!(
                "{} must be owned by root and not writable by group or others \
                 (chown root and chmod go-w it, or pick another state_dir)",
                dir.display()
            )));
        }
        if mode & 0o001 == 0 {
            return Err(unavailable(format!(
                "{} must be searchable by others for the sandboxes to reach their roots \
                 (chmod o+x it, or pick another state_dir)",
                dir.display()
            )));
        }
    }
    Ok(())
}

/// Creates `dir` (and parents) with `mode` if missing.
fn ensure_dir(dir: &Path, mode: u32) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    fs::DirBuilder::new().recursive(true).mode(mode).create(dir)
}

impl ContainerBackend {
    /// Checks the host (root, overlayfs, openat2, user namespaces, cgroups, the init
    /// program), creates the state dir and cgroup parents and builds the `host` image.
    /// [`BackendError::Unavailable`] says what is missing.
    pub fn new(config: ContainerConfig) -> Result<Self, BackendError> {
        config.validate().map_err(unavailable)?;
        let networking = Arc::new(
            net::Networking::new(&config.network, &config.cgroup_parent).map_err(unavailable)?,
        );
        check_prerequisites(&config)?;
        // Before anything is created, so that a refusal leaves nothing behind.
        check_searchable(&config.state_dir)?;
        let cgroups = CgroupDriver::detect(&config.cgroup_parent)
            .map_err(unavailable)?
            .with_ledger(config.state_dir.join(CGROUP_LEDGER));
        // The parents a crashed run made are this backend's to remove at shutdown: taken on
        // before anything rewrites the list.
        cgroups.adopt_ledger();
        cgroups.prepare().map_err(|e| {
            unavailable(format!(
                "cannot set up the cgroup parent {:?}: {e} (the worker needs write access to \
                 the cgroup hierarchies; on cgroup v2 its parent must delegate cpu, memory and \
                 pids)",
                config.cgroup_parent
            ))
        })?;
        let images_dir = config.state_dir.join("images");
        // 0711: the sandbox's user may traverse to its root but not list other sandboxes.
        ensure_dir(&config.state_dir, 0o711)
            .and_then(|()| ensure_dir(&images_dir, 0o711))
            .map_err(|e| {
                unavailable(format!(
                    "cannot create the state dir {}: {e}",
                    config.state_dir.display()
                ))
            })?;
        // The parents made above (and a crashed run's), now that the state dir exists.
        cgroups.save_ledger();
        let host = image::host_image(&images_dir, config.uid_base, &config.hostname)
            .map_err(|e| unavailable(format!("cannot build the host image: {e}")))?;
        let mut images = ImageStore::new(host, config.images.clone(), config.default_image.clone());
        if let Some(dir) = &config.oci_dir {
            let mapping = oci::Mapping {
                uid_base: config.uid_base,
                count: UID_COUNT,
            };
            let cache = oci::OciImages::new(
                dir.clone(),
                config.registries.clone(),
                mapping,
                config.oci_max_disk,
            );
            images.add_source(Arc::new(cache));
        }
        tracing::info!(
            state_dir = %config.state_dir.display(),
            cgroup = ?cgroups.version(),
            "container backend ready"
        );
        // A v2 cgroup cannot be renamed, so a spare's could not become the sandbox's.
        let spare_inits = match cgroups.version() {
            CgroupVersion::V1 => config.spare_inits,
            CgroupVersion::V2 => 0,
        };
        let spares = Arc::new(spare::Spares::new(
            spare_inits,
            spare::Starter {
                init_program: config.init_program.clone(),
                cgroups: cgroups.clone(),
                pids_limit: config.pids_limit,
            },
        ));
        spares.fill();
        let proc_overmounts = mounts::read_mountinfo()
            .map(|entries| mounts::proc_overmounts(&entries))
            .unwrap_or_default();
        if !proc_overmounts.is_empty() {
            tracing::info!(
                covered = ?proc_overmounts,
                "parts of /proc are covered here (a container?): each sandbox's init takes the \
                 covers off in a mount namespace of its own"
            );
        }
        Ok(Self {
            config,
            cgroups,
            images,
            networking,
            spares,
            proc_overmounts,
        })
    }

    /// Spare inits ready for cold creates (see [`ContainerConfig::spare_inits`]).
    pub fn spare_inits_ready(&self) -> usize {
        self.spares.ready()
    }

    /// Starts the spare inits in the background: again after a [`VmBackend::shutdown`] (a
    /// backend starts them when it is made, and a cold create that takes one starts its
    /// replacement). Needs a tokio runtime.
    pub fn start_spare_inits(&self) {
        self.spares.fill();
    }

    /// Adds an image source asked after the built-in images (e.g. an OCI registry client).
    pub fn with_image_source(mut self, source: Arc<dyn ImageSource>) -> Self {
        self.images.add_source(source);
        self
    }

    /// The configuration in force.
    pub fn config(&self) -> &ContainerConfig {
        &self.config
    }

    /// True when the host uses cgroup v2 (unified), false for v1.
    pub fn uses_cgroup_v2(&self) -> bool {
        self.cgroups.version() == CgroupVersion::V2
    }

    /// The cgroup directories a sandbox has (one per hierarchy), for inspection.
    pub fn cgroup_dirs(&self, vm_id: &LocalVmId) -> Vec<PathBuf> {
        self.cgroups.sandbox_dirs(&vm_id.to_string())
    }

    /// Removes the cgroup parents this backend created (not those that existed before), as
    /// far as they are empty: another worker may share them. The spare inits go first (they
    /// live in the parents; blocking, bounded). [`VmBackend::shutdown`] calls it; a later
    /// provision makes them again (and they are removed again at shutdown).
    pub fn remove_cgroup_parents(&self) -> Result<(), BackendError> {
        self.spares.close_now();
        let kept = self
            .cgroups
            .remove_parents()
            .map_err(|e| BackendError::io("remove cgroup parents", e))?;
        if !kept.is_empty() {
            tracing::debug!(kept = ?kept, "cgroup parents still in use, left in place");
        }
        Ok(())
    }

    /// A provision, with `network` attached while it boots; undone whole when it fails.
    async fn provision_attached(
        &self,
        spec: ProvisionSpec,
        network: Option<&Policy>,
    ) -> Result<Arc<dyn Vm>, BackendError> {
        let name = spec.vm_id.to_string();
        let mut guard = ProvisionGuard {
            dir: self.config.state_dir.join(&name),
            name,
            setup: Arc::default(),
            child: None,
            cgroups: self.cgroups.clone(),
            armed: true,
            hold: ImageHold::default(),
        };
        match self.boot(&spec, &mut guard, network).await {
            Ok(vm) => Ok(vm),
            Err(e) => {
                if let Some(rollback) = guard.take() {
                    rollback.run().await;
                }
                Err(e)
            }
        }
    }

    /// Provision steps; resources are recorded in `guard` as they are made. With `network`,
    /// the sandbox gets it too, attached while its init sets up.
    async fn boot(
        &self,
        spec: &ProvisionSpec,
        guard: &mut ProvisionGuard,
        network: Option<&Policy>,
    ) -> Result<Arc<dyn Vm>, BackendError> {
        let mut layout = self.images.resolve(&spec.tuple.image).await?;
        // Kept until the root is gone: by the rollback of a failed provision, else by the
        // sandbox's teardown.
        guard.hold = std::mem::take(&mut layout.hold);
        let pulled = layout.pulled;
        let defaults = layout.defaults.clone();
        let dir = guard.dir.clone();
        let uid = self.config.uid_base;
        let limits = Limits {
            cpus: spec.tuple.cpu.max(1),
            memory_bytes: spec.memory_mib.saturating_mul(1 << 20),
            pids: self.config.pids_limit,
        };
        let setup = Arc::clone(&guard.setup);
        let cgroups = self.cgroups.clone();
        let name = guard.name.clone();
        let scratch_mib = self.config.scratch_size_mib;
        let host_dir = dir.clone();
        // Also held by the host step, which may outlive a cancelled provision.
        let setup_hold = guard.hold.clone();
        // A spare init (already in a cgroup of its own) saves starting one and moving it into
        // a cgroup; the guard holds it from here, so a failed provision kills it. Kept for
        // the creates a client waits for.
        let taken = if spec.warm { None } else { self.spares.take() };
        let (spare, mut spare_cgroup) = match taken {
            Some(spare) => {
                guard.child = Some(spare.child);
                (Some((spare.control, spare.pid)), Some(spare.cgroup))
            }
            None => (None, None),
        };
        let cgroup = tokio::task::spawn_blocking(move || {
            let _hold = setup_hold;
            // Dropped unadopted (the sandbox directory could not be made), the spare's cgroup
            // removes itself with what is in it.
            setup.run(&host_dir, uid, &cgroups, &name, || {
                // Renamed first: from here a rollback finds it by the sandbox's name. A spare
                // that cannot be adopted is removed (its init with it), and the create goes on
                // the usual way: a spare only saves time.
                let adopted = spare_cgroup.take().and_then(|spare| {
                    match cgroups.adopt(spare.adopt(), &name, limits) {
                        Ok(cgroup) => Some(cgroup),
                        Err((spare, error)) => {
                            tracing::warn!(%error, "spare init not adopted; starting one");
                            drop(spare::SpareCgroup::from(spare));
                            None
                        }
                    }
                });
                let (cgroup, adopted) = match adopted {
                    Some(cgroup) => (cgroup, true),
                    None => (cgroups.create(&name, limits)?, false),
                };
                prepare_root(&host_dir, &layout, uid, scratch_mib)?;
                Ok((cgroup, adopted))
            })
        })
        .await
        .map_err(|e| BackendError::task("host setup", e))?
        .map_err(|e| BackendError::host_disk("prepare sandbox", e))?;
        let (cgroup, adopted) = cgroup;

        let (worker_end, pid, cgroup) = match spare {
            Some((control, pid)) if adopted => (control, pid, cgroup),
            _ => {
                // The spare's init, if any, died with its cgroup; it is reaped in the background.
                if let Some(mut dead) = guard.child.take() {
                    let _ = dead.start_kill();
                }
                let (child, control, pid) = start_init(&self.config.init_program)?;
                guard.child = Some(child);
                // Before the init unshares its cgroup namespace, whose root is the cgroup it
                // is in.
                let cgroup =
                    tokio::task::spawn_blocking(move || cgroup.attach(pid).map(|()| cgroup))
                        .await
                        .map_err(|e| BackendError::task("cgroup", e))?
                        .map_err(|e| BackendError::io("attach init to cgroup", e))?;
                (control, pid, cgroup)
            }
        };

        // The network is attached as soon as the init has its own namespaces, while it sets
        // up the rest; in a task of its own: dropped with a failed provision, it undoes
        // itself when it ends (the attachment it returns is dropped).
        let mut namespaces_made = None;
        let attaching = network.map(|policy| {
            let (made, namespaces) = tokio::sync::oneshot::channel::<io::Result<OwnedFd>>();
            namespaces_made = Some(made);
            let networking = Arc::clone(&self.networking);
            let (id, policy) = (vm::interface_id(&spec.vm_id), policy.clone());
            tokio::spawn(async move {
                let netns = namespaces
                    .await
                    .map_err(|_| {
                        BackendError::Setup("the sandbox ended before its namespaces".to_string())
                    })?
                    .map_err(|e| BackendError::io("open sandbox network namespace", e))?;
                networking.attach(Arc::new(netns), &id, &policy).await
            })
        });
        let sock = agent::register(worker_end)
            .map_err(|e| BackendError::io("register control socket", e))?;
        let setup = Setup {
            rootfs: dir.join("rootfs").to_string_lossy().into_owned(),
            hostname: self.config.hostname.clone(),
            proc_overmounts: self.proc_overmounts.clone(),
        };
        let handshake = handshake(&sock, setup, pid, self.config.uid_base, namespaces_made);
        match tokio::time::timeout(self.config.setup_timeout, handshake).await {
            Ok(Ok(())) => {}
            Ok(Err(HandshakeError::Failed(message))) => return Err(BackendError::Setup(message)),
            Ok(Err(HandshakeError::Closed)) => {
                let stderr = guard.child_stderr().await;
                return Err(BackendError::Setup(format!(
                    "init exited{}",
                    if stderr.is_empty() {
                        String::new()
                    } else {
                        format!(": {stderr}")
                    }
                )));
            }
            Ok(Err(HandshakeError::Io(e))) => return Err(BackendError::io("sandbox setup", e)),
            Err(_) => {
                return Err(BackendError::Setup(format!(
                    "timed out after {:?}",
                    self.config.setup_timeout
                )))
            }
        }

        let netns = fs::File::open(format!("/proc/{pid}/ns/net"))
            .map(OwnedFd::from)
            .map_err(|e| BackendError::io("open sandbox network namespace", e))?;
        let root = openat(
            CWD,
            dir.join("rootfs"),
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| BackendError::io("open sandbox root", e.into()))?;
        let root = SandboxRoot::new(root, uid);
        let mut defaults = defaults;
        let user = match defaults.user.as_deref() {
            Some(spec) => {
                let user = image_user(&root, spec)?;
                if let Some(home) = &user.home {
                    defaults
                        .env
                        .entry("HOME".to_string())
                        .or_insert_with(|| home.clone());
                }
                // Its working directory is its own, as a root user's is.
                let workspace = dir.join("rootfs").join(DEFAULT_CWD.trim_start_matches('/'));
                if let Err(error) = rustix::fs::chownat(
                    CWD,
                    &workspace,
                    Some(rustix::fs::Uid::from_raw(uid + user.ids.uid)),
                    Some(rustix::fs::Gid::from_raw(uid + user.ids.gid)),
                    rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
                ) {
                    tracing::warn!(%error, "could not give /workspace to the image's user");
                }
                Some(user.ids)
            }
            None => None,
        };
        guard.disarm();
        let mut child = guard.child.take().expect("child recorded above");
        // The init's stderr is only read on failed setups.
        drop(child.stderr.take());
        let agent = Arc::new(AgentConn::start(sock));
        // The zygote forks runs as the sandbox's root; an image user's runs start a fresh
        // interpreter as that user instead. Started now for the warm pool, so that a claimed
        // sandbox's first run is warm; a sandbox a client waits for starts it after its first
        // Python run, which would go one-shot anyway (a zygote takes longer to warm than the
        // client to ask) and would only have to share the CPU with it.
        let zygote_env = (self.config.python_zygote && user.is_none_or(|u| u.uid == 0))
            .then(|| vm::environment(&defaults.env, &Default::default()));
        let (zygote, lazy_zygote) = match zygote_env {
            Some(env) if spec.warm && !self.config.lazy_zygote => {
                match zygote::Zygote::start(&agent, env).await {
                    Ok(zygote) => (Some(zygote), None),
                    Err(e) => {
                        tracing::debug!(error = %e, "python zygote not started");
                        (None, None)
                    }
                }
            }
            Some(env) => (None, Some(env)),
            None => (None, None),
        };
        let vm = ContainerVm::new(
            spec.vm_id,
            agent,
            zygote,
            root,
            netns,
            Teardown {
                child,
                cgroup,
                dir,
                hold: std::mem::take(&mut guard.hold),
            },
            pty::agent_pid(pid).map(|agent_pid| (agent_pid, uid)),
        )
        .with_defaults(defaults, pulled)
        .with_user(user)
        .with_networking(Arc::clone(&self.networking));
        let vm = match lazy_zygote {
            Some(env) => vm.with_lazy_zygote(env),
            None => vm,
        };
        let vm = Arc::new(vm);
        if let Some(attaching) = attaching {
            // A late attach is stopped (what it made is undone as it is dropped).
            let stop = attaching.abort_handle();
            let attached = match tokio::time::timeout(self.config.setup_timeout, attaching).await {
                Ok(Ok(Ok((attachment, resolv)))) => vm.adopt_network(attachment, resolv).await,
                Ok(Ok(Err(error))) => Err(error),
                Ok(Err(error)) => Err(BackendError::task("network attach", error)),
                Err(_) => {
                    stop.abort();
                    Err(BackendError::Setup(format!(
                        "network not attached after {:?}",
                        self.config.setup_timeout
                    )))
                }
            };
            if let Err(error) = attached {
                crate::backend::destroy_without_network(vm.as_ref()).await;
                return Err(error);
            }
        }
        Ok(vm)
    }
}

/// Starts a sandbox init (`<init_program> __traforato-sandbox-init`, empty environment, its
/// control socket as stdin): the child, the worker's end of the socket, the init's pid.
fn start_init(init_program: &Path) -> Result<(Child, OwnedFd, u32), BackendError> {
    let (worker_end, init_end) = socketpair(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
        None,
    )
    .map_err(|e| BackendError::io("create control socket", e.into()))?;
    // Room for the largest exec request in one packet (unix sockets account packets
    // against the sender's buffer).
    let _ = rustix::net::sockopt::set_socket_send_buffer_size_force(&worker_end, 2 * MAX_MESSAGE);
    // The init's end must block: it is the init's stdin and it reads synchronously.
    rustix::fs::fcntl_setfl(&init_end, OFlags::RDWR)
        .map_err(|e| BackendError::io("configure control socket", e.into()))?;

    let mut command = tokio::process::Command::new(init_program);
    command
        .arg(INIT_ARG)
        .env_clear()
        .stdin(Stdio::from(init_end))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(false);
    let child = command
        .spawn()
        .map_err(|e| BackendError::io(format!("start init {}", init_program.display()), e))?;
    // Our copy of the init's end must close, or its exit would never read as EOF.
    drop(command);
    let pid = child
        .id()
        .ok_or_else(|| BackendError::Setup("init exited at once".to_string()))?;

    Ok((child, worker_end, pid))
}

/// The image's `User` resolved against the sandbox's own `/etc/passwd` and `/etc/group`;
/// `None` for an empty one. A user the image does not define is a fault of the create.
fn image_user(root: &SandboxRoot, spec: &str) -> Result<user::ImageUser, BackendError> {
    let read = |path: &str| -> String {
        let Ok(path) = crate::path::SandboxPath::parse(path) else {
            return String::new();
        };
        let Ok((file, _)) = root.open_read(&path) else {
            return String::new();
        };
        let mut text = String::new();
        // An /etc/passwd is small; a huge one is read in part.
        let _ = io::Read::read_to_string(&mut io::Read::take(file, 1 << 20), &mut text);
        text
    };
    user::resolve(spec, &read("/etc/passwd"), &read("/etc/group"))
        .map_err(|reason| BackendError::InvalidRequest(format!("the image's user: {reason}")))
}

/// Why the setup handshake failed.
enum HandshakeError {
    /// The init reported a failure.
    Failed(String),
    /// The init closed the socket.
    Closed,
    /// Socket or map-writing error.
    Io(io::Error),
}

/// A send that failed because the init is gone reads as [`HandshakeError::Closed`].
fn closed_or_io(e: io::Error) -> HandshakeError {
    match e.kind() {
        io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset => HandshakeError::Closed,
        _ => HandshakeError::Io(e),
    }
}

/// Setup → (init unshares) → worker writes uid/gid maps → init builds the sandbox → ready.
/// `namespaces_made`, when given, gets the init's network namespace once it has its own.
async fn handshake(
    sock: &AsyncFd<OwnedFd>,
    setup: Setup,
    pid: u32,
    uid_base: u32,
    mut namespaces_made: Option<tokio::sync::oneshot::Sender<io::Result<OwnedFd>>>,
) -> Result<(), HandshakeError> {
    agent::send(sock, &Request::Setup(setup), &[])
        .await
        .map_err(closed_or_io)?;
    let mut maps_written = false;
    loop {
        match agent::recv(sock).await {
            Ok(Some(Event::UsernsCreated)) if !maps_written => {
                // Its namespaces exist (the init unshared them all at once); its network
                // namespace is opened here, while the init is alive and waits for us (its
                // pid cannot be another process's).
                if let Some(made) = namespaces_made.take() {
                    let netns = fs::File::open(format!("/proc/{pid}/ns/net")).map(OwnedFd::from);
                    let _ = made.send(netns);
                }
                let map = format!("0 {uid_base} {UID_COUNT}\n");
                tokio::task::spawn_blocking(move || {
                    fs::write(format!("/proc/{pid}/uid_map"), &map)?;
                    fs::write(format!("/proc/{pid}/gid_map"), &map)
                })
                .await
                .map_err(|e| HandshakeError::Io(io::Error::other(e.to_string())))?
                .map_err(HandshakeError::Io)?;
                maps_written = true;
                agent::send(sock, &Request::MapsWritten, &[])
                    .await
                    .map_err(closed_or_io)?;
            }
            Ok(Some(Event::Ready)) if maps_written => return Ok(()),
            Ok(Some(Event::SetupFailed { message })) => {
                return Err(HandshakeError::Failed(message))
            }
            Ok(Some(other)) => {
                return Err(HandshakeError::Failed(format!(
                    "unexpected message from init: {other:?}"
                )))
            }
            Ok(None) => return Err(HandshakeError::Closed),
            Err(e) => return Err(closed_or_io(e)),
        }
    }
}

/// Host-side root: scratch tmpfs, writable layer skeleton, overlay, read-only binds.
fn prepare_root(dir: &Path, layout: &ImageLayout, uid: u32, scratch_mib: u64) -> io::Result<()> {
    for lower in &layout.lower_dirs {
        if !mounts::overlay_safe(lower) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "image layer path {} cannot be used by overlayfs",
                    lower.display()
                ),
            ));
        }
    }
    let scratch = dir.join("scratch");
    let rootfs = dir.join("rootfs");
    fs::DirBuilder::new().mode(0o700).create(&scratch)?;
    fs::DirBuilder::new().mode(0o755).create(&rootfs)?;
    mounts::mount_tmpfs(&scratch, scratch_mib, 0o700)?;
    let upper = scratch.join("upper");
    let work = scratch.join("work");
    fs::DirBuilder::new().mode(0o755).create(&upper)?;
    fs::DirBuilder::new().mode(0o700).create(&work)?;
    let owner = (Some(Uid::from_raw(uid)), Some(Gid::from_raw(uid)));
    chownat(CWD, &upper, owner.0, owner.1, AtFlags::empty())?;
    for (name, mode) in UPPER_DIRS {
        let p = upper.join(name);
        fs::create_dir(&p)?;
        fs::set_permissions(&p, fs::Permissions::from_mode(mode))?;
        chownat(CWD, &p, owner.0, owner.1, AtFlags::empty())?;
    }
    mounts::mount_overlay(dir, &layout.lower_dirs)?;
    for bind in &layout.read_only_binds {
        let target = rootfs.join(&bind.target);
        if !target.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("image has no directory to mount {} on", bind.target),
            ));
        }
        mounts::bind_read_only(&bind.source, &target)?;
    }
    Ok(())
}

/// Removes a sandbox's host resources: kills its tasks, unmounts, removes its directory and
/// cgroups. Safe on partial state; the directory is removed only once nothing is mounted in it.
pub(crate) fn teardown_host(dir: &Path, cgroup: Option<SandboxCgroup>) -> Result<(), String> {
    let mut problems = Vec::new();
    if let Some(cgroup) = &cgroup {
        if !cgroup.kill_and_wait_empty(KILL_TIMEOUT) {
            problems.push("tasks survived SIGKILL".to_string());
        }
    }
    match mounts::unmount_all_under(dir) {
        Ok(()) => match fs::remove_dir_all(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => problems.push(format!("remove {}: {e}", dir.display())),
        },
        Err(e) => problems.push(format!("unmount below {}: {e}", dir.display())),
    }
    if let Some(mut cgroup) = cgroup {
        if let Err(e) = cgroup.remove(CGROUP_REMOVE_TIMEOUT) {
            problems.push(e.to_string());
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "sandbox teardown incomplete: {}",
            problems.join("; ")
        ))
    }
}

/// Shared by a provision and its blocking host-setup step: after a cancellation, whichever
/// of the two finishes last removes what the step created.
#[derive(Default)]
struct HostSetup {
    /// The sandbox directory was created by this provision (never an existing one).
    created: AtomicBool,
    /// The blocking step has returned.
    finished: AtomicBool,
    /// The provision gave up (error or dropped future).
    cancelled: AtomicBool,
}

impl HostSetup {
    /// Creates the sandbox directory, then runs `rest`; tears down on its own if the
    /// provision was cancelled meanwhile.
    ///
    /// The directory is `0710 root:<sandbox gid>`: the sandbox's init (that gid on the host)
    /// can pass through it to its root, and no other host user can reach the sandbox's
    /// files (its root is mounted in the host's mount namespace).
    fn run<T>(
        &self,
        dir: &Path,
        sandbox_gid: u32,
        cgroups: &CgroupDriver,
        name: &str,
        rest: impl FnOnce() -> io::Result<T>,
    ) -> io::Result<T> {
        let result = fs::DirBuilder::new()
            .mode(0o700)
            .create(dir)
            .and_then(|()| {
                self.created.store(true, Ordering::SeqCst);
                chownat(
                    CWD,
                    dir,
                    None,
                    Some(Gid::from_raw(sandbox_gid)),
                    AtFlags::empty(),
                )?;
                fs::set_permissions(dir, fs::Permissions::from_mode(0o710))?;
                rest()
            });
        self.finished.store(true, Ordering::SeqCst);
        if self.cancelled.load(Ordering::SeqCst) && self.created.load(Ordering::SeqCst) {
            if let Err(e) = teardown_host(dir, Some(cgroups.existing(name))) {
                tracing::warn!(error = %e, "cancelled provision left resources behind");
            }
            return Err(io::Error::new(
                io::ErrorKind::Interrupted,
                "provision cancelled",
            ));
        }
        result
    }
}

/// Undoes a provision that did not finish (error or cancellation).
struct ProvisionGuard {
    dir: PathBuf,
    name: String,
    setup: Arc<HostSetup>,
    child: Option<Child>,
    cgroups: CgroupDriver,
    armed: bool,
    /// The image's hold, until the sandbox (or the rollback) has it.
    hold: ImageHold,
}

impl ProvisionGuard {
    fn disarm(&mut self) {
        self.armed = false;
    }

    /// What the init wrote to stderr before it died (bounded, best effort).
    async fn child_stderr(&mut self) -> String {
        let Some(stderr) = self.child.as_mut().and_then(|c| c.stderr.as_mut()) else {
            return String::new();
        };
        let mut buf = Vec::new();
        let mut limited = (&mut *stderr).take(4096);
        let read = limited.read_to_end(&mut buf);
        let _ = tokio::time::timeout(Duration::from_millis(500), read).await;
        String::from_utf8_lossy(&buf).trim().to_string()
    }

    /// Takes what must be undone, leaving the guard inert.
    fn take(&mut self) -> Option<Rollback> {
        if !self.armed {
            return None;
        }
        self.armed = false;
        self.setup.cancelled.store(true, Ordering::SeqCst);
        // If the host step is still running it cleans up after itself (see HostSetup::run).
        let ours =
            self.setup.finished.load(Ordering::SeqCst) && self.setup.created.load(Ordering::SeqCst);
        Some(Rollback {
            host: ours.then(|| (self.dir.clone(), self.cgroups.clone(), self.name.clone())),
            child: self.child.take(),
            hold: std::mem::take(&mut self.hold),
        })
    }
}

impl Drop for ProvisionGuard {
    fn drop(&mut self) {
        // Cancelled mid-provision: finish the cleanup in the background.
        if let Some(rollback) = self.take() {
            if let Ok(handle) = tokio::runtime::Handle::try_current() {
                handle.spawn(rollback.run());
            }
        }
    }
}

/// The cleanup of a failed provision.
struct Rollback {
    /// Sandbox dir, cgroup driver and name, when this provision made them.
    host: Option<(PathBuf, CgroupDriver, String)>,
    child: Option<Child>,
    /// Released once the root is gone.
    hold: ImageHold,
}

impl Rollback {
    async fn run(mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
        let hold = std::mem::take(&mut self.hold);
        let Some((dir, cgroups, name)) = self.host.take() else {
            // Nothing of the root was made here (or the host step cleans up after itself,
            // holding the image itself meanwhile).
            return;
        };
        // The hold goes with the teardown, which finishes even if this rollback is dropped.
        let result = tokio::task::spawn_blocking(move || {
            let result = teardown_host(&dir, Some(cgroups.existing(&name)));
            vm::release_after(hold, &result);
            result
        })
        .await;
        match result {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "failed provision left resources behind"),
            Err(e) => tracing::warn!(error = %e, "provision rollback task failed"),
        }
    }
}

#[async_trait]
impl VmBackend for ContainerBackend {
    fn virtualization(&self) -> &str {
        "container"
    }

    /// A container's cpu is a CFS quota and its memory a cgroup limit: both may be handed
    /// out beyond the host's cores and memory.
    fn overcommits(&self) -> bool {
        true
    }

    fn memory_in_use(&self) -> Option<u64> {
        self.cgroups.parent_memory_in_use()
    }

    fn memory_ceiling(&self) -> Option<u64> {
        self.cgroups.parent_memory_limit()
    }

    fn images(&self) -> Option<&dyn ImageCatalog> {
        self.images.catalog()
    }

    fn supports_egress(&self, _mode: Egress) -> bool {
        true
    }

    async fn provision(&self, spec: ProvisionSpec) -> Result<Arc<dyn Vm>, BackendError> {
        self.provision_attached(spec, None).await
    }

    /// The network is attached while the sandbox's init sets itself up (the namespace exists
    /// from its start): it costs the create next to nothing.
    async fn provision_with_network(
        &self,
        spec: ProvisionSpec,
        policy: &Policy,
    ) -> Result<Arc<dyn Vm>, BackendError> {
        let network = (policy.egress() != Egress::None).then_some(policy);
        self.provision_attached(spec, network).await
    }

    async fn cleanup_leftovers(&self) -> Result<usize, BackendError> {
        self.networking.remove_stale_table().await;
        let state_dir = self.config.state_dir.clone();
        let cgroups = self.cgroups.clone();
        let spares = Arc::clone(&self.spares);
        tokio::task::spawn_blocking(move || {
            let mut names = BTreeSet::new();
            if let Ok(entries) = fs::read_dir(&state_dir) {
                for entry in entries.flatten() {
                    if let Some(name) = entry.file_name().to_str() {
                        if LocalVmId::parse(name).is_ok() {
                            names.insert(name.to_string());
                        }
                    }
                }
            }
            for name in cgroups.children() {
                // This backend's spare inits are not leftovers.
                if LocalVmId::parse(&name).is_ok() && !spares.owns(&name) {
                    names.insert(name);
                }
            }
            let mut failures = Vec::new();
            for name in &names {
                let cgroup = cgroups.existing(name);
                if let Err(e) = teardown_host(&state_dir.join(name), Some(cgroup)) {
                    failures.push(format!("{name}: {e}"));
                }
            }
            if failures.is_empty() {
                if !names.is_empty() {
                    tracing::info!(count = names.len(), "removed leftover container sandboxes");
                }
                Ok(names.len())
            } else {
                Err(BackendError::Cleanup(failures.join("; ")))
            }
        })
        .await
        .map_err(|e| BackendError::task("cleanup", e))?
    }

    async fn shutdown(&self) {
        self.spares.close().await;
        self.networking.shutdown().await;
        if let Err(error) = self.remove_cgroup_parents() {
            tracing::warn!(error = %error, "cgroup parent not removed");
        }
    }
}
