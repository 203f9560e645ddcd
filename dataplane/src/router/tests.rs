//! Precedence and matching, table-driven.

use http::{HeaderMap, HeaderName, HeaderValue, Method};
use parapet_crds::snapshot::{
    DirectResponse, PathMatch, Route, RouteAction, RouteMatcher, StringMatch, Table, ValueMatcher,
    VirtualHost,
};

use super::*;

pub(super) fn route(name: &str, path: PathMatch) -> Route {
    Route {
        name: name.to_string(),
        matcher: RouteMatcher {
            path,
            methods: vec![],
            headers: vec![],
            query_params: vec![],
        },
        action: RouteAction::DirectResponse(DirectResponse {
            status: 200,
            body: name.to_string(),
        }),
    }
}

fn exact(name: &str, p: &str) -> Route {
    route(name, PathMatch::Exact(p.into()))
}

fn prefix(name: &str, p: &str) -> Route {
    route(name, PathMatch::Prefix(p.into()))
}

fn regex(name: &str, re: &str) -> Route {
    route(name, PathMatch::Regex(format!("^(?:{re})$")))
}

fn methods(mut r: Route, m: &[&str]) -> Route {
    r.matcher.methods = m.iter().map(|s| s.to_string()).collect();
    r
}

fn header(mut r: Route, name: &str, value: StringMatch) -> Route {
    r.matcher.headers.push(ValueMatcher {
        name: name.into(),
        value,
    });
    r
}

fn query(mut r: Route, name: &str, value: StringMatch) -> Route {
    r.matcher.query_params.push(ValueMatcher {
        name: name.into(),
        value,
    });
    r
}

fn is(s: &str) -> StringMatch {
    StringMatch::Exact(s.into())
}

fn re(s: &str) -> StringMatch {
    StringMatch::Regex(format!("^(?:{s})$"))
}

pub(super) fn table(hosts: Vec<(&str, Vec<Route>)>) -> Table {
    Table {
        format: 1,
        virtual_hosts: hosts
            .into_iter()
            .map(|(domain, routes)| VirtualHost {
                domain: domain.into(),
                tls: None,
                client_auth: None,
                routes,
            })
            .collect(),
        ..Table::default()
    }
}

/// A request: `"GET api.bank.example /path?query"` plus headers.
struct Req {
    method: Method,
    host: String,
    path: String,
    query: Option<String>,
    headers: HeaderMap,
}

fn req(line: &str) -> Req {
    let mut parts = line.split(' ');
    let method = Method::from_bytes(parts.next().unwrap().as_bytes()).unwrap();
    let host = parts.next().unwrap().to_string();
    let target = parts.next().unwrap();
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p.to_string(), Some(q.to_string())),
        None => (target.to_string(), None),
    };
    Req {
        method,
        host,
        path,
        query,
        headers: HeaderMap::new(),
    }
}

impl Req {
    fn header(mut self, name: &str, value: &[u8]) -> Self {
        self.headers.append(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_bytes(value).unwrap(),
        );
        self
    }

    fn info(&self) -> RequestInfo<'_> {
        RequestInfo {
            host: &self.host,
            path: &self.path,
            query: self.query.as_deref(),
            method: &self.method,
            headers: &self.headers,
        }
    }
}

fn routed<'r>(router: &'r Router, r: &Req) -> Option<&'r str> {
    router.route(&r.info()).map(|m| m.route.name.as_str())
}

/// Runs `(request, expected route)` cases against one table.
fn check(t: &Table, cases: &[(Req, Option<&str>)]) {
    let router = Router::new(t).expect("table routes");
    for (r, want) in cases {
        assert_eq!(
            routed(&router, r),
            *want,
            "{} {} {}?{:?} {:?}",
            r.method,
            r.host,
            r.path,
            r.query,
            r.headers
        );
    }
}

const H: &str = "api.bank.example";

