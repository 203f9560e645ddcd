//! One downstream connection's bytes through the data plane's server path (Parapet's codec,
//! then hyper from the hand-off) and through hyper's server alone: the handler must see the
//! same requests and the client get the same statuses, but for the differences by design
//! that `compare_servers` lists.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use parapet_dataplane::fuzzing::{
    compare_servers, hyper_server, listener_config, parapet_server, runtime,
};

static RUNTIME: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| runtime(true));

fuzz_target!(|data: &[u8]| {
    let cfg = listener_config(8192, 16);
    let parapet = RUNTIME.block_on(parapet_server(data, &cfg));
    let hyper = RUNTIME.block_on(hyper_server(data, &cfg));
    if let Err(e) = compare_servers(data, &parapet, &hyper, 8192) {
        panic!("{e}");
    }
});
