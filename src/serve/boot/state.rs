//! What the server serves, computed from machines.toml and the store: for each
//! group its store entry (or why there is none), the profiles whose scripts
//! are served, and who may download what. Immutable once built; a reload
//! builds a new one from the files and the state it replaces.
//!
//! Continuity: a group never loses a bootable entry it had. A `profile = `
//! group boots the profile's exact current build when the store has it; else
//! (a tool upgrade changed the input hash, the store was copied from a build
//! host, the profile was edited before a SIGHUP) the entry it booted before
//! the reload, else the newest complete entry of that profile and hardware,
//! with a warning and `imgd_group_stale` set; only with none of those is the
//! group without a boot.
//!
//! Downloads follow the machines file: a client may fetch an entry's files
//! only if a group that boots the entry admits it (no `source` selector, or
//! one containing its address), and only the files a boot needs (kernel,
//! initrd, script; the UKI for `http_boot = "uki"`) unless the group lists
//! more in `downloads`. `--serve-all`
//! serves every entry and file to every client.

use super::error::Result;
use super::machines::{Group, HttpBoot, MachinesFile};
use crate::build::fetch_only;
use crate::config::{self, LoadRequest};
use crate::model::manifest::{Artifact, ArtifactName};
use crate::model::Chain;
use crate::model::EntryName;
use crate::model::Format;
use crate::store::{Entry, Store};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Where profiles and the store are, and what to do about missing builds.
#[derive(Debug, Clone)]
pub struct Sources {
    pub root: PathBuf,
    pub cache: PathBuf,
    pub store: PathBuf,
    pub machines: Option<PathBuf>,
    /// Serve every store entry and every built profile to everyone, not only
    /// what the machines file gives to whom.
    pub serve_all: bool,
    /// Build referenced profiles that are not in the store yet.
    pub build_missing: bool,
    /// The shared build cache (`--cache s3://…`): entries
    /// missing here are fetched from it (and checked) before any build, so
    /// a replica with only the machines file and the bucket serves the same.
    pub remote_cache: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Target {
    pub profile: String,
    /// The entry to boot, or why there is none. Shared: a fleet's machines
    /// file has hundreds of groups booting a few entries.
    pub entry: Result<Arc<Entry>, String>,
    /// The entry is not the profile's current build (see the module docs).
    pub stale: bool,
    /// Its boot script, rendered at its first request.
    pub(crate) script: ScriptCache,
}

impl Target {
    pub(crate) fn new(profile: String, entry: Result<Arc<Entry>, String>, stale: bool) -> Target {
        Target { profile, entry, stale, script: ScriptCache::default() }
    }
}

/// A group's (or a profile's) boot script, rendered once for the state's
/// life with the machine's own line left open, or why it cannot boot: all
/// else in it (entry, command line, `vars`, signing) changes only with a
/// reload, which makes a new state. A clone starts empty, as the clone
/// serves another group.
#[derive(Default)]
pub(crate) struct ScriptCache(std::sync::OnceLock<std::result::Result<super::render::Rendered, String>>);

impl ScriptCache {
    pub(crate) fn get_or_init(
        &self,
        render: impl FnOnce() -> std::result::Result<super::render::Rendered, String>,
    ) -> &std::result::Result<super::render::Rendered, String> {
        self.0.get_or_init(render)
    }
}

impl Clone for ScriptCache {
    fn clone(&self) -> Self {
        ScriptCache::default()
    }
}

impl std::fmt::Debug for ScriptCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.get().is_some() { "ScriptCache(rendered)" } else { "ScriptCache(empty)" })
    }
}

pub struct State {
    pub machines: MachinesFile,
    /// Group name -> what it boots.
    pub groups: BTreeMap<String, Target>,
    /// Profile name -> what `/profiles/<name>/boot.ipxe` boots.
    pub profiles: BTreeMap<String, Target>,
    /// Entry name -> entry, for `/artifacts/`.
    pub entries: BTreeMap<EntryName, Arc<Entry>>,
    /// Group name -> the signed UKI set it hands out (`signed_with`), or why none.
    pub signed: BTreeMap<String, Result<crate::sign::Signed, String>>,
    pub serve_all: bool,
    /// Signs scripts and boot files for iPXE (`[ipxe_signing]`), with its caches.
    pub signer: Option<std::sync::Arc<super::imgverify::Signer>>,
}

