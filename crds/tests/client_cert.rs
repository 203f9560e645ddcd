//! The compiler and client certificates (`spec.tls.clientCertificate`): each host of the
//! route asks for them, and a Secret that cannot be used fails closed.

use parapet_crds::{
    compiler::{Output, Reason, Severity, compile},
    manifest::Manifest,
    snapshot::{ClientAuth, Table},
};

const CA: &str = "-----BEGIN CERTIFICATE-----\nMIIBfake\n-----END CERTIFICATE-----\n";
const CRL1: &str = "-----BEGIN X509 CRL-----\nMIIBone\n-----END X509 CRL-----\n";
const CRL2: &str = "-----BEGIN X509 CRL-----\nMIIBtwo\n-----END X509 CRL-----\n";

fn compile_yaml(yaml: &str) -> Output {
    let m = Manifest::parse(yaml).expect("test manifest parses");
    compile(&m.inputs())
}

fn block(s: &str) -> String {
    s.lines().map(|l| format!("    {l}\n")).collect()
}

/// A Secret with `keys` as stringData (values are PEM text).
fn secret(name: &str, keys: &[(&str, &str)]) -> String {
    let mut out =
        format!("---\napiVersion: v1\nkind: Secret\nmetadata: {{name: {name}}}\nstringData:\n");
    for (k, v) in keys {
        out.push_str(&format!("  {k}: |\n{}", block(v)));
    }
    out
}

fn route(name: &str, created: &str, hosts: &str, tls: &str) -> String {
    format!(
        "---\napiVersion: parapet.dev/v1alpha1\nkind: ApiRoute\nmetadata: {{name: {name}, creationTimestamp: \"{created}\"}}\nspec:\n  hosts: {hosts}\n  tls: {tls}\n  rules:\n    - backends: [{{pool: web}}]\n"
    )
}

const BASE: &str = "---\napiVersion: parapet.dev/v1alpha1\nkind: UpstreamPool\nmetadata: {name: web}\nspec:\n  static: [{address: 127.0.0.1, port: 8080}]\n---\napiVersion: v1\nkind: Secret\nmetadata: {name: cert}\ntype: kubernetes.io/tls\nstringData: {tls.crt: c, tls.key: k}\n";

fn auth<'t>(table: &'t Table, host: &str) -> Option<&'t ClientAuth> {
    table
        .virtual_hosts
        .iter()
        .find(|v| v.domain == host)
        .unwrap_or_else(|| panic!("no virtual host {host}"))
        .client_auth
        .as_ref()
}

fn errors(out: &Output) -> Vec<(Reason, String)> {
    out.diagnostics
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .map(|d| (d.reason, d.message.clone()))
        .collect()
}

/// Fails closed: a CA nobody's certificate chains to, a certificate always required.
fn closed() -> ClientAuth {
    ClientAuth {
        ca_pem: String::new(),
        crl_pem: Vec::new(),
        required: true,
    }
}

#[test]
fn every_host_of_the_route_asks_with_the_secrets_ca_and_revocation_lists() {
    let yaml = format!(
        "{BASE}{}{}{}",
        secret(
            "client-ca",
            &[("ca.crt", CA), ("ca.crl", &format!("{CRL1}{CRL2}"))]
        ),
        route(
            "r",
            "2026-01-01T00:00:00Z",
            "[a.example, '*.b.example']",
            "{secretName: cert, clientCertificate: {caSecretRef: {name: client-ca}}}"
        ),
        route(
            "plain",
            "2026-01-01T00:00:00Z",
            "[c.example]",
            "{secretName: cert}"
        ),
    );
    let out = compile_yaml(&yaml);
    assert!(out.diagnostics.is_empty(), "{:?}", out.diagnostics);
    let want = ClientAuth {
        ca_pem: CA.to_string(),
        crl_pem: vec![CRL1.to_string(), CRL2.to_string()],
        required: true,
    };
    assert_eq!(
        auth(&out.table, "a.example"),
        Some(&want),
        "Require is the default"
    );
    assert_eq!(auth(&out.table, "*.b.example"), Some(&want));
    assert_eq!(
        auth(&out.table, "c.example"),
        None,
        "a route without clientCertificate"
    );
    assert!(
        auth(&out.table, "a.example").unwrap().crl_pem.len() == 2,
        "one CRL a string"
    );
}

#[test]
fn request_mode_asks_without_requiring_and_the_crl_is_optional() {
    let yaml = format!(
        "{BASE}{}{}",
        secret("client-ca", &[("ca.crt", CA)]),
        route(
            "r",
            "2026-01-01T00:00:00Z",
            "[a.example]",
            "{secretName: cert, clientCertificate: {caSecretRef: {name: client-ca}, mode: Request}}"
        ),
    );
    let out = compile_yaml(&yaml);
    assert!(out.diagnostics.is_empty(), "{:?}", out.diagnostics);
    assert_eq!(
        auth(&out.table, "a.example"),
        Some(&ClientAuth {
            ca_pem: CA.to_string(),
            crl_pem: Vec::new(),
            required: false,
        })
    );
}

