//! A deployments file: the images a fleet runs and where. Each deployment
//! names a profile (with `--set`-style overrides and a hardware), the
//! instance count per AWS region, its instance type and security groups.
//! `imgd sync --deployments` builds each distinct image once and makes its
//! AMI in exactly the regions its deployments use.
//!
//! ```toml
//! [[deployment]]
//! name = "presync"
//! profile = "hello"                          # a name in profiles/ or a path
//! regions = { "eu-west-1" = 1, "us-east-1" = 1 }   # region = instance count
//! instance_type = "r5d.2xlarge"
//! security_groups = ["allow-ssh"]
//! set = { hostname = "presync" }             # optional: as --set
//! hardware = "aws-nitro-x86_64"              # optional: as --hardware
//! ```

use super::error::{from_toml, ConfigError};
use super::load::{find_profile, locate_in};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// AWS regions as of late 2026 (commercial, GovCloud, China). A name not
/// here is a typo far more often than a region newer than this imgd.
pub(crate) const AWS_REGIONS: &[&str] = &[
    "af-south-1",
    "ap-east-1",
    "ap-east-2",
    "ap-northeast-1",
    "ap-northeast-2",
    "ap-northeast-3",
    "ap-south-1",
    "ap-south-2",
    "ap-southeast-1",
    "ap-southeast-2",
    "ap-southeast-3",
    "ap-southeast-4",
    "ap-southeast-5",
    "ap-southeast-6",
    "ap-southeast-7",
    "ca-central-1",
    "ca-west-1",
    "cn-north-1",
    "cn-northwest-1",
    "eu-central-1",
    "eu-central-2",
    "eu-north-1",
    "eu-south-1",
    "eu-south-2",
    "eu-west-1",
    "eu-west-2",
    "eu-west-3",
    "il-central-1",
    "me-central-1",
    "me-south-1",
    "mx-central-1",
    "sa-east-1",
    "us-east-1",
    "us-east-2",
    "us-gov-east-1",
    "us-gov-west-1",
    "us-west-1",
    "us-west-2",
];

/// One deployment, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Deployment {
    pub name: String,
    /// As written: a name in `profiles/` or a path (relative paths resolved
    /// against the deployments file's folder).
    pub profile: String,
    pub hardware: Option<String>,
    /// `--set`-style overrides, `key=value` with the value as TOML.
    pub sets: Vec<String>,
    /// Region -> instance count.
    pub regions: BTreeMap<String, u32>,
    pub instance_type: String,
    pub security_groups: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DeploymentsFile {
    pub path: PathBuf,
    pub deployments: Vec<Deployment>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileToml {
    #[serde(default)]
    deployment: Vec<DeploymentToml>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeploymentToml {
    name: String,
    profile: String,
    #[serde(default)]
    set: toml::Table,
    hardware: Option<String>,
    regions: BTreeMap<String, toml::Value>,
    instance_type: String,
    #[serde(default)]
    security_groups: Vec<String>,
}

impl DeploymentsFile {
    /// Reads and checks `path`; profiles are looked up under `root`.
    pub fn load(path: &Path, root: &Path) -> Result<DeploymentsFile, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::new(path, format!("cannot read: {e}")))?;
        Self::parse(path, &text, root)
    }

    pub(crate) fn parse(path: &Path, text: &str, root: &Path) -> Result<DeploymentsFile, ConfigError> {
        let file: FileToml = toml::from_str(text).map_err(|e| from_toml(path, text, &e))?;
        let err = |key: String, m: String| ConfigError::new(path, m).at(locate_in(path, text, &key)).key(key);
        if file.deployment.is_empty() {
            return Err(ConfigError::new(path, "no [[deployment]]: nothing to sync"));
        }
        let here = path.parent().unwrap_or(Path::new("."));
        let mut deployments: Vec<Deployment> = Vec::new();
        for (i, d) in file.deployment.into_iter().enumerate() {
            let key = |k: &str| format!("deployment[{i}].{k}");
            if !crate::model::valid_name(&d.name) {
                return Err(err(key("name"), format!("`{}`: letters, digits, - or _", d.name.escape_debug())));
            }
            // `imgd:deployment:NAME` tags its images; AWS tag keys end at 128.
            if d.name.len() > 112 {
                return Err(err(key("name"), "at most 112 characters (it names an AWS tag)".into()));
            }
            if deployments.iter().any(|e| e.name == d.name) {
                return Err(err(key("name"), format!("deployment `{}` is named twice", d.name)));
            }
            let profile = profile_path(&d.profile, here, root).map_err(|m| err(key("profile"), m))?;
            let mut regions = BTreeMap::new();
            for (r, n) in &d.regions {
                let rkey = key(&format!("regions.{r}"));
                if !AWS_REGIONS.contains(&r.as_str()) {
                    return Err(err(rkey, format!("`{}` is not an AWS region name", r.escape_debug())));
                }
                let count = n.as_integer().and_then(|n| u32::try_from(n).ok());
                let count = count.ok_or_else(|| err(rkey, format!("`{n}`: an instance count (0 or more)")))?;
                regions.insert(r.clone(), count);
            }
            if regions.is_empty() {
                return Err(err(key("regions"), "no regions: name at least one (region = instance count)".into()));
            }
            let plain = |s: &str| !s.is_empty() && s.len() <= 255 && !s.chars().any(|c| c.is_control());
            if !plain(&d.instance_type) || d.instance_type.contains(char::is_whitespace) {
                return Err(err(key("instance_type"), "an instance type such as r5d.xlarge".into()));
            }
            if let Some((j, _)) = d.security_groups.iter().enumerate().find(|(_, g)| !plain(g)) {
                return Err(err(key(&format!("security_groups[{j}]")), "a security group name or id".into()));
            }
            let sets = d.set.iter().map(|(k, v)| format!("{k}={v}")).collect();
            deployments.push(Deployment {
                name: d.name,
                profile,
                hardware: d.hardware.map(|h| relative_to(&h, here)),
                sets,
                regions,
                instance_type: d.instance_type,
                security_groups: d.security_groups,
            });
        }
        Ok(DeploymentsFile { path: path.to_path_buf(), deployments })
    }

    /// Only the deployments named (`--only`); every name must exist.
    pub fn only(mut self, names: &[String]) -> Result<DeploymentsFile, ConfigError> {
        if names.is_empty() {
            return Ok(self);
        }
        if let Some(n) = names.iter().find(|n| !self.deployments.iter().any(|d| &d.name == *n)) {
            let known: Vec<&str> = self.deployments.iter().map(|d| d.name.as_str()).collect();
            return Err(ConfigError::new(
                "--only",
                format!("no deployment `{n}` in {} (known: {})", self.path.display(), known.join(", ")),
            ));
        }
        self.deployments.retain(|d| names.contains(&d.name));
        Ok(self)
    }
}

