//! Observability: `Handle::state_changes` and `Handle::state`, the `EventBus` and its
//! subscribers (replay of the state, lag, end), and the `OnEvent::on_state` hook.

mod support;

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use futures_util::{FutureExt as _, Stream, StreamExt as _};
use persistent_connection::{
    Event, Handle, PersistentConnectionLayer, State,
    close::CloseSignal,
    observe::{EventBus, OnEvent, Subscription, Update},
};
use support::{Addr, Conn, Events, Maker, Plan, let_tasks_run, secs, yield_until};
use tokio::time::{Instant, sleep_until, timeout};
use tower::Layer;

/// The bound, in paused (virtual) time, on every wait: a test that reaches it fails.
const GUARD: Duration = Duration::from_secs(1000);

// === Helpers ===

/// A state as text, with the next attempt's time relative to `t0`: `"Waiting(+10s)"`.
fn show_state(state: State, t0: Instant) -> String {
    match state {
        State::Connecting => "Connecting".to_owned(),
        State::Waiting { next_attempt, .. } => {
            format!("Waiting(+{}s)", (next_attempt - t0).as_secs_f64())
        }
        State::Connected => "Connected".to_owned(),
        State::Closed => "Closed".to_owned(),
        other => format!("{other:?}"),
    }
}

/// An event as text, as the support's `Events` recorder writes it.
fn show_event(event: &Event<Addr, Conn>) -> String {
    match event {
        Event::AttemptingToConnect => "Attempting".to_owned(),
        Event::ObtainedAddress(address) => format!("Address({address})"),
        Event::FailedToConnect(error) => format!("Failed({error})"),
        Event::Connected(conn) => format!("Connected({})", conn.id()),
        Event::Disconnected => "Disconnected".to_owned(),
        other => format!("{other:?}"),
    }
}

/// A bus update as text: `"State(Connected)"`, `"Event(Connected(0))"`, `"Lagged(3)"`.
fn show_update(update: &Update<Addr, Conn>, t0: Instant) -> String {
    match update {
        Update::State(state) => format!("State({})", show_state(*state, t0)),
        Update::Event(event) => format!("Event({})", show_event(event)),
        Update::Lagged(missed) => format!("Lagged({missed})"),
        _ => "unknown update".to_owned(),
    }
}

/// The subscription's next update, within [`GUARD`] of paused time (a missing update fails
/// the test instead of hanging it).
async fn next_update(subscription: &mut Subscription<Addr, Conn>) -> Option<Update<Addr, Conn>> {
    timeout(GUARD, subscription.recv())
        .await
        .expect("no update within the guard time")
}

/// Every update the subscription has ready now, as text (the updates themselves are dropped).
/// Panics if the subscription has ended.
fn drain(subscription: &mut Subscription<Addr, Conn>, t0: Instant) -> Vec<String> {
    let mut updates = Vec::new();
    while let Some(update) = subscription.recv().now_or_never() {
        let update = update.expect("the bus is gone");
        updates.push(show_update(&update, t0));
    }
    updates
}

/// The next state of the stream with the time it arrived (seconds since `t0`), bounded by
/// [`GUARD`]; `None` if the stream ended.
async fn next_state(
    states: &mut (impl Stream<Item = State> + Unpin),
    t0: Instant,
) -> Option<(u64, String)> {
    let state = timeout(GUARD, states.next())
        .await
        .expect("no state change within the guard")?;
    Some((t0.elapsed().as_secs(), show_state(state, t0)))
}

/// Like [`next_state`], and checks that `Handle::state()` agrees with the item.
async fn next_checked(
    states: &mut (impl Stream<Item = State> + Unpin),
    handle: &Handle<Conn>,
    t0: Instant,
) -> (u64, String) {
    let (at, state) = next_state(states, t0).await.expect("the stream ended");
    assert_eq!(
        show_state(handle.state(), t0),
        state,
        "Handle::state() disagrees with the stream at {at} s"
    );
    (at, state)
}

/// An `OnEvent` hook that ignores events and records every `on_state` call with its time;
/// it panics after recording if `panics` is set.
#[derive(Clone)]
struct StateLog {
    log: Arc<Mutex<Vec<(u64, String)>>>,
    t0: Instant,
    panics: bool,
}

