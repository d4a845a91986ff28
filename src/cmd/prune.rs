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
    /// Builds with AMIs to keep per profile, newest by imgd:built-at.
    #[arg(long, default_value_t = 3)]
    pub keep: usize,
    /// S3 entries no AMI references (the build cache, iPXE-only syncs): keep
    /// the newest N per profile. Without this or --cache-max-age they all stay.
    #[arg(long, value_name = "N")]
    pub cache_keep: Option<usize>,
    /// ...and delete those not written for this long (e.g. 30d, 12h).
    #[arg(long, value_name = "AGE", value_parser = parse_age)]
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
fn parse_age(s: &str) -> Result<Duration, String> {
    let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = n.parse().map_err(|_| format!("`{s}`: expected a number and a unit (30d, 12h, 90m)"))?;
    let secs = match unit {
        "d" => 86_400,
        "h" => 3600,
        "m" => 60,
        "s" => 1,
        _ => return Err(format!("`{s}`: the unit is d, h, m or s")),
    };
    n.checked_mul(secs).map(Duration::from_secs).ok_or_else(|| format!("`{s}` is too long"))
}

#[derive(serde::Serialize)]
struct Report {
    applied: bool,
    kept: Vec<imgd_aws::prune::plan::Build>,
    plan: Vec<imgd_aws::output::Row>,
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
    if let Some(p) = a.profile.as_deref().filter(|p| !imgd::config::valid_name(p)) {
        return Err(ConfigError::new("--profile", format!("`{}` is not a profile name", p.escape_debug())).into());
    }
    check_regions(&a.regions)?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let regions = super::sync::resolve_regions(&a.regions, a.home_region.as_deref(), &a.aws, &rt)?;
    let req = imgd_aws::prune::Request {
        at: a.bucket.location()?,
        regions,
        profile: a.profile.clone(),
        keep: a.keep,
        cache: imgd_aws::prune::CacheRetention { keep: a.cache_keep, max_age: a.cache_max_age },
        local: local_entries(&a.store.dir()),
        now: std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()),
    };
    let outcome = rt.block_on(imgd_aws::prune::run(&req, &a.aws.options(), a.yes))?;
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
        print!("{}", imgd_aws::output::text(&rows));
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

#[cfg(test)]
mod tests {
    #[test]
    fn ages_parse_with_units() {
        assert_eq!(super::parse_age("30d"), Ok(std::time::Duration::from_secs(30 * 86_400)));
        assert_eq!(super::parse_age("90m"), Ok(std::time::Duration::from_secs(5400)));
        assert!(super::parse_age("30").is_err());
        assert!(super::parse_age("d").is_err());
        assert!(super::parse_age("99999999999999999d").is_err());
    }
}
