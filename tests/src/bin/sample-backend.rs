//! A sample backend for the demo and benchmarks: answers every request with its name, the
//! path it saw, and `/healthz` with 200. `sample-backend NAME PORT [BODY_BYTES] [DELAY_MS]`:
//! BODY_BYTES answers with that many bytes instead, DELAY_MS waits that long before each
//! answer. On SIGUSR1 it prints `hits N` (requests so far, health checks not counted) to
//! stdout, so a benchmark can count origin requests.

use std::{io::Write, time::Duration};

use parapet_tests::backend::{Backend, Behaviour};
use tokio::signal::unix::{SignalKind, signal};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let name = args.next().unwrap_or_else(|| "backend".into());
    let port: u16 = args.next().map(|p| p.parse()).transpose()?.unwrap_or(0);
    let body_bytes: Option<usize> = args.next().map(|p| p.parse()).transpose()?;
    let delay_ms: u64 = args.next().map(|p| p.parse()).transpose()?.unwrap_or(0);
    let b = Backend::start_on(&name, format!("127.0.0.1:{port}").parse()?).await;
    if body_bytes.is_some() || delay_ms > 0 {
        b.set(Behaviour {
            body: body_bytes.map(|n| bytes::Bytes::from(vec![b'x'; n])),
            delay: Duration::from_millis(delay_ms),
            ..Default::default()
        });
    }
    println!("{name} listening on {}", b.addr);
    let mut usr1 = signal(SignalKind::user_defined1())?;
    loop {
        tokio::select! {
            r = tokio::signal::ctrl_c() => { r?; break; }
            _ = usr1.recv() => {
                let mut out = std::io::stdout().lock();
                writeln!(out, "hits {}", b.hits())?;
                out.flush()?;
            }
        }
    }
    Ok(())
}
