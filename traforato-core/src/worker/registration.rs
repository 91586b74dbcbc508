//! The registration loop: register at once, renew every heartbeat (with jitter, within half
//! the granted lease), re-announce ready VMs after a first registration or a broker restart,
//! drain the VM starts the broker assigned, back off on failure, deregister on shutdown.

use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use tokio::sync::watch;
use tokio::time::MissedTickBehavior;

use super::lifecycle::stopped;
use super::{BrokerLink, LinkError, Worker};
use crate::api::RegistrationRequest;

/// VM starts taken per heartbeat at most.
pub(super) const VM_STARTS_PER_HEARTBEAT: usize = 16;
/// First pause after a failed registration; it doubles.
pub(super) const REGISTER_BACKOFF_START: Duration = Duration::from_secs(1);
/// Longest pause after failed registrations.
pub(super) const REGISTER_BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Budget of the deregistration on shutdown.
pub(super) const DEREGISTER_BUDGET: Duration = Duration::from_secs(2);
/// Shortest heartbeat (a zero period would spin).
const MIN_HEARTBEAT: Duration = Duration::from_millis(10);

/// The heartbeat delay for jitter `percent` (clamped to 95) and a draw `n` in
/// `[0, 2 × percent]`: `base × (1 + (n − percent)/100)`, at least 1 s; exactly `base` when
/// the jitter is 0.
pub(super) fn jittered(base: Duration, percent: u8, n: u32) -> Duration {
    let p = u32::from(percent.min(95));
    if p == 0 {
        return base;
    }
    let n = n.min(2 * p);
    let factor = 1.0 + (f64::from(n) - f64::from(p)) / 100.0;
    base.mul_f64(factor).max(Duration::from_secs(1))
}

fn heartbeat_delay(base: Duration, percent: u8) -> Duration {
    let p = u32::from(percent.min(95));
    let n = if p == 0 {
        0
    } else {
        rand::thread_rng().gen_range(0..=2 * p)
    };
    jittered(base, percent, n)
}

