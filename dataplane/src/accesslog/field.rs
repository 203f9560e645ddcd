//! The fields an access-log record has: one name each, the same in JSON keys, `text`
//! keys and template placeholders.

/// One field of a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Field {
    Time,
    Client,
    ClientPort,
    Method,
    Authority,
    Path,
    Query,
    Protocol,
    Status,
    Route,
    UpstreamCluster,
    UpstreamEndpoint,
    Attempts,
    BytesReceived,
    BytesSent,
    UpstreamMs,
    DurationMs,
    Cache,
    RateLimit,
    RequestId,
    TraceId,
    TlsVersion,
    Sni,
    KeyId,
    UserAgent,
    Referer,
    ForwardedFor,
}

impl Field {
    /// Every field, in the order the default formats write them.
    pub const ALL: [Field; 27] = [
        Self::Time,
        Self::Client,
        Self::ClientPort,
        Self::Method,
        Self::Authority,
        Self::Path,
        Self::Query,
        Self::Protocol,
        Self::Status,
        Self::Route,
        Self::UpstreamCluster,
        Self::UpstreamEndpoint,
        Self::Attempts,
        Self::BytesReceived,
        Self::BytesSent,
        Self::UpstreamMs,
        Self::DurationMs,
        Self::Cache,
        Self::RateLimit,
        Self::RequestId,
        Self::TraceId,
        Self::TlsVersion,
        Self::Sni,
        Self::KeyId,
        Self::UserAgent,
        Self::Referer,
        Self::ForwardedFor,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::Time => "time",
            Self::Client => "client",
            Self::ClientPort => "client_port",
            Self::Method => "method",
            Self::Authority => "authority",
            Self::Path => "path",
            Self::Query => "query",
            Self::Protocol => "protocol",
            Self::Status => "status",
            Self::Route => "route",
            Self::UpstreamCluster => "upstream_cluster",
            Self::UpstreamEndpoint => "upstream_endpoint",
            Self::Attempts => "attempts",
            Self::BytesReceived => "bytes_received",
            Self::BytesSent => "bytes_sent",
            Self::UpstreamMs => "upstream_ms",
            Self::DurationMs => "duration_ms",
            Self::Cache => "cache",
            Self::RateLimit => "rate_limit",
            Self::RequestId => "request_id",
            Self::TraceId => "trace_id",
            Self::TlsVersion => "tls_version",
            Self::Sni => "sni",
            Self::KeyId => "key_id",
            Self::UserAgent => "user_agent",
            Self::Referer => "referer",
            Self::ForwardedFor => "forwarded_for",
        }
    }

    /// Fields that can carry credentials (tokens in query strings, and in the URLs a
    /// `Referer` names): written only when asked for by name.
    pub fn sensitive(self) -> bool {
        matches!(self, Self::Query | Self::Referer)
    }

    /// The fields written when `--access-log-fields` is not given: all but the sensitive
    /// ones.
    pub fn defaults() -> Vec<Field> {
        Self::ALL.into_iter().filter(|f| !f.sensitive()).collect()
    }

    /// The field of this name (case-insensitive, so Envoy-style `%UPSTREAM_ENDPOINT%`
    /// works too).
    pub fn parse(name: &str) -> Option<Field> {
        Self::ALL
            .into_iter()
            .find(|f| f.name().eq_ignore_ascii_case(name))
    }

    /// Every name, comma-separated, for error messages and `--help`.
    pub fn known() -> String {
        Self::ALL.map(Field::name).join(", ")
    }

    /// A comma-separated list of field names, as `--access-log-fields` takes it.
    pub fn parse_list(list: &str) -> Result<Vec<Field>, String> {
        let mut fields = Vec::new();
        for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            let f = Self::parse(name).ok_or_else(|| {
                format!(
                    "--access-log-fields names an unknown field {name:?}; the known fields are: {}",
                    Self::known()
                )
            })?;
            if !fields.contains(&f) {
                fields.push(f);
            }
        }
        if fields.is_empty() {
            return Err(format!(
                "--access-log-fields names no field; the known fields are: {}",
                Self::known()
            ));
        }
        Ok(fields)
    }
}

#[cfg(test)]
mod tests {
    use super::Field;

    #[test]
    fn names_are_unique_and_parse_back() {
        let mut names: Vec<&str> = Field::ALL.iter().map(|f| f.name()).collect();
        for f in Field::ALL {
            assert_eq!(Field::parse(f.name()), Some(f));
            assert_eq!(Field::parse(&f.name().to_uppercase()), Some(f));
        }
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), Field::ALL.len());
    }

    #[test]
    fn the_defaults_leave_out_what_can_carry_credentials() {
        let d = Field::defaults();
        assert!(!d.contains(&Field::Query) && !d.contains(&Field::Referer));
        assert_eq!(d.len(), Field::ALL.len() - 2);
    }

    #[test]
    fn lists_keep_their_order_and_refuse_unknown_names() {
        assert_eq!(
            Field::parse_list("status, path,status,query"),
            Ok(vec![Field::Status, Field::Path, Field::Query])
        );
        let e = Field::parse_list("status,bogus").unwrap_err();
        assert!(
            e.contains("\"bogus\"") && e.contains("upstream_endpoint"),
            "{e}"
        );
        assert!(Field::parse_list(" , ").is_err());
    }
}
