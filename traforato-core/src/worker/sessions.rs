//! Reconnectable exec sessions and exec access tickets: what the WebSocket exec needs beyond
//! one exec.
//!
//! A session is a client-chosen name for an exec in one sandbox: the first open with a
//! command starts the exec, later opens with the same name attach to it again (a different
//! command or options is a conflict), so a client that lost its connection finds its process
//! and its output. The history a session replays is the exec's frame log, so it counts
//! against the sandbox's output budget like every exec's output. A session is forgotten when
//! it is closed, with its sandbox, or when its exec is forgotten; one that nobody is attached
//! to for [`SESSION_IDLE_TIMEOUT`] is closed by the reaper (its process killed), so forgotten
//! sessions do not hold the sandbox's exec slots.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::exec::{FrameStream, OutputFrame};
use super::{Worker, WorkerError};
use crate::api::ExecRequest;
use crate::auth::{Principal, Ticket, TicketError};
use crate::backend::{BackendError, ExecControl, ExecSignal, Vm};
use crate::id::{ExecId, SandboxId};

/// The longest session name.
pub const MAX_SESSION_NAME: usize = 64;

/// How long a session may have no connection before the reaper closes it.
pub const SESSION_IDLE_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// A session of a sandbox: its exec and the options it was started with.
#[derive(Debug, Clone)]
pub(super) struct Session {
    pub exec_id: ExecId,
    pub spec: ExecRequest,
    /// Connections attached now.
    pub attached: usize,
    /// When the last connection left (`None` while one is attached).
    pub idle_since: Option<DateTime<Utc>>,
}

/// An open of a session: the exec, and whether this open started it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionOpened {
    /// The session's exec.
    pub exec_id: ExecId,
    /// This open started the exec (else it attached to a running or finished one).
    pub created: bool,
}

/// A session name: 1 to [`MAX_SESSION_NAME`] characters of `A-Z a-z 0-9 . _ : -`.
fn check_name(name: &str) -> Result<(), WorkerError> {
    let valid = !name.is_empty()
        && name.len() <= MAX_SESSION_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'));
    if valid {
        Ok(())
    } else {
        Err(WorkerError::InvalidSession)
    }
}

/// Whether two requests ask for the same process: command or argv, working directory,
/// environment, and the stdin and terminal options (the timeout is not compared).
fn same_spec(a: &ExecRequest, b: &ExecRequest) -> bool {
    a.command == b.command
        && a.args == b.args
        && a.cwd == b.cwd
        && a.env == b.env
        && a.interactive == b.interactive
        && a.tty == b.tty
        && a.rows == b.rows
        && a.cols == b.cols
}

impl Worker {
    /// Opens the session `name` of a sandbox. An existing session is attached to when
    /// `request` is `None` or asks for the same process ([`WorkerError::SessionConflict`]
    /// otherwise); a missing one is started from `request`
    /// ([`WorkerError::SessionNotFound`] without one).
    ///
    /// The open counts as an attached connection until [`Worker::leave_exec_session`].
    pub fn open_exec_session(
        &self,
        principal: &Principal,
        id: &SandboxId,
        name: &str,
        request: Option<ExecRequest>,
    ) -> Result<SessionOpened, WorkerError> {
        check_name(name)?;
        // One open at a time decides whether a name exists, so a name never starts two
        // processes. Nothing below waits: the start only hands the command to a task.
        let _one_at_a_time = self.session_opens.lock().unwrap_or_else(|e| e.into_inner());
        let attached = self.with_sandbox(principal, id, |entry| {
            let execs = &entry.execs;
            entry.sessions.retain(|_, s| execs.contains_key(&s.exec_id));
            let session = entry.sessions.get_mut(name)?;
            Some(attach(name, session, request.as_ref()))
        })?;
        if let Some(attached) = attached {
            return attached;
        }
        let Some(request) = request else {
            return Err(WorkerError::SessionNotFound(name.to_string()));
        };
        let spec = request.clone();
        let exec_id = self.exec_command(principal, id, request)?;
        self.with_sandbox(principal, id, |entry| {
            entry.sessions.insert(
                name.to_string(),
                Session {
                    exec_id,
                    spec,
                    attached: 1,
                    idle_since: None,
                },
            );
        })?;
        Ok(SessionOpened {
            exec_id,
            created: true,
        })
    }

    /// A connection to the session `name` ended (without closing it): when it was the last,
    /// the session's idle time starts. Unknown names are fine.
    pub fn leave_exec_session(
        &self,
        principal: &Principal,
        id: &SandboxId,
        name: &str,
    ) -> Result<(), WorkerError> {
        let now = self.clock.now();
        self.with_sandbox(principal, id, |entry| {
            if let Some(session) = entry.sessions.get_mut(name) {
                session.attached = session.attached.saturating_sub(1);
                if session.attached == 0 {
                    session.idle_since = Some(now);
                }
            }
        })
    }

    /// Closes the sessions nobody was attached to for [`SESSION_IDLE_TIMEOUT`]: their
    /// processes are killed and their names forgotten. Returns how many.
    pub(super) async fn reap_idle_sessions(&self) -> usize {
        let now = self.clock.now();
        let idle = chrono::Duration::from_std(SESSION_IDLE_TIMEOUT).unwrap_or_default();
        let mut victims: Vec<(Arc<dyn Vm>, ExecId)> = Vec::new();
        {
            let mut state = self.lock();
            for entry in state.sandboxes.values_mut() {
                let vm = entry.vm.clone();
                entry.sessions.retain(|_, s| {
                    let expired = s.idle_since.is_some_and(|t| t + idle <= now);
                    if expired {
                        victims.push((vm.clone(), s.exec_id));
                    }
                    !expired
                });
            }
        }
        let count = victims.len();
        for (vm, exec_id) in victims {
            match vm
                .control_exec(&exec_id, ExecControl::Signal(ExecSignal::Kill))
                .await
            {
                Ok(()) | Err(BackendError::ExecNotRunning) => {}
                Err(error) => {
                    tracing::warn!(exec_id = %exec_id, error = %error, "idle session not killed")
                }
            }
        }
        count
    }

