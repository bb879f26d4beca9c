//! [`Stats`]: what the driver has done so far, read with
//! [`Handle::stats`](crate::Handle::stats).

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use crate::error::ConnectError;

/// Counters of a persistent connection, like gRPC's subchannel metrics; a snapshot taken by
/// [`Handle::stats`](crate::Handle::stats).
///
/// Counters count every attempt, also those whose events were de-duplicated.
///
/// # Metrics
///
/// With the `metrics` feature, the driver also exports these counters to the
/// [`metrics`](https://docs.rs/metrics) facade, to whatever recorder the application installed
/// (Prometheus, StatsD, ...). Every metric carries the label `server` (the layer's
/// [server name](crate::PersistentConnectionLayer::server_name)):
///
/// | metric | type | meaning |
/// |---|---|---|
/// | `persistent_connection_attempts_total` | counter | attempts started |
/// | `persistent_connection_failed_attempts_total` | counter | failed attempts; label `kind`: `discovery`, `connect`, `timeout`, `panic`, `health_check` |
/// | `persistent_connection_connections_total` | counter | connections made |
/// | `persistent_connection_disconnections_total` | counter | connections ended |
/// | `persistent_connection_graceful_closes_total` | counter | connections ended by the server's goodbye, replaced at once (a subset of the disconnections) |
/// | `persistent_connection_rotations_total` | counter | connections replaced at their maximum age (a subset of the disconnections) |
/// | `persistent_connection_connected` | gauge | 1 while connected, else 0 |
/// | `persistent_connection_next_delay_seconds` | gauge | the delay armed before the latest attempt |
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
    /// Connections that ended with the server's goodbye after serving (HTTP/2 `GOAWAY`,
    /// `Connection: close`, an idle close): each replaced at once, none counted as a failure.
    /// Included in `disconnections`.
    pub graceful_closes: u64,
    /// Connections replaced by the client because they reached
    /// [`max_connection_age`](crate::PersistentConnectionLayer::max_connection_age), make
    /// before break. Included in `disconnections`.
    pub rotations: u64,
    /// Requests the server provably never processed (refused by `GOAWAY` or `REFUSED_STREAM`,
    /// or handed back unwritten) that the crate's HTTP connectors sent again on the next
    /// connection, counted once per resend.
    pub replayed_requests: u64,
    /// Requests the server provably never processed that could not be sent again (body too
    /// large to keep, or the resend limit reached): each failed with
    /// [`NotProcessed`](crate::http::NotProcessed), safe for the caller to retry.
    pub refused_requests: u64,
}

/// Counters of requests that a connector handles on its own (replays, refusals), shared with
/// the layer's [`Stats`] when the connector is applied with
/// [`PersistentConnectionLayer::http2`](crate::PersistentConnectionLayer::http2) or
/// [`http1`](crate::PersistentConnectionLayer::http1).
#[derive(Debug, Default)]
pub(crate) struct RequestCounters {
    replayed: AtomicU64,
    refused: AtomicU64,
}

#[cfg_attr(not(feature = "hyper"), allow(dead_code))]
impl RequestCounters {
    /// One request sent again on the next connection.
    pub(crate) fn replayed(&self) {
        self.replayed.fetch_add(1, Ordering::Relaxed);
    }

    /// One request failed with `NotProcessed`.
    pub(crate) fn refused(&self) {
        self.refused.fetch_add(1, Ordering::Relaxed);
    }

    /// (replayed, refused) so far.
    pub(crate) fn read(&self) -> (u64, u64) {
        (
            self.replayed.load(Ordering::Relaxed),
            self.refused.load(Ordering::Relaxed),
        )
    }
}

/// How a connection ended, for the counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Ending {
    /// The server said goodbye; replaced at once, no failure.
    Goodbye,
    /// Replaced make-before-break at its maximum age.
    Rotation,
    /// Anything else.
    Failure,
}
