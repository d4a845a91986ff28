//! `[scratch]`: a machine's local disks wiped and made one filesystem at
//! every boot, checked by booting hello with extra raw disks in real qemu
//! (TCG) and reading what the guest reports on its console.

use crate::common::*;
use serde_json::Value;
use std::path::{Path, PathBuf};

/// hello with `[scratch]` and an init that reports what a user would check:
/// the stage's JSON, whether the last boot's file survived, the bind mount.
fn profile(scratch: &str) -> String {
    let hello = repo().join("profiles/hello.toml");
    format!(
        r##"extends = "{}"
name = "scr"
formats = ["ipxe", "raw"]

[scratch]
{scratch}

[[files]]
path = "/sbin/init"
mode = "0755"
content = """#!/bin/busybox sh
/bin/busybox --install -s
echo "SCRATCH-JSON $(cat /run/imgd/scratch.json 2>/dev/null)"
[ -e /scratch/left-by-last-boot ] && echo SCRATCH-SURVIVED
echo x > /scratch/left-by-last-boot
if [ -d /var/lib/builds ]; then
  echo y > /var/lib/builds/f && [ -e /scratch/.bind/var/lib/builds/f ] && echo BIND-OK
fi
sync
echo IMGD-HELLO-READY
exec sh
"""
"##,
        hello.display()
    )
}

/// Sparse raw files of these sizes (GiB) in `dir`.
fn disks(dir: &Path, names: &[(&str, u64)]) -> Vec<PathBuf> {
    names
        .iter()
        .map(|(n, gib)| {
            let p = dir.join(format!("{n}.img"));
            let f = std::fs::File::create(&p).unwrap();
            f.set_len(gib << 30).unwrap();
            p
        })
        .collect()
}

/// Boots `format` with `drives` (`FILE[,serial=S]`); returns (exit ok, console).
fn boot(project: &Path, format: &str, drives: &[String], sets: &[&str]) -> (bool, String) {
    let mut c = imgd(&project.join("store"));
    c.env("IMGD_ROOT", project).args(["test", "scr", "--format", format, "--timeout", "200", "--keep-logs"]);
    for d in drives {
        c.args(["--drive", d]);
    }
    for s in sets {
        c.args(["--set", s]);
    }
    let out = c.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let kept = stderr.split("console logs kept in ").nth(1).and_then(|s| s.lines().next()).expect("logs kept");
    let mut console = String::new();
    for e in std::fs::read_dir(kept).unwrap() {
        console.push_str(&String::from_utf8_lossy(&std::fs::read(e.unwrap().path()).unwrap()));
    }
    remove_kept_logs(&out);
    (out.status.success(), console)
}

/// `imgd: scratch /scratch raid0 3 disks 2950 MiB` → (rest of line, MiB).
fn scratch_line(console: &str) -> (String, u64) {
    let line = console.lines().find(|l| l.starts_with("imgd: scratch ")).unwrap_or_else(|| panic!("{console}"));
    let mib = line.split_whitespace().rev().nth(1).and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("{line}"));
    (line.trim_start_matches("imgd: scratch ").to_string(), mib)
}

fn report(console: &str) -> Value {
    let json = console.lines().find_map(|l| l.strip_prefix("SCRATCH-JSON ")).unwrap_or_else(|| panic!("{console}"));
    serde_json::from_str(json.trim()).unwrap_or_else(|e| panic!("{e}: {json}"))
}

fn sha(p: &Path) -> String {
    tool("sha256sum", &[p.to_str().unwrap()]).split_whitespace().next().unwrap().to_string()
}

