//! Sending again a request the server provably never processed, on the connector's next
//! connection: the proofs, the bounds, and the [`NotProcessed`] error when it cannot be done.

use std::{
    error::Error as StdError,
    fmt,
    future::{Future, pending},
    io,
    pin::pin,
    sync::{Arc, Weak},
};

use http::{Extensions, HeaderMap, Method, Request, Response, Uri, Version};
use hyper::body::Incoming;
use tokio::sync::watch;

use super::replay::{ReplayBody, TooLarge};
use crate::{BoxError, stats::RequestCounters};

/// The default of `max_replays`.
pub(crate) const MAX_REPLAYS: usize = 3;
/// The default of `max_replay_body`: 64 KiB.
pub(crate) const MAX_REPLAY_BODY: usize = 64 * 1024;

/// Marks a request as idempotent, so that an HTTP/1 connector may send it again when its
/// reused connection closed before any byte of the response (RFC 9112, section 9.3.1), like
/// the methods that are idempotent by definition (`GET`, `HEAD`, `OPTIONS`, `PUT`, `DELETE`,
/// `TRACE`).
///
/// Insert it into the request's extensions. It changes nothing for HTTP/2, whose connectors
/// send again only what the server provably refused.
///
/// ```
/// use persistent_connection::http::Idempotent;
///
/// let mut request = http::Request::post("/counters/42/set?value=7").body(()).unwrap();
/// request.extensions_mut().insert(Idempotent);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Idempotent;

/// Whether `request` may be sent twice with the effect of once.
pub(crate) fn is_idempotent<B>(request: &Request<B>) -> bool {
    matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    ) || request.extensions().get::<Idempotent>().is_some()
}

/// How a connector sends again: shared by the connections it makes.
#[derive(Clone, Debug)]
pub(crate) struct ReplayConfig {
    pub(crate) max_replays: usize,
    pub(crate) max_body: usize,
    pub(crate) counters: Arc<RequestCounters>,
    /// The connections of the other replicas of the same service (the connectors of one
    /// `Replicas`), where a request one replica could not send may go instead.
    pub(crate) siblings: Option<Arc<Siblings>>,
}

impl ReplayConfig {
    pub(crate) fn new() -> Self {
        Self {
            max_replays: MAX_REPLAYS,
            max_body: MAX_REPLAY_BODY,
            counters: Arc::new(RequestCounters::default()),
            siblings: None,
        }
    }
}

// === the connections of the other replicas ===

/// The live connections of the replicas of one service (each replica's connector is a clone of
/// one connector, so they share this). A request a replica's connection could not send, and
/// that the server provably never processed, goes to another replica's connection that takes
/// requests rather than wait for its own replica's next connection, which may be long in
/// coming when the replica is down. Type-erased, as the connections' type is the connector's.
pub(crate) struct Siblings {
    connections: std::sync::Mutex<Vec<Weak<dyn std::any::Any + Send + Sync>>>,
    /// Bumped when a connection joins.
    joined: watch::Sender<u64>,
}

impl Siblings {
    pub(crate) fn new() -> Self {
        Self {
            connections: std::sync::Mutex::new(Vec::new()),
            joined: watch::Sender::new(0),
        }
    }

