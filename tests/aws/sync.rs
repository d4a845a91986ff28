//! imgd sync against a real local AWS endpoint (moto server on loopback), with
//! boto3 as the independent client that checks what exists afterwards.

use super::support::{self, Moto};
use serde_json::Value;

#[test]
fn sync_uploads_snapshots_registers_copies_and_a_rerun_does_nothing() {
    let moto = Moto::start();
    moto.py("s3.create_bucket(Bucket='imgs')");
    let d = tempfile::tempdir().unwrap();
    let store = d.path().join("store");
    let (out, tfv) = (d.path().join("amis.json"), d.path().join("amis.auto.tfvars.json"));
    let args = [
        "hello",
        "--bucket",
        "imgs",
        "--prefix",
        "fleet",
        "--regions",
        "us-east-1,eu-west-1",
        "--out",
        out.to_str().unwrap(),
        "--tfvars",
        tfv.to_str().unwrap(),
    ];
    let (r, _) = moto.sync(&store, &args);
    let amis = r["amis"].as_object().unwrap();
    assert_eq!(amis.len(), 2, "{r}");
    let (home, copy) = (amis["us-east-1"].as_str().unwrap(), amis["eu-west-1"].as_str().unwrap());
    assert!(home.starts_with("ami-") && copy.starts_with("ami-") && home != copy, "{r}");
    assert_eq!(r["artifact_id"], format!("eu-west-1:{copy},us-east-1:{home}"));
    let hash = r["hash"].as_str().unwrap();
    assert_eq!(r["name"], format!("imgd-hello-{}", &hash[..12]));

    // Terraform's hand-off, written whole.
    let tf: Value = serde_json::from_str(&std::fs::read_to_string(&tfv).unwrap()).unwrap();
    assert_eq!(tf["aws_amis"]["us-east-1"], home);
    assert_eq!(tf["aws_amis"]["eu-west-1"], copy);
    let o: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!(o["hash"], hash);
    assert!(o["snapshots"]["us-east-1"].as_str().unwrap().starts_with("snap-"));

    // S3 holds every artifact under the store's name, with its digest.
    let entry = r["entry"].as_str().unwrap();
    let objects = moto.py(&format!(
        "r = s3.list_objects_v2(Bucket='imgs', Prefix='fleet/{entry}/')\n\
         print(json.dumps({{o['Key'].split('/')[-1]: s3.head_object(Bucket='imgs', Key=o['Key'])['Metadata'].get('imgd-digest') for o in r.get('Contents', [])}}))"
    ));
    let manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(store.join(entry).join("manifest.json")).unwrap()).unwrap();
    for a in manifest["artifacts"].as_array().unwrap() {
        let digest = format!("blake3:{}", a["blake3"].as_str().unwrap());
        assert_eq!(objects[a["file"].as_str().unwrap()].as_str(), Some(digest.as_str()), "{objects}");
    }
    assert!(objects.get("manifest.json").is_some());
    let disks: u64 =
        ["disk.raw", "disk.vhd"].iter().map(|f| std::fs::metadata(store.join(entry).join(f)).unwrap().len()).sum();
    assert!(disks > 2 * (16 << 20), "each disk is several 16 MiB parts");
    assert!(r["uploaded_bytes"].as_u64().unwrap() > disks, "the raw and vhd disks went up in parts");

    // EBS direct: only the non-zero blocks of the mostly empty disk were sent.
    let (sent, total) = (r["blocks_sent"].as_u64().unwrap(), r["blocks_total"].as_u64().unwrap());
    assert!(sent > 0 && sent * 4 < total, "{sent} of {total} blocks sent");

    // The copy carries imgd's tags (CopyImage does not copy them).
    let tags = moto.py(&format!(
        "t = ec2('eu-west-1').describe_tags(Filters=[{{'Name': 'resource-id', 'Values': ['{copy}']}}])['Tags']\n\
         print(json.dumps({{x['Key']: x['Value'] for x in t}}))"
    ));
    assert_eq!(tags["imgd:hash"], hash);
    assert_eq!(tags["imgd:profile"], "hello");
    assert!(tags["imgd:built-at"].as_str().unwrap().ends_with('Z'));
    let images = moto.py(
        "print(json.dumps([i['Name'] for r in ['us-east-1','eu-west-1'] for i in ec2(r).describe_images(Owners=['self'])['Images']]))",
    );
    assert_eq!(images.as_array().unwrap().len(), 2, "exactly one AMI per region: {images}");

    // A re-run with nothing changed uploads nothing and changes nothing.
    let (again, _) = moto.sync(&store, &args);
    assert_eq!(again["amis"], r["amis"]);
    assert_eq!(again["mutating_calls"], 0, "{again}");
    assert_eq!(again["uploaded_bytes"], 0, "{again}");

    // A region added later is the only thing done.
    let mut more = args.to_vec();
    more[6] = "us-east-1,eu-west-1,ap-south-1";
    let (third, _) = moto.sync(&store, &more);
    assert_eq!(third["amis"].as_object().unwrap().len(), 3);
    assert_eq!(third["amis"]["eu-west-1"], copy);
    assert_eq!(third["uploaded_bytes"], 0);
    assert!(third["mutating_calls"].as_u64().unwrap() <= 2, "copy + tags only: {third}");
}

#[test]
fn encryption_by_default_sends_every_block() {
    let moto = Moto::start();
    moto.py("s3.create_bucket(Bucket='imgs')\nec2('us-east-1').enable_ebs_encryption_by_default()");
    let d = tempfile::tempdir().unwrap();
    let (r, _) = moto.sync(&d.path().join("store"), &["hello", "--bucket", "imgs", "--regions", "us-east-1"]);
    assert_eq!(r["blocks_sent"], r["blocks_total"], "{r}");
}

