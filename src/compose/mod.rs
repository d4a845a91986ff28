//! `imgd compose`: the machines of a composition booted together in qemu on
//! private networks (imgd's own switch), and its steps run against them.
//!
//! Each machine boots its role's iPXE kernel and initrd (the RAM root every
//! node of a role shares, without a disk copy each), netbooted by its NIC's
//! iPXE from an `imgd serve` in this process ([`Boot::Netboot`], the default)
//! or handed to qemu ([`Boot::Direct`]), with the node stage as `rdinit`
//! (`rootfs::node_stage`), so the image under test is the shipped one: the
//! stage reads its name, addresses and hosts from the command line and
//! serves commands on a virtio-serial port only these VMs have.

mod error;
pub mod switch;
pub mod vm;

pub use error::{ComposeError, VmError};

use crate::config::composition::{Action, Composition, Step};
use crate::config::hardware::QemuSpec;
use crate::fsutil::IoAt;
use crate::model::{Arch, Firmware};
use crate::qemu::{self, Accel, BootSource, Machine};
use serde::Serialize;

type Result<T, E = ComposeError> = std::result::Result<T, E>;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use switch::Switch;
use vm::{Door, Vm};

/// What a role boots: its entry's kernel and initrd, on its hardware.
#[derive(Debug, Clone)]
pub struct RoleImage {
    pub entry: crate::model::EntryName,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    /// The profile's own command line (console, panic, ...).
    pub cmdline: String,
    pub arch: Arch,
    pub firmware: Firmware,
    pub qemu: QemuSpec,
}

/// A composition running: its switch and one VM per machine.
pub struct Running<'a> {
    comp: &'a Composition,
    dir: PathBuf,
    switch: Switch,
    /// The server the machines netboot from (`Boot::Netboot`).
    server: Option<crate::serve::local::LocalServer>,
    commands: Vec<Command>,
    /// Where each machine's commands go.
    doors: Vec<Door>,
    vms: Vec<Option<Vm>>,
    starts: Vec<u32>,
}

/// One step's outcome, for the report.
#[derive(Debug, Serialize)]
pub struct StepReport {
    pub step: usize,
    pub line: usize,
    pub what: String,
    pub nodes: Vec<String>,
    pub seconds: f64,
}

/// A step that did not pass: which node, which step, and its console's tail.
#[derive(Debug)]
pub struct StepFailed {
    pub step: usize,
    pub line: usize,
    pub node: Option<String>,
    pub reason: String,
    pub log: Option<PathBuf>,
    pub tail: String,
}

impl std::fmt::Display for StepFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "step {} (line {})", self.step + 1, self.line)?;
        if let Some(n) = &self.node {
            write!(f, " on {n}")?;
        }
        write!(f, ": {}", self.reason)?;
        if let Some(log) = &self.log {
            write!(f, "\n--- last lines of {} ---\n{}", log.display(), self.tail)?;
        }
        Ok(())
    }
}

impl std::error::Error for StepFailed {}

/// The MAC of machine `node` on network `net`: locally administered, stable.
pub(crate) fn mac(net: usize, node: usize) -> String {
    format!("52:54:00:{net:02x}:{:02x}:{:02x}", node >> 8, node & 0xff)
}

/// How the machines boot their role's build.
#[derive(Debug, Clone, Copy)]
pub enum Boot<'p> {
    /// The entry's kernel and initrd handed to qemu (`--boot kernel`).
    Direct,
    /// The NIC's iPXE netboots from an `imgd serve` in this process, over
    /// an isolated slirp link (`restrict=on`), as a fleet's machines would:
    /// each node's group (by its boot NIC's MAC) gives it its role's entry
    /// and its identity on the kernel command line. `root` and `store` are
    /// the server's, as for `imgd serve`.
    Netboot { root: &'p Path, store: &'p Path },
}

/// The MAC of machine `node`'s boot NIC (the slirp link).
pub(crate) fn boot_mac(node: usize) -> String {
    mac(0xff, node)
}

/// What imgd's node stage needs on node `i`'s command line (before the
/// profile's own): itself as rdinit, the image's init, and its identity.
fn node_args(comp: &Composition, i: usize) -> String {
    let node = &comp.nodes[i];
    format!("rdinit={} imgd.init=/init {}", crate::rootfs::node_stage::PATH, comp.kernel_args(node, |net| mac(net, i)))
}

