//! Pushing the table to every data-plane pod: concurrently (bounded), with per-pod
//! exponential backoff, and a periodic resync that re-pushes to pods whose acknowledged
//! table is not the current one (a restarted pod, a pod the HPA just added).

use std::{
    collections::BTreeMap,
    io::Write,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use http::{Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::{
    events::{Event, EventType, Recorder},
    reflector::Store,
};
use parapet_crds::snapshot::Snapshot;

use crate::tls::{PushClient, PushTls};
use tokio::{
    sync::{Notify, Semaphore, watch},
    task::JoinSet,
    time::Instant,
};

use crate::{
    compile::{Compiled, Sources, VersionClock},
    metrics::Metrics,
};

/// Tables above this size are sent gzip-compressed.
const GZIP_ABOVE: usize = 64 * 1024;

/// A data-plane pod's admin endpoint.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Target {
    /// `host:port`: an IP (IPv6 in brackets) or, from FQDN slices, a DNS name.
    pub addr: String,
    /// Pod name from the EndpointSlice's targetRef, else the address.
    pub name: String,
    pub ready: bool,
}

/// What each pod has acknowledged, for status and metrics.
#[derive(Clone, Debug, Default)]
pub struct PodState {
    pub acked_version: u64,
    pub acked_hash: String,
    /// What the acknowledged table carries (for per-object `Programmed`).
    pub acked_sources: Option<Arc<Sources>>,
    pub failures: u32,
    pub next_attempt: Option<Instant>,
    pub last_error: Option<String>,
    pub in_flight: bool,
}

/// Shared view of the fleet: the targets and what each acknowledged.
#[derive(Default)]
pub struct Fleet {
    pub pods: Mutex<BTreeMap<String, (Target, PodState)>>,
    /// Signalled when an acknowledgement changes (the status writer listens).
    pub acked: Notify,
}

impl Fleet {
    /// (pods whose table carries this object at this generation, all pods).
    pub fn serving(
        &self,
        kind: &str,
        namespace: &str,
        name: &str,
        generation: i64,
    ) -> (usize, usize) {
        let probe = (
            kind.to_string(),
            namespace.to_string(),
            name.to_string(),
            generation,
        );
        let pods = self.pods.lock().unwrap_or_else(|p| p.into_inner());
        let n = pods
            .values()
            .filter(|(_, s)| {
                s.acked_sources
                    .as_ref()
                    .is_some_and(|set| set.contains(&probe))
            })
            .count();
        (n, pods.len())
    }
}

pub fn targets(store: &Store<EndpointSlice>, port_name: &str) -> Vec<Target> {
    let mut out = Vec::new();
    for slice in store.state() {
        let Some(ports) = slice.ports.as_ref() else {
            continue;
        };
        let port = if ports.len() == 1 {
            ports[0].port
        } else {
            ports
                .iter()
                .find(|p| p.name.as_deref() == Some(port_name))
                .and_then(|p| p.port)
        };
        let Some(port) = port.and_then(|p| u16::try_from(p).ok()) else {
            continue;
        };
        for e in slice.endpoints.iter().flatten() {
            // Not-ready pods included: a fresh pod becomes ready only after its first table.
            let ready = e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
            let terminating = e
                .conditions
                .as_ref()
                .and_then(|c| c.terminating)
                .unwrap_or(false);
            if terminating {
                continue;
            }
            for a in &e.addresses {
                let addr = match a.parse::<std::net::IpAddr>() {
                    Ok(ip) => SocketAddr::new(ip, port).to_string(),
                    Err(_) if slice.address_type == "FQDN" => format!("{a}:{port}"),
                    Err(_) => continue,
                };
                let name = e
                    .target_ref
                    .as_ref()
                    .and_then(|r| r.name.clone())
                    .unwrap_or_else(|| addr.clone());
                out.push(Target { addr, name, ready });
            }
        }
    }
    out.sort();
    out.dedup_by(|a, b| a.addr == b.addr);
    out
}

pub struct Pusher {
    pub fleet: Arc<Fleet>,
    pub token: Option<String>,
    pub concurrency: usize,
    pub resync: Duration,
    pub timeout: Duration,
    pub metrics: Arc<Metrics>,
    pub clock: Arc<VersionClock>,
    /// Asks the compiler to publish the current table again under a new version.
    pub republish: Arc<Notify>,
    /// Where to report pushes that keep failing: a recorder and the data-plane Service.
    pub events: Option<(Recorder, ObjectReference)>,
    /// TLS to the data planes' admin port (`--dataplane-ca`); plain HTTP without.
    pub tls: Option<Arc<PushTls>>,
}

struct Outcome {
    addr: String,
    version: u64,
    hash: String,
    sources: Arc<Sources>,
    result: Result<(), PushError>,
    seconds: f64,
}

#[derive(Debug)]
enum PushError {
    /// The pod holds a version at or above ours.
    Behind {
        current: u64,
    },
    Refused {
        status: StatusCode,
        body: String,
    },
    Transport(String),
}

impl std::fmt::Display for PushError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Behind { current } => {
                write!(f, "the pod holds version {current}, newer than ours")
            }
            Self::Refused { status, body } => write!(f, "refused with {status}: {body}"),
            Self::Transport(e) => write!(f, "{e}"),
        }
    }
}

