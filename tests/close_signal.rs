//! The close signal (DESIGN.md S12): a connection that closes by itself is noticed without any
//! request, and panics in the user's close-signal code never kill the driver.

mod support;

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use persistent_connection::{PersistentConnectionLayer, close::CloseReason};
use support::{Conn, Events, Maker, secs, yield_until};
use tower::Layer;

/// With a close signal, a killed idle connection is noticed at once, with no request sent and
/// no `poll_ready`: `Disconnected` is reported and a new connection is made right away (it
/// lived longer than the delay).
#[tokio::test(start_paused = true)]
async fn closed_connection_is_noticed_without_a_request() {
    let maker = Maker::always_connect();
    let events = Events::new();
    let svc = PersistentConnectionLayer::fixed_address("a")
        .jitter(0.0)
        .on_event(events.hook())
        .close_signal(|conn: &Conn| conn.closed())
        .layer(maker.clone());
    let handle = svc.handle();
    handle.connected().await.unwrap();

    tokio::time::sleep(secs(60)).await;
    let polls_before = maker.conn(0).polls();
    maker.conn(0).kill();
    yield_until("connection 1 reported", || {
        events.count(support::connected) >= 2
    })
    .await;

    assert_eq!(
        events
            .timed()
            .iter()
            .map(|(t, e)| (t.as_secs(), e.as_str()))
            .collect::<Vec<_>>(),
        [
            (0, "Attempting"),
            (0, "Address(a)"),
            (0, "Connected(0)"),
            (60, "Disconnected"),
            (60, "Attempting"),
            (60, "Address(a)"),
            (60, "Connected(1)"),
        ]
    );
    assert_eq!(maker.conn(1).polls(), 0, "nobody polled the new connection");
    assert_eq!(polls_before, 0, "nobody polled the old connection either");
    drop(svc);
}

/// Without a close signal, an idle killed connection is only noticed when a clone polls it:
/// this is what the signal adds.
#[tokio::test(start_paused = true)]
async fn without_a_close_signal_an_idle_dead_connection_is_noticed_on_poll() {
    let maker = Maker::always_connect();
    let events = Events::new();
    let mut svc = PersistentConnectionLayer::fixed_address("a")
        .jitter(0.0)
        .on_event(events.hook())
        .layer(maker.clone());
    svc.handle().connected().await.unwrap();
    maker.conn(0).kill();
    tokio::time::sleep(secs(60)).await;
    assert!(!events.names().contains(&"Disconnected".to_string()));

    let reply = tower::ServiceExt::oneshot(&mut svc, "x".to_string())
        .await
        .unwrap();
    assert_eq!(reply, "1:x");
    assert!(events.names().contains(&"Disconnected".to_string()));
}

/// A panic in the close-signal closure is a failed attempt of kind Panic; the driver carries
/// on and connects once the closure stops panicking.
#[tokio::test(start_paused = true)]
async fn panic_in_close_signal_is_a_failed_attempt() {
    let maker = Maker::always_connect();
    let events = Events::new();
    let calls = Arc::new(AtomicUsize::new(0));
    let svc = PersistentConnectionLayer::fixed_address("a")
        .jitter(0.0)
        .retry_delay(|| secs(1))
        .on_event(events.hook())
        .close_signal({
            let calls = calls.clone();
            move |conn: &Conn| {
                if calls.fetch_add(1, Ordering::SeqCst) == 0 {
                    panic!("close signal exploded");
                }
                conn.closed()
            }
        })
        .layer(maker.clone());
    let conn = svc.handle().connected().await.unwrap();
    assert_eq!(conn.id(), 1);
    assert_eq!(
        events.names(),
        [
            "Attempting",
            "Address(a)",
            "Failed(connect attempt panicked: close signal exploded)",
            "Connected(1)",
        ]
    );
    assert_eq!(maker.attempt_times(), [Duration::ZERO, secs(1)]);
    // The connection whose signal panicked was dropped.
    assert!(std::panic::catch_unwind(|| maker.conn(0)).is_err());
}

