//! Where a token is read from: a header (with an optional scheme prefix), a cookie or a
//! query parameter.

use std::borrow::Cow;

use http::{HeaderMap, HeaderName, header::COOKIE};
use parapet_crds::snapshot::TokenSource;

use super::refusal::Refusal;
use crate::query;

/// One place a provider looks for its token, parsed once per table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// `prefix` is compared ASCII-case-insensitively (`Bearer ` matches `bearer `).
    Header {
        name: HeaderName,
        prefix: Box<str>,
    },
    Cookie(Box<str>),
    Query(Box<str>),
}

impl Source {
    /// `None` (with a warning) for a header name that cannot be one.
    pub fn new(s: &TokenSource, provider: &str) -> Option<Self> {
        Some(match s {
            TokenSource::Header { name, prefix } => match HeaderName::from_bytes(name.as_bytes()) {
                Ok(name) => Self::Header {
                    name,
                    prefix: prefix.as_str().into(),
                },
                Err(_) => {
                    tracing::warn!(provider, header = %name, "jwt token source is not a valid header name; skipped");
                    return None;
                }
            },
            TokenSource::Cookie(c) => Self::Cookie(c.as_str().into()),
            TokenSource::QueryParam(q) => Self::Query(q.as_str().into()),
        })
    }

    /// The header a token read from here came in, which is removed before forwarding.
    /// Cookies and query parameters are left as they are: removing one cookie means
    /// rewriting the `Cookie` header, and the query is part of the path the route matched.
    pub fn header(&self) -> Option<&HeaderName> {
        match self {
            Self::Header { name, .. } => Some(name),
            _ => None,
        }
    }

    /// The token here: `Ok(None)` when this source holds none (absent, or a header with
    /// another scheme such as `Basic`, RFC 6750 §2.1), `Err(Malformed)` when it is
    /// ambiguous (the header twice), empty after its prefix, or not text.
    pub fn extract<'a>(
        &self,
        headers: &'a HeaderMap,
        query: Option<&'a str>,
    ) -> Result<Option<Cow<'a, str>>, Refusal> {
        let token: Cow<'a, str> = match self {
            Self::Header { name, prefix } => {
                let mut all = headers.get_all(name).iter();
                let Some(value) = all.next() else {
                    return Ok(None);
                };
                if all.next().is_some() {
                    return Err(Refusal::Malformed);
                }
                let value = value.to_str().map_err(|_| Refusal::Malformed)?;
                match strip_prefix(value, prefix)? {
                    Some(t) => Cow::Borrowed(t),
                    None => return Ok(None),
                }
            }
            Self::Cookie(name) => match cookie(headers, name)? {
                Some(v) => Cow::Borrowed(std::str::from_utf8(v).map_err(|_| Refusal::Malformed)?),
                None => return Ok(None),
            },
            Self::Query(name) => match query.map(|q| query_value(q, name)).transpose()?.flatten() {
                Some(Cow::Borrowed(v)) => {
                    Cow::Borrowed(std::str::from_utf8(v).map_err(|_| Refusal::Malformed)?)
                }
                Some(Cow::Owned(v)) => {
                    Cow::Owned(String::from_utf8(v).map_err(|_| Refusal::Malformed)?)
                }
                None => return Ok(None),
            },
        };
        if token.is_empty() || token.len() > super::token::MAX_TOKEN_LEN {
            return Err(Refusal::Malformed);
        }
        Ok(Some(token))
    }
}

/// The token after `prefix`; `Ok(None)` for a value with another scheme; `Malformed` for the
/// scheme alone (`Bearer` with nothing after it) or a token with spaces in it.
fn strip_prefix<'v>(value: &'v str, prefix: &str) -> Result<Option<&'v str>, Refusal> {
    let (v, p) = (value.as_bytes(), prefix.as_bytes());
    let rest = if v.len() >= p.len() && v[..p.len()].eq_ignore_ascii_case(p) {
        // `value` is visible ASCII (`to_str`), so every byte offset is a char boundary.
        &value[p.len()..]
    } else {
        let scheme = prefix.trim_end();
        if !scheme.is_empty() && value.trim_end().eq_ignore_ascii_case(scheme) {
            return Err(Refusal::Malformed);
        }
        return Ok(None);
    };
    // RFC 6750's `1*SP`: more than one space after the scheme is still the scheme.
    let token = rest.trim_start_matches(' ');
    if token.is_empty() || token.contains([' ', '\t']) {
        return Err(Refusal::Malformed);
    }
    Ok(Some(token))
}

/// The cookie called `name` across the request's `Cookie` headers (HTTP/2 may split them).
/// Two of that name are ambiguous (servers differ on which they read: the upstream might
/// read the one not checked), so they are refused.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Result<Option<&'a [u8]>, Refusal> {
    let mut found = None;
    for h in headers.get_all(COOKIE) {
        for pair in h.as_bytes().split(|b| *b == b';') {
            let pair = pair.trim_ascii();
            let Some(eq) = pair.iter().position(|b| *b == b'=') else {
                continue;
            };
            let (k, v) = (&pair[..eq], &pair[eq + 1..]);
            if k.trim_ascii() != name.as_bytes() {
                continue;
            }
            if found.is_some() {
                return Err(Refusal::Malformed);
            }
            let v = v.trim_ascii();
            found = Some(match v {
                [b'"', inner @ .., b'"'] => inner,
                v => v,
            });
        }
    }
    Ok(found)
}

/// The (percent-decoded) value of the `name=` parameter of a query string; two of that
/// name are ambiguous and refused, as for cookies.
fn query_value<'q>(query: &'q str, name: &str) -> Result<Option<Cow<'q, [u8]>>, Refusal> {
    let mut found = None;
    for (k, v) in query::pairs(query) {
        if *query::decode_bytes(k) == *name.as_bytes() {
            if found.is_some() {
                return Err(Refusal::Malformed);
            }
            found = Some(query::decode_bytes(v));
        }
    }
    Ok(found)
}
