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

use super::error::{Result, RootfsError};
use super::tree::Tree;
use crate::config::lock::Lock;
use crate::debian::fetch::{Mirror, Pool};
use crate::fsutil::IoAt;
use crate::shelf::Shelf;
use crate::store::remote::Remote;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Bumped when the way a base is assembled changes its bytes.
const BASE_VERSION: &str = "mmdebstrap-custom-2";

/// Run in the finished chroot with INITRD=No dropped: what each installed
/// kernel's postinst does, once more: its /vmlinuz and /initrd.img links,
/// then every hook in /etc/kernel/postinst.d (initramfs-tools', or any other
/// initramfs generator's). A lock without a kernel skips it.
const INITRAMFS_ONCE: &str = "unset INITRD; command -v linux-version >/dev/null || exit 0; \
    for v in $(linux-version list); do linux-update-symlinks install \"$v\" \"/boot/vmlinuz-$v\" || exit 1; \
    if [ -d /etc/kernel/postinst.d ]; then run-parts --report --exit-on-error --arg=\"$v\" \
    --arg=\"/boot/vmlinuz-$v\" /etc/kernel/postinst.d || exit 1; fi; done";

/// Downloads running at once: a mirror serves many small files faster in
/// parallel, and a handful is what apt uses.
const PARALLEL_DOWNLOADS: usize = 4;

/// Where the pieces live: `<cache>/debian/pool` and `<cache>/debian/bases`.
#[derive(Debug, Clone)]
pub struct Cache {
    pub pool: Pool,
    pub bases: Shelf,
}

impl Cache {
    pub fn new(cache: &Path) -> Cache {
        Cache { pool: Pool::new(cache.join("debian/pool")), bases: Shelf::new(cache.join("debian/bases")) }
    }
}

/// The name of a base: what was installed (by SHA-256), how, and the epoch
/// its files are stamped with. The mirror is not part of it.
pub(crate) fn base_key(lock: &Lock, epoch: u64) -> String {
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

/// The remote cache's folder for pooled packages (`<prefix>/debian-pool/<sha256>.deb`).
pub(crate) const REMOTE_POOL: &str = "debian-pool";

/// Puts every locked package in the pool: from the remote cache when it has
/// it (checked by SHA-256 like anything else; a bad copy is skipped), else
/// from `mirror`, in parallel, and then shares what came from the mirror
/// with the remote cache. A lock stays buildable after the mirror dropped
/// its versions, as long as the pool or the cache holds them.
pub fn fetch_all(lock: &Lock, pool: &Pool, mirror: &Mirror, remote: Option<&dyn Remote>) -> Result<FetchReport> {
    pool.sweep_partial();
    let mut report = FetchReport::default();
    let mut missing: Vec<_> = lock.packages.iter().filter(|p| !pool.has(&p.sha256)).collect();
    // Packages whose copy in the remote cache was bad: replaced after.
    let mut bad: std::collections::HashSet<&str> = std::collections::HashSet::new();
    if let Some(r) = remote {
        missing.retain(|p| {
            let name = format!("{}.deb", p.sha256);
            let got = (|| -> Result<bool> {
                let tmp = pool.partial_dir()?;
                let file = tmp.path().join(&name);
                if !r.get(REMOTE_POOL, &name, &file, p.size)? {
                    return Ok(false);
                }
                Ok(pool.adopt(&file, &p.sha256, p.size).map(|_| true)?)
            })();
            match got {
                Ok(true) => {
                    report.from_cache += 1;
                    false
                }
                Ok(false) => true,
                Err(e) => {
                    tracing::warn!(
                        "{} {} from {}: {}; taking it from the mirror",
                        p.name,
                        p.version,
                        r.url(),
                        crate::model::Chain(&e)
                    );
                    bad.insert(&p.sha256);
                    true
                }
            }
        });
    }
    if missing.is_empty() {
        return Ok(report);
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
                        pool.fetch(mirror, &p.filename, &p.sha256, p.size).map_err(|e| RootfsError::Package {
                            name: p.name.clone(),
                            version: p.version.clone(),
                            source: Box::new(e.into()),
                        })?;
                    }
                })
            })
            .collect();
        workers.into_iter().try_for_each(|w| w.join().unwrap_or(Err(RootfsError::Panicked("a download thread"))))
    })?;
    report.from_mirror = missing.len();
    if let Some(r) = remote {
        for p in &missing {
            let name = format!("{}.deb", p.sha256);
            match r.put_file(REMOTE_POOL, &name, &pool.path(&p.sha256), &p.sha256, bad.contains(p.sha256.as_str())) {
                Ok(()) => report.shared += 1,
                Err(e) => {
                    tracing::warn!(
                        "could not share {} with {} ({}); the local pool is fine",
                        p.name,
                        r.url(),
                        crate::model::Chain(&e)
                    );
                    break;
                }
            }
        }
    }
    Ok(report)
}

