//! Every artifact checked by the tools a user would trust: qemu-img, sfdisk,
//! fsck.ext4, fsck.vfat, debugfs, mtools, cpio, zstd, tar.

use crate::common::*;
use serde_json::Value;
use std::path::Path;

/// Copies a byte range of `src` into a new file (a partition, for fsck).
fn extract(src: &Path, start: u64, len: u64, dst: &Path) {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(src).unwrap();
    f.seek(SeekFrom::Start(start)).unwrap();
    let mut out = std::fs::File::create(dst).unwrap();
    std::io::copy(&mut f.take(len), &mut out).unwrap();
}

fn partitions(raw: &Path) -> Vec<Value> {
    let j: Value = serde_json::from_str(&tool("sfdisk", &["--json", raw.to_str().unwrap()])).unwrap();
    assert_eq!(j["partitiontable"]["label"], "gpt");
    j["partitiontable"]["partitions"].as_array().unwrap().clone()
}

#[test]
fn raw_disk_passes_sfdisk_fsck_ext4_and_fsck_vfat() {
    let h = hello();
    let raw = h.file("disk.raw");
    let raw_s = raw.to_str().unwrap();
    tool("sfdisk", &["--verify", raw_s]);
    let size = std::fs::metadata(&raw).unwrap().len();
    assert_eq!(size % (1 << 20), 0, "disk size is a whole MiB");
    let parts = partitions(&raw);
    assert_eq!(parts.len(), 2);
    assert_eq!(parts[0]["type"], "C12A7328-F81F-11D2-BA4B-00A0C93EC93B", "ESP first");
    assert_eq!(parts[1]["type"], "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709", "x86-64 root second");
    let dir = tempfile::tempdir().unwrap();
    let esp = dir.path().join("esp.img");
    let root = dir.path().join("root.img");
    let range = |p: &Value| (p["start"].as_u64().unwrap() * 512, p["size"].as_u64().unwrap() * 512);
    let (s, l) = range(&parts[0]);
    extract(&raw, s, l, &esp);
    let (s, l) = range(&parts[1]);
    extract(&raw, s, l, &root);

    tool("fsck.vfat", &["-n", esp.to_str().unwrap()]);
    let listing = tool("mdir", &["-i", esp.to_str().unwrap(), "-/", "-b", "::"]);
    // UEFI disks: systemd-boot and one unified kernel image (type #2 entry).
    for f in ["::/EFI/BOOT/BOOTX64.EFI", "::/loader/loader.conf", "::/EFI/Linux/hello.efi"] {
        assert!(listing.contains(f), "ESP lacks {f}:\n{listing}");
    }
    for f in ["::/loader/entries/imgd.conf", "::/vmlinuz", "::/initrd"] {
        assert!(!listing.contains(f), "a UEFI ESP has no type #1 entry, yet has {f}:\n{listing}");
    }
    let conf = tool("mtype", &["-i", esp.to_str().unwrap(), "::/loader/loader.conf"]);
    assert!(conf.contains("default hello.efi"), "{conf}");
    let uki = dir.path().join("esp-hello.efi");
    tool("mcopy", &["-i", esp.to_str().unwrap(), "::/EFI/Linux/hello.efi", uki.to_str().unwrap()]);
    let cmdline = dir.path().join("cmdline");
    let (uki_s, cmdline_s) = (uki.to_str().unwrap(), cmdline.to_str().unwrap());
    tool("objcopy", &["-O", "binary", "--only-section", ".cmdline", uki_s, cmdline_s]);
    let cmdline = std::fs::read_to_string(&cmdline).unwrap();
    assert!(cmdline.starts_with("root=UUID=") && cmdline.contains("console=ttyS0"), "{cmdline}");
    // The kernel is the image's; the initramfs is the disk's own (small: it
    // mounts the root, it is not the root).
    let linux = dir.path().join("linux");
    tool("objcopy", &["-O", "binary", "--only-section", ".linux", uki_s, linux.to_str().unwrap()]);
    assert_eq!(std::fs::read(&linux).unwrap(), std::fs::read(h.file("vmlinuz")).unwrap());
    let initrd = dir.path().join("initrd");
    tool("objcopy", &["-O", "binary", "--only-section", ".initrd", uki_s, initrd.to_str().unwrap()]);
    assert!(std::fs::metadata(&initrd).unwrap().len() < std::fs::metadata(h.file("initrd")).unwrap().len());

    tool("fsck.ext4", &["-fn", root.to_str().unwrap()]);
    let root_s = root.to_str().unwrap();
    // Root-owned system files, the profile's modes, device nodes, fixed times.
    let stat = tool("debugfs", &["-R", "stat /bin/busybox", root_s]);
    assert!(stat.contains("User:     0   Group:     0"), "{stat}");
    let init = tool("debugfs", &["-R", "stat /sbin/init", root_s]);
    assert!(init.contains("Mode:  0755"), "{init}");
    let console = tool("debugfs", &["-R", "stat /dev/console", root_s]);
    assert!(
        console.contains("Type: character special") && console.contains("Device major/minor number: 05:01"),
        "{console}"
    );
    assert!(stat.contains(" mtime: 0x5e0be100"), "mtime is the epoch 2020-01-01: {stat}");
    // The ext4 UUID on the kernel command line is the filesystem's.
    let uuid = tool("debugfs", &["-R", "stats", root_s]);
    let uuid = uuid
        .lines()
        .find(|l| l.starts_with("Filesystem UUID:"))
        .unwrap()
        .split_whitespace()
        .last()
        .unwrap()
        .to_string();
    assert!(cmdline.contains(&format!("root=UUID={uuid}")), "{cmdline} vs {uuid}");
    // The hardware's modules and their dependencies are in the image, indexed.
    let ls = tool("debugfs", &["-R", "ls -p /lib/modules", root_s]);
    let version = ls
        .lines()
        .filter_map(|l| l.split('/').nth(5))
        .find(|v| v.starts_with("6."))
        .expect("a kernel version dir")
        .to_string();
    let dep = tool("debugfs", &["-R", &format!("cat /lib/modules/{version}/modules.dep"), root_s]);
    for m in ["virtio_blk.ko", "ext4.ko", "jbd2.ko", "virtio_net.ko"] {
        assert!(dep.contains(m), "modules.dep lacks {m}:\n{dep}");
    }
}

