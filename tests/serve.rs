//! imgd serve over loopback, with curl as the client: machine selection,
//! RFC 9110 ranges and conditionals, traversal, allow-list, reload, drain.

use crate::common::*;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Serve {
    child: Child,
    pub base: String,
    _stderr: std::thread::JoinHandle<()>,
    pub log: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Serve {
    pub fn start(store: &Path, args: &[&str]) -> Serve {
        let mut cmd = imgd(store);
        cmd.args(["serve", "--listen", "127.0.0.1:0"]).args(args);
        Serve::spawn(cmd)
    }

    /// Runs `cmd` (an `imgd serve` command line) until it says where it listens.
    pub fn spawn(mut cmd: Command) -> Serve {
        let mut child = cmd.env("RUST_LOG", "info").stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut seen = String::new();
        let base = loop {
            assert!(Instant::now() < deadline, "server did not start: {seen}");
            let line = lines.next().unwrap_or_else(|| panic!("server exited: {seen}")).unwrap();
            seen.push_str(&line);
            seen.push('\n');
            if let Some(addr) = line.strip_prefix("imgd serve: listening on ") {
                break addr.trim().to_string();
            }
        };
        let log = std::sync::Arc::new(std::sync::Mutex::new(seen));
        let l2 = log.clone();
        let t = std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                l2.lock().unwrap().push_str(&(line + "\n"));
            }
        });
        // A `[::]` listener says so; clients reach it on IPv4 loopback.
        let base = base.replace("[::]", "127.0.0.1");
        Serve { child, base, _stderr: t, log }
    }

    /// Waits (bounded) until the log contains `text`.
    pub fn wait_log(&self, text: &str) {
        let end = Instant::now() + Duration::from_secs(30);
        while !self.log.lock().unwrap().contains(text) {
            assert!(Instant::now() < end, "no `{text}` in the log: {}", self.log.lock().unwrap());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn signal(&self, sig: &str) {
        Command::new("kill").args([&format!("-{sig}"), &self.child.id().to_string()]).status().unwrap();
    }

    pub fn wait_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        let end = Instant::now() + limit;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(Instant::now() < end, "server did not exit");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// curl: returns (status, headers, body).
pub fn curl(args: &[&str]) -> (u16, String, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let hdr = dir.path().join("h");
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "30", "-D", hdr.to_str().unwrap(), "-o", "-"])
        .args(args)
        .output()
        .unwrap();
    let headers = std::fs::read_to_string(&hdr).unwrap_or_default();
    let status =
        headers.lines().next().and_then(|l| l.split_whitespace().nth(1)).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, headers.to_ascii_lowercase(), out.stdout)
}

fn header<'a>(headers: &'a str, name: &str) -> Option<&'a str> {
    headers.lines().find_map(|l| l.strip_prefix(&format!("{name}: "))).map(str::trim)
}

fn hello_entry() -> (String, serde_json::Value) {
    let h = hello();
    (h.manifest["name"].as_str().unwrap().to_string(), h.manifest.clone())
}

fn write_config(dir: &Path, text: &str) -> String {
    let p = dir.join("machines.toml");
    std::fs::write(&p, text).unwrap();
    p.to_str().unwrap().to_string()
}

const MACHINES: &str = r#"
[[group]]
name = "by-mac"
profile = "hello"
kernel_args = "imgd.group=by-mac"
selector = { mac = "52:54:00:aa:bb:cc" }

[[group]]
name = "lab-net"
profile = "hello"
vars = { role = "lab" }
selector = { source = ["127.0.0.64/26"] }

[[group]]
name = "rack-7-efi"
profile = "hello"
selector = { platform = "efi", labels = { rack = "7" } }

[[group]]
name = "uuid"
profile = "hello"
selector = { uuid = "11111111-2222-3333-4444-555555555555", arch = "x86_64" }

[[group]]
name = "named"
profile = "hello"
selector = { hostname = "db-3", serial = "SN-0042" }
"#;

#[test]
fn machines_get_the_most_specific_group_and_unknown_ones_retry() {
    let h = hello();
    let d = tempfile::tempdir().unwrap();
    let conf = write_config(d.path(), MACHINES);
    let s = Serve::start(&h.store, &["--config", &conf]);
    let script = |args: &[&str], q: &str| {
        let mut a: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        a.push(format!("{}/ipxe?{q}", s.base));
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        let (st, _, body) = curl(&a);
        assert_eq!(st, 200);
        String::from_utf8(body).unwrap()
    };
    let (entry, _) = hello_entry();
    let mac = script(&[], "mac=52-54-00-AA-BB-CC&platform=efi&arch=x86_64");
    assert!(mac.contains("group by-mac"), "{mac}");
    assert!(mac.contains(&format!("kernel /artifacts/{entry}/vmlinuz initrd=initrd rdinit=/init ")), "{mac}");
    assert!(mac.contains("imgd.group=by-mac"), "{mac}");
    // The client's source address, from a distinct loopback address.
    let lab = script(&["--interface", "127.0.0.70"], "mac=52-54-00-00-00-01");
    assert!(lab.contains("group lab-net"), "{lab}");
    let other = script(&["--interface", "127.0.0.5"], "mac=52-54-00-00-00-01&platform=efi&rack=7");
    assert!(other.contains("group rack-7-efi"), "{other}");
    let uuid = script(&[], "uuid=11111111-2222-3333-4444-555555555555&arch=x86_64");
    assert!(uuid.contains("group uuid"), "{uuid}");
    assert!(script(&[], "hostname=db-3&serial=SN-0042&mac=52-54-00-00-00-02").contains("group named"));
    assert!(
        script(&[], "hostname=db-3&serial=SN-9&mac=52-54-00-00-00-02").contains("no group matches"),
        "all selectors must match"
    );
    let unknown = script(&["--interface", "127.0.0.5"], "mac=52-54-00-00-00-09&platform=pcbios&rack=7");
    assert!(unknown.contains("no group matches this machine") && unknown.contains("sleep 10"), "{unknown}");
    assert!(unknown.contains("chain --replace --autofree /boot.ipxe?rack=7"), "labels survive the retry: {unknown}");
    s.wait_log("unknown machine: mac 52:54:00:00:00:09");
    // The chain script asks iPXE for every identity variable, escaped.
    let (_, _, chain) = curl(&[&format!("{}/boot.ipxe?rack=7", s.base)]);
    let chain = String::from_utf8(chain).unwrap();
    assert!(
        chain.contains("/ipxe?mac=${mac:hexhyp}&uuid=${uuid}") && chain.contains("${platform:uristring}&rack=7"),
        "{chain}"
    );
    // Metrics count boots by profile and group.
    let (_, _, m) = curl(&[&format!("{}/metrics", s.base)]);
    let m = String::from_utf8(m).unwrap();
    assert!(m.contains("imgd_boots_total{profile=\"hello\",group=\"by-mac\"} 1"), "{m}");
    assert!(m.contains("imgd_http_requests_total{endpoint=\"ipxe\",status=\"200\"} 7"), "{m}");
    let (st, _, body) = curl(&[&format!("{}/healthz", s.base)]);
    assert_eq!((st, body.as_slice()), (200, &b"ok\n"[..]));
}

#[test]
fn rendered_scripts_match_the_golden_files() {
    let h = hello();
    let d = tempfile::tempdir().unwrap();
    let conf = write_config(d.path(), MACHINES);
    let s = Serve::start(&h.store, &["--config", &conf, "--artifact-base-url", "http://mirror.example/imgd/"]);
    let (entry, m) = hello_entry();
    let (_, _, body) = curl(&[&format!("{}/ipxe?mac=52:54:00:aa:bb:cc", s.base)]);
    let got = String::from_utf8(body)
        .unwrap()
        .replace(&entry, "ENTRY")
        .replace(m["recipe"]["cmdline"].as_str().unwrap(), "CMDLINE");
    let golden = std::fs::read_to_string(repo().join("tests/golden/machine-by-mac.ipxe")).unwrap();
    assert_eq!(got, golden);
    let (_, _, chain) = curl(&[&format!("{}/boot.ipxe", s.base)]);
    assert_eq!(
        String::from_utf8(chain).unwrap(),
        std::fs::read_to_string(repo().join("tests/golden/chain.ipxe")).unwrap()
    );
}

