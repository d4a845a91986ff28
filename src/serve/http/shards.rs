//! A value written by every request, kept as one copy per thread slot.
//!
//! A counter behind one `Mutex` is written by every request on every core:
//! its lock word and map move from core to core with each request, and on a
//! many-core server the requests queue for it. Here each thread writes the
//! shard its slot names, a cache line of its own that no other thread
//! writes while it runs; readers (`/metrics`, tests) visit every shard and
//! add up. Written by hand: a map sharded by key (`dashmap`) would send
//! every request to the same shard, as requests count the same few keys.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

/// Shards per value: more than the threads that answer requests on most
/// machines (two slots meet only past this many threads, and then share
/// a lock as before).
const SHARDS: usize = 16;

/// One shard on cache lines of its own (128 bytes: the adjacent-line
/// prefetcher pairs 64-byte lines on x86).
#[repr(align(128))]
#[derive(Default)]
struct Padded<T>(Mutex<T>);

pub struct Sharded<T> {
    shards: Box<[Padded<T>]>,
}

impl<T: Default> Default for Sharded<T> {
    fn default() -> Self {
        Sharded { shards: (0..SHARDS).map(|_| Padded::default()).collect() }
    }
}

/// This thread's slot, given out in turn as threads first ask.
fn slot() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SLOT: usize = NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS;
    }
    SLOT.with(|s| *s)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl<T> Sharded<T> {
    /// The calling thread's shard, to write.
    pub fn mine(&self) -> MutexGuard<'_, T> {
        lock(&self.shards[slot()].0)
    }

    /// Every shard in turn, to read (each locked while `f` sees it).
    pub fn each(&self, mut f: impl FnMut(&T)) {
        for s in self.shards.iter() {
            f(&lock(&s.0));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn counts_from_many_threads_add_up_to_every_write() {
        let counts: Arc<Sharded<u64>> = Arc::default();
        let threads: Vec<_> = (0..(SHARDS + 5))
            .map(|_| {
                let counts = Arc::clone(&counts);
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        *counts.mine() += 1;
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let mut total = 0;
        counts.each(|n| total += n);
        assert_eq!(total, 1000 * (SHARDS as u64 + 5));
    }
}
