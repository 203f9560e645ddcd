//! One endpoint as a table describes it, with its live state.

use std::sync::Arc;

use super::stats::EndpointStats;

/// One endpoint of a cluster, as this snapshot describes it, with its live state.
#[derive(Debug)]
pub struct EndpointHandle {
    pub address: String,
    /// `address:port` (brackets around an IPv6 address), parsed once for every request.
    pub authority: http::uri::Authority,
    pub port: u16,
    pub weight: u32,
    pub zone: Option<String>,
    /// Local to the data plane's own zone (its zone, or its topology hints name it; see
    /// `Endpoint::local_to`); false when the data plane's zone is not known.
    pub local: bool,
    /// Whether the snapshot lets new requests go here; see `Endpoint::routable`.
    pub routable: bool,
    pub stats: Arc<EndpointStats>,
}

impl EndpointHandle {
    pub fn routable(&self) -> bool {
        self.routable
    }

    /// `address:port`, with brackets around an IPv6 address.
    pub fn authority(&self) -> &http::uri::Authority {
        &self.authority
    }
}

/// `address:port` as a URI authority. The compiler only lets IP addresses and DNS names
/// through; anything else gets a name under `.invalid` (RFC 6761), which never resolves, so
/// requests to it fail as connect errors instead of the table failing to load.
pub fn endpoint_authority(address: &str, port: u16) -> http::uri::Authority {
    let s = if address.contains(':') {
        format!("[{address}]:{port}")
    } else {
        format!("{address}:{port}")
    };
    s.parse()
        .unwrap_or_else(|_| http::uri::Authority::from_static("unparsable-endpoint.invalid:1"))
}
