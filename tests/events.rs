//! Events: what the driver reports, in which order, de-duplicated how, and how failures of
//! discovery, connect, timeout and user code are classified.

mod support;

use std::{
    convert::Infallible,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use persistent_connection::{ConnectErrorKind, Event, PersistentConnectionLayer};
use support::{Addr, Conn, Events, Maker, Plan, addresses, secs, within_an_hour};
use tower::{Layer, Service, ServiceExt};

/// `(time, text)` pairs, for comparing a whole event log at once.
fn timed(expected: &[(u64, &str)]) -> Vec<(Duration, String)> {
    expected
        .iter()
        .map(|(t, text)| (secs(*t), (*text).to_string()))
        .collect()
}

/// `get_address` is called once before every attempt, including the attempts of a new cycle,
/// and the maker receives exactly the address it returned for that attempt.
#[tokio::test(start_paused = true)]
async fn get_address_is_called_before_every_attempt_and_its_address_goes_to_the_maker() {
    let calls = Arc::new(AtomicUsize::new(0));
    let maker = Maker::new(
        [Plan::Fail("refused"), Plan::Fail("refused")],
        Plan::Connect,
    );
    let svc = PersistentConnectionLayer::new(addresses(&["a", "b", "c", "d"], calls.clone()))
        .jitter(0.0)
        .close_signal(|c: &Conn| c.closed())
        .layer(maker.clone());
    within_an_hour("connected", svc.handle().connected())
        .await
        .unwrap();
    assert_eq!(maker.attempt_addrs(), vec!["a", "b", "c"]);
    assert_eq!(calls.load(Ordering::SeqCst), 3);

    // A new cycle discovers again.
    maker.conn(0).kill();
    tokio::time::sleep(secs(100)).await;
    assert_eq!(maker.attempt_addrs(), vec!["a", "b", "c", "d"]);
    assert_eq!(calls.load(Ordering::SeqCst), maker.attempts());
}

/// The connection is handed out three ways, all the same connection: in `Event::Connected`,
/// by `Handle::connected()` and by `Handle::current_connection()`.
#[tokio::test(start_paused = true)]
async fn the_connection_is_handed_out_in_the_event_by_connected_and_by_current_connection() {
    let maker = Maker::new([Plan::Fail("refused")], Plan::Connect);
    let events = Events::new();
    let svc = PersistentConnectionLayer::fixed_address("a")
        .jitter(0.0)
        .on_event(events.hook())
        .layer(maker.clone());
    let handle = svc.handle();
    assert!(handle.current_connection().is_none());

    let from_connected = within_an_hour("connected", handle.connected())
        .await
        .unwrap();
    let current = handle.current_connection().expect("connected");
    // The first attempt failed: the connection is the one made by the second attempt (the
    // maker's first connection), and nothing else was made.
    assert_eq!(maker.connections(), 1);
    assert_eq!(from_connected.id(), 0);
    assert_eq!(current.id(), 0);
    assert_eq!(events.names().last().unwrap(), "Connected(0)");
    assert_eq!(from_connected.addr(), "a");
    // Copies of the very connection the maker made: they share its state.
    from_connected.kill();
    let mut current = current;
    let Err(error) = ServiceExt::<String>::ready(&mut current).await else {
        panic!("the killed connection's copy is still ready");
    };
    assert_eq!(error.to_string(), "connection 0 is dead");
}

/// The whole event log of "fail, fail, connect, connection killed, reconnect": one
/// `AttemptingToConnect` per cycle, the repeated address and error of the second failure not
/// reported again, `Disconnected` when the connection dies, and a fresh cycle after it, each
/// at its exact time.
#[tokio::test(start_paused = true)]
async fn a_cycle_of_failures_then_a_connection_then_a_disconnect_reports_the_full_sequence() {
    let maker = Maker::new(
        [Plan::Fail("refused"), Plan::Fail("refused")],
        Plan::Connect,
    );
    let events = Events::new();
    let svc = PersistentConnectionLayer::fixed_address("a")
        .jitter(0.0)
        .on_event(events.hook())
        .close_signal(|c: &Conn| c.closed())
        .layer(maker.clone());
    let handle = svc.handle();
    within_an_hour("connected", handle.connected())
        .await
        .unwrap();
    tokio::time::sleep(secs(30)).await; // t = 50
    maker.conn(0).kill();
    tokio::time::sleep(secs(10)).await; // t = 60
    assert_eq!(
        events.timed(),
        timed(&[
            (0, "Attempting"),
            (0, "Address(a)"),
            (0, "Failed(connect failed: refused)"),
            // t = 10: same address, same error: nothing reported.
            (20, "Connected(0)"),
            (50, "Disconnected"),
            (50, "Attempting"),
            (50, "Address(a)"),
            (50, "Connected(1)"),
        ])
    );
    assert_eq!(
        maker.attempt_times(),
        vec![secs(0), secs(10), secs(20), secs(50)]
    );
}

/// Within a cycle, an address equal to the previous one and an error with the same text as
/// the previous one are not reported again; a different error or address is; and going back
/// to an earlier address (or error) after a different one is reported, since it differs from
/// the previous one.
#[tokio::test(start_paused = true)]
async fn within_a_cycle_only_changes_of_address_or_error_are_reported() {
    let calls = Arc::new(AtomicUsize::new(0));
    let maker = Maker::new(
        [
            Plan::Fail("e1"), // a
            Plan::Fail("e1"), // a: same address, same error
            Plan::Fail("e2"), // a: same address, new error
            Plan::Fail("e2"), // b: new address, same error
            Plan::Fail("e1"), // a: back to a, back to e1
        ],
        Plan::Connect, // a
    );
    let events = Events::new();
    let svc =
        PersistentConnectionLayer::new(addresses(&["a", "a", "a", "b", "a", "a"], calls.clone()))
            .jitter(0.0)
            .on_event(events.hook())
            .layer(maker.clone());
    within_an_hour("connected", svc.handle().connected())
        .await
        .unwrap();
    assert_eq!(maker.attempts(), 6);
    assert_eq!(
        events.timed(),
        timed(&[
            (0, "Attempting"),
            (0, "Address(a)"),
            (0, "Failed(connect failed: e1)"),
            (20, "Failed(connect failed: e2)"),
            (30, "Address(b)"),
            (40, "Address(a)"),
            (40, "Failed(connect failed: e1)"),
            (50, "Connected(0)"),
        ])
    );
}

/// After `Disconnected` a new cycle starts afresh: the same address and the same error as in
/// the previous cycle are reported again.
#[tokio::test(start_paused = true)]
async fn a_new_cycle_reports_the_same_address_and_error_again() {
    let maker = Maker::new(
        [
            Plan::Fail("refused"),
            Plan::Connect,
            Plan::Fail("refused"),
            Plan::Connect,
        ],
        Plan::Hang,
    );
    let events = Events::new();
    let svc = PersistentConnectionLayer::fixed_address("a")
        .jitter(0.0)
        .on_event(events.hook())
        .close_signal(|c: &Conn| c.closed())
        .layer(maker.clone());
    within_an_hour("connected", svc.handle().connected())
        .await
        .unwrap();
    tokio::time::sleep(secs(90)).await; // t = 100
    maker.conn(0).kill();
    tokio::time::sleep(secs(20)).await; // t = 120
    assert_eq!(maker.connections(), 2);
    assert_eq!(
        events.timed(),
        timed(&[
            (0, "Attempting"),
            (0, "Address(a)"),
            (0, "Failed(connect failed: refused)"),
            (10, "Connected(0)"),
            (100, "Disconnected"),
            (100, "Attempting"),
            (100, "Address(a)"),
            (100, "Failed(connect failed: refused)"),
            (110, "Connected(1)"),
        ])
    );
}

/// A failing `get_address` is a failed attempt of kind `Discovery` (no address reported, the
/// maker not called), and the next attempt follows after the delay.
#[tokio::test(start_paused = true)]
async fn a_failure_of_get_address_is_a_failed_attempt_of_kind_discovery() {
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let maker = Maker::always_connect();
    let recorder = Events::new();
    let svc = PersistentConnectionLayer::new(move || {
        let n = counter.fetch_add(1, Ordering::SeqCst);
        std::future::ready(if n == 0 {
            Err(std::io::Error::other("catalog unreachable"))
        } else {
            Ok("a")
        })
    })
    .jitter(0.0)
    .on_event(recorder.hook())
    .layer(maker.clone());
    within_an_hour("connected", svc.handle().connected())
        .await
        .unwrap();
    assert_eq!(
        recorder.kinds(),
        vec![(secs(0), ConnectErrorKind::Discovery)]
    );
    assert_eq!(
        recorder.timed(),
        timed(&[
            (0, "Attempting"),
            (0, "Failed(address discovery failed: catalog unreachable)"),
            (10, "Address(a)"),
            (10, "Connected(0)"),
        ])
    );
    assert_eq!(maker.attempt_times(), vec![secs(10)]);
}

/// An error from the maker's response future is a failed attempt of kind `Connect`.
#[tokio::test(start_paused = true)]
async fn a_maker_error_is_a_failed_attempt_of_kind_connect() {
    let maker = Maker::new([Plan::Fail("refused")], Plan::Connect);
    let recorder = Events::new();
    let svc = PersistentConnectionLayer::fixed_address("a")
        .jitter(0.0)
        .on_event(recorder.hook())
        .layer(maker.clone());
    within_an_hour("connected", svc.handle().connected())
        .await
        .unwrap();
    assert_eq!(recorder.kinds(), vec![(secs(0), ConnectErrorKind::Connect)]);
    assert!(
        recorder
            .names()
            .contains(&"Failed(connect failed: refused)".to_string())
    );
}

/// A maker whose `poll_ready` fails a given number of times before delegating to a [`Maker`].
#[derive(Clone)]
struct NotReadyMaker {
    inner: Maker,
    failures_left: Arc<AtomicUsize>,
}

impl Service<Addr> for NotReadyMaker {
    type Response = Conn;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Conn, std::io::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        let left = self.failures_left.load(Ordering::SeqCst);
        if left > 0 {
            self.failures_left.store(left - 1, Ordering::SeqCst);
            return Poll::Ready(Err(std::io::Error::other("maker not ready")));
        }
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, addr: Addr) -> Self::Future {
        self.inner.call(addr)
    }
}

