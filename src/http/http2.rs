//! [`Http2Connector`]: dials TCP, performs the hyper HTTP/2 handshake, waits for the server's
//! preface, and returns an [`Http2Connection`].

use std::{
    fmt,
    future::{Future, poll_fn},
    io,
    marker::PhantomData,
    pin::Pin,
    sync::{
        Arc, Mutex, PoisonError, Weak,
        atomic::{AtomicBool, AtomicU32, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use http::{Request, Response};
use http_body::Body;
use hyper::{
    body::Incoming,
    client::conn::{TrySendError, http2},
};
use hyper_util::rt::{TokioIo, TokioTimer};
use pin_project_lite::pin_project;
use tokio::sync::{Notify, futures::OwnedNotified, watch};
use tower_service::Service;

use super::{
    ArcError, ConnectionUnavailable, Dial, Executor, Origin,
    ahead::Ahead,
    base::{Core, handshake_for, secure, spawn_watched},
    gate::GoAwayGate,
    keep_alive::KeepAliveInterval,
    origin_for,
    replay::{ReplayBody, TakenMark},
    resend::{
        self, Failure, Kept, Lineage, Newest, Reads, ReplayConfig, Resend, h2_refusal, or_recover,
    },
    sniff::{self, FrameWatch, Sniff, Status},
    tls::Tls,
};
use crate::{
    BoxError, PersistentConnection, PersistentConnectionLayer, close::CloseReason,
    health::HealthCheck, observe::OnEvent,
};

/// The default interval of HTTP/2 keep-alive pings: what a gRPC server with default settings
/// accepts (`grpc.http2.min_ping_interval_without_data_ms`, 5 minutes; gRFC A8).
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(300);
/// The default time to wait for a ping's answer before the connection counts as dead.
const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// A maker of HTTP/2 connections: `Service<A>` for any [`Dial`] address, whose response is an
/// [`Http2Connection<B>`] (`B` is the request body type).
///
/// For each address it dials TCP (with `TCP_NODELAY`), performs the HTTP/2 handshake, spawns
/// the connection task, and waits for the server's first frame before it reports success: a
/// server that accepts TCP and closes at once is a failed attempt, not a connection.
///
/// # Keep-alive
///
/// By default the connector pings at most every 5 minutes, only while requests are in flight
/// ([`keep_alive_while_idle`](Self::keep_alive_while_idle) is `false`), and a ping unanswered
/// within 20 s ends the connection. These are the limits a gRPC server with default settings
/// accepts (gRFC A8): it allows one ping every 5 minutes while calls are active and none on an
/// idle connection, and closes a connection that pings more often with `GOAWAY`
/// (`ENHANCE_YOUR_CALM`, `too_many_pings`). The trade-off is dead-peer detection: a silently
/// dead peer (blackholed, half-open) is noticed up to 5 minutes 20 s after the last bytes it
/// sent while a request waits (so give requests a timeout of their own), and the death of an
/// idle connection is not noticed at all until a request is sent on it, which then waits as
/// long.
///
/// For servers that allow frequent pings (nginx, Envoy, hyper and Go servers by default, or a
/// gRPC server with `grpc.keepalive_permit_without_calls = 1` and a low
/// `grpc.http2.min_ping_interval_without_data_ms`), turn on aggressive keep-alive: a dead peer
/// is then noticed within interval + timeout, idle or not, at the cost of a ping frame each
/// interval:
///
/// ```
/// # use std::time::Duration;
/// # use persistent_connection::http::Http2Connector;
/// # use http_body_util::Empty;
/// # use bytes::Bytes;
/// let aggressive = Http2Connector::<Empty<Bytes>>::new()
///     .keep_alive_interval(Some(Duration::from_secs(10)))
///     .keep_alive_timeout(Duration::from_secs(5))
///     .keep_alive_while_idle(true); // dead peer noticed within ~15 s, idle or not
/// # drop(aggressive);
/// ```
///
/// If a server still answers with `GOAWAY` `too_many_pings`, the connector logs a warning and
/// doubles the keep-alive interval for its new connections (up to 2 hours; the clones of a
/// connector share it), and the connection's close signal reports a graceful close, so the
/// layer replaces it at once without counting a failure.
/// [`current_keep_alive_interval`](Self::current_keep_alive_interval) tells the interval in
/// use.
///
/// A request the server provably never processed (its stream was above the last stream id of
/// the server's `GOAWAY`, or refused with `REFUSED_STREAM`, or hyper handed it back unwritten)
/// is sent again on this connector's next connection, up to
/// [`max_replays`](Self::max_replays) times, if its body fits in
/// [`max_replay_body`](Self::max_replay_body); else it fails with
/// [`NotProcessed`](super::NotProcessed). See the [module documentation](super).
///
/// ```
/// use std::net::SocketAddr;
/// use std::time::Duration;
/// use persistent_connection::{PersistentConnectionLayer, http::Http2Connector};
/// use http_body_util::Empty;
/// use bytes::Bytes;
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let connector = Http2Connector::<Empty<Bytes>>::new()
///     .keep_alive_interval(Some(Duration::from_secs(30)))
///     .initial_stream_window_size(1 << 20);
/// let addr: SocketAddr = "127.0.0.1:50051".parse().unwrap();
/// let svc = PersistentConnectionLayer::fixed_address(addr)
///     .server_name("billing")
///     .http2(connector); // wires the close signal; requests get authority "billing"
/// # drop(svc);
/// # }
/// ```
pub struct Http2Connector<B> {
    builder: http2::Builder<Executor>,
    core: Core<Shared<B>>,
    keep_alive: Arc<KeepAliveInterval>,
    /// The server's request limit and the connection dialed ahead of it; `None` when off.
    ahead: Option<Arc<Ahead<Http2Connection<B>>>>,
    /// Whether pings go out while no request is in flight (`keep_alive_while_idle`).
    idle_pings: bool,
    _body: PhantomData<fn(B)>,
}

impl<B> Http2Connector<B> {
    /// A connector with hyper's HTTP/2 defaults, and keep-alive within what gRPC servers
    /// accept: a ping at most every 5 minutes while requests are in flight, none while idle,
    /// answered within 20 s (see [Keep-alive](Self#keep-alive)).
    pub fn new() -> Self {
        let mut builder = http2::Builder::new(Executor::new());
        builder
            .timer(TokioTimer::new())
            .keep_alive_interval(KEEP_ALIVE_INTERVAL)
            .keep_alive_timeout(KEEP_ALIVE_TIMEOUT)
            .keep_alive_while_idle(false);
        Self {
            builder,
            core: Core::new(),
            keep_alive: Arc::new(KeepAliveInterval::new(Some(KEEP_ALIVE_INTERVAL))),
            ahead: Some(Arc::new(Ahead::new())),
            idle_pings: false,
            _body: PhantomData,
        }
    }

    /// The interval of keep-alive pings (a ping is sent when nothing has been received for
    /// this long); `None` (or zero) turns keep-alive off (then a silently dead peer is only
    /// noticed by TCP, after minutes). Default is 5 minutes, the shortest a gRPC server
    /// accepts by default; see [Keep-alive](Self#keep-alive).
    ///
    /// This sets the interval of a new, unshared cell: clones made before this call keep
    /// theirs; clones made after share this one, and with it the doubling when a server
    /// complains of too many pings.
    pub fn keep_alive_interval(mut self, interval: Option<Duration>) -> Self {
        self.keep_alive = Arc::new(KeepAliveInterval::new(interval));
        self
    }

    /// The keep-alive interval new connections get: the configured
    /// [`keep_alive_interval`](Self::keep_alive_interval), doubled for each time a server
    /// complained of too many pings (`GOAWAY` with `ENHANCE_YOUR_CALM` and `too_many_pings`)
    /// on a connection made with the interval of the time, up to 2 hours (or the configured
    /// interval, if larger). `None` when keep-alive is off. Shared by the connector's clones.
    pub fn current_keep_alive_interval(&self) -> Option<Duration> {
        self.keep_alive.get()
    }

    /// How long to wait for a ping's answer before the connection counts as dead. Default is
    /// 20 seconds.
    pub fn keep_alive_timeout(mut self, timeout: Duration) -> Self {
        self.builder.keep_alive_timeout(timeout);
        self
    }

    /// Whether to ping while no request is in flight. Default is `false`: gRPC servers do not
    /// allow pings on a connection without calls by default (they answer with `GOAWAY`
    /// `too_many_pings`), so a dead idle connection is noticed only when a request is sent on
    /// it. Turn it on for servers that allow it, so an idle connection is checked too and
    /// replaced before a request needs it; see [Keep-alive](Self#keep-alive).
    pub fn keep_alive_while_idle(mut self, enabled: bool) -> Self {
        self.builder.keep_alive_while_idle(enabled);
        self.idle_pings = enabled;
        self
    }

    /// The initial flow-control window of each stream, in bytes. Default is hyper's (5 MiB).
    pub fn initial_stream_window_size(mut self, size: u32) -> Self {
        self.builder.initial_stream_window_size(size);
        self
    }

    /// The initial flow-control window of the connection, in bytes. Default is hyper's
    /// (5 MiB).
    pub fn initial_connection_window_size(mut self, size: u32) -> Self {
        self.builder.initial_connection_window_size(size);
        self
    }

    /// Whether to size the flow-control windows adaptively (BDP estimation), overriding the
    /// window sizes. Default is `false`.
    pub fn adaptive_window(mut self, enabled: bool) -> Self {
        self.builder.adaptive_window(enabled);
        self
    }

    /// How many streams this client opens at once before the server's SETTINGS say how many
    /// it allows (after that, the server's limit applies). Default is hyper's (100).
    pub fn initial_max_send_streams(mut self, max: usize) -> Self {
        self.builder.initial_max_send_streams(max);
        self
    }

    /// How many concurrent streams the server may open toward this client (server push).
    /// Default is hyper's (no limit set).
    pub fn max_concurrent_streams(mut self, max: u32) -> Self {
        self.builder.max_concurrent_streams(max);
        self
    }

    /// Whether to dial the next connection ahead of the server's request limit. Default is
    /// `true`.
    ///
    /// A server that says goodbye after a fixed number of requests on each connection (nginx's
    /// `keepalive_requests`, 1000 by default) names the last stream it took in its `GOAWAY`.
    /// Once two connections in a row have ended at the same count, the connector dials the
    /// next connection when half of the count has been sent on the current one, and the
    /// layer's next attempt takes it ready (if the address is the same), so the
    /// goodbye costs no handshake. A server whose goodbyes come at varying counts gets no
    /// connection ahead; a connection dialed ahead that the server closes before it is
    /// needed is not used.
    pub fn dial_ahead(mut self, enabled: bool) -> Self {
        self.ahead = enabled.then(|| Arc::new(Ahead::new()));
        self
    }

    /// Secures every connection with TLS: the handshake follows the TCP connect, within the
    /// attempt (so the layer's connect timeout bounds it), offering ALPN `h2`; a server that
    /// does not choose `h2` fails the attempt with a [`TlsError`](super::TlsError) that says
    /// so. Requests get the `https` scheme. The name verified in the server's certificate and
    /// sent as SNI is [`TlsConfig::server_name`](super::TlsConfig::server_name), else the
    /// layer's server name (with [`PersistentConnectionLayer::http2`]), else the host of the
    /// [origin](Self::origin); never the address dialed. A failed handshake (unknown issuer,
    /// a certificate not valid for the name or expired, a client certificate the server
    /// refuses) is a failed attempt, with a [`TlsError`](super::TlsError) that says why.
    #[cfg(feature = "_tls")]
    #[cfg_attr(docsrs, doc(cfg(any(feature = "tls", feature = "tls-aws-lc-rs"))))]
    pub fn tls(mut self, config: super::TlsConfig) -> Self {
        self.core.tls = Some(super::tls::Tls::h2(config));
        self
    }

    super::base::core_settings!(
        "Http2Connector",
        "http2",
        origin: "The scheme and authority given to requests whose URI has none (tonic sends path-only URIs): `\"http://billing\"` or `\"billing:8080\"` (scheme `http` by default).",
        body: "a request body",
    );

    /// The underlying hyper builder, for the settings not exposed here. Its keep-alive
    /// interval is overwritten on each connect by the connector's
    /// ([`keep_alive_interval`](Self::keep_alive_interval)). Its executor is the crate's
    /// [`Executor`](super::Executor), which boxes each of hyper's tasks before spawning it.
    pub fn builder_mut(&mut self) -> &mut http2::Builder<Executor> {
        &mut self.builder
    }
}

super::base::default_is_new!(Http2Connector);

impl<B> Clone for Http2Connector<B> {
    /// A connector with the same settings, request counters and keep-alive interval (shared,
    /// so a server's complaint of too many pings slows every clone). What is learned of a
    /// server's request limit, and the connections, are the clone's own: a request refused
    /// on one of them goes to the clone's next connection, never to another clone's.
    fn clone(&self) -> Self {
        Self {
            builder: self.builder.clone(),
            core: self.core.fork(),
            keep_alive: self.keep_alive.clone(),
            ahead: self.ahead.as_ref().map(|_| Arc::new(Ahead::new())),
            idle_pings: self.idle_pings,
            _body: PhantomData,
        }
    }
}

impl<B> fmt::Debug for Http2Connector<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Http2Connector")
            .field("origin", &self.core.origin)
            .field("tls", &self.core.tls)
            .field("keep_alive_interval", &self.keep_alive.get())
            .finish_non_exhaustive()
    }
}

impl<A, B> Service<A> for Http2Connector<B>
where
    A: Dial,
    B: Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    type Response = Http2Connection<B>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Http2Connection<B>, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, address: A) -> Self::Future {
        let dialer = Dialer {
            builder: self.builder.clone(),
            origin: self.core.origin.clone(),
            tls: self.core.tls.clone(),
            keep_alive: self.keep_alive.clone(),
            latest: self.core.latest.clone(),
            replay: Arc::new(self.core.replay.clone()),
            ahead: self.ahead.as_ref().map(Arc::downgrade),
            idle_pings: self.idle_pings,
        };
        let spare = self
            .ahead
            .as_ref()
            .and_then(|ahead| ahead.take(&address.authority()));
        Box::pin(async move {
            if let Some(spare) = spare {
                match spare.await {
                    Ok(Ok(connection)) if !connection.is_closed() => {
                        tracing::debug!("taking the connection dialed ahead of the request limit");
                        return Ok(connection);
                    }
                    Ok(Ok(_)) => tracing::debug!("the connection dialed ahead closed before use"),
                    Ok(Err(error)) => {
                        tracing::debug!(%error, "the connection dialed ahead failed");
                    }
                    Err(_) => {}
                }
            }
            dialer.connect(address).await
        })
    }
}

