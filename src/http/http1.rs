//! [`Http1Connector`]: dials TCP, performs the hyper HTTP/1 handshake, and returns an
//! [`Http1Connection`] that its clones share fairly, one request at a time.

use std::{
    fmt,
    future::{Future, poll_fn},
    marker::PhantomData,
    pin::Pin,
    sync::{Arc, Mutex, PoisonError, Weak},
    task::{Context, Poll, ready},
};

use http::{HeaderValue, Request, Response, header::HOST};
use http_body::Body;
use hyper::{body::Incoming, client::conn::http1};
use hyper_util::rt::TokioIo;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio_util::sync::PollSemaphore;
use tower_service::Service;

use super::{ArcError, Dial, InvalidOrigin, Origin, name_origin, origin_for, sniff::Status};
use crate::{
    BoxError, CloseReason, HealthCheck, OnEvent, PersistentConnection, PersistentConnectionLayer,
};

/// A maker of HTTP/1 connections: `Service<A>` for any [`Dial`] address, whose response is an
/// [`Http1Connection<B>`] (`B` is the request body type).
///
/// For each address it dials TCP (with `TCP_NODELAY`), performs the HTTP/1 handshake and
/// spawns the connection task.
///
/// HTTP/1 carries one request at a time per connection; see [`Http1Connection`] for how clones
/// share it. Prefer HTTP/2 where the server speaks it: it multiplexes.
pub struct Http1Connector<B> {
    builder: http1::Builder,
    origin: Option<Arc<Origin>>,
    /// The latest connection made, for a request that one of the connections before it hands
    /// back unsent.
    latest: Arc<watch::Sender<Latest<B>>>,
    _body: PhantomData<fn(B)>,
}

/// The latest connection a connector made, and its number. Weak: the connector must not keep
/// a connection alive, and a connection (which holds a receiver) must not keep itself alive.
struct Latest<B> {
    number: u64,
    shared: Weak<Shared<B>>,
}

impl<B> Http1Connector<B> {
    /// A connector with hyper's HTTP/1 defaults.
    pub fn new() -> Self {
        Self {
            builder: http1::Builder::new(),
            origin: None,
            latest: Arc::new(watch::Sender::new(Latest {
                number: 0,
                shared: Weak::new(),
            })),
            _body: PhantomData,
        }
    }

    /// The `Host` given to requests that have none: `"billing"` or `"http://billing:8080"`.
    /// Use a logical name: it stays the same when the client moves to another replica.
    ///
    /// Default is the layer's server name, if one was set, when applied with
    /// [`PersistentConnectionLayer::http1`], else the dialed address.
    ///
    /// # Panics
    ///
    /// If `origin` is not `[scheme://]host[:port]`; see [`try_origin`](Self::try_origin).
    pub fn origin(self, origin: &str) -> Self {
        match self.try_origin(origin) {
            Ok(connector) => connector,
            Err(error) => panic!("Http1Connector::origin: {error}"),
        }
    }

    /// Like [`origin`](Self::origin), but returns an error for an invalid origin.
    ///
    /// # Errors
    ///
    /// [`InvalidOrigin`] if `origin` is not `[scheme://]host[:port]`.
    pub fn try_origin(mut self, origin: &str) -> Result<Self, InvalidOrigin> {
        self.origin = Some(Arc::new(Origin::parse(origin)?));
        Ok(self)
    }

    /// The underlying hyper builder, for its settings.
    pub fn builder_mut(&mut self) -> &mut http1::Builder {
        &mut self.builder
    }
}

impl<B> Default for Http1Connector<B> {
    fn default() -> Self {
        Self::new()
    }
}

impl<B> Clone for Http1Connector<B> {
    fn clone(&self) -> Self {
        Self {
            builder: self.builder.clone(),
            origin: self.origin.clone(),
            latest: self.latest.clone(),
            _body: PhantomData,
        }
    }
}

