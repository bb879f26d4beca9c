//! Health-gated readiness: a new connection counts as connected only once its health check
//! passes (a failure, hang or panic is a failed attempt), and a periodic check ends a
//! connection that turns unhealthy; also against a real tonic-health server.

mod support;

#[path = "support/grpc.rs"]
mod grpc_server;

use std::{
    future::poll_fn,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use futures_util::FutureExt as _;
use persistent_connection::{
    BoxError, ConnectErrorKind, Event, Handle, PersistentConnectionLayer, State,
    health::NotServing,
    http::{Http2Connection, Http2Connector},
};
use support::{Addr, Conn, Events, Maker, Plan, let_tasks_run, ms, secs, yield_until};
use tokio::{
    sync::mpsc,
    time::{Instant, sleep_until, timeout},
};
use tokio_test::{assert_pending, assert_ready_ok, task};
use tower::{Layer, Service, ServiceExt as _};

// === Helpers ===

/// Records every `FailedToConnect` with its time since the recorder was made, its kind and
/// its text.
#[derive(Clone)]
struct Failures {
    log: Arc<Mutex<Vec<(Duration, ConnectErrorKind, String)>>>,
    start: Instant,
}

impl Failures {
    fn new() -> Self {
        Self {
            log: Arc::new(Mutex::new(Vec::new())),
            start: Instant::now(),
        }
    }

    fn hook(&self) -> impl Fn(&Event<Addr, Conn>) + Send + Sync + 'static {
        let this = self.clone();
        move |event: &Event<Addr, Conn>| {
            if let Event::FailedToConnect(error) = event {
                let entry = (this.start.elapsed(), error.kind(), error.to_string());
                this.log.lock().unwrap().push(entry);
            }
        }
    }

    fn all(&self) -> Vec<(Duration, ConnectErrorKind, String)> {
        self.log.lock().unwrap().clone()
    }
}

/// Records each run of a health check: its time since the recorder was made and the id of the
/// connection it checked.
#[derive(Clone)]
struct Checks {
    log: Arc<Mutex<Vec<(Duration, usize)>>>,
    start: Instant,
}

impl Checks {
    fn new() -> Self {
        Self {
            log: Arc::new(Mutex::new(Vec::new())),
            start: Instant::now(),
        }
    }

    /// Records a check of `conn`; returns how many checks ran before this one.
    fn record(&self, conn: &Conn) -> usize {
        let mut log = self.log.lock().unwrap();
        log.push((self.start.elapsed(), conn.id()));
        log.len() - 1
    }

    fn all(&self) -> Vec<(Duration, usize)> {
        self.log.lock().unwrap().clone()
    }
}

/// A health check that records each run in `checks` and passes while `passing` holds, else
/// fails with `failure()`.
fn switchable_check<E: 'static>(
    checks: &Checks,
    passing: &Arc<AtomicBool>,
    failure: fn() -> E,
) -> impl Fn(&Conn) -> std::future::Ready<Result<(), E>> + Send + Sync + 'static {
    let (checks, passing) = (checks.clone(), passing.clone());
    move |conn: &Conn| {
        checks.record(conn);
        std::future::ready(if passing.load(Ordering::SeqCst) {
            Ok(())
        } else {
            Err(failure())
        })
    }
}

/// The next connection, within 100 s of paused time.
async fn connected(handle: &Handle<Conn>) -> Conn {
    timeout(secs(100), handle.connected())
        .await
        .expect("never connected")
        .unwrap()
}

/// `(seconds, text)` pairs from literals.
fn at(list: &[(u64, &str)]) -> Vec<(u64, String)> {
    list.iter().map(|(t, e)| (*t, (*e).to_owned())).collect()
}

// === The check of each new connection ===

