//! Client-side rotation (`max_connection_age`): a connection is replaced make before break,
//! under paused time with scripted connections.

mod support;

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use futures_util::FutureExt as _;
use persistent_connection::{PersistentConnection, PersistentConnectionLayer, State};
use support::{Conn, Events, Maker, Plan, addresses, secs, within_an_hour, yield_until};
use tokio::time::{Instant, sleep_until};
use tower::{Layer, Service, ServiceExt as _};

/// A layer with a 10 s retry delay, no jitter, the close signal wired in, and a 60 s maximum
/// age.
fn rotating() -> PersistentConnectionLayer<support::Addr> {
    PersistentConnectionLayer::fixed_address("a")
        .jitter(0.0)
        .retry_delay(|| secs(10))
        .max_connection_age(secs(60))
}

/// A [`rotating`] layer over `maker`, reporting to `events`, with the connections' close
/// signal wired in, once it is connected; and the time it was made.
async fn connected_with_close_signal(
    maker: &Maker,
    events: &Events,
) -> (PersistentConnection<Conn>, Instant) {
    let svc = rotating()
        .on_event(events.hook())
        .close_signal(|conn: &Conn| conn.closed())
        .layer(maker.clone());
    let t0 = Instant::now();
    within_an_hour("the first connection", svc.handle().connected())
        .await
        .unwrap();
    (svc, t0)
}

/// At 60 s the driver makes the replacement while the old connection serves: the old one is
/// current until the new one is connected (2 s later), then the new one is; a request made
/// during the attempt goes to the old one. Reported as `Disconnected`, then a cycle for the
/// new one, at the switch; counted as one rotation, no failure; the old connection is dropped
/// by the driver.
#[tokio::test(start_paused = true)]
async fn an_aged_connection_is_replaced_make_before_break() {
    let maker = Maker::new([Plan::Connect], Plan::ConnectAfter(secs(2)));
    let events = Events::new();
    let (mut svc, t0) = connected_with_close_signal(&maker, &events).await;
    let handle = svc.handle();

    sleep_until(t0 + secs(61)).await;
    assert_eq!(maker.attempt_times(), [secs(0), secs(60)]);
    assert_eq!(handle.state(), State::Connected);
    assert_eq!(handle.current_connection().unwrap().id(), 0);
    let reply = svc.ready().await.unwrap().call("during".into()).await;
    assert_eq!(
        reply.unwrap(),
        "0:during",
        "the old connection serves meanwhile"
    );

    sleep_until(t0 + secs(62)).await;
    yield_until("connection 1 is current", || {
        handle.current_connection().is_some_and(|c| c.id() == 1)
    })
    .await;
    assert_eq!(handle.current_connection().unwrap().id(), 1);
    let reply = svc.ready().await.unwrap().call("after".into()).await;
    assert_eq!(reply.unwrap(), "1:after");
    assert_eq!(
        events.timed_secs(),
        [
            (0, "Attempting".to_owned()),
            (0, "Address(a)".to_owned()),
            (0, "Connected(0)".to_owned()),
            (62, "Disconnected".to_owned()),
            (62, "Attempting".to_owned()),
            (62, "Address(a)".to_owned()),
            (62, "Connected(1)".to_owned()),
        ]
    );
    let stats = handle.stats();
    assert_eq!((stats.rotations, stats.failed_attempts), (1, 0));
    assert_eq!((stats.attempts, stats.connections), (2, 2));
    assert_eq!(
        maker.live.load(Ordering::SeqCst),
        1,
        "the old one is dropped"
    );

    // The new connection rotates in its turn, 60 s after it was made.
    sleep_until(t0 + secs(62 + 60 + 1)).await;
    assert_eq!(maker.attempt_times(), [secs(0), secs(60), secs(122)]);
}

/// A failed replacement leaves the old connection serving, without a `FailedToConnect` event
/// or a `Disconnected`; the rotation is tried again after the retry delay (10 s), and counted
/// as a failed attempt.
#[tokio::test(start_paused = true)]
async fn a_failed_rotation_keeps_the_old_connection_and_tries_again_after_the_delay() {
    let maker = Maker::new([Plan::Connect, Plan::Fail("replica gone")], Plan::Connect);
    let events = Events::new();
    let svc = rotating().on_event(events.hook()).layer(maker.clone());
    let handle = svc.handle();
    let t0 = Instant::now();
    handle.connected().await.unwrap();

    sleep_until(t0 + secs(65)).await;
    assert_eq!(maker.attempt_times(), [secs(0), secs(60)]);
    assert_eq!(handle.current_connection().unwrap().id(), 0);
    assert_eq!(handle.state(), State::Connected);
    assert_eq!(handle.stats().failed_attempts, 1);

    sleep_until(t0 + secs(71)).await;
    assert_eq!(maker.attempt_times(), [secs(0), secs(60), secs(70)]);
    assert_eq!(handle.current_connection().unwrap().id(), 1);
    assert_eq!(events.names(), support::RECONNECTED_ONCE);
    assert_eq!(handle.stats().rotations, 1);
}

