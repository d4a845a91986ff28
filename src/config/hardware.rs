//! The hardware schema (`hardware/*.toml`): what a machine is, so the same profile
//! can be built for a qemu VM, an AWS Nitro instance or a bare-metal server.
//!
//! ```toml
//! description = "AWS Nitro instances (m5, c6i, ...)"
//! arch = "x86_64"                 # x86_64 | aarch64
//! firmware = "uefi"               # uefi | bios
//! console = "ttyS0,115200"        # serial console, becomes console= on the command line
//! modules = ["nvme", "ena", "ext4"]   # needed to reach the root and the network (with dependencies)
//! cmdline = "nvme_core.io_timeout=4294967295"
//! ena = true                      # AMI flags, used by `imgd sync`
//! sriov = true
//! efi_loader = "/usr/lib/systemd/boot/efi/systemd-bootx64.efi"   # default shown
//! efi_stub = "/usr/lib/systemd/boot/efi/linuxx64.efi.stub"       # for uki; default shown
//!
//! [qemu]                          # how `imgd run` / `imgd test` emulate this machine
//! machine = "q35"
//! cpu = "max"
//! memory_mib = 1024
//! smp = 2
//! disk = "nvme"                   # virtio | nvme | ide
//! nic = "virtio-net-pci"
//! ```

use crate::model::{Arch, Firmware};
use serde::{Deserialize, Serialize};

pub(crate) const DEFAULT_EFI_LOADER: &str = "/usr/lib/systemd/boot/efi/systemd-bootx64.efi";
pub(crate) const DEFAULT_EFI_STUB: &str = "/usr/lib/systemd/boot/efi/linuxx64.efi.stub";

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HardwareFile {
    pub description: Option<String>,
    pub arch: Arch,
    pub firmware: Firmware,
    pub console: Option<String>,
    #[serde(default)]
    pub modules: Vec<String>,
    pub cmdline: Option<String>,
    #[serde(default)]
    pub ena: bool,
    #[serde(default)]
    pub sriov: bool,
    pub efi_loader: Option<String>,
    pub efi_stub: Option<String>,
    #[serde(default)]
    pub qemu: QemuSpec,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct QemuSpec {
    pub machine: String,
    pub cpu: String,
    pub memory_mib: u32,
    pub smp: u32,
    pub disk: DiskBus,
    pub nic: String,
}

impl Default for QemuSpec {
    fn default() -> Self {
        QemuSpec {
            machine: "q35".into(),
            cpu: "max".into(),
            memory_mib: 1024,
            smp: 1,
            disk: DiskBus::Virtio,
            nic: "virtio-net-pci".into(),
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum DiskBus {
    Virtio,
    Nvme,
    Ide,
}
