//! The fault scenarios of the reliability catalogue that a scripted maker under paused time
//! can inject: one test per scenario, named after its number, asserting the expected
//! behaviour.
mod support;

use std::{
    convert::Infallible,
    future::{Future, poll_fn},
    io,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use persistent_connection::{
    BoxError, Closed, Event, PersistentConnection, PersistentConnectionLayer, State,
};
use support::{
    Addr, Conn, Events, Maker, Plan, let_tasks_run, ms, secs, within_an_hour, yield_until,
};
use tokio::time::{Instant, advance, sleep};
use tokio_test::{assert_pending, assert_ready, assert_ready_ok, task};
use tower::{Layer, Service, ServiceExt};

const HOUR: Duration = Duration::from_secs(3600);

/// The retry delay of every scenario (the crate's default, set explicitly).
const DELAY: Duration = Duration::from_secs(10);

// === Helpers ===

/// A layer to the fixed address `"a"` with a 10 s retry delay and no jitter.
fn layer() -> PersistentConnectionLayer<Addr> {
    PersistentConnectionLayer::fixed_address("a")
        .retry_delay(|| DELAY)
        .jitter(0.0)
}

/// The service over `maker` reporting to `events`, noticing `Conn::kill()` through the
/// close signal.
fn service(maker: &Maker, events: &Events) -> PersistentConnection<Conn> {
    layer()
        .on_event(events.hook())
        .close_signal(|c: &Conn| c.closed())
        .layer(maker.clone())
}

/// A task that polls `svc`'s `poll_ready` each time it is polled.
fn poll_ready_of<S: Service<String>>(
    svc: &mut S,
) -> task::Spawn<impl Future<Output = Result<(), S::Error>> + '_> {
    task::spawn(poll_fn(move |cx| svc.poll_ready(cx)))
}

/// The grid `0, step, 2 step, ..., (n - 1) step`.
fn grid(step: Duration, n: u32) -> Vec<Duration> {
    (0..n).map(|k| step * k).collect()
}

/// The gaps between consecutive times.
fn gaps(times: &[Duration]) -> Vec<Duration> {
    times.windows(2).map(|w| w[1] - w[0]).collect()
}

/// The largest number of `times` within any window of length `window`.
fn peak_per_window(times: &[Duration], window: Duration) -> usize {
    let mut times = times.to_vec();
    times.sort();
    let mut peak = 0;
    let mut low = 0;
    for high in 0..times.len() {
        while times[high] - times[low] >= window {
            low += 1;
        }
        peak = peak.max(high - low + 1);
    }
    peak
}

/// How many recorded events have exactly this text.
fn count(events: &Events, text: &str) -> usize {
    events.names().iter().filter(|name| *name == text).count()
}

/// Counts the live values it is cloned into: each clone adds one, each drop removes one.
struct Live(Arc<AtomicUsize>);

impl Live {
    fn new(counter: &Arc<AtomicUsize>) -> Self {
        counter.fetch_add(1, Ordering::SeqCst);
        Self(counter.clone())
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A connection whose responses take 2 s: a request stays in flight that long.
#[derive(Clone)]
struct SlowConn(Conn);

impl Service<String> for SlowConn {
    type Response = String;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<String, io::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), io::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, request: String) -> Self::Future {
        let response = self.0.call(request);
        Box::pin(async move {
            sleep(secs(2)).await;
            response.await
        })
    }
}

/// Wraps `maker` so that each connection it makes dies `life` after it is made: killed (an
/// error close) or, if `graceful`, closed with the server's goodbye.
fn flapping(
    maker: &Maker,
    life: Duration,
    graceful: bool,
) -> impl Service<
    Addr,
    Response = Conn,
    Error = io::Error,
    Future = impl Future<Output = Result<Conn, io::Error>> + Send + 'static,
> + Send
+ 'static {
    maker.clone().map_response(move |conn: Conn| {
        let doomed = conn.clone();
        tokio::spawn(async move {
            sleep(life).await;
            if graceful {
                doomed.close_gracefully_before_serving();
            } else {
                doomed.kill();
            }
        });
        conn
    })
}

/// A maker whose TCP connect is accepted after 1 s but whose handshake never completes.
#[derive(Clone)]
struct HangingHandshake {
    /// Attempts whose TCP connect was accepted.
    accepted: Arc<AtomicUsize>,
    /// Attempt futures not dropped yet.
    in_flight: Arc<AtomicUsize>,
}

impl Service<Addr> for HangingHandshake {
    type Response = Conn;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Conn, io::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), io::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Addr) -> Self::Future {
        let accepted = self.accepted.clone();
        let in_flight = Live::new(&self.in_flight);
        Box::pin(async move {
            let _in_flight = in_flight;
            sleep(secs(1)).await;
            accepted.fetch_add(1, Ordering::SeqCst);
            std::future::pending().await
        })
    }
}

/// Where [`ResourceMaker`] reports its error.
#[derive(Clone, Copy)]
enum FailIn {
    /// The maker's `poll_ready` (e.g. a pool of sockets exhausted).
    PollReady,
    /// The connect future.
    Call,
}

/// A maker that always fails with a resource error, recording the time of every attempt.
#[derive(Clone)]
struct ResourceMaker {
    error: fn() -> io::Error,
    fail_in: FailIn,
    times: Arc<Mutex<Vec<Duration>>>,
    start: Instant,
}

impl ResourceMaker {
    fn new(error: fn() -> io::Error, fail_in: FailIn) -> Self {
        Self {
            error,
            fail_in,
            times: Arc::default(),
            start: Instant::now(),
        }
    }

