//! Proxy header semantics: hop-by-hop stripping and the forwarding headers.

use std::net::IpAddr;

use http::{HeaderMap, HeaderName, HeaderValue, header};

/// Headers that describe one connection, never forwarded (RFC 9110 §7.6.1).
// Statics, not consts: a const array is built (and its eight names dropped) at every use.
static HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

/// Headers the gateway sets or frames the message by: a `Connection` header naming them
/// does not remove them (else `Connection: x-request-id` would strip the gateway's own id
/// on the way up).
pub static PROTECTED: [HeaderName; 8] = [
    header::HOST,
    header::CONTENT_LENGTH,
    X_REQUEST_ID,
    X_FORWARDED_FOR,
    X_FORWARDED_PROTO,
    X_FORWARDED_HOST,
    header::FORWARDED,
    header::VIA,
];
/// The settings of an HTTP/2 upgrade (`Upgrade: h2c`), which is never forwarded.
const HTTP2_SETTINGS: HeaderName = HeaderName::from_static("http2-settings");

/// The lengths of the names `strip_hop_by_hop` looks for (the hop-by-hop ones,
/// `http2-settings`, `upgrade`), one bit each: most names are passed over on their length,
/// before ten comparisons. A test keeps it in step with the names.
const SOUGHT_LENGTHS: u32 =
    1 << 2 | 1 << 7 | 1 << 10 | 1 << 14 | 1 << 16 | 1 << 17 | 1 << 18 | 1 << 19;

fn may_be_sought(n: &HeaderName) -> bool {
    let len = n.as_str().len();
    len < 32 && SOUGHT_LENGTHS & (1 << len) != 0
}

pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The client's deadline for the whole exchange, in milliseconds; honoured when shorter
/// than the route's timeout, and not forwarded.
pub const X_PARAPET_TIMEOUT_MS: HeaderName = HeaderName::from_static("x-parapet-timeout-ms");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
/// This hop's `Via` value, spelt once for the header map and the own codec's line.
macro_rules! via {
    () => {
        "1.1 parapet"
    };
}
const VIA_VALUE: HeaderValue = HeaderValue::from_static(via!());

/// Whether the request asks to switch protocols (WebSocket and friends).
pub fn is_upgrade(headers: &HeaderMap) -> bool {
    crate::fields::has_field(headers, &header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// The protocol a request may switch to: it asks (`Connection: upgrade`, one `Upgrade`
/// field naming one protocol) for one the rule allows. `h2c` never: after an HTTP/2
/// upgrade the client would speak to the backend past routing, keys and limits. A request
/// that asks for anything else is served as an ordinary request, its `Upgrade` dropped
/// (RFC 9110 §7.8 lets a server ignore it).
pub fn allowed_upgrade<'h>(headers: &'h HeaderMap, allowed: &[String]) -> Option<&'h HeaderValue> {
    if allowed.is_empty() || !is_upgrade(headers) {
        return None;
    }
    let mut fields = headers.get_all(header::UPGRADE).iter();
    let value = fields.next()?;
    if fields.next().is_some() {
        return None;
    }
    let protocol = upgrade_name(value)?;
    (!protocol.eq_ignore_ascii_case(b"h2c")
        && allowed
            .iter()
            .any(|a| a.as_bytes().eq_ignore_ascii_case(protocol)))
    .then_some(value)
}

/// The protocol name of a one-protocol `Upgrade` value (`websocket`, `foo/2` → `foo`).
pub fn upgrade_name(value: &HeaderValue) -> Option<&[u8]> {
    let v = value.as_bytes().trim_ascii();
    if v.is_empty() || v.contains(&b',') {
        return None;
    }
    Some(v.split(|b| *b == b'/').next().unwrap_or(v).trim_ascii())
}