#[test]
fn three_matching_disks_become_one_raid0_fresh_at_every_boot() {
    let p = project(&[("scr.toml", &profile("match = { serial = \"scratch*\" }\nbind = [\"/var/lib/builds\"]"))]);
    let d = p.path();
    let files = disks(d, &[("s1", 1), ("s2", 1), ("s3", 1), ("keep1", 1)]);
    // A previous tenant's GPT and ext4 on one disk; random bytes on the one to keep.
    std::fs::write(d.join("gpt"), "label: gpt\n,,L\n").unwrap();
    let gpt = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("sfdisk -q {} < {}", files[1].display(), d.join("gpt").display()))
        .status()
        .unwrap();
    assert!(gpt.success());
    tool("mkfs.ext4", &["-q", "-F", "-E", "offset=1048576", files[1].to_str().unwrap(), "500M"]);
    let noise: Vec<u8> = (0..(64u32 << 20)).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    std::fs::write(&files[3], &noise).unwrap();
    std::fs::OpenOptions::new().write(true).open(&files[3]).unwrap().set_len(1 << 30).unwrap();
    let keep_before = sha(&files[3]);
    let drives: Vec<String> = ["scratch1", "scratch2", "scratch3", "keep1"]
        .iter()
        .zip(&files)
        .map(|(serial, f)| format!("{},serial={serial}", f.display()))
        .collect();

    let mut uuids = Vec::new();
    // The kernel and initrd as a netbooted machine gets them (what iPXE
    // fetches: the scratch set-up is the initrd's), then the raw disk,
    // whose own disk must be left out, on the same disk files.
    for (round, format) in ["kernel", "raw"].iter().enumerate() {
        let (ok, console) = boot(d, format, &drives, &[]);
        assert!(ok, "{format} boot {round}:\n{console}");
        let (line, mib) = scratch_line(&console);
        assert!(line.starts_with("/scratch raid0 3 disks "), "{line}");
        assert!((2900..=3072).contains(&mib), "{line}");
        let r = report(&console);
        let serials: Vec<&str> = r["disks"].as_array().unwrap().iter().map(|d| d["serial"].as_str().unwrap()).collect();
        let mut sorted = serials.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, ["scratch1", "scratch2", "scratch3"], "{r}");
        assert_eq!(r["filesystem"], "ext4");
        assert_eq!(r["mib"].as_u64(), Some(mib));
        assert!(r["ready_seconds"].as_f64().unwrap() > 0.0, "{r}");
        assert!(!console.contains("SCRATCH-SURVIVED"), "a file outlived the boot:\n{console}");
        assert!(console.contains("BIND-OK"), "{console}");
        uuids.push(r["uuid"].as_str().unwrap().to_string());
        // keep1 does not match: untouched, byte for byte.
        assert_eq!(sha(&files[3]), keep_before, "keep1 changed after boot {round}");
    }
    assert_ne!(uuids[0], uuids[1], "a fresh UUID each boot");
    // Nothing of the old GPT is left on the disk that had one.
    let out = std::process::Command::new("sfdisk").args(["-d", files[1].to_str().unwrap()]).output().unwrap();
    assert!(!out.status.success(), "a partition table survived: {}", String::from_utf8_lossy(&out.stdout));
}

#[test]
fn every_disk_but_the_boot_disk_and_uneven_sizes_are_all_used() {
    // No match: every whole disk qualifies, so the raw image's own disk must
    // be recognised as the boot disk and left alone.
    let p = project(&[("scr.toml", &profile("layout = \"raid0\""))]);
    let d = p.path();
    let files = disks(d, &[("a", 1), ("b", 2), ("c", 3)]);
    let drives: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
    let (booted, console) = boot(d, "raw", &drives, &[]);
    assert!(booted, "{console}");
    let (line, mib) = scratch_line(&console);
    assert!(line.starts_with("/scratch raid0 3 disks "), "{line}");
    assert!((5900..=6144).contains(&mib), "1 + 2 + 3 GiB striped: {line}");
    // The boot disk in the store is as built.
    ok(imgd(&d.join("store")).env("IMGD_ROOT", d).arg("verify"));
}

