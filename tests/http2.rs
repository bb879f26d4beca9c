//! The HTTP/2 connector under the layer, against real hyper servers on 127.0.0.1: multiplexing,
//! the default authority, close detection without requests, failover through discovery,
//! requests in flight on a dying connection, keep-alive, accept-then-close servers, `GOAWAY`,
//! and shutdown when the last user is gone.

#[path = "support/h2server.rs"]
mod h2server;
mod support;

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use h2server::{ClosingListener, H2Server, SilentServer};
use persistent_connection::{
    PersistentConnection, PersistentConnectionLayer,
    http::{Http2Connection, Http2Connector},
};
use support::{
    Body, Ev, Events, SOON, connected, disconnected, failed, get, get_ok, recorder, within,
};
use tokio::{sync::mpsc, time::Instant};
use tower::Layer;

type Conn = Http2Connection<Body>;
type Svc = PersistentConnection<Conn>;

// === tests ===

/// Fifty concurrent requests are multiplexed on one HTTP/2 connection (all fifty are in
/// flight at the server at once, and it accepted one connection), and a path-only URI is
/// given `http://` and the layer's server name as its authority.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_share_one_connection_and_get_the_server_name_as_authority() {
    let server = H2Server::start("replica-1").await;
    let svc = PersistentConnectionLayer::fixed_address(server.addr())
        .server_name("billing")
        .http2(Http2Connector::new());

    // The server holds every answer until all fifty requests have arrived.
    server.hold(true);
    let requests: Vec<_> = (0..50)
        .map(|i| {
            let mut svc = svc.clone();
            tokio::spawn(async move { get(&mut svc, &format!("/item/{i}")).await })
        })
        .collect();
    server.wait_for(SOON, |c| c.in_flight == 50).await;
    server.hold(false);
    for (i, request) in requests.into_iter().enumerate() {
        let body = within(SOON, "a multiplexed request", request)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(body, format!("replica-1 http://billing/item/{i}"));
    }
    let counts = server.counts();
    assert_eq!(counts.accepted, 1, "one connection for every request");
    assert_eq!(
        counts.max_in_flight, 50,
        "all requests were in flight at once"
    );
}

/// An origin configured on the connector overrides the server name as the authority of
/// path-only URIs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configured_origin_overrides_the_server_name() {
    let server = H2Server::start("replica-1").await;
    let mut svc = PersistentConnectionLayer::fixed_address(server.addr())
        .server_name("billing")
        .http2(Http2Connector::new().origin("http://other:81"));

    assert_eq!(
        get_ok(&mut svc, "/health?full=1").await,
        "replica-1 http://other:81/health?full=1"
    );
    // An absolute URI is sent as it is.
    assert_eq!(
        get_ok(&mut svc, "http://explicit:9/x").await,
        "replica-1 http://explicit:9/x"
    );
}

/// A `host:port` name (a `String`) is resolved and dialed; with `http2` the server name is
/// the authority, and with a plain `layer` (no origin, no server name wired in) the dialed
/// name is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_port_name_address_is_resolved_and_dialed() {
    let server = H2Server::start("replica-1").await;
    let name = format!("localhost:{}", server.addr().port());

    let mut named = PersistentConnectionLayer::fixed_address(name.clone())
        .server_name("billing")
        .http2(Http2Connector::new());
    assert_eq!(get_ok(&mut named, "/a").await, "replica-1 http://billing/a");

    let mut plain = PersistentConnectionLayer::fixed_address(name.clone())
        .close_signal(Conn::closed)
        .layer(Http2Connector::<Body>::new());
    assert_eq!(
        get_ok(&mut plain, "/b").await,
        format!("replica-1 http://{name}/b")
    );
    assert_eq!(server.counts().accepted, 2, "one connection per layer");
}

/// Killing the server is noticed on an idle connection, without any request, within
/// milliseconds (`Disconnected`); once the server is back on the same port the layer connects
/// again and requests succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_server_is_noticed_without_a_request_and_reconnected_after_restart() {
    let server = H2Server::start("replica-1").await;
    let (hook, mut events) = recorder::<SocketAddr, Conn>();
    let mut svc = PersistentConnectionLayer::fixed_address(server.addr())
        .server_name("billing")
        .retry_delay(|| Duration::from_millis(100))
        .jitter(0.0)
        .on_event(hook)
        .http2(Http2Connector::new());
    events.wait_for(connected, SOON).await;

    let killed_at = Instant::now();
    server.kill().await;
    // Noticed at all without a request is the property; the bound is wide for a loaded
    // machine (measured: well under a millisecond).
    let disconnected_at = events.wait_for(disconnected, SOON).await;
    let latency = disconnected_at - killed_at;
    eprintln!("disconnect noticed {latency:?} after the kill");
    assert!(latency < SOON, "disconnect noticed only after {latency:?}");
    assert_eq!(server.counts().requests, 0, "no request was needed");

    server.restart().await;
    events.wait_for(connected, SOON).await;
    assert_eq!(
        get_ok(&mut svc, "/again").await,
        "replica-1 http://billing/again"
    );
    assert_eq!(server.counts().accepted, 2);
}

