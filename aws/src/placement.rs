//! What a region runs for a deployment (`imgd sync --deployments --check`):
//! whether the build's AMI is there, which build the newest imgd AMI of the
//! profile is otherwise, and whether the release channel points at it.
//! Read-only: it never changes anything.

use crate::{ami, clients::Clients, options::Options, ssm};
use anyhow::Context;

/// A build in one region, to look for.
#[derive(Debug, Clone)]
pub struct Wanted {
    pub region: String,
    pub profile: String,
    /// The build's input hash, or the start of it its entry name holds (the
    /// AMI's name carries its first 12 digits).
    pub hash: String,
    /// An SSM release channel to compare with the build's AMI.
    pub ssm_parameter: Option<String>,
}

/// What the region has for a [`Wanted`] build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// The build's AMI, in any state.
    pub ami: Option<String>,
    /// The build's AMI exists and is available.
    pub current: bool,
    /// When not current: the newest imgd AMI of the profile there, and its
    /// entry name (`<hash32>-<profile>`).
    pub newest: Option<(String, String)>,
    /// Whether the channel names the build's AMI (None: no channel asked).
    pub channel: Option<bool>,
}

/// Looks up each wanted build, in order.
pub fn observe<'a>(home: &'a str, wanted: &'a [Wanted], opts: &'a Options) -> crate::error::Task<'a, Vec<Found>> {
    crate::error::task(observe_all(home, wanted, opts))
}

async fn observe_all(home: &str, wanted: &[Wanted], opts: &Options) -> anyhow::Result<Vec<Found>> {
    let clients = Clients::load(home, opts).await;
    let mut out = Vec::with_capacity(wanted.len());
    for w in wanted {
        let name = crate::model::image_name(&w.profile, &w.hash);
        let ec2 = clients.ec2(&w.region);
        let found = ami::find(&ec2, &name).await.with_context(|| format!("{}: {name}", w.region))?;
        let ami = found.as_ref().map(|f| f.id.clone());
        let current = found.is_some_and(|f| f.state == "available");
        let newest = if current {
            None
        } else {
            let all = ami::list_images(&ec2).await?;
            let newest = all.into_iter().filter(|t| t.profile == w.profile).max_by(|x, y| x.built_at.cmp(&y.built_at));
            newest.map(|t| {
                (t.id, format!("{}-{}", t.hash.get(..crate::model::NAME_HASH_LEN).unwrap_or(&t.hash), t.profile))
            })
        };
        let channel = match &w.ssm_parameter {
            Some(p) => Some(ssm::get(&clients.ssm(&w.region), p).await?.is_some_and(|v| Some(&v) == ami.as_ref())),
            None => None,
        };
        out.push(Found { ami, current, newest, channel });
    }
    Ok(out)
}
