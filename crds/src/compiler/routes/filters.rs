//! What a rule does to a request besides choosing backends: header edits, redirects,
//! rewrites, mirrors and the per-attempt timeout.
//!
//! The CRD schema refuses everything checked here; the checks are repeated because
//! standalone files (and anything else that skips the API server) reach the compiler
//! unvalidated, and each value ends up in a request line, a header or a Location.

use std::collections::BTreeMap;

use super::{Key, qualified};
use crate::{
    api::{self, Object, PathMatchType, UpstreamPoolSpec},
    compiler::{Diagnostics, ObjectKey, Reason},
    snapshot::{HeaderModifier, HeaderPair, Mirror, PathReplacement, Redirect, Rewrite},
};

/// Entries per header list, as the schema allows.
pub(super) const MAX_HEADER_EDITS: usize = 16;
/// Mirrors per rule, as the schema allows.
pub(super) const MAX_MIRRORS: usize = 4;
const MAX_HEADER_NAME: usize = 256;
const MAX_HEADER_VALUE: usize = 4096;
const MAX_PATH: usize = 1024;

/// Headers the proxy manages itself. Letting a rule edit them would let it change how a
/// message is framed or which connection it belongs to (request smuggling), or where it
/// goes (`host`: `rewrite.hostname` does that, checked).
pub use crate::snapshot::UNMODIFIABLE_HEADERS as PROXY_HEADERS;

/// Where a diagnostic comes from: the rule's name and its route.
pub(super) struct RuleRef<'a> {
    pub name: &'a str,
    pub me: &'a ObjectKey,
}

impl RuleRef<'_> {
    pub(super) fn error(&self, diags: &mut Diagnostics, reason: Reason, message: String) {
        diags.error(self.me, reason, self.field(&message));
    }

    /// `text` prefixed with the rule's name; an AuthPolicy (no rule: an empty name) says
    /// it bare.
    pub(super) fn field(&self, text: &str) -> String {
        if self.name.is_empty() {
            text.to_string()
        } else {
            format!("rule {}: {text}", self.name)
        }
    }
}

/// An HTTP field name (RFC 9110 token) of at most 256 characters.
pub fn valid_header_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_HEADER_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Visible ASCII, spaces and tabs: nothing that could end the header line (CR, LF) or that
/// peers parse differently (other controls, non-ASCII).
pub fn valid_header_value(value: &str) -> bool {
    value.len() <= MAX_HEADER_VALUE
        && value
            .bytes()
            .all(|b| b == b'\t' || (0x20..=0x7e).contains(&b))
}

/// A path that starts with `/` and holds only URL path characters (RFC 3986 `pchar`, with
/// `%` for escapes): no query or fragment, no `//` (a Location starting `//` names another
/// host), no `\` (which browsers read as `/`), no spaces or control characters.
pub fn valid_path(path: &str) -> bool {
    path.starts_with('/')
        && path.len() <= MAX_PATH
        && !path.contains("//")
        && path
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/-._~!$&'()*+,;=:@%".contains(&b))
}

/// What [`valid_path`] asks for, as the end of a sentence.
const PATH_RULE: &str = "must start with / and hold only URL path characters (no '?', '#', '//', '\\', spaces or control characters)";

/// A user's value for a message: quoted, escaped, and cut short.
fn shown(s: &str) -> String {
    let cut: String = s.chars().take(64).collect();
    if cut.len() < s.len() {
        format!("{cut:?}...")
    } else {
        format!("{cut:?}")
    }
}

