//! Resolution: a layered profile plus its hardware becomes a [`Recipe`], where every
//! reference is checked and every input file is replaced by its content digest.
//!
//! The recipe's JSON encoding *is* the canonical encoding hashed into the build's
//! name (see [`crate::build::input_hash`]); input paths are skipped when
//! serializing, so moving a checkout does not change any hash.

use super::error::ConfigError;
use super::load::Loaded;
use super::lock::{checked_mirror_url, Lock, Request, DEBIAN_KEYRING};
use super::profile::UserSpec;
use crate::model::{Arch, Firmware, Format, RecipeRecord};
use serde::Serialize;
use std::path::{Path, PathBuf};

/// Default timestamp of every file in an image when neither the profile nor
/// `SOURCE_DATE_EPOCH` sets one: 2020-01-01T00:00:00Z (after 1980, for FAT).
pub(crate) const DEFAULT_EPOCH: u64 = 1_577_836_800;

/// Where Debian's grub-pc-bin keeps GRUB for BIOS.
pub(crate) const GRUB_I386_PC: &str = "/usr/lib/grub/i386-pc";

/// An input file or tree, named by content. `path` is where it is on this machine.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Input {
    #[serde(skip)]
    pub path: PathBuf,
    /// File name only (for people reading the manifest); not a path.
    pub name: String,
    pub sha256: String,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Base {
    Debs(Vec<Input>),
    Tarball(Input),
    Dir(Input),
    Debian(Box<DebianBase>),
}

/// A Debian base: what the profile asks for and, once locked, exactly which
/// packages are installed. The hash covers the request and the locked set
/// (by SHA-256), not the mirror: the same files from another mirror are the
/// same image.
#[derive(Debug, Clone, Serialize)]
pub struct DebianBase {
    pub request: Request,
    /// The locked package set, once there is one. It is hashed and recorded
    /// as `packages`: each package's name, version and SHA-256 (what the
    /// image holds), not the mirror paths and sizes, which name no content.
    #[serde(rename = "packages", serialize_with = "installed_packages")]
    pub lock: Option<Lock>,
    #[serde(skip)]
    pub mirror: String,
    #[serde(skip)]
    pub keyring: PathBuf,
    /// `profiles/<name>.lock`, beside the profile named on the command line.
    #[serde(skip)]
    pub lock_path: PathBuf,
    /// imgd's cache folder (package pool, assembled bases).
    #[serde(skip)]
    pub cache: PathBuf,
}

/// `packages = [{name, version, sha256}, ...]`: empty until the base is locked.
fn installed_packages<S: serde::Serializer>(lock: &Option<Lock>, s: S) -> Result<S::Ok, S::Error> {
    #[derive(Serialize)]
    struct Installed<'a> {
        name: &'a str,
        version: &'a str,
        sha256: &'a str,
    }
    let packages = lock.iter().flat_map(|l| &l.packages);
    s.collect_seq(packages.map(|p| Installed { name: &p.name, version: &p.version, sha256: &p.sha256 }))
}

/// Debian package names: lowercase letters, digits, + - . (Policy 5.6.1).
fn debian_name(s: &str) -> bool {
    s.len() >= 2
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+-.".contains(&b))
        && s.as_bytes()[0].is_ascii_alphanumeric()
}

/// The profile's Debian base with its lock, if the lock file exists. A lock
/// that was resolved for another request (the profile changed since) is an
/// error that says to run `imgd lock`.
pub(crate) fn debian_base(l: &Loaded, arch: Arch, cache: &Path) -> Result<Option<DebianBase>, ConfigError> {
    debian_base_with(l, arch, cache, true)
}

/// [`debian_base`] without reading the lock (for `imgd lock`, which makes it).
pub fn debian_base_unchecked(l: &Loaded, arch: Arch, cache: &Path) -> Result<Option<DebianBase>, ConfigError> {
    debian_base_with(l, arch, cache, false)
}