/// The files every boot needs; others (disks, tarballs) only where a group opts in.
pub(crate) const BOOT_FILES: [ArtifactName; 3] = [ArtifactName::Kernel, ArtifactName::Initrd, ArtifactName::Script];

impl State {
    pub(crate) fn group(&self, g: &Group) -> Option<&Target> {
        self.groups.get(&g.name)
    }

    /// The group that lets `client` download `art` of `entry` (`*` for
    /// `--serve-all`), if one does.
    pub(crate) fn download_group(&self, client: IpAddr, entry: &EntryName, art: &Artifact) -> Option<&str> {
        if self.serve_all {
            return Some("*");
        }
        // Cheapest test first: in a fleet's file most groups do not admit
        // the client, and the group-name lookup is the costly one (a
        // download from a 201-group file: ~3% of the server's CPU before).
        let g = self.machines.groups.iter().find(|g| {
            let file_ok = || {
                (art.format == Format::Ipxe && BOOT_FILES.contains(&art.name))
                    || (art.name == ArtifactName::Uki && g.http_boot == HttpBoot::Uki)
                    || g.downloads.contains(&art.name)
            };
            let boots = || self.groups.get(&g.name).is_some_and(|t| t.entry.as_ref().is_ok_and(|e| &e.name == entry));
            g.admits(client) && file_ok() && boots()
        });
        g.map(|g| g.name.as_str())
    }

    /// The signed copy of `file` of `entry` made with the certificate whose
    /// fingerprint starts with `cert`, if a group that admits `client` hands it out.
    pub(crate) fn signed_file(
        &self,
        client: IpAddr,
        entry: &EntryName,
        cert: &str,
        file: &str,
    ) -> Option<(PathBuf, crate::sign::SignedFile)> {
        self.machines.groups.iter().find_map(|g| {
            let set = self.signed.get(&g.name)?.as_ref().ok()?;
            let ok = &set.record.entry == entry && set.record.cert_sha256.starts_with(cert) && g.admits(client);
            let f = set.record.files.iter().find(|f| f.file == file).filter(|_| ok)?;
            Some((set.dir.join(file), f.clone()))
        })
    }

    /// Whether `client` may fetch profile `name`'s script.
    pub(crate) fn may_boot_profile(&self, client: IpAddr, name: &str) -> bool {
        self.serve_all
            || self.machines.groups.iter().any(|g| {
                g.admits(client) && self.groups.get(&g.name).is_some_and(|t| t.profile == name && t.entry.is_ok())
            })
    }

    /// Every entry this state hands out (for the store's GC root).
    pub fn served(&self) -> Vec<EntryName> {
        self.entries.keys().cloned().collect()
    }

    /// Groups booting something other than their profile's current build.
    pub fn stale_groups(&self) -> Vec<(&str, &Target)> {
        self.groups.iter().filter(|(_, t)| t.stale).map(|(g, t)| (g.as_str(), t)).collect()
    }
}

/// The entry the profile's current recipe builds: in the store, fetched,
/// or built as the server's sources allow; why not, if none.
fn exact_entry(
    src: &Sources,
    store: &Store,
    remote: Option<&dyn crate::store::remote::Remote>,
    profile: &str,
    r: &crate::config::Recipe,
) -> Result<Entry, String> {
    let name = EntryName::of(&crate::build::input_hash(r), &r.name).map_err(|e| e.to_string())?;
    match store.get(&name) {
        Ok(Some(e)) => Ok(e),
        Ok(None) if !src.build_missing && remote.is_some() => match remote.map(|c| (c, fetch_only(r, store, c))) {
            Some((_, Ok(Some(e)))) => Ok(e),
            Some((c, Ok(None))) => Err(format!("profile {profile} is not built here nor in {}", c.url())),
            Some((c, Err(e))) => Err(format!("{name} from {}: {}", c.url(), Chain(&e))),
            None => Err(format!("profile {profile} is not built on this server")),
        },
        Ok(None) if src.build_missing => {
            tracing::info!("building {profile} (not in the store)");
            let progress = crate::progress::Progress::new(false);
            // The same pipeline as `imgd build`: signed as its profile asks.
            crate::build::entry(r, store, &progress, remote).map(|b| b.entry).map_err(|e| Chain(&e).to_string())
        }
        Ok(None) => Err(format!("profile {profile} is not built on this server (run `imgd build {profile}`)")),
        Err(e) => Err(Chain(&e).to_string()),
    }
}

