//! imgd prune against moto on loopback: keep-N per profile, the plan first,
//! and nothing without imgd's marks ever touched.

use super::support::{self, Moto};
use serde_json::Value;

fn steps(v: &Value, action: &str) -> Vec<String> {
    v["plan"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["action"] == action)
        .map(|s| format!("{} {}", s["place"].as_str().unwrap(), s["what"].as_str().unwrap()))
        .collect()
}

#[test]
fn prune_keeps_the_newest_builds_plans_first_and_leaves_foreign_things_alone() {
    let moto = Moto::start();
    moto.py("s3.create_bucket(Bucket='imgs')");
    let d = tempfile::tempdir().unwrap();
    let store = d.path().join("store");
    let regions = "us-east-1,eu-west-1";
    // Three builds of one profile, oldest first.
    let mut builds = Vec::new();
    for host in ["a", "b", "c"] {
        let set = format!("hostname={host}");
        let (r, _) = moto.sync(&store, &["hello", "--set", &set, "--bucket", "imgs", "--regions", regions]);
        builds.push(r);
    }
    let entry = |i: usize| builds[i]["entry"].as_str().unwrap().to_string();
    let hash12 = |i: usize| builds[i]["hash"].as_str().unwrap()[..12].to_string();
    let snap_a = builds[0]["snapshots"]["us-east-1"].as_str().unwrap().to_string();

    // Things imgd did not make: an untagged AMI, a stray object inside an
    // entry folder, an unrelated folder.
    moto.py(&format!(
        "e = ec2('us-east-1')\n\
         v = e.create_volume(Size=1, AvailabilityZone='us-east-1a')['VolumeId']\n\
         s = e.create_snapshot(VolumeId=v)['SnapshotId']\n\
         e.register_image(Name='hand-made', RootDeviceName='/dev/xvda', BlockDeviceMappings=[{{'DeviceName': '/dev/xvda', 'Ebs': {{'SnapshotId': s}}}}])\n\
         s3.put_object(Bucket='imgs', Key='imgd/{}/notes.txt', Body=b'mine')\n\
         s3.put_object(Bucket='imgs', Key='imgd/backups/db.tar', Body=b'mine')\n\
         s3.create_multipart_upload(Bucket='imgs', Key='imgd/{}/disk.raw')",
        entry(0),
        entry(0)
    ));
    // A second machine's store holds build b only: its S3 copy stays.
    let other = d.path().join("other-store");
    std::fs::create_dir_all(&other).unwrap();
    let cp = std::process::Command::new("cp").arg("-a").arg(store.join(entry(1))).arg(&other).status().unwrap();
    assert!(cp.success());
    let other = other.to_str().unwrap();
    let before = (moto.images("us-east-1"), moto.images("eu-west-1"), moto.keys("imgs"));

    // The plan, through `imgd prune` as a user types it.
    let out = support::test_env(&mut std::process::Command::new(support::imgd()), &store)
        .args(["prune", "--bucket", "imgs", "--regions", regions, "--keep", "1", "--store", other, "--json"])
        .args(["--endpoint-url", &moto.url])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let plan: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(plan["applied"], false);
    assert_eq!(plan["kept"].as_array().unwrap().len(), 1, "{plan}");
    assert_eq!(plan["kept"][0]["hash"], builds[2]["hash"]);
    let dereg = steps(&plan, "deregister");
    assert_eq!(dereg.len(), 4, "a and b in both regions: {dereg:?}");
    assert!(dereg.iter().all(|s| s.contains(&hash12(0)) || s.contains(&hash12(1))), "{dereg:?}");
    assert!(steps(&plan, "delete-snapshot").iter().any(|s| s.contains(&snap_a)), "{plan}");
    let objects = steps(&plan, "delete-object");
    assert_eq!(objects.len(), 9, "a's artifacts (eight) and manifest only: {objects:?}");
    assert!(objects.iter().all(|o| o.contains(&entry(0)) && !o.ends_with("notes.txt")), "{objects:?}");
    assert_eq!(
        (moto.images("us-east-1"), moto.images("eu-west-1"), moto.keys("imgs")),
        before,
        "a plan changed something"
    );

    // --yes carries it out.
    let args = ["--bucket", "imgs", "--regions", regions, "--keep", "1", "--store", other, "--yes"];
    let (done, _) = support::aws_ok(&moto.url, &store, "prune", &args);
    assert_eq!(done["applied"], true);
    let newest = format!("imgd-hello-{}", hash12(2));
    assert_eq!(moto.images("us-east-1"), ["hand-made".to_string(), newest.clone()]);
    assert_eq!(moto.images("eu-west-1"), [newest]);
    let gone = moto.py(&format!(
        "print(json.dumps([s['SnapshotId'] for s in ec2('us-east-1').describe_snapshots(OwnerIds=['self'])['Snapshots'] if s['SnapshotId'] == '{snap_a}']))"
    ));
    assert_eq!(gone, serde_json::json!([]), "a's snapshot is deleted");
    let uploads = moto.py("print(json.dumps(len(s3.list_multipart_uploads(Bucket='imgs').get('Uploads', []))))");
    assert_eq!(uploads, 0, "the leftover upload is aborted");
    let keys = moto.keys("imgs");
    assert!(keys.contains(&"imgd/backups/db.tar".to_string()));
    assert!(keys.contains(&format!("imgd/{}/notes.txt", entry(0))), "an object without imgd's metadata stays");
    assert!(!keys.iter().any(|k| k.starts_with(&format!("imgd/{}/", entry(0))) && !k.ends_with("notes.txt")));
    for kept in [entry(1), entry(2)] {
        assert_eq!(keys.iter().filter(|k| k.contains(&kept)).count(), 9, "{kept} stays (store / newest AMI)");
    }

    // Nothing left to do; the kept build still syncs without changes.
    let (again, _) = support::aws_ok(&moto.url, &store, "prune", &args);
    assert!(again["plan"].as_array().unwrap().is_empty(), "{again}");
    assert_eq!(again["mutating_calls"], 0);
    let newest_args = ["hello", "--set", "hostname=c", "--bucket", "imgs", "--regions", regions];
    let (r, _) = moto.sync(&store, &newest_args);
    assert_eq!(r["mutating_calls"], 0, "{r}");
}

