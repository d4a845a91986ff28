//! `imgd serve`: the embedded HTTP netboot server. iPXE firmware asks it what
//! to boot (`/boot.ipxe` -> `/ipxe?mac=...`), it answers per machine from
//! `machines.toml`, and streams the store's artifacts.
//!
//! - [`machines`]: the config file and selection (pure, no I/O)
//! - [`state`]: config + store -> what is served
//! - [`range`], [`render`]: Range planning and script templates (pure)
//! - [`http`]: hyper glue, limits, reload and drain

pub mod chunks;
pub mod http;
pub mod idle;
pub mod machines;
pub mod metrics;
pub mod range;
pub mod render;
pub mod state;
