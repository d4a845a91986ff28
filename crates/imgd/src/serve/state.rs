//! What the server serves, computed from machines.toml and the store: for each
//! group its store entry (or why there is none), and the set of entries whose
//! artifacts may be downloaded. Immutable once built; a reload builds a new one.

use super::machines::{Group, MachinesFile};
use crate::config::{self, LoadRequest};
use crate::store::{entry_name, Entry, Store};
use anyhow::Result;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// Where profiles and the store are, and what to do about missing builds.
#[derive(Debug, Clone)]
pub struct Sources {
    pub root: PathBuf,
    pub cache: PathBuf,
    pub store: PathBuf,
    pub machines: Option<PathBuf>,
    /// Serve every store entry and every built profile, not only those the
    /// machines file references.
    pub serve_all: bool,
    /// Build referenced profiles that are not in the store yet.
    pub build_missing: bool,
}

#[derive(Debug, Clone)]
pub struct Target {
    pub profile: String,
    /// The entry to boot, or why there is none.
    pub entry: Result<Entry, String>,
}

pub struct State {
    pub machines: MachinesFile,
    /// Group name -> what it boots.
    pub groups: BTreeMap<String, Target>,
    /// Profile name -> what `/profiles/<name>/boot.ipxe` boots.
    pub profiles: BTreeMap<String, Target>,
    /// Entry name -> entry, for `/artifacts/`.
    pub servable: BTreeMap<String, Entry>,
}

impl State {
    pub fn group(&self, g: &Group) -> Option<&Target> {
        self.groups.get(&g.name)
    }
}

/// The current build of a profile: resolve it, hash it, find (or build) it.
fn current(src: &Sources, store: &Store, profile: &str) -> Result<Entry, String> {
    let req = LoadRequest { profile: profile.to_string(), root: src.root.clone(), ..Default::default() };
    let recipe = config::recipe(&req, &src.cache, None).map_err(|e| e.to_string())?;
    let hash = crate::build::input_hash(&recipe);
    let name = entry_name(&hash, &recipe.name);
    match store.get(&name) {
        Ok(Some(e)) => Ok(e),
        Ok(None) if src.build_missing => {
            tracing::info!("building {profile} (not in the store)");
            let progress = crate::progress::Progress::new(false);
            crate::build::build(&recipe, store, &progress).map(|b| b.entry).map_err(|e| format!("{e:#}"))
        }
        Ok(None) => Err(format!("profile {profile} is not built on this server (run `imgd build {profile}`)")),
        Err(e) => Err(format!("{e:#}")),
    }
}

pub fn load(src: &Sources, machines: Option<MachinesFile>) -> Result<State> {
    let machines = match (machines, &src.machines) {
        (Some(m), _) => m,
        (None, Some(p)) => MachinesFile::load(p)?,
        (None, None) => MachinesFile::default(),
    };
    let store = Store::open(&src.store)?;
    let mut groups = BTreeMap::new();
    let mut profiles: BTreeMap<String, Target> = BTreeMap::new();
    let mut servable = BTreeMap::new();
    for g in &machines.groups {
        let target = match (&g.profile, &g.entry) {
            (Some(p), _) => {
                let t = profiles
                    .entry(p.clone())
                    .or_insert_with(|| Target { profile: p.clone(), entry: current(src, &store, p) })
                    .clone();
                if let Err(e) = &t.entry {
                    tracing::warn!("group {}: {e}", g.name);
                }
                t
            }
            (None, Some(name)) => {
                let entry = match store.get(name) {
                    Ok(Some(e)) => Ok(e),
                    Ok(None) => Err(format!("entry {name} is not in the store")),
                    Err(e) => Err(format!("{e:#}")),
                };
                let profile = entry.as_ref().map_or_else(|_| name.clone(), |e| e.manifest.profile.clone());
                Target { profile, entry }
            }
            (None, None) => unreachable!("checked when the machines file was parsed"),
        };
        if let Ok(e) = &target.entry {
            servable.insert(e.name.clone(), e.clone());
        }
        groups.insert(g.name.clone(), target);
    }
    if src.serve_all {
        for e in store.entries()? {
            servable.insert(e.name.clone(), e);
        }
        let dir = src.root.join("profiles");
        for f in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let name = f.file_name().to_string_lossy().into_owned();
            if let Some(p) = name.strip_suffix(".toml") {
                if !profiles.contains_key(p) {
                    let entry = current(&Sources { build_missing: false, ..src.clone() }, &store, p);
                    if let Ok(e) = &entry {
                        profiles.insert(p.to_string(), Target { profile: p.to_string(), entry: Ok(e.clone()) });
                    }
                }
            }
        }
    }
    for t in profiles.values() {
        if let Ok(e) = &t.entry {
            servable.insert(e.name.clone(), e.clone());
        }
    }
    Ok(State { machines, groups, profiles, servable })
}