#[test]
fn artifacts_follow_rfc_9110_ranges_and_conditionals() {
    let h = hello();
    let s = Serve::start(&h.store, &["--serve-all"]);
    let (entry, m) = hello_entry();
    let art = m["artifacts"].as_array().unwrap().iter().find(|a| a["file"] == "initrd").unwrap().clone();
    let size = art["size"].as_u64().unwrap();
    let digest = art["blake3"].as_str().unwrap();
    let url = format!("{}/artifacts/{entry}/initrd", s.base);
    let local = std::fs::read(h.file("initrd")).unwrap();

    let (st, hd, body) = curl(&[&url]);
    assert_eq!(st, 200);
    assert_eq!(body, local);
    assert_eq!(header(&hd, "content-length"), Some(size.to_string().as_str()));
    assert_eq!(header(&hd, "etag"), Some(format!("\"{digest}\"").as_str()));
    assert!(header(&hd, "cache-control").unwrap().contains("immutable"));
    assert_eq!(header(&hd, "accept-ranges"), Some("bytes"));

    // HEAD: the same headers, and not one byte of body after them.
    let mut c = std::net::TcpStream::connect(s.base.trim_start_matches("http://")).unwrap();
    use std::io::Write;
    write!(c, "HEAD /artifacts/{entry}/initrd HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let mut raw = String::new();
    c.read_to_string(&mut raw).unwrap();
    assert!(raw.starts_with("HTTP/1.1 200"), "{raw}");
    assert!(raw.to_ascii_lowercase().contains(&format!("content-length: {size}\r\n")), "{raw}");
    assert!(raw.ends_with("\r\n\r\n"), "HEAD sent a body: {raw}");

    // A script's HEAD says the size its GET sends, too (UEFI HTTP boot
    // sizes its buffer from a HEAD; a 0 there stalled it).
    let (_, _, script) = curl(&[&format!("{}/boot.ipxe", s.base)]);
    let mut c = std::net::TcpStream::connect(s.base.trim_start_matches("http://")).unwrap();
    write!(c, "HEAD /boot.ipxe HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let mut raw = String::new();
    c.read_to_string(&mut raw).unwrap();
    assert!(raw.to_ascii_lowercase().contains(&format!("content-length: {}\r\n", script.len())), "{raw}");
    assert!(raw.ends_with("\r\n\r\n"), "HEAD sent a body: {raw}");

    let etag = format!("If-None-Match: \"{digest}\"");
    let (st, _, body) = curl(&["-H", &etag, &url]);
    assert_eq!((st, body.len()), (304, 0));
    let (st, _, _) = curl(&["-H", "If-None-Match: \"other\", W/\"x\"", &url]);
    assert_eq!(st, 200);

    let (st, hd, body) = curl(&["-H", "Range: bytes=100-199", &url]);
    assert_eq!(st, 206);
    assert_eq!(body, &local[100..200]);
    assert_eq!(header(&hd, "content-range"), Some(format!("bytes 100-199/{size}").as_str()));
    let (st, _, body) = curl(&["-H", "Range: bytes=-10", &url]);
    assert_eq!((st, body.as_slice()), (206, &local[local.len() - 10..]));
    let (st, hd, _) = curl(&["-H", &format!("Range: bytes={size}-"), &url]);
    assert_eq!(st, 416);
    assert_eq!(header(&hd, "content-range"), Some(format!("bytes */{size}").as_str()));
    // If-Range with a different validator: the whole file.
    let (st, _, body) = curl(&["-H", "Range: bytes=0-9", "-H", "If-Range: \"stale\"", &url]);
    assert_eq!((st, body.len() as u64), (200, size));
    let (st, _, body) = curl(&["-H", "Range: bytes=0-9", "-H", &format!("If-Range: \"{digest}\""), &url]);
    assert_eq!((st, body.len()), (206, 10));

    // Two ranges: multipart/byteranges with both parts and their Content-Range.
    let (st, hd, body) = curl(&["-H", "Range: bytes=0-3,-4", &url]);
    assert_eq!(st, 206);
    let ct = header(&hd, "content-type").unwrap();
    let boundary = ct.strip_prefix("multipart/byteranges; boundary=").expect("multipart");
    assert_eq!(header(&hd, "content-length"), Some(body.len().to_string().as_str()));
    let text = String::from_utf8_lossy(&body);
    assert!(
        text.contains(&format!("content-range: bytes 0-3/{size}").replace("content-range", "Content-Range")),
        "{text}"
    );
    assert!(text.contains(&format!("Content-Range: bytes {}-{}/{size}", size - 4, size - 1)), "{text}");
    assert!(text.ends_with(&format!("\r\n--{boundary}--\r\n")), "{text}");
    let mut parts = body.windows(4).enumerate().filter(|(_, w)| *w == b"\r\n\r\n").map(|(i, _)| i + 4);
    let first = parts.next().unwrap();
    assert_eq!(&body[first..first + 4], &local[..4]);

    // A big artifact streams in full with bounded memory.
    let (st, _, body) = curl(&[&format!("{}/artifacts/{entry}/disk.raw", s.base)]);
    assert_eq!(st, 200);
    assert_eq!(body.len() as u64, std::fs::metadata(h.file("disk.raw")).unwrap().len());
}

#[test]
fn traversal_and_unreferenced_paths_are_refused() {
    let h = hello();
    let d = tempfile::tempdir().unwrap();
    // A store with one entry whose manifest names a symlink out of the store.
    let store = d.path().join("store");
    let (entry, m) = hello_entry();
    let evil = store.join(format!("{}-evil", &entry[..32]));
    std::fs::create_dir_all(&evil).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", evil.join("vmlinuz")).unwrap();
    let mut em = m.clone();
    em["name"] = serde_json::json!(format!("{}-evil", &entry[..32]));
    em["profile"] = serde_json::json!("evil");
    em["artifacts"] = serde_json::json!([{"name": "kernel", "format": "ipxe", "file": "vmlinuz", "size": std::fs::metadata("/etc/passwd").unwrap().len(), "blake3": "00".repeat(32)}]);
    std::fs::write(evil.join("manifest.json"), serde_json::to_string(&em).unwrap()).unwrap();
    // Copy hello's entry too, so real artifacts exist in this store.
    let real = store.join(&entry);
    std::fs::create_dir_all(&real).unwrap();
    for f in ["manifest.json", "initrd"] {
        std::fs::copy(h.file(f), real.join(f)).unwrap();
    }
    std::fs::write(real.join("secret.txt"), "not an artifact").unwrap();
    let s = Serve::start(&store, &["--serve-all"]);
    let b = &s.base;
    let (st, _, _) = curl(&[&format!("{b}/artifacts/{entry}/initrd")]);
    assert_eq!(st, 200, "the real artifact is served");
    for path in [
        format!("/artifacts/{entry}/../../etc/passwd"),
        format!("/artifacts/{entry}/%2e%2e/%2e%2e/etc/passwd"),
        format!("/artifacts/{entry}/%252e%252e%252fetc%252fpasswd"),
        format!("/artifacts/{entry}/..%5c..%5cetc%5cpasswd"),
        format!("/artifacts/{entry}/%2fetc%2fpasswd"),
        format!("/artifacts/{entry}/initrd%00.txt"),
        format!("/artifacts/{entry}/manifest.json"),
        format!("/artifacts/{entry}/secret.txt"),
        format!("/artifacts/{entry}/"),
        "/artifacts/".to_string(),
        format!("/artifacts/{}-evil/vmlinuz", &entry[..32]),
        "//etc/passwd".to_string(),
        "/profiles/nope/boot.ipxe".to_string(),
    ] {
        let (st, _, body) = curl(&["--path-as-is", &format!("{b}{path}")]);
        assert!(st == 400 || st == 404, "{path} gave {st}");
        assert!(!String::from_utf8_lossy(&body).contains("root:"), "{path} leaked /etc/passwd");
    }
    let (st, _, _) = curl(&["-X", "POST", &format!("{b}/boot.ipxe")]);
    assert_eq!(st, 405);
}

#[test]
fn the_allow_list_refuses_other_clients() {
    let h = hello();
    let s = Serve::start(&h.store, &["--serve-all", "--allow", "127.0.0.2/32"]);
    let url = format!("{}/healthz", s.base);
    assert_eq!(curl(&["--interface", "127.0.0.1", &url]).0, 403);
    assert_eq!(curl(&["--interface", "127.0.0.2", &url]).0, 200);
    // Behind a trusted proxy, the forwarded address is the client.
    let s = Serve::start(&h.store, &["--serve-all", "--allow", "127.0.0.2/32", "--trusted-proxy", "127.0.0.1/32"]);
    let url = format!("{}/healthz", s.base);
    assert_eq!(curl(&["--interface", "127.0.0.1", "-H", "X-Forwarded-For: 127.0.0.2", &url]).0, 200);
    assert_eq!(curl(&["--interface", "127.0.0.1", "-H", "X-Forwarded-For: 127.0.0.9", &url]).0, 403);
    // An untrusted peer cannot claim an address.
    assert_eq!(curl(&["--interface", "127.0.0.3", "-H", "X-Forwarded-For: 127.0.0.2", &url]).0, 403);
}

#[test]
fn sighup_reloads_and_a_broken_config_keeps_the_old_one() {
    let h = hello();
    let d = tempfile::tempdir().unwrap();
    let conf = write_config(d.path(), "[[group]]\nname = \"one\"\nprofile = \"hello\"\ndefault = true\n");
    let s = Serve::start(&h.store, &["--config", &conf]);
    let get = || String::from_utf8(curl(&[&format!("{}/ipxe?mac=52-54-00-00-00-01", s.base)]).2).unwrap();
    assert!(get().contains("group one"));
    write_config(d.path(), "[[group]]\nname = \"two\"\nprofile = \"hello\"\ndefault = true\nbroken = \n");
    s.signal("HUP");
    let end = Instant::now() + Duration::from_secs(20);
    while !s.log.lock().unwrap().contains("reload failed") {
        assert!(Instant::now() < end, "no reload log: {}", s.log.lock().unwrap());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(get().contains("group one"), "the old configuration keeps serving");
    // The status page says the last reload was refused, and why.
    let status =
        || -> serde_json::Value { serde_json::from_slice(&curl(&[&format!("{}/status.json", s.base)]).2).unwrap() };
    let refused = status();
    assert!(refused["reload"]["error"].as_str().is_some_and(|e| e.contains("broken")), "{refused}");
    assert_eq!(refused["groups"][0]["name"], "one");
    write_config(d.path(), "[[group]]\nname = \"two\"\nprofile = \"hello\"\ndefault = true\n");
    s.signal("HUP");
    let end = Instant::now() + Duration::from_secs(20);
    while !get().contains("group two") {
        assert!(Instant::now() < end, "reload did not take effect");
        std::thread::sleep(Duration::from_millis(100));
    }
    let ok = status();
    assert!(ok["reload"]["error"].is_null() && ok["reload"]["at"].as_u64().is_some(), "{ok}");
    assert_eq!(
        (ok["groups"][0]["name"].as_str(), ok["groups"][0]["selector"].as_str()),
        (Some("two"), Some("default"))
    );
    // A group's script is rendered once per configuration: each machine
    // still gets its own line, and a reload that changes only the group's
    // kernel arguments changes the script.
    let other = String::from_utf8(curl(&[&format!("{}/ipxe?mac=52-54-00-00-00-02", s.base)]).2).unwrap();
    assert!(get().contains("# imgd: mac 52:54:00:00:00:01 from 127.0.0.1 -> group two"), "{}", get());
    assert!(other.contains("# imgd: mac 52:54:00:00:00:02 from 127.0.0.1 -> group two"), "{other}");
    write_config(d.path(), "[[group]]\nname = \"two\"\nprofile = \"hello\"\ndefault = true\nkernel_args = \"quiet\"\n");
    s.signal("HUP");
    let end = Instant::now() + Duration::from_secs(20);
    while !get().contains(" quiet\n") {
        assert!(Instant::now() < end, "the reload's kernel_args are not in the script: {}", get());
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn sigterm_drains_an_in_flight_download() {
    let h = hello();
    let (entry, _) = hello_entry();
    let mut s = Serve::start(&h.store, &["--serve-all", "--drain", "60"]);
    let size = std::fs::metadata(h.file("disk.raw")).unwrap().len();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("disk");
    // ~3 s at this rate; SIGTERM arrives after 1 s.
    let rate = format!("{}", size / 3);
    let mut dl = Command::new("curl")
        .args([
            "-sS",
            "--limit-rate",
            &rate,
            "-o",
            out.to_str().unwrap(),
            &format!("{}/artifacts/{entry}/disk.raw", s.base),
        ])
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(1));
    s.signal("TERM");
    let status = dl.wait().unwrap();
    assert!(status.success(), "the download was cut");
    assert_eq!(std::fs::metadata(&out).unwrap().len(), size);
    let st = s.wait_exit(Duration::from_secs(30));
    assert!(st.success(), "{st}");
    // No new connections after shutdown began.
    let mut buf = String::new();
    let refused = std::net::TcpStream::connect(s.base.trim_start_matches("http://"))
        .map(|mut c| c.read_to_string(&mut buf).is_err() || buf.is_empty())
        .unwrap_or(true);
    assert!(refused);
}

#[test]
fn beyond_the_connection_limit_clients_get_503_with_retry_after() {
    let h = hello();
    let s = Serve::start(&h.store, &["--serve-all", "--max-connections", "2"]);
    let addr = s.base.trim_start_matches("http://").to_string();
    // Two idle keep-alive connections fill the server.
    let held: Vec<_> = (0..2).map(|_| std::net::TcpStream::connect(&addr).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(300));
    let (st, hd, _) = curl(&[&format!("{}/healthz", s.base)]);
    assert_eq!(st, 503);
    assert_eq!(header(&hd, "retry-after"), Some("10"));
    drop(held);
    let end = Instant::now() + Duration::from_secs(10);
    while curl(&[&format!("{}/healthz", s.base)]).0 != 200 {
        assert!(Instant::now() < end, "the server did not recover");
        std::thread::sleep(Duration::from_millis(100));
    }
    let (_, _, m) = curl(&[&format!("{}/metrics", s.base)]);
    assert!(String::from_utf8_lossy(&m).contains("imgd_rejected_connections_total 1"));
}

#[test]
fn a_client_that_never_sends_headers_is_disconnected() {
    let h = hello();
    let s = Serve::start(&h.store, &["--serve-all", "--header-timeout", "1", "--idle-timeout", "2"]);
    let (held, _) = held_open(&s, b"GET /healthz HTTP/1.1\r\nHost: x\r\n"); // never finishes
    assert!(held < Duration::from_secs(10), "held for {held:?}");
}

/// Sends `request` on a connection of its own, then reads until the server
/// closes it (20 s at most): how long it was held after the request, and
/// what came back.
fn held_open(s: &Serve, request: &[u8]) -> (Duration, Vec<u8>) {
    use std::io::Write;
    let mut c = std::net::TcpStream::connect(s.base.trim_start_matches("http://")).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    c.write_all(request).unwrap();
    let start = Instant::now();
    let mut buf = Vec::new();
    let _ = c.read_to_end(&mut buf);
    (start.elapsed(), buf)
}

/// `--header-timeout` also ends a keep-alive connection that asks nothing
/// more after its answer, long before the idle timeout.
#[test]
fn a_keep_alive_connection_with_no_next_request_is_closed_after_the_header_timeout() {
    let h = hello();
    let s = Serve::start(&h.store, &["--serve-all", "--header-timeout", "1", "--idle-timeout", "30"]);
    let (held, buf) = held_open(&s, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    let text = String::from_utf8_lossy(&buf);
    assert!(text.starts_with("HTTP/1.1 200"), "answered first: {text}");
    assert!(held >= Duration::from_millis(900), "closed {held:?} after its answer");
    assert!(held < Duration::from_secs(10), "held for {held:?}");
}

/// A raw connection to `s` that has asked for hello's kernel (`entry`).
fn asking_for_the_kernel(s: &Serve, entry: &str) -> std::net::TcpStream {
    use std::io::Write;
    let mut c = std::net::TcpStream::connect(s.base.trim_start_matches("http://")).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    c.write_all(format!("GET /artifacts/{entry}/vmlinuz HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes()).unwrap();
    c
}

/// `got` is a 200 answer carrying the whole kernel of `store`'s `entry`.
fn assert_the_whole_kernel(got: &[u8], store: &Path, entry: &str) {
    let size = std::fs::metadata(store.join(entry).join("vmlinuz")).unwrap().len() as usize;
    let head_end = got.windows(4).position(|w| w == b"\r\n\r\n").expect("a response head") + 4;
    assert!(got.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&got[..head_end]));
    assert_eq!(got.len() - head_end, size, "the whole kernel");
}

/// A download the client reads more slowly than the header timeout is not
/// cut by it: an answer under way is not a connection with nothing to say.
#[test]
fn a_download_slower_than_the_header_timeout_completes() {
    let h = hello();
    let (entry, _) = hello_entry();
    let s = Serve::start(&h.store, &["--serve-all", "--header-timeout", "1", "--idle-timeout", "30"]);
    let mut c = asking_for_the_kernel(&s, &entry);
    // A little, then nothing for twice the header timeout, then the rest.
    let mut got = vec![0u8; 64 << 10];
    c.read_exact(&mut got).unwrap();
    std::thread::sleep(Duration::from_millis(2500));
    let _ = c.read_to_end(&mut got);
    assert_the_whole_kernel(&got, &h.store, &entry);
}

/// A client that shuts its sending side after the request (as `nc -N` and
/// some firmware do) still gets the answer.
#[test]
fn a_client_that_half_closes_after_its_request_gets_the_answer() {
    let h = hello();
    let (entry, _) = hello_entry();
    let s = Serve::start(&h.store, &["--serve-all"]);
    let mut c = asking_for_the_kernel(&s, &entry);
    c.shutdown(std::net::Shutdown::Write).unwrap();
    let mut got = Vec::new();
    let _ = c.read_to_end(&mut got);
    assert_the_whole_kernel(&got, &h.store, &entry);
}

/// A client that hangs up in the middle of a download gives back its
/// connection and transfer at once (the server sees it when writing).
#[test]
fn a_client_that_hangs_up_mid_download_is_let_go() {
    let h = hello();
    let (entry, _) = hello_entry();
    let s = Serve::start(&h.store, &["--serve-all", "--idle-timeout", "60"]);
    let mut c = asking_for_the_kernel(&s, &entry);
    let mut got = vec![0u8; 64 << 10];
    c.read_exact(&mut got).unwrap();
    let active = |name: &str| -> String {
        let (_, _, m) = curl(&[&format!("{}/metrics", s.base)]);
        let m = String::from_utf8_lossy(&m).into_owned();
        m.lines().find(|l| l.starts_with(&format!("{name} "))).unwrap_or_default().to_string()
    };
    assert_eq!(active("imgd_active_transfers"), "imgd_active_transfers 1", "under way");
    drop(c);
    let end = Instant::now() + Duration::from_secs(10);
    while active("imgd_active_transfers") != "imgd_active_transfers 0" {
        assert!(Instant::now() < end, "the transfer outlived its client by 10 s (idle timeout 60 s)");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Only the request asking for the metrics is left.
    assert_eq!(active("imgd_active_connections"), "imgd_active_connections 1");
}

/// The server's threads named `imgd-http-*` (once it has answered: they
/// start after it says where it listens).
fn http_threads(s: &Serve) -> usize {
    assert_eq!(curl(&[&format!("{}/healthz", s.base)]).0, 200);
    let tasks = std::fs::read_dir(format!("/proc/{}/task", s.child.id())).unwrap();
    tasks
        .filter_map(|t| std::fs::read_to_string(t.unwrap().path().join("comm")).ok())
        .filter(|c| c.starts_with("imgd-http-"))
        .count()
}

/// HTTP is served by one thread per core unless `--http-threads` says how
/// many, and each of them serves.
#[test]
fn http_threads_are_one_per_core_or_as_many_as_asked() {
    let h = hello();
    let s = Serve::start(&h.store, &["--serve-all"]);
    assert_eq!(http_threads(&s), std::thread::available_parallelism().unwrap().get());
    let s = Serve::start(&h.store, &["--serve-all", "--http-threads", "3"]);
    assert_eq!(http_threads(&s), 3);
    // Connections go to the threads in turn: six in a row are all answered.
    for _ in 0..6 {
        assert_eq!(curl(&[&format!("{}/healthz", s.base)]).0, 200);
    }
}

#[test]
fn build_flag_builds_missing_profiles_and_profile_urls_boot_them() {
    let d = tempfile::tempdir().unwrap();
    let store = d.path().join("store");
    let conf = write_config(d.path(), "[[group]]\nname = \"g\"\nprofile = \"hello\"\ndefault = true\n");
    // Without --build, a missing build is not a crash: the machine is told to
    // wait and retry, the server's log says why. The unauthenticated client
    // learns nothing of the server's files.
    {
        let s = Serve::start(&store, &["--config", &conf]);
        let (_, _, body) = curl(&[&format!("{}/ipxe?mac=52-54-00-00-00-01", s.base)]);
        let body = String::from_utf8_lossy(&body);
        assert!(body.contains("group g cannot boot yet") && body.contains("sleep 10"), "{body}");
        assert!(!body.contains("not built") && !body.contains(&*store.to_string_lossy()), "{body}");
        s.wait_log("group g: profile hello is not built on this server");
    }
    let s = Serve::start(&store, &["--config", &conf, "--build"]);
    assert_eq!(entries(&store).len(), 1, "built at start-up");
    let (st, _, body) = curl(&[&format!("{}/profiles/hello/boot.ipxe", s.base)]);
    let body = String::from_utf8(body).unwrap();
    assert_eq!(st, 200);
    assert!(body.contains(&format!("kernel /artifacts/{}/vmlinuz", entries(&store)[0])), "{body}");
    assert_eq!(curl(&[&format!("{}/profiles/debian/boot.ipxe", s.base)]).0, 404, "only referenced profiles");
}

#[test]
fn downloads_follow_the_machines_file() {
    let h = hello();
    let d = tempfile::tempdir().unwrap();
    let lab = "[[group]]\nname = \"lab\"\nprofile = \"hello\"\nselector = { source = [\"127.0.0.64/26\"] }\n";
    let conf = write_config(d.path(), lab);
    let s = Serve::start(&h.store, &["--config", &conf]);
    let (entry, _) = hello_entry();
    let get = |from: &str, path: &str| curl(&["--interface", from, "-r", "0-0", &format!("{}{path}", s.base)]).0;
    let kernel = format!("/artifacts/{entry}/vmlinuz");
    let disk = format!("/artifacts/{entry}/disk.raw");
    assert_eq!(get("127.0.0.70", &kernel), 206, "a lab machine fetches its kernel");
    assert_eq!(get("127.0.0.70", &format!("/artifacts/{entry}/initrd")), 206);
    assert_eq!(get("127.0.0.70", &format!("/artifacts/{entry}/boot.ipxe")), 206);
    assert_eq!(get("127.0.0.5", &kernel), 403, "outside the group's source: nothing");
    assert_eq!(get("127.0.0.5", &format!("/artifacts/{entry}/initrd")), 403);
    assert_eq!(get("127.0.0.70", &disk), 403, "disks only where a group opts in");
    assert_eq!(get("127.0.0.70", &format!("/artifacts/{entry}/rootfs.tar.zst")), 403);
    assert_eq!(get("127.0.0.70", "/profiles/hello/boot.ipxe"), 200);
    assert_eq!(get("127.0.0.5", "/profiles/hello/boot.ipxe"), 403);
    let uki = format!("/artifacts/{entry}/hello.efi");
    assert_eq!(get("127.0.0.70", &uki), 403, "the UKI only for groups that boot it");
    // A group that opts in to disks (e.g. to install from the network), and
    // whose UEFI HTTP boot firmware boots the UKI.
    write_config(d.path(), &format!("{lab}downloads = [\"disk\"]\nhttp_boot = \"uki\"\n"));
    s.signal("HUP");
    let end = Instant::now() + Duration::from_secs(20);
    while get("127.0.0.70", &disk) != 206 {
        assert!(Instant::now() < end, "the reload did not open disk downloads");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(get("127.0.0.5", &disk), 403, "still only for the group's machines");
    assert_eq!(get("127.0.0.70", &format!("/artifacts/{entry}/rootfs.tar.zst")), 403);
    assert_eq!(get("127.0.0.70", &uki), 206);
    assert_eq!(get("127.0.0.5", &uki), 403);
}

/// Boot events: one log line per boot step (script, kernel, initrd) with
/// the machine's MAC (for the script), source, group and entry.
#[test]
fn each_boot_step_is_one_log_line_with_source_group_and_entry() {
    let h = hello();
    let d = tempfile::tempdir().unwrap();
    let lab = "[[group]]\nname = \"lab\"\nprofile = \"hello\"\nselector = { source = [\"127.0.0.64/26\"] }\n";
    let conf = write_config(d.path(), lab);
    let s = Serve::start(&h.store, &["--config", &conf]);
    let (entry, _) = hello_entry();
    let get = |path: &str| curl(&["--interface", "127.0.0.70", &format!("{}{path}", s.base)]).0;
    assert_eq!(get("/ipxe?mac=52-54-00-AA-BB-CC&uuid=&hostname=&serial=&arch=x86_64&platform=efi"), 200);
    assert_eq!(get(&format!("/artifacts/{entry}/vmlinuz")), 200);
    assert_eq!(get(&format!("/artifacts/{entry}/initrd")), 200);
    let end = Instant::now() + Duration::from_secs(10);
    let want = [
        format!("step=script mac=52:54:00:aa:bb:cc source=127.0.0.70 group=lab entry={entry}"),
        format!("step=kernel source=127.0.0.70 group=lab entry={entry} file=vmlinuz"),
        format!("step=initrd source=127.0.0.70 group=lab entry={entry} file=initrd"),
    ];
    loop {
        let log = s.log.lock().unwrap().clone();
        if want.iter().all(|w| log.contains(w.as_str())) {
            assert_eq!(log.matches("boot step").count(), 3, "one line per step:\n{log}");
            break;
        }
        assert!(Instant::now() < end, "boot steps not logged as {want:?}:\n{log}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_dual_stack_listener_matches_ipv4_clients_against_ipv4_networks() {
    let h = hello();
    let d = tempfile::tempdir().unwrap();
    let conf = write_config(
        d.path(),
        "[[group]]\nname = \"lab\"\nprofile = \"hello\"\nselector = { source = [\"127.0.0.64/26\"] }\n",
    );
    let mut cmd = imgd(&h.store);
    cmd.args(["serve", "--listen", "[::]:0", "--config", &conf, "--allow", "127.0.0.0/8"]);
    cmd.args(["--trusted-proxy", "127.0.0.1/32"]);
    let s = Serve::spawn(cmd);
    let url = |p: &str| format!("{}{p}", s.base);
    assert_eq!(curl(&["--interface", "127.0.0.2", &url("/healthz")]).0, 200, "IPv4 through [::] is allowed");
    let (_, _, body) = curl(&["--interface", "127.0.0.70", &url("/ipxe?mac=52-54-00-00-00-01")]);
    assert!(String::from_utf8_lossy(&body).contains("group lab"), "{}", String::from_utf8_lossy(&body));
    // Behind the trusted proxy (IPv4-mapped too), the forwarded address counts.
    let (_, _, body) =
        curl(&["--interface", "127.0.0.1", "-H", "X-Forwarded-For: 127.0.0.70", &url("/ipxe?mac=52-54-00-00-00-01")]);
    assert!(String::from_utf8_lossy(&body).contains("group lab"), "{}", String::from_utf8_lossy(&body));
}

#[test]
fn hostile_query_values_never_reach_a_script_or_a_log_line() {
    let h = hello();
    let d = tempfile::tempdir().unwrap();
    let conf = write_config(d.path(), "[[group]]\nname = \"all\"\nprofile = \"hello\"\ndefault = true\n");
    let s = Serve::start(&h.store, &["--config", &conf]);
    for q in [
        "mac=x%20%3B%20chain%20http://198.51.100.1/evil%20%3B",
        "mac=52-54-00-00-00-01%0Aimgd%3A%20forged%20line",
        "hostname=db%0A3",
        "serial=%1B%5B2J",
        "uuid=%24%7Bnet0/ip%7D",
        "ra%0Ack=1",
    ] {
        let (st, _, body) = curl(&[&format!("{}/ipxe?{q}", s.base)]);
        let body = String::from_utf8_lossy(&body);
        assert_eq!(st, 400, "{q}: {body}");
        assert!(!body.contains("chain http://198.51.100.1") && !body.contains("forged line"), "{q}: {body}");
    }
    // Every refusal is logged (written by the log's own thread: wait for all six).
    let end = Instant::now() + Duration::from_secs(10);
    while s.log.lock().unwrap().matches("bad request").count() < 6 {
        assert!(Instant::now() < end, "six refusals logged: {}", s.log.lock().unwrap());
        std::thread::sleep(Duration::from_millis(20));
    }
    let log = s.log.lock().unwrap().clone();
    assert!(!log.contains("\nimgd: forged line") && !log.contains("198.51.100.1"), "{log}");
    // Labels come back only percent-encoded.
    let (_, _, body) = curl(&[&format!("{}/boot.ipxe?rack=7%20%7C%7C%20shell", s.base)]);
    let body = String::from_utf8_lossy(&body);
    assert!(body.contains("&rack=7%20%7C%7C%20shell") && !body.contains("|| shell"), "{body}");
}

#[test]
fn overlapping_ranges_cost_one_copy_of_the_file_at_most() {
    let h = hello();
    let s = Serve::start(&h.store, &["--serve-all"]);
    let (entry, _) = hello_entry();
    let size = std::fs::metadata(h.file("initrd")).unwrap().len();
    let url = format!("{}/artifacts/{entry}/initrd", s.base);
    let many = format!("Range: bytes={}", vec!["0-"; 16].join(","));
    let (st, _, body) = curl(&["-H", &many, &url]);
    assert_eq!((st, body.len() as u64), (206, size), "sixteen overlapping ranges are one range");
    let spread = format!("Range: bytes={}", (0..16).map(|i| format!("{}-", i * 1000)).collect::<Vec<_>>().join(","));
    let (st, _, body) = curl(&["-H", &spread, &url]);
    assert_eq!((st, body.len() as u64), (206, size), "nested ranges coalesce too");
}

/// A copy of the repo's profiles and hardware, to edit.
fn project_copy(dir: &Path) -> std::path::PathBuf {
    let root = dir.join("project");
    for sub in ["profiles", "hardware"] {
        std::fs::create_dir_all(root.join(sub)).unwrap();
        for e in std::fs::read_dir(repo().join(sub)).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), root.join(sub).join(e.file_name())).unwrap();
        }
    }
    root
}

#[test]
fn a_tool_upgrade_or_an_edited_profile_never_takes_a_group_off_the_air() {
    let h = hello();
    let (entry, _) = hello_entry();
    let d = tempfile::tempdir().unwrap();
    let conf = write_config(d.path(), "[[group]]\nname = \"g\"\nprofile = \"hello\"\ndefault = true\n");
    let boots = |s: &Serve| {
        let (_, _, body) = curl(&[&format!("{}/ipxe?mac=52-54-00-00-00-01", s.base)]);
        String::from_utf8_lossy(&body).contains(&format!("kernel /artifacts/{entry}/vmlinuz"))
    };
    let stale = |s: &Serve| {
        let (_, _, m) = curl(&[&format!("{}/metrics", s.base)]);
        let m = String::from_utf8_lossy(&m).into_owned();
        let line = format!("imgd_group_stale{{group=\"g\",profile=\"hello\",entry=\"{entry}\"}} ");
        m.lines().find_map(|l| l.strip_prefix(&line)).map(str::to_string).unwrap_or_else(|| panic!("{m}"))
    };
    // The server's mke2fs reports another version: the input hash changes.
    let bin = d.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let fake = bin.join("mke2fs");
    std::fs::write(
        &fake,
        "#!/bin/sh\n[ \"$1\" = -V ] && { echo 'mke2fs 9.99 (1-Jan-2031)'; exit 0; }\nexec /usr/sbin/mke2fs \"$@\"\n",
    )
    .unwrap();
    std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    let mut cmd = imgd(&h.store);
    cmd.env("PATH", &path).args(["serve", "--listen", "127.0.0.1:0", "--config", &conf]);
    let s = Serve::spawn(cmd);
    assert!(boots(&s), "the group boots the build the store has");
    assert_eq!(stale(&s), "1", "and says it is not the current build");
    s.wait_log(&format!("serving {entry} instead"));
    drop(s);

    // A profile edited before a SIGHUP: the group keeps what it served.
    let root = project_copy(d.path());
    let s = Serve::start(&h.store, &["--config", &conf, "--root", root.to_str().unwrap()]);
    assert!(boots(&s));
    assert_eq!(stale(&s), "0", "the exact current build");
    let profile = root.join("profiles/hello.toml");
    let text = std::fs::read_to_string(&profile).unwrap().replace("imgd hello image", "edited, not built");
    std::fs::write(&profile, text).unwrap();
    s.signal("HUP");
    s.wait_log("reloaded configuration");
    assert!(boots(&s), "a reload keeps what was served when the new build is missing");
    assert_eq!(stale(&s), "1");
}

#[test]
fn under_a_low_open_files_limit_clients_beyond_it_get_503_not_a_hang() {
    let h = hello();
    let mut cmd = Command::new("prlimit");
    cmd.arg("--nofile=256:256").arg(env!("CARGO_BIN_EXE_imgd"));
    cmd.env("IMGD_STORE", &h.store).env("IMGD_ROOT", repo()).current_dir(repo());
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--serve-all"]);
    let s = Serve::spawn(cmd);
    // The warning says why 10,000 connections do not fit: two descriptors each.
    s.wait_log("--max-connections 10000 needs up to 20192 open files (a socket and an artifact file per");
    s.wait_log("but the open-files limit is 256: serving at most 32 connections at once");
    let addr = s.base.trim_start_matches("http://").to_string();
    // More idle connections than 256 descriptors allow.
    let held: Vec<_> = (0..300).filter_map(|_| std::net::TcpStream::connect(&addr).ok()).collect();
    assert!(held.len() >= 200, "could open only {}", held.len());
    std::thread::sleep(Duration::from_millis(300));
    let start = Instant::now();
    let (st, hd, _) = curl(&["--max-time", "10", &format!("{}/healthz", s.base)]);
    assert_eq!(st, 503, "{hd}");
    assert!(start.elapsed() < Duration::from_secs(5), "the refusal took {:?}", start.elapsed());
    drop(held);
    let end = Instant::now() + Duration::from_secs(10);
    while curl(&[&format!("{}/healthz", s.base)]).0 != 200 {
        assert!(Instant::now() < end, "the server did not recover");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_machines_file_with_control_characters_is_refused_naming_the_key() {
    let h = hello();
    let d = tempfile::tempdir().unwrap();
    let conf = write_config(
        d.path(),
        "[[group]]\nname = \"g\"\nprofile = \"hello\"\ndefault = true\nkernel_args = \"quiet\\nshell\"\n",
    );
    let out = imgd(&h.store).args(["serve", "--listen", "127.0.0.1:0", "--config", &conf]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("machines.toml:5:") && err.contains("group[0].kernel_args"), "{err}");
}

#[test]
fn clients_that_stop_reading_hold_no_more_chunk_memory_than_the_budget() {
    use std::io::Write;
    let h = hello();
    let s = Serve::start(&h.store, &["--serve-all", "--cache-mib", "1"]);
    let (entry, _) = hello_entry();
    let file = h.file("disk.raw");
    let size = std::fs::metadata(&file).unwrap().len();
    assert!(size >= 64 << 20, "disk.raw is {size} bytes");
    let addr = s.base.trim_start_matches("http://").to_string();
    let metric = |name: &str| -> u64 {
        let (_, _, body) = curl(&[&format!("{}/metrics", s.base)]);
        let text = String::from_utf8(body).unwrap();
        let line = text.lines().find(|l| l.starts_with(&format!("{name} "))).unwrap_or_else(|| panic!("{text}"));
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    };
    // 32 clients ask for the disk at places 1 MiB apart and never read: each
    // pins what the server could not yet write, 8 times the 1 MiB budget if
    // every one held a chunk of its own.
    let stalled: Vec<std::net::TcpStream> = (0..32u64)
        .map(|i| {
            let mut c = std::net::TcpStream::connect(&addr).unwrap();
            let req = format!(
                "GET /artifacts/{entry}/disk.raw HTTP/1.1\r\nHost: x\r\nRange: bytes={}-\r\n\r\n",
                i * (1 << 20)
            );
            c.write_all(req.as_bytes()).unwrap();
            c
        })
        .collect();
    let end = Instant::now() + Duration::from_secs(30);
    while metric("imgd_active_transfers") < 32 {
        assert!(Instant::now() < end, "the stalled downloads never started");
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(500));
    let held = metric("imgd_chunk_bytes");
    assert!(held <= 1 << 20, "{held} bytes of chunks with a 1 MiB budget");
    assert!(metric("imgd_chunk_budget_full_total") > 0, "past the budget, readers got pieces of their own");
    // Nobody waits on them: a whole download still arrives, byte for byte.
    let (st, _, body) = curl(&["--max-time", "120", &format!("{}/artifacts/{entry}/disk.raw", s.base)]);
    assert_eq!((st, body.len() as u64), (200, size));
    assert!(body == std::fs::read(&file).unwrap(), "the download is the file");
    drop(stalled);
    assert!(metric("imgd_chunk_bytes") <= 1 << 20);
}

/// `[ipxe_signing]`: every script and boot file has a detached CMS
/// signature beside it that checks against the root (openssl as the
/// independent checker, as iPXE's imgverify would), for exactly the bytes
/// served; `verify = true` groups get scripts that refuse to boot unchecked
/// files, others check where the iPXE can; signatures follow the download rules.
#[test]
fn ipxe_signatures_cover_every_script_and_boot_file_a_client_may_fetch() {
    let h = hello();
    let d = tempfile::tempdir().unwrap();
    ipxe_pki(d.path());
    let conf = write_config(
        d.path(),
        "[ipxe_signing]\nkey = \"sign.key\"\ncert = \"sign.crt\"\n\n\
         [[group]]\nname = \"lab\"\nprofile = \"hello\"\nverify = true\nselector = { source = [\"127.0.0.64/26\"] }\n\n\
         [[group]]\nname = \"mac\"\nprofile = \"hello\"\nselector = { mac = \"52:54:00:00:00:99\" }\n",
    );
    let s = Serve::start(&h.store, &["--config", &conf]);
    let (entry, _) = hello_entry();
    let ca = d.path().join("ca.crt");
    let get = |from: &str, path: &str| {
        let (status, _, body) = curl(&["--interface", from, &format!("{}{path}", s.base)]);
        (status, body)
    };
    let signed = |from: &str, path: &str, sig_path: &str| {
        let (a, body) = get(from, path);
        let (b, sig) = get(from, sig_path);
        assert_eq!((a, b), (200, 200), "{path} and {sig_path} from {from}");
        assert!(cms_verifies(&body, &sig, &ca), "{sig_path} does not verify {path}");
        (body, sig)
    };
    let query = "?mac=52-54-00-aa-bb-cc&uuid=&hostname=&serial=&arch=x86_64&platform=efi";
    let (chain, _) = signed("127.0.0.70", "/boot.ipxe", "/boot.ipxe.sig");
    let chain = String::from_utf8(chain).unwrap();
    assert!(chain.contains("imgverify machine /ipxe.sig?mac=${mac:hexhyp}"), "{chain}");
    let (script, sig) = signed("127.0.0.70", &format!("/ipxe{query}"), &format!("/ipxe.sig{query}"));
    let script = String::from_utf8(script).unwrap();
    for (file, name) in [("vmlinuz", "kernel"), ("initrd", "initrd")] {
        let line = format!("imgverify {name} /artifacts/{entry}/{file}.sig || goto refuse");
        assert!(script.contains(&line), "no `{line}` in the verify group's script:\n{script}");
        let (body, sig) =
            signed("127.0.0.70", &format!("/artifacts/{entry}/{file}"), &format!("/artifacts/{entry}/{file}.sig"));
        // One byte changed (a mirror or a man in the middle): refused.
        let mut tampered = body.clone();
        tampered[body.len() / 2] ^= 1;
        assert!(!cms_verifies(&tampered, &sig, &ca), "a tampered {file} verifies");
    }
    assert!(!script.contains("mac 52:54"), "a signed script names no machine (one signature per group):\n{script}");
    // The form a verifying iPXE was seen to boot (and refuse) with: netboot::a_verifying_ipxe_*.
    let (_, m) = hello_entry();
    let got = script.replace(&entry, "ENTRY").replace(m["recipe"]["cmdline"].as_str().unwrap(), "CMDLINE");
    assert_eq!(got, std::fs::read_to_string(repo().join("tests/golden/machine-verify.ipxe")).unwrap());
    // Signatures are of the bytes: the same script, the same signature; a
    // signature of one file is not one of another.
    assert_eq!(get("127.0.0.71", &format!("/ipxe.sig{query}")).1, sig, "one signature serves the group");
    let kernel_sig = get("127.0.0.70", &format!("/artifacts/{entry}/vmlinuz.sig")).1;
    assert!(!cms_verifies(&get("127.0.0.70", &format!("/artifacts/{entry}/initrd")).1, &kernel_sig, &ca));
    // Not a verify group: the script checks what it can and boots on.
    let other = "?mac=52-54-00-00-00-99&uuid=&hostname=&serial=&arch=x86_64&platform=efi";
    let (script, _) = signed("127.0.0.5", &format!("/ipxe{other}"), &format!("/ipxe.sig{other}"));
    let script = String::from_utf8(script).unwrap();
    assert!(script.contains(&format!("imgverify kernel /artifacts/{entry}/vmlinuz.sig || echo")), "{script}");
    assert!(!script.contains("goto refuse"), "{script}");
    // Signatures follow the download rules; the key is never served or logged.
    assert_eq!(get("127.0.0.5", &format!("/artifacts/{entry}/disk.raw.sig")).0, 403);
    assert_eq!(get("127.0.0.70", &format!("/artifacts/{entry}/disk.raw.sig")).0, 403);
    assert_eq!(get("127.0.0.70", "/metrics.sig").0, 404);
    let key = std::fs::read_to_string(d.path().join("sign.key")).unwrap();
    let key_line = key.lines().nth(1).unwrap();
    assert!(!s.log.lock().unwrap().contains(key_line));
    // Without [ipxe_signing], no signatures and the plain scripts.
    let plain = write_config(d.path(), "[[group]]\nname = \"all\"\nprofile = \"hello\"\ndefault = true\n");
    let p = Serve::start(&h.store, &["--config", &plain]);
    let (status, _, body) = curl(&[&format!("{}/boot.ipxe", p.base)]);
    assert_eq!(status, 200);
    assert!(!String::from_utf8(body).unwrap().contains("imgverify"));
    assert_eq!(curl(&[&format!("{}/boot.ipxe.sig", p.base)]).0, 404);
}

/// A signer iPXE would refuse (no codeSigning) and `verify` without a
/// signer are configuration errors naming the key, exit 2.
#[test]
fn ipxe_signing_mistakes_are_refused_at_their_key() {
    let h = hello();
    let d = tempfile::tempdir().unwrap();
    ipxe_pki(d.path());
    let run = |text: &str| {
        let conf = write_config(d.path(), text);
        let out = imgd(&h.store).args(["serve", "--listen", "127.0.0.1:0", "--config", &conf]).output().unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let group = "[[group]]\nname = \"all\"\nprofile = \"hello\"\ndefault = true\nverify = true\n";
    let (code, err) = run(group);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("machines.toml:5") && err.contains("group[0].verify") && err.contains("[ipxe_signing]"),
        "{err}"
    );
    // The root itself has no codeSigning usage: iPXE would refuse its signatures.
    let (code, err) = run(&format!("[ipxe_signing]\nkey = \"ca.key\"\ncert = \"ca.crt\"\n{group}"));
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("ipxe_signing.cert") && err.contains("codeSigning"), "{err}");
    // A key that is not the certificate's.
    let (code, err) = run(&format!("[ipxe_signing]\nkey = \"ca.key\"\ncert = \"sign.crt\"\n{group}"));
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("ipxe_signing") && err.contains("ca.key"), "{err}");
    let (code, err) = run(&format!("[ipxe_signing]\nkey = \"missing.key\"\ncert = \"sign.crt\"\n{group}"));
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("ipxe_signing.key") && err.contains("missing.key"), "{err}");
}

/// A byte flipped in a store file after the build (a bad disk): the bytes
/// that changed are never sent as the manifest's. A download over them is
/// cut before them (curl sees a short body), a range clear of them is still
/// served, and a server that starts on the damaged store refuses the file.
#[test]
fn a_flipped_byte_on_disk_is_never_served_as_the_manifests_bytes() {
    let h = hello();
    let (entry, _) = hello_entry();
    let d = tempfile::tempdir().unwrap();
    let store = d.path().join("store");
    let own = store.join(&entry);
    std::fs::create_dir_all(&own).unwrap();
    for f in ["manifest.json", "initrd"] {
        std::fs::copy(h.file(f), own.join(f)).unwrap();
    }
    let initrd = own.join("initrd");
    let good = std::fs::read(&initrd).unwrap();
    let at = 3 * 128 * 1024 + 100;
    assert!(good.len() > at + 128 * 1024, "the initrd spans several chunks");
    let conf = write_config(d.path(), &format!("[[group]]\nname = \"lab\"\nentry = \"{entry}\"\ndefault = true\n"));
    let s = Serve::start(&store, &["--serve-all", "--config", &conf]);
    let script = |s: &Serve| String::from_utf8(curl(&[&format!("{}/ipxe?mac=52:54:00:aa:bb:01", s.base)]).2).unwrap();
    assert!(script(&s).contains("/initrd"), "the group boots the entry: {}", script(&s));
    let url = format!("{}/artifacts/{entry}/initrd", s.base);
    // The first request reads the intact file once (its BLAKE3 tree) and
    // caches only the chunk it sends.
    let (st, _, body) = curl(&["-r", "0-999", &url]);
    assert!(st == 206 && body == good[..1000], "the intact file is served");
    // The bad disk: one bit, in place (same file, same inode).
    let mut perms = std::fs::metadata(&initrd).unwrap().permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    perms.set_readonly(false);
    std::fs::set_permissions(&initrd, perms).unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(&initrd).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &[good[at] ^ 0x04], at as u64).unwrap();
    drop(f);
    // The page cache holds the new byte now, as a later read from disk would.
    let whole = Command::new("curl").args(["-sS", "--max-time", "30", "-o", "-", &url]).output().unwrap();
    assert!(!whole.status.success(), "curl must see the download cut");
    assert!(whole.stdout.len() <= at && good.starts_with(&whole.stdout), "only good bytes, before the bad one");
    let over = Command::new("curl")
        .args(["-sS", "--max-time", "30", "-r", &format!("{}-{}", at - 10, at + 10), &url])
        .output()
        .unwrap();
    assert!(!over.status.success() && over.stdout.is_empty(), "a range over it: {:?}", over.stdout);
    let (st, _, clean) = curl(&["-r", "0-999", &url]);
    assert_eq!((st, clean.as_slice()), (206, &good[..1000]), "a range clear of it");
    let (_, _, m) = curl(&[&format!("{}/metrics", s.base)]);
    let m = String::from_utf8(m).unwrap();
    assert!(m.contains("imgd_corrupt_reads_total 2"), "{m}");
    s.wait_log("do not match the manifest's BLAKE3");
    // Its machines now wait as for a missing build; the reason is in the log.
    let waiting = script(&s);
    assert!(waiting.contains("cannot boot yet") && !waiting.contains("/initrd"), "{waiting}");
    s.wait_log("does not match its manifest's BLAKE3 (see `imgd verify`)");
    drop(s);
    // A server started on the damaged store: the file is refused whole.
    let s = Serve::start(&store, &["--serve-all"]);
    let (st, _, _) = curl(&[&format!("{}/artifacts/{entry}/initrd", s.base)]);
    assert_eq!(st, 404);
    s.wait_log("its manifest says");
}

/// The DOM Debian's chromium builds from `url` (headless, its own private
/// profile folder; root needs --no-sandbox), bounded in time.
fn headless_dom(url: &str) -> String {
    let profile = tempfile::tempdir().unwrap();
    let out = std::process::Command::new("timeout")
        .args(["90", "chromium", "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run"])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(["--dump-dom", url])
        .output()
        .expect("chromium runs (scripts/setup.sh installs it)");
    assert!(out.status.success(), "chromium: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `/status` and `/status.json`: a machine's boot reaches `done` when its
/// initrd was sent whole, one that stalls after its kernel is listed first as
/// stuck, an unknown machine shows its refusal, the page is for
/// `--status-allow` only, and `imgd status` prints the same table.
#[test]
fn the_status_page_shows_each_machines_last_step_and_the_stuck_ones_first() {
    let h = hello();
    let (entry, _) = hello_entry();
    let d = tempfile::tempdir().unwrap();
    let conf = write_config(d.path(), "[[group]]\nname = \"lab\"\nprofile = \"hello\"\nselector = { mac = [\"52:54:00:00:00:01\", \"52:54:00:00:00:02\"] }\n");
    let s = Serve::start(&h.store, &["--config", &conf, "--status-stuck", "1"]);
    let b = &s.base;
    let get = |p: &str| curl(&[&format!("{b}{p}")]);
    // A hostname of the wrong shape is refused where it enters; a label
    // may hold anything printable, and is shown inert.
    assert_eq!(get("/ipxe?mac=52-54-00-00-00-01&hostname=%3Cimg%20src%3Dx%20onerror%3Dalert(1)%3E").0, 400);
    // Machine 1 boots all the way; machine 2 stops after its kernel.
    assert_eq!(get("/ipxe?mac=52-54-00-00-00-01&hostname=web-1&rack=%3Cimg%20src%3Dx%20onerror%3Dalert(1)%3E").0, 200);
    assert_eq!(get(&format!("/artifacts/{entry}/vmlinuz")).0, 200);
    assert_eq!(get(&format!("/artifacts/{entry}/initrd")).0, 200);
    let status = |sort: &str| -> serde_json::Value {
        let (st, _, body) = get(&format!("/status.json{sort}"));
        assert_eq!(st, 200);
        serde_json::from_slice(&body).unwrap()
    };
    // The initrd's body tells the table it ended when the server drops it,
    // a moment after curl has every byte: poll (bounded).
    let end = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let one = loop {
        let one = status("");
        if one["machines"][0]["step"] == "done" || std::time::Instant::now() > end {
            break one;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let m = &one["machines"][0];
    assert_eq!(
        (m["mac"].as_str(), m["step"].as_str(), m["group"].as_str()),
        (Some("52:54:00:00:00:01"), Some("done"), Some("lab"))
    );
    let sizes =
        std::fs::metadata(h.file("vmlinuz")).unwrap().len() + std::fs::metadata(h.file("initrd")).unwrap().len();
    assert_eq!(m["bytes"].as_u64(), Some(sizes), "every byte counted");
    assert_eq!(m["hostname"].as_str(), Some("web-1"));
    // Machine 2 comes from the same address in this test, so a later script
    // request moves the address to it.
    assert_eq!(get("/ipxe?mac=52-54-00-00-00-02").0, 200);
    assert_eq!(get(&format!("/artifacts/{entry}/vmlinuz")).0, 200);
    assert_eq!(get("/ipxe?mac=52-54-00-00-00-99").0, 200, "an unknown machine gets the retry script");
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let all = status("?sort=step");
    let rows = all["machines"].as_array().unwrap();
    assert_eq!(rows.len(), 3, "{all}");
    assert_eq!((rows[0]["mac"].as_str(), rows[0]["stuck"].as_bool()), (Some("52:54:00:00:00:02"), Some(true)), "{all}");
    assert_eq!(rows[0]["step"].as_str(), Some("kernel"));
    let unknown = rows.iter().find(|r| r["mac"] == "52:54:00:00:00:99").unwrap();
    assert_eq!(unknown["step"].as_str(), Some("refused"));
    assert!(unknown["refusal"].as_str().unwrap().contains("no group matches"), "{unknown}");
    assert_eq!(all["stuck"].as_u64(), Some(1));
    // Above the machines: the group (its selector in short, the entry it
    // boots, machines booted in the last hour and mid-boot) and the parts.
    let g = &all["groups"][0];
    assert_eq!(g["name"], "lab");
    assert_eq!(g["selector"], "mac 52:54:00:00:00:01 (+1)");
    assert_eq!(g["entry"].as_str(), Some(entry.as_str()));
    assert_eq!((g["boots_last_hour"].as_u64(), g["mid_boot"].as_u64()), (Some(2), Some(1)), "{g}");
    assert_eq!((all["parts"][0]["name"].as_str(), all["parts"][0]["up"].as_bool()), (Some("http"), Some(true)));
    assert!(all["reload"].is_null(), "no reload yet");
    // The page: the same rows, refreshing itself.
    let (st, hd, page) = get("/status");
    let page = String::from_utf8(page).unwrap();
    assert_eq!(st, 200);
    assert!(header(&hd, "content-type").unwrap().starts_with("text/html"), "{hd}");
    assert!(
        page.contains("http-equiv=\"refresh\"")
            && page.contains("52:54:00:00:00:02")
            && page.contains("kernel (stuck)"),
        "{page}"
    );
    // What a real browser makes of the page: the group, the MAC and the
    // step as text, the claimed label as text and not as an element.
    let dom = headless_dom(&format!("{b}/status"));
    assert!(
        dom.contains("<td>lab</td>") && dom.contains("52:54:00:00:00:01") && dom.contains("<td>done</td>"),
        "{dom}"
    );
    assert!(dom.contains("rack=&lt;img src=x onerror=alert(1)&gt;") && !dom.contains("<img"), "{dom}");
    assert!(dom.contains("<td>mac 52:54:00:00:00:01 (+1)</td>") && dom.contains("<td>http</td><td>up</td>"), "{dom}");
    // `imgd status` in the terminal.
    let out = ok(imgd(&h.store).args(["status", "--server", b]));
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("52:54:00:00:00:01") && table.contains("done") && table.contains("kernel STUCK"), "{table}");
    assert!(table.contains("3 machines, 1 stuck"), "{table}");
    assert!(table.contains("mac 52:54:00:00:00:01 (+1)") && table.contains("parts: http up"), "{table}");
    drop(s);
    // Only --status-allow clients see it (and they need not be in --allow).
    let s = Serve::start(&h.store, &["--config", &conf, "--status-allow", "10.0.0.0/8"]);
    assert_eq!(curl(&[&format!("{}/status", s.base)]).0, 403);
    assert_eq!(curl(&[&format!("{}/status.json", s.base)]).0, 403);
    assert_eq!(curl(&[&format!("{}/status.json?sort=../../etc", s.base)]).0, 400);
}

/// The shipped Grafana dashboard queries only metrics `/metrics` has.
#[test]
fn every_metric_the_grafana_dashboard_queries_is_in_metrics() {
    let h = hello();
    let dash: serde_json::Value =
        serde_json::from_slice(&std::fs::read(repo().join("contrib/grafana/imgd-serve.json")).unwrap()).unwrap();
    let mut queried = std::collections::BTreeSet::new();
    let mut panels = 0;
    for p in dash["panels"].as_array().unwrap() {
        panels += 1;
        for t in p["targets"].as_array().unwrap() {
            let expr = t["expr"].as_str().unwrap();
            for (i, _) in expr.match_indices("imgd_") {
                let name: String = expr[i..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
                queried.insert(name);
            }
        }
    }
    assert!(panels >= 8 && queried.len() >= 12, "{queried:?}");
    let s = Serve::start(&h.store, &["--serve-all"]);
    let (_, _, m) = curl(&[&format!("{}/metrics", s.base)]);
    let m = String::from_utf8(m).unwrap();
    for name in &queried {
        assert!(m.contains(&format!("# TYPE {name} ")), "{name} is not in /metrics:\n{m}");
    }
}
