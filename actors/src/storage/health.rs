//! Whether the node's writes are succeeding, as `/healthz` reports it.
//!
//! Every write to RocksDB reports its outcome here. A failure (a full
//! disk, an I/O error, or RocksDB refusing writes after a background
//! error of its own) marks storage as failing, with the reason, until a
//! write succeeds again. Nothing is acknowledged meanwhile: each writer
//! gets the error.

use std::sync::Mutex;

/// The state of storage writes, shared by every writer.
#[derive(Debug, Default)]
pub struct Health {
    /// The last failure's reason, while writes fail.
    failing: Mutex<Option<String>>,
}

impl Health {
    /// Records a write's outcome; logs when writes start or stop failing.
    pub fn wrote<E: std::fmt::Display>(&self, result: &Result<(), E>) {
        let mut failing = self
            .failing
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match (result, failing.is_some()) {
            (Ok(()), false) => {}
            (Ok(()), true) => {
                tracing::warn!("storage writes succeed again");
                *failing = None;
            }
            (Err(err), was_failing) => {
                let reason = err.to_string();
                if !was_failing {
                    tracing::error!(error = %reason, "storage writes are failing; nothing is acknowledged until they succeed");
                }
                *failing = Some(reason);
            }
        }
    }

    /// Why writes are failing, while they are.
    pub fn failing(&self) -> Option<String> {
        self.failing
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failing_from_a_failed_write_until_one_succeeds() {
        let health = Health::default();
        assert_eq!(health.failing(), None);
        health.wrote::<String>(&Ok(()));
        assert_eq!(health.failing(), None);
        health.wrote(&Err("No space left on device"));
        assert_eq!(health.failing().as_deref(), Some("No space left on device"));
        health.wrote(&Err("still no space"));
        assert_eq!(health.failing().as_deref(), Some("still no space"));
        health.wrote::<&str>(&Ok(()));
        assert_eq!(health.failing(), None);
    }
}
