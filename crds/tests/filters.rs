//! Rule filters: header edits, redirects, full-path rewrites, mirrors and the per-attempt
//! timeout. What the schema refuses, the compiler refuses again (standalone files skip the
//! API server), with a diagnostic that says what to fix.

use parapet_crds::{
    compiler::{ConditionKind, Diagnostic, Output, Reason, Severity, compile},
    manifest::Manifest,
    snapshot::{
        ForwardAction, HeaderPair, Mirror, PathReplacement, Redirect, Route, RouteAction, Snapshot,
    },
};

fn compile_yaml(yaml: &str) -> Output {
    let m = Manifest::parse(yaml).unwrap_or_else(|e| panic!("test manifest parses: {e}"));
    compile(&m.inputs())
}

const POOLS: &str = r#"
apiVersion: parapet.dev/v1alpha1
kind: UpstreamPool
metadata: {name: web}
spec:
  static: [{address: 127.0.0.1, port: 8080}]
---
apiVersion: parapet.dev/v1alpha1
kind: UpstreamPool
metadata: {name: shadow}
spec:
  static: [{address: 127.0.0.1, port: 8081}]
---
apiVersion: parapet.dev/v1alpha1
kind: UpstreamPool
metadata: {name: shadow2}
spec:
  static: [{address: 127.0.0.1, port: 8082}]
"#;

/// One route `r` on host `a.example` with these rules (YAML list items, indented 4).
fn with_rules(rules: &str) -> Output {
    compile_yaml(&format!(
        r#"{POOLS}
---
apiVersion: parapet.dev/v1alpha1
kind: ApiRoute
metadata: {{name: r, creationTimestamp: "2026-01-01T00:00:00Z", generation: 1}}
spec:
  hosts: [a.example]
  rules:
{rules}
"#
    ))
}

fn routes(out: &Output) -> Vec<&Route> {
    out.table
        .virtual_hosts
        .iter()
        .flat_map(|v| &v.routes)
        .collect()
}

/// The route compiled from rule `name` (its first match).
fn route<'a>(out: &'a Output, name: &str) -> &'a Route {
    let full = format!("default/r/{name}");
    routes(out)
        .into_iter()
        .find(|r| r.name == full)
        .unwrap_or_else(|| panic!("rule {name} is in the table: {:?}", out.diagnostics))
}

fn forward<'a>(out: &'a Output, name: &str) -> &'a ForwardAction {
    match &route(out, name).action {
        RouteAction::Forward(f) => f,
        other => panic!("rule {name} forwards, got {other:?}"),
    }
}

fn redirect<'a>(out: &'a Output, name: &str) -> &'a Redirect {
    match &route(out, name).action {
        RouteAction::Redirect(r) => r,
        other => panic!("rule {name} redirects, got {other:?}"),
    }
}

fn absent(out: &Output, name: &str) -> bool {
    let full = format!("default/r/{name}");
    !routes(out).iter().any(|r| r.name == full)
}

fn diags(out: &Output) -> Vec<&Diagnostic> {
    out.diagnostics.iter().collect()
}

/// The route's diagnostics with this reason, each checked to read like a sentence.
fn with_reason(out: &Output, reason: Reason) -> Vec<String> {
    out.diagnostics
        .for_object("ApiRoute", "default", "r")
        .filter(|d| d.reason == reason)
        .map(|d| {
            assert!(
                d.message.len() > 30
                    && !d.message.contains("Error(")
                    && !d.message.contains("Some(")
                    && d.message.starts_with("rule "),
                "not a sentence: {d}"
            );
            d.message.clone()
        })
        .collect()
}

fn pair(name: &str, value: &str) -> HeaderPair {
    HeaderPair {
        name: name.into(),
        value: value.into(),
    }
}

fn assert_valid_snapshot(out: &Output) {
    Snapshot::new(1, out.table.clone())
        .validate()
        .unwrap_or_else(|e| panic!("{e:?}"));
}

