//! The peer row of the start-up benchmark: what the same first print costs through Docker,
//! `docker run --rm --network none <image> python3 -I -S -c 'print(1)'`, against bare python
//! on the host. No registry is reachable here, so the image is the host's own interpreter:
//! `python3`, the libraries it links and its standard library, copied into a directory and
//! `docker import`ed once per interpreter version (`traforato-bench-python:<version>`, kept
//! for the next runs). Where the peer cannot run, its row says why, unmeasured.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::floors;
use crate::{blocking, Args, BenchError, Row, Verdict, COLD_FLOOR_FLAGS, WARMUP};

/// The repository of the image the peer runs (tagged with the interpreter's version).
const REPOSITORY: &str = "traforato-bench-python";

/// The interpreter, in the image at the same path.
const PYTHON: &str = "/usr/bin/python3";

const MEASURE: &str = "docker run + first print (peer)";
const TARGET: &str = "reported";

/// The row of a peer that could not run here, saying why.
fn not_measured(why: String) -> Row {
    say!("  {why}: no peer row");
    Row {
        measure: MEASURE.to_string(),
        system: "-".to_string(),
        floor: why,
        ratio: "-".to_string(),
        target: TARGET,
        verdict: Verdict::NotMeasured,
        figures: Vec::new(),
        series: Vec::new(),
    }
}

/// The peer row; not measured where Docker does not run or the image cannot be made.
pub async fn docker_row(args: &Args, scratch: &Path) -> Result<Row, BenchError> {
    let docker_runs = Command::new("docker")
        .arg("info")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !docker_runs {
        return Ok(not_measured(
            "Docker not running (apt-get install docker.io; start dockerd)".to_string(),
        ));
    }
    let staging = scratch.join("peer-image");
    let image = match blocking(move || ensure_image(&staging)).await? {
        Ok(image) => image,
        Err(e) => return Ok(not_measured(format!("no peer image: {e}"))),
    };
    let mut docker = Vec::new();
    let mut floor = Vec::new();
    for i in 0..WARMUP + args.iterations {
        crate::progress("docker", i, WARMUP + args.iterations);
        let name = image.clone();
        let run = match blocking(move || docker_print(&name)).await? {
            Ok(run) => run,
            Err(e) => return Ok(not_measured(format!("docker run {image} failed: {e}"))),
        };
        let bare = blocking(|| floors::bare_python(COLD_FLOOR_FLAGS))
            .await?
            .map_err(|e| BenchError::Check(format!("bare python: {e}")))?;
        if i >= WARMUP {
            docker.push(run);
            floor.push(bare);
        }
    }
    crate::paired::Comparison {
        measure: MEASURE,
        floor: "bare python",
        target: TARGET,
        // Reported, not judged: any ratio is what the peer costs.
        max_ratio: f64::INFINITY,
    }
    .row(
        ("bare python", &floor),
        ("docker run, network none", &docker),
    )
}

/// One timed `docker run` of the first print, until it printed and the container is gone.
fn docker_print(image: &str) -> std::io::Result<Duration> {
    let started = Instant::now();
    let output = Command::new("docker")
        .args(["run", "--rm", "--network", "none", image, PYTHON])
        .args(COLD_FLOOR_FLAGS)
        .args(["-c", "print(1)"])
        .stdin(Stdio::null())
        .output()?;
    let took = started.elapsed();
    if output.stdout != b"1\n" || !output.status.success() {
        return Err(std::io::Error::other(format!(
            "{}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    Ok(took)
}

/// Imports the image unless Docker has it, and returns its name: the host's interpreter,
/// the libraries it links (as `ldd` lists them) and its standard library, under their own
/// paths, tagged with the interpreter's version (a new interpreter, a new image).
fn ensure_image(staging: &Path) -> std::io::Result<String> {
    let asked = |code: &str| -> std::io::Result<String> {
        let out = Command::new(PYTHON).args(["-c", code]).output()?;
        if !out.status.success() {
            return Err(std::io::Error::other(format!(
                "{PYTHON} -c {code:?}: {}",
                out.status
            )));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    let version = asked("import platform; print(platform.python_version())")?;
    let image = format!("{REPOSITORY}:{version}");
    let present = Command::new("docker")
        .args(["image", "inspect", &image])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()?
        .success();
    if present {
        return Ok(image);
    }
    say!("  building the peer image {image} from the host's python3 (once)");
    let python = std::fs::canonicalize(PYTHON)?;
    let mut files = vec![python.clone()];
    files.extend(linked_libraries(&python)?);
    for file in &files {
        copy_into(staging, file)?;
    }
    // The interpreter under the path the peer runs, and the merged-/usr links.
    let run_path = staging.join(PYTHON.trim_start_matches('/'));
    if !run_path.exists() {
        std::os::unix::fs::symlink(&python, &run_path)?;
    }
    for (link, target) in [
        ("bin", "usr/bin"),
        ("lib", "usr/lib"),
        ("lib64", "usr/lib64"),
    ] {
        if !staging.join(link).exists() {
            std::os::unix::fs::symlink(target, staging.join(link))?;
        }
    }
    let stdlib = PathBuf::from(asked(
        "import sysconfig; print(sysconfig.get_path('stdlib'))",
    )?);
    copy_tree(
        &stdlib,
        &staging.join(stdlib.strip_prefix("/").unwrap_or(&stdlib)),
    )?;
    let mut tar = Command::new("tar")
        .args(["-C"])
        .arg(staging)
        .args(["-c", "."])
        .stdout(Stdio::piped())
        .spawn()?;
    let tar_out = tar.stdout.take().expect("piped");
    let imported = Command::new("docker")
        .args(["import", "-", &image])
        .stdin(tar_out)
        .stdout(Stdio::null())
        .status()?;
    let packed = tar.wait()?;
    let _ = std::fs::remove_dir_all(staging);
    if !(packed.success() && imported.success()) {
        return Err(std::io::Error::other(format!(
            "tar {packed}, docker import {imported}"
        )));
    }
    Ok(image)
}

/// The libraries `binary` links, resolved (`ldd`).
fn linked_libraries(binary: &Path) -> std::io::Result<Vec<PathBuf>> {
    let output = Command::new("ldd").arg(binary).output()?;
    Ok(String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| {
            line.split_whitespace()
                .find(|word| word.starts_with('/'))
                .map(PathBuf::from)
        })
        .collect())
}

/// Copies `source` (symlinks followed) under `staging`, at its own path.
fn copy_into(staging: &Path, source: &Path) -> std::io::Result<()> {
    let target = staging.join(source.strip_prefix("/").unwrap_or(source));
    if let Some(parent) = target.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::copy(source, target).map(|_| ())
}

/// Copies the directory `from` to `to`, files and directories only, without the test suite.
fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let name = entry.file_name();
        let kind = entry.file_type()?;
        if kind.is_dir() && name != "test" && name != "site-packages" {
            copy_tree(&entry.path(), &to.join(&name))?;
        } else if kind.is_file() {
            std::fs::copy(entry.path(), to.join(&name))?;
        }
    }
    Ok(())
}
