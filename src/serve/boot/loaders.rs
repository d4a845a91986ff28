//! The network boot programs handed to firmware that cannot fetch imgd's
//! scripts by itself: Debian's iPXE builds (package `ipxe`). PXE firmware
//! gets one over TFTP, UEFI HTTP boot over HTTP; once running, iPXE asks DHCP
//! again as `iPXE` and is sent to `/boot.ipxe`.
//!
//! They are read once, at start-up, into memory (each is under 1 MiB): TFTP
//! and HTTP then serve exactly these bytes, and nothing a client names ever
//! reaches the filesystem.

use super::error::BootError;
use bytes::Bytes;
use std::path::Path;

/// Where Debian's `ipxe` package puts them.
pub const DEBIAN_IPXE_DIR: &str = "/usr/lib/ipxe";

/// A boot program, by what the firmware can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Loader {
    /// Legacy BIOS PXE: iPXE on top of the NIC's UNDI driver.
    BiosUndi,
    /// x86_64 UEFI: iPXE on top of the firmware's own network stack (SNP),
    /// so it drives any NIC the firmware drives.
    UefiSnp,
}

impl Loader {
    pub(crate) const ALL: [Loader; 2] = [Loader::BiosUndi, Loader::UefiSnp];

    /// The file name in Debian's package, and the name clients ask for.
    pub(crate) fn file_name(self) -> &'static str {
        match self {
            Loader::BiosUndi => "undionly.kpxe",
            Loader::UefiSnp => "snponly.efi",
        }
    }

    /// A name a client asked for, if it is one of ours: exact names only, so
    /// no path, case trick or traversal can name anything else.
    pub(crate) fn from_name(name: &str) -> Option<Loader> {
        Loader::ALL.into_iter().find(|l| l.file_name() == name.trim_start_matches('/'))
    }
}

/// The loaders' bytes, read once.
#[derive(Debug, Clone)]
pub struct Loaders {
    bios_undi: Bytes,
    uefi_snp: Bytes,
}

impl Loaders {
    /// Reads every loader from `dir`; a missing one is an error that says
    /// which package provides it.
    pub fn load(dir: &Path) -> Result<Loaders, BootError> {
        let read = |l: Loader| -> Result<Bytes, BootError> {
            let path = dir.join(l.file_name());
            let b = match std::fs::read(&path) {
                Ok(b) => b,
                Err(source) => return Err(BootError::Loader { path, source }),
            };
            if b.is_empty() {
                return Err(BootError::EmptyLoader(path));
            }
            Ok(Bytes::from(b))
        };
        Ok(Loaders { bios_undi: read(Loader::BiosUndi)?, uefi_snp: read(Loader::UefiSnp)? })
    }

    pub(crate) fn get(&self, l: Loader) -> Bytes {
        match l {
            Loader::BiosUndi => self.bios_undi.clone(),
            Loader::UefiSnp => self.uefi_snp.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_exact_loader_names_are_found() {
        assert_eq!(Loader::from_name("snponly.efi"), Some(Loader::UefiSnp));
        assert_eq!(Loader::from_name("/undionly.kpxe"), Some(Loader::BiosUndi));
        for bad in ["../undionly.kpxe", "SNPONLY.EFI", "snponly.efi\0", "ipxe/snponly.efi", "", "/etc/passwd"] {
            assert_eq!(Loader::from_name(bad), None, "{bad:?}");
        }
    }
}