fn debian_base_with(l: &Loaded, arch: Arch, cache: &Path, read_lock: bool) -> Result<Option<DebianBase>, ConfigError> {
    let Some(spec) = l.profile.base.as_ref().and_then(|b| b.debian.as_ref()) else { return Ok(None) };
    let key = |k: &str| format!("base.debian.{k}");
    if !debian_name(&spec.suite) {
        return Err(l.error(&key("suite"), format!("suite `{}` is not a suite name (bookworm, stable)", spec.suite)));
    }
    let variant =
        spec.variant.as_deref().unwrap_or("minbase").parse().map_err(|e: String| l.error(&key("variant"), e))?;
    let components = spec.components.clone().unwrap_or_else(|| vec!["main".into()]);
    for (i, c) in components.iter().enumerate() {
        if !debian_name(c) {
            return Err(l.error(&format!("base.debian.components[{i}]"), format!("`{c}` is not a component name")));
        }
    }
    let mut packages = spec.packages.clone();
    for (i, p) in packages.iter().enumerate() {
        if !debian_name(p) {
            return Err(l.error(&format!("base.debian.packages[{i}]"), format!("`{p}` is not a Debian package name")));
        }
    }
    packages.sort();
    packages.dedup();
    let mirror = spec.mirror.clone().unwrap_or_else(|| "http://deb.debian.org/debian".into());
    checked_mirror_url(&mirror).map_err(|e| l.error(&key("mirror"), crate::model::Chain(&e).to_string()))?;
    let keyring = PathBuf::from(spec.keyring.as_deref().unwrap_or(DEBIAN_KEYRING));
    let request =
        Request { suite: spec.suite.clone(), architecture: arch.debian().into(), variant, components, packages };
    let lock_path = l.profile_path.with_extension("lock");
    let mut base = DebianBase {
        request,
        lock: None,
        mirror: mirror.trim_end_matches('/').to_string(),
        keyring,
        lock_path: lock_path.clone(),
        cache: cache.to_path_buf(),
    };
    if read_lock && lock_path.exists() {
        let lock =
            Lock::read(&lock_path).map_err(|e| ConfigError::new(&lock_path, format!("{}", crate::model::Chain(&e))))?;
        if lock.request != base.request {
            return Err(l.error(
                "base.debian",
                format!(
                    "{} was resolved for {}; the profile now asks for {}: run `imgd lock {}`",
                    lock_path.display(),
                    describe(&lock.request),
                    describe(&base.request),
                    l.profile_path.display()
                ),
            ));
        }
        base.lock = Some(lock);
    }
    Ok(Some(base))
}