#[test]
fn no_matching_disk_gives_tmpfs_or_stops_with_a_clear_message() {
    let p = project(&[("scr.toml", &profile("match = { serial = \"nothing-has-this*\" }"))]);
    let d = p.path();
    let files = disks(d, &[("x", 1)]);
    let drives = vec![format!("{},serial=other", files[0].display())];
    let (ok, console) = boot(d, "kernel", &drives, &[]);
    assert!(ok, "{console}");
    let (line, _) = scratch_line(&console);
    assert!(line.starts_with("/scratch tmpfs 0 disks "), "{line}");

    let (ok, console) = boot(d, "kernel", &drives, &["scratch.none=\"fail\""]);
    assert!(!ok, "a failed scratch stage must not reach the marker:\n{console}");
    assert!(console.contains("imgd: scratch FAILED: no disk matched [scratch]"), "{console}");
    assert!(!console.contains("SCRATCH-JSON"), "the image's init ran:\n{console}");
}

#[test]
fn bad_scratch_values_name_their_key_and_exit_2() {
    let cases = [
        ("mount = \"scratch\"", "key `scratch.mount`: `scratch` must be an absolute path"),
        ("mount = \"/proc/x\"", "/proc/x is in /proc"),
        ("disks = 0", "expected \"all\" or a number of disks"),
        ("layout = \"raid5\"", "unknown variant `raid5`"),
        ("match = { serial = \"a'b\" }", "a glob of printable ASCII"),
        ("bind = [\"/scratch/x\"]", "hold each other"),
    ];
    for (bad, want) in cases {
        let p = project(&[("scr.toml", &profile(bad))]);
        let out = imgd(&p.path().join("store")).env("IMGD_ROOT", p.path()).args(["build", "scr"]).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{bad}: {stderr}");
        assert!(stderr.contains("scr.toml:") && stderr.contains(want), "{bad}: {stderr}");
    }
    // The stage hands over to init by its path: a quote in it is refused.
    let p = project(&[("scr.toml", &profile(""))]);
    let out = imgd(&p.path().join("store"))
        .env("IMGD_ROOT", p.path())
        .args(["build", "scr", "--set", "init=\"/sbin/in'it\""])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("key `init`") && stderr.contains("with [scratch]"), "{stderr}");
}

/// xfs, one filesystem per disk or the largest alone; the disks are NVMe
/// (EC2 instance storage's case: sysfs puts serial and model under the
/// controller, and NVMe probes asynchronously) chosen by model, and a virtio
/// disk beside them is left alone.
#[test]
fn xfs_one_filesystem_per_disk_or_the_largest_alone() {
    let scratch = "match = { model = \"QEMU NVMe*\" }\nlayout = \"separate\"\nfilesystem = \"xfs\"";
    let nvme = "[kernel]\ndeb = \"linux-image-[0-9]*\"\nextra_modules = [\"nvme\"]\n";
    let p = project(&[("scr.toml", &format!("{}\n{nvme}", profile(scratch)))]);
    let d = p.path();
    let files = disks(d, &[("small", 1), ("big", 2), ("other", 1)]);
    let drives = vec![
        format!("{},serial=s-small,if=nvme", files[0].display()),
        format!("{},serial=s-big,if=nvme", files[1].display()),
        format!("{},serial=other", files[2].display()),
    ];
    let (booted, console) = boot(d, "kernel", &drives, &[]);
    assert!(booted, "{console}");
    let (line, mib) = scratch_line(&console);
    assert!(line.starts_with("/scratch separate 2 disks "), "{line}");
    assert!((2900..=3072).contains(&mib), "{line}");
    let r = report(&console);
    assert_eq!(r["filesystem"], "xfs");
    let each = r["disks"].as_array().unwrap();
    // Largest first, each at MOUNT/N with a UUID of its own.
    assert_eq!((each[0]["serial"].as_str(), each[0]["mount"].as_str()), (Some("s-big"), Some("/scratch/0")), "{r}");
    assert_eq!((each[1]["serial"].as_str(), each[1]["mount"].as_str()), (Some("s-small"), Some("/scratch/1")), "{r}");
    assert_ne!(each[0]["uuid"], each[1]["uuid"]);
    assert!(each[0]["name"].as_str().unwrap().starts_with("nvme"), "{r}");

    let (booted, console) = boot(d, "kernel", &drives, &["scratch.layout=\"single\""]);
    assert!(booted, "{console}");
    let (line, mib) = scratch_line(&console);
    assert!(line.starts_with("/scratch single 1 disk "), "{line}");
    assert!((1900..=2048).contains(&mib), "the 2 GiB disk: {line}");
    assert_eq!(report(&console)["disks"][0]["serial"], "s-big");
}

