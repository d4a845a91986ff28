//! Netboot on a real (virtual) layer-2 network: a network namespace with a
//! bridge, the site's DHCP server (dnsmasq handing out addresses only, no
//! boot options) in a namespace of its own behind a veth, `imgd serve
//! --proxy-dhcp` on the bridge, and qemu machines on tap devices whose
//! firmware finds imgd by proxyDHCP alone. Nothing leaves the namespaces:
//! they have no route anywhere, and addresses are from 192.0.2.0/24
//! (documentation). Needs root (CI runs as root).

use crate::common::*;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const SERVER: &str = "192.0.2.1";

/// Two namespaces (`<name>` with the bridge, imgd and the machines;
/// `<name>-site` with the site's DHCP server) and the processes in them,
/// all removed on drop, failed test or not.
struct Lan {
    ns: String,
    site: String,
    children: Vec<Child>,
    taps: usize,
}

fn sh(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

impl Lan {
    fn new(tag: &str) -> Lan {
        assert!(rustix::process::geteuid().is_root(), "netboot tests need root (network namespaces, taps)");
        let ns = format!("imgd-{tag}-{}", std::process::id());
        let site = format!("{ns}-site");
        let lan = Lan { ns: ns.clone(), site: site.clone(), children: Vec::new(), taps: 0 };
        sh(&["ip", "netns", "add", &ns]);
        sh(&["ip", "netns", "add", &site]);
        for (n, cmd) in [
            (&ns, "link set lo up"),
            (&ns, "link add br0 type bridge"),
            (&ns, "addr add 192.0.2.1/24 dev br0"),
            (&ns, "link set br0 up"),
            (&ns, &format!("link add vsite type veth peer name eth0 netns {site}")),
            (&ns, "link set vsite master br0 up"),
            (&site, "link set lo up"),
            (&site, "addr add 192.0.2.2/24 dev eth0"),
            (&site, "link set eth0 up"),
        ] {
            let mut a = vec!["ip", "-n", n.as_str()];
            a.extend(cmd.split(' '));
            sh(&a);
        }
        lan
    }

    /// Starts `args` inside namespace `ns`, stdout piped.
    fn spawn(&mut self, ns: &str, args: &[&str], stderr: Stdio) -> &mut Child {
        let child = Command::new("ip")
            .args(["netns", "exec", ns])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("{args:?}: {e}"));
        self.children.push(child);
        self.children.last_mut().unwrap()
    }

    /// The site's DHCP server: addresses only, no boot file, no next-server.
    fn site_dhcp(&mut self) {
        let site = self.site.clone();
        self.spawn(
            &site,
            &[
                "dnsmasq",
                "--keep-in-foreground",
                "--conf-file=/dev/null",
                "--port=0",
                "--interface=eth0",
                "--bind-interfaces",
                "--dhcp-range=192.0.2.100,192.0.2.199,255.255.255.0,10m",
                "--dhcp-authoritative",
                "--leasefile-ro",
                "--pid-file",
                "--user=root",
            ],
            Stdio::null(),
        );
    }

    /// A tap on the bridge for one machine.
    fn tap(&mut self) -> String {
        let tap = format!("tap{}", self.taps);
        self.taps += 1;
        sh(&["ip", "-n", &self.ns, "tuntap", "add", "dev", &tap, "mode", "tap"]);
        sh(&["ip", "-n", &self.ns, "link", "set", &tap, "master", "br0", "up"]);
        tap
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
        let _ = Command::new("ip").args(["netns", "del", &self.site]).status();
    }
}

/// Every machine boots hello through iPXE.
const LAB: &str = "[[group]]\nname = \"lab\"\nprofile = \"hello\"\ndefault = true\n";

/// `imgd serve --proxy-dhcp br0` in the namespace with `machines` as its
/// machines file; returns its log file (stderr), once it listens.
fn serve(lan: &mut Lan, store: &Path, dir: &Path, machines: &str, extra: &[&str]) -> std::path::PathBuf {
    serve_under(lan, store, dir, machines, extra, &[])
}

