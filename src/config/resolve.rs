//! Resolution: a layered profile plus its hardware becomes a [`Recipe`]. Each
//! part of the profile is checked by a function of its own, and every input
//! file is replaced by its content digest through one [`Inputs`].

use super::error::ConfigError;
use super::hardware::{DEFAULT_EFI_LOADER, DEFAULT_EFI_STUB};
use super::load::Loaded;
use super::recipe::{
    debian_base, file_name, find_deb, Base, Disk, FileContent, FileEntry, Input, Kernel, Recipe, Signing,
    DEFAULT_EPOCH, GRUB_I386_PC,
};
use super::types::MIB;
use crate::hash;
use crate::model::{Arch, Firmware, Format};
use std::path::{Path, PathBuf};

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
    let name = profile_name(l)?;
    let formats = formats(l, opts)?;
    let needs_disk = formats.iter().any(|f| f.is_disk());
    let inputs = Inputs::new(l, opts);
    let base = base(l, &inputs)?;
    let kernel = kernel(l, &inputs)?;
    let files = files(l, &inputs)?;
    check_line_fields(l)?;
    let disk = disk(l)?;
    let profile_init = p.init.clone().unwrap_or_else(|| "/sbin/init".into());
    let (scratch, scratch_tools) = scratch(l, &inputs, &base, &profile_init)?;
    let efi_loader = if needs_disk {
        Some(inputs.systemd_efi(
            "efi_loader",
            hw.efi_loader.as_ref(),
            DEFAULT_EFI_LOADER,
            "disk images need systemd-boot",
        )?)
    } else {
        None
    };
    let efi_stub = efi_stub(l, &inputs, &formats)?;
    let signing = signing(l, &formats)?;
    let initramfs_busybox = if needs_disk {
        let path = find_deb(&opts.deb_cache, "busybox-static", hw.arch)
            .map_err(|m| l.error("formats", format!("disk images need busybox-static for their initramfs: {m}")))?;
        Some(inputs.file("formats", &path.to_string_lossy())?)
    } else {
        None
    };
    let grub_bios = if needs_disk && hw.firmware == Firmware::Bios { Some(grub_bios(l)?) } else { None };
    inputs.save();
    let extra_modules = p.kernel.as_ref().map(|k| k.extra_modules.as_slice()).unwrap_or_default();
    let scratch_modules = scratch.as_ref().map(|s| s.modules()).unwrap_or_default();
    Ok(Recipe {
        origins: l.origins.clone(),
        name,
        hardware: l.hardware_name.clone(),
        arch: hw.arch,
        firmware: hw.firmware,
        hostname: p.hostname.clone(),
        formats,
        cmdline: cmdline(l),
        init: if scratch.is_some() { super::scratch::STAGE.to_string() } else { profile_init },
        ready_marker: p.ready_marker.clone(),
        epoch: p.source_date_epoch.or(opts.env_epoch).unwrap_or(DEFAULT_EPOCH),
        base,
        kernel,
        modules: modules(hw.modules.iter().chain(extra_modules).chain(&scratch_modules)),
        extra_modules: modules(extra_modules.iter()),
        files,
        users: p.users.clone(),
        services: p.services.clone().unwrap_or_default().enable,
        disk,
        scratch,
        scratch_tools,
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

/// Input files named by content: the profile's own, .deb files in the deb
/// cache, and systemd's EFI binaries. Digests of large files are remembered
/// between runs (`opts.digest_cache`).
struct Inputs<'a> {
    l: &'a Loaded,
    opts: &'a ResolveOptions,
    digests: hash::DigestCache,
}

impl<'a> Inputs<'a> {
    fn new(l: &'a Loaded, opts: &'a ResolveOptions) -> Self {
        let digests = match &opts.digest_cache {
            Some(p) => hash::DigestCache::open(p),
            None => hash::DigestCache::none(),
        };
        Inputs { l, opts, digests }
    }

    /// A file or a tree at `path`, set by profile `key`.
    fn file(&self, key: &str, path: &str) -> Result<Input, ConfigError> {
        let pb = PathBuf::from(path);
        let md = std::fs::metadata(&pb).map_err(|e| self.l.error(key, format!("{path}: {e}")))?;
        let sha256 = if md.is_dir() { hash::tree_digest(&pb) } else { self.digests.file(&pb) }
            .map_err(|e| self.l.error(key, format!("{path}: {e}")))?;
        Ok(Input { name: file_name(&pb), path: pb, sha256 })
    }

    /// A .deb by path, or by package name (globs allowed) in the deb cache.
    fn deb(&self, key: &str, spec: &str) -> Result<Input, ConfigError> {
        let path = if spec.contains('/') {
            PathBuf::from(spec)
        } else {
            find_deb(&self.opts.deb_cache, spec, self.l.hardware.arch).map_err(|m| self.l.error(key, m))?
        };
        self.file(key, &path.to_string_lossy())
    }

    /// systemd-boot or its EFI stub: the hardware's path; else this
    /// machine's (x86_64); else the systemd-boot-efi package of the target
    /// architecture in the deb cache.
    fn systemd_efi(&self, key: &str, hw_path: Option<&String>, default: &str, why: &str) -> Result<Input, ConfigError> {
        let l = self.l;
        let arch = l.hardware.arch;
        if hw_path.is_some() || arch == Arch::X86_64 {
            let path = hw_path.cloned().unwrap_or_else(|| default.into());
            let pb = PathBuf::from(&path);
            let sha256 = hash::sha256_file(&pb).map_err(|e| {
                l.hardware_error(key, format!("{path}: {e} (install systemd-boot-efi, see scripts/setup.sh)"))
            })?;
            Ok(Input { name: file_name(&pb), path: pb, sha256 })
        } else {
            let deb = find_deb(&self.opts.deb_cache, "systemd-boot-efi", arch)
                .map_err(|m| l.hardware_error(key, format!("{why}: {m}")))?;
            self.file("formats", &deb.to_string_lossy())
        }
    }

    /// Keeps the digests for the next run; losing them costs only time.
    fn save(&self) {
        if let Err(e) = self.digests.save() {
            tracing::warn!("cannot save the digest cache: {e}");
        }
    }
}

/// The profile's `name`, else its file name.
fn profile_name(l: &Loaded) -> Result<String, ConfigError> {
    let name =
        l.profile.name.clone().unwrap_or_else(|| {
            l.profile_path.file_stem().map_or("profile".into(), |s| s.to_string_lossy().into_owned())
        });
    if !crate::model::valid_name(&name) {
        return Err(l.error("name", format!("profile name `{name}` must be letters, digits, - or _")));
    }
    Ok(name)
}

/// `--format`, else the profile's formats, else every one: on BIOS hardware
/// without the uki, which only UEFI boots (the same profile serves both
/// kinds of hardware; asking for a uki by --format there is an error later).
fn formats(l: &Loaded, opts: &ResolveOptions) -> Result<Vec<Format>, ConfigError> {
    let mut formats = match &opts.formats {
        Some(f) => f.clone(),
        None => l
            .profile
            .formats
            .clone()
            .unwrap_or_else(|| Format::ALL.to_vec())
            .into_iter()
            .filter(|f| *f != Format::Uki || l.hardware.firmware == Firmware::Uefi)
            .collect(),
    };
    formats.sort();
    formats.dedup();
    if formats.is_empty() {
        return Err(l.error("formats", "no formats to build"));
    }
    Ok(formats)
}

/// `[base]`: exactly one of debs, tarball, dir, debian (locked, unless
/// `--unlocked`).
fn base(l: &Loaded, inputs: &Inputs) -> Result<Base, ConfigError> {
    let spec = l
        .profile
        .base
        .as_ref()
        .ok_or_else(|| l.error("base", "missing [base]: set one of debs, tarball, dir, debian"))?;
    let chosen = [spec.debs.is_some(), spec.tarball.is_some(), spec.dir.is_some(), spec.debian.is_some()];
    if chosen.iter().filter(|x| **x).count() != 1 {
        return Err(l.error("base", "set exactly one of debs, tarball, dir, debian"));
    }
    if let Some(debs) = &spec.debs {
        let debs = debs.iter().enumerate().map(|(i, d)| inputs.deb(&format!("base.debs[{i}]"), d));
        return Ok(Base::Debs(debs.collect::<Result<_, _>>()?));
    }
    if let Some(t) = &spec.tarball {
        let ok = [".tar", ".tar.gz", ".tgz", ".tar.zst", ".tar.zstd"].iter().any(|s| t.ends_with(s));
        if !ok {
            return Err(l.error("base.tarball", "expected a .tar, .tar.gz or .tar.zst file"));
        }
        return Ok(Base::Tarball(inputs.file("base.tarball", t)?));
    }
    if let Some(d) = &spec.dir {
        if !Path::new(d).is_dir() {
            return Err(l.error("base.dir", format!("{d} is not a directory")));
        }
        return Ok(Base::Dir(inputs.file("base.dir", d)?));
    }
    let opts = inputs.opts;
    let base = debian_base(l, l.hardware.arch, &opts.cache)?.ok_or_else(|| l.error("base", "no base"))?;
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
    Ok(Base::Debian(Box::new(base)))
}

/// `[scratch]`, and the packages its programs come from when the base is
/// plain `.deb`s (other bases must hold them: checked at assembly).
fn scratch(
    l: &Loaded,
    inputs: &Inputs,
    base: &Base,
    init: &str,
) -> Result<(Option<super::scratch::Scratch>, Vec<Input>), ConfigError> {
    let Some(s) = super::scratch_check::check(l, init)? else { return Ok((None, Vec::new())) };
    let mut tools = Vec::new();
    if matches!(base, Base::Debs(_)) {
        let why = format!("[scratch] ({} on {}) needs", s.layout.as_str(), s.filesystem.as_str());
        for p in s.packages() {
            let deb = inputs.deb("scratch", p).map_err(|e| l.error("scratch", format!("{why} {p}: {}", e.message)))?;
            tools.push(deb);
        }
    }
    Ok((Some(s), tools))
}

/// `[kernel]`: exactly one of deb, from_base, image (+ modules).
fn kernel(l: &Loaded, inputs: &Inputs) -> Result<Kernel, ConfigError> {
    let k = l
        .profile
        .kernel
        .as_ref()
        .ok_or_else(|| l.error("kernel", "missing [kernel]: set one of deb, from_base, image"))?;
    let chosen = [k.deb.is_some(), k.from_base == Some(true), k.image.is_some()];
    if chosen.iter().filter(|x| **x).count() != 1 {
        return Err(l.error("kernel", "set exactly one of deb, from_base = true, image (+ modules)"));
    }
    if k.modules.is_some() && k.image.is_none() {
        return Err(l.error("kernel.modules", "modules is only used together with image"));
    }
    Ok(if let Some(d) = &k.deb {
        Kernel::Deb(inputs.deb("kernel.deb", d)?)
    } else if let Some(img) = &k.image {
        let modules = k.modules.as_deref().map(|m| inputs.file("kernel.modules", m)).transpose()?;
        Kernel::Explicit { image: inputs.file("kernel.image", img)?, modules }
    } else {
        Kernel::FromBase
    })
}

/// Kernel module names as modprobe keeps them (`_` for `-`), first mention wins.
fn modules<'m>(names: impl Iterator<Item = &'m String>) -> Vec<String> {
    let mut modules: Vec<String> = Vec::new();
    for m in names {
        let m = m.replace('-', "_");
        if !modules.contains(&m) {
            modules.push(m);
        }
    }
    modules
}

