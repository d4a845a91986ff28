//! imgd's AWS side, as a library the `imgd` binary links (feature `aws`):
//! store entries to S3, an EBS snapshot and an AMI in every region a fleet
//! needs, the clean-up of old ones, and the S3 build cache's transfers.
//!
//! It knows nothing of profiles or the store. imgd hands it typed requests
//! ([`Entry`]: named files with their digests, and what the machine needs from
//! an AMI) and gets plans and results back; the AWS SDK stays in this crate so
//! the rest of imgd builds without it.
//!
//! Everything that changes remote state runs as observe -> plan -> apply: list
//! what exists, compute the steps with a pure function of (observed, wanted)
//! (`sync::plan`, `prune::plan`), then carry them out. `--dry-run` and
//! prune without `--yes` print the plan; a re-run after success plans nothing.

mod ami;
mod cache;
mod clients;
mod ebs;
mod error;
mod import;
mod model;
mod options;
mod output;
mod placement;
mod promote;
mod prune;
mod regions;
mod retry;
mod s3;
mod ssm;
mod sync;

// The public surface: one entry point per command with its request and
// outcome, the types they carry, and the checks imgd applies to its flags.
pub use cache::Cache;
pub use error::{Error, Result, Task};
pub use model::{parse_entry_name, Arch, BootMode, Check, Entry, File, Machine, Principal, Verify};
pub use options::{Counters, Options, Progress, Transfer};
pub use output::{text as table, Row, SyncResult};
pub use placement::{observe as observe_placements, Found as FoundPlacement, Wanted as WantedPlacement};
pub use promote::{run as promote, Outcome as PromoteOutcome, Request as PromoteRequest};
pub use prune::{
    run as prune, Build as KeptBuild, CacheRetention, DeploymentKeep, Outcome as PruneOutcome, Request as PruneRequest,
};
pub use regions::{enabled as enabled_regions, is_region_name};
pub use s3::{check_bucket, Location};
pub use ssm::check_name as check_parameter_name;
pub use sync::{run as sync, Deprecation, Method, Outcome as SyncOutcome, Request as SyncRequest};