    /// Lists `connection` (once its connector has made it).
    pub(crate) fn join<C: Send + Sync + 'static>(&self, connection: &Arc<C>) {
        let weak: Weak<dyn std::any::Any + Send + Sync> = Arc::downgrade(connection) as _;
        let mut connections = self.lock();
        connections.retain(|connection| connection.strong_count() > 0);
        connections.push(weak);
        drop(connections);
        self.joined.send_modify(|joined| *joined += 1);
    }

    /// The newest listed connection that takes requests, other than `failed`.
    fn other<C: Resend>(&self, failed: &Weak<C>) -> Option<Arc<C>> {
        let connections = self.lock();
        connections.iter().rev().find_map(|connection| {
            let connection = connection.upgrade()?.downcast::<C>().ok()?;
            let other = !std::ptr::eq(Arc::as_ptr(&connection), failed.as_ptr());
            (other && !connection.refuses_new()).then_some(connection)
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Weak<dyn std::any::Any + Send + Sync>>> {
        self.connections
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl fmt::Debug for Siblings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Siblings")
            .field("connections", &self.lock().len())
            .finish()
    }
}

// === the connector's newest connection ===

/// The newest connection a connector made, and its number. Weak: the connector must not keep
/// a connection alive, and a connection (which holds a receiver) must not keep itself alive.
pub(crate) struct Latest<C> {
    number: u64,
    connection: Weak<C>,
}

/// A connector's watch of its newest connection.
pub(crate) type Newest<C> = Arc<watch::Sender<Latest<C>>>;

/// A watch with no connection yet.
pub(crate) fn newest<C>() -> Newest<C> {
    Arc::new(watch::Sender::new(Latest {
        number: 0,
        connection: Weak::new(),
    }))
}

/// Makes the connection `make(number)` the newest, with the next number.
pub(crate) fn publish<C>(
    newest: &watch::Sender<Latest<C>>,
    make: impl FnOnce(u64) -> Arc<C>,
) -> Result<Arc<C>, BoxError> {
    let mut made = None;
    newest.send_modify(|latest| {
        let number = latest.number + 1;
        let connection = make(number);
        *latest = Latest {
            number,
            connection: Arc::downgrade(&connection),
        };
        made = Some(connection);
    });
    made.ok_or_else(|| "the connection was not made".into())
}

/// Where a connection stands among its connector's connections: what a request it refused
/// needs to find the next one.
pub(crate) struct Lineage<C> {
    /// The connection's number among its connector's connections.
    pub(crate) number: u64,
    /// The connector's newest connection, watched.
    pub(crate) latest: watch::Receiver<Latest<C>>,
    /// How the connector sends again.
    pub(crate) config: Arc<ReplayConfig>,
}

/// A connection that can take a request sent again.
pub(crate) trait Resend: Send + Sync + Sized + 'static {
    /// The body type of its requests.
    type Body: Send + 'static;

    /// Where the connection stands among its connector's connections.
    fn lineage(&self) -> &Lineage<Self>;

    /// Whether the connection takes no new requests (ended, or the server said goodbye).
    fn refuses_new(&self) -> bool;

    /// Sends `request` on this connection once it is ready.
    fn send(
        self: Arc<Self>,
        request: Request<ReplayBody<Self::Body>>,
    ) -> impl Future<Output = Result<Response<Incoming>, Failure<Self::Body>>> + Send;
}

/// Waits for a connection newer than number `after` that takes requests, or, with
/// `siblings`, another replica's connection that takes requests (other than `failed`),
/// whichever comes first; `None` once the connector is gone.
async fn next_connection<C: Resend>(
    latest: &mut watch::Receiver<Latest<C>>,
    mut after: u64,
    siblings: Option<&Siblings>,
    failed: &Weak<C>,
) -> Option<Arc<C>> {
    loop {
        let mut joined = siblings.map(|siblings| siblings.joined.subscribe());
        if let Some(other) = siblings.and_then(|siblings| siblings.other(failed)) {
            return Some(other);
        }
        let sibling_joined = async {
            match &mut joined {
                Some(joined) => {
                    if joined.changed().await.is_err() {
                        pending::<()>().await;
                    }
                }
                None => pending::<()>().await,
            }
        };
        let newer = async {
            let latest = latest.wait_for(|latest| latest.number > after).await.ok()?;
            Some((latest.number, latest.connection.clone()))
        };
        tokio::select! {
            newer = newer => {
                let (number, connection) = newer?;
                match connection.upgrade() {
                    Some(connection) if !connection.refuses_new() => return Some(connection),
                    // Gone or closing already: wait for the one after it.
                    _ => after = number,
                }
            }
            () = sibling_joined => {}
        }
    }
}

// === what a failed send proves ===

/// Why the server provably did not process a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// hyper handed the request back unwritten: the connection closed before.
    HandedBack,
    /// HTTP/2: the stream was above the last stream id of the server's `GOAWAY`.
    GoAway,
    /// HTTP/2: the server reset the stream with `REFUSED_STREAM`.
    RefusedStream,
    /// HTTP/1: the reused connection closed before any byte of the response to this
    /// idempotent request (RFC 9112, 9.3.1).
    ClosedBeforeResponse,
    /// HTTP/2: the connection had reached the server's request limit; the request was kept
    /// for the next one, never sent.
    Retired,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::HandedBack => "the connection closed before the request was written",
            Self::GoAway => "GOAWAY above its last stream id",
            Self::RefusedStream => "REFUSED_STREAM",
            Self::Retired => "its connection had reached the server's request limit",
            Self::ClosedBeforeResponse => {
                "its reused HTTP/1 connection closed before any byte of the response to this idempotent request"
            }
        })
    }
}

