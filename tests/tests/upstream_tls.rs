//! TLS to upstreams (the pool's `tls`): roots from the pool's CA, a client certificate for
//! backends that require one (mTLS), SNI from `tls.sni` or the endpoint address, and
//! unusable PEM refused with the table.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use parapet_crds::snapshot::{CertificatePair, Snapshot, UpstreamTls};
use parapet_tests::pki::Pki;
use parapet_tests::{admin, client::Client, dataplane::Dataplane, pool_yaml, route_yaml, wait_for};
use rcgen::KeyPair;
use rustls::{
    RootCertStore,
    pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer},
    server::WebPkiClientVerifier,
};

const TOKEN: &str = "t0ken";

fn der_of(pem: &str) -> CertificateDer<'static> {
    rustls_pki_pem(pem).remove(0)
}

fn rustls_pki_pem(pem: &str) -> Vec<CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .unwrap()
}

/// An HTTPS backend on 127.0.0.1 that requires a client certificate signed by `pki`'s CA,
/// and records the SNI of each accepted connection.
struct TlsBackend {
    addr: SocketAddr,
    sni: Arc<Mutex<Vec<Option<String>>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TlsBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn tls_backend(pki: &Pki) -> TlsBackend {
    let (cert_pem, key_pem) = pki.leaf(&["backend.internal", "127.0.0.1"]);
    let mut client_roots = RootCertStore::empty();
    client_roots.add(der_of(&pki.ca_pem)).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(client_roots), provider.clone())
            .build()
            .unwrap();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
        KeyPair::from_pem(&key_pem).unwrap().serialize_der(),
    ));
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![der_of(&cert_pem)], key)
        .unwrap();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let sni = Arc::new(Mutex::new(Vec::new()));
    let seen = sni.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            let seen = seen.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let (_, conn) = tls.get_ref();
                assert!(conn.peer_certificates().is_some_and(|c| !c.is_empty()));
                seen.lock()
                    .unwrap()
                    .push(conn.server_name().map(str::to_string));
                let svc = service_fn(|_req| async {
                    Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from(
                        "over mTLS",
                    ))))
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    TlsBackend { addr, sni, task }
}

fn table(port: u16, tls: UpstreamTls, version: u64) -> Snapshot {
    table_with(port, tls, version, "")
}

