//! `imgd sync --deployments FILE`: every image a fleet's deployments use,
//! built once and uploaded once, with its AMI in exactly the union of the
//! regions of the deployments that use it (and nowhere else); then one
//! Terraform map per deployment (feature `aws`).

use super::sync::{check_disk, request, Checked, SyncArgs};
use anyhow::{Context, Result};
use imgd::config::deployments::{Deployment, DeploymentsFile};
use imgd::config::Recipe;
use imgd_aws::SyncResult;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// What a dry run would do for one image.
#[derive(serde::Serialize)]
struct ImagePlan {
    image: String,
    deployments: Vec<String>,
    regions: Vec<String>,
    plan: Vec<imgd_aws::Row>,
}

/// One distinct image (one input hash) and everything that uses it.
pub struct Image {
    profile: super::ProfileArgs,
    pub recipe: Recipe,
    pub deployments: Vec<String>,
    regions: BTreeSet<String>,
}

/// `imgd sync --deployments FILE` (main.rs sends it here): `--check`, or the sync.
pub fn run(a: &SyncArgs, file: &Path) -> Result<()> {
    if a.check {
        return check(a, file);
    }
    sync(a, &super::sync::checked(a)?, file)
}

fn sync(a: &SyncArgs, c: &Checked, file: &Path) -> Result<()> {
    let fleet = DeploymentsFile::load(file, &a.profile.root)?.only(&a.only)?;
    let images = images(a, &fleet)?;
    one_image_per_channel(a, &images)?;
    let store = a.store.open()?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let mut plans = Vec::new();
    let mut results: BTreeMap<String, SyncResult> = BTreeMap::new();
    for (name, img) in &images {
        let entry = img.profile.build_via(&img.recipe, &store, a.aws.endpoint_url.as_deref())?.entry;
        anyhow::ensure!(entry.name == *name, "{name} was built as {}", entry.name);
        let regions: Vec<String> = img.regions.iter().cloned().collect();
        let req = imgd_aws::SyncRequest { deployments: img.deployments.clone(), ..request(a, c, &entry, &regions)? };
        tracing::info!("{name}: for {} in {}", img.deployments.join(", "), regions.join(", "));
        let outcome = rt.block_on(imgd_aws::sync(&req, &a.aws.options(), a.dry_run))?;
        match outcome.result {
            Some(r) => {
                results.insert(name.clone(), r);
            }
            None => plans.push(ImagePlan {
                image: name.clone(),
                deployments: img.deployments.clone(),
                regions,
                plan: outcome.plan.rows(&req.to.bucket),
            }),
        }
    }
    if a.dry_run {
        return print_plan(a, &plans);
    }
    let by_deployment = deployments_map(&fleet.deployments, &images, &results)?;
    if let Some(p) = &a.tfvars {
        let v = json!({ "deployments": by_deployment });
        imgd::fsutil::write_atomic(p, (serde_json::to_string_pretty(&v)? + "\n").as_bytes())?;
    }
    print_result(a, &fleet.deployments, &by_deployment, &results)
}

/// Every deployment resolved to its image; deployments whose profile,
/// overrides and hardware give the same input hash share one image.
fn images(a: &SyncArgs, fleet: &DeploymentsFile) -> Result<BTreeMap<String, Image>> {
    resolve(&a.profile, fleet, |r| check_disk(a, r))
}

/// [`images`] with `base`'s root and caches, each recipe checked by `check`.
pub fn resolve(
    base: &super::ProfileArgs,
    fleet: &DeploymentsFile,
    check: impl Fn(&Recipe) -> Result<()>,
) -> Result<BTreeMap<String, Image>> {
    let mut images: BTreeMap<String, Image> = BTreeMap::new();
    for d in &fleet.deployments {
        let profile = super::ProfileArgs {
            profile: d.profile.clone(),
            hardware: d.hardware.clone(),
            sets: d.sets.clone(),
            ..base.clone()
        };
        let in_file = || format!("deployment `{}` in {}", d.name, fleet.path.display());
        let (_, recipe) = profile.loaded().with_context(in_file)?;
        check(&recipe).with_context(in_file)?;
        let name = imgd::model::EntryName::of(&imgd::build::input_hash(&recipe), &recipe.name)?.to_string();
        let img = images.entry(name).or_insert_with(|| Image {
            profile,
            recipe,
            deployments: Vec::new(),
            regions: BTreeSet::new(),
        });
        img.deployments.push(d.name.clone());
        img.regions.extend(d.regions.keys().cloned());
    }
    Ok(images)
}

/// `--ssm-parameter` names one channel per region: two images in one region
/// would each point it at their own AMI, the last sync winning. Refused
/// before anything is built.
fn one_image_per_channel(a: &SyncArgs, images: &BTreeMap<String, Image>) -> Result<()> {
    if a.ssm_parameter.is_none() {
        return Ok(());
    }
    let mut owner: BTreeMap<&str, &str> = BTreeMap::new();
    for (name, img) in images {
        for r in &img.regions {
            if let Some(other) = owner.insert(r, name) {
                let m = format!(
                    "{other} and {name} both run in {r}: one channel there cannot point at both \
                     (sync the deployments that share a region with --only, each with its own --ssm-parameter)"
                );
                return Err(imgd::config::ConfigError::new("--ssm-parameter", m).into());
            }
        }
    }
    Ok(())
}

