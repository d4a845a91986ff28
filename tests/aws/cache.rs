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
    let repo = support::root().to_path_buf();
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

#[test]
fn a_poisoned_cache_can_neither_write_outside_the_store_nor_pass_for_the_build() {
    let moto = Moto::start();
    moto.py("s3.create_bucket(Bucket='cache')");
    let d = tempfile::tempdir().unwrap();
    let repo = support::root().to_path_buf();
    let args = ["--format", "ipxe", "--cache", "s3://cache/team"];
    // A real entry in the bucket, pushed by a builder.
    let (one, _) = build(&moto, &d.path().join("one"), &repo, &args);
    let entry = one["name"].as_str().unwrap().to_string();
    let key = format!("team/{entry}/manifest.json");
    let good: Value = serde_json::from_str(
        &std::fs::read_to_string(d.path().join("one").join(&entry).join("manifest.json")).unwrap(),
    )
    .unwrap();
    let victim = d.path().join("victim");
    let put = |manifest: &Value| {
        let body: String = serde_json::to_vec(manifest).unwrap().iter().map(|b| format!("{b:02x}")).collect();
        moto.py(&format!(
            "h = s3.head_object(Bucket='cache', Key='{key}')\n\
             s3.put_object(Bucket='cache', Key='{key}', Body=bytes.fromhex('{body}'), Metadata=h['Metadata'])"
        ));
    };
    let with_file = |name: &str| {
        let mut m = good.clone();
        m["artifacts"][0]["file"] = Value::from(name);
        m
    };
    let climbing = format!("../../../..{}", victim.display());
    let mut other_hash = good.clone();
    other_hash["hash"] = Value::from("0".repeat(64));
    other_hash["name"] = Value::from(format!("{}-hello", "0".repeat(32)));
    let mut smaller = good.clone();
    smaller["artifacts"][1]["size"] = Value::from(good["artifacts"][1]["size"].as_u64().unwrap() / 2);
    let mut larger = good.clone();
    larger["artifacts"][0]["size"] = Value::from(good["artifacts"][0]["size"].as_u64().unwrap() + 1);
    let cases = [
        ("an absolute name", with_file(victim.to_str().unwrap()), "not an artifact file name"),
        ("a climbing name", with_file(&climbing), "not an artifact file name"),
        ("a name through a folder", with_file("link/vmlinuz"), "not an artifact file name"),
        ("the manifest's own name", with_file("manifest.json"), "not an artifact file name"),
        ("an oversized name", with_file(&"v".repeat(300)), "not an artifact file name"),
        ("a manifest for another hash", other_hash, "its manifest names"),
        ("a file larger than its manifest says", smaller, "more than the"),
        ("a file shorter than its manifest says", larger, "does not match its manifest"),
    ];
    for (i, (what, manifest, why)) in cases.iter().enumerate() {
        put(manifest);
        let store = d.path().join(format!("s{i}"));
        let (r, log) = build(&moto, &store, &repo, &args);
        assert_eq!(
            (r["fetched"].clone(), r["cached"].clone()),
            (Value::Bool(false), Value::Bool(false)),
            "{what}: {log}"
        );
        assert!(log.contains(why), "{what}: {log}");
        assert!(!victim.exists(), "{what}: wrote outside the store");
        assert_eq!(r["artifacts"], one["artifacts"], "{what}: built here instead, bit-identical");
        let verify =
            std::process::Command::new(support::imgd()).args(["verify", "--store"]).arg(&store).output().unwrap();
        assert!(verify.status.success(), "{what}: {}", String::from_utf8_lossy(&verify.stdout));
    }
}

