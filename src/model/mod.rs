//! The words every layer shares, checked once where they enter: the names a
//! build is known by ([`InputHash`], [`EntryName`], [`Blake3`]), a machine's
//! [`Mac`], what a build is for ([`Format`], [`Arch`], [`Firmware`]) and the
//! [`Manifest`] that says what an entry holds, and the kinds of failure
//! ([`ConfigError`], [`Kind`]). Below `config`; above only the leaves.

pub mod error;
pub mod mac;
pub mod manifest;
pub mod names;
pub mod platform;

pub use error::{Chain, ConfigError, Kind};
pub use mac::Mac;
pub use manifest::{Artifact, ArtifactFile, ArtifactName, Manifest, Pcr11, RecipeRecord};
pub use names::{valid_name, BadName, Blake3, EntryName, InputHash, NAME_HASH_LEN};
pub use platform::{Arch, Firmware, Format};