/// A check that fails twice then passes: two `FailedToConnect` of kind `HealthCheck` whose
/// text says "health check failed:", attempts at 0, 10 and 20 s (10 s delay, no jitter), the
/// service `Pending` and no `Connected` until the third connection passes at 20 s; the
/// connections that failed are dropped, and the stats count two failed attempts.
#[tokio::test(start_paused = true)]
async fn a_connection_counts_only_once_its_health_check_passes() {
    let maker = Maker::always_connect();
    let events = Events::new();
    let failures = Failures::new();
    let checks = Checks::new();
    let mut svc = PersistentConnectionLayer::fixed_address("a")
        .jitter(0.0)
        .retry_delay(|| secs(10))
        .on_event((events.hook(), failures.hook()))
        .health_check({
            let checks = checks.clone();
            move |conn: &Conn| {
                let n = checks.record(conn);
                async move {
                    if n < 2 {
                        Err(format!("check {n} says not serving"))
                    } else {
                        Ok(())
                    }
                }
            }
        })
        .layer(maker.clone());
    let handle = svc.handle();
    let t0 = Instant::now();
    let mut ready = task::spawn(poll_fn(|cx| svc.poll_ready(cx)));

    let_tasks_run().await;
    assert_pending!(ready.poll());
    sleep_until(t0 + secs(10)).await;
    let_tasks_run().await;
    assert_pending!(ready.poll());
    assert!(handle.current_connection().is_none());
    sleep_until(t0 + secs(20)).await;
    yield_until("the checked connection is current", || {
        handle.current_connection().is_some()
    })
    .await;
    assert!(ready.is_woken(), "the connection wakes the waiting service");
    assert_ready_ok!(ready.poll());
    drop(ready);

    assert_eq!(
        events.timed_secs(),
        at(&[
            (0, "Attempting"),
            (0, "Address(a)"),
            (0, "Failed(health check failed: check 0 says not serving)"),
            (10, "Failed(health check failed: check 1 says not serving)"),
            (20, "Connected(2)"),
        ])
    );
    let failures = failures.all();
    assert_eq!(failures.len(), 2);
    for (_, kind, text) in &failures {
        assert_eq!(*kind, ConnectErrorKind::HealthCheck);
        assert!(text.starts_with("health check failed:"), "{text}");
    }
    assert_eq!(maker.attempt_times(), [secs(0), secs(10), secs(20)]);
    assert_eq!(checks.all(), [(secs(0), 0), (secs(10), 1), (secs(20), 2)]);
    assert_eq!(
        maker.live.load(Ordering::SeqCst),
        1,
        "the connections that failed their check were dropped"
    );
    let stats = handle.stats();
    assert_eq!(
        (stats.attempts, stats.failed_attempts, stats.connections),
        (3, 2, 1)
    );
    assert_eq!(
        stats.last_error.map(|e| e.kind()),
        Some(ConnectErrorKind::HealthCheck)
    );
}

/// A check that never finishes fails the attempt with kind `Timeout` at exactly the connect
/// timeout, counted from the attempt's start (the connect's own 2 s included), and the hung
/// check (with its copy of the connection) is dropped; the next attempt follows the retry
/// delay.
#[tokio::test(start_paused = true)]
async fn a_health_check_that_never_finishes_times_out_within_the_connect_timeout() {
    let maker = Maker::new([Plan::ConnectAfter(secs(2))], Plan::Connect);
    let events = Events::new();
    let failures = Failures::new();
    let checks = Checks::new();
    let svc = PersistentConnectionLayer::fixed_address("a")
        .jitter(0.0)
        .retry_delay(|| secs(10))
        .connect_timeout(secs(5))
        .on_event((events.hook(), failures.hook()))
        .health_check({
            let checks = checks.clone();
            move |conn: &Conn| {
                let n = checks.record(conn);
                let conn = conn.clone();
                async move {
                    if n == 0 {
                        std::future::pending::<()>().await;
                    }
                    drop(conn);
                    Ok::<(), BoxError>(())
                }
            }
        })
        .layer(maker.clone());
    let handle = svc.handle();
    let conn = connected(&handle).await;
    assert_eq!(conn.id(), 1);

    assert_eq!(
        failures.all(),
        [(
            secs(5),
            ConnectErrorKind::Timeout,
            "connect attempt timed out after 5s in the health check".to_owned()
        )]
    );
    assert_eq!(
        events.timed_secs(),
        at(&[
            (0, "Attempting"),
            (0, "Address(a)"),
            (
                5,
                "Failed(connect attempt timed out after 5s in the health check)"
            ),
            (10, "Connected(1)"),
        ])
    );
    assert_eq!(checks.all(), [(secs(2), 0), (secs(10), 1)]);
    assert_eq!(
        maker.live.load(Ordering::SeqCst),
        1,
        "the hung check and its connection were dropped"
    );
}

