//! Disk images: a GPT disk (ESP + ext4 root) assembled from partition images,
//! and its qcow2 and VHD forms.
//!
//! The ESP is built as a file and spliced in with a sparse copy; the root
//! filesystem is made in place (mkfs at the partition's offset). Either way
//! the raw disk stores only the blocks the filesystems use.

use super::error::{ArtifactError, Result};
use crate::fsutil::IoAt;
use crate::tools::run;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

pub(crate) const MIB: u64 = 1 << 20;
const ESP_TYPE: &str = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";

const BIOS_BOOT_TYPE: &str = "21686148-6449-6E6F-744E-656564454649";

/// Where the partitions go on the disk.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Layout {
    pub total: u64,
    /// A 1 MiB BIOS boot partition for GRUB's core image (BIOS layouts only).
    pub bios_boot: Option<u64>,
    pub esp_start: u64,
    pub esp_size: u64,
    pub root_start: u64,
    pub root_size: u64,
}

impl Layout {
    /// 1 MiB alignment; the last MiB is left for the backup GPT. A BIOS layout
    /// puts a BIOS boot partition first and keeps the ESP, so the same disk
    /// boots under BIOS (GRUB) and UEFI (systemd-boot).
    pub(crate) fn new(total: u64, esp_size: u64, bios: bool) -> Layout {
        let bios_boot = bios.then_some(MIB);
        let esp_start = if bios { 2 * MIB } else { MIB };
        let root_start = esp_start + esp_size;
        Layout { total, bios_boot, esp_start, esp_size, root_start, root_size: total - root_start - MIB }
    }

    /// Bytes of a disk that are not the ESP or the root.
    pub(crate) fn overhead(bios: bool) -> u64 {
        if bios {
            3 * MIB
        } else {
            2 * MIB
        }
    }
}

pub(crate) struct GptIds<'a> {
    pub disk: &'a str,
    pub bios: &'a str,
    pub esp: &'a str,
    pub root: &'a str,
    /// Discoverable Partitions Specification root type for the architecture.
    pub root_type: &'a str,
}

/// Byte offset of the EFI system partition in a GPT disk image.
pub(crate) fn esp_offset(disk: &Path) -> Result<u64> {
    // C12A7328-F81F-11D2-BA4B-00A0C93EC93B as GPT stores it (mixed endian).
    const ESP: [u8; 16] =
        [0x28, 0x73, 0x2a, 0xc1, 0x1f, 0xf8, 0xd2, 0x11, 0xba, 0x4b, 0x00, 0xa0, 0xc9, 0x3e, 0xc9, 0x3b];
    let f = std::fs::File::open(disk)?;
    let mut h = [0u8; 92];
    f.read_exact_at(&mut h, 512)?;
    if &h[..8] != b"EFI PART" {
        return Err(ArtifactError::Disk(format!("{}: no GPT header", disk.display())));
    }
    let u64_at = |b: &[u8], at: usize| u64::from_le_bytes(b[at..at + 8].try_into().unwrap_or_default());
    let u32_at = |b: &[u8], at: usize| u32::from_le_bytes(b[at..at + 4].try_into().unwrap_or_default());
    let (table, count, size) = (u64_at(&h, 72), u32_at(&h, 80).min(256), u32_at(&h, 84) as usize);
    if !(128..=4096).contains(&size) {
        return Err(ArtifactError::Disk(format!("{}: GPT entry size {size}", disk.display())));
    }
    let mut e = vec![0u8; size];
    for i in 0..count as u64 {
        f.read_exact_at(&mut e, table * 512 + i * size as u64)?;
        if e[..16] == ESP {
            return Ok(u64_at(&e, 32) * 512);
        }
    }
    Err(ArtifactError::Disk(format!("{}: no EFI system partition", disk.display())))
}

/// Copies `path` (`::/EFI/...`) out of the ESP of the GPT disk `disk` to
/// `out`, with mtools (no mounts).
pub(crate) fn esp_file(disk: &Path, path: &str, out: &Path) -> Result<()> {
    let image = format!("{}@@{}", disk.display(), esp_offset(disk)?);
    run(Command::new("mcopy").env("MTOOLS_SKIP_CHECK", "1").args(["-n", "-i", &image, path]).arg(out))
        .map_err(|source| ArtifactError::EspFile { path: path.to_string(), disk: disk.to_path_buf(), source })
        .map(drop)
}

