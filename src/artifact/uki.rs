//! Unified kernel images: systemd's EFI stub with the kernel, initrd, command
//! line and os-release added as PE sections (`.osrel`, `.cmdline`, `.linux`,
//! `.initrd`, the order systemd's own recipe uses), one EFI binary that
//! firmware loads, verifies and measures as a whole.
//!
//! Written here rather than with `objcopy --add-section` or `ukify`: objcopy
//! handles only the build machine's architecture (an aarch64 stub needs a
//! cross binutils), Debian 12's systemd has no ukify, and appending sections
//! is a small, exact job: the stub's headers are kept, new section headers
//! go in the header room it leaves, each section's data is appended aligned
//! to the file alignment, and the image size, initialized-data size and PE
//! checksum are set to match. Same inputs, same bytes.

use super::error::{ArtifactError, Result};
use crate::fsutil::IoAt;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// One section to add.
pub(crate) struct Section {
    /// `.linux`, `.initrd`, ...: at most 8 bytes.
    pub name: &'static str,
    pub data: SectionData,
}

pub(crate) enum SectionData {
    Bytes(Vec<u8>),
    File(PathBuf),
}

impl SectionData {
    fn len(&self) -> Result<u64> {
        Ok(match self {
            SectionData::Bytes(b) => b.len() as u64,
            SectionData::File(p) => std::fs::metadata(p).at("reading", p)?.len(),
        })
    }
}

/// Section flags: initialized data, readable.
const DATA_READ: u32 = 0x0000_0040 | 0x4000_0000;
const SECTION_HEADER: usize = 40;

/// The parts of a PE32+ header this writer reads and changes.
#[derive(Debug, Clone, Copy)]
struct Pe {
    coff: usize,
    opt: usize,
    sections: usize,
    count: usize,
    section_align: u64,
    file_align: u64,
    size_of_headers: usize,
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn put_u16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_le_bytes());
}
fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}
fn align(v: u64, a: u64) -> u64 {
    v.div_ceil(a) * a
}

impl Pe {
    fn parse(b: &[u8]) -> Result<Pe> {
        if !(b.len() >= 0x40 && &b[..2] == b"MZ") {
            return Err(ArtifactError::Uki("not a PE file (no MZ header)".to_string()));
        }
        let pe = u32_at(b, 0x3c) as usize;
        if !(b.len() >= pe + 24 && &b[pe..pe + 4] == b"PE\0\0") {
            return Err(ArtifactError::Uki("not a PE file (no PE signature)".to_string()));
        }
        let coff = pe + 4;
        let count = u16_at(b, coff + 2) as usize;
        let opt_size = u16_at(b, coff + 16) as usize;
        let opt = coff + 20;
        if !(b.len() >= opt + opt_size && opt_size >= 112 + 5 * 8) {
            return Err(ArtifactError::Uki("PE optional header is cut short".to_string()));
        }
        if u16_at(b, opt) != 0x20b {
            return Err(ArtifactError::Uki("not a PE32+ image (64-bit EFI stubs only)".to_string()));
        }
        let sections = opt + opt_size;
        let p = Pe {
            coff,
            opt,
            sections,
            count,
            section_align: u32_at(b, opt + 32) as u64,
            file_align: u32_at(b, opt + 36) as u64,
            size_of_headers: u32_at(b, opt + 60) as usize,
        };
        if !(p.section_align.is_power_of_two() && p.file_align.is_power_of_two()) {
            return Err(ArtifactError::Uki("PE alignments are not powers of two".to_string()));
        }
        if b.len() < sections + count * SECTION_HEADER {
            return Err(ArtifactError::Uki("PE section table is cut short".to_string()));
        }
        Ok(p)
    }

    /// Whether the image carries a certificate table (an Authenticode signature).
    fn signed(&self, b: &[u8]) -> bool {
        u32_at(b, self.opt + 112 + 4 * 8 + 4) != 0
    }

    /// Section `i`'s name, size in memory, and place and size in the file.
    fn section_at(&self, b: &[u8], i: usize) -> (Vec<u8>, u64, u64, u64) {
        let h = self.section(i);
        let name = b[h..h + 8].iter().copied().take_while(|&c| c != 0).collect();
        (name, u32_at(b, h + 8) as u64, u32_at(b, h + 20) as u64, u32_at(b, h + 16) as u64)
    }

