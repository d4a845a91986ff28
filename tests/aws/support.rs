//! What the AWS tests share: a moto server on loopback, boto3 as the
//! independent checker, and runs of the real imgd binary.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

pub use crate::common::repo;

/// The project as the AWS tests see it: the repository's profiles and
/// hardware as they are, but `hello` with the smallest ESP (33 MiB, FAT32's
/// floor) and 1 MiB of free space in its root instead of 64 and 128, so its
/// raw and VHD disks are 106 MiB, not 264. Sending them to moto (Python) is
/// most of these tests' time; what they test (16 MiB parts, seven of them
/// for the resumed upload, zero blocks skipped) holds at either size.
pub fn root() -> &'static Path {
    static ROOT: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    ROOT.get_or_init(|| {
        let dir = tempfile::Builder::new().prefix("aws-root").tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
        let repo = repo();
        for e in std::fs::read_dir(&repo).unwrap().map(|e| e.unwrap()) {
            if e.file_name() != "profiles" {
                std::os::unix::fs::symlink(e.path(), dir.path().join(e.file_name())).unwrap();
            }
        }
        let profiles = dir.path().join("profiles");
        std::fs::create_dir(&profiles).unwrap();
        for e in std::fs::read_dir(repo.join("profiles")).unwrap().map(|e| e.unwrap()) {
            if e.file_name() != "hello.toml" {
                std::os::unix::fs::symlink(e.path(), profiles.join(e.file_name())).unwrap();
            }
        }
        let hello = format!(
            "extends = {:?}\n[disk]\nfree = \"1MiB\"\nesp_size = \"33MiB\"\n",
            repo.join("profiles/hello.toml")
        );
        std::fs::write(profiles.join("hello.toml"), hello).unwrap();
        dir
    })
    .path()
}

pub struct Moto {
    child: Child,
    pub url: String,
    pub addr: String,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Moto {
    pub fn start() -> Moto {
        let (child, port) = crate::common::spawn_on_own_port(
            Command::new("moto_server")
                .args(["-H", "127.0.0.1", "-p", "0"])
                .env("MOTO_EC2_LOAD_DEFAULT_AMIS", "false")
                // Objects stay in memory: by default moto moves every body over
                // 5 MiB (each 16 MiB part) into a temporary file, a quarter of
                // its CPU here. The largest object in these tests is ~100 MiB.
                .env("MOTO_S3_DEFAULT_KEY_BUFFER_SIZE", (1u64 << 30).to_string()),
            crate::common::Announces::Stderr,
            "Running on http://127.0.0.1:",
        );
        let addr = format!("127.0.0.1:{port}");
        Moto { child, url: format!("http://{addr}"), addr }
    }

    /// Runs boto3 code with `s3` and `ec2(region)` bound to this endpoint; what
    /// the code prints is parsed as JSON.
    pub fn py(&self, code: &str) -> Value {
        py_at(&self.url, code)
    }

    /// Names of this account's images in `region`.
    pub fn images(&self, region: &str) -> Vec<String> {
        let v = self.py(&format!(
            "print(json.dumps(sorted(i['Name'] for i in ec2('{region}').describe_images(Owners=['self'])['Images'])))"
        ));
        serde_json::from_value(v).unwrap()
    }

    /// Keys in the bucket.
    pub fn keys(&self, bucket: &str) -> Vec<String> {
        let v = self.py(&format!(
            "print(json.dumps(sorted(o['Key'] for o in s3.list_objects_v2(Bucket='{bucket}').get('Contents', []))))"
        ));
        serde_json::from_value(v).unwrap()
    }

    pub fn sync(&self, store: &Path, args: &[&str]) -> (Value, String) {
        aws_ok(&self.url, store, "sync", args)
    }
}

/// Runs boto3 code against `endpoint` (moto, or a proxy in front of it)
/// with `s3` and `ec2(region)` bound; what the code prints is parsed as JSON.
pub fn py_at(endpoint: &str, code: &str) -> Value {
    let mut checker = Checker::take();
    let out = checker.run(endpoint, code);
    CHECKERS.lock().unwrap_or_else(|p| p.into_inner()).push(checker);
    serde_json::from_str(out.trim()).unwrap_or(Value::Null)
}

/// Python interpreters with boto3 loaded, kept for the next check: starting
/// one and loading boto3 costs half a second of CPU, and the suite makes some
/// 170 checks while its tests compete for two cores. A checker runs one
/// check at a time, each in fresh globals; a test takes a free one or starts
/// one, so there are at most as many as checks at once.
static CHECKERS: std::sync::Mutex<Vec<Checker>> = std::sync::Mutex::new(Vec::new());

const CHECKER: &str = r#"
import boto3, contextlib, io, json, sys, traceback
for line in sys.stdin:
    req = json.loads(line)
    E = req["endpoint"]
    kw = dict(endpoint_url=E, aws_access_key_id="test", aws_secret_access_key="test")
    g = dict(boto3=boto3, json=json, E=E, kw=kw, s3=boto3.client("s3", region_name="us-east-1", **kw),
             ec2=lambda r, kw=kw: boto3.client("ec2", region_name=r, **kw))
    out, err = io.StringIO(), ""
    try:
        with contextlib.redirect_stdout(out):
            exec(req["code"], g)
    except BaseException:
        err = traceback.format_exc() or "failed"
    sys.__stdout__.write(json.dumps(dict(out=out.getvalue(), err=err)) + "\n")
    sys.__stdout__.flush()
"#;

struct Checker {
    child: Child,
    input: std::process::ChildStdin,
    output: std::io::BufReader<std::process::ChildStdout>,
}

impl Checker {
    fn take() -> Checker {
        if let Some(c) = CHECKERS.lock().unwrap_or_else(|p| p.into_inner()).pop() {
            return c;
        }
        let mut child = Command::new("python3")
            .args(["-c", CHECKER])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 with boto3 (scripts/setup.sh)");
        let input = child.stdin.take().unwrap();
        let output = std::io::BufReader::new(child.stdout.take().unwrap());
        Checker { child, input, output }
    }

