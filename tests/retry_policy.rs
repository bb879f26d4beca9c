//! Retry policies: the delay schedule they give, the flap guard, giving up, the context a
//! policy sees, and the counters of `Handle::stats`.

#[path = "support/logs.rs"]
mod logs;
mod support;

use std::{
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex},
    time::Duration,
};

use logs::LogRecorder;
use persistent_connection::{
    Closed, ConnectError, ConnectErrorKind, Handle, PersistentConnectionLayer, State,
    close::CloseReason,
    observe::Stats,
    retry::{Constant, Exponential, RetryContext, RetryPolicy, policy_fn},
};
use support::{Conn, Maker, Plan, ms, secs, yield_until};
use tokio_test::{assert_pending, assert_ready};
use tower::{Layer, ServiceExt};
use tracing::Level;

// === Helpers ===

/// The gaps between consecutive times.
fn gaps(times: &[Duration]) -> Vec<Duration> {
    times.windows(2).map(|w| w[1] - w[0]).collect()
}

/// Whether `actual` is within 1 ms of `expected` (the timer's resolution).
fn within_a_millisecond(actual: Duration, expected: Duration) -> bool {
    actual.abs_diff(expected) <= ms(1)
}

/// The future a close signal returns: boxed, so that a helper can name its type.
type ClosedFuture = Pin<Box<dyn Future<Output = CloseReason> + Send>>;

/// A close signal that kills every connection `life` after it is made (its `poll_ready`
/// fails and its own close signal fires), and reports that close.
fn dies_after(life: Duration) -> impl Fn(&Conn) -> ClosedFuture + Send + Sync + 'static {
    move |conn: &Conn| {
        let conn = conn.clone();
        Box::pin(async move {
            tokio::time::sleep(life).await;
            conn.kill();
            conn.closed().await
        })
    }
}

/// The `Display` text of a stats snapshot's last error.
fn error_text(error: Option<&ConnectError>) -> Option<String> {
    error.map(ToString::to_string)
}

/// The counters of a [`Stats`] snapshot, comparable as a whole (with the error as text).
#[derive(Debug, PartialEq, Eq)]
struct Counters {
    attempts: u64,
    failed_attempts: u64,
    connections: u64,
    disconnections: u64,
    connected_for: Option<Duration>,
    last_error: Option<String>,
    next_delay: Option<Duration>,
    consecutive_failures: u32,
}

impl From<Stats> for Counters {
    fn from(stats: Stats) -> Self {
        Self {
            attempts: stats.attempts,
            failed_attempts: stats.failed_attempts,
            connections: stats.connections,
            disconnections: stats.disconnections,
            connected_for: stats.connected_for,
            last_error: error_text(stats.last_error.as_ref()),
            next_delay: stats.next_delay,
            consecutive_failures: stats.consecutive_failures,
        }
    }
}

// === Exponential schedules ===

