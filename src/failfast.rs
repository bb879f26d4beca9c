//! Fail fast by choice: once a service has been unready for longer than a set time, answer
//! requests at once with [`Unavailable`] instead of letting them wait.
//!
//! A [`PersistentConnection`] never fails a request because the server is down: requests
//! wait until a connection is back. That is right for most callers, and wrong for one that
//! would rather answer its own caller now (a front end with a deadline, a request with a
//! fallback). [`FailFastLayer`] is for them. While the service below it is unready for less
//! than `max_unready`, requests wait as before. After that, its `poll_ready` is ready and each
//! request is answered with an [`Unavailable`] error naming the server and carrying the last
//! connect error: the one place a connect error reaches a caller, because the caller asked
//! for it. As soon as the service below is ready again, requests go to it.
//!
//! The service below is still polled on every `poll_ready`, so it keeps its place in the
//! waiting list and the first poll after the reconnection ends the fail-fast period. Put
//! the layer **below** a [`Buffer`](tower::buffer::Buffer) (so the buffer's worker keeps
//! polling, and the requests queued during an outage are answered at once when it starts)
//! and above the persistent connection, or above a balancer; linkerd2-proxy's `failfast`
//! module is the model.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use persistent_connection::{
//!     BoxError, PersistentConnectionLayer,
//!     failfast::{FailFastLayer, Unavailable},
//! };
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), BoxError> {
//! # tokio::time::pause();
//! // A server that is down: every attempt fails.
//! let maker = service_fn(|_: &'static str| async {
//!     Err::<tower::util::BoxCloneService<(), (), BoxError>, _>("connection refused")
//! });
//! let svc = ServiceBuilder::new()
//!     .buffer(64)
//!     .layer(FailFastLayer::new(Duration::from_secs(2)))
//!     .layer(PersistentConnectionLayer::fixed_address("10.0.0.7:443").server_name("billing"))
//!     .service(maker);
//!
//! // After 2 s without a connection, the request is answered with `Unavailable`.
//! let error = svc.oneshot(()).await.unwrap_err();
//! let unavailable = Unavailable::find(&*error).expect("failed fast");
//! assert_eq!(unavailable.server_name(), "billing");
//! assert!(unavailable.last_connect_error().is_some());
//! println!("{unavailable}");
//! # Ok(()) }
//! ```
//!
//! [`PersistentConnection`]: crate::PersistentConnection

use std::{
    error::Error,
    fmt,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
    time::Duration,
};

use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tower_layer::Layer;
use tower_service::Service;

use crate::{BoxError, ConnectError, PersistentConnection};

/// A [`Layer`] that makes a service answer [`Unavailable`] once it has been unready for longer
/// than a set time. See the [module](self).
#[derive(Clone, Copy, Debug)]
pub struct FailFastLayer {
    max_unready: Duration,
}

impl FailFastLayer {
    /// Requests wait for at most `max_unready` of continuous unreadiness; after that they are
    /// answered with [`Unavailable`] until the service is ready again.
    pub fn new(max_unready: Duration) -> Self {
        Self { max_unready }
    }
}

impl<S> Layer<S> for FailFastLayer {
    type Service = FailFast<S>;

    fn layer(&self, inner: S) -> FailFast<S> {
        FailFast::new(inner, self.max_unready)
    }
}

/// What [`FailFast`] tells a caller about the service it failed fast for: implemented by
/// [`PersistentConnection`]; implement it for other services (a balancer of persistent
/// connections, say) to use them under [`FailFast`].
pub trait Diagnose {
    /// The name of the server, for the error's message.
    fn server_name(&self) -> Arc<str>;

    /// The error of the latest failed connection attempt, if there was one.
    fn last_connect_error(&self) -> Option<ConnectError>;
}

impl<S> Diagnose for PersistentConnection<S> {
    fn server_name(&self) -> Arc<str> {
        self.shared_server_name()
    }

    fn last_connect_error(&self) -> Option<ConnectError> {
        self.shared_last_error()
    }
}

/// A service that answers [`Unavailable`] once the service it wraps has been unready for
/// longer than a set time. Made by [`FailFastLayer`]; see the [module](self).
///
/// Each clone keeps its own clock.
pub struct FailFast<S> {
    inner: S,
    /// `None`: never fails fast (the balanced client without the setting).
    max_unready: Option<Duration>,
    /// Set when `inner` is first seen unready, cleared when it is ready.
    unready: Option<Unready>,
}

struct Unready {
    since: Instant,
    /// Fires `max_unready` after `since`.
    deadline: Pin<Box<Sleep>>,
    /// Whether the deadline has passed: `poll_ready` is ready, and `call` fails fast.
    failing: bool,
}

impl<S> FailFast<S> {
    /// Wraps `inner`; see [`FailFastLayer::new`].
    pub fn new(inner: S, max_unready: Duration) -> Self {
        Self {
            inner,
            max_unready: Some(max_unready),
            unready: None,
        }
    }

    /// Wraps `inner` without ever failing fast (so that one type serves both settings).
    pub(crate) fn never(inner: S) -> Self {
        Self {
            inner,
            max_unready: None,
            unready: None,
        }
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Whether requests are being answered with [`Unavailable`] now.
    pub fn is_failing_fast(&self) -> bool {
        self.unready.as_ref().is_some_and(|unready| unready.failing)
    }
}

impl<S: Clone> Clone for FailFast<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            max_unready: self.max_unready,
            unready: None,
        }
    }
}