/// An h2 error in `error`'s source chain that proves the server did not process the stream:
/// a `GOAWAY` (`NO_ERROR`) from the server, which h2 gives only to the streams above its last
/// stream id and to streams not opened yet (a stream at or below it that dies later gets an
/// I/O error, `BrokenPipe`), or a `REFUSED_STREAM` reset from the server.
///
/// One more source of that `GOAWAY` error would break the proof: hyper's dispatcher opens a
/// stream, then checks the connection, and fails the request with the `GOAWAY` it finds there
/// though the stream is open (its `HEADERS` queued). That takes h2 reading the `GOAWAY` between
/// the two steps, which the HTTP/2 connector's [`GoAwayGate`](super::gate::GoAwayGate)
/// excludes.
pub(crate) fn h2_refusal(error: &hyper::Error) -> Option<Refusal> {
    let h2 = chain(error).find_map(|error| error.downcast_ref::<h2::Error>())?;
    if !h2.is_remote() {
        return None;
    }
    if h2.is_go_away() && h2.reason() == Some(h2::Reason::NO_ERROR) {
        Some(Refusal::GoAway)
    } else if h2.is_reset() && h2.reason() == Some(h2::Reason::REFUSED_STREAM) {
        Some(Refusal::RefusedStream)
    } else {
        None
    }
}

/// Whether `error` says the HTTP/1 connection closed (or was reset) under a request.
pub(crate) fn h1_closed(error: &hyper::Error) -> bool {
    error.is_incomplete_message()
        || error.is_canceled()
        || error.is_closed()
        || chain(error).any(|error| {
            error.downcast_ref::<io::Error>().is_some_and(|io| {
                matches!(
                    io.kind(),
                    io::ErrorKind::ConnectionReset
                        | io::ErrorKind::ConnectionAborted
                        | io::ErrorKind::BrokenPipe
                        | io::ErrorKind::UnexpectedEof
                )
            })
        })
}

/// `error` and its sources.
fn chain<'a>(
    error: &'a (dyn StdError + 'static),
) -> impl Iterator<Item = &'a (dyn StdError + 'static)> {
    std::iter::successors(Some(error), |&error| error.source())
}

/// A failed send: the error, and what it proves.
pub(crate) struct Failure<B> {
    pub(crate) error: BoxError,
    /// Why the server provably did not process the request; `None`: it may have.
    pub(crate) refusal: Option<Refusal>,
    /// The request, if hyper handed it back.
    pub(crate) request: Option<Request<ReplayBody<B>>>,
}

impl<B> Failure<B> {
    /// A failure of hyper's `try_send_request`, classified by `refusal` unless hyper handed
    /// the request back.
    pub(crate) fn from_hyper(
        mut error: hyper::client::conn::TrySendError<Request<ReplayBody<B>>>,
        refusal: impl FnOnce(&hyper::Error) -> Option<Refusal>,
    ) -> Self {
        let request = error.take_message();
        let error = error.into_error();
        let refusal = if request.is_some() {
            Some(Refusal::HandedBack)
        } else {
            refusal(&error)
        };
        Self {
            error: error.into(),
            refusal,
            request,
        }
    }

    /// The request was left in hyper's queue when the connection task ended: never written,
    /// and not handed back (see [`unless_stranded`]); a resend builds it from what was kept.
    pub(crate) fn stranded() -> Self {
        Self {
            error: "the connection ended before the request was written".into(),
            refusal: Some(Refusal::HandedBack),
            request: None,
        }
    }

    /// `request` was kept back: its connection had reached the server's request limit.
    pub(crate) fn retired(request: Request<ReplayBody<B>>) -> Self {
        Self {
            error: super::ConnectionUnavailable::RequestLimit.into(),
            refusal: Some(Refusal::Retired),
            request: Some(request),
        }
    }

    /// `request` was not written: the connection failed `error` before.
    pub(crate) fn handed_back(error: BoxError, request: Request<ReplayBody<B>>) -> Self {
        Self {
            error,
            refusal: Some(Refusal::HandedBack),
            request: Some(request),
        }
    }
}

// === a request hyper never took ===

