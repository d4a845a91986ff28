//! What a build is for: the artifact formats, the CPU architecture and the
//! boot firmware. Profiles name them, manifests record them, and every layer
//! from the store up reads them.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// An artifact format `imgd build` can produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// vmlinuz + initrd (whole root filesystem) + boot.ipxe, for stateless netboot.
    Ipxe,
    /// GPT disk image: ESP (systemd-boot, kernel, initramfs) + ext4 root.
    Raw,
    /// The raw disk as qcow2 v3.
    Qcow2,
    /// The raw disk as a fixed VHD (AWS ImportSnapshot, Azure).
    Vhd,
    /// The root filesystem as a zstd-compressed tarball.
    Tar,
    /// A unified kernel image (`<profile>.efi`): systemd's EFI stub with the
    /// kernel, the whole root filesystem as initrd, the command line and
    /// os-release as PE sections; one file UEFI firmware boots (UEFI only).
    Uki,
    /// The SPDX software bill of materials of a distribution base: written
    /// for every build that has one, never asked for (not in `ALL`).
    Sbom,
}

impl Format {
    pub(crate) const ALL: [Format; 6] =
        [Format::Ipxe, Format::Raw, Format::Qcow2, Format::Vhd, Format::Tar, Format::Uki];

    pub fn as_str(self) -> &'static str {
        match self {
            Format::Ipxe => "ipxe",
            Format::Raw => "raw",
            Format::Qcow2 => "qcow2",
            Format::Vhd => "vhd",
            Format::Tar => "tar",
            Format::Uki => "uki",
            Format::Sbom => "sbom",
        }
    }

    /// Disk formats are all made from the raw disk.
    pub(crate) fn is_disk(self) -> bool {
        matches!(self, Format::Raw | Format::Qcow2 | Format::Vhd)
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

impl FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Format::ALL
            .into_iter()
            .find(|f| f.as_str() == s)
            .ok_or_else(|| format!("unknown format `{s}` (expected one of ipxe, raw, qcow2, vhd, tar, uki)"))
    }
}

/// CPU architecture of the target machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    X86_64,
    Aarch64,
}

impl Arch {
    /// Debian's name for the architecture, as in .deb file names.
    pub(crate) fn debian(self) -> &'static str {
        match self {
            Arch::X86_64 => "amd64",
            Arch::Aarch64 => "arm64",
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64",
            Arch::Aarch64 => "aarch64",
        }
    }
    /// The suffix of EFI binaries for this architecture (systemd-bootx64.efi).
    pub(crate) fn efi_suffix(self) -> &'static str {
        match self {
            Arch::X86_64 => "x64",
            Arch::Aarch64 => "aa64",
        }
    }

    /// The EFI removable-media loader path for this architecture.
    pub(crate) fn efi_boot_file(self) -> &'static str {
        match self {
            Arch::X86_64 => "BOOTX64.EFI",
            Arch::Aarch64 => "BOOTAA64.EFI",
        }
    }
}

/// Boot firmware of the target machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Firmware {
    Uefi,
    Bios,
}
