//! AMIs: find by name, register from a snapshot, copy to other regions, tag,
//! share, wait. Local emulators accept what AWS rejects (a missing snapshot,
//! duplicate names), so imgd checks those itself before asking.

use crate::model::{valid_snapshot_id, LeftSnapshot, LeftState, Principal, Tagged};
use crate::options::Counters;
use anyhow::{bail, Context, Result};
use aws_sdk_ec2::types::{
    ArchitectureValues, BlockDeviceMapping, BootModeValues, EbsBlockDevice, Filter, Image, LaunchPermission,
    LaunchPermissionModifications, OperationType, PermissionGroup, Snapshot, SnapshotAttributeName, Tag, VolumeType,
};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

pub const ROOT_DEVICE: &str = "/dev/xvda";

#[derive(Debug, Clone)]
pub struct Found {
    pub id: String,
    pub state: String,
    pub snapshot: Option<String>,
    /// Its deprecation time (Unix seconds), if set.
    pub deprecation: Option<i64>,
}

/// The image of ours named `name` in this region, if any (more than one is an
/// error: AWS forbids it, emulators do not).
pub async fn find(ec2: &aws_sdk_ec2::Client, name: &str) -> Result<Option<Found>> {
    let out = ec2
        .describe_images()
        .owners("self")
        .filters(Filter::builder().name("name").values(name).build())
        .send()
        .await
        .context("DescribeImages")?;
    let images = out.images();
    if images.len() > 1 {
        bail!("{} images are named {name} in one region; deregister the extras", images.len());
    }
    Ok(images.first().and_then(|i| {
        Some(Found {
            id: i.image_id()?.to_string(),
            state: i.state().map(|s| s.as_str().to_string()).unwrap_or_default(),
            snapshot: snapshots_of(i).into_iter().next(),
            deprecation: i.deprecation_time().and_then(parse_time),
        })
    }))
}

/// An ISO 8601 time as AWS writes it, in Unix seconds.
fn parse_time(s: &str) -> Option<i64> {
    aws_smithy_types::DateTime::from_str(s, aws_smithy_types::date_time::Format::DateTime).ok().map(|t| t.secs())
}

/// Every snapshot of ours carrying tag `imgd:hash` = `hash`, oldest first.
pub async fn left_snapshots(ec2: &aws_sdk_ec2::Client, hash: &str) -> Result<Vec<LeftSnapshot>> {
    let mut found: Vec<(i64, LeftSnapshot)> = Vec::new();
    let mut pages = ec2
        .describe_snapshots()
        .owner_ids("self")
        .filters(Filter::builder().name("tag:imgd:hash").values(hash).build())
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        for s in page.context("DescribeSnapshots")?.snapshots() {
            let Some(id) = s.snapshot_id().filter(|id| valid_snapshot_id(id)) else {
                tracing::warn!("skipping a snapshot with an id EC2 would not make: {:?}", s.snapshot_id());
                continue;
            };
            let state = match s.state().map(|x| x.as_str()) {
                Some("completed") => LeftState::Completed,
                Some("pending") => LeftState::Pending,
                Some("error") => LeftState::Error,
                _ => continue, // recoverable/recovering: archive tiers, not ours to touch
            };
            let left = LeftSnapshot {
                id: id.to_string(),
                state,
                encrypted: s.encrypted() == Some(true),
                kms_key: s.kms_key_id().map(str::to_string),
            };
            found.push((s.start_time().map_or(0, |t| t.secs()), left));
        }
    }
    found.sort_by(|a, b| (a.0, &a.1.id).cmp(&(b.0, &b.1.id)));
    Ok(found.into_iter().map(|(_, s)| s).collect())
}

pub struct Register<'a> {
    pub name: &'a str,
    pub description: &'a str,
    pub machine: crate::model::Machine,
    pub snapshot: &'a str,
    pub volume_gib: i64,
    /// Attempts in all (see `retry::after_failure`).
    pub attempts: u32,
}

