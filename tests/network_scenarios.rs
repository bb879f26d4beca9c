//! Network fault scenarios on real loopback sockets: the HTTP/2 connector under the layer
//! talks to a real hyper HTTP/2 server through a fault proxy that refuses, closes, resets,
//! blackholes, delays or slices the traffic, also of connections already open. Each test is
//! named for its scenario in the reliability research (section 6 of the cross-anchors) and
//! checks the expected behaviour quoted above it. Real time, bounded waits on events; one
//! test repeats a race deterministically with the scripted connections of `support`, under
//! paused time.

#[path = "support/fault_proxy.rs"]
mod fault_proxy;
#[path = "support/h2server.rs"]
mod h2server;
mod support;

use std::{
    convert::Infallible,
    error::Error,
    fmt, io,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use fault_proxy::{FaultProxy, Mode};
use h2server::H2Server;
use persistent_connection::{
    BoxError, ConnectErrorKind, Event, PersistentConnectionLayer, State,
    close::CloseReason,
    http::{Http2Connection, Http2Connector},
};
use support::{
    Body, Ev, Events, SOON, connected, disconnected, failed, get, get_ok, spawn_get, within,
};
use tokio::{
    sync::{mpsc, watch},
    time::Instant,
};
use tower::{Layer, ServiceExt};
use tracing_subscriber::layer::SubscriberExt as _;

type Conn = Http2Connection<Body>;

/// Slack for timings measured on a loaded two-core machine: wide, so that a busy machine does
/// not fail a test; each test prints the figure it measured.
const SLACK: Duration = Duration::from_secs(1);

// === events ===

/// The `on_event` hook of the recorder.
type Hook = Box<dyn Fn(&Event<SocketAddr, Conn>) + Send + Sync>;

/// An `on_event` hook and the recorder it feeds.
fn recorder() -> (Hook, Events) {
    let (hook, events) = support::recorder();
    (Box::new(hook), events)
}

// === the layer ===

/// The times at which the layer's address source was called: one per attempt.
type Attempts = mpsc::UnboundedReceiver<Instant>;

/// A layer to `addr` named "billing", retrying every `delay` without jitter, whose address
/// source reports the time of every attempt.
fn layer(
    addr: SocketAddr,
    delay: Duration,
) -> (
    PersistentConnectionLayer<SocketAddr, Hook>,
    Attempts,
    Events,
) {
    let (attempt, attempts) = mpsc::unbounded_channel();
    let (hook, events) = recorder();
    let layer = PersistentConnectionLayer::new(move || {
        let _ = attempt.send(Instant::now());
        async move { Ok::<_, Infallible>(addr) }
    })
    .server_name("billing")
    .retry_delay(move || delay)
    .jitter(0.0)
    .on_event(hook);
    (layer, attempts, events)
}

/// Waits for the next attempt (at most `bound`, else panics); returns its time.
async fn next_attempt(attempts: &mut Attempts, bound: Duration) -> Instant {
    within(bound, "the next attempt", attempts.recv())
        .await
        .expect("the layer is alive")
}

/// The times of the attempts started since the last look.
fn drain_attempts(attempts: &mut Attempts) -> Vec<Instant> {
    let mut times = Vec::new();
    while let Ok(at) = attempts.try_recv() {
        times.push(at);
    }
    times
}

// === errors ===

/// Whether `error` or any error in its source chain is an I/O error of `kind`.
fn has_io_kind(error: &(dyn Error + 'static), kind: io::ErrorKind) -> bool {
    let mut next = Some(error);
    while let Some(error) = next {
        if error.downcast_ref::<io::Error>().map(io::Error::kind) == Some(kind) {
            return true;
        }
        next = error.source();
    }
    false
}

/// `error` and its sources, for failure messages.
fn chain(error: &(dyn Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut next = error.source();
    while let Some(error) = next {
        text += &format!(": {error}");
        next = error.source();
    }
    text
}

/// A loopback port nothing listens on (bound, then released).
fn closed_port() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

// === tests ===

/// Scenario 1, server down at start (refused): "layer is created without I/O errors;
/// `poll_ready` Pending; `Failed_to_connect` reported once per distinct error; connects as
/// soon as the server comes up and the current delay ends".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s01_server_down_at_start_is_pending_reports_one_failure_and_connects_when_it_comes_up() {
    const DELAY: Duration = Duration::from_millis(100);
    let server = H2Server::start("replica-1").await;
    let proxy = FaultProxy::start(server.addr()).await;
    proxy.set_mode(Mode::Refuse).await;

    let (layer, mut attempts, mut events) = layer(proxy.addr(), DELAY);
    let mut svc = layer.http2(Http2Connector::new());
    let handle = svc.handle();
    assert!(!handle.is_closed(), "created without error");

    // Several attempts fail while `ready()` stays pending.
    let waited = tokio::time::timeout(DELAY * 5, svc.ready()).await;
    assert!(waited.is_err(), "ready() resolved while the server is down");
    let failed_attempts = drain_attempts(&mut attempts).len();
    assert!(failed_attempts >= 3, "only {failed_attempts} attempts");
    assert!(matches!(
        handle.state(),
        State::Connecting | State::Waiting { .. }
    ));
    let seen = events.seen();
    assert_eq!(
        seen.len(),
        3,
        "one failure for {failed_attempts} attempts: {seen:?}"
    );
    assert_eq!(
        seen[..2],
        [Ev::Attempting, Ev::Address(proxy.addr().to_string())]
    );
    match &seen[2] {
        Ev::Failed(text, ConnectErrorKind::Connect) => {
            assert!(text.to_lowercase().contains("refused"), "{text}")
        }
        other => panic!("expected a refused connect, got {other:?}"),
    }
    assert_eq!(proxy.counts().accepted, 0, "nothing reached the proxy");

    let up_at = Instant::now();
    proxy.set_mode(Mode::Forward).await;
    let connected_at = events.wait_for(connected, SOON).await;
    let lag = connected_at - up_at;
    assert!(
        lag <= DELAY + SLACK,
        "connected {lag:?} after the server came up"
    );
    assert_eq!(
        get_ok(&mut svc, "/hello").await,
        "replica-1 http://billing/hello"
    );
    assert_eq!(events.count(failed), 1);
}

/// Scenario 3, TCP accepted, handshake hangs: "the per-attempt timeout covers the handshake;
/// failure plus backoff; no READY".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s03_handshake_hangs_each_attempt_ends_at_the_connect_timeout_never_connected() {
    const TIMEOUT: Duration = Duration::from_millis(300);
    let server = H2Server::start("replica-1").await;
    let proxy = FaultProxy::start(server.addr()).await;
    proxy.set_mode(Mode::Blackhole).await;

    let (layer, mut attempts, events) = layer(proxy.addr(), Duration::from_millis(100));
    let svc = layer.connect_timeout(TIMEOUT).http2(Http2Connector::new());
    let handle = svc.handle();

    let mut times = vec![next_attempt(&mut attempts, SOON).await];
    let outcome = within(SOON, "an attempt", handle.connected_or_failed_to_connect()).await;
    let error = outcome.expect_err("a blackholed handshake cannot connect");
    assert_eq!(error.kind(), ConnectErrorKind::Timeout, "{error}");
    while times.len() < 4 {
        times.push(next_attempt(&mut attempts, TIMEOUT + SOON).await);
    }
    for pair in times.windows(2) {
        let gap = pair[1] - pair[0];
        assert!(
            gap >= TIMEOUT - Duration::from_millis(5) && gap <= TIMEOUT + SLACK,
            "attempts {gap:?} apart: each should end at the {TIMEOUT:?} connect timeout"
        );
    }
    // Every attempt got its TCP connection: it is the handshake that hung; and the client
    // closed each attempt's connection when it gave up (no socket is left behind).
    assert!(proxy.counts().accepted >= 3, "{:?}", proxy.counts());
    proxy.wait_for(SOON, |c| c.closed_by_client >= 3).await;
    assert_eq!(server.counts().requests, 0);

    let seen = events.seen();
    assert_eq!(events.count(connected), 0, "never Connected: {seen:?}");
    let failures: Vec<_> = seen.iter().filter(|e| failed(e)).collect();
    assert_eq!(failures.len(), 1, "one timeout, reported once: {seen:?}");
    assert!(matches!(
        failures[0],
        Ev::Failed(_, ConnectErrorKind::Timeout)
    ));
    drop(svc);
}

/// Scenario 4, accept-then-close: "a failure, not a success; ... attempt rate ≤ the policy
/// (no busy loop)".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s04_accept_then_close_is_never_connected_and_attempts_at_most_once_per_retry_delay() {
    const DELAY: Duration = Duration::from_millis(200);
    let server = H2Server::start("replica-1").await;
    let proxy = FaultProxy::start(server.addr()).await;
    proxy.set_mode(Mode::AcceptClose).await;

    let (layer, mut attempts, events) = layer(proxy.addr(), DELAY);
    let svc = layer.http2(Http2Connector::new());

    let mut times = Vec::new();
    while times.len() < 5 {
        times.push(next_attempt(&mut attempts, DELAY + SOON).await);
    }
    for pair in times.windows(2) {
        let gap = pair[1] - pair[0];
        assert!(
            gap >= DELAY - Duration::from_millis(5),
            "attempts {gap:?} apart, less than the retry delay"
        );
    }
    let span = times[4] - times[0];
    let bound = (span.as_millis() / DELAY.as_millis()) as usize + 2;
    let accepted = proxy.counts().accepted;
    assert!(
        (4..=bound).contains(&accepted),
        "{accepted} connections in {span:?}"
    );

    assert_eq!(
        events.count(connected),
        0,
        "never Connected: {:?}",
        events.seen()
    );
    // Every attempt fails the same way within one cycle: reported once (S5).
    assert_eq!(events.count(failed), 1, "{:?}", events.seen());
    assert_eq!(server.counts().accepted, 0, "nothing reached the server");
    drop(svc);
}