/// Writes the GPT (protective MBR, primary and backup tables) with sfdisk.
pub(crate) fn write_gpt(disk: &Path, l: &Layout, ids: &GptIds<'_>) -> Result<()> {
    let s = |b: u64| b / 512;
    let bios = match l.bios_boot {
        Some(start) => {
            format!("start={}, size={}, type={BIOS_BOOT_TYPE}, uuid={}, name=\"bios\"\n", s(start), s(MIB), ids.bios)
        }
        None => String::new(),
    };
    let script = format!(
        "label: gpt\nlabel-id: {}\nunit: sectors\nfirst-lba: 2048\n{bios}\
         start={}, size={}, type={ESP_TYPE}, uuid={}, name=\"esp\"\n\
         start={}, size={}, type={}, uuid={}, name=\"root\"\n",
        ids.disk,
        s(l.esp_start),
        s(l.esp_size),
        ids.esp,
        s(l.root_start),
        s(l.root_size),
        ids.root_type,
        ids.root
    );
    let mut child = crate::tools::guarded(&Command::new("sfdisk"))
        .args(["--quiet", "--no-reread", "--no-tell-kernel", "--wipe", "never"])
        .arg(disk)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|source| crate::tools::ToolError::NotRun { command: "sfdisk".into(), source })?;
    use std::io::Write;
    let stdin = child.stdin.take().ok_or(ArtifactError::Missing("sfdisk's input was not piped"))?;
    { stdin }.write_all(script.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        return Err(ArtifactError::Disk(format!("sfdisk failed: {}", String::from_utf8_lossy(&out.stderr))));
    }
    Ok(())
}

/// Copies the data regions of `src` into `dst` at `offset`, skipping holes, so
/// unused space stays unallocated.
pub(crate) fn splice(src: &Path, dst: &File, offset: u64) -> Result<()> {
    let f = File::open(src).at("opening", src)?;
    let len = f.metadata()?.len();
    let mut buf = vec![0u8; 4 * MIB as usize];
    for (data, hole) in crate::fsutil::data_regions(&f, len)? {
        let mut at = data;
        while at < hole {
            let n = ((hole - at) as usize).min(buf.len());
            f.read_exact_at(&mut buf[..n], at)?;
            // A data extent may still hold zero blocks: keep those sparse too.
            if buf[..n].iter().any(|b| *b != 0) {
                dst.write_all_at(&buf[..n], offset + at)?;
            }
            at += n as u64;
        }
    }
    Ok(())
}

/// Assembles the raw disk: the GPT, the root filesystem made in place by
/// `make_root` (given the disk and the root partition's offset and size) while
/// `make_esp` makes the ESP image (and GRUB, for BIOS layouts) beside it, then
/// the ESP spliced in and GRUB's boot sector and core image installed. The
/// two write disjoint ranges of the file.
pub(crate) fn assemble_raw(
    out: &Path,
    l: &Layout,
    ids: &GptIds<'_>,
    make_esp: impl FnOnce() -> Result<(PathBuf, Option<GrubBios>)>,
    make_root: impl FnOnce(&Path, u64, u64) -> Result<()> + Send,
) -> Result<()> {
    let f = File::options().read(true).write(true).create(true).truncate(true).open(out)?;
    f.set_len(l.total)?;
    write_gpt(out, l, ids)?;
    let (esp, grub) = std::thread::scope(|s| -> Result<_> {
        let root = s.spawn(|| make_root(out, l.root_start, l.root_size));
        let esp = make_esp();
        root.join().map_err(|_| ArtifactError::Panicked("making the root filesystem".into()))??;
        esp
    })?;
    splice(&esp, &f, l.esp_start)?;
    if let (Some(g), Some(start)) = (grub, l.bios_boot) {
        g.install(&f, start)?;
    }
    // Not synced here: mkfs.ext4 synced the bulk of it, the store's commit
    // syncs the rest, and the qcow2, VHD and digest are read from it next.
    Ok(())
}

