//! Limits (431, 413, 414, slow clients), protocol pass-through (h2c, upgrades) and graceful
//! shutdown on SIGTERM.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, StatusCode};
use parapet_tests::{
    admin,
    backend::{Backend, Behaviour},
    client::Client,
    dataplane::Dataplane,
    pool_yaml, route_yaml, wait_for,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

async fn standalone(port: u16, extra: &[&str]) -> (Dataplane, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.yaml");
    let yaml = format!(
        "{}{}",
        pool_yaml("p", &[port], ""),
        route_yaml("r", "['*']", "    - backends: [{pool: p}]")
    );
    std::fs::write(&path, yaml).unwrap();
    let mut args = vec!["--config", path.to_str().unwrap()];
    args.extend_from_slice(extra);
    let dp = Dataplane::start(&args);
    let c = Client::new();
    wait_for("ready", Duration::from_secs(10), || {
        let c = c.clone();
        async move { admin::ready(&c, dp.admin).await.then_some(()) }
    })
    .await;
    (dp, dir)
}

/// Sends raw bytes and returns what the server answered before closing (bounded by 5s).
async fn raw(to: std::net::SocketAddr, req: &[u8]) -> String {
    let mut s = TcpStream::connect(to).await.unwrap();
    s.write_all(req).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_requests_get_the_right_status() {
    let b = Backend::start("b").await;
    let (dp, _d) = standalone(
        b.port(),
        &[
            "--max-header-bytes",
            "16384",
            "--max-body-bytes",
            "1000",
            "--max-uri-bytes",
            "2048",
        ],
    )
    .await;
    let c = Client::new();

    let big = "v".repeat(20_000);
    let r = raw(
        dp.proxy,
        format!("GET / HTTP/1.1\r\nhost: x\r\nx-big: {big}\r\n\r\n").as_bytes(),
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 431"), "{}", &r[..r.len().min(200)]);

    let many: String = (0..150).map(|i| format!("x-h{i}: 1\r\n")).collect();
    let r = raw(
        dp.proxy,
        format!("GET / HTTP/1.1\r\nhost: x\r\n{many}\r\n").as_bytes(),
    )
    .await;
    assert!(
        r.starts_with("HTTP/1.1 431"),
        "too many headers: {}",
        &r[..r.len().min(200)]
    );

    let long = format!("/{}", "a".repeat(3000));
    let r = c.get(dp.proxy, "x", &long).await.unwrap();
    assert_eq!(r.status, StatusCode::URI_TOO_LONG);

    let r = c
        .send(
            dp.proxy,
            Method::POST,
            "x",
            "/",
            &[],
            Bytes::from(vec![0u8; 5000]),
        )
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(r.text().contains("1000 bytes"), "{}", r.text());
    // A chunked body with no length that grows past the limit is refused too.
    let chunk = "x".repeat(800);
    let r = raw(
        dp.proxy,
        format!("POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n320\r\n{chunk}\r\n320\r\n{chunk}\r\n0\r\n\r\n").as_bytes(),
    )
    .await;
    assert!(
        r.starts_with("HTTP/1.1 413"),
        "chunked: {}",
        &r[..r.len().min(200)]
    );
    assert!(
        b.body_bytes() <= 1000,
        "the upstream got {} bytes past the limit",
        b.body_bytes()
    );

    let r = c
        .send(
            dp.proxy,
            Method::POST,
            "x",
            "/",
            &[],
            Bytes::from(vec![0u8; 900]),
        )
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_cut_off() {
    let b = Backend::start("b").await;
    let (dp, _d) = standalone(b.port(), &["--header-read-timeout", "500ms"]).await;
    let mut s = TcpStream::connect(dp.proxy).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n").await.unwrap();
    let started = Instant::now();
    let mut out = Vec::new();
    // The proxy closes the connection (with a 408 or silently) once the timeout passes.
    let read = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    assert!(read.is_ok(), "connection still open after 5s");
    assert!(
        started.elapsed() >= Duration::from_millis(400),
        "closed too early: {:?}",
        started.elapsed()
    );
    assert_eq!(b.hits(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_and_websocket_upgrades_pass_through() {
    let b = Backend::start("b").await;
    let (dp, _d) = standalone(b.port(), &[]).await;
    // HTTP/2 with prior knowledge.
    let h2 = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<http_body_util::Empty<Bytes>>();
    let resp = h2
        .request(
            http::Request::get(format!("http://{}/h2", dp.proxy))
                .body(http_body_util::Empty::new())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.version(), http::Version::HTTP_2);
    assert_eq!(resp.headers()["x-backend"], "b");
    assert_eq!(
        b.last_headers().unwrap()["host"].to_str().unwrap(),
        dp.proxy.to_string()
    );

    // Upgrade: the sample backend does not switch protocols, so the proxy must pass the
    // request with its Upgrade header and return the backend's plain answer.
    let r = raw(
        dp.proxy,
        b"GET /ws HTTP/1.1\r\nhost: x\r\nconnection: Upgrade\r\nupgrade: websocket\r\n\r\n",
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    assert_eq!(b.last_headers().unwrap()["upgrade"], "websocket");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_requests() {
    let b = Backend::start("slow").await;
    b.set(Behaviour {
        delay: Duration::from_millis(800),
        ..Default::default()
    });
    let (mut dp, _d) = standalone(
        b.port(),
        &["--drain-timeout", "10s", "--shutdown-delay", "300ms"],
    )
    .await;
    let c = Client::new();
    let (to, admin_addr) = (dp.proxy, dp.admin);
    let in_flight: Vec<_> = (0..5)
        .map(|_| {
            let c = c.clone();
            tokio::spawn(async move { c.get(to, "x", "/").await.map(|r| r.status) })
        })
        .collect();
    wait_for(
        "requests to reach the backend",
        Duration::from_secs(5),
        || async { (b.hits() == 5).then_some(()) },
    )
    .await;
    dp.terminate();
    // Readiness goes false while requests are still in flight.
    wait_for("readiness to turn false", Duration::from_secs(5), || {
        let c = c.clone();
        async move { (!admin::ready(&c, admin_addr).await).then_some(()) }
    })
    .await;
    for t in in_flight {
        assert_eq!(
            t.await.unwrap().expect("in-flight request completed"),
            StatusCode::OK
        );
    }
    let status = tokio::task::spawn_blocking(move || {
        let s = dp.wait_exit(Duration::from_secs(10));
        (s, dp)
    })
    .await
    .unwrap();
    let exit = status
        .0
        .expect("the data plane exited within the drain timeout");
    assert!(exit.success(), "exit status {exit:?}");
    assert!(
        TcpStream::connect(to).await.is_err(),
        "listener closed after shutdown"
    );
}

/// The same over HTTP/2, whose streams run in their connection's task: streams in flight
/// when the signal comes are answered on that connection, then the process exits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_http2_streams() {
    let b = Backend::start("slow").await;
    b.set(Behaviour {
        delay: Duration::from_millis(800),
        ..Default::default()
    });
    let (mut dp, _d) = standalone(b.port(), &["--drain-timeout", "10s"]).await;
    let h2 = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<http_body_util::Empty<Bytes>>();
    let to = dp.proxy;
    let in_flight: Vec<_> = (0..5)
        .map(|_| {
            let h2 = h2.clone();
            tokio::spawn(async move {
                let resp = h2
                    .request(
                        http::Request::get(format!("http://{to}/"))
                            .body(http_body_util::Empty::new())
                            .unwrap(),
                    )
                    .await?;
                let version = resp.version();
                let status = resp.status();
                let body = http_body_util::BodyExt::collect(resp.into_body())
                    .await?
                    .to_bytes();
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>((version, status, body))
            })
        })
        .collect();
    wait_for(
        "streams to reach the backend",
        Duration::from_secs(5),
        || async { (b.hits() == 5).then_some(()) },
    )
    .await;
    dp.terminate();
    for t in in_flight {
        let (version, status, body) = t.await.unwrap().expect("in-flight stream completed");
        assert_eq!(version, http::Version::HTTP_2);
        assert_eq!(status, StatusCode::OK);
        assert_eq!(&body[..], b"slow");
    }
    let exit = tokio::task::spawn_blocking(move || dp.wait_exit(Duration::from_secs(10)))
        .await
        .unwrap()
        .expect("the data plane exited within the drain timeout");
    assert!(exit.success(), "exit status {exit:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_100_continue_is_answered_before_the_body() {
    let b = Backend::start("b").await;
    let (dp, _d) = standalone(b.port(), &["--access-log"]).await;
    let mut s = TcpStream::connect(dp.proxy).await.unwrap();
    s.write_all(
        b"POST /upload HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\nexpect: 100-continue\r\n\r\n",
    )
    .await
    .unwrap();
    let mut buf = vec![0u8; 256];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .expect("an interim answer within 5s")
        .unwrap();
    assert!(
        String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 100 Continue"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );
    s.write_all(b"hello").await.unwrap();
    let mut rest = Vec::new();
    let mut chunk = [0u8; 1024];
    // Read until the final response has arrived (bounded by a deadline).
    let deadline = Instant::now() + Duration::from_secs(5);
    while !String::from_utf8_lossy(&rest).contains("\r\n\r\nb") && Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_secs(1), s.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => rest.extend_from_slice(&chunk[..n]),
            _ => break,
        }
    }
    let text = String::from_utf8_lossy(&rest);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert_eq!(b.body_bytes(), 5);
    let c = Client::new();
    assert!(
        parapet_tests::admin::metric(
            &c,
            dp.admin,
            "parapet_body_bytes_total{direction=\"request\"}"
        )
        .await
            >= 5.0
    );
    assert!(
        parapet_tests::admin::metric(
            &c,
            dp.admin,
            "parapet_body_bytes_total{direction=\"response\"}"
        )
        .await
            >= 1.0
    );
}

/// `--workers 3`: three worker threads share the port (SO_REUSEPORT) and all serve; the
/// port is still refused to a second process, with a sentence that says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_share_the_port_and_a_second_process_is_refused() {
    let b = Backend::start("b").await;
    let (dp, dir) = standalone(b.port(), &["--workers", "3"]).await;

    let tasks = std::fs::read_dir(format!("/proc/{}/task", dp.pid())).unwrap();
    let workers = tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|name| name.starts_with("parapet-worker"))
        .count();
    assert_eq!(workers, 3, "worker threads");

    // A new connection per request, so the kernel spreads them over the workers.
    for i in 0..60 {
        let r = raw(
            dp.proxy,
            b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
        )
        .await;
        assert!(r.starts_with("HTTP/1.1 200"), "request {i}: {r}");
    }
    assert_eq!(b.hits(), 60);

    let out = tokio::task::spawn_blocking({
        let config = dir.path().join("config.yaml");
        let listen = dp.proxy.to_string();
        move || {
            std::process::Command::new(parapet_tests::dataplane::binary("dataplane"))
                .args(["--config", config.to_str().unwrap(), "--listen", &listen])
                .args(["--admin-listen", "127.0.0.1:0", "--workers", "3"])
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    assert!(
        !out.status.success(),
        "a second process on the same port must fail"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("cannot listen on {}", dp.proxy)) && err.contains("another process"),
        "{err}"
    );
}

/// One `GET /` on `s`; the answer's head (the body, of its Content-Length, is read too).
async fn get_on(s: &mut TcpStream) -> String {
    s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut byte))
            .await
            .expect("an answer within 5 s")
            .unwrap();
        assert_eq!(n, 1, "closed before the answer's head ended: {buf:?}");
        buf.push(byte[0]);
    }
    let head = String::from_utf8(buf).unwrap().to_ascii_lowercase();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map_or(0, |v| v.trim().parse().unwrap());
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).await.unwrap();
    head
}

/// A keep-alive connection that goes quiet leaves its task and waits parked; it still
/// serves its next request (and counts it toward --max-requests-per-connection), closes
/// when its header read timeout runs out, and closes when the listener drains.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_wait_parked_and_keep_their_limits() {
    let b = Backend::start("b").await;
    let (mut dp, _d) = standalone(
        b.port(),
        &[
            "--header-read-timeout",
            "1500ms",
            "--max-requests-per-connection",
            "3",
            "--drain-timeout",
            "20s",
        ],
    )
    .await;
    let admin = Client::new();
    let at = dp.admin;
    // Until the gauge of parked connections reads `n`.
    let wait_parked = |n: f64| {
        let admin = &admin;
        async move {
            wait_for(
                &format!("{n} parked connections"),
                Duration::from_secs(5),
                || async {
                    let got = admin::metric(admin, at, "parapet_parked_connections ").await;
                    (got == n).then_some(())
                },
            )
            .await
        }
    };
    let mut s = TcpStream::connect(dp.proxy).await.unwrap();
    for i in 1..=3 {
        let head = get_on(&mut s).await;
        assert!(head.starts_with("http/1.1 200"), "request {i}: {head}");
        // The third answer is the connection's last: the count survived two parkings.
        assert_eq!(
            head.contains("connection: close"),
            i == 3,
            "request {i}: {head}"
        );
        if i < 3 {
            // Parked 100 ms after its answer.
            wait_parked(1.0).await;
        }
    }
    wait_parked(0.0).await;

    // Parked and quiet: closed once the header read timeout has run since its answer.
    let mut quiet = TcpStream::connect(dp.proxy).await.unwrap();
    assert!(get_on(&mut quiet).await.starts_with("http/1.1 200"));
    let answered = Instant::now();
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(6), quiet.read_to_end(&mut rest))
        .await
        .expect("the idle connection closed within 6 s")
        .unwrap();
    let took = answered.elapsed();
    assert!(rest.is_empty(), "nothing sent on an idle close: {rest:?}");
    assert!(took >= Duration::from_millis(1300), "closed after {took:?}");
    wait_parked(0.0).await;

    // Parked when the listener drains: closed, and the drain does not wait for it.
    let mut parked = TcpStream::connect(dp.proxy).await.unwrap();
    assert!(get_on(&mut parked).await.starts_with("http/1.1 200"));
    wait_parked(1.0).await;
    let terminated = Instant::now();
    dp.terminate();
    tokio::time::timeout(Duration::from_secs(10), parked.read_to_end(&mut rest))
        .await
        .expect("the parked connection closed on drain")
        .unwrap();
    // Before its own timeout would have closed it (1.1 s after the signal).
    assert!(
        terminated.elapsed() < Duration::from_millis(800),
        "closed {:?} after the signal",
        terminated.elapsed()
    );
    let status = tokio::task::spawn_blocking(move || dp.wait_exit(Duration::from_secs(15)))
        .await
        .unwrap()
        .expect("the data plane exited");
    assert!(status.success(), "exit status {status:?}");
    assert!(
        terminated.elapsed() < Duration::from_secs(15),
        "drain waited {:?} (its timeout is 20 s)",
        terminated.elapsed()
    );
}

/// A connection the gateway closes (here at its request limit) while the client is still
/// sending closes lingering: what arrives after the answer is read and dropped rather than
/// answered with a reset, which some clients' stacks take as a reason to drop the answer
/// they have not read yet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_closed_while_the_client_sends_is_not_reset() {
    let b = Backend::start("b").await;
    let (dp, _d) = standalone(b.port(), &["--max-requests-per-connection", "1"]).await;
    let s = TcpStream::connect(dp.proxy).await.unwrap();
    let (mut rd, mut wr) = s.into_split();
    wr.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    // The next request's bytes (a large body, say) keep coming after the first answer.
    let chunk = vec![b'x'; 16 * 1024];
    for i in 0..8 {
        tokio::time::sleep(Duration::from_millis(10)).await;
        wr.write_all(&chunk)
            .await
            .unwrap_or_else(|e| panic!("write {i} after the answer: {e}"));
    }
    answered_then_closed(&mut rd, "http/1.1 200").await;
}

/// Large bodies of a known length, sent in pieces: one over the 1 MiB the codec reads whole
/// (hyper streams it) and one under it arrive whole, and the request pipelined behind each
/// is served on the same connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_bodies_arrive_whole_and_the_connection_goes_on() {
    let b = Backend::start("b").await;
    let (dp, _d) = standalone(b.port(), &[]).await;
    let mut s = TcpStream::connect(dp.proxy).await.unwrap();
    for (i, len) in [3 * 1024 * 1024 + 5, 300_000].into_iter().enumerate() {
        let body = parapet_tests::pattern(len);
        s.write_all(
            format!("POST /up{i} HTTP/1.1\r\nhost: x\r\ncontent-length: {len}\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        for piece in body.chunks(256 * 1024) {
            s.write_all(piece).await.unwrap();
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        s.write_all(format!("GET /after{i} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes())
            .await
            .unwrap();
        // Two answers, each the backend's name ("b") behind its head.
        let mut out = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), async {
            while out.windows(5).filter(|w| w == b"\r\n\r\nb").count() < 2 {
                let mut buf = [0u8; 4096];
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => out.extend_from_slice(&buf[..n]),
                }
            }
        })
        .await;
        let text = String::from_utf8_lossy(&out);
        assert!(read.is_ok(), "two answers within 10 s: {text:?}");
        assert_eq!(text.matches("HTTP/1.1 200 OK").count(), 2, "{text:?}");
        assert!(
            !text.to_ascii_lowercase().contains("connection: close"),
            "{text:?}"
        );
        assert_eq!(b.last_uri().as_deref(), Some(format!("/after{i}").as_str()));
        assert_eq!(b.hits(), 2 * (i + 1));
    }
    // Every byte of both bodies reached the backend (the GETs carry none); a body's content
    // is compared below, where no request follows it.
    assert_eq!(b.body_bytes(), (3 * 1024 * 1024 + 5 + 300_000) as u64);
    let body = parapet_tests::pattern(500_000);
    let r = Client::new()
        .send(
            dp.proxy,
            Method::PUT,
            "x",
            "/put",
            &[],
            Bytes::from(body.clone()),
        )
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::OK);
    assert!(
        b.last_body().is_some_and(|got| got == body),
        "the body arrived changed"
    );
}

/// A large body the gateway answers without reading (over `--max-body-bytes`): the answer
/// says it closes, and the connection closes after it without a reset the client could
/// lose the answer to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_body_answered_unread_closes_the_connection_cleanly() {
    let b = Backend::start("b").await;
    let (dp, _d) = standalone(b.port(), &["--max-body-bytes", "1000000"]).await;
    let mut s = TcpStream::connect(dp.proxy).await.unwrap();
    s.write_all(b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 2000000\r\n\r\n")
        .await
        .unwrap();
    s.write_all(&parapet_tests::pattern(100_000)).await.unwrap();
    answered_then_closed(&mut s, "http/1.1 413").await;
    assert_eq!(b.hits(), 0);
}

/// Reads until the gateway closes the connection (within 5 s), with no reset on the way:
/// one answer starting with `status` that says it closes.
async fn answered_then_closed<R: tokio::io::AsyncRead + Unpin>(from: &mut R, status: &str) {
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), from.read_to_end(&mut out))
        .await
        .expect("the connection closed within 5 s");
    let text = String::from_utf8_lossy(&out).to_ascii_lowercase();
    assert!(
        read.is_ok() && text.starts_with(status) && text.contains("connection: close"),
        "{read:?}, {text:?}"
    );
}
