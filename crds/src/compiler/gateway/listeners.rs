//! A Gateway's listeners: which are usable, what may attach to them, their certificates,
//! and the status conditions that say so.

use std::collections::BTreeMap;

use super::{Condition, GatewayInputs, ListenerStatus, RouteGroupKind, refs};
use crate::{
    api::Object,
    compiler::Inputs,
    gateway_api::{
        GROUP,
        gateways::{
            GatewayListeners, GatewayListenersAllowedRoutesNamespacesFrom, GatewayListenersTlsMode,
            GatewaySpec,
        },
    },
    snapshot::{CertificatePair, ListenerProtocol},
};

const ROUTE_KINDS: [&str; 2] = ["HTTPRoute", "GRPCRoute"];

/// Which namespaces' routes a listener takes.
#[derive(Clone, Debug)]
pub enum AllowedNamespaces {
    Same,
    All,
    /// A label selector over the namespace's labels.
    Selector(LabelSelector),
}

#[derive(Clone, Debug, Default)]
pub struct LabelSelector {
    pub match_labels: BTreeMap<String, String>,
    /// (key, operator, values)
    pub match_expressions: Vec<(String, String, Vec<String>)>,
}

impl LabelSelector {
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
            && self.match_expressions.iter().all(|(k, op, values)| {
                let value = labels.get(k);
                match op.as_str() {
                    "In" => value.is_some_and(|v| values.contains(v)),
                    "NotIn" => value.is_none_or(|v| !values.contains(v)),
                    "Exists" => value.is_some(),
                    "DoesNotExist" => value.is_none(),
                    // An operator the API server would refuse selects nothing.
                    _ => false,
                }
            })
    }
}

/// A problem with a listener: a condition reason and a sentence.
#[derive(Clone, Debug)]
pub struct Problem {
    pub reason: &'static str,
    pub message: String,
}

fn problem(reason: &'static str, message: impl Into<String>) -> Problem {
    Problem {
        reason,
        message: message.into(),
    }
}

#[derive(Clone, Debug)]
pub struct ListenerModel {
    pub name: String,
    pub port: u16,
    /// `None`: a protocol Parapet does not serve.
    pub protocol: Option<ListenerProtocol>,
    pub hostname: Option<String>,
    pub namespaces: AllowedNamespaces,
    pub kinds: Vec<RouteGroupKind>,
    pub certificate: Option<CertificatePair>,
    pub generation: i64,
    /// Problems that keep the listener from being accepted (unsupported protocol, TLS mode).
    pub refused: Option<Problem>,
    /// Problems with its references (route kinds, certificates).
    pub unresolved: Option<Problem>,
    pub conflict: Option<Problem>,
    pub attached_routes: i32,
}

impl ListenerModel {
    /// Whether routes may attach (and be counted): accepted and not in conflict.
    pub fn accepts_routes(&self) -> bool {
        self.refused.is_none() && self.conflict.is_none()
    }

    /// Whether its fleet serves it.
    pub fn programmed(&self) -> bool {
        self.accepts_routes() && self.unresolved.is_none()
    }

    pub fn allows_kind(&self, kind: &str) -> bool {
        self.kinds
            .iter()
            .any(|k| k.group == GROUP && k.kind == kind)
    }

    pub fn status(&self) -> ListenerStatus {
        let g = self.generation;
        let accepted = match &self.refused {
            Some(p) => Condition::new("Accepted", false, p.reason, p.message.clone(), g),
            None => Condition::new("Accepted", true, "Accepted", "the listener is valid", g),
        };
        let resolved = match &self.unresolved {
            Some(p) => Condition::new("ResolvedRefs", false, p.reason, p.message.clone(), g),
            None => Condition::new(
                "ResolvedRefs",
                true,
                "ResolvedRefs",
                "every reference resolved",
                g,
            ),
        };
        let conflicted = match &self.conflict {
            Some(p) => Condition::new("Conflicted", true, p.reason, p.message.clone(), g),
            None => Condition::new(
                "Conflicted",
                false,
                "NoConflicts",
                "no other listener conflicts with this one",
                g,
            ),
        };
        let programmed = if self.programmed() {
            Condition::new(
                "Programmed",
                true,
                "Programmed",
                "the listener is in the fleet's table",
                g,
            )
        } else {
            Condition::new(
                "Programmed",
                false,
                "Invalid",
                "the listener is not served until the conditions above are fixed",
                g,
            )
        };
        ListenerStatus {
            name: self.name.clone(),
            supported_kinds: if self.refused.is_some() {
                Vec::new()
            } else {
                self.kinds.clone()
            },
            attached_routes: self.attached_routes,
            conditions: vec![accepted, resolved, programmed, conflicted],
        }
    }
}

