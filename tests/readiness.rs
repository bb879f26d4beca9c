//! Readiness of `PersistentConnection`: `poll_ready` while down, connected, busy and closed;
//! which connection `call` uses; stale failure reports; errors through `Buffer`.
mod support;

use std::{
    convert::Infallible,
    future::{Future, poll_fn},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU8, Ordering},
        mpsc,
    },
    task::{Context, Poll, Waker},
    thread::ThreadId,
    time::Duration,
};

use persistent_connection::{
    BoxError, Closed, Event, PersistentConnection, PersistentConnectionLayer, close::CloseReason,
};
use support::*;
use tokio::{
    sync::{oneshot, watch},
    time::Instant,
};
use tokio_test::{assert_pending, assert_ready, assert_ready_ok, task};
use tower::{Layer, Service, ServiceExt, buffer::Buffer, service_fn};

/// A service over `maker` to the fixed address `"a"`, with a 10 s retry delay and no jitter,
/// reporting to `events`, that notices `Conn::kill()` through the close signal.
fn service(maker: &Maker, events: &Events) -> PersistentConnection<Conn> {
    PersistentConnectionLayer::fixed_address("a")
        .jitter(0.0)
        .on_event(events.hook())
        .close_signal(|c: &Conn| c.closed())
        .layer(maker.clone())
}

/// Like [`service`], but without a close signal: a connection ends only when a clone's
/// `poll_ready` on it fails.
fn service_without_close_signal(maker: &Maker, events: &Events) -> PersistentConnection<Conn> {
    PersistentConnectionLayer::fixed_address("a")
        .jitter(0.0)
        .on_event(events.hook())
        .layer(maker.clone())
}

/// A task that polls `svc`'s `poll_ready` each time it is polled.
fn poll_ready_of(
    svc: &mut PersistentConnection<Conn>,
) -> task::Spawn<impl Future<Output = Result<(), BoxError>> + '_> {
    task::spawn(poll_fn(move |cx| Service::<String>::poll_ready(svc, cx)))
}

/// Waits until `svc` is ready and sends `req`; fails the test if that takes an hour.
async fn send<S>(svc: &mut S, req: &str) -> Result<String, BoxError>
where
    S: Service<String, Response = String, Error = BoxError>,
{
    within_an_hour("the request", async {
        svc.ready().await?.call(req.into()).await
    })
    .await
}

/// While the maker fails, `poll_ready` is `Pending` and has registered the task's waker: the
/// task is woken by the connection that arrives at the next attempt, and is then `Ready`.
#[tokio::test(start_paused = true)]
async fn poll_ready_is_pending_while_down_and_ready_when_the_connection_arrives() {
    let maker = Maker::new([Plan::Fail("refused")], Plan::Connect);
    let events = Events::new();
    let mut svc = service(&maker, &events);
    yield_until("the first attempt has failed", || events.count(failed) == 1).await;
    assert_eq!(maker.attempts(), 1, "the first attempt has failed");

    let mut ready = poll_ready_of(&mut svc);
    assert_pending!(ready.poll());
    tokio::time::sleep(secs(9)).await;
    assert!(
        !ready.is_woken(),
        "nothing changed before the second attempt"
    );
    assert_pending!(ready.poll());

    tokio::time::sleep(secs(1)).await;
    yield_until("a connection", || events.count(connected) == 1).await;
    assert_eq!(maker.connections(), 1, "the attempt at 10 s connected");
    assert!(ready.is_woken(), "the connection wakes the waiting task");
    assert_ready_ok!(ready.poll());
}

/// Every clone that is waiting while down is woken when the connection arrives, and each is
/// then `Ready`.
#[tokio::test(start_paused = true)]
async fn every_waiting_clone_is_woken_when_a_connection_arrives() {
    let maker = Maker::new([Plan::Fail("refused")], Plan::Connect);
    let events = Events::new();
    let svc = service(&maker, &events);
    let_tasks_run().await;

    let mut tasks: Vec<_> = (0..10)
        .map(|_| {
            let mut clone = svc.clone();
            task::spawn(poll_fn(move |cx| {
                Service::<String>::poll_ready(&mut clone, cx)
            }))
        })
        .collect();
    for task in &mut tasks {
        assert_pending!(task.poll());
    }

    tokio::time::sleep(secs(10)).await;
    yield_until("a connection", || events.count(connected) == 1).await;
    assert_eq!(maker.connections(), 1);
    for (i, task) in tasks.iter_mut().enumerate() {
        assert!(task.is_woken(), "clone {i} was not woken");
        assert_ready_ok!(task.poll());
    }
}