    fn section(&self, i: usize) -> usize {
        self.sections + i * SECTION_HEADER
    }
}

/// Writes `stub` plus `sections` to `out`. Returns the file's size.
pub(crate) fn write(stub: &[u8], sections: &[Section], out: &Path) -> Result<u64> {
    let pe = Pe::parse(stub).map_err(|e| e.within("reading the EFI stub"))?;
    // A signed stub's signature would no longer match once sections are added.
    if pe.signed(stub) {
        return Err(ArtifactError::Uki("the stub is signed; use the unsigned linux*.efi.stub".to_string()));
    }
    let room = pe.size_of_headers;
    let needed = pe.section(pe.count + sections.len());
    if needed > room {
        return Err(ArtifactError::Uki(format!(
            "the EFI stub has header room for {} more section(s), {} needed",
            (room - pe.section(pe.count)) / SECTION_HEADER,
            sections.len()
        )));
    }
    // Where the stub's sections end, in memory and in the file.
    let (mut vend, mut fend) = (0u64, room as u64);
    for i in 0..pe.count {
        let h = pe.section(i);
        let (vsize, va) = (u32_at(stub, h + 8) as u64, u32_at(stub, h + 12) as u64);
        let (raw_size, raw_at) = (u32_at(stub, h + 16) as u64, u32_at(stub, h + 20) as u64);
        vend = vend.max(va + vsize.max(raw_size));
        if raw_size > 0 {
            fend = fend.max(raw_at + raw_size);
        }
    }
    if fend as usize > stub.len() {
        return Err(ArtifactError::Uki("the EFI stub's sections run past its end".to_string()));
    }
    // Anything after the last section (a COFF symbol table, debug data) is
    // dropped: it is not loaded, and would sit between the stub and the new
    // sections. The header's pointer to the symbol table goes with it.
    let mut header = stub[..fend as usize].to_vec();
    put_u32(&mut header, pe.coff + 8, 0);
    put_u32(&mut header, pe.coff + 12, 0);

    let mut placed = Vec::new();
    let mut init_data = u32_at(&header, pe.opt + 8) as u64;
    let (mut va, mut at) = (align(vend, pe.section_align), align(fend, pe.file_align));
    for (i, s) in sections.iter().enumerate() {
        if !(s.name.len() <= 8 && s.name.starts_with('.')) {
            return Err(ArtifactError::Uki(format!("bad section name {}", s.name)));
        }
        let len = s.data.len()?;
        let raw = align(len, pe.file_align);
        if !(va + len < u32::MAX as u64 && at + raw < u32::MAX as u64) {
            return Err(ArtifactError::Uki("the image would pass 4 GiB".to_string()));
        }
        let h = pe.section(pe.count + i);
        header[h..h + SECTION_HEADER].fill(0);
        header[h..h + s.name.len()].copy_from_slice(s.name.as_bytes());
        put_u32(&mut header, h + 8, len as u32);
        put_u32(&mut header, h + 12, va as u32);
        put_u32(&mut header, h + 16, raw as u32);
        put_u32(&mut header, h + 20, at as u32);
        put_u32(&mut header, h + 36, DATA_READ);
        placed.push((at, raw, len));
        init_data += raw;
        va = align(va + len, pe.section_align);
        at += raw;
    }
    put_u16(&mut header, pe.coff + 2, (pe.count + sections.len()) as u16);
    put_u32(&mut header, pe.opt + 8, init_data.min(u32::MAX as u64) as u32);
    put_u32(&mut header, pe.opt + 56, va as u32);
    let checksum_at = pe.opt + 64;
    put_u32(&mut header, checksum_at, 0);

    // Write, summing the PE checksum as the bytes go by; then put it in.
    let f = std::fs::File::create(out).at("creating", out)?;
    let mut w = Summed { inner: std::io::BufWriter::with_capacity(1 << 20, f), sum: 0, odd: None, len: 0 };
    w.write_all(&header)?;
    for (s, &(at, raw, len)) in sections.iter().zip(&placed) {
        pad_to(&mut w, at)?;
        let n = match &s.data {
            SectionData::Bytes(b) => {
                w.write_all(b)?;
                b.len() as u64
            }
            SectionData::File(p) => {
                let mut f = std::fs::File::open(p).at("reading", p)?;
                std::io::copy(&mut (&mut f).take(len + 1), &mut w)?
            }
        };
        if n != len {
            return Err(ArtifactError::Uki(format!("{} changed while the UKI was written", s.name)));
        }
        pad_to(&mut w, at + raw)?;
    }
    let len = w.len;
    let sum = w.finish()?;
    let f = w.inner.into_inner().map_err(|e| e.into_error())?;
    use std::os::unix::fs::FileExt;
    f.write_all_at(&sum.to_le_bytes(), checksum_at as u64)?;
    f.sync_data()?;
    Ok(len)
}

