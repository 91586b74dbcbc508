//! traforato-core: the traforato SDK, with no HTTP in it.
//!
//! A tour:
//! - [`id`], [`tuple`], [`path`] and [`api`]: identifiers, the warm-pool key, sandbox paths and
//!   the wire types shared with clients; [`network`]: egress policies; [`duration`]: Go-style durations. These build without
//!   the `runtime` feature.
//! - [`broker`]: the control plane: worker registry and leases, ready-VM hints, placement
//!   through a [`scheduler::Scheduler`], sandbox-scoped redirects.
//! - [`worker`]: the data plane: sandboxes, execs, files, ports, TTLs, the registration loop.
//! - [`warm`]: demand decay and warm-pool targets.
//! - [`backend`]: the [`backend::VmBackend`] trait and its implementations.
//! - [`telemetry`]: the metric catalogue, label policy and trace context.

pub mod api;
pub mod duration;
pub mod id;
pub mod network;
pub mod path;
pub mod tuple;

#[cfg(feature = "runtime")]
pub mod auth;
#[cfg(feature = "runtime")]
pub mod backend;
#[cfg(feature = "runtime")]
pub mod broker;
#[cfg(feature = "runtime")]
pub mod clock;
#[cfg(feature = "runtime")]
pub mod scheduler;
#[cfg(feature = "runtime")]
pub mod telemetry;
#[cfg(feature = "runtime")]
pub mod warm;
#[cfg(feature = "runtime")]
pub mod worker;

#[cfg(all(feature = "fuzzing", target_os = "linux"))]
#[doc(hidden)]
pub mod fuzzing;
