//! Why a table cannot be routed.

/// Why a table cannot be routed. The messages read as sentences for logs.
#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    #[error("route {route} has a path regex that does not compile: {reason}")]
    PathRegex { route: String, reason: String },
    #[error("route {route} matches {what} {name} with a regex that does not compile: {reason}")]
    ValueRegex {
        route: String,
        what: &'static str,
        name: String,
        reason: String,
    },
    #[error(
        "the path regexes of host {domain} are too large to compile together ({reason}); use fewer or simpler regexes there"
    )]
    RegexSetTooLarge { domain: String, reason: String },
    /// Not a routing error, but refused with the table like one.
    #[error("pool {cluster} has unusable upstream TLS settings: {reason}")]
    UpstreamTls { cluster: String, reason: String },
}
