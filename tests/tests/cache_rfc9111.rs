//! The response cache against RFC 9111 (and the RFCs it leans on), through the real
//! binary: one table with a case per rule of the cache contract, each naming its RFC
//! section. Every case gets its own data plane (a fresh cache) and a scripted origin that
//! records what reaches it. All cases run; one assertion at the end lists every failure
//! with its case, RFC section and step.
//!
//! `CACHE_CASES=D4,V1` runs only the cases whose id starts with one of those prefixes.

use std::{
    fmt,
    sync::Arc,
    time::{Duration, SystemTime},
};

use bytes::Bytes;
use http::{HeaderMap, Method};
use parapet_tests::{
    client::{Client, Reply},
    pool_yaml, route_yaml,
    script_origin::{ScriptOrigin, Scripted},
    standalone, wait_for,
};
use tokio::sync::Semaphore;

/// Every request carries this Host; the route matches all hosts.
const HOST: &str = "cache.test";
const AUTO: &str = "{mode: Auto}";
/// The S rows: the policy allows stale-if-error, so only the stored response itself can
/// forbid serving it stale.
const SIE: &str = "{mode: Auto, staleIfError: 60s}";
const FIXED: &str = "{mode: Fixed, ttl: 60s}";
/// Cases at once: each runs a data-plane process, on a small machine.
const PARALLEL: usize = 8;
/// How long a step may wait for an entry to go stale.
const STALE_DEADLINE: Duration = Duration::from_secs(10);

/// One row of the table.
struct Case {
    /// The contract's row id; `/variant` when a row has independent variants, so each
    /// passes or fails on its own.
    id: &'static str,
    rfc: &'static str,
    /// The CachePolicy spec.
    policy: &'static str,
    steps: Vec<Step>,
}

/// A client request, what the origin answers if asked, and what must be true after it.
struct Step {
    method: Method,
    path: &'static str,
    headers: Vec<(&'static str, String)>,
    /// Queued on the origin before the request, in order.
    answers: Vec<Scripted>,
    /// Repeat the request while it is answered as a HIT: the entry must go stale first.
    once_stale: bool,
    status: u16,
    x_cache: XCache,
    /// Requests the origin has received once the step is done.
    upstream: usize,
    reply: Vec<Check>,
    body: Option<Bytes>,
    /// Checks on the last request the origin received.
    sent: Vec<Check>,
}

/// What `x-cache` must say.
enum XCache {
    Is(&'static str),
    /// Anything but this (or nothing), where the contract rules out one answer only.
    Not(&'static str),
    Absent,
}

const HIT: XCache = XCache::Is("HIT");
const MISS: XCache = XCache::Is("MISS");
const STALE: XCache = XCache::Is("STALE");
const REVALIDATED: XCache = XCache::Is("REVALIDATED");
/// Requests that do not go through the cache (unsafe methods).
const UNCACHED: XCache = XCache::Absent;

impl fmt::Display for XCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            XCache::Is(v) => write!(f, "{v}"),
            XCache::Not(v) => write!(f, "anything but {v}"),
            XCache::Absent => write!(f, "none"),
        }
    }
}

