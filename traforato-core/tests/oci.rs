//! OCI images in the `container` backend, for real: a registry on loopback (Debian's
//! `docker-registry`, started by each test on a port of its own), images the tests build from
//! the host's static busybox and push, pulled and unpacked by the backend, run as sandboxes.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use traforato_core::backend::container::oci::testing::{
    busybox_layer, gzip, tar_of, zstd, LocalRegistry, Pushed,
};
use traforato_core::backend::container::oci::RegistrySettings;
use traforato_core::backend::container::{ContainerBackend, ContainerConfig};
use traforato_core::backend::{
    run_collected, BackendError, CodeSpec, ExecSpec, ImageCatalog, ProvisionSpec, Runtime,
    TerminalSize, Vm, VmBackend,
};
use traforato_core::id::LocalVmId;
use traforato_core::tuple::SandboxTuple;

/// A registry for the test, or `None` after saying why this machine cannot run one.
fn local_registry() -> Option<LocalRegistry> {
    LocalRegistry::start()
        .inspect_err(|why| eprintln!("skipping: {why}"))
        .ok()
}

/// busybox with the applets the tests use, `/etc/motd` = `base`, `/etc/gone`.
fn base_layer() -> Vec<u8> {
    let applets = [
        "sh", "echo", "cat", "test", "ls", "id", "pwd", "env", "touch",
    ];
    let files = [
        ("etc/motd", b"base\n".to_vec(), 0o644),
        ("etc/gone", b"x".to_vec(), 0o644),
    ];
    busybox_layer(&applets, &files)
}

/// `/etc/motd` = `top`, `/etc/gone` whited out; zstd.
fn top_layer() -> Vec<u8> {
    zstd(&tar_of(
        &[("etc/motd", b"top\n".to_vec(), 0o644)],
        &[],
        &["etc/.wh.gone"],
    ))
}

struct Backend {
    backend: Arc<ContainerBackend>,
    state_dir: PathBuf,
    oci_dir: tempfile::TempDir,
}

impl Backend {
    fn new(registries: RegistrySettings) -> Self {
        Self::open(registries, tempfile::tempdir().unwrap(), None)
    }

    /// A backend over the image directory `oci_dir`, keeping at most `max_disk` bytes.
    fn open(
        registries: RegistrySettings,
        oci_dir: tempfile::TempDir,
        max_disk: Option<u64>,
    ) -> Self {
        let config = ContainerConfig {
            oci_dir: Some(oci_dir.path().to_path_buf()),
            registries,
            oci_max_disk: max_disk,
            ..ContainerConfig::for_tests("oci", env!("CARGO_BIN_EXE_traforato-sandbox-init"))
        };
        let state_dir = config.state_dir.clone();
        let backend = Arc::new(ContainerBackend::new(config).expect("container backend"));
        Self {
            backend,
            state_dir,
            oci_dir,
        }
    }

    /// This backend stopped (its sandboxes must be gone) and another one started on its image
    /// directory, as a restarted worker would be.
    async fn restart(self, registries: RegistrySettings, max_disk: Option<u64>) -> Self {
        let _ = self.backend.cleanup_leftovers().await;
        let _ = self.backend.remove_cgroup_parents();
        let _ = std::fs::remove_dir_all(&self.state_dir);
        assert_eq!(
            Arc::strong_count(&self.backend),
            1,
            "the old backend is dropped"
        );
        Self::open(registries, self.oci_dir, max_disk)
    }

    fn images(&self) -> &dyn ImageCatalog {
        self.backend.images().expect("an image catalog")
    }

    async fn provision(&self, image: &str) -> Result<Arc<dyn Vm>, BackendError> {
        self.backend
            .provision(ProvisionSpec {
                vm_id: LocalVmId::new_random(),
                tuple: SandboxTuple::normalize("container", image, 1, "container"),
                memory_mib: 256,
                warm: false,
            })
            .await
    }

