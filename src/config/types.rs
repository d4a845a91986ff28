//! Small value types shared by profiles and hardware files, each validated while
//! it is deserialized so a bad value is reported at its own line and column.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
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
    pub const ALL: [Format; 6] = [Format::Ipxe, Format::Raw, Format::Qcow2, Format::Vhd, Format::Tar, Format::Uki];

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
    pub fn is_disk(self) -> bool {
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
    pub fn debian(self) -> &'static str {
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
    pub fn efi_suffix(self) -> &'static str {
        match self {
            Arch::X86_64 => "x64",
            Arch::Aarch64 => "aa64",
        }
    }

    /// The EFI removable-media loader path for this architecture.
    pub fn efi_boot_file(self) -> &'static str {
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

/// A Unix permission mode written as an octal string, e.g. `"0755"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mode(pub u32);

impl Serialize for Mode {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{:04o}", self.0))
    }
}

impl<'de> Deserialize<'de> for Mode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        parse_mode(&s).map(Mode).map_err(serde::de::Error::custom)
    }
}

pub fn parse_mode(s: &str) -> Result<u32, String> {
    let digits = s.strip_prefix("0o").unwrap_or(s);
    match u32::from_str_radix(digits, 8) {
        Ok(m) if m <= 0o7777 && !digits.is_empty() => Ok(m),
        _ => Err(format!("invalid mode `{s}`: expected an octal string such as \"0755\"")),
    }
}

/// A size in bytes written with a unit: `"512MiB"`, `"2GiB"`, `"1048576"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Size(pub u64);

pub const MIB: u64 = 1 << 20;

impl Serialize for Size {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.0)
    }
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) => Ok(Size(n)),
            Raw::S(s) => parse_size(&s).map(Size).map_err(serde::de::Error::custom),
        }
    }
}

pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "K" | "KiB" => 1 << 10,
        "M" | "MiB" => 1 << 20,
        "G" | "GiB" => 1 << 30,
        "T" | "TiB" => 1 << 40,
        _ => return Err(format!("invalid size `{s}`: use a number with KiB, MiB, GiB or TiB")),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| format!("invalid size `{s}`: use a number with KiB, MiB, GiB or TiB"))
}

/// Whether `name` can name a profile: letters, digits, - and _ (it becomes
/// part of store entry names, S3 keys and AMI names).
pub fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 128 && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_modes_parse() {
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("2G"), Ok(2 << 30));
        assert!(parse_size("2 parsecs").is_err());
        assert_eq!(parse_mode("0755"), Ok(0o755));
        assert_eq!(parse_mode("4755"), Ok(0o4755));
        assert!(parse_mode("0999").is_err());
        assert!(parse_mode("").is_err());
    }
}