/// Scenario 5, server dies mid-use (FIN): "in-flight calls fail with a connection error (not
/// a hang); readiness → Pending at once; `Disconnected` event; first reconnect immediate if
/// the last attempt start is older than the delay; never two live connections".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s05_server_dies_mid_use_fin_fails_the_call_in_flight_and_reconnects_at_once() {
    // Long enough that "at once" (< DELAY / 2) and "after the delay" stay apart on a busy
    // machine.
    const DELAY: Duration = Duration::from_secs(3);
    let server = H2Server::start("replica-1").await;
    let proxy = FaultProxy::start(server.addr()).await;
    let (layer, mut attempts, mut events) = layer(proxy.addr(), DELAY);
    let mut svc = layer.http2(Http2Connector::new());
    assert_eq!(
        get_ok(&mut svc, "/warm").await,
        "replica-1 http://billing/warm"
    );
    let connected_at = events.wait_for(connected, SOON).await;
    next_attempt(&mut attempts, SOON).await;

    server.hold(true);
    let in_flight = spawn_get(&svc, "/in-flight");
    server.wait_for(SOON, |c| c.in_flight == 1).await;
    // The connection has to outlive the retry delay for the reconnect to be immediate.
    tokio::time::sleep_until(connected_at + DELAY + Duration::from_millis(50)).await;

    let closed_at = Instant::now();
    proxy.set_mode(Mode::AcceptClose).await;
    let error = within(SOON, "the call in flight", in_flight)
        .await
        .unwrap()
        .expect_err("the connection closed under the call");
    eprintln!(
        "call in flight failed after {:?}: {}",
        closed_at.elapsed(),
        chain(&*error)
    );
    assert!(
        error.downcast_ref::<hyper::Error>().is_some(),
        "expected the connection's (hyper) error, got {error:?}"
    );

    let disconnected_at = events.wait_for(disconnected, SOON).await;
    assert!(
        disconnected_at - closed_at < SLACK,
        "noticed after {:?}",
        disconnected_at - closed_at
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(200), svc.ready())
            .await
            .is_err(),
        "ready while the server is gone"
    );
    let reconnect_at = next_attempt(&mut attempts, SOON).await;
    let gap = reconnect_at - disconnected_at;
    assert!(
        gap < DELAY / 2,
        "first reconnect {gap:?} after the disconnect, not immediate"
    );

    // Once the server is reachable again, one new connection replaces the old one.
    proxy.set_mode(Mode::Forward).await;
    events.wait_for(connected, DELAY + SOON).await;
    server.hold(false);
    assert_eq!(
        get_ok(&mut svc, "/again").await,
        "replica-1 http://billing/again"
    );
    let counts = server.counts();
    assert_eq!(
        (counts.accepted, counts.ended),
        (2, 1),
        "one live connection: {counts:?}"
    );
}

