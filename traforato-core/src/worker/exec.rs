//! Execs and run-code: records, output frames appended as the backend produces them, and
//! long-polled frame reads.
//!
//! Bounds, so that a chatty command cannot exhaust the worker: the record keeps the first
//! [`MAX_CAPTURE_BYTES`] of stdout and of stderr; the frame log keeps the latest
//! [`MAX_FRAMES`] frames and at most [`MAX_FRAME_BYTES`] of frame data, dropping the oldest
//! (cursors stay absolute, so a reader that fell behind resumes at the oldest frame kept); a
//! frames response carries at most [`MAX_FRAMES_PER_RESPONSE`] frames. A sandbox runs at most
//! [`MAX_RUNNING_EXECS_PER_SANDBOX`] execs at once, keeps its latest
//! [`MAX_EXECS_PER_SANDBOX`] execs, and all its execs together, running or exited, keep at
//! most [`MAX_OUTPUT_BYTES_PER_SANDBOX`] of output ([`OutputBudget`]): past it, the oldest
//! exited execs are forgotten, captures stop growing and running execs keep only their
//! latest frames.

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::{mpsc, watch};
use tokio::task::{AbortHandle, JoinHandle};
use tokio::time::Instant;

use super::{RunCodeOutcome, Worker, WorkerError};
use bytes::Bytes;

use crate::api::{
    decode_encoded, Encoding, ExecList, ExecRecord, ExecRequest, Frame, FrameKind, FramesResponse,
    RunCodeRequest, RunCodeResponse, SyntaxErrorBody,
};
use crate::auth::Principal;
use crate::backend::{
    BackendError, CodeOutcome, CodeSpec, ExecControl, ExecExit, ExecSpec, OutputChunk,
    OutputStream, Program, Runtime, TerminalSize, Vm,
};
use crate::clock::Clock;
use crate::id::{ExecId, SandboxId};
use crate::telemetry::{Metrics, WorkerCpuLabels};

/// stdout (and, separately, stderr) bytes kept in an exec record.
pub(super) const MAX_CAPTURE_BYTES: usize = 1 << 20;
/// Frames kept per exec.
pub(super) const MAX_FRAMES: usize = 10_000;
/// Frame data bytes kept per exec.
pub(super) const MAX_FRAME_BYTES: usize = 8 << 20;
/// Frames returned by one frames call.
pub(super) const MAX_FRAMES_PER_RESPONSE: usize = 1_000;
/// Exited execs kept per sandbox.
pub(super) const MAX_EXECS_PER_SANDBOX: usize = 1_000;
/// Most output bytes (captures and frames) a sandbox keeps for all its execs, running or
/// exited; the oldest exited execs are forgotten first.
pub(super) const MAX_OUTPUT_BYTES_PER_SANDBOX: usize = 64 << 20;
/// The most output one exec keeps (its two captures and its frames): the room a start makes
/// in the sandbox's budget by forgetting old exited execs.
const ONE_EXEC_OUTPUT: usize = 2 * MAX_CAPTURE_BYTES + MAX_FRAME_BYTES;
/// Most execs (commands and code runs) one sandbox runs at the same time.
pub(super) const MAX_RUNNING_EXECS_PER_SANDBOX: usize = 32;
/// Timeout of an exec that names none.
pub(super) const DEFAULT_EXEC_TIMEOUT: Duration = Duration::from_secs(10 * 60);
/// Timeout of run-code that names none.
pub(super) const DEFAULT_CODE_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest timeout accepted.
pub(super) const MAX_TIMEOUT: Duration = Duration::from_secs(24 * 60 * 60);
/// Largest run-code source.
pub(super) const MAX_CODE_BYTES: usize = 1_048_576;
/// Long-poll of a frames call that asks to wait without saying how long.
pub const DEFAULT_FRAMES_WAIT: Duration = Duration::from_secs(30);
/// Longest long-poll of a frames call.
pub const MAX_FRAMES_WAIT: Duration = Duration::from_secs(60);
/// Exit code recorded when the backend could not run the command at all.
pub(super) const BACKEND_ERROR_EXIT_CODE: i32 = 127;
/// Output chunks buffered between the backend and the frame log.
const OUTPUT_CHANNEL: usize = 64;
/// How long a control waits for a just-started exec to run in the backend.
const CONTROL_START_WAIT: Duration = Duration::from_secs(5);
/// How often a control retries meanwhile.
const CONTROL_RETRY: Duration = Duration::from_millis(5);
/// `TERM` of a command on a terminal whose request sets none.
pub(super) const DEFAULT_TERM: &str = "xterm-256color";

/// The bytes of output one sandbox's execs keep together (captured stdout and stderr, frame
/// data). Shared by the execs; each gives back what it holds when it is dropped.
#[derive(Debug)]
pub(crate) struct OutputBudget {
    limit: usize,
    used: AtomicUsize,
}

impl OutputBudget {
    /// A budget of `limit` bytes.
    pub(crate) fn new(limit: usize) -> Self {
        Self {
            limit,
            used: AtomicUsize::new(0),
        }
    }

    /// Bytes held.
    pub(crate) fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    fn room(&self) -> usize {
        self.limit.saturating_sub(self.used())
    }

    fn is_over(&self) -> bool {
        self.used() > self.limit
    }

    fn take(&self, bytes: usize) {
        self.used.fetch_add(bytes, Ordering::Relaxed);
    }

    fn give(&self, bytes: usize) {
        self.used.fetch_sub(bytes, Ordering::Relaxed);
    }
}

/// What the frame log looks like to waiters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Progress {
    /// Frames ever appended (absolute cursor of the next one).
    total: u64,
    /// Exited, or abandoned with its sandbox: nothing more will come.
    finished: bool,
}

#[derive(Debug, Clone, Copy)]
struct ExitInfo {
    code: i32,
    timed_out: bool,
    duration_ms: u64,
    completed_at: DateTime<Utc>,
}

struct ExecData {
    runtime: Option<Runtime>,
    command: String,
    started_at: DateTime<Utc>,
    exit: Option<ExitInfo>,
    stdout: String,
    stderr: String,
    frames: VecDeque<Frame>,
    /// Beside each frame: its exact bytes when they differ from its text (output that is not
    /// valid UTF-8), for the byte-exact WebSocket.
    raw: VecDeque<Option<Bytes>>,
    /// Frames dropped from the front.
    dropped: u64,
    frame_bytes: usize,
    /// Incomplete UTF-8 sequences at the end of the last stdout / stderr chunk.
    carry: [Vec<u8>; 2],
    syntax_error: bool,
    /// The backend refused the run for a reason of the request (a missing interpreter).
    request_fault: Option<String>,
    /// Runs on a pseudo-terminal.
    tty: bool,
    /// The sandbox's output budget, and what this exec holds of it.
    budget: Arc<OutputBudget>,
    charged: usize,
}

impl ExecData {
    fn total(&self) -> u64 {
        self.dropped + self.frames.len() as u64
    }

    fn charge(&mut self, bytes: usize) {
        self.budget.take(bytes);
        self.charged += bytes;
    }

