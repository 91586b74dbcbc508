//! Test fixtures for OCI images (the `test-util` feature): a real registry on loopback
//! (Debian's `docker-registry`, in a temporary directory, on a port of its own), images pushed
//! to it from layers built here (tar, gzip, zstd; the host's static busybox as a base), for the
//! integration tests and the start-up benchmark. Panics on failures: it is for tests.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use oci_client::client::{ClientConfig, ClientProtocol, Config, ImageLayer};
use oci_client::secrets::RegistryAuth;

/// A `docker-registry` serving from a temporary directory on `127.0.0.1:<port>`.
pub struct LocalRegistry {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl LocalRegistry {
    /// A registry that wants no login; `Err` says what this machine lacks to run one (root,
    /// `docker-registry`, `/bin/busybox` for the images).
    pub fn start() -> Result<Self, String> {
        Self::start_with(None)
    }

    /// A registry that wants `user` and `password` (htpasswd with bcrypt).
    pub fn start_with_login(user: &str, password: &str) -> Result<Self, String> {
        Self::start_with(Some((user, password)))
    }

    fn start_with(login: Option<(&str, &str)>) -> Result<Self, String> {
        if !rustix::process::geteuid().is_root() {
            return Err("the container backend needs root (runs in CI as root)".to_string());
        }
        if !Path::new("/bin/busybox").is_file()
            || Command::new("docker-registry")
                .arg("--version")
                .output()
                .is_err()
        {
            return Err(
                "needs docker-registry and busybox-static (scripts/test installs them)".to_string(),
            );
        }
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let config = dir.path().join("config.yml");
        let mut yaml = format!(
            "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: false\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
            dir.path().join("data").display()
        );
        if let Some((user, password)) = login {
            let hash = Command::new("/usr/bin/python3")
                .args([
                    "-c",
                    "import crypt, sys; print(crypt.crypt(sys.argv[1], crypt.mksalt(crypt.METHOD_BLOWFISH)))",
                    password,
                ])
                .output()
                .expect("python3 for a bcrypt hash");
            let hash = String::from_utf8(hash.stdout).unwrap();
            let htpasswd = dir.path().join("htpasswd");
            std::fs::write(&htpasswd, format!("{user}:{}\n", hash.trim())).unwrap();
            yaml.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: test\n    path: {}\n",
                htpasswd.display()
            ));
        }
        std::fs::write(&config, yaml).unwrap();
        let log = std::fs::File::create(dir.path().join("requests.log")).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let registry = Self { child, port, dir };
        let deadline = Instant::now() + Duration::from_secs(15);
        while !registry.answers() {
            assert!(Instant::now() < deadline, "the registry did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(registry)
    }

    /// The port it listens on (on `127.0.0.1`).
    pub fn port(&self) -> u16 {
        self.port
    }

    fn answers(&self) -> bool {
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = stream.write_all(b"GET /v2/ HTTP/1.0\r\n\r\n");
        let mut head = [0u8; 12];
        // 401 is a registry that wants a login: it is up.
        stream.read_exact(&mut head).is_ok() && (head.ends_with(b"200") || head.ends_with(b"401"))
    }

    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// How many requests the registry served whose line contains `needle`.
    pub fn requests(&self, needle: &str) -> usize {
        self.request_log()
            .lines()
            .filter(|line| line.contains(needle) && line.contains("\" 200 "))
            .count()
    }

    /// The registry's access log, one request per line.
    pub fn request_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("requests.log")).unwrap_or_default()
    }

    /// The stored bytes of blob `digest` (`sha256:<hex>`), to tamper with.
    pub fn blob_file(&self, digest: &str) -> PathBuf {
        let hex = digest.trim_start_matches("sha256:");
        self.dir
            .path()
            .join("data/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    fn client() -> oci_client::Client {
        oci_client::Client::new(ClientConfig {
            protocol: ClientProtocol::Http,
            ..ClientConfig::default()
        })
    }

    /// The raw manifest of `repository:tag` and its digest.
    pub async fn manifest(&self, repository: &str, tag: &str) -> (Vec<u8>, String) {
        let reference = oci_client::Reference::with_tag(self.host(), repository.into(), tag.into());
        Self::client()
            .pull_manifest_raw(
                &reference,
                &RegistryAuth::Anonymous,
                &["application/vnd.oci.image.manifest.v1+json"],
            )
            .await
            .expect("manifest")
    }

    /// Pushes an index `repository:tag` of the manifests `entries` (tag, architecture).
    pub async fn push_index(&self, repository: &str, tag: &str, entries: &[(&str, &str)]) {
        let mut manifests = Vec::new();
        for (entry_tag, arch) in entries {
            let (bytes, digest) = self.manifest(repository, entry_tag).await;
            manifests.push(serde_json::json!({
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": digest,
                "size": bytes.len(),
                "platform": {"architecture": arch, "os": "linux"},
            }));
        }
        let index: oci_client::manifest::OciImageIndex =
            serde_json::from_value(serde_json::json!({
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.index.v1+json",
                "manifests": manifests,
            }))
            .unwrap();
        let reference = oci_client::Reference::with_tag(self.host(), repository.into(), tag.into());
        Self::client()
            .push_manifest_list(&reference, &RegistryAuth::Anonymous, index)
            .await
            .expect("push index");
    }

    /// Pushes an image of `layers` (tar bytes, compressed or not) as `repository:tag`.
    pub async fn push(&self, repository: &str, tag: &str, layers: &[Vec<u8>], env: &[&str]) {
        let pushed = Pushed {
            env,
            ..Pushed::default()
        };
        self.push_image(repository, tag, layers, pushed).await
    }

    /// [`LocalRegistry::push`] with more of the image config, or a login.
    pub async fn push_image(
        &self,
        repository: &str,
        tag: &str,
        layers: &[Vec<u8>],
        pushed: Pushed<'_>,
    ) {
        let auth = match pushed.login {
            Some((user, password)) => RegistryAuth::Basic(user.into(), password.into()),
            None => RegistryAuth::Anonymous,
        };
        let client = Self::client();
        let reference = oci_client::Reference::with_tag(self.host(), repository.into(), tag.into());
        let layers: Vec<ImageLayer> = layers
            .iter()
            .map(|data| {
                ImageLayer::new(
                    data.clone(),
                    "application/vnd.oci.image.layer.v1.tar+gzip".into(),
                    None,
                )
            })
            .collect();
        let config = serde_json::json!({
            "architecture": "amd64",
            "os": "linux",
            "config": {"Env": pushed.env, "WorkingDir": pushed.working_dir, "User": pushed.user},
            "rootfs": {"type": "layers", "diff_ids": []},
        });
        let config = Config::new(
            serde_json::to_vec(&config).unwrap(),
            "application/vnd.oci.image.config.v1+json".into(),
            None,
        );
        client
            .push(&reference, &layers, config, &auth, None)
            .await
            .expect("push");
    }
}

