//! `imgd sync`: a profile's build to S3 and to an AMI in every region, then
//! the region -> AMI map for Terraform (feature `aws`).

use super::{ProfileArgs, StoreArgs};
use anyhow::Result;
use clap::{Args, ValueEnum};
use imgd::config::ConfigError;
use imgd::model::Format;
use imgd_aws::{Method, Principal, SyncRequest as Request};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Args, Debug)]
#[command(after_help = "Examples:
  imgd sync hello --bucket my-images --regions us-east-1,eu-west-1 --tfvars amis.auto.tfvars.json
  imgd sync hello --bucket b --regions all --home-region us-east-1   (every enabled region)
  imgd sync hello --bucket b --regions us-east-1 --dry-run --json     (the plan, changing nothing)
  imgd sync hello --bucket b --regions us-east-1 --endpoint-url http://127.0.0.1:5000   (a local emulator)
  imgd sync --deployments profiles/fleet.deploy.toml --bucket b --tfvars deployments.auto.tfvars.json
                                      (every image a fleet runs, each in exactly its deployments' regions)")]
// With --deployments the profiles come from the file.
#[command(mut_arg("profile", |a| a.required(false).default_value("").hide_default_value(true)))]
// --check only reads: it needs no bucket.
#[command(mut_arg("bucket", |a| a.required(false).required_unless_present("check").default_value("").hide_default_value(true)))]
pub struct SyncArgs {
    #[command(flatten)]
    pub profile: ProfileArgs,
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(flatten)]
    pub bucket: BucketArgs,
    /// Regions that need the AMI, comma-separated; `all` is every region
    /// enabled for the account (DescribeRegions, with --home-region), so a
    /// region enabled later gets the AMI on the next sync.
    #[arg(long, value_delimiter = ',', required_unless_present_any = ["s3_only", "deployments"])]
    pub regions: Vec<String>,
    /// A deployments file (TOML, `[[deployment]]`): build each image its
    /// deployments use once, and make its AMI in exactly the union of their
    /// regions. --tfvars then writes one map per deployment.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["profile", "regions", "s3_only", "out", "hardware", "sets"], required_unless_present = "profile")]
    pub deployments: Option<PathBuf>,
    /// With --deployments: build and change nothing; report, per deployment
    /// and region, the AMI of the profile's current build (and whether
    /// --ssm-parameter points at it). Exit 1 when anything has drifted.
    #[arg(long, requires = "deployments", conflicts_with = "dry_run")]
    pub check: bool,
    /// With --deployments: only these deployments (repeatable).
    #[arg(long = "only", value_name = "NAME", requires = "deployments")]
    pub only: Vec<String>,
    /// Only upload the build to S3 (an iPXE mirror for --artifact-base-url, or
    /// a cache fill): no snapshot, no AMI.
    #[arg(long, conflicts_with_all = ["regions", "home_region", "share", "share_org", "share_ou", "public", "deprecate_in", "ssm_parameter", "kms_key", "tfvars"])]
    pub s3_only: bool,
    /// Where the AMI is registered first (default: the first region).
    #[arg(long)]
    pub home_region: Option<String>,
    /// How the snapshot behind the AMI is made.
    #[arg(long, value_enum, default_value = "ebs-direct")]
    pub method: SyncMethod,
    /// Accounts to grant launch permission, and create-volume permission on
    /// the snapshot (repeatable); on every regional copy.
    #[arg(long = "share", value_name = "ACCOUNT")]
    pub share: Vec<String>,
    /// AWS Organizations organizations to grant launch permission (ARN, repeatable).
    #[arg(long = "share-org", value_name = "ARN")]
    pub share_org: Vec<String>,
    /// Organizational units to grant launch permission (ARN, repeatable).
    #[arg(long = "share-ou", value_name = "ARN")]
    pub share_ou: Vec<String>,
    /// Make every copy and its snapshot public (launchable by any AWS
    /// account). Only this flag does; nothing else implies it.
    #[arg(long)]
    pub public: bool,
    /// Deprecate every copy this long after the build: `90d`, `12h`, `2w`,
    /// `45m` (a build older than that: in a minute).
    #[arg(long, value_name = "DURATION")]
    pub deprecate_in: Option<String>,
    /// Point this SSM parameter (in each region) at the region's AMI once it
    /// is available, tagged and shared: a release channel launch templates
    /// resolve with `resolve:ssm:NAME`. Type String, data type aws:ec2:image.
    #[arg(long, value_name = "NAME")]
    pub ssm_parameter: Option<String>,
    /// Encrypt the snapshot and the copies with this KMS key.
    #[arg(long)]
    pub kms_key: Option<String>,
    /// Write region -> AMI (plus hash, profile, snapshots) here.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Write {"aws_amis": {...}} here for Terraform.
    #[arg(long)]
    pub tfvars: Option<PathBuf>,
    /// Show what would be uploaded and created, change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print the result (or the plan) as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub aws: AwsArgs,
    /// Seconds to wait for each AMI (and an import) to become available.
    #[arg(long, default_value_t = 3600)]
    pub wait: u64,
    /// Seconds between polls of an import task or a pending AMI.
    #[arg(long, default_value_t = 5, hide = true)]
    pub poll: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SyncMethod {
    /// Snapshot the raw disk through the EBS direct APIs (no staging, no role).
    EbsDirect,
    /// ImportSnapshot of the VHD in S3 (needs the vmimport role).
    Import,
}

impl SyncMethod {
    fn method(self) -> Method {
        match self {
            SyncMethod::EbsDirect => Method::EbsDirect,
            SyncMethod::Import => Method::Import,
        }
    }

    /// The disk format the snapshot is made from.
    fn disk(self) -> Format {
        match self {
            SyncMethod::EbsDirect => Format::Raw,
            SyncMethod::Import => Format::Vhd,
        }
    }
}

/// How to reach AWS: the standard chain for credentials and region, plus these.
#[derive(Args, Debug, Clone)]
pub struct AwsArgs {
    /// A local emulator or a custom endpoint.
    #[arg(long, env = "AWS_ENDPOINT_URL")]
    pub endpoint_url: Option<String>,
    /// Attempts per AWS call (throttling and 5xx are retried with jittered backoff).
    #[arg(long, default_value_t = 8)]
    pub max_attempts: u32,
}

impl AwsArgs {
    pub fn options(&self) -> imgd_aws::Options {
        imgd::store::s3::options(self.endpoint_url.as_deref(), self.max_attempts)
    }
}

/// Where in S3 the entries go: `s3://<bucket>/<prefix>/<hash>-<profile>/<file>`.
#[derive(Args, Debug, Clone)]
pub struct BucketArgs {
    /// S3 bucket for the artifacts (and the import method's VHD).
    #[arg(long)]
    pub bucket: String,
    /// Key prefix; entries go under <prefix>/<hash>-<profile>/.
    #[arg(long, default_value = "imgd")]
    pub prefix: String,
}

impl BucketArgs {
    pub fn location(&self) -> Result<imgd_aws::Location, ConfigError> {
        imgd_aws::check_bucket(&self.bucket).map_err(|m| ConfigError::new("--bucket", m))?;
        Ok(imgd_aws::Location::new(&self.bucket, &self.prefix))
    }
}

/// Region names as AWS spells them (`us-east-1`), checked before any call;
/// `all` only alone.
pub fn check_regions(regions: &[String]) -> Result<(), ConfigError> {
    if regions.len() > 1 && regions.iter().any(|r| r == "all") {
        return Err(ConfigError::new("--regions", "`all` stands alone, not in a list".to_string()));
    }
    for r in regions.iter().filter(|r| *r != "all") {
        if !imgd_aws::is_region_name(r) {
            return Err(ConfigError::new("--regions", format!("`{}` is not an AWS region name", r.escape_debug())));
        }
    }
    Ok(())
}

/// `--regions` as a list: `all` asks the account (in `home`, which it needs).
pub fn resolve_regions(
    regions: &[String],
    home: Option<&str>,
    aws: &AwsArgs,
    rt: &tokio::runtime::Runtime,
) -> Result<Vec<String>> {
    if regions != ["all"] {
        return Ok(regions.to_vec());
    }
    let Some(home) = home else {
        return Err(
            ConfigError::new("--home-region", "--regions all needs --home-region (where to ask)".to_string()).into()
        );
    };
    check_regions(&[home.to_string()]).map_err(|_| {
        ConfigError::new("--home-region", format!("`{}` is not an AWS region name", home.escape_debug()))
    })?;
    let mut found = rt.block_on(imgd_aws::enabled_regions(home, &aws.options()))?;
    tracing::info!("--regions all: {}", found.join(","));
    // The home region first: where the AMI is registered, and where prune's
    // first client goes.
    found.sort_by_key(|r| r != home);
    Ok(found)
}

/// The flags every sync checks before any call: where, to whom, how long.
pub struct Checked {
    pub to: imgd_aws::Location,
    pub share: Vec<Principal>,
    pub deprecate_in: Option<i64>,
}

pub fn checked(a: &SyncArgs) -> Result<Checked> {
    let to = a.bucket.location()?;
    check_regions(&a.regions)?;
    let share = principals(a)?;
    if let Some(p) = &a.ssm_parameter {
        imgd_aws::check_parameter_name(p).map_err(|e| ConfigError::new("--ssm-parameter", e))?;
    }
    let deprecate_in = a
        .deprecate_in
        .as_deref()
        .map(|d| super::duration(d).map(|d| d.as_secs() as i64).map_err(|e| ConfigError::new("--deprecate-in", e)))
        .transpose()?;
    Ok(Checked { to, share, deprecate_in })
}

/// The profile builds the disk `--method` makes AMIs from.
pub fn check_disk(a: &SyncArgs, recipe: &imgd::config::Recipe) -> Result<()> {
    let disk = a.method.disk();
    if !a.s3_only && !recipe.formats.contains(&disk) {
        let how = a.method.to_possible_value().map(|v| v.get_name().to_string()).unwrap_or_default();
        return Err(recipe
            .profile_error(
                "formats",
                format!("imgd sync --method {how} makes AMIs from the {disk} disk: add \"{disk}\" to formats"),
            )
            .into());
    }
    Ok(())
}

/// The sync of `entry` to `regions` (the first is home unless --home-region
/// names one of them).
pub fn request(a: &SyncArgs, c: &Checked, entry: &imgd::store::Entry, regions: &[String]) -> Result<Request> {
    let home = a
        .home_region
        .clone()
        .filter(|h| a.deployments.is_none() || regions.contains(h))
        .or_else(|| regions.first().cloned())
        .unwrap_or_default();
    Ok(Request {
        entry: entry.for_aws()?,
        to: c.to.clone(),
        ami: !a.s3_only,
        others: regions.iter().filter(|r| **r != home).cloned().collect(),
        home,
        method: a.method.method(),
        deprecate: c.deprecate_in.map(|secs| {
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
            let built = i64::try_from(entry.manifest.built_at).unwrap_or(0);
            imgd_aws::Deprecation::after(built, secs, i64::try_from(now).unwrap_or(i64::MAX))
        }),
        share: c.share.clone(),
        ssm_parameter: a.ssm_parameter.clone(),
        kms_key: a.kms_key.clone(),
        wait: Duration::from_secs(a.wait),
        poll: Duration::from_secs(a.poll.max(1)),
        deployments: Vec::new(),
    })
}

pub fn run(a: &SyncArgs) -> Result<()> {
    let c = checked(a)?;
    let (_, recipe) = a.profile.loaded()?;
    check_disk(a, &recipe)?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let regions = resolve_regions(&a.regions, a.home_region.as_deref(), &a.aws, &rt)?;
    let store = a.store.open()?;
    let entry = a.profile.build_via(&recipe, &store, a.aws.endpoint_url.as_deref())?.entry;
    let req = request(a, &c, &entry, &regions)?;
    let outcome = rt.block_on(imgd_aws::sync(&req, &a.aws.options(), a.dry_run))?;
    let Some(result) = outcome.result else {
        let rows = outcome.plan.rows(&req.to.bucket);
        if a.json {
            println!("{}", serde_json::to_string_pretty(&serde_json::json!({ "dry_run": true, "plan": rows }))?);
        } else {
            print!("{}", imgd_aws::table(&rows));
        }
        return Ok(());
    };
    if let Some(p) = &a.out {
        imgd::fsutil::write_atomic(p, (serde_json::to_string_pretty(&result.amis_json())? + "\n").as_bytes())?;
    }
    if let Some(p) = &a.tfvars {
        imgd::fsutil::write_atomic(p, (serde_json::to_string_pretty(&result.tfvars())? + "\n").as_bytes())?;
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&result)?);
    } else {
        for (r, id) in &result.amis {
            println!("{r}\t{id}");
        }
        let resumed = match result.blocks_resumed {
            0 => String::new(),
            n => format!(" ({n} more sent by an interrupted run)"),
        };
        eprintln!(
            "{} mutating call(s), {} byte(s) uploaded, {} of {} blocks sent{resumed}",
            result.mutating_calls, result.uploaded_bytes, result.blocks_sent, result.blocks_total
        );
    }
    Ok(())
}

