//! Route matching: which route of the table serves a request.
//!
//! A [`Router`] is built once per snapshot and then only read. It picks the virtual host by
//! name (exact, then the most specific `*.suffix` wildcard, then `*`; only that host is
//! searched, as Envoy does), and within it the first route, in the table's order, whose
//! whole matcher holds. The table's order is the priority the compiler gave the routes.
//!
//! Routes are not scanned one by one: each host indexes its routes by exact path, by
//! path prefix and, for regular expressions, with one [`regex::RegexSet`]. The candidates
//! whose path matched are then checked in priority order against method, headers and
//! query parameters, stopping at the first that holds.
//!
//! Matching semantics:
//! - `Exact(p)`: the whole path equals `p`.
//! - `Prefix(p)`: segment-wise; `/accounts` matches `/accounts`, `/accounts/` and
//!   `/accounts/1`, not `/accountsx`. `/` matches every path. Trailing slashes of `p` are
//!   ignored, as the compiler strips them.
//! - `Regex(r)`: `r` matches the whole path (the snapshot stores it anchored; an unanchored
//!   one is anchored here).
//! - Paths are compared as they arrive (no percent-decoding, no dot-segment removal) and
//!   without the query string; a path that still carries `?query` is split there.
//! - Methods: any listed method, or any method when none is listed.
//! - Headers: every listed header must have a field line whose value matches exactly or
//!   by regex; a value that is not UTF-8 never matches a regex.
//! - Query parameters: every listed parameter must occur with a matching value (any
//!   occurrence may match). Pairs split on `&`, a name ends at the first `=` (no `=`: empty
//!   value), names and values are percent-decoded with `+` read as a space, as HTML forms
//!   encode them; names are case-sensitive.

mod error;
mod host;
mod matcher;

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;

use std::collections::HashMap;

use http::{HeaderMap, Method};
use parapet_crds::snapshot::{PathMatch, Route, Table};
use regex::{RegexSet, RegexSetBuilder};
use regex_automata::{Anchored, Input, MatchKind, meta, nfa::thompson::WhichCaptures};

pub use self::error::RouterError;
use self::{
    host::{Domain, HostIndex},
    matcher::{Conditions, RegexCache},
};

/// Size budget for the one compiled regex set of a host's path regexes.
const REGEX_SET_SIZE_LIMIT: usize = 256 << 20;

/// The parts of a request that routing reads.
#[derive(Clone, Copy, Debug)]
pub struct RequestInfo<'a> {
    /// The `Host` (or `:authority`) of the request. Expected lower-case without a port;
    /// a `:port`, one trailing dot and upper-case letters are dealt with all the same.
    pub host: &'a str,
    /// The path, without the query string.
    pub path: &'a str,
    /// The query string, without the `?`.
    pub query: Option<&'a str>,
    pub method: &'a Method,
    pub headers: &'a HeaderMap,
}

/// The route that serves a request.
#[derive(Clone, Copy, Debug)]
pub struct Matched<'r> {
    pub route: &'r Route,
    /// This route's position in the whole table (virtual hosts in order, each host's routes
    /// in order), stable for the router's life: an index into per-route state built with
    /// [`Router::routes`].
    pub index: usize,
    /// For a `Prefix` route, how many bytes at the start of the path the prefix covers, so
    /// that `path[prefix_len..]` is empty or starts with `/`: 0 for the prefix `/`, the
    /// prefix's length otherwise. 0 for other routes.
    ///
    /// A prefix rewrite to `new` is `new.trim_end_matches('/')` followed by that rest
    /// (or `/` when both are empty).
    pub prefix_len: usize,
}

/// Request → route for one table. Cheap to share: build once, wrap in an `Arc`.
#[derive(Debug)]
pub struct Router {
    /// Every route of the table, in table order; positions are [`Matched::index`].
    routes: Vec<Route>,
    /// Parallel to `routes`.
    compiled: Vec<CompiledRoute>,
    /// Parallel to the table's virtual hosts, then each listener's.
    hosts: Vec<HostRoutes>,
    /// The table's own virtual hosts (`Table::virtual_hosts`).
    host_index: HostIndex,
    /// Each listener's virtual hosts, by Gateway port; empty when the table has none.
    listeners: Vec<(u16, HostIndex)>,
}

#[derive(Debug)]
struct CompiledRoute {
    conditions: Conditions,
    prefix_len: usize,
}

/// One virtual host's routes, indexed by path. Candidate lists hold table-wide route
/// indexes in increasing (priority) order.
#[derive(Debug, Default)]
struct HostRoutes {
    exact: HashMap<Box<str>, Vec<usize>>,
    /// Prefixes other than `/`, without trailing slash.
    prefixes: HashMap<Box<str>, Vec<usize>>,
    /// `prefix_lengths[n]`: some prefix is `n` bytes long. Saves lookups that cannot hit.
    prefix_lengths: Vec<bool>,
    /// Routes with the prefix `/`, which every path matches.
    root: Vec<usize>,
    regex: Option<RegexRoutes>,
}

