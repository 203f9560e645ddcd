//! Defences that must not be turned against the gateway: a slow client cannot eject a
//! healthy backend, an empty file cannot wipe the table, an idle HTTP/2 connection is not
//! kept, ALPN decides the protocol, and both upstream clients frame answers the same way.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use parapet_tests::{
    admin,
    backend::Backend,
    capture::{Capture, Reply},
    client::Client,
    pool_yaml, route_yaml, standalone, wait_for,
};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

/// Reads until the peer closes, for at most `limit`; what arrived, and whether it closed.
async fn read_to_close(s: &mut (impl AsyncReadExt + Unpin), limit: Duration) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    let mut chunk = [0u8; 4096];
    let until = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(until, s.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (out, true),
            Ok(Ok(n)) => out.extend_from_slice(&chunk[..n]),
            Err(_) => return (out, false),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_client_gets_408_and_cannot_eject_a_healthy_backend() {
    let b = Backend::start("healthy").await;
    let yaml = format!(
        "{}{}",
        pool_yaml(
            "p",
            &[b.port()],
            "  outlierDetection: {consecutiveGatewayErrors: 1, consecutive5xx: 1, baseEjectionTime: 60s}"
        ),
        route_yaml(
            "r",
            "['*']",
            "    - name: streamed
      matches: [{path: {type: PathPrefix, value: /streamed}}]
      backends: [{pool: p}]
      timeout: 1s
    - name: replayed
      backends: [{pool: p}]
      timeout: 1s
      retries: {attempts: 2}"
        )
    );
    for path in ["parapet", "hyper"] {
        let (dp, _d) = standalone(&yaml, &["--downstream-http1", path]).await;
        let c = Client::new();
        for target in ["/streamed", "/replayed"] {
            for _ in 0..3 {
                let mut s = TcpStream::connect(dp.proxy).await.unwrap();
                s.write_all(
                    format!(
                        "POST {target} HTTP/1.1\r\nHost: a.example\r\nContent-Length: 10\r\n\r\nx"
                    )
                    .as_bytes(),
                )
                .await
                .unwrap();
                // The other nine bytes never come: the route timeout passes.
                let (out, _) = read_to_close(&mut s, Duration::from_secs(5)).await;
                let out = String::from_utf8_lossy(&out);
                assert!(out.starts_with("HTTP/1.1 408 "), "{path} {target}: {out}");
            }
        }
        // The backend was never judged for the client's slowness.
        let ejected = admin::metric_sum(&c, dp.admin, "parapet_outlier_ejections_total", &[]).await;
        assert_eq!(ejected, 0.0, "{path}: the slow client ejected the backend");
        let r = c.get(dp.proxy, "a.example", "/streamed").await.unwrap();
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        assert_eq!(r.text(), "healthy");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_emptied_standalone_file_keeps_the_table_unless_it_says_so() {
    let b = Backend::start("b").await;
    let yaml = format!(
        "{}{}",
        pool_yaml("p", &[b.port()], ""),
        route_yaml("r", "['*']", "    - backends: [{pool: p}]")
    );
    let (dp, dir) = standalone(&yaml, &["--reload-interval", "100ms"]).await;
    let path = dir.path().join("config.yaml");
    let c = Client::new();
    assert_eq!(c.get(dp.proxy, "a.example", "/").await.unwrap().status, 200);
    for (i, empty) in ["", "# saved half-way\n", "---\n"].into_iter().enumerate() {
        std::fs::write(&path, empty).unwrap();
        wait_for(
            "the empty file to be refused",
            Duration::from_secs(10),
            || {
                let refused = dp
                    .logs()
                    .iter()
                    .filter(|l| l.contains("configuration refused"))
                    .count();
                async move { (refused > i).then_some(()) }
            },
        )
        .await;
        let r = c.get(dp.proxy, "a.example", "/").await.unwrap();
        assert_eq!(r.status, 200, "the table was wiped by {empty:?}");
    }
    // Said explicitly: the table empties.
    std::fs::write(&path, "# parapet: allowEmpty\n").unwrap();
    wait_for("the table to empty", Duration::from_secs(10), || {
        let c = c.clone();
        async move {
            let r = c.get(dp.proxy, "a.example", "/").await.ok()?;
            (r.status == 404).then_some(())
        }
    })
    .await;
}

/// The HTTP/2 connection preface and an empty SETTINGS frame.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_http2_connection_closes_after_the_header_read_timeout() {
    let b = Backend::start("b").await;
    let yaml = format!(
        "{}{}",
        pool_yaml("p", &[b.port()], ""),
        route_yaml("r", "['*']", "    - backends: [{pool: p}]")
    );
    for path in ["parapet", "hyper"] {
        let (dp, _d) = standalone(
            &yaml,
            &["--downstream-http1", path, "--header-read-timeout", "1s"],
        )
        .await;
        let mut s = TcpStream::connect(dp.proxy).await.unwrap();
        s.write_all(H2_PREFACE).await.unwrap();
        let started = Instant::now();
        let (_, closed) = read_to_close(&mut s, Duration::from_secs(8)).await;
        assert!(
            closed,
            "{path}: an idle h2c connection is still open after 8 s"
        );
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(900),
            "{path}: closed after {took:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alpn_decides_the_protocol() {
    let b = Backend::start("b").await;
    let dir = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["api.example".to_string()]).unwrap();
    let (cert_path, key_path) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    let yaml = format!(
        "{}{}",
        pool_yaml("p", &[b.port()], ""),
        route_yaml("r", "[api.example]", "    - backends: [{pool: p}]")
    );
    let (dp, _d) = standalone(
        &yaml,
        &[
            "--tls-cert",
            cert_path.to_str().unwrap(),
            "--tls-key",
            key_path.to_str().unwrap(),
        ],
    )
    .await;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from(cert.cert.der().to_vec()))
        .unwrap();
    let connect = |alpn: &'static [u8]| {
        let roots = roots.clone();
        async move {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth();
            cfg.alpn_protocols = vec![alpn.to_vec()];
            let tcp = TcpStream::connect(dp.proxy).await.unwrap();
            tokio_rustls::TlsConnector::from(Arc::new(cfg))
                .connect(ServerName::try_from("api.example").unwrap(), tcp)
                .await
                .expect("TLS handshake")
        }
    };
    // h2 agreed, then HTTP/1.1 bytes instead of the preface: a connection error, never an
    // HTTP/1.1 answer.
    let mut tls = connect(b"h2").await;
    tls.write_all(b"GET / HTTP/1.1\r\nHost: api.example\r\n\r\n")
        .await
        .unwrap();
    let (out, closed) = read_to_close(&mut tls, Duration::from_secs(5)).await;
    assert!(closed, "the connection stays open");
    assert!(
        !out.starts_with(b"HTTP/1.1"),
        "{}",
        String::from_utf8_lossy(&out)
    );
    // http/1.1 agreed, then the HTTP/2 preface: not served as HTTP/2.
    let mut tls = connect(b"http/1.1").await;
    tls.write_all(H2_PREFACE).await.unwrap();
    let (out, closed) = read_to_close(&mut tls, Duration::from_secs(5)).await;
    assert!(closed, "the connection stays open");
    // An HTTP/2 server would answer with its SETTINGS frame (type 4 at byte 3).
    assert!(
        !(out.len() >= 9 && out[3] == 4),
        "served as HTTP/2: {out:?}"
    );
    // Both still serve their own protocol.
    let mut tls = connect(b"http/1.1").await;
    tls.write_all(b"GET / HTTP/1.1\r\nHost: api.example\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let (out, _) = read_to_close(&mut tls, Duration::from_secs(5)).await;
    assert!(
        out.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_upstream_clients_frame_a_chunked_answer_with_a_length_by_its_chunks() {
    let capture = Capture::start(Arc::new(|_: &str| {
        Reply::Raw(
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
                .to_vec(),
        )
    }))
    .await;
    let yaml = format!(
        "{}{}",
        pool_yaml("p", &[capture.port()], ""),
        route_yaml("r", "['*']", "    - backends: [{pool: p}]")
    );
    for upstream in ["parapet", "hyper"] {
        let (dp, _d) = standalone(&yaml, &["--upstream-http1", upstream]).await;
        let mut s = TcpStream::connect(dp.proxy).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: a.example\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let (out, _) = read_to_close(&mut s, Duration::from_secs(5)).await;
        let out = String::from_utf8_lossy(&out).into_owned();
        assert!(out.starts_with("HTTP/1.1 200"), "{upstream}: {out}");
        assert!(
            !out.to_ascii_lowercase().contains("content-length: 3\r\n"),
            "{upstream}: {out}"
        );
        let body = out.split("\r\n\r\n").nth(1).unwrap_or("");
        // Whatever framing goes downstream, all eleven bytes arrive.
        assert!(
            body.contains("hello") && body.contains(" world"),
            "{upstream}: the body was cut short: {out}"
        );
    }
}
