//! The drills' fleet: one broker and several workers on one machine, each worker in a
//! network namespace of its own with its own address on a bridge the harness makes
//! (`198.19.<k>.0/24`), its own state dir and cgroup parent; the real binaries, in prod mode.
//! Faults (`SIGKILL`, a broker restart, a link cut, a full state dir, a memory-tight cgroup)
//! and the leak census that every drill ends with.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use traforato_client::{BoxError, Client};
use traforato_core::auth::mint_client_token;
use traforato_core::clock::{Clock, SystemClock};

/// How long the harness waits for something that should happen soon.
pub const WAIT: Duration = Duration::from_secs(30);
/// The broker's worker lease in the drills (a worker missing heartbeats this long is dropped).
pub const LEASE: Duration = Duration::from_secs(4);
/// The workers' heartbeat in the drills.
const HEARTBEAT: &str = "1s";
/// The drills' clients give up on a request after this long (a cut-off worker's answer).
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(8);
/// The JWT secret of the drills' fleets.
const SECRET: &str = "drill-secret-0123456789abcdef0123456789";
const BROKER_PORT: u16 = 8080;
const WORKER_PORT: u16 = 8081;

/// Runs `program args`, returning stdout, or stderr and the status as the error.
pub fn sh(program: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{program}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{program} {args:?}: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// [`sh`] that must succeed.
pub fn must(program: &str, args: &[&str]) -> String {
    sh(program, args).unwrap_or_else(|e| panic!("{e}"))
}

/// Why the drills cannot run here, if they cannot.
pub fn unsupported() -> Option<&'static str> {
    if !rustix::process::geteuid().is_root() {
        return Some("needs root (namespaces, cgroups, the container backend; runs in CI as root)");
    }
    if sh("ip", &["-V"]).is_err() || sh("nsenter", &["--version"]).is_err() {
        return Some("needs ip (iproute2) and nsenter (util-linux)");
    }
    None
}

/// One of the fleet's server processes, its output in a log file.
struct Proc {
    child: std::process::Child,
    log: PathBuf,
}

impl Proc {
    fn spawn(program: &str, args: &[&str], log: &Path) -> Self {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let child = Command::new(program)
            .args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("TRAFORATO_JWT_SECRET", SECRET)
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {program}: {e}"));
        Self {
            child,
            log: log.to_path_buf(),
        }
    }

    fn pid(&self) -> i32 {
        i32::try_from(self.child.id()).unwrap()
    }

    fn signal(&self, signal: rustix::process::Signal) {
        let pid = rustix::process::Pid::from_raw(self.pid()).unwrap();
        let _ = rustix::process::kill_process(pid, signal);
    }

    /// SIGKILL: nothing of the process's shutdown runs.
    fn kill(mut self) {
        self.signal(rustix::process::Signal::KILL);
        let _ = self.child.wait();
    }

    /// SIGTERM and wait for the exit (SIGKILL after [`WAIT`]); whether it exited cleanly.
    fn stop(mut self) -> bool {
        self.signal(rustix::process::Signal::TERM);
        let deadline = Instant::now() + WAIT;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.success();
            }
            if Instant::now() > deadline {
                self.kill();
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The last lines of its log, for failure messages.
    fn tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }
}

/// One worker of the fleet: its namespace, address, files and (when running) process.
pub struct WorkerSlot {
    /// Its worker id (`drill_<tag>_w<n>`).
    pub id: String,
    /// Its address on the bridge.
    pub addr: Ipv4Addr,
    netns: String,
    /// The host side of its link (cut for a partition).
    host_link: String,
    yaml: PathBuf,
    /// Its state dir.
    pub state: PathBuf,
    /// Its cgroup parent (a name below each hierarchy's root).
    pub cgroup_parent: String,
    proc: Option<Proc>,
    /// How many times it was started (each start logs to its own file).
    starts: usize,
}

impl WorkerSlot {
    /// Its base URL.
    pub fn url(&self) -> String {
        format!("http://{}:{WORKER_PORT}", self.addr)
    }

    /// Its pid while running.
    pub fn pid(&self) -> Option<i32> {
        self.proc.as_ref().map(Proc::pid)
    }