impl Pusher {
    /// Pushes while `leader` is true. Targets come from `store`.
    pub async fn run(
        self: Arc<Self>,
        store: Store<EndpointSlice>,
        port_name: String,
        targets_changed: Arc<Notify>,
        mut tables: watch::Receiver<Option<Arc<Compiled>>>,
        mut leader: watch::Receiver<bool>,
    ) {
        let client = crate::tls::push_client(self.tls.as_deref());
        let scheme = crate::tls::scheme(self.tls.as_deref());
        let sem = Arc::new(Semaphore::new(self.concurrency.max(1)));
        let mut running: JoinSet<Outcome> = JoinSet::new();
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        let mut checks: JoinSet<(String, Option<(u64, String)>)> = JoinSet::new();
        let mut last_check = Instant::now();
        // The body for the current table, encoded once per (version, hash).
        let mut encoded: Option<(u64, String, Bytes, bool)> = None;
        // The table as pushed: the compiled one, or (when it has rate limits) a copy that
        // carries the fleet size under its own version, made again when the fleet changes.
        // (compiled version, compiled hash, fleet pods, table to push)
        let mut shared: Option<(u64, String, u32, Arc<Snapshot>)> = None;
        loop {
            let pod_count;
            // Refresh the target list.
            {
                let now = targets(&store, &port_name);
                let mut pods = self.fleet.pods.lock().unwrap_or_else(|p| p.into_inner());
                pods.retain(|addr, _| now.iter().any(|t| t.addr == *addr));
                for t in now {
                    pods.entry(t.addr.clone())
                        .and_modify(|(old, _)| *old = t.clone())
                        .or_insert((t, PodState::default()));
                }
                self.metrics.dataplane_pods.set(pods.len() as i64);
                pod_count = u32::try_from(pods.len()).unwrap_or(u32::MAX);
            }
            let current = tables.borrow().clone();
            let is_leader = *leader.borrow();
            if is_leader && let Some(compiled) = &current {
                let fleet_pods = if has_rate_limits(&compiled.snapshot.table) {
                    pod_count
                } else {
                    0
                };
                if shared.as_ref().is_none_or(|(v, h, n, _)| {
                    (*v, h.as_str(), *n)
                        != (
                            compiled.snapshot.version,
                            compiled.snapshot.hash.as_str(),
                            fleet_pods,
                        )
                }) {
                    let snap = with_fleet_pods(&compiled.snapshot, fleet_pods, &self.clock);
                    if fleet_pods > 0 {
                        tracing::info!(
                            version = snap.version,
                            fleet_pods,
                            "rate limits divided among the data-plane pods"
                        );
                    }
                    shared = Some((
                        compiled.snapshot.version,
                        compiled.snapshot.hash.clone(),
                        fleet_pods,
                        snap,
                    ));
                }
                let snapshot = shared.as_ref().map(|s| s.3.clone()).expect("set above");
                let c = Pushed {
                    snapshot,
                    sources: compiled.sources.clone(),
                };
                if encoded
                    .as_ref()
                    .is_none_or(|(v, h, _, _)| *v != c.snapshot.version || *h != c.snapshot.hash)
                {
                    let (body, gzip) = encode(&c.snapshot);
                    encoded = Some((c.snapshot.version, c.snapshot.hash.clone(), body, gzip));
                }
                let (_, hash, body, gzip) = encoded.clone().expect("encoded above");
                let now = Instant::now();
                let mut pods = self.fleet.pods.lock().unwrap_or_else(|p| p.into_inner());
                for (addr, (_, st)) in pods.iter_mut() {
                    let behind = st.acked_hash != hash || st.acked_version != c.snapshot.version;
                    let due = st.next_attempt.is_none_or(|t| now >= t);
                    if st.in_flight || !(behind && due) {
                        continue;
                    }
                    st.in_flight = true;
                    let (client, sem, addr, token, timeout) = (
                        client.clone(),
                        sem.clone(),
                        addr.clone(),
                        self.token.clone(),
                        self.timeout,
                    );
                    let (body, hash, version) = (body.clone(), hash.clone(), c.snapshot.version);
                    let sources = c.sources.clone();
                    running.spawn(async move {
                        let _permit = sem.acquire_owned().await;
                        let started = Instant::now();
                        let result = push_one(
                            &client,
                            scheme,
                            &addr,
                            token.as_deref(),
                            body,
                            gzip,
                            timeout,
                        )
                        .await;
                        Outcome {
                            addr,
                            version,
                            hash,
                            sources,
                            result,
                            seconds: started.elapsed().as_secs_f64(),
                        }
                    });
                }
            }
            // Resync: ask every pod what it holds; a pod that restarted without its table (or
            // with an older one) is then behind and gets pushed to above.
            if is_leader && last_check.elapsed() >= self.resync && checks.is_empty() {
                last_check = Instant::now();
                let pods = self.fleet.pods.lock().unwrap_or_else(|p| p.into_inner());
                for addr in pods.keys() {
                    let (client, addr, timeout) = (client.clone(), addr.clone(), self.timeout);
                    checks.spawn(async move {
                        let held = status_of(&client, scheme, &addr, timeout).await;
                        (addr, held)
                    });
                }
            }
            tokio::select! {
                Some(Ok((addr, held))) = checks.join_next(), if !checks.is_empty() => {
                    let mut pods = self.fleet.pods.lock().unwrap_or_else(|p| p.into_inner());
                    if let Some((t, st)) = pods.get_mut(&addr)
                        && !st.in_flight
                    {
                        let (v, h) = held.unwrap_or_default();
                        if (v, h.as_str()) != (st.acked_version, st.acked_hash.as_str()) {
                            tracing::info!(pod = %t.name, held = v, acked = st.acked_version, "pod does not hold the acknowledged table; re-pushing");
                            st.acked_version = v;
                            st.acked_hash = h;
                            st.acked_sources = None;
                            st.next_attempt = None;
                        }
                    }
                }
                Some(done) = running.join_next(), if !running.is_empty() => {
                    if let Ok(o) = done {
                        self.record(o);
                    }
                }
                _ = targets_changed.notified() => {}
                r = tables.changed() => if r.is_err() { return },
                r = leader.changed() => if r.is_err() { return },
                _ = tick.tick() => {}
            }
        }
    }