fn describe(r: &Request) -> String {
    format!("{} {} {} [{}] + [{}]", r.suite, r.architecture, r.variant, r.components.join(" "), r.packages.join(" "))
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kernel {
    Deb(Input),
    FromBase,
    Explicit { image: Input, modules: Option<Input> },
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FileContent {
    Inline(String),
    Source(Input),
    Symlink(String),
    Dir,
}

#[derive(Debug, Clone, Serialize)]
pub struct FileEntry {
    pub path: String,
    pub content: FileContent,
    pub mode: Option<u32>,
    pub owner: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Disk {
    /// Total size in bytes (a whole number of MiB), or None to fit the content.
    pub size: Option<u64>,
    pub free: u64,
    pub esp_size: u64,
    pub root_label: String,
}

/// Everything one build needs, checked. Serialized, it is the hash input.
#[derive(Debug, Clone, Serialize)]
pub struct Recipe {
    /// Where each key was set, for errors found during the build (not hashed).
    #[serde(skip)]
    pub origins: std::sync::Arc<super::load::Origins>,
    pub name: String,
    pub hardware: String,
    pub arch: Arch,
    pub firmware: Firmware,
    pub hostname: Option<String>,
    pub formats: Vec<Format>,
    /// Full kernel command line: console, hardware's, profile's.
    pub cmdline: String,
    pub init: String,
    pub ready_marker: Option<String>,
    pub epoch: u64,
    pub base: Base,
    pub kernel: Kernel,
    /// Modules to install and load at boot: the hardware's, then the profile's extras.
    pub modules: Vec<String>,
    /// The profile's part of `modules`, to point errors at the right file.
    #[serde(skip)]
    pub extra_modules: Vec<String>,
    pub files: Vec<FileEntry>,
    pub users: Vec<UserSpec>,
    pub services: Vec<String>,
    pub disk: Disk,
    /// `[scratch]`: when set, `init` is the scratch stage, which hands over
    /// to the profile's init (`scratch.init`). Absent from the hash input
    /// when unset, so builds without it keep their hashes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scratch: Option<super::scratch::Scratch>,
    /// The packages `[scratch]`'s programs come from when the base is plain
    /// `.deb`s (other bases must hold them).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub scratch_tools: Vec<Input>,
    pub ena: bool,
    pub sriov: bool,
    /// systemd-boot, for UEFI disk images.
    pub efi_loader: Option<Input>,
    /// systemd's EFI stub (`linux*.efi.stub`, or the systemd-boot-efi .deb
    /// that holds it), for unified kernel images.
    pub efi_stub: Option<Input>,
    /// busybox-static .deb whose binary runs the disk images' initramfs.
    pub initramfs_busybox: Option<Input>,
    /// GRUB's i386-pc module folder, for BIOS disk images.
    pub grub_bios: Option<Input>,
    /// `[secure_boot]`: sign the uki after the build. Not hashed, not
    /// recorded in the manifest: signing happens after the build.
    #[serde(skip)]
    pub signing: Option<Signing>,
    /// imgd's cache folder (unpacked kernel packages). Not hashed: what is
    /// kept there is named by the SHA-256 of what it came from.
    #[serde(skip)]
    pub cache: PathBuf,
}

/// A profile's signing key and certificate, checked when it is loaded.
#[derive(Debug, Clone, PartialEq)]
pub struct Signing {
    pub key: PathBuf,
    pub cert: PathBuf,
    /// SHA-256 of the certificate (DER), hex.
    pub cert_sha256: String,
}

pub(super) fn file_name(p: &Path) -> String {
    p.file_name().map_or_else(String::new, |s| s.to_string_lossy().into_owned())
}

/// Finds `<pattern>_<version>_<arch>.deb` (or `_all.deb`) in the deb cache.
/// `pattern` is a package name, globs allowed. With several versions of one
/// package, the highest (by `dpkg --compare-versions`) wins.
pub(crate) fn find_deb(cache: &Path, pattern: &str, arch: Arch) -> Result<PathBuf, String> {
    let pat = glob::Pattern::new(pattern).map_err(|e| format!("bad package pattern `{pattern}`: {e}"))?;
    let mut found: Vec<(String, String, PathBuf)> = Vec::new();
    let mut other_arch = Vec::new();
    for e in std::fs::read_dir(cache).into_iter().flatten().flatten() {
        let fname = e.file_name().to_string_lossy().into_owned();
        let Some(stem) = fname.strip_suffix(".deb") else { continue };
        let parts: Vec<&str> = stem.split('_').collect();
        if parts.len() != 3 || !pat.matches(parts[0]) {
            continue;
        }
        if parts[2] == arch.debian() || parts[2] == "all" {
            found.push((parts[0].to_string(), parts[1].replace("%3a", ":"), e.path()));
        } else {
            other_arch.push(fname);
        }
    }
    if found.is_empty() {
        let hint = if other_arch.is_empty() {
            String::new()
        } else {
            format!(" (found only other architectures: {})", other_arch.join(", "))
        };
        return Err(format!(
            "no package matching `{pattern}` for {} in {}{hint}; run scripts/setup.sh or set IMGD_CACHE",
            arch.debian(),
            cache.display()
        ));
    }
    let names: std::collections::BTreeSet<&str> = found.iter().map(|f| f.0.as_str()).collect();
    if names.len() > 1 {
        return Err(format!(
            "`{pattern}` matches several packages ({}); name one",
            names.into_iter().collect::<Vec<_>>().join(", ")
        ));
    }
    // Debian's ordering (1.10 after 1.9, ~ before anything); a file name
    // whose version does not parse loses to every one that does.
    let version = |v: &str| v.parse::<debversion::Version>().ok();
    found.sort_by(|a, b| version(&a.1).cmp(&version(&b.1)).then_with(|| a.2.cmp(&b.2)));
    found.pop().map(|f| f.2).ok_or_else(|| format!("no package matching `{pattern}`"))
}

impl Recipe {
    /// A bad-input error about profile `key`, found during the build: it
    /// names the file that set the key (a parent profile, the child, a `--set`).
    pub fn profile_error(&self, key: &str, message: impl Into<String>) -> ConfigError {
        self.origins.profile_error(key, message)
    }

    /// A bad-input error about `key` of the hardware file.
    pub(crate) fn hardware_error(&self, key: &str, message: impl Into<String>) -> ConfigError {
        self.origins.hardware_error(key, message)
    }

    /// What the manifest records of this recipe: the fields its readers use,
    /// typed, and every other hashed field as it was hashed.
    pub fn record(&self) -> serde_json::Result<RecipeRecord> {
        let mut rest = match serde_json::to_value(self)? {
            serde_json::Value::Object(fields) => fields,
            other => return Err(serde::ser::Error::custom(format!("a recipe serialized as {other}, not an object"))),
        };
        for typed in ["cmdline", "ena", "sriov"] {
            rest.remove(typed);
        }
        Ok(RecipeRecord { cmdline: self.cmdline.clone(), ena: self.ena, sriov: self.sriov, rest })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_highest_debian_version_wins() {
        let d = tempfile::tempdir().unwrap();
        for v in ["1.9-1", "1.10-1", "1.10~rc1-1", "1%3a0.1-1"] {
            std::fs::write(d.path().join(format!("pkg_{v}_amd64.deb")), "").unwrap();
        }
        std::fs::write(d.path().join("pkg_2.0-1_arm64.deb"), "").unwrap();
        let best = find_deb(d.path(), "pkg", Arch::X86_64).unwrap();
        assert_eq!(best.file_name().unwrap(), "pkg_1%3a0.1-1_amd64.deb", "the epoch counts first");
        std::fs::remove_file(d.path().join("pkg_1%3a0.1-1_amd64.deb")).unwrap();
        let best = find_deb(d.path(), "pkg", Arch::X86_64).unwrap();
        assert_eq!(best.file_name().unwrap(), "pkg_1.10-1_amd64.deb", "1.10 > 1.10~rc1 > 1.9");
    }
}
