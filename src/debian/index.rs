//! A `Packages` index: every binary package of one architecture (and `all`),
//! with the relations the resolver follows.

use super::deb822;
use super::error::{DebianError, Result};
use debversion::Version;
use std::collections::HashMap;

#[derive(Debug, Clone)]
pub struct Package {
    pub name: String,
    pub version: Version,
    pub architecture: String,
    pub filename: String,
    pub size: u64,
    pub sha256: String,
    pub essential: bool,
    pub priority: String,
    /// Pre-Depends then Depends: each inner list is one group of alternatives.
    pub depends: Vec<Vec<Relation>>,
    /// Virtual packages this one provides (with the version it provides, if any).
    pub provides: Vec<(String, Option<Version>)>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Relation {
    pub name: String,
    pub constraint: Option<(Op, Version)>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Op {
    Lt,
    Le,
    Eq,
    Ge,
    Gt,
}

impl Package {
    /// The package as a lock file records it.
    pub(crate) fn locked(&self) -> crate::config::lock::Locked {
        crate::config::lock::Locked {
            name: self.name.clone(),
            version: self.version.to_string(),
            architecture: self.architecture.clone(),
            size: self.size,
            sha256: self.sha256.clone(),
            filename: self.filename.clone(),
        }
    }
}

impl Relation {
    pub(crate) fn allows(&self, v: &Version) -> bool {
        match &self.constraint {
            None => true,
            Some((op, want)) => match op {
                Op::Lt => v < want,
                Op::Le => v <= want,
                Op::Eq => v == want,
                Op::Ge => v >= want,
                Op::Gt => v > want,
            },
        }
    }
}

impl std::fmt::Display for Relation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.name)?;
        if let Some((op, v)) = &self.constraint {
            let op = match op {
                Op::Lt => "<<",
                Op::Le => "<=",
                Op::Eq => "=",
                Op::Ge => ">=",
                Op::Gt => ">>",
            };
            write!(f, " ({op} {v})")?;
        }
        Ok(())
    }
}

/// `a (>= 1) | b, c:any` -> [[a >= 1, b], [c]].
pub(crate) fn parse_relations(s: &str) -> Result<Vec<Vec<Relation>>> {
    let mut out = Vec::new();
    for group in s.split(',').map(str::trim).filter(|g| !g.is_empty()) {
        let mut alts = Vec::new();
        for alt in group.split('|').map(str::trim) {
            alts.push(parse_relation(alt).map_err(|e| e.within(format!("relation `{alt}`")))?);
        }
        out.push(alts);
    }
    Ok(out)
}

fn parse_relation(s: &str) -> Result<Relation> {
    // Architecture and build-profile restrictions ([…], <…>) only appear in
    // source packages' relations; a binary index has none.
    let (name, rest) = match s.find('(') {
        Some(i) => (s[..i].trim(), Some(s[i + 1..].trim_end().trim_end_matches(')').trim())),
        None => (s.trim(), None),
    };
    // `:any` / `:native` qualifiers: this resolver works in one architecture.
    let name = name.split(':').next().unwrap_or(name).to_string();
    if name.is_empty() || name.contains(char::is_whitespace) {
        return Err(DebianError::Malformed("bad package name".into()));
    }
    let constraint = match rest {
        None => None,
        Some(c) => {
            let (op, v) = [
                ("<<", Op::Lt),
                ("<=", Op::Le),
                (">=", Op::Ge),
                (">>", Op::Gt),
                ("=", Op::Eq),
                ("<", Op::Le),
                (">", Op::Ge),
            ]
            .into_iter()
            .find_map(|(p, op)| c.strip_prefix(p).map(|v| (op, v.trim())))
            .ok_or_else(|| DebianError::Malformed("bad version operator".into()))?;
            Some((op, v.parse::<Version>().map_err(|e| DebianError::Malformed(format!("version `{v}`: {e}")))?))
        }
    };
    Ok(Relation { name, constraint })
}

/// The packages of one index, by name (the highest version where several).
#[derive(Debug, Default)]
pub struct Index {
    pub packages: HashMap<String, Package>,
    /// Virtual name -> names of the packages that provide it.
    pub providers: HashMap<String, Vec<String>>,
}

