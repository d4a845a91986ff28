//! Accepting connections: the connection limit (503 with Retry-After beyond
//! it, never a hang), header and idle timeouts, and the drain on shutdown.

use super::idle::IdleTimeout;
use super::server::Server;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// Descriptors kept back from connections: the listener, artifact files being
/// read, logs, a reload's store scan.
const RESERVED_FDS: u64 = 64;

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
        tracing::warn!(
            "--max-connections {wanted} does not fit in the open-files limit ({soft}); serving at most {n} connections at once"
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

/// Decrements the open-connection gauge when a connection task ends.
struct ConnGuard(Arc<Server>);

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.0.metrics.active_connections.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Accepts connections until `shutdown` resolves, then stops accepting and
/// waits for in-flight requests (downloads included) up to the drain deadline.
pub async fn serve(
    listener: TcpListener,
    server: Arc<Server>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(x) => x,
                    Err(e) => {
                        // Out of file descriptors and the like: back off, keep serving.
                        tracing::warn!("accept: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let open = server.metrics.active_connections.load(Ordering::Relaxed);
                if open >= server.opts.max_connections as i64 {
                    server.metrics.rejected_connections.fetch_add(1, Ordering::Relaxed);
                    tokio::spawn(reject(stream, server.opts.retry_after));
                    continue;
                }
                let _ = stream.set_nodelay(true);
                server.metrics.active_connections.fetch_add(1, Ordering::Relaxed);
                let guard = ConnGuard(server.clone());
                let srv = server.clone();
                let service = hyper::service::service_fn(move |req| {
                    let srv = srv.clone();
                    async move { Ok::<_, std::convert::Infallible>(srv.handle(req, peer).await) }
                });
                let io = TokioIo::new(IdleTimeout::new(stream, server.opts.idle_timeout));
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(server.opts.header_timeout)
                    .writev(true)
                    // Hyper queues body frames until this much is buffered
                    // (400 KiB by default): at one chunk, a slow client pins
                    // about one chunk, and no measurable throughput is lost.
                    .max_buf_size(crate::serve::chunks::CHUNK as usize)
                    .keep_alive(server.opts.keep_alive)
                    .serve_connection(io, service);
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    let _guard = guard;
                    if let Err(e) = conn.await {
                        tracing::debug!(%peer, "connection: {e}");
                    }
                });
            }
            _ = &mut shutdown => break,
        }
    }
    drop(listener);
    let open = server.metrics.active_transfers.load(Ordering::Relaxed);
    tracing::info!("shutting down: draining {open} transfer(s), up to {}s", server.opts.drain.as_secs());
    tokio::select! {
        _ = graceful.shutdown() => tracing::info!("drained"),
        _ = tokio::time::sleep(server.opts.drain) => tracing::warn!("drain deadline reached; closing remaining connections"),
    }
    Ok(())
}
