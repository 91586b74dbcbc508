//! Spare sandbox inits: inits started ahead, each already in a cgroup of its own, that a cold
//! create takes instead of starting one.
//!
//! Moving a process into a cgroup (`cgroup.procs`) takes the kernel's threadgroup lock for
//! writing, which waits for an RCU grace period whenever no other such move happened just
//! before: about 6 to 10 ms on an idle 2-vCPU host, most of a cold create. A spare pays it
//! (and the init's own start) off the request path; a create renames the spare's cgroup to the
//! sandbox's name and sets its limits, which costs microseconds.
//!
//! cgroup v1 only: v2 refuses to rename cgroups, and a v2 create moves its init as before
//! (there, the `favordynmods` mount option of the cgroup2 hierarchy removes the wait).
//!
//! A spare is this backend's while it lives: `cleanup_leftovers` leaves it, shutdown and drop
//! remove it. A spare whose worker died reads EOF on its control socket and exits; its cgroup
//! (named like a sandbox's) is then a leftover for the next start to remove.

use std::collections::BTreeSet;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use std::time::Duration;

use tokio::process::Child;

use super::cgroup::{CgroupDriver, Limits, SandboxCgroup};
use super::{start_init, CGROUP_REMOVE_TIMEOUT, KILL_TIMEOUT};
use crate::backend::BackendError;
use crate::id::LocalVmId;

/// How long a refill waits after a take before it starts another init, so that it does not
/// compete for the CPU with the create (and first run) the spare was taken for.
const REFILL_DELAY: Duration = Duration::from_millis(100);

/// An init waiting for its `Setup`, in a cgroup of its own (named like a sandbox's).
pub(crate) struct SpareInit {
    pub(crate) child: Child,
    /// The worker's end of the init's control socket.
    pub(crate) control: OwnedFd,
    pub(crate) pid: u32,
    pub(crate) cgroup: SandboxCgroup,
}

impl SpareInit {
    /// Kills the init and removes its cgroup (blocking, bounded).
    fn discard(mut self) {
        let _ = self.child.start_kill();
        let _ = self.cgroup.kill_and_wait_empty(KILL_TIMEOUT);
        if let Err(error) = self.cgroup.remove(CGROUP_REMOVE_TIMEOUT) {
            tracing::warn!(%error, "spare init's cgroup not removed");
        }
    }
}

/// What a pool needs to start inits.
#[derive(Clone)]
pub(crate) struct Starter {
    pub(crate) init_program: PathBuf,
    pub(crate) cgroups: CgroupDriver,
    pub(crate) pids_limit: u64,
}

#[derive(Default)]
struct Pool {
    ready: Vec<SpareInit>,
    /// Cgroup names of the ready spares and of those being started.
    names: BTreeSet<String>,
    filling: bool,
    closed: bool,
}

/// The spare inits of one backend.
pub(crate) struct Spares {
    want: usize,
    starter: Starter,
    pool: Mutex<Pool>,
}