    fn record(&self, o: Outcome) {
        let mut pods = self.fleet.pods.lock().unwrap_or_else(|p| p.into_inner());
        let Some((target, st)) = pods.get_mut(&o.addr) else {
            return;
        };
        st.in_flight = false;
        self.metrics.push_duration(&target.name).observe(o.seconds);
        match o.result {
            Ok(()) => {
                st.acked_version = o.version;
                st.acked_hash = o.hash;
                st.acked_sources = Some(o.sources);
                st.failures = 0;
                st.next_attempt = None;
                st.last_error = None;
                self.metrics
                    .acked_version(&target.name)
                    .set(o.version as i64);
                self.metrics.pushes_ok.inc();
                tracing::debug!(pod = %target.name, version = o.version, "table acknowledged");
                drop(pods);
                self.fleet.acked.notify_one();
                self.update_sync_gauge();
            }
            Err(PushError::Behind { current }) => {
                // A newer version is in force there (clock skew after a leader change, or
                // a restart). Publish the current table again above it.
                tracing::info!(pod = %target.name, current, ours = o.version, "pod holds a newer version; re-versioning the table");
                self.clock.observe(current);
                st.next_attempt = None;
                drop(pods);
                self.republish.notify_one();
            }
            Err(e) => {
                st.failures += 1;
                let backoff = backoff(st.failures);
                st.next_attempt = Some(Instant::now() + backoff);
                st.last_error = Some(e.to_string());
                self.metrics.pushes_failed.inc();
                if st.failures == 3
                    && let Some((recorder, reference)) = self.events.clone()
                {
                    let note = format!("pushing the table to {} keeps failing: {e}", target.name);
                    tokio::spawn(async move {
                        let ev = Event {
                            type_: EventType::Warning,
                            reason: "PushFailing".into(),
                            note: Some(note.chars().take(1000).collect()),
                            action: "PushSnapshot".into(),
                            secondary: None,
                        };
                        if let Err(e) = recorder.publish(&ev, &reference).await {
                            tracing::debug!(error = %e, "could not publish an event");
                        }
                    });
                }
                if st.failures >= 3 {
                    tracing::warn!(pod = %target.name, failures = st.failures, retry_in_ms = backoff.as_millis() as u64, error = %e, "push keeps failing");
                } else {
                    tracing::debug!(pod = %target.name, error = %e, "push failed; retrying");
                }
            }
        }
    }

