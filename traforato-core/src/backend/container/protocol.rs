//! The worker ↔ sandbox-init protocol: JSON messages over a `SOCK_SEQPACKET` socketpair, one
//! message per packet; an exec request carries the command's stdin/stdout/stderr as
//! `SCM_RIGHTS` file descriptors.

use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{BorrowedFd, OwnedFd};

use rustix::io::Errno;
use rustix::net::{
    recvmsg, sendmsg, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags,
    SendAncillaryBuffer, SendAncillaryMessage, SendFlags,
};
use serde::{Deserialize, Serialize};

/// Largest message either side sends (an exec request with a long command line).
pub(crate) const MAX_MESSAGE: usize = 4 << 20;

/// Most fds one message carries.
pub(crate) const MAX_FDS: usize = 4;

/// Largest message the init sends to the worker.
pub(crate) const MAX_EVENT: usize = 64 << 10;

/// What the init needs to build the sandbox.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct Setup {
    /// Host path of the mounted root (the overlay), entered before the namespaces are made.
    pub rootfs: String,
    /// Host name inside the sandbox.
    pub hostname: String,
    /// Mounts covering parts of the worker's `/proc` (a worker in a Docker container), which
    /// the init takes off in a mount namespace of its own before making the sandbox's: the
    /// kernel refuses a new proc in a user namespace while the existing one is partly
    /// covered. Empty on a host.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub proc_overmounts: Vec<String>,
}

/// The user a command runs as, in the sandbox's own ids (below
/// [`UID_COUNT`](super::UID_COUNT)): its uid, and its gid as its only group.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct ExecUser {
    /// The user id.
    pub uid: u32,
    /// The group id.
    pub gid: u32,
}

/// Worker → init.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(crate) enum Request {
    /// First message: build the sandbox.
    Setup(Setup),
    /// The worker wrote the user namespace's uid/gid maps.
    MapsWritten,
    /// Run a command; three or four fds follow: stdin, stdout, stderr and optionally one
    /// that becomes the command's fd 3.
    Exec {
        /// Chosen by the worker, echoed in the events.
        id: u64,
        /// Program and arguments; `argv[0]` without `/` is looked up in the env's `PATH`.
        argv: Vec<String>,
        /// The complete environment.
        env: Vec<(String, String)>,
        /// Working directory.
        cwd: String,
        /// Start the program with real uid 1 (effective uid 0): the kernel then makes it
        /// non-dumpable from its first instruction, and no process of the sandbox (uid 0, no
        /// `CAP_SYS_PTRACE`) can ptrace it, read its memory or take its descriptors. For the
        /// worker's own helpers (the Python zygote), never for user commands.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        out_of_reach: bool,
        /// The stdio descriptors are a terminal: make it the command's controlling terminal.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        tty: bool,
        /// Run as this user (the image's `User`) instead of the sandbox's root.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        user: Option<ExecUser>,
    },
    /// Copy everything from the first fd (a pipe) into the second (a file the worker opened
    /// in the sandbox root), in a process of the sandbox: the pages it writes are charged to
    /// the sandbox's memory cgroup, not the worker's. Answered like an exec: `Started`, then
    /// `Exited` with 0, the errno of a failed read or write, or 128 + signal.
    Copy {
        /// Chosen by the worker, echoed in the events.
        id: u64,
    },
    /// SIGKILL the process group of a running command.
    Kill {
        /// The exec's id.
        id: u64,
    },
    /// Send a signal to the process group of a running command: SIGHUP, SIGINT, SIGKILL or
    /// SIGTERM (others are ignored).
    Signal {
        /// The exec's id.
        id: u64,
        /// The signal's number.
        signal: i32,
    },
    /// SIGKILL a process group by its id inside the sandbox (a code run forked by the Python
    /// zygote, which is not the agent's child). Ids below 2 are ignored.
    KillGroup {
        /// The process group id, as the sandbox's pid namespace numbers it.
        pgid: i32,
    },
}

