//! CRD acceptance: the Parapet CRDs on a real kube-apiserver. They install and become
//! Established (structural schemas, CEL rules that compile), kubectl can list and explain
//! them, every validation rule rejects a bad object with its own message, the examples are
//! accepted as written, the status subresource behaves, and the printer columns show what
//! they promise. Each test works in a namespace of its own.

use std::collections::BTreeSet;

use anyhow::{Context as _, Result, anyhow, ensure};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::{
    Api, Client,
    api::{
        ApiResource, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams, PostParams,
    },
};
use parapet_crds::api::{ApiRoute, CachePolicy, UpstreamPool};
use parapet_e2e::{
    TestNamespace, api_message, apply_crds, client, kubectl, kubectl_ok, load_crds, parse_table,
    repo_root, yaml_documents,
};
use serde_json::{Value, json};

const GROUP: &str = "parapet.dev";
const VERSION: &str = "v1alpha1";
const KINDS: [(&str, &str); 4] = [
    ("ApiRoute", "apiroutes"),
    ("UpstreamPool", "upstreampools"),
    ("CachePolicy", "cachepolicies"),
    ("AuthPolicy", "authpolicies"),
];

/// A client, the CRDs installed and Established, and a fresh namespace.
async fn setup(test: &str) -> Result<(Client, TestNamespace)> {
    let client = client().await?;
    apply_crds(&client).await?;
    let ns = TestNamespace::new(&client, test).await?;
    Ok((client, ns))
}

fn resource(kind: &str) -> ApiResource {
    let plural = KINDS
        .iter()
        .find(|(k, _)| *k == kind)
        .map(|(_, p)| *p)
        .unwrap_or_else(|| panic!("unknown kind {kind}"));
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(GROUP, VERSION, kind), plural)
}

fn dynamic_api(client: &Client, ns: &TestNamespace, kind: &str) -> Api<DynamicObject> {
    Api::namespaced_with(client.clone(), ns.name(), &resource(kind))
}

fn object(kind: &str, name: &str, spec: Value) -> Value {
    json!({
        "apiVersion": format!("{GROUP}/{VERSION}"),
        "kind": kind,
        "metadata": {"name": name},
        "spec": spec,
    })
}

/// Creates an object from JSON; `Err` carries the API server's message.
async fn create(client: &Client, ns: &TestNamespace, obj: &Value) -> Result<DynamicObject, String> {
    let kind = obj["kind"].as_str().expect("objects have a kind");
    let dynamic: DynamicObject = serde_json::from_value(obj.clone()).map_err(|e| e.to_string())?;
    dynamic_api(client, ns, kind)
        .create(&PostParams::default(), &dynamic)
        .await
        .map_err(|e| api_message(&e))
}

/// RFC 7386 JSON merge patch: objects merge, `null` deletes, everything else replaces.
fn merge(base: &Value, patch: &Value) -> Value {
    match (base, patch) {
        (Value::Object(b), Value::Object(p)) => {
            let mut out = b.clone();
            for (k, v) in p {
                if v.is_null() {
                    out.remove(k);
                } else {
                    let merged = merge(b.get(k).unwrap_or(&Value::Null), v);
                    out.insert(k.clone(), merged);
                }
            }
            Value::Object(out)
        }
        (_, p) => p.clone(),
    }
}

fn base_spec(kind: &str) -> Value {
    match kind {
        "ApiRoute" => json!({
            "hosts": ["api.bank.example"],
            "rules": [{"backends": [{"pool": "accounts"}]}],
        }),
        "UpstreamPool" => json!({"service": {"name": "accounts", "port": 80}}),
        "CachePolicy" => json!({"mode": "Auto"}),
        "AuthPolicy" => json!({"ipRules": {"deny": ["192.0.2.0/24"]}}),
        other => panic!("unknown kind {other}"),
    }
}

/// A rule (an ApiRoute rule with one backend) plus `extra` fields.
fn rule(extra: Value) -> Value {
    merge(&json!({"backends": [{"pool": "accounts"}]}), &extra)
}

fn condition(type_: &str, status: &str, reason: &str) -> Value {
    json!({
        "type": type_,
        "status": status,
        "reason": reason,
        "message": format!("{type_} is {status}"),
        "lastTransitionTime": "2026-01-01T00:00:00Z",
        "observedGeneration": 1,
    })
}

// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn crds_install_and_become_established() -> Result<()> {
    let client = client().await?;
    let established = apply_crds(&client).await?;
    let names: BTreeSet<_> = established
        .iter()
        .filter_map(|c| c.metadata.name.clone())
        .collect();
    let expected: BTreeSet<_> = KINDS
        .iter()
        .map(|(_, plural)| format!("{plural}.{GROUP}"))
        .collect();
    assert_eq!(names, expected);

    for crd in &established {
        let name = crd.metadata.name.as_deref().unwrap_or_default();
        let status = crd
            .status
            .as_ref()
            .context("an Established CRD has a status")?;
        let conditions = status.conditions.clone().unwrap_or_default();
        for wanted in ["NamesAccepted", "Established"] {
            assert!(
                conditions
                    .iter()
                    .any(|c| c.type_ == wanted && c.status == "True"),
                "{name}: condition {wanted} is not True: {conditions:?}"
            );
        }
        // A non-structural schema would be reported here (and CEL would not run at all).
        let bad: Vec<_> = conditions
            .iter()
            .filter(|c| c.type_ == "NonStructuralSchema" || c.type_ == "Terminating")
            .collect();
        assert!(bad.is_empty(), "{name}: {bad:?}");
        let accepted = status.accepted_names.as_ref().context("accepted names")?;
        assert_eq!(
            accepted.categories.as_deref(),
            Some(&["parapet".to_string()][..]),
            "{name}"
        );
        assert_eq!(
            accepted.short_names.as_ref().map(Vec::len),
            Some(1),
            "{name}"
        );
        assert_eq!(
            status.stored_versions.as_deref(),
            Some(&[VERSION.to_string()][..]),
            "{name}"
        );
    }

    // Applying again is a no-op, not a conflict.
    apply_crds(&client).await?;
    Ok(())
}

/// What users (and Helm) do: kubectl reads the CRD files, as YAML 1.1.
#[tokio::test]
async fn crds_install_with_kubectl_apply() -> Result<()> {
    let crds = repo_root().join("crds");
    let out = kubectl(&[
        "apply",
        "--server-side",
        "--force-conflicts",
        "--dry-run=server",
        "--field-manager=parapet-e2e",
        "-f",
        crds.to_str().context("repository path is UTF-8")?,
    ])
    .await?;
    assert!(
        out.success(),
        "`kubectl apply -f crds/` is rejected by the API server:\n{}",
        out.stderr.trim()
    );
    for (_, plural) in KINDS {
        assert!(
            out.stdout.contains(&format!("{plural}.{GROUP}")),
            "{plural} missing from kubectl's output:\n{}",
            out.stdout
        );
    }
    Ok(())
}

/// kubectl, Helm and the API server read YAML 1.1, where the keys `on`, `off`, `yes`, `no`,
/// `y` and `n` are booleans. A field of that name written unquoted silently becomes `true`.
#[test]
fn manifests_have_no_yaml_1_1_boolean_keys() -> Result<()> {
    let mut files = parapet_e2e::crd_files()?;
    files.push(repo_root().join("examples/banking.yaml"));
    files.push(repo_root().join("examples/standalone.yaml"));
    files.push(repo_root().join("examples/filters.yaml"));
    let boolean_words = [
        "y", "Y", "yes", "Yes", "YES", "n", "N", "no", "No", "NO", "on", "On", "ON", "off", "Off",
        "OFF",
    ];
    let mut found = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file)?;
        for (i, line) in text.lines().enumerate() {
            let key = line.trim_start().trim_start_matches("- ");
            if let Some((k, _)) = key.split_once(':')
                && boolean_words.contains(&k.trim())
            {
                found.push(format!(
                    "{}:{}: key `{}` is read as a boolean by kubectl/Helm",
                    file.strip_prefix(repo_root()).unwrap_or(file).display(),
                    i + 1,
                    k.trim()
                ));
            }
        }
    }
    assert!(found.is_empty(), "{}", found.join("\n"));
    Ok(())
}

