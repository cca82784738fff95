//! Progress bars on stderr for the long phases of a run: the connect ramp
//! and publishing. indicatif draws nothing when stderr is not a terminal,
//! so logs and the `JSON` line stay clean. Publishing is drawn from the
//! run's counters a few times a second, so the message path pays nothing.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

/// A bar for opening `connections` connections; `inc` it per connection.
pub(crate) fn connecting(connections: usize) -> ProgressBar {
    bar(
        connections as u64,
        "connecting {bar:30} {pos}/{len} connections {elapsed}",
    )
}

/// Draws publishing progress until dropped: messages `sent` of `planned`,
/// and deliveries so far.
pub(crate) struct Publishing {
    bar: ProgressBar,
    ticker: tokio::task::JoinHandle<()>,
}

impl Publishing {
    pub(crate) fn start(
        planned: u64,
        sent: Arc<AtomicU64>,
        delivered: Arc<AtomicU64>,
    ) -> Publishing {
        let bar = bar(
            planned,
            "publishing {bar:30} {pos}/{len} sent, {msg} delivered {elapsed}/{duration}",
        );
        let ticker = tokio::spawn({
            let bar = bar.clone();
            async move {
                let mut every = tokio::time::interval(Duration::from_millis(200));
                loop {
                    every.tick().await;
                    bar.set_position(sent.load(Ordering::Relaxed));
                    bar.set_message(delivered.load(Ordering::Relaxed).to_string());
                }
            }
        });
        Publishing { bar, ticker }
    }
}

impl Drop for Publishing {
    fn drop(&mut self) {
        self.ticker.abort();
        self.bar.finish_and_clear();
    }
}

fn bar(len: u64, template: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    bar.set_style(ProgressStyle::with_template(template).expect("a valid template"));
    bar
}