/// A panic inside the close-signal future ends that connection (as an error close) and the
/// driver reconnects.
#[tokio::test(start_paused = true)]
async fn panic_in_close_signal_future_disconnects_and_reconnects() {
    let maker = Maker::always_connect();
    let events = Events::new();
    let svc = PersistentConnectionLayer::fixed_address("a")
        .jitter(0.0)
        .retry_delay(|| secs(1))
        .on_event(events.hook())
        .close_signal(|conn: &Conn| {
            let first = conn.id() == 0;
            let closed = conn.closed();
            async move {
                if first {
                    tokio::time::sleep(secs(5)).await;
                    panic!("close future exploded");
                }
                closed.await
            }
        })
        .layer(maker.clone());
    svc.handle().connected().await.unwrap();
    tokio::time::sleep(secs(6)).await;
    assert_eq!(events.names(), support::RECONNECTED_ONCE);
    assert_eq!(svc.handle().current_connection().unwrap().id(), 1);
}

/// `CloseReason` tells graceful from error closes, and which goodbyes replace at once.
#[test]
fn close_reason_says_whether_the_close_was_graceful() {
    assert!(CloseReason::Graceful.is_graceful());
    assert!(CloseReason::Graceful.replaces_at_once());
    let unserved = CloseReason::GracefulBeforeServing;
    assert!(unserved.is_graceful());
    assert!(!unserved.replaces_at_once());
    assert_eq!(
        unserved.to_string(),
        "closed gracefully before answering any request"
    );
    let error = CloseReason::Error("reset".into());
    assert!(!error.is_graceful());
    assert!(!error.replaces_at_once());
    assert_eq!(error.to_string(), "closed with error: reset");
}

/// A layer over `maker` with a 10 s delay (no jitter) and the close signal wired in.
fn graceful_layer(
    maker: &Maker,
    flap_guard: Option<Duration>,
) -> persistent_connection::Handle<Conn> {
    let mut layer = PersistentConnectionLayer::fixed_address("a")
        .jitter(0.0)
        .close_signal(|conn: &Conn| conn.closed());
    if let Some(flap_guard) = flap_guard {
        layer = layer.flap_guard(flap_guard);
    }
    let svc = layer.layer(maker.clone());
    let handle = svc.handle();
    // The handle keeps the driver alive; the service is not needed.
    drop(svc);
    handle
}

/// The server's goodbye after serving (GOAWAY, `Connection: close`, an idle close) is replaced
/// at once whatever the connection's age, here 10 ms, far below the 10 s delay and the 1 s
/// flap guard; it counts as no failure and as one graceful close.
#[tokio::test(start_paused = true)]
async fn goodbye_after_serving_reconnects_at_once_whatever_the_age() {
    let maker = Maker::always_connect();
    let handle = graceful_layer(&maker, None);
    handle.connected().await.unwrap();
    tokio::time::sleep(Duration::from_millis(10)).await;
    maker.conn(0).close_gracefully();
    yield_until("connection 1 is current", || {
        handle.current_connection().is_some_and(|c| c.id() == 1)
    })
    .await;
    assert_eq!(maker.attempt_times(), [secs(0), Duration::from_millis(10)]);
    assert_eq!(handle.current_connection().unwrap().id(), 1);
    let stats = handle.stats();
    assert_eq!(stats.graceful_closes, 1);
    assert_eq!(stats.failed_attempts, 0);
    assert_eq!(stats.consecutive_failures, 0);
}

/// A server that serves a few requests per connection and says goodbye (a keep-alive request
/// limit under load): 100 goodbyes 5 ms apart are 100 immediate replacements, the driver never
/// waits, and the retry policy never sees a failure.
#[tokio::test(start_paused = true)]
async fn goodbyes_in_a_row_never_wait_and_never_count_as_failures() {
    let maker = Maker::always_connect();
    let handle = graceful_layer(&maker, None);
    let mut states = handle.state_changes();
    handle.connected().await.unwrap();
    for id in 0..100 {
        tokio::time::sleep(Duration::from_millis(5)).await;
        maker.conn(id).close_gracefully();
        yield_until("the next connection is current", || {
            handle
                .current_connection()
                .is_some_and(|c| c.id() == id + 1)
        })
        .await;
        assert_eq!(handle.current_connection().unwrap().id(), id + 1);
    }
    let times = maker.attempt_times();
    assert_eq!(times.len(), 101);
    assert_eq!(*times.last().unwrap(), Duration::from_millis(500));
    let stats = handle.stats();
    assert_eq!((stats.graceful_closes, stats.failed_attempts), (100, 0));
    assert_eq!(stats.consecutive_failures, 0);
    drop(handle.close());
    use futures_util::StreamExt as _;
    while let Some(state) = states.next().await {
        assert!(
            !matches!(state, persistent_connection::State::Waiting { .. }),
            "waited a retry delay: {state:?}"
        );
    }
}

