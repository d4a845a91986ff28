//! The lock file (`profiles/<name>.lock`): the exact package set of a
//! profile's Debian base, resolved from a signed index, committed beside the
//! profile. Builds install exactly this set, fetched by SHA-256; the build's
//! name hashes it, so the name says what the image holds.
//!
//! The file's format lives with the profile it pins: a recipe holds its lock.
//! Making one (the signed index, the dependency closure) is `crate::debian`'s.
use crate::fsutil::{IoAt, IoError};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub(crate) const LOCK_VERSION: u32 = 1;

/// Debian's archive keyring (package debian-archive-keyring): what a Debian
/// base's index signature is checked with, unless the profile names its own.
pub(crate) const DEBIAN_KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

/// A lock file that cannot be read or used, or a mirror URL imgd does not use.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(transparent)]
    Io(#[from] IoError),
    /// Not TOML of the lock's shape: where, and what the parser said.
    #[error("{}{}: {message}", path.display(), at.map(|(l, c)| format!(":{l}:{c}")).unwrap_or_default())]
    Toml { path: PathBuf, at: Option<(usize, usize)>, message: String },
    #[error("{}: not a usable lock", path.display())]
    Unusable {
        path: PathBuf,
        #[source]
        source: Box<LockError>,
    },
    /// A field a build would put in a path, a command or a hash is not one
    /// a lock can hold.
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Serialize(#[from] toml::ser::Error),
}

type Result<T, E = LockError> = std::result::Result<T, E>;

macro_rules! invalid {
    ($($t:tt)*) => { return Err(LockError::Invalid(format!($($t)*))) };
}

/// A mirror URL as a profile or lock gives it, checked where it enters: it
/// lands in the image's sources.list and a shell hook. The URL without its
/// trailing `/`.
pub(crate) fn checked_mirror_url(url: &str) -> Result<String> {
    let base = url.trim_end_matches('/').to_string();
    if !(base.starts_with("http://") || base.starts_with("https://") || base.starts_with("file:///")) {
        invalid!("mirror `{url}`: expected an http://, https:// or file:/// URL");
    }
    // A URL's own characters only.
    if !base.bytes().all(|b| b.is_ascii_graphic() && !b"'\"\\`$;&|<>".contains(&b)) {
        invalid!("mirror `{}`: characters a mirror URL does not have", base.escape_default());
    }
    Ok(base)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Variant {
    /// Essential: yes packages only.
    Essential,
    /// Essential + Priority: required + apt (debootstrap's and mmdebstrap's minbase).
    Minbase,
    /// minbase + Priority: important (debootstrap's default).
    Important,
}

impl std::str::FromStr for Variant {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "essential" => Ok(Variant::Essential),
            "minbase" | "required" => Ok(Variant::Minbase),
            "important" | "debootstrap" => Ok(Variant::Important),
            _ => Err(format!("unknown variant `{s}`: expected essential, minbase or important")),
        }
    }
}

impl std::fmt::Display for Variant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Variant::Essential => "essential",
            Variant::Minbase => "minbase",
            Variant::Important => "important",
        })
    }
}

/// What a lock was resolved for; a profile that asks for anything else needs
/// a new lock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    pub suite: String,
    pub architecture: String,
    pub variant: Variant,
    pub components: Vec<String>,
    /// The profile's packages, sorted.
    pub packages: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Locked {
    pub name: String,
    pub version: String,
    pub architecture: String,
    pub size: u64,
    pub sha256: String,
    /// Path below the mirror (`pool/main/…`).
    pub filename: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lock {
    pub lock_version: u32,
    /// The mirror it was resolved from (where builds fetch; not hashed: the
    /// same files from another mirror are the same image).
    pub mirror: String,
    /// The signed Release's `Date:`: how fresh the package set is.
    pub release_date: String,
    pub request: Request,
    #[serde(rename = "package")]
    pub packages: Vec<Locked>,
}

impl Lock {
    /// Reads and checks a lock file: every field a build will put in a path,
    /// a command line or a hash is checked here, where it enters.
    pub fn read(path: &Path) -> Result<Lock> {
        let text = std::fs::read_to_string(path).at("reading", path)?;
        let lock: Lock = toml::from_str(&text).map_err(|e| LockError::Toml {
            path: path.to_path_buf(),
            at: e.span().map(|s| super::error::line_col(&text, s.start)),
            message: e.message().trim().to_string(),
        })?;
        lock.check().map_err(|e| LockError::Unusable { path: path.to_path_buf(), source: Box::new(e) })?;
        Ok(lock)
    }

    pub(crate) fn check(&self) -> Result<()> {
        if self.lock_version != LOCK_VERSION {
            invalid!("lock_version {} (this imgd reads {LOCK_VERSION}): run `imgd lock` again", self.lock_version);
        }
        // Both land in the lock file's header comment, a line each.
        if self.mirror.contains(char::is_control) || self.release_date.contains(char::is_control) {
            invalid!("mirror or release_date holds a control character");
        }
        if self.packages.is_empty() {
            invalid!("no packages");
        }
        let name_ok = |s: &str| {
            !s.is_empty()
                && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"+-.:~_".contains(&b))
                && !s.starts_with('-')
        };
        let r = &self.request;
        if ![&r.suite, &r.architecture].into_iter().chain(&r.components).chain(&r.packages).all(|s| name_ok(s)) {
            invalid!("[request] holds a name that is not a Debian suite, architecture, component or package");
        }
        let mut seen = std::collections::HashSet::new();
        for p in &self.packages {
            if !name_ok(&p.name) || !name_ok(&p.version) || !name_ok(&p.architecture) {
                invalid!(
                    "package `{}` {} {}: not a Debian package name, version and architecture",
                    p.name,
                    p.version,
                    p.architecture
                );
            }
            if p.sha256.len() != 64 || !p.sha256.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
                invalid!("package {}: sha256 `{}` is not a lowercase SHA-256", p.name, p.sha256);
            }
            if p.filename.starts_with('/')
                || p.filename.split('/').any(|c| c == ".." || c.is_empty())
                || p.filename.contains(char::is_control)
            {
                invalid!("package {}: filename `{}` is not a path inside a mirror", p.name, p.filename);
            }
            if !seen.insert(&p.name) {
                invalid!("package {} is locked twice", p.name);
            }
        }
        Ok(())
    }

    /// TOML with a header saying what made it.
    pub(crate) fn to_toml(&self, profile: &str) -> Result<String> {
        let body = toml::to_string(self)?;
        Ok(format!(
            "# The package set of {profile}'s Debian base, resolved by `imgd lock`\n\
             # from the signed index of {} ({}).\n\
             # Commit it beside the profile; `imgd lock --update` re-resolves and\n\
             # shows what changed.\n\n{body}",
            self.mirror, self.release_date
        ))
    }

    /// Writes atomically: a lock is never seen half-written.
    pub fn write(&self, path: &Path, profile: &str) -> Result<()> {
        let text = self.to_toml(profile)?;
        Ok(crate::fsutil::write_atomic(path, text.as_bytes())?)
    }
}

