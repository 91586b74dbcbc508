//! Pseudo-terminals for execs that ask for one: allocated by the worker in the sandbox's own
//! devpts instance (reached through the agent's root in `/proc`), with the sandbox root user's
//! filesystem credentials so that the terminal belongs to the sandbox. The worker keeps the
//! master; the slave becomes the command's stdin, stdout and stderr, and the agent makes it
//! the command's controlling terminal.

use std::io;
use std::os::fd::OwnedFd;

use rustix::fs::{open, Mode, OFlags};
use rustix::pty::{ioctl_tiocgptpeer, unlockpt, OpenptFlags};
use rustix::termios::{tcsetwinsize, Winsize};

use super::fscreds::SandboxFsCreds;
use crate::backend::TerminalSize;

/// A new terminal: the master (non-blocking, for the worker) and its slave.
#[derive(Debug)]
pub(crate) struct Terminal {
    pub master: OwnedFd,
    pub slave: OwnedFd,
}

/// Opens a terminal of `size` in the devpts of the sandbox whose agent is host pid
/// `agent_pid`, as the sandbox's `uid`; its slave is given to `owner` (host uid and gid) when
/// set. Blocks briefly; call it off the async threads.
pub(crate) fn open_terminal(
    agent_pid: u32,
    uid: u32,
    owner: Option<(u32, u32)>,
    size: TerminalSize,
) -> io::Result<Terminal> {
    let ptmx = format!("/proc/{agent_pid}/root/dev/pts/ptmx");
    let master = {
        let _creds = SandboxFsCreds::enter(uid, uid)?;
        open(
            ptmx.as_str(),
            OFlags::RDWR | OFlags::NOCTTY | OFlags::CLOEXEC | OFlags::NONBLOCK,
            Mode::empty(),
        )?
    };
    unlockpt(&master)?;
    resize(&master, size)?;
    // The slave straight from the master: no path lookup in the sandbox's /dev.
    let slave = ioctl_tiocgptpeer(
        &master,
        OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC,
    )?;
    if let Some((owner_uid, owner_gid)) = owner {
        rustix::fs::fchown(
            &slave,
            Some(rustix::fs::Uid::from_raw(owner_uid)),
            Some(rustix::fs::Gid::from_raw(owner_gid)),
        )?;
    }
    Ok(Terminal { master, slave })
}

/// Sets the terminal's size (the kernel sends SIGWINCH to its foreground process group).
pub(crate) fn resize(master: &OwnedFd, size: TerminalSize) -> io::Result<()> {
    tcsetwinsize(
        master,
        Winsize {
            ws_row: size.rows,
            ws_col: size.cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        },
    )?;
    Ok(())
}

/// The host pid of the sandbox's agent: the only child of its outer init `init_pid`.
pub(crate) fn agent_pid(init_pid: u32) -> Option<u32> {
    let children =
        std::fs::read_to_string(format!("/proc/{init_pid}/task/{init_pid}/children")).ok()?;
    children.split_whitespace().next()?.parse().ok()
}