/// Scenario 6, connection reset by peer (RST): "same as 5; the error kind is kept in the
/// event / disconnect reason".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s06_connection_reset_fails_the_call_in_flight_with_the_reset_and_reconnects_at_once() {
    // Long enough that "at once" (< DELAY / 2) and "after the delay" stay apart on a busy
    // machine.
    const DELAY: Duration = Duration::from_secs(3);
    let server = H2Server::start("replica-1").await;
    let proxy = FaultProxy::start(server.addr()).await;
    let (layer, mut attempts, mut events) = layer(proxy.addr(), DELAY);
    let mut svc = layer.http2(Http2Connector::new());
    assert_eq!(
        get_ok(&mut svc, "/warm").await,
        "replica-1 http://billing/warm"
    );
    let connected_at = events.wait_for(connected, SOON).await;
    next_attempt(&mut attempts, SOON).await;
    // The close signal the layer listens to, for the reason it gives.
    let connection = svc.handle().current_connection().expect("connected");
    let reason = tokio::spawn(connection.closed());

    server.hold(true);
    let in_flight = spawn_get(&svc, "/in-flight");
    server.wait_for(SOON, |c| c.in_flight == 1).await;
    tokio::time::sleep_until(connected_at + DELAY + Duration::from_millis(50)).await;

    let reset_at = Instant::now();
    proxy.set_mode(Mode::Reset).await;
    let error = within(SOON, "the call in flight", in_flight)
        .await
        .unwrap()
        .expect_err("the connection was reset under the call");
    eprintln!(
        "call in flight failed after {:?}: {}",
        reset_at.elapsed(),
        chain(&*error)
    );
    assert!(
        has_io_kind(&*error, io::ErrorKind::ConnectionReset),
        "the call's error does not say reset: {}",
        chain(&*error)
    );
    match within(SOON, "the close signal", reason).await.unwrap() {
        CloseReason::Error(error) => assert!(
            has_io_kind(&*error, io::ErrorKind::ConnectionReset),
            "the close reason does not say reset: {}",
            chain(&*error)
        ),
        other => panic!("a reset is not a graceful close: {other}"),
    }

    let disconnected_at = events.wait_for(disconnected, SOON).await;
    assert!(disconnected_at - reset_at < SLACK);
    assert!(
        tokio::time::timeout(Duration::from_millis(200), svc.ready())
            .await
            .is_err(),
        "ready while every connection is reset"
    );
    let reconnect_at = next_attempt(&mut attempts, SOON).await;
    let gap = reconnect_at - disconnected_at;
    assert!(
        gap < DELAY / 2,
        "first reconnect {gap:?} after the disconnect, not immediate"
    );

    proxy.set_mode(Mode::Forward).await;
    events.wait_for(connected, DELAY + SOON).await;
    server.hold(false);
    assert_eq!(
        get_ok(&mut svc, "/again").await,
        "replica-1 http://billing/again"
    );
}

