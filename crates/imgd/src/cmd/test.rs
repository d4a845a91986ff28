//! `imgd test`: build if needed, boot headless, wait for the readiness marker.

use super::{ProfileArgs, StoreArgs};
use anyhow::{bail, Context};
use clap::Args;
use imgd::config::types::Format;
use imgd::progress::Progress;
use imgd::qemu::{self, Accel, BootSource, Machine};
use std::time::Duration;

#[derive(Args, Debug)]
#[command(after_help = "Examples:
  imgd test hello                         boot the first built format and wait for the marker
  imgd test hello --boot qcow2 --timeout 120
  imgd test hello --boot all")]
pub struct TestArgs {
    #[command(flatten)]
    pub profile: ProfileArgs,
    #[command(flatten)]
    pub store: StoreArgs,
    /// Which artifact to boot: ipxe (kernel + initrd), raw, qcow2, vhd, or all.
    #[arg(long, default_value = "first")]
    pub boot: String,
    /// Seconds to wait for the marker in each boot.
    #[arg(long, default_value_t = 180)]
    pub timeout: u64,
    /// Text to wait for (default: the profile's ready_marker).
    #[arg(long)]
    pub expect: Option<String>,
    /// CPU emulation: tcg always works; kvm only where nested virtualization does.
    #[arg(long, value_enum, default_value = "tcg")]
    pub accel: Accel,
}

pub fn run(a: &TestArgs) -> anyhow::Result<()> {
    let recipe = a.profile.recipe()?;
    let loaded_hw = imgd::config::load(&a.profile.request())?.hardware;
    let marker = a
        .expect
        .clone()
        .or_else(|| recipe.ready_marker.clone())
        .context("no marker: set ready_marker in the profile or pass --expect")?;
    let store = a.store.open()?;
    let built = imgd::build::build(&recipe, &store, &Progress::new(false))?;
    let entry = built.entry;
    let wanted: Vec<Format> = match a.boot.as_str() {
        "all" => recipe.formats.iter().copied().filter(|f| *f != Format::Tar).collect(),
        "first" => recipe.formats.iter().copied().filter(|f| *f != Format::Tar).take(1).collect(),
        other => vec![other.parse().map_err(|e: String| anyhow::anyhow!(e))?],
    };
    if wanted.is_empty() {
        bail!("profile {} builds nothing bootable (only tar)", recipe.name);
    }
    let scratch = tempfile::tempdir()?;
    let machine = Machine { arch: recipe.arch, firmware: recipe.firmware, qemu: &loaded_hw.qemu, accel: a.accel };
    for f in wanted {
        let file = |name: &str| -> anyhow::Result<std::path::PathBuf> {
            let art =
                entry.manifest.artifact(f, name).with_context(|| format!("entry {} has no {f} {name}", entry.name))?;
            Ok(entry.path.join(&art.file))
        };
        let src = match f {
            Format::Ipxe => BootSource::Direct {
                kernel: file("kernel")?,
                initrd: file("initrd")?,
                cmdline: format!("rdinit=/init {}", recipe.cmdline),
            },
            Format::Raw => BootSource::Disk { image: file("disk")?, format: "raw" },
            Format::Qcow2 => BootSource::Disk { image: file("disk")?, format: "qcow2" },
            Format::Vhd => BootSource::Disk { image: file("disk")?, format: "vpc" },
            Format::Tar => bail!("a tarball cannot be booted"),
        };
        let cmd = qemu::command(&machine, &src, scratch.path())?;
        let log = std::env::temp_dir().join(format!("imgd-test-{}-{f}.log", entry.name));
        eprintln!("booting {} ({f}), console log {}", entry.name, log.display());
        let report = qemu::boot_until(cmd, &marker, Duration::from_secs(a.timeout), &log)
            .with_context(|| format!("{} ({f})", entry.name))?;
        println!("ok {} {f}: `{marker}` after {:.1}s", entry.name, report.seconds);
    }
    Ok(())
}