/// One line of `imgd lock --update`'s report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Change {
    pub name: String,
    pub old: Option<String>,
    pub new: Option<String>,
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.old, &self.new) {
            (Some(o), Some(n)) => write!(f, "  ~ {} {o} -> {n}", self.name),
            (None, Some(n)) => write!(f, "  + {} {n}", self.name),
            (Some(o), None) => write!(f, "  - {} {o}", self.name),
            (None, None) => Ok(()),
        }
    }
}

/// What differs between two package sets (by name; a rebuilt package with
/// the same version but other bytes shows as a change too).
pub fn diff(old: &[Locked], new: &[Locked]) -> Vec<Change> {
    let o: BTreeMap<&str, &Locked> = old.iter().map(|p| (p.name.as_str(), p)).collect();
    let n: BTreeMap<&str, &Locked> = new.iter().map(|p| (p.name.as_str(), p)).collect();
    let mut names: Vec<&str> = o.keys().chain(n.keys()).copied().collect();
    names.sort();
    names.dedup();
    names
        .into_iter()
        .filter_map(|name| {
            let (a, b) = (o.get(name), n.get(name));
            let same = matches!((a, b), (Some(a), Some(b)) if a.version == b.version && a.sha256 == b.sha256);
            (!same).then(|| Change {
                name: name.to_string(),
                old: a.map(|p| p.version.clone()),
                new: b.map(|p| p.version.clone()),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pkg(name: &str, version: &str) -> Locked {
        Locked {
            name: name.into(),
            version: version.into(),
            architecture: "amd64".into(),
            size: 1,
            sha256: "ab".repeat(32),
            filename: format!("pool/main/{name}_{version}.deb"),
        }
    }

    fn lock(packages: Vec<Locked>) -> Lock {
        Lock {
            lock_version: LOCK_VERSION,
            mirror: "http://deb.debian.org/debian".into(),
            release_date: "Sat, 10 Aug 2024 09:33:28 UTC".into(),
            request: Request {
                suite: "bookworm".into(),
                architecture: "amd64".into(),
                variant: Variant::Minbase,
                components: vec!["main".into()],
                packages: vec!["sudo".into()],
            },
            packages,
        }
    }

    #[test]
    fn round_trips_through_toml_and_checks_what_it_reads() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("x.lock");
        let l = lock(vec![pkg("libc6", "2.36-9+deb12u7"), pkg("sudo", "1.9.13p3-1+deb12u1")]);
        l.write(&path, "x").unwrap();
        assert_eq!(Lock::read(&path).unwrap(), l);
        for (from, to) in [
            ("pool/main/sudo", "../../etc/sudo"),
            ("name = \"sudo\"", "name = \"sudo\\nrm -rf /\""),
            (&"ab".repeat(32)[..], &"AB".repeat(32)[..]),
        ] {
            std::fs::write(&path, l.to_toml("x").unwrap().replacen(from, to, 1)).unwrap();
            assert!(Lock::read(&path).is_err(), "accepted {to}");
        }
        std::fs::write(&path, "lock_version = 1\nbogus = 2\n").unwrap();
        let e = crate::model::Chain(&Lock::read(&path).unwrap_err()).to_string();
        assert!(e.contains("x.lock:"), "{e}");
    }

    #[test]
    fn diff_names_upgrades_additions_and_removals() {
        let old = [pkg("a", "1"), pkg("b", "1"), pkg("c", "1")];
        let mut rebuilt = pkg("c", "1");
        rebuilt.sha256 = "cd".repeat(32);
        let new = [pkg("a", "1"), pkg("b", "2"), rebuilt, pkg("d", "1")];
        let lines: Vec<String> = diff(&old, &new).iter().map(ToString::to_string).collect();
        assert_eq!(lines, ["  ~ b 1 -> 2", "  ~ c 1 -> 1", "  + d 1"]);
        assert!(diff(&old, &old).is_empty());
        assert_eq!(diff(&old[..1], &[]).len(), 1);
    }
}
