//! The container backend end to end (needs root; runs in CI as root).

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use traforato_core::backend::container::{ContainerBackend, ContainerConfig};
use traforato_core::backend::VmBackend;
use traforato_core::broker::BrokerConfig;
use traforato_core::tuple::SandboxTuple;
use traforato_core::worker::PrePullTarget;

use crate::harness::*;

/// A container backend with its own state dir and cgroup parent; the worker binary is the
/// sandbox init (it calls `init_main_if_requested` first thing).
pub(crate) fn container_backend(tag: &str) -> Option<(Arc<ContainerBackend>, std::path::PathBuf)> {
    container_backend_with(tag, |_| {})
}

/// [`container_backend`] with `tweak` applied to its configuration.
pub(crate) fn container_backend_with(
    tag: &str,
    tweak: impl FnOnce(&mut ContainerConfig),
) -> Option<(Arc<ContainerBackend>, std::path::PathBuf)> {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipping: needs root (runs in CI as root)");
        return None;
    }
    // Hermetic: an image the worker does not have is not pulled from the internet here
    // (traforato-core/tests/oci.rs pulls from a registry on loopback); no task limit but
    // the default's.
    let mut config = ContainerConfig {
        pids_limit: ContainerConfig::default().pids_limit,
        ..ContainerConfig::for_tests(
            &format!("e2e-{tag}"),
            env!("CARGO_BIN_EXE_traforato-worker"),
        )
    };
    tweak(&mut config);
    let state_dir = config.state_dir.clone();
    match ContainerBackend::new(config) {
        Ok(backend) => Some((Arc::new(backend), state_dir)),
        Err(e) => panic!("container backend unavailable as root: {e}"),
    }
}

/// A dev broker and a registered worker over `backend` (4 slots, `container` by default)
/// whose pre-pull floor keeps one sandbox of `image` warm (after `warmup`), once it is.
async fn warm_stack(backend: &Arc<ContainerBackend>, image: &str, warmup: &str) -> Stack {
    let broker = TestBroker::dev(BrokerConfig {
        default_virtualization: "container".to_string(),
        ..BrokerConfig::default()
    })
    .await;
    let backends: Vec<Arc<dyn VmBackend>> = vec![backend.clone()];
    let worker = dev_worker(Some(&broker.url), backends, |c| {
        c.default_virtualization = "container".to_string();
        c.max_live_sandboxes = 4;
        c.pre_pull = vec![PrePullTarget {
            tuple: SandboxTuple::normalize("container", image, 1, "container"),
            target_count: 1,
            warmup_script: warmup.to_string(),
            warmup_timeout: Duration::from_secs(30),
        }];
    })
    .await;
    let stack = Stack::registered(broker, worker).await.unwrap();
    let b = stack.broker.broker.clone();
    let ready = format!("container\t{image}\t1\t1");
    wait_until("a warm container sandbox", || {
        let text = b.availability_text();
        let ready = ready.clone();
        async move { text.contains(&ready) }
    })
    .await;
    stack
}

