//! The snapshot decoder path (JSON → Snapshot → validate → Runtime) never panics, whatever
//! a pusher sends.

use parapet_crds::snapshot::Snapshot;
use parapet_dataplane::{
    endpoint::EndpointRegistry,
    metrics::Metrics,
    router::Router,
    snapshot::{BuildOptions, LiveState, Runtime},
    upstream::ClientPool,
};
use proptest::prelude::*;

fn base() -> serde_json::Value {
    let yaml = r#"
apiVersion: parapet.dev/v1alpha1
kind: UpstreamPool
metadata: {name: p}
spec:
  static: [{address: 127.0.0.1, port: 8080}, {address: "::1", port: 8081, weight: 3}]
  loadBalancing: {algorithm: Maglev, hashOn: {header: x-user}}
---
apiVersion: parapet.dev/v1alpha1
kind: ApiRoute
metadata: {name: r}
spec:
  hosts: [a.example, "*.b.example"]
  rules:
    - matches: [{path: {type: RegularExpression, value: "/x/[0-9]+"}, headers: [{name: h, value: "v.*", type: RegularExpression}]}]
      backends: [{pool: p}]
    - backends: [{pool: p, weight: 2}]
"#;
    let m = parapet_crds::manifest::Manifest::parse(yaml).unwrap();
    let out = parapet_crds::compiler::compile(&m.inputs());
    serde_json::to_value(Snapshot::new(1, out.table)).unwrap()
}

/// Replaces one leaf of a JSON tree, chosen by `pick`, with `with`.
fn mutate(v: &mut serde_json::Value, pick: &mut usize, with: &serde_json::Value) -> bool {
    match v {
        serde_json::Value::Object(m) => m.values_mut().any(|c| mutate(c, pick, with)),
        serde_json::Value::Array(a) => a.iter_mut().any(|c| mutate(c, pick, with)),
        leaf => {
            if *pick == 0 {
                *leaf = with.clone();
                true
            } else {
                *pick -= 1;
                false
            }
        }
    }
}

fn decode_and_build(bytes: &[u8]) {
    let Ok(mut s) = serde_json::from_slice::<Snapshot>(bytes) else {
        return;
    };
    // Fix the hash so mutated tables reach the deeper stages too.
    s.hash = s.table.content_hash();
    if s.validate().is_ok() {
        let _ = Router::new(&s.table);
        let _ = Runtime::build(
            s,
            &EndpointRegistry::default(),
            &LiveState::default(),
            &ClientPool::default(),
            &Metrics::new(),
            &BuildOptions::default(),
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        decode_and_build(&bytes);
    }

    #[test]
    fn mutated_snapshots_never_panic(
        pick in 0usize..200,
        with in prop_oneof![
            Just(serde_json::json!(null)),
            Just(serde_json::json!(0)),
            Just(serde_json::json!(-1)),
            Just(serde_json::json!(u64::MAX)),
            Just(serde_json::json!("")),
            Just(serde_json::json!("(")),
            Just(serde_json::json!("*")),
            Just(serde_json::json!([])),
            Just(serde_json::json!({})),
            ".{0,8}".prop_map(serde_json::Value::String),
        ],
    ) {
        let mut v = base();
        let mut p = pick;
        mutate(&mut v, &mut p, &with);
        decode_and_build(&serde_json::to_vec(&v).unwrap());
    }
}