/// A mark put in a request's extensions just before it is handed to hyper. hyper's connection
/// task drops a request's extensions when it takes the request to write it (h2 clears them
/// as it opens the stream; hyper's HTTP/1 dispatcher drops them with the encoded head), so
/// while the mark lives, the request has not been taken.
///
/// The HTTP/1 connector uses it (its dispatcher may not look at the body before it takes the
/// request). The HTTP/2 connector marks the body instead ([`ReplayBody::mark_taken`],
/// cheaper), and watches for a stranded request in its flat response future
/// (`http2::Sending`), which does what [`unless_stranded`] does.
#[derive(Clone)]
struct Untaken(#[allow(dead_code)] Arc<()>);

/// Tells whether the request marked by [`mark_untaken`] is still waiting in hyper's queue.
pub(crate) struct UntakenMark(Weak<()>);

impl UntakenMark {
    fn is_untaken(&self) -> bool {
        self.0.strong_count() > 0
    }
}

/// Marks `request` as not yet taken by the connection task (see [`unless_stranded`]).
pub(crate) fn mark_untaken<B>(request: &mut Request<B>) -> UntakenMark {
    let mark = Arc::new(());
    let watch = UntakenMark(Arc::downgrade(&mark));
    request.extensions_mut().insert(Untaken(mark));
    watch
}

/// `sent` (the answer to a request marked with `mark`), unless the connection task ends
/// (`ended` resolves) while the request is still in hyper's queue: then a failure that proves
/// the request was never written.
///
/// Without this a request could wait for ever: hyper queues requests in a tokio channel, and a
/// request pushed while the connection task is dropping the channel's receiver (a race that
/// CPU contention widens; a server's goodbye ends the task while requests keep coming) stays
/// in the channel, unanswered, until every sender of the connection is dropped, and the
/// connection's clones and the waiting request's own future hold senders.
pub(crate) async fn unless_stranded<T, B>(
    sent: impl Future<Output = Result<T, Failure<B>>>,
    mark: UntakenMark,
    ended: impl Future<Output = ()>,
) -> Result<T, Failure<B>> {
    let mut sent = pin!(sent);
    let stranded = async {
        ended.await;
        // The task has dropped its queue: a request taken goes on (its stream lives in h2's
        // task, or hyper's dispatcher answers it as it ends); one not taken never will be.
        if !mark.is_untaken() {
            pending::<()>().await;
        }
    };
    tokio::select! {
        biased;
        result = &mut sent => result,
        () = stranded => Err(Failure::stranded()),
    }
}

// === what is kept for a resend ===

/// What of a request's extensions the connection that sends it reads, and so what a kept
/// [`Head`] must leave in the request it hands over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Reads {
    /// All of them: hyper's HTTP/1 dispatcher reads the extensions it knows (the case and
    /// order of header names) when it writes the head, and the connector's own mark lives
    /// there. They stay in the request; the head keeps a clone.
    Extensions,
    /// Only the extended `CONNECT` protocol: hyper's HTTP/2 client and h2 read
    /// [`hyper::ext::Protocol`] (h2 its own [`h2::ext::Protocol`]) and clear the rest as they
    /// open the stream. The rest moves into the head, so nothing is cloned per request.
    Protocol,
}

/// Copies into `to` the extended `CONNECT` protocol of `from`, the one extension of a request
/// that hyper's HTTP/2 client and h2 read.
fn hand_over_protocol(from: &Extensions, to: &mut Extensions) {
    if let Some(protocol) = from.get::<hyper::ext::Protocol>() {
        to.insert(protocol.clone());
    }
    if let Some(protocol) = from.get::<h2::ext::Protocol>() {
        to.insert(protocol.clone());
    }
}

/// A request head, kept before the request is sent.
struct Head {
    method: Method,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
    extensions: Extensions,
    reads: Reads,
}

impl Head {
    /// Keeps the head of `request`, leaving in it what its connection reads.
    fn keep<T>(request: &mut Request<T>, reads: Reads) -> Self {
        let extensions = match reads {
            Reads::Extensions => request.extensions().clone(),
            Reads::Protocol => {
                let extensions = std::mem::take(request.extensions_mut());
                hand_over_protocol(&extensions, request.extensions_mut());
                extensions
            }
        };
        Self {
            method: request.method().clone(),
            uri: request.uri().clone(),
            version: request.version(),
            headers: request.headers().clone(),
            extensions,
            reads,
        }
    }

    /// The request to send again, with `body`; the head stays kept for a further resend.
    fn request<T>(&self, body: T) -> Request<T> {
        let mut request = Request::new(body);
        *request.method_mut() = self.method.clone();
        *request.uri_mut() = self.uri.clone();
        *request.version_mut() = self.version;
        *request.headers_mut() = self.headers.clone();
        match self.reads {
            Reads::Extensions => *request.extensions_mut() = self.extensions.clone(),
            Reads::Protocol => hand_over_protocol(&self.extensions, request.extensions_mut()),
        }
        request
    }
}

/// What a call keeps to send its request again: the head as the caller gave it and a handle
/// on the body (nothing when resends are off).
pub(crate) struct Kept<B> {
    head: Option<Head>,
    body: ReplayBody<B>,
}

