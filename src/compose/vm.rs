//! One machine of a composition in qemu: its serial console kept (to a log
//! file and in memory, for `console` steps and failure tails), its NICs on
//! imgd's switch, and the command port its node stage serves.

use super::error::VmError;
use crate::fsutil::IoAt;
use base64::Engine;
use serde::{Deserialize, Serialize};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};

type Result<T, E = VmError> = std::result::Result<T, E>;
use std::time::{Duration, Instant};

/// Console text kept in memory per machine (the log file has all of it).
const KEEP_CONSOLE: usize = 4 << 20;

pub(crate) struct Vm {
    pub name: String,
    child: Child,
    console: Arc<(Mutex<Console>, Condvar)>,
    pub log: PathBuf,
    shell: Shell,
}

/// Where imgd sends a machine's commands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Door {
    /// The node stage's command port: a qemu unix socket at this path.
    Port(PathBuf),
    /// SSH as `user` with `key`, through this loopback port forwarded to
    /// the machine's port 22 (for images whose own sshd is under test).
    Ssh { port: u16, user: String, key: PathBuf },
}

/// A client of a machine's [`Door`].
pub enum Shell {
    Agent(Agent),
    Ssh(Ssh),
}

impl Shell {
    pub fn new(name: &str, door: &Door) -> Shell {
        match door {
            Door::Port(path) => Shell::Agent(Agent::new(name, path)),
            Door::Ssh { port, user, key } => Shell::Ssh(Ssh {
                name: name.to_string(),
                port: *port,
                user: user.clone(),
                key: key.clone(),
                reached: false,
            }),
        }
    }

    /// Runs `script` with `sh` in the guest, at most `timeout`: its exit
    /// status and its output (stdout and stderr, as one).
    pub fn exec(&mut self, script: &str, timeout: Duration) -> Result<Output> {
        match self {
            Shell::Agent(a) => a.exec(script, timeout),
            Shell::Ssh(s) => s.exec(script, timeout),
        }
    }

    fn forget(&mut self) {
        match self {
            Shell::Agent(a) => a.conn = None,
            Shell::Ssh(s) => s.reached = false,
        }
    }
}

/// A client of a node stage's command port (a qemu unix socket).
pub struct Agent {
    name: String,
    path: PathBuf,
    conn: Option<BufReader<UnixStream>>,
    seq: u64,
}

#[derive(Default)]
struct Console {
    text: String,
    /// Bytes dropped from the front of `text` to keep it bounded.
    dropped: usize,
    closed: bool,
}

/// What a command in the guest did.
#[derive(Debug)]
pub struct Output {
    pub status: i32,
    pub text: String,
}

impl Vm {
    /// Starts `cmd` (qemu with `-serial stdio`), logging the console to `log`.
    pub(crate) fn start(name: &str, cmd: &Command, log: &Path, door: &Door) -> Result<Vm> {
        let mut cmd = crate::tools::guarded(cmd);
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(VmError::Start)?;
        let console: Arc<(Mutex<Console>, Condvar)> = Arc::default();
        let logf = std::fs::File::options().write(true).create_new(true).open(log).at("creating console log", log)?;
        let logf = Arc::new(Mutex::new(logf));
        if let (Some(out), Some(err)) = (child.stdout.take(), child.stderr.take()) {
            pump(out, console.clone(), logf.clone(), "");
            pump(err, console.clone(), logf, "[qemu] ");
        }
        Ok(Vm { name: name.to_string(), child, console, log: log.to_path_buf(), shell: Shell::new(name, door) })
    }

