//! Prints the CRDs as YAML, or writes one file per CRD into a directory (`make crds`).

use std::{env, fs, path::PathBuf, process::ExitCode};

fn main() -> ExitCode {
    let args: Vec<String> = env::args().skip(1).collect();
    match args.as_slice() {
        [] => {
            for (_, yaml) in parapet_crds::crd_yaml() {
                print!("---\n{yaml}");
            }
            ExitCode::SUCCESS
        }
        [flag, dirs @ ..] if flag == "--out" && !dirs.is_empty() => {
            for dir in dirs {
                let dir = PathBuf::from(dir);
                if let Err(e) = fs::create_dir_all(&dir) {
                    eprintln!("error: cannot create {}: {e}", dir.display());
                    return ExitCode::FAILURE;
                }
                for (file, yaml) in parapet_crds::crd_yaml() {
                    let path = dir.join(file);
                    if let Err(e) = fs::write(&path, yaml) {
                        eprintln!("error: cannot write {}: {e}", path.display());
                        return ExitCode::FAILURE;
                    }
                }
            }
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!("usage: crdgen [--out DIR...]\n  without flags, prints every CRD to stdout");
            ExitCode::from(2)
        }
    }
}
