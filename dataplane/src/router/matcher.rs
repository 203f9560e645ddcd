//! The parts of a route's matcher checked after its path: method, headers, query
//! parameters.

use std::collections::HashMap;

use http::{HeaderMap, HeaderName, Method};
use parapet_crds::snapshot::{RouteMatcher, StringMatch, ValueMatcher};
use regex::Regex;

use super::error::RouterError;
use crate::query;

/// A route's method, header and query conditions, compiled.
#[derive(Debug)]
pub(super) struct Conditions {
    /// Empty: any method.
    methods: Box<[Box<str>]>,
    headers: Box<[HeaderCondition]>,
    query: Box<[QueryCondition]>,
}

#[derive(Debug)]
struct HeaderCondition {
    /// `None` when the name is not a valid header name: no request can carry it, so the
    /// condition never holds.
    name: Option<HeaderName>,
    value: Value,
}

#[derive(Debug)]
struct QueryCondition {
    name: Box<str>,
    value: Value,
}

#[derive(Debug)]
enum Value {
    Exact(Box<str>),
    /// Anchored, as the snapshot stores it.
    Regex(Regex),
}

/// Compiles each distinct regex of a table once, however many routes repeat it.
#[derive(Default)]
pub(super) struct RegexCache(HashMap<String, Regex>);

impl RegexCache {
    /// The compiled, anchored regex, or why `pattern` does not compile.
    pub(super) fn get(&mut self, pattern: &str) -> Result<Regex, String> {
        if let Some(re) = self.0.get(pattern) {
            return Ok(re.clone());
        }
        let re = Regex::new(&anchor(pattern)?).map_err(|e| summary(&e))?;
        self.0.insert(pattern.to_string(), re.clone());
        Ok(re)
    }
}

/// `pattern` anchored so that it matches only a whole value: `^(?:pattern)$`, or why it does
/// not parse. The snapshot's regexes come anchored already and are wrapped once more all the
/// same: a pattern stays inside the group only if it parses on its own, which is checked here
/// (`/a)|(?:/b` would read `^(?:/a)|(?:/b)$` wrapped, and match any path ending in `/b`).
pub(super) fn anchor(pattern: &str) -> Result<String, String> {
    regex_automata::util::syntax::parse(pattern).map_err(|e| summary(&e))?;
    Ok(format!("^(?:{pattern})$"))
}

/// A regex error as one line: the last line of its message says what is wrong.
pub(super) fn summary(e: &impl std::fmt::Display) -> String {
    e.to_string()
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim()
        .to_string()
}

impl Conditions {
    pub(super) fn compile(
        route: &str,
        m: &RouteMatcher,
        regexes: &mut RegexCache,
    ) -> Result<Self, RouterError> {
        let value = |what: &'static str, v: &ValueMatcher, regexes: &mut RegexCache| match &v.value
        {
            StringMatch::Exact(s) => Ok(Value::Exact(s.as_str().into())),
            StringMatch::Regex(re) => {
                regexes
                    .get(re)
                    .map(Value::Regex)
                    .map_err(|e| RouterError::ValueRegex {
                        route: route.to_string(),
                        what,
                        name: v.name.clone(),
                        reason: e,
                    })
            }
        };
        let headers = m
            .headers
            .iter()
            .map(|h| {
                Ok(HeaderCondition {
                    name: HeaderName::from_bytes(h.name.as_bytes()).ok(),
                    value: value("header", h, regexes)?,
                })
            })
            .collect::<Result<_, RouterError>>()?;
        let query = m
            .query_params
            .iter()
            .map(|q| {
                Ok(QueryCondition {
                    name: q.name.as_str().into(),
                    value: value("query parameter", q, regexes)?,
                })
            })
            .collect::<Result<_, RouterError>>()?;
        Ok(Self {
            methods: m.methods.iter().map(|s| s.as_str().into()).collect(),
            headers,
            query,
        })
    }

    /// Whether a request whose path already matched satisfies the rest.
    pub(super) fn hold(&self, method: &Method, headers: &HeaderMap, query: Option<&str>) -> bool {
        (self.methods.is_empty() || self.methods.iter().any(|m| **m == *method.as_str()))
            && self.headers.iter().all(|c| c.holds(headers))
            && self.query.iter().all(|c| c.holds(query))
    }
}

impl HeaderCondition {
    /// Any of the header's field lines may match; each line is one value.
    fn holds(&self, headers: &HeaderMap) -> bool {
        let Some(name) = &self.name else {
            return false;
        };
        headers.get_all(name).iter().any(|v| match &self.value {
            Value::Exact(want) => v.as_bytes() == want.as_bytes(),
            // Values that are not UTF-8 never match a regex.
            Value::Regex(re) => std::str::from_utf8(v.as_bytes()).is_ok_and(|s| re.is_match(s)),
        })
    }
}

impl QueryCondition {
    /// Any occurrence of the parameter may match.
    fn holds(&self, query: Option<&str>) -> bool {
        let Some(query) = query else {
            return false;
        };
        query::pairs(query).any(|(name, value)| {
            *query::decode(name) == *self.name && self.value.matches(&query::decode(value))
        })
    }
}

impl Value {
    fn matches(&self, s: &str) -> bool {
        match self {
            Value::Exact(want) => **want == *s,
            Value::Regex(re) => re.is_match(s),
        }
    }
}
