//! Hostile configuration and discovery output: an address that does not parse, port 0, a name
//! that does not resolve, an empty or enormous address list, an empty catalog, and huge
//! durations in every duration setting. Each is a clear error at the point of use (a failed
//! attempt whose event says what went wrong and where) or a setting that works as said
//! ("never", for a huge duration): never a panic of the driver, never a hang.
//!
//! Covered beside the settings they belong to, not here: the setters that document a panic on
//! a bad value and their `try_` forms (`jitter`/`try_jitter` in `retry_delay.rs`,
//! `Exponential::new`/`try_new` in `retry_policy.rs`), zero durations (`connect_timeout` in
//! `api.rs`, `max_connection_age` in `rotation.rs`, `health_check_interval` in `health.rs`, a
//! zero retry delay in `retry_delay.rs`, a zero flap guard in `retry_policy.rs`), an absurd
//! retry delay (`retry_delay.rs`: clamped to a day), and a catalog value that is not an address
//! (`etcd.rs`).
//!
//! Paused time where no real I/O is involved; the dialing test uses real sockets on 127.0.0.1
//! and bounded waits.

mod support;

use std::{
    fmt,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use allocation_counter::AllocationInfo;
use bytes::Bytes;
use http_body_util::Empty;
use persistent_connection::{
    ConnectError, ConnectErrorKind, Handle, PersistentConnection, PersistentConnectionLayer, State,
    discovery::LocalCatalog,
    health::NotServing,
    http::{Dial, Http1Connector, Http2Connector},
    retry::Exponential,
};
use support::{Conn, Ev, Events, Maker, Plan, SOON, ms, secs, within, within_an_hour};
use tower::{Layer, service_fn};

type Body = Empty<Bytes>;

// === addresses that do not parse or resolve (real sockets) ===

/// What a bad address's failures must say: a fragment of the error's text, or any of several
/// (the resolver's wording differs between systems).
struct Bad {
    address: &'static str,
    says: &'static [&'static str],
}

/// The connect timeout of the dialing tests: a system resolver that takes longer to say a name
/// does not exist makes the attempt a `Timeout`.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Waits (bounded by `bound`) until the layer of `handle` has made `attempts` attempts;
/// polls its stats every 10 ms.
async fn wait_for_attempts<S: Clone + Send + 'static>(
    handle: &Handle<S>,
    attempts: u64,
    bound: Duration,
) {
    within(bound, "the attempts", async {
        while handle.stats().attempts < attempts {
            tokio::time::sleep(ms(10)).await;
        }
    })
    .await;
}

/// Runs a layer to `address` with the HTTP/2 or HTTP/1 connector (retrying every 50 ms)
/// until it has made three attempts; checks that none connected, that the events name the
/// address, and that the driver lives on (no panic, no close). Returns the first failure.
async fn three_failed_attempts<A>(address: A, http2: bool) -> ConnectError
where
    A: Dial + PartialEq + fmt::Debug + fmt::Display,
{
    let events = Events::new();
    let layer = PersistentConnectionLayer::fixed_address(address.clone())
        .retry_delay(|| ms(50))
        .jitter(0.0)
        .connect_timeout(CONNECT_TIMEOUT);
    let error = if http2 {
        let svc = layer
            .on_event(events.hook_for())
            .http2(Http2Connector::<Body>::new());
        failed_thrice(svc).await
    } else {
        let svc = layer
            .on_event(events.hook_for())
            .http1(Http1Connector::<Body>::new());
        failed_thrice(svc).await
    };
    let seen = events.seen();
    assert_eq!(
        seen[..2],
        [Ev::Attempting, Ev::Address(address.to_string())],
        "{seen:?}"
    );
    assert!(!seen.iter().any(support::connected), "{seen:?}");
    error
}

/// The first failure of `svc`'s layer, once it has made three attempts; checks that it is
/// still connecting (its driver did not die), then closes it.
async fn failed_thrice<S: Clone + Send + 'static>(svc: PersistentConnection<S>) -> ConnectError {
    let handle = svc.handle();
    let first = within(
        CONNECT_TIMEOUT + SOON,
        "the first attempt",
        handle.connected_or_failed_to_connect(),
    )
    .await
    .err()
    .expect("a failed attempt, not a connection");
    wait_for_attempts(&handle, 3, CONNECT_TIMEOUT * 3 + SOON).await;
    let stats = handle.stats();
    assert_eq!(stats.connections, 0, "{stats:?}");
    // Every attempt but one in flight has failed.
    assert!(stats.failed_attempts + 1 >= stats.attempts, "{stats:?}");
    assert!(!handle.is_closed(), "the driver ended: {stats:?}");
    within(SOON, "close", handle.close()).await;
    first
}