/// Removes hop-by-hop headers, including those the Connection header names. With
/// `keep_upgrade`, `Connection: upgrade` and `Upgrade` pass so the upstream can switch.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    // One pass over the names finds which are here (most messages carry none of them, and
    // `Connection: close` only itself): a removal is a hash and a probe, paid only for the
    // names present. One bit per `HOP_BY_HOP` name: none set, nothing more is walked.
    let mut present = 0u8;
    let (mut settings, mut upgrade) = (false, false);
    for n in headers.keys() {
        if !may_be_sought(n) {
            continue;
        }
        if let Some(i) = HOP_BY_HOP.iter().position(|h| h == n) {
            present |= 1 << i;
        } else if n == HTTP2_SETTINGS {
            settings = true;
        } else if n == header::UPGRADE {
            upgrade = true;
        }
    }
    if present & 1 != 0 {
        // HOP_BY_HOP[0]: Connection.
        // The fields the Connection header names. `close` is an option, not a field (the
        // field name is reserved so that it never is one); the hop-by-hop ones go below.
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|t| !t.eq_ignore_ascii_case("close"))
            .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
            .filter(|n| {
                !(HOP_BY_HOP.contains(n)
                    || PROTECTED.contains(n)
                    || n == header::UPGRADE && keep_upgrade)
            })
            .collect();
        for n in named {
            headers.remove(n);
        }
    }
    while present != 0 {
        let i = present.trailing_zeros() as usize;
        present &= present - 1;
        headers.remove(&HOP_BY_HOP[i]);
    }
    if settings {
        headers.remove(HTTP2_SETTINGS);
    }
    if keep_upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else if upgrade {
        headers.remove(header::UPGRADE);
    }
}

/// The forwarding headers of one request: added to its head (`apply`) for hyper's client,
/// or written straight into the encoded request (`HeadExtras`) by Parapet's own, where
/// they cost no header-map inserts or allocations.
///
/// What a client says about earlier hops (`X-Forwarded-*`, `Forwarded`) is kept only when
/// the peer is a trusted proxy (`--trusted-proxies`): a chain is then extended, and the
/// original `X-Forwarded-Proto`/`-Host` kept. From any other peer those fields are replaced,
/// so a client cannot tell the backend it came from elsewhere or asked for another host.
#[derive(Clone, Copy, Debug)]
pub struct Forwarding<'a> {
    pub client: IpAddr,
    pub proto: &'static str,
    /// The request's authority as the router read it.
    pub host: Option<&'a str>,
    /// The peer is a trusted proxy: its forwarding fields are kept and extended.
    pub trusted: bool,
}

impl Forwarding<'_> {
    /// Sets the forwarding fields in `headers`.
    pub fn apply(&self, headers: &mut HeaderMap) {
        // Each value is written once, by hand (core::fmt cost more than the rest of this
        // function), into the buffer the header value then owns; five fields at most, so
        // the map regrows once instead of several times.
        headers.reserve(5);
        let prev_xff = self.previous(headers, &X_FORWARDED_FOR);
        let mut xff = Vec::with_capacity(prev_xff.map_or(0, |p| p.len() + 2) + 39);
        write_xff(&mut xff, prev_xff, self.client);
        if let Some(v) = owned_value(xff) {
            headers.insert(X_FORWARDED_FOR, v);
        }
        if !self.keeps(headers, &X_FORWARDED_PROTO) {
            headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(self.proto));
        }
        if !self.keeps(headers, &X_FORWARDED_HOST) {
            // Usually the Host header itself: share it.
            let v = self.host.and_then(|host| match headers.get(header::HOST) {
                Some(h) if h.as_bytes() == host.as_bytes() => Some(h.clone()),
                _ => HeaderValue::from_str(host).ok(),
            });
            match v {
                Some(v) => headers.insert(X_FORWARDED_HOST, v),
                None => headers.remove(X_FORWARDED_HOST),
            };
        }
        let prev_fwd = self.previous(headers, &header::FORWARDED);
        let mut fwd = Vec::with_capacity(
            prev_fwd.map_or(0, |p| p.len() + 2) + 64 + self.host.map_or(0, str::len),
        );
        write_forwarding(&mut fwd, prev_fwd, |o| push_ip(o, self.client), self);
        if let Some(v) = owned_value(fwd) {
            headers.insert(header::FORWARDED, v);
        }
        append_via(headers);
    }

    /// The earlier chain of `name` this hop extends: none unless the peer is trusted.
    fn previous<'h>(&self, headers: &'h HeaderMap, name: &HeaderName) -> Option<&'h str> {
        if self.trusted {
            first_visible(headers, name)
        } else {
            None
        }
    }

    /// Whether the client's `name` is passed on as it is (a trusted proxy's original
    /// `X-Forwarded-Proto` or `-Host`).
    fn keeps(&self, headers: &HeaderMap, name: &HeaderName) -> bool {
        self.trusted && headers.contains_key(name)
    }
}

