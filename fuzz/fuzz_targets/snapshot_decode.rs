//! A pushed snapshot body through the admin API's decoder (gzip, zstd or none; a full table
//! or a delta), then validation and the table build that applying it runs. The first byte:
//! bit 0 marks the body as gzip and bit 2 as zstd (gzip wins when both are set); bit 1
//! compresses the rest first with that coding (so JSON reaches the parser through the
//! decompressor too); bit 3 reads it as a delta against a small table. A plain body within
//! the limit is never too large.
#![no_main]

use libfuzzer_sys::fuzz_target;
use parapet_crds::snapshot::{
    FORMAT_VERSION, Snapshot, SourceRef, Table,
    wire::{Coding, WireError},
};
use parapet_dataplane::{
    endpoint::EndpointRegistry,
    fuzzing::{DecodeError, decode_delta, decode_snapshot},
    metrics::Metrics,
    router::Router,
    snapshot::{BuildOptions, LiveState, Runtime},
    upstream::ClientPool,
};

const MAX: usize = 64 * 1024;

/// The table deltas apply to: version 1, one source.
fn base() -> Snapshot {
    Snapshot::new(
        1,
        Table {
            format: FORMAT_VERSION,
            sources: vec![SourceRef {
                kind: "ApiRoute".into(),
                namespace: "ns".into(),
                name: "r".into(),
                generation: 1,
            }],
            ..Table::default()
        },
    )
}

fuzz_target!(|data: &[u8]| {
    let [flags, rest @ ..] = data else {
        return;
    };
    let coding = if flags & 1 == 1 {
        Coding::Gzip
    } else if flags & 4 == 4 {
        Coding::Zstd
    } else {
        Coding::Identity
    };
    let body = if flags & 2 == 2 {
        coding.encode(rest)
    } else {
        rest.to_vec()
    };
    let decoded = if flags & 8 == 8 {
        decode_delta(&body, coding, MAX).map(|d| {
            let base = base();
            let rebuilt = d.apply(&base);
            // Whatever a delta says, what it makes has the hash it names.
            if let Ok(s) = &rebuilt {
                assert_eq!(s.table.content_hash(), s.hash);
            }
            rebuilt.unwrap_or(base)
        })
    } else {
        decode_snapshot(&body, coding, MAX)
    };
    let mut snapshot = match decoded {
        Ok(s) => s,
        Err(DecodeError::Wire(WireError::TooLarge { .. })) => {
            assert!(
                coding != Coding::Identity || body.len() > MAX,
                "a plain body within the limit was called too large"
            );
            return;
        }
        Err(_) => return,
    };
    // Mutated tables reach the build too, not only those whose hash still matches.
    snapshot.hash = snapshot.table.content_hash();
    if snapshot.validate().is_ok() {
        let _ = Router::new(&snapshot.table);
        let _ = Runtime::build(
            snapshot,
            &EndpointRegistry::default(),
            &LiveState::default(),
            &ClientPool::default(),
            &Metrics::new(),
            &BuildOptions::default(),
        );
    }
});
