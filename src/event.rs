//! What the driver reports: [`Event`], and the [`OnEvent`] hook that receives it.

use std::fmt;

use crate::{error::ConnectError, state::State};

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
/// Implemented for `()` (ignore events, the default), for every
/// `Fn(&Event<A, S>) + Send + Sync + 'static` closure, for [`EventBus`](crate::observe::EventBus) (any
/// number of subscribers), and for pairs of hooks (`(bus, |event: &Event<_, _>| ...)`). The
/// hook runs on the driver task, in order, before the driver takes its next step; keep it
/// short and do not block. A panic in it is caught and logged, and the driver carries on.
pub trait OnEvent<A, S>: Send + Sync + 'static {
    /// Called once per reported event.
    fn on_event(&self, event: &Event<A, S>);

    /// Called with the driver's [`State`] when it starts ([`State::Connecting`]) and whenever
    /// it changes (the same changes [`Handle::state_changes`](crate::Handle::state_changes)
    /// shows), last with [`State::Closed`] when the driver stops. Does nothing by default.
    fn on_state(&self, state: State) {
        let _ = state;
    }
}

/// Both hooks, in order. A panic in the first does not keep the second from hearing the
/// event: it is resumed after the second has run (and the driver logs it).
impl<A, S, E1, E2> OnEvent<A, S> for (E1, E2)
where
    E1: OnEvent<A, S>,
    E2: OnEvent<A, S>,
{
    fn on_event(&self, event: &Event<A, S>) {
        both(|| self.0.on_event(event), || self.1.on_event(event));
    }

    fn on_state(&self, state: State) {
        both(|| self.0.on_state(state), || self.1.on_state(state));
    }
}

/// Runs `first`, then `second` even if `first` panicked; then resumes that panic.
fn both(first: impl FnOnce(), second: impl FnOnce()) {
    let first = std::panic::catch_unwind(std::panic::AssertUnwindSafe(first));
    second();
    if let Err(panic) = first {
        std::panic::resume_unwind(panic);
    }
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
