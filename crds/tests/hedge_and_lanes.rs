//! A rule's `hedge` and `lanes`: compiled into the table, checked where the API server's
//! schema cannot (standalone files, settings that cannot take effect), and optional in the
//! wire format, so tables written before they existed still parse with the same hash.

use parapet_crds::{
    compiler::{ConditionKind, Output, Reason, Severity, compile},
    manifest::Manifest,
    snapshot::{
        FORMAT_VERSION, ForwardAction, HedgeAfter, HedgePolicy, RouteAction, RouteLanes, Snapshot,
        Table,
    },
};
use sha2::{Digest, Sha256};

fn compile_rules(rules: &str) -> Output {
    let yaml = format!(
        r#"
apiVersion: parapet.dev/v1alpha1
kind: UpstreamPool
metadata: {{name: web}}
spec:
  static: [{{address: 127.0.0.1, port: 8080}}]
---
apiVersion: parapet.dev/v1alpha1
kind: ApiRoute
metadata: {{name: r}}
spec:
  hosts: [a.example]
  rules:
{rules}
"#
    );
    compile(
        &Manifest::parse(&yaml)
            .expect("test manifest parses")
            .inputs(),
    )
}

/// The forward action of the rule named `rule`.
fn forward<'a>(out: &'a Output, rule: &str) -> &'a ForwardAction {
    let name = format!("default/r/{rule}");
    let route = out
        .table
        .virtual_hosts
        .iter()
        .flat_map(|v| &v.routes)
        .find(|r| r.name == name)
        .unwrap_or_else(|| panic!("no route {name}"));
    match &route.action {
        RouteAction::Forward(f) => f,
        other => panic!("{name} answers directly: {other:?}"),
    }
}

fn reasons(out: &Output, severity: Severity) -> Vec<Reason> {
    out.diagnostics
        .iter()
        .filter(|d| d.severity == severity)
        .map(|d| d.reason)
        .collect()
}

