//! A load client that plays a cloud load balancer in IP mode.
//!
//! It follows a Service's EndpointSlices and sends requests straight to the ready endpoints
//! (pod addresses), as an NLB or a GCE load balancer in IP/NEG mode does, and counts what
//! fails and where. Chaos tests (rolling a Deployment, killing a pod) use it so they measure
//! the gateway's own behaviour (readiness, draining), not kube-proxy's connection tracking
//! or a Service IP's conntrack entries.
//!
//! Two halves, joined by a `watch` channel of ready addresses (sorted, no duplicates):
//!
//! - [`EndpointWatch`] keeps that set from the EndpointSlices of one Service;
//! - [`run`] / [`Load::spawn`] send bounded load to whatever the set holds at each request,
//!   and return a [`Report`]. Tests without a cluster feed the channel by hand.

use std::{
    collections::{BTreeMap, HashMap},
    fmt,
    net::{IpAddr, SocketAddr},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use anyhow::{Result, bail};
use bytes::Bytes;
use futures::StreamExt as _;
use http::{HeaderMap, HeaderValue, Request, Uri, header, uri::PathAndQuery};
use http_body_util::{BodyExt as _, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::{
    Api, Client, ResourceExt as _,
    runtime::{WatchStreamExt as _, watcher},
};
use tokio::{
    sync::watch,
    task::JoinHandle,
    time::{Instant, sleep_until, timeout},
};

#[cfg(test)]
mod tests;

// ---------------------------------------------------------------------------------------
// Endpoints

/// Which port of the EndpointSlices to send to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PortRef {
    /// The Service port's name (`""` for a Service's single unnamed port).
    Name(String),
    /// The endpoint (target) port number, as the slices list it.
    Number(u16),
}

impl From<&str> for PortRef {
    fn from(name: &str) -> Self {
        PortRef::Name(name.to_string())
    }
}

impl From<u16> for PortRef {
    fn from(port: u16) -> Self {
        PortRef::Number(port)
    }
}

/// The ready addresses of one EndpointSlice on `port`. Ready means `conditions.ready` is
/// true (it is false while a pod terminates) and `terminating` is not true; TCP only.
pub fn ready_addresses(slice: &EndpointSlice, port: &PortRef) -> Vec<SocketAddr> {
    let port = slice.ports.iter().flatten().find_map(|p| {
        if p.protocol.as_deref().unwrap_or("TCP") != "TCP" {
            return None;
        }
        let matches = match port {
            PortRef::Name(name) => p.name.as_deref().unwrap_or("") == name,
            PortRef::Number(n) => p.port == Some(i32::from(*n)),
        };
        matches
            .then_some(p.port)
            .flatten()
            .and_then(|n| u16::try_from(n).ok())
    });
    let Some(port) = port else {
        return Vec::new();
    };
    slice
        .endpoints
        .iter()
        .flatten()
        .filter(|e| {
            let c = e.conditions.as_ref();
            c.and_then(|c| c.ready) == Some(true) && c.and_then(|c| c.terminating) != Some(true)
        })
        .flat_map(|e| &e.addresses)
        // FQDN slices carry names, not addresses: an IP-mode balancer skips them.
        .filter_map(|a| a.parse::<IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, port))
        .collect()
}

/// The ready addresses of a Service's slices, by slice name, fed by watcher events.
#[derive(Debug, Default)]
struct Slices {
    current: BTreeMap<String, Vec<SocketAddr>>,
    /// Slices listed since the watch (re)started, swapped in once the list is complete.
    relisting: Option<BTreeMap<String, Vec<SocketAddr>>>,
}

