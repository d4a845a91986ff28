//! One module per subcommand, each with its clap arguments and its `run`.

pub mod build;
pub mod run;
pub mod serve;
pub mod store_cmds;
pub mod test;

use clap::Args;
use imgd::config::types::Format;
use imgd::config::{self, ConfigError, LoadRequest, Recipe};
use std::path::PathBuf;

/// Options shared by every command that reads a profile.
#[derive(Args, Debug, Clone)]
pub struct ProfileArgs {
    /// Profile: a path to a .toml file, or a name in <root>/profiles/.
    pub profile: String,
    /// Hardware name in hardware/ (or a path), overriding the profile's.
    #[arg(long)]
    pub hardware: Option<String>,
    /// Override any profile key, e.g. --set hostname=web-1 --set disk.size=4GiB.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub sets: Vec<String>,
    /// Folder holding profiles/ and hardware/.
    #[arg(long, env = "IMGD_ROOT", default_value = ".")]
    pub root: PathBuf,
    /// imgd's local cache folder, holding the .deb files scripts/setup.sh fetched.
    #[arg(long = "cache-dir", env = "IMGD_CACHE")]
    pub cache_dir: Option<PathBuf>,
    /// Shared build cache, s3://bucket/prefix: fetched instead of building when
    /// it has the input hash, filled after a build [default: `cache` in <root>/imgd.toml].
    #[arg(long = "cache", env = "IMGD_BUILD_CACHE", value_name = "URL")]
    pub remote_cache: Option<String>,
}

#[derive(Args, Debug, Clone)]
pub struct StoreArgs {
    /// Store directory [default: $IMGD_STORE or ~/.local/share/imgd/store].
    #[arg(long)]
    pub store: Option<PathBuf>,
}

impl StoreArgs {
    pub fn open(&self) -> anyhow::Result<imgd::store::Store> {
        imgd::store::Store::open(&self.store.clone().unwrap_or_else(imgd::store::default_dir))
    }
}

impl ProfileArgs {
    pub fn request(&self) -> LoadRequest {
        LoadRequest {
            profile: self.profile.clone(),
            root: self.root.clone(),
            hardware: self.hardware.clone(),
            sets: self.sets.clone(),
        }
    }

    /// The shared build cache, if one is configured.
    pub fn remote(&self) -> Result<Option<imgd::store::remote::S3Cache>, ConfigError> {
        imgd::store::remote::configured(self.remote_cache.as_deref(), &self.root)
    }

    /// Builds (or fetches, or finds) the recipe's entry.
    pub fn build(
        &self,
        recipe: &Recipe,
        store: &imgd::store::Store,
        progress: &imgd::progress::Progress,
    ) -> anyhow::Result<imgd::build::Built> {
        let remote = self.remote()?;
        imgd::build::build_with(recipe, store, progress, remote.as_ref().map(|r| r as &dyn imgd::store::remote::Remote))
    }

    /// The recipe with the profile's own formats.
    pub fn recipe(&self) -> Result<Recipe, ConfigError> {
        self.recipe_with(&[])
    }

    /// The recipe, building only `formats` when any are given.
    pub fn recipe_with(&self, formats: &[Format]) -> Result<Recipe, ConfigError> {
        let cache = self.cache_dir.clone().unwrap_or_else(config::default_cache);
        config::recipe(&self.request(), &cache, (!formats.is_empty()).then(|| formats.to_vec()))
    }
}
