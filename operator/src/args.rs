//! Flags (and their environment variables).

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::Parser;

/// Parapet operator: watches ApiRoutes, UpstreamPools, CachePolicies and EndpointSlices,
/// compiles one routing table and pushes it to every data-plane pod.
#[derive(Parser, Debug, Clone)]
#[command(name = "operator", version)]
pub struct Args {
    /// Namespaces to watch (comma-separated). Empty: all namespaces.
    #[arg(long, env = "PARAPET_WATCH_NAMESPACES", value_delimiter = ',')]
    pub watch_namespaces: Vec<String>,
    /// The data plane's admin Service; its EndpointSlices (not-ready addresses included)
    /// list the pods to push to.
    #[arg(
        long,
        env = "PARAPET_DATAPLANE_SERVICE",
        default_value = "parapet-dataplane-admin"
    )]
    pub dataplane_service: String,
    #[arg(long, env = "PARAPET_DATAPLANE_NAMESPACE", default_value = "parapet")]
    pub dataplane_namespace: String,
    /// Name of the admin port in those EndpointSlices (a slice with one port uses it).
    #[arg(long, env = "PARAPET_DATAPLANE_PORT_NAME", default_value = "admin")]
    pub dataplane_port_name: String,
    /// File holding the bearer token for `PUT /v1/snapshot` (the chart mounts the Secret).
    #[arg(long, env = "PARAPET_SNAPSHOT_TOKEN_FILE")]
    pub snapshot_token_file: Option<PathBuf>,
    /// CA bundle (PEM) that signed the data planes' admin certificate: pushes and status
    /// checks then use https and verify it (the data planes run with --admin-tls-cert).
    #[arg(long, env = "PARAPET_DATAPLANE_CA")]
    pub dataplane_ca: Option<PathBuf>,
    /// Client certificate chain (PEM) presented to the data planes (mTLS, for data planes
    /// started with --admin-client-ca). Needs --dataplane-ca and --client-key.
    #[arg(long, env = "PARAPET_CLIENT_CERT", requires = "client_key")]
    pub client_cert: Option<PathBuf>,
    #[arg(long, env = "PARAPET_CLIENT_KEY", requires = "client_cert")]
    pub client_key: Option<PathBuf>,
    /// The name the data planes' admin certificate is issued to, when it is not their
    /// address (pods are pushed to by IP from the EndpointSlices). Default: the address.
    #[arg(long, env = "PARAPET_DATAPLANE_SERVER_NAME")]
    pub dataplane_server_name: Option<String>,
    /// Issue the snapshot channel's certificates: keep a CA in this Secret (in
    /// --dataplane-namespace; created when absent) and the data planes' admin certificate
    /// in --snapshot-tls-secret. The data planes mount that Secret and run with
    /// --admin-tls-cert, --admin-tls-key and --admin-client-ca; the operator presents a
    /// client certificate from the same CA. Needs --dataplane-server-name.
    #[arg(
        long,
        env = "PARAPET_SNAPSHOT_CA_SECRET",
        requires = "snapshot_tls_secret",
        conflicts_with_all = ["dataplane_ca", "client_cert", "client_key"]
    )]
    pub snapshot_ca_secret: Option<String>,
    /// The `kubernetes.io/tls` Secret (ca.crt, tls.crt, tls.key) the operator issues for the
    /// data planes' admin port, with --snapshot-ca-secret.
    #[arg(
        long,
        env = "PARAPET_SNAPSHOT_TLS_SECRET",
        requires = "snapshot_ca_secret"
    )]
    pub snapshot_tls_secret: Option<String>,
    /// The data plane's Deployment (in --dataplane-namespace): the template each Gateway's
    /// fleet copies (with the snapshot token, and the certificates with
    /// --snapshot-ca-secret), and, with --snapshot-ca-secret, rolled (like `kubectl rollout
    /// restart`) after its certificate is issued again, since the data plane reads the
    /// certificate at start.
    #[arg(long, env = "PARAPET_DATAPLANE_DEPLOYMENT")]
    pub dataplane_deployment: Option<String>,
    /// How often issued certificates are checked and renewed before they expire.
    #[arg(long, default_value = "1h", value_parser = duration)]
    pub snapshot_cert_check_interval: Duration,
    /// Label selector of the Secrets the operator reads: the API keys and TLS certificates
    /// that routes and pools reference must carry it. No other Secret is listed or cached.
    /// Empty: every Secret (of the watched namespaces).
    #[arg(
        long,
        env = "PARAPET_SECRET_LABEL_SELECTOR",
        default_value = "parapet.dev/secret=true"
    )]
    pub secret_label_selector: String,
    /// Quiet time after a change before recompiling.
    #[arg(long, env = "PARAPET_DEBOUNCE", default_value = "200ms", value_parser = duration)]
    pub debounce: Duration,
    /// Longest a change waits for a recompile under constant churn.
    #[arg(long, env = "PARAPET_MAX_WAIT", default_value = "1s", value_parser = duration)]
    pub max_wait: Duration,
    /// Pushes in flight at once.
    #[arg(long, env = "PARAPET_PUSH_CONCURRENCY", default_value_t = 16)]
    pub push_concurrency: usize,
    /// How often pods are checked and re-pushed when behind (a restarted pod).
    #[arg(long, env = "PARAPET_RESYNC_INTERVAL", default_value = "10s", value_parser = duration)]
    pub resync_interval: Duration,
    /// Timeout of one push.
    #[arg(long, default_value = "10s", value_parser = duration)]
    pub push_timeout: Duration,
    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, env = "PARAPET_METRICS_LISTEN", default_value = "127.0.0.1:9902")]
    pub metrics_listen: SocketAddr,
    /// Namespace and name of the Lease used for leader election.
    #[arg(long, env = "POD_NAMESPACE", default_value = "parapet")]
    pub lease_namespace: String,
    #[arg(long, env = "PARAPET_LEASE_NAME", default_value = "parapet-operator")]
    pub lease_name: String,
    /// This replica's identity in the Lease (default: POD_NAME, else host name and pid).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    /// Seconds a leader holds the Lease without renewing it.
    #[arg(long, default_value_t = 10)]
    pub lease_duration_secs: u64,
    /// Log format.
    #[arg(long, env = "PARAPET_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
}

fn duration(s: &str) -> Result<Duration, String> {
    parapet_crds::Duration::parse(s)
        .map(|d| d.as_std())
        .map_err(|e| e.to_string())
}
