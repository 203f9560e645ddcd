//! One endpoint's live state, shared by the modules that read and judge it: `balancer` reads
//! requests in flight and latency on every pick, `health` sets the health verdict, `outlier`
//! the ejection state, and `failover` counts what is available ([`Availability`]). Kept here so that each of
//! them depends on this module and none on another for it.
//!
//! [`EndpointStats`] lives in an [`EndpointRegistry`] shared across tables, so an endpoint keeps
//! its state when a table is swapped; an [`EndpointHandle`] is one table's view of an endpoint
//! (address, weight, zone) with its stats.

mod availability;
mod handle;
mod outlier;
mod registry;
mod stats;

pub use self::{
    availability::Availability,
    handle::{EndpointHandle, endpoint_authority},
    outlier::EndpointOutlier,
    registry::{EndpointKey, EndpointRegistry},
    stats::{EndpointStats, EwmaConfig, RequestGuard, health_epoch},
};
