//! Retries imgd does itself, on top of the SDK's.
//!
//! The SDK retries throttling and 5xx answers with jittered backoff, which is
//! right for calls that are safe to repeat. RegisterImage is not (it has no
//! idempotency token), and emulators ignore CopyImage's: if the request landed
//! but the answer was lost, a blind retry makes a second image. Those calls
//! run without the SDK's retry, and after any failure imgd looks for the
//! result by name before it tries again.

use anyhow::{bail, Result};
use aws_sdk_ec2::error::{ProvideErrorMetadata, SdkError};
use std::time::Duration;

const THROTTLING: &[&str] = &[
    "Throttling",
    "ThrottlingException",
    "RequestLimitExceeded",
    "RequestThrottled",
    "SlowDown",
    "TooManyRequestsException",
    "InternalError",
    "InternalFailure",
    "ServiceUnavailable",
    "Unavailable",
];

/// Whether trying again may succeed: throttling, 5xx, timeouts, broken connections.
pub fn transient<E: ProvideErrorMetadata>(e: &SdkError<E>) -> bool {
    match e {
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => true,
        SdkError::ServiceError(s) => {
            s.raw().status().as_u16() >= 500 || s.err().code().is_some_and(|c| THROTTLING.contains(&c))
        }
        _ => false,
    }
}

/// Full-jitter exponential backoff: a random wait in [0, min(20 s, 0.2 s * 2^attempt)).
pub fn backoff(attempt: u32) -> Duration {
    use std::hash::{BuildHasher, Hasher};
    let cap = (200u64 << attempt.min(7)).min(20_000);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(attempt);
    Duration::from_millis(h.finish() % cap.max(1))
}

/// What to do after a creating call failed: `lookup` says whether the thing
/// exists after all (the request landed, the answer was lost): then its id.
/// Otherwise sleep and return `None` to try again, or fail when the error is
/// not transient or the attempts are used up.
pub async fn after_failure<E>(
    what: &str,
    e: SdkError<E>,
    attempt: u32,
    attempts: u32,
    lookup: impl std::future::Future<Output = Result<Option<String>>>,
) -> Result<Option<String>>
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    if let Some(id) = lookup.await? {
        tracing::info!("{what}: the answer was lost but {id} exists; using it");
        return Ok(Some(id));
    }
    if attempt >= attempts || !transient(&e) {
        let detail = aws_smithy_types::error::display::DisplayErrorContext(&e);
        bail!("{what}: {detail}");
    }
    tracing::debug!("{what}: attempt {attempt} failed ({}), retrying", e.code().unwrap_or("no code"));
    tokio::time::sleep(backoff(attempt)).await;
    Ok(None)
}
