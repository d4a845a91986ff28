//! The ext4 root filesystem, made by mkfs.ext4 from the staging directory
//! (no mount, no loop device), then corrected with one debugfs script: the
//! ownership, modes, device nodes and timestamps of the tree's node table.
//!
//! mkfs.ext4 -d copies ctime/atime from the staging files and the owner of
//! whoever ran the build; the debugfs pass replaces all of that, so the image
//! is the same whoever builds it and whenever.

use crate::rootfs::tree::{Kind, Tree};
use crate::tools::run;
use anyhow::{Context, Result};
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

/// Makes an ext4 filesystem of `size` bytes in the new file `image`.
pub fn make(tree: &Tree, image: &Path, size: u64, p: &Ext4Params<'_>, work: &Path) -> Result<()> {
    let conf = work.join("mke2fs.conf");
    std::fs::write(&conf, MKE2FS_CONF)?;
    std::fs::File::create(image)?.set_len(size)?;
    let fake_time = p.epoch.to_string();
    run(Command::new("mkfs.ext4")
        .env("MKE2FS_CONFIG", &conf)
        .env("E2FSPROGS_FAKE_TIME", &fake_time)
        .args(["-q", "-F", "-t", "ext4", "-T", "ext4", "-U", p.uuid, "-L", p.label])
        .arg("-E")
        .arg(format!("hash_seed={},root_owner=0:0", p.hash_seed))
        .arg("-d")
        .arg(tree.staging())
        .arg(image))
    .context("mkfs.ext4")?;

    let script = work.join("debugfs.script");
    std::fs::write(&script, fixup_script(tree, p.epoch)?)?;
    let out = crate::tools::guarded(&Command::new("debugfs"))
        .env("E2FSPROGS_FAKE_TIME", &fake_time)
        .arg("-w")
        .arg("-f")
        .arg(&script)
        .arg(image)
        .stdin(std::process::Stdio::null())
        .output()
        .context("cannot run debugfs (install e2fsprogs)")?;
    // debugfs exits 0 even when a command fails; its complaints are the lines
    // that are neither its banner nor the echo of a command.
    let stderr = String::from_utf8_lossy(&out.stderr);
    if let Some(line) = stderr.lines().find(|l| !l.starts_with("debugfs") && !l.trim().is_empty()) {
        anyhow::bail!("debugfs fix-up of {} failed: {line}", image.display());
    }
    if !out.status.success() {
        anyhow::bail!("debugfs failed ({}): {stderr}", out.status);
    }
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

fn fixup_script(tree: &Tree, epoch: u64) -> Result<String> {
    let mut s = String::new();
    for (rel, node) in tree.nodes() {
        if rel.contains(['"', '\n', '\r']) {
            anyhow::bail!("cannot put /{rel} in an ext4 image: its name holds a quote or a newline");
        }
        let path = q(rel);
        // debugfs 1.47's mknod links only into the current directory.
        let (parent, name) = rel.rsplit_once('/').unwrap_or(("", rel));
        let special = match node.kind {
            Kind::Char(a, b) => Some(format!("c {a} {b}")),
            Kind::Block(a, b) => Some(format!("b {a} {b}")),
            Kind::Fifo => Some("p".to_string()),
            _ => None,
        };
        if let Some(special) = special {
            let _ = writeln!(s, "cd {}\nmknod {} {special}\ncd /", q(parent), quote(name));
            // into a String: cannot fail
        }
        let _ = writeln!(s, "sif {path} mode 0{:o}", node.st_mode()); // into a String: cannot fail
        let _ = writeln!(s, "sif {path} uid {}", node.uid); // into a String: cannot fail
        let _ = writeln!(s, "sif {path} gid {}", node.gid); // into a String: cannot fail
        for t in ["atime", "mtime", "ctime", "crtime"] {
            let _ = writeln!(s, "sif {path} {t} {epoch}"); // into a String: cannot fail
        }
    }
    for t in ["atime", "mtime", "ctime", "crtime"] {
        let _ = writeln!(s, "sif /lost+found {t} {epoch}"); // into a String: cannot fail
    }
    Ok(s)
}
