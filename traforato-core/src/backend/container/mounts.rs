//! Host-side mounts of a sandbox (tmpfs scratch, overlay root, read-only binds), the
//! `/proc/self/mountinfo` parser, and teardown of everything mounted below a directory.

use std::ffi::CString;
use std::io;
use std::path::{Path, PathBuf};

use rustix::mount::{mount, mount_bind, mount_remount, unmount, MountFlags, UnmountFlags};

/// One line of `/proc/self/mountinfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MountEntry {
    /// Where it is mounted.
    pub mount_point: PathBuf,
    /// Filesystem type (`cgroup`, `cgroup2`, `overlay`, ...).
    pub fs_type: String,
    /// Per-superblock options (for cgroup v1: the controllers).
    pub super_options: Vec<String>,
}

/// Undoes the octal escapes (`\040` for a space, ...) that mountinfo uses in paths.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 3 < bytes.len() {
            let digits = &bytes[i + 1..i + 4];
            if digits.iter().all(|d| (b'0'..=b'7').contains(d)) {
                let value = digits
                    .iter()
                    .fold(0u32, |acc, d| acc * 8 + u32::from(d - b'0'));
                if let Ok(byte) = u8::try_from(value) {
                    out.push(byte);
                    i += 4;
                    continue;
                }
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses mountinfo text; malformed lines are skipped.
pub(crate) fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    let mut entries = Vec::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let Some(sep) = fields.iter().position(|f| *f == "-") else {
            continue;
        };
        if fields.len() < 5 || fields.len() < sep + 3 {
            continue;
        }
        entries.push(MountEntry {
            mount_point: PathBuf::from(unescape(fields[4])),
            fs_type: fields[sep + 1].to_string(),
            super_options: fields[sep + 3].split(',').map(str::to_string).collect(),
        });
    }
    entries
}

/// The current mount table of this process's mount namespace.
pub(crate) fn read_mountinfo() -> io::Result<Vec<MountEntry>> {
    Ok(parse_mountinfo(&std::fs::read_to_string(
        "/proc/self/mountinfo",
    )?))
}

/// Mount points at `dir` or below it, in mount order (parents before what is stacked on them).
pub(crate) fn mounts_under(entries: &[MountEntry], dir: &Path) -> Vec<PathBuf> {
    entries
        .iter()
        .filter(|e| e.mount_point.starts_with(dir))
        .map(|e| e.mount_point.clone())
        .collect()
}

/// The mount points that cover files or directories of `/proc`, deepest first: what Docker
/// puts over `/proc/kcore`, `/proc/sys` and the like in its containers. While they are there
/// the kernel refuses a sandbox a proc of its own (the init takes them off in a namespace of
/// its own). `binfmt_misc` and `autofs`, mounted on empty directories, do not count.
pub(crate) fn proc_overmounts(entries: &[MountEntry]) -> Vec<String> {
    let mut found: Vec<String> = entries
        .iter()
        .filter(|e| {
            e.mount_point.starts_with("/proc")
                && e.mount_point != Path::new("/proc")
                && !matches!(e.fs_type.as_str(), "binfmt_misc" | "autofs")
        })
        .map(|e| e.mount_point.to_string_lossy().into_owned())
        .collect();
    // Deepest first; a path covered twice appears twice (one unmount each).
    found.sort_by_key(|target| std::cmp::Reverse(target.matches('/').count()));
    found
}

/// Unmounts everything at or below `dir`, newest first; a busy mount is detached lazily.
/// Returns an error if anything is still mounted there afterwards.
pub(crate) fn unmount_all_under(dir: &Path) -> io::Result<()> {
    for _ in 0..3 {
        let points = mounts_under(&read_mountinfo()?, dir);
        if points.is_empty() {
            return Ok(());
        }
        for point in points.iter().rev() {
            match unmount(point, UnmountFlags::NOFOLLOW) {
                Ok(()) => {}
                // Already gone (a parent's detach took it along).
                Err(rustix::io::Errno::INVAL) | Err(rustix::io::Errno::NOENT) => {}
                Err(_) => {
                    let _ = unmount(point, UnmountFlags::DETACH | UnmountFlags::NOFOLLOW);
                }
            }
        }
    }
    let left = mounts_under(&read_mountinfo()?, dir);
    if left.is_empty() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "{} mount(s) still below {}",
            left.len(),
            dir.display()
        )))
    }
}

/// Mounts a private tmpfs (nosuid, nodev) of `size_mib` at `target`.
pub(crate) fn mount_tmpfs(target: &Path, size_mib: u64, mode: u32) -> io::Result<()> {
    let data = CString::new(format!("size={size_mib}m,mode={mode:o}"))
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    mount(
        "tmpfs",
        target,
        "tmpfs",
        MountFlags::NOSUID | MountFlags::NODEV,
        Some(data.as_c_str()),
    )?;
    Ok(())
}

/// True when `path` can be named in overlayfs options without escaping.
pub(crate) fn overlay_safe(path: &Path) -> bool {
    path.to_str()
        .is_some_and(|s| !s.contains([',', ':', '\\', '\n']))
}

