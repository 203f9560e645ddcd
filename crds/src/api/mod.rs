//! The custom resources users `kubectl apply`: group `parapet.dev`, version `v1alpha1`.
//!
//! Validation lives in the schema wherever the API server can enforce it (enums, bounds,
//! patterns, CEL rules); what it cannot check (a regex that does not compile, a reference
//! to a missing object) is reported by the compiler as a diagnostic.

mod cache;
mod common;
mod pool;
mod route;

pub use cache::*;
pub use common::*;
pub use pool::*;
pub use route::*;

pub const GROUP: &str = "parapet.dev";
pub const VERSION: &str = "v1alpha1";