/// `[[files]]`: absolute paths, each exactly one kind.
fn files(l: &Loaded, inputs: &Inputs) -> Result<Vec<FileEntry>, ConfigError> {
    let mut files = Vec::new();
    for (i, f) in l.profile.files.iter().enumerate() {
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
            FileContent::Source(inputs.file(&format!("{key}.source"), s)?)
        } else if let Some(t) = &f.symlink {
            FileContent::Symlink(t.clone())
        } else {
            FileContent::Dir
        };
        files.push(FileEntry { path: f.path.clone(), content, mode: f.mode.map(|m| m.0), owner: f.owner.clone() });
    }
    Ok(files)
}

/// `[disk]`: sizes in whole MiB (VHD and AWS require it), an ESP FAT32 can hold.
fn disk(l: &Loaded) -> Result<Disk, ConfigError> {
    let d = l.profile.disk.clone().unwrap_or_default();
    let size = d.size.map(|s| s.0);
    if size.is_some_and(|s| !s.is_multiple_of(MIB)) {
        return Err(l.error("disk.size", "disk size must be a whole number of MiB (VHD and AWS require it)"));
    }
    let esp_size = d.esp_size.map_or(64 * MIB, |s| s.0);
    if esp_size < 33 * MIB || !esp_size.is_multiple_of(MIB) {
        return Err(l.error("disk.esp_size", "ESP must be a whole number of MiB and at least 33MiB (FAT32)"));
    }
    Ok(Disk {
        size,
        free: d.free.map_or(128 * MIB, |s| s.0),
        esp_size,
        root_label: d.root_label.unwrap_or_else(|| "root".into()),
    })
}