/// With `Exponential::grpc()` and no jitter, attempts against a server that always refuses
/// follow gRPC's schedule: each gap is `1 s × 1.6^n` (0, 1, 2.6, 5.16, 9.256 s, ...), and once
/// the cap is reached every gap is exactly 120 s.
#[tokio::test(start_paused = true)]
async fn grpc_policy_attempts_follow_grpc_schedule_and_stay_at_the_cap() {
    let maker = Maker::new([], Plan::Fail("refused"));
    let _svc = PersistentConnectionLayer::fixed_address("a")
        .retry_policy(Exponential::grpc())
        .jitter(0.0)
        .layer(maker.clone());
    tokio::time::sleep(secs(1000)).await;
    let times = maker.attempt_times();

    // gRPC's connection backoff: INITIAL_BACKOFF 1 s, MULTIPLIER 1.6, MAX_BACKOFF 120 s.
    let delay = |n: usize| Duration::from_secs_f64(1.6_f64.powi(n as i32).min(120.0));
    assert!(times.len() > 14, "{times:?}");
    // Each gap is the policy's delay, within the timer's 1 ms resolution.
    for (n, gap) in gaps(&times).into_iter().enumerate() {
        assert!(
            within_a_millisecond(gap, delay(n)),
            "gap {n} is {gap:?}, expected {:?}: {times:?}",
            delay(n)
        );
    }
    // The first delays are whole milliseconds, so the first attempt times are exact: 0, 1,
    // 2.6, 5.16, 9.256 s. (Later ones may each be rounded up to the next millisecond by the
    // timer, and the next delay counts from there.)
    let expected: Vec<Duration> = (0..5)
        .scan(Duration::ZERO, |at, n| {
            let this = *at;
            *at += delay(n);
            Some(this)
        })
        .collect();
    assert_eq!(
        expected,
        [0, 1000, 2600, 5160, 9256].map(ms),
        "the formula itself"
    );
    assert_eq!(times[..5], expected);
    // The cap: 1.6^11 > 120, so from the 12th gap on every gap is the cap exactly.
    let capped = &gaps(&times)[11..];
    assert!(capped.len() >= 3, "{times:?}");
    assert!(capped.iter().all(|gap| *gap == secs(120)), "{capped:?}");
}

/// The layer's jitter applies to the policy's delay after its cap: at the cap of
/// `Exponential::new(1 s, 2, 10 s)` the gaps still spread over `[7 s, 13 s]` (±30 %), below
/// and above 10 s.
///
/// (tower 0.5's `ExponentialBackoff` limits its jitter to `max - base`, so at the cap every
/// one of its backoffs would be exactly `max`: clients that failed together retry together.)
#[tokio::test(start_paused = true)]
async fn jitter_still_spreads_delays_at_the_policy_cap() {
    let maker = Maker::new([], Plan::Fail("refused"));
    let _svc = PersistentConnectionLayer::fixed_address("a")
        .retry_policy(Exponential::new(secs(1), 2.0, secs(10)))
        .rng_seed(7)
        .layer(maker.clone());
    tokio::time::sleep(secs(2600)).await;
    let times = maker.attempt_times();
    assert!(times.len() >= 205, "only {} attempts", times.len());

    // The delay before attempt n is min(2^n, 10) s: from attempt 4 on, the cap.
    let capped = &gaps(&times)[4..204];
    let (low, high) = (ms(7000), ms(13_001)); // 13 s plus the timer's 1 ms resolution
    assert!(
        capped.iter().all(|gap| (low..=high).contains(gap)),
        "{capped:?}"
    );
    assert!(capped.iter().any(|gap| *gap < secs(10)), "{capped:?}");
    assert!(capped.iter().any(|gap| *gap > secs(10)), "{capped:?}");
    assert!(capped.iter().any(|gap| *gap != capped[0]), "{capped:?}");
}

// === Flap guard ===

/// Connections that die 5 ms after they are made (within the 1 s flap guard) count as
/// failures: with `Exponential::new(1 s, 2, 60 s)` the gaps between attempts double (1, 2, 4,
/// 8, 16, 32 s), though every attempt connected.
#[tokio::test(start_paused = true)]
async fn connections_dying_within_the_flap_guard_make_the_delay_grow() {
    let maker = Maker::always_connect();
    let svc = PersistentConnectionLayer::fixed_address("a")
        .retry_policy(Exponential::new(secs(1), 2.0, secs(60)))
        .jitter(0.0)
        .close_signal(dies_after(ms(5)))
        .layer(maker.clone());
    tokio::time::sleep(secs(70)).await;
    yield_until("seven attempts", || maker.attempts() >= 7).await;
    let times = maker.attempt_times();
    assert_eq!(
        gaps(&times),
        [1, 2, 4, 8, 16, 32].map(secs).to_vec(),
        "{times:?}"
    );
    let stats = svc.handle().stats();
    assert_eq!(
        (
            stats.connections,
            stats.failed_attempts,
            stats.consecutive_failures
        ),
        (7, 0, 7)
    );
}

