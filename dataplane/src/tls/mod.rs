//! TLS termination: the certificate for each handshake is picked by SNI from the table in
//! force (`VirtualHost.tls`), so a pushed or reloaded table rotates certificates with no
//! restart, and connections already open keep the session they negotiated. `--tls-cert`
//! is the fallback for names the table has no certificate for. TLS 1.2 and 1.3 only, ALPN
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

/// The table's certificates; hosts whose certificate does not parse are skipped (and
/// logged): their handshakes use the fallback or fail, other hosts are unaffected.
pub fn cert_map(table: &parapet_crds::snapshot::Table) -> CertMap {
    table
        .virtual_hosts
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

/// The certificate for a server name: exact, then `*.parent`, then `*`.
pub fn lookup<'m>(map: &'m CertMap, name: &str) -> Option<&'m Arc<CertifiedKey>> {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    map.get(&name)
        .or_else(|| {
            let (_, parent) = name.split_once('.')?;
            map.get(&format!("*.{parent}"))
        })
        .or_else(|| map.get("*"))
}

/// The certificates of the table in force (empty before the first table), replaced whole by
/// [`install`](Self::install) when a table is installed.
#[derive(Debug, Default)]
pub struct Certificates(ArcSwap<CertMap>);

impl Certificates {
    /// Serves `map` from the next handshake on; handshakes under way keep the map they read.
    pub fn install(&self, map: Arc<CertMap>) {
        self.0.store(map);
    }

    /// The certificate for a server name in the map in force (see [`lookup`]).
    pub fn get(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        lookup(&self.0.load(), name).cloned()
    }
}

/// Picks a certificate per handshake from the table in force.
#[derive(Debug)]
pub struct SniResolver {
    certs: Arc<Certificates>,
    fallback: Option<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        hello
            .server_name()
            .and_then(|name| self.certs.get(name))
            .or_else(|| self.fallback.clone())
    }
}

/// A TLS 1.2+ acceptor with ALPN h2 / http/1.1 that selects certificates by SNI from `certs`.
pub fn acceptor(
    certs: Arc<Certificates>,
    fallback: Option<Arc<CertifiedKey>>,
) -> anyhow::Result<TlsAcceptor> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .context("TLS 1.2 and 1.3 are supported")?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(SniResolver { certs, fallback }));
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