/// The full kernel command line: console, hardware's, profile's.
fn cmdline(l: &Loaded) -> String {
    let hw = &l.hardware;
    let mut cmdline: Vec<String> = Vec::new();
    if let Some(c) = &hw.console {
        cmdline.push(format!("console={c}"));
    }
    cmdline.extend(hw.cmdline.iter().chain(&l.profile.cmdline).map(|s| s.trim().to_string()).filter(|s| !s.is_empty()));
    cmdline.join(" ")
}

/// systemd's EFI stub, for a uki — and for UEFI disks, which boot a unified
/// kernel image too (systemd-boot's type #2 entry), so one signature covers
/// kernel, initrd and command line there.
fn efi_stub(l: &Loaded, inputs: &Inputs, formats: &[Format]) -> Result<Option<Input>, ConfigError> {
    let hw = &l.hardware;
    let why = if formats.contains(&Format::Uki) {
        if hw.firmware != Firmware::Uefi {
            return Err(l.error("formats", format!("a uki boots by UEFI; hardware {} boots by BIOS", l.hardware_name)));
        }
        "a uki needs systemd's EFI stub"
    } else if formats.iter().any(|f| f.is_disk()) && hw.firmware == Firmware::Uefi {
        "UEFI disks boot a uki"
    } else {
        return Ok(None);
    };
    inputs.systemd_efi("efi_stub", hw.efi_stub.as_ref(), DEFAULT_EFI_STUB, why).map(Some)
}

