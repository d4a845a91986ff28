//! One module per subcommand, each with its clap arguments and its `run`.

pub mod build;
pub mod fetch;
pub mod lock;
#[cfg(feature = "aws")]
pub mod promote;
#[cfg(feature = "aws")]
pub mod prune;
pub mod run;
pub mod serve;
pub mod sign;
pub mod store_cmds;
#[cfg(feature = "aws")]
pub mod sync;
pub mod test;

use clap::Args;
use imgd::config::types::Format;
use imgd::config::{self, ConfigError, LoadRequest, Recipe};
use imgd::store::remote::Remote;
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
    /// Build a Debian base that has no lock file from whatever the mirror has
    /// today (the build is still named by the packages it got).
    #[arg(long)]
    pub unlocked: bool,
}

#[derive(Args, Debug, Clone)]
pub struct StoreArgs {
    /// Store directory [default: $IMGD_STORE or ~/.local/share/imgd/store].
    #[arg(long)]
    pub store: Option<PathBuf>,
}

impl StoreArgs {
    pub fn dir(&self) -> PathBuf {
        self.store.clone().unwrap_or_else(imgd::dirs::store)
    }

    pub fn open(&self) -> anyhow::Result<imgd::store::Store> {
        imgd::store::Store::open(&self.dir())
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

    /// The shared build cache, if one is configured; `endpoint` is a custom
    /// S3 endpoint (`imgd sync --endpoint-url`).
    pub fn remote(&self, endpoint: Option<&str>) -> Result<Option<Box<dyn Remote>>, ConfigError> {
        imgd::store::remote::configured(self.remote_cache.as_deref(), &self.root, endpoint)
    }

    /// Builds (or fetches, or finds) the recipe's entry.
    pub fn build(&self, recipe: &Recipe, store: &imgd::store::Store) -> anyhow::Result<imgd::build::Built> {
        self.build_via(recipe, store, None)
    }

    pub fn build_via(
        &self,
        recipe: &Recipe,
        store: &imgd::store::Store,
        endpoint: Option<&str>,
    ) -> anyhow::Result<imgd::build::Built> {
        let remote = self.remote(endpoint)?;
        let progress = imgd::progress::Progress::new(false);
        imgd::build::build_with(recipe, store, &progress, remote.as_deref())
    }

    /// The profile (parsed once) and its recipe with the profile's own formats.
    pub fn loaded(&self) -> anyhow::Result<(config::Loaded, Recipe)> {
        let loaded = config::load(&self.request())?;
        let mut recipe = config::resolve_in(&loaded, &self.cache(), None, self.unlocked)?;
        imgd::debian::lock_now_if_unlocked(&mut recipe)?;
        Ok((loaded, recipe))
    }

    pub fn cache(&self) -> PathBuf {
        self.cache_dir.clone().unwrap_or_else(imgd::dirs::cache)
    }

    /// The recipe, building only `formats` when any are given.
    pub fn recipe_with(&self, formats: &[Format]) -> anyhow::Result<Recipe> {
        let formats = (!formats.is_empty()).then(|| formats.to_vec());
        let mut recipe = config::resolve_in(&config::load(&self.request())?, &self.cache(), formats, self.unlocked)?;
        imgd::debian::lock_now_if_unlocked(&mut recipe)?;
        Ok(recipe)
    }
}
