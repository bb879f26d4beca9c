//! [`EventBus`]: events and state changes for any number of subscribers.

use std::{
    fmt,
    sync::{Arc, Mutex, PoisonError, Weak},
};

use futures_util::{Stream, stream};
use tokio::sync::broadcast;

use crate::{event::Event, event::OnEvent, state::State};

/// The default number of updates a subscriber may fall behind before it misses some.
const DEFAULT_CAPACITY: usize = 64;

/// An event hook with any number of subscribers: pass a clone to
/// [`on_event`](crate::PersistentConnectionLayer::on_event), and
/// [`subscribe`](Self::subscribe) whenever you like.
///
/// A subscriber first receives the current [`State`], then every [`Update`] from then on:
/// each [`Event`] and each change of state, in order. Late subscribers are told the state, not
/// the last event: replaying a `Connected(conn)` would hand out (and keep alive) a connection
/// that may be long gone.
///
/// Meant for one persistent connection: a bus given to a layer that is applied to several
/// makers receives the events of all of them, interleaved.
///
/// # Example
///
/// ```
/// use std::convert::Infallible;
/// use persistent_connection::{
///     Event,
///     PersistentConnectionLayer,
///     State,
///     observe::{EventBus, Update},
/// };
/// use tower::{Layer, service_fn};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let maker = service_fn(|_: &'static str| async {
///     Ok::<_, Infallible>(service_fn(|n: u32| async move { Ok::<_, Infallible>(n) }))
/// });
/// let bus = EventBus::new();
/// let svc = PersistentConnectionLayer::fixed_address("replica-1")
///     .on_event(bus.clone())
///     .layer(maker);
/// svc.handle().connected().await.unwrap();
///
/// // A subscriber that comes late hears the state first, then what happens next.
/// let mut updates = bus.subscribe();
/// assert!(matches!(updates.recv().await, Some(Update::State(State::Connected))));
/// svc.handle().close().await;
/// assert!(matches!(updates.recv().await, Some(Update::Event(Event::Disconnected))));
/// assert!(matches!(updates.recv().await, Some(Update::State(State::Closed))));
/// # }
/// ```
pub struct EventBus<A, S> {
    inner: Arc<Inner<A, S>>,
}

struct Inner<A, S> {
    /// The latest state; locked while sending, so a new subscriber's snapshot and the
    /// updates it receives afterwards fit together.
    state: Mutex<State>,
    sender: broadcast::Sender<Update<A, S>>,
}

/// What an [`EventBus`] subscriber receives.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum Update<A, S> {
    /// The state: first the current one, then each change.
    State(State),
    /// An event, as [`on_event`](crate::PersistentConnectionLayer::on_event) reports it.
    Event(Event<A, S>),
    /// This subscriber fell behind and missed at least this many updates; it starts over:
    /// the next update is the current state, then what happens after it.
    Lagged(u64),
}

impl<A, S> EventBus<A, S>
where
    A: Clone + Send + 'static,
    S: Clone + Send + 'static,
{
    /// A bus whose subscribers may each fall 64 updates behind before they miss some.
    pub fn new() -> Self {
        Self::with_capacity(DEFAULT_CAPACITY)
    }

    /// A bus whose subscribers may each fall `capacity` updates behind before they miss some
    /// (they are then told [`Update::Lagged`] and the current state). A zero capacity is
    /// taken as 1. Queued updates hold their events, including connections: a subscriber
    /// that stops reading keeps up to `capacity` of them alive; drop it when done.
    pub fn with_capacity(capacity: usize) -> Self {
        let (sender, _) = broadcast::channel(capacity.max(1));
        Self {
            inner: Arc::new(Inner {
                state: Mutex::new(State::Connecting),
                sender,
            }),
        }
    }

    /// The latest state this bus has heard of.
    pub fn state(&self) -> State {
        *self.inner.lock()
    }

    /// A new subscriber: it receives the current state, then every update from now on.
    pub fn subscribe(&self) -> Subscription<A, S> {
        let state = self.inner.lock();
        Subscription {
            pending_state: Some(*state),
            receiver: self.inner.sender.subscribe(),
            bus: Arc::downgrade(&self.inner),
        }
    }

    /// How many subscribers there are.
    pub fn subscribers(&self) -> usize {
        self.inner.sender.receiver_count()
    }
}

impl<A, S> Inner<A, S> {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The lock guards a plain `State`: a panic elsewhere cannot leave it half-written.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl<A, S> Default for EventBus<A, S>
where
    A: Clone + Send + 'static,
    S: Clone + Send + 'static,
{
    fn default() -> Self {
        Self::new()
    }
}

impl<A, S> Clone for EventBus<A, S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<A, S> fmt::Debug for EventBus<A, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventBus")
            .field("state", &*self.inner.lock())
            .field("subscribers", &self.inner.sender.receiver_count())
            .finish()
    }
}

impl<A, S> OnEvent<A, S> for EventBus<A, S>
where
    A: Clone + Send + Sync + 'static,
    S: Clone + Send + 'static,
{
    fn on_event(&self, event: &Event<A, S>) {
        let _state = self.inner.lock();
        // An error only means there is no subscriber now.
        let _ = self.inner.sender.send(Update::Event(event.clone()));
    }

    fn on_state(&self, new: State) {
        let mut state = self.inner.lock();
        // The driver's first report (`Connecting`) is usually what the bus starts with.
        if *state != new {
            *state = new;
            let _ = self.inner.sender.send(Update::State(new));
        }
    }
}

/// A subscriber of an [`EventBus`]; see [`EventBus::subscribe`].
pub struct Subscription<A, S> {
    /// The state to deliver before anything else (at first, and after a lag).
    pending_state: Option<State>,
    receiver: broadcast::Receiver<Update<A, S>>,
    /// Weak, so that a subscription does not keep its own channel open.
    bus: Weak<Inner<A, S>>,
}

impl<A, S> Subscription<A, S>
where
    A: Clone + Send + 'static,
    S: Clone + Send + 'static,
{
    /// The next update; `None` once every clone of the bus is gone (the layer and the drivers
    /// it started have all been dropped).
    pub async fn recv(&mut self) -> Option<Update<A, S>> {
        if let Some(state) = self.pending_state.take() {
            return Some(Update::State(state));
        }
        match self.receiver.recv().await {
            Ok(update) => Some(update),
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                // Start over from the current state: drop the backlog, whose oldest updates
                // would now arrive after the state they led to.
                if let Some(bus) = self.bus.upgrade() {
                    let state = bus.lock();
                    self.receiver = self.receiver.resubscribe();
                    self.pending_state = Some(*state);
                }
                Some(Update::Lagged(missed))
            }
            Err(broadcast::error::RecvError::Closed) => None,
        }
    }

    /// This subscription as a [`Stream`] of updates.
    pub fn into_stream(self) -> impl Stream<Item = Update<A, S>> + Send + Unpin + 'static
    where
        A: Sync,
    {
        Box::pin(stream::unfold(self, |mut subscription| async move {
            let update = subscription.recv().await?;
            Some((update, subscription))
        }))
    }
}

impl<A, S> fmt::Debug for Subscription<A, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription")
            .field("pending_state", &self.pending_state)
            .finish_non_exhaustive()
    }
}
