//! [`PersistentConnection`]: the service, ready only while connected.

use std::{
    fmt,
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use pin_project_lite::pin_project;
use tokio::sync::mpsc::UnboundedSender;
use tower_service::Service;

use crate::{
    BoxError,
    command::Command,
    error::{Closed, NotReady},
    handle::Handle,
    shared::{Shared, WaiterSlot, Word},
    sync::Arc,
};

/// A service that sends each request over the current connection, and is ready only while
/// connected.
///
/// Made by [`PersistentConnectionLayer`](crate::PersistentConnectionLayer). `S` is the
/// connection: the response of the wrapped maker. All clones share one connection and one
/// driver task; each clone keeps its own copy of `S`, so that sending a request touches no
/// shared state but one atomic load.
///
/// # Readiness and stale errors
///
/// - While not connected (connecting, or waiting to retry) `poll_ready` is `Pending`, and the
///   task is woken when a connection arrives. It never returns a connect error: a failed
///   attempt is reported through events, never to a request that did not cause it.
/// - While connected, `poll_ready` is the connection's own `poll_ready`. If that fails, the
///   connection is treated as dead: the driver is told, reports `Disconnected`, and
///   reconnects, and `poll_ready` is `Pending` meanwhile.
/// - `poll_ready` returns `Err` only once the connection is closed: the error is [`Closed`].
/// - `call` always goes to the connection whose `poll_ready` returned `Ready`, even if a newer
///   one has arrived since. If that connection has died, the request fails with its error.
pub struct PersistentConnection<S> {
    shared: Arc<Shared<S>>,
    commands: UnboundedSender<Command>,
    /// This clone's copy of the connection published as `word`.
    connection: Option<S>,
    /// The shared word when this clone last looked: while it is unchanged, `connection` is
    /// current (or, if `None`, known dead to this clone).
    word: Word,
    waiter: WaiterSlot,
}

impl<S> PersistentConnection<S> {
    /// This clone's copy of the connection, if it holds one: the connection of its latest
    /// `poll_ready` that returned `Ready`. See also [`Handle::current_connection`].
    pub fn get_ref(&self) -> Option<&S> {
        self.connection.as_ref()
    }

    /// This clone's copy of the connection, mutably.
    pub fn get_mut(&mut self) -> Option<&mut S> {
        self.connection.as_mut()
    }

    /// The layer's server name (for `failfast`'s errors).
    pub(crate) fn shared_server_name(&self) -> std::sync::Arc<str> {
        self.shared.server_name.clone()
    }

    /// The error of the latest failed attempt (for `failfast`'s errors).
    pub(crate) fn shared_last_error(&self) -> Option<crate::ConnectError> {
        self.shared.stats().last_error
    }
}

impl<S: Clone> PersistentConnection<S> {
    pub(crate) fn new(shared: Arc<Shared<S>>, commands: UnboundedSender<Command>) -> Self {
        Self {
            shared,
            commands,
            connection: None,
            word: Word::UNSEEN,
            waiter: WaiterSlot::new(),
        }
    }

    /// A handle to observe and control the connection (close it, wait for it, ...).
    pub fn handle(&self) -> Handle<S> {
        Handle::new(self.shared.clone(), self.commands.clone())
    }

    #[cfg(test)]
    pub(crate) fn shared(&self) -> &Arc<Shared<S>> {
        &self.shared
    }

    /// The slow path of `poll_ready`: the shared word has changed, or this clone's connection
    /// is dead. Takes the new connection, or registers to be woken.
    fn refresh(&mut self, cx: &mut Context<'_>) -> Readiness {
        loop {
            let word = self.shared.load();
            if word.is_closed() {
                self.connection = None;
                self.word = word;
                return Readiness::Closed;
            }
            if word.is_connected() && word != self.word {
                // A connection this clone has not tried yet.
                let (current, connection) = self.shared.current();
                if current != word {
                    continue;
                }
                self.connection = connection;
                self.word = word;
                return Readiness::Ready;
            }
            // Not connected, or connected to the connection this clone saw fail: drop any old
            // copy and wait for the next change. The waker is stored before the word is read
            // again, so a change in between is never missed.
            self.connection = None;
            self.word = word;
            self.waiter.register(&self.shared, cx.waker());
            if self.shared.load() == word {
                return Readiness::Pending;
            }
        }
    }
}

impl<S: Clone> Clone for PersistentConnection<S> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
            commands: self.commands.clone(),
            connection: self.connection.clone(),
            word: self.word,
            waiter: WaiterSlot::new(),
        }
    }
}

impl<S, Req> Service<Req> for PersistentConnection<S>
where
    S: Service<Req> + Clone,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        // The hot path: one atomic load; while the word is unchanged, only this clone's own
        // copy of the connection is touched.
        if self.shared.load() == self.word {
            if let Some(connection) = &mut self.connection {
                let polled = connection.poll_ready(cx);
                if let Poll::Ready(Ok(())) = polled {
                    return Poll::Ready(Ok(()));
                }
                // Never poll the connection twice: its answer goes to the slow path.
                return self.poll_ready_slow(cx, Some(polled)).into_poll();
            }
        }
        self.poll_ready_slow(cx, None).into_poll()
    }

    #[inline]
    fn call(&mut self, request: Req) -> Self::Future {
        match &mut self.connection {
            Some(connection) => ResponseFuture::sent(connection.call(request)),
            None => ResponseFuture::not_ready(),
        }
    }
}