// --- headers --------------------------------------------------------------------------

#[test]
fn header_edits_compile_lower_case_in_order() {
    let out = with_rules(
        r#"
    - name: h
      backends: [{pool: web}]
      requestHeaders:
        set: [{name: X-Tenant, value: bank}, {name: x-trace, value: "a b\tc"}]
        add: [{name: Forwarded-By, value: parapet}]
        remove: [X-Internal, x-internal, Cookie]
      responseHeaders:
        set: [{name: Strict-Transport-Security, value: max-age=31536000}]
        remove: [Server]
"#,
    );
    assert!(out.diagnostics.is_empty(), "{:?}", diags(&out));
    let f = forward(&out, "h");
    assert_eq!(
        f.request_headers.set,
        [pair("x-tenant", "bank"), pair("x-trace", "a b\tc")]
    );
    assert_eq!(f.request_headers.add, [pair("forwarded-by", "parapet")]);
    // Removal is case-insensitive, so the two spellings are one entry.
    assert_eq!(f.request_headers.remove, ["x-internal", "cookie"]);
    assert_eq!(
        f.response_headers.set,
        [pair("strict-transport-security", "max-age=31536000")]
    );
    assert_eq!(f.response_headers.remove, ["server"]);
    assert!(f.response_headers.add.is_empty());
    assert_valid_snapshot(&out);
}

#[test]
fn proxy_owned_headers_are_refused_in_any_case() {
    let out = with_rules(
        r#"
    - name: h
      backends: [{pool: web}]
      requestHeaders:
        set: [{name: Transfer-Encoding, value: chunked}, {name: x-ok, value: "1"}]
        add: [{name: content-length, value: "0"}, {name: HOST, value: evil.example}]
        remove: [Connection, TE, x-gone]
      responseHeaders:
        set: [{name: Keep-Alive, value: "timeout=5"}]
        add: [{name: Upgrade, value: h2c}]
        remove: [proxy-connection]
"#,
    );
    let messages = with_reason(&out, Reason::InvalidHeaderFilter);
    assert_eq!(messages.len(), 8, "{messages:#?}");
    for m in &messages {
        assert!(
            m.contains("belongs to the proxy") && m.contains("remove it from the list"),
            "{m}"
        );
    }
    assert!(
        messages
            .iter()
            .any(|m| m.contains("requestHeaders.add: host")),
        "{messages:#?}"
    );
    // The rest of the rule still applies, and it still forwards.
    let f = forward(&out, "h");
    assert_eq!(f.request_headers.set, [pair("x-ok", "1")]);
    assert!(f.request_headers.add.is_empty());
    assert_eq!(f.request_headers.remove, ["x-gone"]);
    assert!(f.response_headers.is_empty());
    assert!(
        out.diagnostics
            .condition("ApiRoute", "default", "r", ConditionKind::Accepted)
            .is_some_and(|(r, _)| r == Reason::InvalidHeaderFilter)
    );
}

#[test]
fn header_values_that_could_end_the_line_are_refused() {
    let long = "v".repeat(4097);
    let out = with_rules(&format!(
        r#"
    - name: h
      backends: [{{pool: web}}]
      requestHeaders:
        set:
          - {{name: x-cr, value: "a\rInjected: 1"}}
          - {{name: x-lf, value: "a\nInjected: 1"}}
          - {{name: x-crlf, value: "a\r\n\r\nGET /admin HTTP/1.1"}}
          - {{name: x-nul, value: "a\u0000b"}}
          - {{name: x-del, value: "a\u007fb"}}
          - {{name: x-utf8, value: "café"}}
          - {{name: x-long, value: "{long}"}}
          - {{name: x-fine, value: "tab\tand space ~!"}}
"#
    ));
    let messages = with_reason(&out, Reason::InvalidHeaderFilter);
    assert_eq!(messages.len(), 7, "{messages:#?}");
    for m in &messages {
        assert!(m.contains("use visible ASCII, spaces and tabs only"), "{m}");
        // The value is not echoed: it may be a secret, and it is what broke the line.
        assert!(!m.contains("Injected") && !m.contains("vvvv"), "{m}");
    }
    assert_eq!(
        forward(&out, "h").request_headers.set,
        [pair("x-fine", "tab\tand space ~!")]
    );
}