#[test]
fn a_base_without_the_tools_is_an_error_at_the_key() {
    // A base of its own (a directory with busybox only): nothing to take
    // mdadm or mke2fs from.
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("root");
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::create_dir_all(root.join("sbin")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    for (path, text) in [("bin/busybox", "#!/bin/sh\n"), ("sbin/init", "#!/bin/busybox sh\n")] {
        std::fs::write(root.join(path), text).unwrap();
        std::fs::set_permissions(root.join(path), std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let profile = format!(
        "hardware = \"qemu-x86_64\"\nformats = [\"tar\"]\n[base]\ndir = \"{}\"\n[kernel]\ndeb = \"linux-image-[0-9]*\"\n[scratch]\nlayout = \"raid0\"\n",
        root.display()
    );
    let p = project(&[("bare.toml", &profile)]);
    let out = imgd(&p.path().join("store")).env("IMGD_ROOT", p.path()).args(["build", "bare"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("bare.toml:") && stderr.contains("scratch.filesystem"), "{stderr}");
    assert!(stderr.contains("the image has no mke2fs"), "{stderr}");
    assert!(entries(&p.path().join("store")).is_empty());
}

/// The shipped builder profile: netbooted kernel + initrd with two local
/// disks, it is reachable over SSH with the user's key as soon as its marker
/// prints, and the user can write to the striped /scratch.
#[test]
fn the_builder_profile_is_ready_for_ssh_with_its_disks_striped() {
    use std::process::{Command, Stdio};
    use std::time::Duration;
    let d = tempfile::tempdir().unwrap();
    let key = d.path().join("key");
    tool("ssh-keygen", &["-q", "-t", "ed25519", "-N", "", "-C", "imgd-test", "-f", key.to_str().unwrap()]);
    let public = std::fs::read_to_string(d.path().join("key.pub")).unwrap();
    let users = format!("users=[{{name=\"builder\",shell=\"/bin/sh\",ssh_authorized_keys=[\"{}\"]}}]", public.trim());
    let files = disks(d.path(), &[("a", 1), ("b", 1)]);
    let store = d.path().join("store");
    let port = free_port();
    let mut run = imgd(&store)
        .args(["run", "builder", "--set", &users, "--format", "kernel", "--ssh", &port.to_string()])
        .args(["--drive", files[0].to_str().unwrap(), "--drive", files[1].to_str().unwrap()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let console = wait_for_console(&mut run, "IMGD-BUILDER-READY", Duration::from_secs(240));
    assert!(console.contains("imgd: scratch /scratch raid0 2 disks "), "{console}");
    let cmd = "echo user=$(id -un) host=$(hostname); echo hi > /scratch/mine && awk '$2 == \"/scratch\" {print \"fs=\" $1}' /proc/mounts";
    let out = ssh_until_ok(&key, port, "builder", cmd, Duration::from_secs(60));
    assert!(out.contains("user=builder host=builder"), "{out}");
    assert!(out.contains("fs=/dev/md"), "{out}");
    Command::new("kill").args(["-TERM", &run.id().to_string()]).status().unwrap();
    run.wait().unwrap();
    assert_no_process_mentions(&store);
}

#[test]
fn the_section_is_part_of_the_input_hash() {
    let p = project(&[("scr.toml", &profile("layout = \"raid0\""))]);
    let hash = |sets: &[&str]| {
        let mut c = imgd(&p.path().join("store"));
        c.env("IMGD_ROOT", p.path()).args(["hash", "scr"]);
        for s in sets {
            c.args(["--set", s]);
        }
        String::from_utf8_lossy(&ok(&mut c).stdout).trim().to_string()
    };
    let base = hash(&[]);
    assert_eq!(base, hash(&[]));
    for change in ["scratch.layout=\"single\"", "scratch.min_size=\"2GiB\"", "scratch.bind=[\"/srv\"]"] {
        assert_ne!(base, hash(&[change]), "{change} did not change the hash");
    }
}