impl Slices {
    /// Applies one event; returns the whole set when the event can have changed it.
    fn apply(
        &mut self,
        event: watcher::Event<EndpointSlice>,
        port: &PortRef,
    ) -> Option<Vec<SocketAddr>> {
        match event {
            watcher::Event::Init => {
                self.relisting = Some(BTreeMap::new());
                return None;
            }
            watcher::Event::InitApply(s) => {
                let listing = self.relisting.get_or_insert_with(BTreeMap::new);
                listing.insert(s.name_any(), ready_addresses(&s, port));
                return None;
            }
            watcher::Event::InitDone => self.current = self.relisting.take().unwrap_or_default(),
            watcher::Event::Apply(s) => {
                self.current.insert(s.name_any(), ready_addresses(&s, port));
            }
            watcher::Event::Delete(s) => {
                self.current.remove(&s.name_any());
            }
        }
        let mut all: Vec<SocketAddr> = self.current.values().flatten().copied().collect();
        all.sort();
        all.dedup();
        Some(all)
    }
}

/// The ready endpoints of one Service, kept from its EndpointSlices by a kube watcher
/// until dropped.
pub struct EndpointWatch {
    rx: watch::Receiver<Vec<SocketAddr>>,
    last_error: Arc<Mutex<Option<String>>>,
    task: JoinHandle<()>,
}

impl EndpointWatch {
    /// Watches the slices labelled `kubernetes.io/service-name=<service>` in `namespace`,
    /// from a task on the current runtime. The set starts empty and fills once the first
    /// list arrives.
    pub fn start(client: Client, namespace: &str, service: &str, port: impl Into<PortRef>) -> Self {
        let port = port.into();
        let api: Api<EndpointSlice> = Api::namespaced(client, namespace);
        let config =
            watcher::Config::default().labels(&format!("kubernetes.io/service-name={service}"));
        let (tx, rx) = watch::channel(Vec::new());
        let last_error = Arc::new(Mutex::new(None));
        let errors = last_error.clone();
        let task = tokio::spawn(async move {
            let mut events = std::pin::pin!(watcher(api, config).default_backoff());
            let mut slices = Slices::default();
            // Runs for the life of the EndpointWatch (Drop aborts it); after an error the
            // backoff spaces out the retries.
            while let Some(event) = events.next().await {
                match event {
                    Ok(event) => {
                        if let Some(set) = slices.apply(event, &port) {
                            tx.send_if_modified(|cur| {
                                let changed = *cur != set;
                                *cur = set;
                                changed
                            });
                        }
                    }
                    Err(e) => *errors.lock().unwrap() = Some(e.to_string()),
                }
            }
        });
        Self {
            rx,
            last_error,
            task,
        }
    }

    /// The channel a [`Load`] reads.
    pub fn receiver(&self) -> watch::Receiver<Vec<SocketAddr>> {
        self.rx.clone()
    }

    pub fn current(&self) -> Vec<SocketAddr> {
        self.rx.borrow().clone()
    }

    /// Waits until the ready set satisfies `check`, for at most `deadline`.
    pub async fn wait_until(
        &self,
        what: &str,
        deadline: Duration,
        mut check: impl FnMut(&[SocketAddr]) -> bool,
    ) -> Result<Vec<SocketAddr>> {
        let mut rx = self.rx.clone();
        match timeout(deadline, rx.wait_for(|set| check(set))).await {
            Ok(Ok(set)) => Ok(set.clone()),
            Ok(Err(_)) => bail!("{what}: the EndpointSlice watch ended"),
            Err(_) => {
                let error = self.last_error.lock().unwrap().clone();
                bail!(
                    "{what}: not within {deadline:?}; ready endpoints now {:?}{}",
                    self.current(),
                    error.map_or(String::new(), |e| format!("; last watch error: {e}"))
                )
            }
        }
    }
}

impl Drop for EndpointWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

// ---------------------------------------------------------------------------------------
// Load