    fn record(&self) {
        self.times.lock().unwrap().push(self.start.elapsed());
    }

    fn attempt_times(&self) -> Vec<Duration> {
        self.times.lock().unwrap().clone()
    }
}

impl Service<Addr> for ResourceMaker {
    type Response = Conn;
    type Error = io::Error;
    type Future = std::future::Ready<Result<Conn, io::Error>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), io::Error>> {
        match self.fail_in {
            FailIn::PollReady => {
                self.record();
                Poll::Ready(Err((self.error)()))
            }
            FailIn::Call => Poll::Ready(Ok(())),
        }
    }

    fn call(&mut self, _: Addr) -> Self::Future {
        self.record();
        std::future::ready(Err((self.error)()))
    }
}

/// Counts how many times the future inside was polled.
struct CountPolls<F> {
    polls: Arc<AtomicUsize>,
    future: Pin<Box<F>>,
}

impl<F: Future> Future for CountPolls<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        self.polls.fetch_add(1, Ordering::SeqCst);
        self.future.as_mut().poll(cx)
    }
}

/// Applies `layer` to 100 clones of one failing maker, brings the server back at 65 s, and
/// returns the times of the attempts made from then on (one per driver: each connects).
async fn herd_attempts_after_the_outage(layer: PersistentConnectionLayer<Addr>) -> Vec<Duration> {
    let maker = Maker::new([], Plan::Fail("refused"));
    let services: Vec<_> = (0..100).map(|_| layer.layer(maker.clone())).collect();
    sleep(secs(65)).await;
    maker.set_fallback(Plan::Connect);
    for svc in &services {
        within_an_hour("connected()", svc.handle().connected())
            .await
            .unwrap();
    }
    let after: Vec<_> = maker
        .attempt_times()
        .into_iter()
        .filter(|t| *t >= secs(65))
        .collect();
    assert_eq!(after.len(), 100, "one attempt per driver after the outage");
    after
}

// === 1. Server down at start ===

/// Scenario 1: the layer is created without error and `poll_ready` is Pending; the first
/// attempt is at once, the next ones one delay apart; the refusal is reported once; the
/// connection comes as soon as the server is up and the current delay ends.
#[tokio::test(start_paused = true)]
async fn s01_server_down_at_start_retries_with_the_delay_and_connects_when_it_comes_up() {
    let maker = Maker::new([], Plan::Fail("refused"));
    let events = Events::new();
    let mut svc = service(&maker, &events);
    let mut ready = poll_ready_of(&mut svc);
    assert_pending!(ready.poll());
    yield_until("the first attempt", || maker.attempts() >= 1).await;
    assert_eq!(maker.attempt_times(), vec![secs(0)]);

    sleep(secs(25)).await;
    assert_pending!(ready.poll());
    maker.set_fallback(Plan::Connect); // the server comes up at 25 s
    sleep(secs(5)).await;
    yield_until("connected", || events.count(support::connected) >= 1).await;

    assert!(ready.is_woken());
    assert_ready_ok!(ready.poll());
    assert_eq!(maker.attempt_times(), grid(DELAY, 4));
    assert_eq!(
        events.timed(),
        [
            (secs(0), "Attempting"),
            (secs(0), "Address(a)"),
            (secs(0), "Failed(connect failed: refused)"),
            (secs(30), "Connected(0)"),
        ]
        .map(|(t, e)| (t, e.to_string()))
    );
}

// === 2. Blackholed address at start ===

/// Scenario 2: a connect that never resolves (SYN dropped) ends at the connect timeout,
/// 20 s by default, not at the OS's ~127 s; it counts as a failure, the hung connect is
/// dropped, and the attempts go on.
#[tokio::test(start_paused = true)]
async fn s02_blackholed_connect_ends_at_the_default_connect_timeout_and_retries() {
    let maker = Maker::new([], Plan::Hang);
    let events = Events::new();
    let _svc = service(&maker, &events);

    sleep(secs(70)).await;
    // The 10 s delay has passed when each attempt times out: the next one starts at once.
    assert_eq!(maker.attempt_times(), grid(secs(20), 4));
    assert_eq!(
        maker.in_flight.load(Ordering::SeqCst),
        1,
        "only the current one"
    );
    assert_eq!(
        events.timed()[2],
        (
            secs(20),
            "Failed(connect attempt timed out after 20s while connecting)".to_string()
        )
    );
    assert_eq!(maker.connections(), 0);
}

// === 3. TCP accepted, handshake hangs ===

/// Scenario 3: when TCP is accepted but the handshake hangs, the per-attempt timeout covers
/// the handshake: the attempt fails at the timeout, the service never becomes ready, and the
/// next attempt follows the delay.
#[tokio::test(start_paused = true)]
async fn s03_hanging_handshake_fails_at_the_connect_timeout_and_never_becomes_ready() {
    let maker = HangingHandshake {
        accepted: Arc::default(),
        in_flight: Arc::default(),
    };
    let events = Events::new();
    let mut svc = layer()
        .connect_timeout(secs(5))
        .on_event(events.hook())
        .layer(maker.clone());
    let handle = svc.handle();
    let mut ready = poll_ready_of(&mut svc);
    assert_pending!(ready.poll());

    sleep(secs(25)).await;
    assert_eq!(
        maker.accepted.load(Ordering::SeqCst),
        3,
        "attempts at 0, 10, 20 s"
    );
    assert_eq!(
        maker.in_flight.load(Ordering::SeqCst),
        1,
        "only the current one"
    );
    assert_eq!(
        events.timed(),
        [
            (secs(0), "Attempting"),
            (secs(0), "Address(a)"),
            (
                secs(5),
                "Failed(connect attempt timed out after 5s while connecting)"
            ),
        ]
        .map(|(t, e)| (t, e.to_string()))
    );
    assert_pending!(ready.poll());
    assert_eq!(handle.state(), State::Connecting);
}

