//! `imgd sync --deployments`: a fleet's images, each built and uploaded once,
//! each AMI in exactly the regions of the deployments that use it, against
//! moto on loopback (boto3 checks what exists).

use super::support::{self, Moto};
use serde_json::Value;
use std::collections::BTreeMap;

/// Two images: `hello` for presync and canary, `hello` with another hostname
/// for fullsync. us-east-1 is used by both images; ap-south-1 only by the
/// canary of the first; us-east-2 only by the second.
const FLEET: &str = r#"
[[deployment]]
name = "presync"
profile = "hello"
regions = { "eu-west-1" = 1, "us-east-1" = 1 }
instance_type = "r5d.2xlarge"
security_groups = ["allow-ssh", "allow-egress"]

[[deployment]]
name = "canary"
profile = "hello"
regions = { "ap-south-1" = 0 }
instance_type = "t3.micro"

[[deployment]]
name = "fullsync"
profile = "hello"
set = { hostname = "fullsync" }
regions = { "us-east-1" = 2, "us-east-2" = 2 }
instance_type = "r5d.xlarge"
security_groups = ["allow-ssh"]
"#;

/// Image name -> the regions holding an AMI of that name (this account's).
fn amis_by_name(moto: &Moto) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for r in ["us-east-1", "us-east-2", "eu-west-1", "ap-south-1", "eu-central-1"] {
        for name in moto.images(r) {
            out.entry(name).or_default().push(r.to_string());
        }
    }
    out
}

