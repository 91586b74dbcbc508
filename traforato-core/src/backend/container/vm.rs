//! One live container sandbox: the [`Vm`] implementation over its init (exec, run-code), its
//! root (files), its network namespace (connect), and its teardown.

use std::collections::BTreeMap;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use tokio::process::Child;
use tokio::sync::mpsc;

use super::agent::AgentConn;
use super::cgroup::{MemoryGauge, SandboxCgroup};
use super::code::{self, CodeRun};
use super::exec::{self, Command, RunningExecs};
use super::files::SandboxRoot;
use super::image::{ImageHold, RunDefaults};
use super::init::DEFAULT_PATH;
use super::net::{Attachment, Networking};
use super::netns;
use super::protocol::ExecUser;
use super::teardown_host;
use super::zygote::Zygote;
use crate::api::NetworkBytes;
use crate::backend::{
    BackendError, BoxedReader, BoxedStream, CodeOutcome, CodeSpec, ExecControl, ExecExit, ExecSpec,
    FileEntry, FileReader, FileStat, FilesError, OutputChunk, Program, Runtime, Vm, WriteMode,
};
use crate::id::{ExecId, LocalVmId};
use crate::network::{Egress, Policy};
use crate::path::SandboxPath;

/// Working directory when a request names none.
pub(crate) const DEFAULT_CWD: &str = "/workspace";

/// What ops need while the sandbox lives; cloned out of a short lock.
#[derive(Clone)]
struct Live {
    agent: Arc<AgentConn>,
    /// Host pid of the agent (to reach the sandbox's devpts) and the sandbox root's host uid.
    terminals: Option<(u32, u32)>,
    memory: Option<Arc<MemoryGauge>>,
    zygote: Option<Arc<Zygote>>,
    root: Arc<SandboxRoot>,
    netns: Arc<OwnedFd>,
}

/// What destroy tears down.
pub(crate) struct Teardown {
    /// The outer init, the worker's child.
    pub child: Child,
    /// The sandbox's cgroups.
    pub cgroup: SandboxCgroup,
    /// `<state_dir>/<vm_id>`.
    pub dir: PathBuf,
    /// The image's hold, released once the root is unmounted.
    pub hold: ImageHold,
}

/// A sandbox of the `container` backend.
pub struct ContainerVm {
    vm_id: LocalVmId,
    /// Shared with a zygote started late (see [`ContainerVm::with_lazy_zygote`]).
    live: Arc<Mutex<Option<Live>>>,
    /// The environment of a Python zygote to start after the first Python run.
    lazy_zygote: Mutex<Option<Vec<(String, String)>>>,
    /// Held for the whole destroy, so a concurrent destroy returns only when it is done.
    teardown: tokio::sync::Mutex<Option<Teardown>>,
    /// Running execs the worker may act on (stdin, signals).
    running: RunningExecs,
    /// The image's environment and working directory.
    defaults: RunDefaults,
    /// Provisioning waited for the image's pull.
    image_pulled: bool,
    /// The image's user, whom commands and runs use (not the zygote, not file operations).
    user: Option<ExecUser>,
    /// Egress plumbing, and this sandbox's part of it once it had egress.
    networking: Option<Arc<Networking>>,
    network: tokio::sync::Mutex<Option<Attachment>>,
    /// The host side of its veth pair, once it has one (read for its byte counts).
    host_if: Mutex<Option<String>>,
}

impl ContainerVm {
    pub(crate) fn new(
        vm_id: LocalVmId,
        agent: Arc<AgentConn>,
        zygote: Option<Zygote>,
        root: SandboxRoot,
        netns: OwnedFd,
        teardown: Teardown,
        terminals: Option<(u32, u32)>,
    ) -> Self {
        let memory = teardown.cgroup.memory_gauge().map(Arc::new);
        Self {
            vm_id,
            live: Arc::new(Mutex::new(Some(Live {
                agent,
                terminals,
                memory,
                zygote: zygote.map(Arc::new),
                root: Arc::new(root),
                netns: Arc::new(netns),
            }))),
            lazy_zygote: Mutex::new(None),
            teardown: tokio::sync::Mutex::new(Some(teardown)),
            running: RunningExecs::default(),
            defaults: RunDefaults::default(),
            image_pulled: false,
            user: None,
            networking: None,
            network: tokio::sync::Mutex::new(None),
            host_if: Mutex::new(None),
        }
    }

