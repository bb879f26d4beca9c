//! Time: short durations, bounded waits, and letting spawned tasks run.

use std::{future::Future, time::Duration};

/// A generous bound, in real time, on anything that should happen "at once" on loopback.
pub const SOON: Duration = Duration::from_secs(3);

/// Yields 50 times, without moving the paused clock, so that spawned tasks (the driver) get
/// to run. It waits for nothing in particular: where the test awaits a condition, use
/// [`yield_until`].
pub async fn let_tasks_run() {
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
}

/// Yields until `done` holds, without moving the paused clock; panics naming `what` after
/// 10,000 yields.
pub async fn yield_until(what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..10_000 {
        if done() {
            return;
        }
        tokio::task::yield_now().await;
    }
    assert!(done(), "{what} does not hold after 10,000 yields");
}

/// Awaits `future` for at most `bound`; panics naming `what` if it is still pending then.
///
/// The timer is polled first: when `bound` has passed, the test fails even if the future
/// would be ready on one more poll. So a future that misses a wake-up (it is ready, but nobody
/// woke its task) fails the test instead of passing late, which a future-first select (or
/// `tokio::time::timeout`) would hide.
pub async fn within<F: Future>(bound: Duration, what: &str, future: F) -> F::Output {
    tokio::select! {
        biased;
        () = tokio::time::sleep(bound) => panic!("{what} did not finish within {bound:?}"),
        output = future => output,
    }
}

/// [`within`] an hour: for paused time, where an hour passes at once when all is idle.
pub async fn within_an_hour<F: Future>(what: &str, future: F) -> F::Output {
    within(secs(3600), what, future).await
}

pub fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

pub fn ms(ms: u64) -> Duration {
    Duration::from_millis(ms)
}
