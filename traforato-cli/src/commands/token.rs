//! `token mint`, and the credentials of every other command: a static `--token`, or, for an
//! operator holding the deployment's secret, a token minted per request for `--client-id`.

use std::time::Duration;

use traforato_client::{BoxError, ClientBuilder};
use traforato_core::auth::{mint_client_token, DEFAULT_AUDIENCE, DEFAULT_ISSUER};
use traforato_core::clock::{Clock, SystemClock};

use crate::cli::MintArgs;
use crate::output::{CliError, Output};

/// The variable holding the deployment's JWT secret.
pub const SECRET_ENV: &str = "TRAFORATO_JWT_SECRET";

/// Lifetime of the tokens minted per request: long enough for clock skew, short enough to be
/// worthless soon after the request.
pub const PER_REQUEST_TTL: Duration = Duration::from_secs(120);

/// The secret from the environment, if set and not blank. Never printed.
fn secret_from_env() -> Option<String> {
    std::env::var(SECRET_ENV)
        .ok()
        .filter(|secret| !secret.trim().is_empty())
}

/// An environment variable, or `default` when unset or blank.
fn env_or(name: &str, default: &str) -> String {
    std::env::var(name)
        .ok()
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default.to_string())
}

fn missing_secret(what: &str) -> CliError {
    CliError::Auth(format!(
        "{what} needs the deployment's JWT secret in {SECRET_ENV} (it is read from the environment only)"
    ))
}

/// `token mint`: prints a fresh token for `client_id`.
pub fn mint(out: &Output, client_id: Option<&str>, args: MintArgs) -> Result<u8, CliError> {
    let client_id = client_id
        .map(str::trim)
        .filter(|id| !id.is_empty())
        .ok_or_else(|| {
            CliError::Auth("token mint needs --client-id (or TRAFORATO_CLIENT_ID)".into())
        })?;
    let secret = secret_from_env().ok_or_else(|| missing_secret("token mint"))?;
    let now = SystemClock.now();
    let token = mint_client_token(
        &secret,
        client_id,
        &args.issuer,
        &args.audience,
        args.ttl,
        now,
    );
    if out.json {
        let expires_at =
            now + chrono::Duration::from_std(args.ttl).unwrap_or(chrono::Duration::MAX);
        out.json(&serde_json::json!({
            "token": token,
            "client_id": client_id,
            "expires_at": traforato_client::api::timestamp::format(&expires_at),
        }));
    } else {
        out.line(token);
    }
    Ok(0)
}

/// Adds the credentials of the command line to `builder`: with `--client-id`, a provider
/// minting a fresh token per request (secret, issuer and audience from the environment);
/// else the static `--token`, if any.
pub fn with_credentials(
    builder: ClientBuilder,
    token: Option<&str>,
    client_id: Option<&str>,
) -> Result<ClientBuilder, CliError> {
    let client_id = client_id.map(str::trim).filter(|id| !id.is_empty());
    let token = token.map(str::trim).filter(|t| !t.is_empty());
    match (client_id, token) {
        (Some(_), Some(_)) => Err(CliError::Auth(
            "--token and --client-id are exclusive (check TRAFORATO_TOKEN and TRAFORATO_CLIENT_ID)"
                .into(),
        )),
        (Some(client_id), None) => {
            let secret = secret_from_env().ok_or_else(|| missing_secret("--client-id"))?;
            let client_id = client_id.to_string();
            let issuer = env_or("TRAFORATO_JWT_ISSUER", DEFAULT_ISSUER);
            let audience = env_or("TRAFORATO_JWT_AUDIENCE", DEFAULT_AUDIENCE);
            Ok(builder.token_provider(move || -> Result<String, BoxError> {
                Ok(mint_client_token(
                    &secret,
                    &client_id,
                    &issuer,
                    &audience,
                    PER_REQUEST_TTL,
                    SystemClock.now(),
                ))
            }))
        }
        (None, Some(token)) => Ok(builder.token(token)),
        (None, None) => Ok(builder),
    }
}
