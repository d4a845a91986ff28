//! `imgd prune`: deregister imgd's AMIs beyond the newest N builds of each
//! profile, delete their snapshots and the S3 entries published for them,
//! apply the cache entries' own retention when asked, and abort multipart
//! uploads interrupted syncs left more than a day ago.
//!
//! Observe -> plan ([`plan::plan`], pure) -> apply (only with `--yes`). Only
//! things carrying imgd's marks are ever touched: images and snapshots whose
//! `imgd:profile` and `imgd:hash` tags hold values imgd writes, and S3 objects
//! with imgd's `imgd-digest` metadata under an entry folder `<hash>-<profile>`.

pub mod apply;
pub mod observe;
pub mod plan;
pub mod request;

pub use plan::{Build, Plan};
pub use request::{CacheRetention, DeploymentKeep, Request};

use crate::{clients::Clients, options::Counters, options::Options};
use anyhow::Result;

pub struct Outcome {
    pub plan: Plan,
    pub applied: bool,
    pub mutating_calls: u64,
}

/// Observe, plan, and with `yes`, apply.
pub fn run<'a>(req: &'a Request, opts: &'a Options, yes: bool) -> crate::error::Task<'a, Outcome> {
    crate::error::task(observe_plan_apply(req, opts, yes))
}

async fn observe_plan_apply(req: &Request, opts: &Options, yes: bool) -> Result<Outcome> {
    let home = req.regions.first().map_or("us-east-1", String::as_str);
    let clients = Clients::load(home, opts).await;
    let seen = observe::observe(&clients, req).await?;
    let plan = plan::plan(&seen, req);
    for key in &plan.foreign {
        tracing::warn!("{}: not uploaded by imgd (no imgd-digest metadata); left alone", req.at.url(key));
    }
    let counters = Counters::default();
    if yes {
        apply::apply(&clients, req, &plan, &counters).await?;
    }
    Ok(Outcome { plan, applied: yes, mutating_calls: counters.get(&counters.mutating_calls) })
}