    fn layer_dirs(&self) -> usize {
        std::fs::read_dir(self.oci_dir.path().join("layers"))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    async fn teardown(self) {
        let _ = self.backend.cleanup_leftovers().await;
        let _ = self.backend.remove_cgroup_parents();
        let _ = std::fs::remove_dir_all(&self.state_dir);
    }
}

async fn sh(vm: &Arc<dyn Vm>, line: &str) -> String {
    let ran = run_collected(vm.as_ref(), ExecSpec::shell(line))
        .await
        .expect("exec");
    String::from_utf8_lossy(&ran.stdout).into_owned()
}

#[tokio::test]
async fn images_from_a_registry_run_and_share_their_layers() {
    let Some(registry) = local_registry() else {
        return;
    };
    let base = base_layer();
    registry
        .push(
            "test/busybox",
            "1",
            &[base.clone(), top_layer()],
            &["PATH=/bin"],
        )
        .await;
    let other_top = gzip(&tar_of(
        &[("etc/other", b"other\n".to_vec(), 0o644)],
        &[],
        &[],
    ));
    registry
        .push("test/other", "1", &[base, other_top], &["PATH=/bin"])
        .await;
    let backend = Backend::new(RegistrySettings::default());

    let image = format!("{}/test/busybox:1", registry.host());
    let vm = backend
        .provision(&image)
        .await
        .expect("provision from the registry");
    assert_eq!(
        sh(&vm, "cat /etc/motd").await,
        "top\n",
        "the top layer wins"
    );
    assert_eq!(
        sh(&vm, "test -e /etc/gone; echo $?").await,
        "1\n",
        "whited out"
    );
    assert_eq!(sh(&vm, "echo hi from busybox").await, "hi from busybox\n");
    assert_eq!(
        sh(&vm, "id -u").await,
        "0\n",
        "the image's root is the sandbox's root"
    );
    assert_eq!(backend.layer_dirs(), 2);

    let other = format!("{}/test/other:1", registry.host());
    let vm2 = backend.provision(&other).await.expect("second image");
    assert_eq!(sh(&vm2, "cat /etc/other /etc/motd").await, "other\nbase\n");
    assert_eq!(backend.layer_dirs(), 3, "the base layer is unpacked once");

    // Writes go to the sandbox's own layer, never to the shared ones.
    sh(&vm, "echo changed > /etc/motd").await;
    assert_eq!(sh(&vm, "cat /etc/motd").await, "changed\n");
    let vm3 = backend.provision(&image).await.expect("third sandbox");
    assert_eq!(sh(&vm3, "cat /etc/motd").await, "top\n");

    // The image config's Env and WorkingDir apply, under what a request sets.
    let pushed = Pushed {
        env: &["PATH=/bin", "GREETING=from the image", "BROKEN"],
        working_dir: "/etc",
        ..Pushed::default()
    };
    registry
        .push_image("test/configured", "1", &[base_layer()], pushed)
        .await;
    let configured = format!("{}/test/configured:1", registry.host());
    let vm4 = backend
        .provision(&configured)
        .await
        .expect("configured image");
    assert_eq!(
        sh(&vm4, "pwd; echo $GREETING; echo $PATH").await,
        "/etc\nfrom the image\n/bin\n"
    );
    let mut spec = ExecSpec::shell("pwd; echo $GREETING");
    spec.cwd = Some("/tmp".into());
    spec.env
        .insert("GREETING".into(), "from the request".into());
    let ran = run_collected(vm4.as_ref(), spec).await.unwrap();
    assert_eq!(
        String::from_utf8_lossy(&ran.stdout),
        "/tmp\nfrom the request\n"
    );
    vm4.destroy().await.unwrap();

    // Code for an interpreter the image does not have: refused, naming it (the warm Python
    // could not start either, so nothing loops on it).
    let (tx, _rx) = tokio::sync::mpsc::channel(8);
    let spec = CodeSpec {
        runtime: Runtime::Python,
        code: "print(1)".into(),
        cwd: None,
        env: Default::default(),
        timeout: Duration::from_secs(10),
    };
    match vm3.run_code(spec, tx).await {
        Err(BackendError::RuntimeMissing { program, .. }) => assert_eq!(program, "python3"),
        other => panic!("expected RuntimeMissing, got {other:?}"),
    }

    let missing = format!("{}/test/busybox:nope", registry.host());
    assert!(matches!(
        backend.provision(&missing).await,
        Err(BackendError::ImageNotFound { .. })
    ));
    for vm in [vm, vm2, vm3] {
        vm.destroy().await.unwrap();
    }
    backend.teardown().await;
}

#[tokio::test]
async fn docker_hub_names_pull_through_a_mirror_and_failures_are_clear() {
    let Some(registry) = local_registry() else {
        return;
    };
    registry
        .push("library/busybox", "1.36", &[base_layer()], &["PATH=/bin"])
        .await;
    let settings = RegistrySettings {
        mirrors: [(
            "docker.io".to_string(),
            vec![format!("http://{}", registry.host())],
        )]
        .into(),
        timeout: Duration::from_secs(3),
        ..RegistrySettings::default()
    };
    // Only Docker Hub: its mirror is the operator's and is reached all the same.
    let restricted = Backend::new(RegistrySettings {
        allowed: vec!["docker.io".to_string()],
        ..settings.clone()
    });
    let backend = Backend::new(settings);
    let vm = backend
        .provision("busybox:1.36")
        .await
        .expect("docker.io/library/busybox:1.36 through the mirror");
    assert_eq!(sh(&vm, "cat /etc/motd").await, "base\n");
    vm.destroy().await.unwrap();
    let vm = restricted
        .provision("busybox:1.36")
        .await
        .expect("an allowed registry through its mirror");
    vm.destroy().await.unwrap();
    // The same image named by the mirror's own address is from a registry not allowed.
    let direct = format!("{}/library/busybox:1.36", registry.host());
    match restricted.provision(&direct).await {
        Err(BackendError::InvalidRequest(why)) => assert_eq!(
            why,
            format!(
                "images from {} are not allowed on this worker",
                registry.host()
            )
        ),
        other => panic!(
            "expected InvalidRequest, got {:?}",
            other.map(|vm| vm.vm_id())
        ),
    }
    restricted.teardown().await;

    // Mirrors that are down or lack the image are passed over for the registry itself.
    let Some(empty) = local_registry() else {
        return;
    };
    let origin = format!("{}/library/busybox:1.36", registry.host());
    let settings = RegistrySettings {
        mirrors: [(
            registry.host(),
            vec![
                "http://127.0.0.1:1".to_string(),
                format!("http://{}", empty.host()),
            ],
        )]
        .into(),
        timeout: Duration::from_secs(3),
        ..RegistrySettings::default()
    };
    let fallback = Backend::new(settings);
    let vm = fallback
        .provision(&origin)
        .await
        .expect("the registry after its mirrors");
    assert_eq!(sh(&vm, "cat /etc/motd").await, "base\n");
    let asked = empty.request_log();
    assert!(
        asked
            .lines()
            .any(|l| l.contains("/v2/library/busybox/manifests/1.36") && l.contains("\" 404 ")),
        "the empty mirror was asked first:\n{asked}"
    );
    vm.destroy().await.unwrap();
    fallback.teardown().await;

    // A registry nobody listens on: a clear error, fast.
    let started = Instant::now();
    let result = backend.provision("127.0.0.1:1/nobody/home:1").await;
    assert!(
        matches!(result, Err(BackendError::RegistryUnreachable { ref registry, .. }) if registry == "127.0.0.1:1"),
        "{:?}",
        result.err()
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    // Not a reference at all.
    assert!(matches!(
        backend.provision("Not An Image").await,
        Err(BackendError::InvalidRequest(_))
    ));
    backend.teardown().await;
}

/// The architecture name of this host in OCI terms.
fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

#[tokio::test]
async fn an_index_resolves_to_this_platform_and_concurrent_creates_pull_once() {
    let Some(registry) = local_registry() else {
        return;
    };
    let native = zstd(&tar_of(
        &[("etc/arch", b"native\n".to_vec(), 0o644)],
        &[],
        &[],
    ));
    let foreign = gzip(&tar_of(
        &[("etc/arch", b"foreign\n".to_vec(), 0o644)],
        &[],
        &[],
    ));
    registry
        .push(
            "test/multi",
            "native",
            &[base_layer(), native],
            &["PATH=/bin"],
        )
        .await;
    registry
        .push(
            "test/multi",
            "foreign",
            &[base_layer(), foreign],
            &["PATH=/bin"],
        )
        .await;
    let other_arch = if host_arch() == "arm64" {
        "amd64"
    } else {
        "arm64"
    };
    registry
        .push_index(
            "test/multi",
            "1",
            &[("foreign", other_arch), ("native", host_arch())],
        )
        .await;
    let backend = Backend::new(RegistrySettings::default());
    let image = format!("{}/test/multi:1", registry.host());
    let creates = (0..4).map(|_| backend.provision(&image));
    let vms: Vec<Arc<dyn Vm>> = futures::future::join_all(creates)
        .await
        .into_iter()
        .map(|r| r.expect("concurrent create"))
        .collect();
    for vm in &vms {
        assert_eq!(sh(vm, "cat /etc/arch").await, "native\n");
    }
    assert_eq!(
        registry.requests("GET /v2/test/multi/manifests/1"),
        1,
        "four concurrent creates asked for the manifest once"
    );
    assert_eq!(
        registry.requests("GET /v2/test/multi/blobs/"),
        3,
        "config and two layers, once"
    );
    assert_eq!(backend.layer_dirs(), 2);
    // An image of many layers mounts (its lower dirs go by short names).
    let mut layers = vec![base_layer()];
    for i in 0..60 {
        let name = format!("etc/layer{i}");
        layers.push(gzip(&tar_of(
            &[(name.as_str(), format!("{i}\n").into_bytes(), 0o644)],
            &[],
            &[],
        )));
    }
    registry
        .push("test/tall", "1", &layers, &["PATH=/bin"])
        .await;
    let tall = format!("{}/test/tall:1", registry.host());
    let vm = backend
        .provision(&tall)
        .await
        .expect("an image of 61 layers");
    assert_eq!(sh(&vm, "cat /etc/layer0 /etc/layer59").await, "0\n59\n");
    vm.destroy().await.unwrap();

    // An index without this host's platform: a clear refusal, not "not found".
    registry
        .push_index("test/multi", "elsewhere", &[("foreign", other_arch)])
        .await;
    let elsewhere = format!("{}/test/multi:elsewhere", registry.host());
    let result = backend.provision(&elsewhere).await;
    assert!(
        matches!(&result, Err(BackendError::InvalidRequest(why)) if why.contains("has no variant for linux/")),
        "{:?}",
        result.err()
    );
    for vm in vms {
        vm.destroy().await.unwrap();
    }
    backend.teardown().await;
}

#[tokio::test]
async fn a_blob_that_does_not_match_its_digest_is_never_kept() {
    let Some(registry) = local_registry() else {
        return;
    };
    let layer = base_layer();
    let digest = format!(
        "sha256:{}",
        traforato_core::backend::container::oci::Digest::of(&layer).hex()
    );
    registry
        .push("test/tampered", "1", &[layer], &["PATH=/bin"])
        .await;
    // The registry's stored copy changes under it (a bit flip on disk, a hostile mirror).
    let file = registry.blob_file(&digest);
    let mut bytes = std::fs::read(&file).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&file, bytes).unwrap();

    let backend = Backend::new(RegistrySettings::default());
    let image = format!("{}/test/tampered:1", registry.host());
    let result = backend.provision(&image).await;
    assert!(
        matches!(&result, Err(BackendError::ImageUnavailable { reason, .. }) if reason.contains("digest")),
        "{:?}",
        result.err()
    );
    let blobs = backend.oci_dir.path().join("blobs/sha256");
    let kept: Vec<String> = std::fs::read_dir(&blobs)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        !kept.iter().any(|name| digest.ends_with(name.as_str())),
        "the tampered layer was kept: {kept:?}"
    );
    assert!(
        kept.iter().all(|name| !name.starts_with('.')),
        "temporary files left: {kept:?}"
    );
    assert_eq!(backend.layer_dirs(), 0);

