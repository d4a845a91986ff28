//! `machines.toml`: which machine boots what.
//!
//! ```toml
//! [[group]]
//! name = "web-rack-12"
//! profile = "hello"                  # a profile in profiles/ (its current build), or:
//! # entry = "9f2c...-hello"          # pin a store entry
//! kernel_args = "imgd.role=web"      # appended to the profile's command line
//! vars = { role = "web" }            # extra template variables: {{var.role}}
//! downloads = ["disk", "rootfs"]     # besides kernel, initrd and script, the
//!                                    # entry's files this group's machines may fetch
//! http_boot = "uki"                  # UEFI HTTP boot firmware (--proxy-dhcp) gets the
//!                                    # entry's unified kernel image itself; default
//!                                    # "ipxe": iPXE's EFI build, which asks for a script
//! signed_with = "keys/db.crt"        # ...the UKI's copy signed with this certificate
//!                                    # (`imgd sign`), for Secure Boot; relative to this file
//! verify = true                      # its scripts `imgverify` every file before booting
//!                                    # it, and refuse to boot if that fails (needs
//!                                    # [ipxe_signing] and a verifying iPXE)
//! [group.selector]                   # every selector given must match
//! mac = "52:54:00:12:34:56"          # also with dashes, any case; or a list:
//!                                    # mac = ["52:54:00:12:34:56", "52:54:00:12:34:57"]
//! uuid = "..."; hostname = "..."; serial = "..."
//! arch = "x86_64"                    # iPXE ${buildarch}: i386, x86_64, arm64
//! platform = "efi"                   # iPXE ${platform}: pcbios, efi
//! source = ["10.12.0.0/16"]          # the client's address (after --trusted-proxy)
//! labels = { rack = "12" }           # query parameters: /boot.ipxe?rack=12
//!
//! [[group]]
//! name = "everything-else"
//! profile = "hello"
//! default = true                     # at most one; used when nothing else matches
//!
//! [ipxe_signing]                     # a `.sig` (detached CMS) beside every script and
//! key = "keys/ipxe.key"              # boot file, for iPXE's imgverify; relative to this
//! cert = "keys/ipxe.crt"             # file; the certificate allows codeSigning
//! certs = "keys/intermediate.crt"    # optional: included in every signature
//! ```
//!
//! MAC, UUID, hostname and serial are *claims* the client makes; anyone on the
//! network can send any value. Where that matters, add `source` so a group
//! also requires the request to come from the right network. `source` also
//! decides who may download the group's files: a group without it lets any
//! client that can reach the server fetch its boot files.
//!
//! Names, kernel arguments and vars land in iPXE scripts and logs, so they
//! must not hold control characters; group names are letters, digits, `.`,
//! `_` and `-`.
//!
//! The most specific matching group wins: first by the number of identity
//! selectors (mac, uuid, hostname, serial), then by the number of the others.
//! Two groups of equal specificity that one machine could match both are a
//! configuration error, reported when the file is loaded.

use crate::config::error::{from_toml, ConfigError};
use crate::model::mac::{Mac, Macs};
use crate::model::manifest::ArtifactName;
use ipnet::IpNet;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct MachinesFile {
    #[serde(default, rename = "group")]
    pub groups: Vec<Group>,
    /// `[ipxe_signing]`: the key that signs what iPXE `imgverify`s, as written.
    #[serde(default, rename = "ipxe_signing")]
    pub ipxe_signing_paths: Option<IpxeSigningPaths>,
    /// The same, checked and resolved against the file when it is loaded.
    #[serde(skip)]
    pub ipxe_signing: Option<super::imgverify::IpxeSigning>,
}

/// `[ipxe_signing]` as written (relative to the machines file).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct IpxeSigningPaths {
    pub key: std::path::PathBuf,
    pub cert: std::path::PathBuf,
    pub certs: Option<std::path::PathBuf>,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Group {
    pub name: String,
    pub profile: Option<String>,
    pub entry: Option<crate::model::EntryName>,
    #[serde(default)]
    pub kernel_args: String,
    #[serde(default)]
    pub vars: BTreeMap<String, String>,
    #[serde(default)]
    pub default: bool,
    #[serde(default)]
    pub selector: Selector,
    /// Files of the entry beyond kernel, initrd and script that this group's
    /// machines may download (e.g. `disk` to install from the network).
    #[serde(default)]
    pub downloads: Vec<ArtifactName>,
    /// What UEFI HTTP boot firmware of this group's machines is told to fetch.
    #[serde(default)]
    pub http_boot: HttpBoot,
    /// The certificate whose signed UKI (`imgd sign`) this group's machines
    /// get, as written (relative to the machines file).
    pub signed_with: Option<std::path::PathBuf>,
    /// Its SHA-256 fingerprint, computed when the file is loaded.
    #[serde(skip)]
    pub signed_with_sha256: Option<String>,
    /// Scripts for this group's machines `imgverify` every download and
    /// refuse to boot what fails (or an iPXE that cannot check); needs
    /// `[ipxe_signing]`.
    #[serde(default)]
    pub verify: bool,
}

