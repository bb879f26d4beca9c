//! Marking a connection dead on a response: [`ClassifyLayer`], a predicate on each request's
//! outcome that ends the connection it came from.
//!
//! A connection's `poll_ready` error always ends it, and its [close
//! signal](crate::PersistentConnectionLayer::close_signal) ends it when the transport closes.
//! Some dead connections do neither: a proxy whose upstream is gone answers `502 Bad Gateway`
//! to every request, an `Ok` response over a healthy socket. A disconnect classifier tells the
//! layer about those. It is a predicate on each request's outcome (`Ok(&response)` or
//! `Err(&error)`) that returns `true` when the connection it came from is dead.
//!
//! The classifier lives *inside* the maker, as a wrapper around each connection, so the
//! persistent connection's type and hot path stay as they are:
//!
//! - [`ClassifyLayer`] wraps the maker in a [`Classify`], whose connections are
//!   [`Classified`]: the maker's connection plus a dead-mark shared by all its clones.
//! - Each response future runs the predicate on the outcome and, when it says `true`, marks the
//!   connection dead. The outcome itself reaches the caller unchanged: the `502` that revealed
//!   the problem is still the answer to that request.
//! - Once marked, the connection's `poll_ready` fails with [`MarkedDead`], so no new request
//!   goes to it, and its close signal ([`Classified::closed`]) fires, so the driver reports
//!   `Disconnected` without waiting for a request. It reconnects by the usual rules: at once
//!   if the connection lived longer than the retry delay, else after the rest of the delay.
//!
//! Wire the close signal on the
//! [`PersistentConnectionLayer`](crate::PersistentConnectionLayer) with
//! `.close_signal(Classified::closed)` when the connection has no close signal of its own, or
//! with `.close_signal(classify::close_signal(inner_signal))` when it has one (such as
//! [`Http2Connection::closed`](crate::http::Http2Connection::closed)): the connection then ends
//! with whichever comes first. Without a close signal the mark is still noticed, by the next
//! `poll_ready`.
//!
//! A panic in the predicate is caught and logged at `WARN`; the outcome then counts as "not
//! dead", and the caller still gets it.
//!
//! # Example
//!
//! Replica 0 sits behind a proxy that answers `502` to everything; replica 1 is fine. The
//! classifier marks the connection to replica 0 dead on its first answer, and the layer moves
//! to replica 1:
//!
//! ```
//! use std::{convert::Infallible, time::Duration};
//! use persistent_connection::{
//!     BoxError, PersistentConnectionLayer,
//!     classify::{Classified, ClassifyLayer},
//! };
//! use tower::{Service, ServiceBuilder, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), BoxError> {
//! let maker = service_fn(|replica: u32| async move {
//!     let connection = service_fn(move |_request: &'static str| async move {
//!         Ok::<u16, Infallible>(if replica == 0 { 502 } else { 200 })
//!     });
//!     Ok::<_, Infallible>(connection)
//! });
//!
//! let mut svc = ServiceBuilder::new()
//!     .layer(
//!         PersistentConnectionLayer::round_robin([0, 1])
//!             .retry_delay(|| Duration::from_secs(1))
//!             // The dead-mark is this connection's close signal.
//!             .close_signal(Classified::closed),
//!     )
//!     .layer(ClassifyLayer::new(|outcome: Result<&u16, &Infallible>| {
//!         matches!(outcome, Ok(502))
//!     }))
//!     .service(maker);
//! let to_replica_0 = svc.handle().connected().await?;
//!
//! // The 502 still reaches the caller, and marks the connection to replica 0 dead...
//! assert_eq!(svc.ready().await?.call("GET /").await?, 502);
//! assert!(to_replica_0.is_marked_dead());
//!
//! // ...so the layer reconnects, to replica 1 (after the rest of the retry delay: the
//! // connection was young).
//! assert_eq!(svc.ready().await?.call("GET /").await?, 200);
//! # Ok(()) }
//! ```
//!
//! # HTTP/2 behind a proxy
//!
//! [`PersistentConnectionLayer::http2`](crate::PersistentConnectionLayer::http2) applies the
//! layer to the plain connector. With a classifier, apply the layers yourself: wrap the
//! connector in the [`ClassifyLayer`], and combine its dead-mark with the connection's own
//! close signal. Set the connector's [origin](crate::http::Http2Connector::origin) for
//! path-only requests (tonic's): `http2` would have used the server name.
//!
//! ```no_run
//! # #[cfg(feature = "hyper")]
//! # mod hyper_only {
//! use std::net::SocketAddr;
//! use bytes::Bytes;
//! use http::{Response, StatusCode};
//! use http_body_util::Empty;
//! use hyper::body::Incoming;
//! use persistent_connection::{
//!     BoxError, PersistentConnectionLayer,
//!     classify::{self, ClassifyLayer},
//!     http::{Http2Connection, Http2Connector},
//! };
//! use tower::{Service, ServiceBuilder, ServiceExt};
//!
//! # pub async fn run(replica: SocketAddr) -> Result<(), BoxError> {
//! let mut svc = ServiceBuilder::new()
//!     .layer(
//!         PersistentConnectionLayer::fixed_address(replica)
//!             .server_name("billing")
//!             .close_signal(classify::close_signal(Http2Connection::closed)),
//!     )
//!     .layer(ClassifyLayer::new(
//!         |outcome: Result<&Response<Incoming>, &BoxError>| {
//!             matches!(outcome, Ok(response) if response.status() == StatusCode::BAD_GATEWAY)
//!         },
//!     ))
//!     .service(Http2Connector::<Empty<Bytes>>::new().origin("http://billing"));
//!
//! let request = http::Request::get("/health").body(Empty::new())?;
//! let response = svc.ready().await?.call(request).await?;
//! println!("{}", response.status());
//! # Ok(()) }
//! # }
//! # #[cfg(feature = "hyper")]
//! # #[tokio::main]
//! # async fn main() {
//! #     hyper_only::run("127.0.0.1:8080".parse().unwrap()).await.unwrap();
//! # }
//! # #[cfg(not(feature = "hyper"))]
//! # fn main() {}
//! ```

