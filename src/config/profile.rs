//! The machine profile schema (`profiles/*.toml`).
//!
//! A profile says what runs on a machine; the hardware file it names says what the
//! machine is. Every key is optional in a single file because a profile may
//! `extends` another; after layering, [`super::resolve`] checks that `base` and
//! `kernel` are present. Unknown keys are errors.
//!
//! ```toml
//! extends = "base.toml"            # optional: layer this file over another profile
//! name = "hello"                   # default: the file name without .toml
//! hardware = "qemu-x86_64"         # a file in hardware/ (overridable with --hardware)
//! hostname = "hello"
//! formats = ["ipxe", "raw", "qcow2", "vhd", "tar"]   # default: all
//! cmdline = "quiet"                # appended after the hardware's console and cmdline
//! init = "/init"                   # the program the kernel (or initramfs) starts; default /sbin/init
//! ready_marker = "HELLO-READY"     # what `imgd test` waits for on the serial console
//! source_date_epoch = 1700000000   # timestamp of every file; default $SOURCE_DATE_EPOCH or 2020-01-01
//!
//! [base]                           # exactly one of:
//! debs = ["busybox-static"]        #   .deb packages unpacked into an empty root (names are
//!                                  #   looked up in the deb cache, or give a path to a .deb)
//! # tarball = "rootfs.tar.zst"     #   a .tar, .tar.gz or .tar.zst
//! # dir = "rootfs/"                #   a directory tree
//! # debian = { suite = "bookworm", packages = ["systemd-sysv"] }   #   a Debian base, installed from
//!                                  #   the lock file beside the profile (`imgd lock`)
//!
//! [kernel]                         # exactly one of:
//! deb = "linux-image-*-amd64"      #   a kernel .deb (name pattern in the deb cache, or a path)
//! # from_base = true               #   the base's /boot/vmlinuz-* and /lib/modules/*
//! # image = "result/bzImage"       #   explicit paths (Nix or any other kernel build);
//! # modules = "result/lib/modules/6.6.1"  #   the modules directory of that version
//! extra_modules = ["virtio_net"]   # modules to install besides the hardware's (with dependencies)
//!
//! [[files]]                        # appended to the parent's files when extending
//! path = "/etc/motd"
//! content = "hello\n"              # or: source = "files/motd", symlink = "target", dir = true
//! mode = "0644"                    # default 0644 (0755 for dirs)
//! owner = "root:root"              # names from the image's /etc/passwd and /etc/group, or numbers
//!
//! [[users]]
//! name = "ops"
//! uid = 1000                       # default: 1000 + position
//! groups = ["sudo"]
//! shell = "/bin/bash"
//! ssh_authorized_keys = ["ssh-ed25519 AAAA... ops@example"]
//!
//! [services]
//! enable = ["ssh.service", "serial-getty@ttyS0.service"]
//!
//! [disk]
//! size = "2GiB"                    # total disk size; default: fits the root + `free`
//! free = "256MiB"                  # free space left in the root filesystem when size is automatic
//! esp_size = "64MiB"               # EFI system partition
//! root_label = "root"
//!
//! [secure_boot]                    # sign the uki after each build (see `imgd sign`);
//! key = "keys/db.key"              # not part of the hash; relative to this file
//! cert = "keys/db.crt"
//!
//! [scratch]                        # local disks wiped and striped at every boot: see config::scratch
//! layout = "raid0"
//! ```

use super::types::{Mode, Size};
use crate::model::Format;
use serde::{Deserialize, Serialize};

/// One profile file, before layering. Every field is optional here.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileFile {
    pub extends: Option<String>,
    pub name: Option<String>,
    pub description: Option<String>,
    pub hardware: Option<String>,
    pub hostname: Option<String>,
    pub formats: Option<Vec<Format>>,
    pub cmdline: Option<String>,
    pub init: Option<String>,
    pub ready_marker: Option<String>,
    pub source_date_epoch: Option<u64>,
    pub base: Option<BaseSpec>,
    pub kernel: Option<KernelSpec>,
    #[serde(default)]
    pub files: Vec<FileSpec>,
    #[serde(default)]
    pub users: Vec<UserSpec>,
    pub services: Option<ServicesSpec>,
    pub disk: Option<DiskSpec>,
    pub secure_boot: Option<SecureBootSpec>,
    pub scratch: Option<super::scratch::ScratchSpec>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BaseSpec {
    pub debs: Option<Vec<String>>,
    pub tarball: Option<String>,
    pub dir: Option<String>,
    pub debian: Option<DebianSpec>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DebianSpec {
    pub suite: String,
    /// Default http://deb.debian.org/debian.
    pub mirror: Option<String>,
    /// essential, minbase (default) or important, as debootstrap's --variant.
    pub variant: Option<String>,
    /// Default ["main"].
    pub components: Option<Vec<String>>,
    /// The keyring the mirror's InRelease must be signed with; default
    /// Debian's archive keyring.
    pub keyring: Option<String>,
    #[serde(default)]
    pub packages: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KernelSpec {
    pub deb: Option<String>,
    pub from_base: Option<bool>,
    pub image: Option<String>,
    pub modules: Option<String>,
    #[serde(default)]
    pub extra_modules: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FileSpec {
    pub path: String,
    pub content: Option<String>,
    pub source: Option<String>,
    pub symlink: Option<String>,
    pub dir: Option<bool>,
    pub mode: Option<Mode>,
    pub owner: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct UserSpec {
    pub name: String,
    pub uid: Option<u32>,
    #[serde(default)]
    pub groups: Vec<String>,
    pub shell: Option<String>,
    pub home: Option<String>,
    #[serde(default)]
    pub ssh_authorized_keys: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ServicesSpec {
    #[serde(default)]
    pub enable: Vec<String>,
}

/// Signs the uki after each build (as `imgd sign` does). Not part of the
/// build's hash: the unsigned image stays reproducible, and a key change
/// re-signs without rebuilding.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SecureBootSpec {
    /// The private key (PEM, unencrypted); read by sbsign only.
    pub key: String,
    /// Its certificate (PEM), the one enrolled in the machines' db.
    pub cert: String,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DiskSpec {
    pub size: Option<Size>,
    pub free: Option<Size>,
    pub esp_size: Option<Size>,
    pub root_label: Option<String>,
}