// === 9. Discovery error ===

/// Scenario 9: a failing discovery is a failed attempt carrying the discovery error, followed
/// by the delay; no connect is tried with no address, and nothing panics.
#[tokio::test(start_paused = true)]
async fn s09_discovery_error_is_a_failed_attempt_followed_by_the_delay() {
    let maker = Maker::always_connect();
    let events = Events::new();
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let svc = PersistentConnectionLayer::new(move || {
        let result: Result<Addr, BoxError> = match counter.fetch_add(1, Ordering::SeqCst) {
            0 | 1 => Err("catalog unavailable".into()),
            _ => Ok("a"),
        };
        std::future::ready(result)
    })
    .retry_delay(|| DELAY)
    .jitter(0.0)
    .on_event(events.hook())
    .layer(maker.clone());

    within_an_hour("connected()", svc.handle().connected())
        .await
        .unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    assert_eq!(maker.attempt_times(), vec![secs(20)]);
    assert_eq!(
        events.timed(),
        [
            (secs(0), "Attempting"),
            (
                secs(0),
                "Failed(address discovery failed: catalog unavailable)"
            ),
            (secs(20), "Address(a)"),
            (secs(20), "Connected(0)"),
        ]
        .map(|(t, e)| (t, e.to_string()))
    );
}

// === 10. Discovery hangs ===

/// Scenario 10: a discovery that never answers is bounded by the connect timeout (then the
/// delay, then discovery again), and `close` cancels the one in flight at once.
#[tokio::test(start_paused = true)]
async fn s10_hanging_discovery_is_bounded_by_the_connect_timeout_and_cancelled_by_close() {
    let maker = Maker::always_connect();
    let events = Events::new();
    let calls = Arc::new(AtomicUsize::new(0));
    let in_flight = Arc::new(AtomicUsize::new(0));
    let (counter, live) = (calls.clone(), in_flight.clone());
    let mut svc = PersistentConnectionLayer::new(move || {
        counter.fetch_add(1, Ordering::SeqCst);
        let guard = Live::new(&live);
        async move {
            let _guard = guard;
            std::future::pending::<Result<Addr, Infallible>>().await
        }
    })
    .retry_delay(|| DELAY)
    .jitter(0.0)
    .connect_timeout(secs(5))
    .on_event(events.hook())
    .layer(maker.clone());
    let handle = svc.handle();

    sleep(secs(7)).await;
    assert_eq!(
        events.timed()[1],
        (
            secs(5),
            "Failed(connect attempt timed out after 5s in address discovery)".to_string()
        )
    );
    assert_eq!(
        in_flight.load(Ordering::SeqCst),
        0,
        "the timed-out discovery is dropped"
    );

    sleep(secs(5)).await; // 12 s: the second discovery (from 10 s) hangs
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert_eq!(in_flight.load(Ordering::SeqCst), 1);
    let before = Instant::now();
    within_an_hour("close()", handle.close()).await;
    assert_eq!(
        Instant::now(),
        before,
        "close did not wait for the discovery"
    );
    assert_eq!(
        in_flight.load(Ordering::SeqCst),
        0,
        "close dropped the discovery"
    );
    let mut ready = poll_ready_of(&mut svc);
    assert!(assert_ready!(ready.poll()).unwrap_err().is::<Closed>());
    assert_eq!(maker.attempts(), 0);
}

// === 11. Discovery returns a stale address ===

/// Scenario 11: an attempt to a stale (dead) address fails, discovery runs again before the
/// next attempt, and the address event fires only when the address changes.
#[tokio::test(start_paused = true)]
async fn s11_stale_address_fails_and_discovery_runs_again_on_the_next_attempt() {
    let maker = Maker::new(
        [Plan::Fail("refused"), Plan::Fail("refused")],
        Plan::Connect,
    );
    let events = Events::new();
    let calls = Arc::new(AtomicUsize::new(0));
    let svc = PersistentConnectionLayer::new(support::addresses(
        &["dead", "dead", "live"],
        calls.clone(),
    ))
    .retry_delay(|| DELAY)
    .jitter(0.0)
    .on_event(events.hook())
    .layer(maker.clone());

    within_an_hour("connected()", svc.handle().connected())
        .await
        .unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 3, "one discovery per attempt");
    assert_eq!(maker.attempt_addrs(), ["dead", "dead", "live"]);
    assert_eq!(
        events.names(),
        [
            "Attempting",
            "Address(dead)",
            "Failed(connect failed: refused)",
            "Address(live)",
            "Connected(0)",
        ]
    );
}

// === 12. Address changes while connected ===