/// What proxyDHCP hands to UEFI HTTP boot firmware.
///
/// At DHCP time a machine is known only by its MAC, architecture and
/// platform (it has no address yet and sends no labels), so a group is found
/// for it with those alone: `source` and `labels` groups are not matched then
/// (the default group is), but the download is still checked against the
/// client's address like any other.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HttpBoot {
    /// iPXE's EFI build, which then asks `/boot.ipxe` for the group's script
    /// (x86_64 only: Debian ships no arm64 iPXE).
    #[default]
    Ipxe,
    /// The entry's unified kernel image (format `uki`): no iPXE, no script;
    /// the firmware loads it (and, with Secure Boot, verifies it) itself.
    /// The only network boot for aarch64 machines.
    Uki,
}

impl Group {
    /// Whether a client at `ip` is one of this group's machines as far as
    /// its address says (the only part of a request that is not a claim).
    pub(crate) fn admits(&self, ip: std::net::IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.selector.source.is_empty() || self.selector.source.iter().any(|n| n.contains(&ip))
    }
}

#[derive(Debug, Clone, Deserialize, Default, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Selector {
    /// One MAC or a list: the machine's must be one of them.
    pub mac: Option<Macs>,
    pub uuid: Option<String>,
    pub hostname: Option<String>,
    pub serial: Option<String>,
    pub arch: Option<String>,
    pub platform: Option<String>,
    #[serde(default)]
    pub source: Vec<IpNet>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

impl Group {
    /// Its selector in a few words, for the status page:
    /// `mac 52:54:00:00:00:01 (+2), source 10.0.0.0/24`, or `default`.
    pub(crate) fn selector_text(&self) -> String {
        let sel = &self.selector;
        let mut parts = Vec::new();
        if let Some(m) = &sel.mac {
            let more = if m.0.len() > 1 { format!(" (+{})", m.0.len() - 1) } else { String::new() };
            parts.push(format!("mac {}{more}", m.0.first().map(ToString::to_string).unwrap_or_default()));
        }
        for (k, v) in WORDS.iter().zip(sel.words()) {
            if let Some(v) = v {
                parts.push(format!("{k} {v}"));
            }
        }
        if !sel.source.is_empty() {
            let more = if sel.source.len() > 1 { format!(" (+{})", sel.source.len() - 1) } else { String::new() };
            parts.push(format!("source {}{more}", sel.source[0]));
        }
        for (k, v) in &sel.labels {
            parts.push(format!("{k}={v}"));
        }
        if self.default {
            parts.push("default".into());
        }
        if parts.is_empty() {
            "any".into()
        } else {
            parts.join(", ")
        }
    }
}

/// What a booting machine says about itself. These are claims, not
/// identity: anyone can send any of them. [`super::route`] checks each has
/// the shape iPXE gives it before it gets here.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Claims {
    /// Sent as `52-54-00-aa-bb-cc` or with colons.
    pub mac: Option<Mac>,
    /// 8-4-4-4-12 hex digits.
    pub uuid: Option<String>,
    pub hostname: Option<String>,
    pub serial: Option<String>,
    /// iPXE's `${buildarch}` and `${platform}`: short lowercase words.
    pub arch: Option<String>,
    pub platform: Option<String>,
}

/// The claims besides the MAC, compared as case-insensitive words; a
/// selector's and a machine's [`Selector::words`] and [`Claims::words`] list
/// them in this order. The first [`IDENTITY_WORDS`] name one machine.
/// (The two structs keep their own fields because a selector is read with
/// `deny_unknown_fields`, which serde cannot combine with `flatten`.)
const WORDS: [&str; 5] = ["uuid", "hostname", "serial", "arch", "platform"];
const IDENTITY_WORDS: usize = 3;

