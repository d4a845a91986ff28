//! The kernel and its modules: where they come from (a .deb, explicit paths, or
//! the base's own /boot and /lib/modules), which modules a machine needs (the
//! hardware's list closed over modules.dep), and installing them into a tree.

use super::error::{Result, RootfsError};
use super::tree::Tree;
use crate::config::recipe::{Kernel, Recipe};
use crate::fsutil::IoAt;
use crate::shelf::Shelf;
use crate::tools::run;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// A module a profile or hardware file names that the kernel does not have.
#[derive(Debug, thiserror::Error)]
#[error("module `{module}` is not in kernel {kernel} (neither a module nor built in)")]
pub(crate) struct MissingModule {
    pub module: String,
    pub kernel: String,
}

/// A kernel ready to use: the image, and a modules directory with modules.dep.
pub(crate) struct KernelParts {
    pub version: String,
    pub image: PathBuf,
    /// `.../lib/modules/<version>`, with modules.dep present.
    pub modules_dir: PathBuf,
    /// Module name (`virtio_blk`) -> path relative to `modules_dir`.
    modules: BTreeMap<String, String>,
    /// Relative module path -> its dependencies' relative paths.
    deps: BTreeMap<String, Vec<String>>,
    builtin: BTreeSet<String>,
}

/// `kernel/fs/ext4/ext4.ko.xz` -> `ext4`; dashes count as underscores.
pub(crate) fn module_name(rel: &str) -> String {
    let file = rel.rsplit('/').next().unwrap_or(rel);
    let stem = file.split(".ko").next().unwrap_or(file);
    stem.replace('-', "_")
}

impl KernelParts {
    /// Gets the kernel named by the recipe. `work` is scratch space; `base` is
    /// the root tree (for `from_base`).
    pub(crate) fn obtain(recipe: &Recipe, base: &Tree, work: &Path) -> Result<KernelParts> {
        match &recipe.kernel {
            Kernel::Deb(deb) => {
                let shelf = shelf(&recipe.cache);
                let dir = match shelf.lock(&deb.sha256) {
                    Ok(locked) => unpacked_deb(deb, &shelf, locked)?,
                    Err(e) => {
                        // A cache folder that cannot be written (a read-only
                        // home) costs time, not the build.
                        tracing::warn!(
                            "cannot keep the unpacked kernel in imgd's cache ({}); unpacking it here",
                            crate::model::Chain(&e)
                        );
                        let dir = work.join("kernel-deb");
                        unpack_deb(&deb.path, &dir).map_err(unpacking_kernel(&deb.path))?;
                        dir
                    }
                };
                let (version, image, modules_dir) = deb_parts(&dir, &deb.name)?;
                Self::with_modules(version, image, modules_dir, work)
            }
            Kernel::Explicit { image, modules } => {
                let Some(modules) = modules else {
                    let parts = KernelParts {
                        version: String::new(),
                        image: image.path.clone(),
                        modules_dir: PathBuf::new(),
                        modules: BTreeMap::new(),
                        deps: BTreeMap::new(),
                        builtin: BTreeSet::new(),
                    };
                    return Ok(parts);
                };
                let version = modules.path.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
                Self::with_modules(version, image.path.clone(), modules.path.clone(), work)
            }
            Kernel::FromBase => {
                let boot = base.resolve("/boot", true)?;
                let (version, _) = find_image(&base.staged(&boot))
                    .map_err(|e| RootfsError::Kernel(format!("kernel.from_base: the base's /boot: {e}")))?;
                let image = base.staged(&base.resolve(&format!("/boot/vmlinuz-{version}"), true)?);
                let mods = base.staged(&base.resolve(&format!("/lib/modules/{version}"), true)?);
                if !mods.is_dir() {
                    return Err(RootfsError::Kernel(format!(
                        "kernel.from_base: the base has /boot/vmlinuz-{version} but no /lib/modules/{version}"
                    )));
                }
                Self::with_modules(version, image, mods, work)
            }
        }
    }

