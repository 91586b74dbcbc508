//! Memory of idle sandboxes: what their cgroups are charged, how much of it is private memory
//! of interpreter processes (excluded by the target), and the host-wide and worker-side
//! growth as cross-checks.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// The memory controller's hierarchy.
#[derive(Debug, Clone)]
pub struct MemoryHierarchy {
    root: PathBuf,
    v2: bool,
}

impl MemoryHierarchy {
    /// Finds the memory controller's mount (cgroup v1, else the unified v2 hierarchy).
    pub fn detect() -> io::Result<Self> {
        let mountinfo = fs::read_to_string("/proc/self/mountinfo")?;
        let mut v2_root = None;
        for line in mountinfo.lines() {
            // `<id> <parent> <dev> <root> <mount point> <options> [optional...] - <fs> <src> <super>`
            let Some((head, tail)) = line.split_once(" - ") else {
                continue;
            };
            let mount_point = head.split(' ').nth(4).unwrap_or_default();
            let mut tail = tail.split(' ');
            let fs_type = tail.next().unwrap_or_default();
            let super_options = tail.nth(1).unwrap_or_default();
            if fs_type == "cgroup" && super_options.split(',').any(|o| o == "memory") {
                return Ok(Self {
                    root: PathBuf::from(mount_point),
                    v2: false,
                });
            }
            if fs_type == "cgroup2" && v2_root.is_none() {
                let controllers =
                    fs::read_to_string(Path::new(mount_point).join("cgroup.controllers"))
                        .unwrap_or_default();
                if controllers.split_whitespace().any(|c| c == "memory") {
                    v2_root = Some(PathBuf::from(mount_point));
                }
            }
        }
        v2_root
            .map(|root| Self { root, v2: true })
            .ok_or_else(|| io::Error::other("no cgroup hierarchy with the memory controller"))
    }

    /// `v1` or `v2`.
    pub fn version(&self) -> &'static str {
        if self.v2 {
            "v2"
        } else {
            "v1"
        }
    }

    /// The cgroups directly below `<root>/<parent>` (one per sandbox).
    pub fn children(&self, parent: &str) -> io::Result<Vec<PathBuf>> {
        let mut out = Vec::new();
        for entry in fs::read_dir(self.root.join(parent))? {
            let entry = entry?;
            if entry.file_type()?.is_dir() {
                out.push(entry.path());
            }
        }
        out.sort();
        Ok(out)
    }

    /// Bytes charged to the cgroup at `dir`.
    pub fn usage(&self, dir: &Path) -> io::Result<u64> {
        let file = if self.v2 {
            "memory.current"
        } else {
            "memory.usage_in_bytes"
        };
        parse_u64(&fs::read_to_string(dir.join(file))?)
    }
}

/// One process of a sandbox.
#[derive(Debug, Clone)]
pub struct ProcessMemory {
    /// File name of its executable.
    pub exe: String,
    /// Private (unshared) resident memory: `Private_Clean + Private_Dirty`.
    pub private_bytes: u64,
}

impl ProcessMemory {
    /// True for a code interpreter (`python*`, `node*`), which the target excludes.
    pub fn is_interpreter(&self) -> bool {
        self.exe.starts_with("python") || self.exe.starts_with("node")
    }
}

/// The processes of the cgroup at `dir` and their memory. Processes that exit meanwhile
/// are skipped.
pub fn processes(dir: &Path) -> io::Result<Vec<ProcessMemory>> {
    let procs = fs::read_to_string(dir.join("cgroup.procs"))?;
    let mut out = Vec::new();
    for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
        let exe = fs::read_link(format!("/proc/{pid}/exe"))
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_default();
        let Ok(rollup) = fs::read_to_string(format!("/proc/{pid}/smaps_rollup")) else {
            continue;
        };
        let field = |name: &str| -> u64 {
            rollup
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|rest| {
                    rest.trim()
                        .trim_end_matches("kB")
                        .trim()
                        .parse::<u64>()
                        .ok()
                })
                .map_or(0, |kib| kib * 1024)
        };
        out.push(ProcessMemory {
            exe,
            private_bytes: field("Private_Clean:") + field("Private_Dirty:"),
        });
    }
    Ok(out)
}

/// `MemTotal - MemAvailable` of the host, in bytes.
pub fn host_used() -> io::Result<u64> {
    let meminfo = fs::read_to_string("/proc/meminfo")?;
    let field = |name: &str| -> io::Result<u64> {
        meminfo
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| {
                rest.trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
            .map(|kib| kib * 1024)
            .ok_or_else(|| io::Error::other(format!("/proc/meminfo has no {name}")))
    };
    Ok(field("MemTotal:")?.saturating_sub(field("MemAvailable:")?))
}

/// Resident set of this process (the worker, in-process), in bytes.
pub fn self_rss() -> io::Result<u64> {
    let status = fs::read_to_string("/proc/self/status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|rest| {
            rest.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()
        })
        .map(|kib| kib * 1024)
        .ok_or_else(|| io::Error::other("/proc/self/status has no VmRSS"))
}

fn parse_u64(text: &str) -> io::Result<u64> {
    text.trim()
        .parse()
        .map_err(|_| io::Error::other(format!("not a number: {:?}", text.trim())))
}

/// Bytes as MiB with two decimals.
pub fn mib(bytes: f64) -> String {
    format!("{:.2}", bytes / (1024.0 * 1024.0))
}
