//! Booting what was built, in real qemu under TCG: the iPXE kernel+initrd
//! directly, every disk format through OVMF and systemd-boot, the unified
//! kernel image as OVMF's own removable-media loader.

use crate::common::*;

#[test]
fn hello_boots_to_its_marker_in_every_format() {
    let h = hello();
    // The qcow2 and VHD hold the raw disk's very bytes (qemu-img, an
    // independent reader of both containers, says so), so booting the raw
    // disk covers their content; tests/debian.rs boots a qcow2 and the AWS
    // tests send the VHD.
    let raw = h.entry().join("disk.raw");
    for (format, file) in [("qcow2", "disk.qcow2"), ("vpc", "disk.vhd")] {
        let disk = h.entry().join(file);
        let out = std::process::Command::new("qemu-img")
            .args(["compare", "-f", format, "-F", "raw"])
            .args([&disk, &raw])
            .output()
            .unwrap();
        assert!(out.status.success(), "{file} is not the raw disk: {}", String::from_utf8_lossy(&out.stdout));
    }
    for format in ["kernel", "raw", "uki"] {
        let out = imgd(&h.store).args(["test", "hello", "--format", format, "--timeout", "240"]).output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{format} boot failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
        let shown = if format == "kernel" { "ipxe" } else { format };
        assert!(stdout.contains(&format!("{shown}: `IMGD-HELLO-READY` after")), "{stdout}");
    }
    // Booting never writes to the store (qemu runs the disks as snapshots).
    ok(imgd(&h.store).args(["verify"]));
}

