//! Helpers shared by the integration tests.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).canonicalize().unwrap()
}

/// `imgd` with the repo's profiles and the given store.
pub fn imgd(store: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_imgd"));
    c.current_dir(repo()).env("IMGD_ROOT", repo()).env("IMGD_STORE", store).env("RUST_LOG", "warn");
    c.env_remove("SOURCE_DATE_EPOCH");
    c
}

pub fn ok(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("imgd runs");
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

pub fn json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("bad JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

/// `imgd build ARGS --json` into `store`; returns the manifest (+ path, cached).
pub fn build(store: &Path, args: &[&str]) -> Value {
    let mut c = imgd(store);
    c.arg("build").args(args).arg("--json");
    json(&ok(&mut c))
}

/// Removes the console-log folder `imgd test` kept (on a failed boot, or
/// with --keep-logs) once a test has read it: runs of the suite must not fill
/// /tmp with them.
pub fn remove_kept_logs(out: &Output) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    if let Some(dir) = stderr.split("console logs kept in ").nth(1).and_then(|s| s.lines().next()) {
        std::fs::remove_dir_all(dir).unwrap_or_else(|e| panic!("{dir}: {e}"));
    }
}

pub struct Shared {
    pub _dir: tempfile::TempDir,
    pub store: PathBuf,
    pub manifest: Value,
}

impl Shared {
    pub fn entry(&self) -> PathBuf {
        PathBuf::from(self.manifest["path"].as_str().unwrap())
    }
    pub fn file(&self, name: &str) -> PathBuf {
        self.entry().join(name)
    }
}

/// The hello profile with every format, built once for all tests that only read it.
pub fn hello() -> &'static Shared {
    static HELLO: OnceLock<Shared> = OnceLock::new();
    HELLO.get_or_init(|| built_once("hello"))
}

/// The debian profile with every format, built once for the tests that
/// read it (a build of each: ~10 s of CPU, and the store holds 2.5 GB).
pub fn debian() -> &'static Shared {
    static DEBIAN: OnceLock<Shared> = OnceLock::new();
    DEBIAN.get_or_init(|| built_once("debian"))
}

/// `profile` with every format, in a store of its own. Statics are never
/// dropped, so a shared store outlives its test run: it lives in cargo's
/// target tmp folder, named by the run's pid, and the next run removes those
/// of runs that have ended (they were 0.2 GB for hello, 2.5 GB for debian,
/// left in /tmp by every run).
fn built_once(profile: &str) -> Shared {
    let parent = Path::new(env!("CARGO_TARGET_TMPDIR"));
    remove_shared_of_ended_runs(parent);
    let prefix = format!("shared-{}-{profile}-", std::process::id());
    let dir = tempfile::Builder::new().prefix(&prefix).tempdir_in(parent).unwrap();
    let store = dir.path().join("store");
    let manifest = build(&store, &[profile]);
    Shared { _dir: dir, store, manifest }
}

/// Removes `shared-PID-*` folders in `parent` whose process is gone.
fn remove_shared_of_ended_runs(parent: &Path) {
    let Ok(entries) = std::fs::read_dir(parent) else { return };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix("shared-").and_then(|r| r.split('-').next()) else { continue };
        if pid.parse::<u32>().is_ok() && !Path::new("/proc").join(pid).exists() {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// imgd's cache folder, as the binary under test finds it (`$IMGD_CACHE`,
/// else `$XDG_CACHE_HOME/imgd`, else `~/.cache/imgd`).
pub fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("IMGD_CACHE") {
        return d.into();
    }
    let xdg = std::env::var_os("XDG_CACHE_HOME").map(PathBuf::from);
    xdg.unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache")).join("imgd")
}

/// A cache folder of its own at `dir` that shares the downloaded packages
/// (setup's .debs) with the usual one: what a build makes from them (the
/// unpacked kernel, a Debian base) is made again there.
pub fn scratch_cache(dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    std::os::unix::fs::symlink(cache_dir().join("debs"), dir.join("debs")).unwrap();
    dir.to_path_buf()
}

/// A scratch project with the repo's hardware files and the given profiles.
pub fn project(profiles: &[(&str, &str)]) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(d.path().join("profiles")).unwrap();
    std::fs::create_dir_all(d.path().join("hardware")).unwrap();
    for e in std::fs::read_dir(repo().join("hardware")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), d.path().join("hardware").join(e.file_name())).unwrap();
    }
    for (name, text) in profiles {
        let p = d.path().join("profiles").join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }
    d
}

