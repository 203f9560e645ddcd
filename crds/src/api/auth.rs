#[cfg(feature = "kube")]
use kube::{CustomResource, KubeSchema};
#[cfg(not(feature = "kube"))]
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[cfg(feature = "kube")]
use super::CommonStatus;
use super::{ApiKeyAuth, ExtAuth, IpRules, JwtAuth, RouteAuth};

/// Who may call the Gateway API rules that name this policy in an `ExtensionRef` filter
/// (`group: parapet.dev, kind: AuthPolicy`): the same checks an ApiRoute rule's `auth`
/// holds, run in the same order.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "kube", derive(CustomResource, KubeSchema))]
#[cfg_attr(not(feature = "kube"), derive(JsonSchema))]
#[cfg_attr(
    feature = "kube",
    kube(
        group = "parapet.dev",
        version = "v1alpha1",
        kind = "AuthPolicy",
        namespaced,
        status = "CommonStatus",
        shortname = "authp",
        category = "parapet",
        printcolumn = r#"{"name":"Accepted","type":"string","jsonPath":".status.conditions[?(@.type==\"Accepted\")].status"}"#,
        printcolumn = r#"{"name":"ResolvedRefs","type":"string","jsonPath":".status.conditions[?(@.type==\"ResolvedRefs\")].status","priority":1}"#,
        printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
    )
)]
#[cfg_attr(feature = "kube", x_kube(validation = Rule::new("has(self.apiKeys) || has(self.jwt) || has(self.extAuth) || has(self.ipRules)").message("an AuthPolicy needs at least one of apiKeys, jwt, extAuth, ipRules")))]
#[serde(rename_all = "camelCase")]
pub struct AuthPolicySpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_keys: Option<ApiKeyAuth>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt: Option<JwtAuth>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ext_auth: Option<ExtAuth>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_rules: Option<IpRules>,
}

impl AuthPolicySpec {
    /// The checks as an ApiRoute rule's `auth` holds them, for the one compiler of both.
    pub fn as_route_auth(&self) -> RouteAuth {
        RouteAuth {
            api_keys: self.api_keys.clone(),
            jwt: self.jwt.clone(),
            ext_auth: self.ext_auth.clone(),
            ip_rules: self.ip_rules.clone(),
        }
    }

    /// The names of the Secrets the policy refers to (in its own namespace).
    pub fn secret_names(&self) -> impl Iterator<Item = &str> {
        super::route::auth_secret_names(
            self.api_keys.as_ref(),
            self.jwt.as_ref(),
            self.ext_auth.as_ref(),
        )
    }
}