#[derive(Debug)]
struct RegexRoutes {
    /// The first pattern, in order, that matches a path: one search that stops at it, where
    /// asking `set` for every match and walking its answer costs a step per pattern (about
    /// 8 000 instructions per request with 1 667 patterns).
    first: meta::Regex,
    /// Every pattern that matches, for when the first one's route does not hold.
    set: RegexSet,
    /// Pattern `i` belongs to route `routes[i]`; increasing.
    routes: Vec<usize>,
}

impl Router {
    pub fn new(table: &Table) -> Result<Self, RouterError> {
        let mut routes = Vec::with_capacity(table.route_count());
        let mut compiled = Vec::with_capacity(table.route_count());
        let mut hosts = Vec::with_capacity(table.all_virtual_hosts().count());
        let mut host_index = HostIndex::default();
        let mut listeners: Vec<(u16, HostIndex)> = table
            .listeners
            .iter()
            .map(|l| (l.port, HostIndex::default()))
            .collect();
        let mut regexes = RegexCache::default();
        // Which host index each virtual host goes in: the table's, then each listener's.
        let groups = std::iter::repeat_n(None, table.virtual_hosts.len()).chain(
            table
                .listeners
                .iter()
                .enumerate()
                .flat_map(|(i, l)| std::iter::repeat_n(Some(i), l.virtual_hosts.len())),
        );

        for (h, (vh, group)) in table.all_virtual_hosts().zip(groups).enumerate() {
            match group {
                None => host_index.insert(Domain::parse(&vh.domain), h),
                Some(l) => listeners[l].1.insert(Domain::parse(&vh.domain), h),
            }
            let mut host = HostRoutes::default();
            let mut path_regexes: Vec<(usize, &str)> = Vec::new();
            for route in &vh.routes {
                let index = routes.len();
                let mut prefix_len = 0;
                match &route.matcher.path {
                    PathMatch::Exact(p) => {
                        host.exact.entry(p.as_str().into()).or_default().push(index);
                    }
                    PathMatch::Prefix(p) => {
                        let p = p.trim_end_matches('/');
                        if p.is_empty() {
                            host.root.push(index);
                        } else {
                            prefix_len = p.len();
                            if host.prefix_lengths.len() <= p.len() {
                                host.prefix_lengths.resize(p.len() + 1, false);
                            }
                            host.prefix_lengths[p.len()] = true;
                            host.prefixes.entry(p.into()).or_default().push(index);
                        }
                    }
                    PathMatch::Regex(re) => path_regexes.push((index, re)),
                }
                compiled.push(CompiledRoute {
                    conditions: Conditions::compile(&route.name, &route.matcher, &mut regexes)?,
                    prefix_len,
                });
                routes.push(route.clone());
            }
            if !path_regexes.is_empty() {
                host.regex = Some(RegexRoutes::build(&vh.domain, &path_regexes, &routes)?);
            }
            hosts.push(host);
        }

        Ok(Self {
            routes,
            compiled,
            hosts,
            host_index,
            listeners,
        })
    }