/// A DNS name (or IPv4 address): labels of letters, digits and `-`. No port, user, path
/// or wildcard.
fn valid_hostname(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 253
        && h.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

/// One of `requestHeaders` / `responseHeaders`, lower-cased; entries that are invalid are
/// left out, each with a diagnostic.
pub(super) fn header_modifier(
    filter: Option<&api::HeaderFilter>,
    field: &str,
    rule: &RuleRef<'_>,
    diags: &mut Diagnostics,
) -> HeaderModifier {
    let Some(filter) = filter else {
        return HeaderModifier::default();
    };
    let mut out = HeaderModifier {
        set: header_pairs(&filter.set, &format!("{field}.set"), rule, diags),
        add: header_pairs(&filter.add, &format!("{field}.add"), rule, diags),
        remove: Vec::new(),
    };
    let list = format!("{field}.remove");
    for name in bounded(&filter.remove, &list, rule, diags) {
        if let Some(name) = header_name(name, &list, rule, diags)
            && !out.remove.contains(&name)
        {
            out.remove.push(name);
        }
    }
    out
}

fn header_pairs(
    entries: &[api::HeaderEntry],
    list: &str,
    rule: &RuleRef<'_>,
    diags: &mut Diagnostics,
) -> Vec<HeaderPair> {
    let mut out: Vec<HeaderPair> = Vec::new();
    for e in bounded(entries, list, rule, diags) {
        let Some(name) = header_name(&e.name, list, rule, diags) else {
            continue;
        };
        if !valid_header_value(&e.value) {
            rule.error(
                diags,
                Reason::InvalidHeaderFilter,
                format!(
                    "{list}: the value of {name} is longer than {MAX_HEADER_VALUE} bytes or holds a CR, LF, other control character or non-ASCII text; use visible ASCII, spaces and tabs only (the entry is left out)"
                ),
            );
            continue;
        }
        if out.iter().any(|p| p.name == name) {
            rule.error(
                diags,
                Reason::InvalidHeaderFilter,
                format!(
                    "{list} names {name} twice (names match in any case); merge them into one entry (only the first is used)"
                ),
            );
            continue;
        }
        out.push(HeaderPair {
            name,
            value: e.value.clone(),
        });
    }
    out
}

/// The list's first entries up to the schema's limit; a diagnostic when there are more.
fn bounded<'a, T>(
    list: &'a [T],
    field: &str,
    rule: &RuleRef<'_>,
    diags: &mut Diagnostics,
) -> &'a [T] {
    if list.len() > MAX_HEADER_EDITS {
        rule.error(
            diags,
            Reason::InvalidHeaderFilter,
            format!(
                "{field} has {} entries, more than {MAX_HEADER_EDITS}; remove some (only the first {MAX_HEADER_EDITS} are used)",
                list.len()
            ),
        );
        &list[..MAX_HEADER_EDITS]
    } else {
        list
    }
}

/// The name, lower-case, if it is a header name a rule may edit.
fn header_name(
    name: &str,
    list: &str,
    rule: &RuleRef<'_>,
    diags: &mut Diagnostics,
) -> Option<String> {
    if !valid_header_name(name) {
        rule.error(
            diags,
            Reason::InvalidHeaderFilter,
            format!(
                "{list}: {} is not a header name; use 1 to {MAX_HEADER_NAME} letters, digits and !#$%&'*+-.^_`|~ (the entry is left out)",
                shown(name)
            ),
        );
        return None;
    }
    let name = name.to_ascii_lowercase();
    if PROXY_HEADERS.contains(&name.as_str()) {
        rule.error(
            diags,
            Reason::InvalidHeaderFilter,
            format!(
                "{list}: {name} belongs to the proxy (it frames the message or routes it) and cannot be edited; remove it from the list (the entry is left out)"
            ),
        );
        return None;
    }
    Some(name)
}

