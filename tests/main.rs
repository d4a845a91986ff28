//! Integration tests: the real `imgd` binary, real image tools, real qemu.
//! They need the packages and .debs that scripts/setup.sh installs.

mod boot;
mod build;
mod checkers;
mod common;
mod debian;
mod errors;
mod serve;
mod store;
