//! `traforato-broker`: parses flags and `TRAFORATO_BROKER_*` variables, installs JSON logging,
//! builds the [`Broker`] and serves it until SIGINT or SIGTERM. `traforato-broker healthcheck`
//! asks a running broker of the same configuration for `/healthz` instead.

use std::process::ExitCode;
use std::sync::Arc;

use traforato_core::broker::Broker;
use traforato_core::clock::SystemClock;
use traforato_core::scheduler::LeastLoaded;
use traforato_core::telemetry::Metrics;
use traforato_server::broker::log_auth_warnings;
use traforato_server::config::{
    local_url, parse_or_exit, BrokerArgs, BrokerSettings, ServiceCommand, DEFAULT_BROKER_PORT,
};
use traforato_server::logging::{self, LogSettings};
use traforato_server::server::{bind, log_listen_exposure, run_to_exit, shutdown_on_signal};
use traforato_server::{serve_broker_with_auth, BrokerAuth, ServeError};

fn main() -> ExitCode {
    let args: BrokerArgs = parse_or_exit("broker");
    if let Some(ServiceCommand::Healthcheck(check)) = &args.command {
        let bases = BrokerSettings::from_args(&args)
            .map(|settings| vec![local_url(&settings.bind, DEFAULT_BROKER_PORT, None)]);
        return traforato_server::health::run("broker", bases, check);
    }
    run_to_exit("broker", run(args))
}

async fn run(args: BrokerArgs) -> Result<(), ServeError> {
    let settings = BrokerSettings::from_args(&args)?;
    logging::init("broker", &LogSettings::default())?;
    let clock = Arc::new(SystemClock);
    let auth = BrokerAuth::new(&settings.auth, clock.clone());
    let mode = auth.mode();
    log_auth_warnings(&auth);
    let config = settings.config.clone();
    let broker = Arc::new(Broker::new(
        settings.config,
        clock,
        Arc::new(LeastLoaded),
        Arc::new(Metrics::new(mode.is_prod())),
    ));
    // Never the secret: only the mode, issuer and audience.
    tracing::info!(
        auth_mode = mode.as_str(),
        jwt_issuer = %settings.auth.issuer,
        jwt_audience = %settings.auth.audience,
        broker_id = %config.broker_id,
        worker_lease_ttl = ?config.worker_lease_ttl,
        worker_lease_sweep_interval = ?config.lease_sweep_interval,
        restart_grace = ?config.restart_grace,
        placement_retry_max = config.placement_retry_max,
        default_virtualization = %config.default_virtualization,
        "broker configured"
    );
    log_listen_exposure(
        "broker",
        &settings.bind,
        mode,
        args.auth.insecure_dev_mode_on_network,
    );
    let listener = bind(&settings.bind).await?;

    let (trigger, shutdown) = shutdown_on_signal();
    let sweeper = tokio::spawn(broker.clone().run_lease_sweeper(shutdown.clone().wait()));
    let served = serve_broker_with_auth(listener, broker, auth, shutdown.wait()).await;
    trigger.trigger();
    let _ = sweeper.await;
    served.map_err(ServeError::Serve)
}
