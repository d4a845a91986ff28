//! The debian profile end to end: the locked base (mmdebstrap from the pooled
//! packages), build, boot the qcow2 with `imgd run --ssh`, reach `login:` on
//! the serial console, and log in with a real ssh client using the key the
//! profile installed; then offline rebuilds and their reproducibility.

use crate::common::*;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

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

    // sshd may come up just after the getty: retried for a bounded time.
    let cmd = "echo user=$(id -un) host=$(hostname); sudo -n true 2>/dev/null || echo in-sudo-group=$(id -nG)";
    let out = ssh_until_ok(&key, port, "ops", cmd, Duration::from_secs(120));
    assert!(out.contains("user=ops host=debian"), "{out}");
    assert!(out.contains("sudo"), "ops is in the sudo group: {out}");
    // Host keys were made on this machine at boot, not baked into the image.
    let keys = ssh(
        &key,
        port,
        "ops",
        "ls /etc/ssh/ssh_host_ed25519_key.pub && systemctl is-active imgd-ssh-hostkeys.service || true",
    );
    assert!(String::from_utf8_lossy(&keys.stdout).contains("ssh_host_ed25519_key.pub"));

    // Stopping imgd stops qemu.
    Command::new("kill").args(["-TERM", &run.id().to_string()]).status().unwrap();
    run.wait().unwrap();
    assert_no_process_mentions(&store);
}

/// The newest assembled base in the cache.
fn newest_base() -> std::path::PathBuf {
    let dir = cache_dir().join("debian/bases");
    std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "zst"))
        .max_by_key(|p| p.metadata().unwrap().modified().unwrap())
        .unwrap_or_else(|| panic!("no base in {}", dir.display()))
}

/// What differs between two `.tar.zst` files, member by member (header
/// fields and a digest of the content), at most 20 lines: a mismatch says
/// which file of the image is not reproducible.
fn tar_differences(a: &std::path::Path, b: &std::path::Path) -> Vec<String> {
    use std::io::Read;
    let members = |p: &std::path::Path| {
        let mut out = std::collections::BTreeMap::new();
        let mut ar = tar::Archive::new(zstd::Decoder::new(std::fs::File::open(p).unwrap()).unwrap());
        for (i, e) in ar.entries().unwrap().enumerate() {
            let mut e = e.unwrap();
            let h = e.header().clone();
            let mut data = Vec::new();
            e.read_to_end(&mut data).unwrap();
            let link = e.link_name().unwrap().map(|l| l.display().to_string()).unwrap_or_default();
            let what = format!(
                "#{i} type {:?} mode {:o} uid {} gid {} mtime {} size {} link {link:?} sha256 {}",
                h.entry_type(),
                h.mode().unwrap_or(0),
                h.uid().unwrap_or(0),
                h.gid().unwrap_or(0),
                h.mtime().unwrap_or(0),
                data.len(),
                &digest_hex(&data)[..16]
            );
            out.insert(e.path().unwrap().display().to_string(), what);
        }
        out
    };
    let (ma, mb) = (members(a), members(b));
    let mut diffs = Vec::new();
    for path in ma.keys().chain(mb.keys().filter(|k| !ma.contains_key(*k))) {
        match (ma.get(path), mb.get(path)) {
            (Some(x), Some(y)) if x == y => {}
            (x, y) => diffs.push(format!("{path}: {} / {}", x.map_or("absent", |s| s), y.map_or("absent", |s| s))),
        }
    }
    diffs.truncate(20);
    diffs
}

fn digest_hex(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(data))
}

/// `imgd build` with no network at all: a network namespace of its own,
/// with only a loopback that is down. `cache`: another cache folder.
fn build_offline(store: &std::path::Path, cache: Option<&std::path::Path>, args: &[&str]) -> serde_json::Value {
    json(&ok(&mut offline(store, cache, args)))
}

