//! What a profile adds on top of its base: mount points, users with SSH keys,
//! the hostname, files, and enabled systemd units.

use super::error::Result;
use super::tree::{Kind, Tree};
use crate::config::recipe::{FileContent, Recipe};

/// Directories every Linux root needs as mount points.
pub(crate) fn skeleton(tree: &mut Tree) -> Result<()> {
    for (d, mode) in [("/proc", 0o555), ("/sys", 0o555), ("/dev", 0o755), ("/run", 0o755), ("/tmp", 0o1777)] {
        if tree.get(d).is_none() {
            tree.add_dir(d, mode)?;
        }
    }
    // Each machine of a fleet must get its own identity at first boot, not the
    // one the base was built with (systemd fills an empty machine-id at boot).
    if tree.get("/etc/machine-id").is_some() {
        tree.add_bytes("/etc/machine-id", b"", 0o444)?;
    }
    if tree.get("/var/lib/dbus/machine-id").is_some() {
        let rel = tree.resolve("/var/lib/dbus/machine-id", false)?;
        tree.remove(&rel)?;
    }
    ssh_host_keys(tree)
}

/// OpenSSH's package generates host keys when it is installed, so a bootstrapped
/// base carries keys every machine of the fleet would share (and that change on
/// every bootstrap). Drop them; each machine makes its own at first boot.
fn ssh_host_keys(tree: &mut Tree) -> Result<()> {
    let keys: Vec<String> =
        tree.nodes().filter(|(k, _)| k.starts_with("etc/ssh/ssh_host_")).map(|(k, _)| k.clone()).collect();
    for k in &keys {
        tree.remove(k)?;
    }
    let has_sshd = ["/usr/sbin/sshd", "/sbin/sshd"].iter().any(|p| tree.get(p).is_some());
    if !has_sshd || tree.get("/etc/systemd/system").is_none() && tree.get("/lib/systemd/system").is_none() {
        return Ok(());
    }
    let unit = "[Unit]\nDescription=Generate SSH host keys (imgd: each machine its own)\nBefore=ssh.service\n\
                ConditionPathExists=!/etc/ssh/ssh_host_ed25519_key\n\n[Service]\nType=oneshot\n\
                ExecStart=/usr/bin/ssh-keygen -A\n\n[Install]\nWantedBy=multi-user.target\n";
    tree.add_bytes("/etc/systemd/system/imgd-ssh-hostkeys.service", unit.as_bytes(), 0o644)?;
    tree.add_symlink(
        "/etc/systemd/system/multi-user.target.wants/imgd-ssh-hostkeys.service",
        "/etc/systemd/system/imgd-ssh-hostkeys.service",
    )?;
    let dropin = "[Unit]\nWants=imgd-ssh-hostkeys.service\nAfter=imgd-ssh-hostkeys.service\n";
    tree.add_bytes("/etc/systemd/system/ssh.service.d/imgd-hostkeys.conf", dropin.as_bytes(), 0o644)?;
    Ok(())
}

/// What the kernel needs to start the image straight from an initramfs (the
/// iPXE format): `/init`, and a console before devtmpfs is mounted.
pub(crate) fn boot_entry(tree: &mut Tree, init: &str) -> Result<()> {
    if tree.get("/dev/console").is_none() {
        tree.insert("/dev/console", super::tree::Node::new(Kind::Char(5, 1), 0o600))?;
    }
    if init != "/init" && tree.get("/init").is_none() {
        tree.add_symlink("/init", init)?;
    }
    Ok(())
}

pub(crate) fn hostname(tree: &mut Tree, name: &str) -> Result<()> {
    tree.add_bytes("/etc/hostname", format!("{name}\n").as_bytes(), 0o644)?;
    let hosts = format!("127.0.0.1\tlocalhost\n127.0.1.1\t{name}\n::1\tlocalhost ip6-localhost ip6-loopback\n");
    tree.add_bytes("/etc/hosts", hosts.as_bytes(), 0o644)?;
    Ok(())
}

fn text(tree: &Tree, path: &str) -> String {
    tree.read(path).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default()
}

/// `name:x:uid:...` tables (/etc/passwd, /etc/group) as (name, id) pairs.
fn ids(table: &str) -> Vec<(String, u32)> {
    table
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            Some((f.first()?.to_string(), f.get(2)?.parse().ok()?))
        })
        .collect()
}

