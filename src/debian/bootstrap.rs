//! Assembling a Debian base from a lock: the locked `.deb`s, fetched by
//! SHA-256 into a pool, become a local repository holding nothing else, and
//! mmdebstrap installs every one of them from it (`--variant=custom`: apt can
//! only pick the locked versions, and a lock missing a dependency fails
//! loudly instead of reaching for the network).
//!
//! mmdebstrap rather than debootstrap: it installs a given package set in
//! one apt run, runs as a normal tool against a local repository without a
//! signed Release, and makes the same tarball from the same packages and
//! `SOURCE_DATE_EPOCH` (it removes the logs, caches and machine-id that
//! would differ). The result is kept under the hash of what went in, so a
//! profile change that does not touch the package set reuses it.

use super::fetch::{Mirror, Pool};
use super::lock::Lock;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Bumped when the way a base is assembled changes its bytes.
const BASE_VERSION: &str = "mmdebstrap-custom-2";

/// Downloads running at once: a mirror serves many small files faster in
/// parallel, and a handful is what apt uses.
const PARALLEL_DOWNLOADS: usize = 4;

/// Where the pieces live: `<cache>/debian/pool` and `<cache>/debian/bases`.
#[derive(Debug, Clone)]
pub struct Cache {
    pub pool: Pool,
    pub bases: PathBuf,
}

impl Cache {
    pub fn new(cache: &Path) -> Cache {
        Cache { pool: Pool::new(cache.join("debian/pool")), bases: cache.join("debian/bases") }
    }
}

/// The name of a base: what was installed (by SHA-256), how, and the epoch
/// its files are stamped with. The mirror is not part of it.
pub fn base_key(lock: &Lock, epoch: u64) -> String {
    let packages: Vec<(&str, &str)> = lock.packages.iter().map(|p| (p.name.as_str(), p.sha256.as_str())).collect();
    let input = serde_json::json!({
        "base": BASE_VERSION,
        "mmdebstrap": crate::tools::version_line("mmdebstrap", "--version"),
        "request": lock.request,
        "packages": packages,
        "epoch": epoch,
    });
    crate::hash::sha256_hex(input.to_string().as_bytes())
}

/// Fetches every locked package the pool lacks from `mirror`, in parallel.
pub fn fetch_all(lock: &Lock, pool: &Pool, mirror: &Mirror) -> Result<()> {
    pool.sweep_partial();
    let missing: Vec<_> = lock.packages.iter().filter(|p| !pool.has(&p.sha256)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    let bytes: u64 = missing.iter().map(|p| p.size).sum();
    tracing::info!("fetching {} locked packages ({} MiB) from {mirror}", missing.len(), bytes >> 20);
    let next = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..PARALLEL_DOWNLOADS)
            .map(|_| {
                s.spawn(|| -> Result<()> {
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(p) = missing.get(i) else { return Ok(()) };
                        pool.fetch(mirror, &p.filename, &p.sha256, p.size)
                            .with_context(|| format!("{} {}", p.name, p.version))?;
                    }
                })
            })
            .collect();
        workers.into_iter().try_for_each(|w| w.join().unwrap_or_else(|_| bail!("a download thread panicked")))
    })
}

/// The base's root filesystem as a `.tar.zst`, assembled now or found in the
/// cache. `mirror` is where missing packages come from and what the image's
/// sources.list names.
pub fn base_tarball(lock: &Lock, cache: &Cache, mirror: &Mirror, epoch: u64) -> Result<PathBuf> {
    let key = base_key(lock, epoch);
    let done = cache.bases.join(format!("{key}.tar.zst"));
    if done.is_file() {
        tracing::info!("Debian base {} (cached)", &key[..16]);
        return Ok(done);
    }
    if !rustix::process::geteuid().is_root() {
        bail!("assembling a Debian base needs root (mmdebstrap --mode=root creates device nodes and chroots)");
    }
    std::fs::create_dir_all(&cache.bases)?;
    // One assembly per base at a time: a second build of it waits, then
    // finds it done.
    let lockfile = std::fs::File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(cache.bases.join(format!(".{key}.lock")))?;
    lockfile.lock().context("locking the base")?;
    if done.is_file() {
        return Ok(done);
    }
    // Assemblies of this base that were killed (we hold its lock) left
    // their folders: they would fill the disk of a crash-looping builder.
    let prefix = format!(".assemble-{}-", &key[..16]);
    for e in std::fs::read_dir(&cache.bases)?.flatten() {
        if e.file_name().to_string_lossy().starts_with(&prefix) {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
    fetch_all(lock, &cache.pool, mirror)?;
    // Work in a private folder beside the result: a killed build leaves no
    // half-written base under a name that would be taken as complete.
    let work = tempfile::Builder::new().prefix(&prefix).tempdir_in(&cache.bases)?;
    let repo = work.path().join("repo");
    local_repo(lock, &cache.pool, &repo)?;
    let out = work.path().join("base.tar.zst");
    let names: Vec<&str> = lock.packages.iter().map(|p| p.name.as_str()).collect();
    let sources = format!("deb {} {} {}\n", mirror, lock.request.suite, lock.request.components.join(" "));
    let mut cmd = Command::new("mmdebstrap");
    cmd.env("SOURCE_DATE_EPOCH", epoch.to_string())
        .args(["--mode=root", "--variant=custom", "--quiet"])
        .arg(format!("--architectures={}", lock.request.architecture))
        .arg(format!("--include={}", names.join(",")))
        // The host's hostname and resolver do not belong in an image (imgd
        // writes the profile's hostname), nor do SSH host keys that
        // openssh-server's postinst made (secrets, different every run:
        // images make their own at first boot). The image's apt points at
        // the real mirror, not at the local repository it was built from.
        .arg("--customize-hook=rm -f \"$1/etc/hostname\" \"$1/etc/resolv.conf\" \"$1\"/etc/ssh/ssh_host_*")
        .arg(format!("--customize-hook=printf '%s' '{sources}' > \"$1/etc/apt/sources.list\""))
        .arg(&lock.request.suite)
        .arg(&out)
        // copy://: apt inside the chroot cannot see a file:// path outside it.
        .arg(format!("deb [trusted=yes] copy://{} ./", repo.display()));
    tracing::info!("assembling the Debian base ({} packages) with mmdebstrap", names.len());
    crate::tools::run(&mut cmd).context("mmdebstrap")?;
    std::fs::rename(&out, &done)?;
    Ok(done)
}

/// A flat repository of exactly the locked files: hard links into the pool
/// (same file system; a copy otherwise) and a `Packages` index written from
/// each package's own control fields.
fn local_repo(lock: &Lock, pool: &Pool, repo: &Path) -> Result<()> {
    std::fs::create_dir_all(repo)?;
    let mut index = String::new();
    for p in &lock.packages {
        let file = format!("{}_{}_{}.deb", p.name, p.version.replace(':', "%3a"), p.architecture);
        let src = pool.path(&p.sha256);
        let dst = repo.join(&file);
        std::fs::hard_link(&src, &dst).or_else(|_| std::fs::copy(&src, &dst).map(|_| ()))?;
        let control = crate::tools::run(Command::new("dpkg-deb").arg("--field").arg(&dst))
            .with_context(|| format!("reading the control fields of {file}"))?;
        index.push_str(control.trim_end());
        index.push_str(&format!("\nFilename: ./{file}\nSize: {}\nSHA256: {}\n\n", p.size, p.sha256));
    }
    std::fs::write(repo.join("Packages"), index)?;
    Ok(())
}
