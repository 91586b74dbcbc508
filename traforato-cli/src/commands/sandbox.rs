//! `sandbox create|get|delete|network|lease`.

use std::time::Duration;

use traforato_client::api::timestamp;
use traforato_client::CreateSandbox;

use super::Ctx;
use crate::cli::{CreateArgs, SandboxCommand};
use crate::output::CliError;
use crate::spinner::Spinner;

/// Runs a `sandbox` subcommand.
pub async fn run(ctx: &Ctx, cmd: SandboxCommand) -> Result<u8, CliError> {
    match cmd {
        SandboxCommand::Create(args) => create(ctx, args).await,
        SandboxCommand::Get { id } => {
            let info = ctx.client.sandbox(id).info().await?;
            if ctx.out.json {
                ctx.out.json(&info);
            } else {
                ctx.out.line(format!("sandbox_id      {}", info.sandbox_id));
                ctx.out.line(format!("image           {}", info.image));
                ctx.out
                    .line(format!("virtualization  {}", info.virtualization));
                ctx.out.line(format!("cpu             {}", info.cpu));
                ctx.out.line(format!("memory_mib      {}", info.memory_mib));
                ctx.out.line(format!(
                    "created_at      {}",
                    timestamp::format(&info.created_at)
                ));
                ctx.out.line(format!(
                    "expires_at      {}",
                    timestamp::format(&info.expires_at)
                ));
                ctx.out
                    .line(format!("network         {}", describe(&info.network)));
            }
            Ok(0)
        }
        SandboxCommand::Network { id, network } => {
            let Some(policy) = network.policy() else {
                return Err(CliError::Usage("give --egress, or --allow rules"));
            };
            let set = ctx.client.sandbox(id).set_network(&policy).await?;
            if ctx.out.json {
                ctx.out.json(&set);
            } else {
                ctx.out.line(format!(
                    "{} network {}",
                    set.sandbox_id,
                    describe(&set.network)
                ));
            }
            Ok(0)
        }
        SandboxCommand::Delete { id } => {
            ctx.client.sandbox(id.clone()).delete().await?;
            if ctx.out.json {
                ctx.out
                    .json(&serde_json::json!({"sandbox_id": id, "deleted": true}));
            }
            Ok(0)
        }
        SandboxCommand::Lease { id, ttl } => {
            let lease = ctx
                .client
                .sandbox(id)
                .set_lease(Duration::from_secs(ttl))
                .await?;
            if ctx.out.json {
                ctx.out.json(&lease);
            } else {
                ctx.out.line(format!(
                    "{} expires at {}",
                    lease.sandbox_id,
                    timestamp::format(&lease.expires_at)
                ));
            }
            Ok(0)
        }
    }
}

/// `none`, `all`, or `allow pypi.org, 10.0.0.0/8`.
fn describe(policy: &traforato_client::api::NetworkPolicy) -> String {
    match policy.egress.as_str() {
        "" => "none".to_string(),
        "allow" if policy.allow.is_empty() => "allow (nothing)".to_string(),
        "allow" => format!("allow {}", policy.allow.join(", ")),
        other => other.to_string(),
    }
}

async fn create(ctx: &Ctx, args: CreateArgs) -> Result<u8, CliError> {
    let spec = CreateSandbox {
        image: args.image.unwrap_or_default(),
        cpu: args.cpu.unwrap_or(0),
        virtualization: args.virtualization.unwrap_or_default(),
        hardware_sku: args.hardware_sku.unwrap_or_default(),
        ttl: args.ttl.map(Duration::from_secs),
        network: args.network.policy(),
    };
    let mut spinner = Spinner::start(ctx.spin, "creating sandbox");
    let result = ctx.client.create_sandbox(spec).await;
    spinner.stop();
    let sandbox = result?;
    match sandbox.created_info() {
        Some(created) if ctx.out.json => ctx.out.json(created),
        _ => ctx.out.line(sandbox.id()),
    }
    Ok(0)
}
