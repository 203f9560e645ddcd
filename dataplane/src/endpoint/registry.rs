//! Endpoint state that outlives a table: the same endpoint in the next snapshot keeps its
//! requests in flight, latency estimate and health.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex, PoisonError},
};

use parapet_crds::snapshot::Table;

use super::stats::{EndpointStats, EwmaConfig};

/// What identifies an endpoint across tables.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct EndpointKey {
    pub cluster: String,
    pub address: String,
    pub port: u16,
}

/// Hands out one [`EndpointStats`] per (cluster, address, port), shared by every table
/// that has the endpoint.
///
/// Only touched while a table is swapped in, never per request, so a mutex is fine. Swap
/// in this order: build the new table's balancers (they look their endpoints up here), make
/// the new table current, then [`retain_table`](Self::retain_table) it to forget endpoints
/// that left. Balancers of the old table keep their `Arc`s until they are dropped.
#[derive(Debug, Default)]
pub struct EndpointRegistry {
    config: EwmaConfig,
    endpoints: Mutex<HashMap<EndpointKey, Arc<EndpointStats>>>,
}

impl EndpointRegistry {
    pub fn new(config: EwmaConfig) -> Self {
        Self {
            config,
            endpoints: Mutex::default(),
        }
    }

    /// The endpoint's state, created on first sight.
    pub fn stats(&self, cluster: &str, address: &str, port: u16) -> Arc<EndpointStats> {
        let key = EndpointKey {
            cluster: cluster.to_string(),
            address: address.to_string(),
            port,
        };
        let mut endpoints = self.lock();
        Arc::clone(
            endpoints
                .entry(key)
                .or_insert_with(|| Arc::new(EndpointStats::new(self.config))),
        )
    }

    /// Forgets every endpoint that `table` does not list (routable or not); returns the
    /// forgotten ones (their metrics series go too).
    pub fn retain_table(&self, table: &Table) -> Vec<EndpointKey> {
        let keep: HashSet<(&str, &str, u16)> = table
            .clusters
            .iter()
            .flat_map(|c| {
                c.endpoints
                    .iter()
                    .map(|e| (c.name.as_str(), e.address.as_str(), e.port))
            })
            .collect();
        self.retain(|k| keep.contains(&(k.cluster.as_str(), k.address.as_str(), k.port)))
    }

    /// Forgets the endpoints for which `keep` is false; returns them.
    pub fn retain(&self, mut keep: impl FnMut(&EndpointKey) -> bool) -> Vec<EndpointKey> {
        let mut gone = Vec::new();
        self.lock().retain(|k, _| {
            let kept = keep(k);
            if !kept {
                gone.push(k.clone());
            }
            kept
        });
        gone
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<EndpointKey, Arc<EndpointStats>>> {
        // The map stays consistent whatever panicked while holding it.
        self.endpoints
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}