/// `serve` run by the command `wrap` (e.g. `prlimit --nofile=…`).
fn serve_under(
    lan: &mut Lan,
    store: &Path,
    dir: &Path,
    machines: &str,
    extra: &[&str],
    wrap: &[&str],
) -> std::path::PathBuf {
    let machines_text = machines;
    let machines = dir.join("machines.toml");
    std::fs::write(&machines, machines_text).unwrap();
    let log = dir.join("serve.log");
    let f = std::fs::File::create(&log).unwrap();
    let ns = lan.ns.clone();
    let exe = env!("CARGO_BIN_EXE_imgd");
    let (store, machines) = (store.to_str().unwrap(), machines.to_str().unwrap());
    let root = repo();
    let (root_env, listen) = (format!("IMGD_ROOT={}", root.display()), format!("{SERVER}:8080"));
    let mut args = wrap.to_vec();
    args.extend([
        "env",
        "RUST_LOG=info",
        &root_env,
        exe,
        "serve",
        "--store",
        store,
        "--config",
        machines,
        "--listen",
        &listen,
        "--proxy-dhcp",
        "br0",
    ]);
    args.extend(extra);
    let child = lan.spawn(&ns, &args, Stdio::from(f));
    let deadline = Instant::now() + Duration::from_secs(30);
    while !std::fs::read_to_string(&log).unwrap_or_default().contains("listening on") {
        assert!(child.try_wait().unwrap().is_none(), "imgd serve exited:\n{}", std::fs::read_to_string(&log).unwrap());
        assert!(Instant::now() < deadline, "imgd serve did not start:\n{}", std::fs::read_to_string(&log).unwrap());
        std::thread::sleep(Duration::from_millis(100));
    }
    log
}

/// qemu on a tap of the LAN, its serial console on stdout.
#[derive(Clone, Copy, PartialEq)]
enum Firmware {
    /// SeaBIOS with the NIC's iPXE option ROM (Debian's ipxe-qemu).
    BiosIpxeRom,
    /// OVMF's own UEFI PXE (the NIC has no option ROM).
    UefiPxe,
    /// OVMF's own UEFI HTTP boot: its PXE turned off by OVMF's fw_cfg knobs,
    /// so the HTTP boot option is the one that runs.
    UefiHttp,
    /// AAVMF (aarch64 UEFI) HTTP boot, PXE turned off the same way.
    Aarch64Http,
}

/// A machine on the LAN; `secure_vars`: an OVMF variable store with keys
/// enrolled, booted with Secure Boot enforced (OVMF's secboot build, SMM,
/// so TCG).
fn machine(lan: &mut Lan, scratch: &Path, fw: Firmware, mac: &str, secure_vars: Option<&Path>) -> usize {
    let uefi = fw != Firmware::BiosIpxeRom;
    let tap = lan.tap();
    let (qemu, machine, code, vars) = match (fw, secure_vars) {
        (Firmware::Aarch64Http, _) => {
            ("qemu-system-aarch64", "virt", "/usr/share/AAVMF/AAVMF_CODE.fd", "/usr/share/AAVMF/AAVMF_VARS.fd")
        }
        (_, Some(v)) => {
            ("qemu-system-x86_64", "q35,smm=on", "/usr/share/OVMF/OVMF_CODE_4M.secboot.fd", v.to_str().unwrap())
        }
        _ => ("qemu-system-x86_64", "q35", "/usr/share/OVMF/OVMF_CODE_4M.fd", "/usr/share/OVMF/OVMF_VARS_4M.fd"),
    };
    let mut a: Vec<String> =
        [qemu, "-machine", machine, "-m", "1024", "-nographic", "-no-reboot"].map(String::from).to_vec();
    if fw == Firmware::Aarch64Http {
        a.extend(["-cpu", "max", "-accel", "tcg"].map(String::from));
    }
    if secure_vars.is_some() {
        a.extend(["-accel", "tcg", "-global", "driver=cfi.pflash01,property=secure,value=on"].map(String::from));
    }
    a.extend(["-serial", "stdio", "-monitor", "none", "-display", "none"].map(String::from));
    a.push("-netdev".into());
    a.push(format!("tap,id=n0,ifname={tap},script=no,downscript=no"));
    if uefi {
        // As imgd runs them: no display card for the firmware to draw on.
        a.extend(["-vga", "none"].map(String::from));
        let own_vars = scratch.join(format!("vars-{tap}.fd"));
        std::fs::copy(vars, &own_vars).unwrap();
        a.push("-drive".into());
        a.push(format!("if=pflash,format=raw,unit=0,readonly=on,file={code}"));
        a.push("-drive".into());
        a.push(format!("if=pflash,format=raw,unit=1,file={}", own_vars.display()));
        if matches!(fw, Firmware::UefiHttp | Firmware::Aarch64Http) {
            for knob in ["IPv4PXESupport", "IPv6PXESupport"] {
                a.push("-fw_cfg".into());
                a.push(format!("name=opt/org.tianocore/{knob},string=n"));
            }
        }
        // No option ROM: the firmware's own network stack does the netboot.
        a.push("-device".into());
        a.push(format!("virtio-net-pci,netdev=n0,mac={mac},romfile=,bootindex=1"));
    } else {
        a.push("-device".into());
        a.push(format!("virtio-net-pci,netdev=n0,mac={mac},bootindex=1"));
    }
    let ns = lan.ns.clone();
    let args: Vec<&str> = a.iter().map(String::as_str).collect();
    lan.spawn(&ns, &args, Stdio::null());
    lan.children.len() - 1
}

