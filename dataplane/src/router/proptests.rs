//! The router agrees with a naive reference on random tables and requests: for each
//! request, the reference picks the host by reading every domain and then scans that
//! host's routes in order, checking each matcher the slow, obvious way.

use std::collections::HashMap;

use http::{HeaderMap, HeaderName, HeaderValue, Method};
use parapet_crds::snapshot::{PathMatch, Route, StringMatch, Table, ValueMatcher};
use proptest::{collection::vec, option, prelude::*, sample::select};
use regex::Regex;

use super::{
    RequestInfo, Router,
    tests::{large_table, route, table},
};

/// The obvious implementation of the semantics in the module docs.
#[derive(Default)]
struct Reference {
    regexes: HashMap<String, Regex>,
}

impl Reference {
    /// `(index, prefix_len)` of the route the request should get.
    fn route(&mut self, t: &Table, req: &RequestInfo<'_>) -> Option<(usize, usize)> {
        let (path, query) = match req.path.find('?') {
            Some(q) => (&req.path[..q], req.query.or(Some(&req.path[q + 1..]))),
            None => (req.path, req.query),
        };
        let host = reference_host(req.host);
        let domains: Vec<String> = t
            .virtual_hosts
            .iter()
            .map(|v| reference_host_name(&v.domain))
            .collect();
        let chosen = domains
            .iter()
            .position(|d| *d == host)
            .or_else(|| {
                let mut best: Option<(usize, usize)> = None;
                for (i, d) in domains.iter().enumerate() {
                    if let Some(suffix) = d.strip_prefix("*.")
                        && host.len() > suffix.len() + 1
                        && host.ends_with(&format!(".{suffix}"))
                        && best.is_none_or(|(_, len)| suffix.len() > len)
                    {
                        best = Some((i, suffix.len()));
                    }
                }
                best.map(|(i, _)| i)
            })
            .or_else(|| domains.iter().position(|d| d == "*"))?;
        let base: usize = t.virtual_hosts[..chosen]
            .iter()
            .map(|v| v.routes.len())
            .sum();
        for (i, r) in t.virtual_hosts[chosen].routes.iter().enumerate() {
            if let Some(prefix_len) = self.path_matches(r, path)
                && (r.matcher.methods.is_empty()
                    || r.matcher.methods.iter().any(|m| m == req.method.as_str()))
                && r.matcher
                    .headers
                    .iter()
                    .all(|h| self.header_matches(h, req.headers))
                && r.matcher
                    .query_params
                    .iter()
                    .all(|q| self.query_matches(q, query))
            {
                return Some((base + i, prefix_len));
            }
        }
        None
    }

    fn full_match(&mut self, pattern: &str, s: &str) -> bool {
        self.regexes
            .entry(pattern.to_string())
            .or_insert_with(|| Regex::new(&format!("^(?:{pattern})$")).unwrap())
            .is_match(s)
    }

    fn path_matches(&mut self, r: &Route, path: &str) -> Option<usize> {
        match &r.matcher.path {
            PathMatch::Exact(p) => (p == path).then_some(0),
            PathMatch::Prefix(p) => {
                let p = p.trim_end_matches('/');
                if p.is_empty() {
                    Some(0)
                } else {
                    let ok = path == p || (path.starts_with(p) && path[p.len()..].starts_with('/'));
                    ok.then_some(p.len())
                }
            }
            PathMatch::Regex(re) => self.full_match(re, path).then_some(0),
        }
    }

    fn value_matches(&mut self, want: &StringMatch, got: &[u8]) -> bool {
        match want {
            StringMatch::Exact(s) => s.as_bytes() == got,
            StringMatch::Regex(re) => match std::str::from_utf8(got) {
                Ok(got) => self.full_match(re, got),
                Err(_) => false,
            },
        }
    }

    fn header_matches(&mut self, m: &ValueMatcher, headers: &HeaderMap) -> bool {
        headers
            .iter()
            .filter(|(name, _)| name.as_str() == m.name)
            .any(|(_, v)| self.value_matches(&m.value, v.as_bytes()))
    }

