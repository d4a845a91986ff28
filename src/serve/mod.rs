//! `imgd serve`: the embedded HTTP netboot server. iPXE firmware asks it what
//! to boot (`/boot.ipxe` -> `/ipxe?mac=...`), it answers per machine from
//! `machines.toml`, and streams the store's artifacts.
//!
//! - [`route`]: request -> typed route, every client value checked (pure)
//! - [`machines`]: the config file and selection (pure)
//! - [`state`]: config + store -> what is served, to whom, and continuity
//! - [`range`], [`respond`], [`render`]: what bytes to send, scripts (pure)
//! - [`dhcp`] (pure), [`pxe`]: proxyDHCP and TFTP for firmware that does
//!   not speak HTTP, handing out the [`loaders`] (`--proxy-dhcp`)
//! - [`imgverify`]: detached signatures for iPXE's `imgverify` (`[ipxe_signing]`)
//! - [`server`]: a route in, an answer out; [`stream`]: file bodies from
//!   the shared [`chunks`] cache; [`listener`]: accept, limits, drain

pub mod chunks;
pub mod dhcp;
pub mod idle;
pub mod imgverify;
pub mod listener;
pub mod loaders;
pub mod machines;
pub mod metrics;
pub mod pxe;
pub mod range;
pub mod render;
pub mod respond;
pub mod route;
pub mod server;
pub mod state;
pub mod stream;

pub use server::{Options, Server};
