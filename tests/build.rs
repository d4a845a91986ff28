//! imgd build: manifest, cache hits, input hash, reproducibility.

use crate::common::*;
use std::collections::BTreeMap;

#[test]
fn hello_builds_every_format_with_a_complete_manifest() {
    let h = hello();
    let m = &h.manifest;
    let hash = m["hash"].as_str().unwrap();
    assert_eq!(hash.len(), 64);
    assert_eq!(m["name"].as_str().unwrap(), format!("{}-hello", &hash[..32]));
    assert_eq!(m["profile"], "hello");
    let files: BTreeMap<String, String> = m["artifacts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| (a["file"].as_str().unwrap().to_string(), a["format"].as_str().unwrap().to_string()))
        .collect();
    let want = [
        ("vmlinuz", "ipxe"),
        ("initrd", "ipxe"),
        ("boot.ipxe", "ipxe"),
        ("disk.raw", "raw"),
        ("disk.qcow2", "qcow2"),
        ("disk.vhd", "vhd"),
        ("rootfs.tar.zst", "tar"),
    ];
    for (f, fmt) in want {
        assert_eq!(files.get(f).map(String::as_str), Some(fmt), "artifact {f} in {files:?}");
    }
    // Every artifact's size and BLAKE3 are those of the file on disk (checked
    // with b3sum, as a user would).
    for a in m["artifacts"].as_array().unwrap() {
        let p = h.file(a["file"].as_str().unwrap());
        assert_eq!(std::fs::metadata(&p).unwrap().len(), a["size"].as_u64().unwrap());
        let sum = tool("b3sum", &[p.to_str().unwrap()]);
        assert_eq!(sum.split_whitespace().next().unwrap(), a["blake3"].as_str().unwrap(), "{}", p.display());
    }
    // The manifest on disk is the one printed.
    let on_disk: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(h.file("manifest.json")).unwrap()).unwrap();
    assert_eq!(on_disk["artifacts"], m["artifacts"]);
    // The script boots relative URLs, so it works from any HTTP base.
    let script = std::fs::read_to_string(h.file("boot.ipxe")).unwrap();
    assert!(script.starts_with("#!ipxe"), "{script}");
    assert!(script.contains("\nkernel vmlinuz initrd=initrd ") && script.contains("\ninitrd initrd\n"), "{script}");
    assert!(script.contains("console=ttyS0,115200"), "{script}");
}

#[test]
fn an_unchanged_profile_is_a_cache_hit() {
    let h = hello();
    let again = build(&h.store, &["hello"]);
    assert_eq!(again["cached"], true);
    assert_eq!(again["name"], h.manifest["name"]);
    assert_eq!(again["built_at"], h.manifest["built_at"], "the entry was not rebuilt");
    let hash = ok(imgd(&h.store).args(["hash", "hello"]));
    assert_eq!(String::from_utf8_lossy(&hash.stdout).trim(), h.manifest["hash"].as_str().unwrap());
}

#[test]
fn same_inputs_give_bit_identical_artifacts_in_another_store() {
    let h = hello();
    let other = tempfile::tempdir().unwrap();
    // Another store, another working directory, another time.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let m = build(&other.path().join("s"), &["hello"]);
    assert_eq!(m["cached"], false);
    assert_eq!(m["name"], h.manifest["name"]);
    assert_eq!(m["artifacts"], h.manifest["artifacts"], "artifacts differ between two builds");
    let a = std::fs::read(h.file("disk.raw")).unwrap();
    let b = std::fs::read(std::path::Path::new(m["path"].as_str().unwrap()).join("disk.raw")).unwrap();
    assert!(a == b, "disk.raw differs byte-wise");
}