/// One group per node for the in-process server: its boot MAC, its role's
/// entry, its identity (what `imgd compose deploy` writes for real machines).
fn netboot_groups(comp: &Composition, images: &[RoleImage]) -> Result<Vec<crate::serve::boot::machines::Group>> {
    use crate::model::mac::Macs;
    use crate::serve::boot::machines;
    comp.nodes
        .iter()
        .enumerate()
        .map(|(i, node)| {
            let m = boot_mac(i).parse()?;
            Ok(machines::Group {
                name: node.name.clone(),
                entry: Some(images[node.role].entry.clone()),
                kernel_args: node_args(comp, i),
                selector: machines::Selector { mac: Some(Macs(vec![m])), ..Default::default() },
                ..Default::default()
            })
        })
        .collect()
}

impl<'a> Running<'a> {
    /// Starts the switch and every machine (`images` per role, booted as
    /// `boot` says) with its console logged in `dir` (a private folder the
    /// caller owns); with `pcap`, each network's frames go to `dir/NETWORK.pcap`.
    pub fn up(
        comp: &'a Composition,
        images: &[RoleImage],
        accel: Accel,
        boot: Boot<'_>,
        dir: &Path,
        pcap: bool,
    ) -> Result<Running<'a>> {
        let members: Vec<Vec<usize>> = (0..comp.networks.len())
            .map(|net| (0..comp.nodes.len()).filter(|&n| comp.nodes[n].addrs.iter().any(|a| a.0 == net)).collect())
            .collect();
        let captures: Vec<PathBuf> = comp.networks.iter().map(|n| dir.join(format!("{}.pcap", n.name))).collect();
        let (switch, links) = Switch::start(dir, &members, pcap.then_some(captures.as_slice()))?;
        let server = match boot {
            Boot::Direct => None,
            Boot::Netboot { root, store } => {
                Some(crate::serve::local::LocalServer::start(root, store, netboot_groups(comp, images)?)?)
            }
        };
        let relay = server.as_ref().map(|s| s.relay()).transpose()?;
        let doors = comp.nodes.iter().enumerate().map(|(i, n)| door(comp, n, dir, i)).collect::<Result<Vec<_>>>()?;
        let mut commands = Vec::new();
        for (i, door) in doors.iter().enumerate() {
            let ssh = match door {
                Door::Ssh { port, .. } => Some(*port),
                Door::Port(_) => None,
            };
            let mut c = node_command(comp, images, i, accel, relay.as_deref(), ssh, dir)?;
            for (net, _) in &comp.nodes[i].addrs {
                let l = &links[&(*net, i)];
                c.arg("-netdev").arg(format!(
                    "dgram,id=c{net},local.type=unix,local.path={},remote.type=unix,remote.path={}",
                    l.qemu.display(),
                    l.switch.display()
                ));
                c.arg("-device").arg(format!(
                    "{},netdev=c{net},mac={}",
                    images[comp.nodes[i].role].qemu.nic,
                    mac(*net, i)
                ));
            }
            c.args(["-device", "virtio-serial-pci"]);
            c.arg("-chardev").arg(format!("socket,id=agent,path={},server=on,wait=off", agent_path(dir, i).display()));
            c.args(["-device", "virtserialport,chardev=agent,name=org.imgd.agent"]);
            commands.push(c);
        }
        let mut run = Running {
            comp,
            dir: dir.to_path_buf(),
            switch,
            server,
            vms: comp.nodes.iter().map(|_| None).collect(),
            starts: vec![0; comp.nodes.len()],
            commands,
            doors,
        };
        for i in 0..comp.nodes.len() {
            run.start(i)?;
        }
        Ok(run)
    }

    fn start(&mut self, i: usize) -> Result<()> {
        let name = &self.comp.nodes[i].name;
        self.starts[i] += 1;
        let log = match self.starts[i] {
            1 => self.dir.join(format!("{name}.log")),
            n => self.dir.join(format!("{name}.{n}.log")),
        };
        let _ = std::fs::remove_file(agent_path(&self.dir, i));
        let _ = std::fs::remove_file(self.dir.join(format!("vm-{name}/OVMF_VARS.fd")));
        self.vms[i] = Some(Vm::start(name, &self.commands[i], &log, &self.doors[i])?);
        tracing::info!(node = %name, "started");
        Ok(())
    }

    /// With `Boot::Netboot`: the per-machine scripts and the artifacts the
    /// machines fetched from the in-process server so far.
    pub fn netbooted(&self) -> Option<(u64, u64)> {
        let m = &self.server.as_ref()?.server.metrics;
        Some((m.requests("ipxe", 200), m.requests("artifacts", 200)))
    }

    /// Where each machine's commands go, in machine order (for other
    /// processes: `imgd compose exec`).
    pub fn doors(&self) -> &[Door] {
        &self.doors
    }

    /// Runs every step in order; the first that fails ends the run.
    pub fn run_steps(&mut self, on_done: &mut dyn FnMut(&StepReport)) -> Result<Vec<StepReport>, StepFailed> {
        let mut reports = Vec::new();
        for (k, step) in self.comp.steps.iter().enumerate() {
            let t = Instant::now();
            self.step(k, step)?;
            let r = StepReport {
                step: k + 1,
                line: step.line,
                what: describe(&step.action),
                nodes: step.on.clone(),
                seconds: t.elapsed().as_secs_f64(),
            };
            on_done(&r);
            reports.push(r);
        }
        Ok(reports)
    }

    fn step(&mut self, k: usize, step: &Step) -> Result<(), StepFailed> {
        let fail = |node: Option<&str>, reason: String| StepFailed {
            step: k,
            line: step.line,
            node: node.map(str::to_string),
            reason,
            log: None,
            tail: String::new(),
        };
        let index = |name: &str| self.comp.nodes.iter().position(|n| n.name == name);
        match &step.action {
            Action::Partition(groups) => {
                let groups: Vec<Vec<usize>> =
                    groups.iter().map(|g| g.iter().filter_map(|n| index(n)).collect()).collect();
                self.switch.partition(&groups);
                return Ok(());
            }
            Action::Heal => {
                self.switch.heal();
                return Ok(());
            }
            Action::Kill => {
                for n in &step.on {
                    if let Some(vm) = index(n).and_then(|i| self.vms[i].as_mut()) {
                        vm.kill();
                    }
                }
                return Ok(());
            }
            Action::Start => {
                for n in &step.on {
                    let i = index(n).ok_or_else(|| fail(Some(n), "no such machine".into()))?;
                    if self.vms[i].as_mut().is_some_and(Vm::running) {
                        continue;
                    }
                    self.start(i).map_err(|e| fail(Some(n), crate::model::Chain(&e).to_string()))?;
                }
                return Ok(());
            }
            _ => {}
        }
        // The rest run on each chosen machine at once.
        let chosen: Vec<usize> = step.on.iter().filter_map(|n| index(n)).collect();
        let mut vms: Vec<&mut Vm> = Vec::new();
        for (i, vm) in self.vms.iter_mut().enumerate() {
            if chosen.contains(&i) {
                match vm {
                    Some(v) => vms.push(v),
                    None => return Err(fail(Some(&self.comp.nodes[i].name), "the machine is stopped (kill)".into())),
                }
            }
        }
        // Each machine's part at once; the first failure (in machine order) is reported.
        let failures: Vec<StepFailed> = std::thread::scope(|s| {
            let handles: Vec<_> = vms
                .into_iter()
                .map(|vm| {
                    let action = &step.action;
                    s.spawn(move || {
                        act(vm, action, step.timeout).err().map(|e| StepFailed {
                            log: Some(vm.log.clone()),
                            tail: vm.tail(30),
                            ..fail(Some(&vm.name), crate::model::Chain(&e).to_string())
                        })
                    })
                })
                .collect();
            handles
                .into_iter()
                .filter_map(|h| h.join().unwrap_or_else(|_| Some(fail(None, "panicked".into()))))
                .collect()
        });
        match failures.into_iter().next() {
            Some(f) => Err(f),
            None => Ok(()),
        }
    }
}