use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll, ready},
};

use pin_project_lite::pin_project;
use tokio::sync::watch;
use tower_layer::Layer;
use tower_service::Service;

use crate::{
    BoxError,
    close::{CloseReason, CloseSignal},
};

// === ClassifyLayer ===

/// Wraps a maker in a [`Classify`]: each of its connections becomes a [`Classified`]
/// connection, marked dead when `predicate` says so of a request's outcome.
///
/// `predicate` is a `Fn(Result<&Response, &Error>) -> bool` (the connection's response and
/// error types), returning `true` when the connection is dead. One predicate serves every
/// connection of every maker the layer wraps. Annotate the closure's argument, e.g.
/// `|outcome: Result<&http::Response<Incoming>, &BoxError>|`: the layer learns the types only
/// when the connection is used. See the [module docs](self).
pub struct ClassifyLayer<P> {
    predicate: Arc<P>,
}

impl<P> ClassifyLayer<P> {
    /// A layer that marks a connection dead when `predicate` returns `true` for the outcome of
    /// a request sent over it.
    pub fn new(predicate: P) -> Self {
        Self {
            predicate: Arc::new(predicate),
        }
    }
}

impl<M, P> Layer<M> for ClassifyLayer<P> {
    type Service = Classify<M, P>;

    fn layer(&self, maker: M) -> Self::Service {
        Classify {
            maker,
            predicate: self.predicate.clone(),
        }
    }
}

impl<P> Clone for ClassifyLayer<P> {
    fn clone(&self) -> Self {
        Self {
            predicate: self.predicate.clone(),
        }
    }
}

impl<P> fmt::Debug for ClassifyLayer<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClassifyLayer").finish_non_exhaustive()
    }
}

// === Classify ===

/// A maker whose connections are [`Classified`]: made by [`ClassifyLayer`].
///
/// `poll_ready` and `call` go to the wrapped maker `M`; each connection it makes gets a fresh
/// dead-mark.
pub struct Classify<M, P> {
    maker: M,
    predicate: Arc<P>,
}

impl<M, P> Classify<M, P> {
    /// Wraps `maker`; its connections are marked dead when `predicate` says so.
    pub fn new(maker: M, predicate: P) -> Self {
        Self {
            maker,
            predicate: Arc::new(predicate),
        }
    }

    /// The wrapped maker.
    pub fn get_ref(&self) -> &M {
        &self.maker
    }

    /// The wrapped maker, mutably.
    pub fn get_mut(&mut self) -> &mut M {
        &mut self.maker
    }

    /// The wrapped maker, unwrapped.
    pub fn into_inner(self) -> M {
        self.maker
    }
}

