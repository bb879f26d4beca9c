//! [`Http1Connector`]: dials TCP, performs the hyper HTTP/1 handshake, and returns an
//! [`Http1Connection`] that its clones share fairly, one request at a time.

use std::{
    fmt,
    future::{Future, poll_fn},
    marker::PhantomData,
    pin::Pin,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    task::{Context, Poll, ready},
};

use http::{HeaderValue, Request, Response, header::HOST};
use http_body::Body;
use hyper::{body::Incoming, client::conn::http1};
use hyper_util::rt::TokioIo;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio_util::sync::PollSemaphore;
use tower_service::Service;

use super::{
    ArcError, ConnectionUnavailable, Dial,
    base::{Core, secure, spawn_watched},
    observe::{Observed, ReadObserver},
    replay::ReplayBody,
    resend::{
        self, Failure, Kept, Lineage, Reads, Refusal, Resend, h1_closed, is_idempotent,
        mark_untaken, or_recover, unless_stranded,
    },
    sniff::{self, Status},
};
use crate::{
    BoxError, PersistentConnection, PersistentConnectionLayer, close::CloseReason,
    health::HealthCheck, observe::OnEvent,
};

/// A maker of HTTP/1 connections: `Service<A>` for any [`Dial`] address, whose response is an
/// [`Http1Connection<B>`] (`B` is the request body type).
///
/// For each address it dials TCP (with `TCP_NODELAY`), performs the HTTP/1 handshake and
/// spawns the connection task.
///
/// HTTP/1 carries one request at a time per connection; see [`Http1Connection`] for how clones
/// share it. Prefer HTTP/2 where the server speaks it: it multiplexes.
///
/// A request the server provably never processed is sent again on this connector's next
/// connection, up to [`max_replays`](Self::max_replays) times: one hyper handed back unwritten
/// (the connection closed first), and an idempotent one (`GET`, `HEAD`, `OPTIONS`, `PUT`,
/// `DELETE`, `TRACE`, or marked [`Idempotent`](super::Idempotent)) whose reused connection
/// closed before any byte of its response arrived (RFC 9112, section 9.3.1). Nothing else is
/// sent again. See the [module documentation](super).
pub struct Http1Connector<B> {
    builder: http1::Builder,
    core: Core<Shared<B>>,
    _body: PhantomData<fn(B)>,
}

impl<B> Http1Connector<B> {
    /// A connector with hyper's HTTP/1 defaults.
    pub fn new() -> Self {
        Self {
            builder: http1::Builder::new(),
            core: Core::new(),
            _body: PhantomData,
        }
    }

    super::base::core_settings!(
        "Http1Connector",
        "http1",
        origin: "The `Host` given to requests that have none: `\"billing\"` or `\"http://billing:8080\"`.",
        body: "an idempotent request's body",
    );

    /// Secures every connection with TLS: the handshake follows the TCP connect, within the
    /// attempt (so the layer's connect timeout bounds it), offering ALPN `http/1.1`; requests
    /// get the `https` scheme. The name verified in the server's certificate and sent as SNI is
    /// [`TlsConfig::server_name`](super::TlsConfig::server_name), else the layer's server name
    /// (with [`PersistentConnectionLayer::http1`]), else the host of the
    /// [origin](Self::origin); never the address dialed. A failed handshake is a failed
    /// attempt, with a [`TlsError`](super::TlsError) that says why.
    ///
    /// With TLS 1.3 a server checks the client's certificate after the client has finished
    /// its handshake, so an HTTP/1 connection whose client certificate the server refuses
    /// fails on its first request (an HTTP/2 connection fails its attempt instead: it waits
    /// for the server's first frame).
    #[cfg(feature = "_tls")]
    #[cfg_attr(docsrs, doc(cfg(any(feature = "tls", feature = "tls-aws-lc-rs"))))]
    pub fn tls(mut self, config: super::TlsConfig) -> Self {
        self.core.tls = Some(super::tls::Tls::http1(config));
        self
    }

    /// The underlying hyper builder, for its settings.
    pub fn builder_mut(&mut self) -> &mut http1::Builder {
        &mut self.builder
    }
}

super::base::default_is_new!(Http1Connector);

