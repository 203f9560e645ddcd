//! `kubectl parapet …`: kubectl runs plugins named kubectl-<name> found on PATH.

fn main() {
    parapet_cli::main()
}
