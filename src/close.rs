//! How the driver learns that a connection closed by itself: [`CloseSignal`] and
//! [`CloseReason`].

use std::{fmt, future::Future};

use crate::BoxError;

/// How a connection ended, as told by its [`CloseSignal`].
#[derive(Debug)]
#[non_exhaustive]
pub enum CloseReason {
    /// The peer said goodbye: an idle close, an HTTP/2 `GOAWAY`, a clean end of stream.
    Graceful,
    /// The connection failed: reset, I/O error, keep-alive timeout.
    Error(BoxError),
}

impl CloseReason {
    /// Whether the close was graceful.
    pub fn is_graceful(&self) -> bool {
        matches!(self, Self::Graceful)
    }
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Graceful => f.write_str("closed gracefully"),
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