#[test]
fn exact_path_beats_prefix_in_compiler_order() {
    let t = table(vec![(
        H,
        vec![
            exact("exact", "/accounts"),
            prefix("accounts", "/accounts"),
            prefix("root", "/"),
        ],
    )]);
    check(
        &t,
        &[
            (req("GET api.bank.example /accounts"), Some("exact")),
            (req("GET api.bank.example /accounts/"), Some("accounts")),
            (req("GET api.bank.example /accounts/1"), Some("accounts")),
            (req("GET api.bank.example /other"), Some("root")),
        ],
    );
}

#[test]
fn table_order_decides_even_against_more_specific_paths() {
    // The compiler orders routes; the router never second-guesses that order.
    let t = table(vec![(
        H,
        vec![prefix("root", "/"), exact("exact", "/accounts")],
    )]);
    check(&t, &[(req("GET api.bank.example /accounts"), Some("root"))]);
}

#[test]
fn longer_prefix_listed_first_wins() {
    let t = table(vec![(
        H,
        vec![
            prefix("one", "/accounts/1"),
            prefix("accounts", "/accounts"),
        ],
    )]);
    check(
        &t,
        &[
            (req("GET api.bank.example /accounts/1"), Some("one")),
            (req("GET api.bank.example /accounts/1/tx"), Some("one")),
            (req("GET api.bank.example /accounts/12"), Some("accounts")),
            (req("GET api.bank.example /accounts"), Some("accounts")),
        ],
    );
}

#[test]
fn prefix_matches_whole_segments_only() {
    let t = table(vec![(H, vec![prefix("accounts", "/accounts")])]);
    check(
        &t,
        &[
            (req("GET api.bank.example /accounts"), Some("accounts")),
            (req("GET api.bank.example /accounts/"), Some("accounts")),
            (req("GET api.bank.example /accounts/1"), Some("accounts")),
            (req("GET api.bank.example /accounts//1"), Some("accounts")),
            (req("GET api.bank.example /accountsx"), None),
            (req("GET api.bank.example /account"), None),
            (req("GET api.bank.example /"), None),
            (req("GET api.bank.example /x/accounts"), None),
        ],
    );
}

#[test]
fn prefix_with_trailing_slash_means_the_same_segment() {
    let t = table(vec![(H, vec![prefix("accounts", "/accounts/")])]);
    check(
        &t,
        &[
            (req("GET api.bank.example /accounts"), Some("accounts")),
            (req("GET api.bank.example /accounts/1"), Some("accounts")),
            (req("GET api.bank.example /accountsx"), None),
        ],
    );
}

#[test]
fn root_prefix_matches_every_path() {
    let t = table(vec![(H, vec![prefix("root", "/")])]);
    check(
        &t,
        &[
            (req("GET api.bank.example /"), Some("root")),
            (req("GET api.bank.example /a/b/c"), Some("root")),
            (req("OPTIONS api.bank.example *"), Some("root")),
        ],
    );
}

#[test]
fn regex_must_match_the_whole_path() {
    let t = table(vec![(
        H,
        vec![
            regex("account", r"/accounts/[0-9]+"),
            route("unanchored", PathMatch::Regex("/v[0-9]".into())),
        ],
    )]);
    check(
        &t,
        &[
            (req("GET api.bank.example /accounts/42"), Some("account")),
            (req("GET api.bank.example /accounts/42/tx"), None),
            (req("GET api.bank.example /x/accounts/42"), None),
            (req("GET api.bank.example /v2"), Some("unanchored")),
            (req("GET api.bank.example /v2/x"), None),
        ],
    );
}

#[test]
fn exact_then_regex_then_prefix_in_compiler_order() {
    let t = table(vec![(
        H,
        vec![
            exact("exact", "/accounts/me"),
            regex("regex", r"/accounts/[a-z]+"),
            prefix("prefix", "/accounts"),
        ],
    )]);
    check(
        &t,
        &[
            (req("GET api.bank.example /accounts/me"), Some("exact")),
            (req("GET api.bank.example /accounts/you"), Some("regex")),
            (req("GET api.bank.example /accounts/42"), Some("prefix")),
        ],
    );
}

