//! What a prune is asked to do: where, which profiles, how many builds to
//! keep, and the cache's own retention. Plain data, read by the planner.

use crate::s3::Location;
use std::collections::BTreeSet;
use std::time::Duration;

/// What to prune and what to keep.
#[derive(Debug, Clone)]
pub struct Request {
    pub at: Location,
    pub regions: Vec<String>,
    /// Only this profile's builds (default: every profile).
    pub profile: Option<String>,
    /// Builds with AMIs to keep per profile, newest by `imgd:built-at` (at least 1).
    pub keep: usize,
    pub cache: CacheRetention,
    /// Complete entries of the local store: their S3 copies stay.
    pub local: BTreeSet<String>,
    /// Now, in Unix seconds (a parameter, so the plan is a pure function).
    pub now: u64,
    /// `--deployments`: a fleet's deployments. When given, a build stays in a
    /// region only where a deployment keeps it: its current build plus the
    /// newest `keep - 1` others of its profile, in each region it lists.
    pub deployments: Vec<DeploymentKeep>,
}

/// One deployment as prune sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeploymentKeep {
    pub name: String,
    pub profile: String,
    /// The input hash its profile builds today.
    pub current: String,
    pub regions: Vec<String>,
}

impl Request {
    pub fn wants(&self, profile: &str) -> bool {
        self.profile.as_deref().is_none_or(|p| p == profile)
    }
}

/// Retention for S3 entries no AMI references. Nothing is deleted unless one is set.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheRetention {
    /// Keep the newest N per profile.
    pub keep: Option<usize>,
    /// Delete those not written for this long.
    pub max_age: Option<Duration>,
}
