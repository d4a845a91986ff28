//! Booting what was built, in real qemu under TCG: the iPXE kernel+initrd
//! directly, and every disk format through OVMF and systemd-boot.

use crate::common::*;

#[test]
fn hello_boots_to_its_marker_in_every_format() {
    let h = hello();
    for format in ["ipxe", "raw", "qcow2", "vhd"] {
        let out = imgd(&h.store).args(["test", "hello", "--boot", format, "--timeout", "240"]).output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{format} boot failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
        assert!(stdout.contains(&format!("{format}: `IMGD-HELLO-READY` after")), "{stdout}");
    }
}

#[test]
fn a_wrong_marker_fails_with_the_console_tail_and_leaves_no_qemu() {
    let h = hello();
    let store = h.store.to_str().unwrap().to_string();
    let out = imgd(&h.store)
        .args(["test", "hello", "--boot", "ipxe", "--timeout", "45", "--expect", "THIS-NEVER-APPEARS"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("timed out after 45s waiting for `THIS-NEVER-APPEARS`"), "{stderr}");
    assert!(stderr.contains("IMGD-HELLO-READY"), "the console tail is shown: {stderr}");
    let ps = std::process::Command::new("pgrep").args(["-f", &store]).output().unwrap();
    assert!(ps.stdout.is_empty(), "qemu still running: {}", String::from_utf8_lossy(&ps.stdout));
}

#[test]
fn hello_netboots_through_real_ipxe_from_imgd_serve() {
    let h = hello();
    for platform in ["pcbios", "efi"] {
        let out = imgd(&h.store)
            .args(["test", "hello", "--boot", "netboot", "--platform", platform, "--timeout", "240"])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{platform} netboot failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
        assert!(stdout.contains(&format!("netboot ({platform}): `IMGD-HELLO-READY` after")), "{stdout}");
        assert!(stdout.contains("iPXE fetched boot.ipxe, ipxe and 2 artifacts"), "{stdout}");
    }
}
