//! `imgd sync`: a profile's build to S3 and to an AMI in every region, then
//! the region -> AMI map for Terraform.

use crate::output::{artifact_id, tfvars, write_atomic, Plan, SyncResult};
use crate::{ami, clients::Clients, ebs, import, s3, AwsArgs, Counters};
use anyhow::{bail, Context, Result};
use imgd::config::types::Format;
use imgd::config::ConfigError;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

#[derive(clap::Args, Debug)]
#[command(about = "Upload a profile's build to S3 and make its AMI in every region.")]
#[command(after_help = "Examples:
  imgd sync hello --bucket my-images --regions us-east-1,eu-west-1 --tfvars amis.auto.tfvars.json
  imgd sync hello --bucket b --regions us-east-1 --dry-run --json     (the plan, changing nothing)
  imgd sync hello --bucket b --regions us-east-1 --endpoint-url http://127.0.0.1:5000   (a local emulator)")]
pub struct SyncArgs {
    #[command(flatten)]
    pub build: crate::BuildArgs,
    #[command(flatten)]
    pub s3: crate::BucketArgs,
    /// Regions that need the AMI, comma-separated.
    #[arg(long, value_delimiter = ',', required = true)]
    pub regions: Vec<String>,
    /// Where the AMI is registered first (default: the first region).
    #[arg(long)]
    pub home_region: Option<String>,
    /// ebs-direct: snapshot the raw disk through EBS direct APIs (no staging,
    /// no role). import: ImportSnapshot of the VHD in S3 (needs the vmimport role).
    #[arg(long, default_value = "ebs-direct", value_parser = ["ebs-direct", "import"])]
    pub method: String,
    /// Accounts to grant launch permission (repeatable).
    #[arg(long = "share", value_name = "ACCOUNT")]
    pub share: Vec<String>,
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

/// ISO 8601 UTC from Unix seconds (days-from-civil, inverted).
pub fn iso8601(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

pub fn run(a: &SyncArgs) -> Result<()> {
    let (recipe, store) = a.build.load()?;
    let needed = if a.method == "import" { Format::Vhd } else { Format::Raw };
    if !recipe.formats.contains(&needed) {
        bail!(ConfigError::new(
            &recipe.profile_file,
            format!("imgd sync --method {} makes AMIs from the {needed} disk: add \"{needed}\" to formats", a.method)
        )
        .key("formats"));
    }
    let entry = a.build.build(&recipe, &store, &a.aws)?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let (result, plan) = rt.block_on(sync(a, &entry))?;
    if a.dry_run {
        if a.json {
            println!("{}", serde_json::to_string_pretty(&serde_json::json!({ "dry_run": true, "plan": plan.steps }))?);
        } else {
            print!("{}", plan.text());
        }
        return Ok(());
    }
    let text = serde_json::to_string_pretty(&serde_json::json!({
        "profile": result.profile, "hash": result.hash, "entry": result.entry, "name": result.name,
        "amis": result.amis, "snapshots": result.snapshots,
    }))? + "\n";
    if let Some(p) = &a.out {
        write_atomic(p, &text)?;
    }
    if let Some(p) = &a.tfvars {
        write_atomic(p, &tfvars(&result.amis))?;
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&serde_json::to_value(&result)?)?);
    } else {
        for (r, id) in &result.amis {
            println!("{r}\t{id}");
        }
        eprintln!(
            "{} mutating call(s), {} byte(s) uploaded, {} of {} blocks sent",
            result.mutating_calls, result.uploaded_bytes, result.blocks_sent, result.blocks_total
        );
    }
    Ok(())
}

/// The id a dry run reports for an image it would create.
const NEW: &str = "(new)";

/// What every region's work shares.
#[derive(Clone)]
struct Job {
    name: String,
    description: String,
    tags: Vec<(String, String)>,
    hash: String,
    home: String,
    share: Vec<String>,
    kms: Option<String>,
    dry: bool,
    wait: Duration,
    poll: Duration,
    attempts: u32,
    counters: Arc<Counters>,
}