#[tokio::test]
async fn kubectl_lists_and_explains_the_resources() -> Result<()> {
    let (client, ns) = setup("kubectl-get-explain").await?;

    let out = kubectl(&["get", "ar,up,cp,authp", "-n", ns.name()]).await?;
    assert!(
        out.success(),
        "kubectl get ar,up,cp,authp failed: {}",
        out.stderr
    );
    assert!(
        out.stderr.contains("No resources found"),
        "expected an empty listing, got stdout {:?} stderr {:?}",
        out.stdout,
        out.stderr
    );

    for kind in ["ApiRoute", "UpstreamPool", "CachePolicy", "AuthPolicy"] {
        create(&client, &ns, &object(kind, "one", base_spec(kind)))
            .await
            .map_err(|e| anyhow!("creating a valid {kind}: {e}"))?;
    }
    let names = kubectl_ok(&["get", "ar,up,cp,authp", "-n", ns.name(), "-o", "name"]).await?;
    let names: BTreeSet<&str> = names.lines().collect();
    assert_eq!(
        names,
        BTreeSet::from([
            "apiroute.parapet.dev/one",
            "upstreampool.parapet.dev/one",
            "cachepolicy.parapet.dev/one",
            "authpolicy.parapet.dev/one",
        ])
    );
    // The category lists all four.
    let by_category = kubectl_ok(&["get", "parapet", "-n", ns.name(), "-o", "name"]).await?;
    assert_eq!(by_category.lines().collect::<BTreeSet<_>>(), names);

    let resources = kubectl_ok(&["api-resources", "--api-group", GROUP, "-o", "wide"]).await?;
    let rows = parse_table(&resources);
    for (short, kind) in [
        ("ar", "ApiRoute"),
        ("up", "UpstreamPool"),
        ("cp", "CachePolicy"),
        ("authp", "AuthPolicy"),
    ] {
        let row = rows
            .iter()
            .find(|r| r.iter().any(|(h, v)| h == "KIND" && v == kind))
            .with_context(|| format!("{kind} missing from kubectl api-resources:\n{resources}"))?;
        let cell = |h: &str| row.iter().find(|(k, _)| k == h).map(|(_, v)| v.as_str());
        assert_eq!(cell("SHORTNAMES"), Some(short), "{resources}");
        assert_eq!(cell("NAMESPACED"), Some("true"), "{resources}");
        assert_eq!(cell("CATEGORIES"), Some("parapet"), "{resources}");
    }

    let explain = kubectl_ok(&["explain", "apiroute.spec"]).await?;
    for field in ["hosts", "rules", "tls", "Host names this route serves"] {
        assert!(
            explain.contains(field),
            "explain apiroute.spec lacks {field:?}:\n{explain}"
        );
    }
    let explain = kubectl_ok(&["explain", "apiroute.spec.rules.backends"]).await?;
    assert!(
        explain.contains("pool") && explain.contains("-required-") && explain.contains("weight"),
        "explain apiroute.spec.rules.backends:\n{explain}"
    );
    let explain = kubectl_ok(&["explain", "apiroute.spec.rules", "--recursive"]).await?;
    for field in [
        "redirect",
        "replacePrefixMatch",
        "requestHeaders",
        "responseHeaders",
        "remove",
        "mirrors",
        "percent",
        "backendTimeout",
        "fullPath",
    ] {
        assert!(
            explain.contains(field),
            "explain apiroute.spec.rules lacks {field}:\n{explain}"
        );
    }
    let explain = kubectl_ok(&["explain", "upstreampool.spec.loadBalancing.algorithm"]).await?;
    for value in ["RoundRobin", "LeastRequest", "RingHash", "Maglev", "Random"] {
        assert!(
            explain.contains(value),
            "explain algorithm lacks {value}:\n{explain}"
        );
    }
    let explain = kubectl_ok(&["explain", "cachepolicy.spec", "--recursive"]).await?;
    for field in [
        "mode",
        "ttl",
        "staleWhileRevalidate",
        "cacheAuthorized",
        "headers",
    ] {
        assert!(
            explain.contains(field),
            "explain cachepolicy.spec lacks {field}:\n{explain}"
        );
    }
    Ok(())
}

/// One object that must be rejected: `patch` (a JSON merge patch) applied to the kind's
/// valid base object, and the fragments the API server's message must contain.
struct Reject {
    what: &'static str,
    kind: &'static str,
    patch: Value,
    expect: &'static [&'static str],
}

fn reject(
    what: &'static str,
    kind: &'static str,
    patch: Value,
    expect: &'static [&'static str],
) -> Reject {
    Reject {
        what,
        kind,
        patch,
        expect,
    }
}

