//! The real data-plane binary, started on 127.0.0.1 port 0 and killed when dropped.

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// Finds a binary built into the same target directory as the running test.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    // target/<profile>/deps/<test> → target/<profile>/<name>
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let bin = dir.join(name);
    assert!(
        bin.exists(),
        "{} is missing: build it first (`cargo build --workspace` or `make build`)",
        bin.display()
    );
    bin
}

pub struct Dataplane {
    pub proxy: SocketAddr,
    pub admin: SocketAddr,
    /// Every traffic socket with the Gateway listener port it serves, in `--listen` order
    /// (the first is `proxy`).
    pub sockets: Vec<(SocketAddr, u16)>,
    child: Child,
    _stderr: std::thread::JoinHandle<()>,
    logs: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Dataplane {
    /// Starts `dataplane` with the given extra flags (listen addresses default to port 0)
    /// and waits for it to print its addresses.
    pub fn start(args: &[&str]) -> Dataplane {
        Self::start_env(args, &[])
    }

    /// As [`start`](Self::start), with extra environment variables (e.g. `PARAPET_LOG`).
    pub fn start_env(args: &[&str], env: &[(&str, &str)]) -> Dataplane {
        let mut cmd = Command::new(binary("dataplane"));
        if !args.contains(&"--listen") {
            cmd.args(["--listen", "127.0.0.1:0"]);
        }
        if !args.contains(&"--admin-listen") {
            cmd.args(["--admin-listen", "127.0.0.1:0"]);
        }
        cmd.args(args)
            .env(
                "PARAPET_LOG",
                std::env::var("PARAPET_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("start the dataplane binary");
        let stderr = child.stderr.take().expect("stderr");
        let logs = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let kept = logs.clone();
        let echo = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[dataplane] {line}");
                if let Ok(mut l) = kept.lock()
                    && l.len() < 100_000
                {
                    l.push(line);
                }
            }
        });
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.starts_with("parapet-dataplane listening") {
                    let _ = tx.send(line);
                }
            }
        });
        let line = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("the dataplane printed its listening line within 20s");
        let field = |k: &str| -> SocketAddr {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(k))
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("no {k} in {line:?}"))
        };
        // `listen=ADDR=PORT,ADDR=PORT`
        let sockets = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("listen="))
            .map(|v| {
                v.split(',')
                    .map(|s| {
                        let (addr, port) = s.rsplit_once('=').expect("ADDR=PORT");
                        (addr.parse().expect("address"), port.parse().expect("port"))
                    })
                    .collect()
            })
            .unwrap_or_default();
        Dataplane {
            proxy: field("proxy="),
            admin: field("admin="),
            sockets,
            child,
            _stderr: echo,
            logs,
        }
    }

    /// What it says it serves (`GET /v1/snapshot/status` on the admin listener: version,
    /// hash, routes, clusters, fleetPods, zone); `None` when it does not answer.
    pub async fn snapshot_status(&self, http: &crate::client::Client) -> Option<serde_json::Value> {
        let r = http
            .get(self.admin, "admin", "/v1/snapshot/status")
            .await
            .ok()?;
        serde_json::from_slice(&r.body).ok()
    }

    /// The lines the process wrote to stderr so far (the first 100 000).
    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().map(|l| l.clone()).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM (through the `kill` command: the tests forbid unsafe code).
    pub fn terminate(&self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
    }

    /// Waits for the process to exit, up to `deadline`.
    pub fn wait_exit(&mut self, deadline: Duration) -> Option<std::process::ExitStatus> {
        let start = Instant::now();
        while start.elapsed() < deadline {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Dataplane {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