/// imgd serve's /metrics, asked from inside the namespace.
fn metrics(lan: &Lan) -> String {
    let out = Command::new("ip")
        .args(["netns", "exec", &lan.ns, "curl", "-sS", "--max-time", "10", &format!("http://{SERVER}:8080/metrics")])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `/status.json`, asked from the server's own address (the one
/// `--status-allow` lets in). The table notes a download's end a moment
/// after the machine has its last byte: asked until every machine in it is
/// done or refused (bounded).
fn status(lan: &Lan) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &lan.ns,
                "curl",
                "-sS",
                "--max-time",
                "10",
                &format!("http://{SERVER}:8080/status.json"),
            ])
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
        let settled = v["machines"].as_array().unwrap().iter().all(|m| m["step"] == "done" || m["step"] == "refused");
        if settled || Instant::now() > deadline {
            return v;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The steps of `mac`'s current boot as `/status.json` lists them.
fn steps_of(status: &serde_json::Value, mac: &str) -> Vec<String> {
    let row = status["machines"].as_array().unwrap().iter().find(|m| m["mac"] == mac);
    let row = row.unwrap_or_else(|| panic!("{mac} not in the status: {status}"));
    row["history"].as_array().unwrap().iter().map(|h| h[0].as_str().unwrap().to_string()).collect()
}

/// The value of one counter line in /metrics (0 when absent).
fn counter(metrics: &str, series: &str) -> u64 {
    metrics.lines().find_map(|l| l.strip_prefix(series)?.trim().parse().ok()).unwrap_or(0)
}

fn boots(fw: Firmware, mac: &str, tag: &str) -> (String, String, String, serde_json::Value) {
    boots_with(fw, mac, tag, &hello().store, LAB, Duration::from_secs(90), None)
}

/// A machine with firmware `fw` netboots from `store` served with `machines`
/// until hello's marker: (console, serve's log, /metrics, /status.json).
fn boots_with(
    fw: Firmware,
    mac: &str,
    tag: &str,
    store: &Path,
    machines: &str,
    limit: Duration,
    secure_vars: Option<&Path>,
) -> (String, String, String, serde_json::Value) {
    let boot = Boot { fw, mac, tag, store, machines, limit, secure_vars };
    boot.until(&["IMGD-HELLO-READY"])
}

/// One machine booting from `imgd serve` on a LAN of its own.
struct Boot<'a> {
    fw: Firmware,
    mac: &'a str,
    tag: &'a str,
    store: &'a Path,
    machines: &'a str,
    limit: Duration,
    secure_vars: Option<&'a Path>,
}

impl Boot<'_> {
    /// The console up to the first of `markers`, serve's log, /metrics and
    /// /status.json; on a failure, serve's log with the console.
    fn until(&self, markers: &[&str]) -> (String, String, String, serde_json::Value) {
        let dir = tempfile::tempdir().unwrap();
        let mut lan = Lan::new(self.tag);
        lan.site_dhcp();
        let me = format!("{SERVER}/32");
        let log = serve(&mut lan, self.store, dir.path(), self.machines, &["--status-allow", &me]);
        let i = machine(&mut lan, dir.path(), self.fw, self.mac, self.secure_vars);
        let child = &mut lan.children[i];
        let waited =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| wait_for_any(child, markers, self.limit)));
        let log = std::fs::read_to_string(log).unwrap();
        match waited {
            Ok(console) => (console, log, metrics(&lan), status(&lan)),
            Err(e) => panic!("{}\nimgd serve's log:\n{log}", panic_text(&*e)),
        }
    }
}

fn panic_text(e: &(dyn std::any::Any + Send)) -> String {
    e.downcast_ref::<String>().cloned().or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string())).unwrap_or_default()
}