    /// Names of the cgroups below its parent (sandboxes', spare inits'), in every hierarchy.
    pub fn cgroups(&self) -> BTreeSet<String> {
        cgroup_roots()
            .iter()
            .flat_map(|root| std::fs::read_dir(root.join(&self.cgroup_parent)).into_iter())
            .flatten()
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect()
    }

    /// Names of the sandbox directories in its state dir.
    pub fn sandbox_dirs(&self) -> BTreeSet<String> {
        std::fs::read_dir(&self.state)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|name| name != "images" && name != "cgroup-parents" && name != "lost+found")
            .collect()
    }
}

/// How a fleet is made.
#[derive(Clone, Debug)]
pub struct FleetSpec {
    /// Workers.
    pub workers: usize,
    /// Warm sandboxes of `host` each worker keeps ready (0: none).
    pub warm: u32,
    /// Extra YAML lines of every worker (top level).
    pub extra_yaml: String,
    /// Size of a tmpfs made for worker 0's state dir (a disk that can fill up).
    pub small_state_dir: Option<&'static str>,
}

impl Default for FleetSpec {
    fn default() -> Self {
        Self {
            workers: 3,
            warm: 1,
            extra_yaml: String::new(),
            small_state_dir: None,
        }
    }
}

/// A broker and its workers, torn down (and checked for leaks) by [`Fleet::finish`].
pub struct Fleet {
    /// A short random tag in every name the fleet makes.
    pub tag: String,
    dir: tempfile::TempDir,
    bridge: String,
    broker_addr: Ipv4Addr,
    broker: Option<Proc>,
    broker_starts: usize,
    /// The workers, in order.
    pub workers: Vec<WorkerSlot>,
    mounts: Vec<PathBuf>,
    torn_down: bool,
}

impl Fleet {
    /// Makes the network, starts the broker and the workers, and waits until every worker is
    /// registered (and its warm pool announced).
    pub async fn start(spec: FleetSpec) -> Self {
        let tag = format!("{:04x}", rand::random::<u16>());
        let used = must("ip", &["-o", "-4", "addr"]);
        let k = (0..=255u8)
            .map(|n| n.wrapping_add(rand::random::<u8>()))
            .find(|k| !used.contains(&format!("198.19.{k}.")))
            .expect("a free 198.19.k.0/24");
        let dir = tempfile::Builder::new()
            .prefix(&format!("drill-{tag}-"))
            .tempdir()
            .unwrap();
        let bridge = format!("drl{tag}br");
        let broker_addr = Ipv4Addr::new(198, 19, k, 1);
        let mut fleet = Fleet {
            tag: tag.clone(),
            dir,
            bridge: bridge.clone(),
            broker_addr,
            broker: None,
            broker_starts: 0,
            workers: Vec::new(),
            mounts: Vec::new(),
            torn_down: false,
        };
        must("ip", &["link", "add", &bridge, "type", "bridge"]);
        must(
            "ip",
            &["addr", "add", &format!("{broker_addr}/24"), "dev", &bridge],
        );
        must("ip", &["link", "set", &bridge, "up"]);
        for n in 0..spec.workers {
            let slot = fleet.make_worker(n, k, &spec);
            fleet.workers.push(slot);
        }
        fleet.start_broker();
        fleet.wait_broker_up().await;
        for n in 0..spec.workers {
            fleet.start_worker(n);
        }
        fleet.wait_registered(spec.workers).await;
        if spec.warm > 0 {
            let want = spec.warm as usize * spec.workers;
            fleet
                .wait_for("the warm pools to be announced", || async {
                    fleet.ready_hints().await >= want
                })
                .await;
        }
        fleet
    }

