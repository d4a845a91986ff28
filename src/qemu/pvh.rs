//! A kernel handed to qemu directly (`imgd test --format kernel`, the nodes
//! of `imgd compose`) boots by its PVH entry where it has one: the bzImage's
//! payload unpacked once on the host into the cache, and that ELF given to
//! `-kernel`. The guest runs the same kernel; what it skips is the bzImage's
//! own decompressor, which under TCG (no usable KVM, as on CI machines and
//! nested clouds) took 3.3 s of a 5.3 s boot of Debian's kernel to the
//! `hello` marker, and 2.0 s in all by this path. Under KVM it saves little
//! but costs nothing after the first boot.
//!
//! A kernel without the PVH note (Xen's `PHYS32_ENTRY`, CONFIG_PVH), one
//! whose payload this cannot unpack, or any failure here boots as the
//! bzImage it is. Unpacked kernels are kept on a shelf by the bzImage's
//! SHA-256 and removed by `imgd gc` when unused, as unpacked packages are.

use crate::fsutil::{IoAt, IoError};
use crate::shelf::Shelf;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// Where a cache folder keeps unpacked kernels.
pub fn shelf(cache: &Path) -> Shelf {
    Shelf::new(cache.join("vmlinux"))
}

/// No kernel unpacks to more than this (a bigger stream is not a kernel).
const MAX_VMLINUX: u64 = 512 << 20;

/// The file to give `-kernel` for `bzimage`: its unpacked ELF if that has a
/// PVH entry, else `bzimage` itself.
pub fn kernel_for_qemu(bzimage: &Path, cache: &Path) -> PathBuf {
    match unpacked(bzimage, &shelf(cache)) {
        Ok(Some(elf)) => elf,
        Ok(None) => bzimage.to_path_buf(),
        Err(e) => {
            tracing::debug!("booting {} as a bzImage: {e}", bzimage.display());
            bzimage.to_path_buf()
        }
    }
}

/// The unpacked kernel of `bzimage` on `shelf`, made if missing; `None` when
/// it has no PVH entry (remembered, so it is not unpacked again).
fn unpacked(bzimage: &Path, shelf: &Shelf) -> Result<Option<PathBuf>, IoError> {
    let key = crate::hash::sha256_file(bzimage).at("hashing", bzimage)?;
    let dir = shelf.dir().join(&key);
    let (elf, none) = (dir.join("vmlinux"), dir.join("no-pvh-entry"));
    let found = |dir: &Path| -> Option<Option<PathBuf>> {
        crate::shelf::touch(&dir.join(".used"));
        if elf.is_file() {
            Some(Some(elf.clone()))
        } else if none.is_file() {
            Some(None)
        } else {
            None
        }
    };
    if let Some(r) = found(&dir) {
        return Ok(r);
    }
    let _lock = shelf.lock(&key)?;
    if let Some(r) = found(&dir) {
        return Ok(r);
    }
    let ws = shelf.workspace(&format!(".make-{key}-"))?;
    let image = std::fs::read(bzimage).at("reading", bzimage)?;
    let out = ws.path().join("vmlinux");
    let made = unpack(&image, &out)? && has_pvh_entry(&std::fs::read(&out).at("reading", &out)?);
    if !made {
        std::fs::remove_file(&out).ok();
        std::fs::write(ws.path().join("no-pvh-entry"), b"").at("writing in", ws.path())?;
    }
    std::fs::write(ws.path().join(".used"), b"").at("writing in", ws.path())?;
    let ws = ws.keep();
    std::fs::rename(&ws, &dir).at("renaming into place", &dir)?;
    tracing::info!("unpacked kernel {} for qemu's PVH entry: {}", &key[..16], if made { "yes" } else { "none" });
    Ok(made.then_some(elf))
}

/// Writes the payload of the bzImage `image` unpacked to `out`; false when
/// its compression is not one this knows.
fn unpack(image: &[u8], out: &Path) -> Result<bool, IoError> {
    let Some(payload) = payload(image) else { return Ok(false) };
    let mut file = std::fs::File::create(out).at("creating", out)?;
    let n = unpack_into(payload, &mut file).at("unpacking the kernel into", out)?;
    Ok(n.is_some_and(|n| n <= MAX_VMLINUX))
}

