//! `imgd compose up | exec | down | connect`: a composition kept running in
//! the foreground by `up`, reached from other terminals through a state file
//! (`<cache>/compose/<hash of the file's path>.json`) naming `up`'s process
//! and its private folder of consoles and command ports.

use super::args::{Common, ConnectArgs, ExecArgs, Which};
use super::images::{build, names, private_dir, Built};
use anyhow::{bail, Context, Result};
use imgd::compose::vm::{Door, Shell};
use imgd::compose::Running;
use serde::{Deserialize, Serialize};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// What `up` tells the other verbs.
#[derive(Serialize, Deserialize)]
struct State {
    pid: i32,
    dir: PathBuf,
    nodes: Vec<String>,
    /// Where each machine's commands go, in `nodes`' order.
    #[serde(default)]
    doors: Vec<Door>,
}

fn state_file(file: &Path) -> Result<PathBuf> {
    use sha2::Digest;
    let canon = file.canonicalize().with_context(|| format!("cannot read {}", file.display()))?;
    let key = sha2::Sha256::digest(canon.as_os_str().as_encoded_bytes());
    Ok(imgd::dirs::cache().join("compose").join(format!("{}.json", hex::encode(&key[..8]))))
}

/// Whether `pid` runs (a zombie, exited but not yet reaped by its parent, does not).
fn alive(pid: i32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let state = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next());
    !matches!(state, None | Some("Z" | "X"))
}

/// The state of `file`'s running composition. The file is only trusted as
/// far as it is checked: `up` still running, its folder ours and private.
fn running_state(file: &Path) -> Result<State> {
    let path = state_file(file)?;
    let not_up = || format!("{} is not up (start it with `imgd compose up {}`)", file.display(), file.display());
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(not_up()),
        Err(e) => return Err(e).context(path.display().to_string()),
    };
    let state: State =
        serde_json::from_str(&text).with_context(|| format!("{}: not a compose state file", path.display()))?;
    if !alive(state.pid) {
        let _ = std::fs::remove_file(&path);
        bail!(not_up());
    }
    let meta = std::fs::symlink_metadata(&state.dir).with_context(|| format!("{}", state.dir.display()))?;
    if !meta.is_dir() || meta.uid() != rustix::process::getuid().as_raw() || meta.mode() & 0o077 != 0 {
        bail!("{}: {} is not a private folder of this user", path.display(), state.dir.display());
    }
    Ok(state)
}

pub fn up(c: &Common) -> Result<()> {
    let path = state_file(&c.file)?;
    if let Ok(s) = running_state(&c.file) {
        bail!("{} is already up (process {}); `imgd compose down {}` first", c.file.display(), s.pid, c.file.display());
    }
    let Built { comp, images, accel } = build(c)?;
    let dir = private_dir("imgd-compose.")?;
    let store = c.store.dir();
    let running = Running::up(&comp, &images, accel, c.boot(&store), dir.path(), c.pcap)?;
    let state = State {
        pid: std::process::id() as i32,
        dir: dir.path().to_path_buf(),
        nodes: comp.nodes.iter().map(|n| n.name.clone()).collect(),
        doors: running.doors().to_vec(),
    };
    std::fs::create_dir_all(path.parent().context("state path")?)?;
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_vec(&state)?)?;
    std::fs::rename(&tmp, &path)?;
    let f = c.file.display();
    // On stdout: what a script that started `up` waits for.
    println!("imgd compose: {} up ({}, {accel:?}); consoles in {}", f, names(&comp), dir.path().display());
    println!("imgd compose: `imgd compose exec {f} NODE CMD`, `imgd compose connect {f}`; Ctrl-C or `imgd compose down {f}` stops it");
    wait_for_stop()?;
    drop(running);
    let _ = std::fs::remove_file(&path);
    eprintln!("imgd compose: every machine stopped");
    if c.pcap {
        eprintln!("imgd compose: consoles and captures kept in {}", dir.keep().display());
    }
    Ok(())
}

/// Blocks until SIGINT or SIGTERM.
fn wait_for_stop() -> Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        Ok(())
    })
}

