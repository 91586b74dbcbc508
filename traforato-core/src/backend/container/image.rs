//! Images of the `container` backend: what a sandbox root is made of. An image resolves to an
//! [`ImageLayout`]: read-only lower directories for the overlay plus host directories
//! bind-mounted read-only into the root. Built in: `host` (the host's `/usr` and friends with
//! a generated `/etc`) and local directories from the configuration; more sources (an OCI
//! registry with a content-addressed layer cache) plug in through [`ImageSource`].

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use rustix::fs::{chownat, AtFlags, Gid, Uid, CWD};

use crate::backend::{BackendError, ImageCatalog};

/// A host directory mounted read-only inside the sandbox root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadOnlyBind {
    /// Host directory.
    pub source: PathBuf,
    /// Path inside the root, relative (e.g. `usr`). The lower layers must contain a directory
    /// there to mount on.
    pub target: String,
}

/// How a sandbox root is assembled from an image.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageLayout {
    /// Overlay lower directories, topmost first. Never written to.
    pub lower_dirs: Vec<PathBuf>,
    /// Host directories bind-mounted read-only on top of the overlay.
    pub read_only_binds: Vec<ReadOnlyBind>,
    /// What the image says about running commands in it.
    pub defaults: RunDefaults,
    /// Kept by the sandbox until its root is gone, so that its source does not remove the
    /// lower directories while they are mounted.
    pub hold: ImageHold,
    /// This create waited for the image to be pulled.
    pub pulled: bool,
}

/// What a sandbox keeps of its image source while it lives (see [`ImageLayout::hold`]): an
/// opaque guard whose drop tells the source the layout is no longer used. Clones share the
/// guard; all layouts compare equal whatever they hold.
#[derive(Clone, Default)]
pub struct ImageHold(Option<Arc<dyn std::any::Any + Send + Sync>>);

impl ImageHold {
    /// A hold that drops `guard` once the last clone is dropped.
    pub fn new(guard: impl std::any::Any + Send + Sync) -> Self {
        Self(Some(Arc::new(guard)))
    }
}

impl std::fmt::Debug for ImageHold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "ImageHold(held)"
        } else {
            "ImageHold(none)"
        })
    }
}

impl PartialEq for ImageHold {
    fn eq(&self, _other: &Self) -> bool {
        true
    }
}

impl Eq for ImageHold {}

/// What an image says about running commands in it (an OCI image config's `Env`,
/// `WorkingDir` and `User`): under what a request sets, over the sandbox's base environment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunDefaults {
    /// Environment of every command and run (`PATH` among them, usually).
    pub env: BTreeMap<String, String>,
    /// The working directory of commands that name none (else `/workspace`).
    pub working_dir: Option<String>,
    /// The user commands run as (`name`, `uid`, `name:group`, `uid:gid`), resolved against
    /// the image's own `/etc/passwd` and `/etc/group`; `None`: the sandbox's root.
    pub user: Option<String>,
}

/// A provider of images beyond the built-in ones (e.g. an OCI registry client that unpacks
/// layers once into a content-addressed cache and returns the layer dirs as lower dirs).
#[async_trait]
pub trait ImageSource: Send + Sync + 'static {
    /// The layout of `image`, fetching it first if needed; `None` when this source does not
    /// know the reference.
    async fn layout(&self, image: &str) -> Result<Option<ImageLayout>, BackendError>;

    /// The operator's view of what this source keeps, if it keeps images on disk.
    fn catalog(&self) -> Option<&dyn ImageCatalog> {
        None
    }
}

/// The name of the built-in host image.
pub const HOST_IMAGE: &str = "host";

/// Top-level host paths the `host` image takes over read-only: as symlinks when they are
/// symlinks on the host (merged `/usr`), as read-only binds when they are directories.
const HOST_SYSTEM_DIRS: [&str; 7] = ["usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32"];

/// Resolves image references: built-ins first, then the added sources in order.
pub(crate) struct ImageStore {
    host: ImageLayout,
    dirs: BTreeMap<String, PathBuf>,
    default_image: String,
    sources: Vec<Arc<dyn ImageSource>>,
}

impl ImageStore {
    pub(crate) fn new(
        host: ImageLayout,
        dirs: BTreeMap<String, PathBuf>,
        default_image: String,
    ) -> Self {
        Self {
            host,
            dirs,
            default_image,
            sources: Vec::new(),
        }
    }

