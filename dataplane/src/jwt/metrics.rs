//! The JWT check's metrics.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

/// The JWT check's metrics: JWKS fetches by result (`ok`, `error`), and the keys held in
/// all remote sets. No label per URL or provider, so the series stay few.
#[derive(Clone, Default)]
pub struct JwtMetrics {
    pub(super) fetches: Family<FetchLabels, Counter>,
    pub(super) keys: Gauge,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct FetchLabels {
    pub(super) result: &'static str,
}

impl JwtMetrics {
    /// Registers `jwks_fetches_total{result}` and `jwks_keys` (with the data plane's
    /// `parapet` prefix: `parapet_jwks_fetches_total`, `parapet_jwks_keys`).
    pub fn register(&self, registry: &mut Registry) {
        for result in ["ok", "error"] {
            // Both series exist from the start, so a rate over them is never empty.
            let _ = self.fetches.get_or_create(&FetchLabels { result });
        }
        registry.register(
            "jwks_fetches",
            "Fetches of remote JSON Web Key Sets (JWT providers' keys), by result: ok, error (the last good keys stay in use)",
            self.fetches.clone(),
        );
        registry.register(
            "jwks_keys",
            "Signature keys held from remote JSON Web Key Sets, all providers together",
            self.keys.clone(),
        );
    }

    pub(super) fn count_fetch(&self, result: &'static str) {
        self.fetches.get_or_create(&FetchLabels { result }).inc();
    }
}