/// Mounts the overlay root at `base/rootfs` from `lowers` (read-only) and
/// `base/scratch/{upper,work}`.
///
/// The layer paths are given relative to `base` (`../` for the other directories of the state
/// dir), from a thread of its own whose working directory is `base`: the sandbox sees the
/// overlay's options in its `/proc/self/mountinfo`, and relative paths do not tell it where
/// the host keeps sandboxes or which id it has. Layers outside the state dir (configured
/// image directories) keep their absolute paths.
pub(crate) fn mount_overlay(base: &Path, lowers: &[PathBuf]) -> io::Result<()> {
    let upper = base.join("scratch/upper");
    let work = base.join("scratch/work");
    let all_safe =
        lowers.iter().all(|p| overlay_safe(p)) && overlay_safe(&upper) && overlay_safe(&work);
    if lowers.is_empty() || !all_safe {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "overlay layer paths must be non-empty and free of `,` `:` `\\`",
        ));
    }
    let state_dir = base.parent().unwrap_or(base);
    let shown = |p: &Path| -> String {
        if let Ok(rel) = p.strip_prefix(base) {
            rel.to_string_lossy().into_owned()
        } else if let Ok(rel) = p.strip_prefix(state_dir) {
            format!("../{}", rel.to_string_lossy())
        } else {
            p.to_string_lossy().into_owned()
        }
    };
    let lower = lowers
        .iter()
        .map(|p| shown(p))
        .collect::<Vec<_>>()
        .join(":");
    let data = CString::new(format!(
        "lowerdir={lower},upperdir={},workdir={}",
        shown(&upper),
        shown(&work)
    ))
    .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let target = base.join("rootfs");
    // The working directory is per process; a thread that unshares its filesystem context
    // may change its own without touching the worker's other threads.
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                private_fs_context()?;
                rustix::process::chdir(base)?;
                mount(
                    "overlay",
                    &target,
                    "overlay",
                    MountFlags::NOSUID | MountFlags::NODEV,
                    Some(data.as_c_str()),
                )
            })
            .join()
            .map_err(|_| io::Error::other("overlay mount thread panicked"))?
            .map_err(io::Error::from)
    })
}

/// Gives the calling thread its own working directory, root and umask.
#[allow(unsafe_code)]
fn private_fs_context() -> rustix::io::Result<()> {
    // SAFETY: `FS` unshares only the cwd, root and umask; the descriptor table stays shared,
    // so every fd remains usable by every thread (the hazard `unshare_unsafe` warns of).
    unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::FS) }
}

/// Bind-mounts `source` at `target`, then makes the bind read-only, nosuid and nodev.
pub(crate) fn bind_read_only(source: &Path, target: &Path) -> io::Result<()> {
    mount_bind(source, target)?;
    mount_remount(
        target,
        MountFlags::BIND | MountFlags::RDONLY | MountFlags::NOSUID | MountFlags::NODEV,
        "",
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
22 27 0:21 / /proc rw,relatime - proc proc rw
31 27 0:27 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
32 27 0:28 / /sys/fs/cgroup/cpu,cpuacct rw,relatime shared:9 - cgroup cgroup rw,cpu,cpuacct
40 27 0:29 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
50 27 0:40 / /run/tf/a\\040b/rootfs rw - overlay overlay rw,lowerdir=/x
51 50 0:41 / /run/tf/a\\040b/rootfs/usr ro - ext4 /dev/vda rw
";

    #[test]
    fn parses_fields_and_escapes() {
        let e = parse_mountinfo(SAMPLE);
        assert_eq!(e.len(), 6);
        assert_eq!(e[1].fs_type, "cgroup");
        assert_eq!(e[1].super_options, vec!["rw", "cpu"]);
        assert_eq!(
            e[2].mount_point,
            PathBuf::from("/sys/fs/cgroup/cpu,cpuacct")
        );
        assert_eq!(e[2].super_options, vec!["rw", "cpu", "cpuacct"]);
        assert_eq!(e[3].fs_type, "cgroup2");
        assert_eq!(e[4].mount_point, PathBuf::from("/run/tf/a b/rootfs"));
    }

    #[test]
    fn docker_covers_of_proc_are_found_deepest_first() {
        // /proc of a Docker container (abridged), a host's binfmt_misc beside it.
        let text = "\
78 60 0:43 / /proc rw,nosuid,nodev,noexec,relatime - proc proc rw
53 78 0:43 /bus /proc/bus ro,nosuid,nodev,noexec,relatime - proc proc rw
56 78 0:43 /sys /proc/sys ro,nosuid,nodev,noexec,relatime - proc proc rw
57 78 0:47 /null /proc/kcore rw,nosuid - tmpfs tmpfs rw,size=65536k,mode=755
58 78 0:48 / /proc/acpi ro,relatime - tmpfs tmpfs ro
59 56 0:49 / /proc/sys/fs/binfmt_misc rw,relatime - binfmt_misc binfmt_misc rw
60 56 0:50 / /proc/sys/kernel/x\\040y rw,relatime - tmpfs tmpfs rw
61 60 0:51 / /procfs rw,relatime - tmpfs tmpfs rw
";
        let found = proc_overmounts(&parse_mountinfo(text));
        assert_eq!(
            found,
            [
                "/proc/sys/kernel/x y",
                "/proc/bus",
                "/proc/sys",
                "/proc/kcore",
                "/proc/acpi"
            ]
        );
        // A host's /proc: nothing to take off.
        assert!(proc_overmounts(&parse_mountinfo(SAMPLE)).is_empty());
    }

    #[test]
    fn finds_mounts_below_a_dir_in_order() {
        let e = parse_mountinfo(SAMPLE);
        let below = mounts_under(&e, Path::new("/run/tf/a b"));
        assert_eq!(
            below,
            vec![
                PathBuf::from("/run/tf/a b/rootfs"),
                PathBuf::from("/run/tf/a b/rootfs/usr")
            ]
        );
        assert!(mounts_under(&e, Path::new("/run/tf/a")).is_empty());
    }

    #[test]
    fn overlay_paths_are_checked() {
        assert!(overlay_safe(Path::new("/a/b")));
        assert!(!overlay_safe(Path::new("/a:b")));
        assert!(!overlay_safe(Path::new("/a,b")));
    }
}
