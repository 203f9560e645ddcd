//! `parapet` (and `kubectl parapet`): operating a Parapet installation from the command
//! line. It talks to the Kubernetes API only (KUBECONFIG, or the in-cluster account).

#![forbid(unsafe_code)]

pub mod backup;
pub mod cluster;
pub mod dump;
pub mod explain;
pub mod file;
pub mod kinds;
pub mod objects;
pub mod restore;
pub mod status;

use std::{path::PathBuf, time::Duration};

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use kube::Client;

#[derive(Parser)]
#[command(
    name = "parapet",
    version,
    about = "Back up, restore and inspect a Parapet installation"
)]
struct Cli {
    /// The namespace the operator runs in (where it writes the fleet view).
    #[arg(
        long,
        global = true,
        env = "PARAPET_NAMESPACE",
        default_value = "parapet"
    )]
    operator_namespace: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write every Parapet resource (and the Gateway API resources of Parapet's
    /// GatewayClasses) of the chosen namespaces into one file.
    Backup(BackupArgs),
    /// Check a backup against the cluster, apply it, and wait until the fleet serves it.
    Restore(RestoreArgs),
    /// Which data-plane pod serves which table, and which resources are programmed.
    Status(StatusArgs),
    /// The table a data plane serves (GET /v1/snapshot), secrets redacted.
    Dump(DumpArgs),
    /// Which rule serves a request, and which pool and endpoints it goes to.
    ExplainRoute(ExplainArgs),
}

/// Where a table comes from: a data plane's admin port, or a file.
#[derive(Args)]
struct TableSource {
    /// A data plane's admin URL, e.g. http://127.0.0.1:9901 after
    /// `kubectl -n parapet port-forward pod/NAME 9901`.
    #[arg(long, conflicts_with_all = ["table", "file"])]
    admin: Option<String>,
    /// The file holding the snapshot token (the data plane's --snapshot-token-file).
    #[arg(long, env = "PARAPET_SNAPSHOT_TOKEN_FILE", requires = "admin")]
    token_file: Option<PathBuf>,
    /// The CA (PEM) that signed the admin certificate, for an https --admin URL.
    #[arg(long)]
    dataplane_ca: Option<PathBuf>,
    /// Client certificate (PEM) for data planes that require one (--admin-client-ca).
    #[arg(long, requires = "client_key")]
    client_cert: Option<PathBuf>,
    #[arg(long, requires = "client_cert")]
    client_key: Option<PathBuf>,
    /// A table from a file: a dump (`parapet dump -o FILE`) or a snapshot.
    #[arg(long, conflicts_with = "file")]
    table: Option<PathBuf>,
    /// Resources (YAML) compiled here as standalone mode compiles them.
    #[arg(long)]
    file: Option<PathBuf>,
}

impl TableSource {
    fn source(&self) -> Result<dump::Source> {
        if let Some(url) = &self.admin {
            let token_file = self.token_file.as_ref().context(
                "--admin needs --token-file: the data plane's snapshot token guards its table",
            )?;
            let token = std::fs::read_to_string(token_file)
                .with_context(|| format!("cannot read {}", token_file.display()))?
                .trim()
                .to_string();
            return Ok(dump::Source::Admin(dump::Admin {
                url: url.clone(),
                token,
                ca: self.dataplane_ca.clone(),
                client_cert: self.client_cert.clone().zip(self.client_key.clone()),
            }));
        }
        if let Some(t) = &self.table {
            return Ok(dump::Source::Table(t.clone()));
        }
        if let Some(f) = &self.file {
            return Ok(dump::Source::Resources(f.clone()));
        }
        anyhow::bail!(
            "say where the table comes from: --admin URL (a data plane's admin port), --table FILE (a dump) or --file FILE (resources to compile)"
        )
    }
}

#[derive(Args)]
struct DumpArgs {
    #[command(flatten)]
    from: TableSource,
    /// Write the dump here instead of standard output.
    #[arg(short, long)]
    output: Option<PathBuf>,
}

