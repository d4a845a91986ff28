//! A composition file: machines that are booted and tested together (a
//! server and N nodes), the private networks between them and the steps of
//! their test. `imgd compose` reads it.
//!
//! ```toml
//! [network.lan]
//! subnet = "10.77.0.0/24"      # addresses in role order, then index, from .1
//!
//! [role.server]
//! profile = "hello"            # a name in profiles/ or a path
//! networks = ["lan"]
//!
//! [role.node]
//! profile = "hello"
//! count = 3                    # node1..node3; a role of count 1 is named by its role
//! networks = ["lan"]
//! memory = "256M"
//! # ssh = { user = "builder", key = "id_ed25519" }  # steps over the image's sshd
//!
//! [variant.small]              # --variant small: values as --set (key = value)
//! "role.node.count" = 1
//!
//! [[step]]
//! on = "all"                   # a node, "all", or a glob ("node*")
//! console = "IMGD-HELLO-READY"
//! ```
//!
//! Step kinds: `console` (wait for text on every chosen console), `run`
//! (must exit 0; `expect`: stdout contains), `until` (retried until it
//! passes), `fail` (must exit non-zero), `partition` (cut the links between
//! groups of nodes), `heal`, `kill` and `start` (a node's VM); each with
//! `timeout` (default 60s).

use super::deployments::relative_to;
use super::error::{from_toml, ConfigError};
use super::load::{apply_set, find_profile, locate_in};
use ipnet::Ipv4Net;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use toml::{Table, Value};