/// Scenario 6, the reason in the log: "the error kind is kept in the event / disconnect
/// reason". The `Disconnected` event carries no reason; the log line of the disconnect is
/// where it is kept, and it must say the connection was reset. (A current-thread runtime,
/// so the driver logs on the thread whose subscriber records it.)
#[tokio::test]
async fn s06_the_disconnect_log_says_the_connection_was_reset() {
    let reasons = DisconnectReasons::default();
    let _guard =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(reasons.clone()));
    let server = H2Server::start("replica-1").await;
    let proxy = FaultProxy::start(server.addr()).await;
    let (hook, mut events) = recorder();
    let _svc = PersistentConnectionLayer::fixed_address(proxy.addr())
        .server_name("billing")
        .on_event(hook)
        .http2(Http2Connector::new());
    events.wait_for(connected, SOON).await;

    proxy.set_mode(Mode::Reset).await;
    events.wait_for(disconnected, SOON).await;
    let logged = reasons.0.lock().unwrap().clone();
    let [reason] = logged.as_slice() else {
        panic!("one disconnect logged, got {logged:?}");
    };
    assert!(
        reason.to_lowercase().contains("reset"),
        "the disconnect's reason does not say reset: {reason:?}"
    );
}

/// The `reason` of every "disconnected" log line of the crate.
#[derive(Clone, Default)]
struct DisconnectReasons(Arc<Mutex<Vec<String>>>);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for DisconnectReasons {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        /// The message and the reason of one log event.
        #[derive(Default)]
        struct Fields(String, Option<String>);
        impl tracing::field::Visit for Fields {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn fmt::Debug) {
                match field.name() {
                    "message" => self.0 = format!("{value:?}"),
                    "reason" => self.1 = Some(format!("{value:?}")),
                    _ => {}
                }
            }
        }
        if !event
            .metadata()
            .target()
            .starts_with("persistent_connection")
        {
            return;
        }
        let mut fields = Fields::default();
        event.record(&mut fields);
        if let (true, Some(reason)) = (fields.0 == "disconnected", fields.1) {
            self.0.lock().unwrap().push(reason);
        }
    }
}

