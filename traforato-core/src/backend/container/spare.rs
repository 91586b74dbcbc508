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
//! remove it (a spare's cgroup is held by a guard that, dropped, kills what is in it and
//! removes it). Spares are started by a filler thread of their own, which closing waits for,
//! so that the cgroup parents are empty when the backend removes them. A spare whose worker
//! died reads EOF on its control socket and exits; its cgroup (named like a sandbox's) is then
//! a leftover for the next start to remove.

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

/// Longest [`Spares::close`] waits for a spare being started.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

/// A spare's cgroup until a sandbox adopts it: dropped, it kills what is in it and removes
/// itself (blocking, bounded).
pub(crate) struct SpareCgroup(Option<SandboxCgroup>);

impl SpareCgroup {
    /// The cgroup, no longer guarded (its new owner removes it).
    pub(crate) fn adopt(mut self) -> SandboxCgroup {
        self.0.take().expect("a spare's cgroup is adopted once")
    }

    fn name(&self) -> Option<String> {
        self.0.as_ref().and_then(SandboxCgroup::name)
    }
}

impl From<SandboxCgroup> for SpareCgroup {
    /// Guards a cgroup that is to be removed when dropped.
    fn from(cgroup: SandboxCgroup) -> Self {
        Self(Some(cgroup))
    }
}

impl Drop for SpareCgroup {
    fn drop(&mut self) {
        if let Some(mut cgroup) = self.0.take() {
            let _ = cgroup.kill_and_wait_empty(KILL_TIMEOUT);
            if let Err(error) = cgroup.remove(CGROUP_REMOVE_TIMEOUT) {
                tracing::warn!(%error, "spare init's cgroup not removed");
            }
        }
    }
}

/// An init waiting for its `Setup`, in a cgroup of its own (named like a sandbox's). Dropped,
/// it is killed with its cgroup (blocking: drop it off the runtime's threads).
pub(crate) struct SpareInit {
    pub(crate) child: Child,
    /// The worker's end of the init's control socket.
    pub(crate) control: OwnedFd,
    pub(crate) pid: u32,
    pub(crate) cgroup: SpareCgroup,
}

