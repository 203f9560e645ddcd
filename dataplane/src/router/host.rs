//! Host name → virtual host: exact names, then `*.suffix` wildcards from the most specific
//! suffix to the least, then `*`.

use std::{borrow::Cow, collections::HashMap};

/// Which virtual host serves which name. Values are indexes into the router's hosts.
#[derive(Debug, Default)]
pub(super) struct HostIndex {
    exact: HashMap<Box<str>, usize>,
    /// `*.bank.example` is stored as `bank.example`.
    wildcard: HashMap<Box<str>, usize>,
    /// The longest wildcard suffix; longer suffixes of a request's host need no lookup.
    longest_wildcard: usize,
    any: Option<usize>,
}

/// What a virtual host's `domain` names, once normalised.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Domain {
    Exact(String),
    /// The part after `*.`.
    Wildcard(String),
    Any,
}

impl Domain {
    pub(super) fn parse(domain: &str) -> Self {
        let domain = normalize(domain);
        if domain == "*" {
            Domain::Any
        } else if let Some(suffix) = domain.strip_prefix("*.") {
            Domain::Wildcard(suffix.to_string())
        } else {
            Domain::Exact(domain.into_owned())
        }
    }
}

impl HostIndex {
    /// Registers a virtual host. When two hosts name the same domain the first one keeps it,
    /// as the first match in the table wins everywhere else.
    pub(super) fn insert(&mut self, domain: Domain, host: usize) {
        match domain {
            Domain::Exact(name) => {
                self.exact.entry(name.into_boxed_str()).or_insert(host);
            }
            Domain::Wildcard(suffix) => {
                self.longest_wildcard = self.longest_wildcard.max(suffix.len());
                self.wildcard.entry(suffix.into_boxed_str()).or_insert(host);
            }
            Domain::Any => {
                self.any.get_or_insert(host);
            }
        }
    }

    /// The virtual host for a request's `Host`, normalised with [`normalize`].
    pub(super) fn lookup(&self, host: &str) -> Option<usize> {
        if let Some(&h) = self.exact.get(host) {
            return Some(h);
        }
        if !self.wildcard.is_empty() {
            // Each dot after at least one character starts a candidate suffix; the first
            // dots give the longest, most specific suffixes. Suffixes longer than any
            // wildcard are skipped, so a hostile host with many labels costs little.
            for (dot, _) in host.match_indices('.').filter(|&(i, _)| i > 0) {
                let suffix = &host[dot + 1..];
                if suffix.len() > self.longest_wildcard {
                    continue;
                }
                if let Some(&h) = self.wildcard.get(suffix) {
                    return Some(h);
                }
            }
        }
        self.any
    }
}

/// Lower-cases a host name, drops a `:port` and one trailing dot. Allocates only when the
/// name has upper-case letters.
///
/// `[::1]:8080` becomes `[::1]`; a name without a port is left as it is.
pub(super) fn normalize(host: &str) -> Cow<'_, str> {
    // Most hosts come already normal (the proxy normalises them first): one pass says so.
    if !host.starts_with('[')
        && !host.ends_with('.')
        && host.bytes().all(|b| b != b':' && !b.is_ascii_uppercase())
    {
        return Cow::Borrowed(host);
    }
    normalize_any(host)
}

/// `normalize` for any host.
fn normalize_any(host: &str) -> Cow<'_, str> {
    let host = if host.starts_with('[') {
        match host.find(']') {
            Some(end) => &host[..=end],
            None => host,
        }
    } else {
        host.split(':').next().unwrap_or(host)
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(host.to_ascii_lowercase())
    } else {
        Cow::Borrowed(host)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_strips_port_trailing_dot_and_case() {
        let cases = [
            ("api.bank.example", "api.bank.example"),
            ("api.bank.example:8443", "api.bank.example"),
            ("API.Bank.Example:80", "api.bank.example"),
            ("api.bank.example.", "api.bank.example"),
            ("api.bank.example.:443", "api.bank.example"),
            ("[::1]:8080", "[::1]"),
            ("[::1]", "[::1]"),
            ("[::1", "[::1"),
            ("", ""),
            (":80", ""),
        ];
        for (input, want) in cases {
            assert_eq!(normalize(input), want, "{input}");
        }
    }

    #[test]
    fn the_one_pass_for_normal_hosts_agrees_with_the_full_reading() {
        let alphabet = ['a', 'Z', '.', ':', '[', ']', '0', 'é'];
        let mut rng = rand::rng();
        for _ in 0..20_000 {
            let len = rand::Rng::random_range(&mut rng, 0..8);
            let host: String = (0..len)
                .map(|_| alphabet[rand::Rng::random_range(&mut rng, 0..alphabet.len())])
                .collect();
            assert_eq!(normalize(&host), normalize_any(&host), "{host:?}");
        }
    }

    #[test]
    fn normalize_borrows_lower_case_names() {
        assert!(matches!(
            normalize("api.bank.example:80"),
            Cow::Borrowed("api.bank.example")
        ));
    }

    #[test]
    fn domains_parse_into_kinds() {
        assert_eq!(Domain::parse("*"), Domain::Any);
        assert_eq!(
            Domain::parse("*.Bank.example"),
            Domain::Wildcard("bank.example".into())
        );
        assert_eq!(
            Domain::parse("api.bank.example"),
            Domain::Exact("api.bank.example".into())
        );
    }

    #[test]
    fn lookup_prefers_exact_then_longest_wildcard_then_any() {
        let mut index = HostIndex::default();
        index.insert(Domain::parse("api.bank.example"), 0);
        index.insert(Domain::parse("*.eu.bank.example"), 1);
        index.insert(Domain::parse("*.bank.example"), 2);
        index.insert(Domain::parse("*"), 3);
        index.insert(Domain::parse("api.bank.example"), 4);
        let cases = [
            ("api.bank.example", Some(0)),
            ("x.eu.bank.example", Some(1)),
            ("y.x.eu.bank.example", Some(1)),
            ("eu.bank.example", Some(2)),
            ("www.bank.example", Some(2)),
            ("bank.example", Some(3)),
            (".bank.example", Some(3)),
            ("other.example", Some(3)),
            ("", Some(3)),
        ];
        for (host, want) in cases {
            assert_eq!(index.lookup(host), want, "{host}");
        }
    }

    #[test]
    fn lookup_without_any_host_finds_nothing_for_unknown_names() {
        let mut index = HostIndex::default();
        index.insert(Domain::parse("*.bank.example"), 0);
        assert_eq!(index.lookup("bank.example"), None);
        assert_eq!(index.lookup("a.b.c.bank.example"), Some(0));
    }
}
