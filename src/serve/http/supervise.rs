//! The background parts of `imgd serve` (proxyDHCP, TFTP) kept running. A
//! part that stops, by an error or a panic in its task, is logged at error
//! level, shown down on `/healthz` and in `/metrics`, and started again
//! with backoff (100 ms doubling to 30 s; back to 100 ms after a minute up).

use super::metrics::Metrics;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Runs `start()`'s part in a task of its own until the process ends,
/// restarting it whenever it stops.
pub async fn supervise<F, Fut, E>(part: &'static str, metrics: Arc<Metrics>, start: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), E>> + Send + 'static,
    E: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
{
    supervise_from(part, metrics, start, FIRST_BACKOFF).await
}

async fn supervise_from<F, Fut, E>(part: &'static str, metrics: Arc<Metrics>, mut start: F, first: Duration)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), E>> + Send + 'static,
    E: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
{
    let mut backoff = first;
    loop {
        metrics.part_up(part);
        let began = Instant::now();
        let why = match tokio::spawn(start()).await {
            Ok(Ok(())) => "it returned".to_string(),
            Ok(Err(e)) => {
                let e: Box<dyn std::error::Error + Send + Sync> = e.into();
                crate::model::Chain(&*e).to_string()
            }
            Err(e) if e.is_panic() => format!("it panicked: {}", panic_text(e.into_panic())),
            Err(e) => e.to_string(),
        };
        if began.elapsed() > Duration::from_secs(60) {
            backoff = first;
        }
        tracing::error!(part, "{part} stopped ({why}); starting it again in {} ms", backoff.as_millis());
        metrics.part_down(part, &why);
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// What a panic said, for the log and `/healthz`.
pub(super) fn panic_text(p: Box<dyn std::any::Any + Send>) -> String {
    match p.downcast::<String>() {
        Ok(s) => *s,
        Err(p) => p.downcast_ref::<&str>().map_or_else(|| "?".into(), |s| s.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// Polls `cond` every 10 ms for at most 10 s.
    async fn until(what: &str, cond: impl Fn() -> bool) {
        let end = Instant::now() + Duration::from_secs(10);
        while !cond() {
            assert!(Instant::now() < end, "never: {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_part_that_fails_or_panics_is_shown_down_and_started_again() {
        let metrics = Arc::new(Metrics::default());
        let runs = Arc::new(AtomicU32::new(0));
        let (m, r) = (metrics.clone(), runs.clone());
        // Backoff of 1 s, then 2 s: each down state lasts long enough to see.
        let task = tokio::spawn(supervise_from(
            "tftp",
            m,
            move || {
                let r = r.clone();
                async move {
                    match r.fetch_add(1, Ordering::SeqCst) {
                        0 => Err(std::io::Error::other("socket gone")),
                        1 => panic!("a bug in one packet"),
                        _ => std::future::pending().await,
                    }
                }
            },
            Duration::from_secs(1),
        ));
        until("down after the error", || metrics.parts_down() == [("tftp", "socket gone".to_string())]).await;
        until("down after the panic", || {
            metrics.parts_down().first().is_some_and(|(_, why)| why.contains("a bug in one packet"))
        })
        .await;
        until("up for good", || metrics.parts_down().is_empty() && runs.load(Ordering::SeqCst) == 3).await;
        let text = metrics.render("", &crate::serve::http::chunks::ChunkCache::new(1 << 20));
        assert!(text.contains("imgd_part_restarts_total{part=\"tftp\"} 2"), "{text}");
        assert!(text.contains("imgd_part_up{part=\"tftp\"} 1"), "{text}");
        task.abort();
    }
}
