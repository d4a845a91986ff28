//! Resolution: a layered profile plus its hardware becomes a [`Recipe`], where every
//! reference is checked and every input file is replaced by its content digest.
//!
//! The recipe's JSON encoding *is* the canonical encoding hashed into the build's
//! name (see [`crate::build::input_hash`]); input paths are skipped when
//! serializing, so moving a checkout does not change any hash.

use super::error::ConfigError;
use super::hardware::{DEFAULT_EFI_LOADER, DEFAULT_EFI_STUB};
use super::load::Loaded;
use super::lock::{checked_mirror_url, Lock, Request, DEBIAN_KEYRING};
use super::profile::UserSpec;
use super::types::{Arch, Firmware, Format, MIB};
use crate::hash;
use serde::Serialize;
use std::path::{Path, PathBuf};

/// Default timestamp of every file in an image when neither the profile nor
/// `SOURCE_DATE_EPOCH` sets one: 2020-01-01T00:00:00Z (after 1980, for FAT).
pub const DEFAULT_EPOCH: u64 = 1_577_836_800;

/// Where Debian's grub-pc-bin keeps GRUB for BIOS.
pub const GRUB_I386_PC: &str = "/usr/lib/grub/i386-pc";

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
    /// Every locked package: what the image holds (and the manifest lists).
    pub packages: Vec<InstalledPackage>,
    #[serde(skip)]
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

#[derive(Debug, Clone, Serialize)]
pub struct InstalledPackage {
    pub name: String,
    pub version: String,
    pub sha256: String,
}