/// Scenario 7 with liveness, half-open after connect: "with inner h2 keepalive ... the inner
/// service errors within keepalive timeout and the layer reconnects": an idle connection is
/// reported `Disconnected` within a second without any request, and a request in flight when
/// the peer goes silent fails instead of hanging.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s07_half_open_with_keep_alive_is_noticed_without_a_request_and_fails_the_call_in_flight() {
    let server = H2Server::start("replica-1").await;
    let proxy = FaultProxy::start(server.addr()).await;
    let (hook, mut events) = recorder();
    let svc = PersistentConnectionLayer::fixed_address(proxy.addr())
        .server_name("billing")
        .retry_delay(|| Duration::from_millis(100))
        .jitter(0.0)
        .connect_timeout(Duration::from_millis(500))
        .on_event(hook)
        .http2(
            Http2Connector::new()
                .keep_alive_interval(Some(Duration::from_millis(100)))
                .keep_alive_timeout(Duration::from_millis(200))
                .keep_alive_while_idle(true),
        );

    // Idle: the pings alone find out.
    events.wait_for(connected, SOON).await;
    let silent_at = Instant::now();
    proxy.set_mode(Mode::Blackhole).await;
    let disconnected_at = events.wait_for(disconnected, SOON).await;
    let detection = disconnected_at - silent_at;
    eprintln!("idle half-open connection noticed after {detection:?}");
    // Noticed at all, without a request, is the property (measured: about 300 ms).
    assert!(detection < SOON, "noticed only after {detection:?}");
    assert_eq!(server.counts().requests, 0, "no request was needed");

    // A call in flight when the peer goes silent fails once the pings time out.
    proxy.set_mode(Mode::Forward).await;
    events.wait_for(connected, SOON).await;
    server.hold(true);
    let in_flight = spawn_get(&svc, "/in-flight");
    server.wait_for(SOON, |c| c.in_flight == 1).await;
    let silent_at = Instant::now();
    proxy.set_mode(Mode::Blackhole).await;
    let error = within(SOON, "the call in flight", in_flight)
        .await
        .unwrap()
        .expect_err("a silent peer never answers");
    let failed_after = silent_at.elapsed();
    eprintln!(
        "call in flight failed after {failed_after:?}: {}",
        chain(&*error)
    );
    assert!(failed_after < SOON, "failed only after {failed_after:?}");
    events.wait_for(disconnected, SOON).await;
}

