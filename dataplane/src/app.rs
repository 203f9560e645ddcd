//! Flags and wiring: build the store, start the listeners, load the table, drain on SIGTERM.

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use anyhow::Context;
use clap::Parser;
use rustls::sign::CertifiedKey;

use crate::{
    accesslog::{self, AccessLog},
    admin::Admin,
    codec::Http1Codec,
    hedge::HedgeConfig,
    lanes::{LaneConfig, Lanes, RouteLaneSettings},
    listener::{self, ListenerConfig},
    metrics::Metrics,
    proxy::{EdgeConfig, Limits, Proxy},
    snapshot::{BuildOptions, SnapshotStore, load_persisted},
    standalone,
    trace::{TraceConfig, Tracer},
    upstream::ClientPool,
};

/// Parapet data plane: a reverse proxy that serves the routing table compiled from
/// ApiRoute, UpstreamPool and CachePolicy resources.
///
/// Standalone: `dataplane --config examples/standalone.yaml`. In a cluster, without
/// --config, it waits for the operator to push tables to the admin port.
#[derive(Parser, Debug, Clone)]
#[command(name = "dataplane", version)]
pub struct Args {
    /// YAML file of ApiRoute / UpstreamPool / CachePolicy (and Secret) documents; watched
    /// and reloaded on change. Without it, tables come from `PUT /v1/snapshot`.
    #[arg(long, env = "PARAPET_CONFIG")]
    pub config: Option<PathBuf>,
    /// With --config: the Gateway (NAMESPACE/NAME) whose listeners to serve, when the file
    /// has more than one of a Parapet GatewayClass.
    #[arg(long, env = "PARAPET_GATEWAY", requires = "config")]
    pub gateway: Option<String>,
    /// Address for client traffic: ADDR, or ADDR=PORT where PORT is the Gateway listener
    /// port the socket serves (default: the socket's own port). Repeatable (comma-separated
    /// in PARAPET_LISTEN); every worker accepts on every socket. A table with listeners
    /// routes each socket's connections with its port's listener, e.g.
    /// `--listen 0.0.0.0:8080=80 --listen 0.0.0.0:8443=443`.
    #[arg(long, env = "PARAPET_LISTEN", default_value = "127.0.0.1:8080", value_parser = listen_spec, value_delimiter = ',')]
    pub listen: Vec<ListenSpec>,
    /// Address of the admin API (snapshot, health, metrics). Use 0.0.0.0:9901 in a cluster.
    #[arg(long, env = "PARAPET_ADMIN_LISTEN", default_value = "127.0.0.1:9901")]
    pub admin_listen: SocketAddr,
    /// File holding the bearer token the operator must present to push snapshots.
    #[arg(long, env = "PARAPET_SNAPSHOT_TOKEN_FILE")]
    pub snapshot_token_file: Option<PathBuf>,
    /// Directory where the last good snapshot is kept, and loaded from at start.
    #[arg(long, env = "PARAPET_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// This pod's topology zone: pools with `failover.preferLocalZone` send to endpoints
    /// in this zone first, spilling over to others when it is short of healthy ones.
    #[arg(long, env = "PARAPET_ZONE")]
    pub zone: Option<String>,
    /// Requests in flight through the whole proxy; over it, 503 with retry-after.
    #[arg(long, env = "PARAPET_MAX_IN_FLIGHT", default_value_t = 10_000)]
    pub max_in_flight: u32,
    /// Requests in flight per route (the route's bulkhead), for routes whose rule sets no
    /// `lanes.maxInFlight`.
    #[arg(long, env = "PARAPET_ROUTE_MAX_IN_FLIGHT", default_value_t = 5_000)]
    pub route_max_in_flight: u32,
    /// Share of --max-in-flight that routes in the slow lane may hold, in percent.
    #[arg(long, env = "PARAPET_SLOW_LANE_PERCENT", default_value_t = 25, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub slow_lane_percent: u32,
    /// A route whose average latency passes this moves to the slow lane (and back below
    /// half of it), for routes whose rule sets no `lanes.slowThreshold`.
    #[arg(long, env = "PARAPET_SLOW_LANE_THRESHOLD", default_value = "1s", value_parser = duration)]
    pub slow_lane_threshold: Duration,
    /// Hedge a route's idempotent requests: ROUTE[=DELAY], ROUTE a route name
    /// (namespace/apiroute/rule) or `*`; without DELAY, after the route's p95 latency.
    /// Repeatable. Only for routes whose rule has no `hedge` of its own (which wins).
    #[arg(long = "hedge", env = "PARAPET_HEDGE", value_delimiter = ',')]
    pub hedge: Vec<String>,
    /// Request bodies up to this many bytes are buffered so they can be retried or hedged;
    /// larger ones stream once and are not retried.
    #[arg(long, env = "PARAPET_MAX_REPLAY_BYTES", default_value_t = 64 * 1024)]
    pub max_replay_bytes: u64,
    /// TLS certificate chain (PEM) for the traffic listener; with --tls-key, serves HTTPS
    /// with ALPN h2 / http/1.1.
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Serve TLS on the traffic listener with certificates from the table only (by SNI,
    /// from ApiRoute `spec.tls`); implied by --tls-cert, which is then the fallback.
    #[arg(long, env = "PARAPET_TLS")]
    pub tls: bool,
    /// Certificate chain (PEM) for the admin port; with --admin-tls-key, the admin API
    /// (snapshot pushes, status, probes, metrics) is served over TLS 1.2+ only.
    #[arg(long, env = "PARAPET_ADMIN_TLS_CERT", requires = "admin_tls_key")]
    pub admin_tls_cert: Option<PathBuf>,
    #[arg(long, env = "PARAPET_ADMIN_TLS_KEY", requires = "admin_tls_cert")]
    pub admin_tls_key: Option<PathBuf>,
    /// CA bundle (PEM) for client certificates on the admin port (mTLS with the operator):
    /// a presented certificate must chain to it, and the snapshot API (/v1/...) answers
    /// 401 on connections without one. /healthz, /readyz and /metrics stay reachable
    /// without a certificate (probes). The bearer token is still required. Needs
    /// --admin-tls-cert.
    #[arg(long, env = "PARAPET_ADMIN_CLIENT_CA", requires = "admin_tls_cert")]
    pub admin_client_ca: Option<PathBuf>,
    /// How long in-flight requests get to finish after SIGTERM.
    #[arg(long, default_value = "25s", value_parser = duration)]
    pub drain_timeout: Duration,
    /// Time between readiness going false and the listener closing, so load balancers stop
    /// sending new connections first.
    #[arg(long, default_value = "0s", value_parser = duration)]
    pub shutdown_delay: Duration,
    /// Time a client has to send a complete request head (slowloris guard).
    #[arg(long, default_value = "10s", value_parser = duration)]
    pub header_read_timeout: Duration,
    /// Largest request head in bytes (431 above).
    #[arg(long, default_value_t = 64 * 1024)]
    pub max_header_bytes: usize,
    /// Most request headers (431 above).
    #[arg(long, default_value_t = 100)]
    pub max_headers: usize,
    /// Longest request URI in bytes (414 above).
    #[arg(long, default_value_t = 8 * 1024)]
    pub max_uri_bytes: usize,
    /// Largest request body in bytes (413 above).
    #[arg(long, default_value_t = 10 * 1024 * 1024)]
    pub max_body_bytes: u64,
    /// Largest pushed snapshot in bytes (after decompression).
    #[arg(long, default_value_t = 64 * 1024 * 1024)]
    pub max_snapshot_bytes: usize,
    /// How often the --config file is checked for changes.
    #[arg(long, default_value = "1s", value_parser = duration)]
    pub reload_interval: Duration,
    /// Write one access-log line per request, to stdout unless --access-log-path says
    /// otherwise, in the --access-log-format (by default `json` with --log-format json,
    /// else `text`). Lines are written by a thread of their own, never by the request.
    #[arg(long, env = "PARAPET_ACCESS_LOG")]
    pub access_log: bool,
    /// Access-log format: `json` (one object per line) or `text` (`key=value` pairs,
    /// logfmt), both with the --access-log-fields; or `template` (--access-log-template).
    #[arg(long, env = "PARAPET_ACCESS_LOG_FORMAT", value_enum)]
    pub access_log_format: Option<accesslog::FormatName>,
    /// Access-log line with %field% placeholders (`%%` is a percent sign), e.g.
    /// '%time% %client% "%method% %path% %protocol%" %status% %bytes_sent% %duration_ms%'.
    /// Implies --access-log-format template; an unknown field stops the start. Values are
    /// escaped as nginx does: `"`, `\`, control and non-ASCII bytes as \xHH; an absent one
    /// is `-`. Fields: time, client, client_port, method, authority, path, query, protocol,
    /// status, route, upstream_cluster, upstream_endpoint, attempts, bytes_received,
    /// bytes_sent, upstream_ms, duration_ms, cache, rate_limit, request_id, trace_id,
    /// tls_version, sni, key_id, user_agent, referer, forwarded_for.
    #[arg(long, env = "PARAPET_ACCESS_LOG_TEMPLATE")]
    pub access_log_template: Option<String>,
    /// Access-log fields of the `json` and `text` formats, comma-separated, in the order
    /// given (the names of --access-log-template). Default: every field but `query` and
    /// `referer`, which can carry credentials (tokens in URLs).
    #[arg(long, env = "PARAPET_ACCESS_LOG_FIELDS")]
    pub access_log_fields: Option<String>,
    /// Where access-log lines go: a file, appended to (or a named pipe); `-` or unset:
    /// stdout.
    #[arg(long, env = "PARAPET_ACCESS_LOG_PATH")]
    pub access_log_path: Option<PathBuf>,
    /// Access-log records queued for the writer. When it falls behind and the queue is
    /// full, records are dropped and counted (parapet_access_log_dropped_total): a request
    /// never waits for the access log.
    #[arg(long, env = "PARAPET_ACCESS_LOG_BUFFER", default_value_t = accesslog::DEFAULT_BUFFER, value_parser = records)]
    pub access_log_buffer: usize,
    /// Export traces over OTLP/HTTP (protobuf) to this collector URL, e.g.
    /// http://otel-collector:4318/v1/traces. Unset: no tracing, and a caller's
    /// `traceparent` goes upstream untouched.
    #[arg(long, env = "PARAPET_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    /// Share of the traces this data plane starts that are recorded (0 to 1). A caller's
    /// sampling decision in its `traceparent` is followed whatever the ratio.
    #[arg(long, env = "PARAPET_OTLP_SAMPLING_RATIO", default_value_t = 0.01)]
    pub otlp_sampling_ratio: f64,
    /// The `service.name` of the spans.
    #[arg(
        long,
        env = "PARAPET_OTLP_SERVICE_NAME",
        default_value = "parapet-dataplane"
    )]
    pub otlp_service_name: String,
    /// Spans waiting for export; when the collector falls behind and it is full, spans
    /// are dropped: a request never waits for the exporter.
    #[arg(long, env = "PARAPET_OTLP_QUEUE", default_value_t = 2048, value_parser = records)]
    pub otlp_queue: usize,
    /// Longest a span waits before its batch is posted.
    #[arg(long, default_value = "1s", value_parser = duration)]
    pub otlp_batch_delay: Duration,
    /// Timeout of one export post.
    #[arg(long, default_value = "5s", value_parser = duration)]
    pub otlp_timeout: Duration,
    /// Memory bound of the response cache in bytes (all policies together; least useful
    /// entries are evicted first).
    #[arg(long, env = "PARAPET_CACHE_MAX_BYTES", default_value_t = crate::snapshot::DEFAULT_CACHE_MAX_BYTES)]
    pub cache_max_bytes: u64,
    /// Peers (CIDR ranges or addresses, comma-separated) whose X-Forwarded-For,
    /// X-Forwarded-Proto, X-Forwarded-Host and Forwarded are kept and extended: your load
    /// balancers. From any other peer those headers are replaced with what the gateway saw.
    /// None by default.
    #[arg(long, env = "PARAPET_TRUSTED_PROXIES", value_delimiter = ',', value_parser = cidr)]
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// For requests from --trusted-proxies: proxies in front of this one whose
    /// X-Forwarded-For entries are trusted, so the client address for rate limits is the
    /// Nth address from the right. 0: the peer's address.
    #[arg(long, env = "PARAPET_TRUSTED_HOPS", default_value_t = 0)]
    pub trusted_hops: u32,
    /// Keys a route's rate limiter holds at most; idle keys are dropped first.
    #[arg(long, env = "PARAPET_RATE_LIMIT_MAX_KEYS", default_value_t = crate::ratelimit::DEFAULT_MAX_KEYS)]
    pub rate_limit_max_keys: usize,
    /// Value of the Server header on every response; none by default.
    #[arg(long, env = "PARAPET_SERVER_HEADER")]
    pub server_header: Option<String>,
    /// Close an HTTP/1.1 connection after this many requests (0: no limit).
    #[arg(long, env = "PARAPET_MAX_REQUESTS_PER_CONNECTION", default_value_t = 0)]
    pub max_requests_per_connection: u32,
    /// /healthz fails (503) when an event loop (a traffic worker, or the runtime serving
    /// the admin API) has made no progress for this long, so Kubernetes restarts the pod.
    #[arg(long, env = "PARAPET_LIVENESS_STALL", default_value = "10s", value_parser = duration)]
    pub liveness_stall: Duration,
    /// Log format.
    #[arg(long, env = "PARAPET_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
    /// Worker threads serving traffic (default: one per core). Each runs its own
    /// single-threaded event loop with its own listening socket (SO_REUSEPORT), like nginx's
    /// worker processes; the admin API, health checks and reloads run on one more thread.
    #[arg(long, env = "PARAPET_WORKERS")]
    pub workers: Option<usize>,
    /// Client for plain HTTP/1.1 pools: `parapet` (its own, sending from the request's task;
    /// requests with streamed bodies and upgrades still use hyper's) or `hyper` (hyper-util's
    /// pooled client for everything, as TLS and HTTP/2 pools always use).
    #[arg(long, env = "PARAPET_UPSTREAM_HTTP1", value_enum, default_value_t = Http1Codec::Parapet)]
    pub upstream_http1: Http1Codec,
    /// Which codec serves downstream HTTP/1.1 requests without a body: `parapet` (Parapet's
    /// own, which hands a connection to hyper at its first request with a body, upgrade or
    /// `Expect`, and for HTTP/1.0 and HTTP/2) or `hyper` (hyper's server for every
    /// connection).
    #[arg(long, env = "PARAPET_DOWNSTREAM_HTTP1", value_enum, default_value_t = Http1Codec::Parapet)]
    pub downstream_http1: Http1Codec,
}