/// What a connection is made with: the connector's settings as of the attempt.
struct Dialer<B> {
    builder: http2::Builder<Executor>,
    origin: Option<Arc<Origin>>,
    tls: Option<Tls>,
    keep_alive: Arc<KeepAliveInterval>,
    latest: Newest<Shared<B>>,
    replay: Arc<ReplayConfig>,
    /// Weak: a connection dialed ahead, held by the connector, watches its own frames with a
    /// dialer, and must not keep the connector's state alive.
    ahead: Option<Weak<Ahead<Http2Connection<B>>>>,
    idle_pings: bool,
}

impl<B> Clone for Dialer<B> {
    fn clone(&self) -> Self {
        Self {
            builder: self.builder.clone(),
            origin: self.origin.clone(),
            tls: self.tls.clone(),
            keep_alive: self.keep_alive.clone(),
            latest: self.latest.clone(),
            replay: self.replay.clone(),
            ahead: self.ahead.clone(),
            idle_pings: self.idle_pings,
        }
    }
}

impl<B> Dialer<B>
where
    B: Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    /// Dials `address`, performs the handshake, spawns the connection task, and waits for
    /// the server's preface.
    fn connect<A: Dial>(
        self,
        address: A,
    ) -> Pin<Box<dyn Future<Output = Result<Http2Connection<B>, BoxError>> + Send>> {
        let mut builder = self.builder.clone();
        let keep_alive = self.keep_alive.clone();
        let interval = keep_alive.get();
        builder.keep_alive_interval(interval);
        let origin = origin_for(&self.origin, &address, self.tls.is_some());
        let handshake = handshake_for(&self.tls, &self.origin, &address);
        let ahead = self.ahead.clone();
        let known = ahead.as_ref().and_then(Weak::upgrade);
        let threshold = known.as_ref().and_then(|ahead| ahead.threshold());
        let retire_after = known
            .and_then(|ahead| ahead.limit())
            .filter(|_| self.replay.max_replays > 0);
        Box::pin(async move {
            let handshake = handshake?;
            let stream = address.dial().await.map_err(|error| match error.kind() {
                // The server took the connection and dropped it at once.
                io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted => {
                    NoPreface::because(error.into())
                }
                _ => BoxError::from(error),
            })?;
            let stream = secure(stream, handshake.as_ref()).await?;
            // After the handshake, a failure that a TLS error caused (with TLS 1.3, a client
            // certificate the server refuses shows on the first read) says so.
            let explain = |error: BoxError| match &handshake {
                Some(handshake) => handshake.explain(error),
                None => error,
            };
            let status = Arc::new(watch::Sender::new(Status::default()));
            let record = ahead.clone();
            let pinged = Pinged {
                asked: Arc::new(AtomicBool::new(false)),
                pings: interval.is_some(),
                while_idle: self.idle_pings,
            };
            let could_ping = pinged.clone();
            let gate = Arc::new(GoAwayGate::default());
            let frames = FrameWatch::new(status.clone()).gate(gate.clone());
            let frames = frames.on_goaway(Arc::new(move |goaway| {
                // A complaint of pings the connection never sent is no reason to slow down.
                if could_ping.could_have_pinged() {
                    keep_alive.on_goaway(interval, goaway);
                }
                if let Some(ahead) = record.as_ref().and_then(Weak::upgrade) {
                    if goaway.error_code == 0 {
                        ahead.record_goodbye(goaway.last_stream_id);
                    }
                }
            }));
            // Called by the request at the threshold (from a user's task, in the runtime
            // that made this connection).
            let dial_ahead = match (threshold, ahead.clone()) {
                (Some(threshold), Some(weak)) => {
                    let (dialer, next) = (self.clone(), address.clone());
                    let runtime = tokio::runtime::Handle::current();
                    let dial: DialAhead = Box::new(move || {
                        if let Some(ahead) = weak.upgrade() {
                            tracing::debug!(
                                "dialing the next connection ahead of the server's request limit"
                            );
                            let _entered = runtime.enter();
                            ahead.dial(next.authority(), dialer.connect(next));
                        }
                    });
                    Some((threshold, dial))
                }
                _ => None,
            };
            let io = TokioIo::new(Sniff::new(stream, frames));
            let (send, connection) = builder
                .handshake::<_, ReplayBody<B>>(io)
                .await
                .map_err(|error| explain(NoPreface::because(error.into())))?;
            let forget = ahead.clone();
            let (ended, end) = (Arc::new(AtomicBool::new(false)), Arc::new(Notify::new()));
            let (task_ended, task_end) = (ended.clone(), end.clone());
            spawn_watched(
                gate.dispatching(connection),
                status.clone(),
                move |result, status| {
                    if status.retired && !status.goaway {
                        // Retired at the limit, and the server never said goodbye: no limit.
                        if let Some(ahead) = forget.as_ref().and_then(Weak::upgrade) {
                            ahead.forget();
                        }
                    }
                    task_ended.store(true, Ordering::Release);
                    task_end.notify_waiters();
                    result
                },
            );

            // hyper's handshake returns before the server has said anything: wait for its
            // preface, so a server that accepts and closes at once is no connection.
            let mut observed = status.subscribe();
            let preface = observed
                .wait_for(|status| status.preface || status.not_a_preface || status.ended.is_some())
                .await
                .map(|status| status.preface)
                .unwrap_or(false);
            if !preface {
                let (ended, not_a_preface) = {
                    let status = status.borrow();
                    (status.ended.clone(), status.not_a_preface)
                };
                return Err(explain(match ended {
                    _ if not_a_preface => NoPreface::because(
                        "the server's first frame was not its SETTINGS (it does not speak \
                         HTTP/2 with prior knowledge)"
                            .into(),
                    ),
                    Some(Err(error)) => NoPreface::because(Box::new(ArcError(error))),
                    _ => NoPreface::because("the server closed the connection".into()),
                }));
            }
            let newest = self.latest.subscribe();
            let shared = resend::publish(&self.latest, |number| {
                Arc::new(Shared {
                    send: Mutex::new(send.clone()),
                    origin,
                    status: observed,
                    lineage: Lineage {
                        number,
                        latest: newest,
                        config: self.replay.clone(),
                    },
                    retire_after,
                    dial_at: dial_ahead.as_ref().map_or(0, |(at, _)| *at),
                    dial_ahead: Mutex::new(dial_ahead.map(|(_, dial)| dial)),
                    sent: AtomicU32::new(0),
                    pinged,
                    publish: status.clone(),
                    ended,
                    end,
                })
            })?;
            if let Some(siblings) = &self.replay.siblings {
                siblings.join(&shared);
            }
            Ok(Http2Connection::new(send, shared))
        })
    }
}

