//! A root filesystem under construction.
//!
//! Content lives in a staging directory; everything a non-root builder cannot
//! put on disk (ownership, device nodes, exact modes, timestamps) lives in the
//! node table. Writers (cpio, tar, ext4) read both, so an image has root-owned
//! system files and a `/dev/console` whoever runs the build.

use std::collections::BTreeMap;
use std::io::{self, Read};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Kind {
    Dir,
    File,
    Symlink(String),
    /// A hard link to another path of this tree (a `File`).
    Hardlink(String),
    Char(u32, u32),
    Block(u32, u32),
    Fifo,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Node {
    pub kind: Kind,
    /// Permission bits, including setuid/setgid/sticky (0o7777).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

impl Node {
    pub fn new(kind: Kind, mode: u32) -> Self {
        Node { kind, mode: mode & 0o7777, uid: 0, gid: 0 }
    }

    /// The full `st_mode`: file type bits and permissions.
    pub(crate) fn st_mode(&self) -> u32 {
        let t = match self.kind {
            Kind::Dir => 0o040000,
            Kind::File | Kind::Hardlink(_) => 0o100000,
            Kind::Symlink(_) => 0o120000,
            Kind::Char(..) => 0o020000,
            Kind::Block(..) => 0o060000,
            Kind::Fifo => 0o010000,
        };
        t | self.mode
    }
}

pub struct Tree {
    staging: PathBuf,
    /// Relative paths without a leading slash; "" is the root directory.
    nodes: BTreeMap<String, Node>,
}

fn err(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

impl Tree {
    /// An empty tree (just a root directory) staged in `staging`, which is created.
    pub fn new(staging: &Path) -> io::Result<Tree> {
        std::fs::create_dir_all(staging)?;
        let mut nodes = BTreeMap::new();
        nodes.insert(String::new(), Node::new(Kind::Dir, 0o755));
        Ok(Tree { staging: staging.to_path_buf(), nodes })
    }

    /// Writes the node table beside the staging directory, so the tree can
    /// be reused with [`Tree::link_from`] (the staging directory must be
    /// `<dir>/root`).
    pub(crate) fn save(&self, dir: &Path) -> io::Result<()> {
        if self.staging != dir.join("root") {
            return Err(err(format!("{} is not {}/root", self.staging.display(), dir.display())));
        }
        let json = serde_json::to_vec(&self.nodes).map_err(io::Error::other)?;
        std::fs::write(dir.join("nodes.json"), json)
    }

    /// A new tree staged in `staging` with the content of a saved one: every
    /// file is a hard link to the saved file (a copy across file systems),
    /// so a 700 MB base costs a few thousand links, not 700 MB of writes.
    /// This is safe because the tree never writes into a file in place:
    /// [`Tree::insert`] unlinks what it replaces, and tools (depmod) write
    /// new files.
    pub(crate) fn link_from(saved: &Path, staging: &Path) -> io::Result<Tree> {
        let json = std::fs::read(saved.join("nodes.json"))?;
        let nodes: BTreeMap<String, Node> =
            serde_json::from_slice(&json).map_err(|e| err(format!("{}: {e}", saved.display())))?;
        let from = saved.join("root");
        std::fs::create_dir_all(staging)?;
        // Keys sort parents before children ("a" < "a/b").
        for (rel, node) in nodes.iter().filter(|(k, _)| !k.is_empty()) {
            let dst = staging.join(rel);
            match &node.kind {
                Kind::Dir => std::fs::create_dir(&dst)?,
                Kind::File | Kind::Hardlink(_) => {
                    let src = from.join(rel);
                    if std::fs::hard_link(&src, &dst).is_err() {
                        std::fs::copy(&src, &dst)?;
                    }
                }
                Kind::Symlink(t) => std::os::unix::fs::symlink(t, &dst)?,
                _ => {}
            }
        }
        Ok(Tree { staging: staging.to_path_buf(), nodes })
    }

    pub(crate) fn staging(&self) -> &Path {
        &self.staging
    }

    /// Where a node's content is staged.
    pub(crate) fn staged(&self, rel: &str) -> PathBuf {
        self.staging.join(rel)
    }

    pub(crate) fn nodes(&self) -> impl Iterator<Item = (&String, &Node)> {
        self.nodes.iter()
    }

    /// The node at a normalized key (as [`Tree::nodes`] lists them), without
    /// following symlinks.
    pub(crate) fn node(&self, rel: &str) -> Option<&Node> {
        self.nodes.get(rel)
    }

    pub(crate) fn len(&self) -> usize {
        self.nodes.len()
    }

    pub(crate) fn get(&self, path: &str) -> Option<&Node> {
        self.nodes.get(&self.resolve(path, true).ok()?)
    }

    /// Normalizes `path` (absolute or relative to the root) into a node key,
    /// following symlinks in its parent components inside the tree (so
    /// `/lib/modules` lands in `usr/lib/modules` on a merged-/usr base) and,
    /// when `follow_last`, in the final component too. `..` stops at the root.
    pub fn resolve(&self, path: &str, follow_last: bool) -> io::Result<String> {
        let mut todo: Vec<String> = path.split('/').rev().map(str::to_string).collect();
        let mut out: Vec<String> = Vec::new();
        let mut hops = 0;
        while let Some(c) = todo.pop() {
            match c.as_str() {
                "" | "." => continue,
                ".." => {
                    out.pop();
                    continue;
                }
                _ => {}
            }
            let is_last = todo.iter().all(|c| c.is_empty() || c == ".");
            out.push(c);
            if is_last && !follow_last {
                break;
            }
            let key = out.join("/");
            if let Some(Node { kind: Kind::Symlink(target), .. }) = self.nodes.get(&key) {
                hops += 1;
                if hops > 40 {
                    return Err(err(format!("too many symlinks resolving {path}")));
                }
                out.pop();
                if target.starts_with('/') {
                    out.clear();
                }
                todo.extend(target.split('/').rev().map(str::to_string));
            }
        }
        Ok(out.join("/"))
    }

    fn parent(rel: &str) -> &str {
        rel.rsplit_once('/').map_or("", |(p, _)| p)
    }

    /// Creates missing parent directories (root-owned, 0755) of `rel`.
    fn make_parents(&mut self, rel: &str) -> io::Result<()> {
        let parent = Self::parent(rel);
        if parent.is_empty() {
            return Ok(());
        }
        match self.nodes.get(parent).map(|n| &n.kind) {
            Some(Kind::Dir) => Ok(()),
            Some(_) => Err(err(format!("/{parent} is not a directory (needed for /{rel})"))),
            None => {
                self.make_parents(parent)?;
                std::fs::create_dir_all(self.staged(parent))?;
                self.nodes.insert(parent.to_string(), Node::new(Kind::Dir, 0o755));
                Ok(())
            }
        }
    }

    /// Removes `rel` (and, for a directory, everything under it).
    pub(crate) fn remove(&mut self, rel: &str) -> io::Result<()> {
        let Some(old) = self.nodes.remove(rel) else { return Ok(()) };
        let staged = self.staged(rel);
        if old.kind == Kind::Dir {
            let prefix = format!("{rel}/");
            self.nodes.retain(|k, _| !k.starts_with(&prefix));
            if staged.is_dir() {
                std::fs::remove_dir_all(&staged)?;
            }
        } else if staged.symlink_metadata().is_ok() {
            std::fs::remove_file(&staged)?;
        }
        Ok(())
    }

    /// Places `node` at `path`, replacing what was there. For a `File`, the
    /// caller then writes the content to `staged(rel)`. Returns the key.
    pub fn insert(&mut self, path: &str, node: Node) -> io::Result<String> {
        let rel = self.resolve(path, false)?;
        if rel.is_empty() {
            if node.kind != Kind::Dir {
                return Err(err("the root must be a directory".into()));
            }
            self.nodes.insert(rel.clone(), node);
            return Ok(rel);
        }
        self.make_parents(&rel)?;
        match (self.nodes.get(&rel).map(|n| &n.kind), &node.kind) {
            (Some(Kind::Dir), Kind::Dir) => {
                self.nodes.insert(rel.clone(), node);
                return Ok(rel);
            }
            (Some(_), _) => self.remove(&rel)?,
            (None, _) => {}
        }
        let staged = self.staged(&rel);
        match &node.kind {
            Kind::Dir => std::fs::create_dir_all(&staged)?,
            Kind::Symlink(t) => std::os::unix::fs::symlink(t, &staged)?,
            Kind::Hardlink(target) => {
                if !matches!(self.nodes.get(target).map(|n| &n.kind), Some(Kind::File)) {
                    return Err(err(format!("hard link /{rel} points to /{target}, which is not a regular file")));
                }
                std::fs::hard_link(self.staged(target), &staged)?;
            }
            // Content is written by the caller; device nodes and fifos exist only
            // in the table (a non-root builder cannot mknod).
            _ => {}
        }
        self.nodes.insert(rel.clone(), node);
        Ok(rel)
    }

    pub fn add_dir(&mut self, path: &str, mode: u32) -> io::Result<String> {
        self.insert(path, Node::new(Kind::Dir, mode))
    }

    pub fn add_bytes(&mut self, path: &str, data: &[u8], mode: u32) -> io::Result<String> {
        let rel = self.insert(path, Node::new(Kind::File, mode))?;
        std::fs::write(self.staged(&rel), data)?;
        Ok(rel)
    }

    pub(crate) fn add_copy(&mut self, path: &str, src: &Path, mode: u32) -> io::Result<String> {
        let rel = self.insert(path, Node::new(Kind::File, mode))?;
        std::fs::copy(src, self.staged(&rel))?;
        Ok(rel)
    }

    pub fn add_symlink(&mut self, path: &str, target: &str) -> io::Result<String> {
        self.insert(path, Node::new(Kind::Symlink(target.to_string()), 0o777))
    }

    pub fn set_owner(&mut self, rel: &str, uid: u32, gid: u32) {
        if let Some(n) = self.nodes.get_mut(rel) {
            n.uid = uid;
            n.gid = gid;
        }
    }

    /// The content of a regular file in the tree.
    pub(crate) fn read(&self, path: &str) -> io::Result<Vec<u8>> {
        let rel = self.resolve(path, true)?;
        match self.nodes.get(&rel).map(|n| &n.kind) {
            Some(Kind::File | Kind::Hardlink(_)) => std::fs::read(self.staged(&rel)),
            _ => Err(io::Error::new(io::ErrorKind::NotFound, format!("/{rel} is not a file in the image"))),
        }
    }

    /// Registers a file that a tool (depmod) wrote into the staging directory.
    pub(crate) fn adopt(&mut self, rel: &str) -> io::Result<()> {
        let md = std::fs::symlink_metadata(self.staged(rel))?;
        if md.is_file() && !self.nodes.contains_key(rel) {
            self.make_parents(rel)?;
            self.nodes.insert(rel.to_string(), Node::new(Kind::File, 0o644));
        }
        Ok(())
    }

    /// Sum of regular file sizes, for sizing disks.
    pub(crate) fn content_bytes(&self) -> u64 {
        self.nodes
            .iter()
            .filter(|(_, n)| n.kind == Kind::File)
            .filter_map(|(k, _)| std::fs::metadata(self.staged(k)).ok())
            .map(|m| m.len())
            .sum()
    }

    /// Unpacks a tar stream (plain; compression is the caller's job), keeping
    /// the archive's ownership, modes, links and device nodes.
    pub(crate) fn extract_tar<R: Read>(&mut self, reader: R) -> io::Result<()> {
        let mut archive = tar::Archive::new(reader);
        for entry in archive.entries()? {
            let mut entry = entry?;
            let path = entry.path()?.to_string_lossy().into_owned();
            let h = entry.header();
            let (mode, uid, gid) = (h.mode()?, h.uid()? as u32, h.gid()? as u32);
            let dev =
                || -> io::Result<(u32, u32)> { Ok((h.device_major()?.unwrap_or(0), h.device_minor()?.unwrap_or(0))) };
            use tar::EntryType as T;
            let kind = match h.entry_type() {
                T::Directory => Kind::Dir,
                T::Regular | T::Continuous => Kind::File,
                T::Symlink => Kind::Symlink(link_name(&entry)?),
                T::Link => Kind::Hardlink(self.resolve(&link_name(&entry)?, false)?),
                T::Char => {
                    let (a, b) = dev()?;
                    Kind::Char(a, b)
                }
                T::Block => {
                    let (a, b) = dev()?;
                    Kind::Block(a, b)
                }
                T::Fifo => Kind::Fifo,
                _ => continue, // pax/gnu headers are consumed by the tar crate
            };
            let is_file = kind == Kind::File;
            let rel = self.insert(&path, Node { kind, mode: mode & 0o7777, uid, gid })?;
            if is_file {
                let mut out = std::fs::File::create(self.staged(&rel))?;
                io::copy(&mut entry, &mut out)?;
            }
        }
        Ok(())
    }

    /// Unpacks the data of a Debian package (any compression dpkg-deb reads).
    pub(crate) fn extract_deb(&mut self, deb: &Path) -> io::Result<()> {
        crate::tools::read_deb_data(deb, |data| self.extract_tar(data))
    }

    /// Unpacks a .tar, .tar.gz or .tar.zst file (detected by its magic bytes).
    pub(crate) fn extract_tarball(&mut self, path: &Path) -> io::Result<()> {
        let mut f = std::fs::File::open(path)?;
        let mut magic = [0u8; 4];
        let n = f.read(&mut magic)?;
        let f = std::fs::File::open(path)?;
        let r = io::BufReader::with_capacity(1 << 20, f);
        match &magic[..n] {
            [0x1f, 0x8b, ..] => self.extract_tar(flate2::read::GzDecoder::new(r)),
            [0x28, 0xb5, 0x2f, 0xfd] => self.extract_tar(zstd::Decoder::with_buffer(r)?),
            _ => self.extract_tar(r),
        }
    }

    /// Copies a directory tree in, with its modes and ownership; files owned by
    /// the invoking user are taken as root's (a non-root user's checkout of a
    /// root filesystem).
    pub(crate) fn import_dir(&mut self, src: &Path, at: &str) -> io::Result<()> {
        let me = rustix::process::geteuid().as_raw();
        let map = |id: u32| if id == me { 0 } else { id };
        let mut stack = vec![src.to_path_buf()];
        let mut inodes: BTreeMap<(u64, u64), String> = BTreeMap::new();
        let root_md = std::fs::metadata(src)?;
        let at_rel = self.add_dir(at, root_md.permissions().mode())?;
        self.set_owner(&at_rel, map(root_md.uid()), map(root_md.gid()));
        while let Some(dir) = stack.pop() {
            let mut entries: Vec<_> = std::fs::read_dir(&dir)?.collect::<Result<_, _>>()?;
            entries.sort_by_key(|e| e.file_name());
            for e in entries {
                let p = e.path();
                let md = std::fs::symlink_metadata(&p)?;
                // read_dir of a folder under `src` yields paths under `src`.
                let rel_src = p.strip_prefix(src).unwrap_or(&p).to_string_lossy().into_owned();
                let dest = format!("{at}/{rel_src}");
                let ft = md.file_type();
                let mode = md.permissions().mode() & 0o7777;
                let kind = if ft.is_dir() {
                    stack.push(p.clone());
                    Kind::Dir
                } else if ft.is_symlink() {
                    Kind::Symlink(std::fs::read_link(&p)?.to_string_lossy().into_owned())
                } else if ft.is_file() {
                    match inodes.get(&(md.dev(), md.ino())) {
                        Some(first) if md.nlink() > 1 => Kind::Hardlink(first.clone()),
                        _ => Kind::File,
                    }
                } else if ft.is_char_device() {
                    Kind::Char(rustix::fs::major(md.rdev()), rustix::fs::minor(md.rdev()))
                } else if ft.is_block_device() {
                    Kind::Block(rustix::fs::major(md.rdev()), rustix::fs::minor(md.rdev()))
                } else if ft.is_fifo() {
                    Kind::Fifo
                } else {
                    continue; // sockets are not part of an image
                };
                let is_file = kind == Kind::File;
                let rel = self.insert(&dest, Node { kind, mode, uid: map(md.uid()), gid: map(md.gid()) })?;
                if is_file {
                    std::fs::copy(&p, self.staged(&rel))?;
                    if md.nlink() > 1 {
                        inodes.insert((md.dev(), md.ino()), rel);
                    }
                }
            }
        }
        Ok(())
    }
}

fn link_name<R: Read>(entry: &tar::Entry<'_, R>) -> io::Result<String> {
    entry.link_name()?.map(|p| p.to_string_lossy().into_owned()).ok_or_else(|| err("link without a target".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parents_follow_symlinks_inside_the_tree() {
        let d = tempfile::tempdir().unwrap();
        let mut t = Tree::new(d.path()).unwrap();
        t.add_dir("/usr/lib", 0o755).unwrap();
        t.add_symlink("/lib", "usr/lib").unwrap();
        let rel = t.add_bytes("/lib/modules/x", b"hi", 0o644).unwrap();
        assert_eq!(rel, "usr/lib/modules/x");
        assert_eq!(t.read("/lib/modules/x").unwrap(), b"hi");
        // Absolute targets stay inside the tree, and .. stops at the root.
        t.add_symlink("/abs", "/usr/lib/../../../usr").unwrap();
        assert_eq!(t.resolve("/abs/lib/modules/x", true).unwrap(), "usr/lib/modules/x");
    }

    #[test]
    fn replacing_a_dir_removes_its_children() {
        let d = tempfile::tempdir().unwrap();
        let mut t = Tree::new(d.path()).unwrap();
        t.add_bytes("/a/b/c", b"1", 0o644).unwrap();
        t.add_bytes("/a", b"2", 0o600).unwrap();
        assert!(t.get("/a/b/c").is_none());
        assert_eq!(t.get("/a").unwrap().kind, Kind::File);
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn tar_keeps_ownership_devices_and_hardlinks() {
        let d = tempfile::tempdir().unwrap();
        let mut buf = Vec::new();
        {
            let mut b = tar::Builder::new(&mut buf);
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Regular);
            h.set_mode(0o4755);
            h.set_uid(0);
            h.set_gid(42);
            h.set_size(3);
            b.append_data(&mut h, "bin/su", &b"abc"[..]).unwrap();
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Char);
            h.set_device_major(5).unwrap();
            h.set_device_minor(1).unwrap();
            h.set_mode(0o600);
            h.set_uid(0);
            h.set_gid(0);
            h.set_size(0);
            b.append_data(&mut h, "dev/console", io::empty()).unwrap();
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Link);
            h.set_uid(0);
            h.set_gid(0);
            h.set_mode(0o4755);
            h.set_size(0);
            b.append_link(&mut h, "bin/su2", "bin/su").unwrap();
            b.finish().unwrap();
        }
        let mut t = Tree::new(d.path()).unwrap();
        t.extract_tar(&buf[..]).unwrap();
        let su = t.get("/bin/su").unwrap();
        assert_eq!((su.mode, su.gid), (0o4755, 42));
        assert_eq!(t.get("/dev/console").unwrap().kind, Kind::Char(5, 1));
        assert_eq!(t.get("/bin/su2").unwrap().kind, Kind::Hardlink("bin/su".into()));
        assert_eq!(t.read("/bin/su2").unwrap(), b"abc");
    }
}