#[test]
fn methods_restrict_and_fall_through_to_later_routes() {
    let t = table(vec![(
        H,
        vec![
            methods(exact("write", "/accounts"), &["POST", "PUT"]),
            exact("read", "/accounts"),
            methods(prefix("delete", "/"), &["DELETE"]),
        ],
    )]);
    check(
        &t,
        &[
            (req("POST api.bank.example /accounts"), Some("write")),
            (req("PUT api.bank.example /accounts"), Some("write")),
            (req("GET api.bank.example /accounts"), Some("read")),
            (req("DELETE api.bank.example /other"), Some("delete")),
            (req("GET api.bank.example /other"), None),
        ],
    );
}

#[test]
fn headers_all_must_match_any_value_counts() {
    let t = table(vec![(
        H,
        vec![
            header(
                header(prefix("both", "/"), "x-tenant", is("acme")),
                "x-version",
                re("v[0-9]+"),
            ),
            header(prefix("tenant", "/"), "x-tenant", is("acme")),
            header(prefix("bad-name", "/"), "not a header", is("x")),
            prefix("fallback", "/"),
        ],
    )]);
    check(
        &t,
        &[
            (
                req("GET api.bank.example /")
                    .header("x-tenant", b"acme")
                    .header("x-version", b"v2"),
                Some("both"),
            ),
            (
                req("GET api.bank.example /")
                    .header("x-tenant", b"acme")
                    .header("x-version", b"beta"),
                Some("tenant"),
            ),
            (
                req("GET api.bank.example /")
                    .header("x-tenant", b"other")
                    .header("x-tenant", b"acme"),
                Some("tenant"),
            ),
            (
                req("GET api.bank.example /").header("x-tenant", b"ACME"),
                Some("fallback"),
            ),
            (
                req("GET api.bank.example /")
                    .header("x-tenant", b"acme")
                    .header("x-version", b"v\xff"),
                Some("tenant"),
            ),
            (req("GET api.bank.example /"), Some("fallback")),
        ],
    );
}

#[test]
fn header_names_match_whatever_the_request_case() {
    let t = table(vec![(
        H,
        vec![header(prefix("tenant", "/"), "x-tenant", is("acme"))],
    )]);
    check(
        &t,
        &[(
            req("GET api.bank.example /").header("X-Tenant", b"acme"),
            Some("tenant"),
        )],
    );
}

#[test]
fn query_params_all_must_match_decoded() {
    let t = table(vec![(
        H,
        vec![
            query(query(prefix("both", "/"), "v", is("2")), "q", re("[a-z ]+")),
            query(prefix("v2", "/"), "v", is("2")),
            query(prefix("flag", "/"), "debug", is("")),
            query(prefix("spaced", "/"), "name", is("a b&c")),
            prefix("fallback", "/"),
        ],
    )]);
    check(
        &t,
        &[
            (
                req("GET api.bank.example /x?v=2&q=hello+world"),
                Some("both"),
            ),
            (req("GET api.bank.example /x?q=hi&v=2"), Some("both")),
            (req("GET api.bank.example /x?v=2&q=HI"), Some("v2")),
            (req("GET api.bank.example /x?v=1&v=2"), Some("v2")),
            (req("GET api.bank.example /x?v=%32"), Some("v2")),
            (req("GET api.bank.example /x?V=2"), Some("fallback")),
            (req("GET api.bank.example /x?debug"), Some("flag")),
            (req("GET api.bank.example /x?debug="), Some("flag")),
            (
                req("GET api.bank.example /x?name=a%20b%26c"),
                Some("spaced"),
            ),
            (req("GET api.bank.example /x?vv=2"), Some("fallback")),
            (req("GET api.bank.example /x"), Some("fallback")),
        ],
    );
}

