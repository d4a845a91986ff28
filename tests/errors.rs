//! Bad input: a clear error naming file, line and key, exit code 2, and
//! nothing added to the store.

use crate::common::*;

const GOOD: &str = r#"hardware = "qemu-x86_64"
formats = ["tar"]
[base]
debs = ["busybox-static"]
[kernel]
deb = "linux-image-[0-9]*"
"#;

/// Runs `imgd build` on a scratch project; returns stderr after checking the
/// exit code is 2 and the store holds no entry.
fn fails(profiles: &[(&str, &str)], args: &[&str]) -> String {
    let p = project(profiles);
    let store = p.path().join("store");
    let out = imgd(&store).env("IMGD_ROOT", p.path()).arg("build").args(args).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2), "expected exit 2, got {}: {stderr}", out.status);
    assert!(entries(&store).is_empty(), "store has entries after an error: {:?}", entries(&store));
    stderr
}

#[test]
fn unknown_key_names_file_line_column_and_key() {
    let bad = GOOD.replace("[kernel]", "colour = \"blue\"\n[kernel]");
    let e = fails(&[("p.toml", &bad)], &["p"]);
    assert!(e.contains("profiles/p.toml:5:1: key `colour`: unknown field `colour`"), "{e}");
}

#[test]
fn bad_values_name_their_line() {
    let bad = format!("{GOOD}[[files]]\npath = \"/x\"\ncontent = \"y\"\nmode = \"rwxr-xr-x\"\n");
    let e = fails(&[("p.toml", &bad)], &["p"]);
    assert!(e.contains("p.toml:10:8: key `mode`: invalid mode"), "{e}");
    let bad = format!("{GOOD}[disk]\nsize = \"12 parsecs\"\n");
    let e = fails(&[("p.toml", &bad)], &["p", "--format", "raw"]);
    assert!(e.contains("p.toml:8:8: key `size`: invalid size"), "{e}");
    let e = fails(&[("p.toml", &GOOD.replace("[\"tar\"]", "[\"iso\"]"))], &["p"]);
    assert!(e.contains("p.toml:2:") && e.contains("unknown variant `iso`"), "{e}");
}

#[test]
fn missing_inputs_name_the_key_that_wanted_them() {
    let bad = format!("{GOOD}[[files]]\npath = \"/etc/x\"\nsource = \"nope.txt\"\n");
    let e = fails(&[("p.toml", &bad)], &["p"]);
    assert!(e.contains("p.toml:9:1: key `files[0].source`") && e.contains("nope.txt"), "{e}");
    let e = fails(&[("p.toml", &GOOD.replace("busybox-static", "no-such-package"))], &["p"]);
    assert!(e.contains("p.toml:4:9: key `base.debs[0]`: no package matching `no-such-package`"), "{e}");
    let e = fails(&[("p.toml", &GOOD.replace("qemu-x86_64", "vax"))], &["p"]);
    assert!(e.contains("p.toml:1:1: key `hardware`: no hardware named `vax`"), "{e}");
}

#[test]
fn errors_in_a_parent_profile_point_into_the_parent() {
    let parent = GOOD.replace("[base]", "hostnme = \"x\"\n[base]");
    let child = "extends = \"parent.toml\"\nhostname = \"c\"\n";
    let e = fails(&[("parent.toml", &parent), ("child.toml", child)], &["child"]);
    assert!(e.contains("parent.toml:3:1: key `hostnme`"), "{e}");
}

#[test]
fn bad_set_and_hardware_errors_exit_2() {
    let e = fails(&[("p.toml", GOOD)], &["p", "--set", "disk.size=huge"]);
    assert!(e.contains("--set: key `disk.size=huge`: invalid size"), "{e}");
    let e = fails(&[("p.toml", GOOD)], &["p", "--set", "kernle.deb=x"]);
    assert!(e.contains("unknown field `kernle`"), "{e}");
    // A cache with amd64 packages only cannot build for aarch64 hardware.
    let amd64 = tempfile::tempdir().unwrap();
    std::fs::create_dir(amd64.path().join("debs")).unwrap();
    for e in std::fs::read_dir(cache_dir().join("debs")).unwrap() {
        let e = e.unwrap();
        if e.file_name().to_string_lossy().ends_with("_amd64.deb") {
            std::os::unix::fs::symlink(e.path(), amd64.path().join("debs").join(e.file_name())).unwrap();
        }
    }
    let cache = amd64.path().to_str().unwrap();
    let e = fails(&[("p.toml", GOOD)], &["p", "--hardware", "metal-aarch64", "--cache-dir", cache]);
    assert!(
        e.contains("no package matching `busybox-static` for arm64") && e.contains("found only other architectures"),
        "{e}"
    );
    let e = fails(
        &[("p.toml", GOOD), ("../hardware/broken.toml", "arch = \"x86_64\"\nfirmware = \"efi\"\n")],
        &["p", "--hardware", "broken"],
    );
    assert!(e.contains("hardware/broken.toml:2:12: key `firmware`: unknown variant `efi`"), "{e}");
}