impl Claims {
    fn words(&self) -> [&Option<String>; 5] {
        [&self.uuid, &self.hostname, &self.serial, &self.arch, &self.platform]
    }
}

/// A booting machine: its claims, where it connects from, and its labels.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Machine {
    pub claims: Claims,
    pub source: Option<IpAddr>,
    pub labels: BTreeMap<String, String>,
}

fn eq_ci(a: &Option<String>, b: &Option<String>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => a.eq_ignore_ascii_case(b),
        _ => false,
    }
}

impl Selector {
    /// (identity selectors, other selectors): compared lexicographically.
    pub(crate) fn specificity(&self) -> (usize, usize) {
        let words = self.words();
        let (identity, other) = words.split_at(IDENTITY_WORDS);
        let set = |words: &[&Option<String>]| words.iter().filter(|w| w.is_some()).count();
        let identity = usize::from(self.mac.is_some()) + set(identity);
        let other = set(other) + usize::from(!self.source.is_empty()) + self.labels.len();
        (identity, other)
    }

    fn words(&self) -> [&Option<String>; 5] {
        [&self.uuid, &self.hostname, &self.serial, &self.arch, &self.platform]
    }

    pub(crate) fn matches(&self, m: &Machine) -> bool {
        let exact = |want: &Option<String>, have: &Option<String>| want.is_none() || eq_ci(want, have);
        let mac_ok = match &self.mac {
            None => true,
            Some(w) => m.claims.mac.is_some_and(|c| w.contains(&c)),
        };
        mac_ok
            && self.words().into_iter().zip(m.claims.words()).all(|(want, have)| exact(want, have))
            && (self.source.is_empty()
                || m.source.map(|ip| ip.to_canonical()).is_some_and(|ip| self.source.iter().any(|n| n.contains(&ip))))
            && self.labels.iter().all(|(k, v)| m.labels.get(k) == Some(v))
    }

    /// Could one machine match both selectors?
    fn overlaps(&self, o: &Selector) -> bool {
        let compatible = |a: &Option<String>, b: &Option<String>| a.is_none() || b.is_none() || eq_ci(a, b);
        let macs = match (&self.mac, &o.mac) {
            (Some(a), Some(b)) => a.overlaps(b),
            _ => true,
        };
        let sources = self.source.is_empty()
            || o.source.is_empty()
            || self.source.iter().any(|a| o.source.iter().any(|b| a.contains(b) || b.contains(a)));
        macs && self.words().into_iter().zip(o.words()).all(|(a, b)| compatible(a, b))
            && sources
            && self.labels.iter().all(|(k, v)| o.labels.get(k).is_none_or(|w| w == v))
    }
}

/// A machines file being checked: errors point at the line of their key.
struct Source<'a> {
    path: &'a Path,
    text: &'a str,
}

