//! The response cache through the real binary, against an origin that counts its requests.

use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};
use parapet_tests::{
    admin::{self, metric},
    backend::{Backend, Behaviour},
    client::Client,
    dataplane::Dataplane,
    pool_yaml, route_yaml, wait_for,
};

const TOKEN: &str = "cache-test-token-0123456789";

async fn start(origin: &Backend, policy: &str, extra: &[&str]) -> (Dataplane, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.yaml");
    let token = dir.path().join("token");
    std::fs::write(&token, TOKEN).unwrap();
    let yaml = format!(
        "{}---\napiVersion: parapet.dev/v1alpha1\nkind: CachePolicy\nmetadata: {{name: p}}\nspec: {policy}\n{}",
        pool_yaml("origin", &[origin.port()], ""),
        route_yaml(
            "r",
            "['*']",
            "    - backends: [{pool: origin}]\n      cachePolicyRef: {name: p}"
        )
    );
    std::fs::write(&cfg, yaml).unwrap();
    let mut args = vec![
        "--config",
        cfg.to_str().unwrap(),
        "--snapshot-token-file",
        token.to_str().unwrap(),
    ];
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

fn x_cache(r: &parapet_tests::client::Reply) -> &str {
    r.headers
        .get("x-cache")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixed_mode_answers_from_the_cache_until_ttl() {
    let origin = Backend::start("origin").await;
    origin.set(Behaviour {
        count_in_body: true,
        ..Default::default()
    });
    let (dp, _d) = start(&origin, "{mode: Fixed, ttl: 1s}", &[]).await;
    let c = Client::new();
    let first = c.get(dp.proxy, "x", "/accounts/1/balance").await.unwrap();
    assert_eq!((first.status, x_cache(&first)), (StatusCode::OK, "MISS"));
    // A miss goes upstream like any proxied request: forwarding headers and all.
    let up = origin.last_headers().unwrap();
    assert_eq!(up["x-forwarded-for"], "127.0.0.1");
    assert_eq!(up["x-forwarded-host"], "x");
    assert!(
        up.contains_key("forwarded") && up.contains_key("via"),
        "{up:?}"
    );
    for _ in 0..20 {
        let r = c.get(dp.proxy, "x", "/accounts/1/balance").await.unwrap();
        assert_eq!(x_cache(&r), "HIT");
        assert_eq!(r.body, first.body);
        assert!(r.headers.contains_key("age") && r.headers.contains_key("x-request-id"));
    }
    assert_eq!(origin.hits(), 1);
    // Other keys are other entries.
    assert_eq!(
        x_cache(&c.get(dp.proxy, "x", "/accounts/2/balance").await.unwrap()),
        "MISS"
    );
    // Past the TTL the origin is asked again.
    wait_for("the entry to expire", Duration::from_secs(5), || async {
        let r = c.get(dp.proxy, "x", "/accounts/1/balance").await.unwrap();
        (x_cache(&r) == "MISS").then_some(())
    })
    .await;
    assert_eq!(origin.hits(), 3);
    assert!(
        metric(
            &c,
            dp.admin,
            "parapet_cache_lookups_total{policy=\"default/p\",result=\"hit\"}"
        )
        .await
            >= 20.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_concurrent_misses_make_one_origin_request() {
    let origin = Backend::start("origin").await;
    origin.set(Behaviour {
        delay: Duration::from_millis(300),
        ..Default::default()
    });
    let (dp, _d) = start(&origin, "{mode: Fixed, ttl: 30s}", &[]).await;
    let c = Client::new();
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let (c, to) = (c.clone(), dp.proxy);
        tasks.push(tokio::spawn(async move {
            c.get(to, "x", "/hot").await.unwrap().status
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), StatusCode::OK);
    }
    assert_eq!(
        origin.hits(),
        1,
        "one origin fetch for 100 concurrent misses"
    );
    assert!(metric(&c, dp.admin, "parapet_cache_coalesced_waits_total").await >= 50.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_mode_follows_max_age_and_no_store() {
    let origin = Backend::start("origin").await;
    origin.set(Behaviour {
        headers: vec![("cache-control", "max-age=60".into())],
        ..Default::default()
    });
    let (dp, _d) = start(&origin, "{mode: Auto}", &[]).await;
    let c = Client::new();
    c.get(dp.proxy, "x", "/a").await.unwrap();
    assert_eq!(x_cache(&c.get(dp.proxy, "x", "/a").await.unwrap()), "HIT");
    origin.set(Behaviour {
        headers: vec![("cache-control", "no-store".into())],
        ..Default::default()
    });
    c.get(dp.proxy, "x", "/b").await.unwrap();
    assert_eq!(x_cache(&c.get(dp.proxy, "x", "/b").await.unwrap()), "MISS");
    assert_eq!(origin.hits(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_if_error_answers_while_the_origin_is_down() {
    let origin = Backend::start("origin").await;
    let (dp, _d) = start(&origin, "{mode: Fixed, ttl: 200ms, staleIfError: 1m}", &[]).await;
    let c = Client::new();
    assert_eq!(
        c.get(dp.proxy, "x", "/balance").await.unwrap().status,
        StatusCode::OK
    );
    origin.stop();
    tokio::time::sleep(Duration::from_millis(300)).await; // let the entry go stale
    for _ in 0..10 {
        let r = c.get(dp.proxy, "x", "/balance").await.unwrap();
        assert_eq!((r.status, x_cache(&r)), (StatusCode::OK, "STALE"));
        assert_eq!(&r.body[..], b"origin");
    }
    // A key never cached has nothing to fall back on.
    assert!(
        c.get(dp.proxy, "x", "/never")
            .await
            .unwrap()
            .status
            .is_server_error()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_bypass_and_set_cookie_is_never_stored() {
    let origin = Backend::start("origin").await;
    origin.set(Behaviour {
        count_in_body: true,
        ..Default::default()
    });
    let (dp, _d) = start(&origin, "{mode: Fixed, ttl: 1m}", &[]).await;
    let c = Client::new();
    let alice = c
        .send(
            dp.proxy,
            Method::GET,
            "x",
            "/me",
            &[("authorization", "Bearer alice")],
            Bytes::new(),
        )
        .await
        .unwrap();
    let bob = c
        .send(
            dp.proxy,
            Method::GET,
            "x",
            "/me",
            &[("authorization", "Bearer bob")],
            Bytes::new(),
        )
        .await
        .unwrap();
    assert_eq!((x_cache(&alice), x_cache(&bob)), ("BYPASS", "BYPASS"));
    assert_ne!(alice.body, bob.body);
    let up = origin.last_headers().unwrap();
    assert_eq!(up["authorization"], "Bearer bob");
    assert_eq!(up["x-forwarded-for"], "127.0.0.1");
    let anon = c.get(dp.proxy, "x", "/me").await.unwrap();
    assert_ne!(
        anon.body, alice.body,
        "an anonymous client never gets alice's answer"
    );
    origin.set(Behaviour {
        headers: vec![("set-cookie", "session=1".into())],
        ..Default::default()
    });
    c.get(dp.proxy, "x", "/cookie").await.unwrap();
    assert_eq!(
        x_cache(&c.get(dp.proxy, "x", "/cookie").await.unwrap()),
        "MISS"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_drops_entries_and_the_memory_bound_holds() {
    let origin = Backend::start("origin").await;
    origin.set(Behaviour {
        body: Some(Bytes::from(vec![b'x'; 256 * 1024])),
        ..Default::default()
    });
    let (dp, _d) = start(
        &origin,
        "{mode: Fixed, ttl: 10m}",
        &["--cache-max-bytes", "8388608"],
    )
    .await;
    let c = Client::new();
    // Purge: authenticated, by policy and path prefix.
    c.get(dp.proxy, "x", "/keep/1").await.unwrap();
    c.get(dp.proxy, "x", "/drop/1").await.unwrap();
    let purge = |body: &'static str, token: Option<&'static str>| {
        let c = c.clone();
        let admin = dp.admin;
        async move {
            let auth = token.map(|t| format!("Bearer {t}"));
            let mut h = vec![("content-type", "application/json")];
            if let Some(a) = &auth {
                h.push(("authorization", a.as_str()));
            }
            c.send(
                admin,
                Method::POST,
                "admin",
                "/v1/cache/purge",
                &h,
                Bytes::from(body),
            )
            .await
            .unwrap()
        }
    };
    assert_eq!(
        purge(r#"{"policy":"default/p","pathPrefix":"/drop"}"#, None)
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );
    let r = purge(
        r#"{"policy":"default/p","pathPrefix":"/drop"}"#,
        Some(TOKEN),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.text().contains("\"purged\":1"), "{}", r.text());
    assert_eq!(
        x_cache(&c.get(dp.proxy, "x", "/keep/1").await.unwrap()),
        "HIT"
    );
    assert_eq!(
        x_cache(&c.get(dp.proxy, "x", "/drop/1").await.unwrap()),
        "MISS"
    );

    // Then 400 distinct 256 KiB bodies (100 MiB) through an 8 MiB cache.
    for i in 0..400 {
        assert_eq!(
            c.get(dp.proxy, "x", &format!("/big/{i}"))
                .await
                .unwrap()
                .status,
            StatusCode::OK
        );
    }
    let bytes = metric(&c, dp.admin, "parapet_cache_bytes ").await;
    assert!(
        bytes <= 8.0 * 1024.0 * 1024.0,
        "cache holds {bytes} bytes for an 8 MiB bound"
    );
    let rss_kb: f64 = std::fs::read_to_string(format!("/proc/{}/status", dp.pid()))
        .unwrap()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap();
    eprintln!(
        "CACHE_RSS_MB={:.1} after 100 MiB of distinct bodies through an 8 MiB cache",
        rss_kb / 1024.0
    );
    assert!(rss_kb < 96.0 * 1024.0, "RSS {rss_kb} kB");
    // (TinyLFU admission may refuse one-hit wonders once the cache is full: by design.)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_that_changes_one_policy_drops_only_its_entries() {
    let origin = Backend::start("origin").await;
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, TOKEN).unwrap();
    let dp = Dataplane::start(&["--snapshot-token-file", token.to_str().unwrap()]);
    let c = Client::new();
    let table = |ttl_a: &str, v: u64| {
        let yaml = format!(
            "{}---\napiVersion: parapet.dev/v1alpha1\nkind: CachePolicy\nmetadata: {{name: a}}\nspec: {{mode: Fixed, ttl: {ttl_a}}}\n---\napiVersion: parapet.dev/v1alpha1\nkind: CachePolicy\nmetadata: {{name: b}}\nspec: {{mode: Fixed, ttl: 10m}}\n{}",
            pool_yaml("origin", &[origin.port()], ""),
            route_yaml(
                "r",
                "['*']",
                "    - matches: [{path: {value: /a}}]\n      backends: [{pool: origin}]\n      cachePolicyRef: {name: a}\n    - matches: [{path: {value: /b}}]\n      backends: [{pool: origin}]\n      cachePolicyRef: {name: b}"
            )
        );
        parapet_tests::snapshot(&yaml, v)
    };
    assert_eq!(
        admin::push(&c, dp.admin, Some(TOKEN), &table("10m", 1))
            .await
            .status,
        StatusCode::OK
    );
    for path in ["/a", "/b"] {
        c.get(dp.proxy, "x", path).await.unwrap();
        assert_eq!(x_cache(&c.get(dp.proxy, "x", path).await.unwrap()), "HIT");
    }
    assert_eq!(
        admin::push(&c, dp.admin, Some(TOKEN), &table("5m", 2))
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        x_cache(&c.get(dp.proxy, "x", "/a").await.unwrap()),
        "MISS",
        "policy a changed"
    );
    assert_eq!(
        x_cache(&c.get(dp.proxy, "x", "/b").await.unwrap()),
        "HIT",
        "policy b did not"
    );
    // A table whose policies are unchanged keeps everything.
    let same = {
        let mut s = table("5m", 3);
        s.table.sources.clear();
        s.hash = s.table.content_hash();
        s
    };
    assert_eq!(
        admin::push(&c, dp.admin, Some(TOKEN), &same).await.status,
        StatusCode::OK
    );
    assert_eq!(x_cache(&c.get(dp.proxy, "x", "/a").await.unwrap()), "HIT");
    assert_eq!(x_cache(&c.get(dp.proxy, "x", "/b").await.unwrap()), "HIT");
}

/// Auto mode keeps stale entries that have a validator, so a later request revalidates them
/// instead of fetching them whole, and they still count against the memory bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_entries_are_kept_for_revalidation_within_the_memory_bound() {
    let origin = Backend::start("origin").await;
    origin.set(Behaviour {
        body: Some(Bytes::from(vec![b'x'; 64 * 1024])),
        // Stale as soon as it is stored: only a revalidation can use it.
        headers: vec![
            ("cache-control", "max-age=0".into()),
            ("etag", "\"v1\"".into()),
        ],
        ..Default::default()
    });
    let bound = 4u64 << 20;
    let (dp, _d) = start(
        &origin,
        "{mode: Auto}",
        &["--cache-max-bytes", &bound.to_string()],
    )
    .await;
    let c = Client::new();
    // 300 distinct 64 KiB bodies (19 MiB) through a 4 MiB cache, with one hot path among
    // them that the cache has every reason to keep.
    for i in 0..300 {
        let path = if i % 10 == 0 {
            "/hot".to_string()
        } else {
            format!("/cold/{i}")
        };
        let r = c.get(dp.proxy, "x", &path).await.unwrap();
        assert_eq!(r.status, StatusCode::OK);
        if i == 10 {
            // The second request for /hot carried the stored validator.
            let up = origin.last_headers().unwrap();
            assert_eq!(
                up.get("if-none-match").map(|v| v.as_bytes()),
                Some(&b"\"v1\""[..])
            );
        }
    }
    let bytes = metric(&c, dp.admin, "parapet_cache_bytes ").await;
    let entries = metric(&c, dp.admin, "parapet_cache_entries ").await;
    assert!(
        bytes <= bound as f64,
        "cache holds {bytes} bytes for a {bound} bound"
    );
    assert!(entries >= 10.0, "stale entries are kept: {entries}");
    let before = origin.hits();
    c.get(dp.proxy, "x", "/hot").await.unwrap();
    assert_eq!(origin.hits(), before + 1);
    let up = origin.last_headers().unwrap();
    assert_eq!(
        up.get("if-none-match").map(|v| v.as_bytes()),
        Some(&b"\"v1\""[..]),
        "the hot entry was kept, stale, and revalidated"
    );
}