#[test]
fn uefi_pxe_firmware_netboots_through_proxy_dhcp_and_tftp() {
    let (console, log, m, status) = boots(Firmware::UefiPxe, "52:54:00:00:07:01", "uefipxe");
    // The firmware's own PXE took the proxy offer, fetched snponly.efi over
    // TFTP; that iPXE asked again and was sent to the script over HTTP.
    assert!(log.contains("client=UefiPxe") && log.contains("proxyDHCP: boot snponly.efi"), "{log}");
    assert!(log.contains("TFTP: sending snponly.efi"), "{log}");
    assert!(log.contains("client=Ipxe") && log.contains(&format!("boot http://{SERVER}:8080/boot.ipxe")), "{log}");
    assert!(console.contains("IMGD-HELLO-READY"));
    // /metrics counts it: the firmware's offer and 4011 ack, the loader, iPXE's offer.
    for series in [
        "imgd_proxydhcp_packets_total{client=\"uefi_pxe\",reply=\"offer\"}",
        "imgd_proxydhcp_packets_total{client=\"uefi_pxe\",reply=\"ack\"}",
        "imgd_proxydhcp_packets_total{client=\"ipxe\",reply=\"offer\"}",
        "imgd_tftp_requests_total{file=\"snponly.efi\",outcome=\"sent\"}",
    ] {
        assert!(counter(&m, series) >= 1, "{series} not counted:\n{m}");
    }
    // /status.json: the machine's row went through every step, in order.
    assert_eq!(
        steps_of(&status, "52:54:00:00:07:01"),
        ["offer", "loader", "script", "kernel", "initrd", "done"],
        "{status}"
    );
}

#[test]
fn the_nics_ipxe_rom_under_seabios_goes_straight_to_the_script() {
    let (_console, log, _, _) = boots(Firmware::BiosIpxeRom, "52:54:00:00:00:01", "biosipxe");
    assert!(log.contains("client=Ipxe") && log.contains(&format!("boot http://{SERVER}:8080/boot.ipxe")), "{log}");
    assert!(!log.contains("TFTP: sending"), "iPXE needs no loader: {log}");
}

#[test]
fn uefi_http_boot_firmware_netboots_through_proxy_dhcp() {
    let (_console, log, _, _) = boots(Firmware::UefiHttp, "52:54:00:00:10:01", "uefihttp");
    // The firmware's HTTP boot took the proxy's URL and fetched iPXE over
    // HTTP; no TFTP at all.
    let url = format!("boot http://{SERVER}:8080/loaders/snponly.efi");
    assert!(log.contains("client=UefiHttp") && log.contains(&url), "{log}");
    assert!(!log.contains("TFTP: sending"), "{log}");
    assert!(log.contains("client=Ipxe"), "{log}");
}

/// `http_boot = "uki"`: the firmware is handed the entry's unified kernel
/// image and boots it itself; no iPXE, no script, no TFTP.
#[test]
fn uefi_http_boot_firmware_boots_the_groups_uki_without_ipxe() {
    let h = hello();
    let mac = "52:54:00:00:16:02";
    let machines = format!(
        "[[group]]\nname = \"uki\"\nprofile = \"hello\"\nhttp_boot = \"uki\"\nselector = {{ mac = \"{mac}\" }}\n\n{LAB}"
    );
    let (_console, log, m, status) =
        boots_with(Firmware::UefiHttp, mac, "ukihttp", &h.store, &machines, Duration::from_secs(90), None);
    let entry = h.manifest["name"].as_str().unwrap();
    let url = format!("boot http://{SERVER}:8080/artifacts/{entry}/hello.efi");
    assert!(log.contains("client=UefiHttp") && log.contains(&url), "{log}");
    assert!(!log.contains("client=Ipxe") && !log.contains("TFTP: sending"), "iPXE was not needed: {log}");
    assert!(m.contains("endpoint=\"artifacts\""), "{m}");
    // A machine that asks for nothing but its UKI is done once it has it whole.
    assert_eq!(steps_of(&status, mac), ["offer", "uki", "done"], "{status}");
}

/// aarch64 machines netboot too: AAVMF's HTTP boot fetches the arm64 UKI
/// (Debian ships no arm64 iPXE, so this is the way). TCG, so slower.
#[test]
fn aarch64_uefi_http_boot_boots_the_arm64_uki() {
    let d = tempfile::tempdir().unwrap();
    let store = d.path().join("store");
    let m = build(&store, &["hello", "--hardware", "metal-aarch64"]);
    assert_eq!(m["arch"], "aarch64");
    let entry = m["name"].as_str().unwrap();
    let mac = "52:54:00:00:19:01";
    let machines = format!(
        "[[group]]\nname = \"arm\"\nentry = \"{entry}\"\nhttp_boot = \"uki\"\nselector = {{ mac = \"{mac}\" }}\n"
    );
    let (_console, log, _, _) =
        boots_with(Firmware::Aarch64Http, mac, "armhttp", &store, &machines, Duration::from_secs(240), None);
    let url = format!("boot http://{SERVER}:8080/artifacts/{entry}/hello.efi");
    assert!(log.contains("arch=19") && log.contains(&url), "{log}");
}