    /// Closes the session `name`: its exec is killed (when still running) and the name is
    /// forgotten. Unknown names are fine.
    pub async fn close_exec_session(
        &self,
        principal: &Principal,
        id: &SandboxId,
        name: &str,
    ) -> Result<(), WorkerError> {
        let removed = self.with_sandbox(principal, id, |entry| entry.sessions.remove(name))?;
        if let Some(session) = removed {
            let kill = ExecControl::Signal(ExecSignal::Kill);
            match self.control(principal, id, &session.exec_id, kill).await {
                Ok(()) | Err(WorkerError::ExecExited | WorkerError::ExecNotFound) => {}
                Err(err) => return Err(err),
            }
        }
        Ok(())
    }

    /// The frames of an exec from the absolute `cursor` on (a session's history).
    pub fn exec_frames_from(
        &self,
        principal: &Principal,
        id: &SandboxId,
        exec_id: &ExecId,
        cursor: u64,
    ) -> Result<FrameStream, WorkerError> {
        let mut stream = self.frame_stream(principal, id, exec_id, 0)?;
        stream.seek(cursor);
        Ok(stream)
    }

    /// A page of a session's history: the frames of an exec kept between the absolute
    /// cursors `from` and `to`, each with its watermark (the cursor just after it). Frames
    /// already forgotten are skipped; an empty page means nothing more up to `to`.
    pub fn exec_history(
        &self,
        principal: &Principal,
        id: &SandboxId,
        exec_id: &ExecId,
        from: u64,
        to: u64,
    ) -> Result<Vec<OutputFrame>, WorkerError> {
        let exec = self.find_exec(principal, id, exec_id)?;
        let (frames, _, _) = exec.output_from(from);
        Ok(frames
            .into_iter()
            .take_while(|f| f.watermark <= to)
            .collect())
    }

    /// The count of frames an exec appended so far (the cursor of its next frame).
    pub fn exec_frame_count(
        &self,
        principal: &Principal,
        id: &SandboxId,
        exec_id: &ExecId,
    ) -> Result<u64, WorkerError> {
        Ok(self.find_exec(principal, id, exec_id)?.frame_count())
    }

    /// Lets the worker forget an exec's frames before the absolute `cursor` (a session's
    /// `ack`): they no longer count against the sandbox's output budget. The newest frame
    /// always stays.
    pub fn ack_exec_frames(
        &self,
        principal: &Principal,
        id: &SandboxId,
        exec_id: &ExecId,
        cursor: u64,
    ) -> Result<(), WorkerError> {
        self.find_exec(principal, id, exec_id)?
            .discard_before(cursor);
        Ok(())
    }

    /// Issues a single-use access ticket that lets a caller without `Authorization` (a
    /// browser) open the exec WebSocket of a sandbox the principal may use, with the options
    /// `binding` describes (canonicalised by the caller), within
    /// [`crate::auth::TICKET_LIFETIME`]. `None` in dev mode, where no credential is needed.
    pub fn issue_exec_ticket(
        &self,
        principal: &Principal,
        id: &SandboxId,
        binding: &str,
    ) -> Result<Option<Ticket>, WorkerError> {
        self.check_sandbox(principal, id)?;
        if !self.config.auth_mode.is_prod() {
            return Ok(None);
        }
        self.tickets
            .issue(principal, &id.to_string(), binding)
            .map(Some)
            .map_err(WorkerError::Ticket)
    }

    /// Redeems an access ticket for the exec WebSocket of sandbox `id` with the options
    /// `binding` describes: the principal it was issued to. It is consumed whatever the
    /// outcome. In dev mode every caller is [`Principal::dev`].
    pub fn redeem_exec_ticket(
        &self,
        token: &str,
        id: &SandboxId,
        binding: &str,
    ) -> Result<Principal, TicketError> {
        if !self.config.auth_mode.is_prod() {
            return Ok(Principal::dev());
        }
        self.tickets.redeem(token, &id.to_string(), binding)
    }
}

/// Attaches one more connection to `session`, when `request` (if any) asks for its process.
fn attach(
    name: &str,
    session: &mut Session,
    request: Option<&ExecRequest>,
) -> Result<SessionOpened, WorkerError> {
    if request.is_some_and(|r| !same_spec(r, &session.spec)) {
        return Err(WorkerError::SessionConflict(name.to_string()));
    }
    session.attached += 1;
    session.idle_since = None;
    Ok(SessionOpened {
        exec_id: session.exec_id,
        created: false,
    })
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn names() {
        for good in ["a", "build-1", "x.y_z:0", &"n".repeat(64)] {
            assert!(check_name(good).is_ok(), "{good}");
        }
        for bad in ["", " ", "a b", "a/b", "é", &"n".repeat(65)] {
            assert!(
                matches!(check_name(bad), Err(WorkerError::InvalidSession)),
                "{bad}"
            );
        }
    }

    #[test]
    fn specs() {
        let a = ExecRequest {
            command: "sh".into(),
            tty: true,
            interactive: true,
            ..ExecRequest::default()
        };
        let mut b = a.clone();
        b.timeout_ms = 5;
        assert!(same_spec(&a, &b), "the timeout is not compared");
        b.rows = Some(10);
        assert!(!same_spec(&a, &b));
        let mut c = a.clone();
        c.env.insert("A".into(), "1".into());
        assert!(!same_spec(&a, &c));
    }
}