/// What to send, how much, and how fast.
#[derive(Clone, Debug)]
pub struct LoadConfig {
    /// Workers, each with one request in flight at a time.
    pub concurrency: usize,
    /// Stop after this many requests...
    pub max_requests: u64,
    /// ...or after this long, whichever comes first (requests in flight then finish).
    pub max_duration: Duration,
    /// Requests per second over all workers; `None`: as fast as the workers go.
    pub rate: Option<f64>,
    pub path: PathAndQuery,
    /// The Host header; `None`: the endpoint's address.
    pub host: Option<HeaderValue>,
    /// Extra request headers.
    pub headers: HeaderMap,
    /// For one attempt: connecting, sending and reading the whole answer.
    pub request_timeout: Duration,
    /// How long a request waits for a ready endpoint before it counts as failed.
    pub max_endpoint_wait: Duration,
    /// Retry once, on a fresh connection, a request that failed on a reused keep-alive
    /// connection before any answer: the server closed that idle connection as the request
    /// went out. GET is idempotent, so a careful balancer does this; retries are counted.
    pub retry_idle_close: bool,
}

impl Default for LoadConfig {
    fn default() -> Self {
        Self {
            concurrency: 4,
            max_requests: 1000,
            max_duration: Duration::from_secs(30),
            rate: None,
            path: PathAndQuery::from_static("/"),
            host: None,
            headers: HeaderMap::new(),
            request_timeout: Duration::from_secs(5),
            max_endpoint_wait: Duration::from_secs(10),
            retry_idle_close: true,
        }
    }
}

impl LoadConfig {
    /// Sets the path; panics on one that is not a valid request target (a test's typo).
    pub fn path(mut self, path: &str) -> Self {
        self.path = path.parse().expect("a valid request path");
        self
    }

    /// Sets the Host header; panics on an invalid value.
    pub fn host(mut self, host: &str) -> Self {
        self.host = Some(host.parse().expect("a valid Host header value"));
        self
    }

    /// Adds a request header; panics on an invalid name or value.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.append(
            header::HeaderName::try_from(name).expect("a valid header name"),
            value.parse().expect("a valid header value"),
        );
        self
    }
}

/// How a request failed without an HTTP answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ErrorKind {
    /// Nothing listens on the endpoint (refused, or reset while the listener closed).
    ConnectRefused,
    /// Connecting failed otherwise (unreachable, ...).
    Connect,
    /// The connection was reset or closed before the answer's head arrived.
    Closed,
    /// The answer's head arrived but its body was cut short.
    BodyCut,
    /// No complete answer within the request timeout.
    Timeout,
    Other,
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ErrorKind::ConnectRefused => "refused",
            ErrorKind::Connect => "connect",
            ErrorKind::Closed => "closed",
            ErrorKind::BodyCut => "body-cut",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Other => "other",
        })
    }
}

/// Why the load stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// `max_requests` were sent.
    Count,
    /// `max_duration` passed.
    Duration,
    /// [`Load::stop`] was called.
    Stopped,
    /// The endpoint channel closed while it held no endpoint.
    EndpointsClosed,
}

impl fmt::Display for StopReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StopReason::Count => "count reached",
            StopReason::Duration => "time up",
            StopReason::Stopped => "stopped",
            StopReason::EndpointsClosed => "endpoint channel closed",
        })
    }
}

/// What the load saw. `sent == ok + failed()`.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// Requests counted, each once however it ended (an idle-close retry is not a second).
    pub sent: u64,
    /// Answered 2xx.
    pub ok: u64,
    /// Non-2xx answers by status.
    pub statuses: BTreeMap<u16, u64>,
    /// Failures without an answer, by kind and endpoint.
    pub errors: BTreeMap<(ErrorKind, SocketAddr), u64>,
    /// Requests given up after `max_endpoint_wait` without a ready endpoint.
    pub no_endpoint: u64,
    pub ok_by_endpoint: BTreeMap<SocketAddr, u64>,
    /// Non-2xx answers and errors, by endpoint.
    pub failed_by_endpoint: BTreeMap<SocketAddr, u64>,
    /// Idle-close retries (see [`LoadConfig::retry_idle_close`]), by the endpoint whose
    /// reused connection closed.
    pub retried: BTreeMap<SocketAddr, u64>,
    /// Times a request found no ready endpoint and waited, and the longest such wait.
    pub endpoint_waits: u64,
    pub longest_endpoint_wait: Duration,
    /// The first few failures, described (endpoint, kind, message).
    pub first_errors: Vec<String>,
    /// The first few failures that were retried.
    pub first_retries: Vec<String>,
    pub elapsed: Duration,
    /// Why the first worker stopped; `None` while all run.
    pub stopped_by: Option<StopReason>,
}

