//! Gateway API semantics end to end: the data-plane binary with tables pushed over its admin
//! API and real backends on 127.0.0.1. Redirects, header edits, full-path rewrites, backend
//! timeouts, mirrors, and listeners per port (routing and TLS per socket).

use std::{net::SocketAddr, sync::Arc, time::Duration};

use bytes::Bytes;
use http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use parapet_crds::snapshot::{
    CertificatePair, ForwardAction, HeaderModifier, HeaderPair, Listener, ListenerProtocol, Mirror,
    PathReplacement, Redirect, RouteAction, Snapshot, Table, VirtualHost,
};
use parapet_tests::{
    admin,
    backend::{Backend, Behaviour},
    client::Client,
    dataplane::Dataplane,
    pki::Pki,
    pool_yaml, route_yaml, wait_for,
};
use rustls::pki_types::{CertificateDer, ServerName};

const TOKEN: &str = "gateway-api-test-token";
const WAIT: Duration = Duration::from_secs(10);

/// A data plane that takes pushed tables, and what it takes to talk to it.
struct Gateway {
    dp: Dataplane,
    client: Client,
    version: u64,
    _dir: tempfile::TempDir,
}

impl Gateway {
    fn start(extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, TOKEN).unwrap();
        let mut args = vec![
            "--snapshot-token-file",
            token.to_str().unwrap(),
            "--workers",
            "1",
        ];
        args.extend_from_slice(extra);
        Self {
            dp: Dataplane::start(&args),
            client: Client::new(),
            version: 0,
            _dir: dir,
        }
    }

    /// Pushes `table` and returns once it is in force.
    async fn push(&mut self, table: Table) {
        self.version += 1;
        let snapshot = Snapshot::new(self.version, table);
        let r = admin::push(&self.client, self.dp.admin, Some(TOKEN), &snapshot).await;
        assert_eq!(r.status, StatusCode::OK, "push refused: {}", r.text());
        let (c, a) = (self.client.clone(), self.dp.admin);
        wait_for("the table to be in force", WAIT, || {
            let c = c.clone();
            async move { admin::ready(&c, a).await.then_some(()) }
        })
        .await;
    }

    async fn get(&self, host: &str, path: &str) -> parapet_tests::client::Reply {
        self.client.get(self.dp.proxy, host, path).await.unwrap()
    }

    async fn metric(&self, name: &str, labels: &[&str]) -> f64 {
        admin::metric_sum(&self.client, self.dp.admin, name, labels).await
    }
}

/// A table compiled from one ApiRoute `r` on every host, whose rules name their pools.
/// Every pool is in the table (cluster `default/NAME`), through a rule of its own if no
/// other names it, so mirrors and listeners can name it.
fn table(pools: &[(&str, u16)], rules: &str) -> Table {
    let mut yaml: String = pools.iter().map(|(n, p)| pool_yaml(n, &[*p], "")).collect();
    let keep: String = pools
        .iter()
        .map(|(n, _)| format!("    - {{name: pool-{n}, matches: [{{path: {{type: Exact, value: /pool-{n}}}}}], backends: [{{pool: {n}}}]}}\n"))
        .collect();
    yaml.push_str(&route_yaml("r", "['*']", &format!("{rules}{keep}")));
    parapet_tests::snapshot(&yaml, 1).table
}

/// The action of rule `rule` of route `r`.
fn action<'t>(t: &'t mut Table, rule: &str) -> &'t mut RouteAction {
    let name = format!("default/r/{rule}");
    t.virtual_hosts
        .iter_mut()
        .flat_map(|v| v.routes.iter_mut())
        .find(|r| r.name == name)
        .map(|r| &mut r.action)
        .unwrap_or_else(|| panic!("no route {name}"))
}

fn forward<'t>(t: &'t mut Table, rule: &str) -> &'t mut ForwardAction {
    match action(t, rule) {
        RouteAction::Forward(f) => f,
        other => panic!("{rule} does not forward: {other:?}"),
    }
}

fn pair(name: &str, value: &str) -> HeaderPair {
    HeaderPair {
        name: name.into(),
        value: value.into(),
    }
}

