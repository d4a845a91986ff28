//! One sync of a build at a time across machines: a lease object in the
//! bucket (`<prefix>/.imgd-leases/<image>.json`), created with S3's
//! conditional write (`If-None-Match: *`), so exactly one sync holds it.
//! Another sync of the same build waits for it to go, then observes what
//! the holder made and has nothing left to do. The holder renews the lease
//! every [`RENEW`]; one not renewed for [`STALE`] (its holder died without
//! removing it), or held by a process of this host that is gone (a killed
//! sync being resumed), is taken over, again by a conditional write against
//! that lease's ETag.

use super::request::Request;
use anyhow::{bail, Context, Result};
use aws_sdk_s3::primitives::ByteStream;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A lease not renewed for this long is taken to be dead.
pub const STALE: Duration = Duration::from_secs(120);
/// How often the holder renews its lease.
const RENEW: Duration = Duration::from_secs(30);
/// How often a waiting sync looks again.
const POLL: Duration = Duration::from_secs(2);
/// The most a lease object may hold (it is read from the bucket: untrusted).
const MAX_LEASE: i64 = 4096;

pub struct Lease {
    s3: aws_sdk_s3::Client,
    bucket: String,
    key: String,
    renewing: Option<tokio::task::JoinHandle<()>>,
}

#[derive(Clone, serde::Serialize, serde::Deserialize)]
struct Holder {
    holder: String,
    host: String,
    pid: u32,
    /// When it was last renewed (seconds since the epoch).
    since: u64,
}

impl Holder {
    /// Gone for good: not renewed for [`STALE`], or a process of this host
    /// that no longer runs.
    fn gone(&self) -> bool {
        now().saturating_sub(self.since) > STALE.as_secs()
            || (self.host == host() && self.pid != std::process::id() && !running(self.pid))
    }
}

fn running(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return false };
    let state = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next());
    !matches!(state, None | Some("Z" | "X"))
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Takes the lease of `req`'s build, waiting (at most `wait`) while another
/// sync holds it.
pub async fn take(s3: aws_sdk_s3::Client, req: &Request, wait: Duration) -> Result<Lease> {
    let key = format!("{}.imgd-leases/{}.json", req.to.dir(), req.image_name());
    let mut lease = Lease { s3, bucket: req.to.bucket.clone(), key, renewing: None };
    let me = || Holder {
        holder: format!("{} pid {}", host(), std::process::id()),
        host: host(),
        pid: std::process::id(),
        since: now(),
    };
    let deadline = std::time::Instant::now() + wait;
    let mut said = false;
    loop {
        if let Some(etag) = lease.put(&me(), None).await? {
            lease.renew(etag, me());
            return Ok(lease);
        }
        let Some((other, etag)) = lease.read().await? else { continue };
        if other.gone() {
            tracing::warn!("taking over the sync lease {} of {} (it is gone)", lease.key, other.holder);
            if let Some(etag) = lease.put(&me(), Some(&etag)).await? {
                lease.renew(etag, me());
                return Ok(lease);
            }
            continue;
        }
        let age = now().saturating_sub(other.since);
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
    /// Writes the lease if it is absent (or still `replacing`): its new
    /// ETag, or None when another sync's lease is there.
    async fn put(&self, holder: &Holder, replacing: Option<&str>) -> Result<Option<String>> {
        put(&self.s3, &self.bucket, &self.key, holder, replacing).await
    }

    /// Renews the lease every [`RENEW`] until it is released.
    fn renew(&mut self, mut etag: String, mut holder: Holder) {
        let (s3, bucket, key) = (self.s3.clone(), self.bucket.clone(), self.key.clone());
        self.renewing = Some(tokio::spawn(async move {
            loop {
                tokio::time::sleep(RENEW).await;
                holder.since = now();
                match put(&s3, &bucket, &key, &holder, Some(&etag)).await {
                    Ok(Some(e)) => etag = e,
                    Ok(None) => {
                        tracing::warn!("the sync lease s3://{bucket}/{key} was taken over");
                        return;
                    }
                    Err(e) => tracing::warn!("renewing the sync lease: {e:#}"),
                }
            }
        }));
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
        h.host = h.host.chars().filter(|c| !c.is_control()).take(200).collect();
        Ok(Some((h, etag)))
    }

    /// Removes the lease (best effort: a stale one is taken over anyway).
    pub async fn release(mut self) {
        if let Some(r) = self.renewing.take() {
            r.abort();
        }
        if let Err(e) = self.s3.delete_object().bucket(&self.bucket).key(&self.key).send().await {
            tracing::warn!("could not remove the sync lease s3://{}/{}: {e}", self.bucket, self.key);
        }
    }
}

async fn put(
    s3: &aws_sdk_s3::Client,
    bucket: &str,
    key: &str,
    holder: &Holder,
    replacing: Option<&str>,
) -> Result<Option<String>> {
    let body = serde_json::to_vec(holder)?;
    let mut put = s3.put_object().bucket(bucket).key(key).body(ByteStream::from(body));
    put = match replacing {
        Some(etag) => put.if_match(etag),
        None => put.if_none_match("*"),
    };
    match put.send().await {
        Ok(out) => Ok(Some(out.e_tag().unwrap_or_default().to_string())),
        // 412: the condition failed; 409: a concurrent conditional write won.
        Err(e) if e.raw_response().is_some_and(|r| matches!(r.status().as_u16(), 409 | 412)) => Ok(None),
        Err(e) => Err(e).with_context(|| format!("writing the sync lease s3://{bucket}/{key}")),
    }
}

fn host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map_or_else(|_| "?".into(), |h| h.trim().to_string())
}
