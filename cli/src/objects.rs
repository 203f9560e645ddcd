//! Objects as a backup keeps them: what a user wrote (names, labels, annotations, spec,
//! a Secret's type and data), none of what the API server sets.

use std::collections::BTreeSet;

use serde_json::{Map, Value};

/// Annotations not carried over: the API server or kubectl writes them again.
const DROPPED_ANNOTATIONS: [&str; 1] = ["kubectl.kubernetes.io/last-applied-configuration"];

/// The object as the user would apply it.
pub fn clean(obj: &Value) -> Value {
    let mut out = Map::new();
    for key in ["apiVersion", "kind"] {
        if let Some(v) = obj.get(key) {
            out.insert(key.into(), v.clone());
        }
    }
    let meta = obj.get("metadata").cloned().unwrap_or(Value::Null);
    let mut m = Map::new();
    for key in ["name", "namespace", "labels"] {
        if let Some(v) = meta.get(key) {
            m.insert(key.into(), v.clone());
        }
    }
    if let Some(Value::Object(a)) = meta.get("annotations") {
        let kept: Map<String, Value> = a
            .iter()
            .filter(|(k, _)| !DROPPED_ANNOTATIONS.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if !kept.is_empty() {
            m.insert("annotations".into(), Value::Object(kept));
        }
    }
    out.insert("metadata".into(), Value::Object(m));
    // Secrets: their type and data; everything else: its spec. Never status.
    for key in ["spec", "type", "data"] {
        if let Some(v) = obj.get(key) {
            out.insert(key.into(), v.clone());
        }
    }
    Value::Object(out)
}

pub fn name(obj: &Value) -> &str {
    obj.pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("")
}

pub fn namespace(obj: &Value) -> Option<&str> {
    obj.pointer("/metadata/namespace").and_then(Value::as_str)
}

pub fn kind(obj: &Value) -> &str {
    obj.get("kind").and_then(Value::as_str).unwrap_or("")
}

/// `Kind namespace/name`, for messages.
pub fn describe(obj: &Value) -> String {
    match namespace(obj) {
        Some(ns) => format!("{} {ns}/{}", kind(obj), name(obj)),
        None => format!("{} {}", kind(obj), name(obj)),
    }
}

/// The Secrets an object refers to, as (namespace, name): an ApiRoute's `tls.secretName`,
/// `apiKeys.secretRefs`, `localJwks.secretRef` and CA bundles (`caSecretRef` of JWKS,
/// external authorization and client certificates), an UpstreamPool's `caSecretRef` and
/// `clientCertificateSecretRef`, a Gateway listener's `certificateRefs` (which may name
/// another namespace). Found by field name anywhere in the spec, so a field added later
/// under one of these names is not missed.
pub fn secret_refs(obj: &Value, out: &mut BTreeSet<(String, String)>) {
    let Some(ns) = namespace(obj) else { return };
    fn walk(v: &Value, ns: &str, out: &mut BTreeSet<(String, String)>) {
        match v {
            Value::Object(m) => {
                for (k, v) in m {
                    match (k.as_str(), v) {
                        ("secretName", Value::String(s)) => {
                            out.insert((ns.to_string(), s.clone()));
                        }
                        ("caSecretRef" | "clientCertificateSecretRef" | "secretRef", r) => {
                            refer(r, ns, out)
                        }
                        ("secretRefs" | "certificateRefs", Value::Array(refs)) => {
                            for r in refs {
                                refer(r, ns, out);
                            }
                        }
                        _ => walk(v, ns, out),
                    }
                }
            }
            Value::Array(a) => a.iter().for_each(|v| walk(v, ns, out)),
            _ => {}
        }
    }
    fn refer(r: &Value, ns: &str, out: &mut BTreeSet<(String, String)>) {
        // A certificateRef of another kind (not a core Secret) is not a Secret.
        let kind = r.get("kind").and_then(Value::as_str).unwrap_or("Secret");
        let group = r.get("group").and_then(Value::as_str).unwrap_or("");
        if kind != "Secret" || !group.is_empty() {
            return;
        }
        if let Some(name) = r.get("name").and_then(Value::as_str) {
            let ns = r.get("namespace").and_then(Value::as_str).unwrap_or(ns);
            out.insert((ns.to_string(), name.to_string()));
        }
    }
    if let Some(spec) = obj.get("spec") {
        walk(spec, ns, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn server_fields_and_status_are_dropped() {
        let obj = json!({
            "apiVersion": "parapet.dev/v1alpha1", "kind": "ApiRoute",
            "metadata": {
                "name": "api", "namespace": "shop", "uid": "u", "resourceVersion": "7",
                "generation": 3, "creationTimestamp": "2026-01-01T00:00:00Z",
                "managedFields": [{}], "labels": {"team": "a"},
                "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}", "note": "x"}
            },
            "spec": {"hosts": ["a"]},
            "status": {"conditions": []}
        });
        assert_eq!(
            clean(&obj),
            json!({
                "apiVersion": "parapet.dev/v1alpha1", "kind": "ApiRoute",
                "metadata": {"name": "api", "namespace": "shop", "labels": {"team": "a"}, "annotations": {"note": "x"}},
                "spec": {"hosts": ["a"]}
            })
        );
    }

    #[test]
    fn every_secret_reference_is_found() {
        let route = json!({"metadata": {"namespace": "shop"}, "spec": {
            "tls": {"secretName": "shop-cert"},
            "rules": [{"apiKeys": {"secretRefs": [{"name": "keys-a"}, {"name": "keys-b"}]}},
                      {"auth": {"jwt": {"providers": [{"localJwks": {"secretRef": {"name": "jwks"}}},
                                                      {"remoteJwks": {"caSecretRef": {"name": "idp-ca"}}}]},
                                "extAuth": {"caSecretRef": {"name": "authz-ca"}}}}]
        }});
        let pool = json!({"metadata": {"namespace": "shop"}, "spec": {"tls": {
            "caSecretRef": {"name": "ca"}, "clientCertificateSecretRef": {"name": "client"}
        }}});
        let gateway = json!({"metadata": {"namespace": "edge"}, "spec": {"listeners": [{"tls": {"certificateRefs": [
            {"name": "edge-cert"}, {"name": "shared", "namespace": "certs"},
            {"name": "not-a-secret", "kind": "ConfigMap"}
        ]}}]}});
        let mut refs = BTreeSet::new();
        for o in [&route, &pool, &gateway] {
            secret_refs(o, &mut refs);
        }
        let want: BTreeSet<(String, String)> = [
            ("shop", "shop-cert"),
            ("shop", "keys-a"),
            ("shop", "keys-b"),
            ("shop", "jwks"),
            ("shop", "idp-ca"),
            ("shop", "authz-ca"),
            ("shop", "ca"),
            ("shop", "client"),
            ("edge", "edge-cert"),
            ("certs", "shared"),
        ]
        .into_iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
        assert_eq!(refs, want);
    }
}