/// Scenario 7 without liveness: "without liveness, calls hang until caller timeouts
/// (document this)". With keep-alive off, nothing notices a silent peer: the request neither
/// fails nor succeeds until the caller's own timeout fires, and the layer stays connected.
/// This is why the HTTP/2 connector keeps keep-alive on by default (while requests are in
/// flight; pinging idle connections too must be turned on, for servers that allow it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s07_half_open_without_keep_alive_hangs_the_call_until_the_callers_timeout() {
    const CALLER_TIMEOUT: Duration = Duration::from_millis(1000);
    let server = H2Server::start("replica-1").await;
    let proxy = FaultProxy::start(server.addr()).await;
    let (hook, events) = recorder();
    let mut svc = PersistentConnectionLayer::fixed_address(proxy.addr())
        .server_name("billing")
        .on_event(hook)
        .http2(Http2Connector::new().keep_alive_interval(None));
    let handle = svc.handle();
    assert_eq!(
        get_ok(&mut svc, "/warm").await,
        "replica-1 http://billing/warm"
    );

    proxy.set_mode(Mode::Blackhole).await;
    let waited = tokio::time::timeout(CALLER_TIMEOUT, get(&mut svc, "/hangs")).await;
    assert!(
        waited.is_err(),
        "the call finished without the caller's timeout: {waited:?}"
    );
    assert_eq!(
        handle.state(),
        State::Connected,
        "nothing noticed the silent peer"
    );
    assert_eq!(events.count(disconnected), 0, "{:?}", events.seen());
    assert_eq!(
        server.counts().requests,
        1,
        "the request never reached the server"
    );
}

/// Scenario 8, slow but healthy network (latency, fragmented): "no false disconnects;
/// connect timeout large enough; requests complete". 50 ms each way on every chunk, then
/// 7-byte pieces, with keep-alive pings running all along.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s08_slow_but_healthy_network_has_no_false_disconnect_and_every_request_succeeds() {
    const LATENCY: Duration = Duration::from_millis(50);
    let server = H2Server::start("replica-1").await;
    let proxy = FaultProxy::start(server.addr()).await;
    proxy.set_mode(Mode::Delay(LATENCY)).await;
    let (hook, events) = recorder();
    let mut svc = PersistentConnectionLayer::fixed_address(proxy.addr())
        .server_name("billing")
        .connect_timeout(Duration::from_secs(2))
        .on_event(hook)
        .http2(
            Http2Connector::new()
                .keep_alive_interval(Some(Duration::from_millis(200)))
                .keep_alive_timeout(Duration::from_secs(1))
                .keep_alive_while_idle(true),
        );

    // Latency: 30 requests, ten at a time; each takes at least a round trip.
    for batch in 0..3 {
        let started = Instant::now();
        let requests: Vec<_> = (0..10).map(|_| spawn_get(&svc, "/slow")).collect();
        for request in requests {
            let body = within(SOON, "a delayed request", request).await.unwrap();
            assert_eq!(body.unwrap(), "replica-1 http://billing/slow");
        }
        let took = started.elapsed();
        assert!(
            took >= LATENCY * 2,
            "batch {batch} took {took:?}: not delayed"
        );
    }

    // Fragmented, on the same connection: 30 requests with a long path, in 7-byte pieces.
    proxy.set_mode(Mode::Slice(7)).await;
    for i in 0..30 {
        let uri = format!("/fragmented/{i}/{}", "x".repeat(100));
        assert_eq!(
            get_ok(&mut svc, &uri).await,
            format!("replica-1 http://billing{uri}")
        );
    }

    let seen = events.seen();
    assert_eq!(
        seen,
        [
            Ev::Attempting,
            Ev::Address(proxy.addr().to_string()),
            Ev::Connected(0)
        ],
        "no false disconnect, no failure"
    );
    assert_eq!(server.counts().accepted, 1);
    assert_eq!(server.counts().requests, 60);
}