#[test]
fn prune_refuses_keep_zero() {
    let d = tempfile::tempdir().unwrap();
    let out = support::aws(
        "http://127.0.0.1:9",
        d.path(),
        "prune",
        &["--bucket", "b", "--regions", "us-east-1", "--keep", "0"],
    );
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--keep"));
}

#[test]
fn prune_leaves_cache_entries_to_their_own_retention_and_survives_foreign_tags() {
    let moto = Moto::start();
    moto.py("s3.create_bucket(Bucket='imgs')");
    let d = tempfile::tempdir().unwrap();
    // Two cache-only entries (no AMI ever made from them), a second apart.
    let mut names = Vec::new();
    for host in ["cache-a", "cache-b"] {
        let out = support::test_env(&mut std::process::Command::new(support::imgd()), &d.path().join(host))
            .args(["build", "hello", "--format", "ipxe", "--set", &format!("hostname={host}"), "--json"])
            .args(["--cache", "s3://imgs/imgd"])
            .env("AWS_ENDPOINT_URL", &moto.url)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        names.push(serde_json::from_slice::<Value>(&out.stdout).unwrap()["name"].as_str().unwrap().to_string());
        std::thread::sleep(std::time::Duration::from_millis(1500));
    }
    // Things that carry imgd's tags with values imgd never writes.
    moto.py(
        "e = ec2('us-east-1')\n\
         v = e.create_volume(Size=1, AvailabilityZone='us-east-1a')['VolumeId']\n\
         s = e.create_snapshot(VolumeId=v)['SnapshotId']\n\
         e.create_tags(Resources=[s], Tags=[{'Key': 'imgd:hash', 'Value': 'abc'}, {'Key': 'imgd:profile', 'Value': 'hello'}])\n\
         s2 = e.create_snapshot(VolumeId=v)['SnapshotId']\n\
         e.create_tags(Resources=[s2], Tags=[{'Key': 'imgd:hash', 'Value': 'ab' * 32}, {'Key': 'imgd:profile', 'Value': 'he\\nllo'}])",
    );
    let keys_before = moto.keys("imgs");
    let store = d.path().join("empty-store");
    let base = ["--bucket", "imgs", "--regions", "us-east-1", "--keep", "1", "--yes"];
    let (r, log) = support::aws_ok(&moto.url, &store, "prune", &base);
    assert!(r["plan"].as_array().unwrap().is_empty(), "AMI retention never touches cache entries: {r}");
    assert_eq!(moto.keys("imgs"), keys_before);
    assert!(log.contains("imgd tags with values imgd does not write"), "{log}");
    let snaps = moto.py("print(json.dumps(len(ec2('us-east-1').describe_snapshots(OwnerIds=['self'])['Snapshots'])))");
    assert_eq!(snaps, 2, "foreign snapshots are left alone");

    // The cache's own retention, shown in the plan first.
    let (plan, _) = support::aws_ok(&moto.url, &store, "prune", &[&base[..6], &["--cache-keep", "1"]].concat());
    let doomed: Vec<String> =
        plan["plan"].as_array().unwrap().iter().map(|s| s["what"].as_str().unwrap().to_string()).collect();
    assert!(!doomed.is_empty() && doomed.iter().all(|w| w.contains(&names[0]) && w.contains("(cache:")), "{doomed:?}");
    assert_eq!(moto.keys("imgs"), keys_before, "a plan changed something");
    let (done, _) = support::aws_ok(&moto.url, &store, "prune", &[&base[..], &["--cache-keep", "1"]].concat());
    assert_eq!(done["applied"], true);
    let keys = moto.keys("imgs");
    assert!(keys.iter().all(|k| !k.contains(&names[0])) && keys.iter().any(|k| k.contains(&names[1])), "{keys:?}");
}