pub async fn register(ec2: &aws_sdk_ec2::Client, r: &Register<'_>, counters: &Counters) -> Result<String> {
    // The snapshot must exist and be complete (an emulator would register anyway).
    let snaps = ec2.describe_snapshots().snapshot_ids(r.snapshot).send().await;
    let ok = snaps.as_ref().map(|s| !s.snapshots().is_empty()).unwrap_or(false);
    if !ok {
        bail!("snapshot {} does not exist; refusing to register an image from it", r.snapshot);
    }
    use crate::{model::Arch, model::BootMode};
    let mut attempt = 0;
    loop {
        attempt += 1;
        counters.mutate();
        let sent = ec2
            .register_image()
            .name(r.name)
            .description(r.description)
            .architecture(match r.machine.arch {
                Arch::X86_64 => ArchitectureValues::X8664,
                Arch::Arm64 => ArchitectureValues::Arm64,
            })
            .boot_mode(match r.machine.boot {
                BootMode::Uefi => BootModeValues::Uefi,
                BootMode::LegacyBios => BootModeValues::LegacyBios,
            })
            .virtualization_type("hvm")
            .root_device_name(ROOT_DEVICE)
            .ena_support(r.machine.ena)
            .set_sriov_net_support(r.machine.sriov.then(|| "simple".to_string()))
            .block_device_mappings(
                BlockDeviceMapping::builder()
                    .device_name(ROOT_DEVICE)
                    .ebs(
                        EbsBlockDevice::builder()
                            .snapshot_id(r.snapshot)
                            .volume_size(r.volume_gib as i32)
                            .volume_type(VolumeType::Gp3)
                            .delete_on_termination(true)
                            .build(),
                    )
                    .build(),
            )
            .customize()
            .config_override(no_retry())
            .send()
            .await;
        let lookup = async { Ok(find(ec2, r.name).await?.map(|f| f.id)) };
        match sent {
            Ok(out) => return out.image_id().map(str::to_string).context("RegisterImage returned no id"),
            Err(e) => {
                if let Some(id) = crate::retry::after_failure("RegisterImage", e, attempt, r.attempts, lookup).await? {
                    return Ok(id);
                }
            }
        }
    }
}

/// This call alone without the SDK's retries (`retry::after_failure` decides).
fn no_retry() -> aws_sdk_ec2::config::Builder {
    aws_sdk_ec2::config::Builder::default().retry_config(aws_sdk_ec2::config::retry::RetryConfig::disabled())
}

/// Tags `ids` (images and their snapshots); CopyImage does not copy tags.
pub async fn tag(
    ec2: &aws_sdk_ec2::Client,
    ids: &[String],
    tags: &[(String, String)],
    counters: &Counters,
) -> Result<()> {
    counters.mutate();
    let mut req = ec2.create_tags().set_resources(Some(ids.to_vec()));
    for (k, v) in tags {
        req = req.tags(Tag::builder().key(k).value(v).build());
    }
    req.send().await.context("CreateTags")?;
    Ok(())
}

/// Tags present on an image, to re-apply only what is missing.
pub async fn has_tags(ec2: &aws_sdk_ec2::Client, id: &str, tags: &[(String, String)]) -> Result<bool> {
    let out = ec2
        .describe_tags()
        .filters(Filter::builder().name("resource-id").values(id).build())
        .send()
        .await
        .context("DescribeTags")?;
    let have: Vec<(String, String)> = out
        .tags()
        .iter()
        .map(|t| (t.key().unwrap_or_default().to_string(), t.value().unwrap_or_default().to_string()))
        .collect();
    Ok(tags.iter().all(|t| have.contains(t)))
}

pub struct Copy<'a> {
    pub source_region: &'a str,
    pub source_id: &'a str,
    pub name: &'a str,
    pub description: &'a str,
    pub client_token: &'a str,
    pub kms_key: Option<&'a str>,
    pub attempts: u32,
}

pub async fn copy(dest: &aws_sdk_ec2::Client, c: &Copy<'_>, counters: &Counters) -> Result<String> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        counters.mutate();
        let mut req = dest
            .copy_image()
            .source_region(c.source_region)
            .source_image_id(c.source_id)
            .name(c.name)
            .description(c.description)
            .client_token(c.client_token);
        if let Some(k) = c.kms_key {
            req = req.encrypted(true).kms_key_id(k);
        }
        let sent = req.customize().config_override(no_retry()).send().await;
        let lookup = async { Ok(find(dest, c.name).await?.map(|f| f.id)) };
        match sent {
            Ok(out) => return out.image_id().map(str::to_string).context("CopyImage returned no id"),
            Err(e) => {
                if let Some(id) = crate::retry::after_failure("CopyImage", e, attempt, c.attempts, lookup).await? {
                    return Ok(id);
                }
            }
        }
    }
}

