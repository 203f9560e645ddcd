//! Parapet's data plane. Modules follow a request's path: `listener` → `router` →
//! `balancer` → `upstream`, with `admin` and `snapshot` beside them.

pub mod balancer;
pub mod router;
