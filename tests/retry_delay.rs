//! The retry delay: when attempts happen, how the delay is randomized, clamped and skipped.

mod support;

use std::{
    sync::{
        Arc,
        atomic::{AtomicU32, AtomicUsize, Ordering},
    },
    time::Duration,
};

use persistent_connection::{PersistentConnectionLayer, State, retry::MAX_RETRY_DELAY};
use support::{Conn, Maker, Plan, let_tasks_run, ms, secs, yield_until};
use tokio::time::advance;
use tower::Layer;

/// The attempt times of a maker that always fails, behind `layer`, over `run_for`.
async fn failing_attempt_times(
    layer: &PersistentConnectionLayer<&'static str>,
    run_for: Duration,
) -> Vec<Duration> {
    let maker = Maker::new([], Plan::Fail("refused"));
    let _svc = layer.layer(maker.clone());
    tokio::time::sleep(run_for).await;
    maker.attempt_times()
}

/// The gaps between consecutive times.
fn gaps(times: &[Duration]) -> Vec<Duration> {
    times.windows(2).map(|w| w[1] - w[0]).collect()
}

/// The first attempt is made at once, without any delay.
#[tokio::test(start_paused = true)]
async fn the_first_attempt_is_immediate() {
    let maker = Maker::new([], Plan::Fail("refused"));
    let _svc = PersistentConnectionLayer::fixed_address("a")
        .retry_delay(|| secs(10))
        .jitter(0.0)
        .layer(maker.clone());
    yield_until("the first attempt", || maker.attempts() >= 1).await;
    assert_eq!(maker.attempt_times(), vec![secs(0)]);
}

/// After a failed attempt the next one waits the retry delay: half the delay brings no new
/// attempt, the rest brings exactly one.
#[tokio::test(start_paused = true)]
async fn failed_attempts_wait_the_retry_delay() {
    let maker = Maker::new([], Plan::Fail("refused"));
    let _svc = PersistentConnectionLayer::fixed_address("a")
        .retry_delay(|| secs(10))
        .jitter(0.0)
        .layer(maker.clone());
    yield_until("the first attempt", || maker.attempts() >= 1).await;
    assert_eq!(maker.attempts(), 1);
    advance(secs(5)).await;
    let_tasks_run().await;
    assert_eq!(maker.attempts(), 1);
    advance(ms(4999)).await;
    let_tasks_run().await;
    assert_eq!(maker.attempts(), 1);
    advance(ms(1)).await;
    yield_until("the attempt at 10 s", || maker.attempts() >= 2).await;
    assert_eq!(maker.attempts(), 2);
    assert_eq!(maker.attempt_times(), vec![secs(0), secs(10)]);
}

/// Without `retry_delay`, the delay is 10 s.
#[tokio::test(start_paused = true)]
async fn the_default_retry_delay_is_10_seconds() {
    let layer = PersistentConnectionLayer::fixed_address("a").jitter(0.0);
    assert_eq!(
        failing_attempt_times(&layer, secs(35)).await,
        vec![secs(0), secs(10), secs(20), secs(30)]
    );
}

/// The timer is armed just before each attempt, so the time an attempt takes to fail counts
/// toward the delay: failures taking 3 s with a 10 s delay give attempts at 0, 10, 20 s, not
/// 0, 13, 26 s.
#[tokio::test(start_paused = true)]
async fn the_time_an_attempt_takes_counts_toward_the_delay() {
    let maker = Maker::new([], Plan::FailAfter(secs(3), "slow refusal"));
    let _svc = PersistentConnectionLayer::fixed_address("a")
        .retry_delay(|| secs(10))
        .jitter(0.0)
        .layer(maker.clone());
    tokio::time::sleep(secs(25)).await;
    assert_eq!(maker.attempt_times(), vec![secs(0), secs(10), secs(20)]);
}

/// A connection that lived longer than the delay is replaced at once when it dies: the next
/// attempt is at the time it was killed.
#[tokio::test(start_paused = true)]
async fn a_long_lived_connection_is_replaced_at_once_when_it_dies() {
    let maker = Maker::always_connect();
    let svc = PersistentConnectionLayer::fixed_address("a")
        .retry_delay(|| secs(10))
        .jitter(0.0)
        .close_signal(|c: &Conn| c.closed())
        .layer(maker.clone());
    svc.handle().connected().await.unwrap();
    tokio::time::sleep(secs(37)).await;
    maker.conn(0).kill();
    yield_until("connection 1 is current", || {
        svc.handle()
            .current_connection()
            .is_some_and(|c| c.id() == 1)
    })
    .await;
    assert_eq!(maker.attempt_times(), vec![secs(0), secs(37)]);
    assert_eq!(svc.handle().current_connection().unwrap().id(), 1);
}

