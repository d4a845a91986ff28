//! `manifest.json`: what a store entry is and holds. Consumers (serve, sync,
//! test) find artifacts through it by format and [`ArtifactName`], never by
//! guessing file names.
//!
//! A manifest is also read from places imgd does not control (the S3 build
//! cache, a store copied from another machine), so reading one checks it:
//! the file is at most [`MAX_BYTES`], entry and file names can only be plain
//! names ([`ArtifactFile`]: no `/`, no `..`, no control characters), the hash
//! and every artifact digest are 64 hex digits ([`InputHash`], [`Blake3`]),
//! and no file is listed twice.
//!
//! ```json
//! { "name": "9f2c...-hello", "hash": "9f2c...(64 hex)", "profile": "hello",
//!   "hardware": "qemu-x86_64", "arch": "x86_64", "firmware": "uefi",
//!   "imgd_version": "0.1.0", "built_at": 1763779200, "source_date_epoch": 1577836800,
//!   "artifacts": [{"name": "disk", "format": "raw", "file": "disk.raw",
//!                  "size": 268435456, "blake3": "..."}],
//!   "recipe": { "cmdline": "console=ttyS0", "ena": false, "sriov": false,
//!               ...the rest of the resolved profile, inputs by digest... } }
//! ```

use super::names::{BadName, Blake3, EntryName, InputHash};
use super::platform::{Arch, Firmware, Format};
use crate::fsutil::{IoAt, IoError};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// A manifest larger than this is refused unread (real ones are a few KiB).
pub(crate) const MAX_BYTES: u64 = 4 << 20;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub name: EntryName,
    pub hash: InputHash,
    pub profile: String,
    pub hardware: String,
    pub arch: Arch,
    pub firmware: Firmware,
    pub imgd_version: String,
    /// When the entry was committed (Unix seconds). Not an input: it orders
    /// entries for `gc` and `ls`, and is the only field that differs between
    /// two builds of the same inputs.
    pub built_at: u64,
    /// The epoch stamped on every file in the images.
    pub source_date_epoch: u64,
    pub artifacts: Vec<Artifact>,
    pub recipe: RecipeRecord,
    /// With a UKI: the PCR 11 values booting it produces, for attestation
    /// ([`crate::artifact::uki::pcr11`]; derived from the file, so a copy
    /// fetched from elsewhere gets it recomputed, not believed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pcr11: Option<Pcr11>,
    /// The same for the UKI on the raw disk's ESP (its own initramfs and
    /// `root=` command line), when the raw disk is built for UEFI.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_pcr11: Option<Pcr11>,
}

/// The SHA-256 bank values of PCR 11 that booting a UKI produces
/// (computed by [`crate::artifact::uki::pcr11`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pcr11 {
    /// When the kernel starts: systemd's stub has measured the UKI's
    /// sections (each name with its NUL, then its bytes as loaded).
    pub sha256: String,
    /// After each boot phase, `systemd-measure`'s phase paths
    /// (`enter-initrd`, `enter-initrd:leave-initrd`, ...) to values.
    pub phases_sha256: std::collections::BTreeMap<String, String>,
}

/// One file of an entry.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Artifact {
    /// What it is within its format.
    pub name: ArtifactName,
    pub format: Format,
    /// File name inside the store entry.
    pub file: ArtifactFile,
    pub size: u64,
    /// BLAKE3 of the file ([`crate::hash::ArtifactDigest`]).
    pub blake3: Blake3,
}

/// What an artifact is: consumers look artifacts up by format and this.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ArtifactName {
    Kernel,
    Initrd,
    Script,
    Disk,
    Rootfs,
    Sbom,
    /// A unified kernel image.
    Uki,
}

/// A file name inside a store entry, checked where it enters: 1 to 128 of
/// `A-Z a-z 0-9 . _ -`, not starting with a dot, and not `manifest.json`. It
/// can only ever name a file directly inside the entry folder.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct ArtifactFile(String);

