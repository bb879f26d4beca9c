//! Closing and the `Handle`: `close()`, `closed()`, `close_after_current()`, dropping every
//! user, a dropped runtime, `connected()`, `current_connection()`,
//! `connected_or_failed_to_connect()` and `state()`.
mod support;

use std::{
    future::{Future, poll_fn},
    sync::atomic::Ordering,
};

use persistent_connection::{
    Closed, ConnectError, ConnectErrorKind, Handle, PersistentConnection,
    PersistentConnectionLayer, State,
};
use support::*;
use tokio::time::Instant;
use tokio_test::{assert_pending, assert_ready, task};
use tower::{Layer, Service, ServiceExt};

/// A service over `maker` to the fixed address `"a"`, with a 10 s retry delay and no jitter,
/// reporting to `events`, that notices `Conn::kill()` through the close signal.
fn service(maker: &Maker, events: &Events) -> PersistentConnection<Conn> {
    PersistentConnectionLayer::fixed_address("a")
        .jitter(0.0)
        .on_event(events.hook())
        .close_signal(|c: &Conn| c.closed())
        .layer(maker.clone())
}

/// Waits until `svc` is ready and sends `req`; fails the test if that takes an hour.
async fn send(
    svc: &mut PersistentConnection<Conn>,
    req: &str,
) -> Result<String, persistent_connection::BoxError> {
    within_an_hour("the request", async {
        ServiceExt::<String>::ready(svc)
            .await?
            .call(req.into())
            .await
    })
    .await
}

/// Polls `svc`'s `poll_ready` once and expects `Err(Closed)`.
fn assert_poll_ready_is_closed(svc: &mut PersistentConnection<Conn>) {
    let mut ready = task::spawn(poll_fn(|cx| Service::<String>::poll_ready(svc, cx)));
    let error = assert_ready!(ready.poll()).expect_err("poll_ready is Ok after close");
    assert!(error.is::<Closed>(), "not Closed: {error:?}");
}

/// `handle.connected()`, resolving to the connection's id (which, unlike `Conn`, prints).
fn connected_id(handle: &Handle<Conn>) -> impl Future<Output = Result<usize, Closed>> + use<> {
    let connected = handle.connected();
    async move { connected.await.map(|conn| conn.id()) }
}

/// `handle.connected_or_failed_to_connect()`, resolving to the connection's id.
fn outcome_id(handle: &Handle<Conn>) -> impl Future<Output = Result<usize, ConnectError>> + use<> {
    let outcome = handle.connected_or_failed_to_connect();
    async move { outcome.await.map(|conn| conn.id()) }
}

/// An hour: "a long while" for paused-time tests.
const HOUR: std::time::Duration = std::time::Duration::from_secs(3600);

/// `close()` cancels an attempt in flight at once: it resolves without the clock moving, the
/// maker's future is dropped by then, and no attempt follows.
#[tokio::test(start_paused = true)]
async fn close_cancels_an_attempt_in_flight_at_once() {
    let maker = Maker::new([], Plan::Hang);
    let events = Events::new();
    let svc = service(&maker, &events);
    let handle = svc.handle();
    yield_until("the attempt is in flight", || {
        maker.in_flight.load(Ordering::SeqCst) == 1
    })
    .await;
    assert_eq!(maker.in_flight.load(Ordering::SeqCst), 1);

    let before = Instant::now();
    within_an_hour("close()", handle.close()).await;
    assert_eq!(Instant::now(), before, "close waited for the attempt");
    assert_eq!(maker.in_flight.load(Ordering::SeqCst), 0);

    tokio::time::sleep(HOUR).await;
    assert_eq!(maker.attempts(), 1);
}

/// `close()` during the wait between failed attempts stops reconnecting.
#[tokio::test(start_paused = true)]
async fn close_stops_reconnecting_during_the_retry_wait() {
    let maker = Maker::new([], Plan::Fail("refused"));
    let events = Events::new();
    let svc = service(&maker, &events);
    let handle = svc.handle();
    tokio::time::sleep(secs(15)).await;
    assert_eq!(maker.attempt_times(), vec![secs(0), secs(10)]);

    within_an_hour("close()", handle.close()).await;
    tokio::time::sleep(HOUR).await;
    assert_eq!(maker.attempts(), 2);
}

