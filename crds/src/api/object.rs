//! Objects as the compiler reads them: metadata and spec, in plain serde types.
//!
//! The same types with and without the `kube` feature, so the data plane (which parses
//! files and compiles without linking the Kubernetes client) and the operator (which reads
//! its watched objects into them) hand the compiler one input type. With the feature, the
//! custom resource types convert into them.

use serde::{Deserialize, Serialize};

/// An `ApiRoute`, `UpstreamPool` or `CachePolicy` as read from a file or the API server:
/// `apiVersion`, `kind` and `status` are not kept.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Object<S> {
    #[serde(default)]
    pub metadata: Metadata,
    pub spec: S,
}

/// The part of an object's metadata the compiler reads; other fields are ignored.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Metadata {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<i64>,
    /// RFC 3339 in UTC at second precision, as the API server writes it, so it sorts
    /// correctly as text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creation_timestamp: Option<String>,
}

impl Metadata {
    /// The namespace, `default` when unset (a file may leave it out).
    pub fn namespace(&self) -> &str {
        self.namespace.as_deref().unwrap_or("default")
    }

    /// The name, empty when unset.
    pub fn name(&self) -> &str {
        self.name.as_deref().unwrap_or("")
    }
}

/// The custom resource types as the compiler reads them.
#[cfg(feature = "kube")]
mod from_custom_resources {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    use super::{Metadata, Object};
    use crate::api::{
        ApiRoute, ApiRouteSpec, CachePolicy, CachePolicySpec, UpstreamPool, UpstreamPoolSpec,
    };

    impl From<&ObjectMeta> for Metadata {
        fn from(m: &ObjectMeta) -> Self {
            Self {
                name: m.name.clone(),
                namespace: m.namespace.clone(),
                generation: m.generation,
                // Written as the API server writes it: RFC 3339 in UTC.
                creation_timestamp: m.creation_timestamp.as_ref().map(|t| t.0.to_string()),
            }
        }
    }

    impl From<ApiRoute> for Object<ApiRouteSpec> {
        fn from(o: ApiRoute) -> Self {
            Self {
                metadata: (&o.metadata).into(),
                spec: o.spec,
            }
        }
    }

    impl From<UpstreamPool> for Object<UpstreamPoolSpec> {
        fn from(o: UpstreamPool) -> Self {
            Self {
                metadata: (&o.metadata).into(),
                spec: o.spec,
            }
        }
    }

    impl From<CachePolicy> for Object<CachePolicySpec> {
        fn from(o: CachePolicy) -> Self {
            Self {
                metadata: (&o.metadata).into(),
                spec: o.spec,
            }
        }
    }
}

#[cfg(all(test, feature = "kube"))]
mod tests {
    use serde_json::json;

    use super::Object;
    use crate::api::{ApiRoute, ApiRouteSpec};

    /// Converting a custom resource gives what reading its JSON directly gives, so the
    /// operator and the data plane hand the compiler the same thing.
    #[test]
    fn a_custom_resource_converts_to_the_object_its_json_reads_as() {
        let json = json!({
            "apiVersion": "parapet.dev/v1alpha1",
            "kind": "ApiRoute",
            "metadata": {
                "name": "r", "namespace": "bank", "generation": 3,
                "creationTimestamp": "2026-01-02T03:04:05Z",
                "labels": {"team": "payments"}, "resourceVersion": "42",
            },
            "spec": {"hosts": ["a.example"], "rules": [{"backends": [{"pool": "web"}]}]},
            "status": {"conditions": []},
        });
        let typed: ApiRoute = serde_json::from_value(json.clone()).unwrap();
        let direct: Object<ApiRouteSpec> = serde_json::from_value(json).unwrap();
        assert_eq!(Object::from(typed), direct);
        assert_eq!(
            direct.metadata.creation_timestamp.as_deref(),
            Some("2026-01-02T03:04:05Z")
        );
    }
}
