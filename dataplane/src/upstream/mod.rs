//! Connections to endpoints: keep-alive pools that outlive table swaps.
//!
//! Pools with `tls` connect with rustls (ring provider only): roots from the pool's CA
//! bundle (or the platform's when it has none), the client certificate when given (mTLS),
//! ALPN per protocol, and SNI from `tls.sni` or else the endpoint address. Their attempts
//! use the `https` scheme; other pools stay plain HTTP.
//!
//! Plain HTTP/1.1 pools send requests whose body is in memory with Parapet's own client
//! (`http1`), unless `--upstream-http1 hyper` says otherwise; everything else goes through
//! hyper-util's pooled client.

pub mod http1;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, OnceLock},
    time::Duration,
};

use bytes::Bytes;
use hyper_rustls::{FixedServerNameResolver, HttpsConnector};
use hyper_util::{
    client::legacy::{
        Client,
        connect::{Connected, Connection, HttpConnector},
    },
    rt::{TokioExecutor, TokioTimer},
};
use parapet_crds::snapshot::{Cluster, UpstreamProtocol, UpstreamTls};
use rustls::{
    RootCertStore,
    pki_types::{CertificateDer, ServerName},
};

use crate::{
    codec::Http1Codec,
    proxy::body::{BoxError, ProxyBody},
};

/// One client type for every pool: plain pools send `http` URIs, TLS pools `https` ones.
pub type UpstreamClient = Client<NoExtras<HttpsConnector<HttpConnector>>, ProxyBody>;

/// An upstream response's body, from whichever client sent the request.
pub enum UpstreamBody {
    Hyper(hyper::body::Incoming),
    Http1(http1::Http1Body),
}

impl http_body::Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            Self::Hyper(b) => std::pin::Pin::new(b).poll_frame(cx).map_err(BoxError::from),
            Self::Http1(b) => std::pin::Pin::new(b).poll_frame(cx).map_err(BoxError::from),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Hyper(b) => b.is_end_stream(),
            Self::Http1(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match self {
            Self::Hyper(b) => b.size_hint(),
            Self::Http1(b) => b.size_hint(),
        }
    }
}

/// A connector whose connections carry no "extra" (hyper-util's `HttpInfo`, which its client
/// copies into the extensions of every response: three allocations per request that the
/// proxy never reads). ALPN and proxy flags are kept.
#[derive(Clone)]
pub struct NoExtras<C>(pub C);

impl<C> tower_service::Service<http::Uri> for NoExtras<C>
where
    C: tower_service::Service<http::Uri>,
{
    type Response = Plain<C::Response>;
    type Error = C::Error;
    type Future = futures::future::MapOk<C::Future, fn(C::Response) -> Plain<C::Response>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), C::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        use futures::TryFutureExt;
        self.0
            .call(uri)
            .map_ok(Plain as fn(C::Response) -> Plain<C::Response>)
    }
}

/// A connection as its connector made it, reporting no extras.
pub struct Plain<T>(T);

impl<T: Connection> Connection for Plain<T> {
    fn connected(&self) -> Connected {
        let inner = self.0.connected();
        let c = Connected::new().proxy(inner.is_proxied());
        if inner.is_negotiated_h2() {
            c.negotiated_h2()
        } else {
            c
        }
    }
}

impl<T: hyper::rt::Read + Unpin> hyper::rt::Read for Plain<T> {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl<T: hyper::rt::Write + Unpin> hyper::rt::Write for Plain<T> {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_write_vectored(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.get_mut().0).poll_write_vectored(cx, bufs)
    }
}

/// A pool's TLS settings, compared by content: two pools with the same settings share
/// connections; a changed CA, certificate or SNI gets a new pool.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TlsKey {
    sni: Option<String>,
    ca_pem: Option<String>,
    client_cert: Option<(String, String)>,
}

