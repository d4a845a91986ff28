//! Running the external image tools (mkfs.ext4, debugfs, mtools, sfdisk,
//! qemu-img, depmod, dpkg-deb) with errors that show what failed and its stderr.

use std::path::Path;
use std::process::{Command, Stdio};

/// Wraps a command in `setpriv --pdeathsig KILL` so the kernel kills it when
/// imgd dies, however it dies (even SIGKILL, where no handler runs): a killed
/// build must not leave a tool writing into a folder the next build sweeps,
/// nor a qemu running. The spawning thread must wait for the child (the signal
/// follows the thread that spawned it), which `run` and qemu's callers do.
pub(crate) fn guarded(cmd: &Command) -> Command {
    let setpriv = ["/usr/bin/setpriv", "/bin/setpriv"].into_iter().find(|p| Path::new(p).exists());
    let mut g = match setpriv {
        Some(setpriv) => {
            let mut g = Command::new(setpriv);
            g.args(["--pdeathsig", "KILL", "--"]).arg(cmd.get_program());
            g
        }
        None => Command::new(cmd.get_program()),
    };
    g.args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => g.env(k, v),
            None => g.env_remove(k),
        };
    }
    if let Some(d) = cmd.get_current_dir() {
        g.current_dir(d);
    }
    g
}

/// Streams the data of a Debian package (`dpkg-deb --fsys-tarfile`, any
/// compression dpkg-deb reads) as a tar archive into `read`. A pipe, not
/// `dpkg-deb -x`: `-x` runs tar as a grandchild that goes on writing after imgd
/// is killed, racing the next build's sweep of `.tmp`; a pipe's writer dies
/// with its reader.
pub(crate) fn read_deb_data<T>(
    deb: &Path,
    read: impl FnOnce(&mut dyn std::io::Read) -> std::io::Result<T>,
) -> std::io::Result<T> {
    use std::io::Error;
    let mut child = guarded(&Command::new("dpkg-deb"))
        .arg("--fsys-tarfile")
        .arg(deb)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| Error::new(e.kind(), format!("cannot run dpkg-deb (install dpkg): {e}")))?;
    let Some(stdout) = child.stdout.take() else {
        return Err(Error::other("dpkg-deb's output was not piped"));
    };
    let res = read(&mut std::io::BufReader::with_capacity(1 << 20, stdout));
    let status = child.wait()?;
    let out = res?;
    if !status.success() {
        return Err(Error::other(format!("dpkg-deb --fsys-tarfile {} failed: {status}", deb.display())));
    }
    Ok(out)
}

/// An external tool that could not be started or that failed.
#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    /// Not installed, or not executable.
    #[error("cannot run {command} (is it installed? see scripts/setup.sh)")]
    NotRun {
        command: String,
        #[source]
        source: std::io::Error,
    },
    /// It ran and exited non-zero: the last lines of its stderr.
    #[error("{command} failed ({status}):\n{stderr}")]
    Failed { command: String, status: std::process::ExitStatus, stderr: String },
}

/// Runs a command to completion; a non-zero exit becomes an error carrying the
/// command line and the tail of its stderr.
pub(crate) fn run(cmd: &mut Command) -> Result<String, ToolError> {
    let command = format!("{cmd:?}").replace('"', "");
    let out = match guarded(cmd).stdin(Stdio::null()).output() {
        Ok(out) => out,
        Err(source) => return Err(ToolError::NotRun { command, source }),
    };
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(12).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        return Err(ToolError::Failed { command, status: out.status, stderr: tail.join("\n") });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The first line a tool prints about its version, for the input hash: a
/// different mkfs.ext4 may lay out a different (still valid) filesystem.
pub(crate) fn version_line(program: &str, arg: &str) -> String {
    match Command::new(program).arg(arg).stdin(Stdio::null()).output() {
        Ok(o) => {
            let text = if o.stdout.is_empty() { o.stderr } else { o.stdout };
            String::from_utf8_lossy(&text).lines().next().unwrap_or("").trim().to_string()
        }
        Err(_) => "missing".into(),
    }
}