/// A check that panics (in the closure, then in its future) is a failed attempt of kind
/// `Panic`; the driver survives, makes the next attempt after the retry delay, and connects
/// once the check passes.
#[tokio::test(start_paused = true)]
async fn a_panicking_health_check_is_a_failed_attempt() {
    let maker = Maker::always_connect();
    let events = Events::new();
    let failures = Failures::new();
    let checks = Checks::new();
    let svc = PersistentConnectionLayer::fixed_address("a")
        .jitter(0.0)
        .retry_delay(|| secs(10))
        .on_event((events.hook(), failures.hook()))
        .health_check({
            let checks = checks.clone();
            move |conn: &Conn| {
                let n = checks.record(conn);
                if n == 0 {
                    panic!("check closure exploded");
                }
                async move {
                    if n == 1 {
                        panic!("check future exploded");
                    }
                    Ok::<(), BoxError>(())
                }
            }
        })
        .layer(maker.clone());
    let handle = svc.handle();
    let conn = connected(&handle).await;
    assert_eq!(conn.id(), 2);

    assert_eq!(
        failures.all(),
        [
            (
                secs(0),
                ConnectErrorKind::Panic,
                "connect attempt panicked: check closure exploded".to_owned()
            ),
            (
                secs(10),
                ConnectErrorKind::Panic,
                "connect attempt panicked: check future exploded".to_owned()
            ),
        ]
    );
    assert_eq!(maker.attempt_times(), [secs(0), secs(10), secs(20)]);
    assert_eq!(
        events.timed_secs().last(),
        Some(&(20, "Connected(2)".to_owned()))
    );
}

// === The periodic check ===

/// With `health_check_interval(5 s)`, passing checks run every 5 s and leave the connection
/// up; a check that fails (unhealthy from 12 s) ends the connection at exactly 15 s with
/// `Disconnected`, and a new cycle starts per the retry timer (at once: the connection
/// outlived the 10 s delay); its connection fails its first check, and the next attempt, at
/// 25 s, connects and is again checked every 5 s.
#[tokio::test(start_paused = true)]
async fn a_periodic_check_that_fails_ends_the_connection() {
    let maker = Maker::always_connect();
    let events = Events::new();
    let checks = Checks::new();
    let healthy = Arc::new(AtomicBool::new(true));
    let svc = PersistentConnectionLayer::fixed_address("a")
        .jitter(0.0)
        .retry_delay(|| secs(10))
        .on_event(events.hook())
        .health_check(switchable_check(&checks, &healthy, || "not serving"))
        .health_check_interval(secs(5))
        .layer(maker.clone());
    let handle = svc.handle();
    let t0 = Instant::now();

    sleep_until(t0 + secs(12)).await;
    assert_eq!(handle.current_connection().map(|c| c.id()), Some(0));
    healthy.store(false, Ordering::SeqCst);
    sleep_until(t0 + secs(16)).await;
    assert!(
        handle.current_connection().is_none(),
        "the unhealthy connection was withdrawn"
    );
    healthy.store(true, Ordering::SeqCst);
    sleep_until(t0 + secs(52)).await;
    assert_eq!(handle.current_connection().map(|c| c.id()), Some(2));

    assert_eq!(
        events.timed_secs(),
        at(&[
            (0, "Attempting"),
            (0, "Address(a)"),
            (0, "Connected(0)"),
            (15, "Disconnected"),
            (15, "Attempting"),
            (15, "Address(a)"),
            (15, "Failed(health check failed: not serving)"),
            (25, "Connected(2)"),
        ])
    );
    let disconnected = events.timed()[3].clone();
    assert_eq!(disconnected, (secs(15), "Disconnected".to_owned()));
    assert_eq!(
        checks.all(),
        [
            (secs(0), 0),
            (secs(5), 0),
            (secs(10), 0),
            (secs(15), 0),
            (secs(15), 1),
            (secs(25), 2),
            (secs(30), 2),
            (secs(35), 2),
            (secs(40), 2),
            (secs(45), 2),
            (secs(50), 2),
        ]
    );
    let stats = handle.stats();
    assert_eq!((stats.disconnections, stats.failed_attempts), (1, 1));
    assert_eq!(maker.live.load(Ordering::SeqCst), 1);
}

