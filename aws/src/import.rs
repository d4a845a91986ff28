//! `--method import`: an EBS snapshot from the VHD already in S3, through
//! ImportSnapshot, polling DescribeImportSnapshotTasks until it completes.
//!
//! Slower than EBS direct and it needs the `vmimport` service role, but some
//! accounts allow only this path. The client token (the input hash) makes a
//! re-run after an interruption find the same task instead of starting another.

use crate::options::Counters;
use anyhow::{bail, Context, Result};
use aws_sdk_ec2::error::ProvideErrorMetadata;
use aws_sdk_ec2::types::{ResourceType, SnapshotDiskContainer, Tag, TagSpecification, UserBucket};
use std::time::{Duration, Instant};

pub struct Request<'a> {
    pub bucket: &'a str,
    pub key: &'a str,
    pub description: &'a str,
    pub tags: &'a [(String, String)],
    pub client_token: &'a str,
    pub kms_key: Option<&'a str>,
    pub timeout: Duration,
    pub poll: Duration,
}

const ROLE_HELP: &str = "ImportSnapshot needs the `vmimport` service role: create it (trusted by \
vmie.amazonaws.com, allowed to read the bucket and to create snapshots) as described in \
https://docs.aws.amazon.com/vm-import/latest/userguide/required-permissions.html, or use \
--method ebs-direct, which needs no role";

/// Starts (or finds, by client token) the import and waits for its snapshot.
pub async fn snapshot(ec2: &aws_sdk_ec2::Client, r: &Request<'_>, counters: &Counters) -> Result<String> {
    let mut tags = TagSpecification::builder().resource_type(ResourceType::ImportSnapshotTask);
    for (k, v) in r.tags {
        tags = tags.tags(Tag::builder().key(k).value(v).build());
    }
    let disk = SnapshotDiskContainer::builder()
        .format("VHD")
        .description(r.description)
        .user_bucket(UserBucket::builder().s3_bucket(r.bucket).s3_key(r.key).build())
        .build();
    let mut req = ec2
        .import_snapshot()
        .description(r.description)
        .disk_container(disk)
        .client_token(r.client_token)
        .tag_specifications(tags.build());
    if let Some(k) = r.kms_key {
        req = req.encrypted(true).kms_key_id(k);
    }
    counters.mutate();
    let started = match req.send().await {
        Ok(s) => s,
        Err(e) => {
            let msg = e.message().unwrap_or_default().to_string();
            if msg.contains("vmimport") || e.code() == Some("InvalidParameter") && msg.contains("role") {
                bail!("{ROLE_HELP}\n(AWS said: {msg})");
            }
            return Err(aws_sdk_ec2::Error::from(e)).context("ImportSnapshot");
        }
    };
    let id = started.import_task_id().context("ImportSnapshot returned no task id")?.to_string();
    // Ids and messages from AWS go into log lines: no control characters.
    let task = id.escape_debug().to_string();
    tracing::info!("importing s3://{}/{} as a snapshot (task {task})", r.bucket, r.key);

    let start = Instant::now();
    let mut last = String::new();
    loop {
        let out = ec2
            .describe_import_snapshot_tasks()
            .import_task_ids(&id)
            .send()
            .await
            .context("DescribeImportSnapshotTasks")?;
        let detail = out
            .import_snapshot_tasks()
            .first()
            .and_then(|t| t.snapshot_task_detail())
            .with_context(|| format!("import task {task} vanished"))?;
        let status = detail.status().unwrap_or("unknown");
        match status {
            "completed" => {
                let id =
                    detail.snapshot_id().with_context(|| format!("import task {task} completed without a snapshot"))?;
                tracing::info!("import task {task}: snapshot {}", id.escape_debug());
                return Ok(id.to_string());
            }
            "deleting" | "deleted" | "error" => {
                bail!("import task {task} {status}: {}", detail.status_message().unwrap_or("no message").escape_debug())
            }
            _ => {}
        }
        let now = format!(
            "{} {}% {}",
            status.escape_debug(),
            detail.progress().unwrap_or("0").escape_debug(),
            detail.status_message().unwrap_or("").escape_debug()
        );
        if now != last {
            tracing::info!("import task {task}: {}", now.trim());
            last = now;
        }
        if start.elapsed() > r.timeout {
            bail!("import task {task} not done after {}s ({})", r.timeout.as_secs(), last.trim());
        }
        tokio::time::sleep(r.poll).await;
    }
}