impl ArtifactFile {
    pub(crate) fn new(name: &str) -> Result<ArtifactFile, BadName> {
        let ok = (1..=128).contains(&name.len())
            && !name.starts_with('.')
            && name != "manifest.json"
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if ok {
            Ok(ArtifactFile(name.to_string()))
        } else {
            Err(BadName::new(name, "an artifact file name"))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A plain name: joined to an entry folder it names a file directly inside.
impl AsRef<Path> for ArtifactFile {
    fn as_ref(&self) -> &Path {
        Path::new(&self.0)
    }
}

impl std::fmt::Display for ArtifactFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(&self.0)
    }
}

impl<'de> Deserialize<'de> for ArtifactFile {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        ArtifactFile::new(&String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

/// The resolved recipe as recorded: the fields consumers read, typed, and
/// the rest kept as written for people and audits.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RecipeRecord {
    /// The kernel command line (console, hardware's, profile's).
    #[serde(default)]
    pub cmdline: String,
    /// AMI flags from the hardware file (`imgd sync`).
    #[serde(default)]
    pub ena: bool,
    #[serde(default)]
    pub sriov: bool,
    #[serde(flatten)]
    pub rest: serde_json::Map<String, serde_json::Value>,
}

/// A manifest that could not be read, or that says something imgd never writes.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error(transparent)]
    Io(#[from] IoError),
    #[error("{} is larger than {MAX_BYTES} bytes; not a manifest", path.display())]
    TooLarge { path: PathBuf },
    /// Not JSON of the manifest's shape.
    #[error("parsing {}", path.display())]
    Parse {
        path: PathBuf,
        #[source]
        source: Box<ManifestError>,
    },
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    #[error("entry name `{0}` does not match its hash and profile")]
    NameMismatch(EntryName),
    #[error("{0} is listed twice")]
    Twice(ArtifactFile),
    #[error("pcr11: `{}` is not 64 hex digits", .0.escape_debug())]
    BadPcr(String),
}

type Result<T, E = ManifestError> = std::result::Result<T, E>;

impl Manifest {
    /// Reads and checks a manifest (see the module docs).
    pub fn read(path: &Path) -> Result<Manifest> {
        use std::io::Read;
        let f = std::fs::File::open(path).at("reading", path)?;
        let mut text = Vec::new();
        f.take(MAX_BYTES + 1).read_to_end(&mut text).at("reading", path)?;
        if text.len() as u64 > MAX_BYTES {
            return Err(ManifestError::TooLarge { path: path.to_path_buf() });
        }
        Self::parse(&text).map_err(|e| ManifestError::Parse { path: path.to_path_buf(), source: Box::new(e) })
    }

    pub(crate) fn parse(text: &[u8]) -> Result<Manifest> {
        let m: Manifest = serde_json::from_slice(text)?;
        m.check()?;
        Ok(m)
    }

    /// What serde cannot say: the names fit together and nothing is listed twice.
    fn check(&self) -> Result<()> {
        if EntryName::of(&self.hash, &self.profile).ok().as_ref() != Some(&self.name) {
            return Err(ManifestError::NameMismatch(self.name.clone()));
        }
        let mut seen = std::collections::BTreeSet::new();
        for a in &self.artifacts {
            if !seen.insert(&a.file) {
                return Err(ManifestError::Twice(a.file.clone()));
            }
        }
        for p in self.pcr11.iter().chain(&self.disk_pcr11) {
            for v in std::iter::once(&p.sha256).chain(p.phases_sha256.values()) {
                if !crate::hash::is_digest_hex(v) {
                    return Err(ManifestError::BadPcr(v.clone()));
                }
            }
        }
        Ok(())
    }

    /// Written to a temporary file, synced, then renamed.
    pub(crate) fn write(&self, path: &Path) -> Result<()> {
        let mut text = serde_json::to_string_pretty(self)?;
        text.push('\n');
        Ok(crate::fsutil::write_atomic(path, text.as_bytes())?)
    }

    pub fn artifact(&self, format: Format, name: ArtifactName) -> Option<&Artifact> {
        self.artifacts.iter().find(|a| a.format == format && a.name == name)
    }