    fn query_matches(&mut self, m: &ValueMatcher, query: Option<&str>) -> bool {
        let Some(query) = query else {
            return false;
        };
        for pair in query.split('&') {
            if pair.is_empty() {
                continue;
            }
            let (name, value) = match pair.find('=') {
                Some(eq) => (&pair[..eq], &pair[eq + 1..]),
                None => (pair, ""),
            };
            if reference_decode(name) == m.name
                && self.value_matches(&m.value, reference_decode(value).as_bytes())
            {
                return true;
            }
        }
        false
    }
}

/// Request host: drop the port (after `]` for IPv6 literals), one trailing dot, lower-case.
fn reference_host(host: &str) -> String {
    let host = if host.starts_with('[') && host.contains(']') {
        host[..=host.find(']').unwrap()].to_string()
    } else {
        host.chars().take_while(|&c| c != ':').collect()
    };
    reference_host_name(&host)
}

fn reference_host_name(name: &str) -> String {
    let name = name.strip_suffix('.').unwrap_or(name);
    name.to_ascii_lowercase()
}

fn reference_decode(raw: &str) -> String {
    let mut out = Vec::new();
    let b = raw.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && b[i + 1].is_ascii_hexdigit()
            && b[i + 2].is_ascii_hexdigit()
        {
            let digits = std::str::from_utf8(&b[i + 1..i + 3]).unwrap();
            out.push(u8::from_str_radix(digits, 16).unwrap());
            i += 3;
        } else {
            out.push(if b[i] == b'+' { b' ' } else { b[i] });
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

// ---- generators -------------------------------------------------------------------------

fn path_strategy() -> impl Strategy<Value = String> {
    (
        vec(select(vec!["a", "b", "ab", "", "A"]), 0..4),
        any::<bool>(),
    )
        .prop_map(|(segs, slash)| {
            let mut p = format!("/{}", segs.join("/"));
            if slash && !p.ends_with('/') {
                p.push('/');
            }
            p
        })
}

fn value_strategy() -> impl Strategy<Value = StringMatch> {
    prop_oneof![
        select(vec!["1", "2", "", "x y", "a b"]).prop_map(|s| StringMatch::Exact(s.into())),
        select(vec!["[12]", "1|x", ".*", "x.*"])
            .prop_map(|s| StringMatch::Regex(format!("^(?:{s})$"))),
    ]
}

fn route_strategy() -> impl Strategy<Value = Route> {
    let path = prop_oneof![
        path_strategy().prop_map(PathMatch::Exact),
        path_strategy().prop_map(PathMatch::Prefix),
        select(vec!["/a/.*", "/[ab]+", "/a(/b)?", ".*", "/b/[^/]*", "/A"])
            .prop_map(|s| PathMatch::Regex(format!("^(?:{s})$"))),
        // Unanchored, as a hand-written table might have it.
        select(vec!["/a", "/b.*"]).prop_map(|s| PathMatch::Regex(s.into())),
    ];
    (
        path,
        vec(select(vec!["GET", "POST"]), 0..2),
        vec((select(vec!["x-a", "x-b"]), value_strategy()), 0..3),
        vec((select(vec!["q", "r", "a b"]), value_strategy()), 0..3),
    )
        .prop_map(|(path, methods, headers, query)| {
            let mut r = route("r", path);
            r.matcher.methods = methods.into_iter().map(String::from).collect();
            r.matcher.headers = headers
                .into_iter()
                .map(|(n, value)| ValueMatcher {
                    name: n.into(),
                    value,
                })
                .collect();
            r.matcher.query_params = query
                .into_iter()
                .map(|(n, value)| ValueMatcher {
                    name: n.into(),
                    value,
                })
                .collect();
            r
        })
}

fn table_strategy() -> impl Strategy<Value = Table> {
    let domain = select(vec![
        "a.test",
        "b.a.test",
        "*.a.test",
        "*.test",
        "*",
        "A.test",
        "x.b.a.test",
        "*.b.a.test",
    ]);
    vec((domain, vec(route_strategy(), 0..10)), 0..5).prop_map(|hosts| {
        let mut t = table(hosts);
        let mut n = 0;
        for vh in &mut t.virtual_hosts {
            for r in &mut vh.routes {
                r.name = format!("r{n}");
                n += 1;
            }
        }
        t
    })
}

#[derive(Debug, Clone)]
struct Req {
    host: String,
    path: String,
    query: Option<String>,
    method: Method,
    headers: Vec<(String, Vec<u8>)>,
}

fn request_strategy() -> impl Strategy<Value = Req> {
    let host = select(vec![
        "a.test",
        "b.a.test",
        "c.b.a.test",
        "d.x.b.a.test",
        "test",
        "a.test:80",
        "A.TEST",
        "x.test",
        "",
        "b.a.test.",
        "other",
    ]);
    let query = option::of(
        vec(
            select(vec![
                "q=1",
                "q=2",
                "r=",
                "q",
                "a+b=x+y",
                "a%20b=x%20y",
                "q=%31",
                "r=2",
                "",
                "q=x%",
            ]),
            0..4,
        )
        .prop_map(|p| p.join("&")),
    );
    let headers = vec(
        (
            select(vec!["x-a", "x-b", "X-A", "x-c"]),
            select(vec![&b"1"[..], b"2", b"x", b"", b"x y", b"\xff1"]),
        ),
        0..4,
    );
    (
        host,
        path_strategy(),
        any::<bool>(),
        query,
        select(vec![Method::GET, Method::POST, Method::PUT]),
        headers,
    )
        .prop_map(|(host, path, path_query, query, method, headers)| Req {
            host: host.into(),
            path: if path_query {
                format!("{path}?q=1")
            } else {
                path
            },
            query,
            method,
            headers: headers
                .into_iter()
                .map(|(n, v)| (n.to_string(), v.to_vec()))
                .collect(),
        })
}

fn header_map(headers: &[(String, Vec<u8>)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (n, v) in headers {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(n.as_bytes()),
            HeaderValue::from_bytes(v),
        ) {
            map.append(n, v);
        }
    }
    map
}

fn agree(
    router: &Router,
    reference: &mut Reference,
    t: &Table,
    r: &Req,
) -> Result<(), TestCaseError> {
    let headers = header_map(&r.headers);
    let info = RequestInfo {
        host: &r.host,
        path: &r.path,
        query: r.query.as_deref(),
        method: &r.method,
        headers: &headers,
    };
    let got = router.route(&info).map(|m| {
        assert_eq!(router.get(m.index), Some(m.route));
        (m.index, m.prefix_len)
    });
    let want = reference.route(t, &info);
    prop_assert_eq!(got, want, "request {:?}", r);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn router_agrees_with_linear_reference(
        t in table_strategy(),
        requests in vec(request_strategy(), 1..20),
    ) {
        let router = Router::new(&t).unwrap();
        prop_assert_eq!(router.route_count(), t.route_count());
        let mut reference = Reference::default();
        for r in &requests {
            agree(&router, &mut reference, &t, r)?;
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// Arbitrary text anywhere: no panic, and still the reference's answer.
    #[test]
    fn arbitrary_requests_never_panic_and_agree(
        host in ".{0,40}",
        path in prop_oneof![".{0,60}", "(/[a-z0-9]{0,6}){0,6}/?"],
        query in option::of(".{0,40}"),
        method in "[A-Z]{1,8}",
        headers in vec(("[a-zA-Z-]{1,10}", vec(any::<u8>(), 0..10)), 0..4),
    ) {
        let t = small_fixed_table();
        let router = Router::new(&t).unwrap();
        let r = Req {
            host,
            path,
            query,
            method: Method::from_bytes(method.as_bytes()).unwrap(),
            headers,
        };
        agree(&router, &mut Reference::default(), &t, &r)?;
    }
}

fn small_fixed_table() -> Table {
    let mut t = large_table();
    // Keep it small enough for the reference, with every kind of route left in.
    for vh in &mut t.virtual_hosts {
        let routes = std::mem::take(&mut vh.routes);
        vh.routes = routes
            .into_iter()
            .enumerate()
            .filter(|(i, _)| i % 97 == 0 || *i >= 9_990)
            .map(|(_, r)| r)
            .collect();
    }
    let catch_all = table(vec![(
        "*",
        vec![route("any", PathMatch::Prefix("/".into()))],
    )]);
    t.virtual_hosts.extend(catch_all.virtual_hosts);
    t
}
