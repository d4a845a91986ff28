//! imgd: machine profiles to hash-named, reproducible, bootable images.
//!
//! One pipeline, one way: [`config`] (profile -> recipe) -> [`build`] (input
//! hash -> cache hit, fetch, or [`rootfs`] + [`artifact`] -> [`store`] entry)
//! -> [`serve`] (netboot it), [`qemu`] (boot it), `imgd_aws` (publish it).

pub mod artifact;
pub mod build;
pub mod compose;
pub mod config;
pub mod debian;
pub mod dirs;
pub mod fsutil;
pub mod hash;
pub mod logbatch;
pub mod logfmt;
pub mod model;
pub mod progress;
pub mod qemu;
pub mod rootfs;
pub mod serve;
pub mod shelf;
pub mod sign;
pub mod store;
pub mod tools;
