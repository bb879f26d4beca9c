//! Time: short durations, bounded waits, and letting spawned tasks run.

use std::{future::Future, time::Duration};

/// Lets the driver (and any other task) run until everything is idle, without moving the
/// paused clock.
pub async fn settle() {
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
}

/// Awaits `future` for at most an hour of (paused) time; panics naming `what` if it is still
/// pending then.
///
/// The timer is polled first: when the hour has passed, the test fails even if the future
/// would be ready on one more poll. So a future that misses a wake-up (it is ready, but nobody
/// woke its task) fails the test instead of passing an hour late, which a future-first select
/// would hide.
pub async fn within_an_hour<F: Future>(what: &str, future: F) -> F::Output {
    tokio::select! {
        biased;
        () = tokio::time::sleep(Duration::from_secs(3600)) => {
            panic!("{what} is still pending after an hour")
        }
        output = future => output,
    }
}

pub fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

pub fn ms(ms: u64) -> Duration {
    Duration::from_millis(ms)
}