#[test]
fn header_names_must_be_tokens() {
    let long = "x".repeat(257);
    let out = with_rules(&format!(
        r#"
    - name: h
      backends: [{{pool: web}}]
      responseHeaders:
        set: [{{name: "x y", value: a}}, {{name: "x:y", value: a}}, {{name: "", value: a}}]
        add: [{{name: "x\r\ny", value: a}}, {{name: "{long}", value: a}}]
        remove: ["a/b", "ok-name"]
"#
    ));
    let messages = with_reason(&out, Reason::InvalidHeaderFilter);
    assert_eq!(messages.len(), 6, "{messages:#?}");
    for m in &messages {
        assert!(
            m.contains("is not a header name; use 1 to 256 letters"),
            "{m}"
        );
        assert!(!m.contains('\n') && !m.contains('\r'), "{m:?}");
    }
    // Long names are cut short in the message.
    assert!(messages.iter().all(|m| m.len() < 300), "{messages:#?}");
    let f = forward(&out, "h");
    assert!(f.response_headers.set.is_empty() && f.response_headers.add.is_empty());
    assert_eq!(f.response_headers.remove, ["ok-name"]);
}

#[test]
fn header_lists_are_bounded_and_names_unique() {
    let set: Vec<String> = (0..20)
        .map(|i| format!("{{name: x-{i}, value: v}}"))
        .collect();
    let remove: Vec<String> = (0..17).map(|i| format!("r-{i}")).collect();
    let out = with_rules(&format!(
        r#"
    - name: h
      backends: [{{pool: web}}]
      requestHeaders:
        set: [{}]
        remove: [{}]
        add: [{{name: X-Dup, value: a}}, {{name: x-dup, value: b}}]
"#,
        set.join(", "),
        remove.join(", ")
    ));
    let messages = with_reason(&out, Reason::InvalidHeaderFilter);
    assert_eq!(messages.len(), 3, "{messages:#?}");
    assert!(messages.iter().any(|m| m.contains(
        "requestHeaders.set has 20 entries, more than 16; remove some (only the first 16 are used)"
    )));
    assert!(
        messages
            .iter()
            .any(|m| m.contains("requestHeaders.remove has 17 entries"))
    );
    assert!(
        messages
            .iter()
            .any(|m| m.contains("requestHeaders.add names x-dup twice"))
    );
    let f = forward(&out, "h");
    assert_eq!(f.request_headers.set.len(), 16);
    assert_eq!(f.request_headers.set[15], pair("x-15", "v"));
    assert_eq!(f.request_headers.remove.len(), 16);
    assert_eq!(f.request_headers.add, [pair("x-dup", "a")]);
}

// --- redirects ------------------------------------------------------------------------

