//! Per-thread filesystem credentials: the files API touches a sandbox's root as the sandbox's
//! root user (a host uid from the mapped range), never as the worker's host root. Linux keeps
//! `fsuid`/`fsgid` per thread, and moving them away from 0 also drops the thread's
//! file-permission capabilities until they are restored.
#![allow(unsafe_code)]

use std::io;

/// While alive, the calling thread's filesystem uid/gid are the sandbox's and it has no
/// supplementary groups (so the worker's own groups grant nothing inside the sandbox root).
pub(crate) struct SandboxFsCreds {
    previous_uid: u32,
    previous_gid: u32,
    previous_groups: Vec<libc::gid_t>,
}

fn thread_groups() -> io::Result<Vec<libc::gid_t>> {
    // SAFETY: with size 0, getgroups only returns the count and writes nothing.
    let n = unsafe { libc::getgroups(0, std::ptr::null_mut()) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut groups = vec![0 as libc::gid_t; n as usize];
    // SAFETY: the buffer holds exactly `n` gids, the size passed.
    let got = unsafe { libc::getgroups(n, groups.as_mut_ptr()) };
    if got < 0 {
        return Err(io::Error::last_os_error());
    }
    groups.truncate(got as usize);
    Ok(groups)
}

/// Sets the supplementary groups of the calling thread only. The raw syscall is used on
/// purpose: the libc wrapper applies the change to every thread of the process.
fn set_thread_groups(groups: &[libc::gid_t]) -> io::Result<()> {
    // SAFETY: the pointer and length describe a valid slice of gids for the whole call.
    let rc = unsafe { libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn set_fsuid(uid: u32) -> u32 {
    // SAFETY: setfsuid takes a plain integer and affects only the calling thread's fsuid.
    unsafe { libc::setfsuid(uid) as u32 }
}

fn set_fsgid(gid: u32) -> u32 {
    // SAFETY: setfsgid takes a plain integer and affects only the calling thread's fsgid.
    unsafe { libc::setfsgid(gid) as u32 }
}

impl SandboxFsCreds {
    /// Switches the calling thread to `uid:gid` for filesystem access. Must be dropped on the
    /// same thread (keep it within one synchronous block).
    pub(crate) fn enter(uid: u32, gid: u32) -> io::Result<Self> {
        let previous_groups = thread_groups()?;
        set_thread_groups(&[])?;
        // Group first: changing it needs the capability that the uid switch drops.
        let previous_gid = set_fsgid(gid);
        let previous_uid = set_fsuid(uid);
        // setfsuid/setfsgid report the previous value, never an error; read back to check.
        let creds = Self {
            previous_uid,
            previous_gid,
            previous_groups,
        };
        if set_fsuid(uid) != uid || set_fsgid(gid) != gid {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "cannot switch filesystem credentials",
            ));
        }
        Ok(creds)
    }
}

impl Drop for SandboxFsCreds {
    fn drop(&mut self) {
        set_fsuid(self.previous_uid);
        set_fsgid(self.previous_gid);
        if set_fsuid(self.previous_uid) != self.previous_uid
            || set_thread_groups(&self.previous_groups).is_err()
        {
            // A blocking-pool thread with foreign credentials would corrupt later work.
            std::process::abort();
        }
    }
}
