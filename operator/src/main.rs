use clap::Parser;
use parapet_operator::{args::Args, init_logging, run};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    init_logging(&args.log_format);
    run(args).await
}