/// A goodbye before serving anything from a young connection (a server that accepts and
/// closes, or sends GOAWAY before any response) is a failure: the next attempt waits out the
/// delay, one attempt per delay window, and the policy counts it.
#[tokio::test(start_paused = true)]
async fn goodbye_before_serving_from_a_young_connection_waits_the_delay() {
    let maker = Maker::always_connect();
    let handle = graceful_layer(&maker, None);
    handle.connected().await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    maker.conn(0).close_gracefully_before_serving();
    tokio::time::sleep(secs(9)).await;
    assert_eq!(maker.attempt_times(), [secs(0)]);
    assert_eq!(handle.stats().consecutive_failures, 1);
    assert_eq!(handle.stats().graceful_closes, 0);
    tokio::time::sleep(secs(1)).await;
    yield_until("the attempt at 10 s", || maker.attempts() >= 2).await;
    assert_eq!(maker.attempt_times(), [secs(0), secs(10)]);
}

/// A goodbye before serving from a connection older than the flap guard is an idle close of a
/// connection nobody used: replaced at once, no failure.
#[tokio::test(start_paused = true)]
async fn goodbye_before_serving_after_the_flap_guard_is_an_idle_close() {
    let maker = Maker::always_connect();
    let handle = graceful_layer(&maker, None);
    handle.connected().await.unwrap();
    tokio::time::sleep(secs(5)).await;
    maker.conn(0).close_gracefully_before_serving();
    yield_until("the attempt at 5 s", || maker.attempts() >= 2).await;
    assert_eq!(maker.attempt_times(), [secs(0), secs(5)]);
    let stats = handle.stats();
    assert_eq!((stats.graceful_closes, stats.consecutive_failures), (1, 0));
}

/// An error close is not a goodbye: the connection that lived 5 s waits the rest of the
/// 10 s delay, as in the seed.
#[tokio::test(start_paused = true)]
async fn error_close_waits_the_rest_of_the_delay() {
    let maker = Maker::always_connect();
    let handle = graceful_layer(&maker, None);
    handle.connected().await.unwrap();
    tokio::time::sleep(secs(5)).await;
    maker.conn(0).kill();
    tokio::time::sleep(Duration::from_millis(4999)).await;
    assert_eq!(maker.attempt_times(), [secs(0)]);
    tokio::time::sleep(Duration::from_millis(1)).await;
    yield_until("the attempt at 10 s", || maker.attempts() >= 2).await;
    assert_eq!(maker.attempt_times(), [secs(0), secs(10)]);
    assert_eq!(handle.stats().graceful_closes, 0);
}

/// The flap guard sets the life below which a goodbye before serving is a failure: with 3 s,
/// one at 2 s waits the delay, one after 4 s of life does not.
#[tokio::test(start_paused = true)]
async fn flap_guard_sets_when_a_goodbye_before_serving_is_a_failure() {
    let maker = Maker::always_connect();
    let handle = graceful_layer(&maker, Some(secs(3)));
    handle.connected().await.unwrap();
    tokio::time::sleep(secs(2)).await;
    maker.conn(0).close_gracefully_before_serving();
    tokio::time::sleep(secs(8)).await;
    yield_until("the attempt at 10 s", || maker.attempts() >= 2).await;
    assert_eq!(maker.attempt_times(), [secs(0), secs(10)]);

    tokio::time::sleep(secs(4)).await;
    maker.conn(1).close_gracefully_before_serving();
    yield_until("the attempt at 14 s", || maker.attempts() >= 3).await;
    assert_eq!(maker.attempt_times(), [secs(0), secs(10), secs(14)]);
}
