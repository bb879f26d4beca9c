//! [`Handle`]: observe and control a persistent connection; and its [`State`].

use std::{
    fmt,
    future::{Future, poll_fn},
    task::Poll,
};

use futures_util::Stream;
use tokio::sync::mpsc::UnboundedSender;

use crate::{
    command::Command,
    error::{Closed, ConnectError},
    shared::{Shared, WaiterSlot},
    state::State,
    stats::Stats,
    sync::Arc,
};

/// A handle to a persistent connection: wait for it, inspect it, close it.
///
/// Get one from [`PersistentConnection::handle`](crate::PersistentConnection::handle). Handles
/// are cheap to clone, and keep the connection alive like service clones do: the driver stops
/// by itself once every service clone and handle is gone.
///
/// The futures its methods return own what they need (they are `'static`), so they can be
/// spawned; each of them resolves with an error once the connection is closed, never hangs.
pub struct Handle<S> {
    shared: Arc<Shared<S>>,
    commands: UnboundedSender<Command>,
}

impl<S> Handle<S> {
    pub(crate) fn new(shared: Arc<Shared<S>>, commands: UnboundedSender<Command>) -> Self {
        Self { shared, commands }
    }
}

impl<S: Clone + Send + 'static> Handle<S> {
    /// The current connection: resolves at once if connected, else with the next connection.
    ///
    /// # Errors
    ///
    /// [`Closed`] once the persistent connection is closed.
    pub fn connected(&self) -> impl Future<Output = Result<S, Closed>> + Send + use<S> {
        let shared = self.shared.clone();
        wait(self.shared.clone(), move || {
            let (word, connection) = shared.current();
            if word.is_closed() {
                return Some(Err(Closed::new()));
            }
            connection.map(Ok)
        })
    }

    /// The current connection, if connected.
    pub fn current_connection(&self) -> Option<S> {
        self.shared.current().1
    }

    /// The current connection if connected, else the outcome of the next attempt to finish.
    ///
    /// # Errors
    ///
    /// The [`ConnectError`] of that attempt. Once the persistent connection is closed: the
    /// error the [retry policy](crate::retry::RetryPolicy) gave up with, if it did, else one of kind
    /// [`Closed`](crate::ConnectErrorKind::Closed).
    pub fn connected_or_failed_to_connect(
        &self,
    ) -> impl Future<Output = Result<S, ConnectError>> + Send + use<S> {
        let shared = self.shared.clone();
        let (finished_before, _) = shared.attempts();
        wait(self.shared.clone(), move || {
            let (word, connection) = shared.current();
            if word.is_closed() {
                return Some(Err(shared.gave_up().unwrap_or_else(ConnectError::closed)));
            }
            if let Some(connection) = connection {
                return Some(Ok(connection));
            }
            match shared.attempts() {
                (finished, Some(error)) if finished > finished_before => Some(Err(error)),
                _ => None,
            }
        })
    }

    /// Closes the persistent connection: stops reconnecting, cancels an attempt in flight,
    /// drops the shared copy of the connection, and ends the driver task.
    ///
    /// Closing starts when this is called, whether or not the returned future is polled:
    /// [`is_closed`](Self::is_closed) is `true` right after, and every service clone's next
    /// `poll_ready` returns [`Closed`]. Requests already sent finish or fail on their own. The
    /// future resolves once the driver task has ended (like [`closed`](Self::closed)); calling
    /// `close` again waits for the same completion.
    pub fn close(&self) -> impl Future<Output = ()> + Send + use<S> {
        let (first, connection) = self.shared.close();
        if first {
            // Tell the driver before dropping the connection: a connection that shuts down
            // when its last copy goes fires its close signal, and the driver must see the
            // `Close` first (it reads commands before signals) rather than start a new cycle.
            let _ = self.commands.send(Command::Close);
        }
        drop(connection);
        self.closed()
    }

    /// Resolves once the persistent connection is closed and its driver task has ended.
    pub fn closed(&self) -> impl Future<Output = ()> + Send + use<S> {
        let shared = self.shared.clone();
        wait(self.shared.clone(), move || shared.is_ended().then_some(()))
    }

    /// Whether [`close`](Self::close) has been called (or the driver has stopped).
    pub fn is_closed(&self) -> bool {
        self.shared.load().is_closed()
    }

    /// Stops reconnecting once the current connection ends, then closes. If not connected
    /// now, closes at once.
    pub fn close_after_current(&self) {
        let _ = self.commands.send(Command::CloseAfterCurrent);
    }

    /// Skips the rest of the current retry delay and attempts at once; if an attempt is
    /// running, the wait after it (should it fail) is skipped. Does nothing while connected.
    /// Like gRPC's `ResetConnectBackoff`: for when you know the server is back.
    pub fn reconnect_now(&self) {
        let _ = self.commands.send(Command::ReconnectNow);
    }

    /// Counters: attempts, failures, connections, disconnections, the current connection's
    /// age, the last error and the delay chosen for the next attempt.
    ///
    /// ```
    /// use std::convert::Infallible;
    /// use persistent_connection::PersistentConnectionLayer;
    /// use tower::{Layer, service_fn};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let maker = service_fn(|_: &'static str| async {
    ///     Ok::<_, Infallible>(service_fn(|n: u32| async move { Ok::<_, Infallible>(n) }))
    /// });
    /// let svc = PersistentConnectionLayer::fixed_address("replica-1").layer(maker);
    /// let handle = svc.handle();
    /// handle.connected().await.unwrap();
    ///
    /// let stats = handle.stats();
    /// assert_eq!((stats.attempts, stats.failed_attempts, stats.connections), (1, 0, 1));
    /// assert!(stats.connected_for.is_some() && stats.last_error.is_none());
    /// # }
    /// ```
    pub fn stats(&self) -> Stats {
        self.shared.stats()
    }

    /// What the persistent connection is doing now.
    pub fn state(&self) -> State {
        if self.shared.load().is_closed() {
            return State::Closed;
        }
        self.shared.state()
    }

    /// The state now, then every change of it: a stream that ends after [`State::Closed`].
    ///
    /// It is a watch, not a log: a reader slower than the changes sees the latest state, and
    /// may miss short-lived ones in between (subscribe to an [`EventBus`](crate::observe::EventBus) for
    /// every event). It holds no connection and does not keep the persistent connection alive.
    ///
    /// ```
    /// use std::convert::Infallible;
    /// use futures_util::StreamExt;
    /// use persistent_connection::{PersistentConnectionLayer, State};
    /// use tower::{Layer, service_fn};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let maker = service_fn(|_: &'static str| async {
    ///     Ok::<_, Infallible>(service_fn(|n: u32| async move { Ok::<_, Infallible>(n) }))
    /// });
    /// let svc = PersistentConnectionLayer::fixed_address("replica-1").layer(maker);
    /// let handle = svc.handle();
    /// let mut states = handle.state_changes();
    /// assert_eq!(states.next().await, Some(State::Connecting));
    /// assert_eq!(states.next().await, Some(State::Connected));
    /// handle.close().await;
    /// assert_eq!(states.next().await, Some(State::Closed));
    /// assert_eq!(states.next().await, None);
    /// # }
    /// ```
    pub fn state_changes(&self) -> impl Stream<Item = State> + Send + Unpin + 'static + use<S> {
        crate::state::changes(self.shared.watch_state())
    }
}

impl<S> Clone for Handle<S> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
            commands: self.commands.clone(),
        }
    }
}

impl<S> fmt::Debug for Handle<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Handle")
            .field("server_name", &self.shared.server_name)
            .field("state", &self.shared.load())
            .finish()
    }
}

/// Resolves with the first `Some` that `check` returns, re-checking after every change of the
/// shared state.
async fn wait<S, T>(shared: Arc<Shared<S>>, mut check: impl FnMut() -> Option<T>) -> T {
    let mut waiter = Waiter {
        shared,
        slot: WaiterSlot::new(),
    };
    poll_fn(|cx| {
        if let Some(value) = check() {
            return Poll::Ready(value);
        }
        // Store the waker, then look again: a change in between is not missed.
        waiter.slot.register(&waiter.shared, cx.waker());
        match check() {
            Some(value) => Poll::Ready(value),
            None => Poll::Pending,
        }
    })
    .await
}

/// A handle future's waiter slot, freed when the future is dropped.
struct Waiter<S> {
    shared: Arc<Shared<S>>,
    slot: WaiterSlot,
}

impl<S> Drop for Waiter<S> {
    fn drop(&mut self) {
        self.slot.release(&self.shared);
    }
}
