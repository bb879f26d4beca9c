//! [`tower::load::Load`] for [`PersistentConnection`]: the connection's own load.

use std::cmp::Ordering;

use tower::load::Load;

use crate::service::PersistentConnection;

/// The load of a [`PersistentConnection`]: its connection's load, or `Disconnected`, which
/// compares greater than any connected load.
///
/// A balancer only compares endpoints that are ready, and a ready clone always holds a
/// connection, so `Disconnected` is what an unready clone reports if asked: "as loaded as it
/// gets".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnectionLoad<M> {
    /// The load of this clone's connection.
    Connected(M),
    /// This clone holds no connection.
    Disconnected,
}

impl<M: PartialOrd> PartialOrd for ConnectionLoad<M> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        match (self, other) {
            (Self::Connected(a), Self::Connected(b)) => a.partial_cmp(b),
            (Self::Connected(_), Self::Disconnected) => Some(Ordering::Less),
            (Self::Disconnected, Self::Connected(_)) => Some(Ordering::Greater),
            (Self::Disconnected, Self::Disconnected) => Some(Ordering::Equal),
        }
    }
}

/// The load of the connection this clone holds (the one its latest ready `poll_ready` was
/// about), so it costs what the connection's own `load` costs.
///
/// Only useful when the connection itself measures its load, and its clones share that
/// measure (the connection must be `Clone`; tower's own `PendingRequests` and `PeakEwma` are
/// not). The usual set-up measures around the persistent connection instead:
/// `PendingRequests::new(persistent, CompleteOnResponse::default())` or `PeakEwma` per
/// endpoint under `tower::balance::p2c::Balance`. An HTTP/2 connection is always ready while
/// connected, so load is then the balancer's only signal.
impl<S: Load> Load for PersistentConnection<S> {
    type Metric = ConnectionLoad<S::Metric>;

    fn load(&self) -> Self::Metric {
        match self.get_ref() {
            Some(connection) => ConnectionLoad::Connected(connection.load()),
            None => ConnectionLoad::Disconnected,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::ConnectionLoad::{Connected, Disconnected};

    /// Disconnected compares greater than any connected load; connected loads compare as
    /// their metric does.
    #[test]
    fn disconnected_is_the_highest_load() {
        assert!(Connected(1_000_000) < Disconnected);
        assert!(Disconnected > Connected(0));
        assert!(Connected(1) < Connected(2));
        assert_eq!(
            Disconnected::<u8>.partial_cmp(&Disconnected),
            Some(std::cmp::Ordering::Equal)
        );
        assert_eq!(Connected(f64::NAN).partial_cmp(&Connected(1.0)), None);
    }
}