    fn refund(&mut self, bytes: usize) {
        self.budget.give(bytes);
        self.charged -= bytes;
    }

    /// Appends a frame, then drops the oldest ones beyond this exec's bounds or while the
    /// sandbox's budget is exceeded (the newest frame always stays).
    fn push_frame(&mut self, kind: FrameKind, data: String, raw: Option<Bytes>, ts: DateTime<Utc>) {
        let size = data.len() + raw.as_ref().map_or(0, Bytes::len);
        self.frame_bytes += size;
        self.charge(size);
        self.frames.push_back(Frame { kind, data, ts });
        self.raw.push_back(raw);
        while self.frames.len() > 1
            && (self.frames.len() > MAX_FRAMES
                || self.frame_bytes > MAX_FRAME_BYTES
                || self.budget.is_over())
        {
            self.drop_oldest();
        }
    }

    /// Forgets the oldest frame.
    fn drop_oldest(&mut self) {
        if let Some(old) = self.frames.pop_front() {
            let raw = self.raw.pop_front().flatten();
            let size = old.data.len() + raw.as_ref().map_or(0, Bytes::len);
            self.frame_bytes -= size;
            self.refund(size);
            self.dropped += 1;
        }
    }

    fn push_text(
        &mut self,
        stream: OutputStream,
        text: String,
        raw: Option<Bytes>,
        ts: DateTime<Utc>,
    ) {
        if text.is_empty() {
            return;
        }
        let (kind, capture) = match stream {
            OutputStream::Stdout => (FrameKind::Stdout, &mut self.stdout),
            OutputStream::Stderr => (FrameKind::Stderr, &mut self.stderr),
        };
        let room = self.budget.room();
        let added = push_capped(capture, &text, MAX_CAPTURE_BYTES, room);
        self.charge(added);
        self.push_frame(kind, text, raw, ts);
    }
}

/// Appends as much of `text` as fits in `cap` bytes of `out` and in `room` more bytes, on a
/// character boundary; returns the bytes appended.
fn push_capped(out: &mut String, text: &str, cap: usize, room: usize) -> usize {
    let room = cap.saturating_sub(out.len()).min(room);
    if room >= text.len() {
        out.push_str(text);
        return text.len();
    }
    let mut cut = room;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    out.push_str(&text[..cut]);
    cut
}

/// Decodes `data` as UTF-8 after the bytes carried over from the previous chunk. Invalid
/// bytes become U+FFFD; an incomplete sequence at the end is carried over to the next chunk.
/// When bytes were replaced, the exact bytes the text stands for come too.
pub(super) fn decode_utf8(carry: &mut Vec<u8>, data: &[u8]) -> (String, Option<Bytes>) {
    let joined;
    let bytes: &[u8] = if carry.is_empty() {
        data
    } else {
        carry.extend_from_slice(data);
        joined = std::mem::take(carry);
        &joined
    };
    let mut out = String::with_capacity(bytes.len());
    let mut rest = bytes;
    let mut lossy = false;
    loop {
        match std::str::from_utf8(rest) {
            Ok(text) => {
                out.push_str(text);
                break;
            }
            Err(error) => {
                let (valid, after) = rest.split_at(error.valid_up_to());
                out.push_str(&String::from_utf8_lossy(valid));
                match error.error_len() {
                    Some(len) => {
                        out.push(char::REPLACEMENT_CHARACTER);
                        lossy = true;
                        rest = &after[len..];
                    }
                    None => {
                        carry.extend_from_slice(after);
                        break;
                    }
                }
            }
        }
    }
    let raw = lossy.then(|| Bytes::copy_from_slice(&bytes[..bytes.len() - carry.len()]));
    (out, raw)
}

/// One exec (plain command or run-code).
pub(super) struct Exec {
    id: ExecId,
    sandbox_id: String,
    data: Mutex<ExecData>,
    progress: watch::Sender<Progress>,
    task: Mutex<Option<AbortHandle>>,
}

/// A finished exec, as run-code answers it.
struct Summary {
    runtime: String,
    exit_code: i32,
    stdout: String,
    stderr: String,
    duration_ms: u64,
    started_at: DateTime<Utc>,
    completed_at: DateTime<Utc>,
    syntax_error: bool,
}

impl Drop for ExecData {
    fn drop(&mut self) {
        self.budget.give(self.charged);
    }
}

impl Exec {
    fn new(
        id: ExecId,
        sandbox_id: String,
        runtime: Option<Runtime>,
        command: String,
        started_at: DateTime<Utc>,
        tty: bool,
        budget: Arc<OutputBudget>,
    ) -> Arc<Self> {
        Arc::new(Self {
            id,
            sandbox_id,
            data: Mutex::new(ExecData {
                runtime,
                command,
                started_at,
                exit: None,
                stdout: String::new(),
                stderr: String::new(),
                frames: VecDeque::new(),
                raw: VecDeque::new(),
                dropped: 0,
                frame_bytes: 0,
                carry: [Vec::new(), Vec::new()],
                syntax_error: false,
                request_fault: None,
                tty,
                budget,
                charged: 0,
            }),
            progress: watch::channel(Progress::default()).0,
            task: Mutex::new(None),
        })
    }

    fn data(&self) -> std::sync::MutexGuard<'_, ExecData> {
        self.data.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Publishes the frame count to waiters. Called with the data lock held, so that counts
    /// are published in order.
    fn publish(&self, data: &ExecData) {
        let total = data.total();
        let finished = data.exit.is_some();
        self.progress.send_modify(|p| {
            p.total = total;
            p.finished |= finished;
        });
    }

    fn is_exited(&self) -> bool {
        self.data().exit.is_some()
    }

    /// Frames ever appended: the absolute cursor of the next one.
    pub(super) fn frame_count(&self) -> u64 {
        self.data().total()
    }

    /// Forgets the frames before the absolute `cursor` (the newest frame always stays).
    pub(super) fn discard_before(&self, cursor: u64) {
        let mut data = self.data();
        while data.frames.len() > 1 && data.dropped < cursor {
            data.drop_oldest();
        }
    }

    /// Bytes of output this exec keeps (captured stdout/stderr and frame data).
    fn retained_bytes(&self) -> usize {
        self.data().charged
    }

    /// Appends a chunk of output.
    fn push_chunk(&self, chunk: OutputChunk, ts: DateTime<Utc>) {
        let mut data = self.data();
        let slot = match chunk.stream {
            OutputStream::Stdout => 0,
            OutputStream::Stderr => 1,
        };
        let (text, raw) = decode_utf8(&mut data.carry[slot], &chunk.data);
        data.push_text(chunk.stream, text, raw, ts);
        self.publish(&data);
    }

    /// Appends text of the worker's own (an error message).
    fn push_text(&self, stream: OutputStream, text: String, ts: DateTime<Utc>) {
        let mut data = self.data();
        data.push_text(stream, text, None, ts);
        self.publish(&data);
    }

    fn mark_syntax_error(&self) {
        self.data().syntax_error = true;
    }