    /// What `code` printed; panics (the test fails) with Python's
    /// traceback if it raised.
    fn run(&mut self, endpoint: &str, code: &str) -> String {
        use std::io::{BufRead, Write};
        let req = serde_json::json!({ "endpoint": endpoint, "code": code });
        writeln!(self.input, "{req}").unwrap();
        let mut line = String::new();
        self.output.read_line(&mut line).unwrap();
        let reply: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("python checker: {e}: {line:?}"));
        let err = reply["err"].as_str().unwrap_or_default();
        assert!(err.is_empty(), "python failed: {err}");
        reply["out"].as_str().unwrap_or_default().to_string()
    }
}

impl Drop for Checker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `imgd <cmd> args --json` against `endpoint`, with test credentials and no
/// instance-metadata lookups.
pub fn aws(endpoint: &str, store: &Path, cmd: &str, args: &[&str]) -> Output {
    let mut c = Command::new(imgd());
    c.arg(cmd).args(args).args(["--endpoint-url", endpoint, "--json"]);
    if !args.contains(&"--max-attempts") {
        c.args(["--max-attempts", "2"]);
    }
    test_env(&mut c, store).output().unwrap()
}

pub fn test_env<'c>(c: &'c mut Command, store: &Path) -> &'c mut Command {
    c.current_dir(repo())
        .env("IMGD_ROOT", root())
        .env("IMGD_STORE", store)
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .env("RUST_LOG", std::env::var("TEST_RUST_LOG").unwrap_or("warn".into()))
}

/// Like [`aws`], asserting success and parsing stdout as JSON.
pub fn aws_ok(endpoint: &str, store: &Path, cmd: &str, args: &[&str]) -> (Value, String) {
    let out = aws(endpoint, store, cmd, args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "imgd {cmd} failed: {stderr}");
    (serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {stderr}")), stderr)
}

/// The `imgd` binary under test.
pub fn imgd() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_imgd"))
}
