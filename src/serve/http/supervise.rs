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
pub async fn supervise<F, Fut>(part: &'static str, metrics: Arc<Metrics>, mut start: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let mut backoff = FIRST_BACKOFF;
    loop {
        metrics.part_up(part);
        let began = Instant::now();
        let why = match tokio::spawn(start()).await {
            Ok(Ok(())) => "it returned".to_string(),
            Ok(Err(e)) => format!("{e:#}"),
            Err(e) if e.is_panic() => format!("it panicked: {}", panic_text(e.into_panic())),
            Err(e) => e.to_string(),
        };
        if began.elapsed() > Duration::from_secs(60) {
            backoff = FIRST_BACKOFF;
        }
        tracing::error!(part, "{part} stopped ({why}); starting it again in {} ms", backoff.as_millis());
        metrics.part_down(part, &why);
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

fn panic_text(p: Box<dyn std::any::Any + Send>) -> String {
    match p.downcast::<String>() {
        Ok(s) => *s,
        Err(p) => p.downcast_ref::<&str>().map_or_else(|| "?".into(), |s| s.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test(start_paused = true)]
    async fn a_part_that_fails_or_panics_is_shown_down_and_started_again() {
        let metrics = Arc::new(Metrics::default());
        let runs = Arc::new(AtomicU32::new(0));
        let (m, r) = (metrics.clone(), runs.clone());
        let task = tokio::spawn(supervise("tftp", m, move || {
            let r = r.clone();
            async move {
                match r.fetch_add(1, Ordering::SeqCst) {
                    0 => anyhow::bail!("socket gone"),
                    1 => panic!("a bug in one packet"),
                    _ => std::future::pending().await,
                }
            }
        }));
        // After the error: down, then the panic: down, then up for good.
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(metrics.parts_down(), [("tftp", "socket gone".to_string())]);
        tokio::time::sleep(Duration::from_millis(100)).await;
        let down = metrics.parts_down();
        assert!(down.len() == 1 && down[0].1.contains("a bug in one packet"), "{down:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert!(metrics.parts_down().is_empty());
        assert_eq!(runs.load(Ordering::SeqCst), 3);
        let text = metrics.render("", &crate::serve::http::chunks::ChunkCache::new(1 << 20));
        assert!(text.contains("imgd_part_restarts_total{part=\"tftp\"} 2"), "{text}");
        assert!(text.contains("imgd_part_up{part=\"tftp\"} 1"), "{text}");
        task.abort();
    }
}
