//! What the operator and the data plane both do at their edges, written once: set up
//! logging, read a secret from a file, wait for the signal to stop.

use std::path::{Path, PathBuf};

/// Logs to stderr, filtered by `PARAPET_LOG` (`info` when unset or invalid), as text or,
/// with `format` = `json`, one JSON object per line.
pub fn init_logging(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PARAPET_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        b.json().init();
    } else {
        b.init();
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SecretFileError {
    #[error("cannot read the {what} file {}: {source}", path.display())]
    Read {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the {what} file {} is empty", path.display())]
    Empty { what: &'static str, path: PathBuf },
}

/// A secret kept in a file (a mounted Secret's key): its content without surrounding
/// whitespace (a trailing newline is not part of the secret), never empty. `what` names it
/// in errors ("snapshot token").
pub fn read_secret_file(what: &'static str, path: &Path) -> Result<String, SecretFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| SecretFileError::Read {
        what,
        path: path.to_path_buf(),
        source,
    })?;
    let secret = text.trim();
    if secret.is_empty() {
        return Err(SecretFileError::Empty {
            what,
            path: path.to_path_buf(),
        });
    }
    Ok(secret.to_string())
}

/// Resolves on SIGTERM (what Kubernetes sends) or SIGINT (Ctrl-C).
pub async fn stop_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_trimmed_and_never_empty() {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "s3cret\n").unwrap();
        assert_eq!(
            read_secret_file("snapshot token", &token).unwrap(),
            "s3cret"
        );

        std::fs::write(&token, " \n").unwrap();
        let e = read_secret_file("snapshot token", &token).unwrap_err();
        assert!(matches!(e, SecretFileError::Empty { .. }));
        assert_eq!(
            e.to_string(),
            format!("the snapshot token file {} is empty", token.display())
        );

        let missing = dir.path().join("missing");
        let e = read_secret_file("snapshot token", &missing).unwrap_err();
        assert!(
            e.to_string().starts_with(&format!(
                "cannot read the snapshot token file {}: ",
                missing.display()
            )),
            "{e}"
        );
    }

    #[tokio::test]
    async fn sigterm_ends_the_wait() {
        use tokio::signal::unix::{SignalKind, signal};
        // A handler of our own first: from here SIGTERM no longer ends this test process,
        // whether or not stop_signal has installed its own yet.
        let _ours = signal(SignalKind::terminate()).unwrap();
        let waiting = tokio::spawn(stop_signal());
        // Signal until the wait ends: the first SIGTERM may come before stop_signal listens.
        for _ in 0..50 {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &std::process::id().to_string()])
                .status();
            let ended = tokio::time::timeout(std::time::Duration::from_millis(100), async {
                while !waiting.is_finished() {
                    tokio::task::yield_now().await;
                }
            })
            .await;
            if ended.is_ok() {
                break;
            }
        }
        assert!(waiting.is_finished(), "SIGTERM did not end stop_signal");
    }
}