impl TlsKey {
    pub fn of(tls: &UpstreamTls) -> Self {
        Self {
            sni: tls.sni.clone(),
            ca_pem: tls.ca_pem.clone(),
            client_cert: tls
                .client_certificate
                .as_ref()
                .map(|c| (c.cert_pem.clone(), c.key_pem.clone())),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct PoolKey {
    connect_timeout_ms: u64,
    http2: bool,
    tls: Option<TlsKey>,
}

/// Clients by connection settings. A pool's connections survive a table swap as long as its
/// settings do, so a push does not cold-start every upstream connection.
#[derive(Clone, Default)]
pub struct ClientPool {
    clients: Arc<Mutex<HashMap<PoolKey, UpstreamClient>>>,
    http1: Http1Codec,
}

impl ClientPool {
    pub fn new(http1: Http1Codec) -> Self {
        Self {
            clients: Arc::default(),
            http1,
        }
    }

    /// Parapet's own client for a plain HTTP/1.1 pool (when chosen); `None` for the others.
    pub fn http1_for(&self, cluster: &Cluster) -> Option<http1::Http1Client> {
        (self.http1 == Http1Codec::Parapet
            && cluster.tls.is_none()
            && cluster.protocol != UpstreamProtocol::Http2)
            .then(|| http1::Http1Client::new(Duration::from_millis(cluster.connect_timeout_ms)))
    }

    /// The client for a pool; `Err` (a sentence) when its TLS settings are unusable.
    pub fn client_for(&self, cluster: &Cluster) -> Result<UpstreamClient, String> {
        let http2 = cluster.protocol == UpstreamProtocol::Http2;
        let key = PoolKey {
            connect_timeout_ms: cluster.connect_timeout_ms,
            http2,
            tls: cluster.tls.as_ref().map(TlsKey::of),
        };
        // Only taken while a table is built, never per request.
        let mut map = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = map.get(&key) {
            return Ok(c.clone());
        }
        let connector = connector(
            Duration::from_millis(cluster.connect_timeout_ms),
            http2,
            cluster.tls.as_ref(),
        )?;
        let client = build(connector, http2);
        map.insert(key, client.clone());
        Ok(client)
    }

    /// Drops the clients no pool of the table in force uses (their idle connections close).
    pub fn retain_used<'a>(&self, clusters: impl IntoIterator<Item = &'a Cluster>) {
        let used: std::collections::HashSet<PoolKey> = clusters
            .into_iter()
            .map(|c| PoolKey {
                connect_timeout_ms: c.connect_timeout_ms,
                http2: c.protocol == UpstreamProtocol::Http2,
                tls: c.tls.as_ref().map(TlsKey::of),
            })
            .collect();
        let mut map = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|k, _| used.contains(k));
    }
}

/// A connector for a pool: plain HTTP without `tls`, rustls with it. `Err` is a sentence
/// saying what is wrong with the pool's TLS settings.
pub fn connector(
    connect_timeout: Duration,
    http2: bool,
    tls: Option<&UpstreamTls>,
) -> Result<HttpsConnector<HttpConnector>, String> {
    let mut http = HttpConnector::new();
    http.set_connect_timeout(Some(connect_timeout));
    http.set_nodelay(true);
    // The TLS layer sees `https` URIs; it hands the plain TCP connect to this connector.
    http.enforce_http(false);
    let config = match tls {
        Some(tls) => client_config(tls)?,
        // Never used: plain pools only send `http` URIs. No roots, so it trusts nothing.
        None => base_builder()?
            .with_root_certificates(RootCertStore::empty())
            .with_no_client_auth(),
    };
    let b = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(config)
        .https_or_http();
    let b = match tls.and_then(|t| t.sni.as_deref()) {
        Some(sni) => {
            let name = ServerName::try_from(sni.to_string())
                .map_err(|_| format!("tls.sni {sni:?} is not a valid DNS name or IP address"))?;
            b.with_server_name_resolver(FixedServerNameResolver::new(name))
        }
        None => b,
    };
    // ALPN: h2 only for HTTP/2 pools, http/1.1 only for the others.
    Ok(if http2 {
        b.enable_http2().wrap_connector(http)
    } else {
        b.enable_http1().wrap_connector(http)
    })
}

fn base_builder()
-> Result<rustls::ConfigBuilder<rustls::ClientConfig, rustls::WantsVerifier>, String> {
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("the TLS provider is unusable: {e}"))
}

