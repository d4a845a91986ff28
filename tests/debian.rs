//! The debian profile end to end: debootstrap, build, boot the qcow2 with
//! `imgd run --ssh`, reach `login:` on the serial console, and log in with a
//! real ssh client using the key the profile installed.

use crate::common::*;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[test]
fn debian_boots_to_login_and_accepts_ssh_with_the_profiles_key() {
    let d = tempfile::tempdir().unwrap();
    let key = d.path().join("key");
    tool("ssh-keygen", &["-q", "-t", "ed25519", "-N", "", "-C", "imgd-test", "-f", key.to_str().unwrap()]);
    let public = std::fs::read_to_string(d.path().join("key.pub")).unwrap();
    let users = format!(
        "users=[{{name=\"ops\",groups=[\"sudo\"],shell=\"/bin/bash\",ssh_authorized_keys=[\"{}\"]}}]",
        public.trim()
    );
    let store = d.path().join("store");
    let args = ["debian", "--set", &users];
    let m = build(&store, &args);
    let qcow2 = std::path::Path::new(m["path"].as_str().unwrap()).join("disk.qcow2");
    tool("qemu-img", &["check", qcow2.to_str().unwrap()]);

    let port = free_port();
    let mut run = imgd(&store)
        .arg("run")
        .args(args)
        .args(["--format", "qcow2", "--ssh", &port.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The login prompt has no newline after it.
    let console = wait_for_console(&mut run, "login:", Duration::from_secs(300));
    assert!(console.contains("Debian GNU/Linux 12"), "{console}");

    // sshd may come up just after the getty; retry for a bounded time.
    let ssh = |cmd: &str| {
        Command::new("ssh")
            .args(["-i", key.to_str().unwrap(), "-p", &port.to_string()])
            .args(["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes"])
            .args(["-o", "ConnectTimeout=10", "ops@127.0.0.1", cmd])
            .output()
            .unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    let out = loop {
        let o = ssh("echo user=$(id -un) host=$(hostname); sudo -n true 2>/dev/null || echo in-sudo-group=$(id -nG)");
        if o.status.success() {
            break String::from_utf8_lossy(&o.stdout).into_owned();
        }
        assert!(Instant::now() < deadline, "ssh never worked: {}", String::from_utf8_lossy(&o.stderr));
        std::thread::sleep(Duration::from_secs(3));
    };
    assert!(out.contains("user=ops host=debian"), "{out}");
    assert!(out.contains("sudo"), "ops is in the sudo group: {out}");
    // Host keys were made on this machine at boot, not baked into the image.
    let keys = ssh("ls /etc/ssh/ssh_host_ed25519_key.pub && systemctl is-active imgd-ssh-hostkeys.service || true");
    assert!(String::from_utf8_lossy(&keys.stdout).contains("ssh_host_ed25519_key.pub"));

    // Stopping imgd stops qemu.
    Command::new("kill").args(["-TERM", &run.id().to_string()]).status().unwrap();
    run.wait().unwrap();
    assert_no_process_mentions(&store);
}
