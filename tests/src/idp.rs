//! A small identity provider for JWT tests: signing keys (ECDSA P-256 and Ed25519, made
//! with rcgen), tokens signed with them (`jsonwebtoken`), and its JWKS document served over
//! HTTPS on 127.0.0.1 with a test CA. The test decides which keys are published, whether
//! the provider answers at all, and what `Cache-Control` says, and can count the fetches.

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{SystemTime, UNIX_EPOCH},
};

use base64::Engine;
use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

use crate::pki::Pki;

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// One signing key and its public half as a JWK.
pub struct SigningKey {
    pub kid: String,
    pub alg: Algorithm,
    encoding: EncodingKey,
    pub jwk: Value,
}

impl SigningKey {
    /// An ES256 key (P-256).
    pub fn es256(kid: &str) -> Self {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("P-256");
        let raw = pair.public_key_raw();
        // Uncompressed point: 0x04, x, y.
        let (x, y) = raw[1..].split_at(32);
        Self {
            kid: kid.to_string(),
            alg: Algorithm::ES256,
            encoding: EncodingKey::from_ec_der(&pair.serialize_der()),
            jwk: json!({"kty": "EC", "crv": "P-256", "kid": kid, "use": "sig", "alg": "ES256",
                        "x": b64(x), "y": b64(y)}),
        }
    }

    /// An EdDSA key (Ed25519).
    pub fn ed25519(kid: &str) -> Self {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).expect("Ed25519");
        Self {
            kid: kid.to_string(),
            alg: Algorithm::EdDSA,
            encoding: EncodingKey::from_ed_der(&pair.serialize_der()),
            jwk: json!({"kty": "OKP", "crv": "Ed25519", "kid": kid, "use": "sig", "alg": "EdDSA",
                        "x": b64(pair.public_key_raw())}),
        }
    }

    /// A token with these claims, signed with this key and naming its `kid`.
    pub fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(self.alg);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.encoding).expect("sign")
    }
}

/// Seconds since the epoch, for `exp`, `nbf` and `iat`.
pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs() as i64
}

/// A JWKS document of these keys.
pub fn jwks(keys: &[&SigningKey]) -> Value {
    json!({"keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>()})
}

/// The provider's JWKS endpoint: `https://127.0.0.1:PORT/jwks`, certificate from `pki`.
pub struct JwksServer {
    pub addr: SocketAddr,
    pub pki: Pki,
    published: Arc<Mutex<Value>>,
    cache_control: Arc<Mutex<Option<String>>>,
    up: Arc<AtomicBool>,
    fetches: Arc<AtomicUsize>,
    /// Connections and requests, answered or not.
    attempts: Arc<AtomicUsize>,
}

impl JwksServer {
    pub async fn start(published: Value) -> JwksServer {
        let pki = Pki::new("idp-ca");
        let (cert, key) = pki.leaf(&["127.0.0.1", "localhost"]);
        let certs = rustls_pemfile_certs(&cert);
        let key = rustls::pki_types::PrivateKeyDer::try_from(pem_der(&key)).expect("a key");
        let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("server certificate");
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the JWKS server");
        let addr = listener.local_addr().expect("its address");
        let server = JwksServer {
            addr,
            pki,
            published: Arc::new(Mutex::new(published)),
            cache_control: Arc::new(Mutex::new(None)),
            up: Arc::new(AtomicBool::new(true)),
            fetches: Arc::new(AtomicUsize::new(0)),
            attempts: Arc::new(AtomicUsize::new(0)),
        };
        let (published, cache, up, fetches, attempts) = (
            server.published.clone(),
            server.cache_control.clone(),
            server.up.clone(),
            server.fetches.clone(),
            server.attempts.clone(),
        );
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                attempts.fetch_add(1, Ordering::SeqCst);
                if !up.load(Ordering::SeqCst) {
                    // Down: the connection is dropped before the handshake.
                    drop(stream);
                    continue;
                }
                let (acceptor, published, cache, fetches, up, attempts) = (
                    acceptor.clone(),
                    published.clone(),
                    cache.clone(),
                    fetches.clone(),
                    up.clone(),
                    attempts.clone(),
                );
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(stream).await else {
                        return;
                    };
                    let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let (published, cache, fetches, up, attempts) = (
                            published.clone(),
                            cache.clone(),
                            fetches.clone(),
                            up.clone(),
                            attempts.clone(),
                        );
                        async move {
                            attempts.fetch_add(1, Ordering::SeqCst);
                            let mut r = Response::builder();
                            if !up.load(Ordering::SeqCst) {
                                // Down, on a connection opened while it was up.
                                return r
                                    .status(StatusCode::SERVICE_UNAVAILABLE)
                                    .body(Full::new(Bytes::new()));
                            }
                            if req.uri().path() != "/jwks" {
                                return r
                                    .status(StatusCode::NOT_FOUND)
                                    .body(Full::new(Bytes::new()));
                            }
                            fetches.fetch_add(1, Ordering::SeqCst);
                            let body = published.lock().expect("lock").to_string();
                            r = r.header("content-type", "application/json");
                            if let Some(cc) = cache.lock().expect("lock").clone() {
                                r = r.header("cache-control", cc);
                            }
                            r.body(Full::new(Bytes::from(body)))
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        server
    }

    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}/jwks", self.addr.port())
    }

    /// Publishes another key set from the next fetch on.
    pub fn publish(&self, doc: Value) {
        *self.published.lock().expect("lock") = doc;
    }

    pub fn set_cache_control(&self, value: Option<&str>) {
        *self.cache_control.lock().expect("lock") = value.map(str::to_string);
    }

    /// Down: connections are closed unanswered.
    pub fn set_up(&self, up: bool) {
        self.up.store(up, Ordering::SeqCst);
    }

    /// Key sets served.
    pub fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }

    /// Connections and requests seen, served or refused.
    pub fn attempts(&self) -> usize {
        self.attempts.load(Ordering::SeqCst)
    }
}

fn pem_der(pem: &str) -> Vec<u8> {
    let body: String = pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect::<Vec<_>>()
        .concat();
    base64::engine::general_purpose::STANDARD
        .decode(body)
        .expect("PEM body")
}

fn rustls_pemfile_certs(pem: &str) -> Vec<rustls::pki_types::CertificateDer<'static>> {
    vec![rustls::pki_types::CertificateDer::from(pem_der(pem))]
}
