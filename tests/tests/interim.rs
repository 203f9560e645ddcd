//! Interim (1xx) responses from the upstream reach an HTTP/1.1 client before the final
//! answer (RFC 9110 §15.2), through a plain route and through a cache miss; 100 Continue,
//! which each hop answers itself, does not.

use std::time::Duration;

use parapet_tests::{pool_yaml, route_yaml, standalone};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

/// What the origin writes for every request: two interim heads, then the final answer.
const ORIGIN_ANSWER: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n\
HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\nConnection: x-hop\r\nX-Hop: 1\r\n\r\n\
HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncache-control: max-age=60\r\n\r\nok";

/// An origin on 127.0.0.1 that answers each request head with `ORIGIN_ANSWER`.
async fn raw_origin() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let Ok(n) = s.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        buf.drain(..end + 4);
                        if s.write_all(ORIGIN_ANSWER).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    port
}

/// Sends one GET and reads until the final answer's 2-byte body has arrived.
async fn raw_get(to: std::net::SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect(to).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut got = Vec::new();
    let read = async {
        let mut chunk = [0u8; 4096];
        loop {
            let n = s.read(&mut chunk).await.unwrap();
            assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&got);
            if let Some(i) = text.find("HTTP/1.1 200")
                && text[i..].ends_with("\r\n\r\nok")
            {
                return;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("the answer within 10 s");
    String::from_utf8(got).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn early_hints_reach_the_client_before_the_answer() {
    let port = raw_origin().await;
    let yaml = format!(
        "{}{}---\napiVersion: parapet.dev/v1alpha1\nkind: CachePolicy\nmetadata: {{name: p}}\nspec: {{mode: Auto}}\n{}",
        pool_yaml("origin", &[port], ""),
        route_yaml(
            "plain",
            "['*']",
            "    - matches: [{path: {value: /plain}}]\n      backends: [{pool: origin}]\n    - matches: [{path: {value: /cached}}]\n      backends: [{pool: origin}]\n      cachePolicyRef: {name: p}"
        ),
        ""
    );
    let (dp, _d) = standalone(&yaml, &[]).await;
    for path in ["/plain", "/cached"] {
        let got = raw_get(dp.proxy, path).await;
        let hint = got
            .find("HTTP/1.1 103 Early Hints\r\n")
            .unwrap_or_else(|| panic!("{path}: no 103 relayed:\n{got}"));
        let fin = got.find("HTTP/1.1 200").unwrap();
        assert!(hint < fin, "{path}: the 103 comes first:\n{got}");
        let interim = &got[hint..fin];
        assert!(
            interim.contains("link: </style.css>; rel=preload\r\n"),
            "{path}: {interim}"
        );
        assert!(
            !interim.to_ascii_lowercase().contains("x-hop"),
            "{path}: hop-by-hop fields stay behind: {interim}"
        );
        assert!(
            !got.contains("100 Continue"),
            "{path}: 100 is not relayed:\n{got}"
        );
    }
    // A hit has no upstream exchange, so no interim response.
    let hit = raw_get(dp.proxy, "/cached").await;
    assert!(hit.starts_with("HTTP/1.1 200"), "{hit}");
    assert!(hit.to_ascii_lowercase().contains("x-cache: hit"), "{hit}");
}
