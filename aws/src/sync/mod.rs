//! `imgd sync`: a build to S3 and to an AMI in every region, then the
//! region -> AMI map for Terraform.
//!
//! [`observe`] lists what exists (objects by SHA-256, images by name, tags,
//! launch permissions), [`plan::plan`] turns that and the [`Request`] into
//! steps, and [`apply`] carries them out. A dry run stops after the plan.

pub mod apply;
pub mod observe;
pub mod plan;

pub use apply::apply;
pub use observe::observe;
pub use plan::{plan, Observed, Plan, Step};

/// Whole minutes: what AWS keeps of a deprecation time.
pub fn to_minute(secs: i64) -> i64 {
    secs - secs.rem_euclid(60)
}

use crate::output::SyncResult;
use crate::s3::Location;
use crate::{clients::Clients, Counters, Entry, Options};
use anyhow::Result;
use std::time::Duration;

/// How the EBS snapshot behind the AMI is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// Straight from the raw disk through the EBS direct APIs (no staging, no role).
    EbsDirect,
    /// ImportSnapshot of the VHD in S3 (needs the vmimport role).
    Import,
}

/// Someone an image is shared with.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Principal {
    /// A 12-digit AWS account id.
    Account(String),
    /// An AWS Organizations organization, by ARN.
    Organization(String),
    /// An organizational unit, by ARN.
    OrganizationalUnit(String),
    /// Everyone (`--public`, never implied).
    Public,
}

impl Principal {
    /// For plans and logs.
    pub fn label(&self) -> String {
        match self {
            Principal::Account(a) => format!("account {a}"),
            Principal::Organization(a) => format!("organization {a}"),
            Principal::OrganizationalUnit(a) => format!("OU {a}"),
            Principal::Public => "everyone (public)".into(),
        }
    }

    /// Whether a snapshot can be shared with it too: create-volume
    /// permission names accounts or `all`, never organizations or OUs
    /// (there, launch permission is what AWS offers).
    pub fn shares_snapshots(&self) -> bool {
        matches!(self, Principal::Account(_) | Principal::Public)
    }
}

/// A deprecation time for every copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deprecation {
    /// Unix seconds (AWS keeps whole minutes).
    pub at: i64,
    /// The build is older than the duration asked for, so `at` is the next
    /// minute instead (AWS refuses times in the past): a copy already
    /// deprecated by then is left as it is.
    pub or_earlier: bool,
}

impl Deprecation {
    /// `DURATION` after `built_at`, or in a minute if that has passed.
    pub fn after(built_at: i64, duration_secs: i64, now: i64) -> Deprecation {
        let at = to_minute(built_at.saturating_add(duration_secs));
        let soonest = to_minute(now) + 120;
        if at >= soonest {
            Deprecation { at, or_earlier: false }
        } else {
            Deprecation { at: soonest, or_earlier: true }
        }
    }

    /// Whether an image deprecated at `have` (if at all) needs no change.
    pub fn satisfied_by(&self, have: Option<i64>) -> bool {
        match have.map(to_minute) {
            Some(t) if self.or_earlier => t <= self.at,
            Some(t) => t == to_minute(self.at),
            None => false,
        }
    }
}

/// What to sync and where.
#[derive(Debug, Clone)]
pub struct Request {
    pub entry: Entry,
    pub to: Location,
    /// Make AMIs (else only upload: an iPXE mirror, or a cache fill).
    pub ami: bool,
    /// Where the AMI is registered first.
    pub home: String,
    /// Every other region that needs a copy.
    pub others: Vec<String>,
    pub method: Method,
    /// Who may launch the image (and, where AWS allows it, create volumes
    /// from its snapshot).
    pub share: Vec<Principal>,
    /// When every copy of the image is deprecated (`--deprecate-in`).
    pub deprecate: Option<Deprecation>,
    /// The SSM parameter that names the current AMI in each region
    /// (`--ssm-parameter`), set once the image there is ready.
    pub ssm_parameter: Option<String>,
    /// Encrypt the snapshot and the copies with this KMS key.
    pub kms_key: Option<String>,
    /// How long to wait for each AMI (and an import) to become available.
    pub wait: Duration,
    /// Between polls of an import task or a pending AMI.
    pub poll: Duration,
}

impl Request {
    /// `imgd-<profile>-<hash12>`: how every region finds this build's image.
    pub fn image_name(&self) -> String {
        format!("imgd-{}-{}", self.entry.profile, &self.entry.hash[..12])
    }

    pub fn description(&self) -> String {
        format!("imgd {} ({})", self.entry.profile, self.entry.name)
    }

    /// The home region first, then the others (none when only uploading).
    pub fn regions(&self) -> impl Iterator<Item = &str> {
        let all = std::iter::once(self.home.as_str()).chain(self.others.iter().map(String::as_str));
        all.take(if self.ami { usize::MAX } else { 0 })
    }

    /// The tags on every image and snapshot of this build (prune reads them).
    pub fn tags(&self) -> Vec<(String, String)> {
        vec![
            ("imgd:profile".to_string(), self.entry.profile.clone()),
            ("imgd:hash".to_string(), self.entry.hash.clone()),
            ("imgd:built-at".to_string(), crate::ami::iso8601(self.entry.built_at)),
            ("Name".to_string(), self.image_name()),
        ]
    }
}

/// What a sync did: the plan, and unless it was a dry run, the result.
pub struct Outcome {
    pub plan: Plan,
    pub result: Option<SyncResult>,
}

/// Observe, plan, and (unless `dry_run`) apply.
pub fn run<'a>(req: &'a Request, opts: &'a Options, dry_run: bool) -> crate::Task<'a, Outcome> {
    Box::pin(observe_plan_apply(req, opts, dry_run))
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
    let counters = std::sync::Arc::new(Counters::default());
    let result = apply(&clients, req, &seen, &plan, opts, &counters).await?;
    Ok(Outcome { plan, result: Some(result) })
}

/// One sync of a build to one place (endpoint, bucket, home region) at a
/// time on this machine: two at once would resume the same multipart uploads
/// and EBS snapshot and race to register the image (the loser fails on the
/// duplicate name). The second waits, then observes what the first made and
/// has nothing left to do. (Syncs from two machines are not serialized; each
/// observes only what the other finished.)
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