    /// Starts the Python zygote (with `env`) only after the first Python run has ended, so
    /// that it does not compete with that run for the CPU.
    pub(crate) fn with_lazy_zygote(self, env: Vec<(String, String)>) -> Self {
        *self.lazy_zygote.lock().expect("zygote lock") = Some(env);
        self
    }

    /// Starts the lazy zygote, if there is one still to start, in the background.
    fn start_lazy_zygote(&self, agent: Arc<AgentConn>) {
        let Some(env) = self.lazy_zygote.lock().expect("zygote lock").take() else {
            return;
        };
        let live = Arc::clone(&self.live);
        tokio::spawn(async move {
            match Zygote::start(&agent, env).await {
                // A sandbox destroyed meanwhile took the zygote with it.
                Ok(zygote) => {
                    if let Some(live) = live.lock().expect("live lock").as_mut() {
                        live.zygote = Some(Arc::new(zygote));
                    }
                }
                Err(e) => tracing::debug!(error = %e, "python zygote not started"),
            }
        });
    }

    /// The image's run defaults, and whether provisioning waited for its pull.
    pub(crate) fn with_defaults(mut self, defaults: RunDefaults, pulled: bool) -> Self {
        self.defaults = defaults;
        self.image_pulled = pulled;
        self
    }

    /// The user commands and code runs use (the image's), `None` for the sandbox's root.
    pub(crate) fn with_user(mut self, user: Option<ExecUser>) -> Self {
        self.user = user;
        self
    }

    /// The plumbing that gives it egress.
    pub(crate) fn with_networking(mut self, networking: Arc<Networking>) -> Self {
        self.networking = Some(networking);
        self
    }

    fn live(&self) -> Option<Live> {
        self.with_live(Live::clone)
    }

    /// `f` of what the sandbox has while it lives, under the lock.
    fn with_live<T>(&self, f: impl FnOnce(&Live) -> T) -> Option<T> {
        self.live.lock().expect("live lock").as_ref().map(f)
    }

    fn agent(&self) -> Result<Arc<AgentConn>, BackendError> {
        self.with_live(|l| l.agent.clone())
            .ok_or(BackendError::Gone)
    }

    fn root(&self) -> Result<Arc<SandboxRoot>, FilesError> {
        self.with_live(|l| l.root.clone()).ok_or(FilesError::Gone)
    }

    /// Takes on the network [`Networking::attach`] made for it while it booted.
    pub(crate) async fn adopt_network(
        &self,
        attachment: Attachment,
        resolv: String,
    ) -> Result<(), BackendError> {
        let mut attached = self.network.lock().await;
        self.install(&mut attached, attachment, resolv).await
    }

    /// Makes `attachment` the sandbox's network (`slot`: its network, locked): its resolver
    /// pointed at its forwarder, its interface known for the byte counts.
    async fn install(
        &self,
        slot: &mut Option<Attachment>,
        attachment: Attachment,
        resolv: String,
    ) -> Result<(), BackendError> {
        self.write_resolv_conf(resolv).await?;
        *self.host_if.lock().expect("host_if lock") = Some(attachment.host_if().to_string());
        *slot = Some(attachment);
        Ok(())
    }