/// The server took the TCP connection but never sent its HTTP/2 preface: it closed or reset
/// the connection, or does not speak HTTP/2. One text whatever the step it failed at (so the
/// failures of an outage are reported once); the detail is the `source()`.
#[derive(Debug)]
struct NoPreface(BoxError);

impl NoPreface {
    fn because(cause: BoxError) -> BoxError {
        Box::new(Self(cause))
    }
}

impl fmt::Display for NoPreface {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("no HTTP/2 preface from the server (it closed the connection, or does not speak HTTP/2)")
    }
}

impl std::error::Error for NoPreface {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.0)
    }
}

/// An HTTP/2 connection: a cloneable `Service<http::Request<B>>` over one hyper connection.
///
/// Clones share the connection, and requests on it are multiplexed. The connection task
/// ends, closing the connection, once every clone is dropped. Requests whose URI has no
/// scheme and authority get the connector's origin.
///
/// `poll_ready` fails once the connection has ended or the server has sent `GOAWAY` (so new
/// requests go to the next connection, while the streams in flight finish on this one). A
/// request the server refused is sent again on the connector's next connection (see
/// [`Http2Connector`]).
pub struct Http2Connection<B> {
    send: http2::SendRequest<ReplayBody<B>>,
    shared: Arc<Shared<B>>,
    /// This clone's view of the connection's status: `poll_ready` tells a change by its
    /// version, one atomic load, and reads the status (a lock) only after a change.
    status: watch::Receiver<Status>,
    /// Why the connection takes no new request, as of the status last read.
    unavailable: Option<ConnectionUnavailable>,
}

