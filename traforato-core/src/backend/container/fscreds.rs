//! Per-thread filesystem credentials: the files API touches a sandbox's root as the sandbox's
//! root user (a host uid from the mapped range), never as the worker's host root. Linux keeps
//! `fsuid`/`fsgid` per thread, and moving them away from 0 also drops the thread's
//! file-permission capabilities until they are restored.
#![allow(unsafe_code)]

use std::io;

/// While alive, the calling thread's filesystem uid/gid are the sandbox's.
pub(crate) struct SandboxFsCreds {
    previous_uid: u32,
    previous_gid: u32,
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
        // Group first: changing it needs the capability that the uid switch drops.
        let previous_gid = set_fsgid(gid);
        let previous_uid = set_fsuid(uid);
        // setfsuid/setfsgid report the previous value, never an error; read back to check.
        let creds = Self {
            previous_uid,
            previous_gid,
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
        if set_fsuid(self.previous_uid) != self.previous_uid {
            // A blocking-pool thread with foreign credentials would corrupt later work.
            std::process::abort();
        }
    }
}
