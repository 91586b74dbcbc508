//! Worker tests: provision failures of the backend, seen alike by the filler and by creates.

use super::*;
use crate::backend::{BackendError, ProvisionSpec};

#[tokio::test]
async fn provision_failure_by_tuple() {
    let clock = Arc::new(ManualClock::new(t0()));
    let fake = FakeBackend::new().with_provision_failure(|spec: &ProvisionSpec| {
        (spec.tuple.image == "broken").then(|| BackendError::ImageUnavailable {
            image: "broken".into(),
            reason: "no such image".into(),
        })
    });
    let worker = Worker::new(
        config(),
        vec![Arc::new(fake.clone())],
        clock,
        Arc::new(Metrics::new(false)),
        None,
    );
    let err = worker
        .create_sandbox(&dev(), req("broken", 1), Placement::default())
        .await
        .unwrap_err();
    assert!(matches!(
        err,
        WorkerError::ProvisionFailed(BackendError::ImageUnavailable { .. })
    ));
    assert_eq!(worker.allocated(), (0, 0));
    assert!(worker
        .create_sandbox(&dev(), req("fine", 1), Placement::default())
        .await
        .is_ok());
    assert_eq!(fake.live_count(), 1);
}

#[tokio::test]
async fn request_faults_of_the_backend_are_client_errors() {
    let clock = Arc::new(ManualClock::new(t0()));
    let fake = FakeBackend::new().with_provision_failure(|spec: &ProvisionSpec| {
        match spec.tuple.image.as_str() {
            "ubuntu:24.04" => Some(BackendError::ImageNotFound {
                image: "ubuntu:24.04".into(),
            }),
            "huge" => Some(BackendError::InvalidRequest("cpu 64 exceeds 8".into())),
            "ghcr.io/o/far:1" => Some(BackendError::RegistryUnreachable {
                registry: "ghcr.io".into(),
                reason: "connect timed out (10.0.0.7:443)".into(),
            }),
            _ => None,
        }
    });
    let worker = Worker::new(
        config(),
        vec![Arc::new(fake.clone())],
        clock,
        Arc::new(Metrics::new(false)),
        None,
    );
    let err = worker
        .create_sandbox(&dev(), req("ubuntu:24.04", 1), Placement::default())
        .await
        .unwrap_err();
    match &err {
        WorkerError::ImageNotFound(image) => assert_eq!(image, "ubuntu:24.04"),
        other => panic!("expected ImageNotFound, got {other:?}"),
    }
    assert_eq!(err.to_string(), "image not found: ubuntu:24.04");
    let err = worker
        .create_sandbox(&dev(), req("huge", 1), Placement::default())
        .await
        .unwrap_err();
    assert!(matches!(&err, WorkerError::InvalidCreate(cause) if cause == "cpu 64 exceeds 8"));
    // An unreachable registry is named, its transport details are not.
    let err = worker
        .create_sandbox(&dev(), req("ghcr.io/o/far:1", 1), Placement::default())
        .await
        .unwrap_err();
    assert!(matches!(&err, WorkerError::RegistryUnreachable(r) if r == "ghcr.io"));
    assert_eq!(err.to_string(), "registry ghcr.io is unreachable");
    // Nothing is held by the refused creates.
    assert_eq!(worker.allocated(), (0, 0));
    assert_eq!(fake.live_count(), 0);
}

#[tokio::test]
async fn tuples_that_cannot_fit_are_not_warmed() {
    let h = Harness::with(|c| c.total_cores = 2);
    h.worker.assign_vm_start(VmStartResponse {
        virtualization: "fake".into(),
        image: "img".into(),
        cpu: 4,
    });
    h.worker.assign_vm_start(VmStartResponse {
        virtualization: "container".into(),
        image: "img".into(),
        cpu: 1,
    });
    assert!(h.worker.next_warm_job().is_none());
    assert!(h.worker.lock().pending_starts.is_empty());
    assert_eq!(h.live_vms(), 0);
}