    /// Flushes carried bytes, appends the exit frame and marks the exec exited.
    fn finish(&self, code: i32, timed_out: bool, elapsed: Duration, ts: DateTime<Utc>) {
        let mut data = self.data();
        for (slot, stream) in [(0, OutputStream::Stdout), (1, OutputStream::Stderr)] {
            let rest = std::mem::take(&mut data.carry[slot]);
            if !rest.is_empty() {
                // An incomplete sequence: never valid UTF-8 on its own.
                let text = String::from_utf8_lossy(&rest).into_owned();
                data.push_text(stream, text, Some(Bytes::from(rest)), ts);
            }
        }
        data.push_frame(FrameKind::Exit, code.to_string(), None, ts);
        data.exit = Some(ExitInfo {
            code,
            timed_out,
            duration_ms: u64::try_from(elapsed.as_millis())
                .unwrap_or(u64::MAX)
                .max(1),
            completed_at: ts,
        });
        self.publish(&data);
    }

    /// Stops the exec's task (its sandbox is gone) and releases waiters.
    pub(super) fn abort(&self) {
        if let Some(task) = self.task.lock().unwrap_or_else(|e| e.into_inner()).take() {
            task.abort();
        }
        self.progress.send_modify(|p| p.finished = true);
    }

    fn record(&self) -> ExecRecord {
        let data = self.data();
        ExecRecord {
            exec_id: self.id.to_string(),
            sandbox_id: self.sandbox_id.clone(),
            runtime: data
                .runtime
                .map(|r| r.as_str().to_string())
                .unwrap_or_default(),
            status: if data.exit.is_some() {
                "exited"
            } else {
                "running"
            }
            .to_string(),
            exit_code: data.exit.map(|e| e.code),
            command: data.command.clone(),
            stdout: data.stdout.clone(),
            stderr: data.stderr.clone(),
            output: format!("{}{}", data.stdout, data.stderr),
            duration_ms: data.exit.map(|e| e.duration_ms).unwrap_or(0),
            started_at: data.started_at,
            completed_at: data.exit.map(|e| e.completed_at),
            timed_out: data.exit.is_some_and(|e| e.timed_out),
            tty: data.tty,
        }
    }

    fn summary(&self) -> Option<Summary> {
        let data = self.data();
        let exit = data.exit?;
        Some(Summary {
            runtime: data
                .runtime
                .map(|r| r.as_str().to_string())
                .unwrap_or_default(),
            exit_code: exit.code,
            stdout: data.stdout.clone(),
            stderr: data.stderr.clone(),
            duration_ms: exit.duration_ms,
            started_at: data.started_at,
            completed_at: exit.completed_at,
            syntax_error: data.syntax_error,
        })
    }

    /// Frames from the absolute `cursor` on (clamped to the count).
    pub(super) fn frames_from(&self, cursor: u64) -> (Vec<Frame>, u64, bool) {
        let (frames, next, has_more) = self.output_from(cursor);
        (
            frames.into_iter().map(|f| f.frame).collect(),
            next,
            has_more,
        )
    }

    /// [`Exec::frames_from`] with each frame's exact bytes and watermark.
    pub(super) fn output_from(&self, cursor: u64) -> (Vec<OutputFrame>, u64, bool) {
        let data = self.data();
        let total = data.total();
        let start = cursor.min(total).max(data.dropped);
        let from = (start - data.dropped) as usize;
        let to = from
            .saturating_add(MAX_FRAMES_PER_RESPONSE)
            .min(data.frames.len());
        let frames = data
            .frames
            .range(from..to)
            .zip(data.raw.range(from..to))
            .zip(start + 1..)
            .map(|((frame, raw), watermark)| OutputFrame {
                frame: frame.clone(),
                raw: raw.clone(),
                watermark,
            })
            .collect();
        let next = data.dropped + to as u64;
        let has_more = !(data.exit.is_some() && next == total);
        (frames, next, has_more)
    }
}

/// How a job ended, before the exit frame is written.
enum Ended {
    Exit(ExecExit),
    SyntaxError { message: String, exit_code: i32 },
}

/// Runs `job` while moving the output it sends into `sink`; returns the job's result once
/// it is done and all the output it buffered has been moved.
pub(super) async fn pump<T>(
    job: impl Future<Output = T>,
    mut output: mpsc::Receiver<OutputChunk>,
    mut sink: impl FnMut(OutputChunk),
) -> T {
    tokio::pin!(job);
    let result = loop {
        tokio::select! {
            biased;
            chunk = output.recv() => match chunk {
                Some(chunk) => sink(chunk),
                None => break (&mut job).await,
            },
            result = &mut job => break result,
        }
    };
    while let Ok(chunk) = output.try_recv() {
        sink(chunk);
    }
    result
}

/// Labels of the exec metrics.
struct ExecLabels {
    worker_id: String,
    cpu: String,
}

async fn run_exec(
    exec: Arc<Exec>,
    job: impl Future<Output = Result<Ended, BackendError>>,
    output: mpsc::Receiver<OutputChunk>,
    clock: Arc<dyn Clock>,
    metrics: Arc<Metrics>,
    labels: ExecLabels,
) {
    let started = Instant::now();
    let result = pump(job, output, |chunk| exec.push_chunk(chunk, clock.now())).await;
    let (code, timed_out) = match result {
        Ok(Ended::Exit(exit)) => (exit.exit_code, exit.timed_out),
        Ok(Ended::SyntaxError { message, exit_code }) => {
            exec.mark_syntax_error();
            exec.push_text(OutputStream::Stderr, message, clock.now());
            (exit_code, false)
        }
        Err(error) => {
            if error.is_request_fault() {
                exec.data().request_fault = Some(error.to_string());
            }
            tracing::warn!(
                worker_id = %labels.worker_id,
                sandbox_id = %exec.sandbox_id,
                exec_id = %exec.id,
                error = %error,
                "exec failed to run"
            );
            exec.push_text(OutputStream::Stderr, format!("{error}\n"), clock.now());
            (BACKEND_ERROR_EXIT_CODE, false)
        }
    };
    let elapsed = started.elapsed();
    exec.finish(code, timed_out, elapsed, clock.now());
    metrics.worker.exec_duration.observe(
        &WorkerCpuLabels {
            worker_id: &labels.worker_id,
            cpu: &labels.cpu,
        },
        elapsed.as_secs_f64(),
    );
}

/// `timeout_ms` ≤ 0 means `default`; longer than a day is a day.
fn timeout_from(ms: i64, default: Duration) -> Duration {
    if ms <= 0 {
        default
    } else {
        Duration::from_millis(ms as u64).min(MAX_TIMEOUT)
    }
}

fn check_cwd_env(cwd: &str, env: &BTreeMap<String, String>) -> Result<Option<String>, WorkerError> {
    if cwd.contains('\0') {
        return Err(WorkerError::InvalidExec("cwd must not contain NUL bytes"));
    }
    for (name, value) in env {
        if name.is_empty() || name.contains('=') || name.contains('\0') {
            return Err(WorkerError::InvalidExec(
                "env names must be non-empty, without '=' or NUL bytes",
            ));
        }
        if value.contains('\0') {
            return Err(WorkerError::InvalidExec(
                "env values must not contain NUL bytes",
            ));
        }
    }
    Ok((!cwd.is_empty()).then(|| cwd.to_string()))
}