/// The rule's redirect, or `None` (with a diagnostic) when any part of it is invalid: a
/// redirect that is partly applied would send clients somewhere nobody asked for.
pub(super) fn redirect(
    r: &api::RouteRedirect,
    matches: &[api::RouteMatch],
    rule: &RuleRef<'_>,
    diags: &mut Diagnostics,
) -> Option<Redirect> {
    let mut ok = true;
    let mut fail = |diags: &mut Diagnostics, message: String| {
        ok = false;
        rule.error(
            diags,
            Reason::InvalidRedirect,
            format!("{message}; the rule is left out"),
        );
    };
    let hostname = r.hostname.as_ref().map(|h| h.trim().to_ascii_lowercase());
    if let Some(h) = &hostname
        && !valid_hostname(h)
    {
        fail(
            diags,
            format!(
                "redirect.hostname {} is not a DNS name; give a name such as www.example.com, without scheme, port, user, path or wildcard",
                shown(h)
            ),
        );
    }
    let port = match r.port {
        None => None,
        Some(p) => match u16::try_from(p) {
            Ok(p) if p > 0 => Some(p),
            _ => {
                fail(
                    diags,
                    format!("redirect.port {p} is not a port; use 1 to 65535"),
                );
                None
            }
        },
    };
    let status = r.status_code.unwrap_or(302);
    if ![301, 302, 303, 307, 308].contains(&status) {
        fail(
            diags,
            format!(
                "redirect.statusCode {status} is not a redirect status; use 301, 302, 303, 307 or 308"
            ),
        );
    }
    let path = match &r.path {
        None => None,
        Some(p) => match (&p.replace_full_path, &p.replace_prefix_match) {
            (Some(full), None) => {
                if !valid_path(full) {
                    fail(
                        diags,
                        format!("redirect.path.replaceFullPath {} {PATH_RULE}", shown(full)),
                    );
                }
                Some(PathReplacement::Full(full.clone()))
            }
            (None, Some(prefix)) => {
                if !valid_path(prefix) {
                    fail(
                        diags,
                        format!(
                            "redirect.path.replacePrefixMatch {} {PATH_RULE}",
                            shown(prefix)
                        ),
                    );
                }
                if !all_prefix_matches(matches) {
                    fail(diags, "redirect.path.replacePrefixMatch needs every match of the rule to be a PathPrefix match; use replaceFullPath, or split the rule".to_string());
                }
                Some(PathReplacement::Prefix(prefix.clone()))
            }
            _ => {
                fail(
                    diags,
                    "redirect.path takes exactly one of replaceFullPath or replacePrefixMatch"
                        .to_string(),
                );
                None
            }
        },
    };
    ok.then(|| Redirect {
        scheme: r.scheme.map(|s| s.as_str().to_string()),
        hostname,
        port,
        path,
        status: u16::try_from(status).unwrap_or(302),
    })
}

/// Whether every match of the rule is a PathPrefix (no matches: `PathPrefix /`).
fn all_prefix_matches(matches: &[api::RouteMatch]) -> bool {
    matches.iter().all(|m| {
        m.path
            .as_ref()
            .is_none_or(|p| p.kind.unwrap_or_default() == PathMatchType::PathPrefix)
    })
}

/// The rule's rewrite; `Err` (with a diagnostic) when it is invalid, since forwarding with
/// the path unrewritten could reach what the rewrite was meant to keep out of reach.
pub(super) fn rewrite(
    r: Option<&api::Rewrite>,
    rule: &RuleRef<'_>,
    diags: &mut Diagnostics,
) -> Result<Option<Rewrite>, ()> {
    let Some(r) = r else {
        return Ok(None);
    };
    if r.path_prefix.is_some() && r.full_path.is_some() {
        rule.error(
            diags,
            Reason::InvalidRewrite,
            "rewrite takes pathPrefix or fullPath, not both; keep one (the rule is left out)"
                .to_string(),
        );
        return Err(());
    }
    if let Some(full) = &r.full_path
        && !valid_path(full)
    {
        rule.error(
            diags,
            Reason::InvalidRewrite,
            format!(
                "rewrite.fullPath {} {PATH_RULE}; the rule is left out",
                shown(full)
            ),
        );
        return Err(());
    }
    let hostname = r.hostname.as_ref().map(|h| h.trim().to_ascii_lowercase());
    if let Some(h) = &hostname
        && !valid_hostname(h)
    {
        rule.error(
            diags,
            Reason::InvalidRewrite,
            format!(
                "rewrite.hostname {} is not a DNS name; give a name such as internal.example.com, without scheme, port, user, path or wildcard (the rule is left out)",
                shown(h)
            ),
        );
        return Err(());
    }
    Ok(Some(Rewrite {
        path_prefix: r.path_prefix.clone(),
        full_path: r.full_path.clone(),
        hostname,
    }))
}

