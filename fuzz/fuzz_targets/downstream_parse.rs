//! The downstream codec's head parser alone (fast): refuse, hand off, or serve. A head it
//! serves carries no body (no Transfer-Encoding, no Content-Length but 0), and parsing
//! just that head again gives the same request.
#![no_main]

use http::header;
use libfuzzer_sys::fuzz_target;
use parapet_dataplane::fuzzing::{HeadDecision, parse_request_head};

fuzz_target!(|data: &[u8]| {
    let HeadDecision::Served(len, req) = parse_request_head(data, 8192, 16) else {
        return;
    };
    assert!(len <= data.len() && len <= 8192);
    assert!(!req.headers().contains_key(header::TRANSFER_ENCODING));
    for v in req.headers().get_all(header::CONTENT_LENGTH) {
        assert_eq!(
            v.as_bytes().trim_ascii(),
            b"0",
            "a served head with a body length"
        );
    }
    let HeadDecision::Served(again, req2) = parse_request_head(&data[..len], 8192, 16) else {
        panic!("the head alone is not served as it was with bytes after it");
    };
    assert_eq!(again, len);
    assert_eq!(req.method(), req2.method());
    assert_eq!(req.uri(), req2.uri());
    assert_eq!(req.headers(), req2.headers());
});