/// How many failures [`Report`] describes in full.
const FIRST_FEW: usize = 5;

impl Report {
    /// Everything that was not a 2xx answer.
    pub fn failed(&self) -> u64 {
        self.statuses.values().sum::<u64>() + self.errors.values().sum::<u64>() + self.no_endpoint
    }

    pub fn retries(&self) -> u64 {
        self.retried.values().sum()
    }

    pub fn ok_on(&self, endpoint: SocketAddr) -> u64 {
        self.ok_by_endpoint.get(&endpoint).copied().unwrap_or(0)
    }

    pub fn failed_on(&self, endpoint: SocketAddr) -> u64 {
        self.failed_by_endpoint.get(&endpoint).copied().unwrap_or(0)
    }

    fn note(list: &mut Vec<String>, what: impl FnOnce() -> String) {
        if list.len() < FIRST_FEW {
            list.push(what());
        }
    }

    fn record(&mut self, outcome: Outcome) {
        self.sent += 1;
        match outcome {
            Outcome::Answered { endpoint, status } if (200..300).contains(&status) => {
                self.ok += 1;
                *self.ok_by_endpoint.entry(endpoint).or_default() += 1;
            }
            Outcome::Answered { endpoint, status } => {
                *self.statuses.entry(status).or_default() += 1;
                *self.failed_by_endpoint.entry(endpoint).or_default() += 1;
                Self::note(&mut self.first_errors, || {
                    format!("{endpoint}: status {status}")
                });
            }
            Outcome::Failed(f) => {
                *self.errors.entry((f.kind, f.endpoint)).or_default() += 1;
                *self.failed_by_endpoint.entry(f.endpoint).or_default() += 1;
                Self::note(&mut self.first_errors, || f.to_string());
            }
        }
    }

    fn record_retry(&mut self, f: &Failure) {
        *self.retried.entry(f.endpoint).or_default() += 1;
        Self::note(&mut self.first_retries, || f.to_string());
    }

    fn record_no_endpoint(&mut self, waited: Duration) {
        self.sent += 1;
        self.no_endpoint += 1;
        Self::note(&mut self.first_errors, || {
            format!("no ready endpoint within {waited:?}")
        });
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let stopped = self
            .stopped_by
            .map_or_else(|| "running".to_string(), |r| r.to_string());
        write!(
            f,
            "{} requests in {:.2}s ({stopped}): {} ok, {} failed",
            self.sent,
            self.elapsed.as_secs_f64(),
            self.ok,
            self.failed()
        )?;
        let mut kinds: Vec<String> = self
            .statuses
            .iter()
            .map(|(s, n)| format!("{s} x{n}"))
            .collect();
        kinds.extend(
            self.errors
                .iter()
                .map(|((k, ep), n)| format!("{k}@{ep} x{n}")),
        );
        if self.no_endpoint > 0 {
            kinds.push(format!("no-endpoint x{}", self.no_endpoint));
        }
        if !kinds.is_empty() {
            write!(f, " [{}]", kinds.join(", "))?;
        }
        let ok: Vec<String> = self
            .ok_by_endpoint
            .iter()
            .map(|(ep, n)| format!("{ep}={n}"))
            .collect();
        write!(f, "; ok by endpoint: {}", ok.join(" "))?;
        if self.retries() > 0 {
            write!(f, "; {} idle-close retries", self.retries())?;
        }
        if self.endpoint_waits > 0 {
            write!(
                f,
                "; waited for endpoints {} times (longest {:?})",
                self.endpoint_waits, self.longest_endpoint_wait
            )?;
        }
        if !self.first_errors.is_empty() {
            write!(f, "; first errors: {}", self.first_errors.join(" | "))?;
        }
        Ok(())
    }
}