#[derive(Args)]
struct ExplainArgs {
    /// The request's host (Host or :authority).
    host: String,
    /// The request's path, optionally with ?query.
    path: String,
    #[arg(short = 'X', long, default_value = "GET")]
    method: String,
    /// A request header, NAME=VALUE (repeat for more).
    #[arg(short = 'H', long = "header")]
    headers: Vec<String>,
    /// The Gateway listener port the request arrives on (tables with listeners).
    #[arg(long)]
    port: Option<u16>,
    #[command(flatten)]
    from: TableSource,
    /// Output format.
    #[arg(short, long, default_value = "text", value_parser = ["text", "json"])]
    output: String,
}

#[derive(Args)]
struct BackupArgs {
    /// Namespaces to back up (repeat, or comma-separate). None: every namespace.
    #[arg(short = 'n', long = "namespace", value_delimiter = ',')]
    namespaces: Vec<String>,
    /// The file to write.
    #[arg(
        short,
        long,
        required_unless_present = "output_dir",
        conflicts_with = "output_dir"
    )]
    output: Option<PathBuf>,
    /// Write `parapet-<UTC time>.json` in this directory instead (for scheduled backups).
    #[arg(long)]
    output_dir: Option<PathBuf>,
    /// With --output-dir: keep this many backups there, deleting the oldest.
    #[arg(long, requires = "output_dir", value_parser = clap::value_parser!(u32).range(1..))]
    keep: Option<u32>,
    /// Include the Secrets the resources reference, encrypted to this age X25519
    /// recipient (`age1…`, from `age-keygen`).
    #[arg(long, conflicts_with = "passphrase_file")]
    recipient: Option<String>,
    /// Include the Secrets the resources reference, encrypted with the passphrase in this
    /// file (age's scrypt; at least 12 characters).
    #[arg(long)]
    passphrase_file: Option<PathBuf>,
}

#[derive(Args)]
struct RestoreArgs {
    /// The backup file.
    file: PathBuf,
    /// The age identity file (`AGE-SECRET-KEY-1…`) that decrypts the backup's Secrets.
    #[arg(long, conflicts_with = "passphrase_file")]
    identity: Option<PathBuf>,
    /// The file holding the passphrase the backup's Secrets were encrypted with.
    #[arg(long)]
    passphrase_file: Option<PathBuf>,
    /// Restore without the backup's Secrets (they must exist already).
    #[arg(long)]
    skip_secrets: bool,
    /// Check everything (CRDs, and every object by a server-side dry run); change nothing.
    #[arg(long)]
    dry_run: bool,
    /// How long to wait for the fleet to serve the restored configuration; 0: do not wait.
    #[arg(long, default_value = "5m", value_parser = duration)]
    timeout: Duration,
}

#[derive(Args)]
struct StatusArgs {
    /// Only resources in these namespaces (repeat, or comma-separate). None: all.
    #[arg(short = 'n', long = "namespace", value_delimiter = ',')]
    namespaces: Vec<String>,
    /// Output format.
    #[arg(short, long, default_value = "text", value_parser = ["text", "json"])]
    output: String,
}

fn duration(s: &str) -> Result<Duration, String> {
    parapet_crds::Duration::parse(s)
        .map(|d| d.as_std())
        .map_err(|e| e.to_string())
}