#[test]
fn throttling_5xx_and_lost_answers_still_end_with_one_ami_per_region() {
    use super::proxy::{Faults, Proxy};
    let moto = Moto::start();
    moto.py("s3.create_bucket(Bucket='imgs')");
    let faults = Faults {
        throttle_every: 4,
        lose_first_answer: vec!["RegisterImage", "CopyImage", "CreateTags"],
        corrupt_first_part: true,
        ..Faults::default()
    };
    let proxy = Proxy::start(&moto.addr, faults);
    let d = tempfile::tempdir().unwrap();
    let store = d.path().join("store");
    let args = ["hello", "--bucket", "imgs", "--regions", "us-east-1,eu-west-1,ap-south-1", "--max-attempts", "10"];
    let (r, _) = support::aws_ok(&proxy.url, &store, "sync", &args);
    assert_eq!(r["amis"].as_object().unwrap().len(), 3, "{r}");
    let (throttled, lost) = proxy.log(|l| (l.throttled, l.lost.clone()));
    assert!(throttled > 20, "only {throttled} requests throttled");
    assert_eq!(lost, ["RegisterImage", "CreateTags", "CopyImage"], "each lost answer happened once");
    for region in ["us-east-1", "eu-west-1", "ap-south-1"] {
        assert_eq!(moto.images(region).len(), 1, "{region}: exactly one AMI despite the lost answers");
    }
    // A part corrupted on the way (moto does not check checksums) was caught and sent again.
    assert_eq!(proxy.log(|l| l.corrupted), 1);
    // Every object and part went with a checksum S3 would accept.
    let (checked, bad) = proxy.log(|l| (l.checksums_checked, l.bad_checksums.clone()));
    assert!(checked >= 2 && bad.is_empty(), "{checked} checked: {bad:?}");
    let entry = r["entry"].as_str().unwrap();
    let manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(store.join(entry).join("manifest.json")).unwrap()).unwrap();
    let stored = moto.py(&format!(
        "import hashlib\n\
         print(json.dumps({{f: hashlib.sha256(s3.get_object(Bucket='imgs', Key=f'imgd/{entry}/{{f}}')['Body'].read()).hexdigest() for f in ['disk.raw', 'disk.vhd']}}))"
    ));
    for a in
        manifest["artifacts"].as_array().unwrap().iter().filter(|a| a["file"] == "disk.raw" || a["file"] == "disk.vhd")
    {
        let local = imgd::hash::sha256_file(&store.join(entry).join(a["file"].as_str().unwrap())).unwrap();
        assert_eq!(stored[a["file"].as_str().unwrap()].as_str(), Some(local.as_str()), "{stored}");
    }
    // Straight to moto, without faults: nothing left to do.
    let (again, _) = moto.sync(&store, &args[..5]);
    assert_eq!(again["amis"], r["amis"]);
    assert_eq!(again["mutating_calls"], 0, "{again}");
}

#[test]
fn import_method_uses_import_snapshot_and_explains_a_missing_vmimport_role() {
    use super::proxy::{Faults, Proxy};
    let moto = Moto::start();
    moto.py("s3.create_bucket(Bucket='imgs')");
    let d = tempfile::tempdir().unwrap();
    let store = d.path().join("store");
    let args = ["hello", "--bucket", "imgs", "--regions", "us-east-1", "--method", "import", "--poll", "1"];

    // No vmimport role: a clear message, nothing registered.
    let denied = Proxy::start(&moto.addr, Faults { no_vmimport_role: true, ..Faults::default() });
    let out = support::aws(&denied.url, &store, "sync", &args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("`vmimport` service role") && err.contains("--method ebs-direct"), "{err}");
    assert!(moto.images("us-east-1").is_empty());

    // With the role: the VHD in S3 becomes the snapshot behind the AMI.
    let proxy = Proxy::start(&moto.addr, Faults::default());
    let (r, _) = support::aws_ok(&proxy.url, &store, "sync", &args);
    assert_eq!(proxy.log(|l| l.import_polls), 3, "polled until the task completed");
    assert!(!proxy.log(|l| l.requests.iter().any(|x| x.starts_with("PUT /snapshots"))), "no EBS direct calls");
    let snap = r["snapshots"]["us-east-1"].as_str().unwrap();
    let ami = r["amis"]["us-east-1"].as_str().unwrap();
    let tags = moto.py(&format!(
        "t = ec2('us-east-1').describe_tags(Filters=[{{'Name': 'resource-id', 'Values': ['{snap}']}}])['Tags']\n\
         print(json.dumps({{x['Key']: x['Value'] for x in t}}))"
    ));
    assert_eq!(tags["imgd:hash"], r["hash"], "the imported snapshot carries imgd's tags");
    let vhd_key = r["s3"].as_array().unwrap().iter().find(|k| k.as_str().unwrap().ends_with(".vhd")).unwrap();
    assert!(vhd_key.as_str().unwrap().starts_with("s3://imgs/imgd/"), "{r}");
    assert_eq!(moto.images("us-east-1").len(), 1, "{ami}");
}

/// A bare 5xx (no body, as from a load balancer) is retried like S3's own,
/// and the log says what the endpoint answered: the SDK alone reports only
/// "unhandled error: Error".
#[test]
fn a_bare_502_to_a_part_is_retried_and_named() {
    use super::proxy::{Faults, Proxy};
    let moto = Moto::start();
    moto.py("s3.create_bucket(Bucket='imgs')");
    let d = tempfile::tempdir().unwrap();
    let store = d.path().join("store");
    let args = ["hello", "--bucket", "imgs", "--regions", "us-east-1"];
    let named = "S3 UploadPart: the endpoint answered HTTP 502 with an empty body";

    // Every attempt answered so: the sync fails, and says with what.
    let down = Proxy::start(&moto.addr, Faults { bare_502_parts: usize::MAX, ..Faults::default() });
    let out = support::aws(&down.url, &store, "sync", &args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains(named) && err.contains("part 1 of s3://imgs/"), "{err}");
    assert!(moto.images("us-east-1").is_empty());

    // Once: the SDK's retry sends the part again, and the sync completes.
    let once = Proxy::start(&moto.addr, Faults { bare_502_parts: 1, ..Faults::default() });
    let (r, err) = support::aws_ok(&once.url, &store, "sync", &args);
    assert_eq!(once.log(|l| l.bare_502s), 1);
    assert_eq!(err.matches(named).count(), 1, "{err}");
    assert_eq!(moto.images("us-east-1").len(), 1, "{r}");
}

#[test]
fn two_syncs_of_one_build_at_once_make_one_image_and_both_succeed() {
    two_syncs_at_once(false);
}

/// As from two machines: each sync has a cache folder (upload state, local
/// lock) of its own, so only the bucket's lease serializes them.
#[test]
fn two_syncs_of_one_build_from_two_machines_are_serialized_by_the_buckets_lease() {
    two_syncs_at_once(true);
}

