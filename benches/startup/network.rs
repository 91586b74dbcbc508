//! The network rows: cold creates (at the backend) with `egress: none` against the same with
//! `egress: all` (the create plus its network: veth pair, addresses, nftables, DNS forwarder),
//! alternating, on a backend of their own without the Python zygote. Skipped, saying why,
//! where the host lacks `nft`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use traforato_benches::stats::{ms, Summary};
use traforato_core::backend::container::{ContainerBackend, ContainerConfig};
use traforato_core::backend::{ProvisionSpec, VmBackend};
use traforato_core::id::LocalVmId;
use traforato_core::network::Policy;
use traforato_core::tuple::SandboxTuple;

use crate::shells::wait_for;
use crate::{sandbox_dirs, Args, BenchError, Row, Verdict, WARMUP};

const STATE_DIR: &str = "/run/traforato-startup-network";
const CGROUP_PARENT: &str = "traforato_startup_network";

/// Network set-up is meant to cost the cold start nothing measurable.
const MAX_RATIO: f64 = 1.1;

const MEASURE: &str = "cold create with egress all";

/// Measures the row; `NOT MEASURED` (saying why) without `nft`.
pub async fn egress_row(args: &Args, scratch: &Path) -> Result<Row, BenchError> {
    let has_nft = std::process::Command::new("nft")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_nft {
        println!("  skipped: needs nft (apt-get install nftables)");
        return Ok(Row {
            measure: MEASURE.to_string(),
            system: "-".to_string(),
            floor: "egress none".to_string(),
            ratio: "-".to_string(),
            target: "<= 1.1x none",
            verdict: Verdict::NotMeasured,
        });
    }
    let config = ContainerConfig {
        state_dir: PathBuf::from(STATE_DIR),
        cgroup_parent: CGROUP_PARENT.to_string(),
        python_zygote: false,
        oci_dir: Some(scratch.join("network-images")),
        ..ContainerConfig::default()
    };
    let backend = Arc::new(
        ContainerBackend::new(config)
            .map_err(|e| BenchError::Check(format!("the container backend cannot run: {e}")))?,
    );
    let measured = series(args, &backend).await;
    backend.shutdown().await;
    let _ = wait_for(Duration::from_secs(10), || {
        sandbox_dirs(Path::new(STATE_DIR)) == 0
    })
    .await;
    let _ = backend.remove_cgroup_parents();
    let _ = std::fs::remove_dir_all(STATE_DIR);
    let (none, all) = measured?;
    let (Some(none), Some(all)) = (Summary::of(&none), Summary::of(&all)) else {
        return Err(BenchError::Check("no samples".to_string()));
    };
    for (label, s) in [("create, egress none", &none), ("create, egress all", &all)] {
        println!(
            "  {label:<38} median {:>8} ms  p90 {:>8} ms  min {:>8} ms  max {:>8} ms",
            ms(s.median),
            ms(s.p90),
            ms(s.min),
            ms(s.max)
        );
    }
    let ratio = all.median.as_secs_f64() / none.median.as_secs_f64();
    Ok(Row {
        measure: MEASURE.to_string(),
        system: format!("{} ms ({})", ms(all.median), ms(all.p90)),
        floor: format!("{} ms ({}) egress none", ms(none.median), ms(none.p90)),
        ratio: format!("{ratio:.2}x"),
        target: "<= 1.1x none",
        verdict: if ratio <= MAX_RATIO {
            Verdict::Met
        } else {
            Verdict::NotMet
        },
    })
}

/// Creates with `none` and with `all`, alternating; each sandbox destroyed (untimed).
async fn series(
    args: &Args,
    backend: &Arc<ContainerBackend>,
) -> Result<(Vec<Duration>, Vec<Duration>), BenchError> {
    let (mut none, mut all) = (Vec::new(), Vec::new());
    for i in 0..WARMUP + args.iterations {
        let without = create(backend, None).await?;
        let with = create(backend, Some(Policy::all())).await?;
        if i >= WARMUP {
            none.push(without);
            all.push(with);
        }
    }
    Ok((none, all))
}

/// One timed provision of `host`, with its network when `policy` is given.
async fn create(
    backend: &Arc<ContainerBackend>,
    policy: Option<Policy>,
) -> Result<Duration, BenchError> {
    let spec = ProvisionSpec {
        vm_id: LocalVmId::new_random(),
        tuple: SandboxTuple::normalize("container", "host", 1, "container"),
        memory_mib: 256,
    };
    let started = Instant::now();
    let vm = backend
        .provision(spec)
        .await
        .map_err(|e| BenchError::Check(format!("create: {e}")))?;
    if let Some(policy) = policy {
        vm.set_network(&policy)
            .await
            .map_err(|e| BenchError::Check(format!("egress all: {e}")))?;
    }
    let took = started.elapsed();
    vm.destroy()
        .await
        .map_err(|e| BenchError::Check(format!("destroy: {e}")))?;
    Ok(took)
}