#[test]
fn prune_never_deregisters_an_ami_something_still_launches_from() {
    let moto = Moto::start();
    moto.py("s3.create_bucket(Bucket='imgs')");
    let d = tempfile::tempdir().unwrap();
    let store = d.path().join("store");
    let mut amis = Vec::new();
    for host in ["a", "b", "c"] {
        let set = format!("hostname={host}");
        let (r, _) = moto.sync(&store, &["hello", "--set", &set, "--bucket", "imgs", "--regions", "us-east-1"]);
        amis.push(r["amis"]["us-east-1"].as_str().unwrap().to_string());
    }
    // A stopped instance launched from a; a launch template whose default
    // version launches b.
    let ids = moto.py(&format!(
        "e = ec2('us-east-1')\n\
         i = e.run_instances(ImageId='{}', MinCount=1, MaxCount=1)['Instances'][0]['InstanceId']\n\
         e.stop_instances(InstanceIds=[i])\n\
         t = e.create_launch_template(LaunchTemplateName='web', LaunchTemplateData={{'ImageId': '{}'}})\n\
         print(json.dumps([i, t['LaunchTemplate']['LaunchTemplateId']]))",
        amis[0], amis[1]
    ));
    let (instance, template) = (ids[0].as_str().unwrap().to_string(), ids[1].as_str().unwrap().to_string());
    let prune = |yes: bool| {
        let mut args = vec!["--bucket", "imgs", "--regions", "us-east-1", "--keep", "1"];
        if yes {
            args.push("--yes");
        }
        support::aws_ok(&moto.url, &store, "prune", &args).0
    };
    let plan = prune(true);
    assert!(steps(&plan, "deregister").is_empty(), "nothing unused to deregister: {plan}");
    let why: Vec<String> = plan["kept"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["why"].as_array().unwrap().iter().map(|w| w.as_str().unwrap()).collect::<Vec<_>>().join("; "))
        .collect();
    assert_eq!(why.len(), 3, "{plan}");
    assert!(why.iter().any(|w| w.contains(&amis[0]) && w.contains(&format!("instance {instance}"))), "{why:?}");
    assert!(why.iter().any(|w| w.contains(&amis[1]) && w.contains(&format!("launch template {template}"))), "{why:?}");
    assert!(why.iter().any(|w| w.contains("among the newest 1 of hello")), "{why:?}");
    let ids = || -> Vec<String> {
        let v = moto.py("print(json.dumps(sorted(i['ImageId'] for i in ec2('us-east-1').describe_images(Owners=['self'])['Images'])))");
        serde_json::from_value(v).unwrap()
    };
    let mut all = amis.clone();
    all.sort();
    assert_eq!(ids(), all, "an AMI in use was deregistered");

    // Once nothing launches from them, they go.
    moto.py(&format!(
        "e = ec2('us-east-1')\n\
         e.terminate_instances(InstanceIds=['{instance}'])\n\
         e.delete_launch_template(LaunchTemplateId='{template}')\n\
         print('null')"
    ));
    let plan = prune(true);
    let gone = steps(&plan, "deregister");
    assert_eq!(gone.len(), 2, "{plan}");
    assert_eq!(ids(), vec![amis[2].clone()]);
}
