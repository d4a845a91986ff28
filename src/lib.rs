//! imgd: machine profiles to hash-named, reproducible, bootable images.
//!
//! The modules follow the pipeline: [`config`] (profile + hardware -> recipe)
//! -> [`hash`] (the input hash) -> [`rootfs`] (assemble the tree) ->
//! [`artifact`] (write formats) -> [`store`] (commit the entry) -> [`serve`]
//! (netboot it), [`qemu`] (boot it), and with feature `aws`, `imgd_aws`
//! (publish it). [`build`] ties the first five together.

pub mod artifact;
pub mod build;
pub mod config;
pub mod debian;
pub mod dirs;
pub mod fsutil;
pub mod hash;
pub mod progress;
pub mod qemu;
pub mod rootfs;
pub mod serve;
pub mod shelf;
pub mod sign;
pub mod store;
pub mod tools;
