//! Response cache directives: `Cache-Control` (RFC 9111 §5.2) and the targeted
//! `CDN-Cache-Control` (RFC 9213; the one field on this cache's target list), which, when
//! valid, replaces both `Cache-Control` and `Expires` for this cache.

use http::{HeaderMap, header};

/// The largest delta-seconds a cache must handle (RFC 9111 §1.2.2); larger values count as
/// this.
pub const MAX_DELTA_SECONDS: u64 = 1 << 31;

/// The directives of one response that matter to a shared cache.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Directives {
    pub no_store: bool,
    /// Unqualified `no-cache`: stored, but every use needs validation.
    pub no_cache: bool,
    /// Unqualified `private`: a shared cache must not store it.
    pub private: bool,
    /// The field names of qualified `no-cache="…"` and `private="…"`: the response is stored
    /// without them (§5.2.2.4, §5.2.2.7).
    pub strip_fields: Vec<String>,
    pub public: bool,
    pub must_revalidate: bool,
    pub proxy_revalidate: bool,
    pub must_understand: bool,
    pub max_age: Option<u64>,
    pub s_maxage: Option<u64>,
    pub stale_while_revalidate: Option<u64>,
    pub stale_if_error: Option<u64>,
    /// They came from `CDN-Cache-Control`: `Expires` is ignored too.
    pub targeted: bool,
}

impl Directives {
    /// The directives this cache follows for a response: a valid, non-empty
    /// `CDN-Cache-Control` if there is one, else `Cache-Control`.
    pub fn of_response(headers: &HeaderMap) -> Self {
        targeted(headers).unwrap_or_else(|| Self::cache_control(headers))
    }

    /// `Cache-Control`, all its field lines. A duplicated or invalid max-age or s-maxage
    /// counts as 0 (stale), as §4.2.1 allows; an invalid stale window counts as absent.
    pub fn cache_control(headers: &HeaderMap) -> Self {
        let mut d = Self::default();
        for v in headers.get_all(header::CACHE_CONTROL) {
            let Ok(v) = v.to_str() else { continue };
            for member in list_members(v) {
                let (name, value) = match member.split_once('=') {
                    Some((n, v)) => (n.trim(), Some(unquote(v.trim()))),
                    None => (member, None),
                };
                d.apply(&name.to_ascii_lowercase(), value);
            }
        }
        d
    }

    fn apply(&mut self, name: &str, value: Option<&str>) {
        let secs = || value.and_then(delta_seconds);
        let once = |slot: &mut Option<u64>, v: Option<u64>| {
            *slot = Some(if slot.is_some() { 0 } else { v.unwrap_or(0) });
        };
        match name {
            "no-store" => self.no_store = true,
            "no-cache" => match value.map(field_names).filter(|f| !f.is_empty()) {
                Some(fields) => self.strip_fields.extend(fields),
                None => self.no_cache = true,
            },
            "private" => match value.map(field_names).filter(|f| !f.is_empty()) {
                Some(fields) => self.strip_fields.extend(fields),
                None => self.private = true,
            },
            "public" => self.public = true,
            "must-revalidate" => self.must_revalidate = true,
            "proxy-revalidate" => self.proxy_revalidate = true,
            "must-understand" => self.must_understand = true,
            "max-age" => once(&mut self.max_age, secs()),
            "s-maxage" => once(&mut self.s_maxage, secs()),
            "stale-while-revalidate" => self.stale_while_revalidate = secs(),
            "stale-if-error" => self.stale_if_error = secs(),
            _ => {}
        }
    }

    /// Whether the response may be reused without validation once stale, as far as the
    /// operator's defaults go: not when the origin asked for validation (§4.2.4; `s-maxage`
    /// implies proxy-revalidate for a shared cache, §5.2.2.10).
    pub fn forbids_default_staleness(&self) -> bool {
        self.no_cache || self.must_revalidate || self.proxy_revalidate || self.s_maxage.is_some()
    }

    /// Whether even the origin's own stale-* directives are overridden.
    pub fn forbids_staleness(&self) -> bool {
        self.no_cache || self.must_revalidate || self.proxy_revalidate
    }
}

/// `CDN-Cache-Control` as an RFC 8941 dictionary; `None` when absent, empty or invalid,
/// in which case `Cache-Control` applies (RFC 9213 §2.1).
fn targeted(headers: &HeaderMap) -> Option<Directives> {
    let lines: Vec<&[u8]> = headers
        .get_all(header::CDN_CACHE_CONTROL)
        .iter()
        .map(|v| v.as_bytes())
        .collect();
    if lines.is_empty() {
        return None;
    }
    let joined = lines.join(&b","[..]);
    let dict: sfv::Dictionary = sfv::Parser::new(&joined).parse().ok()?;
    if dict.is_empty() {
        return None;
    }
    let mut d = Directives {
        targeted: true,
        ..Directives::default()
    };
    for (key, entry) in &dict {
        let value = match entry {
            sfv::ListEntry::Item(item) => match &item.bare_item {
                sfv::BareItem::Integer(i) => Some(i64::from(*i).to_string()),
                sfv::BareItem::Boolean(true) => None,
                sfv::BareItem::String(s) => Some(s.as_str().to_string()),
                sfv::BareItem::Token(t) => Some(t.as_str().to_string()),
                // `no-store=?0` and other types are not directives this cache knows.
                _ => continue,
            },
            sfv::ListEntry::InnerList(_) => continue,
        };
        d.apply(key.as_str(), value.as_deref());
    }
    Some(d)
}

