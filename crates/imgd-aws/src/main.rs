//! `imgd-sync` (run as `imgd sync`): a profile's build to S3 and to an AMI in
//! every region, then the region -> AMI map for Terraform.

use anyhow::{bail, Context, Result};
use clap::Parser;
use imgd::config::types::Format;
use imgd::config::{ConfigError, LoadRequest};
use imgd_aws::output::{artifact_id, tfvars, write_atomic, Result_};
use imgd_aws::{ami, clients::Clients, ebs, s3, Counters};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(name = "imgd sync", about = "Upload a profile's build to S3 and make its AMI in every region.")]
#[command(after_help = "Examples:
  imgd sync hello --bucket my-images --regions us-east-1,eu-west-1 --tfvars amis.auto.tfvars.json
  imgd sync hello --bucket b --regions us-east-1 --endpoint-url http://127.0.0.1:5000   (a local emulator)")]
struct Args {
    /// Profile: a path or a name in <root>/profiles/ (built if needed).
    profile: String,
    #[arg(long)]
    bucket: String,
    #[arg(long, default_value = "imgd")]
    prefix: String,
    /// Regions that need the AMI, comma-separated.
    #[arg(long, value_delimiter = ',', required = true)]
    regions: Vec<String>,
    /// Where the AMI is registered first (default: the first region).
    #[arg(long)]
    home_region: Option<String>,
    /// ebs-direct (default): snapshot from the raw disk via EBS direct APIs.
    #[arg(long, default_value = "ebs-direct", value_parser = ["ebs-direct", "import"])]
    method: String,
    /// Accounts to grant launch permission (repeatable).
    #[arg(long = "share", value_name = "ACCOUNT")]
    share: Vec<String>,
    /// Encrypt the snapshot and the copies with this KMS key.
    #[arg(long)]
    kms_key: Option<String>,
    /// Write region -> AMI (plus hash, profile, snapshots) here.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Write {"aws_amis": {...}} here for Terraform.
    #[arg(long)]
    tfvars: Option<PathBuf>,
    #[arg(long, env = "AWS_ENDPOINT_URL")]
    endpoint_url: Option<String>,
    /// Show what would be uploaded and created, change nothing.
    #[arg(long)]
    dry_run: bool,
    #[arg(long)]
    json: bool,
    #[arg(long)]
    hardware: Option<String>,
    #[arg(long = "set", value_name = "KEY=VALUE")]
    sets: Vec<String>,
    #[arg(long, env = "IMGD_ROOT", default_value = ".")]
    root: PathBuf,
    #[arg(long)]
    store: Option<PathBuf>,
    /// Attempts per AWS call (throttling and 5xx are retried with jittered backoff).
    #[arg(long, default_value_t = 8)]
    max_attempts: u32,
    /// Seconds to wait for each AMI to become available.
    #[arg(long, default_value_t = 3600)]
    wait: u64,
}

fn main() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("imgd=info,imgd_aws=info,imgd_sync=info"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_target(false).init();
    let args = Args::parse();
    if let Err(e) = run(&args) {
        let bad_input = e.chain().any(|c| c.is::<ConfigError>());
        eprintln!("error: {e:#}");
        std::process::exit(if bad_input { 2 } else { 1 });
    }
}

