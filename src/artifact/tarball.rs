//! The root filesystem as a zstd-compressed tarball, for deployers that take one.

use crate::rootfs::tree::{Kind, Tree};
use std::io;
use std::path::Path;

/// Writes the tarball and returns its artifact digest (hashed as it is written).
/// `workers` is zstd's thread count, which does not change the bytes.
pub fn write(tree: &Tree, path: &Path, mtime: u64, workers: u32) -> io::Result<String> {
    let file = std::fs::File::create(path)?;
    let _flush = crate::fsutil::Flusher::follow(path)?;
    let out = crate::hash::HashingWriter::new(io::BufWriter::with_capacity(1 << 20, file));
    let mut z = zstd::Encoder::new(out, super::ZSTD_LEVEL)?;
    z.multithread(workers.max(1))?;
    let mut b = tar::Builder::new(z);
    b.mode(tar::HeaderMode::Deterministic);
    for (rel, node) in tree.nodes() {
        let name = if rel.is_empty() { "./".to_string() } else { rel.clone() };
        let mut h = tar::Header::new_gnu();
        h.set_mode(node.mode);
        h.set_uid(node.uid as u64);
        h.set_gid(node.gid as u64);
        h.set_mtime(mtime);
        h.set_size(0);
        use tar::EntryType as T;
        match &node.kind {
            Kind::File => {
                let mut f = std::fs::File::open(tree.staged(rel))?;
                h.set_entry_type(T::Regular);
                h.set_size(f.metadata()?.len());
                b.append_data(&mut h, &name, &mut f)?;
            }
            Kind::Dir => {
                h.set_entry_type(T::Directory);
                b.append_data(&mut h, &name, io::empty())?;
            }
            Kind::Symlink(t) => {
                h.set_entry_type(T::Symlink);
                b.append_link(&mut h, &name, t)?;
            }
            Kind::Hardlink(t) => {
                h.set_entry_type(T::Link);
                b.append_link(&mut h, &name, t.as_str())?;
            }
            Kind::Char(a, m) | Kind::Block(a, m) => {
                h.set_entry_type(if matches!(node.kind, Kind::Char(..)) { T::Char } else { T::Block });
                h.set_device_major(*a)?;
                h.set_device_minor(*m)?;
                b.append_data(&mut h, &name, io::empty())?;
            }
            Kind::Fifo => {
                h.set_entry_type(T::Fifo);
                b.append_data(&mut h, &name, io::empty())?;
            }
        }
    }
    let z = b.into_inner()?;
    let (file, digest) = z.finish()?.finish();
    file.into_inner().map_err(|e| e.into_error())?;
    Ok(digest)
}