/// `close()` drops the shared copy of the connection (the driver keeps none), and each clone
/// drops its own copy at its next `poll_ready`, which returns `Err(Closed)`: then no copy is
/// left.
#[tokio::test(start_paused = true)]
async fn close_drops_the_shared_copy_and_each_clone_drops_its_own_at_poll_ready() {
    let maker = Maker::always_connect();
    let events = Events::new();
    let svc = service(&maker, &events);
    let handle = svc.handle();
    let mut clones = vec![svc.clone(), svc.clone(), svc];
    for clone in &mut clones {
        assert_eq!(send(clone, "x").await.unwrap(), "0:x");
    }
    let conn = maker.conn(0);
    // Ours, the shared state's, and one per clone.
    assert_eq!(conn.copies(), 2 + clones.len());

    within_an_hour("close()", handle.close()).await;
    assert!(handle.current_connection().is_none());
    assert_eq!(conn.copies(), 1 + clones.len(), "the shared copy is gone");

    for clone in &mut clones {
        assert_poll_ready_is_closed(clone);
    }
    assert_eq!(conn.copies(), 1, "only our own copy is left");
    drop(conn);
    assert_eq!(maker.live.load(Ordering::SeqCst), 0);
}

/// `is_closed()` is true as soon as `close()` has been called, before its future is polled;
/// closing goes on even if that future is dropped unpolled.
#[tokio::test(start_paused = true)]
async fn is_closed_is_true_right_after_close_is_called() {
    let maker = Maker::always_connect();
    let events = Events::new();
    let svc = service(&maker, &events);
    let handle = svc.handle();
    let_tasks_run().await;
    assert!(!handle.is_closed());

    let close = handle.close();
    assert!(handle.is_closed());
    drop(close);
    within_an_hour(
        "closed() after the close future was dropped",
        handle.closed(),
    )
    .await;
    assert!(handle.current_connection().is_none());
}

/// Calling `close()` twice: the second future, like the first, waits for the driver to end
/// (it does not resolve early because the state is already closed); both resolve, and so
/// does `closed()`.
#[tokio::test(start_paused = true)]
async fn calling_close_twice_waits_for_the_same_completion() {
    let maker = Maker::always_connect();
    let events = Events::new();
    let svc = service(&maker, &events);
    let handle = svc.handle();
    let_tasks_run().await;

    let mut first = task::spawn(handle.close());
    let mut second = task::spawn(handle.close());
    let mut closed = task::spawn(handle.closed());
    assert_pending!(second.poll(), "the driver has not ended yet");
    assert_pending!(first.poll());
    assert_pending!(closed.poll());

    yield_until("both close() futures and closed() are woken", || {
        second.is_woken() && first.is_woken() && closed.is_woken()
    })
    .await;
    assert!(second.is_woken() && first.is_woken() && closed.is_woken());
    assert_ready!(second.poll());
    assert_ready!(first.poll());
    assert_ready!(closed.poll());
}

/// `connected()` called after close resolves to `Err(Closed)`.
#[tokio::test(start_paused = true)]
async fn connected_after_close_resolves_to_closed() {
    let maker = Maker::always_connect();
    let events = Events::new();
    let svc = service(&maker, &events);
    let handle = svc.handle();
    let_tasks_run().await;

    within_an_hour("close()", handle.close()).await;
    let result = within_an_hour("connected()", handle.connected()).await;
    assert!(matches!(result, Err(Closed { .. })));
}

