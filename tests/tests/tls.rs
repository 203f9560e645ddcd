//! TLS termination on the traffic listener: rustls, ALPN h2 and http/1.1.

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use parapet_tests::{
    admin, backend::Backend, client::Client, dataplane::Dataplane, pool_yaml, route_yaml, wait_for,
};
use rustls::pki_types::{CertificateDer, ServerName};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminates_tls_with_alpn_h2_and_http1() {
    let b = Backend::start("tls-backend").await;
    let dir = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["api.example".to_string()]).unwrap();
    let (cert_path, key_path, cfg_path) = (
        dir.path().join("tls.crt"),
        dir.path().join("tls.key"),
        dir.path().join("c.yaml"),
    );
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    std::fs::write(
        &cfg_path,
        format!(
            "{}{}",
            pool_yaml("p", &[b.port()], ""),
            route_yaml("r", "[api.example]", "    - backends: [{pool: p}]")
        ),
    )
    .unwrap();
    let dp = Dataplane::start(&[
        "--config",
        cfg_path.to_str().unwrap(),
        "--tls-cert",
        cert_path.to_str().unwrap(),
        "--tls-key",
        key_path.to_str().unwrap(),
    ]);
    let c = Client::new();
    wait_for("ready", Duration::from_secs(10), || {
        let c = c.clone();
        async move { admin::ready(&c, dp.admin).await.then_some(()) }
    })
    .await;

    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from(cert.cert.der().to_vec()))
        .unwrap();
    for alpn in [b"h2".to_vec(), b"http/1.1".to_vec()] {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots.clone())
            .with_no_client_auth();
        cfg.alpn_protocols = vec![alpn.clone()];
        let tcp = tokio::net::TcpStream::connect(dp.proxy).await.unwrap();
        let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
            .connect(ServerName::try_from("api.example").unwrap(), tcp)
            .await
            .expect("TLS handshake");
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(alpn.as_slice()));
        let req = Request::get("https://api.example/hello")
            .header("host", "api.example")
            .body(Empty::<Bytes>::new())
            .unwrap();
        let resp = if alpn == b"h2" {
            let (mut send, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                    .await
                    .unwrap();
            tokio::spawn(conn);
            send.send_request(req).await.unwrap()
        } else {
            let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
                .await
                .unwrap();
            tokio::spawn(conn);
            send.send_request(req).await.unwrap()
        };
        assert_eq!(
            resp.status(),
            StatusCode::OK,
            "over {}",
            String::from_utf8_lossy(&alpn)
        );
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"tls-backend");
    }
    // The upstream is told the client came over https.
    assert_eq!(b.last_headers().unwrap()["x-forwarded-proto"], "https");
}