/// A manifest's PCR 11 is derived from the UKI it lists: a cache that lies
/// about it is not believed (the entry is fetched, its value recomputed).
#[test]
fn a_fetched_entrys_pcr11_is_recomputed_not_taken_from_the_cache() {
    let moto = Moto::start();
    moto.py("s3.create_bucket(Bucket='cache')");
    let d = tempfile::tempdir().unwrap();
    let repo = support::root().to_path_buf();
    let args = ["--format", "uki", "--cache", "s3://cache/team"];
    let (one, _) = build(&moto, &d.path().join("one"), &repo, &args);
    let entry = one["name"].as_str().unwrap().to_string();
    assert!(one["pcr11"]["sha256"].as_str().is_some_and(|v| v.len() == 64), "{one}");
    let key = format!("team/{entry}/manifest.json");
    let mut lying: Value = serde_json::from_str(
        &std::fs::read_to_string(d.path().join("one").join(&entry).join("manifest.json")).unwrap(),
    )
    .unwrap();
    lying["pcr11"]["sha256"] = Value::from("0".repeat(64));
    let body: String = serde_json::to_vec(&lying).unwrap().iter().map(|b| format!("{b:02x}")).collect();
    moto.py(&format!(
        "h = s3.head_object(Bucket='cache', Key='{key}')\n\
         s3.put_object(Bucket='cache', Key='{key}', Body=bytes.fromhex('{body}'), Metadata=h['Metadata'])"
    ));
    let (two, log) = build(&moto, &d.path().join("two"), &repo, &args);
    assert_eq!(two["fetched"], Value::Bool(true), "{log}");
    assert_eq!(two["pcr11"], one["pcr11"], "{log}");
}

/// Stateless netboot replicas: two `imgd serve --cache s3://…` with empty
/// stores and only the machines file fetch the entry from the bucket
/// (checked) and give machines identical scripts and bytes; a profile the
/// bucket lacks is reported, not built.
#[test]
fn two_netboot_replicas_with_only_the_bucket_give_identical_answers() {
    use crate::serve::{curl, Serve};
    let moto = Moto::start();
    moto.py("s3.create_bucket(Bucket='cache')");
    let d = tempfile::tempdir().unwrap();
    // A project whose hello builds only the netboot bundle (what replicas serve).
    let hello = std::fs::read_to_string(support::repo().join("profiles/hello.toml")).unwrap();
    let hello: String = hello
        .lines()
        .map(|l| if l.starts_with("formats") { "formats = [\"ipxe\"]\n".into() } else { format!("{l}\n") })
        .collect();
    let other = hello.replace("imgd hello image", "another image");
    let project = crate::common::project(&[("hello.toml", &hello), ("other.toml", &other)]);
    let root = project.path();
    let (built, _) = build(&moto, &d.path().join("builder"), root, &["--cache", "s3://cache/team"]);
    let entry = built["name"].as_str().unwrap();
    let machines = d.path().join("machines.toml");
    std::fs::write(
        &machines,
        "[[group]]\nname = \"lab\"\nprofile = \"hello\"\ndefault = true\n\n\
         [[group]]\nname = \"other\"\nprofile = \"other\"\nselector = { mac = \"52:54:00:00:00:99\" }\n",
    )
    .unwrap();
    let replica = |n: usize| {
        let store = d.path().join(format!("replica{n}"));
        let mut cmd = std::process::Command::new(support::imgd());
        support::test_env(&mut cmd, &store)
            .args(["serve", "--listen", "127.0.0.1:0", "--cache", "s3://cache/team", "--config"])
            .arg(&machines)
            .arg("--root")
            .arg(root)
            .env("AWS_ENDPOINT_URL", &moto.url);
        Serve::spawn(cmd)
    };
    let (a, b) = (replica(1), replica(2));
    let ask = |s: &Serve, path: &str| {
        let (status, _, body) = curl(&[&format!("{}{path}", s.base)]);
        assert_eq!(status, 200, "{path}: {}", s.log.lock().unwrap());
        body
    };
    let script = "/ipxe?mac=52-54-00-12-34-56&uuid=&hostname=&serial=&arch=x86_64&platform=efi";
    let (sa, sb) = (ask(&a, script), ask(&b, script));
    assert_eq!(sa, sb, "the replicas answer differently");
    assert!(String::from_utf8_lossy(&sa).contains(entry), "{}", String::from_utf8_lossy(&sa));
    let kernel = std::fs::read(d.path().join("builder").join(entry).join("vmlinuz")).unwrap();
    for s in [&a, &b] {
        assert!(ask(s, &format!("/artifacts/{entry}/vmlinuz")) == kernel, "the kernel's bytes differ");
    }
    let log = a.log.lock().unwrap().clone();
    assert!(log.contains("profile other is not built here nor in s3://cache/team"), "{log}");
}

