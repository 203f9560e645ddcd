//! `parapet status`: one line per data-plane pod (from the fleet view the operator writes)
//! and one per resource (from its conditions), or the same as JSON.

use std::io::IsTerminal;

use anyhow::{Context, Result};
use k8s_openapi::jiff::Timestamp;
use kube::{Client, api::ListParams};
use parapet_crds::fleet::FleetStatus;
use serde::Serialize;
use serde_json::Value;

use crate::{cluster, kinds, objects, restore::short};

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    /// `None`: the operator has not written the fleet view (not running, or not leading).
    pub fleet: Option<FleetStatus>,
    pub resources: Vec<Resource>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Resource {
    pub kind: String,
    pub namespace: String,
    pub name: String,
    pub generation: i64,
    /// `True`, `False` or `Unknown` (no condition yet).
    pub accepted: String,
    pub programmed: String,
    /// The Programmed condition's message (`2/3 pods serve generation 4`), else Accepted's.
    pub message: String,
}

pub async fn gather(
    client: &Client,
    operator_namespace: &str,
    namespaces: &[String],
) -> Result<Status> {
    let fleet = cluster::fleet_status(client, operator_namespace).await?;
    let mut resources = Vec::new();
    for kind in kinds::ALL
        .iter()
        .filter(|k| !k.gateway_api || k.kind == "Gateway")
    {
        for api in kind.apis(client, namespaces) {
            let list = match api.list(&ListParams::default()).await {
                Ok(l) => l,
                // Gateway API not installed.
                Err(kube::Error::Api(e)) if e.code == 404 && kind.gateway_api => continue,
                Err(e) => return Err(e).with_context(|| format!("cannot list {}", kind.plural)),
            };
            for o in list.items {
                let v = serde_json::to_value(&o).expect("objects serialise");
                let cond = |t: &str| {
                    v.pointer("/status/conditions")
                        .and_then(Value::as_array)
                        .and_then(|cs| cs.iter().find(|c| c["type"] == t))
                        .cloned()
                };
                let (acc, prog) = (cond("Accepted"), cond("Programmed"));
                let status_of = |c: &Option<Value>| {
                    c.as_ref()
                        .and_then(|c| c["status"].as_str())
                        .unwrap_or("Unknown")
                        .to_string()
                };
                let message = prog
                    .as_ref()
                    .or(acc.as_ref())
                    .and_then(|c| c["message"].as_str())
                    .unwrap_or("")
                    .to_string();
                resources.push(Resource {
                    kind: kind.kind.to_string(),
                    namespace: objects::namespace(&v).unwrap_or("").to_string(),
                    name: objects::name(&v).to_string(),
                    generation: v
                        .pointer("/metadata/generation")
                        .and_then(Value::as_i64)
                        .unwrap_or(0),
                    accepted: status_of(&acc),
                    programmed: status_of(&prog),
                    message,
                });
            }
        }
    }
    Ok(Status { fleet, resources })
}

