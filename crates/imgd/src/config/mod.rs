//! Profiles and hardware files: schema, layered loading, and resolution into a
//! [`Recipe`], the complete and checked description of one build.

pub mod error;
pub mod hardware;
pub mod load;
pub mod profile;
pub mod recipe;
pub mod types;

pub use error::ConfigError;
pub use load::{load, LoadRequest, Loaded};
pub use recipe::{resolve, Recipe};