    /// The artifact stored in `file`.
    pub(crate) fn file(&self, file: &str) -> Option<&Artifact> {
        self.artifacts.iter().find(|a| a.file.as_str() == file)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(files: &[&str]) -> serde_json::Value {
        let hash = "ab".repeat(32);
        serde_json::json!({
            "name": format!("{}-hello", &hash[..32]), "hash": hash, "profile": "hello",
            "hardware": "qemu-x86_64", "arch": "x86_64", "firmware": "uefi", "imgd_version": "0.1.0",
            "built_at": 1, "source_date_epoch": 2,
            "artifacts": files.iter().map(|f| serde_json::json!({
                "name": "disk", "format": "raw", "file": f, "size": 1, "blake3": "00".repeat(32)
            })).collect::<Vec<_>>(),
            "recipe": { "cmdline": "console=ttyS0", "ena": true, "sriov": false, "other": [1, 2] },
        })
    }

    fn parse(v: &serde_json::Value) -> Result<Manifest> {
        Manifest::parse(&serde_json::to_vec(v).unwrap())
    }

    #[test]
    fn typed_fields_and_the_rest_round_trip() {
        let m = parse(&manifest(&["disk.raw"])).unwrap();
        assert_eq!((m.recipe.cmdline.as_str(), m.recipe.ena, m.recipe.sriov), ("console=ttyS0", true, false));
        assert_eq!(m.recipe.rest["other"], serde_json::json!([1, 2]));
        assert_eq!(m.artifact(Format::Raw, ArtifactName::Disk).unwrap().file.as_str(), "disk.raw");
        assert_eq!(serde_json::to_value(&m).unwrap(), manifest(&["disk.raw"]));
    }

    #[test]
    fn names_that_could_leave_the_entry_folder_are_refused() {
        for bad in [
            "/etc/passwd",
            "../../x",
            "..",
            ".",
            "a/b",
            "link/../x",
            ".hidden",
            "manifest.json",
            "a\nb",
            "a\\b",
            "",
            &"x".repeat(129),
        ] {
            let e = parse(&manifest(&[bad])).unwrap_err();
            assert!(crate::model::Chain(&e).to_string().contains("not an artifact file name"), "{bad:?}: {e:#}");
        }
        assert!(crate::model::Chain(&parse(&manifest(&["a", "a"])).unwrap_err()).to_string().contains("listed twice"));
    }

    #[test]
    fn a_name_or_hash_that_does_not_fit_is_refused() {
        let mut v = manifest(&["disk.raw"]);
        v["name"] = serde_json::json!(format!("{}-other", "ab".repeat(16)));
        assert!(parse(&v).is_err());
        let mut v = manifest(&["disk.raw"]);
        v["hash"] = serde_json::json!("abc");
        assert!(parse(&v).is_err());
        let mut v = manifest(&["disk.raw"]);
        v["artifacts"][0]["blake3"] = serde_json::json!("../x");
        assert!(parse(&v).is_err());
    }

    #[test]
    fn an_oversized_manifest_is_refused_unread() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("manifest.json");
        std::fs::write(&p, vec![b' '; (MAX_BYTES + 1) as usize]).unwrap();
        assert!(crate::model::Chain(&Manifest::read(&p).unwrap_err()).to_string().contains("larger than"));
    }

    /// Mutations of a good manifest: parsed and checked, or refused; never a
    /// panic, and nothing that could name a file outside the entry gets through.
    #[test]
    fn mutated_manifests_parse_or_fail_cleanly() {
        use proptest::prelude::*;
        let good = serde_json::to_string(&manifest(&["disk.raw", "vmlinuz"])).unwrap();
        proptest!(ProptestConfig::with_cases(3000), |(at in 0usize..2000, junk in "[ -~\\x00\u{e9}/\\\\.]{0,6}", cut in 0usize..3)| {
            let mut text = good.clone();
            let at = at.min(text.len());
            let at = (0..=at).rev().find(|i| text.is_char_boundary(*i)).unwrap_or(0);
            match cut {
                0 => text.insert_str(at, &junk),
                1 => text.replace_range(at..(at + junk.len()).min(text.len()), &junk),
                _ => text.truncate(at),
            }
            if let Ok(m) = Manifest::parse(text.as_bytes()) {
                for a in &m.artifacts {
                    let f = a.file.as_str();
                    prop_assert!(!f.contains('/') && !f.starts_with('.') && f != "manifest.json", "{f}");
                }
            }
        });
    }
}