    pub(crate) fn add_source(&mut self, source: Arc<dyn ImageSource>) {
        self.sources.push(source);
    }

    /// The first source's catalog, if one keeps images on disk.
    pub(crate) fn catalog(&self) -> Option<&dyn ImageCatalog> {
        self.sources.iter().find_map(|s| s.catalog())
    }

    /// The layout for `image` (empty means the default image).
    pub(crate) async fn resolve(&self, image: &str) -> Result<ImageLayout, BackendError> {
        let name = if image.trim().is_empty() {
            self.default_image.as_str()
        } else {
            image.trim()
        };
        if name == HOST_IMAGE {
            return Ok(self.host.clone());
        }
        if let Some(dir) = self.dirs.get(name) {
            if !dir.is_dir() {
                return Err(BackendError::ImageUnavailable {
                    image: name.to_string(),
                    reason: format!("directory {} does not exist", dir.display()),
                });
            }
            return Ok(ImageLayout {
                lower_dirs: vec![dir.clone()],
                ..ImageLayout::default()
            });
        }
        for source in &self.sources {
            if let Some(layout) = source.layout(name).await? {
                return Ok(layout);
            }
        }
        // The operator's image names are not listed: the error reaches the client.
        Err(BackendError::ImageNotFound {
            image: name.to_string(),
        })
    }
}

/// What the `host` image's skeleton holds besides the system dirs.
fn skeleton_files(hostname: &str) -> Vec<(&'static str, String)> {
    vec![
        (
            "etc/passwd",
            "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
                .to_string(),
        ),
        ("etc/group", "root:x:0:\ntty:x:5:\nnogroup:x:65534:\n".to_string()),
        (
            "etc/hosts",
            format!("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t{hostname}\n"),
        ),
        ("etc/resolv.conf", String::new()),
        (
            "etc/nsswitch.conf",
            "passwd: files\ngroup: files\nshadow: files\nhosts: files dns\n".to_string(),
        ),
        ("etc/hostname", format!("{hostname}\n")),
    ]
}

/// Empty directories of the skeleton and their modes.
const SKELETON_DIRS: [(&str, u32); 12] = [
    ("etc", 0o755),
    ("proc", 0o555),
    ("dev", 0o755),
    ("sys", 0o555),
    ("tmp", 0o1777),
    ("var", 0o755),
    ("var/tmp", 0o1777),
    ("run", 0o755),
    ("home", 0o755),
    ("root", 0o700),
    ("workspace", 0o755),
    ("mnt", 0o755),
];

/// Builds (once, content-addressed by what it contains) the lower directory of the `host`
/// image below `images_dir` and returns its layout. Files are owned by the sandbox's root
/// (`uid`), so the sandbox may edit `/etc` through the overlay.
pub(crate) fn host_image(images_dir: &Path, uid: u32, hostname: &str) -> io::Result<ImageLayout> {
    let mut links = Vec::new();
    let mut binds = Vec::new();
    for name in HOST_SYSTEM_DIRS {
        let host_path = Path::new("/").join(name);
        match fs::symlink_metadata(&host_path) {
            Ok(meta) if meta.file_type().is_symlink() => {
                links.push((name, fs::read_link(&host_path)?));
            }
            Ok(meta) if meta.is_dir() => binds.push(ReadOnlyBind {
                source: host_path,
                target: name.to_string(),
            }),
            _ => {}
        }
    }
    let files = skeleton_files(hostname);
    // The directory name changes with anything that changes its content, so a skeleton that
    // running sandboxes still use as a lower dir is never modified in place.
    let mut identity = format!("v1|{uid}|{hostname}|");
    for (name, target) in &links {
        identity.push_str(&format!("{name}->{}|", target.display()));
    }
    for bind in &binds {
        identity.push_str(&format!("{}|", bind.target));
    }
    let dir = images_dir.join(format!("host-{:016x}", fnv1a(identity.as_bytes())));
    if !dir.is_dir() {
        let tmp = images_dir.join(format!(".host-tmp-{}", uuid::Uuid::new_v4().simple()));
        let built = build_skeleton(&tmp, &links, &binds, &files, uid);
        if let Err(e) = built {
            let _ = fs::remove_dir_all(&tmp);
            return Err(e);
        }
        if let Err(e) = fs::rename(&tmp, &dir) {
            let _ = fs::remove_dir_all(&tmp);
            // Another backend sharing the state dir won the race.
            if !dir.is_dir() {
                return Err(e);
            }
        }
    }
    Ok(ImageLayout {
        lower_dirs: vec![dir],
        read_only_binds: binds,
        ..ImageLayout::default()
    })
}

