//! What the driver reports: [`Event`], and the [`OnEvent`] hook that receives it.

use std::fmt;

use crate::error::ConnectError;

/// Something that happened to the persistent connection.
///
/// Per connection *cycle* (at start, and after each disconnect) the events come in this order:
///
/// 1. `AttemptingToConnect`, once;
/// 2. per attempt, `ObtainedAddress(addr)` (when discovery succeeded), then either
///    `FailedToConnect(err)` (then the retry delay, then the next attempt of the same cycle) or
///    `Connected(conn)`;
/// 3. after `Connected`, eventually `Disconnected` (also when the persistent connection is
///    closed or dropped while connected), and a new cycle begins unless closed.
///
/// Within one cycle, `ObtainedAddress` is reported only when the address differs from the
/// previous one obtained, and `FailedToConnect` only when the error's text differs from the
/// previous failure's, so an outage of hours logs one line, not thousands. A new cycle starts
/// afresh.
#[derive(Clone)]
#[non_exhaustive]
pub enum Event<A, S> {
    /// A connection cycle begins (at start, and after each disconnect).
    AttemptingToConnect,
    /// The address source returned this address for the coming attempt.
    ObtainedAddress(A),
    /// An attempt failed: in discovery, in connect, by timeout, or by a panic.
    FailedToConnect(ConnectError),
    /// A connection is up; this is a copy of it (a clone of the maker's response).
    Connected(S),
    /// The connection that was up is gone (closed by the peer, failed, or reported dead).
    Disconnected,
}

impl<A, S> Event<A, S> {
    /// The event's name, e.g. `"ObtainedAddress"`.
    pub fn name(&self) -> &'static str {
        match self {
            Self::AttemptingToConnect => "AttemptingToConnect",
            Self::ObtainedAddress(_) => "ObtainedAddress",
            Self::FailedToConnect(_) => "FailedToConnect",
            Self::Connected(_) => "Connected",
            Self::Disconnected => "Disconnected",
        }
    }
}

impl<A: fmt::Debug, S> fmt::Debug for Event<A, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ObtainedAddress(address) => {
                f.debug_tuple("ObtainedAddress").field(address).finish()
            }
            Self::FailedToConnect(error) => f.debug_tuple("FailedToConnect").field(error).finish(),
            Self::Connected(_) => f.write_str("Connected(..)"),
            _ => f.write_str(self.name()),
        }
    }
}

/// Receives every [`Event`] the driver reports; set with
/// [`PersistentConnectionLayer::on_event`](crate::PersistentConnectionLayer::on_event).
///
/// Implemented for `()` (ignore events, the default) and for every
/// `Fn(&Event<A, S>) + Send + Sync + 'static` closure. The hook runs on the driver task, in
/// order, before the driver takes its next step; keep it short and do not block. A panic in it
/// is caught and logged, and the driver carries on.
pub trait OnEvent<A, S>: Send + Sync + 'static {
    /// Called once per reported event.
    fn on_event(&self, event: &Event<A, S>);
}

impl<A, S> OnEvent<A, S> for () {
    fn on_event(&self, _: &Event<A, S>) {}
}

impl<A, S, F> OnEvent<A, S> for F
where
    F: Fn(&Event<A, S>) + Send + Sync + 'static,
{
    fn on_event(&self, event: &Event<A, S>) {
        self(event)
    }
}
