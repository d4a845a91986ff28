//! A composition's images: each distinct profile built once.

use super::super::test::resolve_accel;
use super::super::ProfileArgs;
use super::args::Common;
use anyhow::{bail, Context, Result};
use imgd::compose::RoleImage;
use imgd::config::composition::{Composition, Role};
use imgd::config::ConfigError;
use imgd::model::manifest::ArtifactName;
use imgd::model::Format;
use imgd::qemu::Accel;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

/// A composition with one built image per role, and how to run them.
pub struct Built {
    pub comp: Composition,
    pub images: Vec<RoleImage>,
    /// `--accel auto`: KVM only when every image runs under it.
    pub accel: Accel,
}

/// Builds each distinct image once (roles with the same profile, hardware
/// and overrides share a store entry) and returns one image per role.
pub fn build(c: &Common) -> Result<Built> {
    let comp = c.load()?;
    let store = c.store.open()?;
    let mut built: Vec<(ProfileArgs, RoleImage)> = Vec::new();
    let mut images = Vec::new();
    let mut accel = c.accel;
    for role in &comp.roles {
        let p = c.profile_args(role);
        let same = |q: &ProfileArgs| q.profile == p.profile && q.hardware == p.hardware && q.sets == p.sets;
        if let Some((_, img)) = built.iter().find(|(q, _)| same(q)) {
            images.push(img.clone());
            continue;
        }
        let (img, probe) = role_image(&comp, role, &p, &store)?;
        if accel == Accel::Auto || (c.accel == Accel::Auto && probe == Accel::Tcg) {
            accel = probe;
        }
        tracing::info!(role = %role.name, entry = %img.entry, "image ready");
        built.push((p, img.clone()));
        images.push(img);
    }
    Ok(Built { comp, images, accel })
}

fn role_image(
    comp: &Composition,
    role: &Role,
    p: &ProfileArgs,
    store: &imgd::store::Store,
) -> Result<(RoleImage, Accel)> {
    let (loaded, recipe) = p
        .loaded()
        .with_context(|| format!("{}: role {} (profile {})", comp.path.display(), role.name, role.profile))?;
    if !recipe.formats.contains(&Format::Ipxe) {
        bail!(ConfigError::new(
            &comp.path,
            format!(
                "role {}: profile {} does not build ipxe (nodes boot its kernel and RAM root)",
                role.name, recipe.name
            )
        )
        .key(format!("role.{}.profile", role.name)));
    }
    let entry = p.build(&recipe, store)?.entry;
    let file = |name: ArtifactName| -> Result<PathBuf> {
        let art = entry
            .manifest
            .artifact(Format::Ipxe, name)
            .with_context(|| format!("{} has no ipxe {name:?}", entry.name))?;
        Ok(entry.path.join(art.file.as_str()))
    };
    let probe = resolve_accel(Accel::Auto, &entry);
    let img = RoleImage {
        entry: entry.name.clone(),
        kernel: file(ArtifactName::Kernel)?,
        initrd: file(ArtifactName::Initrd)?,
        cmdline: entry.manifest.recipe.cmdline.clone(),
        arch: recipe.arch,
        firmware: recipe.firmware,
        qemu: loaded.hardware.qemu.clone(),
    };
    Ok((img, probe))
}

/// A private folder (0700) for consoles and sockets.
pub fn private_dir(prefix: &str) -> Result<tempfile::TempDir> {
    Ok(tempfile::Builder::new().prefix(prefix).permissions(std::fs::Permissions::from_mode(0o700)).tempdir()?)
}

pub fn names(comp: &Composition) -> String {
    comp.nodes.iter().map(|n| n.name.as_str()).collect::<Vec<_>>().join(", ")
}