#[test]
fn path_is_compared_without_query() {
    let t = table(vec![(
        H,
        vec![
            query(exact("with-query", "/search"), "q", is("x")),
            exact("search", "/search"),
        ],
    )]);
    let router = Router::new(&t).unwrap();
    check(
        &t,
        &[
            (req("GET api.bank.example /search?q=x"), Some("with-query")),
            (req("GET api.bank.example /search?q=y"), Some("search")),
        ],
    );
    // A caller that left the query on the path is understood all the same.
    let headers = HeaderMap::new();
    let info = RequestInfo {
        host: H,
        path: "/search?q=x",
        query: None,
        method: &Method::GET,
        headers: &headers,
    };
    assert_eq!(router.route(&info).unwrap().route.name, "with-query");
}

fn host_table() -> Table {
    table(vec![
        ("api.bank.example", vec![exact("api", "/only")]),
        ("*.eu.bank.example", vec![prefix("eu", "/")]),
        ("*.bank.example", vec![prefix("bank", "/")]),
        ("*", vec![prefix("any", "/")]),
    ])
}

#[test]
fn host_precedence_exact_then_specific_wildcard_then_any() {
    check(
        &host_table(),
        &[
            (req("GET api.bank.example /only"), Some("api")),
            (req("GET www.bank.example /"), Some("bank")),
            (req("GET a.b.bank.example /"), Some("bank")),
            (req("GET paris.eu.bank.example /"), Some("eu")),
            (req("GET x.paris.eu.bank.example /"), Some("eu")),
            (req("GET eu.bank.example /"), Some("bank")),
            (req("GET bank.example /"), Some("any")),
            (req("GET other.example /"), Some("any")),
            (req("GET 10.0.0.1 /"), Some("any")),
        ],
    );
}

#[test]
fn matched_host_without_matching_route_does_not_fall_through() {
    check(
        &host_table(),
        &[
            (req("GET api.bank.example /elsewhere"), None),
            (req("GET api.bank.example /only/more"), None),
        ],
    );
}

#[test]
fn host_port_case_and_trailing_dot_are_ignored() {
    check(
        &host_table(),
        &[
            (req("GET api.bank.example:8443 /only"), Some("api")),
            (req("GET API.Bank.EXAMPLE /only"), Some("api")),
            (req("GET Api.Bank.Example:443 /only"), Some("api")),
            (req("GET api.bank.example. /only"), Some("api")),
            (req("GET WWW.BANK.EXAMPLE:80 /"), Some("bank")),
        ],
    );
}

#[test]
fn without_catch_all_unknown_hosts_match_nothing() {
    let t = table(vec![
        ("api.bank.example", vec![prefix("api", "/")]),
        ("*.bank.example", vec![prefix("bank", "/")]),
    ]);
    check(
        &t,
        &[
            (req("GET bank.example /"), None),
            (req("GET api.bank.example.evil /"), None),
            (req("GET xapi.bank.example /"), Some("bank")),
        ],
    );
}

#[test]
fn duplicate_domains_keep_the_first_host() {
    let t = table(vec![
        (H, vec![prefix("first", "/")]),
        (H, vec![prefix("second", "/")]),
    ]);
    check(&t, &[(req("GET api.bank.example /"), Some("first"))]);
}

#[test]
fn prefix_len_covers_the_matched_prefix() {
    let t = table(vec![(
        H,
        vec![
            exact("exact", "/e"),
            regex("regex", "/r/.*"),
            prefix("accounts", "/accounts"),
            prefix("root", "/"),
        ],
    )]);
    let router = Router::new(&t).unwrap();
    let cases = [
        ("/e", "exact", 0),
        ("/r/1", "regex", 0),
        ("/accounts", "accounts", 9),
        ("/accounts/1", "accounts", 9),
        ("/other", "root", 0),
    ];
    for (path, name, len) in cases {
        let r = req(&format!("GET {H} {path}"));
        let m = router.route(&r.info()).unwrap();
        assert_eq!((m.route.name.as_str(), m.prefix_len), (name, len), "{path}");
        let rest = &path[m.prefix_len..];
        assert!(rest.is_empty() || rest.starts_with('/') || name != "accounts");
    }
}