/// Copies the data regions of `src` into `dst` at the same offsets with
/// copy_file_range (the kernel moves the bytes, and may share them on file
/// systems that can), leaving holes as holes.
pub(crate) fn copy_sparse(src: &File, dst: &File, len: u64) -> Result<()> {
    use rustix::fs::copy_file_range;
    for (data, hole) in crate::fsutil::data_regions(src, len)? {
        let (mut off_in, mut off_out) = (data, data);
        while off_in < hole {
            let want = (hole - off_in) as usize;
            let n =
                copy_file_range(src, Some(&mut off_in), dst, Some(&mut off_out), want).map_err(std::io::Error::from)?;
            if n == 0 {
                return Err(ArtifactError::Disk(format!("copy_file_range stopped at byte {off_in}")));
            }
        }
    }
    Ok(())
}

/// GRUB for BIOS, installed the way grub-bios-setup does it, on an image file:
/// boot.img's code goes into the MBR (keeping the partition table), told the
/// LBA of core.img; core.img goes into the BIOS boot partition, its first
/// sector (diskboot) told where the rest of itself is.
pub(crate) struct GrubBios {
    pub boot_img: Vec<u8>,
    pub core_img: Vec<u8>,
}

// Offsets from GRUB's include/grub/i386/pc/boot.h and diskboot.S.
const KERNEL_SECTOR: usize = 0x5c;
const BOOT_DRIVE: usize = 0x64;
const DRIVE_CHECK: usize = 0x66;
const MBR_CODE_END: usize = 0x1b8;
const BLOCKLIST: usize = 0x200 - 12;

impl GrubBios {
    fn install(&self, disk: &File, start: u64) -> Result<()> {
        if self.boot_img.len() != 512 {
            return Err(ArtifactError::Disk("boot.img must be 512 bytes".to_string()));
        }
        let sectors = self.core_img.len().div_ceil(512) as u64;
        if sectors * 512 > MIB {
            return Err(ArtifactError::Disk(format!(
                "core.img ({} bytes) does not fit the BIOS boot partition",
                self.core_img.len()
            )));
        }
        let lba = start / 512;
        let mut core = self.core_img.clone();
        core.resize(sectors as usize * 512, 0);
        core[BLOCKLIST..BLOCKLIST + 8].copy_from_slice(&(lba + 1).to_le_bytes());
        core[BLOCKLIST + 8..BLOCKLIST + 10].copy_from_slice(&((sectors - 1) as u16).to_le_bytes());
        core[BLOCKLIST + 10..BLOCKLIST + 12].copy_from_slice(&0x820u16.to_le_bytes());
        disk.write_all_at(&core, start)?;
        let mut mbr = [0u8; 512];
        disk.read_exact_at(&mut mbr, 0)?;
        mbr[..MBR_CODE_END].copy_from_slice(&self.boot_img[..MBR_CODE_END]);
        mbr[KERNEL_SECTOR..KERNEL_SECTOR + 8].copy_from_slice(&lba.to_le_bytes());
        mbr[BOOT_DRIVE] = 0xff; // boot from the drive the BIOS booted us from
        mbr[DRIVE_CHECK..DRIVE_CHECK + 2].copy_from_slice(&[0x90, 0x90]); // not a floppy: skip the check
        disk.write_all_at(&mbr, 0)?;
        Ok(())
    }
}

/// qcow2 v3 (compat 1.1); qemu-img leaves zero clusters unallocated.
pub(crate) fn to_qcow2(raw: &Path, out: &Path) -> Result<()> {
    // qemu-img truncates the file it is given (the same inode), so the
    // flusher can follow it from the start.
    File::create(out)?;
    let _flush = crate::fsutil::Flusher::follow(out)?;
    run(Command::new("qemu-img")
        .args(["convert", "-q", "-f", "raw", "-O", "qcow2", "-o", "compat=1.1"])
        .arg(raw)
        .arg(out))?;
    Ok(())
}