    // A blob the manifest names that the registry lost is the registry's fault, not an
    // unknown image.
    std::fs::remove_file(&file).unwrap();
    let result = backend.provision(&image).await;
    assert!(
        matches!(&result, Err(BackendError::ImageUnavailable { reason, .. })
            if reason.contains("which the registry does not have")),
        "{:?}",
        result.err()
    );
    backend.teardown().await;
}

#[tokio::test]
async fn a_registry_that_wants_a_login_gets_the_configured_one() {
    let Some(registry) = LocalRegistry::start_with_login("ci", "s3cret")
        .inspect_err(|why| eprintln!("skipping: {why}"))
        .ok()
    else {
        return;
    };
    registry
        .push_image(
            "team/private",
            "1",
            &[base_layer()],
            Pushed {
                login: Some(("ci", "s3cret")),
                ..Pushed::default()
            },
        )
        .await;
    let image = format!("{}/team/private:1", registry.host());

    // Without a login the refusal reads as not found (Docker Hub answers a missing
    // repository that way); with a wrong one it is a refusal.
    let anonymous = Backend::new(RegistrySettings::default());
    let result = anonymous.provision(&image).await;
    assert!(
        matches!(&result, Err(BackendError::ImageNotFound { .. })),
        "{:?}",
        result.err()
    );
    anonymous.teardown().await;
    let wrong = Backend::new(RegistrySettings {
        credentials: [(registry.host(), ("ci".to_string(), "nope".to_string()))].into(),
        ..RegistrySettings::default()
    });
    let result = wrong.provision(&image).await;
    assert!(
        matches!(&result, Err(BackendError::InvalidRequest(why)) if why.contains("refused access")),
        "{:?}",
        result.err()
    );
    wrong.teardown().await;

    let settings = RegistrySettings {
        credentials: [(registry.host(), ("ci".to_string(), "s3cret".to_string()))].into(),
        ..RegistrySettings::default()
    };
    let logged_in = Backend::new(settings);
    let vm = logged_in
        .provision(&image)
        .await
        .expect("pull with the login");
    assert_eq!(sh(&vm, "cat /etc/motd").await, "base\n");
    vm.destroy().await.unwrap();
    logged_in.teardown().await;
}

