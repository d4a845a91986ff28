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

use std::path::Path;

/// `SOURCE_DATE_EPOCH` from the environment, checked.
pub fn env_epoch() -> Result<Option<u64>, ConfigError> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) => v
            .trim()
            .parse::<u64>()
            .map(Some)
            .map_err(|_| ConfigError::new("SOURCE_DATE_EPOCH", format!("`{v}` is not a number of seconds"))),
        Err(_) => Ok(None),
    }
}

/// Loads and resolves a profile with the usual settings: `cache` is imgd's
/// cache folder (deb cache in `debs/`, digest cache beside it).
pub fn recipe(req: &LoadRequest, cache: &Path, formats: Option<Vec<types::Format>>) -> Result<Recipe, ConfigError> {
    let loaded = load(req)?;
    let opts = recipe::ResolveOptions {
        deb_cache: cache.join("debs"),
        formats,
        env_epoch: env_epoch()?,
        digest_cache: Some(cache.join("digests.tsv")),
    };
    resolve(&loaded, &opts)
}

/// imgd's cache folder: `$IMGD_CACHE`, `$XDG_CACHE_HOME/imgd` or `~/.cache/imgd`.
pub fn default_cache() -> std::path::PathBuf {
    if let Some(d) = std::env::var_os("IMGD_CACHE") {
        return d.into();
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
        return std::path::PathBuf::from(d).join("imgd");
    }
    let home =
        std::env::var_os("HOME").map_or_else(|| std::path::PathBuf::from("/var/cache"), std::path::PathBuf::from);
    home.join(".cache/imgd")
}