/// At most this many nodes per role (a /24 holds 253 with room to spare).
pub(crate) const MAX_COUNT: u32 = 250;
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, PartialEq)]
pub struct Composition {
    pub path: PathBuf,
    pub networks: Vec<Network>,
    /// In file order (addresses follow it).
    pub roles: Vec<Role>,
    /// Every machine: roles in file order, then index.
    pub nodes: Vec<Node>,
    pub steps: Vec<Step>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Network {
    pub name: String,
    pub subnet: Ipv4Net,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Role {
    pub name: String,
    /// As written: a name in `profiles/` or a path (relative paths resolved
    /// against the composition file's folder).
    pub profile: String,
    pub hardware: Option<String>,
    /// `--set`-style overrides of the profile, `key=value`.
    pub sets: Vec<String>,
    pub count: u32,
    /// Machines are named ROLE1..ROLEn when the role has a `count` (even of
    /// 1, so a variant with fewer machines keeps the names), else ROLE.
    pub numbered: bool,
    /// Indexes into [`Composition::networks`].
    pub networks: Vec<usize>,
    pub memory_mib: Option<u32>,
    /// Commands reach the role's machines over SSH instead of the node
    /// stage's command port: for images whose own init and sshd are what
    /// is under test.
    pub ssh: Option<SshAccess>,
}

/// How imgd logs in to a machine: as `user` with the private key `key`,
/// through a loopback port forwarded to the machine's port 22 on its
/// isolated slirp link.
#[derive(Debug, Clone, PartialEq)]
pub struct SshAccess {
    pub user: String,
    pub key: PathBuf,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub name: String,
    /// Index into [`Composition::roles`].
    pub role: usize,
    /// (network index, address) per network of its role.
    pub addrs: Vec<(usize, Ipv4Addr)>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Console(String),
    Run {
        cmd: String,
        expect: Option<String>,
    },
    Until {
        cmd: String,
        expect: Option<String>,
    },
    Fail(String),
    /// Groups of node names; links between groups are cut.
    Partition(Vec<Vec<String>>),
    Heal,
    Kill,
    Start,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// The nodes it acts on (empty for partition and heal).
    pub on: Vec<String>,
    pub action: Action,
    pub timeout: Duration,
    /// 1-based line in the file, for messages.
    pub line: usize,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileToml {
    #[serde(default)]
    network: BTreeMap<String, NetworkToml>,
    #[serde(default)]
    role: BTreeMap<String, RoleToml>,
    #[serde(default)]
    #[allow(dead_code)] // applied before deserializing
    variant: BTreeMap<String, Table>,
    #[serde(default)]
    step: Vec<StepToml>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NetworkToml {
    subnet: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RoleToml {
    profile: String,
    hardware: Option<String>,
    #[serde(default)]
    set: Table,
    count: Option<Value>,
    #[serde(default)]
    networks: Vec<String>,
    memory: Option<String>,
    ssh: Option<SshToml>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SshToml {
    user: String,
    key: String,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct StepToml {
    on: Option<String>,
    console: Option<String>,
    run: Option<String>,
    until: Option<String>,
    fail: Option<String>,
    expect: Option<String>,
    partition: Option<Vec<Vec<String>>>,
    heal: Option<bool>,
    kill: Option<bool>,
    start: Option<bool>,
    timeout: Option<String>,
}

/// How to read a file: which variant, and `--set role.node.count=5` overrides.
#[derive(Debug, Clone, Default)]
pub struct Choices {
    pub variant: Option<String>,
    pub sets: Vec<String>,
}

impl Composition {
    /// Reads and checks `path`; profiles are looked up under `root`.
    pub fn load(path: &Path, root: &Path, choices: &Choices) -> Result<Composition, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::new(path, format!("cannot read: {e}")))?;
        Self::parse(path, &text, root, choices)
    }

    pub(crate) fn parse(path: &Path, text: &str, root: &Path, choices: &Choices) -> Result<Composition, ConfigError> {
        let mut table: Table = toml::from_str(text).map_err(|e| from_toml(path, text, &e))?;
        apply_choices(path, text, &mut table, choices)?;
        let file: FileToml = table.try_into().map_err(|e: toml::de::Error| {
            let e = ConfigError::new(path, e.message().trim().to_string());
            match e.message.split('`').nth(1).map(str::to_string) {
                Some(k) => e.at(locate_in(path, text, &k)).key(k),
                None => e,
            }
        })?;
        let at = |key: String, m: String| ConfigError::new(path, m).at(locate_in(path, text, &key)).key(key);
        let networks = networks(in_file_order(path, text, "network", file.network), &at)?;
        let roles = roles(path, root, in_file_order(path, text, "role", file.role), &networks, &at)?;
        let nodes = nodes(&roles, &networks, &at)?;
        let steps = steps(file.step, &nodes, &at, |i| locate_in(path, text, &format!("step[{i}]")).map_or(0, |p| p.0))?;
        Ok(Composition { path: path.to_path_buf(), networks, roles, nodes, steps })
    }

    /// The kernel arguments that give `node` its identity (see
    /// `rootfs::node_stage`): its name, an address per network on the
    /// interface with `mac(network)`, and the names of every node.
    pub fn kernel_args(&self, node: &Node, mac: impl Fn(usize) -> String) -> String {
        let mut args = vec![format!("imgd.node={}", node.name)];
        for (net, addr) in &node.addrs {
            let prefix = self.networks[*net].subnet.prefix_len();
            args.push(format!("imgd.net={},{addr}/{prefix}", mac(*net)));
        }
        for (net, _) in &node.addrs {
            args.push(format!("imgd.hosts={}", self.hosts_arg(*net)));
        }
        args.join(" ")
    }

    /// `FIRST,NAME,ROLE*N,…`: the names of a network's consecutive addresses,
    /// short enough for the kernel command line with hundreds of nodes.
    fn hosts_arg(&self, net: usize) -> String {
        let mut out = Vec::new();
        let mut first = None;
        for (ri, role) in self.roles.iter().enumerate() {
            if !role.networks.contains(&net) {
                continue;
            }
            if first.is_none() {
                first = self.nodes.iter().find(|n| n.role == ri).and_then(|n| n.addrs.iter().find(|a| a.0 == net));
            }
            out.push(if role.numbered { format!("{}*{}", role.name, role.count) } else { role.name.clone() });
        }
        let first = first.map_or(String::new(), |a| a.1.to_string());
        format!("{first},{}", out.join(","))
    }
}

/// A table's entries in the order the file has them (addresses follow it);
/// ones only `--set` made come last.
fn in_file_order<T>(path: &Path, text: &str, table: &str, raw: BTreeMap<String, T>) -> Vec<(String, T)> {
    let mut v: Vec<(String, T)> = raw.into_iter().collect();
    v.sort_by_key(|(name, _)| locate_in(path, text, &format!("{table}.{name}")).unwrap_or((usize::MAX, 0)));
    v
}

type At<'a> = dyn Fn(String, String) -> ConfigError + 'a;

/// `[variant.NAME]`'s values, then `--set`s, over the file's own.
fn apply_choices(path: &Path, text: &str, table: &mut Table, c: &Choices) -> Result<(), ConfigError> {
    let mut sets = Vec::new();
    if let Some(v) = &c.variant {
        let variants = table.get("variant").and_then(Value::as_table);
        let Some(chosen) = variants.and_then(|t| t.get(v)).and_then(Value::as_table) else {
            let known: Vec<String> = variants.map(|t| t.keys().cloned().collect()).unwrap_or_default();
            return Err(ConfigError::new(
                path,
                format!(
                    "no [variant.{v}] (known: {})",
                    if known.is_empty() { "none".into() } else { known.join(", ") }
                ),
            )
            .key("--variant"));
        };
        for (k, val) in chosen {
            sets.push((format!("variant.{v}.{k}"), format!("{k}={val}")));
        }
    }
    sets.extend(c.sets.iter().map(|s| ("--set".to_string(), s.clone())));
    for (origin, set) in sets {
        if !set.starts_with("role.") && !set.starts_with("network.") {
            let e = ConfigError::new(path, format!("`{set}`: only role.* and network.* values can be chosen"));
            return Err(e.at(locate_in(path, text, &origin)).key(origin));
        }
        apply_set(table, &set, &mut BTreeMap::new())?;
    }
    Ok(())
}

fn networks(raw: Vec<(String, NetworkToml)>, at: &At<'_>) -> Result<Vec<Network>, ConfigError> {
    let mut out: Vec<Network> = Vec::new();
    for (name, n) in &raw {
        let key = format!("network.{name}.subnet");
        if !host_name(name) {
            return Err(at(format!("network.{name}"), "a network name: a-z, 0-9 and -".into()));
        }
        let subnet: Ipv4Net = n.subnet.parse().map_err(|_| {
            at(key.clone(), format!("`{}`: an IPv4 subnet such as 10.77.0.0/24", n.subnet.escape_debug()))
        })?;
        if subnet.prefix_len() > 30 {
            return Err(at(key, format!("{subnet} has no room for machines: at most /30")));
        }
        if let Some(o) =
            out.iter().find(|o| o.subnet.contains(&subnet.network()) || subnet.contains(&o.subnet.network()))
        {
            return Err(at(key, format!("{subnet} overlaps network {} ({})", o.name, o.subnet)));
        }
        out.push(Network { name: name.clone(), subnet: subnet.trunc() });
    }
    Ok(out)
}

fn roles(
    path: &Path,
    root: &Path,
    raw: Vec<(String, RoleToml)>,
    networks: &[Network],
    at: &At<'_>,
) -> Result<Vec<Role>, ConfigError> {
    if raw.is_empty() {
        return Err(ConfigError::new(path, "no [role.NAME]: nothing to start"));
    }
    let here = path.parent().unwrap_or(Path::new("."));
    let mut out = Vec::new();
    for (name, r) in raw {
        let key = |k: &str| format!("role.{name}.{k}");
        if !host_name(&name) {
            return Err(at(format!("role.{name}"), "a role name: a-z, 0-9 and - (it names machines)".into()));
        }
        let profile = relative_to(&r.profile, here);
        find_profile(root, &profile).map_err(|e| at(key("profile"), e.message))?;
        let count = match &r.count {
            None => 1,
            Some(v) => v
                .as_integer()
                .and_then(|n| u32::try_from(n).ok())
                .filter(|n| (1..=MAX_COUNT).contains(n))
                .ok_or_else(|| at(key("count"), format!("`{v}`: a machine count from 1 to {MAX_COUNT}")))?,
        };
        let mut nets = Vec::new();
        for (i, n) in r.networks.iter().enumerate() {
            let idx = networks.iter().position(|x| &x.name == n);
            let known: Vec<&str> = networks.iter().map(|x| x.name.as_str()).collect();
            let idx = idx.ok_or_else(|| {
                at(key(&format!("networks[{i}]")), format!("no [network.{n}] (known: {})", known.join(", ")))
            })?;
            nets.push(idx);
        }
        let memory_mib = match &r.memory {
            None => None,
            Some(m) => Some(
                mebibytes(m)
                    .ok_or_else(|| at(key("memory"), format!("`{m}`: a size such as 256M or 1G (64M at least)")))?,
            ),
        };
        let ssh = r.ssh.map(|a| ssh_access(a, here, &|k, m| at(key(&format!("ssh.{k}")), m))).transpose()?;
        out.push(Role {
            sets: r.set.iter().map(|(k, v)| format!("{k}={v}")).collect(),
            name,
            profile,
            hardware: r.hardware.map(|h| relative_to(&h, here)),
            count,
            numbered: r.count.is_some(),
            networks: nets,
            memory_mib,
            ssh,
        });
    }
    Ok(out)
}

/// Every machine, named and addressed: roles in order, then index, each
/// network's addresses from its first host address on.
fn nodes(roles: &[Role], networks: &[Network], at: &At<'_>) -> Result<Vec<Node>, ConfigError> {
    let mut out: Vec<Node> = Vec::new();
    let mut next: Vec<u32> = networks.iter().map(|n| u32::from(n.subnet.network()) + 1).collect();
    for (ri, role) in roles.iter().enumerate() {
        for i in 1..=role.count {
            let name = if role.numbered { format!("{}{i}", role.name) } else { role.name.clone() };
            if let Some(other) = out.iter().find(|n| n.name == name) {
                let m = format!(
                    "machine `{name}` of role {} is also a machine of role {}",
                    role.name, roles[other.role].name
                );
                return Err(at(format!("role.{}", role.name), m));
            }
            let mut addrs = Vec::new();
            for &net in &role.networks {
                let addr = Ipv4Addr::from(next[net]);
                if addr >= networks[net].subnet.broadcast() {
                    let m = format!("{} has no address left for {name}", networks[net].subnet);
                    return Err(at(format!("network.{}.subnet", networks[net].name), m));
                }
                next[net] += 1;
                addrs.push((net, addr));
            }
            out.push(Node { name, role: ri, addrs });
        }
    }
    Ok(out)
}

fn steps(
    raw: Vec<StepToml>,
    nodes: &[Node],
    at: &At<'_>,
    line: impl Fn(usize) -> usize,
) -> Result<Vec<Step>, ConfigError> {
    let mut out = Vec::new();
    for (i, s) in raw.into_iter().enumerate() {
        let key = |k: &str| format!("step[{i}].{k}");
        let timeout = match &s.timeout {
            None => DEFAULT_TIMEOUT,
            Some(t) => seconds(t).ok_or_else(|| at(key("timeout"), format!("`{t}`: a time such as 90s or 2m")))?,
        };
        let kinds = [
            s.console.is_some(),
            s.run.is_some(),
            s.until.is_some(),
            s.fail.is_some(),
            s.partition.is_some(),
            s.heal.is_some(),
            s.kill.is_some(),
            s.start.is_some(),
        ];
        if kinds.iter().filter(|k| **k).count() != 1 {
            let m = "one of console, run, until, fail, partition, heal, kill or start".to_string();
            return Err(at(format!("step[{i}]"), m));
        }
        if s.expect.is_some() && s.run.is_none() && s.until.is_none() {
            return Err(at(key("expect"), "expect goes with run or until".into()));
        }
        let needs_on = s.partition.is_none() && s.heal.is_none();
        let on = match (&s.on, needs_on) {
            (Some(p), true) => {
                let chosen = choose(p, nodes).map_err(|m| at(key("on"), m))?;
                // A glob may match nothing (a variant with fewer machines);
                // a name or `all` must.
                if chosen.is_empty() && !is_glob(p) {
                    let names: Vec<&str> = nodes.iter().map(|n| n.name.as_str()).collect();
                    return Err(at(key("on"), format!("`{p}` names no machine (machines: {})", names.join(", "))));
                }
                chosen
            }
            (None, true) => {
                return Err(at(format!("step[{i}]"), "on = \"NODE\", \"all\" or a glob: which machines".into()))
            }
            (Some(_), false) => return Err(at(key("on"), "partition and heal act on links, not machines".into())),
            (None, false) => Vec::new(),
        };
        let action = if let Some(c) = s.console {
            Action::Console(c)
        } else if let Some(cmd) = s.run {
            Action::Run { cmd, expect: s.expect }
        } else if let Some(cmd) = s.until {
            Action::Until { cmd, expect: s.expect }
        } else if let Some(cmd) = s.fail {
            Action::Fail(cmd)
        } else if let Some(groups) = s.partition {
            partition(&groups, nodes).map_err(|m| at(key("partition"), m))?;
            Action::Partition(groups)
        } else if s.heal.is_some() {
            Action::Heal
        } else if s.kill.is_some() {
            Action::Kill
        } else {
            Action::Start
        };
        out.push(Step { on, action, timeout, line: line(i) });
    }
    Ok(out)
}

fn is_glob(p: &str) -> bool {
    p.contains(['*', '?', '['])
}

/// The machines `pattern` names: `all`, a name, or a glob.
fn choose(pattern: &str, nodes: &[Node]) -> Result<Vec<String>, String> {
    if pattern == "all" {
        return Ok(nodes.iter().map(|n| n.name.clone()).collect());
    }
    let glob = glob::Pattern::new(pattern).map_err(|e| format!("`{pattern}`: {e}"))?;
    Ok(nodes.iter().filter(|n| glob.matches(&n.name)).map(|n| n.name.clone()).collect())
}

fn partition(groups: &[Vec<String>], nodes: &[Node]) -> Result<(), String> {
    if groups.len() < 2 {
        return Err("at least two groups of machines: the links between them are cut".into());
    }
    let mut seen: Vec<&str> = Vec::new();
    for name in groups.iter().flatten() {
        if !nodes.iter().any(|n| &n.name == name) {
            return Err(format!("no machine `{}`", name.escape_debug()));
        }
        if seen.contains(&name.as_str()) {
            return Err(format!("`{name}` is in two groups"));
        }
        seen.push(name);
    }
    Ok(())
}

/// A name that can be a hostname label: a-z, 0-9, -, at most 63.
/// `[role.X.ssh]`: a login name a shell could not misread, and a key file
/// that is there (relative to the composition's folder).
fn ssh_access(a: SshToml, here: &Path, at: &dyn Fn(&str, String) -> ConfigError) -> Result<SshAccess, ConfigError> {
    let user_ok = (1..=32).contains(&a.user.len())
        && !a.user.starts_with('-')
        && a.user.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if !user_ok {
        return Err(at("user", format!("`{}`: a login name (a-z, 0-9, _ and -)", a.user.escape_debug())));
    }
    let key = here.join(&a.key);
    if !key.is_file() {
        return Err(at("key", format!("{}: no such key file", key.display())));
    }
    Ok(SshAccess { user: a.user, key })
}

fn host_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && !s.starts_with('-')
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// `256M`, `256MiB`, `1G`, `1GiB` -> MiB (at least 64).
fn mebibytes(s: &str) -> Option<u32> {
    let s = s.trim();
    let digits = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let n: u32 = s[..digits].parse().ok()?;
    let mib = match &s[digits..] {
        "M" | "MiB" | "MB" => n,
        "G" | "GiB" | "GB" => n.checked_mul(1024)?,
        _ => return None,
    };
    (64..=1 << 20).contains(&mib).then_some(mib)
}

/// `90s`, `2m`, `1h` -> a duration (at most a day).
fn seconds(s: &str) -> Option<Duration> {
    let s = s.trim();
    let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit())?);
    let n: u64 = n.parse().ok()?;
    let secs = match unit {
        "s" => n,
        "m" => n.checked_mul(60)?,
        "h" => n.checked_mul(3600)?,
        _ => return None,
    };
    (1..=86_400).contains(&secs).then(|| Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../../profiles/hello.compose.toml");

    fn parse(text: &str, choices: &Choices) -> Result<Composition, ConfigError> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        Composition::parse(&root.join("profiles/x.compose.toml"), text, root, choices)
    }

    #[test]
    fn the_example_names_and_addresses_machines_in_role_order() {
        let c = parse(EXAMPLE, &Choices::default()).unwrap();
        let names: Vec<&str> = c.nodes.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["server", "node1", "node2", "node3"]);
        assert_eq!(c.nodes[0].addrs, [(0, Ipv4Addr::new(10, 77, 0, 1))]);
        assert_eq!(c.nodes[3].addrs, [(0, Ipv4Addr::new(10, 77, 0, 4))]);
        let args = c.kernel_args(&c.nodes[1], |_| "52:54:00:00:00:01".into());
        assert_eq!(args, "imgd.node=node1 imgd.net=52:54:00:00:00:01,10.77.0.2/24 imgd.hosts=10.77.0.1,server,node*3");
        assert!(matches!(c.steps[0].action, Action::Console(_)));
        assert_eq!(c.steps[0].on.len(), 4);
    }

    #[test]
    fn a_variant_and_a_set_change_counts() {
        let small = Choices { variant: Some("small".into()), sets: vec![] };
        let c = parse(EXAMPLE, &small).unwrap();
        assert_eq!(c.nodes.iter().map(|n| n.name.as_str()).collect::<Vec<_>>(), ["server", "node1"]);
        let five = Choices { variant: None, sets: vec!["role.node.count=5".into()] };
        assert_eq!(parse(EXAMPLE, &five).unwrap().nodes.len(), 6);
        let bad = Choices { variant: Some("huge".into()), sets: vec![] };
        assert!(parse(EXAMPLE, &bad).unwrap_err().to_string().contains("no [variant.huge]"));
    }

    #[test]
    fn mistakes_name_their_line_and_key() {
        let cases = [
            ("[[step]]\non = \"nobody\"\nconsole = \"x\"", "names no machine"),
            ("[network.b]\nsubnet = \"10.77.0.128/25\"", "overlaps network"),
            ("[role.extra]\nprofile = \"nosuch\"", "nosuch"),
            ("[role.extra]\nprofile = \"hello\"\ncount = 0", "a machine count from 1 to 250"),
            ("[role.extra]\nprofile = \"hello\"\ncount = 251", "a machine count from 1 to 250"),
            ("[role.node1]\nprofile = \"hello\"", "is also a machine of role"),
            ("[[step]]\npartition = [[\"server\"], [\"ghost\"]]", "no machine `ghost`"),
        ];
        for (extra, want) in cases {
            let text = format!("{EXAMPLE}\n{extra}\n");
            let e = parse(&text, &Choices::default()).unwrap_err();
            let line = EXAMPLE.lines().count() + 2;
            assert!(e.message.contains(want), "{extra}: {e}");
            let pos = e.pos.unwrap_or_else(|| panic!("{extra}: no position in {e}"));
            assert!(pos.0 >= line, "{extra}: line {} before the addition ({line}): {e}", pos.0);
        }
    }
}