/// The current build of a profile: resolve it, hash it, find (or build) it;
/// failing that, what `previous` booted, else the newest build of it.
fn current(
    src: &Sources,
    store: &Store,
    remote: Option<&dyn crate::store::remote::Remote>,
    profile: &str,
    previous: Option<&Target>,
) -> Target {
    let req = LoadRequest { profile: profile.to_string(), root: src.root.clone(), ..Default::default() };
    // The same pipeline as `imgd build` (never --unlocked: a server boots
    // pinned package sets only).
    let recipe = config::load(&req)
        .map_err(crate::build::BuildError::from)
        .and_then(|l| crate::build::recipe(&l, &src.cache, None, false));
    let exact = match &recipe {
        Ok(r) => exact_entry(src, store, remote, profile, r),
        Err(e) => Err(Chain(e).to_string()),
    };
    let why = match exact {
        Ok(e) => return Target::new(profile.into(), Ok(Arc::new(e)), false),
        Err(why) => why,
    };
    let kept = previous.and_then(|t| t.entry.as_ref().ok()).and_then(|e| store.get(&e.name).ok().flatten());
    let hardware = recipe.as_ref().ok().map(|r| r.hardware.clone());
    let fallback = kept.or_else(|| newest(store, profile, hardware.as_deref()));
    match fallback {
        Some(e) => {
            tracing::warn!("profile {profile}: {why}; serving {} instead (built {})", e.name, e.manifest.built_at);
            Target::new(profile.into(), Ok(Arc::new(e)), true)
        }
        None => Target::new(profile.into(), Err(why), false),
    }
}

/// The newest complete, netbootable entry of `profile` (for `hardware`, when known).
fn newest(store: &Store, profile: &str, hardware: Option<&str>) -> Option<Entry> {
    let entries = store.entries().ok()?;
    entries.into_iter().rev().find(|e| {
        let m = &e.manifest;
        m.profile == profile
            && hardware.is_none_or(|h| m.hardware == h)
            && m.artifact(Format::Ipxe, ArtifactName::Kernel).is_some()
            && m.artifact(Format::Ipxe, ArtifactName::Initrd).is_some()
    })
}

/// A group's `entry`, read from the store once however many groups boot it
/// (one that is missing or unreadable too: `unreadable` keeps why).
fn stored_entry(
    store: &Store,
    name: &EntryName,
    entries: &BTreeMap<EntryName, Arc<Entry>>,
    unreadable: &mut BTreeMap<EntryName, String>,
) -> Result<Arc<Entry>, String> {
    if let Some(e) = entries.get(name) {
        return Ok(Arc::clone(e));
    }
    if let Some(why) = unreadable.get(name) {
        return Err(why.clone());
    }
    let got = match store.get(name) {
        Ok(Some(e)) => Ok(Arc::new(e)),
        Ok(None) => Err(format!("entry {name} is not in the store")),
        Err(e) => Err(Chain(&e).to_string()),
    };
    if let Err(why) = &got {
        unreadable.insert(name.clone(), why.clone());
    }
    got
}

