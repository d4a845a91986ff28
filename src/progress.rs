//! Step progress: a spinner per step on a terminal, plain log lines otherwise
//! (CI logs, pipes), nothing but errors with `--quiet`.

use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::time::{Duration, Instant};

#[derive(Clone, Copy)]
pub struct Progress {
    tty: bool,
    quiet: bool,
}

impl Progress {
    pub fn new(quiet: bool) -> Self {
        Progress { tty: std::io::stderr().is_terminal(), quiet }
    }

    pub(crate) fn step(&self, msg: &str) -> Step {
        let bar = if self.tty && !self.quiet {
            let b = ProgressBar::new_spinner();
            // A fixed, valid template; the default style is only a fallback.
            b.set_style(
                ProgressStyle::with_template("{spinner} {msg} {elapsed}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            b.set_message(msg.to_string());
            b.enable_steady_tick(Duration::from_millis(100));
            Some(b)
        } else {
            if !self.quiet {
                tracing::info!("{msg} ...");
            }
            None
        };
        Step { bar, msg: msg.to_string(), start: Instant::now(), quiet: self.quiet }
    }

    /// A step that runs beside others: no spinner (two would fight over the
    /// terminal), a log line where there is no terminal.
    pub(crate) fn background_step(&self, msg: &str) -> Step {
        Progress { tty: false, quiet: self.quiet || self.tty }.step(msg)
    }
}

pub(crate) struct Step {
    bar: Option<ProgressBar>,
    msg: String,
    start: Instant,
    quiet: bool,
}

impl Step {
    pub(crate) fn done(self) {
        let secs = self.start.elapsed().as_secs_f64();
        match &self.bar {
            Some(b) => b.finish_with_message(format!("{} ({secs:.1}s)", self.msg)),
            None if !self.quiet => tracing::info!("{} done in {secs:.1}s", self.msg),
            None => {}
        }
    }
}

impl Drop for Step {
    fn drop(&mut self) {
        if let Some(b) = &self.bar {
            if !b.is_finished() {
                b.abandon();
            }
        }
    }
}

/// Progress of a transfer in bytes: a bar with rate and ETA on a terminal,
/// a plain line at most every 10 s otherwise. Cheap to clone and share
/// between the tasks that move the bytes.
#[derive(Clone)]
#[cfg_attr(not(feature = "aws"), allow(dead_code))] // for `imgd sync` and the S3 cache
pub(crate) struct Bytes {
    inner: std::sync::Arc<BytesInner>,
}

#[cfg_attr(not(feature = "aws"), allow(dead_code))] // for `imgd sync` and the S3 cache
struct BytesInner {
    bar: Option<ProgressBar>,
    msg: String,
    total: u64,
    start: Instant,
    done: std::sync::atomic::AtomicU64,
    last_line: std::sync::Mutex<Instant>,
    quiet: bool,
}

impl Progress {
    #[cfg_attr(not(feature = "aws"), allow(dead_code))] // for `imgd sync` and the S3 cache
    pub(crate) fn bytes(&self, msg: &str, total: u64) -> Bytes {
        let bar = (self.tty && !self.quiet).then(|| {
            let b = ProgressBar::new(total);
            let style = "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}";
            b.set_style(
                ProgressStyle::with_template(style)
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
            );
            b.set_message(msg.to_string());
            b
        });
        let now = Instant::now();
        let inner = BytesInner {
            bar,
            msg: msg.to_string(),
            total,
            start: now,
            done: Default::default(),
            last_line: std::sync::Mutex::new(now),
            quiet: self.quiet,
        };
        Bytes { inner: std::sync::Arc::new(inner) }
    }
}

#[cfg_attr(not(feature = "aws"), allow(dead_code))] // for `imgd sync` and the S3 cache
impl Bytes {
    pub(crate) fn inc(&self, n: u64) {
        let i = &self.inner;
        let done = i.done.fetch_add(n, std::sync::atomic::Ordering::Relaxed) + n;
        match &i.bar {
            Some(b) => b.inc(n),
            None if !i.quiet => {
                let mut last = i.last_line.lock().unwrap_or_else(|p| p.into_inner());
                if last.elapsed() >= Duration::from_secs(10) {
                    *last = Instant::now();
                    tracing::info!("{}: {}", i.msg, rate(done, i.total, i.start.elapsed()));
                }
            }
            None => {}
        }
    }

    pub(crate) fn finish(&self) {
        let i = &self.inner;
        let done = i.done.load(std::sync::atomic::Ordering::Relaxed);
        let line = format!("{}: {}", i.msg, rate(done, i.total, i.start.elapsed()));
        match &i.bar {
            Some(b) => b.finish_with_message(line),
            None if !i.quiet => tracing::info!("{line}"),
            None => {}
        }
    }
}

#[cfg_attr(not(feature = "aws"), allow(dead_code))] // for `imgd sync` and the S3 cache
fn rate(done: u64, total: u64, took: Duration) -> String {
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    let per_sec = mib(done) / took.as_secs_f64().max(0.001);
    format!("{:.1} of {:.1} MiB, {per_sec:.1} MiB/s", mib(done), mib(total))
}

/// Byte progress for the AWS crate's transfers (uploads, snapshots).
#[cfg(feature = "aws")]
impl imgd_aws::Progress for Progress {
    fn start(&self, label: &str, total: u64) -> std::sync::Arc<dyn imgd_aws::Transfer> {
        std::sync::Arc::new(self.bytes(label, total))
    }
}

#[cfg(feature = "aws")]
impl imgd_aws::Transfer for Bytes {
    fn advance(&self, bytes: u64) {
        self.inc(bytes);
    }
    fn finish(&self) {
        Bytes::finish(self);
    }
}
