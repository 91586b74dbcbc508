//! The `GET /metrics/sandboxes` text: worker totals and ready sandboxes per tuple.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use chrono::{DateTime, Utc};

use super::ready::ReadyIndex;
use super::registry::Registry;
use crate::api::timestamp;
use crate::tuple::SandboxTuple;

/// Counts taken under the broker lock; rendered after it is released.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(super) struct Availability {
    pub registered: usize,
    pub active: usize,
    pub static_workers: usize,
    /// Hints of active workers per tuple; the map's order is the row order (virtualization,
    /// then image by bytes, then cpu numerically).
    pub kinds: BTreeMap<SandboxTuple, usize>,
}

impl Availability {
    /// Counts workers and the hints of active workers. Nothing is consumed.
    pub fn collect(registry: &Registry, ready: &ReadyIndex, now: DateTime<Utc>) -> Self {
        let mut out = Self::default();
        for worker in registry.iter() {
            out.registered += 1;
            if worker.is_active(now) {
                out.active += 1;
            }
            if worker.is_static {
                out.static_workers += 1;
            }
        }
        for (worker, tuple) in ready.iter() {
            if registry.is_active(worker, now) {
                *out.kinds.entry(tuple.clone()).or_default() += 1;
            }
        }
        out
    }

    /// Renders the text, LF-terminated lines, TAB-separated table.
    pub fn render(&self, broker_id: &str, now: DateTime<Utc>) -> String {
        let available: usize = self.kinds.values().sum();
        let mut out = String::with_capacity(512 + self.kinds.len() * 48);
        let _ = writeln!(out, "# traforato broker sandbox availability");
        let _ = writeln!(out, "generated_at={}", timestamp::format_secs(&now));
        let _ = writeln!(out, "broker_id={broker_id}");
        let _ = writeln!(out, "workers_registered_total={}", self.registered);
        let _ = writeln!(out, "workers_active_total={}", self.active);
        let _ = writeln!(
            out,
            "workers_unavailable_total={}",
            self.registered - self.active
        );
        let _ = writeln!(out, "workers_static_total={}", self.static_workers);
        let _ = writeln!(
            out,
            "workers_dynamic_total={}",
            self.registered - self.static_workers
        );
        let _ = writeln!(out, "available_sandboxes_total={available}");
        let _ = writeln!(out, "available_sandbox_kinds_total={}", self.kinds.len());
        out.push('\n');
        out.push_str("virtualization\timage\tcpu\tavailable\n");
        for (tuple, count) in &self.kinds {
            let _ = writeln!(
                out,
                "{}\t{}\t{}\t{count}",
                tuple.virtualization, tuple.image, tuple.cpu
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    fn t(v: &str, image: &str, cpu: u32) -> SandboxTuple {
        SandboxTuple {
            virtualization: v.into(),
            image: image.into(),
            cpu,
        }
    }

    #[test]
    fn renders_exactly() {
        let mut a = Availability {
            registered: 3,
            active: 2,
            static_workers: 1,
            kinds: BTreeMap::new(),
        };
        a.kinds.insert(t("vetu", "ubuntu:24.04", 10), 1);
        a.kinds.insert(t("vetu", "ubuntu:24.04", 2), 3);
        a.kinds.insert(t("vetu", "Zeta", 1), 1);
        a.kinds.insert(t("tart", "x", 1), 1);
        let now = Utc.with_ymd_and_hms(2026, 2, 25, 12, 0, 0).unwrap()
            + chrono::Duration::milliseconds(250);
        let text = a.render("broker_local", now);
        assert_eq!(
            text,
            "# traforato broker sandbox availability\n\
             generated_at=2026-02-25T12:00:00Z\n\
             broker_id=broker_local\n\
             workers_registered_total=3\n\
             workers_active_total=2\n\
             workers_unavailable_total=1\n\
             workers_static_total=1\n\
             workers_dynamic_total=2\n\
             available_sandboxes_total=6\n\
             available_sandbox_kinds_total=4\n\
             \n\
             virtualization\timage\tcpu\tavailable\n\
             tart\tx\t1\t1\n\
             vetu\tZeta\t1\t1\n\
             vetu\tubuntu:24.04\t2\t3\n\
             vetu\tubuntu:24.04\t10\t1\n"
        );
    }
}