    fn update_sync_gauge(&self) {
        let pods = self.fleet.pods.lock().unwrap_or_else(|p| p.into_inner());
        let newest = pods
            .values()
            .map(|(_, s)| s.acked_version)
            .max()
            .unwrap_or(0);
        self.metrics.pods_in_sync.set(
            pods.values()
                .filter(|(_, s)| s.acked_version == newest && newest > 0)
                .count() as i64,
        );
    }
}

/// What the loop pushes: the table (maybe with the fleet size) and its sources.
struct Pushed {
    snapshot: Arc<Snapshot>,
    sources: Arc<crate::compile::Sources>,
}

/// Whether any rule of the table has a rate limit (only then does the fleet size matter).
fn has_rate_limits(t: &parapet_crds::snapshot::Table) -> bool {
    t.virtual_hosts.iter().flat_map(|v| &v.routes).any(|r| {
        matches!(&r.action, parapet_crds::snapshot::RouteAction::Forward(f) if f.rate_limit.is_some())
    })
}

/// The compiled snapshot as is when `fleet_pods` is 0; otherwise a copy whose table carries
/// the fleet size, hashed again under a fresh version (a version never names two tables).
pub fn with_fleet_pods(
    compiled: &Arc<Snapshot>,
    fleet_pods: u32,
    clock: &crate::compile::VersionClock,
) -> Arc<Snapshot> {
    if fleet_pods == 0 {
        return compiled.clone();
    }
    let mut table = compiled.table.clone();
    table.fleet_pods = fleet_pods;
    let mut s = Snapshot::new(clock.next(), table);
    s.allow_empty = compiled.allow_empty;
    Arc::new(s)
}

