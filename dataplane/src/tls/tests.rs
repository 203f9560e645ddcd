use std::sync::Arc;

use rustls::{
    SignatureAlgorithm, SignatureScheme,
    pki_types::CertificateDer,
    sign::{CertifiedKey, Signer, SigningKey},
};

use super::{CertMap, Certificates, TableCerts};

/// A key that never signs: lookups only compare which certificate comes back.
#[derive(Debug)]
struct NoKey;

impl SigningKey for NoKey {
    fn choose_scheme(&self, _: &[SignatureScheme]) -> Option<Box<dyn Signer>> {
        None
    }

    fn algorithm(&self) -> SignatureAlgorithm {
        SignatureAlgorithm::ECDSA
    }
}

fn key(tag: u8) -> Arc<CertifiedKey> {
    Arc::new(CertifiedKey::new(
        vec![CertificateDer::from(vec![tag])],
        Arc::new(NoKey),
    ))
}

fn certs(entries: &[(&str, &Arc<CertifiedKey>)]) -> CertMap {
    entries
        .iter()
        .map(|(d, k)| (d.to_string(), Arc::clone(k)))
        .collect()
}

fn map(entries: &[(&str, &Arc<CertifiedKey>)]) -> Arc<TableCerts> {
    Arc::new(TableCerts {
        hosts: certs(entries),
        listeners: Vec::new(),
        clients: Vec::new(),
    })
}

#[test]
fn an_installed_map_is_served_on_the_next_lookup() {
    let certs = Certificates::default();
    assert!(
        certs.get("api.example").is_none(),
        "no table yet: no certificate"
    );
    let (old, new, wild) = (key(1), key(2), key(3));
    certs.install(map(&[("api.example", &old)]));
    assert!(Arc::ptr_eq(&certs.get("api.example").unwrap(), &old));
    // A lookup made before the swap keeps what it got; the next one sees the new map.
    let before = certs.get("API.example.").unwrap();
    certs.install(map(&[("api.example", &new), ("*.example", &wild)]));
    assert!(Arc::ptr_eq(&before, &old));
    assert!(Arc::ptr_eq(&certs.get("api.example").unwrap(), &new));
    assert!(Arc::ptr_eq(&certs.get("www.example").unwrap(), &wild));
    // A map without the name takes it away.
    certs.install(map(&[]));
    assert!(certs.get("api.example").is_none());
}

#[test]
fn a_listener_port_sees_only_its_own_certificates() {
    let (table, https, other) = (key(1), key(2), key(3));
    let store = Certificates::default();
    store.install(Arc::new(TableCerts {
        hosts: certs(&[("api.example", &table)]),
        listeners: vec![
            (443, certs(&[("*", &https)])),
            (8443, certs(&[("other.example", &other)])),
        ],
        clients: Vec::new(),
    }));
    assert!(Arc::ptr_eq(&store.get("api.example").unwrap(), &table));
    assert!(Arc::ptr_eq(
        &store.get_on(Some(443), "api.example").unwrap(),
        &https
    ));
    assert!(store.get_on(Some(8443), "api.example").is_none());
    assert!(Arc::ptr_eq(
        &store.get_on(Some(8443), "other.example").unwrap(),
        &other
    ));
    // A port with no listener has no certificates.
    assert!(store.get_on(Some(80), "api.example").is_none());
}

#[test]
fn wildcards_cover_several_labels_and_the_most_specific_wins() {
    let (wide, narrow, any) = (key(1), key(2), key(3));
    let m = certs(&[
        ("*.example.com", &wide),
        ("*.foo.example.com", &narrow),
        ("*", &any),
    ]);
    let got = |name: &str| super::lookup(&m, name).map(|k| k.cert[0].as_ref()[0]);
    assert_eq!(got("a.example.com"), Some(1));
    assert_eq!(
        got("a.b.example.com"),
        Some(1),
        "a wildcard matches several labels"
    );
    assert_eq!(
        got("x.foo.example.com"),
        Some(2),
        "the most specific wildcard wins"
    );
    assert_eq!(got("a.b.foo.example.com"), Some(2));
    assert_eq!(
        got("example.com"),
        Some(3),
        "a wildcard needs a label before its suffix"
    );
    assert_eq!(got("other.org"), Some(3));
}