/// The kernel package is unpacked once into imgd's cache and builds read it
/// from there; what a killed unpack left is never taken as whole, and a cache
/// that cannot be written costs time, not the build or its bytes.
#[test]
fn the_unpacked_kernel_is_kept_in_the_cache_and_never_changes_the_bytes() {
    let h = hello();
    let d = tempfile::tempdir().unwrap();
    let cache = scratch_cache(&d.path().join("cache"));
    let build_with = |store: &str, cache: &std::path::Path| {
        let out = ok(imgd(&d.path().join(store)).env("IMGD_CACHE", cache).args(["build", "hello", "--json"]));
        (json(&out), String::from_utf8_lossy(&out.stderr).into_owned())
    };

    let (first, _) = build_with("one", &cache);
    assert_eq!(first["artifacts"], h.manifest["artifacts"]);
    let kernels: Vec<std::path::PathBuf> = std::fs::read_dir(cache.join("kernels"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| !p.file_name().unwrap().to_string_lossy().starts_with('.'))
        .collect();
    assert_eq!(kernels.len(), 1, "{kernels:?}");
    let kept = &kernels[0];
    let deps = std::fs::read_dir(kept.join("lib/modules")).unwrap().next().unwrap().unwrap().path();
    assert!(deps.join("modules.dep").is_file(), "depmod ran once, in the cache");

    // A folder that lacks its completion mark (an unpack killed before the
    // rename, or a removal killed half way) is made again, not used.
    std::fs::remove_file(kept.join(".used")).unwrap();
    std::fs::remove_dir_all(kept.join("boot")).unwrap();
    let (second, _) = build_with("two", &cache);
    assert_eq!(second["artifacts"], h.manifest["artifacts"]);
    assert!(kept.join(".used").is_file() && kept.join("boot").is_dir());

    // No cache folder at all (a file where it would be): unpacked in the
    // build's own work folder, with a warning, and the same bytes.
    let blocked = d.path().join("blocked");
    std::fs::create_dir_all(&blocked).unwrap();
    std::os::unix::fs::symlink(cache.join("debs"), blocked.join("debs")).unwrap();
    std::fs::write(blocked.join("kernels"), "not a folder").unwrap();
    let (third, stderr) = build_with("three", &blocked);
    assert_eq!(third["artifacts"], h.manifest["artifacts"]);
    assert!(stderr.contains("cannot keep the unpacked kernel"), "{stderr}");
}

#[test]
fn imgd_gc_removes_unpacked_kernels_and_bases_no_build_used_lately() {
    let h = hello();
    let d = tempfile::tempdir().unwrap();
    let cache = scratch_cache(&d.path().join("cache"));
    let store = d.path().join("s");
    let build = || json(&ok(imgd(&store).env("IMGD_CACHE", &cache).args(["build", "hello", "--json"])));
    let gc =
        |args: &[&str]| imgd(&store).env("IMGD_CACHE", &cache).args(["gc", "--keep", "1"]).args(args).output().unwrap();
    let age = |path: &std::path::Path, days: u64| {
        let when = std::time::SystemTime::now() - std::time::Duration::from_secs(days * 86_400);
        std::fs::File::options().write(true).open(path).unwrap().set_modified(when).unwrap();
    };
    assert_eq!(build()["artifacts"], h.manifest["artifacts"]);
    let kernel = std::fs::read_dir(cache.join("kernels"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| !p.file_name().unwrap().to_string_lossy().starts_with('.'))
        .unwrap();
    let sha = kernel.file_name().unwrap().to_string_lossy().into_owned();
    // Debian bases as the cache holds them: a tarball and its unpacked tree,
    // marked used by the tree's node table. One idle for a month, one used
    // yesterday; and a folder imgd did not make, which is never touched.
    let bases = cache.join("debian/bases");
    let (old, young) = ("a".repeat(64), "b".repeat(64));
    for key in [&old, &young] {
        std::fs::create_dir_all(bases.join(format!("{key}.tree/root/etc"))).unwrap();
        std::fs::write(bases.join(format!("{key}.tree/root/etc/os-release")), "x".repeat(100_000)).unwrap();
        std::fs::write(bases.join(format!("{key}.tree/nodes.json")), "{}").unwrap();
        std::fs::write(bases.join(format!("{key}.tar.zst")), "tarball").unwrap();
    }
    age(&bases.join(format!("{old}.tree/nodes.json")), 30);
    age(&bases.join(format!("{young}.tree/nodes.json")), 1);
    // Tarballs whose tree was never unpacked: their own age is their use.
    let (lone_old, lone_young) = ("c".repeat(64), "d".repeat(64));
    for key in [&lone_old, &lone_young] {
        std::fs::write(bases.join(format!("{key}.tar.zst")), "tarball").unwrap();
    }
    age(&bases.join(format!("{lone_old}.tar.zst")), 30);
    age(&bases.join(format!("{lone_young}.tar.zst")), 1);
    let foreign = cache.join("kernels/not-made-by-imgd");
    std::fs::create_dir_all(&foreign).unwrap();
    std::fs::write(foreign.join(".used"), "").unwrap();
    age(&foreign.join(".used"), 30);

    // The kernel was used by the build just now: kept; the idle base goes.
    let out = gc(&[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains(&format!("removed Debian base {old} from the cache")), "{stdout}");
    assert!(stdout.contains(&format!("removed Debian base {lone_old} from the cache")), "{stdout}");
    assert!(!stdout.contains("kernel") && !stdout.contains(&young) && !stdout.contains(&lone_young), "{stdout}");
    assert!(!bases.join(format!("{old}.tree")).exists() && !bases.join(format!("{old}.tar.zst")).exists());
    assert!(
        bases.join(format!("{young}.tree/nodes.json")).is_file() && bases.join(format!("{young}.tar.zst")).is_file()
    );
    assert!(
        !bases.join(format!("{lone_old}.tar.zst")).exists() && bases.join(format!("{lone_young}.tar.zst")).is_file()
    );

    // A month later the kernel is idle too, and what it freed is shown.
    age(&kernel.join(".used"), 30);
    let out = gc(&[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line =
        stdout.lines().find(|l| l.starts_with(&format!("removed kernel {sha} from the cache ("))).expect(&stdout);
    let mib: u64 = line.rsplit('(').next().unwrap().trim_end_matches(" MiB)").parse().unwrap();
    assert!(mib > 100, "an unpacked Debian kernel is hundreds of MiB: {line}");
    assert!(stdout.contains(&format!("freed {mib} MiB in {}", cache.display())), "{stdout}");
    assert!(!kernel.exists() && foreign.is_dir(), "{stdout}");
    // A younger age limit than a day could take what a running build reads.
    let out = gc(&["--cache-unused", "1h"]);
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("at least 1d"));
    // (That a removed kernel is made again, with the same bytes, is
    // the_unpacked_kernel_is_kept_in_the_cache_and_never_changes_the_bytes.)
}

/// What differs from one build host to the next must not reach the bytes: the
/// store on another filesystem (tmpfs: another readdir order for the staging
/// tree), another collation (sv_SE sorts `_` and case unlike C, and mkfs.ext4
/// adds entries in alphasort order), another time zone, another umask.
#[test]
fn another_filesystem_locale_time_zone_and_umask_give_the_same_bytes() {
    let h = hello();
    let locales = tempfile::tempdir().unwrap();
    tool("localedef", &["-i", "sv_SE", "-f", "UTF-8", locales.path().join("sv_SE.UTF-8").to_str().unwrap()]);
    let shm = tempfile::tempdir_in("/dev/shm").unwrap();
    let mut c = std::process::Command::new("sh");
    c.args(["-c", "umask 077 && exec \"$0\" \"$@\"", env!("CARGO_BIN_EXE_imgd"), "build", "hello", "--json"])
        .current_dir(repo())
        .env("IMGD_ROOT", repo())
        .env("IMGD_STORE", shm.path().join("s"))
        .env("RUST_LOG", "warn")
        .env("LOCPATH", locales.path())
        .env("LC_ALL", "sv_SE.UTF-8")
        .env("TZ", "Pacific/Chatham")
        .env_remove("SOURCE_DATE_EPOCH");
    let m: serde_json::Value = serde_json::from_slice(&ok(&mut c).stdout).unwrap();
    assert_eq!(m["cached"], false);
    assert_eq!(m["name"], h.manifest["name"]);
    assert_eq!(m["artifacts"], h.manifest["artifacts"], "artifacts differ on another host set-up");
}

fn hash_of(root: &std::path::Path, profile: &str, cache: Option<&std::path::Path>) -> String {
    let store = tempfile::tempdir().unwrap();
    let mut c = imgd(store.path());
    c.env("IMGD_ROOT", root).args(["hash", profile]);
    if let Some(cache) = cache {
        c.env("IMGD_CACHE", cache);
    }
    String::from_utf8(ok(&mut c).stdout).unwrap().trim().to_string()
}

const SMALL: &str = r#"
hardware = "qemu-x86_64"
formats = ["tar"]
[base]
debs = ["busybox-static"]
[kernel]
deb = "linux-image-[0-9]*"
[[files]]
path = "/etc/data"
source = "data.txt"
"#;

#[test]
fn one_changed_byte_in_any_input_changes_the_hash() {
    let p = project(&[("small.toml", SMALL), ("data.txt", "payload\n")]);
    let base = hash_of(p.path(), "small", None);
    // An overlay source file.
    std::fs::write(p.path().join("profiles/data.txt"), "paylod\n").unwrap();
    let changed_source = hash_of(p.path(), "small", None);
    assert_ne!(changed_source, base);
    std::fs::write(p.path().join("profiles/data.txt"), "payload\n").unwrap();
    assert_eq!(hash_of(p.path(), "small", None), base, "restoring the byte restores the hash");
    // The profile itself.
    std::fs::write(p.path().join("profiles/small.toml"), SMALL.replace("/etc/data", "/etc/date")).unwrap();
    assert_ne!(hash_of(p.path(), "small", None), base);
    std::fs::write(p.path().join("profiles/small.toml"), SMALL).unwrap();
    // A base package: same name, one byte different.
    let real_cache = cache_dir();
    let cache = tempfile::tempdir().unwrap();
    std::fs::create_dir(cache.path().join("debs")).unwrap();
    for e in std::fs::read_dir(real_cache.join("debs")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), cache.path().join("debs").join(e.file_name())).unwrap();
    }
    assert_eq!(hash_of(p.path(), "small", Some(cache.path())), base, "a copied cache hashes the same");
    let bb = std::fs::read_dir(cache.path().join("debs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        // The profile's (x86_64) package: the cache also holds arm64's, and
        // which of the two a folder lists first depends on the filesystem.
        .find(|p| {
            let n = p.file_name().unwrap().to_str().unwrap();
            n.starts_with("busybox-static_") && n.ends_with("_amd64.deb")
        })
        .unwrap();
    let mut bytes = std::fs::read(&bb).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&bb, bytes).unwrap();
    assert_ne!(hash_of(p.path(), "small", Some(cache.path())), base);
}

#[test]
fn the_hash_ignores_paths_and_mtimes() {
    let p = project(&[("small.toml", SMALL), ("data.txt", "payload\n")]);
    let base = hash_of(p.path(), "small", None);
    let q = project(&[("small.toml", SMALL), ("data.txt", "payload\n")]);
    let f = std::fs::File::options().write(true).open(q.path().join("profiles/data.txt")).unwrap();
    f.set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(12345)).unwrap();
    assert_eq!(hash_of(q.path(), "small", None), base);
    // A profile given by path from another directory hashes the same too.
    let by_path = hash_of(q.path(), q.path().join("profiles/small.toml").to_str().unwrap(), None);
    assert_eq!(by_path, base);
}

#[test]
fn set_and_format_make_variants_without_copying_files() {
    let h = hello();
    let store = tempfile::tempdir().unwrap();
    let m = build(store.path(), &["hello", "--format", "tar", "--set", "hostname=web-7"]);
    assert_ne!(m["hash"], h.manifest["hash"]);
    assert_eq!(m["artifacts"].as_array().unwrap().len(), 1);
    let tar = std::path::Path::new(m["path"].as_str().unwrap()).join("rootfs.tar.zst");
    let out = tool("tar", &["--zstd", "-xOf", tar.to_str().unwrap(), "etc/hostname"]);
    assert_eq!(out, "web-7\n");
}

#[test]
fn tarball_and_directory_bases_with_an_explicit_kernel_boot() {
    // hello's own outputs as inputs: its rootfs tarball as a base, the same
    // tree unpacked as a directory base, and its kernel image plus modules
    // directory given explicitly, the way a Nix-built kernel arrives.
    let h = hello();
    let d = tempfile::tempdir().unwrap();
    let tree = d.path().join("tree");
    std::fs::create_dir(&tree).unwrap();
    tool("tar", &["--zstd", "-xf", h.file("rootfs.tar.zst").to_str().unwrap(), "-C", tree.to_str().unwrap()]);
    let modules = std::fs::read_dir(tree.join("lib/modules")).unwrap().next().unwrap().unwrap().path();
    let kernel =
        format!("[kernel]\nimage = \"{}\"\nmodules = \"{}\"\n", h.file("vmlinuz").display(), modules.display());
    let common = "hardware = \"qemu-x86_64\"\nformats = [\"ipxe\", \"raw\"]\ninit = \"/sbin/init\"\nready_marker = \"IMGD-HELLO-READY\"\ncmdline = \"panic=5\"\n";
    let from_tar = format!("{common}[base]\ntarball = \"{}\"\n{kernel}", h.file("rootfs.tar.zst").display());
    let from_dir = format!("{common}[base]\ndir = \"{}\"\n{kernel}", tree.display());
    let p = project(&[("from-tar.toml", &from_tar), ("from-dir.toml", &from_dir)]);
    let store = d.path().join("s");
    let out = imgd(&store)
        .env("IMGD_ROOT", p.path())
        .args(["test", "from-tar", "--format", "kernel", "--format", "raw", "--timeout", "240"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "from-tar: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    // The directory base gives the same root filesystem, byte for byte: the
    // initrd carries all of it (and the same kernel). So the boots above
    // stand for both bases; a boot of each was two more firmware boots.
    let artifact = |m: &serde_json::Value, name: &str| {
        let a = m["artifacts"].as_array().unwrap().iter().find(|a| a["name"] == name).cloned();
        a.unwrap_or_else(|| panic!("no {name} in {m}"))["blake3"].clone()
    };
    let built = |profile: &str| json(&ok(imgd(&store).env("IMGD_ROOT", p.path()).args(["build", profile, "--json"])));
    let (tar, dir) = (built("from-tar"), built("from-dir"));
    assert_eq!(tar["cached"], true, "imgd test built from-tar");
    assert_ne!(tar["hash"], dir["hash"]);
    for name in ["kernel", "initrd"] {
        assert_eq!(artifact(&tar, name), artifact(&dir, name), "{name} of the tarball and directory bases");
    }
}
