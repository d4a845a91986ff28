//! `imgd fetch`: a profile's locked Debian packages into the local pool.

use super::ProfileArgs;
use anyhow::bail;
use clap::Args;
use imgd::config::recipe::Base;
use imgd::debian::fetch::Mirror;
use imgd::rootfs::debian_base as bootstrap;

#[derive(Args, Debug)]
#[command(after_help = "Examples:
  imgd fetch debian                                  before going offline: every locked package here
  imgd fetch debian --cache s3://team-images/cache   from the team's cache, else the mirror (then shared)")]
pub struct FetchArgs {
    #[command(flatten)]
    pub profile: ProfileArgs,
    /// Print where the packages came from as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: &FetchArgs) -> anyhow::Result<()> {
    let recipe = a.profile.recipe_with(&[])?;
    let Base::Debian(base) = &recipe.base else {
        bail!("profile {} has no Debian base: nothing to fetch", recipe.name)
    };
    let Some(lock) = &base.lock else { bail!("profile {} has no lock", recipe.name) };
    let remote = a.profile.remote(None)?;
    let cache = bootstrap::Cache::new(&base.cache);
    let report = bootstrap::fetch_all(lock, &cache.pool, &Mirror::new(&base.mirror)?, remote.as_deref())?;
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "packages": lock.packages.len(),
                "pool": cache.pool.dir,
                "from_cache": report.from_cache,
                "from_mirror": report.from_mirror,
                "shared": report.shared,
            }))?
        );
    } else {
        eprintln!(
            "{} packages in {} ({} from the build cache, {} from the mirror, {} shared)",
            lock.packages.len(),
            cache.pool.dir.display(),
            report.from_cache,
            report.from_mirror,
            report.shared
        );
    }
    Ok(())
}