/// Init → worker.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(crate) enum Event {
    /// The user namespace exists; the worker may write its maps.
    UsernsCreated,
    /// The sandbox is up; the init now serves exec requests.
    Ready,
    /// Building the sandbox failed; the init exits.
    SetupFailed {
        /// What failed.
        message: String,
    },
    /// The command runs.
    Started {
        /// The exec's id.
        id: u64,
    },
    /// The command could not be started.
    ExecFailed {
        /// The exec's id.
        id: u64,
        /// Why.
        message: String,
    },
    /// The command ended.
    Exited {
        /// The exec's id.
        id: u64,
        /// Exit code, or 128 + signal.
        code: i32,
    },
}

/// Sends one message with `fds` attached. Never raises SIGPIPE.
pub(crate) fn send<T: Serialize>(
    socket: BorrowedFd<'_>,
    message: &T,
    fds: &[BorrowedFd<'_>],
    nonblocking: bool,
) -> std::io::Result<()> {
    let bytes = serde_json::to_vec(message).map_err(std::io::Error::other)?;
    if bytes.len() > MAX_MESSAGE {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "message too large",
        ));
    }
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "too many fds",
        ));
    }
    let mut flags = SendFlags::NOSIGNAL;
    if nonblocking {
        flags |= SendFlags::DONTWAIT;
    }
    loop {
        match sendmsg(socket, &[IoSlice::new(&bytes)], &mut control, flags) {
            Ok(_) => return Ok(()),
            Err(Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Receives one message and the fds attached to it (up to [`MAX_FDS`]; with `accept_fds` false none
/// are accepted and any sent are closed by the kernel). `Ok(None)` is end of stream.
pub(crate) fn recv<T: for<'de> Deserialize<'de>>(
    socket: BorrowedFd<'_>,
    buf: &mut [u8],
    accept_fds: bool,
    nonblocking: bool,
) -> std::io::Result<Option<(T, Vec<OwnedFd>)>> {
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = if accept_fds {
        RecvAncillaryBuffer::new(&mut space)
    } else {
        RecvAncillaryBuffer::new(&mut [])
    };
    let mut flags = RecvFlags::CMSG_CLOEXEC;
    if nonblocking {
        flags |= RecvFlags::DONTWAIT;
    }
    let received = loop {
        match recvmsg(socket, &mut [IoSliceMut::new(buf)], &mut control, flags) {
            Ok(r) => break r,
            Err(Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    };
    let mut fds = Vec::new();
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(received_fds) = message {
            fds.extend(received_fds);
        }
    }
    if received.bytes == 0 {
        return Ok(None);
    }
    // Fds sent where none are accepted are closed by the kernel (CTRUNC): not an error.
    let truncated = received.flags.contains(ReturnFlags::TRUNC)
        || (accept_fds && received.flags.contains(ReturnFlags::CTRUNC));
    if truncated {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "message truncated",
        ));
    }
    let message = serde_json::from_slice(&buf[..received.bytes])
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
    Ok(Some((message, fds)))
}

/// The fuzz target `agent_protocol` (see [`crate::fuzzing::agent_packet`]): `bytes` as one
/// packet into [`recv`] of events and of requests, each decoded message sent again by
/// [`send`] and decoded to itself.
#[cfg(feature = "fuzzing")]
pub(crate) fn fuzz_packet(bytes: &[u8]) {
    use rustix::net::{socketpair, AddressFamily, SocketFlags, SocketType};
    use std::os::fd::AsFd;

    fn once<T>(bytes: &[u8], buf_len: usize)
    where
        T: Serialize + for<'de> Deserialize<'de> + PartialEq + std::fmt::Debug,
    {
        let (a, b) = socketpair(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC,
            None,
        )
        .expect("a socketpair");
        // Too large for one packet: the kernel refuses it, as it would the init's.
        if rustix::net::send(&a, bytes, SendFlags::NOSIGNAL | SendFlags::DONTWAIT).is_err() {
            return;
        }
        let mut buf = vec![0u8; buf_len];
        let Ok(Some((message, _))) = recv::<T>(b.as_fd(), &mut buf, false, true) else {
            return;
        };
        send(a.as_fd(), &message, &[], true).expect("a decoded message is sent again");
        // Encoded again, a string may grow (escapes): at most six bytes a character.
        let mut buf = vec![0u8; (bytes.len() * 6 + 1024).min(MAX_MESSAGE)];
        let (again, _) = recv::<T>(b.as_fd(), &mut buf, false, true)
            .expect("a sent message is received")
            .expect("not the end of the stream");
        assert_eq!(again, message);
    }
    once::<Event>(bytes, MAX_EVENT);
    once::<Request>(bytes, MAX_MESSAGE.min(bytes.len() + 1024));
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustix::net::{socketpair, AddressFamily, SocketFlags, SocketType};
    use std::io::{Read, Write};
    use std::os::fd::AsFd;

    fn pair() -> (OwnedFd, OwnedFd) {
        socketpair(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC,
            None,
        )
        .unwrap()
    }

    #[test]
    fn round_trips_messages_and_fds() {
        let (a, b) = pair();
        let (r, w) = rustix::pipe::pipe().unwrap();
        let req = Request::Exec {
            id: 7,
            argv: vec!["/bin/true".into()],
            env: vec![("A".into(), "b".into())],
            cwd: "/".into(),
            out_of_reach: false,
            tty: false,
            user: Some(ExecUser {
                uid: 1000,
                gid: 100,
            }),
        };
        send(a.as_fd(), &req, &[r.as_fd(), w.as_fd(), w.as_fd()], false).unwrap();
        drop(w);
        let mut buf = vec![0u8; 4096];
        let (got, fds): (Request, _) = recv(b.as_fd(), &mut buf, true, false).unwrap().unwrap();
        assert_eq!(got, req);
        assert_eq!(fds.len(), 3);
        // The received write end talks to our read end.
        let mut writer = std::fs::File::from(fds.into_iter().nth(1).unwrap());
        writer.write_all(b"hi").unwrap();
        drop(writer);
        let mut reader = std::fs::File::from(r);
        let mut s = String::new();
        reader.read_to_string(&mut s).unwrap_or_default();
        assert!(s.starts_with("hi"));
    }

    #[test]
    fn fds_are_refused_when_not_accepted_and_eof_is_none() {
        let (a, b) = pair();
        let (r, _w) = rustix::pipe::pipe().unwrap();
        send(a.as_fd(), &Event::Ready, &[r.as_fd()], false).unwrap();
        let mut buf = vec![0u8; 1024];
        let got: Option<(Event, Vec<OwnedFd>)> = recv(b.as_fd(), &mut buf, false, false).unwrap();
        let (event, fds) = got.unwrap();
        assert_eq!(event, Event::Ready);
        assert!(fds.is_empty());
        drop(a);
        let eof: Option<(Event, Vec<OwnedFd>)> = recv(b.as_fd(), &mut buf, false, false).unwrap();
        assert!(eof.is_none());
    }

    /// The fuzz target's entry takes real messages, garbage and oversized packets alike.
    #[cfg(feature = "fuzzing")]
    #[test]
    fn the_fuzz_entry_takes_messages_and_garbage() {
        let exec = serde_json::to_vec(&Request::Kill { id: 3 }).unwrap();
        let exited = serde_json::to_vec(&Event::Exited { id: 3, code: 137 }).unwrap();
        for packet in [
            exec.as_slice(),
            exited.as_slice(),
            b"{\"type\":\"setup_failed\",\"message\":\"\\u00e9\\n\"}",
            b"",
            b"\xff{",
            &vec![b' '; MAX_EVENT + 10],
        ] {
            fuzz_packet(packet);
        }
    }

    #[test]
    fn nonblocking_recv_would_block() {
        let (_a, b) = pair();
        let mut buf = vec![0u8; 64];
        let err = recv::<Event>(b.as_fd(), &mut buf, false, true).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::WouldBlock);
    }
}
