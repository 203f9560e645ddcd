//! A pushed snapshot body through the admin API's decoder (gzip or not, JSON), then
//! validation and the table build that applying it runs. The first byte: bit 0 marks the
//! body as gzip, bit 1 compresses the rest first (so JSON reaches the parser through the
//! decompressor too). A plain body within the limit is never too large.
#![no_main]

use std::io::Write;

use libfuzzer_sys::fuzz_target;
use parapet_dataplane::{
    endpoint::EndpointRegistry,
    fuzzing::{DecodeError, decode_snapshot},
    metrics::Metrics,
    router::Router,
    snapshot::{BuildOptions, LiveState, Runtime},
    upstream::ClientPool,
};

const MAX: usize = 64 * 1024;

fuzz_target!(|data: &[u8]| {
    let [flags, rest @ ..] = data else {
        return;
    };
    let gzip = flags & 1 == 1;
    let body = if flags & 2 == 2 {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(rest).unwrap();
        enc.finish().unwrap()
    } else {
        rest.to_vec()
    };
    let mut snapshot = match decode_snapshot(&body, gzip, MAX) {
        Ok(s) => s,
        Err(DecodeError::TooLarge { .. }) => {
            assert!(
                gzip || body.len() > MAX,
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
