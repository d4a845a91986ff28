//! What exists for a sync: objects with the entry's SHA-256s, the image named
//! for the build in each region (its tags, launch and create-volume
//! permissions, deprecation time), and the
//! snapshots failed runs left. Only describe/list/head calls.

use super::plan::{ImageState, Observed};
use super::request::Request;
use crate::{ami, clients::Clients};
use anyhow::Result;

pub async fn observe(clients: &Clients, req: &Request) -> Result<Observed> {
    let s3 = clients.s3();
    let mut uploaded = Vec::new();
    for f in &req.entry.files {
        uploaded.push(crate::s3::present(&s3, &req.to.bucket, &req.to.key(&req.entry.name, &f.name), &f.digest).await);
    }
    let name = req.image_name();
    let tags = req.tags();
    let mut tasks = Vec::new();
    for region in req.regions() {
        let (ec2, region, name, tags) = (clients.ec2(region), region.to_string(), name.clone(), tags.clone());
        let (ssm, parameter) = (clients.ssm(&region), req.ssm_parameter.clone());
        let sharing = !req.share.is_empty();
        let snapshots = req.share.iter().any(|p| p.shares_snapshots());
        tasks.push(tokio::spawn(async move {
            let image = match ami::find(&ec2, &name).await? {
                Some(f) => Some(ImageState {
                    tagged: ami::has_tags(&ec2, &f.id, &tags).await?,
                    shared_with: if sharing { ami::shared_with(&ec2, &f.id).await? } else { Default::default() },
                    snapshot_shared_with: match (&f.snapshot, snapshots) {
                        (Some(s), true) => ami::snapshot_shared_with(&ec2, s).await?,
                        _ => Default::default(),
                    },
                    deprecation: f.deprecation,
                    id: f.id,
                    snapshot: f.snapshot,
                }),
                None => None,
            };
            let value = match &parameter {
                Some(p) => crate::ssm::get(&ssm, p).await?,
                None => None,
            };
            anyhow::Ok((region, image, value))
        }));
    }
    let mut images = std::collections::BTreeMap::new();
    let mut parameters = std::collections::BTreeMap::new();
    for t in tasks {
        let (region, image, value) = t.await??;
        images.insert(region.clone(), image);
        parameters.insert(region, value);
    }
    let left = match images.get(&req.home) {
        _ if !req.ami => Vec::new(),
        Some(Some(_)) => Vec::new(),
        _ => ami::left_snapshots(&clients.ec2(&req.home), &req.entry.hash).await?,
    };
    Ok(Observed { uploaded, left, images, parameters })
}
