//! The keep-alive interval an [`Http2Connector`](super::Http2Connector) gives its new
//! connections, shared by its clones, and doubled when a gRPC server complains of too many
//! pings (gRFC A8: `GOAWAY` `ENHANCE_YOUR_CALM` with debug data `too_many_pings`).

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use super::sniff::GoAway;

/// The keep-alive interval's bound when a server's complaints double it: gRPC servers allow
/// a ping every 2 hours even on an idle connection.
pub(super) const MAX_KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(2 * 60 * 60);

/// The keep-alive interval for new connections, in nanoseconds (0 = off), shared by a
/// connector's clones, and doubled when a server complains of too many pings.
#[derive(Debug)]
pub(super) struct KeepAliveInterval(AtomicU64);

impl KeepAliveInterval {
    pub(super) fn new(interval: Option<Duration>) -> Self {
        Self(AtomicU64::new(Self::nanos(interval)))
    }

    fn nanos(interval: Option<Duration>) -> u64 {
        interval.map_or(0, |interval| {
            u64::try_from(interval.as_nanos()).unwrap_or(u64::MAX)
        })
    }

    pub(super) fn get(&self) -> Option<Duration> {
        match self.0.load(Ordering::Relaxed) {
            0 => None,
            nanos => Some(Duration::from_nanos(nanos)),
        }
    }

    /// A connection made with keep-alive interval `used` got `goaway`: if the server
    /// complained of too many pings, the interval becomes at least twice `used` (at most
    /// [`MAX_KEEP_ALIVE_INTERVAL`]). Doubling from the connection's own interval, never from
    /// the current one, makes the complaints of several connections made with one interval
    /// count once.
    pub(super) fn on_goaway(&self, used: Option<Duration>, goaway: &GoAway) {
        if !goaway.is_too_many_pings() {
            return;
        }
        let Some(used) = used else {
            tracing::warn!(
                %goaway,
                "server complained of too many pings; keep-alive is off, so the pings are not \
                 ours to slow down (adaptive_window's, or set on the builder)",
            );
            return;
        };
        let doubled = used
            .saturating_mul(2)
            .min(MAX_KEEP_ALIVE_INTERVAL.max(used));
        let target = Self::nanos(Some(doubled));
        let before = self
            .0
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |current| {
                // 0: keep-alive was turned off meanwhile; a larger interval stays.
                (current != 0 && current < target).then_some(target)
            });
        if before.is_ok() {
            tracing::warn!(
                %goaway,
                "server complained of too many pings; doubling the keep-alive interval to {doubled:?}",
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn too_many_pings() -> GoAway {
        GoAway {
            last_stream_id: 0,
            error_code: GoAway::ENHANCE_YOUR_CALM,
            debug_data: b"too_many_pings".to_vec(),
        }
    }

    const SECOND: Duration = Duration::from_secs(1);

    /// Each complaint doubles the interval of the connection it came from; complaints from
    /// several connections made with one interval double it once; other GOAWAYs change
    /// nothing.
    #[test]
    fn doubles_once_per_interval_used() {
        let interval = KeepAliveInterval::new(Some(SECOND));
        interval.on_goaway(
            Some(SECOND),
            &GoAway {
                error_code: GoAway::ENHANCE_YOUR_CALM,
                debug_data: b"something else".to_vec(),
                ..GoAway::default()
            },
        );
        interval.on_goaway(Some(SECOND), &GoAway::default());
        assert_eq!(interval.get(), Some(SECOND));

        interval.on_goaway(Some(SECOND), &too_many_pings());
        assert_eq!(interval.get(), Some(2 * SECOND));
        interval.on_goaway(Some(SECOND), &too_many_pings()); // another connection, same interval
        assert_eq!(interval.get(), Some(2 * SECOND));
        interval.on_goaway(Some(2 * SECOND), &too_many_pings());
        assert_eq!(interval.get(), Some(4 * SECOND));
        interval.on_goaway(Some(SECOND), &too_many_pings()); // a late, older one
        assert_eq!(interval.get(), Some(4 * SECOND));
    }

    /// Doubling stops at 2 hours; a configured interval above that stays; keep-alive that is
    /// off stays off, also when turned off while a connection made with an interval was open.
    #[test]
    fn caps_at_two_hours_and_leaves_off_alone() {
        let hour = Duration::from_secs(3600);
        let interval = KeepAliveInterval::new(Some(hour + SECOND));
        interval.on_goaway(Some(hour + SECOND), &too_many_pings());
        assert_eq!(interval.get(), Some(MAX_KEEP_ALIVE_INTERVAL));
        interval.on_goaway(Some(MAX_KEEP_ALIVE_INTERVAL), &too_many_pings());
        assert_eq!(interval.get(), Some(MAX_KEEP_ALIVE_INTERVAL));

        let day = Duration::from_secs(86_400);
        let interval = KeepAliveInterval::new(Some(day));
        interval.on_goaway(Some(day), &too_many_pings());
        assert_eq!(interval.get(), Some(day));

        let off = KeepAliveInterval::new(None);
        off.on_goaway(None, &too_many_pings());
        off.on_goaway(Some(SECOND), &too_many_pings());
        assert_eq!(off.get(), None);
        assert_eq!(KeepAliveInterval::new(Some(Duration::ZERO)).get(), None);
        assert_eq!(
            KeepAliveInterval::new(Some(Duration::MAX)).get(),
            Some(Duration::from_nanos(u64::MAX))
        );
    }
}
