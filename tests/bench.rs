//! `scripts/bench.sh` in its quick form (QUICK=1): every mode runs on a
//! machine set up by scripts/setup.sh and prints its figures. Timings are not
//! asserted (machines are noisy); that the benchmark works, is.

use crate::common::repo;
use std::process::Command;

/// Runs one mode and returns its `figure` lines as (name, imgd value).
fn quick(mode: &str) -> Vec<(String, f64)> {
    let out = Command::new("timeout")
        .args(["--kill-after=10", "600", "bash"])
        .arg(repo().join("scripts/bench.sh"))
        .arg(mode)
        .env("QUICK", "1")
        .env("IMGD_BIN", env!("CARGO_BIN_EXE_imgd"))
        // `cargo test` builds the examples beside the binaries' folder.
        .env("STORM_BIN", std::path::Path::new(env!("CARGO_BIN_EXE_imgd")).with_file_name("examples").join("storm"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "bench.sh {mode} failed ({}):\n{stdout}\n{stderr}", out.status);
    let figures: Vec<(String, f64)> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("figure "))
        .map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            assert_eq!(f.len(), 5, "figure lines are: name imgd anchor unit ratio: {l}");
            let value = f[1].parse().unwrap_or_else(|_| panic!("not a number: {l}"));
            for v in [f[2], f[4]] {
                assert!(v == "-" || v.parse::<f64>().is_ok(), "anchor and ratio are numbers or -: {l}");
            }
            (f[0].to_string(), value)
        })
        .collect();
    assert!(!figures.is_empty(), "bench.sh {mode} printed no figures:\n{stdout}");
    assert!(figures.iter().all(|(n, _)| n.starts_with(&format!("{mode}."))), "{figures:?}");
    figures
}

fn named<'a>(figures: &'a [(String, f64)], name: &str) -> &'a f64 {
    &figures.iter().find(|(n, _)| n == name).unwrap_or_else(|| panic!("no figure {name}: {figures:?}")).1
}

#[test]
fn bench_build_runs_in_its_quick_form() {
    let f = quick("build");
    assert!(*named(&f, "build.cold") > 0.0);
    assert!(*named(&f, "build.cache_hit") > 0.0);
    assert!(*named(&f, "build.changed") > 0.0);
}

#[test]
fn bench_boot_runs_in_its_quick_form() {
    let f = quick("boot");
    // (The quick form boots the kernel only: tests/boot.rs netboots and
    // disk-boots hello.)
    assert!(*named(&f, "boot.kernel") > 0.0);
}

#[test]
fn bench_compose_runs_in_its_quick_form() {
    let f = quick("compose");
    assert!(*named(&f, "compose.boot4") > 0.0);
    assert!(*named(&f, "compose.total") > *named(&f, "compose.boot4"));
    assert!(*named(&f, "compose.node_rss_mib") > 0.0, "a node's qemu was sampled");
}

#[test]
fn bench_serve_runs_in_its_quick_form() {
    let f = quick("serve");
    assert!(*named(&f, "serve.artifact_64c") > 0.0);
    assert!(*named(&f, "serve.ipxe_cpu_us") > 0.0, "the servers' CPU per render is measured");
    if std::thread::available_parallelism().map_or(1, |n| n.get()) >= 2 {
        assert!(*named(&f, "serve.ipxe_render_own_cores") > 0.0, "renders measured with wrk off the servers' core");
    }
    assert_eq!(*named(&f, "serve.errors_200c"), 0.0, "downloads under load end without errors");
    assert!(*named(&f, "serve.artifact_200c") > 0.0, "the storm on one big artifact ran beside nginx");
}

#[test]
fn bench_sync_runs_in_its_quick_form() {
    let f = quick("sync");
    assert!(*named(&f, "sync.upload") > 0.0);
    assert_eq!(*named(&f, "sync.rerun_mutating_calls"), 0.0, "a re-run changes nothing");
}

#[test]
fn bench_ebs_runs_in_its_quick_form() {
    let f = quick("ebs");
    assert!(*named(&f, "ebs.blocks_per_s") > 0.0);
}

#[test]
fn bench_debian_runs_in_its_quick_form() {
    let f = quick("debian");
    assert!(*named(&f, "debian.rebuild") > 0.0);
}

#[test]
fn bench_storm_runs_in_its_quick_form() {
    let f = quick("storm");
    assert_eq!(*named(&f, "storm.errors"), 0.0, "a storm of a few hundred machines has no errors");
    assert!(*named(&f, "storm.renders_per_s") > 0.0);
    assert!(*named(&f, "storm.peak_rss") > 0.0);
    // Every machine of the storm is a row of the status page afterwards.
    assert!(*named(&f, "storm.status_rows") >= 300.0, "{f:?}");
    assert!(*named(&f, "storm.status_html_ms") > 0.0);
    // The proxyDHCP phase (CI runs as root): every machine offered and acked.
    assert_eq!(*named(&f, "storm.dhcp_errors"), 0.0);
    assert!(*named(&f, "storm.dhcp_offer_p99") > 0.0);
    // The code the server runs lies together in the binary (build.rs) only if
    // this build still has the names scripts/hot-symbols.txt lists: about
    // 2/5 of them, the rest being those of the build without AWS and of the
    // plain (not CI's) builds. Fewer means a dependency or the toolchain
    // renamed them. Names count without LLVM's `.llvm.HASH` endings, which
    // change with any edit and which scripts/linker-wrapper.sh follows.
    let list = std::fs::read_to_string(repo().join("scripts/hot-symbols.txt")).unwrap();
    let bare = |n: &str| n.split_once(".llvm.").map_or(n, |(b, _)| b).to_string();
    let listed = list.lines().map(bare).collect::<std::collections::HashSet<_>>().len() as f64;
    let found = *named(&f, "storm.dhcp_hot_functions");
    assert!(found >= listed / 3.0, "{found} of {listed} hot functions found: run scripts/hot-symbols.sh");
}

#[test]
fn bench_scratch_runs_in_its_quick_form() {
    let f = quick("scratch");
    assert!(*named(&f, "scratch.ready") > *named(&f, "scratch.init"), "/scratch is ready after init starts");
}