fn rejections() -> Vec<Reject> {
    vec![
        // --- ApiRoute: schema
        reject(
            "ApiRoute without rules",
            "ApiRoute",
            json!({"spec": {"rules": null}}),
            &["spec.rules: Required value"],
        ),
        reject(
            "ApiRoute without hosts",
            "ApiRoute",
            json!({"spec": {"hosts": null}}),
            &["spec.hosts: Required value"],
        ),
        reject(
            "ApiRoute with an empty host list",
            "ApiRoute",
            json!({"spec": {"hosts": []}}),
            &["spec.hosts", "should have at least 1 items"],
        ),
        reject(
            "rule without backends or a redirect",
            "ApiRoute",
            json!({"spec": {"rules": [{"name": "no-backends"}]}}),
            &["spec.rules[0]", "a rule needs backends or a redirect"],
        ),
        reject(
            "rule with an empty backend list",
            "ApiRoute",
            json!({"spec": {"rules": [{"backends": []}]}}),
            &["a rule needs backends or a redirect"],
        ),
        // --- ApiRoute: who may call
        reject(
            "ipRules with no range",
            "ApiRoute",
            json!({"spec": {"ipRules": {}}}),
            &["ipRules needs at least one allow or deny range"],
        ),
        reject(
            "ipRules allowing a host name",
            "ApiRoute",
            json!({"spec": {"rules": [rule(json!({"auth": {"ipRules": {"allow": ["10.0.0.0/8", "office.example"]}}}))]}}),
            &["ipRules.allow holds CIDRs (10.0.0.0/8) or addresses only"],
        ),
        reject(
            "ipRules denying a bad prefix length",
            "ApiRoute",
            json!({"spec": {"ipRules": {"deny": ["10.0.0.0/33"]}}}),
            &["ipRules.deny holds CIDRs (10.0.0.0/8) or addresses only"],
        ),
        reject(
            "two JWT providers with one name",
            "ApiRoute",
            json!({"spec": {"rules": [rule(json!({"auth": {"jwt": {"providers": [
                {"name": "idp", "issuer": "https://a.example", "localJwks": {"secretRef": {"name": "k"}}},
                {"name": "idp", "issuer": "https://b.example", "localJwks": {"secretRef": {"name": "k"}}}]}}}))]}}),
            &["jwt provider names must be unique"],
        ),
        reject(
            "two JWT providers with one issuer",
            "ApiRoute",
            json!({"spec": {"rules": [rule(json!({"auth": {"jwt": {"providers": [
                {"name": "a", "issuer": "https://idp.example", "localJwks": {"secretRef": {"name": "k"}}},
                {"name": "b", "issuer": "https://idp.example", "localJwks": {"secretRef": {"name": "k"}}}]}}}))]}}),
            &["jwt provider issuers must be unique"],
        ),
        reject(
            "a JWT provider with two key sources",
            "ApiRoute",
            json!({"spec": {"rules": [rule(json!({"auth": {"jwt": {"providers": [
                {"name": "a", "issuer": "https://idp.example", "localJwks": {"secretRef": {"name": "k"}},
                 "remoteJwks": {"uri": "https://idp.example/jwks"}}]}}}))]}}),
            &["a jwt provider takes its keys from remoteJwks or localJwks: exactly one"],
        ),
        reject(
            "a JWKS over plain http to another host",
            "ApiRoute",
            json!({"spec": {"rules": [rule(json!({"auth": {"jwt": {"providers": [
                {"name": "a", "issuer": "https://idp.example", "remoteJwks": {"uri": "http://idp.example/jwks"}}]}}}))]}}),
            &["remoteJwks.uri must be https:// (plain http only to localhost)"],
        ),
        reject(
            "a token location naming a header and a cookie",
            "ApiRoute",
            json!({"spec": {"rules": [rule(json!({"auth": {"jwt": {"providers": [
                {"name": "a", "issuer": "https://idp.example", "localJwks": {"secretRef": {"name": "k"}},
                 "extractFrom": [{"header": "x-token", "cookie": "session"}]}]}}}))]}}),
            &["extractFrom entries name exactly one of header, cookie, queryParam"],
        ),
        reject(
            "an unsupported JWT algorithm",
            "ApiRoute",
            json!({"spec": {"rules": [rule(json!({"auth": {"jwt": {"providers": [
                {"name": "a", "issuer": "https://idp.example", "localJwks": {"secretRef": {"name": "k"}},
                 "algorithms": ["HS256"]}]}}}))]}}),
            &["Unsupported value: \"HS256\""],
        ),
        reject(
            "external authorization at a non-HTTP URL",
            "ApiRoute",
            json!({"spec": {"rules": [rule(json!({"auth": {"extAuth": {"url": "grpc://authz:9000"}}}))]}}),
            &["extAuth.url must be an http:// or https:// URL"],
        ),
        reject(
            "17 backends",
            "ApiRoute",
            json!({"spec": {"rules": [{"backends": (0..17).map(|i| json!({"pool": format!("p{i}")})).collect::<Vec<_>>()}]}}),
            &["spec.rules[0].backends", "must have at most 16 items"],
        ),
        reject(
            "header value with CR/LF",
            "ApiRoute",
            json!({"spec": {"rules": [rule(json!({"requestHeaders": {"set": [{"name": "x-a", "value": "a\r\nx-injected: 1"}]}}))]}}),
            &["spec.rules[0].requestHeaders.set[0].value", "should match"],
        ),
        reject(
            "header name with a space",
            "ApiRoute",
            json!({"spec": {"rules": [rule(json!({"responseHeaders": {"add": [{"name": "x a", "value": "1"}]}}))]}}),
            &["spec.rules[0].responseHeaders.add[0].name", "should match"],
        ),
        reject(
            "header name with a colon in remove",
            "ApiRoute",
            json!({"spec": {"rules": [rule(json!({"requestHeaders": {"remove": ["x:y"]}}))]}}),
            &["spec.rules[0].requestHeaders.remove[0]", "should match"],
        ),
        reject(
            "17 headers to set",
            "ApiRoute",
            json!({"spec": {"rules": [rule(json!({"requestHeaders": {"set": (0..17).map(|i| json!({"name": format!("x-{i}"), "value": "v"})).collect::<Vec<_>>()}}))]}}),
            &[
                "spec.rules[0].requestHeaders.set",
                "must have at most 16 items",
            ],
        ),
        reject(
            "the same header set twice",
            "ApiRoute",
            json!({"spec": {"rules": [rule(json!({"requestHeaders": {"set": [{"name": "x-a", "value": "1"}, {"name": "x-a", "value": "2"}]}}))]}}),
            &["spec.rules[0].requestHeaders.set[1]", "Duplicate value"],
        ),
        reject(
            "Transfer-Encoding set",
            "ApiRoute",
            json!({"spec": {"rules": [rule(json!({"requestHeaders": {"set": [{"name": "Transfer-Encoding", "value": "chunked"}]}}))]}}),
            &[
                "spec.rules[0].requestHeaders.set[0]",
                "connection, transfer-encoding, content-length, host, te, upgrade, keep-alive and proxy-connection belong to the proxy and cannot be set or added",
            ],
        ),
        reject(
            "Host added to a response",
            "ApiRoute",
            json!({"spec": {"rules": [rule(json!({"responseHeaders": {"add": [{"name": "HOST", "value": "x"}]}}))]}}),
            &["belong to the proxy and cannot be set or added"],
        ),
        reject(
            "Connection removed",
            "ApiRoute",
            json!({"spec": {"rules": [rule(json!({"responseHeaders": {"remove": ["x-ok", "Connection"]}}))]}}),
            &[
                "spec.rules[0].responseHeaders.remove",
                "connection, transfer-encoding, content-length, host, te, upgrade, keep-alive and proxy-connection belong to the proxy and cannot be removed",
            ],
        ),
        reject(
            "rule with backends and a redirect",
            "ApiRoute",
            json!({"spec": {"rules": [rule(json!({"redirect": {"scheme": "https"}}))]}}),
            &[
                "spec.rules[0]",
                "a rule takes backends or a redirect, not both",
            ],
        ),
        reject(
            "redirect with mirrors and a rewrite",
            "ApiRoute",
            json!({"spec": {"rules": [{"redirect": {"scheme": "https"}, "rewrite": {"fullPath": "/x"}, "mirrors": [{"backend": "shadow"}]}]}}),
            &[
                "spec.rules[0]",
                "a redirect rule forwards nothing: remove rewrite, mirrors, requestHeaders, responseHeaders and backendTimeout",
            ],
        ),
        reject(
            "redirect hostname with a path",
            "ApiRoute",
            json!({"spec": {"rules": [{"redirect": {"hostname": "evil.example/x"}}]}}),
            &["spec.rules[0].redirect.hostname", "should match"],
        ),
        reject(
            "redirect hostname with a user",
            "ApiRoute",
            json!({"spec": {"rules": [{"redirect": {"hostname": "user@evil.example"}}]}}),
            &["spec.rules[0].redirect.hostname", "should match"],
        ),
        reject(
            "redirect scheme ftp",
            "ApiRoute",
            json!({"spec": {"rules": [{"redirect": {"scheme": "ftp"}}]}}),
            &[
                "spec.rules[0].redirect.scheme",
                "Unsupported value: \"ftp\"",
            ],
        ),
        reject(
            "redirect port 0",
            "ApiRoute",
            json!({"spec": {"rules": [{"redirect": {"port": 0}}]}}),
            &[
                "spec.rules[0].redirect.port",
                "should be greater than or equal to 1",
            ],
        ),
        reject(
            "redirect port 65536",
            "ApiRoute",
            json!({"spec": {"rules": [{"redirect": {"port": 65536}}]}}),
            &[
                "spec.rules[0].redirect.port",
                "should be less than or equal to 65535",
            ],
        ),
        reject(
            "redirect status 200",
            "ApiRoute",
            json!({"spec": {"rules": [{"redirect": {"statusCode": 200}}]}}),
            &[
                "spec.rules[0].redirect",
                "redirect.statusCode must be 301, 302, 303, 307 or 308",
            ],
        ),
        reject(
            "redirect path with both replacements",
            "ApiRoute",
            json!({"spec": {"rules": [{"redirect": {"path": {"replaceFullPath": "/a", "replacePrefixMatch": "/b"}}}]}}),
            &[
                "spec.rules[0].redirect.path",
                "redirect.path takes exactly one of replaceFullPath or replacePrefixMatch",
            ],
        ),
        reject(
            "redirect to a protocol-relative path",
            "ApiRoute",
            json!({"spec": {"rules": [{"redirect": {"path": {"replaceFullPath": "//evil.example/"}}}]}}),
            &[
                "spec.rules[0].redirect.path",
                "redirect.path.replaceFullPath must start with / and hold only URL path characters: no '?', '#', '//', '\\', spaces or control characters",
            ],
        ),
        reject(
            "redirect prefix with a query",
            "ApiRoute",
            json!({"spec": {"rules": [{"redirect": {"path": {"replacePrefixMatch": "/new?x=1"}}}]}}),
            &[
                "spec.rules[0].redirect.path",
                "redirect.path.replacePrefixMatch must start with / and hold only URL path characters: no '?', '#', '//', '\\', spaces or control characters",
            ],
        ),
        reject(
            "rewrite with pathPrefix and fullPath",
            "ApiRoute",
            json!({"spec": {"rules": [rule(json!({"rewrite": {"pathPrefix": "/a", "fullPath": "/b"}}))]}}),
            &[
                "spec.rules[0].rewrite",
                "rewrite takes pathPrefix or fullPath, not both",
            ],
        ),
        reject(
            "rewrite fullPath without a leading /",
            "ApiRoute",
            json!({"spec": {"rules": [rule(json!({"rewrite": {"fullPath": "v2#x"}}))]}}),
            &[
                "spec.rules[0].rewrite",
                "rewrite.fullPath must start with / and hold only URL path characters: no '?', '#', '//', '\\', spaces or control characters",
            ],
        ),
        reject(
            "five mirrors",
            "ApiRoute",
            json!({"spec": {"rules": [rule(json!({"mirrors": (0..5).map(|i| json!({"backend": format!("m{i}")})).collect::<Vec<_>>()}))]}}),
            &["spec.rules[0].mirrors", "must have at most 4 items"],
        ),
        reject(
            "mirror percent 101",
            "ApiRoute",
            json!({"spec": {"rules": [rule(json!({"mirrors": [{"backend": "shadow", "percent": 101}]}))]}}),
            &[
                "spec.rules[0].mirrors[0].percent",
                "should be less than or equal to 100",
            ],
        ),
        reject(
            "backendTimeout 0s",
            "ApiRoute",
            json!({"spec": {"rules": [rule(json!({"backendTimeout": "0s"}))]}}),
            &["spec.rules[0]", "backendTimeout must be above 0s"],
        ),
        reject(
            "bad host name",
            "ApiRoute",
            json!({"spec": {"hosts": ["Bad_Host.example"]}}),
            &["spec.hosts[0]", "should match"],
        ),
        reject(
            "wildcard in the middle of a host",
            "ApiRoute",
            json!({"spec": {"hosts": ["api.*.example"]}}),
            &["spec.hosts[0]", "should match"],
        ),
        reject(
            "h2c allowed as an upgrade",
            "ApiRoute",
            json!({"spec": {"rules": [rule(json!({"upgrades": ["websocket", "H2c"]}))]}}),
            &["spec.rules[0].upgrades[1]", "should match"],
        ),
        reject(
            "timeout \"5 seconds\"",
            "ApiRoute",
            json!({"spec": {"rules": [rule(json!({"timeout": "5 seconds"}))]}}),
            &[
                "spec.rules[0].timeout",
                "should match '^([0-9]{1,5}(h|m|s|ms)){1,4}$'",
            ],
        ),
        reject(
            "timeout \"1.5s\"",
            "ApiRoute",
            json!({"spec": {"rules": [rule(json!({"timeout": "1.5s"}))]}}),
            &[
                "spec.rules[0].timeout",
                "should match '^([0-9]{1,5}(h|m|s|ms)){1,4}$'",
            ],
        ),
        reject(
            "unknown method",
            "ApiRoute",
            json!({"spec": {"rules": [rule(json!({"matches": [{"methods": ["FETCH"]}]}))]}}),
            &[
                "spec.rules[0].matches[0].methods[0]",
                "Unsupported value: \"FETCH\"",
            ],
        ),
        reject(
            "retries attempts 11",
            "ApiRoute",
            json!({"spec": {"rules": [rule(json!({"retries": {"attempts": 11}}))]}}),
            &[
                "spec.rules[0].retries.attempts",
                "should be less than or equal to 10",
            ],
        ),
        reject(
            "hedge percentile 100",
            "ApiRoute",
            json!({"spec": {"rules": [rule(json!({"hedge": {"percentile": 100}}))]}}),
            &[
                "spec.rules[0].hedge.percentile",
                "should be less than or equal to 99",
            ],
        ),
        reject(
            "hedge percentile 49",
            "ApiRoute",
            json!({"spec": {"rules": [rule(json!({"hedge": {"percentile": 49}}))]}}),
            &[
                "spec.rules[0].hedge.percentile",
                "should be greater than or equal to 50",
            ],
        ),
        reject(
            "hedge maxExtraAttempts 4",
            "ApiRoute",
            json!({"spec": {"rules": [rule(json!({"hedge": {"delay": "50ms", "maxExtraAttempts": 4}}))]}}),
            &[
                "spec.rules[0].hedge.maxExtraAttempts",
                "should be less than or equal to 3",
            ],
        ),
        reject(
            "lanes maxInFlight 0",
            "ApiRoute",
            json!({"spec": {"rules": [rule(json!({"lanes": {"maxInFlight": 0}}))]}}),
            &[
                "spec.rules[0].lanes.maxInFlight",
                "should be greater than or equal to 1",
            ],
        ),
        reject(
            "upper-case rule name",
            "ApiRoute",
            json!({"spec": {"rules": [rule(json!({"name": "Balance"}))]}}),
            &["spec.rules[0].name", "should match"],
        ),
        // --- ApiRoute: CEL
        reject(
            "all backends weight 0",
            "ApiRoute",
            json!({"spec": {"rules": [{"backends": [{"pool": "a", "weight": 0}, {"pool": "b", "weight": 0}]}]}}),
            &[
                "spec.rules[0]",
                "at least one backend needs a weight above 0",
            ],
        ),
        reject(
            "Exact path without a leading /",
            "ApiRoute",
            json!({"spec": {"rules": [rule(json!({"matches": [{"path": {"type": "Exact", "value": "login"}}]}))]}}),
            &[
                "spec.rules[0].matches[0].path",
                "an Exact or PathPrefix path must start with /",
            ],
        ),
        reject(
            "PathPrefix (the default type) without a leading /",
            "ApiRoute",
            json!({"spec": {"rules": [rule(json!({"matches": [{"path": {"value": "accounts"}}]}))]}}),
            &["an Exact or PathPrefix path must start with /"],
        ),
        reject(
            "path with //",
            "ApiRoute",
            json!({"spec": {"rules": [rule(json!({"matches": [{"path": {"type": "PathPrefix", "value": "/a//b"}}]}))]}}),
            &[
                "spec.rules[0].matches[0].path",
                "a path must not contain '?', '#' or '//'",
            ],
        ),
        reject(
            "path with a query",
            "ApiRoute",
            json!({"spec": {"rules": [rule(json!({"matches": [{"path": {"type": "Exact", "value": "/login?next=x"}}]}))]}}),
            &["a path must not contain '?', '#' or '//'"],
        ),
        reject(
            "retry on RetriableStatus without retriableStatuses",
            "ApiRoute",
            json!({"spec": {"rules": [rule(json!({"retries": {"retryOn": ["RetriableStatus"]}}))]}}),
            &[
                "spec.rules[0].retries",
                "retry on RetriableStatus needs retriableStatuses",
            ],
        ),
        reject(
            "rateLimit key Header without header",
            "ApiRoute",
            json!({"spec": {"rules": [rule(json!({"rateLimit": {"requests": 10, "key": "Header"}}))]}}),
            &[
                "spec.rules[0].rateLimit",
                "rateLimit.key Header needs rateLimit.header",
            ],
        ),
        reject(
            "hedge with both delay and percentile",
            "ApiRoute",
            json!({"spec": {"rules": [rule(json!({"hedge": {"delay": "50ms", "percentile": 95}}))]}}),
            &[
                "spec.rules[0].hedge",
                "hedge takes exactly one of delay or percentile",
            ],
        ),
        reject(
            "hedge with neither delay nor percentile",
            "ApiRoute",
            json!({"spec": {"rules": [rule(json!({"hedge": {"maxExtraAttempts": 2}}))]}}),
            &["hedge takes exactly one of delay or percentile"],
        ),
        reject(
            "lanes slowThreshold 0s",
            "ApiRoute",
            json!({"spec": {"rules": [rule(json!({"lanes": {"slowThreshold": "0s"}}))]}}),
            &[
                "spec.rules[0].lanes",
                "lanes.slowThreshold must be above 0s",
            ],
        ),
        reject(
            "lanes slowThreshold 0m0ms",
            "ApiRoute",
            json!({"spec": {"rules": [rule(json!({"lanes": {"slowThreshold": "0m0ms"}}))]}}),
            &["lanes.slowThreshold must be above 0s"],
        ),
        reject(
            "apiKeys with header and queryParam",
            "ApiRoute",
            json!({"spec": {"rules": [rule(json!({"auth": {"apiKeys": {
                "secretRefs": [{"name": "keys"}], "header": "x-key", "queryParam": "key"}}}))]}}),
            &[
                "spec.rules[0].auth.apiKeys",
                "apiKeys reads the key from a header or a queryParam, not both",
            ],
        ),
        reject(
            "rewrite pathPrefix without a leading /",
            "ApiRoute",
            json!({"spec": {"rules": [rule(json!({"rewrite": {"pathPrefix": "v2"}}))]}}),
            &[
                "spec.rules[0].rewrite",
                "rewrite.pathPrefix must start with /",
            ],
        ),
        // --- UpstreamPool: CEL and schema
        reject(
            "UpstreamPool with both service and static",
            "UpstreamPool",
            json!({"spec": {"static": [{"address": "10.0.0.1", "port": 80}]}}),
            &[
                "spec: Invalid value",
                "set exactly one of spec.service or spec.static",
            ],
        ),
        reject(
            "UpstreamPool with neither service nor static",
            "UpstreamPool",
            json!({"spec": {"service": null, "connectTimeout": "1s"}}),
            &[
                "spec: Invalid value",
                "set exactly one of spec.service or spec.static",
            ],
        ),
        reject(
            "static endpoints all weight 0",
            "UpstreamPool",
            json!({"spec": {"service": null, "static": [
                {"address": "10.0.0.1", "port": 80, "weight": 0},
                {"address": "10.0.0.2", "port": 80, "weight": 0}]}}),
            &[
                "spec: Invalid value",
                "at least one static endpoint needs a weight above 0",
            ],
        ),
        reject(
            "empty static list",
            "UpstreamPool",
            json!({"spec": {"service": null, "static": []}}),
            &["spec.static", "should have at least 1 items"],
        ),
        reject(
            "algorithm Fastest",
            "UpstreamPool",
            json!({"spec": {"loadBalancing": {"algorithm": "Fastest"}}}),
            &[
                "spec.loadBalancing.algorithm",
                "Unsupported value: \"Fastest\"",
            ],
        ),
        reject(
            "RingHash without hashOn",
            "UpstreamPool",
            json!({"spec": {"loadBalancing": {"algorithm": "RingHash"}}}),
            &[
                "spec.loadBalancing",
                "RingHash and Maglev need hashOn: say which header, cookie or sourceIP to hash",
            ],
        ),
        reject(
            "Maglev without hashOn",
            "UpstreamPool",
            json!({"spec": {"loadBalancing": {"algorithm": "Maglev"}}}),
            &["RingHash and Maglev need hashOn"],
        ),
        reject(
            "hashOn with two fields",
            "UpstreamPool",
            json!({"spec": {"loadBalancing": {"algorithm": "RingHash",
                "hashOn": {"header": "x-user", "cookie": "session"}}}}),
            &[
                "spec.loadBalancing.hashOn",
                "hashOn takes exactly one of header, cookie or sourceIP: true",
            ],
        ),
        reject(
            "hashOn with sourceIP false only",
            "UpstreamPool",
            json!({"spec": {"loadBalancing": {"algorithm": "Maglev", "hashOn": {"sourceIP": false}}}}),
            &["hashOn takes exactly one of header, cookie or sourceIP: true"],
        ),
        reject(
            "healthCheck path without a leading /",
            "UpstreamPool",
            json!({"spec": {"healthCheck": {"path": "healthz"}}}),
            &["spec.healthCheck", "healthCheck.path must start with /"],
        ),
        reject(
            "health status range with start > end",
            "UpstreamPool",
            json!({"spec": {"healthCheck": {"expectedStatuses": [{"start": 500, "end": 200}]}}}),
            &[
                "spec.healthCheck.expectedStatuses[0]",
                "a status range needs start <= end",
            ],
        ),
        reject(
            "connectTimeout \"1.5s\"",
            "UpstreamPool",
            json!({"spec": {"connectTimeout": "1.5s"}}),
            &["spec.connectTimeout", "should match"],
        ),
        reject(
            "service port 0",
            "UpstreamPool",
            json!({"spec": {"service": {"port": 0}}}),
            &["spec.service.port", "should be greater than or equal to 1"],
        ),
        reject(
            "protocol HTTP3",
            "UpstreamPool",
            json!({"spec": {"protocol": "HTTP3"}}),
            &["spec.protocol", "Unsupported value: \"HTTP3\""],
        ),
        // --- AuthPolicy
        reject(
            "an AuthPolicy that checks nothing",
            "AuthPolicy",
            json!({"spec": {"ipRules": null}}),
            &["an AuthPolicy needs at least one of apiKeys, jwt, extAuth, ipRules"],
        ),
        reject(
            "an AuthPolicy reading an API key from a header and a query parameter",
            "AuthPolicy",
            json!({"spec": {"apiKeys": {"secretRefs": [{"name": "k"}], "header": "x-key", "queryParam": "key"}}}),
            &["apiKeys reads the key from a header or a queryParam, not both"],
        ),
        reject(
            "an AuthPolicy asking a gRPC URL",
            "AuthPolicy",
            json!({"spec": {"extAuth": {"url": "grpc://authz:9000"}}}),
            &["extAuth.url must be an http:// or https:// URL"],
        ),
        reject(
            "an AuthPolicy with empty address rules",
            "AuthPolicy",
            json!({"spec": {"ipRules": {"deny": []}}}),
            &["ipRules needs at least one allow or deny range"],
        ),
        reject(
            "an AuthPolicy denying a host name",
            "AuthPolicy",
            json!({"spec": {"ipRules": {"deny": ["evil.example"]}}}),
            &["ipRules.deny holds CIDRs (10.0.0.0/8) or addresses only"],
        ),
        reject(
            "an AuthPolicy with two JWT providers of one name",
            "AuthPolicy",
            json!({"spec": {"jwt": {"providers": [{"name": "a", "issuer": "https://a.example", "localJwks": {"secretRef": {"name": "k"}}}, {"name": "a", "issuer": "https://b.example", "localJwks": {"secretRef": {"name": "k"}}}]}}}),
            &["jwt provider names must be unique"],
        ),
        reject(
            "an AuthPolicy with two JWT providers of one issuer",
            "AuthPolicy",
            json!({"spec": {"jwt": {"providers": [{"name": "a", "issuer": "https://a.example", "localJwks": {"secretRef": {"name": "k"}}}, {"name": "b", "issuer": "https://a.example", "localJwks": {"secretRef": {"name": "k"}}}]}}}),
            &["jwt provider issuers must be unique"],
        ),
        reject(
            "an AuthPolicy provider without keys",
            "AuthPolicy",
            json!({"spec": {"jwt": {"providers": [{"name": "a", "issuer": "https://a.example"}]}}}),
            &["a jwt provider takes its keys from remoteJwks or localJwks: exactly one"],
        ),
        reject(
            "an AuthPolicy token location naming nothing",
            "AuthPolicy",
            json!({"spec": {"jwt": {"providers": [{"name": "a", "issuer": "https://a.example", "localJwks": {"secretRef": {"name": "k"}}, "extractFrom": [{"prefix": "Bearer "}]}]}}}),
            &["extractFrom entries name exactly one of header, cookie, queryParam"],
        ),
        reject(
            "an AuthPolicy fetching keys over plain http",
            "AuthPolicy",
            json!({"spec": {"jwt": {"providers": [{"name": "a", "issuer": "https://a.example", "remoteJwks": {"uri": "http://a.example/jwks"}}]}}}),
            &["remoteJwks.uri must be https:// (plain http only to localhost)"],
        ),
        reject(
            "an AuthPolicy with a bad address range",
            "AuthPolicy",
            json!({"spec": {"ipRules": {"allow": ["10.0.0.0/99"]}}}),
            &["ipRules.allow holds CIDRs (10.0.0.0/8) or addresses only"],
        ),
        // --- CachePolicy
        reject(
            "mode Fixed without ttl",
            "CachePolicy",
            json!({"spec": {"mode": "Fixed"}}),
            &["spec: Invalid value", "mode Fixed requires ttl"],
        ),
        reject(
            "CachePolicy without mode",
            "CachePolicy",
            json!({"spec": {"mode": null, "defaultTtl": "5s"}}),
            &["spec.mode: Required value"],
        ),
        reject(
            "mode Sometimes",
            "CachePolicy",
            json!({"spec": {"mode": "Sometimes"}}),
            &["spec.mode", "Unsupported value: \"Sometimes\""],
        ),
        reject(
            "ttl \"5 seconds\"",
            "CachePolicy",
            json!({"spec": {"mode": "Fixed", "ttl": "5 seconds"}}),
            &["spec.ttl", "should match '^([0-9]{1,5}(h|m|s|ms)){1,4}$'"],
        ),
        reject(
            "staleIfError \"1.5s\"",
            "CachePolicy",
            json!({"spec": {"staleIfError": "1.5s"}}),
            &["spec.staleIfError", "should match"],
        ),
        reject(
            "cacheAuthorized without a key",
            "CachePolicy",
            json!({"spec": {"cacheAuthorized": true}}),
            &[
                "spec: Invalid value",
                "cacheAuthorized needs key.headers to include Authorization or Cookie, so one client's response is never served to another",
            ],
        ),
        reject(
            "cacheAuthorized keyed on another header",
            "CachePolicy",
            json!({"spec": {"cacheAuthorized": true, "key": {"headers": ["x-account-id"]}}}),
            &["cacheAuthorized needs key.headers to include Authorization or Cookie"],
        ),
        reject(
            "caching POST",
            "CachePolicy",
            json!({"spec": {"methods": ["POST"]}}),
            &["spec.methods[0]", "Unsupported value: \"POST\""],
        ),
    ]
}

