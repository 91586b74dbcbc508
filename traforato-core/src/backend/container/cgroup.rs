//! Sandbox cgroups on v1 (one hierarchy per controller) or v2 (unified): detection, limits,
//! attaching the init, killing every task, and removal.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use rustix::process::{pidfd_open, pidfd_send_signal, Pid, PidfdFlags, Signal};

use super::mounts::{read_mountinfo, MountEntry};

/// The CFS period written with the cpu quota, in microseconds.
const CPU_PERIOD_US: u64 = 100_000;

/// The controllers every sandbox cgroup needs.
const CONTROLLERS: [&str; 3] = ["cpu", "memory", "pids"];

/// Which cgroup interface the host offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CgroupVersion {
    /// Legacy hierarchies, one mount per controller (or co-mounted group).
    V1,
    /// The unified hierarchy.
    V2,
}

/// One mounted hierarchy that carries some of [`CONTROLLERS`].
#[derive(Debug, Clone, PartialEq, Eq)]
struct Hierarchy {
    /// Mount point of the hierarchy's root.
    root: PathBuf,
    /// Which of [`CONTROLLERS`] it carries.
    controllers: Vec<&'static str>,
}

/// The limits of one sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limits {
    /// CPUs worth of quota per period.
    pub cpus: u32,
    /// Memory (and memory+swap) limit in bytes; 0 leaves memory unlimited.
    pub memory_bytes: u64,
    /// Maximum number of tasks.
    pub pids: u64,
}

/// Finds the hierarchies and creates per-sandbox cgroups below `<root>/<parent>`.
#[derive(Debug, Clone)]
pub(crate) struct CgroupDriver {
    version: CgroupVersion,
    hierarchies: Vec<Hierarchy>,
    parent: String,
    /// The parent directories [`CgroupDriver::prepare`] created (not those that existed),
    /// outermost first: what [`CgroupDriver::remove_parents`] may remove. Shared by clones.
    created: std::sync::Arc<std::sync::Mutex<Vec<PathBuf>>>,
    /// A file that lists `created`, so that a run after a crash removes them too.
    ledger: Option<PathBuf>,
}

/// Picks v1 when cpu, memory and pids all have v1 hierarchies, else v2 when one cgroup2 mount
/// offers all three (its `cgroup.controllers` is read through `controllers_of`).
fn choose(
    mounts: &[MountEntry],
    controllers_of: impl Fn(&Path) -> Option<String>,
) -> Result<(CgroupVersion, Vec<Hierarchy>), String> {
    let mut v1: Vec<Hierarchy> = Vec::new();
    for m in mounts.iter().filter(|m| m.fs_type == "cgroup") {
        let carried: Vec<&'static str> = CONTROLLERS
            .iter()
            .copied()
            .filter(|c| m.super_options.iter().any(|o| o == c))
            .collect();
        if carried.is_empty() || v1.iter().any(|h| h.root == m.mount_point) {
            continue;
        }
        // A controller can be mounted twice; keep the first mount of each.
        if carried
            .iter()
            .any(|c| v1.iter().any(|h| h.controllers.contains(c)))
        {
            continue;
        }
        v1.push(Hierarchy {
            root: m.mount_point.clone(),
            controllers: carried,
        });
    }
    let v1_complete = CONTROLLERS
        .iter()
        .all(|c| v1.iter().any(|h| h.controllers.contains(c)));
    if v1_complete {
        return Ok((CgroupVersion::V1, v1));
    }
    for m in mounts.iter().filter(|m| m.fs_type == "cgroup2") {
        let Some(available) = controllers_of(&m.mount_point) else {
            continue;
        };
        let words: Vec<&str> = available.split_whitespace().collect();
        if CONTROLLERS.iter().all(|c| words.contains(c)) {
            return Ok((
                CgroupVersion::V2,
                vec![Hierarchy {
                    root: m.mount_point.clone(),
                    controllers: CONTROLLERS.to_vec(),
                }],
            ));
        }
    }
    Err(
        "no cgroup hierarchy offers the cpu, memory and pids controllers (need cgroup v1 \
         hierarchies for all three, or a cgroup2 mount listing them in cgroup.controllers)"
            .to_string(),
    )
}

/// Writes `value` to a cgroup control file, naming the file on error.
fn write_file(path: &Path, value: &str) -> io::Result<()> {
    fs::write(path, value)
        .map_err(|e| io::Error::new(e.kind(), format!("write {}: {e}", path.display())))
}

impl CgroupDriver {
    /// Detects the hierarchies from the mount table.
    pub(crate) fn detect(parent: &str) -> Result<Self, String> {
        let mounts = read_mountinfo().map_err(|e| format!("cannot read mountinfo: {e}"))?;
        let (version, hierarchies) = choose(&mounts, |root| {
            fs::read_to_string(root.join("cgroup.controllers")).ok()
        })?;
        Ok(Self {
            version,
            hierarchies,
            parent: parent.to_string(),
            created: Default::default(),
            ledger: None,
        })
    }

