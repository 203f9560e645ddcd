//! The redirect answer (`RouteAction::Redirect`): a `Location` built from the request's
//! URL with the parts the route replaces, as Gateway API's RequestRedirect filter does.

use http::{HeaderValue, Response, StatusCode, header};
use parapet_crds::snapshot::{PathReplacement, Redirect};

use super::{
    body::ProxyBody,
    prepare::rewrite_prefix,
    problem::{empty, problem},
};

/// What a redirect reads of the request.
pub(super) struct Origin<'a> {
    /// The connection is TLS: the request's scheme is https.
    pub tls: bool,
    /// The authority as the client wrote it (`Host` or `:authority`), for its port.
    pub authority: Option<&'a str>,
    /// The authority's host, lower-case and without port.
    pub host: &'a str,
    pub path: &'a str,
    pub query: Option<&'a str>,
    /// For a `Prefix` route, how many bytes of `path` the prefix matched
    /// (`Matched::prefix_len`); `None` for other routes.
    pub prefix_len: Option<usize>,
}

/// The redirect's answer: its status with `Location`, and no body.
pub(super) fn answer(
    redirect: &Redirect,
    origin: &Origin<'_>,
    rid: Option<&HeaderValue>,
) -> Response<ProxyBody> {
    let status = StatusCode::from_u16(redirect.status)
        .ok()
        .filter(StatusCode::is_redirection)
        .unwrap_or(StatusCode::FOUND);
    let Ok(location) = HeaderValue::try_from(location(redirect, origin)) else {
        return problem(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the route's redirect does not make a valid URL",
            rid,
        );
    };
    let mut r = Response::new(empty());
    *r.status_mut() = status;
    r.headers_mut().insert(header::LOCATION, location);
    if let Some(rid) = rid {
        r.headers_mut()
            .insert(super::headers::X_REQUEST_ID, rid.clone());
    }
    r
}

/// The URL to redirect to: `scheme://host[:port]path[?query]`.
///
/// Each part the redirect leaves `None` is the request's. The port: the redirect's; else,
/// when the redirect sets a scheme, that scheme's default (Gateway API: a scheme change
/// leaves the request's port behind); else the port the request's authority names, if
/// any. A port that is the scheme's default is left out.
pub(super) fn location(redirect: &Redirect, origin: &Origin<'_>) -> String {
    let scheme = redirect
        .scheme
        .as_deref()
        .unwrap_or(if origin.tls { "https" } else { "http" });
    let host = redirect.hostname.as_deref().unwrap_or(origin.host);
    let port = match (redirect.port, &redirect.scheme) {
        (Some(p), _) => Some(p),
        (None, Some(_)) => None,
        (None, None) => origin.authority.and_then(authority_port),
    };
    let port = port.filter(|&p| !is_default_port(scheme, p));
    let path = match (&redirect.path, origin.prefix_len) {
        (None, _) => std::borrow::Cow::Borrowed(origin.path),
        (Some(PathReplacement::Full(p)), _) => std::borrow::Cow::Borrowed(p.as_str()),
        (Some(PathReplacement::Prefix(p)), Some(len)) => rewrite_prefix(origin.path, len, p).into(),
        // Only a Prefix route has a matched prefix to replace (the compiler allows no other).
        (Some(PathReplacement::Prefix(_)), None) => std::borrow::Cow::Borrowed(origin.path),
    };
    let mut url = String::with_capacity(
        scheme.len() + 3 + host.len() + 6 + path.len() + origin.query.map_or(0, |q| q.len() + 1),
    );
    url.push_str(scheme);
    url.push_str("://");
    url.push_str(host);
    if let Some(p) = port {
        url.push(':');
        url.push_str(&p.to_string());
    }
    url.push_str(&path);
    if let Some(q) = origin.query {
        url.push('?');
        url.push_str(q);
    }
    url
}

fn is_default_port(scheme: &str, port: u16) -> bool {
    matches!(
        (scheme.to_ascii_lowercase().as_str(), port),
        ("http", 80) | ("https", 443)
    )
}