/// An error from the maker's `poll_ready` is a failed attempt (kind `Connect`): the maker is
/// not called, and the next attempt follows after the delay.
#[tokio::test(start_paused = true)]
async fn a_maker_poll_ready_error_is_a_failed_attempt() {
    let inner = Maker::always_connect();
    let maker = NotReadyMaker {
        inner: inner.clone(),
        failures_left: Arc::new(AtomicUsize::new(1)),
    };
    let recorder = Events::new();
    let svc = PersistentConnectionLayer::fixed_address("a")
        .jitter(0.0)
        .on_event(recorder.hook())
        .layer(maker);
    within_an_hour("connected", svc.handle().connected())
        .await
        .unwrap();
    assert_eq!(recorder.kinds(), vec![(secs(0), ConnectErrorKind::Connect)]);
    assert_eq!(
        recorder.timed(),
        timed(&[
            (0, "Attempting"),
            (0, "Address(a)"),
            (0, "Failed(connect failed: maker not ready)"),
            (10, "Connected(0)"),
        ])
    );
    assert_eq!(inner.attempt_times(), vec![secs(10)]);
}

/// A panic inside the future `get_address` returns is a failed attempt of kind `Panic`; the
/// driver lives on and the next attempt connects.
#[tokio::test(start_paused = true)]
async fn a_panic_in_the_get_address_future_is_a_failed_attempt_of_kind_panic() {
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let maker = Maker::always_connect();
    let recorder = Events::new();
    let svc = PersistentConnectionLayer::new(move || {
        let n = counter.fetch_add(1, Ordering::SeqCst);
        async move {
            if n == 0 {
                panic!("lookup exploded");
            }
            Ok::<_, Infallible>("a")
        }
    })
    .jitter(0.0)
    .on_event(recorder.hook())
    .layer(maker.clone());
    let conn = within_an_hour("connected", svc.handle().connected())
        .await
        .unwrap();
    assert_eq!(conn.id(), 0);
    assert_eq!(recorder.kinds(), vec![(secs(0), ConnectErrorKind::Panic)]);
    assert!(
        recorder
            .names()
            .contains(&"Failed(connect attempt panicked: lookup exploded)".to_string())
    );
    assert_eq!(maker.attempt_times(), vec![secs(10)]);
    assert!(!svc.handle().is_closed());
}

