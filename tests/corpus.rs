//! The loaders of untrusted and user-written files against the seed corpus in
//! `tests/corpus/`: `ok-*` load, `bad-*` are refused with an error, and none
//! panics, hangs or overflows the stack.

use crate::common::repo;
use std::path::{Path, PathBuf};

fn seeds(kind: &str) -> Vec<(PathBuf, bool)> {
    let mut v: Vec<(PathBuf, bool)> = std::fs::read_dir(repo().join("tests/corpus").join(kind))
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| {
            let ok = p.file_name().unwrap().to_string_lossy().starts_with("ok-");
            (p, ok)
        })
        .collect();
    v.sort();
    assert!(v.len() >= 5, "the {kind} corpus is missing");
    v
}

/// A project the profile seeds can resolve in: a hardware file, a base folder
/// and a kernel file, named relative to `profiles/`.
fn project() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(d.path().join("hardware")).unwrap();
    std::fs::write(d.path().join("hardware/vm.toml"), "arch = \"x86_64\"\nfirmware = \"uefi\"\n").unwrap();
    std::fs::create_dir_all(d.path().join("rootfs/etc")).unwrap();
    std::fs::write(d.path().join("vmlinuz"), "not really a kernel").unwrap();
    std::fs::create_dir_all(d.path().join("profiles")).unwrap();
    d
}

#[test]
fn profile_seeds_load_or_fail_cleanly() {
    let d = project();
    for (seed, ok) in seeds("profiles") {
        let name = seed.file_name().unwrap().to_string_lossy().into_owned();
        std::fs::copy(&seed, d.path().join("profiles").join(&name)).unwrap();
        let req = imgd::config::LoadRequest {
            profile: name.trim_end_matches(".toml").to_string(),
            root: d.path().to_path_buf(),
            ..Default::default()
        };
        let cache = d.path().join("cache");
        let got = imgd::config::recipe(&req, &cache, None);
        assert_eq!(got.is_ok(), ok, "{name}: {:?}", got.as_ref().err().map(|e| e.to_string()));
        match got {
            // The manifest records every hashed field of the recipe, as hashed.
            Ok(recipe) => assert_eq!(
                serde_json::to_value(recipe.record().unwrap()).unwrap(),
                serde_json::to_value(&recipe).unwrap(),
                "{name}: the manifest's record of the recipe"
            ),
            Err(e) => {
                assert!(
                    e.file.ends_with(&name) || e.file == Path::new("--set"),
                    "{name}: the error names its file: {e}"
                )
            }
        }
    }
}

#[test]
fn machines_seeds_load_or_fail_cleanly() {
    for (seed, ok) in seeds("machines") {
        let text = std::fs::read_to_string(&seed).unwrap();
        let got = imgd::serve::boot::machines::MachinesFile::parse(&seed, &text);
        assert_eq!(got.is_ok(), ok, "{}: {:?}", seed.display(), got.err().map(|e| e.to_string()));
    }
}

#[test]
fn manifest_seeds_load_or_fail_cleanly() {
    for (seed, ok) in seeds("manifests") {
        let got = imgd::store::Manifest::read(&seed);
        assert_eq!(got.is_ok(), ok, "{}: {:?}", seed.display(), got.err().map(|e| format!("{e:#}")));
    }
}
