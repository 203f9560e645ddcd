//! Pushing the table to every data-plane pod: concurrently (bounded), with per-pod
//! exponential backoff, and a periodic resync that re-pushes to pods whose acknowledged
//! table is not the current one (a restarted pod, a pod the HPA just added).

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
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
use parapet_crds::snapshot::{Snapshot, wire::Coding};

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

/// Bodies above this size are compressed (below it, compressing saves less than a packet).
const COMPRESS_ABOVE: usize = 1024;

/// How many tables the pusher remembers as bases for deltas: enough for every pod a burst
/// of edits left a few versions behind.
const DELTA_BASES: usize = 8;

/// The content type of a delta (`PATCH /v1/snapshot`).
pub const DELTA_CONTENT_TYPE: &str = "application/vnd.parapet.snapshot-delta+json";

/// A data-plane pod's admin endpoint.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Target {
    /// `host:port`: an IP (IPv6 in brackets) or, from FQDN slices, a DNS name.
    pub addr: String,
    /// Pod name from the EndpointSlice's targetRef, else the address.
    pub name: String,
    pub ready: bool,
    /// The zone of the pod's node, as the EndpointSlice controller records it: sent with
    /// every push, so the pod knows its zone without a downward-API label.
    pub zone: Option<String>,
}

/// What each pod has acknowledged, for status and metrics.
#[derive(Clone, Debug)]
pub struct PodState {
    pub acked_version: u64,
    pub acked_hash: String,
    /// What the acknowledged table carries (for per-object `Programmed`).
    pub acked_sources: Option<Arc<Sources>>,
    pub failures: u32,
    pub next_attempt: Option<Instant>,
    pub last_error: Option<String>,
    pub in_flight: bool,
    /// A version the pod answered with a newer one of its own (409).
    pub refused_version: Option<u64>,
    /// The coding its pushes use: zstd until the pod answers 415 naming another.
    pub coding: Coding,
    /// Whether the pod takes deltas (a pod that answers PATCH with 404 or 405 does not).
    pub takes_deltas: bool,
    /// A version the pod refused as a delta (412): it gets that one whole.
    pub whole_version: Option<u64>,
    /// When the last push ended, and whether the pod took it (for the fleet view).
    pub last_push: Option<(SystemTime, bool)>,
}

impl Default for PodState {
    fn default() -> Self {
        Self {
            acked_version: 0,
            acked_hash: String::new(),
            acked_sources: None,
            failures: 0,
            next_attempt: None,
            last_error: None,
            in_flight: false,
            refused_version: None,
            coding: Coding::Zstd,
            takes_deltas: true,
            whole_version: None,
            last_push: None,
        }
    }
}

/// Shared view of the fleet: the targets and what each acknowledged.
#[derive(Default)]
pub struct Fleet {
    pub pods: Mutex<BTreeMap<String, (Target, PodState)>>,
    /// Signalled when an acknowledgement changes (the status writer listens).
    pub acked: Notify,
    /// The table pushed now (for the fleet view).
    pub desired: Mutex<Option<Arc<Snapshot>>>,
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
                out.push(Target {
                    addr,
                    name,
                    ready,
                    zone: e.zone.clone(),
                });
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
    coding: Coding,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum PushError {
    /// The pod holds a version at or above ours.
    #[error("the pod holds version {current}, newer than ours")]
    Behind { current: u64 },
    #[error("refused with {status}: {body}")]
    Refused { status: StatusCode, body: String },
    /// 415: the pod reads none of this coding; it named the ones it does.
    #[error("the pod does not read this Content-Encoding; it accepts {accept:?}")]
    Coding { accept: Coding },
    /// The pod did not take a delta: it holds another base (412), or takes none (404/405).
    #[error("the pod did not take the delta ({status})")]
    Delta { status: StatusCode },
    #[error("{0}")]
    Transport(String),
}

/// How the pusher reaches a data-plane pod's admin API: HTTP(S) in the operator, an
/// in-process fake in tests.
pub(crate) trait Channel: Send + Sync + 'static {
    /// `PUT /v1/snapshot` with an encoded snapshot, or `PATCH` with a delta.
    fn push(
        &self,
        addr: &str,
        zone: Option<&str>,
        body: PushBody,
    ) -> impl Future<Output = Result<(), PushError>> + Send + 'static;

    /// The (version, hash) the pod serves; `None` when it has no table or cannot be asked.
    fn status(&self, addr: &str) -> impl Future<Output = Option<(u64, String)>> + Send + 'static;
}

struct Http {
    client: PushClient,
    scheme: &'static str,
    token: Option<String>,
    timeout: Duration,
}

impl Channel for Http {
    fn push(
        &self,
        addr: &str,
        zone: Option<&str>,
        body: PushBody,
    ) -> impl Future<Output = Result<(), PushError>> + Send + 'static {
        let (client, scheme, addr) = (self.client.clone(), self.scheme, addr.to_string());
        let (token, timeout) = (self.token.clone(), self.timeout);
        let zone = zone.map(str::to_string);
        async move {
            push_one(
                &client,
                scheme,
                &addr,
                token.as_deref(),
                zone.as_deref(),
                body,
                timeout,
            )
            .await
        }
    }

    fn status(&self, addr: &str) -> impl Future<Output = Option<(u64, String)>> + Send + 'static {
        let (client, scheme, addr, timeout) = (
            self.client.clone(),
            self.scheme,
            addr.to_string(),
            self.timeout,
        );
        async move { status_of(&client, scheme, &addr, timeout).await }
    }
}

