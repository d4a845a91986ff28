//! A connection that closes itself when it stalls: no bytes moving in
//! either direction for the idle period (a client that stopped reading or
//! sending), or nothing to answer for the header period (a request head
//! that never completes, a keep-alive connection with no next request).
//!
//! The header rule was hyper's `header_read_timeout`, which made, armed and
//! dropped a timer for every request: with it, a small keep-alive request
//! used ~15% more CPU (alternating `wrk` runs, 9.2-9.6 against 7.3-8.1 us).
//! Here one timer per connection fires every step, and a read or a write
//! only sets a flag.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

pub(crate) struct IdleTimeout<T> {
    inner: T,
    /// How often the timer fires: a `STEPS`th of the shorter period.
    step: Duration,
    /// Steps without bytes moving, and without an answer, that close it.
    idle_steps: u32,
    head_steps: u32,
    /// Since the timer last fired: bytes moved; bytes written.
    moved: bool,
    wrote: bool,
    /// The last write waited for the client to read: an answer under way.
    write_blocked: bool,
    /// Times in a row the timer fired with no bytes moved, and with nothing
    /// written (and no write waiting).
    quiet: u32,
    unanswered: u32,
    deadline: Pin<Box<Sleep>>,
}

/// A rule closes a connection between its period and a step after: at most
/// a quarter period late.
const STEPS: u32 = 4;

impl<T> IdleTimeout<T> {
    /// `idle`: no bytes moving; `header`: nothing written, while not waiting
    /// for the client to read what was.
    pub(crate) fn new(inner: T, idle: Duration, header: Duration) -> Self {
        let step = (idle.min(header) / STEPS).max(Duration::from_millis(1));
        let steps = |d: Duration| d.as_nanos().div_ceil(step.as_nanos()).min(u32::MAX.into()) as u32;
        IdleTimeout {
            inner,
            step,
            idle_steps: steps(idle),
            head_steps: steps(header),
            moved: false,
            wrote: false,
            write_blocked: false,
            quiet: 0,
            unanswered: 0,
            deadline: Box::pin(tokio::time::sleep(step)),
        }
    }

    /// Whether a rule's period has now passed: the timer fired that many
    /// steps in a row with no bytes moved, or with nothing answered.
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        while self.deadline.as_mut().poll(cx).is_ready() {
            let moved = std::mem::take(&mut self.moved);
            let answering = std::mem::take(&mut self.wrote) || self.write_blocked;
            self.quiet = if moved { 0 } else { self.quiet + 1 };
            self.unanswered = if answering { 0 } else { self.unanswered + 1 };
            if self.quiet >= self.idle_steps || self.unanswered >= self.head_steps {
                return true;
            }
            // From now, not from when it fired: a busy connection may be
            // polled here long after.
            self.deadline.as_mut().reset(Instant::now() + self.step);
        }
        false
    }

    /// Counts a write as progress, or turns a stall past a period into an error.
    fn wrote(&mut self, cx: &mut Context<'_>, r: Poll<io::Result<usize>>) -> Poll<io::Result<usize>> {
        match r {
            Poll::Ready(r) => {
                self.write_blocked = false;
                if matches!(r, Ok(n) if n > 0) {
                    self.moved = true;
                    self.wrote = true;
                }
                Poll::Ready(r)
            }
            Poll::Pending => {
                self.write_blocked = true;
                if self.expired(cx) {
                    Poll::Ready(Err(timed_out()))
                } else {
                    Poll::Pending
                }
            }
        }
    }
}

use std::future::Future;

fn timed_out() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "connection stalled")
}

impl<T: AsyncRead + Unpin> AsyncRead for IdleTimeout<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(r) => {
                if buf.filled().len() > before {
                    self.moved = true;
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
        let mut conn = IdleTimeout::new(near, idle, idle);
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

    /// A request head sent a byte at a time keeps bytes moving but gets no
    /// answer: closed one header period after it began.
    #[tokio::test]
    async fn a_head_that_never_completes_is_closed_after_the_header_period() {
        let (idle, header) = (Duration::from_secs(5), Duration::from_millis(400));
        let (near, mut far) = tokio::io::duplex(1 << 16);
        let mut conn = IdleTimeout::new(near, idle, header);
        let start = Instant::now();
        let trickle = tokio::spawn(async move {
            for _ in 0..40 {
                if far.write_all(b"G").await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        let mut buf = [0u8; 8];
        let e = loop {
            match conn.read(&mut buf).await {
                Ok(0) => panic!("the client's side closed first"),
                Ok(_) => continue,
                Err(e) => break e,
            }
        };
        let waited = start.elapsed();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert!(waited >= header, "closed after {waited:?}");
        assert!(waited <= header + header / STEPS + Duration::from_millis(100), "closed after {waited:?}");
        trickle.abort();
    }

    /// An answer waiting for a slow client to read is not a stall of the
    /// header rule: only a whole idle period without bytes moving closes it.
    #[tokio::test]
    async fn an_answer_the_client_is_slow_to_read_waits_for_the_idle_period() {
        let (idle, header) = (Duration::from_millis(900), Duration::from_millis(200));
        let (near, far) = tokio::io::duplex(64);
        let mut conn = IdleTimeout::new(near, idle, header);
        let start = Instant::now();
        let e = conn.write_all(&[0u8; 4096]).await.unwrap_err();
        let waited = start.elapsed();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert!(waited >= idle, "closed after {waited:?}");
        assert!(waited <= idle + idle / STEPS + Duration::from_millis(100), "closed after {waited:?}");
        drop(far);
    }
}