/// The rule's mirrors to pools that exist; the others are left out with a diagnostic (the
/// rule still forwards).
pub(super) fn mirrors(
    pools: &BTreeMap<Key, &Object<UpstreamPoolSpec>>,
    namespace: &str,
    listed: &[api::RequestMirror],
    rule: &RuleRef<'_>,
    diags: &mut Diagnostics,
) -> Vec<Mirror> {
    let listed = if listed.len() > MAX_MIRRORS {
        rule.error(
            diags,
            Reason::InvalidMirror,
            format!(
                "mirrors has {} entries, more than {MAX_MIRRORS}; remove some (only the first {MAX_MIRRORS} are used)",
                listed.len()
            ),
        );
        &listed[..MAX_MIRRORS]
    } else {
        listed
    };
    let mut out = Vec::with_capacity(listed.len());
    for m in listed {
        let percent = m.percent.unwrap_or(100);
        let Some(percent) = u32::try_from(percent).ok().filter(|p| *p <= 100) else {
            rule.error(
                diags,
                Reason::InvalidMirror,
                format!(
                    "mirrors: percent {percent} for {} is not a share; use 0 to 100 (the mirror is left out)",
                    m.backend
                ),
            );
            continue;
        };
        if !pools.contains_key(&(namespace.to_string(), m.backend.clone())) {
            rule.error(
                diags,
                Reason::PoolNotFound,
                format!(
                    "UpstreamPool {namespace}/{} does not exist, so nothing is mirrored to it; create it or fix mirrors[].backend",
                    m.backend
                ),
            );
            continue;
        }
        out.push(Mirror {
            cluster: qualified(namespace, &m.backend),
            per_million: percent * 10_000,
        });
    }
    out
}

/// The bound on each attempt, at most the rule's timeout; `None` when not set or 0 (with a
/// diagnostic: an attempt bounded by 0 could never answer).
pub(super) fn backend_timeout(
    d: Option<crate::Duration>,
    timeout_ms: u64,
    rule: &RuleRef<'_>,
    diags: &mut Diagnostics,
) -> Option<u64> {
    let ms = d?.as_millis();
    if ms == 0 {
        rule.error(
            diags,
            Reason::InvalidTimeout,
            "backendTimeout must be above 0s; set a duration such as 2s or remove it (only timeout bounds the attempts meanwhile)".to_string(),
        );
        return None;
    }
    Some(ms.min(timeout_ms))
}

/// Fields that mean nothing on a redirect rule, for the diagnostics: those the schema
/// refuses with a redirect, and those it lets through but the redirect ignores.
pub(super) fn forward_only_fields(r: &api::RouteRule) -> (Vec<&'static str>, Vec<&'static str>) {
    let refused = [
        ("rewrite", r.rewrite.is_some()),
        ("mirrors", !r.mirrors.is_empty()),
        ("requestHeaders", r.request_headers.is_some()),
        ("responseHeaders", r.response_headers.is_some()),
        ("backendTimeout", r.backend_timeout.is_some()),
    ];
    let ignored = [
        ("timeout", r.timeout.is_some()),
        ("retries", r.retries.is_some()),
        ("hedge", r.hedge.is_some()),
        ("lanes", r.lanes.is_some()),
        ("cachePolicyRef", r.cache_policy_ref.is_some()),
        ("rateLimit", r.rate_limit.is_some()),
        ("auth", r.auth.is_some()),
        ("upgrades", r.upgrades.is_some()),
    ];
    let set = |list: &[(&'static str, bool)]| {
        list.iter()
            .filter(|(_, on)| *on)
            .map(|(n, _)| *n)
            .collect::<Vec<_>>()
    };
    (set(&refused), set(&ignored))
}
