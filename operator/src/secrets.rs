//! Which Secrets the operator reads. Only those matching `--secret-label-selector`
//! (default `parapet.dev/secret=true`) are listed, watched and cached: the API keys and
//! certificates that routes and pools reference carry the label, and no other Secret of
//! the cluster ever reaches the operator's memory. The API server does the filtering.
//!
//! RBAC cannot grant `list` by label, so the label narrows what the operator holds, not
//! what it may read; `--watch-namespaces` (namespaced Roles) narrows that.

use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client, api::ListParams, runtime::watcher};

use crate::args::Args;

/// Service-account tokens are never API keys or certificates.
const NOT_TOKENS: &str = "type!=kubernetes.io/service-account-token";

/// The selector in force; `None` when empty (every Secret).
pub fn selector(args: &Args) -> Option<&str> {
    Some(args.secret_label_selector.trim()).filter(|s| !s.is_empty())
}

/// The watch of the Secrets the operator may use.
pub fn watch_config(selector: Option<&str>) -> watcher::Config {
    let cfg = watcher::Config::default().fields(NOT_TOKENS);
    match selector {
        Some(s) => cfg.labels(s),
        None => cfg,
    }
}

/// Asks the API server once whether the selector is valid (it is the judge of label
/// selector syntax), so a typo stops the operator at start with a sentence instead of a
/// watch that fails forever.
pub async fn check(client: &Client, args: &Args) -> anyhow::Result<()> {
    let Some(sel) = selector(args) else {
        tracing::warn!(
            "--secret-label-selector is empty: the operator lists and caches every Secret it may read"
        );
        return Ok(());
    };
    let api: Api<Secret> = match args.watch_namespaces.first() {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    match api
        .list_metadata(
            &ListParams::default()
                .labels(sel)
                .fields(NOT_TOKENS)
                .limit(1),
        )
        .await
    {
        Ok(_) => {
            tracing::info!(selector = %sel, "reading only Secrets with this label");
            Ok(())
        }
        Err(kube::Error::Api(e)) if e.code == 400 => anyhow::bail!(
            "--secret-label-selector {sel:?} is not a label selector ({}); use e.g. parapet.dev/secret=true",
            e.message
        ),
        // Anything else (RBAC, a slow API server) the watch reports and retries itself.
        Err(e) => {
            tracing::warn!(error = %e, "cannot list Secrets yet");
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[test]
    fn only_labelled_secrets_are_watched_by_default() {
        let args = Args::parse_from(["operator"]);
        assert_eq!(selector(&args), Some("parapet.dev/secret=true"));
        let cfg = watch_config(selector(&args));
        assert_eq!(
            cfg.label_selector.as_deref(),
            Some("parapet.dev/secret=true")
        );
        assert_eq!(cfg.field_selector.as_deref(), Some(NOT_TOKENS));

        let args = Args::parse_from(["operator", "--secret-label-selector", "team=payments"]);
        assert_eq!(
            watch_config(selector(&args)).label_selector.as_deref(),
            Some("team=payments")
        );
        // Empty: every Secret but service-account tokens.
        let args = Args::parse_from(["operator", "--secret-label-selector", " "]);
        assert_eq!(selector(&args), None);
        let cfg = watch_config(None);
        assert_eq!(cfg.label_selector, None);
        assert_eq!(cfg.field_selector.as_deref(), Some(NOT_TOKENS));
    }

    #[test]
    fn issuing_certificates_needs_both_secrets_and_excludes_given_files() {
        assert!(Args::try_parse_from(["operator", "--snapshot-ca-secret", "ca"]).is_err());
        assert!(Args::try_parse_from(["operator", "--snapshot-tls-secret", "tls"]).is_err());
        let ok = Args::try_parse_from([
            "operator",
            "--snapshot-ca-secret",
            "ca",
            "--snapshot-tls-secret",
            "tls",
            "--dataplane-server-name",
            "dp.parapet.svc",
        ])
        .unwrap();
        assert_eq!(ok.snapshot_ca_secret.as_deref(), Some("ca"));
        assert!(
            Args::try_parse_from([
                "operator",
                "--snapshot-ca-secret",
                "ca",
                "--snapshot-tls-secret",
                "tls",
                "--dataplane-ca",
                "/ca.crt",
            ])
            .is_err()
        );
    }
}