fn offline(store: &std::path::Path, cache: Option<&std::path::Path>, args: &[&str]) -> Command {
    let mut c = imgd(store);
    if let Some(cache) = cache {
        c.env("IMGD_CACHE", cache);
    }
    let program = c.get_program().to_owned();
    let mut wrapped = Command::new("unshare");
    wrapped.arg("--net").arg(program).arg("build").args(args).arg("--json");
    for (k, v) in c.get_envs() {
        if let Some(v) = v {
            wrapped.env(k, v);
        }
    }
    wrapped.current_dir(repo());
    wrapped
}

/// Whether an mmdebstrap, in its own mount namespace, has something mounted
/// under `dir` (its chroot's /proc, /sys, /dev).
fn mmdebstrap_mounted_under(dir: &std::path::Path) -> bool {
    let dir = dir.to_str().unwrap();
    std::fs::read_dir("/proc").unwrap().flatten().any(|p| {
        let comm = std::fs::read_to_string(p.path().join("comm")).unwrap_or_default();
        comm.trim() == "mmdebstrap"
            && std::fs::read_to_string(p.path().join("mountinfo")).unwrap_or_default().contains(dir)
    })
}

/// A process whose command line, working folder or root is under `dir`.
fn process_in(dir: &std::path::Path) -> Option<String> {
    let dir = dir.to_str().unwrap();
    std::fs::read_dir("/proc").unwrap().flatten().find_map(|p| {
        let cmdline = std::fs::read(p.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        let link = |l: &str| std::fs::read_link(p.path().join(l)).map(|t| t.display().to_string()).unwrap_or_default();
        let (cwd, root) = (link("cwd"), link("root"));
        [&cmdline, &cwd, &root].iter().any(|s| s.contains(dir)).then(|| format!("{cmdline} (cwd {cwd}, root {root})"))
    })
}

/// An assembly killed (with imgd, by SIGKILL) while mmdebstrap has its
/// chroot's /proc, /sys and /dev mounted leaves no mount in the host's
/// namespace, no process behind, and its chroot in the folder the next
/// assembly sweeps.
fn kill_mid_assembly(store: &std::path::Path, cache: &std::path::Path) {
    let mut build =
        offline(store, Some(cache), &["debian"]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let t = Instant::now();
    while !mmdebstrap_mounted_under(cache) {
        assert!(build.try_wait().unwrap().is_none(), "the build ended before mmdebstrap mounted anything");
        assert!(t.elapsed() < Duration::from_secs(300), "mmdebstrap mounted nothing in 300 s");
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("figure debian assembly killed {:.1}s in, with its mounts up", t.elapsed().as_secs_f64());
    build.kill().unwrap();
    build.wait().unwrap();
    // mmdebstrap, dpkg and the maintainer scripts end with it (bounded: the
    // kernel's kills take a moment to land).
    let t = Instant::now();
    while let Some(p) = process_in(cache) {
        assert!(t.elapsed() < Duration::from_secs(10), "still running after the kill: {p}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let host = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!host.contains(cache.to_str().unwrap()), "mounted in the host's namespace:\n{host}");
    let left: Vec<_> = std::fs::read_dir(cache.join("debian/bases"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(".assemble-"))
        .collect();
    assert_eq!(left.len(), 1, "one work folder left by the killed assembly");
    let chroot = std::fs::read_dir(left[0].path())
        .unwrap()
        .flatten()
        .any(|e| e.file_name().to_string_lossy().starts_with("mmdebstrap."));
    assert!(chroot, "mmdebstrap's chroot is in the work folder, not in /tmp");
}

#[test]
fn the_locked_base_rebuilds_offline_after_a_profile_change_and_lists_every_package() {
    let d = tempfile::tempdir().unwrap();
    let one = d.path().join("one");
    // Every format: root filesystem tarball, raw, qcow2, VHD (and the SBOM).
    let first = &debian().manifest;
    let base = newest_base();

    // What is inside: the manifest lists every installed package, and an
    // SPDX 2.3 SBOM beside the artifacts describes the same set.
    let installed = first["recipe"]["base"]["debian"]["packages"].as_array().unwrap().clone();
    let lock: toml::Table = std::fs::read_to_string(repo().join("profiles/debian.lock")).unwrap().parse().unwrap();
    let locked = lock["package"].as_array().unwrap();
    assert_eq!(installed.len(), locked.len());
    let sbom_file = std::path::Path::new(first["path"].as_str().unwrap()).join("sbom.spdx.json");
    let sbom: serde_json::Value = serde_json::from_slice(&std::fs::read(&sbom_file).unwrap()).unwrap();
    assert_eq!(sbom["spdxVersion"], "SPDX-2.3");
    assert_eq!(sbom["SPDXID"], "SPDXRef-DOCUMENT");
    let pkgs = sbom["packages"].as_array().unwrap();
    assert_eq!(pkgs.len(), locked.len() + 1, "the image and each package");
    for (l, p) in locked.iter().zip(&pkgs[1..]) {
        assert_eq!(p["name"].as_str(), l["name"].as_str());
        assert_eq!(p["versionInfo"].as_str(), l["version"].as_str());
        assert_eq!(p["checksums"][0]["checksumValue"].as_str(), l["sha256"].as_str());
        let purl = p["externalRefs"][0]["referenceLocator"].as_str().unwrap();
        let name = purl.strip_prefix("pkg:deb/debian/").and_then(|r| r.split('@').next()).unwrap_or_default();
        assert_eq!(name.replace("%2B", "+"), l["name"].as_str().unwrap(), "{purl}");
    }
    let contains =
        sbom["relationships"].as_array().unwrap().iter().filter(|r| r["relationshipType"] == "CONTAINS").count();
    assert_eq!(contains, locked.len());
    let openssh = pkgs.iter().find(|p| p["name"] == "openssh-server").expect("openssh-server in the SBOM");
    assert!(installed.iter().any(|i| i["name"] == "openssh-server" && i["version"] == openssh["versionInfo"]));
    // Written from the image's dpkg database: what the package says of itself.
    assert_eq!(openssh["sourceInfo"], "built from Debian source package openssh", "{openssh}");
    assert!(openssh["supplier"].as_str().unwrap().contains("@"), "the Maintainer field: {openssh}");
    assert!(openssh["homepage"].as_str().unwrap().starts_with("https://"), "{openssh}");
    assert!(openssh["summary"].as_str().unwrap().contains("SSH"), "{openssh}");

    // A changed profile, no network: the cached base is reused.
    let t = Instant::now();
    let changed = build_offline(&one, None, &["debian", "--format", "tar", "--set", "hostname=elsewhere"]);
    eprintln!("figure debian rebuild after a profile change, offline, cached base: {:.1}s", t.elapsed().as_secs_f64());
    assert_ne!(changed["hash"], first["hash"]);
    // Builds link the unpacked base's files; what they change (the profile
    // adds user ops) must never reach the cache through a link.
    let unpacked = base.with_extension("").with_extension("tree");
    let passwd = std::fs::read_to_string(unpacked.join("root/etc/passwd")).unwrap();
    assert!(passwd.contains("root:x:0:0") && !passwd.contains("ops:"), "{passwd}");
}

/// The rest of the test above, on its own so that it runs beside it: its
/// mmdebstrap run is the longest single step of the suite. Killed once
/// first, mid-assembly.
#[test]
fn a_base_assembled_again_offline_from_the_pool_is_bit_identical() {
    let d = tempfile::tempdir().unwrap();
    let two = d.path().join("two");
    let first = &debian().manifest;
    let base = newest_base();
    let base_sha = tool("sha256sum", &[base.to_str().unwrap()]);
    // No cached base, no network: assembled again from the pool, with the
    // same bytes, and the same artifacts in a second store. A cache folder of
    // its own that shares only the package pool (and the deb cache), so the
    // other tests go on using the shared base meanwhile.
    let own = scratch_cache(&d.path().join("cache"));
    std::fs::create_dir_all(own.join("debian")).unwrap();
    std::os::unix::fs::symlink(cache_dir().join("debian/pool"), own.join("debian/pool")).unwrap();
    kill_mid_assembly(&two, &own);
    let t = Instant::now();
    let again = build_offline(&two, Some(&own), &["debian"]);
    eprintln!("figure debian base assembled offline from the pool: {:.1}s", t.elapsed().as_secs_f64());
    let bases: Vec<String> = std::fs::read_dir(own.join("debian/bases"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!bases.iter().any(|b| b.starts_with(".assemble-")), "the killed assembly's folder was swept: {bases:?}");
    let rebuilt = own.join("debian/bases").join(base.file_name().unwrap());
    let rebuilt_sha = tool("sha256sum", &[rebuilt.to_str().unwrap()]);
    if rebuilt_sha.split_whitespace().next() != base_sha.split_whitespace().next() {
        panic!("the base is not reproducible; members that differ:\n{}", tar_differences(&base, &rebuilt).join("\n"));
    }
    assert_eq!(again["hash"], first["hash"]);
    assert_eq!(again["artifacts"], first["artifacts"], "bit-identical artifacts in two stores");
    let formats: Vec<&str> =
        first["artifacts"].as_array().unwrap().iter().map(|a| a["format"].as_str().unwrap()).collect();
    for f in ["raw", "qcow2", "vhd", "tar", "sbom"] {
        assert!(formats.contains(&f), "{f} compared: {formats:?}");
    }
}

/// A lock whose lines carry each other's files (two packages' SHA-256 and
/// size swapped) is refused when the base is assembled, naming both: the
/// hash ties a line to a file, the package's own control fields tie it to
/// a package.
#[test]
fn a_lock_with_two_packages_files_swapped_is_refused_naming_both() {
    let lock: toml::Table = std::fs::read_to_string(repo().join("profiles/debian.lock")).unwrap().parse().unwrap();
    let mut lock = lock;
    let pkgs = lock.get_mut("package").unwrap().as_array_mut().unwrap();
    let find = |pkgs: &Vec<toml::Value>, n: &str| pkgs.iter().position(|p| p["name"].as_str() == Some(n)).unwrap();
    let (a, b) = (find(pkgs, "bash"), find(pkgs, "coreutils"));
    for key in ["sha256", "size"] {
        let (va, vb) = (pkgs[a][key].clone(), pkgs[b][key].clone());
        pkgs[a].as_table_mut().unwrap().insert(key.into(), vb);
        pkgs[b].as_table_mut().unwrap().insert(key.into(), va);
    }
    let swapped = toml::to_string(&lock).unwrap();
    let profile = std::fs::read_to_string(repo().join("profiles/debian.toml")).unwrap();
    let p = project(&[("debian.toml", &profile), ("debian.lock", &swapped)]);
    let d = tempfile::tempdir().unwrap();
    // Its own cache (no cached base for this lock) sharing the package pool.
    let own = scratch_cache(&d.path().join("cache"));
    std::fs::create_dir_all(own.join("debian")).unwrap();
    std::os::unix::fs::symlink(cache_dir().join("debian/pool"), own.join("debian/pool")).unwrap();
    // Both packages are in the pool (the real lock's build put them there).
    debian();
    let out = imgd(&d.path().join("s"))
        .env("IMGD_ROOT", p.path())
        .env("IMGD_CACHE", &own)
        .args(["build", "debian", "--format", "tar"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a swapped lock built: {err}");
    assert!(err.contains("the lock line bash ") && err.contains("that is coreutils "), "{err}");
    assert!(entries(&d.path().join("s")).is_empty(), "nothing in the store");
}
