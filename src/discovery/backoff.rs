//! The retry delay of a catalog's watch (etcd, DNS): a [`RetryPolicy`] asked after each failure
//! of the watch, with the failures in a row counted in its [`RetryContext`].

use std::time::Duration;

use crate::retry::{MAX_RETRY_DELAY, RetryContext, RetryPolicy, SharedPolicy};

/// The delay used for one retry when the policy panics.
const AFTER_A_PANIC: Duration = Duration::from_secs(10);

/// A watch's failures in a row, and the policy that turns them into delays.
pub(crate) struct WatchBackoff {
    policy: SharedPolicy,
    /// Failures in a row since the watch last worked.
    failures: u32,
}

impl WatchBackoff {
    pub(crate) fn new(policy: SharedPolicy) -> Self {
        Self {
            policy,
            failures: 0,
        }
    }

    /// Counts one more failure in a row; the delay before the next attempt, `None` if the
    /// policy gives up.
    ///
    /// As the layer's driver does, the delay after a failure is the policy's delay for the
    /// failures in a row *before* it: the first retry waits the policy's delay for 0
    /// failures (an [`Exponential`](crate::retry::Exponential)'s initial delay), the second
    /// its delay for 1, and so on. The delay is used as is (no jitter), at most
    /// [`MAX_RETRY_DELAY`]; a panic in the policy is caught and logged, and that retry waits
    /// 10 s.
    pub(crate) fn failed(&mut self, watch: &str) -> Option<Duration> {
        let context = RetryContext::new(self.failures, None, None);
        self.failures = self.failures.saturating_add(1);
        let policy = &self.policy;
        let delay = match crate::panic::catch(|| policy.next_delay(&context)) {
            Ok(delay) => delay?,
            Err(panic) => {
                tracing::warn!(
                    watch,
                    %panic,
                    delay = ?AFTER_A_PANIC,
                    "the watch's retry policy panicked; using the default delay"
                );
                AFTER_A_PANIC
            }
        };
        Some(delay.min(MAX_RETRY_DELAY))
    }

    /// The watch works again: the count starts over.
    pub(crate) fn succeeded(&mut self) {
        self.failures = 0;
    }

    /// Failures in a row so far.
    pub(crate) fn failures(&self) -> u32 {
        self.failures
    }
}

/// A policy as a catalog keeps it.
pub(crate) fn shared(policy: impl RetryPolicy) -> SharedPolicy {
    std::sync::Arc::new(policy)
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::retry::{Exponential, policy_fn};

    #[test]
    fn each_failure_counts_and_a_success_starts_over() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let policy = policy_fn({
            let seen = seen.clone();
            move |context: &RetryContext<'_>| {
                seen.lock().unwrap().push(context.consecutive_failures());
                Some(Duration::from_millis(u64::from(
                    context.consecutive_failures(),
                )))
            }
        });
        let mut backoff = WatchBackoff::new(shared(policy));
        let delays: Vec<_> = (0..3).map(|_| backoff.failed("test").unwrap()).collect();
        assert_eq!(delays, [0, 1, 2].map(Duration::from_millis));
        assert_eq!(backoff.failures(), 3);
        backoff.succeeded();
        assert_eq!(backoff.failed("test"), Some(Duration::ZERO));
        assert_eq!(*seen.lock().unwrap(), [0, 1, 2, 0]);
    }

    #[test]
    fn the_first_retry_waits_the_initial_delay_and_delays_are_clamped() {
        let mut backoff = WatchBackoff::new(shared(Exponential::new(
            Duration::from_millis(100),
            2.0,
            Duration::from_secs(1),
        )));
        let delays: Vec<_> = (0..6).map(|_| backoff.failed("test").unwrap()).collect();
        assert_eq!(
            delays,
            [100, 200, 400, 800, 1000, 1000].map(Duration::from_millis)
        );
        let mut huge = WatchBackoff::new(shared(|| Duration::MAX));
        assert_eq!(huge.failed("test"), Some(MAX_RETRY_DELAY));
    }

    #[test]
    fn a_policy_that_gives_up_or_panics() {
        let mut gives_up = WatchBackoff::new(shared(Exponential::grpc().give_up_after(1)));
        assert!(gives_up.failed("test").is_some());
        assert_eq!(gives_up.failed("test"), None);
        let mut panics = WatchBackoff::new(shared(policy_fn(
            |_: &RetryContext<'_>| -> Option<Duration> { panic!("boom") },
        )));
        assert_eq!(panics.failed("test"), Some(AFTER_A_PANIC));
    }
}
