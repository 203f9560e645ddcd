//! TLS termination: the certificate for each handshake is picked by SNI from the table in
//! force (`VirtualHost.tls`), so a pushed or reloaded table rotates certificates with no
//! restart, and connections already open keep the session they negotiated. `--tls-cert`
//! is the fallback for names the table has no certificate for. A table with listeners has
//! certificates per Gateway port: a socket serving an `Https` listener offers only those of
//! that listener's virtual hosts. TLS 1.2 and 1.3 only, ALPN
//! h2 and http/1.1, and the ring provider only.
//!
//! Handshakes read [`Certificates`], which the snapshot store swaps whole when it installs a
//! table: one atomic load per handshake, no lock, and no dependency on the store.

#[cfg(test)]
mod tests;

use std::{collections::HashMap, sync::Arc};

use anyhow::Context;
use arc_swap::ArcSwap;
use rustls::{
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};
use tokio_rustls::TlsAcceptor;

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
}

/// The table's certificates; hosts whose certificate does not parse are skipped (and
/// logged): their handshakes use the fallback or fail, other hosts are unaffected.
pub fn table_certs(table: &parapet_crds::snapshot::Table) -> TableCerts {
    TableCerts {
        hosts: cert_map(&table.virtual_hosts),
        listeners: table
            .listeners
            .iter()
            .map(|l| (l.port, cert_map(&l.virtual_hosts)))
            .collect(),
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
