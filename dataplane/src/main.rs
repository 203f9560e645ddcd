use clap::Parser;
use parapet_dataplane::app::{Args, init_logging, run};

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    init_logging(&args.log_format);
    // The control thread: admin API, snapshot swaps, health checks, reloads, signals.
    // Traffic is served by the worker threads `run` starts, each with its own runtime.
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .thread_name("parapet-control")
        .build()?
        .block_on(run(args))
}