fn two_syncs_at_once(two_machines: bool) {
    let moto = Moto::start();
    moto.py("s3.create_bucket(Bucket='imgs')");
    let d = tempfile::tempdir().unwrap();
    let store = d.path().join("store");
    // Built first, so that both start syncing at once.
    crate::common::ok(crate::common::imgd(&store).args(["build", "hello"]));
    // Each "machine" shares only the downloaded packages (to resolve hello).
    let caches = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let caches = caches.map(|d| (crate::common::scratch_cache(&d.path().join("c")), d));
    let spawn = |i: usize| {
        let mut c = std::process::Command::new(support::imgd());
        c.args(["sync", "hello", "--bucket", "imgs", "--regions", "us-east-1"]).args([
            "--endpoint-url",
            &moto.url,
            "--json",
            "--max-attempts",
            "2",
        ]);
        support::test_env(&mut c, &store);
        if two_machines {
            c.env("IMGD_CACHE", &caches[i].0);
        }
        c.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().unwrap()
    };
    let (a, b) = (spawn(0), spawn(1));
    let runs: Vec<(Value, String)> = [a, b]
        .into_iter()
        .map(|c| {
            let out = c.wait_with_output().unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
            assert!(out.status.success(), "a concurrent sync failed: {stderr}");
            (serde_json::from_slice(&out.stdout).unwrap(), stderr)
        })
        .collect();
    assert_eq!(runs[0].0["amis"], runs[1].0["amis"]);
    assert_eq!(moto.images("us-east-1").len(), 1, "one image");
    // One did the work; the other waited for it and found nothing to do.
    let waited: Vec<&(Value, String)> = runs.iter().filter(|(r, _)| r["mutating_calls"] == 0).collect();
    assert_eq!(waited.len(), 1, "{runs:?}");
    assert_eq!(waited[0].0["uploaded_bytes"], 0);
    assert!(waited[0].1.contains("another imgd sync of imgd-hello-"), "{}", waited[0].1);
    // Snapshots imgd started (moto adds one of its own per registered image).
    let snapshots = moto.py(
        "print(json.dumps([s['SnapshotId'] for s in ec2('us-east-1').describe_snapshots(OwnerIds=['self'])['Snapshots'] \
         if s.get('Description', '').startswith('imgd hello')]))",
    );
    assert_eq!(snapshots.as_array().unwrap().len(), 1, "one EBS direct snapshot: {snapshots}");
    let leases =
        moto.py("print(json.dumps([o['Key'] for o in s3.list_objects_v2(Bucket='imgs').get('Contents', [])]))");
    assert!(!leases.to_string().contains(".imgd-leases/"), "the lease is removed: {leases}");
}

#[test]
fn dry_run_prints_a_plan_and_changes_nothing() {
    let moto = Moto::start();
    moto.py("s3.create_bucket(Bucket='imgs')");
    let d = tempfile::tempdir().unwrap();
    let store = d.path().join("store");
    let base = ["hello", "--bucket", "imgs", "--regions", "us-east-1,eu-west-1", "--share", "123456789012"];
    let plan_of = |v: &Value| -> Vec<(String, String)> {
        v["plan"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| (s["action"].as_str().unwrap().to_string(), s["place"].as_str().unwrap().to_string()))
            .collect()
    };
    let (p, _) = moto.sync(&store, &[&base[..], &["--dry-run"]].concat());
    let steps = plan_of(&p);
    let uploads = steps.iter().filter(|(a, _)| a == "upload").count();
    assert_eq!(uploads, 9, "eight artifact files (the ipxe bundle is three, the uki one) and the manifest: {p}");
    for want in [("snapshot", "us-east-1"), ("register", "us-east-1"), ("copy", "eu-west-1"), ("share", "eu-west-1")] {
        assert!(steps.contains(&(want.0.into(), want.1.into())), "{want:?} missing: {p}");
    }
    assert!(moto.keys("imgs").is_empty() && moto.images("us-east-1").is_empty(), "a dry run changed something");

    // After a real run the plan is empty; with one more account, only its shares.
    let (r, _) = moto.sync(&store, &base);
    let perms = moto.py(&format!(
        "print(json.dumps([p.get('UserId') for p in ec2('eu-west-1').describe_image_attribute(ImageId='{}', \
         Attribute='launchPermission')['LaunchPermissions']]))",
        r["amis"]["eu-west-1"].as_str().unwrap()
    ));
    assert_eq!(perms, serde_json::json!(["123456789012"]), "--share granted launch permission on the copy");
    let (p, _) = moto.sync(&store, &[&base[..], &["--dry-run"]].concat());
    assert!(plan_of(&p).is_empty(), "{p}");
    let (p, _) = moto.sync(&store, &[&base[..], &["--share", "210987654321", "--dry-run"]].concat());
    // Launch permission on each copy, and create-volume permission on its snapshot.
    let want = [
        ("share", "us-east-1"),
        ("share-snapshot", "us-east-1"),
        ("share", "eu-west-1"),
        ("share-snapshot", "eu-west-1"),
    ];
    assert_eq!(plan_of(&p), want.map(|(a, r)| (a.to_string(), r.to_string())), "{p}");
}

#[test]
fn kms_key_encrypts_the_snapshot_and_the_copies_and_sends_every_block() {
    use super::proxy::{Faults, Proxy};
    let moto = Moto::start();
    moto.py("s3.create_bucket(Bucket='imgs')");
    let proxy = Proxy::start(&moto.addr, Faults::default());
    let key = "arn:aws:kms:us-east-1:123456789012:key/0b1e7a3c-imgd-test";
    let d = tempfile::tempdir().unwrap();
    let args = ["hello", "--bucket", "imgs", "--regions", "us-east-1,eu-west-1", "--kms-key", key];
    let (r, _) = support::aws_ok(&proxy.url, &d.path().join("store"), "sync", &args);
    assert_eq!(r["blocks_sent"], r["blocks_total"], "an encrypted snapshot gets its zero blocks too: {r}");
    // moto keeps no encryption state, so check what imgd asked AWS for.
    let bodies = proxy.log(|l| l.bodies.clone());
    let start: Value =
        bodies.iter().find(|(w, _)| w == "POST /snapshots").map(|(_, b)| serde_json::from_str(b).unwrap()).unwrap();
    assert_eq!(
        (start["Encrypted"].clone(), start["KmsKeyArn"].clone()),
        (Value::Bool(true), Value::from(key)),
        "{start}"
    );
    let copy = &bodies.iter().find(|(w, _)| w == "CopyImage").unwrap().1;
    let copy = percent_encoding::percent_decode_str(copy).decode_utf8_lossy();
    assert!(copy.contains("Encrypted=true") && copy.contains(&format!("KmsKeyId={key}&")), "{copy}");
}

