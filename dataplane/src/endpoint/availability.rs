//! How many of a cluster's endpoints are available (healthy and not ejected), counted again
//! only after some endpoint's health or ejection changed.

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use super::{handle::EndpointHandle, stats::health_epoch};

/// A cluster's available endpoint counts (all zones, local zone), recounted only after some
/// endpoint's health or ejection changed.
#[derive(Debug)]
pub struct Availability {
    routable: u32,
    local_routable: u32,
    /// Health epoch (low 32 bits) | available (16 bits) | local available (16 bits).
    cache: AtomicU64,
}

impl Availability {
    pub fn new(endpoints: &[Arc<EndpointHandle>]) -> Self {
        let routable = endpoints.iter().filter(|e| e.routable).count() as u32;
        let local_routable = endpoints.iter().filter(|e| e.routable && e.local).count() as u32;
        Self {
            routable,
            local_routable,
            // Epoch 0 never matches: the first call counts.
            cache: AtomicU64::new(0),
        }
    }

    pub fn routable(&self) -> u32 {
        self.routable
    }

    pub fn local_routable(&self) -> u32 {
        self.local_routable
    }

    /// (available, locally available) endpoints now.
    pub fn counts(&self, endpoints: &[Arc<EndpointHandle>]) -> (u32, u32) {
        let epoch = health_epoch() & 0xffff_ffff;
        let cached = self.cache.load(Ordering::Acquire);
        if cached >> 32 == epoch {
            return (((cached >> 16) & 0xffff) as u32, (cached & 0xffff) as u32);
        }
        let mut avail = 0u64;
        let mut local = 0u64;
        for e in endpoints
            .iter()
            .filter(|e| e.routable && e.stats.is_available())
        {
            avail += 1;
            local += u64::from(e.local);
        }
        let (avail, local) = (avail.min(0xffff), local.min(0xffff));
        self.cache
            .store((epoch << 32) | (avail << 16) | local, Ordering::Release);
        (avail as u32, local as u32)
    }
}
