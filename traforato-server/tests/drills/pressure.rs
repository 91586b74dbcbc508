//! Resource pressure: a worker whose state dir fills up (a size-capped tmpfs the drill
//! mounts, filled to its last block and inode), and a worker whose cgroup parent gets a tight
//! memory limit. New sandboxes fail with a clear error; the live ones keep working; when the
//! pressure goes, creates work again.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::json;
use traforato_client::{Client, Sandbox};

use crate::fleet::{self, Fleet, FleetSpec};
use crate::load::{class, spec};
use crate::{begin, check_held, hold, ms_since};

/// Fills the file system of `dir` (bytes, then inodes); the bytes and files written.
fn fill(dir: &Path) -> (u64, u64) {
    use std::io::Write as _;
    let filler = dir.join("drill-filler");
    std::fs::create_dir_all(&filler).unwrap();
    let chunk = vec![0xa5u8; 64 << 10];
    let mut bytes = 0;
    let mut file = std::fs::File::create(filler.join("big")).unwrap();
    while file.write_all(&chunk).is_ok() {
        bytes += chunk.len() as u64;
    }
    // The last partial chunk's blocks.
    let _ = file.flush();
    let mut files = 1;
    while std::fs::File::create(filler.join(format!("f{files}"))).is_ok() {
        files += 1;
    }
    (bytes, files)
}

