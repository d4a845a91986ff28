//! Reading a Debian archive the way apt does: the suite's `InRelease`, checked
//! against a keyring by `gpgv` (the verifier apt itself uses), names the
//! SHA-256 of each `Packages` index; each index names the SHA-256 of each
//! `.deb`. Only text that the signature covers is parsed, so a mirror or proxy
//! cannot slip in an index, or a field, of its own.

use super::deb822;
use super::error::{DebianError, Result};
use super::fetch::Mirror;
use super::index::Index;
use crate::fsutil::IoAt;
use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

/// The signed part of a suite's `InRelease`.
#[derive(Debug, Clone)]
pub(crate) struct Release {
    pub suite: String,
    pub codename: String,
    /// `Date:` as the archive wrote it (RFC 2822, UTC).
    pub date: String,
    /// Index path (relative to `dists/<suite>/`) -> (SHA-256, size).
    pub files: HashMap<String, (String, u64)>,
}

impl Release {
    /// Fetches `dists/<suite>/InRelease` and checks its signature with `keyring`.
    pub(crate) fn fetch(mirror: &Mirror, suite: &str, keyring: &Path) -> Result<Release> {
        let raw = mirror.get(&format!("dists/{suite}/InRelease"))?;
        let signed = verify_clearsigned(&raw, keyring).map_err(|e| DebianError::Signature {
            mirror: mirror.to_string(),
            suite: suite.to_string(),
            keyring: keyring.to_path_buf(),
            source: Box::new(e),
        })?;
        let release = Release::parse(&signed).map_err(|e| e.within(format!("{mirror}: dists/{suite}/InRelease")))?;
        // A validly signed Release of another suite (an older one, say) is
        // not what was asked for: apt refuses that too.
        if release.suite != suite && release.codename != suite {
            return Err(DebianError::OtherSuite {
                mirror: mirror.to_string(),
                suite: suite.to_string(),
                got: release.suite,
                codename: release.codename,
            });
        }
        Ok(release)
    }

    pub(crate) fn parse(text: &str) -> Result<Release> {
        let malformed = |m: String| DebianError::Malformed(m);
        let paras = deb822::parse(text).map_err(malformed)?;
        let p = paras.first().ok_or_else(|| malformed("empty Release file".into()))?;
        if let Some(until) = p.get("Valid-Until") {
            let t = parse_date(until).ok_or_else(|| malformed(format!("Valid-Until: {until}: not a date")))?;
            if t < std::time::SystemTime::now() {
                return Err(malformed(format!(
                    "the Release file expired at {until} (Valid-Until): a stale copy, refused"
                )));
            }
        }
        let mut files = HashMap::new();
        for line in p.get("SHA256").unwrap_or_default().lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            if let [sha, size, path] = f[..] {
                let size = size.parse().map_err(|_| malformed(format!("SHA256 entry `{line}`: bad size")))?;
                files.insert(path.to_string(), (sha.to_ascii_lowercase(), size));
            }
        }
        if files.is_empty() {
            return Err(malformed("the Release file lists no SHA256 checksums".into()));
        }
        Ok(Release {
            suite: p.get("Suite").unwrap_or_default().to_string(),
            codename: p.get("Codename").unwrap_or_default().to_string(),
            date: p
                .get("Date")
                .filter(|d| !d.contains(char::is_control))
                .ok_or_else(|| malformed("the Release file has no one-line Date".into()))?
                .to_string(),
            files,
        })
    }

    /// The `Packages` index of `component` for `arch`, checked against the
    /// signed checksum. Uncompressed or gzip, whichever the Release lists.
    pub(crate) fn packages(&self, mirror: &Mirror, suite: &str, component: &str, arch: &str) -> Result<Index> {
        let dir = format!("{component}/binary-{arch}");
        for (name, gz) in [("Packages.gz", true), ("Packages", false)] {
            let path = format!("{dir}/{name}");
            let Some((sha, size)) = self.files.get(&path) else { continue };
            let body = mirror.get(&format!("dists/{suite}/{path}"))?;
            let within = format!("{mirror}: dists/{suite}/{path}");
            if body.len() as u64 != *size || crate::hash::sha256_hex(&body) != *sha {
                let (mirror, suite) = (mirror.to_string(), suite.to_string());
                return Err(DebianError::NotSigned { mirror, suite, path });
            }
            let mut text = String::new();
            if gz {
                flate2::read::GzDecoder::new(&body[..])
                    .read_to_string(&mut text)
                    .map_err(|e| DebianError::Malformed(format!("not gzip text: {e}")).within(&within))?;
            } else {
                text =
                    String::from_utf8(body).map_err(|_| DebianError::Malformed("not UTF-8".into()).within(&within))?;
            }
            return Index::parse(&text, arch).map_err(|e| e.within(within));
        }
        Err(DebianError::NoIndex {
            mirror: mirror.to_string(),
            suite: suite.to_string(),
            dir,
            component: component.to_string(),
            arch: arch.to_string(),
        })
    }
}

