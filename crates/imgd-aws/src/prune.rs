//! `imgd prune`: deregister imgd's AMIs beyond the newest N builds of each
//! profile, delete their snapshots, delete S3 entries that no kept AMI and
//! no local store entry references, and abort multipart uploads that
//! interrupted syncs left more than a day ago.
//!
//! A plan by default; `--yes` carries it out. Only things carrying imgd's
//! marks are ever touched: images and snapshots tagged `imgd:profile` and
//! `imgd:hash`, S3 objects with imgd's `imgd-sha256` metadata under an entry
//! folder named `<hash>-<profile>`.

use crate::output::Plan;
use crate::{ami, clients::Clients, AwsArgs, Counters};
use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
#[command(about = "Remove old AMIs, their snapshots and unreferenced S3 entries (a plan unless --yes).")]
#[command(after_help = "Examples:
  imgd prune --bucket my-images --regions us-east-1,eu-west-1            (show the plan)
  imgd prune --bucket my-images --regions us-east-1,eu-west-1 --keep 2 --profile web --yes")]
pub struct PruneArgs {
    #[command(flatten)]
    pub s3: crate::BucketArgs,
    /// Regions to clean, comma-separated.
    #[arg(long, value_delimiter = ',', required = true)]
    pub regions: Vec<String>,
    /// Only this profile's builds (default: every profile).
    #[arg(long)]
    pub profile: Option<String>,
    /// Builds to keep per profile, newest by imgd:built-at.
    #[arg(long, default_value_t = 3)]
    pub keep: usize,
    /// Carry the plan out (without it, nothing changes).
    #[arg(long)]
    pub yes: bool,
    /// Print the result (or the plan) as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// Local store whose entries keep their S3 copies [default: $IMGD_STORE or ~/.local/share/imgd/store].
    #[arg(long)]
    pub store: Option<PathBuf>,
    #[command(flatten)]
    pub aws: AwsArgs,
}

#[derive(Debug, Serialize, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Build {
    pub profile: String,
    pub built_at: String,
    pub hash: String,
}

#[derive(Debug, Serialize)]
struct Report {
    applied: bool,
    kept: Vec<Build>,
    plan: Vec<crate::output::Step>,
    mutating_calls: u64,
}

pub fn run(a: &PruneArgs) -> Result<()> {
    if a.keep == 0 {
        bail!(imgd::config::ConfigError::new("--keep", "must be at least 1 (prune never removes every build)"));
    }
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let report = rt.block_on(prune(a))?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        for b in &report.kept {
            eprintln!("keeping {} {} (built {})", b.profile, &b.hash[..12], b.built_at);
        }
        let plan = Plan { steps: report.plan.clone() };
        print!("{}", plan.text());
        if !report.applied && !plan.steps.is_empty() {
            eprintln!("(a plan: nothing was changed; add --yes to carry it out)");
        }
    }
    Ok(())
}

