//! The sync plan: a pure function of what exists ([`Observed`]) and what is
//! wanted ([`super::Request`]). No AWS calls here, so every case is a unit test.

use super::request::{Method, Request};
use crate::model::{LeftSnapshot, LeftState, Principal};
use crate::output::Row;
use std::collections::{BTreeMap, BTreeSet};

/// What exists, as [`super::observe`] found it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    /// Per file of the entry, in order: an object with the same SHA-256 is there.
    pub uploaded: Vec<bool>,
    /// Snapshots in the home region tagged with this build's hash, oldest
    /// first: what runs that died before registering left. Looked for only
    /// when the home region has no image.
    pub left: Vec<LeftSnapshot>,
    /// Region -> the image named for this build there, if any.
    pub images: BTreeMap<String, Option<ImageState>>,
    /// Region -> the SSM parameter's value there (asked only with one).
    pub parameters: BTreeMap<String, Option<String>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageState {
    pub id: String,
    pub snapshot: Option<String>,
    /// It carries every imgd tag.
    pub tagged: bool,
    /// Who may launch it (looked up only when sharing is asked for).
    pub shared_with: BTreeSet<Principal>,
    /// Who may create volumes from its snapshot (accounts and public only).
    pub snapshot_shared_with: BTreeSet<Principal>,
    /// Its deprecation time (Unix seconds), if one is set.
    pub deprecation: Option<i64>,
}

/// The image a step acts on: one that exists, or the one the plan makes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Image {
    Existing(String),
    New,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// The entry's `file`-th file to `key`.
    Upload {
        file: usize,
        key: String,
        size: u64,
    },
    /// A snapshot of the disk in the home region; `resume`: the pending
    /// snapshot an interrupted EBS direct upload left, to finish.
    Snapshot {
        region: String,
        method: Method,
        resume: Option<String>,
    },
    /// A snapshot a run left that can never complete (EBS cancelled it).
    DeleteSnapshot {
        region: String,
        id: String,
    },
    /// The image, from `snapshot` (a completed one a run left) or, when
    /// None, from the one the plan's Snapshot step makes.
    Register {
        region: String,
        name: String,
        snapshot: Option<String>,
    },
    Copy {
        region: String,
        name: String,
        from: String,
    },
    /// imgd's tags on the image and its snapshot (CopyImage copies none).
    Tag {
        region: String,
        image: Image,
    },
    Share {
        region: String,
        image: Image,
        principal: Principal,
    },
    /// Create-volume permission on the image's snapshot, so a shared
    /// (encrypted) image can be copied and its volumes made elsewhere.
    ShareSnapshot {
        region: String,
        image: Image,
        principal: Principal,
    },
    /// The deprecation time, on this copy (CopyImage copies none).
    Deprecate {
        region: String,
        image: Image,
        at: i64,
    },
    /// The SSM parameter pointed at the image: last, once it is available,
    /// tagged and shared (checked again just before).
    Publish {
        region: String,
        image: Image,
        parameter: String,
    },
}

