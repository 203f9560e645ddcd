//! The bounded store (moka: TinyLFU admission, LRU eviction, a byte budget) and request
//! coalescing: one origin fetch per key at a time, others wait for it (bounded).

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use http::HeaderMap;
use moka::{Expiry, sync::Cache};
use tokio::{sync::watch, time::Instant};

use super::{entry::Entry, key};

struct KeepFor;

impl Expiry<String, Arc<Entry>> for KeepFor {
    fn expire_after_create(
        &self,
        _: &String,
        e: &Arc<Entry>,
        _: std::time::Instant,
    ) -> Option<Duration> {
        Some(e.keep_for())
    }

    fn expire_after_update(
        &self,
        _: &String,
        e: &Arc<Entry>,
        _: std::time::Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(e.keep_for())
    }
}

pub struct Store {
    entries: Cache<String, Arc<Entry>>,
    /// Primary key → the fields its responses vary on.
    vary: Cache<String, Arc<Vec<String>>>,
    /// Whether any response with `Vary` was ever stored: until one is, a lookup needs no
    /// second map lookup (most APIs never vary).
    any_vary: AtomicBool,
    /// Keys being fetched; waiters watch for the fetch to end.
    inflight: Mutex<HashMap<String, watch::Receiver<bool>>>,
    /// Invalidations by unsafe requests (RFC 9111 §4.4): URL key → when. An entry of that
    /// URL stored before its mark is gone, whatever request headers or Vary made its key.
    marks: Cache<String, Mark>,
    any_marks: AtomicBool,
    /// When marks overflowed last, in ns after `epoch` (0: never): entries stored before
    /// are gone.
    flushed_ns: AtomicU64,
    epoch: Instant,
    /// The longest any entry may stay, in ms: a mark need not outlive it.
    longest_keep_ms: AtomicU64,
}

/// Marks held at once; past this an invalidation scans the entries instead.
const MAX_MARKS: u64 = 100_000;

/// An invalidation: when, and how long it must be remembered (the longest an entry stored
/// before it could stay).
#[derive(Clone, Copy)]
struct Mark {
    at: Instant,
    keep: Duration,
}

struct MarkFor;

impl Expiry<String, Mark> for MarkFor {
    fn expire_after_create(&self, _: &String, m: &Mark, _: std::time::Instant) -> Option<Duration> {
        Some(m.keep)
    }

    fn expire_after_update(
        &self,
        _: &String,
        m: &Mark,
        _: std::time::Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(m.keep)
    }
}

/// Who fetches a missing key.
pub enum Fill {
    /// This request fetches; others wait until the guard drops.
    Leader(FillGuard),
    /// Another request fetched meanwhile; look again.
    Done,
    /// Waited the coalescing bound; go to the origin alone.
    TimedOut,
}

pub struct FillGuard {
    store: Arc<Store>,
    key: String,
    done: watch::Sender<bool>,
}

impl Drop for FillGuard {
    fn drop(&mut self) {
        let _ = self.done.send(true);
        let mut inflight = self
            .store
            .inflight
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        inflight.remove(&self.key);
    }
}

impl Store {
    pub fn new(max_bytes: u64) -> Arc<Self> {
        Arc::new(Self {
            entries: Cache::builder()
                .max_capacity(max_bytes)
                .weigher(|_k: &String, e: &Arc<Entry>| e.weight())
                .expire_after(KeepFor)
                .build(),
            vary: Cache::builder()
                .max_capacity(100_000)
                .time_to_idle(Duration::from_secs(3600))
                .build(),
            any_vary: Default::default(),
            inflight: Mutex::new(HashMap::new()),
            marks: Cache::builder()
                .max_capacity(MAX_MARKS)
                .expire_after(MarkFor)
                .build(),
            any_marks: AtomicBool::new(false),
            flushed_ns: AtomicU64::new(0),
            epoch: Instant::now(),
            longest_keep_ms: AtomicU64::new(0),
        })
    }

