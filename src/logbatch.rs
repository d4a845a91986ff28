//! The log writer of `imgd serve`: lines gathered in memory and written to
//! stderr by a thread of its own, a batch at a time.
//!
//! A server logs a line per boot step (each proxyDHCP answer, script and
//! file). Written in place, each line is a write(2) under the stderr lock on
//! the thread answering (14% of a `/ipxe` render's CPU). Handed to a thread
//! one line at a time (tracing-appender's non-blocking writer, used here
//! before), each line wakes that thread: a futex call, and on 2 cores a
//! thread competing for the CPU right after an answer is sent. A proxyDHCP
//! ack's p99 was 0.15 ms with its line and 0.08 ms without. Here the first
//! line into an empty batch wakes the writer, which waits [`GATHER`] for more
//! (or until [`SOON`] bytes are gathered) and writes them all with one call:
//! under a storm one wake-up and one write per 20 ms, not per line; idle,
//! none. Written by hand because that delay is the point, and no logging
//! crate offers it.
//!
//! The thread that logs never writes while the writer keeps up: at 160,000
//! renders a second (24 MB/s of lines) a 256 KiB bound that the logger wrote
//! itself stalled the HTTP thread, and every connection on it, ~45 times a
//! second. The two buffers swap, so a busy batch is not regrown each time.
//!
//! Nothing is dropped and the order is kept: past [`MAX_BATCH`] bytes (the
//! writer has fallen behind stderr) the logging thread writes the batch
//! itself, and whoever takes a batch holds the output until it is written.

use std::io::Write;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

/// How long the writer waits, once woken, for more lines to write at once.
pub const GATHER: Duration = Duration::from_millis(20);

/// A batch this large is written at once, without waiting out [`GATHER`].
pub const SOON: usize = 128 << 10;

/// A batch this large is written by the thread that logs: lines come faster
/// than stderr drains, and the logger waits rather than the batch growing
/// without bound.
pub const MAX_BATCH: usize = 1 << 20;

/// The written buffer is kept for the next batch up to this capacity; a
/// burst's bigger one is given back.
const KEEP: usize = MAX_BATCH / 2;

struct Shared {
    batch: Mutex<Batch>,
    wake: Condvar,
    out: Mutex<Box<dyn Write + Send>>,
}

#[derive(Default)]
struct Batch {
    bytes: Vec<u8>,
    /// The last written batch's buffer, emptied: the next batch's.
    spare: Vec<u8>,
    /// The writer was told the batch passed [`SOON`].
    hurried: bool,
    /// The writer thread is gone (or going): loggers write in place.
    stopped: bool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    /// Writes what is gathered. The output is held before the batch is
    /// taken, so batches reach it in the order they were taken (and the
    /// spare buffer is touched by one flush at a time).
    fn flush(&self) {
        let mut out = lock(&self.out);
        let mut bytes = {
            let mut b = lock(&self.batch);
            b.hurried = false;
            let spare = std::mem::take(&mut b.spare);
            std::mem::replace(&mut b.bytes, spare)
        };
        if !bytes.is_empty() {
            // A log line that cannot be written has nowhere to be reported.
            let _ = out.write_all(&bytes).and_then(|()| out.flush());
        }
        if bytes.capacity() <= KEEP {
            bytes.clear();
            lock(&self.batch).spare = bytes;
        }
    }

    fn append(&self, line: &[u8]) {
        let mut b = lock(&self.batch);
        let first = b.bytes.is_empty();
        b.bytes.extend_from_slice(line);
        let len = b.bytes.len();
        let hurry = len >= SOON && !std::mem::replace(&mut b.hurried, true);
        let stopped = b.stopped;
        drop(b);
        if len >= MAX_BATCH || stopped {
            self.flush();
        } else if first || hurry {
            self.wake.notify_one();
        }
    }
}

/// Where tracing writes: each event's line is appended to the batch.
#[derive(Clone)]
pub struct BatchWriter(Arc<Shared>);

