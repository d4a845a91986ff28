//! Booting artifacts in local qemu: the command line for a hardware profile,
//! and a headless boot that waits for a marker on the serial console.
//!
//! Guests never get a network unless a test asks for one, and disk images are
//! opened with `snapshot=on` so the store's files are never written.

use crate::config::hardware::{DiskBus, QemuSpec};
use crate::config::types::{Arch, Firmware};
use anyhow::{bail, Context, Result};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub enum BootSource {
    /// Kernel and initrd handed to qemu directly (`-kernel/-initrd`).
    Direct { kernel: PathBuf, initrd: PathBuf, cmdline: String },
    /// A disk image; `format` is qemu's name (raw, qcow2, vpc).
    Disk { image: PathBuf, format: &'static str },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Accel {
    Kvm,
    Tcg,
}

pub struct Machine<'a> {
    pub arch: Arch,
    pub firmware: Firmware,
    pub qemu: &'a QemuSpec,
    pub accel: Accel,
}

const OVMF_CODE: &[&str] =
    &["/usr/share/OVMF/OVMF_CODE_4M.fd", "/usr/share/OVMF/OVMF_CODE.fd", "/usr/share/qemu/OVMF.fd"];
const OVMF_VARS: &[&str] = &["/usr/share/OVMF/OVMF_VARS_4M.fd", "/usr/share/OVMF/OVMF_VARS.fd"];

fn first_existing(paths: &[&str]) -> Option<PathBuf> {
    paths.iter().map(PathBuf::from).find(|p| p.is_file())
}

/// The qemu command for `m` booting `src`; `scratch` holds the UEFI vars copy.
pub fn command(m: &Machine<'_>, src: &BootSource, scratch: &Path) -> Result<Command> {
    if m.arch != Arch::X86_64 {
        bail!(
            "booting {} hardware in qemu is not supported yet (needs qemu-system-aarch64 and AAVMF)",
            m.arch.as_str()
        );
    }
    let mut c = Command::new("qemu-system-x86_64");
    c.args(["-machine", &m.qemu.machine, "-cpu", &m.qemu.cpu]);
    c.args(["-m", &m.qemu.memory_mib.to_string(), "-smp", &m.qemu.smp.to_string()]);
    c.args([
        "-accel",
        match m.accel {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        },
    ]);
    c.args(["-display", "none", "-monitor", "none", "-serial", "stdio", "-no-reboot"]);
    c.args(["-nic", "none"]);
    match src {
        BootSource::Direct { kernel, initrd, cmdline } => {
            c.arg("-kernel").arg(kernel).arg("-initrd").arg(initrd).arg("-append").arg(cmdline);
        }
        BootSource::Disk { image, format } => {
            if m.firmware == Firmware::Uefi {
                let code = first_existing(OVMF_CODE).context("OVMF firmware not found (apt-get install ovmf)")?;
                let vars_src = first_existing(OVMF_VARS).context("OVMF vars not found (apt-get install ovmf)")?;
                let vars = scratch.join("OVMF_VARS.fd");
                std::fs::copy(&vars_src, &vars)?;
                c.arg("-drive").arg(format!("if=pflash,format=raw,unit=0,readonly=on,file={}", code.display()));
                c.arg("-drive").arg(format!("if=pflash,format=raw,unit=1,file={}", vars.display()));
            }
            c.arg("-drive").arg(format!("file={},format={format},if=none,id=disk0,snapshot=on", image.display()));
            let dev = match m.qemu.disk {
                DiskBus::Virtio => "virtio-blk-pci,drive=disk0,bootindex=1".to_string(),
                DiskBus::Nvme => "nvme,drive=disk0,serial=imgd0,bootindex=1".to_string(),
                DiskBus::Ide => "ide-hd,drive=disk0,bootindex=1".to_string(),
            };
            c.args(["-device", &dev]);
        }
    }
    Ok(c)
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
pub fn boot_until(mut cmd: Command, marker: &str, timeout: Duration, log: &Path) -> Result<BootReport> {
    let start = Instant::now();
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = Reaper(cmd.spawn().context("cannot start qemu-system-x86_64 (apt-get install qemu-system-x86)")?);
    let stdout = child.0.stdout.take().expect("piped");
    let stderr = child.0.stderr.take().expect("piped");
    let (tx, rx) = mpsc::channel::<Option<String>>();
    let tx2 = tx.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).split(b'\n') {
            let Ok(line) = line else { break };
            let text = String::from_utf8_lossy(&line).replace('\r', "");
            if tx.send(Some(text)).is_err() {
                return;
            }
        }
        let _ = tx.send(None);
    });
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx2.send(Some(format!("[qemu] {line}")));
        }
    });
    let mut logf = std::fs::File::create(log)?;
    let mut tail: std::collections::VecDeque<String> = Default::default();
    let fail = |reason: &str, tail: &std::collections::VecDeque<String>| -> anyhow::Error {
        let lines: Vec<&str> = tail.iter().map(String::as_str).collect();
        anyhow::anyhow!(
            "{reason} (console log: {})\n--- last {} console lines ---\n{}",
            log.display(),
            lines.len(),
            lines.join("\n")
        )
    };
    loop {
        let left = timeout.saturating_sub(start.elapsed());
        if left.is_zero() {
            return Err(fail(&format!("timed out after {}s waiting for `{marker}`", timeout.as_secs()), &tail));
        }
        match rx.recv_timeout(left) {
            Ok(Some(line)) => {
                writeln!(logf, "{line}")?;
                tail.push_back(line.clone());
                if tail.len() > 40 {
                    tail.pop_front();
                }
                if line.contains(marker) {
                    logf.flush()?;
                    return Ok(BootReport { seconds: start.elapsed().as_secs_f64(), log: log.to_path_buf() });
                }
                if line.contains("Kernel panic") {
                    // Let the panic's backtrace reach the log before failing.
                    let until = Instant::now() + Duration::from_millis(500);
                    while let Ok(Some(l)) = rx.recv_timeout(until.saturating_duration_since(Instant::now())) {
                        writeln!(logf, "{l}")?;
                        tail.push_back(l);
                        if tail.len() > 40 {
                            tail.pop_front();
                        }
                    }
                    return Err(fail("kernel panic", &tail));
                }
            }
            Ok(None) => {
                let status = child.0.wait()?;
                return Err(fail(&format!("qemu exited ({status}) before `{marker}` appeared"), &tail));
            }
            Err(mpsc::RecvTimeoutError::Timeout) => continue,
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let status = child.0.wait()?;
                return Err(fail(&format!("qemu exited ({status}) before `{marker}` appeared"), &tail));
            }
        }
    }
}
