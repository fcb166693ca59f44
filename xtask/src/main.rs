//! Developer tasks: `cargo xtask <task>`.

mod bench_maglev;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "voxlb developer tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Run a benchmark.
    #[command(subcommand)]
    Bench(Bench),
}

#[derive(Subcommand)]
enum Bench {
    /// Maglev table builds: time, balance and disruption.
    Maglev {
        /// Fewer sizes and repeats: a smoke run of a few seconds.
        #[arg(long)]
        quick: bool,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().task {
        Task::Bench(Bench::Maglev { quick }) => bench_maglev::run(quick),
    }
}
