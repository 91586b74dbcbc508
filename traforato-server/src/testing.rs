//! A broker and a worker serving on loopback in this process, for end-to-end tests of clients
//! (the client and CLI crates use it) and for trying things out.
//!
//! The worker registers with the broker over HTTP (signed with internal tokens in prod mode)
//! and runs with the backends it is given, typically the `fake` test double.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use traforato_core::auth::{AuthConfig, ClientAuthenticator, InternalTokenSigner};
use traforato_core::backend::VmBackend;
use traforato_core::broker::{Broker, BrokerConfig};
use traforato_core::clock::{Clock, SystemClock};
use traforato_core::id::ComponentId;
use traforato_core::scheduler::LeastLoaded;
use traforato_core::telemetry::Metrics;
use traforato_core::worker::{BrokerLink, Worker, WorkerConfig};

use crate::link::HttpBrokerLink;
use crate::server::{shutdown_channel, ShutdownTrigger};
use crate::{serve_broker_with_auth, serve_worker_with_auth, BrokerAuth};

/// How long [`LocalStack::start`] waits for the worker to register.
const REGISTRATION_WAIT: Duration = Duration::from_secs(20);

/// A running broker (`broker_local`) and worker (`worker_local`) on `127.0.0.1:0`.
pub struct LocalStack {
    /// The broker's base URL, e.g. `http://127.0.0.1:41234`.
    pub broker_url: String,
    /// The worker's base URL.
    pub worker_url: String,
    /// The broker library object.
    pub broker: Arc<Broker>,
    /// The worker library object.
    pub worker: Arc<Worker>,
    trigger: ShutdownTrigger,
    tasks: Vec<JoinHandle<io::Result<()>>>,
    run: JoinHandle<()>,
}

impl LocalStack {
    /// Starts both services with `auth` (dev when its secret is empty), serving
    /// `default_virtualization` with `backends`, and returns once the worker has registered.
    pub async fn start(
        auth: &AuthConfig,
        default_virtualization: &str,
        backends: Vec<Arc<dyn VmBackend>>,
    ) -> io::Result<Self> {
        let prod = auth.mode().is_prod();
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let (trigger, shutdown) = shutdown_channel();

        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let broker_url = format!("http://{}", listener.local_addr()?);
        let broker = Arc::new(Broker::new(
            BrokerConfig {
                default_virtualization: default_virtualization.to_string(),
                prod_mode: prod,
                ..BrokerConfig::default()
            },
            clock.clone(),
            Arc::new(LeastLoaded),
            Arc::new(Metrics::new(prod)),
        ));
        let mut tasks = vec![tokio::spawn(serve_broker_with_auth(
            listener,
            broker.clone(),
            BrokerAuth::new(auth, clock.clone()),
            shutdown.clone().wait(),
        ))];

        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let worker_url = format!("http://{}", listener.local_addr()?);
        let config = WorkerConfig {
            broker_id: ComponentId::parse("broker_local").expect("valid id"),
            worker_id: ComponentId::parse("worker_local").expect("valid id"),
            hostname: "localhost".to_string(),
            advertise_url: worker_url.clone(),
            broker_public_url: Some(broker_url.clone()),
            hardware_sku: String::new(),
            total_cores: 8,
            total_memory_mib: 8192,
            max_live_sandboxes: 8,
            default_ttl: Duration::from_secs(30 * 60),
            max_ttl: Duration::from_secs(24 * 3600),
            default_virtualization: default_virtualization.to_string(),
            registration_heartbeat: Duration::from_millis(200),
            registration_jitter_percent: 0,
            reap_interval: Duration::from_secs(1),
            pre_pull: Vec::new(),
            auth_mode: auth.mode(),
        };
        let signer = InternalTokenSigner::new(auth, clock.clone());
        let link: Arc<dyn BrokerLink> =
            Arc::new(HttpBrokerLink::new(&broker_url).with_signer(signer));
        let worker = Worker::new(
            config,
            backends,
            clock.clone(),
            Arc::new(Metrics::new(prod)),
            Some(link),
        );
        tasks.push(tokio::spawn(serve_worker_with_auth(
            listener,
            worker.clone(),
            ClientAuthenticator::new(auth, clock),
            shutdown.clone().wait(),
        )));
        let run = tokio::spawn(worker.clone().run(shutdown.wait()));

        let stack = Self {
            broker_url,
            worker_url,
            broker,
            worker,
            trigger,
            tasks,
            run,
        };
        let deadline = tokio::time::Instant::now() + REGISTRATION_WAIT;
        while !stack.broker.is_worker_active("worker_local") {
            if tokio::time::Instant::now() >= deadline {
                stack.stop().await?;
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the worker did not register with the broker",
                ));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(stack)
    }

    /// Shuts both services down (the worker deregisters and destroys its sandboxes) and
    /// returns the first serving error, if any.
    pub async fn stop(self) -> io::Result<()> {
        self.trigger.trigger();
        let mut result = Ok(());
        for task in self.tasks {
            let served = task.await.map_err(io::Error::other).and_then(|r| r);
            if result.is_ok() {
                result = served;
            }
        }
        self.run.await.map_err(io::Error::other)?;
        result
    }
}
