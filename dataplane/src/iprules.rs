//! Client-address rules (`ipRules`): denied ranges always refuse; with any allowed range,
//! an address outside all of them is refused.
//!
//! The address is the peer's, or behind a trusted proxy the client its `X-Forwarded-For`
//! names. When that header does not name one (too few entries, or one that does not parse),
//! the request is refused rather than judged by the proxy's own address: a trusted proxy
//! inside an allowed range would otherwise let anyone through.

use std::net::IpAddr;

use ipnet::IpNet;
use parapet_crds::snapshot::IpRules;

/// Why a request's address was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// In a denied range, or outside every allowed one.
    Denied,
    /// Behind a trusted proxy that did not say who the client is.
    Unknown,
}

impl Refusal {
    pub fn label(self) -> &'static str {
        match self {
            Self::Denied => "ip_denied",
            Self::Unknown => "ip_unknown",
        }
    }

    pub fn detail(self) -> &'static str {
        match self {
            Self::Denied => "requests from this client address are not allowed on this route",
            Self::Unknown => {
                "the forwarding proxy did not say which address the request came from (X-Forwarded-For), so the route's address rules refuse it"
            }
        }
    }
}

/// A rule's ranges, parsed once per table.
#[derive(Clone, Debug, Default)]
pub struct IpFilter {
    allow: Vec<IpNet>,
    deny: Vec<IpNet>,
}

impl IpFilter {
    /// Ranges that do not parse (the compiler normalises them, so only a hand-made table
    /// has any) deny everyone when they were to deny, and allow nobody when they were to
    /// allow: a bad table never opens a route.
    pub fn new(rules: &IpRules) -> Self {
        let parse = |list: &[String], bad: &mut bool| -> Vec<IpNet> {
            list.iter()
                .filter_map(|c| {
                    let net = c
                        .parse::<IpNet>()
                        .or_else(|_| c.parse::<IpAddr>().map(IpNet::from));
                    if net.is_err() {
                        tracing::warn!(range = %c, "ipRules range unusable");
                        *bad = true;
                    }
                    net.ok()
                })
                .collect()
        };
        let (mut bad_allow, mut bad_deny) = (false, false);
        let allow = parse(&rules.allow, &mut bad_allow);
        let mut deny = parse(&rules.deny, &mut bad_deny);
        if bad_deny || (bad_allow && allow.is_empty()) {
            deny.extend(["0.0.0.0/0", "::/0"].map(|n| n.parse::<IpNet>().expect("a CIDR")));
        }
        Self { allow, deny }
    }

    /// Whether the client at `addr` (`None`: unknown, see the module doc) may call.
    pub fn check(&self, addr: Option<IpAddr>) -> Result<(), Refusal> {
        let addr = addr.ok_or(Refusal::Unknown)?.to_canonical();
        if self.deny.iter().any(|n| n.contains(&addr)) {
            return Err(Refusal::Denied);
        }
        if !self.allow.is_empty() && !self.allow.iter().any(|n| n.contains(&addr)) {
            return Err(Refusal::Denied);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(allow: &[&str], deny: &[&str]) -> IpFilter {
        IpFilter::new(&IpRules {
            allow: allow.iter().map(|s| s.to_string()).collect(),
            deny: deny.iter().map(|s| s.to_string()).collect(),
        })
    }

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn deny_wins_over_allow_and_allow_lists_close_the_rest() {
        let f = filter(&["10.0.0.0/8", "2001:db8::/32"], &["10.9.0.0/16"]);
        assert_eq!(f.check(ip("10.1.2.3")), Ok(()));
        assert_eq!(f.check(ip("2001:db8::1")), Ok(()));
        assert_eq!(f.check(ip("10.9.1.1")), Err(Refusal::Denied));
        assert_eq!(f.check(ip("192.0.2.1")), Err(Refusal::Denied));
        assert_eq!(f.check(None), Err(Refusal::Unknown));
    }

    #[test]
    fn deny_only_lets_the_rest_through() {
        let f = filter(&[], &["192.0.2.0/24"]);
        assert_eq!(f.check(ip("192.0.2.7")), Err(Refusal::Denied));
        assert_eq!(f.check(ip("198.51.100.1")), Ok(()));
    }

    #[test]
    fn mapped_ipv4_addresses_are_judged_as_ipv4() {
        let f = filter(&[], &["192.0.2.0/24"]);
        assert_eq!(f.check(ip("::ffff:192.0.2.7")), Err(Refusal::Denied));
    }

    #[test]
    fn unusable_ranges_never_open_a_route() {
        assert_eq!(
            filter(&[], &["nonsense"]).check(ip("198.51.100.1")),
            Err(Refusal::Denied)
        );
        assert_eq!(
            filter(&["nonsense"], &[]).check(ip("198.51.100.1")),
            Err(Refusal::Denied)
        );
        // A bad allow entry beside good ones only loses itself.
        assert_eq!(
            filter(&["nonsense", "10.0.0.0/8"], &[]).check(ip("10.0.0.1")),
            Ok(())
        );
    }
}
