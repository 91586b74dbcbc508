//! `images ls|pull|rm`: a worker's images, for operators.

use super::Ctx;
use crate::cli::ImagesCommand;
use crate::output::CliError;
use crate::spinner::Spinner;

/// The worker the command names, if it names one.
pub fn worker_url(cmd: &ImagesCommand) -> Option<&str> {
    let worker = match cmd {
        ImagesCommand::Ls(worker) => worker,
        ImagesCommand::Pull { worker, .. } | ImagesCommand::Rm { worker, .. } => worker,
    };
    worker.worker.as_deref()
}

/// Runs one `images` command.
pub async fn run(ctx: &Ctx, cmd: ImagesCommand) -> Result<u8, CliError> {
    match cmd {
        ImagesCommand::Ls(_) => {
            let list = ctx.client.images().await?;
            if ctx.out.json {
                ctx.out.json(&list);
                return Ok(0);
            }
            ctx.out.line(format!(
                "{:<48} {:<19} {:>10} {:>7} {:<20}",
                "REFERENCE", "DIGEST", "SIZE", "IN USE", "LAST USED"
            ));
            for image in &list.images {
                ctx.out.line(format!(
                    "{:<48} {:<19} {:>10} {:>7} {:<20}",
                    image.reference,
                    short_digest(&image.digest),
                    human_bytes(image.size_bytes),
                    image.in_use,
                    image.last_used.format("%Y-%m-%d %H:%M:%S")
                ));
            }
            let limit = list
                .max_disk_bytes
                .map(|max| format!(" of {} (images.max-disk)", human_bytes(max)))
                .unwrap_or_default();
            ctx.out.line(format!(
                "{} image(s), {} on disk{limit}",
                list.images.len(),
                human_bytes(list.disk_bytes)
            ));
            Ok(0)
        }
        ImagesCommand::Pull { image, .. } => {
            let mut spinner = Spinner::start(ctx.spin, &format!("pulling {image}"));
            let result = ctx.client.pull_image(&image).await;
            spinner.stop();
            let pulled = result?;
            if ctx.out.json {
                ctx.out.json(&pulled);
            } else {
                ctx.out.line(format!(
                    "{} {} ({}, {} layer(s))",
                    pulled.reference,
                    pulled.digest,
                    human_bytes(pulled.size_bytes),
                    pulled.layers
                ));
            }
            Ok(0)
        }
        ImagesCommand::Rm { image, .. } => {
            let removed = ctx.client.remove_image(&image).await?;
            if ctx.out.json {
                ctx.out.json(&removed);
            } else {
                ctx.out.line(format!(
                    "removed {} ({} freed)",
                    removed.reference,
                    human_bytes(removed.freed_bytes)
                ));
            }
            Ok(0)
        }
    }
}

/// `sha256:0123456789ab` (the first 12 hex digits, as Docker shows them).
fn short_digest(digest: &str) -> &str {
    digest.get(..19).unwrap_or(digest)
}

/// Bytes in binary units: `512 B`, `1.5 KiB`, `12.0 MiB`, `3.2 GiB`.
fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_digests_read_like_docker() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(12 << 20), "12.0 MiB");
        assert_eq!(human_bytes(5 << 40), "5.0 TiB");
        assert_eq!(
            short_digest("sha256:0123456789abcdef0123"),
            "sha256:0123456789ab"
        );
        assert_eq!(short_digest("short"), "short");
    }
}