    fn make_worker(&mut self, n: usize, k: u8, spec: &FleetSpec) -> WorkerSlot {
        let tag = &self.tag;
        let netns = format!("drl{tag}w{n}");
        let host_link = format!("drl{tag}h{n}");
        let addr = Ipv4Addr::new(198, 19, k, 10 + u8::try_from(n).unwrap());
        must("ip", &["netns", "add", &netns]);
        must(
            "ip",
            &[
                "link", "add", &host_link, "type", "veth", "peer", "name", "eth0", "netns", &netns,
            ],
        );
        must("ip", &["link", "set", &host_link, "master", &self.bridge]);
        must("ip", &["link", "set", &host_link, "up"]);
        let in_ns = |args: &[&str]| {
            let mut all = vec!["netns", "exec", netns.as_str(), "ip"];
            all.extend_from_slice(args);
            must("ip", &all);
        };
        in_ns(&["addr", "add", &format!("{addr}/24"), "dev", "eth0"]);
        in_ns(&["link", "set", "eth0", "up"]);
        in_ns(&["link", "set", "lo", "up"]);

        let home = self.dir.path().join(format!("w{n}"));
        let state = home.join("state");
        std::fs::create_dir_all(&state).unwrap();
        if n == 0 {
            if let Some(size) = spec.small_state_dir {
                must(
                    "mount",
                    &[
                        "-t",
                        "tmpfs",
                        "-o",
                        &format!("size={size},nr_inodes=4096,mode=0711"),
                        "drill",
                        state.to_str().unwrap(),
                    ],
                );
                self.mounts.push(state.clone());
            }
        }
        let id = format!("drill_{tag}_w{n}");
        let cgroup_parent = format!("drill-{tag}-w{n}");
        let pre_pull = if spec.warm > 0 {
            "pre-pull:\n  images: [host]\n".to_string()
        } else {
            String::new()
        };
        let yaml = home.join("worker.yaml");
        std::fs::write(
            &yaml,
            format!(
                "worker-id: {id}\nhostname: drill-w{n}\n\
                 advertise-url: http://{addr}:{WORKER_PORT}\n\
                 broker-control-url: http://{broker}:{BROKER_PORT}\n\
                 registration-heartbeat: {HEARTBEAT}\nregistration-probe: 250ms\n\
                 {pre_pull}container:\n  state-dir: {state}\n  cgroup-parent: {cgroup_parent}\n\
                 images:\n  dir: none\n{extra}",
                broker = self.broker_addr,
                state = state.display(),
                extra = spec.extra_yaml,
            ),
        )
        .unwrap();
        WorkerSlot {
            id,
            addr,
            netns,
            host_link,
            yaml,
            state,
            cgroup_parent,
            proc: None,
            starts: 0,
        }
    }

    /// The broker's base URL.
    pub fn broker_url(&self) -> String {
        format!("http://{}:{BROKER_PORT}", self.broker_addr)
    }

    fn start_broker(&mut self) {
        self.broker_starts += 1;
        let log = self
            .dir
            .path()
            .join(format!("broker-{}.log", self.broker_starts));
        let listen = format!("{}:{BROKER_PORT}", self.broker_addr);
        let lease = format!("{}s", LEASE.as_secs());
        self.broker = Some(Proc::spawn(
            env!("CARGO_BIN_EXE_traforato-broker"),
            &[
                "--listen",
                &listen,
                "--worker-lease-ttl",
                &lease,
                "--worker-lease-sweep-interval",
                "250ms",
            ],
            &log,
        ));
    }

    async fn wait_broker_up(&self) {
        let url = format!("{}/healthz", self.broker_url());
        self.wait_for("the broker to answer", || async {
            reqwest::get(&url)
                .await
                .is_ok_and(|r| r.status().is_success())
        })
        .await;
    }

    /// Starts worker `n` (again) in its namespace.
    pub fn start_worker(&mut self, n: usize) {
        let slot = &mut self.workers[n];
        assert!(slot.proc.is_none(), "worker {n} runs already");
        slot.starts += 1;
        let log = self.dir.path().join(format!("w{n}-{}.log", slot.starts));
        let netns = format!("--net=/run/netns/{}", slot.netns);
        let listen = format!("{}:{WORKER_PORT}", slot.addr);
        slot.proc = Some(Proc::spawn(
            "nsenter",
            &[
                &netns,
                "--",
                env!("CARGO_BIN_EXE_traforato-worker"),
                "--file",
                slot.yaml.to_str().unwrap(),
                "--listen",
                &listen,
            ],
            &log,
        ));
    }

    /// Drains worker `n` (SIGUSR1): no new sandboxes, its warm pool goes.
    pub fn drain_worker(&self, n: usize) {
        self.workers[n]
            .proc
            .as_ref()
            .expect("a running worker")
            .signal(rustix::process::Signal::USR1);
    }

