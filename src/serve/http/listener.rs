//! Accepting connections: the connection limit (503 with Retry-After beyond
//! it, never a hang), header and idle timeouts, and the drain on shutdown.

use super::idle::IdleTimeout;
use super::metrics::Metrics;
use super::respond::Body;
use super::workers::Workers;
use hyper_util::rt::TokioIo;
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// Threads reading artifact chunks at once, at most, over all workers: past
/// a few per core they add no throughput, and a thousand clients reading at
/// once made 318 of them, a stack and a malloc arena each (the bench's
/// 1,000-connection peak RSS: 72.8 MiB; 64.7 and 68.3 MiB with this bound,
/// at the same or better MB/s).
const READ_THREADS: usize = 16;

/// Descriptors kept back from connections: the listener, logs, a reload's
/// store scan (64), and a socket for each TFTP transfer the PXE side may
/// run at once (128, `pxe::tftp::TFTP_MAX_TRANSFERS`), so HTTP keeps
/// accepting whatever TFTP clients do.
pub(crate) const RESERVED_FDS: u64 = 64 + 128;

/// Raises the open-files limit to its hard limit and returns how many
/// connections fit in it: each may hold a socket and an open artifact. With
/// fewer than `wanted`, the excess would wait in the kernel's backlog while
/// accept fails; capped, they get a 503 instead.
pub fn connections_that_fit(wanted: usize) -> usize {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut lim = getrlimit(Resource::Nofile);
    if let Some(hard) = lim.maximum {
        if lim.current.is_some_and(|c| c < hard) {
            lim.current = Some(hard);
            if let Err(e) = setrlimit(Resource::Nofile, lim) {
                tracing::warn!("cannot raise the open-files limit to {hard}: {e}");
            }
        }
    }
    let soft = getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX);
    let fit = (soft.saturating_sub(RESERVED_FDS) / 2).max(1);
    let n = wanted.min(usize::try_from(fit).unwrap_or(usize::MAX));
    if n < wanted {
        // Each connection may hold two descriptors: its socket and the
        // artifact file it is sending.
        let needed = (wanted as u64).saturating_mul(2).saturating_add(RESERVED_FDS);
        tracing::warn!(
            "--max-connections {wanted} needs up to {needed} open files (a socket and an artifact file per \
             connection, plus {RESERVED_FDS} kept back), but the open-files limit is {soft}: serving at most {n} \
             connections at once (raise the limit with `ulimit -n` or systemd's LimitNOFILE=)"
        );
    }
    n
}