#[test]
fn qcow2_and_vhd_pass_qemu_img() {
    let h = hello();
    let raw_size = std::fs::metadata(h.file("disk.raw")).unwrap().len();
    let q = h.file("disk.qcow2");
    tool("qemu-img", &["check", q.to_str().unwrap()]);
    let info: Value = serde_json::from_str(&tool("qemu-img", &["info", "--output=json", q.to_str().unwrap()])).unwrap();
    assert_eq!(info["format"], "qcow2");
    assert_eq!(info["format-specific"]["data"]["compat"], "1.1", "qcow2 v3");
    assert_eq!(info["virtual-size"].as_u64().unwrap(), raw_size);
    assert!(info["actual-size"].as_u64().unwrap() < raw_size / 4, "unallocated space is not stored: {info}");
    // Same content as the raw disk.
    tool(
        "qemu-img",
        &["compare", "-f", "qcow2", "-F", "raw", q.to_str().unwrap(), h.file("disk.raw").to_str().unwrap()],
    );

    let v = h.file("disk.vhd");
    let info: Value =
        serde_json::from_str(&tool("qemu-img", &["info", "--output=json", "-f", "vpc", v.to_str().unwrap()])).unwrap();
    assert_eq!(info["format"], "vpc");
    assert_eq!(info["virtual-size"].as_u64().unwrap(), raw_size);
    assert_eq!(std::fs::metadata(&v).unwrap().len(), raw_size + 512, "fixed VHD: raw + footer");
    tool("qemu-img", &["compare", "-f", "vpc", "-F", "raw", v.to_str().unwrap(), h.file("disk.raw").to_str().unwrap()]);
    // The footer: fixed disk type (2) and a timestamp from the epoch, not now.
    let bytes = std::fs::read(&v).unwrap();
    let footer = &bytes[bytes.len() - 512..];
    assert_eq!(&footer[..8], b"conectix");
    assert_eq!(u32::from_be_bytes(footer[60..64].try_into().unwrap()), 2);
    assert_eq!(u32::from_be_bytes(footer[24..28].try_into().unwrap()), 1_577_836_800 - 946_684_800);
}

#[test]
fn initrd_and_tarball_read_with_standard_tools() {
    let h = hello();
    let initrd = h.file("initrd");
    tool("zstd", &["-tq", initrd.to_str().unwrap()]);
    let list = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("zstd -dc '{}' | cpio -itv --quiet", initrd.display()))
        .output()
        .unwrap();
    assert!(list.status.success());
    let list = String::from_utf8_lossy(&list.stdout);
    for f in [" bin/busybox", " sbin/init", " init -> /sbin/init", " dev/console", "/modules.dep"] {
        assert!(list.contains(f), "initrd lacks {f}:\n{list}");
    }
    let console = list.lines().find(|l| l.ends_with(" dev/console")).unwrap();
    assert!(console.starts_with("crw-------") && console.contains(" root     root "), "{console}");

    let tar = h.file("rootfs.tar.zst");
    let listing = tool("tar", &["--zstd", "--numeric-owner", "-tvf", tar.to_str().unwrap()]);
    let init = listing.lines().find(|l| l.ends_with(" sbin/init")).expect("sbin/init in tarball");
    assert!(init.starts_with("-rwxr-xr-x 0/0"), "{init}");
    assert!(init.contains("2020-01-01"), "{init}");
    let names = tool("tar", &["--zstd", "-tf", tar.to_str().unwrap()]);
    let entries: Vec<&str> = names.lines().collect();
    let mut sorted = entries.clone();
    sorted.sort();
    assert_eq!(entries, sorted, "archive entries are sorted");
}

