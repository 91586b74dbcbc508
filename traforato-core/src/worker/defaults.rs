//! The worker's defaults and what they are derived from on this host: one place for the
//! services' flags and for [`Worker::builder`](super::Worker::builder).

use std::time::Duration;

use super::CapacityConfig;

/// How often the TTL reaper runs.
pub const REAP_INTERVAL: Duration = Duration::from_secs(1);

/// TTL of a sandbox created without one.
pub const DEFAULT_TTL: Duration = Duration::from_secs(30 * 60);

/// Longest TTL a create or a lease may ask for.
pub const DEFAULT_MAX_TTL: Duration = Duration::from_secs(24 * 60 * 60);

/// Registration heartbeat period.
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(30);

/// Heartbeat jitter, in percent.
pub const DEFAULT_JITTER_PERCENT: u8 = 20;

/// How often a worker asks its broker whether it restarted, between heartbeats.
pub const DEFAULT_REGISTRATION_PROBE: Duration = Duration::from_secs(1);

/// Memory offered per core when the memory is not set.
pub const DEFAULT_MIB_PER_CORE: u64 = 1024;

/// Default cpu quota handed out per core to overcommitting (container) sandboxes.
pub const DEFAULT_CPU_OVERCOMMIT: u32 = 32;

/// Default memory limits handed out per MiB offered to overcommitting (container) sandboxes.
pub const DEFAULT_MEMORY_OVERCOMMIT: u32 = 32;

/// Default high watermark of the memory container sandboxes actually use, in percent of the
/// host's memory.
pub const DEFAULT_MEMORY_HIGH_WATERMARK_PERCENT: f64 = 90.0;

/// Default ceiling of idle warm sandboxes per tuple.
pub const DEFAULT_MAX_WARM_PER_TUPLE: u32 = 8;

/// Most warm containers provisioned at once by default: one per core, at most this.
pub const MAX_DEFAULT_WARM_FILL_PARALLELISM: u32 = 4;

/// Warm containers provisioned at once by default on this host: one per core, at most
/// [`MAX_DEFAULT_WARM_FILL_PARALLELISM`].
pub fn default_warm_fill_parallelism() -> u32 {
    host_cores().clamp(1, MAX_DEFAULT_WARM_FILL_PARALLELISM)
}

/// The host's logical CPUs (1 when unknown).
pub fn host_cores() -> u32 {
    std::thread::available_parallelism()
        .map(|n| u32::try_from(n.get()).unwrap_or(u32::MAX))
        .unwrap_or(1)
}

/// The host's memory in MiB (`MemTotal` of `/proc/meminfo`), if it can be read.
pub fn host_memory_mib() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kib >> 10)
}

impl CapacityConfig {
    /// The defaults of a worker whose backends overcommit (containers): the default
    /// overcommit factors, a memory watermark at 90 % of the host's memory (none when it
    /// cannot be read), at most 8 idle warm sandboxes per tuple, one warm provision per core
    /// at once (at most 4).
    pub fn for_containers() -> Self {
        Self {
            cpu_overcommit: DEFAULT_CPU_OVERCOMMIT,
            memory_overcommit: DEFAULT_MEMORY_OVERCOMMIT,
            memory_high_watermark_mib: host_memory_mib()
                .map(|host| (host as f64 * DEFAULT_MEMORY_HIGH_WATERMARK_PERCENT / 100.0) as u64),
            max_warm_per_tuple: Some(DEFAULT_MAX_WARM_PER_TUPLE),
            warm_fill_parallelism: default_warm_fill_parallelism(),
        }
    }

    /// The defaults of a worker of VMs: each sandbox reserves what it asks for, at most 8 idle
    /// warm sandboxes per tuple, one warm provision at a time.
    pub fn for_vms() -> Self {
        Self {
            max_warm_per_tuple: Some(DEFAULT_MAX_WARM_PER_TUPLE),
            ..Self::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_values() {
        assert!(host_cores() >= 1);
        if cfg!(target_os = "linux") {
            assert!(host_memory_mib().is_some_and(|m| m > 0));
        }
        let containers = CapacityConfig::for_containers();
        assert_eq!(containers.cpu_overcommit, DEFAULT_CPU_OVERCOMMIT);
        if let (Some(watermark), Some(host)) =
            (containers.memory_high_watermark_mib, host_memory_mib())
        {
            assert!(watermark < host && watermark >= host * 8 / 10);
        }
        assert_eq!(CapacityConfig::for_vms().cpu_overcommit, 1);
    }
}