/// Fifty tasks, each with its own clone, waiting for the same connection, cause exactly one
/// connect attempt, and every request is answered by that one connection.
#[tokio::test(start_paused = true)]
async fn fifty_tasks_on_fifty_clones_share_one_connect_attempt() {
    let start = Instant::now();
    let maker = Maker::new([Plan::ConnectAfter(secs(1))], Plan::Connect);
    let events = Events::new();
    let svc = service(&maker, &events);

    let tasks: Vec<_> = (0..50)
        .map(|i| {
            let mut clone = svc.clone();
            tokio::spawn(async move { send(&mut clone, &i.to_string()).await })
        })
        .collect();
    for (i, task) in tasks.into_iter().enumerate() {
        let reply = task.await.unwrap().unwrap();
        assert_eq!(reply, format!("0:{i}"));
    }
    assert_eq!(
        start.elapsed(),
        secs(1),
        "the tasks were not woken by the connection"
    );
    assert_eq!(maker.attempts(), 1);
    assert_eq!(maker.conn(0).calls(), 50);
}

/// While connected, `poll_ready` is the connection's own readiness: `Ready(Ok)` when it is
/// ready, `Pending` while it is busy, and the task is woken (and `Ready`) when it is ready
/// again.
#[tokio::test(start_paused = true)]
async fn poll_ready_follows_the_connections_own_readiness_while_connected() {
    let maker = Maker::always_connect();
    let events = Events::new();
    let mut svc = service(&maker, &events);
    yield_until("a connection", || events.count(connected) == 1).await;
    let conn = maker.conn(0);

    let mut ready = poll_ready_of(&mut svc);
    assert_ready_ok!(ready.poll());

    conn.set_busy(true);
    assert_pending!(ready.poll());
    let_tasks_run().await;
    assert!(!ready.is_woken());

    conn.set_busy(false);
    assert!(
        ready.is_woken(),
        "the connection's own waker wakes the task"
    );
    assert_ready_ok!(ready.poll());
    drop(ready);
    assert_eq!(maker.attempts(), 1, "a busy connection is not a dead one");
    assert_eq!(send(&mut svc, "x").await.unwrap(), "0:x");
}

/// During an outage of several failed attempts, `poll_ready` stays `Pending` however often it
/// is polled (a connect error never reaches a request), and the request succeeds once
/// connected.
#[tokio::test(start_paused = true)]
async fn a_connect_failure_never_reaches_poll_ready() {
    let maker = Maker::new(
        [
            Plan::Fail("refused"),
            Plan::Fail("refused"),
            Plan::Fail("unreachable"),
        ],
        Plan::Connect,
    );
    let events = Events::new();
    let mut svc = service(&maker, &events);
    let_tasks_run().await;

    let mut ready = poll_ready_of(&mut svc);
    // Poll every half second through the three failures at 0 s, 10 s and 20 s.
    for _ in 0..59 {
        assert_pending!(ready.poll());
        tokio::time::sleep(ms(500)).await;
        let_tasks_run().await;
    }
    assert_eq!(maker.attempts(), 3);
    assert_eq!(maker.connections(), 0);

    tokio::time::sleep(ms(500)).await;
    yield_until("a connection", || events.count(connected) == 1).await;
    assert_ready_ok!(ready.poll());
    drop(ready);
    assert_eq!(
        Service::<String>::call(&mut svc, "x".into()).await.unwrap(),
        "0:x"
    );
    assert_eq!(
        maker.attempt_times(),
        vec![secs(0), secs(10), secs(20), secs(30)]
    );
}

/// When the connection's own `poll_ready` fails (without any close signal), that connection
/// is finished: `poll_ready` is `Pending` rather than an error, the driver reports
/// `Disconnected`, starts a new cycle, and `poll_ready` becomes `Ready` on the new connection.
#[tokio::test(start_paused = true)]
async fn a_failing_connection_poll_ready_ends_that_connection_and_the_next_becomes_ready() {
    let maker = Maker::always_connect();
    let events = Events::new();
    let mut svc = service_without_close_signal(&maker, &events);
    assert_eq!(send(&mut svc, "x").await.unwrap(), "0:x");
    // Let the connection outlive the retry delay, so the reconnect is immediate.
    tokio::time::sleep(secs(60)).await;

    maker.conn(0).fail();
    let mut ready = poll_ready_of(&mut svc);
    assert_pending!(ready.poll());
    yield_until("a second connection", || events.count(connected) == 2).await;
    assert_eq!(events.names(), support::RECONNECTED_ONCE);
    assert!(ready.is_woken());
    assert_ready_ok!(ready.poll());
    drop(ready);
    assert_eq!(
        Service::<String>::call(&mut svc, "y".into()).await.unwrap(),
        "1:y"
    );
}

