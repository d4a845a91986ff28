//! `--regions all`: every region enabled for the account, asked of EC2
//! (DescribeRegions), so a region enabled later gets the AMI on the next sync
//! without anyone editing a list.

use anyhow::{bail, Context, Result};

/// Regions whose opt-in status says the account can use them (DescribeRegions
/// without AllRegions lists only those; the status is checked as well, since
/// an emulator may list more). Names are checked before they are used: they
/// become endpoints and map keys.
pub fn enabled<'a>(home: &'a str, opts: &'a crate::options::Options) -> crate::error::Task<'a, Vec<String>> {
    crate::error::task(list_enabled(home, opts))
}

async fn list_enabled(home: &str, opts: &crate::options::Options) -> Result<Vec<String>> {
    let clients = crate::clients::Clients::load(home, opts).await;
    let out = clients
        .ec2(home)
        .describe_regions()
        .send()
        .await
        .with_context(|| format!("DescribeRegions in {home} (for --regions all)"))?;
    let mut names = Vec::new();
    for r in out.regions() {
        let usable = matches!(r.opt_in_status(), None | Some("opt-in-not-required") | Some("opted-in"));
        let Some(name) = r.region_name() else { continue };
        if !is_region_name(name) {
            bail!("DescribeRegions returned {:?}, which is not a region name", name.escape_debug().to_string());
        }
        if usable {
            names.push(name.to_string());
        }
    }
    names.sort();
    names.dedup();
    if !names.iter().any(|n| n == home) {
        bail!("--home-region {home} is not among the account's enabled regions ({})", names.join(", "));
    }
    Ok(names)
}

/// A region name as AWS spells them: `us-east-1`, `ap-southeast-4`.
pub fn is_region_name(r: &str) -> bool {
    !r.is_empty() && r.len() <= 32 && r.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}
