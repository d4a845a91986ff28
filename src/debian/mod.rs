//! Debian bases that are pinned and honest: `imgd lock` resolves a profile's
//! package set from the mirror's signed index into a lock file; builds fetch
//! exactly those `.deb`s by SHA-256 and assemble the base from them alone.

pub mod archive;
pub mod deb822;
mod error;
pub mod fetch;
pub mod index;
pub mod resolve;

use crate::config::lock::{self, Lock, Request};
pub use error::DebianError;
use error::Result;
use std::path::Path;

/// Resolves `request` against `mirror` now: the signed Release, the
/// components' indexes, the dependency closure.
pub fn resolve_lock(mirror_url: &str, keyring: &Path, request: &Request) -> Result<Lock> {
    let mirror = fetch::Mirror::new(mirror_url)?;
    let release = archive::Release::fetch(&mirror, &request.suite, keyring)?;
    let mut index = index::Index::default();
    for c in &request.components {
        index.merge(release.packages(&mirror, &request.suite, c, &request.architecture)?);
    }
    let set = resolve::resolve(&index, request.variant, &request.packages).map_err(|e| DebianError::Resolve {
        suite: request.suite.clone(),
        mirror: mirror.to_string(),
        source: Box::new(e),
    })?;
    let lock = Lock {
        lock_version: lock::LOCK_VERSION,
        mirror: mirror_url.trim_end_matches('/').to_string(),
        release_date: release.date,
        request: request.clone(),
        packages: set.into_iter().map(index::Package::locked).collect(),
    };
    lock.check()?;
    Ok(lock)
}

/// `--unlocked`: gives a Debian base that has no lock file the package set
/// the mirror has today. The build's name still hashes that set, so it names
/// what the image holds; it is just not pinned for next time.
pub(crate) fn lock_now_if_unlocked(recipe: &mut crate::config::Recipe) -> Result<()> {
    if let crate::config::recipe::Base::Debian(base) = &mut recipe.base {
        if base.lock.is_none() {
            tracing::warn!(
                "{} has no lock: resolving from {} today (`imgd lock` pins it)",
                base.lock_path.display(),
                base.mirror
            );
            let lock = resolve_lock(&base.mirror, &base.keyring, &base.request)?;
            base.lock = Some(lock);
        }
    }
    Ok(())
}
