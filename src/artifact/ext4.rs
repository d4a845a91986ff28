//! The ext4 root filesystem, made by mkfs.ext4 from the staging directory
//! straight into the disk image at the root partition's offset (no mount, no
//! loop device, no copy), then corrected: device nodes made with debugfs, and
//! every inode's ownership, mode and timestamps set from the tree's node table
//! (see `ext4_inodes`).
//!
//! mkfs.ext4 -d copies ctime/atime from the staging files and the owner of
//! whoever ran the build; the inode pass replaces all of that, so the image
//! is the same whoever builds it and whenever. mkfs.ext4 adds a directory's
//! entries in scandir + alphasort order, not the host filesystem's readdir
//! order; alphasort follows LC_COLLATE, which mke2fs 1.47 leaves at "C" (it
//! sets only LC_CTYPE and LC_MESSAGES from the environment). It runs under
//! LC_ALL=C anyway, so a version that took the whole locale could not reorder
//! the image (tests/build.rs builds under sv_SE, another zone, umask, tmpfs).

use super::error::{ArtifactError, Result};
use crate::rootfs::tree::{Kind, Tree};
use crate::tools::run;
use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;

/// A pinned mke2fs.conf, so the host's /etc/mke2fs.conf cannot change the
/// filesystem's features (only the e2fsprogs version can, and it is hashed).
const MKE2FS_CONF: &str = "[defaults]\n\tbase_features = sparse_super,large_file,filetype,resize_inode,dir_index,ext_attr\n\tblocksize = 4096\n\tinode_size = 256\n\tinode_ratio = 16384\n[fs_types]\n\text4 = {\n\t\tfeatures = has_journal,extent,huge_file,flex_bg,metadata_csum,64bit,dir_nlink,extra_isize\n\t}\n";

pub struct Ext4Params<'a> {
    pub uuid: &'a str,
    pub hash_seed: &'a str,
    pub label: &'a str,
    pub epoch: u64,
}

/// Where the filesystem goes in the image file: a partition of a disk.
#[derive(Debug, Clone, Copy)]
pub struct Region {
    pub offset: u64,
    pub size: u64,
}

/// Makes an ext4 filesystem filling `region` of the existing file `image`.
pub fn make(tree: &Tree, image: &Path, region: Region, p: &Ext4Params<'_>, work: &Path) -> Result<()> {
    let conf = work.join("mke2fs.conf");
    std::fs::write(&conf, MKE2FS_CONF)?;
    let fake_time = p.epoch.to_string();
    let t0 = std::time::Instant::now();
    let flush = crate::fsutil::Flusher::follow(image)?;
    run(Command::new("mkfs.ext4")
        .env("MKE2FS_CONFIG", &conf)
        .env("E2FSPROGS_FAKE_TIME", &fake_time)
        .env("LC_ALL", "C")
        .args(["-q", "-F", "-t", "ext4", "-T", "ext4", "-U", p.uuid, "-L", p.label])
        .arg("-E")
        .arg(format!("hash_seed={},root_owner=0:0,offset={}", p.hash_seed, region.offset))
        .arg("-d")
        .arg(tree.staging())
        .arg(image)
        .arg(format!("{}k", region.size / 1024)))?;
    drop(flush);

    let t1 = std::time::Instant::now();
    let mknods = mknod_script(tree)?;
    if !mknods.is_empty() {
        let script = work.join("debugfs.script");
        std::fs::write(&script, mknods)?;
        // `name?offset=N` is libext2fs's way to open a filesystem inside a file.
        let mut target = image.as_os_str().to_owned();
        target.push(format!("?offset={}", region.offset));
        let out = crate::tools::guarded(&Command::new("debugfs"))
            .env("E2FSPROGS_FAKE_TIME", &fake_time)
            .arg("-w")
            .arg("-f")
            .arg(&script)
            .arg(&target)
            .stdin(std::process::Stdio::null())
            .output()
            .map_err(|source| crate::tools::ToolError::NotRun { command: "debugfs".into(), source })?;
        // debugfs exits 0 even when a command fails; its complaints are the lines
        // that are neither its banner nor the echo of a command.
        let stderr = String::from_utf8_lossy(&out.stderr);
        if let Some(line) = stderr.lines().find(|l| !l.starts_with("debugfs") && !l.trim().is_empty()) {
            return Err(ArtifactError::Ext4(format!("debugfs mknod in {} failed: {line}", image.display())));
        }
        if !out.status.success() {
            return Err(ArtifactError::Ext4(format!("debugfs failed ({}): {stderr}", out.status)));
        }
    }
    let f = std::fs::File::options().read(true).write(true).open(image)?;
    super::ext4_inodes::apply(&f, region.offset, tree, p.epoch)
        .map_err(|e| e.within(format!("setting owners, modes and times in {}", image.display())))?;
    tracing::debug!(mkfs = ?(t1 - t0), inodes = ?t1.elapsed(), "ext4 made");
    Ok(())
}

/// A tree path as a debugfs argument.
fn q(rel: &str) -> String {
    quote(&format!("/{rel}"))
}

fn quote(s: &str) -> String {
    // debugfs takes a double-quoted argument literally, backslashes included
    // (systemd names units `system-systemd\x2dcryptsetup.slice`).
    format!("\"{s}\"")
}

/// debugfs commands that make the tree's device nodes and fifos (a non-root
/// builder cannot stage them); empty when there are none.
fn mknod_script(tree: &Tree) -> Result<String> {
    let mut s = String::new();
    for (rel, node) in tree.nodes() {
        let special = match node.kind {
            Kind::Char(a, b) => format!("c {a} {b}"),
            Kind::Block(a, b) => format!("b {a} {b}"),
            Kind::Fifo => "p".to_string(),
            _ => continue,
        };
        if rel.contains(['"', '\n', '\r']) {
            return Err(ArtifactError::Ext4(format!(
                "cannot put /{rel} in an ext4 image: its name holds a quote or a newline"
            )));
        }
        // debugfs 1.47's mknod links only into the current directory.
        let (parent, name) = rel.rsplit_once('/').unwrap_or(("", rel));
        let _ = writeln!(s, "cd {}\nmknod {} {special}\ncd /", q(parent), quote(name));
        // into a String: cannot fail
    }
    Ok(s)
}
