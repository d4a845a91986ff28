//! The EFI system partition: FAT32 made with mtools (no mount), holding
//! systemd-boot as the removable-media loader, a loader entry, the kernel and
//! the disk initramfs. mtools stamps files with SOURCE_DATE_EPOCH, as FAT
//! keeps time: local time, so mtools runs with TZ=UTC (the builder's time
//! zone must not change the image).

use super::error::Result;
use crate::tools::run;
use std::path::{Path, PathBuf};
use std::process::Command;

pub(crate) struct EspFile {
    /// Path inside the ESP, e.g. `EFI/BOOT/BOOTX64.EFI`.
    pub dest: String,
    pub src: PathBuf,
}

fn mtools(program: &str, epoch: u64) -> Command {
    let mut c = Command::new(program);
    c.env("SOURCE_DATE_EPOCH", epoch.to_string()).env("MTOOLS_SKIP_CHECK", "1").env("TZ", "UTC0");
    c
}

/// Makes a FAT32 image of `size` bytes at `image` with volume serial `serial`.
pub(crate) fn make(image: &Path, size: u64, serial: u32, files: &[EspFile], epoch: u64) -> Result<()> {
    std::fs::File::create(image)?.set_len(size)?;
    let img = image.to_string_lossy().into_owned();
    run(mtools("mformat", epoch).args(["-i", &img, "-F", "-N", &format!("{serial:08x}"), "-v", "ESP", "::"]))?;
    let mut dirs: Vec<String> = Vec::new();
    for f in files {
        let mut parts: Vec<&str> = f.dest.split('/').collect();
        parts.pop();
        for i in 1..=parts.len() {
            let d = parts[..i].join("/");
            if !dirs.contains(&d) {
                dirs.push(d);
            }
        }
    }
    if !dirs.is_empty() {
        let mut c = mtools("mmd", epoch);
        c.args(["-i", &img]);
        c.args(dirs.iter().map(|d| format!("::/{d}")));
        run(&mut c)?;
    }
    for f in files {
        // mcopy -m keeps the source's mtime: stamp the source first.
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(epoch);
        std::fs::File::options().write(true).open(&f.src)?.set_modified(t)?;
        run(mtools("mcopy", epoch).args(["-m", "-i", &img]).arg(&f.src).arg(format!("::/{}", f.dest)))?;
    }
    Ok(())
}
