//! The warm-pool key `(virtualization, image, cpu)` and the create defaults applied to it.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The default image of the `tart` virtualization when a create names none.
pub const TART_DEFAULT_IMAGE: &str = "ghcr.io/cirruslabs/macos-tahoe-base:latest";

/// What a sandbox is made of; the key of warm pools and ready hints.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SandboxTuple {
    /// Backend name, e.g. `container`, `vetu`, `fake`.
    pub virtualization: String,
    /// Image reference as the client wrote it (after trimming).
    pub image: String,
    /// Number of CPUs, at least 1.
    pub cpu: u32,
}

impl SandboxTuple {
    /// Normalises a tuple: trims, applies `default_virtualization` when empty, cpu ≤ 0 → 1,
    /// and the `tart` default image. Virtualization is not lowercased.
    pub fn normalize(
        virtualization: &str,
        image: &str,
        cpu: i64,
        default_virtualization: &str,
    ) -> Self {
        let mut virtualization = virtualization.trim().to_string();
        if virtualization.is_empty() {
            virtualization = default_virtualization.trim().to_string();
        }
        let mut image = image.trim().to_string();
        if image.is_empty() && virtualization == "tart" {
            image = TART_DEFAULT_IMAGE.to_string();
        }
        let cpu = if cpu <= 0 {
            1
        } else {
            cpu.min(u32::MAX as i64) as u32
        };
        Self {
            virtualization,
            image,
            cpu,
        }
    }
}

impl fmt::Display for SandboxTuple {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.virtualization, self.image, self.cpu)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_apply() {
        let t = SandboxTuple::normalize(" ", "", 0, "vetu");
        assert_eq!(
            (t.virtualization.as_str(), t.image.as_str(), t.cpu),
            ("vetu", "", 1)
        );
        let t = SandboxTuple::normalize("tart", " ", -3, "vetu");
        assert_eq!(t.image, TART_DEFAULT_IMAGE);
        let t = SandboxTuple::normalize("VETU", " ubuntu:24.04 ", 2, "vetu");
        assert_eq!(t.virtualization, "VETU");
        assert_eq!(t.image, "ubuntu:24.04");
    }
}