/// What the clones of one HTTP/2 connection share.
struct Shared<B> {
    /// A sender to clone, for requests sent again on this connection.
    send: Mutex<http2::SendRequest<ReplayBody<B>>>,
    origin: Arc<Origin>,
    status: watch::Receiver<Status>,
    /// Its number, and the connector's newest connection, for requests this one refuses.
    lineage: Lineage<Self>,
    /// The server's request limit, when known (and resends are on): the connection retires
    /// once it has sent this many requests.
    retire_after: Option<u32>,
    /// The request whose sending dials the next connection ahead of the server's request
    /// limit (0: none), and the dial.
    dial_at: u32,
    dial_ahead: Mutex<Option<DialAhead>>,
    /// Requests sent (counted only when `retire_after` or `dial_at` is set).
    sent: AtomicU32,
    /// Whether a request was sent, and whether pings go out while idle: what a server's
    /// goodbye must be checked against.
    pinged: Pinged,
    /// Where the connection's retirement is published.
    publish: Arc<watch::Sender<Status>>,
    /// Set when the connection task has ended, before `end` wakes the requests waiting.
    ended: Arc<AtomicBool>,
    /// Wakes the requests waiting for an answer when the connection task has ended (one
    /// whose request hyper never took would wait for ever).
    end: Arc<Notify>,
}