/// `call` goes to the connection whose `poll_ready` returned `Ready`, even when a newer one
/// has arrived since; when that connection has died the request fails with its error. The
/// next `poll_ready` moves the clone to the new connection.
#[tokio::test(start_paused = true)]
async fn call_goes_to_the_connection_polled_ready_even_after_a_reconnect() {
    let maker = Maker::always_connect();
    let events = Events::new();
    let mut svc = service(&maker, &events);
    tokio::time::sleep(secs(60)).await;
    let conn0 = maker.conn(0);

    assert_ready_ok!(poll_ready_of(&mut svc).poll());
    conn0.kill();
    yield_until("connection 1 is current", || {
        svc.handle().current_connection().map(|c| c.id()) == Some(1)
    })
    .await;
    let conn1 = maker.conn(1);
    assert_eq!(svc.handle().current_connection().map(|c| c.id()), Some(1));

    let result = within_an_hour(
        "the request on the dead connection",
        Service::<String>::call(&mut svc, "x".into()),
    )
    .await;
    let error = result.expect_err("the request went to a live connection");
    assert_eq!(error.to_string(), "connection 0 is dead");
    assert_eq!(conn0.calls(), 1);
    assert_eq!(conn1.calls(), 0);

    assert_eq!(send(&mut svc, "y").await.unwrap(), "1:y");
    assert_eq!(conn0.calls(), 1);
    assert_eq!(conn1.calls(), 1);
}

// === A stale failure report ===

/// [`Racer`] stages: serving normally.
const SERVING: u8 = 0;
/// Its next `poll_ready` is `Pending` (busy, registering no waker).
const ARMED: u8 = 1;
/// Its next `poll_ready` closes it, waits for the next connection, and fails.
const FAILING: u8 = 2;
/// Closed: `poll_ready` fails.
const DEAD: u8 = 3;

/// A connection for the stale-report race. Once armed, its `poll_ready` is `Pending` once
/// (so the clone polls it again, wherever its implementation does that), then the next one
/// fires its own close signal, blocks until the driver has reported the next connection as
/// connected, and fails: so the clone's failure report about this connection is made while
/// the driver serves the next one.
#[derive(Clone)]
struct Racer {
    id: usize,
    stage: Arc<AtomicU8>,
    closed: Arc<watch::Sender<bool>>,
    /// Ids of the connections reported by `Connected` events.
    connected: Arc<Mutex<mpsc::Receiver<usize>>>,
    /// The thread that dropped the error of the blocking `poll_ready`.
    error_dropped_on: Arc<Mutex<Option<ThreadId>>>,
}

impl Racer {
    fn closed(&self) -> impl Future<Output = CloseReason> + Send + use<> {
        let mut closed = self.closed.subscribe();
        async move {
            let _ = closed.wait_for(|closed| *closed).await;
            CloseReason::Error("racer closed".into())
        }
    }
}

/// A [`Racer`]'s `poll_ready` error; the one from the blocking poll records where it is
/// dropped: on the driver's thread if the clone handed it over in its report.
#[derive(Debug)]
struct RacerError {
    id: usize,
    dropped_on: Option<Arc<Mutex<Option<ThreadId>>>>,
}

impl std::fmt::Display for RacerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "racer {} is dead", self.id)
    }
}

impl std::error::Error for RacerError {}

impl Drop for RacerError {
    fn drop(&mut self) {
        if let Some(dropped_on) = &self.dropped_on {
            *dropped_on.lock().unwrap() = Some(std::thread::current().id());
        }
    }
}

impl Service<String> for Racer {
    type Response = String;
    type Error = RacerError;
    type Future = std::future::Ready<Result<String, RacerError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), RacerError>> {
        match self.stage.load(Ordering::SeqCst) {
            SERVING => Poll::Ready(Ok(())),
            ARMED => {
                self.stage.store(FAILING, Ordering::SeqCst);
                Poll::Pending
            }
            FAILING => {
                self.stage.store(DEAD, Ordering::SeqCst);
                self.closed.send_replace(true);
                let connected = self.connected.lock().unwrap();
                loop {
                    match connected.recv_timeout(Duration::from_secs(5)) {
                        Ok(id) if id > self.id => break,
                        Ok(_) => {}
                        Err(error) => panic!("the driver did not connect again: {error}"),
                    }
                }
                Poll::Ready(Err(RacerError {
                    id: self.id,
                    dropped_on: Some(self.error_dropped_on.clone()),
                }))
            }
            _ => Poll::Ready(Err(RacerError {
                id: self.id,
                dropped_on: None,
            })),
        }
    }

    fn call(&mut self, req: String) -> Self::Future {
        std::future::ready(Ok(format!("{}:{req}", self.id)))
    }
}