    /// A gauge or counter of worker `n`'s `/metrics` (Prometheus name; its series summed).
    pub async fn worker_metric(&self, n: usize, name: &str) -> Option<f64> {
        let text = reqwest::get(format!("{}/metrics", self.workers[n].url()))
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        let values: Vec<f64> = text
            .lines()
            .filter_map(|l| {
                let rest = l.strip_prefix(name)?;
                let value = match rest.strip_prefix('{') {
                    Some(labelled) => labelled.split_once("} ")?.1,
                    None => rest.strip_prefix(' ')?,
                };
                value.trim().parse::<f64>().ok()
            })
            .collect();
        (!values.is_empty()).then(|| values.iter().sum())
    }

    /// Kills worker `n` with SIGKILL (a crash: its sandboxes are left behind).
    pub fn kill_worker(&mut self, n: usize) {
        self.workers[n]
            .proc
            .take()
            .expect("a running worker")
            .kill();
    }

    /// Kills the broker with SIGKILL and starts it again on the same address.
    pub async fn restart_broker(&mut self) {
        self.broker.take().expect("a running broker").kill();
        self.start_broker();
        self.wait_broker_up().await;
    }

    /// Cuts worker `n`'s link (its packets are dropped: a partition, not a refusal).
    pub fn partition(&self, n: usize) {
        must("ip", &["link", "set", &self.workers[n].host_link, "down"]);
    }

    /// Restores worker `n`'s link.
    pub fn heal(&self, n: usize) {
        must("ip", &["link", "set", &self.workers[n].host_link, "up"]);
    }