/// Scenario 12: a change of address while connected causes no reconnect (discovery runs per
/// attempt only); the new address is used when the connection is lost.
#[tokio::test(start_paused = true)]
async fn s12_address_change_while_connected_is_used_only_on_the_next_reconnect() {
    let maker = Maker::always_connect();
    let events = Events::new();
    let address = Arc::new(Mutex::new("a"));
    let calls = Arc::new(AtomicUsize::new(0));
    let (current, counter) = (address.clone(), calls.clone());
    let svc = PersistentConnectionLayer::new(move || {
        counter.fetch_add(1, Ordering::SeqCst);
        std::future::ready(Ok::<Addr, Infallible>(*current.lock().unwrap()))
    })
    .retry_delay(|| DELAY)
    .jitter(0.0)
    .on_event(events.hook())
    .close_signal(|c: &Conn| c.closed())
    .layer(maker.clone());
    let handle = svc.handle();
    within_an_hour("connected()", handle.connected())
        .await
        .unwrap();

    *address.lock().unwrap() = "b";
    sleep(HOUR).await;
    assert_eq!(maker.attempt_addrs(), ["a"]);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(handle.current_connection().unwrap().addr(), "a");

    maker.conn(0).kill();
    yield_until("connected to b, and reported", || {
        handle.current_connection().is_some_and(|c| c.addr() == "b")
            && events.count(support::connected) >= 2
    })
    .await;
    assert_eq!(maker.attempt_addrs(), ["a", "b"]);
    assert_eq!(handle.current_connection().unwrap().addr(), "b");
    assert_eq!(
        events.names(),
        [
            "Attempting",
            "Address(a)",
            "Connected(0)",
            "Disconnected",
            "Attempting",
            "Address(b)",
            "Connected(1)",
        ]
    );
}

// === 13. Flapping server ===

/// Scenario 13: a server that accepts and drops each connection after 5 ms is tried once per
/// retry delay over an hour, never faster; every connection is reported as `Connected` then
/// `Disconnected`, and no failure is invented.
#[tokio::test(start_paused = true)]
async fn s13_flapping_server_is_reconnected_at_most_once_per_delay() {
    let maker = Maker::always_connect();
    let events = Events::new();
    let _svc = layer()
        .on_event(events.hook())
        .close_signal(|c: &Conn| c.closed())
        .layer(flapping(&maker, ms(5), false));

    sleep(HOUR + secs(5)).await;
    let attempts = maker.attempt_times();
    assert_eq!(attempts, grid(DELAY, 361));
    assert!(attempts.len() as u64 <= HOUR.as_secs() / DELAY.as_secs() + 1);
    assert_eq!(count(&events, "Attempting"), 361);
    assert_eq!(count(&events, "Disconnected"), 361);
    assert_eq!(
        events
            .names()
            .iter()
            .filter(|e| e.starts_with("Connected"))
            .count(),
        361
    );
    assert!(!events.names().iter().any(|e| e.starts_with("Failed")));
    assert_eq!(maker.live.load(Ordering::SeqCst), 0);
}

/// Scenario 13, with goodbyes: a server that closes each connection gracefully 5 ms after
/// accepting it, before answering anything (a proxy with no backend), is still tried only once
/// per delay: a goodbye is replaced at once only from a connection that served (or outlived
/// the flap guard).
#[tokio::test(start_paused = true)]
async fn s13_flapping_server_that_says_goodbye_is_reconnected_at_most_once_per_delay() {
    let maker = Maker::always_connect();
    let events = Events::new();
    let _svc = layer()
        .on_event(events.hook())
        .close_signal(|c: &Conn| c.closed())
        .layer(flapping(&maker, ms(5), true));

    sleep(HOUR + secs(5)).await;
    assert_eq!(maker.attempt_times(), grid(DELAY, 361));
    assert_eq!(count(&events, "Disconnected"), 361);
}

// === 14. Long outage ===

/// Scenario 14: over a 3-hour outage with a 10 s delay and no jitter the attempts stay on the
/// 10 s grid (at most hours * 3600 / delay + 1, no drift after a thousand attempts); the
/// recovery follows within one delay; the event log holds only the de-duplicated events; the
/// handle's futures resolve; no attempt future is kept.
#[tokio::test(start_paused = true)]
async fn s14_long_outage_keeps_the_attempt_grid_and_recovers_within_one_delay() {
    let maker = Maker::new([], Plan::Fail("refused"));
    let events = Events::new();
    let svc = service(&maker, &events);
    let handle = svc.handle();
    let first_outcome = tokio::spawn(handle.connected_or_failed_to_connect());
    let connected = tokio::spawn(handle.connected());
    yield_until("the first outcome", || first_outcome.is_finished()).await;
    assert!(first_outcome.is_finished());
    match first_outcome.await.unwrap() {
        Err(error) => assert_eq!(error.to_string(), "connect failed: refused"),
        Ok(_) => panic!("connected during the outage"),
    }

    let outage = 3 * HOUR;
    sleep(outage + secs(3)).await;
    let attempts = maker.attempt_times();
    let bound = outage.as_secs() / DELAY.as_secs() + 1;
    assert_eq!(attempts.len() as u64, bound);
    assert_eq!(attempts, grid(DELAY, bound as u32), "no drift");
    assert_eq!(maker.in_flight.load(Ordering::SeqCst), 0);
    assert_eq!(
        events.names().len(),
        3,
        "the log did not grow: {:?}",
        events.names()
    );

    maker.set_fallback(Plan::Connect);
    let back = Instant::now();
    assert!(!connected.is_finished());
    assert_eq!(
        within_an_hour("connected()", connected)
            .await
            .unwrap()
            .unwrap()
            .id(),
        0
    );
    let lag = Instant::now() - back;
    assert_eq!(lag, secs(7), "the attempt at 3 h + 10 s connected");
    assert!(lag <= DELAY);
    assert_eq!(
        events.names(),
        [
            "Attempting",
            "Address(a)",
            "Failed(connect failed: refused)",
            "Connected(0)"
        ]
    );
}

