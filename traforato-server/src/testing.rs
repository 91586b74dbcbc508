//! Brokers and workers serving on loopback in this process, for end-to-end tests (this crate's,
//! the client's and the CLI's) and for trying things out: [`TestBroker`], [`TestWorker`], and
//! [`LocalStack`], one of each with the worker registered.
//!
//! The worker registers with the broker over HTTP (signed with internal tokens in prod mode)
//! and runs with the backends it is given, typically the `fake` test double.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use traforato_core::auth::{AuthConfig, ClientAuthenticator, InternalTokenSigner};
use traforato_core::backend::VmBackend;
use traforato_core::broker::{Broker, BrokerConfig};
use traforato_core::clock::{Clock, SystemClock};
use traforato_core::scheduler::LeastLoaded;
use traforato_core::telemetry::Metrics;
use traforato_core::worker::{BrokerLink, Worker, WorkerConfig};

use crate::link::HttpBrokerLink;
use crate::server::{shutdown_channel, ShutdownTrigger};
use crate::{serve_broker_with_auth, serve_worker_with_auth, BrokerAuth};

/// How long [`LocalStack::registered`] waits for the worker to register.
const REGISTRATION_WAIT: Duration = Duration::from_secs(20);

/// A broker serving HTTP (the default scheduler) until [`TestBroker::stop`].
pub struct TestBroker {
    /// Its address.
    pub addr: SocketAddr,
    /// Its base URL, e.g. `http://127.0.0.1:41234`.
    pub url: String,
    /// The broker library object.
    pub broker: Arc<Broker>,
    trigger: ShutdownTrigger,
    task: JoinHandle<io::Result<()>>,
}

impl TestBroker {
    /// Serves a broker of `config` on `127.0.0.1:0`, reading time from `clock` and checking
    /// tokens as `auth` says (dev when its secret is empty).
    pub async fn start(
        config: BrokerConfig,
        clock: Arc<dyn Clock>,
        auth: &AuthConfig,
    ) -> io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        Self::serve(listener, config, clock, auth)
    }

    /// As [`TestBroker::start`], on `listener` (a restart on the same address, say).
    pub fn serve(
        listener: TcpListener,
        config: BrokerConfig,
        clock: Arc<dyn Clock>,
        auth: &AuthConfig,
    ) -> io::Result<Self> {
        let addr = listener.local_addr()?;
        let broker = Arc::new(Broker::new(
            config,
            clock.clone(),
            Arc::new(LeastLoaded),
            Arc::new(Metrics::new(auth.mode().is_prod())),
        ));
        let (trigger, shutdown) = shutdown_channel();
        let task = tokio::spawn(serve_broker_with_auth(
            listener,
            broker.clone(),
            BrokerAuth::new(auth, clock),
            shutdown.wait(),
        ));
        Ok(Self {
            addr,
            url: format!("http://{addr}"),
            broker,
            trigger,
            task,
        })
    }

    /// The URL of `path` (which starts with `/`) at this broker.
    pub fn at(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }

    /// Stops serving and returns the serving error, if any.
    pub async fn stop(self) -> io::Result<()> {
        self.trigger.trigger();
        self.task.await.map_err(io::Error::other)?
    }
}

/// A worker serving HTTP and running its background work (registration, warm pool, TTL
/// reaper) until [`TestWorker::stop`].
pub struct TestWorker {
    /// Its base URL, also its advertise URL.
    pub url: String,
    /// The worker library object.
    pub worker: Arc<Worker>,
    trigger: ShutdownTrigger,
    serve_task: JoinHandle<io::Result<()>>,
    run_task: JoinHandle<()>,
}