impl<B: http_body::Body> Kept<B> {
    /// Wraps the body of `request` for replays and keeps its head, leaving in the request the
    /// extensions its connection `reads`. The body's bytes are recorded only if `record_body`:
    /// a request whose body may be read before a failure that allows a resend (else only a
    /// request never taken is sent again, whose body was never read).
    pub(crate) fn prepare(
        mut request: Request<B>,
        config: &ReplayConfig,
        record_body: bool,
        reads: Reads,
    ) -> (Request<ReplayBody<B>>, Self) {
        let resends = config.max_replays > 0;
        let head = resends.then(|| Head::keep(&mut request, reads));
        let limit = if resends && record_body {
            config.max_body
        } else {
            0
        };
        let request = request.map(|body| ReplayBody::new(body, limit));
        let body = request.body().handle();
        (request, Self { head, body })
    }
}

impl<B> Drop for Kept<B> {
    /// The call is over: nothing will be sent again, so the body need not be kept.
    fn drop(&mut self) {
        self.body.stop_recording();
    }
}

// === sending again ===

/// After `failure` on connection `number`: sends the request again on the connector's next
/// connection (for `REFUSED_STREAM`, its newest one that takes requests, which may be the
/// same) while each failure proves the server did not process it, at most
/// `config.max_replays` times; else fails with `NotProcessed` (or with the error, when the
/// server may have processed the request).
pub(crate) async fn recover<C>(
    mut failure: Failure<C::Body>,
    kept: Kept<C::Body>,
    mut number: u64,
    mut latest: watch::Receiver<Latest<C>>,
    config: Arc<ReplayConfig>,
    mut failed: Weak<C>,
) -> Result<Response<Incoming>, BoxError>
where
    C: Resend,
{
    let mut replays = 0;
    loop {
        let Some(refusal) = failure.refusal else {
            return Err(failure.error);
        };
        let not_processed = |why, error| {
            config.counters.refused();
            Err(BoxError::from(NotProcessed {
                refusal,
                why,
                source: error,
            }))
        };
        if replays >= config.max_replays {
            return not_processed(Why::Limit(config.max_replays), failure.error);
        }
        let body = match kept.body.replay() {
            Ok(body) => body,
            Err(TooLarge) => return not_processed(Why::TooLarge(config.max_body), failure.error),
        };
        let request = match (&kept.head, failure.request.take()) {
            (Some(head), _) => head.request(body),
            (None, Some(handed_back)) => handed_back.map(|_| body),
            (None, None) => return not_processed(Why::NotKept, failure.error),
        };
        // A stream refused on a connection that still takes requests may go to the same
        // connection again; anything else waits for a newer one.
        let after = match refusal {
            Refusal::RefusedStream => number.saturating_sub(1),
            _ => number,
        };
        let siblings = config.siblings.as_deref();
        let Some(next) = next_connection(&mut latest, after, siblings, &failed).await else {
            return not_processed(Why::ConnectorGone, failure.error);
        };
        replays += 1;
        if refusal != Refusal::Retired {
            // Kept back, not refused: no resend of the server's doing.
            config.counters.replayed();
        }
        tracing::debug!(
            %refusal,
            replay = replays,
            "the server did not process the request: sending it again on the next connection",
        );
        // Should it fail too, what comes next is relative to the connection it was sent on
        // (another replica's, perhaps).
        number = next.lineage().number;
        latest = next.lineage().latest.clone();
        failed = Arc::downgrade(&next);
        match next.send(request).await {
            Ok(response) => return Ok(response),
            Err(next_failure) => failure = next_failure,
        }
    }
}

/// The response to the request sent as `sent` on `connection`; after a failure, what
/// [`recover`] makes of it. The connection is not kept while a resend waits for the next one.
pub(crate) async fn or_recover<C: Resend>(
    sent: impl Future<Output = Result<Response<Incoming>, Failure<C::Body>>>,
    kept: Kept<C::Body>,
    connection: Arc<C>,
) -> Result<Response<Incoming>, BoxError> {
    match sent.await {
        Ok(response) => Ok(response),
        Err(failure) => {
            let lineage = connection.lineage();
            let (number, latest, config) = (
                lineage.number,
                lineage.latest.clone(),
                lineage.config.clone(),
            );
            let failed = Arc::downgrade(&connection);
            drop(connection);
            recover(failure, kept, number, latest, config, failed).await
        }
    }
}

// === NotProcessed ===