/// Scenario 14, jittered (±30 %, seeded): over a 3-hour outage every gap stays within
/// [0.7, 1.3] delays, so the attempts number at most hours * 3600 / min delay + 1 (and at
/// least hours * 3600 / max delay); the recovery lag is at most delay * (1 + jitter).
#[tokio::test(start_paused = true)]
async fn s14_long_outage_with_jitter_bounds_the_attempt_rate_and_recovery_lag() {
    let maker = Maker::new([], Plan::Fail("refused"));
    let events = Events::new();
    let svc = layer()
        .jitter(0.3)
        .rng_seed(14)
        .on_event(events.hook())
        .layer(maker.clone());
    let handle = svc.handle();

    let outage = 3 * HOUR;
    sleep(outage).await;
    let (min_delay, max_delay) = (DELAY.mul_f64(0.7), DELAY.mul_f64(1.3));
    // Tokio's timers have a 1 ms resolution: a deadline fires at most 1 ms late.
    let tick = ms(1);
    let attempts = maker.attempt_times();
    assert!(
        attempts.len() as u64 <= outage.as_secs() / 7 + 1,
        "{}",
        attempts.len()
    );
    assert!(
        attempts.len() as u64 >= outage.as_secs() / 13,
        "{}",
        attempts.len()
    );
    for gap in gaps(&attempts) {
        assert!(min_delay <= gap && gap <= max_delay + tick, "{gap:?}");
    }
    assert_eq!(events.names().len(), 3, "the log did not grow");

    maker.set_fallback(Plan::Connect);
    let back = Instant::now();
    within_an_hour("connected()", handle.connected())
        .await
        .unwrap();
    let lag = Instant::now() - back;
    assert!(lag <= max_delay + tick, "{lag:?}");
}

// === 15. Thundering herd ===

/// Scenario 15: 100 drivers from one seeded layer whose server is down for 65 s come back
/// spread out: at most 25 attempts within any 1 s window after the outage, where without
/// jitter all 100 come in the same instant.
#[tokio::test(start_paused = true)]
async fn s15_thundering_herd_is_spread_by_per_driver_jitter() {
    let jittered = herd_attempts_after_the_outage(layer().jitter(0.3).rng_seed(15)).await;
    let peak = peak_per_window(&jittered, secs(1));
    // The scenario's bound is 25; paused and seeded, the run is exact: 14 (the figure
    // RELIABILITY.md quotes). A change of the jitter's random stream (a `rand` upgrade) may
    // move it, within the bound.
    assert!(peak <= 25, "{peak} attempts within 1 s");
    assert_eq!(
        peak, 14,
        "the seeded run changed: {peak} attempts within 1 s"
    );

    // The measure itself: without jitter the herd comes back at once.
    let lockstep = herd_attempts_after_the_outage(layer()).await;
    assert_eq!(peak_per_window(&lockstep, secs(1)), 100);
}

// === 16. Close while connecting ===

/// Scenario 16: `close()` during a connect drops the connect future at once, finishes without
/// waiting, never adopts the connection that connect would have made, and `poll_ready`
/// returns `Closed`.
#[tokio::test(start_paused = true)]
async fn s16_close_while_connecting_cancels_the_connect_at_once() {
    let maker = Maker::new([], Plan::ConnectAfter(secs(5)));
    let events = Events::new();
    let mut svc = service(&maker, &events);
    let handle = svc.handle();
    sleep(secs(1)).await;
    assert_eq!(maker.in_flight.load(Ordering::SeqCst), 1);

    let before = Instant::now();
    within_an_hour("close()", handle.close()).await;
    assert_eq!(Instant::now(), before, "close did not wait for the connect");
    assert_eq!(maker.in_flight.load(Ordering::SeqCst), 0);

    sleep(HOUR).await;
    assert_eq!(maker.connections(), 0, "the connect never completed");
    assert_eq!(maker.attempts(), 1);
    assert_eq!(events.names(), ["Attempting", "Address(a)"]);
    let mut ready = poll_ready_of(&mut svc);
    assert!(assert_ready!(ready.poll()).unwrap_err().is::<Closed>());
}

// === 17. Close during the retry delay ===

/// Scenario 17: `close()` while waiting out the delay finishes at once and no attempt
/// follows.
#[tokio::test(start_paused = true)]
async fn s17_close_during_the_retry_delay_is_immediate_and_stops_the_attempts() {
    let maker = Maker::new([], Plan::Fail("refused"));
    let events = Events::new();
    let svc = service(&maker, &events);
    let handle = svc.handle();
    sleep(secs(3)).await;
    assert!(matches!(handle.state(), State::Waiting { .. }));

    let before = Instant::now();
    within_an_hour("close()", handle.close()).await;
    assert_eq!(Instant::now(), before);
    sleep(HOUR).await;
    assert_eq!(maker.attempts(), 1);
    assert_eq!(handle.state(), State::Closed);
}

// === 18. Close while connected, requests in flight ===

