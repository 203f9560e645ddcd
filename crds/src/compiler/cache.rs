//! CachePolicy → snapshot cache settings, defaults applied.

use super::{name, ns, qualified};
use crate::{
    Duration,
    api::{self, CacheMethod, CachePolicySpec, Object},
    snapshot::{CacheMode, CachePolicy},
};

pub const DEFAULT_STATUSES: [u16; 7] = [200, 203, 204, 300, 301, 404, 410];
pub const DEFAULT_MAX_ENTRY_BYTES: u64 = 1 << 20;
const DEFAULT_TTL: Duration = Duration::from_secs(60);
const DEFAULT_HEURISTIC_PERCENT: u8 = 10;
const DEFAULT_HEURISTIC_MAX: Duration = Duration::from_secs(24 * 3600);
const DEFAULT_KEEP_STALE: Duration = Duration::from_secs(24 * 3600);
const DEFAULT_MIN_TTL: Duration = Duration::from_secs(1);
const DEFAULT_MAX_TTL: Duration = Duration::from_secs(3600);
const DEFAULT_COALESCE: Duration = Duration::from_secs(5);

pub(super) fn compile_policies(policies: &[&Object<CachePolicySpec>]) -> Vec<CachePolicy> {
    let mut out: Vec<CachePolicy> = policies.iter().map(|p| compile_policy(p)).collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out.dedup_by(|a, b| a.name == b.name);
    out
}

fn compile_policy(p: &Object<CachePolicySpec>) -> CachePolicy {
    let s = &p.spec;
    let ms = |d: Option<Duration>, default: Duration| d.unwrap_or(default).as_millis();
    let mode = match s.mode {
        api::CacheMode::Fixed => CacheMode::Fixed,
        api::CacheMode::Auto => CacheMode::Auto,
    };
    let ttl_ms = match mode {
        // The schema requires ttl in Fixed mode; a file that omits it gets the default.
        CacheMode::Fixed => ms(s.ttl, DEFAULT_TTL),
        // No invented freshness unless the operator asks for it.
        CacheMode::Auto => ms(s.default_ttl.or(s.ttl), Duration::default()),
    };
    let min_ttl_ms = ms(s.min_ttl, DEFAULT_MIN_TTL);
    let max_ttl_ms = ms(s.max_ttl, DEFAULT_MAX_TTL).max(min_ttl_ms);
    let key = s.key.clone().unwrap_or_default();
    let mut methods: Vec<String> = s
        .methods
        .clone()
        .unwrap_or_else(|| vec![CacheMethod::Get, CacheMethod::Head])
        .iter()
        .map(|m| match m {
            CacheMethod::Get => "GET".to_string(),
            CacheMethod::Head => "HEAD".to_string(),
        })
        .collect();
    methods.sort();
    methods.dedup();
    let mut statuses: Vec<u16> = match &s.statuses {
        Some(v) => v.iter().filter_map(|s| u16::try_from(*s).ok()).collect(),
        // Auto without a list follows RFC 9111's storable-status rules (empty list).
        None if mode == CacheMode::Auto => vec![],
        None => DEFAULT_STATUSES.to_vec(),
    };
    statuses.sort_unstable();
    statuses.dedup();
    let sorted = |v: Option<Vec<String>>, lower: bool| {
        let mut v: Vec<String> = v
            .unwrap_or_default()
            .into_iter()
            .map(|s| if lower { s.to_ascii_lowercase() } else { s })
            .collect();
        v.sort();
        v.dedup();
        v
    };
    CachePolicy {
        name: qualified(ns(&p.metadata), name(&p.metadata)),
        mode,
        ttl_ms,
        heuristic_percent: s
            .heuristic_percent
            .and_then(|p| u8::try_from(p.clamp(0, 100)).ok())
            .unwrap_or(DEFAULT_HEURISTIC_PERCENT),
        heuristic_max_ms: ms(s.heuristic_max_ttl, DEFAULT_HEURISTIC_MAX),
        keep_stale_ms: ms(s.keep_stale, DEFAULT_KEEP_STALE),
        min_ttl_ms,
        max_ttl_ms,
        adaptive_ttl: s.adaptive_ttl.unwrap_or(false),
        refresh_ahead: s.refresh_ahead.unwrap_or(false),
        stale_while_revalidate_ms: ms(s.stale_while_revalidate, Duration::default()),
        stale_if_error_ms: ms(s.stale_if_error, Duration::default()),
        include_query: key.include_query.unwrap_or(true),
        query_params: sorted(key.query_params, false),
        exclude_query_params: sorted(key.exclude_query_params, false),
        key_headers: sorted(key.headers, true),
        methods,
        statuses,
        max_entry_bytes: s
            .max_entry_bytes
            .and_then(|b| u64::try_from(b).ok())
            .filter(|b| *b > 0)
            .unwrap_or(DEFAULT_MAX_ENTRY_BYTES),
        ignore_origin_no_store: s.ignore_origin_no_store.unwrap_or(false),
        cache_authorized: s.cache_authorized.unwrap_or(false),
        // Coalescing is one of Parapet's extras: on by default where the operator sets the
        // freshness anyway (Fixed), asked for in Auto.
        coalesce_timeout_ms: ms(
            s.coalesce_timeout,
            if mode == CacheMode::Fixed {
                DEFAULT_COALESCE
            } else {
                Duration::default()
            },
        ),
    }
}