/// Node `i`'s qemu, booting as `relay` says (netboot through it, else its
/// role's kernel and initrd directly), before its private network links.
fn node_command(
    comp: &Composition,
    images: &[RoleImage],
    i: usize,
    accel: Accel,
    relay: Option<&str>,
    ssh: Option<u16>,
    dir: &Path,
) -> Result<Command> {
    let node = &comp.nodes[i];
    let img = &images[node.role];
    let mut spec = img.qemu.clone();
    if let Some(m) = comp.roles[node.role].memory_mib {
        spec.memory_mib = m;
    }
    // A netboot goes through SeaBIOS's iPXE ROM (the quicker firmware; the
    // same scripts and files as UEFI's); a kernel handed to qemu needs none.
    let m = Machine {
        arch: img.arch,
        firmware: if relay.is_some() { Firmware::Bios } else { img.firmware },
        qemu: &spec,
        accel,
        ssh,
        secure_boot: None,
        drives: &[],
    };
    let src = match relay {
        Some(relay) => BootSource::Netboot { relay: relay.to_string(), mac: Some(boot_mac(i)) },
        None => BootSource::Direct {
            kernel: img.kernel.clone(),
            initrd: img.initrd.clone(),
            cmdline: format!("{} {}", img.cmdline, node_args(comp, i)),
        },
    };
    let scratch = dir.join(format!("vm-{}", node.name));
    std::fs::create_dir(&scratch).at("creating", &scratch)?;
    Ok(qemu::command(&m, &src, &scratch)?)
}