/// A request failed, but the server provably never processed it, and the connector could not
/// send it again: it is safe for the caller to retry, whatever the request.
///
/// The crate's HTTP connectors send such a request again on their next connection by
/// themselves, up to [`max_replays`](super::Http2Connector::max_replays) times; this error
/// comes when the limit is reached, when the body was larger than the bytes kept for a resend
/// ([`max_replay_body`](super::Http2Connector::max_replay_body)), or when no next connection
/// will come (the layer was closed). Each one is counted in
/// [`Stats::refused_requests`](crate::observe::Stats::refused_requests).
///
/// Its `source()` is the underlying hyper error. Find it in an error's source chain (a
/// `Buffer` wraps errors):
///
/// ```
/// use persistent_connection::{BoxError, http::NotProcessed};
///
/// fn safe_to_retry(error: &BoxError) -> bool {
///     let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error.as_ref());
///     while let Some(error) = source {
///         if error.is::<NotProcessed>() {
///             return true;
///         }
///         source = error.source();
///     }
///     false
/// }
/// # assert!(!safe_to_retry(&BoxError::from("other")));
/// ```
#[derive(Debug)]
pub struct NotProcessed {
    refusal: Refusal,
    why: Why,
    source: BoxError,
}

/// Why a request the server did not process was not sent again.
#[derive(Clone, Copy, Debug)]
enum Why {
    Limit(usize),
    TooLarge(usize),
    ConnectorGone,
    NotKept,
}

impl fmt::Display for NotProcessed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the server did not process the request ({}) and it was not sent again: ",
            self.refusal
        )?;
        match self.why {
            Why::Limit(0) => f.write_str("resends are off (max_replays is 0)"),
            Why::Limit(max) => write!(f, "it was already sent again {max} times (max_replays)"),
            Why::TooLarge(max) => write!(
                f,
                "its body was larger than the {max} bytes kept for a resend (max_replay_body)"
            ),
            Why::ConnectorGone => f.write_str(
                "no next connection will come (the connector is gone: the layer was closed)",
            ),
            Why::NotKept => f.write_str("the request was not kept for a resend"),
        }
    }
}

impl StdError for NotProcessed {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        Some(&*self.source)
    }
}

#[cfg(test)]
mod tests {
    use std::{convert::Infallible, future::ready, time::Duration};

    use bytes::Bytes;
    use http_body_util::Empty;
    use hyper::{server, service::service_fn};
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use tokio::{
        net::{TcpListener, TcpStream},
        sync::{mpsc, oneshot},
    };

    use super::*;

    #[derive(Clone, Debug, PartialEq)]
    struct Tag(u32);

    /// A request carrying a caller's extension and an extended `CONNECT` protocol.
    fn tagged() -> Request<Empty<Bytes>> {
        let mut request = Request::post("http://example.com/upload")
            .header("x-trace", "7")
            .body(Empty::new())
            .unwrap();
        request.extensions_mut().insert(Tag(7));
        request
            .extensions_mut()
            .insert(hyper::ext::Protocol::from_static("websocket"));
        request
    }

    #[test]
    fn an_http2_head_takes_the_extensions_and_leaves_hyper_the_protocol() {
        let (handed_over, kept) =
            Kept::prepare(tagged(), &ReplayConfig::new(), true, Reads::Protocol);
        // What h2 and hyper read stays; the rest is the head's, not cloned.
        let protocol = handed_over.extensions().get::<hyper::ext::Protocol>();
        assert_eq!(
            protocol.map(hyper::ext::Protocol::as_str),
            Some("websocket")
        );
        assert_eq!(handed_over.extensions().get::<Tag>(), None);
        assert_eq!(handed_over.headers()["x-trace"], "7");

        // Each resend is the whole request again, with the same hand-over.
        let head = kept.head.as_ref().expect("resends are on");
        assert_eq!(head.extensions.get::<Tag>(), Some(&Tag(7)));
        for _ in 0..2 {
            let again = head.request(());
            assert_eq!(again.method(), Method::POST);
            assert_eq!(again.uri(), "http://example.com/upload");
            assert_eq!(again.headers()["x-trace"], "7");
            assert_eq!(again.extensions().get::<Tag>(), None);
            let protocol = again.extensions().get::<hyper::ext::Protocol>();
            assert_eq!(
                protocol.map(hyper::ext::Protocol::as_str),
                Some("websocket")
            );
        }
        assert_eq!(head.extensions.get::<Tag>(), Some(&Tag(7)));
    }

    #[test]
    fn an_http1_head_clones_the_extensions_hyper_reads() {
        let (handed_over, kept) =
            Kept::prepare(tagged(), &ReplayConfig::new(), true, Reads::Extensions);
        assert_eq!(handed_over.extensions().get::<Tag>(), Some(&Tag(7)));
        let head = kept.head.as_ref().expect("resends are on");
        for _ in 0..2 {
            assert_eq!(head.request(()).extensions().get::<Tag>(), Some(&Tag(7)));
        }
    }

