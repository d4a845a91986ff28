//! The prune plan: a pure function of what exists ([`Observed`]) and the
//! retention the user asked for ([`super::Request`]).
//!
//! - Builds with AMIs: the newest `keep` of each profile (by `imgd:built-at`,
//!   over every listed region) stay, and so does every build with an AMI
//!   something still launches from (an instance, a launch template's default
//!   or latest version); the others' images are deregistered,
//!   their snapshots deleted (unless a kept image uses one), and their S3
//!   entries deleted unless the local store holds them.
//! - S3 entries no AMI or snapshot references (the build cache, iPXE-only
//!   syncs) are not published for AMIs, so AMI retention never touches them.
//!   They have their own retention, only when asked for: the newest
//!   `cache.keep` per profile, and none older than `cache.max_age`.
//! - Objects are deleted only when they carry imgd's metadata; multipart
//!   uploads older than a day are aborted.

use super::request::Request;
use crate::output::Row;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};

/// An image or snapshot carrying imgd's (checked) tags.
pub use crate::model::Tagged;

#[derive(Debug, Clone, Default)]
pub struct Observed {
    pub regions: BTreeMap<String, Region>,
    /// Entry folder (`<hash32>-<profile>`, checked) -> its objects.
    pub entries: BTreeMap<String, S3Entry>,
    /// Multipart uploads under the prefix.
    pub uploads: Vec<Upload>,
    /// Object key -> whether it carries imgd's `imgd-digest` metadata (or the
    /// `imgd-sha256` of objects older imgd versions uploaded); looked
    /// up only for the objects the plan would delete.
    pub marks: BTreeMap<String, bool>,
}

#[derive(Debug, Clone, Default)]
pub struct Region {
    pub images: Vec<Tagged>,
    pub snapshots: Vec<Tagged>,
    /// Image id -> what launches from it here (instances, launch templates).
    pub in_use: BTreeMap<String, Vec<String>>,
}

#[derive(Debug, Clone, Default)]
pub struct S3Entry {
    pub keys: Vec<String>,
    /// The newest object's LastModified (Unix seconds).
    pub modified: u64,
}

#[derive(Debug, Clone)]
pub struct Upload {
    pub key: String,
    pub id: String,
    /// Unix seconds.
    pub initiated: u64,
}

#[derive(Debug, Serialize, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Build {
    pub profile: String,
    pub built_at: String,
    pub hash: String,
    /// Why it stays: among the newest `keep`, and/or what launches from its AMIs.
    pub why: Vec<String>,
}

/// Why an object goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    /// Its build's AMIs are pruned.
    Ami,
    /// A cache entry beyond the newest `cache.keep` of its profile.
    CacheCount,
    /// A cache entry older than `cache.max_age`.
    CacheAge,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    AbortUpload { key: String, id: String },
    Deregister { region: String, image: Tagged },
    DeleteSnapshot { region: String, snapshot: Tagged },
    DeleteObject { key: String, why: Why },
}

#[derive(Debug, Clone, Default)]
pub struct Plan {
    pub kept: Vec<Build>,
    pub steps: Vec<Step>,
    /// Objects the plan would delete but that lack imgd's metadata: left alone.
    pub foreign: Vec<String>,
}

/// Uploads younger than this may belong to a sync still running, or be resumed.
pub const STALE_UPLOAD_SECS: u64 = 86_400;

impl Plan {
    pub fn rows(&self, bucket: &str) -> Vec<Row> {
        let s3 = format!("s3://{bucket}");
        self.steps
            .iter()
            .map(|s| match s {
                Step::AbortUpload { key, .. } => Row::new("abort-upload", &s3, key),
                Step::Deregister { region, image: i } => Row::new(
                    "deregister",
                    region,
                    &format!("{} {} {} (built {})", i.id, i.profile, &i.hash[..12], i.built_at),
                ),
                Step::DeleteSnapshot { region, snapshot: s } => {
                    let failed = if s.failed { " (state error: an upload that never finished)" } else { "" };
                    Row::new("delete-snapshot", region, &format!("{} {} {}{failed}", s.id, s.profile, &s.hash[..12]))
                }
                Step::DeleteObject { key, why } => {
                    let what = match why {
                        Why::Ami => key.clone(),
                        Why::CacheCount => format!("{key} (cache: beyond the newest of its profile)"),
                        Why::CacheAge => format!("{key} (cache: older than the limit)"),
                    };
                    Row::new("delete-object", &s3, &what)
                }
            })
            .collect()
    }
}

