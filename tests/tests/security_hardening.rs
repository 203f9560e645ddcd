//! Hardening: request smuggling payloads (a table of known CL/TE variants) refused, the
//! per-connection request limit, the Server header, and the snapshot channel's refusals
//! (no token, wrong token, oversized, wipe without allowEmpty).

use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use parapet_tests::{
    admin, backend::Backend, client::Client, dataplane::Dataplane, pool_yaml, route_yaml,
    standalone,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

fn config(port: u16) -> String {
    format!(
        "{}{}",
        pool_yaml("p", &[port], ""),
        route_yaml("r", "['*']", "    - backends: [{pool: p}]")
    )
}

/// Sends raw bytes and returns what the server answered before closing (bounded by 5 s).
async fn raw(to: std::net::SocketAddr, req: &[u8]) -> String {
    let mut s = TcpStream::connect(to).await.unwrap();
    s.write_all(req).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// Known CL/TE desync variants: each must be refused with 400 (or the connection closed)
/// and never reach the backend.
const SMUGGLING: &[(&str, &str)] = &[
    (
        "duplicate differing Content-Length",
        "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 8\r\n\r\nabcdefgh",
    ),
    (
        "comma-separated differing Content-Length",
        "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3, 8\r\n\r\nabcdefgh",
    ),
    (
        "Transfer-Encoding: chunked, identity",
        "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    ),
    (
        "Transfer-Encoding: identity only",
        "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: identity\r\n\r\nabc",
    ),
    (
        "obfuscated Transfer-Encoding value",
        "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    ),
    (
        "two Transfer-Encoding headers",
        "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    ),
    (
        "obs-fold header continuation",
        "GET / HTTP/1.1\r\nHost: x\r\nX-Folded: a\r\n b\r\n\r\n",
    ),
    (
        "obs-fold hiding Transfer-Encoding",
        "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nX: y\r\n Transfer-Encoding: chunked\r\n\r\nabc",
    ),
    (
        "space before colon",
        "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding : chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    ),
    (
        "invalid byte in a header name",
        "GET / HTTP/1.1\r\nHost: x\r\nX-B\x01d: 1\r\n\r\n",
    ),
    (
        "NUL in a header value",
        "GET / HTTP/1.1\r\nHost: x\r\nX-Bad: a\x00b\r\n\r\n",
    ),
    (
        "bare LF line endings with CL and TE",
        "POST / HTTP/1.1\nHost: x\nContent-Length: 3\nTransfer-Encoding: chunked\n\n0\n\n",
    ),
    (
        "negative Content-Length",
        "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
    ),
    (
        "Content-Length with a plus sign",
        "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: +3\r\n\r\nabc",
    ),
    (
        "chunk size with an invalid character",
        "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3g\r\nabc\r\n0\r\n\r\n",
    ),
    (
        "HTTP/1.0 with Transfer-Encoding",
        "POST / HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    ),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smuggling_payloads_are_refused() {
    let b = Backend::start("b").await;
    let (dp, _d) = standalone(&config(b.port()), &[]).await;
    let mut failures = Vec::new();
    for (name, payload) in SMUGGLING {
        let before = b.hits();
        let answer = raw(dp.proxy, payload.as_bytes()).await;
        let first = answer.lines().next().unwrap_or("").to_string();
        let refused = answer.is_empty() || first.starts_with("HTTP/1.1 400");
        let reached = b.hits() != before;
        if !refused || reached {
            failures.push(format!(
                "{name}: answered {first:?}, reached backend: {reached}"
            ));
        }
        // Nothing follows a refusal on the same connection.
        assert!(
            answer.matches("HTTP/1.1 ").count() <= 1,
            "{name}: a second response on the connection: {answer}"
        );
    }
    assert!(failures.is_empty(), "not refused:\n{}", failures.join("\n"));
    // A well-formed chunked request still passes.
    let ok = raw(
        dp.proxy,
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    )
    .await;
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
}

/// CL and TE together: hyper reads the body as chunked, drops the length, and closes the
/// connection after the answer, so a request hidden behind the chunked body is never read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_length_with_transfer_encoding_cannot_smuggle() {
    let b = Backend::start("b").await;
    let (dp, _d) = standalone(&config(b.port()), &[]).await;
    for head in [
        "Content-Length: 4\r\nTransfer-Encoding: chunked",
        "Transfer-Encoding: chunked\r\nContent-Length: 4",
    ] {
        let before = b.hits();
        let payload = format!(
            "POST /first HTTP/1.1\r\nHost: x\r\n{head}\r\n\r\n3\r\nabc\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
        );
        let answer = raw(dp.proxy, payload.as_bytes()).await;
        assert_eq!(answer.matches("HTTP/1.1 ").count(), 1, "{answer}");
        assert!(
            answer.to_ascii_lowercase().contains("connection: close"),
            "{answer}"
        );
        assert_eq!(
            b.hits(),
            before + 1,
            "only the first request reached the backend"
        );
        assert_eq!(b.last_uri().as_deref(), Some("/first"));
        let h = b.last_headers().unwrap();
        assert!(!h.contains_key("content-length") || h["content-length"] == "3");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_close_after_the_request_limit() {
    let b = Backend::start("b").await;
    let (dp, _d) = standalone(&config(b.port()), &["--max-requests-per-connection", "3"]).await;
    let mut s = TcpStream::connect(dp.proxy).await.unwrap();
    // Five pipelined requests: three answered, the third with `connection: close`.
    let one = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
    s.write_all(one.repeat(5).as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    let out = String::from_utf8_lossy(&out);
    assert_eq!(out.matches("HTTP/1.1 200").count(), 3, "{out}");
    assert!(out.to_ascii_lowercase().contains("connection: close"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_header_is_configurable_and_absent_by_default() {
    let b = Backend::start("b").await;
    let c = Client::new();
    let (dp, _d) = standalone(&config(b.port()), &[]).await;
    let r = c.get(dp.proxy, "x", "/").await.unwrap();
    assert!(!r.headers.contains_key("server"));
    let r = c
        .get(dp.proxy, "x", "/nowhere-but-still-routed")
        .await
        .unwrap();
    assert!(!r.headers.contains_key("server"));
    let (dp, _d2) = standalone(&config(b.port()), &["--server-header", "edge"]).await;
    let r = c.get(dp.proxy, "x", "/").await.unwrap();
    assert_eq!(r.headers["server"], "edge");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_pushes_without_token_oversized_or_wiping_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "s3cret").unwrap();
    let dp = Dataplane::start(&[
        "--snapshot-token-file",
        token.to_str().unwrap(),
        "--max-snapshot-bytes",
        "4096",
    ]);
    let c = Client::new();
    let snap = parapet_tests::snapshot(&config(1), 1);
    let cases: Vec<(&str, Option<&str>, Bytes, StatusCode)> = vec![
        (
            "no token",
            None,
            Bytes::from(serde_json::to_vec(&snap).unwrap()),
            StatusCode::UNAUTHORIZED,
        ),
        (
            "wrong token",
            Some("guess"),
            Bytes::from(serde_json::to_vec(&snap).unwrap()),
            StatusCode::UNAUTHORIZED,
        ),
        (
            "oversized",
            Some("s3cret"),
            Bytes::from(vec![b' '; 8192]),
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
        (
            "empty table without allowEmpty",
            Some("s3cret"),
            Bytes::from(
                serde_json::to_vec(&parapet_crds::snapshot::Snapshot::new(
                    2,
                    parapet_crds::snapshot::Table {
                        format: parapet_crds::snapshot::FORMAT_VERSION,
                        ..Default::default()
                    },
                ))
                .unwrap(),
            ),
            StatusCode::BAD_REQUEST,
        ),
    ];
    for (name, tok, body, want) in cases {
        let r = admin::push_raw(&c, dp.admin, tok, body).await;
        assert_eq!(r.status, want, "{name}: {}", r.text());
    }
    assert!(!admin::ready(&c, dp.admin).await, "nothing was applied");
    let r = admin::push(&c, dp.admin, Some("s3cret"), &snap).await;
    assert_eq!(r.status, StatusCode::OK);
}