/// A connection that lived less than the delay is replaced only when the delay, measured from
/// the attempt that made it, has passed: made at 10 s, killed at 13 s, replaced at 20 s.
#[tokio::test(start_paused = true)]
async fn a_short_lived_connection_waits_the_rest_of_the_delay_from_its_attempt() {
    let maker = Maker::new([Plan::Fail("refused")], Plan::Connect);
    let svc = PersistentConnectionLayer::fixed_address("a")
        .retry_delay(|| secs(10))
        .jitter(0.0)
        .close_signal(|c: &Conn| c.closed())
        .layer(maker.clone());
    svc.handle().connected().await.unwrap();
    tokio::time::sleep(secs(3)).await; // t = 13
    maker.conn(0).kill();
    tokio::time::sleep(ms(6999)).await;
    assert_eq!(maker.attempts(), 2);
    tokio::time::sleep(ms(1)).await;
    yield_until("the attempt at 20 s", || maker.attempts() >= 3).await;
    assert_eq!(maker.attempt_times(), vec![secs(0), secs(10), secs(20)]);
}

/// `retry_delay` is called once for every attempt, so a growing delay (1, 2, 4, 8 s) gives
/// growing gaps between attempts. (It is called as soon as the previous attempt failed, so
/// while waiting there is one call more than attempts: the delay of the coming attempt.)
#[tokio::test(start_paused = true)]
async fn retry_delay_is_called_before_every_attempt() {
    let calls = Arc::new(AtomicU32::new(0));
    let counter = calls.clone();
    let maker = Maker::new([], Plan::Fail("refused"));
    let _svc = PersistentConnectionLayer::fixed_address("a")
        .retry_delay(move || secs(1 << counter.fetch_add(1, Ordering::SeqCst)))
        .jitter(0.0)
        .layer(maker.clone());
    tokio::time::sleep(ms(15_500)).await;
    let times = maker.attempt_times();
    assert_eq!(times, vec![secs(0), secs(1), secs(3), secs(7), secs(15)]);
    assert_eq!(gaps(&times), vec![secs(1), secs(2), secs(4), secs(8)]);
    assert_eq!(calls.load(Ordering::SeqCst) as usize, maker.attempts() + 1);
}

/// By default the delay is randomized by ±30 %: over 200 failed attempts every gap lies in
/// [7 s, 13 s], the gaps vary, and each third of the range gets a fair share of them.
#[tokio::test(start_paused = true)]
async fn the_default_jitter_spreads_delays_uniformly_within_30_percent() {
    let layer = PersistentConnectionLayer::fixed_address("a").rng_seed(2024);
    let times = failing_attempt_times(&layer, secs(201 * 13)).await;
    assert!(times.len() > 200, "{} attempts", times.len());
    let gaps = &gaps(&times)[..200];
    // The timer fires on the next millisecond tick after its deadline.
    let max = secs(13) + ms(1);
    assert!(gaps.iter().all(|g| (secs(7)..=max).contains(g)), "{gaps:?}");
    let mut distinct = gaps.to_vec();
    distinct.sort();
    distinct.dedup();
    assert!(distinct.len() > 150, "{} distinct gaps", distinct.len());
    let low = gaps.iter().filter(|g| **g < secs(9)).count();
    let high = gaps.iter().filter(|g| **g >= secs(11)).count();
    let middle = gaps.len() - low - high;
    // About 67 each; a uniform draw stays well within these bounds.
    for (third, count) in [("low", low), ("middle", middle), ("high", high)] {
        assert!((45..=90).contains(&count), "{third} third: {count} of 200");
    }
}

/// `.jitter(0.0)` turns randomization off: the delays are exactly `retry_delay()`.
#[tokio::test(start_paused = true)]
async fn zero_jitter_gives_exact_delays() {
    let layer = PersistentConnectionLayer::fixed_address("a")
        .retry_delay(|| secs(7))
        .jitter(0.0);
    let times = failing_attempt_times(&layer, secs(100)).await;
    let expected: Vec<Duration> = (0..=14).map(|i| secs(7 * i)).collect();
    assert_eq!(times, expected);
}