/// Addresses that do not parse (no port, a port past 65535, an empty port, nothing at all),
/// port 0, and a name that does not resolve: each attempt fails with a `Connect` error that
/// says why (the event before it names the address), at the policy's pace, with both HTTP
/// connectors; the driver never panics and never stops. (A name lookup the system resolver
/// does not answer within the connect timeout is a `Timeout` instead.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn addresses_that_do_not_parse_or_resolve_fail_every_attempt_with_a_clear_error() {
    let bad = [
        Bad {
            address: "not an address",
            says: &["invalid socket address"],
        },
        Bad {
            address: "",
            says: &["invalid socket address"],
        },
        Bad {
            address: "host:99999",
            says: &["invalid port value"],
        },
        Bad {
            address: "host:",
            says: &["invalid port value"],
        },
        Bad {
            address: "127.0.0.1:0",
            says: &["refused", "not available", "invalid argument"],
        },
        // RFC 6761: `.invalid` never resolves.
        Bad {
            address: "nothing.invalid:80",
            says: &["lookup", "not known", "resolve", "no address"],
        },
    ];
    for Bad { address, says } in bad {
        for http2 in [true, false] {
            let error = three_failed_attempts(address.to_string(), http2).await;
            let text = error.to_string().to_lowercase();
            println!("{address:?} (HTTP/{}): {text}", if http2 { 2 } else { 1 });
            let slow_resolver = address.ends_with(".invalid:80")
                && error.kind() == ConnectErrorKind::Timeout
                && text.contains("while connecting");
            if !slow_resolver {
                assert_eq!(
                    error.kind(),
                    ConnectErrorKind::Connect,
                    "{address:?}: {text}"
                );
                assert!(
                    says.iter().any(|fragment| text.contains(fragment)),
                    "{address:?}: {text:?} says none of {says:?}"
                );
            }
        }
    }
    // Port 0 as a `SocketAddr`.
    let zero = SocketAddr::from(([127, 0, 0, 1], 0));
    for http2 in [true, false] {
        let error = three_failed_attempts(zero, http2).await;
        println!(
            "{zero} (SocketAddr, HTTP/{}): {error}",
            if http2 { 2 } else { 1 }
        );
        assert_eq!(error.kind(), ConnectErrorKind::Connect, "{error}");
    }
}

// === empty and enormous discovery output (paused time) ===

/// `round_robin` of an empty list: no panic where it is built; every attempt fails in
/// discovery, at the policy's pace, with an error that says the list is empty; the maker is
/// never called, and the driver goes on (the policy decides, not the list).
#[tokio::test(start_paused = true)]
async fn an_empty_round_robin_list_fails_every_attempt_in_discovery() {
    let maker = Maker::always_connect();
    let svc = PersistentConnectionLayer::<&str>::round_robin([])
        .retry_delay(|| secs(1))
        .jitter(0.0)
        .layer(maker.clone());
    let handle = svc.handle();
    let error = within_an_hour("an attempt", handle.connected_or_failed_to_connect())
        .await
        .err()
        .expect("a failed attempt: nothing to connect to");
    assert_eq!(error.kind(), ConnectErrorKind::Discovery, "{error}");
    assert_eq!(
        error.to_string(),
        "address discovery failed: the address list is empty: \
         PersistentConnectionLayer::round_robin was given no address"
    );
    tokio::time::sleep(ms(4500)).await;
    let stats = handle.stats();
    assert_eq!((stats.attempts, stats.failed_attempts), (5, 5), "{stats:?}");
    assert_eq!(maker.attempts(), 0, "the maker was called");
    assert!(
        matches!(handle.state(), State::Waiting { .. }),
        "{:?}",
        handle.state()
    );
}

