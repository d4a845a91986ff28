//! The network boot programs handed to firmware that cannot fetch imgd's
//! scripts by itself: Debian's iPXE builds (package `ipxe`). PXE firmware
//! gets one over TFTP, UEFI HTTP boot over HTTP; once running, iPXE asks DHCP
//! again as `iPXE` and is sent to `/boot.ipxe`.
//!
//! Each is opened once, at start-up, and only that open file is read after:
//! nothing a client names ever reaches the filesystem, and a package upgrade
//! (a new file renamed over the old) does not change what is served. Its
//! bytes are in memory only while a transfer is sending them, one copy
//! shared by all transfers at once (the two are ~250 KiB; kept in the heap,
//! an idle proxyDHCP server held 176 KiB more anonymous memory), and most
//! fleets fetch them only when machines boot.

use super::error::BootError;
use bytes::Bytes;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};

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

/// The loaders, open.
#[derive(Debug, Clone)]
pub struct Loaders {
    bios_undi: Arc<Opened>,
    uefi_snp: Arc<Opened>,
}

/// One loader's file as opened at start-up, and its bytes while in use.
#[derive(Debug)]
struct Opened {
    path: PathBuf,
    file: File,
    len: usize,
    in_use: Mutex<Weak<Vec<u8>>>,
}

/// Bytes over a shared read of a loader.
struct Shared(Arc<Vec<u8>>);

impl AsRef<[u8]> for Shared {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl Loaders {
    /// Opens every loader in `dir`; a missing or empty one is an error that
    /// says which package provides it.
    pub fn load(dir: &Path) -> Result<Loaders, BootError> {
        let open = |l: Loader| -> Result<Arc<Opened>, BootError> {
            let path = dir.join(l.file_name());
            let (file, len) = match File::open(&path).and_then(|f| f.metadata().map(|m| (f, m.len()))) {
                Ok(f) => f,
                Err(source) => return Err(BootError::Loader { path, source }),
            };
            let Ok(len @ 1..) = usize::try_from(len) else {
                return Err(BootError::EmptyLoader(path));
            };
            Ok(Arc::new(Opened { path, file, len, in_use: Mutex::default() }))
        };
        Ok(Loaders { bios_undi: open(Loader::BiosUndi)?, uefi_snp: open(Loader::UefiSnp)? })
    }

    /// Its bytes: the copy a transfer in progress holds, else read again
    /// from the file opened at start-up. An error if that file is now
    /// shorter than it was then (changed in place; never served in part).
    ///
    /// The read runs on a blocking thread, not the one asking: for TFTP
    /// that thread also answers proxyDHCP, for UEFI HTTP boot it serves
    /// other requests, and ~250 KiB from a cold disk can take milliseconds.
    pub(crate) async fn get(&self, l: Loader) -> std::io::Result<Bytes> {
        let o = match l {
            Loader::BiosUndi => &self.bios_undi,
            Loader::UefiSnp => &self.uefi_snp,
        };
        if let Some(b) = o.in_use().upgrade() {
            return Ok(Bytes::from_owner(Shared(b)));
        }
        let reading = o.clone();
        let read = tokio::task::spawn_blocking(move || reading.read()).await.map_err(std::io::Error::other)??;
        // Another transfer may have read it meanwhile: all share one copy.
        let mut in_use = o.in_use();
        let b = in_use.upgrade().unwrap_or_else(|| {
            let b = Arc::new(read);
            *in_use = Arc::downgrade(&b);
            b
        });
        Ok(Bytes::from_owner(Shared(b)))
    }
}

impl Opened {
    fn in_use(&self) -> std::sync::MutexGuard<'_, Weak<Vec<u8>>> {
        self.in_use.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The whole file, as long as it was at start-up.
    fn read(&self) -> std::io::Result<Vec<u8>> {
        let mut b = vec![0; self.len];
        self.file
            .read_exact_at(&mut b, 0)
            .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", self.path.display())))?;
        Ok(b)
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

    /// A folder with both loaders, small.
    fn two_loaders() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("undionly.kpxe"), b"bios").unwrap();
        std::fs::write(dir.path().join("snponly.efi"), b"uefi loader").unwrap();
        dir
    }

    #[tokio::test]
    async fn bytes_are_shared_while_in_use_and_read_again_after() {
        let dir = two_loaders();
        let l = Loaders::load(dir.path()).unwrap();
        let a = l.get(Loader::UefiSnp).await.unwrap();
        let b = l.get(Loader::UefiSnp).await.unwrap();
        assert_eq!(&a[..], b"uefi loader");
        assert_eq!(a.as_ptr(), b.as_ptr(), "one copy while in use");
        drop((a, b));
        assert!(l.uefi_snp.in_use.lock().unwrap().upgrade().is_none(), "freed once no transfer holds it");
        // A package upgrade renames a new file over the old: the open one is served.
        std::fs::write(dir.path().join("new"), b"other").unwrap();
        std::fs::rename(dir.path().join("new"), dir.path().join("snponly.efi")).unwrap();
        assert_eq!(&l.get(Loader::UefiSnp).await.unwrap()[..], b"uefi loader");
        assert_eq!(&l.get(Loader::BiosUndi).await.unwrap()[..], b"bios");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn transfers_starting_together_share_one_copy() {
        let dir = two_loaders();
        let l = Loaders::load(dir.path()).unwrap();
        let gets: Vec<_> = (0..16)
            .map(|_| {
                let l = l.clone();
                tokio::spawn(async move { l.get(Loader::BiosUndi).await.unwrap() })
            })
            .collect();
        let mut got = Vec::new();
        for g in gets {
            got.push(g.await.unwrap());
        }
        assert!(got.iter().all(|b| &b[..] == b"bios" && b.as_ptr() == got[0].as_ptr()), "one copy for all");
    }

    #[tokio::test]
    async fn a_loader_cut_short_in_place_is_refused_not_served_in_part() {
        let dir = two_loaders();
        let l = Loaders::load(dir.path()).unwrap();
        std::fs::OpenOptions::new().write(true).open(dir.path().join("snponly.efi")).unwrap().set_len(3).unwrap();
        let e = l.get(Loader::UefiSnp).await.unwrap_err();
        assert!(e.to_string().contains("snponly.efi"), "{e}");
    }

    #[test]
    fn a_missing_or_empty_loader_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("undionly.kpxe"), b"").unwrap();
        std::fs::write(dir.path().join("snponly.efi"), b"uefi").unwrap();
        assert!(matches!(Loaders::load(dir.path()), Err(BootError::EmptyLoader(p)) if p.ends_with("undionly.kpxe")));
        std::fs::remove_file(dir.path().join("snponly.efi")).unwrap();
        std::fs::write(dir.path().join("undionly.kpxe"), b"bios").unwrap();
        assert!(
            matches!(Loaders::load(dir.path()), Err(BootError::Loader { path, .. }) if path.ends_with("snponly.efi"))
        );
    }
}
