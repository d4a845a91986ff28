//! `imgd test`: build if needed, boot headless, wait for the readiness marker.

use super::{ProfileArgs, StoreArgs};
use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use imgd::config::ConfigError;
use imgd::model::manifest::ArtifactName;
use imgd::model::Format;
use imgd::qemu::{self, Accel, BootSource, BootTarget, Machine, Platform};
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
    /// What to boot (repeatable). Default: the first format built.
    #[arg(long = "format", value_name = "FORMAT", value_enum)]
    pub formats: Vec<TestFormat>,
    /// Firmware for netboot [default: the hardware's].
    #[arg(long, value_enum)]
    pub platform: Option<Platform>,
    /// Seconds to wait for the marker in each boot.
    #[arg(long, default_value_t = 180)]
    pub timeout: u64,
    /// Text to wait for (default: the profile's ready_marker).
    #[arg(long)]
    pub expect: Option<String>,
    /// CPU emulation: auto uses KVM where a (cached) probe shows guests run.
    #[arg(long, value_enum, default_value = "auto")]
    pub accel: Accel,
    /// Boot the uki signed with this certificate (`imgd sign`) under OVMF
    /// with Secure Boot enforced and the certificate enrolled as PK, KEK and
    /// db (with virt-fw-vars, into a copy of the empty variable store).
    #[arg(long, value_name = "CERT")]
    pub secure_boot: Option<std::path::PathBuf>,
    /// With --secure-boot: this UEFI variable store (keys already enrolled,
    /// e.g. a fleet's own) instead of one enrolled with CERT.
    #[arg(long, value_name = "FILE", requires = "secure_boot")]
    pub vars: Option<std::path::PathBuf>,
    /// Keep the console logs when every boot passes (they are always kept
    /// when one fails).
    #[arg(long)]
    pub keep_logs: bool,
    /// Attach a raw file as an extra virtio disk (repeatable), e.g. to test
    /// `[scratch]`: `--drive d1.img,serial=scratch1` (`,if=nvme` for an NVMe
    /// controller). Writes reach the file.
    #[arg(long = "drive", value_name = "FILE[,serial=NAME][,if=nvme]")]
    pub drives: Vec<imgd::qemu::Drive>,
}

/// `--format` of `imgd test`: one way to boot (a [`BootTarget`], its help
/// and names as `imgd run` shows them), or `all`: every format the profile
/// builds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TestFormat(Option<BootTarget>);

impl ValueEnum for TestFormat {
    fn value_variants<'a>() -> &'a [Self] {
        const ALL: [TestFormat; 7] = [
            TestFormat(Some(BootTarget::Ipxe)),
            TestFormat(Some(BootTarget::Kernel)),
            TestFormat(Some(BootTarget::Raw)),
            TestFormat(Some(BootTarget::Qcow2)),
            TestFormat(Some(BootTarget::Vhd)),
            TestFormat(Some(BootTarget::Uki)),
            TestFormat(None),
        ];
        &ALL
    }

    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        match self.0 {
            Some(t) => t.to_possible_value(),
            None => Some(clap::builder::PossibleValue::new("all").help("Every format the profile builds")),
        }
    }
}

impl TestFormat {
    fn targets(self, bootable: &[BootTarget]) -> Vec<BootTarget> {
        self.0.map_or_else(|| bootable.to_vec(), |t| vec![t])
    }
}