#[test]
fn a_missing_secret_fails_closed_with_what_to_fix() {
    let yaml = format!(
        "{BASE}{}",
        route(
            "r",
            "2026-01-01T00:00:00Z",
            "[a.example]",
            "{secretName: cert, clientCertificate: {caSecretRef: {name: ghost-ca}, mode: Request}}"
        ),
    );
    let out = compile_yaml(&yaml);
    assert_eq!(
        auth(&out.table, "a.example"),
        Some(&closed()),
        "even in Request mode"
    );
    let errs = errors(&out);
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert_eq!(errs[0].0, Reason::SecretNotFound);
    assert!(
        errs[0].1.contains("spec.tls.clientCertificate.caSecretRef")
            && errs[0].1.contains("ghost-ca"),
        "{}",
        errs[0].1
    );
}

#[test]
fn a_secret_without_a_ca_or_with_an_unreadable_crl_fails_closed() {
    for (keys, says) in [
        (vec![("ca.crl", CRL1)], "needs ca.crt"),
        (vec![("ca.crt", "not PEM")], "needs ca.crt"),
        (vec![("ca.crt", CA), ("ca.crl", "garbage")], "ca.crl"),
        (
            vec![
                ("ca.crt", CA),
                ("ca.crl", "-----BEGIN X509 CRL-----\ncut short\n"),
            ],
            "ca.crl",
        ),
    ] {
        let yaml = format!(
            "{BASE}{}{}",
            secret("client-ca", &keys),
            route(
                "r",
                "2026-01-01T00:00:00Z",
                "[a.example]",
                "{secretName: cert, clientCertificate: {caSecretRef: {name: client-ca}}}"
            ),
        );
        let out = compile_yaml(&yaml);
        assert_eq!(auth(&out.table, "a.example"), Some(&closed()), "{keys:?}");
        let errs = errors(&out);
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert_eq!(errs[0].0, Reason::InvalidSecret, "{keys:?}");
        assert!(
            errs[0].1.contains(says)
                && errs[0].1.contains("default/client-ca")
                && errs[0].1.contains("a.example refuse every client"),
            "{}",
            errs[0].1
        );
    }
}

#[test]
fn an_empty_crl_revokes_nothing() {
    let yaml = format!(
        "{BASE}{}{}",
        secret("client-ca", &[("ca.crt", CA), ("ca.crl", "\n")]),
        route(
            "r",
            "2026-01-01T00:00:00Z",
            "[a.example]",
            "{secretName: cert, clientCertificate: {caSecretRef: {name: client-ca}}}"
        ),
    );
    let out = compile_yaml(&yaml);
    assert!(out.diagnostics.is_empty(), "{:?}", out.diagnostics);
    assert!(auth(&out.table, "a.example").unwrap().crl_pem.is_empty());
}

#[test]
fn a_host_without_its_certificate_still_asks_for_client_certificates() {
    // The route's own certificate Secret is missing: the host must not be served without the
    // client check because of it.
    let yaml = format!(
        "{BASE}{}{}",
        secret("client-ca", &[("ca.crt", CA)]),
        route(
            "r",
            "2026-01-01T00:00:00Z",
            "[a.example]",
            "{secretName: ghost-cert, clientCertificate: {caSecretRef: {name: client-ca}}}"
        ),
    );
    let out = compile_yaml(&yaml);
    let vh = &out.table.virtual_hosts[0];
    assert!(vh.tls.is_none());
    assert_eq!(vh.client_auth.as_ref().map(|a| a.ca_pem.as_str()), Some(CA));
    assert_eq!(errors(&out)[0].0, Reason::SecretNotFound);
}

#[test]
fn the_oldest_route_decides_a_shared_host_and_the_other_is_warned() {
    let other_ca = "-----BEGIN CERTIFICATE-----\nMIIBother\n-----END CERTIFICATE-----\n";
    let yaml = format!(
        "{BASE}{}{}{}{}{}",
        secret("ca-old", &[("ca.crt", CA)]),
        secret("ca-new", &[("ca.crt", other_ca)]),
        route(
            "new",
            "2026-02-01T00:00:00Z",
            "[a.example, n.example]",
            "{secretName: cert, clientCertificate: {caSecretRef: {name: ca-new}}}"
        ),
        route(
            "old",
            "2026-01-01T00:00:00Z",
            "[a.example]",
            "{secretName: cert, clientCertificate: {caSecretRef: {name: ca-old}}}"
        ),
        // Another route on the host without client certificates changes nothing.
        route(
            "plain",
            "2025-01-01T00:00:00Z",
            "[a.example]",
            "{secretName: cert}"
        ),
    );
    let out = compile_yaml(&yaml);
    assert_eq!(auth(&out.table, "a.example").unwrap().ca_pem, CA);
    assert_eq!(auth(&out.table, "n.example").unwrap().ca_pem, other_ca);
    // (Its rule also shadows an older one's on the host: warned apart.)
    let warned: Vec<_> = out
        .diagnostics
        .for_object("ApiRoute", "default", "new")
        .filter(|d| d.message.contains("client certificates"))
        .collect();
    assert_eq!(warned.len(), 1, "{warned:?}");
    assert_eq!(warned[0].reason, Reason::RuleConflict);
    assert!(
        warned[0].message.contains("a.example") && warned[0].message.contains("default/old"),
        "{}",
        warned[0].message
    );
    assert!(
        out.diagnostics
            .for_object("ApiRoute", "default", "old")
            .all(|d| !d.message.contains("client certificates"))
    );
}