/// Which builds stay, and where.
struct Keep {
    builds: Vec<Build>,
    /// Hashes kept in every region (all kept builds; with deployments, those
    /// something launches from).
    everywhere: BTreeSet<String>,
    /// With deployments: region -> the hashes a deployment keeps there.
    per_region: BTreeMap<String, BTreeSet<String>>,
}

impl Keep {
    fn keeps(&self, region: &str, hash: &str) -> bool {
        self.everywhere.contains(hash) || self.per_region.get(region).is_some_and(|h| h.contains(hash))
    }

    /// Kept in some region (its S3 entry stays), by the 32-digit name hash.
    fn anywhere(&self, hash32: &str) -> bool {
        self.builds.iter().any(|b| b.hash.starts_with(hash32))
    }
}

fn kept(seen: &Observed, req: &Request) -> Keep {
    if req.deployments.is_empty() {
        let builds = kept_builds(seen, req, req.keep.max(1));
        let everywhere = builds.iter().map(|b| b.hash.clone()).collect();
        return Keep { builds, everywhere, per_region: BTreeMap::new() };
    }
    let mut builds = kept_builds(seen, req, 0);
    // In use (something launches from it): kept everywhere, as without deployments.
    builds.retain(|b| !b.why.is_empty());
    let everywhere: BTreeSet<String> = builds.iter().map(|b| b.hash.clone()).collect();
    let mut per_region: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let all = builds_by_profile(seen, req);
    for d in &req.deployments {
        let mut mine: Vec<(String, String)> =
            vec![(d.current.clone(), format!("deployment {}: its current build", d.name))];
        // Its history: the other builds synced for it (tagged with its name),
        // not every build of its profile another deployment may have used.
        let others = all.get(&d.profile).into_iter().flatten().filter(|b| b.hash != d.current);
        let others = others.filter(|b| synced_for(seen, &b.hash, &d.name));
        for b in others.take(req.keep.max(1) - 1) {
            mine.push((b.hash.clone(), format!("deployment {}: among its newest {}", d.name, req.keep.max(1))));
        }
        for (hash, why) in mine {
            for r in &d.regions {
                per_region.entry(r.clone()).or_default().insert(hash.clone());
            }
            let known = all.get(&d.profile).into_iter().flatten().find(|b| b.hash == hash);
            let Some(known) = known else { continue }; // not synced anywhere yet
            match builds.iter_mut().find(|b| b.hash == hash) {
                Some(b) => b.why.push(why),
                None => builds.push(Build { why: vec![why], ..known.clone() }),
            }
        }
    }
    builds.sort();
    Keep { builds, everywhere, per_region }
}

/// Whether an image or snapshot of build `hash` carries deployment `name`'s tag.
fn synced_for(seen: &Observed, hash: &str, name: &str) -> bool {
    let all = seen.regions.values().flat_map(|r| r.images.iter().chain(&r.snapshots));
    all.filter(|t| t.hash == hash).any(|t| t.deployments.contains(name))
}

/// Every build with images or snapshots in a listed region, by profile,
/// newest first (by `imgd:built-at`).
fn builds_by_profile(seen: &Observed, req: &Request) -> BTreeMap<String, Vec<Build>> {
    let mut builds: BTreeMap<(String, String), String> = BTreeMap::new();
    for t in seen.regions.values().flat_map(|r| r.images.iter().chain(&r.snapshots)) {
        if !req.wants(&t.profile) {
            continue;
        }
        let at = builds.entry((t.profile.clone(), t.hash.clone())).or_default();
        if t.built_at > *at {
            *at = t.built_at.clone();
        }
    }
    let mut by_profile: BTreeMap<String, Vec<Build>> = BTreeMap::new();
    for ((profile, hash), built_at) in builds {
        by_profile.entry(profile.clone()).or_default().push(Build { profile, built_at, hash, why: Vec::new() });
    }
    for list in by_profile.values_mut() {
        list.sort_by(|x, y| (&y.built_at, &y.hash).cmp(&(&x.built_at, &x.hash)));
    }
    by_profile
}