    #[test]
    fn without_resends_nothing_is_kept_or_taken() {
        let config = ReplayConfig {
            max_replays: 0,
            ..ReplayConfig::new()
        };
        let (handed_over, kept) = Kept::prepare(tagged(), &config, true, Reads::Protocol);
        assert!(kept.head.is_none());
        assert_eq!(handed_over.extensions().get::<Tag>(), Some(&Tag(7)));
    }

    /// A connection of a test: it only has a lineage, and takes requests or not.
    struct Fake {
        lineage: Lineage<Self>,
        refuses: bool,
    }

    impl Resend for Fake {
        type Body = Empty<Bytes>;

        fn lineage(&self) -> &Lineage<Self> {
            &self.lineage
        }

        fn refuses_new(&self) -> bool {
            self.refuses
        }

        #[allow(clippy::manual_async_fn)]
        fn send(
            self: Arc<Self>,
            _: Request<ReplayBody<Empty<Bytes>>>,
        ) -> impl Future<Output = Result<Response<Incoming>, Failure<Empty<Bytes>>>> + Send
        {
            async { Err(Failure::stranded()) }
        }
    }

    /// One connector's first connection, with `siblings`.
    fn fake(siblings: &Arc<Siblings>, refuses: bool) -> (Arc<Fake>, Newest<Fake>) {
        let newest = newest();
        let config = Arc::new(ReplayConfig {
            siblings: Some(siblings.clone()),
            ..ReplayConfig::new()
        });
        let receiver = newest.subscribe();
        let connection = publish(&newest, |number| {
            Arc::new(Fake {
                lineage: Lineage {
                    number,
                    latest: receiver,
                    config,
                },
                refuses,
            })
        })
        .unwrap();
        siblings.join(&connection);
        (connection, newest)
    }