async fn prune(a: &PruneArgs) -> Result<Report> {
    let clients = Clients::load(&a.regions[0], &a.aws).await;
    let wanted = |p: &str| a.profile.as_deref().is_none_or(|w| w == p);

    // Everything of ours, per region.
    let mut images = BTreeMap::new();
    let mut snapshots = BTreeMap::new();
    for region in &a.regions {
        let ec2 = clients.ec2(region);
        let imgs: Vec<ami::Tagged> = ami::list_images(&ec2).await?.into_iter().filter(|i| wanted(&i.profile)).collect();
        let snaps: Vec<ami::Tagged> =
            ami::list_snapshots(&ec2).await?.into_iter().filter(|s| wanted(&s.profile)).collect();
        images.insert(region.clone(), imgs);
        snapshots.insert(region.clone(), snaps);
    }

    // The newest N builds of each profile, over every region's images and snapshots.
    let mut builds: BTreeMap<(String, String), String> = BTreeMap::new();
    for t in images.values().chain(snapshots.values()).flatten() {
        let at = builds.entry((t.profile.clone(), t.hash.clone())).or_default();
        *at = (*at).clone().max(t.built_at.clone());
    }
    let mut by_profile: BTreeMap<&str, Vec<Build>> = BTreeMap::new();
    for ((profile, hash), built_at) in &builds {
        let b = Build { profile: profile.clone(), built_at: built_at.clone(), hash: hash.clone() };
        by_profile.entry(profile).or_default().push(b);
    }
    let mut kept = Vec::new();
    for list in by_profile.values_mut() {
        list.sort_by(|x, y| (&y.built_at, &y.hash).cmp(&(&x.built_at, &x.hash)));
        kept.extend(list.iter().take(a.keep).cloned());
    }
    let kept_hashes: BTreeSet<&str> = kept.iter().map(|b| b.hash.as_str()).collect();

    let mut plan = Plan::default();
    let counters = Counters::default();
    for region in &a.regions {
        let ec2 = clients.ec2(region);
        let imgs = &images[region];
        // Snapshots a remaining image still uses stay (AWS would refuse anyway).
        let in_use: BTreeSet<&str> = imgs
            .iter()
            .filter(|i| kept_hashes.contains(i.hash.as_str()))
            .flat_map(|i| i.snapshots.iter().map(String::as_str))
            .collect();
        for i in imgs.iter().filter(|i| !kept_hashes.contains(i.hash.as_str())) {
            plan.add("deregister", region, &format!("{} {} {} (built {})", i.id, i.profile, &i.hash[..12], i.built_at));
            if a.yes {
                ami::deregister(&ec2, &i.id, &counters).await?;
            }
        }
        for s in snapshots[region].iter().filter(|s| !kept_hashes.contains(s.hash.as_str())) {
            if in_use.contains(s.id.as_str()) {
                continue;
            }
            plan.add("delete-snapshot", region, &format!("{} {} {}", s.id, s.profile, &s.hash[..12]));
            if a.yes {
                ami::delete_snapshot(&ec2, &s.id, &counters).await?;
            }
        }
    }

    // S3 entries no kept build and no local store entry references.
    let store_dir = a.store.clone().unwrap_or_else(imgd::store::default_dir);
    // Complete entries only (an interrupted build's leftovers reference nothing).
    let local: BTreeSet<String> = std::fs::read_dir(&store_dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter(|e| e.path().join("manifest.json").is_file())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    let s3 = clients.s3();
    let mut doomed = Vec::new();
    for (entry, keys) in s3_entries(&s3, &a.s3.bucket, &a.s3.prefix).await? {
        let Some((hash32, profile)) = parse_entry(&entry) else { continue };
        let referenced = kept_hashes.iter().any(|h| h.starts_with(hash32)) || local.contains(&entry);
        if !wanted(profile) || referenced {
            continue;
        }
        for key in keys {
            let head = s3.head_object().bucket(&a.s3.bucket).key(&key).send().await;
            let ours = head.ok().and_then(|h| h.metadata().map(|m| m.contains_key("imgd-sha256"))).unwrap_or(false);
            if ours {
                plan.add("delete-object", &format!("s3://{}", a.s3.bucket), &key);
                doomed.push(key);
            } else {
                tracing::warn!(
                    "s3://{}/{key}: not uploaded by imgd (no imgd-sha256 metadata); left alone",
                    a.s3.bucket
                );
            }
        }
    }
    // Multipart uploads an interrupted sync left over a day ago (a younger one
    // may belong to a sync still running, or be resumed by the next).
    let mut stale = Vec::new();
    for (key, id) in stale_uploads(&s3, &a.s3.bucket, &a.s3.prefix).await? {
        let entry = key.rsplit('/').nth(1).unwrap_or_default();
        if parse_entry(entry).is_some_and(|(_, p)| wanted(p)) {
            plan.add("abort-upload", &format!("s3://{}", a.s3.bucket), &key);
            stale.push((key, id));
        }
    }
    if a.yes {
        for (key, id) in &stale {
            counters.mutate();
            s3.abort_multipart_upload().bucket(&a.s3.bucket).key(key).upload_id(id).send().await?;
        }
        // The manifest goes first: an entry without one is no longer complete.
        doomed.sort_by_key(|k| !k.ends_with("/manifest.json"));
        for key in &doomed {
            counters.mutate();
            s3.delete_object().bucket(&a.s3.bucket).key(key).send().await.with_context(|| format!("deleting {key}"))?;
        }
    }
    kept.sort();
    Ok(Report { applied: a.yes, kept, plan: plan.steps, mutating_calls: counters.get(&counters.mutating_calls) })
}

/// `<hash32>-<profile>` -> (hash32, profile).
fn parse_entry(name: &str) -> Option<(&str, &str)> {
    let (hash, profile) = name.split_once('-')?;
    let ok =
        hash.len() == imgd::store::NAME_HASH_LEN && hash.bytes().all(|b| b.is_ascii_hexdigit()) && !profile.is_empty();
    ok.then_some((hash, profile))
}

/// (key, upload id) of multipart uploads under `<prefix>/` begun over a day ago.
async fn stale_uploads(s3: &aws_sdk_s3::Client, bucket: &str, prefix: &str) -> Result<Vec<(String, String)>> {
    let base = crate::s3::prefix_dir(prefix);
    let day_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(86_400);
    let day_ago = aws_smithy_types::DateTime::from(day_ago);
    let listed = s3.list_multipart_uploads().bucket(bucket).prefix(&base).send().await;
    let listed = listed.with_context(|| format!("listing uploads in s3://{bucket}/{base}"))?;
    Ok(listed
        .uploads()
        .iter()
        .filter(|u| u.initiated().is_some_and(|t| t.secs() < day_ago.secs()))
        .filter_map(|u| Some((u.key()?.to_string(), u.upload_id()?.to_string())))
        .collect())
}

/// Entry folder -> its object keys, under `<prefix>/`.
async fn s3_entries(s3: &aws_sdk_s3::Client, bucket: &str, prefix: &str) -> Result<BTreeMap<String, Vec<String>>> {
    let base = crate::s3::prefix_dir(prefix);
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut token = None;
    loop {
        let page = s3
            .list_objects_v2()
            .bucket(bucket)
            .prefix(&base)
            .set_continuation_token(token)
            .send()
            .await
            .with_context(|| format!("listing s3://{bucket}/{base}"))?;
        for o in page.contents() {
            let Some(key) = o.key() else { continue };
            if let Some((entry, _file)) = key[base.len()..].split_once('/') {
                out.entry(entry.to_string()).or_default().push(key.to_string());
            }
        }
        token = page.next_continuation_token().map(str::to_string);
        if token.is_none() {
            return Ok(out);
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn entry_names_parse_only_when_they_are_imgds() {
        let h = "0123456789abcdef0123456789abcdef";
        assert_eq!(super::parse_entry(&format!("{h}-hello")), Some((h, "hello")));
        assert_eq!(super::parse_entry(&format!("{h}-my-web")), Some((h, "my-web")));
        assert_eq!(super::parse_entry("backups-2024"), None);
        assert_eq!(super::parse_entry(&format!("{h}-")), None);
    }
}