impl crate::upstream::http1::HeadExtras for Forwarding<'_> {
    fn replaces(&self, name: &HeaderName) -> bool {
        name == X_FORWARDED_FOR
            || name == header::FORWARDED
            || (!self.trusted && (name == X_FORWARDED_PROTO || name == X_FORWARDED_HOST))
    }

    /// The same fields `apply` sets, as header lines. Each line's end is written with the
    /// next one's name: fewer, longer copies.
    fn write(&self, out: &mut Vec<u8>, headers: &HeaderMap) {
        let (prev_xff, prev_fwd) = (
            self.previous(headers, &X_FORWARDED_FOR),
            self.previous(headers, &header::FORWARDED),
        );
        let host = self.host.map_or(0, str::len);
        out.reserve(
            160 + 2 * host
                + prev_xff.map_or(0, |p| p.len() + 2)
                + prev_fwd.map_or(0, |p| p.len() + 2),
        );
        out.extend_from_slice(b"x-forwarded-for: ");
        push_chain(out, prev_xff);
        // The client's address is written once, and copied into `Forwarded` below.
        let ip = out.len();
        push_ip(out, self.client);
        let ip = ip..out.len();
        if !self.keeps(headers, &X_FORWARDED_PROTO) {
            out.extend_from_slice(b"\r\nx-forwarded-proto: ");
            out.extend_from_slice(self.proto.as_bytes());
        }
        if !self.keeps(headers, &X_FORWARDED_HOST)
            && let Some(host) = self.host
            && valid_value(host.as_bytes())
        {
            out.extend_from_slice(b"\r\nx-forwarded-host: ");
            out.extend_from_slice(host.as_bytes());
        }
        out.extend_from_slice(b"\r\nforwarded: ");
        write_forwarding(out, prev_fwd, |o| o.extend_from_within(ip), self);
        out.extend_from_slice(concat!("\r\nvia: ", via!(), "\r\n").as_bytes());
    }
}

/// The first value of `name` when it is visible ASCII and not empty (what a chain extends).
fn first_visible<'h>(headers: &'h HeaderMap, name: &HeaderName) -> Option<&'h str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
}

/// The earlier chain a value extends, and its separator.
fn push_chain(out: &mut Vec<u8>, prev: Option<&str>) {
    if let Some(prev) = prev {
        out.extend_from_slice(prev.as_bytes());
        out.extend_from_slice(b", ");
    }
}

/// An X-Forwarded-For value: the earlier chain, then the client.
fn write_xff(out: &mut Vec<u8>, prev: Option<&str>, client: IpAddr) {
    push_chain(out, prev);
    push_ip(out, client);
}

/// A Forwarded value (RFC 7239): the earlier elements, then this hop's: the client's address
/// as `ip` writes it (bare for IPv4, quoted in brackets for IPv6), `;proto=`, and `;host=`
/// when the host is a token.
fn write_forwarding(
    out: &mut Vec<u8>,
    prev: Option<&str>,
    ip: impl FnOnce(&mut Vec<u8>),
    hop: &Forwarding<'_>,
) {
    push_chain(out, prev);
    let v6 = hop.client.is_ipv6();
    out.extend_from_slice(if v6 { b"for=\"[" } else { b"for=" });
    ip(out);
    if v6 {
        out.extend_from_slice(b"]\"");
    }
    out.extend_from_slice(b";proto=");
    out.extend_from_slice(hop.proto.as_bytes());
    if let Some(h) = hop.host.filter(|h| {
        h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b':' | b'[' | b']'))
    }) {
        out.extend_from_slice(b";host=");
        out.extend_from_slice(h.as_bytes());
    }
}