/// Drops spares on a thread of their own (their drop waits for their processes to go).
fn discard(spares: Vec<SpareInit>) {
    if !spares.is_empty() {
        std::thread::spawn(move || drop(spares));
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
    /// The cgroup name of the spare the filler is starting.
    starting: Option<String>,
    filling: bool,
    closed: bool,
}

impl Pool {
    /// Spares ready or being started.
    fn count(&self) -> usize {
        self.ready.len() + usize::from(self.starting.is_some())
    }
}

/// The spare inits of one backend. Dropped, it drops its spares, which kill their inits and
/// remove their cgroups.
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
        let pool = self.lock();
        pool.starting.as_deref() == Some(name)
            || pool
                .ready
                .iter()
                .any(|s| s.cgroup.name().as_deref() == Some(name))
    }

    /// A live spare, if one is ready; dead ones met on the way are removed. Starts the refill
    /// (not after a [`Spares::close`]: a create that comes after the shutdown must not start
    /// spares again; [`Spares::fill`] does).
    pub(crate) fn take(self: &Arc<Self>) -> Option<SpareInit> {
        let mut dead = Vec::new();
        let taken = {
            let mut pool = self.lock();
            let mut taken = None;
            while let Some(mut spare) = pool.ready.pop() {
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
            discard(dead);
        }
        self.refill(REFILL_DELAY);
        taken
    }

    /// Starts spares now (again after a [`Spares::close`]).
    pub(crate) fn fill(self: &Arc<Self>) {
        self.lock().closed = false;
        self.refill(Duration::ZERO);
    }

    /// Starts spares until there are `want`, after `delay`, on a thread of its own (so that
    /// closing never waits for a runtime that is blocked or gone); one filler at a time.
    /// Needs a tokio runtime to register the inits with (does nothing outside one).
    fn refill(self: &Arc<Self>, delay: Duration) {
        {
            let mut pool = self.lock();
            if pool.filling || pool.closed || pool.count() >= self.want {
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
        let spawned = std::thread::Builder::new()
            .name("spare-inits".to_string())
            .spawn(move || {
                std::thread::sleep(delay);
                // The inits' `Child` handles belong to the runtime's process driver.
                let _entered = runtime.enter();
                let filled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    while let Some(spares) = weak.upgrade() {
                        if !spares.start_next() {
                            break;
                        }
                    }
                }));
                // A panic must not leave the pool waiting for a filler that is gone.
                if filled.is_err() {
                    if let Some(spares) = weak.upgrade() {
                        spares.lock().filling = false;
                    }
                }
            });
        if spawned.is_err() {
            self.lock().filling = false;
        }
    }

    /// Starts one more spare if the pool wants one; false when the filler is done (the pool
    /// is full or closed, or a start failed). Clears `filling` when it returns false.
    fn start_next(&self) -> bool {
        let name = {
            let mut pool = self.lock();
            if pool.closed || pool.count() >= self.want {
                pool.filling = false;
                return false;
            }
            let name = LocalVmId::new_random().to_string();
            pool.starting = Some(name.clone());
            name
        };
        let started = self.start_one(&name);
        let mut pool = self.lock();
        pool.starting = None;
        let spare = match started {
            Ok(spare) if !pool.closed => {
                pool.ready.push(spare);
                return true;
            }
            Ok(spare) => spare,
            Err(error) => {
                pool.filling = false;
                tracing::warn!(%error, "spare init not started; cold creates start their own");
                return false;
            }
        };
        // Closed while it started: removed before the closer, who waits for `filling`, goes
        // on (and outside the lock: removing it waits for its init to die).
        drop(pool);
        drop(spare);
        self.lock().filling = false;
        false
    }

    /// Starts one init and moves it into a new cgroup named `name` (blocking).
    fn start_one(&self, name: &str) -> Result<SpareInit, BackendError> {
        let (mut child, control, pid) = start_init(&self.starter.init_program)?;
        let limits = Limits {
            cpus: 1,
            memory_bytes: 0,
            pids: self.starter.pids_limit,
        };
        let made = self
            .starter
            .cgroups
            .create(name, limits)
            .map(|cgroup| SpareCgroup(Some(cgroup)))
            .and_then(|cgroup| {
                if let Some(made) = &cgroup.0 {
                    made.attach(pid)?;
                }
                Ok(cgroup)
            });
        match made {
            Ok(cgroup) => Ok(SpareInit {
                child,
                control,
                pid,
                cgroup,
            }),
            Err(error) => {
                // Its control socket closes with `control`; the init exits on the EOF.
                let _ = child.start_kill();
                Err(BackendError::io("spare cgroup", error))
            }
        }
    }

    /// Stops refilling and removes every spare, the one being started included (its filler
    /// is waited for, at most [`CLOSE_WAIT`]). Blocking.
    pub(crate) fn close_now(&self) {
        self.lock().closed = true;
        let deadline = std::time::Instant::now() + CLOSE_WAIT;
        while self.lock().filling && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
        }
        let spares = std::mem::take(&mut self.lock().ready);
        drop(spares);
    }

    /// Stops refilling and removes every spare (shutdown), the one being started included
    /// (waited for, at most [`CLOSE_WAIT`]); the next [`Spares::take`] starts them again.
    pub(crate) async fn close(&self) {
        self.lock().closed = true;
        // A filler that is starting a spare discards it once it sees `closed`.
        let deadline = tokio::time::Instant::now() + CLOSE_WAIT;
        while self.lock().filling && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let spares = std::mem::take(&mut self.lock().ready);
        if spares.is_empty() {
            return;
        }
        let _ = tokio::task::spawn_blocking(move || drop(spares)).await;
    }
}
