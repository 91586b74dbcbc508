//! Worker tests: the operator's image routes in core (who may use them, which backend answers,
//! what their failures mean) and the count of image pulls.

use super::*;
use crate::backend::{BackendError, ProvisionSpec};
use crate::telemetry::ImagePullLabels;

fn pulls(worker: &Worker, result: &str) -> f64 {
    worker
        .metrics()
        .worker
        .image_pulls
        .value(&ImagePullLabels {
            worker_id: "worker_a",
            result,
        })
        .unwrap_or(0.0)
}

#[tokio::test]
async fn operators_list_pull_and_remove_images() {
    let fake = FakeBackend::new().with_images();
    let worker = worker_with(fake.clone(), |_| {});
    let dev = dev();
    assert!(worker.images(&dev, None).await.unwrap().images.is_empty());
    let pulled = worker.pull_image(&dev, None, " py:3 ").await.unwrap();
    assert_eq!(pulled.reference, "py:3");
    assert_eq!(pulls(&worker, "ok"), 1.0);
    assert!(matches!(
        worker.pull_image(&dev, None, "missing").await,
        Err(WorkerError::ImageNotFound(image)) if image == "missing"
    ));
    assert_eq!(pulls(&worker, "not_found"), 1.0);
    assert!(matches!(
        worker.pull_image(&dev, None, "  ").await,
        Err(WorkerError::ImageRequired)
    ));

    // In use while a sandbox of it lives: listed so, and not removable.
    let created = worker
        .create_sandbox(&dev, req("py:3", 1), Placement::default())
        .await
        .unwrap();
    let list = worker.images(&dev, Some("FAKE")).await.unwrap();
    assert_eq!(list.images.len(), 1);
    assert_eq!(list.images[0].in_use, 1);
    assert!(matches!(
        worker.remove_image(&dev, None, "py:3").await,
        Err(WorkerError::ImageInUse(image)) if image == "py:3"
    ));
    let CreateOutcome::Created(created) = created else {
        panic!("created");
    };
    worker
        .delete_sandbox(&dev, &sid(&created.sandbox_id))
        .await
        .unwrap();
    let removed = worker.remove_image(&dev, None, "py:3").await.unwrap();
    assert_eq!(removed.freed_bytes, 1 << 20);
    assert!(matches!(
        worker.remove_image(&dev, None, "py:3").await,
        Err(WorkerError::ImageNotFound(_))
    ));

    // A backend without images, and one the worker does not have.
    assert!(matches!(
        worker.images(&dev, Some("vetu")).await,
        Err(WorkerError::Unsupported(_))
    ));
    assert!(matches!(
        worker.images(&dev, Some("tart")).await,
        Err(WorkerError::UnsupportedVirtualization(name)) if name == "tart"
    ));
}

#[tokio::test]
async fn in_prod_only_the_configured_operators_manage_images() {
    let worker = worker_with(FakeBackend::new().with_images(), |config| {
        config.auth_mode = AuthMode::Prod;
        config.operators = vec!["ops".to_string()];
    });
    for principal in [client("alice"), dev()] {
        assert!(matches!(
            worker.images(&principal, None).await,
            Err(WorkerError::NotAnOperator)
        ));
        assert!(matches!(
            worker.pull_image(&principal, None, "py:3").await,
            Err(WorkerError::NotAnOperator)
        ));
        assert!(matches!(
            worker.remove_image(&principal, None, "py:3").await,
            Err(WorkerError::NotAnOperator)
        ));
    }
    assert_eq!(pulls(&worker, "ok"), 0.0, "a refused pull is no pull");
    worker
        .pull_image(&client("ops"), None, "py:3")
        .await
        .unwrap();
    assert_eq!(
        worker
            .images(&client("ops"), None)
            .await
            .unwrap()
            .images
            .len(),
        1
    );
}

#[tokio::test]
async fn creates_count_the_pulls_they_waited_for_and_failed() {
    let fake = FakeBackend::new().with_provision_failure(|spec: &ProvisionSpec| {
        match spec.tuple.image.as_str() {
            "unknown" => Some(BackendError::ImageNotFound {
                image: "unknown".into(),
            }),
            "offline" => Some(BackendError::RegistryUnreachable {
                registry: "registry.lan".into(),
                reason: "connection refused".into(),
            }),
            _ => None,
        }
    });
    let worker = worker_with(fake, |_| {});
    for image in ["unknown", "offline"] {
        assert!(worker
            .create_sandbox(&dev(), req(image, 1), Placement::default())
            .await
            .is_err());
    }
    assert!(worker
        .create_sandbox(&dev(), req("fine", 1), Placement::default())
        .await
        .is_ok());
    assert_eq!(pulls(&worker, "not_found"), 1.0);
    assert_eq!(pulls(&worker, "unreachable"), 1.0);
    assert_eq!(pulls(&worker, "ok"), 0.0, "the fake pulls nothing");
}
