//! The snapshot API: authentication, stale and invalid pushes, live swaps under load,
//! persistence across restarts.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use http::StatusCode;
use parapet_tests::{
    admin::{self, metric, push, push_raw},
    backend::Backend,
    client::Client,
    dataplane::Dataplane,
    pool_yaml, route_yaml, snapshot,
};

const TOKEN: &str = "test-token-0123456789";

fn token_file(dir: &tempfile::TempDir) -> String {
    let p = dir.path().join("token");
    std::fs::write(&p, format!("{TOKEN}\n")).unwrap();
    p.to_str().unwrap().to_string()
}

fn table_to(port: u16) -> String {
    format!(
        "{}{}",
        pool_yaml("p", &[port], ""),
        route_yaml("r", "['*']", "    - backends: [{pool: p}]")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_are_authenticated_versioned_and_validated() {
    let dir = tempfile::tempdir().unwrap();
    let dp = Dataplane::start(&[
        "--snapshot-token-file",
        &token_file(&dir),
        "--max-snapshot-bytes",
        "200000",
    ]);
    let c = Client::new();
    let b = Backend::start("b").await;
    let v5 = snapshot(&table_to(b.port()), 5);

    // Not ready, and traffic gets 503, before the first table.
    assert!(!admin::ready(&c, dp.admin).await);
    assert_eq!(
        c.get(dp.proxy, "x", "/").await.unwrap().status,
        StatusCode::SERVICE_UNAVAILABLE
    );

    assert_eq!(
        push(&c, dp.admin, None, &v5).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        push(&c, dp.admin, Some("wrong-token-0123456789"), &v5)
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        push(&c, dp.admin, Some("short"), &v5).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert!(
        !admin::ready(&c, dp.admin).await,
        "refused pushes must not make the pod ready"
    );

    let r = push(&c, dp.admin, Some(TOKEN), &v5).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert!(r.text().contains("\"applied\""));
    assert!(admin::ready(&c, dp.admin).await);
    assert_eq!(
        c.get(dp.proxy, "x", "/").await.unwrap().backend(),
        Some("b")
    );

    let r = push(&c, dp.admin, Some(TOKEN), &v5).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.text().contains("\"unchanged\""));

    let other = Backend::start("other").await;
    let stale = snapshot(&table_to(other.port()), 4);
    let r = push(&c, dp.admin, Some(TOKEN), &stale).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text());
    assert!(r.text().contains("\"currentVersion\":5"), "{}", r.text());
    let same_version_other_table = snapshot(&table_to(other.port()), 5);
    assert_eq!(
        push(&c, dp.admin, Some(TOKEN), &same_version_other_table)
            .await
            .status,
        StatusCode::CONFLICT
    );

    let r = push_raw(&c, dp.admin, Some(TOKEN), Bytes::from_static(b"{not json")).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let mut bad_hash = snapshot(&table_to(other.port()), 6);
    bad_hash.hash = "0".repeat(64);
    let r = push(&c, dp.admin, Some(TOKEN), &bad_hash).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.text().contains("does not match"), "{}", r.text());
    let mut empty = snapshot(&table_to(other.port()), 7);
    empty.table.virtual_hosts.clear();
    empty.hash = empty.table.content_hash();
    let r = push(&c, dp.admin, Some(TOKEN), &empty).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.text().contains("allowEmpty"), "{}", r.text());
    let r = push_raw(&c, dp.admin, Some(TOKEN), Bytes::from(vec![b' '; 300_000])).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);

    // The old table stayed in force through every refusal.
    assert_eq!(
        c.get(dp.proxy, "x", "/").await.unwrap().backend(),
        Some("b")
    );
    let status = c
        .get(dp.admin, "admin", "/v1/snapshot/status")
        .await
        .unwrap();
    let s: serde_json::Value = serde_json::from_slice(&status.body).unwrap();
    assert_eq!(s["version"], 5);
    assert_eq!(s["hash"], v5.hash);

    // Every refusal is counted by reason.
    for (reason, n) in [
        ("unauthorized", 3.0),
        ("applied", 1.0),
        ("unchanged", 1.0),
        ("stale", 2.0),
        ("invalid", 3.0),
        ("too_large", 1.0),
    ] {
        let got = metric(
            &c,
            dp.admin,
            &format!("parapet_snapshot_pushes_total{{reason=\"{reason}\"}}"),
        )
        .await;
        assert_eq!(got, n, "pushes with reason {reason}");
    }
    assert_eq!(metric(&c, dp.admin, "parapet_snapshot_version ").await, 5.0);
}