impl Pusher {
    /// Pushes while `leader` is true. Targets come from `store`.
    pub async fn run(
        self: Arc<Self>,
        store: Store<EndpointSlice>,
        port_name: String,
        targets_changed: Arc<Notify>,
        tables: watch::Receiver<Option<Arc<Compiled>>>,
        leader: watch::Receiver<bool>,
    ) {
        let channel = Arc::new(Http {
            client: crate::tls::push_client(self.tls.as_deref()),
            scheme: crate::tls::scheme(self.tls.as_deref()),
            token: self.token.clone(),
            timeout: self.timeout,
        });
        self.drive(channel, store, port_name, targets_changed, tables, leader)
            .await
    }

    /// The push loop. It sleeps until something it acts on happens: a new table, a change
    /// of leadership or of the data-plane pods, a push or check that ends, a pod's backoff
    /// running out, or the resync interval.
    pub(crate) async fn drive(
        self: Arc<Self>,
        channel: Arc<impl Channel>,
        store: Store<EndpointSlice>,
        port_name: String,
        targets_changed: Arc<Notify>,
        mut tables: watch::Receiver<Option<Arc<Compiled>>>,
        mut leader: watch::Receiver<bool>,
    ) {
        let mut round = Round {
            sem: Arc::new(Semaphore::new(self.concurrency.max(1))),
            running: JoinSet::new(),
            checks: JoinSet::new(),
            last_check: Instant::now(),
            target: None,
            whole: None,
            bases: VecDeque::new(),
            bodies: HashMap::new(),
            shared: None,
        };
        loop {
            let share_pods = self.refresh_targets(&store, &port_name);
            let current = tables.borrow().clone();
            let is_leader = *leader.borrow();
            // The earliest moment something falls due without an event: a backoff ends, or
            // the next resync.
            let mut wake = None;
            if is_leader && let Some(compiled) = &current {
                wake = self.push_behind(&channel, &mut round, compiled, share_pods);
            }
            if is_leader && round.checks.is_empty() {
                wake = earliest(wake, self.resync_due(&channel, &mut round));
            }
            tokio::select! {
                Some(Ok((addr, held))) = round.checks.join_next(), if !round.checks.is_empty() => {
                    self.checked(&addr, held);
                }
                Some(done) = round.running.join_next(), if !round.running.is_empty() => {
                    if let Ok(o) = done {
                        self.record(o);
                    }
                }
                _ = targets_changed.notified() => {}
                r = tables.changed() => if r.is_err() { return },
                r = leader.changed() => if r.is_err() { return },
                _ = tokio::time::sleep_until(wake.unwrap_or_else(Instant::now)), if wake.is_some() => {}
            }
        }
    }

    /// Brings the pod list up to date with the data-plane slices; returns how many pods
    /// share the fleet's rate limits.
    fn refresh_targets(&self, store: &Store<EndpointSlice>, port_name: &str) -> u32 {
        let now = targets(store, port_name);
        let mut pods = self.fleet.pods.lock().unwrap_or_else(|p| p.into_inner());
        pods.retain(|addr, _| now.iter().any(|t| t.addr == *addr));
        for t in now {
            pods.entry(t.addr.clone())
                .and_modify(|(old, st)| {
                    // A zone learnt late (the slice had none yet) goes out with a push of
                    // the same table.
                    if old.zone != t.zone {
                        st.acked_hash.clear();
                    }
                    *old = t.clone();
                })
                .or_insert((t, PodState::default()));
        }
        self.metrics.dataplane_pods.set(pods.len() as i64);
        fleet_share_pods(pods.values().map(|(t, _)| t))
    }

    /// The table as pushed: the compiled one, or (when it has rate limits) a copy that
    /// carries the fleet size under its own version, made again when the fleet changes.
    fn table_to_push(
        &self,
        round: &mut Round,
        compiled: &Compiled,
        share_pods: u32,
    ) -> Arc<Snapshot> {
        let fleet_pods = if has_rate_limits(&compiled.snapshot.table) {
            share_pods
        } else {
            0
        };
        let snap = &compiled.snapshot;
        match &round.shared {
            Some(s)
                if (s.version, s.hash.as_str(), s.fleet_pods)
                    == (snap.version, snap.hash.as_str(), fleet_pods) =>
            {
                s.table.clone()
            }
            _ => {
                let table = with_fleet_pods(snap, fleet_pods, &self.clock);
                if fleet_pods > 0 {
                    tracing::info!(
                        version = table.version,
                        fleet_pods,
                        "rate limits divided among the data-plane pods"
                    );
                }
                round.shared = Some(SharedTable {
                    version: snap.version,
                    hash: snap.hash.clone(),
                    fleet_pods,
                    table: table.clone(),
                });
                table
            }
        }
    }

    /// Starts a push to every pod that is behind the table and not waiting out a backoff;
    /// returns the earliest backoff's end.
    fn push_behind(
        &self,
        channel: &Arc<impl Channel>,
        round: &mut Round,
        compiled: &Compiled,
        share_pods: u32,
    ) -> Option<Instant> {
        let snapshot = self.table_to_push(round, compiled, share_pods);
        {
            let mut desired = self.fleet.desired.lock().unwrap_or_else(|p| p.into_inner());
            if desired.as_ref().is_none_or(|d| !Arc::ptr_eq(d, &snapshot)) {
                *desired = Some(snapshot.clone());
            }
        }
        let (version, hash) = (snapshot.version, snapshot.hash.clone());
        round.retarget(&snapshot, compiled.bytes);
        let now = Instant::now();
        let mut wake = None;
        let mut pods = self.fleet.pods.lock().unwrap_or_else(|p| p.into_inner());
        for (addr, (target, st)) in pods.iter_mut() {
            let behind = st.acked_hash != hash || st.acked_version != version;
            // A version the pod refused as stale is not sent again: the compiler
            // republishes above the pod's version, and that one is.
            if st.in_flight || !behind || st.refused_version == Some(version) {
                continue;
            }
            if let Some(t) = st.next_attempt.filter(|t| *t > now) {
                wake = earliest(wake, t);
                continue;
            }
            st.in_flight = true;
            // A delta from what the pod acknowledged, unless it takes none or refused
            // this one.
            let base =
                (st.acked_version > 0 && st.takes_deltas && st.whole_version != Some(version))
                    .then(|| (st.acked_version, st.acked_hash.clone()));
            let body = round.body(&snapshot, base, st.coding);
            self.metrics.pushed(body.delta, body.bytes.len());
            let (channel, sem, addr) = (channel.clone(), round.sem.clone(), addr.clone());
            let hash = hash.clone();
            let sources = compiled.sources.clone();
            let zone = target.zone.clone();
            round.running.spawn(async move {
                let _permit = sem.acquire_owned().await;
                let started = Instant::now();
                let coding = body.coding;
                let result = channel.push(&addr, zone.as_deref(), body).await;
                Outcome {
                    coding,
                    addr,
                    version,
                    hash,
                    sources,
                    result,
                    seconds: started.elapsed().as_secs_f64(),
                }
            });
        }
        wake
    }