/// The program: both binaries are this.
pub fn main() {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime starts");
    if let Err(e) = runtime.block_on(run(cli)) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

async fn client() -> Result<Client> {
    Client::try_default().await.context(
        "cannot reach the Kubernetes API: set KUBECONFIG, or run in a pod with a service account",
    )
}

async fn run(cli: Cli) -> Result<()> {
    let ns = cli.operator_namespace;
    let ns_shown = ns.clone();
    match cli.command {
        Command::Backup(a) => {
            let secrets = match (&a.recipient, &a.passphrase_file) {
                (Some(r), _) => Some(file::Key::recipient(r)?),
                (None, Some(p)) => Some(file::Key::passphrase_file(p)?),
                (None, None) => None,
            };
            let output = match (&a.output, &a.output_dir) {
                (Some(o), _) => o.clone(),
                (None, Some(dir)) => backup::timestamped(dir)?,
                (None, None) => unreachable!("clap requires one of them"),
            };
            let started = tokio::time::Instant::now();
            let summary = backup::run(
                &client().await?,
                &backup::Options {
                    namespaces: a.namespaces,
                    output: output.clone(),
                    secrets,
                    operator_namespace: ns,
                },
            )
            .await?;
            let counts: Vec<String> = summary
                .counts
                .iter()
                .map(|(k, n)| format!("{n} {k}"))
                .collect();
            println!(
                "backed up {}{} to {} in {:.1} s",
                if counts.is_empty() {
                    "nothing".to_string()
                } else {
                    counts.join(", ")
                },
                if summary.secrets > 0 {
                    format!(" and {} Secrets (encrypted)", summary.secrets)
                } else {
                    String::new()
                },
                output.display(),
                started.elapsed().as_secs_f64()
            );
            if let (Some(dir), Some(keep)) = (&a.output_dir, a.keep) {
                for old in backup::prune(dir, keep as usize)? {
                    println!("removed the old backup {}", old.display());
                }
            }
            for t in &summary.tables {
                println!(
                    "fleet {}: configuration {} (table version {}, {} routes) on {}/{} pods",
                    t.fleet,
                    restore::short(&t.config_hash),
                    t.version,
                    t.routes,
                    t.pods_in_sync,
                    t.pods
                );
            }
            if summary.tables.is_empty() {
                eprintln!(
                    "warning: no fleet view in namespace {ns_shown} (--operator-namespace): the backup records no table for a restore to wait for"
                );
            }
            for s in &summary.missing_secrets {
                eprintln!(
                    "warning: Secret {s} is referenced but does not exist; it is not in the backup"
                );
            }
        }
        Command::Restore(a) => {
            let key = match (&a.identity, &a.passphrase_file) {
                (Some(i), _) => Some(file::Key::identity_file(i)?),
                (None, Some(p)) => Some(file::Key::passphrase_file(p)?),
                (None, None) => None,
            };
            let backup = file::BackupFile::read(&a.file)?;
            let started = tokio::time::Instant::now();
            let outcome = restore::run(
                &client().await?,
                &backup,
                &restore::Options {
                    key,
                    skip_secrets: a.skip_secrets,
                    dry_run: a.dry_run,
                    wait: (!a.timeout.is_zero()).then_some(a.timeout),
                    operator_namespace: ns,
                },
            )
            .await?;
            match outcome {
                restore::Outcome::Checked { objects } => {
                    println!(
                        "dry run: the cluster accepts all {objects} objects of {}; nothing was changed",
                        a.file.display()
                    )
                }
                restore::Outcome::Restored { objects, fleets } => {
                    println!(
                        "restored {objects} objects from {} in {:.1} s",
                        a.file.display(),
                        started.elapsed().as_secs_f64()
                    );
                    for f in fleets {
                        println!("fleet {f} serves the backed-up configuration on every pod");
                    }
                }
            }
        }
        Command::Dump(a) => {
            let d = dump::load(&a.from.source()?).await?;
            let json = serde_json::to_string_pretty(&d).expect("a dump serialises");
            match &a.output {
                Some(p) => {
                    std::fs::write(p, json + "\n")
                        .with_context(|| format!("cannot write {}", p.display()))?;
                    eprintln!(
                        "table version {} ({} routes, configuration {}) written to {}",
                        d.version,
                        d.table.route_count(),
                        restore::short(&d.config_hash),
                        p.display()
                    );
                }
                None => println!("{json}"),
            }
        }
        Command::ExplainRoute(a) => {
            let method = http::Method::from_bytes(a.method.as_bytes())
                .with_context(|| format!("--method {:?} is not an HTTP method", a.method))?;
            let req = explain::Request {
                host: a.host,
                path: a.path,
                method,
                headers: explain::Request::headers_from(&a.headers)?,
                port: a.port,
            };
            let d = dump::load(&a.from.source()?).await?;
            let e = explain::explain(&d.table, &req)?;
            if a.output == "json" {
                println!("{}", serde_json::to_string_pretty(&e).expect("serialises"));
            } else {
                print!("{}", explain::render(&req, &e));
            }
            if e.route.is_none() {
                std::process::exit(2);
            }
        }
        Command::Status(a) => {
            let s = status::gather(&client().await?, &ns, &a.namespaces).await?;
            if a.output == "json" {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&s).expect("status serialises")
                );
            } else {
                print!(
                    "{}",
                    status::render(
                        &s,
                        status::colour_wanted(),
                        k8s_openapi::jiff::Timestamp::now()
                    )
                );
            }
        }
    }
    Ok(())
}