impl<B> Http2Connection<B> {
    /// Resolves when the connection has ended or the server has sent `GOAWAY`: the close
    /// signal for [`PersistentConnectionLayer::close_signal`]. `GOAWAY` and a clean end are
    /// [`Graceful`](CloseReason::Graceful) once the server has answered a request (sent a
    /// response's `HEADERS`) or its `GOAWAY` names a stream it took (a last stream id other
    /// than 0 and the "anything so far" maximum of a two-step shutdown), else
    /// [`GracefulBeforeServing`](CloseReason::GracefulBeforeServing); a reset, an I/O error, a
    /// keep-alive timeout or a `GOAWAY` with an error code is an error. A gRPC server's
    /// complaint of too many pings (`GOAWAY` `ENHANCE_YOUR_CALM`, `too_many_pings`) is
    /// [`CloseReason::Graceful`] whether or not the connection served: the connector has
    /// doubled its keep-alive interval by then, and the replacement is made at once. So is the
    /// retirement of a connection at the server's known request limit (see
    /// [`Http2Connector::dial_ahead`]).
    pub fn closed(&self) -> impl Future<Output = CloseReason> + Send + use<B> {
        let status = self.shared.status.clone();
        let pinged = self.shared.pinged.clone();
        async move {
            let status = sniff::until(status, closing).await;
            let asked = pinged.asked();
            match status {
                // Our pings were too frequent, not the server broken: replace at once. (Not
                // when no ping can have gone out: then it is a goodbye with an error code.)
                Status {
                    goaway_frame: Some(goaway),
                    ..
                } if goaway.is_too_many_pings() && pinged.could_have_pinged() => {
                    CloseReason::Graceful
                }
                // A goodbye with an error code is no orderly goodbye.
                Status {
                    goaway_frame: Some(goaway),
                    ..
                } if goaway.error_code != 0 => {
                    CloseReason::Error(format!("the server sent {goaway}").into())
                }
                Status {
                    ended: Some(Err(error)),
                    goaway: false,
                    ..
                } => CloseReason::Error(Box::new(ArcError(error))),
                // Our own decision at the server's request limit: replace at once.
                Status { retired: true, .. } => CloseReason::Graceful,
                status if status.has_served(asked) => CloseReason::Graceful,
                _ => CloseReason::GracefulBeforeServing,
            }
        }
    }

