//! `traforato-worker`: parses flags, `TRAFORATO_WORKER_*` variables and the worker YAML,
//! installs logging, builds the backends and the [`Worker`], binds its listener, and only then
//! starts the worker's background work (registration included) and serves it until SIGINT or
//! SIGTERM. On shutdown the worker deregisters and destroys its sandboxes; SIGUSR1 drains it
//! (no new sandboxes, live ones run on).
//! `traforato-worker healthcheck` asks a running worker of the same configuration for
//! `/healthz` instead.

use std::process::ExitCode;
use std::sync::Arc;

use traforato_core::auth::{ClientAuthenticator, InternalTokenSigner};
use traforato_core::clock::SystemClock;
use traforato_core::telemetry::Metrics;
use traforato_core::worker::{BrokerLink, Worker};
use traforato_server::backends::build_backends;
use traforato_server::config::{
    bind_address, local_url, parse_or_exit, ServiceCommand, WorkerArgs, WorkerSettings,
    DEFAULT_WORKER_PORT,
};
use traforato_server::link::HttpBrokerLink;
use traforato_server::logging;
use traforato_server::server::{
    bind, drain_on_signal, ensure_open_file_limit, log_listen_exposure, run_to_exit,
    shutdown_on_signal,
};
use traforato_server::worker::log_auth_warnings;
use traforato_server::{serve_worker_with_auth, ServeError};

fn main() -> ExitCode {
    // With the container backend, this binary is also each sandbox's init: that must happen
    // before any thread (the async runtime) exists.
    #[cfg(all(feature = "container", target_os = "linux"))]
    traforato_core::backend::container::init_main_if_requested();
    let args: WorkerArgs = parse_or_exit("worker");
    if let Some(ServiceCommand::Healthcheck(check)) = &args.command {
        let bases = WorkerSettings::load_worker(&args)
            .map(|values| vec![local_url(&values.listen, DEFAULT_WORKER_PORT, None)]);
        return traforato_server::health::run("worker", bases, check);
    }
    run_to_exit("worker", run(args))
}

async fn run(args: WorkerArgs) -> Result<(), ServeError> {
    let values = WorkerSettings::load_worker(&args)?;
    logging::init("worker", &values.log)?;
    let auth = args.auth.auth_config();
    let mode = auth.mode();
    log_auth_warnings(mode);
    let clock = Arc::new(SystemClock);
    let backends = build_backends(&values.virtualizations(), &values.container)?;

    // Bind before anything registers, so the broker never redirects to a dead port.
    log_listen_exposure(
        "worker",
        &values.listen,
        mode,
        values.insecure_dev_mode_on_network,
    );
    let listener = bind(&bind_address(&values.listen)?).await?;
    let bound_port = listener.local_addr().ok().map(|a| a.port());
    let config = values.worker_config(bound_port);
    let open_files = ensure_open_file_limit(config.max_live_sandboxes)?;
    let link: Option<Arc<dyn BrokerLink>> = config.broker_public_url.as_deref().map(|url| {
        let signer = InternalTokenSigner::new(&auth, clock.clone());
        Arc::new(HttpBrokerLink::new(url).with_signer(signer)) as Arc<dyn BrokerLink>
    });
    // Never the secret: only the mode, issuer and audience.
    tracing::info!(
        auth_mode = mode.as_str(),
        jwt_issuer = %auth.issuer,
        jwt_audience = %auth.audience,
        broker_id = %config.broker_id,
        worker_id = %config.worker_id,
        hostname = %config.hostname,
        advertise_url = %config.advertise_url,
        broker_control_url = config.broker_public_url.as_deref().unwrap_or(""),
        hardware_sku = %config.hardware_sku,
        total_cores = config.total_cores,
        total_memory_mib = config.total_memory_mib,
        max_live_sandboxes = config.max_live_sandboxes,
        cpu_overcommit = config.capacity.cpu_overcommit,
        memory_overcommit = config.capacity.memory_overcommit,
        memory_high_watermark_mib = config.capacity.memory_high_watermark_mib,
        open_files,
        default_ttl = ?config.default_ttl,
        max_ttl = ?config.max_ttl,
        default_virtualization = %config.default_virtualization,
        registration_heartbeat = ?config.registration_heartbeat,
        registration_jitter_percent = config.registration_jitter_percent,
        pre_pull = config.pre_pull.len(),
        "worker configured"
    );
    if link.is_none() {
        tracing::warn!("no broker control URL: running standalone, without registration");
    }
    let worker = Worker::new(
        config,
        backends,
        clock.clone(),
        Arc::new(Metrics::new(mode.is_prod())),
        link,
    );
    let clients = ClientAuthenticator::new(&auth, clock);

    let (trigger, shutdown) = shutdown_on_signal();
    drain_on_signal(worker.clone());
    let background = tokio::spawn(worker.clone().run(shutdown.clone().wait()));
    let served = serve_worker_with_auth(listener, worker, clients, shutdown.wait()).await;
    trigger.trigger();
    let _ = background.await;
    served.map_err(ServeError::Serve)
}
