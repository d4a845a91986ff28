//! An SPDX 2.3 JSON software bill of materials for builds with a
//! distribution base: the image as one package that contains every locked
//! Debian package, each with its version, SHA-256, where it came from and
//! its package URL (purl), so scanners (grype, trivy, Dependency-Track) can
//! match it against security advisories.
//!
//! Deterministic: only what the build's hash covers goes in (the creation
//! time is the build's epoch, not the clock; not the mirror nor the lock's
//! date, which are not hashed), so the same inputs give the same bytes.

use crate::config::lock::Lock;
use serde_json::{json, Value};

pub const FILE: &str = "sbom.spdx.json";

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

pub fn document(entry: &str, profile: &str, hash: &str, epoch: u64, lock: &Lock) -> Value {
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
    for (i, p) in lock.packages.iter().enumerate() {
        let id = spdx_id(i, &p.name);
        let purl = format!(
            "pkg:deb/debian/{}@{}?arch={}&distro=debian-{}",
            purl_part(&p.name),
            purl_part(&p.version),
            purl_part(&p.architecture),
            purl_part(&r.suite)
        );
        packages.push(json!({
            "name": p.name,
            "SPDXID": id,
            "versionInfo": p.version,
            "supplier": "Organization: Debian",
            // Where it was fetched from is not part of what it is.
            "downloadLocation": "NOASSERTION",
            "filesAnalyzed": false,
            "checksums": [{"algorithm": "SHA256", "checksumValue": p.sha256}],
            "externalRefs": [{"referenceCategory": "PACKAGE-MANAGER", "referenceType": "purl", "referenceLocator": purl}],
        }));
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

#[cfg(test)]
mod tests {
    #[test]
    fn ids_and_purls_are_valid() {
        assert_eq!(super::spdx_id(3, "libstdc++6"), "SPDXRef-Package-3-libstdc--6");
        assert_eq!(super::purl_part("1:9.2p1-2+deb12u5"), "1%3A9.2p1-2%2Bdeb12u5");
    }
}
