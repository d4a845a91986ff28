//! `imgd-aws`: what `imgd sync`, `imgd prune` and `imgd build --cache s3://…`
//! run. Bad input exits with 2, other failures with 1.

use clap::{Parser, Subcommand};
use imgd::config::ConfigError;
use imgd_aws::{cache, prune, sync};

#[derive(Parser, Debug)]
// Users reach these through `imgd sync` / `imgd prune`, so usage lines say `imgd`.
#[command(
    name = "imgd-aws",
    bin_name = "imgd",
    version,
    about = "imgd's AWS side: sync, prune, and the S3 build cache."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    Sync(Box<sync::SyncArgs>),
    Prune(prune::PruneArgs),
    /// The S3 build cache (run by `imgd build --cache`).
    #[command(subcommand)]
    Cache(cache::CacheCmd),
}

fn main() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("imgd=info,imgd_aws=info"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_target(false).init();
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Sync(a) => sync::run(a).map(|()| 0),
        Command::Prune(a) => prune::run(a).map(|()| 0),
        Command::Cache(c) => cache::run(c),
    };
    match result {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            let bad_input = e.chain().any(|c| c.is::<ConfigError>());
            eprintln!("error: {e:#}");
            std::process::exit(if bad_input { 2 } else { 1 });
        }
    }
}