/// Connections that live 2 s (at least the 1 s flap guard) reset the failure count: the delay
/// stays at the initial 1 s, so each new connection is made as soon as the last one dies
/// (gaps of 2 s; without the reset they would grow to 4 and 8 s).
#[tokio::test(start_paused = true)]
async fn connections_outliving_the_flap_guard_keep_the_initial_delay() {
    let maker = Maker::always_connect();
    let svc = PersistentConnectionLayer::fixed_address("a")
        .retry_policy(Exponential::new(secs(1), 2.0, secs(60)))
        .jitter(0.0)
        .close_signal(dies_after(secs(2)))
        .layer(maker.clone());
    tokio::time::sleep(secs(13)).await;
    yield_until("seven attempts", || maker.attempts() >= 7).await;
    let times = maker.attempt_times();
    assert_eq!(gaps(&times), vec![secs(2); 6], "{times:?}");
    let stats = svc.handle().stats();
    assert_eq!(stats.next_delay, Some(secs(1)));
    assert_eq!(stats.consecutive_failures, 0);
}

/// `flap_guard(Duration::ZERO)` makes every connection reset the count, however short its
/// life: connections dying after 5 ms give gaps of 1 s that never grow.
#[tokio::test(start_paused = true)]
async fn a_zero_flap_guard_resets_the_delay_after_any_connection() {
    let maker = Maker::always_connect();
    let _svc = PersistentConnectionLayer::fixed_address("a")
        .retry_policy(Exponential::new(secs(1), 2.0, secs(60)))
        .jitter(0.0)
        .flap_guard(Duration::ZERO)
        .close_signal(dies_after(ms(5)))
        .layer(maker.clone());
    tokio::time::sleep(secs(6)).await;
    yield_until("seven attempts", || maker.attempts() >= 7).await;
    let times = maker.attempt_times();
    assert_eq!(gaps(&times), vec![secs(1); 6], "{times:?}");
}

// === reconnect_now ===

/// `reconnect_now()` during a long exponential wait (after 6 failures, 32 s) attempts at once
/// and resets the failure count: that attempt's delay is the initial 1 s, so the next attempt
/// follows 1 s later, then 2 s, and the old 32 s schedule is gone.
#[tokio::test(start_paused = true)]
async fn reconnect_now_attempts_at_once_and_restarts_the_delay_from_the_initial_value() {
    let maker = Maker::new([], Plan::Fail("refused"));
    let svc = PersistentConnectionLayer::fixed_address("a")
        .retry_policy(Exponential::new(secs(1), 2.0, secs(600)))
        .jitter(0.0)
        .layer(maker.clone());
    let handle = svc.handle();
    tokio::time::sleep(secs(40)).await;
    assert_eq!(maker.attempt_times(), [0, 1, 3, 7, 15, 31].map(secs));
    let stats = handle.stats();
    assert_eq!(
        (stats.next_delay, stats.consecutive_failures),
        (Some(secs(32)), 6)
    );
    assert!(
        matches!(handle.state(), State::Waiting { next_attempt, .. }
            if next_attempt - tokio::time::Instant::now() == secs(23)),
        "{:?}",
        handle.state()
    );

    handle.reconnect_now();
    yield_until("the attempt reconnect_now asked for", || {
        maker.attempts() >= 7
    })
    .await;
    assert_eq!(maker.attempt_times().last(), Some(&secs(40)));
    assert_eq!(handle.stats().next_delay, Some(secs(1)));

    tokio::time::sleep(secs(3)).await; // t = 43
    yield_until("the attempts at 41 and 43 s", || maker.attempts() >= 9).await;
    assert_eq!(
        maker.attempt_times(),
        [0, 1, 3, 7, 15, 31, 40, 41, 43].map(secs)
    );
}

// === Giving up ===