/// Scenario 18: `close()` while connected with three requests in flight does not wait for
/// them: `closed()` resolves at once, with the connection dropped; the requests then finish
/// on their own; a second `close()` is idempotent (one `Disconnected`, resolves at once).
#[tokio::test(start_paused = true)]
async fn s18_close_with_requests_in_flight_lets_them_finish_and_is_idempotent() {
    let maker = Maker::always_connect();
    let disconnects = Arc::new(AtomicUsize::new(0));
    let counter = disconnects.clone();
    let svc = layer()
        .on_event(move |e: &Event<Addr, SlowConn>| {
            if matches!(e, Event::Disconnected) {
                counter.fetch_add(1, Ordering::SeqCst);
            }
        })
        .layer(maker.clone().map_response(SlowConn));
    let handle = svc.handle();
    within_an_hour("connected()", handle.connected())
        .await
        .unwrap();

    let requests: Vec<_> = (0..3)
        .map(|i| {
            let mut svc = svc.clone();
            tokio::spawn(async move {
                // The clone is dropped once the request is sent, as `oneshot` does.
                let response = {
                    svc.ready().await?;
                    svc.call(format!("r{i}"))
                };
                drop(svc);
                response.await
            })
        })
        .collect();
    yield_until("three calls in flight", || maker.conn(0).calls() >= 3).await;
    assert_eq!(maker.conn(0).calls(), 3, "all three in flight");

    let before = Instant::now();
    let closing = handle.close();
    assert!(handle.is_closed());
    within_an_hour("close()", closing).await;
    assert_eq!(
        Instant::now(),
        before,
        "closing did not wait for the requests"
    );
    assert_eq!(
        maker.live.load(Ordering::SeqCst),
        0,
        "the connection is dropped"
    );
    assert!(requests.iter().all(|r| !r.is_finished()));

    for (i, request) in requests.into_iter().enumerate() {
        assert_eq!(
            within_an_hour("a request", request).await.unwrap().unwrap(),
            format!("0:r{i}")
        );
    }
    assert_eq!(
        Instant::now() - before,
        secs(2),
        "they finished on their own"
    );

    let before = Instant::now();
    within_an_hour("close()", handle.close()).await;
    within_an_hour("closed()", handle.closed()).await;
    assert_eq!(Instant::now(), before);
    assert_eq!(disconnects.load(Ordering::SeqCst), 1);
    assert_eq!(maker.attempts(), 1);
}

// === 19. All handles dropped ===

/// Scenario 19: once every service clone and handle is dropped while connected, the driver
/// task ends (it drops the maker) and the connection is dropped.
#[tokio::test(start_paused = true)]
async fn s19_dropping_every_handle_while_connected_ends_the_task_and_the_connection() {
    let metrics = tokio::runtime::Handle::current().metrics();
    let tasks = metrics.num_alive_tasks();
    let maker = Maker::always_connect();
    let events = Events::new();
    let svc = service(&maker, &events);
    let clone = svc.clone();
    let handle = svc.handle();
    within_an_hour("connected()", handle.connected())
        .await
        .unwrap();
    assert_eq!(metrics.num_alive_tasks(), tasks + 1);
    assert_eq!(maker.live.load(Ordering::SeqCst), 1);

    drop((svc, clone, handle));
    yield_until("the driver task ended and dropped the connection", || {
        metrics.num_alive_tasks() == tasks && maker.live.load(Ordering::SeqCst) == 0
    })
    .await;
    assert_eq!(metrics.num_alive_tasks(), tasks, "the driver task ended");
    assert_eq!(
        maker.live.load(Ordering::SeqCst),
        0,
        "the connection is dropped"
    );
    // Only the test's maker is left: the driver's copy was dropped with the task.
    assert_eq!(Arc::strong_count(&maker.live), 1);
}

/// Scenario 19, during an outage: dropping every service clone and handle in the middle of a
/// retry delay ends the driver task at once; no attempt follows.
#[tokio::test(start_paused = true)]
async fn s19_dropping_every_handle_during_the_delay_ends_the_task_at_once() {
    let metrics = tokio::runtime::Handle::current().metrics();
    let tasks = metrics.num_alive_tasks();
    let maker = Maker::new([], Plan::Fail("refused"));
    let events = Events::new();
    let svc = service(&maker, &events);
    let handle = svc.handle();
    sleep(secs(3)).await;
    assert_eq!(metrics.num_alive_tasks(), tasks + 1);

    drop((svc, handle));
    yield_until("the driver task ended", || {
        metrics.num_alive_tasks() == tasks && Arc::strong_count(&maker.live) == 1
    })
    .await;
    assert_eq!(metrics.num_alive_tasks(), tasks, "the driver task ended");
    assert_eq!(Arc::strong_count(&maker.live), 1);
    sleep(HOUR).await;
    assert_eq!(maker.attempts(), 1);
}

// === 20. Ready, then disconnect before call ===

/// Scenario 20: a clone that was ready on connection 0, which then dies and is replaced by
/// connection 1, sends its `call` to connection 0 and gets that connection's error at once
/// (no panic, no hang, nothing sent to connection 1); its next `poll_ready` takes
/// connection 1.
#[tokio::test(start_paused = true)]
async fn s20_call_after_the_ready_connection_died_fails_with_its_error() {
    let maker = Maker::always_connect();
    let events = Events::new();
    let mut svc = service(&maker, &events);
    let handle = svc.handle();
    sleep(secs(30)).await;
    within_an_hour("poll_ready", ServiceExt::<String>::ready(&mut svc))
        .await
        .unwrap();

    maker.conn(0).kill();
    yield_until("connection 1 is current", || {
        handle.current_connection().is_some_and(|c| c.id() == 1)
    })
    .await;
    assert_eq!(handle.current_connection().unwrap().id(), 1);

    let response = tokio::time::timeout(secs(1), svc.call("x".to_string()))
        .await
        .expect("the call did not hang");
    assert_eq!(response.unwrap_err().to_string(), "connection 0 is dead");
    assert_eq!(maker.conn(1).calls(), 0);

    let response = within_an_hour("the next request", async {
        svc.ready().await?.call("y".to_string()).await
    })
    .await;
    assert_eq!(response.unwrap(), "1:y");
}

