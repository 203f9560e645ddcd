//! Access logs through the real binary: what a JSON record says of a request (route,
//! endpoint, attempts, bytes each way, durations, cache, rate limit, trace id, TLS), a
//! template rendered as written, a template with a typo refused at start, client bytes
//! that cannot forge a line, and a writer that cannot write costing requests nothing.

use std::{
    io::Read as _,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use parapet_tests::{
    admin,
    backend::{Backend, Behaviour},
    client::Client,
    dataplane::{Dataplane, binary},
    pool_yaml, route_yaml, standalone, wait_for,
};
use serde_json::Value;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

/// The complete lines of the log so far (a line being written is left for later).
fn lines(log: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let complete = text.rfind('\n').map_or("", |end| &text[..=end]);
    complete.lines().map(str::to_string).collect()
}

fn records(log: &Path) -> Vec<Value> {
    lines(log)
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l:?}: {e}")))
        .collect()
}

/// The record whose `request_id` is `rid`, once written.
async fn record(log: &Path, rid: &str) -> Value {
    wait_for(
        &format!("the access-log record of {rid}"),
        Duration::from_secs(10),
        || {
            let found = records(log).into_iter().find(|r| r["request_id"] == rid);
            async move { found }
        },
    )
    .await
}

/// The data plane on `yaml` with a JSON access log into a file; `extra` flags after. The
/// directories (the config's, the log's) are kept as long as the process runs.
async fn start(yaml: &str, extra: &[&str]) -> (Dataplane, [tempfile::TempDir; 2], PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let mut args = vec![
        "--access-log",
        "--access-log-format",
        "json",
        "--access-log-path",
        log.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let (dp, cfg) = standalone(yaml, &args).await;
    (dp, [cfg, dir], log)
}

async fn send(
    c: &Client,
    dp: &Dataplane,
    method: Method,
    path: &str,
    rid: &str,
    extra: &[(&str, &str)],
    body: &'static [u8],
) -> parapet_tests::client::Reply {
    let mut headers = vec![("x-request-id", rid)];
    headers.extend_from_slice(extra);
    c.send(
        dp.proxy,
        method,
        "api.example",
        path,
        &headers,
        Bytes::from_static(body),
    )
    .await
    .unwrap()
}

/// A raw HTTP/1.1 exchange: writes `request`, reads until the connection closes.
async fn raw(dp: &Dataplane, request: &[u8]) -> String {
    let mut s = TcpStream::connect(dp.proxy).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .expect("an answer within 10s")
        .unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

fn ms(v: &Value) -> f64 {
    v.as_f64()
        .unwrap_or_else(|| panic!("{v} is not a number of milliseconds"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_records_name_route_endpoint_attempts_bytes_and_trace() {
    let b = Backend::start("b").await;
    // Every second request answers 503: the second request is retried once.
    b.set(Behaviour {
        fail_every: Some((2, 503)),
        body: Some(Bytes::from(vec![b'x'; 1000])),
        delay: Duration::from_millis(20),
        ..Default::default()
    });
    let yaml = format!(
        "{}{}",
        pool_yaml("p", &[b.port()], ""),
        route_yaml(
            "r",
            "[api.example]",
            "    - name: api\n      backends: [{pool: p}]\n      retries: {attempts: 3, retryOn: [GatewayError], backoffBase: 1ms, backoffMax: 5ms}"
        )
    );
    let (dp, _d, log) = start(&yaml, &[]).await;
    let c = Client::new();
    let endpoint = format!("127.0.0.1:{}", b.port());
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";

    let r = send(&c, &dp, Method::GET, "/one?token=s3cret", "rid-1", &[], b"").await;
    assert_eq!(r.status, StatusCode::OK);
    // The second request meets the 503 and is retried: PUT may be sent twice.
    let r = send(
        &c,
        &dp,
        Method::PUT,
        "/two",
        "rid-2",
        &[
            ("traceparent", &format!("00-{trace}-00f067aa0ba902b7-01")),
            ("user-agent", "tests/1.0"),
        ],
        b"0123456789abcdefghij",
    )
    .await;
    assert_eq!((r.status, r.body.len()), (StatusCode::OK, 1000));

    let one = record(&log, "rid-1").await;
    assert_eq!(one["attempts"], 1, "{one}");
    assert_eq!(one["path"], "/one");
    assert!(
        one.get("query").is_none() && !one.to_string().contains("s3cret"),
        "the query string is left out by default: {one}"
    );
    assert_eq!(one["trace_id"], Value::Null);

    let two = record(&log, "rid-2").await;
    assert_eq!(two["method"], "PUT");
    assert_eq!(two["path"], "/two");
    assert_eq!(two["authority"], "api.example");
    assert_eq!(two["protocol"], "HTTP/1.1");
    assert_eq!(two["status"], 200);
    assert_eq!(two["route"], "default/r/api", "{two}");
    assert_eq!(two["upstream_cluster"], "default/p");
    assert_eq!(two["upstream_endpoint"], endpoint.as_str());
    assert_eq!(two["attempts"], 2, "a 503 and its retry: {two}");
    assert_eq!(two["bytes_received"], 20);
    assert_eq!(two["bytes_sent"], 1000);
    assert_eq!(two["trace_id"], trace);
    assert_eq!(two["user_agent"], "tests/1.0");
    assert_eq!(two["client"], "127.0.0.1");
    assert!(two["client_port"].as_u64().is_some_and(|p| p > 0));
    // Two answers of 20 ms each, one after the other.
    let (up, total) = (ms(&two["upstream_ms"]), ms(&two["duration_ms"]));
    assert!(
        up >= 40.0 && total >= up,
        "upstream {up} ms, total {total} ms"
    );
    for absent in ["cache", "rate_limit", "tls_version", "sni", "key_id"] {
        assert_eq!(two[absent], Value::Null, "{absent}: {two}");
    }
    let time = two["time"].as_str().unwrap();
    assert!(
        time.len() == 24 && time.ends_with('Z') && time.as_bytes()[19] == b'.',
        "RFC 3339 with milliseconds: {time}"
    );

    // A streamed (chunked) body goes through hyper: its bytes are counted as it streams.
    let answer = raw(
        &dp,
        b"PUT /three HTTP/1.1\r\nhost: api.example\r\nx-request-id: rid-3\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n5\r\nhello\r\n7\r\n, world\r\n0\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let three = record(&log, "rid-3").await;
    assert_eq!(three["bytes_received"], 12, "{three}");
    assert_eq!(three["bytes_sent"], 1000);

    // No route: no upstream, no attempt.
    let r = c
        .send(
            dp.proxy,
            Method::GET,
            "elsewhere.example",
            "/",
            &[("x-request-id", "rid-4")],
            Bytes::new(),
        )
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let four = record(&log, "rid-4").await;
    assert_eq!(four["status"], 404);
    assert_eq!(four["route"], Value::Null);
    assert_eq!(four["upstream_endpoint"], Value::Null);
    assert_eq!(four["upstream_ms"], Value::Null);
    assert_eq!(four["attempts"], 0);
    assert!(four["bytes_sent"].as_u64().is_some_and(|n| n > 0), "{four}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_whose_client_goes_away_is_logged_499() {
    let b = Backend::start("slow").await;
    b.set(Behaviour {
        delay: Duration::from_secs(3),
        ..Default::default()
    });
    let yaml = format!(
        "{}{}",
        pool_yaml("p", &[b.port()], ""),
        route_yaml("r", "['*']", "    - backends: [{pool: p}]")
    );
    let (dp, _d, log) = start(&yaml, &[]).await;
    let mut s = TcpStream::connect(dp.proxy).await.unwrap();
    s.write_all(b"GET /slow HTTP/1.1\r\nhost: x\r\nx-request-id: gone\r\n\r\n")
        .await
        .unwrap();
    wait_for("the request upstream", Duration::from_secs(10), || {
        let hits = b.hits();
        async move { (hits == 1).then_some(()) }
    })
    .await;
    drop(s);
    let r = record(&log, "gone").await;
    assert_eq!(r["status"], 499, "{r}");
    assert_eq!(r["path"], "/slow");
    assert!(ms(&r["duration_ms"]) < 3000.0, "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_status_and_rate_limit_decisions() {
    let b = Backend::start("origin").await;
    b.set(Behaviour {
        headers: vec![("cache-control", "max-age=60".into())],
        ..Default::default()
    });
    let yaml = format!(
        "{}---\napiVersion: parapet.dev/v1alpha1\nkind: CachePolicy\nmetadata: {{name: c}}\nspec: {{mode: Auto}}\n{}",
        pool_yaml("p", &[b.port()], ""),
        route_yaml(
            "r",
            "['*']",
            "    - name: cached\n      matches: [{path: {type: PathPrefix, value: /cached}}]\n      backends: [{pool: p}]\n      cachePolicyRef: {name: c}\n    - name: limited\n      matches: [{path: {type: PathPrefix, value: /limited}}]\n      backends: [{pool: p}]\n      rateLimit: {requests: 1, period: 60s, burst: 1, key: Route}"
        )
    );
    let (dp, _d, log) = start(&yaml, &[]).await;
    let c = Client::new();

    let miss = send(&c, &dp, Method::GET, "/cached/a", "c-1", &[], b"").await;
    let hit = send(&c, &dp, Method::GET, "/cached/a", "c-2", &[], b"").await;
    assert_eq!(
        (
            miss.headers["x-cache"].to_str().unwrap(),
            hit.headers["x-cache"].to_str().unwrap()
        ),
        ("MISS", "HIT")
    );
    let posted = send(&c, &dp, Method::POST, "/cached/a", "c-3", &[], b"x").await;
    assert_eq!(posted.status, StatusCode::OK);
    let miss = record(&log, "c-1").await;
    assert_eq!(
        (&miss["cache"], &miss["attempts"], &miss["route"]),
        (
            &Value::from("miss"),
            &Value::from(1),
            &Value::from("default/r/cached")
        ),
        "{miss}"
    );
    assert_eq!(miss["upstream_endpoint"], format!("127.0.0.1:{}", b.port()));
    assert!(miss["upstream_ms"].is_f64(), "{miss}");
    let hit = record(&log, "c-2").await;
    assert_eq!(hit["cache"], "hit", "{hit}");
    assert_eq!(hit["attempts"], 0);
    assert_eq!(hit["upstream_endpoint"], Value::Null);
    assert_eq!(hit["bytes_sent"], miss["bytes_sent"]);
    assert_eq!(record(&log, "c-3").await["cache"], "bypass");

    let allowed = send(&c, &dp, Method::GET, "/limited", "l-1", &[], b"").await;
    let limited = send(&c, &dp, Method::GET, "/limited", "l-2", &[], b"").await;
    assert_eq!(
        (allowed.status, limited.status),
        (StatusCode::OK, StatusCode::TOO_MANY_REQUESTS)
    );
    let allowed = record(&log, "l-1").await;
    assert_eq!(allowed["rate_limit"], "allowed", "{allowed}");
    let limited = record(&log, "l-2").await;
    assert_eq!(
        (
            &limited["rate_limit"],
            &limited["status"],
            &limited["attempts"]
        ),
        (&Value::from("limited"), &Value::from(429), &Value::from(0)),
        "{limited}"
    );
    assert_eq!(limited["route"], "default/r/limited");
    assert_eq!(
        record(&log, "c-1").await["rate_limit"],
        Value::Null,
        "a route without a limit has no decision"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_connections_log_their_version_and_sni() {
    let b = Backend::start("b").await;
    let cert = rcgen::generate_simple_self_signed(vec!["api.example".to_string()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (crt, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    std::fs::write(&crt, cert.cert.pem()).unwrap();
    std::fs::write(&key, cert.signing_key.serialize_pem()).unwrap();
    let yaml = format!(
        "{}{}",
        pool_yaml("p", &[b.port()], ""),
        route_yaml("r", "[api.example]", "    - backends: [{pool: p}]")
    );
    let (dp, _d, log) = start(
        &yaml,
        &[
            "--tls-cert",
            crt.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
    )
    .await;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from(
            cert.cert.der().to_vec(),
        ))
        .unwrap();
    for (alpn, version, rid) in [
        (&b"h2"[..], &rustls::version::TLS13, "tls-h2"),
        (&b"http/1.1"[..], &rustls::version::TLS12, "tls-h1"),
    ] {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[version])
            .unwrap()
            .with_root_certificates(roots.clone())
            .with_no_client_auth();
        cfg.alpn_protocols = vec![alpn.to_vec()];
        let tcp = TcpStream::connect(dp.proxy).await.unwrap();
        let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
            .connect(
                rustls::pki_types::ServerName::try_from("api.example").unwrap(),
                tcp,
            )
            .await
            .expect("TLS handshake");
        let req = Request::get("https://api.example/secure")
            .header("host", "api.example")
            .header("x-request-id", rid)
            .body(Empty::<Bytes>::new())
            .unwrap();
        let resp = parapet_tests::client::send_on(tls, alpn == b"h2", req).await;
        assert_eq!(resp.status(), StatusCode::OK);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"b");
    }
    let h2 = record(&log, "tls-h2").await;
    assert_eq!(
        (&h2["tls_version"], &h2["sni"], &h2["protocol"]),
        (
            &Value::from("TLSv1.3"),
            &Value::from("api.example"),
            &Value::from("HTTP/2")
        ),
        "{h2}"
    );
    assert_eq!(h2["authority"], "api.example");
    let h1 = record(&log, "tls-h1").await;
    assert_eq!(
        (&h1["tls_version"], &h1["sni"], &h1["protocol"]),
        (
            &Value::from("TLSv1.2"),
            &Value::from("api.example"),
            &Value::from("HTTP/1.1")
        ),
        "{h1}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_template_is_rendered_as_written_and_client_bytes_cannot_forge_lines() {
    let b = Backend::start("b").await;
    b.set(Behaviour {
        body: Some(Bytes::from_static(b"12345")),
        ..Default::default()
    });
    let yaml = format!(
        "{}{}",
        pool_yaml("p", &[b.port()], ""),
        route_yaml("r", "['*']", "    - name: all\n      backends: [{pool: p}]")
    );
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let (dp, _cfg) = standalone(
        &yaml,
        &[
            "--access-log",
            "--access-log-template",
            "%method% %path% q=%query% %status% %bytes_sent% route=%route% \"%user_agent%\" %attempts% %cache% 100%%",
            "--access-log-path",
            log.to_str().unwrap(),
        ],
    )
    .await;
    let c = Client::new();
    let r = c
        .send(
            dp.proxy,
            Method::GET,
            "x",
            "/a/b?x=1",
            &[("user-agent", "curl/8 (linux)")],
            Bytes::new(),
        )
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::OK);
    let got = wait_for("the line", Duration::from_secs(10), || {
        let l = lines(&log);
        async move { (!l.is_empty()).then_some(l) }
    })
    .await;
    assert_eq!(
        got,
        ["GET /a/b q=x=1 200 5 route=default/r/all \"curl/8 (linux)\" 1 - 100%"]
    );

    // Bytes a client controls try to close the quotes, add fields, start a line: the
    // quote and control bytes are escaped (tab, obs-text), CR/LF never reach the log (the
    // parser refuses them: that request gets a 400 and no line at all).
    let evil = b"GET /x%0D%0Afake HTTP/1.1\r\nhost: x\r\nuser-agent: a\" 200 1 route=forged \"\t{\"status\":1}\xff\r\nconnection: close\r\n\r\n";
    let answer = raw(&dp, evil).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let refused = raw(
        &dp,
        b"GET /y HTTP/1.1\r\nhost: x\r\nuser-agent: a\rfake line\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(refused.starts_with("HTTP/1.1 400"), "{refused}");
    let got = wait_for("two lines", Duration::from_secs(10), || {
        let l = lines(&log);
        async move { (l.len() >= 2).then_some(l) }
    })
    .await;
    // A last request, to be sure nothing more was written for the refused one.
    c.get(dp.proxy, "x", "/last").await.unwrap();
    let all = wait_for("three lines", Duration::from_secs(10), || {
        let l = lines(&log);
        async move { (l.len() >= 3).then_some(l) }
    })
    .await;
    assert_eq!(all.len(), 3, "{all:#?}");
    assert_eq!(
        got[1],
        "GET /x%0D%0Afake q=- 200 5 route=default/r/all \"a\\x22 200 1 route=forged \\x22\\x09{\\x22status\\x22:1}\\xFF\" 1 - 100%"
    );
    assert!(all[2].starts_with("GET /last "), "{all:#?}");
    assert!(
        !std::fs::read(&log).unwrap().contains(&b'\r'),
        "no CR in the log"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_escapes_what_the_client_sent() {
    let b = Backend::start("b").await;
    let yaml = format!(
        "{}{}",
        pool_yaml("p", &[b.port()], ""),
        route_yaml("r", "['*']", "    - backends: [{pool: p}]")
    );
    let (dp, _d, log) = start(&yaml, &["--access-log-fields", "user_agent,status,path"]).await;
    let answer = raw(
        &dp,
        b"GET /j HTTP/1.1\r\nhost: x\r\nuser-agent: x\",\"status\":999,\"y\":\"\t\xff\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let got = wait_for("the record", Duration::from_secs(10), || {
        let r = records(&log);
        async move { (!r.is_empty()).then_some(r) }
    })
    .await;
    assert_eq!(got.len(), 1);
    let r = got[0].as_object().unwrap();
    assert_eq!(r.len(), 3, "the fields asked for: {r:?}");
    let line = &lines(&log)[0];
    let at = |k: &str| line.find(&format!("\"{k}\":")).unwrap();
    assert!(
        at("user_agent") < at("status") && at("status") < at("path"),
        "in the order asked for: {line}"
    );
    assert_eq!(r["status"], 200);
    assert_eq!(r["user_agent"], "x\",\"status\":999,\"y\":\"\t\u{fffd}");
}

#[test]
fn a_template_with_an_unknown_field_is_refused_at_start() {
    let mut child = std::process::Command::new(binary("dataplane"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--access-log",
            "--access-log-template",
            "%method% %upstream_host% %status%",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("the data plane did not stop on a bad template");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let mut stdout = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    assert!(!status.success());
    assert!(
        !stdout.contains("listening"),
        "refused before listening: {stdout}"
    );
    assert!(
        stderr.contains("unknown field `%upstream_host%`")
            && stderr.contains("the known fields are: time, client,")
            && stderr.contains("upstream_endpoint"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_that_cannot_write_drops_records_and_never_holds_up_requests() {
    let b = Backend::start("b").await;
    let yaml = format!(
        "{}{}",
        pool_yaml("p", &[b.port()], ""),
        route_yaml("r", "['*']", "    - backends: [{pool: p}]")
    );
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("access.fifo");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("mkfifo runs");
    assert!(made.success());
    // Nobody reads the pipe: the writer thread waits to open it, and stays there.
    let (dp, _d) = standalone(
        &yaml,
        &[
            "--access-log",
            "--access-log-format",
            "json",
            "--access-log-buffer",
            "4",
            "--access-log-path",
            fifo.to_str().unwrap(),
        ],
    )
    .await;
    let c = Client::new();
    let started = std::time::Instant::now();
    for i in 0..50 {
        let r = tokio::time::timeout(Duration::from_secs(5), c.get(dp.proxy, "x", "/"))
            .await
            .unwrap_or_else(|_| panic!("request {i} was held up"))
            .unwrap();
        assert_eq!(r.status, StatusCode::OK);
    }
    eprintln!("50 requests in {:?}", started.elapsed());
    // Four records wait in the queue; the other 46 were dropped and counted.
    let dropped = wait_for("46 drops", Duration::from_secs(10), || {
        let c = c.clone();
        async move {
            let n = admin::metric(&c, dp.admin, "parapet_access_log_dropped_total").await;
            (n >= 46.0).then_some(n)
        }
    })
    .await;
    assert_eq!(dropped, 46.0);
    // A reader comes: the queued records are written.
    let mut reader = std::fs::File::open(&fifo).unwrap();
    let mut got = String::new();
    while got.lines().count() < 4 {
        let mut chunk = [0u8; 4096];
        let n = reader.read(&mut chunk).unwrap();
        assert!(n > 0, "the pipe closed early: {got:?}");
        got.push_str(&String::from_utf8_lossy(&chunk[..n]));
    }
    assert_eq!(got.lines().count(), 4, "{got}");
    for l in got.lines() {
        let v: Value = serde_json::from_str(l).unwrap();
        assert_eq!(v["status"], 200);
    }
    wait_for("4 records written", Duration::from_secs(10), || {
        let c = c.clone();
        async move {
            let n = admin::metric(&c, dp.admin, "parapet_access_log_records_total").await;
            (n == 4.0).then_some(())
        }
    })
    .await;
}