/// Execs a listing returns when it names no limit.
pub const DEFAULT_EXEC_LIST_LIMIT: usize = 100;

/// A frame of an exec's output with what the frames API does not show: its exact bytes and
/// its position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputFrame {
    /// The frame (its data decoded as UTF-8, invalid bytes replaced).
    pub frame: Frame,
    /// Its exact bytes when they are not the UTF-8 of `frame.data`.
    pub raw: Option<Bytes>,
    /// Its position in the exec's output: the cursor just after it (1 for the first frame).
    pub watermark: u64,
}

impl OutputFrame {
    /// The frame's exact bytes.
    pub fn bytes(&self) -> &[u8] {
        match &self.raw {
            Some(raw) => raw,
            None => self.frame.data.as_bytes(),
        }
    }
}

/// The frames of one exec from a cursor on, as they are appended: what a streaming shell
/// (Server-Sent Events, WebSocket) sends. Ends after the exit frame, or when the exec was
/// abandoned with its sandbox.
pub struct FrameStream {
    exec: Arc<Exec>,
    progress: watch::Receiver<Progress>,
    cursor: u64,
    ready: VecDeque<OutputFrame>,
    done: bool,
}

impl FrameStream {
    /// Moves the stream to the absolute `cursor` (frames already read and not returned are
    /// dropped).
    pub(super) fn seek(&mut self, cursor: u64) {
        self.ready.clear();
        self.cursor = cursor;
        self.done = false;
    }

    /// The absolute cursor of the next frame this stream returns.
    pub fn position(&self) -> u64 {
        self.ready
            .front()
            .map(|f| f.watermark - 1)
            .unwrap_or(self.cursor)
    }

    /// The next frame and the cursor just after it; `None` once the stream has ended.
    pub async fn next(&mut self) -> Option<(Frame, u64)> {
        self.next_output().await.map(|f| (f.frame, f.watermark))
    }

    /// The next frame with its exact bytes; `None` once the stream has ended.
    pub async fn next_output(&mut self) -> Option<OutputFrame> {
        loop {
            if let Some(next) = self.ready.pop_front() {
                return Some(next);
            }
            if self.done {
                return None;
            }
            let (frames, next, has_more) = self.exec.output_from(self.cursor);
            self.ready.extend(frames);
            self.cursor = next;
            self.done = !has_more;
            if !self.ready.is_empty() || self.done {
                continue;
            }
            let cursor = self.cursor;
            // No lock held: the watch channel wakes this call on every new frame.
            let progress = self
                .progress
                .wait_for(|p| p.total > cursor || p.finished)
                .await
                .ok()
                .map(|p| *p);
            match progress {
                Some(p) if p.total > cursor => {}
                // Finished without a new frame: abandoned with its sandbox.
                _ => return None,
            }
        }
    }
}

impl Worker {
    /// Registers an exec on the sandbox and spawns `job` for it.
    #[allow(clippy::too_many_arguments)]
    fn launch<F, Fut>(
        &self,
        principal: &Principal,
        id: &SandboxId,
        exec_id: ExecId,
        runtime: Option<Runtime>,
        (command, tty): (String, bool),
        received: Instant,
        job: F,
    ) -> Result<(Arc<Exec>, JoinHandle<()>), WorkerError>
    where
        F: FnOnce(Arc<dyn Vm>, mpsc::Sender<OutputChunk>) -> Fut,
        Fut: Future<Output = Result<Ended, BackendError>> + Send + 'static,
    {
        let now = self.clock.now();
        let (handle, cpu, tti, exec) = self.with_sandbox(principal, id, |entry| {
            let running = entry.execs.values().filter(|e| !e.is_exited()).count();
            if running >= MAX_RUNNING_EXECS_PER_SANDBOX {
                return Err(WorkerError::TooManyExecs(MAX_RUNNING_EXECS_PER_SANDBOX));
            }
            let exec = Exec::new(
                exec_id,
                id.to_string(),
                runtime,
                command,
                now,
                tty,
                entry.output.clone(),
            );
            let tti = (!entry.first_exec_seen).then(|| {
                entry.first_exec_seen = true;
                (now - entry.created_at).to_std().unwrap_or_default()
            });
            let cpu = entry.tuple.cpu.to_string();
            let (tx, rx) = mpsc::channel(OUTPUT_CHANNEL);
            let labels = ExecLabels {
                worker_id: self.config.worker_id.to_string(),
                cpu: cpu.clone(),
            };
            // Spawned under the lock: a delete that follows finds the task to abort.
            let handle = tokio::spawn(run_exec(
                exec.clone(),
                job(entry.vm.clone(), tx),
                rx,
                self.clock.clone(),
                self.metrics.clone(),
                labels,
            ));
            *exec.task.lock().unwrap_or_else(|e| e.into_inner()) = Some(handle.abort_handle());
            entry.execs.insert(exec_id, exec.clone());
            prune_execs(&mut entry.execs, &entry.output);
            Ok((handle, cpu, tti, exec))
        })??;
        let labels = WorkerCpuLabels {
            worker_id: self.config.worker_id.as_str(),
            cpu: &cpu,
        };
        if let Some(tti) = tti {
            self.metrics
                .worker
                .first_exec_tti
                .observe(&labels, tti.as_secs_f64());
        }
        self.metrics
            .worker
            .exec_start_duration
            .observe(&labels, received.elapsed().as_secs_f64());
        Ok((exec, handle))
    }

    pub(super) fn exec_command(
        &self,
        principal: &Principal,
        id: &SandboxId,
        request: ExecRequest,
    ) -> Result<ExecId, WorkerError> {
        let received = Instant::now();
        self.check_sandbox(principal, id)?;
        let (program, command) = match request.args {
            Some(args) if !args.is_empty() => {
                if args[0].is_empty() {
                    return Err(WorkerError::InvalidExec("args[0] must not be empty"));
                }
                if args.iter().any(|a| a.contains('\0')) {
                    return Err(WorkerError::InvalidExec("args must not contain NUL bytes"));
                }
                let command = args.join(" ");
                (Program::Argv(args), command)
            }
            _ => {
                let command = if request.command.is_empty() {
                    "true".to_string()
                } else {
                    request.command
                };
                if command.contains('\0') {
                    return Err(WorkerError::InvalidExec(
                        "command must not contain NUL bytes",
                    ));
                }
                (Program::Shell(command.clone()), command)
            }
        };
        let cwd = check_cwd_env(&request.cwd, &request.env)?;
        let stdin = match request.stdin.as_deref() {
            Some(data) => Some(Bytes::from(decode_encoded(
                data,
                &request.stdin_encoding,
                Encoding::Utf8,
            )?)),
            None => None,
        };
        let tty = match (request.tty, request.rows, request.cols) {
            (false, None, None) => None,
            (false, _, _) => return Err(WorkerError::InvalidExec("rows and cols need tty")),
            (true, Some(0), _) | (true, _, Some(0)) => {
                return Err(WorkerError::InvalidExec("rows and cols must be > 0"))
            }
            (true, rows, cols) => {
                let default = TerminalSize::default();
                Some(TerminalSize {
                    rows: rows.unwrap_or(default.rows),
                    cols: cols.unwrap_or(default.cols),
                })
            }
        };
        let mut env = request.env;
        if tty.is_some() {
            env.entry("TERM".to_string())
                .or_insert_with(|| DEFAULT_TERM.to_string());
        }
        let exec_id = ExecId::new();
        let spec = ExecSpec {
            program,
            cwd,
            env,
            stdin,
            timeout: timeout_from(request.timeout_ms, DEFAULT_EXEC_TIMEOUT),
            exec_id: Some(exec_id),
            interactive: request.interactive || tty.is_some(),
            tty,
        };
        let (exec, _task) = self.launch(
            principal,
            id,
            exec_id,
            None,
            (command, tty.is_some()),
            received,
            |vm, tx| async move { vm.exec(spec, tx).await.map(Ended::Exit) },
        )?;
        tracing::debug!(sandbox_id = %id, exec_id = %exec.id, "exec started");
        Ok(exec.id)
    }

