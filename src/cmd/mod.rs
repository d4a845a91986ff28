//! One module per subcommand, each with its clap arguments and its `run`.

pub mod build;
pub mod compose;
#[cfg(feature = "aws")]
pub mod deploy;
pub mod fetch;
pub mod lock;
#[cfg(feature = "aws")]
pub mod promote;
#[cfg(feature = "aws")]
pub mod prune;
pub mod run;
pub mod serve;
pub mod sign;
pub mod status;
pub mod store_cmds;
#[cfg(feature = "aws")]
pub mod sync;
pub mod test;

use clap::Args;
use imgd::config::{self, ConfigError, LoadRequest, Recipe};
use imgd::model::Format;
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
        Ok(imgd::store::Store::open(&self.dir())?)
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
        imgd::store::settings::configured(self.remote_cache.as_deref(), &self.root, endpoint)
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
        Ok(imgd::build::entry(recipe, store, &progress, remote.as_deref())?)
    }

    /// The profile (parsed once) and its recipe with the profile's own formats.
    pub fn loaded(&self) -> anyhow::Result<(config::Loaded, Recipe)> {
        let loaded = config::load(&self.request())?;
        let recipe = imgd::build::recipe(&loaded, &self.cache(), None, self.unlocked)?;
        Ok((loaded, recipe))
    }

    pub fn cache(&self) -> PathBuf {
        self.cache_dir.clone().unwrap_or_else(imgd::dirs::cache)
    }

    /// The recipe, building only `formats` when any are given.
    pub fn recipe_with(&self, formats: &[Format]) -> anyhow::Result<Recipe> {
        let formats = (!formats.is_empty()).then(|| formats.to_vec());
        Ok(imgd::build::recipe(&config::load(&self.request())?, &self.cache(), formats, self.unlocked)?)
    }
}

/// A span of time on the command line: a positive count and a unit, s, m, h,
/// d or w (`90d`, `12h`), at most a century. `--deprecate-in` and
/// `--cache-max-age` both take it.
#[cfg_attr(not(feature = "aws"), allow(dead_code))]
pub fn duration(s: &str) -> Result<std::time::Duration, String> {
    let how = || format!("`{}`: use a count and s, m, h, d or w (e.g. 90d)", s.escape_debug());
    let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = n.parse().ok().filter(|n| *n > 0).ok_or_else(how)?;
    let per = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => return Err(how()),
    };
    n.checked_mul(per)
        .filter(|s| *s <= 100 * 365 * 86_400)
        .map(std::time::Duration::from_secs)
        .ok_or_else(|| format!("`{}`: more than a century", s.escape_debug()))
}

#[cfg(test)]
mod tests {
    #[test]
    fn durations() {
        let secs = |s| super::duration(s).map(|d| d.as_secs());
        assert_eq!(secs("90d"), Ok(90 * 86_400));
        assert_eq!(secs("2w"), Ok(14 * 86_400));
        assert_eq!(secs("45m"), Ok(2700));
        assert_eq!(secs("12h"), Ok(43_200));
        assert_eq!(secs("30s"), Ok(30));
        for bad in ["", "d", "90", "0d", "-1d", "1y", "1.5d", "d1", "9999999999w", "99999999999999999999d", "1d\n"] {
            assert!(super::duration(bad).is_err(), "{bad}");
        }
    }
}