    /// The broker's availability text.
    pub async fn availability(&self) -> String {
        match reqwest::get(format!("{}/metrics/sandboxes", self.broker_url())).await {
            Ok(resp) => resp.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    }

    /// A `key=value` line of the availability text.
    pub async fn availability_value(&self, key: &str) -> usize {
        let text = self.availability().await;
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    /// Ready sandboxes the broker knows of (hints of active workers).
    pub async fn ready_hints(&self) -> usize {
        self.availability_value("available_sandboxes_total").await
    }

    /// Waits until the broker counts `n` active workers.
    pub async fn wait_registered(&self, n: usize) {
        self.wait_for(&format!("{n} active workers"), || async {
            self.availability_value("workers_active_total").await == n
        })
        .await;
    }

    /// Polls `check` every 50 ms until it holds; fails the drill (with the logs' tails) after
    /// [`WAIT`].
    pub async fn wait_for<F, Fut>(&self, what: &str, check: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        self.wait_within(what, WAIT, check).await;
    }

    /// [`Fleet::wait_for`] with a limit of its own.
    pub async fn wait_within<F, Fut>(&self, what: &str, within: Duration, mut check: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let deadline = Instant::now() + within;
        while !check().await {
            if Instant::now() > deadline {
                panic!("timed out waiting for {what}\n{}", self.log_tails());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The tails of the running processes' logs.
    pub fn log_tails(&self) -> String {
        let mut out = String::new();
        if let Some(broker) = &self.broker {
            out.push_str(&format!("--- broker\n{}\n", broker.tail()));
        }
        for slot in &self.workers {
            if let Some(proc) = &slot.proc {
                out.push_str(&format!("--- {}\n{}\n", slot.id, proc.tail()));
            }
        }
        out
    }

    /// A bearer token of `client_id`, for requests made without the client.
    pub fn token(&self, client_id: &str) -> String {
        mint_client_token(
            SECRET,
            client_id,
            "traforato",
            "traforato-api",
            Duration::from_secs(120),
            SystemClock.now(),
        )
    }

    /// A client of `client_id` (a fresh token per request and hop), with short connect and
    /// request timeouts so that a dead or cut-off worker is an error, not a hang.
    pub fn client(&self, client_id: &str) -> Client {
        let client_id = client_id.to_string();
        Client::builder(self.broker_url())
            .connect_timeout(Duration::from_secs(2))
            .timeout(CLIENT_TIMEOUT)
            .token_provider(move || -> Result<String, BoxError> {
                Ok(mint_client_token(
                    SECRET,
                    &client_id,
                    "traforato",
                    "traforato-api",
                    Duration::from_secs(120),
                    SystemClock.now(),
                ))
            })
            .build()
            .expect("a client")
    }

    /// Stops everything cleanly (SIGTERM: workers destroy their sandboxes), counts what is
    /// left of the fleet (it must be nothing), and removes the network.
    pub fn finish(mut self) -> Leaks {
        let clean = self.stop_all();
        // Before the teardown, which cleans up after failed drills: cgroups, processes,
        // directories, and the mounts the workers made (not the fleet's own).
        let mut leaks = self.census();
        leaks.mounts = self
            .mounts_left()
            .into_iter()
            .filter(|l| {
                let point = l.split(' ').nth(4).unwrap_or("");
                !l.contains("/run/netns/") && !self.mounts.iter().any(|m| m.as_os_str() == point)
            })
            .collect();
        self.teardown();
        // After it: the namespaces' mounts and anything else must be gone too.
        leaks.mounts.extend(self.mounts_left());
        leaks.links = self.network_left();
        assert!(clean.is_empty(), "did not stop cleanly: {clean:?}");
        leaks
    }

    /// SIGTERM to every process; the names of those that did not exit 0.
    fn stop_all(&mut self) -> Vec<String> {
        let mut unclean = Vec::new();
        for slot in &mut self.workers {
            if let Some(proc) = slot.proc.take() {
                let tail = proc.tail();
                if !proc.stop() {
                    unclean.push(format!("{}:\n{tail}", slot.id));
                }
            }
        }
        if let Some(broker) = self.broker.take() {
            if !broker.stop() {
                unclean.push("broker".to_string());
            }
        }
        unclean
    }

    /// What the fleet left behind (everything stopped): mounts below its dir, cgroups,
    /// processes in them, sandbox directories.
    fn census(&self) -> Leaks {
        let prefix = format!("drill-{}-", self.tag);
        let mut cgroups = Vec::new();
        for root in cgroup_roots() {
            for entry in std::fs::read_dir(&root).into_iter().flatten().flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.starts_with(&prefix) {
                    cgroups.push(entry.path().display().to_string());
                }
            }
        }
        let processes = processes_in_cgroups(&prefix);
        let dirs = self
            .workers
            .iter()
            .flat_map(|w| {
                w.sandbox_dirs()
                    .into_iter()
                    .map(|d| format!("{}/{d}", w.id))
            })
            .collect();
        Leaks {
            mounts: Vec::new(),
            cgroups,
            processes,
            dirs,
            links: Vec::new(),
        }
    }

    /// Mounts below the fleet's dir, and its network namespaces' (mountinfo lines).
    fn mounts_left(&self) -> Vec<String> {
        let dir = self.dir.path().to_string_lossy().into_owned();
        let netns = format!("drl{}", self.tag);
        std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(&dir) || l.contains(&format!("/run/netns/{netns}")))
            .map(str::to_string)
            .collect()
    }

    /// Removes the network and the fleet's own mounts (best effort; [`Drop`] calls it too).
    fn teardown(&mut self) {
        if self.torn_down {
            return;
        }
        self.torn_down = true;
        // Every namespace and link of the tag, made into a slot or not (a drill that failed
        // half-way through making a worker).
        let (namespaces, links) = self.tagged_network();
        for name in namespaces {
            let _ = sh("ip", &["netns", "delete", &name]);
        }
        for name in links {
            let _ = sh("ip", &["link", "delete", &name]);
        }
        // What a worker killed mid-drill left: its sandboxes' processes, then their mounts
        // (deepest first), then the cgroups (deepest first). A clean run has none of these.
        let prefix = format!("drill-{}-", self.tag);
        for pid in processes_in_cgroups(&prefix) {
            if let Some(pid) = rustix::process::Pid::from_raw(pid) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
        }
        let dir = self.dir.path().to_string_lossy().into_owned();
        let mut mounted: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
            .filter(|m| m.starts_with(&dir))
            .collect();
        mounted.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for mount in mounted {
            let _ = sh("umount", &["-l", &mount]);
        }
        self.mounts.clear();
        for root in cgroup_roots() {
            for entry in std::fs::read_dir(&root).into_iter().flatten().flatten() {
                if entry.file_name().to_string_lossy().starts_with(&prefix) {
                    remove_cgroup_tree(&entry.path());
                }
            }
        }
    }

    /// The names of the network namespaces and the links that carry the fleet's tag.
    fn tagged_network(&self) -> (Vec<String>, Vec<String>) {
        let needle = format!("drl{}", self.tag);
        let namespaces = sh("ip", &["netns", "list"])
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .filter(|name| name.starts_with(&needle))
            .map(str::to_string)
            .collect();
        let links = sh("ip", &["-o", "link"])
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split(": ").nth(1))
            .map(|name| name.split('@').next().unwrap_or(name))
            .filter(|name| name.starts_with(&needle))
            .map(str::to_string)
            .collect();
        (namespaces, links)
    }

    /// What of the network is left after teardown: namespaces and links with the tag.
    fn network_left(&self) -> Vec<String> {
        let (mut left, links) = self.tagged_network();
        left.extend(links);
        left
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        // A failed drill: stop what runs so that the next one starts clean, and keep the
        // logs (state dirs are emptied by the workers' stop).
        if !self.torn_down {
            let _ = self.stop_all();
            self.teardown();
        }
        if std::thread::panicking() {
            let kept = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap()).keep();
            eprintln!(
                "drill failed: the fleet's logs are kept in {}",
                kept.display()
            );
        }
    }
}

/// What a fleet left behind; every list must be empty.
#[derive(Debug, Default)]
pub struct Leaks {
    /// Mount points below the fleet's dir (or naming its tag).
    pub mounts: Vec<String>,
    /// Cgroup directories of the fleet's parents.
    pub cgroups: Vec<String>,
    /// Processes still in those cgroups.
    pub processes: Vec<i32>,
    /// Sandbox directories in the state dirs.
    pub dirs: Vec<String>,
    /// Links and network namespaces.
    pub links: Vec<String>,
}

impl Leaks {
    /// Fails the drill unless nothing leaked.
    pub fn assert_none(&self) {
        assert!(
            self.mounts.is_empty()
                && self.cgroups.is_empty()
                && self.processes.is_empty()
                && self.dirs.is_empty()
                && self.links.is_empty(),
            "leaks: {self:#?}"
        );
    }

