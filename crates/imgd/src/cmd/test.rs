//! `imgd test`: build if needed, boot headless, wait for the readiness marker.

use super::{ProfileArgs, StoreArgs};
use anyhow::{bail, Context};
use clap::Args;
use imgd::config::types::Format;
use imgd::config::ConfigError;
use imgd::progress::Progress;
use imgd::qemu::{self, Accel, BootSource, Machine};
use std::time::Duration;

#[derive(Args, Debug)]
#[command(after_help = "Examples:
  imgd test hello                         boot the first format the profile builds
  imgd test hello --format qcow2 --timeout 120
  imgd test hello --format ipxe           netboot through the NIC's iPXE firmware from imgd serve
  imgd test hello --format all            every format the profile builds")]
pub struct TestArgs {
    #[command(flatten)]
    pub profile: ProfileArgs,
    #[command(flatten)]
    pub store: StoreArgs,
    /// What to boot (repeatable): ipxe (the NIC's iPXE firmware netbooting from
    /// imgd's server), kernel (the ipxe kernel + initrd handed to qemu
    /// directly), raw, qcow2, vhd, or all. Default: the first format built.
    #[arg(long = "format", value_name = "FORMAT")]
    pub formats: Vec<String>,
    /// Firmware for netboot: pcbios (SeaBIOS + iPXE ROM) or efi (OVMF + iPXE
    /// EFI ROM); default: the hardware's.
    #[arg(long, value_parser = ["pcbios", "efi"])]
    pub platform: Option<String>,
    /// Seconds to wait for the marker in each boot.
    #[arg(long, default_value_t = 180)]
    pub timeout: u64,
    /// Text to wait for (default: the profile's ready_marker).
    #[arg(long)]
    pub expect: Option<String>,
    /// CPU emulation: auto uses KVM where a (cached) probe shows guests run.
    #[arg(long, value_enum, default_value = "auto")]
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
    let built = a.profile.build(&recipe, &store, &Progress::new(false))?;
    let entry = built.entry;
    let bootable: Vec<Boot> = recipe
        .formats
        .iter()
        .filter(|f| **f != Format::Tar)
        .map(|f| if *f == Format::Ipxe { Boot::Netboot } else { Boot::Artifact(*f) })
        .collect();
    let mut wanted: Vec<Boot> = Vec::new();
    for f in &a.formats {
        match f.as_str() {
            "all" => wanted.extend(bootable.iter().copied()),
            "ipxe" => wanted.push(Boot::Netboot),
            "kernel" => wanted.push(Boot::Artifact(Format::Ipxe)),
            other => wanted.push(Boot::Artifact(other.parse().map_err(|e: String| ConfigError::new("--format", e))?)),
        }
    }
    if a.formats.is_empty() {
        wanted.extend(bootable.first().copied());
    }
    if wanted.is_empty() {
        bail!("profile {} builds nothing bootable (only tar)", recipe.name);
    }
    let scratch = tempfile::tempdir()?;
    let accel = resolve_accel(a.accel, &entry);
    let machine = Machine { arch: recipe.arch, firmware: recipe.firmware, qemu: &loaded_hw.qemu, accel, ssh: None };
    for w in &wanted {
        let f = match w {
            Boot::Netboot => Format::Ipxe,
            Boot::Artifact(f) => *f,
        };
        if !recipe.formats.contains(&f) {
            bail!(ConfigError::new("--format", format!("profile {} does not build {f}", recipe.name)));
        }
    }
    for boot in wanted {
        let f = match boot {
            Boot::Netboot => {
                netboot(a, &recipe, &machine, &entry, &marker, scratch.path())?;
                continue;
            }
            Boot::Artifact(f) => f,
        };
        let src = boot_source(&entry, f, &recipe)?;
        let cmd = qemu::command(&machine, &src, scratch.path())?;
        let log = std::env::temp_dir().join(format!("imgd-test-{}-{f}.log", entry.name));
        eprintln!("booting {} ({f}), console log {}", entry.name, log.display());
        let report = qemu::boot_until(cmd, &marker, Duration::from_secs(a.timeout), &log)
            .with_context(|| format!("{} ({f})", entry.name))?;
        println!("ok {} {f}: `{marker}` after {:.1}s", entry.name, report.seconds);
    }
    Ok(())
}