/// Answers 503 with Retry-After on a connection beyond the limit, then closes it.
async fn reject(mut stream: tokio::net::TcpStream, retry_after: u32) {
    use tokio::io::AsyncWriteExt;
    let msg = format!(
        "HTTP/1.1 503 Service Unavailable\r\nRetry-After: {retry_after}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    let _ = tokio::time::timeout(Duration::from_secs(2), stream.write_all(msg.as_bytes())).await;
    let _ = stream.shutdown().await;
}

/// The listener's limits, from `imgd serve`'s options.
#[derive(Debug, Clone)]
pub(crate) struct Limits {
    pub max_connections: usize,
    /// Threads serving connections (0: one per core).
    pub threads: usize,
    /// Seconds a client beyond the limit is told to wait.
    pub retry_after: u32,
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub keep_alive: bool,
    /// How long shutdown waits for in-flight transfers.
    pub drain: Duration,
}

/// Decrements the open-connection gauge when a connection task ends.
struct ConnGuard(Arc<Metrics>);

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.0.active_connections.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The accept loop's name among the server's parts (`/healthz`, `/metrics`).
const PART: &str = "http";

/// The accept loop's health. Accept failing for a second or more (out of
/// descriptors, say) shows the part down, logged at error level, until an
/// accept succeeds; a panic while setting a connection up shows it down
/// for a backoff (100 ms, doubling to 30 s while panics follow each other).
#[derive(Default)]
struct AcceptHealth {
    failing_since: Option<std::time::Instant>,
    shown_down: bool,
    backoff: Duration,
    last_panic: Option<std::time::Instant>,
}

impl AcceptHealth {
    fn failed(&mut self, metrics: &Metrics, e: &std::io::Error, now: std::time::Instant) {
        let since = *self.failing_since.get_or_insert(now);
        if !self.shown_down && now.duration_since(since) >= Duration::from_secs(1) {
            tracing::error!(part = PART, "accept has failed for a second: {e}; still trying");
            metrics.part_down(PART, &format!("accept: {e}"));
            self.shown_down = true;
        }
    }

    fn accepted(&mut self, metrics: &Metrics) {
        self.failing_since = None;
        if std::mem::take(&mut self.shown_down) {
            tracing::info!(part = PART, "accepting again");
            metrics.part_up(PART);
        }
    }

    /// How long to pause before accepting again (back to 100 ms after a
    /// minute without a panic, as the supervisor does).
    fn panicked(&mut self, metrics: &Metrics, why: &str, now: std::time::Instant) -> Duration {
        if self.last_panic.is_some_and(|t| now.duration_since(t) > Duration::from_secs(60)) {
            self.backoff = Duration::ZERO;
        }
        self.last_panic = Some(now);
        self.backoff = (self.backoff * 2).clamp(Duration::from_millis(100), Duration::from_secs(30));
        tracing::error!(part = PART, "{PART} stopped ({why}); accepting again in {} ms", self.backoff.as_millis());
        metrics.part_down(PART, why);
        self.backoff
    }
}

/// One accepted connection: over the limit, a 503; else served by hyper
/// in a task of its own, watched by the graceful shutdown.
fn start_connection<H, F>(
    stream: tokio::net::TcpStream,
    peer: std::net::SocketAddr,
    limits: &Limits,
    metrics: &Arc<Metrics>,
    handle: &H,
    graceful: &hyper_util::server::graceful::GracefulShutdown,
) where
    H: Fn(hyper::Request<hyper::body::Incoming>, std::net::SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = hyper::Response<Body>> + Send + 'static,
{
    // Registered with the runtime it will be served on (the caller entered it).
    let stream = match stream.into_std().and_then(tokio::net::TcpStream::from_std) {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!(%peer, "connection: {e}");
            return;
        }
    };
    let open = metrics.active_connections.load(Ordering::Relaxed);
    if open >= limits.max_connections as i64 {
        metrics.rejected_connections.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(reject(stream, limits.retry_after));
        return;
    }
    let _ = stream.set_nodelay(true);
    metrics.active_connections.fetch_add(1, Ordering::Relaxed);
    let guard = ConnGuard(metrics.clone());
    let handle = handle.clone();
    let service = hyper::service::service_fn(move |req| {
        let answer = handle(req, peer);
        async move { Ok::<_, std::convert::Infallible>(answer.await) }
    });
    // The header timeout is kept by IdleTimeout too, not hyper's timer (see idle.rs).
    let io = TokioIo::new(IdleTimeout::new(stream, limits.idle_timeout, limits.header_timeout));
    let conn = hyper::server::conn::http1::Builder::new()
        .writev(true)
        // Hyper queues body frames until this much is buffered
        // (400 KiB by default): at one chunk, a slow client pins
        // about one chunk, and no measurable throughput is lost.
        .max_buf_size(super::chunks::CHUNK as usize)
        .keep_alive(limits.keep_alive)
        // Hyper otherwise reads the socket while each request is in flight,
        // to see a client hang up early. That read makes room in a buffer
        // the request still points into, so every request allocated a new
        // 8 KiB buffer and freed the old: a malloc the two workers contended
        // for (half of all futex calls under load). A client that hangs up
        // is still seen: writing to it fails, and the stall timer ends it.
        // And a client that shuts its sending side after its request now
        // gets the answer (hyper took that for a hang-up).
        .half_close(true)
        .serve_connection(io, service);
    let conn = graceful.watch(conn);
    tokio::spawn(async move {
        let _guard = guard;
        if let Err(e) = conn.await {
            tracing::debug!(%peer, "connection: {e}");
        }
    });
}

/// Accepts connections until `shutdown` resolves, then stops accepting and
/// waits for in-flight requests (downloads included) up to the drain
/// deadline. `handle` answers each request; this room only carries it.
pub(crate) async fn serve<H, F>(
    listener: TcpListener,
    limits: Limits,
    metrics: Arc<Metrics>,
    handle: H,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()>
where
    H: Fn(hyper::Request<hyper::body::Incoming>, std::net::SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = hyper::Response<Body>> + Send + 'static,
{
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let threads = if limits.threads == 0 { Workers::per_core() } else { limits.threads };
    let workers = Workers::start(threads, READ_THREADS.div_ceil(threads))?;
    let mut health = AcceptHealth::default();
    metrics.part_up(PART);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(x) => x,
                    Err(e) => {
                        // Out of file descriptors and the like: back off, keep serving.
                        health.failed(&metrics, &e, std::time::Instant::now());
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                health.accepted(&metrics);
                // A bug in setting one connection up costs that connection
                // (logged, the part shown down a moment), never the loop.
                let start = || {
                    let _on = workers.next().enter();
                    start_connection(stream, peer, &limits, &metrics, &handle, &graceful)
                };
                if let Err(p) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(start)) {
                    let why = format!("it panicked: {}", super::supervise::panic_text(p));
                    let pause = health.panicked(&metrics, &why, std::time::Instant::now());
                    tokio::time::sleep(pause).await;
                    metrics.part_up(PART);
                }
            }
            _ = &mut shutdown => break,
        }
    }
    drop(listener);
    let open = metrics.active_transfers.load(Ordering::Relaxed);
    tracing::info!("shutting down: draining {open} transfer(s), up to {}s", limits.drain.as_secs());
    tokio::select! {
        _ = graceful.shutdown() => tracing::info!("drained"),
        _ = tokio::time::sleep(limits.drain) => tracing::warn!("drain deadline reached; closing remaining connections"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn accept_failing_for_a_second_shows_http_down_until_one_succeeds() {
        let metrics = Metrics::default();
        metrics.part_up(PART);
        let mut h = AcceptHealth::default();
        let e = std::io::Error::from_raw_os_error(24); // EMFILE
        let t0 = Instant::now();
        h.failed(&metrics, &e, t0);
        h.failed(&metrics, &e, t0 + Duration::from_millis(900));
        assert!(metrics.parts_down().is_empty(), "a moment's failure is not an outage");
        h.failed(&metrics, &e, t0 + Duration::from_millis(1100));
        let down = metrics.parts_down();
        assert_eq!(down.len(), 1);
        assert_eq!(down[0].0, "http");
        assert!(down[0].1.starts_with("accept: Too many open files"), "{down:?}");
        h.accepted(&metrics);
        assert!(metrics.parts_down().is_empty());
        assert_eq!(metrics.parts(), [("http", None, 1)]);
        // Failing again starts a new second.
        h.failed(&metrics, &e, t0 + Duration::from_secs(5));
        assert!(metrics.parts_down().is_empty());
    }

    #[test]
    fn panics_back_off_doubling_to_thirty_seconds_and_start_over_after_a_quiet_minute() {
        let metrics = Metrics::default();
        let mut h = AcceptHealth::default();
        let t0 = Instant::now();
        let pauses: Vec<u128> = (0..12).map(|_| h.panicked(&metrics, "it panicked: x", t0).as_millis()).collect();
        assert_eq!(pauses[..4], [100, 200, 400, 800]);
        assert_eq!(*pauses.last().unwrap(), 30_000);
        assert_eq!(metrics.parts_down(), [("http", "it panicked: x".to_string())]);
        // A minute without a panic: back to the first pause.
        assert_eq!(h.panicked(&metrics, "it panicked: y", t0 + Duration::from_secs(61)).as_millis(), 100);
    }
}
