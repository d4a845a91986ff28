//! What a sync is asked to do: the entry, where it goes, who may launch it,
//! when it is deprecated. Plain data, read by the planner and the applier.

use crate::model::Entry;
use crate::model::Principal;
use crate::s3::Location;
use std::time::Duration;

/// Whole minutes: what AWS keeps of a deprecation time.
pub fn to_minute(secs: i64) -> i64 {
    secs - secs.rem_euclid(60)
}

/// How the EBS snapshot behind the AMI is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// Straight from the raw disk through the EBS direct APIs (no staging, no role).
    EbsDirect,
    /// ImportSnapshot of the VHD in S3 (needs the vmimport role).
    Import,
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
    /// The deployments this image is synced for (`imgd sync --deployments`):
    /// each becomes an `imgd:deployment:NAME` tag, the deployment's history.
    pub deployments: Vec<String>,
}

impl Request {
    /// `imgd-<profile>-<hash12>`: how every region finds this build's image.
    pub fn image_name(&self) -> String {
        crate::model::image_name(&self.entry.profile, &self.entry.hash)
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
            ("imgd:built-at".to_string(), crate::model::iso8601(self.entry.built_at)),
            ("Name".to_string(), self.image_name()),
        ]
        .into_iter()
        .chain(self.deployments.iter().map(|d| (format!("{}{d}", crate::model::DEPLOYMENT_TAG), "true".to_string())))
        .collect()
    }
}
