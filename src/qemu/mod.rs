//! Booting artifacts in local qemu: the command line for a hardware profile,
//! and a headless boot that waits for a marker on the serial console.
//!
//! Guests never get a network unless a test asks for one, and disk images are
//! opened with `snapshot=on` so the store's files are never written.

pub mod pvh;

use crate::config::hardware::{DiskBus, QemuSpec};
use crate::fsutil::IoAt;
use crate::model::{Arch, Firmware, Format};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub enum BootSource {
    /// Kernel and initrd handed to qemu directly (`-kernel/-initrd`).
    Direct { kernel: PathBuf, initrd: PathBuf, cmdline: String },
    /// A disk image; `format` is qemu's name (raw, qcow2, vpc).
    Disk { image: PathBuf, format: &'static str },
    /// An EFI application (a unified kernel image) that the firmware loads
    /// as the removable-media loader of a small ESP made in `scratch`.
    EfiApp { app: PathBuf },
    /// The NIC's iPXE ROM boots from the network. The guest reaches nothing but
    /// `http://10.0.2.100/`, which qemu relays to `relay` (a command that talks
    /// to the netboot server on loopback): user networking with restrict=on.
    /// `mac`: the NIC's, when the server tells machines apart by it.
    Netboot { relay: String, mac: Option<String> },
}

/// What `imgd run` and `imgd test` boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BootTarget {
    /// The NIC's iPXE firmware netbooting from imgd's own server.
    Ipxe,
    /// The ipxe format's kernel + initrd handed to qemu directly.
    Kernel,
    Raw,
    Qcow2,
    Vhd,
    /// The unified kernel image, loaded (and under Secure Boot, verified)
    /// by the UEFI firmware.
    Uki,
}

impl BootTarget {
    /// The artifact format this boots.
    pub fn format(self) -> Format {
        match self {
            BootTarget::Ipxe | BootTarget::Kernel => Format::Ipxe,
            BootTarget::Raw => Format::Raw,
            BootTarget::Qcow2 => Format::Qcow2,
            BootTarget::Vhd => Format::Vhd,
            BootTarget::Uki => Format::Uki,
        }
    }

    /// How a format is booted by default (a tarball is not bootable).
    pub fn of(f: Format) -> Option<BootTarget> {
        match f {
            Format::Ipxe => Some(BootTarget::Ipxe),
            Format::Raw => Some(BootTarget::Raw),
            Format::Qcow2 => Some(BootTarget::Qcow2),
            Format::Vhd => Some(BootTarget::Vhd),
            Format::Uki => Some(BootTarget::Uki),
            Format::Tar | Format::Sbom => None,
        }
    }
}

impl std::fmt::Display for BootTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use clap::ValueEnum;
        let name = self.to_possible_value().map(|v| v.get_name().to_string()).unwrap_or_default();
        f.pad(&name)
    }
}

/// The firmware a netboot runs, in iPXE's words (`${platform}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Platform {
    /// SeaBIOS with the NIC's iPXE ROM.
    Pcbios,
    /// OVMF with the NIC's iPXE EFI ROM.
    Efi,
}

impl Platform {
    pub fn of(f: Firmware) -> Platform {
        match f {
            Firmware::Bios => Platform::Pcbios,
            Firmware::Uefi => Platform::Efi,
        }
    }