fn pad_to(w: &mut Summed, at: u64) -> Result<()> {
    if w.len > at {
        return Err(ArtifactError::Uki("section data overlaps the next section".to_string()));
    }
    let zeros = [0u8; 4096];
    while w.len < at {
        let n = ((at - w.len) as usize).min(zeros.len());
        w.write_all(&zeros[..n])?;
    }
    Ok(())
}

/// A writer that sums 16-bit little-endian words with end-around carry, the
/// PE checksum (the checksum field itself is written as zero).
struct Summed {
    inner: std::io::BufWriter<std::fs::File>,
    sum: u64,
    odd: Option<u8>,
    len: u64,
}

impl Summed {
    fn add(&mut self, word: u16) {
        self.sum += word as u64;
        self.sum = (self.sum & 0xffff) + (self.sum >> 16);
    }
    /// The checksum: the folded sum plus the file length.
    fn finish(&mut self) -> Result<u32> {
        if let Some(b) = self.odd.take() {
            self.add(b as u16);
        }
        self.inner.flush()?;
        Ok((self.sum as u32).wrapping_add(self.len as u32))
    }
}

impl Write for Summed {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        let mut b = &buf[..n];
        if let Some(lo) = self.odd.take() {
            if let Some((&hi, rest)) = b.split_first() {
                self.add(u16::from_le_bytes([lo, hi]));
                b = rest;
            } else {
                self.odd = Some(lo);
            }
        }
        let mut words = b.chunks_exact(2);
        for w in &mut words {
            self.add(u16::from_le_bytes([w[0], w[1]]));
        }
        if let [last] = words.remainder() {
            self.odd = Some(*last);
        }
        self.len += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// The sections systemd's stub measures into PCR 11, in the order it
/// measures them (systemd 252 `unified_sections`, less `.pcrsig`, which
/// carries signatures over this very value).
const MEASURED_SECTIONS: [&str; 7] = [".linux", ".osrel", ".cmdline", ".initrd", ".splash", ".dtb", ".pcrpkey"];

/// The boot phases `systemd-pcrphase` measures into PCR 11 after the stub,
/// when the initrd and the image run systemd and the machine has a TPM.
pub(crate) const BOOT_PHASES: [&str; 4] = ["enter-initrd", "leave-initrd", "sysinit", "ready"];

/// What PCR 11 will hold after the systemd stub in `uki` boots it, computed
/// from the file's own section table (so it holds for any UKI, signed or
/// not: the signature is outside the measured sections).
pub(crate) fn pcr11(uki: &Path) -> Result<crate::model::manifest::Pcr11> {
    use sha2::{Digest, Sha256};
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(uki).at("opening", uki)?;
    let file_len = f.metadata()?.len();
    let mut head = vec![0u8; (file_len as usize).min(64 << 10)];
    f.read_exact_at(&mut head, 0)?;
    let pe = Pe::parse(&head).map_err(|e| e.within(format!("reading {}", uki.display())))?;
    let extend = |pcr: &mut [u8; 32], digest: &[u8]| {
        *pcr = Sha256::new().chain_update(&pcr[..]).chain_update(digest).finalize().into();
    };
    let mut pcr = [0u8; 32];
    for want in MEASURED_SECTIONS {
        let Some((_, vsize, at, raw)) =
            (0..pe.count).map(|i| pe.section_at(&head, i)).find(|(n, ..)| n == want.as_bytes())
        else {
            continue;
        };
        // The stub measures the section as loaded: VirtualSize bytes, the
        // file's data zero-filled past SizeOfRawData.
        if at + raw.min(vsize) > file_len {
            return Err(ArtifactError::Uki(format!("{want} runs past the end of {}", uki.display())));
        }
        let mut name = want.as_bytes().to_vec();
        name.push(0);
        extend(&mut pcr, &Sha256::digest(&name));
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        let (mut done, from_file) = (0u64, raw.min(vsize));
        while done < vsize {
            let n = ((vsize - done) as usize).min(buf.len());
            if done < from_file {
                let m = n.min((from_file - done) as usize);
                f.read_exact_at(&mut buf[..m], at + done)?;
                buf[m..n].fill(0);
            } else {
                buf[..n].fill(0);
            }
            h.update(&buf[..n]);
            done += n as u64;
        }
        extend(&mut pcr, &h.finalize());
    }
    let sha256 = hex::encode(pcr);
    let mut phases_sha256 = std::collections::BTreeMap::new();
    for (i, phase) in BOOT_PHASES.iter().enumerate() {
        extend(&mut pcr, &Sha256::digest(phase.as_bytes()));
        phases_sha256.insert(BOOT_PHASES[..=i].join(":"), hex::encode(pcr));
    }
    Ok(crate::model::manifest::Pcr11 { sha256, phases_sha256 })
}

/// The os-release of a UKI: the image's own (`/etc/os-release` or
/// `/usr/lib/os-release`), or a minimal one, with `IMAGE_ID` and
/// `IMAGE_VERSION` naming the profile and build so the boot menu and
/// `/etc/os-release` readers can tell builds apart.
pub(crate) fn os_release(image_os_release: Option<&str>, profile: &str, hash: &crate::model::InputHash) -> String {
    let mut s: String = match image_os_release {
        Some(text) => text
            .lines()
            .filter(|l| !l.starts_with("IMAGE_ID=") && !l.starts_with("IMAGE_VERSION="))
            .map(|l| format!("{l}\n"))
            .collect(),
        None => format!("NAME=\"imgd {profile}\"\nID=imgd\nPRETTY_NAME=\"imgd {profile}\"\n"),
    };
    s.push_str(&format!("IMAGE_ID={profile}\nIMAGE_VERSION={}\n", &hash[..12]));
    s
}

/// The sections a UKI carries, in systemd's order.
pub(crate) fn sections(os_release: String, cmdline: &str, kernel: &Path, initrd: &Path) -> Vec<Section> {
    vec![
        Section { name: ".osrel", data: SectionData::Bytes(os_release.into_bytes()) },
        Section { name: ".cmdline", data: SectionData::Bytes(cmdline.as_bytes().to_vec()) },
        Section { name: ".linux", data: SectionData::File(kernel.to_path_buf()) },
        Section { name: ".initrd", data: SectionData::File(initrd.to_path_buf()) },
    ]
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// A minimal PE32+ image: headers with room for `room` section headers
    /// and one `.text` section.
    fn tiny_pe() -> Vec<u8> {
        let mut b = vec![0u8; 0x400];
        b[..2].copy_from_slice(b"MZ");
        put_u32(&mut b, 0x3c, 0x80);
        b[0x80..0x84].copy_from_slice(b"PE\0\0");
        let coff = 0x84;
        put_u16(&mut b, coff, 0x8664);
        put_u16(&mut b, coff + 2, 1);
        // A symbol table after the last section, as systemd's stub has.
        put_u32(&mut b, coff + 8, 0x400);
        put_u32(&mut b, coff + 12, 3);
        put_u16(&mut b, coff + 16, 240);
        let opt = coff + 20;
        put_u16(&mut b, opt, 0x20b);
        put_u32(&mut b, opt + 32, 0x1000);
        put_u32(&mut b, opt + 36, 0x200);
        put_u32(&mut b, opt + 56, 0x2000);
        put_u32(&mut b, opt + 60, 0x200);
        let s = opt + 240;
        b[s..s + 5].copy_from_slice(b".text");
        put_u32(&mut b, s + 8, 0x10);
        put_u32(&mut b, s + 12, 0x1000);
        put_u32(&mut b, s + 16, 0x200);
        put_u32(&mut b, s + 20, 0x200);
        b[0x200..0x210].copy_from_slice(b"0123456789abcdef");
        b
    }

    #[test]
    fn sections_are_appended_aligned_and_the_headers_follow() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("uki.efi");
        let secs = vec![
            Section { name: ".osrel", data: SectionData::Bytes(b"ID=x\n".to_vec()) },
            Section { name: ".cmdline", data: SectionData::Bytes(vec![b'c'; 0x201]) },
        ];
        let len = write(&tiny_pe(), &secs, &out).unwrap();
        let b = std::fs::read(&out).unwrap();
        assert_eq!(b.len() as u64, len);
        let pe = Pe::parse(&b).unwrap();
        assert_eq!(pe.count, 3);
        let h = pe.section(1);
        assert_eq!(&b[h..h + 8], b".osrel\0\0");
        assert_eq!((u32_at(&b, h + 8), u32_at(&b, h + 12), u32_at(&b, h + 20)), (5, 0x2000, 0x400));
        assert_eq!(&b[0x400..0x405], b"ID=x\n");
        let h = pe.section(2);
        // Next page in memory, next file-alignment unit on disk.
        assert_eq!(
            (u32_at(&b, h + 8), u32_at(&b, h + 12), u32_at(&b, h + 16), u32_at(&b, h + 20)),
            (0x201, 0x3000, 0x400, 0x600)
        );
        assert_eq!(b.len(), 0xa00);
        assert_eq!(u32_at(&b, pe.opt + 56), 0x4000, "SizeOfImage covers the last section");
        assert_eq!(
            (u32_at(&b, pe.coff + 8), u32_at(&b, pe.coff + 12)),
            (0, 0),
            "no symbol table pointer into the new sections"
        );
        // The stub's own bytes are unchanged.
        assert_eq!(&b[0x200..0x210], b"0123456789abcdef");
        // The checksum: recomputed independently over the finished file.
        let mut sum: u64 = 0;
        for (i, w) in b.chunks(2).enumerate() {
            if i * 2 == pe.opt + 64 || i * 2 == pe.opt + 66 {
                continue;
            }
            sum += u16::from_le_bytes([w[0], *w.get(1).unwrap_or(&0)]) as u64;
            sum = (sum & 0xffff) + (sum >> 16);
        }
        assert_eq!(u32_at(&b, pe.opt + 64), sum as u32 + b.len() as u32);
    }

