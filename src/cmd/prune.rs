//! `imgd prune`: old AMIs, their snapshots and S3 entries, as a plan unless
//! `--yes` (feature `aws`).

use super::sync::{check_regions, AwsArgs, BucketArgs};
use super::StoreArgs;
use anyhow::Result;
use clap::Args;
use imgd::config::ConfigError;
use std::collections::BTreeSet;
use std::time::Duration;

#[derive(Args, Debug)]
#[command(after_help = "Examples:
  imgd prune --bucket my-images --regions us-east-1,eu-west-1            (show the plan)
  imgd prune --bucket my-images --regions us-east-1,eu-west-1 --keep 2 --profile web --yes
  imgd prune --bucket my-cache --regions us-east-1 --cache-keep 5 --cache-max-age 30d   (the build cache too)")]
pub struct PruneArgs {
    #[command(flatten)]
    pub bucket: BucketArgs,
    /// Regions to clean, comma-separated; `all` is every region enabled for
    /// the account (asked in --home-region).
    #[arg(long, value_delimiter = ',', required = true)]
    pub regions: Vec<String>,
    /// Where to ask for the account's regions with `--regions all`.
    #[arg(long)]
    pub home_region: Option<String>,
    /// Only this profile's builds (default: every profile).
    #[arg(long)]
    pub profile: Option<String>,
    /// A deployments file: keep each listed deployment's current build plus
    /// the newest --keep minus one others of its profile, in the regions it
    /// lists; remove imgd's AMIs and snapshots of every other build (and
    /// their S3 entries) in --regions.
    #[arg(long, value_name = "FILE")]
    pub deployments: Option<std::path::PathBuf>,
    /// Folder holding profiles/ and hardware/ (for --deployments).
    #[arg(long, env = "IMGD_ROOT", default_value = ".")]
    pub root: std::path::PathBuf,
    /// Builds with AMIs to keep per profile, newest by imgd:built-at.
    #[arg(long, default_value_t = 3)]
    pub keep: usize,
    /// S3 entries no AMI references (the build cache, iPXE-only syncs): keep
    /// the newest N per profile. Without this or --cache-max-age they all stay.
    #[arg(long, value_name = "N")]
    pub cache_keep: Option<usize>,
    /// ...and delete those not written for this long (e.g. 30d, 12h).
    #[arg(long, value_name = "AGE", value_parser = super::duration)]
    pub cache_max_age: Option<Duration>,
    /// Carry the plan out (without it, nothing changes).
    #[arg(long)]
    pub yes: bool,
    /// Print the result (or the plan) as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// Local store whose entries keep their S3 copies.
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(flatten)]
    pub aws: AwsArgs,
}

/// `30d`, `12h`, `90m`, `45s`.
#[derive(serde::Serialize)]
struct Report {
    applied: bool,
    kept: Vec<imgd_aws::KeptBuild>,
    plan: Vec<imgd_aws::Row>,
    mutating_calls: u64,
}

pub fn run(a: &PruneArgs) -> Result<()> {
    if a.keep == 0 {
        return Err(ConfigError::new("--keep", "must be at least 1 (prune never removes every build)").into());
    }
    if a.cache_keep == Some(0) {
        return Err(
            ConfigError::new("--cache-keep", "must be at least 1 (use --cache-max-age to expire them all)").into()
        );
    }
    if let Some(p) = a.profile.as_deref().filter(|p| !imgd::model::valid_name(p)) {
        return Err(ConfigError::new("--profile", format!("`{}` is not a profile name", p.escape_debug())).into());
    }
    check_regions(&a.regions)?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let regions = super::sync::resolve_regions(&a.regions, a.home_region.as_deref(), &a.aws, &rt)?;
    let req = imgd_aws::PruneRequest {
        at: a.bucket.location()?,
        regions,
        profile: a.profile.clone(),
        keep: a.keep,
        cache: imgd_aws::CacheRetention { keep: a.cache_keep, max_age: a.cache_max_age },
        local: local_entries(&a.store.dir()),
        now: std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()),
        deployments: match &a.deployments {
            Some(file) => fleet(a, file)?,
            None => Vec::new(),
        },
    };
    let outcome = rt.block_on(imgd_aws::prune(&req, &a.aws.options(), a.yes))?;
    let rows = outcome.plan.rows(&req.at.bucket);
    if a.json {
        let report = Report {
            applied: outcome.applied,
            kept: outcome.plan.kept.clone(),
            plan: rows,
            mutating_calls: outcome.mutating_calls,
        };
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        for b in &outcome.plan.kept {
            eprintln!("keeping {} {} (built {}): {}", b.profile, &b.hash[..12], b.built_at, b.why.join("; "));
        }
        print!("{}", imgd_aws::table(&rows));
        if !outcome.applied && !rows.is_empty() {
            eprintln!("(a plan: nothing was changed; add --yes to carry it out)");
        }
    }
    Ok(())
}

/// Complete entries of the local store (an interrupted build's leftovers
/// reference nothing).
fn local_entries(store: &std::path::Path) -> BTreeSet<String> {
    std::fs::read_dir(store)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter(|e| e.path().join("manifest.json").is_file())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// `--deployments`: each deployment's current build (resolved and hashed,
/// never built) and its regions.
fn fleet(a: &PruneArgs, file: &std::path::Path) -> Result<Vec<imgd_aws::DeploymentKeep>> {
    let fleet = imgd::config::deployments::DeploymentsFile::load(file, &a.root)?;
    let base = super::ProfileArgs {
        profile: String::new(),
        hardware: None,
        sets: Vec::new(),
        root: a.root.clone(),
        cache_dir: None,
        remote_cache: None,
        unlocked: false,
    };
    let images = super::deploy::resolve(&base, &fleet, |_| Ok(()))?;
    let mut out = Vec::new();
    for d in &fleet.deployments {
        let Some(img) = images.values().find(|i| i.deployments.contains(&d.name)) else { continue };
        out.push(imgd_aws::DeploymentKeep {
            name: d.name.clone(),
            profile: img.recipe.name.clone(),
            current: imgd::build::input_hash(&img.recipe).to_string(),
            regions: d.regions.keys().cloned().collect(),
        });
    }
    Ok(out)
}
