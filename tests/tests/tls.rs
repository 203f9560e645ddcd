//! TLS termination on the traffic listener: rustls, ALPN h2 and http/1.1.

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use parapet_tests::{
    admin, backend::Backend, client::Client, dataplane::Dataplane, pool_yaml, route_yaml, wait_for,
};
use rustls::pki_types::{CertificateDer, ServerName};

/// A data plane terminating TLS for `api.example` with a certificate of its own, serving
/// the standalone `config`.
struct TlsWorld {
    dp: Dataplane,
    cert: rcgen::CertifiedKey<rcgen::KeyPair>,
    _dir: tempfile::TempDir,
}

impl TlsWorld {
    async fn start(config: String) -> TlsWorld {
        let dir = tempfile::tempdir().unwrap();
        let cert = rcgen::generate_simple_self_signed(vec!["api.example".to_string()]).unwrap();
        let (cert_path, key_path, cfg_path) = (
            dir.path().join("tls.crt"),
            dir.path().join("tls.key"),
            dir.path().join("c.yaml"),
        );
        std::fs::write(&cert_path, cert.cert.pem()).unwrap();
        std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
        std::fs::write(&cfg_path, config).unwrap();
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
        TlsWorld {
            dp,
            cert,
            _dir: dir,
        }
    }

    /// A TLS connection to `api.example` offering `alpn`, which the data plane must choose.
    async fn connect(&self, alpn: &[u8]) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from(self.cert.cert.der().to_vec()))
            .unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        cfg.alpn_protocols = vec![alpn.to_vec()];
        let tcp = tokio::net::TcpStream::connect(self.dp.proxy).await.unwrap();
        let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
            .connect(ServerName::try_from("api.example").unwrap(), tcp)
            .await
            .expect("TLS handshake");
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(alpn));
        tls
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminates_tls_with_alpn_h2_and_http1() {
    let b = Backend::start("tls-backend").await;
    let w = TlsWorld::start(format!(
        "{}{}",
        pool_yaml("p", &[b.port()], ""),
        route_yaml("r", "[api.example]", "    - backends: [{pool: p}]")
    ))
    .await;
    for alpn in [&b"h2"[..], b"http/1.1"] {
        let tls = w.connect(alpn).await;
        let req = Request::get("https://api.example/hello")
            .header("host", "api.example")
            .body(Empty::<Bytes>::new())
            .unwrap();
        let resp = parapet_tests::client::send_on(tls, alpn == b"h2", req).await;
        assert_eq!(
            resp.status(),
            StatusCode::OK,
            "over {}",
            String::from_utf8_lossy(alpn)
        );
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"tls-backend");
    }
    // The upstream is told the client came over https.
    assert_eq!(b.last_headers().unwrap()["x-forwarded-proto"], "https");
}

fn tls_secret(name: &str, cert: &rcgen::CertifiedKey<rcgen::KeyPair>) -> String {
    let indent = |s: String| s.lines().map(|l| format!("    {l}\n")).collect::<String>();
    format!(
        "---\napiVersion: v1\nkind: Secret\nmetadata: {{name: {name}}}\ntype: kubernetes.io/tls\nstringData:\n  tls.crt: |\n{}  tls.key: |\n{}",
        indent(cert.cert.pem()),
        indent(cert.signing_key.serialize_pem())
    )
}

fn sni_config(
    port: u16,
    a: &rcgen::CertifiedKey<rcgen::KeyPair>,
    b: &rcgen::CertifiedKey<rcgen::KeyPair>,
) -> String {
    let route = |name: &str, host: &str, secret: &str| {
        format!(
            "---\napiVersion: parapet.dev/v1alpha1\nkind: ApiRoute\nmetadata: {{name: {name}}}\nspec:\n  hosts: [{host}]\n  tls: {{secretName: {secret}}}\n  rules:\n    - backends: [{{pool: p}}]\n"
        )
    };
    format!(
        "{}{}{}{}{}",
        tls_secret("a-cert", a),
        tls_secret("b-cert", b),
        pool_yaml("p", &[port], ""),
        route("ra", "a.example", "a-cert"),
        route("rb", "b.example", "b-cert"),
    )
}

/// Handshakes with `sni` and returns the leaf certificate served plus an HTTP/1.1 sender.
async fn handshake(
    to: std::net::SocketAddr,
    sni: &str,
) -> (
    Vec<u8>,
    hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
) {
    #[derive(Debug)]
    struct AcceptAny;
    impl rustls::client::danger::ServerCertVerifier for AcceptAny {
        fn verify_server_cert(
            &self,
            _: &CertificateDer<'_>,
            _: &[CertificateDer<'_>],
            _: &ServerName<'_>,
            _: &[u8],
            _: rustls::pki_types::UnixTime,
        ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            _: &[u8],
            _: &CertificateDer<'_>,
            _: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
        }
        fn verify_tls13_signature(
            &self,
            _: &[u8],
            _: &CertificateDer<'_>,
            _: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
        }
        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            rustls::crypto::ring::default_provider()
                .signature_verification_algorithms
                .supported_schemes()
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAny))
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = tokio::net::TcpStream::connect(to).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(ServerName::try_from(sni.to_string()).unwrap(), tcp)
        .await
        .expect("TLS handshake");
    let leaf = tls.get_ref().1.peer_certificates().unwrap()[0].to_vec();
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    (leaf, send)
}