impl<B> fmt::Debug for Http1Connector<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Http1Connector")
            .field("origin", &self.origin)
            .finish_non_exhaustive()
    }
}

impl<A, B> Service<A> for Http1Connector<B>
where
    A: Dial,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    type Response = Http1Connection<B>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Http1Connection<B>, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, address: A) -> Self::Future {
        let builder = self.builder.clone();
        let origin = origin_for(&self.origin, &address);
        let latest = self.latest.clone();
        Box::pin(async move {
            let stream = address.dial().await?;
            let (send, connection) = builder.handshake::<_, B>(TokioIo::new(stream)).await?;
            let status = watch::Sender::new(Status::default());
            let observed = status.subscribe();
            let permits = Arc::new(Semaphore::new(1));
            let idle = permits.clone();
            tokio::spawn(async move {
                let result = match connection.await {
                    // hyper reports a server's close of an idle keep-alive connection as an
                    // incomplete message; with no request holding the connection, it is the
                    // server's goodbye.
                    Err(error)
                        if error.is_incomplete_message() && idle.available_permits() == 1 =>
                    {
                        Ok(())
                    }
                    result => result,
                };
                status.send_modify(|status| status.ended = Some(result.map_err(Arc::new)));
            });
            let host = HeaderValue::from_str(origin.authority.as_str())?;
            let number = latest.borrow().number + 1;
            let shared = Arc::new(Shared {
                send: Mutex::new(send),
                permits,
                host,
                status: observed,
                number,
                latest: latest.subscribe(),
            });
            latest.send_replace(Latest {
                number,
                shared: Arc::downgrade(&shared),
            });
            Ok(Http1Connection::from_shared(shared))
        })
    }
}

/// What the clones of one HTTP/1 connection share.
struct Shared<B> {
    /// Used only by the holder of the permit.
    send: Mutex<http1::SendRequest<B>>,
    /// One permit: one request at a time, and a fair queue of clones waiting for it.
    permits: Arc<Semaphore>,
    host: HeaderValue,
    status: watch::Receiver<Status>,
    /// This connection's number among its connector's connections.
    number: u64,
    /// The connector's latest connection, for a request this one hands back unsent.
    latest: watch::Receiver<Latest<B>>,
}

/// An HTTP/1 connection: a cloneable `Service<http::Request<B>>` over one hyper connection.
///
/// HTTP/1 carries one request at a time, and hyper's `SendRequest` is not `Clone` and wakes
/// only one waiter. So the clones take turns: `poll_ready` takes the connection's one permit
/// (clones wait for it in a fair queue) and then waits for the connection to be ready; the
/// request holds the permit until its response head has arrived (or the clone is dropped).
/// The trade-off: concurrent requests through one persistent HTTP/1 connection queue behind
/// each other. `LoadShed` above it sheds while another request holds the connection. HTTP/2
/// ([`Http2Connection`](super::Http2Connection)) multiplexes them instead.
///
/// Requests without a `Host` header get one (hyper's low-level client adds none): the
/// connector's origin. A request that was never written because the connection closed under
/// it (the race with a server's idle close: hyper hands the request back) is sent once more,
/// on the connector's next connection.
pub struct Http1Connection<B> {
    shared: Arc<Shared<B>>,
    semaphore: PollSemaphore,
    permit: Option<OwnedSemaphorePermit>,
}

impl<B> Http1Connection<B> {
    fn from_shared(shared: Arc<Shared<B>>) -> Self {
        Self {
            semaphore: PollSemaphore::new(shared.permits.clone()),
            shared,
            permit: None,
        }
    }

    /// Resolves when the connection has ended: the close signal for
    /// [`PersistentConnectionLayer::close_signal`]. A clean end (the server's idle close) is
    /// graceful; a reset or an I/O error is an error.
    pub fn closed(&self) -> impl Future<Output = CloseReason> + Send + use<B> {
        let mut status = self.shared.status.clone();
        async move {
            let ended = status
                .wait_for(|status| status.ended.is_some())
                .await
                .map(|status| status.ended.clone());
            match ended {
                Ok(Some(Err(error))) => CloseReason::Error(Box::new(ArcError(error))),
                _ => CloseReason::Graceful,
            }
        }
    }