/// One `--listen` value: a socket address and the Gateway listener port it serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListenSpec {
    pub addr: SocketAddr,
    /// `None`: the port the socket is bound to.
    pub port: Option<u16>,
}

/// `ADDR` or `ADDR=PORT`.
fn listen_spec(s: &str) -> Result<ListenSpec, String> {
    let s = s.trim();
    let (addr, port) = match s.split_once('=') {
        Some((a, p)) => (a, Some(p)),
        None => (s, None),
    };
    let addr = addr.parse::<SocketAddr>().map_err(|_| {
        format!("{addr:?} is not a socket address such as 0.0.0.0:8080 (optionally followed by =PORT, the Gateway listener port it serves)")
    })?;
    let port = match port {
        None => None,
        Some(p) => Some(
            p.parse::<u16>()
                .ok()
                .filter(|&p| p != 0)
                .ok_or_else(|| format!("{p:?} after {addr}= is not a port between 1 and 65535"))?,
        ),
    };
    Ok(ListenSpec { addr, port })
}

/// A CIDR range, or one address (a /32 or /128).
fn cidr(s: &str) -> Result<ipnet::IpNet, String> {
    let s = s.trim();
    s.parse::<ipnet::IpNet>()
        .or_else(|_| s.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        .map(|n| n.trunc())
        .map_err(|_| format!("{s:?} is not an address or a CIDR range such as 10.0.0.0/8"))
}

/// A number of records, at least one.
fn records(s: &str) -> Result<usize, String> {
    s.trim()
        .parse::<usize>()
        .ok()
        .filter(|&n| n > 0)
        .ok_or_else(|| format!("{s:?} is not a number of records (1 or more)"))
}

fn duration(s: &str) -> Result<Duration, String> {
    parapet_crds::Duration::parse(s)
        .map(|d| d.as_std())
        .map_err(|e| e.to_string())
}

pub use parapet_process::init_logging;

pub async fn run(args: Args) -> anyhow::Result<()> {
    let metrics = Arc::new(Metrics::new());
    // First: a template with a typo stops the start before anything is bound.
    let access_log = access_log(&args, &metrics)?;
    let store = snapshot_store(&args, &metrics)?;
    // Static stability: serve the last good table before anyone pushes.
    if args.config.is_none()
        && let Some(dir) = &args.state_dir
    {
        serve_persisted(&store, dir).await;
    }
    let token = match &args.snapshot_token_file {
        Some(p) => Some(parapet_process::read_secret_file("snapshot token", p)?.into_bytes()),
        None => None,
    };
    let (tls, fallback) = traffic_tls(&args, &store)?;
    if args.trusted_hops > 0 && args.trusted_proxies.is_empty() {
        tracing::warn!(
            "--trusted-hops has no effect without --trusted-proxies: no peer's X-Forwarded-For is believed; list your load balancers' addresses in --trusted-proxies"
        );
    }
    let workers = args.workers.unwrap_or_else(default_workers).max(1);
    // Loops 0..workers are the traffic workers; the last is this runtime (admin, reloads).
    let liveness = crate::liveness::Heartbeats::new(
        (0..workers)
            .map(|i| format!("worker-{i}"))
            .chain(["control".to_string()])
            .collect(),
        args.liveness_stall,
    );
    tokio::spawn(liveness.clone().beat(workers));
    let admin = Arc::new(Admin {
        store: store.clone(),
        metrics: metrics.clone(),
        token,
        max_snapshot_bytes: args.max_snapshot_bytes,
        draining: Default::default(),
        tls: admin_tls(&args)?,
        liveness: liveness.clone(),
    });
    let admin_listener = listener::bind(args.admin_listen).await?;
    let Traffic { per_worker, bound } =
        bind_traffic(&args.listen, workers, tls.as_ref(), |port| {
            crate::tls::acceptor_on(store.certificates().clone(), fallback.clone(), Some(port))
        })?;
    let (proxy_addr, admin_addr) = (bound[0].0, admin_listener.local_addr()?);
    let sockets = bound
        .iter()
        .map(|(addr, port)| format!("{addr}={port}"))
        .collect::<Vec<_>>()
        .join(",");
    // A stable line on stdout that scripts and tests read to find the ports: `proxy=` is
    // the first socket, `listen=` every socket with the Gateway port it serves.
    println!("parapet-dataplane listening proxy={proxy_addr} admin={admin_addr} listen={sockets}");
    tracing::info!(
        %proxy_addr,
        %admin_addr,
        %sockets,
        workers,
        tls = tls.is_some(),
        admin_tls = admin.tls.is_some(),
        admin_mtls = admin.tls.as_ref().is_some_and(|t| t.require_client_cert),
        "listening"
    );
    tokio::spawn(admin.clone().serve(admin_listener));
    if let Some(path) = args.config.clone() {
        // First load before serving, so a newcomer sees errors at once.
        if let Err(e) =
            standalone::load(&path, standalone::next_version(0), args.gateway.as_deref())
        {
            tracing::error!(error = %e, "configuration not loaded; fix the file and it is reloaded");
        }
        tokio::spawn(standalone::watch(
            path,
            args.gateway.clone(),
            store.clone(),
            args.reload_interval,
        ));
    }
    let tracer = tracer(&args, &metrics)?;
    let proxy = proxy(
        &args,
        store,
        metrics,
        access_log.as_ref().map(|l| l.sink.clone()),
        tracer.clone(),
    )?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut workers = start_workers(&args, per_worker, proxy, stop_rx, liveness)?;
    tokio::select! {
        _ = parapet_process::stop_signal() => {}
        Some((i, result)) = workers.exited.recv() => {
            // A worker only stops by itself if its runtime failed: stop the others and
            // exit non-zero so the pod restarts instead of serving with fewer workers.
            let _ = stop_tx.send(true);
            anyhow::bail!("worker {i} stopped unexpectedly: {}", match result {
                Ok(()) => "its listener closed".to_string(),
                Err(e) => format!("{e:#}"),
            });
        }
    }
    tracing::info!("shutting down: readiness is now false");
    admin
        .draining
        .store(true, std::sync::atomic::Ordering::Relaxed);
    tokio::time::sleep(args.shutdown_delay).await;
    let _ = stop_tx.send(true);
    let drained = workers.drained().await;
    if let Some(t) = tracer {
        // What is queued is exported before the process exits.
        let _ = tokio::task::spawn_blocking(move || t.flush()).await;
    }
    if let Some(log) = access_log {
        // What is queued is written before the process exits.
        let _ = tokio::task::spawn_blocking(move || log.close(Duration::from_secs(2))).await;
    }
    drained
}

/// The access log the flags ask for, its writer started; `None` without --access-log.
fn access_log(args: &Args, metrics: &Metrics) -> anyhow::Result<Option<AccessLog>> {
    let flags = accesslog::Flags {
        format: args.access_log_format,
        template: args.access_log_template.as_deref(),
        fields: args.access_log_fields.as_deref(),
        path: args.access_log_path.as_deref(),
        log_format: &args.log_format,
    };
    // Checked with the log off too: a mistake shows before the log is turned on.
    let (format, to) = accesslog::settings(&flags).map_err(|e| anyhow::anyhow!(e))?;
    if !args.access_log {
        if flags.format.is_some()
            || flags.template.is_some()
            || flags.fields.is_some()
            || flags.path.is_some()
        {
            tracing::warn!(
                "--access-log-format, --access-log-template, --access-log-fields and --access-log-path have no effect without --access-log"
            );
        }
        return Ok(None);
    }
    let log = AccessLog::start(
        format,
        to,
        args.access_log_buffer,
        metrics.access_log.clone(),
    )?;
    Ok(Some(log))
}

/// The tracer the --otlp flags ask for, its exporter started; `None` without
/// --otlp-endpoint.
fn tracer(args: &Args, metrics: &Metrics) -> anyhow::Result<Option<Arc<Tracer>>> {
    let Some(endpoint) = &args.otlp_endpoint else {
        return Ok(None);
    };
    let config = TraceConfig {
        endpoint: endpoint.clone(),
        ratio: args.otlp_sampling_ratio,
        queue: args.otlp_queue,
        delay: args.otlp_batch_delay,
        timeout: args.otlp_timeout,
        service: args.otlp_service_name.clone(),
    };
    let tracer = Tracer::start(
        &config,
        tokio::runtime::Handle::current(),
        metrics.trace.clone(),
    )?;
    tracing::info!(endpoint = %endpoint, ratio = args.otlp_sampling_ratio, "tracing: spans exported over OTLP/HTTP");
    Ok(Some(Arc::new(tracer)))
}

/// The snapshot store with the table-build options the flags give.
fn snapshot_store(args: &Args, metrics: &Arc<Metrics>) -> anyhow::Result<Arc<SnapshotStore>> {
    let hedge = HedgeConfig::parse(args.hedge.iter().map(String::as_str))
        .map_err(|e| anyhow::anyhow!(e))?;
    Ok(SnapshotStore::with_options(
        metrics.clone(),
        ClientPool::new(args.upstream_http1),
        args.state_dir.clone(),
        BuildOptions {
            zone: args.zone.clone().filter(|z| !z.is_empty()),
            hedge,
            route_lanes: RouteLaneSettings {
                max_in_flight: args.route_max_in_flight.max(1),
                slow_threshold: args.slow_lane_threshold,
            },
            cache_max_bytes: args.cache_max_bytes,
            rate_limit_max_keys: args.rate_limit_max_keys.max(1),
        },
    ))
}

/// Applies the table kept in the state directory, if there is a good one.
async fn serve_persisted(store: &Arc<SnapshotStore>, dir: &std::path::Path) {
    match load_persisted(dir) {
        Ok(Some(s)) => {
            let v = s.version;
            match store.apply(s).await {
                Ok(_) => tracing::info!(
                    version = v,
                    "serving the persisted snapshot until the operator pushes"
                ),
                Err(e) => tracing::warn!(error = %e, "the persisted snapshot was not applied"),
            }
        }
        Ok(None) => tracing::info!("no persisted snapshot; not ready until the first push"),
        Err(e) => tracing::warn!(error = %e, "ignoring the persisted snapshot"),
    }
}

fn read(path: &std::path::Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
}

/// The traffic listener's TLS for tables without listeners: the table's certificates by
/// SNI, with `--tls-cert` as the fallback; none unless one of them is asked for. Also the
/// fallback itself, which `Https` listeners fall back on too.
fn traffic_tls(
    args: &Args,
    store: &SnapshotStore,
) -> anyhow::Result<(Option<tokio_rustls::TlsAcceptor>, Option<Arc<CertifiedKey>>)> {
    let fallback = match (&args.tls_cert, &args.tls_key) {
        (Some(c), Some(k)) => Some(
            crate::tls::certified_key(&read(c)?, &read(k)?).context("--tls-cert / --tls-key")?,
        ),
        _ => None,
    };
    if fallback.is_none() && !args.tls {
        return Ok((None, None));
    }
    let acceptor = crate::tls::acceptor(store.certificates().clone(), fallback.clone())?;
    Ok((Some(acceptor), fallback))
}

/// The traffic sockets once bound: each worker's, and each `--listen` socket's bound
/// address with the Gateway port it serves, in flag order.
struct Traffic {
    per_worker: Vec<Vec<listener::Socket>>,
    bound: Vec<(SocketAddr, u16)>,
}

/// Binds every `--listen` socket for every worker.
fn bind_traffic(
    specs: &[ListenSpec],
    workers: usize,
    tls: Option<&tokio_rustls::TlsAcceptor>,
    listener_tls: impl Fn(u16) -> anyhow::Result<tokio_rustls::TlsAcceptor>,
) -> anyhow::Result<Traffic> {
    let mut per_worker: Vec<Vec<listener::Socket>> = (0..workers).map(|_| Vec::new()).collect();
    let mut bound = Vec::with_capacity(specs.len());
    for spec in specs {
        let group = listener::bind_workers(spec.addr, workers)?;
        let addr = group[0].local_addr()?;
        let port = spec.port.unwrap_or(addr.port());
        let listener_tls = listener_tls(port)?;
        for (sockets, socket) in per_worker.iter_mut().zip(group) {
            sockets.push(listener::Socket {
                listener: socket,
                port,
                tls: tls.cloned(),
                listener_tls: listener_tls.clone(),
            });
        }
        bound.push((addr, port));
    }
    Ok(Traffic { per_worker, bound })
}

/// The admin listener's TLS (and client certificates, with `--admin-client-ca`).
fn admin_tls(args: &Args) -> anyhow::Result<Option<crate::admin::AdminTls>> {
    let (Some(c), Some(k)) = (&args.admin_tls_cert, &args.admin_tls_key) else {
        return Ok(None);
    };
    let ca = match &args.admin_client_ca {
        Some(p) => Some(read(p)?),
        None => None,
    };
    Ok(Some(crate::admin::AdminTls {
        acceptor: crate::tls::admin_acceptor(&read(c)?, &read(k)?, ca.as_deref())?,
        require_client_cert: ca.is_some(),
    }))
}

/// The proxy every worker serves with: limits, lanes and edge settings from the flags.
fn proxy(
    args: &Args,
    store: Arc<SnapshotStore>,
    metrics: Arc<Metrics>,
    access_log: Option<Arc<accesslog::Sink>>,
    tracer: Option<Arc<Tracer>>,
) -> anyhow::Result<Arc<Proxy>> {
    let server_header =
        match &args.server_header {
            Some(s) => Some(http::HeaderValue::from_str(s).map_err(|_| {
                anyhow::anyhow!("--server-header {s:?} is not a valid header value")
            })?),
            None => None,
        };
    Ok(Arc::new(Proxy {
        store,
        limits: Limits {
            max_uri_bytes: args.max_uri_bytes,
            max_body_bytes: args.max_body_bytes,
            max_replay_bytes: args.max_replay_bytes.min(args.max_body_bytes),
        },
        lanes: Lanes::new(
            LaneConfig {
                capacity: args.max_in_flight.max(1),
                slow_percent: args.slow_lane_percent,
            },
            &metrics,
        ),
        metrics,
        access_log,
        tracer,
        edge: EdgeConfig {
            trusted_proxies: args.trusted_proxies.clone(),
            trusted_hops: args.trusted_hops,
            server_header,
        },
    }))
}

/// The traffic workers, each a thread with its own runtime and listening socket.
struct Workers {
    threads: Vec<std::thread::JoinHandle<()>>,
    /// Each worker's end: its index and how it ended.
    exited: tokio::sync::mpsc::UnboundedReceiver<(usize, anyhow::Result<()>)>,
}

impl Workers {
    /// Waits for every worker to finish draining (each bounded by --drain-timeout).
    async fn drained(mut self) -> anyhow::Result<()> {
        let threads = std::mem::take(&mut self.threads);
        tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
        })
        .await?;
        while let Some((i, result)) = self.exited.recv().await {
            if let Err(e) = result {
                tracing::warn!(worker = i, error = %format!("{e:#}"), "worker failed while draining");
            }
        }
        Ok(())
    }
}

