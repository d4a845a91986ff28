//! `imgd promote`: point an SSM release channel at an earlier (or later)
//! build in every listed region, as a plan unless `--yes` (feature `aws`).

use super::sync::{check_regions, resolve_regions, AwsArgs};
use anyhow::Result;
use clap::Args;
use imgd::config::ConfigError;

#[derive(Args, Debug)]
#[command(after_help = "Examples:
  imgd promote hello --to 9f2c41d07a3b --ssm-parameter /fleet/hello/ami --regions us-east-1,eu-west-1   (the plan)
  imgd promote hello --to 9f2c41d07a3b5e61aa0c2d4e8f1b3c5d-hello --ssm-parameter /fleet/hello/ami --regions all --home-region us-east-1 --yes")]
pub struct PromoteArgs {
    /// The profile whose channel moves.
    pub profile: String,
    /// The build to point at: its store entry name, or at least the first
    /// 12 hex digits of its hash (what `imgd ls` and sync's output show).
    #[arg(long, value_name = "ENTRY|HASH")]
    pub to: String,
    /// The SSM parameter of the channel (as given to `imgd sync --ssm-parameter`).
    #[arg(long, value_name = "NAME")]
    pub ssm_parameter: String,
    /// Regions whose channel moves; all must have the build, or none moves.
    #[arg(long, value_delimiter = ',', required = true)]
    pub regions: Vec<String>,
    /// Where to ask for the account's regions with `--regions all`.
    #[arg(long)]
    pub home_region: Option<String>,
    /// Carry the plan out (without it, nothing changes).
    #[arg(long)]
    pub yes: bool,
    /// Print the plan and what was done as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub aws: AwsArgs,
}

/// `--to` as the 12 hex digits every region's image name carries.
fn hash12(to: &str, profile: &str) -> Result<String, ConfigError> {
    let bad =
        || ConfigError::new("--to", format!("`{}` is not an entry name or a hash (12+ hex digits)", to.escape_debug()));
    let (hash, named) = match to.split_once('-') {
        Some((h, p)) => (h, Some(p)),
        None => (to, None),
    };
    if hash.len() < 12 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad());
    }
    if let Some(p) = named.filter(|p| *p != profile) {
        return Err(ConfigError::new("--to", format!("{to} is a build of {p}, not of {profile}")));
    }
    Ok(hash[..12].to_ascii_lowercase())
}

pub fn run(a: &PromoteArgs) -> Result<()> {
    if !imgd::model::valid_name(&a.profile) {
        return Err(ConfigError::new("PROFILE", format!("`{}` is not a profile name", a.profile.escape_debug())).into());
    }
    let h = hash12(&a.to, &a.profile)?;
    imgd_aws::check_parameter_name(&a.ssm_parameter).map_err(|e| ConfigError::new("--ssm-parameter", e))?;
    check_regions(&a.regions)?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let regions = resolve_regions(&a.regions, a.home_region.as_deref(), &a.aws, &rt)?;
    let req = imgd_aws::PromoteRequest {
        image_name: format!("imgd-{}-{h}", a.profile),
        parameter: a.ssm_parameter.clone(),
        regions,
    };
    let out = rt.block_on(imgd_aws::promote(&req, &a.aws.options(), a.yes))?;
    let rows = out.plan.rows(&req.parameter);
    if a.json {
        let v = serde_json::json!({
            "image": req.image_name, "parameter": req.parameter, "applied": out.applied,
            "plan": rows, "mutating_calls": out.mutating_calls,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print!("{}", imgd_aws::table(&rows));
        if !out.applied && !rows.is_empty() {
            eprintln!("(a plan: nothing changed; --yes carries it out)");
        }
    }
    Ok(())
}