#[test]
fn an_interrupted_upload_resumes_with_the_parts_already_sent() {
    use super::proxy::{Faults, Proxy};
    let moto = Moto::start();
    moto.py("s3.create_bucket(Bucket='imgs')");
    let slow = Proxy::start(&moto.addr, Faults { part_delay_ms: 300, ..Faults::default() });
    let d = tempfile::tempdir().unwrap();
    let store = d.path().join("store");
    let args = ["sync", "hello", "--bucket", "imgs", "--regions", "us-east-1", "--endpoint-url", &slow.url];
    let mut child = support::test_env(&mut std::process::Command::new(support::imgd()), &store)
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Kill it (as a lost SSH session would) while disk.raw is going up: its
    // 7th part is not asked for before 2 of the first 6 are done (4 at a time).
    let end = std::time::Instant::now() + std::time::Duration::from_secs(180);
    while slow.log(|l| l.requests.iter().filter(|r| r.starts_with("UploadPart") && r.ends_with("disk.raw")).count()) < 6
    {
        assert!(std::time::Instant::now() < end && child.try_wait().unwrap().is_none(), "never saw the parts");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let entry =
        std::fs::read_dir(&store).unwrap().filter_map(|e| e.ok()).find(|e| e.path().join("manifest.json").is_file());
    let entry = entry.unwrap().file_name().into_string().unwrap();
    let key = format!("imgd/{entry}/disk.raw");
    let before = moto.py(&format!(
        "u = [x for x in s3.list_multipart_uploads(Bucket='imgs').get('Uploads', []) if x['Key'] == '{key}']\n\
         print(json.dumps(len(s3.list_parts(Bucket='imgs', Key='{key}', UploadId=u[0]['UploadId']).get('Parts', []))))"
    ));
    let have = before.as_u64().unwrap();
    assert!(have >= 2, "{have} parts were in S3 when it died");

    // The re-run (same endpoint: upload state belongs to one service) keeps
    // those parts, sends the rest, and leaves no upload open.
    slow.end_part_delay();
    let (r, _) = support::aws_ok(&slow.url, &store, "sync", &args[1..6]);
    let manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(store.join(&entry).join("manifest.json")).unwrap()).unwrap();
    let total: u64 = manifest["artifacts"].as_array().unwrap().iter().map(|a| a["size"].as_u64().unwrap()).sum();
    let sent = r["uploaded_bytes"].as_u64().unwrap();
    assert!(sent <= total - have * (16 << 20), "sent {sent} of {total} with {have} parts already there");
    let check = moto.py(&format!(
        "import hashlib\n\
         body = s3.get_object(Bucket='imgs', Key='{key}')['Body'].read()\n\
         print(json.dumps([hashlib.sha256(body).hexdigest(), len(s3.list_multipart_uploads(Bucket='imgs').get('Uploads', []))]))"
    ));
    let local = imgd::hash::sha256_file(&store.join(&entry).join("disk.raw")).unwrap();
    assert_eq!(check[0].as_str(), Some(local.as_str()), "the resumed object is the disk");
    assert_eq!(check[1], 0, "no upload left open");
}

#[test]
fn regions_all_is_every_region_the_account_has_enabled() {
    let moto = Moto::start();
    moto.py("s3.create_bucket(Bucket='imgs')");
    let d = tempfile::tempdir().unwrap();
    let store = d.path().join("store");
    // What the account has enabled, asked independently (boto3).
    let enabled = moto
        .py("print(json.dumps(sorted(r['RegionName'] for r in ec2('us-east-1').describe_regions()['Regions'] \
         if r.get('OptInStatus', 'opt-in-not-required') != 'not-opted-in')))");
    let enabled: Vec<String> = serde_json::from_value(enabled).unwrap();
    assert!(enabled.len() > 3, "{enabled:?}");
    let args = ["hello", "--bucket", "imgs", "--regions", "all", "--home-region", "us-east-1", "--dry-run"];
    let (p, _) = moto.sync(&store, &args);
    let mut copies: Vec<String> = p["plan"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["action"] == "copy")
        .map(|s| s["place"].as_str().unwrap().to_string())
        .collect();
    copies.sort();
    let want: Vec<String> = enabled.iter().filter(|r| *r != "us-east-1").cloned().collect();
    assert_eq!(copies, want, "a copy to every enabled region but home: {p}");
    assert!(p["plan"].as_array().unwrap().iter().any(|s| s["action"] == "register" && s["place"] == "us-east-1"));

    // `all` needs a region to ask in, and stands alone.
    for (bad, key) in [(&["--regions", "all"][..], "--home-region"), (&["--regions", "all,us-east-1"][..], "--regions")]
    {
        let out = support::aws(&moto.url, &store, "sync", &[&["hello", "--bucket", "imgs"][..], bad].concat());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains(key), "{stderr}");
    }
}

