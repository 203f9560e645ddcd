//! The last good snapshot on disk, so a restarted pod serves before the operator is back.

use std::{
    io::Write,
    path::{Path, PathBuf},
};

use parapet_crds::snapshot::Snapshot;

const FILE: &str = "snapshot.json";

fn path(dir: &Path) -> PathBuf {
    dir.join(FILE)
}

/// Writes atomically: a temp file in the same directory, fsync, rename. The table holds
/// TLS private keys and API-key hashes: the file is readable by this user only (0600), in a
/// directory only this user can list or enter (0700).
pub fn persist(dir: &Path, snapshot: &Snapshot) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    // A directory made earlier is narrowed too. One this user does not own (a volume's
    // mount point) cannot be: the file is still 0600, and the chart points --state-dir at a
    // directory below the mount, which this creates.
    let mode = std::fs::metadata(dir)?.permissions().mode();
    if mode & 0o077 != 0
        && let Err(e) = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode & 0o700))
    {
        tracing::debug!(dir = %dir.display(), error = %e, "state directory left as it is");
    }
    let bytes = serde_json::to_vec(snapshot).map_err(std::io::Error::other)?;
    let mut tmp = tempfile_in(dir)?;
    tmp.1.write_all(&bytes)?;
    tmp.1.sync_all()?;
    std::fs::rename(&tmp.0, path(dir))?;
    Ok(())
}

fn tempfile_in(dir: &Path) -> std::io::Result<(PathBuf, std::fs::File)> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let p = dir.join(format!(".{FILE}.{}.tmp", std::process::id()));
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&p)?;
    // `mode` applies only to a file it creates: one left by a crash keeps its own.
    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    Ok((p, f))
}

/// The persisted snapshot, if there is one that still validates.
pub fn load_persisted(dir: &Path) -> Result<Option<Snapshot>, String> {
    let p = path(dir);
    let bytes = match std::fs::read(&p) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read {}: {e}", p.display())),
    };
    let snapshot: Snapshot = serde_json::from_slice(&bytes)
        .map_err(|e| format!("{} is not a snapshot: {e}", p.display()))?;
    snapshot
        .validate()
        .map_err(|r| format!("{} does not validate: {}", p.display(), r.join("; ")))?;
    Ok(Some(snapshot))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn the_table_is_readable_by_its_owner_only() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("state");
        // An earlier, wider directory is narrowed; a file left by a crash too.
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let left = dir.join(format!(".{FILE}.{}.tmp", std::process::id()));
        std::fs::write(&left, b"old").unwrap();
        std::fs::set_permissions(&left, std::fs::Permissions::from_mode(0o644)).unwrap();
        let table = parapet_crds::snapshot::Table {
            format: parapet_crds::snapshot::FORMAT_VERSION,
            ..Default::default()
        };
        let mut s = Snapshot::new(1, table);
        s.allow_empty = true;
        persist(&dir, &s).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&path(&dir)), 0o600);
        // A directory that does not exist yet is made 0700.
        let fresh = tmp.path().join("a/b");
        persist(&fresh, &s).unwrap();
        assert_eq!(mode(&fresh), 0o700);
        assert_eq!(mode(&path(&fresh)), 0o600);
        assert_eq!(load_persisted(&fresh).unwrap().unwrap().version, 1);
    }
}
