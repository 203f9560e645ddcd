//! Parapet's data plane. Modules follow a request's path: `listener` → `proxy` (`router` →
//! `balancer` → `upstream`), with `admin`, `snapshot` and `standalone` beside them.

#![forbid(unsafe_code)]

pub mod admin;
pub mod app;
pub mod balancer;
pub mod cache;
pub mod listener;
pub mod metrics;
pub mod proxy;
pub mod router;
pub mod snapshot;
pub mod standalone;
pub mod upstream;
