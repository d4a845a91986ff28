//! One machine of a composition in qemu: its serial console kept (to a log
//! file and in memory, for `console` steps and failure tails), its NICs on
//! imgd's switch, and the command port its node stage serves.

use anyhow::{bail, Context, Result};
use base64::Engine;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Console text kept in memory per machine (the log file has all of it).
const KEEP_CONSOLE: usize = 4 << 20;

pub struct Vm {
    pub name: String,
    child: Child,
    console: Arc<(Mutex<Console>, Condvar)>,
    pub log: PathBuf,
    agent: Agent,
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
    pub fn start(name: &str, cmd: &Command, log: &Path, agent: &Path) -> Result<Vm> {
        let mut cmd = crate::tools::guarded(cmd);
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().context("cannot start qemu (apt-get install qemu-system-x86)")?;
        let console: Arc<(Mutex<Console>, Condvar)> = Arc::default();
        let logf = std::fs::File::options().write(true).create_new(true).open(log)?;
        let logf = Arc::new(Mutex::new(logf));
        if let (Some(out), Some(err)) = (child.stdout.take(), child.stderr.take()) {
            pump(out, console.clone(), logf.clone(), "");
            pump(err, console.clone(), logf, "[qemu] ");
        }
        Ok(Vm { name: name.to_string(), child, console, log: log.to_path_buf(), agent: Agent::new(name, agent) })
    }

    /// Waits for `text` anywhere on the console since boot.
    pub fn wait_console(&self, text: &str, timeout: Duration) -> Result<()> {
        let (lock, cv) = &*self.console;
        let deadline = Instant::now() + timeout;
        let mut c = lock.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if c.text.contains(text) {
                return Ok(());
            }
            if c.closed {
                bail!("qemu exited before `{text}` appeared on the console");
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!("`{text}` did not appear on the console within {}s", timeout.as_secs());
            }
            c = cv.wait_timeout(c, left).unwrap_or_else(|e| e.into_inner()).0;
        }
    }

    /// The console's last `lines` lines.
    pub fn tail(&self, lines: usize) -> String {
        let c = self.console.0.lock().unwrap_or_else(|e| e.into_inner());
        let all: Vec<&str> = c.text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Runs `script` with `sh` in the guest, at most `timeout`.
    pub fn exec(&mut self, script: &str, timeout: Duration) -> Result<Output> {
        self.agent.exec(script, timeout)
    }

    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Stops qemu at once (a power cut, as `kill` steps want).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.agent.conn = None;
    }
}

impl Agent {
    pub fn new(name: &str, path: &Path) -> Agent {
        Agent { name: name.to_string(), path: path.to_path_buf(), conn: None, seq: 0 }
    }

    /// Runs `script` with `sh` in the guest, at most `timeout`.
    pub fn exec(&mut self, script: &str, timeout: Duration) -> Result<Output> {
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
                Err(e) if Instant::now() >= deadline => {
                    bail!("cannot reach the command port of {} ({}): {e}", self.name, self.path.display())
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
                    return Err(
                        e.context(format!("the node stage of {} never answered on its command port", self.name))
                    );
                }
            }
        }
    }

    fn send(&mut self, script: &str, secs: u64, deadline: Instant) -> Result<Output> {
        let b64 = base64::engine::general_purpose::STANDARD;
        self.seq += 1;
        // A nonce per command: a late answer to an earlier one is skipped.
        let nonce = format!("n{}x{}", self.seq, std::process::id());
        let conn = self.conn.as_mut().context("not connected")?;
        let line = format!("{nonce} {secs} {}\n", b64.encode(script));
        conn.get_mut().write_all(line.as_bytes())?;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!("no answer from {} within {}s", self.name, secs);
            }
            conn.get_mut().set_read_timeout(Some(left))?;
            let mut answer = String::new();
            match conn.read_line(&mut answer) {
                Ok(0) => bail!("the command port of {} closed", self.name),
                Ok(_) => {}
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => continue,
                Err(e) => return Err(e.into()),
            }
            let mut parts = answer.trim_end().splitn(3, ' ');
            if parts.next() != Some(nonce.as_str()) {
                continue;
            }
            let status = parts.next().and_then(|s| s.parse().ok()).context("a malformed answer")?;
            let bytes = b64.decode(parts.next().unwrap_or("")).context("a malformed answer")?;
            return Ok(Output { status, text: String::from_utf8_lossy(&bytes).into_owned() });
        }
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
