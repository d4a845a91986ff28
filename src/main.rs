//! The `imgd` command line: a thin layer over the library. Bad input
//! (profiles, hardware files, flags) exits with code 2; other failures with 1.

mod cmd;

use clap::{CommandFactory, Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "imgd", version, about = "Machine profiles to reproducible, bootable images: build, netboot, test.")]
struct Cli {
    /// More log output (-v info, -vv debug). RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Build a profile into a store entry (cached by input hash).
    Build(cmd::build::BuildArgs),
    /// Pin a profile's Debian base to an exact package set (profiles/NAME.lock).
    Lock(cmd::lock::LockArgs),
    /// Fetch a profile's locked Debian packages into the local pool.
    Fetch(cmd::fetch::FetchArgs),
    /// Sign a build's unified kernel image and UEFI disk for Secure Boot (kept beside the entry).
    Sign(cmd::sign::SignArgs),
    /// Print a profile's input hash without building.
    Hash(cmd::build::HashArgs),
    /// Boot a profile in qemu with its console on this terminal.
    Run(cmd::run::RunArgs),
    /// Boot a profile's artifacts headless in qemu and wait for its marker.
    Test(cmd::test::TestArgs),
    /// Boot, test and deploy a composition: a server and N nodes on private networks.
    Compose(cmd::compose::ComposeArgs),
    /// Serve netboot scripts and artifacts to iPXE over HTTP.
    Serve(cmd::serve::ServeArgs),
    /// Show `imgd serve`'s status table: which machine got what, where each boot stopped.
    Status(cmd::status::StatusArgs),
    /// Copy stdin/stdout to a TCP address (used by qemu's guestfwd in netboot tests).
    #[command(hide = true)]
    Relay { addr: String },
    /// Upload a build to S3 and make its AMI in every region.
    #[cfg(feature = "aws")]
    Sync(Box<cmd::sync::SyncArgs>),
    /// Remove old AMIs, their snapshots and S3 entries (a plan unless --yes).
    #[cfg(feature = "aws")]
    Prune(cmd::prune::PruneArgs),
    /// Point an SSM release channel at a build that exists in every listed
    /// region (a rollback; a plan unless --yes).
    #[cfg(feature = "aws")]
    Promote(cmd::promote::PromoteArgs),
    /// List store entries.
    Ls(cmd::store_cmds::LsArgs),
    /// Re-hash store entries against their manifests.
    Verify(cmd::store_cmds::VerifyArgs),
    /// Remove old store entries, keeping the newest N per profile.
    Gc(cmd::store_cmds::GcArgs),
    /// Print shell completions: imgd completions bash > /etc/bash_completion.d/imgd
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff): imgd man | man -l -
    Man,
}

fn main() {
    let cli = Cli::parse();
    let default = match cli.verbose {
        0 => "imgd=info,imgd_aws=info",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    // Colours only on a terminal: a log file or journal gets plain lines.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let log = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(ansi)
        .with_timer(imgd::logfmt::Clock)
        .fmt_fields(imgd::logfmt::Fields);
    // `imgd serve` logs a line per boot step: gathered and written by a
    // thread of its own, a batch every 20 ms at most (see logbatch), so no
    // answer waits on stderr or wakes a thread per line. Nothing is dropped.
    // Other commands write in place, in order with their progress bars.
    let mut flush_log = None;
    if matches!(cli.command, Command::Serve(_)) {
        match imgd::logbatch::batched(std::io::stderr(), "imgd-log") {
            Ok((writer, guard)) => {
                log.with_writer(writer).init();
                flush_log = Some(guard);
            }
            Err(e) => {
                log.with_writer(std::io::stderr).init();
                tracing::warn!("logging in place: no thread for the log writer: {e}");
            }
        }
    } else {
        log.with_writer(std::io::stderr).init();
    }

    let result = match &cli.command {
        Command::Build(a) => cmd::build::run(a),
        Command::Hash(a) => cmd::build::hash(a),
        Command::Lock(a) => cmd::lock::run(a),
        Command::Fetch(a) => cmd::fetch::run(a),
        Command::Test(a) => cmd::test::run(a),
        Command::Sign(a) => cmd::sign::run(a),
        Command::Run(a) => cmd::run::run(a),
        Command::Serve(a) => cmd::serve::run(a),
        Command::Status(a) => cmd::status::run(a),
        Command::Compose(a) => cmd::compose::run(a),
        Command::Relay { addr } => imgd::qemu::relay(addr).map_err(Into::into),
        #[cfg(feature = "aws")]
        Command::Sync(a) => match &a.deployments {
            Some(file) => cmd::deploy::run(a, file),
            None => cmd::sync::run(a),
        },
        #[cfg(feature = "aws")]
        Command::Prune(a) => cmd::prune::run(a),
        #[cfg(feature = "aws")]
        Command::Promote(a) => cmd::promote::run(a),
        Command::Ls(a) => cmd::store_cmds::ls(a),
        Command::Verify(a) => cmd::store_cmds::verify(a),
        Command::Gc(a) => cmd::store_cmds::gc(a),
        Command::Completions { shell } => {
            clap_complete::generate(*shell, &mut Cli::command(), "imgd", &mut std::io::stdout());
            Ok(())
        }
        Command::Man => clap_mangen::Man::new(Cli::command()).render(&mut std::io::stdout()).map_err(Into::into),
    };
    drop(flush_log); // every line logged is written before the last one
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(imgd::model::Kind::of(e.as_ref()).exit_code());
    }
}
