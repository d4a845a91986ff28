//! `imgd run`: build if needed, then boot with the serial console on the
//! terminal. The store's artifacts are never written (qemu snapshot mode).

use super::test::{boot_source, resolve_accel, NetbootServer};
use super::{ProfileArgs, StoreArgs};
use anyhow::{bail, Context};
use clap::Args;
use imgd::config::ConfigError;
use imgd::model::Format;
use imgd::qemu::{self, Accel, BootTarget, Machine, Platform};

#[derive(Args, Debug)]
#[command(after_help = "Examples:
  imgd run hello                      the first disk format, console here (Ctrl-A X quits)
  imgd run debian --ssh 2222          and ssh -p 2222 ops@127.0.0.1
  imgd run hello --format kernel       the ipxe kernel + initrd handed to qemu directly")]
pub struct RunArgs {
    #[command(flatten)]
    pub profile: ProfileArgs,
    #[command(flatten)]
    pub store: StoreArgs,
    /// What to boot [default: the first disk format the profile builds].
    #[arg(long = "format", value_name = "FORMAT", value_enum)]
    pub format: Option<BootTarget>,
    /// Forward 127.0.0.1:PORT to the guest's SSH port.
    #[arg(long, value_name = "PORT")]
    pub ssh: Option<u16>,
    #[arg(long, value_enum, default_value = "auto")]
    pub accel: Accel,
    /// Attach a raw file as an extra virtio disk (repeatable).
    #[arg(long = "drive", value_name = "FILE[,serial=NAME][,if=nvme]")]
    pub drives: Vec<imgd::qemu::Drive>,
}

pub fn run(a: &RunArgs) -> anyhow::Result<()> {
    let (loaded, recipe) = a.profile.loaded()?;
    let target = match a.format {
        Some(t) => t,
        None => [Format::Qcow2, Format::Raw, Format::Vhd, Format::Ipxe]
            .into_iter()
            .find(|f| recipe.formats.contains(f))
            .and_then(BootTarget::of)
            .context("the profile builds nothing bootable")?,
    };
    if !recipe.formats.contains(&target.format()) {
        bail!(ConfigError::new("--format", format!("profile {} does not build {}", recipe.name, target.format())));
    }
    let store = a.store.open()?;
    let entry = a.profile.build(&recipe, &store)?.entry;
    let accel = resolve_accel(a.accel, &entry);
    let mut machine = Machine {
        arch: recipe.arch,
        firmware: recipe.firmware,
        qemu: &loaded.hardware.qemu,
        accel,
        ssh: a.ssh,
        secure_boot: None,
        drives: &a.drives,
    };
    let scratch = tempfile::tempdir()?;
    let mut _server = None;
    let src = if target == BootTarget::Ipxe {
        let net = NetbootServer::start(&a.profile.root, &a.store.dir(), &entry)?;
        machine.firmware = Platform::of(recipe.firmware).firmware();
        let relay = net.relay()?;
        _server = Some(net);
        qemu::BootSource::Netboot { relay, mac: None }
    } else {
        boot_source(&entry, target)?
    };
    let cmd = qemu::command(&machine, &src, scratch.path())?;
    eprintln!("imgd run: {} ({target}, {accel:?})", entry.name);
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
