//! Rows that compare two kinds of cold create at the backend, alternated on a container
//! backend of their own without the Python zygote (the image and the egress rows): that
//! backend's start and clean-up, one timed create, and the printed breakdown and row.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use traforato_benches::stats::{ms, Summary};
use traforato_core::backend::container::{ContainerBackend, ContainerConfig};
use traforato_core::backend::{ProvisionSpec, VmBackend};
use traforato_core::id::LocalVmId;
use traforato_core::network::Policy;
use traforato_core::tuple::SandboxTuple;

use crate::shells::{spares_up, wait_for};
use crate::{sandbox_dirs, BenchError, Row, Verdict};

/// Prints one latency series: median, p90, min and max.
pub fn print_summary(label: &str, samples: &[Duration]) {
    if let Some(s) = Summary::of(samples) {
        say!(
            "  {label:<38} median {:>8} ms  p90 {:>8} ms  min {:>8} ms  max {:>8} ms",
            ms(s.median),
            ms(s.p90),
            ms(s.min),
            ms(s.max)
        );
    }
}

/// A container backend with a state dir and cgroup parent of its own.
pub struct OwnBackend {
    pub backend: Arc<ContainerBackend>,
    state_dir: PathBuf,
}

impl OwnBackend {
    /// Starts it; `tweak` sets what the row needs (its image directory, say).
    pub fn start(
        state_dir: &str,
        cgroup_parent: &str,
        tweak: impl FnOnce(&mut ContainerConfig),
    ) -> Result<Self, BenchError> {
        let mut config = ContainerConfig {
            state_dir: PathBuf::from(state_dir),
            cgroup_parent: cgroup_parent.to_string(),
            python_zygote: false,
            ..ContainerConfig::default()
        };
        tweak(&mut config);
        let backend = ContainerBackend::new(config)
            .map_err(|e| BenchError::Check(format!("the container backend cannot run: {e}")))?;
        Ok(Self {
            backend: Arc::new(backend),
            state_dir: PathBuf::from(state_dir),
        })
    }

    /// One timed create of `image` (with the network of `policy`, when given, as a cold
    /// create through the worker has it); the sandbox is destroyed afterwards, untimed. It
    /// starts once the backend's spare inits are up (cgroup v1), as on a running worker.
    pub async fn create(
        &self,
        image: &str,
        policy: Option<&Policy>,
    ) -> Result<Duration, BenchError> {
        spares_up(&self.backend)
            .await
            .map_err(|e| BenchError::Check(format!("spare inits not up: {e}")))?;
        let spec = ProvisionSpec {
            vm_id: LocalVmId::new_random(),
            tuple: SandboxTuple::normalize("container", image, 1, "container"),
            memory_mib: 256,
            warm: false,
        };
        let started = Instant::now();
        // As the worker's cold create does: the network, if any, attached while it boots.
        let vm = match policy {
            Some(policy) => self.backend.provision_with_network(spec, policy).await,
            None => self.backend.provision(spec).await,
        }
        .map_err(|e| BenchError::Check(format!("create from {image}: {e}")))?;
        let took = started.elapsed();
        vm.destroy()
            .await
            .map_err(|e| BenchError::Check(format!("destroy a sandbox of {image}: {e}")))?;
        Ok(took)
    }

    /// Undoes what it made on the host.
    pub async fn stop(self) {
        self.backend.shutdown().await;
        let _ = wait_for(Duration::from_secs(10), || {
            sandbox_dirs(&self.state_dir) == 0
        })
        .await;
        let _ = self.backend.remove_cgroup_parents();
        crate::remove_unless_mounted(&self.state_dir);
    }
}

/// What a comparison row says: the measure, its floor's name and the target ratio.
pub struct Comparison {
    pub measure: &'static str,
    pub floor: &'static str,
    pub target: &'static str,
    pub max_ratio: f64,
}

impl Comparison {
    /// The row of a comparison that could not run here.
    pub fn not_measured(&self) -> Row {
        Row {
            measure: self.measure.to_string(),
            system: "-".to_string(),
            floor: self.floor.to_string(),
            ratio: "-".to_string(),
            target: self.target,
            verdict: Verdict::NotMeasured,
            figures: Vec::new(),
            series: Vec::new(),
        }
    }

    /// Prints both series (labelled) and makes the row: medians (p90), their ratio.
    pub fn row(
        &self,
        (floor_label, floor): (&str, &[Duration]),
        (system_label, system): (&str, &[Duration]),
    ) -> Result<Row, BenchError> {
        print_summary(floor_label, floor);
        print_summary(system_label, system);
        let series = vec![
            crate::plotted(system_label, system),
            crate::plotted(floor_label, floor),
        ];
        let (Some(floor), Some(system)) = (Summary::of(floor), Summary::of(system)) else {
            return Err(BenchError::Check("no samples".to_string()));
        };
        let ratio = system.median.as_secs_f64() / floor.median.as_secs_f64();
        Ok(Row {
            measure: self.measure.to_string(),
            system: format!("{} ms ({})", ms(system.median), ms(system.p90)),
            floor: format!("{} ms ({}) {}", ms(floor.median), ms(floor.p90), self.floor),
            ratio: format!("{ratio:.2}x"),
            target: self.target,
            verdict: if ratio <= self.max_ratio {
                Verdict::Met
            } else {
                Verdict::NotMet
            },
            figures: [
                crate::latency_figures("", &system),
                crate::latency_figures("floor_", &floor),
                vec![("ratio", ratio)],
            ]
            .concat(),
            series,
        })
    }
}