    /// Waits for `text` anywhere on the console since boot.
    pub(crate) fn wait_console(&self, text: &str, timeout: Duration) -> Result<()> {
        let (lock, cv) = &*self.console;
        let deadline = Instant::now() + timeout;
        let mut c = lock.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if c.text.contains(text) {
                return Ok(());
            }
            if c.closed {
                return Err(VmError::ConsoleClosed(text.to_string()));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(VmError::ConsoleTimeout { text: text.to_string(), secs: timeout.as_secs() });
            }
            c = cv.wait_timeout(c, left).unwrap_or_else(|e| e.into_inner()).0;
        }
    }

    /// The console's last `lines` lines.
    pub(crate) fn tail(&self, lines: usize) -> String {
        let c = self.console.0.lock().unwrap_or_else(|e| e.into_inner());
        let all: Vec<&str> = c.text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Runs `script` with `sh` in the guest, at most `timeout`.
    pub(crate) fn exec(&mut self, script: &str, timeout: Duration) -> Result<Output> {
        self.shell.exec(script, timeout)
    }

    pub(crate) fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Stops qemu at once (a power cut, as `kill` steps want).
    pub(crate) fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.shell.forget();
    }
}

impl Agent {
    pub(crate) fn new(name: &str, path: &Path) -> Agent {
        Agent { name: name.to_string(), path: path.to_path_buf(), conn: None, seq: 0 }
    }

    /// Runs `script` with `sh` in the guest, at most `timeout`.
    pub(crate) fn exec(&mut self, script: &str, timeout: Duration) -> Result<Output> {
        let deadline = Instant::now() + timeout;
        self.connect(deadline)?;
        let secs = timeout.as_secs().max(1);
        self.send(script, secs, deadline)
    }

    /// Connects to the command port and waits until the guest answers a
    /// no-op: before that, a command could sit unread while the node boots.
    fn connect(&mut self, deadline: Instant) -> Result<()> {
        if self.conn.is_some() {
            return Ok(());
        }
        let stream = loop {
            match UnixStream::connect(&self.path) {
                Ok(s) => break s,
                Err(source) if Instant::now() >= deadline => {
                    return Err(VmError::Unreachable { name: self.name.clone(), path: self.path.clone(), source });
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        };
        self.conn = Some(BufReader::new(stream));
        loop {
            let probe = Instant::now() + Duration::from_secs(2);
            match self.send("true", 2, probe.min(deadline)) {
                Ok(_) => return Ok(()),
                Err(_) if Instant::now() < deadline => {}
                Err(e) => {
                    self.conn = None;
                    return Err(VmError::NeverAnswered { name: self.name.clone(), source: Box::new(e) });
                }
            }
        }
    }

    fn send(&mut self, script: &str, secs: u64, deadline: Instant) -> Result<Output> {
        let b64 = base64::engine::general_purpose::STANDARD;
        self.seq += 1;
        // A nonce per command: a late answer to an earlier one is skipped.
        let nonce = format!("n{}x{}", self.seq, std::process::id());
        let conn = self.conn.as_mut().ok_or(VmError::NotConnected)?;
        let line = format!("{nonce} {secs} {}\n", b64.encode(script));
        conn.get_mut().write_all(line.as_bytes())?;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(VmError::NoAnswer { name: self.name.clone(), secs });
            }
            conn.get_mut().set_read_timeout(Some(left))?;
            let mut answer = String::new();
            match conn.read_line(&mut answer) {
                Ok(0) => return Err(VmError::PortClosed(self.name.clone())),
                Ok(_) => {}
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => continue,
                Err(e) => return Err(e.into()),
            }
            let mut parts = answer.trim_end().splitn(3, ' ');
            if parts.next() != Some(nonce.as_str()) {
                continue;
            }
            let status = parts.next().and_then(|s| s.parse().ok()).ok_or(VmError::Malformed)?;
            let bytes = b64.decode(parts.next().unwrap_or("")).map_err(|_| VmError::Malformed)?;
            return Ok(Output { status, text: String::from_utf8_lossy(&bytes).into_owned() });
        }
    }
}

/// A machine reached over SSH. Its host keys are made at boot, so there is
/// nothing to pin: the port is loopback-only and leads to this one VM.
pub struct Ssh {
    name: String,
    port: u16,
    user: String,
    key: PathBuf,
    /// Logged in at least once since the machine (re)started: before that a
    /// refused connection means "not up yet" and is retried.
    reached: bool,
}

