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