/// `--share`, `--share-org`, `--share-ou`, `--public`, each checked to the
/// shape AWS gives it (an error names the flag and the value).
fn principals(a: &SyncArgs) -> Result<Vec<Principal>> {
    let bad = |flag: &str, v: &str, what: &str| -> anyhow::Error {
        ConfigError::new(flag, format!("`{}` is not {what}", v.escape_debug())).into()
    };
    let id = |s: &str, prefix: &str, min: usize| {
        s.strip_prefix(prefix).is_some_and(|r| {
            r.len() >= min
                && r.len() <= 64
                && r.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        })
    };
    let account = |s: &str| s.len() == 12 && s.bytes().all(|b| b.is_ascii_digit());
    let mut out = Vec::new();
    for v in &a.share {
        if !account(v) {
            return Err(bad("--share", v, "a 12-digit AWS account id (for everyone, --public)"));
        }
        out.push(Principal::Account(v.clone()));
    }
    // arn:aws:organizations::<account>:organization/o-<id>
    // arn:aws:organizations::<account>:ou/o-<id>/ou-<root>-<id>
    let org_parts = |v: &str| -> Option<(String, Vec<String>)> {
        let rest = v.strip_prefix("arn:")?.split_once(":organizations::")?.1;
        let (acct, path) = rest.split_once(':')?;
        account(acct).then(|| {
            let mut p = path.split('/').map(str::to_string);
            (p.next().unwrap_or_default(), p.collect())
        })
    };
    for v in &a.share_org {
        match org_parts(v) {
            Some((kind, ids)) if kind == "organization" && ids.len() == 1 && id(&ids[0], "o-", 10) => {
                out.push(Principal::Organization(v.clone()))
            }
            _ => {
                return Err(bad(
                    "--share-org",
                    v,
                    "an organization ARN (arn:aws:organizations::ACCOUNT:organization/o-…)",
                ))
            }
        }
    }
    for v in &a.share_ou {
        match org_parts(v) {
            Some((kind, ids)) if kind == "ou" && ids.len() == 2 && id(&ids[0], "o-", 10) && id(&ids[1], "ou-", 8) => {
                out.push(Principal::OrganizationalUnit(v.clone()))
            }
            _ => return Err(bad("--share-ou", v, "an OU ARN (arn:aws:organizations::ACCOUNT:ou/o-…/ou-…)")),
        }
    }
    if a.public {
        out.push(Principal::Public);
    }
    out.sort();
    out.dedup();
    Ok(out)
}
