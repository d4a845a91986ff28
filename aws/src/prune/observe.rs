//! What exists for a prune: imgd-tagged images and snapshots in every region,
//! what launches from which image there (instances, launch templates, SSM
//! parameters of data type aws:ec2:image),
//! the entry folders under the prefix, open multipart uploads (every listing
//! paginated), and imgd's metadata on the objects the plan would delete.

use super::plan::{doomed_entries, Observed, Region, S3Entry, Upload};
use super::request::Request;
use crate::{ami, clients::Clients};
use anyhow::{Context, Result};

pub async fn observe(clients: &Clients, req: &Request) -> Result<Observed> {
    let mut seen = Observed::default();
    for region in &req.regions {
        let ec2 = clients.ec2(region);
        let mut in_use = ami::in_use(&ec2).await?;
        // A release channel (imgd's or anyone's) still names it: launch
        // templates resolving `resolve:ssm:` would break.
        for (name, image) in crate::ssm::image_parameters(&clients.ssm(region)).await? {
            in_use.entry(image).or_default().push(format!("SSM parameter {name}"));
        }
        let r = Region { images: ami::list_images(&ec2).await?, snapshots: ami::list_snapshots(&ec2).await?, in_use };
        seen.regions.insert(region.clone(), r);
    }
    let s3 = clients.s3();
    let (bucket, base) = (&req.at.bucket, req.at.dir());
    let mut pages = s3.list_objects_v2().bucket(bucket).prefix(&base).into_paginator().send();
    while let Some(page) = pages.next().await {
        let page = page.with_context(|| format!("listing s3://{bucket}/{base}"))?;
        for o in page.contents() {
            let Some(key) = o.key() else { continue };
            let Some((entry, _file)) = key.get(base.len()..).and_then(|k| k.split_once('/')) else { continue };
            // Folders that are not imgd's entry names are never looked at again.
            if crate::model::parse_entry_name(entry).is_none() {
                continue;
            }
            let e: &mut S3Entry = seen.entries.entry(entry.to_string()).or_default();
            e.keys.push(key.to_string());
            let modified = o.last_modified().map_or(0, |t| t.secs().max(0) as u64);
            e.modified = e.modified.max(modified);
        }
    }
    for u in crate::s3::uploads(&s3, bucket, &base).await? {
        seen.uploads.push(Upload { key: u.0, id: u.1, initiated: u.2 });
    }
    // imgd's mark on every object the plan would delete.
    for name in doomed_entries(&seen, req).into_keys() {
        let keys = seen.entries.get(&name).map(|e| e.keys.clone()).unwrap_or_default();
        for key in keys {
            let head = s3.head_object().bucket(bucket).key(&key).send().await;
            let ours = head
                .ok()
                .and_then(|h| h.metadata().map(|m| crate::s3::OUR_METADATA.iter().any(|k| m.contains_key(*k))))
                .unwrap_or(false);
            seen.marks.insert(key, ours);
        }
    }
    Ok(seen)
}
