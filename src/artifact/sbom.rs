//! An SPDX 2.3 JSON software bill of materials for builds with a
//! distribution base: the image as one package that contains every Debian
//! package installed in it, each with its version, SHA-256, where it came
//! from and its package URL (purl), so scanners (grype, trivy,
//! Dependency-Track) can match it against security advisories.
//!
//! Written from what the image holds: the dpkg database (each package's
//! control fields, as dpkg recorded them unpacking the `.deb`), each entry
//! checked against its lock line, whose SHA-256 was checked against the file.
//! A package installed but not locked, locked but not installed, or of
//! another version than its line says stops the build.
//!
//! Deterministic: only what the build's hash covers goes in (the creation
//! time is the build's epoch, not the clock; not the mirror nor the lock's
//! date, which are not hashed), so the same inputs give the same bytes.

use super::error::{ArtifactError, Result};
use crate::config::lock::Lock;
use serde_json::{json, Value};

pub(crate) const FILE: &str = "sbom.spdx.json";

/// SPDX identifiers allow letters, digits, `.` and `-` only.
fn spdx_id(i: usize, name: &str) -> String {
    let clean: String = name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '.' { c } else { '-' }).collect();
    format!("SPDXRef-Package-{i}-{clean}")
}

/// A purl qualifier value, percent-encoded where the spec asks.
fn purl_part(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC)
        .to_string()
        .replace("%2E", ".")
        .replace("%2D", "-")
        .replace("%5F", "_")
        .replace("%7E", "~")
}

/// Where dpkg keeps what it installed, in the image.
pub(crate) const DPKG_STATUS: &str = "var/lib/dpkg/status";

/// A package as the image's dpkg database records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Installed {
    pub name: String,
    pub version: String,
    pub architecture: String,
    /// The source package (`glibc`, or `glibc (2.36-9)` when versions differ).
    pub source: Option<String>,
    pub maintainer: Option<String>,
    pub homepage: Option<String>,
    /// The first line of its description.
    pub summary: Option<String>,
}

/// The installed packages of a dpkg `status` file, in the lock's order,
/// each one the package its lock line names (name, architecture, version).
pub(crate) fn installed(status: &str, lock: &Lock) -> Result<Vec<Installed>> {
    let paragraphs =
        crate::debian::deb822::parse(status).map_err(|e| ArtifactError::Sbom(format!("/{DPKG_STATUS}: {e}")))?;
    let mut found: Vec<Installed> = Vec::new();
    for p in &paragraphs {
        if !p.get("Status").is_some_and(|s| s.ends_with(" installed")) {
            continue; // removed, config files left, half-installed: not in the image
        }
        let field = |k: &str| p.get(k).map(|v| v.trim().to_string()).filter(|v| !v.is_empty());
        let (Some(name), Some(version), Some(architecture)) =
            (field("Package"), field("Version"), field("Architecture"))
        else {
            return Err(ArtifactError::Sbom(format!(
                "/{DPKG_STATUS}: an installed package without Package, Version or Architecture"
            )));
        };
        found.push(Installed {
            name,
            version,
            architecture,
            source: field("Source"),
            maintainer: field("Maintainer"),
            homepage: field("Homepage").filter(|h| h.starts_with("https://") || h.starts_with("http://")),
            summary: field("Description").and_then(|d| d.lines().next().map(str::to_string)),
        });
    }
    let mut ordered = Vec::with_capacity(lock.packages.len());
    for l in &lock.packages {
        let at = found.iter().position(|i| i.name == l.name && i.architecture == l.architecture);
        let Some(i) = at.map(|at| found.swap_remove(at)) else {
            return Err(ArtifactError::Sbom(format!(
                "{} {} is locked but the image's dpkg database does not list it as installed",
                l.name, l.architecture
            )));
        };
        if i.version != l.version {
            return Err(ArtifactError::Sbom(format!(
                "the image holds {} {} but its lock line says {}: refused (was the lock edited?)",
                i.name, i.version, l.version
            )));
        }
        ordered.push(i);
    }
    if let Some(i) = found.first() {
        return Err(ArtifactError::Sbom(format!(
            "the image holds {} {} {}, which no lock line names",
            i.name, i.version, i.architecture
        )));
    }
    Ok(ordered)
}

pub(crate) fn document(
    entry: &crate::model::EntryName,
    profile: &str,
    hash: &crate::model::InputHash,
    epoch: u64,
    lock: &Lock,
    installed: &[Installed],
) -> Value {
    let created =
        humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_secs(epoch)).to_string();
    let mut packages = vec![json!({
        "name": profile,
        "SPDXID": "SPDXRef-Image",
        "versionInfo": hash,
        "downloadLocation": "NOASSERTION",
        "filesAnalyzed": false,
        "primaryPackagePurpose": "OPERATING-SYSTEM",
        "comment": format!("imgd store entry {entry}"),
    })];
    let mut relationships = vec![
        json!({"spdxElementId": "SPDXRef-DOCUMENT", "relationshipType": "DESCRIBES", "relatedSpdxElement": "SPDXRef-Image"}),
    ];
    let r = &lock.request;
    for (i, (p, got)) in lock.packages.iter().zip(installed).enumerate() {
        let id = spdx_id(i, &p.name);
        // Name, version and architecture as dpkg recorded them (equal to
        // the lock line's, checked); the SHA-256 is the checked .deb's.
        let purl = format!(
            "pkg:deb/debian/{}@{}?arch={}&distro=debian-{}",
            purl_part(&got.name),
            purl_part(&got.version),
            purl_part(&got.architecture),
            purl_part(&r.suite)
        );
        let source = got.source.as_deref().unwrap_or(&got.name);
        let mut package = json!({
            "name": got.name,
            "SPDXID": id,
            "versionInfo": got.version,
            "supplier": got.maintainer.as_deref().map_or("Organization: Debian".into(), supplier),
            // Where it was fetched from is not part of what it is.
            "downloadLocation": "NOASSERTION",
            "filesAnalyzed": false,
            "sourceInfo": format!("built from Debian source package {source}"),
            "checksums": [{"algorithm": "SHA256", "checksumValue": p.sha256}],
            "externalRefs": [{"referenceCategory": "PACKAGE-MANAGER", "referenceType": "purl", "referenceLocator": purl}],
        });
        for (key, value) in [("homepage", &got.homepage), ("summary", &got.summary)] {
            if let Some(v) = value {
                package[key] = v.as_str().into();
            }
        }
        packages.push(package);
        relationships
            .push(json!({"spdxElementId": "SPDXRef-Image", "relationshipType": "CONTAINS", "relatedSpdxElement": id}));
    }
    json!({
        "spdxVersion": "SPDX-2.3",
        "dataLicense": "CC0-1.0",
        "SPDXID": "SPDXRef-DOCUMENT",
        "name": entry,
        "documentNamespace": format!("https://imgd.invalid/spdx/{entry}"),
        "creationInfo": {
            "created": created,
            "creators": [format!("Tool: imgd-{}", env!("CARGO_PKG_VERSION"))],
            "comment": format!("Debian {} {} ({}), from a lock", r.suite, r.architecture, r.variant),
        },
        "packages": packages,
        "relationships": relationships,
    })
}