/// A periodic check that answers `NotServing` (gRFC A17) keeps the connection: from the
/// check at 3 s the service is `Pending` and the state `NotServing`, with no `Disconnected`
/// and no new attempt, while the checks go on every second; the first check that passes (at
/// 8 s) makes the same connection ready again at once.
#[tokio::test(start_paused = true)]
async fn a_not_serving_answer_makes_the_connection_unready_without_closing_it() {
    let maker = Maker::always_connect();
    let events = Events::new();
    let checks = Checks::new();
    let serving = Arc::new(AtomicBool::new(true));
    let svc = PersistentConnectionLayer::fixed_address("a")
        .jitter(0.0)
        .retry_delay(|| secs(10))
        .on_event(events.hook())
        .health_check(switchable_check(&checks, &serving, || {
            NotServing::new("status NOT_SERVING")
        }))
        .health_check_interval(secs(1))
        .layer(maker.clone());
    let handle = svc.handle();
    let mut ready = task::spawn(svc.clone().ready_oneshot());
    let t0 = Instant::now();
    sleep_until(t0 + ms(2500)).await;
    assert_ready_ok!(ready.poll());
    serving.store(false, Ordering::SeqCst);

    sleep_until(t0 + ms(3500)).await;
    assert_eq!(handle.state(), State::NotServing);
    assert!(handle.current_connection().is_none(), "withdrawn");
    let mut waiting = task::spawn(svc.clone().ready_oneshot());
    assert_pending!(waiting.poll());
    assert_eq!(maker.live.load(Ordering::SeqCst), 1, "the connection stays");

    sleep_until(t0 + ms(7500)).await;
    assert_pending!(waiting.poll());
    serving.store(true, Ordering::SeqCst);
    sleep_until(t0 + ms(8000)).await;
    yield_until("the connection is restored", || {
        handle.current_connection().is_some()
    })
    .await;
    assert!(waiting.is_woken());
    let mut ready = assert_ready_ok!(waiting.poll());
    assert_eq!(
        ready.call("x".into()).await.unwrap(),
        "0:x",
        "the same connection"
    );
    assert_eq!(handle.state(), State::Connected);

    assert_eq!(maker.attempt_times(), [secs(0)]);
    assert_eq!(events.names(), ["Attempting", "Address(a)", "Connected(0)"]);
    let times: Vec<u64> = checks.all().iter().map(|(t, _)| t.as_secs()).collect();
    assert_eq!(times, [0, 1, 2, 3, 4, 5, 6, 7, 8]);
    let stats = handle.stats();
    assert_eq!((stats.disconnections, stats.failed_attempts), (0, 0));
}

/// A new connection whose server answers `NotServing` is checked again at the interval (not
/// after the retry delay), within the connect timeout: it is reported `Connected` once a check
/// passes, with no failed attempt. Past the connect timeout it is a failed attempt.
#[tokio::test(start_paused = true)]
async fn a_new_connection_not_serving_is_checked_again_at_the_interval() {
    let maker = Maker::always_connect();
    let events = Events::new();
    let serving_from = Arc::new(Mutex::new(secs(3)));
    let t0 = Instant::now();
    let svc = PersistentConnectionLayer::fixed_address("a")
        .jitter(0.0)
        .retry_delay(|| secs(10))
        .connect_timeout(secs(5))
        .on_event(events.hook())
        .health_check({
            let serving_from = serving_from.clone();
            move |_: &Conn| {
                let serving = t0.elapsed() >= *serving_from.lock().unwrap();
                async move {
                    if serving {
                        Ok(())
                    } else {
                        Err(NotServing::new("warming up"))
                    }
                }
            }
        })
        .health_check_interval(secs(1))
        .layer(maker.clone());
    let handle = svc.handle();
    let conn = connected(&handle).await;
    assert_eq!((conn.id(), t0.elapsed()), (0, secs(3)));
    assert_eq!(events.names(), ["Attempting", "Address(a)", "Connected(0)"]);
    assert_eq!(handle.stats().failed_attempts, 0);
    drop(conn);
    drop(handle);
    drop(svc);

    // Never serving within the 5 s connect timeout: a failed attempt that says why.
    let maker = Maker::always_connect();
    let events = Events::new();
    let svc = PersistentConnectionLayer::fixed_address("a")
        .jitter(0.0)
        .retry_delay(|| secs(10))
        .connect_timeout(secs(5))
        .on_event(events.hook())
        .health_check(|_: &Conn| async { Err::<(), _>(NotServing::new("draining")) })
        .health_check_interval(secs(1))
        .layer(maker.clone());
    tokio::time::sleep(secs(6)).await;
    assert_eq!(
        events.names(),
        [
            "Attempting",
            "Address(a)",
            "Failed(health check failed: the server is not serving: draining)"
        ]
    );
    drop(svc);
}

