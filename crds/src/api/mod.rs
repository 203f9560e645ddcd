//! The custom resources users `kubectl apply`: group `parapet.dev`, version `v1alpha1`.
//!
//! Validation lives in the schema wherever the API server can enforce it (enums, bounds,
//! patterns, CEL rules); what it cannot check (a regex that does not compile, a reference
//! to a missing object) is reported by the compiler as a diagnostic.
//!
//! The specs (`ApiRouteSpec`, ...) always exist with the same serde shape. The
//! Kubernetes side is behind the `kube` feature: the custom resource types (`ApiRoute`,
//! ...) with their status, and the schema's CEL rules and printer columns. Without it the
//! specs still derive `JsonSchema`, which their `#[schemars]` field attributes need, but no
//! CRD is generated from them. The compiler reads [`Object`]s, the same in both.

mod cache;
mod common;
mod object;
mod pool;
mod route;

pub use cache::*;
pub use common::*;
pub use object::*;
pub use pool::*;
pub use route::*;

pub const GROUP: &str = "parapet.dev";
pub const VERSION: &str = "v1alpha1";