/// The config of an image the tests push, and the login to push it with.
#[derive(Clone, Copy)]
pub struct Pushed<'a> {
    /// `Env`.
    pub env: &'a [&'a str],
    /// `WorkingDir`.
    pub working_dir: &'a str,
    /// `User`.
    pub user: &'a str,
    /// The login to push with.
    pub login: Option<(&'a str, &'a str)>,
}

impl Default for Pushed<'_> {
    fn default() -> Self {
        Self {
            env: &["PATH=/bin"],
            working_dir: "",
            user: "",
            login: None,
        }
    }
}

impl Drop for LocalRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A tar of `files` (path, bytes, mode), `links` (path, target) and whiteouts.
pub fn tar_of(
    files: &[(&str, Vec<u8>, u32)],
    links: &[(&str, &str)],
    whiteouts: &[&str],
) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (path, data, mode) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(*mode);
        header.set_entry_type(tar::EntryType::Regular);
        builder.append_data(&mut header, path, &data[..]).unwrap();
    }
    for (path, target) in links {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Symlink);
        header.set_size(0);
        header.set_mode(0o777);
        builder.append_link(&mut header, path, target).unwrap();
    }
    for path in whiteouts {
        let mut header = tar::Header::new_gnu();
        header.set_size(0);
        header.set_mode(0o644);
        builder.append_data(&mut header, path, &[][..]).unwrap();
    }
    builder.into_inner().unwrap()
}

pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

pub fn zstd(data: &[u8]) -> Vec<u8> {
    ruzstd::encoding::compress_to_vec(data, ruzstd::encoding::CompressionLevel::Fastest)
}

/// A gzip layer of the host's static busybox (`/bin/busybox`) with `applets` linked in
/// `/bin`, plus `files` (path, bytes, mode).
pub fn busybox_layer(applets: &[&str], files: &[(&str, Vec<u8>, u32)]) -> Vec<u8> {
    let busybox = std::fs::read("/bin/busybox").expect("/bin/busybox");
    let links: Vec<(String, &str)> = applets
        .iter()
        .map(|a| (format!("bin/{a}"), "busybox"))
        .collect();
    let links: Vec<(&str, &str)> = links.iter().map(|(p, t)| (p.as_str(), *t)).collect();
    let mut all = vec![("bin/busybox", busybox, 0o755)];
    all.extend(files.iter().cloned());
    gzip(&tar_of(&all, &links, &[]))
}