#[test]
fn indexes_count_across_hosts_and_name_the_route() {
    let t = table(vec![
        ("a.example", vec![exact("a0", "/0"), exact("a1", "/1")]),
        ("b.example", vec![exact("b0", "/0")]),
    ]);
    let router = Router::new(&t).unwrap();
    assert_eq!(router.route_count(), 3);
    let names: Vec<(usize, &str)> = router.routes().map(|(i, r)| (i, r.name.as_str())).collect();
    assert_eq!(names, [(0, "a0"), (1, "a1"), (2, "b0")]);
    let m = router.route(&req("GET b.example /0").info()).unwrap();
    assert_eq!(m.index, 2);
    assert_eq!(router.get(m.index).unwrap().name, "b0");
    let m = router.route(&req("GET a.example /1").info()).unwrap();
    assert_eq!(m.index, 1);
}

#[test]
fn empty_table_matches_nothing() {
    let router = Router::new(&Table::default()).unwrap();
    assert_eq!(router.route_count(), 0);
    assert!(router.route(&req("GET a.example /").info()).is_none());
}

#[test]
fn the_first_matching_regex_route_that_does_not_hold_gives_way_to_the_next() {
    let t = table(vec![(
        H,
        vec![
            methods(regex("posts", "/r/[0-9]+"), &["POST"]),
            header(regex("tenant", "/r/.*"), "x-tenant", is("a")),
            regex("any", "/r/[0-9]+"),
            regex("other", "/s/[0-9]+"),
            prefix("root", "/"),
        ],
    )]);
    check(
        &t,
        &[
            (req("POST api.bank.example /r/1"), Some("posts")),
            (
                req("GET api.bank.example /r/1").header("x-tenant", b"a"),
                Some("tenant"),
            ),
            (req("GET api.bank.example /r/1"), Some("any")),
            (
                req("GET api.bank.example /r/x").header("x-tenant", b"a"),
                Some("tenant"),
            ),
            (req("GET api.bank.example /r/x"), Some("root")),
            (req("GET api.bank.example /s/2"), Some("other")),
            (req("GET api.bank.example /r/1/2"), Some("root")),
        ],
    );
}

#[test]
fn a_stored_regex_matches_only_whole_paths_even_if_its_anchoring_does_not_hold() {
    // `^(?:/a)|(?:/b)$` alone means "starts with /a, or ends with /b"; the router anchors
    // what it is given once more, so the route matches `/a` and `/b` and nothing else.
    let t = table(vec![(
        H,
        vec![
            route("loose", PathMatch::Regex("^(?:/a)|(?:/b)$".into())),
            prefix("root", "/"),
        ],
    )]);
    check(
        &t,
        &[
            (req("GET api.bank.example /a"), Some("loose")),
            (req("GET api.bank.example /b"), Some("loose")),
            (req("GET api.bank.example /ax"), Some("root")),
            (req("GET api.bank.example /x/b"), Some("root")),
        ],
    );
    // A pattern that parses only inside the anchoring group is refused.
    let t = table(vec![(
        H,
        vec![route("ns/r/2", PathMatch::Regex("/a)|(?:/b".into()))],
    )]);
    let err = Router::new(&t).unwrap_err().to_string();
    assert!(
        err.starts_with("route ns/r/2 has a path regex that does not compile:"),
        "{err}"
    );
    let t = table(vec![(
        H,
        vec![header(
            prefix("ns/r/3", "/"),
            "x",
            StringMatch::Regex("a)|(?:.*".into()),
        )],
    )]);
    let err = Router::new(&t).unwrap_err().to_string();
    assert!(
        err.starts_with("route ns/r/3 matches header x with a regex"),
        "{err}"
    );
}

#[test]
fn many_regex_routes_pick_the_first_in_order() {
    // The shape of the benchmark's large tables: thousands of regexes on one host, where
    // the one a request needs is the last.
    let mut routes: Vec<Route> = (0..2000)
        .map(|i| regex(&format!("re{i}"), &format!("/re{i}/[0-9]+")))
        .collect();
    routes.push(regex("late-duplicate", "/re1999/[0-9]+"));
    routes.push(prefix("root", "/"));
    let t = table(vec![(H, routes)]);
    check(
        &t,
        &[
            (req("GET api.bank.example /re1999/12345"), Some("re1999")),
            (req("GET api.bank.example /re0/1"), Some("re0")),
            (req("GET api.bank.example /re1999/x"), Some("root")),
            (req("GET api.bank.example /re2000/1"), Some("root")),
        ],
    );
}