/// A panic in the `get_address` closure itself (before it returns its future) is a failed
/// attempt of kind `Panic`, like a panic inside the future; the driver lives on.
#[tokio::test(start_paused = true)]
async fn a_panic_in_the_get_address_closure_is_a_failed_attempt_of_kind_panic() {
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let maker = Maker::always_connect();
    let recorder = Events::new();
    let svc = PersistentConnectionLayer::new(move || {
        if counter.fetch_add(1, Ordering::SeqCst) == 0 {
            panic!("lookup exploded");
        }
        std::future::ready(Ok::<_, Infallible>("a"))
    })
    .jitter(0.0)
    .on_event(recorder.hook())
    .layer(maker.clone());
    let conn = within_an_hour("connected", svc.handle().connected()).await;
    assert!(conn.is_ok(), "the driver died");
    assert_eq!(recorder.kinds(), vec![(secs(0), ConnectErrorKind::Panic)]);
    assert_eq!(maker.attempt_times(), vec![secs(10)]);
}

/// A panic in the maker's future is a failed attempt of kind `Panic`; the driver lives on and
/// the next attempt connects.
#[tokio::test(start_paused = true)]
async fn a_panic_in_the_maker_is_a_failed_attempt_of_kind_panic() {
    let maker = Maker::new([Plan::Panic], Plan::Connect);
    let recorder = Events::new();
    let svc = PersistentConnectionLayer::fixed_address("a")
        .jitter(0.0)
        .on_event(recorder.hook())
        .layer(maker.clone());
    let conn = within_an_hour("connected", svc.handle().connected())
        .await
        .unwrap();
    assert_eq!(conn.id(), 0);
    assert_eq!(recorder.kinds(), vec![(secs(0), ConnectErrorKind::Panic)]);
    assert!(
        recorder
            .names()
            .contains(&"Failed(connect attempt panicked: maker exploded)".to_string())
    );
    assert_eq!(maker.attempt_times(), vec![secs(0), secs(10)]);
}