#[test]
fn redirects_compile_with_defaults_and_every_part() {
    let out = with_rules(
        r#"
    - name: to-https
      matches: [{path: {type: PathPrefix, value: /}}]
      redirect: {scheme: https, port: 443, statusCode: 301}
    - name: moved
      matches: [{path: {type: PathPrefix, value: /old/}}, {path: {value: /older}}]
      redirect:
        hostname: www.example.com
        path: {replacePrefixMatch: /new}
    - name: login
      matches: [{path: {type: Exact, value: /signin}}]
      redirect:
        scheme: http
        hostname: Login.Example.COM
        port: 8443
        path: {replaceFullPath: "/auth/login;v=2"}
        statusCode: 308
    - name: plain
      matches: [{path: {type: Exact, value: /p}}]
      redirect: {}
"#,
    );
    assert!(out.diagnostics.is_empty(), "{:?}", diags(&out));
    assert_eq!(
        redirect(&out, "to-https"),
        &Redirect {
            scheme: Some("https".into()),
            hostname: None,
            port: Some(443),
            path: None,
            status: 301,
        }
    );
    assert_eq!(
        redirect(&out, "moved"),
        &Redirect {
            scheme: None,
            hostname: Some("www.example.com".into()),
            port: None,
            path: Some(PathReplacement::Prefix("/new".into())),
            status: 302,
        }
    );
    assert_eq!(
        redirect(&out, "login"),
        &Redirect {
            scheme: Some("http".into()),
            hostname: Some("login.example.com".into()),
            port: Some(8443),
            path: Some(PathReplacement::Full("/auth/login;v=2".into())),
            status: 308,
        }
    );
    assert_eq!(redirect(&out, "plain").status, 302);
    // A redirect references no pool: the table has no cluster for it.
    assert!(out.table.clusters.is_empty());
    assert_valid_snapshot(&out);
}

#[test]
fn redirect_hostnames_that_name_another_place_are_refused() {
    let hosts = [
        "evil.example/path",
        "user@evil.example",
        "evil.example:8080",
        "evil.example?x",
        "evil.example#x",
        "*.example.com",
        "evil\r\nLocation: x",
        "-bad.example",
        "",
    ];
    let rules: String = hosts
        .iter()
        .enumerate()
        .map(|(i, h)| {
            format!(
                "    - name: h{i}\n      matches: [{{path: {{type: Exact, value: /h{i}}}}}]\n      redirect: {{hostname: {h:?}}}\n"
            )
        })
        .collect();
    let out = with_rules(&rules);
    let messages = with_reason(&out, Reason::InvalidRedirect);
    assert_eq!(messages.len(), hosts.len(), "{messages:#?}");
    for m in &messages {
        assert!(
            m.contains("is not a DNS name; give a name such as www.example.com")
                && m.ends_with("the rule is left out"),
            "{m}"
        );
        assert!(!m.contains('\n'), "{m:?}");
    }
    for i in 0..hosts.len() {
        assert!(absent(&out, &format!("h{i}")), "h{i} is left out");
    }
}

