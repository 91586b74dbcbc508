//! Placement helpers: the `placement_retry` query value and the candidate list handed to the
//! scheduler for a create.

use chrono::{DateTime, Utc};

use super::ready::ReadyIndex;
use super::registry::Registry;
use super::BrokerError;
use crate::scheduler::WorkerLoad;
use crate::tuple::SandboxTuple;

/// Parses the raw `placement_retry` query value: trimmed, empty or absent means 0, otherwise
/// a non-negative integer (values beyond `u32` saturate; they are exhausted anyway).
pub(super) fn parse_placement_retry(raw: Option<&str>) -> Result<u32, BrokerError> {
    let raw = raw.map(str::trim).unwrap_or("");
    if raw.is_empty() {
        return Ok(0);
    }
    let value: i64 = raw
        .parse()
        .map_err(|_| BrokerError::InvalidPlacementRetry)?;
    if value < 0 {
        return Err(BrokerError::InvalidPlacementRetry);
    }
    Ok(u32::try_from(value).unwrap_or(u32::MAX))
}

/// Why no cold candidate exists; the `reason` label of `broker.no_capacity.total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum NoCandidate {
    /// No worker is active.
    AllInactive,
    /// Workers are active, but none serves the tuple's virtualization.
    VirtualizationUnserved,
    /// Workers serve it, but none has the requested SKU.
    SkuUnmatched,
}

impl NoCandidate {
    pub fn reason(self) -> &'static str {
        match self {
            NoCandidate::AllInactive => "no_worker",
            NoCandidate::VirtualizationUnserved => "no_worker_for_virtualization",
            NoCandidate::SkuUnmatched => "no_matching_hardware_sku",
        }
    }
}

/// The active workers that serve the tuple's virtualization (with `sku`, when one is
/// requested) in registration order, with their ready sandboxes and queued starts of `tuple`.
pub(super) fn candidates(
    registry: &Registry,
    ready: &ReadyIndex,
    tuple: &SandboxTuple,
    sku: &str,
    now: DateTime<Utc>,
) -> Result<Vec<WorkerLoad>, NoCandidate> {
    let mut any_active = false;
    let mut any_serving = false;
    let hints = ready.per_worker(tuple);
    let mut candidates: Vec<WorkerLoad> = registry
        .iter()
        .filter(|w| w.is_active(now))
        .inspect(|_| any_active = true)
        .filter(|w| w.serves(&tuple.virtualization))
        .inspect(|_| any_serving = true)
        .filter(|w| sku.is_empty() || w.hardware_sku == sku)
        .map(|w| {
            let mut load = w.load(tuple);
            if let Some(&(count, oldest)) = hints.get(&w.id) {
                load.ready = count;
                load.oldest_ready = Some(oldest);
            }
            load
        })
        .collect();
    if !any_active {
        return Err(NoCandidate::AllInactive);
    }
    if !any_serving {
        return Err(NoCandidate::VirtualizationUnserved);
    }
    if candidates.is_empty() {
        return Err(NoCandidate::SkuUnmatched);
    }
    candidates.sort_by_key(|w| w.order);
    Ok(candidates)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_values() {
        assert_eq!(parse_placement_retry(None), Ok(0));
        assert_eq!(parse_placement_retry(Some("")), Ok(0));
        assert_eq!(parse_placement_retry(Some("  ")), Ok(0));
        assert_eq!(parse_placement_retry(Some(" 2 ")), Ok(2));
        assert_eq!(parse_placement_retry(Some("+1")), Ok(1));
        assert_eq!(parse_placement_retry(Some("99999999999")), Ok(u32::MAX));
        for bad in ["-1", "x", "1.5", "0x1", "1 2"] {
            assert_eq!(
                parse_placement_retry(Some(bad)),
                Err(BrokerError::InvalidPlacementRetry),
                "{bad}"
            );
        }
    }
}
