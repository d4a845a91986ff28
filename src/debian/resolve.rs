//! Which packages a base needs: the variant's seed set (as mmdebstrap and
//! debootstrap define the variants) plus the profile's packages, closed over
//! Pre-Depends and Depends. Recommends are not followed (as with both tools).
//!
//! One alternative per group: one already chosen if any satisfies it, else
//! the first that the index can satisfy, a real package before a virtual one
//! (apt's order). The build installs exactly this set, so where apt would
//! have chosen otherwise the lock still says what the image holds.

use super::error::{DebianError, Result};
use super::index::{Index, Package, Relation};
use crate::config::lock::Variant;
use std::collections::{BTreeMap, VecDeque};

/// The closure of the seeds and `requested`, sorted by name.
pub fn resolve<'a>(index: &'a Index, variant: Variant, requested: &[String]) -> Result<Vec<&'a Package>> {
    let mut seeds: Vec<&Package> = index
        .packages
        .values()
        .filter(|p| {
            p.essential
                || match variant {
                    Variant::Essential => false,
                    Variant::Minbase => p.priority == "required" || p.name == "apt",
                    Variant::Important => ["required", "important"].contains(&p.priority.as_str()) || p.name == "apt",
                }
        })
        .collect();
    seeds.sort_by(|a, b| a.name.cmp(&b.name));
    for r in requested {
        match index.packages.get(r) {
            Some(p) => seeds.push(p),
            None => match index.providers.get(r).map(Vec::as_slice) {
                Some([only]) => seeds.extend(index.packages.get(only)),
                Some(many) => return Err(DebianError::Virtual { name: r.clone(), providers: many.to_vec() }),
                None => return Err(DebianError::NotInIndex(r.clone())),
            },
        }
    }
    let mut chosen: BTreeMap<&str, &Package> = BTreeMap::new();
    let mut queue = VecDeque::new();
    for p in seeds {
        if chosen.insert(&p.name, p).is_none() {
            queue.push_back(p);
        }
    }
    while let Some(p) = queue.pop_front() {
        for group in &p.depends {
            if group.iter().any(|r| satisfied(&chosen, r)) {
                continue;
            }
            let Some(pick) = group.iter().find_map(|r| candidate(index, r)) else {
                let alts: Vec<String> = group.iter().map(ToString::to_string).collect();
                return Err(DebianError::Unsatisfied {
                    package: p.name.clone(),
                    version: p.version.to_string(),
                    wants: alts.join(" | "),
                });
            };
            if chosen.insert(&pick.name, pick).is_none() {
                queue.push_back(pick);
            }
        }
    }
    Ok(chosen.into_values().collect())
}

fn satisfied(chosen: &BTreeMap<&str, &Package>, r: &Relation) -> bool {
    if chosen.get(r.name.as_str()).is_some_and(|p| r.allows(&p.version)) {
        return true;
    }
    chosen.values().any(|p| provides(p, r))
}

fn provides(p: &Package, r: &Relation) -> bool {
    p.provides.iter().any(|(name, v)| {
        name == &r.name
            && match (&r.constraint, v) {
                (None, _) => true,
                (Some(_), Some(v)) => r.allows(v),
                (Some(_), None) => false,
            }
    })
}

fn candidate<'a>(index: &'a Index, r: &Relation) -> Option<&'a Package> {
    if let Some(p) = index.packages.get(&r.name).filter(|p| r.allows(&p.version)) {
        return Some(p);
    }
    index.providers.get(&r.name)?.iter().filter_map(|n| index.packages.get(n)).find(|p| provides(p, r))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index(text: &str) -> Index {
        let sha = "0".repeat(64);
        let full: Vec<String> = text
            .split("\n\n")
            .map(|p| format!("{p}\nArchitecture: amd64\nFilename: pool/x.deb\nSize: 1\nSHA256: {sha}"))
            .collect();
        Index::parse(&full.join("\n\n"), "amd64").unwrap()
    }

    fn names(ps: &[&Package]) -> Vec<String> {
        ps.iter().map(|p| p.name.clone()).collect()
    }

    const ARCHIVE: &str =
        "Package: dpkg\nVersion: 1.21\nEssential: yes\nPriority: required\nPre-Depends: libc6 (>= 2.34)\n\n\
Package: libc6\nVersion: 2.36\nPriority: optional\n\n\
Package: apt\nVersion: 2.6\nPriority: important\nDepends: gpgv | gpgv2\n\n\
Package: gpgv\nVersion: 2.2\nPriority: optional\n\n\
Package: gpgv2\nVersion: 2.2\nPriority: optional\n\n\
Package: mawk\nVersion: 1.3\nPriority: required\nProvides: awk\n\n\
Package: gawk\nVersion: 5.2\nPriority: optional\nProvides: awk\n\n\
Package: sudo\nVersion: 1.9\nPriority: optional\nDepends: awk, libold (>= 2) | libc6 (>= 2.30)\n\n\
Package: libold\nVersion: 1\nPriority: optional\n\n\
Package: ssh-server-a\nVersion: 1\nProvides: ssh-server\n\n\
Package: ssh-server-b\nVersion: 1\nProvides: ssh-server\n\n\
Package: broken\nVersion: 1\nDepends: missing (>= 1) | libold (>= 5)\n\n\
Package: localepurge\nVersion: 1\nPriority: important";

    #[test]
    fn variants_seed_as_debootstrap_does_and_dependencies_close() {
        let i = index(ARCHIVE);
        assert_eq!(names(&resolve(&i, Variant::Essential, &[]).unwrap()), ["dpkg", "libc6"]);
        // minbase: required + apt; apt's first alternative; awk is mawk's.
        let m = resolve(&i, Variant::Minbase, &["sudo".into()]).unwrap();
        assert_eq!(names(&m), ["apt", "dpkg", "gpgv", "libc6", "mawk", "sudo"]);
        let imp = resolve(&i, Variant::Important, &[]).unwrap();
        assert!(names(&imp).contains(&"localepurge".to_string()));
    }

    #[test]
    fn unsatisfiable_and_ambiguous_requests_are_errors() {
        let i = index(ARCHIVE);
        let e = resolve(&i, Variant::Essential, &["broken".into()]).unwrap_err().to_string();
        assert!(e.contains("broken 1 depends on missing (>= 1) | libold (>= 5)"), "{e}");
        let e = resolve(&i, Variant::Essential, &["ssh-server".into()]).unwrap_err().to_string();
        assert!(e.contains("ssh-server-a, ssh-server-b"), "{e}");
        assert!(resolve(&i, Variant::Essential, &["nope".into()]).is_err());
    }
}