/// Two layers with the same seed repeat the same (randomized) attempt times.
#[tokio::test(start_paused = true)]
async fn two_layers_with_the_same_seed_attempt_at_the_same_times() {
    let first = PersistentConnectionLayer::fixed_address("a").rng_seed(99);
    let second = PersistentConnectionLayer::fixed_address("a").rng_seed(99);
    let (a, b) = tokio::join!(
        failing_attempt_times(&first, secs(200)),
        failing_attempt_times(&second, secs(200)),
    );
    assert!(a.len() >= 15, "{a:?}");
    // Randomized: not the plain multiples of 10 s.
    assert!(
        a.iter()
            .any(|t| t.subsec_nanos() != 0 || t.as_secs() % 10 != 0)
    );
    assert_eq!(a, b);
}

/// Two drivers started from one seeded layer (the layer applied to two makers) draw different
/// delays, so endpoints built from one layer do not retry in lockstep.
#[tokio::test(start_paused = true)]
async fn two_drivers_from_one_layer_do_not_retry_in_lockstep() {
    let layer = PersistentConnectionLayer::fixed_address("a").rng_seed(99);
    let (a, b) = tokio::join!(
        failing_attempt_times(&layer, secs(200)),
        failing_attempt_times(&layer, secs(200)),
    );
    assert!(a.len() >= 15 && b.len() >= 15, "{a:?} {b:?}");
    assert_ne!(a[1..5], b[1..5]);
}

/// An absurd `retry_delay` (ten years, `Duration::MAX`) is clamped to `MAX_RETRY_DELAY`, one
/// day: the next attempts come exactly one day apart.
#[tokio::test(start_paused = true)]
async fn an_absurd_retry_delay_is_clamped_to_one_day() {
    assert_eq!(MAX_RETRY_DELAY, secs(24 * 60 * 60));
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let maker = Maker::new([], Plan::Fail("refused"));
    let _svc = PersistentConnectionLayer::fixed_address("a")
        .retry_delay(move || match counter.fetch_add(1, Ordering::SeqCst) {
            0 => secs(10 * 365 * 24 * 60 * 60),
            _ => Duration::MAX,
        })
        .jitter(0.0)
        .layer(maker.clone());
    tokio::time::sleep(MAX_RETRY_DELAY * 2 + secs(1)).await;
    assert_eq!(
        maker.attempt_times(),
        vec![secs(0), MAX_RETRY_DELAY, MAX_RETRY_DELAY * 2]
    );
}

/// A zero delay is allowed, but the driver still yields between attempts: another task on the
/// same current-thread runtime runs after at most a couple of attempts, although no time
/// passes and every attempt fails at once.
#[tokio::test(start_paused = true)]
async fn a_zero_delay_never_starves_other_tasks() {
    const FAILURES: usize = 1000;
    // After the failures the maker connects, so the test ends even if the driver never yields.
    let maker = Maker::new(vec![Plan::Fail("refused"); FAILURES], Plan::Connect);
    let svc = PersistentConnectionLayer::fixed_address("a")
        .retry_delay(|| Duration::ZERO)
        .jitter(0.0)
        .layer(maker.clone());
    let observed = maker.clone();
    let observer = tokio::spawn(async move {
        let mut seen = vec![observed.attempts()];
        support::yield_until("a connection", || {
            seen.push(observed.attempts());
            observed.connections() > 0
        })
        .await;
        seen
    });
    let seen = observer.await.unwrap();
    assert_eq!(maker.attempts(), FAILURES + 1);
    assert_eq!(maker.attempt_times().last(), Some(&secs(0)));
    let most = seen.windows(2).map(|w| w[1] - w[0]).max().unwrap();
    assert!(
        most <= 2,
        "{most} attempts between two turns of another task"
    );
    assert_eq!(svc.handle().state(), State::Connected);
}

/// `.jitter(1.5)` panics at the setter, naming the bad value.
#[test]
#[should_panic(expected = "invalid jitter 1.5")]
fn a_jitter_above_one_panics() {
    let _ = PersistentConnectionLayer::fixed_address("a").jitter(1.5);
}

/// `.jitter(-0.1)` panics at the setter, naming the bad value.
#[test]
#[should_panic(expected = "invalid jitter -0.1")]
fn a_negative_jitter_panics() {
    let _ = PersistentConnectionLayer::fixed_address("a").jitter(-0.1);
}