impl<A, M, P> Service<A> for Classify<M, P>
where
    M: Service<A>,
{
    type Response = Classified<M::Response, P>;
    type Error = M::Error;
    type Future = MakeFuture<M::Future, P>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), M::Error>> {
        self.maker.poll_ready(cx)
    }

    fn call(&mut self, address: A) -> Self::Future {
        MakeFuture {
            future: self.maker.call(address),
            predicate: self.predicate.clone(),
        }
    }
}

impl<M: Clone, P> Clone for Classify<M, P> {
    fn clone(&self) -> Self {
        Self {
            maker: self.maker.clone(),
            predicate: self.predicate.clone(),
        }
    }
}

impl<M: fmt::Debug, P> fmt::Debug for Classify<M, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Classify")
            .field("maker", &self.maker)
            .finish_non_exhaustive()
    }
}

pin_project! {
    /// The response future of [`Classify`]: the maker's future, whose connection is wrapped
    /// in a [`Classified`] with a fresh dead-mark.
    pub struct MakeFuture<F, P> {
        #[pin]
        future: F,
        predicate: Arc<P>,
    }
}

impl<F, S, E, P> Future for MakeFuture<F, P>
where
    F: Future<Output = Result<S, E>>,
{
    type Output = Result<Classified<S, P>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let connection = ready!(this.future.poll(cx))?;
        Poll::Ready(Ok(Classified::with_shared_predicate(
            connection,
            this.predicate.clone(),
        )))
    }
}

impl<F, P> fmt::Debug for MakeFuture<F, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MakeFuture").finish_non_exhaustive()
    }
}

// === Classified ===

/// A connection whose requests' outcomes go through a disconnect classifier: once the
/// predicate says "dead", `poll_ready` fails with [`MarkedDead`] and [`closed`](Self::closed)
/// resolves.
///
/// Made by [`Classify`] (or [`Classified::new`]). Clones share the connection's one dead-mark
/// and the predicate. `call` returns the inner connection's outcome unchanged, with the error
/// boxed, also for the request whose outcome marked the connection dead.
pub struct Classified<S, P> {
    inner: S,
    shared: Arc<Shared<P>>,
}

/// What the clones of one [`Classified`] connection share.
struct Shared<P> {
    predicate: Arc<P>,
    /// Set (after `why`) once the connection is marked dead: the check in `poll_ready`.
    dead: AtomicBool,
    /// Why the connection was marked dead, once it was: the close signal waits on it.
    why: watch::Sender<Option<Why>>,
}

impl<P> Shared<P> {
    /// Marks the connection dead; the first reason given is kept.
    fn mark(&self, why: impl FnOnce() -> Why) {
        if self.dead.load(Ordering::Acquire) {
            return;
        }
        let why = why();
        tracing::debug!(reason = %why, "the disconnect classifier marked the connection dead");
        self.why.send_if_modified(|current| {
            if current.is_some() {
                return false;
            }
            *current = Some(why);
            true
        });
        // After `why`: whoever sees `dead` also finds the reason.
        self.dead.store(true, Ordering::Release);
    }

    fn marked_dead(&self) -> MarkedDead {
        MarkedDead {
            why: self.why.borrow().clone(),
        }
    }
}

impl<S, P> Classified<S, P> {
    /// Wraps `connection` with a fresh dead-mark and `predicate`.
    pub fn new(connection: S, predicate: P) -> Self {
        Self::with_shared_predicate(connection, Arc::new(predicate))
    }

    fn with_shared_predicate(connection: S, predicate: Arc<P>) -> Self {
        Self {
            inner: connection,
            shared: Arc::new(Shared {
                predicate,
                dead: AtomicBool::new(false),
                why: watch::Sender::new(None),
            }),
        }
    }

    /// The wrapped connection.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Whether the classifier has marked this connection dead.
    pub fn is_marked_dead(&self) -> bool {
        self.shared.dead.load(Ordering::Acquire)
    }

    /// Resolves once the connection has been marked dead (at once if it already is), with a
    /// [`CloseReason::Error`] whose cause is the [`MarkedDead`] error: it says whether a
    /// response or an error marked it, and the error's text.
    ///
    /// The close signal for
    /// [`PersistentConnectionLayer::close_signal`](crate::PersistentConnectionLayer::close_signal)
    /// when the inner connection has none: `.close_signal(Classified::closed)`. When it has one,
    /// use [`close_signal`] to wait for both. The future does not borrow the connection; it
    /// never resolves if every copy of the connection is dropped unmarked.
    pub fn closed(&self) -> impl Future<Output = CloseReason> + Send + 'static + use<S, P> {
        let mut why = self.shared.why.subscribe();
        async move {
            // `wait_for` checks the current value first: a mark made before this future was
            // polled (or even created) is seen.
            let marked = why.wait_for(Option::is_some).await.map(|why| why.clone());
            match marked {
                Ok(why) => CloseReason::Error(Box::new(MarkedDead { why })),
                // Every copy of the connection is gone, unmarked: it can no longer be marked.
                Err(_) => std::future::pending().await,
            }
        }
    }
}

