//! `files put|get|ls|stat|mkdir|rm`.

use std::io::{Read, Write};

use futures::{StreamExt, TryStreamExt};
use traforato_client::api::{timestamp, ListEntry};
use traforato_client::{ListOptions, RemoveOptions};

use super::Ctx;
use crate::cli::FilesCommand;
use crate::output::CliError;

/// Runs a `files` subcommand.
pub async fn run(ctx: &Ctx, cmd: FilesCommand) -> Result<u8, CliError> {
    match cmd {
        FilesCommand::Put { id, local, remote } => {
            let content = read_local(&local)?;
            let resp = ctx
                .client
                .sandbox(id)
                .files()
                .write(&remote, content)
                .await?;
            if ctx.out.json {
                ctx.out.json(&resp);
            }
            Ok(0)
        }
        FilesCommand::Get { id, remote, local } => get(ctx, id, remote, local).await,
        FilesCommand::Ls {
            id,
            path,
            recursive,
        } => {
            let entries: Vec<ListEntry> = ctx
                .client
                .sandbox(id)
                .files()
                .list_with(
                    &path,
                    ListOptions {
                        recursive,
                        page_size: None,
                    },
                )
                .try_collect()
                .await?;
            if ctx.out.json {
                ctx.out.json(&entries);
            } else {
                for e in &entries {
                    ctx.out.line(format_entry(e, recursive));
                }
            }
            Ok(0)
        }
        FilesCommand::Stat { id, path } => {
            let stat = ctx.client.sandbox(id).files().stat(&path).await?;
            if ctx.out.json {
                ctx.out.json(&stat);
            } else if stat.exists {
                ctx.out.line(format!("path      {}", stat.path));
                ctx.out
                    .line(format!("type      {}", stat.kind.as_deref().unwrap_or("")));
                ctx.out
                    .line(format!("size      {}", stat.size.unwrap_or(0)));
                if let Some(m) = &stat.modified_at {
                    ctx.out.line(format!("modified  {}", timestamp::format(m)));
                }
            }
            if stat.exists {
                Ok(0)
            } else if ctx.out.json {
                Ok(crate::output::EXIT_FAILURE)
            } else {
                Err(CliError::NotFound(stat.path))
            }
        }
        FilesCommand::Mkdir { id, path, parents } => {
            let files = ctx.client.sandbox(id).files();
            let created = if parents {
                files.mkdir_all(&path).await?
            } else {
                files.mkdir(&path).await?
            };
            if ctx.out.json {
                ctx.out
                    .json(&serde_json::json!({"path": path, "created": created}));
            }
            Ok(0)
        }
        FilesCommand::Rm {
            id,
            path,
            recursive,
            force,
        } => {
            ctx.client
                .sandbox(id)
                .files()
                .remove_with(&path, RemoveOptions { recursive, force })
                .await?;
            if ctx.out.json {
                ctx.out
                    .json(&serde_json::json!({"path": path, "removed": true}));
            }
            Ok(0)
        }
    }
}

fn read_local(local: &str) -> Result<Vec<u8>, CliError> {
    if local == "-" {
        let mut buf = Vec::new();
        std::io::stdin()
            .read_to_end(&mut buf)
            .map_err(|e| CliError::io("-", e))?;
        Ok(buf)
    } else {
        std::fs::read(local).map_err(|e| CliError::io(local, e))
    }
}

async fn get(ctx: &Ctx, id: String, remote: String, local: Option<String>) -> Result<u8, CliError> {
    let files = ctx.client.sandbox(id.clone()).files();
    let local = local.filter(|l| l != "-");
    let mut stream = files.download(&remote).await?;
    let mut written: u64 = 0;
    match &local {
        Some(path) => {
            // Write next to the target and rename, so a failed download leaves no torn file.
            let tmp = format!("{path}.part");
            let mut file = std::fs::File::create(&tmp).map_err(|e| CliError::io(&tmp, e))?;
            while let Some(chunk) = stream.next().await {
                let chunk = match chunk {
                    Ok(c) => c,
                    Err(e) => {
                        let _ = std::fs::remove_file(&tmp);
                        return Err(e.into());
                    }
                };
                file.write_all(&chunk).map_err(|e| CliError::io(&tmp, e))?;
                written += chunk.len() as u64;
            }
            file.sync_all().map_err(|e| CliError::io(&tmp, e))?;
            std::fs::rename(&tmp, path).map_err(|e| CliError::io(path, e))?;
            if ctx.out.json {
                ctx.out.json(&serde_json::json!({
                    "sandbox_id": id, "path": remote, "local": path, "bytes": written,
                }));
            }
        }
        None => {
            let mut out = std::io::stdout().lock();
            while let Some(chunk) = stream.next().await {
                out.write_all(&chunk?).map_err(|e| CliError::io("-", e))?;
            }
            out.flush().map_err(|e| CliError::io("-", e))?;
        }
    }
    Ok(0)
}

/// `file      12  /workspace/a.txt`, `dir        -  /workspace/src/`.
fn format_entry(e: &ListEntry, full_path: bool) -> String {
    let name = if full_path { &e.path } else { &e.name };
    let (kind, size, suffix) = if e.kind == "directory" {
        ("dir", "-".to_string(), "/")
    } else {
        ("file", e.size.unwrap_or(0).to_string(), "")
    };
    format!("{kind:<4} {size:>10}  {name}{suffix}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_format_like_ls() {
        let f = ListEntry {
            name: "a.txt".into(),
            path: "/w/a.txt".into(),
            kind: "file".into(),
            size: Some(12),
        };
        assert_eq!(format_entry(&f, false), "file         12  a.txt");
        let d = ListEntry {
            name: "src".into(),
            path: "/w/src".into(),
            kind: "directory".into(),
            size: None,
        };
        assert_eq!(format_entry(&d, true), "dir           -  /w/src/");
    }
}
