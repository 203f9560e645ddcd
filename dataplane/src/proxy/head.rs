//! The head stage: what a request must be before anything routes it.
//!
//! The router, the API-key check and the backend must all read the same request. A request
//! whose authority or path can be read two ways (two `Host` fields, an absolute URI naming
//! another host than `Host`, `:authority` against `host`, a `..` segment the backend
//! resolves after the router matched the prefix before it) would let a client be routed by
//! one reading and served by the other: it is refused here, before routing.
//!
//! - HTTP/1.1 needs exactly one `Host` (RFC 9112 §3.2); HTTP/1.0 may have none.
//! - In absolute form the URI's authority is the request's authority and replaces `Host`
//!   (RFC 9112 §3.2.2), so the backend is told the host the router used.
//! - HTTP/2's `:authority` and a `host` field must agree (RFC 9113 §8.3.1); `:authority`
//!   is the `Host` sent upstream.
//! - An authority is a host name (letters, digits, `-`, `.`, `_`), an IPv4 address or a
//!   bracketed IPv6 address, and an optional port: no user info, spaces or percent-escapes.
//! - Authority form belongs to `CONNECT`, and this gateway tunnels no `CONNECT`.
//! - `Transfer-Encoding` is `chunked`, once (RFC 9112 §6.1; hyper's parser has already
//!   refused codings that are not chunked last).
//! - Path segments that are `.` or `..`, written plainly or percent-encoded, are refused:
//!   the router compares paths as they arrive.

use http::{HeaderValue, Method, Request, StatusCode, Version, header, uri::Scheme};

/// Why a request head is refused: its answer and its metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Refused {
    pub status: StatusCode,
    /// `rejected_requests_total{reason}`.
    pub reason: &'static str,
    pub detail: &'static str,
}

const fn bad(reason: &'static str, detail: &'static str) -> Refused {
    Refused {
        status: StatusCode::BAD_REQUEST,
        reason,
        detail,
    }
}

/// Checks the head and returns the authority the request is routed by (`None`: an
/// HTTP/1.0 request that names none). For absolute-form HTTP/1 requests the `Host` header is
/// set to the URI's authority.
pub(super) fn check<B: http_body::Body>(
    req: &mut Request<B>,
) -> Result<Option<HeaderValue>, Refused> {
    if req.method() == Method::CONNECT {
        return Err(Refused {
            status: StatusCode::METHOD_NOT_ALLOWED,
            reason: "connect",
            detail: "this gateway does not tunnel CONNECT requests",
        });
    }
    // A request known to have no body (what Parapet's own codec serves) has no
    // Transfer-Encoding: no lookup for it.
    if !req.body().is_end_stream()
        && let mut codings = req.headers().get_all(header::TRANSFER_ENCODING).iter()
        && let Some(te) = codings.next()
    {
        if codings.next().is_some() {
            return Err(bad(
                "transfer_encoding",
                "the request has more than one Transfer-Encoding field; send one, `chunked`",
            ));
        }
        if !te.as_bytes().trim_ascii().eq_ignore_ascii_case(b"chunked") {
            return Err(Refused {
                status: StatusCode::NOT_IMPLEMENTED,
                reason: "transfer_encoding",
                detail: "the only transfer coding this gateway accepts is `chunked`",
            });
        }
    }
    if has_dot_segment(req.uri().path()) {
        return Err(bad(
            "dot_segment",
            "the request path has a `.` or `..` segment; send the path with those resolved",
        ));
    }
    let authority = authority(req)?;
    if let Some(a) = &authority
        && !valid_authority(a.as_bytes())
    {
        return Err(bad(
            "invalid_host",
            "the request's host is not a valid host name or address with an optional port",
        ));
    }
    Ok(authority)
}

