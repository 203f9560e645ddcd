//! Properties of the request-head path after parsing: host normalisation, routing, the
//! proxy's header rewriting, API key and rate-limit key extraction. Inputs are arbitrary but
//! valid for the `http` crate (what either server path, Parapet's codec or hyper, can hand
//! us); the parsers themselves are compared with hyper's in `differential.rs` and the fuzz
//! targets.
//! Invariants: nothing panics; `strip_hop_by_hop` leaves no hop-by-hop header; the
//! forwarding headers are valid header values; a normalised host is lower-case, portless.

use std::net::IpAddr;

use http::{HeaderMap, HeaderName, HeaderValue, Method, header, uri::Authority};
use parapet_crds::snapshot::{
    ApiKeyCheck, DirectResponse, HashedApiKey, KeySource, PathMatch, RateLimitKey, Route,
    RouteAction, RouteMatcher, StringMatch, Table, ValueMatcher, VirtualHost,
};
use parapet_dataplane::{
    auth::{ApiKeys, Refusal},
    proxy::headers::{Forwarding, PROTECTED, is_upgrade, normalise_host, strip_hop_by_hop},
    ratelimit::{client_ip, request_key},
    router::{RequestInfo, Router},
    upstream::http1::HeadExtras,
};
use proptest::{collection::vec, option, prelude::*, sample::select};

const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
];

/// Header names: the interesting ones (hop-by-hop, forwarding, upgrade) and random tokens.
fn header_name() -> impl Strategy<Value = HeaderName> {
    prop_oneof![
        select(
            HOP_BY_HOP
                .iter()
                .chain(&[
                    "upgrade",
                    "host",
                    "x-forwarded-for",
                    "x-forwarded-host",
                    "forwarded",
                    "via",
                    "x-request-id",
                    "content-length",
                    "http2-settings",
                    "x-api-key",
                    "x-tenant",
                ])
                .copied()
                .collect::<Vec<_>>()
        )
        .prop_map(HeaderName::from_static),
        "[!#$%&'*+.^_`|~0-9A-Za-z-]{1,24}".prop_filter_map("valid name", |s| {
            HeaderName::from_bytes(s.as_bytes()).ok()
        }),
    ]
}

/// Header values: anything `HeaderValue::from_bytes` takes (visible ASCII, obs-text, tabs,
/// spaces), plus lists that name headers, as `Connection` does.
fn header_value() -> impl Strategy<Value = HeaderValue> {
    prop_oneof![
        vec(any::<u8>(), 0..40)
            .prop_filter_map("valid value", |b| HeaderValue::from_bytes(&b).ok()),
        vec(
            prop_oneof![
                select(HOP_BY_HOP.to_vec()).prop_map(str::to_string),
                Just("upgrade".to_string()),
                Just("Upgrade".to_string()),
                Just("close".to_string()),
                "[a-zA-Z0-9 -]{0,12}",
                "[ -~]{0,8}",
            ],
            0..5
        )
        .prop_filter_map("valid value", |parts| HeaderValue::from_str(
            &parts.join(",")
        )
        .ok()),
    ]
}

fn headers() -> impl Strategy<Value = HeaderMap> {
    vec((header_name(), header_value()), 0..12).prop_map(|pairs| {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.append(n, v);
        }
        h
    })
}

/// Hosts as a client may send them: authorities (names, IPv4, IPv6, ports, upper case) and
/// arbitrary Host header strings (any visible ASCII: hyper does not check them).
fn raw_host() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-zA-Z0-9-]{1,12}(\\.[a-zA-Z0-9-]{1,12}){0,3}\\.?(:[0-9]{1,5})?",
        "\\[[0-9a-fA-F:]{2,20}\\](:[0-9]{1,5})?",
        "[0-9]{1,3}\\.[0-9]{1,3}\\.[0-9]{1,3}\\.[0-9]{1,3}(:[0-9]{0,5})?",
        "[!-~]{0,30}",
        Just("[".to_string()),
        Just("[::1".to_string()),
        Just(":".to_string()),
    ]
}

fn path() -> impl Strategy<Value = String> {
    prop_oneof![
        "(/[a-zA-Z0-9._~%!$&'()*+,;=:@-]{0,8}){0,5}/?",
        "/[!-~]{0,30}",
        Just("/".to_string()),
        Just("*".to_string()),
    ]
    .prop_filter("valid path", |p| {
        p.parse::<http::uri::PathAndQuery>().is_ok()
    })
}