/// Colours only for a terminal, and never with `NO_COLOR` set (no-color.org).
pub fn colour_wanted() -> bool {
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

pub fn render(s: &Status, colour: bool, now: Timestamp) -> String {
    let paint = |ok: bool, text: &str| {
        if !colour {
            text.to_string()
        } else if ok {
            format!("\x1b[32m{text}\x1b[0m")
        } else {
            format!("\x1b[31m{text}\x1b[0m")
        }
    };
    let mut pods = vec![vec![
        "FLEET".to_string(),
        "POD".into(),
        "READY".into(),
        "ZONE".into(),
        "VERSION".into(),
        "HASH".into(),
        "IN SYNC".into(),
        "LAST PUSH".into(),
    ]];
    let mut colours = vec![None];
    let mut out = String::new();
    match &s.fleet {
        None => out.push_str(
            "no fleet view: the operator has not written one (is it running, and leading?)\n\n",
        ),
        Some(f) => {
            for fleet in &f.fleets {
                for p in &fleet.pods {
                    let synced = fleet
                        .desired
                        .as_ref()
                        .is_some_and(|d| d.version == p.version && d.hash == p.hash);
                    let last = match &p.last_push {
                        None => "-".to_string(),
                        Some(l) => {
                            let age =
                                l.at.parse::<Timestamp>()
                                    .map(|t| age(now.duration_since(t).as_secs()))
                                    .unwrap_or_else(|_| "?".into());
                            match (&l.error, l.ok) {
                                (_, true) => format!("ok {age} ago"),
                                (Some(e), false) => {
                                    format!("failed {age} ago ({} in a row): {e}", l.failures)
                                }
                                (None, false) => format!("failed {age} ago"),
                            }
                        }
                    };
                    pods.push(vec![
                        fleet.name.clone(),
                        p.name.clone(),
                        yes(p.ready).into(),
                        p.zone.clone().unwrap_or_else(|| "-".into()),
                        p.version.to_string(),
                        short(&p.hash).to_string(),
                        yes(synced).into(),
                        last,
                    ]);
                    colours.push(Some((p.ready, synced)));
                }
            }
        }
    }
    if pods.len() > 1 {
        out.push_str(&table(&pods, |row, col, cell| match (colours[row], col) {
            (Some((ready, _)), 2) => paint(ready, cell),
            (Some((_, synced)), 6) => paint(synced, cell),
            _ => cell.to_string(),
        }));
        out.push('\n');
    }
    let mut rows = vec![vec![
        "KIND".to_string(),
        "NAMESPACE".into(),
        "NAME".into(),
        "ACCEPTED".into(),
        "PROGRAMMED".into(),
        "MESSAGE".into(),
    ]];
    for r in &s.resources {
        rows.push(vec![
            r.kind.clone(),
            r.namespace.clone(),
            r.name.clone(),
            r.accepted.clone(),
            r.programmed.clone(),
            r.message.clone(),
        ]);
    }
    out.push_str(&table(&rows, |row, col, cell| {
        if row > 0 && (col == 3 || col == 4) {
            paint(cell == "True", cell)
        } else {
            cell.to_string()
        }
    }));
    out
}

fn yes(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

fn age(secs: i64) -> String {
    match secs.max(0) {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s => format!("{}h", s / 3600),
    }
}

/// Columns padded to their widest cell (measured before colouring); the last unpadded.
fn table(rows: &[Vec<String>], paint: impl Fn(usize, usize, &str) -> String) -> String {
    let cols = rows.first().map_or(0, Vec::len);
    let widths: Vec<usize> = (0..cols)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for (i, r) in rows.iter().enumerate() {
        for (c, cell) in r.iter().enumerate() {
            out.push_str(&paint(i, c, cell));
            if c + 1 < cols {
                out.push_str(&" ".repeat(widths[c] - cell.chars().count() + 2));
            }
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use parapet_crds::fleet::{FleetReport, PodReport, PushReport, TableRef};

    fn status() -> Status {
        let desired = TableRef {
            version: 7,
            hash: "a".repeat(64),
            config_hash: "c".repeat(64),
            routes: 3,
        };
        let pod = |name: &str, version: u64, ok: bool| PodReport {
            name: name.into(),
            address: "10.0.0.1:9901".into(),
            ready: ok,
            zone: Some("z1".into()),
            version,
            hash: if version == 7 {
                "a".repeat(64)
            } else {
                "b".repeat(64)
            },
            last_push: Some(PushReport {
                at: "2026-12-04T10:00:00Z".into(),
                ok,
                error: (!ok).then(|| "connection refused".into()),
                failures: if ok { 0 } else { 3 },
            }),
        };
        Status {
            fleet: Some(FleetStatus {
                updated_at: "2026-12-04T10:00:01Z".into(),
                operator: "op-0".into(),
                fleets: vec![FleetReport {
                    name: "default".into(),
                    desired: Some(desired),
                    pods: vec![pod("dp-a", 7, true), pod("dp-b", 6, false)],
                }],
            }),
            resources: vec![Resource {
                kind: "ApiRoute".into(),
                namespace: "shop".into(),
                name: "api".into(),
                generation: 2,
                accepted: "True".into(),
                programmed: "False".into(),
                message: "1/2 pods serve generation 2".into(),
            }],
        }
    }

    #[test]
    fn one_line_per_pod_and_per_resource_and_colour_only_when_asked() {
        let now: Timestamp = "2026-12-04T10:01:30Z".parse().unwrap();
        let plain = render(&status(), false, now);
        let lines: Vec<&str> = plain.lines().collect();
        assert!(lines[0].starts_with("FLEET"), "{plain}");
        assert!(
            lines[1].contains("dp-a")
                && lines[1].contains(" yes ")
                && lines[1].contains("ok 90s ago"),
            "{plain}"
        );
        assert!(
            lines[2].contains("dp-b")
                && lines[2].contains("failed 90s ago (3 in a row): connection refused"),
            "{plain}"
        );
        assert!(lines[2].contains(" no "), "{plain}");
        assert!(plain.contains("1/2 pods serve generation 2"), "{plain}");
        assert!(!plain.contains('\x1b'), "{plain}");
        // The columns line up: POD starts at the same place on every pod line.
        let at = lines[0].find("POD").unwrap();
        assert_eq!(&lines[1][at..at + 4], "dp-a");
        let coloured = render(&status(), true, now);
        assert!(coloured.contains("\x1b[31mno\x1b[0m") && coloured.contains("\x1b[32myes\x1b[0m"));
    }
}