fn encode(s: &parapet_crds::snapshot::Snapshot) -> (Bytes, bool) {
    let json = serde_json::to_vec(s).expect("snapshot serialises");
    if json.len() > GZIP_ABOVE {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        if enc.write_all(&json).is_ok()
            && let Ok(gz) = enc.finish()
        {
            return (Bytes::from(gz), true);
        }
    }
    (Bytes::from(json), false)
}

/// The (version, hash) a pod serves, or `None` when it has no table or cannot be asked.
async fn status_of(
    client: &PushClient,
    scheme: &str,
    addr: &str,
    timeout: Duration,
) -> Option<(u64, String)> {
    let req = Request::get(format!("{scheme}://{addr}/v1/snapshot/status"))
        .body(Full::new(Bytes::new()))
        .ok()?;
    let resp = tokio::time::timeout(timeout, client.request(req))
        .await
        .ok()?
        .ok()?;
    let body = resp.into_body().collect().await.ok()?.to_bytes();
    let v: serde_json::Value = serde_json::from_slice(&body).ok()?;
    Some((
        v.get("version")?.as_u64()?,
        v.get("hash")?.as_str()?.to_string(),
    ))
}

fn backoff(failures: u32) -> Duration {
    // 250ms doubling up to 30s, with jitter so a fleet that failed together retries apart.
    let base = 250u64.saturating_mul(1 << failures.min(7)).min(30_000);
    Duration::from_millis(base / 2 + rand::random_range(0..=base / 2))
}

async fn push_one(
    client: &PushClient,
    scheme: &str,
    addr: &str,
    token: Option<&str>,
    body: Bytes,
    gzip: bool,
    timeout: Duration,
) -> Result<(), PushError> {
    let mut req = Request::put(format!("{scheme}://{addr}/v1/snapshot"))
        .header(header::CONTENT_TYPE, "application/json");
    if gzip {
        req = req.header(header::CONTENT_ENCODING, "gzip");
    }
    if let Some(t) = token {
        req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    let req = req
        .body(Full::new(body))
        .map_err(|e| PushError::Transport(e.to_string()))?;
    let resp = tokio::time::timeout(timeout, client.request(req))
        .await
        .map_err(|_| PushError::Transport(format!("no answer within {timeout:?}")))?
        .map_err(|e| PushError::Transport(e.to_string()))?;
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    if status == StatusCode::OK {
        return Ok(());
    }
    if status == StatusCode::CONFLICT
        && let Ok(v) = serde_json::from_slice::<serde_json::Value>(&body)
        && let Some(current) = v.get("currentVersion").and_then(|c| c.as_u64())
    {
        return Err(PushError::Behind { current });
    }
    let mut text = String::from_utf8_lossy(&body).into_owned();
    text.truncate(512);
    Err(PushError::Refused { status, body: text })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use parapet_crds::snapshot::{Snapshot, Table};

    use super::with_fleet_pods;
    use crate::compile::VersionClock;

    #[test]
    fn fleet_size_gets_its_own_version_and_hash() {
        let clock = VersionClock::default();
        let table = Table {
            format: parapet_crds::snapshot::FORMAT_VERSION,
            ..Table::default()
        };
        let compiled = Arc::new(Snapshot::new(clock.next(), table));
        assert!(Arc::ptr_eq(
            &with_fleet_pods(&compiled, 0, &clock),
            &compiled
        ));
        let three = with_fleet_pods(&compiled, 3, &clock);
        assert_eq!(three.table.fleet_pods, 3);
        assert!(three.version > compiled.version);
        assert_ne!(three.hash, compiled.hash);
        assert!(
            three.validate().is_err_and(|r| r.len() == 1),
            "only the empty-table guard"
        );
        let four = with_fleet_pods(&compiled, 4, &clock);
        assert!(four.version > three.version);
        assert_ne!(four.hash, three.hash);
    }
}