/// Sends `GOAWAY` from the server while a slow request is in flight and `tasks` tasks keep
/// sending requests, with the layer retrying every `retry_delay`; checks that the call in
/// flight finishes, that no request fails, that one new connection carries the requests
/// after it, and that no attempt failed. Returns how long after `Disconnected` the layer
/// was connected again.
async fn goaway_under_load(retry_delay: Duration, tasks: usize) -> Duration {
    let server = H2Server::start("replica-1").await;
    let proxy = FaultProxy::start(server.addr()).await;
    let (hook, mut events) = recorder();
    let svc = PersistentConnectionLayer::fixed_address(proxy.addr())
        .server_name("billing")
        .retry_delay(move || retry_delay)
        .jitter(0.0)
        .on_event(hook)
        .http2(Http2Connector::new());
    events.wait_for(connected, SOON).await;

    server.set_delay(Duration::from_millis(300));
    let slow = spawn_get(&svc, "/slow");
    server.wait_for(SOON, |c| c.in_flight == 1).await;
    server.set_delay(Duration::ZERO);

    let (stop, stopped) = watch::channel(false);
    let load: Vec<_> = (0..tasks)
        .map(|_| {
            let (mut svc, stopped) = (svc.clone(), stopped.clone());
            tokio::spawn(async move {
                let mut sent = 0;
                while !*stopped.borrow() && sent < 100_000 {
                    within(SOON, "a request under load", get(&mut svc, "/load")).await?;
                    sent += 1;
                }
                Ok::<_, BoxError>(sent)
            })
        })
        .collect();
    server.wait_for(SOON, |c| c.requests >= 30).await;

    server.goaway();
    let disconnected_at = events.wait_for(disconnected, SOON).await;
    let reconnected_at = events.wait_for(connected, SOON).await;
    let before = server.counts().requests;
    server.wait_for(SOON, |c| c.requests >= before + 30).await;
    stop.send_replace(true);

    let mut total = 0;
    for task in load {
        total += within(SOON, "a load task", task)
            .await
            .unwrap()
            .unwrap_or_else(|error| panic!("a request failed during GOAWAY: {}", chain(&*error)));
    }
    let slow = within(SOON, "the call in flight", slow).await.unwrap();
    assert_eq!(slow.unwrap(), "replica-1 http://billing/slow");
    let gap = reconnected_at - disconnected_at;
    eprintln!("{total} requests through the GOAWAY, none failed; reconnected after {gap:?}");

    assert_eq!(events.count(failed), 0, "{:?}", events.seen());
    assert_eq!(server.counts().accepted, 2, "one new connection");
    gap
}

/// Scenario 24, graceful server shutdown (GOAWAY): "existing requests finish; new ones wait
/// for the reconnect; no error storm". Three tasks keep sending requests through the GOAWAY,
/// and not one of them fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s24_graceful_shutdown_goaway_finishes_the_call_in_flight_and_fails_no_request() {
    let gap = goaway_under_load(Duration::from_millis(300), 3).await;
    assert!(gap < SOON);
}