    /// Points the sandbox's resolver at its DNS forwarder.
    async fn write_resolv_conf(&self, resolv: String) -> Result<(), BackendError> {
        let path = SandboxPath::parse("/etc/resolv.conf")
            .map_err(|e| BackendError::Setup(e.to_string()))?;
        // A line, written by the worker itself (one page, not worth the agent's round trip
        // that charges a bigger write to the sandbox).
        self.with_root(move |root| {
            let mut file = root.open_write(&path, WriteMode::Replace)?;
            std::io::Write::write_all(&mut file, resolv.as_bytes()).map_err(|source| {
                FilesError::Io {
                    op: "write".to_string(),
                    source,
                }
            })
        })
        .await
        .map_err(|e| BackendError::Setup(format!("write /etc/resolv.conf: {e}")))
    }

    /// Runs a blocking file operation on the sandbox root.
    async fn with_root<T: Send + 'static>(
        &self,
        op: impl FnOnce(&SandboxRoot) -> Result<T, FilesError> + Send + 'static,
    ) -> Result<T, FilesError> {
        let root = self.root()?;
        tokio::task::spawn_blocking(move || op(&root))
            .await
            .map_err(|e| FilesError::Io {
                op: "file task".to_string(),
                source: std::io::Error::other(e.to_string()),
            })?
    }
}

/// The part of a sandbox's id its host-side interface is named by (`tf<12 hex digits>`).
pub(crate) fn interface_id(vm_id: &LocalVmId) -> String {
    vm_id
        .to_string()
        .chars()
        .filter(char::is_ascii_hexdigit)
        .take(12)
        .collect()
}

impl Drop for ContainerVm {
    fn drop(&mut self) {
        let undestroyed = self.teardown.try_lock().ok().and_then(|mut t| t.take());
        if let Some(teardown) = undestroyed {
            // Closing the control socket ends the sandbox's processes; mounts and cgroups
            // stay until `cleanup_leftovers`, and so do the image's layers.
            tracing::warn!(vm_id = %self.vm_id, "container sandbox dropped without destroy");
            std::mem::forget(teardown.hold);
        }
    }
}

