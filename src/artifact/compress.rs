//! zstd settings shared by the initrd and tarball writers.

/// zstd level for initrds and tarballs: fast to build, and the kernel
/// decompresses it quickly.
pub(crate) const ZSTD_LEVEL: i32 = 3;

/// zstd's multi-threaded output does not depend on the number of workers, so
/// using every core keeps builds reproducible.
pub(crate) fn zstd_threads<W: std::io::Write>(z: &mut zstd::Encoder<'_, W>) -> std::io::Result<()> {
    z.multithread(cores())
}

pub(crate) fn cores() -> u32 {
    std::thread::available_parallelism().map_or(1, |n| n.get()) as u32
}
