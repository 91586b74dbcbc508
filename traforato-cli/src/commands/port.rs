//! `port-url`.

use traforato_client::Protocol;

use super::Ctx;
use crate::cli::{PortUrlArgs, ProtocolArg};
use crate::output::CliError;

/// Prints the URL of a port.
pub async fn run(ctx: &Ctx, args: PortUrlArgs) -> Result<u8, CliError> {
    let protocol = match args.protocol {
        ProtocolArg::Http => Protocol::Http,
        ProtocolArg::Https => Protocol::Https,
        ProtocolArg::Ws => Protocol::Ws,
        ProtocolArg::Wss => Protocol::Wss,
    };
    let resp = ctx
        .client
        .sandbox(args.id)
        .port_url(args.port, protocol)
        .await?;
    if ctx.out.json {
        ctx.out.json(&resp);
    } else {
        ctx.out.line(&resp.url);
    }
    Ok(0)
}