/// The builds (profile, hash) to keep: the newest `keep` per profile among
/// those with images or snapshots in any region, and every build something
/// launches from.
fn kept_builds(seen: &Observed, req: &Request, keep: usize) -> Vec<Build> {
    let mut by_profile = builds_by_profile(seen, req);
    // What launches from each build's AMIs, over every region.
    let mut used: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for (region, r) in &seen.regions {
        for i in &r.images {
            for why in r.in_use.get(&i.id).into_iter().flatten() {
                used.entry(i.hash.as_str()).or_default().push(format!("{} in {region}: {why}", i.id));
            }
        }
    }
    // keep 0 (with deployments): only what launches; the deployments add theirs.
    let mut kept = Vec::new();
    for list in by_profile.values_mut() {
        for (n, b) in list.iter_mut().enumerate() {
            if n < keep {
                b.why.push(format!("among the newest {keep} of {}", b.profile));
            }
            b.why.extend(used.get(b.hash.as_str()).into_iter().flatten().cloned());
            if !b.why.is_empty() {
                kept.push(b.clone());
            }
        }
    }
    kept.sort();
    kept
}

/// S3 entries to delete and why (before checking that their objects are imgd's).
pub fn doomed_entries(seen: &Observed, req: &Request) -> BTreeMap<String, Why> {
    let keep = kept(seen, req);
    let published: BTreeSet<&str> = seen
        .regions
        .values()
        .flat_map(|r| r.images.iter().chain(&r.snapshots))
        .map(|t| &t.hash[..crate::model::NAME_HASH_LEN])
        .collect();
    let mut doomed = BTreeMap::new();
    let mut cache: BTreeMap<&str, Vec<(&str, u64)>> = BTreeMap::new();
    for (name, e) in &seen.entries {
        let Some((hash32, profile)) = crate::model::parse_entry_name(name) else { continue };
        if !req.wants(profile) || req.local.contains(name) {
            continue;
        }
        if published.contains(hash32) {
            if !keep.anywhere(hash32) {
                doomed.insert(name.clone(), Why::Ami);
            }
        } else {
            cache.entry(profile).or_default().push((name, e.modified));
        }
    }
    for list in cache.values_mut() {
        list.sort_by(|a, b| (b.1, b.0).cmp(&(a.1, a.0))); // newest first
        for (i, (name, modified)) in list.iter().enumerate() {
            let why = if req.cache.keep.is_some_and(|k| i >= k) {
                Some(Why::CacheCount)
            } else if req.cache.max_age.is_some_and(|age| req.now.saturating_sub(*modified) > age.as_secs()) {
                Some(Why::CacheAge)
            } else {
                None
            };
            if let Some(w) = why {
                doomed.insert(name.to_string(), w);
            }
        }
    }
    doomed
}