    pub(super) async fn exec_code(
        &self,
        principal: &Principal,
        id: &SandboxId,
        request: RunCodeRequest,
    ) -> Result<RunCodeOutcome, WorkerError> {
        let received = Instant::now();
        self.check_sandbox(principal, id)?;
        let runtime = Runtime::parse(&request.runtime).ok_or(WorkerError::InvalidRuntime)?;
        if request.code.is_empty() {
            return Err(WorkerError::CodeRequired);
        }
        if request.code.len() > MAX_CODE_BYTES {
            return Err(WorkerError::CodeTooLarge);
        }
        let cwd = check_cwd_env(&request.cwd, &request.env)?;
        let spec = CodeSpec {
            runtime,
            code: request.code,
            cwd,
            env: request.env,
            timeout: timeout_from(request.timeout_ms, DEFAULT_CODE_TIMEOUT),
        };
        let (exec, task) = self.launch(
            principal,
            id,
            ExecId::new(),
            Some(runtime),
            (String::new(), false),
            received,
            |vm, tx| async move {
                vm.run_code(spec, tx).await.map(|outcome| match outcome {
                    CodeOutcome::Finished(exit) => Ended::Exit(exit),
                    CodeOutcome::SyntaxError { message, exit_code } => {
                        Ended::SyntaxError { message, exit_code }
                    }
                })
            },
        )?;
        if request.wait == Some(false) {
            return Ok(RunCodeOutcome::Accepted(exec.id));
        }
        let sandbox_id = id.to_string();
        let exec_id = exec.id.to_string();
        // Awaiting the handle does not tie the task to this call: if the client hangs up,
        // the code still runs to completion and its record stays readable.
        if let Err(error) = task.await {
            if error.is_cancelled() {
                return Err(WorkerError::SandboxNotFound);
            }
            return Err(WorkerError::Backend(BackendError::task("run-code", error)));
        }
        let summary = exec.summary().ok_or_else(|| {
            WorkerError::Backend(BackendError::task("run-code", "ended without exit"))
        })?;
        if let Some(message) = exec.data().request_fault.clone() {
            return Err(WorkerError::RunRefused(message));
        }
        if summary.syntax_error {
            return Ok(RunCodeOutcome::SyntaxError(SyntaxErrorBody {
                error: "syntax_error".to_string(),
                exec_id,
                runtime: summary.runtime,
                stdout: summary.stdout,
                stderr: summary.stderr,
                exit_code: summary.exit_code,
                status: "exited".to_string(),
                duration_ms: summary.duration_ms,
            }));
        }
        Ok(RunCodeOutcome::Finished(RunCodeResponse {
            exec_id,
            sandbox_id,
            runtime: summary.runtime,
            status: "exited".to_string(),
            output: format!("{}{}", summary.stdout, summary.stderr),
            stdout: summary.stdout,
            stderr: summary.stderr,
            exit_code: summary.exit_code,
            duration_ms: summary.duration_ms,
            started_at: summary.started_at,
            completed_at: summary.completed_at,
        }))
    }

    /// The exec `exec_id` of a sandbox the principal may use.
    pub(super) fn find_exec(
        &self,
        principal: &Principal,
        id: &SandboxId,
        exec_id: &ExecId,
    ) -> Result<Arc<Exec>, WorkerError> {
        self.with_sandbox(principal, id, |entry| entry.execs.get(exec_id).cloned())?
            .ok_or(WorkerError::ExecNotFound)
    }

    pub(super) fn exec_record(
        &self,
        principal: &Principal,
        id: &SandboxId,
        exec_id: &ExecId,
    ) -> Result<ExecRecord, WorkerError> {
        Ok(self.find_exec(principal, id, exec_id)?.record())
    }

    pub(super) async fn frames(
        &self,
        principal: &Principal,
        id: &SandboxId,
        exec_id: &ExecId,
        cursor: u64,
        wait: Option<Duration>,
    ) -> Result<FramesResponse, WorkerError> {
        let exec = self.find_exec(principal, id, exec_id)?;
        if let Some(wait) = wait {
            let limit = wait.min(MAX_FRAMES_WAIT);
            let mut progress = exec.progress.subscribe();
            let from = cursor.min(progress.borrow().total);
            // Not holding any lock: the watch channel wakes this call on every new frame.
            let _ =
                tokio::time::timeout(limit, progress.wait_for(|p| p.total > from || p.finished))
                    .await;
        }
        let (frames, next_cursor, has_more) = exec.frames_from(cursor);
        Ok(FramesResponse {
            frames,
            next_cursor,
            has_more,
            wait_applied: wait.is_some(),
        })
    }
}

impl Worker {
    /// Hands `control` to a running exec of the sandbox.
    pub(super) async fn control(
        &self,
        principal: &Principal,
        id: &SandboxId,
        exec_id: &ExecId,
        control: ExecControl,
    ) -> Result<(), WorkerError> {
        // One look at the state for both the exec and the VM (a stdin frame per keystroke).
        let (exec, vm) = self.with_sandbox(principal, id, |entry| {
            let exec = entry.execs.get(exec_id).cloned();
            (exec, entry.vm.clone())
        })?;
        let exec = exec.ok_or(WorkerError::ExecNotFound)?;
        let (exited, runtime, tty) = {
            let data = exec.data();
            (data.exit.is_some(), data.runtime, data.tty)
        };
        if runtime.is_some() {
            return Err(WorkerError::ExecNotControllable);
        }
        if exited {
            return Err(WorkerError::ExecExited);
        }
        if matches!(control, ExecControl::Resize(_)) && !tty {
            return Err(WorkerError::NotATerminal);
        }
        // The 202 of a start goes out before the backend has the command running, so a
        // control that follows at once may find it not running yet: retried briefly while the
        // worker's record says it runs.
        let deadline = Instant::now() + CONTROL_START_WAIT;
        let result = loop {
            match vm.control_exec(&exec.id, control.clone()).await {
                Err(BackendError::ExecNotRunning)
                    if !exec.is_exited() && Instant::now() < deadline =>
                {
                    let mut progress = exec.progress.subscribe();
                    let _ = tokio::time::timeout(CONTROL_RETRY, progress.wait_for(|p| p.finished))
                        .await;
                }
                other => break other,
            }
        };
        result.map_err(|error| match error {
            BackendError::ExecNotRunning => WorkerError::ExecExited,
            BackendError::StdinClosed => WorkerError::StdinClosed,
            BackendError::Unsupported(what) => WorkerError::Unsupported(what),
            other => WorkerError::Backend(other),
        })
    }