/// `[secure_boot]`, only where a uki is built: on BIOS hardware the same
/// profile has none.
fn signing(l: &Loaded, formats: &[Format]) -> Result<Option<Signing>, ConfigError> {
    let Some(sb) = l.profile.secure_boot.as_ref().filter(|_| formats.contains(&Format::Uki)) else { return Ok(None) };
    let key = PathBuf::from(&sb.key);
    std::fs::metadata(&key).map_err(|e| l.error("secure_boot.key", format!("{}: {e}", sb.key)))?;
    let cert_sha256 = hash::cert_fingerprint(Path::new(&sb.cert))
        .map_err(|e| l.error("secure_boot.cert", crate::model::Chain(&e).to_string()))?;
    Ok(Some(Signing { key, cert: PathBuf::from(&sb.cert), cert_sha256 }))
}

/// GRUB's i386-pc modules, for BIOS disks (x86_64 only).
fn grub_bios(l: &Loaded) -> Result<Input, ConfigError> {
    if l.hardware.arch != Arch::X86_64 {
        return Err(l.hardware_error("firmware", "bios firmware is only for x86_64"));
    }
    let dir = PathBuf::from(GRUB_I386_PC);
    if !dir.join("boot.img").is_file() {
        return Err(l.hardware_error(
            "firmware",
            format!("BIOS disks need GRUB's {GRUB_I386_PC} (apt-get install grub-pc-bin)"),
        ));
    }
    let sha256 = hash::tree_digest(&dir).map_err(|e| l.hardware_error("firmware", format!("{GRUB_I386_PC}: {e}")))?;
    Ok(Input { name: "grub-i386-pc".into(), path: dir, sha256 })
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
