//! A route's header edits (`ForwardAction::request_headers` / `response_headers`), parsed
//! once per table so a request only clones prepared names and values.

use http::{HeaderMap, HeaderName, HeaderValue};
use parapet_crds::snapshot::{HeaderModifier, UNMODIFIABLE_HEADERS};

/// Edits to a request or response head: remove, then set, then add.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeaderEdits {
    remove: Vec<HeaderName>,
    /// Replaces every field line of the name.
    set: Vec<(HeaderName, HeaderValue)>,
    /// Appends a field line.
    add: Vec<(HeaderName, HeaderValue)>,
}

impl HeaderEdits {
    /// The edits of `m`, or `None` when it has none. Names that frame the message or
    /// belong to one hop, and names or values that are not valid, are skipped (validation
    /// refuses tables with them; this keeps a table that slipped through harmless).
    pub fn new(m: &HeaderModifier) -> Option<Self> {
        let name = |n: &str| {
            let parsed = HeaderName::from_bytes(n.as_bytes()).ok()?;
            (!UNMODIFIABLE_HEADERS.contains(&parsed.as_str())).then_some(parsed)
        };
        let pairs = |pairs: &[parapet_crds::snapshot::HeaderPair]| {
            pairs
                .iter()
                .filter_map(|p| Some((name(&p.name)?, HeaderValue::from_str(&p.value).ok()?)))
                .collect::<Vec<_>>()
        };
        let edits = Self {
            remove: m.remove.iter().filter_map(|n| name(n)).collect(),
            set: pairs(&m.set),
            add: pairs(&m.add),
        };
        let empty = edits.remove.is_empty() && edits.set.is_empty() && edits.add.is_empty();
        (!empty).then_some(edits)
    }

    /// Applies the edits to `headers`.
    pub fn apply(&self, headers: &mut HeaderMap) {
        for n in &self.remove {
            headers.remove(n);
        }
        for (n, v) in &self.set {
            headers.insert(n.clone(), v.clone());
        }
        for (n, v) in &self.add {
            headers.append(n.clone(), v.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use parapet_crds::snapshot::HeaderPair;

    use super::*;

    fn pair(name: &str, value: &str) -> HeaderPair {
        HeaderPair {
            name: name.into(),
            value: value.into(),
        }
    }

    fn values(h: &HeaderMap, name: &str) -> Vec<String> {
        h.get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect()
    }

    #[test]
    fn remove_then_set_then_add_as_gateway_api_expects() {
        let edits = HeaderEdits::new(&HeaderModifier {
            set: vec![pair("x-header-set", "set-overwrites-values")],
            add: vec![
                pair("x-header-add", "add-appends-values"),
                pair("x-header-remove", "added-after-removal"),
            ],
            remove: vec!["x-header-remove".into()],
        })
        .expect("edits");
        let mut h = HeaderMap::new();
        h.append("x-header-set", HeaderValue::from_static("one"));
        h.append("x-header-set", HeaderValue::from_static("two"));
        h.insert("x-header-add", HeaderValue::from_static("some-other-value"));
        h.insert("x-header-remove", HeaderValue::from_static("val"));
        h.insert("another", HeaderValue::from_static("kept"));
        edits.apply(&mut h);
        assert_eq!(values(&h, "x-header-set"), ["set-overwrites-values"]);
        // A field line of its own: a backend that joins them sees "a,b".
        assert_eq!(
            values(&h, "x-header-add"),
            ["some-other-value", "add-appends-values"]
        );
        assert_eq!(values(&h, "x-header-remove"), ["added-after-removal"]);
        assert_eq!(values(&h, "another"), ["kept"]);
    }

    #[test]
    fn set_adds_a_missing_header_and_names_are_case_insensitive() {
        let edits = HeaderEdits::new(&HeaderModifier {
            set: vec![pair("X-Header-Set", "v")],
            remove: vec!["X-Header-Remove".into()],
            ..Default::default()
        })
        .expect("edits");
        let mut h = HeaderMap::new();
        h.insert("x-header-remove", HeaderValue::from_static("gone"));
        edits.apply(&mut h);
        assert_eq!(values(&h, "x-header-set"), ["v"]);
        assert!(!h.contains_key("x-header-remove"));
    }

    #[test]
    fn framing_and_hop_by_hop_headers_and_invalid_entries_are_skipped() {
        let m = HeaderModifier {
            set: vec![
                pair("content-length", "0"),
                pair("Host", "evil.example"),
                pair("x-bad-value", "a\r\nb"),
            ],
            add: vec![pair("transfer-encoding", "chunked"), pair("bad name", "v")],
            remove: vec![
                "connection".into(),
                "te".into(),
                "upgrade".into(),
                "keep-alive".into(),
                "proxy-connection".into(),
            ],
        };
        assert_eq!(HeaderEdits::new(&m), None);
        assert_eq!(HeaderEdits::new(&HeaderModifier::default()), None);
    }
}
