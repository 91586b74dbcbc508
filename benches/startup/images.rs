//! The image row: cold creates (at the backend) from an OCI image already in the cache,
//! against cold creates from `host`, alternating, on a backend of their own. The image is a
//! busybox pushed to a registry on loopback (`docker-registry`, as the tests run it); both
//! sides run without the Python zygote, which the busybox image could not start, so that
//! each create is the sandbox alone.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use traforato_benches::stats::{ms, Summary};
use traforato_core::backend::container::oci::testing::{busybox_layer, LocalRegistry};
use traforato_core::backend::container::{ContainerBackend, ContainerConfig};
use traforato_core::backend::{ProvisionSpec, VmBackend};
use traforato_core::id::LocalVmId;
use traforato_core::tuple::SandboxTuple;

use crate::shells::wait_for;
use crate::{sandbox_dirs, Args, BenchError, Row, Verdict, WARMUP};

/// The state dir and cgroup parent of this phase's backend.
const STATE_DIR: &str = "/run/traforato-startup-images";
const CGROUP_PARENT: &str = "traforato_startup_images";

/// A cached image starts as fast as `host` within this ratio of medians.
const MAX_RATIO: f64 = 1.2;

const MEASURE: &str = "cold create from a cached OCI image";

/// Measures the row; `NOT MEASURED` (saying why) where no registry can run.
pub async fn cached_image_row(args: &Args, scratch: &Path) -> Result<Row, BenchError> {
    let registry = match LocalRegistry::start() {
        Ok(registry) => registry,
        Err(why) => {
            println!("  skipped: {why}");
            return Ok(Row {
                measure: MEASURE.to_string(),
                system: "-".to_string(),
                floor: "host image".to_string(),
                ratio: "-".to_string(),
                target: "<= 1.2x host",
                verdict: Verdict::NotMeasured,
            });
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
    let config = ContainerConfig {
        state_dir: PathBuf::from(STATE_DIR),
        cgroup_parent: CGROUP_PARENT.to_string(),
        python_zygote: false,
        oci_dir: Some(scratch.join("images")),
        ..ContainerConfig::default()
    };
    let backend = Arc::new(
        ContainerBackend::new(config)
            .map_err(|e| BenchError::Check(format!("the container backend cannot run: {e}")))?,
    );
    let measured = series(args, &backend, &image).await;
    let _ = wait_for(Duration::from_secs(10), || {
        sandbox_dirs(Path::new(STATE_DIR)) == 0
    })
    .await;
    let _ = backend.remove_cgroup_parents();
    let _ = std::fs::remove_dir_all(STATE_DIR);
    let (pull, host, cached) = measured?;
    let (Some(host), Some(cached)) = (Summary::of(&host), Summary::of(&cached)) else {
        return Err(BenchError::Check("no samples".to_string()));
    };
    println!("  first create (pull + unpack)          {:>8} ms", ms(pull));
    for (label, s) in [
        ("create from host", &host),
        ("create from the cached image", &cached),
    ] {
        println!(
            "  {label:<38} median {:>8} ms  p90 {:>8} ms  min {:>8} ms  max {:>8} ms",
            ms(s.median),
            ms(s.p90),
            ms(s.min),
            ms(s.max)
        );
    }
    let ratio = cached.median.as_secs_f64() / host.median.as_secs_f64();
    Ok(Row {
        measure: MEASURE.to_string(),
        system: format!("{} ms ({})", ms(cached.median), ms(cached.p90)),
        floor: format!("{} ms ({}) host image", ms(host.median), ms(host.p90)),
        ratio: format!("{ratio:.2}x"),
        target: "<= 1.2x host",
        verdict: if ratio <= MAX_RATIO {
            Verdict::Met
        } else {
            Verdict::NotMet
        },
    })
}

/// The first create of `image` (its pull), then creates from `host` and from `image`,
/// alternating; each sandbox is destroyed (untimed) before the next.
async fn series(
    args: &Args,
    backend: &Arc<ContainerBackend>,
    image: &str,
) -> Result<(Duration, Vec<Duration>, Vec<Duration>), BenchError> {
    let pull = create(backend, image).await?;
    let (mut host, mut cached) = (Vec::new(), Vec::new());
    for i in 0..WARMUP + args.iterations {
        let from_host = create(backend, "host").await?;
        let from_cache = create(backend, image).await?;
        if i >= WARMUP {
            host.push(from_host);
            cached.push(from_cache);
        }
    }
    Ok((pull, host, cached))
}

/// One timed provision of `image`; the sandbox is destroyed afterwards.
async fn create(backend: &Arc<ContainerBackend>, image: &str) -> Result<Duration, BenchError> {
    let spec = ProvisionSpec {
        vm_id: LocalVmId::new_random(),
        tuple: SandboxTuple::normalize("container", image, 1, "container"),
        memory_mib: 256,
    };
    let started = Instant::now();
    let vm = backend
        .provision(spec)
        .await
        .map_err(|e| BenchError::Check(format!("create from {image}: {e}")))?;
    let took = started.elapsed();
    vm.destroy()
        .await
        .map_err(|e| BenchError::Check(format!("destroy a sandbox of {image}: {e}")))?;
    Ok(took)
}