// === 21. Many waiters ===

/// Scenario 21: 100 tasks waiting in `poll_ready` are each woken exactly once when the
/// connection arrives (each is polled twice: Pending, then Ready) and all proceed at that
/// instant; one connect serves them all.
#[tokio::test(start_paused = true)]
async fn s21_many_waiters_all_wake_once_on_a_single_connect() {
    let maker = Maker::new([], Plan::ConnectAfter(secs(3)));
    let events = Events::new();
    let svc = service(&maker, &events);
    let start = Instant::now();
    let waiters: Vec<_> = (0..100)
        .map(|_| {
            let mut svc = svc.clone();
            let polls = Arc::new(AtomicUsize::new(0));
            let task = tokio::spawn(CountPolls {
                polls: polls.clone(),
                future: Box::pin(async move {
                    ServiceExt::<String>::ready(&mut svc).await.unwrap();
                    Instant::now() - start
                }),
            });
            (polls, task)
        })
        .collect();
    yield_until("every waiter polled", || {
        waiters
            .iter()
            .all(|(polls, _)| polls.load(Ordering::SeqCst) >= 1)
    })
    .await;
    assert!(
        waiters
            .iter()
            .all(|(polls, _)| polls.load(Ordering::SeqCst) == 1)
    );

    for (polls, task) in waiters {
        assert_eq!(within_an_hour("a waiter", task).await.unwrap(), secs(3));
        assert_eq!(polls.load(Ordering::SeqCst), 2);
    }
    assert_eq!(maker.attempts(), 1);
    assert_eq!(maker.connections(), 1);
}

// === 22. Panics in user code ===

/// Scenario 22: a panic in discovery and one in connect are each reported as a failed
/// attempt, and an event observer that panics on every event loses nothing: the loop goes
/// on and connects.
#[tokio::test(start_paused = true)]
async fn s22_panics_in_discovery_connect_and_observer_are_failures_and_the_loop_goes_on() {
    let maker = Maker::new([Plan::Panic], Plan::Connect);
    let events = Events::new();
    let record = events.hook();
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let svc = PersistentConnectionLayer::new(move || {
        if counter.fetch_add(1, Ordering::SeqCst) == 0 {
            panic!("discovery exploded");
        }
        std::future::ready(Ok::<Addr, Infallible>("a"))
    })
    .retry_delay(|| DELAY)
    .jitter(0.0)
    .on_event(move |e: &Event<Addr, Conn>| {
        record(e);
        panic!("observer exploded");
    })
    .layer(maker.clone());

    let conn = within_an_hour("connected()", svc.handle().connected())
        .await
        .unwrap();
    assert_eq!(conn.id(), 0);
    assert_eq!(maker.attempt_times(), [secs(10), secs(20)]);
    assert_eq!(
        events.names(),
        [
            "Attempting",
            "Failed(connect attempt panicked: discovery exploded)",
            "Address(a)",
            "Failed(connect attempt panicked: maker exploded)",
            "Connected(0)",
        ]
    );
}

// === 23. Inner poll_ready fails ===

/// Scenario 23: when the connection's own `poll_ready` fails (and no close signal fired),
/// the connection is dropped, `Disconnected` is reported, and the next connection is made;
/// meanwhile `poll_ready` is Pending.
#[tokio::test(start_paused = true)]
async fn s23_failing_inner_poll_ready_is_a_disconnect_and_reconnects() {
    let maker = Maker::always_connect();
    let events = Events::new();
    let mut svc = layer().on_event(events.hook()).layer(maker.clone());
    let handle = svc.handle();
    sleep(secs(30)).await;
    let mut ready = poll_ready_of(&mut svc);
    assert_ready_ok!(ready.poll());

    maker.conn(0).fail();
    assert_pending!(ready.poll());
    yield_until("connection 1 is current", || {
        handle.current_connection().is_some_and(|c| c.id() == 1)
    })
    .await;
    assert!(ready.is_woken());
    assert_ready_ok!(ready.poll());
    drop(ready);

    assert_eq!(svc.get_ref().unwrap().id(), 1);
    assert_eq!(handle.current_connection().unwrap().id(), 1);
    assert_eq!(
        maker.live.load(Ordering::SeqCst),
        1,
        "connection 0 is dropped"
    );
    assert_eq!(events.names(), support::RECONNECTED_ONCE);
}

// === 25. Reconnect now ===

/// Scenario 25: `reconnect_now()` during the delay attempts at once, and the delay starts
/// afresh from that attempt.
#[tokio::test(start_paused = true)]
async fn s25_reconnect_now_during_the_delay_attempts_at_once_and_restarts_the_delay() {
    let maker = Maker::new(
        [Plan::Fail("refused"), Plan::Fail("refused")],
        Plan::Connect,
    );
    let events = Events::new();
    let svc = service(&maker, &events);
    let handle = svc.handle();
    sleep(secs(3)).await;

    handle.reconnect_now();
    yield_until("the attempt reconnect_now asked for", || {
        maker.attempts() >= 2
    })
    .await;
    assert_eq!(maker.attempt_times(), [secs(0), secs(3)]);

    within_an_hour("connected()", handle.connected())
        .await
        .unwrap();
    assert_eq!(maker.attempt_times(), [secs(0), secs(3), secs(13)]);
}

