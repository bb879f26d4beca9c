//! The maker and the hooks with their types erased, so the driver is generic over the address
//! `A` and the connection `S` only. The layer's builder keeps the concrete types closure
//! inference needs; `layer()` erases them here. The cost is one boxed future per attempt (the
//! maker's), per connection (the close signal's) and per health check; none per request.

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use tower_service::Service;

use crate::{
    BoxError,
    close::{CloseReason, CloseSignal},
    event::{Event, OnEvent},
    health::HealthCheck,
    state::State,
};

/// A boxed future.
pub(crate) type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// The maker of connections `S` for addresses `A`.
pub(crate) struct Maker<A, S>(Box<dyn MakeConnection<A, S>>);

trait MakeConnection<A, S>: Send {
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>>;
    fn call(&mut self, address: A) -> BoxFuture<Result<S, BoxError>>;
}

impl<A, M> MakeConnection<A, M::Response> for M
where
    M: Service<A> + Send,
    M::Error: Into<BoxError>,
    M::Future: Send + 'static,
{
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Service::poll_ready(self, cx).map_err(Into::into)
    }

    fn call(&mut self, address: A) -> BoxFuture<Result<M::Response, BoxError>> {
        let future = Service::call(self, address);
        Box::pin(async move { future.await.map_err(Into::into) })
    }
}

impl<A, S> Maker<A, S> {
    pub(crate) fn new<M>(maker: M) -> Self
    where
        M: Service<A, Response = S> + Send + 'static,
        M::Error: Into<BoxError>,
        M::Future: Send + 'static,
    {
        Self(Box::new(maker))
    }
}

impl<A, S> Service<A> for Maker<A, S> {
    type Response = S;
    type Error = BoxError;
    type Future = BoxFuture<Result<S, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, address: A) -> Self::Future {
        self.0.call(address)
    }
}

/// The event hook (`on_event` and `on_state`).
pub(crate) struct Hook<A, S>(Arc<dyn OnEvent<A, S>>);

impl<A, S> Hook<A, S> {
    pub(crate) fn new(hook: Arc<dyn OnEvent<A, S>>) -> Self {
        Self(hook)
    }
}

impl<A: 'static, S: 'static> OnEvent<A, S> for Hook<A, S> {
    fn on_event(&self, event: &Event<A, S>) {
        self.0.on_event(event);
    }

    fn on_state(&self, state: State) {
        self.0.on_state(state);
    }
}

/// The close signal.
pub(crate) struct Signal<S>(Arc<dyn ErasedSignal<S>>);

trait ErasedSignal<S>: Send + Sync {
    fn closed(&self, connection: &S) -> BoxFuture<CloseReason>;
}

impl<S, C: CloseSignal<S>> ErasedSignal<S> for C {
    fn closed(&self, connection: &S) -> BoxFuture<CloseReason> {
        Box::pin(CloseSignal::closed(self, connection))
    }
}

impl<S> Signal<S> {
    pub(crate) fn new<C: CloseSignal<S>>(signal: Arc<C>) -> Self {
        Self(signal)
    }

    /// The future of `connection`'s close.
    pub(crate) fn closed(&self, connection: &S) -> BoxFuture<CloseReason> {
        self.0.closed(connection)
    }
}

impl<S> Clone for Signal<S> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

/// The health check.
pub(crate) struct Check<S>(Arc<dyn ErasedCheck<S>>);

trait ErasedCheck<S>: Send + Sync {
    fn check(&self, connection: &S) -> BoxFuture<Result<(), BoxError>>;
}

impl<S, H: HealthCheck<S>> ErasedCheck<S> for H {
    fn check(&self, connection: &S) -> BoxFuture<Result<(), BoxError>> {
        Box::pin(HealthCheck::check(self, connection))
    }
}

impl<S> Check<S> {
    pub(crate) fn new<H: HealthCheck<S>>(check: Arc<H>) -> Self {
        Self(check)
    }

    /// Starts a check of `connection`.
    pub(crate) fn check(&self, connection: &S) -> BoxFuture<Result<(), BoxError>> {
        self.0.check(connection)
    }
}

impl<S> Clone for Check<S> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}