async fn sync(a: &SyncArgs, entry: &imgd::store::Entry) -> Result<(SyncResult, Plan)> {
    let m = &entry.manifest;
    let home = a.home_region.clone().unwrap_or_else(|| a.regions[0].clone());
    let clients = Clients::load(&home, &a.aws).await;
    let name = format!("imgd-{}-{}", m.profile, &m.hash[..12]);
    let job = Job {
        description: format!("imgd {} ({})", m.profile, m.name),
        tags: vec![
            ("imgd:profile".to_string(), m.profile.clone()),
            ("imgd:hash".to_string(), m.hash.clone()),
            ("imgd:built-at".to_string(), iso8601(m.built_at)),
            ("Name".to_string(), name.clone()),
        ],
        name,
        hash: m.hash.clone(),
        home: home.clone(),
        share: a.share.clone(),
        kms: a.kms_key.clone(),
        dry: a.dry_run,
        wait: Duration::from_secs(a.wait),
        poll: Duration::from_secs(a.poll.max(1)),
        attempts: a.aws.max_attempts,
        counters: Arc::new(Counters::default()),
    };
    let mut plan = Plan::default();

    // S3: every artifact, then the manifest (its presence marks the entry complete).
    let s3c = clients.s3();
    let mode = if a.dry_run { s3::Mode::Plan(&mut plan) } else { s3::Mode::SkipPresent };
    let keys = s3::upload_entry(&s3c, &a.s3.bucket, &a.s3.prefix, entry, &job.counters, mode).await?;

    // The home region: find, or snapshot + register.
    let ec2 = clients.ec2(&home);
    let mut amis = BTreeMap::new();
    let mut snapshots = BTreeMap::new();
    let home_ami = match ami::find(&ec2, &job.name).await? {
        Some(f) => {
            if let Some(s) = f.snapshot {
                snapshots.insert(home.clone(), s);
            }
            f.id
        }
        None if job.dry => {
            let how =
                if a.method == "import" { "import the VHD from S3" } else { "snapshot the raw disk (EBS direct)" };
            plan.add("snapshot", &home, &format!("{how}, unless a snapshot tagged imgd:hash exists"));
            plan.add("register", &home, &job.name);
            for acct in &job.share {
                plan.add("share", &home, acct);
            }
            String::from(NEW)
        }
        None => {
            let snapshot = match ami::find_snapshot(&ec2, &m.hash).await? {
                Some(s) => s,
                None if a.method == "import" => {
                    let vhd = m.artifact(Format::Vhd, "disk").context("the entry has no VHD")?;
                    let req = import::Request {
                        bucket: &a.s3.bucket,
                        key: &s3::key(&a.s3.prefix, &entry.name, &vhd.file),
                        description: &job.description,
                        tags: &job.tags,
                        client_token: &m.hash[..32],
                        kms_key: a.kms_key.as_deref(),
                        timeout: job.wait,
                        poll: job.poll,
                    };
                    import::snapshot(&ec2, &req, &job.counters).await?
                }
                None => {
                    let raw = m.artifact(Format::Raw, "disk").context("the entry has no raw disk")?;
                    let by_default = ec2
                        .get_ebs_encryption_by_default()
                        .send()
                        .await
                        .ok()
                        .and_then(|r| r.ebs_encryption_by_default());
                    let req = ebs::Request {
                        raw: &entry.path.join(&raw.file),
                        description: &job.description,
                        tags: &job.tags,
                        client_token: &m.hash[..32],
                        encrypted: a.kms_key.is_some() || by_default == Some(true),
                        kms_key: a.kms_key.as_deref(),
                    };
                    ebs::upload(&clients.ebs(&home), &req, &job.counters).await?.id
                }
            };
            // The volume holds the raw disk whichever way the snapshot was made.
            let disk = m.artifact(Format::Raw, "disk").or_else(|| m.artifact(Format::Vhd, "disk"));
            let volume_gib = ebs::gib(disk.map_or(1 << 30, |d| d.size));
            let flag = |k: &str| m.recipe.get(k).and_then(|v| v.as_bool()).unwrap_or(false);
            let reg = ami::Register {
                name: &job.name,
                description: &job.description,
                arch: m.arch,
                firmware: m.firmware,
                ena: flag("ena"),
                sriov: flag("sriov"),
                snapshot: &snapshot,
                volume_gib,
                attempts: job.attempts,
            };
            let id = ami::register(&ec2, &reg, &job.counters).await?;
            ami::tag(&ec2, &[id.clone(), snapshot.clone()], &job.tags, &job.counters).await?;
            snapshots.insert(home.clone(), snapshot);
            id
        }
    };
    finish(&ec2, &home, &home_ami, &job, &mut plan).await?;
    amis.insert(home.clone(), home_ami.clone());

    // Every other region, in parallel; one region failing leaves the others done.
    let mut tasks = Vec::new();
    for region in a.regions.iter().filter(|r| **r != home) {
        let (ec2, region, home_ami, job) = (clients.ec2(region), region.clone(), home_ami.clone(), job.clone());
        tasks.push(tokio::spawn(async move {
            let mut plan = Plan::default();
            let res = copy_to(&ec2, &region, &home_ami, &job, &mut plan).await;
            (region, res, plan)
        }));
    }
    let mut failed = Vec::new();
    for t in tasks {
        let (region, res, p) = t.await?;
        plan.steps.extend(p.steps);
        match res {
            Ok((id, snap)) => {
                amis.insert(region.clone(), id);
                if let Some(s) = snap {
                    snapshots.insert(region, s);
                }
            }
            Err(e) => failed.push(format!("{region}: {e:#}")),
        }
    }
    if !failed.is_empty() {
        bail!("some regions failed (the others are done; re-run to finish):\n  {}", failed.join("\n  "));
    }
    let c = &job.counters;
    let result = SyncResult {
        profile: m.profile.clone(),
        hash: m.hash.clone(),
        entry: entry.name.clone(),
        name: job.name.clone(),
        artifact_id: artifact_id(&amis),
        amis,
        snapshots,
        s3: keys,
        mutating_calls: c.get(&c.mutating_calls),
        uploaded_bytes: c.get(&c.uploaded_bytes),
        blocks_sent: c.get(&c.blocks_sent),
        blocks_total: c.get(&c.blocks_total),
    };
    Ok((result, plan))
}

