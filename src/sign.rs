//! Secure Boot signing of a store entry's EFI binaries (its unified kernel
//! image), done after the build: the entry keeps the unsigned bytes its
//! input hash names (reproducible, the same on every builder); signed copies
//! live beside it in `.signed/<entry>/<certificate fingerprint>/`, so a
//! signature is renewed (new key, expiring certificate) without a rebuild,
//! and the private key never enters the store: only the certificate's
//! SHA-256 fingerprint is recorded, in that folder's `signature.json`.
//!
//! The Authenticode signature itself is made by `sbsign` (Debian's
//! sbsigntool, what distributions sign their own EFI binaries with) and
//! checked with `sbverify` before the copy is published: PE/COFF
//! Authenticode hashing and PKCS#7 are easy to get subtly wrong, and no
//! well-kept Rust crate signs PE images.
//!
//! A UEFI entry's raw disk is signed too: its signed copy (`disk.raw` in the
//! set, a sparse copy) has systemd-boot and the disk's unified kernel image
//! on the ESP replaced by signed ones (mtools, in place on the copy), so the
//! whole disk boot passes Secure Boot.

use crate::fsutil::{IoAt, IoError};
use crate::model::{Blake3, EntryName};
use crate::store::{Entry, Store};
use crate::tools::run;
use crate::tools::ToolError;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::process::Command;