/// A failure without an HTTP answer.
#[derive(Debug)]
struct Failure {
    kind: ErrorKind,
    endpoint: SocketAddr,
    /// Whether it happened on a kept-alive connection that had carried requests before.
    reused: bool,
    message: String,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let conn = if self.reused { "reused" } else { "new" };
        write!(
            f,
            "{}: {} on a {conn} connection: {}",
            self.endpoint, self.kind, self.message
        )
    }
}

#[derive(Debug)]
enum Outcome {
    Answered { endpoint: SocketAddr, status: u16 },
    Failed(Failure),
}

struct Shared {
    cfg: LoadConfig,
    start: Instant,
    deadline: Instant,
    /// Request slots handed out; slot `i` goes at `start + i / rate`.
    next: AtomicU64,
    /// Round-robin position over whatever the endpoint set is at each request.
    rr: AtomicUsize,
    report: Mutex<Report>,
}

impl Shared {
    fn stopped(&self, reason: StopReason) {
        self.report.lock().unwrap().stopped_by.get_or_insert(reason);
    }

    fn pick(&self, endpoints: &[SocketAddr]) -> SocketAddr {
        endpoints[self.rr.fetch_add(1, Ordering::Relaxed) % endpoints.len()]
    }
}

/// Load in progress.
pub struct Load {
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    workers: Vec<JoinHandle<()>>,
}

/// Sends load until it reaches `cfg`'s count or duration, and reports.
pub async fn run(cfg: LoadConfig, endpoints: watch::Receiver<Vec<SocketAddr>>) -> Report {
    Load::spawn(cfg, endpoints).wait().await
}

impl Load {
    /// Starts the workers on the current runtime.
    pub fn spawn(cfg: LoadConfig, endpoints: watch::Receiver<Vec<SocketAddr>>) -> Load {
        let start = Instant::now();
        let concurrency = cfg.concurrency.max(1);
        let shared = Arc::new(Shared {
            deadline: start + cfg.max_duration,
            cfg,
            start,
            next: AtomicU64::new(0),
            rr: AtomicUsize::new(0),
            report: Mutex::new(Report::default()),
        });
        let (stop, stopped) = watch::channel(false);
        let workers = (0..concurrency)
            .map(|_| tokio::spawn(worker(shared.clone(), endpoints.clone(), stopped.clone())))
            .collect();
        Load {
            shared,
            stop,
            workers,
        }
    }

    /// Asks the workers to stop after the requests they have in flight.
    pub fn stop(&self) {
        self.stop.send_replace(true);
    }

    /// The report so far.
    pub fn snapshot(&self) -> Report {
        let mut r = self.shared.report.lock().unwrap().clone();
        r.elapsed = self.shared.start.elapsed();
        r
    }

    /// Waits for the load to end by itself (count, duration or [`stop`](Self::stop)).
    pub async fn wait(mut self) -> Report {
        for w in std::mem::take(&mut self.workers) {
            if let Err(e) = w.await
                && e.is_panic()
            {
                std::panic::resume_unwind(e.into_panic());
            }
        }
        self.snapshot()
    }

    /// Stops it and waits for the requests in flight.
    pub async fn stop_and_wait(self) -> Report {
        self.stop();
        self.wait().await
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        // Only when nobody waits for the report: nothing more to count.
        for w in &self.workers {
            w.abort();
        }
    }
}

/// What a worker got when it looked for endpoints.
enum Endpoints {
    Ready(Vec<SocketAddr>),
    /// None became ready within `max_endpoint_wait` (waited this long).
    GaveUp(Duration),
    End(StopReason),
}