/// `connected()` waiting during an outage resolves to `Err(Closed)` when `close()` is called
/// meanwhile.
#[tokio::test(start_paused = true)]
async fn connected_waiting_during_an_outage_resolves_to_closed_on_close() {
    let maker = Maker::new([], Plan::Fail("refused"));
    let events = Events::new();
    let svc = service(&maker, &events);
    let handle = svc.handle();
    let_tasks_run().await;

    let mut connected = task::spawn(connected_id(&handle));
    assert_pending!(connected.poll());
    tokio::time::sleep(secs(15)).await;
    assert_pending!(connected.poll());

    let _close = handle.close();
    assert!(connected.is_woken());
    assert!(matches!(
        assert_ready!(connected.poll()),
        Err(Closed { .. })
    ));
}

/// `connected_or_failed_to_connect()` after close is an error of kind `Closed`.
#[tokio::test(start_paused = true)]
async fn connected_or_failed_to_connect_after_close_is_a_closed_error() {
    let maker = Maker::always_connect();
    let events = Events::new();
    let svc = service(&maker, &events);
    let handle = svc.handle();
    let_tasks_run().await;

    within_an_hour("close()", handle.close()).await;
    let result = within_an_hour(
        "connected_or_failed_to_connect()",
        handle.connected_or_failed_to_connect(),
    )
    .await;
    let error = result.err().expect("a connection after close");
    assert_eq!(error.kind(), ConnectErrorKind::Closed);
}

/// If the driver task is dropped without `close()` (its runtime shut down), every waiter gets
/// `Err(Closed)` rather than waiting forever: an earlier `connected()`, a new one, `closed()`,
/// `is_closed()` and the service's `poll_ready`.
#[test]
fn a_dropped_driver_task_closes_the_connection_for_every_waiter() {
    let runtime = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap()
    };
    let first = runtime();
    let (mut svc, handle, mut waiting) = first.block_on(async {
        let maker = Maker::new([], Plan::Fail("refused"));
        let events = Events::new();
        let svc = service(&maker, &events);
        let handle = svc.handle();
        let_tasks_run().await;
        let mut waiting = task::spawn(connected_id(&handle));
        assert_pending!(waiting.poll());
        (svc, handle, waiting)
    });
    assert!(!handle.is_closed());
    drop(first);

    let second = runtime();
    second.block_on(async {
        assert!(waiting.is_woken(), "the waiter was not woken");
        let result = within_an_hour("the earlier connected()", &mut waiting).await;
        assert!(matches!(result, Err(Closed { .. })));
        let result = within_an_hour("a new connected()", handle.connected()).await;
        assert!(matches!(result, Err(Closed { .. })));
        within_an_hour("closed()", handle.closed()).await;
        assert!(handle.is_closed());
        assert_poll_ready_is_closed(&mut svc);
    });
}

/// Once every service clone and handle is dropped while connected, the driver ends and the
/// connection is dropped.
#[tokio::test(start_paused = true)]
async fn dropping_every_user_while_connected_drops_the_connection() {
    let maker = Maker::always_connect();
    let events = Events::new();
    let mut svc = service(&maker, &events);
    let clone = svc.clone();
    let handle = svc.handle();
    assert_eq!(send(&mut svc, "x").await.unwrap(), "0:x");
    assert_eq!(maker.live.load(Ordering::SeqCst), 1);

    drop((svc, clone, handle));
    yield_until("the connection is dropped", || {
        maker.live.load(Ordering::SeqCst) == 0
    })
    .await;
    assert_eq!(maker.live.load(Ordering::SeqCst), 0);
}

/// Once every service clone and handle is dropped during an outage, no attempt follows.
#[tokio::test(start_paused = true)]
async fn dropping_every_user_during_an_outage_stops_the_attempts() {
    let maker = Maker::new([], Plan::Fail("refused"));
    let events = Events::new();
    let svc = service(&maker, &events);
    let clone = svc.clone();
    let handle = svc.handle();
    tokio::time::sleep(secs(15)).await;
    assert_eq!(maker.attempts(), 2);

    drop((svc, clone, handle));
    tokio::time::sleep(5 * HOUR).await;
    assert_eq!(maker.attempts(), 2);
}