fn agent_path(dir: &Path, node: usize) -> PathBuf {
    dir.join(format!("a{node}"))
}

/// Machine `i`'s door: its role's SSH login on a loopback port of its own,
/// else the node stage's command port.
fn door(comp: &Composition, node: &crate::config::composition::Node, dir: &Path, i: usize) -> Result<Door> {
    Ok(match &comp.roles[node.role].ssh {
        Some(a) => {
            // A port the kernel has just handed out and let go: qemu binds it
            // a moment later (another process taking it in between makes
            // qemu fail to start, loudly).
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map_err(ComposeError::SshPort)?
                .port();
            Door::Ssh { port, user: a.user.clone(), key: a.key.clone() }
        }
        None => Door::Port(agent_path(dir, i)),
    })
}

/// One machine's part of a step.
fn act(vm: &mut Vm, action: &Action, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    match action {
        Action::Console(text) => Ok(vm.wait_console(text, timeout)?),
        Action::Run { cmd, expect } => {
            let out = vm.exec(cmd, timeout)?;
            check(&out, cmd, expect.as_deref())
        }
        Action::Fail(cmd) => {
            let out = vm.exec(cmd, timeout)?;
            if out.status == 0 {
                return Err(ComposeError::Check(format!(
                    "`{cmd}` passed but must fail; it printed: {}",
                    out.text.trim()
                )));
            }
            Ok(())
        }
        Action::Until { cmd, expect } => {
            let mut last;
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                last = match vm.exec(cmd, left.max(Duration::from_secs(1))) {
                    Ok(out) => match check(&out, cmd, expect.as_deref()) {
                        Ok(()) => return Ok(()),
                        Err(e) => e,
                    },
                    Err(e) => e.into(),
                };
                if Instant::now() + Duration::from_millis(500) >= deadline {
                    return Err(ComposeError::StillFailing { secs: timeout.as_secs(), source: Box::new(last) });
                }
                std::thread::sleep(Duration::from_millis(500));
            }
        }
        Action::Partition(_) | Action::Heal | Action::Kill | Action::Start => Ok(()),
    }
}

fn check(out: &vm::Output, cmd: &str, expect: Option<&str>) -> Result<()> {
    if out.status != 0 {
        return Err(ComposeError::Check(format!("`{cmd}` exited {}: {}", out.status, out.text.trim())));
    }
    if let Some(e) = expect {
        if !out.text.contains(e) {
            return Err(ComposeError::Check(format!("`{cmd}` printed {:?}, not containing {e:?}", out.text.trim())));
        }
    }
    Ok(())
}

pub(crate) fn describe(a: &Action) -> String {
    match a {
        Action::Console(t) => format!("console {t:?}"),
        Action::Run { cmd, .. } => format!("run {cmd:?}"),
        Action::Until { cmd, .. } => format!("until {cmd:?}"),
        Action::Fail(cmd) => format!("fail {cmd:?}"),
        Action::Partition(g) => format!("partition {g:?}"),
        Action::Heal => "heal".into(),
        Action::Kill => "kill".into(),
        Action::Start => "start".into(),
    }
}