/// Secure Boot over the network: with `signed_with`, HTTP boot firmware is
/// sent the UKI's signed copy (`imgd sign`) and OVMF, enforcing Secure Boot
/// with that certificate enrolled, boots it. Without it, the same firmware
/// gets the unsigned UKI and refuses it.
#[test]
fn secure_boot_firmware_boots_the_signed_uki_over_http_and_refuses_the_unsigned_one() {
    let d = tempfile::tempdir().unwrap();
    let store = d.path().join("store");
    let m = build(&store, &["hello"]);
    let entry = m["name"].as_str().unwrap();
    let (key, cert) = crate::secureboot::keypair(d.path(), "db");
    ok(imgd(&store).args(["sign", "hello", "--key", key.to_str().unwrap(), "--cert", cert.to_str().unwrap()]));
    let vars = d.path().join("enrolled.fd");
    imgd::qemu::enrol_vars(&cert, &vars).unwrap();
    let mac = "52:54:00:00:5b:01";
    let group = |signed: &str| {
        format!(
            "[[group]]\nname = \"secure\"\nentry = \"{entry}\"\nhttp_boot = \"uki\"\n{signed}selector = {{ mac = \"{mac}\" }}\n"
        )
    };
    let signed = group(&format!("signed_with = {:?}\n", cert.to_str().unwrap()));
    let (_c, log, _, _) =
        boots_with(Firmware::UefiHttp, mac, "sbhttp", &store, &signed, Duration::from_secs(150), Some(&vars));
    let fp = imgd::sign::cert_fingerprint(&cert).unwrap();
    assert!(log.contains(&format!("boot http://{SERVER}:8080/signed/{entry}/{}/hello.efi", &fp[..32])), "{log}");

    // The unsigned image to the same firmware: refused, no marker. Watched
    // until the refusal, not for a minute of the firmware's boot menu.
    let unsigned = group("");
    let boot = Boot {
        fw: Firmware::UefiHttp,
        mac,
        tag: "sbhttp2",
        store: &store,
        machines: &unsigned,
        limit: Duration::from_secs(90),
        secure_vars: Some(&vars),
    };
    let (console, log, ..) = boot.until(&["Access Denied", "Security Violation", "IMGD-HELLO-READY"]);
    assert!(!console.contains("IMGD-HELLO-READY"), "the unsigned UKI booted under Secure Boot:\n{console}");
    assert!(log.contains(&format!("/{entry}/")) && log.contains("hello.efi"), "the UKI was offered:\n{log}");
}

/// Every machine boots hello through iPXE; scripts and files are signed,
/// and the group asks iPXE to verify each.
fn verifying_lab(dir: &Path) -> String {
    ipxe_pki(dir);
    format!("[ipxe_signing]\nkey = \"sign.key\"\ncert = \"sign.crt\"\n\n{LAB}verify = true\n")
}

/// Debian's iPXE has no `imgverify`: a `verify = true` group's machine
/// running it is refused (the script stops at the first check), never
/// booted unchecked, and the console says why.
#[test]
fn a_verify_group_never_boots_on_an_ipxe_that_cannot_check_signatures() {
    let h = hello();
    let dir = tempfile::tempdir().unwrap();
    let mut lan = Lan::new("noverify");
    lan.site_dhcp();
    let log = serve(&mut lan, &h.store, dir.path(), &verifying_lab(dir.path()), &[]);
    let i = machine(&mut lan, dir.path(), Firmware::UefiPxe, "52:54:00:00:5c:01", None);
    let console = wait_for_console(&mut lan.children[i], "has verify = true)", Duration::from_secs(90));
    let log = std::fs::read_to_string(log).unwrap();
    assert!(!console.contains("IMGD-HELLO-READY"), "{console}");
    assert!(console.contains("imgd: not booting") && console.contains("imgverify: command not found"), "{console}");
    assert!(log.contains("step=script") && !log.contains("step=initrd"), "stopped before the initrd:\n{log}");
}

