//! The scratch stage: with `[scratch]` in the profile, the image's init is
//! `/lib/imgd/scratch-init`, a busybox script that at every boot selects the
//! machine's local disks through sysfs, wipes their old signatures, stripes
//! them (md RAID-0, no superblock: nothing of it outlives the boot), makes a
//! fresh filesystem, mounts it, writes `/run/imgd/scratch.json`, prints one
//! console line, and hands over to the profile's init. It runs as init in a
//! RAM root (ipxe, uki) and after the disk initramfs's switch_root alike.
//!
//! The programs it needs beside busybox (mke2fs or mkfs.xfs, mdadm) come
//! from the base; for a base of plain `.deb`s (hello) they are taken from the
//! packages resolution named, each with the shared libraries its ELF header
//! needs and nothing else of those packages.

use super::error::{Result, RootfsError};
use super::tree::{Kind, Tree};
use crate::config::recipe::{Base, Input, Recipe};
use crate::config::scratch::{Scratch, STAGE};
use crate::fsutil::IoAt;
use std::collections::BTreeSet;
use std::path::Path;

/// The stage's body (an input of every build's hash: a change rebuilds).
/// The header `install` writes above it sets mount, want, serial_glob,
/// model_glob, min_bytes, layout, fs, none, binds and next.
pub(crate) const SCRIPT: &str = include_str!("scratch-init.sh");

const BIN_DIRS: [&str; 4] = ["/usr/sbin", "/sbin", "/usr/bin", "/bin"];
const LIB_DIRS: [&str; 6] = [
    "/lib/x86_64-linux-gnu",
    "/usr/lib/x86_64-linux-gnu",
    "/lib/aarch64-linux-gnu",
    "/usr/lib/aarch64-linux-gnu",
    "/lib",
    "/usr/lib",
];

/// Adds the stage and, for a `.deb` base, its programs; checks that every
/// program it runs is in the image.
pub(crate) fn install(tree: &mut Tree, recipe: &Recipe, s: &Scratch, work: &Path) -> Result<()> {
    if matches!(recipe.base, Base::Debs(_)) {
        add_tools(tree, s, &recipe.scratch_tools, work)?;
    }
    if !is_executable(tree, "/bin/busybox") {
        let e = recipe.profile_error("scratch", "the scratch stage runs on busybox: add busybox-static to the base");
        return Err(e.into());
    }
    let mut programs = String::new();
    for p in s.programs() {
        let Some(path) = program(tree, p) else {
            let pkg = if p == "mdadm" { "mdadm" } else { "e2fsprogs or xfsprogs" };
            let key = if p == "mdadm" { "scratch.layout" } else { "scratch.filesystem" };
            return Err(recipe
                .profile_error(key, format!("the image has no {p}: add {pkg} to the base's packages"))
                .into());
        };
        programs.push_str(&format!("{}='{path}'\n", p.replace('.', "_")));
    }
    let script = format!(
        "#!/bin/busybox sh\n# imgd scratch stage (see imgd's src/rootfs/scratch.rs)\n{}{programs}{SCRIPT}",
        header(s)
    );
    tree.add_bytes(STAGE, script.as_bytes(), 0o755)?;
    Ok(())
}

/// Where `name` is in the image as a program of its own: busybox answers
/// to some of the same names (its mke2fs makes only ext2).
fn program(tree: &Tree, name: &str) -> Option<String> {
    BIN_DIRS.iter().map(|d| format!("{d}/{name}")).find(|p| {
        is_executable(tree, p) && tree.resolve(p, true).is_ok_and(|r| r.trim_start_matches('/') != "bin/busybox")
    })
}

fn is_executable(tree: &Tree, path: &str) -> bool {
    let Ok(real) = tree.resolve(path, true) else { return false };
    matches!(tree.node(&real), Some(n) if matches!(n.kind, Kind::File | Kind::Hardlink(_)) && n.mode & 0o111 != 0)
}

/// Shell assignments of the profile's values. Every value was checked to
/// hold no quote (`config::scratch`), so single quotes keep them inert.
fn header(s: &Scratch) -> String {
    let want = s.disks.map_or_else(|| "all".to_string(), |n| n.to_string());
    format!(
        "mount='{}'\nwant={want}\nserial_glob='{}'\nmodel_glob='{}'\nmin_bytes={}\nlayout={}\nfs={}\nnone={}\nbinds='{}'\nnext='{}'\n",
        s.mount,
        s.serial.as_deref().unwrap_or(""),
        s.model.as_deref().unwrap_or(""),
        s.min_size,
        s.layout.as_str(),
        s.filesystem.as_str(),
        s.none.as_str(),
        s.bind.join(" "),
        s.init,
    )
}