fn query() -> impl Strategy<Value = Option<String>> {
    option::of(
        prop_oneof!["([a-z%0-9]{0,6}=?[a-zA-Z0-9%+]{0,8}&?){0,4}", "[!-~]{0,30}",]
            .prop_filter("valid query", |q| {
                format!("/?{q}").parse::<http::uri::PathAndQuery>().is_ok()
            }),
    )
}

fn method() -> impl Strategy<Value = Method> {
    prop_oneof![
        select(vec![
            Method::GET,
            Method::POST,
            Method::HEAD,
            Method::OPTIONS,
            Method::DELETE
        ]),
        "[A-Z]{1,10}".prop_filter_map("valid method", |m| Method::from_bytes(m.as_bytes()).ok()),
    ]
}

fn ip() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<[u8; 4]>().prop_map(IpAddr::from),
        any::<[u8; 16]>().prop_map(IpAddr::from),
    ]
}

fn route(name: &str, path: PathMatch) -> Route {
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

/// A table using every kind of matcher, exact, wildcard and catch-all hosts.
fn table() -> Table {
    let mut with_header = route("hdr", PathMatch::Prefix("/api".into()));
    with_header.matcher.headers.push(ValueMatcher {
        name: "x-tenant".into(),
        value: StringMatch::Regex("^(?:[a-z]+)$".into()),
    });
    with_header.matcher.methods = vec!["GET".into(), "POST".into()];
    let mut with_query = route("q", PathMatch::Exact("/search".into()));
    with_query.matcher.query_params.push(ValueMatcher {
        name: "q".into(),
        value: StringMatch::Exact("x".into()),
    });
    let hosts = vec![
        (
            "api.example",
            vec![
                with_header,
                with_query,
                route("re", PathMatch::Regex("^(?:/v[0-9]+/.*)$".into())),
                route("root", PathMatch::Prefix("/".into())),
            ],
        ),
        (
            "*.example",
            vec![route("wild", PathMatch::Prefix("/static".into()))],
        ),
        ("*", vec![route("any", PathMatch::Exact("/".into()))]),
    ];
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

fn api_keys(source: KeySource) -> ApiKeys {
    let salt = b"salt".to_vec();
    ApiKeys::new(&ApiKeyCheck {
        source,
        keys: vec![HashedApiKey {
            id: "secret/key".into(),
            salt: hex_encode(&salt),
            sha256: hex_encode(&HashedApiKey::hash_key(&salt, b"k3y")),
        }],
    })
    .expect("valid key check")
}

fn hex_encode(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn normalised_host_is_lower_case_without_port(raw in raw_host()) {
        let n = normalise_host(&raw);
        prop_assert!(!n.bytes().any(|b| b.is_ascii_uppercase()), "{raw:?} -> {n:?}");
        // For a valid authority, exactly its host, lower-cased, without the trailing dot of a
        // fully qualified name (IPv6 keeps its brackets). (A port that is not a number is no
        // port: such a host is kept, and matches nothing.)
        if let Ok(a) = raw.parse::<Authority>()
            && (a.port().is_some() || a.as_str() == a.host())
        {
            let host = a.host().to_ascii_lowercase();
            prop_assert_eq!(&n, host.trim_end_matches('.'));
        }
        // Never a trailing `:digits` left when the input had one after a name or an address.
        if !raw.starts_with('[') && raw.matches(':').count() == 1 {
            let (_, port) = raw.rsplit_once(':').unwrap();
            if port.bytes().all(|b| b.is_ascii_digit()) {
                prop_assert!(!n.contains(':'), "{raw:?} -> {n:?}");
            }
        }
        // Idempotent on hosts that are well formed (a name or address, at most one port).
        if !raw.starts_with('[') && raw.matches(':').count() <= 1 {
            prop_assert_eq!(normalise_host(&n), n.clone());
        }
    }

    #[test]
    fn router_never_panics_and_matches_are_consistent(
        raw in raw_host(),
        path in path(),
        query in query(),
        method in method(),
        headers in headers(),
    ) {
        let router = Router::new(&table()).expect("table routes");
        let host = normalise_host(&raw);
        let req = RequestInfo {
            host: &host,
            path: &path,
            query: query.as_deref(),
            method: &method,
            headers: &headers,
        };
        if let Some(m) = router.route(&req) {
            prop_assert!(m.index < router.route_count());
            prop_assert_eq!(router.get(m.index).map(|r| &r.name), Some(&m.route.name));
            prop_assert!(m.prefix_len <= path.len());
            let rest = &path[m.prefix_len..];
            prop_assert!(rest.is_empty() || rest.starts_with('/'), "{path:?} {}", m.prefix_len);
        }
        // The raw host (port, case) must route the same as the normalised one.
        let raw_req = RequestInfo { host: &raw, ..req };
        if raw.parse::<Authority>().is_ok() && !raw.ends_with('.') {
            prop_assert_eq!(
                router.route(&raw_req).map(|m| m.index),
                router.route(&req).map(|m| m.index)
            );
        } else {
            let _ = router.route(&raw_req);
        }
    }

    #[test]
    fn strip_hop_by_hop_leaves_none(mut h in headers(), keep_upgrade in any::<bool>()) {
        let named: Vec<HeaderName> = h
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            // An option, not a field: the field name `close` is reserved.
            .filter(|t| !t.trim().eq_ignore_ascii_case("close"))
            .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
            .filter(|n| !(keep_upgrade && n == header::UPGRADE))
            .collect();
        let protected: Vec<HeaderName> =
            PROTECTED.iter().filter(|n| h.contains_key(*n)).cloned().collect();
        let upgrading = is_upgrade(&h);
        strip_hop_by_hop(&mut h, keep_upgrade);
        // What the gateway sets or frames by stays, whatever Connection names.
        for n in &protected {
            prop_assert!(h.contains_key(n), "{n} was removed from {h:?}");
        }
        prop_assert!(!h.contains_key("http2-settings"));
        for name in HOP_BY_HOP {
            if keep_upgrade && name == "connection" {
                let v: Vec<&[u8]> = h.get_all(header::CONNECTION).iter().map(|v| v.as_bytes()).collect();
                prop_assert_eq!(v, vec![&b"upgrade"[..]]);
            } else {
                prop_assert!(!h.contains_key(name), "{name} left in {h:?}");
            }
        }
        for n in named
            .iter()
            .filter(|n| !(PROTECTED.contains(n) || keep_upgrade && *n == header::CONNECTION))
        {
            prop_assert!(!h.contains_key(n), "{n} named by Connection left in {h:?}");
        }
        if !keep_upgrade {
            prop_assert!(!h.contains_key(header::UPGRADE));
            prop_assert!(!is_upgrade(&h));
        } else if upgrading {
            prop_assert!(is_upgrade(&h));
        }
    }

    #[test]
    fn forwarding_headers_are_valid(
        mut h in headers(),
        client in ip(),
        https in any::<bool>(),
        host in option::of(raw_host()),
        trusted in any::<bool>(),
    ) {
        let proto = if https { "https" } else { "http" };
        let before_xfh = h.get("x-forwarded-host").cloned();
        let before_xfp = h.get("x-forwarded-proto").cloned();
        Forwarding { client, proto, host: host.as_deref(), trusted }.apply(&mut h);
        for name in ["x-forwarded-for", "x-forwarded-proto", "forwarded", "via"] {
            let v = h.get(name);
            prop_assert!(v.is_some(), "{name} missing");
            // Round-trips as a header value, so it can go on the wire as it is.
            let v = v.unwrap();
            prop_assert!(HeaderValue::from_bytes(v.as_bytes()).is_ok());
        }
        match before_xfp {
            Some(p) if trusted => prop_assert_eq!(h.get("x-forwarded-proto").unwrap(), &p),
            _ => prop_assert_eq!(h.get("x-forwarded-proto").unwrap(), proto),
        }
        let xff = h.get("x-forwarded-for").unwrap().as_bytes();
        prop_assert!(xff.ends_with(client.to_string().as_bytes()));
        let fwd = h.get("forwarded").unwrap().to_str();
        prop_assert!(fwd.is_ok());
        let want = format!("proto={proto}");
        prop_assert!(fwd.unwrap().contains(&want));
        if trusted && before_xfh.is_some() {
            prop_assert_eq!(h.get("x-forwarded-host").cloned(), before_xfh);
        } else if !trusted {
            // Never the client's own word: the host the router read, or nothing.
            let ours = h.get("x-forwarded-host").map(|v| v.as_bytes().to_vec());
            prop_assert_eq!(ours, host.as_ref().filter(|h| HeaderValue::from_str(h).is_ok()).map(|h| h.as_bytes().to_vec()));
            prop_assert_eq!(String::from_utf8_lossy(xff), client.to_string());
        }
    }

    /// Parapet's own HTTP/1 client writes the forwarding headers as it encodes the request;
    /// hyper's gets them in the head. Both must send the same fields.
    #[test]
    fn forwarding_written_on_the_wire_equals_forwarding_in_the_head(
        h in headers(),
        client in ip(),
        https in any::<bool>(),
        host in option::of(raw_host()),
        trusted in any::<bool>(),
    ) {
        let fwd = Forwarding { client, proto: if https { "https" } else { "http" }, host: host.as_deref(), trusted };
        let lines = |h: &HeaderMap, skip: &dyn Fn(&HeaderName) -> bool| -> Vec<Vec<u8>> {
            h.iter()
                .filter(|(n, _)| !skip(n))
                .map(|(n, v)| [n.as_str().as_bytes(), b": ", v.as_bytes()].concat())
                .collect()
        };
        let mut in_head = h.clone();
        fwd.apply(&mut in_head);
        let mut want = lines(&in_head, &|_| false);
        let mut wire = Vec::new();
        fwd.write(&mut wire, &h);
        let mut got = lines(&h, &|n| fwd.replaces(n));
        got.extend(
            wire.split(|b| *b == b'\n')
                .filter(|l| !l.is_empty())
                .map(|l| l.strip_suffix(b"\r").expect("CRLF line ends").to_vec()),
        );
        want.sort();
        got.sort();
        let show = |v: &[Vec<u8>]| v.iter().map(|l| String::from_utf8_lossy(l).into_owned()).collect::<Vec<_>>();
        prop_assert_eq!(show(&got), show(&want));
    }

    #[test]
    fn api_key_extraction(
        h in headers(),
        query in query(),
        key in option::of("[!-~]{0,12}"),
        from_header in any::<bool>(),
    ) {
        let mut h = h;
        let mut query = query;
        let keys = if from_header {
            if let Some(k) = &key {
                h.insert("x-api-key", HeaderValue::from_str(k).unwrap());
            }
            api_keys(KeySource::Header("x-api-key".into()))
        } else {
            if let Some(k) = &key
                && k.bytes().all(|b| b.is_ascii_alphanumeric())
            {
                query = Some(format!("api_key={k}&{}", query.unwrap_or_default()));
            }
            api_keys(KeySource::QueryParam("api_key".into()))
        };
        let presented = key.as_deref().filter(|_| from_header).or(if from_header {
            None
        } else {
            key.as_deref().filter(|k| k.bytes().all(|b| b.is_ascii_alphanumeric()))
        });
        match keys.authenticate(&h, query.as_deref()) {
            Ok(id) => prop_assert_eq!(&*id, "secret/key"),
            Err(Refusal::Wrong) => prop_assert!(presented != Some("k3y")),
            Err(Refusal::Missing) => prop_assert!(presented.is_none_or(str::is_empty)),
        }
        if presented == Some("k3y") {
            prop_assert!(keys.authenticate(&h, query.as_deref()).is_ok());
        }
    }

    #[test]
    fn rate_limit_key_extraction(
        h in headers(),
        peer in ip(),
        hops in 0u32..4,
        api_key_id in option::of("[a-z/]{1,10}"),
        which in 0usize..4,
        header in header_name(),
    ) {
        let kind = match which {
            0 => RateLimitKey::ClientIp,
            1 => RateLimitKey::ApiKey,
            2 => RateLimitKey::Header(header.as_str().to_string()),
            _ => RateLimitKey::Route,
        };
        let k = request_key(&kind, &h, peer, api_key_id.as_deref(), hops);
        match kind {
            RateLimitKey::ClientIp => {
                let ip = client_ip(&h, peer, hops);
                let expected = ip.to_string();
                prop_assert_eq!(k.as_ref(), expected.as_bytes());
                if hops == 0 {
                    prop_assert_eq!(ip, peer);
                }
            }
            RateLimitKey::ApiKey => {
                let expected = api_key_id.as_deref().unwrap_or_default();
                prop_assert_eq!(k.as_ref(), expected.as_bytes());
            }
            RateLimitKey::Header(_) => {
                let expected = h.get(&header).map_or(&b""[..], |v| v.as_bytes());
                prop_assert_eq!(k.as_ref(), expected);
            }
            RateLimitKey::Route => prop_assert!(k.is_empty()),
        }
    }
}
