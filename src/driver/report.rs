//! [`Reporter`]: the one place that tells the world what the driver does: the state handles
//! read, the `on_state` and `on_event` hooks, the log, and the de-duplication of events
//! within a cycle (S5).

use std::fmt;

use tracing::{debug, info, warn};

use super::erased::Hook;
use crate::{
    event::{Event, OnEvent},
    panic,
    shared::Shared,
    state::State,
    sync::Arc,
};

/// Tells handles, hooks and the log what the driver does.
pub(crate) struct Reporter<A, S> {
    shared: Arc<Shared<S>>,
    on_event: Hook<A, S>,
    /// The last address and error text reported in this cycle.
    address: Option<A>,
    error: Option<String>,
}

impl<A, S> Reporter<A, S>
where
    A: PartialEq + Clone + fmt::Debug + 'static,
    S: 'static,
{
    pub(crate) fn new(shared: Arc<Shared<S>>, on_event: Hook<A, S>) -> Self {
        Self {
            shared,
            on_event,
            address: None,
            error: None,
        }
    }

    /// A new cycle: its first address and error are reported again.
    pub(super) fn new_cycle(&mut self) {
        self.address = None;
        self.error = None;
    }

    /// Publishes `state` to handles, and tells the hook if it changed. (`Closed` is published
    /// by whoever closes the shared state; the hook hears it when the driver stops.)
    pub(super) fn enter(&self, state: State) {
        if self.shared.set_state(state) || state == State::Closed {
            self.tell_state(state);
        }
    }

    /// Tells the hook about `state`.
    pub(super) fn tell_state(&self, state: State) {
        let on_event = &self.on_event;
        if let Err(panic) = panic::catch(|| on_event.on_state(state)) {
            warn!(
                persistent_connection_to = %self.shared.server_name,
                ?state,
                %panic,
                "on_state panicked; the driver carries on",
            );
        }
    }

    /// Reports `event`: de-duplicates it within the cycle, logs it, and hands it to the hook.
    pub(super) fn event(&mut self, event: Event<A, S>) {
        let name = &*self.shared.server_name;
        match &event {
            Event::AttemptingToConnect => {
                debug!(persistent_connection_to = %name, "attempting to connect")
            }
            Event::ObtainedAddress(address) => {
                if self.address.as_ref() == Some(address) {
                    return;
                }
                self.address = Some(address.clone());
                debug!(persistent_connection_to = %name, ?address, "obtained address");
            }
            Event::FailedToConnect(error) => {
                let text = error.to_string();
                if self.error.as_ref() == Some(&text) {
                    return;
                }
                self.error = Some(text);
                warn!(persistent_connection_to = %name, %error, kind = ?error.kind(), "failed to connect");
            }
            Event::Connected(_) => info!(persistent_connection_to = %name, "connected"),
            // Logged with its reason where it happens.
            Event::Disconnected => {}
        }
        let on_event = &self.on_event;
        if let Err(panic) = panic::catch(|| on_event.on_event(&event)) {
            warn!(
                persistent_connection_to = %name,
                event = event.name(),
                %panic,
                "on_event panicked; the event is dropped and the driver carries on",
            );
        }
    }
}