pub fn exec(e: &ExecArgs) -> Result<()> {
    let state = running_state(&e.file)?;
    let mut agent = agent(&state, &e.file, &e.node)?;
    let out = agent.exec(&e.command, Duration::from_secs(e.timeout.max(1)))?;
    print!("{}", out.text);
    if out.status != 0 {
        std::process::exit(out.status.clamp(1, 255));
    }
    Ok(())
}

fn agent(state: &State, file: &Path, node: &str) -> Result<Shell> {
    let i =
        state.nodes.iter().position(|n| n == node).with_context(|| {
            format!("no machine `{node}` in {} (machines: {})", file.display(), state.nodes.join(", "))
        })?;
    // A command port only ever inside up's private folder.
    let door = match state.doors.get(i) {
        Some(Door::Port(_)) | None => Door::Port(state.dir.join(format!("a{i}"))),
        Some(ssh) => ssh.clone(),
    };
    Ok(Shell::new(node, &door))
}

pub fn down(w: &Which) -> Result<()> {
    let state = running_state(&w.file)?;
    let pid = rustix::process::Pid::from_raw(state.pid).context("bad pid")?;
    rustix::process::kill_process(pid, rustix::process::Signal::TERM)?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while alive(state.pid) {
        if Instant::now() >= deadline {
            bail!("process {} did not stop within 30s", state.pid);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("imgd compose: {} is down", w.file.display());
    Ok(())
}

/// One tmux pane per machine, each a shell on its command port.
pub fn connect(w: &ConnectArgs) -> Result<()> {
    let state = running_state(&w.file)?;
    let exe = std::env::current_exe()?;
    let file = w.file.canonicalize()?;
    let pane = |node: &str| {
        format!(
            "{} compose shell {} {}",
            sh_quote(&exe.to_string_lossy()),
            sh_quote(&file.to_string_lossy()),
            sh_quote(node)
        )
    };
    let session = format!("imgd-{}", std::process::id());
    let tmux = |args: &[&str]| -> Result<()> {
        let st =
            std::process::Command::new("tmux").args(args).status().context("cannot run tmux (apt-get install tmux)")?;
        if !st.success() {
            bail!("tmux {} failed", args.join(" "));
        }
        Ok(())
    };
    let first = pane(&state.nodes[0]);
    tmux(&["new-session", "-d", "-s", &session, "-n", "compose", &first])?;
    tmux(&["select-pane", "-t", &session, "-T", &state.nodes[0]])?;
    for n in &state.nodes[1..] {
        tmux(&["split-window", "-t", &session, &pane(n)])?;
        tmux(&["select-pane", "-t", &session, "-T", n])?;
        tmux(&["select-layout", "-t", &session, "tiled"])?;
    }
    tmux(&["set-option", "-t", &session, "pane-border-status", "top"])?;
    if w.no_attach {
        println!("{session}");
        Ok(())
    } else if std::env::var_os("TMUX").is_some() {
        tmux(&["switch-client", "-t", &session])
    } else {
        tmux(&["attach-session", "-t", &session])
    }
}

/// A line shell on a machine's command port or SSH (what `connect`'s panes run).
pub fn shell(file: &Path, node: &str) -> Result<()> {
    use std::io::{BufRead, Write};
    let state = running_state(file)?;
    agent(&state, file, node)?;
    let stdin = std::io::stdin();
    loop {
        print!("{node}$ ");
        std::io::stdout().flush()?;
        let mut line = String::new();
        if stdin.lock().read_line(&mut line)? == 0 {
            return Ok(());
        }
        if line.trim().is_empty() {
            continue;
        }
        // A connection per command: qemu serves one client at a time, and a
        // pane left open must not block `imgd compose exec`.
        match agent(&state, file, node)?.exec(&line, Duration::from_secs(600)) {
            Ok(out) => {
                print!("{}", out.text);
                if out.status != 0 {
                    println!("[exit {}]", out.status);
                }
            }
            Err(e) => println!("imgd: {e:#}"),
        }
    }
}

fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}
