//! Configuration of the `container` backend: where its state lives, images, limits and the
//! program that becomes each sandbox's init.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use super::oci::RegistrySettings;

/// The first argument that makes a binary act as the sandbox init (see
/// [`super::init_main_if_requested`]).
pub const INIT_ARG: &str = "__traforato-sandbox-init";

/// The default first host uid (and gid) of the range that sandbox uids 0..65535 map to.
///
/// `0x7000_0000` lies just above systemd's container range (`0x80000..=0x6fffffff`) and below
/// 2^31, so it neither collides with nspawn containers nor upsets tools that keep uids signed.
pub const DEFAULT_UID_BASE: u32 = 0x7000_0000;

/// How many uids (and gids) each sandbox's user namespace maps.
pub const UID_COUNT: u32 = 65_536;

/// Most spare inits a backend keeps ([`ContainerConfig::spare_inits`]).
pub const MAX_SPARE_INITS: usize = 64;

/// Settings of a [`super::ContainerBackend`]. Plain data: the server builds it from its own
/// configuration; nothing here is read from the environment.
#[derive(Debug, Clone)]
pub struct ContainerConfig {
    /// Holds one directory per sandbox (`<vm_id>/scratch` is a tmpfs with the writable layer,
    /// `<vm_id>/rootfs` the overlay root) and `images/` (generated image skeletons).
    /// Default `/run/traforato`. One backend per state dir: `cleanup_leftovers` removes every
    /// sandbox directory it finds there.
    pub state_dir: PathBuf,
    /// Local directory images: name → directory used read-only as the overlay's lower layer.
    /// Files owned by host uids outside the mapped range appear as `nobody` inside and are
    /// read-only to the sandbox; `chown -R` the tree to [`ContainerConfig::uid_base`] to make
    /// it writable through the overlay.
    pub images: BTreeMap<String, PathBuf>,
    /// The image used when a create names none. Default `host`.
    pub default_image: String,
    /// Name of the cgroup directory, below the root of each cgroup hierarchy, that holds the
    /// sandboxes' cgroups (`<hierarchy>/<cgroup_parent>/<vm_id>`). Default `traforato`.
    pub cgroup_parent: String,
    /// The program run as each sandbox's init, always with [`INIT_ARG`] as first argument.
    /// Default `/proc/self/exe`: the worker binary itself, which must then call
    /// [`super::init_main_if_requested`] first thing in `main`. The `traforato-sandbox-init`
    /// binary of this crate works too.
    pub init_program: PathBuf,
    /// Maximum number of tasks in a sandbox (`pids.max`). Default 512.
    pub pids_limit: u64,
    /// Size cap of each sandbox's writable layer (a tmpfs), in MiB. Pages written by the
    /// sandbox also count against its memory limit. Default 1024.
    pub scratch_size_mib: u64,
    /// First host uid/gid of the range that sandbox uids/gids 0..65535 map to. Default
    /// [`DEFAULT_UID_BASE`]. All sandboxes share the range; they cannot see each other's
    /// processes or files anyway.
    pub uid_base: u32,
    /// Host name inside every sandbox. Default `sandbox`.
    pub hostname: String,
    /// How long a sandbox may take to come up before provisioning fails. Default 10 s.
    pub setup_timeout: Duration,
    /// Keep a pre-warmed Python zygote in every sandbox (started when a warm-pool sandbox is
    /// provisioned, after the first Python run of one made for a waiting create; it forks
    /// one child per Python run-code; about 1 ms instead of a fresh interpreter's
    /// ~8 ms). It costs one idle interpreter per sandbox (a few MiB, charged to the
    /// sandbox's memory limit). Without `python3` in the image, or if the zygote dies, runs
    /// start a fresh interpreter. Default true.
    pub python_zygote: bool,
    /// Start the Python zygote of warm-pool sandboxes too only after their first Python run
    /// (a sandbox made for a waiting create always does): an idle warm sandbox then costs
    /// about 1 MiB instead of about 4, and the first run of a claimed sandbox starts a fresh
    /// interpreter. Default false.
    pub lazy_zygote: bool,
    /// Sandbox inits kept started ahead, each in a cgroup of its own, for cold creates to
    /// take (cgroup v1 only; v2 cannot rename a cgroup). Moving a fresh init into its cgroup
    /// waits for an RCU grace period when the host was idle, most of a cold create's time;
    /// a spare has paid it already. Each costs one idle process (about 1 MiB). 0 turns them
    /// off; at most [`MAX_SPARE_INITS`]. Default 2.
    pub spare_inits: usize,
    /// Where images named by OCI reference (`alpine:3.20`, `ghcr.io/org/img:tag`) are pulled
    /// and unpacked (`blobs/`, `layers/`), created on the first pull. `None`: only `host` and
    /// the directory images. Default `/var/lib/traforato/images` (on disk, unlike the state
    /// dir).
    pub oci_dir: Option<PathBuf>,
    /// How registries are reached: mirrors, plain-HTTP registries, credentials, timeouts.
    pub registries: RegistrySettings,
    /// Most bytes [`ContainerConfig::oci_dir`] may hold: past it, images no sandbox uses are
    /// removed, least recently used first (after each pull, and when a sandbox ends while
    /// the directory is over). `None` (the default): no limit.
    pub oci_max_disk: Option<u64>,
    /// Network egress: the sandboxes' address range, the ranges they never reach, their DNS
    /// upstream.
    pub network: super::net::NetworkSettings,
}

