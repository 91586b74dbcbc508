//! [`Broker::builder`]: a broker for embedding, every setting at its default (the
//! [`LeastLoaded`] scheduler, the system clock, a fresh metrics registry).

use std::sync::Arc;

use super::{Broker, BrokerConfig};
use crate::clock::{Clock, SystemClock};
use crate::id::ComponentId;
use crate::scheduler::{LeastLoaded, Scheduler};
use crate::telemetry::Metrics;

/// Builds a [`Broker`]; start with [`Broker::builder`].
#[must_use]
pub struct BrokerBuilder {
    config: BrokerConfig,
    clock: Option<Arc<dyn Clock>>,
    scheduler: Option<Arc<dyn Scheduler>>,
    metrics: Option<Arc<Metrics>>,
}

impl Broker {
    /// A builder of a broker for embedding.
    ///
    /// ```
    /// use traforato_core::broker::Broker;
    ///
    /// let broker = Broker::builder().default_virtualization("container").build();
    /// assert_eq!(broker.config().broker_id.as_str(), "broker_local");
    /// ```
    pub fn builder() -> BrokerBuilder {
        BrokerBuilder {
            config: BrokerConfig::default(),
            clock: None,
            scheduler: None,
            metrics: None,
        }
    }
}

impl BrokerBuilder {
    /// This broker's id (named in every sandbox id); default `broker_local`.
    pub fn broker_id(mut self, id: ComponentId) -> Self {
        self.config.broker_id = id;
        self
    }

    /// The virtualization of creates that name none; default `container`.
    pub fn default_virtualization(mut self, name: impl Into<String>) -> Self {
        self.config.default_virtualization = name.into();
        self
    }

    /// Every setting at once.
    pub fn config(mut self, config: BrokerConfig) -> Self {
        self.config = config;
        self
    }

    /// Where creates go; default [`LeastLoaded`].
    pub fn scheduler(mut self, scheduler: Arc<dyn Scheduler>) -> Self {
        self.scheduler = Some(scheduler);
        self
    }

    /// The clock leases are measured with.
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = Some(clock);
        self
    }

    /// The metrics registry.
    pub fn metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Builds the broker. Run [`Broker::run_lease_sweeper`] beside it to expire leases.
    pub fn build(self) -> Arc<Broker> {
        Arc::new(Broker::new(
            self.config,
            self.clock.unwrap_or_else(|| Arc::new(SystemClock)),
            self.scheduler.unwrap_or_else(|| Arc::new(LeastLoaded)),
            self.metrics
                .unwrap_or_else(|| Arc::new(Metrics::new(false))),
        ))
    }
}
