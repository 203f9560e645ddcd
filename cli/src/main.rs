fn main() {
    parapet_cli::main()
}