fn gzip(data: &[u8]) -> Bytes {
    use std::io::Write;
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    enc.write_all(data).unwrap();
    Bytes::from(enc.finish().unwrap())
}

async fn push_gzip(
    c: &Client,
    admin: std::net::SocketAddr,
    body: Bytes,
) -> parapet_tests::client::Reply {
    push_coded(c, admin, http::Method::PUT, Some("gzip"), body).await
}

/// A push with `method` (`PUT`: a table, `PATCH`: a delta) in `coding`.
async fn push_coded(
    c: &Client,
    admin: std::net::SocketAddr,
    method: http::Method,
    coding: Option<&str>,
    body: Bytes,
) -> parapet_tests::client::Reply {
    let auth = format!("Bearer {TOKEN}");
    let content_type = if method == http::Method::PATCH {
        parapet_operator::push::DELTA_CONTENT_TYPE
    } else {
        "application/json"
    };
    let mut headers = vec![
        ("content-type", content_type),
        ("authorization", auth.as_str()),
    ];
    if let Some(coding) = coding {
        headers.push(("content-encoding", coding));
    }
    c.send(admin, method, "admin", "/v1/snapshot", &headers, body)
        .await
        .expect("admin port answers")
}

/// `GET /v1/snapshot` is the config dump: the table in force, for the token holder only,
/// with private keys and API-key hashes replaced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_config_dump_shows_the_table_in_force_without_its_secrets() {
    use parapet_crds::snapshot::{
        ApiKeyCheck, CertificatePair, HashedApiKey, KeySource, RouteAction, Table, redact::REDACTED,
    };
    let dir = tempfile::tempdir().unwrap();
    let dp = Dataplane::start(&["--snapshot-token-file", &token_file(&dir)]);
    let c = Client::new();
    let b = Backend::start("b").await;
    let dump = |token: Option<&'static str>| {
        let c = &c;
        async move {
            let auth = token.map(|t| format!("Bearer {t}")).unwrap_or_default();
            let headers: Vec<(&str, &str)> = match token {
                Some(_) => vec![("authorization", auth.as_str())],
                None => vec![],
            };
            c.send(
                dp.admin,
                http::Method::GET,
                "admin",
                "/v1/snapshot",
                &headers,
                Bytes::new(),
            )
            .await
            .expect("admin port answers")
        }
    };
    let r = dump(Some(TOKEN)).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text());

    let mut v3 = snapshot(&table_to(b.port()), 3);
    let pki = parapet_tests::pki::Pki::new("dump-ca");
    let (cert_pem, key_pem) = pki.leaf(&["api.example.com"]);
    let mut vh = v3.table.virtual_hosts[0].clone();
    vh.domain = "api.example.com".into();
    vh.tls = Some(CertificatePair {
        cert_pem,
        key_pem: key_pem.clone(),
    });
    let RouteAction::Forward(f) = &mut vh.routes[0].action else {
        panic!("the route forwards")
    };
    f.api_keys = Some(ApiKeyCheck {
        source: KeySource::Header("x-api-key".into()),
        keys: vec![HashedApiKey {
            id: "keys/alice".into(),
            salt: "5a175a17".into(),
            sha256: hex_of_key(),
        }],
    });
    v3.table.virtual_hosts.insert(0, vh);
    v3.hash = v3.table.content_hash();
    let r = push(&c, dp.admin, Some(TOKEN), &v3).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());

    for token in [None, Some("wrong-token-0123456789")] {
        let r = dump(token).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.text());
        assert!(!r.text().contains("api.example.com"), "{}", r.text());
    }
    let r = dump(Some(TOKEN)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let text = r.text();
    let key_body = key_pem.lines().nth(1).expect("a PEM body line");
    assert!(!text.contains(key_body), "the private key leaked: {text}");
    assert!(!text.contains("PRIVATE KEY"), "{text}");
    assert!(
        !text.contains("5a175a17") && !text.contains(&hex_of_key()),
        "{text}"
    );
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["version"], 3);
    assert_eq!(v["hash"], v3.hash);
    assert_eq!(v["configHash"], v3.table.config_hash());
    let shown: Table = serde_json::from_value(v["table"].clone()).unwrap();
    assert_eq!(shown, v3.table.redacted());
    assert_eq!(text.matches(REDACTED).count(), 3, "{text}");
}

