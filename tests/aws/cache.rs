//! The S3 build cache: two stores sharing a bucket (moto on loopback) build
//! each input hash once; what comes from the bucket is verified first.

use super::support::{self, Moto};
use serde_json::Value;
use std::path::Path;

fn build(moto: &Moto, store: &Path, root: &Path, extra: &[&str]) -> (Value, String) {
    let out = support::test_env(&mut std::process::Command::new(support::imgd()), store)
        .args(["build", "hello", "--json", "--root"])
        .arg(root)
        .args(extra)
        .env("AWS_ENDPOINT_URL", &moto.url)
        .env("RUST_LOG", "info")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "imgd build failed: {stderr}");
    (serde_json::from_slice(&out.stdout).unwrap(), stderr)
}

#[test]
fn two_stores_sharing_a_bucket_build_once_and_never_trust_a_bad_copy() {
    let moto = Moto::start();
    moto.py("s3.create_bucket(Bucket='cache')");
    let d = tempfile::tempdir().unwrap();
    let repo = support::repo();
    let cache = ["--cache", "s3://cache/team"];

    // Machine 1 builds and shares.
    let (one, _) = build(&moto, &d.path().join("one"), &repo, &cache);
    assert_eq!((one["cached"].clone(), one["fetched"].clone()), (Value::Bool(false), Value::Bool(false)));
    let entry = one["name"].as_str().unwrap();
    let keys = moto.keys("cache");
    assert_eq!(keys.len(), one["artifacts"].as_array().unwrap().len() + 1, "{keys:?}");
    assert!(keys.iter().all(|k| k.starts_with(&format!("team/{entry}/"))), "{keys:?}");

    // Machine 2 fetches instead of building; its entry verifies.
    let two_store = d.path().join("two");
    let (two, log) = build(&moto, &two_store, &repo, &cache);
    assert_eq!(two["fetched"], true, "{log}");
    assert_eq!(two["hash"], one["hash"]);
    assert_eq!(two["artifacts"], one["artifacts"]);
    let verify =
        std::process::Command::new(support::imgd()).args(["verify", "--store"]).arg(&two_store).output().unwrap();
    assert!(verify.status.success(), "{}", String::from_utf8_lossy(&verify.stderr));

    // The same through imgd.toml, in a project folder of its own.
    let project = d.path().join("project");
    std::fs::create_dir(&project).unwrap();
    for dir in ["profiles", "hardware"] {
        std::os::unix::fs::symlink(repo.join(dir), project.join(dir)).unwrap();
    }
    std::fs::write(project.join("imgd.toml"), "# shared by the team\ncache = \"s3://cache/team\"\n").unwrap();
    let (three, log) = build(&moto, &d.path().join("three"), &project, &[]);
    assert_eq!(three["fetched"], true, "{log}");

    // A corrupted object in the bucket is caught and the build happens here.
    let qcow = format!("team/{entry}/disk.qcow2");
    moto.py(&format!(
        "h = s3.head_object(Bucket='cache', Key='{qcow}')\n\
         s3.put_object(Bucket='cache', Key='{qcow}', Body=b'not a disk', Metadata=h['Metadata'])"
    ));
    let (four, log) = build(&moto, &d.path().join("four"), &repo, &cache);
    assert_eq!((four["fetched"].clone(), four["cached"].clone()), (Value::Bool(false), Value::Bool(false)), "{log}");
    assert!(log.contains("disk.qcow2 does not match its manifest"), "{log}");
    assert_eq!(four["artifacts"], one["artifacts"], "built here, bit-identical");
    let (five, log) = build(&moto, &d.path().join("five"), &repo, &cache);
    assert_eq!(five["fetched"], true, "the rebuild replaced the bad copy: {log}");

    // imgd sync on a fresh machine fetches the build too, then syncs it.
    let out = support::test_env(&mut std::process::Command::new(support::imgd()), &d.path().join("seven"))
        .args(["sync", "hello", "--cache", "s3://cache/team", "--bucket", "cache", "--regions", "us-east-1"])
        .args(["--endpoint-url", &moto.url])
        .env("RUST_LOG", "info")
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    assert!(
        log.contains(&format!("fetched {entry} from s3://cache/team")) && !log.contains("root filesystem"),
        "{log}"
    );

    // A bad cache setting is an input error naming the file, line and key.
    std::fs::write(project.join("imgd.toml"), "\ncache = \"https://cache/team\"\n").unwrap();
    let out = support::test_env(&mut std::process::Command::new(support::imgd()), &d.path().join("six"))
        .args(["build", "hello", "--root"])
        .arg(&project)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("imgd.toml:2:") && err.contains("key `cache`"), "{err}");
}