/// Output kept from one SSH command (as the command port's answers are bounded by the guest).
const MAX_SSH_OUTPUT: u64 = 4 << 20;

impl Ssh {
    pub(crate) fn exec(&mut self, script: &str, timeout: Duration) -> Result<Output> {
        let deadline = Instant::now() + timeout;
        loop {
            let (status, text, ssh_said) = self.once(script, deadline)?;
            // 255 is ssh's own failure (no connection, key refused), not the command's.
            if status != 255 {
                self.reached = true;
                return Ok(Output { status, text });
            }
            if self.reached || Instant::now() + Duration::from_secs(1) >= deadline {
                let (name, user, port) = (self.name.clone(), self.user.clone(), self.port);
                return Err(VmError::Ssh { name, user, port, said: ssh_said.trim().to_string() });
            }
            std::thread::sleep(Duration::from_secs(1));
        }
    }

    /// One `ssh` run, killed at `deadline`: (status, output, ssh's stderr).
    fn once(&self, script: &str, deadline: Instant) -> Result<(i32, String, String)> {
        let left = deadline.saturating_duration_since(Instant::now()).as_secs().clamp(1, 10);
        let mut child = Command::new("ssh")
            .arg("-i")
            .arg(&self.key)
            .args(["-p", &self.port.to_string(), "-T", "-o", "BatchMode=yes", "-o", "LogLevel=ERROR"])
            .args(["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null"])
            .args(["-o", &format!("ConnectTimeout={left}"), &format!("{}@127.0.0.1", self.user)])
            // One argument: the login shell runs it as `sh -c`, stderr joined to stdout.
            .arg(format!("exec 2>&1; {script}"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(VmError::NoSsh)?;
        let read = |r: Option<Box<dyn Read + Send>>| {
            std::thread::spawn(move || {
                let mut text = Vec::new();
                if let Some(r) = r {
                    let _ = r.take(MAX_SSH_OUTPUT).read_to_end(&mut text);
                }
                String::from_utf8_lossy(&text).into_owned()
            })
        };
        let out = read(child.stdout.take().map(|r| Box::new(r) as Box<dyn Read + Send>));
        let err = read(child.stderr.take().map(|r| Box::new(r) as Box<dyn Read + Send>));
        let status = loop {
            if let Some(s) = child.try_wait()? {
                break s;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(VmError::SshTimeout(self.name.clone()));
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let text = out.join().unwrap_or_default();
        let said = err.join().unwrap_or_default();
        Ok((status.code().unwrap_or(255), text, said))
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Copies one of qemu's pipes into the console (and its log).
fn pump(
    mut r: impl Read + Send + 'static,
    console: Arc<(Mutex<Console>, Condvar)>,
    log: Arc<Mutex<std::fs::File>>,
    tag: &'static str,
) {
    std::thread::spawn(move || {
        let mut buf = [0u8; 8192];
        loop {
            let n = match r.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let text = String::from_utf8_lossy(&buf[..n]).replace('\r', "");
            let text = if tag.is_empty() { text } else { text.lines().map(|l| format!("{tag}{l}\n")).collect() };
            let _ = log.lock().unwrap_or_else(|e| e.into_inner()).write_all(text.as_bytes());
            let (lock, cv) = &*console;
            let mut c = lock.lock().unwrap_or_else(|e| e.into_inner());
            c.text.push_str(&text);
            if c.text.len() > KEEP_CONSOLE {
                let mut cut = c.text.len() - KEEP_CONSOLE / 2;
                while !c.text.is_char_boundary(cut) {
                    cut += 1;
                }
                c.text.drain(..cut);
                c.dropped += cut;
            }
            cv.notify_all();
        }
        if tag.is_empty() {
            let (lock, cv) = &*console;
            lock.lock().unwrap_or_else(|e| e.into_inner()).closed = true;
            cv.notify_all();
        }
    });
}