/// Tries `n` creates; the sandboxes made and the errors by class, with the slowest answer.
async fn try_creates(client: &Client, n: usize) -> (Vec<Sandbox>, BTreeMap<String, usize>, u64) {
    let mut made = Vec::new();
    let mut errors = BTreeMap::new();
    let mut slowest = 0;
    for _ in 0..n {
        let start = Instant::now();
        match client.create_sandbox(spec(Duration::from_secs(300))).await {
            Ok(sandbox) => made.push(sandbox),
            Err(err) => *errors.entry(class(&err)).or_default() += 1,
        }
        slowest = slowest.max(ms_since(start));
    }
    (made, errors, slowest)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_state_dir_fails_creates_clearly_and_spares_live_sandboxes() {
    let Some(_serial) = begin("disk pressure").await else {
        return;
    };
    let fleet = Fleet::start(FleetSpec {
        workers: 1,
        warm: 0,
        small_state_dir: Some("8m"),
        ..FleetSpec::default()
    })
    .await;
    let owner = fleet.client("drill_owner");
    let held = hold(&owner, 2).await;
    check_held(&held, "before the disk fills").await;

    let state = fleet.workers[0].state.clone();
    let (bytes, files) = fill(&state);
    let (made, errors, slowest) = try_creates(&owner, 8).await;
    check_held(&held, "with the disk full").await;
    let _ = std::fs::remove_dir_all(state.join("drill-filler"));
    // The worker took no new sandboxes for a pause after the disk was full (and told the
    // broker so): creates work again once it is over.
    let freed = Instant::now();
    let mut again = Vec::new();
    let mut again_errors: BTreeMap<String, usize> = BTreeMap::new();
    while again.len() < 2 {
        let (made, errors, _) = try_creates(&owner, 2 - again.len()).await;
        again.extend(made);
        for (class, n) in errors {
            *again_errors.entry(class).or_default() += n;
        }
        assert!(
            freed.elapsed() < fleet::WAIT,
            "creates after space came back: {again_errors:?}"
        );
        if again.len() < 2 {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let accepting_ms = ms_since(freed);
    check_held(&again, "after space came back").await;
    for sandbox in held.iter().chain(&made).chain(&again) {
        sandbox.delete().await.expect("delete");
    }
    let leaks = fleet.finish();

    let human = format!(
        "state dir (tmpfs of 8 MiB, 4096 inodes) filled with {:.1} MiB and {files} files: 8 creates → {} \
         made, errors {errors:?} (slowest answer {slowest} ms); the 2 live sandboxes kept \
         working; space back: creates made again after {accepting_ms} ms (refused meanwhile: \
         {again_errors:?})\nleaks: {}\n",
        bytes as f64 / 1048576.0,
        made.len(),
        leaks.summary()
    );
    crate::load::report(
        "disk pressure",
        &human,
        json!({
            "filled_bytes": bytes,
            "filled_files": files,
            "made_when_full": made.len(),
            "errors_when_full": errors,
            "slowest_ms": slowest,
            "accepting_again_ms": accepting_ms,
            "leaks": leaks.summary(),
        }),
    );
    leaks.assert_none();
    // Refused, clearly: by the worker when a create meets the full disk, by the broker once
    // the worker (its create or its warm pool having met it) said it takes no new sandboxes
    // for a pause.
    assert!(!errors.is_empty(), "{human}");
    assert!(
        errors
            .keys()
            .all(|e| e == "http 503: no capacity: the worker's disk is full"
                || e == "http 503: no placement capacity"),
        "{human}"
    );
}

/// The memory controller's directory of a cgroup parent, where there is one.
fn memory_dir(parent: &str) -> Option<std::path::PathBuf> {
    let v1 = Path::new("/sys/fs/cgroup/memory").join(parent);
    if v1.join("memory.limit_in_bytes").exists() {
        return Some(v1);
    }
    let v2 = Path::new("/sys/fs/cgroup").join(parent);
    v2.join("memory.max").exists().then_some(v2)
}

/// Sets the memory limit of a cgroup directory (`None`: unlimited).
fn set_limit(dir: &Path, bytes: Option<u64>) {
    let (file, value) = if dir.join("memory.limit_in_bytes").exists() {
        (
            "memory.limit_in_bytes",
            bytes.map_or("-1".to_string(), |b| b.to_string()),
        )
    } else {
        (
            "memory.max",
            bytes.map_or("max".to_string(), |b| b.to_string()),
        )
    };
    std::fs::write(dir.join(file), value).unwrap_or_else(|e| panic!("{file}: {e}"));
}

/// Memory the cgroup uses now (cache included).
fn usage_bytes(dir: &Path) -> u64 {
    let file = if dir.join("memory.usage_in_bytes").exists() {
        "memory.usage_in_bytes"
    } else {
        "memory.current"
    };
    std::fs::read_to_string(dir.join(file))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_tight_cgroup_refuses_creates_and_spares_live_sandboxes() {
    let Some(_serial) = begin("memory pressure").await else {
        return;
    };
    let fleet = Fleet::start(FleetSpec {
        workers: 1,
        warm: 0,
        ..FleetSpec::default()
    })
    .await;
    let owner = fleet.client("drill_owner");
    let held = hold(&owner, 2).await;
    check_held(&held, "before the limit").await;
    let Some(memory) = memory_dir(&fleet.workers[0].cgroup_parent) else {
        eprintln!("skipping drill memory pressure: no memory controller for the cgroup parent");
        for sandbox in &held {
            sandbox.delete().await.expect("delete");
        }
        fleet.finish().assert_none();
        return;
    };
    let headroom = 96u64 << 20;
    let limit = usage_bytes(&memory) + headroom;
    set_limit(&memory, Some(limit));
    // Creates until one is refused (at most 60).
    let mut made: Vec<Sandbox> = Vec::new();
    let mut refusal = None;
    for _ in 0..60 {
        match owner.create_sandbox(spec(Duration::from_secs(300))).await {
            Ok(sandbox) => {
                // Used, so that its Python is loaded.
                check_held(
                    std::slice::from_ref(&sandbox),
                    "a sandbox made under the limit",
                )
                .await;
                made.push(sandbox);
            }
            Err(err) => {
                refusal = Some(class(&err));
                break;
            }
        }
    }
    // v1: `oom_kill` of memory.oom_control; v2: of memory.events. One must be there.
    let oom_kills = ["memory.oom_control", "memory.events"]
        .iter()
        .find_map(|file| {
            let text = std::fs::read_to_string(memory.join(file)).ok()?;
            text.lines()
                .find_map(|l| l.strip_prefix("oom_kill "))
                .and_then(|v| v.trim().parse::<u64>().ok())
        })
        .expect("the OOM kill count of the cgroup parent");
    check_held(&held, "under the limit").await;
    check_held(&made, "under the limit").await;
    let used_at_refusal = usage_bytes(&memory);
    set_limit(&memory, None);
    // The worker measures again every second and tells the broker at once.
    let lifted = Instant::now();
    let again = loop {
        match owner.create_sandbox(spec(Duration::from_secs(300))).await {
            Ok(sandbox) => break sandbox,
            Err(err) if lifted.elapsed() < fleet::WAIT => {
                assert_eq!(err.status(), Some(503), "{err}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(err) => panic!("a create once the limit is lifted: {err}"),
        }
    };
    let accepting_ms = ms_since(lifted);
    for sandbox in held.iter().chain(&made).chain(std::iter::once(&again)) {
        sandbox.delete().await.expect("delete");
    }
    let leaks = fleet.finish();

    let human = format!(
        "cgroup parent limited to its use + {} MiB ({:.0} MiB): {} creates made, then \
         {refusal:?}; {:.0} MiB in use then; OOM kills {oom_kills}; every live sandbox \
         kept working; limit lifted: creates work again after {accepting_ms} ms\nleaks: {}\n",
        headroom >> 20,
        limit as f64 / 1048576.0,
        made.len(),
        used_at_refusal as f64 / 1048576.0,
        leaks.summary()
    );
    crate::load::report(
        "memory pressure",
        &human,
        json!({
            "limit_bytes": limit,
            "made": made.len(),
            "refusal": refusal,
            "oom_kills": oom_kills,
            "accepting_again_ms": accepting_ms,
            "leaks": leaks.summary(),
        }),
    );
    leaks.assert_none();
    // Refused by the worker, or by the broker once the worker told it it takes no more.
    assert!(
        matches!(
            refusal.as_deref(),
            Some(
                "http 503: no capacity: memory high watermark reached"
                    | "http 503: no placement capacity"
            )
        ),
        "{human}"
    );
    assert_eq!(oom_kills, 0, "{human}");
}