/// Whether `bytes` make a valid header value, as `HeaderValue::from_bytes` decides, without
/// making one (which copies them).
fn valid_value(bytes: &[u8]) -> bool {
    bytes.iter().all(|&b| (b >= 32 && b != 127) || b == b'\t')
}

/// A header value that owns `bytes` (no copy); `None` if they are not a valid value.
fn owned_value(bytes: Vec<u8>) -> Option<HeaderValue> {
    HeaderValue::from_maybe_shared(bytes::Bytes::from(bytes)).ok()
}

/// An IP address as text: IPv4 by hand (the common case), IPv6 through `Display`.
fn push_ip(out: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            // Into a buffer on the stack, then one copy: a push per digit checked the
            // vector's capacity each time.
            let mut text = [0u8; 15];
            let mut n = 0;
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    text[n] = b'.';
                    n += 1;
                }
                if octet >= 100 {
                    text[n] = b'0' + octet / 100;
                    n += 1;
                }
                if octet >= 10 {
                    text[n] = b'0' + octet / 10 % 10;
                    n += 1;
                }
                text[n] = b'0' + octet % 10;
                n += 1;
            }
            out.extend_from_slice(&text[..n]);
        }
        IpAddr::V6(v6) => {
            use std::io::Write as _;
            // Writing to a Vec cannot fail.
            let _ = write!(out, "{v6}");
        }
    }
}

pub fn append_via(headers: &mut HeaderMap) {
    headers.append(header::VIA, VIA_VALUE);
}

/// Lower-case, without port and without the trailing dot of a fully qualified name
/// (`api.example.` is `api.example`, as the router reads it: every per-host decision —
/// routing, client certificates, the cache key — must see the same name). Total: any
/// string (a Host header is any visible ASCII, not necessarily a valid authority) gives a
/// result; an IPv6 literal keeps its brackets, and an unclosed `[` is kept as it is (it then
/// matches no domain).
pub fn normalise_host(raw: &str) -> std::borrow::Cow<'_, str> {
    // Byte searches, then slices: `str`'s searchers cost several times as much on names
    // this short, and each search stops where it finds (one pass noting every byte's kind
    // measured slower). A colon, a dot and a bracket are ASCII, so every slice below ends
    // on a character boundary.
    let b = raw.as_bytes();
    let without_port = if b.first() == Some(&b'[') {
        match b.iter().position(|&c| c == b']') {
            Some(end) => &raw[..=end],
            None => trim_dots(raw),
        }
    } else {
        match b.iter().position(|&c| c == b':') {
            None => trim_dots(raw),
            // Digits to the end: the only colon, and a port.
            Some(i) if b[i + 1..].iter().all(u8::is_ascii_digit) => trim_dots(&raw[..i]),
            // Not a name with a port: kept whole, dots included (trimming `0:.` to `0:`
            // would make a second reading strip a port the first one kept). It matches no
            // domain.
            Some(_) => raw,
        }
    };
    if without_port.bytes().any(|b| b.is_ascii_uppercase()) {
        without_port.to_ascii_lowercase().into()
    } else {
        without_port.into()
    }
}

/// `s` without its trailing dots.
fn trim_dots(s: &str) -> &str {
    let end = s.bytes().rposition(|c| c != b'.').map_or(0, |i| i + 1);
    &s[..end]
}

