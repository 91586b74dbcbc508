//! Sandbox lifecycle after create: describe, lease renewal, delete, TTL expiry and teardown.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::StreamExt;

use super::state::SandboxEntry;
use super::{Worker, WorkerError};
use crate::api::{LeaseResponse, SandboxResponse};
use crate::auth::Principal;
use crate::backend::Vm;
use crate::id::SandboxId;
use crate::telemetry::NetworkBytesLabels;

/// How many sandboxes are destroyed at once (expiry sweeps, shutdown).
pub(super) const DESTROY_CONCURRENCY: usize = 8;

/// `now + ttl`, saturating at the largest representable time.
pub(super) fn expiry(now: DateTime<Utc>, ttl: Duration) -> DateTime<Utc> {
    chrono::Duration::from_std(ttl)
        .ok()
        .and_then(|d| now.checked_add_signed(d))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// Destroys a VM in its own task, so that a dropped caller (a client that hung up) cannot
/// interrupt the teardown half-way. Errors are logged.
pub(super) async fn destroy_vm(vm: Arc<dyn Vm>, what: &'static str) {
    let vm_id = vm.vm_id();
    let task = tokio::spawn(async move { vm.destroy().await });
    match task.await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => {
            tracing::error!(local_vm_id = %vm_id, what, error = %error, "vm destroy failed");
        }
        Err(error) => {
            tracing::error!(local_vm_id = %vm_id, what, error = %error, "vm destroy task failed");
        }
    }
}

impl Worker {
    pub(super) fn describe_sandbox(
        &self,
        principal: &Principal,
        id: &SandboxId,
    ) -> Result<SandboxResponse, WorkerError> {
        let (mut response, vm) = self.with_sandbox(principal, id, |e| {
            let response = SandboxResponse {
                sandbox_id: e.id.to_string(),
                image: e.tuple.image.clone(),
                cpu: e.tuple.cpu,
                memory_mib: e.memory_mib,
                virtualization: e.tuple.virtualization.clone(),
                created_at: e.created_at,
                expires_at: e.expires_at,
                network: e.network.to_wire(),
                network_bytes: None,
            };
            (response, e.vm.clone())
        })?;
        // Read outside the state lock.
        response.network_bytes = vm.network_bytes();
        Ok(response)
    }

    pub(super) fn lease(
        &self,
        principal: &Principal,
        id: &SandboxId,
        ttl: Duration,
    ) -> Result<LeaseResponse, WorkerError> {
        // As the contract: checked before the lookup.
        if ttl.is_zero() {
            return Err(WorkerError::InvalidTtl);
        }
        let expires_at = expiry(self.clock.now(), ttl.min(self.config.max_ttl));
        self.with_sandbox(principal, id, |e| {
            e.expires_at = expires_at;
            LeaseResponse {
                sandbox_id: e.id.to_string(),
                expires_at,
            }
        })
    }

    pub(super) async fn delete(
        &self,
        principal: &Principal,
        id: &SandboxId,
    ) -> Result<(), WorkerError> {
        // Ownership first, then removal in the same section so that two deletes cannot both
        // succeed.
        let entry = {
            if !self.is_own(id) {
                return Err(WorkerError::SandboxNotFound);
            }
            let now = self.clock.now();
            let mut state = self.lock();
            let entry = state
                .sandboxes
                .get(&id.local_vm_id())
                .filter(|e| e.expires_at > now)
                .ok_or(WorkerError::SandboxNotFound)?;
            if self.config.auth_mode.is_prod() && entry.owner != principal.client_id {
                return Err(WorkerError::OwnershipMismatch);
            }
            state
                .remove_sandbox(&id.local_vm_id())
                .ok_or(WorkerError::SandboxNotFound)?
        };
        self.sandboxes_left();
        tracing::info!(
            worker_id = %self.config.worker_id,
            sandbox_id = %entry.id,
            "sandbox deleted"
        );
        self.teardown(entry).await;
        Ok(())
    }

    /// The gauges after sandboxes left the state (their capacity is released by
    /// [`Worker::teardown`]).
    fn sandboxes_left(&self) {
        self.update_capacity_gauges();
        self.update_warm_gauges();
    }

    /// Destroys a removed sandbox's VM, stops its execs, then releases its capacity.
    pub(super) async fn teardown(&self, entry: SandboxEntry) {
        let usage = entry.usage();
        let SandboxEntry { vm, execs, .. } = entry;
        // What its network carried counts once it is over.
        if let Some(bytes) = vm.network_bytes() {
            let metric = &self.metrics.worker.sandbox_network_bytes;
            let worker_id = self.config.worker_id.as_str();
            for (direction, count) in [("sent", bytes.sent), ("received", bytes.received)] {
                metric.add(
                    &NetworkBytesLabels {
                        worker_id,
                        direction,
                    },
                    count as f64,
                );
            }
        }
        destroy_vm(vm, "sandbox").await;
        for exec in execs.values() {
            exec.abort();
        }
        self.lock().reserved.sub(usage);
        // The capacity is free now: gauges, the warm pool and the broker learn it once.
        self.sandboxes_left();
        self.pool_wake.notify_one();
        self.capacity_freed();
    }

    pub(super) async fn reap(&self) -> usize {
        let idle = self.reap_idle_sessions().await;
        if idle > 0 {
            tracing::info!(sessions = idle, "idle exec sessions closed");
        }
        let now = self.clock.now();
        let expired: Vec<SandboxEntry> = {
            let mut state = self.lock();
            let ids: Vec<_> = state
                .sandboxes
                .iter()
                .filter(|(_, e)| e.expires_at <= now)
                .map(|(k, _)| *k)
                .collect();
            ids.iter()
                .filter_map(|id| state.remove_sandbox(id))
                .collect()
        };
        let count = expired.len();
        if count == 0 {
            return 0;
        }
        self.sandboxes_left();
        futures::stream::iter(expired)
            .for_each_concurrent(DESTROY_CONCURRENCY, |entry| async move {
                tracing::info!(
                    worker_id = %self.config.worker_id,
                    sandbox_id = %entry.id,
                    expires_at = %crate::api::timestamp::format(&entry.expires_at),
                    "sandbox expired"
                );
                self.teardown(entry).await;
            })
            .await;
        count
    }
}
