//! Running the external image tools (mkfs.ext4, debugfs, mtools, sfdisk,
//! qemu-img, depmod, dpkg-deb) with errors that show what failed and its stderr.

use anyhow::{bail, Context, Result};
use std::process::{Command, Stdio};

/// Runs a command to completion; a non-zero exit becomes an error carrying the
/// command line and the tail of its stderr.
pub fn run(cmd: &mut Command) -> Result<String> {
    let shown = format!("{cmd:?}").replace('"', "");
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {shown} (is it installed? see scripts/setup.sh)"))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(12).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        bail!("{shown} failed ({}):\n{}", out.status, tail.join("\n"));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The first line a tool prints about its version, for the input hash: a
/// different mkfs.ext4 may lay out a different (still valid) filesystem.
pub fn version_line(program: &str, arg: &str) -> String {
    match Command::new(program).arg(arg).stdin(Stdio::null()).output() {
        Ok(o) => {
            let text = if o.stdout.is_empty() { o.stderr } else { o.stdout };
            String::from_utf8_lossy(&text).lines().next().unwrap_or("").trim().to_string()
        }
        Err(_) => "missing".into(),
    }
}