    /// The sandbox's execs: running first, then newest first, at most `limit`.
    pub(super) fn exec_list(
        &self,
        principal: &Principal,
        id: &SandboxId,
        limit: Option<usize>,
    ) -> Result<ExecList, WorkerError> {
        let limit = match limit {
            None => DEFAULT_EXEC_LIST_LIMIT,
            Some(0) => return Err(WorkerError::InvalidLimit),
            Some(n) => n.min(MAX_EXECS_PER_SANDBOX),
        };
        // Exec ids are ULIDs: reverse map order is newest first (to the millisecond).
        let execs: Vec<Arc<Exec>> = self.with_sandbox(principal, id, |entry| {
            entry.execs.values().rev().cloned().collect()
        })?;
        let mut records: Vec<ExecRecord> = execs.iter().map(|e| e.record()).collect();
        // Stable: ties of the same millisecond keep the ids' order.
        records.sort_by(|a, b| {
            (a.status != "running")
                .cmp(&(b.status != "running"))
                .then(b.started_at.cmp(&a.started_at))
        });
        records.truncate(limit);
        Ok(ExecList { execs: records })
    }

    /// The frames of an exec from `cursor` on, as they come.
    pub(super) fn frame_stream(
        &self,
        principal: &Principal,
        id: &SandboxId,
        exec_id: &ExecId,
        cursor: u64,
    ) -> Result<FrameStream, WorkerError> {
        let exec = self.find_exec(principal, id, exec_id)?;
        let progress = exec.progress.subscribe();
        Ok(FrameStream {
            exec,
            progress,
            cursor,
            ready: VecDeque::new(),
            done: false,
        })
    }
}

/// Forgets the oldest exited execs beyond [`MAX_EXECS_PER_SANDBOX`] and until the sandbox's
/// output budget has room for one more exec's whole output ([`ONE_EXEC_OUTPUT`]), so that
/// a new exec does not find it full while old exited execs keep theirs.
fn prune_execs(execs: &mut BTreeMap<ExecId, Arc<Exec>>, budget: &OutputBudget) {
    // Exec ids are ULIDs, so map order is start order: the oldest exited execs go first, until
    // both the count and the bytes retained by all execs are within bounds.
    let keep = budget
        .limit
        .saturating_sub(ONE_EXEC_OUTPUT.min(budget.limit));
    let exited: Vec<(ExecId, usize)> = execs
        .iter()
        .filter(|(_, e)| e.is_exited())
        .map(|(id, e)| (*id, e.retained_bytes()))
        .collect();
    let mut count = execs.len();
    let mut bytes = budget.used();
    for (id, size) in exited {
        if count <= MAX_EXECS_PER_SANDBOX && bytes <= keep {
            break;
        }
        execs.remove(&id);
        count -= 1;
        bytes = bytes.saturating_sub(size);
    }
}

#[cfg(test)]
mod unit {
    use super::*;

    fn budget(limit: usize) -> Arc<OutputBudget> {
        Arc::new(OutputBudget::new(limit))
    }

    fn new_exec(budget: &Arc<OutputBudget>) -> (ExecId, Arc<Exec>) {
        let id = ExecId::new();
        let exec = Exec::new(
            id,
            "sbx".into(),
            None,
            "cmd".into(),
            Utc::now(),
            false,
            budget.clone(),
        );
        (id, exec)
    }

    fn chunk(exec: &Exec, data: &'static [u8]) {
        exec.push_chunk(
            OutputChunk {
                stream: OutputStream::Stdout,
                data: bytes::Bytes::from_static(data),
            },
            Utc::now(),
        );
    }