/// Who may launch the image: accounts, organizations, OUs, everyone.
pub async fn shared_with(ec2: &aws_sdk_ec2::Client, id: &str) -> Result<BTreeSet<Principal>> {
    let out = ec2
        .describe_image_attribute()
        .image_id(id)
        .attribute("launchPermission".into())
        .send()
        .await
        .context("DescribeImageAttribute")?;
    Ok(out
        .launch_permissions()
        .iter()
        .filter_map(|p| {
            if let Some(a) = p.user_id() {
                Some(Principal::Account(a.to_string()))
            } else if let Some(a) = p.organization_arn() {
                Some(Principal::Organization(a.to_string()))
            } else if let Some(a) = p.organizational_unit_arn() {
                Some(Principal::OrganizationalUnit(a.to_string()))
            } else {
                (p.group().map(|g| g.as_str()) == Some("all")).then_some(Principal::Public)
            }
        })
        .collect())
}

/// Who may create volumes from the snapshot (accounts, and `all`).
pub async fn snapshot_shared_with(ec2: &aws_sdk_ec2::Client, snapshot: &str) -> Result<BTreeSet<Principal>> {
    let out = ec2
        .describe_snapshot_attribute()
        .snapshot_id(snapshot)
        .attribute(SnapshotAttributeName::CreateVolumePermission)
        .send()
        .await
        .context("DescribeSnapshotAttribute")?;
    Ok(out
        .create_volume_permissions()
        .iter()
        .filter_map(|p| match (p.user_id(), p.group()) {
            (Some(a), _) => Some(Principal::Account(a.to_string())),
            (None, Some(g)) if g.as_str() == "all" => Some(Principal::Public),
            _ => None,
        })
        .collect())
}

/// Grants launch permission to each principal.
pub async fn share(ec2: &aws_sdk_ec2::Client, id: &str, to: &[Principal], counters: &Counters) -> Result<()> {
    if to.is_empty() {
        return Ok(());
    }
    let mut adds = LaunchPermissionModifications::builder();
    for p in to {
        let lp = LaunchPermission::builder();
        adds = adds.add(
            match p {
                Principal::Account(a) => lp.user_id(a.clone()),
                Principal::Organization(a) => lp.organization_arn(a.clone()),
                Principal::OrganizationalUnit(a) => lp.organizational_unit_arn(a.clone()),
                Principal::Public => lp.group(PermissionGroup::All),
            }
            .build(),
        );
    }
    counters.mutate();
    ec2.modify_image_attribute()
        .image_id(id)
        .launch_permission(adds.build())
        .send()
        .await
        .context("ModifyImageAttribute")?;
    Ok(())
}

/// Grants create-volume permission on `snapshot` to accounts (and `all`
/// for public); other principals cannot be named there.
pub async fn share_snapshot(
    ec2: &aws_sdk_ec2::Client,
    snapshot: &str,
    to: &[Principal],
    counters: &Counters,
) -> Result<()> {
    // The OperationType form (AWS takes it as well as the structured one;
    // moto takes only this one).
    let users: Vec<String> = to
        .iter()
        .filter_map(|p| match p {
            Principal::Account(a) => Some(a.clone()),
            _ => None,
        })
        .collect();
    let public = to.contains(&Principal::Public);
    if users.is_empty() && !public {
        return Ok(());
    }
    counters.mutate();
    ec2.modify_snapshot_attribute()
        .snapshot_id(snapshot)
        .attribute(SnapshotAttributeName::CreateVolumePermission)
        .operation_type(OperationType::Add)
        .set_user_ids((!users.is_empty()).then_some(users))
        .set_group_names(public.then(|| vec!["all".to_string()]))
        .send()
        .await
        .context("ModifySnapshotAttribute")?;
    Ok(())
}

/// Sets the image's deprecation time (Unix seconds).
pub async fn deprecate(ec2: &aws_sdk_ec2::Client, id: &str, at: i64, counters: &Counters) -> Result<()> {
    counters.mutate();
    ec2.enable_image_deprecation()
        .image_id(id)
        .deprecate_at(aws_smithy_types::DateTime::from_secs(at))
        .send()
        .await
        .context("EnableImageDeprecation")?;
    Ok(())
}

/// Waits (with a timeout) until the image is available.
pub async fn wait_available(
    ec2: &aws_sdk_ec2::Client,
    id: &str,
    region: &str,
    timeout: Duration,
    poll: Duration,
) -> Result<()> {
    let start = Instant::now();
    loop {
        let out = ec2.describe_images().image_ids(id).send().await.context("DescribeImages")?;
        let state = out.images().first().and_then(|i| i.state()).map(|s| s.as_str().to_string());
        match state.as_deref() {
            Some("available") => return Ok(()),
            Some(bad @ ("failed" | "error" | "invalid")) => bail!("{region}: image {id} is {bad}"),
            _ => {}
        }
        if start.elapsed() > timeout {
            bail!("{region}: image {id} not available after {}s", timeout.as_secs());
        }
        tracing::info!("{region}: {id} is {}", state.as_deref().unwrap_or("unknown").escape_debug());
        tokio::time::sleep(poll).await;
    }
}

