//! The backup file: a manifest, the objects (without status or server-set metadata) and,
//! when asked, the Secrets they reference, encrypted with age.

use std::{collections::BTreeMap, io::Read, path::Path};

use age::secrecy::SecretString;
use anyhow::{Context, Result, bail, ensure};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// What the first field of every backup says; anything else is not one.
pub const API_VERSION: &str = "parapet.dev/backup-v1";

#[derive(Serialize, Deserialize, Debug, Clone)]
#[serde(rename_all = "camelCase")]
pub struct BackupFile {
    pub api_version: String,
    pub manifest: Manifest,
    /// Ordered as a restore applies them.
    pub objects: Vec<Value>,
    /// The Secrets as a JSON array, age-encrypted and armored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secrets: Option<String>,
}

#[derive(Serialize, Deserialize, Debug, Clone, Default)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    /// RFC 3339.
    pub created_at: String,
    /// The `parapet` that wrote it.
    pub tool_version: String,
    /// Empty: every namespace.
    pub namespaces: Vec<String>,
    /// The cluster's CRDs when backed up, by name: the Parapet version they came with.
    pub crds: BTreeMap<String, String>,
    /// Objects by kind.
    pub counts: BTreeMap<String, usize>,
    /// What each fleet served when backed up: a restore waits for the same configuration.
    pub tables: Vec<TableRecord>,
    /// Hex SHA-256 of the objects' JSON: a file edited or cut short is refused.
    pub objects_sha256: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secrets: Option<SecretsRecord>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct TableRecord {
    pub fleet: String,
    pub version: u64,
    pub config_hash: String,
    pub routes: usize,
    /// Pods that served it, of all pods, when backed up.
    pub pods_in_sync: usize,
    pub pods: usize,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
#[serde(rename_all = "camelCase")]
pub struct SecretsRecord {
    pub count: usize,
    /// `x25519` (an age recipient) or `passphrase` (age's scrypt).
    pub encryption: String,
    /// Hex SHA-256 of the decrypted JSON.
    pub sha256: String,
}

pub fn sha256_json(v: &impl Serialize) -> String {
    hex::encode(Sha256::digest(
        serde_json::to_vec(v).expect("JSON values serialise"),
    ))
}

/// How Secrets are encrypted, or decrypted.
pub enum Key {
    /// An age X25519 recipient (`age1…`) to encrypt to.
    Recipient(age::x25519::Recipient),
    /// An age identity (`AGE-SECRET-KEY-1…`) to decrypt with.
    Identity(age::x25519::Identity),
    Passphrase(SecretString),
}

impl Key {
    pub fn recipient(s: &str) -> Result<Self> {
        s.trim()
            .parse()
            .map(Key::Recipient)
            .map_err(|e| anyhow::anyhow!("--recipient is not an age X25519 recipient (age1…): {e}"))
    }

    /// The first identity in an age identity file (comments and blank lines skipped).
    pub fn identity_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the identity file {}", path.display()))?;
        let line = text
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty() && !l.starts_with('#'))
            .with_context(|| format!("{} holds no age identity", path.display()))?;
        line.parse().map(Key::Identity).map_err(|e| {
            anyhow::anyhow!(
                "{} does not hold an age X25519 identity (AGE-SECRET-KEY-1…): {e}",
                path.display()
            )
        })
    }

    pub fn passphrase_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the passphrase file {}", path.display()))?;
        let p = text.trim_end_matches(['\n', '\r']);
        ensure!(
            p.chars().count() >= 12,
            "the passphrase in {} is shorter than 12 characters; use a longer one",
            path.display()
        );
        Ok(Key::Passphrase(SecretString::from(p.to_string())))
    }

    fn name(&self) -> &'static str {
        match self {
            Key::Recipient(_) | Key::Identity(_) => "x25519",
            Key::Passphrase(_) => "passphrase",
        }
    }

    pub fn encrypt(&self, plaintext: &[u8]) -> Result<(String, &'static str)> {
        let armored = match self {
            Key::Recipient(r) => age::encrypt_and_armor(r, plaintext),
            Key::Identity(i) => age::encrypt_and_armor(&i.to_public(), plaintext),
            Key::Passphrase(p) => {
                age::encrypt_and_armor(&age::scrypt::Recipient::new(p.clone()), plaintext)
            }
        }
        .context("encrypting the Secrets failed")?;
        Ok((armored, self.name()))
    }

    pub fn decrypt(&self, armored: &str) -> Result<Vec<u8>> {
        let out = match self {
            Key::Identity(i) => age::decrypt(i, armored.as_bytes()),
            Key::Passphrase(p) => {
                age::decrypt(&age::scrypt::Identity::new(p.clone()), armored.as_bytes())
            }
            Key::Recipient(_) => bail!("a recipient (public key) cannot decrypt; pass --identity"),
        };
        out.map_err(|e| {
            anyhow::anyhow!(
                "cannot decrypt the backup's Secrets with this {} key: {e}",
                self.name()
            )
        })
    }
}