impl Step {
    /// The region a step happens in (None for S3).
    pub fn region(&self) -> Option<&str> {
        match self {
            Step::Upload { .. } => None,
            Step::Snapshot { region, .. }
            | Step::DeleteSnapshot { region, .. }
            | Step::Register { region, .. }
            | Step::Copy { region, .. }
            | Step::Tag { region, .. }
            | Step::Share { region, .. }
            | Step::ShareSnapshot { region, .. }
            | Step::Deprecate { region, .. }
            | Step::Publish { region, .. } => Some(region),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub steps: Vec<Step>,
}

impl Plan {
    /// One row per step, for people (`--dry-run`) and scripts (`--json`).
    pub fn rows(&self, bucket: &str) -> Vec<Row> {
        let image = |i: &Image| match i {
            Image::Existing(id) => id.clone(),
            Image::New => "(new)".to_string(),
        };
        self.steps
            .iter()
            .map(|s| match s {
                Step::Upload { key, size, .. } => {
                    Row::new("upload", &format!("s3://{bucket}"), &format!("{key} ({size} bytes)"))
                }
                Step::Snapshot { region, method, resume } => {
                    let how = match (method, resume) {
                        (Method::Import, _) => "import the VHD from S3".to_string(),
                        (Method::EbsDirect, None) => "snapshot the raw disk (EBS direct)".to_string(),
                        (Method::EbsDirect, Some(id)) => {
                            format!("resume {id}, an interrupted EBS direct upload (blocks it has are not sent again)")
                        }
                    };
                    Row::new("snapshot", region, &how)
                }
                Step::DeleteSnapshot { region, id } => {
                    Row::new("delete-snapshot", region, &format!("{id} (an interrupted upload EBS cancelled)"))
                }
                Step::Register { region, name, snapshot: None } => Row::new("register", region, name),
                Step::Register { region, name, snapshot: Some(id) } => {
                    Row::new("register", region, &format!("{name} from {id} (a finished upload a run left)"))
                }
                Step::Copy { region, name, from } => Row::new("copy", region, &format!("{name} from {from}")),
                Step::Tag { region, image: i } => {
                    Row::new("tag", region, &format!("{} with imgd:profile, imgd:hash, imgd:built-at", image(i)))
                }
                Step::Share { region, image: i, principal } => {
                    Row::new("share", region, &format!("{} with {}", image(i), principal.label()))
                }
                Step::ShareSnapshot { region, image: i, principal } => Row::new(
                    "share-snapshot",
                    region,
                    &format!("the snapshot of {} with {} (create volumes)", image(i), principal.label()),
                ),
                Step::Publish { region, image: i, parameter } => {
                    Row::new("publish", region, &format!("SSM {parameter} = {}", image(i)))
                }
                Step::Deprecate { region, image: i, at } => Row::new(
                    "deprecate",
                    region,
                    &format!("{} at {}", image(i), crate::model::iso8601(u64::try_from(*at).unwrap_or(0))),
                ),
            })
            .collect()
    }
}

/// Every step that makes what `req` asks for out of what `seen` found, in the
/// order they must happen: uploads, then the home region, then the others.
pub fn plan(seen: &Observed, req: &Request) -> Plan {
    let mut steps = Vec::new();
    for (i, f) in req.entry.files.iter().enumerate() {
        if !seen.uploaded.get(i).copied().unwrap_or(false) {
            steps.push(Step::Upload { file: i, key: req.to.key(&req.entry.name, &f.name), size: f.size });
        }
    }
    let name = req.image_name();
    for region in req.regions() {
        let region = region.to_string();
        match seen.images.get(&region).and_then(Option::as_ref) {
            Some(img) => {
                let existing = Image::Existing(img.id.clone());
                if !img.tagged {
                    steps.push(Step::Tag { region: region.clone(), image: existing.clone() });
                }
                settle(&mut steps, &region, &existing, Some(img), req);
                if let Some(name) = &req.ssm_parameter {
                    if seen.parameters.get(&region).and_then(Option::as_deref) != Some(img.id.as_str()) {
                        steps.push(Step::Publish { region: region.clone(), image: existing, parameter: name.clone() });
                    }
                }
            }
            None => {
                if region == req.home {
                    let snapshot = left_snapshots(&mut steps, &region, &seen.left, req);
                    steps.push(Step::Register { region: region.clone(), name: name.clone(), snapshot });
                } else {
                    let from = req.home.clone();
                    steps.push(Step::Copy { region: region.clone(), name: name.clone(), from });
                }
                steps.push(Step::Tag { region: region.clone(), image: Image::New });
                settle(&mut steps, &region, &Image::New, None, req);
                if let Some(name) = &req.ssm_parameter {
                    steps.push(Step::Publish { region: region.clone(), image: Image::New, parameter: name.clone() });
                }
            }
        }
    }
    Plan { steps }
}

/// What to do with the snapshots earlier runs left in the home region, and
/// the completed one to register from, if any. Cancelled ones (error) are
/// deleted. A completed one is used as it is. Else the newest pending one is
/// resumed when it is an EBS direct upload with the encryption asked for
/// (EBS cancels a pending snapshot nobody writes to within its timeout, so an
/// older one is left to that and deleted by a later run); else a new snapshot.
fn left_snapshots(steps: &mut Vec<Step>, region: &str, left: &[LeftSnapshot], req: &Request) -> Option<String> {
    for s in left.iter().filter(|s| s.state == LeftState::Error) {
        steps.push(Step::DeleteSnapshot { region: region.to_string(), id: s.id.clone() });
    }
    if let Some(done) = left.iter().rev().find(|s| s.state == LeftState::Completed) {
        return Some(done.id.clone());
    }
    let fits = |s: &&LeftSnapshot| match &req.kms_key {
        Some(k) => s.encrypted && s.kms_key.as_deref() == Some(k.as_str()),
        None => true,
    };
    let resume = match req.method {
        Method::EbsDirect => left.iter().rev().filter(|s| s.state == LeftState::Pending).find(fits),
        Method::Import => None,
    };
    steps.push(Step::Snapshot { region: region.to_string(), method: req.method, resume: resume.map(|s| s.id.clone()) });
    None
}

/// Sharing and deprecation for one image: what `req` asks that `seen`
/// (None: a new image) lacks. Every copy gets them; nothing is inherited.
fn settle(steps: &mut Vec<Step>, region: &str, image: &Image, seen: Option<&ImageState>, req: &Request) {
    let region = region.to_string();
    for p in &req.share {
        if !seen.is_some_and(|s| s.shared_with.contains(p)) {
            steps.push(Step::Share { region: region.clone(), image: image.clone(), principal: p.clone() });
        }
    }
    for p in req.share.iter().filter(|p| p.shares_snapshots()) {
        if !seen.is_some_and(|s| s.snapshot_shared_with.contains(p)) {
            steps.push(Step::ShareSnapshot { region: region.clone(), image: image.clone(), principal: p.clone() });
        }
    }
    if let Some(d) = req.deprecate {
        if !d.satisfied_by(seen.and_then(|s| s.deprecation)) {
            steps.push(Step::Deprecate { region, image: image.clone(), at: d.at });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::s3::Location;
    use crate::sync::Deprecation;
    use crate::{model::Arch, model::BootMode, model::Entry, model::File, model::Machine};

    fn request(regions: &[&str], share: &[&str]) -> Request {
        let file = |n: &str| File {
            name: n.into(),
            path: n.into(),
            digest: format!("blake3:{}", "00".repeat(32)),
            size: 10,
            check: Default::default(),
        };
        let entry = Entry {
            name: format!("{}-hello", "ab".repeat(16)),
            hash: "ab".repeat(32),
            profile: "hello".into(),
            built_at: 0,
            files: vec![file("disk.raw"), file("manifest.json")],
            raw_disk: Some(file("disk.raw")),
            vhd: None,
            machine: Machine { arch: Arch::X86_64, boot: BootMode::Uefi, ena: true, sriov: false },
        };
        Request {
            entry,
            to: Location::new("imgs", "fleet"),
            ami: true,
            home: regions[0].to_string(),
            others: regions[1..].iter().map(|r| r.to_string()).collect(),
            method: Method::EbsDirect,
            share: share.iter().map(|s| Principal::Account(s.to_string())).collect(),
            deprecate: None,
            ssm_parameter: None,
            kms_key: None,
            wait: std::time::Duration::from_secs(1),
            poll: std::time::Duration::from_secs(1),
            deployments: Vec::new(),
        }
    }

    fn image(id: &str, tagged: bool, shared: &[&str]) -> Option<ImageState> {
        Some(ImageState {
            id: id.into(),
            snapshot: Some(format!("snap-{id}")),
            tagged,
            shared_with: shared.iter().map(|s| Principal::Account(s.to_string())).collect(),
            snapshot_shared_with: shared.iter().map(|s| Principal::Account(s.to_string())).collect(),
            deprecation: None,
        })
    }

    fn acct(a: &str) -> Principal {
        Principal::Account(a.into())
    }

    fn actions(p: &Plan) -> Vec<(String, String)> {
        p.rows("imgs").into_iter().map(|r| (r.action, r.place)).collect()
    }

    #[test]
    fn nothing_there_plans_everything_in_order() {
        let req = request(&["us-east-1", "eu-west-1"], &["111122223333"]);
        let p = plan(&Observed::default(), &req);
        let want = [
            ("upload", "s3://imgs"),
            ("upload", "s3://imgs"),
            ("snapshot", "us-east-1"),
            ("register", "us-east-1"),
            ("tag", "us-east-1"),
            ("share", "us-east-1"),
            ("share-snapshot", "us-east-1"),
            ("copy", "eu-west-1"),
            ("tag", "eu-west-1"),
            ("share", "eu-west-1"),
            ("share-snapshot", "eu-west-1"),
        ];
        assert_eq!(actions(&p), want.map(|(a, b)| (a.to_string(), b.to_string())));
        assert_eq!(p.steps[0], Step::Upload { file: 0, key: format!("fleet/{}/disk.raw", req.entry.name), size: 10 });
        assert!(p.steps.contains(&Step::Register {
            region: "us-east-1".into(),
            name: req.image_name(),
            snapshot: None
        }));
    }

    #[test]
    fn everything_there_plans_nothing() {
        let req = request(&["us-east-1", "eu-west-1"], &["111122223333"]);
        let seen = Observed {
            uploaded: vec![true, true],
            left: Vec::new(),
            images: [
                ("us-east-1".to_string(), image("ami-1", true, &["111122223333"])),
                ("eu-west-1".to_string(), image("ami-2", true, &["111122223333"])),
            ]
            .into(),
            parameters: Default::default(),
        };
        assert_eq!(plan(&seen, &req), Plan::default());
    }

    #[test]
    fn only_what_is_missing() {
        let req = request(&["us-east-1", "eu-west-1", "ap-south-1"], &["111122223333", "444455556666"]);
        let seen = Observed {
            uploaded: vec![true, false],
            left: Vec::new(),
            images: [
                ("us-east-1".to_string(), image("ami-1", true, &["111122223333"])),
                ("eu-west-1".to_string(), image("ami-2", false, &["111122223333", "444455556666"])),
                ("ap-south-1".to_string(), None),
            ]
            .into(),
            parameters: Default::default(),
        };
        let p = plan(&seen, &req);
        assert_eq!(
            p.steps,
            vec![
                Step::Upload { file: 1, key: format!("fleet/{}/manifest.json", req.entry.name), size: 10 },
                Step::Share {
                    region: "us-east-1".into(),
                    image: Image::Existing("ami-1".into()),
                    principal: acct("444455556666")
                },
                Step::ShareSnapshot {
                    region: "us-east-1".into(),
                    image: Image::Existing("ami-1".into()),
                    principal: acct("444455556666")
                },
                Step::Tag { region: "eu-west-1".into(), image: Image::Existing("ami-2".into()) },
                Step::Copy { region: "ap-south-1".into(), name: req.image_name(), from: "us-east-1".into() },
                Step::Tag { region: "ap-south-1".into(), image: Image::New },
                Step::Share { region: "ap-south-1".into(), image: Image::New, principal: acct("111122223333") },
                Step::Share { region: "ap-south-1".into(), image: Image::New, principal: acct("444455556666") },
                Step::ShareSnapshot { region: "ap-south-1".into(), image: Image::New, principal: acct("111122223333") },
                Step::ShareSnapshot { region: "ap-south-1".into(), image: Image::New, principal: acct("444455556666") },
            ]
        );
    }

    #[test]
    fn uploading_only_plans_no_region() {
        let mut req = request(&["us-east-1", "eu-west-1"], &["111122223333"]);
        req.ami = false;
        let p = plan(&Observed { uploaded: vec![false, true], ..Default::default() }, &req);
        assert_eq!(
            p.steps,
            vec![Step::Upload { file: 0, key: format!("fleet/{}/disk.raw", req.entry.name), size: 10 }]
        );
    }

    fn left(id: &str, state: LeftState) -> LeftSnapshot {
        LeftSnapshot { id: id.into(), state, encrypted: false, kms_key: None }
    }

    #[test]
    fn a_snapshot_left_by_a_failed_run_is_registered_not_made_again() {
        let req = request(&["us-east-1"], &[]);
        let seen = Observed {
            uploaded: vec![true, true],
            left: vec![left("snap-1", LeftState::Pending), left("snap-9", LeftState::Completed)],
            ..Default::default()
        };
        let p = plan(&seen, &req);
        assert_eq!(
            p.steps,
            vec![
                Step::Register { region: "us-east-1".into(), name: req.image_name(), snapshot: Some("snap-9".into()) },
                Step::Tag { region: "us-east-1".into(), image: Image::New },
            ]
        );
    }

    #[test]
    fn an_interrupted_upload_is_resumed_and_a_cancelled_one_deleted() {
        let req = request(&["us-east-1"], &[]);
        let snapshot = |resume: Option<&str>| Step::Snapshot {
            region: "us-east-1".into(),
            method: Method::EbsDirect,
            resume: resume.map(str::to_string),
        };
        let steps = |l: Vec<LeftSnapshot>| {
            let seen = Observed { uploaded: vec![true, true], left: l, ..Default::default() };
            plan(&seen, &req).steps.into_iter().take_while(|s| !matches!(s, Step::Register { .. })).collect::<Vec<_>>()
        };
        // The newest pending one is finished; an older one is left to EBS's timeout.
        assert_eq!(
            steps(vec![left("snap-1", LeftState::Pending), left("snap-2", LeftState::Pending)]),
            vec![snapshot(Some("snap-2"))]
        );
        // A cancelled one goes, and a new snapshot is made.
        let del = Step::DeleteSnapshot { region: "us-east-1".into(), id: "snap-3".into() };
        assert_eq!(steps(vec![left("snap-3", LeftState::Error)]), vec![del.clone(), snapshot(None)]);
        assert_eq!(
            steps(vec![left("snap-3", LeftState::Error), left("snap-4", LeftState::Pending)]),
            vec![del, snapshot(Some("snap-4"))]
        );
        // Asked for a KMS key: only a snapshot encrypted with it is finished.
        let mut keyed = req.clone();
        keyed.kms_key = Some("arn:aws:kms:us-east-1:111122223333:key/k".into());
        let mut enc = left("snap-5", LeftState::Pending);
        let seen =
            |l: &LeftSnapshot| Observed { uploaded: vec![true, true], left: vec![l.clone()], ..Default::default() };
        assert!(plan(&seen(&enc), &keyed).steps.contains(&Step::Snapshot {
            region: "us-east-1".into(),
            method: Method::EbsDirect,
            resume: None
        }));
        enc.encrypted = true;
        enc.kms_key = keyed.kms_key.clone();
        assert!(plan(&seen(&enc), &keyed).steps.contains(&Step::Snapshot {
            region: "us-east-1".into(),
            method: Method::EbsDirect,
            resume: Some("snap-5".into())
        }));
        // An import is never resumed from a snapshot (ImportSnapshot's token does that).
        let mut import = req.clone();
        import.method = Method::Import;
        assert!(plan(&seen(&left("snap-6", LeftState::Pending)), &import).steps.contains(&Step::Snapshot {
            region: "us-east-1".into(),
            method: Method::Import,
            resume: None
        }));
    }

    #[test]
    fn organizations_ous_and_public_are_shared_on_every_copy_and_snapshots_where_aws_allows() {
        let org = Principal::Organization("arn:aws:organizations::111122223333:organization/o-abcdefghij".into());
        let ou = Principal::OrganizationalUnit(
            "arn:aws:organizations::111122223333:ou/o-abcdefghij/ou-ab12-cdefgh34".into(),
        );
        let mut req = request(&["us-east-1", "eu-west-1"], &[]);
        req.share = vec![org.clone(), ou.clone(), Principal::Public];
        let p = plan(&Observed { uploaded: vec![true, true], ..Default::default() }, &req);
        for region in ["us-east-1", "eu-west-1"] {
            let here: Vec<&Step> = p.steps.iter().filter(|s| s.region() == Some(region)).collect();
            for who in [&org, &ou, &Principal::Public] {
                assert!(here.iter().any(|s| matches!(s, Step::Share { principal, .. } if principal == who)), "{who:?}");
            }
            // Create-volume permission names accounts or `all` only.
            let snaps: Vec<&Principal> = here
                .iter()
                .filter_map(|s| match s {
                    Step::ShareSnapshot { principal, .. } => Some(principal),
                    _ => None,
                })
                .collect();
            assert_eq!(snaps, vec![&Principal::Public], "{region}");
        }
    }

    #[test]
    fn deprecation_is_set_on_every_copy_and_left_alone_when_it_is_there_to_the_minute() {
        let mut req = request(&["us-east-1", "eu-west-1"], &[]);
        req.deprecate = Some(Deprecation { at: 1_900_000_000, or_earlier: false });
        let mut home = image("ami-1", true, &[]).unwrap();
        home.deprecation = Some(super::super::request::to_minute(1_900_000_000) + 30);
        let mut other = image("ami-2", true, &[]).unwrap();
        other.deprecation = Some(1_800_000_000);
        let seen = Observed {
            uploaded: vec![true, true],
            left: Vec::new(),
            images: [("us-east-1".to_string(), Some(home)), ("eu-west-1".to_string(), Some(other))].into(),
            parameters: Default::default(),
        };
        assert_eq!(
            plan(&seen, &req).steps,
            vec![Step::Deprecate {
                region: "eu-west-1".into(),
                image: Image::Existing("ami-2".into()),
                at: 1_900_000_000
            }]
        );
        // Someone removed it: the next run sets it again; a new copy gets it too.
        let mut seen = seen;
        seen.images.insert("us-east-1".into(), image("ami-1", true, &[]));
        seen.images.insert("eu-west-1".into(), None);
        let steps = plan(&seen, &req).steps;
        assert!(steps.contains(&Step::Deprecate {
            region: "us-east-1".into(),
            image: Image::Existing("ami-1".into()),
            at: 1_900_000_000
        }));
        assert!(steps.contains(&Step::Deprecate { region: "eu-west-1".into(), image: Image::New, at: 1_900_000_000 }));
    }

    #[test]
    fn an_old_build_is_deprecated_in_a_minute_and_then_left_alone() {
        let now = 2_000_000_000;
        let d = Deprecation::after(1_000_000_000, 90 * 86_400, now);
        assert!(d.or_earlier && d.at > now && d.at % 60 == 0);
        assert!(d.satisfied_by(Some(d.at - 3600)), "already deprecated earlier: kept");
        assert!(!d.satisfied_by(None));
        let fresh = Deprecation::after(now, 90 * 86_400, now);
        assert_eq!(fresh, Deprecation { at: now - now % 60 + 90 * 86_400, or_earlier: false });
        assert!(!fresh.satisfied_by(Some(fresh.at - 3600)), "another time is corrected");
        assert!(fresh.satisfied_by(Some(fresh.at + 59)), "AWS keeps minutes");
    }

    #[test]
    fn the_ssm_parameter_is_published_last_and_only_where_it_points_elsewhere() {
        let mut req = request(&["us-east-1", "eu-west-1", "ap-south-1"], &["111122223333"]);
        req.ssm_parameter = Some("/fleet/hello".into());
        let seen = Observed {
            uploaded: vec![true, true],
            left: Vec::new(),
            images: [
                ("us-east-1".to_string(), image("ami-1", true, &["111122223333"])),
                ("eu-west-1".to_string(), image("ami-2", true, &["111122223333"])),
                ("ap-south-1".to_string(), None),
            ]
            .into(),
            parameters: [
                ("us-east-1".to_string(), Some("ami-1".to_string())),
                ("eu-west-1".to_string(), Some("ami-old".to_string())),
                ("ap-south-1".to_string(), None),
            ]
            .into(),
        };
        let steps = plan(&seen, &req).steps;
        let publish =
            |r: &str, i: Image| Step::Publish { region: r.into(), image: i, parameter: "/fleet/hello".into() };
        assert!(!steps.iter().any(|s| s.region() == Some("us-east-1")), "{steps:?}");
        assert_eq!(
            steps.iter().filter(|s| s.region() == Some("eu-west-1")).collect::<Vec<_>>(),
            vec![&publish("eu-west-1", Image::Existing("ami-2".into()))]
        );
        let new: Vec<&Step> = steps.iter().filter(|s| s.region() == Some("ap-south-1")).collect();
        assert_eq!(new.last(), Some(&&publish("ap-south-1", Image::New)), "after copy, tag and share: {new:?}");
    }
}