/// A clone's report that its connection failed, made after the driver has moved on to a
/// newer connection, is ignored: the newer connection stays up (no `Disconnected`, no new
/// attempt) and the clone becomes `Ready` on it.
///
/// The clone is polled on another thread; its connection's `poll_ready` closes that
/// connection and returns its error only once the driver (on this thread) has published the
/// next connection, so the report is stale by construction. That the report reached the
/// driver is checked by where its error was dropped.
#[tokio::test(start_paused = true)]
async fn a_stale_failure_report_does_not_tear_down_the_newer_connection() {
    let (connected_tx, connected_rx) = mpsc::channel();
    let connected_rx = Arc::new(Mutex::new(connected_rx));
    let error_dropped_on = Arc::new(Mutex::new(None));
    let racers = Arc::new(Mutex::new(Vec::<Racer>::new()));
    let log = Arc::new(Mutex::new(Vec::<String>::new()));

    let maker = {
        let racers = racers.clone();
        let error_dropped_on = error_dropped_on.clone();
        service_fn(move |_: &'static str| {
            let mut racers = racers.lock().unwrap();
            let racer = Racer {
                id: racers.len(),
                stage: Arc::new(AtomicU8::new(SERVING)),
                closed: Arc::new(watch::Sender::new(false)),
                connected: connected_rx.clone(),
                error_dropped_on: error_dropped_on.clone(),
            };
            racers.push(racer.clone());
            std::future::ready(Ok::<_, Infallible>(racer))
        })
    };
    let on_event = {
        let log = log.clone();
        move |event: &Event<&'static str, Racer>| match event {
            Event::Connected(racer) => {
                log.lock().unwrap().push(format!("Connected({})", racer.id));
                let _ = connected_tx.send(racer.id);
            }
            Event::Disconnected => log.lock().unwrap().push("Disconnected".into()),
            _ => {}
        }
    };
    let svc = PersistentConnectionLayer::fixed_address("a")
        .jitter(0.0)
        .on_event(on_event)
        .close_signal(|racer: &Racer| racer.closed())
        .layer(maker);
    let handle = svc.handle();

    let mut clone = svc.clone();
    assert_eq!(send(&mut clone, "x").await.unwrap(), "0:x");
    // Let the connection outlive the retry delay, so the reconnect is immediate.
    tokio::time::sleep(secs(60)).await;
    let racer0 = racers.lock().unwrap()[0].clone();
    racer0.stage.store(ARMED, Ordering::SeqCst);

    let (done_tx, done_rx) = oneshot::channel();
    let stage = racer0.stage.clone();
    std::thread::spawn(move || {
        let mut cx = Context::from_waker(Waker::noop());
        // Poll until the racer's blocking `poll_ready` has run (at most a few times).
        let mut poll = Poll::Pending;
        for _ in 0..3 {
            poll = Service::<String>::poll_ready(&mut clone, &mut cx);
            if stage.load(Ordering::SeqCst) == DEAD {
                break;
            }
        }
        let _ = done_tx.send((poll.map(|result| result.map_err(|e| e.to_string())), clone));
    });
    let (poll, mut clone) = done_rx
        .await
        .expect("the polling thread panicked (see its message)");
    assert_eq!(
        racer0.stage.load(Ordering::SeqCst),
        DEAD,
        "the race did not happen"
    );
    assert!(
        !matches!(poll, Poll::Ready(Err(_))),
        "poll_ready returned an error: {poll:?}"
    );
    yield_until("the clone's failure report is dropped", || {
        error_dropped_on.lock().unwrap().is_some()
    })
    .await;
    assert_eq!(
        *error_dropped_on.lock().unwrap(),
        Some(std::thread::current().id()),
        "the clone's failure report did not reach the driver"
    );
    tokio::time::sleep(secs(3600)).await;

    assert_eq!(
        *log.lock().unwrap(),
        ["Connected(0)", "Disconnected", "Connected(1)"],
        "the stale report tore down the newer connection"
    );
    assert_eq!(racers.lock().unwrap().len(), 2, "no further attempt");
    assert_eq!(handle.current_connection().map(|racer| racer.id), Some(1));
    assert_eq!(send(&mut clone, "y").await.unwrap(), "1:y");
}

