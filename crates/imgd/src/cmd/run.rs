//! `imgd run`: build if needed, then boot with the serial console on the
//! terminal. The store's artifacts are never written (qemu snapshot mode).

use super::test::{boot_source, resolve_accel};
use super::{ProfileArgs, StoreArgs};
use anyhow::{bail, Context};
use clap::Args;
use imgd::config::types::Format;
use imgd::progress::Progress;
use imgd::qemu::{self, Accel, Machine};

#[derive(Args, Debug)]
#[command(after_help = "Examples:
  imgd run hello                      the first disk format, console here (Ctrl-A X quits)
  imgd run debian --ssh 2222          and ssh -p 2222 ops@127.0.0.1
  imgd run hello --boot ipxe")]
pub struct RunArgs {
    #[command(flatten)]
    pub profile: ProfileArgs,
    #[command(flatten)]
    pub store: StoreArgs,
    /// Artifact to boot: qcow2, raw, vhd or ipxe (default: the first disk format built).
    #[arg(long)]
    pub boot: Option<Format>,
    /// Forward 127.0.0.1:PORT to the guest's SSH port.
    #[arg(long, value_name = "PORT")]
    pub ssh: Option<u16>,
    #[arg(long, value_enum, default_value = "auto")]
    pub accel: Accel,
}

pub fn run(a: &RunArgs) -> anyhow::Result<()> {
    let recipe = a.profile.recipe()?;
    let hw = imgd::config::load(&a.profile.request())?.hardware;
    let store = a.store.open()?;
    let entry = imgd::build::build(&recipe, &store, &Progress::new(false))?.entry;
    let format = match a.boot {
        Some(f) => f,
        None => [Format::Qcow2, Format::Raw, Format::Vhd, Format::Ipxe]
            .into_iter()
            .find(|f| recipe.formats.contains(f))
            .context("the profile builds nothing bootable")?,
    };
    if !recipe.formats.contains(&format) {
        bail!("profile {} does not build {format}", recipe.name);
    }
    let src = boot_source(&entry, format, &recipe)?;
    let accel = resolve_accel(a.accel, &entry);
    let machine = Machine { arch: recipe.arch, firmware: recipe.firmware, qemu: &hw.qemu, accel, ssh: a.ssh };
    let scratch = tempfile::tempdir()?;
    let cmd = qemu::command(&machine, &src, scratch.path())?;
    eprintln!("imgd run: {} ({format}, {accel:?})", entry.name);
    if let Some(port) = a.ssh {
        let user = recipe.users.first().map_or("root", |u| u.name.as_str());
        eprintln!(
            "imgd run: ssh -p {port} -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null {user}@127.0.0.1"
        );
    }
    let status = qemu::run_interactive(cmd)?;
    if !status.success() {
        bail!("qemu exited with {status}");
    }
    Ok(())
}