async fn worker(
    shared: Arc<Shared>,
    mut endpoints: watch::Receiver<Vec<SocketAddr>>,
    mut stop: watch::Receiver<bool>,
) {
    let cfg = &shared.cfg;
    let mut conns: HashMap<SocketAddr, Conn> = HashMap::new();
    // Every turn takes a request slot: at most max_requests turns, and none after the
    // deadline.
    let reason = loop {
        if *stop.borrow() {
            break StopReason::Stopped;
        }
        if Instant::now() >= shared.deadline {
            break StopReason::Duration;
        }
        let slot = shared.next.fetch_add(1, Ordering::Relaxed);
        if slot >= cfg.max_requests {
            break StopReason::Count;
        }
        if let Some(rate) = cfg.rate.filter(|r| *r > 0.0) {
            let at = shared.start + Duration::from_secs_f64(slot as f64 / rate);
            if at >= shared.deadline {
                break StopReason::Duration;
            }
            tokio::select! {
                _ = sleep_until(at) => {}
                _ = stop.changed() => break StopReason::Stopped,
            }
        }
        let set = match ready_endpoints(&shared, &mut endpoints, &mut stop).await {
            Endpoints::Ready(set) => set,
            Endpoints::GaveUp(waited) => {
                shared.report.lock().unwrap().record_no_endpoint(waited);
                continue;
            }
            Endpoints::End(reason) => break reason,
        };
        // Connections to endpoints that left the set go, as a balancer's would.
        conns.retain(|ep, _| set.binary_search(ep).is_ok());
        let mut outcome = attempt(cfg, &mut conns, shared.pick(&set), false).await;
        if let Outcome::Failed(f) = &outcome
            && cfg.retry_idle_close
            && f.reused
            && f.kind == ErrorKind::Closed
        {
            // The next endpoint in turn from the set as it is now, on a fresh connection.
            let now = endpoints.borrow().clone();
            if !now.is_empty() {
                shared.report.lock().unwrap().record_retry(f);
                outcome = attempt(cfg, &mut conns, shared.pick(&now), true).await;
            }
        }
        shared.report.lock().unwrap().record(outcome);
    };
    shared.stopped(reason);
}

/// The current ready set, waiting (bounded) while it is empty.
async fn ready_endpoints(
    shared: &Shared,
    endpoints: &mut watch::Receiver<Vec<SocketAddr>>,
    stop: &mut watch::Receiver<bool>,
) -> Endpoints {
    let set = endpoints.borrow_and_update().clone();
    if !set.is_empty() {
        return Endpoints::Ready(set);
    }
    let started = Instant::now();
    shared.report.lock().unwrap().endpoint_waits += 1;
    let give_up = (started + shared.cfg.max_endpoint_wait).min(shared.deadline);
    let got = tokio::select! {
        set = endpoints.wait_for(|set| !set.is_empty()) => match set {
            Ok(set) => Endpoints::Ready(set.clone()),
            Err(_) => Endpoints::End(StopReason::EndpointsClosed),
        },
        _ = sleep_until(give_up) => {
            if give_up >= shared.deadline {
                Endpoints::End(StopReason::Duration)
            } else {
                Endpoints::GaveUp(started.elapsed())
            }
        }
        _ = stop.changed() => Endpoints::End(StopReason::Stopped),
    };
    let waited = started.elapsed();
    let mut report = shared.report.lock().unwrap();
    report.longest_endpoint_wait = report.longest_endpoint_wait.max(waited);
    got
}