/// The members of a comma-separated field value, trimmed, empty ones dropped; commas inside
/// quoted strings do not separate.
pub fn list_members(value: &str) -> impl Iterator<Item = &str> {
    let mut rest = value;
    std::iter::from_fn(move || {
        loop {
            if rest.is_empty() {
                return None;
            }
            let bytes = rest.as_bytes();
            let (mut i, mut quoted) = (0, false);
            while i < bytes.len() {
                match bytes[i] {
                    b'\\' if quoted => i += 1,
                    b'"' => quoted = !quoted,
                    b',' if !quoted => break,
                    _ => {}
                }
                i += 1;
            }
            let end = i.min(bytes.len());
            let member = rest[..end].trim_matches([' ', '\t']);
            rest = if end < rest.len() {
                &rest[end + 1..]
            } else {
                ""
            };
            if !member.is_empty() {
                return Some(member);
            }
        }
    })
}

/// delta-seconds (§1.2.2): digits only; too large counts as 2^31.
pub fn delta_seconds(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(
        s.parse::<u64>()
            .map_or(MAX_DELTA_SECONDS, |n| n.min(MAX_DELTA_SECONDS)),
    )
}

fn unquote(v: &str) -> &str {
    v.strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or(v)
}

fn field_names(v: &str) -> Vec<String> {
    v.split(',')
        .map(|f| f.trim().to_ascii_lowercase())
        .filter(|f| !f.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    use crate::cache::test_headers as h;

    #[test]
    fn cache_control_directives() {
        let d = Directives::cache_control(&h(&[
            ("cache-control", "public, max-age=60"),
            (
                "cache-control",
                "S-MAXAGE=\"30\", private=\"x-secret, x-other\"",
            ),
            ("cache-control", "stale-if-error=bad, must-understand"),
        ]));
        assert!(d.public && !d.private && d.must_understand);
        assert_eq!(
            (d.max_age, d.s_maxage, d.stale_if_error),
            (Some(60), Some(30), None)
        );
        assert_eq!(d.strip_fields, vec!["x-secret", "x-other"]);
        let twice = Directives::cache_control(&h(&[("cache-control", "max-age=5, max-age=9")]));
        assert_eq!(twice.max_age, Some(0));
        let huge =
            Directives::cache_control(&h(&[("cache-control", "max-age=99999999999999999999")]));
        assert_eq!(huge.max_age, Some(MAX_DELTA_SECONDS));
        assert!(Directives::cache_control(&h(&[("cache-control", "no-cache")])).no_cache);
    }

    #[test]
    fn cdn_cache_control_takes_precedence_when_valid() {
        let both = h(&[
            ("cache-control", "no-store"),
            ("cdn-cache-control", "max-age=60, stale-if-error=30"),
        ]);
        let d = Directives::of_response(&both);
        assert!(d.targeted && !d.no_store);
        assert_eq!((d.max_age, d.stale_if_error), (Some(60), Some(30)));
        let store = Directives::of_response(&h(&[
            ("cache-control", "max-age=60"),
            ("cdn-cache-control", "no-store"),
        ]));
        assert!(store.no_store && store.max_age.is_none());
        // Not a valid dictionary: Cache-Control applies.
        for bad in ["max-age=60,,,", "max-age=6 0", "", "Max-Age=60"] {
            let d = Directives::of_response(&h(&[
                ("cache-control", "no-store"),
                ("cdn-cache-control", bad),
            ]));
            assert!(!d.targeted && d.no_store, "{bad:?}");
        }
    }

    #[test]
    fn list_members_respects_quotes() {
        let got: Vec<&str> = list_members(r#" a , "b,c", , d="e\",f" ,"#).collect();
        assert_eq!(got, vec!["a", "\"b,c\"", r#"d="e\",f""#]);
    }

    proptest! {
        #[test]
        fn delta_seconds_is_digits_capped(n in any::<u128>()) {
            prop_assert_eq!(
                delta_seconds(&n.to_string()),
                Some(u64::try_from(n).map_or(MAX_DELTA_SECONDS, |n| n.min(MAX_DELTA_SECONDS)))
            );
        }

        #[test]
        fn any_field_value_parses_without_panicking(v in "[ -~]{0,64}") {
            if let Ok(value) = http::HeaderValue::from_str(&v) {
                let mut m = HeaderMap::new();
                m.insert(header::CACHE_CONTROL, value.clone());
                m.insert(header::CDN_CACHE_CONTROL, value);
                let _ = Directives::of_response(&m);
                for member in list_members(&v) {
                    prop_assert!(!member.is_empty() && member.trim() == member);
                }
            }
        }
    }
}
