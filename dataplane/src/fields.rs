//! Header fields looked up in the small maps of single messages.

use http::{HeaderMap, HeaderName, HeaderValue};

/// Up to this many names, [`has_field`] compares names instead of hashing one.
const SCAN_UP_TO: usize = 12;

/// Whether `headers` has `name`. Most names the proxy looks for are absent, and a message
/// has a handful of fields: comparing each name (a byte for a standard one, a length first
/// for a custom one) costs less than hashing the one sought, which for a custom name goes
/// byte by byte (about 200 instructions for `x-forwarded-client-cert`, against 20).
pub fn has_field(headers: &HeaderMap, name: &HeaderName) -> bool {
    if headers.keys_len() <= SCAN_UP_TO {
        headers.keys().any(|k| k == name)
    } else {
        headers.contains_key(name)
    }
}

/// Removes `name` from `headers`, with its value(s); the first value, if it was there.
/// Looks first with [`has_field`]: most are not.
pub fn take_field(headers: &mut HeaderMap, name: &HeaderName) -> Option<HeaderValue> {
    if has_field(headers, name) {
        headers.remove(name)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// The scan and the hash agree, on maps below and above the scan's limit, with
        /// repeated names, standard and custom names alike.
        #[test]
        fn fields_are_found_and_taken_as_the_map_finds_and_removes_them(
            names in proptest::collection::vec(0..10usize, 0..30),
            sought in 0..10usize,
        ) {
            const POOL: [&str; 10] = [
                "host", "upgrade", "expect", "content-length", "x-forwarded-client-cert",
                "x-parapet-timeout-ms", "x-a", "x-b", "x-parapet-timeout-mt", "accept",
            ];
            let mut map = HeaderMap::new();
            for (i, n) in names.iter().enumerate() {
                map.append(HeaderName::from_static(POOL[*n]), HeaderValue::from(i));
            }
            let name = HeaderName::from_static(POOL[sought]);
            proptest::prop_assert_eq!(has_field(&map, &name), map.contains_key(&name));
            let mut by_map = map.clone();
            proptest::prop_assert_eq!(take_field(&mut map, &name), by_map.remove(&name));
            proptest::prop_assert_eq!(map, by_map);
        }
    }
}
