//! `imgd sync`: a store entry to S3, an EBS snapshot and an AMI in every region
//! a fleet needs, and the region -> AMI map Terraform reads.
//!
//! Kept in its own crate (and binary, `imgd-sync`, which `imgd sync` runs) so
//! the rest of imgd builds and tests without the AWS SDK.
//!
//! Every step first looks at what exists (by name, tags and checksums) and
//! only then creates what is missing, so a re-run after success makes no
//! mutating call, and a re-run after a failure finishes only what is missing.

pub mod ami;
pub mod clients;
pub mod ebs;
pub mod output;
pub mod s3;

use std::sync::atomic::{AtomicU64, Ordering};

/// What a run did, for `--json` and for tests that assert a re-run does nothing.
#[derive(Debug, Default)]
pub struct Counters {
    pub mutating_calls: AtomicU64,
    pub uploaded_bytes: AtomicU64,
    pub blocks_sent: AtomicU64,
    pub blocks_total: AtomicU64,
}

impl Counters {
    pub fn mutate(&self) {
        self.mutating_calls.fetch_add(1, Ordering::Relaxed);
    }
    pub fn get(&self, c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
}
