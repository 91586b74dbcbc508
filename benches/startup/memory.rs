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

    /// What makes up the charge of the cgroup at `dir`: user memory (anonymous), tmpfs and
    /// shared memory, page cache and kernel memory, as far as the interface tells.
    pub fn breakdown(&self, dir: &Path) -> io::Result<ChargeBreakdown> {
        let stat = fs::read_to_string(dir.join("memory.stat"))?;
        let field = |name: &str| -> u64 {
            stat.lines()
                .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(' ')))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0)
        };
        if self.v2 {
            let kernel = match field("kernel") {
                0 => {
                    field("kernel_stack")
                        + field("pagetables")
                        + field("percpu")
                        + field("sock")
                        + field("slab")
                }
                k => k,
            };
            Ok(ChargeBreakdown {
                anon: field("anon"),
                shmem: field("shmem"),
                cache: field("file").saturating_sub(field("shmem")),
                kernel,
            })
        } else {
            let kmem = fs::read_to_string(dir.join("memory.kmem.usage_in_bytes"))
                .ok()
                .and_then(|t| t.trim().parse().ok())
                .unwrap_or(0);
            Ok(ChargeBreakdown {
                anon: field("rss") + field("rss_huge"),
                shmem: field("shmem"),
                cache: field("cache").saturating_sub(field("shmem")),
                kernel: kmem,
            })
        }
    }
}

/// The parts of a cgroup's memory charge, in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChargeBreakdown {
    /// Anonymous memory of its processes.
    pub anon: u64,
    /// tmpfs and shared memory (the writable layer).
    pub shmem: u64,
    /// Other page cache first touched by the sandbox.
    pub cache: u64,
    /// Kernel memory (slab, stacks, page tables, sockets) charged to it.
    pub kernel: u64,
}

impl ChargeBreakdown {
    /// Adds `other` field by field.
    pub fn add(&mut self, other: ChargeBreakdown) {
        self.anon += other.anon;
        self.shmem += other.shmem;
        self.cache += other.cache;
        self.kernel += other.kernel;
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

/// Host memory counters from `/proc/meminfo`, in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HostMemory {
    /// `MemTotal - MemAvailable`: what the host counts as used.
    pub used: u64,
    /// `AnonPages`: process heaps and stacks.
    pub anon: u64,
    /// `Shmem`: tmpfs and shared memory (the sandboxes' writable layers).
    pub shmem: u64,
    /// `SUnreclaim`: kernel objects that cannot be reclaimed (namespaces, mounts, ...).
    pub slab_unreclaimable: u64,
    /// `SReclaimable`: kernel caches that can be reclaimed (dentries, inodes).
    pub slab_reclaimable: u64,
    /// `KernelStack + PageTables + Percpu`.
    pub kernel_other: u64,
}

impl HostMemory {
    /// Reads `/proc/meminfo`.
    pub fn read() -> io::Result<Self> {
        let meminfo = fs::read_to_string("/proc/meminfo")?;
        let field = |name: &str| -> io::Result<u64> {
            meminfo
                .lines()
                .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(':')))
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
        Ok(Self {
            used: field("MemTotal")?.saturating_sub(field("MemAvailable")?),
            anon: field("AnonPages")?,
            shmem: field("Shmem")?,
            slab_unreclaimable: field("SUnreclaim")?,
            slab_reclaimable: field("SReclaimable")?,
            kernel_other: field("KernelStack")? + field("PageTables")? + field("Percpu")?,
        })
    }

    /// The median of `n` reads `gap` apart, field by field (damps other tenants' noise).
    pub fn settled(n: usize, gap: std::time::Duration) -> io::Result<Self> {
        let mut reads = Vec::with_capacity(n.max(1));
        for i in 0..n.max(1) {
            if i > 0 {
                std::thread::sleep(gap);
            }
            reads.push(Self::read()?);
        }
        let median = |f: fn(&HostMemory) -> u64| {
            let mut v: Vec<u64> = reads.iter().map(f).collect();
            v.sort_unstable();
            v[v.len() / 2]
        };
        Ok(Self {
            used: median(|m| m.used),
            anon: median(|m| m.anon),
            shmem: median(|m| m.shmem),
            slab_unreclaimable: median(|m| m.slab_unreclaimable),
            slab_reclaimable: median(|m| m.slab_reclaimable),
            kernel_other: median(|m| m.kernel_other),
        })
    }

    /// Growth from `before` to `self`, per field, as signed bytes.
    pub fn growth_since(&self, before: &Self) -> [(&'static str, i64); 6] {
        let d = |a: u64, b: u64| a as i64 - b as i64;
        [
            ("used", d(self.used, before.used)),
            ("anon", d(self.anon, before.anon)),
            ("shmem", d(self.shmem, before.shmem)),
            (
                "slab unreclaimable",
                d(self.slab_unreclaimable, before.slab_unreclaimable),
            ),
            (
                "slab reclaimable",
                d(self.slab_reclaimable, before.slab_reclaimable),
            ),
            (
                "kernel stacks+page tables+percpu",
                d(self.kernel_other, before.kernel_other),
            ),
        ]
    }
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