/// The ext4 root filesystem takes every owner, mode and time from the tree's
/// node table, not from the staging files (which belong to whoever builds,
/// with today's times): checked by debugfs and fsck.ext4, on a tree with what
/// a real root filesystem holds (setuid, other owners, hard links, device
/// nodes, a fifo, a directory whose blocks need an extent tree).
#[test]
fn ext4_owners_modes_and_times_come_from_the_node_table() {
    use imgd::artifact::ext4;
    use imgd::rootfs::tree::{Kind, Node, Tree};
    let dir = tempfile::tempdir().unwrap();
    let mut t = Tree::new(&dir.path().join("root")).unwrap();
    t.add_bytes("/usr/bin/sudo", b"#!/bin/sh\n", 0o4755).unwrap();
    t.insert("/usr/bin/sudoedit", Node::new(Kind::Hardlink("usr/bin/sudo".into()), 0o4755)).unwrap();
    t.add_dir("/home/ops", 0o700).unwrap();
    t.set_owner("home/ops", 1000, 1000);
    t.add_bytes("/home/ops/.profile", b"export A=1\n", 0o640).unwrap();
    t.set_owner("home/ops/.profile", 70000, 70001); // above 16 bits: the high halves
    t.insert("/dev/console", Node::new(Kind::Char(5, 1), 0o600)).unwrap();
    t.insert("/run/initctl", Node::new(Kind::Fifo, 0o600)).unwrap();
    t.add_symlink("/bin", "usr/bin").unwrap();
    for i in 0..2000 {
        t.add_bytes(&format!("/etc/many/file-{i:04}"), format!("{i}\n").as_bytes(), 0o644).unwrap();
    }
    let image = dir.path().join("disk.img");
    let offset = 1 << 20; // inside a file, as the root partition of a disk
    std::fs::File::create(&image).unwrap().set_len(offset + (64 << 20)).unwrap();
    let epoch = 1_700_000_000u64;
    let params = ext4::Ext4Params {
        uuid: "0b6ce9c4-5f5d-4bb4-9a8e-2f8d2a0c2a11",
        hash_seed: "5a5b9c1e-7d4f-4f0e-8a8e-3c3b8d2e1f00",
        label: "root",
        epoch,
    };
    let work = tempfile::tempdir().unwrap();
    ext4::make(&t, &image, ext4::Region { offset, size: 64 << 20 }, &params, work.path()).unwrap();

    let part = dir.path().join("part.img");
    extract(&image, offset, 64 << 20, &part);
    let p = part.to_str().unwrap();
    tool("fsck.ext4", &["-fn", p]);
    let stat = |path: &str| tool("debugfs", &["-R", &format!("stat {path}"), p]);
    let sudo = stat("/usr/bin/sudo");
    assert!(sudo.contains("Mode:  04755") && sudo.contains("User:     0   Group:     0"), "{sudo}");
    assert!(sudo.contains("Links: 2"), "sudoedit is a hard link of sudo: {sudo}");
    let home = stat("/home/ops");
    assert!(home.contains("Mode:  0700") && home.contains("User:  1000   Group:  1000"), "{home}");
    let profile = stat("/home/ops/.profile");
    assert!(profile.contains("Mode:  0640") && profile.contains("User: 70000   Group: 70001"), "{profile}");
    let console = stat("/dev/console");
    assert!(console.contains("Type: character special") && console.contains("Mode:  0600"), "{console}");
    assert!(stat("/run/initctl").contains("Type: FIFO"));
    let many = stat("/etc/many");
    assert!(many.contains("(ETB0)"), "2000 entries between file data need an extent tree block: {many}");
    assert!(stat("/etc/many/file-1999").contains("Mode:  0644"));
    // Every time of every inode is the epoch, nanoseconds zero.
    for path in ["/", "/lost+found", "/usr/bin/sudo", "/home/ops/.profile", "/dev/console", "/etc/many/file-0000"] {
        let s = stat(path);
        for field in ["ctime", "atime", "mtime", "crtime"] {
            assert!(s.contains(&format!("{field}: 0x6553f100:00000000")), "{path} {field}:\n{s}");
        }
    }
}