impl Default for ContainerConfig {
    fn default() -> Self {
        Self {
            state_dir: PathBuf::from("/run/traforato"),
            images: BTreeMap::new(),
            default_image: "host".to_string(),
            cgroup_parent: "traforato".to_string(),
            init_program: PathBuf::from("/proc/self/exe"),
            pids_limit: 512,
            scratch_size_mib: 1024,
            uid_base: DEFAULT_UID_BASE,
            hostname: "sandbox".to_string(),
            setup_timeout: Duration::from_secs(10),
            python_zygote: true,
            lazy_zygote: false,
            spare_inits: 2,
            oci_dir: Some(PathBuf::from("/var/lib/traforato/images")),
            registries: RegistrySettings::default(),
            oci_max_disk: None,
            network: super::net::NetworkSettings::default(),
        }
    }
}

#[cfg(feature = "test-util")]
impl ContainerConfig {
    /// A configuration for tests, meant to be changed with struct-update syntax: a state dir
    /// of its own in the temp dir and a cgroup parent of its own (both named after `tag` and
    /// a random id), `init_program` as every sandbox's init, at most 64 tasks per sandbox, and
    /// no OCI image directory (hermetic: an unknown image is never pulled from the internet).
    pub fn for_tests(tag: &str, init_program: impl Into<PathBuf>) -> Self {
        let id = uuid::Uuid::new_v4().simple().to_string();
        Self {
            state_dir: std::env::temp_dir().join(format!("traforato-{tag}-{}", &id[..8])),
            cgroup_parent: format!("traforato-{tag}-{}", &id[..12]),
            init_program: init_program.into(),
            pids_limit: 64,
            oci_dir: None,
            ..Self::default()
        }
    }
}

impl ContainerConfig {
    /// Checks values that would otherwise fail late; returns what is wrong.
    pub(crate) fn validate(&self) -> Result<(), String> {
        if !self.state_dir.is_absolute() {
            return Err(format!(
                "state_dir {} must be an absolute path",
                self.state_dir.display()
            ));
        }
        let parent_ok = !self.cgroup_parent.is_empty()
            && self
                .cgroup_parent
                .split('/')
                .all(|seg| !seg.is_empty() && seg != "." && seg != "..");
        if !parent_ok {
            return Err(format!(
                "cgroup_parent {:?} must be a relative path without empty, `.` or `..` segments",
                self.cgroup_parent
            ));
        }
        if self.pids_limit < 8 {
            return Err("pids_limit must be at least 8".to_string());
        }
        if self.scratch_size_mib == 0 {
            return Err("scratch_size_mib must be positive".to_string());
        }
        if self.spare_inits > MAX_SPARE_INITS {
            return Err(format!("spare_inits must be at most {MAX_SPARE_INITS}"));
        }
        if self.uid_base == 0 || self.uid_base.checked_add(UID_COUNT).is_none() {
            return Err("uid_base must be positive and leave room for 65536 uids".to_string());
        }
        let host_ok = !self.hostname.is_empty()
            && self.hostname.len() <= 64
            && self
                .hostname
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
        if !host_ok {
            return Err(format!(
                "hostname {:?} is not a valid host name",
                self.hostname
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_valid() {
        assert_eq!(ContainerConfig::default().validate(), Ok(()));
    }

    #[test]
    fn rejects_bad_values() {
        let bad = |f: fn(&mut ContainerConfig)| {
            let mut c = ContainerConfig::default();
            f(&mut c);
            c.validate().unwrap_err()
        };
        assert!(bad(|c| c.state_dir = PathBuf::from("rel")).contains("absolute"));
        assert!(bad(|c| c.cgroup_parent = "../x".into()).contains("cgroup_parent"));
        assert!(bad(|c| c.cgroup_parent = String::new()).contains("cgroup_parent"));
        assert!(bad(|c| c.pids_limit = 1).contains("pids_limit"));
        assert!(bad(|c| c.uid_base = u32::MAX - 5).contains("uid_base"));
        assert!(bad(|c| c.hostname = "a b".into()).contains("hostname"));
        assert!(bad(|c| c.spare_inits = 100_000).contains("spare_inits"));
    }
}