impl<S: fmt::Debug> fmt::Debug for FailFast<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FailFast")
            .field("inner", &self.inner)
            .field("max_unready", &self.max_unready)
            .field("failing_fast", &self.is_failing_fast())
            .finish()
    }
}

impl<S, Req> Service<Req> for FailFast<S>
where
    S: Service<Req> + Diagnose,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        match self.inner.poll_ready(cx) {
            Poll::Ready(Ok(())) => {
                if self.unready.take().is_some_and(|unready| unready.failing) {
                    tracing::info!(
                        persistent_connection_to = %self.inner.server_name(),
                        "ready again: requests no longer fail fast"
                    );
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(error)) => Poll::Ready(Err(error.into())),
            Poll::Pending => {
                let Some(max_unready) = self.max_unready else {
                    return Poll::Pending;
                };
                let unready = self.unready.get_or_insert_with(|| Unready {
                    since: Instant::now(),
                    deadline: Box::pin(tokio::time::sleep(max_unready)),
                    failing: false,
                });
                if !unready.failing {
                    ready!(unready.deadline.as_mut().poll(cx));
                    unready.failing = true;
                    tracing::info!(
                        persistent_connection_to = %self.inner.server_name(),
                        unready_for = ?max_unready,
                        "unready for too long: requests fail fast until it is ready"
                    );
                }
                // Ready, so that `call` answers the request at once; `inner` stays
                // registered for its readiness, which ends this on a later poll.
                Poll::Ready(Ok(()))
            }
        }
    }

    fn call(&mut self, request: Req) -> Self::Future {
        match &self.unready {
            Some(unready) if unready.failing => ResponseFuture::failed(Unavailable {
                server_name: self.inner.server_name(),
                unready_for: unready.since.elapsed(),
                last_connect_error: self.inner.last_connect_error(),
            }),
            _ => ResponseFuture::inner(self.inner.call(request)),
        }
    }
}

pin_project! {
    /// The response future of [`FailFast`].
    pub struct ResponseFuture<F> {
        #[pin]
        inner: Option<F>,
        failed: Option<Unavailable>,
    }
}

impl<F> ResponseFuture<F> {
    fn inner(future: F) -> Self {
        Self {
            inner: Some(future),
            failed: None,
        }
    }

    fn failed(unavailable: Unavailable) -> Self {
        Self {
            inner: None,
            failed: Some(unavailable),
        }
    }
}

impl<F: fmt::Debug> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("inner", &self.inner)
            .field("failed", &self.failed)
            .finish()
    }
}

impl<F, T, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        match this.inner.as_pin_mut() {
            Some(inner) => inner.poll(cx).map_err(Into::into),
            None => Poll::Ready(Err(match this.failed.take() {
                Some(unavailable) => unavailable.into(),
                // Polled again after it answered: say so rather than panic.
                None => "fail-fast response polled after it completed".into(),
            })),
        }
    }
}

/// The error of a request answered at once because the service had been unready for too
/// long: it names the server and carries the last connect error (its [`source`]).
///
/// Through a `Buffer` it arrives wrapped; [`Unavailable::find`] looks through the chain.
///
/// [`source`]: Error::source
#[derive(Clone)]
pub struct Unavailable {
    server_name: Arc<str>,
    unready_for: Duration,
    last_connect_error: Option<ConnectError>,
}

impl Unavailable {
    /// The server that was unavailable.
    pub fn server_name(&self) -> &str {
        &self.server_name
    }

    /// How long the service had been unready when the request came.
    pub fn unready_for(&self) -> Duration {
        self.unready_for
    }

    /// The error of the latest failed connection attempt, if there was one.
    pub fn last_connect_error(&self) -> Option<&ConnectError> {
        self.last_connect_error.as_ref()
    }

    /// The `Unavailable` in `error` or anywhere in its chain of sources, as a `Buffer` wraps it.
    pub fn find<'a>(error: &'a (dyn Error + 'static)) -> Option<&'a Self> {
        crate::error::find_in_chain(error)
    }
}

impl fmt::Debug for Unavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Unavailable")
            .field("server_name", &self.server_name)
            .field("unready_for", &self.unready_for)
            .field("last_connect_error", &self.last_connect_error)
            .finish()
    }
}

impl fmt::Display for Unavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} unavailable: not ready for {:.1?}",
            self.server_name, self.unready_for
        )?;
        match &self.last_connect_error {
            Some(error) => write!(f, "; last connect attempt: {error}"),
            None => f.write_str("; no connect attempt has failed yet"),
        }
    }
}

impl Error for Unavailable {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        self.last_connect_error
            .as_ref()
            .map(|error| error as &(dyn Error + 'static))
    }
}
