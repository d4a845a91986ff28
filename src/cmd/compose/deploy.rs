//! `imgd compose deploy`: the composition's nodes on real machines. A NODES
//! file (`HOSTNAME MAC` per line, as a testbed's reservation lists them)
//! gives each node a machine, in the composition's node order; the output is
//! a `machines.toml` that `imgd serve` boots them from (each node's group:
//! its MAC, its role's entry, its identity on the kernel command line, so the
//! same images, bytes and identity as in the VMs) and, for testbeds that
//! deploy images themselves, each role's rootfs tarball with a Kadeploy
//! environment description.

use super::args::DeployArgs;
use super::images::{build, names, Built};
use anyhow::{Context, Result};
use imgd::config::composition::Composition;
use imgd::config::ConfigError;
use imgd::model::mac::Mac;
use imgd::model::manifest::ArtifactName;
use std::fmt::Write as _;
use std::path::Path;

/// A machine of the NODES file.
struct Machine {
    host: String,
    mac: Mac,
}

/// Reads NODES: `HOSTNAME MAC` lines; blank lines and `#` comments skipped.
fn machines(path: &Path) -> Result<Vec<Machine>, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::new(path, format!("cannot read: {e}")))?;
    let mut out: Vec<Machine> = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let at = |col: usize, m: String| ConfigError::new(path, m).at(Some((n + 1, col)));
        let line = line.split('#').next().unwrap_or("");
        let fields: Vec<&str> = line.split_whitespace().collect();
        match fields.as_slice() {
            [] => continue,
            [host, mac] => {
                let ok = host.len() <= 253
                    && host
                        .split('.')
                        .all(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
                if !ok {
                    return Err(at(1, format!("`{}` is not a hostname", host.escape_debug())));
                }
                let col = line.find(mac).map_or(1, |c| c + 1);
                let mac = mac.parse::<Mac>().map_err(|e| at(col, e.to_string()))?;
                if let Some(m) = out.iter().find(|m| m.mac == mac || m.host == *host) {
                    return Err(at(1, format!("{} {} is listed twice (as {} {})", host, mac, m.host, m.mac)));
                }
                out.push(Machine { host: host.to_string(), mac });
            }
            _ => return Err(at(1, "expected `HOSTNAME MAC`".into())),
        }
    }
    Ok(out)
}

pub fn deploy(d: &DeployArgs) -> Result<()> {
    let comp = d.common.load()?;
    let listed = machines(&d.nodes)?;
    if listed.len() != comp.nodes.len() {
        return Err(ConfigError::new(
            &d.nodes,
            format!(
                "{} machines listed, but {} has {} nodes ({})",
                listed.len(),
                comp.path.display(),
                comp.nodes.len(),
                names(&comp)
            ),
        )
        .into());
    }
    if let Some(node) = comp.nodes.iter().find(|n| n.addrs.len() > 1) {
        return Err(ConfigError::new(
            &comp.path,
            format!(
                "node {} is on {} networks; a deployed node has one, on the NIC it boots from",
                node.name,
                node.addrs.len()
            ),
        )
        .into());
    }
    let Built { comp, images, .. } = build(&d.common)?;
    std::fs::create_dir_all(&d.out).with_context(|| d.out.display().to_string())?;
    let toml = machines_toml(&comp, &images, &listed);
    write_new(&d.out.join("machines.toml"), toml.as_bytes())?;
    let store = d.common.store.open()?;
    for (role, img) in comp.roles.iter().zip(&images) {
        tarball(&store, &img.entry, &role.name, &d.out)?;
    }
    eprintln!(
        "imgd compose deploy: {} machines in {}; boot them with `imgd serve --config {}`",
        listed.len(),
        d.out.join("machines.toml").display(),
        d.out.join("machines.toml").display()
    );
    Ok(())
}

/// One group per node, pinned to its role's entry.
fn machines_toml(comp: &Composition, images: &[imgd::compose::RoleImage], listed: &[Machine]) -> String {
    let mut t = format!(
        "# Written by `imgd compose deploy` from {}: one group per node, each\n\
         # booting its role's build with the node's identity (imgd's node stage).\n",
        comp.path.display()
    );
    for (node, m) in comp.nodes.iter().zip(listed) {
        let mac = m.mac.to_string();
        let args = format!(
            "rdinit={} imgd.init=/init {}",
            imgd::rootfs::node_stage::PATH,
            comp.kernel_args(node, |_| mac.clone())
        );
        let _ = write!(
            t,
            "\n[[group]]\nname = {}\nentry = {}\nkernel_args = {}\nvars = {{ host = {}, role = {} }}\n\
             [group.selector]\nmac = {}\n",
            quote(&node.name),
            quote(&images[node.role].entry),
            quote(&args),
            quote(&m.host),
            quote(&comp.roles[node.role].name),
            quote(&mac)
        );
    }
    t
}

fn quote(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// The role's rootfs tarball (hard-linked from the store when it can be)
/// and a Kadeploy environment naming it, when the profile builds `tar`.
fn tarball(store: &imgd::store::Store, entry: &imgd::model::EntryName, role: &str, out: &Path) -> Result<()> {
    let e = store.get(entry)?.with_context(|| format!("{entry} is not in the store"))?;
    let Some(art) = e.manifest.artifacts.iter().find(|a| a.name == ArtifactName::Rootfs) else {
        tracing::info!(role, "no tar format: no rootfs tarball");
        return Ok(());
    };
    let file = format!("{role}.tar.zst");
    let dst = out.join(&file);
    let _ = std::fs::remove_file(&dst);
    if std::fs::hard_link(e.path.join(art.file.as_str()), &dst).is_err() {
        std::fs::copy(e.path.join(art.file.as_str()), &dst)?;
    }
    let env = format!(
        "# Kadeploy environment for role {role} (imgd entry {entry})\n---\nname: {role}\nversion: 1\n\
         description: imgd {entry}\nauthor: imgd\nvisibility: private\ndestructive: false\nos: linux\n\
         image:\n  file: {file}\n  kind: tar\n  compression: zstd\n\
         boot:\n  kernel: /vmlinuz\n  initrd: /initrd.img\n  kernel_params: \"{}\"\nfilesystem: ext4\n\
         partition_type: 131\nmultipart: false\n",
        e.manifest.recipe.cmdline.replace('"', "")
    );
    write_new(&out.join(format!("{role}.env.yaml")), env.as_bytes())
}

/// Writes through a temporary name: a half-written file is never taken as whole.
fn write_new(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().context("no folder")?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    std::io::Write::write_all(&mut tmp, bytes)?;
    tmp.persist(path)?;
    Ok(())
}
