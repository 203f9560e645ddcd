//! TLS for the snapshot channel: the operator verifies the data planes' admin certificate
//! against `--dataplane-ca` and presents `--client-cert` (mTLS) when the data planes ask
//! for one. One crypto provider, ring.

use std::{
    path::Path,
    sync::{Arc, RwLock},
};

use anyhow::Context;
use bytes::Bytes;
use http_body_util::Full;
use hyper_rustls::{FixedServerNameResolver, HttpsConnector};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use rustls::{
    client::ResolvesClientCert,
    pki_types::{CertificateDer, ServerName},
    sign::CertifiedKey,
};

/// The client that pushes tables and asks for status.
pub type PushClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// How the operator talks TLS to the data planes' admin port.
#[derive(Clone, Debug)]
pub struct PushTls {
    pub config: Arc<rustls::ClientConfig>,
    /// The name the admin certificate must carry; `None`: the address pushed to (an IP
    /// or a host name from the EndpointSlice).
    pub server_name: Option<ServerName<'static>>,
}

impl PushTls {
    /// From the flags: `None` without `--dataplane-ca` (plain HTTP).
    pub fn from_files(
        ca: Option<&Path>,
        client_cert: Option<&Path>,
        client_key: Option<&Path>,
        server_name: Option<&str>,
    ) -> anyhow::Result<Option<Self>> {
        let Some(ca) = ca else {
            anyhow::ensure!(
                client_cert.is_none() && client_key.is_none() && server_name.is_none(),
                "--client-cert, --client-key and --dataplane-server-name need --dataplane-ca (TLS to the data planes)"
            );
            return Ok(None);
        };
        let read = |p: &Path, flag: &str| {
            std::fs::read(p).with_context(|| format!("{flag}: cannot read {}", p.display()))
        };
        let client = match (client_cert, client_key) {
            (Some(c), Some(k)) => Some((read(c, "--client-cert")?, read(k, "--client-key")?)),
            (None, None) => None,
            _ => anyhow::bail!("--client-cert and --client-key go together"),
        };
        let config = client_config(
            &read(ca, "--dataplane-ca")?,
            client.as_ref().map(|(c, k)| (&c[..], &k[..])),
        )?;
        let server_name = match server_name {
            Some(n) => Some(ServerName::try_from(n.to_string()).map_err(|_| {
                anyhow::anyhow!("--dataplane-server-name {n:?} is not a DNS name or IP address")
            })?),
            None => None,
        };
        Ok(Some(Self {
            config: Arc::new(config),
            server_name,
        }))
    }
}

impl PushTls {
    /// With certificates the operator issued itself: trust `ca_pem`, present `client`
    /// (replaceable while pushes go on), expect `server_name` in the data planes'
    /// certificate.
    pub fn issued(
        ca_pem: &str,
        client: Arc<ClientCert>,
        server_name: &str,
    ) -> anyhow::Result<Self> {
        let builder = builder(ca_pem.as_bytes())?;
        let server_name = ServerName::try_from(server_name.to_string()).map_err(|_| {
            anyhow::anyhow!("--dataplane-server-name {server_name:?} is not a DNS name")
        })?;
        Ok(Self {
            config: Arc::new(builder.with_client_cert_resolver(client)),
            server_name: Some(server_name),
        })
    }
}

/// The operator's client certificate, swapped in place when it is issued again, so the
/// push client (built once) always presents the current one.
#[derive(Debug)]
pub struct ClientCert(RwLock<Arc<CertifiedKey>>);

impl ClientCert {
    pub fn new(chain_pem: &str, key_pem: &str) -> anyhow::Result<Self> {
        Ok(Self(RwLock::new(certified_key(chain_pem, key_pem)?)))
    }

    pub fn replace(&self, chain_pem: &str, key_pem: &str) -> anyhow::Result<()> {
        let key = certified_key(chain_pem, key_pem)?;
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = key;
        Ok(())
    }

    /// The certificate presented now (DER).
    pub fn current(&self) -> CertificateDer<'static> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).cert[0].clone()
    }
}