impl StateLog {
    fn new(panics: bool) -> Self {
        Self {
            log: Arc::new(Mutex::new(Vec::new())),
            t0: Instant::now(),
            panics,
        }
    }

    fn calls(&self) -> Vec<(u64, String)> {
        self.log.lock().unwrap().clone()
    }
}

impl OnEvent<Addr, Conn> for StateLog {
    fn on_event(&self, _: &Event<Addr, Conn>) {}

    fn on_state(&self, state: State) {
        let entry = (self.t0.elapsed().as_secs(), show_state(state, self.t0));
        self.log.lock().unwrap().push(entry);
        if self.panics {
            panic!("on_state exploded");
        }
    }
}

/// Strings from string literals, for comparisons.
fn strings(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

// === state_changes and state ===

/// `state_changes` yields the current state, then each change at the time it happens:
/// `Waiting` carries the exact instant of the next attempt (after a failure, and after a
/// short-lived connection was killed), `Connecting` and `Connected` follow, and after
/// `close()` the stream yields `Closed` and ends. At every step `Handle::state()` is the
/// The layer most tests use: address "a", a 10 s retry delay without jitter, and the
/// connections' close signal.
fn layer() -> PersistentConnectionLayer<Addr, (), impl CloseSignal<Conn> + Clone> {
    PersistentConnectionLayer::fixed_address("a")
        .jitter(0.0)
        .retry_delay(|| secs(10))
        .close_signal(|conn: &Conn| conn.closed())
}

/// stream's latest item.
#[tokio::test(start_paused = true)]
async fn state_changes_report_every_step_with_the_next_attempt_time() {
    let maker = Maker::new(
        [
            Plan::Fail("refused"),
            Plan::ConnectAfter(secs(1)),
            Plan::ConnectAfter(secs(1)),
        ],
        Plan::Hang,
    );
    let t0 = Instant::now();
    let svc = layer().layer(maker.clone());
    let handle = svc.handle();
    let mut states = handle.state_changes();

    let mut seen = Vec::new();
    // Attempt at 0 s fails; the attempt at 10 s takes 1 s.
    for _ in 0..4 {
        seen.push(next_checked(&mut states, &handle, t0).await);
    }
    // The connection made at 10 s (timer armed then, for 20 s) dies at 15 s: wait until 20 s.
    sleep_until(t0 + secs(15)).await;
    maker.conn(0).kill();
    for _ in 0..3 {
        seen.push(next_checked(&mut states, &handle, t0).await);
    }
    assert_eq!(
        seen,
        [
            (0, "Connecting"),
            (0, "Waiting(+10s)"),
            (10, "Connecting"),
            (11, "Connected"),
            (15, "Waiting(+20s)"),
            (20, "Connecting"),
            (21, "Connected"),
        ]
        .map(|(at, state)| (at, state.to_owned()))
    );

    let closing = handle.close();
    assert_eq!(
        handle.state(),
        State::Closed,
        "Closed as soon as close() is called"
    );
    timeout(GUARD, closing).await.expect("close did not finish");
    assert_eq!(
        next_state(&mut states, t0).await,
        Some((21, "Closed".to_owned()))
    );
    assert_eq!(next_state(&mut states, t0).await, None, "the stream ended");
}

/// `state()` turns `Closed` the moment `close()` is called, before its future is polled,
/// here while waiting for the next attempt; the stream's next item is `Closed`.
#[tokio::test(start_paused = true)]
async fn state_is_closed_right_after_close_is_called() {
    let maker = Maker::new([], Plan::Fail("refused"));
    let t0 = Instant::now();
    let svc = PersistentConnectionLayer::fixed_address("a")
        .jitter(0.0)
        .retry_delay(|| secs(10))
        .layer(maker.clone());
    let handle = svc.handle();
    let mut states = handle.state_changes();
    assert_eq!(
        next_state(&mut states, t0).await,
        Some((0, "Connecting".to_owned()))
    );
    assert_eq!(
        next_state(&mut states, t0).await,
        Some((0, "Waiting(+10s)".to_owned()))
    );
    assert!(matches!(handle.state(), State::Waiting { .. }));

    let closing = handle.close();
    assert_eq!(handle.state(), State::Closed);
    assert_eq!(
        next_state(&mut states, t0).await,
        Some((0, "Closed".to_owned()))
    );
    timeout(GUARD, closing).await.expect("close did not finish");
    assert_eq!(next_state(&mut states, t0).await, None);
    assert_eq!(maker.attempts(), 1, "no attempt after close");
}

/// The stream does not keep the persistent connection alive: with every service clone and
/// handle dropped and only the stream held, the driver stops (the connection is dropped and
/// no attempt follows), and the stream yields `Closed`, then ends.
#[tokio::test(start_paused = true)]
async fn state_changes_end_when_every_service_clone_and_handle_is_dropped() {
    let maker = Maker::always_connect();
    let t0 = Instant::now();
    let svc = PersistentConnectionLayer::fixed_address("a")
        .close_signal(|conn: &Conn| conn.closed())
        .layer(maker.clone());
    let handle = svc.handle();
    drop(handle.connected().await.unwrap());
    let mut states = handle.state_changes();
    assert_eq!(maker.live.load(std::sync::atomic::Ordering::SeqCst), 1);

    drop(handle);
    drop(svc);
    assert_eq!(
        next_state(&mut states, t0).await,
        Some((0, "Connected".to_owned()))
    );
    assert_eq!(
        next_state(&mut states, t0).await,
        Some((0, "Closed".to_owned()))
    );
    assert_eq!(next_state(&mut states, t0).await, None);
    yield_until("the connection is dropped", || {
        maker.live.load(std::sync::atomic::Ordering::SeqCst) == 0
    })
    .await;
    assert_eq!(
        maker.live.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "the connection was dropped"
    );
    tokio::time::sleep(secs(3600)).await;
    assert_eq!(maker.attempts(), 1, "no attempt after the driver stopped");
}

// === EventBus ===

/// A subscriber from before the layer was applied receives the initial state and every
/// update in the order the driver produces them (the state turns `Connected` just before the
/// `Connected` event); a subscriber that comes after `Connected` first receives
/// `State(Connected)` and no replayed `Connected` event; then both receive the same updates.
#[tokio::test(start_paused = true)]
async fn early_and_late_subscribers_see_the_state_then_the_same_updates() {
    let bus = EventBus::<Addr, Conn>::new();
    let mut early = bus.subscribe();
    let maker = Maker::always_connect();
    let t0 = Instant::now();
    let svc = layer().on_event(bus.clone()).layer(maker.clone());
    drop(svc.handle().connected().await.unwrap());
    let mut late = bus.subscribe();

    assert_eq!(
        drain(&mut early, t0),
        strings(&[
            "State(Connecting)",
            "Event(Attempting)",
            "Event(Address(a))",
            "State(Connected)",
            "Event(Connected(0))",
        ])
    );
    assert_eq!(drain(&mut late, t0), strings(&["State(Connected)"]));

    // Killed at 5 s, younger than the 10 s delay: the next attempt is at 10 s.
    sleep_until(t0 + secs(5)).await;
    maker.conn(0).kill();
    sleep_until(t0 + secs(10)).await;
    yield_until("connection 1 reported", || {
        maker.connections() >= 2 && bus.state() == State::Connected
    })
    .await;
    let after = strings(&[
        "Event(Disconnected)",
        "State(Waiting(+10s))",
        "State(Connecting)",
        "Event(Attempting)",
        "Event(Address(a))",
        "State(Connected)",
        "Event(Connected(1))",
    ]);
    assert_eq!(drain(&mut early, t0), after);
    assert_eq!(drain(&mut late, t0), after);
    assert_eq!(bus.subscribers(), 2);
    assert_eq!(bus.state(), State::Connected);
}

/// A late subscriber's first update is the state and holds no connection; and while it does
/// not read, the connection that was up when it subscribed is still dropped once killed
/// (nothing it has queued refers to it).
#[tokio::test(start_paused = true)]
async fn a_late_subscriber_does_not_keep_a_dead_connection_alive() {
    let bus = EventBus::<Addr, Conn>::new();
    let maker = Maker::always_connect();
    let svc = layer().on_event(bus.clone()).layer(maker.clone());
    let handle = svc.handle();
    let conn = handle.connected().await.unwrap();
    let copies = conn.copies();

    let mut late = bus.subscribe();
    let first = next_update(&mut late).await;
    assert!(
        matches!(first, Some(Update::State(State::Connected))),
        "the first update is the state"
    );
    assert_eq!(conn.copies(), copies, "subscribing made no copy");
    drop(first);

    conn.kill();
    drop(conn);
    tokio::time::sleep(secs(10)).await;
    yield_until("connection 1 is current", || {
        handle.current_connection().is_some_and(|c| c.id() == 1)
    })
    .await;
    assert_eq!(handle.current_connection().map(|c| c.id()), Some(1));
    assert_eq!(
        maker.live.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "only the new connection is alive"
    );
    // The subscriber has the updates since it subscribed queued, unread.
    assert_eq!(drain(&mut late, Instant::now()).len(), 7);
    assert!(
        std::panic::catch_unwind(|| maker.conn(0)).is_err(),
        "the killed connection was dropped"
    );
}

/// Updates queued for a subscriber that does not read hold their `Connected(conn)` event
/// (documented); once it has read them, no copy of the dead connection is left.
#[tokio::test(start_paused = true)]
async fn a_subscriber_that_reads_its_backlog_releases_the_connections_in_it() {
    let bus = EventBus::<Addr, Conn>::new();
    let mut early = bus.subscribe();
    let maker = Maker::always_connect();
    let t0 = Instant::now();
    let svc = layer().on_event(bus.clone()).layer(maker.clone());
    let handle = svc.handle();
    handle.connected().await.unwrap().kill();
    tokio::time::sleep(secs(10)).await;
    yield_until("connection 1 is current", || {
        handle.current_connection().is_some_and(|c| c.id() == 1)
    })
    .await;
    assert_eq!(handle.current_connection().map(|c| c.id()), Some(1));
    assert_eq!(
        maker.live.load(std::sync::atomic::Ordering::SeqCst),
        2,
        "the unread Connected(0) event keeps the dead connection"
    );

    let updates = drain(&mut early, t0);
    assert!(updates.contains(&"Event(Connected(0))".to_owned()));
    assert_eq!(
        maker.live.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "read, the backlog holds no copy"
    );
    assert!(std::panic::catch_unwind(|| maker.conn(0)).is_err());
}

/// A subscriber of a bus of capacity 4 that does not read during 22 updates is told
/// `Lagged(n)` with `n > 0`, then the current state, then only updates newer than that (the
/// stale backlog is dropped).
#[tokio::test(start_paused = true)]
async fn a_lagging_subscriber_is_told_then_resumes_from_the_current_state() {
    let bus = EventBus::<Addr, Conn>::with_capacity(4);
    let mut subscription = bus.subscribe();
    assert!(matches!(
        next_update(&mut subscription).await,
        Some(Update::State(State::Connecting))
    ));
    let maker = Maker::new([], Plan::Fail("refused"));
    let t0 = Instant::now();
    let svc = PersistentConnectionLayer::fixed_address("a")
        .jitter(0.0)
        .retry_delay(|| secs(1))
        .on_event(bus.clone())
        .layer(maker.clone());
    let handle = svc.handle();
    // Attempts at 0..=9 s: 4 updates for the first (Attempting, Address, Failed, Waiting),
    // 2 for each later one (Connecting, Waiting; the same failure is not reported again).
    sleep_until(t0 + secs(9)).await;
    yield_until("ten attempts", || maker.attempts() >= 10).await;
    assert_eq!(maker.attempts(), 10);

    let lagged = next_update(&mut subscription).await;
    let Some(Update::Lagged(missed)) = &lagged else {
        panic!(
            "expected Lagged, got {:?}",
            lagged.as_ref().map(|u| show_update(u, t0))
        );
    };
    assert!(
        (1..=22).contains(missed),
        "missed {missed} of the 22 updates"
    );
    let current = next_update(&mut subscription)
        .await
        .map(|u| show_update(&u, t0));
    assert_eq!(current.as_deref(), Some("State(Waiting(+10s))"));
    assert_eq!(bus.state(), handle.state());
    assert_eq!(
        drain(&mut subscription, t0),
        Vec::<String>::new(),
        "no stale update"
    );

    sleep_until(t0 + secs(10)).await;
    yield_until("the attempt at 10 s failed", || {
        maker.attempts() >= 11 && matches!(bus.state(), State::Waiting { .. })
    })
    .await;
    assert_eq!(
        drain(&mut subscription, t0),
        strings(&["State(Connecting)", "State(Waiting(+11s))"])
    );
}

/// `recv` returns `None` once every clone of the bus is gone: not while the layer still holds
/// one (even after its driver stopped), and at once when the layer is dropped too.
#[tokio::test(start_paused = true)]
async fn recv_returns_none_once_every_clone_of_the_bus_is_gone() {
    let bus = EventBus::<Addr, Conn>::new();
    let mut subscription = bus.subscribe();
    let layer = PersistentConnectionLayer::fixed_address("a").on_event(bus.clone());
    drop(bus);
    let svc = layer.layer(Maker::always_connect());
    let handle = svc.handle();
    drop(handle.connected().await.unwrap());
    drop(svc);
    drop(handle);
    yield_until("the driver task ended", || {
        tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks()
            == 0
    })
    .await;

    let t0 = Instant::now();
    let updates = drain(&mut subscription, t0);
    assert_eq!(
        updates.last().map(String::as_str),
        Some("State(Closed)"),
        "{updates:?}"
    );
    assert!(
        subscription.recv().now_or_never().is_none(),
        "the layer still holds a clone of the bus: no end yet"
    );

    drop(layer);
    let end = next_update(&mut subscription).await;
    assert!(end.is_none());
}

// === on_state and pairs of hooks ===

/// A custom hook's `on_state` hears the starting state (`Connecting`), then each change of
/// state once, in order, at the time it happens, and `Closed` once, last.
#[tokio::test(start_paused = true)]
async fn on_state_hears_each_change_once_and_closed_last() {
    let log = StateLog::new(false);
    let maker = Maker::new([Plan::Fail("refused")], Plan::Connect);
    let svc = layer().on_event(log.clone()).layer(maker.clone());
    let handle = svc.handle();
    sleep_until(log.t0 + secs(15)).await;
    maker.conn(0).kill();
    sleep_until(log.t0 + secs(30)).await;
    timeout(GUARD, handle.close())
        .await
        .expect("close did not finish");
    tokio::time::sleep(secs(100)).await;

    assert_eq!(
        log.calls(),
        [
            (0, "Connecting"),
            (0, "Waiting(+10s)"),
            (10, "Connecting"),
            (10, "Connected"),
            (15, "Waiting(+20s)"),
            (20, "Connecting"),
            (20, "Connected"),
            (30, "Closed"),
        ]
        .map(|(at, state)| (at, state.to_owned()))
    );
}

/// An `on_state` that panics on every call does not stop the driver: it still hears every
/// change, the events go on (retry, connect, reconnect after a kill), and close completes.
#[tokio::test(start_paused = true)]
async fn a_panicking_on_state_does_not_stop_the_driver() {
    let log = StateLog::new(true);
    let events = Events::new();
    let maker = Maker::new([Plan::Fail("refused")], Plan::Connect);
    let svc = layer()
        .on_event((events.hook(), log.clone()))
        .layer(maker.clone());
    let handle = svc.handle();
    sleep_until(log.t0 + secs(15)).await;
    maker.conn(0).kill();
    yield_until("the death is noticed", || {
        events.count(support::disconnected) >= 1
    })
    .await;
    let conn = timeout(GUARD, handle.connected())
        .await
        .expect("no reconnect")
        .unwrap();
    assert_eq!(conn.id(), 1);
    drop(conn);
    timeout(GUARD, handle.close())
        .await
        .expect("close did not finish");

    assert_eq!(
        events.names(),
        strings(&[
            "Attempting",
            "Address(a)",
            "Failed(connect failed: refused)",
            "Connected(0)",
            "Disconnected",
            "Attempting",
            "Address(a)",
            "Connected(1)",
            "Disconnected",
        ])
    );
    assert_eq!(
        log.calls()
            .into_iter()
            .map(|(_, state)| state)
            .collect::<Vec<_>>(),
        strings(&[
            "Connecting",
            "Waiting(+10s)",
            "Connecting",
            "Connected",
            "Waiting(+20s)",
            "Connecting",
            "Connected",
            "Closed",
        ])
    );
}

/// A pair of hooks `(bus, closure)` delivers every event to both, and the states to the bus.
#[tokio::test(start_paused = true)]
async fn a_pair_of_hooks_delivers_to_both() {
    let bus = EventBus::<Addr, Conn>::new();
    let mut subscription = bus.subscribe();
    let events = Events::new();
    let maker = Maker::always_connect();
    let t0 = Instant::now();
    let svc = layer()
        .on_event((bus.clone(), events.hook()))
        .layer(maker.clone());
    let handle = svc.handle();
    handle.connected().await.unwrap().kill();
    yield_until("the death is noticed", || {
        handle.current_connection().is_none()
    })
    .await;
    assert!(handle.current_connection().is_none());
    let conn = timeout(GUARD, handle.connected())
        .await
        .expect("no reconnect")
        .unwrap();
    assert_eq!(conn.id(), 1);

    let expected = strings(&support::RECONNECTED_ONCE);
    assert_eq!(events.names(), expected);
    let updates = drain(&mut subscription, t0);
    let bus_events: Vec<String> = updates
        .iter()
        .filter_map(|u| u.strip_prefix("Event(")?.strip_suffix(')'))
        .map(str::to_owned)
        .collect();
    assert_eq!(bus_events, expected);
    let bus_states: Vec<&String> = updates.iter().filter(|u| u.starts_with("State(")).collect();
    assert_eq!(
        bus_states,
        [
            "State(Connecting)",
            "State(Connected)",
            "State(Waiting(+10s))",
            "State(Connecting)",
            "State(Connected)",
        ]
    );
}

/// A hook whose `on_event` and `on_state` always panic.
struct Exploding;

impl OnEvent<Addr, Conn> for Exploding {
    fn on_event(&self, _: &Event<Addr, Conn>) {
        panic!("first hook exploded on an event");
    }

    fn on_state(&self, _: State) {
        panic!("first hook exploded on a state");
    }
}

/// In a pair whose first hook panics, the second still hears every event and every state:
/// the bus behind a panicking hook sees the whole cycle and ends up `Closed`.
#[tokio::test(start_paused = true)]
async fn a_panic_in_the_first_hook_of_a_pair_does_not_starve_the_second() {
    let bus = EventBus::<Addr, Conn>::new();
    let mut subscription = bus.subscribe();
    let t0 = Instant::now();
    let svc = PersistentConnectionLayer::fixed_address("a")
        .on_event((Exploding, bus.clone()))
        .layer(Maker::always_connect());
    let handle = svc.handle();
    drop(handle.connected().await.unwrap());
    timeout(GUARD, handle.close())
        .await
        .expect("close did not finish");

    assert_eq!(
        drain(&mut subscription, t0),
        strings(&[
            "State(Connecting)",
            "Event(Attempting)",
            "Event(Address(a))",
            "State(Connected)",
            "Event(Connected(0))",
            "Event(Disconnected)",
            "State(Closed)",
        ])
    );
    assert_eq!(bus.state(), State::Closed);
}

/// When a connection that outlived the retry delay dies, the next attempt is immediate: the
/// state goes from `Connected` straight to `Connecting`, never through a `Waiting` whose time
/// has already passed; and after a graceful close it is `Connecting` as soon as the
/// connection is gone, not still `Connected`.
#[tokio::test(start_paused = true)]
async fn an_immediate_reconnect_never_reports_a_wait() {
    let log = StateLog::new(false);
    let maker = Maker::always_connect();
    let svc = layer().on_event(log.clone()).layer(maker.clone());
    let handle = svc.handle();
    sleep_until(log.t0 + secs(30)).await;
    maker.conn(0).kill();
    let_tasks_run().await;
    sleep_until(log.t0 + secs(60)).await;
    maker.conn(1).close_gracefully();
    yield_until("the third connection", || maker.connections() >= 3).await;
    assert_eq!(maker.connections(), 3);
    timeout(GUARD, handle.close())
        .await
        .expect("close did not finish");

    assert_eq!(
        log.calls(),
        [
            (0, "Connecting"),
            (0, "Connected"),
            (30, "Connecting"),
            (30, "Connected"),
            (60, "Connecting"),
            (60, "Connected"),
            (60, "Closed"),
        ]
        .map(|(at, state)| (at, state.to_owned()))
    );
}
