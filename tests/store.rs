//! The store: atomic entries under kill -9, one entry from concurrent builds,
//! verify finds corruption, gc keeps the newest N.

use crate::common::*;
use std::time::{Duration, Instant};

#[test]
fn concurrent_builds_of_one_profile_make_one_entry_and_both_succeed() {
    let d = tempfile::tempdir().unwrap();
    let store = d.path().join("s");
    let spawn = || {
        imgd(&store)
            .args(["build", "hello", "--format", "ipxe", "--set", "hostname=concurrent", "--json"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn(), spawn());
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    assert!(
        a.status.success() && b.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&a.stderr),
        String::from_utf8_lossy(&b.stderr)
    );
    let (ja, jb) = (json(&a), json(&b));
    assert_eq!(ja["name"], jb["name"]);
    assert_eq!(entries(&store).len(), 1, "{:?}", entries(&store));
    // Exactly one of them did the work; the other waited and found it.
    assert_ne!(ja["cached"], jb["cached"]);
    ok(imgd(&store).args(["verify"]));
}

#[test]
fn kill_9_at_any_moment_leaves_nothing_that_looks_complete() {
    let d = tempfile::tempdir().unwrap();
    let store = d.path().join("s");
    // How long this build takes here (under a second once the kernel is
    // unpacked in imgd's cache), so the kills below land across all of it.
    let t = Instant::now();
    build(&d.path().join("timing"), &["hello", "--set", "hostname=killed"]);
    let took = t.elapsed();
    let (mut killed, mut completed) = (0, false);
    for part in [0.05, 0.25, 0.5, 0.75, 0.95] {
        let mut child = imgd(&store)
            .args(["build", "hello", "--set", "hostname=killed"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(took.mul_f64(part));
        let finished = child.try_wait().unwrap().is_some();
        child.kill().ok(); // SIGKILL
        child.wait().unwrap();
        let ls = json(&ok(imgd(&store).args(["ls", "--json"])));
        if finished {
            completed = true;
            break;
        }
        killed += 1;
        assert_eq!(ls.as_array().unwrap().len(), 0, "after kill at {part} of {took:?}: {ls}");
        assert!(entries(&store).is_empty(), "after kill at {part} of {took:?}: {:?}", entries(&store));
    }
    assert!(killed >= 2, "only {killed} builds were killed before they finished ({took:?} each)");
    // The next build completes, and gc clears what the killed ones left behind.
    let m = build(&store, &["hello", "--set", "hostname=killed"]);
    assert_eq!(m["cached"], completed, "a build that was not killed in time is found, else made");
    ok(imgd(&store).args(["verify"]));
    ok(imgd(&store).args(["gc", "--keep", "1"]));
    let leftovers: Vec<_> = std::fs::read_dir(store.join(".tmp")).unwrap().collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn verify_reports_a_corrupted_artifact() {
    let d = tempfile::tempdir().unwrap();
    let store = d.path().join("s");
    let m = build(&store, &["hello", "--format", "ipxe"]);
    ok(imgd(&store).args(["verify"]));
    let initrd = std::path::Path::new(m["path"].as_str().unwrap()).join("initrd");
    let mut bytes = std::fs::read(&initrd).unwrap();
    bytes[100] ^= 0x40;
    std::fs::write(&initrd, bytes).unwrap();
    let out = imgd(&store).args(["verify"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("CORRUPT") && text.contains("/initrd: expected"), "{text}");
}

#[test]
fn gc_keeps_the_newest_entries_of_each_profile() {
    let d = tempfile::tempdir().unwrap();
    let store = d.path().join("s");
    let start = Instant::now();
    let mut names = Vec::new();
    for host in ["gc-a", "gc-b", "gc-c"] {
        let m = build(&store, &["hello", "--format", "tar", "--set", &format!("hostname={host}")]);
        names.push(m["name"].as_str().unwrap().to_string());
        // built_at has one-second resolution.
        std::thread::sleep(Duration::from_millis(1100));
    }
    assert!(start.elapsed() < Duration::from_secs(120));
    assert_eq!(entries(&store).len(), 3);
    ok(imgd(&store).args(["gc", "--keep", "2"]));
    let left = entries(&store);
    assert_eq!(
        left,
        {
            let mut v = names[1..].to_vec();
            v.sort();
            v
        },
        "the oldest went"
    );
}

#[test]
fn a_build_sweeps_what_killed_builds_left_so_a_crash_loop_cannot_fill_the_disk() {
    let d = tempfile::tempdir().unwrap();
    let store = d.path().join("s");
    let tmp_names = || -> std::collections::BTreeSet<std::ffi::OsString> {
        std::fs::read_dir(store.join(".tmp"))
            .map_or_else(|_| Default::default(), |r| r.map(|e| e.unwrap().file_name()).collect())
    };
    let tmp_count = || tmp_names().len();
    for _ in 0..3 {
        let before = tmp_names();
        let mut child = imgd(&store)
            .args(["build", "hello", "--format", "raw", "--set", "hostname=looping"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // Killed as soon as a folder of its own exists (the build is done
        // well under a second later).
        let deadline = Instant::now() + Duration::from_secs(30);
        while tmp_names().is_subset(&before) {
            assert!(Instant::now() < deadline, "the build made no folder in .tmp");
            std::thread::sleep(Duration::from_millis(2));
        }
        assert!(child.try_wait().unwrap().is_none(), "the build finished before it could be killed");
        child.kill().ok();
        child.wait().unwrap();
        // Its own pending and work folders; the last one's were swept at its start.
        assert!(tmp_count() <= 2, "leftovers pile up: {}", tmp_count());
    }
    assert!(tmp_count() > 0, "the killed builds left folders");
    build(&store, &["hello", "--format", "raw", "--set", "hostname=looping"]);
    assert_eq!(tmp_count(), 0, "the build that finished swept them");
}

#[test]
fn gc_never_touches_a_running_build_or_an_entry_a_server_hands_out() {
    let d = tempfile::tempdir().unwrap();
    let store = d.path().join("s");
    // gc in a loop, as a cron job on a busy builder would, while a build runs.
    let mut b = imgd(&store)
        .args(["build", "hello", "--format", "ipxe", "--set", "hostname=gc-race"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let end = Instant::now() + Duration::from_secs(120);
    let mut rounds = 0;
    while b.try_wait().unwrap().is_none() {
        assert!(Instant::now() < end, "the build did not finish");
        ok(imgd(&store).args(["gc", "--keep", "1"]));
        rounds += 1;
    }
    let out = b.wait_with_output().unwrap();
    assert!(out.status.success(), "gc broke the build after {rounds} rounds: {}", String::from_utf8_lossy(&out.stderr));
    assert!(rounds > 3, "gc ran only {rounds} times during the build");

    // An older build a server hands out survives gc --keep 1 while it runs.
    let old = build(&store, &["hello", "--format", "ipxe", "--set", "hostname=gc-old"]);
    std::thread::sleep(Duration::from_millis(1100)); // built_at has one-second resolution
    let new = build(&store, &["hello", "--format", "ipxe", "--set", "hostname=gc-new"]);
    let (old, new) = (old["name"].as_str().unwrap().to_string(), new["name"].as_str().unwrap().to_string());
    let conf = d.path().join("machines.toml");
    std::fs::write(&conf, format!("[[group]]\nname = \"g\"\nentry = \"{old}\"\ndefault = true\n")).unwrap();
    let s = crate::serve::Serve::start(&store, &["--config", conf.to_str().unwrap()]);
    ok(imgd(&store).args(["gc", "--keep", "1"]));
    assert!(entries(&store).contains(&old), "gc removed what the server hands out: {:?}", entries(&store));
    assert!(entries(&store).contains(&new));
    let (st, _, _) = crate::serve::curl(&["-r", "0-0", &format!("{}/artifacts/{old}/vmlinuz", s.base)]);
    assert_eq!(st, 206);
    drop(s);
    ok(imgd(&store).args(["gc", "--keep", "1"]));
    assert!(!entries(&store).contains(&old), "with the server gone its root is gone too");
}
