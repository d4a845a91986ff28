//! The AWS side against a real local endpoint: the real AWS SDK in `imgd`
//! talking to a moto server on loopback, checked with boto3.

mod cache;
mod deploy;
mod proxy;
mod prune;
mod support;
mod sync;