fn build_skeleton(
    root: &Path,
    links: &[(&str, PathBuf)],
    binds: &[ReadOnlyBind],
    files: &[(&str, String)],
    uid: u32,
) -> io::Result<()> {
    fs::create_dir(root)?;
    let mode = |p: &Path, m: u32| fs::set_permissions(p, fs::Permissions::from_mode(m));
    mode(root, 0o755)?;
    for (name, m) in SKELETON_DIRS {
        let p = root.join(name);
        fs::create_dir_all(&p)?;
        mode(&p, m)?;
    }
    for bind in binds {
        let p = root.join(&bind.target);
        fs::create_dir_all(&p)?;
        mode(&p, 0o755)?;
    }
    for (name, target) in links {
        symlink(target, root.join(name))?;
    }
    for (name, content) in files {
        let p = root.join(name);
        fs::write(&p, content)?;
        mode(&p, 0o644)?;
    }
    chown_tree(root, uid)
}

/// Gives every entry below `root` (symlinks themselves, not their targets) to `uid:uid`.
/// Bind-mount targets are included; the read-only host dirs mounted on them hide them.
fn chown_tree(root: &Path, uid: u32) -> io::Result<()> {
    let owner = Uid::from_raw(uid);
    let group = Gid::from_raw(uid);
    chownat(
        CWD,
        root,
        Some(owner),
        Some(group),
        AtFlags::SYMLINK_NOFOLLOW,
    )?;
    for entry in fs::read_dir(root)? {
        let entry = entry?;
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            chown_tree(&path, uid)?;
        } else {
            chownat(
                CWD,
                &path,
                Some(owner),
                Some(group),
                AtFlags::SYMLINK_NOFOLLOW,
            )?;
        }
    }
    Ok(())
}

/// 64-bit FNV-1a: a stable name for generated content (not a security boundary).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, b| {
        (hash ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv_is_stable() {
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn skeleton_names_the_hostname() {
        let files = skeleton_files("box");
        let hosts = &files.iter().find(|(n, _)| *n == "etc/hosts").unwrap().1;
        assert!(hosts.contains("127.0.1.1\tbox"));
        assert!(files
            .iter()
            .any(|(n, c)| *n == "etc/hostname" && c == "box\n"));
    }

    #[tokio::test]
    async fn resolves_builtin_and_directory_images() {
        let host = ImageLayout {
            lower_dirs: vec![PathBuf::from("/skel")],
            ..ImageLayout::default()
        };
        let dir = tempfile::tempdir().unwrap();
        let mut dirs = BTreeMap::new();
        dirs.insert("mine".to_string(), dir.path().to_path_buf());
        dirs.insert("gone".to_string(), dir.path().join("missing"));
        let store = ImageStore::new(host.clone(), dirs, "host".into());
        assert_eq!(store.resolve("").await.unwrap(), host);
        assert_eq!(store.resolve(" host ").await.unwrap(), host);
        assert_eq!(
            store.resolve("mine").await.unwrap().lower_dirs,
            vec![dir.path().to_path_buf()]
        );
        assert!(matches!(
            store.resolve("gone").await,
            Err(BackendError::ImageUnavailable { .. })
        ));
        match store.resolve("ubuntu:24.04").await {
            Err(BackendError::ImageNotFound { image }) => assert_eq!(image, "ubuntu:24.04"),
            other => panic!("expected ImageNotFound, got {other:?}"),
        }
    }

    struct OneImage;

    #[async_trait]
    impl ImageSource for OneImage {
        async fn layout(&self, image: &str) -> Result<Option<ImageLayout>, BackendError> {
            Ok((image == "oci:x").then(|| ImageLayout {
                lower_dirs: vec![PathBuf::from("/cache/x")],
                ..ImageLayout::default()
            }))
        }
    }

    #[tokio::test]
    async fn added_sources_are_asked_after_builtins() {
        let host = ImageLayout {
            lower_dirs: vec![PathBuf::from("/skel")],
            ..ImageLayout::default()
        };
        let mut store = ImageStore::new(host, BTreeMap::new(), "host".into());
        store.add_source(Arc::new(OneImage));
        assert_eq!(
            store.resolve("oci:x").await.unwrap().lower_dirs,
            vec![PathBuf::from("/cache/x")]
        );
        assert!(store.resolve("oci:y").await.is_err());
    }
}