/// Objects at the edge of a rule, which must be accepted (so the rules reject only what they
/// should).
fn acceptances() -> Vec<(&'static str, &'static str, Value)> {
    vec![
        (
            "wildcard and catch-all hosts",
            "ApiRoute",
            json!({"spec": {"hosts": ["*.bank.example", "*"]}}),
        ),
        (
            "an AuthPolicy for Gateway API rules",
            "AuthPolicy",
            json!({"spec": {"jwt": {"providers": [{"name": "corp", "issuer": "https://login.bank.example",
                "remoteJwks": {"uri": "https://login.bank.example/jwks"}}]},
                "extAuth": {"url": "https://authz.example/check"}, "apiKeys": {"secretRefs": [{"name": "keys"}]}}}),
        ),
        (
            "every way to say who may call",
            "ApiRoute",
            json!({"spec": {
                "tls": {"secretName": "cert", "clientCertificate": {"caSecretRef": {"name": "clients-ca"}, "mode": "Request"}},
                "ipRules": {"allow": ["10.0.0.0/8", "2001:db8::/32", "192.0.2.7"]},
                "rules": [rule(json!({"auth": {
                    "apiKeys": {"secretRefs": [{"name": "keys"}]},
                    "ipRules": {"deny": ["10.9.0.0/16"]},
                    "jwt": {"providers": [
                        {"name": "corp", "issuer": "https://login.bank.example", "audiences": ["payments"],
                         "remoteJwks": {"uri": "https://login.bank.example/jwks", "caSecretRef": {"name": "idp-ca"}, "refreshInterval": "10m", "timeout": "2s"},
                         "algorithms": ["RS256", "ES256", "EdDSA"], "clockSkew": "30s",
                         "extractFrom": [{"header": "Authorization", "prefix": "Bearer "}, {"cookie": "session"}, {"queryParam": "access_token"}],
                         "requiredClaims": [{"claim": "scope", "anyOf": ["payments:write"]}, {"claim": "realm_access.roles"}],
                         "claimToHeaders": [{"claim": "sub", "header": "x-user"}], "forwardToken": true},
                        {"name": "dev", "issuer": "http://localhost:8080", "remoteJwks": {"uri": "http://127.0.0.1:8080/jwks"}},
                        {"name": "partners", "issuer": "https://partners.example", "localJwks": {"secretRef": {"name": "partner-jwks"}, "key": "keys.json"}}]},
                    "extAuth": {"url": "http://authz.security.svc:8080/check", "headersToAuth": ["authorization", "x-account"],
                                "headersToUpstream": ["x-user-id"], "timeout": "500ms", "failureMode": "Open",
                                "cache": {"keyHeaders": ["authorization"], "ttl": "1m", "maxEntries": 5000}}}}))]}}),
        ),
        (
            "upgrades to WebSocket and a versioned token, or none",
            "ApiRoute",
            json!({"spec": {"rules": [rule(json!({"upgrades": ["websocket", "h2cx", "h3"]})), rule(json!({"name": "none", "upgrades": []}))]}}),
        ),
        (
            "RegularExpression path without a leading /",
            "ApiRoute",
            json!({"spec": {"rules": [rule(json!({"matches": [{"path": {"type": "RegularExpression", "value": "^.*/balance$"}}]}))]}}),
        ),
        (
            "header edits, a full-path rewrite, mirrors and a backend timeout",
            "ApiRoute",
            json!({"spec": {"rules": [rule(json!({
                "requestHeaders": {"set": [{"name": "X-Tenant", "value": "bank\tA ~!"}], "add": [{"name": "x-b", "value": ""}], "remove": ["Cookie", "x-internal"]},
                "responseHeaders": {"set": [{"name": "Strict-Transport-Security", "value": "max-age=31536000"}], "remove": ["server"]},
                "rewrite": {"fullPath": "/v2/accounts;v=1", "hostname": "internal.example"},
                "mirrors": [{"backend": "shadow"}, {"backend": "shadow", "percent": 0}, {"backend": "other", "percent": 100}],
                "timeout": "5s",
                "backendTimeout": "1s"}))]}}),
        ),
        (
            "redirects: to https, a new host and prefix, a full path, nothing changed",
            "ApiRoute",
            json!({"spec": {"rules": [
                {"redirect": {"scheme": "https", "port": 443, "statusCode": 301}},
                {"name": "moved", "matches": [{"path": {"value": "/old"}}],
                 "redirect": {"hostname": "www.bank.example", "path": {"replacePrefixMatch": "/"}, "statusCode": 308}},
                {"name": "login", "matches": [{"path": {"type": "Exact", "value": "/signin"}}],
                 "redirect": {"scheme": "http", "port": 65535, "path": {"replaceFullPath": "/auth/login"}, "statusCode": 303}},
                {"name": "same", "redirect": {}, "timeout": "1s"}]}}),
        ),
        (
            "one backend of two weight 0",
            "ApiRoute",
            json!({"spec": {"rules": [{"backends": [{"pool": "a", "weight": 0}, {"pool": "b", "weight": 1}]}]}}),
        ),
        (
            "RetriableStatus with statuses, compound durations",
            "ApiRoute",
            json!({"spec": {"rules": [rule(json!({"timeout": "1m30s", "retries": {
                "retryOn": ["RetriableStatus", "Reset"], "retriableStatuses": [503], "perTryTimeout": "250ms"}}))]}}),
        ),
        (
            "rateLimit key Header with header",
            "ApiRoute",
            json!({"spec": {"rules": [rule(json!({"rateLimit": {"requests": 5, "key": "Header", "header": "x-user"}}))]}}),
        ),
        (
            "hedge after a delay, after the p50 and p99 with the most hedges",
            "ApiRoute",
            json!({"spec": {"rules": [
                rule(json!({"hedge": {"delay": "50ms"}})),
                rule(json!({"name": "p50", "hedge": {"percentile": 50, "maxExtraAttempts": 1}})),
                rule(json!({"name": "p99", "hedge": {"percentile": 99, "maxExtraAttempts": 3}}))]}}),
        ),
        (
            "lanes at their smallest, and each field alone",
            "ApiRoute",
            json!({"spec": {"rules": [
                rule(json!({"lanes": {"maxInFlight": 1, "slowThreshold": "1ms"}})),
                rule(json!({"name": "bulkhead", "lanes": {"maxInFlight": 200}})),
                rule(json!({"name": "threshold", "lanes": {"slowThreshold": "1m30s"}}))]}}),
        ),
        (
            "static endpoints, one weight 0",
            "UpstreamPool",
            json!({"spec": {"service": null, "static": [
                {"address": "10.0.0.1", "port": 80, "weight": 0},
                {"address": "10.0.0.2", "port": 80}]}}),
        ),
        (
            "RingHash on sourceIP",
            "UpstreamPool",
            json!({"spec": {"loadBalancing": {"algorithm": "RingHash", "hashOn": {"sourceIP": true}}}}),
        ),
        (
            "Maglev on a cookie, sourceIP false",
            "UpstreamPool",
            json!({"spec": {"loadBalancing": {"algorithm": "Maglev", "hashOn": {"cookie": "s", "sourceIP": false}}}}),
        ),
        (
            "mode Fixed with ttl",
            "CachePolicy",
            json!({"spec": {"mode": "Fixed", "ttl": "5s"}}),
        ),
        (
            "cacheAuthorized keyed on Authorization (any case)",
            "CachePolicy",
            json!({"spec": {"cacheAuthorized": true, "key": {"headers": ["x-account-id", "Authorization"]}}}),
        ),
        (
            "cacheAuthorized false without a key",
            "CachePolicy",
            json!({"spec": {"cacheAuthorized": false}}),
        ),
    ]
}