/// `imgd fetch p --cache s3://cache/team --json` with its own local cache.
fn fetch(moto: &Moto, project: &Path, local_cache: &Path, extra: &[&str]) -> std::process::Output {
    support::test_env(&mut std::process::Command::new(support::imgd()), &project.join("store"))
        .env("IMGD_ROOT", project)
        .env("IMGD_CACHE", local_cache)
        .env("AWS_ENDPOINT_URL", &moto.url)
        .args(["fetch", "p", "--json", "--cache", "s3://cache/team"])
        .args(extra)
        .output()
        .unwrap()
}

#[test]
fn locked_debian_packages_are_shared_through_the_cache_and_outlive_the_mirror() {
    let moto = Moto::start();
    moto.py("s3.create_bucket(Bucket='cache')");
    let mirror = crate::lock::Mirror::new();
    let p = mirror.project("\"tool\"");
    let d = tempfile::tempdir().unwrap();
    let lock = support::test_env(&mut std::process::Command::new(support::imgd()), &d.path().join("s"))
        .env("IMGD_ROOT", p.path())
        .args(["lock", "p"])
        .output()
        .unwrap();
    assert!(lock.status.success(), "{}", String::from_utf8_lossy(&lock.stderr));
    let json = |o: &std::process::Output| -> Value {
        assert!(o.status.success(), "imgd fetch: {}", String::from_utf8_lossy(&o.stderr));
        serde_json::from_slice(&o.stdout).unwrap()
    };

    // The first machine takes them from the mirror and shares them.
    let one = json(&fetch(&moto, p.path(), &d.path().join("one"), &[]));
    assert_eq!((one["from_mirror"].as_u64(), one["shared"].as_u64()), (Some(6), Some(6)), "{one}");
    let keys = moto.keys("cache");
    assert_eq!(keys.len(), 6, "{keys:?}");
    assert!(keys.iter().all(|k| k.starts_with("team/debian-pool/") && k.ends_with(".deb")), "{keys:?}");

    // The mirror is gone (it dropped those versions, or is unreachable):
    // a second machine still gets every package, from the cache, checked.
    let gone = ["--set", "base.debian.mirror=http://127.0.0.1:9/debian"];
    let two = json(&fetch(&moto, p.path(), &d.path().join("two"), &gone));
    assert_eq!((two["from_cache"].as_u64(), two["from_mirror"].as_u64()), (Some(6), Some(0)), "{two}");
    let pool = d.path().join("two/debian/pool");
    for e in std::fs::read_dir(&pool).unwrap() {
        let path = e.unwrap().path();
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        assert_eq!(imgd::hash::sha256_file(&path).unwrap(), name, "pooled under its own SHA-256");
    }

    // A copy in the cache that was tampered with is refused, taken from the
    // mirror instead, and replaced in the cache.
    let victim = keys[0].clone();
    moto.py(&format!(
        "o=s3.get_object(Bucket='cache', Key='{victim}'); \
         s3.put_object(Bucket='cache', Key='{victim}', Body=b'evil'+o['Body'].read()[4:], Metadata=o['Metadata'])"
    ));
    let three = json(&fetch(&moto, p.path(), &d.path().join("three"), &[]));
    assert_eq!((three["from_cache"].as_u64(), three["from_mirror"].as_u64()), (Some(5), Some(1)), "{three}");
    let sha = victim.trim_start_matches("team/debian-pool/").trim_end_matches(".deb");
    let body = moto.py(&format!(
        "import hashlib; print(json.dumps(hashlib.sha256(s3.get_object(Bucket='cache', Key='{victim}')['Body'].read()).hexdigest()))"
    ));
    assert_eq!(body.as_str(), Some(sha), "the bad copy was replaced");

    // Neither the mirror nor the cache has them: a clear failure.
    let out = support::test_env(&mut std::process::Command::new(support::imgd()), &d.path().join("s"))
        .env("IMGD_ROOT", p.path())
        .env("IMGD_CACHE", d.path().join("four"))
        .args(["fetch", "p"])
        .args(gone)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("127.0.0.1:9"), "{}", String::from_utf8_lossy(&out.stderr));
}
