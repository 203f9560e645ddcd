//! A sample backend for the demo, the benchmarks and test pods: answers every request with
//! its name, the path it saw, and `/healthz` with 200.
//!
//! `sample-backend NAME PORT [BODY_BYTES] [DELAY_MS]`:
//!
//! - PORT is a port on 127.0.0.1 (`8080`), or a full socket address to listen elsewhere
//!   (`0.0.0.0:8080`, `[::]:8080` in a pod);
//! - BODY_BYTES answers with that many bytes instead of the name;
//! - DELAY_MS waits that long before each answer.
//!
//! On SIGUSR1 it prints `hits N` (requests so far, health checks not counted) to stdout, so
//! a benchmark can count origin requests.
//!
//! On SIGTERM or SIGINT it shuts down gracefully, as a pod should: it keeps serving for
//! `SHUTDOWN_DELAY_MS` (default 0; the time endpoints take to drop it from load balancers),
//! answering with `Connection: close` meanwhile, then stops accepting, lets requests in
//! flight finish (up to 10 s) and exits 0.

use std::{
    io::Write,
    net::{Ipv4Addr, SocketAddr},
    time::Duration,
};

use anyhow::{Context, bail};
use parapet_tests::backend::{Backend, Behaviour};
use tokio::signal::unix::{SignalKind, signal};

const USAGE: &str = "usage: sample-backend NAME PORT [BODY_BYTES] [DELAY_MS]";
/// How long requests in flight get to finish once the backend stops accepting.
const DRAIN_DEADLINE: Duration = Duration::from_secs(10);

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let name = args.next().unwrap_or_else(|| "backend".into());
    let addr = match args.next() {
        Some(a) => listen_addr(&a)?,
        None => SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
    };
    let body_bytes: Option<usize> = args
        .next()
        .map(|b| {
            b.parse().with_context(|| {
                format!("BODY_BYTES must be a number of bytes, not {b:?}; {USAGE}")
            })
        })
        .transpose()?;
    let delay_ms: u64 = args
        .next()
        .map(|d| {
            d.parse()
                .with_context(|| format!("DELAY_MS must be milliseconds, not {d:?}; {USAGE}"))
        })
        .transpose()?
        .unwrap_or(0);
    let shutdown_delay = match std::env::var("SHUTDOWN_DELAY_MS") {
        Ok(v) => Duration::from_millis(v.parse().with_context(|| {
            format!("SHUTDOWN_DELAY_MS must be milliseconds (e.g. 5000), not {v:?}")
        })?),
        Err(_) => Duration::ZERO,
    };

    // Signal handlers before the "listening" line, so whoever waits for it may signal.
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut usr1 = signal(SignalKind::user_defined1())?;

    let b = Backend::try_start_on(&name, addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    let mut behaviour = Behaviour {
        body: body_bytes.map(|n| bytes::Bytes::from(vec![b'x'; n])),
        delay: Duration::from_millis(delay_ms),
        ..Default::default()
    };
    b.set(behaviour.clone());
    println!("{name} listening on {}", b.addr);

    let signal_name = loop {
        tokio::select! {
            _ = term.recv() => break "SIGTERM",
            _ = int.recv() => break "SIGINT",
            _ = usr1.recv() => print_hits(&b)?,
        }
    };

    if !shutdown_delay.is_zero() {
        eprintln!("{name}: {signal_name}; serving for {shutdown_delay:?} before draining");
        // Clients that reuse connections learn to reconnect (elsewhere) before we stop.
        behaviour.headers.push(("connection", "close".into()));
        b.set(behaviour);
        let until = tokio::time::Instant::now() + shutdown_delay;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(until) => break,
                _ = usr1.recv() => print_hits(&b)?,
            }
        }
    }
    let cut = b.graceful_stop(DRAIN_DEADLINE).await;
    if cut > 0 {
        bail!("{cut} connections still busy {DRAIN_DEADLINE:?} after {signal_name}; closed them");
    }
    eprintln!("{name}: drained, exiting");
    Ok(())
}

/// A bare port means 127.0.0.1 (what the demo and benchmarks pass); anything else must be
/// a full socket address.
fn listen_addr(arg: &str) -> anyhow::Result<SocketAddr> {
    if let Ok(port) = arg.parse::<u16>() {
        return Ok(SocketAddr::from((Ipv4Addr::LOCALHOST, port)));
    }
    arg.parse().map_err(|_| {
        anyhow::anyhow!(
            "PORT must be a port number (listens on 127.0.0.1) or an address and port such as 0.0.0.0:8080 or [::]:8080, not {arg:?}; {USAGE}"
        )
    })
}

fn print_hits(b: &Backend) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "hits {}", b.hits())?;
    out.flush()?;
    Ok(())
}