/// Runs `gpgv` on a clear-signed file and returns the text it says is signed.
fn verify_clearsigned(raw: &[u8], keyring: &Path) -> Result<String> {
    if !keyring.is_file() {
        return Err(DebianError::NoKeyring(keyring.to_path_buf()));
    }
    let dir = tempfile::tempdir().at("making a private folder in", std::env::temp_dir())?;
    let input = dir.path().join("InRelease");
    let output = dir.path().join("signed");
    std::fs::write(&input, raw).at("writing", &input)?;
    let out = std::process::Command::new("gpgv")
        .arg("--keyring")
        .arg(std::path::absolute(keyring).at("finding", keyring)?)
        .arg("--output")
        .arg(&output)
        .arg(&input)
        .output()
        .map_err(DebianError::NoGpgv)?;
    if !out.status.success() {
        let why = String::from_utf8_lossy(&out.stderr);
        let why: Vec<&str> = why.lines().filter(|l| !l.trim().is_empty()).collect();
        return Err(DebianError::Gpgv(why.join("; ")));
    }
    String::from_utf8(std::fs::read(&output).at("reading", &output)?)
        .map_err(|_| DebianError::Malformed("the signed text is not UTF-8".into()))
}

/// An RFC 2822 date as Debian writes them (`Sat, 10 Aug 2024 09:33:28 UTC`).
fn parse_date(s: &str) -> Option<std::time::SystemTime> {
    let s = s.trim().trim_end_matches("UTC").trim_end_matches("GMT").trim_end_matches("+0000").trim();
    httpdate::parse_http_date(&format!("{s} GMT")).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const RELEASE: &str = "Origin: Debian\nSuite: stable\nCodename: bookworm\nDate: Sat, 10 Aug 2024 09:33:28 UTC\nSHA256:\n 0123abcd 42 main/binary-amd64/Packages.gz\n ffee 7 main/binary-amd64/Packages\n";

    #[test]
    fn release_fields_and_checksums() {
        let r = Release::parse(RELEASE).unwrap();
        assert_eq!(r.codename, "bookworm");
        assert_eq!(r.files["main/binary-amd64/Packages.gz"], ("0123abcd".to_string(), 42));
        assert_eq!(r.date, "Sat, 10 Aug 2024 09:33:28 UTC");
    }

    #[test]
    fn an_expired_release_is_refused() {
        let stale = format!("{RELEASE}Valid-Until: Sat, 17 Aug 2024 09:33:28 UTC\n");
        let e = Release::parse(&stale).unwrap_err().to_string();
        assert!(e.contains("expired"), "{e}");
        let fresh = format!("{RELEASE}Valid-Until: Sat, 17 Aug 2999 09:33:28 UTC\n");
        assert!(Release::parse(&fresh).is_ok());
    }
}
