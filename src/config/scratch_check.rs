//! Checks `[scratch]` (schema in `config::scratch`): every value lands in
//! the boot script, so paths and globs are held to characters that mean
//! nothing to the shell but a glob's own.

use super::error::ConfigError;
use super::load::Loaded;
use super::scratch::{DiskCount, Filesystem, Layout, NoDisk, Scratch};

/// Checks `[scratch]`.
pub(crate) fn check(l: &Loaded, init: &str) -> Result<Option<Scratch>, ConfigError> {
    let Some(s) = &l.profile.scratch else { return Ok(None) };
    // The stage hands over to the profile's init by this path.
    let init_ok = init.starts_with('/') && init.chars().all(|c| c.is_ascii_alphanumeric() || "/._-+@".contains(c));
    if !init_ok {
        return Err(l.error(
            "init",
            format!("`{}`: with [scratch], an absolute path of letters, digits and / . _ - + @", init.escape_debug()),
        ));
    }
    let mount = s.mount.clone().unwrap_or_else(|| "/scratch".into());
    shell_path(l, "scratch.mount", &mount)?;
    for (i, b) in s.bind.iter().enumerate() {
        let key = format!("scratch.bind[{i}]");
        shell_path(l, &key, b)?;
        if b == &mount || b.starts_with(&format!("{mount}/")) || mount.starts_with(&format!("{b}/")) {
            return Err(l.error(&key, format!("{b} and the scratch mount {mount} hold each other")));
        }
    }
    let m = s.matches.clone().unwrap_or_default();
    for (key, v) in [("scratch.match.serial", &m.serial), ("scratch.match.model", &m.model)] {
        if let Some(v) = v {
            glob(l, key, v)?;
        }
    }
    let layout = s.layout.unwrap_or(Layout::Raid0);
    let disks = match s.disks.unwrap_or(DiskCount::All) {
        DiskCount::All => None,
        DiskCount::Count(n) => Some(n),
    };
    Ok(Some(Scratch {
        mount,
        disks,
        serial: m.serial,
        model: m.model,
        min_size: s.min_size.map_or(0, |s| s.0),
        layout,
        filesystem: s.filesystem.unwrap_or(Filesystem::Ext4),
        none: s.none.unwrap_or(NoDisk::Tmpfs),
        bind: s.bind.clone(),
        init: init.to_string(),
    }))
}

/// Absolute, normal, and made of characters the shell leaves alone; not a
/// folder the system itself mounts.
fn shell_path(l: &Loaded, key: &str, p: &str) -> Result<(), ConfigError> {
    let chars_ok = p.chars().all(|c| c.is_ascii_alphanumeric() || "/._-+@".contains(c));
    let parts_ok = p.split('/').skip(1).all(|s| !s.is_empty() && s != "." && s != "..");
    if !p.starts_with('/') || p.len() > 200 || !chars_ok || !parts_ok {
        return Err(l.error(
            key,
            format!(
                "`{}` must be an absolute path of letters, digits and / . _ - + @ (no `..`, no trailing /)",
                p.escape_debug()
            ),
        ));
    }
    let system = ["/proc", "/sys", "/dev", "/run", "/bin", "/sbin", "/lib", "/usr", "/etc"];
    if let Some(s) = system.iter().find(|s| p == **s || p.starts_with(&format!("{s}/"))) {
        return Err(l.error(key, format!("{p} is in {s}, which the system needs as the image has it")));
    }
    Ok(())
}

/// A glob over what a disk reports (serial, model): printable ASCII without
/// quotes, `$`, backquotes or backslashes, which the boot script's `case`
/// would read as shell.
fn glob(l: &Loaded, key: &str, g: &str) -> Result<(), ConfigError> {
    let ok = !g.is_empty() && g.len() <= 128 && g.chars().all(|c| (' '..='~').contains(&c) && !"\"'`$\\".contains(c));
    if ok && glob::Pattern::new(g).is_ok() {
        Ok(())
    } else {
        Err(l.error(key, format!("`{}`: a glob of printable ASCII without quotes, $, ` or \\", g.escape_debug())))
    }
}
