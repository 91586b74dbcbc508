//! The worker's run: leftover cleanup, the background tasks (TTL reaper, warm-pool filler,
//! VM events, registration loop), draining, and the orderly shutdown that deregisters and
//! destroys every sandbox and warm VM.

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::watch;
use tokio::time::MissedTickBehavior;

use super::sandbox::{destroy_vm, DESTROY_CONCURRENCY};
use super::state::SandboxEntry;
use super::Worker;

/// Shortest reap period (a zero interval would spin).
const MIN_REAP_INTERVAL: Duration = Duration::from_millis(10);

/// Completes once `stop` says so (or its sender is gone).
pub(super) async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}

impl Worker {
    pub(super) async fn run_until(self: Arc<Self>, shutdown: impl Future<Output = ()> + Send) {
        self.cleanup_leftovers().await;
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut tasks = vec![
            tokio::spawn(self.clone().run_reaper(stop_rx.clone())),
            tokio::spawn(self.clone().run_filler(stop_rx.clone())),
        ];
        let events = self
            .events_rx
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(events) = events {
            tasks.push(tokio::spawn(
                self.clone().run_events(events, stop_rx.clone()),
            ));
        }
        let registration = self
            .broker
            .is_some()
            .then(|| tokio::spawn(self.clone().run_registration(stop_rx.clone())));
        tracing::info!(
            worker_id = %self.config.worker_id,
            backends = ?self.backends.keys().collect::<Vec<_>>(),
            "worker running"
        );

        shutdown.await;

        tracing::info!(worker_id = %self.config.worker_id, "worker shutting down");
        self.lock().shutting_down = true;
        let _ = stop_tx.send(true);
        if let Some(registration) = registration {
            let _ = registration.await;
            self.deregister().await;
        }
        for task in tasks {
            let _ = task.await;
        }
        self.destroy_everything().await;
        for backend in self.backends.values() {
            backend.shutdown().await;
        }
    }

    async fn cleanup_leftovers(&self) {
        for (virtualization, backend) in &self.backends {
            match backend.cleanup_leftovers().await {
                Ok(0) => {}
                Ok(count) => tracing::info!(
                    worker_id = %self.config.worker_id,
                    virtualization = %virtualization,
                    count,
                    "cleaned up leftover sandboxes"
                ),
                Err(error) => tracing::warn!(
                    worker_id = %self.config.worker_id,
                    virtualization = %virtualization,
                    error = %error,
                    "leftover cleanup failed"
                ),
            }
        }
    }

    async fn run_reaper(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut ticker = tokio::time::interval(self.config.reap_interval.max(MIN_REAP_INTERVAL));
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stopped(&mut stop) => break,
                _ = ticker.tick() => {
                    self.reap().await;
                    self.recheck_memory_watermark();
                    self.end_backend_full_pause();
                }
            }
        }
    }

    /// While new sandboxes are refused for memory, measures again: memory can come back
    /// without a delete (a limit raised, processes exiting), and then the broker hears at
    /// once that this worker accepts sandboxes again, and the warm pool refills.
    fn recheck_memory_watermark(&self) {
        if self.over_watermark.load(Ordering::Relaxed) && !self.above_memory_watermark() {
            tracing::info!(
                worker_id = %self.config.worker_id,
                "memory back below the high watermark: accepting sandboxes again"
            );
            self.heartbeat_wake.notify_one();
            self.pool_wake.notify_one();
        }
    }

    /// Drains the worker before it is stopped (an upgrade, a host going away): from now on it
    /// takes no new sandbox (creates answer `503 no capacity: worker draining`, and the broker,
    /// told at once, places them elsewhere), keeps no warm pool (its idle warm sandboxes are
    /// destroyed), and serves its live sandboxes until they are deleted or expire. Returns
    /// how many are live (a create already under way when it is called still completes and
    /// counts from then on). Calling it again does nothing more; there is no undoing it but a
    /// restart.
    pub async fn drain(&self) -> usize {
        let retirees = {
            let mut state = self.lock();
            if std::mem::replace(&mut state.draining, true) {
                return state.sandboxes.len();
            }
            std::iter::from_fn(|| self.take_retiree(&mut state)).collect::<Vec<_>>()
        };
        let retired = retirees.len();
        futures::stream::iter(retirees)
            .for_each_concurrent(DESTROY_CONCURRENCY, |(_, _, vm)| destroy_vm(vm, "draining"))
            .await;
        self.update_warm_gauges();
        // The broker hears of it now, not at the next heartbeat.
        self.heartbeat_wake.notify_one();
        let live = self.lock().sandboxes.len();
        tracing::info!(
            worker_id = %self.config.worker_id,
            warm_retired = retired,
            live_sandboxes = live,
            "draining: no new sandboxes; live ones run until deleted or expired"
        );
        live
    }

    /// True once [`Worker::drain`] was called.
    pub fn is_draining(&self) -> bool {
        self.lock().draining
    }

    /// Destroys every sandbox and ready VM (shutdown).
    async fn destroy_everything(&self) {
        let (sandboxes, ready): (Vec<SandboxEntry>, _) = {
            let mut state = self.lock();
            let ids: Vec<_> = state.sandboxes.keys().copied().collect();
            let sandboxes = ids
                .iter()
                .filter_map(|id| state.remove_sandbox(id))
                .collect();
            (sandboxes, state.ready.drain())
        };
        let (sandbox_count, ready_count) = (sandboxes.len(), ready.len());
        self.update_capacity_gauges();
        self.update_warm_gauges();
        futures::stream::iter(sandboxes)
            .for_each_concurrent(DESTROY_CONCURRENCY, |entry| self.teardown(entry))
            .await;
        futures::stream::iter(ready)
            .for_each_concurrent(DESTROY_CONCURRENCY, |(_, _, vm)| destroy_vm(vm, "warm"))
            .await;
        tracing::info!(
            worker_id = %self.config.worker_id,
            sandboxes = sandbox_count,
            ready_vms = ready_count,
            "worker stopped"
        );
    }
}