    /// Keeps the list of the parents it creates in `path` too (in the state dir): see
    /// [`CgroupDriver::adopt_ledger`].
    pub(crate) fn with_ledger(mut self, path: PathBuf) -> Self {
        self.ledger = Some(path);
        self
    }

    /// Takes on the parents a previous run (one that crashed) listed as its own in the
    /// ledger, so that [`CgroupDriver::remove_parents`] removes them too. Only directories of
    /// this driver's hierarchies ending in its parent's path are taken.
    pub(crate) fn adopt_ledger(&self) {
        let Some(text) = self
            .ledger
            .as_ref()
            .and_then(|l| fs::read_to_string(l).ok())
        else {
            return;
        };
        let mut record = self.created.lock().unwrap_or_else(|e| e.into_inner());
        for line in text.lines() {
            let dir = PathBuf::from(line);
            let ours = self.hierarchies.iter().any(|h| {
                dir.strip_prefix(&h.root).is_ok_and(|rel| {
                    !rel.as_os_str().is_empty()
                        && Path::new(self.parent.trim_matches('/')).starts_with(rel)
                })
            });
            if ours && dir.is_dir() && !record.contains(&dir) {
                record.push(dir);
            }
        }
    }

    /// Writes the ledger with what was created so far.
    pub(crate) fn save_ledger(&self) {
        let record = self.created.lock().unwrap_or_else(|e| e.into_inner());
        self.write_ledger(&record);
    }

