//! Which listeners of a Gateway a route's parentRef attaches to, and under which
//! hostnames: the parentRef's sectionName and port, the listener's allowed namespaces and
//! kinds, and the intersection of the route's hostnames with the listener's.

use super::{
    GatewayInputs,
    listeners::{AllowedNamespaces, ListenerModel},
    model::{ParentRef, Route},
};
use crate::{api::Object, compiler::ns, gateway_api::gateways::GatewaySpec};

/// A route attached to one listener, serving these hostnames there.
#[derive(Clone, Debug)]
pub struct Attachment {
    /// Index into the compiler's route list (set by the caller).
    pub route: usize,
    /// Index into the Gateway's listeners.
    pub listener: usize,
    pub hostnames: Vec<String>,
}

/// Why a parentRef does not attach: the reason of `Accepted: False` and a sentence.
#[derive(Debug)]
pub struct Refusal {
    pub reason: &'static str,
    pub message: String,
}

pub fn attach(
    route: &Route,
    parent: &ParentRef,
    gateway: &Object<GatewaySpec>,
    listeners: &[ListenerModel],
    gw: &GatewayInputs<'_>,
) -> Result<Vec<Attachment>, Refusal> {
    let named: Vec<usize> = (0..listeners.len())
        .filter(|&i| {
            let l = &listeners[i];
            parent.section_name.as_deref().is_none_or(|s| s == l.name)
                && parent.port.is_none_or(|p| i32::from(l.port) == p)
        })
        .collect();
    if named.is_empty() {
        let mut what = Vec::new();
        if let Some(s) = &parent.section_name {
            what.push(format!("named {s}"));
        }
        if let Some(p) = parent.port {
            what.push(format!("on port {p}"));
        }
        return Err(Refusal {
            reason: "NoMatchingParent",
            message: format!(
                "Gateway {}/{} has no listener {}; fix parentRefs",
                ns(&gateway.metadata),
                parent.name,
                what.join(" and ")
            ),
        });
    }
    let allowed: Vec<usize> = named
        .into_iter()
        .filter(|&i| {
            let l = &listeners[i];
            l.accepts_routes()
                && l.allows_kind(route.kind)
                && namespace_allowed(l, route, gateway, gw)
        })
        .collect();
    if allowed.is_empty() {
        return Err(Refusal {
            reason: "NotAllowedByListeners",
            message: format!(
                "no listener of Gateway {}/{} that this parentRef selects takes {}s from namespace {}; see the listeners' allowedRoutes",
                ns(&gateway.metadata),
                parent.name,
                route.kind,
                route.namespace
            ),
        });
    }
    let found: Vec<Attachment> = allowed
        .into_iter()
        .filter_map(|i| {
            let hostnames = intersect(listeners[i].hostname.as_deref(), &route.hostnames);
            (!hostnames.is_empty()).then_some(Attachment {
                route: 0,
                listener: i,
                hostnames,
            })
        })
        .collect();
    if found.is_empty() {
        return Err(Refusal {
            reason: "NoMatchingListenerHostname",
            message: format!(
                "none of the route's hostnames ({}) matches a hostname of the listeners it may attach to",
                route.hostnames.join(", ")
            ),
        });
    }
    Ok(found)
}

fn namespace_allowed(
    l: &ListenerModel,
    route: &Route,
    gateway: &Object<GatewaySpec>,
    gw: &GatewayInputs<'_>,
) -> bool {
    match &l.namespaces {
        AllowedNamespaces::Same => route.namespace == ns(&gateway.metadata),
        AllowedNamespaces::All => true,
        AllowedNamespaces::Selector(s) => s.matches(
            gw.namespace_labels
                .get(&route.namespace)
                .unwrap_or(&Default::default()),
        ),
    }
}

/// The hostnames a route serves on a listener. Without hostnames on either side, every
/// host (`*`); otherwise the names both sides match, the more specific one of each pair.
pub fn intersect(listener: Option<&str>, route: &[String]) -> Vec<String> {
    let route: Vec<String> = route.iter().map(|h| h.to_ascii_lowercase()).collect();
    let mut out: Vec<String> = match listener {
        None if route.is_empty() => vec!["*".to_string()],
        None => route,
        Some(l) if route.is_empty() => vec![l.to_string()],
        Some(l) => route
            .iter()
            .filter_map(|h| {
                if h == l || wildcard_covers(l, h) {
                    Some(h.clone())
                } else if wildcard_covers(h, l) {
                    Some(l.to_string())
                } else {
                    None
                }
            })
            .collect(),
    };
    out.sort();
    out.dedup();
    out
}

/// Whether wildcard `pattern` (`*.example.com`) matches `name` (a name or a narrower
/// wildcard): one or more labels before the suffix.
pub(super) fn wildcard_covers(pattern: &str, name: &str) -> bool {
    let Some(suffix) = pattern.strip_prefix('*') else {
        return false;
    };
    let name = name.strip_prefix('*').unwrap_or(name);
    name.len() > suffix.len() && name.ends_with(suffix)
}

#[cfg(test)]
mod tests {
    use super::intersect;

    fn v(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn hostnames_intersect_as_gateway_api_says() {
        assert_eq!(intersect(None, &[]), v(&["*"]));
        assert_eq!(intersect(Some("a.example.com"), &[]), v(&["a.example.com"]));
        assert_eq!(
            intersect(None, &v(&["A.example.com"])),
            v(&["a.example.com"])
        );
        assert_eq!(
            intersect(Some("*.example.com"), &v(&["a.example.com", "other.org"])),
            v(&["a.example.com"])
        );
        assert_eq!(
            intersect(Some("a.example.com"), &v(&["*.example.com"])),
            v(&["a.example.com"])
        );
        assert_eq!(
            intersect(Some("*.example.com"), &v(&["*.a.example.com"])),
            v(&["*.a.example.com"])
        );
        assert_eq!(
            intersect(Some("*.a.example.com"), &v(&["*.example.com"])),
            v(&["*.a.example.com"])
        );
        assert!(intersect(Some("*.example.com"), &v(&["example.com"])).is_empty());
        assert!(intersect(Some("a.example.com"), &v(&["b.example.com"])).is_empty());
        assert_eq!(
            intersect(Some("*.example.com"), &v(&["x.y.example.com"])),
            v(&["x.y.example.com"])
        );
    }
}
