//! How a run reaches AWS and reports on itself: endpoint and retries,
//! byte progress of long transfers, and the counters `--json` prints.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// What a run did, for `--json` and for tests that assert a re-run does nothing.
#[derive(Debug, Default)]
pub struct Counters {
    pub mutating_calls: AtomicU64,
    pub uploaded_bytes: AtomicU64,
    pub downloaded_bytes: AtomicU64,
    pub blocks_sent: AtomicU64,
    pub blocks_total: AtomicU64,
    /// Blocks an interrupted run had sent and a resume did not send again.
    pub blocks_resumed: AtomicU64,
    /// How long the EBS direct snapshot took, StartSnapshot (or the resume)
    /// to CompleteSnapshot.
    pub snapshot_millis: AtomicU64,
    /// Requests answered "slow down" and waited out (EBS blocks).
    pub throttled: AtomicU64,
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
#[derive(Clone)]
pub struct Options {
    /// A local emulator or a custom endpoint.
    pub endpoint_url: Option<String>,
    /// Attempts per AWS call (throttling and 5xx are retried with jittered backoff).
    pub max_attempts: u32,
    /// Where multipart uploads in flight are remembered, so a killed run's
    /// parts are reused only for the same content.
    pub state_dir: PathBuf,
    pub progress: Arc<dyn Progress>,
}

/// Byte progress of long transfers; imgd shows it as a bar on a terminal and
/// as plain lines otherwise.
pub trait Progress: Send + Sync {
    fn start(&self, label: &str, total: u64) -> Arc<dyn Transfer>;
}

pub trait Transfer: Send + Sync {
    fn advance(&self, bytes: u64);
    fn finish(&self);
}
