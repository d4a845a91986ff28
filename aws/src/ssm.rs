//! SSM Parameter Store as a release channel: a parameter per region holding
//! the current AMI id, so launch templates and autoscaling groups resolve
//! `resolve:ssm:NAME` instead of a hard-coded id. Written as type `String`
//! with data type `aws:ec2:image`, so AWS itself checks that the value is an
//! image in that region before the new version takes effect.

use crate::options::Counters;
use anyhow::{Context, Result};
use aws_sdk_ssm::types::ParameterType;

/// A parameter name as SSM takes it: up to 1011 characters of letters,
/// digits and `_ . - /`, not starting with `aws` or `ssm` (reserved).
pub fn check_name(name: &str) -> Result<(), String> {
    let plain = name.trim_start_matches('/').to_ascii_lowercase();
    let ok = !name.is_empty()
        && name.len() <= 1011
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-' | b'/'))
        && !plain.starts_with("aws")
        && !plain.starts_with("ssm")
        && !name.contains("//");
    if !ok {
        return Err(format!(
            "`{}` is not an SSM parameter name (letters, digits, _ . - /; not aws… or ssm…)",
            name.escape_debug()
        ));
    }
    Ok(())
}

/// The parameter's value in this region, if it exists.
pub async fn get(ssm: &aws_sdk_ssm::Client, name: &str) -> Result<Option<String>> {
    match ssm.get_parameter().name(name).send().await {
        Ok(out) => Ok(out.parameter().and_then(|p| p.value()).map(str::to_string)),
        Err(e) if e.as_service_error().is_some_and(|s| s.is_parameter_not_found()) => Ok(None),
        Err(e) => Err(e).with_context(|| format!("GetParameter {name}")),
    }
}

/// Points the parameter at `ami` (creating it, or a new version).
pub async fn put(ssm: &aws_sdk_ssm::Client, name: &str, ami: &str, counters: &Counters) -> Result<()> {
    counters.mutate();
    ssm.put_parameter()
        .name(name)
        .value(ami)
        .r#type(ParameterType::String)
        .data_type("aws:ec2:image")
        .overwrite(true)
        .description("imgd: the current AMI of this channel")
        .send()
        .await
        .with_context(|| format!("PutParameter {name} = {ami}"))?;
    Ok(())
}

/// Every parameter of data type `aws:ec2:image` in this region and the
/// image it names: channels imgd publishes and any other (prune keeps what
/// they point at). Paginated; values fetched ten names at a time.
pub async fn image_parameters(ssm: &aws_sdk_ssm::Client) -> Result<Vec<(String, String)>> {
    let mut names = Vec::new();
    let mut pages = ssm.describe_parameters().into_paginator().send();
    while let Some(page) = pages.next().await {
        let page = page.context("DescribeParameters")?;
        for p in page.parameters() {
            if p.data_type() != Some("aws:ec2:image") {
                continue;
            }
            // Names come from AWS and land in the printed plan: only those
            // SSM itself could have made (no control characters) are used.
            match p.name() {
                Some(n) if check_name(n).is_ok() => names.push(n.to_string()),
                Some(n) => {
                    tracing::warn!("skipping SSM parameter {:?}: not a valid name", n.escape_debug().to_string())
                }
                None => {}
            }
        }
    }
    let mut out = Vec::new();
    for chunk in names.chunks(10) {
        let got = ssm.get_parameters().set_names(Some(chunk.to_vec())).send().await.context("GetParameters")?;
        for p in got.parameters() {
            if let (Some(n), Some(v)) = (p.name(), p.value()) {
                out.push((n.to_string(), v.to_string()));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn parameter_names() {
        for ok in ["/fleet/web/ami", "web-ami", "a.b_c"] {
            assert!(super::check_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "/aws/x", "ssm-x", "a b", "a//b", "a\nb", "é"] {
            assert!(super::check_name(bad).is_err(), "{bad:?}");
        }
    }
}