/// What can stop a signing, or make a published signed set untrustworthy.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    #[error(transparent)]
    Io(#[from] IoError),
    #[error(transparent)]
    Tool(#[from] ToolError),
    #[error(transparent)]
    Cert(#[from] crate::hash::CertError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Artifact(#[from] crate::artifact::ArtifactError),
    /// A signed set, or a file to sign, that is not what it must be.
    #[error("{}: {problem}", path.display())]
    Refused { path: PathBuf, problem: String },
    #[error("entry {0} has no EFI binary to sign: build the `uki` format")]
    NoEfi(EntryName),
    #[error("signing key {}: not a file", .0.display())]
    NoKey(PathBuf),
    #[error("sbsign (apt-get install sbsigntool; an encrypted key must be decrypted first)")]
    Sbsign(#[source] ToolError),
    #[error("sbverify: the signed copy does not verify against the certificate")]
    Sbverify(#[source] ToolError),
    #[error("{tool} on the ESP of {}", disk.display())]
    Esp {
        tool: String,
        disk: PathBuf,
        #[source]
        source: ToolError,
    },
}

type Result<T, E = SignError> = std::result::Result<T, E>;

fn refused(path: &Path, problem: impl Into<String>) -> SignError {
    SignError::Refused { path: path.to_path_buf(), problem: problem.into() }
}

/// The record of one signed set.
pub(crate) const RECORD: &str = "signature.json";

/// What a signed folder holds, and what it was made from.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Record {
    pub entry: EntryName,
    /// SHA-256 of the signing certificate (DER), hex.
    pub cert_sha256: String,
    pub files: Vec<SignedFile>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SignedFile {
    pub file: String,
    /// BLAKE3 of the unsigned artifact in the entry (the manifest's).
    pub unsigned_blake3: Blake3,
    /// BLAKE3 and size of the signed copy.
    pub blake3: Blake3,
    pub size: u64,
}

/// A published signed set.
#[derive(Debug, Clone)]
pub struct Signed {
    pub dir: PathBuf,
    pub record: Record,
}

impl Signed {
    pub fn file(&self, name: &str) -> Option<PathBuf> {
        self.record.files.iter().any(|f| f.file == name).then(|| self.dir.join(name))
    }
}

pub use crate::hash::cert_fingerprint;

fn set_dir(store: &Store, entry: &EntryName, fingerprint: &str) -> PathBuf {
    store.signed_dir(entry).join(&fingerprint[..32])
}

/// The entry's set signed with the certificate `fingerprint`, if one is
/// published. Its record is checked against the entry before it is trusted.
pub fn find(store: &Store, entry: &Entry, fingerprint: &str) -> Result<Option<Signed>> {
    let dir = set_dir(store, &entry.name, fingerprint);
    let bytes = match std::fs::read(dir.join(RECORD)) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(IoError { doing: "reading", path: dir.join(RECORD), source }.into()),
    };
    let record: Record =
        serde_json::from_slice(&bytes).map_err(|e| refused(&dir, format!("not a signature record: {e}")))?;
    if record.entry != entry.name || record.cert_sha256 != fingerprint {
        return Err(refused(&dir, "its record names another entry or certificate"));
    }
    for f in &record.files {
        crate::model::manifest::ArtifactFile::new(&f.file).map_err(|e| refused(&dir, e.to_string()))?;
        if !entry.manifest.artifacts.iter().any(|a| a.file.as_str() == f.file && a.blake3 == f.unsigned_blake3) {
            return Err(refused(&dir, format!("{} was signed from other bytes than the entry holds", f.file)));
        }
    }
    Ok(Some(Signed { dir, record }))
}

/// The entry's set signed with `cert`, signing it now if there is none yet
/// (a cached build keeps its signatures). True when it was signed now.
pub(crate) fn ensure(store: &Store, entry: &Entry, key: &Path, cert: &Path) -> Result<(Signed, bool)> {
    let fp = cert_fingerprint(cert)?;
    Ok(match find(store, entry, &fp)? {
        Some(s) => (s, false),
        None => (sign(store, entry, key, cert)?, true),
    })
}

/// The entry's EFI artifacts (unified kernel images): what gets signed.
fn efi_artifacts(entry: &Entry) -> Vec<&crate::model::manifest::Artifact> {
    entry.manifest.artifacts.iter().filter(|a| a.name == crate::model::manifest::ArtifactName::Uki).collect()
}

/// Signs the entry's EFI binaries with `key` and `cert` and publishes the
/// set (replacing one made with the same certificate before). Each unsigned
/// file is checked against the manifest first: a damaged entry is never
/// signed.
pub fn sign(store: &Store, entry: &Entry, key: &Path, cert: &Path) -> Result<Signed> {
    let fingerprint = cert_fingerprint(cert)?;
    let arts = efi_artifacts(entry);
    if arts.is_empty() {
        return Err(SignError::NoEfi(entry.name.clone()));
    }
    if !key.is_file() {
        return Err(SignError::NoKey(key.to_path_buf()));
    }
    // The build lock of the entry's hash: a build starting meanwhile must not
    // sweep this work folder as a killed build's leftovers.
    let _lock = store.lock(&entry.manifest.hash)?;
    let work = store.work_dir(&entry.name)?;
    let mut files = Vec::new();
    let checked = |a: &crate::model::manifest::Artifact| -> Result<PathBuf> {
        let src = entry.path.join(a.file.as_str());
        let digest = Blake3::of_file(&src).at("reading", &src)?;
        if digest != a.blake3 {
            return Err(refused(&src, "its bytes do not match the manifest; not signing a damaged entry (rebuild it)"));
        }
        Ok(src)
    };
    use crate::model::Format;
    let uefi = entry.manifest.firmware == crate::model::Firmware::Uefi;
    let disk = |f: Format| entry.manifest.artifact(f, crate::model::manifest::ArtifactName::Disk).filter(|_| uefi);
    // The raw disk first: the qcow2 and VHD copies are made from its signed copy.
    let disks = [Format::Raw, Format::Qcow2, Format::Vhd].into_iter().filter_map(disk);
    let mut signed_raw = None;
    for a in arts.into_iter().chain(disks) {
        let src = checked(a)?;
        let out = work.path().join(a.file.as_str());
        match (a.name, a.format, &signed_raw) {
            (crate::model::manifest::ArtifactName::Disk, Format::Raw, _) => {
                sign_disk(entry, &src, &out, key, cert, work.path())?;
                signed_raw = Some(out.clone());
            }
            (_, Format::Qcow2, Some(raw)) => crate::artifact::disk::to_qcow2(raw, &out)?,
            (_, Format::Vhd, Some(raw)) => signed_vhd(&src, raw, &out)?,
            (crate::model::manifest::ArtifactName::Disk, _, None) => continue,
            _ => sign_file(&src, &out, key, cert)?,
        }
        files.push(SignedFile {
            file: a.file.as_str().to_string(),
            unsigned_blake3: a.blake3.clone(),
            blake3: Blake3::of_file(&out).at("reading", &out)?,
            size: std::fs::metadata(&out).at("reading", &out)?.len(),
        });
    }
    let record = Record { entry: entry.name.clone(), cert_sha256: fingerprint.clone(), files };
    let json = serde_json::to_vec_pretty(&record).map_err(std::io::Error::from);
    json.and_then(|j| std::fs::write(work.path().join(RECORD), j)).at("writing", work.path().join(RECORD))?;
    let sync = |dir: &Path| -> std::io::Result<()> {
        for f in std::fs::read_dir(dir)? {
            std::fs::File::open(f?.path())?.sync_all()?;
        }
        Ok(())
    };
    sync(work.path()).at("syncing", work.path())?;
    // Publish: the folder appears whole under its name or not at all; an
    // older set for the same certificate is swapped out, then removed.
    let dir = set_dir(store, &entry.name, &fingerprint);
    let parent = dir.parent().unwrap_or(&dir);
    std::fs::create_dir_all(parent).at("creating", parent)?;
    let staged = work.keep();
    if dir.exists() {
        rustix::fs::renameat_with(rustix::fs::CWD, &staged, rustix::fs::CWD, &dir, rustix::fs::RenameFlags::EXCHANGE)
            .map_err(std::io::Error::from)
            .at("replacing", &dir)?;
    } else {
        std::fs::rename(&staged, &dir).at("publishing", &dir)?;
    }
    let _ = std::fs::remove_dir_all(&staged);
    std::fs::File::open(parent).and_then(|f| f.sync_all()).at("syncing", parent)?;
    tracing::info!(entry = %entry.name, cert_sha256 = %fingerprint, "signed {} EFI binary(ies)", record.files.len());
    Ok(Signed { dir, record })
}

/// `sbsign` `src` to `out`, then `sbverify` it against `cert`.
fn sign_file(src: &Path, out: &Path, key: &Path, cert: &Path) -> Result<()> {
    run(Command::new("sbsign").arg("--key").arg(key).arg("--cert").arg(cert).arg("--output").arg(out).arg(src))
        .map_err(SignError::Sbsign)?;
    run(Command::new("sbverify").arg("--cert").arg(cert).arg(out)).map_err(SignError::Sbverify)?;
    Ok(())
}

/// A copy of the raw disk `src` at `out` whose ESP holds signed systemd-boot
/// and a signed unified kernel image.
fn sign_disk(entry: &Entry, src: &Path, out: &Path, key: &Path, cert: &Path, work: &Path) -> Result<()> {
    // Sparse (and a reflink where the file system has them): a disk is
    // mostly unwritten blocks.
    run(Command::new("cp").args(["--reflink=auto", "--sparse=always"]).arg(src).arg(out))?;
    let offset = crate::artifact::disk::esp_offset(out)?;
    let image = format!("{}@@{offset}", out.display());
    let m = &entry.manifest;
    let on_esp = [format!("::/EFI/BOOT/{}", m.arch.efi_boot_file()), format!("::/EFI/Linux/{}.efi", m.profile)];
    for (i, path) in on_esp.iter().enumerate() {
        let (plain, signed) = (work.join(format!("esp-{i}.efi")), work.join(format!("esp-{i}.signed.efi")));
        let mtools =
            |args: &[&std::ffi::OsStr]| {
                run(Command::new(args[0]).env("MTOOLS_SKIP_CHECK", "1").args(&args[1..])).map_err(|source| {
                    SignError::Esp { tool: args[0].to_string_lossy().into_owned(), disk: out.to_path_buf(), source }
                })
            };
        mtools(&["mcopy".as_ref(), "-n".as_ref(), "-i".as_ref(), image.as_ref(), path.as_ref(), plain.as_ref()])?;
        sign_file(&plain, &signed, key, cert)?;
        // -m keeps the file's time; -o overwrites it in place.
        mtools(&[
            "mcopy".as_ref(),
            "-o".as_ref(),
            "-m".as_ref(),
            "-i".as_ref(),
            image.as_ref(),
            signed.as_ref(),
            path.as_ref(),
        ])?;
        std::fs::remove_file(&plain).at("removing", &plain)?;
        std::fs::remove_file(&signed).at("removing", &signed)?;
    }
    Ok(())
}

/// The signed raw disk as a fixed VHD with the entry's VHD footer: a fixed
/// footer describes the disk's size and identity (time stamp, UUID), not its
/// bytes, so it stays as the build made it; rebuilding it from its own
/// fields and comparing checks that it is one.
fn signed_vhd(unsigned: &Path, signed_raw: &Path, out: &Path) -> Result<()> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(unsigned).at("reading", unsigned)?;
    let len = f.metadata().at("reading", unsigned)?.len();
    let mut footer = [0u8; 512];
    if len < 512 {
        return Err(refused(unsigned, "too short for a VHD"));
    }
    f.read_exact_at(&mut footer, len - 512).at("reading", unsigned)?;
    let stamp = u32::from_be_bytes([footer[24], footer[25], footer[26], footer[27]]);
    let mut uuid = [0u8; 16];
    uuid.copy_from_slice(&footer[68..84]);
    let epoch = u64::from(stamp) + crate::artifact::disk::VHD_EPOCH;
    let written = crate::artifact::disk::to_vhd(signed_raw, out, epoch, uuid)?;
    if written != footer {
        return Err(refused(unsigned, "its footer is not one imgd writes; not making a signed copy"));
    }
    Ok(())
}