pub fn run(a: &TestArgs) -> anyhow::Result<()> {
    let (loaded, recipe) = a.profile.loaded()?;
    let marker = a
        .expect
        .clone()
        .or_else(|| recipe.ready_marker.clone())
        .context("no marker: set ready_marker in the profile or pass --expect")?;
    let bootable: Vec<BootTarget> = recipe.formats.iter().filter_map(|f| BootTarget::of(*f)).collect();
    let mut wanted: Vec<BootTarget> = a.formats.iter().flat_map(|f| f.targets(&bootable)).collect();
    if a.formats.is_empty() {
        wanted.extend(bootable.first().copied());
    }
    if wanted.is_empty() {
        bail!("profile {} builds nothing bootable (only tar)", recipe.name);
    }
    if let Some(t) = wanted.iter().find(|t| !recipe.formats.contains(&t.format())) {
        bail!(ConfigError::new("--format", format!("profile {} does not build {}", recipe.name, t.format())));
    }
    let store = a.store.open()?;
    let entry = a.profile.build(&recipe, &store)?.entry;
    let scratch = tempfile::tempdir()?;
    // Console logs go in a private folder of their own (never a predictable
    // /tmp name a symlink could be planted at), kept when a boot fails (the
    // error names the log) or with --keep-logs, removed otherwise: a CI job
    // that tests every commit must not fill /tmp.
    use std::os::unix::fs::PermissionsExt;
    let logs =
        tempfile::Builder::new().prefix("imgd-test.").permissions(std::fs::Permissions::from_mode(0o700)).tempdir()?;
    let mut accel = resolve_accel(a.accel, &entry);
    let secure = match &a.secure_boot {
        Some(cert) => Some(secure_boot(a, &store, &entry, &wanted, cert, scratch.path())?),
        None => None,
    };
    if secure.is_some() && accel == Accel::Kvm {
        // The Secure Boot firmware keeps its variables behind SMM, which
        // KVM on many hosts (nested ones among them) does not offer.
        tracing::info!("Secure Boot: TCG (OVMF's SMM)");
        accel = Accel::Tcg;
    }
    let machine = Machine {
        arch: recipe.arch,
        firmware: recipe.firmware,
        qemu: &loaded.hardware.qemu,
        accel,
        ssh: None,
        secure_boot: secure.as_ref().map(|(vars, _)| vars.as_path()),
        drives: &a.drives,
    };
    let booted = wanted.into_iter().try_for_each(|target| {
        // The source, its name in the log file and progress lines, and in the result line.
        let (src, name, shown) = match (target, &secure) {
            (BootTarget::Ipxe, _) => {
                return netboot(a, &recipe, &machine, &entry, &marker, scratch.path(), logs.path());
            }
            (_, Some((_, src))) => (src.clone(), format!("{target}-secure-boot"), format!("{target} (Secure Boot)")),
            _ => (boot_source(&entry, target)?, target.to_string(), target.format().to_string()),
        };
        boot(a, &machine, &entry, src, [&name, &shown], &marker, scratch.path(), logs.path())
    });
    // A boot refused before qemu started wrote no log: nothing to keep.
    let wrote_logs = std::fs::read_dir(logs.path()).is_ok_and(|mut d| d.next().is_some());
    if (booted.is_err() && wrote_logs) || a.keep_logs {
        let kept = logs.keep();
        eprintln!("console logs kept in {}", kept.display());
    }
    booted
}

#[allow(clippy::too_many_arguments)]
fn boot(
    a: &TestArgs,
    machine: &Machine<'_>,
    entry: &imgd::store::Entry,
    src: BootSource,
    [name, shown]: [&str; 2],
    marker: &str,
    scratch: &std::path::Path,
    logs: &std::path::Path,
) -> anyhow::Result<()> {
    let cmd = qemu::command(machine, &src, scratch)?;
    let log = logs.join(format!("{}-{name}.log", entry.name));
    eprintln!("booting {} ({name}), console log {}", entry.name, log.display());
    let report = qemu::boot_until(cmd, marker, Duration::from_secs(a.timeout), &log)
        .with_context(|| format!("{} ({name})", entry.name))?;
    println!("ok {} {shown}: `{marker}` after {:.1}s", entry.name, report.seconds);
    Ok(())
}

/// For `--secure-boot CERT`: the variable store to boot with (enrolled with
/// CERT unless --vars gives one) and the signed uki or raw disk to boot.
fn secure_boot(
    a: &TestArgs,
    store: &imgd::store::Store,
    entry: &imgd::store::Entry,
    wanted: &[BootTarget],
    cert: &std::path::Path,
    scratch: &std::path::Path,
) -> anyhow::Result<(std::path::PathBuf, BootSource)> {
    let (format, name) = match wanted {
        [BootTarget::Uki] => (Format::Uki, ArtifactName::Uki),
        [BootTarget::Raw] => (Format::Raw, ArtifactName::Disk),
        _ => bail!(ConfigError::new("--secure-boot", "boots a signed uki or raw disk: pass --format uki or raw")),
    };
    let fp = imgd::sign::cert_fingerprint(cert)?;
    let signed = imgd::sign::find(store, entry, &fp)?.with_context(|| {
        format!("{} has nothing signed with {} yet: run imgd sign first", entry.name, cert.display())
    })?;
    let art = entry.manifest.artifact(format, name).with_context(|| format!("the entry has no {format}"))?;
    let file = signed.file(art.file.as_str()).with_context(|| format!("the signed set has no {}", art.file))?;
    let src = match format {
        Format::Uki => BootSource::EfiApp { app: file },
        _ => BootSource::Disk { image: file, format: "raw" },
    };
    let vars = match &a.vars {
        Some(v) => v.clone(),
        None => {
            let v = scratch.join("enrolled-vars.fd");
            qemu::enrol_vars(cert, &v)?;
            v
        }
    };
    Ok((vars, src))
}

/// An `imgd serve` on loopback that boots one entry for every machine, for
/// qemu's NIC ROM to netboot from through a guestfwd relay.
pub struct NetbootServer(pub imgd::serve::local::LocalServer);

