//! One downstream connection's bytes through the whole server path: Parapet's HTTP/1.1
//! codec, and hyper from where the codec hands the connection over. Whatever the bytes,
//! nothing panics, the connection ends, and what is written back is HTTP (HTTP/2 after the
//! preface).
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use parapet_dataplane::fuzzing::{listener_config, parapet_server, runtime};

// Paused time: a connection waiting for more bytes ends at the header read timeout at once.
static RUNTIME: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| runtime(true));

fuzz_target!(|data: &[u8]| {
    // Small limits, so refusals for size and count are reached by small inputs.
    let cfg = listener_config(8192, 16);
    let served = RUNTIME.block_on(parapet_server(data, &cfg));
    // After the HTTP/2 preface, hyper's HTTP/2 server answers: a SETTINGS frame first.
    let http2 = data.starts_with(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
    assert!(
        served.output.is_empty()
            || if http2 {
                served.output.get(3) == Some(&4)
            } else {
                served.output.starts_with(b"HTTP/1.")
            },
        "the server wrote something that is not an HTTP response: {:?}",
        String::from_utf8_lossy(&served.output[..served.output.len().min(64)])
    );
});
