//! Talking to a data plane's admin port.

use std::net::SocketAddr;

use bytes::Bytes;
use http::{Method, StatusCode};
use parapet_crds::snapshot::Snapshot;

use crate::client::{Client, Reply};

pub async fn push(
    client: &Client,
    admin: SocketAddr,
    token: Option<&str>,
    snapshot: &Snapshot,
) -> Reply {
    push_raw(
        client,
        admin,
        token,
        Bytes::from(serde_json::to_vec(snapshot).unwrap()),
    )
    .await
}

pub async fn push_raw(
    client: &Client,
    admin: SocketAddr,
    token: Option<&str>,
    body: Bytes,
) -> Reply {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("content-type", "application/json")];
    if let Some(a) = &auth {
        headers.push(("authorization", a.as_str()));
    }
    client
        .send(admin, Method::PUT, "admin", "/v1/snapshot", &headers, body)
        .await
        .expect("admin port answers")
}

pub async fn ready(client: &Client, admin: SocketAddr) -> bool {
    client
        .get(admin, "admin", "/readyz")
        .await
        .is_ok_and(|r| r.status == StatusCode::OK)
}

pub async fn metric(client: &Client, admin: SocketAddr, line_prefix: &str) -> f64 {
    let r = client
        .get(admin, "admin", "/metrics")
        .await
        .expect("metrics");
    r.text()
        .lines()
        .find(|l| l.starts_with(line_prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// The sum of every sample of metric `name` whose labels contain all of `labels` (each
/// `key="value"`).
pub async fn metric_sum(client: &Client, admin: SocketAddr, name: &str, labels: &[&str]) -> f64 {
    let r = client
        .get(admin, "admin", "/metrics")
        .await
        .expect("metrics");
    r.text()
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter(|l| labels.iter().all(|want| l.contains(want)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
