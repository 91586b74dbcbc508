//! Worker tests: network egress policies of creates and live sandboxes: defaults, what the
//! worker allows, normalisation, warm claims, changes, and a backend that cannot give egress.

use super::*;
use crate::api::NetworkPolicy;
use crate::network::{Egress, PolicyError};

fn with_network(policy: NetworkPolicy) -> CreateSandboxRequest {
    CreateSandboxRequest {
        network: Some(policy),
        ..req("img", 1)
    }
}

#[tokio::test]
async fn creates_get_the_egress_they_ask_for_normalised() {
    let h = Harness::new();
    let plain = h.create(&dev(), req("img", 1)).await;
    let id = sid(&plain.sandbox_id);
    assert_eq!(
        h.worker.get_sandbox(&dev(), &id).unwrap().network,
        NetworkPolicy::egress("none"),
        "the default"
    );

    let open = h
        .create(&dev(), with_network(NetworkPolicy::egress("ALL")))
        .await;
    let open_id = sid(&open.sandbox_id);
    assert_eq!(
        h.worker.get_sandbox(&dev(), &open_id).unwrap().network,
        NetworkPolicy::egress("all")
    );
    let vm = h.fake.vm(&open_id.local_vm_id()).unwrap();
    assert_eq!(vm.network().egress(), Egress::All, "given to the VM");

    let listed = h
        .create(
            &dev(),
            with_network(NetworkPolicy::allow([
                "PyPI.org",
                "10.1.2.3/24",
                "pypi.org",
            ])),
        )
        .await;
    assert_eq!(
        h.worker
            .get_sandbox(&dev(), &sid(&listed.sandbox_id))
            .unwrap()
            .network,
        NetworkPolicy::allow(["pypi.org", "10.1.2.0/24"])
    );

    for (policy, expected) in [
        (
            NetworkPolicy::egress("some"),
            PolicyError::UnknownEgress("some".into()),
        ),
        (
            NetworkPolicy {
                egress: "none".into(),
                allow: vec!["pypi.org".into()],
            },
            PolicyError::AllowWithoutAllowMode,
        ),
    ] {
        match h
            .worker
            .create_sandbox(&dev(), with_network(policy), Placement::default())
            .await
        {
            Err(WorkerError::InvalidNetwork(error)) => assert_eq!(error, expected),
            other => panic!("expected InvalidNetwork, got {other:?}"),
        }
    }
    assert_eq!(h.live_vms(), 3, "refused creates booted nothing");
}

#[tokio::test]
async fn the_worker_decides_the_default_and_the_modes_clients_may_ask_for() {
    let h = Harness::with(|config| {
        config.network = NetworkConfig {
            default_egress: Egress::All,
            allowed_modes: vec![Egress::None],
        };
    });
    let created = h.create(&dev(), req("img", 1)).await;
    assert_eq!(
        h.worker
            .get_sandbox(&dev(), &sid(&created.sandbox_id))
            .unwrap()
            .network,
        NetworkPolicy::egress("all"),
        "the default is always allowed"
    );
    let err = h
        .worker
        .create_sandbox(
            &dev(),
            with_network(NetworkPolicy::allow(["pypi.org"])),
            Placement::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "network egress allow is not allowed on this worker (allowed: none, all)"
    );
    assert!(matches!(err, WorkerError::EgressNotAllowed { .. }));
    assert_eq!(h.live_vms(), 1);
}