/// A fresh request id: 128 random bits in hex.
pub fn new_request_id() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let id: [u8; 16] = rand::random();
    let mut buf = [0u8; 32];
    // Byte by byte: shifting a u128 for each digit cost five times as many instructions.
    for (pair, byte) in buf.chunks_exact_mut(2).zip(id) {
        pair[0] = HEX[usize::from(byte >> 4)];
        pair[1] = HEX[usize::from(byte & 0xf)];
    }
    // Owned by a shared `Bytes` from the start: the request and the response both carry the
    // id, and cloning a copied-in value would allocate again.
    HeaderValue::from_maybe_shared(bytes::Bytes::from_owner(buf))
        .expect("hex is a valid header value")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Forwarding from a trusted proxy.
    fn add_forwarding(h: &mut HeaderMap, client: IpAddr, proto: &'static str, host: Option<&str>) {
        Forwarding {
            client,
            proto,
            host,
            trusted: true,
        }
        .apply(h);
    }

    #[test]
    fn an_untrusted_peer_cannot_speak_for_earlier_hops() {
        let mut h = HeaderMap::new();
        h.insert(X_FORWARDED_FOR, "10.9.9.9".parse().unwrap());
        h.insert(X_FORWARDED_HOST, "keyed.example".parse().unwrap());
        h.insert(X_FORWARDED_PROTO, "https".parse().unwrap());
        h.insert(
            header::FORWARDED,
            "for=10.9.9.9;host=keyed.example".parse().unwrap(),
        );
        let mut trusted = h.clone();
        let fwd = Forwarding {
            client: "192.0.2.1".parse().unwrap(),
            proto: "http",
            host: Some("public.example"),
            trusted: false,
        };
        fwd.apply(&mut h);
        assert_eq!(h[&X_FORWARDED_FOR], "192.0.2.1");
        assert_eq!(h[&X_FORWARDED_HOST], "public.example");
        assert_eq!(h[&X_FORWARDED_PROTO], "http");
        assert_eq!(
            h[header::FORWARDED],
            "for=192.0.2.1;proto=http;host=public.example"
        );
        // Without a host of its own the client's is not passed on either.
        let mut h2 = HeaderMap::new();
        h2.insert(X_FORWARDED_HOST, "keyed.example".parse().unwrap());
        Forwarding { host: None, ..fwd }.apply(&mut h2);
        assert!(!h2.contains_key(&X_FORWARDED_HOST));
        // A trusted proxy's chain is extended and its original proto and host kept.
        Forwarding {
            trusted: true,
            ..fwd
        }
        .apply(&mut trusted);
        assert_eq!(trusted[&X_FORWARDED_FOR], "10.9.9.9, 192.0.2.1");
        assert_eq!(trusted[&X_FORWARDED_HOST], "keyed.example");
        assert_eq!(trusted[&X_FORWARDED_PROTO], "https");
        assert_eq!(
            trusted[header::FORWARDED],
            "for=10.9.9.9;host=keyed.example, for=192.0.2.1;proto=http;host=public.example"
        );
    }

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
    fn the_written_lines_are_what_apply_sets() {
        let chains = [
            None,
            Some((
                "10.9.9.9",
                "for=10.9.9.9;host=keyed.example",
                "https",
                "keyed.example",
            )),
        ];
        for (client, host, trusted, chain) in cases() {
            let mut h = HeaderMap::new();
            h.insert(header::HOST, "api.example".parse().unwrap());
            if let Some((xff, fwd, proto, xfh)) = chains[chain] {
                h.insert(X_FORWARDED_FOR, xff.parse().unwrap());
                h.insert(header::FORWARDED, fwd.parse().unwrap());
                h.insert(X_FORWARDED_PROTO, proto.parse().unwrap());
                h.insert(X_FORWARDED_HOST, xfh.parse().unwrap());
            }
            let fwd = Forwarding {
                client: client.parse().unwrap(),
                proto: "http",
                host,
                trusted,
            };
            let mut written = Vec::new();
            crate::upstream::http1::HeadExtras::write(&fwd, &mut written, &h);
            // What is written, as a map: the fields of `h` it does not replace, then its lines.
            let mut got = HeaderMap::new();
            for (n, v) in &h {
                if !crate::upstream::http1::HeadExtras::replaces(&fwd, n) {
                    got.append(n, v.clone());
                }
            }
            for line in std::str::from_utf8(&written)
                .unwrap()
                .split_terminator("\r\n")
            {
                let (n, v) = line.split_once(": ").unwrap();
                got.append(
                    HeaderName::from_bytes(n.as_bytes()).unwrap(),
                    v.parse().unwrap(),
                );
            }
            let mut want = h.clone();
            fwd.apply(&mut want);
            assert_eq!(
                got, want,
                "{client} {host:?} trusted={trusted} chain={chain}"
            );
        }

        fn cases() -> Vec<(&'static str, Option<&'static str>, bool, usize)> {
            let mut all = Vec::new();
            for client in ["192.0.2.1", "9.10.99.100", "2001:db8::1"] {
                for host in [None, Some("api.example"), Some("[::1]"), Some("a b")] {
                    for trusted in [false, true] {
                        for chain in 0..2 {
                            all.push((client, host, trusted, chain));
                        }
                    }
                }
            }
            all
        }
    }

    #[test]
    fn valid_values_are_those_header_value_takes() {
        for b in 0..=255u8 {
            let bytes = [b'a', b, b'z'];
            assert_eq!(
                valid_value(&bytes),
                HeaderValue::from_bytes(&bytes).is_ok(),
                "{b}"
            );
        }
    }

    #[test]
    fn ip_addresses_are_written_as_display_writes_them() {
        let mut rng = rand::rng();
        let mut addrs: Vec<IpAddr> = [
            "0.0.0.0",
            "9.10.99.100",
            "255.255.255.255",
            "::1",
            "2001:db8::ff:1",
        ]
        .iter()
        .map(|a| a.parse().unwrap())
        .collect();
        addrs.extend((0..1000).map(|_| IpAddr::V4(rand::Rng::random::<u32>(&mut rng).into())));
        for ip in addrs {
            let mut out = Vec::new();
            push_ip(&mut out, ip);
            assert_eq!(String::from_utf8(out).unwrap(), ip.to_string());
        }
    }

    #[test]
    fn every_sought_name_passes_the_length_filter() {
        for n in HOP_BY_HOP.iter().chain([&HTTP2_SETTINGS, &header::UPGRADE]) {
            assert!(may_be_sought(n), "{n}");
        }
        assert!(!may_be_sought(&header::HOST));
        assert!(!may_be_sought(&HeaderName::from_static("x-backend")));
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
        // Both digits of every byte are random: over many ids, every position takes all 16.
        let mut seen = [0u16; 32];
        for _ in 0..2000 {
            let id = new_request_id();
            for (i, c) in id.as_bytes().iter().enumerate() {
                seen[i] |= 1 << (*c as char).to_digit(16).unwrap();
            }
        }
        assert!(seen.iter().all(|&m| m == u16::MAX), "{seen:?}");
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

    #[test]
    fn hosts_are_normalised_as_the_str_searches_did() {
        // What `normalise_host` was written with first, kept as its reference.
        fn reference(raw: &str) -> String {
            let without_port = if raw.starts_with('[') {
                raw.find(']')
                    .map_or(raw.trim_end_matches('.'), |end| &raw[..=end])
            } else {
                match raw.rsplit_once(':') {
                    None => raw.trim_end_matches('.'),
                    Some((h, p)) if !h.contains(':') && p.bytes().all(|b| b.is_ascii_digit()) => {
                        h.trim_end_matches('.')
                    }
                    Some(_) => raw,
                }
            };
            without_port.to_ascii_lowercase()
        }
        let alphabet = ['a', 'Z', '.', ':', '[', ']', '0', '9', 'é', '-'];
        let mut rng = rand::rng();
        for _ in 0..20_000 {
            let len = rand::Rng::random_range(&mut rng, 0..9);
            let raw: String = (0..len)
                .map(|_| alphabet[rand::Rng::random_range(&mut rng, 0..alphabet.len())])
                .collect();
            assert_eq!(normalise_host(&raw), reference(&raw), "{raw:?}");
        }
    }

    #[test]
    fn host_without_port_lowercased() {
        assert_eq!(normalise_host("API.Example:8080"), "api.example");
        assert_eq!(normalise_host("api.example.:443"), "api.example");
        assert_eq!(normalise_host("api.example."), "api.example");
        assert_eq!(normalise_host("[::1]:80"), "[::1]");
        // A Host header is any visible ASCII: an unclosed bracket must not panic.
        assert_eq!(normalise_host("[AbC"), "[abc");
        assert_eq!(normalise_host("["), "[");
        assert_eq!(normalise_host("0:."), "0:.");
        assert_eq!(normalise_host("a.:.:80"), "a.:.:80");
    }
}