/// Builds the state from the sources (`machines` overrides the file);
/// `previous` is the state a reload replaces.
pub fn load(src: &Sources, machines: Option<MachinesFile>, previous: Option<&State>) -> Result<State> {
    let machines = match (machines, &src.machines) {
        (Some(m), _) => m,
        (None, Some(p)) => MachinesFile::load(p)?,
        (None, None) => MachinesFile::default(),
    };
    let store = Store::open(&src.store)?;
    let remote = match &src.remote_cache {
        Some(url) => crate::store::settings::configured(Some(url), &src.root, None)?,
        None => None,
    };
    let remote = remote.as_deref();
    let mut groups = BTreeMap::new();
    let mut profiles: BTreeMap<String, Target> = BTreeMap::new();
    let mut entries: BTreeMap<EntryName, Arc<Entry>> = BTreeMap::new();
    let mut unreadable: BTreeMap<EntryName, String> = BTreeMap::new();
    for g in &machines.groups {
        let before = previous.and_then(|p| p.groups.get(&g.name));
        let target = match (&g.profile, &g.entry) {
            (Some(p), _) => {
                let t = profiles.entry(p.clone()).or_insert_with(|| current(src, &store, remote, p, before)).clone();
                if let Err(e) = &t.entry {
                    tracing::warn!("group {}: {e}", g.name);
                }
                t
            }
            (None, Some(name)) => {
                let entry = stored_entry(&store, name, &entries, &mut unreadable);
                let profile = entry.as_ref().map_or_else(|_| name.to_string(), |e| e.manifest.profile.clone());
                Target::new(profile, entry, false)
            }
            // MachinesFile::parse refuses a group with neither.
            (None, None) => Target::new(String::new(), Err("no profile or entry".into()), false),
        };
        if let Ok(e) = &target.entry {
            entries.insert(e.name.clone(), e.clone());
        }
        groups.insert(g.name.clone(), target);
    }
    if src.serve_all {
        for e in store.entries()? {
            entries.entry(e.name.clone()).or_insert_with(|| Arc::new(e));
        }
        let dir = src.root.join("profiles");
        for f in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let name = f.file_name().to_string_lossy().into_owned();
            if let Some(p) = name.strip_suffix(".toml").filter(|p| crate::model::valid_name(p)) {
                if !profiles.contains_key(p) {
                    let quiet = Sources { build_missing: false, ..src.clone() };
                    let t = current(&quiet, &store, None, p, previous.and_then(|s| s.profiles.get(p)));
                    if t.entry.is_ok() {
                        profiles.insert(p.to_string(), t);
                    }
                }
            }
        }
    }
    for t in profiles.values() {
        if let Ok(e) = &t.entry {
            entries.insert(e.name.clone(), e.clone());
        }
    }
    let mut signed = BTreeMap::new();
    for g in &machines.groups {
        let (Some(fp), Some(Ok(entry))) = (&g.signed_with_sha256, groups.get(&g.name).map(|t| &t.entry)) else {
            continue;
        };
        let set = match crate::sign::find(&store, entry, fp) {
            Ok(Some(set)) => Ok(set),
            Ok(None) => Err(format!(
                "{} has no UKI signed with {} (run `imgd sign {} --key … --cert …`)",
                entry.name,
                g.signed_with.as_deref().unwrap_or(Path::new("?")).display(),
                entry.manifest.profile
            )),
            Err(e) => Err(Chain(&e).to_string()),
        };
        if let Err(e) = &set {
            tracing::warn!("group {}: {e}; its HTTP boot machines get nothing", g.name);
        }
        signed.insert(g.name.clone(), set);
    }
    // Signatures of store files stay valid across reloads (entries are
    // immutable): keep the cache when the key and certificate are the same.
    let signer = match (&machines.ipxe_signing, previous.and_then(|p| p.signer.as_ref())) {
        (Some(s), Some(old)) if old.signing == *s => Some(old.clone()),
        (Some(s), _) => Some(std::sync::Arc::new(super::imgverify::Signer::new(s.clone()))),
        (None, _) => None,
    };
    Ok(State { machines, groups, profiles, entries, signed, serve_all: src.serve_all, signer })
}
/// The state being served, swapped whole on reload: requests in flight keep
/// the one they started with. An `ArcSwap`, not a `RwLock<Arc>`: every
/// request reads it, and its read writes only the reading thread's own slot
/// (a lock word and the Arc's count were written by every request on every
/// core).
pub struct Current(arc_swap::ArcSwap<State>);