impl NetbootServer {
    pub fn start(root: &std::path::Path, store: &std::path::Path, entry: &imgd::store::Entry) -> anyhow::Result<Self> {
        let m = &entry.manifest;
        if m.artifact(Format::Ipxe, ArtifactName::Kernel).is_none()
            || m.artifact(Format::Ipxe, ArtifactName::Initrd).is_none()
        {
            bail!("{} has no ipxe artifacts to netboot", entry.name);
        }
        let group = imgd::serve::boot::machines::Group {
            name: "imgd-test".into(),
            entry: Some(entry.name.clone()),
            default: true,
            ..Default::default()
        };
        Ok(NetbootServer(imgd::serve::local::LocalServer::start(root, store, vec![group])?))
    }

    pub fn port(&self) -> u16 {
        self.0.port
    }

    /// What qemu's guestfwd runs per guest connection.
    pub fn relay(&self) -> anyhow::Result<String> {
        Ok(self.0.relay()?)
    }

    /// Whether iPXE fetched the chain script, its own script, the kernel and
    /// the initrd (all of their bytes) from this server.
    pub fn check_served(&self, entry: &imgd::store::Entry) -> anyhow::Result<(u64, u64)> {
        let metrics = &self.0.server.metrics;
        let served = |endpoint: &str| metrics.requests(endpoint, 200);
        let m = &entry.manifest;
        let need: u64 = [ArtifactName::Kernel, ArtifactName::Initrd]
            .iter()
            .filter_map(|n| m.artifact(Format::Ipxe, *n))
            .map(|x| x.size)
            .sum();
        let sent = metrics.bytes_served.load(std::sync::atomic::Ordering::Relaxed);
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

/// Boots through the NIC's iPXE firmware from an `imgd serve` on loopback,
/// and checks that iPXE really fetched the script, kernel and initrd from it.
fn netboot(
    a: &TestArgs,
    recipe: &imgd::config::Recipe,
    machine: &Machine<'_>,
    entry: &imgd::store::Entry,
    marker: &str,
    scratch: &std::path::Path,
    logs: &std::path::Path,
) -> anyhow::Result<()> {
    let net = NetbootServer::start(&a.profile.root, &a.store.dir(), entry)?;
    let platform = a.platform.unwrap_or(Platform::of(recipe.firmware));
    let m = Machine { firmware: platform.firmware(), ..*machine };
    let cmd = qemu::command(&m, &BootSource::Netboot { relay: net.relay()?, mac: None }, scratch)?;
    let platform = platform.as_str();
    let log = logs.join(format!("{}-netboot-{platform}.log", entry.name));
    eprintln!(
        "netbooting {} ({platform}) from imgd serve on 127.0.0.1:{}, console log {}",
        entry.name,
        net.port(),
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
    if entry.manifest.arch != imgd::model::Arch::X86_64 || std::env::consts::ARCH != "x86_64" {
        return Accel::Tcg;
    }
    let kernel = entry.manifest.artifact(Format::Ipxe, ArtifactName::Kernel).map(|x| entry.path.join(x.file.as_str()));
    match kernel {
        Some(k) if qemu::kvm_works(&k, &imgd::dirs::cache()) => Accel::Kvm,
        _ => Accel::Tcg,
    }
}

/// How qemu boots `target` of `entry` (netboot aside: see [`NetbootServer`]).
pub fn boot_source(entry: &imgd::store::Entry, target: BootTarget) -> anyhow::Result<BootSource> {
    let f = target.format();
    let file = |name: ArtifactName| -> anyhow::Result<std::path::PathBuf> {
        let art =
            entry.manifest.artifact(f, name).with_context(|| format!("entry {} has no {f} {name:?}", entry.name))?;
        Ok(entry.path.join(art.file.as_str()))
    };
    Ok(match target {
        BootTarget::Kernel => BootSource::Direct {
            kernel: file(ArtifactName::Kernel)?,
            initrd: file(ArtifactName::Initrd)?,
            cmdline: format!("rdinit=/init {}", entry.manifest.recipe.cmdline),
        },
        BootTarget::Raw => BootSource::Disk { image: file(ArtifactName::Disk)?, format: "raw" },
        BootTarget::Qcow2 => BootSource::Disk { image: file(ArtifactName::Disk)?, format: "qcow2" },
        BootTarget::Vhd => BootSource::Disk { image: file(ArtifactName::Disk)?, format: "vpc" },
        BootTarget::Uki => BootSource::EfiApp { app: file(ArtifactName::Uki)? },
        BootTarget::Ipxe => bail!("a netboot needs imgd's server, not a file"),
    })
}