/// Where the packages of one [`fetch_all`] came from.
#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
pub struct FetchReport {
    pub from_cache: usize,
    pub from_mirror: usize,
    /// Sent to the remote cache after coming from the mirror.
    pub shared: usize,
}

/// The base's root filesystem as a `.tar.zst`, assembled now or found in the
/// cache. `mirror` is where missing packages come from and what the image's
/// sources.list names; `key` is its [`base_key`].
pub(crate) fn base_tarball(
    lock: &Lock,
    cache: &Cache,
    mirror: &Mirror,
    remote: Option<&dyn Remote>,
    key: &str,
    epoch: u64,
) -> Result<PathBuf> {
    let done = cache.bases.dir().join(format!("{key}.tar.zst"));
    // Used now (before it is looked for): a tarball whose tree is not
    // unpacked is removed when idle by its own age (`remove_unused`).
    crate::shelf::touch(&done);
    if done.is_file() {
        tracing::info!("Debian base {} (cached)", &key[..16]);
        return Ok(done);
    }
    if !rustix::process::geteuid().is_root() {
        return Err(RootfsError::NeedsRoot);
    }
    let _locked = cache.bases.lock(key)?;
    if done.is_file() {
        return Ok(done);
    }
    fetch_all(lock, &cache.pool, mirror, remote)?;
    // Work in a private folder beside the result: a killed build leaves no
    // half-written base under a name that would be taken as complete (and
    // the next assembly sweeps it: it would fill a crash-looping builder's disk).
    let work = cache.bases.workspace(&format!(".assemble-{}-", &key[..16]))?;
    let repo = work.path().join("repo");
    local_repo(lock, &cache.pool, &repo)?;
    let out = work.path().join("base.tar.zst");
    let names: Vec<&str> = lock.packages.iter().map(|p| p.name.as_str()).collect();
    let sources = format!("deb {} {} {}\n", mirror, lock.request.suite, lock.request.components.join(" "));
    // In mount and PID namespaces of its own, so that a kill of imgd ends
    // all of it: the /proc, /sys and /dev it mounts in its chroot go with
    // the mount namespace (killed, mmdebstrap cannot unmount them, and in
    // the host's namespace they stayed, under a folder the next build
    // removes), and its dpkg and maintainer scripts with the PID namespace
    // (the kernel kills them when mmdebstrap, its first process, dies; they
    // went on writing into the chroot). unshare dies by tools::run's
    // parent-death signal and takes mmdebstrap with it (--kill-child). The
    // chroot is made in the work folder, not /tmp, so that the next build's
    // sweep also takes what a killed assembly left (~700 MB).
    let mut cmd = Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "--pid", "--fork", "--kill-child", "--", "mmdebstrap"])
        .env("TMPDIR", work.path())
        .env("SOURCE_DATE_EPOCH", epoch.to_string())
        .args(["--mode=root", "--variant=custom", "--quiet"])
        .arg(format!("--architectures={}", lock.request.architecture))
        .arg(format!("--include={}", names.join(",")))
        // The host's hostname and resolver do not belong in an image (imgd
        // writes the profile's hostname), nor do SSH host keys that
        // openssh-server's postinst made (secrets, different every run:
        // images make their own at first boot). The image's apt points at
        // the real mirror, not at the local repository it was built from.
        // dpkg need not fsync each file of a chroot that is thrown away if
        // the assembly fails (the finished tarball is synced below): 6% of
        // the assembly here (106 -> 100 s), the same bytes. The option file
        // is gone before the tarball is made.
        .arg("--setup-hook=mkdir -p \"$1/etc/dpkg/dpkg.cfg.d\" && echo force-unsafe-io > \"$1/etc/dpkg/dpkg.cfg.d/zz-imgd-unsafe-io\"")
        .arg("--customize-hook=rm -f \"$1/etc/dpkg/dpkg.cfg.d/zz-imgd-unsafe-io\"")
        .arg("--customize-hook=rm -f \"$1/etc/hostname\" \"$1/etc/resolv.conf\" \"$1\"/etc/ssh/ssh_host_*")
        // apt's partial folders belong to its _apt user, as in any Debian
        // install. apt itself chowns them only when _apt could reach the
        // chroot: under a folder of mode 700 (a private temp folder) it
        // falls back to root, and the base's bytes depended on where the
        // cache was.
        .arg(format!("--customize-hook={APT_PARTIAL_OWNER}"))
        .arg(format!("--customize-hook=printf '%s' '{sources}' > \"$1/etc/apt/sources.list\""))
        // The initramfs is made once, with every package in place. Left to
        // itself it is made twice: by the kernel's postinst hook, then again
        // by the trigger of every package with an initramfs hook (udev...).
        // Each run forks some 15,000 times and gzips 36 MB: a third of the
        // assembly. INITRD=No is Debian's own way to skip it (the kernel hook
        // and linux-update-symlinks honour it; the trigger then finds no
        // initramfs to update); the hook makes what they would have made.
        // The assembly: 121 -> 74 s, the base tarball's bytes unchanged.
        .env("INITRD", "No")
        .arg(format!("--chrooted-customize-hook={INITRAMFS_ONCE}"))
        .arg(&lock.request.suite)
        .arg(&out)
        // copy://: apt inside the chroot cannot see a file:// path outside it.
        .arg(format!("deb [trusted=yes] copy://{} ./", repo.display()));
    tracing::info!("assembling the Debian base ({} packages) with mmdebstrap", names.len());
    crate::tools::run(&mut cmd)?;
    // On disk before it has the name that says it is complete.
    std::fs::File::open(&out).and_then(|f| f.sync_all()).at("syncing", &out)?;
    std::fs::rename(&out, &done).at("keeping", &done)?;
    Ok(done)
}

