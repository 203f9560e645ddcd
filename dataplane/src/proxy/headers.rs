//! Proxy header semantics: hop-by-hop stripping and the forwarding headers.

use std::net::IpAddr;

use http::{HeaderMap, HeaderName, HeaderValue, header};

/// Headers that describe one connection, never forwarded (RFC 9110 §7.6.1).
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const VIA_VALUE: HeaderValue = HeaderValue::from_static("1.1 parapet");

/// Whether the request asks to switch protocols (WebSocket and friends).
pub fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// Removes hop-by-hop headers, including those the Connection header names. With
/// `keep_upgrade`, `Connection: upgrade` and `Upgrade` pass so the upstream can switch.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .filter(|n| !(keep_upgrade && n == header::UPGRADE))
        .collect();
    for n in named {
        headers.remove(n);
    }
    for h in &HOP_BY_HOP {
        headers.remove(h);
    }
    if keep_upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(header::UPGRADE);
    }
}

/// Adds X-Forwarded-*, Forwarded and Via for a request going upstream.
pub fn add_forwarding(
    headers: &mut HeaderMap,
    client: IpAddr,
    proto: &'static str,
    host: Option<&str>,
) {
    // Each value is formatted on the stack and copied once into its own header value.
    let prev_xff = headers
        .get(&X_FORWARDED_FOR)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty());
    // A previous value is kept only if it is visible ASCII (as the chain's syntax needs).
    let xff = formatted(|w| {
        if let Some(prev) = prev_xff {
            write!(w, "{prev}, ")?;
        }
        write!(w, "{client}")
    });
    if let Some(v) = xff {
        headers.insert(X_FORWARDED_FOR, v);
    }
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    if let Some(host) = host
        && !headers.contains_key(&X_FORWARDED_HOST)
    {
        // Usually the Host header itself: share it.
        let v = match headers.get(header::HOST) {
            Some(h) if h.as_bytes() == host.as_bytes() => Some(h.clone()),
            _ => HeaderValue::from_str(host).ok(),
        };
        if let Some(v) = v {
            headers.insert(X_FORWARDED_HOST, v);
        }
    }
    let prev_fwd = headers
        .get(header::FORWARDED)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty());
    let host_param = host.filter(|h| {
        h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b))
    });
    let forwarded = formatted(|w| {
        if let Some(prev) = prev_fwd {
            write!(w, "{prev}, ")?;
        }
        match client {
            IpAddr::V4(ip) => write!(w, "for={ip};proto={proto}")?,
            IpAddr::V6(ip) => write!(w, "for=\"[{ip}]\";proto={proto}")?,
        }
        if let Some(h) = host_param {
            write!(w, ";host={h}")?;
        }
        Ok(())
    });
    if let Some(v) = forwarded {
        headers.insert(header::FORWARDED, v);
    }
    append_via(headers);
}

/// A header value written by `write`: on the stack when it fits, then one allocation (the
/// value's own); `None` if it is not a valid header value.
fn formatted(
    write: impl Fn(&mut dyn std::io::Write) -> std::io::Result<()>,
) -> Option<HeaderValue> {
    let mut stack = [0u8; 256];
    let written = {
        let mut w: &mut [u8] = &mut stack;
        write(&mut w).ok().map(|()| 256 - w.len())
    };
    match written {
        Some(n) => HeaderValue::from_bytes(&stack[..n]).ok(),
        None => {
            // Longer than the stack buffer (a long chain from earlier proxies).
            let mut v = Vec::new();
            write(&mut v).ok()?;
            HeaderValue::from_bytes(&v).ok()
        }
    }
}

pub fn append_via(headers: &mut HeaderMap) {
    headers.append(header::VIA, VIA_VALUE);
}

/// Lower-case, without port. Total: any string (a Host header is any visible ASCII, not
/// necessarily a valid authority) gives a result; an IPv6 literal keeps its brackets, and
/// an unclosed `[` is kept as it is (it then matches no domain).
pub fn normalise_host(raw: &str) -> std::borrow::Cow<'_, str> {
    let without_port = if raw.starts_with('[') {
        raw.find(']').map_or(raw, |end| &raw[..=end])
    } else {
        raw.rsplit_once(':').map_or(raw, |(h, p)| {
            if p.bytes().all(|b| b.is_ascii_digit()) {
                h
            } else {
                raw
            }
        })
    };
    if without_port.bytes().any(|b| b.is_ascii_uppercase()) {
        without_port.to_ascii_lowercase().into()
    } else {
        without_port.into()
    }
}

