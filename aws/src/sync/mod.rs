//! `imgd sync`: a build to S3 and to an AMI in every region, then the
//! region -> AMI map for Terraform.
//!
//! [`observe`] lists what exists (objects by SHA-256, images by name, tags,
//! launch permissions), [`plan::plan`] turns that and the [`Request`] into
//! steps, and [`apply`] carries them out. A dry run stops after the plan.

pub mod apply;
pub mod lease;
pub mod observe;
pub mod plan;
pub mod request;

pub use apply::apply;
pub use observe::observe;
pub use plan::{Observed, Plan};
pub use request::{Deprecation, Method, Request};

use crate::output::SyncResult;
use crate::{clients::Clients, options::Counters, options::Options};
use anyhow::Result;

/// What a sync did: the plan, and unless it was a dry run, the result.
pub struct Outcome {
    pub plan: Plan,
    pub result: Option<SyncResult>,
}

/// Observe, plan, and (unless `dry_run`) apply.
pub fn run<'a>(req: &'a Request, opts: &'a Options, dry_run: bool) -> crate::error::Task<'a, Outcome> {
    crate::error::task(observe_plan_apply(req, opts, dry_run))
}

async fn observe_plan_apply(req: &Request, opts: &Options, dry_run: bool) -> Result<Outcome> {
    // Held until the sync ends; a dry run changes nothing and need not wait.
    let _one = if dry_run { None } else { Some(one_sync_at_a_time(req, opts).await?) };
    let clients = Clients::load(&req.home, opts).await;
    let seen = observe(&clients, req).await?;
    let plan = plan::plan(&seen, req);
    if dry_run {
        return Ok(Outcome { plan, result: None });
    }
    if plan.steps.is_empty() {
        // Nothing to change: no lease either, so a re-run writes nothing.
        return apply_plan(&clients, req, &seen, plan, opts).await;
    }
    // One at a time across machines: the bucket holds the lease. What the
    // last holder made is seen again once it is ours.
    let lease = lease::take(clients.s3(), req, LEASE_WAIT).await?;
    let done = async {
        let seen = observe(&clients, req).await?;
        let plan = plan::plan(&seen, req);
        apply_plan(&clients, req, &seen, plan, opts).await
    }
    .await;
    lease.release().await;
    done
}

/// How long a sync waits for another sync of the same build to end.
const LEASE_WAIT: std::time::Duration = std::time::Duration::from_secs(3 * 3600);

async fn apply_plan(clients: &Clients, req: &Request, seen: &Observed, plan: Plan, opts: &Options) -> Result<Outcome> {
    let counters = std::sync::Arc::new(Counters::default());
    let result = apply(clients, req, seen, &plan, opts, &counters).await?;
    Ok(Outcome { plan, result: Some(result) })
}

/// One sync of a build to one place (endpoint, bucket, home region) at a
/// time on this machine: two at once would resume the same multipart uploads
/// and EBS snapshot and race to register the image (the loser fails on the
/// duplicate name). The second waits, then observes what the first made and
/// has nothing left to do. Across machines, [`lease`] does the same.
async fn one_sync_at_a_time(req: &Request, opts: &Options) -> Result<std::fs::File> {
    use anyhow::Context;
    use sha2::Digest;
    let state_dir = &opts.state_dir;
    std::fs::create_dir_all(state_dir).with_context(|| format!("creating {}", state_dir.display()))?;
    let image = req.image_name();
    let place = format!("{}\n{}\n{}", opts.endpoint_url.as_deref().unwrap_or(""), req.to.bucket, req.home);
    let place = hex::encode(&sha2::Sha256::digest(place.as_bytes())[..8]);
    // `image` is `imgd-<profile>-<hash12>`, from a checked store entry.
    let path = state_dir.join(format!("sync-{image}-{place}.lock"));
    let file = std::fs::File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => {
            tracing::warn!("another imgd sync of {image} is running on this machine; waiting for it to end");
            tokio::task::spawn_blocking(move || file.lock().map(|()| file))
                .await?
                .with_context(|| format!("locking {}", path.display()))
        }
        Err(std::fs::TryLockError::Error(e)) => Err(e).with_context(|| format!("locking {}", path.display())),
    }
}