/// Gives apt's partial folders to `_apt` when the image has that user.
const APT_PARTIAL_OWNER: &str = "if chroot \"$1\" id -u _apt >/dev/null 2>&1; then \
    for d in var/cache/apt/archives/partial var/lib/apt/lists/partial; do \
    [ ! -d \"$1/$d\" ] || chroot \"$1\" chown _apt:root \"/$d\"; done; fi";

/// The base as a tree staged in `staging`. The tarball is unpacked once
/// into the cache (`<key>.tree`: files and node table); every build links
/// its files from there instead of writing 700 MB again.
pub(crate) fn base_tree(
    lock: &Lock,
    cache: &Cache,
    mirror: &Mirror,
    remote: Option<&dyn Remote>,
    epoch: u64,
    staging: &Path,
) -> Result<Tree> {
    let key = base_key(lock, epoch);
    let unpacked = cache.bases.dir().join(format!("{key}.tree"));
    if !unpacked.join("nodes.json").is_file() {
        let tarball = base_tarball(lock, cache, mirror, remote, &key, epoch)?;
        // One assembly (or unpacking) of a base at a time: a second build
        // of it waits, then finds it done.
        let _locked = cache.bases.lock(&key)?;
        if !unpacked.join("nodes.json").is_file() {
            let tmp = cache.bases.workspace(&format!(".unpack-{}-", &key[..16]))?;
            let mut tree = Tree::new(&tmp.path().join("root"))?;
            tree.extract_tarball(&tarball).map_err(super::error::unpacking("unpacking", &tarball.display()))?;
            tree.save(tmp.path()).at("saving the unpacked base in", tmp.path())?;
            // Only whole unpacked trees are ever under this name: every file
            // on disk first (one syncfs, not 16,000 fsyncs).
            std::fs::File::open(tmp.path()).and_then(|f| Ok(rustix::fs::syncfs(f)?)).at("syncing", tmp.path())?;
            std::fs::rename(tmp.keep(), &unpacked).at("keeping", &unpacked)?;
            drop(_locked);
            remove_unused(cache, crate::shelf::UNUSED, &key);
        }
    }
    // Used now, before the files are linked: a removal of unused bases
    // must never see this one as unused while a build reads it.
    crate::shelf::touch(&unpacked.join("nodes.json"));
    let tree = Tree::link_from(&unpacked, staging)
        .map_err(super::error::unpacking("linking the base from", &unpacked.display()))?;
    Ok(tree)
}

