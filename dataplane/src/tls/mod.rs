//! TLS termination: the certificate for each handshake is picked by SNI from the table in
//! force (`VirtualHost.tls`), so a pushed or reloaded table rotates certificates with no
//! restart, and connections already open keep the session they negotiated. `--tls-cert`
//! is the fallback for names the table has no certificate for. A table with listeners has
//! certificates per Gateway port: a socket serving an `Https` listener offers only those of
//! that listener's virtual hosts. TLS 1.2 and 1.3 only, ALPN
//! h2 and http/1.1, and the ring provider only.
//!
//! Client certificates (mutual TLS, `VirtualHost.client_auth`) differ per host, so when the
//! table has hosts asking for them, [`accept`] reads the ClientHello first and hands the
//! handshake the configuration of its server name's policy (`client.rs`): its CA and
//! revocation lists, the same certificates and ALPN. Requests are checked again under their
//! own host's policy ([`ClientPolicy::check`]): a resumed session or a connection made for
//! another host proves nothing by itself. A host whose CA is unusable has every handshake
//! refused.
//!
//! Handshakes read [`Certificates`], which the snapshot store swaps whole when it installs a
//! table (certificates and client policies, built once per table): one atomic load per
//! handshake, no lock, and no dependency on the store.

mod client;
#[cfg(test)]
mod tests;

pub use client::{
    ClientIdentity, ClientPolicies, ClientPolicy, Refusal, X_FORWARDED_CLIENT_CERT, xfcc,
};

use std::{collections::HashMap, sync::Arc};

use anyhow::Context;
use arc_swap::ArcSwap;
use rustls::{
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::{LazyConfigAcceptor, TlsAcceptor, server::TlsStream};

/// Certificates by virtual-host domain (`api.example`, `*.example`, `*`), parsed once per
/// table.
pub type CertMap = HashMap<String, Arc<CertifiedKey>>;

/// Parses a PEM chain and key into a signing certificate (ring).
pub fn certified_key(cert_pem: &[u8], key_pem: &[u8]) -> anyhow::Result<Arc<CertifiedKey>> {
    let certs: Vec<_> = rustls_pemfile::certs(&mut &cert_pem[..])
        .collect::<Result<_, _>>()
        .context("the certificate is not valid PEM")?;
    anyhow::ensure!(!certs.is_empty(), "the PEM holds no certificate");
    let key = rustls_pemfile::private_key(&mut &key_pem[..])
        .context("the key is not valid PEM")?
        .context("the PEM holds no private key")?;
    let signer = rustls::crypto::ring::sign::any_supported_type(&key)
        .context("the private key type is not supported")?;
    let ck = CertifiedKey::new(certs, signer);
    ck.keys_match()
        .context("the private key does not match the certificate")?;
    Ok(Arc::new(ck))
}

/// A table's certificates: those of its own virtual hosts, and those of each listener's
/// (a listener's connections only ever see its own).
#[derive(Debug, Default)]
pub struct TableCerts {
    pub hosts: CertMap,
    /// By Gateway port, as the table orders its listeners.
    pub listeners: Vec<(u16, CertMap)>,
    /// Client-certificate policies by Gateway port (`None`: the table's own hosts), only
    /// for the sets of hosts in which one asks for client certificates.
    pub clients: Vec<(Option<u16>, ClientPolicies)>,
}

impl TableCerts {
    /// The certificates of connections on Gateway port `port`: the listener's when `port`
    /// is given, else the table's own.
    fn map(&self, port: Option<u16>) -> Option<&CertMap> {
        match port {
            None => Some(&self.hosts),
            Some(port) => self
                .listeners
                .iter()
                .find(|(p, _)| *p == port)
                .map(|(_, m)| m),
        }
    }

    /// Whether a host of Gateway port `port` (see [`map`](Self::map)) asks for client
    /// certificates.
    fn asks_clients(&self, port: Option<u16>) -> bool {
        self.clients.iter().any(|(p, _)| *p == port)
    }

    /// The client-certificate policy of the host serving `name` (lower case, no port) on
    /// Gateway port `port` (`None`: the table's own hosts), when it asks for one.
    pub fn client_policy(&self, port: Option<u16>, name: &str) -> Option<&Arc<ClientPolicy>> {
        if self.clients.is_empty() {
            return None;
        }
        let (_, policies) = self.clients.iter().find(|(p, _)| *p == port)?;
        policies.lookup(name)
    }
}

/// The table's certificates; hosts whose certificate does not parse are skipped (and
/// logged): their handshakes use the fallback or fail, other hosts are unaffected.
/// Client-certificate policies are made once per table (hosts asking alike share one); one
/// whose CA does not parse refuses its hosts' handshakes and is logged.
pub fn table_certs(table: &parapet_crds::snapshot::Table) -> TableCerts {
    let mut made = client::Made::default();
    let own = ClientPolicies::of(&table.virtual_hosts, &mut made).map(|p| (None, p));
    let listeners = table
        .listeners
        .iter()
        .filter_map(|l| ClientPolicies::of(&l.virtual_hosts, &mut made).map(|p| (Some(l.port), p)));
    TableCerts {
        hosts: cert_map(&table.virtual_hosts),
        listeners: table
            .listeners
            .iter()
            .map(|l| (l.port, cert_map(&l.virtual_hosts)))
            .collect(),
        clients: own.into_iter().chain(listeners).collect(),
    }
}

fn cert_map(hosts: &[parapet_crds::snapshot::VirtualHost]) -> CertMap {
    hosts
        .iter()
        .filter_map(|vh| {
            let pair = vh.tls.as_ref()?;
            match certified_key(pair.cert_pem.as_bytes(), pair.key_pem.as_bytes()) {
                Ok(k) => Some((vh.domain.clone(), k)),
                Err(e) => {
                    tracing::warn!(host = %vh.domain, error = %e, "TLS certificate of this host is unusable");
                    None
                }
            }
        })
        .collect()
}

/// The certificate for a server name: exact, then the most specific `*.suffix` (one or
/// more labels before the suffix, as hosts match), then `*`.
pub fn lookup<'m>(map: &'m CertMap, name: &str) -> Option<&'m Arc<CertifiedKey>> {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    map.get(&name)
        .or_else(|| {
            name.match_indices('.')
                .find_map(|(i, _)| map.get(&format!("*{}", &name[i..])))
        })
        .or_else(|| map.get("*"))
}