fn start_workers(
    args: &Args,
    traffic: Vec<Vec<listener::Socket>>,
    proxy: Arc<Proxy>,
    stop: tokio::sync::watch::Receiver<bool>,
    liveness: Arc<crate::liveness::Heartbeats>,
) -> anyhow::Result<Workers> {
    let cfg = ListenerConfig {
        max_header_bytes: args.max_header_bytes,
        max_headers: args.max_headers,
        header_read_timeout: args.header_read_timeout,
        max_requests_per_connection: args.max_requests_per_connection,
        http1: args.downstream_http1,
        ..ListenerConfig::default()
    };
    let (exited_tx, exited) = tokio::sync::mpsc::unbounded_channel();
    let mut threads = Vec::with_capacity(traffic.len());
    for (i, sockets) in traffic.into_iter().enumerate() {
        let worker = listener::Worker {
            sockets,
            proxy: proxy.clone(),
            cfg: cfg.clone(),
            drain: args.drain_timeout,
            stop: stop.clone(),
            heartbeat: (liveness.clone(), i),
        };
        let exited = exited_tx.clone();
        let thread = std::thread::Builder::new()
            .name(format!("parapet-worker-{i}"))
            .spawn(move || {
                // A panic outside a task would end the thread silently; report it instead.
                let result =
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| worker.run()))
                        .unwrap_or_else(|_| Err(anyhow::anyhow!("the worker panicked")));
                let _ = exited.send((i, result));
            })
            .context("cannot start a worker thread")?;
        threads.push(thread);
    }
    Ok(Workers { threads, exited })
}

