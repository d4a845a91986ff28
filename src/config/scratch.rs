//! `[scratch]`: every local disk wiped and made one scratch filesystem at
//! each boot (stateless build machines, CI runners, spot builders).
//!
//! ```toml
//! [scratch]
//! mount = "/scratch"              # default /scratch
//! disks = "all"                   # every whole disk but the boot disk (default); or a count: the N largest
//! match = { serial = "scratch*", model = "Amazon EC2 NVMe Instance Storage*" }  # optional globs
//! min_size = "10GiB"              # optional
//! layout = "raid0"                # raid0 (md, default) | single (largest disk) | separate (MOUNT/0, MOUNT/1, …)
//! filesystem = "ext4"             # ext4 (default) | xfs
//! none = "tmpfs"                  # no matching disk: tmpfs (default) | skip | fail (power off)
//! bind = ["/var/lib/builds"]      # bind-mounted onto MOUNT/.bind/PATH
//! ```
//!
//! What `scratch_check` checks is what the boot script (`rootfs::scratch`)
//! takes as given: every value lands in a shell script, so paths and globs
//! are held to characters that mean nothing to the shell but a glob's own.

use super::types::Size;
use serde::{Deserialize, Serialize};

/// Where images with `[scratch]` carry the stage; the kernel (or the disk
/// initramfs) starts it as init.
pub(crate) const STAGE: &str = "/lib/imgd/scratch-init";

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ScratchSpec {
    pub mount: Option<String>,
    pub disks: Option<DiskCount>,
    #[serde(rename = "match")]
    pub matches: Option<MatchSpec>,
    pub min_size: Option<Size>,
    pub layout: Option<Layout>,
    pub filesystem: Option<Filesystem>,
    pub none: Option<NoDisk>,
    #[serde(default)]
    pub bind: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MatchSpec {
    pub serial: Option<String>,
    pub model: Option<String>,
}

/// `"all"` or a positive count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskCount {
    All,
    Count(u32),
}

impl Serialize for DiskCount {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            DiskCount::All => s.serialize_str("all"),
            DiskCount::Count(n) => s.serialize_u32(*n),
        }
    }
}

impl<'de> Deserialize<'de> for DiskCount {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(i64),
            S(String),
        }
        let bad = || serde::de::Error::custom("expected \"all\" or a number of disks from 1 to 64");
        match Raw::deserialize(d)? {
            Raw::S(s) if s == "all" => Ok(DiskCount::All),
            Raw::N(n) if (1..=64).contains(&n) => Ok(DiskCount::Count(n as u32)),
            _ => Err(bad()),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    /// One md RAID-0 over every selected disk (no md with one disk).
    Raid0,
    /// The largest selected disk alone.
    Single,
    /// One filesystem per disk, at MOUNT/0, MOUNT/1, … (largest first).
    Separate,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Filesystem {
    Ext4,
    Xfs,
}

/// What a boot with no matching disk does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NoDisk {
    /// A tmpfs at the mount point, so the machine still has a scratch folder.
    Tmpfs,
    /// Nothing is mounted; the machine boots on.
    Skip,
    /// The machine says why on the console and powers off before its init.
    Fail,
}

impl Layout {
    pub fn as_str(self) -> &'static str {
        match self {
            Layout::Raid0 => "raid0",
            Layout::Single => "single",
            Layout::Separate => "separate",
        }
    }
}

impl Filesystem {
    pub fn as_str(self) -> &'static str {
        match self {
            Filesystem::Ext4 => "ext4",
            Filesystem::Xfs => "xfs",
        }
    }

    /// The kernel module that mounts it.
    pub(crate) fn module(self) -> &'static str {
        self.as_str()
    }
}

impl NoDisk {
    pub fn as_str(self) -> &'static str {
        match self {
            NoDisk::Tmpfs => "tmpfs",
            NoDisk::Skip => "skip",
            NoDisk::Fail => "fail",
        }
    }
}

/// `[scratch]`, checked; part of the recipe and so of the input hash.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Scratch {
    pub mount: String,
    /// None: every disk.
    pub disks: Option<u32>,
    pub serial: Option<String>,
    pub model: Option<String>,
    pub min_size: u64,
    pub layout: Layout,
    pub filesystem: Filesystem,
    pub none: NoDisk,
    pub bind: Vec<String>,
    /// The profile's init, which the scratch stage hands over to.
    pub init: String,
}

impl Scratch {
    /// Whether the machine needs md (mdadm) at all.
    pub(crate) fn needs_md(&self) -> bool {
        self.layout == Layout::Raid0 && self.disks != Some(1)
    }

    /// The kernel modules the stage loads (with their dependencies).
    pub(crate) fn modules(&self) -> Vec<String> {
        let mut m = vec![self.filesystem.module().to_string()];
        if self.needs_md() {
            m.extend(["md_mod".to_string(), "raid0".to_string()]);
        }
        m
    }

    /// The programs the stage runs beside busybox, by name.
    pub(crate) fn programs(&self) -> Vec<&'static str> {
        let mut p = vec![match self.filesystem {
            Filesystem::Ext4 => "mke2fs",
            Filesystem::Xfs => "mkfs.xfs",
        }];
        if self.needs_md() {
            p.push("mdadm");
        }
        p
    }

    /// The Debian packages that hold `programs` and their libraries, for
    /// bases made of plain `.deb`s.
    pub(crate) fn packages(&self) -> Vec<&'static str> {
        let mut p = vec!["libc6"];
        match self.filesystem {
            Filesystem::Ext4 => p.extend(["e2fsprogs", "libext2fs2", "libcom-err2", "libblkid1", "libuuid1"]),
            Filesystem::Xfs => p.extend(["xfsprogs", "libinih1", "liburcu8", "libblkid1", "libuuid1"]),
        }
        if self.needs_md() {
            p.extend(["mdadm", "libudev1"]);
        }
        p.sort_unstable();
        p.dedup();
        p
    }
}
