//! What the compiler found wrong with each object, in a form the operator turns into status
//! conditions and Events.

use std::fmt;

use serde::Serialize;

/// The object a diagnostic is about.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct ObjectKey {
    pub kind: &'static str,
    pub namespace: String,
    pub name: String,
}

impl ObjectKey {
    pub fn new(kind: &'static str, namespace: &str, name: &str) -> Self {
        Self {
            kind,
            namespace: namespace.to_string(),
            name: name.to_string(),
        }
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
    }
}

/// Which condition a problem turns false.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum ConditionKind {
    /// The object itself is invalid (in a way the schema could not catch).
    Accepted,
    /// Something it references is missing or unusable.
    ResolvedRefs,
}

impl ConditionKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Accepted => crate::api::conditions::ACCEPTED,
            Self::ResolvedRefs => crate::api::conditions::RESOLVED_REFS,
        }
    }
}

/// Errors turn their condition false and leave the offending part out of the table;
/// warnings are reported but change nothing that serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Severity {
    Error,
    Warning,
}

/// Machine-readable reasons, as written into conditions (CamelCase, Gateway API style).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Reason {
    InvalidRegex,
    InvalidRewrite,
    InvalidRedirect,
    InvalidHeaderFilter,
    InvalidMirror,
    InvalidTimeout,
    /// A rule with neither backends nor a redirect, or with both.
    InvalidRule,
    InvalidUpgrade,
    InvalidHedge,
    InvalidLanes,
    InvalidHost,
    RuleConflict,
    PoolNotFound,
    BackupPoolNotFound,
    CachePolicyNotFound,
    SecretNotFound,
    InvalidSecret,
    /// An IP rule, JWT provider or external authorization that cannot be used as written.
    InvalidAuth,
    ServiceNotFound,
    NoEndpoints,
}

impl Reason {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::InvalidRegex => "InvalidRegex",
            Self::InvalidRewrite => "InvalidRewrite",
            Self::InvalidRedirect => "InvalidRedirect",
            Self::InvalidHeaderFilter => "InvalidHeaderFilter",
            Self::InvalidMirror => "InvalidMirror",
            Self::InvalidTimeout => "InvalidTimeout",
            Self::InvalidRule => "InvalidRule",
            Self::InvalidUpgrade => "InvalidUpgrade",
            Self::InvalidHedge => "InvalidHedge",
            Self::InvalidLanes => "InvalidLanes",
            Self::InvalidHost => "InvalidHost",
            Self::RuleConflict => "RuleConflict",
            Self::PoolNotFound => "PoolNotFound",
            Self::BackupPoolNotFound => "BackupPoolNotFound",
            Self::CachePolicyNotFound => "CachePolicyNotFound",
            Self::SecretNotFound => "SecretNotFound",
            Self::InvalidSecret => "InvalidSecret",
            Self::InvalidAuth => "InvalidAuth",
            Self::ServiceNotFound => "ServiceNotFound",
            Self::NoEndpoints => "NoEndpoints",
        }
    }

    pub fn condition(&self) -> ConditionKind {
        match self {
            Self::InvalidRegex
            | Self::InvalidRewrite
            | Self::InvalidRedirect
            | Self::InvalidHeaderFilter
            | Self::InvalidMirror
            | Self::InvalidTimeout
            | Self::InvalidRule
            | Self::InvalidHedge
            | Self::InvalidLanes
            | Self::InvalidHost
            | Self::RuleConflict => ConditionKind::Accepted,
            _ => ConditionKind::ResolvedRefs,
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Diagnostic {
    pub object: ObjectKey,
    pub severity: Severity,
    pub reason: Reason,
    /// A sentence that says what is wrong and what to fix.
    pub message: String,
}

/// All diagnostics of one compilation, ordered by object then reason.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Diagnostics {
    items: Vec<Diagnostic>,
}

impl Diagnostics {
    pub(crate) fn error(&mut self, object: &ObjectKey, reason: Reason, message: String) {
        self.push(object, Severity::Error, reason, message);
    }

    pub(crate) fn warning(&mut self, object: &ObjectKey, reason: Reason, message: String) {
        self.push(object, Severity::Warning, reason, message);
    }

    fn push(&mut self, object: &ObjectKey, severity: Severity, reason: Reason, message: String) {
        self.items.push(Diagnostic {
            object: object.clone(),
            severity,
            reason,
            message,
        });
    }

    pub(crate) fn finish(&mut self) {
        self.items.sort();
        self.items.dedup();
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Diagnostic> {
        self.items.iter()
    }

    pub fn errors(&self) -> impl Iterator<Item = &Diagnostic> {
        self.items.iter().filter(|d| d.severity == Severity::Error)
    }

    /// The diagnostics about one object.
    pub fn for_object<'a>(
        &'a self,
        kind: &'a str,
        namespace: &'a str,
        name: &'a str,
    ) -> impl Iterator<Item = &'a Diagnostic> + 'a {
        self.items.iter().filter(move |d| {
            d.object.kind == kind && d.object.namespace == namespace && d.object.name == name
        })
    }

    /// The state of one condition for one object: `None` when it holds, otherwise the
    /// first error's reason and a message joining every error's message (bounded, so a
    /// status never grows past what the API server accepts).
    pub fn condition(
        &self,
        kind: &str,
        namespace: &str,
        name: &str,
        condition: ConditionKind,
    ) -> Option<(Reason, String)> {
        let mut errors = self
            .for_object(kind, namespace, name)
            .filter(|d| d.severity == Severity::Error && d.reason.condition() == condition);
        let first = errors.next()?;
        let mut message = first.message.clone();
        let mut more = 0usize;
        for d in errors {
            if message.len() + d.message.len() + 2 > MAX_MESSAGE {
                more += 1;
            } else {
                message.push_str("; ");
                message.push_str(&d.message);
            }
        }
        if more > 0 {
            message.push_str(&format!(" (and {more} more)"));
        }
        Some((first.reason, message))
    }
}

/// Condition messages are capped well below the API server's 32 KiB limit.
pub const MAX_MESSAGE: usize = 1024;

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}: {}", self.object, self.reason, self.message)
    }
}