fn as_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl Worker {
    /// The body of a registration, with the current load.
    pub(super) fn registration_request(&self) -> RegistrationRequest {
        // Measured here, outside the lock, for this report and the events that follow.
        self.above_memory_watermark();
        let load = self.capacity_report(&self.lock());
        RegistrationRequest {
            hostname: self.config.hostname.trim().to_string(),
            base_url: self.config.advertise_url.trim().to_string(),
            hardware_sku: self.config.hardware_sku.trim().to_string(),
            total_cores: as_i64(self.capacity_cores()),
            total_memory_mib: as_i64(self.capacity_memory_mib()),
            max_live_sandboxes: i64::from(self.config.max_live_sandboxes),
            live_sandboxes: load.live_sandboxes,
            allocated_cores: load.allocated_cores,
            allocated_memory_mib: load.allocated_memory_mib,
            accepting_sandboxes: Some(load.accepting_sandboxes),
            virtualizations: self.backends.keys().cloned().collect(),
        }
    }

    pub(super) async fn run_registration(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let Some(broker) = self.broker.clone() else {
            return;
        };
        let worker_id = &self.config.worker_id;
        // The broker instance we are registered with; `None` while not registered.
        let mut registered: Option<String> = None;
        let mut backoff = REGISTER_BACKOFF_START;
        loop {
            let request = self.registration_request();
            let result = tokio::select! {
                _ = stopped(&mut stop) => break,
                result = broker.register(worker_id, &request) => result,
            };
            // Failed because the broker could not be reached (not a refusal).
            let unreachable = matches!(result, Err(LinkError::Unreachable(_)));
            let delay = match result {
                Ok(response) => {
                    backoff = REGISTER_BACKOFF_START;
                    if registered.as_deref() != Some(response.broker_instance_id.as_str()) {
                        let announced = self.announce_ready();
                        tracing::info!(
                            worker_id = %worker_id,
                            broker_instance_id = %response.broker_instance_id,
                            lease_ttl_seconds = response.lease_ttl_seconds,
                            announced_ready = announced,
                            "worker registered"
                        );
                        registered = Some(response.broker_instance_id.clone());
                    }
                    self.drain_vm_starts(broker.as_ref(), &mut stop).await;
                    let mut delay = heartbeat_delay(
                        self.config.registration_heartbeat,
                        self.config.registration_jitter_percent,
                    );
                    if response.lease_ttl_seconds > 0 {
                        delay = delay.min(Duration::from_secs(response.lease_ttl_seconds) / 2);
                    }
                    delay.max(MIN_HEARTBEAT)
                }
                Err(error) => {
                    registered = None;
                    let delay = backoff;
                    backoff = (backoff * 2).min(REGISTER_BACKOFF_MAX);
                    tracing::warn!(
                        worker_id = %worker_id,
                        error = %error,
                        retry_in = ?delay,
                        "worker registration failed"
                    );
                    delay
                }
            };
            let probing = !self.config.registration_probe.is_zero();
            tokio::select! {
                _ = stopped(&mut stop) => break,
                _ = tokio::time::sleep(delay) => {}
                // The broker's view of the load is wrong: renew now. A refused registration
                // keeps its backoff.
                _ = self.heartbeat_wake.notified(), if registered.is_some() => {}
                instance = self.broker_restarted(broker.as_ref(), registered.as_deref()), if probing && registered.is_some() => {
                    tracing::info!(
                        worker_id = %worker_id,
                        broker_instance_id = %instance,
                        "broker restarted: registering again"
                    );
                }
                // Unreachable (a partition, a broker down): register as soon as it answers
                // again, not after a backoff that grew during the outage. A refusal, or a
                // broker that answers probes but not registrations, keeps the backoff.
                _ = self.broker_back(broker.as_ref()), if probing && registered.is_none() && unreachable => {
                    tracing::info!(worker_id = %worker_id, "broker reachable again: registering");
                }
            }
        }
    }

    /// Completes with the broker's instance id once it differs from `registered`: asks every
    /// [`WorkerConfig::registration_probe`](super::WorkerConfig::registration_probe), through
    /// an unreachable spell (a restart) too. Never completes for a link that cannot tell.
    async fn broker_restarted(&self, broker: &dyn BrokerLink, registered: Option<&str>) -> String {
        self.probe_until(broker, |answer| match answer {
            Ok(instance) if Some(instance.as_str()) != registered => Some(instance),
            _ => None,
        })
        .await
    }

    /// Completes once the broker answers a probe after at least one probe failed (it was
    /// out of reach and is back); never for a broker that keeps answering, nor for a link
    /// that cannot tell.
    async fn broker_back(&self, broker: &dyn BrokerLink) {
        let mut was_down = false;
        self.probe_until(broker, |answer| match answer {
            Ok(_) if was_down => Some(()),
            Ok(_) => None,
            Err(()) => {
                was_down = true;
                None
            }
        })
        .await
    }

    /// Asks the broker's instance id every
    /// [`WorkerConfig::registration_probe`](super::WorkerConfig::registration_probe) (the
    /// first after one period) until `done` makes something of an answer (`Err`: the probe
    /// failed, logged here); never completes for a link that cannot tell.
    async fn probe_until<T>(
        &self,
        broker: &dyn BrokerLink,
        mut done: impl FnMut(Result<String, ()>) -> Option<T>,
    ) -> T {
        let mut ticker = tokio::time::interval(self.config.registration_probe);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        ticker.tick().await;
        loop {
            ticker.tick().await;
            let answer = match broker.broker_instance().await {
                Ok(Some(instance)) => Ok(instance),
                Ok(None) => std::future::pending().await,
                Err(error) => {
                    tracing::debug!(
                        worker_id = %self.config.worker_id,
                        error = %error,
                        "broker probe failed"
                    );
                    Err(())
                }
            };
            if let Some(value) = done(answer) {
                return value;
            }
        }
    }

    /// Takes up to [`VM_STARTS_PER_HEARTBEAT`] pending VM starts from the broker.
    async fn drain_vm_starts(&self, broker: &dyn BrokerLink, stop: &mut watch::Receiver<bool>) {
        for _ in 0..VM_STARTS_PER_HEARTBEAT {
            let result = tokio::select! {
                _ = stopped(stop) => return,
                result = broker.vm_start(&self.config.worker_id) => result,
            };
            match result {
                Ok(Some(start)) => self.assign_vm_start(start),
                Ok(None) => return,
                Err(error) => {
                    tracing::warn!(
                        worker_id = %self.config.worker_id,
                        error = %error,
                        "worker vm start request failed"
                    );
                    return;
                }
            }
        }
    }

    /// Best-effort deregistration within [`DEREGISTER_BUDGET`].
    pub(super) async fn deregister(&self) {
        let Some(broker) = &self.broker else {
            return;
        };
        let result =
            tokio::time::timeout(DEREGISTER_BUDGET, broker.deregister(&self.config.worker_id))
                .await;
        let error = match result {
            Ok(Ok(())) => {
                tracing::info!(worker_id = %self.config.worker_id, "worker deregistered");
                return;
            }
            Ok(Err(error)) => error.to_string(),
            Err(_) => "timed out".to_string(),
        };
        tracing::warn!(
            worker_id = %self.config.worker_id,
            error = %error,
            "worker deregistration failed"
        );
    }
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn jitter_formula() {
        let base = Duration::from_secs(30);
        assert_eq!(jittered(base, 0, 0), base);
        assert_eq!(
            jittered(Duration::from_millis(20), 0, 0),
            Duration::from_millis(20)
        );
        assert_eq!(jittered(base, 10, 10), base);
        assert_eq!(jittered(base, 10, 0), Duration::from_secs(27));
        assert_eq!(jittered(base, 10, 20), Duration::from_secs(33));
        // Clamped to 95 %, floored at 1 s.
        assert_eq!(jittered(base, 200, 0), Duration::from_millis(1500));
        assert_eq!(
            jittered(Duration::from_secs(2), 95, 0),
            Duration::from_secs(1)
        );
        for _ in 0..100 {
            let d = heartbeat_delay(base, 15);
            assert!(d >= Duration::from_millis(25_500) && d <= Duration::from_millis(34_500));
        }
    }
}
