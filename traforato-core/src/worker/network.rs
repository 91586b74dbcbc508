//! Network egress of the worker's sandboxes: the policy a create or a change asks for, checked
//! against what the worker allows, and given to the sandbox's VM (at create or claim time, so
//! that a warm sandbox serves any mode).

use std::sync::Arc;

use super::{Worker, WorkerError};
use crate::api::{NetworkPolicy, NetworkResponse};
use crate::auth::Principal;
use crate::backend::BackendError;
use crate::id::SandboxId;
use crate::network::{Egress, Policy};

impl Worker {
    /// The policy of a create (`None`: the worker's default), or why it is refused: `400`
    /// when it does not parse, `403` when the worker does not allow the mode.
    pub(super) fn create_policy(
        &self,
        wire: Option<&NetworkPolicy>,
    ) -> Result<Policy, WorkerError> {
        let default = self.config.network.default_egress;
        let policy = match wire {
            Some(wire) => Policy::parse(wire, Some(default))?,
            None => Policy::parse(&NetworkPolicy::default(), Some(default))?,
        };
        self.check_mode(policy.egress())?;
        Ok(policy)
    }

    /// `403` unless clients may ask for `mode` (the default mode always is).
    fn check_mode(&self, mode: Egress) -> Result<(), WorkerError> {
        let network = &self.config.network;
        if mode == network.default_egress || network.allowed_modes.contains(&mode) {
            return Ok(());
        }
        let mut allowed: Vec<Egress> = network.allowed_modes.clone();
        allowed.push(network.default_egress);
        allowed.sort();
        allowed.dedup();
        Err(WorkerError::EgressNotAllowed {
            mode,
            allowed: allowed
                .iter()
                .map(|m| m.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        })
    }

    /// Gives the sandbox `id` the egress of `policy` and records it; the caller has checked
    /// the principal.
    pub(super) async fn attach_network(
        &self,
        principal: &Principal,
        id: &SandboxId,
        policy: Policy,
    ) -> Result<(), WorkerError> {
        let (vm, change) = self.with_sandbox(principal, id, |e| {
            (e.vm.clone(), Arc::clone(&e.network_change))
        })?;
        // Two changes at once take turns: what the VM has is what is recorded.
        let _turn = change.lock().await;
        vm.set_network(&policy).await.map_err(network_error)?;
        tracing::info!(
            worker_id = %self.config.worker_id,
            sandbox_id = %id,
            egress = %policy.egress(),
            rules = policy.rules().len(),
            "sandbox network set"
        );
        self.with_sandbox(principal, id, |entry| entry.network = policy)
    }

    /// `PATCH /sandboxes/{id}/network`: replaces the sandbox's egress policy (its `egress` is
    /// required).
    pub async fn set_network(
        &self,
        principal: &Principal,
        id: &SandboxId,
        wire: &NetworkPolicy,
    ) -> Result<NetworkResponse, WorkerError> {
        self.check_sandbox(principal, id)?;
        let policy = Policy::parse(wire, None)?;
        self.check_mode(policy.egress())?;
        let network = policy.to_wire();
        self.attach_network(principal, id, policy).await?;
        Ok(NetworkResponse {
            sandbox_id: id.to_string(),
            network,
        })
    }
}

/// What a backend's refusal to set a network means for the caller.
fn network_error(error: BackendError) -> WorkerError {
    match error {
        BackendError::Gone => WorkerError::SandboxNotFound,
        BackendError::Unsupported(what) => WorkerError::Unsupported(what),
        // The host cannot plumb it now (a missing program, no address left): the cause is
        // logged, the client gets a 503.
        other @ (BackendError::Unavailable(_)
        | BackendError::Capacity(_)
        | BackendError::Setup(_)
        | BackendError::Io { .. }) => WorkerError::ProvisionFailed(other),
        other => WorkerError::Backend(other),
    }
}