    /// Resync: when it is due, asks every pod what it holds; a pod that restarted without
    /// its table (or with an older one) is then behind and gets pushed to. Returns when the
    /// next one is due.
    fn resync_due(&self, channel: &Arc<impl Channel>, round: &mut Round) -> Instant {
        if round.last_check.elapsed() >= self.resync {
            round.last_check = Instant::now();
            let pods = self.fleet.pods.lock().unwrap_or_else(|p| p.into_inner());
            for addr in pods.keys() {
                let (held, addr) = (channel.status(addr), addr.clone());
                round.checks.spawn(async move { (addr, held.await) });
            }
        }
        round.last_check + self.resync
    }

    /// A resync check's answer: a pod that does not hold what it acknowledged is behind.
    fn checked(&self, addr: &str, held: Option<(u64, String)>) {
        let mut pods = self.fleet.pods.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((t, st)) = pods.get_mut(addr)
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
                st.last_push = Some((SystemTime::now(), true));
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
            // A coding the pod does not read, or a delta it did not take: sent again at
            // once, in the coding it named or whole. Not failures: nothing is wrong.
            Err(PushError::Coding { accept }) if accept != o.coding => {
                tracing::info!(pod = %target.name, coding = ?accept, "pod reads another coding; pushing in that one");
                st.coding = accept;
                st.next_attempt = None;
            }
            Err(PushError::Delta { status }) if st.takes_deltas => {
                if status == StatusCode::PRECONDITION_FAILED {
                    tracing::debug!(pod = %target.name, version = o.version, "pod did not take the delta; pushing the whole table");
                    st.whole_version = Some(o.version);
                } else {
                    tracing::info!(pod = %target.name, %status, "pod takes no deltas; pushing whole tables");
                    st.takes_deltas = false;
                }
                st.next_attempt = None;
            }
            Err(PushError::Behind { current }) => {
                // A newer version is in force there (clock skew after a leader change, or
                // a restart). Publish the current table again above it.
                tracing::info!(pod = %target.name, current, ours = o.version, "pod holds a newer version; re-versioning the table");
                self.clock.observe(current);
                st.next_attempt = None;
                st.refused_version = Some(o.version);
                drop(pods);
                self.republish.notify_one();
            }
            Err(e) => {
                st.last_push = Some((SystemTime::now(), false));
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
/// What the push loop keeps between its turns.
struct Round {
    /// Bounds the pushes in flight.
    sem: Arc<Semaphore>,
    running: JoinSet<Outcome>,
    /// Resync checks in flight: each pod's address and what it holds.
    checks: JoinSet<(String, Option<(u64, String)>)>,
    last_check: Instant,
    /// The table pushed now, and its size as JSON.
    target: Option<(Arc<Snapshot>, usize)>,
    /// Its JSON, made the first time a pod needs it whole.
    whole: Option<Bytes>,
    /// Tables pushed before, newest last: the bases deltas start from.
    bases: VecDeque<Arc<Snapshot>>,
    /// The current table's bodies, made once each: by base (`None`: whole) and coding.
    bodies: HashMap<(Option<(u64, String)>, Coding), PushBody>,
    shared: Option<SharedTable>,
}

/// One push's body, encoded.
#[derive(Clone, Debug)]
pub(crate) struct PushBody {
    pub bytes: Bytes,
    pub coding: Coding,
    /// A delta (`PATCH`), or the whole table (`PUT`).
    pub delta: bool,
}

impl Round {
    /// Makes `snapshot` (of `len` bytes as JSON) the table pushed; the one before becomes a
    /// base for deltas.
    fn retarget(&mut self, snapshot: &Arc<Snapshot>, len: usize) {
        if let Some((t, _)) = &self.target
            && (t.version, t.hash.as_str()) == (snapshot.version, snapshot.hash.as_str())
        {
            return;
        }
        self.whole = None;
        if let Some((old, _)) = self.target.replace((snapshot.clone(), len)) {
            if self.bases.len() == DELTA_BASES {
                self.bases.pop_front();
            }
            self.bases.push_back(old);
        }
        self.bodies.clear();
    }

    /// The body that brings a pod holding `base` to the current table: a delta when the
    /// base is one pushed lately and the delta is less than half the table, else the
    /// whole table.
    fn body(
        &mut self,
        snapshot: &Snapshot,
        base: Option<(u64, String)>,
        coding: Coding,
    ) -> PushBody {
        let key = (base, coding);
        if let Some(b) = self.bodies.get(&key) {
            return b.clone();
        }
        let Some((_, len)) = &self.target else {
            unreachable!("retarget runs before any body is made");
        };
        let delta = key.0.as_ref().and_then(|(v, h)| {
            let base = self
                .bases
                .iter()
                .find(|b| (b.version, b.hash.as_str()) == (*v, h.as_str()))?;
            let d = crate::delta::diff(base, snapshot);
            let json = serde_json::to_vec(&d).expect("delta serialises");
            (json.len() < len / 2).then_some(json)
        });
        let (json, is_delta) = match &delta {
            Some(d) => (&d[..], true),
            None => {
                // Serialising our own plain types to JSON cannot fail.
                let whole = self.whole.get_or_insert_with(|| {
                    Bytes::from(serde_json::to_vec(snapshot).expect("snapshot serialises"))
                });
                (&whole[..], false)
            }
        };
        let coding = if json.len() > COMPRESS_ABOVE {
            coding
        } else {
            Coding::Identity
        };
        let body = PushBody {
            bytes: Bytes::from(coding.encode(json)),
            coding,
            delta: is_delta,
        };
        self.bodies.insert(key, body.clone());
        body
    }
}

/// The table as pushed for one compiled table and fleet size.
struct SharedTable {
    /// The compiled table's version and hash.
    version: u64,
    hash: String,
    fleet_pods: u32,
    table: Arc<Snapshot>,
}

/// Whether any rule of the table has a rate limit (only then does the fleet size matter).
fn has_rate_limits(t: &parapet_crds::snapshot::Table) -> bool {
    t.virtual_hosts.iter().flat_map(|v| &v.routes).any(|r| {
        matches!(&r.action, parapet_crds::snapshot::RouteAction::Forward(f) if f.rate_limit.is_some())
    })
}

/// The compiled snapshot as is when `fleet_pods` is 0; otherwise a copy whose table carries
/// the fleet size, hashed again under a fresh version (a version never names two tables).
/// The pods a fleet-wide rate limit is divided among: the ready ones, which are the pods
/// that receive traffic (a starting pod gets the table before it turns ready, and counts
/// once it is). With none ready yet, all of them, so the first pods start with their share
/// rather than the whole limit each.
pub fn fleet_share_pods<'a>(targets: impl Iterator<Item = &'a Target>) -> u32 {
    let (mut ready, mut all) = (0u32, 0u32);
    for t in targets {
        all = all.saturating_add(1);
        if t.ready {
            ready = ready.saturating_add(1);
        }
    }
    if ready > 0 { ready } else { all }
}

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

fn earliest(a: Option<Instant>, b: Instant) -> Option<Instant> {
    Some(a.map_or(b, |a| a.min(b)))
}

fn backoff(failures: u32) -> Duration {
    // 250ms doubling up to 30s, with jitter so a fleet that failed together retries apart.
    let base = 250u64.saturating_mul(1 << failures.min(7)).min(30_000);
    Duration::from_millis(base / 2 + rand::random_range(0..=base / 2))
}

#[allow(clippy::too_many_arguments)]
async fn push_one(
    client: &PushClient,
    scheme: &str,
    addr: &str,
    token: Option<&str>,
    zone: Option<&str>,
    body: PushBody,
    timeout: Duration,
) -> Result<(), PushError> {
    let (method, content_type) = if body.delta {
        (http::Method::PATCH, DELTA_CONTENT_TYPE)
    } else {
        (http::Method::PUT, "application/json")
    };
    let mut req = Request::builder()
        .method(method)
        .uri(format!("{scheme}://{addr}/v1/snapshot"))
        .header(header::CONTENT_TYPE, content_type);
    if let Some(coding) = body.coding.header() {
        req = req.header(header::CONTENT_ENCODING, coding);
    }
    if let Some(t) = token {
        req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    if let Some(z) = zone {
        req = req.header("parapet-zone", z);
    }
    let req = req
        .body(Full::new(body.bytes))
        .map_err(|e| PushError::Transport(e.to_string()))?;
    let resp = tokio::time::timeout(timeout, client.request(req))
        .await
        .map_err(|_| PushError::Transport(format!("no answer within {timeout:?}")))?
        .map_err(|e| PushError::Transport(e.to_string()))?;
    let status = resp.status();
    if status == StatusCode::UNSUPPORTED_MEDIA_TYPE
        && let Some(accept) = resp.headers().get(header::ACCEPT_ENCODING)
    {
        return Err(PushError::Coding {
            accept: Coding::best_accepted(accept.as_bytes()),
        });
    }
    // A data plane from before zstd reads a coding it does not know as JSON and answers
    // 400: the table goes again in gzip, which every version reads (a table that is
    // invalid is then refused once more, and backs off as any refusal).
    if status == StatusCode::BAD_REQUEST && body.coding == Coding::Zstd {
        return Err(PushError::Coding {
            accept: Coding::Gzip,
        });
    }
    if body.delta
        && matches!(
            status,
            StatusCode::PRECONDITION_FAILED
                | StatusCode::NOT_FOUND
                | StatusCode::METHOD_NOT_ALLOWED
        )
    {
        return Err(PushError::Delta { status });
    }
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
    use std::collections::{BTreeMap, HashSet};

    use parapet_crds::snapshot::{FORMAT_VERSION, SourceRef, Table, delta::Delta};
    use tokio::{
        sync::mpsc,
        time::{sleep, timeout},
    };

    use super::*;
    use crate::testkit::{Ep, TestIndex, slice};

    #[test]
    fn rate_limit_shares_divide_among_ready_pods() {
        let t = |ready: bool| Target {
            addr: "10.0.0.1:9901".into(),
            name: "dp".into(),
            ready,
            zone: None,
        };
        assert_eq!(fleet_share_pods([t(true), t(true), t(false)].iter()), 2);
        assert_eq!(fleet_share_pods([t(true)].iter()), 1);
        // A fleet still starting: every pod, so none starts with the whole limit.
        assert_eq!(fleet_share_pods([t(false), t(false)].iter()), 2);
        assert_eq!(fleet_share_pods([].iter()), 0);
    }

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

    #[test]
    fn pushes_go_to_ready_and_starting_pods_never_to_terminating_ones() {
        let pod = |addr: &str, name: &str, ready: Option<bool>, terminating: Option<bool>| Ep {
            ready,
            serving: None,
            terminating,
            pod: Some(name.to_string()),
            ..Ep::ready(addr)
        };
        let mut t = TestIndex::new();
        let admin = [(Some("http"), 8080), (Some("admin"), 9901)];
        t.apply_dataplane_slice(slice(
            "parapet",
            "dp-a",
            "dp-admin",
            "IPv4",
            &admin,
            &[
                pod("10.1.0.1", "dp-0", Some(true), Some(false)),
                // Starting: it becomes ready only once it has a table.
                pod("10.1.0.2", "dp-1", Some(false), None),
                // Shutting down: never pushed to.
                pod("10.1.0.3", "dp-2", Some(false), Some(true)),
                // Unknown conditions count as ready; without a targetRef, named by address.
                Ep {
                    ready: None,
                    serving: None,
                    terminating: None,
                    ..Ep::ready("10.1.0.4")
                },
            ],
        ));
        // The same pod in a second slice (slices are being rebalanced): pushed once.
        t.apply_dataplane_slice(slice(
            "parapet",
            "dp-a2",
            "dp-admin",
            "IPv4",
            &admin,
            &[pod("10.1.0.1", "dp-0", Some(true), None)],
        ));
        // A single port is the admin port, whatever its name.
        t.apply_dataplane_slice(slice(
            "parapet",
            "dp-b",
            "dp-admin",
            "IPv4",
            &[(Some("other"), 9999)],
            &[pod("10.1.0.5", "dp-3", Some(true), None)],
        ));
        // Several ports, none of them admin: nowhere to push.
        t.apply_dataplane_slice(slice(
            "parapet",
            "dp-c",
            "dp-admin",
            "IPv4",
            &[(Some("http"), 8080), (Some("metrics"), 9090)],
            &[pod("10.1.0.6", "dp-9", Some(true), None)],
        ));
        t.apply_dataplane_slice(slice(
            "parapet",
            "dp-v6",
            "dp-admin",
            "IPv6",
            &admin,
            &[pod("fd00::7", "dp-4", Some(true), None)],
        ));
        t.apply_dataplane_slice(slice(
            "parapet",
            "dp-fqdn",
            "dp-admin",
            "FQDN",
            &admin,
            &[pod("dp-5.dp.parapet.svc", "dp-5", Some(true), None)],
        ));
        // A name in an IP slice is no address.
        t.apply_dataplane_slice(slice(
            "parapet",
            "dp-bad",
            "dp-admin",
            "IPv4",
            &admin,
            &[pod("dp-6", "dp-6", Some(true), None)],
        ));
        let got: Vec<(String, String, bool)> = targets(&t.dataplane_store(), "admin")
            .into_iter()
            .map(|t| (t.addr, t.name, t.ready))
            .collect();
        let want = |a: &str, n: &str, r| (a.to_string(), n.to_string(), r);
        assert_eq!(
            got,
            [
                want("10.1.0.1:9901", "dp-0", true),
                want("10.1.0.2:9901", "dp-1", false),
                want("10.1.0.4:9901", "10.1.0.4:9901", true),
                want("10.1.0.5:9999", "dp-3", true),
                want("[fd00::7]:9901", "dp-4", true),
                want("dp-5.dp.parapet.svc:9901", "dp-5", true),
            ]
        );
    }

    // ---- the push loop, against an in-process data plane on a paused clock ----

    const HOUR: Duration = Duration::from_secs(3600);

    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    enum What {
        Push(u64),
        Status,
    }

    /// One request a data-plane pod received.
    #[derive(Debug)]
    struct Call {
        at: Instant,
        addr: String,
        what: What,
        /// A push's body: a delta, and its coding.
        delta: bool,
        coding: Coding,
        /// The pod's backoff deadline in the pusher when the request came.
        due: Option<Instant>,
    }

    #[derive(Default)]
    struct FakePod {
        held: Option<(u64, String)>,
        /// Pushes to refuse (503) before accepting.
        fail_next: u32,
        /// A version of its own that is newer than anything pushed below it (409).
        newer: Option<u64>,
        /// The table it holds, for deltas.
        table: Option<Snapshot>,
        /// Answers zstd with 415 naming gzip.
        gzip_only: bool,
    }

    /// Data-plane pods in the test's memory: they answer at once, or when `gate` lets them.
    struct FakePlane {
        fleet: Arc<Fleet>,
        pods: Mutex<BTreeMap<String, FakePod>>,
        gate: Option<Arc<Semaphore>>,
        calls: mpsc::UnboundedSender<Call>,
    }

    impl FakePlane {
        fn set(&self, addr: &str, f: impl FnOnce(&mut FakePod)) {
            f(self
                .pods
                .lock()
                .unwrap()
                .entry(addr.to_string())
                .or_default());
        }

        fn record(&self, addr: &str, what: What, due: Option<Instant>, body: Option<&PushBody>) {
            let at = Instant::now();
            let addr = addr.to_string();
            let _ = self.calls.send(Call {
                at,
                addr,
                what,
                delta: body.is_some_and(|b| b.delta),
                coding: body.map_or(Coding::Identity, |b| b.coding),
                due,
            });
        }
    }

    impl Channel for FakePlane {
        fn push(
            &self,
            addr: &str,
            _zone: Option<&str>,
            body: PushBody,
        ) -> impl Future<Output = Result<(), PushError>> + Send + 'static {
            let json = body
                .coding
                .decode(&body.bytes, usize::MAX)
                .expect("decodes");
            let mut pods = self.pods.lock().unwrap();
            let pod = pods.entry(addr.to_string()).or_default();
            let s: Result<Snapshot, PushError> = if body.delta {
                let d: Delta = serde_json::from_slice(&json).expect("a delta");
                let base = pod
                    .table
                    .clone()
                    .unwrap_or_else(|| Snapshot::new(0, Table::default()));
                d.apply(&base).map_err(|_| PushError::Delta {
                    status: StatusCode::PRECONDITION_FAILED,
                })
            } else {
                Ok(serde_json::from_slice(&json).expect("a snapshot"))
            };
            let due = self.fleet.pods.lock().unwrap()[addr].1.next_attempt;
            let version = s.as_ref().map_or(0, |s| s.version);
            self.record(addr, What::Push(version), due, Some(&body));
            let result = if pod.gzip_only && body.coding == Coding::Zstd {
                Err(PushError::Coding {
                    accept: Coding::Gzip,
                })
            } else if let Err(e) = s {
                Err(e)
            } else if pod.fail_next > 0 {
                pod.fail_next -= 1;
                Err(PushError::Refused {
                    status: StatusCode::SERVICE_UNAVAILABLE,
                    body: "not now".into(),
                })
            } else if let Some(current) = pod.newer.filter(|n| *n >= version) {
                Err(PushError::Behind { current })
            } else {
                let s = s.expect("checked above");
                pod.held = Some((s.version, s.hash.clone()));
                pod.table = Some(s);
                Ok(())
            };
            let gate = self.gate.clone();
            async move {
                if let Some(g) = gate {
                    let _open = g.acquire().await;
                }
                result
            }
        }

        fn status(
            &self,
            addr: &str,
        ) -> impl Future<Output = Option<(u64, String)>> + Send + 'static {
            self.record(addr, What::Status, None, None);
            std::future::ready(
                self.pods
                    .lock()
                    .unwrap()
                    .entry(addr.to_string())
                    .or_default()
                    .held
                    .clone(),
            )
        }
    }

    /// The admin slice of `n` pods, `10.1.0.{i}:9901`.
    fn dataplane(n: u8) -> EndpointSlice {
        let pods: Vec<Ep> = (0..n)
            .map(|i| Ep {
                pod: Some(format!("dp-{i}")),
                ..Ep::ready(&format!("10.1.0.{i}"))
            })
            .collect();
        slice(
            "parapet",
            "dp-a",
            "dp-admin",
            "IPv4",
            &[(Some("admin"), 9901)],
            &pods,
        )
    }

    fn addr(i: u8) -> String {
        format!("10.1.0.{i}:9901")
    }

    fn table(version: u64) -> Arc<Compiled> {
        let source = SourceRef {
            kind: "ApiRoute".into(),
            namespace: "shop".into(),
            name: "r".into(),
            generation: version as i64,
        };
        compiled(version, vec![source])
    }

    /// A compiled table of `sources` (and nothing else) under `version`.
    fn compiled(version: u64, sources: Vec<SourceRef>) -> Arc<Compiled> {
        let set: HashSet<_> = sources
            .iter()
            .map(|s| {
                (
                    s.kind.clone(),
                    s.namespace.clone(),
                    s.name.clone(),
                    s.generation,
                )
            })
            .collect();
        let (mut snapshot, bytes) = Snapshot::new_measured(
            version,
            Table {
                format: FORMAT_VERSION,
                sources,
                ..Table::default()
            },
        );
        snapshot.allow_empty = true;
        Arc::new(Compiled {
            snapshot: Arc::new(snapshot),
            diagnostics: Default::default(),
            malformed: Vec::new(),
            objects: Vec::new(),
            pool_endpoints: Default::default(),
            bytes,
            pools: Arc::new(Vec::new()),
            sources: Arc::new(set),
        })
    }

    /// A running push loop, its inputs and the fake pods it pushes to.
    struct Rig {
        t: TestIndex,
        tables: watch::Sender<Option<Arc<Compiled>>>,
        _leader: watch::Sender<bool>,
        plane: Arc<FakePlane>,
        calls: mpsc::UnboundedReceiver<Call>,
        fleet: Arc<Fleet>,
        metrics: Arc<Metrics>,
        clock: Arc<VersionClock>,
        republish: Arc<Notify>,
    }

    fn rig(pods: u8, concurrency: usize, resync: Duration, gate: Option<Arc<Semaphore>>) -> Rig {
        let mut t = TestIndex::new();
        t.apply_dataplane_slice(dataplane(pods));
        let fleet = Arc::new(Fleet::default());
        let (calls_tx, calls) = mpsc::unbounded_channel();
        let plane = Arc::new(FakePlane {
            fleet: fleet.clone(),
            pods: Mutex::default(),
            gate,
            calls: calls_tx,
        });
        let (metrics, clock, republish) = (
            Arc::new(Metrics::new()),
            Arc::new(VersionClock::default()),
            Arc::new(Notify::new()),
        );
        let pusher = Arc::new(Pusher {
            fleet: fleet.clone(),
            token: None,
            concurrency,
            resync,
            timeout: Duration::from_secs(10),
            metrics: metrics.clone(),
            clock: clock.clone(),
            republish: republish.clone(),
            events: None,
            tls: None,
        });
        let (tables, tables_rx) = watch::channel(None);
        let (leader, leader_rx) = watch::channel(true);
        tokio::spawn(pusher.drive(
            plane.clone(),
            t.dataplane_store(),
            "admin".into(),
            t.index.dataplane_changed.clone(),
            tables_rx,
            leader_rx,
        ));
        Rig {
            t,
            tables,
            _leader: leader,
            plane,
            calls,
            fleet,
            metrics,
            clock,
            republish,
        }
    }

    impl Rig {
        /// The next request a pod receives; a minute of virtual time without one fails.
        async fn next_call(&mut self) -> Call {
            timeout(Duration::from_secs(60), self.calls.recv())
                .await
                .expect("a request within a minute")
                .expect("the plane is alive")
        }

        /// No pod receives anything for `d`.
        async fn quiet(&mut self, d: Duration) {
            if let Ok(c) = timeout(d, self.calls.recv()).await {
                panic!("unexpected request {c:?}");
            }
        }

        fn state(&self, addr: &str) -> PodState {
            self.fleet.pods.lock().unwrap()[addr].1.clone()
        }

        /// Waits until the pusher has recorded `addr`'s acknowledgement of `version`.
        async fn acked(&self, addr: &str, version: u64) {
            while self.state(addr).acked_version != version {
                timeout(Duration::from_secs(60), self.fleet.acked.notified())
                    .await
                    .expect("an acknowledgement within a minute");
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_table_reaches_the_data_plane_at_once() {
        let mut r = rig(1, 4, HOUR, None);
        let t0 = Instant::now();
        r.tables.send_replace(Some(table(100)));
        let c = r.next_call().await;
        assert_eq!(
            (c.what, c.addr.as_str(), c.at),
            (What::Push(100), "10.1.0.0:9901", t0)
        );
        r.acked(&addr(0), 100).await;
        assert_eq!(Instant::now(), t0);

        sleep(Duration::from_secs(5)).await;
        r.tables.send_replace(Some(table(200)));
        let c = r.next_call().await;
        assert_eq!(
            (c.what, c.at),
            (What::Push(200), t0 + Duration::from_secs(5))
        );
        r.acked(&addr(0), 200).await;

        // A pod the autoscaler adds gets the table as soon as its slice lists it.
        sleep(Duration::from_secs(5)).await;
        r.t.apply_dataplane_slice(dataplane(2));
        let c = r.next_call().await;
        assert_eq!(
            (c.what, c.addr, c.at),
            (What::Push(200), addr(1), t0 + Duration::from_secs(10))
        );
        r.acked(&addr(1), 200).await;
        // Everyone holds the table: nothing more is sent.
        r.quiet(Duration::from_secs(600)).await;
        assert_eq!(r.metrics.pushes_ok.get(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_push_is_retried_when_its_backoff_ends() {
        let mut r = rig(1, 4, HOUR, None);
        r.plane.set(&addr(0), |p| p.fail_next = 2);
        r.tables.send_replace(Some(table(100)));
        let first = r.next_call().await;
        let second = r.next_call().await;
        let third = r.next_call().await;
        for c in [&first, &second, &third] {
            assert_eq!(c.what, What::Push(100));
        }
        // Retried at the deadline the backoff set, not at some later tick.
        assert_eq!(second.due, Some(second.at));
        assert_eq!(third.due, Some(third.at));
        // Jittered doubling: 250-500 ms, then 500-1000 ms.
        let (b1, b2) = (second.at - first.at, third.at - second.at);
        assert!(
            (Duration::from_millis(250)..=Duration::from_millis(500)).contains(&b1),
            "{b1:?}"
        );
        assert!(
            (Duration::from_millis(500)..=Duration::from_millis(1000)).contains(&b2),
            "{b2:?}"
        );
        r.acked(&addr(0), 100).await;
        let st = r.state(&addr(0));
        assert_eq!(
            (st.failures, st.next_attempt, st.last_error),
            (0, None, None)
        );
        assert_eq!(r.metrics.pushes_failed.get(), 2);
        r.quiet(Duration::from_secs(600)).await;
    }

    #[tokio::test(start_paused = true)]
    async fn resync_re_pushes_to_a_pod_that_lost_its_table() {
        let resync = Duration::from_millis(3300);
        let mut r = rig(1, 4, resync, None);
        let t0 = Instant::now();
        r.tables.send_replace(Some(table(100)));
        assert_eq!(r.next_call().await.what, What::Push(100));
        r.acked(&addr(0), 100).await;
        // The pod restarts without its table.
        r.plane.set(&addr(0), |p| p.held = None);

        let c = r.next_call().await;
        assert_eq!((c.what, c.at), (What::Status, t0 + resync));
        let c = r.next_call().await;
        assert_eq!((c.what, c.at), (What::Push(100), t0 + resync));
        r.acked(&addr(0), 100).await;
        // The next check finds it current, and so on every interval.
        for n in 2..4 {
            let c = r.next_call().await;
            assert_eq!((c.what, c.at), (What::Status, t0 + resync * n));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_pod_holding_a_newer_version_waits_for_the_republished_table() {
        let mut r = rig(1, 4, HOUR, None);
        r.plane.set(&addr(0), |p| p.newer = Some(5_000));
        r.tables.send_replace(Some(table(100)));
        assert_eq!(r.next_call().await.what, What::Push(100));
        timeout(Duration::from_secs(60), r.republish.notified())
            .await
            .expect("the compiler is asked to republish");
        let version = r.clock.next();
        assert!(version > 5_000, "versions now exceed the pod's");
        // The refused version is not sent again.
        r.quiet(Duration::from_secs(60)).await;
        r.tables.send_replace(Some(table(version)));
        assert_eq!(r.next_call().await.what, What::Push(version));
        r.acked(&addr(0), version).await;
    }

    #[tokio::test(start_paused = true)]
    async fn at_most_concurrency_pushes_are_in_flight() {
        let gate = Arc::new(Semaphore::new(0));
        let mut r = rig(5, 2, HOUR, Some(gate.clone()));
        r.tables.send_replace(Some(table(100)));
        let mut pushed = vec![r.next_call().await.addr, r.next_call().await.addr];
        // The other three wait for a slot while the first two hang.
        r.quiet(Duration::from_secs(5)).await;
        gate.add_permits(1);
        for _ in 0..3 {
            pushed.push(r.next_call().await.addr);
        }
        pushed.sort();
        assert_eq!(pushed, (0..5).map(addr).collect::<Vec<_>>());
        for i in 0..5 {
            r.acked(&addr(i), 100).await;
        }
    }

    /// A table of `n` sources at generation 1, but source `changed` at `version`: tables of
    /// two versions differ in one element.
    fn big_table(version: u64, n: usize, changed: usize) -> Arc<Compiled> {
        let sources: Vec<SourceRef> = (0..n)
            .map(|i| SourceRef {
                kind: "ApiRoute".into(),
                namespace: "shop".into(),
                name: format!("route-{i:05}"),
                generation: if i == changed { version as i64 } else { 1 },
            })
            .collect();
        compiled(version, sources)
    }

    #[tokio::test(start_paused = true)]
    async fn a_pod_gets_deltas_from_what_it_acknowledged_and_the_whole_table_when_it_holds_another()
    {
        let mut r = rig(1, 4, HOUR, None);
        let t0 = Instant::now();
        r.tables.send_replace(Some(big_table(100, 500, 7)));
        let c = r.next_call().await;
        assert_eq!(
            (c.what, c.delta, c.coding),
            (What::Push(100), false, Coding::Zstd)
        );
        r.acked(&addr(0), 100).await;

        // One source changed: a delta, and the pod rebuilds exactly the table.
        let second = big_table(200, 500, 7);
        r.tables.send_replace(Some(second.clone()));
        let c = r.next_call().await;
        assert_eq!((c.what, c.delta), (What::Push(200), true));
        r.acked(&addr(0), 200).await;
        let held = r.plane.pods.lock().unwrap()[&addr(0)].table.clone();
        assert_eq!(held.as_ref(), Some(&*second.snapshot));

        // The pod holds something else than it acknowledged (restored from disk, say): the
        // delta does not apply, and the whole table follows at once.
        r.plane.set(&addr(0), |p| {
            p.table = Some(big_table(200, 500, 8).snapshot.as_ref().clone());
        });
        r.tables.send_replace(Some(big_table(300, 500, 7)));
        let c = r.next_call().await;
        assert_eq!((c.what, c.delta), (What::Push(0), true));
        let c = r.next_call().await;
        assert_eq!((c.what, c.delta, c.at), (What::Push(300), false, t0));
        r.acked(&addr(0), 300).await;
        assert_eq!(r.metrics.pushes_failed.get(), 0, "not a failure");
        let text = r.metrics.encode();
        for want in [
            "parapet_operator_push_bodies_total{body=\"delta\"} 2",
            "parapet_operator_push_bodies_total{body=\"full\"} 2",
        ] {
            assert!(text.contains(want), "{want} in\n{text}");
        }
        r.quiet(Duration::from_secs(600)).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_pod_that_reads_no_zstd_gets_the_coding_it_names() {
        let mut r = rig(1, 4, HOUR, None);
        r.plane.set(&addr(0), |p| p.gzip_only = true);
        let t0 = Instant::now();
        r.tables.send_replace(Some(big_table(100, 500, 7)));
        let c = r.next_call().await;
        assert_eq!((c.what, c.coding), (What::Push(100), Coding::Zstd));
        let c = r.next_call().await;
        assert_eq!(
            (c.what, c.coding, c.at),
            (What::Push(100), Coding::Gzip, t0)
        );
        r.acked(&addr(0), 100).await;
        r.tables.send_replace(Some(big_table(200, 500, 7)));
        // The delta is under a kilobyte: sent as it is.
        let c = r.next_call().await;
        assert_eq!(
            (c.what, c.coding, c.delta),
            (What::Push(200), Coding::Identity, true)
        );
        r.acked(&addr(0), 200).await;
        assert_eq!(r.metrics.pushes_failed.get(), 0);
    }

    /// A pod's answer to a push over HTTP, as `push_one` reads it: a server on 127.0.0.1 that
    /// answers every request with `status` (and `accept`, when given).
    async fn answer_push(
        status: StatusCode,
        accept: Option<&'static str>,
    ) -> Result<(), PushError> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let svc = hyper::service::service_fn(move |_req| async move {
                let mut r = http::Response::new(Full::new(Bytes::from_static(b"{}")));
                *r.status_mut() = status;
                if let Some(a) = accept {
                    r.headers_mut()
                        .insert(header::ACCEPT_ENCODING, http::HeaderValue::from_static(a));
                }
                Ok::<_, std::convert::Infallible>(r)
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                .await;
        });
        let body = PushBody {
            bytes: Bytes::from(Coding::Zstd.encode(b"{}")),
            coding: Coding::Zstd,
            delta: false,
        };
        let client = crate::tls::push_client(None);
        push_one(
            &client,
            "http",
            &addr,
            None,
            None,
            body,
            Duration::from_secs(5),
        )
        .await
    }

    #[tokio::test]
    async fn a_pod_that_cannot_read_zstd_is_sent_gzip() {
        // A pod of this version names what it reads; one from before zstd reads the body
        // as JSON and refuses it.
        for (status, accept) in [
            (StatusCode::UNSUPPORTED_MEDIA_TYPE, Some("gzip")),
            (StatusCode::BAD_REQUEST, None),
        ] {
            let r = answer_push(status, accept).await;
            assert!(
                matches!(
                    r,
                    Err(PushError::Coding {
                        accept: Coding::Gzip
                    })
                ),
                "{status}: {r:?}"
            );
        }
        // Other refusals stay refusals.
        let r = answer_push(StatusCode::SERVICE_UNAVAILABLE, None).await;
        assert!(matches!(r, Err(PushError::Refused { .. })), "{r:?}");
        assert!(answer_push(StatusCode::OK, None).await.is_ok());
    }
}