/// The request's authority by its HTTP version's rules, before its syntax is checked.
fn authority<B>(req: &mut Request<B>) -> Result<Option<HeaderValue>, Refused> {
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err(bad(
            "invalid_host",
            "the request has more than one Host field; send exactly one",
        ));
    }
    let uri = req.uri();
    if req.version() >= Version::HTTP_2 {
        return match (uri.authority(), host) {
            (Some(a), Some(h)) if !a.as_str().as_bytes().eq_ignore_ascii_case(h.as_bytes()) => {
                Err(bad(
                    "invalid_host",
                    "the request's :authority and host fields name different hosts",
                ))
            }
            (Some(a), _) => {
                let a = HeaderValue::from_str(a.as_str())
                    .map_err(|_| bad("invalid_host", "the request's :authority is not valid"))?;
                // The backend is sent the authority the router read, as written there.
                req.headers_mut().insert(header::HOST, a.clone());
                Ok(Some(a))
            }
            (None, Some(h)) => Ok(Some(h.clone())),
            (None, None) => Err(bad(
                "invalid_host",
                "the request names no host: send :authority",
            )),
        };
    }
    match uri.authority() {
        // Origin form (`/path`): the Host field is the authority.
        None => match host {
            Some(h) => Ok(Some(h.clone())),
            None if req.version() == Version::HTTP_10 => Ok(None),
            None => Err(bad(
                "invalid_host",
                "the request has no Host field; HTTP/1.1 requests must send one",
            )),
        },
        // Absolute form: the URI's authority wins over Host (RFC 9112 §3.2.2), and the
        // backend is sent the same one.
        Some(a) => {
            let scheme = uri.scheme();
            if scheme != Some(&Scheme::HTTP) && scheme != Some(&Scheme::HTTPS) {
                return Err(bad(
                    "invalid_target",
                    "the request target is in authority form, which only CONNECT uses; send a path",
                ));
            }
            let a = HeaderValue::from_str(a.as_str())
                .map_err(|_| bad("invalid_host", "the request URI's authority is not valid"))?;
            req.headers_mut().insert(header::HOST, a.clone());
            Ok(Some(a))
        }
    }
}

/// What a byte may be in an authority, by position: bit 0 a host-name byte, bit 1 a port
/// digit, bit 2 a byte inside `[` `]`.
const CLASS: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        if c.is_ascii_alphanumeric() || c == b'-' || c == b'.' || c == b'_' {
            t[b] |= 1;
        }
        if c.is_ascii_digit() {
            t[b] |= 2;
        }
        if c.is_ascii_hexdigit() || c == b':' || c == b'.' {
            t[b] |= 4;
        }
        b += 1;
    }
    t
};

/// Host name, IPv4 or `[IPv6]`, then an optional `:port` of 1 to 5 digits. One pass: this
/// runs for every request.
fn valid_authority(b: &[u8]) -> bool {
    let host_end = if b.first() == Some(&b'[') {
        let Some(end) = b.iter().position(|c| *c == b']') else {
            return false;
        };
        if end < 3 || !b[1..end].iter().all(|c| CLASS[*c as usize] & 4 != 0) {
            return false;
        }
        end + 1
    } else {
        let mut prev = b'.';
        let mut i = 0;
        while i < b.len() && CLASS[b[i] as usize] & 1 != 0 {
            // No empty label: not at the start, and no `..`.
            if b[i] == b'.' && prev == b'.' {
                return false;
            }
            prev = b[i];
            i += 1;
        }
        if i == 0 {
            return false;
        }
        i
    };
    match &b[host_end..] {
        [] => true,
        [b':', port @ ..] => {
            (1..=5).contains(&port.len()) && port.iter().all(|c| CLASS[*c as usize] & 2 != 0)
        }
        _ => false,
    }
}

