//! `imgd lock` against a real signed archive on loopback: a mirror made here
//! (Packages, Release, InRelease clear-signed by a key made here), served by
//! Python's http.server on 127.0.0.1, checked by gpgv against that key.

use crate::common::*;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

pub struct Mirror {
    dir: tempfile::TempDir,
    gnupg: PathBuf,
    keyring: PathBuf,
    server: Child,
    url: String,
}

impl Drop for Mirror {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}

/// (name, version, extra fields) of each package; the .deb bytes are made up
/// (lock only reads indexes and checksums).
type Pkgs<'a> = &'a [(&'a str, &'a str, &'a str)];

const ARCHIVE: Pkgs = &[
    ("dpkg", "1.21.22", "Essential: yes\nPriority: required\nPre-Depends: libc6 (>= 2.34)"),
    ("libc6", "2.36-9", "Priority: optional"),
    ("apt", "2.6.1", "Priority: important\nDepends: gpgv | gpgv2"),
    ("gpgv", "2.2.40-1", "Priority: optional"),
    ("tool", "1.0-1", "Priority: optional\nDepends: libtool1 (>= 1.0)"),
    ("libtool1", "1.0-1", "Priority: optional"),
    ("unrelated", "3", "Priority: optional"),
];

impl Mirror {
    pub fn new() -> Mirror {
        let dir = tempfile::tempdir().unwrap();
        let gnupg = dir.path().join("gnupg");
        std::fs::create_dir_all(&gnupg).unwrap();
        std::fs::set_permissions(&gnupg, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
        gpg(&gnupg, &["--quick-gen-key", "imgd test archive <archive@example.invalid>", "ed25519", "sign", "never"]);
        let keyring = dir.path().join("archive-keyring.gpg");
        let key = gpg(&gnupg, &["--export"]);
        std::fs::write(&keyring, key).unwrap();
        let root = dir.path().join("www");
        std::fs::create_dir_all(&root).unwrap();
        // `-u`: the line naming the port must not wait in Python's buffer.
        let (server, port) = spawn_on_own_port(
            Command::new("python3")
                .args(["-u", "-m", "http.server", "--bind", "127.0.0.1", "0", "--directory"])
                .arg(&root),
            Announces::Stdout,
            " port ",
        );
        let m = Mirror { dir, gnupg, keyring, server, url: format!("http://127.0.0.1:{port}/debian") };
        m.publish(ARCHIVE);
        m
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("www/debian")
    }

    /// Writes the pool, Packages(.gz), Release and a signed InRelease.
    fn publish(&self, pkgs: Pkgs) {
        let root = self.root();
        let mut index = String::new();
        for (name, version, extra) in pkgs {
            let file = format!("pool/main/{name}_{version}_amd64.deb");
            let body = format!("not really a deb: {name} {version}");
            std::fs::create_dir_all(root.join("pool/main")).unwrap();
            std::fs::write(root.join(&file), &body).unwrap();
            index.push_str(&format!(
                "Package: {name}\nVersion: {version}\nArchitecture: amd64\n{extra}\nFilename: {file}\nSize: {}\nSHA256: {}\n\n",
                body.len(),
                sha256(body.as_bytes())
            ));
        }
        let dists = root.join("dists/bookworm");
        std::fs::create_dir_all(dists.join("main/binary-amd64")).unwrap();
        std::fs::write(dists.join("main/binary-amd64/Packages"), &index).unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        std::io::Write::write_all(&mut gz, index.as_bytes()).unwrap();
        let gz = gz.finish().unwrap();
        std::fs::write(dists.join("main/binary-amd64/Packages.gz"), &gz).unwrap();
        let release = format!(
            "Origin: imgd test\nSuite: stable\nCodename: bookworm\nDate: Sat, 01 Aug 2026 10:00:00 UTC\n\
             Architectures: amd64\nComponents: main\nSHA256:\n {} {} main/binary-amd64/Packages\n {} {} main/binary-amd64/Packages.gz\n",
            sha256(index.as_bytes()),
            index.len(),
            sha256(&gz),
            gz.len()
        );
        std::fs::write(dists.join("Release"), &release).unwrap();
        let _ = std::fs::remove_file(dists.join("InRelease"));
        gpg(
            &self.gnupg,
            &[
                "--clearsign",
                "--output",
                dists.join("InRelease").to_str().unwrap(),
                dists.join("Release").to_str().unwrap(),
            ],
        );
    }

    /// A project whose profile has a Debian base on this mirror.
    pub fn project(&self, packages: &str) -> tempfile::TempDir {
        let profile = format!(
            "hardware = \"qemu-x86_64\"\nformats = [\"tar\"]\n[base.debian]\nsuite = \"bookworm\"\nmirror = \"{}\"\n\
             keyring = \"{}\"\npackages = [{packages}]\n[kernel]\nfrom_base = true\n",
            self.url,
            self.keyring.display()
        );
        project(&[("p.toml", &profile)])
    }
}

fn gpg(home: &Path, args: &[&str]) -> Vec<u8> {
    let out = Command::new("gpg")
        .arg("--homedir")
        .arg(home)
        .args(["--batch", "--quiet", "--pinentry-mode", "loopback", "--passphrase", ""])
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "gpg {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

fn sha256(b: &[u8]) -> String {
    let out = Command::new("sha256sum").stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    let mut out = out;
    std::io::Write::write_all(out.stdin.as_mut().unwrap(), b).unwrap();
    let o = out.wait_with_output().unwrap();
    String::from_utf8_lossy(&o.stdout).split_whitespace().next().unwrap().to_string()
}

fn lock_cmd(project: &Path, args: &[&str]) -> std::process::Output {
    let store = project.join("store");
    let mut c = imgd(&store);
    c.env("IMGD_ROOT", project).current_dir(project).arg("lock").arg("p").args(args);
    c.output().unwrap()
}

fn text(o: &std::process::Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn locked_names(project: &Path) -> Vec<String> {
    let lock: toml::Table = std::fs::read_to_string(project.join("profiles/p.lock")).unwrap().parse().unwrap();
    lock["package"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap().to_string()).collect()
}

#[test]
fn lock_pins_the_closure_from_the_signed_index_and_builds_refuse_to_go_without_it() {
    let m = Mirror::new();
    let p = m.project("\"tool\"");
    let store = p.path().join("store");

    // No lock yet: the build is refused as bad input, and says what to do.
    let mut b = imgd(&store);
    let out = b.env("IMGD_ROOT", p.path()).args(["build", "p"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("imgd lock"), "{}", text(&out));

    let out = lock_cmd(p.path(), &[]);
    assert!(out.status.success(), "{}", text(&out));
    // Essential + required + apt (minbase), the profile's package, and the
    // dependencies of all of them; nothing else.
    assert_eq!(locked_names(p.path()), ["apt", "dpkg", "gpgv", "libc6", "libtool1", "tool"]);
    let lock = std::fs::read_to_string(p.path().join("profiles/p.lock")).unwrap();
    assert!(lock.contains("release_date = \"Sat, 01 Aug 2026 10:00:00 UTC\""), "{lock}");
    assert!(lock.contains(&sha256(b"not really a deb: tool 1.0-1")), "{lock}");

    // The lock is an input of the hash; the mirror is not.
    let hash = |p: &Path, sets: &[&str]| {
        let mut c = imgd(&store);
        c.env("IMGD_ROOT", p).args(["hash", "p"]);
        for s in sets {
            c.args(["--set", s]);
        }
        let out = c.output().unwrap();
        assert!(out.status.success(), "{}", text(&out));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let h1 = hash(p.path(), &[]);
    assert_eq!(h1, hash(p.path(), &["base.debian.mirror=http://127.0.0.1:9/elsewhere"]));

    // The profile asks for more than the lock holds: refused until re-locked.
    let out = {
        let mut c = imgd(&store);
        c.env("IMGD_ROOT", p.path()).args(["hash", "p", "--set", "base.debian.packages=[\"tool\",\"unrelated\"]"]);
        c.output().unwrap()
    };
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("run `imgd lock"), "{}", text(&out));

    // A newer tool on the mirror: --check fails and names it, --update
    // shows the change and writes it, and the hash follows the lock.
    let mut newer = ARCHIVE.to_vec();
    newer[4] = ("tool", "1.1-1", "Priority: optional\nDepends: libtool1 (>= 1.0)");
    m.publish(&newer);
    let out = lock_cmd(p.path(), &["--check"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("~ tool 1.0-1 -> 1.1-1"), "{}", text(&out));
    assert_eq!(hash(p.path(), &[]), h1, "--check changed nothing");
    let out = lock_cmd(p.path(), &["--update"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "~ tool 1.0-1 -> 1.1-1");
    assert_ne!(hash(p.path(), &[]), h1);
    let out = lock_cmd(p.path(), &["--check"]);
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
fn a_mirror_that_alters_an_index_or_its_signature_is_refused() {
    let m = Mirror::new();
    let p = m.project("\"tool\"");
    let dists = m.root().join("dists/bookworm");
    let lock = p.path().join("profiles/p.lock");

    // A Packages index changed after signing: its SHA-256 is not the signed one.
    let gz = dists.join("main/binary-amd64/Packages.gz");
    let mut bytes = std::fs::read(&gz).unwrap();
    let mut idx = String::new();
    std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&bytes[..]), &mut idx).unwrap();
    let evil = idx.replace(
        "Version: 1.0-1\nArchitecture: amd64\nPriority: optional\nDepends",
        "Version: 6.6\nArchitecture: amd64\nPriority: optional\nDepends",
    );
    assert_ne!(evil, idx);
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut enc, evil.as_bytes()).unwrap();
    std::fs::write(&gz, enc.finish().unwrap()).unwrap();
    let out = lock_cmd(p.path(), &[]);
    assert!(!out.status.success());
    assert!(text(&out).contains("does not match the SHA-256 in the signed Release"), "{}", text(&out));
    assert!(!lock.exists(), "nothing written");
    std::fs::write(&gz, &bytes).unwrap();
    bytes.clear();

    // The signed text edited (a checksum swapped in): the signature fails.
    m.publish(ARCHIVE);
    let inrelease = dists.join("InRelease");
    let signed = std::fs::read_to_string(&inrelease).unwrap();
    std::fs::write(
        &inrelease,
        signed.replace("Codename: bookworm", "Codename: bookworm\nValid-Until: Sat, 01 Aug 2099 10:00:00 UTC"),
    )
    .unwrap();
    let out = lock_cmd(p.path(), &[]);
    assert!(!out.status.success());
    assert!(text(&out).contains("is not signed by a key in"), "{}", text(&out));
    assert!(!lock.exists());

    // Signed, but by a key that is not in the profile's keyring.
    let other = tempfile::tempdir().unwrap();
    std::fs::set_permissions(other.path(), std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    gpg(other.path(), &["--quick-gen-key", "someone else <x@example.invalid>", "ed25519", "sign", "never"]);
    std::fs::remove_file(&inrelease).unwrap();
    gpg(
        other.path(),
        &["--clearsign", "--output", inrelease.to_str().unwrap(), dists.join("Release").to_str().unwrap()],
    );
    let out = lock_cmd(p.path(), &[]);
    assert!(!out.status.success());
    assert!(text(&out).contains("is not signed by a key in"), "{}", text(&out));

    // Signed properly again: accepted.
    m.publish(ARCHIVE);
    let out = lock_cmd(p.path(), &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(lock.exists());
}