fn hex_of_key() -> String {
    "c0ffee".repeat(10) + "c0de"
}

/// A delta (`PATCH`) applies to the table the pod holds and nothing else: one made
/// against another base, or one that does not make the table it names, is refused with
/// 412 and the table in force stays. Codings the pod does not read get 415 naming those it
/// does; a zstd bomb is refused like a gzip one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deltas_apply_to_the_table_held_and_nothing_else() {
    use parapet_crds::snapshot::wire::Coding;
    let dir = tempfile::tempdir().unwrap();
    let dp = Dataplane::start(&[
        "--snapshot-token-file",
        &token_file(&dir),
        "--max-snapshot-bytes",
        "100000",
    ]);
    let c = Client::new();
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let v1 = snapshot(&table_to(a.port()), 1);
    let v2 = snapshot(&table_to(b.port()), 2);
    let v3 = snapshot(&table_to(a.port()), 3);
    let zstd = |v: &[u8]| Bytes::from(Coding::Zstd.encode(v));
    let delta = |from, to| serde_json::to_vec(&parapet_operator::delta::diff(from, to)).unwrap();

    // A delta to a pod with no table: nothing to apply it to.
    let r = push_coded(
        &c,
        dp.admin,
        http::Method::PATCH,
        None,
        delta(&v1, &v2).into(),
    )
    .await;
    assert_eq!(r.status, StatusCode::PRECONDITION_FAILED, "{}", r.text());

    let r = push_coded(
        &c,
        dp.admin,
        http::Method::PUT,
        Some("zstd"),
        zstd(&serde_json::to_vec(&v1).unwrap()),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(
        c.get(dp.proxy, "x", "/").await.unwrap().backend(),
        Some("a")
    );

    let r = push_coded(
        &c,
        dp.admin,
        http::Method::PATCH,
        Some("zstd"),
        zstd(&delta(&v1, &v2)),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(
        c.get(dp.proxy, "x", "/").await.unwrap().backend(),
        Some("b")
    );
    let status = c
        .get(dp.admin, "admin", "/v1/snapshot/status")
        .await
        .unwrap();
    let s: serde_json::Value = serde_json::from_slice(&status.body).unwrap();
    assert_eq!(
        (s["version"].clone(), s["hash"].clone()),
        (2.into(), v2.hash.clone().into())
    );

    // Against v1 again, while the pod holds v2.
    let r = push_coded(
        &c,
        dp.admin,
        http::Method::PATCH,
        None,
        delta(&v1, &v3).into(),
    )
    .await;
    assert_eq!(r.status, StatusCode::PRECONDITION_FAILED, "{}", r.text());
    assert!(r.text().contains("holds version 2"), "{}", r.text());
    // The right base, but it names a hash it does not make.
    let mut lying = parapet_operator::delta::diff(&v2, &v3);
    lying.hash = "0".repeat(64);
    let r = push_coded(
        &c,
        dp.admin,
        http::Method::PATCH,
        None,
        serde_json::to_vec(&lying).unwrap().into(),
    )
    .await;
    assert_eq!(r.status, StatusCode::PRECONDITION_FAILED, "{}", r.text());
    // Not a delta at all.
    let r = push_coded(
        &c,
        dp.admin,
        http::Method::PATCH,
        None,
        Bytes::from_static(b"{}"),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());
    assert_eq!(
        c.get(dp.proxy, "x", "/").await.unwrap().backend(),
        Some("b")
    );

    // A coding it does not read.
    let r = push_coded(
        &c,
        dp.admin,
        http::Method::PUT,
        Some("br"),
        serde_json::to_vec(&v3).unwrap().into(),
    )
    .await;
    assert_eq!(r.status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{}", r.text());
    assert_eq!(
        r.headers.get("accept-encoding").map(|v| v.as_bytes()),
        Some(&b"zstd, gzip"[..])
    );
    // 32 MiB of spaces in a few kilobytes of zstd.
    let bomb = zstd(&vec![b' '; 32 << 20]);
    assert!(bomb.len() < 100_000, "the bomb is {} bytes", bomb.len());
    let r = push_coded(&c, dp.admin, http::Method::PUT, Some("zstd"), bomb).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", r.text());

    let r = push_coded(
        &c,
        dp.admin,
        http::Method::PATCH,
        None,
        delta(&v2, &v3).into(),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(
        c.get(dp.proxy, "x", "/").await.unwrap().backend(),
        Some("a")
    );
    assert_eq!(
        metric(
            &c,
            dp.admin,
            "parapet_snapshot_pushes_total{reason=\"delta_refused\"}"
        )
        .await,
        3.0
    );
}

/// A compressed push is limited by its decompressed size too: a small gzip that inflates
/// past `--max-snapshot-bytes` is refused as too large (413) without being inflated whole,
/// and the table in force stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gzip_bomb_is_refused_as_too_large() {
    let dir = tempfile::tempdir().unwrap();
    let dp = Dataplane::start(&[
        "--snapshot-token-file",
        &token_file(&dir),
        "--max-snapshot-bytes",
        "100000",
    ]);
    let c = Client::new();
    let b = Backend::start("b").await;

    let v1 = snapshot(&table_to(b.port()), 1);
    let r = push_gzip(&c, dp.admin, gzip(&serde_json::to_vec(&v1).unwrap())).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());

    // 32 MiB of spaces (valid JSON whitespace) in about 32 KiB: within the limit as sent.
    let bomb = gzip(&vec![b' '; 32 << 20]);
    assert!(bomb.len() < 100_000, "the bomb is {} bytes", bomb.len());
    let r = push_gzip(&c, dp.admin, bomb).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", r.text());
    assert!(r.text().contains("100000 bytes"), "{}", r.text());
    // Decompressed to just past the limit is too large as well; to within it, not.
    let r = push_gzip(&c, dp.admin, gzip(&vec![b' '; 100_001])).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", r.text());
    let r = push_gzip(&c, dp.admin, gzip(&vec![b' '; 100_000])).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());
    let r = push_gzip(&c, dp.admin, Bytes::from_static(b"not gzip")).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());

    assert_eq!(
        c.get(dp.proxy, "x", "/").await.unwrap().backend(),
        Some("b")
    );
    assert_eq!(
        metric(
            &c,
            dp.admin,
            "parapet_snapshot_pushes_total{reason=\"too_large\"}"
        )
        .await,
        2.0
    );
    assert_eq!(
        metric(
            &c,
            dp.admin,
            "parapet_snapshot_pushes_total{reason=\"invalid\"}"
        )
        .await,
        2.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_without_a_configured_token_are_refused() {
    let dp = Dataplane::start(&[]);
    let c = Client::new();
    let b = Backend::start("b").await;
    let r = push(
        &c,
        dp.admin,
        Some("anything"),
        &snapshot(&table_to(b.port()), 1),
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(r.text().contains("--snapshot-token-file"), "{}", r.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn table_swaps_under_load_drop_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let dp = Dataplane::start(&["--snapshot-token-file", &token_file(&dir)]);
    let c = Client::new();
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    // Each table sends /x to one backend and /y to the same one: a request that saw half a
    // table could not tell, but a request that saw no table would fail.
    let table = |port: u16, v: u64| snapshot(&table_to(port), v);
    assert_eq!(
        push(&c, dp.admin, Some(TOKEN), &table(a.port(), 1))
            .await
            .status,
        StatusCode::OK
    );

    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut load = Vec::new();
    for _ in 0..8 {
        let (c, stop, ok, failed, to) = (
            c.clone(),
            stop.clone(),
            ok.clone(),
            failed.clone(),
            dp.proxy,
        );
        load.push(tokio::spawn(async move {
            // Bounded: at most 2000 requests per task, and stops when told.
            for _ in 0..2000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                match c.get(to, "x", "/x").await {
                    Ok(r)
                        if r.status == StatusCode::OK && matches!(r.backend(), Some("a" | "b")) =>
                    {
                        ok.fetch_add(1, Ordering::Relaxed)
                    }
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    for v in 2..=21u64 {
        let port = if v % 2 == 0 { b.port() } else { a.port() };
        let r = push(&c, dp.admin, Some(TOKEN), &table(port, v)).await;
        assert_eq!(r.status, StatusCode::OK, "push {v}: {}", r.text());
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.await.unwrap();
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    assert_eq!(
        failed,
        0,
        "{failed} of {} requests failed across 20 swaps",
        ok + failed
    );
    assert!(ok > 100, "the load loop ran ({ok} requests)");
    assert!(
        a.hits() > 0 && b.hits() > 0,
        "both tables served: a={} b={}",
        a.hits(),
        b.hits()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_pod_serves_its_persisted_table_without_a_push() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let token = token_file(&dir);
    let b = Backend::start("persisted").await;
    let c = Client::new();
    {
        let dp = Dataplane::start(&[
            "--snapshot-token-file",
            &token,
            "--state-dir",
            state.to_str().unwrap(),
        ]);
        assert_eq!(
            push(
                &c,
                dp.admin,
                Some(TOKEN),
                &snapshot(&table_to(b.port()), 42)
            )
            .await
            .status,
            StatusCode::OK
        );
        // Dropped: killed with SIGKILL, no chance to write anything on the way out.
    }
    assert!(state.join("snapshot.json").exists());
    let dp = Dataplane::start(&[
        "--snapshot-token-file",
        &token,
        "--state-dir",
        state.to_str().unwrap(),
    ]);
    assert!(
        admin::ready(&c, dp.admin).await,
        "ready from the persisted table"
    );
    let r = c.get(dp.proxy, "x", "/").await.unwrap();
    assert_eq!(r.backend(), Some("persisted"));
    // And it still refuses to go back in time.
    assert_eq!(
        push(
            &c,
            dp.admin,
            Some(TOKEN),
            &snapshot(&table_to(b.port()), 41)
        )
        .await
        .status,
        StatusCode::CONFLICT
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_ready_and_terminating_endpoints_get_no_new_requests() {
    let dir = tempfile::tempdir().unwrap();
    let dp = Dataplane::start(&["--snapshot-token-file", &token_file(&dir)]);
    let c = Client::new();
    let (live, gone) = (Backend::start("live").await, Backend::start("gone").await);
    let yaml = format!(
        "{}{}",
        pool_yaml("p", &[live.port(), gone.port()], ""),
        route_yaml("r", "['*']", "    - backends: [{pool: p}]")
    );
    for (v, (ready, serving, terminating)) in
        [(1u64, (false, false, false)), (2, (false, true, true))]
    {
        let mut s = snapshot(&yaml, v);
        for e in &mut s.table.clusters[0].endpoints {
            if e.port == gone.port() {
                (e.ready, e.serving, e.terminating) = (ready, serving, terminating);
            }
        }
        s.hash = s.table.content_hash();
        assert_eq!(
            push(&c, dp.admin, Some(TOKEN), &s).await.status,
            StatusCode::OK
        );
        for _ in 0..30 {
            assert_eq!(
                c.get(dp.proxy, "x", "/").await.unwrap().backend(),
                Some("live")
            );
        }
    }
    assert_eq!(gone.hits(), 0);
    assert_eq!(live.hits(), 60);
}