/// One other region: find the copy, or make it.
async fn copy_to(
    ec2: &aws_sdk_ec2::Client,
    region: &str,
    home_ami: &str,
    job: &Job,
    plan: &mut Plan,
) -> Result<(String, Option<String>)> {
    if let Some(f) = ami::find(ec2, &job.name).await? {
        let snapshot = finish(ec2, region, &f.id, job, plan).await?;
        return Ok((f.id, snapshot.or(f.snapshot)));
    }
    if job.dry {
        plan.add("copy", region, &format!("{} from {}", job.name, job.home));
        plan.add("tag", region, "imgd:profile, imgd:hash, imgd:built-at");
        for acct in &job.share {
            plan.add("share", region, acct);
        }
        return Ok((NEW.into(), None));
    }
    let token = imgd::hash::sha256_hex(format!("{}:{region}", job.hash).as_bytes());
    let copy = ami::Copy {
        source_region: &job.home,
        source_id: home_ami,
        name: &job.name,
        description: &job.description,
        client_token: &token[..32],
        kms_key: job.kms.as_deref(),
        attempts: job.attempts,
    };
    let id = ami::copy(ec2, &copy, &job.counters).await?;
    let snapshot = finish(ec2, region, &id, job, plan).await?;
    Ok((id, snapshot))
}

/// Waits until the image is available, then tags it and its snapshot
/// (CopyImage copies no tags, an earlier run may have died before tagging, and
/// a pending copy may not list its snapshot yet) and shares it, each step only
/// if needed. Returns the image's snapshot.
async fn finish(
    ec2: &aws_sdk_ec2::Client,
    region: &str,
    id: &str,
    job: &Job,
    plan: &mut Plan,
) -> Result<Option<String>> {
    if id == NEW {
        return Ok(None); // a dry run's planned image: its steps are in the plan already
    }
    let tagged = ami::has_tags(ec2, id, &job.tags).await?;
    if job.dry {
        if !tagged {
            plan.add("tag", region, id);
        }
        for acct in ami::unshared(ec2, id, &job.share).await? {
            plan.add("share", region, &format!("{id} with {acct}"));
        }
        return Ok(None);
    }
    ami::wait_available(ec2, id, region, job.wait, job.poll).await?;
    // The snapshot carries the tags too, so prune can find it.
    let snapshot = ami::find(ec2, &job.name).await?.and_then(|f| f.snapshot);
    if !tagged {
        let ids: Vec<String> = std::iter::once(id.to_string()).chain(snapshot.clone()).collect();
        ami::tag(ec2, &ids, &job.tags, &job.counters).await?;
    }
    ami::share(ec2, id, &job.share, &job.counters).await?;
    Ok(snapshot)
}