/// When the server dies and comes back on another port, the discovery closure (called
/// before every attempt) leads the layer to the new address: `ObtainedAddress(new)` is
/// reported and requests reach the new server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_moves_the_connection_to_a_server_on_another_port() {
    let old = H2Server::start("replica-a").await;
    let current = Arc::new(Mutex::new(old.addr()));
    let (hook, mut events) = recorder::<SocketAddr, Conn>();
    let lookup = current.clone();
    let mut svc = PersistentConnectionLayer::new(move || {
        let address = *lookup.lock().unwrap();
        async move { Ok::<_, Infallible>(address) }
    })
    .server_name("billing")
    .retry_delay(|| Duration::from_millis(100))
    .jitter(0.0)
    .on_event(hook)
    .http2(Http2Connector::new());
    assert_eq!(get_ok(&mut svc, "/x").await, "replica-a http://billing/x");

    old.kill().await;
    let new = H2Server::start("replica-b").await;
    assert_ne!(new.addr(), old.addr());
    *current.lock().unwrap() = new.addr();

    events
        .wait_for(|e| *e == Ev::Address(new.addr().to_string()), SOON)
        .await;
    events.wait_for(connected, SOON).await;
    assert_eq!(get_ok(&mut svc, "/y").await, "replica-b http://billing/y");
    assert_eq!(new.counts().accepted, 1);
}

/// Requests in flight when the server dies fail promptly with the connection's error: they
/// neither hang nor succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_in_flight_on_a_killed_connection_fail_with_a_connection_error() {
    let server = H2Server::start("replica-1").await;
    // Far longer than the bound below: no answer can arrive in time.
    server.set_delay(Duration::from_secs(30));
    let svc = PersistentConnectionLayer::fixed_address(server.addr())
        .server_name("billing")
        .http2(Http2Connector::new());

    let requests: Vec<_> = (0..5)
        .map(|_| {
            let mut svc = svc.clone();
            tokio::spawn(async move { get(&mut svc, "/slow").await })
        })
        .collect();
    server.wait_for(SOON, |c| c.in_flight == 5).await;

    let killed_at = Instant::now();
    server.kill().await;
    for request in requests {
        let result = within(SOON, "a request on a killed connection", request)
            .await
            .unwrap();
        let error = result.expect_err("a request on a killed connection cannot succeed");
        eprintln!("after {:?}: {error}", killed_at.elapsed());
        assert!(
            error.downcast_ref::<hyper::Error>().is_some(),
            "expected the connection's (hyper) error, got {error:?}"
        );
    }
}

/// With keep-alive pings every 100 ms answered within 200 ms, a peer that stays silent
/// (never answers, never closes) is reported `Disconnected` without any request (measured:
/// about 300 ms; bounded at 3 s for a loaded machine), and a request sent through the layer
/// on the next connection to it fails with the connection's error instead of hanging, after
/// which that connection too is reported `Disconnected`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_notices_a_silent_peer_and_its_requests_fail() {
    let server = SilentServer::start().await;
    let (hook, mut events) = recorder::<SocketAddr, Conn>();
    let mut svc = PersistentConnectionLayer::fixed_address(server.addr)
        .server_name("silent")
        .retry_delay(|| Duration::from_millis(100))
        .jitter(0.0)
        .on_event(hook)
        .http2(
            Http2Connector::new()
                .keep_alive_interval(Some(Duration::from_millis(100)))
                .keep_alive_timeout(Duration::from_millis(200))
                .keep_alive_while_idle(true),
        );

    // Idle: the pings alone find out.
    let connected_at = events.wait_for(|e| *e == Ev::Connected(0), SOON).await;
    let disconnected_at = events.wait_for(disconnected, SOON).await;
    let detection = disconnected_at - connected_at;
    eprintln!("silent peer noticed {detection:?} after connecting (idle)");
    assert!(
        detection < SOON,
        "silent peer noticed only after {detection:?}"
    );

    // With a request in flight: the layer connects again, and a request through it fails
    // once the pings time out.
    events.wait_for(|e| *e == Ev::Connected(1), SOON).await;
    let sent_at = Instant::now();
    let result = within(SOON, "a request to a silent peer", get(&mut svc, "/never")).await;
    let error = result.expect_err("the silent peer never answers");
    eprintln!("request failed after {:?}: {error}", sent_at.elapsed());
    assert!(
        error.downcast_ref::<hyper::Error>().is_some(),
        "expected the connection's (hyper) error, got {error:?}"
    );
    events.wait_for(disconnected, SOON).await;
    assert_eq!(
        events.count(failed),
        0,
        "every dial connected: {:?}",
        events.seen()
    );
}