/// The base environment plus the request's (which wins). Nothing of the worker's own
/// environment reaches a sandbox.
pub(crate) fn environment(
    image: &BTreeMap<String, String>,
    extra: &BTreeMap<String, String>,
) -> Vec<(String, String)> {
    let mut env: BTreeMap<String, String> = [
        ("PATH", DEFAULT_PATH),
        ("HOME", "/root"),
        ("LANG", "C.UTF-8"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    env.extend(image.iter().map(|(k, v)| (k.clone(), v.clone())));
    env.extend(extra.iter().map(|(k, v)| (k.clone(), v.clone())));
    env.into_iter().collect()
}

/// The working directory a command asked for, else the image's, else `/workspace`.
fn cwd_or_default(cwd: &Option<String>, image: Option<&str>) -> String {
    match cwd.as_deref().map(str::trim) {
        Some(c) if !c.is_empty() => c.to_string(),
        _ => image.unwrap_or(DEFAULT_CWD).to_string(),
    }
}

#[async_trait]
impl Vm for ContainerVm {
    fn vm_id(&self) -> LocalVmId {
        self.vm_id
    }

    fn image_pulled(&self) -> bool {
        self.image_pulled
    }

    fn is_alive(&self) -> bool {
        self.with_live(|live| live.agent.is_alive())
            .unwrap_or(false)
    }

    async fn exec(
        &self,
        spec: ExecSpec,
        output: mpsc::Sender<OutputChunk>,
    ) -> Result<ExecExit, BackendError> {
        let live = self.live().ok_or(BackendError::Gone)?;
        let agent = live.agent;
        let terminal = match (spec.tty, live.terminals) {
            (None, _) => None,
            (Some(_), None) => return Err(BackendError::Unsupported("terminals")),
            (Some(size), Some((agent_pid, uid))) => Some(
                // The image's user owns its terminal (as login does), so that programs that
                // reopen it (`sudo`, password prompts) can.
                tokio::task::spawn_blocking({
                    let owner = self.user.map(|u| (uid + u.uid, uid + u.gid));
                    move || super::pty::open_terminal(agent_pid, uid, owner, size)
                })
                .await
                .map_err(|e| BackendError::task("terminal", e))?
                .map_err(|e| BackendError::io("open a terminal", e))?,
            ),
        };
        let argv = match spec.program {
            Program::Shell(line) => vec!["/bin/sh".to_string(), "-c".to_string(), line],
            Program::Argv(argv) => argv,
        };
        let command = Command {
            argv,
            env: environment(&self.defaults.env, &spec.env),
            cwd: cwd_or_default(&spec.cwd, self.defaults.working_dir.as_deref()),
            stdin: spec.stdin,
            timeout: spec.timeout,
            exec_id: spec.exec_id,
            interactive: spec.interactive || terminal.is_some(),
            terminal,
            user: self.user,
        };
        exec::run(&agent, &self.running, command, output).await
    }

    async fn control_exec(
        &self,
        exec_id: &ExecId,
        control: ExecControl,
    ) -> Result<(), BackendError> {
        let agent = self.agent()?;
        exec::control(&agent, &self.running, exec_id, control).await
    }

    async fn settle(&self) {
        let zygote = self.live().and_then(|live| live.zygote);
        if let Some(zygote) = zygote {
            zygote.settle().await;
        }
    }

    async fn run_code(
        &self,
        spec: CodeSpec,
        output: mpsc::Sender<OutputChunk>,
    ) -> Result<CodeOutcome, BackendError> {
        let live = self.live().ok_or(BackendError::Gone)?;
        let run = CodeRun {
            runtime: spec.runtime,
            code: Bytes::from(spec.code.into_bytes()),
            cwd: cwd_or_default(&spec.cwd, self.defaults.working_dir.as_deref()),
            env: environment(&self.defaults.env, &spec.env),
            timeout: spec.timeout,
            user: self.user,
        };
        let python = run.runtime == Runtime::Python;
        let outcome = code::run(&live.agent, live.zygote.as_deref(), run, output).await;
        if python {
            self.start_lazy_zygote(live.agent);
        }
        outcome
    }

    async fn read_file(&self, path: &SandboxPath) -> Result<FileReader, FilesError> {
        let path = path.clone();
        let (file, size) = self.with_root(move |root| root.open_read(&path)).await?;
        Ok(FileReader {
            size,
            body: Box::new(tokio::fs::File::from_std(file)),
        })
    }

    async fn write_file(
        &self,
        path: &SandboxPath,
        content: BoxedReader,
        mode: WriteMode,
    ) -> Result<u64, FilesError> {
        let target = path.clone();
        let file = self
            .with_root(move |root| root.open_write(&target, mode))
            .await?;
        // The bytes are written by a process of the sandbox, which pays for their pages, up
        // to the memory the sandbox has left.
        let live = self.live().ok_or(FilesError::Gone)?;
        let room = live.memory.as_deref().and_then(MemoryGauge::room);
        super::exec::copy_in(&live.agent, file.into(), content, room).await
    }

    async fn stat(&self, path: &SandboxPath) -> Result<Option<FileStat>, FilesError> {
        let path = path.clone();
        self.with_root(move |root| root.stat(&path)).await
    }

    async fn list_dir(
        &self,
        path: &SandboxPath,
        recursive: bool,
    ) -> Result<Vec<FileEntry>, FilesError> {
        let path = path.clone();
        self.with_root(move |root| root.list_dir(&path, recursive))
            .await
    }

    async fn mkdir(&self, path: &SandboxPath, recursive: bool) -> Result<bool, FilesError> {
        let path = path.clone();
        self.with_root(move |root| root.mkdir(&path, recursive))
            .await
    }

    async fn remove(&self, path: &SandboxPath, recursive: bool) -> Result<(), FilesError> {
        let path = path.clone();
        self.with_root(move |root| root.remove(&path, recursive))
            .await
    }

    async fn connect(&self, port: u16) -> Result<BoxedStream, BackendError> {
        let netns = self.live().map(|l| l.netns).ok_or(BackendError::Gone)?;
        let stream = netns::connect(netns, port).await?;
        Ok(Box::new(stream))
    }

    fn network_bytes(&self) -> Option<NetworkBytes> {
        let host_if = self.host_if.lock().expect("host_if lock").clone()?;
        let read = |counter: &str| -> Option<u64> {
            std::fs::read_to_string(format!("/sys/class/net/{host_if}/statistics/{counter}"))
                .ok()?
                .trim()
                .parse()
                .ok()
        };
        // The host end receives what the sandbox sends.
        Some(NetworkBytes {
            sent: read("rx_bytes")?,
            received: read("tx_bytes")?,
        })
    }

    async fn set_network(&self, policy: &Policy) -> Result<(), BackendError> {
        let mut attached = self.network.lock().await;
        if attached.is_none() {
            if policy.egress() == Egress::None {
                return Ok(());
            }
            let networking = self
                .networking
                .clone()
                .ok_or(BackendError::Unsupported("network egress"))?;
            let live = self.live().ok_or(BackendError::Gone)?;
            let (attachment, resolv) = networking
                .attach(live.netns, &interface_id(&self.vm_id), policy)
                .await?;
            // Attached with its policy already.
            return self.install(&mut attached, attachment, resolv).await;
        }
        attached
            .as_mut()
            .expect("attached above")
            .set_policy(policy)
            .await
    }

    async fn destroy(&self) -> Result<(), BackendError> {
        // Gone for new operations first (under the network lock, so that no change of policy
        // attaches it again), then its network is undone.
        let attachment = {
            let mut network = self.network.lock().await;
            self.live.lock().expect("live lock").take();
            network.take()
        };
        drop(attachment);
        let mut teardown = self.teardown.lock().await;
        let Some(Teardown {
            mut child,
            cgroup,
            dir,
            hold,
        }) = teardown.take()
        else {
            return Ok(());
        };
        // The agent dies with the outer init (parent-death signal) and takes the whole pid
        // namespace with it; the cgroup sweep below catches anything in between.
        let _ = child.start_kill();
        let _ = child.wait().await;
        // The hold goes with the teardown, which finishes even if this destroy is abandoned.
        tokio::task::spawn_blocking(move || {
            let result = teardown_host(&dir, Some(cgroup));
            release_after(hold, &result);
            result
        })
        .await
        .map_err(|e| BackendError::task("teardown", e))?
        .map_err(BackendError::Teardown)
    }
}

/// Releases an image hold once a root's teardown is over; a root that could not be removed
/// (it may still be mounted) keeps its image's layers from collection until the worker
/// restarts.
pub(crate) fn release_after<T, E: std::fmt::Display>(hold: ImageHold, teardown: &Result<T, E>) {
    if let Err(error) = teardown {
        tracing::warn!(%error, "a sandbox root was not removed: its image's layers stay in use");
        std::mem::forget(hold);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_is_base_plus_request() {
        let mut extra = BTreeMap::new();
        extra.insert("HOME".to_string(), "/workspace".to_string());
        extra.insert("A".to_string(), "1".to_string());
        let env = environment(&BTreeMap::new(), &extra);
        assert!(env.contains(&("HOME".to_string(), "/workspace".to_string())));
        assert!(env.contains(&("A".to_string(), "1".to_string())));
        assert!(env.contains(&("LANG".to_string(), "C.UTF-8".to_string())));
        assert_eq!(env.iter().filter(|(k, _)| k == "HOME").count(), 1);
    }

    #[test]
    fn cwd_defaults_to_workspace() {
        assert_eq!(cwd_or_default(&None, None), "/workspace");
        assert_eq!(cwd_or_default(&Some(" ".into()), None), "/workspace");
        assert_eq!(cwd_or_default(&Some("/tmp".into()), Some("/app")), "/tmp");
        assert_eq!(cwd_or_default(&None, Some("/app")), "/app");
    }
}