impl BackupFile {
    pub fn write(&self, path: &Path) -> Result<()> {
        let json = serde_json::to_vec_pretty(self).expect("a backup serialises");
        // Written beside and renamed: a crash leaves the old file or the new, never half.
        let tmp = path.with_extension("partial");
        std::fs::write(&tmp, &json).with_context(|| format!("cannot write {}", tmp.display()))?;
        std::fs::rename(&tmp, path)
            .with_context(|| format!("cannot rename {} to {}", tmp.display(), path.display()))
    }

    /// Reads and checks a backup: its format, and that its objects are those it was
    /// written with.
    pub fn read(path: &Path) -> Result<Self> {
        let mut bytes = Vec::new();
        std::fs::File::open(path)
            .and_then(|mut f| f.read_to_end(&mut bytes))
            .with_context(|| format!("cannot read the backup {}", path.display()))?;
        let head: Value = serde_json::from_slice(&bytes)
            .with_context(|| format!("{} is not a Parapet backup (not JSON)", path.display()))?;
        let api_version = head.get("apiVersion").and_then(Value::as_str).unwrap_or("");
        ensure!(
            api_version == API_VERSION,
            "{} is not a backup this parapet reads: its apiVersion is {api_version:?}, not {API_VERSION:?}",
            path.display()
        );
        let file: BackupFile = serde_json::from_value(head)
            .with_context(|| format!("{} is not a well-formed Parapet backup", path.display()))?;
        let actual = sha256_json(&file.objects);
        ensure!(
            actual == file.manifest.objects_sha256,
            "{} was changed or cut short after it was written: its objects hash to {actual}, the manifest says {}",
            path.display(),
            file.manifest.objects_sha256
        );
        ensure!(
            file.secrets.is_some() == file.manifest.secrets.is_some(),
            "{} is inconsistent: its manifest and its secrets section disagree on whether it holds Secrets",
            path.display()
        );
        Ok(file)
    }

    /// The Secrets, decrypted and checked against the manifest.
    pub fn open_secrets(&self, key: &Key) -> Result<Vec<Value>> {
        let (Some(armored), Some(record)) = (&self.secrets, &self.manifest.secrets) else {
            return Ok(Vec::new());
        };
        let plain = key.decrypt(armored)?;
        let actual = hex::encode(Sha256::digest(&plain));
        ensure!(
            actual == record.sha256,
            "the backup's Secrets decrypt to something other than what was written (hash {actual}, manifest {})",
            record.sha256
        );
        let secrets: Vec<Value> =
            serde_json::from_slice(&plain).context("the backup's Secrets are not a JSON list")?;
        ensure!(
            secrets.len() == record.count,
            "the backup's Secrets number {}, the manifest says {}",
            secrets.len(),
            record.count
        );
        Ok(secrets)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(objects: Vec<Value>) -> BackupFile {
        BackupFile {
            api_version: API_VERSION.into(),
            manifest: Manifest {
                objects_sha256: sha256_json(&objects),
                ..Default::default()
            },
            objects,
            secrets: None,
        }
    }

    #[test]
    fn a_file_changed_after_writing_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.json");
        let f = file(vec![
            serde_json::json!({"kind": "ApiRoute", "spec": {"hosts": ["a"]}}),
        ]);
        f.write(&path).unwrap();
        assert_eq!(BackupFile::read(&path).unwrap().objects, f.objects);

        let text = std::fs::read_to_string(&path)
            .unwrap()
            .replace("\"a\"", "\"b\"");
        std::fs::write(&path, text).unwrap();
        let e = BackupFile::read(&path).unwrap_err().to_string();
        assert!(e.contains("was changed or cut short"), "{e}");

        std::fs::write(&path, "{\"apiVersion\": \"v1\", \"kind\": \"List\"}").unwrap();
        let e = BackupFile::read(&path).unwrap_err().to_string();
        assert!(e.contains("not a backup this parapet reads"), "{e}");
    }

    #[test]
    fn secrets_open_with_the_right_key_only() {
        let secrets = serde_json::json!([{"kind": "Secret", "data": {"k": "c2VjcmV0"}}]);
        let plain = serde_json::to_vec(&secrets).unwrap();
        let identity = age::x25519::Identity::generate();
        let key = Key::Recipient(identity.to_public());
        let (armored, encryption) = key.encrypt(&plain).unwrap();
        assert!(!armored.contains("c2VjcmV0"));
        let mut f = file(vec![]);
        f.secrets = Some(armored);
        f.manifest.secrets = Some(SecretsRecord {
            count: 1,
            encryption: encryption.into(),
            sha256: hex::encode(Sha256::digest(&plain)),
        });
        let opened = f.open_secrets(&Key::Identity(identity)).unwrap();
        assert_eq!(Value::Array(opened), secrets);
        let other = Key::Identity(age::x25519::Identity::generate());
        assert!(f.open_secrets(&other).is_err());
        let pass = Key::Passphrase(SecretString::from("a passphrase long enough".to_string()));
        assert!(f.open_secrets(&pass).is_err());
    }
}