/// Runs `round_robin(0..n)` over a maker that fails every attempt (retrying every 1 ms) on
/// a paused current-thread runtime for `period`; returns the addresses tried, and the
/// allocations of the attempts after the first (on this thread: all of them).
fn round_robin_run(n: u32, period: Duration) -> (Vec<u32>, AllocationInfo) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    let tried = Arc::new(Mutex::new(Vec::with_capacity(
        period.as_millis() as usize + 10,
    )));
    let record = tried.clone();
    let maker = service_fn(move |address: u32| {
        record.lock().unwrap().push(address);
        std::future::ready(Err::<Conn, _>("refused"))
    });
    let svc = runtime.block_on(async {
        PersistentConnectionLayer::round_robin(0..n)
            .retry_delay(|| ms(1))
            .jitter(0.0)
            .layer(maker)
    });
    runtime.block_on(async { tokio::time::sleep(ms(1)).await });
    let memory = allocation_counter::measure(|| {
        runtime.block_on(async { tokio::time::sleep(period).await });
    });
    drop(svc);
    let tried = tried.lock().unwrap().clone();
    (tried, memory)
}

/// `round_robin` of 100,000 addresses takes each in turn, one per attempt, and wraps around
/// after the last; the list is not copied per attempt: an attempt allocates about as much
/// with 100,000 addresses as with 2.
#[test]
fn a_round_robin_list_of_100_000_addresses_takes_each_in_turn() {
    const N: u32 = 100_000;
    let (tried, large) = round_robin_run(N, ms(u64::from(N) + 500));
    assert!(tried.len() >= N as usize + 2, "{} attempts", tried.len());
    let expected = (0..N).chain(0..);
    let wrong = tried.iter().zip(expected).position(|(a, b)| *a != b);
    assert_eq!(wrong, None, "attempt {wrong:?} took the wrong address");

    let (few, small) = round_robin_run(2, ms(1000));
    assert_eq!(few[..6], [0, 1, 0, 1, 0, 1]);
    let per_attempt =
        |memory: AllocationInfo, attempts: usize| memory.bytes_total / attempts as u64;
    let (large, small) = (
        per_attempt(large, tried.len() - 2),
        per_attempt(small, few.len() - 2),
    );
    println!("bytes allocated per attempt: {large} with {N} addresses, {small} with 2");
    assert!(
        large < small * 2 + 1024,
        "an attempt allocates {large} bytes with {N} addresses, {small} with 2"
    );
}

/// An empty `LocalCatalog`: each attempt fails in discovery, at the policy's pace, saying
/// the catalog lists no replica (reported once); once a replica is listed, the next attempt
/// connects to it.
#[tokio::test(start_paused = true)]
async fn an_empty_local_catalog_fails_each_attempt_until_a_replica_is_listed() {
    let catalog = LocalCatalog::new();
    let maker = Maker::always_connect();
    let events = Events::new();
    let svc = PersistentConnectionLayer::new(catalog.clone())
        .retry_delay(|| secs(1))
        .jitter(0.0)
        .on_event(events.hook())
        .layer(maker.clone());
    let handle = svc.handle();
    tokio::time::sleep(ms(2500)).await;
    assert_eq!(handle.stats().failed_attempts, 3);
    assert_eq!(maker.attempts(), 0);
    assert_eq!(
        events.names(),
        [
            "Attempting",
            "Failed(address discovery failed: the in-process catalog lists no replica)"
        ]
    );
    catalog.insert("replica-1", "a");
    let conn: Conn = within_an_hour("connected", handle.connected())
        .await
        .unwrap();
    assert_eq!(conn.addr(), "a");
    assert_eq!(maker.attempt_times(), [secs(3)]);
}

// === huge durations (paused time) ===

/// `connect_timeout(Duration::MAX)` means no timeout: attempts fail and connect as usual (no
/// overflow of the clock in the driver), and an attempt that hangs stays in flight without a
/// timeout (an hour later it is still connecting), until `close()` cancels it at once.
#[tokio::test(start_paused = true)]
async fn a_huge_connect_timeout_is_no_timeout() {
    let maker = Maker::new(
        [Plan::Fail("refused"), Plan::Fail("refused")],
        Plan::Connect,
    );
    let svc = PersistentConnectionLayer::fixed_address("a")
        .retry_delay(|| secs(1))
        .jitter(0.0)
        .connect_timeout(Duration::MAX)
        .layer(maker.clone());
    let conn: Conn = within_an_hour("connected", svc.handle().connected())
        .await
        .expect("connected");
    assert_eq!(conn.id(), 0);
    assert_eq!(maker.attempt_times(), [secs(0), secs(1), secs(2)]);

    let hanging = Maker::new([], Plan::Hang);
    let svc = PersistentConnectionLayer::fixed_address("a")
        .connect_timeout(Duration::MAX)
        .layer(hanging.clone());
    let handle = svc.handle();
    tokio::time::sleep(secs(3600)).await;
    assert_eq!(handle.state(), State::Connecting);
    assert_eq!((hanging.attempts(), handle.stats().failed_attempts), (1, 0));
    within(ms(1), "close", handle.close()).await;
    assert_eq!(
        hanging.in_flight.load(Ordering::SeqCst),
        0,
        "the attempt was dropped"
    );
}