    /// Whether the connection has ended, the server has sent `GOAWAY`, or the connection
    /// has retired at the server's request limit (see
    /// [`Http2Connector::dial_ahead`]).
    pub fn is_closed(&self) -> bool {
        self.shared.status_says_closed() || self.send.is_closed()
    }
}

impl<B> Http2Connection<B> {
    fn new(send: http2::SendRequest<ReplayBody<B>>, shared: Arc<Shared<B>>) -> Self {
        let mut status = shared.status.clone();
        let unavailable = unavailable(&status.borrow_and_update());
        Self {
            send,
            shared,
            status,
            unavailable,
        }
    }
}

impl<B> Clone for Http2Connection<B> {
    fn clone(&self) -> Self {
        Self {
            send: self.send.clone(),
            shared: self.shared.clone(),
            // The same version seen, and what it said.
            status: self.status.clone(),
            unavailable: self.unavailable,
        }
    }
}

impl<B> fmt::Debug for Http2Connection<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Http2Connection")
            .field("origin", &self.shared.origin)
            .field("number", &self.shared.lineage.number)
            .field("closed", &self.is_closed())
            .finish()
    }
}

impl<B> Service<Request<B>> for Http2Connection<B>
where
    B: Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    type Response = Response<Incoming>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Incoming>, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        // No lock unless the status changed since this clone last read it (its flags are only
        // ever set, so what was read stays true).
        if !matches!(self.status.has_changed(), Ok(false)) {
            self.unavailable = unavailable(&self.status.borrow_and_update());
        }
        if let Some(unavailable) = self.unavailable {
            return Poll::Ready(Err(unavailable.into()));
        }
        self.send.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        self.shared.pinged.ask();
        let (request, kept) =
            Kept::prepare(request, &self.shared.lineage.config, true, Reads::Protocol);
        let retire = match self.shared.admit() {
            Admit::Send => false,
            Admit::SendAndRetire => true,
            Admit::KeepBack => {
                // Past the limit (clones made ready before the connection retired): the server
                // would refuse it; it goes to the next connection unsent.
                let kept_back = std::future::ready(Err(Failure::retired(request)));
                return Box::pin(or_recover(kept_back, kept, self.shared.clone()));
            }
        };
        let sending = send_on(&mut self.send, self.shared.clone(), request);
        if retire {
            self.shared.retire();
        }
        Box::pin(Responding {
            sending,
            kept: Some(kept),
            recovering: None,
        })
    }
}

/// Dials the next connection ahead of the server's request limit (called once).
type DialAhead = Box<dyn FnOnce() + Send>;

/// A boxed future of a response, or of the error a call ends with.
type Answer = Pin<Box<dyn Future<Output = Result<Response<Incoming>, BoxError>> + Send>>;

pin_project! {
    /// A request handed to hyper on one connection, until its answer: hyper's response future,
    /// watched, while hyper has not taken the request, for the end of the connection task (a
    /// request still untaken then never will be: see [`ReplayBody::mark_taken`]). A failure
    /// says whether the server provably did not process the request. A call's first send and
    /// every resend on an HTTP/2 connection go through it.
    struct Sending<F, B> {
        // hyper's response future; `None` once done with it (answered, failed, or stranded).
        #[pin]
        sent: Option<F>,
        mark: TakenMark,
        // Woken when the connection task has ended; registered at the first `Pending`.
        #[pin]
        ended: Option<OwnedNotified>,
        // Whether the end of the connection task still matters (it does until it has come
        // with the request taken).
        watch_end: bool,
        shared: Arc<Shared<B>>,
    }
}

