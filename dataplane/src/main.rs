use clap::Parser;
use parapet_dataplane::app::{Args, init_logging, run};

// jemalloc, which gives pages free for a second back to the system (its settings are in
// .cargo/config.toml): glibc's malloc keeps what connections held while busy, freed between
// the small allocations of those that stay, about 8 KB per idle connection after a burst
// where jemalloc so set keeps 2 KB.
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

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
