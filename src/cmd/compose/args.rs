//! The arguments `imgd compose`'s verbs share.

use super::super::{ProfileArgs, StoreArgs};
use anyhow::Result;
use clap::Args;
use imgd::config::composition::{Choices, Composition, Role};
use imgd::qemu::Accel;
use std::path::PathBuf;

#[derive(Args, Debug, Clone)]
pub struct Common {
    /// The composition file.
    pub file: PathBuf,
    /// A `[variant.NAME]` of the file.
    #[arg(long)]
    pub variant: Option<String>,
    /// Override a key of the file, e.g. --set role.node.count=5.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub sets: Vec<String>,
    /// Folder holding profiles/ and hardware/.
    #[arg(long, env = "IMGD_ROOT", default_value = ".")]
    pub root: PathBuf,
    #[arg(long = "cache-dir", env = "IMGD_CACHE")]
    pub cache_dir: Option<PathBuf>,
    #[command(flatten)]
    pub store: StoreArgs,
    /// CPU emulation: auto uses KVM where a (cached) probe shows guests run.
    #[arg(long, value_enum, default_value = "auto")]
    pub accel: Accel,
    /// Capture every frame of each network to NETWORK.pcap beside the
    /// consoles (kept, like the consoles, for Wireshark or tcpdump).
    #[arg(long)]
    pub pcap: bool,
    /// How the machines boot: `netboot` (each NIC's iPXE from an imgd serve
    /// in this process, over an isolated slirp link, as a fleet's machines
    /// do) or `kernel` (the role's kernel and initrd handed to qemu).
    #[arg(long, value_enum, default_value = "netboot")]
    pub boot: BootMode,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootMode {
    Netboot,
    Kernel,
}

#[derive(Args, Debug)]
pub struct TestArgs {
    #[command(flatten)]
    pub common: Common,
    /// Keep the console logs when every step passes (always kept on failure).
    #[arg(long)]
    pub keep_logs: bool,
    /// Print the step report as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct Which {
    /// The composition file given to `imgd compose up`.
    pub file: PathBuf,
}

#[derive(Args, Debug)]
pub struct ConnectArgs {
    /// The composition file given to `imgd compose up`.
    pub file: PathBuf,
    /// Make the tmux session (its name on stdout) without attaching to it.
    #[arg(long)]
    pub no_attach: bool,
}

#[derive(Args, Debug)]
pub struct ExecArgs {
    pub file: PathBuf,
    /// The machine's name (`server`, `node2`).
    pub node: String,
    /// The shell command.
    pub command: String,
    /// Seconds the command may run.
    #[arg(long, default_value_t = 60)]
    pub timeout: u64,
}

#[derive(Args, Debug)]
pub struct DeployArgs {
    #[command(flatten)]
    pub common: Common,
    /// One `HOSTNAME MAC` line per machine, given to roles in file order.
    #[arg(long)]
    pub nodes: PathBuf,
    /// Folder to write machines.toml and the rootfs tarballs into.
    #[arg(long)]
    pub out: PathBuf,
}

impl Common {
    /// How `Running::up` boots the machines (the store's folder: `store`).
    pub fn boot<'p>(&'p self, store: &'p std::path::Path) -> imgd::compose::Boot<'p> {
        match self.boot {
            BootMode::Netboot => imgd::compose::Boot::Netboot { root: &self.root, store },
            BootMode::Kernel => imgd::compose::Boot::Direct,
        }
    }

    pub fn load(&self) -> Result<Composition> {
        let choices = Choices { variant: self.variant.clone(), sets: self.sets.clone() };
        Ok(Composition::load(&self.file, &self.root, &choices)?)
    }

    pub fn profile_args(&self, role: &Role) -> ProfileArgs {
        ProfileArgs {
            profile: role.profile.clone(),
            hardware: role.hardware.clone(),
            sets: role.sets.clone(),
            root: self.root.clone(),
            cache_dir: self.cache_dir.clone(),
            remote_cache: None,
            unlocked: false,
        }
    }
}
