//! [`Retry`]: the retry state of one driver, in one place: the policy (with the layer's
//! jitter), the streak it is told about (failures in a row, the last connection's life, the
//! last error), and the delay it chose for the next attempt.

use std::time::Duration;

use crate::{
    error::ConnectError,
    retry::{Backoff, RetryContext},
};

/// The retry state of one driver.
pub(crate) struct Retry {
    backoff: Backoff,
    failures: u32,
    last_connected_for: Option<Duration>,
    last_error: Option<ConnectError>,
    /// The delay the policy chose after the last failure or disconnect, for the next attempt.
    chosen: Option<Duration>,
}

/// The retry policy gave up.
#[derive(Debug)]
pub(super) struct GaveUp;

impl Retry {
    pub(crate) fn new(backoff: Backoff) -> Self {
        Self {
            backoff,
            failures: 0,
            last_connected_for: None,
            last_error: None,
            chosen: None,
        }
    }

    /// Failures in a row, as the policy counts them.
    pub(super) fn failures(&self) -> u32 {
        self.failures
    }

    /// The error of the latest failure of the streak.
    pub(super) fn last_error(&self) -> Option<&ConnectError> {
        self.last_error.as_ref()
    }

    /// Asks the policy for the delay before the next attempt now (so that giving up happens at
    /// the failure, not a delay later), and keeps it for [`arm`](Self::arm).
    pub(super) fn choose(&mut self, server_name: &str) -> Result<Duration, GaveUp> {
        let delay = self.ask(server_name)?;
        self.chosen = Some(delay);
        Ok(delay)
    }

    /// The delay to arm before the attempt that starts now: the one chosen after the last
    /// failure or disconnect, else the policy's answer now.
    pub(super) fn arm(&mut self, server_name: &str) -> Result<Duration, GaveUp> {
        match self.chosen.take() {
            Some(delay) => Ok(delay),
            None => self.ask(server_name),
        }
    }

    fn ask(&mut self, server_name: &str) -> Result<Duration, GaveUp> {
        let context = RetryContext::new(
            self.failures,
            self.last_connected_for,
            self.last_error.as_ref(),
        );
        self.backoff.next_delay(server_name, &context).ok_or(GaveUp)
    }

    /// An attempt failed with `error`.
    pub(super) fn failed(&mut self, error: ConnectError) {
        self.failures = self.failures.saturating_add(1);
        self.last_error = Some(error);
    }

    /// Starts over: no failures, and no delay chosen (`reconnect_now`).
    pub(super) fn reset(&mut self) {
        self.failures = 0;
        self.last_error = None;
        self.chosen = None;
    }

    /// A connection ended after `lived`: a goodbye, or a life of at least the flap guard,
    /// resets the streak; anything else counts as one more failure, whose error says how it
    /// ended (`how`).
    pub(super) fn connection_ended(
        &mut self,
        lived: Duration,
        goodbye: bool,
        flap_guard: Duration,
        how: &dyn std::fmt::Display,
    ) {
        self.last_connected_for = Some(lived);
        if goodbye || lived >= flap_guard {
            self.failures = 0;
            self.last_error = None;
        } else {
            self.failures = self.failures.saturating_add(1);
            self.last_error = Some(ConnectError::connect(
                format!("the connection ended after {lived:?}, within the flap guard: {how}")
                    .into(),
            ));
        }
    }

    /// The delay before a failed rotation is tried again: the policy's delay after one
    /// failure; `None` if it gives up (then the old connection serves until it ends).
    pub(super) fn after_failed_rotation(
        &mut self,
        server_name: &str,
        error: &ConnectError,
    ) -> Option<Duration> {
        self.backoff
            .next_delay(server_name, &RetryContext::new(1, None, Some(error)))
    }

    /// `duration` randomized like a delay.
    pub(super) fn jittered(&mut self, duration: Duration) -> Duration {
        self.backoff.jittered(duration)
    }
}