#[test]
fn redirect_paths_ports_and_statuses_are_checked() {
    let out = with_rules(
        r#"
    - name: no-slash
      matches: [{path: {type: Exact, value: /a}}]
      redirect: {path: {replaceFullPath: "login"}}
    - name: query
      matches: [{path: {type: Exact, value: /b}}]
      redirect: {path: {replaceFullPath: "/login?next=/admin"}}
    - name: fragment
      matches: [{path: {type: Exact, value: /c}}]
      redirect: {path: {replaceFullPath: "/login#x"}}
    - name: protocol-relative
      matches: [{path: {type: Exact, value: /d}}]
      redirect: {path: {replaceFullPath: "//evil.example/"}}
    - name: backslash
      matches: [{path: {type: Exact, value: /e}}]
      redirect: {path: {replaceFullPath: "/\\evil.example"}}
    - name: crlf
      matches: [{path: {type: Exact, value: /f}}]
      redirect: {path: {replaceFullPath: "/a\r\nSet-Cookie: x=1"}}
    - name: space
      matches: [{path: {type: PathPrefix, value: /g}}]
      redirect: {path: {replacePrefixMatch: "/a b"}}
    - name: both-paths
      matches: [{path: {type: PathPrefix, value: /h}}]
      redirect: {path: {replaceFullPath: /x, replacePrefixMatch: /y}}
    - name: no-path
      matches: [{path: {type: PathPrefix, value: /i}}]
      redirect: {path: {}}
    - name: port-0
      matches: [{path: {type: Exact, value: /j}}]
      redirect: {port: 0}
    - name: port-big
      matches: [{path: {type: Exact, value: /k}}]
      redirect: {port: 65536}
    - name: status-200
      matches: [{path: {type: Exact, value: /l}}]
      redirect: {statusCode: 200}
    - name: status-304
      matches: [{path: {type: Exact, value: /m}}]
      redirect: {statusCode: 304}
    - name: fine
      matches: [{path: {type: Exact, value: /n}}]
      redirect: {path: {replaceFullPath: "/"}, statusCode: 307, port: 65535}
"#,
    );
    let messages = with_reason(&out, Reason::InvalidRedirect);
    assert_eq!(messages.len(), 13, "{messages:#?}");
    for m in &messages {
        assert!(m.ends_with("the rule is left out"), "{m}");
        assert!(!m.contains('\n'), "{m:?}");
    }
    for name in [
        "no-slash",
        "query",
        "fragment",
        "protocol-relative",
        "backslash",
        "crlf",
        "space",
    ] {
        assert!(absent(&out, name), "{name}");
        let m = messages
            .iter()
            .find(|m| m.starts_with(&format!("rule {name}:")))
            .unwrap_or_else(|| panic!("{name} is reported"));
        assert!(
            m.contains("must start with / and hold only URL path characters (no '?', '#', '//', '\\', spaces or control characters)"),
            "{m}"
        );
    }
    for (name, fix) in [
        (
            "both-paths",
            "takes exactly one of replaceFullPath or replacePrefixMatch",
        ),
        (
            "no-path",
            "takes exactly one of replaceFullPath or replacePrefixMatch",
        ),
        ("port-0", "redirect.port 0 is not a port; use 1 to 65535"),
        ("port-big", "redirect.port 65536 is not a port"),
        (
            "status-200",
            "redirect.statusCode 200 is not a redirect status; use 301, 302, 303, 307 or 308",
        ),
        ("status-304", "redirect.statusCode 304"),
    ] {
        assert!(absent(&out, name), "{name}");
        assert!(
            messages
                .iter()
                .any(|m| m.starts_with(&format!("rule {name}:")) && m.contains(fix)),
            "{name}: {messages:#?}"
        );
    }
    assert_eq!(redirect(&out, "fine").status, 307);
}

#[test]
fn replace_prefix_match_needs_prefix_matches_only() {
    let out = with_rules(
        r#"
    - name: mixed
      matches: [{path: {type: PathPrefix, value: /a}}, {path: {type: Exact, value: /b}}]
      redirect: {path: {replacePrefixMatch: /new}}
    - name: regex
      matches: [{path: {type: RegularExpression, value: "/c/[0-9]+"}}]
      redirect: {path: {replacePrefixMatch: /new}}
    - name: default-match
      redirect: {path: {replacePrefixMatch: /new}}
    - name: header-only
      matches: [{headers: [{name: x-v, value: "1"}]}]
      redirect: {path: {replacePrefixMatch: /v1}}
"#,
    );
    let messages = with_reason(&out, Reason::InvalidRedirect);
    assert_eq!(messages.len(), 2, "{messages:#?}");
    for m in &messages {
        assert!(
            m.contains("replacePrefixMatch needs every match of the rule to be a PathPrefix match; use replaceFullPath, or split the rule"),
            "{m}"
        );
    }
    // The whole rule is out, including its PathPrefix match.
    assert!(absent(&out, "mixed") && absent(&out, "regex"));
    // No matches, or matches without a path: `PathPrefix /`.
    assert!(matches!(
        redirect(&out, "default-match").path,
        Some(PathReplacement::Prefix(_))
    ));
    assert!(matches!(
        redirect(&out, "header-only").path,
        Some(PathReplacement::Prefix(_))
    ));
}

