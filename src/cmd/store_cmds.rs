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
    pub entries: Vec<String>,
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
}

pub fn gc(a: &GcArgs) -> anyhow::Result<()> {
    let store = a.store.open()?;
    for name in store.gc(a.keep)? {
        println!("removed {name}");
    }
    Ok(())
}
