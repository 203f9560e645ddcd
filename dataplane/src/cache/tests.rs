//! The cache layer against a fake origin that counts its requests.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use parapet_crds::snapshot::{CacheMode, CachePolicy};

use super::{Cache, Origin};
use crate::proxy::body::{BoxError, ProxyBody};

type Answer = Box<
    dyn Fn(&Request<ProxyBody>, usize) -> (u16, Vec<(&'static str, String)>, String) + Send + Sync,
>;

#[derive(Clone)]
struct FakeOrigin {
    hits: Arc<AtomicUsize>,
    answer: Arc<Answer>,
    delay: Duration,
    seen: Arc<Mutex<Vec<http::HeaderMap>>>,
}

impl FakeOrigin {
    fn new(
        answer: impl Fn(&Request<ProxyBody>, usize) -> (u16, Vec<(&'static str, String)>, String)
        + Send
        + Sync
        + 'static,
    ) -> Self {
        Self {
            hits: Arc::default(),
            answer: Arc::new(Box::new(answer)),
            delay: Duration::ZERO,
            seen: Arc::default(),
        }
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

impl Origin for FakeOrigin {
    async fn fetch(&self, req: Request<ProxyBody>) -> Response<ProxyBody> {
        let n = self.hits.fetch_add(1, Ordering::SeqCst) + 1;
        self.seen.lock().unwrap().push(req.headers().clone());
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        let (status, headers, body) = (self.answer)(&req, n);
        let mut r = Response::new(
            Full::new(Bytes::from(body))
                .map_err(|n| -> BoxError { match n {} })
                .boxed(),
        );
        *r.status_mut() = StatusCode::from_u16(status).unwrap();
        for (k, v) in headers {
            r.headers_mut().insert(k, v.parse().unwrap());
        }
        r
    }
}

fn policy(mode: CacheMode) -> Arc<CachePolicy> {
    Arc::new(CachePolicy {
        name: "bank/p".into(),
        mode,
        ttl_ms: 5_000,
        min_ttl_ms: 1_000,
        max_ttl_ms: 60_000,
        adaptive_ttl: false,
        refresh_ahead: false,
        stale_while_revalidate_ms: 0,
        stale_if_error_ms: 0,
        include_query: true,
        query_params: vec![],
        exclude_query_params: vec![],
        key_headers: vec![],
        methods: vec!["GET".into(), "HEAD".into()],
        statuses: vec![200, 404],
        max_entry_bytes: 1 << 20,
        ignore_origin_no_store: false,
        cache_authorized: false,
        coalesce_timeout_ms: 5_000,
        ..CachePolicy::default()
    })
}

fn get(path: &str, headers: &[(&str, &str)]) -> http::request::Parts {
    let mut b = Request::get(path);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(()).unwrap().into_parts().0
}

async fn call(
    cache: &Arc<Cache>,
    p: &Arc<CachePolicy>,
    parts: http::request::Parts,
    origin: &FakeOrigin,
) -> (String, String, String) {
    let r = cache.serve(p, parts, "http", "api", origin.clone()).await;
    let x = r
        .headers()
        .get("x-cache")
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    let age = r
        .headers()
        .get("age")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let body =
        String::from_utf8(r.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
    (x, body, age)
}

#[tokio::test(start_paused = true)]
async fn fixed_mode_hits_until_ttl_then_refetches() {
    let cache = Arc::new(Cache::new(1 << 20, Default::default()));
    let p = policy(CacheMode::Fixed);
    let origin = FakeOrigin::new(|_, n| {
        (
            200,
            vec![("cache-control", "no-cache".into())],
            format!("v{n}"),
        )
    });
    assert_eq!(call(&cache, &p, get("/b", &[]), &origin).await.0, "MISS");
    let (x, body, _) = call(&cache, &p, get("/b", &[]), &origin).await;
    assert_eq!((x.as_str(), body.as_str()), ("HIT", "v1"));
    tokio::time::advance(Duration::from_secs(3)).await;
    let (x, _, age) = call(&cache, &p, get("/b", &[]), &origin).await;
    assert_eq!((x.as_str(), age.as_str()), ("HIT", "3"));
    tokio::time::advance(Duration::from_secs(3)).await;
    let (x, body, _) = call(&cache, &p, get("/b", &[]), &origin).await;
    assert_eq!((x.as_str(), body.as_str()), ("MISS", "v2"));
    assert_eq!(origin.hits(), 2);
    // HEAD is answered from GET's entry, without a body.
    let (x, body, _) = call(
        &cache,
        &p,
        Request::head("/b").body(()).unwrap().into_parts().0,
        &origin,
    )
    .await;
    assert_eq!((x.as_str(), body.as_str()), ("HIT", ""));
}

#[tokio::test(start_paused = true)]
async fn auto_mode_follows_max_age_and_revalidates_with_etag() {
    let cache = Arc::new(Cache::new(1 << 20, Default::default()));
    let p = policy(CacheMode::Auto);
    let origin = FakeOrigin::new(|req, _| {
        if req
            .headers()
            .get("if-none-match")
            .is_some_and(|v| v == "\"e1\"")
        {
            (
                304,
                vec![
                    ("etag", "\"e1\"".into()),
                    ("cache-control", "max-age=2".into()),
                ],
                String::new(),
            )
        } else {
            (
                200,
                vec![
                    ("etag", "\"e1\"".into()),
                    ("cache-control", "max-age=2".into()),
                ],
                "body".into(),
            )
        }
    });
    assert_eq!(call(&cache, &p, get("/a", &[]), &origin).await.0, "MISS");
    assert_eq!(call(&cache, &p, get("/a", &[]), &origin).await.0, "HIT");
    tokio::time::advance(Duration::from_millis(2500)).await;
    let (x, body, _) = call(&cache, &p, get("/a", &[]), &origin).await;
    assert_eq!((x.as_str(), body.as_str()), ("REVALIDATED", "body"));
    assert_eq!(
        origin.seen.lock().unwrap().last().unwrap()["if-none-match"],
        "\"e1\""
    );
    assert_eq!(call(&cache, &p, get("/a", &[]), &origin).await.0, "HIT");
    assert_eq!(origin.hits(), 2);
}

#[tokio::test(start_paused = true)]
async fn no_cache_and_no_store_are_honoured_in_auto_mode() {
    let cache = Arc::new(Cache::new(1 << 20, Default::default()));
    let p = policy(CacheMode::Auto);
    let no_store = FakeOrigin::new(|_, n| {
        (
            200,
            vec![("cache-control", "no-store".into())],
            format!("{n}"),
        )
    });
    for _ in 0..3 {
        assert_eq!(call(&cache, &p, get("/ns", &[]), &no_store).await.0, "MISS");
    }
    assert_eq!(no_store.hits(), 3);
    let no_cache = FakeOrigin::new(|_, n| {
        (
            200,
            vec![("cache-control", "no-cache".into())],
            format!("{n}"),
        )
    });
    for _ in 0..3 {
        assert_eq!(call(&cache, &p, get("/nc", &[]), &no_cache).await.0, "MISS");
    }
    assert_eq!(no_cache.hits(), 3, "no-cache: every use goes to the origin");
}

#[tokio::test]
async fn concurrent_misses_make_exactly_one_origin_request() {
    let cache = Arc::new(Cache::new(1 << 20, Default::default()));
    let p = policy(CacheMode::Fixed);
    let mut origin = FakeOrigin::new(|_, _| (200, vec![], "shared".into()));
    origin.delay = Duration::from_millis(100);
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let (cache, p, origin) = (cache.clone(), p.clone(), origin.clone());
        tasks.push(tokio::spawn(async move {
            call(&cache, &p, get("/hot", &[]), &origin).await.1
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), "shared");
    }
    assert_eq!(origin.hits(), 1);
    assert!(
        cache.metrics.coalesced.get() >= 90,
        "{}",
        cache.metrics.coalesced.get()
    );
}

#[tokio::test(start_paused = true)]
async fn stale_if_error_serves_while_the_origin_is_down_then_gives_up() {
    let cache = Arc::new(Cache::new(1 << 20, Default::default()));
    let mut pol = (*policy(CacheMode::Fixed)).clone();
    pol.stale_if_error_ms = 60_000;
    let p = Arc::new(pol);
    let down = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let d = down.clone();
    let origin = FakeOrigin::new(move |_, _| {
        if d.load(Ordering::SeqCst) {
            (503, vec![], "down".into())
        } else {
            (200, vec![], "balance=10".into())
        }
    });
    assert_eq!(call(&cache, &p, get("/bal", &[]), &origin).await.0, "MISS");
    down.store(true, Ordering::SeqCst);
    tokio::time::advance(Duration::from_secs(30)).await;
    let (x, body, _) = call(&cache, &p, get("/bal", &[]), &origin).await;
    assert_eq!((x.as_str(), body.as_str()), ("STALE", "balance=10"));
    tokio::time::advance(Duration::from_secs(40)).await;
    let (x, body, _) = call(&cache, &p, get("/bal", &[]), &origin).await;
    assert_eq!(
        (x.as_str(), body.as_str()),
        ("MISS", "down"),
        "past staleIfError the error shows"
    );
}

#[tokio::test]
async fn private_requests_and_responses_are_never_shared() {
    let cache = Arc::new(Cache::new(1 << 20, Default::default()));
    let p = policy(CacheMode::Fixed);
    let origin = FakeOrigin::new(|req, _| {
        let who = req
            .headers()
            .get("authorization")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        (200, vec![], format!("secret of {who}"))
    });
    let (x, body, _) = call(
        &cache,
        &p,
        get("/me", &[("authorization", "Bearer alice")]),
        &origin,
    )
    .await;
    assert_eq!(
        (x.as_str(), body.as_str()),
        ("BYPASS", "secret of Bearer alice")
    );
    let (x, body, _) = call(
        &cache,
        &p,
        get("/me", &[("authorization", "Bearer bob")]),
        &origin,
    )
    .await;
    assert_eq!(
        (x.as_str(), body.as_str()),
        ("BYPASS", "secret of Bearer bob")
    );
    let (x, _, _) = call(
        &cache,
        &p,
        get("/me", &[("cookie", "session=alice")]),
        &origin,
    )
    .await;
    assert_eq!(x, "BYPASS");
    let cookie =
        FakeOrigin::new(|_, n| (200, vec![("set-cookie", format!("s={n}"))], format!("{n}")));
    assert_eq!(call(&cache, &p, get("/sc", &[]), &cookie).await.0, "MISS");
    assert_eq!(
        call(&cache, &p, get("/sc", &[]), &cookie).await.0,
        "MISS",
        "Set-Cookie responses are not stored"
    );
    // Opted in and keyed on the credential: each user gets their own entry.
    let mut pol = (*p).clone();
    pol.cache_authorized = true;
    pol.key_headers = vec!["authorization".into()];
    let p = Arc::new(pol);
    call(
        &cache,
        &p,
        get("/me2", &[("authorization", "Bearer alice")]),
        &origin,
    )
    .await;
    let (x, body, _) = call(
        &cache,
        &p,
        get("/me2", &[("authorization", "Bearer bob")]),
        &origin,
    )
    .await;
    assert_eq!(
        (x.as_str(), body.as_str()),
        ("MISS", "secret of Bearer bob")
    );
    let (x, body, _) = call(
        &cache,
        &p,
        get("/me2", &[("authorization", "Bearer alice")]),
        &origin,
    )
    .await;
    assert_eq!(
        (x.as_str(), body.as_str()),
        ("HIT", "secret of Bearer alice")
    );
}

#[tokio::test(start_paused = true)]
async fn stale_while_revalidate_answers_at_once_and_refreshes_in_the_background() {
    let cache = Arc::new(Cache::new(1 << 20, Default::default()));
    let mut pol = (*policy(CacheMode::Fixed)).clone();
    pol.stale_while_revalidate_ms = 10_000;
    let p = Arc::new(pol);
    let origin = FakeOrigin::new(|_, n| (200, vec![], format!("v{n}")));
    call(&cache, &p, get("/s", &[]), &origin).await;
    tokio::time::advance(Duration::from_secs(6)).await;
    let (x, body, _) = call(&cache, &p, get("/s", &[]), &origin).await;
    assert_eq!((x.as_str(), body.as_str()), ("STALE", "v1"));
    // Let the background refresh run.
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    let (x, body, _) = call(&cache, &p, get("/s", &[]), &origin).await;
    assert_eq!((x.as_str(), body.as_str()), ("HIT", "v2"));
    assert_eq!(origin.hits(), 2);
}

#[tokio::test(start_paused = true)]
async fn refresh_ahead_keeps_a_hot_key_fresh_and_adaptive_ttl_grows_while_unchanged() {
    let cache = Arc::new(Cache::new(1 << 20, Default::default()));
    let mut pol = (*policy(CacheMode::Auto)).clone();
    pol.refresh_ahead = true;
    pol.adaptive_ttl = true;
    pol.ttl_ms = 4_000;
    let p = Arc::new(pol);
    let origin = FakeOrigin::new(|_, _| (200, vec![], "same".into()));
    assert_eq!(call(&cache, &p, get("/hot", &[]), &origin).await.0, "MISS");
    let mut misses = 0;
    // Ask every 100 ms for 60 s: a hot key is refreshed ahead of expiry, never missed.
    for _ in 0..600 {
        tokio::time::advance(Duration::from_millis(100)).await;
        let x = call(&cache, &p, get("/hot", &[]), &origin).await.0;
        if x != "HIT" {
            misses += 1;
        }
        for _ in 0..3 {
            tokio::task::yield_now().await;
        }
    }
    assert_eq!(misses, 0, "a hot key never waits on the origin");
    // With an unchanged body the TTL grew (4s → 6 → 9 → 13 → 20 → 30...), so 60 s took few
    // refreshes rather than 15.
    let refreshes = origin.hits() - 1;
    assert!(
        (2..=8).contains(&refreshes),
        "{refreshes} refreshes in 60 s"
    );
}