#[test]
fn a_rule_has_backends_or_a_redirect() {
    let out = with_rules(
        r#"
    - name: both
      matches: [{path: {type: Exact, value: /both}}]
      backends: [{pool: web}]
      redirect: {scheme: https}
    - name: neither
      matches: [{path: {type: Exact, value: /neither}}]
      timeout: 2s
"#,
    );
    let messages = with_reason(&out, Reason::InvalidRule);
    assert_eq!(messages.len(), 2, "{messages:#?}");
    assert!(
        messages.contains(
            &"rule both has both backends and a redirect; keep one of them (the rule is left out)"
                .to_string()
        )
    );
    assert!(messages.contains(
        &"rule neither has neither backends nor a redirect, so it answers 500; add backends or a redirect"
            .to_string()
    ));
    assert!(absent(&out, "both"));
    // Like a rule whose backends are all missing: 500, never a fall-through.
    assert!(
        matches!(&route(&out, "neither").action, RouteAction::DirectResponse(d) if d.status == 500)
    );
}

#[test]
fn forwarding_fields_on_a_redirect_are_reported_not_applied() {
    let out = with_rules(
        r#"
    - name: r1
      redirect: {scheme: https}
      rewrite: {fullPath: /x}
      mirrors: [{backend: shadow}]
      requestHeaders: {set: [{name: x-a, value: b}]}
      backendTimeout: 1s
      retries: {attempts: 3}
      auth: {apiKeys: {secretRefs: [{name: keys}]}}
"#,
    );
    let errors = with_reason(&out, Reason::InvalidRedirect);
    let route_diags: Vec<_> = out
        .diagnostics
        .for_object("ApiRoute", "default", "r")
        .collect();
    let error = route_diags
        .iter()
        .find(|d| d.severity == Severity::Error)
        .expect("an error");
    assert_eq!(
        error.message,
        "rule r1 redirects, so rewrite, mirrors, requestHeaders, backendTimeout cannot apply; remove them (the redirect works without them)"
    );
    let warning = route_diags
        .iter()
        .find(|d| d.severity == Severity::Warning)
        .expect("a warning");
    assert_eq!(
        warning.message,
        "rule r1 redirects, so retries, auth have no effect on it; remove them"
    );
    assert_eq!(errors.len(), 2);
    // The redirect works; the mirror's pool is not pulled into the table.
    assert_eq!(redirect(&out, "r1").scheme.as_deref(), Some("https"));
    assert!(out.table.clusters.is_empty());
}

// --- rewrites -------------------------------------------------------------------------