/// A periodic check that hangs ends the connection after the interval plus the connect
/// timeout (at 5 + 3 = 8 s); the next cycle waits for the retry timer (10 s, armed before the
/// first attempt), and the hung check's copy of the connection is dropped.
#[tokio::test(start_paused = true)]
async fn a_periodic_check_that_hangs_ends_the_connection_after_the_connect_timeout() {
    let maker = Maker::always_connect();
    let events = Events::new();
    let checks = Checks::new();
    let svc = PersistentConnectionLayer::fixed_address("a")
        .jitter(0.0)
        .retry_delay(|| secs(10))
        .connect_timeout(secs(3))
        .on_event(events.hook())
        .health_check({
            let checks = checks.clone();
            move |conn: &Conn| {
                let n = checks.record(conn);
                let conn = conn.clone();
                async move {
                    if n == 1 {
                        std::future::pending::<()>().await;
                    }
                    drop(conn);
                    Ok::<(), BoxError>(())
                }
            }
        })
        .health_check_interval(secs(5))
        .layer(maker.clone());
    let handle = svc.handle();
    let t0 = Instant::now();
    sleep_until(t0 + secs(12)).await;
    assert_eq!(handle.current_connection().map(|c| c.id()), Some(1));

    assert_eq!(
        events.timed(),
        [
            (secs(0), "Attempting"),
            (secs(0), "Address(a)"),
            (secs(0), "Connected(0)"),
            (secs(8), "Disconnected"),
            (secs(10), "Attempting"),
            (secs(10), "Address(a)"),
            (secs(10), "Connected(1)"),
        ]
        .map(|(t, e)| (t, e.to_owned()))
    );
    assert_eq!(checks.all(), [(secs(0), 0), (secs(5), 0), (secs(10), 1)]);
    assert_eq!(
        maker.live.load(Ordering::SeqCst),
        1,
        "the hung check and its connection were dropped"
    );
}

/// A zero interval is refused at the setter, with a message that names it.
#[test]
#[should_panic(expected = "health_check_interval: the interval must not be zero")]
fn a_zero_health_check_interval_panics() {
    let _ = PersistentConnectionLayer::fixed_address("a").health_check_interval(Duration::ZERO);
}

// === Against a real tonic-health server ===

mod grpc {
    use super::{
        grpc_server::{SERVICE, health, request},
        *,
    };
    use tonic::{body::Body, transport::server::TcpIncoming};
    use tonic_health::{
        ServingStatus,
        pb::{health_check_response::ServingStatus as Status, health_client::HealthClient},
    };

    /// The bound on every wait: a test that reaches it fails.
    const GUARD: Duration = Duration::from_secs(5);

    type Conn = Http2Connection<Body>;
    /// Receives items in order, each wait bounded by [`GUARD`].
    struct Receiver<T>(mpsc::UnboundedReceiver<T>);

    impl<T: std::fmt::Debug> Receiver<T> {
        /// Waits for the first item that matches `wanted`; returns every item received until
        /// then, that one included.
        async fn until(&mut self, wanted: impl Fn(&T) -> bool) -> Vec<T> {
            let mut seen = Vec::new();
            loop {
                let item = timeout(GUARD, self.0.recv())
                    .await
                    .unwrap_or_else(|_| panic!("nothing matching in time; seen: {seen:?}"))
                    .expect("the sender is gone");
                let done = wanted(&item);
                seen.push(item);
                if done {
                    return seen;
                }
            }
        }
    }