    /// The key under which a response for this request is stored: the primary key, or a
    /// variant of it when earlier responses said `Vary`.
    pub fn storage_key<'a>(
        &self,
        primary: &'a str,
        request_headers: &HeaderMap,
    ) -> std::borrow::Cow<'a, str> {
        if !self.any_vary.load(Ordering::Acquire) {
            return primary.into();
        }
        match self.vary.get(primary) {
            Some(fields) if !fields.is_empty() => {
                key::variant_key(primary, &fields, request_headers).into()
            }
            _ => primary.into(),
        }
    }

    pub fn get(&self, key: &str) -> Option<Arc<Entry>> {
        let e = self.entries.get(key)?;
        if self.any_marks.load(Ordering::Acquire) && self.invalidated(&e, key) {
            self.entries.invalidate(key);
            return None;
        }
        Some(e)
    }

    /// Whether an unsafe request (its URL's mark, or a flush) came after the entry.
    fn invalidated(&self, e: &Entry, key: &str) -> bool {
        let flushed = self.flushed_ns.load(Ordering::Acquire);
        if flushed != 0 && e.stored <= self.epoch + Duration::from_nanos(flushed) {
            return true;
        }
        self.marks
            .get(key::url_of(key))
            .is_some_and(|mark| e.stored <= mark.at)
    }

    /// Drops one entry.
    pub fn invalidate_key(&self, key: &str) {
        self.entries.invalidate(key);
    }

    /// Invalidates every entry of a URL key (all its variants), from now on. `url_is_key`:
    /// the policy adds no request headers to its keys, so the URL key is the primary key and
    /// the Vary map says whether it has variants to chase.
    pub fn invalidate(&self, url_key: &str, url_is_key: bool) {
        self.entries.invalidate(url_key);
        if url_is_key && !self.vary.contains_key(url_key) {
            // No variants: the one entry there was is gone, nothing is left to mark.
            return;
        }
        let keep = Duration::from_millis(self.longest_keep_ms.load(Ordering::Relaxed));
        if keep.is_zero() {
            return;
        }
        if self.marks.entry_count() >= MAX_MARKS * 9 / 10 {
            // Too many marks to hold: everything stored until now goes instead, at the cost
            // of one atomic per lookup, rather than a scan of the store per unsafe request.
            let since = Instant::now().saturating_duration_since(self.epoch);
            let nanos = u64::try_from(since.as_nanos()).unwrap_or(u64::MAX).max(1);
            self.flushed_ns.store(nanos, Ordering::Release);
            self.marks.invalidate_all();
            self.any_marks.store(true, Ordering::Release);
            tracing::warn!(
                "cache: too many invalidated URLs to track; every entry stored until now is dropped"
            );
            return;
        }
        let mark = Mark {
            at: Instant::now(),
            keep,
        };
        self.marks.insert(url_key.to_string(), mark);
        self.any_marks.store(true, Ordering::Release);
    }

    /// Stores a response; `vary` are the response's Vary fields.
    pub fn insert(
        &self,
        primary: &str,
        request_headers: &HeaderMap,
        vary: Vec<String>,
        entry: Entry,
    ) -> Arc<Entry> {
        let key = if vary.is_empty() {
            self.vary.invalidate(primary);
            primary.to_string()
        } else {
            let k = key::variant_key(primary, &vary, request_headers);
            self.vary.insert(primary.to_string(), Arc::new(vary));
            // After the insert: a reader that sees the flag finds the fields.
            self.any_vary.store(true, Ordering::Release);
            k
        };
        self.note_keep(&entry);
        let e = Arc::new(entry);
        self.entries.insert(key, e.clone());
        e
    }

    fn note_keep(&self, e: &Entry) {
        let ms = u64::try_from(e.keep_for().as_millis()).unwrap_or(u64::MAX);
        self.longest_keep_ms.fetch_max(ms, Ordering::Relaxed);
    }

    pub fn replace(&self, key: &str, entry: Entry) -> Arc<Entry> {
        self.note_keep(&entry);
        let e = Arc::new(entry);
        self.entries.insert(key.to_string(), e.clone());
        e
    }

    /// Removes every entry whose key matches; returns how many.
    pub fn purge(&self, matches: impl Fn(&str) -> bool) -> usize {
        let keys: Vec<Arc<String>> = self
            .entries
            .iter()
            .filter(|(k, _)| matches(k))
            .map(|(k, _)| k)
            .collect();
        for k in &keys {
            self.entries.invalidate(k.as_str());
        }
        keys.len()
    }

    pub fn weighted_size(&self) -> u64 {
        self.entries.run_pending_tasks();
        self.entries.weighted_size()
    }

    pub fn entry_count(&self) -> u64 {
        self.entries.entry_count()
    }

    /// Becomes the one fetcher of `key`, or waits (at most `wait`) for the current one.
    pub async fn fill(self: &Arc<Self>, key: &str, wait: Duration) -> Fill {
        let mut rx = {
            let mut inflight = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
            match inflight.get(key) {
                Some(rx) => rx.clone(),
                None => {
                    let (tx, rx) = watch::channel(false);
                    inflight.insert(key.to_string(), rx);
                    return Fill::Leader(FillGuard {
                        store: self.clone(),
                        key: key.to_string(),
                        done: tx,
                    });
                }
            }
        };
        if wait.is_zero() {
            return Fill::TimedOut;
        }
        match tokio::time::timeout(wait, rx.wait_for(|done| *done)).await {
            Ok(_) => Fill::Done,
            Err(_) => Fill::TimedOut,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use bytes::Bytes;
    use http::StatusCode;

    use super::*;
    use crate::cache::freshness::Lifetime;

    fn entry(body: usize) -> Entry {
        Entry::new(
            StatusCode::OK,
            HeaderMap::new(),
            Bytes::from(vec![b'x'; body]),
            Lifetime {
                freshness: Duration::from_secs(60),
                stale_while_revalidate: Duration::ZERO,
                stale_if_error: Duration::ZERO,
                heuristic: false,
            },
            Duration::ZERO,
        )
    }

    #[test]
    fn the_byte_budget_holds_under_a_stream_of_distinct_large_bodies() {
        let store = Store::new(1 << 20);
        let h = HeaderMap::new();
        for i in 0..2000 {
            store.insert(&format!("k{i}"), &h, vec![], entry(10_000));
        }
        let size = store.weighted_size();
        assert!(size <= 1 << 20, "{size} bytes held for a 1 MiB budget");
        assert!(
            size > 500_000,
            "the cache still holds a useful amount: {size}"
        );
    }

    #[test]
    fn vary_selects_the_variant() {
        let store = Store::new(1 << 20);
        let mut gzip = HeaderMap::new();
        gzip.insert("accept-encoding", "gzip".parse().unwrap());
        let plain = HeaderMap::new();
        store.insert("p", &gzip, vec!["accept-encoding".into()], entry(1));
        assert!(store.get(&store.storage_key("p", &gzip)).is_some());
        assert!(store.get(&store.storage_key("p", &plain)).is_none());
    }

    #[tokio::test]
    async fn one_fetch_per_key_others_wait() {
        let store = Store::new(1 << 20);
        let fetches = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..50 {
            let (store, fetches) = (store.clone(), fetches.clone());
            tasks.push(tokio::spawn(async move {
                loop {
                    if store.get("k").is_some() {
                        return;
                    }
                    match store.fill("k", Duration::from_secs(5)).await {
                        Fill::Leader(_guard) => {
                            fetches.fetch_add(1, Ordering::SeqCst);
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            store.insert("k", &HeaderMap::new(), vec![], entry(1));
                            return;
                        }
                        Fill::Done => continue,
                        Fill::TimedOut => panic!("timed out"),
                    }
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(fetches.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn waiting_is_bounded() {
        let store = Store::new(1 << 20);
        let Fill::Leader(guard) = store.fill("k", Duration::from_millis(100)).await else {
            panic!("first caller leads")
        };
        assert!(matches!(
            store.fill("k", Duration::from_millis(100)).await,
            Fill::TimedOut
        ));
        drop(guard);
        assert!(matches!(
            store.fill("k", Duration::from_millis(100)).await,
            Fill::Leader(_)
        ));
    }

    #[test]
    fn invalidation_reaches_every_variant_and_only_earlier_entries() {
        let store = Store::new(1 << 20);
        let none = HeaderMap::new();
        let mut gzip = HeaderMap::new();
        gzip.insert("accept-encoding", "gzip".parse().unwrap());
        // A URL that is its own key.
        store.insert("u", &none, vec![], entry(1));
        store.invalidate("u", true);
        assert!(store.get("u").is_none());
        // Variants of a URL: their keys are not the URL, a mark finds them.
        let url = "p\nGET\nhttp://h/v";
        store.insert(url, &gzip, vec!["accept-encoding".into()], entry(1));
        let variant = store.storage_key(url, &gzip).into_owned();
        assert!(store.get(&variant).is_some());
        store.invalidate(url, true);
        assert!(store.get(&variant).is_none());
        store.insert(url, &gzip, vec!["accept-encoding".into()], entry(1));
        assert!(store.get(&variant).is_some(), "stored after the mark: kept");
        // Keys with request headers after the URL.
        let keyed = "p\nGET\nhttp://h/a\nx-acct:1";
        store.insert(keyed, &none, vec![], entry(1));
        store.invalidate("p\nGET\nhttp://h/a", false);
        assert!(store.get(keyed).is_none());
    }

    #[test]
    fn too_many_marks_drop_everything_stored_before() {
        let store = Store::new(1 << 20);
        let none = HeaderMap::new();
        store.insert("old\nGET\nhttp://h/x\nk:1", &none, vec![], entry(1));
        for i in 0..MAX_MARKS {
            store.invalidate(&format!("m\nGET\nhttp://h/{i}"), false);
            if i % 10_000 == 0 {
                store.marks.run_pending_tasks();
            }
            if store.flushed_ns.load(Ordering::Acquire) != 0 {
                break;
            }
        }
        assert_ne!(
            store.flushed_ns.load(Ordering::Acquire),
            0,
            "the marks overflowed"
        );
        assert!(store.get("old\nGET\nhttp://h/x\nk:1").is_none());
        store.insert("new\nGET\nhttp://h/x\nk:1", &none, vec![], entry(1));
        assert!(store.get("new\nGET\nhttp://h/x\nk:1").is_some());
    }

    #[test]
    fn purge_by_prefix() {
        let store = Store::new(1 << 20);
        let h = HeaderMap::new();
        store.insert("a/1", &h, vec![], entry(1));
        store.insert("a/2", &h, vec![], entry(1));
        store.insert("b/1", &h, vec![], entry(1));
        assert_eq!(store.purge(|k| k.starts_with("a/")), 2);
        assert!(store.get("b/1").is_some());
    }
}
