//! How the driver learns that a connection closed by itself: [`CloseSignal`] and
//! [`CloseReason`].

use std::{fmt, future::Future};

use crate::BoxError;

/// How a connection ended, as told by its [`CloseSignal`].
#[derive(Debug)]
#[non_exhaustive]
pub enum CloseReason {
    /// The peer said goodbye after answering at least one request: an idle close, an HTTP/2
    /// `GOAWAY`, a clean end of stream, a keep-alive request limit. Not a failure: the layer
    /// starts the replacement at once, whatever the connection's age.
    Graceful,
    /// The peer said goodbye before answering any request (accepts and closes, `GOAWAY` before
    /// the first response). Counts as a failure: the retry delay applies, so a broken server
    /// is not hammered.
    GracefulBeforeServing,
    /// The connection failed: reset, I/O error, keep-alive timeout.
    Error(BoxError),
}

impl CloseReason {
    /// Whether the close was graceful (an orderly goodbye, served or not).
    pub fn is_graceful(&self) -> bool {
        matches!(self, Self::Graceful | Self::GracefulBeforeServing)
    }

    /// Whether the layer replaces the connection at once, without counting a failure: a
    /// graceful close of a connection that served.
    pub fn replaces_at_once(&self) -> bool {
        matches!(self, Self::Graceful)
    }
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Graceful => f.write_str("closed gracefully"),
            Self::GracefulBeforeServing => {
                f.write_str("closed gracefully before answering any request")
            }
            Self::Error(error) => write!(f, "closed with error: {error}"),
        }
    }
}

/// Tells the driver when a connection has closed, without any request being sent; set with
/// [`PersistentConnectionLayer::close_signal`](crate::PersistentConnectionLayer::close_signal).
///
/// A connection's `poll_ready` error always counts as a disconnect, but many connections never
/// report one while idle (hyper's HTTP/2 `SendRequest::poll_ready` is always ready until a
/// request fails). A close signal lets the driver notice a closed connection at once and
/// reconnect before the next request needs it.
///
/// Implemented for `()` (no signal, the default: only `poll_ready` errors end a connection)
/// and for every `Fn(&S) -> impl Future<Output = CloseReason>` closure. The future must not
/// borrow the connection (clone what it needs into it); it is dropped when the connection ends
/// for another reason.
///
/// When a connection's `poll_ready` fails, the driver polls its close signal once to learn
/// how it ended (a goodbye is replaced at once, a failure waits the retry delay). So the
/// future should be ready on any poll made after the connection's state says it closed, not
/// only once its task has been woken: check the state on every poll (a
/// `tokio::sync::watch::Receiver::wait_for` left pending can miss a change whose wake-up has
/// not come yet). Otherwise a goodbye seen first by `poll_ready` counts as a failure.
pub trait CloseSignal<S>: Send + Sync + 'static {
    /// The future that resolves when the connection has closed.
    type Future: Future<Output = CloseReason> + Send + 'static;

    /// Called once per new connection.
    fn closed(&self, connection: &S) -> Self::Future;
}

impl<S> CloseSignal<S> for () {
    type Future = std::future::Pending<CloseReason>;

    fn closed(&self, _: &S) -> Self::Future {
        std::future::pending()
    }
}

impl<S, F, Fut> CloseSignal<S> for F
where
    F: Fn(&S) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = CloseReason> + Send + 'static,
{
    type Future = Fut;

    fn closed(&self, connection: &S) -> Fut {
        self(connection)
    }
}
