//! newc cpio archives (the Linux initramfs format), written by hand: the format
//! is a 110-byte ASCII header per entry, and writing it ourselves gives exact
//! control of inode numbers, ownership and timestamps for reproducibility.

use crate::rootfs::tree::{Kind, Tree};
use std::io::{self, Read, Write};

pub(crate) struct CpioWriter<W: Write> {
    out: W,
    ino: u32,
    offset: u64,
    mtime: u32,
}

impl<W: Write> CpioWriter<W> {
    pub(crate) fn new(out: W, mtime: u64) -> Self {
        CpioWriter { out, ino: 0, offset: 0, mtime: mtime as u32 }
    }

    fn pad(&mut self) -> io::Result<()> {
        let n = (4 - (self.offset % 4)) % 4;
        self.out.write_all(&[0u8; 3][..n as usize])?;
        self.offset += n;
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn header(
        &mut self,
        name: &str,
        mode: u32,
        uid: u32,
        gid: u32,
        nlink: u32,
        size: u64,
        rdev: (u32, u32),
    ) -> io::Result<()> {
        if size > u32::MAX as u64 {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("{name}: too large for newc cpio")));
        }
        self.ino += 1;
        let h = format!(
            "070701{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}",
            self.ino,
            mode,
            uid,
            gid,
            nlink,
            self.mtime,
            size,
            0,
            0,
            rdev.0,
            rdev.1,
            name.len() + 1,
            0
        );
        self.out.write_all(h.as_bytes())?;
        self.out.write_all(name.as_bytes())?;
        self.out.write_all(&[0])?;
        self.offset += h.len() as u64 + name.len() as u64 + 1;
        self.pad()
    }

    /// Writes one entry; `data` must yield exactly `size` bytes.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn entry(
        &mut self,
        name: &str,
        mode: u32,
        uid: u32,
        gid: u32,
        size: u64,
        rdev: (u32, u32),
        data: &mut dyn Read,
    ) -> io::Result<()> {
        let nlink = if mode & 0o170000 == 0o040000 { 2 } else { 1 };
        self.header(name, mode, uid, gid, nlink, size, rdev)?;
        let copied = io::copy(&mut data.take(size), &mut self.out)?;
        if copied != size {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, format!("{name}: file changed while archiving")));
        }
        self.offset += size;
        self.pad()
    }

    /// Every node of `tree`, parents before children (sorted paths). Hard links
    /// are stored as copies: simpler for every cpio reader, and rare in images.
    pub(crate) fn tree(&mut self, tree: &Tree) -> io::Result<()> {
        for (rel, node) in tree.nodes() {
            let name = if rel.is_empty() { "." } else { rel.as_str() };
            let mode = node.st_mode();
            match &node.kind {
                Kind::File | Kind::Hardlink(_) => {
                    let mut f = std::fs::File::open(tree.staged(rel))?;
                    let size = f.metadata()?.len();
                    self.entry(name, mode, node.uid, node.gid, size, (0, 0), &mut f)?;
                }
                Kind::Symlink(t) => {
                    self.entry(name, mode, node.uid, node.gid, t.len() as u64, (0, 0), &mut t.as_bytes())?;
                }
                Kind::Char(a, b) | Kind::Block(a, b) => {
                    self.entry(name, mode, node.uid, node.gid, 0, (*a, *b), &mut io::empty())?
                }
                Kind::Dir | Kind::Fifo => self.entry(name, mode, node.uid, node.gid, 0, (0, 0), &mut io::empty())?,
            }
        }
        Ok(())
    }

    pub(crate) fn finish(mut self) -> io::Result<W> {
        self.ino = 0;
        self.mtime = 0;
        self.header("TRAILER!!!", 0, 0, 0, 1, 0, (0, 0))?;
        Ok(self.out)
    }
}

/// Writes `tree` as a zstd-compressed newc cpio (what the kernel unpacks as an
/// initramfs; Debian kernels have CONFIG_RD_ZSTD).
pub(crate) fn write_initrd(tree: &Tree, path: &std::path::Path, mtime: u64) -> io::Result<()> {
    let file = std::fs::File::create(path)?;
    let mut z = zstd::Encoder::new(io::BufWriter::with_capacity(1 << 20, file), super::compress::ZSTD_LEVEL)?;
    super::compress::zstd_threads(&mut z)?;
    let mut w = CpioWriter::new(z, mtime);
    w.tree(tree)?;
    let z = w.finish()?;
    z.finish()?.into_inner().map_err(|e| e.into_error())?.sync_all()
}