/// imgd's tags on an image or snapshot, checked: anyone with access to the
/// account can tag anything, so a value that is not what imgd writes (a
/// short hash, a profile name with odd characters) makes the thing foreign,
/// and it is never touched. Deployment tags with names imgd would not write
/// are ignored (they only ever keep a build longer).
fn imgd_tags(id: &str, tags: &[Tag]) -> Option<Tagged> {
    let get = |k: &str| tags.iter().find(|t| t.key() == Some(k)).and_then(|t| t.value());
    let (profile, hash) = (get("imgd:profile")?, get("imgd:hash")?);
    if !crate::model::is_profile_name(profile) || !crate::model::is_hash(hash) {
        tracing::warn!("{}: imgd tags with values imgd does not write; left alone", id.escape_debug());
        return None;
    }
    // An ISO 8601 UTC time as imgd writes it; anything else sorts as oldest.
    let built_at = get("imgd:built-at").filter(|t| is_iso8601(t)).unwrap_or_default();
    let deployments = tags
        .iter()
        .filter_map(|t| t.key()?.strip_prefix(crate::model::DEPLOYMENT_TAG))
        .filter(|d| crate::model::is_deployment_name(d))
        .map(str::to_string)
        .collect();
    Some(Tagged {
        id: id.to_string(),
        profile: profile.to_string(),
        hash: hash.to_string(),
        built_at: built_at.to_string(),
        deployments,
        snapshots: Vec::new(),
        failed: false,
    })
}

/// `2026-11-22T10:00:00Z`, the form imgd tags and that sorts as time does.
fn is_iso8601(t: &str) -> bool {
    aws_smithy_types::DateTime::from_str(t, aws_smithy_types::date_time::Format::DateTime).is_ok()
        && t.len() == 20
        && t.ends_with('Z')
}

/// This account's images tagged by imgd (both imgd:profile and imgd:hash).
pub async fn list_images(ec2: &aws_sdk_ec2::Client) -> Result<Vec<Tagged>> {
    let images: Vec<Image> = ec2
        .describe_images()
        .owners("self")
        .filters(Filter::builder().name("tag-key").values("imgd:hash").build())
        .into_paginator()
        .items()
        .send()
        .collect::<Result<_, _>>()
        .await
        .context("DescribeImages")?;
    Ok(images
        .iter()
        .filter_map(|i| {
            let tagged = imgd_tags(i.image_id()?, i.tags())?;
            Some(Tagged { snapshots: snapshots_of(i), ..tagged })
        })
        .collect())
}

/// This account's snapshots tagged by imgd.
pub async fn list_snapshots(ec2: &aws_sdk_ec2::Client) -> Result<Vec<Tagged>> {
    let snapshots: Vec<Snapshot> = ec2
        .describe_snapshots()
        .owner_ids("self")
        .filters(Filter::builder().name("tag-key").values("imgd:hash").build())
        .into_paginator()
        .items()
        .send()
        .collect::<Result<_, _>>()
        .await
        .context("DescribeSnapshots")?;
    Ok(snapshots
        .iter()
        .filter_map(|s| {
            let tagged = imgd_tags(s.snapshot_id()?, s.tags())?;
            Some(Tagged { failed: s.state().is_some_and(|x| x.as_str() == "error"), ..tagged })
        })
        .collect())
}

/// The snapshots in an image's block device mappings.
fn snapshots_of(image: &Image) -> Vec<String> {
    image
        .block_device_mappings()
        .iter()
        .filter_map(|b| b.ebs().and_then(|e| e.snapshot_id()).map(str::to_string))
        .collect()
}

pub async fn deregister(ec2: &aws_sdk_ec2::Client, id: &str, counters: &Counters) -> Result<()> {
    counters.mutate();
    ec2.deregister_image().image_id(id).send().await.with_context(|| format!("DeregisterImage {id}"))?;
    Ok(())
}

pub async fn delete_snapshot(ec2: &aws_sdk_ec2::Client, id: &str, counters: &Counters) -> Result<()> {
    counters.mutate();
    ec2.delete_snapshot().snapshot_id(id).send().await.with_context(|| format!("DeleteSnapshot {id}"))?;
    Ok(())
}

