//! [`Stats`]: what the driver has done so far, read with
//! [`Handle::stats`](crate::Handle::stats).

use std::time::Duration;

use crate::error::ConnectError;

/// Counters of a persistent connection, like gRPC's subchannel metrics; a snapshot taken by
/// [`Handle::stats`](crate::Handle::stats).
///
/// Counters count every attempt, also those whose events were de-duplicated.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct Stats {
    /// Connection attempts started.
    pub attempts: u64,
    /// Attempts that failed (discovery, connect, timeout, panic, or health check).
    pub failed_attempts: u64,
    /// Attempts that succeeded: connections made.
    pub connections: u64,
    /// Connections that ended.
    pub disconnections: u64,
    /// How long the current connection has been up; `None` while not connected.
    pub connected_for: Option<Duration>,
    /// The error of the latest failed attempt (kept after later successes).
    pub last_error: Option<ConnectError>,
    /// The delay armed before the latest attempt, after jitter: the time from that attempt's
    /// start to the next attempt, should it fail (or to the next cycle, should its connection
    /// end sooner). `None` before the first attempt.
    pub next_delay: Option<Duration>,
    /// Attempts that failed in a row, as the retry policy counts them (reset by a connection
    /// that outlived the flap guard, or by `reconnect_now`).
    pub consecutive_failures: u32,
}