    /// Writes the ledger (removed when nothing is listed).
    fn write_ledger(&self, record: &[PathBuf]) {
        let Some(ledger) = &self.ledger else {
            return;
        };
        let result = if record.is_empty() {
            match fs::remove_file(ledger) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                other => other,
            }
        } else {
            let text: String = record
                .iter()
                .map(|d| format!("{}\n", d.display()))
                .collect();
            match fs::write(ledger, text) {
                // The state dir is not made yet: the backend saves the ledger once it is.
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                other => other,
            }
        };
        if let Err(error) = result {
            tracing::warn!(%error, ledger = %ledger.display(), "cgroup parents not recorded");
        }
    }

    /// v1 or v2.
    pub(crate) fn version(&self) -> CgroupVersion {
        self.version
    }

    /// `<root>/<parent>` of every hierarchy.
    pub(crate) fn parent_dirs(&self) -> Vec<PathBuf> {
        self.hierarchies
            .iter()
            .map(|h| h.root.join(&self.parent))
            .collect()
    }

    /// The directories a sandbox's cgroup has (whether or not they exist).
    pub(crate) fn sandbox_dirs(&self, name: &str) -> Vec<PathBuf> {
        self.parent_dirs()
            .into_iter()
            .map(|p| p.join(name))
            .collect()
    }

    /// What the sandboxes below the parent use of memory they cannot give back (see
    /// [`unreclaimable`]); `None` without a memory hierarchy.
    pub(crate) fn parent_memory_in_use(&self) -> Option<u64> {
        let h = self
            .hierarchies
            .iter()
            .find(|h| h.controllers.contains(&"memory"))?;
        unreclaimable(self.version, &h.root.join(&self.parent))
    }

    /// How much memory the sandboxes below the parent may use in all before a memory limit
    /// on the parent or one of its ancestors (up to the hierarchy's root) is reached, in
    /// bytes: for each limited cgroup, its limit less what the rest of it uses (the worker
    /// itself, say, when the limit is a systemd unit's or a container's); the tightest.
    /// `None` when nothing is limited (or without a memory hierarchy).
    pub(crate) fn parent_memory_limit(&self) -> Option<u64> {
        let h = self
            .hierarchies
            .iter()
            .find(|h| h.controllers.contains(&"memory"))?;
        let file = match self.version {
            CgroupVersion::V2 => "memory.max",
            CgroupVersion::V1 => "memory.limit_in_bytes",
        };
        let parent = h.root.join(&self.parent);
        let sandboxes = unreclaimable(self.version, &parent).unwrap_or(0);
        let mut dir = parent;
        let mut tightest: Option<u64> = None;
        loop {
            let limit = fs::read_to_string(dir.join(file))
                .ok()
                .and_then(|text| parse_memory_limit(&text));
            if let Some(limit) = limit {
                let others = unreclaimable(self.version, &dir)
                    .unwrap_or(0)
                    .saturating_sub(sandboxes);
                let room = limit.saturating_sub(others);
                tightest = Some(tightest.map_or(room, |t| t.min(room)));
            }
            if dir == h.root || !dir.pop() || !dir.starts_with(&h.root) {
                return tightest;
            }
        }
    }

    /// Creates the parent cgroups and, on v2, delegates the controllers down to them. The
    /// directories it created (not those that existed) are remembered for
    /// [`CgroupDriver::remove_parents`]: also those a sandbox create makes again after the
    /// parent vanished.
    pub(crate) fn prepare(&self) -> io::Result<()> {
        let mut created = Vec::new();
        for h in &self.hierarchies {
            // Each level from the root down to the parent (on v2 each must pass the
            // controllers on).
            let mut level = h.root.clone();
            if self.version == CgroupVersion::V2 {
                enable_v2_controllers(&level)?;
            }
            for seg in self.parent.split('/').filter(|s| !s.is_empty()) {
                level.push(seg);
                if create_dir(&level)? {
                    created.push(level.clone());
                }
                if self.version == CgroupVersion::V2 {
                    enable_v2_controllers(&level)?;
                }
            }
        }
        let mut record = self.created.lock().unwrap_or_else(|e| e.into_inner());
        let new = !created.is_empty();
        for dir in created {
            if !record.contains(&dir) {
                record.push(dir);
            }
        }
        if new {
            self.write_ledger(&record);
        }
        Ok(())
    }

    /// Creates a sandbox's cgroup with its limits. On error, what was created is removed.
    pub(crate) fn create(&self, name: &str, limits: Limits) -> io::Result<SandboxCgroup> {
        let cgroup = SandboxCgroup {
            version: self.version,
            dirs: Vec::new(),
        };
        let mut cgroup = cgroup;
        let result = (|| {
            for h in &self.hierarchies {
                let dir = h.root.join(&self.parent).join(name);
                // Never adopt an existing cgroup: it would belong to another sandbox. A parent
                // that vanished (removed by a worker sharing it, at its shutdown) is made again.
                let made = match fs::create_dir(&dir) {
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {
                        self.prepare()?;
                        fs::create_dir(&dir)
                    }
                    other => other,
                };
                made.map_err(|e| {
                    io::Error::new(e.kind(), format!("create {}: {e}", dir.display()))
                })?;
                cgroup.dirs.push(dir.clone());
                apply_limits(self.version, &dir, &h.controllers, limits)?;
            }
            Ok(())
        })();
        match result {
            Ok(()) => Ok(cgroup),
            Err(e) => {
                let _ = cgroup.remove(Duration::from_millis(200));
                Err(e)
            }
        }
    }

    /// Gives a spare's cgroup (made by [`CgroupDriver::create`] under another name) to a
    /// sandbox: renames it to `name` in every hierarchy and sets `limits`. v1 only (cgroup v2
    /// refuses renames). On error the dirs renamed so far are renamed back, and the spare's
    /// cgroup is returned with the error for its owner to remove.
    pub(crate) fn adopt(
        &self,
        mut spare: SandboxCgroup,
        name: &str,
        limits: Limits,
    ) -> Result<SandboxCgroup, (SandboxCgroup, io::Error)> {
        if self.version != CgroupVersion::V1 || spare.dirs.len() != self.hierarchies.len() {
            let refused = io::Error::new(
                io::ErrorKind::Unsupported,
                "only a complete cgroup v1 spare can be renamed",
            );
            return Err((spare, refused));
        }
        let old = spare.dirs.clone();
        for (i, dir) in old.iter().enumerate() {
            let target = dir.with_file_name(name);
            if let Err(e) = fs::rename(dir, &target) {
                for (done, back) in spare.dirs[..i].iter().zip(&old) {
                    let _ = fs::rename(done, back);
                }
                let e = io::Error::new(e.kind(), format!("rename {}: {e}", dir.display()));
                spare.dirs = old;
                return Err((spare, e));
            }
            spare.dirs[i] = target;
        }
        for (h, dir) in self.hierarchies.iter().zip(&spare.dirs) {
            if let Err(e) = apply_limits(self.version, dir, &h.controllers, limits) {
                return Err((spare, e));
            }
        }
        Ok(spare)
    }

    /// A handle on an existing sandbox cgroup (for leftovers), with the dirs that exist.
    pub(crate) fn existing(&self, name: &str) -> SandboxCgroup {
        SandboxCgroup {
            version: self.version,
            dirs: self
                .sandbox_dirs(name)
                .into_iter()
                .filter(|d| d.is_dir())
                .collect(),
        }
    }

    /// Names of the sandbox cgroups below the parents.
    pub(crate) fn children(&self) -> Vec<String> {
        let mut names = Vec::new();
        for parent in self.parent_dirs() {
            let Ok(entries) = fs::read_dir(&parent) else {
                continue;
            };
            for entry in entries.flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    if let Some(name) = entry.file_name().to_str() {
                        if !names.iter().any(|n| n == name) {
                            names.push(name.to_string());
                        }
                    }
                }
            }
        }
        names
    }

    /// Removes the directories [`CgroupDriver::prepare`] made, innermost first, each only
    /// while it is empty: a parent another worker still uses stays (and is still
    /// remembered). Returns the directories left in place.
    pub(crate) fn remove_parents(&self) -> io::Result<Vec<PathBuf>> {
        let mut record = self.created.lock().unwrap_or_else(|e| e.into_inner());
        let mut kept = Vec::new();
        while let Some(dir) = record.pop() {
            match fs::remove_dir(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                // Tasks or child cgroups in it: someone else's, or not yet gone.
                Err(e) if matches!(e.raw_os_error(), Some(libc::EBUSY) | Some(libc::ENOTEMPTY)) => {
                    kept.push(dir);
                }
                Err(e) => {
                    let message = format!("remove {}: {e}", dir.display());
                    record.push(dir);
                    record.extend(kept.into_iter().rev());
                    return Err(io::Error::new(e.kind(), message));
                }
            }
        }
        // Outermost first again.
        record.extend(kept.iter().rev().cloned());
        self.write_ledger(&record);
        Ok(kept)
    }
}

