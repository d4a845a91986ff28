//! imgd's AWS side, run as the `imgd-aws` binary (`imgd sync`, `imgd prune`,
//! and the S3 build cache behind `imgd build --cache s3://…`): store entries
//! to S3, an EBS snapshot and an AMI in every region a fleet needs, the
//! region -> AMI map Terraform reads, and the clean-up of old ones.
//!
//! Kept in its own crate so the rest of imgd builds and tests without the
//! AWS SDK.
//!
//! Every step first looks at what exists (by name, tags and checksums) and
//! only then creates what is missing, so a re-run after success makes no
//! mutating call, and a re-run after a failure finishes only what is missing.

pub mod ami;
pub mod cache;
pub mod clients;
pub mod ebs;
pub mod import;
pub mod output;
pub mod prune;
pub mod retry;
pub mod s3;
pub mod sync;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

/// What a run did, for `--json` and for tests that assert a re-run does nothing.
#[derive(Debug, Default)]
pub struct Counters {
    pub mutating_calls: AtomicU64,
    pub uploaded_bytes: AtomicU64,
    pub downloaded_bytes: AtomicU64,
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

/// How to reach AWS: the standard chain for credentials and region, plus these.
#[derive(clap::Args, Debug, Clone)]
pub struct AwsArgs {
    /// A local emulator or a custom endpoint.
    #[arg(long, env = "AWS_ENDPOINT_URL")]
    pub endpoint_url: Option<String>,
    /// Attempts per AWS call (throttling and 5xx are retried with jittered backoff).
    #[arg(long, default_value_t = 8)]
    pub max_attempts: u32,
}

/// Where in S3 the entries go: `s3://<bucket>/<prefix>/<hash>-<profile>/<file>`.
#[derive(clap::Args, Debug, Clone)]
pub struct BucketArgs {
    /// S3 bucket for the artifacts (and the import method's VHD).
    #[arg(long)]
    pub bucket: String,
    /// Key prefix; entries go under <prefix>/<hash>-<profile>/.
    #[arg(long, default_value = "imgd")]
    pub prefix: String,
}

/// The profile to build (or find in the store) before syncing it.
#[derive(clap::Args, Debug, Clone)]
pub struct BuildArgs {
    /// Profile: a path or a name in <root>/profiles/ (built if needed).
    pub profile: String,
    /// Hardware name in hardware/ (or a path), overriding the profile's.
    #[arg(long)]
    pub hardware: Option<String>,
    /// Override any profile key, e.g. --set hostname=web-1.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub sets: Vec<String>,
    /// Folder holding profiles/ and hardware/.
    #[arg(long, env = "IMGD_ROOT", default_value = ".")]
    pub root: PathBuf,
    /// Store directory [default: $IMGD_STORE or ~/.local/share/imgd/store].
    #[arg(long)]
    pub store: Option<PathBuf>,
    /// Shared build cache, s3://bucket/prefix [default: `cache` in <root>/imgd.toml].
    #[arg(long = "cache", env = "IMGD_BUILD_CACHE", value_name = "URL")]
    pub remote_cache: Option<String>,
}

impl BuildArgs {
    pub fn load(&self) -> anyhow::Result<(imgd::config::Recipe, imgd::store::Store)> {
        let req = imgd::config::LoadRequest {
            profile: self.profile.clone(),
            root: self.root.clone(),
            hardware: self.hardware.clone(),
            sets: self.sets.clone(),
        };
        let recipe = imgd::config::recipe(&req, &imgd::config::default_cache(), None)?;
        let store = imgd::store::Store::open(&self.store.clone().unwrap_or_else(imgd::store::default_dir))?;
        Ok((recipe, store))
    }

    /// Finds, fetches from the shared cache, or builds the recipe's entry.
    pub fn build(
        &self,
        recipe: &imgd::config::Recipe,
        store: &imgd::store::Store,
        aws: &AwsArgs,
    ) -> anyhow::Result<imgd::store::Entry> {
        let remote = imgd::store::remote::configured(self.remote_cache.as_deref(), &self.root)?
            .map(|r| r.endpoint(aws.endpoint_url.as_deref()));
        let remote = remote.as_ref().map(|r| r as &dyn imgd::store::remote::Remote);
        Ok(imgd::build::build_with(recipe, store, &imgd::progress::Progress::new(false), remote)?.entry)
    }
}
