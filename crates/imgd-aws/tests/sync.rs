//! imgd sync against a real local AWS endpoint (moto server on loopback), with
//! boto3 as the independent client that checks what exists afterwards.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

struct Moto {
    child: Child,
    url: String,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Moto {
    fn start() -> Moto {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .env("MOTO_EC2_LOAD_DEFAULT_AMIS", "false")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("moto_server (pip install 'moto[server]')");
        let url = format!("http://127.0.0.1:{port}");
        let end = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < end, "moto did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        Moto { child, url }
    }

    /// Runs boto3 code with `s3` and `ec2(region)` bound to this endpoint; the
    /// code's last expression is printed as JSON.
    fn py(&self, code: &str) -> Value {
        let script = format!(
            "import boto3, json\nE='{}'\nkw=dict(endpoint_url=E, aws_access_key_id='test', aws_secret_access_key='test')\n\
             s3=boto3.client('s3', region_name='us-east-1', **kw)\nec2=lambda r: boto3.client('ec2', region_name=r, **kw)\n{code}\n",
            self.url
        );
        let out = Command::new("python3").arg("-c").arg(&script).output().unwrap();
        assert!(out.status.success(), "python failed: {}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8_lossy(&out.stdout);
        serde_json::from_str(text.trim()).unwrap_or(Value::Null)
    }

    fn sync(&self, store: &Path, args: &[&str]) -> (Value, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_imgd-aws"))
            .arg("sync")
            .args(args)
            .args(["--endpoint-url", &self.url, "--json", "--max-attempts", "2"])
            .current_dir(repo())
            .env("IMGD_ROOT", repo())
            .env("IMGD_STORE", store)
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("AWS_CONFIG_FILE", "/dev/null")
            .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
            .env("RUST_LOG", "warn")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "imgd sync failed: {stderr}");
        (serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {stderr}")), stderr)
    }
}

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

    // S3 holds every artifact under the store's name, with its sha256.
    let entry = r["entry"].as_str().unwrap();
    let objects = moto.py(&format!(
        "r = s3.list_objects_v2(Bucket='imgs', Prefix='fleet/{entry}/')\n\
         print(json.dumps({{o['Key'].split('/')[-1]: s3.head_object(Bucket='imgs', Key=o['Key'])['Metadata'].get('imgd-sha256') for o in r.get('Contents', [])}}))"
    ));
    let manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(store.join(entry).join("manifest.json")).unwrap()).unwrap();
    for a in manifest["artifacts"].as_array().unwrap() {
        assert_eq!(objects[a["file"].as_str().unwrap()], a["sha256"], "{objects}");
    }
    assert!(objects.get("manifest.json").is_some());
    assert!(r["uploaded_bytes"].as_u64().unwrap() > 250 << 20, "the raw and vhd disks went up in parts");

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
