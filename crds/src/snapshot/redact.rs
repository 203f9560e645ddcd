//! A table fit to show: the config dump (`GET /v1/snapshot`) and the CLI print it, so
//! private keys and API-key hashes are replaced before it leaves the process.

use super::{ApiKeyCheck, CertificatePair, RouteAction, Table};

/// What every secret value reads as in a redacted table.
pub const REDACTED: &str = "<redacted>";

impl Table {
    /// A copy with every private key and every API key's salt and hash replaced by
    /// [`REDACTED`]. Certificates (public) and key ids (names of Secret keys) stay.
    pub fn redacted(&self) -> Table {
        let mut t = self.clone();
        let hosts = t.virtual_hosts.iter_mut().chain(
            t.listeners
                .iter_mut()
                .flat_map(|l| l.virtual_hosts.iter_mut()),
        );
        for vh in hosts {
            if let Some(pair) = &mut vh.tls {
                redact_pair(pair);
            }
            for route in &mut vh.routes {
                if let RouteAction::Forward(f) = &mut route.action
                    && let Some(keys) = &mut f.api_keys
                {
                    redact_keys(keys);
                }
            }
        }
        for c in &mut t.clusters {
            if let Some(pair) = c.tls.as_mut().and_then(|t| t.client_certificate.as_mut()) {
                redact_pair(pair);
            }
        }
        t
    }
}

fn redact_pair(pair: &mut CertificatePair) {
    pair.key_pem = REDACTED.to_string();
}

fn redact_keys(keys: &mut ApiKeyCheck) {
    for k in &mut keys.keys {
        // The salted hash is not the key, but it lets anyone holding it test guesses
        // offline: it stays in the process.
        k.salt = REDACTED.to_string();
        k.sha256 = REDACTED.to_string();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::{Snapshot, UpstreamTls};

    fn key_material(s: &str) -> bool {
        s.contains("PRIVATE KEY") || s.contains("0123abcd") || s.contains("feedbeef")
    }

    #[test]
    fn no_private_key_or_key_hash_survives_and_the_rest_is_untouched() {
        let json = serde_json::json!({
            "format": 1,
            "virtualHosts": [{
                "domain": "api.example.com",
                "tls": {"certPem": "-----BEGIN CERTIFICATE-----", "keyPem": "-----BEGIN PRIVATE KEY-----"},
                "routes": [{
                    "name": "shop/api/0",
                    "matcher": {"path": {"prefix": "/"}},
                    "action": {"forward": {
                        "backends": [{"cluster": "shop/pool", "weight": 1}],
                        "timeoutMs": 1000,
                        "apiKeys": {"source": {"header": "x-api-key"}, "keys": [
                            {"id": "keys/alice", "salt": "0123abcd", "sha256": "feedbeef"}
                        ]}
                    }}
                }]
            }],
            "clusters": [],
            "cachePolicies": [],
            "sources": []
        });
        let mut table: Table = serde_json::from_value(json).expect("table parses");
        let mut pool: crate::snapshot::Cluster = serde_json::from_value(serde_json::json!({
            "name": "shop/pool", "endpoints": [], "loadBalancing": {"algorithm": "roundRobin"},
            "connectTimeoutMs": 1000, "protocol": "http1", "minHealthyPercent": 0, "preferLocalZone": false
        }))
        .expect("cluster parses");
        pool.tls = Some(UpstreamTls {
            sni: Some("backend".into()),
            ca_pem: Some("-----BEGIN CERTIFICATE-----".into()),
            client_certificate: Some(CertificatePair {
                cert_pem: "-----BEGIN CERTIFICATE-----".into(),
                key_pem: "-----BEGIN PRIVATE KEY-----".into(),
            }),
        });
        table.clusters.push(pool);
        let before = serde_json::to_string(&table).unwrap();
        assert!(key_material(&before));

        let redacted = table.redacted();
        let after = serde_json::to_string(&redacted).unwrap();
        assert!(!key_material(&after), "secret material left in {after}");
        assert_eq!(after.matches(REDACTED).count(), 4, "{after}");
        // Everything else is as it was: undoing the four replacements gives the table back.
        let mut restored = redacted.clone();
        restored.virtual_hosts[0].tls = table.virtual_hosts[0].tls.clone();
        if let RouteAction::Forward(f) = &mut restored.virtual_hosts[0].routes[0].action
            && let RouteAction::Forward(orig) = &table.virtual_hosts[0].routes[0].action
        {
            f.api_keys = orig.api_keys.clone();
        }
        restored.clusters[0].tls = table.clusters[0].tls.clone();
        assert_eq!(restored, table);
        // A redacted table is still a table: it has a hash, and it is not the original's.
        let s = Snapshot::new(1, redacted);
        assert_ne!(s.hash, table.content_hash());
    }
}