/// Runs an external checker; panics with its output when it fails.
pub fn tool(program: &str, args: &[&str]) -> String {
    let out = Command::new(program).args(args).output().unwrap_or_else(|e| panic!("{program}: {e}"));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{program} {args:?} failed ({}):\n{text}", out.status);
    text
}

/// Names of complete entries in a store (what `imgd ls` would list).
pub fn entries(store: &Path) -> Vec<String> {
    let Ok(rd) = std::fs::read_dir(store) else { return vec![] };
    let mut v: Vec<String> =
        rd.filter_map(|e| e.ok()?.file_name().into_string().ok()).filter(|n| !n.starts_with('.')).collect();
    v.sort();
    v
}

/// Reads `child`'s stdout until `marker` appears (prompts have no newline, so
/// this reads chunks), within `limit`; panics with the console otherwise, or
/// if the child exits first. Returns the console read so far.
pub fn wait_for_console(child: &mut std::process::Child, marker: &str, limit: std::time::Duration) -> String {
    wait_for_any(child, &[marker], limit)
}

/// The console up to the first of `markers` (within `limit`): a refusal is
/// seen as soon as the firmware prints it, not when a boot times out.
pub fn wait_for_any(child: &mut std::process::Child, markers: &[&str], limit: std::time::Duration) -> String {
    use std::io::Read;
    let marker = markers.join("` or `");
    let mut out = child.stdout.take().expect("stdout piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = out.read(&mut buf) {
            if n == 0 || tx.send(String::from_utf8_lossy(&buf[..n]).into_owned()).is_err() {
                break;
            }
        }
    });
    let mut console = String::new();
    let deadline = std::time::Instant::now() + limit;
    while !markers.iter().any(|m| console.contains(m)) {
        assert!(std::time::Instant::now() < deadline, "no `{marker}` within {limit:?}:\n{console}");
        if let Ok(c) = rx.recv_timeout(std::time::Duration::from_secs(1)) {
            console.push_str(&c);
        }
        assert!(child.try_wait().unwrap().is_none(), "exited before `{marker}`:\n{console}");
    }
    console
}

/// Waits (up to 10 s) until no process mentions `path` on its command line:
/// every qemu of a test uses files under its store.
pub fn assert_no_process_mentions(path: &Path) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let ps = Command::new("pgrep").args(["-f", path.to_str().unwrap()]).output().unwrap();
        if ps.stdout.is_empty() {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "still running: {}", String::from_utf8_lossy(&ps.stdout));
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// An iPXE code-signing PKI in `dir`, as iPXE's docs lay it out: a root
/// (`ca.crt`, what a verifying iPXE is built to trust) and a signer issued
/// by it with extended key usage codeSigning (`sign.key`, `sign.crt`).
pub fn ipxe_pki(dir: &Path) {
    let ext = dir.join("ext.cnf");
    std::fs::write(
        &ext,
        "[sign]\nbasicConstraints = CA:false\nkeyUsage = critical,digitalSignature\nextendedKeyUsage = codeSigning\n",
    )
    .unwrap();
    let p = |f: &str| dir.join(f).to_str().unwrap().to_string();
    let e = ext.to_str().unwrap();
    tool("openssl", &["genrsa", "-out", &p("ca.key"), "2048"]);
    tool(
        "openssl",
        &["req", "-x509", "-new", "-key", &p("ca.key"), "-subj", "/CN=imgd test iPXE root/", "-days", "30"]
            .into_iter()
            .chain(["-addext", "basicConstraints=critical,CA:true", "-addext", "keyUsage=critical,keyCertSign"])
            .chain(["-out", &p("ca.crt")])
            .collect::<Vec<_>>(),
    );
    tool(
        "openssl",
        &["req", "-new", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=imgd test signer/"]
            .into_iter()
            .chain(["-keyout", &p("sign.key"), "-out", &p("sign.csr")])
            .collect::<Vec<_>>(),
    );
    tool(
        "openssl",
        &["x509", "-req", "-in", &p("sign.csr"), "-CA", &p("ca.crt"), "-CAkey", &p("ca.key"), "-CAcreateserial"]
            .into_iter()
            .chain(["-days", "30", "-extfile", e, "-extensions", "sign", "-out", &p("sign.crt")])
            .collect::<Vec<_>>(),
    );
}

/// Checks a detached CMS signature over `content` against the root
/// `ca_crt`, as iPXE's imgverify does (openssl as the independent checker).
pub fn cms_verifies(content: &[u8], sig: &[u8], ca_crt: &Path) -> bool {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("content"), content).unwrap();
    std::fs::write(d.path().join("sig"), sig).unwrap();
    Command::new("openssl")
        .args(["cms", "-verify", "-binary", "-inform", "DER", "-purpose", "any", "-out", "/dev/null"])
        .arg("-in")
        .arg(d.path().join("sig"))
        .arg("-content")
        .arg(d.path().join("content"))
        .arg("-CAfile")
        .arg(ca_crt)
        .output()
        .unwrap()
        .status
        .success()
}