/// Images something in this region still launches from, with why: instances
/// that exist (pending, running, stopping, stopped: a stopped instance needs
/// its AMI to be replaced by an ASG) and launch templates' default and latest
/// versions. Ids are checked (`ami-` + hex); anything else (an SSM reference
/// such as `resolve:ssm:…`) is not an image id and is skipped.
pub async fn in_use(ec2: &aws_sdk_ec2::Client) -> Result<std::collections::BTreeMap<String, Vec<String>>> {
    let mut used: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    let ami_id =
        |s: &str| s.strip_prefix("ami-").is_some_and(|h| !h.is_empty() && h.bytes().all(|b| b.is_ascii_hexdigit()));
    let states = ["pending", "running", "stopping", "stopped"];
    let mut pages = ec2
        .describe_instances()
        .filters(
            Filter::builder().name("instance-state-name").set_values(Some(states.map(String::from).to_vec())).build(),
        )
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        let page = page.context("DescribeInstances")?;
        for i in page.reservations().iter().flat_map(|r| r.instances()) {
            let (Some(image), Some(id)) = (i.image_id(), i.instance_id()) else { continue };
            if ami_id(image) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
                let state = i.state().and_then(|s| s.name()).map_or("?", |n| n.as_str());
                used.entry(image.to_string()).or_default().push(format!("instance {id} ({state})"));
            }
        }
    }
    let templates: Vec<aws_sdk_ec2::types::LaunchTemplate> = ec2
        .describe_launch_templates()
        .into_paginator()
        .items()
        .send()
        .collect::<Result<_, _>>()
        .await
        .context("DescribeLaunchTemplates")?;
    for t in templates {
        let Some(lt) = t.launch_template_id() else { continue };
        if !lt.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            continue;
        }
        let out = ec2
            .describe_launch_template_versions()
            .launch_template_id(lt)
            .versions("$Default")
            .versions("$Latest")
            .send()
            .await
            .with_context(|| format!("DescribeLaunchTemplateVersions {lt}"))?;
        for v in out.launch_template_versions() {
            let Some(image) = v.launch_template_data().and_then(|d| d.image_id()) else { continue };
            if ami_id(image) {
                let which = if v.default_version() == Some(true) { "default" } else { "latest" };
                let n = v.version_number().unwrap_or_default();
                let why = format!("launch template {lt} version {n} ({which})");
                let list = used.entry(image.to_string()).or_default();
                if !list.contains(&why) {
                    list.push(why);
                }
            }
        }
    }
    Ok(used)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::iso8601;

    fn tag(k: &str, v: &str) -> Tag {
        Tag::builder().key(k).value(v).build()
    }

    #[test]
    fn built_at_is_iso8601_utc() {
        assert_eq!(iso8601(0), "1970-01-01T00:00:00Z");
        assert_eq!(iso8601(1_763_779_200), "2025-11-22T02:40:00Z");
        assert!(is_iso8601(&iso8601(1_763_779_200)));
    }

    #[test]
    fn foreign_or_malformed_tags_make_a_thing_not_imgds() {
        let hash = "ab".repeat(32);
        let good = [
            tag("imgd:profile", "hello"),
            tag("imgd:hash", &hash),
            tag("imgd:built-at", "2026-01-02T03:04:05Z"),
            tag("imgd:deployment:presync", "true"),
            tag("imgd:deployment:bad/name", "true"),
            tag(&format!("imgd:deployment:{}", "x".repeat(113)), "true"),
        ];
        let t = imgd_tags("snap-1", &good).unwrap();
        assert_eq!((t.id.as_str(), t.profile.as_str(), t.hash.as_str()), ("snap-1", "hello", hash.as_str()));
        assert_eq!(t.built_at, "2026-01-02T03:04:05Z");
        // Only deployment names a deployments file could hold count.
        assert_eq!(t.deployments.into_iter().collect::<Vec<_>>(), ["presync"]);
        for bad in [
            vec![tag("imgd:profile", "hello"), tag("imgd:hash", "abc")],
            vec![tag("imgd:profile", "he/llo"), tag("imgd:hash", &hash)],
            vec![tag("imgd:profile", ""), tag("imgd:hash", &hash)],
            vec![tag("imgd:hash", &hash)],
            vec![tag("imgd:profile", "hello"), tag("imgd:hash", &format!("{}é", &hash[..62]))],
        ] {
            assert_eq!(imgd_tags("snap-2", &bad), None, "{bad:?}");
        }
        // A built-at imgd did not write sorts as oldest instead of failing.
        let odd = [tag("imgd:profile", "hello"), tag("imgd:hash", &hash), tag("imgd:built-at", "yesterday\n")];
        assert_eq!(imgd_tags("snap-3", &odd).map(|t| t.built_at), Some(String::new()));
    }
}