    pub fn firmware(self) -> Firmware {
        match self {
            Platform::Pcbios => Firmware::Bios,
            Platform::Efi => Firmware::Uefi,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Platform::Pcbios => "pcbios",
            Platform::Efi => "efi",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Accel {
    /// KVM where a probe shows guests really run, else TCG.
    Auto,
    Kvm,
    Tcg,
}

#[derive(Clone, Copy)]
pub struct Machine<'a> {
    pub arch: Arch,
    pub firmware: Firmware,
    pub qemu: &'a QemuSpec,
    pub accel: Accel,
    /// Forward 127.0.0.1:PORT on the host to the guest's port 22.
    pub ssh: Option<u16>,
    /// UEFI with Secure Boot enforced, and these variables (PK, KEK, db
    /// enrolled: see [`enrol_vars`]) instead of the empty template.
    pub secure_boot: Option<&'a Path>,
    /// Extra disks (`--drive`), attached as virtio disks after the boot disk.
    pub drives: &'a [Drive],
}

/// `--drive FILE[,serial=NAME][,if=virtio|nvme]`: a raw file attached as an
/// extra disk (virtio-blk, or an NVMe controller with one namespace, as EC2
/// instance storage is). Writes go to the file (no snapshot): a test can boot
/// twice on one set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drive {
    pub path: PathBuf,
    pub serial: Option<String>,
    pub nvme: bool,
}

impl std::str::FromStr for Drive {
    type Err = String;
    fn from_str(s: &str) -> Result<Drive, String> {
        let mut parts = s.split(',');
        let path = PathBuf::from(parts.next().unwrap_or_default());
        let mut d = Drive { path, serial: None, nvme: false };
        for opt in parts {
            match opt.split_once('=') {
                // virtio-blk keeps 20 bytes of serial (NVMe as many).
                Some(("serial", v))
                    if !v.is_empty()
                        && v.len() <= 20
                        && v.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)) =>
                {
                    d.serial = Some(v.to_string())
                }
                Some(("serial", v)) => return Err(format!("serial `{v}`: 1 to 20 letters, digits, . _ -")),
                Some(("if", "virtio")) => d.nvme = false,
                Some(("if", "nvme")) => d.nvme = true,
                _ => {
                    return Err(format!(
                        "`{opt}` in `{s}`: expected FILE[,serial=NAME][,if=virtio|nvme], no comma in FILE"
                    ))
                }
            }
        }
        if !d.path.is_file() {
            return Err(format!("{}: no such file", d.path.display()));
        }
        Ok(d)
    }
}

fn drives(c: &mut Command, m: &Machine<'_>) {
    for (i, d) in m.drives.iter().enumerate() {
        c.arg("-drive").arg(format!("file={},format=raw,if=none,id=extra{i}", d.path.display()));
        let serial = d.serial.clone().unwrap_or_else(|| format!("imgd-extra{i}"));
        let device = if d.nvme { "nvme" } else { "virtio-blk-pci" };
        c.arg("-device").arg(format!("{device},drive=extra{i},serial={serial}"));
    }
}

const OVMF_CODE: &[&str] =
    &["/usr/share/OVMF/OVMF_CODE_4M.fd", "/usr/share/OVMF/OVMF_CODE.fd", "/usr/share/qemu/OVMF.fd"];
const OVMF_VARS: &[&str] = &["/usr/share/OVMF/OVMF_VARS_4M.fd", "/usr/share/OVMF/OVMF_VARS.fd"];
/// OVMF built with Secure Boot and SMM (the variable store is protected
/// from the OS, as on real hardware).
const OVMF_CODE_SECBOOT: &[&str] = &["/usr/share/OVMF/OVMF_CODE_4M.secboot.fd"];
const AAVMF_CODE: &[&str] = &["/usr/share/AAVMF/AAVMF_CODE.fd", "/usr/share/qemu-efi-aarch64/QEMU_EFI.fd"];
const AAVMF_VARS: &[&str] = &["/usr/share/AAVMF/AAVMF_VARS.fd"];

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
}