fn table_with(port: u16, tls: UpstreamTls, version: u64, extra: &str) -> Snapshot {
    let yaml = format!(
        "{}{}",
        pool_yaml("secure", &[port], extra),
        route_yaml("r", "['*']", "    - backends: [{pool: secure}]")
    );
    let mut snap = parapet_tests::snapshot(&yaml, version);
    snap.table.clusters[0].tls = Some(tls);
    Snapshot::new(version, snap.table)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_mtls_with_the_pools_ca_client_certificate_and_sni() {
    let pki = Pki::new("parapet test CA");
    let backend = tls_backend(&pki).await;
    let (client_cert, client_key) = pki.leaf(&["gateway.internal"]);
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, TOKEN).unwrap();
    let dp = Dataplane::start(&["--snapshot-token-file", token.to_str().unwrap()]);
    let c = Client::new();
    let port = backend.addr.port();
    let good = UpstreamTls {
        sni: Some("backend.internal".into()),
        ca_pem: Some(pki.ca_pem.clone()),
        client_certificate: Some(CertificatePair {
            cert_pem: client_cert.clone(),
            key_pem: client_key.clone(),
        }),
    };
    let mut version = 0;
    let mut push = |tls: UpstreamTls| {
        version += 1;
        let snap = table(port, tls, version);
        let c = c.clone();
        let admin = dp.admin;
        async move { admin::push(&c, admin, Some(TOKEN), &snap).await }
    };

    // With the client certificate: the backend answers, and saw the configured SNI.
    let r = push(good.clone()).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let r = c.get(dp.proxy, "api.example", "/").await.unwrap();
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.text(), "over mTLS");
    assert_eq!(
        backend.sni.lock().unwrap().last().cloned(),
        Some(Some("backend.internal".to_string()))
    );

    // Without `sni`: the endpoint address (an IP: no SNI sent; the IP SAN is verified).
    let r = push(UpstreamTls {
        sni: None,
        ..good.clone()
    })
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let r = c.get(dp.proxy, "api.example", "/").await.unwrap();
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(backend.sni.lock().unwrap().last().cloned(), Some(None));

    // Without the client certificate: the backend refuses the handshake.
    let r = push(UpstreamTls {
        client_certificate: None,
        ..good.clone()
    })
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let r = c.get(dp.proxy, "api.example", "/").await.unwrap();
    assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{}", r.text());

    // A CA that did not sign the backend's certificate: the gateway refuses it.
    let other = Pki::new("another CA");
    let r = push(UpstreamTls {
        ca_pem: Some(other.ca_pem.clone()),
        ..good.clone()
    })
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let r = c.get(dp.proxy, "api.example", "/").await.unwrap();
    assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{}", r.text());

    // Unusable PEM is refused with the table, with a reason; the table in force stays.
    for bad in [
        UpstreamTls {
            ca_pem: Some("not a certificate".into()),
            ..good.clone()
        },
        UpstreamTls {
            client_certificate: Some(CertificatePair {
                cert_pem: client_cert.clone(),
                key_pem: "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n".into(),
            }),
            ..good.clone()
        },
        UpstreamTls {
            sni: Some("not a name!".into()),
            ..good.clone()
        },
    ] {
        let r = push(bad).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());
        assert!(r.text().contains("pool"), "{}", r.text());
    }
    assert!(dp.logs().iter().all(|l| !l.contains("panicked")));
    let r = c.get(dp.proxy, "api.example", "/").await.unwrap();
    assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{}", r.text());

    // Back to good settings.
    let r = push(good).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let r = c.get(dp.proxy, "api.example", "/").await.unwrap();
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_health_checks_of_a_tls_pool_use_its_tls_settings() {
    let pki = Pki::new("parapet test CA");
    let backend = tls_backend(&pki).await;
    let (client_cert, client_key) = pki.leaf(&["gateway.internal"]);
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, TOKEN).unwrap();
    let dp = Dataplane::start(&["--snapshot-token-file", token.to_str().unwrap()]);
    let c = Client::new();
    let check = "  healthCheck: {interval: 100ms, timeout: 500ms, unhealthyThreshold: 1, healthyThreshold: 1}";
    let good = UpstreamTls {
        sni: Some("backend.internal".into()),
        ca_pem: Some(pki.ca_pem.clone()),
        client_certificate: Some(CertificatePair {
            cert_pem: client_cert,
            key_pem: client_key,
        }),
    };
    let count = |reason: &'static str| {
        let c = c.clone();
        let admin = dp.admin;
        async move {
            let label = format!("reason=\"{reason}\"");
            admin::metric_sum(&c, admin, "parapet_health_checks_total", &[&label]).await
        }
    };
    let snap = table_with(backend.addr.port(), good.clone(), 1, check);
    let r = admin::push(&c, dp.admin, Some(TOKEN), &snap).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    // The backend only speaks mTLS: a passing check went over TLS with the certificate.
    wait_for(
        "a passing TLS health check",
        Duration::from_secs(10),
        || async { (count("pass").await >= 2.0).then_some(()) },
    )
    .await;
    assert_eq!(count("fail").await, 0.0);
    assert!(
        backend
            .sni
            .lock()
            .unwrap()
            .contains(&Some("backend.internal".into()))
    );

    // Without the client certificate the checks fail.
    let tls = UpstreamTls {
        client_certificate: None,
        ..good
    };
    let snap = table_with(backend.addr.port(), tls, 2, check);
    let r = admin::push(&c, dp.admin, Some(TOKEN), &snap).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    wait_for(
        "a failing health check",
        Duration::from_secs(10),
        || async { (count("fail").await >= 1.0).then_some(()) },
    )
    .await;
}