#[test]
fn hedge_and_lanes_are_carried_into_the_table() {
    let out = compile_rules(
        r#"
    - name: fixed
      matches: [{path: {value: /fixed}}]
      backends: [{pool: web}]
      hedge: {delay: 50ms, maxExtraAttempts: 2}
    - name: tail
      matches: [{path: {value: /tail}}]
      backends: [{pool: web}]
      hedge: {percentile: 99}
    - name: bulkhead
      matches: [{path: {value: /bulkhead}}]
      backends: [{pool: web}]
      lanes: {maxInFlight: 3, slowThreshold: 250ms}
    - name: threshold-only
      matches: [{path: {value: /threshold}}]
      backends: [{pool: web}]
      lanes: {slowThreshold: 2s}
    - name: plain
      backends: [{pool: web}]
      lanes: {}
"#,
    );
    assert!(out.diagnostics.is_empty(), "{:?}", out.diagnostics);
    assert_eq!(
        forward(&out, "fixed").hedge,
        Some(HedgePolicy {
            after: HedgeAfter::DelayMs(50),
            max_extra_attempts: 2
        })
    );
    assert_eq!(
        forward(&out, "tail").hedge,
        Some(HedgePolicy {
            after: HedgeAfter::Percentile(99),
            max_extra_attempts: 1
        }),
        "maxExtraAttempts defaults to 1"
    );
    assert_eq!(
        forward(&out, "bulkhead").lanes,
        Some(RouteLanes {
            max_in_flight: Some(3),
            slow_threshold_ms: Some(250)
        })
    );
    assert_eq!(
        forward(&out, "threshold-only").lanes,
        Some(RouteLanes {
            max_in_flight: None,
            slow_threshold_ms: Some(2000)
        })
    );
    let plain = forward(&out, "plain");
    assert_eq!((&plain.hedge, &plain.lanes), (&None, &None));
    // On the wire: the settings under their own names, nothing for the plain rule.
    let json = serde_json::to_string(&out.table).unwrap();
    assert!(
        json.contains(r#""hedge":{"after":{"delayMs":50},"maxExtraAttempts":2}"#),
        "{json}"
    );
    assert!(
        json.contains(r#""lanes":{"maxInFlight":3,"slowThresholdMs":250}"#),
        "{json}"
    );
    Snapshot::new(1, out.table).validate().expect("validates");
}

#[test]
fn what_the_schema_would_refuse_is_reported_and_left_out() {
    // A standalone file reaches the compiler without the API server's checks.
    let out = compile_rules(
        r#"
    - name: both
      matches: [{path: {value: /both}}]
      backends: [{pool: web}]
      hedge: {delay: 50ms, percentile: 95}
    - name: neither
      matches: [{path: {value: /neither}}]
      backends: [{pool: web}]
      hedge: {maxExtraAttempts: 2}
    - name: p100
      matches: [{path: {value: /p100}}]
      backends: [{pool: web}]
      hedge: {percentile: 100}
    - name: four
      matches: [{path: {value: /four}}]
      backends: [{pool: web}]
      hedge: {delay: 10ms, maxExtraAttempts: 4}
    - name: closed
      matches: [{path: {value: /closed}}]
      backends: [{pool: web}]
      lanes: {maxInFlight: 0, slowThreshold: 0s}
    - name: half
      matches: [{path: {value: /half}}]
      backends: [{pool: web}]
      lanes: {maxInFlight: 0, slowThreshold: 300ms}
"#,
    );
    let mut errors = reasons(&out, Severity::Error);
    errors.sort();
    assert_eq!(
        errors,
        [
            [Reason::InvalidHedge; 4].as_slice(),
            &[Reason::InvalidLanes; 3]
        ]
        .concat()
    );
    for rule in ["both", "neither", "p100", "four"] {
        assert_eq!(forward(&out, rule).hedge, None, "{rule}");
    }
    assert_eq!(forward(&out, "closed").lanes, None);
    // The valid half of a setting stays.
    assert_eq!(
        forward(&out, "half").lanes,
        Some(RouteLanes {
            max_in_flight: None,
            slow_threshold_ms: Some(300)
        })
    );
    let (reason, message) = out
        .diagnostics
        .condition("ApiRoute", "default", "r", ConditionKind::Accepted)
        .expect("Accepted is false");
    assert_eq!(reason, Reason::InvalidHedge);
    for fix in [
        "rule both: hedge takes exactly one of delay or percentile; set one of them",
        "rule neither: hedge takes exactly one of delay or percentile",
        "rule p100: hedge.percentile 100 is not between 50 and 99",
        "rule four: hedge.maxExtraAttempts 4 is not between 1 and 3",
        "rule closed: lanes.maxInFlight 0 would refuse every request; set it to 1 or more",
        "rule closed: lanes.slowThreshold 0s",
    ] {
        assert!(message.contains(fix), "{fix:?} missing from {message}");
    }
    Snapshot::new(1, out.table).validate().expect("validates");
}

#[test]
fn settings_that_cannot_take_effect_are_warned_about() {
    let out = compile_rules(
        r#"
    - name: late
      matches: [{path: {value: /late}}]
      backends: [{pool: web}]
      timeout: 1s
      hedge: {delay: 1s}
    - name: posts
      matches: [{path: {value: /posts}, methods: [POST]}, {path: {value: /patches}, methods: [PATCH]}]
      backends: [{pool: web}]
      hedge: {percentile: 95}
    - name: posts-allowed
      matches: [{path: {value: /posts-allowed}, methods: [POST]}]
      backends: [{pool: web}]
      retries: {nonIdempotent: true}
      hedge: {percentile: 95}
    - name: mixed
      matches: [{path: {value: /mixed}, methods: [POST]}, {path: {value: /gets}, methods: [GET]}]
      backends: [{pool: web}]
      hedge: {percentile: 95}
    - name: never-slow
      matches: [{path: {value: /never-slow}}]
      backends: [{pool: web}]
      timeout: 2s
      lanes: {slowThreshold: 2s}
"#,
    );
    assert_eq!(reasons(&out, Severity::Error), []);
    let warned: Vec<String> = out
        .diagnostics
        .iter()
        .map(|d| format!("{:?} {}", d.reason, d.message))
        .collect();
    assert_eq!(warned.len(), 3, "{warned:#?}");
    for want in [
        "InvalidHedge rule late: hedge.delay 1s is not shorter than the rule's timeout 1s",
        "InvalidHedge rule posts: hedge has no effect",
        "InvalidLanes rule never-slow: lanes.slowThreshold 2s is not below the rule's timeout 2s",
    ] {
        assert!(
            warned.iter().any(|w| w.starts_with(want)),
            "{want:?} not in {warned:#?}"
        );
    }
    // Warnings change nothing that serves.
    assert!(forward(&out, "late").hedge.is_some());
    assert!(forward(&out, "posts").hedge.is_some());
    assert!(forward(&out, "never-slow").lanes.is_some());
    assert!(
        out.diagnostics
            .condition("ApiRoute", "default", "r", ConditionKind::Accepted)
            .is_none()
    );
}

/// A table as a data plane received it before `hedge` and `lanes` existed: compact JSON,
/// fields in declaration order.
const OLDER_TABLE: &str = concat!(
    r#"{"format":1,"virtualHosts":[{"domain":"a.example","routes":[{"name":"default/r/0","#,
    r#""matcher":{"path":{"prefix":"/"}},"action":{"forward":{"backends":[{"cluster":"default/web","weight":1}],"#,
    r#""timeoutMs":15000,"retry":{"attempts":2,"on":["connectFailure"],"perTryTimeoutMs":15000,"#,
    r#""backoffBaseMs":25,"backoffMaxMs":250,"budgetPercent":20,"budgetMinPerSecond":10,"nonIdempotent":false},"#,
    r#""cachePolicy":"default/c","upgrades":["websocket"]}}}]}],"#,
    r#""clusters":[{"name":"default/web","endpoints":[{"address":"127.0.0.1","port":8080,"weight":1,"#,
    r#""ready":true,"serving":true,"terminating":false}],"loadBalancing":{"algorithm":"roundRobin"},"#,
    r#""connectTimeoutMs":1000,"protocol":"http1"}],"cachePolicies":[{"name":"default/c","mode":"fixed","#,
    r#""ttlMs":5000,"minTtlMs":1000,"maxTtlMs":3600000,"adaptiveTtl":false,"refreshAhead":false,"#,
    r#""staleWhileRevalidateMs":0,"staleIfErrorMs":0,"includeQuery":true,"methods":["GET"],"statuses":[200],"#,
    r#""maxEntryBytes":1048576,"ignoreOriginNoStore":false,"cacheAuthorized":false,"coalesceTimeoutMs":5000}],"#,
    r#""sources":[]}"#
);

#[test]
fn tables_without_the_fields_parse_unchanged_in_the_same_format() {
    let table: Table = serde_json::from_str(OLDER_TABLE).expect("an older table parses");
    let RouteAction::Forward(f) = &table.virtual_hosts[0].routes[0].action else {
        panic!("forward action")
    };
    assert_eq!((&f.hedge, &f.lanes), (&None, &None));
    // Its hash, as its pusher computed it, is still what the data plane computes.
    assert_eq!(
        table.content_hash(),
        hex::encode(Sha256::digest(OLDER_TABLE.as_bytes()))
    );
    assert_eq!(FORMAT_VERSION, 1, "optional fields never bump the format");
    Snapshot::new(1, table).validate().expect("validates");
}

#[test]
fn a_pushed_table_with_settings_out_of_range_is_refused() {
    let mut table: Table = serde_json::from_str(OLDER_TABLE).unwrap();
    let RouteAction::Forward(f) = &mut table.virtual_hosts[0].routes[0].action else {
        panic!("forward action")
    };
    f.hedge = Some(HedgePolicy {
        after: HedgeAfter::Percentile(100),
        max_extra_attempts: 0,
    });
    f.lanes = Some(RouteLanes {
        max_in_flight: Some(0),
        slow_threshold_ms: Some(0),
    });
    let reasons = Snapshot::new(1, table).validate().unwrap_err();
    assert_eq!(reasons.len(), 4, "{reasons:#?}");
    for want in [
        "route default/r/0 hedges after percentile 100, which is not between 50 and 99",
        "route default/r/0 allows 0 hedges per request, which is not between 1 and 3",
        "maxInFlight 0",
        "slowThresholdMs 0",
    ] {
        assert!(
            reasons.iter().any(|r| r.contains(want)),
            "{want:?} not in {reasons:#?}"
        );
    }
}
