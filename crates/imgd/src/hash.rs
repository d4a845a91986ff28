//! Content digests: files, directory trees, and the input hash that names a build.
//!
//! The input hash covers content only. Paths on the caller's machine and mtimes
//! never enter it, so the same inputs give the same name everywhere.

use sha2::{Digest, Sha256};
use std::io::{self, Read};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// SHA-256 of a file's content, read in large blocks.
pub fn sha256_file(path: &Path) -> io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

/// A digest of a directory tree: every entry's relative path, type, permission
/// bits, ownership and content (or link target), in sorted order.
///
/// Ownership by the invoking user is recorded as root, matching how the tree is
/// imported into an image (see `rootfs::Tree::import_dir`).
pub fn tree_digest(dir: &Path) -> io::Result<String> {
    let mut h = Sha256::new();
    let me = rustix::process::geteuid().as_raw();
    let mut stack = vec![dir.to_path_buf()];
    let mut entries = Vec::new();
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d)? {
            let e = e?;
            let p = e.path();
            if e.file_type()?.is_dir() {
                stack.push(p.clone());
            }
            entries.push(p);
        }
    }
    entries.sort();
    for p in entries {
        let md = std::fs::symlink_metadata(&p)?;
        let rel = p.strip_prefix(dir).unwrap_or(&p);
        let owner = |id: u32| if id == me { 0 } else { id };
        h.update(rel.as_os_str().as_encoded_bytes());
        h.update(format!("\0{:o}\0{}\0{}\0", md.permissions().mode(), owner(md.uid()), owner(md.gid())));
        let ft = md.file_type();
        if ft.is_file() {
            h.update(sha256_file(&p)?);
        } else if ft.is_symlink() {
            h.update(std::fs::read_link(&p)?.as_os_str().as_encoded_bytes());
        } else if !ft.is_dir() {
            h.update(format!("dev:{}", md.rdev()));
        }
        h.update(b"\n");
    }
    Ok(hex::encode(h.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tree_digest_sees_content_and_modes_but_not_mtimes() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("etc")).unwrap();
        std::fs::write(d.path().join("etc/a"), "1").unwrap();
        let first = tree_digest(d.path()).unwrap();
        let f = std::fs::File::options().write(true).open(d.path().join("etc/a")).unwrap();
        f.set_modified(std::time::SystemTime::UNIX_EPOCH).unwrap();
        assert_eq!(tree_digest(d.path()).unwrap(), first, "mtime must not matter");
        std::fs::write(d.path().join("etc/a"), "2").unwrap();
        let second = tree_digest(d.path()).unwrap();
        assert_ne!(second, first);
        std::fs::set_permissions(d.path().join("etc/a"), std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_ne!(tree_digest(d.path()).unwrap(), second);
    }
}