/// Sends `request` (with the origin of `shared` filled in) through `send`, a sender of the
/// connection of `shared`.
fn send_on<B>(
    send: &mut http2::SendRequest<ReplayBody<B>>,
    shared: Arc<Shared<B>>,
    mut request: Request<ReplayBody<B>>,
) -> Sending<impl Future<Output = SentResult<B>> + Send + use<B>, B>
where
    B: Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    shared.origin.apply(&mut request);
    let mark = request.body_mut().mark_taken();
    Sending {
        sent: Some(send.try_send_request(request)),
        mark,
        ended: None,
        watch_end: true,
        shared,
    }
}

/// What hyper's response future of a request on `ReplayBody<B>` resolves to.
type SentResult<B> = Result<Response<Incoming>, TrySendError<Request<ReplayBody<B>>>>;

impl<F, B> Future for Sending<F, B>
where
    F: Future<Output = SentResult<B>>,
{
    type Output = Result<Response<Incoming>, Failure<B>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let Some(sent) = this.sent.as_mut().as_pin_mut() else {
            // Polled after completion: hyper's future would panic as well.
            panic!("the response future was polled after it completed");
        };
        let outcome = match sent.poll(cx) {
            Poll::Ready(Ok(response)) => Ok(response),
            Poll::Ready(Err(error)) => Err(Failure::from_hyper(error, h2_refusal)),
            Poll::Pending => {
                if !*this.watch_end {
                    return Poll::Pending;
                }
                if this.ended.is_none() {
                    this.ended
                        .set(Some(this.shared.end.clone().notified_owned()));
                }
                let woken = this
                    .ended
                    .as_mut()
                    .as_pin_mut()
                    .is_some_and(|ended| ended.poll(cx).is_ready());
                // Registered first, then the flag: an end after the registration wakes this
                // future; one before it has set the flag.
                if !woken && !this.shared.ended.load(Ordering::Acquire) {
                    return Poll::Pending;
                }
                this.ended.set(None);
                // The task has dropped its queue: a request taken goes on (its stream lives
                // in h2's task); one not taken never will be.
                if !this.mark.is_untaken() {
                    *this.watch_end = false;
                    return Poll::Pending;
                }
                Err(Failure::stranded())
            }
        };
        this.sent.set(None);
        this.ended.set(None);
        Poll::Ready(outcome)
    }
}

pin_project! {
    /// The response to a call: its request [`Sending`] on the connection, and what it needs
    /// should that fail. One flat future, as small as can be, for the common case of an
    /// answer: what a failure needs ([`resend::recover`]: the request sent again on the next
    /// connection, while the failure proves the server did not process it) is boxed, and
    /// made only after one.
    struct Responding<F, B> {
        #[pin]
        sending: Sending<F, B>,
        kept: Option<Kept<B>>,
        // After a failure: the recovery.
        recovering: Option<Answer>,
    }
}

impl<F, B> Future for Responding<F, B>
where
    F: Future<Output = SentResult<B>>,
    B: Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    type Output = Result<Response<Incoming>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        if let Some(recovering) = this.recovering {
            return recovering.as_mut().poll(cx);
        }
        let failure = match this.sending.as_mut().poll(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Ok(response)) => {
                // The call is over: nothing will be sent again.
                *this.kept = None;
                return Poll::Ready(Ok(response));
            }
            Poll::Ready(Err(failure)) => failure,
        };
        let Some(kept) = this.kept.take() else {
            panic!("the response future was polled after it completed");
        };
        let shared = this.sending.shared.clone();
        let mut recovering: Answer =
            Box::pin(or_recover(std::future::ready(Err(failure)), kept, shared));
        let poll = recovering.as_mut().poll(cx);
        *this.recovering = Some(recovering);
        poll
    }
}

/// Whether a connection with a known request limit sends one more request.
enum Admit {
    Send,
    /// The last one before the limit: send it, then retire the connection.
    SendAndRetire,
    /// Past the limit.
    KeepBack,
}

impl<B> Shared<B> {
    /// The connection has ended, the server has sent `GOAWAY`, or the connection has retired.
    fn status_says_closed(&self) -> bool {
        closing(&self.status.borrow())
    }

    /// Counts a request about to be sent, against the server's request limit if it is known
    /// (every request counts, resends from older connections too).
    fn admit(&self) -> Admit {
        if self.retire_after.is_none() && self.dial_at == 0 {
            return Admit::Send;
        }
        let sent = self.sent.fetch_add(1, Ordering::Relaxed).saturating_add(1);
        if sent == self.dial_at {
            let dial = self
                .dial_ahead
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take();
            if let Some(dial) = dial {
                dial();
            }
        }
        let Some(limit) = self.retire_after else {
            return Admit::Send;
        };
        match sent.cmp(&limit) {
            std::cmp::Ordering::Less => Admit::Send,
            std::cmp::Ordering::Equal => Admit::SendAndRetire,
            std::cmp::Ordering::Greater => Admit::KeepBack,
        }
    }

    /// The connection has sent as many requests as the server takes on one: it takes no new
    /// one, and its close signal fires (a graceful close: the layer replaces it at once).
    fn retire(&self) {
        tracing::debug!(
            limit = self.retire_after,
            "the connection reached the server's request limit: retiring it"
        );
        self.publish.send_if_modified(|status| {
            let changed = !status.retired;
            status.retired = true;
            changed
        });
    }
}