/// One worker per core the process may use.
fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::{Args, ListenSpec, listen_spec};
    use crate::codec::Http1Codec;

    #[test]
    fn listen_values_are_an_address_and_optionally_the_gateway_port() {
        let spec = |addr: &str, port| ListenSpec {
            addr: addr.parse().unwrap(),
            port,
        };
        assert_eq!(listen_spec("0.0.0.0:8080"), Ok(spec("0.0.0.0:8080", None)));
        assert_eq!(
            listen_spec("0.0.0.0:8443=443"),
            Ok(spec("0.0.0.0:8443", Some(443)))
        );
        assert_eq!(listen_spec("[::]:8080=80"), Ok(spec("[::]:8080", Some(80))));
        assert_eq!(
            listen_spec(" 127.0.0.1:0=80 "),
            Ok(spec("127.0.0.1:0", Some(80)))
        );
        for bad in [
            "",
            "8080",
            "localhost:80",
            "0.0.0.0:80=",
            "0.0.0.0:80=0",
            "0.0.0.0:80=x",
            "0.0.0.0:80=70000",
        ] {
            assert!(listen_spec(bad).is_err(), "{bad:?} was accepted");
        }
        assert_eq!(
            listen_spec("0.0.0.0:80=http").unwrap_err(),
            "\"http\" after 0.0.0.0:80= is not a port between 1 and 65535"
        );
    }

    #[test]
    fn listen_keeps_its_default_and_repeats() {
        let listen = |args: &[&str]| {
            Args::try_parse_from(std::iter::once("dataplane").chain(args.iter().copied()))
                .map(|a| a.listen)
                .map_err(|e| e.to_string())
        };
        let spec = |addr: &str, port| ListenSpec {
            addr: addr.parse().unwrap(),
            port,
        };
        assert_eq!(listen(&[]), Ok(vec![spec("127.0.0.1:8080", None)]));
        assert_eq!(
            listen(&["--listen", "0.0.0.0:9000"]),
            Ok(vec![spec("0.0.0.0:9000", None)])
        );
        assert_eq!(
            listen(&[
                "--listen",
                "0.0.0.0:8080=80",
                "--listen",
                "0.0.0.0:8443=443"
            ]),
            Ok(vec![
                spec("0.0.0.0:8080", Some(80)),
                spec("0.0.0.0:8443", Some(443))
            ])
        );
        assert!(listen(&["--listen", "0.0.0.0:8080=x"]).is_err());
    }

    #[test]
    fn the_access_log_flags_parse_and_their_help_names_every_field() {
        let args = |a: &[&str]| {
            Args::try_parse_from(std::iter::once("dataplane").chain(a.iter().copied()))
                .map_err(|e| e.to_string())
        };
        let a = args(&["--access-log"]).unwrap();
        assert!(a.access_log && a.access_log_format.is_none());
        assert_eq!(a.access_log_buffer, crate::accesslog::DEFAULT_BUFFER);
        let a = args(&[
            "--access-log-format",
            "json",
            "--access-log-buffer",
            "8",
            "--access-log-path",
            "/tmp/a.log",
        ])
        .unwrap();
        assert_eq!(
            a.access_log_format,
            Some(crate::accesslog::FormatName::Json)
        );
        assert_eq!(a.access_log_buffer, 8);
        assert!(args(&["--access-log-buffer", "0"]).is_err());
        assert!(args(&["--access-log-format", "csv"]).is_err());
        let help = <Args as clap::CommandFactory>::command()
            .render_long_help()
            .to_string();
        let listed: Vec<&str> = help
            .split_once("Fields: ")
            .expect("the template's help lists the fields")
            .1
            .lines()
            .next()
            .unwrap_or("")
            .split(',')
            .map(|f| f.trim().trim_end_matches('.'))
            .collect();
        let known: Vec<&str> = crate::accesslog::Field::ALL.map(|f| f.name()).to_vec();
        assert_eq!(listed, known, "--help lists the fields as they are");
    }

    #[test]
    fn the_http1_codec_flags_keep_their_names_and_values() {
        let codecs = |args: &[&str]| {
            let a = Args::try_parse_from(std::iter::once("dataplane").chain(args.iter().copied()))
                .map_err(|e| e.to_string())?;
            Ok::<_, String>((a.downstream_http1, a.upstream_http1))
        };
        use Http1Codec::{Hyper, Parapet};
        assert_eq!(codecs(&[]), Ok((Parapet, Parapet)));
        assert_eq!(
            codecs(&["--downstream-http1", "hyper", "--upstream-http1", "parapet"]),
            Ok((Hyper, Parapet))
        );
        assert_eq!(
            codecs(&["--downstream-http1", "parapet", "--upstream-http1", "hyper"]),
            Ok((Parapet, Hyper))
        );
        assert!(codecs(&["--downstream-http1", "nginx"]).is_err());
    }
}
