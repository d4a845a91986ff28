//! The HTTP room: accept connections within limits ([`listener`], [`idle`])
//! and serve each on one of the per-core threads ([`workers`]),
//! answer ranges and conditionals ([`range`], [`respond`] with [`Body`]),
//! stream files from the shared [`chunks`] cache ([`stream`]) and count it
//! all ([`metrics`]); keep the background parts running ([`supervise`]). It knows nothing of machines or groups: the boot room
//! decides what a request means, this room sends the bytes.

pub mod chunks;
pub mod idle;
pub mod listener;
pub mod metrics;
pub mod range;
pub mod respond;
pub mod shards;
pub mod stream;
pub mod supervise;
pub mod workers;

pub use respond::Body;