    #[tokio::test(start_paused = true)]
    async fn a_replica_that_cannot_send_hands_the_request_to_another_replica() {
        let siblings = Arc::new(Siblings::new());
        let (failed, _connector) = fake(&siblings, true);
        let (other, _other_connector) = fake(&siblings, false);
        let mut latest = failed.lineage.latest.clone();
        let next = next_connection(&mut latest, 1, Some(&siblings), &Arc::downgrade(&failed))
            .await
            .expect("another replica's connection");
        assert!(
            Arc::ptr_eq(&next, &other),
            "not the failed one, nor its replica's next"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn with_no_other_replica_connected_the_request_waits_for_the_first_that_connects() {
        let siblings = Arc::new(Siblings::new());
        let (failed, _connector) = fake(&siblings, true);
        // Another replica's connection that refuses new requests is no use.
        let (_closing, _closing_connector) = fake(&siblings, true);
        let mut latest = failed.lineage.latest.clone();
        let weak = Arc::downgrade(&failed);
        let waiting = next_connection(&mut latest, 1, Some(&siblings), &weak);
        let mut waiting = std::pin::pin!(waiting);
        assert!(
            futures_util::poll!(waiting.as_mut()).is_pending(),
            "no connection takes requests yet"
        );
        let (joined, _joined_connector) = fake(&siblings, false);
        let next = waiting.await.expect("the replica that connected");
        assert!(Arc::ptr_eq(&next, &joined));
    }

    #[tokio::test(start_paused = true)]
    async fn without_siblings_a_request_waits_for_its_own_connectors_next_connection() {
        let siblings = Arc::new(Siblings::new());
        let (failed, _connector) = fake(&siblings, true);
        let (_other, _other_connector) = fake(&siblings, false);
        let mut latest = failed.lineage.latest.clone();
        let weak = Arc::downgrade(&failed);
        let waiting = next_connection(&mut latest, 1, None, &weak);
        let mut waiting = std::pin::pin!(waiting);
        assert!(futures_util::poll!(waiting.as_mut()).is_pending());
    }

    fn marked() -> (Request<Empty<Bytes>>, UntakenMark) {
        let mut request = Request::get("http://localhost/")
            .body(Empty::new())
            .unwrap();
        let mark = mark_untaken(&mut request);
        (request, mark)
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_left_untaken_when_the_task_ends_fails_as_never_written() {
        let (request, mark) = marked();
        let sent = pending::<Result<(), Failure<()>>>();
        let failure = unless_stranded(sent, mark, ready(())).await.unwrap_err();
        assert_eq!(failure.refusal, Some(Refusal::HandedBack));
        assert!(failure.request.is_none());
        drop(request);
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_taken_before_the_task_ends_waits_for_its_answer() {
        let (request, mark) = marked();
        drop(request); // taken: hyper dropped its extensions
        let sent = async {
            tokio::time::sleep(Duration::from_secs(60)).await;
            Ok::<_, Failure<()>>("answer")
        };
        let answer = unless_stranded(sent, mark, ready(())).await;
        assert_eq!(answer.ok(), Some("answer"));
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_comes_before_the_end_of_the_task() {
        let (_request, mark) = marked();
        let answer = unless_stranded(ready(Ok::<_, Failure<()>>(7)), mark, ready(())).await;
        assert_eq!(answer.ok(), Some(7));
    }

    /// A server on 127.0.0.1 that reports each request it receives and answers it when the
    /// test says so.
    /// Waits (at most 30 s) until the [`holding_server`] has received a request; returns what
    /// answers it.
    async fn next_arrival(
        arrivals: &mut mpsc::Receiver<oneshot::Sender<()>>,
    ) -> oneshot::Sender<()> {
        tokio::time::timeout(Duration::from_secs(30), arrivals.recv())
            .await
            .expect("the server received the request")
            .expect("the server is running")
    }

    async fn holding_server(
        http2: bool,
    ) -> (std::net::SocketAddr, mpsc::Receiver<oneshot::Sender<()>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (arrived, arrivals) = mpsc::channel(4);
        tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let service = service_fn(move |_: Request<hyper::body::Incoming>| {
                let arrived = arrived.clone();
                async move {
                    let (answer, answered) = oneshot::channel();
                    let _ = arrived.send(answer).await;
                    let _ = answered.await;
                    Ok::<_, Infallible>(hyper::Response::new(Empty::<Bytes>::new()))
                }
            });
            let io = TokioIo::new(stream);
            if http2 {
                let _ = server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(io, service)
                    .await;
            } else {
                let _ = server::conn::http1::Builder::new()
                    .serve_connection(io, service)
                    .await;
            }
        });
        (addr, arrivals)
    }

    /// The premise of `ReplayBody::mark_taken` (what HTTP/2 calls use instead of
    /// `mark_untaken`): hyper's HTTP/2 dispatcher looks at a request's body as soon as it takes
    /// the request from its queue, so a request the server has received is never taken for a
    /// stranded one; and a request still in the queue is not marked taken.
    #[tokio::test]
    async fn hyper_looks_at_the_body_of_a_request_it_has_taken() {
        use http_body_util::Full;

        use super::super::replay::ReplayBody;

        for body in [Bytes::new(), Bytes::from_static(b"payload")] {
            let (addr, mut arrivals) = holding_server(true).await;
            let io = TokioIo::new(TcpStream::connect(addr).await.unwrap());
            let (mut send, connection) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                    .await
                    .unwrap();
            let mut request = Request::post("http://localhost/")
                .body(ReplayBody::new(Full::new(body.clone()), 1024))
                .unwrap();
            let mark = request.body_mut().mark_taken();
            let response = send.try_send_request(request);
            tokio::task::yield_now().await;
            assert!(
                mark.is_untaken(),
                "body {body:?}: queued while the connection task is not running, yet marked taken"
            );
            tokio::spawn(connection);
            let response = tokio::spawn(response);
            let answer = next_arrival(&mut arrivals).await;
            assert!(
                !mark.is_untaken(),
                "body {body:?}: the server has the request but its mark says untaken"
            );
            answer.send(()).unwrap();
            assert!(response.await.unwrap().is_ok());
        }
    }

    /// The premise of `unless_stranded`: hyper's connection task drops a request's extensions
    /// (and with them the mark) once it has taken the request, so a request the server has
    /// received is never taken for a stranded one.
    #[tokio::test]
    async fn hyper_drops_the_mark_of_a_request_it_has_taken() {
        for http2 in [true, false] {
            let (addr, mut arrivals) = holding_server(http2).await;
            let io = TokioIo::new(TcpStream::connect(addr).await.unwrap());
            let (request, mark) = marked();
            let response = if http2 {
                let (mut send, connection) =
                    hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                        .await
                        .unwrap();
                tokio::spawn(connection);
                tokio::spawn(send.send_request(request))
            } else {
                let (mut send, connection) =
                    hyper::client::conn::http1::handshake(io).await.unwrap();
                tokio::spawn(connection);
                tokio::spawn(send.send_request(request))
            };
            let answer = next_arrival(&mut arrivals).await;
            assert!(
                !mark.is_untaken(),
                "http2 {http2}: the server has the request but its mark lives"
            );
            answer.send(()).unwrap();
            response.await.unwrap().unwrap();
        }
    }
}