/// Copies the programs (and mke2fs's configuration) from the tool packages
/// into the image, with the closure of their shared libraries and the
/// dynamic loader.
fn add_tools(tree: &mut Tree, s: &Scratch, debs: &[Input], work: &Path) -> Result<()> {
    let dir = work.join("scratch-tools");
    let mut pkgs = Tree::new(&dir)?;
    for deb in debs {
        pkgs.extract_deb(&deb.path).map_err(super::error::unpacking("unpacking", &deb.name))?;
    }
    let mut todo: Vec<String> = Vec::new();
    for p in s.programs() {
        let path = BIN_DIRS
            .iter()
            .map(|d| format!("{d}/{p}"))
            .find(|c| pkgs.get(c).is_some())
            .ok_or_else(|| RootfsError::Scratch(format!("{p} is in none of the scratch packages")))?;
        todo.push(path);
    }
    if pkgs.get("/etc/mke2fs.conf").is_some() {
        copy(tree, &pkgs, "/etc/mke2fs.conf", 0o644)?;
    }
    let mut done = BTreeSet::new();
    while let Some(path) = todo.pop() {
        if !done.insert(path.clone()) {
            continue;
        }
        let data = std::fs::read(pkgs.staged(&pkgs.resolve(&path, true)?))?;
        let (interp, needed) = elf_needs(&data).map_err(|source| RootfsError::Elf { path: path.clone(), source })?;
        todo.extend(interp);
        for lib in needed {
            let found = LIB_DIRS.iter().map(|d| format!("{d}/{lib}")).find(|c| pkgs.get(c).is_some());
            let missing =
                || RootfsError::Scratch(format!("{path} needs {lib}, which none of the scratch packages holds"));
            todo.push(found.ok_or_else(missing)?);
        }
        copy(tree, &pkgs, &path, 0o755)?;
    }
    std::fs::remove_dir_all(&dir).at("removing", &dir)?;
    Ok(())
}

/// `path` of `pkgs` into `tree` as a regular file (links followed).
fn copy(tree: &mut Tree, pkgs: &Tree, path: &str, mode: u32) -> Result<()> {
    let real = pkgs.resolve(path, true)?;
    tree.add_copy(path, &pkgs.staged(&real), mode)?;
    Ok(())
}

/// An ELF file's interpreter (`PT_INTERP`) and `DT_NEEDED` libraries.
fn elf_needs(data: &[u8]) -> Result<(Option<String>, Vec<String>), Box<dyn std::error::Error + Send + Sync>> {
    use object::elf::{FileHeader64, DT_NEEDED};
    use object::read::elf::{Dyn, FileHeader, ProgramHeader};
    use object::Endianness;
    let header = FileHeader64::<Endianness>::parse(data)?;
    let endian = header.endian()?;
    let mut interp = None;
    for ph in header.program_headers(endian, data)? {
        if let Some(i) = ph.interpreter(endian, data)? {
            interp = Some(String::from_utf8_lossy(i).into_owned());
        }
    }
    let sections = header.sections(endian, data)?;
    let mut needed = Vec::new();
    if let Some((dyns, strtab)) = sections.dynamic(endian, data)? {
        let strings = sections.strings(endian, data, strtab)?;
        for d in dyns {
            if d.tag32(endian) == Some(DT_NEEDED) {
                let name = String::from_utf8_lossy(d.string(endian, strings)?).into_owned();
                if name.contains('/') || name.starts_with('.') {
                    return Err(format!("a needed library `{name}` that is not a plain file name").into());
                }
                needed.push(name);
            }
        }
    }
    Ok((interp, needed))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This test binary is itself a dynamic ELF file on Linux: it needs
    /// libc and names the loader.
    #[test]
    fn reads_needed_libraries_and_the_loader() {
        let exe = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        let (interp, needed) = elf_needs(&exe).unwrap();
        assert!(interp.unwrap().contains("ld-linux"));
        assert!(needed.iter().any(|n| n.starts_with("libc.so")), "{needed:?}");
        assert!(elf_needs(b"#!/bin/sh\n").is_err());
    }
}