impl<Req, S, P> Service<Req> for Classified<S, P>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    P: Fn(Result<&S::Response, &S::Error>) -> bool,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, P>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        if self.shared.dead.load(Ordering::Acquire) {
            return Poll::Ready(Err(self.shared.marked_dead().into()));
        }
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    #[inline]
    fn call(&mut self, request: Req) -> Self::Future {
        ResponseFuture {
            future: self.inner.call(request),
            shared: self.shared.clone(),
        }
    }
}

impl<S: Clone, P> Clone for Classified<S, P> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<S: fmt::Debug, P> fmt::Debug for Classified<S, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Classified")
            .field("inner", &self.inner)
            .field("marked_dead", &self.is_marked_dead())
            .finish_non_exhaustive()
    }
}

pin_project! {
    /// The response future of [`Classified`]: the connection's own future; its outcome goes
    /// through the predicate, then to the caller unchanged (with the error boxed).
    pub struct ResponseFuture<F, P> {
        #[pin]
        future: F,
        shared: Arc<Shared<P>>,
    }
}

impl<F, T, E, P> Future for ResponseFuture<F, P>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
    P: Fn(Result<&T, &E>) -> bool,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let outcome = ready!(this.future.poll(cx));
        let predicate = &this.shared.predicate;
        let dead = crate::panic::catch(|| predicate(outcome.as_ref())).unwrap_or_else(|panic| {
            tracing::warn!(
                %panic,
                "the disconnect classifier panicked: the outcome counts as not dead",
            );
            false
        });
        let outcome = outcome.map_err(Into::into);
        if dead {
            this.shared.mark(|| match &outcome {
                Ok(_) => Why::Response,
                Err(error) => Why::Error(Arc::from(error.to_string())),
            });
        }
        Poll::Ready(outcome)
    }
}

impl<F, P> fmt::Debug for ResponseFuture<F, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

// === close_signal ===

/// A close signal for [`Classified`] connections that resolves with whichever comes first:
/// the connection's dead-mark ([`Classified::closed`]) or `inner`, the inner connection's own
/// close signal (such as [`Http2Connection::closed`](crate::http::Http2Connection::closed)).
///
/// Pass it to
/// [`PersistentConnectionLayer::close_signal`](crate::PersistentConnectionLayer::close_signal).
/// When the inner connection has no close signal of its own, `Classified::closed` alone does.
pub fn close_signal<S, P, C>(inner: C) -> impl CloseSignal<Classified<S, P>>
where
    C: CloseSignal<S>,
{
    move |connection: &Classified<S, P>| {
        let marked = connection.closed();
        let closed = inner.closed(connection.get_ref());
        async move {
            tokio::select! {
                biased;
                reason = marked => reason,
                reason = closed => reason,
            }
        }
    }
}

// === MarkedDead ===

/// Why a connection was marked dead.
#[derive(Clone, Debug)]
enum Why {
    /// The predicate said so of a response.
    Response,
    /// The predicate said so of an error, whose text this is.
    Error(Arc<str>),
}

impl fmt::Display for Why {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Response => f.write_str("on a response"),
            Self::Error(error) => write!(f, "on an error: {error}"),
        }
    }
}

/// The connection was marked dead by the disconnect classifier: the error of a
/// [`Classified`] connection's `poll_ready` from then on, and the cause in its close signal's
/// [`CloseReason::Error`].
#[derive(Clone, Debug)]
pub struct MarkedDead {
    why: Option<Why>,
}

impl MarkedDead {
    /// Whether a response (rather than an error) marked the connection dead.
    pub fn on_response(&self) -> bool {
        matches!(self.why, Some(Why::Response))
    }
}

impl fmt::Display for MarkedDead {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("connection marked dead by the disconnect classifier")?;
        match &self.why {
            Some(why) => write!(f, " {why}"),
            None => Ok(()),
        }
    }
}

impl std::error::Error for MarkedDead {}
