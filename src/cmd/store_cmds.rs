//! `imgd ls`, `imgd verify`, `imgd gc`: looking after the store.

use super::StoreArgs;
use anyhow::bail;
use clap::Args;

#[derive(Args, Debug)]
pub struct LsArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    #[arg(long)]
    pub json: bool,
}

pub fn ls(a: &LsArgs) -> anyhow::Result<()> {
    let store = a.store.open()?;
    let entries = store.entries()?;
    if a.json {
        let v: Vec<_> = entries
            .iter()
            .map(|e| {
                serde_json::json!({
                    "name": e.name, "hash": e.manifest.hash, "profile": e.manifest.profile,
                    "built_at": e.manifest.built_at, "path": e.path,
                    "formats": e.manifest.artifacts.iter().map(|a| a.format).collect::<std::collections::BTreeSet<_>>(),
                    "size": e.manifest.artifacts.iter().map(|a| a.size).sum::<u64>(),
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    for e in entries {
        let size: u64 = e.manifest.artifacts.iter().map(|a| a.size).sum();
        let mut formats: Vec<String> = e.manifest.artifacts.iter().map(|a| a.format.to_string()).collect();
        formats.dedup();
        println!("{}  {:>8.1} MiB  {}", e.name, size as f64 / (1 << 20) as f64, formats.join(","));
    }
    Ok(())
}

#[derive(Args, Debug)]
pub struct VerifyArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// Entries to check (default: all).
    pub entries: Vec<imgd::model::EntryName>,
}

pub fn verify(a: &VerifyArgs) -> anyhow::Result<()> {
    let store = a.store.open()?;
    let entries = if a.entries.is_empty() {
        store.entries()?
    } else {
        a.entries
            .iter()
            .map(|n| store.get(n)?.ok_or_else(|| anyhow::anyhow!("no entry {n} in {}", store.root().display())))
            .collect::<anyhow::Result<_>>()?
    };
    let mut bad = 0;
    for e in &entries {
        let problems = store.verify(e);
        if problems.is_empty() {
            println!("ok       {}", e.name);
        } else {
            bad += 1;
            println!("CORRUPT  {}", e.name);
            for p in problems {
                println!("  {p}");
            }
        }
    }
    if bad > 0 {
        bail!("{bad} of {} entries are corrupt", entries.len());
    }
    Ok(())
}

#[derive(Args, Debug)]
pub struct GcArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// Keep the newest N entries of each profile.
    #[arg(long)]
    pub keep: usize,
    /// imgd's local cache folder, where unpacked kernels and Debian bases are kept.
    #[arg(long = "cache-dir", env = "IMGD_CACHE")]
    pub cache_dir: Option<std::path::PathBuf>,
    /// Also remove unpacked kernels and Debian bases no build used for this
    /// long (a count and s, m, h, d or w; at least a day, so that a build
    /// that is reading one never loses it). Downloaded packages are kept.
    #[arg(long, value_name = "AGE", default_value = imgd::shelf::UNUSED_AGE, value_parser = cache_age)]
    pub cache_unused: std::time::Duration,
}

fn cache_age(s: &str) -> Result<std::time::Duration, String> {
    let d = super::duration(s)?;
    if d < std::time::Duration::from_secs(86_400) {
        return Err(format!("`{s}`: at least 1d (a build may be reading what was used more recently)"));
    }
    Ok(d)
}

pub fn gc(a: &GcArgs) -> anyhow::Result<()> {
    let store = a.store.open()?;
    for name in store.gc(a.keep)? {
        println!("removed {name}");
    }
    // The cache: rebuilt on demand, so what no build used lately is only disk.
    let cache = a.cache_dir.clone().unwrap_or_else(imgd::dirs::cache);
    let mut removed = imgd::rootfs::kernel::remove_unused(&imgd::rootfs::kernel::shelf(&cache), a.cache_unused, "");
    removed.extend(imgd::rootfs::debian_base::remove_unused(
        &imgd::rootfs::debian_base::Cache::new(&cache),
        a.cache_unused,
        "",
    ));
    removed.extend(imgd::qemu::pvh::remove_unused(&imgd::qemu::pvh::shelf(&cache), a.cache_unused));
    let mib = |b: u64| b.div_ceil(1 << 20);
    for r in &removed {
        println!("removed {} from the cache ({} MiB)", r.what, mib(r.bytes));
    }
    if !removed.is_empty() {
        println!("freed {} MiB in {}", mib(removed.iter().map(|r| r.bytes).sum()), cache.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn gc_s_default_age_is_the_one_builds_prune_by() {
        assert_eq!(super::cache_age(imgd::shelf::UNUSED_AGE), Ok(imgd::shelf::UNUSED));
        assert!(super::cache_age("23h").is_err(), "under a day is refused");
    }
}
