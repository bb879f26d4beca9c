//! [`State`]: what the persistent connection is doing, published by the driver through a
//! `tokio::sync::watch`, read by [`Handle::state`](crate::Handle::state) and
//! [`Handle::state_changes`](crate::Handle::state_changes).

use futures_util::{Stream, stream};
use tokio::{sync::watch, time::Instant};

/// What the persistent connection is doing now; see [`Handle::state`](crate::Handle::state).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum State {
    /// An attempt is running (discovery, connect, health check).
    Connecting,
    /// The last attempt failed, or the connection ended; the next attempt starts at
    /// `next_attempt` (earlier on [`Handle::reconnect_now`](crate::Handle::reconnect_now)).
    #[non_exhaustive]
    Waiting {
        /// When the next attempt starts.
        next_attempt: Instant,
    },
    /// A connection is up.
    Connected,
    /// A connection is up, but its periodic [health check](crate::health::HealthCheck) says the server
    /// is not serving ([`NotServing`](crate::health::NotServing)): requests wait, the connection stays,
    /// and the check keeps running; `Connected` again as soon as it passes.
    NotServing,
    /// Closed: no more attempts will be made.
    Closed,
}

/// The current state, then each change, ending after `Closed` (or when the state's sender is
/// gone, which happens only after `Closed` was sent).
pub(crate) fn changes(
    receiver: watch::Receiver<State>,
) -> impl Stream<Item = State> + Send + Unpin + 'static {
    Box::pin(stream::unfold(Some((receiver, true)), |next| async move {
        let (mut receiver, first) = next?;
        if !first && receiver.changed().await.is_err() {
            return None;
        }
        let state = *receiver.borrow_and_update();
        let next = (state != State::Closed).then_some((receiver, false));
        Some((state, next))
    }))
}