/// A connection whose `poll_ready` registers no waker while busy (like hyper's HTTP/2) does
/// not hide a disconnect: the task waiting on it is woken when it is killed, is `Pending`
/// while reconnecting, and is woken and `Ready` when the new connection arrives.
#[tokio::test(start_paused = true)]
async fn a_clone_waiting_on_a_silent_busy_connection_is_woken_on_disconnect_and_reconnect() {
    let maker = Maker::always_connect();
    let events = Events::new();
    let mut svc = service(&maker, &events);
    yield_until("a connection", || events.count(connected) == 1).await;
    let conn0 = maker.conn(0);
    conn0.set_silent(true);
    conn0.set_busy(true);

    let mut ready = poll_ready_of(&mut svc);
    assert_pending!(ready.poll());
    let_tasks_run().await;
    assert!(!ready.is_woken());

    conn0.kill();
    yield_until("Disconnected is recorded", || {
        events.last_is("Disconnected")
    })
    .await;
    assert_eq!(events.names().last().unwrap(), "Disconnected");
    assert!(ready.is_woken(), "the disconnect wakes the task");
    assert_pending!(ready.poll());

    // The connection lived less than the retry delay: the next attempt is at 10 s.
    tokio::time::sleep(secs(10)).await;
    yield_until("a second connection", || events.count(connected) == 2).await;
    assert_eq!(maker.connections(), 2);
    assert!(ready.is_woken(), "the new connection wakes the task");
    assert_ready_ok!(ready.poll());
}

/// `Closed` is found through `Buffer`'s error wrapping with `Closed::find_in`.
#[tokio::test(start_paused = true)]
async fn closed_is_found_through_buffer_error_wrapping() {
    let maker = Maker::always_connect();
    let events = Events::new();
    let svc = service(&maker, &events);
    let handle = svc.handle();
    let buffer = Buffer::new(svc, 8);
    assert_eq!(send(&mut buffer.clone(), "x").await.unwrap(), "0:x");

    within_an_hour("close()", handle.close()).await;
    let error = send(&mut buffer.clone(), "y").await.unwrap_err();
    assert!(Closed::find_in(&*error).is_some(), "no Closed in {error:?}");
    // `Buffer` wraps the error (its own `ServiceError`, with ours as the source), so the
    // top-level error is not `Closed` itself.
    assert!(!error.is::<Closed>());
}

/// `poll_ready` returns an error only after `close()`, and that error is `Closed`: it is
/// `Pending` during an outage and `Ready(Ok)` while connected.
#[tokio::test(start_paused = true)]
async fn poll_ready_returns_closed_only_after_close() {
    let maker = Maker::new([Plan::Fail("refused")], Plan::Connect);
    let events = Events::new();
    let mut svc = service(&maker, &events);
    let handle = svc.handle();
    let_tasks_run().await;

    assert_pending!(poll_ready_of(&mut svc).poll());
    tokio::time::sleep(secs(10)).await;
    yield_until("a connection", || handle.current_connection().is_some()).await;
    assert_ready_ok!(poll_ready_of(&mut svc).poll());

    let close = handle.close();
    let error = assert_ready!(poll_ready_of(&mut svc).poll()).unwrap_err();
    assert!(error.is::<Closed>(), "not Closed: {error:?}");
    within_an_hour("close()", close).await;
    let error = assert_ready!(poll_ready_of(&mut svc).poll()).unwrap_err();
    assert!(error.is::<Closed>(), "not Closed: {error:?}");
}

/// `call` on a clone whose `poll_ready` never returned `Ready` fails with an error saying so
/// (not a panic), and does not touch the connection, even while connected.
#[tokio::test(start_paused = true)]
async fn call_without_a_ready_poll_ready_returns_an_error() {
    let maker = Maker::always_connect();
    let events = Events::new();
    let svc = service(&maker, &events);
    yield_until("a connection", || {
        svc.handle().current_connection().is_some()
    })
    .await;
    assert!(svc.handle().current_connection().is_some());

    let mut fresh = svc.clone();
    let error = Service::<String>::call(&mut fresh, "x".into())
        .await
        .unwrap_err();
    assert!(
        error.to_string().contains("poll_ready"),
        "unexpected error: {error}"
    );
    assert_eq!(maker.conn(0).calls(), 0);
}

