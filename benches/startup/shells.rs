//! The real HTTP shells, started in this process on `127.0.0.1:0`: one broker, and workers
//! linked to it in-process (as `traforato-dev` does), each over a shared sandbox backend.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use traforato_core::backend::container::ContainerBackend;
use traforato_core::backend::VmBackend;
use traforato_core::broker::{Broker, BrokerConfig};
use traforato_core::clock::SystemClock;
use traforato_core::id::ComponentId;
use traforato_core::scheduler::LeastLoaded;
use traforato_core::telemetry::Metrics;
use traforato_core::tuple::SandboxTuple;
use traforato_core::worker::{
    CapacityConfig, InProcessBrokerLink, PrePullTarget, Worker, WorkerConfig,
};
use traforato_server::server::{shutdown_channel, ShutdownTrigger};
use traforato_server::{serve_broker, serve_worker};

/// The virtualization under test.
pub const VIRTUALIZATION: &str = "container";

/// A broker serving HTTP.
pub struct BrokerShell {
    /// The broker itself, to look at its state.
    pub broker: Arc<Broker>,
    /// Its address.
    pub addr: SocketAddr,
    /// `http://<addr>`.
    pub url: String,
    trigger: ShutdownTrigger,
    served: JoinHandle<io::Result<()>>,
}

impl BrokerShell {
    /// Starts a dev-mode broker with the default scheduler on a free loopback port.
    pub async fn start() -> io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let broker = Arc::new(Broker::new(
            BrokerConfig {
                default_virtualization: VIRTUALIZATION.to_string(),
                ..BrokerConfig::default()
            },
            Arc::new(SystemClock),
            Arc::new(LeastLoaded),
            Arc::new(Metrics::new(false)),
        ));
        let (trigger, shutdown) = shutdown_channel();
        let served = tokio::spawn(serve_broker(listener, broker.clone(), shutdown.wait()));
        Ok(Self {
            broker,
            addr,
            url: format!("http://{addr}"),
            trigger,
            served,
        })
    }

    /// How many ready sandboxes of `tuple` the broker can hint at.
    pub fn hints(&self, tuple: &SandboxTuple) -> usize {
        let row = format!("{}\t{}\t{}\t", tuple.virtualization, tuple.image, tuple.cpu);
        self.broker
            .availability_text()
            .lines()
            .find_map(|line| line.strip_prefix(row.as_str()))
            .and_then(|count| count.trim().parse().ok())
            .unwrap_or(0)
    }

    /// Stops serving.
    pub async fn stop(self) -> io::Result<()> {
        self.trigger.trigger();
        self.served.await.map_err(io::Error::other)?
    }
}

/// A worker serving HTTP and running its background work.
pub struct WorkerShell {
    /// The worker itself, to look at its state.
    pub worker: Arc<Worker>,
    trigger: ShutdownTrigger,
    served: JoinHandle<io::Result<()>>,
    running: JoinHandle<()>,
}

/// What a worker of the benchmark looks like.
pub struct WorkerSpec<'a> {
    /// Its id.
    pub id: &'a str,
    /// Warm-pool floors.
    pub pre_pull: Vec<PrePullTarget>,
    /// Most sandboxes (live + ready) at once; one cpu each.
    pub max_live: u32,
    /// `None`: `max_live` cores, each sandbox reserving one. `Some`: the host's cores and 1 GiB
    /// of memory per core, counted with this capacity model (as a deployed worker does).
    pub capacity: Option<CapacityConfig>,
}

impl WorkerShell {
    /// Starts a worker over `backend`, registered with `broker`, and waits until the broker
    /// sees it active.
    pub async fn start(
        broker: &BrokerShell,
        backend: Arc<dyn VmBackend>,
        spec: WorkerSpec<'_>,
    ) -> io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let id = ComponentId::parse(spec.id).map_err(io::Error::other)?;
        let (total_cores, total_memory_mib, capacity) = match spec.capacity {
            None => (
                spec.max_live,
                u64::from(spec.max_live) * 512,
                CapacityConfig::default(),
            ),
            Some(capacity) => (cores(), u64::from(cores()) * 1024, capacity),
        };
        let config = WorkerConfig {
            broker_id: broker.broker.config().broker_id.clone(),
            worker_id: id,
            advertise_url: format!("http://{addr}"),
            broker_public_url: Some(broker.url.clone()),
            total_cores,
            total_memory_mib,
            max_live_sandboxes: spec.max_live,
            capacity,
            default_ttl: Duration::from_secs(600),
            max_ttl: Duration::from_secs(3600),
            default_virtualization: VIRTUALIZATION.to_string(),
            // Long, so that no heartbeat (and no VM start it would fetch) lands mid-sample.
            registration_heartbeat: Duration::from_secs(60),
            reap_interval: Duration::from_secs(30),
            pre_pull: spec.pre_pull,
            ..WorkerConfig::for_tests()
        };
        let worker = Worker::new(
            config,
            vec![backend],
            Arc::new(SystemClock),
            Arc::new(Metrics::new(false)),
            Some(Arc::new(InProcessBrokerLink::new(broker.broker.clone()))),
        );
        let (trigger, shutdown) = shutdown_channel();
        let served = tokio::spawn(serve_worker(
            listener,
            worker.clone(),
            shutdown.clone().wait(),
        ));
        let running = tokio::spawn(worker.clone().run(shutdown.wait()));
        let shell = Self {
            worker,
            trigger,
            served,
            running,
        };
        let id = spec.id;
        if let Err(error) = wait_for(Duration::from_secs(30), || {
            broker.broker.is_worker_active(id)
        })
        .await
        {
            shell.stop().await?;
            return Err(io::Error::other(format!(
                "worker {id} did not register: {error}"
            )));
        }
        Ok(shell)
    }

    /// Ready sandboxes of `tuple` on this worker.
    pub fn ready(&self, tuple: &SandboxTuple) -> usize {
        self.worker.ready_counts().get(tuple).copied().unwrap_or(0)
    }

    /// Stops: the worker deregisters and destroys every sandbox it has, then stops serving.
    pub async fn stop(self) -> io::Result<()> {
        self.trigger.trigger();
        self.running.await.map_err(io::Error::other)?;
        self.served.await.map_err(io::Error::other)?
    }
}

/// Waits until `container`'s spare inits are all up (cgroup v1; v2 has none), as on a
/// worker that has been running: a cold create takes one.
pub async fn spares_up(container: &ContainerBackend) -> io::Result<()> {
    if container.uses_cgroup_v2() {
        return Ok(());
    }
    let want = container.config().spare_inits;
    wait_for(Duration::from_secs(5), || {
        container.spare_inits_ready() >= want
    })
    .await
}

/// Polls `done` every millisecond until it holds or `timeout` passes.
pub async fn wait_for(timeout: Duration, mut done: impl FnMut() -> bool) -> io::Result<()> {
    let deadline = Instant::now() + timeout;
    while !done() {
        if Instant::now() > deadline {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "timed out"));
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Ok(())
}

/// The host's cores (1 when unknown).
pub fn cores() -> u32 {
    std::thread::available_parallelism().map_or(1, |n| u32::try_from(n.get()).unwrap_or(u32::MAX))
}
