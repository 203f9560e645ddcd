//! Multi-document YAML of Parapet resources (plus Secrets), as standalone mode and the
//! examples use them.

use std::collections::BTreeMap;

use base64::Engine;
use serde::{Deserialize, Deserializer};

use crate::{
    api::{ApiRouteSpec, CachePolicySpec, Metadata, Object, UpstreamPoolSpec},
    compiler::Inputs,
};

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("document {doc}: not valid YAML: {source}")]
    Yaml {
        doc: usize,
        source: serde_yaml_ng::Error,
    },
    #[error("document {doc} ({kind} {name:?}): {message}")]
    Invalid {
        doc: usize,
        kind: String,
        name: String,
        message: String,
    },
    #[error(
        "document {doc}: kind {kind:?} is not one of ApiRoute, UpstreamPool, CachePolicy or Secret"
    )]
    UnknownKind { doc: usize, kind: String },
    #[error("document {doc}: apiVersion {api_version:?} is not {expected}")]
    WrongVersion {
        doc: usize,
        api_version: String,
        expected: &'static str,
    },
}

/// The resources of one file.
#[derive(Debug, Default, Clone)]
pub struct Manifest {
    pub routes: Vec<Object<ApiRouteSpec>>,
    pub pools: Vec<Object<UpstreamPoolSpec>>,
    pub cache_policies: Vec<Object<CachePolicySpec>>,
    pub secrets: Vec<Secret>,
}

/// A `v1` Secret: what the compiler reads of it (API keys, certificates).
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Secret {
    #[serde(default)]
    pub metadata: Metadata,
    /// Values in base64, decoded.
    #[serde(default, deserialize_with = "base64_values")]
    pub data: BTreeMap<String, Vec<u8>>,
    /// Values in plain text; they win over `data` for the same key, as the API server does.
    #[serde(default)]
    pub string_data: BTreeMap<String, String>,
}

/// `data`'s values, base64-decoded; a null value is empty.
fn base64_values<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, Vec<u8>>, D::Error> {
    let raw: Option<BTreeMap<String, Option<String>>> = Deserialize::deserialize(d)?;
    raw.unwrap_or_default()
        .into_iter()
        .map(|(k, v)| {
            let v = v.unwrap_or_default();
            base64::engine::general_purpose::STANDARD
                .decode(v)
                .map(|bytes| (k.clone(), bytes))
                .map_err(|e| {
                    serde::de::Error::custom(format!(
                        "data.{k} is not base64 ({e}): encode it, or put the plain value under stringData"
                    ))
                })
        })
        .collect()
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TypeMeta {
    #[serde(default)]
    api_version: String,
    #[serde(default)]
    kind: String,
    #[serde(default)]
    metadata: Option<NameOnly>,
}

#[derive(Deserialize)]
struct NameOnly {
    #[serde(default)]
    name: Option<String>,
}

const PARAPET_API: &str = "parapet.dev/v1alpha1";

impl Manifest {
    /// Parses every document; objects without a namespace go to `default`.
    pub fn parse(yaml: &str) -> Result<Self, ManifestError> {
        let mut m = Manifest::default();
        for (i, doc) in serde_yaml_ng::Deserializer::from_str(yaml).enumerate() {
            let doc_no = i + 1;
            let value =
                serde_yaml_ng::Value::deserialize(doc).map_err(|source| ManifestError::Yaml {
                    doc: doc_no,
                    source,
                })?;
            if value.is_null() {
                continue;
            }
            let tm: TypeMeta =
                serde_yaml_ng::from_value(value.clone()).map_err(|source| ManifestError::Yaml {
                    doc: doc_no,
                    source,
                })?;
            let name = tm.metadata.and_then(|m| m.name).unwrap_or_default();
            let invalid = |e: serde_yaml_ng::Error| ManifestError::Invalid {
                doc: doc_no,
                kind: tm.kind.clone(),
                name: name.clone(),
                message: e.to_string(),
            };
            let expect = |expected: &'static str| {
                if tm.api_version == expected {
                    Ok(())
                } else {
                    Err(ManifestError::WrongVersion {
                        doc: doc_no,
                        api_version: tm.api_version.clone(),
                        expected,
                    })
                }
            };
            match tm.kind.as_str() {
                "ApiRoute" => {
                    expect(PARAPET_API)?;
                    let mut o: Object<ApiRouteSpec> =
                        serde_yaml_ng::from_value(value).map_err(invalid)?;
                    o.metadata.namespace.get_or_insert_with(|| "default".into());
                    m.routes.push(o);
                }
                "UpstreamPool" => {
                    expect(PARAPET_API)?;
                    let mut o: Object<UpstreamPoolSpec> =
                        serde_yaml_ng::from_value(value).map_err(invalid)?;
                    o.metadata.namespace.get_or_insert_with(|| "default".into());
                    m.pools.push(o);
                }
                "CachePolicy" => {
                    expect(PARAPET_API)?;
                    let mut o: Object<CachePolicySpec> =
                        serde_yaml_ng::from_value(value).map_err(invalid)?;
                    o.metadata.namespace.get_or_insert_with(|| "default".into());
                    m.cache_policies.push(o);
                }
                "Secret" => {
                    expect("v1")?;
                    let mut o: Secret = serde_yaml_ng::from_value(value).map_err(invalid)?;
                    o.metadata.namespace.get_or_insert_with(|| "default".into());
                    m.secrets.push(o);
                }
                other => {
                    return Err(ManifestError::UnknownKind {
                        doc: doc_no,
                        kind: other.to_string(),
                    });
                }
            }
        }
        Ok(m)
    }

    /// Compiler inputs that borrow from this manifest. Standalone pools use `static`
    /// endpoints, so no Service endpoints are given.
    pub fn inputs(&self) -> Inputs<'_> {
        let mut secrets = BTreeMap::new();
        for s in &self.secrets {
            let mut data = s.data.clone();
            for (k, v) in &s.string_data {
                data.insert(k.clone(), v.clone().into_bytes());
            }
            secrets.insert(
                (
                    s.metadata.namespace.clone().unwrap_or_default(),
                    s.metadata.name.clone().unwrap_or_default(),
                ),
                data,
            );
        }
        Inputs {
            routes: self.routes.iter().collect(),
            pools: self.pools.iter().collect(),
            cache_policies: self.cache_policies.iter().collect(),
            secrets,
            ..Inputs::default()
        }
    }
}
