//! Profiles and hardware files: schema, layered loading, and resolution into a
//! [`Recipe`], the complete and checked description of one build.

pub mod composition;
pub mod deployments;
pub mod error;
pub mod hardware;
pub mod load;
pub mod lock;
pub mod profile;
pub mod recipe;
pub mod resolve;
pub mod scratch;
pub mod scratch_check;
pub mod types;

pub use error::ConfigError;
pub use load::{load, LoadRequest, Loaded, Origins};
pub use recipe::Recipe;
pub use resolve::{resolve, ResolveOptions};

use std::path::Path;

/// `SOURCE_DATE_EPOCH` from the environment, checked.
pub(crate) fn env_epoch() -> Result<Option<u64>, ConfigError> {
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
pub fn recipe(
    req: &LoadRequest,
    cache: &Path,
    formats: Option<Vec<crate::model::Format>>,
) -> Result<Recipe, ConfigError> {
    resolve_in(&load(req)?, cache, formats, false)
}

/// [`resolve`] a loaded profile with the usual settings.
pub(crate) fn resolve_in(
    loaded: &Loaded,
    cache: &Path,
    formats: Option<Vec<crate::model::Format>>,
    unlocked: bool,
) -> Result<Recipe, ConfigError> {
    let opts = resolve::ResolveOptions {
        deb_cache: cache.join("debs"),
        formats,
        env_epoch: env_epoch()?,
        digest_cache: Some(cache.join("digests.tsv")),
        cache: cache.to_path_buf(),
        unlocked,
    };
    resolve(loaded, &opts)
}
