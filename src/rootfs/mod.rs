//! Assembling the root filesystem of a build: base, kernel modules, then the
//! profile's customizations, in that order (the profile has the last word).

pub mod customize;
pub mod debian_base;
mod error;
pub mod kernel;
pub mod node_stage;
pub mod scratch;
pub mod tree;

use crate::config::recipe::{Base, Kernel, Recipe};
pub use error::RootfsError;
use error::{unpacking, Result};
use kernel::KernelParts;
use std::path::Path;
use tree::Tree;

pub(crate) struct Rootfs {
    pub tree: Tree,
    pub kernel: KernelParts,
    /// The hardware's modules and their dependencies, in load order, relative
    /// to the kernel's modules directory.
    pub boot_modules: Vec<String>,
}

/// `remote`: the shared build cache, which also holds pooled Debian packages.
pub(crate) fn assemble(
    recipe: &Recipe,
    work: &Path,
    remote: Option<&dyn crate::store::remote::Remote>,
) -> Result<Rootfs> {
    let mut tree = Tree::new(&work.join("root"))?;
    match &recipe.base {
        Base::Debs(debs) => {
            for d in debs {
                tree.extract_deb(&d.path).map_err(unpacking("unpacking", &d.name))?;
            }
        }
        Base::Tarball(t) => tree.extract_tarball(&t.path).map_err(unpacking("unpacking", &t.name))?,
        Base::Dir(d) => tree.import_dir(&d.path, "/").map_err(unpacking("copying", &d.path.display()))?,
        Base::Debian(base) => {
            let lock = base.lock.as_ref().ok_or(RootfsError::NoLock)?;
            let cache = debian_base::Cache::new(&base.cache);
            let mirror = crate::debian::fetch::Mirror::new(&base.mirror)?;
            tree = debian_base::base_tree(lock, &cache, &mirror, remote, recipe.epoch, &work.join("root"))?;
        }
    }
    let kernel = KernelParts::obtain(recipe, &tree, work)?;
    let boot_modules = if kernel.has_modules() {
        kernel.closure(&recipe.modules).map_err(|e| match recipe.extra_modules.iter().find(|m| e.module == **m) {
            Some(_) => recipe.profile_error("kernel.extra_modules", e.to_string()),
            None => recipe.hardware_error("modules", e.to_string()),
        })?
    } else {
        Vec::new()
    };
    if !matches!(recipe.kernel, Kernel::FromBase) {
        kernel.install(&mut tree, &boot_modules)?;
    }
    customize::skeleton(&mut tree)?;
    customize::boot_entry(&mut tree, &recipe.init)?;
    node_stage::install(&mut tree, &boot_modules)?;
    if let Some(s) = &recipe.scratch {
        scratch::install(&mut tree, recipe, s, work)?;
    }
    customize::users(&mut tree, recipe)?;
    if let Some(h) = &recipe.hostname {
        customize::hostname(&mut tree, h)?;
    }
    customize::files(&mut tree, recipe)?;
    customize::services(&mut tree, recipe)?;
    check_init(&tree, recipe)?;
    Ok(Rootfs { tree, kernel, boot_modules })
}

/// The kernel (or the disk initramfs) starts `init`: one that is not in the
/// image, or not executable, would only show as a kernel panic at boot.
fn check_init(tree: &Tree, recipe: &Recipe) -> Result<()> {
    use tree::Kind;
    // With [scratch], recipe.init is the stage, which runs the profile's.
    let init = recipe.scratch.as_ref().map_or(&recipe.init, |s| &s.init);
    let ok = match tree.get(init) {
        Some(n) if matches!(n.kind, Kind::File | Kind::Hardlink(_)) => n.mode & 0o111 != 0,
        _ => false,
    };
    if !ok {
        return Err(recipe.profile_error("init", format!("{init} is not an executable file in the image")).into());
    }
    Ok(())
}