/// SPDX's supplier from a Maintainer field: `Name <mail>` becomes
/// `Organization: Name (mail)` (Debian maintainers are mostly teams).
fn supplier(maintainer: &str) -> String {
    let clean: String = maintainer.chars().filter(|c| !c.is_control()).collect();
    match clean.split_once('<') {
        Some((name, mail)) => format!("Organization: {} ({})", name.trim(), mail.trim_end_matches('>').trim()),
        None => format!("Organization: {}", clean.trim()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::lock::{Locked, Request};

    fn lock(lines: &[(&str, &str, &str)]) -> Lock {
        let packages = lines
            .iter()
            .map(|(n, v, a)| Locked {
                name: n.to_string(),
                version: v.to_string(),
                architecture: a.to_string(),
                size: 1,
                sha256: "0".repeat(64),
                filename: format!("pool/main/{n}.deb"),
            })
            .collect();
        let request = Request {
            suite: "bookworm".into(),
            architecture: "amd64".into(),
            variant: crate::config::lock::Variant::Minbase,
            components: vec!["main".into()],
            packages: Vec::new(),
        };
        Lock {
            lock_version: 1,
            mirror: "http://deb.debian.org/debian".into(),
            release_date: String::new(),
            request,
            packages,
        }
    }

    const STATUS: &str = "Package: libc6\nStatus: install ok installed\nMaintainer: GNU Libc Maintainers <debian-glibc@lists.debian.org>\n\
        Architecture: amd64\nSource: glibc\nVersion: 2.36-9\nHomepage: https://www.gnu.org/software/libc/libc.html\n\
        Description: GNU C Library: Shared libraries\n Contains the standard libraries.\n\n\
        Package: old\nStatus: deinstall ok config-files\nArchitecture: amd64\nVersion: 1\n\n\
        Package: base-files\nStatus: install ok installed\nArchitecture: amd64\nVersion: 12.4\nMaintainer: Santiago Vila <sanvila@debian.org>\n";

    #[test]
    fn the_sbom_is_written_from_the_images_dpkg_database() {
        let l = lock(&[("base-files", "12.4", "amd64"), ("libc6", "2.36-9", "amd64")]);
        let got = installed(STATUS, &l).unwrap();
        assert_eq!(got.iter().map(|i| i.name.as_str()).collect::<Vec<_>>(), ["base-files", "libc6"]);
        let hash = crate::model::InputHash::new(&"ab".repeat(32)).unwrap();
        let entry = crate::model::EntryName::of(&hash, "p").unwrap();
        let doc = document(&entry, "p", &hash, 0, &l, &got);
        let libc = &doc["packages"][2];
        assert_eq!(libc["versionInfo"], "2.36-9");
        assert_eq!(libc["supplier"], "Organization: GNU Libc Maintainers (debian-glibc@lists.debian.org)");
        assert_eq!(libc["homepage"], "https://www.gnu.org/software/libc/libc.html");
        assert_eq!(libc["summary"], "GNU C Library: Shared libraries");
        assert_eq!(libc["sourceInfo"], "built from Debian source package glibc");
        assert_eq!(doc["packages"][1]["sourceInfo"], "built from Debian source package base-files");
    }

    #[test]
    fn an_image_that_is_not_its_lock_is_refused_naming_the_package() {
        let cases = [
            (
                vec![("base-files", "12.4", "amd64"), ("libc6", "2.36-8", "amd64")],
                "holds libc6 2.36-9 but its lock line says 2.36-8",
            ),
            (vec![("libc6", "2.36-9", "amd64")], "base-files 12.4 amd64, which no lock line names"),
            (
                vec![("base-files", "12.4", "amd64"), ("libc6", "2.36-9", "amd64"), ("old", "1", "amd64")],
                "old amd64 is locked but",
            ),
        ];
        for (lines, want) in cases {
            let e = installed(STATUS, &lock(&lines)).unwrap_err().to_string();
            assert!(e.contains(want), "{e}");
        }
    }

    #[test]
    fn ids_and_purls_are_valid() {
        assert_eq!(spdx_id(3, "libstdc++6"), "SPDXRef-Package-3-libstdc--6");
        assert_eq!(purl_part("1:9.2p1-2+deb12u5"), "1%3A9.2p1-2%2Bdeb12u5");
    }
}
