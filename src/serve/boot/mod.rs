//! The boot room: what each machine boots. A request becomes a typed
//! [`route`] (every client value checked), [`machines`] picks its group
//! (a [`mac`] is parsed once, where it enters),
//! [`state`] holds what each group boots (entries, signatures, continuity),
//! [`render`] writes its iPXE script, [`imgverify`] signs what iPXE verifies,
//! and [`loaders`] are the iPXE binaries firmware fetches first (over HTTP
//! here, over TFTP in the PXE room).

mod error;
pub mod imgverify;
pub mod loaders;
pub mod machines;
pub mod render;
pub mod route;
pub mod state;
pub mod status;

pub use error::BootError;
