//! Arbitrary bytes as a chunked response body (after a fixed head) through Parapet's
//! upstream client, drained to the end. The first two bytes say how many body bytes are in
//! the connection's buffer before the first read. A body decoded whole is what a simple
//! reference decoder makes of the same bytes.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use parapet_dataplane::fuzzing::{parapet_client, runtime};

static RUNTIME: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| runtime(false));

const HEAD: &[u8] = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n";

/// The data of a chunked body: sizes in hex, extensions skipped; `None` where it is not a
/// complete, well-formed body by RFC 9112's grammar (trailers are not checked).
fn reference(mut b: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let end = b.windows(2).position(|w| w == b"\r\n")?;
        let line = &b[..end];
        let digits = line.iter().take_while(|c| c.is_ascii_hexdigit()).count();
        let size = u64::from_str_radix(std::str::from_utf8(&line[..digits]).ok()?, 16).ok()?;
        b = &b[end + 2..];
        if size == 0 {
            return Some(out);
        }
        let size = usize::try_from(size).ok()?;
        if b.len() < size + 2 || &b[size..size + 2] != b"\r\n" {
            return None;
        }
        out.extend_from_slice(&b[..size]);
        b = &b[size + 2..];
    }
}

fuzz_target!(|data: &[u8]| {
    let [a, b, body @ ..] = data else {
        return;
    };
    let mut input = HEAD.to_vec();
    input.extend_from_slice(body);
    let split = HEAD.len() + usize::from(u16::from_le_bytes([*a, *b]));
    if let Ok(resp) = RUNTIME.block_on(parapet_client(&input, split, false)) {
        let expected = reference(body).expect("a body the reference decoder refuses was accepted");
        assert_eq!(resp.body, expected);
    }
});