/// `Constant::new(1 s).give_up_after(3)` against a server that always refuses: exactly three
/// attempts, then the persistent connection closes with the third attempt's error;
/// `poll_ready` returns `Closed`, `closed()` resolves, no attempt follows even an hour later,
/// and a WARN says the policy gave up.
#[tokio::test(start_paused = true)]
async fn give_up_after_three_failures_closes_with_the_third_error() {
    let logs = LogRecorder::global();
    let maker = Maker::new(
        [
            Plan::Fail("refused 1"),
            Plan::Fail("refused 2"),
            Plan::Fail("refused 3"),
        ],
        Plan::Fail("refused again"),
    );
    let mut svc = PersistentConnectionLayer::fixed_address("a")
        .server_name("billing")
        .retry_policy(Constant::new(secs(1)).give_up_after(3))
        .jitter(0.0)
        .layer(maker.clone());
    let handle = svc.handle();

    let mut closed = tokio_test::task::spawn(handle.closed());
    assert_pending!(closed.poll());

    // The policy is asked as soon as the third attempt fails (at 2 s), and gives up then,
    // not a retry delay later.
    tokio::time::sleep(secs(2)).await;
    yield_until("the driver gave up", || handle.is_closed()).await;
    assert_eq!(maker.attempt_times(), [0, 1, 2].map(secs));
    assert!(handle.is_closed());
    assert_eq!(handle.state(), State::Closed);
    assert_ready!(closed.poll());
    let error = close_error(&handle).await;
    assert_eq!(error.kind(), ConnectErrorKind::Connect);
    assert_eq!(error.to_string(), "connect failed: refused 3");
    let error = ServiceExt::<String>::ready(&mut svc)
        .await
        .expect_err("poll_ready after giving up");
    assert!(error.is::<Closed>(), "{error}");

    let warnings = logs.find("billing", "the retry policy gave up; closing");
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert_eq!(warnings[0].level, Level::WARN);

    tokio::time::sleep(secs(3600)).await;
    assert_eq!(maker.attempts(), 3);
}

/// The error `connected_or_failed_to_connect` gives once the persistent connection closed.
async fn close_error(handle: &Handle<Conn>) -> ConnectError {
    handle
        .connected_or_failed_to_connect()
        .await
        .err()
        .expect("an error once closed")
}

/// `give_up_after(0)` makes no attempt at all: the persistent connection closes at once, and
/// `connected_or_failed_to_connect()` fails with a `Closed`-kind error (no attempt failed).
#[tokio::test(start_paused = true)]
async fn give_up_after_zero_never_attempts_and_closes() {
    let maker = Maker::always_connect();
    let svc = PersistentConnectionLayer::fixed_address("a")
        .retry_policy(Constant::new(secs(1)).give_up_after(0))
        .jitter(0.0)
        .layer(maker.clone());
    let handle = svc.handle();
    yield_until("the driver gave up", || handle.is_closed()).await;
    assert!(handle.is_closed());
    assert_eq!(handle.state(), State::Closed);
    let mut closed = tokio_test::task::spawn(handle.closed());
    assert_ready!(closed.poll());
    let error = close_error(&handle).await;
    assert_eq!(error.kind(), ConnectErrorKind::Closed);
    tokio::time::sleep(secs(3600)).await;
    assert_eq!(maker.attempts(), 0);
}

