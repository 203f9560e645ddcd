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

/// The ApiRoute rule schema as JSON, for looking fields up by path.
fn rule_schema() -> serde_json::Value {
    let (_, yaml) = parapet_crds::crd_yaml()
        .into_iter()
        .find(|(f, _)| f.contains("apiroutes"))
        .expect("the ApiRoute CRD");
    let crd: serde_json::Value = serde_yaml_ng::from_str(&yaml).unwrap();
    crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
        ["rules"]["items"]
        .clone()
}

/// The node at `path` (dot-separated property names; `[]` steps into list items).
fn node<'a>(mut schema: &'a serde_json::Value, path: &str) -> &'a serde_json::Value {
    for step in path.split('.') {
        schema = match step.strip_suffix("[]") {
            Some(name) => &schema["properties"][name]["items"],
            None => &schema["properties"][step],
        };
        assert!(!schema.is_null(), "{path}: no {step}");
    }
    schema
}

fn pattern(schema: &serde_json::Value, path: &str) -> regex::Regex {
    let p = node(schema, path)["pattern"]
        .as_str()
        .unwrap_or_else(|| panic!("{path} has a pattern"));
    regex::Regex::new(p).unwrap()
}

/// The patterns of the fields whose values end up in header lines and Location headers
/// refuse what an attacker would put there.
#[test]
fn filter_patterns_refuse_what_would_break_a_header_or_a_location() {
    let rule = rule_schema();
    for list in ["requestHeaders", "responseHeaders"] {
        for entry in ["set[]", "add[]"] {
            let name = pattern(&rule, &format!("{list}.{entry}.name"));
            let value = pattern(&rule, &format!("{list}.{entry}.value"));
            for ok in ["X-Tenant", "x-b3-traceid", "a!#$%&'*+.^_`|~-z"] {
                assert!(name.is_match(ok), "{ok:?}");
            }
            for bad in [
                "",
                "x y",
                "x:y",
                "x\r\ny",
                "x\ny",
                "caf\u{e9}",
                "(x)",
                "a/b",
            ] {
                assert!(!name.is_match(bad), "{list}.{entry}.name takes {bad:?}");
            }
            for ok in [
                "",
                "bank",
                "a b\tc",
                "max-age=31536000; includeSubDomains",
                "~!",
            ] {
                assert!(value.is_match(ok), "{ok:?}");
            }
            for bad in [
                "a\rb",
                "a\nb",
                "a\r\n\r\nGET / HTTP/1.1",
                "\0",
                "\u{7f}",
                "caf\u{e9}",
            ] {
                assert!(!value.is_match(bad), "{list}.{entry}.value takes {bad:?}");
            }
        }
        let remove = &node(&rule, &format!("{list}.remove"))["items"];
        let remove = regex::Regex::new(remove["pattern"].as_str().unwrap()).unwrap();
        assert!(remove.is_match("Server") && !remove.is_match("a\r\nb"));
    }
    let host = pattern(&rule, "redirect.hostname");
    for ok in ["www.example.com", "example", "10.0.0.1", "a-b.c"] {
        assert!(host.is_match(ok), "{ok:?}");
    }
    for bad in [
        "evil.example/x",
        "user@evil.example",
        "evil.example:80",
        "*.example.com",
        "Example.com",
        "evil.example\r\nx",
        "-a.example",
        "a..b",
        "",
    ] {
        assert!(!host.is_match(bad), "redirect.hostname takes {bad:?}");
    }
}

/// The CEL rules that check paths use one regular expression; it refuses what would turn
/// a redirect into another host's URL or smuggle a query.
#[test]
fn path_rules_refuse_relative_protocol_relative_and_query_paths() {
    let rule = rule_schema();
    let mut regexes = Vec::new();
    for (path, field) in [
        ("rewrite", "fullPath"),
        ("redirect.path", "replaceFullPath"),
        ("redirect.path", "replacePrefixMatch"),
    ] {
        let rules = node(&rule, path)["x-kubernetes-validations"]
            .as_array()
            .unwrap_or_else(|| panic!("{path} has CEL rules"));
        let cel = rules
            .iter()
            .filter_map(|r| r["rule"].as_str())
            .find(|r| r.contains(&format!("self.{field}.matches(")))
            .unwrap_or_else(|| panic!("{path}.{field} has a path rule"));
        let re = cel
            .split_once(".matches(\"")
            .and_then(|(_, rest)| rest.split_once("\")"))
            .map(|(re, _)| re)
            .unwrap();
        regexes.push(regex::Regex::new(re).unwrap());
        let max = node(&rule, &format!("{path}.{field}"))["maxLength"].as_i64();
        assert_eq!(max, Some(1024), "{path}.{field} is bounded (CEL cost)");
    }
    for re in &regexes {
        for ok in [
            "/",
            "/a",
            "/a/",
            "/v2/accounts",
            "/a;v=2",
            "/%2e/x",
            "/~user/@me",
        ] {
            assert!(re.is_match(ok), "{ok:?}");
        }
        // The empty string matches; the fields' minLength of 1 refuses it.
        for bad in [
            "a",
            "//evil.example",
            "/a//b",
            "/\\evil.example",
            "/a?b",
            "/a#b",
            "/a b",
            "/a\r\nb",
            "/caf\u{e9}",
        ] {
            assert!(!re.is_match(bad), "takes {bad:?}");
        }
    }
}

/// Every string and list the new rule fields add has a bound: CEL rules over them are
/// charged by their largest size, and an unbounded one costs more than the API server
/// allows.
#[test]
fn filter_fields_are_bounded() {
    fn walk(path: &str, s: &serde_json::Value, errors: &mut Vec<String>) {
        match s["type"].as_str() {
            Some("string")
                if s["maxLength"].is_null()
                    && s["enum"].is_null()
                    && s["pattern"].as_str().is_none_or(|p| !p.contains("{1,4}")) =>
            {
                errors.push(format!("{path}: a string without maxLength"));
            }
            Some("array") => {
                if s["maxItems"].is_null() {
                    errors.push(format!("{path}: a list without maxItems"));
                }
                walk(&format!("{path}[]"), &s["items"], errors);
            }
            _ => {}
        }
        if let Some(props) = s["properties"].as_object() {
            for (k, v) in props {
                walk(&format!("{path}.{k}"), v, errors);
            }
        }
    }
    let rule = rule_schema();
    let mut errors = Vec::new();
    for field in [
        "requestHeaders",
        "responseHeaders",
        "redirect",
        "mirrors",
        "rewrite",
        "backendTimeout",
        "backends",
    ] {
        walk(field, &rule["properties"][field], &mut errors);
    }
    assert!(errors.is_empty(), "{}", errors.join("\n"));
}
