//! Connections to endpoints: keep-alive pools that outlive table swaps.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::{TokioExecutor, TokioTimer},
};
use parapet_crds::snapshot::{Cluster, UpstreamProtocol};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Every body the proxy sends or returns.
pub type ProxyBody = BoxBody<Bytes, BoxError>;
pub type UpstreamClient = Client<HttpConnector, ProxyBody>;

/// Clients by connection settings. A pool's connections survive a table swap as long as its
/// settings do, so a push does not cold-start every upstream connection.
#[derive(Clone, Default)]
pub struct ClientPool {
    clients: Arc<Mutex<HashMap<(u64, bool), UpstreamClient>>>,
}

impl ClientPool {
    pub fn client_for(&self, cluster: &Cluster) -> UpstreamClient {
        let http2 = cluster.protocol == UpstreamProtocol::Http2;
        let key = (cluster.connect_timeout_ms, http2);
        // Only taken while a table is built, never per request.
        let mut map = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(key)
            .or_insert_with(|| build(Duration::from_millis(cluster.connect_timeout_ms), http2))
            .clone()
    }
}

fn build(connect_timeout: Duration, http2: bool) -> UpstreamClient {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(connect_timeout));
    connector.set_nodelay(true);
    connector.enforce_http(true);
    let mut b = Client::builder(TokioExecutor::new());
    b.pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(256)
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new());
    if http2 {
        b.http2_only(true);
    }
    b.build(connector)
}