/// The certificates of the table in force (empty before the first table), replaced whole by
/// [`install`](Self::install) when a table is installed.
#[derive(Debug, Default)]
pub struct Certificates(ArcSwap<TableCerts>);

impl Certificates {
    /// Serves `certs` from the next handshake on; handshakes under way keep what they read.
    pub fn install(&self, certs: Arc<TableCerts>) {
        self.0.store(certs);
    }

    /// The certificate for a server name among the table's own hosts (see [`lookup`]).
    pub fn get(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        self.get_on(None, name)
    }

    /// The certificate for a server name on Gateway port `port` (the listener's hosts), or
    /// among the table's own hosts when `port` is `None`.
    pub fn get_on(&self, port: Option<u16>, name: &str) -> Option<Arc<CertifiedKey>> {
        lookup(self.0.load().map(port)?, name).cloned()
    }

    /// The client-certificate policy of the host serving `name` on Gateway port `port`, in
    /// the table in force (see [`TableCerts::client_policy`]).
    pub fn client_policy(&self, port: Option<u16>, name: &str) -> Option<Arc<ClientPolicy>> {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        self.0.load().client_policy(port, &name).cloned()
    }
}

/// The TLS handshake of a connection on Gateway port `port` (`None`: the table's own
/// hosts), with `plain`'s configuration, or, when the ClientHello's server name (none: the
/// `*` host) is a host asking for client certificates, with that host's policy's. Returns
/// the stream and, when the handshake asked for a client certificate, what it settled.
pub async fn accept<IO>(
    io: IO,
    plain: &TlsAcceptor,
    certs: &Certificates,
    port: Option<u16>,
) -> std::io::Result<(TlsStream<IO>, Option<ClientIdentity>)>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    // Most tables ask no host for client certificates: the handshake as it always was.
    if !certs.0.load().asks_clients(port) {
        return Ok((plain.accept(io).await?, None));
    }
    let start = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), io).await?;
    let policy = certs.client_policy(port, start.client_hello().server_name().unwrap_or(""));
    let Some(policy) = policy else {
        return Ok((start.into_stream(plain.config().clone()).await?, None));
    };
    let config = policy
        .handshake_config(plain.config())
        .map_err(std::io::Error::other)?;
    let stream = start.into_stream(config).await?;
    let client = ClientIdentity::new(&policy, stream.get_ref().1.peer_certificates());
    Ok((stream, Some(client)))
}