/// Which of a child's output streams announces its port.
#[cfg_attr(not(feature = "aws"), allow(dead_code))] // moto (stderr) only runs with AWS
pub enum Announces {
    Stdout,
    Stderr,
}

/// Spawns a server told to listen on port 0 and returns it with the port it
/// printed: the first number after `marker` on a line of `stream`. The rest
/// of that stream is read and dropped so the child never blocks on it.
///
/// Choosing a free port here and handing it to the server raced: two tests
/// could be given one number, the loser's server exited on "address in use"
/// and its test talked to the other test's server (boto3 got a 501 from
/// `http.server`). A port the server bound itself cannot be shared.
pub fn spawn_on_own_port(cmd: &mut Command, stream: Announces, marker: &str) -> (std::process::Child, u16) {
    use std::io::BufRead;
    use std::process::Stdio;
    let (out, err) = match stream {
        Announces::Stdout => (Stdio::piped(), Stdio::null()),
        Announces::Stderr => (Stdio::null(), Stdio::piped()),
    };
    let mut child = cmd.stdout(out).stderr(err).spawn().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let pipe: Box<dyn std::io::Read + Send> = match stream {
        Announces::Stdout => Box::new(child.stdout.take().unwrap()),
        Announces::Stderr => Box::new(child.stderr.take().unwrap()),
    };
    let (tx, rx) = std::sync::mpsc::channel();
    let marker = marker.to_owned();
    std::thread::spawn(move || {
        let mut lines = std::io::BufReader::new(pipe).lines();
        for line in lines.by_ref().map_while(Result::ok) {
            let port = line.split_once(marker.as_str()).and_then(|(_, rest)| {
                let digits: String =
                    rest.chars().skip_while(|c| !c.is_ascii_digit()).take_while(char::is_ascii_digit).collect();
                digits.parse::<u16>().ok()
            });
            if let Some(port) = port {
                let _ = tx.send(port);
                break;
            }
        }
        lines.for_each(drop);
    });
    match rx.recv_timeout(std::time::Duration::from_secs(60)) {
        Ok(port) => (child, port),
        Err(_) => {
            let _ = child.kill();
            panic!("{cmd:?} did not say which port it listens on within 60 s: {:?}", child.wait());
        }
    }
}

/// A loopback port nothing listens on right now (for `imgd run --ssh`).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// `ssh -i KEY -p PORT USER@127.0.0.1 CMD` (no host-key prompts, batch).
pub fn ssh(key: &Path, port: u16, user: &str, cmd: &str) -> Output {
    Command::new("ssh")
        .args(["-i", key.to_str().unwrap(), "-p", &port.to_string()])
        .args(["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes"])
        .args(["-o", "ConnectTimeout=10", &format!("{user}@127.0.0.1"), cmd])
        .output()
        .unwrap()
}

/// `ssh` retried until it succeeds (a server may come up just after the
/// console's marker), for at most `limit`; its stdout.
pub fn ssh_until_ok(key: &Path, port: u16, user: &str, cmd: &str, limit: std::time::Duration) -> String {
    let deadline = std::time::Instant::now() + limit;
    loop {
        let o = ssh(key, port, user, cmd);
        if o.status.success() {
            return String::from_utf8_lossy(&o.stdout).into_owned();
        }
        assert!(std::time::Instant::now() < deadline, "ssh never worked: {}", String::from_utf8_lossy(&o.stderr));
        std::thread::sleep(std::time::Duration::from_secs(2));
    }
}