/// Connections that die within the flap guard count toward `give_up_after`: with
/// `give_up_after(3)` and every connection dying after 5 ms, three connections are made, then
/// the persistent connection closes at once (when the third dies, not a delay later), with an
/// error that says how the last connection ended.
#[tokio::test(start_paused = true)]
async fn flapping_connections_count_toward_give_up_after() {
    let maker = Maker::always_connect();
    let svc = PersistentConnectionLayer::fixed_address("a")
        .retry_policy(Constant::new(secs(1)).give_up_after(3))
        .jitter(0.0)
        .close_signal(dies_after(ms(5)))
        .layer(maker.clone());
    let handle = svc.handle();
    tokio::time::sleep(secs(2) + ms(5)).await;
    yield_until("the driver gave up", || handle.is_closed()).await;
    assert!(handle.is_closed());
    assert_eq!(maker.attempt_times(), [0, 1, 2].map(secs));
    let stats = handle.stats();
    assert_eq!((stats.connections, stats.disconnections), (3, 3));
    let error = close_error(&handle).await;
    assert_eq!(error.kind(), ConnectErrorKind::Connect);
    assert_eq!(
        error.to_string(),
        "connect failed: the connection ended after 5ms, within the flap guard: \
         closed with error: connection killed"
    );
    tokio::time::sleep(secs(3600)).await;
    assert_eq!(maker.attempts(), 3);
}

// === The context ===

/// What a context-aware policy was called with: failures in a row, the last connection's
/// life, the last error's text.
type Call = (u32, Option<Duration>, Option<String>);

/// A `policy_fn` sees, before each attempt, the failures in a row (0, 1, 2, reset to 0 by a
/// connection that lived 3 s, and raised by one that lived 200 ms), the previous failure's
/// error (cleared by the reset; after the 200 ms connection, how it ended), and how long the
/// latest connection lived.
#[tokio::test(start_paused = true)]
async fn a_policy_fn_sees_failures_in_a_row_the_last_error_and_the_last_connection_life() {
    let calls: Arc<Mutex<Vec<Call>>> = Arc::default();
    let record = calls.clone();
    let maker = Maker::new(
        [
            Plan::Fail("a"),
            Plan::Fail("b"),
            Plan::Connect,
            Plan::Fail("c"),
            Plan::Connect,
        ],
        Plan::Hang,
    );
    let _svc = PersistentConnectionLayer::fixed_address("a")
        .retry_policy(policy_fn(move |cx| {
            record.lock().unwrap().push((
                cx.consecutive_failures(),
                cx.last_connected_for(),
                error_text(cx.last_error()),
            ));
            Some(secs(1))
        }))
        .jitter(0.0)
        .close_signal(|c: &Conn| c.closed())
        .layer(maker.clone());
    tokio::time::sleep(secs(5)).await;
    maker.conn(0).kill(); // connected at 2 s: lived 3 s
    tokio::time::sleep(ms(1200)).await;
    maker.conn(1).kill(); // connected at 6 s: lived 200 ms
    tokio::time::sleep(ms(900)).await;
    yield_until("six policy calls", || calls.lock().unwrap().len() >= 6).await;

    let error = |text: &str| Some(format!("connect failed: {text}"));
    assert_eq!(
        *calls.lock().unwrap(),
        vec![
            (0, None, None),
            (1, None, error("a")),
            (2, None, error("b")),
            (0, Some(secs(3)), None),
            (1, Some(secs(3)), error("c")),
            (
                2,
                Some(ms(200)),
                error(
                    "the connection ended after 200ms, within the flap guard: \
                     closed with error: connection killed"
                )
            ),
        ]
    );
    assert_eq!(maker.attempt_times(), [0, 1, 2, 5, 6, 7].map(secs));
}

/// A policy that panics does not kill the driver: the attempt after it is still made, 10 s
/// (the default delay) after the one the panic preceded, and the next policy answer is used
/// again.
#[tokio::test(start_paused = true)]
async fn a_panicking_policy_falls_back_to_ten_seconds_and_the_driver_survives() {
    let maker = Maker::new([], Plan::Fail("refused"));
    let svc = PersistentConnectionLayer::fixed_address("a")
        .retry_policy(policy_fn(|cx| {
            if cx.consecutive_failures() == 1 {
                panic!("policy exploded");
            }
            Some(secs(1))
        }))
        .jitter(0.0)
        .layer(maker.clone());
    let handle = svc.handle();
    tokio::time::sleep(secs(5)).await;
    assert_eq!(maker.attempt_times(), [0, 1].map(secs));
    assert_eq!(handle.stats().next_delay, Some(secs(10)));
    tokio::time::sleep(ms(7500)).await; // t = 12.5
    assert_eq!(maker.attempt_times(), [0, 1, 11, 12].map(secs));
    assert!(!handle.is_closed());
}