/// Picks a certificate per handshake from the table in force.
#[derive(Debug)]
pub struct SniResolver {
    certs: Arc<Certificates>,
    fallback: Option<Arc<CertifiedKey>>,
    /// The Gateway port whose listener's certificates this socket serves; `None`: the
    /// table's own.
    port: Option<u16>,
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        hello
            .server_name()
            .and_then(|name| self.certs.get_on(self.port, name))
            .or_else(|| self.fallback.clone())
    }
}

/// A TLS 1.2+ acceptor with ALPN h2 / http/1.1 that selects certificates by SNI from `certs`.
pub fn acceptor(
    certs: Arc<Certificates>,
    fallback: Option<Arc<CertifiedKey>>,
) -> anyhow::Result<TlsAcceptor> {
    acceptor_on(certs, fallback, None)
}

/// As [`acceptor`], with the certificates of the listener on Gateway port `port` (when
/// given) instead of the table's own.
pub fn acceptor_on(
    certs: Arc<Certificates>,
    fallback: Option<Arc<CertifiedKey>>,
    port: Option<u16>,
) -> anyhow::Result<TlsAcceptor> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .context("TLS 1.2 and 1.3 are supported")?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(SniResolver {
            certs,
            fallback,
            port,
        }));
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    // Apart from the sessions of handshakes that ask for client certificates.
    cfg.session_storage = client::plain_sessions();
    Ok(TlsAcceptor::from(Arc::new(cfg)))
}

/// The admin port's TLS: the server certificate, and with a client CA, client certificates
/// verified against it. Client authentication is *optional* at the handshake (a kubelet
/// probe has no certificate), but a certificate that is presented must chain to the CA,
/// or the handshake fails; the admin handler then refuses snapshot, status and purge
/// requests on connections that presented none. TLS 1.2+, ring only, ALPN http/1.1 and h2.
pub fn admin_acceptor(
    cert_pem: &[u8],
    key_pem: &[u8],
    client_ca_pem: Option<&[u8]>,
) -> anyhow::Result<TlsAcceptor> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let key = certified_key(cert_pem, key_pem).context("--admin-tls-cert / --admin-tls-key")?;
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .context("TLS 1.2 and 1.3 are supported")?;
    let builder = match client_ca_pem {
        Some(pem) => {
            let mut roots = rustls::RootCertStore::empty();
            let certs: Vec<_> = rustls_pemfile::certs(&mut &pem[..])
                .collect::<Result<_, _>>()
                .context("--admin-client-ca is not valid PEM")?;
            anyhow::ensure!(!certs.is_empty(), "--admin-client-ca holds no certificate");
            for c in certs {
                roots
                    .add(c)
                    .context("--admin-client-ca holds an unusable certificate")?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .allow_unauthenticated()
            .build()
            .context("--admin-client-ca cannot verify client certificates")?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut cfg = builder.with_cert_resolver(Arc::new(FixedCert(key)));
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(cfg)))
}

/// One certificate for every handshake (the admin port's).
#[derive(Debug)]
struct FixedCert(Arc<CertifiedKey>);

impl ResolvesServerCert for FixedCert {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}