/// The console of machine `i` up to `marker` (2 minutes at most); on a
/// failure, imgd serve's log with it.
fn console_or_log(lan: &mut Lan, i: usize, marker: &str, log: &Path) -> String {
    let child = &mut lan.children[i];
    let waited = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        wait_for_console(child, marker, Duration::from_secs(120))
    }));
    waited.unwrap_or_else(|e| {
        panic!("{}\nimgd serve's log:\n{}", panic_text(&*e), std::fs::read_to_string(log).unwrap_or_default())
    })
}

/// With a verifying iPXE (IMAGE_TRUST_CMD, the test root built in by
/// scripts/build-verifying-ipxe.sh, pxe/verify-embed.ipxe embedded), a
/// machine boots hello with every script and file checked; when the
/// artifact mirror serves an initrd with one byte changed, iPXE refuses it.
/// Debian packages iPXE without imgverify and its sources are not on this
/// machine's package mirror, so this needs an iPXE source tree:
/// `IMGD_TEST_IPXE_SRC=/path/to/ipxe cargo test --release --test integration -- --ignored verifying_ipxe`.
#[test]
#[ignore = "needs an iPXE source tree in IMGD_TEST_IPXE_SRC (Debian's iPXE cannot verify)"]
fn a_verifying_ipxe_boots_signed_files_and_refuses_a_tampered_initrd() {
    let src = std::env::var("IMGD_TEST_IPXE_SRC").expect("IMGD_TEST_IPXE_SRC: an iPXE source tree");
    let h = hello();
    let entry = h.manifest["name"].as_str().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let machines = verifying_lab(dir.path());
    let ipxe = dir.path().join("ipxe");
    let built = Command::new(repo().join("scripts/build-verifying-ipxe.sh"))
        .args([Path::new(&src), &dir.path().join("ca.crt"), &ipxe])
        .output()
        .unwrap();
    assert!(built.status.success(), "{}", String::from_utf8_lossy(&built.stderr));
    // An artifact mirror (untrusted, as S3 or a CDN would be) with a copy of the entry.
    let mirror = dir.path().join("mirror");
    std::fs::create_dir_all(mirror.join(entry)).unwrap();
    for f in ["vmlinuz", "initrd"] {
        std::fs::copy(h.file(f), mirror.join(entry).join(f)).unwrap();
    }
    let mut lan = Lan::new("verify");
    lan.site_dhcp();
    let ns = lan.ns.clone();
    let m = mirror.to_str().unwrap();
    lan.spawn(&ns, &["python3", "-m", "http.server", "8081", "--bind", SERVER, "--directory", m], Stdio::null());
    let base = format!("http://{SERVER}:8081");
    let extra = ["--ipxe-dir", ipxe.to_str().unwrap(), "--artifact-base-url", &base];
    let log = serve(&mut lan, &h.store, dir.path(), &machines, &extra);
    let i = machine(&mut lan, dir.path(), Firmware::UefiPxe, "52:54:00:00:5d:01", None);
    let console = console_or_log(&mut lan, i, "IMGD-HELLO-READY", &log);
    let log_text = std::fs::read_to_string(&log).unwrap();
    assert!(console.contains("verifying iPXE"), "the embedded script ran:\n{console}");
    assert!(log_text.contains("TFTP: sending snponly.efi"), "{log_text}");
    let _ = lan.children[i].kill();

    // One byte of the mirror's initrd changed: the signature from imgd no longer matches.
    let initrd = mirror.join(entry).join("initrd");
    let mut bytes = std::fs::read(&initrd).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 1;
    std::fs::write(&initrd, bytes).unwrap();
    let j = machine(&mut lan, dir.path(), Firmware::UefiPxe, "52:54:00:00:5d:02", None);
    let console = console_or_log(&mut lan, j, "has verify = true)", &log);
    assert!(console.contains("Could not verify"), "iPXE's imgverify refused it:\n{console}");
    assert!(!console.contains("IMGD-HELLO-READY"), "{console}");
}