/// Creates `dir`; true when it did not exist before.
fn create_dir(dir: &Path) -> io::Result<bool> {
    match fs::create_dir(dir) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(io::Error::new(
            e.kind(),
            format!("create {}: {e}", dir.display()),
        )),
    }
}

/// Adds cpu, memory and pids to `dir/cgroup.subtree_control` when missing.
fn enable_v2_controllers(dir: &Path) -> io::Result<()> {
    let path = dir.join("cgroup.subtree_control");
    let current = fs::read_to_string(&path)
        .map_err(|e| io::Error::new(e.kind(), format!("read {}: {e}", path.display())))?;
    let missing: Vec<String> = CONTROLLERS
        .iter()
        .filter(|c| !current.split_whitespace().any(|w| w == **c))
        .map(|c| format!("+{c}"))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    write_file(&path, &missing.join(" "))
}

/// The control files and values that set `limits` on a cgroup.
fn limit_writes(
    version: CgroupVersion,
    controllers: &[&str],
    limits: Limits,
) -> Vec<(&'static str, String)> {
    let quota = u64::from(limits.cpus.max(1)) * CPU_PERIOD_US;
    let mut writes = Vec::new();
    match version {
        CgroupVersion::V1 => {
            if controllers.contains(&"cpu") {
                writes.push(("cpu.cfs_period_us", CPU_PERIOD_US.to_string()));
                writes.push(("cpu.cfs_quota_us", quota.to_string()));
            }
            if controllers.contains(&"memory") && limits.memory_bytes > 0 {
                writes.push(("memory.limit_in_bytes", limits.memory_bytes.to_string()));
                // Only present with swap accounting; written after the plain limit because
                // memsw must never be below it.
                writes.push((
                    "memory.memsw.limit_in_bytes",
                    limits.memory_bytes.to_string(),
                ));
            }
            if controllers.contains(&"pids") {
                writes.push(("pids.max", limits.pids.to_string()));
            }
        }
        CgroupVersion::V2 => {
            writes.push(("cpu.max", format!("{quota} {CPU_PERIOD_US}")));
            if limits.memory_bytes > 0 {
                writes.push(("memory.max", limits.memory_bytes.to_string()));
                writes.push(("memory.swap.max", "0".to_string()));
            }
            writes.push(("pids.max", limits.pids.to_string()));
        }
    }
    writes
}

/// Files that are written only when the kernel offers them.
const OPTIONAL_FILES: [&str; 2] = ["memory.memsw.limit_in_bytes", "memory.swap.max"];

fn apply_limits(
    version: CgroupVersion,
    dir: &Path,
    controllers: &[&str],
    limits: Limits,
) -> io::Result<()> {
    for (file, value) in limit_writes(version, controllers, limits) {
        let path = dir.join(file);
        if OPTIONAL_FILES.contains(&file) && !path.exists() {
            continue;
        }
        write_file(&path, &value)?;
    }
    Ok(())
}

/// The cgroup directories of one sandbox.
#[derive(Debug)]
pub(crate) struct SandboxCgroup {
    version: CgroupVersion,
    dirs: Vec<PathBuf>,
}

/// Reads how much memory a sandbox's cgroup has left, for writes made on its behalf.
#[derive(Debug, Clone)]
pub(crate) struct MemoryGauge {
    version: CgroupVersion,
    dir: PathBuf,
}

impl MemoryGauge {
    /// Bytes the sandbox can still take before it reaches its limit less a reserve for its
    /// processes (an eighth of the limit, at least 8 MiB): its anonymous and tmpfs memory
    /// count, page cache (which the kernel can reclaim) does not. `None` without a limit or
    /// when the files cannot be read.
    pub(crate) fn room(&self) -> Option<u64> {
        let read = |name: &str| fs::read_to_string(self.dir.join(name)).ok();
        let limit: u64 = match self.version {
            CgroupVersion::V2 => read("memory.max")?.trim().parse().ok()?,
            CgroupVersion::V1 => read("memory.limit_in_bytes")?.trim().parse().ok()?,
        };
        // v1 reports "no limit" as a huge number.
        if limit >= 1 << 60 {
            return None;
        }
        let used = unreclaimable(self.version, &self.dir)?;
        let reserve = (limit / 8).max(8 << 20);
        Some(limit.saturating_sub(used).saturating_sub(reserve))
    }
}