/// Per deployment, shaped for a Terraform `for_each`: its image, the AMI in
/// each of its regions, the instance counts, type and security groups.
fn deployments_map(
    deployments: &[Deployment],
    images: &BTreeMap<String, Image>,
    results: &BTreeMap<String, SyncResult>,
) -> Result<BTreeMap<String, Value>> {
    let mut out = BTreeMap::new();
    for d in deployments {
        let (image, _) = images
            .iter()
            .find(|(_, i)| i.deployments.contains(&d.name))
            .with_context(|| format!("deployment {} has no image", d.name))?;
        let result = results.get(image).with_context(|| format!("{image} was not synced"))?;
        let mut amis = BTreeMap::new();
        for r in d.regions.keys() {
            let ami = result.amis.get(r).with_context(|| format!("{image} has no AMI in {r}"))?;
            amis.insert(r.clone(), ami.clone());
        }
        out.insert(
            d.name.clone(),
            json!({
                "image": image, "amis": amis, "counts": d.regions,
                "instance_type": d.instance_type, "security_groups": d.security_groups,
            }),
        );
    }
    Ok(out)
}

fn print_plan(a: &SyncArgs, plans: &[ImagePlan]) -> Result<()> {
    if a.json {
        println!("{}", serde_json::to_string_pretty(&json!({ "dry_run": true, "images": plans }))?);
        return Ok(());
    }
    for p in plans {
        println!("# {} for {} in {}", p.image, p.deployments.join(", "), p.regions.join(", "));
        print!("{}", imgd_aws::table(&p.plan));
    }
    Ok(())
}

fn print_result(
    a: &SyncArgs,
    deployments: &[Deployment],
    by_deployment: &BTreeMap<String, Value>,
    results: &BTreeMap<String, SyncResult>,
) -> Result<()> {
    let calls: u64 = results.values().map(|r| r.mutating_calls).sum();
    let bytes: u64 = results.values().map(|r| r.uploaded_bytes).sum();
    if a.json {
        let images: Vec<&SyncResult> = results.values().collect();
        let v =
            json!({ "deployments": by_deployment, "images": images, "mutating_calls": calls, "uploaded_bytes": bytes });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    for d in deployments {
        let v = &by_deployment[&d.name];
        for (region, count) in &d.regions {
            println!("{}\t{region}\t{}\t{count}", d.name, v["amis"][region].as_str().unwrap_or("?"));
        }
    }
    eprintln!("{} image(s), {calls} mutating call(s), {bytes} byte(s) uploaded", results.len());
    Ok(())
}

/// One deployment in one region, as `--check` finds it.
#[derive(serde::Serialize)]
struct Placement {
    deployment: String,
    region: String,
    /// The store entry the deployment's profile builds today.
    image: String,
    /// Its AMI there, if synced.
    ami: Option<String>,
    /// The AMI exists and is available.
    current: bool,
    /// Otherwise, the newest imgd AMI of its profile there (what the region
    /// runs from now) and that build's entry name.
    #[serde(skip_serializing_if = "Option::is_none")]
    synced: Option<(String, String)>,
    /// With --ssm-parameter: whether the channel there points at that AMI.
    #[serde(skip_serializing_if = "Option::is_none")]
    channel: Option<bool>,
}

/// `--check`: the current build of every deployment (resolved and hashed,
/// never built), looked up by name in each of its regions.
fn check(a: &SyncArgs, file: &Path) -> Result<()> {
    if let Some(p) = &a.ssm_parameter {
        imgd_aws::check_parameter_name(p).map_err(|e| imgd::config::ConfigError::new("--ssm-parameter", e))?;
    }
    let fleet = DeploymentsFile::load(file, &a.profile.root)?.only(&a.only)?;
    let images = images(a, &fleet)?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let placements = placements(a, &rt, &fleet, &images)?;
    let drifted = placements.iter().filter(|p| !p.current || p.channel == Some(false)).count();
    if a.json {
        println!("{}", serde_json::to_string_pretty(&json!({ "drifted": drifted, "placements": placements }))?);
    } else {
        for p in &placements {
            let runs = p.synced.as_ref().map_or("nothing".to_string(), |(ami, entry)| format!("{ami} of {entry}"));
            let state = match (p.current, p.channel) {
                (false, _) => format!("DRIFT: the current build has no AMI here (it has {runs})"),
                (true, Some(false)) => "DRIFT: the channel points elsewhere".into(),
                _ => "current".into(),
            };
            println!("{}\t{}\t{}\t{}\t{state}", p.deployment, p.region, p.image, p.ami.as_deref().unwrap_or("-"));
        }
    }
    anyhow::ensure!(drifted == 0, "{drifted} deployment region(s) are not on their profile's current build");
    Ok(())
}

fn placements(
    a: &SyncArgs,
    rt: &tokio::runtime::Runtime,
    fleet: &DeploymentsFile,
    images: &BTreeMap<String, Image>,
) -> Result<Vec<Placement>> {
    let home = fleet.deployments.iter().flat_map(|d| d.regions.keys()).next().cloned().unwrap_or_default();
    let mut wanted = Vec::new();
    let mut where_ = Vec::new();
    for d in &fleet.deployments {
        let (entry, img) = images.iter().find(|(_, i)| i.deployments.contains(&d.name)).context("no image")?;
        let (hash, _) = imgd_aws::parse_entry_name(entry).context("not an entry name")?;
        for region in d.regions.keys() {
            wanted.push(imgd_aws::WantedPlacement {
                region: region.clone(),
                profile: img.recipe.name.clone(),
                hash: hash.to_string(),
                ssm_parameter: a.ssm_parameter.clone(),
            });
            where_.push((d.name.clone(), region.clone(), entry.clone()));
        }
    }
    let found = rt.block_on(imgd_aws::observe_placements(&home, &wanted, &a.aws.options()))?;
    Ok(where_
        .into_iter()
        .zip(found)
        .map(|((deployment, region, image), f)| Placement {
            deployment,
            region,
            image,
            ami: f.ami,
            current: f.current,
            synced: f.newest,
            channel: f.channel,
        })
        .collect())
}
