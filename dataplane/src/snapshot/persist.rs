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

/// Writes atomically: a temp file in the same directory, fsync, rename.
pub fn persist(dir: &Path, snapshot: &Snapshot) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let bytes = serde_json::to_vec(snapshot).map_err(std::io::Error::other)?;
    let mut tmp = tempfile_in(dir)?;
    tmp.1.write_all(&bytes)?;
    tmp.1.sync_all()?;
    std::fs::rename(&tmp.0, path(dir))?;
    Ok(())
}

fn tempfile_in(dir: &Path) -> std::io::Result<(PathBuf, std::fs::File)> {
    let p = dir.join(format!(".{FILE}.{}.tmp", std::process::id()));
    let f = std::fs::File::create(&p)?;
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
