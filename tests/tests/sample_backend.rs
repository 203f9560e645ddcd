//! The sample-backend binary as a pod runs it: listen addresses, and a graceful SIGTERM
//! that keeps serving for a delay, then drains the requests in flight and exits 0.

use std::{
    net::SocketAddr,
    process::{ExitStatus, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use parapet_tests::client::{Client, nothing_listens};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
    sync::mpsc,
};

const DEADLINE: Duration = Duration::from_secs(10);

/// A running sample-backend, killed if the test ends early.
struct SampleBackend {
    child: Child,
    addr: SocketAddr,
    stdout: mpsc::UnboundedReceiver<String>,
}

impl SampleBackend {
    async fn start(args: &[&str], env: &[(&str, &str)]) -> Result<Self> {
        let mut child = Command::new(env!("CARGO_BIN_EXE_sample-backend"))
            .args(args)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("start sample-backend")?;
        let mut lines = BufReader::new(child.stdout.take().context("stdout")?).lines();
        let (tx, stdout) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut b = Self {
            child,
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            stdout,
        };
        let line = b.line().await?;
        b.addr = line
            .rsplit(' ')
            .next()
            .and_then(|a| a.parse().ok())
            .with_context(|| format!("no address in {line:?}"))?;
        Ok(b)
    }

    async fn line(&mut self) -> Result<String> {
        tokio::time::timeout(DEADLINE, self.stdout.recv())
            .await
            .context("no output from sample-backend")?
            .context("sample-backend closed its stdout")
    }

    fn signal(&self, sig: &str) -> Result<()> {
        let pid = self.child.id().context("sample-backend has exited")?;
        // Through the `kill` command: the tests forbid unsafe code.
        let st = std::process::Command::new("kill")
            .args([&format!("-{sig}"), &pid.to_string()])
            .status()?;
        ensure!(st.success(), "kill -{sig} {pid} failed");
        Ok(())
    }

    /// Requests counted so far, read through SIGUSR1.
    async fn hits(&mut self) -> Result<usize> {
        self.signal("USR1")?;
        let line = self.line().await?;
        line.strip_prefix("hits ")
            .and_then(|n| n.parse().ok())
            .with_context(|| format!("expected `hits N`, got {line:?}"))
    }

    async fn exit(&mut self) -> Result<ExitStatus> {
        tokio::time::timeout(DEADLINE, self.child.wait())
            .await
            .context("sample-backend did not exit")?
            .map_err(Into::into)
    }
}

#[tokio::test]
async fn sigterm_serves_through_the_delay_then_drains_requests_in_flight() -> Result<()> {
    // Requests take longer than the shutdown delay, so the first one is still in flight when
    // the listener closes.
    let shutdown_delay = Duration::from_millis(1000);
    let mut b = SampleBackend::start(
        &["term", "0", "2", "2500"],
        &[("SHUTDOWN_DELAY_MS", "1000")],
    )
    .await?;
    assert!(
        b.addr.ip().is_loopback(),
        "a bare port listens on 127.0.0.1"
    );
    let addr = b.addr;

    let first = tokio::spawn(async move { Client::new().get(addr, "first", "/").await });
    let start = Instant::now();
    while b.hits().await? < 1 {
        ensure!(
            start.elapsed() < DEADLINE,
            "the first request never arrived"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let signalled = Instant::now();
    b.signal("TERM")?;
    // Well inside the delay: still served, on a new connection.
    let during = tokio::spawn(async move { Client::new().get(addr, "during", "/").await });

    let refused_after = loop {
        match tokio::net::TcpStream::connect(addr).await {
            Err(e) if nothing_listens(&e) => break signalled.elapsed(),
            Err(e) => bail!("unexpected connect error: {e}"),
            Ok(_) if signalled.elapsed() > DEADLINE => bail!("still accepting after {DEADLINE:?}"),
            Ok(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    };
    assert!(
        refused_after >= shutdown_delay,
        "stopped accepting {refused_after:?} after SIGTERM, before the {shutdown_delay:?} delay"
    );
    assert!(
        !first.is_finished(),
        "the first request should still be in flight when the listener closes"
    );

    let first = tokio::time::timeout(DEADLINE, first).await???;
    assert_eq!(first.status, 200);
    assert_eq!(first.text(), "xx");
    let during = tokio::time::timeout(DEADLINE, during).await???;
    assert_eq!(during.status, 200);
    assert_eq!(
        during.headers.get("connection").map(|v| v.as_bytes()),
        Some(&b"close"[..]),
        "answers during the delay ask clients to reconnect"
    );
    let status = b.exit().await?;
    assert!(status.success(), "exit status {status}");
    Ok(())
}

#[tokio::test]
async fn sigint_without_delay_exits_at_once() -> Result<()> {
    let mut b = SampleBackend::start(&["int", "127.0.0.1:0"], &[]).await?;
    assert!(b.addr.ip().is_loopback() && b.addr.port() != 0);
    let reply = Client::new().get(b.addr, "int", "/").await?;
    assert_eq!(reply.text(), "int");
    b.signal("INT")?;
    let status = b.exit().await?;
    assert!(status.success(), "exit status {status}");
    Ok(())
}

#[tokio::test]
async fn a_bad_port_says_what_to_write() -> Result<()> {
    let child = Command::new(env!("CARGO_BIN_EXE_sample-backend"))
        .args(["bad", "localhost:http"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let out = tokio::time::timeout(DEADLINE, child.wait_with_output()).await??;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("0.0.0.0:8080"), "{stderr}");
    Ok(())
}