// === 26. Resource errors on connect ===

/// The attempt times of a maker failing with `error` in `fail_in` over 10 minutes, and the
/// events.
async fn resource_error_attempts(
    error: fn() -> io::Error,
    fail_in: FailIn,
) -> (Vec<Duration>, Vec<String>) {
    let maker = ResourceMaker::new(error, fail_in);
    let events = Events::new();
    let _svc = layer().on_event(events.hook()).layer(maker.clone());
    sleep(secs(600 + 5)).await;
    (maker.attempt_times(), events.names())
}

/// Scenario 26: "too many open files" from connect is an ordinary failure: one attempt per
/// delay over 10 minutes (61), never a tight loop, reported once.
#[tokio::test(start_paused = true)]
async fn s26_too_many_open_files_is_an_ordinary_failure_with_the_delay() {
    let (attempts, events) = resource_error_attempts(
        || io::Error::other("Too many open files (os error 24)"),
        FailIn::Call,
    )
    .await;
    assert_eq!(attempts, grid(DELAY, 61));
    assert_eq!(
        events,
        [
            "Attempting",
            "Address(a)",
            "Failed(connect failed: Too many open files (os error 24))"
        ]
    );
}

/// Scenario 26: "address not available" from the maker's `poll_ready` (no local port left)
/// is an ordinary failure too: one attempt per delay over 10 minutes, reported once.
#[tokio::test(start_paused = true)]
async fn s26_address_not_available_in_poll_ready_is_an_ordinary_failure_with_the_delay() {
    let (attempts, events) = resource_error_attempts(
        || io::Error::from(io::ErrorKind::AddrNotAvailable),
        FailIn::PollReady,
    )
    .await;
    assert_eq!(attempts, grid(DELAY, 61));
    assert_eq!(
        events,
        [
            "Attempting",
            "Address(a)",
            "Failed(connect failed: address not available)"
        ]
    );
}

// === 27. Time behaviour ===

/// Scenario 27: `advance` by 3 hours in one step during the delay gives one attempt, not a
/// burst of the 1080 that were "due"; the next one comes a full delay later.
#[tokio::test(start_paused = true)]
async fn s27_a_jump_of_hours_gives_one_attempt_not_a_burst() {
    let maker = Maker::new([], Plan::Fail("refused"));
    let events = Events::new();
    let _svc = service(&maker, &events);
    yield_until("the first attempt", || maker.attempts() >= 1).await;
    assert_eq!(maker.attempts(), 1);

    advance(3 * HOUR).await;
    yield_until("the attempt after the jump", || maker.attempts() >= 2).await;
    assert_eq!(maker.attempt_times(), [secs(0), 3 * HOUR]);

    advance(DELAY - ms(1)).await;
    let_tasks_run().await;
    assert_eq!(maker.attempts(), 2);
    advance(ms(1)).await;
    yield_until("the attempt one delay later", || maker.attempts() >= 3).await;
    assert_eq!(maker.attempt_times(), [secs(0), 3 * HOUR, 3 * HOUR + DELAY]);
}

/// Scenario 27: the timers of drivers with delays of 3, 5 and 7 s fire in order, each at its
/// own deadline: over 31 s their attempts interleave exactly as the three grids do.
#[tokio::test(start_paused = true)]
async fn s27_timers_of_several_drivers_fire_in_order() {
    let maker = Maker::new([], Plan::Fail("refused"));
    let drivers: [(Addr, u64); 3] = [("three", 3), ("five", 5), ("seven", 7)];
    let _services: Vec<_> = drivers
        .iter()
        .map(|&(name, delay)| {
            PersistentConnectionLayer::fixed_address(name)
                .retry_delay(move || secs(delay))
                .jitter(0.0)
                .layer(maker.clone())
        })
        .collect();
    sleep(secs(31)).await;

    let mut expected: Vec<(Duration, Addr)> = drivers
        .iter()
        .flat_map(|&(name, delay)| (0..=30 / delay).map(move |k| (secs(k * delay), name)))
        .collect();
    expected.sort();
    let mut observed: Vec<(Duration, Addr)> = maker
        .attempt_times()
        .into_iter()
        .zip(maker.attempt_addrs())
        .collect();
    // Timers due at the same instant fire in any order; the sort only orders ties.
    observed.sort();
    assert_eq!(observed, expected);
}

// === 28. Repeated identical errors ===

/// Scenario 28: a streak of identical errors is reported once, a different error once, and
/// the first error again once it returns, while every one of the 9 attempts is made.
#[tokio::test(start_paused = true)]
async fn s28_repeated_identical_errors_are_reported_once_per_streak_but_every_attempt_is_made() {
    let refused = Plan::Fail("refused");
    let reset = Plan::Fail("reset");
    let maker = Maker::new(
        [
            refused.clone(),
            refused.clone(),
            refused.clone(),
            refused.clone(),
            refused.clone(),
            reset.clone(),
            reset,
            refused,
        ],
        Plan::Connect,
    );
    let events = Events::new();
    let svc = service(&maker, &events);
    within_an_hour("connected()", svc.handle().connected())
        .await
        .unwrap();

    assert_eq!(maker.attempt_times(), grid(DELAY, 9));
    assert_eq!(
        events.names(),
        [
            "Attempting",
            "Address(a)",
            "Failed(connect failed: refused)",
            "Failed(connect failed: reset)",
            "Failed(connect failed: refused)",
            "Connected(0)",
        ]
    );
}