// === Closures and setters ===

/// A `Fn() -> Duration` closure is a policy: `retry_policy(|| 3 s)` gives attempts 3 s apart.
#[tokio::test(start_paused = true)]
async fn a_closure_is_a_retry_policy() {
    let maker = Maker::new([], Plan::Fail("refused"));
    let _svc = PersistentConnectionLayer::fixed_address("a")
        .retry_policy(|| secs(3))
        .jitter(0.0)
        .layer(maker.clone());
    tokio::time::sleep(ms(9500)).await;
    assert_eq!(maker.attempt_times(), [0, 3, 6, 9].map(secs));
}

/// `retry_delay` and `retry_policy` set the same thing: whichever is called last wins.
#[tokio::test(start_paused = true)]
async fn retry_delay_and_retry_policy_replace_each_other() {
    let policy_last = Maker::new([], Plan::Fail("refused"));
    let _a = PersistentConnectionLayer::fixed_address("a")
        .retry_delay(|| secs(2))
        .retry_policy(Constant::new(secs(5)))
        .jitter(0.0)
        .layer(policy_last.clone());
    let delay_last = Maker::new([], Plan::Fail("refused"));
    let _b = PersistentConnectionLayer::fixed_address("a")
        .retry_policy(Constant::new(secs(5)))
        .retry_delay(|| secs(2))
        .jitter(0.0)
        .layer(delay_last.clone());
    tokio::time::sleep(ms(10_500)).await;
    assert_eq!(policy_last.attempt_times(), [0, 5, 10].map(secs));
    assert_eq!(delay_last.attempt_times(), [0, 2, 4, 6, 8, 10].map(secs));
}

// === Stats ===