impl DebianBase {
    pub fn set_lock(&mut self, lock: Lock) {
        self.packages = lock
            .packages
            .iter()
            .map(|p| InstalledPackage { name: p.name.clone(), version: p.version.clone(), sha256: p.sha256.clone() })
            .collect();
        self.lock = Some(lock);
    }
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
pub fn debian_base(l: &Loaded, arch: Arch, cache: &Path) -> Result<Option<DebianBase>, ConfigError> {
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
    checked_mirror_url(&mirror).map_err(|e| l.error(&key("mirror"), format!("{e:#}")))?;
    let keyring = PathBuf::from(spec.keyring.as_deref().unwrap_or(DEBIAN_KEYRING));
    let request =
        Request { suite: spec.suite.clone(), architecture: arch.debian().into(), variant, components, packages };
    let lock_path = l.profile_path.with_extension("lock");
    let mut base = DebianBase {
        request,
        packages: Vec::new(),
        lock: None,
        mirror: mirror.trim_end_matches('/').to_string(),
        keyring,
        lock_path: lock_path.clone(),
        cache: cache.to_path_buf(),
    };
    if read_lock && lock_path.exists() {
        let lock = Lock::read(&lock_path).map_err(|e| ConfigError::new(&lock_path, format!("{e:#}")))?;
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
        base.set_lock(lock);
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

/// Resolution settings that come from the environment rather than the profile.
#[derive(Debug, Clone)]
pub struct ResolveOptions {
    /// Folder of downloaded .deb files (`<cache>/debs`).
    pub deb_cache: PathBuf,
    /// `--format`: build only these.
    pub formats: Option<Vec<Format>>,
    /// `SOURCE_DATE_EPOCH` from the environment.
    pub env_epoch: Option<u64>,
    /// Where to remember digests of large input files between runs.
    pub digest_cache: Option<PathBuf>,
    /// imgd's cache folder.
    pub cache: PathBuf,
    /// `--unlocked`: a Debian base without a lock file is resolved from the
    /// mirror at build time instead of being an error.
    pub unlocked: bool,
}

pub fn resolve(l: &Loaded, opts: &ResolveOptions) -> Result<Recipe, ConfigError> {
    let p = &l.profile;
    let hw = &l.hardware;
    let arch = hw.arch;
    let name = p
        .name
        .clone()
        .unwrap_or_else(|| l.profile_path.file_stem().map_or("profile".into(), |s| s.to_string_lossy().into_owned()));
    if !super::types::valid_name(&name) {
        return Err(l.error("name", format!("profile name `{name}` must be letters, digits, - or _")));
    }

    let mut formats = match &opts.formats {
        Some(f) => f.clone(),
        // The profile's formats, or every one: on BIOS hardware without the
        // uki, which only UEFI boots (the same profile serves both kinds of
        // hardware; asking for a uki by --format there is an error below).
        None => p
            .formats
            .clone()
            .unwrap_or_else(|| Format::ALL.to_vec())
            .into_iter()
            .filter(|f| *f != Format::Uki || hw.firmware == Firmware::Uefi)
            .collect(),
    };
    formats.sort();
    formats.dedup();
    if formats.is_empty() {
        return Err(l.error("formats", "no formats to build"));
    }
    let needs_disk = formats.iter().any(|f| f.is_disk());

    let digests = match &opts.digest_cache {
        Some(p) => hash::DigestCache::open(p),
        None => hash::DigestCache::none(),
    };
    let file_input = |key: &str, path: &str| -> Result<Input, ConfigError> {
        let pb = PathBuf::from(path);
        let md = std::fs::metadata(&pb).map_err(|e| l.error(key, format!("{path}: {e}")))?;
        let sha256 = if md.is_dir() { hash::tree_digest(&pb) } else { digests.file(&pb) }
            .map_err(|e| l.error(key, format!("{path}: {e}")))?;
        Ok(Input { name: file_name(&pb), path: pb, sha256 })
    };
    let deb_input = |key: &str, spec: &str| -> Result<Input, ConfigError> {
        let path = if spec.contains('/') {
            PathBuf::from(spec)
        } else {
            find_deb(&opts.deb_cache, spec, arch).map_err(|m| l.error(key, m))?
        };
        file_input(key, &path.to_string_lossy())
    };

    let base_spec =
        p.base.clone().ok_or_else(|| l.error("base", "missing [base]: set one of debs, tarball, dir, debian"))?;
    let chosen =
        [base_spec.debs.is_some(), base_spec.tarball.is_some(), base_spec.dir.is_some(), base_spec.debian.is_some()]
            .iter()
            .filter(|x| **x)
            .count();
    if chosen != 1 {
        return Err(l.error("base", "set exactly one of debs, tarball, dir, debian"));
    }
    let base = if let Some(debs) = &base_spec.debs {
        Base::Debs(
            debs.iter().enumerate().map(|(i, d)| deb_input(&format!("base.debs[{i}]"), d)).collect::<Result<_, _>>()?,
        )
    } else if let Some(t) = &base_spec.tarball {
        let ok = [".tar", ".tar.gz", ".tgz", ".tar.zst", ".tar.zstd"].iter().any(|s| t.ends_with(s));
        if !ok {
            return Err(l.error("base.tarball", "expected a .tar, .tar.gz or .tar.zst file"));
        }
        Base::Tarball(file_input("base.tarball", t)?)
    } else if let Some(d) = &base_spec.dir {
        if !Path::new(d).is_dir() {
            return Err(l.error("base.dir", format!("{d} is not a directory")));
        }
        Base::Dir(file_input("base.dir", d)?)
    } else {
        let base = debian_base(l, arch, &opts.cache)?.ok_or_else(|| l.error("base", "no base"))?;
        if base.lock.is_none() && !opts.unlocked {
            return Err(l.error(
                "base.debian",
                format!(
                    "no lock file {}: run `imgd lock {}` to pin the package set (and commit it), \
                     or build with --unlocked to take whatever the mirror has today",
                    base.lock_path.display(),
                    l.profile_path.display()
                ),
            ));
        }
        Base::Debian(Box::new(base))
    };

    let k = p.kernel.clone().ok_or_else(|| l.error("kernel", "missing [kernel]: set one of deb, from_base, image"))?;
    let kchosen = [k.deb.is_some(), k.from_base == Some(true), k.image.is_some()].iter().filter(|x| **x).count();
    if kchosen != 1 {
        return Err(l.error("kernel", "set exactly one of deb, from_base = true, image (+ modules)"));
    }
    if k.modules.is_some() && k.image.is_none() {
        return Err(l.error("kernel.modules", "modules is only used together with image"));
    }
    let kernel = if let Some(d) = &k.deb {
        Kernel::Deb(deb_input("kernel.deb", d)?)
    } else if let Some(img) = &k.image {
        let modules = k.modules.as_deref().map(|m| file_input("kernel.modules", m)).transpose()?;
        Kernel::Explicit { image: file_input("kernel.image", img)?, modules }
    } else {
        Kernel::FromBase
    };

    let mut modules: Vec<String> = Vec::new();
    for m in hw.modules.iter().chain(&k.extra_modules) {
        let m = m.replace('-', "_");
        if !modules.contains(&m) {
            modules.push(m);
        }
    }

    let mut files = Vec::new();
    for (i, f) in p.files.iter().enumerate() {
        let key = format!("files[{i}]");
        if !f.path.starts_with('/') || f.path.split('/').any(|c| c == "..") {
            return Err(l.error(&format!("{key}.path"), "path must be absolute and must not contain .."));
        }
        let kinds = [f.content.is_some(), f.source.is_some(), f.symlink.is_some(), f.dir == Some(true)];
        if kinds.iter().filter(|x| **x).count() != 1 {
            return Err(l.error(&key, "set exactly one of content, source, symlink, dir = true"));
        }
        let content = if let Some(c) = &f.content {
            FileContent::Inline(c.clone())
        } else if let Some(s) = &f.source {
            FileContent::Source(file_input(&format!("{key}.source"), s)?)
        } else if let Some(t) = &f.symlink {
            FileContent::Symlink(t.clone())
        } else {
            FileContent::Dir
        };
        files.push(FileEntry { path: f.path.clone(), content, mode: f.mode.map(|m| m.0), owner: f.owner.clone() });
    }
    check_line_fields(l)?;

    let d = p.disk.clone().unwrap_or_default();
    let size = d.size.map(|s| s.0);
    if let Some(s) = size {
        if !s.is_multiple_of(MIB) {
            return Err(l.error("disk.size", "disk size must be a whole number of MiB (VHD and AWS require it)"));
        }
    }
    let esp_size = d.esp_size.map_or(64 * MIB, |s| s.0);
    if esp_size < 33 * MIB || !esp_size.is_multiple_of(MIB) {
        return Err(l.error("disk.esp_size", "ESP must be a whole number of MiB and at least 33MiB (FAT32)"));
    }
    let disk = Disk {
        size,
        free: d.free.map_or(128 * MIB, |s| s.0),
        esp_size,
        root_label: d.root_label.unwrap_or_else(|| "root".into()),
    };

    let mut cmdline: Vec<String> = Vec::new();
    if let Some(c) = &hw.console {
        cmdline.push(format!("console={c}"));
    }
    cmdline.extend(hw.cmdline.iter().chain(&p.cmdline).map(|s| s.trim().to_string()).filter(|s| !s.is_empty()));

    // systemd-boot and its EFI stub: the hardware's path; else this
    // machine's (x86_64); else the systemd-boot-efi package of the target
    // architecture in the deb cache.
    let systemd_efi = |key: &str, hw_path: Option<&String>, default: &str, why: &str| -> Result<Input, ConfigError> {
        if hw_path.is_some() || arch == Arch::X86_64 {
            let path = hw_path.cloned().unwrap_or_else(|| default.into());
            let pb = PathBuf::from(&path);
            let sha256 = hash::sha256_file(&pb).map_err(|e| {
                l.hardware_error(key, format!("{path}: {e} (install systemd-boot-efi, see scripts/setup.sh)"))
            })?;
            Ok(Input { name: file_name(&pb), path: pb, sha256 })
        } else {
            let deb = find_deb(&opts.deb_cache, "systemd-boot-efi", arch)
                .map_err(|m| l.hardware_error(key, format!("{why}: {m}")))?;
            file_input("formats", &deb.to_string_lossy())
        }
    };
    let efi_loader = if needs_disk {
        Some(systemd_efi("efi_loader", hw.efi_loader.as_ref(), DEFAULT_EFI_LOADER, "disk images need systemd-boot")?)
    } else {
        None
    };
    // UEFI disks boot a unified kernel image too (systemd-boot's type #2
    // entry), so one signature covers kernel, initrd and command line there.
    let efi_stub = if formats.contains(&Format::Uki) {
        if hw.firmware != Firmware::Uefi {
            return Err(l.error("formats", format!("a uki boots by UEFI; hardware {} boots by BIOS", l.hardware_name)));
        }
        Some(systemd_efi("efi_stub", hw.efi_stub.as_ref(), DEFAULT_EFI_STUB, "a uki needs systemd's EFI stub")?)
    } else if needs_disk && hw.firmware == Firmware::Uefi {
        Some(systemd_efi("efi_stub", hw.efi_stub.as_ref(), DEFAULT_EFI_STUB, "UEFI disks boot a uki")?)
    } else {
        None
    };
    // Only where a uki is built: on BIOS hardware the same profile has none.
    let signing = match (&p.secure_boot, formats.contains(&Format::Uki)) {
        (Some(sb), true) => {
            let key = PathBuf::from(&sb.key);
            std::fs::metadata(&key).map_err(|e| l.error("secure_boot.key", format!("{}: {e}", sb.key)))?;
            let cert_sha256 = crate::hash::cert_fingerprint(Path::new(&sb.cert))
                .map_err(|e| l.error("secure_boot.cert", format!("{e:#}")))?;
            Some(Signing { key, cert: PathBuf::from(&sb.cert), cert_sha256 })
        }
        _ => None,
    };
    let initramfs_busybox = if needs_disk {
        let path = find_deb(&opts.deb_cache, "busybox-static", arch)
            .map_err(|m| l.error("formats", format!("disk images need busybox-static for their initramfs: {m}")))?;
        Some(file_input("formats", &path.to_string_lossy())?)
    } else {
        None
    };

    let grub_bios = if needs_disk && hw.firmware == Firmware::Bios {
        if arch != Arch::X86_64 {
            return Err(l.hardware_error("firmware", "bios firmware is only for x86_64"));
        }
        let dir = PathBuf::from(GRUB_I386_PC);
        if !dir.join("boot.img").is_file() {
            return Err(l.hardware_error(
                "firmware",
                format!("BIOS disks need GRUB's {GRUB_I386_PC} (apt-get install grub-pc-bin)"),
            ));
        }
        let sha256 =
            hash::tree_digest(&dir).map_err(|e| l.hardware_error("firmware", format!("{GRUB_I386_PC}: {e}")))?;
        Some(Input { name: "grub-i386-pc".into(), path: dir, sha256 })
    } else {
        None
    };
    if let Err(e) = digests.save() {
        tracing::warn!("cannot save the digest cache: {e}");
    }
    Ok(Recipe {
        origins: l.origins.clone(),
        name,
        hardware: l.hardware_name.clone(),
        arch,
        firmware: hw.firmware,
        hostname: p.hostname.clone(),
        formats,
        cmdline: cmdline.join(" "),
        init: p.init.clone().unwrap_or_else(|| "/sbin/init".into()),
        ready_marker: p.ready_marker.clone(),
        epoch: p.source_date_epoch.or(opts.env_epoch).unwrap_or(DEFAULT_EPOCH),
        base,
        kernel,
        modules,
        extra_modules: k.extra_modules.iter().map(|m| m.replace('-', "_")).collect(),
        files,
        users: p.users.clone(),
        services: p.services.clone().unwrap_or_default().enable,
        disk,
        ena: hw.ena,
        sriov: hw.sriov,
        efi_loader,
        efi_stub,
        initramfs_busybox,
        grub_bios,
        signing,
        cache: opts.cache.clone(),
    })
}

/// Strings that land in line-oriented files (passwd, group, shadow,
/// authorized_keys, hostname, loader entries, iPXE scripts) and on the kernel
/// command line: no control characters anywhere (a newline would start a
/// line of its own, e.g. a uid-0 user in /etc/passwd), no `:` where it
/// separates fields, and names in the shapes their files allow.
fn check_line_fields(l: &Loaded) -> Result<(), ConfigError> {
    let p = &l.profile;
    let no_control = |key: &str, v: &str| {
        if v.chars().any(char::is_control) {
            Err(l.error(key, format!("`{}` has control characters", v.escape_debug())))
        } else {
            Ok(())
        }
    };
    let name_like = |key: &str, v: &str, what: &str| {
        let ok = !v.is_empty()
            && v.len() <= 32
            && v.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
        if ok {
            Ok(())
        } else {
            Err(l.error(key, format!("invalid {what} `{}`: lowercase letters, digits, - and _", v.escape_debug())))
        }
    };
    let field = |key: &str, v: &str| {
        no_control(key, v)?;
        if v.contains(':') {
            return Err(l.error(key, format!("`{}`: `:` separates fields in /etc/passwd", v.escape_debug())));
        }
        Ok(())
    };
    for (i, u) in p.users.iter().enumerate() {
        name_like(&format!("users[{i}].name"), &u.name, "user name")?;
        for (j, g) in u.groups.iter().enumerate() {
            name_like(&format!("users[{i}].groups[{j}]"), g, "group name")?;
        }
        if let Some(s) = &u.shell {
            field(&format!("users[{i}].shell"), s)?;
        }
        if let Some(h) = &u.home {
            field(&format!("users[{i}].home"), h)?;
            if !h.starts_with('/') || h.split('/').any(|c| c == "..") {
                return Err(l.error(&format!("users[{i}].home"), "home must be absolute and must not contain .."));
            }
        }
        for (j, k) in u.ssh_authorized_keys.iter().enumerate() {
            no_control(&format!("users[{i}].ssh_authorized_keys[{j}]"), k)?;
        }
    }
    if let Some(h) = &p.hostname {
        let ok = !h.is_empty()
            && h.len() <= 253
            && h.split('.').all(|part| {
                !part.is_empty() && part.len() <= 63 && part.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            });
        if !ok {
            return Err(l.error("hostname", format!("`{}` is not a host name", h.escape_debug())));
        }
    }
    for (key, v) in [("cmdline", &p.cmdline), ("ready_marker", &p.ready_marker), ("description", &p.description)] {
        if let Some(v) = v {
            no_control(key, v)?;
        }
    }
    if let Some(init) = &p.init {
        if !init.starts_with('/') || init.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(l.error("init", format!("`{}`: an absolute path without spaces", init.escape_debug())));
        }
    }
    for (i, f) in p.files.iter().enumerate() {
        no_control(&format!("files[{i}].path"), &f.path)?;
        if let Some(t) = &f.symlink {
            no_control(&format!("files[{i}].symlink"), t)?;
        }
        if let Some(o) = &f.owner {
            no_control(&format!("files[{i}].owner"), o)?;
        }
    }
    for (i, s) in p.services.iter().flat_map(|s| s.enable.iter()).enumerate() {
        let ok = !s.is_empty()
            && s.len() <= 256
            && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'@' | b'.' | b'_' | b'-' | b':' | b'\\'));
        if !ok {
            return Err(l.error(
                &format!("services.enable[{i}]"),
                format!("`{}` is not a systemd unit name", s.escape_debug()),
            ));
        }
    }
    if let Some(label) = p.disk.as_ref().and_then(|d| d.root_label.as_ref()) {
        if label.is_empty() || label.len() > 16 || !label.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(l.error("disk.root_label", "an ext4 label is 1 to 16 printable characters"));
        }
    }
    for (key, v) in [("cmdline", &l.hardware.cmdline), ("console", &l.hardware.console)] {
        if let Some(v) = v.as_ref().filter(|v| v.chars().any(char::is_control)) {
            return Err(l.hardware_error(key, format!("`{}` has control characters", v.escape_debug())));
        }
    }
    Ok(())
}

fn file_name(p: &Path) -> String {
    p.file_name().map_or_else(String::new, |s| s.to_string_lossy().into_owned())
}

/// Finds `<pattern>_<version>_<arch>.deb` (or `_all.deb`) in the deb cache.
/// `pattern` is a package name, globs allowed. With several versions of one
/// package, the highest (by `dpkg --compare-versions`) wins.
pub fn find_deb(cache: &Path, pattern: &str, arch: Arch) -> Result<PathBuf, String> {
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
    pub fn hardware_error(&self, key: &str, message: impl Into<String>) -> ConfigError {
        self.origins.hardware_error(key, message)
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
