//! The checked-in CRD YAML is what the types generate, and every schema is structural.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, JSONSchemaProps,
};

fn crd_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

#[test]
fn checked_in_yaml_is_fresh() {
    for (file, yaml) in parapet_crds::crd_yaml() {
        let path = crd_dir().join(&file);
        let on_disk = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{} is missing ({e}); run `make crds`", path.display()));
        assert!(
            on_disk == yaml,
            "{} is stale: run `make crds` and commit the result",
            path.display()
        );
    }
    // The chart carries a copy once it exists.
    let chart = crd_dir().join("../charts/parapet/crds");
    if chart.exists() {
        for (file, yaml) in parapet_crds::crd_yaml() {
            let on_disk = std::fs::read_to_string(chart.join(&file)).unwrap_or_default();
            assert!(
                on_disk == yaml,
                "charts/parapet/crds/{file} is stale: run `make crds`"
            );
        }
    }
}

/// Kubernetes' structural-schema rules that a derive can break: every node has a type (or
/// is an int-or-string / preserve-unknown-fields node), and anyOf/oneOf/allOf carry no types
/// of their own.
fn assert_structural(path: &str, s: &JSONSchemaProps, errors: &mut Vec<String>) {
    let special = s.x_kubernetes_int_or_string == Some(true)
        || s.x_kubernetes_preserve_unknown_fields == Some(true);
    if s.type_.is_none() && !special {
        errors.push(format!("{path}: no type"));
    }
    for (name, list) in [
        ("anyOf", &s.any_of),
        ("oneOf", &s.one_of),
        ("allOf", &s.all_of),
    ] {
        if let Some(list) = list {
            for (i, branch) in list.iter().enumerate() {
                if branch.type_.is_some() || branch.default.is_some() {
                    errors.push(format!(
                        "{path}.{name}[{i}]: a type or default inside {name}"
                    ));
                }
            }
        }
    }
    if s.ref_path.is_some() {
        errors.push(format!("{path}: $ref is not allowed"));
    }
    if let Some(props) = &s.properties {
        for (k, v) in props {
            assert_structural(&format!("{path}.{k}"), v, errors);
        }
    }
    if let Some(items) = &s.items {
        match items {
            k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::JSONSchemaPropsOrArray::Schema(v) => {
                assert_structural(&format!("{path}[]"), v, errors)
            }
            k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::JSONSchemaPropsOrArray::Schemas(vs) => {
                for v in vs {
                    assert_structural(&format!("{path}[]"), v, errors)
                }
            }
        }
    }
    if let Some(k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::JSONSchemaPropsOrBool::Schema(v)) =
        &s.additional_properties
    {
        assert_structural(&format!("{path}{{}}"), v, errors);
    }
}

#[test]
fn yaml_round_trips_and_schemas_are_structural() {
    for (file, yaml) in parapet_crds::crd_yaml() {
        let crd: CustomResourceDefinition =
            serde_yaml_ng::from_str(&yaml).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(crd.spec.group, "parapet.dev");
        assert_eq!(crd.spec.scope, "Namespaced");
        assert_eq!(crd.spec.names.categories, Some(vec!["parapet".to_string()]));
        assert!(
            crd.spec
                .names
                .short_names
                .as_ref()
                .is_some_and(|s| s.len() == 1)
        );
        assert_eq!(crd.spec.versions.len(), 1);
        let v = &crd.spec.versions[0];
        assert_eq!(v.name, "v1alpha1");
        assert!(v.served && v.storage);
        assert!(
            v.subresources
                .as_ref()
                .and_then(|s| s.status.as_ref())
                .is_some(),
            "{file}: status subresource"
        );
        assert!(
            v.additional_printer_columns
                .as_ref()
                .is_some_and(|c| c.len() >= 3),
            "{file}: printer columns"
        );
        let schema = v
            .schema
            .as_ref()
            .and_then(|s| s.open_api_v3_schema.as_ref())
            .expect("schema");
        let mut errors = Vec::new();
        assert_structural("", schema, &mut errors);
        assert!(
            errors.is_empty(),
            "{file} is not structural:\n{}",
            errors.join("\n")
        );
        assert!(
            yaml.contains("x-kubernetes-validations"),
            "{file}: CEL rules present"
        );
    }
}
