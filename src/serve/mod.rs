//! `imgd serve`: the embedded netboot server, in three rooms and a hall.
//! iPXE firmware asks what to boot (`/boot.ipxe` -> `/ipxe?mac=...`), the
//! server answers per machine from `machines.toml` and streams the store's
//! artifacts.
//!
//! - [`http`]: listener, limits, ranges, chunked file streaming, metrics;
//!   knows nothing of machines
//! - [`boot`]: route, machines file and selection, served state, scripts,
//!   signatures, loaders
//! - [`pxe`]: proxyDHCP and TFTP for firmware that does not speak HTTP
//!   (`--proxy-dhcp`)
//! - [`server`]: the hall joining them: a request in, through the boot
//!   room's route, out through the HTTP room
//! - [`local`]: a server in-process on loopback, for the machines qemu
//!   netboots (`imgd test`, `imgd compose`)
//!
//! Each room imports only from the rooms before it in that list (pxe -> boot
//! -> http); `tests/layering.rs` checks it.

pub mod boot;
pub mod http;
pub mod local;
pub mod pxe;
pub mod server;

pub use server::{Options, Server};
