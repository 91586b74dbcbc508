//! The image row: cold creates (at the backend) from an OCI image already in the cache,
//! against cold creates from `host`, alternating, on a backend of their own. The image is a
//! busybox pushed to a registry on loopback (`docker-registry`, as the tests run it); both
//! sides run without the Python zygote, which the busybox image could not start, so that
//! each create is the sandbox alone.

use std::path::Path;

use traforato_benches::stats::ms;
use traforato_core::backend::container::oci::testing::{busybox_layer, LocalRegistry};

use crate::paired::{Comparison, OwnBackend};
use crate::{Args, BenchError, Row, WARMUP};

const ROW: Comparison = Comparison {
    measure: "cold create from a cached OCI image",
    floor: "host image",
    target: "<= 1.2x host",
    // A cached image starts as fast as `host`.
    max_ratio: 1.2,
};

/// Measures the row; `NOT MEASURED` (saying why) where no registry can run.
pub async fn cached_image_row(args: &Args, scratch: &Path) -> Result<Row, BenchError> {
    let registry = match LocalRegistry::start() {
        Ok(registry) => registry,
        Err(why) => {
            say!("  skipped: {why}");
            return Ok(ROW.not_measured());
        }
    };
    registry
        .push(
            "bench/busybox",
            "1",
            &[busybox_layer(&["sh", "echo"], &[])],
            &["PATH=/bin"],
        )
        .await;
    let image = format!("{}/bench/busybox:1", registry.host());
    let own = OwnBackend::start(
        "/run/traforato-startup-images",
        "traforato_startup_images",
        |config| config.oci_dir = Some(scratch.join("images")),
    )?;
    let measured = async {
        // The first create pulls and unpacks.
        let pull = own.create(&image, None).await?;
        let (mut host, mut cached) = (Vec::new(), Vec::new());
        for i in 0..WARMUP + args.iterations {
            crate::progress("image", i, WARMUP + args.iterations);
            let from_host = own.create("host", None).await?;
            let from_cache = own.create(&image, None).await?;
            if i >= WARMUP {
                host.push(from_host);
                cached.push(from_cache);
            }
        }
        Ok::<_, BenchError>((pull, host, cached))
    }
    .await;
    own.stop().await;
    let (pull, host, cached) = measured?;
    say!("  first create (pull + unpack)          {:>8} ms", ms(pull));
    ROW.row(
        ("create from host", &host),
        ("create from the cached image", &cached),
    )
}
