//! Bounded load: a fixed number of requests from a few concurrent workers, stopped early
//! at a time limit, each result recorded with its latency and answering backend.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{Method, StatusCode};

use crate::client::Client;

#[derive(Clone, Debug)]
pub struct Sample {
    /// `None`: the request failed without an HTTP answer.
    pub status: Option<StatusCode>,
    pub latency: Duration,
    pub backend: Option<String>,
    /// When it was sent, since the load started.
    pub at: Duration,
}

impl Sample {
    pub fn ok(&self) -> bool {
        self.status == Some(StatusCode::OK)
    }
}

/// What to send.
#[derive(Clone, Debug)]
pub struct Target {
    pub to: SocketAddr,
    pub host: String,
    pub path: String,
    pub method: Method,
    pub headers: Vec<(String, String)>,
}

impl Target {
    pub fn get(to: SocketAddr, host: &str, path: &str) -> Self {
        Self {
            to,
            host: host.to_string(),
            path: path.to_string(),
            method: Method::GET,
            headers: Vec::new(),
        }
    }
}

/// Sends `total` requests from `concurrency` workers, stopping early after `max_time`.
pub async fn run(
    client: &Client,
    target: &Target,
    concurrency: usize,
    total: usize,
    max_time: Duration,
) -> Vec<Sample> {
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let (c, t, next) = (client.clone(), target.clone(), next.clone());
        workers.push(tokio::spawn(async move {
            let mut out = Vec::new();
            while next.fetch_add(1, Ordering::SeqCst) < total && start.elapsed() < max_time {
                let headers: Vec<(&str, &str)> = t
                    .headers
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                let at = start.elapsed();
                let sent = Instant::now();
                let r = c
                    .send(
                        t.to,
                        t.method.clone(),
                        &t.host,
                        &t.path,
                        &headers,
                        Bytes::new(),
                    )
                    .await;
                out.push(Sample {
                    status: r.as_ref().ok().map(|r| r.status),
                    latency: sent.elapsed(),
                    backend: r.ok().and_then(|r| r.backend().map(str::to_string)),
                    at,
                });
            }
            out
        }));
    }
    let mut all = Vec::new();
    for w in workers {
        all.extend(w.await.expect("load worker"));
    }
    all
}

/// The `q` quantile of the samples' latencies.
pub fn quantile(samples: &[Sample], q: f64) -> Duration {
    let mut l: Vec<Duration> = samples.iter().map(|s| s.latency).collect();
    l.sort();
    if l.is_empty() {
        return Duration::ZERO;
    }
    let i = ((q * l.len() as f64).ceil() as usize).clamp(1, l.len()) - 1;
    l[i]
}

/// How many samples each backend answered.
pub fn by_backend(samples: &[Sample]) -> std::collections::BTreeMap<String, usize> {
    let mut m = std::collections::BTreeMap::new();
    for s in samples {
        *m.entry(s.backend.clone().unwrap_or_else(|| "-".into()))
            .or_insert(0) += 1;
    }
    m
}
