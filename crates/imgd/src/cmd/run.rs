//! `imgd run`: build if needed, then boot with the serial console on the
//! terminal. The store's artifacts are never written (qemu snapshot mode).

use super::test::{boot_source, netboot_firmware, resolve_accel, NetbootServer};
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
  imgd run hello --format kernel       the ipxe kernel + initrd handed to qemu directly")]
pub struct RunArgs {
    #[command(flatten)]
    pub profile: ProfileArgs,
    #[command(flatten)]
    pub store: StoreArgs,
    /// What to boot: qcow2, raw, vhd, ipxe (netboot through the NIC's iPXE
    /// firmware from imgd's server) or kernel (the ipxe kernel + initrd handed
    /// to qemu); default: the first disk format the profile builds.
    #[arg(long = "format", value_name = "FORMAT")]
    pub format: Option<String>,
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
    let entry = a.profile.build(&recipe, &store, &Progress::new(false))?.entry;
    let netboot = a.format.as_deref() == Some("ipxe");
    let format = match a.format.as_deref() {
        Some("kernel") | Some("ipxe") => Format::Ipxe,
        Some(f) => f.parse().map_err(|e: String| imgd::config::ConfigError::new("--format", e))?,
        None => [Format::Qcow2, Format::Raw, Format::Vhd, Format::Ipxe]
            .into_iter()
            .find(|f| recipe.formats.contains(f))
            .context("the profile builds nothing bootable")?,
    };
    if !recipe.formats.contains(&format) {
        bail!("profile {} does not build {format}", recipe.name);
    }
    let accel = resolve_accel(a.accel, &entry);
    let mut machine = Machine { arch: recipe.arch, firmware: recipe.firmware, qemu: &hw.qemu, accel, ssh: a.ssh };
    let scratch = tempfile::tempdir()?;
    let mut _server = None;
    let src = if netboot {
        let store_dir = a.store.store.clone().unwrap_or_else(imgd::store::default_dir);
        let net = NetbootServer::start(&a.profile.root, &store_dir, &entry)?;
        machine.firmware = netboot_firmware(None, recipe.firmware).0;
        let relay = net.relay()?;
        _server = Some(net);
        qemu::BootSource::Netboot { relay }
    } else {
        boot_source(&entry, format, &recipe)?
    };
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