    /// A check that asks the server through `HealthClient` on the connection itself requires
    /// SERVING: while the server reports NOT_SERVING, attempts fail with "health check
    /// failed:", no `Connected` is reported and `poll_ready` stays `Pending`; once it reports
    /// SERVING the service becomes ready and a call succeeds; when it turns NOT_SERVING again,
    /// the periodic check (every 200 ms) ends the connection with `Disconnected`.
    #[tokio::test]
    async fn a_grpc_health_check_gates_readiness_and_ends_an_unhealthy_connection() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a loopback port");
        let address = listener.local_addr().expect("local address");
        let (reporter, health) = health(ServingStatus::NotServing).await;
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(health)
                .serve_with_incoming(TcpIncoming::from(listener)),
        );

        let (checked, checks) = mpsc::unbounded_channel::<Result<(), String>>();
        let mut checks = Receiver(checks);
        let (seen, events) = mpsc::unbounded_channel::<String>();
        let mut events = Receiver(events);
        let mut svc = PersistentConnectionLayer::fixed_address(address)
            .server_name(SERVICE)
            .retry_delay(|| ms(100))
            .connect_timeout(secs(2))
            .on_event(move |event: &Event<SocketAddr, Conn>| {
                let text = match event {
                    Event::AttemptingToConnect => "Attempting".to_owned(),
                    Event::ObtainedAddress(_) => "Address".to_owned(),
                    Event::FailedToConnect(error) => format!("Failed({error})"),
                    Event::Connected(_) => "Connected".to_owned(),
                    Event::Disconnected => "Disconnected".to_owned(),
                    _ => return,
                };
                let _ = seen.send(text);
            })
            .health_check(move |conn: &Conn| {
                let mut client = HealthClient::new(conn.clone());
                let checked = checked.clone();
                async move {
                    let outcome = match client.check(request()).await {
                        Ok(response) => match response.into_inner().status() {
                            Status::Serving => Ok(()),
                            status => Err(format!("not serving: {status:?}")),
                        },
                        Err(status) => Err(format!("check failed: {status}")),
                    };
                    let _ = checked.send(outcome.clone());
                    outcome
                }
            })
            .health_check_interval(ms(200))
            .http2(Http2Connector::<Body>::new());
        let handle = svc.handle();

        // NOT_SERVING: three checks in a row fail, nothing is connected.
        for _ in 0..3 {
            let outcome = checks.until(|_| true).await;
            assert_eq!(
                outcome,
                [Err("not serving: NotServing".to_owned())],
                "the check reached the server and saw NOT_SERVING"
            );
        }
        assert!(
            svc.ready().now_or_never().is_none(),
            "poll_ready is Pending"
        );
        assert!(handle.current_connection().is_none());
        let so_far = events.until(|e| e.starts_with("Failed")).await;
        assert_eq!(
            so_far,
            [
                "Attempting",
                "Address",
                "Failed(health check failed: not serving: NotServing)"
            ]
        );
        while let Ok(event) = events.0.try_recv() {
            assert_ne!(event, "Connected", "connected while NOT_SERVING");
        }
        let stats = handle.stats();
        assert!(stats.failed_attempts >= 3, "{stats:?}");
        assert_eq!(stats.connections, 0);

        // SERVING: the next attempt connects, and calls go through.
        reporter
            .set_service_status(SERVICE, ServingStatus::Serving)
            .await;
        let until_connected = events.until(|e| e == "Connected").await;
        assert!(
            !until_connected.iter().any(|e| e == "Disconnected"),
            "{until_connected:?}"
        );
        timeout(GUARD, svc.ready())
            .await
            .expect("not ready once connected")
            .expect("poll_ready failed");
        let mut client = HealthClient::new(svc.clone());
        let status = timeout(GUARD, client.check(request()))
            .await
            .expect("the call did not finish")
            .expect("the call failed")
            .into_inner()
            .status();
        assert_eq!(status, Status::Serving);

        // NOT_SERVING again: the periodic check ends the connection.
        reporter
            .set_service_status(SERVICE, ServingStatus::NotServing)
            .await;
        let until_disconnected = events.until(|e| e == "Disconnected").await;
        assert_eq!(until_disconnected, ["Disconnected"]);
        let next_cycle = events.until(|e| e.starts_with("Failed")).await;
        assert_eq!(
            next_cycle,
            [
                "Attempting",
                "Address",
                "Failed(health check failed: not serving: NotServing)"
            ]
        );
        assert!(handle.current_connection().is_none());
        assert!(
            svc.ready().now_or_never().is_none(),
            "poll_ready is Pending again"
        );

        timeout(GUARD, handle.close())
            .await
            .expect("close did not finish");
        server.abort();
    }

    /// gRFC A17 against a real tonic-health server: a check that maps `NOT_SERVING` to
    /// [`NotServing`] keeps the connection through a NOT_SERVING spell (requests wait, state
    /// `NotServing`, no `Disconnected`, the server accepts no second connection) and the
    /// service is ready again as soon as a check sees SERVING, on the same connection.
    #[tokio::test]
    async fn not_serving_from_a_grpc_server_keeps_the_connection_and_serving_resumes_at_once() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a loopback port");
        let address = listener.local_addr().expect("local address");
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let incoming = {
            let accepted = accepted.clone();
            futures_util::stream::unfold(listener, move |listener| {
                let accepted = accepted.clone();
                async move {
                    let accepted_now = listener.accept().await.map(|(stream, _)| stream);
                    accepted.fetch_add(1, Ordering::SeqCst);
                    Some((accepted_now, listener))
                }
            })
        };
        let (reporter, health) = health(ServingStatus::Serving).await;
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(health)
                .serve_with_incoming(incoming),
        );

        let (seen, events) = mpsc::unbounded_channel::<String>();
        let mut events = Receiver(events);
        let svc = PersistentConnectionLayer::fixed_address(address)
            .server_name(SERVICE)
            .retry_delay(|| secs(10))
            .connect_timeout(secs(2))
            .on_event(move |event: &Event<SocketAddr, Conn>| {
                let _ = seen.send(event.name().to_owned());
            })
            .health_check(move |conn: &Conn| {
                let mut client = HealthClient::new(conn.clone());
                async move {
                    match client.check(request()).await?.into_inner().status() {
                        Status::Serving => Ok(()),
                        status => Err(BoxError::from(NotServing::new(format!("{status:?}")))),
                    }
                }
            })
            .health_check_interval(ms(100))
            .http2(Http2Connector::<Body>::new());
        let handle = svc.handle();
        let mut client = HealthClient::new(svc.clone());
        timeout(GUARD, client.check(request()))
            .await
            .unwrap()
            .unwrap();
        events.until(|e| e == "Connected").await;

        reporter
            .set_service_status(SERVICE, ServingStatus::NotServing)
            .await;
        let mut states = handle.state_changes();
        use futures_util::StreamExt as _;
        timeout(GUARD, async {
            while states.next().await != Some(State::NotServing) {}
        })
        .await
        .expect("the state turns NotServing");
        let mut waiting = task::spawn(svc.clone().ready_oneshot());
        assert_pending!(waiting.poll());
        let spell = Instant::now();

        reporter
            .set_service_status(SERVICE, ServingStatus::Serving)
            .await;
        let mut ready = timeout(GUARD, waiting).await.unwrap().unwrap();
        let resumed = spell.elapsed();
        eprintln!("ready again {resumed:?} after SERVING was set (check interval 100 ms)");
        poll_fn(|cx| ready.poll_ready(cx)).await.unwrap();
        let mut client = HealthClient::new(ready);
        let status = timeout(GUARD, client.check(request()))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(status.into_inner().status(), Status::Serving);

        assert_eq!(handle.state(), State::Connected);
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            1,
            "one connection throughout"
        );
        let stats = handle.stats();
        assert_eq!((stats.disconnections, stats.failed_attempts), (0, 0));
        while let Ok(event) = events.0.try_recv() {
            assert_ne!(event, "Disconnected");
        }
        server.abort();
    }
}
