//! Parapet's data plane. Modules follow a request's path: `listener` → `proxy` (`router` →
//! `balancer` → `upstream`), with `admin`, `snapshot` and `standalone` beside them.

#![forbid(unsafe_code)]

pub mod balancer;
pub mod router;

// Wired in once the balancer API lands (the feature only exists during that work).
#[cfg(feature = "proxy")]
pub mod admin;
#[cfg(feature = "proxy")]
pub mod app;
#[cfg(feature = "proxy")]
pub mod listener;
#[cfg(feature = "proxy")]
pub mod metrics;
#[cfg(feature = "proxy")]
pub mod proxy;
#[cfg(feature = "proxy")]
pub mod snapshot;
#[cfg(feature = "proxy")]
pub mod standalone;
#[cfg(feature = "proxy")]
pub mod upstream;