/// Writes what is left and stops the writer thread when dropped: every line
/// logged before is written.
pub struct FlushOnDrop {
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// A writer for `out` and the guard that flushes it; the thread is named
/// `name`.
pub fn batched(out: impl Write + Send + 'static, name: &str) -> std::io::Result<(BatchWriter, FlushOnDrop)> {
    let shared = Arc::new(Shared { batch: Mutex::default(), wake: Condvar::new(), out: Mutex::new(Box::new(out)) });
    let s = shared.clone();
    let thread = std::thread::Builder::new().name(name.into()).spawn(move || loop {
        let mut b = lock(&s.batch);
        while b.bytes.is_empty() && !b.stopped {
            b = s.wake.wait(b).unwrap_or_else(|p| p.into_inner());
        }
        if !b.stopped {
            b = s
                .wake
                .wait_timeout_while(b, GATHER, |b| b.bytes.len() < SOON && !b.stopped)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        let stopped = b.stopped;
        drop(b);
        s.flush();
        if stopped {
            return;
        }
    })?;
    Ok((BatchWriter(shared.clone()), FlushOnDrop { shared, thread: Some(thread) }))
}

impl Drop for FlushOnDrop {
    fn drop(&mut self) {
        lock(&self.shared.batch).stopped = true;
        self.shared.wake.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.shared.flush();
    }
}

impl Write for BatchWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.append(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for BatchWriter {
    type Writer = BatchWriter;

    fn make_writer(&'a self) -> BatchWriter {
        self.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `Write` whose bytes, write calls and writing threads the test can read.
    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Sunk>>);

    /// The bytes written, the write calls, and the thread of each call.
    type Sunk = (Vec<u8>, usize, Vec<String>);

    impl Write for Sink {
        /// Keeps the bytes, counts the calls and notes the calling thread.
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let mut s = lock(&self.0);
            s.0.extend_from_slice(buf);
            s.1 += 1;
            s.2.push(std::thread::current().name().unwrap_or("").to_string());
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn lines_from_many_threads_arrive_whole_in_order_in_few_writes_and_all_by_the_guards_drop() {
        let sink = Sink::default();
        let (w, guard) = batched(sink.clone(), "test-log").unwrap();
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let mut w = w.clone();
                std::thread::spawn(move || {
                    for i in 0..2000 {
                        w.write_all(format!("thread {t} line {i:04}\n").as_bytes()).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        drop(guard);
        let (bytes, writes, _) = lock(&sink.0).clone();
        let text = String::from_utf8(bytes).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 8000, "nothing dropped");
        for t in 0..4 {
            let mine: Vec<&str> = lines.iter().copied().filter(|l| l.starts_with(&format!("thread {t} "))).collect();
            let want: Vec<String> = (0..2000).map(|i| format!("thread {t} line {i:04}")).collect();
            assert_eq!(mine, want, "each thread's lines whole and in its order");
        }
        assert!(writes < 800, "8,000 lines in {writes} writes");
    }

    #[test]
    fn a_lone_line_is_written_within_the_gather_time_and_a_huge_burst_is_bounded() {
        let sink = Sink::default();
        let (mut w, guard) = batched(sink.clone(), "test-log").unwrap();
        w.write_all(b"one\n").unwrap();
        let end = std::time::Instant::now() + Duration::from_secs(5);
        while lock(&sink.0).0.is_empty() {
            assert!(std::time::Instant::now() < end, "a lone line was never written");
            std::thread::sleep(Duration::from_millis(5));
        }
        // Lines logged faster than the writer wakes: written by the logger
        // once a batch reaches its bound, so the batch never holds more.
        let line = [b'x'; 1023];
        for _ in 0..1024 {
            w.write_all(&line).unwrap();
            w.write_all(b"\n").unwrap();
            assert!(lock(&guard.shared.batch).bytes.len() < MAX_BATCH + 1024);
        }
        drop(guard);
        assert_eq!(lock(&sink.0).0.len(), 4 + (1 << 20));
    }

    #[test]
    fn a_busy_logger_below_the_bound_never_writes_itself() {
        let sink = Sink::default();
        let (mut w, guard) = batched(sink.clone(), "test-log").unwrap();
        // Half the bound, faster than 20 ms: the HTTP thread's case at
        // 160,000 renders a second. Every write is the writer's.
        let line = [b'x'; 511];
        for _ in 0..MAX_BATCH / 2 / 512 {
            w.write_all(&line).unwrap();
            w.write_all(b"\n").unwrap();
        }
        let end = std::time::Instant::now() + Duration::from_secs(5);
        while lock(&sink.0).0.len() < MAX_BATCH / 2 {
            assert!(std::time::Instant::now() < end, "the burst was never written");
            std::thread::sleep(Duration::from_millis(5));
        }
        let writers = lock(&sink.0).2.clone();
        assert!(writers.iter().all(|n| n == "test-log"), "written by {writers:?}");
        drop(guard);
    }
}