/// A fixed VHD: the raw disk followed by a 512-byte footer. Written here rather
/// than by qemu-img, whose footer carries the wall-clock time and a random UUID.
/// Returns the footer it appended.
pub(crate) fn to_vhd(raw: &Path, out: &Path, epoch: u64, uuid: [u8; 16]) -> Result<[u8; 512]> {
    let src = File::open(raw)?;
    let size = src.metadata()?.len();
    let f = File::create(out)?;
    let _flush = crate::fsutil::Flusher::follow(out)?;
    f.set_len(size)?;
    copy_sparse(&src, &f, size)?;
    let footer = vhd_footer(size, epoch, uuid);
    f.write_all_at(&footer, size)?;
    Ok(footer)
}

/// Seconds between the Unix epoch and the VHD epoch (2000-01-01T00:00:00Z).
pub(crate) const VHD_EPOCH: u64 = 946_684_800;

pub(crate) fn vhd_footer(size: u64, epoch: u64, uuid: [u8; 16]) -> [u8; 512] {
    let mut f = [0u8; 512];
    f[0..8].copy_from_slice(b"conectix");
    f[8..12].copy_from_slice(&2u32.to_be_bytes()); // features: reserved bit
    f[12..16].copy_from_slice(&0x0001_0000u32.to_be_bytes()); // version 1.0
    f[16..24].copy_from_slice(&u64::MAX.to_be_bytes()); // no dynamic header: fixed
    f[24..28].copy_from_slice(&(epoch.saturating_sub(VHD_EPOCH) as u32).to_be_bytes());
    // "win " tells readers (Hyper-V, Azure, qemu) to take the size from the
    // footer rather than from the CHS geometry, which cannot express every size.
    f[28..32].copy_from_slice(b"win ");
    f[32..36].copy_from_slice(&0x000a_0000u32.to_be_bytes());
    f[36..40].copy_from_slice(b"Wi2k");
    f[40..48].copy_from_slice(&size.to_be_bytes());
    f[48..56].copy_from_slice(&size.to_be_bytes());
    let (c, h, s) = chs(size);
    f[56..58].copy_from_slice(&c.to_be_bytes());
    f[58] = h;
    f[59] = s;
    f[60..64].copy_from_slice(&2u32.to_be_bytes()); // fixed disk
    f[68..84].copy_from_slice(&uuid);
    let sum: u32 = f.iter().map(|b| *b as u32).fold(0u32, u32::wrapping_add);
    f[64..68].copy_from_slice(&(!sum).to_be_bytes());
    f
}

/// CHS geometry as the VHD specification computes it.
fn chs(size: u64) -> (u16, u8, u8) {
    let mut total = size / 512;
    total = total.min(65535 * 16 * 255);
    let (spt, heads, cth);
    if total >= 65535 * 16 * 63 {
        spt = 255;
        heads = 16;
        cth = total / spt;
    } else {
        let mut s = 17;
        let mut c = total / s;
        let mut h = c.div_ceil(1024).max(4);
        if c >= h * 1024 || h > 16 {
            s = 31;
            h = 16;
            c = total / s;
        }
        if c >= h * 1024 {
            s = 63;
            h = 16;
            c = total / s;
        }
        spt = s;
        heads = h;
        cth = c;
    }
    ((cth / heads) as u16, heads as u8, spt as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vhd_footer_checksum_and_fields() {
        let f = vhd_footer(64 * MIB, VHD_EPOCH + 10, [7; 16]);
        assert_eq!(&f[0..8], b"conectix");
        assert_eq!(u64::from_be_bytes(f[48..56].try_into().unwrap()), 64 * MIB);
        assert_eq!(u32::from_be_bytes(f[24..28].try_into().unwrap()), 10);
        let mut z = f;
        z[64..68].fill(0);
        let sum: u32 = z.iter().map(|b| *b as u32).sum();
        assert_eq!(u32::from_be_bytes(f[64..68].try_into().unwrap()), !sum);
    }

    #[test]
    fn chs_follows_the_spec_table() {
        // 64 MiB: 131072 sectors -> 17 spt, 8 heads (c*h*s <= total)
        let (c, h, s) = chs(64 * MIB);
        assert!((c as u64) * (h as u64) * (s as u64) <= 131072);
        assert_eq!(chs(200 << 30), (65535, 16, 255));
    }
}