#[tokio::test]
async fn container_sandboxes_through_the_broker() {
    let Some((backend, state_dir)) = container_backend("flow") else {
        return;
    };
    // The pre-pull floor gives one ready sandbox; the create claims it.
    let stack = warm_stack(&backend, "host", "python3 -I -c 'import json'").await;
    let created = stack.create(json!({"image": "host"})).await;
    assert_eq!(created["virtualization"], "container");
    assert_eq!(created["start_type"], "warm");
    let id = created["sandbox_id"].as_str().unwrap().to_string();

    // Real Python, with the README's words.
    let resp = follow()
        .post(stack.sandbox(&id, "/exec/code"))
        .json(&json!({"runtime": "python", "code": "print('hello from traforato')"}))
        .expect_status(200)
        .await;
    let ran = body_json(resp).await;
    assert_eq!(ran["stdout"], "hello from traforato\n", "{ran}");
    assert_eq!(ran["exit_code"], 0);
    let resp = follow()
        .post(stack.sandbox(&id, "/exec/code"))
        .json(&json!({"runtime": "node", "code": "console.log(1+"}))
        .expect_status(422)
        .await;
    assert_eq!(body_json(resp).await["error"], "syntax_error");

    // What exec writes, the files API reads.
    let resp = follow()
        .post(stack.sandbox(&id, "/exec"))
        .json(&json!({"command": "echo made-by-exec > /workspace/e.txt; hostname"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let exec_id = body_json(resp).await["exec_id"]
        .as_str()
        .unwrap()
        .to_string();
    let mut cursor = 0;
    let mut frames = Vec::new();
    loop {
        let page = body_json(
            follow()
                .get(stack.sandbox(
                    &id,
                    &format!("/exec/{exec_id}/frames?cursor={cursor}&wait=5s"),
                ))
                .send()
                .await
                .unwrap(),
        )
        .await;
        frames.extend(page["frames"].as_array().unwrap().iter().cloned());
        cursor = page["next_cursor"].as_u64().unwrap();
        if !page["has_more"].as_bool().unwrap() {
            break;
        }
    }
    assert_eq!(frames.last().unwrap()["type"], "exit");
    assert_eq!(frames.last().unwrap()["data"], "0");
    let read = body_json(
        follow()
            .get(stack.sandbox(&id, "/files?path=/workspace/e.txt"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(read["content"], "made-by-exec\n");

    // A server started in the sandbox answers through the proxy; no host port is opened.
    follow()
        .put(stack.sandbox(&id, "/files?path=/workspace/site/index.html"))
        .body("<p>inside</p>")
        .expect_status(200)
        .await;
    follow()
        .post(stack.sandbox(&id, "/exec"))
        .json(&json!({
            "command": "cd /workspace/site && python3 -m http.server 8000 >/dev/null 2>&1 &"
        }))
        .expect_status(202)
        .await;
    let url = stack.sandbox(&id, "/proxy/8000/index.html");
    wait_until("the sandbox's http server", || {
        let url = url.clone();
        async move {
            match follow().get(&url).send().await {
                Ok(resp) if resp.status() == 200 => resp.text().await.unwrap() == "<p>inside</p>",
                _ => false,
            }
        }
    })
    .await;

    // Hardening II: an image the worker does not have is the client's mistake, said so
    // (404 with the reference), not a generic provisioning failure; the operator's own
    // image names are not listed.
    for image in ["ubuntu:24.04", "python:3.12-slim"] {
        follow()
            .post(stack.broker.at("/sandboxes"))
            .json(&json!({"image": image}))
            .expect_error(404, &format!("image not found: {image}"))
            .await;
    }

    // Delete destroys it: nothing of it stays in the state dir.
    let vm_id = traforato_core::id::SandboxId::parse(&id)
        .unwrap()
        .local_vm_id();
    let vm_dir = state_dir.join(vm_id.to_string());
    assert!(vm_dir.exists(), "{}", vm_dir.display());
    follow()
        .delete(stack.sandbox(&id, ""))
        .expect_status(204)
        .await;
    assert!(!vm_dir.exists(), "{} is left", vm_dir.display());

    stack.stop().await.unwrap();
    // Shutdown destroyed the warm sandboxes too.
    let left: Vec<_> = std::fs::read_dir(&state_dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name != "images" && name != "cgroup-parents")
        .collect();
    assert!(left.is_empty(), "left in the state dir: {left:?}");
    backend.remove_cgroup_parents().unwrap();
    std::fs::remove_dir_all(&state_dir).unwrap();
}

/// Issue "capacity": with the default configuration of this host, at least 50 idle `cpu: 1`
/// container sandboxes run at once, and a `cpu: 2` one fits next to them and the warm pool.
#[tokio::test]
async fn default_capacity_holds_fifty_idle_sandboxes_and_a_bigger_one() {
    use clap::Parser;
    let Some((backend, state_dir)) = container_backend("capacity") else {
        return;
    };
    let args = traforato_server::config::WorkerArgs::try_parse_from(["traforato-worker"]).unwrap();
    let defaults = traforato_server::config::WorkerSettings::load_worker(&args)
        .unwrap()
        .worker_config(None);
    assert!(defaults.max_live_sandboxes >= 51, "{defaults:?}");
    let broker = TestBroker::dev(BrokerConfig {
        default_virtualization: "container".to_string(),
        ..BrokerConfig::default()
    })
    .await;
    let backends: Vec<Arc<dyn VmBackend>> = vec![backend.clone()];
    let worker = dev_worker(Some(&broker.url), backends, |c| {
        c.default_virtualization = "container".to_string();
        c.total_cores = defaults.total_cores;
        c.total_memory_mib = defaults.total_memory_mib;
        c.max_live_sandboxes = defaults.max_live_sandboxes;
        c.capacity = defaults.capacity.clone();
    })
    .await;
    let stack = Stack::registered(broker, worker).await.unwrap();
    let mut ids = Vec::new();
    for _ in 0..50 {
        let created = stack.create(json!({"image": "host", "cpu": 1})).await;
        ids.push(created["sandbox_id"].as_str().unwrap().to_string());
    }
    // Demand makes the worker warm more `cpu: 1` sandboxes meanwhile; a `cpu: 2` create fits
    // next to the live and the warm ones.
    let b = stack.broker.broker.clone();
    wait_until("a warm cpu 1 sandbox", || {
        let text = b.availability_text();
        async move { text.contains("container\thost\t1\t") && !text.contains("container\thost\t1\t0") }
    })
    .await;
    let created = stack.create(json!({"image": "host", "cpu": 2})).await;
    ids.push(created["sandbox_id"].as_str().unwrap().to_string());
    let resp = follow()
        .post(stack.sandbox(&ids[0], "/exec/code"))
        .json(&json!({"runtime": "python", "code": "print(6*7)"}))
        .send()
        .await
        .unwrap();
    assert_eq!(body_json(resp).await["stdout"], "42\n");
    for id in &ids {
        follow()
            .delete(stack.sandbox(id, ""))
            .expect_status(204)
            .await;
    }
    // The review's loop: 4 clients, each create -> run code -> delete, never a capacity error.
    let clients = (0..4).map(|_| {
        let create_url = stack.broker.at("/sandboxes");
        let broker_url = stack.broker.url.clone();
        tokio::spawn(async move {
            for _ in 0..10 {
                let resp = follow()
                    .post(&create_url)
                    .json(&json!({"image": "host", "cpu": 1}))
                    .send()
                    .await
                    .unwrap();
                let status = resp.status();
                let body = body_json(resp).await;
                assert_eq!(status, 201, "{body}");
                let id = body["sandbox_id"].as_str().unwrap().to_string();
                follow()
                    .post(format!("{broker_url}/sandboxes/{id}/exec/code"))
                    .json(&json!({"runtime": "python", "code": "print(1)"}))
                    .expect_status(200)
                    .await;
                follow()
                    .delete(format!("{broker_url}/sandboxes/{id}"))
                    .expect_status(204)
                    .await;
            }
        })
    });
    for client in clients.collect::<Vec<_>>() {
        client.await.unwrap();
    }
    stack.stop().await.unwrap();
    backend.remove_cgroup_parents().unwrap();
    std::fs::remove_dir_all(&state_dir).unwrap();
}

/// Issue "OCI images": the prototype's quick start, `{"image":"alpine:3.20","cpu":1}`, through
/// a Docker Hub mirror on loopback (a stand-in `library/alpine:3.20` built from busybox, since
/// no public image can be pulled here): pre-pulled and kept warm at start-up, claimed by the
/// create, its run-code step a clear refusal (no Python in it); the operator's image route
/// lists it in use and the pull metric counts it.
#[tokio::test]
async fn the_prototype_quick_start_runs_alpine_through_a_mirror() {
    use traforato_core::backend::container::oci::testing::{busybox_layer, LocalRegistry};
    use traforato_core::backend::container::oci::RegistrySettings;

    let registry = match LocalRegistry::start() {
        Ok(registry) => registry,
        Err(why) => {
            eprintln!("skipping: {why}");
            return;
        }
    };
    let motd = ("etc/motd", b"a stand-in alpine\n".to_vec(), 0o644);
    registry
        .push(
            "library/alpine",
            "3.20",
            &[busybox_layer(&["sh", "cat", "echo"], &[motd])],
            &["PATH=/bin"],
        )
        .await;
    let images = tempfile::tempdir().unwrap();
    let Some((backend, state_dir)) = container_backend_with("alpine", |config| {
        config.oci_dir = Some(images.path().to_path_buf());
        config.registries = RegistrySettings {
            mirrors: [(
                "docker.io".to_string(),
                vec![format!("http://{}", registry.host())],
            )]
            .into(),
            ..RegistrySettings::default()
        };
    }) else {
        return;
    };
    let stack = warm_stack(&backend, "alpine:3.20", "").await;

    let created = stack
        .create(json!({"image": "alpine:3.20", "cpu": 1}))
        .await;
    assert_eq!(created["start_type"], "warm");
    let id = created["sandbox_id"].as_str().unwrap().to_string();
    let started = body_json(
        follow()
            .post(stack.sandbox(&id, "/exec"))
            .json(&json!({"command": "cat /etc/motd"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    let exec_url = stack.sandbox(
        &id,
        &format!("/exec/{}", started["exec_id"].as_str().unwrap()),
    );
    let record = || async { body_json(follow().get(&exec_url).send().await.unwrap()).await };
    wait_until("the exec", || async {
        record().await["status"] == "exited"
    })
    .await;
    let ran = record().await;
    assert_eq!(ran["stdout"], "a stand-in alpine\n", "{ran}");
    follow()
        .post(stack.sandbox(&id, "/exec/code"))
        .json(&json!({"runtime": "python", "code": "print(1)"}))
        .expect_error(
            400,
            "python is not available in this sandbox's image (no python3 on its PATH)",
        )
        .await;

    // The operator's view: the image, normalised, in use by the claimed sandbox and the
    // warm one that replaced it.
    let worker_url = stack.worker.url.clone();
    let listed = body_json(
        follow()
            .get(format!("{worker_url}/images"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        listed["images"][0]["reference"],
        "docker.io/library/alpine:3.20"
    );
    assert!(
        listed["images"][0]["in_use"].as_u64().unwrap() >= 1,
        "{listed}"
    );
    follow()
        .delete(format!("{worker_url}/images?ref=alpine:3.20"))
        .expect_error(
            409,
            "image docker.io/library/alpine:3.20 is in use by a sandbox",
        )
        .await;
    let metrics = metrics_text(format!("{worker_url}/metrics")).await;
    assert!(
        metrics.contains("traforato_worker_image_pulls_total{result=\"ok\""),
        "{metrics}"
    );

    follow()
        .delete(stack.sandbox(&id, ""))
        .expect_status(204)
        .await;
    stack.stop().await.unwrap();
    backend.remove_cgroup_parents().unwrap();
    let _ = std::fs::remove_dir_all(&state_dir);
}

/// A sandbox with egress whose TTL runs out takes its veth pair with it. A worker killed
/// (`SIGKILL`) while its sandbox has egress leaves its sandbox, cgroups and
/// nftables table behind; started again, it removes them before it serves, and nothing of
/// the sandbox's network (its veth pair, its rules in Docker's chain) survives; the crashed
/// run's cgroup parents go when it stops.
#[tokio::test]
async fn a_crashed_worker_removes_its_leftovers_when_it_starts_again() {
    use std::process::Command;
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipping: needs root (runs in CI as root)");
        return;
    }
    if Command::new("nft").arg("--version").output().is_err() {
        eprintln!("skipping: needs nft (scripts/test installs nftables)");
        return;
    }
    let tag = format!(
        "e2e-crash-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let table = format!("traforato_{}", tag.replace('-', "_"));
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let yaml = dir.path().join("worker.yaml");
    std::fs::write(
        &yaml,
        format!(
            "container:\n  state-dir: {}\n  cgroup-parent: {tag}\n  python-zygote: false\n\
             network:\n  range: 10.215.0.0/16\n",
            state.display()
        ),
    )
    .unwrap();
    let path = std::env::var("PATH").unwrap_or_default();
    let start = || {
        Bin::dev(
            "container",
            &["--file", yaml.to_str().unwrap()],
            &[("PATH", &path)],
        )
    };
    let output = |program: &str, args: &[&str]| {
        Command::new(program)
            .args(args)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    };
    // The cgroups below the worker's parents (sandboxes' and spare inits').
    let cgroups = || -> std::collections::BTreeSet<String> {
        output("find", &["/sys/fs/cgroup", "-maxdepth", "3", "-name", &tag])
            .lines()
            .flat_map(|dir| std::fs::read_dir(dir).into_iter().flatten().flatten())
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect()
    };

    let veths = || -> std::collections::BTreeSet<String> {
        output("ip", &["-o", "link"])
            .lines()
            .filter_map(|line| line.split(": ").nth(1))
            .filter(|name| name.starts_with("tf"))
            .map(|name| name.split('@').next().unwrap_or(name).to_string())
            .collect()
    };
    let sandboxes = || {
        std::fs::read_dir(&state).map_or(0, |entries| {
            entries
                .flatten()
                .filter(|e| e.path().is_dir() && e.file_name() != "images")
                .count()
        })
    };
    let before = veths();

    let dev = start();
    let configured = dev.record("dev environment configured").await;
    let broker_url = configured["broker_url"].as_str().unwrap().to_string();
    let created = wait_for_create(
        &broker_url,
        json!({"image": "host", "network": {"egress": "all"}}),
    )
    .await;
    let id = created["sandbox_id"].as_str().unwrap();
    let resp = follow()
        .get(format!("{broker_url}/sandboxes/{id}"))
        .expect_status(200)
        .await;
    let shown = body_json(resp).await;
    assert_eq!(shown["network"]["egress"], "all", "{shown}");
    let ours: std::collections::BTreeSet<String> = veths().difference(&before).cloned().collect();
    assert_eq!(ours.len(), 1, "the sandbox's veth: {ours:?}");
    assert!(!cgroups().is_empty(), "the sandbox's cgroup");
    let left = sandboxes();
    assert!(left > 0, "the sandbox's directory");
    // A sandbox whose TTL runs out takes its network with it.
    wait_for_create(
        &broker_url,
        json!({"image": "host", "ttl_seconds": 1, "network": {"egress": "all"}}),
    )
    .await;
    assert_eq!(
        veths().difference(&before).count(),
        2,
        "two sandboxes' veths"
    );
    wait_until("the expired sandbox's veth to go", || {
        let now: std::collections::BTreeSet<String> =
            veths().difference(&before).cloned().collect();
        let done = now == ours;
        async move { done }
    })
    .await;

    let docker_rules = || {
        output("iptables", &["-w", "-S", "DOCKER-USER"])
            .matches(&table)
            .count()
    };
    let docker = Command::new("iptables")
        .args(["-w", "-S", "DOCKER-USER"])
        .output()
        .is_ok_and(|o| o.status.success());
    if docker {
        assert_eq!(docker_rules(), 2, "the worker's rules in Docker's chain");
    }
    let crashed = cgroups();
    dev.kill().await;
    assert!(
        output("nft", &["list", "tables"]).contains(&table),
        "a crash leaves the table"
    );
    let dev = start();
    let _ = dev.record("dev environment configured").await;
    wait_until("the leftovers to go", || {
        let gone = !output("nft", &["list", "tables"]).contains(&table)
            && veths().is_disjoint(&ours)
            && cgroups().is_disjoint(&crashed)
            && sandboxes() < left;
        async move { gone }
    })
    .await;
    assert_eq!(
        docker_rules(),
        0,
        "no rule of the crashed run in Docker's chain"
    );
    dev.stop().await;
    assert_eq!(
        output("find", &["/sys/fs/cgroup", "-maxdepth", "3", "-name", &tag]),
        "",
        "the crashed run's cgroup parents go at the next clean stop"
    );
    assert!(!output("nft", &["list", "tables"]).contains(&table));
}

/// Creates a sandbox (`body`) through the broker at `broker_url` once its worker has
/// registered.
async fn wait_for_create(broker_url: &str, body: serde_json::Value) -> serde_json::Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let resp = follow()
            .post(format!("{broker_url}/sandboxes"))
            .json(&body)
            .send()
            .await
            .unwrap();
        if resp.status() != 503 || tokio::time::Instant::now() > deadline {
            assert_eq!(resp.status(), 201);
            return body_json(resp).await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