impl ResolvesClientCert for ClientCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.0.read().unwrap_or_else(|p| p.into_inner()).clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

fn certified_key(chain_pem: &str, key_pem: &str) -> anyhow::Result<Arc<CertifiedKey>> {
    let chain: Vec<_> = rustls_pemfile::certs(&mut chain_pem.as_bytes())
        .collect::<Result<_, _>>()
        .context("the client certificate is not valid PEM")?;
    anyhow::ensure!(!chain.is_empty(), "the client certificate is empty");
    let key = rustls_pemfile::private_key(&mut key_pem.as_bytes())
        .context("the client key is not valid PEM")?
        .context("the client key holds no private key")?;
    let signer = rustls::crypto::ring::default_provider()
        .key_provider
        .load_private_key(key)
        .context("the client key's type is unsupported")?;
    Ok(Arc::new(CertifiedKey::new(chain, signer)))
}

type RootsBuilder = rustls::ConfigBuilder<rustls::ClientConfig, rustls::client::WantsClientCert>;

/// TLS 1.2+ (ring), trusting `ca_pem`.
fn builder(ca_pem: &[u8]) -> anyhow::Result<RootsBuilder> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    let cas: Vec<_> = rustls_pemfile::certs(&mut &ca_pem[..])
        .collect::<Result<_, _>>()
        .context("--dataplane-ca is not valid PEM")?;
    anyhow::ensure!(!cas.is_empty(), "--dataplane-ca holds no certificate");
    for c in cas {
        roots
            .add(c)
            .context("--dataplane-ca holds an unusable CA certificate")?;
    }
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .context("TLS 1.2 and 1.3 are supported")?
        .with_root_certificates(roots))
}

/// A TLS 1.2+ client config (ring) trusting `ca_pem`, presenting `client` (chain, key)
/// when given. Errors name what is wrong with which input.
pub fn client_config(
    ca_pem: &[u8],
    client: Option<(&[u8], &[u8])>,
) -> anyhow::Result<rustls::ClientConfig> {
    let builder = builder(ca_pem)?;
    // ALPN is set by the connector (http/1.1).
    let cfg = match client {
        Some((cert_pem, key_pem)) => {
            let chain: Vec<_> = rustls_pemfile::certs(&mut &cert_pem[..])
                .collect::<Result<_, _>>()
                .context("--client-cert is not valid PEM")?;
            anyhow::ensure!(!chain.is_empty(), "--client-cert holds no certificate");
            let key = rustls_pemfile::private_key(&mut &key_pem[..])
                .context("--client-key is not valid PEM")?
                .context("--client-key holds no private key")?;
            builder
                .with_client_auth_cert(chain, key)
                .context("--client-key does not fit --client-cert (or its type is unsupported)")?
        }
        None => builder.with_no_client_auth(),
    };
    Ok(cfg)
}

/// The push client: https with `tls`, plain http without.
pub fn push_client(tls: Option<&PushTls>) -> PushClient {
    let config = match tls {
        Some(t) => (*t.config).clone(),
        // Never used for a handshake: every URL is http:// then.
        None => rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("ring supports the default versions")
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth(),
    };
    let b = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(config)
        .https_or_http();
    let b = match tls.and_then(|t| t.server_name.clone()) {
        Some(name) => b.with_server_name_resolver(FixedServerNameResolver::new(name)),
        None => b,
    };
    Client::builder(TokioExecutor::new()).build(b.enable_http1().build())
}