/// Removes the tarball and tree of every base other than `keep` that no
/// build used for `unused`. A tree is used when its node table is touched;
/// a tarball without its tree (an unpack that was killed, a tree removed by
/// hand) by its own mtime, which every build that reaches it touches.
pub fn remove_unused(cache: &Cache, unused: std::time::Duration, keep: &str) -> Vec<crate::shelf::Removed> {
    let dir = cache.bases.dir();
    let tree = |key: &str| dir.join(format!("{key}.tree"));
    let tarball = |key: &str| dir.join(format!("{key}.tar.zst"));
    let trees = crate::shelf::Kind {
        suffix: ".tree",
        what: "Debian base",
        marks: &|key| vec![tree(key).join("nodes.json")],
        also: &|key| vec![tarball(key)],
    };
    let tarballs = crate::shelf::Kind {
        suffix: ".tar.zst",
        what: "Debian base",
        marks: &|key| vec![tarball(key), tree(key).join("nodes.json")],
        also: &|key| vec![tree(key)],
    };
    let mut removed = cache.bases.remove_unused(&trees, unused, keep);
    removed.extend(cache.bases.remove_unused(&tarballs, unused, keep));
    removed
}

/// The SHA-256 ties a lock line to a file, not to a package: lines whose
/// hashes were swapped, or a name pointed at another `.deb` of the set,
/// would build "fine" and misname what the image holds. So the package's
/// own control fields must be the line's name, version and architecture.
fn is_what_its_line_says(control: &str, p: &crate::config::lock::Locked) -> Result<()> {
    let field = |k: &str| {
        control.lines().find_map(|l| l.strip_prefix(k)?.strip_prefix(':').map(str::trim)).unwrap_or("").to_string()
    };
    let got = (field("Package"), field("Version"), field("Architecture"));
    let want = (p.name.as_str(), p.version.as_str(), p.architecture.as_str());
    if (got.0.as_str(), got.1.as_str(), got.2.as_str()) != want {
        return Err(RootfsError::NotItsLine {
            want: format!("{} {} {}", want.0, want.1, want.2),
            sha256: p.sha256.clone(),
            got: format!("{} {} {}", got.0, got.1, got.2),
        });
    }
    Ok(())
}

/// A flat repository of exactly the locked files: hard links into the pool
/// (same file system; a copy otherwise) and a `Packages` index written from
/// each package's own control fields.
fn local_repo(lock: &Lock, pool: &Pool, repo: &Path) -> Result<()> {
    std::fs::create_dir_all(repo).at("creating", repo)?;
    let mut index = String::new();
    for p in &lock.packages {
        let file = format!("{}_{}_{}.deb", p.name, p.version.replace(':', "%3a"), p.architecture);
        let src = pool.path(&p.sha256);
        let dst = repo.join(&file);
        std::fs::hard_link(&src, &dst).or_else(|_| std::fs::copy(&src, &dst).map(|_| ())).at("linking", &dst)?;
        let control = crate::tools::run(Command::new("dpkg-deb").arg("--field").arg(&dst))?;
        is_what_its_line_says(&control, p)?;
        index.push_str(control.trim_end());
        index.push_str(&format!("\nFilename: ./{file}\nSize: {}\nSHA256: {}\n\n", p.size, p.sha256));
    }
    std::fs::write(repo.join("Packages"), index).at("writing", repo.join("Packages"))?;
    Ok(())
}