/// `close_after_current()` while connected keeps the connection usable; when it ends,
/// `Disconnected` is reported, no reconnect follows, and the persistent connection is closed.
#[tokio::test(start_paused = true)]
async fn close_after_current_closes_when_the_connection_ends() {
    let maker = Maker::always_connect();
    let events = Events::new();
    let mut svc = service(&maker, &events);
    let handle = svc.handle();
    let_tasks_run().await;

    handle.close_after_current();
    let_tasks_run().await;
    assert!(!handle.is_closed());
    assert_eq!(handle.state(), State::Connected);
    assert_eq!(send(&mut svc, "x").await.unwrap(), "0:x");

    maker.conn(0).kill();
    yield_until("Disconnected is recorded", || {
        events.last_is("Disconnected")
    })
    .await;
    assert_eq!(events.names().last().unwrap(), "Disconnected");
    assert!(handle.is_closed());
    within_an_hour("closed()", handle.closed()).await;
    tokio::time::sleep(HOUR).await;
    assert_eq!(maker.attempts(), 1);
    assert_eq!(
        events.names(),
        ["Attempting", "Address(a)", "Connected(0)", "Disconnected"]
    );
}

/// `close_after_current()` while not connected closes at once.
#[tokio::test(start_paused = true)]
async fn close_after_current_during_an_outage_closes_at_once() {
    let maker = Maker::new([], Plan::Fail("refused"));
    let events = Events::new();
    let svc = service(&maker, &events);
    let handle = svc.handle();
    let_tasks_run().await;

    let before = Instant::now();
    handle.close_after_current();
    within_an_hour("closed()", handle.closed()).await;
    assert_eq!(Instant::now(), before, "closing waited");
    assert!(handle.is_closed());
    tokio::time::sleep(HOUR).await;
    assert_eq!(maker.attempts(), 1);
}

/// `connected()` resolves at once with the current connection while connected.
#[tokio::test(start_paused = true)]
async fn connected_resolves_at_once_with_the_current_connection() {
    let maker = Maker::always_connect();
    let events = Events::new();
    let svc = service(&maker, &events);
    let handle = svc.handle();
    yield_until("a connection", || handle.current_connection().is_some()).await;

    let current = handle.current_connection().expect("not connected");
    let mut connected = task::spawn(connected_id(&handle));
    assert_eq!(assert_ready!(connected.poll()), Ok(current.id()));
}

/// `connected()` called during an outage resolves with the next connection, when it arrives.
#[tokio::test(start_paused = true)]
async fn connected_during_an_outage_resolves_with_the_next_connection() {
    let maker = Maker::new([Plan::Connect, Plan::Fail("refused")], Plan::Connect);
    let events = Events::new();
    let svc = service(&maker, &events);
    let handle = svc.handle();
    let_tasks_run().await;
    // Connection 0 dies at once: attempts at 10 s (fails) and 20 s (connects).
    maker.conn(0).kill();
    let_tasks_run().await;

    let mut connected = task::spawn(connected_id(&handle));
    assert_pending!(connected.poll());
    tokio::time::sleep(secs(15)).await;
    assert_pending!(connected.poll());
    tokio::time::sleep(secs(5)).await;
    yield_until("connection 1 is current", || {
        handle.current_connection().map(|c| c.id()) == Some(1)
    })
    .await;
    assert_eq!(assert_ready!(connected.poll()), Ok(1));
}

/// `current_connection()` is `Some` while connected and `None` while down.
#[tokio::test(start_paused = true)]
async fn current_connection_is_some_only_while_connected() {
    let maker = Maker::always_connect();
    let events = Events::new();
    let svc = service(&maker, &events);
    let handle = svc.handle();
    yield_until("connection 0 is current", || {
        handle.current_connection().map(|c| c.id()) == Some(0)
    })
    .await;
    assert_eq!(handle.current_connection().map(|c| c.id()), Some(0));

    maker.conn(0).kill();
    yield_until("no current connection", || {
        handle.current_connection().is_none()
    })
    .await;
    assert!(handle.current_connection().is_none());

    tokio::time::sleep(secs(10)).await;
    yield_until("connection 1 is current", || {
        handle.current_connection().map(|c| c.id()) == Some(1)
    })
    .await;
    assert_eq!(handle.current_connection().map(|c| c.id()), Some(1));
}