/// A profile name as `imgd build` takes it; a path relative to the
/// deployments file's folder. It must exist.
fn profile_path(profile: &str, here: &Path, root: &Path) -> Result<String, String> {
    let arg = relative_to(profile, here);
    find_profile(root, &arg).map_err(|e| e.message)?;
    Ok(arg)
}

/// A path written in the file, relative to its folder; a bare name stays a name.
pub(super) fn relative_to(s: &str, here: &Path) -> String {
    if s.contains('/') && !s.starts_with('/') {
        here.join(s).to_string_lossy().into_owned()
    } else {
        s.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<DeploymentsFile, ConfigError> {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        DeploymentsFile::parse(&root.join("fleet.deploy.toml"), text, &root)
    }

    const TWO: &str = r#"
[[deployment]]
name = "presync"
profile = "hello"
regions = { "eu-west-1" = 1, "us-east-1" = 1 }
instance_type = "r5d.2xlarge"
security_groups = ["allow-ssh"]

[[deployment]]
name = "fullsync"
profile = "hello"
set = { hostname = "fullsync", "disk.size" = "2GiB" }
regions = { "us-east-1" = 2, "us-east-2" = 2 }
instance_type = "r5d.xlarge"
"#;

    #[test]
    fn the_shipped_example_reads() {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let f = DeploymentsFile::load(&root.join("profiles/fleet.deploy.toml"), &root).unwrap();
        let names: Vec<&str> = f.deployments.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["presync", "fullsync"]);
    }

    #[test]
    fn a_fleet_reads_with_counts_overrides_and_groups() {
        let f = parse(TWO).unwrap();
        assert_eq!(f.deployments.len(), 2);
        let full = &f.deployments[1];
        assert_eq!(full.regions.get("us-east-2"), Some(&2));
        assert_eq!(full.sets, vec!["disk.size=\"2GiB\"".to_string(), "hostname=\"fullsync\"".to_string()]);
        assert_eq!(f.deployments[0].security_groups, vec!["allow-ssh".to_string()]);
        let only = f.only(&["fullsync".into()]).unwrap();
        assert_eq!(only.deployments.len(), 1);
    }

    #[test]
    fn mistakes_name_the_file_line_and_key() {
        // (text, the key at fault, the text on its line, what the message says)
        let cases = [
            (
                TWO.replace("\"us-east-2\" = 2", "\"us-east-9\" = 2"),
                "deployment[1].regions.us-east-9",
                "us-east-9",
                "not an AWS region",
            ),
            (
                TWO.replace("\"us-east-2\" = 2", "\"us-east-2\" = -2"),
                "deployment[1].regions.us-east-2",
                "= -2",
                "instance count",
            ),
            (
                TWO.replace("\"us-east-2\" = 2", "\"us-east-2\" = 1.5"),
                "deployment[1].regions.us-east-2",
                "1.5",
                "instance count",
            ),
            (
                TWO.replace("\"fullsync\"\nprofile", "\"presync\"\nprofile"),
                "deployment[1].name",
                "name = \"presync\"\nprofile",
                "named twice",
            ),
            (
                TWO.replace("\"fullsync\"\nprofile", &format!("\"{}\"\nprofile", "f".repeat(113))),
                "deployment[1].name",
                "fff\"\nprofile",
                "at most 112 characters",
            ),
            (
                TWO.replace("profile = \"hello\"\nset", "profile = \"nope\"\nset"),
                "deployment[1].profile",
                "\"nope\"",
                "no profile named `nope`",
            ),
        ];
        for (text, key, needle, what) in cases {
            let e = parse(&text).unwrap_err();
            assert_eq!(e.key.as_deref(), Some(key), "{e}");
            assert!(e.to_string().contains(what) && e.to_string().contains("fleet.deploy.toml:"), "{e}");
            let line = text[..text.rfind(needle).unwrap()].matches('\n').count() + 1;
            assert_eq!(e.pos.map(|p| p.0), Some(line), "{e}");
        }
        let e = parse("[[deployment]]\nname = \"a\"\nprofile = \"hello\"\nregions = {}\ninstance_type = \"t3.micro\"\nsurprise = 1\n").unwrap_err();
        assert!(e.to_string().contains("fleet.deploy.toml:6") && e.to_string().contains("surprise"), "{e}");
        assert!(parse("").unwrap_err().to_string().contains("no [[deployment]]"));
    }
}
