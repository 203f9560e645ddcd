use http::HeaderMap;
use parapet_crds::snapshot::{ApiKeyCheck, HashedApiKey, KeySource};

use super::{ApiKeys, Refusal};

fn entry(id: &str, salt: &[u8], key: &str) -> HashedApiKey {
    HashedApiKey {
        id: id.to_string(),
        salt: hex::encode(salt),
        sha256: hex::encode(HashedApiKey::hash_key(salt, key.as_bytes())),
    }
}

fn keys(source: KeySource) -> ApiKeys {
    ApiKeys::new(&ApiKeyCheck {
        source,
        keys: vec![
            entry("partners/alice", b"salt-a", "alice-secret"),
            entry("partners/bob", b"salt-b", "bob-secret"),
        ],
    })
    .unwrap()
}

#[test]
fn header_key_identifies_its_entry() {
    let k = keys(KeySource::Header("x-api-key".into()));
    let mut h = HeaderMap::new();
    h.insert("x-api-key", "bob-secret".parse().unwrap());
    assert_eq!(k.authenticate(&h, None).as_deref(), Ok("partners/bob"));
    h.insert("x-api-key", "alice-secret".parse().unwrap());
    assert_eq!(k.authenticate(&h, None).as_deref(), Ok("partners/alice"));
}

#[test]
fn missing_and_wrong_keys_are_told_apart() {
    let k = keys(KeySource::Header("x-api-key".into()));
    let mut h = HeaderMap::new();
    assert_eq!(k.authenticate(&h, None), Err(Refusal::Missing));
    h.insert("x-api-key", "".parse().unwrap());
    assert_eq!(k.authenticate(&h, None), Err(Refusal::Missing));
    h.insert("x-api-key", "alice-secre".parse().unwrap());
    assert_eq!(k.authenticate(&h, None), Err(Refusal::Wrong));
    // A key is bound to its own salt: bob's key hashed with alice's salt does not match.
    h.insert("x-api-key", "alice-secretx".parse().unwrap());
    assert_eq!(k.authenticate(&h, None), Err(Refusal::Wrong));
}

#[test]
fn query_parameter_keys_are_percent_decoded() {
    let k = ApiKeys::new(&ApiKeyCheck {
        source: KeySource::QueryParam("api_key".into()),
        keys: vec![entry("s/k", b"salt", "a b/c")],
    })
    .unwrap();
    let h = HeaderMap::new();
    assert_eq!(
        k.authenticate(&h, Some("x=1&api_key=a%20b%2Fc")).as_deref(),
        Ok("s/k")
    );
    assert_eq!(
        k.authenticate(&h, Some("api_key=a+b/c")).as_deref(),
        Ok("s/k")
    );
    assert_eq!(k.authenticate(&h, Some("x=1")), Err(Refusal::Missing));
    assert_eq!(
        k.authenticate(&h, Some("api_key=nope")),
        Err(Refusal::Wrong)
    );
}

#[test]
fn malformed_entries_never_match() {
    let k = ApiKeys::new(&ApiKeyCheck {
        source: KeySource::Header("x-api-key".into()),
        keys: vec![HashedApiKey {
            id: "bad".into(),
            salt: "zz".into(),
            sha256: "00".into(),
        }],
    })
    .unwrap();
    assert!(k.is_empty());
    assert_eq!(k.check(b""), None);
}