    /// Reads modules.dep, running depmod on a private copy when it is missing
    /// (Debian's kernel packages ship none).
    fn with_modules(version: String, image: PathBuf, modules_dir: PathBuf, work: &Path) -> Result<KernelParts> {
        let mut dir = modules_dir;
        if !dir.join("modules.dep").is_file() {
            let inside_work = dir.starts_with(work);
            if !inside_work {
                let copy = work.join("kernel-modules/lib/modules").join(&version);
                std::fs::create_dir_all(work.join("kernel-modules/lib/modules")).at("creating", work)?;
                run(std::process::Command::new("cp").arg("-a").arg(&dir).arg(&copy))?;
                dir = copy;
            }
            depmod(&dir, &version)?;
        }
        let mut parts = KernelParts {
            version,
            image,
            modules_dir: dir.clone(),
            modules: BTreeMap::new(),
            deps: BTreeMap::new(),
            builtin: BTreeSet::new(),
        };
        let dep = std::fs::read_to_string(dir.join("modules.dep")).at("reading", dir.join("modules.dep"))?;
        for line in dep.lines() {
            let Some((m, rest)) = line.split_once(':') else { continue };
            parts.modules.insert(module_name(m), m.to_string());
            parts.deps.insert(m.to_string(), rest.split_whitespace().map(str::to_string).collect());
        }
        if let Ok(b) = std::fs::read_to_string(dir.join("modules.builtin")) {
            parts.builtin = b.lines().map(module_name).collect();
        }
        Ok(parts)
    }

    pub(crate) fn has_modules(&self) -> bool {
        !self.modules.is_empty()
    }

    /// The modules to load for `names`, dependencies first, as paths relative
    /// to the modules directory. Built-in modules need nothing.
    pub(crate) fn closure(&self, names: &[String]) -> std::result::Result<Vec<String>, MissingModule> {
        let mut order = Vec::new();
        let mut seen = BTreeSet::new();
        for name in names {
            let name = name.replace('-', "_");
            if let Some(rel) = self.modules.get(&name) {
                self.visit(rel, &mut seen, &mut order);
            } else if !self.builtin.contains(&name) {
                let kernel = if self.version.is_empty() { "image".into() } else { self.version.clone() };
                return Err(MissingModule { module: name, kernel });
            }
        }
        Ok(order)
    }

    fn visit(&self, rel: &str, seen: &mut BTreeSet<String>, order: &mut Vec<String>) {
        if !seen.insert(rel.to_string()) {
            return;
        }
        // modules.dep lists every transitive dependency, but visiting them keeps
        // the order right for hand-written files too.
        for d in self.deps.get(rel).into_iter().flatten() {
            self.visit(d, seen, order);
        }
        order.push(rel.to_string());
    }

    /// Copies `modules` (relative paths) and the kernel's module index inputs
    /// into `tree` under /lib/modules/<version>, then runs depmod there so the
    /// image's modprobe finds them.
    pub(crate) fn install(&self, tree: &mut Tree, modules: &[String]) -> Result<()> {
        if modules.is_empty() {
            return Ok(());
        }
        let dest = format!("/lib/modules/{}", self.version);
        for m in modules {
            tree.add_copy(&format!("{dest}/{m}"), &self.modules_dir.join(m), 0o644)?;
        }
        for f in ["modules.order", "modules.builtin", "modules.builtin.modinfo"] {
            let src = self.modules_dir.join(f);
            if src.is_file() {
                tree.add_copy(&format!("{dest}/{f}"), &src, 0o644)?;
            }
        }
        let rel = tree.resolve(&dest, true)?;
        depmod(&tree.staged(&rel), &self.version)?;
        let mut generated: Vec<String> = std::fs::read_dir(tree.staged(&rel))
            .at("reading", tree.staged(&rel))?
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.starts_with("modules."))
            .collect();
        generated.sort();
        for g in generated {
            tree.adopt(&format!("{rel}/{g}"))?;
        }
        Ok(())
    }
}

/// Unpacks a kernel package with its permissions.
fn unpack_deb(deb: &Path, dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    crate::tools::read_deb_data(deb, |data| {
        let mut archive = tar::Archive::new(data);
        archive.set_preserve_permissions(true);
        archive.unpack(dir)
    })
}

/// The kernel's version, image and modules folder in an unpacked package.
fn deb_parts(dir: &Path, name: &str) -> Result<(String, PathBuf, PathBuf)> {
    let (version, image) =
        find_image(&dir.join("boot")).map_err(|e| RootfsError::Kernel(format!("kernel package {name}: {e}")))?;
    let modules_dir = ["lib/modules", "usr/lib/modules"]
        .iter()
        .map(|m| dir.join(m).join(&version))
        .find(|p| p.is_dir())
        .ok_or_else(|| RootfsError::Kernel(format!("kernel package {name} has no lib/modules/{version}")))?;
    Ok((version, image, modules_dir))
}

