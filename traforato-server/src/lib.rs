//! traforato-server: thin hyper 1.x shells over `traforato-core`'s [`Broker`] and [`Worker`],
//! and the three binaries built on them (`traforato-broker`, `traforato-worker`,
//! `traforato-dev`).
//!
//! A tour, one file per concern:
//! - [`http`]: JSON/text/error responses, size-capped bodies, lenient JSON decoding, query
//!   and path parsing, request ids and W3C trace context.
//! - [`server`]: the accept loop (HTTP/1.1, read-header timeout, graceful shutdown) and the
//!   shutdown plumbing.
//! - [`linger`]: the request body type of the handlers; a body a handler leaves unread is
//!   drained (bounded) before the answer goes out, so clients that send first still read it.
//! - [`broker`]: the broker's route table → [`Broker`] methods; [`serve_broker`] (dev) and
//!   [`serve_broker_with_auth`] (client and internal tokens).
//! - [`worker`]: the worker's route table → [`Worker`] methods; [`serve_worker`] (dev) and
//!   [`serve_worker_with_auth`] (client tokens, checked before routing).
//! - [`events`]: an exec's frames as Server-Sent Events.
//! - [`proxy`]: HTTP and WebSocket reverse proxy into a sandbox port.
//! - [`link`]: [`link::HttpBrokerLink`], the worker's HTTP line to its broker, signing each
//!   call with a fresh internal token.
//!
//! # Auth modes
//!
//! One secret (`--jwt-secret` / `TRAFORATO_JWT_SECRET`, trimmed) decides everything: empty is
//! development mode (no tokens, no ownership, a loud startup warning, `service.auth.mode` 0);
//! otherwise prod, where clients need a fresh HS256 token per request and service (each
//! service keeps a replay cache), sandboxes belong to the `client_id` that created them, and
//! worker -> broker calls carry internal tokens. Tokens and secrets are never logged.
//! - [`config`]: flags, environment variables, the worker YAML and derived values.
//! - [`logging`]: JSON logs to stdout or a size-rotated file.
//! - [`backends`]: the worker's sandbox backends by virtualization name.
//! - [`testing`]: a broker and a worker on loopback in one process, for client tests.
//! - [`health`]: the binaries' `healthcheck` subcommand (`GET /healthz` with a deadline).
//!
//! [`Broker`]: traforato_core::broker::Broker
//! [`Worker`]: traforato_core::worker::Worker

pub mod backends;
pub mod broker;
pub mod config;
pub mod decode;
pub mod events;
pub mod exec_ws;
pub mod health;
pub mod http;
pub mod linger;
pub mod link;
pub mod logging;
pub mod proxy;
pub mod server;
pub mod testing;
pub mod worker;

pub use broker::{serve_broker, serve_broker_with_auth, BrokerAuth};
pub use worker::{serve_worker, serve_worker_with_auth};

/// Why a binary could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The configuration was refused.
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    /// Logging could not be set up.
    #[error(transparent)]
    Logging(#[from] logging::LoggingError),
    /// A listener could not be bound.
    #[error("bind {addr}")]
    Bind {
        /// The address.
        addr: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The async runtime could not start.
    #[error("start async runtime")]
    Runtime(#[source] std::io::Error),
    /// Serving failed.
    #[error("serve")]
    Serve(#[source] std::io::Error),
    /// The process may not open as many files as its sandboxes need.
    #[error(
        "the open-file limit is {limit} but {needed} are needed for {sandboxes} live sandboxes \
         (raise it with `ulimit -n {needed}` or LimitNOFILE={needed}, or lower \
         --max-live-sandboxes)"
    )]
    OpenFileLimit {
        /// The limit that could be had.
        limit: u64,
        /// What is needed.
        needed: u64,
        /// For how many sandboxes.
        sandboxes: u32,
    },
    /// No backend exists for this virtualization.
    #[error("unknown virtualization {0:?}")]
    UnknownVirtualization(String),
    /// The backend exists but this binary was built without it.
    #[error("virtualization {name:?} is not built into this binary (build it with `--features {feature}`)")]
    BackendNotBuilt {
        /// The virtualization.
        name: String,
        /// The cargo feature that adds it.
        feature: &'static str,
    },
    /// The backend exists but cannot run here.
    #[error("virtualization {virtualization:?} is unavailable: {reason}")]
    BackendUnavailable {
        /// The virtualization.
        virtualization: String,
        /// Why.
        reason: String,
    },
}
