//! Sets every inode's owner, mode and timestamps in an ext4 image that
//! mkfs.ext4 -d has just populated, by editing the inode table in place.
//!
//! mkfs.ext4 -d copies owners and times from the staging files (the builder's
//! uid, today's ctime); the tree's node table says what they must be. debugfs
//! could set them (`sif` per field per path), but at 7 commands × 16,000 paths
//! that took 9 s of a 13 s ext4 step; this pass reads the directories once
//! and writes each inode once (~0.2 s). It changes only fields no other
//! structure depends on (mode bits within the same file type, uid, gid, times)
//! and recomputes the inode checksum, so the filesystem stays consistent
//! (the tests run `fsck.ext4 -fn` on the result).
//!
//! Written here rather than with a crate: the Rust ext4 crates read images but
//! none writes inodes with metadata_csum; what this needs is ~150 lines of the
//! on-disk format (kernel.org's ext4 "Data Structures and Algorithms").

use super::error::{ArtifactError, Result};
use crate::rootfs::tree::{Kind, Node, Tree};
use std::collections::HashSet;
use std::fs::File;
use std::os::unix::fs::FileExt;

const SUPERBLOCK: u64 = 1024;
const MAGIC: u16 = 0xEF53;
const INCOMPAT_64BIT: u32 = 0x80;
const INCOMPAT_CSUM_SEED: u32 = 0x2000;
const INCOMPAT_INLINE_DATA: u32 = 0x8000;
const RO_COMPAT_METADATA_CSUM: u32 = 0x400;
const EXTENTS_FL: u32 = 0x80000;
const EXTENT_MAGIC: u16 = 0xF30A;
const ROOT_INO: u32 = 2;
const S_IFMT: u16 = 0o170000;
const S_IFDIR: u16 = 0o040000;

/// An ext4 filesystem inside a file, from `offset` (a partition of a disk).
struct Fs<'a> {
    file: &'a File,
    offset: u64,
    block_size: u64,
    inodes_per_group: u32,
    inode_size: usize,
    inode_tables: Vec<u64>,
    /// crc32c seed of metadata checksums; None without metadata_csum.
    csum_seed: Option<u32>,
}

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// The kernel's crc32c_le: no inversion in or out (ext4 seeds and chains it).
fn crc32c_raw(seed: u32, bytes: &[u8]) -> u32 {
    !crc32c::crc32c_append(!seed, bytes)
}

impl<'a> Fs<'a> {
    fn open(file: &'a File, offset: u64) -> Result<Self> {
        let mut sb = [0u8; 1024];
        file.read_exact_at(&mut sb, offset + SUPERBLOCK)?;
        if le16(&sb, 0x38) != MAGIC {
            return Err(ArtifactError::Ext4(format!("no ext4 superblock at offset {offset}")));
        }
        let block_size = 1024u64 << le32(&sb, 0x18);
        let blocks = le32(&sb, 0x04) as u64 | (le32(&sb, 0x150) as u64) << 32;
        let first_data_block = le32(&sb, 0x14) as u64;
        let blocks_per_group = le32(&sb, 0x20) as u64;
        let inodes_per_group = le32(&sb, 0x28);
        let inode_size = le16(&sb, 0x58) as usize;
        let (incompat, ro_compat) = (le32(&sb, 0x60), le32(&sb, 0x64));
        if incompat & INCOMPAT_INLINE_DATA != 0 {
            return Err(ArtifactError::Ext4("inline_data is not supported here".to_string()));
        }
        if !(inode_size >= 160 && blocks_per_group > 0) {
            return Err(ArtifactError::Ext4("unexpected ext4 geometry".to_string()));
        }
        let desc_size = if incompat & INCOMPAT_64BIT != 0 { le16(&sb, 0xFE) as usize } else { 32 };
        let groups = (blocks - first_data_block).div_ceil(blocks_per_group);
        let mut gdt = vec![0u8; groups as usize * desc_size];
        file.read_exact_at(&mut gdt, offset + (first_data_block + 1) * block_size)?;
        let inode_tables = (0..groups as usize)
            .map(|g| {
                let d = &gdt[g * desc_size..(g + 1) * desc_size];
                let hi = if desc_size >= 64 { le32(d, 0x28) as u64 } else { 0 };
                (le32(d, 0x08) as u64 | hi << 32) * block_size
            })
            .collect();
        let csum_seed = (ro_compat & RO_COMPAT_METADATA_CSUM != 0).then(|| {
            if incompat & INCOMPAT_CSUM_SEED != 0 {
                le32(&sb, 0x270)
            } else {
                crc32c_raw(!0, &sb[0x68..0x78])
            }
        });
        Ok(Fs { file, offset, block_size, inodes_per_group, inode_size, inode_tables, csum_seed })
    }