/// A connect that never finishes fails at exactly the default connect timeout, 20 s, with
/// kind `Timeout`; the maker's future is dropped then.
#[tokio::test(start_paused = true)]
async fn a_hanging_connect_fails_at_the_default_timeout_of_20_seconds() {
    let maker = Maker::new([Plan::Hang], Plan::Connect);
    let recorder = Events::new();
    let svc = PersistentConnectionLayer::fixed_address("a")
        .jitter(0.0)
        .on_event(recorder.hook())
        .layer(maker.clone());
    tokio::time::sleep(secs(19)).await;
    assert!(recorder.kinds().is_empty());
    assert_eq!(maker.in_flight.load(Ordering::SeqCst), 1);
    within_an_hour("connected", svc.handle().connected())
        .await
        .unwrap();
    assert_eq!(
        recorder.kinds(),
        vec![(secs(20), ConnectErrorKind::Timeout)]
    );
    assert!(
        recorder
            .names()
            .contains(&"Failed(connect attempt timed out after 20s while connecting)".to_string())
    );
    // The timer was armed before the attempt: the next one is at 20 s too.
    assert_eq!(maker.attempt_times(), vec![secs(0), secs(20)]);
    assert_eq!(maker.in_flight.load(Ordering::SeqCst), 0);
}

/// The connect timeout bounds discovery plus connect: with a 5 s timeout, a discovery of 3 s
/// followed by a connect of 3 s fails at t = 5 s, although each alone is shorter.
#[tokio::test(start_paused = true)]
async fn the_connect_timeout_counts_discovery_time() {
    let maker = Maker::new([], Plan::ConnectAfter(secs(3)));
    let recorder = Events::new();
    let _svc = PersistentConnectionLayer::new(|| async {
        tokio::time::sleep(secs(3)).await;
        Ok::<_, Infallible>("a")
    })
    .jitter(0.0)
    .connect_timeout(secs(5))
    .on_event(recorder.hook())
    .layer(maker.clone());
    tokio::time::sleep(secs(9)).await;
    assert_eq!(recorder.kinds(), vec![(secs(5), ConnectErrorKind::Timeout)]);
    assert_eq!(
        recorder.timed(),
        timed(&[
            (0, "Attempting"),
            (3, "Address(a)"),
            (
                5,
                "Failed(connect attempt timed out after 5s while connecting)"
            ),
        ])
    );
    assert_eq!(maker.attempt_times(), vec![secs(3)]);
    assert_eq!(maker.connections(), 0);
}

/// A panic in `on_event` is caught: every later event is still delivered and the connection
/// still comes up.
#[tokio::test(start_paused = true)]
async fn a_panic_in_on_event_is_caught_and_the_driver_goes_on() {
    let maker = Maker::new([Plan::Fail("refused")], Plan::Connect);
    let events = Events::new();
    let record = events.hook();
    let mut svc = PersistentConnectionLayer::fixed_address("a")
        .jitter(0.0)
        .on_event(move |event: &Event<Addr, Conn>| {
            record(event);
            panic!("hook exploded on {}", event.name());
        })
        .layer(maker.clone());
    let reply = svc
        .ready()
        .await
        .unwrap()
        .call("x".to_string())
        .await
        .unwrap();
    assert_eq!(reply, "0:x");
    assert_eq!(
        events.timed(),
        timed(&[
            (0, "Attempting"),
            (0, "Address(a)"),
            (0, "Failed(connect failed: refused)"),
            (10, "Connected(0)"),
        ])
    );
}