/// The port an authority names (`host:port`, `[v6]:port`), if it names one.
fn authority_port(authority: &str) -> Option<u16> {
    let rest = match authority.strip_prefix('[') {
        Some(v6) => &v6[v6.find(']')? + 1..],
        None => authority,
    };
    rest.rsplit_once(':')?.1.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redirect(
        scheme: Option<&str>,
        hostname: Option<&str>,
        port: Option<u16>,
        path: Option<PathReplacement>,
    ) -> Redirect {
        Redirect {
            scheme: scheme.map(str::to_string),
            hostname: hostname.map(str::to_string),
            port,
            path,
            status: 302,
        }
    }

    fn origin<'a>(tls: bool, authority: &'a str, path: &'a str) -> Origin<'a> {
        Origin {
            tls,
            authority: Some(authority),
            host: authority.split(':').next().unwrap(),
            path,
            query: None,
            prefix_len: None,
        }
    }

    #[test]
    fn scheme_and_port_follow_gateway_api() {
        let on80 = origin(false, "gw.example", "/p");
        let on8080 = origin(false, "gw.example:8080", "/p");
        let on443 = origin(true, "gw.example", "/p");
        let org = Some("example.org");
        let cases = [
            // The conformance cases (httproute-redirect-port-and-scheme).
            (
                redirect(None, org, None, None),
                &on80,
                "http://example.org/p",
            ),
            (
                redirect(None, org, Some(80), None),
                &on80,
                "http://example.org/p",
            ),
            (
                redirect(None, org, Some(8080), None),
                &on80,
                "http://example.org:8080/p",
            ),
            (
                redirect(Some("https"), org, None, None),
                &on80,
                "https://example.org/p",
            ),
            (
                redirect(Some("https"), org, Some(443), None),
                &on80,
                "https://example.org/p",
            ),
            (
                redirect(Some("https"), org, Some(8443), None),
                &on80,
                "https://example.org:8443/p",
            ),
            (
                redirect(None, org, None, None),
                &on8080,
                "http://example.org:8080/p",
            ),
            (
                redirect(None, org, Some(80), None),
                &on8080,
                "http://example.org/p",
            ),
            (
                redirect(Some("https"), org, None, None),
                &on8080,
                "https://example.org/p",
            ),
            (
                redirect(None, org, None, None),
                &on443,
                "https://example.org/p",
            ),
            (
                redirect(None, org, Some(443), None),
                &on443,
                "https://example.org/p",
            ),
            (
                redirect(None, org, Some(8443), None),
                &on443,
                "https://example.org:8443/p",
            ),
            (
                redirect(Some("http"), org, None, None),
                &on443,
                "http://example.org/p",
            ),
            (
                redirect(Some("http"), org, Some(80), None),
                &on443,
                "http://example.org/p",
            ),
            (
                redirect(Some("http"), org, Some(8080), None),
                &on443,
                "http://example.org:8080/p",
            ),
            // Nothing replaced: the request's own URL, its port kept.
            (
                redirect(None, None, None, None),
                &on8080,
                "http://gw.example:8080/p",
            ),
            (
                redirect(None, None, Some(9000), None),
                &on443,
                "https://gw.example:9000/p",
            ),
        ];
        for (r, o, want) in cases {
            assert_eq!(location(&r, o), want, "{r:?}");
        }
    }

    #[test]
    fn paths_are_replaced_whole_or_by_prefix_and_the_query_is_kept() {
        let prefix = |p: &str| Some(PathReplacement::Prefix(p.into()));
        let full = |p: &str| Some(PathReplacement::Full(p.into()));
        let at =
            |path: &'static str, prefix_len: Option<usize>, query: Option<&'static str>| Origin {
                tls: false,
                authority: Some("example.org"),
                host: "example.org",
                path,
                query,
                prefix_len,
            };
        let cases = [
            // httproute-redirect-path.
            (
                prefix("/replacement-prefix"),
                at("/original-prefix/lemon", Some(16), None),
                "http://example.org/replacement-prefix/lemon",
            ),
            (
                full("/full-path-replacement"),
                at("/full/path/original", Some(19), None),
                "http://example.org/full-path-replacement",
            ),
            (
                prefix("/replacement-prefix"),
                at("/path-and-host", Some(14), None),
                "http://example.org/replacement-prefix",
            ),
            // As the prefix rewrite: `/` strips the prefix, one slash at the seam.
            (
                prefix("/"),
                at("/prefix/one", Some(7), None),
                "http://example.org/one",
            ),
            (
                prefix("/"),
                at("/prefix", Some(7), None),
                "http://example.org/",
            ),
            (
                prefix("/new/"),
                at("/prefix/one", Some(7), None),
                "http://example.org/new/one",
            ),
            (
                None,
                at("/keep", None, Some("a=1&b=2")),
                "http://example.org/keep?a=1&b=2",
            ),
            (
                full("/other"),
                at("/keep", None, Some("a=1")),
                "http://example.org/other?a=1",
            ),
            (
                prefix("/x"),
                at("/exact", None, None),
                "http://example.org/exact",
            ),
        ];
        for (path, o, want) in cases {
            let r = redirect(None, None, None, path);
            assert_eq!(location(&r, &o), want, "{r:?}");
        }
    }

    #[test]
    fn authority_ports_are_read_from_names_and_v6_literals() {
        assert_eq!(authority_port("a.example"), None);
        assert_eq!(authority_port("a.example:8080"), Some(8080));
        assert_eq!(authority_port("[::1]"), None);
        assert_eq!(authority_port("[::1]:8443"), Some(8443));
        assert_eq!(authority_port("a.example:x"), None);
    }

    #[test]
    fn the_answer_has_the_status_and_location_and_no_body() {
        let mut r = redirect(Some("https"), None, None, None);
        r.status = 308;
        let resp = answer(&r, &origin(false, "a.example:8080", "/x"), None);
        assert_eq!(resp.status(), StatusCode::PERMANENT_REDIRECT);
        assert_eq!(resp.headers()[header::LOCATION], "https://a.example/x");
        assert!(hyper::body::Body::is_end_stream(resp.body()));
    }
}
