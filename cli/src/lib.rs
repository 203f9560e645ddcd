//! `parapet` (and `kubectl parapet`): operating a Parapet installation from the command
//! line. It talks to the Kubernetes API only (KUBECONFIG, or the in-cluster account).

#![forbid(unsafe_code)]

pub mod backup;
pub mod cluster;
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
}

#[derive(Args)]
struct BackupArgs {
    /// Namespaces to back up (repeat, or comma-separate). None: every namespace.
    #[arg(short = 'n', long = "namespace", value_delimiter = ',')]
    namespaces: Vec<String>,
    /// The file to write.
    #[arg(short, long)]
    output: PathBuf,
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
            let started = tokio::time::Instant::now();
            let summary = backup::run(
                &client().await?,
                &backup::Options {
                    namespaces: a.namespaces,
                    output: a.output.clone(),
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
                a.output.display(),
                started.elapsed().as_secs_f64()
            );
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
