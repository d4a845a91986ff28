//! The threads that serve HTTP connections: one per core, each with a
//! runtime of its own, taking accepted connections in turn.
//!
//! On tokio's work-stealing runtime, a request's task woke the other core's
//! worker and both cores' caches shared every connection's state: on 2
//! cores, one worker used 13% less CPU a `/ipxe` render than two (6.8 vs
//! 7.8 µs, alternating `wrk` runs). A connection here stays on the thread
//! that took it, as an nginx worker's does, so no request wakes another
//! thread. The accept loop, its limits and the drain stay in one place
//! (listener.rs); it only enters a worker's runtime to set a connection up.

use std::sync::atomic::{AtomicUsize, Ordering};

pub(crate) struct Workers {
    runtimes: Vec<tokio::runtime::Handle>,
    next: AtomicUsize,
    /// Dropped, it ends the threads (after the drain: their connections'
    /// tasks end with their runtime).
    _stop: tokio::sync::watch::Sender<()>,
}

impl Workers {
    /// `threads` threads named `imgd-http-N`; each runtime runs at most
    /// `blocking` threads of file reads at once.
    pub(crate) fn start(threads: usize, blocking: usize) -> std::io::Result<Workers> {
        let (stop, stopped) = tokio::sync::watch::channel(());
        let mut runtimes = Vec::new();
        for i in 0..threads.max(1) {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .max_blocking_threads(blocking.max(1))
                .thread_name(format!("imgd-read-{i}"))
                .build()?;
            runtimes.push(rt.handle().clone());
            let mut stopped = stopped.clone();
            std::thread::Builder::new().name(format!("imgd-http-{i}")).spawn(move || {
                // Drives the connections spawned onto it until `stop` drops.
                rt.block_on(async move { while stopped.changed().await.is_ok() {} });
            })?;
        }
        Ok(Workers { runtimes, next: AtomicUsize::new(0), _stop: stop })
    }

    /// The runtime the next connection goes to: in turn, so connections
    /// opened at once spread evenly.
    pub(crate) fn next(&self) -> &tokio::runtime::Handle {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.runtimes.len();
        &self.runtimes[i]
    }

    /// One per core the process may run on.
    pub(crate) fn per_core() -> usize {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    }
}