    #[test]
    fn a_stub_without_header_room_or_signed_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("uki.efi");
        let many: Vec<Section> = (0..20).map(|_| Section { name: ".x", data: SectionData::Bytes(vec![1]) }).collect();
        let e = write(&tiny_pe(), &many, &out).unwrap_err();
        assert!(crate::model::Chain(&e).to_string().contains("header room"), "{}", crate::model::Chain(&e));
        let mut signed = tiny_pe();
        put_u32(&mut signed, 0x84 + 20 + 112 + 4 * 8 + 4, 0x100);
        let e = write(&signed, &[], &out).unwrap_err();
        assert!(crate::model::Chain(&e).to_string().contains("signed"), "{}", crate::model::Chain(&e));
        let e =
            write(b"not a pe file at all, no MZ here......................................", &[], &out).unwrap_err();
        assert!(crate::model::Chain(&e).to_string().contains("not a PE"), "{}", crate::model::Chain(&e));
    }

    #[test]
    fn os_release_names_the_build() {
        let s = os_release(
            Some("ID=debian\nIMAGE_ID=old\nVERSION_ID=12\n"),
            "web",
            &crate::model::InputHash::new(&"ab".repeat(32)).unwrap(),
        );
        assert_eq!(s, "ID=debian\nVERSION_ID=12\nIMAGE_ID=web\nIMAGE_VERSION=abababababab\n");
        assert!(
            os_release(None, "hello", &crate::model::InputHash::new(&"0".repeat(64)).unwrap()).contains("ID=imgd\n")
        );
    }
}
