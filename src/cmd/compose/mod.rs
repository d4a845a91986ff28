//! `imgd compose`: build, boot, test and deploy a composition (a server and
//! N nodes) from one file. See `config::composition` for the file and
//! `imgd::compose` for the machines and the step runner.

mod args;
mod deploy;
mod images;
mod test;
mod up;

pub use args::{Common, ConnectArgs, DeployArgs, ExecArgs, TestArgs, Which};

use anyhow::Result;
use clap::{Args, Subcommand};
use std::path::PathBuf;

#[derive(Args, Debug)]
#[command(after_help = "Examples:
  imgd compose test profiles/hello.compose.toml                 boot all, run the steps, stop all
  imgd compose test profiles/hello.compose.toml --variant small
  imgd compose up profiles/hello.compose.toml --set role.node.count=5
  imgd compose exec profiles/hello.compose.toml node2 'ip addr'
  imgd compose connect profiles/hello.compose.toml             tmux, one pane per node
  imgd compose deploy profiles/hello.compose.toml --nodes NODES --out site/")]
pub struct ComposeArgs {
    #[command(subcommand)]
    pub verb: Verb,
}

#[derive(Subcommand, Debug)]
pub enum Verb {
    /// Build each distinct image of the composition once.
    Build(Common),
    /// Boot every machine, run the steps, stop every machine however it ends.
    Test(TestArgs),
    /// Boot every machine and keep them up until Ctrl-C or `imgd compose down`.
    Up(Common),
    /// Run a shell command on a machine of a composition that is `up`.
    Exec(ExecArgs),
    /// Stop a composition that is `up`.
    Down(Which),
    /// Open tmux with one pane per machine of a composition that is `up`.
    Connect(ConnectArgs),
    /// Write a machines.toml (and a rootfs tarball per role) that boots real
    /// machines, listed in a NODES file, as the composition's nodes.
    Deploy(DeployArgs),
    /// A line shell on one machine (what `connect`'s panes run).
    #[command(hide = true)]
    Shell { file: PathBuf, node: String },
}

pub fn run(a: &ComposeArgs) -> Result<()> {
    match &a.verb {
        Verb::Build(c) => {
            let b = images::build(c)?;
            for (role, img) in b.comp.roles.iter().zip(&b.images) {
                println!("{}\t{}", role.name, img.entry);
            }
            Ok(())
        }
        Verb::Test(t) => test::test(t),
        Verb::Up(c) => up::up(c),
        Verb::Exec(e) => up::exec(e),
        Verb::Down(w) => up::down(w),
        Verb::Connect(w) => up::connect(w),
        Verb::Deploy(d) => deploy::deploy(d),
        Verb::Shell { file, node } => up::shell(file, node),
    }
}