    fn inode_at(&self, ino: u32) -> Result<u64> {
        let i = (ino - 1) as u64;
        let table = self.inode_tables.get((i / self.inodes_per_group as u64) as usize);
        let table = table.ok_or_else(|| ArtifactError::Ext4(format!("inode {ino} is beyond the inode tables")))?;
        Ok(self.offset + table + (i % self.inodes_per_group as u64) * self.inode_size as u64)
    }

    fn read_inode(&self, ino: u32) -> Result<Vec<u8>> {
        let mut b = vec![0u8; self.inode_size];
        self.file.read_exact_at(&mut b, self.inode_at(ino)?)?;
        Ok(b)
    }

    fn write_inode(&self, ino: u32, b: &mut [u8]) -> Result<()> {
        if let Some(seed) = self.csum_seed {
            let extra = le16(b, 0x80) as usize;
            let has_hi = extra >= 4;
            b[0x7C..0x7E].fill(0);
            if has_hi {
                b[0x82..0x84].fill(0);
            }
            let mut c = crc32c_raw(seed, &ino.to_le_bytes());
            c = crc32c_raw(c, &b[0x64..0x68]); // i_generation
            c = crc32c_raw(c, b);
            b[0x7C..0x7E].copy_from_slice(&(c as u16).to_le_bytes());
            if has_hi {
                b[0x82..0x84].copy_from_slice(&((c >> 16) as u16).to_le_bytes());
            }
        }
        self.file.write_all_at(b, self.inode_at(ino)?)?;
        Ok(())
    }

    /// The physical blocks of an extent-mapped inode, in logical order.
    fn blocks(&self, inode: &[u8]) -> Result<Vec<u64>> {
        if le32(inode, 0x20) & EXTENTS_FL == 0 {
            return Err(ArtifactError::Ext4("a directory is not extent-mapped".to_string()));
        }
        let mut out = Vec::new();
        self.walk_extents(&inode[0x28..0x28 + 60], &mut out, 0)?;
        Ok(out)
    }

    fn walk_extents(&self, node: &[u8], out: &mut Vec<u64>, level: u32) -> Result<()> {
        if !(le16(node, 0) == EXTENT_MAGIC && level < 8) {
            return Err(ArtifactError::Ext4("bad extent tree".to_string()));
        }
        let (entries, depth) = (le16(node, 2) as usize, le16(node, 6));
        if 12 + entries * 12 > node.len() {
            return Err(ArtifactError::Ext4("bad extent header".to_string()));
        }
        for e in node[12..12 + entries * 12].chunks_exact(12) {
            if depth == 0 {
                let len = le16(e, 4) as u64;
                let start = (le16(e, 6) as u64) << 32 | le32(e, 8) as u64;
                // Lengths above 32768 mark unwritten extents: read as zeros.
                if len <= 32768 {
                    out.extend(start..start + len);
                }
            } else {
                let leaf = (le16(e, 8) as u64) << 32 | le32(e, 4) as u64;
                let mut b = vec![0u8; self.block_size as usize];
                self.file.read_exact_at(&mut b, self.offset + leaf * self.block_size)?;
                self.walk_extents(&b, out, level + 1)?;
            }
        }
        Ok(())
    }

    /// A directory's entries (name, inode), without `.` and `..`. Hashed
    /// (htree) directories read the same: their index blocks hold no entries.
    fn entries(&self, dir: &[u8]) -> Result<Vec<(String, u32)>> {
        let mut out = Vec::new();
        let mut block = vec![0u8; self.block_size as usize];
        for b in self.blocks(dir)? {
            self.file.read_exact_at(&mut block, self.offset + b * self.block_size)?;
            let mut at = 0usize;
            while at + 8 <= block.len() {
                let (ino, rec_len, name_len) =
                    (le32(&block, at), le16(&block, at + 4) as usize, block[at + 6] as usize);
                if !(rec_len >= 8 && at + rec_len <= block.len() && 8 + name_len <= rec_len) {
                    return Err(ArtifactError::Ext4("bad directory entry".to_string()));
                }
                let name = &block[at + 8..at + 8 + name_len];
                if ino != 0 && name != b"." && name != b".." {
                    let name = String::from_utf8(name.to_vec())
                        .map_err(|_| ArtifactError::Ext4("a file name in the image is not UTF-8".into()))?;
                    out.push((name, ino));
                }
                at += rec_len;
            }
        }
        Ok(out)
    }
}

/// ext4 keeps seconds since the epoch as 32 bits, plus two "epoch" bits in the
/// `_extra` field (whose other 30 bits are nanoseconds, here 0).
fn encode_time(t: u64) -> (u32, u32) {
    let lo = t as u32;
    let extra = ((t as i64 - lo as i32 as i64) >> 32) as u32 & 3;
    (lo, extra)
}

