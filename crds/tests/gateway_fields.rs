//! Validation of the table fields that serve Gateway API semantics: redirect statuses,
//! header modifiers, mirrors, listeners.

use parapet_crds::snapshot::{
    ForwardAction, HeaderModifier, HeaderPair, Listener, ListenerProtocol, Mirror, PathMatch,
    Redirect, Route, RouteAction, RouteMatcher, Snapshot, Table, VirtualHost, WeightedCluster,
};

fn forward() -> ForwardAction {
    serde_json::from_value(serde_json::json!({
        "backends": [{"cluster": "web", "weight": 1}],
        "timeoutMs": 1000
    }))
    .expect("a minimal forward action")
}

fn route(name: &str, action: RouteAction) -> Route {
    Route {
        name: name.to_string(),
        matcher: RouteMatcher {
            path: PathMatch::Prefix("/".into()),
            methods: Vec::new(),
            headers: Vec::new(),
            query_params: Vec::new(),
        },
        action,
    }
}

fn table(routes: Vec<Route>, listeners: Vec<Listener>) -> Table {
    let mut t: Table = serde_json::from_value(serde_json::json!({
        "format": parapet_crds::snapshot::FORMAT_VERSION,
        "virtualHosts": [],
        "clusters": [{"name": "web", "endpoints": [], "loadBalancing": {"algorithm": "roundRobin"},
                      "connectTimeoutMs": 1000, "protocol": "http1"}],
        "cachePolicies": [], "sources": []
    }))
    .expect("a minimal table");
    t.virtual_hosts = vec![VirtualHost {
        domain: "*".into(),
        routes,
        tls: None,
        client_auth: None,
    }];
    t.listeners = listeners;
    t
}

fn reasons(t: Table) -> Vec<String> {
    match Snapshot::new(1, t).validate() {
        Ok(()) => Vec::new(),
        Err(r) => r,
    }
}

fn pair(name: &str, value: &str) -> HeaderPair {
    HeaderPair {
        name: name.into(),
        value: value.into(),
    }
}

#[test]
fn redirect_statuses_other_than_the_five_are_refused() {
    let redirect = |status| {
        RouteAction::Redirect(Redirect {
            scheme: None,
            hostname: None,
            port: None,
            path: None,
            status,
        })
    };
    for ok in [301, 302, 303, 307, 308] {
        assert_eq!(
            reasons(table(vec![route("r", redirect(ok))], vec![])),
            Vec::<String>::new()
        );
    }
    assert_eq!(
        reasons(table(vec![route("r", redirect(200))], vec![])),
        ["route r redirects with status 200, which is not one of 301, 302, 303, 307 or 308"]
    );
}

#[test]
fn header_modifiers_refuse_bad_names_framing_headers_and_bad_values() {
    let mut f = forward();
    f.request_headers = HeaderModifier {
        set: vec![pair("x-ok", "fine"), pair("content-length", "3")],
        add: vec![pair("bad name", "v"), pair("x-crlf", "a\r\nb: c")],
        remove: vec!["connection".into(), "x-gone".into()],
    };
    f.response_headers = HeaderModifier {
        set: vec![pair("Transfer-Encoding", "chunked")],
        ..Default::default()
    };
    let got = reasons(table(
        vec![route("r", RouteAction::Forward(Box::new(f)))],
        vec![],
    ));
    assert_eq!(
        got,
        [
            "route r modifies request header content-length, which frames the message or belongs to one hop and cannot be modified",
            "route r modifies request header \"bad name\", which is not a valid header name",
            "route r modifies request header connection, which frames the message or belongs to one hop and cannot be modified",
            "route r gives request header x-crlf the value \"a\\r\\nb: c\", which is not a valid header value",
            "route r modifies response header Transfer-Encoding, which frames the message or belongs to one hop and cannot be modified",
        ]
    );
}

#[test]
fn mirrors_and_listener_routes_are_checked_like_the_table_routes() {
    let mut f = forward();
    f.mirrors = vec![Mirror {
        cluster: "nowhere".into(),
        per_million: 1_000_000,
    }];
    let mut bad = forward();
    bad.backends = vec![WeightedCluster {
        cluster: "missing".into(),
        weight: 1,
    }];
    let listener = |port, action| Listener {
        port,
        protocol: ListenerProtocol::Http,
        virtual_hosts: vec![VirtualHost {
            domain: "*".into(),
            routes: vec![route("l", action)],
            tls: None,
            client_auth: None,
        }],
    };
    let got = reasons(table(
        vec![route("r", RouteAction::Forward(Box::new(f)))],
        vec![
            listener(80, RouteAction::Forward(Box::new(bad))),
            listener(80, RouteAction::Forward(Box::new(forward()))),
        ],
    ));
    assert_eq!(
        got,
        [
            "route r mirrors to cluster nowhere which the table does not define",
            "route l names cluster missing which the table does not define",
            "listener port 80 appears more than once; each port has one listener",
        ]
    );
}
