//! Carrying out a sync plan. Steps run in the plan's order: uploads, then the
//! home region, then every other region in parallel (one failing leaves the
//! others done; a re-run plans only what is missing). At the end every
//! region's image is waited for until it is available.

use super::plan::{Image, Observed, Plan, Step};
use super::request::{Method, Request};
use crate::model::Principal;
use crate::output::SyncResult;
use crate::{ami, clients::Clients, ebs, import, options::Counters, options::Options};
use anyhow::{bail, Context, Result};
use sha2::Digest;
use std::collections::BTreeMap;
use std::sync::Arc;

pub async fn apply(
    clients: &Clients,
    req: &Request,
    seen: &Observed,
    plan: &Plan,
    opts: &Options,
    counters: &Arc<Counters>,
) -> Result<SyncResult> {
    let s3 = clients.s3();
    for step in &plan.steps {
        if let Step::Upload { file, key, .. } = step {
            let f = req.entry.files.get(*file).context("the plan names a file the entry lacks")?;
            crate::s3::upload(&s3, &req.to.bucket, key, f, counters, false, opts).await?;
        }
    }
    if !req.ami {
        return Ok(result(req, BTreeMap::new(), BTreeMap::new(), counters));
    }
    let job =
        Arc::new(Job { req: req.clone(), tags: req.tags(), attempts: opts.max_attempts, counters: counters.clone() });

    // The home region: everything else copies its image.
    let steps_in =
        |region: &str| -> Vec<Step> { plan.steps.iter().filter(|s| s.region() == Some(region)).cloned().collect() };
    let known = |region: &str| seen.images.get(region).cloned().flatten();
    let home_ec2 = clients.ec2(&req.home);
    let mut snapshot = None;
    for step in steps_in(&req.home) {
        match step {
            Step::DeleteSnapshot { id, .. } => {
                ami::delete_snapshot(&home_ec2, &id, &job.counters).await?;
                ebs::journal::forget(&opts.state_dir, &id);
                tracing::info!(region = %req.home, "deleted {id}, an interrupted upload EBS cancelled");
            }
            Step::Snapshot { method, resume, .. } => {
                let resume = resume.and_then(|id| seen.left.iter().find(|l| l.id == id));
                snapshot = Some(make_snapshot(clients, &home_ec2, req, method, resume, opts, &job.counters).await?);
            }
            Step::Register { snapshot: Some(left), .. } => snapshot = Some(left),
            _ => {}
        }
    }
    let home_ssm = clients.ssm(&req.home);
    let home =
        run_region((&home_ec2, &home_ssm), &req.home, known(&req.home), steps_in(&req.home), None, snapshot, &job)
            .await?;

    let mut tasks = Vec::new();
    for region in &req.others {
        let (ec2, region, job, home_id) = (clients.ec2(region), region.clone(), job.clone(), home.0.clone());
        let ssm = clients.ssm(&region);
        let (image, steps) = (known(&region), steps_in(&region));
        tasks.push(tokio::spawn(async move {
            let res = run_region((&ec2, &ssm), &region, image, steps, Some(&home_id), None, &job).await;
            (region, res)
        }));
    }
    let mut amis = BTreeMap::from([(req.home.clone(), home.0)]);
    let mut snapshots: BTreeMap<String, String> = home.1.map(|s| (req.home.clone(), s)).into_iter().collect();
    let mut failed = Vec::new();
    for t in tasks {
        let (region, res) = t.await?;
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
    Ok(result(req, amis, snapshots, counters))
}

fn result(
    req: &Request,
    amis: BTreeMap<String, String>,
    snapshots: BTreeMap<String, String>,
    c: &Counters,
) -> SyncResult {
    SyncResult {
        profile: req.entry.profile.clone(),
        hash: req.entry.hash.clone(),
        entry: req.entry.name.clone(),
        name: req.image_name(),
        artifact_id: crate::output::artifact_id(&amis),
        amis,
        snapshots,
        s3: req.entry.files.iter().map(|f| req.to.url(&req.to.key(&req.entry.name, &f.name))).collect(),
        mutating_calls: c.get(&c.mutating_calls),
        uploaded_bytes: c.get(&c.uploaded_bytes),
        blocks_sent: c.get(&c.blocks_sent),
        blocks_total: c.get(&c.blocks_total),
        blocks_resumed: c.get(&c.blocks_resumed),
        snapshot_seconds: c.get(&c.snapshot_millis) as f64 / 1000.0,
        throttled: c.get(&c.throttled),
    }
}

/// What every region's work shares.
struct Job {
    req: Request,
    tags: Vec<(String, String)>,
    attempts: u32,
    counters: Arc<Counters>,
}

/// The home region's snapshot, made the way the request says.
async fn make_snapshot(
    clients: &Clients,
    ec2: &aws_sdk_ec2::Client,
    req: &Request,
    method: Method,
    resume: Option<&crate::model::LeftSnapshot>,
    opts: &Options,
    counters: &Arc<Counters>,
) -> Result<String> {
    let tags = req.tags();
    let description = req.description();
    let token = &req.entry.hash[..32];
    match method {
        Method::Import => {
            let vhd = req.entry.vhd.as_ref().context("the entry has no VHD")?;
            let r = import::Request {
                bucket: &req.to.bucket,
                key: &req.to.key(&req.entry.name, &vhd.name),
                description: &description,
                tags: &tags,
                client_token: token,
                kms_key: req.kms_key.as_deref(),
                timeout: req.wait,
                poll: req.poll,
            };
            import::snapshot(ec2, &r, counters).await
        }
        Method::EbsDirect => {
            let raw = req.entry.raw_disk.as_ref().context("the entry has no raw disk")?;
            let by_default =
                ec2.get_ebs_encryption_by_default().send().await.ok().and_then(|r| r.ebs_encryption_by_default());
            let r = ebs::Request {
                raw: &raw.path,
                hash: &req.entry.hash,
                description: &description,
                tags: &tags,
                encrypted: req.kms_key.is_some() || by_default == Some(true),
                kms_key: req.kms_key.as_deref(),
                resume: resume.map(|l| ebs::Resume { id: &l.id, encrypted: l.encrypted }),
                state_dir: &opts.state_dir,
                check: &raw.check,
            };
            Ok(ebs::upload(&clients.ebs(&req.home), &r, counters, opts).await?.id)
        }
    }
}

/// One region's steps, then a wait until its image is available. `home` is
/// the image copies are made from; `snapshot` the one a new home image
/// registers. Returns the image and its snapshot.
async fn run_region(
    (ec2, ssm): (&aws_sdk_ec2::Client, &aws_sdk_ssm::Client),
    region: &str,
    known: Option<super::plan::ImageState>,
    steps: Vec<Step>,
    home: Option<&str>,
    snapshot: Option<String>,
    job: &Job,
) -> Result<(String, Option<String>)> {
    let req = &job.req;
    let name = req.image_name();
    let mut new_id: Option<String> = None;
    let mut new_snapshot = snapshot.clone();
    let id_of = |i: &Image, new_id: &Option<String>| -> Result<String> {
        match i {
            Image::Existing(id) => Ok(id.clone()),
            Image::New => new_id.clone().context("the plan tags or shares an image it did not make"),
        }
    };
    let mut later = Later::default();
    for step in steps {
        match step {
            Step::Upload { .. } | Step::Snapshot { .. } | Step::DeleteSnapshot { .. } => {}
            Step::Register { .. } => {
                let snap = snapshot.as_deref().context("no snapshot to register the image from")?;
                // The volume holds the raw disk whichever way the snapshot was made.
                let disk = req.entry.raw_disk.as_ref().or(req.entry.vhd.as_ref());
                let reg = ami::Register {
                    name: &name,
                    description: &req.description(),
                    machine: req.entry.machine,
                    snapshot: snap,
                    volume_gib: ebs::gib(disk.map_or(1 << 30, |d| d.size)),
                    attempts: job.attempts,
                };
                new_id = Some(ami::register(ec2, &reg, &job.counters).await?);
            }
            Step::Copy { from, .. } => {
                let source = home.context("a copy needs the home region's image")?;
                let token = hex::encode(sha2::Sha256::digest(format!("{}:{region}", req.entry.hash).as_bytes()));
                let copy = ami::Copy {
                    source_region: &from,
                    source_id: source,
                    name: &name,
                    description: &req.description(),
                    client_token: &token[..32],
                    kms_key: req.kms_key.as_deref(),
                    attempts: job.attempts,
                };
                new_id = Some(ami::copy(ec2, &copy, &job.counters).await?);
            }
            Step::Tag { image, .. } => {
                let id = id_of(&image, &new_id)?;
                // A pending copy may not list its snapshot yet.
                ami::wait_available(ec2, &id, region, req.wait, req.poll).await?;
                let snap = ami::find(ec2, &name).await?.and_then(|f| f.snapshot);
                let ids: Vec<String> = std::iter::once(id.clone()).chain(snap.clone()).collect();
                ami::tag(ec2, &ids, &job.tags, &job.counters).await?;
                if matches!(image, Image::New) {
                    new_snapshot = snap.or(new_snapshot);
                }
            }
            Step::Share { image, principal, .. } => {
                later.share.entry(id_of(&image, &new_id)?).or_default().push(principal);
            }
            Step::ShareSnapshot { image, principal, .. } => {
                let snap = match &image {
                    Image::New => new_snapshot.clone(),
                    Image::Existing(_) => known.as_ref().and_then(|k| k.snapshot.clone()),
                };
                let snap = snap.context("sharing the snapshot of an image whose snapshot is not known")?;
                later.share_snapshot.entry(snap).or_default().push(principal);
            }
            Step::Deprecate { image, at, .. } => {
                later.deprecate.insert(id_of(&image, &new_id)?, at);
            }
            Step::Publish { parameter, .. } => later.publish = Some(parameter),
        }
    }
    later.share_and_deprecate(ec2, job).await?;
    let (id, snap) = match (new_id, known) {
        (Some(id), _) => (id, new_snapshot),
        (None, Some(k)) => (k.id, k.snapshot),
        (None, None) => bail!("{region}: the plan made no image here and none exists"),
    };
    ami::wait_available(ec2, &id, region, req.wait, req.poll).await?;
    if let Some(parameter) = &later.publish {
        publish(ec2, ssm, region, &id, parameter, job).await?;
    }
    Ok((id, snap))
}

/// What a region's steps ask of its image once it exists, gathered so each
/// image and snapshot is shared (and deprecated) in one call.
#[derive(Default)]
struct Later {
    share: BTreeMap<String, Vec<Principal>>,
    share_snapshot: BTreeMap<String, Vec<Principal>>,
    deprecate: BTreeMap<String, i64>,
    publish: Option<String>,
}

impl Later {
    async fn share_and_deprecate(&self, ec2: &aws_sdk_ec2::Client, job: &Job) -> Result<()> {
        // The snapshot first: an image shared before its (encrypted) snapshot
        // is one the other account sees but cannot launch yet.
        for (snap, to) in &self.share_snapshot {
            ami::share_snapshot(ec2, snap, to, &job.counters).await?;
        }
        for (id, to) in &self.share {
            ami::share(ec2, id, to, &job.counters).await?;
        }
        for (id, at) in &self.deprecate {
            ami::deprecate(ec2, id, *at, &job.counters).await?;
        }
        Ok(())
    }
}

/// Points SSM `parameter` at image `id`, once it is available.
async fn publish(
    ec2: &aws_sdk_ec2::Client,
    ssm: &aws_sdk_ssm::Client,
    region: &str,
    id: &str,
    parameter: &str,
    job: &Job,
) -> Result<()> {
    let req = &job.req;
    // Checked, not assumed: a channel never points at an image that is
    // not available, tagged and shared as asked (what launches from it
    // in another account would fail).
    anyhow::ensure!(ami::has_tags(ec2, id, &job.tags).await?, "{region}: {id} lacks imgd's tags; not publishing it");
    if !req.share.is_empty() {
        let shared = ami::shared_with(ec2, id).await?;
        let missing: Vec<String> = req.share.iter().filter(|p| !shared.contains(*p)).map(|p| p.label()).collect();
        anyhow::ensure!(
            missing.is_empty(),
            "{region}: {id} is not shared with {}; not publishing it",
            missing.join(", ")
        );
    }
    crate::ssm::put(ssm, parameter, id, &job.counters).await?;
    tracing::info!(%region, %parameter, image = %id, "published");
    Ok(())
}
