//! Integration tests: the real `imgd` binary, real image tools, real qemu.
//! They need the packages and .debs that scripts/setup.sh installs.

// A panic in a test (or its helpers) is a failed test with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[cfg(feature = "aws")]
mod aws;
mod bench;
mod boot;
mod build;
mod checkers;
mod cli;
mod common;
mod compose;
mod corpus;
mod debian;
mod errors;
mod lock;
mod netboot;
mod scratch;
mod secureboot;
mod serve;
mod store;