pub fn plan(seen: &Observed, req: &Request) -> Plan {
    let keep = kept(seen, req);
    let mut steps = Vec::new();
    let mut foreign = Vec::new();

    for u in &seen.uploads {
        let entry = u.key.rsplit('/').nth(1).unwrap_or_default();
        let ours = crate::model::parse_entry_name(entry).is_some_and(|(_, p)| req.wants(p));
        if ours && req.now.saturating_sub(u.initiated) > STALE_UPLOAD_SECS {
            steps.push(Step::AbortUpload { key: u.key.clone(), id: u.id.clone() });
        }
    }
    for (region, r) in &seen.regions {
        // Snapshots a remaining image still uses stay (AWS would refuse anyway).
        let in_use: BTreeSet<&str> = r
            .images
            .iter()
            .filter(|i| keep.keeps(region, &i.hash) || !req.wants(&i.profile))
            .flat_map(|i| i.snapshots.iter().map(String::as_str))
            .collect();
        for i in r.images.iter().filter(|i| req.wants(&i.profile) && !keep.keeps(region, &i.hash)) {
            steps.push(Step::Deregister { region: region.clone(), image: i.clone() });
        }
        // A failed snapshot goes even when its build is kept: nothing can use it.
        let doomed = |s: &&Tagged| req.wants(&s.profile) && (s.failed || !keep.keeps(region, &s.hash));
        for s in r.snapshots.iter().filter(doomed) {
            if !in_use.contains(s.id.as_str()) {
                steps.push(Step::DeleteSnapshot { region: region.clone(), snapshot: s.clone() });
            }
        }
    }
    for (name, why) in doomed_entries(seen, req) {
        let Some(e) = seen.entries.get(&name) else { continue };
        // The manifest first: an entry without one is no longer complete.
        let mut keys: Vec<&String> = e.keys.iter().collect();
        keys.sort_by_key(|k| (!k.ends_with("/manifest.json"), k.as_str()));
        for key in keys {
            if seen.marks.get(key).copied().unwrap_or(false) {
                steps.push(Step::DeleteObject { key: key.clone(), why });
            } else {
                foreign.push(key.clone());
            }
        }
    }
    Plan { kept: keep.builds, steps, foreign }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::s3::Location;

    const DAY: u64 = 86_400;

    fn hash(n: u8) -> String {
        format!("{n:02x}").repeat(32)
    }

    fn entry(n: u8, profile: &str) -> String {
        format!("{}-{profile}", &hash(n)[..32])
    }

    fn tagged(id: &str, n: u8, profile: &str, day: u32, snapshots: &[&str]) -> Tagged {
        Tagged {
            id: id.into(),
            profile: profile.into(),
            hash: hash(n),
            built_at: format!("2026-01-{day:02}T00:00:00Z"),
            deployments: Default::default(),
            snapshots: snapshots.iter().map(|s| s.to_string()).collect(),
            failed: false,
        }
    }

    fn request(keep: usize) -> Request {
        Request {
            at: Location::new("imgs", "imgd"),
            regions: vec!["us-east-1".into()],
            profile: None,
            keep,
            cache: super::super::CacheRetention::default(),
            local: BTreeSet::new(),
            now: 100 * DAY,
            deployments: Vec::new(),
        }
    }

    fn s3(seen: &mut Observed, n: u8, profile: &str, modified: u64) {
        let name = entry(n, profile);
        let keys: Vec<String> = ["disk.raw", "manifest.json"].iter().map(|f| format!("imgd/{name}/{f}")).collect();
        for k in &keys {
            seen.marks.insert(k.clone(), true);
        }
        seen.entries.insert(name, S3Entry { keys, modified });
    }

    /// Three builds of hello with AMIs, one of web; hello's oldest in S3 too.
    fn world() -> Observed {
        let mut seen = Observed::default();
        let r = Region {
            images: vec![
                tagged("ami-1", 1, "hello", 1, &["snap-1"]),
                tagged("ami-2", 2, "hello", 2, &["snap-2"]),
                tagged("ami-3", 3, "hello", 3, &["snap-3"]),
                tagged("ami-9", 9, "web", 1, &["snap-9"]),
            ],
            snapshots: vec![
                tagged("snap-1", 1, "hello", 1, &[]),
                tagged("snap-2", 2, "hello", 2, &[]),
                tagged("snap-3", 3, "hello", 3, &[]),
                tagged("snap-9", 9, "web", 1, &[]),
            ],
            in_use: BTreeMap::new(),
        };
        seen.regions.insert("us-east-1".into(), r);
        for n in [1, 2, 3] {
            s3(&mut seen, n, "hello", u64::from(n) * DAY);
        }
        s3(&mut seen, 9, "web", DAY);
        seen
    }

    fn rows(p: &Plan) -> Vec<String> {
        p.rows("imgs").iter().map(|r| format!("{} {} {}", r.action, r.place, r.what)).collect()
    }

    #[test]
    fn keeps_the_newest_builds_per_profile_and_their_snapshots() {
        let p = plan(&world(), &request(1));
        assert_eq!(
            p.kept.iter().map(|b| (b.profile.as_str(), &b.hash[..2])).collect::<Vec<_>>(),
            [("hello", "03"), ("web", "09")]
        );
        let r = rows(&p);
        assert!(
            r.contains(&format!("deregister us-east-1 ami-1 hello {} (built 2026-01-01T00:00:00Z)", &hash(1)[..12]))
        );
        assert!(r.iter().any(|s| s.starts_with("deregister us-east-1 ami-2")));
        assert!(!r.iter().any(|s| s.contains("ami-3") || s.contains("ami-9") || s.contains("snap-3")));
        assert!(r.iter().any(|s| s.starts_with("delete-snapshot us-east-1 snap-1")));
        // The S3 copies of the pruned builds go, manifest first.
        let objects: Vec<&String> = r.iter().filter(|s| s.starts_with("delete-object")).collect();
        assert_eq!(objects.len(), 4, "{objects:?}");
        assert!(objects[0].ends_with(&format!("{}/manifest.json", entry(1, "hello"))), "{objects:?}");
    }

    #[test]
    fn with_deployments_a_build_stays_only_where_a_deployment_keeps_it() {
        use super::super::DeploymentKeep;
        // hello 1 (old) and 2 (current), both synced for `load`, in two
        // regions; hello 3, newer but synced for `canary` only; web 9.
        let synced_for = |t: Tagged, d: &str| Tagged { deployments: [d.to_string()].into(), ..t };
        let mut seen = Observed::default();
        for (region, ids) in [("us-east-1", ["ami-1", "ami-2"]), ("eu-west-1", ["ami-11", "ami-12"])] {
            let r = seen.regions.entry(region.into()).or_default();
            r.images.push(synced_for(tagged(ids[0], 1, "hello", 1, &[]), "load"));
            r.images.push(synced_for(tagged(ids[1], 2, "hello", 2, &[]), "load"));
        }
        let east = seen.regions.get_mut("us-east-1").unwrap();
        east.images.push(synced_for(tagged("ami-3", 3, "hello", 3, &[]), "canary"));
        east.images.push(tagged("ami-9", 9, "web", 3, &[]));
        let mut req = request(1);
        req.regions = vec!["us-east-1".into(), "eu-west-1".into()];
        req.deployments = vec![DeploymentKeep {
            name: "load".into(),
            profile: "hello".into(),
            current: hash(2),
            regions: vec!["us-east-1".into()],
        }];
        let gone = |p: &Plan| -> Vec<String> {
            let mut v: Vec<String> = p
                .steps
                .iter()
                .filter_map(|s| match s {
                    Step::Deregister { image, .. } => Some(image.id.clone()),
                    _ => None,
                })
                .collect();
            v.sort();
            v
        };
        // keep 1: only the current build, only in the deployment's region; web
        // is no deployment's and goes.
        let p = plan(&seen, &req);
        assert_eq!(gone(&p), ["ami-1", "ami-11", "ami-12", "ami-3", "ami-9"]);
        assert_eq!(p.kept.len(), 1);
        assert_eq!(p.kept[0].why, ["deployment load: its current build"]);
        // keep 2: load's previous build stays too, still only in us-east-1;
        // hello 3 is newer, but it was never load's, and canary is gone.
        req.keep = 2;
        assert_eq!(gone(&plan(&seen, &req)), ["ami-11", "ami-12", "ami-3", "ami-9"]);
        // With canary in the file, its build stays in its region.
        let canary = DeploymentKeep { name: "canary".into(), current: hash(3), ..req.deployments[0].clone() };
        req.deployments.push(canary);
        assert_eq!(gone(&plan(&seen, &req)), ["ami-11", "ami-12", "ami-9"]);
        req.deployments.pop();
        // Something launching from an image keeps its build everywhere.
        req.keep = 1;
        seen.regions.get_mut("eu-west-1").unwrap().in_use.insert("ami-11".into(), vec!["instance i-1".into()]);
        assert_eq!(gone(&plan(&seen, &req)), ["ami-12", "ami-3", "ami-9"]);
    }

    #[test]
    fn the_local_store_and_foreign_objects_keep_their_copies() {
        let mut seen = world();
        seen.marks.insert(format!("imgd/{}/disk.raw", entry(1, "hello")), false);
        let mut req = request(1);
        req.local.insert(entry(2, "hello"));
        let p = plan(&seen, &req);
        let r = rows(&p);
        assert!(!r.iter().any(|s| s.contains(&entry(2, "hello"))), "{r:?}");
        assert_eq!(p.foreign, [format!("imgd/{}/disk.raw", entry(1, "hello"))]);
        assert!(r.contains(&format!("delete-object s3://imgs imgd/{}/manifest.json", entry(1, "hello"))));
    }

    #[test]
    fn cache_entries_are_never_pruned_with_amis_only_by_their_own_retention() {
        let mut seen = world();
        // Cache-only entries: no image or snapshot has their hash.
        for (n, day) in [(20, 10), (21, 50), (22, 90)] {
            s3(&mut seen, n, "hello", day * DAY);
        }
        let p = plan(&seen, &request(1));
        for n in [20, 21, 22] {
            assert!(!rows(&p).iter().any(|s| s.contains(&entry(n, "hello"))));
        }

        let mut req = request(1);
        req.cache.keep = Some(2);
        let doomed = doomed_entries(&seen, &req);
        assert_eq!(doomed.get(&entry(20, "hello")), Some(&Why::CacheCount));
        assert!(!doomed.contains_key(&entry(21, "hello")) && !doomed.contains_key(&entry(22, "hello")));

        let mut req = request(1);
        req.cache.max_age = Some(std::time::Duration::from_secs(30 * DAY));
        let doomed = doomed_entries(&seen, &req);
        assert_eq!(doomed.get(&entry(20, "hello")), Some(&Why::CacheAge));
        assert_eq!(doomed.get(&entry(21, "hello")), Some(&Why::CacheAge));
        assert!(!doomed.contains_key(&entry(22, "hello")));
    }

    #[test]
    fn a_failed_snapshot_goes_even_when_its_build_is_kept() {
        let mut seen = world();
        let r = seen.regions.get_mut("us-east-1").unwrap();
        let mut failed = tagged("snap-3x", 3, "hello", 3, &[]);
        failed.failed = true;
        r.snapshots.push(failed);
        r.snapshots.push(tagged("snap-3y", 3, "hello", 3, &[])); // completed, unused: its build is kept
        let mut web = tagged("snap-9x", 9, "web", 1, &[]);
        web.failed = true;
        r.snapshots.push(web);
        let mut req = request(3);
        req.profile = Some("hello".into());
        let p = plan(&seen, &req);
        let gone = rows(&p);
        assert_eq!(gone.len(), 1, "{gone:?}");
        assert!(gone[0].starts_with("delete-snapshot us-east-1 snap-3x hello") && gone[0].contains("state error"));
    }

    #[test]
    fn other_profiles_and_young_uploads_are_left_alone() {
        let mut seen = world();
        seen.uploads = vec![
            Upload { key: format!("imgd/{}/disk.raw", entry(1, "hello")), id: "old".into(), initiated: 10 * DAY },
            Upload {
                key: format!("imgd/{}/disk.raw", entry(2, "hello")),
                id: "young".into(),
                initiated: 100 * DAY - 60,
            },
            Upload { key: "imgd/backups/db.tar".into(), id: "foreign".into(), initiated: 0 },
        ];
        let mut req = request(1);
        req.profile = Some("web".into());
        let p = plan(&seen, &req);
        assert!(p.steps.is_empty(), "{:?}", rows(&p));
        req.profile = None;
        let p = plan(&seen, &req);
        let aborts: Vec<&Step> = p.steps.iter().filter(|s| matches!(s, Step::AbortUpload { .. })).collect();
        assert_eq!(
            aborts,
            [&Step::AbortUpload { key: format!("imgd/{}/disk.raw", entry(1, "hello")), id: "old".into() }]
        );
    }

    #[test]
    fn an_ami_something_launches_from_is_kept_and_the_plan_says_why() {
        let mut seen = world();
        let r = seen.regions.get_mut("us-east-1").unwrap();
        r.in_use.insert("ami-1".into(), vec!["instance i-0abc (stopped)".into()]);
        r.in_use.insert("ami-404".into(), vec!["instance i-0def (running)".into()]);
        let p = plan(&seen, &request(1));
        let gone: Vec<&str> = p
            .steps
            .iter()
            .filter_map(|s| match s {
                Step::Deregister { image, .. } => Some(image.id.as_str()),
                Step::DeleteSnapshot { snapshot, .. } => Some(snapshot.id.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(gone, ["ami-2", "snap-2"], "only the unused, not-newest build goes");
        let old = p.kept.iter().find(|b| b.hash == hash(1)).expect("the used build is kept");
        assert_eq!(old.why, ["ami-1 in us-east-1: instance i-0abc (stopped)"]);
        let newest = p.kept.iter().find(|b| b.hash == hash(3)).unwrap();
        assert_eq!(newest.why, ["among the newest 1 of hello"]);
        // Its S3 entry stays with it.
        let key = format!("imgd/{}/disk.raw", entry(1, "hello"));
        assert!(!p.steps.contains(&Step::DeleteObject { key, why: Why::Ami }));
    }
}
