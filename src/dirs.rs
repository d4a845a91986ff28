//! imgd's folders on this machine, each with its override: the store
//! (`$IMGD_STORE`, else `$XDG_DATA_HOME/imgd/store`) and the cache of .debs,
//! digests and upload state (`$IMGD_CACHE`, else `$XDG_CACHE_HOME/imgd`).
//! The XDG rules (and `~/.local/share`, `~/.cache` when unset) come from `dirs`.

use std::path::PathBuf;

/// The store: `--store`, else this.
pub fn store() -> PathBuf {
    if let Some(d) = std::env::var_os("IMGD_STORE") {
        return d.into();
    }
    dirs::data_dir().unwrap_or_else(|| PathBuf::from("/var/lib")).join("imgd/store")
}

/// imgd's cache folder (the deb cache is its `debs/`).
pub fn cache() -> PathBuf {
    if let Some(d) = std::env::var_os("IMGD_CACHE") {
        return d.into();
    }
    dirs::cache_dir().unwrap_or_else(|| PathBuf::from("/var/cache")).join("imgd")
}
