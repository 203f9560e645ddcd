//! The connection a request came on, and what the edge believes of its peer.

use std::{net::SocketAddr, sync::Arc};

use http::HeaderValue;

use crate::tls::ClientIdentity;

/// Edge settings: which peers' forwarding headers are trusted, what `Server` says.
#[derive(Clone, Debug, Default)]
pub struct EdgeConfig {
    /// Peers whose `X-Forwarded-*` and `Forwarded` are kept and extended
    /// (`--trusted-proxies`); from any other peer they are replaced.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// For requests from trusted proxies: how many `X-Forwarded-For` entries from the
    /// right are proxies, so the client address for rate limits is the one before them
    /// (`--trusted-hops`); 0: the peer address.
    pub trusted_hops: u32,
    /// `Server` header on every response (`--server-header`); none by default.
    pub server_header: Option<HeaderValue>,
}

impl EdgeConfig {
    /// Whether `peer` is a proxy whose forwarding headers are believed.
    pub fn trusts(&self, peer: std::net::IpAddr) -> bool {
        if self.trusted_proxies.is_empty() {
            return false;
        }
        let peer = peer.to_canonical();
        self.trusted_proxies.iter().any(|n| n.contains(&peer))
    }
}

/// What the listener knows about the connection a request came on.
#[derive(Clone, Debug)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    /// The TLS session, on a TLS connection (set once the handshake is done).
    pub tls: Option<Arc<TlsSession>>,
    /// The Gateway listener port the socket serves (`--listen ADDR=PORT`; by default the
    /// socket's own port): routing picks that listener's virtual hosts.
    pub port: u16,
    /// On a TLS connection whose handshake asked for a client certificate: what it settled,
    /// and the verdict of the requests on it (set with `tls`).
    pub client_cert: Option<Arc<ClientIdentity>>,
}

impl ConnInfo {
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }
}

/// What a TLS handshake agreed on, for the access log.
#[derive(Clone, Debug)]
pub struct TlsSession {
    /// `TLSv1.3`, `TLSv1.2`.
    pub version: &'static str,
    /// The server name the client asked for, when it sent one.
    pub sni: Option<Box<str>>,
}

impl TlsSession {
    pub fn of(conn: &rustls::ServerConnection) -> TlsSession {
        TlsSession {
            version: match conn.protocol_version() {
                Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3",
                Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
                Some(rustls::ProtocolVersion::TLSv1_1) => "TLSv1.1",
                Some(rustls::ProtocolVersion::TLSv1_0) => "TLSv1.0",
                _ => "TLS",
            },
            sni: conn.server_name().map(Into::into),
        }
    }
}
