//! The initramfs of disk images: busybox, the hardware's modules (with their
//! dependencies, in load order) and a short init that finds the root by
//! filesystem UUID, mounts it and switches to it. It does not depend on the
//! base having initramfs tooling of its own.

use super::error::{ArtifactError, Result};
use crate::config::recipe::Recipe;
use crate::rootfs::tree::{Kind, Node, Tree};
use crate::rootfs::Rootfs;
use std::path::Path;

const APPLETS: &[&str] = &[
    "sh",
    "mount",
    "umount",
    "insmod",
    "modprobe",
    "findfs",
    "sleep",
    "switch_root",
    "cat",
    "ls",
    "echo",
    "poweroff",
    "mkdir",
];

fn init_script(version: &str, modules: &[String]) -> String {
    let loads: String = modules.iter().map(|m| format!("insmod /lib/modules/{version}/{m} 2>/dev/null\n")).collect();
    format!(
        r#"#!/bin/sh
# imgd disk initramfs: load the hardware's modules, find the root, switch to it.
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
{loads}root=
init=/sbin/init
for arg in $(cat /proc/cmdline); do
  case "$arg" in
    root=*) root="${{arg#root=}}" ;;
    init=*) init="${{arg#init=}}" ;;
  esac
done
i=0
until dev=$(findfs "$root" 2>/dev/null) && [ -n "$dev" ]; do
  i=$((i+1))
  if [ "$i" -ge 300 ]; then
    echo "imgd-initramfs: root $root not found after 30s; block devices: $(ls /sys/class/block)"
    poweroff -f
  fi
  sleep 0.1
done
if ! mount -t ext4 -o rw "$dev" /newroot; then
  echo "imgd-initramfs: cannot mount $dev ($root)"
  poweroff -f
fi
mount --move /dev /newroot/dev 2>/dev/null || umount /dev
umount /proc /sys
exec switch_root /newroot "$init"
"#
    )
}

/// Builds the initramfs tree in `work/initramfs` and writes it to `out`.
pub(crate) fn write(recipe: &Recipe, rootfs: &Rootfs, work: &Path, out: &Path) -> Result<()> {
    let busybox =
        recipe.initramfs_busybox.as_ref().ok_or(ArtifactError::Missing("disk build without busybox input"))?;
    let mut t = Tree::new(&work.join("initramfs"))?;
    let unpack = work.join("initramfs-busybox");
    let mut bb = Tree::new(&unpack)?;
    bb.extract_deb(&busybox.path).map_err(super::error::input("unpacking", &busybox.name))?;
    let bin = bb.resolve("/bin/busybox", true)?;
    t.add_copy("/bin/busybox", &bb.staged(&bin), 0o755)?;
    std::fs::remove_dir_all(&unpack)?;
    for a in APPLETS {
        t.add_symlink(&format!("/bin/{a}"), "busybox")?;
    }
    for d in ["/proc", "/sys", "/dev", "/newroot"] {
        t.add_dir(d, 0o755)?;
    }
    t.insert("/dev/console", Node::new(Kind::Char(5, 1), 0o600))?;
    rootfs.kernel.install(&mut t, &rootfs.boot_modules)?;
    t.add_bytes("/init", init_script(&rootfs.kernel.version, &rootfs.boot_modules).as_bytes(), 0o755)?;
    super::cpio::write_initrd(&t, out, recipe.epoch)?;
    Ok(())
}