/// Why a connection with `status` takes no new requests, if it does not.
fn unavailable(status: &Status) -> Option<ConnectionUnavailable> {
    if status.goaway {
        Some(ConnectionUnavailable::GoAway)
    } else if status.retired {
        Some(ConnectionUnavailable::RequestLimit)
    } else if status.ended.is_some() {
        Some(ConnectionUnavailable::Closed)
    } else {
        None
    }
}

/// Whether a connection with `status` takes no new requests.
fn closing(status: &Status) -> bool {
    status.goaway || status.retired || status.ended.is_some()
}

impl<B> Resend for Shared<B>
where
    B: Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    type Body = B;

    fn lineage(&self) -> &Lineage<Self> {
        &self.lineage
    }

    fn refuses_new(&self) -> bool {
        self.status_says_closed()
    }

    fn send(
        self: Arc<Self>,
        request: Request<ReplayBody<B>>,
    ) -> impl Future<Output = Result<Response<Incoming>, Failure<B>>> + Send {
        let mut send = self
            .send
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        async move {
            // hyper's HTTP/2 `poll_ready` only says whether the connection is closed.
            if let Err(error) = poll_fn(|cx| send.poll_ready(cx)).await {
                return Err(Failure::handed_back(error.into(), request));
            }
            match self.admit() {
                Admit::Send => send_on(&mut send, self, request).await,
                Admit::SendAndRetire => {
                    let sending = send_on(&mut send, self.clone(), request);
                    self.retire();
                    sending.await
                }
                Admit::KeepBack => Err(Failure::retired(request)),
            }
        }
    }
}

// === PersistentConnectionLayer::http2 ===

impl<A, E, C, H> PersistentConnectionLayer<A, E, C, H> {
    /// Applies the layer to an HTTP/2 `connector`, with the connection's close signal wired
    /// in ([`Http2Connection::closed`], replacing any [`close_signal`](Self::close_signal)
    /// set before) and, unless the connector has an [origin](Http2Connector::origin), the
    /// server name (if one was [set](Self::server_name)) as the authority of path-only requests.
    ///
    /// # Panics
    ///
    /// Outside a Tokio runtime, like [`Layer::layer`](tower_layer::Layer::layer).
    pub fn http2<B>(
        self,
        mut connector: Http2Connector<B>,
    ) -> PersistentConnection<Http2Connection<B>>
    where
        A: Dial + PartialEq + fmt::Debug,
        E: OnEvent<A, Http2Connection<B>>,
        H: HealthCheck<Http2Connection<B>>,
        B: Body + Send + Unpin + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        let counters = connector.core.wire(self.explicit_name());
        tower_layer::Layer::layer(
            &self
                .with_request_counters(counters)
                .close_signal(Http2Connection::closed),
            connector,
        )
    }
}

// === what a server's goodbye is checked against ===

/// Whether a connection has sent a request, and whether it pings while idle: a `GOAWAY`
/// naming a stream counts as service only after a request, and a complaint of too many pings
/// only when a ping can have gone out (else a hostile server could make the client reconnect
/// in a loop, or slow every clone's keep-alive). Shared by the connection and its close
/// signal, which must not hold the connection itself.
#[derive(Clone)]
struct Pinged {
    asked: Arc<AtomicBool>,
    /// Keep-alive is on.
    pings: bool,
    while_idle: bool,
}

impl Pinged {
    /// Notes that a request is being sent: a load, and a store only the first time.
    fn ask(&self) {
        if !self.asked.load(Ordering::Relaxed) {
            self.asked.store(true, Ordering::Relaxed);
        }
    }

    fn asked(&self) -> bool {
        self.asked.load(Ordering::Relaxed)
    }

    /// Keep-alive is on, and pings go out while idle or a request was sent (they go out
    /// while requests are in flight).
    fn could_have_pinged(&self) -> bool {
        self.pings && (self.while_idle || self.asked())
    }
}

// === Replicas::http2 ===

impl<K, B> crate::replicas::Replicas<K, Http2Connection<B>>
where
    K: Ord + std::hash::Hash + Clone + fmt::Display + Send + Sync + 'static,
    B: Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    /// [`Replicas::new`](crate::replicas::Replicas::new) over an HTTP/2 `connector`, wired as
    /// [`PersistentConnectionLayer::http2`] wires it: each replica's close signal is its
    /// connection's, and, unless the connector has an [origin](Http2Connector::origin), the
    /// layer's server name is the authority of path-only requests, the same for every replica
    /// (a replica's address is not the service's name).
    pub fn http2<A, E, C, H>(
        changes: crate::discovery::Changes<K, A>,
        layer: PersistentConnectionLayer<A, E, C, H>,
        mut connector: Http2Connector<B>,
    ) -> Self
    where
        A: Dial + PartialEq + fmt::Debug,
        E: OnEvent<A, Http2Connection<B>>,
        H: HealthCheck<Http2Connection<B>>,
    {
        let counters = connector.core.wire(layer.explicit_name());
        connector.core.replay.siblings = Some(Arc::new(resend::Siblings::new()));
        let layer = layer
            .with_request_counters(counters)
            .close_signal(Http2Connection::closed);
        Self::new(changes, layer, connector)
    }
}
