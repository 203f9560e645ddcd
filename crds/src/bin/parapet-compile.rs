//! Compiles a YAML file of Parapet resources and prints the snapshot the data plane would
//! serve, with diagnostics on stderr: `parapet-compile examples/standalone.yaml`.
//! Exits 1 when any object has an error, so it doubles as a validator in CI pipelines.

use std::process::ExitCode;

use parapet_crds::{
    compiler::{Severity, compile},
    manifest::Manifest,
    snapshot::Snapshot,
};

fn main() -> ExitCode {
    let Some(path) = std::env::args().nth(1) else {
        eprintln!("usage: parapet-compile FILE.yaml");
        return ExitCode::from(2);
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: cannot read {path}: {e}");
            return ExitCode::from(2);
        }
    };
    let manifest = match Manifest::parse(&text) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("error: {path}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let out = compile(&manifest.inputs());
    let mut failed = false;
    for d in out.diagnostics.iter() {
        failed |= d.severity == Severity::Error;
        eprintln!("{:?}: {d}", d.severity);
    }
    let snapshot = Snapshot::new(1, out.table);
    println!(
        "{}",
        serde_json::to_string_pretty(&snapshot).expect("snapshot serialises")
    );
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