async fn ok_over(send: &mut hyper::client::conn::http1::SendRequest<Empty<Bytes>>, host: &str) {
    let req = Request::get("/x")
        .header("host", host)
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let _ = resp.into_body().collect().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_by_sni_rotate_without_restart_or_dropping_connections() {
    let b = Backend::start("b").await;
    let gen_cert = |h: &str| rcgen::generate_simple_self_signed(vec![h.to_string()]).unwrap();
    let (a1, b1) = (gen_cert("a.example"), gen_cert("b.example"));
    let dir = tempfile::tempdir().unwrap();
    let cfg_path = dir.path().join("c.yaml");
    std::fs::write(&cfg_path, sni_config(b.port(), &a1, &b1)).unwrap();
    let dp = Dataplane::start(&[
        "--config",
        cfg_path.to_str().unwrap(),
        "--tls",
        "--reload-interval",
        "100ms",
    ]);
    let c = Client::new();
    wait_for("ready", Duration::from_secs(10), || {
        let c = c.clone();
        async move { admin::ready(&c, dp.admin).await.then_some(()) }
    })
    .await;

    let (leaf, mut old_conn) = handshake(dp.proxy, "a.example").await;
    assert_eq!(
        leaf,
        a1.cert.der().to_vec(),
        "a.example gets its own certificate"
    );
    ok_over(&mut old_conn, "a.example").await;
    let (leaf, mut conn_b) = handshake(dp.proxy, "b.example").await;
    assert_eq!(
        leaf,
        b1.cert.der().to_vec(),
        "b.example gets its own certificate"
    );
    ok_over(&mut conn_b, "b.example").await;

    // Rotate a.example's certificate in the file: the next handshake gets the new one.
    let a2 = gen_cert("a.example");
    std::fs::write(&cfg_path, sni_config(b.port(), &a2, &b1)).unwrap();
    wait_for(
        "the rotated certificate",
        Duration::from_secs(10),
        || async {
            let (leaf, _) = handshake(dp.proxy, "a.example").await;
            (leaf == a2.cert.der().to_vec()).then_some(())
        },
    )
    .await;
    // The connection opened before the rotation still serves.
    ok_over(&mut old_conn, "a.example").await;
}

/// Many HTTP/2 streams on one TLS connection, small answers and answers larger than what
/// the data plane holds back to send together: every answer arrives whole and in its own
/// stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_streams_answered_together_each_arrive_whole() {
    let small = Backend::start("small").await;
    small.set(parapet_tests::backend::Behaviour {
        count_in_body: true,
        ..Default::default()
    });
    let big = Backend::start("big").await;
    let large = Bytes::from(parapet_tests::pattern(150 * 1024));
    big.set(parapet_tests::backend::Behaviour {
        body: Some(large.clone()),
        ..Default::default()
    });
    let rules = "    - matches: [{path: {type: PathPrefix, value: /big}}]\n      backends: [{pool: big}]\n    - backends: [{pool: small}]";
    let w = TlsWorld::start(format!(
        "{}{}{}",
        pool_yaml("small", &[small.port()], ""),
        pool_yaml("big", &[big.port()], ""),
        route_yaml("r", "[api.example]", rules)
    ))
    .await;
    let tls = w.connect(b"h2").await;
    let (send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        TokioIo::new(tls),
    )
    .await
    .expect("HTTP/2 handshake");
    tokio::spawn(conn);

    let mut asks = tokio::task::JoinSet::new();
    for i in 0..60 {
        let mut send = send.clone();
        let path = if i % 4 == 0 { "/big" } else { "/small" };
        asks.spawn(async move {
            let req = Request::get(format!("https://api.example{path}"))
                .body(Empty::<Bytes>::new())
                .unwrap();
            let resp = send.send_request(req).await.expect("an HTTP/2 answer");
            assert_eq!(resp.status(), StatusCode::OK);
            (path, resp.into_body().collect().await.unwrap().to_bytes())
        });
    }
    let answers = tokio::time::timeout(Duration::from_secs(30), asks.join_all())
        .await
        .expect("every stream answered within 30 s");
    let mut small = 0;
    for (path, body) in answers {
        if path == "/big" {
            assert!(
                body == large,
                "a large answer arrived whole ({} bytes)",
                body.len()
            );
        } else {
            let text = String::from_utf8(body.to_vec()).unwrap();
            assert!(text.starts_with("small#"), "{text}");
            small += 1;
        }
    }
    assert_eq!(small, 45);
}