    /// The route that serves `req` with the table's own virtual hosts, if any.
    pub fn route(&self, req: &RequestInfo<'_>) -> Option<Matched<'_>> {
        self.route_in(&self.host_index, req)
    }

    /// The route that serves `req` arriving on Gateway port `port`: with that listener's
    /// virtual hosts when the table has listeners (none when it has none for the port),
    /// else with the table's own.
    pub fn route_on(&self, port: u16, req: &RequestInfo<'_>) -> Option<Matched<'_>> {
        if self.listeners.is_empty() {
            return self.route(req);
        }
        let (_, index) = self.listeners.iter().find(|(p, _)| *p == port)?;
        self.route_in(index, req)
    }

    fn route_in(&self, index: &HostIndex, req: &RequestInfo<'_>) -> Option<Matched<'_>> {
        let (path, query) = match req.path.split_once('?') {
            Some((path, query)) => (path, req.query.or(Some(query))),
            None => (req.path, req.query),
        };
        let host = host::normalize(req.host);
        let host = &self.hosts[index.lookup(&host)?];
        let index = host.find(path, |i| {
            self.compiled[i]
                .conditions
                .hold(req.method, req.headers, query)
        })?;
        Some(Matched {
            route: &self.routes[index],
            index,
            prefix_len: self.compiled[index].prefix_len,
        })
    }

    /// How many routes the table has; [`Matched::index`] is below this.
    pub fn route_count(&self) -> usize {
        self.routes.len()
    }

    /// Every route with its [`Matched::index`], in index order, to build per-route state.
    pub fn routes(&self) -> impl ExactSizeIterator<Item = (usize, &Route)> + '_ {
        self.routes.iter().enumerate()
    }

    /// The route at a [`Matched::index`].
    pub fn get(&self, index: usize) -> Option<&Route> {
        self.routes.get(index)
    }
}

impl HostRoutes {
    /// The lowest route index whose path matches `path` and for which `holds` is true.
    fn find(&self, path: &str, holds: impl Fn(usize) -> bool) -> Option<usize> {
        let mut best = usize::MAX;
        if let Some(candidates) = self.exact.get(path) {
            first_holding(candidates.iter().copied(), &mut best, &holds);
        }
        first_holding(self.root.iter().copied(), &mut best, &holds);
        if !self.prefixes.is_empty() {
            // The candidate prefixes of `/a/b/c` are `/a`, `/a/b` and `/a/b/c`: the path
            // up to each later slash, and the whole path.
            let ends = path
                .match_indices('/')
                .map(|(i, _)| i)
                .filter(|&i| i > 0)
                .chain(std::iter::once(path.len()));
            for end in ends {
                if end >= self.prefix_lengths.len() {
                    break;
                }
                if self.prefix_lengths[end]
                    && let Some(candidates) = self.prefixes.get(&path[..end])
                {
                    first_holding(candidates.iter().copied(), &mut best, &holds);
                }
            }
        }
        if let Some(re) = &self.regex
            && re.routes[0] < best
        {
            re.find(path, &mut best, &holds);
        }
        (best != usize::MAX).then_some(best)
    }
}

/// Lowers `best` to the first of `candidates` (increasing) below it for which `holds`.
fn first_holding(
    candidates: impl Iterator<Item = usize>,
    best: &mut usize,
    holds: &impl Fn(usize) -> bool,
) {
    for i in candidates {
        if i >= *best {
            return;
        }
        if holds(i) {
            *best = i;
            return;
        }
    }
}

impl RegexRoutes {
    /// `regexes`: (route index, pattern) in route order; `routes` names the culprit when a
    /// pattern does not compile.
    fn build(
        domain: &str,
        regexes: &[(usize, &str)],
        routes: &[Route],
    ) -> Result<Self, RouterError> {
        let patterns = regexes
            .iter()
            .map(|&(index, p)| {
                matcher::anchor(p).map_err(|reason| RouterError::PathRegex {
                    route: routes[index].name.clone(),
                    reason,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let too_large = |reason: String| RouterError::RegexSetTooLarge {
            domain: domain.to_string(),
            reason,
        };
        let set = RegexSetBuilder::new(&patterns)
            .size_limit(REGEX_SET_SIZE_LIMIT)
            .build()
            .map_err(|set_error| {
                // Name the route whose regex is wrong; if each compiles alone, the set is
                // too large.
                for ((index, _), pattern) in regexes.iter().zip(&patterns) {
                    if let Err(e) = regex::Regex::new(pattern) {
                        return RouterError::PathRegex {
                            route: routes[*index].name.clone(),
                            reason: matcher::summary(&e),
                        };
                    }
                }
                too_large(matcher::summary(&set_error))
            })?;
        // The set's NFA size limit (the lazy DFA keeps the engine's default cache); only
        // where the match ends and which pattern it is are needed, no capture groups.
        let first = meta::Regex::builder()
            .configure(
                meta::Config::new()
                    .match_kind(MatchKind::LeftmostFirst)
                    .which_captures(WhichCaptures::Implicit)
                    .nfa_size_limit(Some(REGEX_SET_SIZE_LIMIT)),
            )
            .build_many(&patterns)
            .map_err(|e| too_large(matcher::summary(&e)))?;
        Ok(Self {
            first,
            set,
            routes: regexes.iter().map(|(i, _)| *i).collect(),
        })
    }

    /// Lowers `best` to the first route whose pattern matches `path` and for which `holds`.
    fn find(&self, path: &str, best: &mut usize, holds: &impl Fn(usize) -> bool) {
        // Every pattern is anchored at both ends, so a leftmost-first search from the
        // start finds the first pattern, in order, that matches the whole path.
        let Some(m) = self.first.search(&Input::new(path).anchored(Anchored::Yes)) else {
            return;
        };
        let first = self.routes[m.pattern().as_usize()];
        if first >= *best {
            return;
        }
        if holds(first) {
            *best = first;
            return;
        }
        // Its method, headers or query do not hold: the later patterns that match.
        let matched = self.set.matches(path);
        first_holding(matched.iter().map(|p| self.routes[p]), best, holds);
    }
}