#[tokio::test]
async fn a_claimed_warm_sandbox_gets_its_network_and_policies_change_live() {
    let h = Harness::with(|config| config.auth_mode = AuthMode::Prod);
    let vm_id = h.warm("fake", "img", 1).await;
    assert_eq!(h.fake.vm(&vm_id).unwrap().network().egress(), Egress::None);
    let alice = client("alice");
    let created = h
        .create(&alice, with_network(NetworkPolicy::egress("all")))
        .await;
    assert_eq!(created.start_type, "warm");
    let id = sid(&created.sandbox_id);
    assert_eq!(id.local_vm_id(), vm_id);
    assert_eq!(h.fake.vm(&vm_id).unwrap().network().egress(), Egress::All);

    let changed = h
        .worker
        .set_network(&alice, &id, &NetworkPolicy::allow(["*.Example.com:443"]))
        .await
        .unwrap();
    assert_eq!(changed.network, NetworkPolicy::allow(["*.example.com:443"]));
    assert_eq!(
        h.worker.get_sandbox(&alice, &id).unwrap().network,
        changed.network
    );
    assert_eq!(h.fake.vm(&vm_id).unwrap().network().egress(), Egress::Allow);
    assert!(matches!(
        h.worker
            .set_network(&alice, &id, &NetworkPolicy::default())
            .await,
        Err(WorkerError::InvalidNetwork(PolicyError::MissingEgress))
    ));
    assert!(matches!(
        h.worker
            .set_network(&client("bob"), &id, &NetworkPolicy::egress("none"))
            .await,
        Err(WorkerError::OwnershipMismatch)
    ));
    h.worker.delete_sandbox(&alice, &id).await.unwrap();
    assert!(matches!(
        h.worker
            .set_network(&alice, &id, &NetworkPolicy::egress("none"))
            .await,
        Err(WorkerError::SandboxNotFound)
    ));
}

#[tokio::test]
async fn a_backend_without_egress_refuses_it_and_keeps_nothing() {
    let fake = FakeBackend::new().with_network_refused();
    let worker = worker_with(fake.clone(), |_| {});
    let err = worker
        .create_sandbox(
            &dev(),
            with_network(NetworkPolicy::egress("all")),
            Placement::default(),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, WorkerError::Unsupported("network egress")),
        "{err:?}"
    );
    assert_eq!(
        fake.live_count(),
        0,
        "the sandbox that could not get its network is gone"
    );
    assert_eq!(worker.allocated(), (0, 0));
    // `none` needs nothing of the backend.
    assert!(worker
        .create_sandbox(
            &dev(),
            with_network(NetworkPolicy::egress("none")),
            Placement::default()
        )
        .await
        .is_ok());
}

#[tokio::test]
async fn a_mode_the_backend_lacks_is_refused_before_any_sandbox_is_made() {
    let fake = FakeBackend::new().with_egress_modes(&[Egress::None, Egress::All]);
    let worker = worker_with(fake.clone(), |_| {});
    let err = worker
        .create_sandbox(
            &dev(),
            with_network(NetworkPolicy::allow(["pypi.org"])),
            Placement::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "not supported by this backend: network egress allow"
    );
    assert_eq!(fake.counters().provision_attempts, 0);
}

#[tokio::test]
async fn what_a_sandbox_network_carried_is_shown_and_counted_when_it_ends() {
    let h = Harness::new();
    let created = h
        .create(&dev(), with_network(NetworkPolicy::egress("all")))
        .await;
    let id = sid(&created.sandbox_id);
    assert_eq!(
        h.worker.get_sandbox(&dev(), &id).unwrap().network_bytes,
        None
    );
    let bytes = crate::api::NetworkBytes {
        sent: 1200,
        received: 34_000,
    };
    h.fake
        .vm(&id.local_vm_id())
        .unwrap()
        .set_network_bytes(bytes);
    assert_eq!(
        h.worker.get_sandbox(&dev(), &id).unwrap().network_bytes,
        Some(bytes)
    );
    h.worker.delete_sandbox(&dev(), &id).await.unwrap();
    let counted = |direction| {
        h.worker.metrics().worker.sandbox_network_bytes.value(
            &crate::telemetry::NetworkBytesLabels {
                worker_id: "worker_a",
                direction,
            },
        )
    };
    assert_eq!(counted("sent"), Some(1200.0));
    assert_eq!(counted("received"), Some(34_000.0));
}