/// Sharing with an account, an organization, an OU and everyone, a
/// deprecation time and an SSM channel: on the home image and on its copy, the snapshot shared
/// with the account and `all` (create-volume permission names nothing else),
/// all checked with boto3; a re-run makes no mutating call (counted by imgd
/// and, independently, by the proxy); what someone removed by hand is put
/// back by the next run, and only that.
#[test]
fn sharing_and_deprecation_reach_every_copy_and_a_rerun_changes_nothing() {
    use super::proxy::{Faults, Proxy};
    let moto = Moto::start();
    moto.py("s3.create_bucket(Bucket='imgs')");
    let proxy = Proxy::start(&moto.addr, Faults::default());
    let d = tempfile::tempdir().unwrap();
    let store = d.path().join("store");
    let org = "arn:aws:organizations::111122223333:organization/o-abcdefghij";
    let ou = "arn:aws:organizations::111122223333:ou/o-abcdefghij/ou-ab12-cdefgh34";
    let args = [
        "hello",
        "--bucket",
        "imgs",
        "--regions",
        "us-east-1,eu-west-1",
        "--share",
        "444455556666",
        "--share-org",
        org,
        "--share-ou",
        ou,
        "--public",
        "--deprecate-in",
        "90d",
        "--ssm-parameter",
        "/fleet/hello/ami",
    ];
    let (r, _) = support::aws_ok(&proxy.url, &store, "sync", &args);
    let look = |region: &str| {
        let ami = r["amis"][region].as_str().unwrap();
        support::py_at(
            &proxy.url,
            &format!(
                "import datetime\nc=ec2('{region}')\ni=c.describe_images(ImageIds=['{ami}'])['Images'][0]\n\
                 lp=c.describe_image_attribute(ImageId='{ami}', Attribute='launchPermission')['LaunchPermissions']\n\
                 snap=i['BlockDeviceMappings'][0]['Ebs']['SnapshotId']\n\
                 cv=c.describe_snapshot_attribute(SnapshotId=snap, Attribute='createVolumePermission')['CreateVolumePermissions']\n\
                 dep=i.get('DeprecationTime')\n\
                 dep=dep and datetime.datetime.fromisoformat(dep.replace('Z','+00:00')).timestamp()\n\
                 print(json.dumps({{'lp': sorted(json.dumps(x, sort_keys=True) for x in lp), \
                 'cv': sorted(json.dumps(x, sort_keys=True) for x in cv), 'dep': dep}}))"
            ),
        )
    };
    let manifest: Value = serde_json::from_str(
        &std::fs::read_to_string(store.join(r["entry"].as_str().unwrap()).join("manifest.json")).unwrap(),
    )
    .unwrap();
    let built = manifest["built_at"].as_i64().unwrap();
    let want_dep = (built + 90 * 86_400) / 60 * 60;
    let check = |region: &str| {
        let got = look(region);
        let lp: Vec<&str> = got["lp"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
        for want in [
            "{\"UserId\": \"444455556666\"}".to_string(),
            format!("{{\"OrganizationArn\": \"{org}\"}}"),
            format!("{{\"OrganizationalUnitArn\": \"{ou}\"}}"),
            "{\"Group\": \"all\"}".to_string(),
        ] {
            assert!(lp.contains(&want.as_str()), "{region}: {want} not in {lp:?}");
        }
        let cv: Vec<&str> = got["cv"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
        assert_eq!(cv, ["{\"Group\": \"all\"}", "{\"UserId\": \"444455556666\"}"], "{region}");
        assert_eq!(got["dep"].as_f64().map(|t| t as i64), Some(want_dep), "{region}: {got}");
    };
    check("us-east-1");
    check("eu-west-1");

    // A re-run changes nothing: imgd's count, and every request the proxy saw.
    let seen = proxy.log(|l| l.requests.len());
    let (again, _) = support::aws_ok(&proxy.url, &store, "sync", &args);
    assert_eq!(again["mutating_calls"], 0, "{again}");
    let read_only = |a: &str| ["Describe", "Get", "List", "HEAD ", "GET "].iter().any(|p| a.starts_with(p));
    let writes: Vec<String> = proxy.log(|l| l.requests[seen..].iter().filter(|a| !read_only(a)).cloned().collect());
    assert!(writes.is_empty(), "a re-run wrote: {writes:?}");
    let count = |from: usize, action: &str| proxy.log(|l| l.requests[from..].iter().filter(|a| *a == action).count());
    assert_eq!(count(0, "PutParameter"), 2, "the channel was published in both regions through the proxy");
    assert_eq!(count(seen, "GetParameter"), 2, "and read back by the re-run");

    // Someone makes the copy private and lifts its deprecation: the next run
    // puts both back, with two calls.
    let copy = r["amis"]["eu-west-1"].as_str().unwrap();
    support::py_at(
        &proxy.url,
        &format!(
            "c=ec2('eu-west-1')\nc.modify_image_attribute(ImageId='{copy}', LaunchPermission={{'Remove': [{{'Group': 'all'}}]}})\n\
             c.disable_image_deprecation(ImageId='{copy}')"
        ),
    );
    let (mended, _) = support::aws_ok(&proxy.url, &store, "sync", &args);
    assert_eq!(mended["mutating_calls"], 2, "{mended}");
    check("eu-west-1");
}

/// Who an image is shared with is checked before anything runs: a value of
/// the wrong shape is an error naming the flag (exit 2), and nothing is made
/// public except by `--public`.
#[test]
fn share_and_deprecation_flags_are_checked_before_any_call() {
    let d = tempfile::tempdir().unwrap();
    let store = d.path().join("store");
    // No endpoint is running: a check that let these through would fail differently.
    let run = |extra: &[&str]| {
        let mut args = vec!["hello", "--bucket", "imgs", "--regions", "us-east-1"];
        args.extend(extra);
        let out = support::aws("http://127.0.0.1:9", &store, "sync", &args);
        (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    for (extra, flag, says) in [
        (&["--share", "all"][..], "--share", "--public"),
        (&["--share", "12345"][..], "--share", "12-digit"),
        (&["--share-org", "o-abcdefghij"][..], "--share-org", "organization ARN"),
        (
            &["--share-org", "arn:aws:organizations::111122223333:ou/o-abcdefghij/ou-ab12-cdefgh34"][..],
            "--share-org",
            "organization ARN",
        ),
        (&["--share-ou", "arn:aws:organizations::111122223333:organization/o-abcdefghij"][..], "--share-ou", "OU ARN"),
        (&["--deprecate-in", "1y"][..], "--deprecate-in", "m, h, d or w"),
        (&["--deprecate-in", "0d"][..], "--deprecate-in", "m, h, d or w"),
    ] {
        let (code, err) = run(extra);
        assert_eq!(code, Some(2), "{extra:?}: {err}");
        assert!(err.contains(flag) && err.contains(says), "{extra:?}: {err}");
    }
    assert!(!store.exists(), "nothing was built");
}

/// An SSM release channel: sync publishes each region's AMI in the
/// parameter (data type aws:ec2:image), a re-run leaves it, a newer build
/// moves it, `imgd promote` moves it back in every region (a plan first),
/// and a build missing from one region is refused with nothing changed.
#[test]
fn the_ssm_channel_follows_sync_and_promote_rolls_it_back_everywhere_or_nowhere() {
    let moto = Moto::start();
    moto.py("s3.create_bucket(Bucket='imgs')");
    let d = tempfile::tempdir().unwrap();
    let store = d.path().join("store");
    let param = "/fleet/hello/ami";
    let sync = |regions: &str, host: &str| {
        let set = format!("hostname={host}");
        let args = ["hello", "--bucket", "imgs", "--regions", regions, "--ssm-parameter", param, "--set", set.as_str()];
        moto.sync(&store, &args).0
    };
    let channel = |region: &str| {
        moto.py(&format!(
            "c=boto3.client('ssm', region_name='{region}', **kw)\n\
             p=c.get_parameter(Name='{param}')['Parameter']\nprint(json.dumps([p['Value'], p.get('DataType')]))"
        ))
    };
    let a = sync("us-east-1,eu-west-1", "a");
    for r in ["us-east-1", "eu-west-1"] {
        assert_eq!(channel(r), serde_json::json!([a["amis"][r], "aws:ec2:image"]), "{r}");
    }
    assert_eq!(sync("us-east-1,eu-west-1", "a")["mutating_calls"], 0, "a re-run publishes nothing");
    let b = sync("us-east-1,eu-west-1", "b");
    assert_ne!(a["hash"], b["hash"]);
    for r in ["us-east-1", "eu-west-1"] {
        assert_eq!(channel(r)[0], b["amis"][r], "{r}: the channel follows the newest sync");
    }

    // Roll back to a: the plan first (nothing changes), then --yes.
    let to = &a["hash"].as_str().unwrap()[..12];
    let promote = |to: &str, yes: bool| {
        let mut args = vec!["hello", "--to", to, "--ssm-parameter", param, "--regions", "us-east-1,eu-west-1"];
        if yes {
            args.push("--yes");
        }
        support::aws(&moto.url, &store, "promote", &args)
    };
    let plan = promote(to, false);
    assert!(plan.status.success(), "{}", String::from_utf8_lossy(&plan.stderr));
    let plan: Value = serde_json::from_slice(&plan.stdout).unwrap();
    assert_eq!(plan["plan"].as_array().unwrap().len(), 2, "{plan}");
    assert_eq!(plan["mutating_calls"], 0);
    assert_eq!(channel("us-east-1")[0], b["amis"]["us-east-1"], "a plan changes nothing");
    let done: Value = serde_json::from_slice(&promote(to, true).stdout).unwrap();
    assert_eq!(done["mutating_calls"], 2, "{done}");
    for r in ["us-east-1", "eu-west-1"] {
        assert_eq!(channel(r)[0], a["amis"][r], "{r}: rolled back");
    }
    let again: Value = serde_json::from_slice(&promote(to, true).stdout).unwrap();
    assert_eq!(again["mutating_calls"], 0, "{again}");

    // A build in one region only: refused, no region moved.
    let c = sync("us-east-1", "c");
    let out = promote(c["entry"].as_str().unwrap(), true);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("eu-west-1") && err.contains("nothing changed"), "{err}");
    assert_eq!(channel("us-east-1")[0], c["amis"]["us-east-1"], "sync c moved us-east-1 itself");
    assert_eq!(channel("eu-west-1")[0], a["amis"]["eu-west-1"], "eu-west-1 untouched");
}

/// prune keeps what a release channel names: after a rollback to an older
/// build, `--keep 1` keeps the newest and the one the SSM parameter points
/// at, and says why.
#[test]
fn prune_keeps_the_ami_a_release_channel_points_at() {
    let moto = Moto::start();
    moto.py("s3.create_bucket(Bucket='imgs')");
    let d = tempfile::tempdir().unwrap();
    let store = d.path().join("store");
    let param = "/fleet/hello/ami";
    let sync = |host: &str| {
        let set = format!("hostname={host}");
        moto.sync(
            &store,
            &["hello", "--bucket", "imgs", "--regions", "us-east-1", "--ssm-parameter", param, "--set", &set],
        )
        .0
    };
    let (a, _b, c) = (sync("a"), sync("b"), sync("c"));
    let to = &a["hash"].as_str().unwrap()[..12];
    let args = ["hello", "--to", to, "--ssm-parameter", param, "--regions", "us-east-1", "--yes"];
    assert!(support::aws(&moto.url, &store, "promote", &args).status.success());
    let (r, _) = support::aws_ok(
        &moto.url,
        &store,
        "prune",
        &["--bucket", "imgs", "--regions", "us-east-1", "--keep", "1", "--yes"],
    );
    let left = moto.images("us-east-1");
    let name = |v: &Value| v["name"].as_str().unwrap().to_string();
    assert_eq!(
        left,
        {
            let mut v = vec![name(&a), name(&c)];
            v.sort();
            v
        },
        "{r}"
    );
    assert!(r.to_string().contains(&format!("SSM parameter {param}")), "the plan says why: {r}");
}

/// EBS direct under a snapshot's request-rate limit: every third block
/// request is throttled, and the SDK is told not to retry at all
/// (`--max-attempts 1`); each throttled block waits and is sent again on its
/// own, the upload neither fails nor starts over, and the snapshot holds
/// exactly the disk's non-zero blocks.
#[test]
fn throttled_blocks_are_waited_out_one_by_one() {
    use super::proxy::{Faults, Proxy};
    let moto = Moto::start();
    moto.py("s3.create_bucket(Bucket='imgs')");
    let proxy = Proxy::start(&moto.addr, Faults { throttle_blocks_every: 3, ..Faults::default() });
    let d = tempfile::tempdir().unwrap();
    let args = ["hello", "--bucket", "imgs", "--regions", "us-east-1", "--max-attempts", "1"];
    let (r, _) = support::aws_ok(&proxy.url, &d.path().join("store"), "sync", &args);
    let (throttled, seen) = proxy.log(|l| (l.throttled, l.blocks));
    assert!(throttled > 0 && r["throttled"].as_u64() == Some(throttled as u64), "{r} vs {throttled}");
    let sent = r["blocks_sent"].as_u64().unwrap();
    assert_eq!(seen as u64, sent + throttled as u64, "each throttled block sent again, nothing more: {r}");
    assert_eq!(proxy.log(|l| l.requests.iter().filter(|a| a.as_str() == "POST /snapshots").count()), 1, "one snapshot");
    let snap = r["snapshots"]["us-east-1"].as_str().unwrap();
    let state = moto.py(&format!(
        "print(json.dumps(ec2('us-east-1').describe_snapshots(SnapshotIds=['{snap}'])['Snapshots'][0]['State']))"
    ));
    assert_eq!(state, "completed");
}

/// What the killed-snapshot tests start from: moto, the proxy in front of
/// it, a store, and the pending snapshot a sync left when it was killed.
struct Killed {
    moto: Moto,
    proxy: super::proxy::Proxy,
    _dir: tempfile::TempDir,
    store: std::path::PathBuf,
    snapshot: String,
}

const KILLED_ARGS: [&str; 5] = ["hello", "--bucket", "imgs", "--regions", "us-east-1"];

/// Runs `imgd sync KILLED_ARGS` through a proxy that stops taking blocks
/// after `blocks`, and kills it (SIGKILL, as a lost build host would) once
/// its EBS journal records that many.
fn sync_killed_mid_snapshot(blocks: usize) -> Killed {
    use super::proxy::{Faults, Proxy};
    let moto = Moto::start();
    moto.py("s3.create_bucket(Bucket='imgs')");
    let proxy = Proxy::start(&moto.addr, Faults { stall_blocks_after: blocks, ..Faults::default() });
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let mut child = support::test_env(&mut std::process::Command::new(support::imgd()), &store)
        .arg("sync")
        .args(KILLED_ARGS)
        .args(["--endpoint-url", &proxy.url])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let end = std::time::Instant::now() + std::time::Duration::from_secs(180);
    loop {
        assert!(std::time::Instant::now() < end && child.try_wait().unwrap().is_none(), "never saw the blocks");
        let snap = proxy.log(|l| l.ebs.keys().next().cloned());
        let recorded = snap
            .as_ref()
            .map_or(0, |s| std::fs::read_to_string(journal(s)).map_or(0, |t| t.lines().count().saturating_sub(1)));
        if recorded >= blocks {
            child.kill().unwrap();
            child.wait().unwrap();
            // Blocks the killed run had already sent may still reach the
            // proxy (a slow debug build sends them later): wait until none
            // has arrived for a while, so what the test does next (cancel
            // the snapshot) is not raced by the dead run's last requests.
            let quiet = std::time::Instant::now() + std::time::Duration::from_secs(10);
            loop {
                let seen = proxy.log(|l| l.ebs_puts_seen);
                std::thread::sleep(std::time::Duration::from_millis(300));
                if proxy.log(|l| l.ebs_puts_seen) == seen || std::time::Instant::now() > quiet {
                    break;
                }
            }
            return Killed { moto, proxy, _dir: dir, store, snapshot: snap.unwrap() };
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// The snapshots RegisterImage calls named (moto reports its own snapshot
/// for an image, so the request is where the truth is).
fn registered_from(proxy: &super::proxy::Proxy) -> Vec<String> {
    proxy.log(|l| {
        l.bodies
            .iter()
            .filter(|(a, _)| a == "RegisterImage")
            .filter_map(|(_, b)| {
                b.split('&').find_map(|kv| kv.strip_prefix("BlockDeviceMapping.1.Ebs.SnapshotId=")).map(str::to_string)
            })
            .collect()
    })
}

/// Where imgd keeps a snapshot's block journal (the tests leave IMGD_CACHE as it is).
fn journal(snapshot: &str) -> std::path::PathBuf {
    imgd::dirs::cache().join("uploads").join(format!("ebs-{snapshot}.blocks"))
}

/// Non-zero 512 KiB blocks of the disk: index -> SHA-256 (hex).
fn nonzero_blocks(raw: &std::path::Path) -> std::collections::BTreeMap<u64, String> {
    use sha2::Digest;
    use std::io::Read;
    let mut f = std::fs::File::open(raw).unwrap();
    let mut out = std::collections::BTreeMap::new();
    let mut buf = vec![0u8; 512 * 1024];
    for index in 0.. {
        buf.fill(0);
        let mut got = 0;
        while got < buf.len() {
            match f.read(&mut buf[got..]).unwrap() {
                0 => break,
                n => got += n,
            }
        }
        if got == 0 {
            break;
        }
        if buf.iter().any(|b| *b != 0) {
            out.insert(index, hex::encode(sha2::Sha256::digest(&buf)));
        }
    }
    out
}

/// A sync killed in the middle of its EBS direct upload leaves a pending
/// snapshot. The next run plans to resume it, writes to that same snapshot
/// only the blocks its journal does not name, and completes it: EBS's own
/// checks (every block's checksum, the block count, the LINEAR aggregate —
/// enforced by the proxy, moto checks none) pass, and the snapshot's blocks
/// read back equal the disk's.
#[test]
fn an_interrupted_ebs_snapshot_is_finished_by_the_next_run_sending_only_what_is_missing() {
    use super::proxy::EbsState;
    let Killed { moto, proxy, store, snapshot: snap, _dir } = sync_killed_mid_snapshot(12);
    let args = KILLED_ARGS;
    let puts_before = proxy.log(|l| l.ebs[&snap].puts);
    assert_eq!(puts_before, 12, "EBS took 12 blocks before the link died");
    proxy.release_blocks();

    let plan = support::aws_ok(&proxy.url, &store, "sync", &[&args[..], &["--dry-run"]].concat()).0;
    let snapshot_row = plan["plan"].as_array().unwrap().iter().find(|r| r["action"] == "snapshot").cloned();
    assert!(snapshot_row.is_some_and(|r| r["what"].as_str().unwrap().contains(&format!("resume {snap}"))), "{plan}");

    let (r, _) = support::aws_ok(&proxy.url, &store, "sync", &args);
    assert_eq!(registered_from(&proxy), vec![snap.clone()], "the image is made from the finished snapshot");
    let starts = proxy.log(|l| l.requests.iter().filter(|a| a.as_str() == "POST /snapshots").count());
    assert_eq!(starts, 1, "no second snapshot was started");
    let (state, refused, puts_after) = proxy.log(|l| (l.ebs[&snap].state, l.ebs_refused.clone(), l.ebs[&snap].puts));
    assert_eq!(state, EbsState::Completed);
    assert!(refused.is_empty(), "EBS would have refused: {refused:?}");

    let entry = r["entry"].as_str().unwrap();
    let want = nonzero_blocks(&store.join(entry).join("disk.raw"));
    let (resumed, sent) = (r["blocks_resumed"].as_u64().unwrap(), r["blocks_sent"].as_u64().unwrap());
    assert_eq!(resumed, 12, "the blocks EBS took were not sent again: {r}");
    assert_eq!(resumed + sent, want.len() as u64, "every non-zero block, once: {r}");
    assert_eq!((puts_after - puts_before) as u64, sent, "the re-run sent nothing it did not count");

    // Read back through EBS direct (boto3): exactly the disk's non-zero blocks.
    let got = moto.py(&format!(
        "import hashlib\n\
         e = boto3.client('ebs', region_name='us-east-1', **kw)\n\
         out = {{}}\n\
         for b in e.list_snapshot_blocks(SnapshotId='{snap}')['Blocks']:\n\
         \x20   d = e.get_snapshot_block(SnapshotId='{snap}', BlockIndex=b['BlockIndex'], BlockToken=b['BlockToken'])['BlockData'].read()\n\
         \x20   out[str(b['BlockIndex'])] = hashlib.sha256(d).hexdigest()\n\
         print(json.dumps(out))"
    ));
    let want_json: serde_json::Map<String, Value> =
        want.iter().map(|(i, h)| (i.to_string(), Value::String(h.clone()))).collect();
    assert_eq!(got, Value::Object(want_json));
    assert!(!journal(&snap).exists(), "the journal goes with the finished upload");
    assert_eq!(moto.images("us-east-1").len(), 1);
}

/// A pending snapshot EBS cancelled (nobody completed it within its timeout)
/// can never be finished: the next run deletes it, with its journal, and
/// makes a new one; the plan says so first.
#[test]
fn a_snapshot_ebs_cancelled_is_deleted_and_made_again() {
    use super::proxy::EbsState;
    let Killed { moto, proxy, store, snapshot: old, _dir } = sync_killed_mid_snapshot(3);
    let args = KILLED_ARGS;
    proxy.cancel_snapshot(&old);
    proxy.release_blocks();

    let plan = support::aws_ok(&proxy.url, &store, "sync", &[&args[..], &["--dry-run"]].concat()).0;
    let rows: Vec<(String, String)> = plan["plan"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["action"].as_str().unwrap().to_string(), r["what"].as_str().unwrap().to_string()))
        .collect();
    let del = rows.iter().position(|(a, w)| a == "delete-snapshot" && w.starts_with(&old));
    let new = rows.iter().position(|(a, w)| a == "snapshot" && !w.contains("resume"));
    assert!(del.is_some() && new.is_some() && del < new, "{plan}");

    let (r, _) = support::aws_ok(&proxy.url, &store, "sync", &args);
    let registered = registered_from(&proxy);
    let snap = registered[0].as_str();
    assert_ne!(snap, old);
    assert_eq!(proxy.log(|l| l.ebs.len()), 2, "one new snapshot: {registered:?}");
    assert_eq!(r["blocks_resumed"], 0, "{r}");
    assert_eq!(proxy.log(|l| l.ebs[snap].state), EbsState::Completed);
    let refused = proxy.log(|l| l.ebs_refused.clone());
    assert!(refused.is_empty(), "no block went to the cancelled snapshot: {refused:?}");
    let left = moto.py(&format!(
        "print(json.dumps([s['SnapshotId'] for s in ec2('us-east-1').describe_snapshots(OwnerIds=['self'])['Snapshots'] if s['SnapshotId'] == '{old}']))"
    ));
    assert_eq!(left, serde_json::json!([]), "the cancelled snapshot is gone");
    assert!(!journal(&old).exists() && !journal(snap).exists());
    // Done: a re-run changes nothing.
    let (again, _) = support::aws_ok(&proxy.url, &store, "sync", &args);
    assert_eq!(again["mutating_calls"], 0, "{again}");
}

/// A store file that no longer matches its manifest (a bad disk, a careless
/// hand) never reaches a bucket or a snapshot: every S3 part and EBS block is
/// checked against the manifest's BLAKE3 before it is sent.
#[test]
fn a_disk_changed_after_the_build_reaches_neither_s3_nor_a_snapshot() {
    let moto = Moto::start();
    moto.py("s3.create_bucket(Bucket='imgs')");
    let d = tempfile::tempdir().unwrap();
    let store = d.path().join("store");
    let base = ["hello", "--bucket", "imgs", "--regions", "us-east-1"];
    // Everything in S3 first (no AMI yet), while the files are intact.
    let (r, _) = moto.sync(&store, &["hello", "--bucket", "imgs", "--s3-only"]);
    let entry = r["entry"].as_str().unwrap().to_string();
    let raw = store.join(&entry).join("disk.raw");
    let mut perms = std::fs::metadata(&raw).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o644);
    std::fs::set_permissions(&raw, perms).unwrap();
    let mut bytes = std::fs::read(&raw).unwrap();
    bytes[5 << 20] ^= 0x40;
    std::fs::write(&raw, &bytes).unwrap();
    let refused = |args: &[&str]| {
        let out = support::aws(&moto.url, &store, "sync", args);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!out.status.success(), "{stderr}");
        assert!(
            stderr.contains("disk.raw: not sent: its BLAKE3 is") && stderr.contains("its manifest says"),
            "{stderr}"
        );
    };
    // The AMI: S3 already has the disk, the snapshot would read it here.
    refused(&base);
    assert!(moto.images("us-east-1").is_empty());
    let snapshots = moto.py("print(json.dumps(ec2('us-east-1').describe_snapshots(OwnerIds=['self'])['Snapshots']))");
    assert_eq!(snapshots, serde_json::json!([]), "no snapshot started");
    // A fresh prefix: the disk's upload is refused before it starts.
    refused(&["hello", "--bucket", "imgs", "--prefix", "other", "--s3-only"]);
    let keys = moto.keys("imgs");
    assert!(!keys.iter().any(|k| k.starts_with("other/") && k.ends_with("disk.raw")), "{keys:?}");
    assert!(!keys.iter().any(|k| k.starts_with("other/") && k.ends_with("manifest.json")), "{keys:?}");
    let uploads = moto.py("print(json.dumps(s3.list_multipart_uploads(Bucket='imgs').get('Uploads', [])))");
    assert_eq!(uploads, serde_json::json!([]), "no upload started");
}
