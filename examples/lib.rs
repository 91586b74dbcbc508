//! Runnable examples of traforato, one file each under `examples/`:
//!
//! | example | what it shows | needs |
//! |---|---|---|
//! | `embed` | a `Broker` and a `Worker` in one process with no HTTP: warm placement, create, exec, run code, files, delete | nothing |
//! | `custom_scheduler` | a `Scheduler` of your own (bin-packing, warm where it packs) plugged into a `Broker` | nothing |
//! | `custom_backend` | a `VmBackend`/`Vm` of your own (an audit wrapper around any backend) plugged into a `Worker` | nothing |
//! | `client` | `traforato-client` against a running `traforato-dev` | a server at `TRAFORATO_URL` |
//! | `browser_terminal` | a web page running a command in a sandbox over the exec WebSocket, its server minting single-use URLs | a server at `TRAFORATO_URL`, a browser |
//!
//! Run one with `cargo run -p traforato-examples --example <name>`. The first three run in CI
//! through `tests/run.rs`.

use std::time::Duration;

use traforato_client::{BoxError, Client, ClientError};
use traforato_core::auth::{mint_client_token, DEFAULT_AUDIENCE, DEFAULT_ISSUER};
use traforato_core::clock::{Clock, SystemClock};

/// The value of the environment variable `name`, or `default` when it is unset or blank.
pub fn env_or(name: &str, default: &str) -> String {
    std::env::var(name)
        .ok()
        .filter(|v| !v.trim().is_empty())
        .unwrap_or_else(|| default.to_string())
}

/// The client of the examples that talk to a server: `TRAFORATO_URL` (default
/// `http://localhost:8080`). For a server in prod mode set `TRAFORATO_JWT_SECRET` (and
/// `TRAFORATO_CLIENT_ID`, default `examples`): every request then carries a fresh token, since
/// each service accepts a token once.
pub fn client_from_env() -> Result<Client, ClientError> {
    let builder = Client::builder(env_or("TRAFORATO_URL", "http://localhost:8080").as_str());
    let secret = env_or("TRAFORATO_JWT_SECRET", "");
    if secret.is_empty() {
        return builder.build();
    }
    let client_id = env_or("TRAFORATO_CLIENT_ID", "examples");
    builder
        .token_provider(move || -> Result<String, BoxError> {
            Ok(mint_client_token(
                &secret,
                &client_id,
                DEFAULT_ISSUER,
                DEFAULT_AUDIENCE,
                Duration::from_secs(120),
                SystemClock.now(),
            ))
        })
        .build()
}