impl<S: Clone> PersistentConnection<S> {
    /// Everything but "connected, unchanged, and the connection is ready": handles the
    /// connection's `Pending` or error (`polled`, the answer of the poll the fast path just
    /// made at `self.word`), or takes a new connection, or waits.
    #[cold]
    #[inline(never)]
    fn poll_ready_slow<Req>(
        &mut self,
        cx: &mut Context<'_>,
        mut polled: Option<Poll<Result<(), S::Error>>>,
    ) -> Readiness
    where
        S: Service<Req>,
        S::Error: Into<BoxError>,
    {
        loop {
            let polled = match (polled.take(), &mut self.connection) {
                (Some(polled), _) => Some((self.word, polled)),
                (None, Some(connection)) if self.shared.load() == self.word => {
                    Some((self.word, connection.poll_ready(cx)))
                }
                (None, _) => None,
            };
            match polled {
                Some((_, Poll::Ready(Ok(())))) => return Readiness::Ready,
                Some((word, Poll::Pending)) => {
                    // Also wait on the shared state: a connection that registers no waker
                    // (hyper's HTTP/2) must not hide a disconnect from us.
                    self.waiter.register(&self.shared, cx.waker());
                    if self.shared.load() == word {
                        return Readiness::Pending;
                    }
                }
                Some((word, Poll::Ready(Err(error)))) => {
                    // This connection is dead. Tell the driver (it ignores the report if it
                    // has moved on) and wait for the next one.
                    self.connection = None;
                    let _ = self.commands.send(Command::Failed {
                        word,
                        error: error.into(),
                    });
                }
                None => {}
            }
            match self.refresh(cx) {
                Readiness::Ready => {}
                other => return other,
            }
        }
    }
}

/// What the slow path of `poll_ready` found. One byte, so that it comes back in a register: a
/// `Poll<Result<(), BoxError>>` is two words and comes back through memory, and the fast path,
/// which joins it, then paid a store and a load of its own answer on every request (see
/// BENCHMARKS.md, "Hot path").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Readiness {
    Ready,
    Pending,
    Closed,
}

impl Readiness {
    #[inline(always)]
    fn into_poll(self) -> Poll<Result<(), BoxError>> {
        match self {
            Self::Ready => Poll::Ready(Ok(())),
            Self::Pending => Poll::Pending,
            Self::Closed => Poll::Ready(Err(Closed::new().into())),
        }
    }
}

impl<S> Drop for PersistentConnection<S> {
    fn drop(&mut self) {
        self.waiter.release(&self.shared);
    }
}

impl<S> fmt::Debug for PersistentConnection<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PersistentConnection")
            .field("server_name", &self.shared.server_name)
            .field("state", &self.shared.load())
            .field("has_connection", &self.connection.is_some())
            .finish()
    }
}

// === ResponseFuture ===

pin_project! {
    /// The response future of [`PersistentConnection`]: the connection's own future, with its
    /// error boxed.
    pub struct ResponseFuture<F> {
        #[pin]
        kind: Kind<F>,
    }
}

pin_project! {
    // `NotReady` carries no error (it makes its zero-sized one when polled): a variant holding
    // an `Option<BoxError>` gave every response future a drop that may call into the box's
    // vtable, and the caller more to build, check and keep per request (about 0.3 ns of the
    // hot path's overhead over a bare connection; see BENCHMARKS.md).
    #[project = KindProj]
    enum Kind<F> {
        Sent { #[pin] future: F },
        NotReady,
    }
}

impl<F> ResponseFuture<F> {
    #[inline]
    fn sent(future: F) -> Self {
        Self {
            kind: Kind::Sent { future },
        }
    }

    /// The future of a `call` made without a connection: it fails with [`NotReady`] (a
    /// zero-sized error: boxing it does not allocate).
    ///
    /// Cold, so that the compiler keeps it a branch apart. Merged into `call`'s path, it had
    /// the response future's variant computed from the connection's `Option` tag without a
    /// branch (the niche arithmetic `2 - tag`), so every request's future waited for that
    /// load; now the connected path writes a constant variant (0.1–0.4 ns of a 2 ns request
    /// in `benches/ready_call.rs`, depending on the build; see BENCHMARKS.md).
    #[cold]
    fn not_ready() -> Self {
        Self {
            kind: Kind::NotReady,
        }
    }
}

impl<F, T, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Sent { future } => future.poll(cx).map_err(Into::into),
            KindProj::NotReady => Poll::Ready(Err(NotReady.into())),
        }
    }
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            Kind::Sent { .. } => "Sent",
            Kind::NotReady => "NotReady",
        };
        f.debug_struct("ResponseFuture")
            .field("kind", &kind)
            .finish()
    }
}
