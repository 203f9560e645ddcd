//! The config dump: `GET /v1/snapshot` from one data plane's admin port (the table in
//! force, secrets redacted), or a table from a file.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};
use http_body_util::{BodyExt, Full};
use parapet_crds::snapshot::Table;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Where a table comes from.
pub enum Source {
    /// A data plane's admin URL (`http://127.0.0.1:9901`, or https with a CA).
    Admin(Admin),
    /// A file: a dump written by `parapet dump`, or a snapshot as pushed.
    Table(PathBuf),
    /// Resources (YAML) compiled as standalone mode compiles them.
    Resources(PathBuf),
}

pub struct Admin {
    pub url: String,
    pub token: String,
    pub ca: Option<PathBuf>,
    pub client_cert: Option<(PathBuf, PathBuf)>,
}

/// A dump: the table and what it is.
#[derive(Serialize, Deserialize, Debug, Clone)]
#[serde(rename_all = "camelCase")]
pub struct Dump {
    pub version: u64,
    pub hash: String,
    pub config_hash: String,
    #[serde(default)]
    pub zone: Option<String>,
    pub table: Table,
}

pub async fn load(source: &Source) -> Result<Dump> {
    match source {
        Source::Admin(a) => fetch(a).await,
        Source::Table(path) => from_file(path),
        Source::Resources(path) => {
            let snapshot = parapet_dataplane::standalone::load(path, 1, None)?;
            Ok(Dump {
                version: snapshot.version,
                config_hash: snapshot.table.config_hash(),
                hash: snapshot.hash,
                zone: None,
                table: snapshot.table,
            })
        }
    }
}

fn from_file(path: &Path) -> Result<Dump> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let v: Value = serde_json::from_slice(&bytes)
        .with_context(|| format!("{} is not JSON", path.display()))?;
    let table: Table = serde_json::from_value(v["table"].clone()).with_context(|| {
        format!(
            "{} is neither a dump (parapet dump) nor a snapshot: it has no table this parapet reads",
            path.display()
        )
    })?;
    Ok(Dump {
        version: v["version"].as_u64().unwrap_or(0),
        hash: v["hash"].as_str().unwrap_or("").to_string(),
        config_hash: table.config_hash(),
        zone: v["zone"].as_str().map(str::to_string),
        table,
    })
}

async fn fetch(a: &Admin) -> Result<Dump> {
    let https = a.url.starts_with("https://");
    ensure!(
        https || a.url.starts_with("http://"),
        "--admin must be an http:// or https:// URL, not {}",
        a.url
    );
    let tls = match (&a.ca, https) {
        (Some(ca), true) => {
            let ca_pem =
                std::fs::read(ca).with_context(|| format!("cannot read {}", ca.display()))?;
            let client = match &a.client_cert {
                Some((c, k)) => Some((
                    std::fs::read(c).with_context(|| format!("cannot read {}", c.display()))?,
                    std::fs::read(k).with_context(|| format!("cannot read {}", k.display()))?,
                )),
                None => None,
            };
            Some(parapet_operator::tls::client_config(
                &ca_pem,
                client.as_ref().map(|(c, k)| (&c[..], &k[..])),
            )?)
        }
        (None, true) => bail!(
            "an https --admin URL needs --dataplane-ca, the CA that signed the admin certificate"
        ),
        (_, false) => None,
    };
    let tls = tls.map(|config| parapet_operator::tls::PushTls {
        config: std::sync::Arc::new(config),
        server_name: None,
    });
    let client = parapet_operator::tls::push_client(tls.as_ref());
    let url = format!("{}/v1/snapshot", a.url.trim_end_matches('/'));
    let req = http::Request::get(&url)
        .header(http::header::AUTHORIZATION, format!("Bearer {}", a.token))
        .body(Full::new(bytes::Bytes::new()))
        .with_context(|| format!("{url} is not a usable URL"))?;
    let resp = tokio::time::timeout(std::time::Duration::from_secs(30), client.request(req))
        .await
        .with_context(|| format!("{url} did not answer within 30 s"))?
        .with_context(|| format!("cannot reach {url}"))?;
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .with_context(|| format!("reading the answer of {url} failed"))?
        .to_bytes();
    match status.as_u16() {
        200 => serde_json::from_slice(&body)
            .with_context(|| format!("{url} answered with something other than a dump")),
        401 => bail!(
            "{url} refused the token (401): pass the data plane's snapshot token with --token-file"
        ),
        404 => bail!("{url} has no table in force yet (404)"),
        s => bail!("{url} answered {s}: {}", String::from_utf8_lossy(&body)),
    }
}