/// The platform's roots, loaded once per process.
fn native_roots() -> &'static RootCertStore {
    static ROOTS: OnceLock<RootCertStore> = OnceLock::new();
    ROOTS.get_or_init(|| {
        let found = rustls_native_certs::load_native_certs();
        for e in &found.errors {
            tracing::warn!(error = %e, "a platform CA certificate could not be loaded");
        }
        let mut roots = RootCertStore::empty();
        let (added, ignored) = roots.add_parsable_certificates(found.certs);
        tracing::debug!(added, ignored, "platform CA certificates loaded");
        roots
    })
}

fn client_config(tls: &UpstreamTls) -> Result<rustls::ClientConfig, String> {
    let roots = match &tls.ca_pem {
        Some(pem) => {
            let certs: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut pem.as_bytes())
                .collect::<Result<_, _>>()
                .map_err(|e| format!("the CA bundle (tls.caSecretRef) is not valid PEM: {e}"))?;
            if certs.is_empty() {
                return Err("the CA bundle (tls.caSecretRef) holds no certificate".into());
            }
            let mut roots = RootCertStore::empty();
            for c in certs {
                roots.add(c).map_err(|e| {
                    format!("the CA bundle (tls.caSecretRef) holds an unusable certificate: {e}")
                })?;
            }
            roots
        }
        None => {
            let roots = native_roots();
            if roots.is_empty() {
                return Err(
                    "no platform CA certificates were found, so tls.caSecretRef is required".into(),
                );
            }
            roots.clone()
        }
    };
    let builder = base_builder()?.with_root_certificates(roots);
    Ok(match &tls.client_certificate {
        None => builder.with_no_client_auth(),
        Some(pair) => {
            // Checks the chain, the key and that they match, with readable reasons.
            crate::tls::certified_key(pair.cert_pem.as_bytes(), pair.key_pem.as_bytes())
                .map_err(|e| format!("the client certificate is unusable: {e:#}"))?;
            let certs: Vec<CertificateDer<'static>> =
                rustls_pemfile::certs(&mut pair.cert_pem.as_bytes())
                    .collect::<Result<_, _>>()
                    .map_err(|e| format!("the client certificate is not valid PEM: {e}"))?;
            let key = rustls_pemfile::private_key(&mut pair.key_pem.as_bytes())
                .ok()
                .flatten()
                .ok_or("the client certificate's key is not a valid PEM private key")?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(|e| format!("the client certificate is unusable: {e}"))?
        }
    })
}

fn build(connector: HttpsConnector<HttpConnector>, http2: bool) -> UpstreamClient {
    let mut b = Client::builder(TokioExecutor::new());
    b.pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(256)
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new());
    if http2 {
        b.http2_only(true);
    }
    b.build(NoExtras(connector))
}

#[cfg(test)]
mod tests {
    use parapet_crds::snapshot::CertificatePair;

    use super::*;

    fn tls(ca: Option<&str>, client: Option<(&str, &str)>) -> UpstreamTls {
        UpstreamTls {
            sni: None,
            ca_pem: ca.map(str::to_string),
            client_certificate: client.map(|(c, k)| CertificatePair {
                cert_pem: c.into(),
                key_pem: k.into(),
            }),
        }
    }

    #[test]
    fn bad_pem_is_a_sentence_not_a_panic() {
        let t = Duration::from_secs(1);
        let e = connector(t, false, Some(&tls(Some("not pem"), None))).unwrap_err();
        assert!(e.contains("CA bundle"), "{e}");
        let junk = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        let e = connector(t, false, Some(&tls(Some(junk), None))).unwrap_err();
        assert!(e.contains("CA bundle"), "{e}");
        let e = connector(t, false, Some(&tls(None, Some(("x", "y"))))).unwrap_err();
        assert!(
            e.contains("client certificate") || e.contains("caSecretRef"),
            "{e}"
        );
        let mut bad_sni = tls(None, None);
        bad_sni.sni = Some("not a name!".into());
        assert!(connector(t, true, Some(&bad_sni)).is_err());
        assert!(connector(t, true, None).is_ok());
    }
}