#[test]
fn tftp_sends_the_loaders_whole_and_nothing_else() {
    let h = hello();
    let dir = tempfile::tempdir().unwrap();
    let mut lan = Lan::new("tftp");
    let log = serve(&mut lan, &h.store, dir.path(), LAB, &[]);
    let curl = |args: &[&str]| {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &lan.ns, "curl", "-sS", "--max-time", "20", "--path-as-is"]).args(args);
        c.output().unwrap()
    };
    let want = std::fs::read("/usr/lib/ipxe/snponly.efi").unwrap();
    // RFC 2348 block sizes, the one above the cap included (the server
    // answers 1468, which fills an Ethernet frame).
    for blksize in ["512", "1468", "8192"] {
        let got = dir.path().join(format!("snp-{blksize}"));
        let url = format!("tftp://{SERVER}/snponly.efi");
        let out = curl(&["--tftp-blksize", blksize, "-o", got.to_str().unwrap(), &url]);
        assert!(out.status.success(), "blksize {blksize}: {}", String::from_utf8_lossy(&out.stderr));
        assert!(std::fs::read(&got).unwrap() == want, "blksize {blksize}: the bytes differ");
    }
    let bios = curl(&[&format!("tftp://{SERVER}/undionly.kpxe")]);
    assert_eq!(bios.stdout, std::fs::read("/usr/lib/ipxe/undionly.kpxe").unwrap());
    // Nothing but the loaders: no other file, no traversal, no writes.
    for path in ["../../../../etc/passwd", "/etc/passwd", "..%2f..%2fetc%2fpasswd", "ipxe.efi", "SNPONLY.EFI"] {
        let out = curl(&[&format!("tftp://{SERVER}/{path}")]);
        assert!(!out.status.success() && out.stdout.is_empty(), "{path} was served");
    }
    let upload = dir.path().join("x");
    std::fs::write(&upload, b"x").unwrap();
    let out = curl(&["-T", upload.to_str().unwrap(), &format!("tftp://{SERVER}/snponly.efi")]);
    assert!(!out.status.success(), "a write was accepted");
    let log = std::fs::read_to_string(log).unwrap();
    assert!(log.contains("TFTP: refused \"../../../../etc/passwd\""), "{log}");
    let m = metrics(&lan);
    assert_eq!(counter(&m, "imgd_tftp_requests_total{file=\"-\",outcome=\"refused\"}"), 5, "{m}");
    assert_eq!(counter(&m, "imgd_tftp_requests_total{file=\"snponly.efi\",outcome=\"sent\"}"), 3, "{m}");
    assert_eq!(counter(&m, "imgd_tftp_requests_total{file=\"-\",outcome=\"write_refused\"}"), 1, "{m}");
}

#[test]
fn an_interface_that_is_not_here_is_named_in_the_error() {
    let d = tempfile::tempdir().unwrap();
    let out = imgd(&d.path().join("s"))
        .args(["serve", "--serve-all", "--listen", "127.0.0.1:0", "--proxy-dhcp", "no-such-if0"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("--proxy-dhcp no-such-if0: no interface with that name or IPv4 address here"), "{stderr}");
    assert!(stderr.contains("lo (127.0.0.1)"), "the interfaces it has are listed: {stderr}");
}

/// A DHCP client in the site's namespace (across the veth, as a machine on
/// the segment): sends every packet of `bad` (hex), then a good PXE DISCOVER
/// until an OFFER with its xid comes back (bounded), and says `OFFER` or `NONE`.
const DHCP_CLIENT: &str = r#"
import socket, struct, sys, time
def discover(xid, op=1, htype=1, hlen=6, hops=0):
    h = struct.pack('!BBBBIHH4s4s4s4s16s64s128s', op, htype, hlen, hops, xid, 0, 0x8000, bytes(4), bytes(4),
                    bytes(4), bytes(4), bytes.fromhex('525400aabb01') + bytes(10), bytes(64), bytes(128))
    o = bytes([99, 130, 83, 99, 53, 1, 1, 60, 20]) + b'PXEClient:Arch:00007' + bytes([93, 2, 0, 7, 97, 17, 0])
    return h + o + bytes(range(1, 17)) + bytes([255])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, b'eth0')  # no route: broadcast out of the LAN's port
s.bind(('0.0.0.0', 68))
s.settimeout(0.3)
bad = []
for v in (0, 2, 3, 255): bad.append(discover(7, op=v))
for v in (0, 6, 32, 255): bad.append(discover(7, htype=v))
for v in (0, 5, 7, 16, 17, 64, 255): bad.append(discover(7, hlen=v))
good = discover(7)
for n in (0, 1, 4, 100, 235, 239, 240, 241): bad.append(good[:n])
bad.append(bytes([255]) * 300)
for p in bad:
    s.sendto(p, ('255.255.255.255', 67))
    s.sendto(p, (sys.argv[1], 4011))
