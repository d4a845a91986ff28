//! `imgd lock`: pin a profile's Debian base to an exact package set.

use super::ProfileArgs;
use anyhow::bail;
use clap::Args;
use imgd::config::lock::{diff, Lock};
use imgd::config::{self, ConfigError};

#[derive(Args, Debug)]
#[command(after_help = "Examples:
  imgd lock debian                 write profiles/debian.lock (if missing or the profile changed)
  imgd lock debian --update        re-resolve against the mirror; print what changed
  imgd lock debian --check         exit 1 if the mirror has newer packages than the lock")]
pub struct LockArgs {
    #[command(flatten)]
    pub profile: ProfileArgs,
    /// Re-resolve against the mirror even if the lock matches the profile.
    #[arg(long, conflicts_with = "check")]
    pub update: bool,
    /// Change nothing; exit 1 when re-resolving would change the lock.
    #[arg(long)]
    pub check: bool,
    /// Print the changes as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: &LockArgs) -> anyhow::Result<()> {
    let loaded = config::load(&a.profile.request())?;
    let arch = loaded.hardware.arch;
    let base = config::recipe::debian_base_unchecked(&loaded, arch, &a.profile.cache())?.ok_or_else(|| {
        ConfigError::new(&loaded.profile_path, "the profile has no [base.debian]: nothing to lock").key("base.debian")
    })?;
    let old = match Lock::read(&base.lock_path) {
        Ok(l) => Some(l),
        Err(_) if !base.lock_path.exists() => None,
        // A lock this imgd cannot read is replaced by --update, else reported.
        Err(e) if a.update => {
            tracing::warn!("replacing {}: {e:#}", base.lock_path.display());
            None
        }
        Err(e) => return Err(ConfigError::new(&base.lock_path, format!("{e:#}")).into()),
    };
    let current = old.as_ref().is_some_and(|l| l.request == base.request);
    if current && !a.update && !a.check {
        let n = old.as_ref().map_or(0, |l| l.packages.len());
        eprintln!("{} is up to date with the profile ({n} packages); --update re-resolves", base.lock_path.display());
        return Ok(());
    }
    let new = imgd::debian::resolve_lock(&base.mirror, &base.keyring, &base.request)?;
    let changes = diff(old.as_ref().map_or(&[][..], |l| &l.packages), &new.packages);
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "lock": base.lock_path,
                "release_date": new.release_date,
                "packages": new.packages.len(),
                "changes": changes,
            }))?
        );
    } else if old.is_some() {
        for c in &changes {
            println!("{c}");
        }
    }
    if a.check {
        if old.is_none() {
            bail!("{} does not exist: run `imgd lock`", base.lock_path.display());
        }
        if !current || !changes.is_empty() {
            bail!(
                "{}: {} package(s) differ from the mirror ({}): run `imgd lock --update`",
                base.lock_path.display(),
                changes.len(),
                new.release_date
            );
        }
        eprintln!("{} matches the mirror ({})", base.lock_path.display(), new.release_date);
        return Ok(());
    }
    let profile = loaded.profile_path.file_name().map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    new.write(&base.lock_path, &profile)?;
    eprintln!(
        "wrote {}: {} packages, {} MiB, from {} ({}); {} change(s)",
        base.lock_path.display(),
        new.packages.len(),
        new.packages.iter().map(|p| p.size).sum::<u64>() >> 20,
        new.mirror,
        new.release_date,
        changes.len()
    );
    Ok(())
}