/// A memory limit file's value: bytes, or `None` for no limit (v2 `max`, v1's page-rounded
/// `i64::MAX`).
fn parse_memory_limit(text: &str) -> Option<u64> {
    let value: u64 = text.trim().parse().ok()?;
    (value < 1 << 62).then_some(value)
}

/// Memory of a cgroup and its children that the kernel cannot simply drop: anonymous
/// memory, tmpfs/shmem (the sandboxes' files) and kernel memory (page tables, sockets,
/// namespaces: a few hundred KiB a sandbox); page cache, which is reclaimable, does not
/// count. From `memory.stat` (hierarchical on v2, `total_*` on v1) and, on v1,
/// `memory.kmem.usage_in_bytes`.
fn unreclaimable(version: CgroupVersion, dir: &Path) -> Option<u64> {
    let stat = fs::read_to_string(dir.join("memory.stat")).ok()?;
    let field = |key: &str| {
        stat.lines()
            .find_map(|l| {
                l.strip_prefix(key)?
                    .strip_prefix(' ')?
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
            .unwrap_or(0)
    };
    Some(match version {
        CgroupVersion::V2 => field("anon") + field("shmem") + field("kernel"),
        CgroupVersion::V1 => {
            let kernel = fs::read_to_string(dir.join("memory.kmem.usage_in_bytes"))
                .ok()
                .and_then(|t| t.trim().parse::<u64>().ok())
                .unwrap_or(0);
            field("total_rss") + field("total_shmem") + kernel
        }
    })
}

impl SandboxCgroup {
    /// The cgroup's name (its directory's), if it has a directory.
    pub(crate) fn name(&self) -> Option<String> {
        self.dirs
            .first()
            .and_then(|d| d.file_name())
            .and_then(|n| n.to_str())
            .map(str::to_string)
    }

    /// The gauge of the memory controller's directory, if the sandbox has one.
    pub(crate) fn memory_gauge(&self) -> Option<MemoryGauge> {
        let marker = match self.version {
            CgroupVersion::V2 => "memory.max",
            CgroupVersion::V1 => "memory.limit_in_bytes",
        };
        self.dirs
            .iter()
            .find(|d| d.join(marker).exists())
            .map(|dir| MemoryGauge {
                version: self.version,
                dir: dir.clone(),
            })
    }

    /// Moves a process (and so its future children) into the sandbox's cgroups.
    pub(crate) fn attach(&self, pid: u32) -> io::Result<()> {
        for dir in &self.dirs {
            write_file(&dir.join("cgroup.procs"), &pid.to_string())?;
        }
        Ok(())
    }

    /// The tasks in the cgroup (host pids).
    pub(crate) fn procs(&self) -> Vec<i32> {
        let mut pids = Vec::new();
        for dir in &self.dirs {
            if let Ok(text) = fs::read_to_string(dir.join("cgroup.procs")) {
                for pid in text.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                    if !pids.contains(&pid) {
                        pids.push(pid);
                    }
                }
            }
        }
        pids
    }

    /// Sends SIGKILL to every task (v2: `cgroup.kill` when available).
    pub(crate) fn kill_all(&self) {
        if self.version == CgroupVersion::V2 {
            if let Some(dir) = self.dirs.first() {
                let kill = dir.join("cgroup.kill");
                if kill.exists() && fs::write(&kill, "1").is_ok() {
                    return;
                }
            }
        }
        for pid in self.procs() {
            self.kill_member(pid);
        }
    }

    /// Kills `pid` only if it is still a member: the pid is pinned with a pidfd first and the
    /// membership checked after, so a pid reused by an unrelated host process after the
    /// `cgroup.procs` read is never signalled (a signal through a pidfd of an exited process
    /// fails harmlessly).
    fn kill_member(&self, pid: i32) {
        let Some(raw) = Pid::from_raw(pid) else {
            return;
        };
        let Ok(pidfd) = pidfd_open(raw, PidfdFlags::empty()) else {
            return;
        };
        if self.procs().contains(&pid) {
            let _ = pidfd_send_signal(&pidfd, Signal::KILL);
        }
    }

    /// Kills every task until none is left, or `timeout` passes. Returns true when empty.
    pub(crate) fn kill_and_wait_empty(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.procs().is_empty() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            self.kill_all();
            thread::sleep(Duration::from_millis(2));
        }
    }

    /// Removes the directories, retrying while exiting tasks still pin them.
    pub(crate) fn remove(&mut self, timeout: Duration) -> io::Result<()> {
        let deadline = Instant::now() + timeout;
        while let Some(dir) = self.dirs.last().cloned() {
            match fs::remove_dir(&dir) {
                Ok(()) => {
                    self.dirs.pop();
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    self.dirs.pop();
                }
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    thread::sleep(Duration::from_millis(5));
                }
                Err(e) => {
                    return Err(io::Error::new(
                        e.kind(),
                        format!("remove {}: {e}", dir.display()),
                    ))
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::mounts::parse_mountinfo;
    use super::*;

    const HYBRID: &str = "\
30 27 0:26 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu
31 27 0:27 / /sys/fs/cgroup/cpuacct rw - cgroup cgroup rw,cpuacct
32 27 0:28 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
33 27 0:29 / /sys/fs/cgroup/pids rw - cgroup cgroup rw,pids
34 27 0:30 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,name=systemd
35 27 0:31 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw
";

    #[test]
    fn hybrid_host_uses_v1() {
        let mounts = parse_mountinfo(HYBRID);
        let (version, h) = choose(&mounts, |_| Some("hugetlb".into())).unwrap();
        assert_eq!(version, CgroupVersion::V1);
        let roots: Vec<_> = h.iter().map(|h| h.root.to_str().unwrap()).collect();
        assert_eq!(
            roots,
            vec![
                "/sys/fs/cgroup/cpu",
                "/sys/fs/cgroup/memory",
                "/sys/fs/cgroup/pids"
            ]
        );
    }

    #[test]
    fn comounted_v1_controllers_share_a_hierarchy() {
        let text = "\
1 0 0:1 / /cg/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct
2 0 0:2 / /cg/memory rw - cgroup cgroup rw,memory
3 0 0:3 / /cg/pids rw - cgroup cgroup rw,pids
";
        let (_, h) = choose(&parse_mountinfo(text), |_| None).unwrap();
        assert_eq!(h.len(), 3);
        assert_eq!(h[0].controllers, vec!["cpu"]);
    }

    #[test]
    fn pure_v2_host_uses_unified() {
        let text = "35 27 0:31 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw,nsdelegate\n";
        let (version, h) = choose(&parse_mountinfo(text), |p| {
            assert_eq!(p, Path::new("/sys/fs/cgroup"));
            Some("cpuset cpu io memory hugetlb pids rdma misc\n".into())
        })
        .unwrap();
        assert_eq!(version, CgroupVersion::V2);
        assert_eq!(h[0].root, PathBuf::from("/sys/fs/cgroup"));
    }

    #[test]
    fn missing_controllers_are_reported() {
        let text = "35 27 0:31 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
        let err = choose(&parse_mountinfo(text), |_| Some("cpu io".into())).unwrap_err();
        assert!(err.contains("cpu, memory and pids"));
    }

    /// A directory tree standing in for a cgroup2 mount: control files exist up front, as
    /// the kernel would make them.
    fn fake_v2(root: &Path, parent: &str) -> CgroupDriver {
        fs::write(root.join("cgroup.subtree_control"), "cpu").unwrap();
        fs::create_dir_all(root.join(parent)).unwrap();
        fs::write(root.join(parent).join("cgroup.subtree_control"), "").unwrap();
        CgroupDriver {
            version: CgroupVersion::V2,
            hierarchies: vec![Hierarchy {
                root: root.to_path_buf(),
                controllers: CONTROLLERS.to_vec(),
            }],
            parent: parent.to_string(),
            created: Default::default(),
            ledger: None,
        }
    }

    #[test]
    fn v2_delegates_controllers_and_writes_limits() {
        let tmp = tempfile::tempdir().unwrap();
        let driver = fake_v2(tmp.path(), "traforato");
        driver.prepare().unwrap();
        let read = |p: &str| fs::read_to_string(tmp.path().join(p)).unwrap();
        // Only the missing controllers are added.
        assert_eq!(read("cgroup.subtree_control"), "+memory +pids");
        assert_eq!(
            read("traforato/cgroup.subtree_control"),
            "+cpu +memory +pids"
        );
        let limits = Limits {
            cpus: 2,
            memory_bytes: 1 << 30,
            pids: 99,
        };
        let cgroup = driver.create("vm1", limits).unwrap();
        assert_eq!(read("traforato/vm1/cpu.max"), "200000 100000");
        assert_eq!(read("traforato/vm1/memory.max"), "1073741824");
        assert_eq!(read("traforato/vm1/pids.max"), "99");
        // Optional files the kernel does not offer are skipped.
        assert!(!tmp.path().join("traforato/vm1/memory.swap.max").exists());
        cgroup.attach(42).unwrap();
        assert_eq!(read("traforato/vm1/cgroup.procs"), "42");
        assert_eq!(driver.children(), vec!["vm1".to_string()]);
        // An existing cgroup is never adopted.
        assert!(driver.create("vm1", limits).is_err());
    }

    #[test]
    fn a_crashed_runs_parents_are_adopted_from_the_ledger() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("pids");
        fs::create_dir(&root).unwrap();
        let ledger = tmp.path().join("cgroup-parents");
        let driver = || CgroupDriver {
            version: CgroupVersion::V1,
            hierarchies: vec![Hierarchy {
                root: root.clone(),
                controllers: vec![],
            }],
            parent: "a/b".to_string(),
            created: Default::default(),
            ledger: Some(ledger.clone()),
        };
        let crashed = driver();
        crashed.prepare().unwrap();
        assert_eq!(
            fs::read_to_string(&ledger).unwrap(),
            format!(
                "{}\n{}\n",
                root.join("a").display(),
                root.join("a/b").display()
            )
        );
        // The crashed run never removes them; the next one, finding them, created nothing
        // itself, but adopts what the ledger lists (and nothing outside its parent's path).
        fs::create_dir(root.join("elsewhere")).unwrap();
        fs::write(
            &ledger,
            format!(
                "{}\n{}\n{}\n/etc\n",
                root.join("a").display(),
                root.join("a/b").display(),
                root.join("elsewhere").display()
            ),
        )
        .unwrap();
        let next = driver();
        next.prepare().unwrap();
        next.adopt_ledger();
        next.save_ledger();
        assert_eq!(next.remove_parents().unwrap(), Vec::<PathBuf>::new());
        assert!(!root.join("a").exists());
        assert!(root.join("elsewhere").exists());
        assert!(!ledger.exists(), "nothing left to list");
    }

    #[test]
    fn parents_made_again_after_vanishing_are_removed_too() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("pids");
        fs::create_dir(&root).unwrap();
        let driver = CgroupDriver {
            version: CgroupVersion::V1,
            // Plain directories stay removable, as cgroup directories with control files are.
            hierarchies: vec![Hierarchy {
                root: root.clone(),
                controllers: vec![],
            }],
            parent: "a/b".to_string(),
            created: Default::default(),
            ledger: None,
        };
        driver.prepare().unwrap();
        // Another worker sharing the parent removed it at its shutdown.
        fs::remove_dir_all(root.join("a")).unwrap();
        let limits = Limits {
            cpus: 1,
            memory_bytes: 1 << 20,
            pids: 10,
        };
        // A clone (as a sandbox holds) makes the parent again; the backend's driver knows.
        let mut cgroup = driver.clone().create("vm", limits).unwrap();
        assert!(root.join("a/b/vm").is_dir());
        // In use: kept (and still remembered).
        assert_eq!(
            driver.remove_parents().unwrap(),
            vec![root.join("a/b"), root.join("a")]
        );
        cgroup.remove(Duration::from_millis(200)).unwrap();
        assert_eq!(driver.remove_parents().unwrap(), Vec::<PathBuf>::new());
        assert!(!root.join("a").exists(), "nothing left behind");
        // Nothing more to remove.
        assert_eq!(driver.remove_parents().unwrap(), Vec::<PathBuf>::new());
    }

    /// The ceiling is the tightest limit on the parent's path, the root's included; "no
    /// limit" in either version's spelling is none.
    #[test]
    fn the_memory_ceiling_is_the_tightest_limit_above_the_sandboxes() {
        let tmp = tempfile::tempdir().unwrap();
        let driver = |version| CgroupDriver {
            version,
            hierarchies: vec![Hierarchy {
                root: tmp.path().join("memory"),
                controllers: vec!["memory"],
            }],
            parent: "outer/tf".to_string(),
            created: Default::default(),
            ledger: None,
        };
        let root = tmp.path().join("memory");
        fs::create_dir_all(root.join("outer/tf")).unwrap();
        let v1 = driver(CgroupVersion::V1);
        assert_eq!(v1.parent_memory_limit(), None, "no limit files");
        fs::write(root.join("memory.limit_in_bytes"), "9223372036854771712\n").unwrap();
        fs::write(
            root.join("outer/tf/memory.limit_in_bytes"),
            "9223372036854771712\n",
        )
        .unwrap();
        assert_eq!(v1.parent_memory_limit(), None, "v1's unlimited");
        fs::write(root.join("outer/memory.limit_in_bytes"), "1073741824\n").unwrap();
        assert_eq!(v1.parent_memory_limit(), Some(1 << 30), "an ancestor's");
        fs::write(root.join("outer/tf/memory.limit_in_bytes"), "268435456\n").unwrap();
        assert_eq!(v1.parent_memory_limit(), Some(256 << 20), "the tightest");
        // The ancestor also holds 900 MiB of other processes (the worker, say), the
        // sandboxes 100 MiB: 1 GiB - 900 MiB leaves them 124 MiB, tighter than their own.
        let stat = |rss: u64| format!("total_rss {rss}\ntotal_shmem 0\n");
        fs::write(root.join("outer/tf/memory.stat"), stat(100 << 20)).unwrap();
        fs::write(root.join("outer/memory.stat"), stat(1000 << 20)).unwrap();
        assert_eq!(
            v1.parent_memory_limit(),
            Some(124 << 20),
            "less what others use"
        );
        fs::remove_file(root.join("outer/tf/memory.stat")).unwrap();
        fs::remove_file(root.join("outer/memory.stat")).unwrap();

        let v2 = driver(CgroupVersion::V2);
        fs::write(root.join("outer/tf/memory.max"), "max\n").unwrap();
        fs::write(root.join("outer/memory.max"), "max\n").unwrap();
        assert_eq!(v2.parent_memory_limit(), None, "v2's max");
        fs::write(root.join("outer/memory.max"), "536870912\n").unwrap();
        assert_eq!(v2.parent_memory_limit(), Some(512 << 20));
    }

    #[test]
    fn failed_create_removes_what_it_made() {
        let tmp = tempfile::tempdir().unwrap();
        let driver = CgroupDriver {
            version: CgroupVersion::V1,
            hierarchies: vec![
                // No limits to write here, so the plain directory stays removable the way a
                // cgroup directory with its control files is.
                Hierarchy {
                    root: tmp.path().join("pids"),
                    controllers: vec![],
                },
                Hierarchy {
                    root: tmp.path().join("missing"),
                    controllers: vec!["memory"],
                },
            ],
            parent: "tf".to_string(),
            created: Default::default(),
            ledger: None,
        };
        fs::create_dir_all(tmp.path().join("pids/tf")).unwrap();
        let limits = Limits {
            cpus: 1,
            memory_bytes: 1 << 20,
            pids: 10,
        };
        assert!(driver.create("vm", limits).is_err());
        assert!(!tmp.path().join("pids/tf/vm").exists());
    }

    /// A spare's cgroup is renamed to a sandbox's in every hierarchy, or, when one rename
    /// fails, left whole under its old name; v2 refuses.
    #[test]
    fn adopting_a_spare_renames_every_hierarchy_or_none() {
        let tmp = tempfile::tempdir().unwrap();
        let driver = |version| CgroupDriver {
            version,
            // No controllers: no limits to write in plain directories.
            hierarchies: ["a", "b"]
                .map(|h| Hierarchy {
                    root: tmp.path().join(h),
                    controllers: vec![],
                })
                .to_vec(),
            parent: "tf".to_string(),
            created: Default::default(),
            ledger: None,
        };
        let v1 = driver(CgroupVersion::V1);
        for h in ["a", "b"] {
            fs::create_dir_all(tmp.path().join(h).join("tf")).unwrap();
        }
        let limits = Limits {
            cpus: 1,
            memory_bytes: 0,
            pids: 10,
        };
        let dir = |h: &str, name: &str| tmp.path().join(h).join("tf").join(name);

        // A name taken (by a non-empty directory) in the second hierarchy only.
        fs::create_dir_all(dir("b", "taken").join("x")).unwrap();
        let spare = v1.create("spare", limits).unwrap();
        let (spare, error) = v1.adopt(spare, "taken", limits).unwrap_err();
        assert!(error.to_string().contains("rename"), "{error}");
        assert_eq!(spare.dirs, vec![dir("a", "spare"), dir("b", "spare")]);
        assert!(dir("a", "spare").is_dir() && dir("b", "spare").is_dir());
        assert!(!dir("a", "taken").exists(), "the first rename was undone");

        let adopted = v1.adopt(spare, "vm", limits).unwrap();
        assert_eq!(adopted.dirs, vec![dir("a", "vm"), dir("b", "vm")]);
        assert_eq!(adopted.name().as_deref(), Some("vm"));
        assert!(!dir("a", "spare").exists() && !dir("b", "spare").exists());

        let v2 = driver(CgroupVersion::V2);
        let other = v1.create("other", limits).unwrap();
        let (other, error) = v2.adopt(other, "vm2", limits).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::Unsupported);
        assert_eq!(other.dirs, vec![dir("a", "other"), dir("b", "other")]);
    }

    #[test]
    fn limits_per_version() {
        let limits = Limits {
            cpus: 2,
            memory_bytes: 64 << 20,
            pids: 100,
        };
        let v1 = limit_writes(CgroupVersion::V1, &["cpu", "memory", "pids"], limits);
        assert!(v1.contains(&("cpu.cfs_quota_us", "200000".to_string())));
        assert!(v1.contains(&("memory.limit_in_bytes", "67108864".to_string())));
        assert!(v1.contains(&("pids.max", "100".to_string())));
        let only_pids = limit_writes(CgroupVersion::V1, &["pids"], limits);
        assert_eq!(only_pids, vec![("pids.max", "100".to_string())]);
        let v2 = limit_writes(CgroupVersion::V2, &CONTROLLERS, limits);
        assert!(v2.contains(&("cpu.max", "200000 100000".to_string())));
        assert!(v2.contains(&("memory.max", "67108864".to_string())));
        assert!(v2.contains(&("memory.swap.max", "0".to_string())));
        let unlimited = Limits {
            memory_bytes: 0,
            ..limits
        };
        let v1 = limit_writes(CgroupVersion::V1, &["memory"], unlimited);
        assert!(v1.is_empty());
    }
}