impl Source<'_> {
    fn error(&self, key: String, message: String) -> ConfigError {
        ConfigError::new(self.path, message).at(crate::config::load::locate_in(self.path, self.text, &key)).key(key)
    }

    /// `[ipxe_signing]`: its files exist (paths relative to the machines
    /// file's folder) and the key matches the certificate.
    fn ipxe_signing(&self, p: &IpxeSigningPaths, here: &Path) -> Result<super::imgverify::IpxeSigning, ConfigError> {
        let err = |key: &str, e: &(dyn std::error::Error + 'static)| {
            self.error(format!("ipxe_signing.{key}"), crate::model::Chain(e).to_string())
        };
        for (key, file) in [("key", Some(&p.key)), ("cert", Some(&p.cert)), ("certs", p.certs.as_ref())] {
            if let Some(file) = file {
                let path = here.join(file);
                std::fs::metadata(&path)
                    .map_err(|e| err(key, &crate::fsutil::IoError { doing: "reading", path, source: e }))?;
            }
        }
        super::imgverify::IpxeSigning::check(
            here.join(&p.key),
            here.join(&p.cert),
            p.certs.as_ref().map(|c| here.join(c)),
        )
        .map_err(|e| err("cert", &e))
    }

    /// One group's own fields: names, what it boots, values that land in
    /// iPXE script lines, and whether it selects anything.
    fn check_group(&self, i: usize, g: &Group) -> Result<(), ConfigError> {
        let err = |key: &str, m: String| self.error(format!("group[{i}]{key}"), m);
        let name_ok = !g.name.is_empty()
            && g.name.len() <= 128
            && g.name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if !name_ok {
            return Err(err(".name", format!("group name `{}`: use letters, digits, . _ -", g.name.escape_debug())));
        }
        if let Some(p) = g.profile.as_deref().filter(|p| !crate::model::valid_name(p)) {
            return Err(err(".profile", format!("`{}` is not a profile name", p.escape_debug())));
        }
        if g.kernel_args.chars().any(char::is_control) {
            return Err(err(".kernel_args", "control characters (a newline would end the script line)".into()));
        }
        for (k, v) in &g.vars {
            let key_ok = !k.is_empty() && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
            if !key_ok || v.chars().any(char::is_control) {
                return Err(err(
                    &format!(".vars.{k}"),
                    "var names are letters, digits and _, values have no control characters".into(),
                ));
            }
        }
        if g.profile.is_some() == g.entry.is_some() {
            return Err(err("", format!("group `{}`: set exactly one of profile, entry", g.name)));
        }
        if g.default && g.selector != Selector::default() {
            return Err(err(".selector", format!("group `{}`: the default group takes no selectors", g.name)));
        }
        if !g.default && g.selector == Selector::default() {
            return Err(err("", format!("group `{}` has no selector: add one, or make it `default = true`", g.name)));
        }
        Ok(())
    }

    /// No machine may match two groups that are equally specific: which one
    /// it boots would depend on the file's order.
    fn no_two_groups_tie(&self, groups: &[Group]) -> Result<(), ConfigError> {
        for (i, a) in groups.iter().enumerate() {
            for (j, b) in groups.iter().enumerate().skip(i + 1) {
                let tie = !a.default
                    && !b.default
                    && a.selector.specificity() == b.selector.specificity()
                    && a.selector.overlaps(&b.selector);
                if tie {
                    let m = format!(
                        "groups `{}` and `{}` are equally specific and one machine could match both; \
                         make one more specific (e.g. add mac or source)",
                        a.name, b.name
                    );
                    let at =
                        |key: &str| crate::config::load::locate_in(self.path, self.text, &format!("group[{j}]{key}"));
                    return Err(ConfigError::new(self.path, m)
                        .key(format!("group[{j}].selector"))
                        .at(at(".selector").or(at(""))));
                }
            }
        }
        Ok(())
    }
}