/// Scenario 24, the reconnect: a server's `GOAWAY` after a useful life is followed by an
/// immediate reconnect (the connection served), also under load, not by the rest of
/// the 10 s retry delay during which every new request waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s24_goaway_under_load_reconnects_at_once_not_after_the_retry_delay() {
    const RETRY_DELAY: Duration = Duration::from_secs(10);
    let gap = goaway_under_load(RETRY_DELAY, 6).await;
    assert!(
        gap < RETRY_DELAY / 2,
        "reconnected only after {gap:?}: it waited for the retry delay"
    );
}

/// Scenario 24, the same race made deterministic with a scripted connection under paused
/// time: the connection closes gracefully (its `poll_ready` fails and its close signal says
/// graceful, as an HTTP/2 connection does on `GOAWAY`) after 5 s of life, and a request's
/// `poll_ready` sees it before the driver runs. The reconnect must still be immediate.
#[tokio::test(start_paused = true)]
async fn s24_graceful_close_seen_first_by_a_request_still_reconnects_at_once() {
    let maker = support::Maker::always_connect();
    let mut svc = PersistentConnectionLayer::fixed_address("replica-1")
        .retry_delay(|| support::secs(10))
        .jitter(0.0)
        .close_signal(|conn: &support::Conn| conn.closed())
        .layer(maker.clone());
    let handle = svc.handle();
    handle.connected().await.unwrap();
    tokio::time::sleep(support::secs(5)).await;

    maker.conn(0).close_gracefully();
    let mut ready = tokio_test::task::spawn(ServiceExt::<String>::ready(&mut svc));
    tokio_test::assert_pending!(ready.poll());
    drop(ready);
    support::yield_until("a second attempt", || maker.attempts() == 2).await;
    assert_eq!(
        maker.attempt_times(),
        [support::secs(0), support::secs(5)],
        "the graceful close was treated as a failure: the next attempt waits for 10 s"
    );
}

/// Scenario 11, discovery returns a dead address: "attempt fails; discovery runs again on the
/// next attempt; the address-changed event fires only on change". Discovery answers a closed
/// port twice, then the live server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s11_a_dead_address_from_discovery_fails_and_the_next_lookup_finds_the_live_one() {
    let server = H2Server::start("replica-1").await;
    let dead = closed_port();
    let live = server.addr();
    let lookups = Arc::new(AtomicUsize::new(0));
    let (hook, mut events) = recorder();
    let counter = lookups.clone();
    let mut svc = PersistentConnectionLayer::new(move || {
        let n = counter.fetch_add(1, Ordering::SeqCst);
        async move { Ok::<_, Infallible>(if n < 2 { dead } else { live }) }
    })
    .server_name("billing")
    .retry_delay(|| Duration::from_millis(100))
    .jitter(0.0)
    .on_event(hook)
    .http2(Http2Connector::new());

    events.wait_for(connected, SOON).await;
    assert_eq!(lookups.load(Ordering::SeqCst), 3, "one lookup per attempt");
    let seen = events.seen();
    let [a, b, c, d, e] = seen.as_slice() else {
        panic!("{seen:?}");
    };
    assert_eq!(
        (a, b),
        (&Ev::Attempting, &Ev::Address(dead.to_string())),
        "{seen:?}"
    );
    assert!(
        matches!(c, Ev::Failed(text, ConnectErrorKind::Connect) if text.to_lowercase().contains("refused")),
        "{seen:?}"
    );
    assert_eq!(
        (d, e),
        (&Ev::Address(live.to_string()), &Ev::Connected(0)),
        "{seen:?}"
    );
    assert_eq!(get_ok(&mut svc, "/x").await, "replica-1 http://billing/x");
}
