//! The **auth** stage (after route, before admit): API keys from a header or a query
//! parameter, checked against the table's salted SHA-256 hashes in constant time.
//!
//! The table never carries a key in plain text; the check hashes the presented key with
//! each entry's salt and compares all entries without an early exit, so neither the time
//! taken nor the order of keys says which key (or how much of one) matched. The identity of
//! the matching key (`secret/dataKey`) is what later stages see and what is logged.

#[cfg(test)]
mod tests;

use std::sync::Arc;

use http::{HeaderMap, HeaderName};
use parapet_crds::snapshot::{ApiKeyCheck, HashedApiKey, KeySource};
use subtle::{ConditionallySelectable, ConstantTimeEq};

use crate::query;

/// Why a request was not authenticated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// No key where the route expects one: 401.
    Missing,
    /// A key that matches none of the route's: 403.
    Wrong,
}

impl Refusal {
    pub fn label(self) -> &'static str {
        match self {
            Self::Missing => "api_key_missing",
            Self::Wrong => "api_key_wrong",
        }
    }
}

/// Where the key is read from, parsed once per table.
#[derive(Clone, Debug)]
pub enum Source {
    Header(HeaderName),
    QueryParam(String),
}

#[derive(Clone, Debug)]
struct Entry {
    id: Arc<str>,
    salt: Vec<u8>,
    sha256: [u8; 32],
}

/// A route's API keys, ready to check requests against.
#[derive(Clone, Debug)]
pub struct ApiKeys {
    pub source: Source,
    entries: Vec<Entry>,
}

impl ApiKeys {
    /// Builds the checker; entries whose salt or hash are not valid hex are skipped (they
    /// could never match) and reported.
    pub fn new(check: &ApiKeyCheck) -> Result<Self, String> {
        let source = match &check.source {
            KeySource::Header(h) => Source::Header(
                HeaderName::from_bytes(h.as_bytes())
                    .map_err(|_| format!("API key header {h:?} is not a valid header name"))?,
            ),
            KeySource::QueryParam(q) => Source::QueryParam(q.clone()),
        };
        let entries = check
            .keys
            .iter()
            .filter_map(|k: &HashedApiKey| {
                let salt = hex_decode(&k.salt)?;
                let sha256: [u8; 32] = hex_decode(&k.sha256)?.try_into().ok()?;
                Some(Entry {
                    id: Arc::from(k.id.as_str()),
                    salt,
                    sha256,
                })
            })
            .collect();
        Ok(Self { source, entries })
    }

    /// The identity of the key the request presents.
    pub fn authenticate(
        &self,
        headers: &HeaderMap,
        query: Option<&str>,
    ) -> Result<Arc<str>, Refusal> {
        let presented: Option<std::borrow::Cow<'_, [u8]>> = match &self.source {
            Source::Header(h) => headers
                .get(h)
                .map(|v| std::borrow::Cow::Borrowed(v.as_bytes())),
            Source::QueryParam(name) => query_value(query.unwrap_or(""), name),
        };
        let key = match presented {
            Some(k) if !k.is_empty() => k,
            _ => return Err(Refusal::Missing),
        };
        self.check(&key).ok_or(Refusal::Wrong)
    }

    /// Constant-time over the entries: every entry is hashed and compared, and the index of
    /// the match is selected without a branch on secret data.
    pub fn check(&self, key: &[u8]) -> Option<Arc<str>> {
        let mut found = subtle::Choice::from(0);
        let mut index = 0u32;
        for (i, e) in self.entries.iter().enumerate() {
            let digest = HashedApiKey::hash_key(&e.salt, key);
            let eq = digest.ct_eq(&e.sha256);
            index.conditional_assign(&u32::try_from(i).unwrap_or(u32::MAX), eq);
            found |= eq;
        }
        bool::from(found).then(|| self.entries[index as usize].id.clone())
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// The (percent-decoded) value of the first `name=` parameter of a query string.
fn query_value<'q>(query: &'q str, name: &str) -> Option<std::borrow::Cow<'q, [u8]>> {
    query::pairs(query).find_map(|(k, v)| {
        (*query::decode_bytes(k) == *name.as_bytes()).then(|| query::decode_bytes(v))
    })
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn hex_decode(s: &str) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    if !b.len().is_multiple_of(2) {
        return None;
    }
    b.chunks(2)
        .map(|p| Some(hex_val(p[0])? << 4 | hex_val(p[1])?))
        .collect()
}