/// If the old connection dies while its replacement is being made, the replacement's attempt
/// is not thrown away: it becomes the next cycle's first attempt (no second attempt, no
/// retry delay), and the service is `Pending` only until it is up.
#[tokio::test(start_paused = true)]
async fn the_old_connection_dying_during_a_rotation_keeps_the_attempt() {
    let maker = Maker::new([Plan::Connect], Plan::ConnectAfter(secs(3)));
    let events = Events::new();
    let (mut svc, t0) = connected_with_close_signal(&maker, &events).await;
    let handle = svc.handle();

    sleep_until(t0 + secs(61)).await;
    maker.conn(0).kill();
    yield_until("the death is noticed", || {
        handle.current_connection().is_none()
    })
    .await;
    assert!(handle.current_connection().is_none());
    assert!(svc.ready().now_or_never().is_none(), "Pending meanwhile");

    sleep_until(t0 + secs(63)).await;
    yield_until("connection 1 is current", || {
        handle.current_connection().is_some_and(|c| c.id() == 1)
    })
    .await;
    assert_eq!(handle.current_connection().unwrap().id(), 1);
    assert_eq!(maker.attempt_times(), [secs(0), secs(60)]);
    assert_eq!(
        events.timed_secs(),
        [
            (0, "Attempting".to_owned()),
            (0, "Address(a)".to_owned()),
            (0, "Connected(0)".to_owned()),
            (61, "Disconnected".to_owned()),
            (61, "Attempting".to_owned()),
            (63, "Address(a)".to_owned()),
            (63, "Connected(1)".to_owned()),
        ]
    );
    assert_eq!(handle.stats().rotations, 0);
}

/// Each replacement runs discovery: rotation moves the client to the address the catalog
/// gives now.
#[tokio::test(start_paused = true)]
async fn a_rotation_runs_discovery() {
    let maker = Maker::always_connect();
    let calls = Arc::new(AtomicUsize::new(0));
    let svc = PersistentConnectionLayer::new(addresses(&["a", "b"], calls.clone()))
        .jitter(0.0)
        .max_connection_age(secs(60))
        .layer(maker.clone());
    let handle = svc.handle();
    handle.connected().await.unwrap();
    tokio::time::sleep(secs(61)).await;
    assert_eq!(maker.attempt_addrs(), ["a", "b"]);
    assert_eq!(handle.current_connection().unwrap().addr(), "b");
}

/// The age is jittered like the delay: drivers of one seeded layer rotate at different times,
/// each within [0.7, 1.3] of the age.
#[tokio::test(start_paused = true)]
async fn the_age_is_jittered_so_a_fleet_does_not_rotate_in_step() {
    let layer = PersistentConnectionLayer::fixed_address("a")
        .rng_seed(7)
        .max_connection_age(secs(100));
    let makers: Vec<Maker> = (0..5).map(|_| Maker::always_connect()).collect();
    let handles: Vec<_> = makers
        .iter()
        .map(|maker| layer.layer(maker.clone()).handle())
        .collect();
    tokio::time::sleep(secs(131)).await;
    let mut rotated_at: Vec<Duration> = makers.iter().map(|m| m.attempt_times()[1]).collect();
    for at in &rotated_at {
        assert!(
            (secs(70)..=secs(130)).contains(at),
            "rotated at {at:?}, outside [70 s, 130 s]"
        );
    }
    rotated_at.sort();
    rotated_at.dedup();
    assert_eq!(rotated_at.len(), 5, "no two drivers rotated together");
    drop(handles);
}

/// Without `max_connection_age` nothing rotates; a zero age is refused with a clear panic.
#[tokio::test(start_paused = true)]
async fn no_rotation_by_default() {
    let maker = Maker::always_connect();
    let svc = PersistentConnectionLayer::fixed_address("a").layer(maker.clone());
    svc.handle().connected().await.unwrap();
    tokio::time::sleep(secs(24 * 3600)).await;
    assert_eq!(maker.attempts(), 1);
    let zero = std::panic::catch_unwind(|| {
        PersistentConnectionLayer::fixed_address("a").max_connection_age(Duration::ZERO)
    });
    let message = zero.unwrap_err();
    let message = message.downcast_ref::<&str>().copied().unwrap_or_default();
    assert!(message.contains("max_connection_age"), "{message}");
}