    /// The counts, for the report.
    pub fn summary(&self) -> String {
        format!(
            "mounts {}, cgroups {}, processes {}, directories {}, links/namespaces {}",
            self.mounts.len(),
            self.cgroups.len(),
            self.processes.len(),
            self.dirs.len(),
            self.links.len()
        )
    }
}

/// Removes a cgroup directory and those below it, deepest first (best effort: a cgroup with
/// a process left stays).
fn remove_cgroup_tree(dir: &Path) {
    for child in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if child.file_type().is_ok_and(|t| t.is_dir()) {
            remove_cgroup_tree(&child.path());
        }
    }
    for _ in 0..50 {
        if std::fs::remove_dir(dir).is_ok() || !dir.exists() {
            return;
        }
        // Killed processes take a moment to leave.
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The roots of the cgroup hierarchies (v1: one per controller mount; v2: the one).
fn cgroup_roots() -> Vec<PathBuf> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(" - cgroup ") || l.contains(" - cgroup2 "))
        .filter_map(|l| l.split(' ').nth(4).map(PathBuf::from))
        .collect()
}

/// Pids of processes whose cgroup path has a component starting with `prefix`.
fn processes_in_cgroups(prefix: &str) -> Vec<i32> {
    let needle = format!("/{prefix}");
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
                .is_ok_and(|text| text.contains(&needle))
        })
        .collect()
}

/// A worker process's resources, for the soak: resident memory, open fds, threads.
#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    /// Resident set, KiB.
    pub rss_kib: u64,
    /// Open file descriptors.
    pub fds: u64,
    /// Threads.
    pub threads: u64,
}

/// [`Usage`] of process `pid`.
pub fn usage(pid: i32) -> Option<Usage> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    };
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64;
    Some(Usage {
        rss_kib: field("VmRSS:")?,
        fds,
        threads: field("Threads:")?,
    })
}