#[test]
fn a_wrong_marker_fails_with_the_console_tail_and_leaves_no_qemu() {
    // A store of its own: other tests boot from the shared one at the same
    // time, and their qemu would match the pgrep below.
    let d = tempfile::tempdir().unwrap();
    let own = d.path().join("s");
    let store = own.to_str().unwrap().to_string();
    let out = imgd(&own)
        .args(["test", "hello", "--format", "kernel", "--timeout", "30", "--expect", "THIS-NEVER-APPEARS"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("timed out after 30s waiting for `THIS-NEVER-APPEARS`"), "{stderr}");
    // A failed boot keeps its console log for reading, and the error shows
    // its tail: the last line the console printed, however far the boot got
    // (a loaded machine may not reach the marker in the time given).
    let kept = stderr.split("console logs kept in ").nth(1).and_then(|s| s.lines().next()).expect("logs kept");
    let kept = std::path::Path::new(kept);
    let logs: Vec<_> = std::fs::read_dir(kept).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(logs.len(), 1, "{logs:?}");
    let console = String::from_utf8_lossy(&std::fs::read(&logs[0]).unwrap()).into_owned();
    match console.lines().map(str::trim).rfind(|l| !l.is_empty()) {
        Some(last) => assert!(stderr.contains(last), "the console tail ends with `{last}`: {stderr}"),
        // A machine loaded enough that qemu printed nothing yet: an empty tail.
        None => assert!(stderr.contains("--- last 0 console lines ---"), "{stderr}"),
    }
    std::fs::remove_dir_all(kept).unwrap();
    let ps = std::process::Command::new("pgrep").args(["-f", &store]).output().unwrap();
    assert!(ps.stdout.is_empty(), "qemu still running: {}", String::from_utf8_lossy(&ps.stdout));
}

#[test]
fn hello_netboots_through_real_ipxe_from_imgd_serve() {
    let h = hello();
    for platform in ["pcbios", "efi"] {
        let out = imgd(&h.store)
            .args(["test", "hello", "--format", "ipxe", "--platform", platform, "--timeout", "240"])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{platform} netboot failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
        assert!(stdout.contains(&format!("netboot ({platform}): `IMGD-HELLO-READY` after")), "{stdout}");
        assert!(stdout.contains("iPXE fetched boot.ipxe, ipxe and 2 artifacts"), "{stdout}");
    }
}

#[test]
fn an_init_that_exits_fails_fast_with_the_panic_in_the_tail() {
    let d = tempfile::tempdir().unwrap();
    let store = d.path().join("s");
    let files =
        "files=[{path=\"/sbin/init\",mode=\"0755\",content=\"#!/bin/busybox sh\\necho init-giving-up\\nexit 3\\n\"}]";
    let start = std::time::Instant::now();
    let out = imgd(&store)
        .args(["test", "hello", "--set", files, "--format", "kernel", "--timeout", "200"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("kernel panic") || stderr.contains("qemu exited"), "{stderr}");
    assert!(stderr.contains("init-giving-up") && stderr.contains("Attempted to kill init"), "{stderr}");
    assert!(start.elapsed() < std::time::Duration::from_secs(150), "it did not wait for the timeout");
    remove_kept_logs(&out);
    let ps = std::process::Command::new("pgrep").args(["-f", store.to_str().unwrap()]).output().unwrap();
    assert!(ps.stdout.is_empty(), "qemu still running");
}

#[test]
fn aws_nitro_hardware_boots_its_disk_from_nvme() {
    let d = tempfile::tempdir().unwrap();
    let store = d.path().join("s");
    let out = imgd(&store)
        .args(["test", "hello", "--hardware", "aws-nitro-x86_64", "--format", "raw", "--timeout", "240", "--keep-logs"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let log = stderr.split("console log ").nth(1).and_then(|s| s.split_whitespace().next()).expect("log path");
    let console = std::fs::read_to_string(log).unwrap();
    assert!(console.contains("root /dev/nvme0n1p2"), "the root came from NVMe:\n{console}");
    remove_kept_logs(&out);
}

#[test]
fn bios_hardware_gets_a_hybrid_disk_that_boots_through_seabios_and_grub() {
    let d = tempfile::tempdir().unwrap();
    let (s1, s2) = (d.path().join("a"), d.path().join("b"));
    let args = ["hello", "--hardware", "qemu-x86_64-bios", "--format", "raw"];
    let m1 = build(&s1, &args);
    let m2 = build(&s2, &args);
    assert_eq!(m1["artifacts"], m2["artifacts"], "BIOS disks are reproducible too");
    let raw = std::path::Path::new(m1["path"].as_str().unwrap()).join("disk.raw");
    tool("sfdisk", &["--verify", raw.to_str().unwrap()]);
    let j: serde_json::Value = serde_json::from_str(&tool("sfdisk", &["--json", raw.to_str().unwrap()])).unwrap();
    let types: Vec<&str> =
        j["partitiontable"]["partitions"].as_array().unwrap().iter().map(|p| p["type"].as_str().unwrap()).collect();
    assert_eq!(
        types,
        [
            "21686148-6449-6E6F-744E-656564454649",
            "C12A7328-F81F-11D2-BA4B-00A0C93EC93B",
            "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709"
        ],
        "BIOS boot, ESP, root"
    );
    let bytes = std::fs::read(&raw).unwrap();
    assert_eq!(&bytes[510..512], &[0x55, 0xaa], "MBR signature kept");
    assert_eq!(u64::from_le_bytes(bytes[0x5c..0x64].try_into().unwrap()), 2048, "boot.img points at core.img");
    // SeaBIOS -> GRUB -> kernel + imgd initramfs -> ext4 root, to the marker.
    let out = imgd(&s1)
        .args(["test", "hello", "--hardware", "qemu-x86_64-bios", "--format", "raw", "--timeout", "240", "--keep-logs"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let log = stderr.split("console log ").nth(1).and_then(|s| s.split_whitespace().next()).expect("log path");
    let console = std::fs::read_to_string(log).unwrap();
    assert!(
        console.contains("imgd: booting hello with GRUB (BIOS)") && console.contains("root /dev/vda3"),
        "{console}"
    );
    remove_kept_logs(&out);
}

#[test]
fn aarch64_hardware_boots_through_aavmf_and_directly() {
    let d = tempfile::tempdir().unwrap();
    let store = d.path().join("s");
    let m = build(&store, &["hello", "--hardware", "metal-aarch64"]);
    assert_eq!(m["arch"], "aarch64");
    for format in ["kernel", "raw"] {
        let out = imgd(&store)
            .args([
                "test",
                "hello",
                "--hardware",
                "metal-aarch64",
                "--format",
                format,
                "--timeout",
                "300",
                "--keep-logs",
            ])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{format}: {}\n{stderr}", String::from_utf8_lossy(&out.stdout));
        let log = stderr.split("console log ").nth(1).and_then(|s| s.split_whitespace().next()).expect("log path");
        let console = std::fs::read_to_string(log).unwrap();
        assert!(console.contains("kernel 6.1.0") && console.contains("-arm64"), "{console}");
        remove_kept_logs(&out);
        if format == "raw" {
            assert!(console.contains("root /dev/nvme0n1p2"), "the metal hardware's NVMe root:\n{console}");
        }
    }
    // Netboot needs an arm64 iPXE ROM, which Debian does not ship: a clear refusal.
    let out = imgd(&store).args(["test", "hello", "--hardware", "metal-aarch64", "--format", "ipxe"]).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("x86 ROMs only"), "{stderr}");
    assert!(!stderr.contains("console logs kept"), "a refusal before any boot keeps no empty log folder: {stderr}");
}

#[test]
fn run_netboots_interactively_and_stops_with_imgd() {
    // A store of its own: other tests boot from the shared one at the same
    // time, and their qemu would match the check below.
    let d = tempfile::tempdir().unwrap();
    let own = d.path().join("s");
    let mut run = imgd(&own)
        .args(["run", "hello", "--format", "ipxe"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for_console(&mut run, "IMGD-HELLO-READY", std::time::Duration::from_secs(240));
    std::process::Command::new("kill").args(["-TERM", &run.id().to_string()]).status().unwrap();
    run.wait().unwrap();
    assert_no_process_mentions(&own);
}

#[test]
fn imgd_test_never_writes_through_a_planted_temp_symlink() {
    let h = hello();
    let entry = h.manifest["name"].as_str().unwrap();
    let d = tempfile::tempdir().unwrap();
    let victim = d.path().join("victim");
    std::fs::write(&victim, "precious\n").unwrap();
    // Where imgd test used to write its console log, planted by another user.
    let planted: Vec<std::path::PathBuf> =
        ["ipxe", "kernel"].iter().map(|f| std::env::temp_dir().join(format!("imgd-test-{entry}-{f}.log"))).collect();
    for p in &planted {
        let _ = std::fs::remove_file(p);
        std::os::unix::fs::symlink(&victim, p).unwrap();
    }
    let out = imgd(&h.store)
        .args(["test", "hello", "--format", "kernel", "--timeout", "240", "--keep-logs"])
        .output()
        .unwrap();
    for p in &planted {
        let _ = std::fs::remove_file(p);
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious\n", "written through the symlink");
    let log = stderr.split("console log ").nth(1).and_then(|s| s.split_whitespace().next()).expect("log path");
    let dir = std::path::Path::new(log).parent().unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(dir).unwrap().permissions().mode() & 0o777, 0o700, "{log}");
    assert!(std::fs::read_to_string(log).unwrap().contains("IMGD-HELLO-READY"));
    assert!(stderr.contains(&format!("console logs kept in {}", dir.display())), "{stderr}");
    std::fs::remove_dir_all(dir).unwrap();

    // Without --keep-logs a passing test leaves no log folder behind.
    let out = imgd(&h.store).args(["test", "hello", "--format", "kernel", "--timeout", "240"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let log = stderr.split("console log ").nth(1).and_then(|s| s.split_whitespace().next()).expect("log path");
    let dir = std::path::Path::new(log).parent().unwrap();
    assert!(!dir.exists(), "{} was left behind after a passing test", dir.display());
    assert!(!stderr.contains("console logs kept"), "{stderr}");
}
