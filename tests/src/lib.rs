//! Support for tests that run real processes on 127.0.0.1: sample backends, the data-plane
//! binary on port 0, and an HTTP client. Every wait has a deadline.

pub mod backend;
pub mod dataplane;
pub mod client;

use std::time::{Duration, Instant};

/// Polls `check` until it returns `Some`, or fails the test after `deadline`.
pub async fn wait_for<T, F, Fut>(what: &str, deadline: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if start.elapsed() > deadline {
            panic!("timed out after {deadline:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