impl<B> Clone for Http1Connector<B> {
    /// A connector with the same settings and request counters. Its connections are its own:
    /// a request refused on one of them is sent again on the clone's next connection, never
    /// on another clone's (which may serve another server).
    fn clone(&self) -> Self {
        Self {
            builder: self.builder.clone(),
            core: self.core.fork(),
            _body: PhantomData,
        }
    }
}

impl<B> fmt::Debug for Http1Connector<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Http1Connector")
            .field("origin", &self.core.origin)
            .field("tls", &self.core.tls)
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
        let origin = self.core.origin_for(&address);
        let handshake = self.core.handshake_for(&address);
        let latest = self.core.latest.clone();
        let replay = Arc::new(self.core.replay.clone());
        Box::pin(async move {
            let handshake = handshake?;
            let stream = secure(address.dial().await?, handshake.as_ref()).await?;
            let read = Arc::new(AtomicU64::new(0));
            let head = Arc::new(AtomicBool::new(false));
            let io = TokioIo::new(Observed::new(
                stream,
                ReadCount::new(read.clone(), head.clone()),
            ));
            let (send, connection) = builder.handshake::<_, ReplayBody<B>>(io).await?;
            let status = Arc::new(watch::Sender::new(Status::default()));
            let answered = head;
            let permits = Arc::new(Semaphore::new(1));
            let idle = permits.clone();
            spawn_watched(connection, status.clone(), move |result, status| {
                // Served: a whole response head arrived (not noise, not a head without end).
                status.served |= answered.load(Ordering::Acquire);
                match result {
                    // hyper reports a server's close of an idle keep-alive connection as an
                    // incomplete message; with no request holding the connection, it is the
                    // server's goodbye.
                    Err(error)
                        if error.is_incomplete_message() && idle.available_permits() == 1 =>
                    {
                        Ok(())
                    }
                    result => result,
                }
            });
            let host = HeaderValue::from_str(origin.authority.as_str())?;
            let newest = latest.subscribe();
            let shared = resend::publish(&latest, |number| {
                Arc::new(Shared {
                    send: Mutex::new(send),
                    permits,
                    host,
                    status,
                    lineage: Lineage {
                        number,
                        latest: newest,
                        config: replay,
                    },
                    read,
                    responses: AtomicU64::new(0),
                })
            })?;
            if let Some(siblings) = &shared.lineage.config.siblings {
                siblings.join(&shared);
            }
            Ok(Http1Connection::from_shared(shared))
        })
    }
}

/// What the clones of one HTTP/1 connection share.
struct Shared<B> {
    /// Used only by the holder of the permit.
    send: Mutex<http1::SendRequest<ReplayBody<B>>>,
    /// One permit: one request at a time, and a fair queue of clones waiting for it.
    permits: Arc<Semaphore>,
    host: HeaderValue,
    status: Arc<watch::Sender<Status>>,
    /// Its number, and the connector's newest connection, for requests this one refuses.
    lineage: Lineage<Self>,
    /// Bytes read from the server so far.
    read: Arc<AtomicU64>,
    /// Responses (heads) received so far.
    responses: AtomicU64,
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
/// it (the race with a server's idle close: hyper hands the request back), and an idempotent
/// one whose reused connection closed before any byte of its response, are sent again on the
/// connector's next connection (see [`Http1Connector`]).
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
    /// [`PersistentConnectionLayer::close_signal`]. A clean end (the server's idle close, or
    /// `Connection: close`) is [`Graceful`](CloseReason::Graceful) once the server has
    /// answered a request, else [`GracefulBeforeServing`](CloseReason::GracefulBeforeServing);
    /// a reset or an I/O error is an error.
    pub fn closed(&self) -> impl Future<Output = CloseReason> + Send + use<B> {
        let status = self.shared.status.subscribe();
        async move {
            let seen = sniff::until(status, |status| status.ended.is_some()).await;
            match seen {
                Status {
                    ended: Some(Err(error)),
                    ..
                } => CloseReason::Error(Box::new(ArcError(error))),
                Status { served: true, .. } => CloseReason::Graceful,
                _ => CloseReason::GracefulBeforeServing,
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
            .field("number", &self.shared.lineage.number)
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
                None => return Poll::Ready(Err(ConnectionUnavailable::Closed.into())),
            }
        }
        // Only the permit holder gets here: hyper's single waker slot is ours alone.
        lock(&self.shared.send).poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let Some(permit) = self.permit.take() else {
            return Box::pin(async { Err(ConnectionUnavailable::NotReady.into()) });
        };
        // Only an idempotent request can need its head and body again after being written.
        let idempotent = is_idempotent(&request);
        let (request, kept) = Kept::prepare(
            request,
            &self.shared.lineage.config,
            idempotent,
            Reads::Extensions,
        );
        let sent = send_with(&self.shared, permit, request);
        Box::pin(or_recover(sent, kept, self.shared.clone()))
    }
}