/// A layer over `addr` whose address source reports the time of every attempt on the
/// returned channel; it retries every `delay`, without jitter.
fn counting_layer(
    addr: SocketAddr,
    delay: Duration,
) -> (Svc, mpsc::UnboundedReceiver<Instant>, Events) {
    let (attempt_tx, attempts) = mpsc::unbounded_channel();
    let (hook, events) = recorder::<SocketAddr, Conn>();
    let svc = PersistentConnectionLayer::new(move || {
        let _ = attempt_tx.send(Instant::now());
        async move { Ok::<_, Infallible>(addr) }
    })
    .server_name("flaky")
    .retry_delay(move || delay)
    .jitter(0.0)
    .on_event(hook)
    .http2(Http2Connector::new());
    (svc, attempts, events)
}

/// Waits for `n` attempts, each within `bound` of the one before; returns their times.
async fn attempt_times(
    attempts: &mut mpsc::UnboundedReceiver<Instant>,
    n: usize,
    bound: Duration,
) -> Vec<Instant> {
    let mut times = Vec::new();
    while times.len() < n {
        let at = within(bound, "the next attempt", attempts.recv()).await;
        times.push(at.expect("the layer is alive"));
    }
    times
}

/// The texts of the `FailedToConnect` events of a cycle that only failed (`seen` starts with
/// `AttemptingToConnect` and `ObtainedAddress(addr)`).
fn failures_only(seen: &[Ev], addr: SocketAddr) -> Vec<String> {
    assert_eq!(
        seen[..2],
        [Ev::Attempting, Ev::Address(addr.to_string())],
        "{seen:?}"
    );
    seen[2..]
        .iter()
        .map(|event| match event {
            Ev::Failed(text, _) => text.clone(),
            other => panic!("only failures expected, got {other:?} in {seen:?}"),
        })
        .collect()
}

/// A listener that accepts TCP and closes at once is not a connection (the connector waits
/// for the server's preface): attempts come one per retry delay, never in a busy loop, no
/// `Connected` is reported, only `FailedToConnect`, and a failure is not reported again while
/// its text stays the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accept_then_close_is_retried_once_per_delay_and_never_connected() {
    const DELAY: Duration = Duration::from_millis(300);
    const ATTEMPTS: usize = 5;
    let listener = ClosingListener::start().await;
    let (svc, mut attempts, events) = counting_layer(listener.addr, DELAY);

    let times = attempt_times(&mut attempts, ATTEMPTS, DELAY * 3).await;
    for pair in times.windows(2) {
        let gap = pair[1] - pair[0];
        assert!(
            gap >= DELAY - Duration::from_millis(5),
            "attempts {gap:?} apart, less than the retry delay"
        );
    }
    // Since the first attempt, at most one attempt and one dial per retry delay, counted
    // together at one instant (the attempts reported by then included).
    let accepted = *listener.accepted.borrow();
    let attempted = ATTEMPTS + std::iter::from_fn(|| attempts.try_recv().ok()).count();
    let span = times[0].elapsed();
    let bound = (span.as_millis() / DELAY.as_millis()) as usize + 1;
    eprintln!("{attempted} attempts and {accepted} dials in {span:?}");
    assert!(
        attempted <= bound && accepted <= bound,
        "{attempted} attempts and {accepted} dials in {span:?}: more than one per {DELAY:?}"
    );
    assert!(accepted >= ATTEMPTS - 1, "every attempt dials: {accepted}");

    let failures = failures_only(&events.seen(), listener.addr);
    eprintln!("failures reported over {ATTEMPTS} attempts: {failures:?}");
    // Whether the client meets a clean end or a reset is a race of the TCP stack; either way
    // it is the same failure, reported once.
    assert_eq!(failures.len(), 1, "{failures:?}");
    drop(svc);
}

/// A server that resets every connection at once is one failure, reported once per cycle:
/// whether the client meets the reset while it sets up the socket, while it writes its
/// preface, or while it waits for the server's is a race of the TCP stack, not a different
/// failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_resetting_every_connection_is_one_failure_reported_once() {
    const DELAY: Duration = Duration::from_millis(10);
    const ATTEMPTS: usize = 40;
    let listener = ClosingListener::resetting().await;
    let (svc, mut attempts, events) = counting_layer(listener.addr, DELAY);

    // The first `ATTEMPTS` attempts have all failed once the next one has started.
    attempt_times(&mut attempts, ATTEMPTS + 1, SOON).await;
    let failures = failures_only(&events.seen(), listener.addr);
    let mut texts = failures.clone();
    texts.sort();
    texts.dedup();
    eprintln!(
        "{} failures reported over {ATTEMPTS} attempts, distinct texts: {texts:?}",
        failures.len()
    );
    assert_eq!(failures.len(), 1, "{failures:?}");
    drop(svc);
}

