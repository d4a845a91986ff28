//! One sync of a build at a time across machines: a lease object in the
//! bucket (`<prefix>/.imgd-leases/<image>.json`), created with S3's
//! conditional write (`If-None-Match: *`), so exactly one sync holds it.
//! Another sync of the same build waits for it to go, then observes what
//! the holder made and has nothing left to do. A lease older than
//! [`STALE`] (its holder died without removing it) is taken over, again by
//! a conditional write against the stale one's ETag.

use super::request::Request;
use anyhow::{bail, Context, Result};
use aws_sdk_s3::primitives::ByteStream;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A sync that has held the lease this long is taken to be dead.
pub const STALE: Duration = Duration::from_secs(6 * 3600);
/// How often a waiting sync looks again.
const POLL: Duration = Duration::from_secs(2);
/// The most a lease object may hold (it is read from the bucket: untrusted).
const MAX_LEASE: i64 = 4096;

pub struct Lease {
    s3: aws_sdk_s3::Client,
    bucket: String,
    key: String,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Holder {
    holder: String,
    since: u64,
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Takes the lease of `req`'s build, waiting (at most `wait`) while another
/// sync holds it.
pub async fn take(s3: aws_sdk_s3::Client, req: &Request, wait: Duration) -> Result<Lease> {
    let key = format!("{}.imgd-leases/{}.json", req.to.dir(), req.image_name());
    let lease = Lease { s3, bucket: req.to.bucket.clone(), key };
    let me = Holder { holder: format!("{} pid {}", host(), std::process::id()), since: now() };
    let body = serde_json::to_vec(&me)?;
    let deadline = std::time::Instant::now() + wait;
    let mut said = false;
    loop {
        if lease.put(&body, None).await? {
            return Ok(lease);
        }
        let Some((other, etag)) = lease.read().await? else { continue };
        let age = now().saturating_sub(other.since);
        if age > STALE.as_secs() {
            tracing::warn!("taking over the sync lease {} of {} (held {age} s)", lease.key, other.holder);
            if lease.put(&body, Some(&etag)).await? {
                return Ok(lease);
            }
            continue;
        }
        if !said {
            tracing::warn!(
                "another imgd sync of {} is running ({}, for {age} s); waiting for it to end",
                req.image_name(),
                other.holder
            );
            said = true;
        }
        if std::time::Instant::now() >= deadline {
            bail!("the sync of {} by {} did not end within {} s", req.image_name(), other.holder, wait.as_secs());
        }
        tokio::time::sleep(POLL).await;
    }
}

impl Lease {
    /// Writes the lease if it is absent (or still `replacing`): false when
    /// another sync's lease is there.
    async fn put(&self, body: &[u8], replacing: Option<&str>) -> Result<bool> {
        let mut put = self.s3.put_object().bucket(&self.bucket).key(&self.key).body(ByteStream::from(body.to_vec()));
        put = match replacing {
            Some(etag) => put.if_match(etag),
            None => put.if_none_match("*"),
        };
        match put.send().await {
            Ok(_) => Ok(true),
            // 412: the condition failed; 409: a concurrent conditional write won.
            Err(e) if e.raw_response().is_some_and(|r| matches!(r.status().as_u16(), 409 | 412)) => Ok(false),
            Err(e) => Err(e).with_context(|| format!("writing the sync lease s3://{}/{}", self.bucket, self.key)),
        }
    }

    /// The lease there now and its ETag; None when it went meanwhile.
    async fn read(&self) -> Result<Option<(Holder, String)>> {
        let got = match self.s3.get_object().bucket(&self.bucket).key(&self.key).send().await {
            Ok(g) => g,
            Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => return Ok(None),
            Err(e) => {
                return Err(e).with_context(|| format!("reading the sync lease s3://{}/{}", self.bucket, self.key))
            }
        };
        if got.content_length().unwrap_or(0) > MAX_LEASE {
            bail!("s3://{}/{}: not a sync lease (too big)", self.bucket, self.key);
        }
        let etag = got.e_tag().unwrap_or_default().to_string();
        let bytes = got.body.collect().await.context("reading the sync lease")?.into_bytes();
        let mut h: Holder = serde_json::from_slice(&bytes)
            .with_context(|| format!("s3://{}/{}: not a sync lease", self.bucket, self.key))?;
        // Shown in logs: no control characters from the bucket.
        h.holder = h.holder.chars().filter(|c| !c.is_control()).take(200).collect();
        Ok(Some((h, etag)))
    }

    /// Removes the lease (best effort: a stale one is taken over anyway).
    pub async fn release(self) {
        if let Err(e) = self.s3.delete_object().bucket(&self.bucket).key(&self.key).send().await {
            tracing::warn!("could not remove the sync lease s3://{}/{}: {e}", self.bucket, self.key);
        }
    }
}

fn host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map_or_else(|_| "?".into(), |h| h.trim().to_string())
}
