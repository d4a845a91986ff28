//! Unified kernel images and Secure Boot: the uki's sections checked with
//! binutils, `imgd sign` with keys made here, and OVMF with Secure Boot
//! enforced (the certificate enrolled by virt-fw-vars) booting the signed
//! image and refusing a changed one and one signed with another key.

use crate::common::*;
use std::path::{Path, PathBuf};

/// A self-signed key pair made with openssl (as a user would make a db key).
pub fn keypair(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let (key, cert) = (dir.join(format!("{name}.key")), dir.join(format!("{name}.crt")));
    tool(
        "openssl",
        &[
            "req",
            "-new",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "3650",
            "-subj",
            &format!("/CN=imgd test {name}/"),
            "-keyout",
            key.to_str().unwrap(),
            "-out",
            cert.to_str().unwrap(),
        ],
    );
    (key, cert)
}

fn uki_of(m: &serde_json::Value) -> (String, String) {
    let a = m["artifacts"].as_array().unwrap().iter().find(|a| a["format"] == "uki").expect("a uki artifact");
    (a["file"].as_str().unwrap().to_string(), a["blake3"].as_str().unwrap().to_string())
}

#[test]
fn the_uki_carries_the_kernel_initrd_and_command_line_as_pe_sections() {
    let h = hello();
    let (file, _) = uki_of(&h.manifest);
    assert_eq!(file, "hello.efi");
    let uki = h.file(&file);
    let d = tempfile::tempdir().unwrap();
    let out = |s: &str| d.path().join(s.trim_start_matches('.'));
    let mut args = vec![];
    for s in [".osrel", ".cmdline", ".linux", ".initrd"] {
        args.push("--dump-section".to_string());
        args.push(format!("{s}={}", out(s).display()));
    }
    let copy = d.path().join("copy.efi");
    let args: Vec<&str> =
        args.iter().map(String::as_str).chain([uki.to_str().unwrap(), copy.to_str().unwrap()]).collect();
    tool("objcopy", &args);
    // Exactly the bundle's kernel and initrd, the netboot command line, and
    // an os-release naming the build.
    assert_eq!(std::fs::read(out(".linux")).unwrap(), std::fs::read(h.file("vmlinuz")).unwrap());
    assert_eq!(std::fs::read(out(".initrd")).unwrap(), std::fs::read(h.file("initrd")).unwrap());
    let cmdline = std::fs::read_to_string(out(".cmdline")).unwrap();
    assert!(cmdline.starts_with("rdinit=/init console=ttyS0,115200"), "{cmdline}");
    let osrel = std::fs::read_to_string(out(".osrel")).unwrap();
    let hash = h.manifest["hash"].as_str().unwrap();
    assert!(
        osrel.contains("IMAGE_ID=hello\n") && osrel.contains(&format!("IMAGE_VERSION={}\n", &hash[..12])),
        "{osrel}"
    );
    // The stub's own sections are still there, and the file is a PE image
    // binutils reads as such.
    let headers = tool("objdump", &["-h", uki.to_str().unwrap()]);
    assert!(headers.contains("pei-x86-64") && headers.contains(".sdmagic") && headers.contains(".text"), "{headers}");
}

/// PCR 11 as `systemd-measure calculate` gives it for `uki`'s sections (as
/// binutils reads them out of the file): (phase, value) pairs, `phase`
/// `Some("")` for the value at kernel start, None for every boot phase.
fn systemd_measure(uki: &Path, phase: Option<&str>) -> Vec<(String, String)> {
    let d = tempfile::tempdir().unwrap();
    let mut args = vec!["calculate".to_string(), "--bank=sha256".into(), "--json=short".into()];
    for s in ["linux", "osrel", "cmdline", "initrd"] {
        let out = d.path().join(s);
        let section = format!(".{s}");
        tool("objcopy", &["-O", "binary", "--only-section", &section, uki.to_str().unwrap(), out.to_str().unwrap()]);
        args.push(format!("--{s}={}", out.display()));
    }
    if let Some(p) = phase {
        args.push(format!("--phase={p}"));
    }
    let out = std::process::Command::new("/usr/lib/systemd/systemd-measure").args(&args).output().unwrap();
    assert!(out.status.success(), "systemd-measure: {}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["sha256"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            assert_eq!(e["pcr"], 11);
            (e["phase"].as_str().unwrap_or("").to_string(), e["hash"].as_str().unwrap().to_string())
        })
        .collect()
}