impl Index {
    /// Parses a `Packages` file of architecture `arch`.
    pub(crate) fn parse(text: &str, arch: &str) -> Result<Index> {
        let mut index = Index::default();
        for p in deb822::parse(text).map_err(DebianError::Malformed)? {
            let field = |f: &str| p.get(f).map(str::to_string);
            let name = field("Package").ok_or_else(|| DebianError::Malformed("a paragraph without Package".into()))?;
            let bad = |what: String| DebianError::Malformed(format!("package {name}: {what}"));
            let required = |f: &'static str| p.get(f).ok_or_else(|| bad(format!("no {f}")));
            let architecture = required("Architecture")?.to_string();
            if architecture != arch && architecture != "all" {
                continue;
            }
            let version: Version = required("Version")?.parse().map_err(|e| bad(format!("bad Version: {e}")))?;
            let sha256 = required("SHA256")?.to_ascii_lowercase();
            if !crate::hash::is_sha256_hex(&sha256) {
                return Err(bad(format!("SHA256 `{sha256}` is not a SHA-256")));
            }
            let filename = required("Filename")?.to_string();
            if filename.starts_with('/')
                || filename.split('/').any(|c| c == "..")
                || filename.contains(char::is_control)
            {
                return Err(bad(format!("Filename `{filename}` is not a path inside the mirror")));
            }
            let mut depends = Vec::new();
            for f in ["Pre-Depends", "Depends"] {
                if let Some(v) = p.get(f) {
                    depends.extend(parse_relations(v).map_err(|e| e.within(format!("package {name}: {f}")))?);
                }
            }
            let provides = parse_relations(p.get("Provides").unwrap_or_default())
                .map_err(|e| e.within(format!("package {name}: Provides")))?
                .into_iter()
                .flatten()
                .map(|r| (r.name, r.constraint.map(|c| c.1)))
                .collect();
            let pkg = Package {
                size: required("Size")?.parse().map_err(|_| bad("bad Size".into()))?,
                essential: p.get("Essential") == Some("yes"),
                priority: field("Priority").unwrap_or_else(|| "optional".into()),
                name: name.clone(),
                version,
                architecture,
                filename,
                sha256,
                depends,
                provides,
            };
            match index.packages.get(&name) {
                Some(old) if old.version >= pkg.version => {}
                _ => {
                    index.packages.insert(name, pkg);
                }
            }
        }
        for p in index.packages.values() {
            for (v, _) in &p.provides {
                index.providers.entry(v.clone()).or_default().push(p.name.clone());
            }
        }
        for names in index.providers.values_mut() {
            names.sort();
        }
        Ok(index)
    }

    /// Adds another component's packages (main + contrib, say).
    pub(crate) fn merge(&mut self, other: Index) {
        for (name, p) in other.packages {
            match self.packages.get(&name) {
                Some(old) if old.version >= p.version => {}
                _ => {
                    self.packages.insert(name, p);
                }
            }
        }
        for (v, names) in other.providers {
            let e = self.providers.entry(v).or_default();
            e.extend(names);
            e.sort();
            e.dedup();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relations_with_alternatives_versions_and_qualifiers() {
        let r =
            parse_relations("libc6 (>= 2.34), debconf (>= 0.5) | debconf-2.0, python3:any, perl:any (>= 5)").unwrap();
        assert_eq!(r.len(), 4);
        assert_eq!(r[1].len(), 2);
        assert_eq!(r[1][1].name, "debconf-2.0");
        assert_eq!(r[2][0].name, "python3");
        assert_eq!(r[3][0].to_string(), "perl (>= 5)");
        let v: Version = "2.36-9".parse().unwrap();
        assert!(r[0][0].allows(&v));
        assert!(!r[0][0].allows(&"2.9".parse().unwrap()));
        assert!(parse_relations("a (~~ 1)").is_err());
    }

    #[test]
    fn highest_version_wins_and_foreign_arches_are_skipped() {
        let sha = "a".repeat(64);
        let text = format!(
            "Package: a\nVersion: 1.9\nArchitecture: amd64\nFilename: pool/a_1.9.deb\nSize: 1\nSHA256: {sha}\n\n\
             Package: a\nVersion: 1.10\nArchitecture: amd64\nFilename: pool/a_1.10.deb\nSize: 1\nSHA256: {sha}\nProvides: x (= 1)\n\n\
             Package: b\nVersion: 1\nArchitecture: arm64\nFilename: pool/b.deb\nSize: 1\nSHA256: {sha}\n"
        );
        let i = Index::parse(&text, "amd64").unwrap();
        assert_eq!(i.packages["a"].version.to_string(), "1.10");
        assert!(!i.packages.contains_key("b"));
        assert_eq!(i.providers["x"], vec!["a".to_string()]);
        let bad = text.replace("pool/b.deb", "../../etc/passwd").replace("arm64", "amd64");
        assert!(Index::parse(&bad, "amd64").unwrap_err().to_string().contains("not a path inside"));
    }
}