#[test]
fn an_unknown_profile_lists_the_known_ones() {
    let e = fails(&[("hello.toml", GOOD)], &["helo"]);
    assert!(e.contains("no profile named `helo` (known: hello)"), "{e}");
}

#[test]
fn a_module_the_kernel_lacks_is_reported_against_the_hardware() {
    let p = GOOD.replace("[kernel]", "[kernel]\nextra_modules = [\"no_such_driver\"]");
    let e = fails(&[("p.toml", &p)], &["p"]);
    assert!(e.contains("module `no_such_driver` is not in kernel 6."), "{e}");
}

#[test]
fn a_key_a_parent_set_that_fails_during_the_build_names_the_parent_file() {
    let parent = GOOD.replace("[kernel]", "[services]\nenable = [\"nope.service\"]\n[kernel]");
    let child = "extends = \"parent.toml\"\nhostname = \"c\"\n";
    let e = fails(&[("parent.toml", &parent), ("child.toml", child)], &["child"]);
    assert!(e.contains("parent.toml:6:11: key `services.enable[0]`: unit nope.service is not in the image"), "{e}");
    let parent = GOOD.replace("[kernel]", "[kernel]\nextra_modules = [\"no_such_driver\"]");
    let e = fails(&[("parent.toml", &parent), ("child.toml", child)], &["child"]);
    assert!(e.contains("parent.toml:6:1: key `kernel.extra_modules`"), "{e}");
    // init is checked against the image, where the key was set.
    let e = fails(&[("parent.toml", &format!("init = \"/bin/nope\"\n{GOOD}")), ("child.toml", child)], &["child"]);
    assert!(e.contains("parent.toml:1:1: key `init`: /bin/nope is not an executable file in the image"), "{e}");
}

#[test]
fn control_characters_in_strings_that_land_in_files_are_refused() {
    for (set, key) in [
        (r#"users=[{name="x",shell="/bin/sh\nr00t::0:0::/root:/bin/sh"}]"#, "users[0].shell"),
        (r#"users=[{name="x",home="/home/x:0:0"}]"#, "users[0].home"),
        (
            r#"users=[{name="x",ssh_authorized_keys=["ssh-ed25519 AAAA a\nssh-ed25519 BBBB evil"]}]"#,
            "users[0].ssh_authorized_keys[0]",
        ),
        (r#"users=[{name="x",groups=["sudo\nroot"]}]"#, "users[0].groups[0]"),
        (r#"users=[{name="r00t:x"}]"#, "users[0].name"),
        (r#"hostname="web\n127.0.0.1 evil""#, "hostname"),
        (r#"cmdline="quiet\ninit=/bin/sh""#, "cmdline"),
        (r#"init="/sbin/init x""#, "init"),
        (r#"files=[{path="/etc/a\nb",content="x"}]"#, "files[0].path"),
        (r#"files=[{path="/etc/a",symlink="/x\ny"}]"#, "files[0].symlink"),
        (r#"services={enable=["a\nb.service"]}"#, "services.enable[0]"),
        (r#"ready_marker="A\u001b[2J""#, "ready_marker"),
    ] {
        let e = fails(&[("p.toml", GOOD)], &["p", "--set", set]);
        assert!(e.contains("--set") && e.contains(&format!("key `{key}`")), "{set}: {e}");
    }
}

#[test]
fn a_very_deep_set_key_is_an_error_not_a_crash() {
    let deep = format!("{}=1", vec!["a"; 20_000].join("."));
    let e = fails(&[("p.toml", GOOD)], &["p", "--set", &deep]);
    assert!(e.contains("keys are at most 8 levels deep"), "{e}");
    let nested = format!("disk={}1{}", "[".repeat(20_000), "]".repeat(20_000));
    let e = fails(&[("p.toml", GOOD)], &["p", "--set", &nested]);
    assert!(e.contains("--set"), "{e}");
}