/// When the server sends `GOAWAY`, the request in flight completes on the old connection,
/// the layer reports `Disconnected` and reconnects at once (not after the 10 s retry delay:
/// the connection served a request before, so the goodbye is no failure), and new requests go
/// to the new connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn goaway_lets_the_request_in_flight_finish_and_the_layer_reconnects_at_once() {
    const RETRY_DELAY: Duration = Duration::from_secs(10);
    const SLOW: Duration = Duration::from_secs(3);
    let server = H2Server::start("replica-1").await;
    let (hook, mut events) = recorder::<SocketAddr, Conn>();
    let mut svc = PersistentConnectionLayer::fixed_address(server.addr())
        .server_name("billing")
        .retry_delay(|| RETRY_DELAY)
        .jitter(0.0)
        .on_event(hook)
        .http2(Http2Connector::new());
    let connected_at = events.wait_for(connected, SOON).await;
    // One answered request: the connection has served (a `GOAWAY` before any response from a
    // young connection is a failure and waits the delay; see the close-signal tests).
    assert_eq!(
        get_ok(&mut svc, "/first").await,
        "replica-1 http://billing/first"
    );

    // Long enough that the new connection serves `/next` while the old one still holds this
    // stream, even on a loaded machine.
    server.set_delay(SLOW);
    let mut slow_svc = svc.clone();
    let slow = tokio::spawn(async move {
        let body = get(&mut slow_svc, "/slow").await;
        (body, Instant::now())
    });
    server.wait_for(SOON, |c| c.in_flight == 1).await;
    server.set_delay(Duration::ZERO);

    server.goaway();

    let disconnected_at = events.wait_for(disconnected, SOON).await;
    let reconnected_at = events.wait_for(connected, SOON).await;
    let gap = reconnected_at - disconnected_at;
    eprintln!("reconnected {gap:?} after the GOAWAY's disconnect");
    assert!(
        gap < RETRY_DELAY / 2,
        "reconnect took {gap:?}: it waited for the retry delay"
    );

    // New requests go to the new connection, while the old one still finishes its stream.
    assert_eq!(
        get_ok(&mut svc, "/next").await,
        "replica-1 http://billing/next"
    );
    let counts = server.counts();
    assert_eq!(counts.accepted, 2, "new requests go to a new connection");
    assert_eq!(counts.requests, 3);
    assert_eq!(
        counts.ended, 0,
        "the old connection still serves its stream"
    );

    let (slow, finished_at) = within(SLOW + SOON, "the request in flight", slow)
        .await
        .unwrap();
    eprintln!(
        "GOAWAY: disconnected at {:?}, reconnected at {:?}, request in flight done at {:?}",
        disconnected_at - connected_at,
        reconnected_at - connected_at,
        finished_at - connected_at,
    );
    assert_eq!(slow.unwrap(), "replica-1 http://billing/slow");
    assert!(
        disconnected_at < finished_at,
        "the layer moved on only when the old connection had finished its work"
    );

    // The old connection ends once its stream is done.
    server.wait_for(SOON, |c| c.ended == 1).await;
}

/// Once every service clone and handle is dropped, the HTTP/2 connection is closed: the
/// server sees it end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_every_service_clone_and_handle_closes_the_connection() {
    let server = H2Server::start("replica-1").await;
    let (hook, mut events) = recorder::<SocketAddr, Conn>();
    let mut svc = PersistentConnectionLayer::fixed_address(server.addr())
        .server_name("billing")
        .on_event(hook)
        .http2(Http2Connector::new());
    let clone = svc.clone();
    let handle = svc.handle();
    assert_eq!(get_ok(&mut svc, "/x").await, "replica-1 http://billing/x");
    events.wait_for(connected, SOON).await;

    drop(svc);
    drop(clone);
    // With a handle left, the connection stays up.
    assert!(handle.current_connection().is_some());
    assert_eq!(server.counts().ended, 0);

    let dropped_at = Instant::now();
    drop(handle);
    server.wait_for(SOON, |c| c.ended == 1).await;
    eprintln!(
        "connection closed {:?} after the last drop",
        dropped_at.elapsed()
    );
    events.wait_for(disconnected, SOON).await;
    assert_eq!(server.counts().accepted, 1);
}
