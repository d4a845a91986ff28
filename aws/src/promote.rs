//! `imgd promote`: move an SSM release channel to a build that exists in
//! every listed region: a one-command rollback (or roll forward). Observe
//! (the build's image and the parameter in each region), plan (pure: refused
//! as a whole if any region lacks the image), apply only when asked.

use crate::{ami, clients::Clients, options::Counters, options::Options, output::Row};
use anyhow::Result;
use std::collections::BTreeMap;

pub struct Request {
    /// `imgd-<profile>-<hash12>`: how every region names the build's image.
    pub image_name: String,
    pub parameter: String,
    pub regions: Vec<String>,
}

/// What one region has.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Seen {
    /// The build's image there, if it exists and is available.
    pub image: Option<String>,
    /// Where the parameter points now.
    pub parameter: Option<String>,
}

/// The channel moves in these regions (region, from, to); the others point there already.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub moves: Vec<(String, Option<String>, String)>,
}

impl Plan {
    pub fn rows(&self, parameter: &str) -> Vec<Row> {
        let rows = self.moves.iter().map(|(r, from, to)| {
            Row::new("publish", r, &format!("SSM {parameter}: {} -> {to}", from.as_deref().unwrap_or("(none)")))
        });
        rows.collect()
    }
}

/// The moves, or the regions that lack the build (then nothing moves anywhere).
pub fn plan(seen: &BTreeMap<String, Seen>, regions: &[String]) -> Result<Plan, Vec<String>> {
    let missing: Vec<String> =
        regions.iter().filter(|r| seen.get(*r).is_none_or(|s| s.image.is_none())).cloned().collect();
    if !missing.is_empty() {
        return Err(missing);
    }
    let moves = regions
        .iter()
        .filter_map(|r| {
            let s = seen.get(r)?;
            let to = s.image.clone()?;
            (s.parameter.as_deref() != Some(to.as_str())).then(|| (r.clone(), s.parameter.clone(), to))
        })
        .collect();
    Ok(Plan { moves })
}

pub struct Outcome {
    pub plan: Plan,
    pub applied: bool,
    pub mutating_calls: u64,
}

/// Observe every region, plan, and with `apply`, point the channel.
pub fn run<'a>(req: &'a Request, opts: &'a Options, apply: bool) -> crate::error::Task<'a, Outcome> {
    crate::error::task(observe_plan_apply(req, opts, apply))
}

async fn observe_plan_apply(req: &Request, opts: &Options, apply: bool) -> Result<Outcome> {
    let home = req.regions.first().cloned().unwrap_or_default();
    let clients = Clients::load(&home, opts).await;
    // Every region is looked at at once: `--regions all` is some 17 regions.
    let mut looks = tokio::task::JoinSet::new();
    for r in &req.regions {
        let (ec2, ssm, r) = (clients.ec2(r), clients.ssm(r), r.clone());
        let (name, parameter) = (req.image_name.clone(), req.parameter.clone());
        looks.spawn(async move {
            let image = ami::find(&ec2, &name).await?.filter(|f| f.state == "available").map(|f| f.id);
            let parameter = crate::ssm::get(&ssm, &parameter).await?;
            anyhow::Ok((r, Seen { image, parameter }))
        });
    }
    let mut seen = BTreeMap::new();
    while let Some(look) = looks.join_next().await {
        let (r, s) = look??;
        seen.insert(r, s);
    }
    let plan = plan(&seen, &req.regions).map_err(|missing| {
        anyhow::anyhow!(
            "{} is not available in {}: nothing changed (sync it there first)",
            req.image_name,
            missing.join(", ")
        )
    })?;
    let counters = Counters::default();
    if apply {
        for (r, _, to) in &plan.moves {
            crate::ssm::put(&clients.ssm(r), &req.parameter, to, &counters).await?;
        }
    }
    Ok(Outcome { plan, applied: apply, mutating_calls: counters.get(&counters.mutating_calls) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn regions() -> Vec<String> {
        vec!["us-east-1".into(), "eu-west-1".into()]
    }

    #[test]
    fn a_region_without_the_build_refuses_the_whole_move() {
        let seen = BTreeMap::from([
            ("us-east-1".to_string(), Seen { image: Some("ami-1".into()), parameter: Some("ami-9".into()) }),
            ("eu-west-1".to_string(), Seen { image: None, parameter: Some("ami-8".into()) }),
        ]);
        assert_eq!(plan(&seen, &regions()), Err(vec!["eu-west-1".to_string()]));
        assert_eq!(plan(&BTreeMap::new(), &regions()), Err(regions()));
    }

    #[test]
    fn only_regions_pointing_elsewhere_move() {
        let seen = BTreeMap::from([
            ("us-east-1".to_string(), Seen { image: Some("ami-1".into()), parameter: Some("ami-1".into()) }),
            ("eu-west-1".to_string(), Seen { image: Some("ami-2".into()), parameter: None }),
        ]);
        let p = plan(&seen, &regions()).unwrap();
        assert_eq!(p.moves, vec![("eu-west-1".to_string(), None, "ami-2".to_string())]);
    }
}