/// The manifest's PCR 11 values (`pcr11` for the uki artifact, `disk_pcr11`
/// for the UKI on the raw disk's ESP) are what systemd's own calculator says
/// the stub measures: at kernel start (`--phase=`) and after each phase.
#[test]
fn the_manifest_records_the_pcr11_systemd_measure_calculates() {
    let h = hello();
    let d = tempfile::tempdir().unwrap();
    // The disk's UKI, read out of the ESP with mtools at the partition's offset.
    let disk = h.file("disk.raw");
    let parts: serde_json::Value = serde_json::from_str(&tool("sfdisk", &["--json", disk.to_str().unwrap()])).unwrap();
    let esp_at = parts["partitiontable"]["partitions"][0]["start"].as_u64().unwrap() * 512;
    let disk_uki = d.path().join("disk-uki.efi");
    let image = format!("{}@@{esp_at}", disk.display());
    tool("mcopy", &["-i", &image, "::/EFI/Linux/hello.efi", disk_uki.to_str().unwrap()]);
    for (uki, pcr) in [(h.file(&uki_of(&h.manifest).0), &h.manifest["pcr11"]), (disk_uki, &h.manifest["disk_pcr11"])] {
        let at_start = systemd_measure(&uki, Some(""));
        assert_eq!(at_start, vec![(String::new(), pcr["sha256"].as_str().unwrap().to_string())], "{}", uki.display());
        let phases = systemd_measure(&uki, None);
        assert_eq!(phases.len(), 4, "{phases:?}");
        for (phase, value) in phases {
            assert_eq!(pcr["phases_sha256"][&phase].as_str(), Some(value.as_str()), "phase {phase}");
        }
    }
    assert_ne!(h.manifest["pcr11"], h.manifest["disk_pcr11"], "the disk boots its own initramfs and command line");
}

#[test]
fn a_uki_is_for_uefi_hardware_only() {
    let d = tempfile::tempdir().unwrap();
    let store = d.path().join("s");
    // hello lists uki; on BIOS hardware its other formats still build.
    let uefi: serde_json::Value =
        serde_json::from_slice(&ok(imgd(&store).args(["hash", "hello", "--json"])).stdout).unwrap();
    assert!(uefi.to_string().contains("\"uki\""), "{uefi}");
    let out = ok(imgd(&store).args(["hash", "hello", "--hardware", "qemu-x86_64-bios", "--json"]));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(!v.to_string().contains("\"uki\""), "{v}");
    // Asked for by name there, it is bad input.
    let out =
        imgd(&store).args(["hash", "hello", "--hardware", "qemu-x86_64-bios", "--format", "uki"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("formats") && err.contains("boots by BIOS"), "{err}");
}

#[test]
fn a_signed_uki_boots_under_enforced_secure_boot_and_a_changed_or_foreign_one_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let store = d.path().join("store");
    let (key_a, cert_a) = keypair(d.path(), "a");
    let (key_b, cert_b) = keypair(d.path(), "b");
    let sign = |key: &Path, cert: &Path| -> serde_json::Value {
        let out = ok(imgd(&store).args(["sign", "hello", "--json", "--key"]).arg(key).arg("--cert").arg(cert));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let rec = sign(&key_a, &cert_a);
    let m: serde_json::Value =
        serde_json::from_slice(&ok(imgd(&store).args(["build", "hello", "--json"])).stdout).unwrap();
    assert_eq!(m["cached"], true, "signing left the build as it was");
    let (file, unsigned) = uki_of(&m);
    // The record names the certificate by the SHA-256 of its DER, as openssl
    // computes it, and the unsigned bytes it was made from.
    let fp = tool("openssl", &["x509", "-in", cert_a.to_str().unwrap(), "-noout", "-fingerprint", "-sha256"]);
    let fp: String = fp.split('=').nth(1).unwrap().trim().replace(':', "").to_lowercase();
    assert_eq!(rec["cert_sha256"], fp.as_str());
    assert_eq!(rec["files"][0]["unsigned_blake3"], unsigned.as_str());
    let signed = PathBuf::from(rec["path"].as_str().unwrap()).join(&file);
    tool("sbverify", &["--cert", cert_a.to_str().unwrap(), signed.to_str().unwrap()]);
    // The entry still holds the unsigned image its hash names.
    ok(imgd(&store).args(["verify"]));
    // The private key is nowhere in the store.
    let key_text = std::fs::read_to_string(&key_a).unwrap();
    let secret = key_text.lines().nth(1).unwrap();
    let grep = std::process::Command::new("grep").args(["-rqF", secret]).arg(&store).status().unwrap();
    assert_eq!(grep.code(), Some(1), "the key's text was found in the store");

    let boot = || {
        imgd(&store)
            .args(["test", "hello", "--format", "uki", "--timeout", "150", "--secure-boot"])
            .arg(&cert_a)
            .output()
            .unwrap()
    };
    let out = boot();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("uki (Secure Boot): `IMGD-HELLO-READY` after"), "{stdout}");

    let refused = |what: &str| {
        let out = boot();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{what} booted:\n{err}");
        assert!(err.contains("the firmware refused the image") && err.contains("Access Denied"), "{what}:\n{err}");
        assert!(!String::from_utf8_lossy(&out.stdout).contains("IMGD-HELLO-READY"));
        remove_kept_logs(&out);
    };
    // One byte changed inside the kernel section of the signed image.
    let good = std::fs::read(&signed).unwrap();
    let mut bad = good.clone();
    bad[good.len() / 2] ^= 0x01;
    std::fs::write(&signed, &bad).unwrap();
    refused("a changed image");
    // A correct signature, by a key the firmware does not trust.
    let rec_b = sign(&key_b, &cert_b);
    assert_ne!(rec_b["path"], rec["path"], "each certificate has a set of its own");
    std::fs::copy(PathBuf::from(rec_b["path"].as_str().unwrap()).join(&file), &signed).unwrap();
    refused("an image signed with another key");
    std::fs::write(&signed, &good).unwrap();

    // gc removes the signed sets with their entry.
    let mut other = std::fs::read_to_string(repo().join("profiles/hello.toml")).unwrap();
    other = other.replace("imgd hello image", "imgd hello image, changed");
    let proj = project(&[("hello.toml", &other)]);
    ok(imgd(&store).current_dir(proj.path()).env("IMGD_ROOT", proj.path()).args(["build", "hello", "--format", "uki"]));
    ok(imgd(&store).args(["gc", "--keep", "1"]));
    let left: Vec<_> = std::fs::read_dir(store.join(".signed")).unwrap().collect();
    assert!(left.is_empty(), "signed sets outlived their entry: {left:?}");
}