/// Sends `request` on the connection of `shared`, whose `permit` the caller holds and whose
/// hyper sender is ready. A failure says whether the server provably did not process it.
fn send_with<B>(
    shared: &Arc<Shared<B>>,
    permit: OwnedSemaphorePermit,
    mut request: Request<ReplayBody<B>>,
) -> impl Future<Output = Result<Response<Incoming>, Failure<B>>> + Send + use<B>
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let added_host = !request.headers().contains_key(HOST);
    if added_host {
        request.headers_mut().insert(HOST, shared.host.clone());
    }
    let idempotent = is_idempotent(&request);
    // The permit orders these: every earlier request's response has been counted, and its
    // bytes read (hyper is ready for a new request only once the last one is done).
    let reused = shared.responses.load(Ordering::Acquire) > 0;
    let read_before = shared.read.load(Ordering::Acquire);
    let mark = mark_untaken(&mut request);
    let sent = lock(&shared.send).try_send_request(request);
    let mut status = shared.status.subscribe();
    let ended = async move {
        let _ = status.wait_for(|status| status.ended.is_some()).await;
    };
    let shared = shared.clone();
    let sent = async move {
        let result = sent.await;
        if result.is_ok() {
            shared.responses.fetch_add(1, Ordering::Release);
        }
        drop(permit);
        result.map_err(|error| {
            let mut failure = Failure::from_hyper(error, |error| {
                // RFC 9112, 9.3.1: an idempotent request on a reused connection that closed
                // before any byte of the response.
                let silent = shared.read.load(Ordering::Acquire) == read_before;
                (idempotent && reused && silent && h1_closed(error))
                    .then_some(Refusal::ClosedBeforeResponse)
            });
            if let Some(request) = failure.request.as_mut().filter(|_| added_host) {
                // The next connection gives its own.
                request.headers_mut().remove(HOST);
            }
            failure
        })
    };
    unless_stranded(sent, mark, ended)
}

impl<B> Resend for Shared<B>
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    type Body = B;

    fn lineage(&self) -> &Lineage<Self> {
        &self.lineage
    }

    fn refuses_new(&self) -> bool {
        self.status.borrow().ended.is_some()
    }

    async fn send(
        self: Arc<Self>,
        request: Request<ReplayBody<B>>,
    ) -> Result<Response<Incoming>, Failure<B>> {
        let mut connection = Http1Connection::from_shared(self.clone());
        if let Err(error) =
            poll_fn(|cx| Service::<Request<B>>::poll_ready(&mut connection, cx)).await
        {
            return Err(Failure::handed_back(error, request));
        }
        let Some(permit) = connection.permit.take() else {
            return Err(Failure::handed_back(
                ConnectionUnavailable::NotReady.into(),
                request,
            ));
        };
        send_with(&self, permit, request).await
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Counts the bytes read from a connection, and notes when the first complete response head
/// has arrived: bytes that start with `HTTP/1.` and reach an empty line. Noise, or a head
/// that never ends, is no answer: the server has not served, whatever it sent.
struct ReadCount {
    read: Arc<AtomicU64>,
    head: Arc<AtomicBool>,
    sniff: HeadSniff,
}

impl ReadCount {
    fn new(read: Arc<AtomicU64>, head: Arc<AtomicBool>) -> Self {
        Self {
            read,
            head,
            sniff: HeadSniff::Prefix(0),
        }
    }
}

/// Where the first response head stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum HeadSniff {
    /// This many bytes of `HTTP/1.` matched so far.
    Prefix(usize),
    /// In the head: the last bytes read, for the empty line that ends it.
    Head(u32),
    /// A whole head has arrived.
    Done,
    /// The server's first bytes were not an HTTP/1 response.
    Noise,
}

