//! The backend conformance suite ([`traforato_core::backend::conformance`]) against every
//! backend: the `fake` test double (with its declared limits), the real `container` backend
//! (as root), and the container backend reduced to its primitives (exec, connect, destroy),
//! which checks the shared run-code and files implementations over exec.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::mpsc;
use traforato_core::backend::conformance::{Capabilities, Outcome, Suite};
use traforato_core::backend::container::{ContainerBackend, ContainerConfig};
use traforato_core::backend::fake::{FakeBackend, FakeCode, FakeExec};
use traforato_core::backend::{
    BackendError, BoxedStream, ExecControl, ExecExit, ExecSpec, OutputChunk, ProvisionSpec, Vm,
    VmBackend,
};
use traforato_core::id::{ExecId, LocalVmId};

fn passed(outcomes: &[Outcome]) -> Vec<&'static str> {
    outcomes
        .iter()
        .filter_map(|o| match o {
            Outcome::Passed(check) => Some(*check),
            Outcome::Skipped(_) => None,
        })
        .collect()
}

/// A fake scripted with what the suite runs and expects (the fake interprets nothing).
fn scripted_fake() -> FakeBackend {
    FakeBackend::new()
        .script("echo conformance", FakeExec::new().stdout("conformance\n"))
        .script("exit 3", FakeExec::new().exit_code(3))
        .script("cat", FakeExec::new().echo_stdin())
        .script("sleep 30", FakeExec::new().sleep(Duration::from_secs(30)))
        .script("echo still here", FakeExec::new().stdout("still here\n"))
        .script_code(
            "print(\"conformance\")",
            FakeCode::Runs(FakeExec::new().stdout("conformance\n")),
        )
        .script_code(
            "print(\"never\"",
            FakeCode::SyntaxError("SyntaxError: '(' was never closed".into()),
        )
}

#[tokio::test]
async fn the_fake_backend_conforms_within_its_declared_limits() {
    let fake = scripted_fake();
    let live = fake.clone();
    let capabilities = Capabilities {
        // Its exec and run-code are scripted, its files in memory.
        shell: false,
        interpreters: false,
        shared_files: false,
        leftovers: None,
    }
    .with_leftovers(move |id| {
        live.live_vm_ids()
            .contains(id)
            .then(|| format!("fake vm {id}"))
            .into_iter()
            .collect()
    });
    let outcomes = Suite::new(Arc::new(fake.clone()), "img", capabilities)
        .run()
        .await
        .unwrap_or_else(|failure| panic!("{failure}"));
    let passed = passed(&outcomes);
    for check in [
        "exec_timeout",
        "files_contract",
        "run_code",
        "destroy_leaves_nothing",
    ] {
        assert!(passed.contains(&check), "{check} did not run: {outcomes:?}");
    }
    assert_eq!(fake.live_count(), 0);
}

/// A container backend of its own (state dir, cgroup parent), or `None` after saying why.
fn container(tag: &str) -> Option<(Arc<ContainerBackend>, PathBuf)> {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipping: the container backend needs root (runs in CI as root)");
        return None;
    }
    let config = ContainerConfig::for_tests(
        &format!("conf-{tag}"),
        env!("CARGO_BIN_EXE_traforato-sandbox-init"),
    );
    let state_dir = config.state_dir.clone();
    match ContainerBackend::new(config) {
        Ok(backend) => Some((Arc::new(backend), state_dir)),
        Err(BackendError::Unavailable(why)) => {
            eprintln!("skipping: container backend unavailable here: {why}");
            None
        }
        Err(e) => panic!("backend failed to start: {e}"),
    }
}

/// What a destroyed container sandbox could leave: its state dir, mounts, cgroups.
fn container_leftovers(
    backend: Arc<ContainerBackend>,
    state_dir: PathBuf,
) -> impl Fn(&LocalVmId) -> Vec<String> + Send + Sync {
    move |id| {
        let mut left = Vec::new();
        let dir = state_dir.join(id.to_string());
        if dir.exists() {
            left.push(dir.display().to_string());
        }
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let needle = id.to_string();
        left.extend(
            mounts
                .lines()
                .filter_map(|l| l.split(' ').nth(4))
                .filter(|m| m.contains(&needle))
                .map(|m| format!("mount {m}")),
        );
        left.extend(
            backend
                .cgroup_dirs(id)
                .into_iter()
                .filter(|cg| cg.exists())
                .map(|cg| cg.display().to_string()),
        );
        left
    }
}

/// Runs every check on `under_test` (built over the container backend `tag`), all of which
/// must pass, then removes what the backend made.
async fn conforms(tag: &str, under_test: impl FnOnce(Arc<ContainerBackend>) -> Arc<dyn VmBackend>) {
    let Some((backend, state_dir)) = container(tag) else {
        return;
    };
    let capabilities = Capabilities::real()
        .with_leftovers(container_leftovers(backend.clone(), state_dir.clone()));
    let result = Suite::new(under_test(backend.clone()), "host", capabilities)
        .run()
        .await;
    let _ = backend.cleanup_leftovers().await;
    let _ = backend.remove_cgroup_parents();
    let _ = std::fs::remove_dir_all(state_dir);
    let outcomes = result.unwrap_or_else(|failure| panic!("{failure}"));
    assert!(
        outcomes.iter().all(|o| matches!(o, Outcome::Passed(_))),
        "{outcomes:?}"
    );
}

#[tokio::test]
async fn the_container_backend_conforms() {
    conforms("full", |backend| backend).await;
}

/// A backend that offers only the primitives of its inner backend's sandboxes.
struct PrimitivesOnly(Arc<ContainerBackend>);

/// A sandbox with only `vm_id`, `exec`, `control_exec`, `connect` and `destroy`: run-code and
/// the files API come from the trait's defaults over exec.
struct PrimitiveVm(Arc<dyn Vm>);

#[async_trait]
impl VmBackend for PrimitivesOnly {
    fn virtualization(&self) -> &str {
        self.0.virtualization()
    }

    async fn provision(&self, spec: ProvisionSpec) -> Result<Arc<dyn Vm>, BackendError> {
        let vm = self.0.provision(spec).await?;
        Ok(Arc::new(PrimitiveVm(vm)))
    }
}

#[async_trait]
impl Vm for PrimitiveVm {
    fn vm_id(&self) -> LocalVmId {
        self.0.vm_id()
    }

    async fn exec(
        &self,
        spec: ExecSpec,
        output: mpsc::Sender<OutputChunk>,
    ) -> Result<ExecExit, BackendError> {
        self.0.exec(spec, output).await
    }

    async fn control_exec(
        &self,
        exec_id: &ExecId,
        control: ExecControl,
    ) -> Result<(), BackendError> {
        self.0.control_exec(exec_id, control).await
    }

    async fn connect(&self, port: u16) -> Result<BoxedStream, BackendError> {
        self.0.connect(port).await
    }

    async fn destroy(&self) -> Result<(), BackendError> {
        self.0.destroy().await
    }
}

#[tokio::test]
async fn a_backend_of_primitives_conforms_through_the_defaults() {
    conforms("primitives", |backend| Arc::new(PrimitivesOnly(backend))).await;
}