/// `Handle::stats` counts exactly, through two failures, a connection, its death and a
/// reconnect: attempts, failed attempts, connections, disconnections, the connection's age
/// (moving with the clock, `None` while disconnected), the last error (kept after success),
/// the delay armed before the latest attempt, and the failures in a row.
#[tokio::test(start_paused = true)]
async fn stats_count_attempts_failures_connections_and_disconnections_exactly() {
    let maker = Maker::new(
        [
            Plan::Fail("first"),
            Plan::Fail("second"),
            Plan::Connect,
            Plan::ConnectAfter(secs(2)),
        ],
        Plan::Hang,
    );
    let svc = PersistentConnectionLayer::fixed_address("a")
        .retry_policy(Exponential::new(secs(1), 2.0, secs(60)))
        .jitter(0.0)
        .close_signal(|c: &Conn| c.closed())
        .layer(maker.clone());
    let handle = svc.handle();
    let stats = |handle: &persistent_connection::Handle<Conn>| Counters::from(handle.stats());
    let first = Some("connect failed: first".to_string());
    let second = Some("connect failed: second".to_string());

    // Before the driver has run.
    assert_eq!(stats(&handle), Counters::from(Stats::default()));
    assert_eq!(stats(&handle).next_delay, None);

    // t = 0: the first attempt failed
    yield_until("the first attempt failed", || {
        handle.stats().failed_attempts >= 1
    })
    .await;
    assert_eq!(
        stats(&handle),
        Counters {
            attempts: 1,
            failed_attempts: 1,
            connections: 0,
            disconnections: 0,
            connected_for: None,
            last_error: first,
            next_delay: Some(secs(1)),
            consecutive_failures: 1,
        }
    );

    tokio::time::sleep(secs(1)).await; // t = 1: the second attempt failed
    yield_until("the second attempt failed", || {
        handle.stats().failed_attempts >= 2
    })
    .await;
    assert_eq!(
        stats(&handle),
        Counters {
            attempts: 2,
            failed_attempts: 2,
            connections: 0,
            disconnections: 0,
            connected_for: None,
            last_error: second.clone(),
            next_delay: Some(secs(2)),
            consecutive_failures: 2,
        }
    );

    tokio::time::sleep(secs(2)).await; // t = 3: connected
    yield_until("connected", || handle.stats().connections >= 1).await;
    let connected = Counters {
        attempts: 3,
        failed_attempts: 2,
        connections: 1,
        disconnections: 0,
        connected_for: Some(Duration::ZERO),
        last_error: second.clone(),
        next_delay: Some(secs(4)),
        consecutive_failures: 2,
    };
    assert_eq!(stats(&handle), connected);
    tokio::time::sleep(secs(5)).await; // t = 8
    assert_eq!(
        stats(&handle),
        Counters {
            connected_for: Some(secs(5)),
            ..connected
        }
    );

    // Killed after 5 s (past the flap guard: the count resets); the next attempt starts at
    // once (its 4 s delay has passed) and takes 2 s to connect.
    maker.conn(0).kill();
    yield_until("the reconnecting attempt", || handle.stats().attempts >= 4).await;
    let reconnecting = Counters {
        attempts: 4,
        failed_attempts: 2,
        connections: 1,
        disconnections: 1,
        connected_for: None,
        last_error: second,
        next_delay: Some(secs(1)),
        consecutive_failures: 0,
    };
    assert_eq!(stats(&handle), reconnecting);
    tokio::time::sleep(secs(1)).await; // t = 9: still connecting
    assert_eq!(stats(&handle), reconnecting);

    tokio::time::sleep(secs(1)).await; // t = 10: connected again
    yield_until("connected again", || handle.stats().connections >= 2).await;
    tokio::time::sleep(ms(1500)).await;
    assert_eq!(
        stats(&handle),
        Counters {
            connections: 2,
            connected_for: Some(ms(1500)),
            ..reconnecting
        }
    );
    assert_eq!(maker.attempt_times(), [0, 1, 3, 8].map(secs));
}

// === Unit level ===

/// `Exponential::try_new` refuses a multiplier below 1 (negative too), NaN or infinite, and
/// an initial delay above the cap, each with an `InvalidSetting` for the setting
/// `"retry policy"` whose message names the bad value; the edge values (multiplier 1, initial
/// equal to the cap, zero and `Duration::MAX` delays) are accepted.
#[test]
fn exponential_try_new_rejects_invalid_parameters_with_a_clear_message() {
    let message = |initial, multiplier, max| {
        Exponential::try_new(initial, multiplier, max)
            .unwrap_err()
            .to_string()
    };
    assert_eq!(
        message(secs(1), 0.5, secs(10)),
        "invalid retry policy: multiplier 0.5 must be a finite number >= 1"
    );
    assert_eq!(
        message(secs(1), f64::NAN, secs(10)),
        "invalid retry policy: multiplier NaN must be a finite number >= 1"
    );
    assert_eq!(
        message(secs(1), f64::INFINITY, secs(10)),
        "invalid retry policy: multiplier inf must be a finite number >= 1"
    );
    assert_eq!(
        message(secs(1), -1.0, secs(10)),
        "invalid retry policy: multiplier -1 must be a finite number >= 1"
    );
    assert_eq!(
        message(secs(1), f64::NEG_INFINITY, secs(10)),
        "invalid retry policy: multiplier -inf must be a finite number >= 1"
    );
    assert_eq!(
        message(secs(20), 2.0, secs(10)),
        "invalid retry policy: initial delay 20s is more than the cap 10s"
    );
    let error = Exponential::try_new(secs(1), f64::NAN, secs(10)).unwrap_err();
    assert_eq!(error.setting(), "retry policy");
    assert!(Exponential::try_new(secs(1), 1.0, secs(10)).is_ok());
    assert!(Exponential::try_new(secs(10), 2.0, secs(10)).is_ok());
    assert!(Exponential::try_new(Duration::ZERO, 2.0, Duration::ZERO).is_ok());
    // The largest delays: the schedule saturates at the cap, for any failure count.
    let huge = Exponential::try_new(Duration::MAX, 2.0, Duration::MAX).unwrap();
    assert_eq!(huge.delay(0), Duration::MAX);
    assert_eq!(huge.delay(u32::MAX), Duration::MAX);
    let slow = Exponential::try_new(Duration::from_nanos(1), 1.5, Duration::MAX).unwrap();
    assert_eq!(slow.delay(200), Duration::MAX);
    let grown = slow.delay(100); // 1.5^100 ns: about 4e8 s
    assert!(
        grown > secs(400_000_000) && grown < secs(410_000_000),
        "{grown:?}"
    );
}

