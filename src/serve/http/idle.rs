//! A connection that closes itself after a period with no bytes moving in
//! either direction (idle keep-alive connections, stalled clients).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

pub(crate) struct IdleTimeout<T> {
    inner: T,
    /// A `STEPS`th of the idle period: how often the timer fires.
    step: Duration,
    /// Bytes moved since the timer last fired.
    moved: bool,
    /// Times in a row the timer fired with no bytes moved since the last.
    quiet: u32,
    deadline: Pin<Box<Sleep>>,
}

/// A connection closes between `STEPS` and `STEPS + 1` steps after its last
/// byte: one period and at most a quarter more. A read or a write only sets
/// `moved`. Moving the timer at each of them read the clock and reset the
/// timer twice a keep-alive request, a clear part of a small request's CPU;
/// now the timer is moved once a step, whatever the traffic.
const STEPS: u32 = 4;

impl<T> IdleTimeout<T> {
    pub(crate) fn new(inner: T, idle: Duration) -> Self {
        let step = idle / STEPS;
        IdleTimeout { inner, step, moved: false, quiet: 0, deadline: Box::pin(tokio::time::sleep(step)) }
    }

    fn progress(&mut self) {
        self.moved = true;
    }

    /// Whether the timer has now fired `STEPS` times in a row with no bytes
    /// moved in between.
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        while self.deadline.as_mut().poll(cx).is_ready() {
            if std::mem::take(&mut self.moved) {
                self.quiet = 0;
            } else {
                self.quiet += 1;
            }
            if self.quiet >= STEPS {
                return true;
            }
            // From now, not from when it fired: a busy connection may be
            // polled here long after.
            self.deadline.as_mut().reset(Instant::now() + self.step);
        }
        false
    }

    /// Counts a write as progress, or turns a stall past the deadline into an error.
    fn wrote(&mut self, cx: &mut Context<'_>, r: Poll<io::Result<usize>>) -> Poll<io::Result<usize>> {
        match r {
            Poll::Ready(r) => {
                if matches!(r, Ok(n) if n > 0) {
                    self.progress();
                }
                Poll::Ready(r)
            }
            Poll::Pending if self.expired(cx) => Poll::Ready(Err(timed_out())),
            Poll::Pending => Poll::Pending,
        }
    }
}

use std::future::Future;

fn timed_out() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "connection idle")
}

impl<T: AsyncRead + Unpin> AsyncRead for IdleTimeout<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(r) => {
                if buf.filled().len() > before {
                    self.progress();
                }
                Poll::Ready(r)
            }
            Poll::Pending if self.expired(cx) => Poll::Ready(Err(timed_out())),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for IdleTimeout<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, data);
        self.wrote(cx, r)
    }

    // Forwarding vectored writes matters: without them hyper copies every body
    // chunk into a per-connection buffer instead of handing the shared chunks
    // to writev, and memory grows with the number of clients.
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.wrote(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Bytes moving keep a connection open past the idle period; silence
    /// closes it one period after the last byte, not sooner and at most a
    /// step (a quarter period) later.
    #[tokio::test]
    async fn only_a_whole_idle_period_without_bytes_closes_a_connection() {
        let idle = Duration::from_millis(300);
        let (near, mut far) = tokio::io::duplex(1 << 16);
        let mut conn = IdleTimeout::new(near, idle);
        let start = Instant::now();
        for _ in 0..8 {
            conn.write_all(b"x").await.unwrap();
            let mut b = [0u8; 1];
            far.read_exact(&mut b).await.unwrap();
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(start.elapsed() >= 2 * idle, "the loop outlasts the period");
        let quiet = Instant::now();
        let mut buf = [0u8; 8];
        let e = conn.read(&mut buf).await.unwrap_err();
        let waited = quiet.elapsed();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        // 100 ms of the period had passed since the last write.
        assert!(waited >= idle - Duration::from_millis(120), "closed after {waited:?}");
        assert!(waited <= idle + idle / STEPS + Duration::from_millis(50), "closed after {waited:?}");
    }
}
