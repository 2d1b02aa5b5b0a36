//! The progress bar of a run, drawn on stderr, and only when stderr is a terminal: piped
//! output gets the report alone. Hidden, every method does nothing.

use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::Stop;

/// How often the bar is redrawn during the timed phase.
pub const REFRESH: Duration = Duration::from_millis(200);

/// A progress bar, or nothing. Clones draw the same bar.
#[derive(Debug, Clone)]
pub struct Progress {
    bar: Option<ProgressBar>,
}

impl Progress {
    /// A bar on stderr if `shown`, else one that draws nothing.
    pub fn new(shown: bool) -> Progress {
        let bar = shown.then(|| ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr()));
        Progress { bar }
    }

    /// A bar that draws nothing.
    pub fn hidden() -> Progress {
        Progress { bar: None }
    }

    /// Shows the loading of `keys` keys before the clock starts.
    pub fn loading(&self, keys: u64) {
        if let Some(bar) = &self.bar {
            bar.set_style(style("loading keys {bar:40} {pos}/{len}"));
            bar.set_length(keys);
            bar.set_position(0);
        }
    }

    /// Shows the creation of the `keys` znodes of a ZooKeeper key space before the clock starts;
    /// [`loaded`](Self::loaded) counts them.
    pub fn creating(&self, keys: u64) {
        if let Some(bar) = &self.bar {
            bar.set_style(style("creating znodes {bar:40} {pos}/{len}"));
            bar.set_length(keys);
            bar.set_position(0);
        }
    }

    /// Shows the creation of `sessions` sessions before the clock starts; [`loaded`](Self::loaded)
    /// counts them.
    pub fn sessions(&self, sessions: u64) {
        if let Some(bar) = &self.bar {
            bar.set_style(style("creating sessions {bar:40} {pos}/{len}"));
            bar.set_length(sessions);
            bar.set_position(0);
        }
    }

    /// Shows the opening of `watches` watches before the clock starts; [`loaded`](Self::loaded)
    /// counts them.
    pub fn watches(&self, watches: u64) {
        if let Some(bar) = &self.bar {
            bar.set_style(style("opening watches {bar:40} {pos}/{len}"));
            bar.set_length(watches);
            bar.set_position(0);
        }
    }

    /// Counts `keys` more keys loaded.
    pub fn loaded(&self, keys: u64) {
        if let Some(bar) = &self.bar {
            bar.inc(keys);
        }
    }

    /// Switches to the timed phase: the bar fills with operations (`--ops`) or time
    /// (`--duration`, in milliseconds).
    pub fn timing(&self, stop: Stop) {
        if let Some(bar) = &self.bar {
            let length = match stop {
                Stop::Ops(ops) => ops,
                Stop::Duration(duration) => duration.as_millis().try_into().unwrap_or(u64::MAX),
            };
            bar.set_style(style("{elapsed:>4} {bar:40} {msg}"));
            bar.set_length(length);
            bar.set_position(0);
        }
    }

    /// Shows the counts so far, `elapsed` into the timed phase of a run that ends at `stop`.
    pub fn update(&self, stop: Stop, succeeded: u64, failed: u64, elapsed: Duration) {
        let Some(bar) = &self.bar else { return };
        let position = match stop {
            Stop::Ops(_) => succeeded + failed,
            Stop::Duration(_) => elapsed.as_millis().try_into().unwrap_or(u64::MAX),
        };
        bar.set_position(position.min(bar.length().unwrap_or(u64::MAX)));
        let rate = succeeded as f64 / elapsed.as_secs_f64().max(1e-3);
        bar.set_message(format!("{succeeded} ok, {failed} failed, {rate:.0} ops/s"));
    }

    /// Removes the bar, so that the report stands alone.
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

fn style(template: &str) -> ProgressStyle {
    // The templates are constants of this file; a bad one falls back to the default style.
    ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar())
}