/// Checks each listener of a Gateway, then the conflicts between them.
pub fn validate(
    g: &Object<GatewaySpec>,
    gw: &GatewayInputs<'_>,
    inputs: &Inputs<'_>,
) -> Vec<ListenerModel> {
    let generation = g.metadata.generation.unwrap_or(0);
    let mut models: Vec<ListenerModel> = g
        .spec
        .listeners
        .iter()
        .map(|l| listener(g, l, generation, gw, inputs))
        .collect();
    conflicts(&mut models);
    models
}

fn listener(
    g: &Object<GatewaySpec>,
    l: &GatewayListeners,
    generation: i64,
    gw: &GatewayInputs<'_>,
    inputs: &Inputs<'_>,
) -> ListenerModel {
    let mut refused = None;
    let protocol = match l.protocol.as_str() {
        "HTTP" => Some(ListenerProtocol::Http),
        "HTTPS" => Some(ListenerProtocol::Https),
        other => {
            refused = Some(problem(
                "UnsupportedProtocol",
                format!(
                    "protocol {other} is not supported; Parapet serves HTTP and HTTPS listeners"
                ),
            ));
            None
        }
    };
    let port = u16::try_from(l.port)
        .ok()
        .filter(|p| *p > 0)
        .unwrap_or_else(|| {
            refused.get_or_insert(problem(
                "PortUnavailable",
                format!("port {} is not a TCP port", l.port),
            ));
            0
        });

    let (kinds, mut unresolved) = route_kinds(l);
    let mut certificate = None;
    if protocol == Some(ListenerProtocol::Https) {
        let tls = l.tls.as_ref();
        if matches!(
            tls.and_then(|t| t.mode.as_ref()),
            Some(GatewayListenersTlsMode::Passthrough)
        ) {
            refused.get_or_insert(problem(
                "UnsupportedValue",
                "tls.mode Passthrough is not supported on HTTPS listeners; use Terminate",
            ));
        }
        match refs::listener_certificate(
            g,
            tls.and_then(|t| t.certificate_refs.as_deref())
                .unwrap_or(&[]),
            gw,
            inputs,
        ) {
            Ok(pair) => certificate = Some(pair),
            Err(p) => {
                unresolved.get_or_insert(p);
            }
        }
    }

    let namespaces = l
        .allowed_routes
        .as_ref()
        .and_then(|a| a.namespaces.as_ref())
        .map(|n| match n.from {
            Some(GatewayListenersAllowedRoutesNamespacesFrom::All) => AllowedNamespaces::All,
            Some(GatewayListenersAllowedRoutesNamespacesFrom::Selector) => {
                let s = n.selector.as_ref();
                AllowedNamespaces::Selector(LabelSelector {
                    match_labels: s.and_then(|s| s.match_labels.clone()).unwrap_or_default(),
                    match_expressions: s
                        .and_then(|s| s.match_expressions.as_ref())
                        .map(|e| {
                            e.iter()
                                .map(|e| {
                                    (
                                        e.key.clone(),
                                        e.operator.clone(),
                                        e.values.clone().unwrap_or_default(),
                                    )
                                })
                                .collect()
                        })
                        .unwrap_or_default(),
                })
            }
            _ => AllowedNamespaces::Same,
        })
        .unwrap_or(AllowedNamespaces::Same);

    ListenerModel {
        name: l.name.clone(),
        port,
        protocol,
        hostname: l.hostname.as_ref().map(|h| h.to_ascii_lowercase()),
        namespaces,
        kinds,
        certificate,
        generation,
        refused,
        unresolved,
        conflict: None,
        attached_routes: 0,
    }
}