    /// Whether the connection has ended.
    pub fn is_closed(&self) -> bool {
        self.shared.status.borrow().ended.is_some()
    }
}

impl<B> Clone for Http1Connection<B> {
    /// A clone takes its own turns: it does not share this clone's permit.
    fn clone(&self) -> Self {
        Self::from_shared(self.shared.clone())
    }
}

impl<B> fmt::Debug for Http1Connection<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Http1Connection")
            .field("number", &self.shared.number)
            .field("has_permit", &self.permit.is_some())
            .field("closed", &self.is_closed())
            .finish()
    }
}

impl<B> Service<Request<B>> for Http1Connection<B>
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    type Response = Response<Incoming>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Incoming>, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        if self.permit.is_none() {
            match ready!(self.semaphore.poll_acquire(cx)) {
                Some(permit) => self.permit = Some(permit),
                None => return Poll::Ready(Err("HTTP/1 connection closed".into())),
            }
        }
        // Only the permit holder gets here: hyper's single waker slot is ours alone.
        lock(&self.shared.send).poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        let Some(permit) = self.permit.take() else {
            return Box::pin(async {
                Err("call without a permit: poll_ready must return Ready(Ok) before call".into())
            });
        };
        if !request.headers().contains_key(HOST) {
            request.headers_mut().insert(HOST, self.shared.host.clone());
        }
        let sent = lock(&self.shared.send).try_send_request(request);
        let latest = self.shared.latest.clone();
        let number = self.shared.number;
        Box::pin(async move {
            let result = sent.await;
            drop(permit);
            match result {
                Ok(response) => Ok(response),
                Err(mut error) => match error.take_message() {
                    Some(request) => resend_on_next(request, latest, number).await,
                    None => Err(error.into_error().into()),
                },
            }
        })
    }
}

/// Sends `request`, which connection `number` handed back unwritten, on the connector's
/// next connection: once, and only there.
async fn resend_on_next<B>(
    request: Request<B>,
    mut latest: watch::Receiver<Latest<B>>,
    number: u64,
) -> Result<Response<Incoming>, BoxError>
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let next = latest
        .wait_for(|latest| latest.number > number)
        .await
        .map_err(|_| "connection closed before the request was sent, and no other came")?
        .shared
        .upgrade()
        .ok_or("connection closed before the request was sent, and the next one is gone")?;
    let mut connection = Http1Connection::from_shared(next);
    poll_fn(|cx| Service::<Request<B>>::poll_ready(&mut connection, cx)).await?;
    let permit = connection.permit.take();
    let sent = lock(&connection.shared.send).send_request(request);
    let response = sent.await;
    drop(permit);
    Ok(response?)
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

// === PersistentConnectionLayer::http1 ===

impl<A, E, C, H> PersistentConnectionLayer<A, E, C, H> {
    /// Applies the layer to an HTTP/1 `connector`, with the connection's close signal wired
    /// in ([`Http1Connection::closed`], replacing any close signal set before) and, unless the
    /// connector has an [origin](Http1Connector::origin), the server name (if one was
    /// [set](Self::server_name)) as the `Host` of requests that have none.
    ///
    /// # Panics
    ///
    /// Outside a Tokio runtime, like [`Layer::layer`](tower_layer::Layer::layer).
    pub fn http1<B>(
        self,
        mut connector: Http1Connector<B>,
    ) -> PersistentConnection<Http1Connection<B>>
    where
        A: Dial + PartialEq + fmt::Debug,
        E: OnEvent<A, Http1Connection<B>>,
        H: HealthCheck<Http1Connection<B>>,
        B: Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        name_origin(&mut connector.origin, self.explicit_name());
        tower_layer::Layer::layer(&self.close_signal(Http1Connection::closed), connector)
    }
}