impl MachinesFile {
    pub fn load(path: &Path) -> Result<MachinesFile, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::new(path, format!("cannot read: {e}")))?;
        Self::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<MachinesFile, ConfigError> {
        let src = Source { path, text };
        let mut f: MachinesFile = toml::from_str(text).map_err(|e| from_toml(path, text, &e))?;
        let here = path.parent().unwrap_or(Path::new("."));
        if let Some(p) = &f.ipxe_signing_paths {
            f.ipxe_signing = Some(src.ipxe_signing(p, here)?);
        }
        let mut names = std::collections::BTreeSet::new();
        for (i, g) in f.groups.iter_mut().enumerate() {
            if g.verify && f.ipxe_signing.is_none() {
                let m = "verify = true needs [ipxe_signing] (the key that signs what iPXE verifies)";
                return Err(src.error(format!("group[{i}].verify"), m.into()));
            }
            src.check_group(i, g)?;
            if !names.insert(g.name.clone()) {
                return Err(src.error(format!("group[{i}].name"), format!("group name `{}` is used twice", g.name)));
            }
            if let Some(cert) = &g.signed_with {
                let key = format!("group[{i}].signed_with");
                if g.http_boot != HttpBoot::Uki {
                    let m = "signed_with is for http_boot = \"uki\" (the signed image is the UKI)";
                    return Err(src.error(key, m.into()));
                }
                let fp = crate::sign::cert_fingerprint(&here.join(cert))
                    .map_err(|e| src.error(key, crate::model::Chain(&e).to_string()))?;
                g.signed_with_sha256 = Some(fp);
            }
        }
        let defaults: Vec<&Group> = f.groups.iter().filter(|g| g.default).collect();
        if defaults.len() > 1 {
            return Err(ConfigError::new(
                path,
                format!("more than one default group: {}, {}", defaults[0].name, defaults[1].name),
            ));
        }
        src.no_two_groups_tie(&f.groups)?;
        Ok(f)
    }

    /// The group for `m`: the most specific match, else the default.
    pub(crate) fn select(&self, m: &Machine) -> Option<&Group> {
        self.groups
            .iter()
            .filter(|g| !g.default && g.selector.matches(m))
            .max_by_key(|g| g.selector.specificity())
            .or_else(|| self.groups.iter().find(|g| g.default))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<MachinesFile, ConfigError> {
        MachinesFile::parse(Path::new("machines.toml"), text)
    }

    #[test]
    fn signed_with_names_a_certificate_beside_the_file_for_uki_groups_only() {
        let d = tempfile::tempdir().unwrap();
        let file = d.path().join("machines.toml");
        let group = |extra: &str| format!("[[group]]\nname = \"s\"\nprofile = \"a\"\ndefault = true\n{extra}");
        let missing = group("http_boot = \"uki\"\nsigned_with = \"db.crt\"\n");
        let e = MachinesFile::parse(&file, &missing).unwrap_err().to_string();
        assert!(e.contains("machines.toml:6:1") && e.contains("group[0].signed_with") && e.contains("db.crt"), "{e}");
        let der = [0x30u8, 0x03, 0x02, 0x01, 0x01];
        let pem = pem::encode(&pem::Pem::new("CERTIFICATE", der.to_vec()));
        std::fs::write(d.path().join("db.crt"), pem).unwrap();
        let f = MachinesFile::parse(&file, &missing).unwrap();
        assert_eq!(f.groups[0].signed_with_sha256.as_deref(), Some(crate::hash::sha256_hex(&der).as_str()));
        let not_uki = group("signed_with = \"db.crt\"\n");
        let e = MachinesFile::parse(&file, &not_uki).unwrap_err().to_string();
        assert!(e.contains("signed_with is for http_boot = \"uki\""), "{e}");
    }

    fn machine(mac: &str) -> Machine {
        let claims = Claims {
            mac: Some(mac.parse().unwrap()),
            arch: Some("x86_64".into()),
            platform: Some("efi".into()),
            ..Default::default()
        };
        Machine { claims, ..Default::default() }
    }

    const CONF: &str = r#"
[[group]]
name = "by-mac"
profile = "a"
selector = { mac = "52-54-00-AA-BB-CC" }

[[group]]
name = "efi"
profile = "b"
selector = { platform = "efi" }

[[group]]
name = "efi-rack"
profile = "c"
selector = { platform = "efi", labels = { rack = "12" } }

[[group]]
name = "lab"
profile = "d"
selector = { mac = "52:54:00:aa:bb:cc", source = ["127.0.0.0/24"] }

[[group]]
name = "fallback"
profile = "e"
default = true
"#;

    #[test]
    fn most_specific_wins_and_default_catches_the_rest() {
        let f = parse(CONF).unwrap();
        let pick = |m: &Machine| f.select(m).map(|g| g.name.clone());
        let mut m = machine("52:54:00:aa:bb:cc");
        assert_eq!(pick(&m).as_deref(), Some("by-mac"), "mac (identity) beats platform");
        m.source = Some("127.0.0.9".parse().unwrap());
        assert_eq!(pick(&m).as_deref(), Some("lab"), "mac + source beats mac");
        m.source = Some("127.0.1.9".parse().unwrap());
        assert_eq!(pick(&m).as_deref(), Some("by-mac"));
        let mut other = machine("52:54:00:00:00:01");
        assert_eq!(pick(&other).as_deref(), Some("efi"));
        other.labels.insert("rack".into(), "12".into());
        assert_eq!(pick(&other).as_deref(), Some("efi-rack"));
        other.claims.platform = Some("pcbios".into());
        assert_eq!(pick(&other).as_deref(), Some("fallback"));
    }

    #[test]
    fn a_list_of_macs_selects_each_of_them_and_overlapping_lists_are_rejected() {
        let f = parse(
            "[[group]]\nname = \"builders\"\nprofile = \"a\"\n\
             selector = { mac = [\"52:54:00:00:00:01\", \"52-54-00-00-00-02\"] }\n\
             [[group]]\nname = \"other\"\nprofile = \"b\"\nselector = { mac = \"52:54:00:00:00:03\" }\n",
        )
        .unwrap();
        let pick = |mac: &str| f.select(&machine(mac)).map(|g| g.name.clone());
        assert_eq!(pick("52:54:00:00:00:01").as_deref(), Some("builders"));
        assert_eq!(pick("52-54-00-00-00-02").as_deref(), Some("builders"));
        assert_eq!(pick("52:54:00:00:00:03").as_deref(), Some("other"));
        assert_eq!(pick("52:54:00:00:00:04"), None);
        // A MAC in two lists: which group boots it would depend on the order.
        let e = parse(
            "[[group]]\nname = \"a\"\nprofile = \"x\"\nselector = { mac = [\"52:54:00:00:00:01\", \"52:54:00:00:00:02\"] }\n\
             [[group]]\nname = \"b\"\nprofile = \"y\"\nselector = { mac = [\"52:54:00:00:00:09\", \"52-54-00-00-00-02\"] }\n",
        )
        .unwrap_err();
        assert!(e.to_string().contains("groups `a` and `b` are equally specific"), "{e}");
        // A bad address in a list is named with its line.
        let e =
            parse("[[group]]\nname = \"a\"\nprofile = \"x\"\nselector = { mac = [\"52:54:00:00:00:01\", \"nope\"] }\n")
                .unwrap_err()
                .to_string();
        assert!(e.contains("machines.toml:4") && e.contains("`nope` is not a MAC address"), "{e}");
    }

    #[test]
    fn equal_specificity_overlaps_are_rejected() {
        let e = parse(
            "[[group]]\nname = \"a\"\nprofile = \"x\"\nselector = { arch = \"x86_64\" }\n\
             [[group]]\nname = \"b\"\nprofile = \"y\"\nselector = { platform = \"efi\" }\n",
        )
        .unwrap_err();
        assert!(e.message.contains("`a` and `b` are equally specific"), "{e}");
        assert_eq!(e.pos.map(|p| p.0), Some(8), "{e}");
        // Disjoint values of the same key do not overlap.
        parse(
            "[[group]]\nname = \"a\"\nprofile = \"x\"\nselector = { arch = \"x86_64\" }\n\
             [[group]]\nname = \"b\"\nprofile = \"y\"\nselector = { arch = \"arm64\" }\n",
        )
        .unwrap();
        // Nor do disjoint networks.
        parse(
            "[[group]]\nname = \"a\"\nprofile = \"x\"\nselector = { source = [\"10.0.0.0/8\"] }\n\
             [[group]]\nname = \"b\"\nprofile = \"y\"\nselector = { source = [\"192.168.0.0/16\"] }\n",
        )
        .unwrap();
    }

    #[test]
    fn bad_groups_are_reported_with_their_key() {
        let e = parse("[[group]]\nname = \"a\"\nprofile = \"x\"\nselector = { colour = \"red\" }\n").unwrap_err();
        assert!(e.message.contains("unknown field `colour`"), "{e}");
        let e = parse("[[group]]\nname = \"a\"\nselector = { arch = \"x86_64\" }\n").unwrap_err();
        assert!(e.message.contains("exactly one of profile, entry"), "{e}");
        let e =
            parse("[[group]]\nname = \"a\"\nprofile = \"x\"\nselector = { source = [\"10.0.0.0/33\"] }\n").unwrap_err();
        assert!(e.pos.is_some(), "{e}");
    }

    /// Whatever the text, loading gives a value or an error naming the file.
    #[test]
    fn any_text_loads_or_fails_cleanly() {
        use proptest::prelude::*;
        let piece = prop_oneof![
            Just("[[group]]\n".to_string()),
            "name = \"[a-z -;]{0,6}\"\n",
            "profile = \"[a-z.]{0,6}\"\n",
            "entry = \"[0-9a-f./-]{0,40}\"\n",
            "default = (true|false)\n",
            "kernel_args = \"[ -~]{0,10}\"\n",
            "downloads = \\[\"(disk|rootfs|kernel|x)\"\\]\n",
            "selector = \\{ (mac|uuid|arch|platform|hostname) = \"[0-9a-f:-]{0,17}\" \\}\n",
            "selector = \\{ source = \\[\"[0-9a-f.:/]{0,20}\"\\] \\}\n",
            "[\\x00-\\x7f]{0,12}",
        ];
        proptest!(ProptestConfig::with_cases(1500), |(parts in prop::collection::vec(piece, 0..14))| {
            let text: String = parts.concat();
            if let Err(e) = parse(&text) {
                prop_assert_eq!(e.file, std::path::PathBuf::from("machines.toml"));
            }
        });
    }
}