/// ISO 8601 UTC from Unix seconds (days-from-civil, inverted).
fn iso8601(secs: u64) -> String {
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

fn run(a: &Args) -> Result<()> {
    if a.method == "import" {
        bail!(ConfigError::new(
            "--method",
            "import (ImportSnapshot of the VHD) is not implemented yet; use ebs-direct"
        ));
    }
    let req = LoadRequest {
        profile: a.profile.clone(),
        root: a.root.clone(),
        hardware: a.hardware.clone(),
        sets: a.sets.clone(),
    };
    let recipe = imgd::config::recipe(&req, &imgd::config::default_cache(), None)?;
    if !recipe.formats.contains(&Format::Raw) {
        bail!(ConfigError::new(&recipe.profile_file, "imgd sync makes AMIs from the raw disk: add \"raw\" to formats")
            .key("formats"));
    }
    let store = imgd::store::Store::open(&a.store.clone().unwrap_or_else(imgd::store::default_dir))?;
    let entry = imgd::build::build(&recipe, &store, &imgd::progress::Progress::new(false))?.entry;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let result = rt.block_on(sync(a, &entry))?;
    let text = serde_json::to_string_pretty(&serde_json::json!({
        "profile": result.profile, "hash": result.hash, "entry": result.entry, "name": result.name,
        "amis": result.amis, "snapshots": result.snapshots,
    }))? + "\n";
    if !a.dry_run {
        if let Some(p) = &a.out {
            write_atomic(p, &text)?;
        }
        if let Some(p) = &a.tfvars {
            write_atomic(p, &tfvars(&result.amis))?;
        }
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

async fn sync(a: &Args, entry: &imgd::store::Entry) -> Result<Result_> {
    let m = &entry.manifest;
    let home = a.home_region.clone().unwrap_or_else(|| a.regions[0].clone());
    let clients = Clients::load(&home, a.endpoint_url.clone(), a.max_attempts).await;
    let counters = Arc::new(Counters::default());
    let name = format!("imgd-{}-{}", m.profile, &m.hash[..12]);
    let description = format!("imgd {} ({})", m.profile, m.name);
    let tags = vec![
        ("imgd:profile".to_string(), m.profile.clone()),
        ("imgd:hash".to_string(), m.hash.clone()),
        ("imgd:built-at".to_string(), iso8601(m.built_at)),
        ("Name".to_string(), name.clone()),
    ];

    // S3: every artifact and the manifest, under the store's own name.
    let s3c = clients.s3();
    let mut files: Vec<(String, String)> = m.artifacts.iter().map(|x| (x.file.clone(), x.sha256.clone())).collect();
    let manifest_sha = imgd::hash::sha256_file(&entry.path.join("manifest.json"))?;
    files.push(("manifest.json".into(), manifest_sha));
    let mut keys = Vec::new();
    for (file, sha) in &files {
        let key = s3::key(&a.prefix, &entry.name, file);
        if a.dry_run {
            tracing::info!("would upload s3://{}/{key} unless present", a.bucket);
        } else {
            s3::upload(&s3c, &a.bucket, &key, &entry.path.join(file), sha, &counters).await?;
        }
        keys.push(format!("s3://{}/{key}", a.bucket));
    }

    // The home region: find, or snapshot + register.
    let ec2 = clients.ec2(&home);
    let mut amis = BTreeMap::new();
    let mut snapshots = BTreeMap::new();
    let home_ami = match ami::find(&ec2, &name).await? {
        Some(f) => {
            if let Some(s) = f.snapshot {
                snapshots.insert(home.clone(), s);
            }
            f.id
        }
        None if a.dry_run => {
            tracing::info!("{home}: would snapshot the raw disk and register {name}");
            String::from("(new)")
        }
        None => {
            let raw = m.artifact(Format::Raw, "disk").context("the entry has no raw disk")?;
            let snapshot = match ami::find_snapshot(&ec2, &m.hash).await? {
                Some(s) => s,
                None => {
                    let by_default = ec2
                        .get_ebs_encryption_by_default()
                        .send()
                        .await
                        .ok()
                        .and_then(|r| r.ebs_encryption_by_default());
                    let encrypted = a.kms_key.is_some() || by_default == Some(true);
                    let ebs = clients.ebs(&home);
                    let token = &m.hash[..32];
                    let req = ebs::Request {
                        raw: &entry.path.join(&raw.file),
                        description: &description,
                        tags: &tags,
                        client_token: token,
                        encrypted,
                        kms_key: a.kms_key.as_deref(),
                    };
                    let snap = ebs::upload(&ebs, &req, &counters).await?;
                    snap.id
                }
            };
            let volume_gib = ebs::gib(raw.size);
            let recipe = &m.recipe;
            let flag = |k: &str| recipe.get(k).and_then(|v| v.as_bool()).unwrap_or(false);
            let id = ami::register(
                &ec2,
                &ami::Register {
                    name: &name,
                    description: &description,
                    arch: m.arch,
                    firmware: m.firmware,
                    ena: flag("ena"),
                    sriov: flag("sriov"),
                    snapshot: &snapshot,
                    volume_gib,
                },
                &counters,
            )
            .await?;
            ami::tag(&ec2, &[id.clone(), snapshot.clone()], &tags, &counters).await?;
            snapshots.insert(home.clone(), snapshot);
            id
        }
    };
    if !a.dry_run {
        if !ami::has_tags(&ec2, &home_ami, &tags).await? {
            ami::tag(&ec2, std::slice::from_ref(&home_ami), &tags, &counters).await?;
        }
        ami::wait_available(&ec2, &home_ami, &home, Duration::from_secs(a.wait)).await?;
        ami::share(&ec2, &home_ami, &a.share, &counters).await?;
    }
    amis.insert(home.clone(), home_ami.clone());

    // Every other region, in parallel; one region failing leaves the others done.
    let mut tasks = Vec::new();
    for region in a.regions.iter().filter(|r| **r != home) {
        let (ec2, region, home, home_ami, name, description) =
            (clients.ec2(region), region.clone(), home.clone(), home_ami.clone(), name.clone(), description.clone());
        let (tags, counters, share, kms, dry, hash, wait) =
            (tags.clone(), counters.clone(), a.share.clone(), a.kms_key.clone(), a.dry_run, m.hash.clone(), a.wait);
        tasks.push(tokio::spawn(async move {
            let res: Result<String> = async {
                if let Some(f) = ami::find(&ec2, &name).await? {
                    if !dry && !ami::has_tags(&ec2, &f.id, &tags).await? {
                        ami::tag(&ec2, std::slice::from_ref(&f.id), &tags, &counters).await?;
                    }
                    if !dry {
                        ami::wait_available(&ec2, &f.id, &region, Duration::from_secs(wait)).await?;
                        ami::share(&ec2, &f.id, &share, &counters).await?;
                    }
                    return Ok(f.id);
                }
                if dry {
                    tracing::info!("{region}: would copy {name} from {home}");
                    return Ok("(new)".into());
                }
                let token = imgd::hash::sha256_hex(format!("{hash}:{region}").as_bytes());
                let copy = ami::Copy {
                    source_region: &home,
                    source_id: &home_ami,
                    name: &name,
                    description: &description,
                    client_token: &token[..32],
                    kms_key: kms.as_deref(),
                };
                let id = ami::copy(&ec2, &copy, &counters).await?;
                ami::tag(&ec2, std::slice::from_ref(&id), &tags, &counters).await?;
                ami::wait_available(&ec2, &id, &region, Duration::from_secs(wait)).await?;
                ami::share(&ec2, &id, &share, &counters).await?;
                Ok(id)
            }
            .await;
            (region, res)
        }));
    }
    let mut failed = Vec::new();
    for t in tasks {
        let (region, res) = t.await?;
        match res {
            Ok(id) => {
                amis.insert(region, id);
            }
            Err(e) => failed.push(format!("{region}: {e:#}")),
        }
    }
    if !failed.is_empty() {
        bail!("some regions failed (the others are done; re-run to finish):\n  {}", failed.join("\n  "));
    }
    Ok(Result_ {
        profile: m.profile.clone(),
        hash: m.hash.clone(),
        entry: entry.name.clone(),
        name,
        artifact_id: artifact_id(&amis),
        amis,
        snapshots,
        s3: keys,
        mutating_calls: counters.get(&counters.mutating_calls),
        uploaded_bytes: counters.get(&counters.uploaded_bytes),
        blocks_sent: counters.get(&counters.blocks_sent),
        blocks_total: counters.get(&counters.blocks_total),
    })
}