#[derive(Debug, Clone, Copy)]
enum Boot {
    Artifact(Format),
    Netboot,
}

/// An `imgd serve` on loopback that boots one entry for every machine, for
/// qemu's NIC ROM to netboot from through a guestfwd relay.
pub struct NetbootServer {
    rt: tokio::runtime::Runtime,
    pub server: std::sync::Arc<imgd::serve::http::Server>,
    pub port: u16,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    handle: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl NetbootServer {
    pub fn start(root: &std::path::Path, store: &std::path::Path, entry: &imgd::store::Entry) -> anyhow::Result<Self> {
        use imgd::serve::{http, machines, state};
        let has = |f: &str| entry.manifest.artifacts.iter().any(|x| x.file == f);
        if !has("vmlinuz") || !has("initrd") {
            bail!("{} has no ipxe artifacts to netboot", entry.name);
        }
        let sources = state::Sources {
            root: root.to_path_buf(),
            cache: imgd::config::default_cache(),
            store: store.to_path_buf(),
            machines: None,
            serve_all: false,
            build_missing: false,
        };
        let group = machines::Group {
            name: "imgd-test".into(),
            entry: Some(entry.name.clone()),
            default: true,
            ..Default::default()
        };
        let st = state::load(&sources, Some(machines::MachinesFile { groups: vec![group] }))?;
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
        let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
        let port = listener.local_addr()?.port();
        // qemu's guestfwd relay serves one guest connection at a time: a kept-alive
        // connection would hold back iPXE's next one until it timed out.
        let server = http::Server::new(st, http::Options { keep_alive: false, ..http::Options::default() });
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let srv = server.clone();
        let handle = rt.spawn(async move {
            http::serve(listener, srv, async {
                let _ = stopped.await;
            })
            .await
        });
        Ok(NetbootServer { rt, server, port, stop: Some(stop), handle: Some(handle) })
    }

    /// What qemu's guestfwd runs per guest connection.
    pub fn relay(&self) -> anyhow::Result<String> {
        Ok(format!("{} relay 127.0.0.1:{}", std::env::current_exe()?.display(), self.port))
    }

    /// Whether iPXE fetched the chain script, its own script, the kernel and
    /// the initrd (all of their bytes) from this server.
    pub fn check_served(&self, entry: &imgd::store::Entry) -> anyhow::Result<(u64, u64)> {
        let metrics = self.server.metrics.render();
        let served = |endpoint: &str| {
            metrics
                .lines()
                .find(|l| l.starts_with(&format!("imgd_http_requests_total{{endpoint=\"{endpoint}\",status=\"200\"}}")))
                .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
                .unwrap_or(0)
        };
        let need: u64 =
            entry.manifest.artifacts.iter().filter(|x| x.file == "vmlinuz" || x.file == "initrd").map(|x| x.size).sum();
        let sent = self.server.metrics.bytes_served.load(std::sync::atomic::Ordering::Relaxed);
        if served("boot.ipxe") < 1 || served("ipxe") < 1 || served("artifacts") < 2 || sent < need {
            bail!(
                "the machine booted, but not from imgd: boot.ipxe {}, ipxe {}, artifacts {}, {sent} of {need} bytes",
                served("boot.ipxe"),
                served("ipxe"),
                served("artifacts")
            );
        }
        Ok((served("artifacts"), sent))
    }
}

impl Drop for NetbootServer {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(h) = self.handle.take() {
            let _ = self.rt.block_on(h);
        }
    }
}