/// The bytes `payload` unpacks to, written to `file`; `None` for a
/// compression this does not know.
fn unpack_into(payload: &[u8], file: &mut std::fs::File) -> std::io::Result<Option<u64>> {
    let n = match payload {
        [0x1f, 0x8b, ..] => std::io::copy(&mut flate2::read::GzDecoder::new(payload).take(MAX_VMLINUX + 1), file)?,
        [0x28, 0xb5, 0x2f, 0xfd, ..] => {
            std::io::copy(&mut zstd::stream::read::Decoder::new(payload)?.take(MAX_VMLINUX + 1), file)?
        }
        [0xfd, b'7', b'z', b'X', b'Z', 0, ..] => unxz(payload, file)?,
        _ => return Ok(None),
    };
    file.flush()?;
    Ok(Some(n))
}

/// xz (Debian's kernels) through the `xz` tool: no xz decoder is among
/// imgd's crates, and xz-utils is part of every Debian system.
fn unxz(payload: &[u8], out: &mut std::fs::File) -> std::io::Result<u64> {
    use std::process::{Command, Stdio};
    let mut child = Command::new("xz")
        .args(["-dc", "--single-stream"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let (Some(mut stdin), Some(mut stdout)) = (child.stdin.take(), child.stdout.take()) else {
        let _ = child.kill();
        return Err(std::io::Error::other("xz without its pipes"));
    };
    let input = payload.to_vec();
    let feeder = std::thread::spawn(move || stdin.write_all(&input));
    let n = std::io::copy(&mut (&mut stdout).take(MAX_VMLINUX + 1), out)?;
    drop(stdout);
    let _ = child.kill();
    let status = child.wait()?;
    let fed = feeder.join().unwrap_or(Ok(()));
    if n <= MAX_VMLINUX && (!status.success() || fed.is_err()) {
        return Err(std::io::Error::other(format!("xz -dc: {status}")));
    }
    Ok(n)
}

/// The compressed kernel inside a bzImage (the boot protocol's
/// `payload_offset` and `payload_length`, version 2.08 and later).
fn payload(image: &[u8]) -> Option<&[u8]> {
    let u32_at = |at: usize| image.get(at..at + 4).and_then(|b| b.try_into().ok()).map(u32::from_le_bytes);
    if image.get(0x202..0x206)? != b"HdrS" || u16::from_le_bytes(image.get(0x206..0x208)?.try_into().ok()?) < 0x208 {
        return None;
    }
    let setup_sects = match *image.get(0x1f1)? {
        0 => 4,
        n => usize::from(n),
    };
    let start = (setup_sects + 1) * 512 + u32_at(0x248)? as usize;
    image.get(start..start.checked_add(u32_at(0x24c)? as usize)?)
}

/// Whether the ELF `elf` carries Xen's PHYS32_ENTRY note: the 32-bit entry
/// qemu's PVH boot jumps to.
fn has_pvh_entry(elf: &[u8]) -> bool {
    const PT_NOTE: u32 = 4;
    const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;
    let u16_at = |at: usize| elf.get(at..at + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u32_at = |at: usize| elf.get(at..at + 4).and_then(|b| b.try_into().ok()).map(u32::from_le_bytes);
    let u64_at = |at: usize| elf.get(at..at + 8).and_then(|b| b.try_into().ok()).map(u64::from_le_bytes);
    // A 64-bit little-endian ELF.
    if elf.get(..6) != Some(b"\x7fELF\x02\x01") {
        return false;
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38)) else { return false };
    for i in 0..usize::from(phnum) {
        let ph = phoff as usize + i * usize::from(phentsize);
        let (Some(kind), Some(off), Some(size)) = (u32_at(ph), u64_at(ph + 0x08), u64_at(ph + 0x20)) else {
            return false;
        };
        if kind != PT_NOTE {
            continue;
        }
        let (mut at, end) = (off as usize, (off as usize).saturating_add(size as usize));
        while at + 12 <= end {
            let (Some(namesz), Some(descsz), Some(kind)) = (u32_at(at), u32_at(at + 4), u32_at(at + 8)) else {
                break;
            };
            let name = at + 12;
            if kind == XEN_ELFNOTE_PHYS32_ENTRY && elf.get(name..name + namesz as usize) == Some(b"Xen\0") {
                return true;
            }
            at = name + (namesz as usize).next_multiple_of(4) + (descsz as usize).next_multiple_of(4);
        }
    }
    false
}

/// Removes unpacked kernels no boot used for `unused`.
pub fn remove_unused(shelf: &Shelf, unused: std::time::Duration) -> Vec<crate::shelf::Removed> {
    let marks = |key: &str| vec![shelf.dir().join(key).join(".used")];
    let kind = crate::shelf::Kind { suffix: "", what: "unpacked kernel for qemu", marks: &marks, also: &|_| vec![] };
    shelf.remove_unused(&kind, unused, "")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A bzImage-shaped file: the header fields `payload` reads, then `body`.
    fn bzimage(body: &[u8]) -> Vec<u8> {
        let mut img = vec![0u8; 5 * 512];
        img[0x1f1] = 4;
        img[0x202..0x206].copy_from_slice(b"HdrS");
        img[0x206..0x208].copy_from_slice(&0x20fu16.to_le_bytes());
        img[0x248..0x24c].copy_from_slice(&16u32.to_le_bytes());
        img[0x24c..0x250].copy_from_slice(&(body.len() as u32).to_le_bytes());
        img.extend_from_slice(&[0xaa; 16]);
        img.extend_from_slice(body);
        img.extend_from_slice(b"trailing setup data");
        img
    }

    /// An ELF64 with one PT_NOTE segment holding `notes` (name, type).
    fn elf(notes: &[(&[u8], u32)]) -> Vec<u8> {
        let mut n = Vec::new();
        for (name, kind) in notes {
            n.extend_from_slice(&(name.len() as u32).to_le_bytes());
            n.extend_from_slice(&8u32.to_le_bytes());
            n.extend_from_slice(&kind.to_le_bytes());
            n.extend_from_slice(name);
            n.resize(n.len().next_multiple_of(4), 0);
            n.extend_from_slice(&[1; 8]);
        }
        let mut e = vec![0u8; 0x40 + 0x38];
        e[..6].copy_from_slice(b"\x7fELF\x02\x01");
        e[0x20..0x28].copy_from_slice(&0x40u64.to_le_bytes());
        e[0x36..0x38].copy_from_slice(&0x38u16.to_le_bytes());
        e[0x38..0x3a].copy_from_slice(&1u16.to_le_bytes());
        e[0x40..0x44].copy_from_slice(&4u32.to_le_bytes());
        e[0x48..0x50].copy_from_slice(&(0x78u64).to_le_bytes());
        e[0x60..0x68].copy_from_slice(&(n.len() as u64).to_le_bytes());
        e.extend_from_slice(&n);
        e
    }

    #[test]
    fn the_pvh_note_is_found_among_others_and_only_under_xens_name() {
        assert!(has_pvh_entry(&elf(&[(b"GNU\0", 3), (b"Xen\0", 6), (b"Xen\0", 18)])));
        assert!(!has_pvh_entry(&elf(&[(b"Xen\0", 6), (b"GNU\0", 18)])));
        assert!(!has_pvh_entry(&elf(&[])));
        let mut cut = elf(&[(b"Xen\0", 18)]);
        cut.truncate(0x80);
        assert!(!has_pvh_entry(&cut), "a note past the end of the file is not read");
        assert!(!has_pvh_entry(b"MZ not an elf"));
    }

    #[test]
    fn a_compressed_pvh_kernel_is_unpacked_once_and_anything_else_boots_as_it_is() {
        let d = tempfile::tempdir().unwrap();
        let (cache, kernel) = (d.path().join("cache"), d.path().join("vmlinuz"));
        let inner = elf(&[(b"Xen\0", 18)]);
        let gz = {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(&inner).unwrap();
            e.finish().unwrap()
        };
        std::fs::write(&kernel, bzimage(&gz)).unwrap();
        let got = kernel_for_qemu(&kernel, &cache);
        assert_ne!(got, kernel);
        assert_eq!(std::fs::read(&got).unwrap(), inner, "the payload, unpacked whole");
        // Known now: not unpacked again (the file made first is the one used).
        let before = std::fs::metadata(&got).unwrap().modified().unwrap();
        assert_eq!(kernel_for_qemu(&kernel, &cache), got);
        assert_eq!(std::fs::metadata(&got).unwrap().modified().unwrap(), before);

        // No PVH note, zstd this time: the bzImage itself, remembered.
        let plain = zstd::encode_all(&elf(&[(b"GNU\0", 3)])[..], 1).unwrap();
        std::fs::write(&kernel, bzimage(&plain)).unwrap();
        assert_eq!(kernel_for_qemu(&kernel, &cache), kernel);
        // Not a bzImage at all, or an unknown compression: itself.
        std::fs::write(&kernel, b"not a kernel").unwrap();
        assert_eq!(kernel_for_qemu(&kernel, &cache), kernel);
        std::fs::write(&kernel, bzimage(b"LZ4?")).unwrap();
        assert_eq!(kernel_for_qemu(&kernel, &cache), kernel);
        let left: Vec<_> = std::fs::read_dir(shelf(&cache).dir()).unwrap().flatten().map(|e| e.file_name()).collect();
        assert!(left.iter().all(|n| !n.to_string_lossy().starts_with(".make-")), "no workspace left: {left:?}");
    }
}
