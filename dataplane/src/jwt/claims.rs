//! What a verified token's claims must hold (`requiredClaims`) and what is copied from them
//! into request headers (`claimToHeaders`).

use http::{HeaderName, HeaderValue};
use parapet_crds::snapshot::{ClaimHeader, ClaimRequirement};
use serde_json::{Map, Value};

/// A claim by name or dotted path. A name is looked up whole first, so claims whose names
/// hold dots (`https://example.com/roles`, common with some providers) work as written;
/// only when there is no such claim is it read as a path into nested objects
/// (`realm_access.roles`).
#[derive(Clone, Debug)]
pub struct ClaimPath {
    name: Box<str>,
    parts: Option<Box<[Box<str>]>>,
}

impl ClaimPath {
    pub fn new(claim: &str) -> Self {
        let parts = claim
            .contains('.')
            .then(|| claim.split('.').map(Box::from).collect());
        Self {
            name: claim.into(),
            parts,
        }
    }

    /// The claim's value; `null` counts as absent.
    pub fn find<'c>(&self, claims: &'c Map<String, Value>) -> Option<&'c Value> {
        let found = match (claims.get(&*self.name), &self.parts) {
            (Some(v), _) => Some(v),
            (None, Some(parts)) => {
                let (first, rest) = parts.split_first()?;
                rest.iter()
                    .try_fold(claims.get(&**first)?, |v, p| v.as_object()?.get(&**p))
            }
            (None, None) => None,
        };
        found.filter(|v| !v.is_null())
    }
}

/// One `requiredClaims` entry.
#[derive(Clone, Debug)]
pub struct Requirement {
    path: ClaimPath,
    any_of: Box<[Box<str>]>,
    /// `scope` and `scp` are space-separated lists (RFC 8693 §4.2); any other string claim
    /// is one value, so `"sales admin"` never passes for `admin`.
    word_list: bool,
}

impl Requirement {
    pub fn new(r: &ClaimRequirement) -> Self {
        Self {
            path: ClaimPath::new(&r.claim),
            any_of: r.any_of.iter().map(|s| Box::from(s.as_str())).collect(),
            word_list: matches!(r.claim.as_str(), "scope" | "scp"),
        }
    }

    /// Present, and with `any_of`, holding one of its values: a string equal to one (or for
    /// `scope`/`scp` holding one as a space-separated word), an array with an equal element, or
    /// a number or boolean whose JSON text is one.
    pub fn holds(&self, claims: &Map<String, Value>) -> bool {
        let Some(v) = self.path.find(claims) else {
            return false;
        };
        if self.any_of.is_empty() {
            return true;
        }
        let wanted = |s: &str| self.any_of.iter().any(|w| **w == *s);
        match v {
            Value::String(s) => {
                wanted(s) || (self.word_list && s.split_ascii_whitespace().any(wanted))
            }
            Value::Array(items) => items.iter().any(|i| scalar_matches(i, &wanted)),
            v => scalar_matches(v, &wanted),
        }
    }
}

fn scalar_matches(v: &Value, wanted: &impl Fn(&str) -> bool) -> bool {
    match v {
        Value::String(s) => wanted(s),
        Value::Number(n) => wanted(&n.to_string()),
        Value::Bool(b) => wanted(if *b { "true" } else { "false" }),
        _ => false,
    }
}

/// One `claimToHeaders` entry.
#[derive(Clone, Debug)]
pub struct HeaderFromClaim {
    path: ClaimPath,
    pub header: HeaderName,
}

impl HeaderFromClaim {
    /// `None` (with a warning) for a header name that cannot be one.
    pub fn new(c: &ClaimHeader, provider: &str) -> Option<Self> {
        match HeaderName::from_bytes(c.header.as_bytes()) {
            Ok(header) => Some(Self {
                path: ClaimPath::new(&c.claim),
                header,
            }),
            Err(_) => {
                tracing::warn!(provider, header = %c.header, "jwt claim header is not a valid header name; skipped");
                None
            }
        }
    }

    /// The header's value: a string as it is, a number or boolean as its JSON text, an
    /// array of those joined with `,`. Objects, and values that are not visible ASCII
    /// (control characters, non-ASCII text), give none: a claim never smuggles a line break
    /// or a second header upstream.
    pub fn value(&self, claims: &Map<String, Value>) -> Option<HeaderValue> {
        let text = match self.path.find(claims)? {
            Value::String(s) => std::borrow::Cow::Borrowed(s.as_str()),
            Value::Array(items) => {
                let mut out = String::new();
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(&scalar_text(item)?);
                }
                std::borrow::Cow::Owned(out)
            }
            v => scalar_text(v)?,
        };
        if !text.bytes().all(|b| (b' '..=b'~').contains(&b)) {
            return None;
        }
        HeaderValue::from_str(&text).ok()
    }
}

fn scalar_text(v: &Value) -> Option<std::borrow::Cow<'_, str>> {
    Some(match v {
        Value::String(s) => std::borrow::Cow::Borrowed(s.as_str()),
        Value::Number(n) => std::borrow::Cow::Owned(n.to_string()),
        Value::Bool(b) => std::borrow::Cow::Borrowed(if *b { "true" } else { "false" }),
        _ => return None,
    })
}