    #[test]
    fn output_frames_keep_exact_bytes() {
        let budget = budget(MAX_OUTPUT_BYTES_PER_SANDBOX);
        let (_, exec) = new_exec(&budget);
        // Valid UTF-8, split inside a character: no exact copy needed.
        chunk(&exec, b"caf\xc3");
        chunk(&exec, b"\xa9\n");
        // Invalid bytes, one sequence cut at the end and completed wrongly by the next chunk.
        chunk(&exec, b"\xff\xfeok\xe2\x82");
        chunk(&exec, b"!");
        exec.finish(0, false, Duration::from_millis(1), Utc::now());
        let (frames, _, _) = exec.output_from(0);
        let texts: Vec<&str> = frames.iter().map(|f| f.frame.data.as_str()).collect();
        assert_eq!(
            texts,
            ["caf", "é\n", "\u{fffd}\u{fffd}ok", "\u{fffd}!", "0"]
        );
        let bytes: Vec<&[u8]> = frames.iter().map(OutputFrame::bytes).collect();
        assert_eq!(
            bytes,
            [
                &b"caf"[..],
                b"\xc3\xa9\n",
                b"\xff\xfeok",
                b"\xe2\x82!",
                b"0"
            ]
        );
        assert_eq!(
            frames.iter().map(|f| f.raw.is_some()).collect::<Vec<_>>(),
            [false, false, true, true, false]
        );
        assert_eq!(
            frames.iter().map(|f| f.watermark).collect::<Vec<_>>(),
            [1, 2, 3, 4, 5]
        );
        // The exact copies count against the budget, and are given back with the exec.
        let text_bytes: usize = frames.iter().map(|f| f.frame.data.len()).sum();
        assert!(budget.used() > text_bytes);
        drop(frames);
        drop(exec);
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn acks_forget_frames_but_the_newest() {
        let budget = budget(MAX_OUTPUT_BYTES_PER_SANDBOX);
        let (_, exec) = new_exec(&budget);
        for _ in 0..3 {
            chunk(&exec, b"abc");
        }
        exec.discard_before(2);
        let (frames, next, _) = exec.output_from(0);
        assert_eq!(frames.iter().map(|f| f.watermark).collect::<Vec<_>>(), [3]);
        assert_eq!(next, 3);
        exec.discard_before(10);
        assert_eq!(exec.output_from(0).0.len(), 1, "the newest frame stays");
        assert_eq!(exec.frame_count(), 3);
    }

    fn stdout(exec: &Exec, bytes: usize) {
        exec.push_chunk(
            OutputChunk {
                stream: OutputStream::Stdout,
                data: bytes::Bytes::from(vec![b'x'; bytes]),
            },
            Utc::now(),
        );
    }

    fn exec_with_output(
        budget: &Arc<OutputBudget>,
        bytes: usize,
        exited: bool,
    ) -> (ExecId, Arc<Exec>) {
        let (id, exec) = new_exec(budget);
        stdout(&exec, bytes);
        if exited {
            exec.finish(0, false, Duration::from_millis(1), Utc::now());
        }
        (id, exec)
    }

    #[test]
    fn exited_exec_output_is_bounded_per_sandbox() {
        let budget = budget(MAX_OUTPUT_BYTES_PER_SANDBOX);
        let mut execs = BTreeMap::new();
        // 40 exited execs of 1 MiB output each retain 2 MiB apiece (capture + frames).
        for _ in 0..40 {
            let (id, exec) = exec_with_output(&budget, 1 << 20, true);
            execs.insert(id, exec);
        }
        let (running_id, running) = exec_with_output(&budget, 1 << 20, false);
        execs.insert(running_id, running);
        prune_execs(&mut execs, &budget);
        assert!(budget.used() <= MAX_OUTPUT_BYTES_PER_SANDBOX);
        let held: usize = execs.values().map(|e| e.retained_bytes()).sum();
        assert_eq!(held, budget.used());
        assert!(execs.len() < 41, "nothing was pruned");
        assert!(execs.contains_key(&running_id), "a running exec was pruned");
        // The newest exited execs are the ones kept.
        let newest = *execs.keys().rfind(|id| **id != running_id).unwrap();
        assert!(execs.contains_key(&newest));
    }

    #[test]
    fn a_start_makes_room_for_its_whole_output() {
        let budget = budget(MAX_OUTPUT_BYTES_PER_SANDBOX);
        let mut execs = BTreeMap::new();
        // Exited execs filling the budget to just under its limit.
        for _ in 0..31 {
            let (id, exec) = exec_with_output(&budget, 1 << 20, true);
            execs.insert(id, exec);
        }
        assert!(budget.used() <= MAX_OUTPUT_BYTES_PER_SANDBOX);
        let (id, fresh) = new_exec(&budget);
        execs.insert(id, fresh.clone());
        prune_execs(&mut execs, &budget);
        assert!(budget.used() + ONE_EXEC_OUTPUT <= MAX_OUTPUT_BYTES_PER_SANDBOX);
        // So the new exec keeps all it prints, up to its own bounds.
        for _ in 0..8 {
            stdout(&fresh, 1 << 20);
        }
        assert_eq!(fresh.data().stdout.len(), MAX_CAPTURE_BYTES);
        assert_eq!(
            fresh.output_from(0).0.len(),
            8,
            "no frame of its own was dropped"
        );
    }

    /// Hardening I: the review's 40 concurrent execs printing 7 MB each grew the worker by
    /// 370 MB; running execs now share the sandbox's budget (scaled down here).
    #[test]
    fn running_execs_share_the_sandbox_budget() {
        const LIMIT: usize = 4 << 20;
        const CHUNK: usize = 64 << 10;
        let budget = budget(LIMIT);
        let execs: Vec<_> = (0..40).map(|_| new_exec(&budget).1).collect();
        for _ in 0..32 {
            for exec in &execs {
                stdout(exec, CHUNK);
            }
        }
        // 80 MiB printed; at most the budget plus each exec's newest frame is kept.
        assert!(
            budget.used() <= LIMIT + execs.len() * CHUNK,
            "{} bytes kept",
            budget.used()
        );
        for exec in &execs {
            let (frames, next, has_more) = exec.frames_from(0);
            assert!(!frames.is_empty(), "the newest output is kept");
            assert_eq!(next, 32);
            assert!(has_more);
        }
        // Everything goes back when the execs are forgotten.
        drop(execs);
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn utf8_split_across_chunks_is_kept() {
        let text = "héllo €𝄞";
        let bytes = text.as_bytes();
        for split in 0..=bytes.len() {
            let mut carry = Vec::new();
            let (mut out, raw) = decode_utf8(&mut carry, &bytes[..split]);
            assert_eq!(raw, None);
            out.push_str(&decode_utf8(&mut carry, &bytes[split..]).0);
            assert!(carry.is_empty(), "split {split}");
            assert_eq!(out, text, "split {split}");
        }
        let mut carry = Vec::new();
        let mut out = String::new();
        for b in bytes {
            out.push_str(&decode_utf8(&mut carry, std::slice::from_ref(b)).0);
        }
        assert_eq!(out, text);
    }

    #[test]
    fn invalid_utf8_becomes_replacement() {
        let mut carry = Vec::new();
        assert_eq!(
            decode_utf8(&mut carry, b"a\xffb"),
            (
                "a\u{fffd}b".to_string(),
                Some(Bytes::from_static(b"a\xffb"))
            )
        );
        assert!(carry.is_empty());
        assert_eq!(
            decode_utf8(&mut carry, b"x\xe2\x82"),
            ("x".to_string(), None)
        );
        assert_eq!(carry, b"\xe2\x82");
        // A carried prefix followed by a non-continuation byte is invalid, not swallowed.
        assert_eq!(
            decode_utf8(&mut carry, b"y"),
            (
                "\u{fffd}y".to_string(),
                Some(Bytes::from_static(b"\xe2\x82y"))
            )
        );
        assert!(carry.is_empty());
    }

    #[test]
    fn capture_is_capped_on_char_boundary() {
        let mut s = String::from("ab");
        assert_eq!(push_capped(&mut s, "cé", 4, usize::MAX), 1);
        assert_eq!(s, "abc");
        assert_eq!(push_capped(&mut s, "zzz", 4, usize::MAX), 1);
        assert_eq!(s, "abcz");
        // The sandbox's budget bounds it too.
        let mut s = String::new();
        assert_eq!(push_capped(&mut s, "hello", 100, 2), 2);
        assert_eq!(s, "he");
    }

    #[test]
    fn frame_log_is_bounded_and_cursors_stay_absolute() {
        let exec = Exec::new(
            ExecId::new(),
            "sbx".into(),
            None,
            "true".into(),
            Utc::now(),
            false,
            budget(MAX_OUTPUT_BYTES_PER_SANDBOX),
        );
        let ts = Utc::now();
        for i in 0..(MAX_FRAMES + 5) {
            exec.push_text(OutputStream::Stdout, format!("{i}\n"), ts);
        }
        let (frames, next, more) = exec.frames_from(0);
        assert_eq!(frames.len(), MAX_FRAMES_PER_RESPONSE);
        assert_eq!(frames[0].data, "5\n");
        assert_eq!(next, 5 + MAX_FRAMES_PER_RESPONSE as u64);
        assert!(more);
        exec.finish(0, false, Duration::from_millis(3), ts);
        let total = (MAX_FRAMES + 6) as u64;
        let (frames, next, more) = exec.frames_from(total - 1);
        assert_eq!(frames.len(), 1);
        assert_eq!(frames[0].kind, FrameKind::Exit);
        assert_eq!(next, total);
        assert!(!more);
        assert!(exec.record().stdout.len() <= MAX_CAPTURE_BYTES);
    }
}

#[cfg(test)]
mod properties {
    //! Property tests: an exec's frames paged with random cursors and page sizes, while output
    //! arrives, is dropped for the sandbox's budget and is acknowledged.

    use proptest::prelude::*;

    use super::*;

    fn new_exec(budget: &Arc<OutputBudget>) -> Arc<Exec> {
        Exec::new(
            ExecId::new(),
            "sbx".into(),
            None,
            "cmd".into(),
            Utc::now(),
            false,
            budget.clone(),
        )
    }

    /// The `i`-th frame's text: its number, then `len` bytes of filler.
    fn text(i: usize, len: usize) -> String {
        let mut text = format!("{i}:");
        text.extend(std::iter::repeat_n('x', len));
        text
    }

    fn output(exec: &Exec, stderr: bool, text: &str) {
        let stream = if stderr {
            OutputStream::Stderr
        } else {
            OutputStream::Stdout
        };
        exec.push_chunk(
            OutputChunk {
                stream,
                data: Bytes::copy_from_slice(text.as_bytes()),
            },
            Utc::now(),
        );
    }

    fn kind(stderr: bool) -> FrameKind {
        if stderr {
            FrameKind::Stderr
        } else {
            FrameKind::Stdout
        }
    }

    /// The watermark of the oldest frame kept (total + 1 when none is).
    fn oldest_kept(exec: &Exec) -> u64 {
        let (frames, next, _) = exec.output_from(0);
        frames.first().map_or(next + 1, |f| f.watermark)
    }

    #[derive(Debug, Clone)]
    enum Step {
        /// Output on stderr (or stdout), this many bytes after the frame's number.
        Output(bool, usize),
        /// The reader reads at its cursor and keeps the first n frames of the page.
        Read(usize),
        /// The reader acknowledges up to its cursor plus this much (maybe past the end).
        Ack(u64),
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            6 => (any::<bool>(), 0usize..40).prop_map(|(e, n)| Step::Output(e, n)),
            3 => (0usize..8).prop_map(Step::Read),
            1 => (0u64..6).prop_map(Step::Ack),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        /// With nothing dropped, a reader that keeps a random part of each page and goes on
        /// from there reads every frame exactly once, in order, the exit last; a page is at
        /// most [`MAX_FRAMES_PER_RESPONSE`] frames; a cursor at or past the end reads nothing.
        #[test]
        fn paging_reads_every_frame_once_in_order(
            count in prop_oneof![3 => 0usize..60, 1 => 900usize..2_600],
            keep in prop::collection::vec(prop_oneof![1 => 1usize..5, 1 => 1usize..1_200], 1..6),
            past in 0u64..5,
        ) {
            let exec = new_exec(&Arc::new(OutputBudget::new(MAX_OUTPUT_BYTES_PER_SANDBOX)));
            let mut all: Vec<(FrameKind, String)> = Vec::new();
            for i in 0..count {
                let stderr = i % 3 == 0;
                let text = text(i, i % 7);
                output(&exec, stderr, &text);
                all.push((kind(stderr), text));
                // While it runs, there is always more.
                if i % 97 == 0 {
                    prop_assert!(exec.frames_from(0).2);
                }
            }
            exec.finish(3, false, Duration::from_millis(1), Utc::now());
            all.push((FrameKind::Exit, "3".into()));
            let total = all.len() as u64;

            let mut read: Vec<(FrameKind, String)> = Vec::new();
            let mut cursor = 0u64;
            for round in 0.. {
                prop_assert!(round < 4 * all.len() + 10, "paging does not end");
                let (frames, next, has_more) = exec.frames_from(cursor);
                prop_assert!(frames.len() <= MAX_FRAMES_PER_RESPONSE);
                prop_assert_eq!(next, cursor + frames.len() as u64);
                prop_assert_eq!(has_more, next < total);
                let kept = keep[round % keep.len()].min(frames.len());
                read.extend(frames.iter().take(kept).map(|f| (f.kind, f.data.clone())));
                cursor += kept as u64;
                if !has_more && kept == frames.len() {
                    break;
                }
            }
            prop_assert_eq!(cursor, total);
            prop_assert_eq!(read, all);
            let (frames, next, has_more) = exec.frames_from(total + past);
            prop_assert!(frames.is_empty());
            prop_assert_eq!((next, has_more), (total, false));
        }

        /// With a small budget, acknowledgements and reads between outputs: every frame read
        /// is the one at its position, positions only grow, a page starts at the reader's
        /// cursor or at the oldest frame kept, the newest frame is always kept, the budget
        /// holds, and after the exit the reader reaches the end.
        #[test]
        fn paging_survives_drops_and_acks(
            limit in 16usize..600,
            steps in prop::collection::vec(step(), 1..120),
        ) {
            let budget = Arc::new(OutputBudget::new(limit));
            let exec = new_exec(&budget);
            let mut all: Vec<(FrameKind, String)> = Vec::new();
            let mut cursor = 0u64;
            let mut last_read = 0u64;
            let mut finished = false;
            let steps = steps.into_iter().map(Some).chain([None, Some(Step::Read(usize::MAX))]);
            for step in steps {
                match step {
                    Some(Step::Output(stderr, len)) => {
                        let text = text(all.len(), len);
                        output(&exec, stderr, &text);
                        all.push((kind(stderr), text));
                    }
                    Some(Step::Ack(ahead)) => exec.discard_before(cursor + ahead),
                    Some(Step::Read(keep)) => {
                        let total = all.len() as u64;
                        let oldest = oldest_kept(&exec);
                        let (frames, next, has_more) = exec.output_from(cursor);
                        prop_assert!(frames.len() <= MAX_FRAMES_PER_RESPONSE);
                        let start = cursor.min(total).max(oldest - 1);
                        for (i, frame) in frames.iter().enumerate() {
                            prop_assert_eq!(frame.watermark, start + 1 + i as u64);
                            let (kind, data) = &all[(frame.watermark - 1) as usize];
                            prop_assert_eq!((&frame.frame.kind, &frame.frame.data), (kind, data));
                        }
                        prop_assert_eq!(next, start + frames.len() as u64);
                        prop_assert_eq!(has_more, !(finished && next == total));
                        let kept = keep.min(frames.len());
                        if kept > 0 {
                            prop_assert!(frames[0].watermark > last_read, "a frame read twice");
                            last_read = frames[kept - 1].watermark;
                        }
                        cursor = match frames.get(kept) {
                            Some(unread) => unread.watermark - 1,
                            None => next,
                        };
                    }
                    None => {
                        exec.finish(0, false, Duration::from_millis(1), Utc::now());
                        all.push((FrameKind::Exit, "0".into()));
                        finished = true;
                    }
                }
                let total = all.len() as u64;
                prop_assert_eq!(exec.frame_count(), total);
                prop_assert_eq!(budget.used(), exec.retained_bytes());
                if let Some((_, newest)) = all.last() {
                    let (frames, _, _) = exec.output_from(total - 1);
                    prop_assert_eq!(frames.len(), 1, "the newest frame is gone");
                    prop_assert!(budget.used() <= limit + newest.len());
                }
            }
            prop_assert_eq!(cursor, all.len() as u64, "the reader did not reach the end");
            prop_assert_eq!(last_read, all.len() as u64, "the exit frame was not read");
        }
    }
}
