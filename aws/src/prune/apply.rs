//! Carrying out a prune plan: abort stale uploads, deregister images, then
//! delete their snapshots (an image must be gone before its snapshot can go),
//! then objects (each entry's manifest first, so a half-deleted entry never
//! looks complete).

use super::plan::{Plan, Step};
use super::request::Request;
use crate::{ami, clients::Clients, options::Counters};
use anyhow::{Context, Result};

pub async fn apply(clients: &Clients, req: &Request, plan: &Plan, counters: &Counters) -> Result<()> {
    let s3 = clients.s3();
    let bucket = &req.at.bucket;
    let order = |s: &Step| match s {
        Step::AbortUpload { .. } => 0,
        Step::Deregister { .. } => 1,
        Step::DeleteSnapshot { .. } => 2,
        Step::DeleteObject { .. } => 3,
    };
    let mut steps: Vec<&Step> = plan.steps.iter().collect();
    steps.sort_by_key(|s| order(s)); // stable: the plan's order within a kind
    for step in steps {
        match step {
            Step::AbortUpload { key, id } => {
                counters.mutate();
                s3.abort_multipart_upload().bucket(bucket).key(key).upload_id(id).send().await?;
            }
            Step::Deregister { region, image } => ami::deregister(&clients.ec2(region), &image.id, counters).await?,
            Step::DeleteSnapshot { region, snapshot } => {
                ami::delete_snapshot(&clients.ec2(region), &snapshot.id, counters).await?
            }
            Step::DeleteObject { key, .. } => {
                counters.mutate();
                s3.delete_object().bucket(bucket).key(key).send().await.with_context(|| format!("deleting {key}"))?;
            }
        }
    }
    Ok(())
}