/// Every `x-kubernetes-validations` message of every CRD, by kind.
fn cel_messages(crds: &[CustomResourceDefinition]) -> Vec<(String, String)> {
    fn walk(kind: &str, schema: &Value, out: &mut Vec<(String, String)>) {
        match schema {
            Value::Object(map) => {
                if let Some(Value::Array(rules)) = map.get("x-kubernetes-validations") {
                    for r in rules {
                        let message = r["message"].as_str().unwrap_or_default().to_string();
                        out.push((kind.to_string(), message));
                    }
                }
                map.values().for_each(|v| walk(kind, v, out));
            }
            Value::Array(items) => items.iter().for_each(|v| walk(kind, v, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    for crd in crds {
        let schema = serde_json::to_value(&crd.spec.versions).expect("CRDs serialise");
        walk(&crd.spec.names.kind, &schema, &mut out);
    }
    out
}

#[tokio::test]
async fn validation_rules_reject_bad_objects_with_their_own_message() -> Result<()> {
    let (client, ns) = setup("validation").await?;
    let cases = rejections();

    // The table covers every CEL rule of the CRDs, with the CRD's own message text.
    let crds: Vec<_> = load_crds()?.into_iter().map(|(_, c)| c).collect();
    let messages = cel_messages(&crds);
    assert!(
        messages.len() >= 15,
        "expected the CRDs' CEL rules, found {messages:?}"
    );
    let mut problems = Vec::new();
    for (kind, message) in &messages {
        if message.is_empty() {
            problems.push(format!("{kind}: a CEL rule has no message"));
        } else if !cases
            .iter()
            .any(|c| c.kind == kind && c.expect.iter().any(|e| e.contains(message.as_str())))
        {
            problems.push(format!("{kind}: no case exercises the rule {message:?}"));
        }
    }

    for (i, (what, kind, patch)) in acceptances().into_iter().enumerate() {
        let obj = merge(&object(kind, &format!("ok-{i}"), base_spec(kind)), &patch);
        if let Err(e) = create(&client, &ns, &obj).await {
            problems.push(format!("valid {kind} ({what}) was rejected: {e}"));
        }
    }
    for (i, case) in cases.iter().enumerate() {
        let base = object(case.kind, &format!("bad-{i}"), base_spec(case.kind));
        // Sanity: the unpatched object is valid, so the patch is what gets rejected.
        if i == 0 || cases[i - 1].kind != case.kind {
            let mut probe = base.clone();
            probe["metadata"]["name"] = json!(format!("base-{}", case.kind.to_lowercase()));
            if let Err(e) = create(&client, &ns, &probe).await {
                problems.push(format!("the base {} is rejected: {e}", case.kind));
            }
        }
        match create(&client, &ns, &merge(&base, &case.patch)).await {
            Ok(_) => problems.push(format!("{} ({}) was accepted", case.what, case.kind)),
            Err(message) => {
                let missing: Vec<_> = case
                    .expect
                    .iter()
                    .filter(|e| !message.contains(**e))
                    .collect();
                if !missing.is_empty() {
                    problems.push(format!(
                        "{} ({}): the message lacks {missing:?}; it is: {message}",
                        case.what, case.kind
                    ));
                }
            }
        }
    }
    assert!(
        problems.is_empty(),
        "{} problem(s):\n{}",
        problems.len(),
        problems.join("\n")
    );
    Ok(())
}

/// Applies an example file with kubectl (as its header says users do) into the namespace, and
/// checks that the API server stored every object as written, nothing pruned, and that the
/// stored objects read back into the Rust types.
async fn example_is_accepted(file: &str) -> Result<()> {
    let (client, ns) = setup(&format!("example-{file}")).await?;
    let path = repo_root().join("examples").join(file);
    let out = kubectl(&[
        "apply",
        "-n",
        ns.name(),
        "-f",
        path.to_str().context("UTF-8 path")?,
    ])
    .await?;
    ensure!(
        out.success() && !out.stderr.contains("Warning"),
        "`kubectl apply -f examples/{file}` failed or warned ({}):\n{}{}",
        out.status,
        out.stdout,
        out.stderr
    );

    let docs = yaml_documents(&path)?;
    ensure!(!docs.is_empty(), "examples/{file} has no documents");
    let mut problems = Vec::new();
    for doc in &docs {
        let kind = doc["kind"].as_str().context("every document has a kind")?;
        let name = doc["metadata"]["name"]
            .as_str()
            .context("every document has a name")?;
        let stored = dynamic_api(&client, &ns, kind).get(name).await?;
        let stored_spec = &stored.data["spec"];
        if stored_spec != &doc["spec"] {
            problems.push(format!(
                "{kind}/{name}: the API server stored\n  {stored_spec}\nbut examples/{file} says\n  {}",
                doc["spec"]
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));

    // The stored objects read back into the Rust types, and all of them are there.
    let lp = ListParams::default();
    let mut stored: BTreeSet<String> = BTreeSet::new();
    let routes = Api::<ApiRoute>::namespaced(client.clone(), ns.name())
        .list(&lp)
        .await?;
    stored.extend(
        routes
            .items
            .iter()
            .map(|o| format!("ApiRoute/{}", o.metadata.name.clone().unwrap_or_default())),
    );
    let pools = Api::<UpstreamPool>::namespaced(client.clone(), ns.name())
        .list(&lp)
        .await?;
    stored.extend(pools.items.iter().map(|o| {
        format!(
            "UpstreamPool/{}",
            o.metadata.name.clone().unwrap_or_default()
        )
    }));
    let caches = Api::<CachePolicy>::namespaced(client.clone(), ns.name())
        .list(&lp)
        .await?;
    stored.extend(caches.items.iter().map(|o| {
        format!(
            "CachePolicy/{}",
            o.metadata.name.clone().unwrap_or_default()
        )
    }));
    let expected: BTreeSet<String> = docs
        .iter()
        .map(|d| {
            format!(
                "{}/{}",
                d["kind"].as_str().unwrap_or_default(),
                d["metadata"]["name"].as_str().unwrap_or_default()
            )
        })
        .collect();
    assert_eq!(stored, expected);
    Ok(())
}

#[tokio::test]
async fn banking_example_is_accepted() -> Result<()> {
    example_is_accepted("banking.yaml").await
}

#[tokio::test]
async fn standalone_example_is_accepted() -> Result<()> {
    example_is_accepted("standalone.yaml").await
}

#[tokio::test]
async fn filters_example_is_accepted() -> Result<()> {
    example_is_accepted("filters.yaml").await
}

#[tokio::test]
async fn status_subresource_takes_status_and_spec_updates_ignore_it() -> Result<()> {
    let (client, ns) = setup("status").await?;
    let api = dynamic_api(&client, &ns, "ApiRoute");

    // Status sent on create is dropped.
    let mut obj = object("ApiRoute", "accounts", base_spec("ApiRoute"));
    obj["status"] = json!({"conditions": [condition("Accepted", "True", "Accepted")]});
    let created = create(&client, &ns, &obj)
        .await
        .map_err(|e| anyhow!("create: {e}"))?;
    assert!(
        created.data.get("status").is_none_or(Value::is_null),
        "status kept on create: {:?}",
        created.data
    );
    assert_eq!(created.metadata.generation, Some(1));

    // The status subresource takes conditions, without bumping the generation.
    let status = json!({"status": {"conditions": [
        condition("Accepted", "True", "Accepted"),
        condition("Programmed", "False", "Pending"),
    ]}});
    let patched = api
        .patch_status("accounts", &PatchParams::default(), &Patch::Merge(&status))
        .await
        .map_err(|e| anyhow!("status patch rejected: {}", api_message(&e)))?;
    assert_eq!(patched.data["status"], status["status"]);
    assert_eq!(patched.metadata.generation, Some(1));

    // A spec update (PUT) carrying another status changes the spec, not the status.
    let mut replacement = patched.clone();
    replacement.data["spec"]["hosts"] = json!(["api.bank.example", "www.bank.example"]);
    replacement.data["status"] = json!({"conditions": [condition("Accepted", "False", "Invalid")]});
    let replaced = api
        .replace("accounts", &PostParams::default(), &replacement)
        .await
        .map_err(|e| anyhow!("replace: {}", api_message(&e)))?;
    assert_eq!(
        replaced.data["spec"]["hosts"],
        json!(["api.bank.example", "www.bank.example"])
    );
    assert_eq!(
        replaced.data["status"], status["status"],
        "a spec update changed the status"
    );
    assert_eq!(replaced.metadata.generation, Some(2));

    // Same for a merge patch of the main resource.
    let sneaky = json!({"spec": {"hosts": ["api.bank.example"]},
        "status": {"conditions": [condition("Accepted", "False", "Invalid")]}});
    let after = api
        .patch("accounts", &PatchParams::default(), &Patch::Merge(&sneaky))
        .await
        .map_err(|e| anyhow!("patch: {}", api_message(&e)))?;
    assert_eq!(
        after.data["status"], status["status"],
        "a spec patch changed the status"
    );
    assert_eq!(after.metadata.generation, Some(3));

    // The status schema is enforced too: a condition needs its required fields.
    let incomplete = json!({"status": {"conditions": [{"type": "Accepted", "status": "True"}]}});
    let err = api
        .patch_status(
            "accounts",
            &PatchParams::default(),
            &Patch::Merge(&incomplete),
        )
        .await
        .err()
        .context("a condition without reason, message and lastTransitionTime was accepted")?;
    let message = api_message(&err);
    assert!(
        message.contains("status.conditions[0].reason: Required value"),
        "{message}"
    );

    // The typed status reads back.
    let typed = Api::<ApiRoute>::namespaced(client.clone(), ns.name())
        .get_status("accounts")
        .await?;
    let conditions = typed.status.context("typed status")?.conditions;
    assert_eq!(
        conditions
            .iter()
            .map(|c| (c.type_.as_str(), c.status.as_str()))
            .collect::<Vec<_>>(),
        [("Accepted", "True"), ("Programmed", "False")]
    );

    // UpstreamPool's status has its own fields.
    create(
        &client,
        &ns,
        &object("UpstreamPool", "accounts", base_spec("UpstreamPool")),
    )
    .await
    .map_err(|e| anyhow!("create pool: {e}"))?;
    let pool_status = json!({"status": {"endpoints": 3, "readyEndpoints": 2,
        "conditions": [condition("Accepted", "True", "Accepted")]}});
    let pool = dynamic_api(&client, &ns, "UpstreamPool")
        .patch_status(
            "accounts",
            &PatchParams::default(),
            &Patch::Merge(&pool_status),
        )
        .await
        .map_err(|e| anyhow!("pool status patch: {}", api_message(&e)))?;
    assert_eq!(pool.data["status"], pool_status["status"]);
    Ok(())
}

/// The `kubectl get` row for `name`, as (header, cell) pairs.
async fn table_row(
    kind: &str,
    ns: &TestNamespace,
    name: &str,
    wide: bool,
) -> Result<Vec<(String, String)>> {
    let mut args = vec!["get", kind, name, "-n", ns.name()];
    if wide {
        args.extend(["-o", "wide"]);
    }
    let out = kubectl_ok(&args).await?;
    parse_table(&out)
        .into_iter()
        .next()
        .ok_or_else(|| anyhow!("`kubectl {}` printed no row:\n{out}", args.join(" ")))
}

fn headers(row: &[(String, String)]) -> Vec<&str> {
    row.iter().map(|(h, _)| h.as_str()).collect()
}

fn cell<'a>(row: &'a [(String, String)], header: &str) -> Result<&'a str> {
    row.iter()
        .find(|(h, _)| h == header)
        .map(|(_, v)| v.as_str())
        .ok_or_else(|| anyhow!("no {header} column in {:?}", headers(row)))
}

#[tokio::test]
async fn printer_columns_show_what_they_promise() -> Result<()> {
    let (client, ns) = setup("printer-columns").await?;

    let spec = json!({"hosts": ["api.bank.example", "*.bank.example"],
        "rules": [{"backends": [{"pool": "accounts"}]}]});
    create(&client, &ns, &object("ApiRoute", "accounts", spec))
        .await
        .map_err(|e| anyhow!("{e}"))?;
    let row = table_row("ar", &ns, "accounts", false).await?;
    assert_eq!(
        headers(&row),
        ["NAME", "HOSTS", "ACCEPTED", "PROGRAMMED", "AGE"]
    );
    assert_eq!(cell(&row, "ACCEPTED")?, "", "no status yet");
    let hosts = cell(&row, "HOSTS")?;
    assert!(
        hosts.contains("api.bank.example") && hosts.contains("*.bank.example"),
        "HOSTS shows {hosts:?}"
    );

    let status = json!({"status": {"conditions": [
        condition("Accepted", "True", "Accepted"),
        condition("ResolvedRefs", "False", "BackendNotFound"),
        condition("Programmed", "False", "Pending"),
    ]}});
    dynamic_api(&client, &ns, "ApiRoute")
        .patch_status("accounts", &PatchParams::default(), &Patch::Merge(&status))
        .await
        .map_err(|e| anyhow!("status patch: {}", api_message(&e)))?;
    let row = table_row("ar", &ns, "accounts", false).await?;
    assert_eq!(cell(&row, "ACCEPTED")?, "True");
    assert_eq!(cell(&row, "PROGRAMMED")?, "False");
    let wide = table_row("ar", &ns, "accounts", true).await?;
    assert_eq!(
        headers(&wide),
        [
            "NAME",
            "HOSTS",
            "ACCEPTED",
            "RESOLVEDREFS",
            "PROGRAMMED",
            "AGE"
        ]
    );
    assert_eq!(cell(&wide, "RESOLVEDREFS")?, "False");

    let pool = json!({"service": {"name": "accounts-svc", "port": 80},
        "loadBalancing": {"algorithm": "LeastRequest"}});
    create(&client, &ns, &object("UpstreamPool", "accounts", pool))
        .await
        .map_err(|e| anyhow!("{e}"))?;
    let pool_status = json!({"status": {"endpoints": 3, "readyEndpoints": 2,
        "conditions": [condition("Accepted", "True", "Accepted"), condition("Programmed", "True", "Programmed")]}});
    dynamic_api(&client, &ns, "UpstreamPool")
        .patch_status(
            "accounts",
            &PatchParams::default(),
            &Patch::Merge(&pool_status),
        )
        .await
        .map_err(|e| anyhow!("pool status patch: {}", api_message(&e)))?;
    let row = table_row("up", &ns, "accounts", false).await?;
    assert_eq!(
        headers(&row),
        [
            "NAME",
            "SERVICE",
            "ALGORITHM",
            "READY",
            "ENDPOINTS",
            "ACCEPTED",
            "PROGRAMMED",
            "AGE"
        ]
    );
    assert_eq!(cell(&row, "SERVICE")?, "accounts-svc");
    assert_eq!(cell(&row, "ALGORITHM")?, "LeastRequest");
    assert_eq!(cell(&row, "READY")?, "2");
    assert_eq!(cell(&row, "ENDPOINTS")?, "3");
    assert_eq!(cell(&row, "ACCEPTED")?, "True");
    assert_eq!(cell(&row, "PROGRAMMED")?, "True");

    create(
        &client,
        &ns,
        &object(
            "CachePolicy",
            "balances",
            json!({"mode": "Fixed", "ttl": "5s"}),
        ),
    )
    .await
    .map_err(|e| anyhow!("{e}"))?;
    let row = table_row("cp", &ns, "balances", false).await?;
    assert_eq!(headers(&row), ["NAME", "MODE", "TTL", "ACCEPTED", "AGE"]);
    assert_eq!(cell(&row, "MODE")?, "Fixed");
    assert_eq!(cell(&row, "TTL")?, "5s");
    Ok(())
}

#[test]
fn merge_patch_follows_rfc_7386() {
    let base = json!({"a": {"b": 1, "c": 2}, "d": [1, 2], "e": "x"});
    let patched = merge(
        &base,
        &json!({"a": {"b": null, "f": 3}, "d": [3], "e": null}),
    );
    assert_eq!(patched, json!({"a": {"c": 2, "f": 3}, "d": [3]}));
}