/// What can stop a boot before or while it runs.
#[derive(Debug, thiserror::Error)]
pub enum QemuError {
    #[error(transparent)]
    Io(#[from] crate::fsutil::IoError),
    #[error(transparent)]
    Tool(#[from] crate::tools::ToolError),
    #[error(transparent)]
    Artifact(#[from] crate::artifact::ArtifactError),
    /// This machine cannot boot that here (a firmware or qemu missing, an
    /// arch or firmware that does not fit the boot source): what and why.
    #[error("{0}")]
    Cannot(String),
    #[error("cannot start {program} (apt-get install {package})")]
    Start {
        program: String,
        package: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("enrolling the certificate (pip install virt-firmware)")]
    Enrol(#[source] crate::tools::ToolError),
    /// The machine did not reach its marker: why, the console log's path
    /// and its last lines.
    #[error("{reason} (console log: {})\n--- last {} console lines ---\n{}", log.display(), tail.len(), tail.join("\n"))]
    Boot { reason: String, log: PathBuf, tail: Vec<String> },
    #[error("relay: connecting to {addr}")]
    Relay {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    /// qemu's console or the relay's streams failed mid-way.
    #[error("talking to qemu: {0}")]
    Stream(#[from] std::io::Error),
}

type Result<T, E = QemuError> = std::result::Result<T, E>;

fn cannot(why: impl Into<String>) -> QemuError {
    QemuError::Cannot(why.into())
}

fn first_existing(paths: &[&str]) -> Option<PathBuf> {
    paths.iter().map(PathBuf::from).find(|p| p.is_file())
}

/// The qemu command for `m` booting `src`; `scratch` holds the UEFI vars copy.
pub fn command(m: &Machine<'_>, src: &BootSource, scratch: &Path) -> Result<Command> {
    let program = match m.arch {
        Arch::X86_64 => "qemu-system-x86_64",
        Arch::Aarch64 => "qemu-system-aarch64",
    };
    if m.arch == Arch::Aarch64 {
        aarch64_can_boot(m, src, program)?;
    }
    let mut c = Command::new(program);
    // Secure Boot's variables live behind SMM on x86_64 (the secboot OVMF
    // refuses to start without it).
    let smm = m.secure_boot.is_some() && m.arch == Arch::X86_64;
    let machine = if smm { format!("{},smm=on", m.qemu.machine) } else { m.qemu.machine.clone() };
    c.args(["-machine", &machine, "-cpu", &m.qemu.cpu]);
    c.args(["-m", &m.qemu.memory_mib.to_string(), "-smp", &m.qemu.smp.to_string()]);
    c.args([
        "-accel",
        match m.accel {
            Accel::Kvm => "kvm",
            // Callers resolve Auto (see `kvm_works`); unresolved means TCG.
            Accel::Tcg | Accel::Auto => "tcg",
        },
    ]);
    c.args(["-display", "none", "-monitor", "none", "-serial", "stdio", "-no-reboot"]);
    match src {
        BootSource::Netboot { relay, mac } => {
            if relay.contains(',') {
                return Err(cannot(format!("the relay command must not contain commas (qemu option syntax): {relay}")));
            }
            if m.firmware == Firmware::Uefi {
                uefi_firmware(&mut c, m, scratch)?;
            }
            let ssh = m.ssh.map_or(String::new(), |p| format!(",hostfwd=tcp:127.0.0.1:{p}-:22"));
            c.arg("-netdev").arg(format!(
                "user,id=n0,restrict=on,guestfwd=tcp:10.0.2.100:80-cmd:{relay},bootfile=http://10.0.2.100/boot.ipxe{ssh}"
            ));
            let mac = mac.as_ref().map_or(String::new(), |m| format!(",mac={m}"));
            c.arg("-device").arg(format!("{},netdev=n0,bootindex=1{mac}", m.qemu.nic));
        }
        BootSource::Direct { kernel, initrd, cmdline } => {
            user_net(&mut c, m);
            let kernel = match m.arch {
                Arch::X86_64 => pvh::kernel_for_qemu(kernel, &crate::dirs::cache()),
                Arch::Aarch64 => kernel.clone(),
            };
            // The kernel's IO-APIC timer check counts ticks over a few
            // milliseconds of real time, which a TCG guest on a busy host
            // can miss ("IO-APIC + timer doesn't work!", a panic). KVM
            // guests skip it by themselves; qemu's timer does work.
            let cmdline = match m.accel {
                Accel::Kvm => cmdline.clone(),
                Accel::Tcg | Accel::Auto => format!("{cmdline} no_timer_check"),
            };
            c.arg("-kernel").arg(kernel).arg("-initrd").arg(initrd).arg("-append").arg(cmdline);
        }
        BootSource::EfiApp { app } => {
            user_net(&mut c, m);
            if m.firmware != Firmware::Uefi {
                return Err(cannot("an EFI application boots by UEFI; this hardware boots by BIOS"));
            }
            uefi_firmware(&mut c, m, scratch)?;
            let esp = esp_holding(m, app, scratch)?;
            c.arg("-drive").arg(format!("file={},format=raw,if=none,id=disk0,snapshot=on", esp.display()));
            c.args(["-device", &disk_device(m.qemu.disk)]);
        }
        BootSource::Disk { image, format } => {
            user_net(&mut c, m);
            if m.firmware == Firmware::Uefi {
                uefi_firmware(&mut c, m, scratch)?;
            }
            c.arg("-drive").arg(format!("file={},format={format},if=none,id=disk0,snapshot=on", image.display()));
            c.args(["-device", &disk_device(m.qemu.disk)]);
        }
    }
    drives(&mut c, m);
    Ok(c)
}

/// What an aarch64 boot needs that x86_64 has by default.
fn aarch64_can_boot(m: &Machine<'_>, src: &BootSource, program: &str) -> Result<()> {
    if !on_path(program) {
        return Err(cannot("booting aarch64 hardware needs qemu-system-aarch64 (apt-get install qemu-system-arm)"));
    }
    if m.firmware == Firmware::Bios {
        return Err(cannot("aarch64 machines have no BIOS: set firmware = \"uefi\""));
    }
    if matches!(src, BootSource::Netboot { .. }) {
        return Err(cannot("netboot tests need an iPXE ROM for the NIC; Debian's ipxe-qemu ships x86 ROMs only"));
    }
    Ok(())
}

/// UEFI firmware (the Secure Boot build when `m.secure_boot` names enrolled
/// vars) and a private copy of its variable store in `scratch`.
fn uefi_firmware(c: &mut Command, m: &Machine<'_>, scratch: &Path) -> Result<()> {
    let (code, vars) = match m.arch {
        Arch::X86_64 => (OVMF_CODE, OVMF_VARS),
        Arch::Aarch64 => (AAVMF_CODE, AAVMF_VARS),
    };
    let pkg = if m.arch == Arch::X86_64 { "ovmf" } else { "qemu-efi-aarch64" };
    let code = match (m.secure_boot, m.arch) {
        (Some(_), Arch::X86_64) => {
            c.args(["-global", "driver=cfi.pflash01,property=secure,value=on"]);
            first_existing(OVMF_CODE_SECBOOT)
        }
        _ => first_existing(code),
    };
    let code = code.ok_or_else(|| cannot(format!("UEFI firmware not found (apt-get install {pkg})")))?;
    let vars_src = match m.secure_boot {
        Some(v) => v.to_path_buf(),
        None => first_existing(vars).ok_or_else(|| cannot(format!("UEFI vars not found (apt-get install {pkg})")))?,
    };
    let vars = scratch.join("OVMF_VARS.fd");
    std::fs::copy(&vars_src, &vars).at("copying the UEFI vars to", &vars)?;
    c.arg("-drive").arg(format!("if=pflash,format=raw,unit=0,readonly=on,file={}", code.display()));
    c.arg("-drive").arg(format!("if=pflash,format=raw,unit=1,file={}", vars.display()));
    // No display card: nothing shows it, and under TCG the firmware drawing
    // its console on it and the kernel's EFI framebuffer console mirroring
    // every line cost ~2 s of a 14 s boot of hello. UEFI firmware and the
    // kernel both talk on the serial port, which imgd reads. (BIOS boots keep
    // the card: SeaBIOS, GRUB and iPXE write their console through it.)
    c.args(["-vga", "none"]);
    Ok(())
}

/// Only a netboot gets a network (restricted); other guests get none, or
/// with --ssh a restricted one whose only way in is the host's loopback port.
fn user_net(c: &mut Command, m: &Machine<'_>) {
    match m.ssh {
        Some(port) => {
            c.arg("-netdev").arg(format!("user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:{port}-:22"));
            c.arg("-device").arg(format!("{},netdev=n0", m.qemu.nic));
        }
        None => {
            c.args(["-nic", "none"]);
        }
    }
}

/// An ESP image in `scratch` holding `app` as the default boot file.
fn esp_holding(m: &Machine<'_>, app: &Path, scratch: &Path) -> Result<PathBuf> {
    use crate::artifact::{disk::MIB, esp};
    let esp_img = scratch.join("esp.img");
    let size = (std::fs::metadata(app).at("reading", app)?.len() + 40 * MIB).div_ceil(MIB) * MIB;
    let dest = format!("EFI/BOOT/{}", m.arch.efi_boot_file());
    esp::make(&esp_img, size, 0x1d0_0001, &[esp::EspFile { dest, src: app.to_path_buf() }], 0)?;
    Ok(esp_img)
}

/// qemu's device for the boot disk `disk0` on `bus`.
fn disk_device(bus: DiskBus) -> String {
    match bus {
        DiskBus::Virtio => "virtio-blk-pci,drive=disk0,bootindex=1".to_string(),
        DiskBus::Nvme => "nvme,drive=disk0,serial=imgd0,bootindex=1".to_string(),
        DiskBus::Ide => "ide-hd,drive=disk0,bootindex=1".to_string(),
    }
}

/// A UEFI variable store with Secure Boot on and `cert` enrolled as PK,
/// KEK and db, written to `out`: virt-fw-vars (PyPI virt-firmware) edits a
/// copy of OVMF's empty template, as one would for a fleet's own keys.
pub fn enrol_vars(cert: &Path, out: &Path) -> Result<()> {
    let template = first_existing(&["/usr/share/OVMF/OVMF_VARS_4M.fd"])
        .ok_or_else(|| cannot("OVMF's 4M variable store not found (apt-get install ovmf)"))?;
    // The owner GUID of the enrolled entries: any fixed value does.
    const OWNER: &str = "a0d3b1b6-8f57-4a5e-9d2c-696d67640001";
    crate::tools::run(
        Command::new("virt-fw-vars")
            .arg("--input")
            .arg(&template)
            .arg("--output")
            .arg(out)
            .args(["--set-pk", OWNER])
            .arg(cert)
            .args(["--add-kek", OWNER])
            .arg(cert)
            .args(["--add-db", OWNER])
            .arg(cert)
            .arg("--secure-boot"),
    )
    .map_err(QemuError::Enrol)?;
    Ok(())
}

/// Runs qemu attached to the terminal (`imgd run`) until it exits.
pub fn run_interactive(cmd: Command) -> Result<std::process::ExitStatus> {
    let mut cmd = crate::tools::guarded(&cmd);
    use std::io::IsTerminal;
    if std::io::stdin().is_terminal() {
        // The serial console and qemu's monitor share the terminal: Ctrl-A X quits.
        let args: Vec<std::ffi::OsString> =
            cmd.get_args().map(|a| if a == "stdio" { "mon:stdio".into() } else { a.to_os_string() }).collect();
        let mut c = Command::new(cmd.get_program());
        c.args(args);
        cmd = c;
        eprintln!("imgd run: Ctrl-A X quits qemu");
    }
    let mut child = Reaper(cmd.spawn().map_err(|e| start_error(&cmd, e))?);
    Ok(child.0.wait()?)
}

/// Whether KVM really runs guests here: /dev/kvm can open while guests die
/// (nested virtualization without full CPU features). Boots `kernel` for a
/// few seconds under KVM and looks for its first console line; the answer is
/// cached in `cache` per qemu version and kernel.
pub fn kvm_works(kernel: &Path, cache: &Path) -> bool {
    if std::fs::File::options().read(true).write(true).open("/dev/kvm").is_err() {
        return false;
    }
    let qemu = crate::tools::version_line("qemu-system-x86_64", "--version");
    let key =
        crate::hash::sha256_hex(format!("{qemu}\n{}", crate::hash::sha256_file(kernel).unwrap_or_default()).as_bytes());
    let file = cache.join(format!("kvm-probe-{}", &key[..16]));
    // A success is for good; a failure is re-checked after a day, so a
    // one-off (a busy host, a module loading) does not stick.
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    match std::fs::read_to_string(&file).as_deref().map(str::trim) {
        Ok("ok") => return true,
        Ok(v) => {
            let when = v.strip_prefix("broken ").and_then(|t| t.parse::<u64>().ok());
            if when.is_some_and(|t| now.saturating_sub(t) < 86_400) {
                return false;
            }
        }
        Err(_) => {}
    }
    let mut c = Command::new("qemu-system-x86_64");
    c.args(["-accel", "kvm", "-cpu", "host", "-m", "256", "-display", "none", "-monitor", "none", "-serial", "stdio"]);
    c.args(["-nic", "none", "-no-reboot", "-kernel"]).arg(kernel).args(["-append", "console=ttyS0 panic=-1"]);
    let Ok(scratch) = tempfile::tempdir() else { return false };
    let ok = boot_until(c, "Linux version", Duration::from_secs(15), &scratch.path().join("console.log")).is_ok();
    let _ = std::fs::create_dir_all(cache);
    let verdict = if ok { "ok\n".to_string() } else { format!("broken {now}\n") };
    let _ = crate::fsutil::write_atomic(&file, verdict.as_bytes());
    tracing::info!("KVM probe: {}", if ok { "works" } else { "guests do not run; using TCG" });
    ok
}

/// qemu (or the setpriv guarding it) could not be started.
fn start_error(cmd: &Command, source: std::io::Error) -> QemuError {
    let args = std::iter::once(cmd.get_program()).chain(cmd.get_args());
    let program = args.map(|a| a.to_string_lossy()).find(|a| a.starts_with("qemu-")).unwrap_or_default().into_owned();
    let package = if program.ends_with("aarch64") { "qemu-system-arm" } else { "qemu-system-x86" };
    QemuError::Start { program, package, source }
}

/// Kills qemu when dropped, whatever path the caller leaves by.
struct Reaper(Child);

impl Drop for Reaper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[derive(Debug)]
pub struct BootReport {
    pub seconds: f64,
    pub log: PathBuf,
}

/// Boots headless and waits for `marker` on the serial console, writing the
/// console to `log`. Fails on timeout, kernel panic or qemu exiting first,
/// with the reason and the last 40 console lines.
pub fn boot_until(cmd: Command, marker: &str, timeout: Duration, log: &Path) -> Result<BootReport> {
    let start = Instant::now();
    let mut cmd = crate::tools::guarded(&cmd);
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = Reaper(cmd.spawn().map_err(|e| start_error(&cmd, e))?);
    let (Some(stdout), Some(stderr)) = (child.0.stdout.take(), child.0.stderr.take()) else {
        return Err(cannot("qemu's console pipes were not set up"));
    };
    let rx = console_chunks(stdout, stderr);
    // create_new: the log's folder is the caller's private one, and an
    // existing file (or a planted symlink) is never written through.
    let mut logf = std::fs::File::options().write(true).create_new(true).open(log).at("creating console log", log)?;
    let mut tail = Tail::default();
    loop {
        let left = timeout.saturating_sub(start.elapsed());
        if left.is_zero() {
            return Err(tail.error(&format!("timed out after {}s waiting for `{marker}`", timeout.as_secs()), log));
        }
        let chunk = match rx.recv_timeout(left) {
            Ok(Some(chunk)) => chunk,
            Err(mpsc::RecvTimeoutError::Timeout) => continue,
            Ok(None) | Err(mpsc::RecvTimeoutError::Disconnected) => {
                let status = child.0.wait()?;
                return Err(tail.error(&format!("qemu exited ({status}) before `{marker}` appeared"), log));
            }
        };
        logf.write_all(chunk.as_bytes())?;
        let seen = tail.feed(&chunk, marker);
        if seen.marker {
            logf.flush()?;
            return Ok(BootReport { seconds: start.elapsed().as_secs_f64(), log: log.to_path_buf() });
        }
        if let Some(why) = tail.firmware_gave_up() {
            logf.flush()?;
            return Err(tail.error(why, log));
        }
        if seen.panic {
            // Let the panic's backtrace reach the log before failing.
            let until = Instant::now() + Duration::from_millis(500);
            while let Ok(Some(c)) = rx.recv_timeout(until.saturating_duration_since(Instant::now())) {
                logf.write_all(c.as_bytes())?;
            }
            logf.flush()?;
            return Err(tail.error("kernel panic (its backtrace is in the console log)", log));
        }
    }
}

/// qemu's serial console (stdout) and its own messages (stderr) as one
/// stream of chunks; `None` when the console closes. Chunks, not lines: a
/// login prompt ("debian login: ") ends without a newline.
fn console_chunks(
    stdout: std::process::ChildStdout,
    stderr: std::process::ChildStderr,
) -> mpsc::Receiver<Option<String>> {
    let (tx, rx) = mpsc::channel::<Option<String>>();
    let tx2 = tx.clone();
    std::thread::spawn(move || {
        let mut r = BufReader::new(stdout);
        loop {
            let buf = match r.fill_buf() {
                Ok([]) | Err(_) => break,
                Ok(b) => b.to_vec(),
            };
            r.consume(buf.len());
            if tx.send(Some(String::from_utf8_lossy(&buf).replace('\r', ""))).is_err() {
                return;
            }
        }
        let _ = tx.send(None);
    });
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx2.send(Some(format!("[qemu] {line}\n")));
        }
    });
    rx
}

/// The last 40 whole console lines, for the error a failed boot shows.
#[derive(Default)]
struct Tail {
    lines: std::collections::VecDeque<String>,
    /// The unfinished last line.
    partial: String,
}

/// What one chunk of console output showed.
struct Seen {
    marker: bool,
    panic: bool,
}

impl Tail {
    const KEEP: usize = 40;

    fn feed(&mut self, chunk: &str, marker: &str) -> Seen {
        self.partial.push_str(chunk);
        let mut lines: Vec<String> = self.partial.split('\n').map(str::to_string).collect();
        self.partial = lines.pop().unwrap_or_default();
        let marker = lines.iter().any(|l| l.contains(marker)) || self.partial.contains(marker);
        let panic_at = lines.iter().position(|l| l.contains("Kernel panic"));
        // On a panic the tail ends at the panic line: its backtrace is
        // in the log, and what led to it is what a reader needs.
        let keep = panic_at.map_or(lines.len(), |i| i + 1);
        for l in lines.into_iter().take(keep) {
            self.lines.push_back(l);
            if self.lines.len() > Self::KEEP {
                self.lines.pop_front();
            }
        }
        Seen { marker, panic: panic_at.is_some() }
    }

    /// OVMF has tried every boot option: nothing will come. Why, if so.
    fn firmware_gave_up(&self) -> Option<&'static str> {
        if !self.lines.iter().any(|l| l.contains("BdsDxe: No bootable option or device was found")) {
            return None;
        }
        let refused = self.lines.iter().any(|l| l.contains("Access Denied") || l.contains("Security Violation"));
        Some(if refused {
            "the firmware refused the image: Secure Boot verification failed (Access Denied)"
        } else {
            "the firmware found nothing to boot"
        })
    }

    fn error(&self, reason: &str, log: &Path) -> QemuError {
        // A line the console has not ended yet (a prompt, a half-written
        // message) is the newest thing it said: shown too.
        let partial = Some(self.partial.as_str()).filter(|p| !p.trim().is_empty());
        let tail = self.lines.iter().map(String::as_str).chain(partial).map(str::to_string).collect();
        QemuError::Boot { reason: reason.to_string(), log: log.to_path_buf(), tail }
    }
}

/// Copies stdin to a TCP connection and the connection to stdout: what qemu's
/// `guestfwd=...-cmd:` runs once per guest connection.
pub fn relay(addr: &str) -> Result<()> {
    let conn =
        std::net::TcpStream::connect(addr).map_err(|source| QemuError::Relay { addr: addr.to_string(), source })?;
    let mut up = conn.try_clone()?;
    let t = std::thread::spawn(move || {
        let _ = std::io::copy(&mut std::io::stdin().lock(), &mut up);
        let _ = up.shutdown(std::net::Shutdown::Write);
    });
    let mut down = conn;
    std::io::copy(&mut down, &mut std::io::stdout().lock())?;
    std::io::stdout().flush()?;
    drop(t);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::Drive;

    #[test]
    fn drive_options_parse_and_bad_ones_say_why() {
        let f = tempfile::NamedTempFile::new().unwrap();
        let p = f.path().display().to_string();
        let d: Drive = format!("{p},serial=scratch1,if=nvme").parse().unwrap();
        assert_eq!((d.serial.as_deref(), d.nvme), (Some("scratch1"), true));
        let d: Drive = p.parse().unwrap();
        assert_eq!((d.serial, d.nvme), (None, false));
        for bad in [format!("{p},serial="), format!("{p},serial=a b"), format!("{p},if=scsi"), format!("{p},x")] {
            assert!(bad.parse::<Drive>().is_err(), "{bad}");
        }
        assert!("/nonexistent/disk.img".parse::<Drive>().unwrap_err().contains("no such file"));
    }
}