/// Adds the profile's users: passwd, group (own group plus supplementary ones),
/// a locked shadow entry (SSH keys only), home and authorized_keys.
pub(crate) fn users(tree: &mut Tree, recipe: &Recipe) -> Result<()> {
    if recipe.users.is_empty() {
        return Ok(());
    }
    let mut passwd = text(tree, "/etc/passwd");
    let mut group = text(tree, "/etc/group");
    let mut shadow = text(tree, "/etc/shadow");
    if passwd.is_empty() {
        passwd.push_str("root:x:0:0:root:/root:/bin/sh\n");
        group.push_str("root:x:0:\n");
        shadow.push_str("root:*:1:0:99999:7:::\n");
    }
    let days = recipe.epoch / 86_400;
    for (i, u) in recipe.users.iter().enumerate() {
        if ids(&passwd).iter().any(|(n, _)| n == &u.name) {
            return Err(recipe
                .profile_error(&format!("users[{i}].name"), format!("user `{}` already exists in the base", u.name))
                .into());
        }
        let uid = u.uid.unwrap_or(1000 + i as u32);
        let home = u.home.clone().unwrap_or_else(|| format!("/home/{}", u.name));
        let shell = u.shell.clone().unwrap_or_else(|| "/bin/sh".into());
        passwd.push_str(&format!("{}:x:{uid}:{uid}::{home}:{shell}\n", u.name));
        group.push_str(&format!("{}:x:{uid}:\n", u.name));
        shadow.push_str(&format!("{}:!:{days}:0:99999:7:::\n", u.name));
        for g in &u.groups {
            group = add_member(&group, g, &u.name).ok_or_else(|| {
                recipe.profile_error(&format!("users[{i}].groups"), format!("no group `{g}` in the image's /etc/group"))
            })?;
        }
        let rel = tree.add_dir(&home, 0o755)?;
        tree.set_owner(&rel, uid, uid);
        if !u.ssh_authorized_keys.is_empty() {
            let rel = tree.add_dir(&format!("{home}/.ssh"), 0o700)?;
            tree.set_owner(&rel, uid, uid);
            let keys = u.ssh_authorized_keys.iter().map(|k| format!("{}\n", k.trim())).collect::<String>();
            let rel = tree.add_bytes(&format!("{home}/.ssh/authorized_keys"), keys.as_bytes(), 0o600)?;
            tree.set_owner(&rel, uid, uid);
        }
    }
    let shadow_gid = ids(&group).into_iter().find(|(n, _)| n == "shadow").map_or(0, |(_, g)| g);
    tree.add_bytes("/etc/passwd", passwd.as_bytes(), 0o644)?;
    tree.add_bytes("/etc/group", group.as_bytes(), 0o644)?;
    let rel = tree.add_bytes("/etc/shadow", shadow.as_bytes(), 0o640)?;
    tree.set_owner(&rel, 0, shadow_gid);
    Ok(())
}

fn add_member(group: &str, g: &str, user: &str) -> Option<String> {
    let mut found = false;
    let out = group
        .lines()
        .map(|l| {
            let mut f: Vec<String> = l.split(':').map(str::to_string).collect();
            if f.first().map(String::as_str) == Some(g) && f.len() >= 4 {
                found = true;
                let members = &mut f[3];
                if !members.is_empty() {
                    members.push(',');
                }
                members.push_str(user);
            }
            f.join(":") + "\n"
        })
        .collect();
    found.then_some(out)
}

/// Resolves `owner = "user:group"` (names or numbers) against the image.
fn owner(tree: &Tree, spec: &str) -> Option<(u32, u32)> {
    let (u, g) = spec.split_once(':').unwrap_or((spec, spec));
    let lookup = |name: &str, table: &str| -> Option<u32> {
        name.parse()
            .ok()
            .or_else(|| if name == "root" { Some(0) } else { None })
            .or_else(|| ids(&text(tree, table)).into_iter().find(|(n, _)| n == name).map(|(_, id)| id))
    };
    Some((lookup(u, "/etc/passwd")?, lookup(g, "/etc/group")?))
}

pub(crate) fn files(tree: &mut Tree, recipe: &Recipe) -> Result<()> {
    for (i, f) in recipe.files.iter().enumerate() {
        let rel = match &f.content {
            FileContent::Inline(s) => tree.add_bytes(&f.path, s.as_bytes(), f.mode.unwrap_or(0o644))?,
            FileContent::Source(input) => tree.add_copy(&f.path, &input.path, f.mode.unwrap_or(0o644))?,
            FileContent::Symlink(t) => tree.add_symlink(&f.path, t)?,
            FileContent::Dir => tree.add_dir(&f.path, f.mode.unwrap_or(0o755))?,
        };
        if let Some(spec) = &f.owner {
            let (uid, gid) = owner(tree, spec).ok_or_else(|| {
                recipe.profile_error(&format!("files[{i}].owner"), format!("unknown user or group in `{spec}`"))
            })?;
            tree.set_owner(&rel, uid, gid);
        }
    }
    Ok(())
}

/// Enables systemd units the way `systemctl enable` does: a symlink in each
/// target's `.wants` (or `.requires`) named in the unit's [Install] section.
pub(crate) fn services(tree: &mut Tree, recipe: &Recipe) -> Result<()> {
    for (i, unit) in recipe.services.iter().enumerate() {
        // serial-getty@ttyS0.service is an instance of serial-getty@.service.
        let file_name = match unit.split_once('@') {
            Some((prefix, rest)) if !rest.starts_with('.') => {
                format!("{prefix}@.{}", rest.rsplit_once('.').map_or("service", |(_, t)| t))
            }
            _ => unit.clone(),
        };
        let found = ["/etc/systemd/system", "/lib/systemd/system", "/usr/lib/systemd/system"]
            .iter()
            .map(|d| format!("{d}/{file_name}"))
            .find(|p| matches!(tree.get(p).map(|n| &n.kind), Some(Kind::File)));
        let Some(path) = found else {
            return Err(recipe
                .profile_error(&format!("services.enable[{i}]"), format!("unit {file_name} is not in the image"))
                .into());
        };
        let body = text(tree, &path);
        let mut targets = Vec::new();
        let mut in_install = false;
        for line in body.lines().map(str::trim) {
            if line.starts_with('[') {
                in_install = line == "[Install]";
            } else if in_install {
                for (key, dir) in [("WantedBy=", "wants"), ("RequiredBy=", "requires")] {
                    if let Some(v) = line.strip_prefix(key) {
                        targets.extend(v.split_whitespace().map(|t| format!("{t}.{dir}")));
                    }
                }
            }
        }
        if targets.is_empty() {
            return Err(recipe
                .profile_error(
                    &format!("services.enable[{i}]"),
                    format!("unit {file_name} has no WantedBy= or RequiredBy="),
                )
                .into());
        }
        for t in targets {
            tree.add_symlink(&format!("/etc/systemd/system/{t}/{unit}"), &path)?;
        }
    }
    Ok(())
}