#[test]
fn full_path_rewrites_compile_and_bad_ones_leave_the_rule_out() {
    let out = with_rules(
        r#"
    - name: full
      matches: [{path: {type: Exact, value: /legacy}}]
      backends: [{pool: web}]
      rewrite: {fullPath: /v2/accounts, hostname: internal.example}
    - name: prefix
      matches: [{path: {type: PathPrefix, value: /api}}]
      backends: [{pool: web}]
      rewrite: {pathPrefix: /}
    - name: both
      matches: [{path: {type: PathPrefix, value: /both}}]
      backends: [{pool: web}]
      rewrite: {pathPrefix: /a, fullPath: /b}
    - name: relative
      matches: [{path: {type: Exact, value: /rel}}]
      backends: [{pool: web}]
      rewrite: {fullPath: "admin"}
    - name: query
      matches: [{path: {type: Exact, value: /q}}]
      backends: [{pool: web}]
      rewrite: {fullPath: "/admin?x=1"}
    - name: double
      matches: [{path: {type: Exact, value: /d}}]
      backends: [{pool: web}]
      rewrite: {fullPath: "/a//admin"}
    - name: smuggle
      matches: [{path: {type: Exact, value: /s}}]
      backends: [{pool: web}]
      rewrite: {hostname: "internal.example\r\nx-admin: 1"}
    - name: hostport
      matches: [{path: {type: Exact, value: /hp}}]
      backends: [{pool: web}]
      rewrite: {hostname: "internal.example:8080"}
"#,
    );
    let f = forward(&out, "full");
    let rw = f.rewrite.as_ref().expect("a rewrite");
    assert_eq!(rw.full_path.as_deref(), Some("/v2/accounts"));
    assert_eq!(rw.path_prefix, None);
    assert_eq!(rw.hostname.as_deref(), Some("internal.example"));
    let rw = forward(&out, "prefix").rewrite.clone().expect("a rewrite");
    assert_eq!((rw.path_prefix.as_deref(), rw.full_path), (Some("/"), None));

    let messages = with_reason(&out, Reason::InvalidRewrite);
    assert_eq!(messages.len(), 6, "{messages:#?}");
    for name in ["smuggle", "hostport"] {
        assert!(
            messages
                .iter()
                .any(|m| m.starts_with(&format!("rule {name}: rewrite.hostname"))
                    && m.contains("is not a DNS name")
                    && !m.contains('\r')),
            "{name}: {messages:#?}"
        );
    }
    assert!(messages.contains(
        &"rule both: rewrite takes pathPrefix or fullPath, not both; keep one (the rule is left out)"
            .to_string()
    ));
    for name in ["relative", "query", "double"] {
        assert!(
            messages.iter().any(|m| m.starts_with(&format!("rule {name}: rewrite.fullPath"))
                && m.ends_with("must start with / and hold only URL path characters (no '?', '#', '//', '\\', spaces or control characters); the rule is left out")),
            "{name}: {messages:#?}"
        );
    }
    for name in ["both", "relative", "query", "double", "smuggle", "hostport"] {
        assert!(absent(&out, name), "{name}");
    }
}

// --- mirrors --------------------------------------------------------------------------

#[test]
fn mirrors_compile_and_their_pools_join_the_table() {
    let out = with_rules(
        r#"
    - name: m
      backends: [{pool: web}]
      mirrors: [{backend: shadow}, {backend: shadow2, percent: 5}, {backend: web, percent: 0}]
"#,
    );
    assert!(out.diagnostics.is_empty(), "{:?}", diags(&out));
    assert_eq!(
        forward(&out, "m").mirrors,
        [
            Mirror {
                cluster: "default/shadow".into(),
                per_million: 1_000_000
            },
            Mirror {
                cluster: "default/shadow2".into(),
                per_million: 50_000
            },
            Mirror {
                cluster: "default/web".into(),
                per_million: 0
            },
        ]
    );
    // No rule forwards to the shadow pools, yet they are clusters of the table.
    let clusters: Vec<&str> = out.table.clusters.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(
        clusters,
        ["default/shadow", "default/shadow2", "default/web"]
    );
    assert_valid_snapshot(&out);
}

#[test]
fn a_missing_mirror_pool_is_reported_and_the_rule_still_forwards() {
    let out = with_rules(
        r#"
    - name: m
      backends: [{pool: web}]
      mirrors: [{backend: ghost}, {backend: shadow, percent: 101}, {backend: shadow2, percent: -1}]
"#,
    );
    let missing = with_reason(&out, Reason::PoolNotFound);
    assert_eq!(
        missing,
        [
            "rule m: UpstreamPool default/ghost does not exist, so nothing is mirrored to it; create it or fix mirrors[].backend"
        ]
    );
    let (reason, _) = out
        .diagnostics
        .condition("ApiRoute", "default", "r", ConditionKind::ResolvedRefs)
        .expect("ResolvedRefs is false");
    assert_eq!(reason, Reason::PoolNotFound);
    let bad = with_reason(&out, Reason::InvalidMirror);
    assert_eq!(bad.len(), 2, "{bad:#?}");
    assert!(
        bad.iter()
            .all(|m| m.contains("is not a share; use 0 to 100 (the mirror is left out)"))
    );
    let f = forward(&out, "m");
    assert!(f.mirrors.is_empty());
    assert_eq!(f.backends[0].cluster, "default/web");
    let clusters: Vec<&str> = out.table.clusters.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(clusters, ["default/web"]);
    assert_valid_snapshot(&out);
}