/// busybox with an `/etc/passwd` and `/etc/group` that name `app` (1000:1000, home
/// `/home/app`) and the group `staff` (50).
fn users_layer() -> Vec<u8> {
    let files = [
        (
            "etc/passwd",
            b"root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:App:/home/app:/bin/sh\n".to_vec(),
            0o644,
        ),
        (
            "etc/group",
            b"root:x:0:\nstaff:x:50:\napp:x:1000:\n".to_vec(),
            0o644,
        ),
        ("home/app/.profile", Vec::new(), 0o644),
    ];
    busybox_layer(&["sh", "echo", "id", "pwd", "touch", "tty", "stat"], &files)
}

#[tokio::test]
async fn the_image_user_runs_commands_and_owns_its_workspace() {
    let Some(registry) = local_registry() else {
        return;
    };
    for (repository, user) in [
        ("test/app", "app"),
        ("test/numeric", "4242:staff"),
        ("test/ghost", "ghost"),
    ] {
        let pushed = Pushed {
            user,
            ..Pushed::default()
        };
        registry
            .push_image(repository, "1", &[users_layer()], pushed)
            .await;
    }
    let backend = Backend::new(RegistrySettings::default());

    let vm = backend
        .provision(&format!("{}/test/app:1", registry.host()))
        .await
        .expect("an image with a user");
    assert_eq!(
        sh(&vm, "id -u; id -g; id -G; echo $HOME; pwd").await,
        "1000\n1000\n1000\n/home/app\n/workspace\n",
        "commands run as the image's user, in its own workspace"
    );
    assert_eq!(
        sh(
            &vm,
            "touch /workspace/mine && echo mine; touch /etc/theirs 2>/dev/null || echo refused"
        )
        .await,
        "mine\nrefused\n",
        "the user writes its workspace, not the image's root-owned files"
    );
    // Its terminal is its own.
    let mut spec = ExecSpec::shell("stat -c %u:%g $(tty)");
    spec.tty = Some(TerminalSize::default());
    let ran = run_collected(vm.as_ref(), spec).await.unwrap();
    assert_eq!(String::from_utf8_lossy(&ran.stdout).trim(), "1000:1000");
    // A request's own HOME still wins over the user's.
    let mut spec = ExecSpec::shell("echo $HOME");
    spec.env.insert("HOME".into(), "/tmp".into());
    let ran = run_collected(vm.as_ref(), spec).await.unwrap();
    assert_eq!(String::from_utf8_lossy(&ran.stdout), "/tmp\n");

    let numeric = backend
        .provision(&format!("{}/test/numeric:1", registry.host()))
        .await
        .expect("a numeric user with a named group");
    assert_eq!(sh(&numeric, "id -u; id -g").await, "4242\n50\n");

    match backend
        .provision(&format!("{}/test/ghost:1", registry.host()))
        .await
    {
        Err(BackendError::InvalidRequest(why)) => {
            assert!(
                why.contains("\"ghost\" is not in the image's /etc/passwd"),
                "{why}"
            )
        }
        other => panic!(
            "expected InvalidRequest, got {:?}",
            other.map(|vm| vm.vm_id())
        ),
    }
    for vm in [vm, numeric] {
        vm.destroy().await.unwrap();
    }
    backend.teardown().await;
}