/// A clone of a connected clone carries its connection and is ready at once on it; dropping
/// clones leaves the others and the connection untouched.
#[tokio::test(start_paused = true)]
async fn a_clone_of_a_connected_clone_carries_the_connection() {
    let maker = Maker::always_connect();
    let events = Events::new();
    let mut svc = service(&maker, &events);
    assert_eq!(send(&mut svc, "x").await.unwrap(), "0:x");

    let mut clone = svc.clone();
    assert_eq!(clone.get_ref().map(Conn::id), Some(0));
    let mut other = clone.clone();
    assert_ready_ok!(poll_ready_of(&mut clone).poll());
    assert_eq!(
        Service::<String>::call(&mut clone, "y".into())
            .await
            .unwrap(),
        "0:y"
    );

    drop(svc);
    drop(clone);
    let_tasks_run().await;
    assert_eq!(send(&mut other, "z").await.unwrap(), "0:z");
    assert_eq!(maker.attempts(), 1);
    assert_eq!(maker.live.load(Ordering::SeqCst), 1);
    assert!(!events.names().contains(&"Disconnected".to_string()));
}

// === A connection whose poll_ready error is not repeated ===

/// A connection whose `poll_ready` fails exactly once after [`fail_once`](Self::fail_once)
/// and is ready again afterwards (tower says a service whose `poll_ready` failed is to be
/// discarded, so nothing should depend on a second poll).
#[derive(Clone)]
struct FailsOnce {
    id: usize,
    fail_next: Arc<std::sync::atomic::AtomicBool>,
}

impl FailsOnce {
    fn fail_once(&self) {
        self.fail_next.store(true, Ordering::SeqCst);
    }
}

impl Service<String> for FailsOnce {
    type Response = String;
    type Error = std::io::Error;
    type Future = std::future::Ready<Result<String, std::io::Error>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), std::io::Error>> {
        if self.fail_next.swap(false, Ordering::SeqCst) {
            return Poll::Ready(Err(std::io::Error::other(format!(
                "connection {} failed",
                self.id
            ))));
        }
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: String) -> Self::Future {
        std::future::ready(Ok(format!("{}:{req}", self.id)))
    }
}

/// A connection whose `poll_ready` has failed once is finished, even if polling it again
/// would succeed: `poll_ready` is not `Ready` on it, `Disconnected` is reported, and the next
/// `Ready` is on a new connection.
#[tokio::test(start_paused = true)]
async fn a_connection_whose_poll_ready_failed_once_is_finished() {
    let conns = Arc::new(Mutex::new(Vec::<FailsOnce>::new()));
    let log = Arc::new(Mutex::new(Vec::<String>::new()));
    let maker = {
        let conns = conns.clone();
        service_fn(move |_: &'static str| {
            let mut conns = conns.lock().unwrap();
            let conn = FailsOnce {
                id: conns.len(),
                fail_next: Arc::default(),
            };
            conns.push(conn.clone());
            std::future::ready(Ok::<_, Infallible>(conn))
        })
    };
    let on_event = {
        let log = log.clone();
        move |event: &Event<&'static str, FailsOnce>| match event {
            Event::Connected(conn) => log.lock().unwrap().push(format!("Connected({})", conn.id)),
            Event::Disconnected => log.lock().unwrap().push("Disconnected".into()),
            _ => {}
        }
    };
    let mut svc = PersistentConnectionLayer::fixed_address("a")
        .jitter(0.0)
        .on_event(on_event)
        .layer(maker);
    assert_eq!(send(&mut svc, "x").await.unwrap(), "0:x");
    // Let the connection outlive the retry delay, so the reconnect is immediate.
    tokio::time::sleep(secs(60)).await;

    conns.lock().unwrap()[0].fail_once();
    let mut ready = task::spawn(poll_fn(|cx| Service::<String>::poll_ready(&mut svc, cx)));
    assert_pending!(
        ready.poll(),
        "Ready on the connection whose poll_ready failed"
    );
    drop(ready);
    yield_until("Connected(1) is logged", || {
        log.lock()
            .unwrap()
            .last()
            .is_some_and(|e| e == "Connected(1)")
    })
    .await;
    assert_eq!(
        *log.lock().unwrap(),
        ["Connected(0)", "Disconnected", "Connected(1)"]
    );
    assert_eq!(send(&mut svc, "y").await.unwrap(), "1:y");
}