#[test]
fn mirrors_are_bounded() {
    let out = with_rules(
        r#"
    - name: m
      backends: [{pool: web}]
      mirrors: [{backend: shadow}, {backend: shadow}, {backend: shadow}, {backend: shadow2}, {backend: web}]
"#,
    );
    assert_eq!(
        with_reason(&out, Reason::InvalidMirror),
        ["rule m: mirrors has 5 entries, more than 4; remove some (only the first 4 are used)"]
    );
    let f = forward(&out, "m");
    assert_eq!(f.mirrors.len(), 4);
    assert_eq!(f.mirrors[3].cluster, "default/shadow2");
}

#[test]
fn mirrors_of_a_rule_without_backends_pull_no_pool_in() {
    let out = with_rules(
        r#"
    - name: m
      backends: [{pool: ghost}]
      mirrors: [{backend: shadow}]
"#,
    );
    assert!(matches!(&route(&out, "m").action, RouteAction::DirectResponse(d) if d.status == 500));
    assert!(out.table.clusters.is_empty());
}

// --- backend timeout ------------------------------------------------------------------

#[test]
fn backend_timeout_bounds_each_attempt_within_the_timeout() {
    let out = with_rules(
        r#"
    - name: t1
      matches: [{path: {type: Exact, value: /1}}]
      backends: [{pool: web}]
      backendTimeout: 1500ms
    - name: t2
      matches: [{path: {type: Exact, value: /2}}]
      backends: [{pool: web}]
      timeout: 2s
      backendTimeout: 1m
    - name: t3
      matches: [{path: {type: Exact, value: /3}}]
      backends: [{pool: web}]
    - name: t4
      matches: [{path: {type: Exact, value: /4}}]
      backends: [{pool: web}]
      backendTimeout: 0s
"#,
    );
    assert_eq!(forward(&out, "t1").backend_timeout_ms, Some(1500));
    // Never above the bound on the whole exchange.
    assert_eq!(forward(&out, "t2").backend_timeout_ms, Some(2000));
    assert_eq!(forward(&out, "t3").backend_timeout_ms, None);
    assert_eq!(forward(&out, "t4").backend_timeout_ms, None);
    assert_eq!(
        with_reason(&out, Reason::InvalidTimeout),
        [
            "rule t4: backendTimeout must be above 0s; set a duration such as 2s or remove it (only timeout bounds the attempts meanwhile)"
        ]
    );
}

// --- everything together --------------------------------------------------------------

#[test]
fn a_rule_with_every_filter_round_trips_through_the_table_format() {
    let out = with_rules(
        r#"
    - name: all
      matches: [{path: {type: PathPrefix, value: /accounts}}]
      backends: [{pool: web, weight: 9}, {pool: shadow, weight: 1}]
      timeout: 5s
      backendTimeout: 1s
      rewrite: {fullPath: /v2/accounts}
      requestHeaders: {set: [{name: x-a, value: "1"}], add: [{name: x-b, value: "2"}], remove: [x-c]}
      responseHeaders: {remove: [server]}
      mirrors: [{backend: shadow2, percent: 10}]
"#,
    );
    assert!(out.diagnostics.is_empty(), "{:?}", diags(&out));
    let json = serde_json::to_string(&out.table).unwrap();
    for field in [
        "\"backendTimeoutMs\":1000",
        "\"requestHeaders\"",
        "\"responseHeaders\"",
        "\"mirrors\"",
        "\"perMillion\":100000",
        "\"fullPath\":\"/v2/accounts\"",
    ] {
        assert!(json.contains(field), "{field} in {json}");
    }
    let back: parapet_crds::snapshot::Table = serde_json::from_str(&json).unwrap();
    assert_eq!(back, out.table);
    assert_valid_snapshot(&out);
}