/// `max_connection_age(Duration::MAX)`, with and without jitter, means no rotation (no
/// overflow when the age is jittered or added to the clock): a day later the first
/// connection still serves.
#[tokio::test(start_paused = true)]
async fn a_huge_max_connection_age_never_rotates() {
    for jitter in [0.0, 0.3, 1.0] {
        let maker = Maker::always_connect();
        let svc = PersistentConnectionLayer::fixed_address("a")
            .jitter(jitter)
            .max_connection_age(Duration::MAX)
            .layer(maker.clone());
        let handle = svc.handle();
        within_an_hour("connected", handle.connected())
            .await
            .unwrap();
        tokio::time::sleep(secs(24 * 3600)).await;
        assert_eq!(handle.state(), State::Connected, "jitter {jitter}");
        assert_eq!(maker.attempts(), 1, "jitter {jitter}");
        assert_eq!(handle.stats().rotations, 0);
    }
}

/// `health_check_interval(Duration::MAX)`: a new connection whose check says "not serving"
/// is not checked again within the attempt (the interval does not fit in the connect
/// timeout), so the attempt fails with the check's error, not a panic; the next attempt's
/// check passes, and no periodic check follows (a day later, two checks in all).
#[tokio::test(start_paused = true)]
async fn a_huge_health_check_interval_means_no_periodic_check() {
    let maker = Maker::always_connect();
    let checks = Arc::new(AtomicUsize::new(0));
    let count = checks.clone();
    let svc = PersistentConnectionLayer::fixed_address("a")
        .retry_delay(|| secs(1))
        .jitter(0.0)
        .health_check(move |_: &Conn| {
            let first = count.fetch_add(1, Ordering::SeqCst) == 0;
            async move {
                match first {
                    true => Err(NotServing::new("starting")),
                    false => Ok(()),
                }
            }
        })
        .health_check_interval(Duration::MAX)
        .layer(maker.clone());
    let handle = svc.handle();
    let error = within_an_hour("the first attempt", handle.connected_or_failed_to_connect())
        .await
        .err()
        .expect("a failed attempt: the first check says not serving");
    assert_eq!(error.kind(), ConnectErrorKind::HealthCheck, "{error}");
    within_an_hour("connected", handle.connected())
        .await
        .unwrap();
    assert_eq!(maker.attempt_times(), [secs(0), secs(1)]);
    tokio::time::sleep(secs(24 * 3600)).await;
    assert_eq!(handle.state(), State::Connected);
    assert_eq!(checks.load(Ordering::SeqCst), 2);
}

/// `flap_guard(Duration::MAX)`: no connection lives long enough to reset the failure count
/// (nothing overflows comparing a life with it): connections that die after 10 s of life each
/// count as one more failure in a row (with the default flap guard of 1 s, none would), while
/// each reconnect is still immediate (they outlived the delay).
#[tokio::test(start_paused = true)]
async fn a_huge_flap_guard_counts_every_ended_connection_as_a_failure() {
    let maker = Maker::always_connect();
    let svc = PersistentConnectionLayer::fixed_address("a")
        .retry_policy(Exponential::new(secs(1), 2.0, secs(4)))
        .jitter(0.0)
        .flap_guard(Duration::MAX)
        .close_signal(Conn::closed)
        .layer(maker.clone());
    let handle = svc.handle();
    for n in 0..5 {
        within_an_hour("connected", handle.connected())
            .await
            .unwrap();
        tokio::time::sleep(secs(10)).await;
        maker.conn(n).kill();
        support::yield_until("disconnected", || handle.state() != State::Connected).await;
    }
    within_an_hour("connected", handle.connected())
        .await
        .unwrap();
    assert_eq!(maker.attempt_times(), [0, 10, 20, 30, 40, 50].map(secs));
    let stats = handle.stats();
    assert_eq!(stats.consecutive_failures, 5, "{stats:?}");
}
