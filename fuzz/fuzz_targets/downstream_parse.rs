//! The downstream codec's head parser alone (fast): refuse, hand off, or serve. A head it
//! serves has no Transfer-Encoding and at most one Content-Length, the length of the body
//! it read after the head (at most `MAX_BODY_BUFFERED`); parsing just those bytes again
//! gives the same request.
#![no_main]

use http::header;
use libfuzzer_sys::fuzz_target;
use parapet_dataplane::{
    downstream::http1::MAX_BODY_BUFFERED,
    fuzzing::{HeadDecision, parse_request_head},
};

fuzz_target!(|data: &[u8]| {
    let HeadDecision::Served(len, req) = parse_request_head(data, 8192, 16) else {
        return;
    };
    assert!(len <= data.len());
    assert!(!req.headers().contains_key(header::TRANSFER_ENCODING));
    let lengths: Vec<_> = req.headers().get_all(header::CONTENT_LENGTH).iter().collect();
    assert!(lengths.len() <= 1, "a served head with {} lengths", lengths.len());
    let declared = lengths.first().map_or(0, |v| {
        std::str::from_utf8(v.as_bytes())
            .expect("a served length is ASCII")
            .trim()
            .parse::<usize>()
            .expect("a served length is a number")
    });
    assert_eq!(req.body().len(), declared, "the body read is not the declared length");
    assert!(declared <= MAX_BODY_BUFFERED);
    assert!(len - declared <= 8192, "a head larger than the limit was served");
    let HeadDecision::Served(again, req2) = parse_request_head(&data[..len], 8192, 16) else {
        panic!("the head and body alone are not served as they were with bytes after them");
    };
    assert_eq!(again, len);
    assert_eq!(req.method(), req2.method());
    assert_eq!(req.uri(), req2.uri());
    assert_eq!(req.headers(), req2.headers());
    assert_eq!(req.body(), req2.body());
});