/// One HTTP/1.1 connection to an endpoint, closed when dropped.
struct Conn {
    sender: SendRequest<Empty<Bytes>>,
    task: JoinHandle<()>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn connect(endpoint: SocketAddr) -> std::io::Result<Conn> {
    let stream = tokio::net::TcpStream::connect(endpoint).await?;
    stream.set_nodelay(true)?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(std::io::Error::other)?;
    let task = tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(Conn { sender, task })
}

/// One request to `endpoint`, on its kept-alive connection unless `fresh`.
async fn attempt(
    cfg: &LoadConfig,
    conns: &mut HashMap<SocketAddr, Conn>,
    endpoint: SocketAddr,
    fresh: bool,
) -> Outcome {
    let pooled = conns.remove(&endpoint).filter(|_| !fresh);
    let had_pooled = pooled.is_some();
    // The connection lives inside the exchange: a timeout drops (closes) it.
    match timeout(cfg.request_timeout, exchange(cfg, pooled, endpoint)).await {
        Ok((outcome, keep)) => {
            if let Some(conn) = keep {
                conns.insert(endpoint, conn);
            }
            outcome
        }
        Err(_) => Outcome::Failed(Failure {
            kind: ErrorKind::Timeout,
            endpoint,
            reused: had_pooled,
            message: format!("no complete answer within {:?}", cfg.request_timeout),
        }),
    }
}

/// Sends one request; returns the outcome and the connection when it can be reused.
async fn exchange(
    cfg: &LoadConfig,
    pooled: Option<Conn>,
    endpoint: SocketAddr,
) -> (Outcome, Option<Conn>) {
    let failed = |kind, reused, message: String| {
        (
            Outcome::Failed(Failure {
                kind,
                endpoint,
                reused,
                message,
            }),
            None,
        )
    };
    // A kept-alive connection the server has closed meanwhile is no failure: nothing was
    // sent on it. One it closes while the request goes out is (see `retry_idle_close`).
    let pooled = match pooled {
        Some(mut c) => c.sender.ready().await.is_ok().then_some(c),
        None => None,
    };
    let reused = pooled.is_some();
    let mut conn = match pooled {
        Some(c) => c,
        None => match connect(endpoint).await {
            Ok(c) => c,
            Err(e) => {
                let kind = if parapet_tests::client::nothing_listens(&e) {
                    ErrorKind::ConnectRefused
                } else {
                    ErrorKind::Connect
                };
                return failed(kind, false, format!("connect: {e}"));
            }
        },
    };

    let mut req = Request::new(Empty::new());
    *req.uri_mut() = Uri::from(cfg.path.clone());
    let host = cfg.host.clone().unwrap_or_else(|| {
        HeaderValue::from_str(&endpoint.to_string()).expect("an address is a header value")
    });
    req.headers_mut().insert(header::HOST, host);
    req.headers_mut().extend(cfg.headers.clone());

    let resp = match conn.sender.send_request(req).await {
        Ok(r) => r,
        Err(e) => return failed(send_error_kind(&e), reused, error_chain(&e)),
    };
    let status = resp.status().as_u16();
    let close = resp
        .headers()
        .get_all(header::CONNECTION)
        .iter()
        .any(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
    if let Err(e) = resp.into_body().collect().await {
        return failed(ErrorKind::BodyCut, reused, error_chain(&e));
    }
    let keep = (!close).then_some(conn);
    (Outcome::Answered { endpoint, status }, keep)
}

/// Sorts an error from sending a request (before any answer's head arrived).
fn send_error_kind(e: &hyper::Error) -> ErrorKind {
    if e.is_incomplete_message() || e.is_canceled() || e.is_closed() {
        return ErrorKind::Closed;
    }
    let io = std::iter::successors(std::error::Error::source(e), |s| s.source())
        .take(16)
        .find_map(|s| s.downcast_ref::<std::io::Error>());
    match io.map(std::io::Error::kind) {
        Some(
            std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::BrokenPipe
            | std::io::ErrorKind::UnexpectedEof,
        ) => ErrorKind::Closed,
        Some(std::io::ErrorKind::TimedOut) => ErrorKind::Timeout,
        _ => ErrorKind::Other,
    }
}

/// An error and its sources, `: `-separated.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    for s in std::iter::successors(e.source(), |s| s.source()).take(16) {
        out.push_str(": ");
        out.push_str(&s.to_string());
    }
    out
}
