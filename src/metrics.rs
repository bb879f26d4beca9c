//! Export of the [`Stats`](crate::observe::Stats) counters to the [`metrics`] facade, behind the
//! `metrics` feature. Without the feature these functions do nothing and compile away.
//!
//! The metrics are listed in [`Stats`](crate::observe::Stats)' documentation.

use std::{sync::Arc, time::Duration};

use crate::{error::ConnectError, stats::Ending};

#[cfg(feature = "metrics")]
pub(crate) fn attempt_started(server: &Arc<str>, delay: Duration) {
    metrics::counter!("persistent_connection_attempts_total", "server" => server.clone())
        .increment(1);
    metrics::gauge!("persistent_connection_next_delay_seconds", "server" => server.clone())
        .set(delay.as_secs_f64());
}

#[cfg(feature = "metrics")]
pub(crate) fn attempt_finished(server: &Arc<str>, error: Option<&ConnectError>) {
    use crate::error::ConnectErrorKind;

    let Some(error) = error else {
        metrics::counter!("persistent_connection_connections_total", "server" => server.clone())
            .increment(1);
        metrics::gauge!("persistent_connection_connected", "server" => server.clone()).set(1.0);
        return;
    };
    let kind = match error.kind() {
        ConnectErrorKind::Discovery => "discovery",
        ConnectErrorKind::Connect => "connect",
        ConnectErrorKind::Timeout => "timeout",
        ConnectErrorKind::Panic => "panic",
        ConnectErrorKind::HealthCheck => "health_check",
        ConnectErrorKind::Closed => "closed",
    };
    metrics::counter!(
        "persistent_connection_failed_attempts_total",
        "server" => server.clone(),
        "kind" => kind,
    )
    .increment(1);
}

#[cfg(feature = "metrics")]
pub(crate) fn disconnected(server: &Arc<str>, ending: Ending) {
    metrics::counter!("persistent_connection_disconnections_total", "server" => server.clone())
        .increment(1);
    match ending {
        Ending::Goodbye => {
            metrics::counter!("persistent_connection_graceful_closes_total", "server" => server.clone())
                .increment(1);
        }
        Ending::Rotation => {
            metrics::counter!("persistent_connection_rotations_total", "server" => server.clone())
                .increment(1);
        }
        Ending::Failure => {}
    }
    metrics::gauge!("persistent_connection_connected", "server" => server.clone()).set(0.0);
}

#[cfg(not(feature = "metrics"))]
pub(crate) fn attempt_started(_: &Arc<str>, _: Duration) {}

#[cfg(not(feature = "metrics"))]
pub(crate) fn attempt_finished(_: &Arc<str>, _: Option<&ConnectError>) {}

#[cfg(not(feature = "metrics"))]
pub(crate) fn disconnected(_: &Arc<str>, _: Ending) {}