impl TestWorker {
    /// Binds `127.0.0.1:0`, then serves a worker of [`WorkerConfig::for_tests`] with that
    /// address as its advertise URL, `broker_url` as its broker's public URL and `auth`'s mode,
    /// as changed by `tweak`. The worker reaches `broker_url` over HTTP, its calls signed with
    /// internal tokens of `auth`; without a broker it stands alone.
    pub async fn start(
        broker_url: Option<&str>,
        auth: &AuthConfig,
        backends: Vec<Arc<dyn VmBackend>>,
        tweak: impl FnOnce(&mut WorkerConfig),
    ) -> io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let mut config = WorkerConfig {
            advertise_url: url.clone(),
            broker_public_url: broker_url.map(String::from),
            auth_mode: auth.mode(),
            ..WorkerConfig::for_tests()
        };
        tweak(&mut config);
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let link = broker_url.map(|broker_url| {
            let signer = InternalTokenSigner::new(auth, clock.clone());
            Arc::new(HttpBrokerLink::new(broker_url).with_signer(signer)) as Arc<dyn BrokerLink>
        });
        let worker = Worker::new(
            config,
            backends,
            clock.clone(),
            Arc::new(Metrics::new(auth.mode().is_prod())),
            link,
        );
        let (trigger, shutdown) = shutdown_channel();
        let serve_task = tokio::spawn(serve_worker_with_auth(
            listener,
            worker.clone(),
            ClientAuthenticator::new(auth, clock),
            shutdown.clone().wait(),
        ));
        let run_task = tokio::spawn(worker.clone().run(shutdown.wait()));
        Ok(Self {
            url,
            worker,
            trigger,
            serve_task,
            run_task,
        })
    }

    /// The URL of `path` (which starts with `/`) at this worker.
    pub fn at(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }

    /// Stops serving and its background work (it deregisters and destroys its sandboxes),
    /// and returns the serving error, if any.
    pub async fn stop(self) -> io::Result<()> {
        self.trigger.trigger();
        let served = self.serve_task.await.map_err(io::Error::other)?;
        self.run_task.await.map_err(io::Error::other)?;
        served
    }
}

/// A broker (`broker_local`) and a worker (`worker_local`) on `127.0.0.1:0`, the worker
/// registered with the broker.
pub struct LocalStack {
    /// The broker.
    pub broker: TestBroker,
    /// The worker.
    pub worker: TestWorker,
}

impl LocalStack {
    /// Starts both services with `auth` (dev when its secret is empty), serving
    /// `default_virtualization` with `backends`, and returns once the worker has registered.
    pub async fn start(
        auth: &AuthConfig,
        default_virtualization: &str,
        backends: Vec<Arc<dyn VmBackend>>,
    ) -> io::Result<Self> {
        let broker = BrokerConfig {
            default_virtualization: default_virtualization.to_string(),
            ..BrokerConfig::default()
        };
        Self::start_with(broker, auth, backends, |worker| {
            worker.default_virtualization = default_virtualization.to_string();
        })
        .await
    }

    /// Starts a broker of `broker` (prod when `auth` has a secret) and a worker as
    /// [`TestWorker::start`] makes it, and returns once the worker has registered.
    pub async fn start_with(
        broker: BrokerConfig,
        auth: &AuthConfig,
        backends: Vec<Arc<dyn VmBackend>>,
        tweak: impl FnOnce(&mut WorkerConfig),
    ) -> io::Result<Self> {
        let config = BrokerConfig {
            prod_mode: auth.mode().is_prod(),
            ..broker
        };
        let broker = TestBroker::start(config, Arc::new(SystemClock), auth).await?;
        match TestWorker::start(Some(&broker.url), auth, backends, tweak).await {
            Ok(worker) => Self::registered(broker, worker).await,
            Err(err) => {
                broker.stop().await?;
                Err(err)
            }
        }
    }

    /// Waits until `broker` counts `worker` as active; stops both and fails after 20 s.
    pub async fn registered(broker: TestBroker, worker: TestWorker) -> io::Result<Self> {
        let stack = Self { broker, worker };
        let worker_id = stack.worker.worker.config().worker_id.to_string();
        if !crate::broker::wait_for_worker(&stack.broker.broker, &worker_id, REGISTRATION_WAIT)
            .await
        {
            stack.stop().await?;
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the worker did not register with the broker",
            ));
        }
        Ok(stack)
    }

    /// Stops the worker (it deregisters and destroys its sandboxes), then the broker, and
    /// returns the first serving error, if any.
    pub async fn stop(self) -> io::Result<()> {
        let worker = self.worker.stop().await;
        let broker = self.broker.stop().await;
        worker.and(broker)
    }
}