/// A fresh request id: 128 random bits in hex.
pub fn new_request_id() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let id: u128 = rand::random();
    let mut buf = [0u8; 32];
    for (i, b) in buf.iter_mut().enumerate() {
        *b = HEX[((id >> (124 - 4 * i)) & 0xf) as usize];
    }
    // Owned by a shared `Bytes` from the start: the request and the response both carry the
    // id, and cloning a copied-in value would allocate again.
    HeaderValue::from_maybe_shared(bytes::Bytes::from_owner(buf))
        .expect("hex is a valid header value")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_forwarding_chains_are_kept_whole() {
        let prev = (0..40)
            .map(|i| format!("10.0.0.{i}"))
            .collect::<Vec<_>>()
            .join(", ");
        assert!(prev.len() > 256);
        let mut h = HeaderMap::new();
        h.insert(X_FORWARDED_FOR, prev.parse().unwrap());
        h.insert(header::FORWARDED, format!("for={prev}").parse().unwrap());
        add_forwarding(
            &mut h,
            "192.0.2.1".parse().unwrap(),
            "https",
            Some("api.example"),
        );
        assert_eq!(h[&X_FORWARDED_FOR], format!("{prev}, 192.0.2.1").as_str());
        assert_eq!(
            h[header::FORWARDED],
            format!("for={prev}, for=192.0.2.1;proto=https;host=api.example").as_str()
        );
        let mut h = HeaderMap::new();
        add_forwarding(&mut h, "2001:db8::1".parse().unwrap(), "http", None);
        assert_eq!(h[&X_FORWARDED_FOR], "2001:db8::1");
        assert_eq!(h[header::FORWARDED], "for=\"[2001:db8::1]\";proto=http");
    }

    #[test]
    fn request_ids_are_32_hex_digits_and_differ() {
        let (a, b) = (new_request_id(), new_request_id());
        assert_ne!(a, b);
        for id in [a, b] {
            let s = id.to_str().unwrap();
            assert_eq!(s.len(), 32, "{s}");
            assert!(
                s.bytes()
                    .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()),
                "{s}"
            );
            assert!(u128::from_str_radix(s, 16).is_ok());
        }
    }

    #[test]
    fn strips_hop_by_hop_and_connection_named_headers() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, "keep-alive, x-secret".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert("x-secret", "1".parse().unwrap());
        h.insert(header::TRANSFER_ENCODING, "chunked".parse().unwrap());
        h.insert(header::TE, "trailers".parse().unwrap());
        h.insert("x-kept", "1".parse().unwrap());
        strip_hop_by_hop(&mut h, false);
        let names: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, vec!["x-kept"]);
    }

    #[test]
    fn upgrade_survives_when_asked() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, "Upgrade".parse().unwrap());
        h.insert(header::UPGRADE, "websocket".parse().unwrap());
        assert!(is_upgrade(&h));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h.get(header::UPGRADE).unwrap(), "websocket");
        assert_eq!(h.get(header::CONNECTION).unwrap(), "upgrade");
    }

    #[test]
    fn forwarding_headers_append() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", "203.0.113.9".parse().unwrap());
        add_forwarding(
            &mut h,
            "127.0.0.1".parse().unwrap(),
            "http",
            Some("api.example"),
        );
        assert_eq!(h.get("x-forwarded-for").unwrap(), "203.0.113.9, 127.0.0.1");
        assert_eq!(h.get("x-forwarded-proto").unwrap(), "http");
        assert_eq!(h.get("x-forwarded-host").unwrap(), "api.example");
        assert_eq!(
            h.get("forwarded").unwrap(),
            "for=127.0.0.1;proto=http;host=api.example"
        );
        assert_eq!(h.get("via").unwrap(), "1.1 parapet");
        let mut h6 = HeaderMap::new();
        add_forwarding(&mut h6, "::1".parse().unwrap(), "https", None);
        assert_eq!(h6.get("forwarded").unwrap(), "for=\"[::1]\";proto=https");
    }
}
