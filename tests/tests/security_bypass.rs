//! Requests that try to get past routing, API keys and the gateway's own headers: every
//! one sent as raw bytes, through both downstream paths (Parapet's HTTP/1.1 codec and
//! hyper's server), to a capture backend that records what reached it.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use parapet_tests::{
    capture::{self, Capture, Reply},
    dataplane::Dataplane,
    pool_yaml, route_yaml, standalone,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

const KEY: &str = "alice-5f1c0d2e";
const SECRET: &str = "---\napiVersion: v1\nkind: Secret\nmetadata: {name: keys}\nstringData:\n  alice: alice-5f1c0d2e\n";

/// `keyed.example` needs an API key, `public.example` does not; both go to `port`.
/// `ws.example` allows WebSocket (the default) and `plain.example` allows no upgrade, both
/// to `ws_port`.
fn config(port: u16, ws_port: u16) -> String {
    format!(
        "{SECRET}{}{}{}{}{}{}",
        pool_yaml("p", &[port], ""),
        pool_yaml("ws", &[ws_port], ""),
        route_yaml(
            "keyed",
            "[keyed.example]",
            "    - backends: [{pool: p}]\n      auth: {apiKeys: {secretRefs: [{name: keys}]}}"
        ),
        route_yaml("public", "[public.example]", "    - backends: [{pool: p}]"),
        route_yaml("ws", "[ws.example]", "    - backends: [{pool: ws}]"),
        route_yaml(
            "plain",
            "[plain.example]",
            "    - backends: [{pool: ws}]\n      upgrades: []"
        ),
    )
}

/// The two downstream paths every case goes through.
const PATHS: [&str; 2] = ["parapet", "hyper"];

struct Setup {
    capture: Capture,
    ws: Capture,
    planes: Vec<(Dataplane, tempfile::TempDir)>,
}

impl Setup {
    async fn start(ws: capture::Answer, extra: &[&str]) -> Setup {
        let capture = Capture::ok().await;
        let ws = Capture::start(ws).await;
        let yaml = config(capture.port(), ws.port());
        let mut planes = Vec::new();
        for path in PATHS {
            let mut args = vec!["--downstream-http1", path];
            args.extend_from_slice(extra);
            planes.push(standalone(&yaml, &args).await);
        }
        Setup {
            capture,
            ws,
            planes,
        }
    }

    fn proxies(&self) -> impl Iterator<Item = (&'static str, SocketAddr)> + '_ {
        PATHS
            .iter()
            .zip(&self.planes)
            .map(|(p, (dp, _))| (*p, dp.proxy))
    }
}

/// Answers a WebSocket upgrade with 101 and echoes; everything else 200.
fn ws_backend() -> capture::Answer {
    Arc::new(|head: &str| {
        if capture::values(head, "upgrade")
            .iter()
            .any(|v| v.eq_ignore_ascii_case("websocket"))
        {
            Reply::SwitchAndEcho(
                b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n"
                    .to_vec(),
            )
        } else {
            capture::ok()
        }
    })
}

/// A raw client connection.
struct Raw {
    s: TcpStream,
    buf: Vec<u8>,
}

/// One response as read off the wire (its head and body are shown when a test fails).
#[derive(Debug)]
struct Resp {
    status: u16,
    #[allow(dead_code)]
    head: String,
    #[allow(dead_code)]
    body: Vec<u8>,
}

impl Raw {
    async fn connect(to: SocketAddr) -> Raw {
        Raw {
            s: TcpStream::connect(to).await.expect("connect to the proxy"),
            buf: Vec::new(),
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).await.expect("send");
    }

    /// Reads more bytes; false at the end of the stream or after 5 s.
    async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 8192];
        match tokio::time::timeout(Duration::from_secs(5), self.s.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
            _ => false,
        }
    }

    /// The next response (by `Content-Length` or chunked framing), `None` if the
    /// connection ends (or stalls for 5 s) first.
    async fn response(&mut self) -> Option<Resp> {
        let end = loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            if !self.fill().await {
                return None;
            }
        };
        let head = String::from_utf8_lossy(&self.buf[..end]).into_owned();
        let status = head.get(9..12)?.parse().ok()?;
        self.buf.drain(..end);
        let body = if status == 101 {
            Vec::new()
        } else if capture::values(&head, "transfer-encoding")
            .iter()
            .any(|v| v.eq_ignore_ascii_case("chunked"))
        {
            let mut body = Vec::new();
            loop {
                let line = loop {
                    if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                        break i;
                    }
                    if !self.fill().await {
                        return None;
                    }
                };
                let size =
                    usize::from_str_radix(String::from_utf8_lossy(&self.buf[..line]).trim(), 16)
                        .ok()?;
                while self.buf.len() < line + 2 + size + 2 {
                    if !self.fill().await {
                        return None;
                    }
                }
                body.extend_from_slice(&self.buf[line + 2..line + 2 + size]);
                self.buf.drain(..line + 2 + size + 2);
                if size == 0 {
                    break body;
                }
            }
        } else {
            let n: usize = capture::values(&head, "content-length")
                .first()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            while self.buf.len() < n {
                if !self.fill().await {
                    return None;
                }
            }
            self.buf.drain(..n).collect()
        };
        Some(Resp { status, head, body })
    }

    /// Whether the connection is closed (within 5 s) with nothing more sent.
    async fn closed(&mut self) -> bool {
        let before = self.buf.len();
        while self.fill().await {}
        self.buf.len() == before
    }
}