/// The firmware for a netboot: `--platform`, else the hardware's.
pub fn netboot_firmware(
    platform: Option<&str>,
    hw: imgd::config::types::Firmware,
) -> (imgd::config::types::Firmware, &'static str) {
    use imgd::config::types::Firmware;
    match platform {
        Some("pcbios") => (Firmware::Bios, "pcbios"),
        Some(_) => (Firmware::Uefi, "efi"),
        None if hw == Firmware::Bios => (Firmware::Bios, "pcbios"),
        None => (Firmware::Uefi, "efi"),
    }
}

/// Boots through the NIC's iPXE firmware from an `imgd serve` on loopback,
/// and checks that iPXE really fetched the script, kernel and initrd from it.
fn netboot(
    a: &TestArgs,
    recipe: &imgd::config::Recipe,
    machine: &Machine<'_>,
    entry: &imgd::store::Entry,
    marker: &str,
    scratch: &std::path::Path,
) -> anyhow::Result<()> {
    let store = a.store.store.clone().unwrap_or_else(imgd::store::default_dir);
    let net = NetbootServer::start(&a.profile.root, &store, entry)?;
    let (firmware, platform) = netboot_firmware(a.platform.as_deref(), recipe.firmware);
    let m = Machine { firmware, ..*machine };
    let cmd = qemu::command(&m, &BootSource::Netboot { relay: net.relay()? }, scratch)?;
    let log = std::env::temp_dir().join(format!("imgd-test-{}-netboot-{platform}.log", entry.name));
    eprintln!(
        "netbooting {} ({platform}) from imgd serve on 127.0.0.1:{}, console log {}",
        entry.name,
        net.port,
        log.display()
    );
    let report = qemu::boot_until(cmd, marker, Duration::from_secs(a.timeout), &log)
        .with_context(|| format!("{} (netboot, {platform})", entry.name))?;
    // Passing means iPXE fetched everything from us, not that something booted.
    let (artifacts, sent) = net.check_served(entry)?;
    println!(
        "ok {} netboot ({platform}): `{marker}` after {:.1}s; iPXE fetched boot.ipxe, ipxe and {artifacts} artifacts ({sent} bytes) from imgd",
        entry.name, report.seconds
    );
    Ok(())
}

/// `auto` becomes KVM only when a probe boot of the entry's kernel runs under it.
pub fn resolve_accel(accel: Accel, entry: &imgd::store::Entry) -> Accel {
    if accel != Accel::Auto {
        return accel;
    }
    // KVM runs guests of the host's own architecture only.
    if entry.manifest.arch != imgd::config::types::Arch::X86_64 || std::env::consts::ARCH != "x86_64" {
        return Accel::Tcg;
    }
    let kernel = entry.manifest.artifacts.iter().find(|x| x.file == "vmlinuz").map(|x| entry.path.join(&x.file));
    match kernel {
        Some(k) if qemu::kvm_works(&k, &imgd::config::default_cache()) => Accel::Kvm,
        _ => Accel::Tcg,
    }
}

/// How qemu boots artifact format `f` of `entry`.
pub fn boot_source(entry: &imgd::store::Entry, f: Format, recipe: &imgd::config::Recipe) -> anyhow::Result<BootSource> {
    let file = |name: &str| -> anyhow::Result<std::path::PathBuf> {
        let art =
            entry.manifest.artifact(f, name).with_context(|| format!("entry {} has no {f} {name}", entry.name))?;
        Ok(entry.path.join(&art.file))
    };
    Ok(match f {
        Format::Ipxe => BootSource::Direct {
            kernel: file("kernel")?,
            initrd: file("initrd")?,
            cmdline: format!("rdinit=/init {}", recipe.cmdline),
        },
        Format::Raw => BootSource::Disk { image: file("disk")?, format: "raw" },
        Format::Qcow2 => BootSource::Disk { image: file("disk")?, format: "qcow2" },
        Format::Vhd => BootSource::Disk { image: file("disk")?, format: "vpc" },
        Format::Tar => bail!("a tarball cannot be booted"),
    })
}