/// The kernel package unpacked, with modules.dep, in imgd's cache under its
/// SHA-256: a Debian kernel .deb is ~70 MB of xz holding ~400 MB of modules,
/// and unpacking it was most of a small image's build (5 of 6 s for hello,
/// half of it the kernel writing 400 MB). Builds only read from it: modules
/// and the image are copied into the tree and the store.
/// `_locked`: the shelf's lock of this package, held while it is made.
fn unpacked_deb(deb: &crate::config::recipe::Input, shelf: &Shelf, _locked: std::fs::File) -> Result<PathBuf> {
    let key = &deb.sha256;
    let done = shelf.dir().join(key);
    let used = done.join(".used");
    if !used.is_file() {
        let work = shelf.workspace(&format!(".unpack-{}-", &key[..16]))?;
        let dir = work.path().join("deb");
        unpack_deb(&deb.path, &dir).map_err(unpacking_kernel(&deb.path))?;
        let (version, _, modules_dir) = deb_parts(&dir, &deb.name)?;
        // Debian's kernel packages ship no modules.dep.
        if !modules_dir.join("modules.dep").is_file() {
            depmod(&modules_dir, &version)?;
        }
        // `.used` last: it is what says the folder is whole.
        std::fs::write(dir.join(".used"), "").at("writing", dir.join(".used"))?;
        std::fs::File::open(&dir).and_then(|f| Ok(rustix::fs::syncfs(f)?)).at("syncing", &dir)?;
        // What a removal that was killed half way left (we hold the lock).
        if done.exists() {
            std::fs::remove_dir_all(&done).at("removing", &done)?;
        }
        std::fs::rename(&dir, &done).at("keeping", &done)?;
        drop(_locked);
        remove_unused(shelf, crate::shelf::UNUSED, key);
    }
    crate::shelf::touch(&used);
    Ok(done)
}

/// Removes the unpacked kernels other than `keep` that no build used for `unused`.
pub fn remove_unused(shelf: &Shelf, unused: std::time::Duration, keep: &str) -> Vec<crate::shelf::Removed> {
    let marks = |key: &str| vec![shelf.dir().join(key).join(".used")];
    let kind = crate::shelf::Kind { suffix: "", what: "kernel", marks: &marks, also: &|_| vec![] };
    shelf.remove_unused(&kind, unused, keep)
}

/// Where a cache folder keeps its unpacked kernels.
pub fn shelf(cache: &Path) -> Shelf {
    Shelf::new(cache.join("kernels"))
}

/// Runs depmod for a modules directory `<base>/lib/modules/<version>`.
fn depmod(modules_dir: &Path, version: &str) -> Result<()> {
    let s = modules_dir.to_string_lossy();
    let suffix = format!("/lib/modules/{version}");
    let base = s.strip_suffix(&suffix).ok_or_else(|| RootfsError::Kernel(format!("{s} does not end in {suffix}")))?;
    run(std::process::Command::new("depmod").arg("-b").arg(base).arg(version))?;
    Ok(())
}

fn unpacking_kernel(deb: &Path) -> impl FnOnce(std::io::Error) -> RootfsError {
    super::error::unpacking("unpacking kernel", &deb.display())
}

/// Finds `vmlinuz-<version>` (or `vmlinux-`/`Image-`) in a /boot directory.
fn find_image(boot: &Path) -> Result<(String, PathBuf)> {
    let mut found: Vec<(String, PathBuf)> = std::fs::read_dir(boot)
        .at("reading", boot)?
        .filter_map(|e| {
            let e = e.ok()?;
            let name = e.file_name().into_string().ok()?;
            let v = ["vmlinuz-", "vmlinux-", "Image-"].iter().find_map(|p| name.strip_prefix(p))?;
            Some((v.to_string(), e.path()))
        })
        .collect();
    found.sort();
    found.pop().ok_or_else(|| RootfsError::NoKernelImage(boot.to_path_buf()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_names_normalize() {
        assert_eq!(module_name("kernel/fs/ext4/ext4.ko"), "ext4");
        assert_eq!(module_name("kernel/crypto/crc32c-intel.ko.xz"), "crc32c_intel");
    }

    #[test]
    fn closure_orders_dependencies_first_and_rejects_unknown() {
        let d = tempfile::tempdir().unwrap();
        let m = d.path().join("lib/modules/1.0");
        std::fs::create_dir_all(&m).unwrap();
        std::fs::write(m.join("modules.dep"), "k/ext4.ko: k/jbd2.ko k/mbcache.ko\nk/jbd2.ko:\nk/mbcache.ko:\n")
            .unwrap();
        std::fs::write(m.join("modules.builtin"), "k/virtio.ko\n").unwrap();
        let p = KernelParts::with_modules("1.0".into(), PathBuf::new(), m, d.path()).unwrap();
        assert_eq!(p.closure(&["ext4".into(), "virtio".into()]).unwrap(), ["k/jbd2.ko", "k/mbcache.ko", "k/ext4.ko"]);
        let e = p.closure(&["ena".into()]).unwrap_err().to_string();
        assert!(e.contains("`ena` is not in kernel 1.0"), "{e}");
    }
}