/// `Exponential::new` panics on invalid parameters, with the same message.
#[test]
#[should_panic(
    expected = "Exponential::new: invalid retry policy: multiplier 0.5 must be a finite number >= 1"
)]
fn exponential_new_panics_on_a_multiplier_below_one() {
    let _ = Exponential::new(secs(1), 0.5, secs(10));
}

/// `Exponential::delay` is `initial × multiplier^n` below the cap and the cap beyond it, also
/// for `u32::MAX` failures and for a multiplier whose powers overflow to infinity, without
/// panicking.
#[test]
fn exponential_delay_saturates_at_the_cap_without_panicking() {
    let policy = Exponential::new(ms(100), 3.0, secs(60));
    assert_eq!(policy.delay(0), ms(100));
    assert_eq!(policy.delay(2), ms(900));
    assert_eq!(policy.delay(6), secs(60)); // 72.9 s, capped
    assert_eq!(policy.delay(u32::MAX), secs(60));
    let huge = Exponential::new(secs(1), f64::MAX, secs(10));
    assert_eq!(huge.delay(2), secs(10));
    assert_eq!(huge.delay(u32::MAX), secs(10));
}

/// `give_up_after(n)` passes the inner policy's delay through while fewer than `n` attempts
/// failed in a row, and gives up (`None`) from `n` on.
#[test]
fn give_up_after_returns_none_from_the_nth_failure_on() {
    let policy = Exponential::new(secs(1), 2.0, secs(60)).give_up_after(3);
    let at = |failures| policy.next_delay(&RetryContext::new(failures, None, None));
    assert_eq!(at(0), Some(secs(1)));
    assert_eq!(at(2), Some(secs(4)));
    assert_eq!(at(3), None);
    assert_eq!(at(u32::MAX), None);
}

/// `RetryContext::new` gives back what it was made with.
#[test]
fn retry_context_new_round_trips() {
    let error = ConnectError::closed();
    let context = RetryContext::new(4, Some(ms(250)), Some(&error));
    assert_eq!(context.consecutive_failures(), 4);
    assert_eq!(context.last_connected_for(), Some(ms(250)));
    assert!(std::ptr::eq(context.last_error().unwrap(), &error));

    let empty = RetryContext::new(0, None, None);
    assert_eq!(empty.consecutive_failures(), 0);
    assert_eq!(empty.last_connected_for(), None);
    assert!(empty.last_error().is_none());
}

/// A zero initial delay stays zero whatever the failure count: `min(0 × multiplier^n, max)`
/// is 0, also once `multiplier^n` overflows to infinity.
#[test]
fn a_zero_initial_delay_stays_zero_after_the_power_overflows() {
    let policy = Exponential::new(Duration::ZERO, 2.0, secs(10));
    assert_eq!(policy.delay(10), Duration::ZERO);
    assert_eq!(policy.delay(1023), Duration::ZERO);
    assert_eq!(policy.delay(1024), Duration::ZERO);
    assert_eq!(policy.delay(u32::MAX), Duration::ZERO);
}
