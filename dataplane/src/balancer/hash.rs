//! Stable hashing: the same bytes give the same `u64` in every process and version, so
//! consistent hashing sends a client to the same endpoint from every replica of the data
//! plane. Changing anything here remaps sessions fleet-wide.
//!
//! FNV-1a (64 bit) over the bytes, then MurmurHash3's 64-bit finaliser, which spreads
//! FNV's weak low bits over the whole word (ring positions and `hash % size` need that).

use std::net::IpAddr;

use http::{HeaderMap, header::COOKIE};
use parapet_crds::snapshot::HashOn;

use crate::fnv::Fnv1a;

/// A streaming stable hasher; see the module docs.
#[derive(Clone, Copy, Debug)]
pub(super) struct StableHasher(Fnv1a);

impl StableHasher {
    pub(super) fn new() -> Self {
        Self(Fnv1a::new())
    }

    pub(super) fn write(mut self, bytes: &[u8]) -> Self {
        self.0.update(bytes);
        self
    }

    pub(super) fn finish(self) -> u64 {
        mix(self.0.value())
    }
}

/// MurmurHash3's `fmix64`: a bijection with full avalanche.
pub(super) fn mix(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    h
}

/// The stable hash of some bytes.
pub fn stable_hash(bytes: &[u8]) -> u64 {
    StableHasher::new().write(bytes).finish()
}

/// The hash a consistent-hashing cluster balances a request on, or `None` when the request
/// lacks what `hash_on` names (the balancer then picks at random).
///
/// - `Header(name)`: the first value of that header (`name` lower-case), as bytes.
/// - `Cookie(name)`: the value of the first cookie of that name in the `Cookie` headers,
///   as sent (quotes included).
/// - `SourceIp`: the client's address; an IPv4-mapped IPv6 address counts as the IPv4 one.
pub fn request_hash(hash_on: &HashOn, headers: &HeaderMap, client_ip: IpAddr) -> Option<u64> {
    match hash_on {
        HashOn::Header(name) => headers
            .get(name.as_str())
            .map(|v| stable_hash(v.as_bytes())),
        HashOn::Cookie(name) => cookie(headers, name.as_bytes()).map(stable_hash),
        HashOn::SourceIp => Some(match client_ip.to_canonical() {
            IpAddr::V4(ip) => stable_hash(&ip.octets()),
            IpAddr::V6(ip) => stable_hash(&ip.octets()),
        }),
    }
}

/// The value of cookie `name` in the request's `Cookie` header lines (`a=1; b=2`).
fn cookie<'h>(headers: &'h HeaderMap, name: &[u8]) -> Option<&'h [u8]> {
    headers
        .get_all(COOKIE)
        .iter()
        .flat_map(|line| line.as_bytes().split(|&b| b == b';'))
        .find_map(|pair| {
            let pair = pair.trim_ascii();
            let eq = pair.iter().position(|&b| b == b'=')?;
            (pair[..eq].trim_ascii() == name).then(|| pair[eq + 1..].trim_ascii())
        })
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use http::HeaderValue;

    use super::*;

    #[test]
    fn stable_hash_is_fixed_across_versions() {
        // Pinned values: if these change, every session in the fleet moves.
        assert_eq!(
            StableHasher::new().write(b"").0.value(),
            0xcbf2_9ce4_8422_2325
        );
        assert_eq!(
            StableHasher::new().write(b"a").0.value(),
            0xaf63_dc4c_8601_ec8c
        );
        assert_eq!(stable_hash(b"a"), mix(0xaf63_dc4c_8601_ec8c));
        assert_ne!(stable_hash(b"a"), stable_hash(b"b"));
        assert_eq!(
            StableHasher::new().write(b"ab").write(b"c").finish(),
            stable_hash(b"abc")
        );
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.append(*n, HeaderValue::from_static(v));
        }
        h
    }

    const IP: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));

    #[test]
    fn header_hash_uses_the_first_value() {
        let on = HashOn::Header("x-user".into());
        let h = headers(&[("x-user", "alice"), ("x-user", "bob")]);
        assert_eq!(request_hash(&on, &h, IP), Some(stable_hash(b"alice")));
        assert_eq!(request_hash(&on, &HeaderMap::new(), IP), None);
    }

    #[test]
    fn cookie_hash_finds_the_named_cookie_in_any_line() {
        let on = HashOn::Cookie("session".into());
        let h = headers(&[
            ("cookie", "a=1; sessionx=2"),
            ("cookie", "b=3;session=abc ; c=4"),
        ]);
        assert_eq!(request_hash(&on, &h, IP), Some(stable_hash(b"abc")));
        let h = headers(&[("cookie", "a=1; b")]);
        assert_eq!(request_hash(&on, &h, IP), None);
        assert_eq!(request_hash(&on, &HeaderMap::new(), IP), None);
    }

    #[test]
    fn source_ip_hash_treats_mapped_ipv6_as_ipv4() {
        let on = HashOn::SourceIp;
        let v4 = request_hash(&on, &HeaderMap::new(), IP);
        let mapped = request_hash(
            &on,
            &HeaderMap::new(),
            IpAddr::V6(Ipv4Addr::new(10, 0, 0, 1).to_ipv6_mapped()),
        );
        assert_eq!(v4, mapped);
        let v6 = request_hash(&on, &HeaderMap::new(), IpAddr::V6(Ipv6Addr::LOCALHOST));
        assert!(v6.is_some());
        assert_ne!(v4, v6);
    }
}