#[test]
fn each_image_goes_once_to_exactly_its_deployments_regions_and_terraform_gets_one_map_each() {
    let moto = Moto::start();
    moto.py("s3.create_bucket(Bucket='imgs')");
    let d = tempfile::tempdir().unwrap();
    let store = d.path().join("store");
    let fleet = d.path().join("fleet.deploy.toml");
    std::fs::write(&fleet, FLEET).unwrap();
    let tfvars = d.path().join("deployments.auto.tfvars.json");
    let args = ["--deployments", fleet.to_str().unwrap(), "--bucket", "imgs", "--tfvars", tfvars.to_str().unwrap()];

    // The plan for the whole file: two images, each with its union of regions.
    let (plan, _) = moto.sync(&store, &[&args[..], &["--dry-run"]].concat());
    let images = plan["images"].as_array().unwrap();
    assert_eq!(images.len(), 2, "{plan}");
    let by_deployments: BTreeMap<String, Value> =
        images.iter().map(|i| (i["deployments"].to_string(), i["regions"].clone())).collect();
    assert_eq!(by_deployments[r#"["presync","canary"]"#], serde_json::json!(["ap-south-1", "eu-west-1", "us-east-1"]));
    assert_eq!(by_deployments[r#"["fullsync"]"#], serde_json::json!(["us-east-1", "us-east-2"]));
    assert!(moto.keys("imgs").is_empty() && moto.images("us-east-1").is_empty(), "a dry run changed something");

    let (r, _) = moto.sync(&store, &args);
    let synced = r["images"].as_array().unwrap();
    assert_eq!(synced.len(), 2, "one sync per distinct image: {r}");
    assert!(synced.iter().all(|i| i["uploaded_bytes"].as_u64().unwrap() > 0), "each image uploaded: {r}");

    // Each AMI in exactly its deployments' regions, nowhere else.
    let names: BTreeMap<String, String> = synced
        .iter()
        .map(|i| (i["entry"].as_str().unwrap().to_string(), i["name"].as_str().unwrap().to_string()))
        .collect();
    let dep = &r["deployments"];
    let (first, second) = (dep["presync"]["image"].as_str().unwrap(), dep["fullsync"]["image"].as_str().unwrap());
    assert_ne!(first, second);
    assert_eq!(dep["canary"]["image"], first, "same profile, same overrides: one image");
    let held = amis_by_name(&moto);
    assert_eq!(held.len(), 2, "{held:?}");
    assert_eq!(held[&names[first]], ["us-east-1", "eu-west-1", "ap-south-1"]);
    assert_eq!(held[&names[second]], ["us-east-1", "us-east-2"]);
    assert_eq!(moto.images("us-east-2").len(), 1, "a region only the second image uses holds one imgd AMI");

    // Terraform's input: one map per deployment, the right AMI in each region.
    let tf: Value = serde_json::from_str(&std::fs::read_to_string(&tfvars).unwrap()).unwrap();
    let ami_in = |region: &str, name: &str| {
        moto.py(&format!(
            "print(json.dumps([i['ImageId'] for i in ec2('{region}').describe_images(Owners=['self'])['Images'] if i['Name'] == '{name}']))"
        ))[0]
            .clone()
    };
    let presync = &tf["deployments"]["presync"];
    assert_eq!(presync["amis"].as_object().unwrap().len(), 2, "{presync}");
    assert_eq!(presync["amis"]["eu-west-1"], ami_in("eu-west-1", &names[first]));
    assert_eq!(presync["amis"]["us-east-1"], ami_in("us-east-1", &names[first]));
    assert_eq!(presync["counts"], serde_json::json!({"eu-west-1": 1, "us-east-1": 1}));
    assert_eq!(presync["instance_type"], "r5d.2xlarge");
    assert_eq!(presync["security_groups"], serde_json::json!(["allow-ssh", "allow-egress"]));
    assert_eq!(presync["image"], first);
    let full = &tf["deployments"]["fullsync"];
    assert_eq!(full["amis"]["us-east-1"], ami_in("us-east-1", &names[second]));
    assert_eq!(full["amis"]["us-east-2"], ami_in("us-east-2", &names[second]));
    assert_eq!(full["counts"], serde_json::json!({"us-east-1": 2, "us-east-2": 2}));
    assert_ne!(full["amis"]["us-east-1"], presync["amis"]["us-east-1"]);

    // Nothing changed: a re-run makes no mutating call.
    let (again, _) = moto.sync(&store, &args);
    assert_eq!(again["mutating_calls"], 0, "{again}");
    assert_eq!(again["deployments"], r["deployments"]);

    // --check: every deployment on its profile's current build, exit 0.
    let check = |fleet: &std::path::Path| {
        let out = support::aws(&moto.url, &store, "sync", &["--deployments", fleet.to_str().unwrap(), "--check"]);
        let report: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        (out.status.code(), report, String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (code, report, stderr) = check(&fleet);
    assert_eq!(code, Some(0), "{report} {stderr}");
    assert_eq!(report["placements"].as_array().unwrap().len(), 5, "{report}");
    assert!(report["placements"].as_array().unwrap().iter().all(|p| p["current"] == true), "{report}");
    // One deployment's profile edited: drift for exactly that deployment, exit 1.
    let edited = d.path().join("edited.deploy.toml");
    std::fs::write(&edited, FLEET.replace("hostname = \"fullsync\"", "hostname = \"fullsync2\"")).unwrap();
    let (code, report, stderr) = check(&edited);
    assert_eq!(code, Some(1), "{report} {stderr}");
    assert!(stderr.contains("2 deployment region(s) are not on their profile's current build"), "{stderr}");
    let drifted: Vec<(String, String)> = report["placements"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["current"] == false)
        .map(|p| (p["deployment"].as_str().unwrap().to_string(), p["region"].as_str().unwrap().to_string()))
        .collect();
    assert_eq!(drifted, [("fullsync".to_string(), "us-east-1".to_string()), ("fullsync".into(), "us-east-2".into())]);
    // ...each saying what the region runs instead: the synced build's AMI.
    let row = report["placements"].as_array().unwrap().iter().find(|p| p["region"] == "us-east-2").cloned().unwrap();
    assert_eq!(row["synced"], serde_json::json!([ami_in("us-east-2", &names[second]), second]), "{row}");

    // --only: one deployment, its image alone.
    let (only, _) = moto.sync(&store, &[&args[..], &["--only", "fullsync"]].concat());
    assert_eq!(only["images"].as_array().unwrap().len(), 1);
    assert_eq!(only["deployments"].as_object().unwrap().keys().collect::<Vec<_>>(), ["fullsync"]);

    // A release channel: --check says whether it points at each deployment's
    // AMI (fullsync's, yes; presync's in us-east-1 is another image's).
    let channel = ["--ssm-parameter", "/fleet/full/ami"];
    moto.sync(&store, &[&args[..], &["--only", "fullsync"], &channel[..]].concat());
    let check_only = |name: &str| {
        let only = ["--deployments", fleet.to_str().unwrap(), "--check", "--only", name];
        let out = support::aws(&moto.url, &store, "sync", &[&only[..], &channel[..]].concat());
        (out.status.code(), serde_json::from_slice::<Value>(&out.stdout).unwrap_or(Value::Null))
    };
    let (code, report) = check_only("fullsync");
    assert_eq!(code, Some(0), "{report}");
    assert!(report["placements"].as_array().unwrap().iter().all(|p| p["channel"] == true), "{report}");
    let (code, report) = check_only("presync");
    assert_eq!(code, Some(1), "{report}");
    let rows = report["placements"].as_array().unwrap();
    assert!(rows.iter().all(|p| p["current"] == true && p["channel"] == false), "{report}");

    // fullsync is over: without it in the file, prune removes its image,
    // snapshots and S3 entry, and keeps the others' in their regions.
    let without = d.path().join("without.deploy.toml");
    std::fs::write(&without, &FLEET[..FLEET.rfind("[[deployment]]").unwrap()]).unwrap();
    let regions = "us-east-1,us-east-2,eu-west-1,ap-south-1";
    let prune = ["--deployments", without.to_str().unwrap(), "--bucket", "imgs", "--regions", regions, "--keep", "1"];
    let hash_of = |entry: &str| entry.split('-').next().unwrap().to_string();
    // (Run from another machine: an entry the local store holds keeps its S3 copy.)
    let elsewhere = d.path().join("elsewhere");
    let (plan, _) = support::aws_ok(&moto.url, &elsewhere, "prune", &prune);
    assert_eq!(plan["applied"], false);
    assert!(amis_by_name(&moto).contains_key(&names[second]), "a plan changes nothing");
    // The release channel still names fullsync's AMIs: launch templates that
    // resolve it would break, so its build stays until the channel goes.
    let why = plan["kept"].to_string();
    assert!(why.contains(&hash_of(second)) && why.contains("SSM parameter /fleet/full/ami"), "{plan}");
    moto.py(
        "for r in ['us-east-1','us-east-2']: boto3.client('ssm', region_name=r, **kw).delete_parameter(Name='/fleet/full/ami')",
    );
    let (plan, _) = support::aws_ok(&moto.url, &elsewhere, "prune", &prune);
    assert!(!plan["kept"].to_string().contains(&hash_of(second)), "{plan}");
    let (done, _) = support::aws_ok(&moto.url, &elsewhere, "prune", &[&prune[..], &["--yes"]].concat());
    assert_eq!(done["applied"], true, "{done}");
    let held = amis_by_name(&moto);
    assert_eq!(held.len(), 1, "{held:?}");
    assert_eq!(held[&names[first]], ["us-east-1", "eu-west-1", "ap-south-1"]);
    let snapshots = moto.py(
        "print(json.dumps([t['Value'] for r in ['us-east-1','us-east-2'] for s in ec2(r).describe_snapshots(OwnerIds=['self'])['Snapshots'] for t in s.get('Tags', []) if t['Key'] == 'imgd:hash']))",
    );
    let snapshots: Vec<String> = serde_json::from_value(snapshots).unwrap();
    assert!(!snapshots.is_empty() && snapshots.iter().all(|h| h.starts_with(&hash_of(first))), "{snapshots:?}");
    let keys = moto.keys("imgs");
    assert!(keys.iter().any(|k| k.contains(first)) && !keys.iter().any(|k| k.contains(second)), "{keys:?}");
}

#[test]
fn a_bad_deployments_file_is_named_with_its_line_and_nothing_is_called() {
    let moto = Moto::start();
    let d = tempfile::tempdir().unwrap();
    let fleet = d.path().join("fleet.deploy.toml");
    std::fs::write(&fleet, FLEET.replace("\"us-east-2\" = 2", "\"us-east-7\" = 2")).unwrap();
    let out = support::aws(
        &moto.url,
        &d.path().join("store"),
        "sync",
        &["--deployments", fleet.to_str().unwrap(), "--bucket", "imgs"],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    let line = FLEET.lines().position(|l| l.contains("us-east-2")).unwrap() + 1;
    assert!(
        stderr.contains(&format!("fleet.deploy.toml:{line}:"))
            && stderr.contains("`us-east-7` is not an AWS region name"),
        "{stderr}"
    );
    // One release channel for two images that share us-east-1: refused
    // before anything is built or called.
    std::fs::write(&fleet, FLEET).unwrap();
    let args = ["--deployments", fleet.to_str().unwrap(), "--bucket", "imgs", "--ssm-parameter", "/fleet/ami"];
    let out = support::aws(&moto.url, &d.path().join("store"), "sync", &args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("both run in us-east-1: one channel there cannot point at both"), "{stderr}");
    assert!(!d.path().join("store").exists() || std::fs::read_dir(d.path().join("store")).unwrap().count() == 0);
    // Both a profile and a deployments file: which one is meant?
    let out = support::aws(
        &moto.url,
        &d.path().join("store"),
        "sync",
        &["hello", "--deployments", fleet.to_str().unwrap(), "--bucket", "imgs"],
    );
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
}

/// Two deployments of one profile, each with a history of its own: `--keep`
/// counts the builds synced for a deployment, not its profile's newest.
#[test]
fn prune_keep_counts_each_deployments_own_builds() {
    let moto = Moto::start();
    moto.py("s3.create_bucket(Bucket='imgs')");
    let d = tempfile::tempdir().unwrap();
    let store = d.path().join("store");
    let fleet = d.path().join("fleet.deploy.toml");
    let write = |a: &str, b: &str| {
        let one = |name: &str, host: &str| {
            format!(
                "[[deployment]]\nname = \"{name}\"\nprofile = \"hello\"\nset = {{ hostname = \"{host}\" }}\n\
                 regions = {{ \"us-east-1\" = 1 }}\ninstance_type = \"t3.micro\"\n"
            )
        };
        std::fs::write(&fleet, one("a", a) + "\n" + &one("b", b)).unwrap();
    };
    let args = ["--deployments", fleet.to_str().unwrap(), "--bucket", "imgs"];
    // Builds in order: a1 and b1, then a2, b2, and a3 (newest), one sync each.
    let mut image = BTreeMap::new();
    for (a, b) in [("a1", "b1"), ("a2", "b1"), ("a2", "b2"), ("a3", "b2")] {
        write(a, b);
        let (r, _) = moto.sync(&store, &args);
        for i in r["images"].as_array().unwrap() {
            image.insert(i["entry"].as_str().unwrap().to_string(), i["name"].as_str().unwrap().to_string());
        }
        let dep = &r["deployments"];
        for (name, host) in [("a", a), ("b", b)] {
            image.insert(host.to_string(), image[dep[name]["image"].as_str().unwrap()].clone());
        }
    }
    // Each image carries the tag of the deployment it was synced for, and only that.
    let tags = moto.py(
        "print(json.dumps({i['Name']: sorted(t['Key'] for t in i.get('Tags', []) if t['Key'].startswith('imgd:deployment:')) for i in ec2('us-east-1').describe_images(Owners=['self'])['Images']}))",
    );
    for host in ["a1", "a2", "a3", "b1", "b2"] {
        let want = format!("imgd:deployment:{}", &host[..1]);
        assert_eq!(tags[&image[host]], serde_json::json!([want]), "{host}: {tags}");
    }
    let held = || {
        let names = moto.images("us-east-1");
        let mut hosts: Vec<&str> =
            ["a1", "a2", "a3", "b1", "b2"].into_iter().filter(|h| names.contains(&image[*h])).collect();
        hosts.sort();
        hosts
    };
    assert_eq!(held(), ["a1", "a2", "a3", "b1", "b2"]);
    // --keep 2: a keeps a3 and a2, b keeps b2 and b1 (b1 is older than
    // a2 and a3, but it is b's previous build).
    let elsewhere = d.path().join("elsewhere");
    let prune = |keep: &str| {
        let args = ["--deployments", fleet.to_str().unwrap(), "--bucket", "imgs", "--regions", "us-east-1"];
        support::aws_ok(&moto.url, &elsewhere, "prune", &[&args[..], &["--keep", keep, "--yes"]].concat()).0
    };
    let done = prune("2");
    assert_eq!(done["applied"], true, "{done}");
    assert_eq!(held(), ["a2", "a3", "b1", "b2"], "{done}");
    // --keep 1: each deployment's current build alone.
    prune("1");
    assert_eq!(held(), ["a3", "b2"]);
}