/// Whether a segment of `path` is `.` or `..`, also when its dots are percent-encoded.
fn has_dot_segment(path: &str) -> bool {
    let b = path.as_bytes();
    // Most paths have no segment that starts with a dot or an escape.
    if !b
        .windows(2)
        .any(|w| w[0] == b'/' && matches!(w[1], b'.' | b'%'))
    {
        return false;
    }
    path.split('/').any(|seg| {
        let mut dots = 0;
        let mut rest = seg.as_bytes();
        while !rest.is_empty() {
            if rest[0] == b'.' {
                rest = &rest[1..];
            } else if rest.len() >= 3
                && rest[0] == b'%'
                && rest[1] == b'2'
                && matches!(rest[2], b'e' | b'E')
            {
                rest = &rest[3..];
            } else {
                return false;
            }
            dots += 1;
        }
        (1..=2).contains(&dots)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(version: Version, uri: &str, hosts: &[&str]) -> Request<String> {
        let mut b = Request::builder().version(version).uri(uri);
        for h in hosts {
            b = b.header(header::HOST, *h);
        }
        b.body(String::new()).unwrap()
    }

    fn host_of(r: &Result<Option<HeaderValue>, Refused>) -> Option<&str> {
        r.as_ref().ok()?.as_ref().map(|v| v.to_str().unwrap())
    }

    #[test]
    fn http1_needs_exactly_one_host() {
        let v11 = Version::HTTP_11;
        assert_eq!(
            host_of(&check(&mut req(v11, "/x", &["a.example"]))),
            Some("a.example")
        );
        assert!(check(&mut req(v11, "/x", &[])).is_err());
        assert!(check(&mut req(v11, "/x", &["a.example", "a.example"])).is_err());
        assert!(check(&mut req(v11, "/x", &["a.example", "b.example"])).is_err());
        assert_eq!(check(&mut req(Version::HTTP_10, "/x", &[])), Ok(None));
    }

    #[test]
    fn absolute_form_authority_replaces_host() {
        let mut r = req(
            Version::HTTP_11,
            "http://public.example/x",
            &["keyed.example"],
        );
        assert_eq!(host_of(&check(&mut r)), Some("public.example"));
        assert_eq!(r.headers()[header::HOST], "public.example");
        assert_eq!(r.headers().get_all(header::HOST).iter().count(), 1);
        // Authority form outside CONNECT.
        let mut r = req(Version::HTTP_11, "keyed.example:80", &["keyed.example"]);
        assert_eq!(check(&mut r).unwrap_err().reason, "invalid_target");
        // User info is not an authority this gateway routes by.
        let mut r = req(
            Version::HTTP_11,
            "http://u@public.example/x",
            &["public.example"],
        );
        assert!(check(&mut r).is_err());
    }

    #[test]
    fn http2_authority_and_host_must_agree() {
        let v2 = Version::HTTP_2;
        let ok = check(&mut req(v2, "https://a.example/x", &["A.example"]));
        assert_eq!(host_of(&ok), Some("a.example"));
        assert!(check(&mut req(v2, "https://a.example/x", &["b.example"])).is_err());
        assert_eq!(
            host_of(&check(&mut req(v2, "/x", &["b.example"]))),
            Some("b.example")
        );
        assert!(check(&mut req(v2, "/x", &[])).is_err());
    }

    #[test]
    fn connect_and_transfer_codings() {
        let mut r = req(Version::HTTP_11, "a.example:443", &["a.example:443"]);
        *r.method_mut() = Method::CONNECT;
        assert_eq!(
            check(&mut r).unwrap_err().status,
            StatusCode::METHOD_NOT_ALLOWED
        );
        // (Only a request with a body can carry a transfer coding.)
        let mut r = req(Version::HTTP_11, "/", &["a.example"]);
        *r.body_mut() = "abc".into();
        r.headers_mut().append(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        assert!(check(&mut r).is_ok());
        r.headers_mut().append(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        assert_eq!(check(&mut r).unwrap_err().status, StatusCode::BAD_REQUEST);
        let mut r = req(Version::HTTP_11, "/", &["a.example"]);
        *r.body_mut() = "abc".into();
        r.headers_mut().insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("gzip, chunked"),
        );
        assert_eq!(
            check(&mut r).unwrap_err().status,
            StatusCode::NOT_IMPLEMENTED
        );
    }

    #[test]
    fn authorities() {
        for good in [
            "a.example",
            "A-b_c.example:8080",
            "127.0.0.1",
            "127.0.0.1:1",
            "[::1]",
            "[2001:db8::1]:443",
            "localhost:65535",
        ] {
            assert!(valid_authority(good.as_bytes()), "{good}");
        }
        for bad in [
            "",
            ":80",
            "a.example:",
            "a.example:x",
            "a.example:123456",
            "a example",
            "user@a.example",
            "a.example@b.example",
            "a%2eexample",
            ".a.example",
            "a..example",
            "[::1",
            "[]",
            "[v1.x]",
            "[::1]x",
            "a.example:80:80",
            "a/b",
            "a\\b",
        ] {
            assert!(!valid_authority(bad.as_bytes()), "{bad}");
        }
    }

    #[test]
    fn dot_segments() {
        for bad in [
            "/public/../admin",
            "/public/./x",
            "/..",
            "/a/.",
            "/public/%2e%2e/admin",
            "/public/%2E./admin",
            "/public/.%2e",
        ] {
            assert!(has_dot_segment(bad), "{bad}");
        }
        for good in [
            "/",
            "/a/b",
            "/.well-known/x",
            "/a/...",
            "/a/.b",
            "/a%2fb",
            "/%20",
            "/a.b/c",
        ] {
            assert!(!has_dot_segment(good), "{good}");
        }
    }
}