#[test]
fn invalid_path_regex_is_an_error_naming_the_route() {
    let t = table(vec![(
        H,
        vec![
            regex("ok", "/a"),
            route("ns/r/0", PathMatch::Regex("^(?:/[)$".into())),
        ],
    )]);
    let err = Router::new(&t).unwrap_err().to_string();
    assert!(
        err.starts_with("route ns/r/0 has a path regex that does not compile:"),
        "{err}"
    );
    assert!(!err.contains('\n'), "{err}");
}

#[test]
fn invalid_header_regex_is_an_error_naming_the_header() {
    let t = table(vec![(
        H,
        vec![header(
            prefix("ns/r/1", "/"),
            "x-tenant",
            StringMatch::Regex("(".into()),
        )],
    )]);
    let err = Router::new(&t).unwrap_err().to_string();
    assert!(
        err.starts_with("route ns/r/1 matches header x-tenant with a regex that does not compile:"),
        "{err}"
    );
}

#[test]
fn router_is_shareable_across_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Router>();
}

/// 10 000 routes on one host, of every kind, plus some on other hosts: lookups still find
/// the right route. (Speed is not asserted; `large_table_lookup_speed` prints it.)
pub(super) fn large_table() -> Table {
    let mut routes = Vec::new();
    for i in 0..3000 {
        routes.push(methods(
            exact(&format!("exact-{i}"), &format!("/svc{i}/items")),
            &["GET"],
        ));
    }
    for i in 0..500 {
        routes.push(regex(
            &format!("regex-{i}"),
            &format!("/svc{i}/items/[0-9]+"),
        ));
    }
    for i in 0..3000 {
        routes.push(header(
            prefix(&format!("prefix-h-{i}"), &format!("/svc{i}/v2")),
            "x-canary",
            is("true"),
        ));
    }
    for i in 0..3499 {
        routes.push(prefix(&format!("prefix-{i}"), &format!("/svc{i}")));
    }
    routes.push(prefix("root", "/"));
    assert_eq!(routes.len(), 10_000);
    table(vec![
        (H, routes),
        ("*.bank.example", vec![prefix("wild", "/")]),
    ])
}

#[test]
fn ten_thousand_routes_match_correctly() {
    let router = Router::new(&large_table()).unwrap();
    assert_eq!(router.route_count(), 10_001);
    let cases = [
        ("GET", "/svc2999/items", "exact-2999"),
        ("POST", "/svc2999/items", "prefix-2999"),
        ("GET", "/svc499/items/17", "regex-499"),
        ("GET", "/svc500/items/17", "prefix-500"),
        ("GET", "/svc1234/v2/x", "prefix-1234"),
        ("GET", "/svc3498/a/b/c", "prefix-3498"),
        ("GET", "/svc3499", "root"),
        ("GET", "/", "root"),
    ];
    for (method, path, want) in cases {
        let r = req(&format!("{method} {H} {path}"));
        assert_eq!(routed(&router, &r), Some(want), "{method} {path}");
    }
    let r = req(&format!("GET {H} /svc1234/v2/x")).header("x-canary", b"true");
    assert_eq!(routed(&router, &r), Some("prefix-h-1234"));
    let r = req("GET www.bank.example /svc1/items");
    assert_eq!(routed(&router, &r), Some("wild"));
}