/// A check on a header map (the reply's, or the origin's last request's).
enum Check {
    Has(&'static str),
    Lacks(&'static str),
    /// All field lines, joined with ", ", equal this.
    Equals(&'static str, String),
    /// The list members over all field lines are exactly these, in order: one line or
    /// several mean the same (RFC 9110 §5.3).
    Members(&'static str, Vec<&'static str>),
    /// A number in `lo..hi`.
    Within(&'static str, u64, u64),
}

fn has(name: &'static str) -> Check {
    Check::Has(name)
}

fn lacks(name: &'static str) -> Check {
    Check::Lacks(name)
}

fn equals(name: &'static str, value: impl Into<String>) -> Check {
    Check::Equals(name, value.into())
}

fn members(name: &'static str, values: &[&'static str]) -> Check {
    Check::Members(name, values.to_vec())
}

fn within(name: &'static str, lo: u64, hi: u64) -> Check {
    Check::Within(name, lo, hi)
}

/// The field's lines joined with ", ", or `None` when it is absent.
fn field(h: &HeaderMap, name: &str) -> Option<String> {
    let lines: Vec<String> = h
        .get_all(name)
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .collect();
    (!lines.is_empty()).then(|| lines.join(", "))
}

impl Check {
    /// What is wrong, if anything.
    fn verify(&self, h: &HeaderMap) -> Option<String> {
        match self {
            Check::Has(n) => (!h.contains_key(*n)).then(|| format!("lacks {n}")),
            Check::Lacks(n) => h
                .contains_key(*n)
                .then(|| format!("has {n}: {:?}", field(h, n).unwrap_or_default())),
            Check::Equals(n, want) => {
                let got = field(h, n);
                (got.as_deref() != Some(want.as_str()))
                    .then(|| format!("{n}: {got:?} (want {want:?})"))
            }
            Check::Members(n, want) => {
                let got = field(h, n).unwrap_or_default();
                let got: Vec<&str> = got
                    .split(',')
                    .map(str::trim)
                    .filter(|m| !m.is_empty())
                    .collect();
                (got != *want).then(|| format!("{n} members {got:?} (want {want:?})"))
            }
            Check::Within(n, lo, hi) => {
                let got = field(h, n);
                match got.as_deref().and_then(|v| v.trim().parse::<u64>().ok()) {
                    Some(v) if (*lo..*hi).contains(&v) => None,
                    _ => Some(format!("{n}: {got:?} (want {lo}..{hi})")),
                }
            }
        }
    }
}

/// A request step; every step states the status, `x-cache` and origin request count it
/// expects.
fn request(method: Method, path: &'static str, status: u16, x: XCache, upstream: usize) -> Step {
    Step {
        method,
        path,
        headers: Vec::new(),
        answers: Vec::new(),
        once_stale: false,
        status,
        x_cache: x,
        upstream,
        reply: Vec::new(),
        body: None,
        sent: Vec::new(),
    }
}

fn get(path: &'static str, status: u16, x: XCache, upstream: usize) -> Step {
    request(Method::GET, path, status, x, upstream)
}

impl Step {
    /// A request header; given twice, two field lines.
    fn with(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    fn answer(mut self, a: Scripted) -> Self {
        self.answers.push(a);
        self
    }

    fn expect(mut self, c: Check) -> Self {
        self.reply.push(c);
        self
    }

    fn body(mut self, b: &'static str) -> Self {
        self.body = Some(Bytes::from_static(b.as_bytes()));
        self
    }

    fn sent(mut self, c: Check) -> Self {
        self.sent.push(c);
        self
    }

    fn once_stale(mut self) -> Self {
        self.once_stale = true;
        self
    }

    /// Everything wrong with the reply and the origin's view after this step.
    fn verify(&self, r: &Reply, origin: &ScriptOrigin) -> Vec<String> {
        let mut wrong = Vec::new();
        if r.status.as_u16() != self.status {
            wrong.push(format!(
                "status {} (want {})",
                r.status.as_u16(),
                self.status
            ));
        }
        let x = field(&r.headers, "x-cache");
        let x_ok = match &self.x_cache {
            XCache::Is(want) => x.as_deref() == Some(*want),
            XCache::Not(unwanted) => x.as_deref() != Some(*unwanted),
            XCache::Absent => x.is_none(),
        };
        if !x_ok {
            wrong.push(format!("x-cache {x:?} (want {})", self.x_cache));
        }
        let n = origin.count();
        if n != self.upstream {
            wrong.push(format!(
                "the origin got {n} requests so far (want {})",
                self.upstream
            ));
        }
        wrong.extend(
            self.reply
                .iter()
                .filter_map(|c| c.verify(&r.headers))
                .map(|e| format!("reply {e}")),
        );
        if let Some(want) = &self.body
            && r.body != *want
        {
            wrong.push(format!(
                "body {:?} (want {:?})",
                r.text(),
                String::from_utf8_lossy(want)
            ));
        }
        if !self.sent.is_empty() {
            match origin.last_request() {
                Some(req) => wrong.extend(
                    self.sent
                        .iter()
                        .filter_map(|c| c.verify(&req.headers))
                        .map(|e| format!("origin's last request {e}")),
                ),
                None => wrong.push("the origin got no request".into()),
            }
        }
        wrong
    }
}

/// An origin answer with these fields, in order (a name given twice: two field lines).
fn answer(status: u16, fields: &[(&str, &str)]) -> Scripted {
    fields
        .iter()
        .fold(Scripted::new(status), |s, (k, v)| s.header(k, *v))
}

fn imf(t: SystemTime) -> String {
    httpdate::fmt_http_date(t)
}

/// The IMF-fixdate's fields `[weekday, day, month, year, time]`, so the obsolete formats
/// get the same (correct) weekday.
fn date_fields(t: SystemTime) -> [String; 5] {
    let imf = imf(t);
    let f: Vec<&str> = imf.split(' ').collect();
    [
        f[0].trim_end_matches(',').to_string(),
        f[1].to_string(),
        f[2].to_string(),
        f[3].to_string(),
        f[4].to_string(),
    ]
}

/// RFC 850 format: `Sunday, 06-Nov-94 08:49:37 GMT`.
fn rfc850(t: SystemTime) -> String {
    let [wd, day, month, year, time] = date_fields(t);
    let weekday = match wd.as_str() {
        "Mon" => "Monday",
        "Tue" => "Tuesday",
        "Wed" => "Wednesday",
        "Thu" => "Thursday",
        "Fri" => "Friday",
        "Sat" => "Saturday",
        _ => "Sunday",
    };
    format!("{weekday}, {day}-{month}-{} {time} GMT", &year[2..])
}

/// asctime format: `Sun Nov  6 08:49:37 1994`.
fn asctime(t: SystemTime) -> String {
    let [wd, day, month, year, time] = date_fields(t);
    let day: u8 = day.parse().expect("day of month");
    format!("{wd} {month} {day:>2} {time} {year}")
}

const DAY: Duration = Duration::from_secs(86_400);

/// The contract, row by row (B1, the memory bound, is tested elsewhere).
fn table(now: SystemTime) -> Vec<Case> {
    let date = imf(now);
    let ten_days_ago = imf(now - 10 * DAY);
    let a_day_ago = imf(now - DAY);
    let two_days_ago = imf(now - 2 * DAY);
    let in_an_hour = now + Duration::from_secs(3600);
    let auth = "Bearer token-of-one-user";
    let digits = "0123456789";
    let mut cases = vec![
        // --- D: freshness without explicit expiry.
        Case {
            id: "D1",
            rfc: "RFC 9111 §4.2.2",
            policy: AUTO,
            steps: vec![
                get("/d1", 200, MISS, 1).answer(answer(200, &[]).body("d1")),
                get("/d1", 200, MISS, 2),
            ],
        },
        Case {
            id: "D2",
            rfc: "RFC 9111 §4.2.2",
            policy: AUTO,
            steps: vec![
                get("/d2", 200, MISS, 1).answer(
                    answer(200, &[("last-modified", &ten_days_ago), ("date", &date)]).body("d2"),
                ),
                get("/d2", 200, HIT, 1).body("d2"),
            ],
        },
        Case {
            id: "D3",
            rfc: "RFC 9111 §4.2.2, RFC 9110 §15.1",
            policy: AUTO,
            steps: vec![
                get("/d3", 500, MISS, 1).answer(
                    answer(500, &[("last-modified", &ten_days_ago), ("date", &date)]).body("d3"),
                ),
                get("/d3", 500, MISS, 2),
            ],
        },
    ];
    for (id, status) in [
        ("D4/302", 302),
        ("D4/307", 307),
        ("D4/308", 308),
        ("D4/404", 404),
        ("D4/410", 410),
    ] {
        let mut fields = vec![("cache-control", "max-age=60")];
        if status < 400 {
            fields.push(("location", "/elsewhere"));
        }
        cases.push(Case {
            id,
            rfc: "RFC 9111 §3",
            policy: AUTO,
            steps: vec![
                get("/d4", status, MISS, 1).answer(answer(status, &fields).body("d4")),
                get("/d4", status, HIT, 1).body("d4"),
            ],
        });
    }
    cases.extend([
        Case {
            id: "D5",
            rfc: "RFC 9111 §4.2.2",
            policy: "{mode: Auto, heuristicPercent: 0}",
            steps: vec![
                get("/d5", 200, MISS, 1).answer(answer(
                    200,
                    &[("last-modified", &ten_days_ago), ("date", &date)],
                )),
                get("/d5", 200, MISS, 2),
            ],
        },
        // --- A: Age.
        Case {
            id: "A1",
            rfc: "RFC 9111 §4.2.3, §5.1",
            policy: AUTO,
            steps: vec![
                get("/a1", 200, MISS, 1).answer(answer(
                    200,
                    &[("cache-control", "max-age=3600"), ("age", "100")],
                )),
                get("/a1", 200, HIT, 1).expect(within("age", 100, u64::MAX)),
            ],
        },
        Case {
            id: "A2",
            rfc: "RFC 9111 §5.1",
            policy: AUTO,
            steps: vec![
                get("/a2", 200, MISS, 1).answer(answer(
                    200,
                    &[("cache-control", "max-age=3600"), ("age", "5, 100")],
                )),
                get("/a2", 200, HIT, 1).expect(within("age", 5, 100)),
            ],
        },
        Case {
            id: "A3",
            rfc: "RFC 9111 §5.1",
            policy: AUTO,
            steps: vec![
                get("/a3", 200, MISS, 1).answer(answer(
                    200,
                    &[("cache-control", "max-age=3600"), ("age", "abc")],
                )),
                get("/a3", 200, HIT, 1).expect(within("age", 0, 10)),
            ],
        },
        Case {
            id: "A4",
            rfc: "RFC 9111 §4.2, §4.2.3",
            policy: AUTO,
            steps: vec![
                get("/a4", 200, MISS, 1).answer(
                    answer(
                        200,
                        &[
                            ("cache-control", "max-age=10"),
                            ("age", "20"),
                            ("etag", "\"a4\""),
                        ],
                    )
                    .body("old"),
                ),
                get("/a4", 200, MISS, 2)
                    .answer(
                        answer(200, &[("cache-control", "max-age=60"), ("etag", "\"a4b\"")])
                            .body("new"),
                    )
                    .sent(equals("if-none-match", "\"a4\""))
                    .body("new"),
            ],
        },
        Case {
            id: "A5",
            rfc: "RFC 9111 §4.2.3",
            policy: AUTO,
            steps: vec![
                get("/a5", 200, MISS, 1).answer(answer(
                    200,
                    &[
                        ("cache-control", "max-age=60"),
                        ("date", &imf(now - Duration::from_secs(100))),
                    ],
                )),
                get("/a5", 200, MISS, 2),
            ],
        },
        Case {
            id: "A6",
            rfc: "RFC 9111 §5.1",
            policy: AUTO,
            steps: vec![
                get("/a6", 200, MISS, 1)
                    .answer(answer(
                        200,
                        &[("cache-control", "max-age=3600"), ("age", "100")],
                    ))
                    .expect(equals("age", "100")),
            ],
        },
        // --- V: revalidation of stored responses.
        Case {
            id: "V1",
            rfc: "RFC 9111 §4.3.1",
            policy: AUTO,
            steps: vec![
                get("/v1", 200, MISS, 1).answer(stale_on_arrival("etag", "\"v1\"")),
                get("/v1", 200, REVALIDATED, 2)
                    .answer(answer(
                        304,
                        &[("cache-control", "max-age=60"), ("etag", "\"v1\"")],
                    ))
                    .sent(equals("if-none-match", "\"v1\""))
                    .body("B"),
                get("/v1", 200, HIT, 2).body("B"),
            ],
        },
        Case {
            id: "V2",
            rfc: "RFC 9111 §4.3.1",
            policy: AUTO,
            steps: vec![
                get("/v2", 200, MISS, 1).answer(stale_on_arrival("last-modified", &a_day_ago)),
                get("/v2", 200, REVALIDATED, 2)
                    .answer(answer(
                        304,
                        &[
                            ("cache-control", "max-age=60"),
                            ("last-modified", &a_day_ago),
                        ],
                    ))
                    .sent(equals("if-modified-since", a_day_ago.clone()))
                    .body("B"),
                get("/v2", 200, HIT, 2).body("B"),
            ],
        },
        Case {
            id: "V3",
            rfc: "RFC 9111 §3.2, §4.3.4",
            policy: AUTO,
            steps: vec![
                get("/v3", 200, MISS, 1).answer(stale_on_arrival("etag", "\"v3\"")),
                get("/v3", 200, REVALIDATED, 2)
                    .answer(answer(
                        304,
                        &[
                            ("cache-control", "max-age=60"),
                            ("etag", "\"v3\""),
                            ("x-multi", "1"),
                            ("x-multi", "2"),
                            ("x-extra", "new"),
                        ],
                    ))
                    .expect(members("x-multi", &["1", "2"]))
                    .expect(equals("x-extra", "new"))
                    .body("B"),
                get("/v3", 200, HIT, 2)
                    .expect(members("x-multi", &["1", "2"]))
                    .expect(equals("x-extra", "new"))
                    .body("B"),
            ],
        },
        Case {
            // The 304's lines replace every stored line of the same field, and leave the
            // others alone.
            id: "V3/replace",
            rfc: "RFC 9111 §3.2, §4.3.4",
            policy: AUTO,
            steps: vec![
                get("/v3r", 200, MISS, 1).answer(
                    answer(
                        200,
                        &[
                            ("cache-control", "max-age=10"),
                            ("age", "20"),
                            ("etag", "\"v3\""),
                            ("x-multi", "old-1"),
                            ("x-multi", "old-2"),
                            ("x-kept", "k"),
                        ],
                    )
                    .body("B"),
                ),
                get("/v3r", 200, REVALIDATED, 2)
                    .answer(answer(
                        304,
                        &[
                            ("cache-control", "max-age=60"),
                            ("etag", "\"v3\""),
                            ("x-multi", "1"),
                            ("x-multi", "2"),
                        ],
                    ))
                    .expect(equals("x-multi", "1, 2"))
                    .expect(equals("x-kept", "k")),
                get("/v3r", 200, HIT, 2)
                    .expect(equals("x-multi", "1, 2"))
                    .expect(equals("x-kept", "k"))
                    .body("B"),
            ],
        },
        Case {
            // A 5xx while validating is forwarded (§4.3.3), and the stored response stays
            // for the next validation.
            id: "V6",
            rfc: "RFC 9111 §4.3.3",
            policy: AUTO,
            steps: vec![
                get("/v6", 200, MISS, 1).answer(stale_on_arrival("etag", "\"v6\"")),
                get("/v6", 503, XCache::Not("STALE"), 2).answer(answer(503, &[])),
                get("/v6", 200, REVALIDATED, 3)
                    .answer(answer(
                        304,
                        &[("cache-control", "max-age=60"), ("etag", "\"v6\"")],
                    ))
                    .sent(equals("if-none-match", "\"v6\"")),
            ],
        },
        Case {
            // Fresh first, then stale by time: with no stale windows in the policy, the
            // entry must still be kept for revalidation. (2 s: see the S rows.)
            id: "V4",
            rfc: "RFC 9111 §4.3.1",
            policy: AUTO,
            steps: vec![
                get("/v4", 200, MISS, 1).answer(
                    answer(200, &[("cache-control", "max-age=2"), ("etag", "\"v4\"")]).body("B"),
                ),
                get("/v4", 200, HIT, 1).body("B"),
                get("/v4", 200, REVALIDATED, 2)
                    .once_stale()
                    .answer(answer(
                        304,
                        &[("cache-control", "max-age=60"), ("etag", "\"v4\"")],
                    ))
                    .sent(equals("if-none-match", "\"v4\""))
                    .body("B"),
                get("/v4", 200, HIT, 2).body("B"),
            ],
        },
        Case {
            id: "V5",
            rfc: "RFC 9111 §4.3.4",
            policy: AUTO,
            steps: vec![
                get("/v5", 200, MISS, 1).answer(stale_on_arrival("etag", "\"v1\"")),
                get("/v5", 200, MISS, 3)
                    .answer(answer(
                        304,
                        &[("cache-control", "max-age=60"), ("etag", "\"v9\"")],
                    ))
                    .answer(
                        answer(200, &[("cache-control", "max-age=60"), ("etag", "\"v9\"")])
                            .body("new"),
                    )
                    .sent(lacks("if-none-match"))
                    .sent(lacks("if-modified-since"))
                    .body("new"),
            ],
        },
    ]);
    // --- C: the client's own conditionals, answered from a fresh entry.
    for (id, inm) in [
        ("C1/strong", "\"v1\""),
        ("C1/weak", "W/\"v1\""),
        ("C1/list", "\"x\", \"v1\""),
        ("C1/star", "*"),
    ] {
        cases.push(Case {
            id,
            rfc: "RFC 9111 §4.3.2, RFC 9110 §13.1.2",
            policy: AUTO,
            steps: vec![
                get("/c1", 200, MISS, 1).answer(
                    answer(200, &[("cache-control", "max-age=60"), ("etag", "\"v1\"")]).body("c1"),
                ),
                get("/c1", 304, HIT, 1)
                    .with("if-none-match", inm)
                    .expect(equals("etag", "\"v1\""))
                    .expect(has("cache-control"))
                    .body(""),
            ],
        });
    }
    let with_lm = || {
        answer(
            200,
            &[
                ("cache-control", "max-age=60"),
                ("last-modified", &a_day_ago),
            ],
        )
        .body("c3")
    };
    cases.extend([
        Case {
            id: "C2",
            rfc: "RFC 9111 §4.3.2, RFC 9110 §13.1.2",
            policy: AUTO,
            steps: vec![
                get("/c2", 200, MISS, 1).answer(
                    answer(200, &[("cache-control", "max-age=60"), ("etag", "\"v1\"")]).body("c2"),
                ),
                get("/c2", 200, HIT, 1)
                    .with("if-none-match", "\"v2\"")
                    .body("c2"),
            ],
        },
        Case {
            id: "C3/same",
            rfc: "RFC 9111 §4.3.2, RFC 9110 §13.1.3",
            policy: AUTO,
            steps: vec![
                get("/c3", 200, MISS, 1).answer(with_lm()),
                get("/c3", 304, HIT, 1)
                    .with("if-modified-since", a_day_ago.clone())
                    .body(""),
            ],
        },
        Case {
            id: "C3/older",
            rfc: "RFC 9111 §4.3.2, RFC 9110 §13.1.3",
            policy: AUTO,
            steps: vec![
                get("/c3", 200, MISS, 1).answer(with_lm()),
                get("/c3", 200, HIT, 1)
                    .with("if-modified-since", two_days_ago.clone())
                    .body("c3"),
            ],
        },
        Case {
            id: "C4",
            rfc: "RFC 9111 §4.3.2",
            policy: AUTO,
            steps: vec![
                get("/c4", 304, MISS, 1)
                    .with("if-none-match", "\"v1\"")
                    .answer(
                        answer(200, &[("cache-control", "max-age=60"), ("etag", "\"v1\"")])
                            .body("c4"),
                    )
                    .sent(lacks("if-none-match"))
                    .body(""),
            ],
        },
        // --- I: invalidation by unsafe methods.
        Case {
            id: "I1",
            rfc: "RFC 9111 §4.4",
            policy: AUTO,
            steps: vec![
                get("/a", 200, MISS, 1).answer(fresh("a1")),
                get("/a", 200, HIT, 1).body("a1"),
                request(Method::POST, "/a", 200, UNCACHED, 2).answer(answer(200, &[])),
                get("/a", 200, MISS, 3).answer(fresh("a2")).body("a2"),
            ],
        },
        Case {
            id: "I2",
            rfc: "RFC 9111 §4.4",
            policy: AUTO,
            steps: vec![
                get("/a", 200, MISS, 1).answer(fresh("a1")),
                request(Method::POST, "/a", 500, UNCACHED, 2).answer(answer(500, &[])),
                get("/a", 200, HIT, 2).body("a1"),
            ],
        },
        Case {
            id: "I3/relative",
            rfc: "RFC 9111 §4.4",
            policy: AUTO,
            steps: vec![
                get("/a", 200, MISS, 1).answer(fresh("a1")),
                get("/c", 200, MISS, 2).answer(fresh("c1")),
                get("/a", 200, HIT, 2).body("a1"),
                get("/c", 200, HIT, 2).body("c1"),
                request(Method::PUT, "/b", 201, UNCACHED, 3).answer(answer(
                    201,
                    &[("location", "/a"), ("content-location", "/c")],
                )),
                get("/a", 200, MISS, 4).answer(fresh("a2")).body("a2"),
                get("/c", 200, MISS, 5).answer(fresh("c2")).body("c2"),
            ],
        },
        Case {
            id: "I3/absolute",
            rfc: "RFC 9111 §4.4",
            policy: AUTO,
            steps: vec![
                get("/a", 200, MISS, 1).answer(fresh("a1")),
                get("/a", 200, HIT, 1).body("a1"),
                request(Method::PUT, "/b", 201, UNCACHED, 2)
                    .answer(answer(201, &[("location", "http://cache.test/a")])),
                get("/a", 200, MISS, 3).answer(fresh("a2")).body("a2"),
            ],
        },
        Case {
            id: "I3/other-host",
            rfc: "RFC 9111 §4.4",
            policy: AUTO,
            steps: vec![
                get("/a", 200, MISS, 1).answer(fresh("a1")),
                request(Method::PUT, "/b", 201, UNCACHED, 2)
                    .answer(answer(201, &[("location", "http://other.test/a")])),
                get("/a", 200, HIT, 2).body("a1"),
            ],
        },
        // --- S: what may never be served stale, even with stale-if-error allowed.
        // Entries that must be fresh first, then stale, get 2 s, not 1: Date has whole
        // seconds, so a 1 s lifetime may be used up on arrival (never fresh: S4's rule).
        Case {
            id: "S1",
            rfc: "RFC 9111 §4.2.4, §5.2.2.4",
            policy: SIE,
            steps: vec![
                get("/s1", 200, MISS, 1).answer(
                    answer(200, &[("cache-control", "no-cache"), ("etag", "\"s1\"")]).body("s1"),
                ),
                get("/s1", 503, XCache::Not("STALE"), 2).answer(answer(503, &[])),
            ],
        },
        Case {
            id: "S2",
            rfc: "RFC 9111 §5.2.2.10",
            policy: SIE,
            steps: vec![
                get("/s2", 200, MISS, 1)
                    .answer(answer(200, &[("cache-control", "s-maxage=2")]).body("s2")),
                get("/s2", 200, HIT, 1).body("s2"),
                get("/s2", 503, XCache::Not("STALE"), 2)
                    .once_stale()
                    .answer(answer(503, &[])),
            ],
        },
        Case {
            id: "S3",
            rfc: "RFC 9111 §4.2.4, RFC 5861 §4",
            policy: SIE,
            steps: vec![
                get("/s3", 500, MISS, 1)
                    .answer(answer(500, &[("cache-control", "max-age=2")]).body("stored error")),
                get("/s3", 500, HIT, 1).body("stored error"),
                get("/s3", 503, XCache::Not("STALE"), 2)
                    .once_stale()
                    .answer(answer(503, &[]).body("now")),
            ],
        },
        Case {
            id: "S4",
            rfc: "RFC 9111 §4.2.4, RFC 5861 §4",
            policy: SIE,
            steps: vec![
                get("/s4", 200, MISS, 1).answer(
                    answer(200, &[("cache-control", "max-age=10"), ("age", "20")]).body("s4"),
                ),
                get("/s4", 503, XCache::Not("STALE"), 2).answer(answer(503, &[])),
            ],
        },
        Case {
            id: "S5",
            rfc: "RFC 9111 §4.2.4, RFC 5861 §4",
            policy: SIE,
            steps: vec![
                get("/s5", 200, MISS, 1)
                    .answer(answer(200, &[("cache-control", "max-age=2")]).body("kept")),
                get("/s5", 200, HIT, 1).body("kept"),
                get("/s5", 200, STALE, 2)
                    .once_stale()
                    .answer(answer(503, &[]))
                    .body("kept"),
            ],
        },
        // --- T: CDN-Cache-Control.
        Case {
            id: "T1",
            rfc: "RFC 9213 §2.1",
            policy: AUTO,
            steps: vec![
                get("/t1", 200, MISS, 1).answer(answer(
                    200,
                    &[
                        ("cache-control", "no-store"),
                        ("cdn-cache-control", "max-age=60"),
                    ],
                )),
                get("/t1", 200, HIT, 1),
            ],
        },
        Case {
            id: "T2",
            rfc: "RFC 9213 §2.1",
            policy: AUTO,
            steps: vec![
                get("/t2", 200, MISS, 1).answer(answer(
                    200,
                    &[
                        ("cache-control", "max-age=60"),
                        ("cdn-cache-control", "no-store"),
                    ],
                )),
                get("/t2", 200, MISS, 2),
            ],
        },
        Case {
            id: "T3",
            rfc: "RFC 9213 §2.1",
            policy: AUTO,
            steps: vec![
                get("/t3", 200, MISS, 1).answer(answer(
                    200,
                    &[
                        ("cdn-cache-control", "max-age=60,,,"),
                        ("cache-control", "no-store"),
                    ],
                )),
                get("/t3", 200, MISS, 2),
            ],
        },
    ]);
    // --- Y: Vary, matched on normalised values.
    let varied = || {
        answer(
            200,
            &[("cache-control", "max-age=60"), ("vary", "accept-encoding")],
        )
        .body("y1")
    };
    let first = || {
        get("/y1", 200, MISS, 1)
            .with("accept-encoding", "gzip, br")
            .answer(varied())
    };
    cases.extend([
        Case {
            id: "Y1/reordered",
            rfc: "RFC 9111 §4.1",
            policy: AUTO,
            steps: vec![
                first(),
                get("/y1", 200, HIT, 1)
                    .with("accept-encoding", "br,gzip")
                    .body("y1"),
            ],
        },
        Case {
            id: "Y1/case",
            rfc: "RFC 9111 §4.1",
            policy: AUTO,
            steps: vec![
                first(),
                get("/y1", 200, HIT, 1)
                    .with("accept-encoding", "GZIP,  BR")
                    .body("y1"),
            ],
        },
        Case {
            id: "Y1/lines",
            rfc: "RFC 9111 §4.1",
            policy: AUTO,
            steps: vec![
                first(),
                get("/y1", 200, HIT, 1)
                    .with("accept-encoding", "gzip")
                    .with("accept-encoding", "br")
                    .body("y1"),
            ],
        },
        Case {
            id: "Y1/other",
            rfc: "RFC 9111 §4.1",
            policy: AUTO,
            steps: vec![
                first(),
                get("/y1", 200, MISS, 2).with("accept-encoding", "deflate"),
            ],
        },
    ]);
    // --- E: Expires.
    for (id, expires) in [
        ("E1/imf-fixdate", imf(in_an_hour)),
        ("E1/rfc850", rfc850(in_an_hour)),
        ("E1/asctime", asctime(in_an_hour)),
    ] {
        cases.push(Case {
            id,
            rfc: "RFC 9110 §5.6.7, RFC 9111 §5.3",
            policy: AUTO,
            steps: vec![
                get("/e1", 200, MISS, 1)
                    .answer(answer(200, &[("date", &date), ("expires", &expires)]).body("e1")),
                get("/e1", 200, HIT, 1).body("e1"),
            ],
        });
    }
    cases.push(Case {
        id: "E2",
        rfc: "RFC 9111 §5.3",
        policy: AUTO,
        steps: vec![
            get("/e2", 200, MISS, 1).answer(answer(200, &[("expires", "0")])),
            get("/e2", 200, MISS, 2),
        ],
    });
    // --- R: ranges served from a stored full response.
    let full = || {
        get("/r", 200, MISS, 1)
            .answer(answer(200, &[("cache-control", "max-age=60"), ("etag", "\"r\"")]).body(digits))
            .body(digits)
    };
    for (id, range, content_range, body) in [
        ("R1/first-last", "bytes=2-5", "bytes 2-5/10", "2345"),
        ("R1/suffix", "bytes=-3", "bytes 7-9/10", "789"),
        ("R1/open", "bytes=7-", "bytes 7-9/10", "789"),
    ] {
        cases.push(Case {
            id,
            rfc: "RFC 9110 §14.2",
            policy: AUTO,
            steps: vec![
                full(),
                get("/r", 206, HIT, 1)
                    .with("range", range)
                    .expect(equals("content-range", content_range))
                    .body(body),
            ],
        });
    }
    cases.extend([
        Case {
            id: "R2",
            rfc: "RFC 9110 §14.2, §15.5.17",
            policy: AUTO,
            steps: vec![
                full(),
                get("/r", 416, HIT, 1)
                    .with("range", "bytes=20-")
                    .expect(equals("content-range", "bytes */10")),
            ],
        },
        Case {
            id: "R3/match",
            rfc: "RFC 9110 §13.1.5",
            policy: AUTO,
            steps: vec![
                full(),
                get("/r", 206, HIT, 1)
                    .with("range", "bytes=2-5")
                    .with("if-range", "\"r\"")
                    .expect(equals("content-range", "bytes 2-5/10"))
                    .body("2345"),
            ],
        },
        Case {
            id: "R3/other",
            rfc: "RFC 9110 §13.1.5",
            policy: AUTO,
            steps: vec![
                full(),
                get("/r", 200, HIT, 1)
                    .with("range", "bytes=2-5")
                    .with("if-range", "\"other\"")
                    .expect(lacks("content-range"))
                    .body(digits),
            ],
        },
        Case {
            id: "R4",
            rfc: "RFC 9110 §14.2",
            policy: AUTO,
            steps: vec![
                get("/r", 206, MISS, 1)
                    .with("range", "bytes=2-5")
                    .answer(answer(200, &[("cache-control", "max-age=60")]).body(digits))
                    .sent(lacks("range"))
                    .expect(equals("content-range", "bytes 2-5/10"))
                    .body("2345"),
            ],
        },
    ]);
    // --- H: requests with Authorization.
    for (id, cc, stored) in [
        ("H1/public", "public, max-age=60", true),
        ("H1/max-age-only", "max-age=60", false),
        ("H1/s-maxage", "s-maxage=60", true),
        ("H1/must-revalidate", "must-revalidate, max-age=60", true),
    ] {
        let (second_x, second_n) = if stored {
            (HIT, 1)
        } else {
            (XCache::Not("HIT"), 2)
        };
        let first_x = if stored { MISS } else { XCache::Not("HIT") };
        cases.push(Case {
            id,
            rfc: "RFC 9111 §3.5",
            policy: AUTO,
            steps: vec![
                get("/h1", 200, first_x, 1)
                    .with("authorization", auth)
                    .answer(answer(200, &[("cache-control", cc)]).body("h1")),
                get("/h1", 200, second_x, second_n)
                    .with("authorization", auth)
                    .body("h1"),
            ],
        });
    }
    // --- F: Fixed mode still honours what keeps a response private.
    for (id, rfc, name, value, stored) in [
        (
            "F1/no-store",
            "RFC 9111 §5.2.2.5",
            "cache-control",
            "no-store",
            false,
        ),
        (
            "F1/private",
            "RFC 9111 §5.2.2.7",
            "cache-control",
            "private",
            false,
        ),
        (
            "F1/set-cookie",
            "RFC 9111 §7.3",
            "set-cookie",
            "session=1",
            false,
        ),
        (
            "F1/max-age-0",
            "RFC 9111 §5.2.2.1",
            "cache-control",
            "max-age=0",
            true,
        ),
    ] {
        let (second_x, second_n) = if stored { (HIT, 1) } else { (MISS, 2) };
        cases.push(Case {
            id,
            rfc,
            policy: FIXED,
            steps: vec![
                get("/f1", 200, MISS, 1).answer(answer(200, &[(name, value)]).body("f1")),
                get("/f1", 200, second_x, second_n).body("f1"),
            ],
        });
    }
    cases.extend([
        Case {
            id: "M1",
            rfc: "RFC 9111 §5.2.2.3",
            policy: AUTO,
            steps: vec![
                get("/m1", 200, MISS, 1).answer(
                    answer(
                        200,
                        &[("cache-control", "must-understand, no-store, max-age=60")],
                    )
                    .body("m1"),
                ),
                get("/m1", 200, HIT, 1).body("m1"),
            ],
        },
        Case {
            id: "Q1",
            rfc: "RFC 9111 §5.2.2.7",
            policy: AUTO,
            steps: vec![
                get("/q1", 200, MISS, 1).answer(
                    answer(
                        200,
                        &[
                            ("cache-control", "max-age=60, private=\"x-secret\""),
                            ("x-secret", "s3cr3t"),
                        ],
                    )
                    .body("q1"),
                ),
                get("/q1", 200, HIT, 1).expect(lacks("x-secret")).body("q1"),
            ],
        },
    ]);
    cases
}

/// A fresh 200 for a minute.
fn fresh(body: &'static str) -> Scripted {
    answer(200, &[("cache-control", "max-age=60")]).body(body)
}

/// A 200 with body `B` and one validator, already older than its freshness lifetime when
/// it arrives (Age 20 > max-age 10): the next request revalidates it.
fn stale_on_arrival(validator: &str, value: &str) -> Scripted {
    answer(
        200,
        &[
            ("cache-control", "max-age=10"),
            ("age", "20"),
            (validator, value),
        ],
    )
    .body("B")
}

async fn send(client: &Client, to: std::net::SocketAddr, step: &Step) -> Result<Reply, String> {
    let headers: Vec<(&str, &str)> = step.headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    client
        .send(
            to,
            step.method.clone(),
            HOST,
            step.path,
            &headers,
            Bytes::new(),
        )
        .await
        .map_err(|e| format!("request failed: {e:#}"))
}

/// Runs one case on a fresh data plane and origin; the first failing step ends it.
async fn run(case: Case) -> Result<(), String> {
    let origin = ScriptOrigin::start().await;
    let yaml = format!(
        "{}---\napiVersion: parapet.dev/v1alpha1\nkind: CachePolicy\nmetadata: {{name: p}}\nspec: {}\n{}",
        pool_yaml("origin", &[origin.port()], ""),
        case.policy,
        route_yaml(
            "r",
            "['*']",
            "    - backends: [{pool: origin}]\n      cachePolicyRef: {name: p}"
        )
    );
    let (dp, _dir) = standalone(&yaml, &[]).await;
    let client = Client::new();
    for (i, step) in case.steps.iter().enumerate() {
        let at = format!(
            "{} ({}) step {i} ({} {})",
            case.id, case.rfc, step.method, step.path
        );
        for a in &step.answers {
            origin.push(a.clone());
        }
        let reply = if step.once_stale {
            wait_for(
                &format!("{at}: an answer that is not a HIT"),
                STALE_DEADLINE,
                || async {
                    match send(&client, dp.proxy, step).await {
                        Ok(r) if field(&r.headers, "x-cache").as_deref() == Some("HIT") => None,
                        other => Some(other),
                    }
                },
            )
            .await
        } else {
            send(&client, dp.proxy, step).await
        };
        let wrong = match reply {
            Ok(r) => step.verify(&r, &origin),
            Err(e) => vec![e],
        };
        if !wrong.is_empty() {
            return Err(format!("{at}: {}", wrong.join("; ")));
        }
    }
    Ok(())
}

fn panic_text(e: tokio::task::JoinError) -> String {
    if !e.is_panic() {
        return e.to_string();
    }
    let p = e.into_panic();
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "panicked".into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_mode_follows_rfc_9111() {
    let only: Vec<String> = std::env::var("CACHE_CASES")
        .map(|v| {
            v.split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect()
        })
        .unwrap_or_default();
    let all = table(SystemTime::now());
    let mut ids: Vec<&str> = all.iter().map(|c| c.id).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), all.len(), "case ids are unique");
    let cases: Vec<Case> = all
        .into_iter()
        .filter(|c| only.is_empty() || only.iter().any(|p| c.id.starts_with(p.as_str())))
        .collect();
    assert!(!cases.is_empty(), "CACHE_CASES={only:?} selects no case");

    let slots = Arc::new(Semaphore::new(PARALLEL));
    let mut running = Vec::new();
    for case in cases {
        let label = format!("{} ({})", case.id, case.rfc);
        let slots = slots.clone();
        running.push((
            label,
            tokio::spawn(async move {
                let _slot = slots.acquire_owned().await.expect("semaphore open");
                run(case).await
            }),
        ));
    }
    let total = running.len();
    let mut failures = Vec::new();
    for (label, task) in running {
        match task.await {
            Ok(Ok(())) => eprintln!("pass {label}"),
            Ok(Err(e)) => {
                eprintln!("FAIL {e}");
                failures.push(e);
            }
            // A panic (the data plane did not start, a deadline passed) names the case.
            Err(e) => {
                let e = format!("{label}: {}", panic_text(e));
                eprintln!("FAIL {e}");
                failures.push(e);
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {total} cases fail:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// The hand-made obsolete date formats, on RFC 9110's own example date.
#[test]
fn obsolete_date_formats_match_rfc_9110_examples() {
    let t = SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777);
    assert_eq!(imf(t), "Sun, 06 Nov 1994 08:49:37 GMT");
    assert_eq!(rfc850(t), "Sunday, 06-Nov-94 08:49:37 GMT");
    assert_eq!(asctime(t), "Sun Nov  6 08:49:37 1994");
    // Every weekday name comes out whole.
    for d in 0..7 {
        let s = rfc850(t + d * DAY);
        assert!(s.split(',').next().unwrap().ends_with("day"), "{s}");
    }
}
