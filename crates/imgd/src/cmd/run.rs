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
  imgd run hello --format kernel       the ipxe kernel + initrd handed to qemu directly")]
pub struct RunArgs {
    #[command(flatten)]
    pub profile: ProfileArgs,
    #[command(flatten)]
    pub store: StoreArgs,
    /// What to boot: qcow2, raw, vhd, or kernel (the ipxe kernel + initrd);
    /// default: the first disk format the profile builds.
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
    let entry = imgd::build::build(&recipe, &store, &Progress::new(false))?.entry;
    let format = match a.format.as_deref() {
        Some("kernel") => Format::Ipxe,
        Some("ipxe") => bail!(imgd::config::ConfigError::new(
            "--format",
            "`imgd run` boots ipxe artifacts as `--format kernel`; `imgd test --format ipxe` netboots them through iPXE"
        )),
        Some(f) => f.parse().map_err(|e: String| imgd::config::ConfigError::new("--format", e))?,
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