/// `[secure_boot]` in a profile: `imgd build` signs the uki after the build
/// (paths relative to the profile), the hash is the unsigned profile's, a
/// rebuild keeps the signature, and a missing certificate is a config error
/// naming file, line and key.
#[test]
fn a_profile_with_secure_boot_keys_is_signed_by_build_outside_its_hash() {
    let hello_text = std::fs::read_to_string(repo().join("profiles/hello.toml")).unwrap();
    let signed_text = format!("{hello_text}\n[secure_boot]\nkey = \"keys/db.key\"\ncert = \"keys/db.crt\"\n");
    let proj = project(&[("hello.toml", &signed_text)]);
    std::fs::create_dir_all(proj.path().join("profiles/keys")).unwrap();
    let (_key, cert) = keypair(&proj.path().join("profiles/keys"), "db");
    let store = proj.path().join("store");
    let build = |args: &[&str]| -> serde_json::Value {
        let out = ok(imgd(&store).env("IMGD_ROOT", proj.path()).args(["build", "hello", "--json"]).args(args));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let m = build(&["--format", "uki"]);
    let fp = tool("openssl", &["x509", "-in", cert.to_str().unwrap(), "-noout", "-fingerprint", "-sha256"]);
    let fp = fp.trim().rsplit('=').next().unwrap().replace(':', "").to_lowercase();
    assert_eq!(m["signed"]["cert_sha256"], fp.as_str(), "{m}");
    let dir = PathBuf::from(m["signed"]["path"].as_str().unwrap());
    tool("sbverify", &["--cert", cert.to_str().unwrap(), dir.join("hello.efi").to_str().unwrap()]);
    // The repository's hello (no keys) has the same hash: signing is not an input.
    let plain: serde_json::Value =
        serde_json::from_slice(&ok(imgd(&store).args(["hash", "hello", "--format", "uki", "--json"])).stdout).unwrap();
    assert_eq!(plain["hash"], m["hash"]);
    // A cache hit keeps the set it signed.
    let again = build(&["--format", "uki"]);
    assert_eq!((again["cached"].as_bool(), &again["signed"]), (Some(true), &m["signed"]));
    // A certificate that is not there: exit 2 at the key.
    std::fs::remove_file(&cert).unwrap();
    let out = imgd(&store).env("IMGD_ROOT", proj.path()).args(["build", "hello", "--format", "uki"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("profiles/hello.toml:") && stderr.contains("key `secure_boot.cert`"), "{stderr}");
}

/// `imgd sign` signs a UEFI entry's raw disk too: a copy whose ESP holds
/// signed systemd-boot and a signed UKI (still a clean FAT), which OVMF
/// enforcing Secure Boot boots, and refuses when it trusts another key.
#[test]
fn a_signed_disk_boots_under_secure_boot_and_is_refused_by_firmware_trusting_another_key() {
    let d = tempfile::tempdir().unwrap();
    let store = d.path().join("store");
    let (key_a, cert_a) = keypair(d.path(), "a");
    let (_key_b, cert_b) = keypair(d.path(), "b");
    let out = ok(imgd(&store).args(["sign", "hello", "--json", "--key"]).arg(&key_a).arg("--cert").arg(&cert_a));
    let rec: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let m: serde_json::Value =
        serde_json::from_slice(&ok(imgd(&store).args(["build", "hello", "--json"])).stdout).unwrap();
    let unsigned = m["artifacts"].as_array().unwrap().iter().find(|a| a["format"] == "raw").unwrap();
    let signed = rec["files"].as_array().unwrap().iter().find(|f| f["file"] == "disk.raw").expect("disk.raw signed");
    assert_eq!(signed["unsigned_blake3"], unsigned["blake3"]);
    assert_ne!(signed["blake3"], unsigned["blake3"]);
    let disk = PathBuf::from(rec["path"].as_str().unwrap()).join("disk.raw");
    let disk_s = disk.to_str().unwrap();
    tool("sfdisk", &["--verify", disk_s]);
    // The qcow2 and VHD copies hold the signed disk, byte for byte (qemu-img
    // compares the guest-visible contents), and pass qemu-img's own check.
    for (file, fmt) in [("disk.qcow2", "qcow2"), ("disk.vhd", "vpc")] {
        let f = rec["files"].as_array().unwrap().iter().find(|f| f["file"] == file);
        let from = m["artifacts"].as_array().unwrap().iter().find(|a| a["file"] == file).unwrap();
        assert_eq!(f.unwrap_or_else(|| panic!("{file} signed"))["unsigned_blake3"], from["blake3"]);
        let copy = disk.with_file_name(file);
        let copy = copy.to_str().unwrap();
        if fmt == "qcow2" {
            tool("qemu-img", &["check", copy]);
        }
        tool("qemu-img", &["compare", "-f", "raw", "-F", fmt, disk_s, copy]);
    }
    // The VHD keeps the entry's footer (size and identity), only the disk changed.
    let tail = |p: &Path| {
        let b = std::fs::read(p).unwrap();
        b[b.len() - 512..].to_vec()
    };
    let built_vhd = PathBuf::from(m["path"].as_str().unwrap()).join("disk.vhd");
    assert_eq!(tail(&disk.with_file_name("disk.vhd")), tail(&built_vhd));

    // The ESP, read with mtools and checked with fsck.vfat: both binaries
    // verify against the certificate.
    let parts: serde_json::Value = serde_json::from_str(&tool("sfdisk", &["--json", disk_s])).unwrap();
    let esp = &parts["partitiontable"]["partitions"][0];
    assert_eq!(esp["type"], "C12A7328-F81F-11D2-BA4B-00A0C93EC93B");
    let (start, size) = (esp["start"].as_u64().unwrap() * 512, esp["size"].as_u64().unwrap() * 512);
    let esp_img = d.path().join("esp.img");
    let dd = format!("skip={start}");
    tool(
        "dd",
        &[
            &format!("if={disk_s}"),
            &format!("of={}", esp_img.display()),
            "bs=1M",
            "iflag=skip_bytes,count_bytes",
            &dd,
            &format!("count={size}"),
        ],
    );
    tool("fsck.vfat", &["-n", esp_img.to_str().unwrap()]);
    for f in ["::/EFI/BOOT/BOOTX64.EFI", "::/EFI/Linux/hello.efi"] {
        let local = d.path().join("bin.efi");
        let _ = std::fs::remove_file(&local);
        tool("mcopy", &["-i", esp_img.to_str().unwrap(), f, local.to_str().unwrap()]);
        tool("sbverify", &["--cert", cert_a.to_str().unwrap(), local.to_str().unwrap()]);
    }

    let boot = |vars: Option<&Path>| {
        let mut c = imgd(&store);
        c.args(["test", "hello", "--format", "raw", "--timeout", "150", "--secure-boot"]).arg(&cert_a);
        if let Some(v) = vars {
            c.arg("--vars").arg(v);
        }
        c.output().unwrap()
    };
    let out = boot(None);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("raw (Secure Boot): `IMGD-HELLO-READY` after"), "{stdout}");
    // Firmware that trusts only key b refuses the disk key a signed.
    let vars_b = d.path().join("vars-b.fd");
    imgd::qemu::enrol_vars(&cert_b, &vars_b).unwrap();
    let out = boot(Some(&vars_b));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "booted with the wrong key enrolled:\n{err}");
    assert!(err.contains("the firmware refused the image") && err.contains("Access Denied"), "{err}");
    remove_kept_logs(&out);
}