/// A layer of one incompressible file of `bytes` bytes at `name`.
fn noise_layer(name: &str, bytes: usize) -> Vec<u8> {
    let data: Vec<u8> = (0..bytes).map(|_| rand::random::<u8>()).collect();
    gzip(&tar_of(&[(name, data, 0o644)], &[], &[]))
}

async fn provision_and_check(backend: &Backend, image: &str, pulled: bool) -> Arc<dyn Vm> {
    let vm = backend.provision(image).await.expect("provision");
    assert_eq!(vm.image_pulled(), pulled, "{image} pulled?");
    vm
}

/// Waits until the images held are `expected` (a collection runs in the background).
async fn wait_for_images(backend: &Backend, expected: &[&str]) -> traforato_core::api::ImageList {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let list = backend.images().list().await.expect("list images");
        let mut held: Vec<&str> = list.images.iter().map(|i| i.reference.as_str()).collect();
        held.sort();
        if held == expected {
            return list;
        }
        assert!(
            Instant::now() < deadline,
            "images held: {held:?}, expected {expected:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the image directory holds `n` unpacked layers: a collection in the background
/// forgets an image's record before it has removed its layers.
async fn wait_for_layer_dirs(backend: &Backend, n: usize, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while backend.layer_dirs() != n {
        assert!(
            Instant::now() < deadline,
            "{} layer dirs, not {n}: {what}",
            backend.layer_dirs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn images_are_kept_listed_collected_by_size_and_removed_but_never_while_used() {
    let Some(registry) = local_registry() else {
        return;
    };
    const UNIQUE: usize = 256 << 10;
    for name in ["a", "b", "c"] {
        let layers = [base_layer(), noise_layer(&format!("{name}.bin"), UNIQUE)];
        registry
            .push(&format!("test/{name}"), "1", &layers, &["PATH=/bin"])
            .await;
    }
    let image = |name: &str| format!("{}/test/{name}:1", registry.host());
    let reference = |name: &str| format!("127.0.0.1:{}/test/{name}:1", registry.port());

    // Unlimited: a and b pulled, listed with their sizes; the second create of a is no pull.
    let backend = Backend::new(RegistrySettings::default());
    for name in ["a", "b"] {
        let vm = provision_and_check(&backend, &image(name), true).await;
        vm.destroy().await.unwrap();
    }
    let vm = provision_and_check(&backend, &image("a"), false).await;
    let list = backend.images().list().await.unwrap();
    assert_eq!(list.images.len(), 2);
    assert_eq!(
        list.images[0].reference,
        reference("a"),
        "most recently used first"
    );
    assert_eq!(list.images[0].in_use, 1);
    assert_eq!(list.images[1].in_use, 0);
    assert!(list
        .images
        .iter()
        .all(|i| i.layers == 2 && i.size_bytes > 2 * UNIQUE as u64));
    assert_eq!(list.max_disk_bytes, None);
    vm.destroy().await.unwrap();
    let two = list.disk_bytes;

    // Restarted with the registry's manifests counted: a held image is used without asking
    // the registry again.
    let manifests = registry.requests("/manifests/");
    let limit = two + UNIQUE as u64;
    let backend = backend
        .restart(RegistrySettings::default(), Some(limit))
        .await;
    let a = provision_and_check(&backend, &image("a"), false).await;
    assert_eq!(
        registry.requests("/manifests/"),
        manifests,
        "no registry round trip"
    );

    // Pulling c goes over the limit: b, the least recently used image nobody uses, goes; a
    // (older than c, but in use) and c stay, and so does the base layer they share.
    let c = provision_and_check(&backend, &image("c"), true).await;
    let list = wait_for_images(&backend, &[&reference("a"), &reference("c")]).await;
    assert!(list.disk_bytes <= limit, "{} > {limit}", list.disk_bytes);
    assert_eq!(list.max_disk_bytes, Some(limit));
    wait_for_layer_dirs(&backend, 3, "base, a and c").await;

    // An image in use is not removed; once its sandbox is gone, it is (and only its own
    // layer with it).
    match backend.images().remove(&image("a")).await {
        Err(BackendError::ImageInUse { image }) => assert_eq!(image, reference("a")),
        other => panic!("expected ImageInUse, got {other:?}"),
    }
    a.destroy().await.unwrap();
    let removed = backend
        .images()
        .remove(&image("a"))
        .await
        .expect("remove a");
    assert!(removed.freed_bytes >= 2 * UNIQUE as u64, "{removed:?}");
    assert_eq!(backend.layer_dirs(), 2, "base and c");
    assert!(matches!(
        backend.images().remove(&image("a")).await,
        Err(BackendError::ImageNotFound { .. })
    ));
    assert!(matches!(
        backend.images().remove("Not A Reference").await,
        Err(BackendError::InvalidRequest(_))
    ));
    // Removed, it is pulled again by the next create.
    let again = provision_and_check(&backend, &image("a"), true).await;

    // An operator's pull asks the registry even for a held image.
    let manifests = registry.requests("/manifests/");
    let pulled = backend.images().pull(&image("c")).await.expect("pull c");
    assert_eq!(pulled.reference, reference("c"));
    assert_eq!(pulled.in_use, 1);
    assert!(registry.requests("/manifests/") > manifests);

    // With the registry gone, held images still start sandboxes.
    drop(registry);
    for vm in [again, c] {
        vm.destroy().await.unwrap();
    }
    let backend = backend.restart(RegistrySettings::default(), None).await;
    let vm = backend
        .provision(&pulled.reference)
        .await
        .expect("from the cache");
    assert_eq!(sh(&vm, "echo hi").await, "hi\n");
    vm.destroy().await.unwrap();
    backend.teardown().await;
}
