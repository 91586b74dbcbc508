//! `traforato-dev`: a broker and a worker in one process, for development. Flags and
//! `TRAFORATO_DEV_*` variables (and an optional worker YAML) configure both.
//!
//! The worker talks to the broker in-process ([`InProcessBrokerLink`]): no HTTP hop (so no
//! internal tokens), no wait for the broker's health check. `--broker-control-url` is only
//! where clients are sent back on placement retries (default: derived from `--broker-listen`).
//!
//! With a JWT secret both services run in prod mode, each with its own replay cache: a client
//! token is good for one request at the broker and one at the worker.
//!
//! SIGUSR1 drains its worker (no new sandboxes, live ones run on), as `traforato-worker`'s.
//! `traforato-dev healthcheck` asks a running one of the same configuration for the broker's
//! and the worker's `/healthz` instead.

use std::process::ExitCode;
use std::sync::Arc;

use traforato_core::auth::ClientAuthenticator;
use traforato_core::broker::Broker;
use traforato_core::clock::SystemClock;
use traforato_core::scheduler::LeastLoaded;
use traforato_core::telemetry::Metrics;
use traforato_core::worker::{InProcessBrokerLink, Worker};
use traforato_server::backends::build_backends;
use traforato_server::broker::wait_for_worker;
use traforato_server::config::{
    bind_address, local_url, parse_or_exit, DevArgs, DevSettings, ServiceCommand,
    DEFAULT_BROKER_PORT, DEFAULT_WORKER_PORT,
};
use traforato_server::logging;
use traforato_server::server::{
    bind, drain_on_signal, ensure_open_file_limit, log_listen_exposure, run_to_exit,
    shutdown_on_signal,
};
use traforato_server::{serve_broker_with_auth, serve_worker_with_auth, BrokerAuth, ServeError};

fn main() -> ExitCode {
    // With the container backend, this binary is also each sandbox's init: that must happen
    // before any thread (the async runtime) exists.
    #[cfg(all(feature = "container", target_os = "linux"))]
    traforato_core::backend::container::init_main_if_requested();
    let args: DevArgs = parse_or_exit("dev");
    if let Some(ServiceCommand::Healthcheck(check)) = &args.command {
        let bases = DevSettings::load(&args).map(|settings| {
            vec![
                local_url(&settings.broker_listen, DEFAULT_BROKER_PORT, None),
                local_url(&settings.worker.listen, DEFAULT_WORKER_PORT, None),
            ]
        });
        return traforato_server::health::run("dev", bases, check);
    }
    run_to_exit("dev", run(args))
}

async fn run(args: DevArgs) -> Result<(), ServeError> {
    let settings = DevSettings::load(&args)?;
    logging::init("dev", &settings.worker.log)?;
    let clock = Arc::new(SystemClock);
    let mode = settings.auth.mode();
    let broker_auth = BrokerAuth::new(&settings.auth, clock.clone());
    traforato_server::broker::log_auth_warnings(&broker_auth);
    traforato_server::worker::log_auth_warnings(mode);
    let worker_auth = ClientAuthenticator::new(&settings.auth, clock.clone());
    let backends = build_backends(
        &settings.worker.virtualizations(),
        &settings.worker.container,
    )?;

    let allow_network = settings.worker.insecure_dev_mode_on_network;
    log_listen_exposure("broker", &settings.broker_listen, mode, allow_network);
    log_listen_exposure("worker", &settings.worker.listen, mode, allow_network);
    let broker_listener = bind(&bind_address(&settings.broker_listen)?).await?;
    let broker_port = broker_listener.local_addr().ok().map(|a| a.port());
    let broker_url = settings
        .worker
        .broker_control_url
        .clone()
        .unwrap_or_else(|| local_url(&settings.broker_listen, DEFAULT_BROKER_PORT, broker_port));
    let broker = Arc::new(Broker::new(
        settings.broker_config(),
        clock.clone(),
        Arc::new(LeastLoaded),
        Arc::new(Metrics::new(mode.is_prod())),
    ));

    let worker_listener = bind(&bind_address(&settings.worker.listen)?).await?;
    let worker_port = worker_listener.local_addr().ok().map(|a| a.port());
    let mut values = settings.worker.clone();
    values.broker_control_url = Some(broker_url.clone());
    let config = values.worker_config(worker_port);
    let open_files = ensure_open_file_limit(config.max_live_sandboxes)?;
    let worker_url = config.advertise_url.clone();
    // Never the secret: only the mode, issuer and audience.
    tracing::info!(
        auth_mode = mode.as_str(),
        jwt_issuer = %settings.auth.issuer,
        jwt_audience = %settings.auth.audience,
        broker_id = %config.broker_id,
        worker_id = %config.worker_id,
        broker_url = %broker_url,
        worker_url = %worker_url,
        default_virtualization = %config.default_virtualization,
        max_live_sandboxes = config.max_live_sandboxes,
        cpu_overcommit = config.capacity.cpu_overcommit,
        memory_overcommit = config.capacity.memory_overcommit,
        memory_high_watermark_mib = config.capacity.memory_high_watermark_mib,
        open_files,
        "dev environment configured"
    );
    let worker = Worker::new(
        config,
        backends,
        clock,
        Arc::new(Metrics::new(mode.is_prod())),
        Some(Arc::new(InProcessBrokerLink::new(broker.clone()))),
    );
    let (trigger, shutdown) = shutdown_on_signal();
    drain_on_signal(worker.clone());
    let sweeper = tokio::spawn(broker.clone().run_lease_sweeper(shutdown.clone().wait()));
    let background = tokio::spawn(worker.clone().run(shutdown.clone().wait()));
    // Announce once the worker is registered (in-process: at once), so that the first create
    // sent after the line finds it.
    let worker_id = worker.config().worker_id.to_string();
    let registered = tokio::select! {
        registered = wait_for_worker(&broker, &worker_id, std::time::Duration::from_secs(5)) => registered,
        // Ctrl-C while waiting: no complaint, the servers below stop at once.
        () = shutdown.clone().wait() => true,
    };
    if !registered {
        eprintln!(
            "traforato-dev: the worker has not registered after 5s (still cleaning up?); creates get 503 until it does"
        );
    }
    eprintln!(
        "traforato-dev: broker listening on {broker_url} (send creates there), worker on {worker_url}"
    );
    // The first server to stop (error or shutdown) stops the other.
    let broker_served = async {
        let result = serve_broker_with_auth(
            broker_listener,
            broker,
            broker_auth,
            shutdown.clone().wait(),
        )
        .await;
        trigger.trigger();
        result
    };
    let worker_served = async {
        let result = serve_worker_with_auth(
            worker_listener,
            worker,
            worker_auth,
            shutdown.clone().wait(),
        )
        .await;
        trigger.trigger();
        result
    };
    let (broker_result, worker_result) = tokio::join!(broker_served, worker_served);
    let _ = background.await;
    let _ = sweeper.await;
    broker_result.and(worker_result).map_err(ServeError::Serve)
}