impl Current {
    pub(crate) fn new(state: State) -> Current {
        Current(arc_swap::ArcSwap::from_pointee(state))
    }

    /// The state, to keep (e.g. across a download).
    pub(crate) fn get(&self) -> std::sync::Arc<State> {
        self.0.load_full()
    }

    /// The state, for the length of one answer.
    pub(crate) fn load(&self) -> arc_swap::Guard<std::sync::Arc<State>> {
        self.0.load()
    }

    pub(crate) fn replace(&self, state: State) {
        self.0.store(std::sync::Arc::new(state));
    }
}

impl State {
    /// `imgd_group_stale`: 1 for each group booting an entry other than its
    /// profile's current build (Prometheus text format).
    pub(crate) fn stale_metrics(&self) -> String {
        use crate::serve::http::metrics::esc;
        use std::fmt::Write;
        let mut s = String::new();
        s.push_str("# HELP imgd_group_stale 1 when a group boots an entry other than its profile's current build.\n");
        s.push_str("# TYPE imgd_group_stale gauge\n");
        for (g, t) in &self.groups {
            let entry = t.entry.as_ref().map_or("", |e| e.name.as_str());
            let _ = writeln!(
                s,
                "imgd_group_stale{{group=\"{}\",profile=\"{}\",entry=\"{}\"}} {}",
                esc(g),
                esc(&t.profile),
                esc(entry),
                u8::from(t.stale)
            );
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fleet's machines file names one entry in many groups: the store is
    /// read for it once and every group holds the same copy.
    #[test]
    fn groups_booting_one_entry_share_it() {
        let dir = tempfile::tempdir().unwrap();
        let hash = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        let name = format!("{}-storm", &hash[..32]);
        let entry_dir = dir.path().join("store").join(&name);
        std::fs::create_dir_all(&entry_dir).unwrap();
        let mut artifacts = Vec::new();
        for (file, kind) in [("vmlinuz", "kernel"), ("initrd", "initrd")] {
            std::fs::write(entry_dir.join(file), file).unwrap();
            let b3 = blake3::hash(file.as_bytes()).to_hex().to_string();
            artifacts.push(
                serde_json::json!({"name": kind, "format": "ipxe", "file": file, "size": file.len(), "blake3": b3}),
            );
        }
        let manifest = serde_json::json!({"name": name, "hash": hash, "profile": "storm", "hardware": "qemu-x86_64",
            "arch": "x86_64", "firmware": "uefi", "imgd_version": "test", "built_at": 0, "source_date_epoch": 0,
            "artifacts": artifacts, "recipe": {"cmdline": "console=ttyS0"}});
        std::fs::write(entry_dir.join("manifest.json"), manifest.to_string()).unwrap();
        let mut text = String::new();
        for r in 1..=3 {
            text += &format!(
                "[[group]]\nname = \"rack-{r}\"\nentry = \"{name}\"\nselector = {{ source = [\"10.{r}.0.0/16\"] }}\n"
            );
        }
        let machines = MachinesFile::parse(Path::new("machines.toml"), &text).unwrap();
        let src = Sources {
            root: dir.path().into(),
            cache: dir.path().join("cache"),
            store: dir.path().join("store"),
            machines: None,
            serve_all: false,
            build_missing: false,
            remote_cache: None,
        };
        let st = load(&src, Some(machines), None).unwrap();
        let booted: Vec<&Arc<Entry>> = st.groups.values().map(|t| t.entry.as_ref().unwrap()).collect();
        assert_eq!(booted.len(), 3);
        assert!(booted.iter().all(|e| Arc::ptr_eq(e, booted[0])), "each group has its own copy");
        assert!(Arc::ptr_eq(&st.entries[&booted[0].name], booted[0]));
        assert_eq!(booted[0].manifest.profile, "storm");
    }
}