/// `.jitter(NaN)` panics at the setter.
#[test]
#[should_panic(expected = "invalid jitter NaN")]
fn a_nan_jitter_panics() {
    let _ = PersistentConnectionLayer::fixed_address("a").jitter(f64::NAN);
}

/// `try_jitter` refuses values outside `[0, 1]`, infinities and NaN with an `InvalidSetting`
/// for the setting `"jitter"` that names the value, and accepts both ends of the range.
#[test]
fn try_jitter_returns_an_error_naming_the_bad_value() {
    let layer = PersistentConnectionLayer::fixed_address("a");
    let bad = [
        (1.5, "1.5"),
        (2.0, "2"),
        (-0.1, "-0.1"),
        (-1.0, "-1"),
        (f64::NAN, "NaN"),
        (f64::INFINITY, "inf"),
        (f64::NEG_INFINITY, "-inf"),
    ];
    for (bad, text) in bad {
        let error = layer.clone().try_jitter(bad).unwrap_err();
        assert_eq!(error.setting(), "jitter");
        assert!(
            error
                .to_string()
                .contains(&format!("invalid jitter {text}")),
            "{error}"
        );
    }
    assert!(layer.clone().try_jitter(0.0).is_ok());
    assert!(layer.try_jitter(1.0).is_ok());
}

/// `reconnect_now` skips the rest of the delay: the next attempt is made at once, not when the
/// delay ends.
#[tokio::test(start_paused = true)]
async fn reconnect_now_skips_the_remaining_delay() {
    let maker = Maker::new([Plan::Fail("refused")], Plan::Connect);
    let svc = PersistentConnectionLayer::fixed_address("a")
        .retry_delay(|| secs(10))
        .jitter(0.0)
        .layer(maker.clone());
    let handle = svc.handle();
    tokio::time::sleep(secs(2)).await;
    assert_eq!(maker.attempts(), 1);
    handle.reconnect_now();
    yield_until("connected by the attempt reconnect_now asked for", || {
        handle.state() == State::Connected
    })
    .await;
    assert_eq!(maker.attempt_times(), vec![secs(0), secs(2)]);
    assert_eq!(handle.state(), State::Connected);
}

/// `reconnect_now` sent while an attempt is running skips the wait after that attempt if it
/// fails (only that wait: the following attempt waits the full delay again).
#[tokio::test(start_paused = true)]
async fn reconnect_now_during_an_attempt_skips_the_wait_after_it() {
    // The third attempt hangs, so that no test run can spin through attempts.
    let maker = Maker::new(
        [
            Plan::FailAfter(secs(3), "slow refusal"),
            Plan::Fail("refused"),
        ],
        Plan::Hang,
    );
    let svc = PersistentConnectionLayer::fixed_address("a")
        .retry_delay(|| secs(10))
        .jitter(0.0)
        .layer(maker.clone());
    tokio::time::sleep(secs(1)).await;
    assert_eq!(maker.in_flight.load(Ordering::SeqCst), 1);
    svc.handle().reconnect_now();
    tokio::time::sleep(secs(14)).await; // t = 15
    assert_eq!(maker.attempt_times(), vec![secs(0), secs(3), secs(13)]);
}

/// `reconnect_now` while connected does nothing: no new attempt, still connected, and it is
/// not remembered to skip the wait after a later disconnect.
#[tokio::test(start_paused = true)]
async fn reconnect_now_while_connected_does_nothing() {
    let maker = Maker::always_connect();
    let svc = PersistentConnectionLayer::fixed_address("a")
        .retry_delay(|| secs(10))
        .jitter(0.0)
        .close_signal(|c: &Conn| c.closed())
        .layer(maker.clone());
    let handle = svc.handle();
    handle.connected().await.unwrap();
    tokio::time::sleep(secs(1)).await;
    handle.reconnect_now();
    let_tasks_run().await;
    assert_eq!(maker.attempts(), 1);
    assert_eq!(handle.state(), State::Connected);
    assert_eq!(handle.current_connection().unwrap().id(), 0);

    // The connection dies young: the next attempt still waits for the delay.
    tokio::time::sleep(secs(1)).await; // t = 2
    maker.conn(0).kill();
    tokio::time::sleep(secs(10)).await; // t = 12
    assert_eq!(maker.attempt_times(), vec![secs(0), secs(10)]);
}