impl Spares {
    /// A pool that keeps `want` spares (none: it never starts one).
    pub(crate) fn new(want: usize, starter: Starter) -> Self {
        Self {
            want,
            starter,
            pool: Mutex::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Pool> {
        self.pool.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Spares ready to be taken.
    pub(crate) fn ready(&self) -> usize {
        self.lock().ready.len()
    }

    /// True when `name` is the cgroup of a spare of this pool (ready or being started).
    pub(crate) fn owns(&self, name: &str) -> bool {
        self.lock().names.contains(name)
    }

    /// A live spare, if one is ready; dead ones met on the way are removed. Starts the refill
    /// (again, after a [`Spares::close`]: a backend may be used after its shutdown).
    pub(crate) fn take(self: &Arc<Self>) -> Option<SpareInit> {
        let mut dead = Vec::new();
        let taken = {
            let mut pool = self.lock();
            pool.closed = false;
            let mut taken = None;
            while let Some(mut spare) = pool.ready.pop() {
                if let Some(name) = spare.cgroup.name() {
                    pool.names.remove(&name);
                }
                if matches!(spare.child.try_wait(), Ok(None)) {
                    taken = Some(spare);
                    break;
                }
                dead.push(spare);
            }
            taken
        };
        if !dead.is_empty() {
            tracing::warn!(count = dead.len(), "spare inits had died; removed");
            std::thread::spawn(move || dead.into_iter().for_each(SpareInit::discard));
        }
        self.refill(REFILL_DELAY);
        taken
    }

    /// Starts spares now (again after a [`Spares::close`]): at the backend's start and after
    /// its leftovers were removed.
    pub(crate) fn fill(self: &Arc<Self>) {
        self.lock().closed = false;
        self.refill(Duration::ZERO);
    }

    /// Starts spares in the background until there are `want`, after `delay`; one filler at a
    /// time. Needs a tokio runtime (does nothing outside one).
    fn refill(self: &Arc<Self>, delay: Duration) {
        {
            let mut pool = self.lock();
            if pool.filling || pool.closed || pool.names.len() >= self.want {
                return;
            }
            pool.filling = true;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.lock().filling = false;
            return;
        };
        // Weak: a backend dropped meanwhile removes its spares at once, and the filler stops.
        let weak = Arc::downgrade(self);
        runtime.spawn(async move {
            tokio::time::sleep(delay).await;
            loop {
                let Some(spares) = weak.upgrade() else {
                    return;
                };
                let name = {
                    let mut pool = spares.lock();
                    if pool.closed || pool.names.len() >= spares.want {
                        pool.filling = false;
                        return;
                    }
                    let name = LocalVmId::new_random().to_string();
                    pool.names.insert(name.clone());
                    name
                };
                match spares.start_one(&name).await {
                    Ok(spare) => {
                        let rejected = {
                            let mut pool = spares.lock();
                            if pool.closed {
                                pool.names.remove(&name);
                                Some(spare)
                            } else {
                                pool.ready.push(spare);
                                None
                            }
                        };
                        if let Some(spare) = rejected {
                            let _ = tokio::task::spawn_blocking(move || spare.discard()).await;
                        }
                    }
                    Err(error) => {
                        let mut pool = spares.lock();
                        pool.names.remove(&name);
                        pool.filling = false;
                        tracing::warn!(%error, "spare init not started; cold creates start their own");
                        return;
                    }
                }
            }
        });
    }

    /// Starts one init and moves it into a new cgroup named `name`.
    async fn start_one(&self, name: &str) -> Result<SpareInit, BackendError> {
        let (mut child, control, pid) = start_init(&self.starter.init_program)?;
        let cgroups = self.starter.cgroups.clone();
        let (name, pids) = (name.to_string(), self.starter.pids_limit);
        let limits = Limits {
            cpus: 1,
            memory_bytes: 0,
            pids,
        };
        let made = tokio::task::spawn_blocking(move || {
            let mut cgroup = cgroups.create(&name, limits)?;
            if let Err(e) = cgroup.attach(pid) {
                let _ = cgroup.remove(CGROUP_REMOVE_TIMEOUT);
                return Err(e);
            }
            Ok(cgroup)
        })
        .await
        .map_err(|e| BackendError::task("spare cgroup", e))
        .and_then(|made| made.map_err(|e| BackendError::io("spare cgroup", e)));
        match made {
            Ok(cgroup) => Ok(SpareInit {
                child,
                control,
                pid,
                cgroup,
            }),
            Err(error) => {
                let _ = child.start_kill();
                let _ = child.wait().await;
                Err(error)
            }
        }
    }

    /// Stops refilling and removes every spare (shutdown); the next [`Spares::take`] starts
    /// them again.
    pub(crate) async fn close(&self) {
        let spares = {
            let mut pool = self.lock();
            pool.closed = true;
            pool.names.clear();
            std::mem::take(&mut pool.ready)
        };
        if spares.is_empty() {
            return;
        }
        let _ =
            tokio::task::spawn_blocking(move || spares.into_iter().for_each(SpareInit::discard))
                .await;
    }
}

impl Drop for Spares {
    fn drop(&mut self) {
        let pool = self.pool.get_mut().unwrap_or_else(|e| e.into_inner());
        pool.closed = true;
        for spare in std::mem::take(&mut pool.ready) {
            spare.discard();
        }
    }
}