/// The route kinds a listener takes: those it names that Parapet serves, or both kinds
/// when it names none.
fn route_kinds(l: &GatewayListeners) -> (Vec<RouteGroupKind>, Option<Problem>) {
    let named = l.allowed_routes.as_ref().and_then(|a| a.kinds.as_ref());
    let Some(named) = named.filter(|k| !k.is_empty()) else {
        let kinds = ROUTE_KINDS
            .iter()
            .map(|k| RouteGroupKind {
                group: GROUP.to_string(),
                kind: k.to_string(),
            })
            .collect();
        return (kinds, None);
    };
    let mut kinds = Vec::new();
    let mut invalid = Vec::new();
    for k in named {
        let group = k.group.as_deref().unwrap_or(GROUP);
        if group == GROUP && ROUTE_KINDS.contains(&k.kind.as_str()) {
            kinds.push(RouteGroupKind {
                group: GROUP.to_string(),
                kind: k.kind.clone(),
            });
        } else {
            invalid.push(format!("{group}/{}", k.kind));
        }
    }
    let problem = (!invalid.is_empty()).then(|| {
        problem(
            "InvalidRouteKinds",
            format!(
                "allowedRoutes.kinds names {}, which Parapet does not serve; use HTTPRoute or GRPCRoute",
                invalid.join(", ")
            ),
        )
    });
    (kinds, problem)
}

/// Listeners on one port must agree on the protocol, and differ in hostname.
fn conflicts(models: &mut [ListenerModel]) {
    let n = models.len();
    for i in 0..n {
        for j in 0..n {
            if i == j
                || models[i].refused.is_some()
                || models[j].refused.is_some()
                || models[i].port != models[j].port
            {
                continue;
            }
            if models[i].protocol != models[j].protocol {
                let other = models[j].name.clone();
                models[i].conflict.get_or_insert(problem(
                    "ProtocolConflict",
                    format!("listener {other} uses the same port with another protocol; give one of them another port"),
                ));
            } else if models[i].hostname == models[j].hostname && j < i {
                let other = models[j].name.clone();
                models[i].conflict.get_or_insert(problem(
                    "HostnameConflict",
                    format!("listener {other} already serves this port and hostname; change the hostname or the port"),
                ));
            }
        }
    }
}

/// The Gateway's own conditions: Accepted unless no listener is; Programmed when some
/// listener is (the operator turns it false until the fleet has an address and is ready).
pub fn gateway_conditions(g: &Object<GatewaySpec>, models: &[ListenerModel]) -> Vec<Condition> {
    let generation = g.metadata.generation.unwrap_or(0);
    let usable = models.iter().filter(|m| m.accepts_routes()).count();
    let parameters = g
        .spec
        .infrastructure
        .as_ref()
        .and_then(|i| i.parameters_ref.as_ref());
    let accepted = if let Some(p) = parameters {
        Condition::new(
            "Accepted",
            false,
            "InvalidParameters",
            format!(
                "spec.infrastructure.parametersRef ({}/{} {}) is not supported; shape the fleet with the GatewayClass's parametersRef (a ConfigMap) instead",
                p.group, p.kind, p.name
            ),
            generation,
        )
    } else if models.is_empty() || usable == 0 {
        Condition::new(
            "Accepted",
            false,
            "ListenersNotValid",
            "no listener is valid; see status.listeners for what to fix",
            generation,
        )
    } else if usable < models.len() {
        Condition::new(
            "Accepted",
            true,
            "ListenersNotValid",
            "some listeners are not valid and are not served; see status.listeners",
            generation,
        )
    } else {
        Condition::new(
            "Accepted",
            true,
            "Accepted",
            "the Gateway is valid",
            generation,
        )
    };
    let programmed = if models.iter().any(ListenerModel::programmed) {
        Condition::new(
            "Programmed",
            true,
            "Programmed",
            "the Gateway's table is compiled",
            generation,
        )
    } else {
        Condition::new(
            "Programmed",
            false,
            "Invalid",
            "no listener can be served",
            generation,
        )
    };
    vec![accepted, programmed]
}