#[test]
fn hostile_paths_and_hosts_do_not_panic() {
    let router = Router::new(&large_table()).unwrap();
    let slashes = "/".repeat(10_000);
    let dots = format!("{}bank.example", "a.".repeat(5_000));
    let long_segment = format!("/svc1/{}", "x".repeat(10_000));
    for (host, path) in [
        (H, slashes.as_str()),
        (dots.as_str(), "/"),
        (H, long_segment.as_str()),
        (H, ""),
        ("", "/"),
        (":", "?"),
        ("[", "/%zz?%%"),
    ] {
        let r = Req {
            method: Method::GET,
            host: host.to_string(),
            path: path.to_string(),
            query: Some("a=%&b".into()),
            headers: HeaderMap::new(),
        };
        let _ = router.route(&r.info());
    }
}

/// Prints the lookup cost on the 10 000-route table: `cargo test -p parapet-dataplane
/// --release large_table_lookup_speed -- --ignored --nocapture`.
#[test]
#[ignore = "prints a measurement"]
fn large_table_lookup_speed() {
    let t = large_table();
    let started = std::time::Instant::now();
    let router = Router::new(&t).unwrap();
    println!("build: {:?}", started.elapsed());
    let requests: Vec<Req> = [
        "GET api.bank.example /svc2999/items",
        "GET api.bank.example /svc499/items/17",
        "GET api.bank.example /svc1234/v2/x",
        "GET api.bank.example /svc3499/deep/path/with/segments",
        "GET www.bank.example /x",
    ]
    .iter()
    .map(|l| req(l))
    .collect();
    for r in &requests {
        let n = 100_000;
        let started = std::time::Instant::now();
        for _ in 0..n {
            std::hint::black_box(router.route(std::hint::black_box(&r.info())));
        }
        println!(
            "{} {}: {:?} per lookup",
            r.host,
            r.path,
            started.elapsed() / n
        );
    }
}

#[test]
fn listeners_route_each_port_with_its_own_hosts() {
    use parapet_crds::snapshot::{Listener, ListenerProtocol};
    let listener = |port, hosts: Vec<(&str, Vec<Route>)>| Listener {
        port,
        protocol: ListenerProtocol::Http,
        virtual_hosts: table(hosts).virtual_hosts,
    };
    let mut t = table(vec![("*", vec![prefix("own", "/")])]);
    let r = Router::new(&t).unwrap();
    let get = |r: &Router, port, line: &str| {
        r.route_on(port, &req(line).info())
            .map(|m| (m.route.name.clone(), m.index))
    };
    // No listeners: every port serves the table's own hosts.
    assert_eq!(get(&r, 80, "GET a.example /x"), Some(("own".into(), 0)));
    assert_eq!(get(&r, 443, "GET a.example /x"), Some(("own".into(), 0)));

    t.listeners = vec![
        listener(80, vec![("*", vec![prefix("http-any", "/")])]),
        listener(
            443,
            vec![
                (
                    "secure.example",
                    vec![exact("https-exact", "/a"), prefix("https-prefix", "/b")],
                ),
                ("*.example", vec![prefix("https-wild", "/")]),
            ],
        ),
    ];
    let r = Router::new(&t).unwrap();
    assert_eq!(r.route_count(), 5);
    // Indexes run over the table's hosts, then each listener's, in order.
    assert_eq!(
        get(&r, 80, "GET a.example /x"),
        Some(("http-any".into(), 1))
    );
    assert_eq!(
        get(&r, 443, "GET secure.example /a"),
        Some(("https-exact".into(), 2))
    );
    assert_eq!(
        get(&r, 443, "GET secure.example /b/c"),
        Some(("https-prefix".into(), 3))
    );
    assert_eq!(
        get(&r, 443, "GET other.example /a"),
        Some(("https-wild".into(), 4))
    );
    // Only the port's own hosts: no fallback to another listener's or the table's.
    assert_eq!(get(&r, 443, "GET secure.example /x"), None);
    assert_eq!(get(&r, 443, "GET a.test /"), None);
    assert_eq!(get(&r, 8080, "GET a.example /x"), None);
    // `route` still reads the table's own hosts.
    assert_eq!(
        r.route(&req("GET a.example /x").info()).unwrap().route.name,
        "own"
    );
    for (i, route) in r.routes() {
        assert_eq!(r.get(i).unwrap().name, route.name);
    }
}