/// `https` with TLS, `http` without.
pub fn scheme(tls: Option<&PushTls>) -> &'static str {
    if tls.is_some() { "https" } else { "http" }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pki() -> (String, String, String) {
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca =
            rcgen::CertifiedIssuer::self_signed(ca, rcgen::KeyPair::generate().unwrap()).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let leaf = rcgen::CertificateParams::new(vec!["operator".to_string()])
            .unwrap()
            .signed_by(&key, &ca)
            .unwrap();
        (ca.pem(), leaf.pem(), key.serialize_pem())
    }

    #[test]
    fn an_issued_client_certificate_is_swapped_in_place() {
        let now = time::OffsetDateTime::now_utc();
        let ca = crate::pki::Ca::generate(now).unwrap();
        let first = ca.issue_client(now).unwrap();
        let cert = Arc::new(ClientCert::new(&first.cert, &first.key).unwrap());
        let tls = PushTls::issued(&ca.pem().cert, cert.clone(), "dp.parapet.svc").unwrap();
        assert!(tls.config.client_auth_cert_resolver.has_certs());
        let presented = |t: &PushTls| {
            t.config
                .client_auth_cert_resolver
                .resolve(&[], &[rustls::SignatureScheme::ECDSA_NISTP256_SHA256])
                .unwrap()
                .cert[0]
                .clone()
        };
        assert_eq!(presented(&tls), cert.current());
        let second = ca.issue_client(now).unwrap();
        cert.replace(&second.cert, &second.key).unwrap();
        assert_ne!(
            presented(&tls).as_ref(),
            rustls_pemfile::certs(&mut first.cert.as_bytes())
                .next()
                .unwrap()
                .unwrap()
                .as_ref()
        );
        assert_eq!(presented(&tls), cert.current());
        // A key that is not the certificate's type is refused, and the old one kept.
        assert!(cert.replace(&second.cert, "garbage").is_err());
        assert_eq!(presented(&tls), cert.current());
        assert!(PushTls::issued(&ca.pem().cert, cert, "not a name!").is_err());
    }

    #[test]
    fn builds_from_pem_files_and_names_bad_ones() {
        let (ca, cert, key) = pki();
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, body: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, body).unwrap();
            p
        };
        let (ca_p, cert_p, key_p) = (
            write("ca.pem", &ca),
            write("tls.crt", &cert),
            write("tls.key", &key),
        );
        let tls = PushTls::from_files(Some(&ca_p), Some(&cert_p), Some(&key_p), Some("dp.parapet"))
            .unwrap()
            .expect("TLS configured");
        assert!(tls.config.client_auth_cert_resolver.has_certs());
        assert_eq!(scheme(Some(&tls)), "https");
        let _client = push_client(Some(&tls));
        // Without a client certificate: server verification only.
        let tls = PushTls::from_files(Some(&ca_p), None, None, None)
            .unwrap()
            .unwrap();
        assert!(!tls.config.client_auth_cert_resolver.has_certs());
        assert!(
            PushTls::from_files(None, None, None, None)
                .unwrap()
                .is_none()
        );
        assert_eq!(scheme(None), "http");

        let err = |r: anyhow::Result<Option<PushTls>>| format!("{:#}", r.unwrap_err());
        let garbage = write("garbage.pem", "not a certificate\n");
        let missing = dir.path().join("missing.pem");
        assert!(
            err(PushTls::from_files(Some(&garbage), None, None, None))
                .contains("--dataplane-ca holds no certificate")
        );
        assert!(
            err(PushTls::from_files(Some(&missing), None, None, None))
                .contains("--dataplane-ca: cannot read")
        );
        assert!(
            err(PushTls::from_files(
                Some(&ca_p),
                Some(&garbage),
                Some(&key_p),
                None
            ))
            .contains("--client-cert holds no certificate")
        );
        assert!(
            err(PushTls::from_files(
                Some(&ca_p),
                Some(&cert_p),
                Some(&garbage),
                None
            ))
            .contains("--client-key holds no private key")
        );
        // A key that is not the certificate's.
        let (_, _, other_key) = pki();
        let other = write("other.key", &other_key);
        assert!(
            err(PushTls::from_files(
                Some(&ca_p),
                Some(&cert_p),
                Some(&other),
                None
            ))
            .contains("--client-key does not fit")
        );
        assert!(
            err(PushTls::from_files(Some(&ca_p), Some(&cert_p), None, None))
                .contains("go together")
        );
        assert!(
            err(PushTls::from_files(None, Some(&cert_p), Some(&key_p), None))
                .contains("need --dataplane-ca")
        );
        assert!(
            err(PushTls::from_files(
                Some(&ca_p),
                None,
                None,
                Some("not a name!")
            ))
            .contains("--dataplane-server-name")
        );
    }
}