print('sent', len(bad) * 2, flush=True)
end = time.time() + 15
while time.time() < end:
    s.sendto(discover(0x5eed), ('255.255.255.255', 67))
    try:
        while True:
            r, _ = s.recvfrom(2048)
            if len(r) > 8 and r[0] == 2 and struct.unpack('!I', r[4:8])[0] == 0x5eed:
                print('OFFER'); sys.exit(0)
    except socket.timeout:
        pass
print('NONE'); sys.exit(1)
"#;

#[test]
fn proxy_dhcp_survives_out_of_range_header_fields_and_still_offers() {
    let h = hello();
    let dir = tempfile::tempdir().unwrap();
    let mut lan = Lan::new("dhcpfuzz");
    let log = serve(&mut lan, &h.store, dir.path(), LAB, &[]);
    let site = lan.site.clone();
    let out = Command::new("timeout")
        .args(["60", "ip", "netns", "exec", &site, "python3", "-c", DHCP_CLIENT, SERVER])
        .output()
        .unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let log = std::fs::read_to_string(log).unwrap();
    assert!(said.contains("OFFER"), "no OFFER after the bad packets: {said}\n{log}");
    assert!(!log.contains("panicked") && !log.contains("proxyDHCP stopped"), "{log}");
    let m = metrics(&lan);
    // 24 bad packets, each on 67 and 4011: every one counted as left alone.
    assert!(counter(&m, "imgd_proxydhcp_packets_total{client=\"ignored\",reply=\"malformed\"}") >= 46, "{m}");
    assert!(counter(&m, "imgd_proxydhcp_packets_total{client=\"uefi_pxe\",reply=\"offer\"}") >= 1, "{m}");
}

/// 5,000 TFTP read requests from one address, each from a port of its own,
/// none ever acknowledged, each asking for the longest timeout RFC 2349 allows.
const TFTP_FLOOD: &str = r#"
import socket, sys, time
rrq = b'\x00\x01snponly.efi\x00octet\x00timeout\x00255\x00blksize\x001468\x00'
for i in range(5000):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.sendto(rrq, (sys.argv[1], 69))
    s.close()
    time.sleep(0.0005)  # paced so the kernel drops none: every request reaches the server
print('sent 5000', flush=True)
"#;

#[test]
fn a_tftp_flood_under_4096_open_files_leaves_http_and_a_new_tftp_client_served() {
    let h = hello();
    let dir = tempfile::tempdir().unwrap();
    let mut lan = Lan::new("tftpflood");
    let log = serve_under(&mut lan, &h.store, dir.path(), LAB, &[], &["prlimit", "--nofile=4096:4096", "--"]);
    let site = lan.site.clone();
    let flood = Command::new("timeout")
        .args(["120", "ip", "netns", "exec", &site, "python3", "-c", TFTP_FLOOD, SERVER])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&flood.stdout).contains("sent 5000"), "{}", String::from_utf8_lossy(&flood.stderr));
    // While the flood's transfers would still be waiting for ACKs: HTTP
    // answers and a client at another address gets its loader, whole.
    let ns = lan.ns.clone();
    let curl = |args: &[&str]| {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &ns, "curl", "-sS", "--max-time", "10"]).args(args);
        c.output().unwrap()
    };
    let health = curl(&["-o", "/dev/null", "-w", "%{http_code}", &format!("http://{SERVER}:8080/healthz")]);
    assert_eq!(String::from_utf8_lossy(&health.stdout), "200", "{}", String::from_utf8_lossy(&health.stderr));
    let entry = h.manifest["name"].as_str().unwrap();
    let kernel =
        curl(&["-o", "/dev/null", "-w", "%{http_code}", &format!("http://{SERVER}:8080/artifacts/{entry}/vmlinuz")]);
    assert_eq!(String::from_utf8_lossy(&kernel.stdout), "200");
    let got = curl(&[&format!("tftp://{SERVER}/snponly.efi")]);
    assert!(
        got.stdout == std::fs::read("/usr/lib/ipxe/snponly.efi").unwrap(),
        "{}",
        String::from_utf8_lossy(&got.stderr)
    );
    let m = metrics(&lan);
    let busy = counter(&m, "imgd_tftp_requests_total{file=\"snponly.efi\",outcome=\"busy\"}");
    let sent = counter(&m, "imgd_tftp_requests_total{file=\"snponly.efi\",outcome=\"sent\"}");
    assert!(busy >= 4_000 && sent <= 4 + 1, "the flood's address got 4 transfers: busy {busy}, sent {sent}\n{m}");
    let log = std::fs::read_to_string(log).unwrap();
    assert!(!log.contains("Too many open files"), "{log}");
}
