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

    pub fn quiet() -> Self {
        Progress { tty: false, quiet: true }
    }

    pub fn step(&self, msg: &str) -> Step {
        let bar = if self.tty && !self.quiet {
            let b = ProgressBar::new_spinner();
            b.set_style(ProgressStyle::with_template("{spinner} {msg} {elapsed}").expect("valid template"));
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
}

pub struct Step {
    bar: Option<ProgressBar>,
    msg: String,
    start: Instant,
    quiet: bool,
}

impl Step {
    pub fn done(self) {
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
