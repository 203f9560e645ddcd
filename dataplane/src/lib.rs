//! Parapet's data plane. Modules follow a request's path: `listener` → `downstream` (the
//! connection's codec) → `proxy` (`router` → `auth` → `ratelimit` → `lanes` → `failover` →
//! `balancer` → `breaker` → `upstream`, with `retry` and `hedge` around the attempts and
//! `outlier` judging their results), with `health`, `admin`, `snapshot` and `standalone`
//! beside them, and `accesslog`, which the proxy hands each finished request to. `endpoint`
//! holds the per-endpoint state that `balancer`, `health`, `outlier` and `failover` share.

#![forbid(unsafe_code)]

pub mod accesslog;
pub mod admin;
pub mod app;
pub mod auth;
pub mod balancer;
pub mod breaker;
pub mod cache;
pub mod codec;
pub mod downstream;
pub mod endpoint;
pub mod extauth;
pub mod failover;
pub mod fields;
pub mod fnv;
#[doc(hidden)]
pub mod fuzzing;
pub mod health;
pub mod hedge;
pub mod iprules;
pub mod jwt;
pub mod lanes;
pub mod listener;
pub mod liveness;
pub mod metrics;
pub mod outlier;
pub mod proxy;
pub mod query;
pub mod ratelimit;
pub mod retry;
pub mod router;
pub mod snapshot;
pub mod standalone;
pub mod tls;
pub mod trace;
pub mod upstream;