/// `connected_or_failed_to_connect()` resolves at once with the current connection while
/// connected.
#[tokio::test(start_paused = true)]
async fn connected_or_failed_to_connect_returns_the_current_connection() {
    let maker = Maker::always_connect();
    let events = Events::new();
    let svc = service(&maker, &events);
    let handle = svc.handle();
    yield_until("a connection", || handle.current_connection().is_some()).await;

    let mut outcome = task::spawn(outcome_id(&handle));
    assert_eq!(assert_ready!(outcome.poll()).unwrap(), 0);
}

/// `connected_or_failed_to_connect()` during an outage resolves with the error of the next
/// attempt to finish (not the one that failed before the call).
#[tokio::test(start_paused = true)]
async fn connected_or_failed_to_connect_returns_the_next_attempts_error() {
    let maker = Maker::new([Plan::Fail("first"), Plan::Fail("second")], Plan::Connect);
    let events = Events::new();
    let svc = service(&maker, &events);
    let handle = svc.handle();
    yield_until("the first attempt has failed", || events.count(failed) == 1).await;
    assert_eq!(maker.attempts(), 1);

    let mut outcome = task::spawn(outcome_id(&handle));
    assert_pending!(outcome.poll());
    tokio::time::sleep(secs(10)).await;
    yield_until("the second attempt has failed", || {
        events.count(failed) == 2
    })
    .await;
    let error = match assert_ready!(outcome.poll()) {
        Ok(id) => panic!("connected to {id}"),
        Err(error) => error,
    };
    assert_eq!(error.to_string(), "connect failed: second");
    assert_eq!(error.kind(), ConnectErrorKind::Connect);
}

/// `connected_or_failed_to_connect()` during an outage resolves with the connection when the
/// next attempt succeeds.
#[tokio::test(start_paused = true)]
async fn connected_or_failed_to_connect_returns_the_next_attempts_connection() {
    let maker = Maker::new([Plan::Fail("first")], Plan::Connect);
    let events = Events::new();
    let svc = service(&maker, &events);
    let handle = svc.handle();
    let_tasks_run().await;

    let mut outcome = task::spawn(outcome_id(&handle));
    assert_pending!(outcome.poll());
    tokio::time::sleep(secs(10)).await;
    yield_until("a connection", || handle.current_connection().is_some()).await;
    assert_eq!(assert_ready!(outcome.poll()).unwrap(), 0);
}

/// `state()` reports `Connecting` while an attempt runs, `Waiting` with the time of the next
/// attempt after a failure, `Connected` while connected, and `Closed` after `close()`.
#[tokio::test(start_paused = true)]
async fn state_reports_each_phase() {
    let start = Instant::now();
    let maker = Maker::new([Plan::FailAfter(secs(5), "slow")], Plan::Connect);
    let events = Events::new();
    let svc = service(&maker, &events);
    let handle = svc.handle();

    tokio::time::sleep(secs(1)).await;
    assert_eq!(handle.state(), State::Connecting);

    tokio::time::sleep(secs(5)).await;
    match handle.state() {
        State::Waiting { next_attempt, .. } => assert_eq!(next_attempt, start + secs(10)),
        other => panic!("expected Waiting, got {other:?}"),
    }

    tokio::time::sleep(secs(5)).await;
    assert_eq!(handle.state(), State::Connected);

    let _close = handle.close();
    assert_eq!(handle.state(), State::Closed);
}

/// Applying the layer outside a Tokio runtime panics with a message that says so.
#[test]
#[should_panic(expected = "must be called from within a Tokio runtime")]
fn applying_the_layer_outside_a_tokio_runtime_panics_with_a_clear_message() {
    let maker = tower::service_fn(|_: &'static str| async {
        Ok::<_, std::convert::Infallible>(tower::service_fn(|req: String| async move {
            Ok::<_, std::convert::Infallible>(req)
        }))
    });
    let _svc = PersistentConnectionLayer::fixed_address("a").layer(maker);
}