const STATUS_LINE: &[u8] = b"HTTP/1.";
const END_OF_HEAD: u32 = u32::from_be_bytes(*b"\r\n\r\n");

impl HeadSniff {
    fn step(self, bytes: &[u8]) -> Self {
        let mut state = self;
        for &byte in bytes {
            state = match state {
                Self::Prefix(n) if STATUS_LINE[n] == byte => match n + 1 {
                    matched if matched == STATUS_LINE.len() => Self::Head(0),
                    matched => Self::Prefix(matched),
                },
                Self::Prefix(_) => Self::Noise,
                Self::Head(last) => match last << 8 | u32::from(byte) {
                    END_OF_HEAD => Self::Done,
                    last => Self::Head(last),
                },
                done_or_noise => return done_or_noise,
            };
        }
        state
    }
}

impl ReadObserver for ReadCount {
    fn observe(&mut self, bytes: &[u8]) {
        self.read.fetch_add(bytes.len() as u64, Ordering::Release);
        if matches!(self.sniff, HeadSniff::Prefix(_) | HeadSniff::Head(_)) {
            self.sniff = self.sniff.step(bytes);
            if self.sniff == HeadSniff::Done {
                self.head.store(true, Ordering::Release);
            }
        }
    }
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
        let counters = connector.core.wire(self.explicit_name());
        tower_layer::Layer::layer(
            &self
                .with_request_counters(counters)
                .close_signal(Http1Connection::closed),
            connector,
        )
    }
}

// === Replicas::http1 ===

impl<K, B> crate::replicas::Replicas<K, Http1Connection<B>>
where
    K: Ord + std::hash::Hash + Clone + fmt::Display + Send + Sync + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    /// [`Replicas::new`](crate::replicas::Replicas::new) over an HTTP/1 `connector`, wired as
    /// [`PersistentConnectionLayer::http1`] wires it: each replica's close signal is its
    /// connection's, and, unless the connector has an [origin](Http1Connector::origin), the
    /// layer's server name is the `Host` of requests that have none, the same for every
    /// replica.
    pub fn http1<A, E, C, H>(
        changes: crate::discovery::Changes<K, A>,
        layer: PersistentConnectionLayer<A, E, C, H>,
        mut connector: Http1Connector<B>,
    ) -> Self
    where
        A: Dial + PartialEq + fmt::Debug,
        E: OnEvent<A, Http1Connection<B>>,
        H: HealthCheck<Http1Connection<B>>,
    {
        let counters = connector.core.wire(layer.explicit_name());
        connector.core.replay.siblings = Some(Arc::new(resend::Siblings::new()));
        let layer = layer
            .with_request_counters(counters)
            .close_signal(Http1Connection::closed);
        Self::new(changes, layer, connector)
    }
}

#[cfg(test)]
mod tests {
    use super::HeadSniff;

    fn sniff(chunks: &[&[u8]]) -> HeadSniff {
        chunks
            .iter()
            .fold(HeadSniff::Prefix(0), |state, chunk| state.step(chunk))
    }

    /// A response head counts once it is whole, wherever the reads split it; noise, and a head
    /// that never ends, never count.
    #[test]
    fn a_response_head_counts_once_whole_and_noise_never() {
        let head: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
        for split in 1..head.len() {
            let (a, b) = head.split_at(split);
            assert_eq!(sniff(&[a, b]), HeadSniff::Done, "split at {split}");
        }
        assert!(matches!(
            sniff(&[b"HTTP/1.1 200 OK\r\n"]),
            HeadSniff::Head(_)
        ));
        assert_eq!(sniff(&[b"garbage\r\n\r\n"]), HeadSniff::Noise);
        assert_eq!(sniff(&[b"HTTX"]), HeadSniff::Noise);
        assert_eq!(
            sniff(&[b"\0\0\x04\0\0\0\0\0\0"]),
            HeadSniff::Noise,
            "an HTTP/2 frame"
        );
        let endless = vec![b'x'; 100_000];
        assert!(matches!(
            sniff(&[b"HTTP/1.1 200 OK\r\n", &endless]),
            HeadSniff::Head(_)
        ));
    }
}
