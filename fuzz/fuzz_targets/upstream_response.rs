//! An upstream's answer through Parapet's upstream HTTP/1.1 client: head, framing, body
//! and trailers. The first byte picks a GET or a HEAD, the next two how many bytes are in
//! the connection's buffer before the first read. A length-framed body that is read
//! whole is exactly as long as its Content-Length.
#![no_main]

use std::sync::LazyLock;

use http::{StatusCode, header};
use libfuzzer_sys::fuzz_target;
use parapet_dataplane::fuzzing::{parapet_client, runtime};

static RUNTIME: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| runtime(false));

fuzz_target!(|data: &[u8]| {
    let [flags, a, b, input @ ..] = data else {
        return;
    };
    let head_only = flags & 1 == 1;
    let split = usize::from(u16::from_le_bytes([*a, *b]));
    let Ok(resp) = RUNTIME.block_on(parapet_client(input, split, head_only)) else {
        return;
    };
    assert!(!resp.status.is_informational());
    let coded = resp.headers.contains_key(header::TRANSFER_ENCODING);
    let no_body = head_only
        || resp.status == StatusCode::NO_CONTENT
        || resp.status == StatusCode::NOT_MODIFIED;
    if coded {
        // The coding frames the body; a length beside it is not passed on.
        assert!(!resp.headers.contains_key(header::CONTENT_LENGTH));
    }
    if no_body {
        assert!(resp.body.is_empty());
    } else if !coded && let Some(n) = resp.headers.get(header::CONTENT_LENGTH) {
        let n: u64 = std::str::from_utf8(n.as_bytes())
            .unwrap()
            .split(',')
            .next()
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert_eq!(resp.body.len() as u64, n);
    }
    assert!(resp.body.len() <= input.len());
});