fn values(h: &http::HeaderMap, name: &str) -> Vec<String> {
    h.get_all(name)
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_build_their_location_from_the_request() {
    let b = Backend::start("never").await;
    let rules = [
        "plain",
        "scheme",
        "host-and-port",
        "port-80",
        "prefix",
        "full",
    ]
    .map(|n| {
        format!(
            "    - {{name: {n}, matches: [{{path: {{value: /{n}}}}}], backends: [{{pool: p}}]}}\n"
        )
    })
    .concat();
    let mut t = table(&[("p", b.port())], &rules);
    let redirect = |scheme: Option<&str>, hostname: Option<&str>, port, path, status| {
        RouteAction::Redirect(Redirect {
            scheme: scheme.map(str::to_string),
            hostname: hostname.map(str::to_string),
            port,
            path,
            status,
        })
    };
    *action(&mut t, "plain") = redirect(None, None, None, None, 301);
    *action(&mut t, "scheme") = redirect(Some("https"), None, None, None, 302);
    *action(&mut t, "host-and-port") = redirect(None, Some("example.org"), Some(8443), None, 303);
    *action(&mut t, "port-80") = redirect(None, Some("example.org"), Some(80), None, 307);
    *action(&mut t, "prefix") = redirect(
        None,
        None,
        None,
        Some(PathReplacement::Prefix("/".into())),
        308,
    );
    *action(&mut t, "full") = redirect(
        None,
        None,
        None,
        Some(PathReplacement::Full("/replaced".into())),
        302,
    );
    let mut gw = Gateway::start(&[]);
    gw.push(t).await;

    let cases = [
        // Nothing replaced: the request's own URL, its Host's port and its query.
        (
            "/plain/x?a=1&b",
            301,
            "http://gw.example:8080/plain/x?a=1&b",
        ),
        // A scheme of its own: that scheme's default port, so none.
        ("/scheme", 302, "https://gw.example/scheme"),
        (
            "/host-and-port",
            303,
            "http://example.org:8443/host-and-port",
        ),
        // The scheme's default port is left out.
        ("/port-80?q", 307, "http://example.org/port-80?q"),
        // The matched prefix replaced segment-wise: `/` strips it.
        ("/prefix/one/two", 308, "http://gw.example:8080/one/two"),
        ("/prefix", 308, "http://gw.example:8080/"),
        (
            "/full/deeper?keep=1",
            302,
            "http://gw.example:8080/replaced?keep=1",
        ),
    ];
    for (path, status, location) in cases {
        let r = gw.get("gw.example:8080", path).await;
        assert_eq!(r.status.as_u16(), status, "{path}");
        assert_eq!(r.headers[header::LOCATION], location, "{path}");
    }
    // A Host without a port: none in the Location either.
    let r = gw.get("GW.example", "/plain").await;
    assert_eq!(r.headers[header::LOCATION], "http://gw.example/plain");
    assert_eq!(b.hits(), 0, "a redirect never reaches the backend");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_edits_reach_the_backend_and_the_client() {
    let b = Backend::start("edited").await;
    b.set(Behaviour {
        headers: vec![
            ("x-resp-set", "from-backend".into()),
            ("x-resp-add", "from-backend".into()),
            ("x-resp-remove", "gone".into()),
        ],
        ..Default::default()
    });
    let mut t = table(
        &[("p", b.port())],
        "    - {name: edits, backends: [{pool: p}]}\n",
    );
    let f = forward(&mut t, "edits");
    f.request_headers = HeaderModifier {
        set: vec![pair("x-set", "set-overwrites-values")],
        add: vec![pair("x-add", "add-appends-values")],
        remove: vec!["x-remove".into()],
    };
    f.response_headers = HeaderModifier {
        set: vec![pair("x-resp-set", "set-by-gateway")],
        add: vec![pair("x-resp-add", "added-by-gateway")],
        remove: vec!["x-resp-remove".into()],
    };
    let mut gw = Gateway::start(&[]);
    gw.push(t).await;

    let r = gw
        .client
        .send(
            gw.dp.proxy,
            Method::GET,
            "gw.example",
            "/any",
            &[
                ("x-set", "some-other-value"),
                ("x-add", "some-other-value"),
                ("x-remove", "val"),
                ("x-other", "kept"),
            ],
            Bytes::new(),
        )
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::OK);
    let seen = b.last_headers().expect("the backend got the request");
    assert_eq!(values(&seen, "x-set"), ["set-overwrites-values"]);
    assert_eq!(
        values(&seen, "x-add"),
        ["some-other-value", "add-appends-values"]
    );
    assert!(!seen.contains_key("x-remove"));
    assert_eq!(values(&seen, "x-other"), ["kept"]);
    // The client sees the response edits.
    assert_eq!(values(&r.headers, "x-resp-set"), ["set-by-gateway"]);
    assert_eq!(
        values(&r.headers, "x-resp-add"),
        ["from-backend", "added-by-gateway"]
    );
    assert!(!r.headers.contains_key("x-resp-remove"));
    // A request without the headers: set and add create them.
    gw.get("gw.example", "/any").await;
    let seen = b.last_headers().unwrap();
    assert_eq!(values(&seen, "x-set"), ["set-overwrites-values"]);
    assert_eq!(values(&seen, "x-add"), ["add-appends-values"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_path_rewrite_replaces_the_path_and_keeps_the_query() {
    let b = Backend::start("rewritten").await;
    let mut t = table(
        &[("p", b.port())],
        "    - {name: full, matches: [{path: {value: /full/one}}], backends: [{pool: p}]}\n    - {name: prefix, matches: [{path: {value: /prefix/one}}], backends: [{pool: p}], rewrite: {pathPrefix: /}}\n",
    );
    forward(&mut t, "full").rewrite =
        Some(serde_json::from_value(serde_json::json!({"fullPath": "/one"})).unwrap());
    let mut gw = Gateway::start(&[]);
    gw.push(t).await;
    for (path, upstream) in [
        ("/full/one/two?x=1", "/one?x=1"),
        ("/full/one", "/one"),
        ("/prefix/one/two", "/two"),
        ("/prefix/one", "/"),
    ] {
        let r = gw.get("gw.example", path).await;
        assert_eq!(r.status, StatusCode::OK, "{path}");
        assert_eq!(b.last_uri().as_deref(), Some(upstream), "{path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_timeout_gives_504_while_a_faster_backend_passes() {
    let slow = Backend::start("slow").await;
    slow.set(Behaviour {
        delay: Duration::from_millis(1500),
        ..Default::default()
    });
    let fast = Backend::start("fast").await;
    let mut t = table(
        &[("slow", slow.port()), ("fast", fast.port())],
        "    - {name: slow, matches: [{path: {value: /slow}}], backends: [{pool: slow}], timeout: 10s}\n    - {name: fast, matches: [{path: {value: /fast}}], backends: [{pool: fast}], timeout: 10s}\n",
    );
    for rule in ["slow", "fast"] {
        forward(&mut t, rule).backend_timeout_ms = Some(300);
    }
    let mut gw = Gateway::start(&[]);
    gw.push(t).await;
    let started = std::time::Instant::now();
    let r = gw.get("gw.example", "/slow").await;
    assert_eq!(r.status, StatusCode::GATEWAY_TIMEOUT, "{}", r.text());
    assert!(
        started.elapsed() < Duration::from_millis(1400),
        "the backend timeout, not the route's or the backend's delay, ended it: {:?}",
        started.elapsed()
    );
    let r = gw.get("gw.example", "/fast").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.backend(), Some("fast"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirrors_get_copies_and_never_touch_the_answer() {
    let main = Backend::start("main").await;
    let all = Backend::start("mirror-all").await;
    let none = Backend::start("mirror-none").await;
    // A port nothing listens on: every copy to it fails.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_port = dead.local_addr().unwrap().port();
    drop(dead);
    let mut t = table(
        &[
            ("main", main.port()),
            ("all", all.port()),
            ("none", none.port()),
            ("dead", dead_port),
        ],
        "    - {name: m, backends: [{pool: main}], rewrite: {pathPrefix: /up}}\n",
    );
    let f = forward(&mut t, "m");
    f.request_headers.set = vec![pair("x-edited", "yes")];
    f.mirrors = [
        ("default/all", 1_000_000),
        ("default/none", 0),
        ("default/dead", 1_000_000),
    ]
    .map(|(cluster, per_million)| Mirror {
        cluster: cluster.into(),
        per_million,
    })
    .to_vec();
    // Bodies up to 16 bytes are kept in full; longer ones stream and are not mirrored.
    let mut gw = Gateway::start(&["--max-replay-bytes", "16"]);
    gw.push(t).await;

    const N: usize = 5;
    for i in 0..N {
        let r = gw.get("gw.example", &format!("/x{i}?q=1")).await;
        assert_eq!(
            r.status,
            StatusCode::OK,
            "a failing mirror does not fail the request"
        );
        assert_eq!(r.backend(), Some("main"));
    }
    let r = gw
        .client
        .send(
            gw.dp.proxy,
            Method::POST,
            "gw.example",
            "/post",
            &[],
            Bytes::from_static(b"small"),
        )
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::OK);
    wait_for("the mirror to get every copy", WAIT, || async {
        (all.hits() == N + 1).then_some(())
    })
    .await;
    // The copy is the request as it went upstream: rewritten, edited, with its body.
    assert_eq!(all.last_uri().as_deref(), Some("/up/post"));
    assert_eq!(values(&all.last_headers().unwrap(), "x-edited"), ["yes"]);
    assert_eq!(all.body_bytes(), 5);
    let route = "route=\"default/r/m\"";
    wait_for("the failed copies to be counted", WAIT, || async {
        (gw.metric(
            "parapet_mirror_requests_total",
            &[route, "result=\"failed\""],
        )
        .await
            == (N + 1) as f64)
            .then_some(())
    })
    .await;
    assert_eq!(
        gw.metric("parapet_mirror_requests_total", &[route, "result=\"sent\""])
            .await,
        (N + 1) as f64
    );

    // A body too long to keep streams to the main backend and is not copied.
    let long = Bytes::from(vec![b'a'; 1000]);
    let r = gw
        .client
        .send(gw.dp.proxy, Method::POST, "gw.example", "/long", &[], long)
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(main.last_uri().as_deref(), Some("/up/long"));
    wait_for("the skipped copies to be counted", WAIT, || async {
        // Both mirrors that would have taken it count one.
        (gw.metric(
            "parapet_mirror_requests_total",
            &[route, "result=\"skipped\""],
        )
        .await
            == 2.0)
            .then_some(())
    })
    .await;
    assert_eq!(all.hits(), N + 1, "the streamed request was not copied");
    assert_eq!(none.hits(), 0, "a 0% mirror gets nothing");
    assert_eq!(main.hits(), N + 2);
}

/// A TLS client that trusts `ca` only, speaking HTTP/1.1 with SNI `name`.
async fn tls_get(
    to: SocketAddr,
    ca: &str,
    name: &str,
    path: &str,
) -> anyhow::Result<http::Response<Bytes>> {
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut ca.as_bytes()) {
        roots.add(CertificateDer::from(c?.to_vec()))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = tokio::net::TcpStream::connect(to).await?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(ServerName::try_from(name.to_string())?, tcp)
        .await?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
    tokio::spawn(conn);
    let req = Request::get(path)
        .header("host", name)
        .body(Empty::<Bytes>::new())?;
    let resp = send.send_request(req).await?;
    let (parts, body) = resp.into_parts();
    Ok(http::Response::from_parts(
        parts,
        body.collect().await?.to_bytes(),
    ))
}

/// Whether the server closes a fresh connection before answering anything.
async fn closed_at_once(to: SocketAddr) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut s) = tokio::net::TcpStream::connect(to).await else {
        return true;
    };
    let _ = s
        .write_all(b"GET / HTTP/1.1\r\nhost: gw.example\r\n\r\n")
        .await;
    let mut buf = Vec::new();
    matches!(
        tokio::time::timeout(WAIT, s.read_to_end(&mut buf)).await,
        Ok(Ok(0)) | Ok(Err(_))
    ) && buf.is_empty()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listener_ports_route_and_terminate_tls_per_port() {
    let (plain_b, secure_b, table_b) = (
        Backend::start("plain").await,
        Backend::start("secure").await,
        Backend::start("table").await,
    );
    let pki = Pki::new("gateway-api-test-ca");
    let (cert_pem, key_pem) = pki.leaf(&["secure.example"]);
    let mut t = table(
        &[
            ("plain", plain_b.port()),
            ("secure", secure_b.port()),
            ("table", table_b.port()),
        ],
        "    - {name: to-table, backends: [{pool: table}]}\n",
    );
    let compiled = t.virtual_hosts[0]
        .routes
        .iter()
        .find(|r| r.name == "default/r/to-table")
        .unwrap()
        .clone();
    let host = |domain: &str, pool: &str, tls: Option<CertificatePair>| {
        let mut route = compiled.clone();
        route.name = format!("default/r/{pool}");
        if let RouteAction::Forward(f) = &mut route.action {
            f.backends[0].cluster = format!("default/{pool}");
        }
        VirtualHost {
            domain: domain.into(),
            tls,
            client_auth: None,
            routes: vec![route],
        }
    };
    t.listeners = vec![
        Listener {
            port: 80,
            protocol: ListenerProtocol::Http,
            virtual_hosts: vec![host("*", "plain", None)],
        },
        Listener {
            port: 443,
            protocol: ListenerProtocol::Https,
            virtual_hosts: vec![host(
                "secure.example",
                "secure",
                Some(CertificatePair { cert_pem, key_pem }),
            )],
        },
    ];
    let mut gw = Gateway::start(&[
        "--listen",
        "127.0.0.1:0=80",
        "--listen",
        "127.0.0.1:0=443",
        "--listen",
        "127.0.0.1:0",
    ]);
    let sockets = gw.dp.sockets.clone();
    assert_eq!(sockets.len(), 3, "{sockets:?}");
    assert_eq!(sockets[0], (gw.dp.proxy, 80), "proxy= is the first socket");
    assert_eq!(sockets[1].1, 443);
    assert_eq!(
        sockets[2].1,
        sockets[2].0.port(),
        "no =PORT: the socket's own port"
    );
    let (http_addr, https_addr, other_addr) = (sockets[0].0, sockets[1].0, sockets[2].0);

    // Before a table has listeners, every socket serves the table's own hosts, plainly.
    let mut own = t.clone();
    own.listeners.clear();
    gw.push(own).await;
    for addr in [http_addr, https_addr, other_addr] {
        let r = gw.client.get(addr, "gw.example", "/").await.unwrap();
        assert_eq!(r.backend(), Some("table"), "{addr}");
    }

    gw.push(t).await;
    // A table applies to connections opened after it: a client of its own, with none open.
    let client = Client::new();
    // Port 80: plain HTTP, the listener's routes.
    let r = client.get(http_addr, "gw.example", "/").await.unwrap();
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.backend(), Some("plain"));
    // Port 443: TLS with the listener's certificate, the listener's routes.
    let r = tls_get(https_addr, &pki.ca_pem, "secure.example", "/")
        .await
        .expect("a TLS exchange on the Https listener's socket");
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["x-backend"], "secure");
    // Each port speaks only its own protocol.
    assert!(
        client.get(https_addr, "secure.example", "/").await.is_err(),
        "plain HTTP on the Https listener's socket"
    );
    assert!(
        tls_get(http_addr, &pki.ca_pem, "secure.example", "/")
            .await
            .is_err(),
        "TLS on the Http listener's socket"
    );
    // The Https listener has no certificate for other names (and no --tls-cert fallback).
    assert!(
        tls_get(https_addr, &pki.ca_pem, "other.example", "/")
            .await
            .is_err()
    );
    // A socket whose port has no listener: connections are closed.
    assert!(closed_at_once(other_addr).await);
    assert_eq!(
        table_b.hits(),
        3,
        "only the table without listeners used its own hosts"
    );
}