fn set_fields(b: &mut [u8], mode: u16, uid: u32, gid: u32, epoch: u64) {
    b[0x00..0x02].copy_from_slice(&mode.to_le_bytes());
    b[0x02..0x04].copy_from_slice(&(uid as u16).to_le_bytes());
    b[0x78..0x7A].copy_from_slice(&((uid >> 16) as u16).to_le_bytes());
    b[0x18..0x1A].copy_from_slice(&(gid as u16).to_le_bytes());
    b[0x7A..0x7C].copy_from_slice(&((gid >> 16) as u16).to_le_bytes());
    let (lo, extra) = encode_time(epoch);
    for at in [0x08, 0x0C, 0x10] {
        b[at..at + 4].copy_from_slice(&lo.to_le_bytes()); // atime, ctime, mtime
    }
    let extra_isize = le16(b, 0x80) as usize;
    // ctime_extra, mtime_extra, atime_extra, crtime, crtime_extra: each only
    // where the inode's extra space reaches it.
    for (at, v) in [(0x84, extra), (0x88, extra), (0x8C, extra), (0x90, lo), (0x94, extra)] {
        if 0x80 + extra_isize >= at + 4 && at + 4 <= b.len() {
            b[at..at + 4].copy_from_slice(&v.to_le_bytes());
        }
    }
}

/// Gives every inode reachable from the root of the ext4 filesystem at
/// `offset` in `image` the owner and mode of its node in `tree`, and `epoch`
/// as every timestamp. Every path of the image must be a node of the tree and
/// every node a path of the image (mkfs's `lost+found` excepted).
pub(crate) fn apply(image: &File, offset: u64, tree: &Tree, epoch: u64) -> Result<()> {
    let fs = Fs::open(image, offset)?;
    let mut seen_inodes = HashSet::new();
    let mut paths = 0usize;
    let mut stack = vec![(String::new(), ROOT_INO)];
    while let Some((rel, ino)) = stack.pop() {
        let mut inode = fs.read_inode(ino)?;
        let on_disk = le16(&inode, 0);
        let default_dir = Node::new(Kind::Dir, if rel == "lost+found" { 0o700 } else { 0o755 });
        let node = match tree.node(&rel) {
            Some(n) => {
                paths += 1;
                n
            }
            None if rel.is_empty() || rel == "lost+found" => &default_dir,
            None => {
                return Err(ArtifactError::Ext4(format!(
                    "the ext4 image holds /{rel}, which the root filesystem does not list"
                )))
            }
        };
        let mode = node.st_mode() as u16;
        if mode & S_IFMT != on_disk & S_IFMT {
            return Err(ArtifactError::Ext4(format!(
                "/{rel} is of another file type in the ext4 image ({:o}) than in the tree ({:o})",
                on_disk & S_IFMT,
                mode & S_IFMT
            )));
        }
        if on_disk & S_IFMT == S_IFDIR {
            // Sorted, so the walk (and which path of a hard link sets the
            // inode) does not depend on the order mkfs wrote the entries.
            let mut entries = fs.entries(&inode)?;
            entries.sort();
            for (name, child) in entries {
                let path = if rel.is_empty() { name } else { format!("{rel}/{name}") };
                stack.push((path, child));
            }
        }
        // A hard link's inode takes its metadata from the path it links to.
        let is_dir = on_disk & S_IFMT == S_IFDIR;
        if matches!(node.kind, Kind::Hardlink(_)) || (!is_dir && !seen_inodes.insert(ino)) {
            continue;
        }
        set_fields(&mut inode, mode, node.uid, node.gid, epoch);
        fs.write_inode(ino, &mut inode)?;
    }
    if paths != tree.len() {
        return Err(ArtifactError::Ext4(format!(
            "the ext4 image holds {paths} of the root filesystem's {} paths",
            tree.len()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_past_2038_use_the_epoch_bits() {
        assert_eq!(encode_time(1_700_000_000), (1_700_000_000, 0));
        // 2040-01-01: beyond i32 seconds, so the low word wraps negative and
        // the extra field carries one epoch.
        let t = 2_208_988_800u64;
        let (lo, extra) = encode_time(t);
        assert_eq!(extra, 1);
        assert_eq!(lo as i32 as i64 + ((extra as i64) << 32), t as i64);
    }

    #[test]
    fn crc32c_raw_chains_like_the_kernel() {
        // The standard CRC-32C of "123456789" is 0xE3069283: raw with ~0 in and out.
        assert_eq!(!crc32c_raw(!0, b"123456789"), 0xE306_9283);
        let whole = crc32c_raw(7, b"hello world");
        assert_eq!(crc32c_raw(crc32c_raw(7, b"hello "), b"world"), whole);
    }
}