async fn one(to: SocketAddr, req: &str) -> Option<Resp> {
    let mut c = Raw::connect(to).await;
    c.send(req.as_bytes()).await;
    c.response().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_authority_the_router_reads_is_the_one_the_backend_gets() {
    let s = Setup::start(ws_backend(), &[]).await;
    for (path, proxy) in s.proxies() {
        // Absolute form: routed by the URI's authority, and the backend is told that host,
        // not the Host field's.
        let r = one(
            proxy,
            "GET http://public.example/x HTTP/1.1\r\nHost: keyed.example\r\n\r\n",
        )
        .await
        .unwrap();
        assert_eq!(r.status, 200, "{path}: {r:?}");
        assert_eq!(s.capture.last_values("host"), ["public.example"], "{path}");
        // The other way round the keyed route's key is asked for.
        let before = s.capture.heads().len();
        let r = one(
            proxy,
            "GET http://keyed.example/x HTTP/1.1\r\nHost: public.example\r\n\r\n",
        )
        .await
        .unwrap();
        assert_eq!(r.status, 401, "{path}: {r:?}");
        let r = one(
            proxy,
            &format!(
                "GET http://keyed.example/x HTTP/1.1\r\nHost: public.example\r\nx-api-key: {KEY}\r\n\r\n"
            ),
        )
        .await
        .unwrap();
        assert_eq!(r.status, 200, "{path}: {r:?}");
        assert_eq!(s.capture.heads().len(), before + 1, "{path}");
        assert_eq!(s.capture.last_values("host"), ["keyed.example"], "{path}");

        // Heads with no single valid authority never reach the backend.
        let before = s.capture.heads().len();
        for (what, req, status) in [
            ("no Host", "GET /x HTTP/1.1\r\n\r\n", 400),
            (
                "two Host fields",
                "GET /x HTTP/1.1\r\nHost: public.example\r\nHost: keyed.example\r\n\r\n",
                400,
            ),
            (
                "the same Host twice",
                "GET /x HTTP/1.1\r\nHost: public.example\r\nHost: public.example\r\n\r\n",
                400,
            ),
            (
                "Host with user info",
                "GET /x HTTP/1.1\r\nHost: keyed.example@public.example\r\n\r\n",
                400,
            ),
            (
                "Host with a space",
                "GET /x HTTP/1.1\r\nHost: public.example keyed.example\r\n\r\n",
                400,
            ),
            (
                "authority form on a GET",
                "GET public.example:80 HTTP/1.1\r\nHost: public.example\r\n\r\n",
                400,
            ),
            (
                "CONNECT",
                "CONNECT keyed.example:443 HTTP/1.1\r\nHost: keyed.example:443\r\n\r\n",
                405,
            ),
            (
                "Transfer-Encoding: chunked twice",
                "POST /x HTTP/1.1\r\nHost: public.example\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
                400,
            ),
            (
                "a dot segment past the prefix",
                "GET /public/../admin HTTP/1.1\r\nHost: public.example\r\n\r\n",
                400,
            ),
            (
                "an encoded dot segment",
                "GET /a/%2e%2e/admin HTTP/1.1\r\nHost: public.example\r\n\r\n",
                400,
            ),
        ] {
            let mut c = Raw::connect(proxy).await;
            c.send(req.as_bytes()).await;
            // hyper refuses some of these itself, by closing or with its own 400.
            match c.response().await {
                Some(r) => {
                    assert_eq!(r.status, status, "{path}: {what}: {r:?}");
                    assert!(
                        c.closed().await,
                        "{path}: {what}: the connection stays open"
                    );
                }
                None => assert!(status == 400, "{path}: {what}: closed without an answer"),
            }
        }
        assert_eq!(
            s.capture.heads().len(),
            before,
            "{path}: a refused head reached the backend"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2c_upgrade_is_never_forwarded() {
    let s = Setup::start(ws_backend(), &[]).await;
    for (path, proxy) in s.proxies() {
        for req in [
            "GET /x HTTP/1.1\r\nHost: public.example\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n",
            "GET /x HTTP/1.1\r\nHost: public.example\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n",
            "POST /x HTTP/1.1\r\nHost: public.example\r\nContent-Length: 3\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\nabc",
            // WebSocket and h2c at once, to a route that allows WebSocket.
            "GET /x HTTP/1.1\r\nHost: ws.example\r\nConnection: Upgrade\r\nUpgrade: h2c, websocket\r\n\r\n",
        ] {
            let mut c = Raw::connect(proxy).await;
            c.send(req.as_bytes()).await;
            let r = c.response().await.unwrap();
            assert_eq!(r.status, 200, "{path}: {req:?}: {r:?}");
            let head = s
                .capture
                .heads()
                .into_iter()
                .chain(s.ws.heads())
                .find(|h| h.contains("Upgrade") || h.to_ascii_lowercase().contains("upgrade"));
            assert!(
                head.is_none(),
                "{path}: an upgrade reached a backend: {head:?}"
            );
            // The connection is still HTTP/1.1, routed request by request.
            c.send(b"GET /y HTTP/1.1\r\nHost: keyed.example\r\n\r\n")
                .await;
            let r = c.response().await.unwrap();
            assert_eq!(
                r.status, 401,
                "{path}: the next request was not routed: {r:?}"
            );
        }
        let raw = String::from_utf8_lossy(&s.capture.raw()).to_ascii_lowercase();
        assert!(!raw.contains("http2-settings"), "{path}: {raw}");
        assert!(!raw.contains("pri * http/2.0"), "{path}: {raw}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrades_open_only_as_the_rule_allows_and_the_backend_answers() {
    let s = Setup::start(ws_backend(), &[]).await;
    let ws = "GET /chat HTTP/1.1\r\nHost: ws.example\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
    for (path, proxy) in s.proxies() {
        // Allowed (the default): the tunnel opens and carries bytes both ways.
        let mut c = Raw::connect(proxy).await;
        c.send(ws.as_bytes()).await;
        let r = c.response().await.unwrap();
        assert_eq!(r.status, 101, "{path}: {r:?}");
        c.send(b"ping over the tunnel").await;
        while !c.buf.ends_with(b"ping over the tunnel") {
            assert!(c.fill().await, "{path}: no echo through the tunnel");
        }
        // A rule that allows none: an ordinary request, its Upgrade dropped.
        let plain = ws.replace("ws.example", "plain.example");
        let r = one(proxy, &plain).await.unwrap();
        assert_eq!(r.status, 200, "{path}: {r:?}");
        assert!(s.ws.last_values("upgrade").is_empty(), "{path}");
        assert!(
            s.ws.last_values("connection")
                .iter()
                .all(|v| !v.to_ascii_lowercase().contains("upgrade")),
            "{path}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_101_the_request_did_not_ask_for_is_a_502() {
    // A backend that switches protocols whatever it is asked, and to h2c.
    let s = Setup::start(
        Arc::new(|_: &str| {
            Reply::SwitchAndEcho(
                b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: h2c\r\n\r\n"
                    .to_vec(),
            )
        }),
        &[],
    )
    .await;
    for upstream in ["parapet", "hyper"] {
        let capture = Capture::ok().await;
        let yaml = config(capture.port(), s.ws.port());
        let (dp, _d) = standalone(&yaml, &["--upstream-http1", upstream]).await;
        for req in [
            "GET /x HTTP/1.1\r\nHost: ws.example\r\n\r\n",
            // Asked for WebSocket, answered h2c.
            "GET /x HTTP/1.1\r\nHost: ws.example\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
        ] {
            let r = one(dp.proxy, req).await.unwrap();
            assert_eq!(r.status, 502, "upstream client {upstream}: {req:?}: {r:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_headers_cannot_speak_for_the_gateway() {
    let s = Setup::start(ws_backend(), &[]).await;
    for (path, proxy) in s.proxies() {
        let r = one(
            proxy,
            "GET /x HTTP/1.1\r\nHost: public.example\r\nConnection: X-Request-Id, X-Forwarded-For, Via, Host\r\nX-Request-Id: abc\r\nX-Forwarded-For: 10.6.6.6\r\nX-Forwarded-Host: keyed.example\r\nX-Forwarded-Proto: https\r\nForwarded: for=10.6.6.6;host=keyed.example\r\n\r\n",
        )
        .await
        .unwrap();
        assert_eq!(r.status, 200, "{path}: {r:?}");
        assert_eq!(s.capture.last_values("x-request-id"), ["abc"], "{path}");
        assert_eq!(s.capture.last_values("host"), ["public.example"], "{path}");
        assert_eq!(
            s.capture.last_values("x-forwarded-for"),
            ["127.0.0.1"],
            "{path}"
        );
        assert_eq!(
            s.capture.last_values("x-forwarded-host"),
            ["public.example"],
            "{path}"
        );
        assert_eq!(
            s.capture.last_values("x-forwarded-proto"),
            ["http"],
            "{path}"
        );
        assert_eq!(
            s.capture.last_values("forwarded"),
            ["for=127.0.0.1;proto=http;host=public.example"],
            "{path}"
        );
        assert_eq!(s.capture.last_values("via"), ["1.1 parapet"], "{path}");
    }
    // From a trusted proxy the chain is kept and extended.
    let (dp, _d) = standalone(
        &config(s.capture.port(), s.ws.port()),
        &["--trusted-proxies", "127.0.0.0/8"],
    )
    .await;
    let r = one(
        dp.proxy,
        "GET /x HTTP/1.1\r\nHost: public.example\r\nX-Forwarded-For: 203.0.113.7\r\nX-Forwarded-Host: www.bank.example\r\nX-Forwarded-Proto: https\r\n\r\n",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        s.capture.last_values("x-forwarded-for"),
        ["203.0.113.7, 127.0.0.1"]
    );
    assert_eq!(
        s.capture.last_values("x-forwarded-host"),
        ["www.bank.example"]
    );
    assert_eq!(s.capture.last_values("x-forwarded-proto"), ["https"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_smuggling_payload_pipelined_after_a_valid_get_is_refused() {
    let s = Setup::start(ws_backend(), &[]).await;
    for (path, proxy) in s.proxies() {
        for payload in [
            "POST /x HTTP/1.1\r\nHost: public.example\r\nContent-Length: 3\r\nContent-Length: 8\r\n\r\nabcdefgh",
            "POST /x HTTP/1.1\r\nHost: public.example\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
            "GET /x HTTP/1.1\r\nHost: public.example\r\nHost: keyed.example\r\n\r\n",
            "GET /x HTTP/1.1\r\nHost: public.example\r\nX: a\r\n Transfer-Encoding: chunked\r\n\r\n",
        ] {
            let before = s.capture.heads().len();
            let mut c = Raw::connect(proxy).await;
            c.send(
                format!("GET /first HTTP/1.1\r\nHost: public.example\r\n\r\n{payload}").as_bytes(),
            )
            .await;
            let first = c.response().await.unwrap();
            assert_eq!(first.status, 200, "{path}: {first:?}");
            // Closed without an answer is a refusal too.
            if let Some(r) = c.response().await {
                assert_eq!(r.status, 400, "{path}: {payload:?}: {r:?}");
            }
            assert!(
                c.closed().await,
                "{path}: {payload:?}: the connection stays open"
            );
            assert_eq!(
                s.capture.heads().len(),
                before + 1,
                "{path}: {payload:?} reached the backend"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_authority_and_host_must_agree() {
    use http_body_util::Empty;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let s = Setup::start(ws_backend(), &[]).await;
    for (path, proxy) in s.proxies() {
        let tcp = TcpStream::connect(proxy).await.unwrap();
        let (mut send, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
                .await
                .expect("h2c with prior knowledge");
        tokio::spawn(conn);
        let request = |authority: &str, host: Option<&str>| {
            let mut b = http::Request::get(format!("http://{authority}/x"));
            if let Some(h) = host {
                b = b.header("host", h);
            }
            b.body(Empty::<bytes::Bytes>::new()).unwrap()
        };
        let before = s.capture.heads().len();
        let r = send
            .send_request(request("public.example", Some("keyed.example")))
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{path}: :authority and host disagree");
        assert_eq!(
            s.capture.heads().len(),
            before,
            "{path}: reached the backend"
        );
        let r = send
            .send_request(request("public.example", Some("PUBLIC.example")))
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path}: the same host in another case");
        let r = send
            .send_request(request("keyed.example", None))
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{path}: routed by :authority");
        assert_eq!(s.capture.last_values("host"), ["public.example"], "{path}");
    }
}
